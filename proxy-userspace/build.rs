//! Builds the kernel programs (proxy-ebpf) for the BPF target and leaves the
//! object in OUT_DIR, where `datapath::object` embeds it.
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")?;
    let root_dir = format!("{manifest_dir}/../proxy-ebpf");
    aya_build::build_ebpf(
        [Package {
            name: "proxy-ebpf",
            root_dir: &root_dir,
            ..Default::default()
        }],
        Toolchain::default(),
    )
}
