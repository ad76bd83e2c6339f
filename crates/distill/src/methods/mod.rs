//! Distillation methods that act at every training step, one file each.
//!
//! A task's loss is its **logit term** ([`response`]: soft targets blended with the hard labels,
//! `α·T²·D(p_t, p_s) + (1−α)·CE`) plus a list of **extra terms** ([`Term`]), each added with its
//! weight and logged under its name. A term's file holds its config (serde, validated without a
//! tensor), its builder (extra parameters such as a projection, registered with the student's
//! variables so they train and checkpoint with it) and its loss over typed student and teacher
//! states ([`StepStates`]).
//!
//! Adding a per-step method: a new file in this folder and one line in the [`terms!`] list below
//! (its key under `[distill]` and its config type). Multi-stage methods (born-again
//! generations, teacher-assistant chains, prune → heal → quantize) are phase plans
//! ([`crate::plan`]), not terms.

pub mod attention;
pub mod attention_transfer;
pub mod born_again;
pub mod fitnets;
pub mod hidden;
pub mod multi_teacher;
pub mod on_policy;
pub mod relation;
pub mod response;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

use crate::losses::divergence::{Divergence, DivergenceCfg, DivergenceKind};
use crate::{Error, Result};

/// The kind of models a term is configured for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Domain {
    /// Image classifiers: the states are their features (feature maps or vectors).
    Image,
    /// Causal LMs: hidden states, attention maps, queries/keys/values.
    Lm,
}

/// What a term may check at validation time, before any tensor exists.
#[derive(Debug, Clone, Copy)]
pub struct TermContext {
    pub domain: Domain,
    /// The student's depth as the recipe gives it (an LM's layers; for images the number of
    /// feature states, when the recipe fixes it).
    pub student_layers: usize,
    /// Whether an online teacher runs at every step (a teacher cache holds only distributions).
    pub online_teacher: bool,
}

/// What a term is built against: both models' depth and width, and the student's variables.
pub struct BuildContext<'a> {
    /// Where the term's own parameters go (trained and checkpointed with the student).
    pub vs: nn::Path<'a>,
    pub student_layers: usize,
    pub student_width: i64,
    pub teacher_layers: usize,
    pub teacher_width: i64,
    /// Image models: each feature state's per-example shape (`[C, H, W]` or `[F]`); empty for LMs.
    pub student_shapes: Vec<Vec<i64>>,
    pub teacher_shapes: Vec<Vec<i64>>,
    /// LMs: the widths of a layer's queries, keys and values (heads concatenated).
    pub student_qkv: [i64; 3],
    pub teacher_qkv: [i64; 3],
    /// LMs: attention heads.
    pub student_heads: i64,
    pub teacher_heads: i64,
}

/// A term's recipe side: its key, its checks and its builder.
pub trait TermConfig: std::fmt::Debug {
    /// The key under `[distill]` (also the name its part is logged under).
    fn key(&self) -> &'static str;
    /// Checks what needs no tensor; errors name `distill.<key>…`.
    fn validate(&self, ctx: &TermContext) -> Result<()>;
    /// Builds the term for a student about to train.
    fn build(&self, ctx: BuildContext<'_>) -> Result<Box<dyn Term>>;
}

/// A per-step distillation term added to the logit term.
pub trait Term {
    /// The name its part is logged under in `metrics.jsonl`.
    fn name(&self) -> &'static str;
    /// One line for the run log: what the term does and with which settings.
    fn describe(&self) -> String;
    /// What the term reads besides the logits (the forwards then keep it).
    fn needs(&self) -> Needs;
    /// The weighted term, a scalar that trains the student (and the term's own parameters).
    fn loss(&self, student: &StepStates<'_>, teacher: &StepStates<'_>) -> Result<Tensor>;
}

/// What a term reads from the forward passes besides the logits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Needs {
    /// The intermediate states (an LM's `L+1` hidden states, a classifier's features).
    pub states: bool,
    /// An LM's `L` attention-probability maps `[B, nh, T, T]`.
    pub attentions: bool,
    /// An LM's `L` layers' queries, keys and values.
    pub qkv: bool,
}

impl Needs {
    /// Everything any of `terms` needs.
    pub fn of(terms: &[Box<dyn Term>]) -> Needs {
        terms.iter().fold(Needs::default(), |a, t| {
            let n = t.needs();
            Needs { states: a.states || n.states, attentions: a.attentions || n.attentions, qkv: a.qkv || n.qkv }
        })
    }
}

/// One model's intermediate outputs for a step: an LM's `L+1` hidden states `[B, T, H]` and
/// `L` attention maps `[B, nh, T, T]` (read at the positions with a real next token, `rows`;
/// `mask` marks real positions), or a classifier's features `[B, …]` flattened per example.
pub struct StepStates<'a> {
    pub states: &'a [Tensor],
    /// Empty unless a term asked for them ([`Needs::attentions`]).
    pub attentions: &'a [Tensor],
    /// An LM's per-layer queries, keys and values; empty unless asked ([`Needs::qkv`]).
    pub qkv: &'a [crate::models::lm::Qkv],
    /// Flat indices into `B·T` (LM); `None` keeps every example.
    pub rows: Option<&'a Tensor>,
    /// The attention mask `[B, T]` (1 = real) when the batch has padding.
    pub mask: Option<&'a Tensor>,
}

impl StepStates<'_> {
    /// Number of states.
    pub fn len(&self) -> usize {
        self.states.len()
    }

    /// Whether there are no states.
    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }

    /// State `i` at the selected rows: `[N, H]` (LM) or `[B, F]` (classifier features).
    pub fn rows(&self, i: usize) -> Option<Tensor> {
        let x = self.states.get(i)?;
        Some(match self.rows {
            Some(idx) => x.view([-1, x.size()[2]]).index_select(0, idx),
            None => x.flatten(1, -1),
        })
    }
}

/// Declares the registered terms: the `Terms` section (an optional config per key) and the list
/// of configured ones.
macro_rules! terms {
    ($($(#[$doc:meta])* $key:ident: $cfg:ty,)*) => {
        /// The extra per-step terms of `[distill]`: each present when the recipe names its key.
        #[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
        pub struct Terms {
            $($(#[$doc])* #[serde(default, skip_serializing_if = "Option::is_none")] pub $key: Option<$cfg>,)*
        }

        impl Terms {
            /// The configured terms, in registration order.
            pub fn configured(&self) -> Vec<&dyn TermConfig> {
                let mut v: Vec<&dyn TermConfig> = Vec::new();
                $(if let Some(c) = &self.$key {
                    v.push(c);
                })*
                v
            }
        }
    };
}

impl Terms {
    /// FitNets' first stage: the hint alone.
    pub fn hint_stage(&self) -> Vec<&dyn TermConfig> {
        self.fitnets.iter().map(|f| f as &dyn TermConfig).collect()
    }

    /// The KD stage after a FitNets hint stage: every configured term but the hint.
    pub fn after_hint_stage(&self) -> Vec<&dyn TermConfig> {
        let hint = self.fitnets.as_ref().map(|f| f as *const _ as *const ());
        self.configured().into_iter().filter(|c| Some(*c as *const dyn TermConfig as *const ()) != hint).collect()
    }
}

// The registered per-step terms: one line each.
terms! {
    /// `[distill.hidden]`: feature KD on intermediate states through a learned projection.
    hidden: hidden::HiddenKdCfg,
    /// `[distill.fitnets]`: FitNets hints, a student layer regressing a teacher layer (images).
    fitnets: fitnets::FitNetsCfg,
    /// `[distill.attention_transfer]`: attention transfer between CNN feature maps (images).
    attention_transfer: attention_transfer::AttentionTransferCfg,
    /// `[distill.attention]`: MiniLM's self-attention distribution / relation KD (LMs).
    attention: attention::AttentionKdCfg,
    /// `[distill.rkd]`: relational KD, distances and angles within a batch (images and LMs).
    rkd: relation::RkdCfg,
}

/// `[distill]` of an LM recipe: the logit term `α·T²·D(p_t^T, p_s^T) + (1−α)·CE` over predicted
/// tokens, then the extra [`Terms`] by key.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LmDistill {
    /// Softmax temperature T of the soft term (1 keeps the distributions as they are; the term
    /// is scaled by T²).
    pub temperature: f64,
    /// Weight of the soft term; 0 trains the scratch baseline through the identical pipeline.
    pub alpha: f64,
    /// Also train the same student with `alpha = 0` in the same run and compare.
    #[serde(default)]
    pub scratch_twin: bool,
    /// The divergence between teacher and student distributions: `forward-kl` (default),
    /// `reverse-kl`, `jsd` (+ `beta`), `skew-kl` / `skew-reverse-kl` (+ `skew`), `tvd`.
    #[serde(default = "default_divergence")]
    pub divergence: DivergenceKind,
    /// `jsd`'s mixture weight β in [0, 1] (required there; GKD uses 0.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beta: Option<f64>,
    /// `skew-kl` / `skew-reverse-kl`'s skew α in [0, 1) (required there; DistiLLM uses 0.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skew: Option<f64>,
    /// Tokens per chunk of the loss: the student's logits and probabilities exist for this many
    /// tokens at a time, never for the whole batch (see `losses::chunked`).
    #[serde(default = "default_chunk_tokens")]
    pub chunk_tokens: usize,
    /// `[distill.on_policy]`: GKD — with probability λ a step trains on the student's own
    /// continuations, scored by the teacher (KD phases only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_policy: Option<on_policy::OnPolicyCfg>,
    /// Named KD variants: one more KD student per entry, trained with the logit term plus the
    /// variant's terms (`[distill.variants.attention] attention = { weight = 1 }`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub variants: BTreeMap<String, Variant>,
    /// `[distill.born_again]`: born-again generations after the KD student.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub born_again: Option<born_again::BornAgainCfg>,
    /// `[distill.multi_teacher]`: students distilled from `[teacher]` and `[[teachers]]` mixed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multi_teacher: Option<multi_teacher::MultiTeacherCfg>,
    /// The extra per-step terms (KD student only; the scratch twin never gets them).
    #[serde(flatten)]
    pub terms: Terms,
}

fn default_divergence() -> DivergenceKind {
    DivergenceCfg::default().divergence
}
fn default_chunk_tokens() -> usize {
    256
}

impl LmDistill {
    /// The divergence the recipe names (validated).
    pub fn divergence(&self) -> Result<Divergence> {
        DivergenceCfg { divergence: self.divergence, beta: self.beta, skew: self.skew }
            .validate()
            .map_err(|e| Error::Recipe(format!("distill: {e}")))
    }

    /// Checks values and every configured term.
    pub fn validate(&self, ctx: &TermContext) -> Result<()> {
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            return Err(Error::Recipe(format!("distill.temperature must be > 0, got {}", self.temperature)));
        }
        if !(0.0..=1.0).contains(&self.alpha) {
            return Err(Error::Recipe(format!("distill.alpha must be in [0, 1], got {}", self.alpha)));
        }
        self.divergence()?;
        if self.chunk_tokens == 0 {
            return Err(Error::Recipe("distill.chunk_tokens must be > 0".into()));
        }
        for t in self.terms.configured() {
            t.validate(ctx)?;
        }
        validate_variants(&self.variants, ctx)?;
        if let Some(b) = &self.born_again {
            b.validate()?;
            if self.alpha == 0.0 {
                return Err(Error::Recipe(
                    "distill.born_again starts from the KD student, but distill.alpha = 0 trains none".into(),
                ));
            }
        }
        Ok(())
    }
}

/// Variant names become directories; each variant names at least one term, each valid.
fn validate_variants(variants: &BTreeMap<String, Variant>, ctx: &TermContext) -> Result<()> {
    for (name, v) in variants {
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(Error::Recipe(format!(
                "distill.variants.{name:?}: a variant's name becomes a directory: letters, digits, - and _ only"
            )));
        }
        if v.terms.configured().is_empty() && v.lora.is_none() {
            return Err(Error::Recipe(format!(
                "distill.variants.{name} names no term (fitnets, attention_transfer, attention, rkd, hidden) and no lora: it would repeat plain KD"
            )));
        }
        if let Some(l) = &v.lora {
            if ctx.domain != Domain::Lm {
                return Err(Error::Recipe(format!(
                    "distill.variants.{name}.lora: LoRA adapters are for causal-LM students"
                )));
            }
            l.validate().map_err(|m| Error::Recipe(format!("distill.variants.{name}.lora: {m}")))?;
        }
        if let Some(lr) = v.lr {
            if !(lr > 0.0 && lr.is_finite()) {
                return Err(Error::Recipe(format!("distill.variants.{name}.lr must be > 0, got {lr}")));
            }
        }
        for t in v.terms.configured() {
            t.validate(ctx).map_err(|e| match e {
                Error::Recipe(m) => Error::Recipe(m.replacen("distill.", &format!("distill.variants.{name}."), 1)),
                e => e,
            })?;
        }
    }
    Ok(())
}

/// `[distill]` of an image recipe: Hinton's `α·T²·KL + (1−α)·CE` and the phases it adds.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageDistill {
    /// Softmax temperature T of the main KD run.
    pub temperature: f64,
    /// Weight α of the soft term: `α·T²·KL + (1−α)·CE`.
    pub alpha: f64,
    /// Extra KD runs at these temperatures (first seed only): the temperature sweep.
    #[serde(default)]
    pub sweep: Vec<f64>,
    /// Multi-teacher KD: after the seeds, evaluate the ensemble of every seed's teacher and
    /// distill one more student (the first seed's init) from it, soft targets
    /// `mean_k softmax(z_k/T)` (Hinton et al. 2015 distil an ensemble). Needs ≥ 2 seeds.
    #[serde(default)]
    pub ensemble: bool,
    /// Named KD variants: per seed, one more KD student trained with the logit term plus the
    /// variant's terms (`[distill.variants.fitnets] fitnets = { weight = 1 }`), so that methods
    /// are compared on the same student, data and budget in one run.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub variants: BTreeMap<String, Variant>,
    /// `[distill.born_again]`: born-again generations after the KD student.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub born_again: Option<born_again::BornAgainCfg>,
    /// `[distill.multi_teacher]`: students distilled from `[teacher]` and `[[teachers]]` together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multi_teacher: Option<multi_teacher::MultiTeacherCfg>,
    /// Extra terms of the main KD student (`[distill.fitnets]`, …).
    #[serde(flatten)]
    pub terms: Terms,
}

/// `[distill.variants.<name>]`: the extra terms of one KD variant.
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Variant {
    #[serde(flatten)]
    pub terms: Terms,
    /// Train LoRA adapters only (merged into the export) instead of every weight; default: the
    /// student's `[student.lora]`, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora: Option<crate::models::lm::LoraCfg>,
    /// The variant's learning rate (default `train.lr`): adapters usually want a larger one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
}

impl ImageDistill {
    /// Checks temperatures, α and the method sections (the seed count for `ensemble` and the
    /// teachers of `multi_teacher` are checked with the recipe).
    pub fn validate(&self, ctx: &TermContext) -> Result<()> {
        for t in self.terms.configured() {
            t.validate(ctx)?;
        }
        validate_variants(&self.variants, ctx)?;
        if let Some(b) = &self.born_again {
            b.validate()?;
        }
        for t in std::iter::once(&self.temperature).chain(&self.sweep) {
            if !(*t > 0.0 && t.is_finite()) {
                return Err(Error::Recipe(format!("distill: temperatures must be > 0, got {t}")));
            }
        }
        if !(0.0..=1.0).contains(&self.alpha) {
            return Err(Error::Recipe(format!("distill.alpha must be in [0, 1], got {}", self.alpha)));
        }
        Ok(())
    }
}
