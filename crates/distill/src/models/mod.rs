//! Model architectures, one file each, and their recipe specs. Every model returns typed, full
//! outputs — logits and the intermediate states every distillation method reads — for every
//! example and position; none keeps only the last position.

pub mod bert;
pub mod cnn;
pub mod lm;
pub mod mlp;
pub mod sentence;

use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

use crate::{Error, Result};

/// A model architecture.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ModelSpec {
    /// Fully connected ReLU network.
    Mlp {
        /// Hidden widths, e.g. `[1200, 1200]`.
        hidden: Vec<usize>,
        /// Dropout after each hidden layer (Hinton: 0.5).
        #[serde(default)]
        dropout: f64,
        /// Dropout on the input pixels (Hinton: 0.2).
        #[serde(default)]
        input_dropout: f64,
    },
    /// Small conv net: 3×3 conv + ReLU + 2×2 max-pool per entry of `channels`, then one hidden
    /// fully connected layer.
    Cnn {
        /// Output channels of each 3×3 convolution (each followed by ReLU and 2×2 max-pooling),
        /// e.g. `[32, 64]`.
        channels: Vec<usize>,
        /// Width of the fully connected layer before the classes.
        hidden: usize,
        /// Dropout on the hidden layer while training (default 0).
        #[serde(default)]
        dropout: f64,
    },
}

impl ModelSpec {
    /// Checks widths and dropout rates; `what` names the section in the error (`teacher`).
    pub fn validate(&self, what: &str) -> Result<()> {
        let m = self;
        let bad = |msg: String| Err(Error::Recipe(format!("{what}.model: {msg}")));
        match m {
            ModelSpec::Mlp { hidden, dropout, input_dropout } => {
                if hidden.contains(&0) {
                    return bad("hidden widths must be > 0".into());
                }
                for (k, p) in [("dropout", dropout), ("input_dropout", input_dropout)] {
                    if !(0.0..1.0).contains(p) {
                        return bad(format!("{k} must be in [0, 1), got {p}"));
                    }
                }
            }
            ModelSpec::Cnn { channels, hidden, dropout } => {
                if channels.is_empty() || channels.contains(&0) || *hidden == 0 {
                    return bad("channels must be a non-empty list of widths > 0 and hidden > 0".into());
                }
                if !(0.0..1.0).contains(dropout) {
                    return bad(format!("dropout must be in [0, 1), got {dropout}"));
                }
            }
        }
        Ok(())
    }
}

/// A classifier's outputs for a batch.
#[derive(Debug)]
pub struct Outputs {
    /// `[B, C]` unnormalised class scores.
    pub logits: Tensor,
    /// The intermediate states in order, for feature-, attention- and relation-based methods:
    /// an MLP's hidden layers after their ReLU `[B, H_i]`; a CNN's conv blocks after pooling
    /// `[B, C_i, H_i, W_i]`, then its hidden fully connected layer `[B, F]`.
    pub features: Vec<Tensor>,
}

/// An image classifier with typed outputs.
pub trait Classifier: std::fmt::Debug {
    /// The full forward pass; `train` turns dropout on.
    ///
    /// # Shapes
    /// `x: [B, 1, H, W]` → [`Outputs`].
    fn forward_outputs(&self, x: &Tensor, train: bool) -> Outputs;

    /// The logits alone `[B, C]`.
    fn logits(&self, x: &Tensor, train: bool) -> Tensor {
        self.forward_outputs(x, train).logits
    }
}

/// Builds an image classifier from its recipe spec under `p`.
pub fn image_classifier(p: &nn::Path, spec: &ModelSpec, hw: [usize; 2], classes: usize) -> Box<dyn Classifier> {
    match spec {
        ModelSpec::Mlp { hidden, dropout, input_dropout } => {
            Box::new(mlp::Mlp::new(p, hw[0] * hw[1], hidden, classes, *dropout, *input_dropout))
        }
        ModelSpec::Cnn { channels, hidden, dropout } => {
            Box::new(cnn::Cnn::new(p, hw, channels, *hidden, classes, *dropout))
        }
    }
}

/// Number of trainable scalars in a var store.
pub fn param_count(vs: &nn::VarStore) -> usize {
    vs.trainable_variables().iter().map(|t| t.numel()).sum()
}
