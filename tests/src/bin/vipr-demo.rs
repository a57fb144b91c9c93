//! `cargo xtask demo` runs this: vipr's main job on the example manifests,
//! in a two-node cluster of network namespaces that exists only for the demo.
//! Usage: vipr-demo VIPR_BIN EXAMPLES_DIR [REQUESTS]
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;
use vipr_tests::{demo, demo6, echo};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let vipr = PathBuf::from(
        args.next()
            .context("usage: vipr-demo VIPR_BIN EXAMPLES_DIR [REQUESTS]")?,
    );
    let examples = PathBuf::from(args.next().context("missing EXAMPLES_DIR")?);
    let requests = args.next().map(|n| n.parse()).transpose()?.unwrap_or(12);
    run(&examples, &vipr, requests)
}

fn run(examples: &Path, vipr: &Path, requests: usize) -> anyhow::Result<()> {
    // Work on a copy so the demo never edits the checked-in examples.
    let manifests =
        std::env::temp_dir().join(format!("vipr-demo-manifests-{}", std::process::id()));
    demo::prepare_manifests(&manifests, Some(examples))?;
    let result = show(vipr, &manifests, requests);
    let _ = std::fs::remove_dir_all(&manifests);
    result
}

fn show(vipr: &Path, manifests: &Path, requests: usize) -> anyhow::Result<()> {
    println!("starting two emulated dual-stack nodes, five pods and one vipr agent per node…");
    let cluster = demo::DemoCluster::start_dual_stack(vipr, manifests)?;
    println!(
        "\nService demo/echo {}:{} (tcp) → echo-1, echo-2 on node1 and echo-3 on node2",
        demo::CLUSTER_IP,
        demo::HTTP_PORT
    );
    let counts = cluster.run_demo(requests)?;
    println!("\ntotals per backend:");
    for (backend, n) in &counts {
        println!("  {backend:<8} {n:>4}");
    }

    let client = cluster.netns("client");
    let (name, from) = echo::udp_request(&client, demo::dns_addr(), Duration::from_secs(2))
        .context("UDP request through the ClusterIP")?;
    println!(
        "\nUDP {} → answered by {name}, reply source {from}",
        demo::dns_addr()
    );

    // A process in node1's own network namespace (a host-network pod, a
    // node daemon): load-balanced by the socket hooks when it connects.
    let host = cluster.netns("node1");
    let reply = echo::tcp_request_full(&host, demo::http_addr(), Duration::from_secs(2))
        .context("host-network request through the ClusterIP")?;
    println!(
        "from node1's own network namespace (host network, socket hooks) {} → served by {}, getpeername {}",
        demo::http_addr(),
        reply.name,
        reply.peer
    );

    demo6::add_dual_stack_service(&cluster)?;
    println!(
        "\nService demo/{} (dual-stack, one ClusterIP per family, the same pods):",
        demo6::DUAL_SERVICE
    );
    for (frontend, name, peer) in demo6::ask_both_families(&cluster)? {
        println!("  {frontend} → served by {name}, getpeername {peer}");
    }

    let started = std::time::Instant::now();
    let refused = echo::tcp_request(&client, demo::empty_http_addr(), Duration::from_secs(2));
    println!(
        "Service demo/empty {} (no endpoints) → {} after {:.1} ms",
        demo::empty_http_addr(),
        match &refused {
            Ok(name) => format!("unexpectedly served by {name}"),
            Err(e) => format!("refused ({e})"),
        },
        started.elapsed().as_secs_f64() * 1e3
    );
    for dir in cluster.pin_dirs() {
        let node = dir.display().to_string();
        println!("\nvipr dump --bpffs {node}");
        let out = std::process::Command::new(vipr)
            .args(["dump", "--bpffs"])
            .arg(&dir)
            .output()?;
        print!("{}", String::from_utf8_lossy(&out.stdout));
    }
    println!("\ntearing down…");
    cluster.shutdown()?;
    println!("done: no namespace, link or pin left behind.");
    anyhow::ensure!(
        counts.len() == demo::BACKENDS.len() || requests < demo::BACKENDS.len() * 3,
        "not every backend served a request: {counts:?}"
    );
    Ok(())
}
