//! `cargo xtask bench`: kernel cost per packet of the TC programs through
//! BPF_PROG_TEST_RUN, at several service counts, printed side by side.
//!
//! BPF_PROG_TEST_RUN repeats on one skb, and a translated packet no longer
//! targets the service. So the established and reply paths are measured on a
//! pair of services that point at each other (A's backend is B's frontend and
//! back): every repetition takes the translated path. New flows are measured
//! one run per packet, each with its own source port. Counters confirm the path.
//! Usage: vipr-bench [SERVICE_COUNTS (comma-separated)] [ROUNDS]
use std::net::Ipv4Addr;

use anyhow::ensure;
use proxy_common::{IPPROTO_TCP, programs};
use vipr_tests::packet::{Harness, Tuple, tcp};

const REPEAT: u32 = 20_000;
const NEW_FLOWS: u16 = 2_000;
const A: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 96, 0, 1), 80);
const B: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 96, 0, 2), 80);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 100);

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let counts: Vec<u32> = args
        .next()
        .unwrap_or_else(|| "1,100000".into())
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let rounds = args.next().map(|n| n.parse()).transpose()?.unwrap_or(5);
    run(&counts, rounds)
}

fn run(service_counts: &[u32], rounds: usize) -> anyhow::Result<()> {
    println!(
        "{:>10} {:>12} {:>14} {:>10} {:>12}   (ns/packet, median of {rounds} rounds)",
        "services", "new flow", "established", "reply", "non-service"
    );
    let mut baseline: Option<[f64; 4]> = None;
    for &n in service_counts {
        let figures = measure(n, rounds)?;
        println!(
            "{:>10} {:>12.0} {:>14.0} {:>10.0} {:>12.0}",
            n, figures[0], figures[1], figures[2], figures[3]
        );
        if let Some(base) = baseline {
            let ratio: Vec<String> = figures
                .iter()
                .zip(base)
                .map(|(f, b)| format!("{:.2}", f / b))
                .collect();
            println!(
                "{:>10} {:>12} {:>14} {:>10} {:>12}   (ratio to the first row)",
                "", ratio[0], ratio[1], ratio[2], ratio[3]
            );
        } else {
            baseline = Some(figures);
        }
    }
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Loads a fresh datapath with `n` services and returns the median ns/packet
/// of [new, established, reply, non-service].
fn measure(n: u32, rounds: usize) -> anyhow::Result<[f64; 4]> {
    let mut h = Harness::with_options(|o| {
        o.max_services = n.max(2) + 16;
        o.max_backends = n.max(2) + 16;
        o.max_slots = n.max(2) + 16;
    })?;
    // Filler services: (10.100.x.y, 80) → one backend each.
    for i in 0..n.saturating_sub(2) {
        let vip = Ipv4Addr::from(0x0a64_0000 + i);
        let pod = Ipv4Addr::from(0x0af4_0000 + i);
        h.add_service(10 + i, (vip, 80), IPPROTO_TCP, &[(10 + i, pod, 8080)])?;
    }
    h.add_service(1, A, IPPROTO_TCP, &[(1, B.0, B.1)])?;
    h.add_service(2, B, IPPROTO_TCP, &[(2, A.0, A.1)])?;

    let mut new = Vec::new();
    let mut established = Vec::new();
    let mut reply = Vec::new();
    let mut other = Vec::new();
    for round in 0..rounds {
        // New flows: every run a fresh source port, so every run misses conntrack.
        let mut sum = 0.0;
        for port in 0..NEW_FLOWS {
            let t = Tuple {
                src: (CLIENT, 1024 + port + round as u16 * NEW_FLOWS),
                dst: A,
            };
            let (run, ns) = h.run_repeat(programs::FROM_POD, &tcp(t, 1, true, false, b""), 1)?;
            ensure!(
                run.counted == vec![("dnat_new", 1)],
                "new flow took {:?}",
                run.counted
            );
            sum += ns;
        }
        new.push(sum / NEW_FLOWS as f64);

        // Established: an ACK ping-pongs between A and B, both in conntrack.
        let t = Tuple {
            src: (CLIENT, 60_000),
            dst: A,
        };
        h.run(programs::FROM_POD, &tcp(t, 1, true, false, b""))?;
        h.run(
            programs::FROM_POD,
            &tcp(Tuple { dst: B, ..t }, 1, true, false, b""),
        )?;
        let (run, ns) = h.run_repeat(programs::FROM_POD, &tcp(t, 2, false, true, b""), REPEAT)?;
        ensure!(
            run.counted == vec![("dnat_established", REPEAT as u64)],
            "established took {:?}",
            run.counted
        );
        established.push(ns);

        // Reply: B's reply is rewritten to come from A, whose reply entry says B.
        let r = Tuple {
            src: B,
            dst: (CLIENT, 60_000),
        };
        let (run, ns) = h.run_repeat(programs::TO_POD, &tcp(r, 9, false, true, b""), REPEAT)?;
        ensure!(
            run.counted == vec![("rev_nat", REPEAT as u64)],
            "reply took {:?}",
            run.counted
        );
        reply.push(ns);

        let o = Tuple {
            src: (CLIENT, 60_001),
            dst: (Ipv4Addr::new(10, 244, 2, 11), 8080),
        };
        let (run, ns) = h.run_repeat(programs::FROM_POD, &tcp(o, 1, true, false, b""), REPEAT)?;
        ensure!(
            run.counted == vec![("pass_not_service", REPEAT as u64)],
            "non-service took {:?}",
            run.counted
        );
        other.push(ns);
    }
    Ok([
        median(new),
        median(established),
        median(reply),
        median(other),
    ])
}
