//! kube-proxy's rule shapes, reproduced from a list of services so that the
//! iptables and nftables contenders program exactly what kube-proxy would.
//! Pure text generation; the contenders load it.
use std::fmt::Write as _;
use std::net::Ipv4Addr;

/// A TCP service port and its endpoints.
#[derive(Clone, Debug)]
pub struct BenchService {
    pub vip: Ipv4Addr,
    pub port: u16,
    pub endpoints: Vec<(Ipv4Addr, u16)>,
    /// Also a UDP port with the same numbers (the measured service only).
    pub udp: bool,
}

impl BenchService {
    fn protocols(&self) -> &'static [&'static str] {
        if self.udp { &["tcp", "udp"] } else { &["tcp"] }
    }
}

/// kube-proxy names chains by a hash of the service port; any stable,
/// unique suffix does for the shape.
fn svc_chain(i: usize, proto: &str) -> String {
    format!("KUBE-SVC-{}{i:015X}", proto_tag(proto))
}
fn sep_chain(i: usize, j: usize, proto: &str) -> String {
    format!("KUBE-SEP-{}{i:011X}{j:04X}", proto_tag(proto))
}
fn proto_tag(proto: &str) -> char {
    if proto == "udp" { 'U' } else { 'T' }
}

/// An `iptables-restore` input for the nat table, as kube-proxy's iptables
/// mode writes it: KUBE-SERVICES matches each service in turn (O(n)), then
/// `statistic --mode random` picks an endpoint chain that DNATs.
pub fn iptables_restore(services: &[BenchService], pod_cidr: &str) -> String {
    let mut out = String::with_capacity(services.len() * 600);
    out.push_str(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n",
    );
    out.push_str(":KUBE-SERVICES - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n:KUBE-POSTROUTING - [0:0]\n");
    for (i, s) in services.iter().enumerate() {
        for proto in s.protocols() {
            let _ = writeln!(out, ":{} - [0:0]", svc_chain(i, proto));
            for j in 0..s.endpoints.len() {
                let _ = writeln!(out, ":{} - [0:0]", sep_chain(i, j, proto));
            }
        }
    }
    out.push_str(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
    );
    out.push_str(
        "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
    );
    out.push_str("-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n");
    out.push_str("-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n");
    out.push_str("-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n");
    out.push_str("-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0\n");
    out.push_str("-A KUBE-POSTROUTING -j MASQUERADE --random-fully\n");
    write_kube_services(&mut out, services);
    for (i, s) in services.iter().enumerate() {
        for proto in s.protocols() {
            write_iptables_service(&mut out, i, s, proto, pod_cidr);
        }
    }
    out.push_str("COMMIT\n");
    out
}

/// kube-proxy's partial sync (`iptables-restore --noflush`, the default
/// since 1.28): KUBE-SERVICES is always rewritten whole, but the per-service
/// chains only for the service that changed (`changed`). Endpoint chains
/// `stale` (indices of that service's old endpoints) are deleted.
pub fn iptables_partial_sync(
    services: &[BenchService],
    changed: usize,
    stale: std::ops::Range<usize>,
    pod_cidr: &str,
) -> String {
    let mut out = String::with_capacity(services.len() * 150);
    out.push_str("*nat\n:KUBE-SERVICES - [0:0]\n");
    let s = &services[changed];
    for proto in s.protocols() {
        let _ = writeln!(out, ":{} - [0:0]", svc_chain(changed, proto));
        for j in (0..s.endpoints.len()).chain(stale.clone()) {
            let _ = writeln!(out, ":{} - [0:0]", sep_chain(changed, j, proto));
        }
    }
    write_kube_services(&mut out, services);
    for proto in s.protocols() {
        write_iptables_service(&mut out, changed, s, proto, pod_cidr);
        for j in stale.clone() {
            let _ = writeln!(out, "-X {}", sep_chain(changed, j, proto));
        }
    }
    out.push_str("COMMIT\n");
    out
}

fn write_kube_services(out: &mut String, services: &[BenchService]) {
    for (i, s) in services.iter().enumerate() {
        for proto in s.protocols() {
            let _ = writeln!(
                out,
                "-A KUBE-SERVICES -d {}/32 -p {proto} -m comment --comment \"bench/svc-{i}:{proto} cluster IP\" -m {proto} --dport {} -j {}",
                s.vip,
                s.port,
                svc_chain(i, proto)
            );
        }
    }
}

fn write_iptables_service(
    out: &mut String,
    i: usize,
    s: &BenchService,
    proto: &str,
    pod_cidr: &str,
) {
    let chain = svc_chain(i, proto);
    let _ = writeln!(
        out,
        "-A {chain} ! -s {pod_cidr} -d {}/32 -p {proto} -m {proto} --dport {} -j KUBE-MARK-MASQ",
        s.vip, s.port
    );
    let n = s.endpoints.len();
    for (j, (ip, port)) in s.endpoints.iter().enumerate() {
        let sep = sep_chain(i, j, proto);
        if j + 1 < n {
            let p = 1.0 / (n - j) as f64;
            let _ = writeln!(
                out,
                "-A {chain} -m statistic --mode random --probability {p:.11} -j {sep}"
            );
        } else {
            let _ = writeln!(out, "-A {chain} -j {sep}");
        }
        let _ = writeln!(out, "-A {sep} -s {ip}/32 -j KUBE-MARK-MASQ");
        let _ = writeln!(
            out,
            "-A {sep} -p {proto} -m {proto} -j DNAT --to-destination {ip}:{port}"
        );
    }
}

const NFT_TABLE: &str = "kube-proxy";

fn nft_svc(i: usize, proto: &str) -> String {
    format!("service-{i}-bench/svc/{proto}/p")
}
fn nft_ep(i: usize, j: usize, proto: &str) -> String {
    format!("endpoint-{i}-{j}-{proto}")
}

/// An `nft -f` script in kube-proxy's nftables shape: one verdict-map lookup
/// (`service-ips`, keyed by address . protocol . port) and per-service
/// `numgen random` endpoint selection.
pub fn nft_ruleset(services: &[BenchService]) -> String {
    let mut out = String::with_capacity(services.len() * 500);
    let _ = writeln!(out, "add table ip {NFT_TABLE}");
    let _ = writeln!(out, "flush table ip {NFT_TABLE}");
    let _ = writeln!(
        out,
        "add map ip {NFT_TABLE} service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; }}"
    );
    let _ = writeln!(
        out,
        "add chain ip {NFT_TABLE} nat-prerouting {{ type nat hook prerouting priority -100 ; }}"
    );
    let _ = writeln!(out, "add chain ip {NFT_TABLE} services");
    let _ = writeln!(out, "add rule ip {NFT_TABLE} nat-prerouting jump services");
    let _ = writeln!(
        out,
        "add rule ip {NFT_TABLE} services ip daddr . meta l4proto . th dport vmap @service-ips"
    );
    for (i, s) in services.iter().enumerate() {
        write_nft_service(&mut out, i, s);
    }
    out
}

fn write_nft_service(out: &mut String, i: usize, s: &BenchService) {
    for proto in s.protocols() {
        let svc = nft_svc(i, proto);
        let _ = writeln!(out, "add chain ip {NFT_TABLE} {svc}");
        for (j, (ip, port)) in s.endpoints.iter().enumerate() {
            let ep = nft_ep(i, j, proto);
            let _ = writeln!(out, "add chain ip {NFT_TABLE} {ep}");
            let _ = writeln!(
                out,
                "add rule ip {NFT_TABLE} {ep} meta l4proto {proto} dnat to {ip}:{port}"
            );
        }
        write_nft_numgen(out, i, s.endpoints.len(), proto);
        let _ = writeln!(
            out,
            "add element ip {NFT_TABLE} service-ips {{ {} . {proto} . {} : goto {svc} }}",
            s.vip, s.port
        );
    }
}

fn write_nft_numgen(out: &mut String, i: usize, endpoints: usize, proto: &str) {
    let arms: Vec<String> = (0..endpoints)
        .map(|j| format!("{j} : goto {}", nft_ep(i, j, proto)))
        .collect();
    let _ = writeln!(
        out,
        "add rule ip {NFT_TABLE} {} numgen random mod {endpoints} vmap {{ {} }}",
        nft_svc(i, proto),
        arms.join(" , ")
    );
}

/// The transaction kube-proxy's nftables mode sends when service `i` gains
/// one TCP endpoint: a new endpoint chain and the service chain's rule replaced.
pub fn nft_add_endpoint(i: usize, s: &BenchService, new: (Ipv4Addr, u16)) -> String {
    let mut out = String::new();
    let j = s.endpoints.len();
    let ep = nft_ep(i, j, "tcp");
    let _ = writeln!(out, "add chain ip {NFT_TABLE} {ep}");
    let _ = writeln!(
        out,
        "add rule ip {NFT_TABLE} {ep} meta l4proto tcp dnat to {}:{}",
        new.0, new.1
    );
    let _ = writeln!(out, "flush chain ip {NFT_TABLE} {}", nft_svc(i, "tcp"));
    write_nft_numgen(&mut out, i, j + 1, "tcp");
    out
}

/// Undoes [`nft_add_endpoint`]: back to the service's own endpoints.
pub fn nft_remove_added_endpoint(i: usize, s: &BenchService) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "flush chain ip {NFT_TABLE} {}", nft_svc(i, "tcp"));
    write_nft_numgen(&mut out, i, s.endpoints.len(), "tcp");
    let _ = writeln!(
        out,
        "delete chain ip {NFT_TABLE} {}",
        nft_ep(i, s.endpoints.len(), "tcp")
    );
    out
}

/// `count` services on 10.96.0.0/12-style addresses, each with `endpoints`
/// fake endpoints; the last is the `measured` service (worst case for the
/// iptables chain walk: it is matched last).
pub fn synthetic(count: usize, endpoints: usize, measured: BenchService) -> Vec<BenchService> {
    let mut services: Vec<BenchService> = (0..count.saturating_sub(1))
        .map(|i| {
            let i = i as u32;
            BenchService {
                vip: Ipv4Addr::from(0x0a60_0000 + 0x100 + i),
                port: 80,
                endpoints: (0..endpoints as u32)
                    .map(|e| (Ipv4Addr::from(0x0b00_0000 + i * 16 + e), 8080))
                    .collect(),
                udp: false,
            }
        })
        .collect();
    services.push(measured);
    services
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two() -> Vec<BenchService> {
        synthetic(
            2,
            2,
            BenchService {
                vip: Ipv4Addr::new(10, 96, 0, 10),
                port: 80,
                endpoints: vec![(Ipv4Addr::new(10, 244, 1, 11), 8080)],
                udp: true,
            },
        )
    }

    #[test]
    fn iptables_measured_service_is_matched_last_and_probabilities_sum() {
        let text = iptables_restore(&two(), "10.244.0.0/16");
        let services: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("-A KUBE-SERVICES"))
            .collect();
        assert_eq!(services.len(), 3, "two tcp and one udp");
        assert!(
            services[1].contains("10.96.0.10/32 -p tcp"),
            "{}",
            services[1]
        );
        assert!(
            services[2].contains("10.96.0.10/32 -p udp"),
            "{}",
            services[2]
        );
        // Two endpoints: 1/2 then the unconditional fall-through.
        assert!(text.contains("--probability 0.50000000000"));
        assert!(text.contains("-j DNAT --to-destination 10.244.1.11:8080"));
        assert!(text.ends_with("COMMIT\n"));
    }

    #[test]
    fn iptables_partial_sync_rewrites_the_service_list_and_one_service() {
        let mut services = two();
        services[1]
            .endpoints
            .push((Ipv4Addr::new(10, 244, 1, 12), 8080));
        let change = iptables_partial_sync(&services, 1, 0..0, "10.244.0.0/16");
        assert_eq!(change.matches("-A KUBE-SERVICES").count(), 3);
        let other = svc_chain(0, "tcp");
        assert!(!change.contains(&format!("-A {other}")), "{change}");
        assert!(!change.contains(&format!(":{other}")), "{change}");
        assert!(
            change.contains(":KUBE-SEP-T000000000010001 - [0:0]"),
            "{change}"
        );
        assert!(change.contains("-j DNAT --to-destination 10.244.1.12:8080"));
        let undo = iptables_partial_sync(&two(), 1, 1..2, "10.244.0.0/16");
        assert!(undo.contains("-X KUBE-SEP-T000000000010001"), "{undo}");
        assert!(!undo.contains("10.244.1.12"), "{undo}");
    }

    #[test]
    fn nft_has_one_map_element_per_service_port_and_numgen_per_endpoint_count() {
        let text = nft_ruleset(&two());
        let elements = text
            .matches("add element ip kube-proxy service-ips")
            .count();
        assert_eq!(elements, 3, "two tcp and one udp");
        assert!(text.contains("10.96.0.10 . tcp . 80 : goto service-1-bench/svc/tcp/p"));
        assert!(text.contains("10.96.0.10 . udp . 80 : goto service-1-bench/svc/udp/p"));
        assert!(text.contains(
            "numgen random mod 2 vmap { 0 : goto endpoint-0-0-tcp , 1 : goto endpoint-0-1-tcp }"
        ));
        let measured = &two()[1];
        let change = nft_add_endpoint(1, measured, (Ipv4Addr::new(10, 244, 1, 12), 8080));
        assert!(change.contains("numgen random mod 2"), "{change}");
        let undo = nft_remove_added_endpoint(1, measured);
        assert!(undo.contains("numgen random mod 1"), "{undo}");
        assert!(
            undo.contains("delete chain ip kube-proxy endpoint-1-1-tcp"),
            "{undo}"
        );
    }
}
