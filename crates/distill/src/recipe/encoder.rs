//! `task = "sentence-embedding"`: a BERT sentence encoder (sentence-transformers layout)
//! distilled into a DistilBERT-style shallower student, optionally a narrower one and a static
//! (Model2Vec) one, all judged downstream on a labelled set (probe, retrieval agreement,
//! cosine to the teacher, speed).

use serde::{Deserialize, Serialize};

use super::Task;
use crate::eval::embed::EncoderEvalCfg;
use crate::methods::{
    attention::AttentionKdCfg, attention::Relation, hidden::HiddenKdCfg, Domain, TermConfig, TermContext,
};
use crate::student::encoder::{NarrowShape, StaticCfg};
use crate::train::CheckpointCfg;
use crate::train::TrainCfg;
use crate::{Error, Result};

/// A sentence-embedding recipe.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EncoderRecipe {
    /// `"sentence-embedding"`.
    pub task: Task,
    /// The run's name (reports, exported models).
    pub name: String,
    /// Seed of initialization, data order and splits.
    #[serde(default)]
    pub seed: u64,
    /// Intra-op threads (default: every core; `distill run --threads` overrides).
    #[serde(default)]
    pub threads: Option<usize>,
    /// The teacher encoder.
    pub teacher: EncoderTeacher,
    /// The students distilled from it.
    #[serde(default)]
    pub student: EncoderStudents,
    /// Labelled and unlabeled texts.
    pub data: EncoderData,
    /// Optimizer, steps, batch.
    pub train: TrainCfg,
    /// The losses between student and teacher embeddings.
    #[serde(default)]
    pub distill: EncoderDistill,
    /// The probe, retrieval and speed evaluation.
    #[serde(default)]
    pub eval: EncoderEvalCfg,
    /// Checkpoint cadence.
    #[serde(default)]
    pub checkpoint: CheckpointCfg,
    /// `metrics.jsonl` cadence and progress lines off a terminal.
    #[serde(default)]
    pub log: crate::train::LogCfg,
}

/// `[teacher]`: a BERT directory (sentence-transformers layout or a plain BertModel).
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EncoderTeacher {
    /// A BERT directory (sentence-transformers layout or a plain BertModel), or `asset:minilm`.
    pub path: String,
}

/// `[student]`: the DistilBERT-style student, and the optional narrow and static ones.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct EncoderStudents {
    /// Depth of the main student: every other teacher layer, ending at the last (default 3).
    pub layers: i64,
    /// Explicit teacher layers to copy instead (0-based).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer_ids: Option<Vec<i64>>,
    /// Dropout while the students train (hidden states and attention probabilities; default
    /// 0.1, BERT's).
    pub dropout: f64,
    /// A narrower student initialised by projection (`hidden`, `heads`, `intermediate`,
    /// `layers`), with a Dense head back to the teacher's width.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub narrow: Option<NarrowShape>,
    /// A static (Model2Vec) student.
    #[serde(rename = "static", skip_serializing_if = "Option::is_none")]
    pub static_: Option<StaticCfg>,
}

impl Default for EncoderStudents {
    fn default() -> Self {
        EncoderStudents { layers: 3, layer_ids: None, dropout: 0.1, narrow: None, static_: None }
    }
}

/// `[data]`: the labelled set (probe, held-out texts) and the unlabeled training text.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EncoderData {
    /// Labelled documents: JSONL with `text` and `label`, or a SpamAssassin-style directory.
    pub labelled: String,
    /// Share of labelled documents held out (split by document text).
    #[serde(default = "default_test_fraction")]
    pub test_fraction: f64,
    /// Seed of the held-out split and of `max_train_texts`' draw.
    #[serde(default)]
    pub split_seed: u64,
    /// Train the students on the labelled training split's texts too (labels unused).
    #[serde(default = "default_true")]
    pub train_on_labelled: bool,
    /// More unlabeled text (files, directories, globs; Brown, JSONL, plain), cut into passages
    /// of `passage_words` words.
    #[serde(default)]
    pub train_sources: Vec<distill_text::TextSource>,
    /// Words per passage cut from `train_sources` (default 64).
    #[serde(default = "default_passage_words")]
    pub passage_words: usize,
    /// Tokens per training text (special tokens included).
    #[serde(default = "default_train_tokens")]
    pub train_max_tokens: usize,
    /// At most this many training texts, drawn with `split_seed` (0 = all).
    #[serde(default)]
    pub max_train_texts: usize,
}

fn default_test_fraction() -> f64 {
    0.2
}
fn default_true() -> bool {
    true
}
fn default_passage_words() -> usize {
    96
}
fn default_train_tokens() -> usize {
    128
}

/// `[distill]`: the embedding loss weights and optional per-token terms.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct EncoderDistill {
    /// Weight of `mean(1 − cos(s, t))` on sentence embeddings (default 1).
    pub cosine: f64,
    /// Weight of `mean((s − t)²)` on sentence embeddings (default 1).
    pub mse: f64,
    /// Hidden-state KD between mapped layers at the real tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hidden: Option<HiddenKdCfg>,
    /// MiniLM attention-map KD (`relations = ["attention"]`; equal head counts).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attention: Option<AttentionKdCfg>,
}

impl Default for EncoderDistill {
    fn default() -> Self {
        EncoderDistill { cosine: 1.0, mse: 1.0, hidden: None, attention: None }
    }
}

impl EncoderDistill {
    /// The configured per-token terms.
    pub fn terms(&self) -> Vec<&dyn TermConfig> {
        let mut v: Vec<&dyn TermConfig> = Vec::new();
        if let Some(h) = &self.hidden {
            v.push(h);
        }
        if let Some(a) = &self.attention {
            v.push(a);
        }
        v
    }
}

impl EncoderRecipe {
    /// Checks what needs no tensor.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Recipe(m));
        if self.student.layers < 1 {
            return bad(format!("student.layers must be ≥ 1, got {}", self.student.layers));
        }
        if let Some(ids) = &self.student.layer_ids {
            if ids.is_empty() || ids.iter().any(|&l| l < 0) {
                return bad(format!("student.layer_ids: {ids:?} must be non-empty, 0-based layers"));
            }
        }
        if !(0.0..1.0).contains(&self.student.dropout) {
            return bad(format!("student.dropout must be in [0, 1), got {}", self.student.dropout));
        }
        if let Some(n) = &self.student.narrow {
            if n.layers < 1 || n.hidden < 1 || n.heads < 1 || n.intermediate < 1 || n.hidden % n.heads != 0 {
                return bad(
                    "student.narrow: layers, hidden, heads, intermediate must be ≥ 1, hidden divisible by heads".into(),
                );
            }
        }
        if let Some(s) = &self.student.static_ {
            if s.dim < 1 || s.sif < 0.0 || s.batch == 0 {
                return bad("student.static: dim ≥ 1, sif ≥ 0, batch ≥ 1".into());
            }
        }
        let d = &self.data;
        if !(d.test_fraction > 0.0 && d.test_fraction < 1.0) {
            return bad(format!("data.test_fraction must be in (0, 1), got {}", d.test_fraction));
        }
        if d.train_max_tokens < 3 || d.passage_words == 0 {
            return bad("data.train_max_tokens must be ≥ 3 and data.passage_words ≥ 1".into());
        }
        if !d.train_on_labelled && d.train_sources.is_empty() {
            return bad("data: no training text (set train_sources or train_on_labelled = true)".into());
        }
        self.train.validate("train")?;
        let dist = &self.distill;
        if dist.cosine < 0.0 || dist.mse < 0.0 || dist.cosine + dist.mse == 0.0 {
            return bad("distill.cosine and distill.mse must be ≥ 0, not both 0".into());
        }
        let ctx =
            TermContext { domain: Domain::Lm, student_layers: self.student.layers as usize, online_teacher: true };
        for t in dist.terms() {
            t.validate(&ctx)?;
        }
        if let Some(a) = &dist.attention {
            if a.relations.iter().any(|r| *r != Relation::Attention) {
                return bad(
                    "distill.attention: encoders take relations = [\"attention\"] (the q/k/v relations are causal)"
                        .into(),
                );
            }
        }
        let e = &self.eval;
        if e.top_k == 0 || e.batch == 0 || e.retrieval_texts < 2 || e.speed_texts == 0 {
            return bad("eval: top_k, batch, speed_texts ≥ 1 and retrieval_texts ≥ 2".into());
        }
        if self.checkpoint.every_steps == 0 {
            return bad("checkpoint.every_steps must be ≥ 1".into());
        }
        self.log.validate().map_err(Error::Recipe)?;
        crate::io::fetch::check_path(&self.teacher.path, "teacher.path")?;
        crate::io::fetch::check_path(&self.data.labelled, "data.labelled")?;
        Ok(())
    }

    /// Every path in the recipe, as written.
    pub fn paths(&self) -> Vec<&str> {
        let mut v = vec![self.teacher.path.as_str(), self.data.labelled.as_str()];
        v.extend(self.data.train_sources.iter().map(|s| s.path.as_str()));
        v
    }
}
