//! `cargo xtask vm-test --kernel <6.1|6.12|all>`: the datapath tests on other
//! kernels. Each kernel comes from Debian's packages (resolved from its
//! meta-package, cached under target/vm/), boots under qemu with software
//! emulation (nested KVM cannot boot these kernels here), sees the host's
//! root filesystem read-only over 9p and runs the host-built test binaries.
//! The guest's exit code comes back as a marker line on the serial console.
use super::setup::run_checked as checked;
use std::{
    io::Read as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// A Debian kernel line and the meta-package that names its newest image.
struct KernelLine {
    name: &'static str,
    meta: &'static str,
}

const LINES: [KernelLine; 2] = [
    KernelLine {
        name: "6.1",
        meta: "linux-image-amd64",
    },
    KernelLine {
        name: "6.12",
        meta: "linux-image-6.12-amd64",
    },
];

/// Debian packages the runner needs; each is checked before installing.
const PACKAGES: [&str; 5] = [
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    "kmod",
    "xz-utils",
];

/// Modules the guest needs before it can mount the host's root (9p over virtio).
const BOOT_MODULES: [&str; 3] = ["virtio_pci", "9pnet_virtio", "9p"];
/// Modules the datapath tests need (veth pairs, the bridge between the
/// emulated nodes, clsact, cls_bpf, and sock_diag for UDP: a host's kernel
/// loads those on first use, the guest's modprobe looks elsewhere).
const TEST_MODULES: &str = "veth bridge sch_ingress cls_bpf inet_diag udp_diag";

/// The reduced end-to-end scenario: real TCP and UDP through a ClusterIP,
/// including refusal without endpoints. Emulation is ~10x slower, so few.
const E2E_TESTS: [&str; 2] = [
    "every_backend_gets_connections",
    "service_without_endpoints_is_refused_at_once",
];
/// Host-network clients through the socket hooks: every Service type,
/// refusal, and a connected UDP socket leaving a removed backend.
const SOCKET_TESTS: [&str; 3] = [
    "host_clients_reach_every_service_type",
    "host_clients_meet_source_ranges_and_refusal_at_once",
    "a_connected_udp_socket_leaves_a_removed_backend",
];

/// Agents restarted and upgraded under load, with clsact filters (what a
/// kernel before 6.6 has instead of TCX).
const RESTART_TEST: &str = "agents_restart_and_upgrade_under_load_with_clsact";

/// A section (one test binary) that has not finished by then is stuck: the
/// slowest takes about 60 s under TCG.
const SECTION_LIMIT_S: u64 = 240;
/// The restart test's agents take 5-30 s to restart under TCG, and it
/// prints nothing until it ends.
const RESTART_LIMIT_S: u64 = 600;
/// What `timeout -k` waits between its TERM and its KILL.
const KILL_AFTER_S: u64 = 10;
/// A whole guest normally takes 6-8 minutes; one stuck section (run twice)
/// comes on top of this.
const GUEST_BUDGET: Duration = Duration::from_secs(15 * 60);
const EXIT_MARKER: &str = "VIPR-VM-EXIT=";
/// The guest's line for a section that was stuck (and runs once more).
const STUCK_MARKER: &str = "vm: stuck: ";
/// The guest's line for a section that failed.
const FAILED_MARKER: &str = "vm: failed: ";

/// /init of the guest's initramfs: load the 9p modules, mount the host's root
/// read-only with private /run (tmpfs, also TMPDIR), proc, sys and bpffs on top, run the script given
/// on the kernel command line in it, report its exit code, power off.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules.list); do insmod /mods/$m || echo "vm: insmod $m failed"; done
mkdir -p /host
if ! mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=1048576,cache=loose hostroot /host; then
    echo "vm: mounting the host root failed"; poweroff -f
fi
script=$(sed -n 's/.*vipr.script=\([^ ]*\).*/\1/p' /proc/cmdline)
# /tmp stays the host's (read-only): the checkout may live there (CI clones
# anywhere). Writable temporary files go to a tmpfs under /run instead.
mount -t tmpfs tmpfs /host/run
mkdir -p /host/run/tmp
export TMPDIR=/run/tmp
mount --move /proc /host/proc
mount --move /sys /host/sys
mount --move /dev /host/dev
mount -t bpf bpf /host/sys/fs/bpf
mkdir -p /host/dev/pts /host/dev/shm
mount -t devpts devpts /host/dev/pts
mount -t tmpfs tmpfs /host/dev/shm
chroot /host /bin/sh "$script"
echo "VIPR-VM-EXIT=$?"
poweroff -f
"#;

/// What the host built for the guest to run.
struct Payload {
    vipr: PathBuf,
    /// The release build: the restart test upgrades the agents to it.
    vipr_release: PathBuf,
    /// The packet test binaries (TC and XDP programs).
    packets: Vec<PathBuf>,
    e2e: PathBuf,
    e2e_socket: PathBuf,
    e2e_restart: PathBuf,
    /// Run the restart test too (`--with-restart`).
    with_restart: bool,
}

/// One kernel's outcome, for the summary.
struct Outcome {
    kernel: String,
    passed: bool,
    elapsed: Duration,
    /// `feature …` and `program …` lines of `vipr features`.
    figures: Vec<String>,
    /// What went wrong or was retried: failed sections, sections stuck
    /// once, where a stuck guest was.
    notes: Vec<String>,
    /// The guest fell silent (no exit code): worth one more boot.
    stalled: bool,
}

pub fn run(root: &Path, kernel: &str, with_restart: bool) -> anyhow::Result<()> {
    let lines: Vec<&KernelLine> = match kernel {
        "all" => LINES.iter().collect(),
        name => vec![
            LINES
                .iter()
                .find(|l| l.name == name)
                .with_context(|| format!("unknown kernel {name}: use 6.1, 6.12 or all"))?,
        ],
    };
    let started = Instant::now();
    install_packages()?;
    let payload = build_payload(root, with_restart)?;
    let work = root.join("target/vm");
    let mut outcomes = Vec::new();
    if kernel == "all" {
        outcomes.push(host_figures(&payload)?);
    }
    // One guest at a time: each keeps about one host core busy, and two
    // side by side (CI has two cores) ran every test about twice as slowly
    // for 2 minutes saved in 13.
    for line in lines {
        let image = fetch_kernel(&work, line)?;
        outcomes.push(boot_until_unstuck(root, &work, line, &image, &payload)?);
    }
    println!("\n== vm-test summary ({:.0?} in all)", started.elapsed());
    for outcome in &outcomes {
        let verdict = if outcome.passed { "passed" } else { "FAILED" };
        println!(
            "-- {}: {verdict} in {:.0?}",
            outcome.kernel, outcome.elapsed
        );
        for note in &outcome.notes {
            println!("   {note}");
        }
        // Present essentials in one line; what varies in full.
        let (present, varying): (Vec<&String>, Vec<&String>) =
            outcome.figures.iter().partition(|f| f.ends_with(": yes"));
        println!("   feature essentials: {} present", present.len());
        for figure in varying {
            println!("   {figure}");
        }
    }
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|o| !o.passed)
        .map(|o| o.kernel.as_str())
        .collect();
    if !failed.is_empty() {
        bail!("vm-test failed on {}", failed.join(", "));
    }
    Ok(())
}

fn install_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = PACKAGES
        .into_iter()
        .filter(|p| !package_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    crate::setup::apt_install("vm-test", &missing)
}

fn package_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).ends_with(" installed"))
}

/// Builds the agent and the kernel-facing test binaries on the host.
fn build_payload(root: &Path, with_restart: bool) -> anyhow::Result<Payload> {
    super::build_agent(root)?;
    // Only the restart test upgrades the agents to another build.
    let release = if with_restart {
        super::cargo(root, &["build", "--release", "-p", "proxy-userspace"])?;
        root.join("target/release/vipr")
    } else {
        root.join("target/debug/vipr")
    };
    let out = Command::new(super::env_cargo())
        .current_dir(root)
        .args([
            "test",
            "-p",
            "vipr-tests",
            "--no-run",
            "--message-format=json",
        ])
        .stderr(Stdio::inherit())
        .output()?;
    if !out.status.success() {
        bail!("building the test binaries failed");
    }
    let json = String::from_utf8_lossy(&out.stdout);
    let executable = |target: &str| {
        test_executable(&json, target)
            .with_context(|| format!("cargo did not report the {target} test executable"))
    };
    // Private copies: the guest reads them over 9p while the host's cargo
    // may relink the originals (another build in the same tree).
    let staging = root.join("target/vm/payload");
    std::fs::create_dir_all(&staging)?;
    let stage = |from: PathBuf, name: &str| -> anyhow::Result<PathBuf> {
        let to = staging.join(name);
        let _ = std::fs::remove_file(&to);
        std::fs::copy(&from, &to).with_context(|| format!("copying {}", from.display()))?;
        Ok(to)
    };
    Ok(Payload {
        vipr: stage(root.join("target/debug/vipr"), "vipr")?,
        vipr_release: stage(release, "vipr-release")?,
        packets: [
            "packets",
            "packets_xdp",
            "packets_conntrack",
            "packets_trace",
            "packets_ipv6",
            "packets_external6",
            "packets_xdp6",
            "packets_icmp_error",
            "packets_maglev",
            "packets_dsr",
            "packets_dsr6",
        ]
        .into_iter()
        .map(|name| stage(executable(name)?, name))
        .collect::<anyhow::Result<_>>()?,
        e2e: stage(executable("e2e")?, "e2e")?,
        e2e_socket: stage(executable("e2e_socket")?, "e2e_socket")?,
        e2e_restart: stage(executable("e2e_restart")?, "e2e_restart")?,
        with_restart,
    })
}

/// Finds the executable of test target `name` in cargo's JSON messages
/// (without a JSON parser: xtask keeps its dependencies minimal).
fn test_executable(messages: &str, name: &str) -> Option<PathBuf> {
    let target = format!(r#""kind":["test"],"crate_types":["bin"],"name":"{name}""#);
    messages
        .lines()
        .filter(|l| l.contains(&target))
        .find_map(|l| {
            let rest = &l[l.find(r#""executable":""#)? + 14..];
            Some(PathBuf::from(&rest[..rest.find('"')?]))
        })
}

/// Resolves the line's current image package and extracts it (once) into
/// target/vm/kernels/<package>; returns that directory.
fn fetch_kernel(work: &Path, line: &KernelLine) -> anyhow::Result<PathBuf> {
    let package = match resolve_image(line.meta) {
        Ok(p) => p,
        Err(_) => {
            // A fresh machine may not have the package lists yet.
            checked(Command::new("apt-get").arg("update"))?;
            resolve_image(line.meta)?
        }
    };
    let dir = work.join("kernels").join(&package);
    if dir.join(".complete").exists() {
        return Ok(dir);
    }
    println!("vm-test: fetching {package} (kernel {})", line.name);
    let download = work.join("downloads");
    std::fs::create_dir_all(&download)?;
    checked(
        Command::new("apt-get")
            .current_dir(&download)
            .args(["download", &package]),
    )?;
    let deb = std::fs::read_dir(&download)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
        })
        .context("apt-get download left no .deb")?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    checked(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&dir))?;
    let version = kernel_version(&dir)?;
    // The .deb carries no modules.dep; modprobe in the guest needs it.
    checked(Command::new("depmod").arg("-b").arg(&dir).arg(&version))?;
    std::fs::remove_file(&deb)?;
    std::fs::write(dir.join(".complete"), &package)?;
    Ok(dir)
}

fn resolve_image(meta: &str) -> anyhow::Result<String> {
    let out = checked(Command::new("apt-cache").args(["depends", meta]))?;
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|d| d.starts_with("linux-image-"))
        .map(String::from)
        .with_context(|| format!("{meta} depends on no linux-image package"))
}

/// The single version directory under lib/modules of an extracted image.
fn kernel_version(dir: &Path) -> anyhow::Result<String> {
    std::fs::read_dir(dir.join("lib/modules"))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .next()
        .context("the image has no lib/modules/<version>")
}

/// Writes the guest's initramfs: static busybox, /init and the 9p modules
/// (decompressed, in dependency order).
fn build_initramfs(kernel: &Path, version: &str, out: &Path) -> anyhow::Result<()> {
    let staging = out.with_extension("d");
    let _ = std::fs::remove_dir_all(&staging);
    for dir in ["bin", "mods", "proc", "sys", "dev"] {
        std::fs::create_dir_all(staging.join(dir))?;
    }
    std::fs::copy("/bin/busybox", staging.join("bin/busybox"))?;
    let init = staging.join("init");
    std::fs::write(&init, INIT)?;
    checked(Command::new("chmod").arg("755").arg(&init))?;
    let module_dir = kernel.join("lib/modules").join(version);
    let deps = std::fs::read_to_string(module_dir.join("modules.dep"))?;
    let mut order: Vec<String> = Vec::new();
    for module in BOOT_MODULES {
        // Built into this kernel: nothing to load.
        let Some(line) = deps.lines().find(|l| {
            let path = l.split(':').next().unwrap_or("");
            let file = path.rsplit('/').next().unwrap_or("");
            file.split('.').next() == Some(module)
        }) else {
            continue;
        };
        let (path, needs) = line.split_once(':').unwrap_or((line, ""));
        // modules.dep lists dependencies so that loading them last-first works.
        for file in needs.split_whitespace().rev().chain([path]) {
            let name = file
                .rsplit('/')
                .next()
                .unwrap_or(file)
                .trim_end_matches(".xz");
            if order.iter().any(|o| o == name) {
                continue;
            }
            let source = module_dir.join(file);
            let target = staging.join("mods").join(name);
            if file.ends_with(".xz") {
                let data = Command::new("xz").arg("-dc").arg(&source).output()?;
                if !data.status.success() {
                    bail!("xz -d {} failed", source.display());
                }
                std::fs::write(&target, data.stdout)?;
            } else {
                std::fs::copy(&source, &target)?;
            }
            order.push(name.to_string());
        }
    }
    std::fs::write(staging.join("modules.list"), order.join("\n"))?;
    checked(
        Command::new("sh")
            .current_dir(&staging)
            .arg("-c")
            .arg("find . | cpio --quiet -o -H newc > \"$0\"")
            .arg(out),
    )?;
    std::fs::remove_dir_all(&staging)?;
    Ok(())
}

/// The shell script the guest runs in the host's (read-only) root.
fn guest_script(root: &Path, modules_root: &Path, payload: &Payload) -> String {
    let e2e_filters = E2E_TESTS.join(" ");
    let socket_filters = SOCKET_TESTS.join(" ");
    format!(
        r#"export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root RUST_BACKTRACE=1 VIPR_BIN={vipr} VIPR_BIN_ALT={vipr_release}
cd {root}
echo "== guest kernel $(uname -r)"
modprobe -d {modules} -a {TEST_MODULES} || {{ echo "vm: modprobe {TEST_MODULES} failed"; exit 90; }}
ip link set lo up
# The socket hooks attach to a cgroup2 group.
mount -t cgroup2 cgroup2 /sys/fs/cgroup || {{ echo "vm: mounting cgroup2 failed"; exit 91; }}
rc=0
# One section per test binary, each bounded: a stuck one names itself (the
# console shows its last test) and the other sections still run. A stuck
# section runs once more, and the summary says so; a failed one does not.
section() {{
    limit=$1 name=$2; shift 2
    echo "== $name"
    start=$(date +%s)
    timeout -k {KILL_AFTER_S} "$limit" "$@"
    code=$?
    # 124: stopped by TERM; 137 after the limit: by timeout's KILL (before
    # it, something else killed it: a failure, not stuck).
    if [ $code -eq 124 ] || {{ [ $code -eq 137 ] && [ $(($(date +%s) - start)) -ge "$limit" ]; }}; then
        echo
        echo "{STUCK_MARKER}$name (after $limit s; once more)"
        # What the killed tests could not remove would be in the way.
        ip -all netns delete 2>/dev/null
        rm -rf /sys/fs/bpf/vipr-* 2>/dev/null
        timeout -k {KILL_AFTER_S} "$limit" "$@"
        code=$?
    fi
    [ $code -eq 0 ] && return
    echo
    echo "{FAILED_MARKER}$name (exit $code)"
    rc=1
}}
section {SECTION_LIMIT_S} "vipr features" {vipr} features
{packets}section {SECTION_LIMIT_S} "end-to-end ({e2e_filters})" {e2e} --test-threads=1 --exact {e2e_filters}
section {SECTION_LIMIT_S} "socket load balancing ({socket_filters})" {e2e_socket} --test-threads=1 --exact {socket_filters}
# Only where clsact is what the kernel has (no TCX), and only when asked:
# minutes under TCG, where an agent takes 5-30 s to restart.
case "{with_restart} $(uname -r)" in "true 6.1."*)
    section {RESTART_LIMIT_S} "restarts and an upgrade under load ({RESTART_TEST})" {e2e_restart} --test-threads=1 --exact --nocapture {RESTART_TEST}
esac
exit $rc
"#,
        vipr = payload.vipr.display(),
        vipr_release = payload.vipr_release.display(),
        e2e_restart = payload.e2e_restart.display(),
        with_restart = payload.with_restart,
        root = root.display(),
        modules = modules_root.display(),
        packets = payload
            .packets
            .iter()
            .map(|p| format!(
                "section {SECTION_LIMIT_S} \"packet tests: {0}\" {0} --test-threads=1\n",
                p.display()
            ))
            .collect::<String>(),
        e2e = payload.e2e.display(),
        e2e_socket = payload.e2e_socket.display(),
    )
}

/// [`boot`], and once more if the guest fell silent: under emulation a
/// guest has wedged once in many runs. The summary keeps what the first
/// one said.
fn boot_until_unstuck(
    root: &Path,
    work: &Path,
    line: &KernelLine,
    image: &Path,
    payload: &Payload,
) -> anyhow::Result<Outcome> {
    let first = boot(root, work, line, image, payload)?;
    if !first.stalled {
        return Ok(first);
    }
    println!("[{}] was silent; booting it once more", line.name);
    let mut second = boot(root, work, line, image, payload)?;
    second
        .notes
        .insert(0, format!("first boot: {}", first.notes.join("; ")));
    second.elapsed += first.elapsed;
    Ok(second)
}

/// Boots `image` and runs the payload in it; streams the console.
fn boot(
    root: &Path,
    work: &Path,
    line: &KernelLine,
    image: &Path,
    payload: &Payload,
) -> anyhow::Result<Outcome> {
    let version = kernel_version(image)?;
    let label = format!("{} ({version})", line.name);
    println!("\n== vm-test: booting {label} under qemu (TCG)");
    let started = Instant::now();
    let scratch = work.join(line.name);
    std::fs::create_dir_all(&scratch)?;
    let initramfs = scratch.join("initramfs.cpio");
    build_initramfs(image, &version, &initramfs)?;
    let script = scratch.join("guest.sh");
    std::fs::write(&script, guest_script(root, image, payload))?;

    let mut qemu = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-cpu", "max", "-smp", "2", "-m", "2G"])
        .args(["-nodefaults", "-no-reboot", "-nic", "none"])
        .args(["-display", "none", "-monitor", "none", "-serial", "stdio"])
        .arg("-kernel")
        .arg(image.join(format!("boot/vmlinuz-{version}")))
        .arg("-initrd")
        .arg(&initramfs)
        .arg("-append")
        .arg(format!(
            "console=ttyS0 quiet panic=-1 vipr.script={}",
            script.display()
        ))
        .args([
            "-fsdev",
            "local,id=root,path=/,security_model=none,readonly=on,multidevs=remap",
            "-device",
            "virtio-9p-pci,fsdev=root,mount_tag=hostroot",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting qemu-system-x86_64")?;
    let stdout = qemu.stdout.take().context("qemu stdout")?;
    // Output comes through a channel so that a wedged guest cannot block us;
    // in chunks, so that a line still unfinished when it wedges (libtest's
    // `test name ... ` before the verdict) can be shown.
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut stdout = stdout;
        let mut buf = [0u8; 4096];
        loop {
            match stdout.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if tx.send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
    });
    // Silence longer than the longest section (plus timeout's KILL) means
    // the guest itself is stuck: each section prints when it ends.
    let longest = if payload.with_restart {
        RESTART_LIMIT_S
    } else {
        SECTION_LIMIT_S
    };
    let stall = Duration::from_secs(longest + KILL_AFTER_S + 50);
    let budget = GUEST_BUDGET + 2 * Duration::from_secs(longest + KILL_AFTER_S);
    let deadline = started + budget;
    let mut console = Console::default();
    let mut pending = Vec::new();
    loop {
        let now = Instant::now();
        let silent = match rx.recv_timeout(deadline.saturating_duration_since(now).min(stall)) {
            Ok(chunk) if now < deadline => {
                pending.extend_from_slice(&chunk);
                console.take_lines(&mut pending, line.name);
                continue;
            }
            Ok(_) => false,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Instant::now() < deadline,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                if console.exit.is_none() {
                    console.stuck =
                        Some(console.where_it_was("ended without an exit code", &pending));
                }
                break;
            }
        };
        let what = if silent {
            format!("stuck (silent for {stall:?})")
        } else {
            format!("stuck (not finished after {budget:?})")
        };
        let stuck = console.where_it_was(&what, &pending);
        println!("[{}] {stuck}", line.name);
        console.stuck = Some(stuck);
        console.stalled = silent;
        qemu.kill()?;
        break;
    }
    let status = qemu.wait()?;
    let passed = console.exit == Some(0);
    if console.exit.is_none() {
        println!(
            "[{}] guest ended without an exit code (qemu: {status})",
            line.name
        );
    }
    Ok(Outcome {
        kernel: label,
        passed,
        elapsed: started.elapsed(),
        stalled: console.stalled,
        notes: console.notes.into_iter().chain(console.stuck).collect(),
        figures: console.figures,
    })
}

/// What the host keeps of the guest's console lines.
#[derive(Default)]
struct Console {
    exit: Option<i32>,
    figures: Vec<String>,
    /// Sections stuck once, sections failed, as they happened.
    notes: Vec<String>,
    /// The last `== section` header: where a stuck guest was.
    section: String,
    stuck: Option<String>,
    stalled: bool,
}

/// A line this long without its end is printed as it is.
const LONGEST_LINE: usize = 64 * 1024;

impl Console {
    /// Prints and notes each complete line of `pending`, leaving the rest.
    fn take_lines(&mut self, pending: &mut Vec<u8>, kernel: &str) {
        while let Some(end) = pending
            .iter()
            .position(|&b| b == b'\n')
            .or((pending.len() > LONGEST_LINE).then(|| pending.len() - 1))
        {
            let raw: Vec<u8> = pending.drain(..=end).collect();
            let text = String::from_utf8_lossy(&raw);
            let text = text.trim_end_matches(['\n', '\r']);
            println!("[{kernel}] {text}");
            self.saw(text);
        }
    }

    /// What happened to a guest that gave no exit code, and where it was.
    fn where_it_was(&self, what: &str, pending: &[u8]) -> String {
        let unfinished = String::from_utf8_lossy(pending);
        format!(
            "{what} in section {:?}, at {:?}",
            self.section,
            unfinished.trim()
        )
    }

    fn saw(&mut self, text: &str) {
        if let Some(code) = text.strip_prefix(EXIT_MARKER) {
            self.exit = code.trim().parse::<i32>().ok();
        } else if let Some(section) = text.strip_prefix(FAILED_MARKER) {
            self.notes.push(format!("failed: {section}"));
        } else if let Some(section) = text.strip_prefix(STUCK_MARKER) {
            self.notes.push(format!("stuck: {section}"));
        } else if let Some(section) = text.strip_prefix("== ") {
            self.section = section.to_string();
        } else if text.starts_with("feature ") || text.starts_with("program ") {
            self.figures.push(text.to_string());
        }
    }
}

/// The host kernel's figures, for comparison with the guests'.
fn host_figures(payload: &Payload) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    let out = Command::new(&payload.vipr).arg("features").output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    print!("== vipr features on the host\n{text}");
    let release = checked(Command::new("uname").arg("-r"))?;
    Ok(Outcome {
        kernel: format!("host ({})", release.trim()),
        passed: out.status.success(),
        elapsed: started.elapsed(),
        figures: text
            .lines()
            .filter(|l| l.starts_with("feature ") || l.starts_with("program "))
            .map(String::from)
            .collect(),
        notes: Vec::new(),
        stalled: false,
    })
}
