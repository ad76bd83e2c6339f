//! A small convolutional classifier: `(conv3×3 → ReLU → maxpool2)*` then one hidden layer.

use tch::{nn, Tensor};

use super::{Classifier, Outputs};

/// Conv net for small images (28×28 Fashion-MNIST, 8×8 digits).
#[derive(Debug)]
pub struct Cnn {
    convs: Vec<nn::Conv2D>,
    fc: nn::Linear,
    out: nn::Linear,
    dropout: f64,
}

impl Cnn {
    /// `channels[i]` output channels for conv block `i` (named `conv{i}`), then `fc` with
    /// `hidden` units and `out` with `classes` logits.
    pub fn new(p: &nn::Path, hw: [usize; 2], channels: &[usize], hidden: usize, classes: usize, dropout: f64) -> Self {
        let cfg = nn::ConvConfig { padding: 1, ..Default::default() };
        let mut cin = 1i64;
        let (mut h, mut w) = (hw[0] as i64, hw[1] as i64);
        let mut convs = Vec::new();
        for (i, &c) in channels.iter().enumerate() {
            convs.push(nn::conv2d(p / format!("conv{i}"), cin, c as i64, 3, cfg));
            cin = c as i64;
            h = (h / 2).max(1);
            w = (w / 2).max(1);
        }
        let fc = nn::linear(p / "fc", cin * h * w, hidden as i64, Default::default());
        let out = nn::linear(p / "out", hidden as i64, classes as i64, Default::default());
        Cnn { convs, fc, out, dropout }
    }
}

impl Classifier for Cnn {
    /// # Shapes
    /// `x: [B, 1, H, W]` → logits `[B, classes]`; features: each conv block's output
    /// `[B, c_i, H_i, W_i]`, then the hidden layer after ReLU `[B, hidden]`.
    fn forward_outputs(&self, x: &Tensor, train: bool) -> Outputs {
        let mut h = x.shallow_clone();
        let mut features = Vec::with_capacity(self.convs.len() + 1);
        for c in &self.convs {
            let k = if h.size()[2] >= 2 && h.size()[3] >= 2 { 2 } else { 1 };
            h = h.apply(c).relu().max_pool2d_default(k); // [B, c, H/2, W/2]
            features.push(h.shallow_clone());
        }
        let f = h.flatten(1, -1).apply(&self.fc).relu(); // [B, hidden]
        let logits = f.dropout(self.dropout, train).apply(&self.out); // [B, classes]
        features.push(f);
        Outputs { logits, features }
    }
}
