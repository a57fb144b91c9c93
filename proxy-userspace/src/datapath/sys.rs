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

/// Reads `out.len()` consecutive elements of `map` from index `first`, in
/// as few system calls as the kernel allows (BPF_MAP_LOOKUP_BATCH).
pub fn lookup_array_batch<V: Pod>(
    map: &Array<MapData, V>,
    first: u32,
    out: &mut [V],
) -> std::io::Result<()> {
    let mut done = 0usize;
    while done < out.len() {
        let start = first
            .checked_add(u32::try_from(done).map_err(|_| std::io::ErrorKind::InvalidInput)?)
            .ok_or(std::io::ErrorKind::InvalidInput)?;
        let rest = &mut out[done..];
        let wanted = u32::try_from(rest.len()).map_err(|_| std::io::ErrorKind::InvalidInput)?;
        let mut keys = vec![0u32; rest.len()];
        // The kernel resumes *after* the key in `in_batch`; none: from 0.
        let resume_after = start.wrapping_sub(1);
        let mut next = 0u32;
        // SAFETY: as in `batch`, all-zero bytes are a valid bpf_attr.
        let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
        attr.batch.map_fd = map.map().fd().as_fd().as_raw_fd() as u32;
        attr.batch.in_batch = if start == 0 {
            0
        } else {
            &resume_after as *const u32 as u64
        };
        attr.batch.out_batch = &mut next as *mut u32 as u64;
        attr.batch.keys = keys.as_mut_ptr() as u64;
        attr.batch.values = rest.as_mut_ptr() as u64;
        attr.batch.count = wanted;
        // SAFETY: the kernel reads one key (4 bytes, an array's key size)
        // from `in_batch`, writes one to `out_batch`, and at most `count`
        // keys and values into `keys` and `rest`, which hold `count` u32s
        // and `count` values of the map's value size (checked by aya's
        // Array at construction); all live across the call. It writes the
        // number it read back into `attr.batch.count`.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                bpf_cmd::BPF_MAP_LOOKUP_BATCH as libc::c_long,
                &mut attr as *mut bpf_attr,
                std::mem::size_of::<bpf_attr>() as libc::c_uint,
            )
        };
        // SAFETY: reading the integer field the kernel wrote.
        let read = unsafe { attr.batch.count } as usize;
        if rc < 0 {
            let error = std::io::Error::last_os_error();
            // ENOENT: the end of the array came within this batch.
            if error.raw_os_error() != Some(libc::ENOENT) || read == 0 {
                return Err(error);
            }
        }
        if read == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        done += read.min(rest.len());
    }
    Ok(())
}
