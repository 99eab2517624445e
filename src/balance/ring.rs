//! Consistent hashing for `balance = "hash"` (cart affinity).
//!
//! Built on the control path when a snapshot is built; read-only on the data
//! path. Each backend owns `VNODES_PER_WEIGHT x weight` points on a 64-bit
//! ring placed by hashing its *address*, so adding or removing one backend
//! moves only the keys that land on its points (about 1/N of them).

use std::net::SocketAddr;

/// Points per unit of weight: enough to keep shares within a few percent.
const VNODES_PER_WEIGHT: u32 = 100;
/// Upper bound on ring size, so a 1024-backend pool stays a few MiB.
const MAX_POINTS: usize = 1 << 18;

/// 64-bit FNV-1a followed by a murmur3 finaliser: stable across processes
/// and versions (placement must not change on restart), well mixed.
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// A consistent-hash ring over a pool's backends (weighted points).
#[derive(Debug, Clone, Default)]
pub struct Ring {
    /// (point, index into the pool's backend list), sorted by point.
    points: Vec<(u64, u32)>,
}

impl Ring {
    pub(crate) fn new(members: &[(SocketAddr, u32)]) -> Ring {
        let wanted: usize = members.iter().map(|(_, w)| (*w * VNODES_PER_WEIGHT) as usize).sum();
        let scale = if wanted > MAX_POINTS {
            MAX_POINTS as f64 / wanted as f64
        } else {
            1.0
        };
        let mut points = Vec::with_capacity(wanted.min(MAX_POINTS));
        let mut label = String::with_capacity(64);
        for (idx, (addr, weight)) in members.iter().enumerate() {
            let n = ((f64::from(*weight * VNODES_PER_WEIGHT) * scale) as u32).max(1);
            for v in 0..n {
                use std::fmt::Write;
                label.clear();
                let _ = write!(label, "{addr}#{v}");
                points.push((hash_bytes(label.as_bytes()), idx as u32));
            }
        }
        points.sort_unstable();
        Ring { points }
    }

    /// Backend indices in ring order starting at the key's position. The
    /// first is the key's owner; the rest are its fallbacks in a stable
    /// order (used when the owner is full or down). May repeat indices.
    pub(crate) fn walk(&self, key: u64) -> impl Iterator<Item = usize> + '_ {
        let start = self.points.partition_point(|(p, _)| *p < key);
        let n = self.points.len();
        (0..n).map(move |i| self.points[(start + i) % n].1 as usize)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.points.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(n: u16) -> Vec<(SocketAddr, u32)> {
        (0..n)
            .map(|i| (SocketAddr::from(([127, 0, 0, 1], 9000 + i)), 1))
            .collect()
    }

    fn owner(ring: &Ring, members: &[(SocketAddr, u32)], key: u64) -> SocketAddr {
        members[ring.walk(key).next().unwrap()].0
    }

    #[test]
    fn removing_one_backend_moves_only_its_keys() {
        let all = members(10);
        let fewer: Vec<_> = all.iter().copied().filter(|(a, _)| a.port() != 9003).collect();
        let (a, b) = (Ring::new(&all), Ring::new(&fewer));
        let mut moved = 0;
        for k in 0..10_000u64 {
            let key = hash_bytes(&k.to_le_bytes());
            let before = owner(&a, &all, key);
            let after = owner(&b, &fewer, key);
            if before != after {
                assert_eq!(before.port(), 9003, "a key moved off a backend that stayed");
                moved += 1;
            }
        }
        // About a tenth of the keys lived on the removed backend.
        assert!((600..1400).contains(&moved), "{moved}");
    }

    #[test]
    fn shares_follow_weights() {
        let mut m = members(2);
        m[1].1 = 3;
        let ring = Ring::new(&m);
        let mut counts = [0u32; 2];
        for k in 0..20_000u64 {
            counts[ring.walk(hash_bytes(&k.to_le_bytes())).next().unwrap()] += 1;
        }
        let share = f64::from(counts[1]) / 20_000.0;
        assert!((0.68..0.82).contains(&share), "{share}");
    }
}
