//! End-to-end experiments driven by a recipe: each walks its phase plan ([`crate::plan`]),
//! trains every phase with the one Trainer and writes the run directory and its report.

pub mod encoder;
pub mod image;
pub mod lm;
pub mod lm_report;
