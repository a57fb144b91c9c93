//! `vipr trace --explain-drop COUNTER`: for every datapath counter, the
//! conditions under which the programs count it. The match is exhaustive:
//! a counter added to `proxy-common` does not build without its text.
use proxy_common::Counter;

/// What makes the programs count `counter`, and what to look at.
pub fn explain(counter: Counter) -> &'static str {
    match counter {
        Counter::PassNotIpv4 => {
            "TC/XDP: the frame is neither IPv4 nor (on the pod interfaces) IPv6 by its EtherType, or shorter than an Ethernet header; XDP and the external programs also count IPv6 here (they do not serve it yet). Passed untouched."
        }
        Counter::PassFragment => {
            "TC/XDP: an IPv4 fragment (more-fragments set or a non-zero offset), or on the pod path an IPv6 one (a fragment header with either): no L4 ports to match, passed untranslated."
        }
        Counter::PassOtherProtocol => {
            "TC/XDP: neither TCP nor UDP (ICMP, SCTP, ...); socket hooks: a socket of another protocol. Passed untouched."
        }
        Counter::PassNotService => {
            "TC/XDP: the destination (address, port, protocol) is no frontend of this direction's scope; or the frontend's Service was deleted (draining) and the flow is not in conntrack. Passed untouched."
        }
        Counter::PassNotTranslated => {
            "TC, reply direction: the packet matches no conntrack entry, so it belongs to no translated flow. Passed untouched."
        }
        Counter::DnatNew => {
            "A new flow to a frontend: an endpoint was chosen (affinity, or the flow hash over the frontend's slots), conntrack recorded, destination rewritten."
        }
        Counter::DnatEstablished => {
            "A packet of a tracked flow: rewritten as its conntrack entry says, with no endpoint lookup."
        }
        Counter::DnatReselected => {
            "A tracked flow chose again: a new SYN on a reused tuple, or its endpoint can no longer take it."
        }
        Counter::RevNat => {
            "A reply restored: its source rewritten back to the frontend the client used."
        }
        Counter::RevSnat => {
            "A reply to a masqueraded flow restored: destination back to the client, source back to the frontend."
        }
        Counter::XdpTransmitted => {
            "XDP: the translated packet left through the FIB's next hop (XDP_TX or redirect) without the stack."
        }
        Counter::XdpToStack => {
            "XDP: the FIB gave no next hop, so the packet went on to TC (translated, or untouched when its new source would be a martian)."
        }
        Counter::RejectTcpRst => {
            "A TCP SYN to a frontend with no endpoint anywhere: answered with a RST, as kube-proxy's REJECT."
        }
        Counter::RejectIcmpUnreachable => {
            "A UDP packet to a frontend with no endpoint anywhere: answered with ICMP port unreachable."
        }
        Counter::DropTruncated => {
            "Dropped: the packet ends inside its IPv4 or IPv6 header, an IPv6 extension header, or its TCP or UDP header."
        }
        Counter::DropBadIpHeader => {
            "Dropped: IPv4 version field not 4, or a header length under 20 bytes."
        }
        Counter::DropMissingSlot => {
            "Dropped: the frontend's endpoint count covers a slot missing from VIPR_SLOTS. The agent's write order prevents it; a non-zero count means the maps were changed behind its back (`vipr dump`; the hourly resync repairs them)."
        }
        Counter::DropMissingBackend => {
            "Dropped: a slot points at an endpoint id missing from VIPR_BACKENDS. As drop_missing_slot: maps changed behind the agent's back."
        }
        Counter::DropConntrackFull => {
            "Dropped: a new flow found the conntrack table full (established flows go on). Raise --max-conntrack, or shorten the --conntrack-* timeouts."
        }
        Counter::DropRewriteFailed => {
            "Dropped: the kernel refused the packet rewrite (a store or checksum helper failed, e.g. a packet it cannot make writable)."
        }
        Counter::DropRejectFailed => {
            "Dropped: building the RST or ICMP answer for a frontend without endpoints failed."
        }
        Counter::DropNoLocalEndpoints => {
            "Dropped: a frontend with a Local traffic policy has endpoints, but none on this node (kube-proxy drops these too). Check where the pods run."
        }
        Counter::DropSourceRange => {
            "Dropped (TC/XDP) or refused (socket hooks): the client is outside the Service's loadBalancerSourceRanges."
        }
        Counter::DropSnatPortsExhausted => {
            "Dropped: the flow needs masquerading and no source port is free for this node address and endpoint, or the agent has no node address (--node-ip)."
        }
        Counter::TcRedirected => {
            "TC: a translated packet sent on by the program itself (FIB lookup and redirect) past the stack's input routing."
        }
        Counter::SockTranslated => {
            "Socket hooks: connect() or sendmsg() to a frontend rewritten to the chosen endpoint."
        }
        Counter::SockRefused => {
            "Socket hooks: connect() or sendmsg() to a frontend with no endpoint anywhere: failed with ECONNREFUSED."
        }
        Counter::SockPassNotService => "Socket hooks: the destination is no frontend. Left alone.",
        Counter::SockPassOtherNetns => {
            "Socket hooks: the socket belongs to another network namespace than the agent's under --socket-lb host; the TC path handles it."
        }
        Counter::SockRevNat => {
            "Socket hooks: recvmsg() or getpeername() shows the frontend instead of the endpoint."
        }
        Counter::SockRevNatStale => {
            "Socket hooks: a socket's translation points at a frontend that is gone or now another Service's: forgotten, the endpoint's address shows."
        }
        Counter::SockPassNotTranslated => {
            "Socket hooks: recvmsg() or getpeername() on a socket the hooks did not translate. Left alone."
        }
        Counter::DropSockRevNatFull => {
            "Socket hooks: the reverse-translation map refused the socket's entry: connect() or sendmsg() failed with ENOMEM. Raise --max-socket-revnat."
        }
        Counter::AffinityFollowed => {
            "A new connection went to the endpoint its client's ClientIP session affinity holds."
        }
        Counter::DropConntrackCollision => {
            "Dropped: the new flow's translated tuple is another tracked flow's (same client address and port, same endpoint, another frontend): the endpoint could not tell their replies apart."
        }
        Counter::DropRstNotRefused => {
            "Dropped: a TCP RST to a frontend with no endpoints; a RST is never answered with a RST."
        }
        Counter::PassIpv6ExtHeaders => {
            "TC pod path: an IPv6 packet with more extension headers before its TCP/UDP header than the programs walk. Passed untranslated."
        }
        Counter::DropIpv6Unsupported => {
            "Retired, never counted. Dropped new IPv6 flows needing what the IPv6 path lacked then (masquerade, hairpin, loadBalancerSourceRanges), all served now."
        }
        Counter::Ipv6AffinityIgnored => {
            "Retired, never counted: IPv6 follows ClientIP session affinity now."
        }
        Counter::RevNatIcmpError => {
            "An ICMP/ICMPv6 error (unreachable, packet too big, time exceeded, parameter problem) about a translated flow: the packet it quotes, and its outer addresses, were turned back into the client's view of the flow, as conntrack's RELATED translation does."
        }
        Counter::DsrOptionAdded => {
            "TC external ingress, `--lb-mode dsr|hybrid`: a packet opening a flow to another node's endpoint (a TCP SYN, or a UDP datagram) got the DSR IPv4 option (IPv6: destination options header) carrying the frontend, kept the client's address and was sent on to that node."
        }
        Counter::DropDsrOptionFailed => {
            "Dropped: the DSR option could not be added to a packet opening a flow to another node's endpoint (the kernel refused to grow the packet); the client retransmits."
        }
        Counter::DsrFrontendLearnt => {
            "TC external ingress: a packet with the DSR option from another node's vipr, for an endpoint here; the flow and its frontend were recorded, so the endpoint's replies leave for the client from the frontend. Passed on to the endpoint."
        }
        Counter::DropNoScratch => {
            "Dropped: the IPv6 path found no per-CPU scratch entry for its flow or lookup keys (the one-entry per-CPU arrays always have it: a kernel or load fault)."
        }
        Counter::DropMaglevPosition => {
            "Dropped: a new flow to a Maglev frontend found no backend at its position in the frontend's lookup table (an index entry pointing outside VIPR_MAGLEV, or at an unwritten position: an agent or map fault; a full resync rewrites the table)."
        }
    }
}

/// The counter named `name` (as `vipr stats` and the metrics spell it).
pub fn counter_named(name: &str) -> Option<Counter> {
    Counter::ALL.iter().copied().find(|c| c.name() == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_is_explained_and_found_by_its_name() {
        for &counter in Counter::ALL {
            assert_eq!(counter_named(counter.name()), Some(counter));
            let text = explain(counter);
            assert!(text.len() > 40, "{}: {text}", counter.name());
            if counter.is_drop() {
                assert!(
                    text.contains("Dropped") || text.contains("refused") || text.contains("failed"),
                    "a drop's text says what happens to the packet: {}",
                    counter.name()
                );
            }
        }
        assert_eq!(counter_named("no_such_counter"), None);
    }
}
