//! The summary of an LM run (`summary.json`) and its plain-text report (`report.txt`, printed
//! at the end of `distill run`): the comparison table, next-token tables, generations and the
//! collapse table.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::eval::instruct::{AnswerScores, KindGrades};
use crate::eval::{Generation, LmScores, TopToken};
use crate::train::TrainReport;

/// One model's line in the summary.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelReport {
    pub role: String,
    pub params: i64,
    pub size_bytes: u64,
    pub compression_ratio: f64,
    pub tokens_per_s: f64,
    pub validation: LmScores,
    /// Perplexity on each `eval.extra` source, in order.
    pub extra: Vec<LmScores>,
    pub train: Option<TrainReport>,
    pub path: Option<PathBuf>,
    /// The phase (its directory under `phases/`) and the phases it learned from (`teacher` for
    /// the recipe's teacher).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub taught_by: Vec<String>,
    /// Exact-answer grades on `eval.instructions`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answers: Option<AnswerScores>,
}

/// Per prompt: next-token tables and generations, per model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PromptReport {
    pub prompt: String,
    pub top_k: Vec<(String, Vec<TopToken>)>,
    pub greedy: Vec<(String, Generation)>,
    /// Greedy with `eval.repetition_penalty` (empty when it is 1).
    #[serde(default)]
    pub penalized: Vec<(String, Generation)>,
    pub sampled: Vec<(String, Generation)>,
}

/// One prompt's generations of every model under one decoding.
type Generations = [(String, Generation)];

impl PromptReport {
    /// The generations by decoding, as the report names them.
    pub fn by_decoding(&self) -> [(&'static str, &Generations); 3] {
        [("greedy", &self.greedy), ("greedy+rp", &self.penalized), ("sampled", &self.sampled)]
    }
}

/// `summary.json` of an LM run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LmSummary {
    pub recipe: String,
    pub teacher: ModelReport,
    pub students: Vec<ModelReport>,
    pub prompts: Vec<PromptReport>,
    pub extra_sources: Vec<String>,
    pub train_tokens: usize,
    pub validation_tokens: usize,
    /// KD student perplexity / scratch twin perplexity on validation (when both ran).
    pub ppl_ratio_kd_over_scratch: Option<f64>,
    /// The penalty of the `greedy+rp` generations (1 = none were made).
    #[serde(default = "no_penalty")]
    pub repetition_penalty: f64,
    /// The online teacher's precision during training and why (`None`: no online teacher).
    #[serde(default)]
    pub teacher_train_dtype: Option<String>,
    /// `eval.instructions`: every model's greedy response per instruction (`greedy` only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instructions: Vec<PromptReport>,
    /// `eval.instructions`: per model, per kind, (correct, graded).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub answers_by_kind: Vec<(String, KindGrades)>,
}

/// A summary without `repetition_penalty` made no penalized generations.
fn no_penalty() -> f64 {
    1.0
}

/// The human-readable comparison printed at the end of a run.
pub fn report(s: &LmSummary) -> String {
    let mut o = String::new();
    o +=
        &format!("== {}: {} training tokens, {} validation tokens ==\n", s.recipe, s.train_tokens, s.validation_tokens);
    o += &format!(
        "{:<20} {:>11} {:>9} {:>7} {:>9} {:>10} {:>9} {:>8}",
        "model", "params", "size MB", "compr.", "tok/s", "val PPL", "KL(t‖s)", "top-1 ="
    );
    for src in &s.extra_sources {
        let short = Path::new(src).file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
        o += &format!(" {:>14}", format!("PPL {}", &short[..short.len().min(10)]));
    }
    o.push('\n');
    for m in std::iter::once(&s.teacher).chain(&s.students) {
        let opt = |v: Option<f64>, pct: bool| match v {
            Some(x) if pct => format!("{:.1}%", x * 100.0),
            Some(x) => format!("{x:.3}"),
            None => "-".into(),
        };
        o += &format!(
            "{:<20} {:>11} {:>9.1} {:>6.1}x {:>9.0} {:>10.2} {:>9} {:>8}",
            m.role,
            m.params,
            m.size_bytes as f64 / 1e6,
            m.compression_ratio,
            m.tokens_per_s,
            m.validation.perplexity,
            opt(m.validation.kl_to_teacher, false),
            opt(m.validation.top1_agreement, true)
        );
        for e in &m.extra {
            o += &format!(" {:>14.2}", e.perplexity);
        }
        o.push('\n');
    }
    let trained: Vec<&ModelReport> = s.students.iter().filter(|m| m.train.is_some()).collect();
    if trained.iter().any(|m| m.train.as_ref().is_some_and(|t| t.trainable_params.is_some())) {
        o += &format!(
            "{:<20} {:>7} {:>9} {:>17} {:>13}\n",
            "training", "steps", "seconds", "trained params", "peak RSS MB"
        );
        for m in trained {
            let t = m.train.as_ref().expect("filtered");
            let params = t.trainable_params.map_or("-".into(), |p| p.to_string());
            let rss = t.peak_rss_mb.map_or("-".into(), |r| format!("{r:.0}"));
            o += &format!("{:<20} {:>7} {:>9.0} {params:>17} {rss:>13}\n", m.role, t.steps, t.seconds);
        }
    }
    if let Some(r) = s.ppl_ratio_kd_over_scratch {
        o += &format!("KD student / scratch twin validation perplexity: {r:.3}\n");
    }
    if let Some(d) = &s.teacher_train_dtype {
        o += &format!("teacher during training: {d}; evaluation: f32\n");
    }
    if s.repetition_penalty != 1.0 {
        o += &format!(
            "generations: greedy; greedy+rp = greedy with repetition penalty {} (CTRL, Keskar et al. 2019); sampled\n",
            s.repetition_penalty
        );
    }
    for p in &s.prompts {
        o += &format!("\n-- \"{}\" --\n", p.prompt);
        o += "top next tokens:\n";
        for (role, top) in &p.top_k {
            let cells: Vec<String> = top.iter().map(|t| format!("{:?} {:.1}%", t.token, t.prob * 100.0)).collect();
            o += &format!("  {:<20} {}\n", role, cells.join(" | "));
        }
        for (kind, gens) in p.by_decoding() {
            for (role, g) in gens {
                o += &format!(
                    "  {kind:<9} {role:<20} [distinct-2 {:.2}, repetition {:.2}] {:?}\n",
                    g.distinct_2, g.repetition_rate, g.text
                );
            }
        }
    }
    o += &collapse_table(s);
    o += &instructions_table(s);
    o
}

/// `eval.instructions`: exact-answer accuracy per model and kind, then every response.
fn instructions_table(s: &LmSummary) -> String {
    if s.instructions.is_empty() {
        return String::new();
    }
    let kinds: Vec<&String> = s.answers_by_kind.first().map(|(_, k)| k.keys().collect()).unwrap_or_default();
    let mut o = format!("\nheld-out instructions ({}): exact answers right / graded\n{:<22}", s.instructions.len(), "");
    for k in &kinds {
        o += &format!(" {k:>12}");
    }
    o += &format!(" {:>12} {:>10}\n", "all", "collapsed");
    for m in std::iter::once(&s.teacher).chain(&s.students) {
        let Some(a) = &m.answers else { continue };
        o += &format!("  {:<20}", m.role);
        let by_kind = s.answers_by_kind.iter().find(|(r, _)| r == &m.role).map(|(_, k)| k);
        for k in &kinds {
            let cell = by_kind.and_then(|b| b.get(*k)).map_or("-".into(), |(c, g)| format!("{c}/{g}"));
            o += &format!(" {cell:>12}");
        }
        let all = format!("{}/{} {:.0}%", a.correct, a.graded, 100.0 * a.accuracy.unwrap_or(0.0));
        o += &format!(" {all:>12} {:>10}\n", a.collapsed);
    }
    for p in &s.instructions {
        o += &format!("\n-- {} --\n", p.prompt);
        for (role, g) in &p.greedy {
            o += &format!("  {role:<20} {:?}\n", g.text);
        }
    }
    o
}

/// Per model and decoding, how many prompts' generations are not collapsed (distinct-2 ≥ 0.5).
fn collapse_table(s: &LmSummary) -> String {
    if s.prompts.is_empty() {
        return String::new();
    }
    let mut o = format!(
        "\nnot collapsed (distinct-2 >= {} over the generated tokens), prompts:\n{:<22}",
        Generation::COLLAPSE_DISTINCT_2,
        ""
    );
    for (kind, _) in s.prompts[0].by_decoding() {
        o += &format!(" {kind:>10}");
    }
    o.push('\n');
    for role in std::iter::once(&s.teacher.role).chain(s.students.iter().map(|m| &m.role)) {
        o += &format!("  {role:<20}");
        for k in 0..3 {
            let found: Vec<f64> = s
                .prompts
                .iter()
                .filter_map(|p| p.by_decoding()[k].1.iter().find(|(r, _)| r == role).map(|(_, g)| g.distinct_2))
                .collect();
            let cell = if found.is_empty() {
                "-".to_owned()
            } else {
                format!("{}/{}", found.iter().filter(|&&d| !Generation::collapses(d)).count(), found.len())
            };
            o += &format!(" {cell:>10}");
        }
        o.push('\n');
    }
    o
}
