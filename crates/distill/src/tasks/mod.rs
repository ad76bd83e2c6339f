//! Training tasks: what one step of a phase computes, for the one Trainer ([`crate::train`]).
//! A task holds the logit term of [`crate::methods::response`] plus the list of extra
//! [`crate::methods::Term`]s, and feeds them typed student and teacher outputs.

pub mod encoder;
pub mod image;
pub mod lm;

pub use image::ClassifierTask;
pub use lm::{LmKdTask, TeacherMemo};
