//! Test support for vipr: crafted packets for BPF_PROG_TEST_RUN, and network
//! namespace topologies with real servers for end-to-end tests and the demo.
pub mod apiserver;
pub mod bench;
pub mod cgroup;
pub mod demo;
pub mod echo;
pub mod external;
pub mod netns;
pub mod packet;
