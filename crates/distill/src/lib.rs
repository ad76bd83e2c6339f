//! distill: knowledge distillation on libtorch.
//!
//! The library computes; the `distill` binary parses arguments and prints. Start from
//! [`recipe::Recipe`] (what to run), [`plan`] (the phases of a run), [`teacher::Teacher`] and
//! [`student`] (who teaches whom), [`methods`] (the per-step distillation terms), [`tasks`]
//! (what a training step computes) and [`train::fit`] (the one Trainer). `ARCHITECTURE.md` at
//! the repository root is the map.

pub mod bench;
pub mod cache;
pub mod chat;
pub mod checkpoint;
pub mod data;
pub mod dist;
pub mod embed_eval;
pub mod encoder;
pub mod error;
pub mod eval;
pub mod experiments;
pub mod export;
pub mod fetch;
pub mod gendata;
pub mod generate;
pub mod io;
pub mod lm;
pub mod losses;
pub mod methods;
pub mod models;
pub mod optim;
pub mod plan;
pub mod recipe;
pub mod report;
pub mod selfdistill;
pub mod student;
pub mod tasks;
pub mod teacher;
pub mod train;
pub mod verify;

pub use error::{Error, Result};
