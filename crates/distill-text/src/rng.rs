//! Row order for packed text: a SplitMix64 ([`distill_base::rng`]) shuffle per epoch.

pub use distill_base::rng::{mix64, SplitMix64};

/// The permutation of `0..n` for `epoch` under `seed`: a SplitMix64 started at
/// `mix64(seed) ^ mix64(epoch + 1)` shuffles `0..n`.
pub fn permutation(n: usize, epoch: u64, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = SplitMix64::new(mix64(seed) ^ mix64(epoch.wrapping_add(1)));
    rng.shuffle(&mut order);
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_is_a_permutation() {
        let mut p = permutation(1000, 3, 42);
        p.sort_unstable();
        assert_eq!(p, (0..1000).collect::<Vec<_>>());
        assert_ne!(permutation(1000, 0, 42), permutation(1000, 1, 42));
        assert_eq!(permutation(1000, 1, 42), permutation(1000, 1, 42));
    }
}
