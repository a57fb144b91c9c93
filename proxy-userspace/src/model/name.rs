//! Compact strings for what the model keeps per object and per endpoint:
//! at 100,000 Services × 10 endpoints, a `String` per field is most of the
//! agent's memory.

use std::sync::Arc;

/// A name many objects share (namespace, node, zone, port name), interned:
/// each distinct value is held once and freed with its last user.
pub type Name = internment::ArcIntern<str>;

/// A name (nearly) unique to one object, shared by the model's copies.
pub type Unique = Arc<str>;

pub fn name(s: &str) -> Name {
    Name::from(s)
}
