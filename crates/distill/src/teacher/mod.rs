//! The teacher: every source of soft targets behind one type, [`Teacher`] — a model run under
//! no-grad at every step (an LM in f32 or its bf16 copy, or a classifier), an offline cache of an
//! LM's top-k (+ tail samples), a classifier's logits computed once for the training set, or a
//! weighted ensemble of classifiers. The teacher is frozen: its variables never require grad and
//! every forward runs under `tch::no_grad`. Also here: the `[teacher]` section of an LM recipe
//! and the choice of the online teacher's precision.

pub mod cache;
pub mod server;

use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

use crate::methods::multi_teacher::{Combine, Weighting};
use crate::models::lm::CausalLm;
use crate::models::lm::LmConfig;
use crate::models::Classifier;
use crate::teacher::cache::CachedTeacher;
use crate::{Error, Result};

/// Where the teacher comes from.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LmTeacher {
    /// A GGUF file or a Hugging Face directory (config.json, model.safetensors, tokenizer.json).
    pub path: String,
    /// An offline cache of this teacher's top-k over the training rows (`distill cache`):
    /// training reads the teacher's distributions from it instead of running the model, which
    /// still provides the tokenizer, the student's shape and the evaluation.
    #[serde(default)]
    pub cache: Option<String>,
    /// A teacher behind a server (`[teacher.server]`): its top-k over the training rows are
    /// captured into `RUN/teacher-cache` and training reads them from there; `path` names local
    /// files with its config and tokenizer (and runs the evaluation).
    #[serde(default)]
    pub server: Option<server::ServerCfg>,
    /// The precision the online teacher runs in while students train; evaluation always runs
    /// it in f32.
    #[serde(default)]
    pub dtype: TeacherDtype,
}

impl LmTeacher {
    /// Whether training reads the teacher from a cache (given, or captured from its server).
    pub fn offline(&self) -> bool {
        self.cache.is_some() || self.server.is_some()
    }
}

/// `teacher = "model.gguf"`: a path alone is a teacher with the defaults.
impl From<String> for LmTeacher {
    fn from(path: String) -> Self {
        LmTeacher { path, cache: None, server: None, dtype: TeacherDtype::default() }
    }
}

/// Precision of the online teacher during training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
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
    Lm(&'a CausalLm),
    /// An LM's top-k (+ tail samples) over the training rows, read from an offline cache.
    Cache(&'a CachedTeacher),
    /// A classifier run under no-grad on every batch, in eval mode.
    Classifier(&'a dyn Classifier),
    /// A classifier's logits for every training example `[N, C]`, computed once (an offline
    /// teacher held in memory).
    Logits(&'a Tensor),
    /// Several classifiers as one: their softened distributions averaged with weights.
    Ensemble(Ensemble<'a>),
    /// Several causal LMs with one tokenizer, mixed per token (multi-teacher KD).
    Mixture(LmMixture<'a>),
}

/// `[[teachers]]` of an LM recipe: another teacher for `[distill.multi_teacher]`.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtraLmTeacher {
    /// A GGUF file or a Hugging Face directory with the same tokenizer as `[teacher]`.
    pub path: String,
}

/// Several LM teachers as one (multi-teacher KD): per token, the members' distributions are
/// weighted (fixed, or by each member's confidence on that token) and combined as
/// [`combine_weighted`] does, a chunk of rows at a time, so `[tokens, vocab]` never exists for a
/// batch for any member.
#[derive(Clone)]
pub struct LmMixture<'a> {
    pub members: Vec<&'a CausalLm>,
    /// The fixed weights, normalised.
    pub fixed: Vec<f64>,
    pub weighting: Weighting,
    pub combine: Combine,
}

impl LmMixture<'_> {
    /// The combined teacher's log-probabilities at `t` for rows `start..start + len`: `hidden`
    /// holds each member's final hidden states `[N, H_k]`, `labels` the next tokens `[N]`.
    pub fn chunk_log_probs(&self, hidden: &[Tensor], labels: &Tensor, start: i64, len: i64, t: f64) -> Tensor {
        tch::no_grad(|| {
            let z: Vec<Tensor> = self
                .members
                .iter()
                .zip(hidden)
                .map(|(m, h)| m.head().logits(&h.narrow(0, start, len)).to_kind(Kind::Float))
                .collect(); // k × [C, V]
            let w = example_weights(&z, &labels.narrow(0, start, len), self.weighting, &self.fixed); // [k, C]
            (combine_weighted(&z, &w, t, self.combine) / t).log_softmax(-1, Kind::Float)
            // [C, V]
        })
    }
}

impl Teacher<'_> {
    /// Classifier logits `[B, C]` for a batch: `x` the images as the student sees them
    /// (possibly augmented) `[B, …]`, `idx` their rows in the training set `[B]`.
    pub fn classifier_logits(&self, x: &Tensor, idx: &Tensor) -> Result<Tensor> {
        match self {
            Teacher::Logits(l) => Ok(l.index_select(0, idx)),
            Teacher::Classifier(m) => Ok(tch::no_grad(|| m.logits(x, false))),
            Teacher::Ensemble(e) => Ok(tch::no_grad(|| e.logits(x))),
            Teacher::Lm(_) | Teacher::Cache(_) | Teacher::Mixture(_) => {
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

/// Per-example teacher weights `[k, N]` (columns sum to 1) for teachers' logits `k × [N, C]`:
/// `fixed` repeats `fixed`; `entropy` ∝ `1/H(softmax(z_k))`; `true-label` ∝ `softmax(z_k)[y]`
/// (`fixed` where `labels < 0`, an example the student may not see the label of).
pub fn example_weights(z: &[Tensor], labels: &Tensor, weighting: Weighting, fixed: &[f64]) -> Tensor {
    let n = z[0].size()[0];
    let dev = z[0].device();
    let fixed_w = Tensor::from_slice(&fixed.iter().map(|&x| x as f32).collect::<Vec<_>>())
        .to_device(dev)
        .unsqueeze(1)
        .expand([-1, n], false); // [k, N]
    let raw = match weighting {
        Weighting::Fixed => return fixed_w.contiguous(),
        Weighting::Entropy => {
            let h: Vec<Tensor> = z
                .iter()
                .map(|z| {
                    let lp = z.log_softmax(-1, Kind::Float); // [N, C]
                    (lp.exp() * &lp).sum_dim_intlist([-1i64].as_slice(), false, Kind::Float).neg()
                    // [N]
                })
                .collect();
            Tensor::stack(&h, 0).clamp_min(1e-6).reciprocal() // [k, N]
        }
        Weighting::TrueLabel => {
            let y = labels.clamp_min(0).unsqueeze(1); // [N, 1]
            let p: Vec<Tensor> =
                z.iter().map(|z| z.softmax(-1, Kind::Float).gather(1, &y, false).squeeze_dim(1)).collect();
            let p = Tensor::stack(&p, 0).clamp_min(1e-12); // [k, N]
            let labeled = labels.ge(0).unsqueeze(0); // [1, N]
            p.where_self(&labeled, &fixed_w)
        }
    };
    &raw / raw.sum_dim_intlist([0i64].as_slice(), true, Kind::Float) // [k, N]
}

/// Teachers' logits `k × [N, C]` combined with per-example weights `w` `[k, N]` at temperature
/// `t` into logits whose softmax at `t` is the soft target: `t · log Σ_k w_k softmax(z_k/t)`
/// (`Probabilities`) or `Σ_k w_k z_k` (`Logits`).
pub fn combine_weighted(z: &[Tensor], w: &Tensor, t: f64, combine: Combine) -> Tensor {
    match combine {
        Combine::Probabilities => {
            let terms: Vec<Tensor> = z
                .iter()
                .enumerate()
                .map(|(k, z)| (z / t).log_softmax(-1, Kind::Float) + w.get(k as i64).unsqueeze(1).log())
                .collect();
            Tensor::stack(&terms, 0).logsumexp(0, false) * t // [N, C]
        }
        Combine::Logits => {
            let terms: Vec<Tensor> = z.iter().enumerate().map(|(k, z)| z * w.get(k as i64).unsqueeze(1)).collect();
            Tensor::stack(&terms, 0).sum_dim_intlist([0i64].as_slice(), false, Kind::Float)
            // [N, C]
        }
    }
}

/// The kind the online teacher trains in, with the reason (for the log and the summary).
/// `auto` picks bf16 on CUDA, and on a CPU when [`bf16_matmul_speedup`] is at least 1.25.
pub fn resolve_teacher_kind(dtype: TeacherDtype, cfg: &LmConfig, device: Device) -> Result<(Kind, String)> {
    Ok(match dtype {
        TeacherDtype::F32 => (Kind::Float, "f32 (teacher.dtype)".into()),
        TeacherDtype::Bf16 => (Kind::BFloat16, "bf16 (teacher.dtype)".into()),
        TeacherDtype::Auto if device.is_cuda() => (Kind::BFloat16, "bf16 (auto: CUDA)".into()),
        TeacherDtype::Auto => {
            // A timing: in a data-parallel job rank 0's decides for every rank.
            let s =
                crate::train::dist::rank0_value(bf16_matmul_speedup(cfg, device)?, "choosing the teacher's precision")?;
            let kind = if s >= 1.25 { Kind::BFloat16 } else { Kind::Float };
            let name = if kind == Kind::Float { "f32" } else { "bf16" };
            (kind, format!("{name} (auto: a bf16 matmul of the teacher's MLP shape ran {s:.2}x the f32 speed here)"))
        }
    })
}

/// f32 time over bf16 time of a `[1024, hidden] × [hidden, intermediate]` matmul on `device`
/// (best of 5 after a warm-up each; ~0.2 s on 2 CPU cores for SmolLM2's shape). Uses no random
/// numbers, so it does not move the seeded RNG.
pub fn bf16_matmul_speedup(cfg: &LmConfig, device: Device) -> Result<f64> {
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
pub fn teacher_in_kind(vs_src: &nn::VarStore, model: &CausalLm, kind: Kind) -> Result<(nn::VarStore, CausalLm)> {
    let mut vs = nn::VarStore::new(model.device());
    let model = CausalLm::new(vs.root(), model.config())?;
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

    /// Per-example weights: entropy and true-label weights favour the confident teacher, the
    /// columns sum to 1, and the combined soft target is the weighted average (probabilities)
    /// or the softmax of the weighted logits.
    #[test]
    fn per_example_weights_follow_confidence() {
        // Example 0: teacher A confident and right; example 1: teacher B confident and right.
        let a = Tensor::from_slice(&[4.0f32, 0.0, 0.0, 0.3, 0.2, 0.1]).view([2, 3]);
        let b = Tensor::from_slice(&[0.1f32, 0.2, 0.3, 0.0, 0.0, 5.0]).view([2, 3]);
        let y = Tensor::from_slice(&[0i64, 2]);
        let z = [a.shallow_clone(), b.shallow_clone()];
        for w in [Weighting::Entropy, Weighting::TrueLabel] {
            let ew = example_weights(&z, &y, w, &[0.5, 0.5]); // [2, N]
            let v = Vec::<f32>::try_from(ew.flatten(0, -1)).unwrap(); // a0 a1 b0 b1
            assert!(v[0] > 0.6 && v[3] > 0.6, "{w:?}: {v:?}");
            assert!((v[0] + v[2] - 1.0).abs() < 1e-6 && (v[1] + v[3] - 1.0).abs() < 1e-6);
        }
        let ew = example_weights(&z, &Tensor::from_slice(&[-1i64, -1]), Weighting::TrueLabel, &[0.25, 0.75]);
        assert_eq!(Vec::<f32>::try_from(ew.flatten(0, -1)).unwrap(), vec![0.25, 0.25, 0.75, 0.75]);
        let w = Tensor::from_slice(&[0.3f32, 0.6, 0.7, 0.4]).view([2, 2]);
        let t = 2.0;
        let got = (combine_weighted(&z, &w, t, Combine::Probabilities) / t).softmax(-1, Kind::Float);
        let want = (&a / t).softmax(-1, Kind::Float) * w.get(0).unsqueeze(1)
            + (&b / t).softmax(-1, Kind::Float) * w.get(1).unsqueeze(1);
        assert!((&got - &want).abs().max().double_value(&[]) < 1e-6);
        let got = combine_weighted(&z, &w, t, Combine::Logits);
        let want = &a * w.get(0).unsqueeze(1) + &b * w.get(1).unsqueeze(1);
        assert!((&got - &want).abs().max().double_value(&[]) < 1e-6);
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
