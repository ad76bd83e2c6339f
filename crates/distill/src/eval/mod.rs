//! Honest evaluation of causal LMs: perplexity, agreement with a teacher, top-k next-token
//! tables, generations with collapse detectors, and throughput.

pub mod answers;
pub mod embed;
pub mod generate;
pub mod instruct;
pub mod verify;

use std::time::Instant;

use distill_text::TokenBlocks;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};
use tokenizers::Tokenizer;

use crate::data::text::lm_batch;
use crate::eval::generate::{generate_batch_until, top_k_next, GenerateOptions};
use crate::models::lm::{CausalLm, ForwardOptions};
use crate::{Error, Result};

/// What the run reports after training.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LmEval {
    /// Prompts for the top-k next-token tables and generations (default: four short English
    /// openings).
    pub prompts: Vec<String>,
    /// Tokens generated per prompt (default 50).
    pub max_new_tokens: usize,
    /// Rows of the next-token table (default 5).
    pub top_k_table: usize,
    /// Sampling for the sampled generations: temperature (default 0.8), top-k (default 50) and
    /// top-p (default 0.95).
    pub sample_temperature: f64,
    /// Top-k of the sampled generations (default 50).
    pub sample_top_k: usize,
    /// Top-p of the sampled generations (default 0.95).
    pub sample_top_p: f64,
    /// CTRL repetition penalty for a third, penalized greedy generation next to plain greedy
    /// and sampled (1.0 = leave it out; default 1.2).
    pub repetition_penalty: f64,
    /// Evaluate on at most this many validation rows (default: all).
    pub max_val_blocks: Option<usize>,
    /// Extra held-out text sources evaluated for perplexity (e.g. text never seen in training;
    /// default none).
    pub extra: Vec<distill_text::TextSource>,
    /// Held-out instructions (JSONL: `prompt`, optional `kind` and `answer`) every model answers
    /// greedily through the teacher's chat template: exact-answer accuracy where an answer is
    /// given, responses side by side in the report (default none).
    pub instructions: Option<String>,
    /// Tokens per instruction response (default 96).
    pub instruction_tokens: usize,
}

impl Default for LmEval {
    fn default() -> Self {
        LmEval {
            prompts: [
                "The capital of France is",
                "Once upon a time",
                "The history of the United States",
                "In the morning, the",
            ]
            .map(String::from)
            .to_vec(),
            max_new_tokens: 50,
            top_k_table: 5,
            sample_temperature: 0.8,
            sample_top_k: 50,
            sample_top_p: 0.95,
            repetition_penalty: 1.2,
            max_val_blocks: None,
            extra: Vec::new(),
            instructions: None,
            instruction_tokens: 96,
        }
    }
}

impl LmEval {
    /// Checks table sizes and sampling settings.
    pub fn validate(&self) -> Result<()> {
        let e = self;
        if e.top_k_table == 0 || e.sample_top_k == 0 || !(e.sample_top_p > 0.0 && e.sample_top_p <= 1.0) {
            return Err(Error::Recipe("eval: top_k_table and sample_top_k must be > 0, sample_top_p in (0, 1]".into()));
        }
        if e.sample_temperature.is_nan() || e.sample_temperature <= 0.0 {
            return Err(Error::Recipe("eval.sample_temperature must be > 0".into()));
        }
        if !(e.repetition_penalty >= 1.0 && e.repetition_penalty.is_finite()) {
            return Err(Error::Recipe(format!("eval.repetition_penalty must be ≥ 1, got {}", e.repetition_penalty)));
        }
        Ok(())
    }
}

/// Perplexity and, against a teacher, agreement on the same tokens.
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct LmScores {
    /// Number of predicted tokens.
    pub tokens: usize,
    /// Mean negative log-likelihood (nats/token).
    pub nll: f64,
    /// `exp(nll)`.
    pub perplexity: f64,
    /// Mean `KL(p_teacher ‖ p_model)` at T = 1 (nats/token), when a teacher was given.
    pub kl_to_teacher: Option<f64>,
    /// Fraction of positions where the model's argmax equals the teacher's.
    pub top1_agreement: Option<f64>,
}

/// Scores `model` on `blocks` (at most `max_rows` rows), optionally against `teacher`, with
/// batches of `batch` rows under no-grad.
pub fn score(
    model: &CausalLm,
    teacher: Option<&CausalLm>,
    blocks: &TokenBlocks,
    max_rows: Option<usize>,
    batch: usize,
) -> Result<LmScores> {
    Ok(score_many(&[model], teacher, blocks, max_rows, batch)?.1.remove(0))
}

/// [`score`] for several models on the same rows: the teacher runs once per batch for all of
/// them. Returns the teacher's own scores (NLL and perplexity; no KL or agreement) and each
/// model's.
pub fn score_many(
    models: &[&CausalLm],
    teacher: Option<&CausalLm>,
    blocks: &TokenBlocks,
    max_rows: Option<usize>,
    batch: usize,
) -> Result<(Option<LmScores>, Vec<LmScores>)> {
    let n = blocks.n_blocks().min(max_rows.unwrap_or(usize::MAX));
    if n == 0 {
        return Err(Error::Invalid("no evaluation rows (the text is shorter than one sequence)".into()));
    }
    let Some(first) = models.first().copied().or(teacher) else { return Ok((None, Vec::new())) };
    // Per model: summed NLL, KL to the teacher, top-1 agreements; the teacher's summed NLL.
    let mut sums = vec![(0f64, 0f64, 0f64); models.len()];
    let mut teacher_nll = 0f64;
    let mut count = 0usize;
    let opts = ForwardOptions::default();
    tch::no_grad(|| -> Result<()> {
        for start in (0..n).step_by(batch.max(1)) {
            let rows: Vec<usize> = (start..(start + batch).min(n)).collect();
            let b = lm_batch(blocks, &rows, first.device());
            let valid = b.targets.ge(0).view([-1]); // [B*T]
            let idx = valid.nonzero().squeeze_dim(1); // [N]
            if idx.numel() == 0 {
                continue;
            }
            let y = b.targets.view([-1]).index_select(0, &idx); // [N]
            let tlp = match teacher {
                Some(t) => {
                    let tl = t.forward(&b.ids, b.mask.as_ref(), opts)?.logits; // [B, T, V]
                    let v = tl.size()[2];
                    // [N, V]
                    Some(tl.view([-1, v]).index_select(0, &idx).log_softmax(-1, Kind::Float))
                }
                None => None,
            };
            if let Some(t) = &tlp {
                teacher_nll -= t.gather(1, &y.unsqueeze(1), false).sum(Kind::Double).double_value(&[]);
            }
            let t_top = tlp.as_ref().map(|t| t.argmax(-1, false)); // [N]
            let t_p = tlp.as_ref().map(|t| t.exp()); // [N, V]
            for (m, (nll, kl, agree)) in models.iter().zip(sums.iter_mut()) {
                let logits = m.forward(&b.ids, b.mask.as_ref(), opts)?.logits; // [B, T, V]
                let v = logits.size()[2];
                let lp = logits.view([-1, v]).index_select(0, &idx).log_softmax(-1, Kind::Float); // [N, V]
                *nll -= lp.gather(1, &y.unsqueeze(1), false).sum(Kind::Double).double_value(&[]);
                if let (Some(tlp), Some(tp), Some(top)) = (&tlp, &t_p, &t_top) {
                    *kl += (tp * (tlp - &lp)).sum(Kind::Double).double_value(&[]);
                    *agree += top.eq_tensor(&lp.argmax(-1, false)).sum(Kind::Double).double_value(&[]);
                }
            }
            count += idx.numel();
        }
        Ok(())
    })?;
    let c = count.max(1) as f64;
    let own = |nll: f64| LmScores {
        tokens: count,
        nll: nll / c,
        perplexity: (nll / c).exp(),
        kl_to_teacher: None,
        top1_agreement: None,
    };
    let students = sums
        .into_iter()
        .map(|(nll, kl, agree)| LmScores {
            kl_to_teacher: teacher.map(|_| kl / c),
            top1_agreement: teacher.map(|_| agree / c),
            ..own(nll)
        })
        .collect();
    Ok((teacher.map(|_| own(teacher_nll)), students))
}

/// One row of a top-k next-token table.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TopToken {
    pub token: String,
    pub id: i64,
    pub prob: f32,
}

/// The `k` most likely next tokens after `prompt`.
pub fn top_k_table(model: &CausalLm, tok: &Tokenizer, prompt: &str, k: usize) -> Result<Vec<TopToken>> {
    let ids = encode(tok, prompt)?;
    let top = top_k_next(model, &ids, k)?;
    Ok(top.into_iter().map(|(id, prob)| TopToken { token: decode_raw(tok, &[id as u32]), id, prob }).collect())
}

/// Token ids of `text` (no special tokens added).
pub fn encode(tok: &Tokenizer, text: &str) -> Result<Vec<i64>> {
    let enc = distill_base::guard::catch(|| tok.encode(text, false))
        .map_err(|p| Error::Invalid(format!("the tokenizer failed on the prompt: {p}")))?
        .map_err(|e| Error::Invalid(format!("cannot tokenize prompt: {e}")))?;
    let ids: Vec<i64> = enc.get_ids().iter().map(|&i| i as i64).collect();
    if ids.is_empty() {
        return Err(Error::Invalid("the prompt is empty after tokenization".into()));
    }
    Ok(ids)
}

/// A generated continuation with the detectors of mode collapse.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Generation {
    pub text: String,
    pub tokens: usize,
    /// Distinct bigrams / bigrams over the generated tokens (1.0 = no bigram repeats;
    /// ",,,,,,," gives ≈ 0).
    pub distinct_2: f64,
    /// Fraction of generated tokens that repeat an earlier generated token: `1 − distinct-1`.
    pub repetition_rate: f64,
}

impl Generation {
    /// Distinct-2 below which a generation counts as collapsed (looping).
    pub const COLLAPSE_DISTINCT_2: f64 = 0.5;

    /// Whether a generation of this distinct-2 is collapsed (a loop such as ",,,,,,").
    pub fn collapses(distinct_2: f64) -> bool {
        distinct_2 < Self::COLLAPSE_DISTINCT_2
    }

    /// Whether this generation is collapsed.
    pub fn collapsed(&self) -> bool {
        Self::collapses(self.distinct_2)
    }
}

/// `distinct-2` and repetition rate of a token sequence.
pub fn diversity(ids: &[i64]) -> (f64, f64) {
    use std::collections::HashSet;
    if ids.is_empty() {
        return (0.0, 0.0);
    }
    let uni: HashSet<i64> = ids.iter().copied().collect();
    let rep = 1.0 - uni.len() as f64 / ids.len() as f64;
    if ids.len() < 2 {
        return (1.0, rep);
    }
    let bi: HashSet<(i64, i64)> = ids.windows(2).map(|w| (w[0], w[1])).collect();
    (bi.len() as f64 / (ids.len() - 1) as f64, rep)
}

/// Generates a continuation of `prompt` and measures its diversity. Stops at `eos` unless
/// `ignore_eos`, so collapse detectors see full-length output.
pub fn generate_text(model: &CausalLm, tok: &Tokenizer, prompt: &str, opts: &GenerateOptions) -> Result<Generation> {
    Ok(generate_texts(model, tok, &[prompt.to_string()], opts, &[])?.remove(0))
}

/// One token's text with special tokens kept; empty when the tokenizer cannot decode it.
fn decode_raw(tok: &Tokenizer, ids: &[u32]) -> String {
    distill_base::guard::catch(|| tok.decode(ids, false)).ok().and_then(|r| r.ok()).unwrap_or_default()
}

/// Generated ids as text, special tokens dropped.
pub fn decode(tok: &Tokenizer, ids: &[i64]) -> Result<String> {
    let u: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
    distill_base::guard::catch(|| tok.decode(&u, true))
        .map_err(|p| Error::Invalid(format!("the tokenizer failed to decode: {p}")))?
        .map_err(|e| Error::Invalid(format!("cannot decode: {e}")))
}

/// Whether the text of `ids` already contains one of `stops`: the per-row stop rule of
/// [`generate_batch_until`] for stop strings.
pub fn reaches_stop(tok: &Tokenizer, ids: &[i64], stops: &[String]) -> bool {
    !stops.is_empty() && decode(tok, ids).is_ok_and(|t| first_stop(&t, stops).is_some())
}

/// Byte offset of the earliest occurrence of any of `stops` in `text` (empty strings never match).
pub fn first_stop(text: &str, stops: &[String]) -> Option<usize> {
    stops.iter().filter(|s| !s.is_empty()).filter_map(|s| text.find(s.as_str())).min()
}

/// [`generate_text`] for several prompts in one batch (see [`generate_batch_until`]). A row also
/// stops once its decoded text contains one of `stops`, and its text ends before the stop string
/// (as llama.cpp's server and OpenAI's API return it); `tokens` and the diversity measures count
/// every generated token.
pub fn generate_texts(
    model: &CausalLm,
    tok: &Tokenizer,
    prompts: &[String],
    opts: &GenerateOptions,
    stops: &[String],
) -> Result<Vec<Generation>> {
    let ids = prompts.iter().map(|p| encode(tok, p)).collect::<Result<Vec<_>>>()?;
    let stop = |_: usize, out: &[i64]| reaches_stop(tok, out, stops);
    generate_batch_until(model, &ids, opts, stop)?
        .into_iter()
        .map(|out| {
            let (d2, rep) = diversity(&out);
            let mut text = decode(tok, &out)?;
            if let Some(at) = first_stop(&text, stops) {
                text.truncate(at);
            }
            Ok(Generation { text, tokens: out.len(), distinct_2: d2, repetition_rate: rep })
        })
        .collect()
}

/// Forward throughput in tokens/s (full-sequence logits, no-grad) on `rows` × `seq` random ids;
/// median of 3 after one warm-up.
pub fn tokens_per_second(model: &CausalLm, rows: i64, seq: i64) -> Result<f64> {
    let v = model.config().vocab_size;
    let ids = Tensor::randint(v, [rows, seq], (Kind::Int64, model.device()));
    let mut times = Vec::new();
    tch::no_grad(|| -> Result<()> {
        for i in 0..4 {
            let t = Instant::now();
            let l = model.forward(&ids, None, ForwardOptions::default())?.logits;
            let _ = l.sum(Kind::Float).double_value(&[]);
            if i > 0 {
                times.push(t.elapsed().as_secs_f64());
            }
        }
        Ok(())
    })?;
    times.sort_by(f64::total_cmp);
    Ok((rows * seq) as f64 / times[1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_stop_finds_the_earliest_stop_string() {
        let stops = vec!["\n\n".to_string(), "User:".to_string(), String::new()];
        assert_eq!(first_stop("Paris.\n\nUser: next", &stops), Some(6));
        assert_eq!(first_stop("User: hi\n\n", &stops), Some(0));
        assert_eq!(first_stop("no stop here", &stops), None);
        assert_eq!(first_stop("anything", &[]), None);
    }

    #[test]
    fn diversity_flags_collapse() {
        let commas = vec![11i64; 50];
        let (d2, rep) = diversity(&commas);
        assert!((d2 - 1.0 / 49.0).abs() < 1e-12);
        assert!((rep - 49.0 / 50.0).abs() < 1e-12);
        let varied: Vec<i64> = (0..50).collect();
        assert_eq!(diversity(&varied), (1.0, 0.0));
        let abab = [1i64, 2, 1, 2, 1];
        assert_eq!(diversity(&abab), (0.5, 0.6));
    }
}
