//! The demo's dual-stack Service: demo/echo-dual, one ClusterIP per family,
//! served by the same three echo pods through their IPv4 and IPv6
//! addresses (a [`DemoCluster::start_dual_stack`] cluster).
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result, ensure};

use crate::demo::{
    BACKENDS, DNS_PORT, DNS_TARGET_PORT, DemoCluster, HTTP_PORT, HTTP_TARGET_PORT, NAMESPACE,
    wait_until, write_atomic,
};
use crate::echo;

pub const DUAL_SERVICE: &str = "echo-dual";
pub const DUAL_CLUSTER_IP4: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 30);
pub const DUAL_CLUSTER_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x1e);
const APPLY_TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// The Service's HTTP frontend in each family: IPv6 first, as its
/// `ipFamilies` lists it.
pub fn dual_http_addrs() -> [SocketAddr; 2] {
    [
        SocketAddr::from((DUAL_CLUSTER_IP6, HTTP_PORT)),
        SocketAddr::from((DUAL_CLUSTER_IP4, HTTP_PORT)),
    ]
}

/// The Service and one EndpointSlice per family; `ip6` gives a pod's IPv6
/// address.
pub fn dual_stack_yaml(ip6: impl Fn(&str) -> Result<Ipv6Addr>) -> Result<String> {
    let mut yaml = format!(
        "apiVersion: v1
kind: Service
metadata: {{name: {DUAL_SERVICE}, namespace: {NAMESPACE}}}
spec:
  ipFamilyPolicy: RequireDualStack
  ipFamilies: [IPv6, IPv4]
  clusterIPs: ['{DUAL_CLUSTER_IP6}', {DUAL_CLUSTER_IP4}]
  ports:
  - {{name: http, protocol: TCP, port: {HTTP_PORT}, targetPort: {HTTP_TARGET_PORT}}}
  - {{name: dns, protocol: UDP, port: {DNS_PORT}, targetPort: {DNS_TARGET_PORT}}}
"
    );
    for family in ["IPv4", "IPv6"] {
        yaml += &format!(
            "---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {DUAL_SERVICE}-{family}
  namespace: {NAMESPACE}
  labels: {{kubernetes.io/service-name: {DUAL_SERVICE}}}
addressType: {family}
ports:
- {{name: http, protocol: TCP, port: {HTTP_TARGET_PORT}}}
- {{name: dns, protocol: UDP, port: {DNS_TARGET_PORT}}}
endpoints:
"
        );
        for b in BACKENDS {
            let ip: IpAddr = if family == "IPv4" {
                b.ip.into()
            } else {
                ip6(b.name)?.into()
            };
            yaml += &format!(
                "- {{addresses: ['{ip}'], nodeName: {node}, conditions: {{ready: true}}}}\n",
                node = b.node
            );
        }
    }
    Ok(yaml)
}

/// Adds demo/echo-dual to the cluster's manifests and waits until a pod
/// reaches it in both families.
pub fn add_dual_stack_service(cluster: &DemoCluster) -> Result<()> {
    let topology = cluster.topology();
    let yaml = dual_stack_yaml(|pod| topology.pod_ip6(pod))?;
    write_atomic(
        &cluster.manifests_dir().join(format!("{DUAL_SERVICE}.yaml")),
        &yaml,
    )?;
    let client = cluster.netns("client");
    for addr in dual_http_addrs() {
        let served = wait_until(APPLY_TIMEOUT, || {
            echo::tcp_request(&client, addr, REQUEST_TIMEOUT).is_ok()
        });
        ensure!(served, "{DUAL_SERVICE} did not answer on {addr}");
    }
    Ok(())
}

/// One TCP request from the client pod to each family's frontend: who
/// served it, and the peer address the client's socket reports (the
/// ClusterIP, when replies are translated back).
pub fn ask_both_families(cluster: &DemoCluster) -> Result<Vec<(SocketAddr, String, SocketAddr)>> {
    let client = cluster.netns("client");
    dual_http_addrs()
        .into_iter()
        .map(|addr| {
            let reply = echo::tcp_request_full(&client, addr, REQUEST_TIMEOUT)
                .with_context(|| format!("request to {addr}"))?;
            Ok((addr, reply.name, reply.peer))
        })
        .collect()
}
