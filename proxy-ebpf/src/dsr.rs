//! Direct server return (`--lb-mode dsr|hybrid`) for external flows whose
//! endpoint runs on another node: the decision and conntrack for both
//! families, the IPv4 option here (IPv6's extension header: `dsr6.rs`).
//!
//! Ingress node: instead of masquerading, the flow keeps the client's
//! address; the packets that open it (a TCP SYN, every UDP datagram) carry
//! the frontend in an 8-byte IPv4 option (`DSR_OPTION_TYPE`). Everything
//! leaves by FIB redirect, as masqueraded packets do (XDP: `XDP_TX`, the
//! option written directly, `add_option4_xdp`).
//!
//! Endpoint's node: a packet with the option records both conntrack
//! entries of the flow as if the flow had been translated here, so the
//! endpoint's replies have their source restored to the frontend where
//! every local endpoint's replies are (`vipr_to_external`), and go straight
//! to the client.
//!
//! Only opening packets grow (by 8 bytes): a TCP SYN is far below any MTU,
//! and data segments never carry the option, so the MSS needs no clamping.
//! A UDP datagram within 8 bytes of the MTU is left to the stack (see
//! ARCHITECTURE.md, "Direct server return").
use aya_ebpf::{
    bindings::{BPF_ANY, bpf_adj_room_mode::BPF_ADJ_ROOM_NET},
    helpers::bpf_xdp_adjust_head,
    programs::{TcContext, XdpContext},
};
use proxy_common::{
    BACKEND_FLAG_LOCAL, CT_FLAG_DSR, CT_FORWARD, Counter, DSR_OPTION_LEN, DSR_OPTION_TYPE,
    IPPROTO_TCP, IPPROTO_UDP, LB_MODE_DSR, LB_MODE_HYBRID, LB_MODE_SNAT, SCOPE_EXTERNAL,
};

use crate::{
    ct::{self, RecordError},
    decide::Decision,
    family::{Family, V4},
    maps::lb_mode,
    parse::{ETH_LEN, Flow, IP_CSUM_OFF, ptr_at},
    xdp::csum_update,
};

/// Where the option goes: right after the plain header.
const OPTION_OFF: usize = V4::PLAIN_L4_OFF;
const VERSION_IHL_OFF: usize = ETH_LEN;
const TOS_OFF: usize = ETH_LEN + 1;
const TOT_LEN_OFF: usize = ETH_LEN + 2;
/// Version 4, a header of 5 words; and of 7 with the option.
const VERSION_IHL_PLAIN: u8 = 0x45;
const VERSION_IHL_WITH_OPTION: u8 = 0x47;
/// Checksum update sizes of `l3_csum_replace`.
const WORD16: u64 = 2;
const WORD32: u64 = 4;

/// Whether the agent's `--lb-mode` sends flows of `proto` by DSR.
#[inline(always)]
fn covers(proto: u8) -> bool {
    match lb_mode() {
        LB_MODE_DSR => proto == IPPROTO_TCP || proto == IPPROTO_UDP,
        LB_MODE_HYBRID => proto == IPPROTO_TCP,
        _ => false,
    }
}

/// Whether a new flow that would be masqueraded (externalTrafficPolicy
/// Cluster, an endpoint on another node, or a hairpin) goes by DSR
/// instead: an external frontend, not a hairpin, and a bare fixed header
/// (no IPv4 options, no IPv6 extension headers yet: ours goes first and
/// alone, which is how the endpoint's node recognises it).
#[inline(always)]
pub fn applies<F: Family>(flow: &Flow<F>, scope: u8, backend: &F::Backend) -> bool {
    F::SERVES_DSR
        && scope == SCOPE_EXTERNAL
        && F::backend_flags(backend) & BACKEND_FLAG_LOCAL == 0
        && F::backend_addr(backend) != flow.src_addr
        && flow.l4_off == F::PLAIN_L4_OFF
        && covers(flow.proto)
}

/// Records a new DSR flow to `backend` (DNAT only) and what to do with it.
#[inline(always)]
pub fn forwarded<F: Family>(
    flow: &Flow<F>,
    backend_id: u32,
    backend: &F::Backend,
    outcome: Counter,
) -> Decision<F> {
    let (addr, port) = (F::backend_addr(backend), F::backend_port(backend));
    match ct::record_flagged(flow, backend_id, addr, port, CT_FLAG_DSR) {
        Ok(()) => Decision::Translate(
            F::ct_entry(backend_id, (addr, port), CT_FLAG_DSR, 0),
            outcome,
        ),
        Err(RecordError::Collision) => Decision::Drop(Counter::DropConntrackCollision),
        Err(_) => Decision::Drop(Counter::DropConntrackFull),
    }
}

/// How a translated packet leaves, by the decision taken for it.
#[derive(Clone, Copy, PartialEq)]
pub enum Way {
    /// Not a DSR flow.
    NotDsr,
    /// A DSR flow's packet: redirected as it is.
    Plain,
    /// A packet that opens a DSR flow: with the option, then redirected.
    WithOption,
}

#[inline(always)]
pub fn way<F: Family>(flow: &Flow<F>, decision: &Decision<F>) -> Way {
    match decision {
        Decision::Translate(entry, _) => way_flagged(flow, F::entry_flags(entry)),
        _ => Way::NotDsr,
    }
}

/// [`way`] of a translated packet whose entry has `flags` (the IPv6 path
/// passes the decision on in pieces, not as a `Decision`).
#[inline(always)]
pub fn way_flagged<F: Family>(flow: &Flow<F>, flags: u8) -> Way {
    if flags & CT_FLAG_DSR == 0 {
        Way::NotDsr
    } else if opens(flow) {
        Way::WithOption
    } else {
        Way::Plain
    }
}

/// The packets that carry the option: those that let the endpoint's node
/// learn the flow. A TCP SYN; every UDP datagram, as UDP has no opening one.
#[inline(always)]
fn opens<F: Family>(flow: &Flow<F>) -> bool {
    flow.is_tcp_syn() || flow.proto == IPPROTO_UDP
}

/// Adds the DSR option carrying `frontend` (wire order) to a translated
/// IPv4 packet without options, fixing the header length, total length and
/// header checksum. The L4 checksum does not cover the IP header's length.
#[inline(always)]
pub fn add_option4(ctx: &TcContext, frontend: (u32, u16)) -> Result<(), i64> {
    let tos: u8 = ctx.load(TOS_OFF)?;
    let tot_len: u16 = ctx.load(TOT_LEN_OFF)?;
    // Room between the IPv4 header (the kernel takes it as 20 bytes) and L4.
    ctx.adjust_room(i32::from(DSR_OPTION_LEN), BPF_ADJ_ROOM_NET, 0)?;
    let (addr, port) = frontend;
    let port = port.to_ne_bytes();
    let head = u32::from_ne_bytes([DSR_OPTION_TYPE, DSR_OPTION_LEN, port[0], port[1]]);
    ctx.store(OPTION_OFF, &head, 0)?;
    ctx.store(OPTION_OFF + 4, &addr, 0)?;
    let old_first = u16::from_ne_bytes([VERSION_IHL_PLAIN, tos]);
    let new_first = u16::from_ne_bytes([VERSION_IHL_WITH_OPTION, tos]);
    let new_len = (u16::from_be(tot_len) + u16::from(DSR_OPTION_LEN)).to_be();
    ctx.l3_csum_replace(IP_CSUM_OFF, old_first as u64, new_first as u64, WORD16)?;
    ctx.l3_csum_replace(IP_CSUM_OFF, tot_len as u64, new_len as u64, WORD16)?;
    // The option's words were zero before (absent).
    ctx.l3_csum_replace(IP_CSUM_OFF, 0, head as u64, WORD32)?;
    ctx.l3_csum_replace(IP_CSUM_OFF, 0, addr as u64, WORD32)?;
    ctx.store(VERSION_IHL_OFF, &VERSION_IHL_WITH_OPTION, 0)?;
    ctx.store(TOT_LEN_OFF, &new_len, 0)
}

/// The XDP twin of [`add_option4`], written directly: the frame grows at
/// its head and its Ethernet and IPv4 headers move up by the option's
/// length. `false`: no headroom (the frame is left as it was) or a frame
/// too short to hold the headers (it is not: parsed before).
#[inline(never)]
pub fn add_option4_xdp(ctx: &XdpContext, addr: u32, port: u16) -> bool {
    let grow = i32::from(DSR_OPTION_LEN);
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -grow) } != 0 {
        return false;
    }
    let Some(head) = ptr_at::<[u8; OPTION_OFF + DSR_OPTION_LEN as usize]>(ctx, 0) else {
        return false;
    };
    let head = head as *mut u8;
    let len = usize::from(DSR_OPTION_LEN);
    let port = port.to_ne_bytes();
    let addr = addr.to_ne_bytes();
    let option = [
        DSR_OPTION_TYPE,
        DSR_OPTION_LEN,
        port[0],
        port[1],
        addr[0],
        addr[1],
        addr[2],
        addr[3],
    ];
    // Checked above: the frame holds both headers and the option's room.
    unsafe {
        // Upwards, one byte at a time: the two ranges overlap.
        for i in 0..OPTION_OFF {
            *head.add(i) = *head.add(i + len);
        }
        for (i, byte) in option.iter().enumerate() {
            *head.add(OPTION_OFF + i) = *byte;
        }
        let ip = head.add(ETH_LEN);
        let tos = *ip.add(TOS_OFF - ETH_LEN);
        let tot_len_at = ip.add(TOT_LEN_OFF - ETH_LEN);
        let tot_len = u16::from_be_bytes([*tot_len_at, *tot_len_at.add(1)]);
        let new_len = tot_len + u16::from(DSR_OPTION_LEN);
        let check_at = head.add(IP_CSUM_OFF);
        let mut check = u16::from_be_bytes([*check_at, *check_at.add(1)]);
        check = csum_update(
            check,
            u16::from_be_bytes([VERSION_IHL_PLAIN, tos]),
            u16::from_be_bytes([VERSION_IHL_WITH_OPTION, tos]),
        );
        check = csum_update(check, tot_len, new_len);
        // The option's words were zero before (absent).
        for pair in option.chunks_exact(2) {
            check = csum_update(check, 0, u16::from_be_bytes([pair[0], pair[1]]));
        }
        *ip = VERSION_IHL_WITH_OPTION;
        let new_len = new_len.to_be_bytes();
        *tot_len_at = new_len[0];
        *tot_len_at.add(1) = new_len[1];
        let check = check.to_be_bytes();
        *check_at = check[0];
        *check_at.add(1) = check[1];
    }
    true
}

/// Endpoint's node: the frontend a packet's DSR option carries, if it has
/// one (first and only option, as the ingress node writes it).
#[inline(always)]
pub fn option4(ctx: &TcContext, flow: &Flow) -> Option<(u32, u16)> {
    if flow.l4_off != OPTION_OFF + usize::from(DSR_OPTION_LEN) || lb_mode() == LB_MODE_SNAT {
        return None;
    }
    let option: [u8; DSR_OPTION_LEN as usize] = ctx.load(OPTION_OFF).ok()?;
    if option[0] != DSR_OPTION_TYPE || option[1] != DSR_OPTION_LEN {
        return None;
    }
    let port = u16::from_ne_bytes([option[2], option[3]]);
    let addr = u32::from_ne_bytes([option[4], option[5], option[6], option[7]]);
    Some((addr, port))
}

/// Endpoint's node: records the flow of a packet that came with the DSR
/// option, so that its endpoint's replies are restored to `frontend`. The
/// forward entry is what the ingress node holds (client → frontend, to the
/// endpoint); the reverse one restores the source. Left as it is when it
/// already says so: every UDP datagram carries the option.
#[inline(always)]
pub fn learn<F: Family>(flow: &Flow<F>, frontend: (F::Addr, u16)) -> Counter {
    let now = ct::now_seconds();
    let forward_key = F::ct_key(
        (flow.src_addr, flow.src_port),
        frontend,
        flow.proto,
        CT_FORWARD,
    );
    let endpoint = (flow.dst_addr, flow.dst_port);
    // No backend id: the ingress node chose the endpoint.
    let forward = F::ct_entry(0, endpoint, CT_FLAG_DSR, now);
    let reverse_key = F::partner(&forward_key, &forward);
    if let Some(known) = unsafe { F::conntrack().get(&reverse_key) }
        && F::entry_nat(known) == frontend
        && F::entry_flags(known) & CT_FLAG_DSR != 0
        && !flow.is_tcp_syn()
    {
        return Counter::DsrFrontendLearnt;
    }
    let reverse = F::ct_entry(0, frontend, CT_FLAG_DSR, now);
    // Forward first: a reverse entry alone is swept as an orphan.
    if F::conntrack()
        .insert(&forward_key, &forward, BPF_ANY as u64)
        .is_err()
    {
        return Counter::DropConntrackFull;
    }
    if F::conntrack()
        .insert(&reverse_key, &reverse, BPF_ANY as u64)
        .is_err()
    {
        let _ = F::conntrack().remove(&forward_key);
        return Counter::DropConntrackFull;
    }
    Counter::DsrFrontendLearnt
}

/// `learn` for IPv4.
#[inline(always)]
pub fn learn4(flow: &Flow, frontend: (u32, u16)) -> Counter {
    learn::<V4>(flow, frontend)
}
