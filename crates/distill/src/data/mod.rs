//! Data: image sets, deterministic order and augmentation.

pub mod images;
pub mod rng;
