//! kube-proxy's TestCategorizeEndpoints (pkg/proxy/topology_test.go at
//! 6c039d9), every row under its own name, run through the whole model: a
//! Service and an EndpointSlice are converted and joined on node
//! `test-node`, then each frontend's endpoints for new connections are read.
//!
//! kube-proxy's outputs map onto frontends: its cluster endpoints are what
//! every non-`Local` frontend offers (`None` when there is no such frontend),
//! its local endpoints what every `Local` frontend offers, hasAnyEndpoints
//! is `has_endpoints_anywhere`, and allReachable is the union of the two.

mod harness;
mod hints;
mod incremental;

use self::Labels::{Empty, Nil, Zone};
use harness::{BOTH_NP, CLUSTER, ETP_NP, Ep, ITP, ITP_NP, Labels, Row, Svc, check, ep, row};

const A: &[&str] = &["zone-a"];
const B: &[&str] = &["zone-b"];
const C: &[&str] = &["zone-c"];
const FOUR_ZONED: &[Ep] = &[
    ep("10.1.2.3:80", true).zones(A),
    ep("10.1.2.4:80", true).zones(B),
    ep("10.1.2.5:80", true).zones(C),
    ep("10.1.2.6:80", true).zones(A),
];
const FOUR_ZONED_TWO_LOCAL: &[Ep] = &[
    ep("10.1.2.3:80", true).zones(A).local(),
    ep("10.1.2.4:80", true).zones(B).local(),
    ep("10.1.2.5:80", true).zones(C),
    ep("10.1.2.6:80", true).zones(A),
];
const ONE_LOCAL_ONE_REMOTE: &[Ep] = &[ep("10.0.0.0:80", true).local(), ep("10.0.0.1:80", true)];
const TWO_REMOTE: &[Ep] = &[ep("10.0.0.0:80", true), ep("10.0.0.1:80", true)];

const ROWS: &[Row] = &[
    row("should use topology since all endpoints have hints, node has a zone label and and there are endpoints for the node's zone", Zone("zone-a"), CLUSTER, FOUR_ZONED)
        .cluster(&["10.1.2.3:80", "10.1.2.6:80"]),
    row("externalTrafficPolicy: Local, topology ignored for Local endpoints", Zone("zone-a"), ETP_NP, FOUR_ZONED_TWO_LOCAL)
        .cluster(&["10.1.2.3:80", "10.1.2.6:80"])
        .local(&["10.1.2.3:80", "10.1.2.4:80"])
        .all(&["10.1.2.3:80", "10.1.2.4:80", "10.1.2.6:80"]),
    row("internalTrafficPolicy: Local, topology ignored for Local endpoints", Zone("zone-a"), ITP_NP, FOUR_ZONED_TWO_LOCAL)
        .cluster(&["10.1.2.3:80", "10.1.2.6:80"])
        .local(&["10.1.2.3:80", "10.1.2.4:80"])
        .all(&["10.1.2.3:80", "10.1.2.4:80", "10.1.2.6:80"]),
    row("empty node labels", Empty, CLUSTER, &[ep("10.1.2.3:80", true).zones(A)])
        .cluster(&["10.1.2.3:80"]),
    row("empty zone label", Zone(""), CLUSTER, &[ep("10.1.2.3:80", true).zones(A)])
        .cluster(&["10.1.2.3:80"]),
    row("node in different zone, no endpoint filtering", Zone("zone-b"), CLUSTER, &[ep("10.1.2.3:80", true).zones(A)])
        .cluster(&["10.1.2.3:80"]),
    row("unready endpoint", Zone("zone-a"), CLUSTER, &[
        ep("10.1.2.3:80", true).zones(A),
        ep("10.1.2.4:80", true).zones(B),
        ep("10.1.2.5:80", true).zones(C),
        ep("10.1.2.6:80", false).zones(A),
    ])
    .cluster(&["10.1.2.3:80"]),
    row("only unready endpoints in same zone (should not filter)", Zone("zone-a"), CLUSTER, &[
        ep("10.1.2.3:80", false).zones(A),
        ep("10.1.2.4:80", true).zones(B),
        ep("10.1.2.5:80", true).zones(C),
        ep("10.1.2.6:80", false).zones(A),
    ])
    .cluster(&["10.1.2.4:80", "10.1.2.5:80"]),
    row("missing hints, no filtering applied", Zone("zone-a"), CLUSTER, &[
        ep("10.1.2.3:80", true).zones(A),
        ep("10.1.2.4:80", true).zones(B),
        ep("10.1.2.5:80", true),
        ep("10.1.2.6:80", true).zones(A),
    ])
    .cluster(&["10.1.2.3:80", "10.1.2.4:80", "10.1.2.5:80", "10.1.2.6:80"]),
    row("multiple hints per endpoint, filtering includes any endpoint with zone included", Zone("zone-c"), CLUSTER, &[
        ep("10.1.2.3:80", true).zones(&["zone-a", "zone-b", "zone-c"]),
        ep("10.1.2.4:80", true).zones(&["zone-b", "zone-c"]),
        ep("10.1.2.5:80", true).zones(&["zone-b", "zone-d"]),
        ep("10.1.2.6:80", true).zones(C),
    ])
    .cluster(&["10.1.2.3:80", "10.1.2.4:80", "10.1.2.6:80"]),
    row("conflicting topology and localness require merging allEndpoints", Zone("zone-a"), ETP_NP, &[
        ep("10.0.0.0:80", true).zones(A).local(),
        ep("10.0.0.1:80", true).zones(B).local(),
        ep("10.0.0.2:80", true).zones(A),
        ep("10.0.0.3:80", true).zones(B),
    ])
    .cluster(&["10.0.0.0:80", "10.0.0.2:80"])
    .local(&["10.0.0.0:80", "10.0.0.1:80"])
    .all(&["10.0.0.0:80", "10.0.0.1:80", "10.0.0.2:80"]),
    row("internalTrafficPolicy: Local, with empty endpoints", Nil, ITP, &[]).local(&[]),
    row("internalTrafficPolicy: Local, but all endpoints are remote", Nil, ITP, TWO_REMOTE)
        .local(&[])
        .only_remote(),
    row("internalTrafficPolicy: Local, all endpoints are local", Nil, ITP, &[
        ep("10.0.0.0:80", true).local(),
        ep("10.0.0.1:80", true).local(),
    ])
    .local(&["10.0.0.0:80", "10.0.0.1:80"]),
    row("internalTrafficPolicy: Local, some endpoints are local", Nil, ITP, ONE_LOCAL_ONE_REMOTE)
        .local(&["10.0.0.0:80"]),
    row("Cluster traffic policy, endpoints not Ready", Nil, CLUSTER, &[ep("10.0.0.0:80", false), ep("10.0.0.1:80", false)])
        .cluster(&[]),
    row("Cluster traffic policy, some endpoints are Ready", Nil, CLUSTER, &[ep("10.0.0.0:80", false), ep("10.0.0.1:80", true)])
        .cluster(&["10.0.0.1:80"]),
    row("Cluster traffic policy, all endpoints are terminating", Nil, CLUSTER, &[
        ep("10.0.0.0:80", false).terminating(true).local(),
        ep("10.0.0.1:80", false).terminating(true),
    ])
    .cluster(&["10.0.0.0:80", "10.0.0.1:80"]),
    row("iTP: Local, eTP: Cluster, some endpoints local", Nil, ITP_NP, ONE_LOCAL_ONE_REMOTE)
        .cluster(&["10.0.0.0:80", "10.0.0.1:80"])
        .local(&["10.0.0.0:80"])
        .all(&["10.0.0.0:80", "10.0.0.1:80"]),
    row("iTP: Cluster, eTP: Local, some endpoints local", Nil, ETP_NP, ONE_LOCAL_ONE_REMOTE)
        .cluster(&["10.0.0.0:80", "10.0.0.1:80"])
        .local(&["10.0.0.0:80"])
        .all(&["10.0.0.0:80", "10.0.0.1:80"]),
    row("iTP: Local, eTP: Local, some endpoints local", Nil, BOTH_NP, ONE_LOCAL_ONE_REMOTE)
        .cluster(&["10.0.0.0:80", "10.0.0.1:80"])
        .local(&["10.0.0.0:80"])
        .all(&["10.0.0.0:80", "10.0.0.1:80"]),
    row("iTP: Local, eTP: Local, all endpoints remote", Nil, BOTH_NP, TWO_REMOTE)
        .cluster(&["10.0.0.0:80", "10.0.0.1:80"])
        .local(&[])
        .all(&["10.0.0.0:80", "10.0.0.1:80"]),
    row("iTP: Local, eTP: Local, all endpoints remote and terminating", Nil, BOTH_NP, &[
        ep("10.0.0.0:80", false).terminating(true),
        ep("10.0.0.1:80", false).terminating(true),
    ])
    .cluster(&["10.0.0.0:80", "10.0.0.1:80"])
    .local(&[])
    .all(&["10.0.0.0:80", "10.0.0.1:80"])
    .only_remote(),
    row("iTP: Cluster, eTP: Local, with terminating endpoints", Nil, ETP_NP, &[
        ep("10.0.0.0:80", true),
        ep("10.0.0.1:80", false).not_serving().local(),
        ep("10.0.0.2:80", false).terminating(true).local(),
        ep("10.0.0.3:80", false).terminating(true),
    ])
    .cluster(&["10.0.0.0:80"])
    .local(&["10.0.0.2:80"])
    .all(&["10.0.0.0:80", "10.0.0.2:80"]),
    row("externalTrafficPolicy ignored if not externally accessible", Nil, Svc { etp_local: true, ..CLUSTER }, &[
        ep("10.0.0.0:80", true),
        ep("10.0.0.1:80", true).local(),
    ])
    .cluster(&["10.0.0.0:80", "10.0.0.1:80"])
    .all(&["10.0.0.0:80", "10.0.0.1:80"]),
    row("no cluster endpoints for iTP:Local internal-only service", Nil, ITP, &[
        ep("10.0.0.0:80", true),
        ep("10.0.0.1:80", true).local(),
    ])
    .local(&["10.0.0.1:80"])
    .all(&["10.0.0.1:80"]),
];

#[test]
fn categorize_endpoints_rows() {
    assert_eq!(ROWS.len(), 26, "every row of TestCategorizeEndpoints");
    for row in ROWS {
        check(row);
    }
}
