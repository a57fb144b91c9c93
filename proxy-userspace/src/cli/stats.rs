//! `vipr stats`: every datapath counter with its rate over an interval.
use std::time::Duration;

use proxy_common::Counter;
use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct CounterRow {
    pub counter: &'static str,
    /// "verdict" or "drop".
    pub kind: &'static str,
    pub total: u64,
    pub per_second: f64,
}

/// Rows from two readings `interval` apart, in counter order.
pub fn rows(
    before: &[(Counter, u64)],
    after: &[(Counter, u64)],
    interval: Duration,
) -> Vec<CounterRow> {
    let seconds = interval.as_secs_f64().max(f64::EPSILON);
    after
        .iter()
        .map(|&(counter, total)| {
            let earlier = before
                .iter()
                .find(|(c, _)| *c == counter)
                .map_or(total, |&(_, v)| v);
            CounterRow {
                counter: counter.name(),
                kind: if counter.is_drop() { "drop" } else { "verdict" },
                total,
                // A counter that fell was reset (pins recreated): no rate.
                per_second: total.saturating_sub(earlier) as f64 / seconds,
            }
        })
        .collect()
}

pub const HEADER: [&str; 4] = ["counter", "kind", "total", "per second"];

pub fn cells(row: &CounterRow) -> Vec<String> {
    vec![
        row.counter.into(),
        row.kind.into(),
        row.total.to_string(),
        format!("{:.1}", row.per_second),
    ]
}
