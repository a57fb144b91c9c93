//! One packet through the trace copy (BPF_PROG_TEST_RUN), and what it left
//! in the copy's scratch maps. Before the run the scratch maps are emptied
//! and given the live state the packet would meet: its flow's conntrack
//! entries (in its family's table) and its client's affinity, copied,
//! never moved.
use std::path::{Path, PathBuf};

use aya::maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray, PerCpuValues};
use aya::programs::{SchedClassifier, TestRun, TestRunOptions, Xdp};
use aya::util::nr_cpus;
use proxy_common::{
    Affinity6Key, AffinityKey, AffinityValue, CT_FORWARD, CT_REVERSE, Counter, Ct6Key, Ct6Value,
    CtKey, CtValue, SockRevKey, SockRevValue, TraceRecord, maps, programs,
};

use super::DatapathError;
use super::kernel::read_counters;
use super::trace_copy::{scratch_map, trace_dir};

/// The leading fields of the UAPI `struct __sk_buff` up to its interface
/// index, which is all a TC trace sets: the kernel accepts a shorter
/// context and zeroes the rest. aya's generated bindings lack the struct.
const SKB_IFINDEX_OFFSET: usize = 40;
const IFINDEX_SIZE: usize = 4;

/// The test-run context that puts a packet of `frame_len` bytes on
/// `ifindex`. XDP's `struct xdp_md` (data, data_end, data_meta,
/// ingress_ifindex, rx_queue_index, egress_ifindex) must carry the frame's
/// end too, or the kernel refuses it.
fn context_on(ifindex: u32, xdp: bool, frame_len: usize) -> Vec<u8> {
    if xdp {
        let xdp_md = [0, frame_len as u32, 0, ifindex, 0, 0];
        return xdp_md.iter().flat_map(|v| v.to_ne_bytes()).collect();
    }
    let mut context = vec![0u8; SKB_IFINDEX_OFFSET + IFINDEX_SIZE];
    context[SKB_IFINDEX_OFFSET..].copy_from_slice(&ifindex.to_ne_bytes());
    context
}

/// Room for what a program may add to a frame (an ICMP error quotes it).
const FRAME_HEADROOM: usize = 256;

pub struct TraceInput<'a> {
    /// One of the trace copy's programs.
    pub program: &'static str,
    /// An Ethernet frame.
    pub frame: &'a [u8],
    /// The packet's tuple as a forward conntrack key (`CT_FORWARD`).
    pub flow: TraceFlow,
    /// The affinity the packet's client may have with the frontend it
    /// addresses, if that frontend exists.
    pub affinity: Option<TraceAffinity>,
    /// The interface the packet arrives on (else the kernel's loopback).
    pub ifindex: Option<u32>,
}

/// A traced client's affinity key with a frontend, in its family.
#[derive(Clone, Copy, Debug)]
pub enum TraceAffinity {
    V4(AffinityKey),
    V6(Affinity6Key),
}

/// A traced packet's tuple as its family's forward conntrack key.
#[derive(Clone, Copy, Debug)]
pub enum TraceFlow {
    V4(CtKey),
    V6(Ct6Key),
}

#[derive(Debug)]
pub struct TraceRun {
    /// The program's verdict (TC_ACT_* or XDP_*).
    pub return_value: u32,
    pub frame_out: Vec<u8>,
    /// Counters the run moved, with how much.
    pub counted: Vec<(Counter, u64)>,
    pub record: TraceRecord,
    /// Live conntrack entries the run started from.
    pub conntrack_before: Vec<(CtKey, CtValue)>,
    /// The scratch conntrack after the run.
    pub conntrack_after: Vec<(CtKey, CtValue)>,
    /// The same two for an IPv6 flow.
    pub conntrack6_before: Vec<(Ct6Key, Ct6Value)>,
    pub conntrack6_after: Vec<(Ct6Key, Ct6Value)>,
    /// The live affinity the run started from.
    pub affinity_before: Option<AffinityValue>,
}

fn map_error(name: &'static str) -> impl Fn(MapError) -> DatapathError {
    move |source| DatapathError::Map { name, source }
}

fn open_map(path: PathBuf, name: &'static str) -> Result<MapData, DatapathError> {
    MapData::from_pin(path).map_err(map_error(name))
}

fn live(pin_dir: &Path, name: &'static str) -> Result<MapData, DatapathError> {
    open_map(pin_dir.join(super::loader::MAP_DIR).join(name), name)
}

fn scratch(pin_dir: &Path, name: &'static str) -> Result<MapData, DatapathError> {
    open_map(scratch_map(pin_dir, name), name)
}

fn hash_map<K: aya::Pod, V: aya::Pod>(
    data: MapData,
    name: &'static str,
) -> Result<HashMap<MapData, K, V>, DatapathError> {
    HashMap::try_from(Map::HashMap(data)).map_err(map_error(name))
}

fn lru_map<K: aya::Pod, V: aya::Pod>(
    data: MapData,
    name: &'static str,
) -> Result<HashMap<MapData, K, V>, DatapathError> {
    HashMap::try_from(Map::LruHashMap(data)).map_err(map_error(name))
}

/// Deletes every entry of a scratch hash map.
fn clear<K: aya::Pod, V: aya::Pod>(
    map: &mut HashMap<MapData, K, V>,
    name: &'static str,
) -> Result<(), DatapathError> {
    let keys: Vec<K> = map
        .keys()
        .collect::<Result<_, _>>()
        .map_err(map_error(name))?;
    for key in keys {
        map.remove(&key).map_err(map_error(name))?;
    }
    Ok(())
}

/// Runs `input` through the trace copy of the agent pinned at `pin_dir`.
/// Traces are serialised by a lock on the trace directory: they share the
/// scratch maps.
pub fn run_trace(pin_dir: &Path, input: &TraceInput<'_>) -> Result<TraceRun, DatapathError> {
    let dir = trace_dir(pin_dir);
    let pins_error = |source: std::io::Error| DatapathError::Pins {
        path: dir.display().to_string(),
        source,
    };
    let _lock = super::trace_copy::lock(pin_dir)?;
    if !dir.exists() {
        return Err(pins_error(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no trace copy here: the agent loads one a moment after it starts \
             (if it is running, its log says why it could not)",
        )));
    }

    let mut conntrack: HashMap<_, CtKey, CtValue> =
        hash_map(scratch(pin_dir, maps::CONNTRACK)?, maps::CONNTRACK)?;
    let mut conntrack6: HashMap<_, Ct6Key, Ct6Value> =
        hash_map(scratch(pin_dir, maps::CONNTRACK6)?, maps::CONNTRACK6)?;
    let mut affinity: HashMap<_, AffinityKey, AffinityValue> =
        lru_map(scratch(pin_dir, maps::AFFINITY)?, maps::AFFINITY)?;
    let mut affinity6: HashMap<_, Affinity6Key, AffinityValue> =
        lru_map(scratch(pin_dir, maps::AFFINITY6)?, maps::AFFINITY6)?;
    let mut sockets: HashMap<_, SockRevKey, SockRevValue> =
        lru_map(scratch(pin_dir, maps::SOCK_REVNAT)?, maps::SOCK_REVNAT)?;
    let mut counters: PerCpuArray<_, u64> =
        PerCpuArray::try_from(Map::PerCpuArray(scratch(pin_dir, maps::COUNTERS)?))
            .map_err(map_error(maps::COUNTERS))?;
    let mut record: Array<_, TraceRecord> =
        Array::try_from(Map::Array(scratch(pin_dir, proxy_common::TRACE_RECORD)?))
            .map_err(map_error(proxy_common::TRACE_RECORD))?;

    clear(&mut conntrack, maps::CONNTRACK)?;
    clear(&mut conntrack6, maps::CONNTRACK6)?;
    clear(&mut affinity, maps::AFFINITY)?;
    clear(&mut affinity6, maps::AFFINITY6)?;
    clear(&mut sockets, maps::SOCK_REVNAT)?;
    let cpus = nr_cpus().map_err(|(_, e)| pins_error(e))?;
    for counter in Counter::ALL {
        let zeros = PerCpuValues::try_from(vec![0u64; cpus]).map_err(pins_error)?;
        counters
            .set(*counter as u32, zeros, 0)
            .map_err(map_error(maps::COUNTERS))?;
    }
    record
        .set(0, TraceRecord::default(), 0)
        .map_err(map_error(proxy_common::TRACE_RECORD))?;

    let (conntrack_before, conntrack6_before) = match &input.flow {
        TraceFlow::V4(flow) => (seed_conntrack(pin_dir, flow, &mut conntrack)?, Vec::new()),
        TraceFlow::V6(flow) => (Vec::new(), seed_conntrack(pin_dir, flow, &mut conntrack6)?),
    };
    let affinity_before = match &input.affinity {
        Some(TraceAffinity::V4(key)) => seed_affinity(pin_dir, maps::AFFINITY, key, &mut affinity)?,
        Some(TraceAffinity::V6(key)) => {
            seed_affinity(pin_dir, maps::AFFINITY6, key, &mut affinity6)?
        }
        None => None,
    };

    let xdp = input.program == programs::XDP_EXTERNAL;
    let mut frame_out = vec![0u8; input.frame.len() + FRAME_HEADROOM];
    let context = input
        .ifindex
        .map(|ifindex| context_on(ifindex, xdp, input.frame.len()));
    let options = TestRunOptions {
        data_in: Some(input.frame),
        data_out: Some(&mut frame_out),
        ctx_in: context.as_deref(),
        ..TestRunOptions::default()
    };
    let program_path = dir.join(input.program);
    let program_error = |source| DatapathError::Program {
        name: input.program,
        source,
    };
    let result = if xdp {
        Xdp::from_pin(&program_path, aya_obj::programs::XdpAttachType::Interface)
            .map_err(program_error)?
            .test_run(options)
    } else {
        SchedClassifier::from_pin(&program_path)
            .map_err(program_error)?
            .test_run(options)
    }
    .map_err(program_error)?;
    frame_out.truncate(result.data_size_out as usize);

    let counted = read_counters(&counters)?
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .collect();
    let conntrack_after = conntrack
        .iter()
        .collect::<Result<_, _>>()
        .map_err(map_error(maps::CONNTRACK))?;
    let conntrack6_after = conntrack6
        .iter()
        .collect::<Result<_, _>>()
        .map_err(map_error(maps::CONNTRACK6))?;
    Ok(TraceRun {
        return_value: result.return_value,
        frame_out,
        counted,
        record: record
            .get(&0, 0)
            .map_err(map_error(proxy_common::TRACE_RECORD))?,
        conntrack_before,
        conntrack_after,
        conntrack6_before,
        conntrack6_after,
        affinity_before,
    })
}

/// A conntrack key of either family, as the seeding below needs it.
trait FlowKey: aya::Pod {
    type Value: aya::Pod;
    /// The family's conntrack map.
    const MAP: &'static str;
    fn directed(&self, direction: u8) -> Self;
    fn partner_of(&self, value: &Self::Value) -> Self;
}

impl FlowKey for CtKey {
    type Value = CtValue;
    const MAP: &'static str = maps::CONNTRACK;
    fn directed(&self, direction: u8) -> Self {
        CtKey { direction, ..*self }
    }
    fn partner_of(&self, value: &CtValue) -> Self {
        self.partner(value)
    }
}

impl FlowKey for Ct6Key {
    type Value = Ct6Value;
    const MAP: &'static str = maps::CONNTRACK6;
    fn directed(&self, direction: u8) -> Self {
        Ct6Key { direction, ..*self }
    }
    fn partner_of(&self, value: &Ct6Value) -> Self {
        self.partner(value)
    }
}

/// Copies the live entries of `flow`, both directions, and their partners.
fn seed_conntrack<K: FlowKey>(
    pin_dir: &Path,
    flow: &K,
    scratch: &mut HashMap<MapData, K, K::Value>,
) -> Result<Vec<(K, K::Value)>, DatapathError> {
    let live: HashMap<_, K, K::Value> = hash_map(live(pin_dir, K::MAP)?, K::MAP)?;
    let mut copied = Vec::new();
    for direction in [CT_FORWARD, CT_REVERSE] {
        let key = flow.directed(direction);
        let Ok(value) = live.get(&key, 0) else {
            continue;
        };
        let partner = key.partner_of(&value);
        copied.push((key, value));
        if let Ok(partner_value) = live.get(&partner, 0) {
            copied.push((partner, partner_value));
        }
    }
    for (key, value) in &copied {
        scratch.insert(key, value, 0).map_err(map_error(K::MAP))?;
    }
    Ok(copied)
}

/// Copies the client's live affinity under `key` from the map `name`.
fn seed_affinity<K: aya::Pod>(
    pin_dir: &Path,
    name: &'static str,
    key: &K,
    scratch: &mut HashMap<MapData, K, AffinityValue>,
) -> Result<Option<AffinityValue>, DatapathError> {
    let live: HashMap<_, K, AffinityValue> = lru_map(live(pin_dir, name)?, name)?;
    let Ok(value) = live.get(key, 0) else {
        return Ok(None);
    };
    scratch.insert(key, value, 0).map_err(map_error(name))?;
    Ok(Some(value))
}
