//! Present so the userspace build script can depend on this crate; the
//! programs themselves are the binary target (src/main.rs).
#![no_std]
