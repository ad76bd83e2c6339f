//! Distillation losses, one family per file. Each documents its formula, its reduction and the
//! paper it comes from, and is tested against PyTorch reference values
//! (`tests/fixtures/losses/make_fixtures.py`).

pub mod response;

pub use response::{KdLoss, KdParts};
