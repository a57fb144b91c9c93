//! Where Services and EndpointSlices come from. Each source produces full
//! snapshots; the model never sees events.
pub mod manifests;
