//! The teacher: every source of soft targets behind one type, [`Teacher`] — a model run under
//! no-grad at every step (an LM in f32 or its bf16 copy, or a classifier), an offline cache of an
//! LM's top-k (+ tail samples), a classifier's logits computed once for the training set, or a
//! weighted ensemble of classifiers. The teacher is frozen: its variables never require grad and
//! every forward runs under `tch::no_grad`. Also here: the `[teacher]` section of an LM recipe
//! and the choice of the online teacher's precision.

use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

use crate::cache::CachedTeacher;
use crate::io::hf::LlamaConfig;
use crate::models::llama::Llama;
use crate::models::Classifier;
use crate::{Error, Result};

/// Where the teacher comes from.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LmTeacher {
    /// A GGUF file or a Hugging Face directory (config.json, model.safetensors, tokenizer.json).
    pub path: String,
    /// An offline cache of this teacher's top-k over the training rows (`distill cache`):
    /// training reads the teacher's distributions from it instead of running the model, which
    /// still provides the tokenizer, the student's shape and the evaluation.
    #[serde(default)]
    pub cache: Option<String>,
    /// The precision the online teacher runs in while students train; evaluation always runs
    /// it in f32.
    #[serde(default)]
    pub dtype: TeacherDtype,
}

/// Precision of the online teacher during training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TeacherDtype {
    /// bf16 on CUDA, and on a CPU where a bf16 matmul of the teacher's shape is measured at
    /// least 1.25× faster than f32 (AVX512-BF16, AMX); f32 elsewhere.
    #[default]
    Auto,
    F32,
    /// Weights and activations in bf16 (RMSNorm and softmax statistics in f32); the teacher's
    /// logits are turned into log-probabilities in f32.
    Bf16,
}

/// A frozen teacher, whatever stands behind its soft targets.
#[derive(Clone)]
pub enum Teacher<'a> {
    /// A causal LM run under no-grad on every batch: the f32 original or its bf16 copy
    /// ([`teacher_in_kind`]).
    Lm(&'a Llama),
    /// An LM's top-k (+ tail samples) over the training rows, read from an offline cache.
    Cache(&'a CachedTeacher),
    /// A classifier run under no-grad on every batch, in eval mode.
    Classifier(&'a dyn Classifier),
    /// A classifier's logits for every training example `[N, C]`, computed once (an offline
    /// teacher held in memory).
    Logits(&'a Tensor),
    /// Several classifiers as one: their softened distributions averaged with weights.
    Ensemble(Ensemble<'a>),
}

impl Teacher<'_> {
    /// Classifier logits `[B, C]` for a batch: `x` the images as the student sees them
    /// (possibly augmented) `[B, …]`, `idx` their rows in the training set `[B]`.
    pub fn classifier_logits(&self, x: &Tensor, idx: &Tensor) -> Result<Tensor> {
        match self {
            Teacher::Logits(l) => Ok(l.index_select(0, idx)),
            Teacher::Classifier(m) => Ok(tch::no_grad(|| m.logits(x, false))),
            Teacher::Ensemble(e) => Ok(tch::no_grad(|| e.logits(x))),
            Teacher::Lm(_) | Teacher::Cache(_) => {
                Err(Error::Invalid("a classifier student needs a classifier teacher, not a causal LM".into()))
            }
        }
    }
}

/// Several classifiers as one teacher at temperature `temperature`: logits
/// `T · log Σ_k w_k softmax(z_k/T)`, whose softmax at T is the members' weighted average
/// distribution (and whose argmax at T = 1 is the ensemble's prediction).
#[derive(Clone)]
pub struct Ensemble<'a> {
    pub members: Vec<&'a dyn Classifier>,
    /// One weight per member, summing to 1.
    pub weights: Vec<f64>,
    pub temperature: f64,
}

impl<'a> Ensemble<'a> {
    /// Equal weights.
    pub fn uniform(members: Vec<&'a dyn Classifier>, temperature: f64) -> Self {
        let weights = vec![1.0 / members.len().max(1) as f64; members.len()];
        Ensemble { members, weights, temperature }
    }

    /// `[B, …]` → `[B, C]` (eval mode).
    pub fn logits(&self, x: &Tensor) -> Tensor {
        let z: Vec<Tensor> = self.members.iter().map(|m| m.logits(x, false)).collect(); // k × [B, C]
        self.combine(&z)
    }

    /// The members' logits `k × [B, C]`, already computed (e.g. once for the training set),
    /// combined with this ensemble's weights and temperature → `[B, C]`.
    pub fn combine(&self, z: &[Tensor]) -> Tensor {
        combine_logits(z, &self.weights, self.temperature)
    }
}

/// The members' logits `k × [B, C]` combined as [`Ensemble::logits`] does:
/// `t · log Σ_k w_k softmax(z_k/t)` `[B, C]`. Equal weights use `log mean = logsumexp − ln k`.
pub fn combine_logits(z: &[Tensor], weights: &[f64], t: f64) -> Tensor {
    let logp: Vec<Tensor> = z.iter().map(|z| (z / t).log_softmax(-1, Kind::Float)).collect(); // k × [B, C]
    let uniform = weights.windows(2).all(|w| w[0] == w[1]);
    if uniform {
        return (Tensor::stack(&logp, 0).logsumexp(0, false) - (z.len() as f64).ln()) * t;
        // log of the mean probability
    }
    let weighted: Vec<Tensor> = logp.iter().zip(weights).map(|(l, &w)| l + w.ln()).collect();
    Tensor::stack(&weighted, 0).logsumexp(0, false) * t
}

/// The kind the online teacher trains in, with the reason (for the log and the summary).
/// `auto` picks bf16 on CUDA, and on a CPU when [`bf16_matmul_speedup`] is at least 1.25.
pub fn resolve_teacher_kind(dtype: TeacherDtype, cfg: &LlamaConfig, device: Device) -> Result<(Kind, String)> {
    Ok(match dtype {
        TeacherDtype::F32 => (Kind::Float, "f32 (teacher.dtype)".into()),
        TeacherDtype::Bf16 => (Kind::BFloat16, "bf16 (teacher.dtype)".into()),
        TeacherDtype::Auto if device.is_cuda() => (Kind::BFloat16, "bf16 (auto: CUDA)".into()),
        TeacherDtype::Auto => {
            let s = bf16_matmul_speedup(cfg, device)?;
            let kind = if s >= 1.25 { Kind::BFloat16 } else { Kind::Float };
            let name = if kind == Kind::Float { "f32" } else { "bf16" };
            (kind, format!("{name} (auto: a bf16 matmul of the teacher's MLP shape ran {s:.2}x the f32 speed here)"))
        }
    })
}

/// f32 time over bf16 time of a `[1024, hidden] × [hidden, intermediate]` matmul on `device`
/// (best of 5 after a warm-up each; ~0.2 s on 2 CPU cores for SmolLM2's shape). Uses no random
/// numbers, so it does not move the seeded RNG.
pub fn bf16_matmul_speedup(cfg: &LlamaConfig, device: Device) -> Result<f64> {
    let x = Tensor::f_full([1024, cfg.hidden_size], 0.01, (Kind::Float, device))?;
    let w = Tensor::f_full([cfg.hidden_size, cfg.intermediate_size], 0.02, (Kind::Float, device))?;
    let time = |kind: Kind| -> Result<f64> {
        let (x, w) = (x.f_to_kind(kind)?, w.f_to_kind(kind)?);
        let _ = x.f_mm(&w)?;
        let mut best = f64::INFINITY;
        for _ in 0..5 {
            let t = std::time::Instant::now();
            let _ = x.f_mm(&w)?;
            best = best.min(t.elapsed().as_secs_f64());
        }
        Ok(best)
    };
    Ok(time(Kind::Float)? / time(Kind::BFloat16)?.max(1e-9))
}

/// A frozen copy of a teacher (`model` with variables `vs`) in `kind`: the online teacher during
/// training; the f32 original stays for evaluation.
pub fn teacher_in_kind(vs_src: &nn::VarStore, model: &Llama, kind: Kind) -> Result<(nn::VarStore, Llama)> {
    let mut vs = nn::VarStore::new(model.device());
    let model = Llama::new(vs.root(), model.config())?;
    vs.set_kind(kind);
    vs.copy(vs_src)?;
    vs.freeze();
    Ok((vs, model))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn teacher_dtype_resolves_explicitly_or_by_measurement() {
        let hf = serde_json::json!({"architectures": ["LlamaForCausalLM"], "vocab_size": 96, "hidden_size": 64,
                                    "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 4});
        let cfg = crate::bench::config_from_json(&hf, "teacher").unwrap();
        let cpu = Device::Cpu;
        assert_eq!(resolve_teacher_kind(TeacherDtype::F32, &cfg, cpu).unwrap().0, Kind::Float);
        assert_eq!(resolve_teacher_kind(TeacherDtype::Bf16, &cfg, cpu).unwrap().0, Kind::BFloat16);
        let s = bf16_matmul_speedup(&cfg, cpu).unwrap();
        assert!(s.is_finite() && s > 0.0, "{s}");
        let (kind, why) = resolve_teacher_kind(TeacherDtype::Auto, &cfg, cpu).unwrap();
        assert!(why.starts_with(if kind == Kind::Float { "f32 (auto" } else { "bf16 (auto" }), "{why}");
    }

    /// Weighted members: the softmax of the combined logits at T is the weighted average.
    #[test]
    fn weighted_ensemble_averages_with_its_weights() {
        let z = [
            Tensor::from_slice(&[1.0f32, 2.0, 0.5]).view([1, 3]),
            Tensor::from_slice(&[-1.0f32, 0.0, 3.0]).view([1, 3]),
        ];
        for t in [1.0, 2.0] {
            let got = (combine_logits(&z, &[0.25, 0.75], t) / t).softmax(-1, Kind::Float);
            let want = (&z[0] / t).softmax(-1, Kind::Float) * 0.25 + (&z[1] / t).softmax(-1, Kind::Float) * 0.75;
            assert!((&got - &want).abs().max().double_value(&[]) < 1e-6);
        }
    }
}
