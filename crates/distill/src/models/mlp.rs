//! Fully connected ReLU classifier, Hinton et al. (2015)'s MNIST teacher (784-1200-1200-10 with
//! dropout) and student (784-800-800-10).

use tch::{nn, Tensor};

use super::{Classifier, Outputs};

/// `input → [dropout] → (Linear → ReLU → dropout)* → Linear → logits`.
#[derive(Debug)]
pub struct Mlp {
    layers: Vec<nn::Linear>,
    dropout: f64,
    input_dropout: f64,
}

impl Mlp {
    /// Layers are named `fc0`, `fc1`, … under `p`; the last one maps to `classes` logits.
    pub fn new(
        p: &nn::Path,
        inputs: usize,
        hidden: &[usize],
        classes: usize,
        dropout: f64,
        input_dropout: f64,
    ) -> Self {
        let mut dims = vec![inputs as i64];
        dims.extend(hidden.iter().map(|&h| h as i64));
        dims.push(classes as i64);
        let layers = dims
            .windows(2)
            .enumerate()
            .map(|(i, w)| nn::linear(p / format!("fc{i}"), w[0], w[1], Default::default()))
            .collect();
        Mlp { layers, dropout, input_dropout }
    }
}

impl Classifier for Mlp {
    /// # Shapes
    /// `x: [B, …]` (flattened to `[B, inputs]`) → logits `[B, classes]`, features
    /// `[B, hidden_i]` per hidden layer (after ReLU, before dropout).
    fn forward_outputs(&self, x: &Tensor, train: bool) -> Outputs {
        let mut h = x.flatten(1, -1).dropout(self.input_dropout, train); // [B, D]
        let mut features = Vec::with_capacity(self.layers.len() - 1);
        let last = self.layers.len() - 1;
        for (i, l) in self.layers.iter().enumerate() {
            h = h.apply(l);
            if i < last {
                let a = h.relu(); // [B, hidden_i]
                h = a.dropout(self.dropout, train);
                features.push(a);
            }
        }
        Outputs { logits: h, features }
    }
}
