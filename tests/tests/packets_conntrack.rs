//! Conntrack lifecycle through the real programs (BPF_PROG_TEST_RUN): the
//! notes packets leave on entries (when, replied, FIN, RST), the agent's
//! timeout rules applied to them, and a full table.
use std::net::Ipv4Addr;

use proxy_common::{
    CT_FLAG_FIN, CT_FLAG_REPLIED, CT_FLAG_RST, CT_FORWARD, CtKey, CtValue, IPPROTO_TCP,
    programs::{FROM_POD, TO_POD},
};
use vipr::conntrack::{CtTimeouts, expired};
use vipr::datapath::conntrack_clock;
use vipr_tests::packet::*;

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 100);
const POD_A: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 11);

fn from_client(port: u16) -> Tuple {
    Tuple {
        src: (CLIENT, port),
        dst: (VIP, 80),
    }
}

fn from_backend(port: u16) -> Tuple {
    Tuple {
        src: (POD_A, 8080),
        dst: (CLIENT, port),
    }
}

fn harness(conntrack_entries: Option<u32>) -> Harness {
    let mut h = Harness::with_options(|o| {
        if let Some(n) = conntrack_entries {
            o.sizes.conntrack = n;
        }
    })
    .expect("load programs (needs root)");
    h.add_service(1, (VIP, 80), IPPROTO_TCP, &[(1, POD_A, 8080)])
        .unwrap();
    h
}

fn forward_key(port: u16) -> CtKey {
    let t = from_client(port);
    CtKey {
        src_addr: u32::from_ne_bytes(t.src.0.octets()),
        dst_addr: u32::from_ne_bytes(t.dst.0.octets()),
        src_port: t.src.1.to_be(),
        dst_port: t.dst.1.to_be(),
        proto: IPPROTO_TCP,
        direction: CT_FORWARD,
        _pad: [0; 2],
    }
}

fn forward(h: &Harness, port: u16) -> CtValue {
    h.conntrack
        .get(&forward_key(port), 0)
        .expect("forward entry")
}

fn reverse(h: &Harness, port: u16) -> CtValue {
    let key = forward_key(port).partner(&forward(h, port));
    h.conntrack.get(&key, 0).expect("reverse entry")
}

fn open(h: &mut Harness, port: u16) {
    let run = h
        .run(FROM_POD, &tcp(from_client(port), 1, true, false, b""))
        .unwrap();
    assert_eq!(run.counted, [("dnat_new", 1)], "SYN from port {port}");
}

fn reply(h: &mut Harness, port: u16) {
    let run = h
        .run(TO_POD, &tcp(from_backend(port), 1, true, true, b""))
        .unwrap();
    assert_eq!(run.counted, [("rev_nat", 1)], "reply to port {port}");
}

fn snapshot(h: &Harness) -> std::collections::HashMap<CtKey, CtValue> {
    h.conntrack.iter().map(|e| e.unwrap()).collect()
}

#[test]
fn packets_note_replies_and_closes_and_the_timeouts_read_them() {
    let mut h = harness(None);
    let before = conntrack_clock().unwrap();
    // 1000: established; 1001: closed by FINs both ways; 1002: reset; 1003: unanswered.
    for port in 1000..=1003 {
        open(&mut h, port);
    }
    let first = forward(&h, 1000);
    assert!(first.last_seen >= before && first.last_seen <= before + 1);
    assert_eq!(reverse(&h, 1000).flags, 0, "no reply yet");
    for port in 1000..=1002 {
        reply(&mut h, port);
    }
    assert_eq!(reverse(&h, 1000).flags & CT_FLAG_REPLIED, CT_FLAG_REPLIED);

    h.run(FROM_POD, &tcp_closing(from_client(1001), 2, false))
        .unwrap();
    assert_eq!(forward(&h, 1001).flags & CT_FLAG_FIN, CT_FLAG_FIN);
    h.run(TO_POD, &tcp_closing(from_backend(1001), 2, false))
        .unwrap();
    assert_ne!(reverse(&h, 1001).flags & CT_FLAG_FIN, 0);
    let run = h
        .run(TO_POD, &tcp_closing(from_backend(1002), 2, true))
        .unwrap();
    assert_eq!(run.counted, [("rev_nat", 1)], "a RST is still translated");
    assert_ne!(reverse(&h, 1002).flags & CT_FLAG_RST, 0);

    // The agent's rules on the kernel's notes, 15 s later: the closed and
    // reset flows go, the established and the unanswered (60 s) stay.
    let table = snapshot(&h);
    let now = conntrack_clock().unwrap() + 15;
    let mut gone: Vec<u16> = expired(&table, now, &CtTimeouts::default())
        .iter()
        .map(|e| {
            assert!(e.partner.is_some(), "both directions go together");
            u16::from_be(e.key.src_port)
        })
        .collect();
    gone.sort();
    assert_eq!(gone, [1001, 1002]);
    let later = expired(&table, now + 60, &CtTimeouts::default());
    assert_eq!(later.len(), 3, "the unanswered SYN goes after a minute");
}

#[test]
fn a_full_table_drops_new_flows_counted_and_keeps_the_old() {
    // Four flows' worth of entries.
    let mut h = harness(Some(8));
    for port in 2000..2004 {
        open(&mut h, port);
    }
    let refused = h
        .run(FROM_POD, &tcp(from_client(2004), 1, true, false, b""))
        .unwrap();
    assert_eq!(refused.verdict, TC_ACT_SHOT);
    assert_eq!(refused.counted, [("drop_conntrack_full", 1)]);
    assert_eq!(snapshot(&h).len(), 8, "no half-recorded flow left behind");

    // A pod reaching itself is masqueraded: that path reports a full table too.
    let hairpin = Tuple {
        src: (POD_A, 3000),
        dst: (VIP, 80),
    };
    let run = h.run(FROM_POD, &tcp(hairpin, 1, true, false, b"")).unwrap();
    assert_eq!(run.counted, [("drop_conntrack_full", 1)]);

    for port in 2000..2004 {
        let run = h
            .run(FROM_POD, &tcp(from_client(port), 2, false, true, b"x"))
            .unwrap();
        assert_eq!(run.counted, [("dnat_established", 1)], "flow {port} kept");
        reply(&mut h, port);
    }
}

#[test]
fn a_flow_that_would_reach_the_backend_as_another_is_dropped_counted() {
    // Two frontends, one backend: the same client port to both would be
    // one connection to the backend.
    let mut h = harness(None);
    let other_vip = Ipv4Addr::new(10, 96, 0, 11);
    h.add_service(2, (other_vip, 80), IPPROTO_TCP, &[(1, POD_A, 8080)])
        .unwrap();
    open(&mut h, 4000);
    let second = Tuple {
        src: (CLIENT, 4000),
        dst: (other_vip, 80),
    };
    let run = h.run(FROM_POD, &tcp(second, 1, true, false, b"")).unwrap();
    assert_eq!(run.verdict, TC_ACT_SHOT);
    assert_eq!(run.counted, [("drop_conntrack_collision", 1)]);
    // The first flow's replies still come from its own frontend.
    let run = h
        .run(TO_POD, &tcp(from_backend(4000), 1, true, true, b""))
        .unwrap();
    assert_eq!(run.counted, [("rev_nat", 1)]);
    let source = &run.output[26..30];
    assert_eq!(source, VIP.octets(), "restored to the first frontend");
    assert_eq!(snapshot(&h).len(), 2, "nothing of the second flow stays");
}
