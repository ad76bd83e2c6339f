//! Model architectures, one file each. Every model returns full outputs; none keeps only the last
//! position.

pub mod cnn;
pub mod llama;
pub mod mlp;

use tch::nn;

use crate::recipe::ModelSpec;

/// Builds an image classifier from its recipe spec under `p`.
pub fn image_classifier(p: &nn::Path, spec: &ModelSpec, hw: [usize; 2], classes: usize) -> Box<dyn nn::ModuleT> {
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
