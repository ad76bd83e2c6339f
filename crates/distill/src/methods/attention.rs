//! Self-attention KD for transformers (`[distill.attention]`): MiniLM (Wang et al. 2020, "Deep
//! Self-Attention Distillation") and MiniLMv2 (Wang et al. 2021, "Multi-Head Self-Attention
//! Relation Distillation"). At mapped layers the student's self-attention *relations* are pulled
//! toward the teacher's:
//!
//! ```text
//! + β · (1/|P|) Σ_{(s,t)∈P} (1/|K|) Σ_{k∈K} KL(R^k_t ‖ R^k_s)
//! ```
//!
//! - `qq`, `kk`, `vv` (MiniLMv2, the default `K`): a layer's queries, keys or values (heads
//!   concatenated) are split into the same number of *relation heads* on both sides and
//!   `R = softmax(X Xᵀ / sqrt(d_r))` over the positions a token may attend — so a teacher with 9
//!   heads (SmolLM2) teaches a student with 4;
//! - `attention` (MiniLM): the attention maps themselves, `softmax(Q Kᵀ/√d)`; both models must
//!   have the same number of heads.
//!
//! KL per query row, averaged over heads and real positions (formula and test in
//! [`crate::losses::relation`]). Memory: `[B, heads, T, T]` per relation of a mapped layer only;
//! MiniLM maps the last layers (the default), MiniLMv2 suggests an upper-middle teacher layer
//! for large teachers. Needs the online teacher. No parameters of its own.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::{BuildContext, Domain, Needs, StepStates, Term, TermConfig, TermContext};
use crate::losses::relation::{attention_kl, relation_kl};
use crate::{Error, Result};

/// Which self-attention relation a term matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Relation {
    /// Query–query relations (MiniLMv2).
    Qq,
    /// Key–key relations (MiniLMv2).
    Kk,
    /// Value–value relations (MiniLM, MiniLMv2).
    Vv,
    /// The attention distributions (MiniLM; equal head counts).
    Attention,
}

/// `[distill.attention]`.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AttentionKdCfg {
    /// β, the weight of the term (≥ 0; default 1).
    pub weight: f64,
    /// The relations compared (default `["qq", "kk", "vv"]`, MiniLMv2).
    pub relations: Vec<Relation>,
    /// Relation heads for `qq`/`kk`/`vv`: must divide the query, key and value widths of both
    /// models; default: the student's attention heads when that divides them all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relation_heads: Option<i64>,
    /// `[[student_layer, teacher_layer], …]`, 1-based; default: the last layer of each.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layers: Option<Vec<[usize; 2]>>,
}

impl Default for AttentionKdCfg {
    fn default() -> Self {
        AttentionKdCfg {
            weight: 1.0,
            relations: vec![Relation::Qq, Relation::Kk, Relation::Vv],
            relation_heads: None,
            layers: None,
        }
    }
}

impl TermConfig for AttentionKdCfg {
    fn key(&self) -> &'static str {
        "attention"
    }

    fn validate(&self, ctx: &TermContext) -> Result<()> {
        if ctx.domain == Domain::Image {
            return Err(Error::Recipe(
                "distill.attention is for transformer (LM) students; CNN students use distill.attention_transfer"
                    .into(),
            ));
        }
        if !(self.weight >= 0.0 && self.weight.is_finite()) {
            return Err(Error::Recipe(format!("distill.attention.weight must be ≥ 0, got {}", self.weight)));
        }
        if self.relations.is_empty() {
            return Err(Error::Recipe("distill.attention.relations is empty (qq, kk, vv, attention)".into()));
        }
        if let Some(h) = self.relation_heads {
            if h <= 0 {
                return Err(Error::Recipe(format!("distill.attention.relation_heads must be > 0, got {h}")));
            }
        }
        if matches!(&self.layers, Some(l) if l.is_empty()) {
            return Err(Error::Recipe("distill.attention.layers is empty (leave it out for the last layers)".into()));
        }
        if let Some(&[s, t]) = self.layers.iter().flatten().find(|&&[s, _]| s == 0 || s > ctx.student_layers) {
            return Err(Error::Recipe(format!(
                "distill.attention.layers: [{s}, {t}]: student layers are 1..={} (attention lives in the blocks)",
                ctx.student_layers
            )));
        }
        if !ctx.online_teacher {
            return Err(Error::Recipe(
                "distill.attention needs the online teacher: teacher.cache holds only its output distributions".into(),
            ));
        }
        Ok(())
    }

    fn build(&self, ctx: BuildContext<'_>) -> Result<Box<dyn Term>> {
        let (ls, lt) = (ctx.student_layers, ctx.teacher_layers);
        let pairs: Vec<(usize, usize)> = match &self.layers {
            Some(l) => l.iter().map(|&[s, t]| (s, t)).collect(),
            None => vec![(ls, lt)],
        };
        if let Some(&(s, t)) = pairs.iter().find(|&&(s, t)| s == 0 || t == 0 || s > ls || t > lt) {
            return Err(Error::Recipe(format!(
                "distill.attention.layers: [{s}, {t}] is outside the student's 1..={ls} or the teacher's 1..={lt} layers"
            )));
        }
        let widths: Vec<i64> = ctx.student_qkv.iter().chain(&ctx.teacher_qkv).copied().collect();
        let divides = |h: i64| h > 0 && widths.iter().all(|w| w % h == 0);
        let wants_split = self.relations.iter().any(|r| *r != Relation::Attention);
        let heads = match self.relation_heads {
            Some(h) if wants_split && !divides(h) => {
                return Err(Error::Recipe(format!(
                    "distill.attention.relation_heads = {h} does not divide the query/key/value widths {:?} (student) and {:?} (teacher)",
                    ctx.student_qkv, ctx.teacher_qkv
                )))
            }
            Some(h) => h,
            None => {
                // The student's heads, else the largest divisor of every width below them.
                (1..=ctx.student_heads.max(1)).rev().find(|&h| divides(h)).unwrap_or(1)
            }
        };
        if self.relations.contains(&Relation::Attention) && ctx.student_heads != ctx.teacher_heads {
            return Err(Error::Recipe(format!(
                "distill.attention.relations: \"attention\" compares attention maps head by head, but the student has {} heads and the teacher {}; use the relations qq/kk/vv (MiniLMv2)",
                ctx.student_heads, ctx.teacher_heads
            )));
        }
        Ok(Box::new(AttentionKd { pairs, relations: self.relations.clone(), heads, weight: self.weight }))
    }
}

/// The built term.
pub struct AttentionKd {
    /// (student layer, teacher layer), 1-based.
    pairs: Vec<(usize, usize)>,
    relations: Vec<Relation>,
    heads: i64,
    weight: f64,
}

impl Term for AttentionKd {
    fn name(&self) -> &'static str {
        "attention"
    }

    fn describe(&self) -> String {
        let shown: Vec<String> = self.pairs.iter().map(|(s, t)| format!("{s}→{t}")).collect();
        let rel: Vec<String> = self.relations.iter().map(|r| format!("{r:?}").to_lowercase()).collect();
        format!(
            "self-attention relation KD (MiniLM; {} over {} relation heads, weight {}), student→teacher layers {}",
            rel.join("+"),
            self.heads,
            self.weight,
            shown.join(" ")
        )
    }

    fn needs(&self) -> Needs {
        let maps = self.relations.contains(&Relation::Attention);
        let split = self.relations.iter().any(|r| *r != Relation::Attention);
        Needs { attentions: maps, qkv: split, ..Needs::default() }
    }

    /// # Shapes
    /// Per layer: queries/keys/values `[B, T, D]`, attention maps `[B, nh, T, T]` → scalar.
    fn loss(&self, student: &StepStates<'_>, teacher: &StepStates<'_>) -> Result<Tensor> {
        let mut sum: Option<Tensor> = None;
        for &(s, t) in &self.pairs {
            for r in &self.relations {
                let l = match r {
                    Relation::Attention => {
                        let (Some(a), Some(b)) = (student.attentions.get(s - 1), teacher.attentions.get(t - 1)) else {
                            return Err(Error::Invalid(format!("attention maps of layers ({s}, {t}) are missing")));
                        };
                        attention_kl(a, b, student.mask)
                    }
                    rel => {
                        let (Some(a), Some(b)) = (student.qkv.get(s - 1), teacher.qkv.get(t - 1)) else {
                            return Err(Error::Invalid(format!(
                                "queries/keys/values of layers ({s}, {t}) are missing"
                            )));
                        };
                        let (xs, xt) = match rel {
                            Relation::Qq => (&a.q, &b.q),
                            Relation::Kk => (&a.k, &b.k),
                            _ => (&a.v, &b.v),
                        };
                        relation_kl(xs, xt, self.heads, student.mask)
                    }
                };
                sum = Some(match sum {
                    Some(x) => x + l,
                    None => l,
                });
            }
        }
        let n = (self.pairs.len() * self.relations.len()) as f64;
        let sum = sum.unwrap_or_else(|| Tensor::zeros([], (Kind::Float, tch::Device::Cpu)));
        Ok(sum * (self.weight / n))
    }
}
