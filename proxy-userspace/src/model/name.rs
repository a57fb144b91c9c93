//! Compact strings for what the model keeps per object and per endpoint:
//! at 100,000 Services × 10 endpoints, a `String` per field is most of the
//! agent's memory.

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

/// A name many objects share (namespace, node, zone, port name), interned:
/// each distinct value is held once and freed with its last user. The
/// handle is one pointer (a `String` is interned, not a `str`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(internment::ArcIntern<String>);

/// A name (nearly) unique to one object, shared by the model's copies.
pub type Unique = Arc<str>;

pub fn name(s: &str) -> Name {
    Name(internment::ArcIntern::from_ref(s))
}

impl Deref for Name {
    type Target = str;
    fn deref(&self) -> &str {
        self.0.as_str()
    }
}

impl From<&str> for Name {
    fn from(s: &str) -> Self {
        name(s)
    }
}

impl From<String> for Name {
    fn from(s: String) -> Self {
        Name(internment::ArcIntern::new(s))
    }
}

impl PartialEq<str> for Name {
    fn eq(&self, other: &str) -> bool {
        **self == *other
    }
}

impl PartialEq<&str> for Name {
    fn eq(&self, other: &&str) -> bool {
        **self == **other
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self)
    }
}
