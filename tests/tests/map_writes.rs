//! Service map writes through the kernel implementation: runs of one kind
//! go in batch system calls (BPF_MAP_UPDATE_BATCH / DELETE_BATCH), and a
//! batch the kernel refuses part of is retried op by op, so each op gets
//! its own result and nothing that fits is lost.
use std::net::Ipv4Addr;

use proxy_common::{BackendValue, IPPROTO_TCP, ServiceKey, ServiceValue};
use vipr::datapath::ServiceMaps;
use vipr::plan::MapOp;
use vipr_tests::packet::Harness;

fn backend(n: u32) -> BackendValue {
    BackendValue::new(Ipv4Addr::from(0x0af4_0000 + n), 8080, IPPROTO_TCP)
}

/// Applies `ops`, returning how many succeeded and failed.
fn apply(maps: &mut impl ServiceMaps, ops: &[MapOp]) -> (usize, usize) {
    let (mut ok, mut failed) = (0, 0);
    maps.apply_all(ops, &mut |_, result| match result {
        Ok(()) => ok += 1,
        Err(_) => failed += 1,
    });
    (ok, failed)
}

#[test]
fn runs_longer_than_a_batch_land_whole_and_in_order() -> anyhow::Result<()> {
    let mut h = Harness::new()?;
    let count = 10_000u32;
    let mut ops: Vec<MapOp> = (1..=count)
        .map(|id| MapOp::UpsertBackend(id, backend(id)))
        .collect();
    let services: Vec<ServiceKey> = (0..count)
        .map(|n| ServiceKey::new(Ipv4Addr::from(0x0a60_0000 + n), 80, IPPROTO_TCP))
        .collect();
    ops.extend(services.iter().zip(1..).map(|(key, id)| {
        MapOp::UpsertService(
            *key,
            ServiceValue {
                service_id: id,
                backend_count: 0,
                flags: 0,
            },
        )
    }));
    assert_eq!(apply(&mut h.maps, &ops), (ops.len(), 0));
    assert!(h.maps.batches_writes(), "the kernel refused batch writes");
    let dump = h.maps.dump()?;
    assert_eq!(dump.backends.len(), count as usize);
    assert_eq!(dump.services.len(), count as usize);
    assert_eq!(dump.backends.get(&777), Some(&backend(777)));

    let deletes: Vec<MapOp> = (1..=count).map(MapOp::DeleteBackend).collect();
    assert_eq!(apply(&mut h.maps, &deletes), (deletes.len(), 0));
    assert!(h.maps.dump()?.backends.is_empty());
    Ok(())
}

#[test]
fn a_full_map_fails_only_the_ops_that_do_not_fit() -> anyhow::Result<()> {
    const CAPACITY: u32 = 8;
    let mut h = Harness::with_options(|o| o.sizes.backends = CAPACITY)?;
    let ops: Vec<MapOp> = (1..=12)
        .map(|id| MapOp::UpsertBackend(id, backend(id)))
        .collect();
    assert_eq!(apply(&mut h.maps, &ops), (8, 4));
    let held: Vec<u32> = h.maps.dump()?.backends.into_keys().collect();
    assert_eq!(held, (1..=CAPACITY).collect::<Vec<_>>());
    assert!(
        h.maps.batches_writes(),
        "a full map is not a kernel without batches"
    );
    Ok(())
}

#[test]
fn deleting_keys_that_are_gone_succeeds() -> anyhow::Result<()> {
    let mut h = Harness::new()?;
    let upserts: Vec<MapOp> = (1..=4)
        .map(|id| MapOp::UpsertBackend(id, backend(id)))
        .collect();
    assert_eq!(apply(&mut h.maps, &upserts), (4, 0));
    // 5..=8 were never written: the batch stops at the first, the rest go singly.
    let deletes: Vec<MapOp> = (1..=8).map(MapOp::DeleteBackend).collect();
    assert_eq!(apply(&mut h.maps, &deletes), (8, 0));
    assert!(h.maps.dump()?.backends.is_empty());
    Ok(())
}
