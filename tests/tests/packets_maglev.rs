//! Maglev on the compiled programs (BPF_PROG_TEST_RUN): two agents with the
//! same Services but other ids choose the same endpoint for a flow, on the
//! TC and XDP paths; a flow keeps its endpoint when another one leaves; a
//! hole in a table is a counted drop. The maps are written by the real
//! planner and `KernelMaps`, table batches included.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use proxy_common::{
    IPPROTO_TCP, MaglevRef, SVC_FLAG_MAGLEV, ServiceKey,
    programs::{FROM_EXTERNAL, FROM_POD},
};
use vipr::datapath::ServiceMaps;
use vipr::model::{
    Backend, Conditions, EndpointModel, Frontend, FrontendKey, FrontendKind, Kind, Model,
    ObjectRef, Protocol, Scope,
};
use vipr::plan::{LbConfig, LbDefault, MapContents, MapOp, Planner, diff, diff_touched, maglev};
use vipr_tests::{netns, packet::*, packet6::*};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const NODE: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 1);
const NODE_PORT: u16 = 30_080;
const POD_CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 100);
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
/// Flows per test: enough to reach every endpoint and measure moves.
const FLOWS: u16 = 300;
const READY: Conditions = Conditions {
    ready: true,
    serving: true,
    terminating: false,
};

/// Endpoint `10.244.2.<n>:8080`, routed in the FIB namespace.
fn pod(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, 2, n)
}

fn lb(default: LbDefault) -> LbConfig {
    LbConfig {
        default,
        params: maglev::MaglevParams {
            size: 1021,
            seed: 99,
        },
        max_tables: 64,
    }
}

/// The frontend `ip:port` (`scope`) of a Service with endpoints `pods`.
fn frontend(ip: Ipv4Addr, port: u16, scope: Scope, pods: &[u8]) -> Frontend {
    frontend_at(
        ip.into(),
        port,
        scope,
        &pods.iter().map(|&n| IpAddr::V4(pod(n))).collect::<Vec<_>>(),
    )
}

/// [`frontend`] with any addresses.
fn frontend_at(ip: IpAddr, port: u16, scope: Scope, pods: &[IpAddr]) -> Frontend {
    let key = FrontendKey {
        ip,
        port,
        protocol: Protocol::Tcp,
        scope,
    };
    let mut backends: Vec<Backend> = pods
        .iter()
        .map(|&ip| Backend {
            endpoint: Arc::new(EndpointModel {
                ip,
                conditions: READY,
                node_name: None,
                zone: None,
                hints: Default::default(),
                target: None,
            }),
            port: 8080,
            local: false,
        })
        .collect();
    backends.sort_by_key(|b| (b.ip, b.port));
    Frontend {
        key,
        kind: FrontendKind::NodePort,
        service: ObjectRef {
            kind: Kind::Service,
            namespace: "default".into(),
            name: format!("svc-{port}").into(),
        },
        port_name: "".into(),
        backends,
        policy: Default::default(),
        topology: Default::default(),
    }
}

fn model(frontends: Vec<Frontend>) -> Model {
    let mut m = Model::default();
    for fe in frontends {
        m.frontends.insert(fe.key, fe);
    }
    m
}

/// The web Service: a cluster IP for pods, a NodePort from outside.
fn web(pods: &[u8]) -> Vec<Frontend> {
    vec![
        frontend(VIP, 80, Scope::Internal, pods),
        frontend(NODE, NODE_PORT, Scope::External, pods),
    ]
}

/// Writes `ops` through the harness's `KernelMaps`; every op must succeed.
fn write(h: &mut Harness, ops: &[MapOp]) {
    h.maps.apply_all(ops, &mut |op, result| {
        result.unwrap_or_else(|e| panic!("{op:?}: {e}"));
    });
}

/// A harness programmed by `planner` with the models of `history` in turn
/// (the last is what it holds).
fn programmed(planner: &mut Planner, history: &[Model]) -> Harness {
    let mut h = Harness::with_options(|o| o.node_ipv4 = Some(NODE)).expect("load (needs root)");
    let mut applied = MapContents::default();
    for m in history {
        let ops = diff(&applied, &planner.desired(m));
        write(&mut h, &ops);
        applied = planner.current().clone();
    }
    h
}

/// The endpoint a SYN from `src` got (its translated destination).
fn chosen(
    h: &mut Harness,
    program: &'static str,
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
) -> Ipv4Addr {
    let run = h.run(program, &syn(src, dst)).unwrap();
    assert_eq!(run.verdict, TC_ACT_OK, "{src:?}: {:?}", run.counted);
    destination(&run.output)
}

fn syn(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) -> Vec<u8> {
    tcp(Tuple { src, dst }, 1, true, false, b"")
}

fn destination(frame: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(frame[30], frame[31], frame[32], frame[33])
}

#[test]
fn two_agents_with_other_ids_send_a_flow_to_the_same_endpoint() {
    let pods = [11, 12, 13, 14, 15];
    let netns = FibNamespace::new();
    netns::run_in(netns.name(), || {
        let mut a_planner = Planner::with_lb(lb(LbDefault::Maglev));
        let mut a = programmed(&mut a_planner, &[model(web(&pods))]);
        // Agent b saw another Service and the endpoints in another order
        // first: other service and backend ids.
        let mut b_planner = Planner::with_lb(lb(LbDefault::Maglev));
        let mut other = web(&[15, 14]);
        other.push(frontend(
            Ipv4Addr::new(10, 96, 0, 99),
            81,
            Scope::Internal,
            &[12, 13, 11],
        ));
        let mut b = programmed(&mut b_planner, &[model(other), model(web(&pods))]);
        assert_ne!(a_planner.current().backends, b_planner.current().backends);
        assert!(
            a_planner
                .current()
                .services
                .values()
                .all(|v| v.flags & SVC_FLAG_MAGLEV != 0)
        );

        let mut used = std::collections::BTreeSet::new();
        for port in 40_000..40_000 + FLOWS {
            let from_pod = chosen(&mut a, FROM_POD, (POD_CLIENT, port), (VIP, 80));
            assert_eq!(
                from_pod,
                chosen(&mut b, FROM_POD, (POD_CLIENT, port), (VIP, 80)),
                "pod port {port}"
            );
            let outside = (CLIENT, port);
            let tc = chosen(&mut a, FROM_EXTERNAL, outside, (NODE, NODE_PORT));
            assert_eq!(
                tc,
                chosen(&mut b, FROM_EXTERNAL, outside, (NODE, NODE_PORT)),
                "port {port}"
            );
            for h in [&mut a, &mut b] {
                let xdp = h.run_xdp(&syn(outside, (NODE, NODE_PORT))).unwrap();
                assert_eq!(xdp.verdict, XDP_TX, "port {port}: {:?}", xdp.counted);
                assert_eq!(destination(&xdp.output), tc, "XDP and TC, port {port}");
            }
            used.insert(from_pod);
            used.insert(tc);
        }
        assert_eq!(
            used.len(),
            pods.len(),
            "every endpoint gets flows: {used:?}"
        );
    })
    .unwrap();
}

/// Fraction of the flows not on the departed endpoint that keep theirs
/// when it leaves, under `default`.
fn kept_after_a_removal(default: LbDefault) -> f64 {
    let pods = [11, 12, 13, 14, 15];
    let mut planner = Planner::with_lb(lb(default));
    let mut h = programmed(&mut planner, &[model(web(&pods))]);
    let flows: Vec<(Ipv4Addr, u16)> = (0..FLOWS).map(|i| (POD_CLIENT, 41_000 + i)).collect();
    let before: Vec<Ipv4Addr> = flows
        .iter()
        .map(|&src| chosen(&mut h, FROM_POD, src, (VIP, 80)))
        .collect();

    let after = model(web(&[11, 12, 14, 15]));
    let changed = after.frontends.keys().copied().collect();
    let (touched, noted) = planner.update_noting_before(&after, &changed);
    write(&mut h, &diff_touched(&noted, planner.current(), &touched));
    // A SYN on a known tuple is a new connection: the table chooses again.
    let mut others = 0;
    let mut kept = 0;
    for (&src, &was) in flows.iter().zip(&before) {
        let now = chosen(&mut h, FROM_POD, src, (VIP, 80));
        assert_ne!(now, pod(13), "no new flow goes to the departed endpoint");
        if was != pod(13) {
            others += 1;
            kept += usize::from(now == was);
        }
    }
    kept as f64 / others as f64
}

#[test]
fn flows_keep_their_endpoint_when_another_leaves() {
    let maglev = kept_after_a_removal(LbDefault::Maglev);
    let random = kept_after_a_removal(LbDefault::Random);
    println!(
        "5 → 4 endpoints: flows of the others that keep theirs: maglev {:.1}%, random {:.1}%",
        maglev * 100.0,
        random * 100.0
    );
    // Maglev moves a few percent of the others (M = 1021, N = 5); hash %
    // N moves most of them.
    assert!(maglev >= 0.9, "maglev kept {maglev}");
    assert!(random < 0.6, "random kept {random}");
}

#[test]
fn a_hole_in_a_table_is_a_counted_drop_and_no_table_falls_back_to_slots() {
    let mut planner = Planner::with_lb(lb(LbDefault::Maglev));
    let mut h = programmed(&mut planner, &[model(web(&[11, 12]))]);
    let key = ServiceKey::new(VIP, 80, IPPROTO_TCP);
    let service_id = planner.current().services[&key].service_id;
    let size = 1021;
    // A table number the pool never gave out: never written.
    let hole = MaglevRef {
        first: 63 * size,
        size,
        digest: 0,
    };
    write(&mut h, &[MapOp::UpsertMaglevRef(service_id, hole)]);
    let run = h
        .run(FROM_POD, &syn((POD_CLIENT, 42_000), (VIP, 80)))
        .unwrap();
    assert_eq!(run.verdict, TC_ACT_SHOT);
    assert_eq!(run.counted, vec![("drop_maglev_position", 1)]);
    // Flagged but without an index entry (a pool dropped at a restart):
    // the slots choose.
    write(&mut h, &[MapOp::DeleteMaglevRef(service_id)]);
    let to = chosen(&mut h, FROM_POD, (POD_CLIENT, 42_001), (VIP, 80));
    assert!([pod(11), pod(12)].contains(&to), "{to}");
}

/// IPv6 endpoint `fd00:244:2::<n>`, routed in the FIB namespace.
fn pod6(n: u16) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0x244, 2, 0, 0, 0, 0, n))
}

#[test]
fn ipv6_flows_go_to_the_same_endpoint_on_two_agents_too() {
    let vip6 = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x10);
    let node6 = Ipv6Addr::new(0xfd00, 0x30, 0, 0, 0, 0, 0, 1);
    let client6 = Ipv6Addr::new(0x2001, 0xdb8, 0x64, 0, 0, 0, 0, 7);
    let web6 = |pods: &[u16]| {
        let pods: Vec<IpAddr> = pods.iter().map(|&n| pod6(n)).collect();
        vec![
            frontend_at(vip6.into(), 80, Scope::Internal, &pods),
            frontend_at(node6.into(), NODE_PORT, Scope::External, &pods),
        ]
    };
    let netns = FibNamespace::new();
    netns::run_in(netns.name(), || {
        let mut a = programmed(
            &mut Planner::with_lb(lb(LbDefault::Maglev)),
            &[model(web6(&[1, 2, 3, 4]))],
        );
        let mut b_planner = Planner::with_lb(lb(LbDefault::Maglev));
        let history = [
            model(web(&[11, 12])),
            model(web6(&[4, 3])),
            model(web6(&[1, 2, 3, 4])),
        ];
        let mut b = programmed(&mut b_planner, &history);
        let mut used = std::collections::BTreeSet::new();
        for port in 43_000..43_000 + FLOWS {
            let from_pod = Tuple6 {
                src: (Ipv6Addr::new(0xfd00, 0x244, 1, 0, 0, 0, 0, 0x64), port),
                dst: (vip6, 80),
            };
            let outside = Tuple6 {
                src: (client6, port),
                dst: (node6, NODE_PORT),
            };
            let mut seen = Vec::new();
            for h in [&mut a, &mut b] {
                for (program, t) in [(FROM_POD, from_pod), (FROM_EXTERNAL, outside)] {
                    let run = h.run(program, &tcp6(t, 1, true, false, b"")).unwrap();
                    assert_eq!(
                        run.verdict, TC_ACT_OK,
                        "{program} {port}: {:?}",
                        run.counted
                    );
                    seen.push((program, endpoints6(&run.output).1.0));
                }
                let xdp = h.run_xdp(&tcp6(outside, 1, true, false, b"")).unwrap();
                assert_eq!(xdp.verdict, XDP_TX, "xdp {port}: {:?}", xdp.counted);
                seen.push((FROM_EXTERNAL, endpoints6(&xdp.output).1.0));
            }
            // a's choices, then b's: the same endpoints in the same order.
            assert_eq!(seen[..3], seen[3..], "port {port}");
            assert_eq!(seen[1].1, seen[2].1, "TC and XDP, port {port}");
            used.insert(seen[0].1);
        }
        assert_eq!(used.len(), 4, "{used:?}");
    })
    .unwrap();
}
