//! The one userspace module with `unsafe`: system calls that neither aya
//! nor nix wrap. Each block states why it is sound; keep it that way.
use std::os::fd::{AsFd, AsRawFd};

use aya::Pod;
use aya::maps::{Array, HashMap, IterableMap, MapData};
use aya_obj::generated::{bpf_attr, bpf_cmd};

use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};

/// The cookie of the calling thread's network namespace, as
/// `bpf_get_netns_cookie` reports it for sockets of that namespace.
pub fn netns_cookie() -> std::io::Result<u64> {
    let probe = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: `probe` is an open socket for the whole call; `cookie` and
    // `len` are live, writable and `len` holds the size of `cookie`, which
    // is what SO_NETNS_COOKIE writes (a u64).
    let rc = unsafe {
        libc::getsockopt(
            probe.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cookie)
}

/// One malloc arena for the whole agent. glibc gives each thread that
/// allocates its own arena (up to 8 per core); objects converted on the
/// watcher threads and freed on the sync thread then leave every arena
/// fragmented. The agent allocates little after its first sync, so one
/// arena costs nothing measurable and kept RSS 10 % lower at 10,000
/// Services. Call before any thread starts.
#[cfg(target_env = "gnu")]
pub fn use_one_malloc_arena() {
    // SAFETY: mallopt only sets an allocator tunable; any value is valid
    // and it touches no memory of ours.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// musl (the static build of the container image) has one heap and no
/// such tunable: nothing to do.
#[cfg(not(target_env = "gnu"))]
pub fn use_one_malloc_arena() {}

/// Hands the allocator's free pages back to the kernel, e.g. after the
/// first sync, whose list parsing left most of the heap free.
#[cfg(target_env = "gnu")]
pub fn trim_heap() {
    // SAFETY: malloc_trim only releases memory the allocator holds free;
    // no pointer of ours is involved.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// musl's allocator returns freed pages itself and has no malloc_trim.
#[cfg(not(target_env = "gnu"))]
pub fn trim_heap() {}

/// `BPF_MAP_UPDATE_BATCH` on a hash map: `keys[i]` → `values[i]`, any
/// existing value replaced, in one system call. aya 0.14 wraps no batch
/// command. Returns the error of the first element the kernel could not
/// write (the ones before it are written).
pub fn update_batch<K: Pod, V: Pod>(
    map: &HashMap<MapData, K, V>,
    keys: &[K],
    values: &[V],
) -> std::io::Result<()> {
    batch(map, bpf_cmd::BPF_MAP_UPDATE_BATCH, keys, Some(values))
}

/// `BPF_MAP_DELETE_BATCH` on a hash map. Stops at the first key that is
/// not there (ENOENT), having deleted the ones before it.
pub fn delete_batch<K: Pod, V: Pod>(
    map: &HashMap<MapData, K, V>,
    keys: &[K],
) -> std::io::Result<()> {
    batch(map, bpf_cmd::BPF_MAP_DELETE_BATCH, keys, None)
}

/// `BPF_MAP_UPDATE_BATCH` on an array: `values` into positions `first..`.
/// (Arrays take batch updates from Linux 5.6, as hash maps do.)
pub fn update_array_batch<V: Pod>(
    map: &Array<MapData, V>,
    first: u32,
    values: &[V],
) -> std::io::Result<()> {
    let count = u32::try_from(values.len()).map_err(|_| std::io::ErrorKind::InvalidInput)?;
    let keys: Vec<u32> = (first..first.saturating_add(count)).collect();
    batch(map, bpf_cmd::BPF_MAP_UPDATE_BATCH, &keys, Some(values))
}

fn batch<K: Pod, V: Pod>(
    map: &impl IterableMap<K, V>,
    command: bpf_cmd,
    keys: &[K],
    values: Option<&[V]>,
) -> std::io::Result<()> {
    let count = u32::try_from(keys.len()).map_err(|_| std::io::ErrorKind::InvalidInput)?;
    if values.is_some_and(|values| values.len() != keys.len()) {
        return Err(std::io::ErrorKind::InvalidInput.into());
    }
    // SAFETY: bpf_attr is a C union of plain integers; all-zero bytes are a
    // valid value of it (and what the kernel wants in unused fields).
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    attr.batch.map_fd = map.map().fd().as_fd().as_raw_fd() as u32;
    attr.batch.keys = keys.as_ptr() as u64;
    attr.batch.values = values.map_or(0, |values| values.as_ptr() as u64);
    attr.batch.count = count;
    // SAFETY: the kernel reads `count` keys of the map's key size from
    // `keys` and as many values of its value size from `values`; aya's
    // HashMap and Array checked at construction that those sizes are
    // size_of::<K>() and size_of::<V>(), and both slices hold `count`
    // elements and live across the call. It writes only `attr.batch.count`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command as libc::c_long,
            &mut attr as *mut bpf_attr,
            std::mem::size_of::<bpf_attr>() as libc::c_uint,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
