//! Maglev against random: flows moved when one endpoint leaves, the cost
//! of building every table at 10,000 Services × 10 endpoints, and of one
//! endpoint change at that scale (map writes and time, planned and written
//! into the kernel's maps). Medians over rounds; no timing is asserted.
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use vipr::datapath::ServiceMaps;
use vipr::model::{
    Backend, Conditions, EndpointModel, Frontend, FrontendKey, FrontendKind, Kind, Model,
    ObjectRef, Protocol, Scope,
};
use vipr::plan::{LbConfig, LbDefault, MapContents, MapOp, Planner, diff, diff_touched, maglev};

use super::report::Spread;
use crate::packet::Harness;

/// Services and endpoints of the scale figures (the issue's).
pub const SERVICES: u32 = 10_000;
pub const ENDPOINTS: u32 = 10;
/// Flow hashes per remap figure.
const FLOWS: u32 = 1_000_000;

#[derive(Clone, Debug, serde::Serialize)]
pub struct Remap {
    pub endpoints: u32,
    pub table_size: u32,
    /// Fraction of flows whose endpoint changes when one endpoint leaves.
    pub maglev: f64,
    pub random: f64,
    /// 1/N: only the departed endpoint's flows.
    pub ideal: f64,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct ChangeCost {
    pub algorithm: &'static str,
    /// Map ops of one endpoint change (a table write counts one).
    pub ops: usize,
    /// Map entries those ops write (a table: its positions).
    pub entries: usize,
    pub plan_ms: f64,
    pub write_ms: f64,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct MaglevFigures {
    pub remap: Vec<Remap>,
    pub table_size: u32,
    /// Building every table alone (the paper's fill), ms.
    pub tables_build_ms: f64,
    /// A full plan with Maglev, and with random, at the scale, ms.
    pub plan_maglev_ms: f64,
    pub plan_random_ms: f64,
    /// Kernel memory of the tables (4 bytes a position) and of the index.
    pub table_bytes: u64,
    pub index_bytes: u64,
    pub change: Vec<ChangeCost>,
}

fn median(values: Vec<f64>) -> f64 {
    Spread::of(values).map_or(f64::NAN, |s| s.median)
}

/// Flow hashes spread like the datapath's (a multiplicative sequence).
fn hashes() -> impl Iterator<Item = u32> {
    (0..FLOWS).map(|i| i.wrapping_mul(0x9e37_79b9) ^ (i >> 7))
}

fn endpoints(service: u32, count: u32) -> Vec<(IpAddr, u16, u32)> {
    (0..count)
        .map(|e| {
            let n = service * count + e;
            let ip = Ipv4Addr::new(10, (n >> 16) as u8 | 64, (n >> 8) as u8, n as u8);
            (IpAddr::V4(ip), 8080, n + 1)
        })
        .collect()
}

/// Flows that change endpoint when the middle one of `n` leaves.
pub fn remap(n: u32, table_size: u32) -> Remap {
    let params = maglev::MaglevParams {
        size: table_size,
        seed: maglev::DEFAULT_SEED,
    };
    let all = endpoints(0, n);
    let mut rest = all.clone();
    rest.remove(n as usize / 2);
    let (before, after) = (maglev::build(&all, params), maglev::build(&rest, params));
    let moved = |pick: &dyn Fn(u32) -> (u32, u32)| {
        hashes().filter(|&h| pick(h).0 != pick(h).1).count() as f64 / f64::from(FLOWS)
    };
    let m = table_size;
    let maglev = moved(&|h| (before[(h % m) as usize], after[(h % m) as usize]));
    // Slots in (address, port) order, `hash % count`: today's choice.
    let random = moved(&|h| (all[(h % n) as usize].2, rest[(h % (n - 1)) as usize].2));
    Remap {
        endpoints: n,
        table_size,
        maglev,
        random,
        ideal: 1.0 / f64::from(n),
    }
}

/// `SERVICES` cluster IPs with `ENDPOINTS` each; with `middle_gone`, the
/// first Service without its middle endpoint (for random, a middle one
/// shifts the slots after it: neither the cheapest nor the dearest case).
fn model(middle_gone: bool) -> Model {
    let ready = Conditions {
        ready: true,
        serving: true,
        terminating: false,
    };
    let mut m = Model::default();
    for s in 0..SERVICES {
        let key = FrontendKey {
            ip: Ipv4Addr::from(0x0a60_0000 + s).into(),
            port: 80,
            protocol: Protocol::Tcp,
            scope: Scope::Internal,
        };
        let backends = endpoints(s, ENDPOINTS)
            .into_iter()
            .enumerate()
            .filter(|&(e, _)| !(middle_gone && s == 0 && e == ENDPOINTS as usize / 2))
            .map(|(_, endpoint)| endpoint)
            .map(|(ip, port, _)| Backend {
                endpoint: Arc::new(EndpointModel {
                    ip,
                    conditions: ready,
                    node_name: None,
                    zone: None,
                    hints: Default::default(),
                    target: None,
                }),
                port,
                local: false,
            })
            .collect();
        let service = ObjectRef {
            kind: Kind::Service,
            namespace: "bench".into(),
            name: format!("s{s}").into(),
        };
        let fe = Frontend {
            key,
            kind: FrontendKind::ClusterIp,
            service,
            port_name: "".into(),
            backends,
            policy: Default::default(),
            topology: Default::default(),
        };
        m.frontends.insert(key, fe);
    }
    m
}

fn lb(default: LbDefault, table_size: u32) -> LbConfig {
    LbConfig {
        default,
        params: maglev::MaglevParams {
            size: table_size,
            seed: maglev::DEFAULT_SEED,
        },
        max_tables: SERVICES + 16,
    }
}

fn entries(ops: &[MapOp]) -> usize {
    ops.iter()
        .map(|op| match op {
            MapOp::WriteMaglevTable(_, table) => table.ids.len(),
            _ => 1,
        })
        .sum()
}

/// One endpoint leaving the first Service, with `default`, planned and
/// written into a harness holding all `SERVICES`.
fn one_change(default: LbDefault, table_size: u32, rounds: usize) -> Result<ChangeCost> {
    let mut h = Harness::with_options(|o| {
        o.sizes.maglev_tables = SERVICES + 16;
        o.sizes.maglev_table_size = table_size;
    })?;
    let mut planner = Planner::with_lb(lb(default, table_size));
    let full = model(false);
    let ops = diff(&MapContents::default(), &planner.desired(&full));
    write(&mut h, &ops)?;
    let (mut plan_ms, mut write_ms) = (Vec::new(), Vec::new());
    let mut last = (0, 0);
    let changed: BTreeSet<FrontendKey> = full.frontends.keys().take(1).copied().collect();
    for round in 0..rounds * 2 {
        // Odd rounds put the endpoint back: every round is one change.
        let m = model(round % 2 == 0);
        let start = Instant::now();
        let (touched, noted) = planner.update_noting_before(&m, &changed);
        let ops = diff_touched(&noted, planner.current(), &touched);
        let planned = Instant::now();
        write(&mut h, &ops)?;
        plan_ms.push((planned - start).as_secs_f64() * 1e3);
        write_ms.push(planned.elapsed().as_secs_f64() * 1e3);
        last = (ops.len(), entries(&ops));
    }
    Ok(ChangeCost {
        algorithm: match default {
            LbDefault::Random => "random",
            _ => "maglev",
        },
        ops: last.0,
        entries: last.1,
        plan_ms: median(plan_ms),
        write_ms: median(write_ms),
    })
}

fn write(h: &mut Harness, ops: &[MapOp]) -> Result<()> {
    let mut failed = None;
    h.maps.apply_all(ops, &mut |op, result| {
        if let Err(e) = result {
            failed.get_or_insert(format!("{op:?}: {e}"));
        }
    });
    failed.map_or(Ok(()), |e| Err(anyhow::anyhow!(e)))
}

/// Every figure; `rounds` medians each timing.
pub fn measure(rounds: usize) -> Result<MaglevFigures> {
    let table_size = proxy_common::DEFAULT_MAGLEV_TABLE_SIZE;
    let remap = [(3, 1021), (10, 1021), (10, 251), (50, 8191), (100, 16381)]
        .into_iter()
        .map(|(n, m)| remap(n, m))
        .collect();
    let params = lb(LbDefault::Maglev, table_size).params;
    let mut build_ms = Vec::new();
    let (mut plan_maglev, mut plan_random) = (Vec::new(), Vec::new());
    let full = model(false);
    for _ in 0..rounds {
        let start = Instant::now();
        for s in 0..SERVICES {
            std::hint::black_box(maglev::build(&endpoints(s, ENDPOINTS), params));
        }
        build_ms.push(start.elapsed().as_secs_f64() * 1e3);
        for (default, into) in [
            (LbDefault::Maglev, &mut plan_maglev),
            (LbDefault::Random, &mut plan_random),
        ] {
            let start = Instant::now();
            std::hint::black_box(Planner::with_lb(lb(default, table_size)).desired(&full));
            into.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    let change = [LbDefault::Random, LbDefault::Maglev]
        .into_iter()
        .map(|d| one_change(d, table_size, rounds))
        .collect::<Result<_>>()?;
    Ok(MaglevFigures {
        remap,
        table_size,
        tables_build_ms: median(build_ms),
        plan_maglev_ms: median(plan_maglev),
        plan_random_ms: median(plan_random),
        table_bytes: u64::from(SERVICES) * u64::from(table_size) * 4,
        // Per entry: the 4-byte key and 16-byte value (hash overhead aside).
        index_bytes: u64::from(SERVICES) * 20,
        change,
    })
}

/// The figures as text lines (stdout and the markdown report share them).
pub fn lines(f: &MaglevFigures) -> Vec<String> {
    let mut out = vec![
        "flows moved when one of N endpoints leaves (ideal 1/N):".to_string(),
        format!(
            "{:>4} {:>6} {:>8} {:>8} {:>8} {:>14}",
            "N", "M", "ideal", "maglev", "random", "random/maglev"
        ),
    ];
    for r in &f.remap {
        out.push(format!(
            "{:>4} {:>6} {:>7.1}% {:>7.1}% {:>7.1}% {:>14.1}",
            r.endpoints,
            r.table_size,
            r.ideal * 100.0,
            r.maglev * 100.0,
            r.random * 100.0,
            r.random / r.maglev
        ));
    }
    out.push(format!(
        "{SERVICES} Services × {ENDPOINTS} endpoints, M = {}: tables built in {:.0} ms; full plan {:.0} ms maglev, {:.0} ms random ({:.2}×); tables {:.1} MiB, index {:.2} MiB",
        f.table_size,
        f.tables_build_ms,
        f.plan_maglev_ms,
        f.plan_random_ms,
        f.plan_maglev_ms / f.plan_random_ms,
        f.table_bytes as f64 / (1 << 20) as f64,
        f.index_bytes as f64 / (1 << 20) as f64,
    ));
    out.push(format!("one endpoint change at {SERVICES} Services:"));
    for c in &f.change {
        out.push(format!(
            "{:>8}: {} map ops, {} entries written, plan {:.3} ms, write {:.3} ms",
            c.algorithm, c.ops, c.entries, c.plan_ms, c.write_ms
        ));
    }
    if let [random, maglev] = &f.change[..] {
        out.push(format!(
            "   ratio maglev/random: ops {:.1}, entries {:.1}, plan {:.1}, write {:.1}",
            maglev.ops as f64 / random.ops as f64,
            maglev.entries as f64 / random.entries as f64,
            maglev.plan_ms / random.plan_ms,
            maglev.write_ms / random.write_ms
        ));
    }
    out
}
