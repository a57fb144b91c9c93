//! What this kernel offers the datapath, found by asking it rather than by
//! reading its version: program and map types and helpers through trial
//! loads, TCX and XDP modes by attaching trivial programs in a throwaway
//! network namespace. Missing essentials stop the agent with their names;
//! missing optional features choose a fallback.
use std::path::Path;

use aya::{
    maps::MapType,
    programs::{
        LinkOrder, ProgramType, SchedClassifier, TcAttachType, Xdp, XdpMode,
        tc::{TcAttachOptions, qdisc_add_clsact},
    },
    sys::{BpfHelper, is_helper_supported, is_map_supported, is_program_supported},
};
use proxy_common::programs;
use tracing::info;

use super::{
    AttachMode, Datapath, DatapathError, LoadOptions, cleanup_pins, loader::typed_program,
};

const MAP_TYPES: [(&str, MapType); 3] = [
    ("hash map", MapType::Hash),
    ("LRU hash map", MapType::LruHash),
    ("per-CPU array", MapType::PerCpuArray),
];

/// Every helper the TC programs call.
const HELPERS: [(&str, BpfHelper); 10] = [
    (
        "helper bpf_map_lookup_elem",
        BpfHelper::BPF_FUNC_map_lookup_elem,
    ),
    (
        "helper bpf_map_update_elem",
        BpfHelper::BPF_FUNC_map_update_elem,
    ),
    (
        "helper bpf_skb_load_bytes",
        BpfHelper::BPF_FUNC_skb_load_bytes,
    ),
    (
        "helper bpf_skb_store_bytes",
        BpfHelper::BPF_FUNC_skb_store_bytes,
    ),
    (
        "helper bpf_l3_csum_replace",
        BpfHelper::BPF_FUNC_l3_csum_replace,
    ),
    (
        "helper bpf_l4_csum_replace",
        BpfHelper::BPF_FUNC_l4_csum_replace,
    ),
    (
        "helper bpf_skb_change_tail",
        BpfHelper::BPF_FUNC_skb_change_tail,
    ),
    ("helper bpf_redirect", BpfHelper::BPF_FUNC_redirect),
    ("helper bpf_fib_lookup", BpfHelper::BPF_FUNC_fib_lookup),
    (
        "helper bpf_redirect_neigh",
        BpfHelper::BPF_FUNC_redirect_neigh,
    ),
];

/// Every helper the XDP program calls.
const XDP_HELPERS: [(&str, BpfHelper); 2] = [
    (
        "helper bpf_fib_lookup (XDP)",
        BpfHelper::BPF_FUNC_fib_lookup,
    ),
    ("helper bpf_redirect (XDP)", BpfHelper::BPF_FUNC_redirect),
];

/// How XDP programs could run on pod interfaces (veth).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum XdpSupport {
    Native,
    /// Only the kernel's generic (skb) mode; the reason native failed.
    Generic(String),
    Unsupported(String),
}

/// The probe's findings.
#[derive(Clone, Debug)]
pub struct KernelFeatures {
    pub release: String,
    /// Essential features, all present (else the probe fails).
    pub essentials: Vec<&'static str>,
    pub tc_attach: AttachMode,
    /// Why TCX was refused, when it was.
    pub tcx_refused: Option<String>,
    pub xdp: XdpSupport,
    /// Socket hooks the kernel refused to load, with the reason.
    pub socket_hooks_refused: Vec<(&'static str, String)>,
    /// Whether sockets can be destroyed on request (netlink SOCK_DESTROY).
    pub sock_destroy: Result<(), String>,
}

impl KernelFeatures {
    /// One line per feature: `feature <name>: <what was found>`.
    pub fn lines(&self) -> Vec<String> {
        let mut lines = vec![format!("feature kernel: {}", self.release)];
        lines.extend(self.essentials.iter().map(|e| format!("feature {e}: yes")));
        lines.push(match (&self.tc_attach, &self.tcx_refused) {
            (AttachMode::Tcx, _) => "feature tc attach: TCX links".to_string(),
            (_, Some(why)) => format!("feature tc attach: clsact (fallback; TCX refused: {why})"),
            (_, None) => "feature tc attach: clsact".to_string(),
        });
        lines.push(match &self.xdp {
            XdpSupport::Native => "feature xdp on veth: native".to_string(),
            XdpSupport::Generic(why) => {
                format!("feature xdp on veth: generic (fallback; native refused: {why})")
            }
            XdpSupport::Unsupported(why) => format!("feature xdp: unavailable ({why})"),
        });
        let refused = &self.socket_hooks_refused;
        // The hooks by their attach point (connect4, ...), in attach order.
        let loaded = super::SOCKET_PROGRAMS
            .iter()
            .filter(|(name, _)| !refused.iter().any(|(r, _)| r == name))
            .map(|(name, _)| name.trim_start_matches("vipr_sock_"))
            .collect::<Vec<_>>()
            .join(", ");
        lines.push(match self.socket_lb_missing() {
            Some(why) => format!("feature socket-lb: unavailable ({why})"),
            None if refused.is_empty() => format!("feature socket-lb: {loaded}"),
            None => format!(
                "feature socket-lb: {loaded} (fallback: getpeername shows the backend; refused: {})",
                refused
                    .iter()
                    .map(|(name, why)| format!("{name}: {why}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        });
        lines.push(match &self.sock_destroy {
            Ok(()) => "feature udp socket destroy: netlink SOCK_DESTROY".into(),
            Err(why) => format!(
                "feature udp socket destroy: unavailable (fallback: a connected UDP socket keeps a removed backend until the application reconnects; {why})"
            ),
        });
        lines
    }

    /// Why the socket hooks cannot balance at all, if they cannot: one of
    /// the hooks they need is refused (the getpeername ones are optional).
    pub fn socket_lb_missing(&self) -> Option<String> {
        let essential: Vec<String> = self
            .socket_hooks_refused
            .iter()
            .filter(|(name, _)| !super::OPTIONAL_SOCKET_PROGRAMS.contains(name))
            .map(|(name, why)| format!("{name}: {why}"))
            .collect();
        (!essential.is_empty()).then(|| essential.join("; "))
    }
}

/// Checks the essentials, loads the object, probes the attach modes and
/// logs one line per feature.
pub fn load_probed(options: &LoadOptions) -> Result<(Datapath, KernelFeatures), DatapathError> {
    let essentials = check_essentials()?;
    let mut datapath = Datapath::load(options)?;
    let features = probe_attach(&mut datapath, essentials)?;
    for line in features.lines() {
        info!("{}", line.trim_start_matches("feature "));
    }
    for line in program_figures(&mut datapath) {
        info!("{line}");
    }
    Ok((datapath, features))
}

/// `vipr features`: the probe's findings and the verifier's figures, from a
/// load under a temporary bpffs directory that is removed afterwards.
pub fn report(bpffs_root: &Path) -> Result<String, DatapathError> {
    let pin_dir = bpffs_root.join(format!("vipr-features-{}", std::process::id()));
    let result = (|| {
        let essentials = check_essentials()?;
        let mut datapath = Datapath::load(&LoadOptions::new(&pin_dir))?;
        let features = probe_attach(&mut datapath, essentials)?;
        let mut lines = features.lines();
        lines.extend(program_figures(&mut datapath));
        Ok(lines.join("\n") + "\n")
    })();
    cleanup_pins(&pin_dir)?;
    result
}

/// Per program: instructions after the verifier's rewrites (xlated) and
/// the instructions it processed to prove the program safe.
pub fn program_figures(datapath: &mut Datapath) -> Vec<String> {
    let mut lines: Vec<String> = datapath
        .ebpf
        .programs()
        .filter(|(name, _)| {
            ![programs::PROBE_TC, programs::XDP_PASS, programs::TRACE_HOST].contains(name)
        })
        .map(|(name, program)| match program.info() {
            Ok(info) => format!(
                "program {name}: {} insns, {} verified",
                info.size_translated().unwrap_or(0) / 8,
                info.verified_instruction_count().unwrap_or(0)
            ),
            Err(e) => format!("program {name}: not loaded ({e})"),
        })
        .collect();
    lines.sort();
    lines
}

fn release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|r| r.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Trial loads for what the programs cannot do without. Run before the
/// object loads, so a missing piece is named instead of surfacing as a
/// verifier or map-creation error.
fn check_essentials() -> Result<Vec<&'static str>, DatapathError> {
    let mut found = Vec::new();
    let mut missing = Vec::new();
    let mut note = |name: &'static str, ok: bool| {
        if ok {
            found.push(name)
        } else {
            missing.push(name)
        }
    };
    note(
        "TC classifier programs",
        is_program_supported(ProgramType::SchedClassifier).unwrap_or(false),
    );
    for (name, map_type) in MAP_TYPES {
        note(name, is_map_supported(map_type).unwrap_or(false));
    }
    note("global data (.rodata)", aya::features().bpf_global_data());
    for (name, helper) in HELPERS {
        let ok = is_helper_supported(ProgramType::SchedClassifier, helper).unwrap_or(false);
        note(name, ok);
    }
    // The external XDP program loads with the others (attaching it is optional).
    note(
        "XDP programs",
        is_program_supported(ProgramType::Xdp).unwrap_or(false),
    );
    for (name, helper) in XDP_HELPERS {
        note(
            name,
            is_helper_supported(ProgramType::Xdp, helper).unwrap_or(false),
        );
    }
    if missing.is_empty() {
        Ok(found)
    } else {
        Err(DatapathError::MissingFeatures(missing.join(", ")))
    }
}

/// Probes TCX and XDP on a private network namespace's interfaces, on a
/// thread of its own: `unshare` moves only the calling thread, and the
/// namespace goes away with it.
fn probe_attach(
    datapath: &mut Datapath,
    essentials: Vec<&'static str>,
) -> Result<KernelFeatures, DatapathError> {
    let (tc, xdp) = std::thread::scope(|scope| {
        scope
            .spawn(|| -> Result<_, DatapathError> {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| DatapathError::Probe(format!("private network namespace: {e}")))?;
                Ok((probe_tc(datapath)?, probe_xdp(datapath)))
            })
            .join()
            .map_err(|_| DatapathError::Probe("probe thread panicked".into()))?
    })?;
    let (tc_attach, tcx_refused) = tc;
    Ok(KernelFeatures {
        release: release(),
        essentials,
        tc_attach,
        tcx_refused,
        xdp,
        socket_hooks_refused: super::load_socket_programs(datapath),
        sock_destroy: super::probe_sock_destroy(),
    })
}

/// TCX if a link attaches; else clsact, which must work then.
fn probe_tc(datapath: &mut Datapath) -> Result<(AttachMode, Option<String>), DatapathError> {
    let program = tc_probe_program(datapath)?;
    let tcx = program.attach_with_options(
        "lo",
        TcAttachType::Ingress,
        TcAttachOptions::TcxOrder(LinkOrder::default()),
    );
    let refused = match tcx {
        Ok(id) => {
            program.detach(id).ok();
            return Ok((AttachMode::Tcx, None));
        }
        Err(e) => error_chain(&e),
    };
    // EEXIST is fine; any other failure shows in the attach below.
    let _ = qdisc_add_clsact("lo");
    let id = program
        .attach_with_options(
            "lo",
            TcAttachType::Ingress,
            TcAttachOptions::Netlink(Default::default()),
        )
        .map_err(|e| {
            DatapathError::MissingFeatures(format!(
                "a TC attach point: TCX refused ({refused}) and clsact/cls_bpf failed ({})",
                error_chain(&e)
            ))
        })?;
    program.detach(id).ok();
    Ok((AttachMode::Clsact, Some(refused)))
}

fn tc_probe_program(datapath: &mut Datapath) -> Result<&mut SchedClassifier, DatapathError> {
    let name = programs::PROBE_TC;
    let program: &mut SchedClassifier = typed_program(&mut datapath.ebpf, name)?;
    if program.fd().is_err() {
        program
            .load()
            .map_err(|source| DatapathError::Program { name, source })?;
    }
    Ok(program)
}

/// Native XDP on a veth pair made for the purpose (with `ip`), else generic.
fn probe_xdp(datapath: &mut Datapath) -> XdpSupport {
    if !is_program_supported(ProgramType::Xdp).unwrap_or(false) {
        return XdpSupport::Unsupported("XDP programs refused".into());
    }
    let Some(program) = datapath.ebpf.program_mut(programs::XDP_PASS) else {
        return XdpSupport::Unsupported("no probe program in the object".into());
    };
    let program: &mut Xdp = match program.try_into() {
        Ok(p) => p,
        Err(e) => return XdpSupport::Unsupported(error_chain(&e)),
    };
    if program.fd().is_err()
        && let Err(e) = program.load()
    {
        return XdpSupport::Unsupported(error_chain(&e));
    }
    let veth = std::process::Command::new("ip")
        .args([
            "link", "add", "probe0", "type", "veth", "peer", "name", "probe1",
        ])
        .output();
    let native_refused = match veth {
        Ok(out) if out.status.success() => match program.attach("probe0", XdpMode::Driver) {
            Ok(id) => {
                program.detach(id).ok();
                return XdpSupport::Native;
            }
            Err(e) => error_chain(&e),
        },
        Ok(out) => format!(
            "no veth to probe: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => format!("no veth to probe (ip: {e})"),
    };
    let generic_on = if native_refused.starts_with("no veth") {
        "lo"
    } else {
        "probe0"
    };
    match program.attach(generic_on, XdpMode::Skb) {
        Ok(id) => {
            program.detach(id).ok();
            XdpSupport::Generic(native_refused)
        }
        Err(e) => XdpSupport::Unsupported(error_chain(&e)),
    }
}

/// An error with its sources, for one log line.
pub(super) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusing(names: &[&'static str]) -> KernelFeatures {
        KernelFeatures {
            release: "test".into(),
            essentials: Vec::new(),
            tc_attach: AttachMode::Clsact,
            tcx_refused: None,
            xdp: XdpSupport::Native,
            socket_hooks_refused: names.iter().map(|n| (*n, "refused".into())).collect(),
            sock_destroy: Ok(()),
        }
    }

    fn socket_line(features: &KernelFeatures) -> String {
        let lines = features.lines();
        let line = lines.iter().find(|l| l.starts_with("feature socket-lb"));
        line.cloned().unwrap_or_default()
    }

    #[test]
    fn either_familys_getpeername_is_optional_and_the_other_hooks_are_not() {
        let all = refusing(&[]);
        assert_eq!(all.socket_lb_missing(), None);
        assert!(socket_line(&all).ends_with("recvmsg6, getpeername6"));

        let no_peer6 = refusing(&[programs::SOCK_GETPEERNAME6]);
        assert_eq!(no_peer6.socket_lb_missing(), None);
        let line = socket_line(&no_peer6);
        assert!(line.contains("sendmsg6, recvmsg6 (fallback"), "{line}");

        for essential in [programs::SOCK_CONNECT6, programs::SOCK_RECVMSG6] {
            let features = refusing(&[essential, programs::SOCK_GETPEERNAME4]);
            let missing = features.socket_lb_missing().unwrap_or_default();
            assert!(missing.contains(essential), "{missing}");
            assert!(!missing.contains(programs::SOCK_GETPEERNAME4), "{missing}");
        }
    }
}
