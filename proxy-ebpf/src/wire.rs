//! Word loads of packet fields at any alignment. `read_unaligned` compiles
//! to one load per byte on BPF, since LLVM assumes the target cannot load a
//! misaligned word: an IPv6 address becomes 16 loads and 30 shifts and ors.
//! The verifier does accept misaligned loads through packet pointers on
//! architectures with efficient unaligned access (x86-64, arm64), so the
//! word load is written out here. (Stack accesses stay strictly aligned:
//! enabling misaligned access for the whole object breaks those.)
use proxy_common::Addr6;

/// The 4 bytes at `ptr`, in memory order (a wire-order field stays in wire
/// order). Safety: `ptr` is a packet pointer the caller has bounds-checked
/// for 4 bytes.
#[inline(always)]
pub unsafe fn load_u32(ptr: *const u8) -> u32 {
    let word: u64;
    unsafe {
        core::arch::asm!(
            "{0} = *(u32 *)({1} + 0)",
            lateout(reg) word,
            in(reg) ptr,
            options(pure, readonly, nostack, preserves_flags),
        );
    }
    word as u32
}

/// The IPv6 address at `ptr`, which the caller has bounds-checked for 16 bytes.
#[inline(always)]
pub unsafe fn load_addr6(ptr: *const u8) -> Addr6 {
    unsafe {
        [
            load_u32(ptr),
            load_u32(ptr.add(4)),
            load_u32(ptr.add(8)),
            load_u32(ptr.add(12)),
        ]
    }
}
