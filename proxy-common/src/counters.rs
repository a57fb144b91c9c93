//! Named counters: every verdict and every drop reason of the kernel programs.
//! The enum discriminant is the index in the `VIPR_COUNTERS` per-CPU array.

macro_rules! counters {
    ($($variant:ident => $name:literal,)*) => {
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Counter { $($variant,)* }

        impl Counter {
            pub const ALL: &'static [Counter] = &[$(Counter::$variant,)*];
            pub const COUNT: u32 = Self::ALL.len() as u32;
            /// Stable name used in metrics and CLI output.
            pub const fn name(self) -> &'static str {
                match self { $(Counter::$variant => $name,)* }
            }
            /// Drop reasons start with `drop_`; everything else is a verdict.
            /// Decided at compile time per counter: the kernel programs ask
            /// on every packet, and a bit test is all that is left of it.
            #[inline(always)]
            pub const fn is_drop(self) -> bool {
                match self { $(Counter::$variant => const { names_a_drop($name) },)* }
            }
        }
    };
}

const DROP_PREFIX: &[u8] = b"drop_";

/// Whether a counter's name starts with `drop_`.
const fn names_a_drop(name: &str) -> bool {
    let name = name.as_bytes();
    if name.len() < DROP_PREFIX.len() {
        return false;
    }
    let mut i = 0;
    while i < DROP_PREFIX.len() {
        if name[i] != DROP_PREFIX[i] {
            return false;
        }
        i += 1;
    }
    true
}

counters! {
    PassNotIpv4 => "pass_not_ipv4",
    PassFragment => "pass_fragment",
    PassOtherProtocol => "pass_other_protocol",
    PassNotService => "pass_not_service",
    PassNotTranslated => "pass_not_translated",
    DnatNew => "dnat_new",
    DnatEstablished => "dnat_established",
    DnatReselected => "dnat_reselected",
    RevNat => "rev_nat",
    RevSnat => "rev_snat",
    XdpTransmitted => "xdp_transmitted",
    XdpToStack => "xdp_to_stack",
    RejectTcpRst => "reject_tcp_rst",
    RejectIcmpUnreachable => "reject_icmp_unreachable",
    DropTruncated => "drop_truncated",
    DropBadIpHeader => "drop_bad_ip_header",
    DropMissingSlot => "drop_missing_slot",
    DropMissingBackend => "drop_missing_backend",
    DropConntrackFull => "drop_conntrack_full",
    DropRewriteFailed => "drop_rewrite_failed",
    DropRejectFailed => "drop_reject_failed",
    DropNoLocalEndpoints => "drop_no_local_endpoints",
    DropSourceRange => "drop_source_range",
    DropSnatPortsExhausted => "drop_snat_ports_exhausted",
    // Appended, so the indices of pinned counters keep their meaning.
    TcRedirected => "tc_redirected",
    // The cgroup socket hooks.
    SockTranslated => "sock_translated",
    SockRefused => "sock_refused",
    SockPassNotService => "sock_pass_not_service",
    SockPassOtherNetns => "sock_pass_other_netns",
    SockRevNat => "sock_rev_nat",
    SockRevNatStale => "sock_rev_nat_stale",
    SockPassNotTranslated => "sock_pass_not_translated",
    DropSockRevNatFull => "drop_sock_rev_nat_full",
    // Session affinity: a new connection followed the client's affinity.
    AffinityFollowed => "affinity_followed",
    // A new flow whose translated tuple is another flow's (same client
    // address and port, same backend, another frontend): the backend could
    // not tell them apart.
    DropConntrackCollision => "drop_conntrack_collision",
    // A RST to a Service without endpoints: never answered with a RST.
    DropRstNotRefused => "drop_rst_not_refused",
    // IPv6: more extension headers before the L4 header than the programs
    // walk (`MAX_IPV6_EXT_HEADERS`): passed untouched.
    PassIpv6ExtHeaders => "pass_ipv6_ext_headers",
    // Retired: IPv6 serves masquerade, hairpin and source ranges now. Never
    // counted; its slot stays, as counters are only ever appended.
    DropIpv6Unsupported => "drop_ipv6_unsupported",
    // Retired: IPv6 follows ClientIP affinity now. Never counted; the slot
    // stays.
    Ipv6AffinityIgnored => "ipv6_affinity_ignored",
    // IPv6: a per-CPU scratch entry (the pod path's flow, the lookup keys)
    // was missing (never, for a one-entry per-CPU array).
    DropNoScratch => "drop_no_scratch",
    // An ICMP or ICMPv6 error about a translated flow, on its way to the
    // client, whose quoted packet was turned back into what the client sent.
    RevNatIcmpError => "rev_nat_icmp_error",
    // A Maglev frontend's table has no backend at the flow's position
    // (its index entry points outside `VIPR_MAGLEV`, or at a hole).
    DropMaglevPosition => "drop_maglev_position",
    // DSR (`--lb-mode dsr|hybrid`), ingress node: a packet opening a flow to
    // another node's endpoint left with the client's address and the
    // frontend in an IPv4 option or IPv6 destination options header
    // (`dsr.rs`, `dsr6.rs`).
    DsrOptionAdded => "dsr_option_added",
    // DSR, ingress node: the option could not be added (no room to grow
    // the packet): dropped, the client retransmits.
    DropDsrOptionFailed => "drop_dsr_option_failed",
    // DSR, endpoint's node: the frontend of a flow was learnt from the
    // option; the endpoint's replies leave for the client from it.
    DsrFrontendLearnt => "dsr_frontend_learnt",
}
