//! What a program may do with a packet: each verdict with its counter, the
//! output it may leave (untouched, translated in place, or a refusal), and
//! checksums right whenever the input's were.
use proxy_common::Counter::{self, *};
use proxy_common::{HAIRPIN_IPV4, SNAT_PORT_FIRST};

use super::frames::{self, ETH, TCP, TCP_RST};
use super::state::{NODE, Programmed};
use crate::packet::{TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, XDP_DROP, XDP_PASS, XDP_TX};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Program {
    FromPod,
    ToPod,
    FromExternal,
    ToExternal,
    Xdp,
}

impl Program {
    pub const ALL: [Program; 5] = [
        Program::FromPod,
        Program::ToPod,
        Program::FromExternal,
        Program::ToExternal,
        Program::Xdp,
    ];

    pub fn name(self) -> &'static str {
        use proxy_common::programs::*;
        match self {
            Program::FromPod => FROM_POD,
            Program::ToPod => TO_POD,
            Program::FromExternal => FROM_EXTERNAL,
            Program::ToExternal => TO_EXTERNAL,
            Program::Xdp => XDP_EXTERNAL,
        }
    }

    /// Counters that may be a TC run's one verdict counter.
    fn verdicts(self) -> &'static [Counter] {
        const PARSE: [Counter; 5] = [
            PassNotIpv4,
            PassFragment,
            PassOtherProtocol,
            DropTruncated,
            DropBadIpHeader,
        ];
        const TO_SERVICE: [Counter; 15] = [
            PassNotService,
            DnatNew,
            DnatEstablished,
            DnatReselected,
            RejectTcpRst,
            RejectIcmpUnreachable,
            DropMissingSlot,
            DropMissingBackend,
            DropConntrackFull,
            DropConntrackCollision,
            DropRstNotRefused,
            DropRewriteFailed,
            DropRejectFailed,
            DropNoLocalEndpoints,
            DropSourceRange,
        ];
        const REPLIES: [Counter; 4] = [
            PassNotTranslated,
            RevNat,
            DropRewriteFailed,
            RevNatIcmpError,
        ];
        static FROM: std::sync::LazyLock<Vec<Counter>> = std::sync::LazyLock::new(|| {
            [&PARSE[..], &TO_SERVICE, &[RevSnat, DropSnatPortsExhausted]].concat()
        });
        // Errors about masqueraded flows are turned back on their way in.
        static FROM_EXTERNAL: std::sync::LazyLock<Vec<Counter>> =
            std::sync::LazyLock::new(|| [&FROM[..], &[RevNatIcmpError]].concat());
        static TO: std::sync::LazyLock<Vec<Counter>> =
            std::sync::LazyLock::new(|| [&PARSE[..], &REPLIES].concat());
        match self {
            Program::ToPod | Program::ToExternal => &TO,
            Program::FromExternal => &FROM_EXTERNAL,
            _ => &FROM,
        }
    }
}

/// A verdict counter of a translated packet.
pub fn translation(c: Counter) -> bool {
    matches!(
        c,
        DnatNew | DnatEstablished | DnatReselected | RevNat | RevSnat
    )
}

/// A run as the fuzzer saw it.
pub struct Outcome<'a> {
    pub program: Program,
    pub input: &'a [u8],
    pub verdict: i32,
    pub output: &'a [u8],
    pub counted: &'a [(Counter, u64)],
}

/// The run's label for the report (its verdict counter, or how XDP passed
/// it on), or what is wrong with it.
pub fn judge(o: &Outcome, ever: &Programmed) -> Result<&'static str, String> {
    if let Some((c, n)) = o.counted.iter().find(|(_, n)| *n != 1) {
        return Err(format!("{} counted {n} times", c.name()));
    }
    let has = |c: Counter| o.counted.iter().any(|(x, _)| *x == c);
    let extras = [AffinityFollowed, TcRedirected, XdpTransmitted, XdpToStack];
    let primary: Vec<Counter> = o
        .counted
        .iter()
        .map(|(c, _)| *c)
        .filter(|c| !extras.contains(c))
        .collect();
    if has(AffinityFollowed)
        && !primary.iter().any(|c| {
            matches!(
                c,
                DnatNew
                    | DnatReselected
                    | DropConntrackFull
                    | DropConntrackCollision
                    | DropSnatPortsExhausted
            )
        })
    {
        return Err("affinity_followed without a new connection".into());
    }
    if o.program == Program::Xdp {
        return judge_xdp(o, &primary, has(XdpTransmitted), has(XdpToStack), ever);
    }
    let [p] = primary[..] else {
        return Err(format!("{} verdict counters", primary.len()));
    };
    if !o.program.verdicts().contains(&p) || has(XdpTransmitted) || has(XdpToStack) {
        return Err(format!("{} is not a verdict of this program", p.name()));
    }
    let redirected = has(TcRedirected);
    let sent_on = translation(p) && p != RevNat || p == RevNatIcmpError;
    if redirected && !(o.program == Program::FromExternal && sent_on) {
        return Err(format!("tc_redirected after {}", p.name()));
    }
    let verdict = match p {
        _ if p.is_drop() => TC_ACT_SHOT,
        RejectTcpRst | RejectIcmpUnreachable => TC_ACT_REDIRECT,
        _ if redirected => TC_ACT_REDIRECT,
        _ => TC_ACT_OK,
    };
    if o.verdict != verdict {
        return Err(format!("verdict {} with {}", o.verdict, p.name()));
    }
    match p {
        _ if p.is_drop() => {}
        RejectTcpRst | RejectIcmpUnreachable => refusal(o.input, o.output, p)?,
        _ if translation(p) => translated(o, p, redirected, ever)?,
        RevNatIcmpError => error_turned_back(o, redirected, ever)?,
        _ if o.output != o.input => return Err("a pass changed the packet".into()),
        _ => {}
    }
    Ok(p.name())
}

fn judge_xdp(
    o: &Outcome,
    primary: &[Counter],
    transmitted: bool,
    to_stack: bool,
    ever: &Programmed,
) -> Result<&'static str, String> {
    let drops = primary.iter().filter(|c| c.is_drop()).count();
    let moved: Vec<Counter> = primary
        .iter()
        .copied()
        .filter(|c| translation(*c))
        .collect();
    if primary.len() != drops + moved.len() || moved.len() > 1 || drops > 1 {
        return Err("unexpected counters".into());
    }
    match (o.verdict, drops, moved.first()) {
        (XDP_DROP, 1, None) if !transmitted && !to_stack => Ok("xdp_drop"),
        (XDP_DROP, 1, Some(_)) if primary.contains(&DropRewriteFailed) => Ok("xdp_drop"),
        (XDP_TX, 0, Some(&p)) if transmitted && !to_stack => {
            translated(o, p, true, ever).map(|()| "xdp_tx")
        }
        (XDP_PASS, 0, Some(&p)) if to_stack && !transmitted => {
            translated(o, p, false, ever).map(|()| "xdp_to_stack_translated")
        }
        (XDP_PASS, 0, None) if !transmitted && o.output == o.input => Ok(if to_stack {
            "xdp_to_stack_untouched"
        } else {
            "xdp_pass"
        }),
        _ => Err(format!(
            "XDP verdict {} does not match its counters",
            o.verdict
        )),
    }
}

/// Translated in place: same length, only addresses, ports and their
/// checksums changed (and, when forwarded, MACs and the TTL, one less), from
/// a frontend to one of its endpoints or back.
fn translated(o: &Outcome, p: Counter, forwarded: bool, ever: &Programmed) -> Result<(), String> {
    let (input, output) = (o.input, o.output);
    if input.len() != output.len() {
        return Err("translation changed the length".into());
    }
    let l4 = ETH + usize::from(input[ETH] & 0x0f) * 4;
    let proto = input[ETH + 9];
    let csum = l4 + if proto == TCP { 16 } else { 6 };
    let may_change = |i: usize| {
        (forwarded && (i < 12 || i == ETH + 8))
            || (ETH + 10..ETH + 20).contains(&i)
            || (l4..l4 + 4).contains(&i)
            || (csum..csum + 2).contains(&i)
    };
    if let Some(i) = (0..input.len()).find(|&i| input[i] != output[i] && !may_change(i)) {
        return Err(format!("translation changed byte {i}"));
    }
    if forwarded && output[ETH + 8] != input[ETH + 8].wrapping_sub(1) {
        return Err("forwarded without taking one off the TTL".into());
    }
    if let (None, Some(problem)) = (frames::problem(input), frames::problem(output)) {
        return Err(format!(
            "well-formed input translated to one with a bad {problem}"
        ));
    }
    let endpoint = |f: &[u8], a: usize, p: usize| {
        let addr = u32::from_ne_bytes(f[a..a + 4].try_into().expect("4 bytes"));
        (addr, u16::from_ne_bytes([f[p], f[p + 1]]))
    };
    let (src_in, dst_in) = (
        endpoint(input, ETH + 12, l4),
        endpoint(input, ETH + 16, l4 + 2),
    );
    let (src_out, dst_out) = (
        endpoint(output, ETH + 12, l4),
        endpoint(output, ETH + 16, l4 + 2),
    );
    let serves = |frontend: (u32, u16), backend| {
        let endpoints = ever.frontends.get(&(frontend.0, frontend.1, proto));
        endpoints.is_some_and(|e| e.contains(&backend))
    };
    let masqueraded = || {
        let local = [
            u32::from_ne_bytes(NODE.octets()),
            u32::from_ne_bytes(HAIRPIN_IPV4),
        ];
        local.contains(&src_out.0) && u16::from_be(src_out.1) >= SNAT_PORT_FIRST
    };
    match p {
        DnatNew | DnatEstablished | DnatReselected if !serves(dst_in, dst_out) => Err(format!(
            "{} to an endpoint the frontend never had",
            p.name()
        )),
        DnatNew | DnatEstablished | DnatReselected if src_out != src_in && !masqueraded() => {
            Err("source translated to something but the node or hairpin address".into())
        }
        RevNat | RevSnat if !serves(src_out, src_in) => Err(format!(
            "{} to a frontend the endpoint never served",
            p.name()
        )),
        _ => Ok(()),
    }
}

/// An ICMP error about a translated flow, turned back: same length, still
/// well-formed, and the packet it quotes now goes to a frontend that has
/// the endpoint it went to before.
fn error_turned_back(o: &Outcome, forwarded: bool, ever: &Programmed) -> Result<(), String> {
    let (input, output) = (o.input, o.output);
    if input.len() != output.len() {
        return Err("the error's length changed".into());
    }
    if forwarded && output[ETH + 8] != input[ETH + 8].wrapping_sub(1) {
        return Err("forwarded without taking one off the TTL".into());
    }
    if let (None, Some(problem)) = (frames::problem(input), frames::problem(output)) {
        return Err(format!(
            "well-formed error turned into one with a bad {problem}"
        ));
    }
    // The quoted IPv4 header follows the 8-byte ICMP header.
    let quoted = ETH + usize::from(input[ETH] & 0x0f) * 4 + 8;
    let quoted_l4 = quoted + usize::from(input[quoted] & 0x0f) * 4;
    let destination = |f: &[u8]| {
        let addr = u32::from_ne_bytes(f[quoted + 16..quoted + 20].try_into().expect("4 bytes"));
        (
            addr,
            u16::from_ne_bytes([f[quoted_l4 + 2], f[quoted_l4 + 3]]),
        )
    };
    let proto = input[quoted + 9];
    let (before, after) = (destination(input), destination(output));
    let served = ever
        .frontends
        .get(&(after.0, after.1, proto))
        .is_some_and(|endpoints| endpoints.contains(&before));
    if !served {
        return Err("the quoted packet now goes to no frontend of its endpoint".into());
    }
    Ok(())
}

/// Known findings a run shows (reported, see `tests/tests/packets_fuzz.rs`).
pub fn finding(o: &Outcome) -> Option<&'static str> {
    if !o.counted.iter().any(|(c, _)| *c == RejectTcpRst) {
        return None;
    }
    // A refused segment was parsed as TCP: its flags are there. RFC 9293
    // 3.10.7.1, and kube-proxy's REJECT: a RST is never answered.
    let ihl = usize::from(o.input[ETH] & 0x0f) * 4;
    (o.input[ETH + ihl + 13] & TCP_RST != 0)
        .then_some("a TCP RST to a Service without endpoints is answered with a RST")
}

/// A RST or ICMP port unreachable from the frontend back to the client.
fn refusal(input: &[u8], output: &[u8], p: Counter) -> Result<(), String> {
    if let Some(problem) = frames::problem(output) {
        return Err(format!("refusal with a bad {problem}"));
    }
    let (ip_in, ip_out) = (&input[ETH..], &output[ETH..]);
    if ip_out[12..16] != ip_in[16..20] || ip_out[16..20] != ip_in[12..16] {
        return Err("refusal not from the frontend to the client".into());
    }
    let l4_in = &ip_in[usize::from(ip_in[0] & 0x0f) * 4..];
    let l4_out = &ip_out[20..];
    match p {
        RejectTcpRst if output.len() != 54 || l4_out[13] & TCP_RST == 0 => {
            Err("not a bare RST".into())
        }
        RejectTcpRst if l4_out[0..2] != l4_in[2..4] || l4_out[2..4] != l4_in[0..2] => {
            Err("RST to other ports".into())
        }
        RejectIcmpUnreachable if output.len() != 70 || l4_out[0..2] != [3, 3] => {
            Err("not an ICMP port unreachable".into())
        }
        RejectIcmpUnreachable if l4_out[8 + 12..8 + 20] != ip_in[12..20] => {
            Err("ICMP quoting another packet".into())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::fuzz_packets::frames::{TCP_SYN, ipv4, tcp};

    const CLIENT: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 244, 1, 100), 40_000);
    const VIP: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 96, 0, 10), 80);
    const POD: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 244, 2, 11), 8080);
    const OTHER: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 244, 2, 12), 8080);

    fn syn(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) -> Vec<u8> {
        ipv4(src.0, dst.0, TCP, &[], tcp(src, dst, TCP_SYN, 1, b"x"))
    }

    fn ever() -> Programmed {
        let wire = |(ip, port): (Ipv4Addr, u16)| (u32::from_ne_bytes(ip.octets()), port.to_be());
        let (vip, pod) = (wire(VIP), wire(POD));
        let mut ever = Programmed::default();
        ever.frontends.insert((vip.0, vip.1, TCP), [pod].into());
        ever
    }

    fn judged(
        program: Program,
        input: &[u8],
        verdict: i32,
        output: &[u8],
        counted: &[Counter],
    ) -> Result<&'static str, String> {
        let counted: Vec<(Counter, u64)> = counted.iter().map(|c| (*c, 1)).collect();
        let o = Outcome {
            program,
            input,
            verdict,
            output,
            counted: &counted,
        };
        judge(&o, &ever())
    }

    #[test]
    fn defined_verdicts_pass_and_broken_ones_do_not() {
        let input = syn(CLIENT, VIP);
        let dnat = syn(CLIENT, POD);
        let ok = |v, out: &[u8], c: &[Counter]| judged(Program::FromPod, &input, v, out, c);
        assert_eq!(ok(TC_ACT_OK, &dnat, &[DnatNew]), Ok("dnat_new"));
        assert_eq!(
            ok(TC_ACT_OK, &input, &[PassNotService]),
            Ok("pass_not_service")
        );
        assert_eq!(
            ok(TC_ACT_SHOT, &input, &[DropSourceRange]),
            Ok("drop_source_range")
        );
        // An endpoint the frontend never had; a checksum left stale; a pass
        // that wrote; a drop that passed; two verdicts; no verdict at all.
        assert!(ok(TC_ACT_OK, &syn(CLIENT, OTHER), &[DnatNew]).is_err());
        let mut stale = dnat.clone();
        stale[ETH + 20 + 16] ^= 0xff;
        assert!(ok(TC_ACT_OK, &stale, &[DnatNew]).is_err());
        assert!(ok(TC_ACT_OK, &dnat, &[PassNotService]).is_err());
        assert!(ok(TC_ACT_OK, &input, &[DropSourceRange]).is_err());
        assert!(ok(TC_ACT_OK, &dnat, &[DnatNew, PassNotService]).is_err());
        assert!(ok(TC_ACT_OK, &input, &[]).is_err());
        assert!(
            judged(Program::ToPod, &input, TC_ACT_OK, &dnat, &[DnatNew]).is_err(),
            "not a reply verdict"
        );
        // XDP: sent back out only when counted so, with the TTL one less.
        let mut forwarded = dnat.clone();
        forwarded[ETH + 8] -= 1;
        crate::fuzz_packets::frames::fix_ip_checksum(&mut forwarded);
        let xdp = |v, out: &[u8], c: &[Counter]| judged(Program::Xdp, &input, v, out, c);
        assert_eq!(
            xdp(XDP_TX, &forwarded, &[DnatNew, XdpTransmitted]),
            Ok("xdp_tx")
        );
        assert!(
            xdp(XDP_TX, &dnat, &[DnatNew, XdpTransmitted]).is_err(),
            "TTL kept"
        );
        assert!(xdp(XDP_TX, &forwarded, &[DnatNew]).is_err());
        assert_eq!(xdp(XDP_PASS, &input, &[]), Ok("xdp_pass"));
        assert!(xdp(XDP_PASS, &dnat, &[]).is_err());
    }
}
