//! Data: image sets, packed text batches, deterministic order and augmentation.

pub mod images;
pub mod text;

/// The one seeded generator (SplitMix64) behind data order, augmentation, tail samples and
/// generation; it lives in `distill-base` so that every crate draws the same numbers.
pub use distill_base::rng;
