//! distill: knowledge distillation on libtorch.
pub mod error;
pub mod export;
pub mod generate;
pub mod io;
pub mod models {
    //! Model architectures (temporary inline module until `models/mod.rs` is merged).
    pub mod llama;
}

pub use error::{Error, Result};
