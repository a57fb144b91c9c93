//! Map and global definitions; layouts and names come from proxy-common.
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray},
};
use proxy_common::{
    Affinity6Key, AffinityKey, AffinityMember, AffinityValue, Backend6Value, BackendValue, Counter,
    Ct6Key, Ct6Value, CtKey, CtValue, DEFAULT_MAX_AFFINITY, DEFAULT_MAX_BACKENDS,
    DEFAULT_MAX_CONNTRACK, DEFAULT_MAX_SERVICES, DEFAULT_MAX_SLOTS, DEFAULT_MAX_SOCK_REVNAT,
    DEFAULT_MAX_SOURCE_RANGES, Service6Key, ServiceKey, ServiceValue, SlotKey, SockRev6Key,
    SockRev6Value, SockRevKey, SockRevValue, SourceRange6Key, SourceRangeKey, TRACE_RECORD_ENTRIES,
    TraceRecord,
};

#[map(name = "VIPR_SERVICES")]
pub static SERVICES: HashMap<ServiceKey, ServiceValue> = HashMap::pinned(DEFAULT_MAX_SERVICES, 0);

#[map(name = "VIPR_SLOTS")]
pub static SLOTS: HashMap<SlotKey, u32> = HashMap::pinned(DEFAULT_MAX_SLOTS, 0);

#[map(name = "VIPR_BACKENDS")]
pub static BACKENDS: HashMap<u32, BackendValue> = HashMap::pinned(DEFAULT_MAX_BACKENDS, 0);

#[map(name = "VIPR_CONNTRACK")]
pub static CONNTRACK: HashMap<CtKey, CtValue> = HashMap::pinned(DEFAULT_MAX_CONNTRACK, 0);

// IPv6 twins of the three maps above (16-byte addresses); the slots are shared.
#[map(name = "VIPR_SERVICES6")]
pub static SERVICES6: HashMap<Service6Key, ServiceValue> = HashMap::pinned(DEFAULT_MAX_SERVICES, 0);

#[map(name = "VIPR_BACKENDS6")]
pub static BACKENDS6: HashMap<u32, Backend6Value> = HashMap::pinned(DEFAULT_MAX_BACKENDS, 0);

#[map(name = "VIPR_CONNTRACK6")]
pub static CONNTRACK6: HashMap<Ct6Key, Ct6Value> = HashMap::pinned(DEFAULT_MAX_CONNTRACK, 0);

#[map(name = "VIPR_COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(Counter::COUNT, 0);

#[map(name = "VIPR_SOURCE_RANGES")]
pub static SOURCE_RANGES: LpmTrie<SourceRangeKey, u8> =
    LpmTrie::pinned(DEFAULT_MAX_SOURCE_RANGES, 0);

#[map(name = "VIPR_AFFINITY")]
pub static AFFINITY: LruHashMap<AffinityKey, AffinityValue> =
    LruHashMap::pinned(DEFAULT_MAX_AFFINITY, 0);

// IPv6 twins of the two above, sized like them.
#[map(name = "VIPR_SOURCE_RANGES6")]
pub static SOURCE_RANGES6: LpmTrie<SourceRange6Key, u8> =
    LpmTrie::pinned(DEFAULT_MAX_SOURCE_RANGES, 0);

#[map(name = "VIPR_AFFINITY6")]
pub static AFFINITY6: LruHashMap<Affinity6Key, AffinityValue> =
    LruHashMap::pinned(DEFAULT_MAX_AFFINITY, 0);

#[map(name = "VIPR_AFFINITY_MEMBERS")]
pub static AFFINITY_MEMBERS: HashMap<AffinityMember, u32> = HashMap::pinned(DEFAULT_MAX_SLOTS, 0);

#[map(name = "VIPR_SOCK_REVNAT")]
pub static SOCK_REVNAT: LruHashMap<SockRevKey, SockRevValue> =
    LruHashMap::pinned(DEFAULT_MAX_SOCK_REVNAT, 0);

// The IPv6 twin of the above; v4-mapped sockets use the IPv4 map.
#[map(name = "VIPR_SOCK_REVNAT6")]
pub static SOCK_REVNAT6: LruHashMap<SockRev6Key, SockRev6Value> =
    LruHashMap::pinned(DEFAULT_MAX_SOCK_REVNAT, 0);

#[map(name = "VIPR_TRACE_RECORD")]
pub static TRACE_RECORD: Array<TraceRecord> = Array::pinned(TRACE_RECORD_ENTRIES, 0);

/// 1 in the trace copy of the programs (`vipr trace`), 0 in the live ones.
#[unsafe(no_mangle)]
static TRACE: u8 = 0;

#[inline(always)]
pub fn tracing() -> bool {
    unsafe { core::ptr::read_volatile(&TRACE) != 0 }
}

/// The node address masqueraded flows leave with (wire order); 0 = unset,
/// which disables masquerading.
#[unsafe(no_mangle)]
static NODE_IPV4: u32 = 0;

#[inline(always)]
pub fn node_ipv4() -> u32 {
    unsafe { core::ptr::read_volatile(&NODE_IPV4) }
}

/// The node's IPv6 address masqueraded flows leave with (wire order); all
/// zero = unset, which disables IPv6 masquerading.
#[unsafe(no_mangle)]
static NODE_IPV6: [u32; 4] = [0; 4];

#[inline(always)]
pub fn node_ipv6() -> [u32; 4] {
    unsafe { core::ptr::read_volatile(&NODE_IPV6) }
}

/// `LB_MODE_SNAT`, `LB_MODE_DSR` or `LB_MODE_HYBRID` (see `dsr.rs`).
#[unsafe(no_mangle)]
static LB_MODE: u8 = 0;

#[inline(always)]
pub fn lb_mode() -> u8 {
    unsafe { core::ptr::read_volatile(&LB_MODE) }
}

/// Seed of the backend-choice hash, set by the agent at load time so that
/// flow placement cannot be predicted from outside.
#[unsafe(no_mangle)]
static HASH_SEED: u32 = 0;

#[inline(always)]
pub fn hash_seed() -> u32 {
    // Volatile: the value is patched into .rodata at load time, after compilation.
    unsafe { core::ptr::read_volatile(&HASH_SEED) }
}

#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // Per-CPU slot: no other writer can race with this increment.
        unsafe { *slot += 1 };
    }
}

/// The agent's network namespace cookie: in `SOCKET_LB_HOST` scope the
/// socket hooks translate only sockets of this namespace.
#[unsafe(no_mangle)]
static NETNS_COOKIE: u64 = 0;

#[inline(always)]
pub fn agent_netns_cookie() -> u64 {
    unsafe { core::ptr::read_volatile(&NETNS_COOKIE) }
}

/// `SOCKET_LB_HOST` or `SOCKET_LB_ALL`.
#[unsafe(no_mangle)]
static SOCKET_LB_SCOPE: u8 = 0;

#[inline(always)]
pub fn socket_lb_scope() -> u8 {
    unsafe { core::ptr::read_volatile(&SOCKET_LB_SCOPE) }
}

/// Kernel-private, never read by the agent: the IPv6 pod path's flow and
/// decision between its subprograms (see `programs::from_pod6`).
#[map(name = "VIPR_SCRATCH6")]
pub static SCRATCH6: PerCpuArray<crate::programs::Scratch6> = PerCpuArray::with_max_entries(1, 0);

/// Kernel-private, never read by the agent: where the TC and XDP programs
/// build the 20-byte keys of the IPv6 source-range and affinity lookups,
/// off the stack (see `family::KeyRoom`).
#[map(name = "VIPR_KEYS6")]
pub static KEYS6: PerCpuArray<Keys6> = PerCpuArray::with_max_entries(1, 0);

/// The IPv6 lookup keys of one packet.
#[repr(C)]
#[derive(Default)]
pub struct Keys6 {
    pub range: RangeLookup6,
    pub affinity: Affinity6Key,
}

/// An LPM lookup key of `VIPR_SOURCE_RANGES6`: the bytes of aya's
/// `lpm_trie::Key<SourceRange6Key>` (prefix length, then the data, no
/// padding), but word-aligned, so it is written in words: aya's is packed,
/// which the compiler writes a byte at a time.
#[repr(C)]
#[derive(Default)]
pub struct RangeLookup6 {
    pub prefix_len: u32,
    pub data: SourceRange6Key,
}

const _: () = assert!(
    core::mem::size_of::<RangeLookup6>()
        == core::mem::size_of::<aya_ebpf::maps::lpm_trie::Key<SourceRange6Key>>()
);

impl RangeLookup6 {
    /// The same bytes as aya's key type, for `LpmTrie::get`.
    #[inline(always)]
    pub fn as_key(&self) -> &aya_ebpf::maps::lpm_trie::Key<SourceRange6Key> {
        // Same fields in the same order with no padding in either (the
        // assertion above), and the packed type needs no alignment.
        unsafe { &*(self as *const Self).cast() }
    }
}

/// Where a family builds the keys of its larger lookups (`Family::Keys`).
pub enum KeyRoom<'a, K> {
    /// The per-CPU entry (`KEYS6`): for the TC and XDP programs, which run
    /// with softirqs off and so never interrupt one another on a CPU.
    PerCpu,
    /// The caller's stack: for the socket hooks, which run in process
    /// context, where a packet's program could overwrite a per-CPU entry
    /// between the key's writing and its lookup.
    Stack(&'a mut K),
}

impl KeyRoom<'_, Keys6> {
    /// `None` only if the per-CPU entry is missing (never: one entry).
    #[inline(always)]
    pub fn keys(&mut self) -> Option<&mut Keys6> {
        match self {
            KeyRoom::Stack(keys) => Some(keys),
            // A per-CPU entry: nothing else runs on this CPU while the program does.
            KeyRoom::PerCpu => KEYS6.get_ptr_mut(0).map(|keys| unsafe { &mut *keys }),
        }
    }
}

// Maglev (appended: see proxy_common::maglev). The pool is sized by the
// agent at load (tables × positions); these defaults only make the object
// loadable on its own.
#[map(name = "VIPR_MAGLEV")]
pub static MAGLEV: Array<u32> = Array::pinned(
    proxy_common::DEFAULT_MAX_MAGLEV_TABLES * proxy_common::DEFAULT_MAGLEV_TABLE_SIZE,
    0,
);

#[map(name = "VIPR_MAGLEV_INDEX")]
pub static MAGLEV_INDEX: HashMap<u32, proxy_common::MaglevRef> =
    HashMap::pinned(DEFAULT_MAX_SERVICES, 0);
