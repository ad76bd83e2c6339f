//! distill: knowledge distillation on libtorch.
//!
//! The library computes; the `distill` binary parses arguments and prints. Start from
//! [`recipe::Recipe`] (what to run), [`train::fit`] (the one Trainer) and
//! [`losses`] (the objectives, each with its formula and paper).

pub mod bench;
pub mod bench_loss;
pub mod cache;
pub mod checkpoint;
pub mod data;
pub mod error;
pub mod eval;
pub mod experiments;
pub mod export;
pub mod fetch;
pub mod generate;
pub mod io;
pub mod lm;
pub mod lm_task;
pub mod losses;
pub mod models;
pub mod optim;
pub mod recipe;
pub mod train;

pub use error::{Error, Result};
