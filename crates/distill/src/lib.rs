//! distill: knowledge distillation on libtorch.
pub mod error;
pub mod io;

pub use error::{Error, Result};
