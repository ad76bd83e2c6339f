//! End-to-end experiments driven by a recipe: each walks its phase plan ([`crate::plan`]),
//! trains every phase with the one Trainer and writes the run directory and its report.

pub mod encoder;
pub mod gendata;
pub mod image;
pub mod lm;
pub mod lm_report;
pub mod selfdistill;

/// Options of a run that are not part of the recipe.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Progress bars on stderr.
    pub progress: bool,
    /// A line per finished phase on stderr.
    pub verbose: bool,
    /// Time each trained phase over this many steps instead of training it; nothing is exported
    /// or evaluated (`distill check --estimate`; LM runs).
    pub time_steps: Option<u64>,
}
