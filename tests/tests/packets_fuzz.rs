//! The packet fuzzer (`vipr_tests::fuzz_packets`): VIPR_FUZZ_PACKETS packets
//! (default 1,000,000) through the real programs with BPF_PROG_TEST_RUN,
//! from VIPR_FUZZ_SEED (default: the clock; printed, so a failure replays).
//! Needs root; creates one network namespace of its own.
use std::time::{SystemTime, UNIX_EPOCH};

use vipr_tests::fuzz_packets::{Options, run};
use vipr_tests::{netns, packet::FibNamespace};

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .replace('_', "")
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value}: not a number")),
    )
}

#[test]
fn random_and_damaged_packets_keep_every_rule() {
    let packets = env_u64("VIPR_FUZZ_PACKETS").unwrap_or(1_000_000);
    let seed = env_u64("VIPR_FUZZ_SEED").unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    });
    println!("packet fuzzer: {packets} packets, seed {seed} (VIPR_FUZZ_SEED={seed} replays it)");
    let options = Options {
        packets,
        seed,
        check_every: 5_000,
        switch_every: 100_000,
    };
    let ns = FibNamespace::new();
    let report = netns::run_in(ns.name(), || run(&options))
        .expect("enter namespace")
        .expect("fuzzer runs (needs root)");

    println!(
        "{} packets in {:.1} s ({:.1} µs each); {} map checks, {} sweeps, {} cluster switches",
        report.packets,
        report.elapsed.as_secs_f64(),
        report.elapsed.as_secs_f64() * 1e6 / report.packets.max(1) as f64,
        report.map_checks,
        report.sweeps,
        report.switches
    );
    for ((program, label), n) in &report.outcomes {
        println!("  {program:20} {label:26} {n:>9}");
    }
    for ((kind, label), n) in &report.kinds {
        println!("  {kind:24} {label:26} {n:>9}");
    }
    println!("  mutations: {:?}", report.mutations);
    // The findings this fuzzer made (a reverse entry taken over by another
    // flow, a RST answered with a RST) are fixed: they fail the run again.
    for (name, (count, examples)) in &report.findings {
        println!("FINDING {name}: {count} times, e.g.");
        for example in examples {
            println!("    {example}");
        }
    }
    println!(
        "  ({} map problems follow from the conntrack finding)",
        report.explained_map_problems
    );
    assert!(
        report.findings.is_empty(),
        "datapath findings (seed {seed})"
    );
    for v in &report.violations {
        println!("VIOLATION {v}");
    }
    assert!(
        report.violations.is_empty(),
        "{} violations (seed {seed})",
        report.violations.len()
    );
    assert_eq!(report.packets, packets);
    // The fuzzer reached the paths it exists for.
    for label in [
        "dnat_new",
        "dnat_established",
        "rev_nat",
        "rev_snat",
        "reject_tcp_rst",
        "xdp_tx",
    ] {
        let reached = report
            .outcomes
            .iter()
            .any(|((_, l), n)| *l == label && *n > 0);
        assert!(reached || packets < 100_000, "never reached {label}");
    }
}
