//! Which interfaces of this network namespace the programs belong on.
use std::collections::BTreeMap;

use globset::{Glob, GlobSet, GlobSetBuilder};

use super::DatapathError;

/// Interface names or globs (`veth*`), as given on the command line.
#[derive(Clone, Debug)]
pub struct InterfaceSelector {
    patterns: Vec<String>,
    set: GlobSet,
}

impl InterfaceSelector {
    pub fn new(list: &str) -> Result<Self, DatapathError> {
        let patterns: Vec<String> = list
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(String::from)
            .collect();
        let mut builder = GlobSetBuilder::new();
        for pattern in &patterns {
            let glob = Glob::new(pattern).map_err(|e| DatapathError::Interface {
                interface: pattern.clone(),
                message: format!("not a valid name or glob: {e}"),
            })?;
            builder.add(glob);
        }
        let set = builder.build().map_err(|e| DatapathError::Interface {
            interface: list.to_string(),
            message: e.to_string(),
        })?;
        Ok(Self { patterns, set })
    }

    pub fn matches(&self, name: &str) -> bool {
        self.set.is_match(name)
    }

    /// Patterns without glob characters name one interface each; the agent
    /// reports those that do not exist.
    pub fn exact_names(&self) -> impl Iterator<Item = &str> {
        self.patterns
            .iter()
            .filter(|p| !p.contains(['*', '?', '[', '{']))
            .map(String::as_str)
    }

    /// The matching interfaces present now: name → ifindex.
    pub fn present(&self) -> Result<BTreeMap<String, u32>, DatapathError> {
        Ok(all_interfaces()?
            .into_iter()
            .filter(|(name, _)| self.matches(name))
            .collect())
    }
}

/// The addresses of every interface in this network namespace, both
/// families; IPv6 link-local ones left out (no Service answers on those).
pub fn ip_addresses() -> Result<BTreeMap<String, Vec<std::net::IpAddr>>, DatapathError> {
    let addrs = nix::ifaddrs::getifaddrs().map_err(|e| DatapathError::Interface {
        interface: "*".into(),
        message: format!("listing addresses: {e}"),
    })?;
    let mut out: BTreeMap<String, Vec<std::net::IpAddr>> = BTreeMap::new();
    for a in addrs {
        let Some(address) = a.address.as_ref() else {
            continue;
        };
        let ip: std::net::IpAddr = if let Some(v4) = address.as_sockaddr_in() {
            v4.ip().into()
        } else if let Some(v6) = address.as_sockaddr_in6() {
            if v6.ip().is_unicast_link_local() {
                continue;
            }
            v6.ip().into()
        } else {
            continue;
        };
        out.entry(a.interface_name.clone()).or_default().push(ip);
    }
    Ok(out)
}

/// Every interface in this network namespace (name → ifindex).
pub fn all_interfaces() -> Result<BTreeMap<String, u32>, DatapathError> {
    let list = nix::net::if_::if_nameindex().map_err(|e| DatapathError::Interface {
        interface: "*".into(),
        message: format!("listing interfaces: {e}"),
    })?;
    Ok(list
        .iter()
        .map(|i| (i.name().to_string_lossy().into_owned(), i.index()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_and_exact_names() {
        let s = InterfaceSelector::new("veth*, eth1,vp?x").unwrap();
        assert!(s.matches("veth1234"));
        assert!(s.matches("eth1"));
        assert!(s.matches("vp1x"));
        assert!(!s.matches("eth0"));
        assert!(!s.matches("lo"));
        assert_eq!(s.exact_names().collect::<Vec<_>>(), vec!["eth1"]);
    }

    #[test]
    fn bad_glob_is_an_error_naming_it() {
        let err = InterfaceSelector::new("veth[").unwrap_err();
        assert!(err.to_string().contains("veth["), "{err}");
    }
}
