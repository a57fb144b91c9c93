//! The report's "CPU per connection" and "nginx + wrk" sections: medians
//! with (min–max) over rounds, ratios to `direct` taken within a round.
use std::{collections::BTreeMap, fmt::Write as _};

use super::{
    Results, Sample,
    contenders::Contender,
    cpu::CpuPerConn,
    http::{HttpMode, HttpSample},
    report::{Spread, fmt_spread},
};

/// Samples that carry workload figures, by (contender, Services).
fn groups(results: &Results) -> BTreeMap<(Contender, usize), Vec<&Sample>> {
    let mut groups: BTreeMap<_, Vec<&Sample>> = BTreeMap::new();
    for s in results.samples.iter().filter(|s| s.cpu.is_some()) {
        groups.entry((s.contender, s.services)).or_default().push(s);
    }
    groups
}

/// `metric` of each of `samples` over direct's in the same round and N.
fn ratio_to_direct(
    results: &Results,
    samples: &[&Sample],
    metric: impl Fn(&Sample) -> Option<f64>,
) -> Option<Spread> {
    let direct: BTreeMap<(usize, usize), f64> = results
        .samples
        .iter()
        .filter(|s| s.contender == Contender::Direct)
        .filter_map(|s| Some(((s.services, s.round), metric(s)?)))
        .collect();
    Spread::of(
        samples
            .iter()
            .filter_map(|s| Some(metric(s)? / direct.get(&(s.services, s.round))?))
            .collect(),
    )
}

fn spread(samples: &[&Sample], metric: impl Fn(&Sample) -> Option<f64>) -> Option<Spread> {
    Spread::of(samples.iter().filter_map(|s| metric(s)).collect())
}

/// A machine more than this busy before a CPU measurement is flagged.
const BUSY_BACKGROUND: f64 = 0.05;

pub(super) fn markdown(results: &Results, md: &mut String) {
    let groups = groups(results);
    if groups.is_empty() {
        return;
    }
    let _ = writeln!(md, "\n## CPU per connection\n");
    let _ = writeln!(
        md,
        "The whole machine's CPU time (/proc/stat, all CPUs; busy = everything but idle and iowait) over a fixed \
         number of new connections of the load above, divided by the connections that completed; nothing else \
         runs in the topology meanwhile. Busy includes the load generator's and the servers' user time, the same \
         for every contender, so differences between contenders are their datapaths' cost; system+softirq is the \
         kernel's share (system calls, the veth hops, forwarding, netfilter, vipr's TC programs). The kernel \
         charges whole ticks to whatever runs when one fires, so the figures are samples with a few per cent \
         of noise. The vipr agent's own CPU (/proc/PID/stat) is shown apart, over the load and in the idle \
         0.3 s before it: it handles no packet, but its conntrack sweeper walks the new flows.\n"
    );
    let _ = writeln!(
        md,
        "| contender | Services | connections | busy µs/conn | system+softirq µs/conn | busy ratio to direct (same round) \
         | vipr agent µs/conn | vipr agent idle, % of a CPU | failed |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for ((c, n), samples) in &groups {
        let of = |f: fn(&CpuPerConn) -> Option<f64>| spread(samples, |s| f(s.cpu.as_ref()?));
        let busy = |s: &Sample| Some(s.cpu.as_ref()?.busy_us_per_conn);
        let flagged = samples
            .iter()
            .filter_map(|s| s.cpu.as_ref())
            .any(|c| c.background_busy > BUSY_BACKGROUND);
        let _ = writeln!(
            md,
            "| {}{} | {n} | {} | {} | {} | {} | {} | {} | {} |",
            c.name(),
            if flagged { " †" } else { "" },
            samples[0].cpu.as_ref().map_or(0, |c| c.connections),
            fmt_spread(spread(samples, busy), 1.0, 0),
            fmt_spread(of(|c| Some(c.system_softirq_us_per_conn)), 1.0, 0),
            fmt_spread(ratio_to_direct(results, samples, busy), 1.0, 2),
            fmt_spread(of(|c| c.agent_us_per_conn), 1.0, 1),
            fmt_spread(of(|c| c.agent_idle_busy), 100.0, 0),
            samples
                .iter()
                .filter_map(|s| s.cpu.as_ref())
                .map(|c| c.failed)
                .sum::<u64>(),
        );
    }
    let busy: Vec<String> = results
        .samples
        .iter()
        .filter_map(|s| Some((s, s.cpu.as_ref()?)))
        .filter(|(_, c)| c.background_busy > BUSY_BACKGROUND)
        .map(|(s, c)| {
            format!(
                "- {} at {} Services, round {}: {:.0} % of the machine busy just before",
                s.contender.name(),
                s.services,
                s.round,
                c.background_busy * 100.0
            )
        })
        .collect();
    if !busy.is_empty() {
        let _ = writeln!(
            md,
            "\n† Something else was running (figures too high):\n\n{}",
            busy.join("\n")
        );
    }
    http_table(results, &groups, md);
}

fn http_table(
    results: &Results,
    groups: &BTreeMap<(Contender, usize), Vec<&Sample>>,
    md: &mut String,
) {
    let _ = writeln!(md, "\n## nginx + wrk\n");
    let _ = writeln!(
        md,
        "nginx (one process per backend pod, `return 200`) behind each contender, `wrk` in the client pod over \
         HTTP/1.1: `close` sends `Connection: close` (a new connection per request), `keep-alive` reuses \
         connections. wrk's latency is from sending a request to its response (a new connection's handshake \
         is not in it). busy µs/req: the machine's CPU over the run per request (wrk saturates the machine, so \
         this is close to the inverse of the rate).\n"
    );
    let _ = writeln!(
        md,
        "| contender | Services | mode | req/s | ratio to direct (same round) | p50 µs | p99 µs | busy µs/req | errors |"
    );
    let _ = writeln!(md, "|---|---:|---|---:|---:|---:|---:|---:|---:|");
    for mode in HttpMode::ALL {
        for ((c, n), samples) in groups {
            if !samples.iter().any(|s| run_of(s, mode).is_some()) {
                continue;
            }
            let rate = |s: &Sample| run_of(s, mode).map(|h| h.req_per_s);
            let _ = writeln!(
                md,
                "| {} | {n} | {} | {} | {} | {} | {} | {} | {} |",
                c.name(),
                mode.name(),
                fmt_spread(spread(samples, rate), 1.0, 0),
                fmt_spread(ratio_to_direct(results, samples, rate), 1.0, 2),
                fmt_spread(
                    spread(samples, |s| run_of(s, mode).map(|h| h.wrk.p50_us)),
                    1.0,
                    0
                ),
                fmt_spread(
                    spread(samples, |s| run_of(s, mode).map(|h| h.wrk.p99_us)),
                    1.0,
                    0
                ),
                fmt_spread(
                    spread(samples, |s| run_of(s, mode).map(|h| h.busy_us_per_req)),
                    1.0,
                    1
                ),
                samples
                    .iter()
                    .filter_map(|s| run_of(s, mode).map(|h| h.wrk.errors))
                    .sum::<u64>(),
            );
        }
    }
}

/// `s`'s wrk run in `mode`, if it had one.
fn run_of(s: &Sample, mode: HttpMode) -> Option<&HttpSample> {
    s.http.iter().find(|h| h.mode == mode)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::{
        Skipped,
        http::{HttpMode, HttpSample, WrkResult},
    };

    fn sample(contender: Contender, round: usize, busy: f64, rate: f64) -> Sample {
        Sample {
            contender,
            services: 10_000,
            round,
            tcp_conn_per_s: 0.0,
            tcp_p50_us: 0.0,
            tcp_p99_us: 0.0,
            tcp_failed: 0,
            udp_req_per_s: 0.0,
            udp_failed: 0,
            install_s: 0.0,
            one_change_s: None,
            agent_rss_bytes: None,
            map_memory_bytes: None,
            counters: None,
            off_path: None,
            cpu: Some(CpuPerConn {
                connections: 10_000,
                failed: 0,
                seconds: 1.0,
                busy_us_per_conn: busy,
                system_softirq_us_per_conn: busy / 2.0,
                agent_us_per_conn: None,
                agent_idle_busy: None,
                background_busy: 0.0,
            }),
            http: vec![HttpSample {
                mode: HttpMode::Close,
                wrk: WrkResult {
                    requests: rate as u64,
                    seconds: 1.0,
                    p50_us: 100.0,
                    p99_us: 900.0,
                    errors: 0,
                },
                req_per_s: rate,
                busy_us_per_req: 50.0,
                system_softirq_us_per_req: 40.0,
            }],
        }
    }

    #[test]
    fn ratios_pair_each_round_with_directs_and_failures_head_the_report() {
        let results = Results {
            samples: vec![
                sample(Contender::Direct, 0, 50.0, 30_000.0),
                sample(Contender::Direct, 1, 100.0, 20_000.0),
                sample(Contender::IptablesLegacy, 0, 400.0, 6_000.0),
                sample(Contender::IptablesLegacy, 1, 300.0, 6_000.0),
            ],
            failures: vec![Skipped {
                contender: Contender::Nftables,
                services: 10_000,
                reason: "round 0 failed: run nft".into(),
            }],
            ..Default::default()
        };
        let mut md = String::new();
        markdown(&results, &mut md);
        // Round 0: 400/50 = 8, round 1: 300/100 = 3 (the median of two is the upper).
        assert!(
            md.contains("| iptables-legacy | 10000 | 10000 | 400 (300–400) | 200 (150–200) | 8.00 (3.00–8.00) | – | – | 0 |"),
            "{md}"
        );
        assert!(
            md.contains(
                "| iptables-legacy | 10000 | close | 6000 (6000–6000) | 0.30 (0.20–0.30) |"
            ),
            "{md}"
        );
        let report = crate::bench::report::markdown(&results, &[]);
        let failed = report.find("## FAILED").expect("a FAILED section");
        assert!(report[failed..].contains("- nftables at 10000 Services: round 0 failed: run nft"));
        assert!(failed < report.find("## CPU per connection").unwrap());
    }
}
