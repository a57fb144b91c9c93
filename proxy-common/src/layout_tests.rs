//! The kernel side reads these structs by offset; a change here is a change of ABI.
use crate::*;
use core::mem::{offset_of, size_of};
use core::net::Ipv4Addr;

#[test]
fn service_key_layout() {
    assert_eq!(size_of::<ServiceKey>(), 8);
    assert_eq!(offset_of!(ServiceKey, addr), 0);
    assert_eq!(offset_of!(ServiceKey, port), 4);
    assert_eq!(offset_of!(ServiceKey, proto), 6);
    assert_eq!(offset_of!(ServiceKey, scope), 7);
    assert_eq!(size_of::<ServiceValue>(), 8);
    assert_eq!(offset_of!(ServiceValue, backend_count), 4);
}

#[test]
fn slot_backend_layout() {
    assert_eq!(size_of::<SlotKey>(), 8);
    assert_eq!(offset_of!(SlotKey, slot), 4);
    assert_eq!(size_of::<BackendValue>(), 8);
    assert_eq!(offset_of!(BackendValue, port), 4);
    assert_eq!(offset_of!(BackendValue, proto), 6);
    assert_eq!(offset_of!(BackendValue, flags), 7);
}

#[test]
fn conntrack_layout() {
    assert_eq!(size_of::<CtKey>(), 16);
    assert_eq!(offset_of!(CtKey, dst_addr), 4);
    assert_eq!(offset_of!(CtKey, src_port), 8);
    assert_eq!(offset_of!(CtKey, dst_port), 10);
    assert_eq!(offset_of!(CtKey, proto), 12);
    assert_eq!(offset_of!(CtKey, direction), 13);
    assert_eq!(size_of::<CtValue>(), 24);
    assert_eq!(offset_of!(CtValue, snat_addr), 8);
    assert_eq!(offset_of!(CtValue, nat_port), 12);
    assert_eq!(offset_of!(CtValue, snat_port), 14);
    assert_eq!(offset_of!(CtValue, flags), 16);
    assert_eq!(offset_of!(CtValue, last_seen), 20);
    assert_eq!(size_of::<SourceRangeKey>(), 8);
}

#[test]
fn fields_hold_wire_byte_order() {
    let key = ServiceKey::new(Ipv4Addr::new(10, 96, 0, 1), 8080, IPPROTO_TCP);
    // The bytes in memory are the bytes on the wire.
    assert_eq!(key.addr.to_ne_bytes(), [10, 96, 0, 1]);
    assert_eq!(key.port.to_ne_bytes(), [0x1f, 0x90]);
    assert_eq!(key.ip(), Ipv4Addr::new(10, 96, 0, 1));
    assert_eq!(key.port(), 8080);
}

#[test]
fn counter_names_are_unique_and_indexed_in_order() {
    for (i, c) in Counter::ALL.iter().enumerate() {
        assert_eq!(*c as u32, i as u32);
        for other in &Counter::ALL[i + 1..] {
            assert_ne!(c.name(), other.name());
        }
    }
    assert!(Counter::DropTruncated.is_drop());
    assert!(!Counter::DnatNew.is_drop());
}

#[test]
fn a_counter_is_a_drop_exactly_when_its_name_says_so() {
    for c in Counter::ALL {
        assert_eq!(c.is_drop(), c.name().starts_with("drop_"), "{}", c.name());
    }
}

#[test]
fn socket_revnat_layout() {
    assert_eq!(size_of::<SockRevKey>(), 16);
    assert_eq!(offset_of!(SockRevKey, addr), 8);
    assert_eq!(offset_of!(SockRevKey, port), 12);
    assert_eq!(size_of::<SockRevValue>(), 12);
    assert_eq!(offset_of!(SockRevValue, port), 4);
    assert_eq!(offset_of!(SockRevValue, proto), 6);
    assert_eq!(offset_of!(SockRevValue, service_id), 8);
}

#[test]
fn socket_revnat6_layout() {
    assert_eq!(size_of::<SockRev6Key>(), 32);
    assert_eq!(offset_of!(SockRev6Key, addr), 8);
    assert_eq!(offset_of!(SockRev6Key, port), 24);
    assert_eq!(offset_of!(SockRev6Key, _pad), 26);
    assert_eq!(size_of::<SockRev6Value>(), 24);
    assert_eq!(offset_of!(SockRev6Value, port), 16);
    assert_eq!(offset_of!(SockRev6Value, proto), 18);
    assert_eq!(offset_of!(SockRev6Value, service_id), 20);
}

#[test]
fn affinity_layout() {
    assert_eq!(size_of::<AffinityKey>(), 8);
    assert_eq!(offset_of!(AffinityKey, client_addr), 4);
    assert_eq!(size_of::<AffinityValue>(), 8);
    assert_eq!(offset_of!(AffinityValue, last_used_s), 4);
    assert_eq!(size_of::<AffinityMember>(), 8);
    assert_eq!(offset_of!(AffinityMember, backend_id), 4);
}

#[test]
fn partners_lead_back_to_each_other() {
    use crate::{CT_FLAG_SNAT, CT_FORWARD, CT_REVERSE, CtKey, CtValue};
    let forward = CtKey {
        src_addr: 1,
        dst_addr: 2,
        src_port: 3,
        dst_port: 4,
        proto: 6,
        direction: CT_FORWARD,
        _pad: [0; 2],
    };
    let to_backend = CtValue {
        nat_addr: 9,
        nat_port: 10,
        ..CtValue::default()
    };
    let reverse = forward.partner(&to_backend);
    assert_eq!((reverse.src_addr, reverse.src_port), (9, 10));
    assert_eq!((reverse.dst_addr, reverse.dst_port), (1, 3));
    assert_eq!(reverse.direction, CT_REVERSE);
    let back_to_frontend = CtValue {
        nat_addr: 2,
        nat_port: 4,
        ..CtValue::default()
    };
    assert_eq!(reverse.partner(&back_to_frontend), forward);

    let masqueraded = CtValue {
        snat_addr: 7,
        snat_port: 8,
        flags: CT_FLAG_SNAT,
        ..to_backend
    };
    let reverse = forward.partner(&masqueraded);
    assert_eq!((reverse.dst_addr, reverse.dst_port), (7, 8));
    let restore = CtValue {
        nat_addr: 2,
        nat_port: 4,
        snat_addr: 1,
        snat_port: 3,
        flags: CT_FLAG_SNAT,
        ..CtValue::default()
    };
    assert_eq!(reverse.partner(&restore), forward);
}

#[test]
fn trace_record_layout() {
    assert_eq!(size_of::<TraceRecord>(), 44);
    assert_eq!(offset_of!(TraceRecord, frontend), 4);
    assert_eq!(offset_of!(TraceRecord, hash), 12);
    assert_eq!(offset_of!(TraceRecord, backend_id), 20);
    assert_eq!(offset_of!(TraceRecord, frontend6), 24);
}

#[test]
fn ipv6_layouts() {
    assert_eq!(size_of::<Service6Key>(), 20);
    assert_eq!(offset_of!(Service6Key, port), 16);
    assert_eq!(offset_of!(Service6Key, proto), 18);
    assert_eq!(offset_of!(Service6Key, scope), 19);
    assert_eq!(size_of::<Backend6Value>(), 20);
    assert_eq!(offset_of!(Backend6Value, port), 16);
    assert_eq!(offset_of!(Backend6Value, proto), 18);
    assert_eq!(offset_of!(Backend6Value, flags), 19);
    assert_eq!(size_of::<Ct6Key>(), 40);
    assert_eq!(offset_of!(Ct6Key, dst_addr), 16);
    assert_eq!(offset_of!(Ct6Key, src_port), 32);
    assert_eq!(offset_of!(Ct6Key, dst_port), 34);
    assert_eq!(offset_of!(Ct6Key, proto), 36);
    assert_eq!(offset_of!(Ct6Key, direction), 37);
    assert_eq!(size_of::<Ct6Value>(), 48);
    assert_eq!(offset_of!(Ct6Value, nat_addr), 4);
    assert_eq!(offset_of!(Ct6Value, snat_addr), 20);
    assert_eq!(offset_of!(Ct6Value, nat_port), 36);
    assert_eq!(offset_of!(Ct6Value, snat_port), 38);
    assert_eq!(offset_of!(Ct6Value, flags), 40);
    assert_eq!(offset_of!(Ct6Value, last_seen), 44);
}

#[test]
fn ipv6_fields_hold_wire_byte_order() {
    let ip: core::net::Ipv6Addr = "fd00:96::a".parse().unwrap();
    let key = Service6Key::new(ip, 443, IPPROTO_TCP);
    assert_eq!(key.addr[0].to_ne_bytes(), [0xfd, 0x00, 0x00, 0x96]);
    assert_eq!(key.addr[3].to_ne_bytes(), [0, 0, 0, 0x0a]);
    assert_eq!(key.ip(), ip);
    assert_eq!(key.port(), 443);
    assert_eq!(Backend6Value::new(ip, 8443, IPPROTO_TCP).ip(), ip);
}

#[test]
fn ipv6_partners_lead_back_to_each_other() {
    let forward = Ct6Key {
        src_addr: [1, 1, 1, 1],
        dst_addr: [2, 2, 2, 2],
        src_port: 3,
        dst_port: 4,
        proto: IPPROTO_UDP,
        direction: CT_FORWARD,
        _pad: [0; 2],
    };
    let to_backend = Ct6Value {
        nat_addr: [9, 9, 9, 9],
        nat_port: 10,
        ..Ct6Value::default()
    };
    let reverse = forward.partner(&to_backend);
    assert_eq!((reverse.src_addr, reverse.src_port), ([9, 9, 9, 9], 10));
    assert_eq!((reverse.dst_addr, reverse.dst_port), ([1, 1, 1, 1], 3));
    assert_eq!(reverse.direction, CT_REVERSE);
    let back_to_frontend = Ct6Value {
        nat_addr: [2, 2, 2, 2],
        nat_port: 4,
        ..Ct6Value::default()
    };
    assert_eq!(reverse.partner(&back_to_frontend), forward);
}

#[test]
fn ipv6_policy_layouts() {
    assert_eq!(size_of::<SourceRange6Key>(), 20);
    assert_eq!(offset_of!(SourceRange6Key, addr), 4);
    assert_eq!(size_of::<Affinity6Key>(), 20);
    assert_eq!(offset_of!(Affinity6Key, client_addr), 4);
    let ip: core::net::Ipv6Addr = "2001:db8::1".parse().unwrap();
    let key = Affinity6Key {
        service_id: 1 << 31,
        client_addr: wire_addr6(ip),
    };
    assert_eq!(key.client_addr[0].to_ne_bytes(), [0x20, 0x01, 0x0d, 0xb8]);
}

#[test]
fn maglev_layout() {
    assert_eq!(size_of::<MaglevRef>(), 16);
    assert_eq!(offset_of!(MaglevRef, size), 4);
    assert_eq!(offset_of!(MaglevRef, digest), 8);
}

#[test]
fn maglev_sizes_are_prime_and_the_default_is_one() {
    let prime = |n: u32| {
        n > 1
            && (2..)
                .take_while(|d| d * d <= n)
                .all(|d| !n.is_multiple_of(d))
    };
    assert!(MAGLEV_PRIMES.iter().all(|&m| prime(m)), "{MAGLEV_PRIMES:?}");
    assert!(MAGLEV_PRIMES.contains(&DEFAULT_MAGLEV_TABLE_SIZE));
    assert!(MAGLEV_PRIMES.windows(2).all(|w| w[0] < w[1]));
}
