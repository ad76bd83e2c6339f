//! Downstream evaluation of sentence encoders on frozen embeddings: a logistic-regression probe
//! (accuracy and F1 on a document-level held-out split), retrieval agreement with the teacher
//! (overlap of the top-k nearest neighbours), cosine to the teacher, and embeddings/s.

use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::models::sentence::{normalize, Embedder};
use crate::Result;

/// `[eval]` of a sentence-embedding recipe.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct EncoderEvalCfg {
    /// Neighbours compared for retrieval agreement (default 10).
    pub top_k: usize,
    /// Held-out texts in the retrieval and cosine comparison (at most; default 1000).
    pub retrieval_texts: usize,
    /// Held-out texts timed for embeddings/s, at `batch` per call (best of three passes;
    /// default 256).
    pub speed_texts: usize,
    /// Texts per embedding call (default 32).
    pub batch: usize,
    /// Labelled training documents the probe is fitted on, at most (0 = all, the default).
    pub probe_train_texts: usize,
    /// Probe: full-batch Adam steps (default 300) and L2 penalty on the standardised features
    /// (default 1e-3).
    pub probe_steps: usize,
    /// Probe: L2 penalty on the standardised features (default 1e-3).
    pub probe_l2: f64,
}

impl Default for EncoderEvalCfg {
    fn default() -> Self {
        EncoderEvalCfg {
            top_k: 10,
            retrieval_texts: 1000,
            speed_texts: 256,
            batch: 32,
            probe_train_texts: 0,
            probe_steps: 300,
            probe_l2: 1e-3,
        }
    }
}

/// Probe scores on the test split.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct ProbeScore {
    pub accuracy: f64,
    /// F1 of the positive class (binary: the second class in name order, e.g. `spam` after
    /// `ham`); macro-F1 over classes otherwise.
    pub f1: f64,
}

/// Multinomial logistic regression on standardised features (train mean/std), full-batch Adam
/// (lr 0.05) from zeros with an L2 penalty: deterministic. `y` holds class indices.
pub fn probe(x_train: &Tensor, y_train: &[i64], x_test: &Tensor, y_test: &[i64], steps: usize, l2: f64) -> ProbeScore {
    let classes = y_train.iter().chain(y_test).copied().max().unwrap_or(0) + 1;
    let xt = x_train.to_kind(Kind::Float).to(Device::Cpu);
    let mean = xt.mean_dim([0i64].as_slice(), true, Kind::Float);
    let std = xt.std_dim([0i64].as_slice(), false, true).clamp_min(1e-6);
    let xt = (&xt - &mean) / &std;
    let xs = (x_test.to_kind(Kind::Float).to(Device::Cpu) - &mean) / &std;
    let d = xt.size()[1];
    let w = Tensor::zeros([d, classes], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let b = Tensor::zeros([classes], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let y = Tensor::from_slice(y_train);
    let (lr, b1, b2, eps) = (0.05, 0.9, 0.999, 1e-8);
    let mut m = [w.zeros_like(), b.zeros_like()];
    let mut v = [w.zeros_like(), b.zeros_like()];
    for step in 1..=steps {
        let logits = xt.mm(&w) + &b;
        let loss = logits.cross_entropy_for_logits(&y) + w.square().sum(Kind::Float) * l2;
        let g = Tensor::run_backward(&[loss], &[&w, &b], false, false);
        tch::no_grad(|| {
            for (i, p) in [&w, &b].into_iter().enumerate() {
                m[i] = &m[i] * b1 + &g[i] * (1.0 - b1);
                v[i] = &v[i] * b2 + g[i].square() * (1.0 - b2);
                let mh = &m[i] / (1.0 - b1.powi(step as i32));
                let vh = &v[i] / (1.0 - b2.powi(step as i32));
                let _ = p.shallow_clone().f_sub_(&(mh / (vh.sqrt() + eps) * lr));
            }
        });
    }
    let pred: Vec<i64> = tch::no_grad(|| (xs.mm(&w) + &b).argmax(1, false)).try_into().unwrap_or_default();
    score(&pred, y_test, classes)
}

fn score(pred: &[i64], truth: &[i64], classes: i64) -> ProbeScore {
    let n = truth.len().max(1) as f64;
    let accuracy = pred.iter().zip(truth).filter(|(p, t)| p == t).count() as f64 / n;
    let f1_of = |c: i64| {
        let tp = pred.iter().zip(truth).filter(|(p, t)| **p == c && **t == c).count() as f64;
        let fp = pred.iter().zip(truth).filter(|(p, t)| **p == c && **t != c).count() as f64;
        let fneg = pred.iter().zip(truth).filter(|(p, t)| **p != c && **t == c).count() as f64;
        if tp == 0.0 {
            0.0
        } else {
            2.0 * tp / (2.0 * tp + fp + fneg)
        }
    };
    let f1 = if classes == 2 { f1_of(1) } else { (0..classes).map(f1_of).sum::<f64>() / classes as f64 };
    ProbeScore { accuracy, f1 }
}

/// Mean over rows of `|topk(a_i) ∩ topk(b_i)| / k`, neighbours by cosine among the rows
/// themselves (each row's own index excluded).
pub fn topk_overlap(a: &Tensor, b: &Tensor, k: usize) -> f64 {
    let n = a.size()[0];
    let k = (k as i64).min(n - 1);
    if k <= 0 {
        return f64::NAN;
    }
    let nn = |e: &Tensor| {
        let e = normalize(&e.to_kind(Kind::Float));
        let sim = e.mm(&e.transpose(0, 1)) - Tensor::eye(n, (Kind::Float, e.device())) * 10.0;
        let idx: Vec<Vec<i64>> = sim.topk(k, 1, true, true).1.try_into().unwrap_or_default();
        idx
    };
    let (na, nb) = (nn(a), nn(b));
    let hits: usize = na.iter().zip(&nb).map(|(x, y)| x.iter().filter(|i| y.contains(i)).count()).sum();
    hits as f64 / (n as f64 * k as f64)
}

/// Mean cosine between matching rows (`None` when the widths differ).
pub fn mean_cos(a: &Tensor, b: &Tensor) -> Option<f64> {
    (a.size() == b.size()).then(|| Tensor::cosine_similarity(a, b, 1, 1e-8).mean(Kind::Float).double_value(&[]))
}

/// Embeddings/s of `model` over `texts` at `batch`, tokenization included: one warm-up batch,
/// then the best of three passes (the least disturbed by the rest of the machine).
pub fn throughput(model: &dyn Embedder, texts: &[String], batch: usize) -> Result<f64> {
    let warm = texts.len().min(batch);
    let _ = model.embed(&texts[..warm], batch)?;
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let t0 = Instant::now();
        let _ = model.embed(texts, batch)?;
        best = best.min(t0.elapsed().as_secs_f64());
    }
    Ok(texts.len() as f64 / best.max(1e-9))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f1_and_accuracy_count_by_hand() {
        let s = score(&[1, 1, 0, 0, 1], &[1, 0, 0, 1, 1], 2);
        assert!((s.accuracy - 0.6).abs() < 1e-12);
        // tp 2, fp 1, fn 1 → 4 / 6
        assert!((s.f1 - 2.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn overlap_is_one_for_the_same_space_and_rotation_invariant() {
        tch::manual_seed(0);
        let a = Tensor::randn([50, 8], (Kind::Float, Device::Cpu));
        assert!((topk_overlap(&a, &a, 5) - 1.0).abs() < 1e-12);
        let (q, _) = Tensor::linalg_qr(&Tensor::randn([8, 8], (Kind::Float, Device::Cpu)), "reduced");
        assert!((topk_overlap(&a, &a.mm(&q), 5) - 1.0).abs() < 1e-12);
        let r = Tensor::randn([50, 8], (Kind::Float, Device::Cpu));
        assert!(topk_overlap(&a, &r, 5) < 0.5);
    }

    #[test]
    fn the_probe_separates_separable_classes() {
        tch::manual_seed(0);
        let x = Tensor::randn([200, 4], (Kind::Float, Device::Cpu));
        let y: Vec<i64> = Vec::<f32>::try_from(x.select(1, 0)).unwrap().iter().map(|&v| (v > 0.0) as i64).collect();
        let s = probe(&x.narrow(0, 0, 150), &y[..150], &x.narrow(0, 150, 50), &y[150..], 300, 1e-4);
        assert!(s.accuracy >= 0.96, "{s:?}");
    }
}
