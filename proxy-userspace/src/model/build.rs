//! Joins valid Services and EndpointSlices into frontends with backends.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::net::IpAddr;

use super::{
    Backend, Frontend, Model, ModelOptions, NodeModel, ServiceModel, ServicePortModel, SkipReason,
    Skipped, SliceModel, frontends::frontends_of, topology,
};

/// Builds the model from already validated objects, for this `node` (its
/// zone steers topology hints). Pure and independent of input order:
/// services and slices are visited sorted by namespace/name.
pub fn build_model<'a>(
    services: impl IntoIterator<Item = &'a ServiceModel>,
    slices: impl IntoIterator<Item = &'a SliceModel>,
    opts: &ModelOptions,
    node: Option<&NodeModel>,
) -> Model {
    let mut model = Model {
        node: node.cloned(),
        ..Model::default()
    };
    let zone = node.and_then(|n| n.zone.as_deref());
    let mut services: Vec<&ServiceModel> = services.into_iter().collect();
    services.sort_by(|a, b| a.object.cmp(&b.object));

    // (namespace, service name) → its slices, sorted by slice name.
    let mut by_service: BTreeMap<(&str, &str), Vec<&SliceModel>> = BTreeMap::new();
    for slice in slices {
        model
            .skipped
            .extend(slice.skipped.iter().map(|reason| Skipped {
                object: slice.object.clone(),
                reason: reason.clone(),
            }));
        if let Some(service) = &slice.service {
            by_service
                .entry((&slice.object.namespace, service))
                .or_default()
                .push(slice);
        }
    }
    for slices in by_service.values_mut() {
        slices.sort_by(|a, b| a.object.cmp(&b.object));
    }

    for svc in services {
        model
            .skipped
            .extend(svc.skipped.iter().map(|reason| Skipped {
                object: svc.object.clone(),
                reason: reason.clone(),
            }));
        let slices = by_service
            .get(&(&*svc.object.namespace, &*svc.object.name))
            .map(Vec::as_slice)
            .unwrap_or_default();
        // Same order as the incremental index: own reasons, topology notes, conflicts.
        let (frontends, notes) = service_frontends(svc, slices, opts, zone);
        model
            .skipped
            .extend(notes.into_iter().map(|reason| Skipped {
                object: svc.object.clone(),
                reason,
            }));
        for frontend in frontends {
            match model.frontends.entry(frontend.key) {
                // The Service's own earlier frontend (an external IP equal to
                // its cluster IP): the first stands, no conflict, as in the index.
                Entry::Occupied(owner) if owner.get().service == svc.object => {}
                // Only reachable with hand-written manifests: the API server
                // never hands out a cluster IP twice.
                Entry::Occupied(owner) => model.skipped.push(Skipped {
                    object: svc.object.clone(),
                    reason: SkipReason::FrontendConflict {
                        key: frontend.key,
                        owner: owner.get().service.clone(),
                    },
                }),
                Entry::Vacant(slot) => {
                    slot.insert(frontend);
                }
            }
        }
    }
    model.skipped.sort_by(|a, b| a.object.cmp(&b.object));
    model
}

/// One Service's frontends, port by port, with notes on topology hints that
/// do not apply on this node (`zone` is this node's).
pub(super) fn service_frontends(
    svc: &ServiceModel,
    slices: &[&SliceModel],
    opts: &ModelOptions,
    zone: Option<&str>,
) -> (Vec<Frontend>, Vec<SkipReason>) {
    let mut frontends = Vec::new();
    let mut notes = Vec::new();
    for port in &svc.ports {
        let backends = backends_for(port, slices);
        let (topology, note) =
            topology::for_port(svc, port, &backends, opts.node_name.as_deref(), zone);
        notes.extend(note);
        frontends.extend(frontends_of(
            &svc.object,
            svc,
            port,
            &backends,
            &topology,
            opts,
        ));
    }
    (frontends, notes)
}

/// Every endpoint serving `port`: the slice port with the same name and
/// protocol gives the target port (this is how named targetPorts resolve).
/// Duplicates (same ip and port, e.g. while slices are rebalanced) keep the
/// best condition: ready, then serving-terminating, then the first slice's.
pub(super) fn backends_for(port: &ServicePortModel, slices: &[&SliceModel]) -> Vec<Backend> {
    let mut out: BTreeMap<(IpAddr, u16), Backend> = BTreeMap::new();
    for slice in slices {
        let Some(sp) = slice
            .ports
            .iter()
            .find(|p| p.name == port.name && p.protocol == port.protocol)
        else {
            continue;
        };
        for ep in &slice.endpoints {
            let backend = Backend {
                endpoint: ep.clone(),
                port: sp.port,
                local: false,
            };
            match out.entry((ep.ip, sp.port)) {
                Entry::Vacant(v) => {
                    v.insert(backend);
                }
                Entry::Occupied(mut o) => {
                    if backend.conditions.rank() > o.get().conditions.rank() {
                        o.insert(backend);
                    }
                }
            }
        }
    }
    out.into_values().collect()
}
