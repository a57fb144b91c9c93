//! A packet fuzzer for the kernel programs: random and damaged packets
//! (based on the flows the programs themselves translate) through every
//! TC program and the XDP program with BPF_PROG_TEST_RUN, against a cluster
//! programmed through the real pipeline that changes under it. Every run
//! must end in a defined verdict with its counter and leave a well-formed
//! packet; the live maps are checked every few thousand packets.
//!
//! Runs inside a [`crate::packet::FibNamespace`] (FIB lookups need `ext0`).
mod collisions;
pub mod frames;
pub mod state;
mod traffic;
mod verdicts;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use aya::maps::{HashMap as BpfHash, MapData};
use aya::programs::{TestRun, TestRunOptions};
use proxy_common::{AffinityKey, AffinityValue, Counter, CtKey};

use crate::packet::Harness;
use verdicts::{Outcome, Program};

/// Conntrack capacity: small, so that the table fills and is swept often.
const CONNTRACK_ENTRIES: u32 = 2_048;

pub struct Options {
    pub packets: u64,
    pub seed: u64,
    /// Packets between checks of the live maps.
    pub check_every: u64,
    /// Packets between switches of the cluster's version.
    pub switch_every: u64,
}

#[derive(Debug, Default)]
pub struct Report {
    pub packets: u64,
    /// Runs by program and verdict label.
    pub outcomes: BTreeMap<(&'static str, &'static str), u64>,
    /// Runs by kind of packet sent and verdict label.
    pub kinds: BTreeMap<(&'static str, &'static str), u64>,
    pub mutations: BTreeMap<&'static str, u64>,
    pub map_checks: u64,
    pub sweeps: u64,
    pub switches: u64,
    /// Everything that broke a rule, with what reproduces it.
    pub violations: Vec<String>,
    /// Known datapath findings: how often, and the first few packets.
    pub findings: BTreeMap<&'static str, (u64, Vec<String>)>,
    /// Map problems that follow from the known conntrack finding.
    pub explained_map_problems: u64,
    pub elapsed: Duration,
}

impl Report {
    fn finding(&mut self, name: &'static str, example: impl FnOnce() -> String) {
        let (count, examples) = self.findings.entry(name).or_default();
        *count += 1;
        if examples.len() < 3 {
            examples.push(example());
        }
    }
}

pub fn run(options: &Options) -> anyhow::Result<Report> {
    let mut h = Harness::with_options(|o| {
        o.node_ipv4 = Some(state::NODE);
        o.sizes.conntrack = CONNTRACK_ENTRIES;
    })?;
    let map = h.datapath.ebpf.take_map(proxy_common::maps::AFFINITY);
    let affinity = BpfHash::try_from(map.context("no affinity map")?)?;
    let cluster = state::Cluster::new(&mut h);
    let mut fuzzer = Fuzzer {
        counters: h.counters()?.iter().map(|(_, n)| *n).collect(),
        ifindex: nix::net::if_::if_nametoindex("ext0")?,
        h,
        affinity,
        traffic: traffic::Traffic::new(options.seed),
        cluster,
        watch: collisions::Watch::default(),
        report: Report::default(),
        seed: options.seed,
    };
    fuzzer.traffic.set_cluster(fuzzer.cluster.endpoints());
    let start = Instant::now();
    for i in 0..options.packets {
        fuzzer.packet(i)?;
        if (i + 1) % options.check_every == 0 || i + 1 == options.packets {
            fuzzer.check_maps(i)?;
        }
        if (i + 1) % options.switch_every == 0 {
            fuzzer.cluster.switch(&mut fuzzer.h);
            fuzzer.traffic.set_cluster(fuzzer.cluster.endpoints());
            fuzzer.report.switches += 1;
        }
        if fuzzer.report.violations.len() > 20 {
            break;
        }
    }
    fuzzer.report.elapsed = start.elapsed();
    let (count, examples) = (fuzzer.watch.count, fuzzer.watch.examples);
    if count > 0 {
        let name = "a new flow took another flow's conntrack reverse entry";
        fuzzer.report.findings.insert(name, (count, examples));
    }
    Ok(fuzzer.report)
}

struct Fuzzer {
    h: Harness,
    affinity: BpfHash<MapData, AffinityKey, AffinityValue>,
    ifindex: u32,
    cluster: state::Cluster,
    traffic: traffic::Traffic,
    /// Counter totals after the previous run.
    counters: Vec<u64>,
    watch: collisions::Watch,
    report: Report,
    seed: u64,
}

impl Fuzzer {
    fn packet(&mut self, i: u64) -> anyhow::Result<()> {
        let (program, kind, input, damage) = self.traffic.next();
        for d in &damage {
            *self.report.mutations.entry(d).or_default() += 1;
        }
        let before = collisions::Watch::before(&self.h, &self.cluster, &input);
        let mut output = [0u8; 2048];
        let (verdict, len) = test_run(&mut self.h, program, &input, &mut output, self.ifindex)
            .with_context(|| format!("{}: {}", program.name(), hex(&input)))?;
        let output = &output[..len];
        let now = self.h.counters()?;
        let counted: Vec<(Counter, u64)> = now
            .iter()
            .zip(&self.counters)
            .filter(|((_, a), b)| a != *b)
            .map(|((c, a), b)| (*c, a - b))
            .collect();
        self.counters = now.iter().map(|(_, n)| *n).collect();
        let seed = self.seed;
        let what = || {
            format!(
                "packet {i} (seed {seed}) {}: {}",
                program.name(),
                hex(&input)
            )
        };
        self.watch.after(&before, &input, output, &counted, what);
        let outcome = Outcome {
            program,
            input: &input,
            verdict,
            output,
            counted: &counted,
        };
        if let Some(name) = verdicts::finding(&outcome) {
            self.report.finding(name, what);
        }
        match verdicts::judge(&outcome, &self.cluster.ever) {
            Ok(label) => {
                *self
                    .report
                    .outcomes
                    .entry((program.name(), label))
                    .or_default() += 1;
                *self.report.kinds.entry((kind, label)).or_default() += 1;
                let translated = counted.iter().any(|(c, _)| verdicts::translation(*c));
                self.traffic.observe(&input, output, translated);
            }
            Err(problem) => self.report.violations.push(format!(
                "{}: {problem}; counted {counted:?}, verdict {verdict}\n  output {}",
                what(),
                hex(output),
            )),
        }
        self.report.packets += 1;
        Ok(())
    }

    fn check_maps(&mut self, i: u64) -> anyhow::Result<()> {
        self.report.map_checks += 1;
        for (keys, problem) in state::map_problems(&self.h, &self.cluster, &self.affinity) {
            if self.watch.explains(&keys) {
                self.report.explained_map_problems += 1;
            } else {
                let seed = self.seed;
                self.report
                    .violations
                    .push(format!("after packet {i} (seed {seed}): {problem}"));
            }
        }
        if sweep(&mut self.h)? {
            self.report.sweeps += 1;
            self.watch.clear();
        }
        Ok(())
    }
}

/// One run of `program` on `input`, as if it arrived on (or left by) `ext0`.
fn test_run(
    h: &mut Harness,
    program: Program,
    input: &[u8],
    output: &mut [u8],
    ifindex: u32,
) -> anyhow::Result<(i32, usize)> {
    let ctx: Vec<u32> = if program == Program::Xdp {
        // xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index.
        vec![0, input.len() as u32, 0, ifindex, 0]
    } else {
        // __sk_buff up to `ifindex` (the 11th u32); the fields before it must be 0.
        let mut skb = vec![0; 11];
        skb[10] = ifindex;
        skb
    };
    let ctx: Vec<u8> = ctx.iter().flat_map(|v| v.to_ne_bytes()).collect();
    let mut options = TestRunOptions::new();
    options.data_in = Some(input);
    options.data_out = Some(output);
    options.ctx_in = Some(&ctx);
    let result = match program {
        Program::Xdp => h.datapath.xdp()?.test_run(options)?,
        _ => h.datapath.program(program.name())?.test_run(options)?,
    };
    Ok((result.return_value as i32, result.data_size_out as usize))
}

/// The agent's sweep, simplified: once the table is three quarters full,
/// every flow goes (both entries). Returns whether it swept.
fn sweep(h: &mut Harness) -> anyhow::Result<bool> {
    let keys: Vec<CtKey> = h.conntrack.keys().filter_map(Result::ok).collect();
    if (keys.len() as u32) < CONNTRACK_ENTRIES * 3 / 4 {
        return Ok(false);
    }
    for key in keys {
        // An entry the kernel removed meanwhile is fine.
        let _ = h.conntrack.remove(&key);
    }
    Ok(true)
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
