//! How a SKU's stock and buyers spread over its shards.
//!
//! A user's home shard is `fnv1a64(user) mod shards`: the user's allowance, keys and holds
//! live there together, so the per-user limit is checked in the same atomic step as the
//! deduct. The hash is part of the data format: changing it would send users to shards
//! that do not know them.

use crate::ids::UserId;

/// Most shards a SKU may have.
pub const MAX_SHARDS: u16 = 1024;

/// The shard that serves `user`.
pub fn home_shard(user: &UserId, shards: u16) -> u16 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in user.as_str().bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % u64::from(shards.max(1))) as u16
}

/// Shards for a SKU of `stock` units when the operator does not say: one per 128 units,
/// between 1 and 16. More shards spread a hot SKU over more Redis Cluster slots but leave
/// fewer units per shard, so more stock moves near the end of a sale.
pub fn default_shards(stock: u64) -> u16 {
    stock.div_ceil(128).clamp(1, 16) as u16
}

/// `total` units split over `shards`: equal shares, the remainder to the first shards.
pub fn split(total: u64, shards: u16) -> Vec<u64> {
    let n = u64::from(shards.max(1));
    (0..n)
        .map(|i| total / n + u64::from(i < total % n))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_exact_and_even() {
        assert_eq!(split(10, 4), vec![3, 3, 2, 2]);
        assert_eq!(split(3, 8).iter().sum::<u64>(), 3);
        assert_eq!(split(0, 2), vec![0, 0]);
    }

    #[test]
    fn defaults_and_homes_stay_in_range() {
        assert_eq!(default_shards(1), 1);
        assert_eq!(default_shards(500), 4);
        assert_eq!(default_shards(1_000_000), 16);
        let mut seen = [0u32; 8];
        for i in 0..8000 {
            let user = UserId::new(format!("user-{i}")).unwrap();
            seen[home_shard(&user, 8) as usize] += 1;
        }
        assert!(seen.iter().all(|&n| n > 800), "{seen:?}");
    }
}
