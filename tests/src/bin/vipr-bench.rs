//! `cargo xtask bench` runs this. Usage:
//!   vipr-bench VIPR_BIN OUT_DIR (--quick | --full | --packets-only | --smoke | --maglev-only)
//! Prints every sample as it lands; writes OUT_DIR/benchmarks.{json,md} and plots.
//! Exits non-zero, after writing what it has, when a contender failed.
use std::path::PathBuf;

use anyhow::{Context, bail};
use vipr_tests::bench::{self, Plan, Results, contenders::Contender, packet_cost};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let usage =
        "usage: vipr-bench VIPR_BIN OUT_DIR (--quick|--full|--packets-only|--smoke|--maglev-only)";
    let vipr = PathBuf::from(args.next().context(usage)?);
    let out_dir = PathBuf::from(args.next().context(usage)?);
    let mode = args.next().unwrap_or_else(|| "--quick".into());
    if mode == "--maglev-only" {
        let maglev = bench::maglev::measure(3)?;
        bench::maglev::lines(&maglev)
            .iter()
            .for_each(|line| println!("{line}"));
        return Ok(());
    }
    let (plan, connections) = match mode.as_str() {
        "--quick" => (Plan::quick(), true),
        "--full" => (Plan::full(), true),
        "--packets-only" => (Plan::quick(), false),
        "--smoke" => (Plan::smoke(), true),
        _ => bail!("{usage}"),
    };
    if connections {
        bench::tools::check(&Contender::ALL, &vipr)?;
        // A bench killed outright (SIGKILL) leaves its namespaces; its
        // nginx, wrk and agent die with it (pdeathsig).
        for ns in vipr_tests::netns::cleanup_dead_runs()? {
            println!("deleted {ns}, left by a run that is gone");
        }
    }
    let work = std::env::temp_dir().join(format!("vipr-bench-{}", std::process::id()));
    let mut results = if connections {
        bench::run(&plan, &vipr, &work)?
    } else {
        Results::default()
    };
    let _ = std::fs::remove_dir_all(&work);
    results.mode = mode.trim_start_matches("--").to_owned();

    println!("\nkernel cost per packet (ns, median of 5 rounds):");
    println!(
        "{:>9} {:>11} {:>9} {:>11} {:>12} {:>7} {:>12}",
        "services", "conntrack", "new flow", "single run", "established", "reply", "non-service"
    );
    let mut points: Vec<(u32, u32)> = plan.packet_service_counts.iter().map(|&n| (n, 0)).collect();
    points.push((1, plan.conntrack_fill));
    for (services, ct) in points {
        let p = packet_cost::measure(services, ct, 5)?;
        println!(
            "{:>9} {:>11} {:>9.0} {:>11.0} {:>12.0} {:>7.0} {:>12.0}",
            p.services,
            p.conntrack_entries,
            p.new_flow_ns,
            p.single_run_overhead_ns,
            p.established_ns,
            p.reply_ns,
            p.non_service_ns
        );
        results.packet_cost.push(p);
    }
    if let (Some(first), Some(last)) = (
        results.packet_cost.first(),
        results
            .packet_cost
            .iter()
            .rfind(|p| p.conntrack_entries == 0),
    ) {
        println!(
            "ratio {} → {} services: established {:.2}, reply {:.2}, non-service {:.2}",
            first.services,
            last.services,
            last.established_ns / first.established_ns,
            last.reply_ns / first.reply_ns,
            last.non_service_ns / first.non_service_ns
        );
    }
    let v4 = packet_cost::measure(2, 0, 5)?;
    let v6 = packet_cost::measure_ipv6(5)?;
    println!("\nIPv6 against IPv4, two services (ns/packet, median of 5 rounds; IPv6/IPv4):");
    for (path, four, six) in [
        ("new flow", v4.new_flow_ns, v6.new_flow_ns),
        ("established", v4.established_ns, v6.established_ns),
        ("reply", v4.reply_ns, v6.reply_ns),
        ("non-service", v4.non_service_ns, v6.non_service_ns),
    ] {
        println!(
            "{path:>12}: IPv4 {four:>6.0}  IPv6 {six:>6.0}  {:.2}",
            six / four
        );
    }
    results.packet_cost_by_family = Some([v4, v6]);
    let fib = vipr_tests::packet::FibNamespace::new();
    let nodeport = vipr_tests::netns::run_in(fib.name(), || packet_cost::nodeport_xdp_vs_tc(5))??;
    println!(
        "\nNodePort new flow (ns/packet): XDP {:.0} (single run {:.0}), TC {:.0} (single run {:.0}); XDP/TC {:.2}",
        nodeport.xdp_ns,
        nodeport.xdp_single_run_overhead_ns,
        nodeport.tc_ns,
        nodeport.tc_single_run_overhead_ns,
        nodeport.xdp_ns / nodeport.tc_ns
    );
    results.nodeport_cost = Some(nodeport);
    use bench::dsr_cost::Family;
    println!("\nXDP NodePort to a remote endpoint, DSR against SNAT (median of 5 rounds):");
    let dsr = vipr_tests::netns::run_in(fib.name(), || bench::dsr_cost::measure(5, Family::V4))??;
    dsr.lines().iter().for_each(|line| println!("{line}"));
    results.dsr_cost = Some(dsr);
    println!("\nThe same in IPv6 (the DSR header: 24 bytes):");
    let dsr6 = vipr_tests::netns::run_in(fib.name(), || bench::dsr_cost::measure(5, Family::V6))??;
    dsr6.lines().iter().for_each(|line| println!("{line}"));
    results.dsr_cost6 = Some(dsr6);
    println!("\nMaglev against random (medians of 3 rounds):");
    let maglev = bench::maglev::measure(3)?;
    bench::maglev::lines(&maglev)
        .iter()
        .for_each(|line| println!("{line}"));
    results.maglev = Some(maglev);
    bench::report::write_all(&results, &out_dir)?;
    println!(
        "\nwrote {}/benchmarks.md, benchmarks.json and plots",
        out_dir.display()
    );
    if !results.failures.is_empty() {
        println!("\nFAILED:");
        for f in &results.failures {
            println!(
                "  {} at {} Services: {}",
                f.contender.name(),
                f.services,
                f.reason
            );
        }
        bail!("{} measurement(s) failed", results.failures.len());
    }
    Ok(())
}
