//! `[distill.born_again]`: the config of born-again generations; the phases are planned in
//! [`crate::plan`].

use serde::{Deserialize, Serialize};

/// `[distill.born_again]`: born-again networks (Furlanello et al. 2018). Generation 1 is the KD
/// student; generation `k + 1`, of the same architecture and from a fresh initialization, is
/// taught by generation `k` alone (no hard labels beyond the recipe's α); the generations'
/// average is evaluated as one more model.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BornAgainCfg {
    /// The number of generations including the KD student (≥ 2).
    pub generations: usize,
}

impl BornAgainCfg {
    pub fn validate(&self) -> crate::Result<()> {
        if !(2..=10).contains(&self.generations) {
            return Err(crate::Error::Recipe(format!(
                "distill.born_again.generations must be in 2..=10 (generation 1 is the KD student), got {}",
                self.generations
            )));
        }
        Ok(())
    }
}
