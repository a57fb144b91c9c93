//! Pins of an incompatible layout are refused with a clear message instead
//! of being reused or rewritten.
use std::path::PathBuf;

use vipr::datapath::{Datapath, LoadOptions, cleanup_pins};

/// Removes the pin directory whatever happens.
struct Pins(PathBuf);

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = cleanup_pins(&self.0);
    }
}

#[test]
fn pins_of_another_layout_are_refused_naming_the_map_and_the_way_out() {
    let pins = Pins(PathBuf::from(format!(
        "/sys/fs/bpf/vipr-pins-test-{}",
        std::process::id()
    )));
    let options = LoadOptions::new(&pins.0);
    drop(Datapath::load(&options).expect("first load (needs root)"));
    // The same pins load again: that is how a restart keeps its flows.
    drop(Datapath::load(&options).expect("reload over our own pins"));
    let maps = pins.0.join("maps");
    // An older agent's trace record was smaller: it holds nothing live, so
    // it is replaced, not refused.
    std::fs::rename(maps.join("VIPR_COUNTERS"), maps.join("VIPR_TRACE_RECORD")).unwrap();
    drop(Datapath::load(&options).expect("a stale trace record is replaced"));
    let record = aya::maps::MapInfo::from_pin(maps.join("VIPR_TRACE_RECORD")).unwrap();
    assert_eq!(
        record.value_size() as usize,
        size_of::<proxy_common::TraceRecord>()
    );
    // An older agent's services map had another layout: stand one in.
    std::fs::rename(maps.join("VIPR_COUNTERS"), maps.join("VIPR_SERVICES")).unwrap();
    let error = Datapath::load(&options)
        .err()
        .expect("incompatible pins are refused")
        .to_string();
    assert!(error.contains("VIPR_SERVICES"), "{error}");
    assert!(error.contains("vipr cleanup"), "{error}");
    assert!(
        maps.join("VIPR_SERVICES").exists(),
        "the pins are left as they were"
    );
}

#[test]
fn a_maglev_pool_of_another_size_is_dropped_with_its_index_one_of_this_size_kept() {
    use proxy_common::MaglevRef;
    use vipr::datapath::{KernelMaps, ServiceMaps};
    use vipr::plan::{MaglevTable, MapOp, maglev::digest};

    let pins = Pins(PathBuf::from(format!(
        "/sys/fs/bpf/vipr-pins-maglev-{}",
        std::process::id()
    )));
    let mut options = LoadOptions::new(&pins.0);
    options.sizes.maglev_tables = 4;
    options.sizes.maglev_table_size = 251;
    let ids: Vec<u32> = (0..251).map(|i| i % 7 + 1).collect();
    let table = MaglevTable {
        digest: digest(&ids),
        ids: ids.into(),
    };
    let entry = MaglevRef {
        first: 251,
        size: 251,
        digest: table.digest,
    };
    let index_after_load = |options: &LoadOptions| {
        let mut datapath = Datapath::load(options).expect("load (needs root)");
        let mut maps = KernelMaps::take(&mut datapath).unwrap();
        let index = maps.dump().unwrap().maglev;
        maps.apply(&MapOp::WriteMaglevTable(entry.first, table.clone()))
            .unwrap();
        maps.apply(&MapOp::UpsertMaglevRef(7, entry)).unwrap();
        index
    };
    assert!(index_after_load(&options).is_empty());
    // A restart with the same sizes keeps the tables and their index; the
    // index is read back with the digest of the table as the kernel holds it.
    assert_eq!(index_after_load(&options).get(&7), Some(&entry));
    // A position changed behind the agent's back shows in the digest, so
    // the next full sync writes the table again.
    {
        let mut pool: aya::maps::Array<_, u32> = aya::maps::Array::try_from(aya::maps::Map::Array(
            aya::maps::MapData::from_pin(pins.0.join("maps").join(proxy_common::MAGLEV)).unwrap(),
        ))
        .unwrap();
        pool.set(entry.first + 3, 99, 0).unwrap();
        let mut datapath = Datapath::load(&options).expect("load");
        let maps = KernelMaps::take(&mut datapath).unwrap();
        let held = maps.dump().unwrap().maglev[&7];
        let mut changed = table.ids.to_vec();
        changed[3] = 99;
        assert_eq!(held.digest, digest(&changed));
        assert_ne!(held.digest, entry.digest);
    }
    // Another table size: the old tables cannot serve; both maps start anew.
    options.sizes.maglev_table_size = 509;
    assert!(index_after_load(&options).is_empty());
    let pool =
        aya::maps::MapInfo::from_pin(pins.0.join("maps").join(proxy_common::MAGLEV)).unwrap();
    assert_eq!(pool.max_entries(), 4 * 509);
}
