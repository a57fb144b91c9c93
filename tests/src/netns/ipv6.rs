//! IPv6 on a [`Topology`] (dual-stack): node `N` gets `fd00:30::N/64` on
//! the underlay and owns `fd00:244:N::/64`; pod `10.244.N.X` also gets
//! `fd00:244:N::X` (the same digits) as a /128, routed by its node, with
//! the link-local `fe80::1` on the node side of its veth as gateway.
//! Addresses skip duplicate address detection: no test waits for it.

use std::net::Ipv6Addr;

use anyhow::{Context, Result};

use super::{Topology, ip_batch, sysctl};

/// Gateway of pods in IPv6: on the node side of every pod veth.
pub const POD_GATEWAY6: &str = "fe80::1";

impl Topology {
    /// Adds IPv6 to every node and pod added so far.
    pub fn enable_ipv6(&mut self) -> Result<()> {
        for node in &self.nodes {
            sysctl(&node.netns, "net/ipv6/conf/all/forwarding", "1")?;
            let mut commands = format!(
                "addr add {}/64 dev eth0 nodad\n",
                Self::underlay_ip6(node.index)
            );
            for other in self.nodes.iter().filter(|o| o.index != node.index) {
                commands += &format!(
                    "route add {} via {}\n",
                    Self::pod_cidr6(other.index),
                    Self::underlay_ip6(other.index)
                );
            }
            ip_batch(&node.netns, &commands)?;
        }
        for pod in &self.pods {
            let node = self.node(&pod.node)?;
            let pod_ip = Self::pod_ip6_of(pod.ip)?;
            ip_batch(
                &node.netns,
                &format!(
                    "addr add {POD_GATEWAY6}/64 dev {host_if} nodad\nroute add {pod_ip}/128 dev {host_if}\n",
                    host_if = pod.host_if
                ),
            )?;
            ip_batch(
                &pod.netns,
                &format!(
                    "addr add {pod_ip}/128 dev eth0 nodad\nroute add ::/0 via {POD_GATEWAY6} dev eth0\n"
                ),
            )?;
        }
        Ok(())
    }

    /// IPv6 underlay address of a node.
    pub fn node_ip6(&self, node: &str) -> Result<Ipv6Addr> {
        Ok(Self::underlay_ip6(self.node(node)?.index))
    }

    /// IPv6 address of a pod (after [`Topology::enable_ipv6`]).
    pub fn pod_ip6(&self, pod: &str) -> Result<Ipv6Addr> {
        Self::pod_ip6_of(self.pod(pod)?.ip)
    }

    fn underlay_ip6(index: u8) -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, 0x30, 0, 0, 0, 0, 0, u16::from(index))
    }

    fn pod_cidr6(index: u8) -> String {
        format!("fd00:244:{index}::/64")
    }

    /// `10.244.N.X` → `fd00:244:N::X`, digits kept as written.
    fn pod_ip6_of(v4: std::net::Ipv4Addr) -> Result<Ipv6Addr> {
        let [_, _, node, host] = v4.octets();
        format!("fd00:244:{node}::{host}")
            .parse()
            .with_context(|| format!("no IPv6 twin for {v4}"))
    }
}
