//! Session affinity (ClientIP) through the real TC program: stickiness per
//! client, expiry after the timeout, and never to an endpoint that left.
use std::net::Ipv4Addr;

use aya::maps::{HashMap, MapData};
use proxy_common::{
    AffinityKey, AffinityMember, AffinityValue, BackendValue, IPPROTO_TCP, SVC_FLAG_AFFINITY,
    SVC_FLAG_HAS_ENDPOINTS, ServiceKey, programs::FROM_POD,
};
use vipr::datapath::ServiceMaps;
use vipr::plan::MapOp;
use vipr_tests::packet::*;

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const SERVICE_ID: u32 = 1;
const TIMEOUT_S: u32 = 60;

fn backend(i: u8) -> (u32, BackendValue) {
    (
        u32::from(i),
        BackendValue::new(Ipv4Addr::new(10, 244, 1, 10 + i), 8080, IPPROTO_TCP),
    )
}

/// VIP:80 with three endpoints and ClientIP affinity (members: all three).
fn harness() -> (Harness, HashMap<MapData, AffinityKey, AffinityValue>) {
    let mut h = Harness::new().expect("load programs (needs root)");
    let backends = [backend(1), backend(2), backend(3)];
    let flags = SVC_FLAG_AFFINITY | SVC_FLAG_HAS_ENDPOINTS;
    h.add_frontend(
        SERVICE_ID,
        ServiceKey::new(VIP, 80, IPPROTO_TCP),
        flags,
        &backends,
    )
    .unwrap();
    for (id, _) in backends {
        let member = AffinityMember {
            service_id: SERVICE_ID,
            backend_id: id,
        };
        h.maps
            .apply(&MapOp::UpsertAffinity(member, TIMEOUT_S))
            .unwrap();
    }
    let table = h
        .datapath
        .ebpf
        .take_map(proxy_common::maps::AFFINITY)
        .expect("affinity map");
    (h, HashMap::try_from(table).unwrap())
}

/// The endpoint a new connection from `client`:`port` is sent to.
fn new_connection(h: &mut Harness, client: Ipv4Addr, port: u16) -> (Ipv4Addr, Run) {
    let syn = tcp(
        Tuple {
            src: (client, port),
            dst: (VIP, 80),
        },
        1,
        true,
        false,
        b"",
    );
    let run = h.run(FROM_POD, &syn).unwrap();
    let to = Ipv4Addr::new(
        run.output[30],
        run.output[31],
        run.output[32],
        run.output[33],
    );
    (to, run)
}

fn followed(run: &Run) -> bool {
    run.counted.contains(&("affinity_followed", 1))
}

#[test]
fn a_client_sticks_to_one_endpoint_and_clients_spread() {
    let (mut h, _) = harness();
    let client = Ipv4Addr::new(10, 244, 2, 50);
    let (first, _) = new_connection(&mut h, client, 40_000);
    for port in 40_001..40_040 {
        let (to, run) = new_connection(&mut h, client, port);
        assert_eq!(to, first, "port {port}");
        assert!(followed(&run), "{:?}", run.counted);
    }
    let spread: std::collections::BTreeSet<Ipv4Addr> = (1..=40u8)
        .map(|c| new_connection(&mut h, Ipv4Addr::new(10, 244, 3, c), 50_000).0)
        .collect();
    assert_eq!(
        spread.len(),
        3,
        "other clients use every endpoint: {spread:?}"
    );
}

#[test]
fn an_affinity_expires_after_its_timeout_and_slides_with_new_connections() {
    let (mut h, table) = harness();
    let client = Ipv4Addr::new(10, 244, 2, 51);
    let key = AffinityKey {
        service_id: SERVICE_ID,
        client_addr: proxy_common::wire_addr(client),
    };
    new_connection(&mut h, client, 40_000);
    let fresh = table.get(&key, 0).expect("affinity recorded");
    // Point the affinity at endpoint 3, used just now: followed.
    let at_3 = |last_used_s| AffinityValue {
        backend_id: 3,
        last_used_s,
    };
    let mut table = table;
    table.insert(key, at_3(fresh.last_used_s), 0).unwrap();
    let (to, run) = new_connection(&mut h, client, 40_001);
    assert_eq!(to, backend(3).1.ip());
    assert!(followed(&run));
    // Still within the timeout (just): followed, and the timeout restarts.
    table
        .insert(key, at_3(fresh.last_used_s - TIMEOUT_S + 2), 0)
        .unwrap();
    let (to, run) = new_connection(&mut h, client, 40_002);
    assert_eq!((to, followed(&run)), (backend(3).1.ip(), true));
    assert!(table.get(&key, 0).unwrap().last_used_s >= fresh.last_used_s);
    // Past the timeout: chosen afresh.
    table
        .insert(key, at_3(fresh.last_used_s - TIMEOUT_S - 2), 0)
        .unwrap();
    let (_, run) = new_connection(&mut h, client, 40_003);
    assert!(!followed(&run), "expired: {:?}", run.counted);
}

#[test]
fn an_affinity_never_leads_to_an_endpoint_new_connections_may_not_use() {
    let (mut h, table) = harness();
    let client = Ipv4Addr::new(10, 244, 2, 52);
    let key = AffinityKey {
        service_id: SERVICE_ID,
        client_addr: proxy_common::wire_addr(client),
    };
    new_connection(&mut h, client, 40_000);
    let now = table.get(&key, 0).unwrap().last_used_s;
    let mut table = table;
    table
        .insert(
            key,
            AffinityValue {
                backend_id: 3,
                last_used_s: now,
            },
            0,
        )
        .unwrap();
    // Endpoint 3 terminates (ready ones remain) or leaves: the agent takes
    // it out of the slots and the members, and the affinity no longer leads
    // there (the backend itself stays known for established flows).
    let flags = SVC_FLAG_AFFINITY | SVC_FLAG_HAS_ENDPOINTS;
    let key_80 = ServiceKey::new(VIP, 80, IPPROTO_TCP);
    h.add_frontend(SERVICE_ID, key_80, flags, &[backend(1), backend(2)])
        .unwrap();
    let member = AffinityMember {
        service_id: SERVICE_ID,
        backend_id: 3,
    };
    h.maps.apply(&MapOp::DeleteAffinity(member)).unwrap();
    for port in 40_001..40_030 {
        let (to, run) = new_connection(&mut h, client, port);
        assert_ne!(to, backend(3).1.ip(), "port {port}");
        // The affinity moved to the new choice and is followed from then on.
        assert_eq!(
            followed(&run),
            port > 40_001,
            "port {port}: {:?}",
            run.counted
        );
    }
}
