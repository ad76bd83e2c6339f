//! distill: knowledge distillation on libtorch.
pub mod error;

pub use error::{Error, Result};
