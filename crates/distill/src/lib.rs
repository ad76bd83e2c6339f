//! distill: knowledge distillation on libtorch.
//!
//! The library computes; the `distill` binary parses arguments and prints. Start from
//! [`recipe::Recipe`] (what to run), [`plan`] (the phases of a run), [`teacher::Teacher`] and
//! [`student`] (who teaches whom), [`methods`] (the per-step distillation terms), [`tasks`]
//! (what a training step computes) and [`train::fit`] (the one Trainer). `ARCHITECTURE.md` at
//! the repository root is the map; the modules below are listed lowest layer first.

pub mod error;

pub mod data;
pub mod io;
pub mod losses;
pub mod models;

pub mod methods;
pub mod student;
pub mod teacher;

pub mod eval;
pub mod plan;
pub mod tasks;
pub mod train;

pub mod bench;
pub mod experiments;
pub mod recipe;
pub mod report;

pub use error::{Error, Result};
