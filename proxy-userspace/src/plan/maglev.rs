//! Maglev lookup tables (Eisenbud et al., "Maglev: A Fast and Reliable
//! Software Network Load Balancer", NSDI 2016, section 3.4). Pure.
//!
//! Every backend has a permutation of the table's positions, `offset +
//! j * skip (mod M)`, from two hashes of its name (address and port) under a
//! cluster-wide seed; the backends take turns claiming their next free
//! position until all M are taken. Names and seed are the same on every
//! node, and the turns go in (address, port) order, so every node builds the
//! same table whatever ids it gave the backends.
use std::net::IpAddr;

use xxhash_rust::xxh3::{xxh3_64, xxh3_128_with_seed};

/// How the agent builds its tables: the same on every node of a cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaglevParams {
    /// Positions per table (M): one of `proxy_common::MAGLEV_PRIMES`.
    pub size: u32,
    /// Seed of the permutation hashes (`--maglev-seed`).
    pub seed: u64,
}

impl Default for MaglevParams {
    fn default() -> Self {
        Self {
            size: proxy_common::DEFAULT_MAGLEV_TABLE_SIZE,
            seed: DEFAULT_SEED,
        }
    }
}

/// The seed when `--maglev-seed` is not given: any fixed value serves, as
/// long as every node has the same.
pub const DEFAULT_SEED: u64 = 0x7669_7072_6d61_676c;

/// Marks a position not claimed yet while the table fills.
const FREE: u32 = u32::MAX;

/// A backend's name as the permutation hashes read it: a family byte, the
/// address (IPv4 in the first four bytes) and the port, big-endian.
fn name_of(ip: IpAddr, port: u16) -> [u8; 19] {
    let mut name = [0u8; 19];
    match ip {
        IpAddr::V4(v4) => {
            name[0] = 4;
            name[1..5].copy_from_slice(&v4.octets());
        }
        IpAddr::V6(v6) => {
            name[0] = 6;
            name[1..17].copy_from_slice(&v6.octets());
        }
    }
    name[17..].copy_from_slice(&port.to_be_bytes());
    name
}

/// Where a backend's permutation starts and how it steps: `skip` in
/// `1..M`, coprime with the prime M, so the permutation visits every position.
fn permutation(ip: IpAddr, port: u16, params: MaglevParams) -> (u32, u32) {
    let h = xxh3_128_with_seed(&name_of(ip, port), params.seed);
    let (h1, h2) = (h as u64, (h >> 64) as u64);
    let m = u64::from(params.size);
    let offset = (h1 % m) as u32;
    let skip = (h2 % (m - 1) + 1) as u32;
    (offset, skip)
}

/// The table of `backends` (address, port, id): position → id. The order
/// of `backends` does not matter; an empty list gives an empty table.
/// Each backend gets `M / N` positions rounded down or up (every turn
/// claims exactly one), as long as there are at most M backends.
pub fn build(backends: &[(IpAddr, u16, u32)], params: MaglevParams) -> Vec<u32> {
    let m = params.size;
    if backends.is_empty() || m < 2 {
        return Vec::new();
    }
    let mut sorted: Vec<(IpAddr, u16, u32)> = backends.to_vec();
    sorted.sort_unstable_by_key(|&(ip, port, _)| (ip, port));
    let turns: Vec<(u32, u32)> = sorted
        .iter()
        .map(|&(ip, port, _)| permutation(ip, port, params))
        .collect();
    // How far along its permutation each backend is.
    let mut next = vec![0u32; sorted.len()];
    let mut table = vec![FREE; m as usize];
    let mut filled = 0u32;
    loop {
        for (i, &(offset, skip)) in turns.iter().enumerate() {
            let mut at = position(offset, skip, next[i], m);
            while table[at] != FREE {
                next[i] += 1;
                at = position(offset, skip, next[i], m);
            }
            table[at] = sorted[i].2;
            next[i] += 1;
            filled += 1;
            if filled == m {
                return table;
            }
        }
    }
}

/// The `j`-th position of a permutation, without overflow (M < 2^17).
fn position(offset: u32, skip: u32, j: u32, m: u32) -> usize {
    ((u64::from(offset) + u64::from(j) * u64::from(skip)) % u64::from(m)) as usize
}

/// A digest of a table's contents: tells the agent whether the table a
/// frontend's index entry points at is already the one it wants.
pub fn digest(table: &[u32]) -> u64 {
    xxh3_64(bytemuck::cast_slice(table))
}

/// The smallest listed prime of at least `100 × backends` positions (the
/// paper's rule for ~1% imbalance), or the largest listed.
pub fn size_for(backends: u32) -> u32 {
    let want = backends.saturating_mul(100);
    let primes = proxy_common::MAGLEV_PRIMES;
    primes
        .iter()
        .copied()
        .find(|&m| m >= want)
        .unwrap_or(primes[primes.len() - 1])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn backends(n: u32) -> Vec<(IpAddr, u16, u32)> {
        (0..n)
            .map(|i| {
                let ip = Ipv4Addr::new(10, 0, (i / 200) as u8, (i % 200) as u8 + 1);
                (IpAddr::V4(ip), 8080, 100 + i)
            })
            .collect()
    }

    fn params(size: u32) -> MaglevParams {
        MaglevParams { size, seed: 42 }
    }

    fn counts(table: &[u32]) -> std::collections::BTreeMap<u32, u32> {
        let mut counts = std::collections::BTreeMap::new();
        for &id in table {
            *counts.entry(id).or_insert(0) += 1;
        }
        counts
    }

    #[test]
    fn every_backend_gets_m_over_n_rounded_down_or_up() {
        for size in [251, 1021, 4093] {
            for n in [1, 2, 3, 7, 10, 33, 100, 250] {
                let table = build(&backends(n), params(size));
                assert_eq!(table.len(), size as usize);
                let counts = counts(&table);
                assert_eq!(
                    counts.len(),
                    n as usize,
                    "M={size} N={n}: every backend has a position"
                );
                let (low, high) = (size / n, size.div_ceil(n));
                for (id, count) in counts {
                    assert!(
                        (low..=high).contains(&count),
                        "M={size} N={n}: backend {id} has {count}, not {low}..={high}"
                    );
                }
            }
        }
    }

    /// Positions of backends that stay but move to another one: what a
    /// removal costs beyond the departed backend's own positions.
    fn moved_fraction(n: u32, size: u32, gone: usize) -> f64 {
        let all = backends(n);
        let before = build(&all, params(size));
        let mut rest = all.clone();
        let (_, _, gone_id) = rest.remove(gone);
        let after = build(&rest, params(size));
        let mut moved = 0;
        for (b, a) in before.iter().zip(&after) {
            if *b == gone_id {
                assert_ne!(a, b);
            } else if a != b {
                moved += 1;
            }
        }
        f64::from(moved) / f64::from(size)
    }

    #[test]
    fn a_removal_moves_the_departed_positions_and_few_others() {
        for (n, size) in [(10, 1021), (10, 251), (100, 16381), (3, 1021), (2, 251)] {
            let worst = (0..n as usize)
                .map(|gone| moved_fraction(n, size, gone))
                .fold(0.0, f64::max);
            println!(
                "N={n} M={size}: besides the departed 1/N = {:.2}%, at most {:.2}% of positions moved",
                100.0 / f64::from(n),
                worst * 100.0
            );
            // With M ≥ 100·N the extra moves stay below twice the departed
            // share (measured: 0.3/N at N=10, 1.6/N at N=100), where a
            // slot list indexed by `hash % N` moves about 1 - 1/N.
            if size >= 100 * n {
                assert!(worst < 2.0 / f64::from(n), "N={n} M={size}: {worst}");
            }
        }
    }

    #[test]
    fn order_and_ids_do_not_matter_addresses_do() {
        let list = backends(10);
        let table = build(&list, params(1021));
        let mut reversed = list.clone();
        reversed.reverse();
        assert_eq!(build(&reversed, params(1021)), table);
        // Other ids (another node): the same backend at every position.
        let renumbered: Vec<_> = list.iter().map(|&(ip, p, id)| (ip, p, id + 1000)).collect();
        let other = build(&renumbered, params(1021));
        assert!(table.iter().zip(&other).all(|(a, b)| a + 1000 == *b));
        // Another seed, another table.
        assert_ne!(
            build(
                &list,
                MaglevParams {
                    size: 1021,
                    seed: 43
                }
            ),
            table
        );
    }

    #[test]
    fn ipv6_backends_and_one_backend() {
        let v6: Vec<_> = (1..=4u16)
            .map(|i| {
                (
                    IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, i)),
                    80,
                    u32::from(i),
                )
            })
            .collect();
        let counts = counts(&build(&v6, params(251)));
        assert!(counts.values().all(|&c| c == 62 || c == 63), "{counts:?}");
        assert!(build(&backends(1), params(251)).iter().all(|&id| id == 100));
        assert!(build(&[], params(251)).is_empty());
    }

    #[test]
    fn sizes_cover_a_hundred_positions_per_backend() {
        assert_eq!(size_for(1), 251);
        assert_eq!(size_for(10), 1021);
        assert_eq!(size_for(11), 2039);
        assert_eq!(size_for(100_000), 65521);
    }
}
