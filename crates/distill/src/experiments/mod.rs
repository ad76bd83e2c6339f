//! End-to-end experiments driven by a recipe.

pub mod image;
pub mod lm;
