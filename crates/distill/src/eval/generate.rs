//! Autoregressive generation and next-token tables for a [`CausalLm`].
//!
//! Decoding uses the model's KV cache: the prompt is run once, then one token per step.
//! Sampling follows transformers' order (temperature → top-k → top-p → softmax → draw) and uses
//! its own seeded generator (SplitMix64), so a seed gives the same tokens on every run and does
//! not touch libtorch's global RNG.

use tch::{Device, Kind, Tensor};

use crate::data::rng::SplitMix64;
use crate::models::lm::{CausalLm, KvCache};
use crate::{Error, Result};

/// Decoding settings.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// Upper bound on generated tokens.
    pub max_new_tokens: usize,
    /// Softmax temperature; 0 = greedy (argmax, first index on ties).
    pub temperature: f64,
    /// Keep only the `top_k` most likely tokens (0 = off).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches `top_p` (1.0 = off).
    pub top_p: f64,
    /// Seed of the sampling generator.
    pub seed: u64,
    /// Stop after emitting this token (it is included in the output).
    pub eos_id: Option<i64>,
    /// CTRL's repetition penalty (Keskar et al. 2019; transformers' `repetition_penalty`): the
    /// logit of every token already in the prompt or the output is divided by it when positive
    /// and multiplied by it when negative, before temperature, top-k and top-p. 1.0 = off.
    pub repetition_penalty: f64,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            max_new_tokens: 32,
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
            eos_id: None,
            repetition_penalty: 1.0,
        }
    }
}

fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best
}

/// Applies the repetition penalty to `logits` for every distinct id of `seen`.
fn penalize(logits: &mut [f32], seen: &[i64], penalty: f64) {
    if penalty == 1.0 {
        return;
    }
    let penalty = penalty as f32;
    let mut done = std::collections::HashSet::with_capacity(seen.len());
    for &id in seen {
        if done.insert(id) {
            let l = &mut logits[id as usize];
            *l = if *l > 0.0 { *l / penalty } else { *l * penalty };
        }
    }
}

/// Picks the next token from one row of logits.
fn pick(logits: &[f32], opts: &GenerateOptions, rng: &mut SplitMix64) -> usize {
    if opts.temperature == 0.0 {
        return argmax(logits);
    }
    let mut s: Vec<f64> = logits.iter().map(|&l| l as f64 / opts.temperature).collect();
    if opts.top_k > 0 && opts.top_k < s.len() {
        let mut sorted = s.clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        let thr = sorted[opts.top_k - 1];
        s.iter_mut().filter(|v| **v < thr).for_each(|v| *v = f64::NEG_INFINITY);
    }
    let softmax = |s: &[f64]| -> Vec<f64> {
        let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = s.iter().map(|v| (v - m).exp()).collect();
        let z: f64 = e.iter().sum();
        e.into_iter().map(|v| v / z).collect()
    };
    if opts.top_p < 1.0 {
        // As transformers: sort ascending, drop tokens while the cumulative mass ≤ 1 − top_p,
        // always keeping the most likely one.
        let p = softmax(&s);
        let mut order: Vec<usize> = (0..s.len()).collect();
        order.sort_by(|&a, &b| p[a].total_cmp(&p[b]));
        let mut cum = 0.0;
        for (rank, &i) in order.iter().enumerate() {
            cum += p[i];
            if cum <= 1.0 - opts.top_p && rank + 1 < order.len() {
                s[i] = f64::NEG_INFINITY;
            }
        }
    }
    let p = softmax(&s);
    let u = rng.next_f64();
    let mut cum = 0.0;
    let mut last_nonzero = 0;
    for (i, &pi) in p.iter().enumerate() {
        if pi > 0.0 {
            last_nonzero = i;
            cum += pi;
            if u < cum {
                return i;
            }
        }
    }
    last_nonzero
}

fn validate(model: &CausalLm, prompt_ids: &[i64], opts: &GenerateOptions) -> Result<()> {
    if prompt_ids.is_empty() {
        return Err(Error::Invalid("generate: the prompt is empty".into()));
    }
    if !(opts.temperature >= 0.0 && opts.temperature.is_finite()) {
        return Err(Error::Invalid(format!("generate: temperature must be ≥ 0, got {}", opts.temperature)));
    }
    if !(opts.repetition_penalty > 0.0 && opts.repetition_penalty.is_finite()) {
        return Err(Error::Invalid(format!(
            "generate: repetition_penalty must be > 0, got {}",
            opts.repetition_penalty
        )));
    }
    if !(opts.top_p > 0.0 && opts.top_p <= 1.0) {
        return Err(Error::Invalid(format!("generate: top_p must be in (0, 1], got {}", opts.top_p)));
    }
    let v = model.config().vocab_size;
    if let Some(&bad) = prompt_ids.iter().find(|&&t| t < 0 || t >= v) {
        return Err(Error::Invalid(format!("generate: token id {bad} outside the vocabulary (size {v})")));
    }
    Ok(())
}

/// Last-position logits of every row of `logits` `[B, T, V]`, as f32 rows of length V.
fn last_rows(logits: &Tensor) -> Result<Vec<Vec<f32>>> {
    let (b, t, v) = logits.size3()?;
    let rows = logits.f_select(1, t - 1)?.f_to_kind(Kind::Float)?.f_contiguous()?; // [B, V]
    let flat = Vec::<f32>::try_from(&rows.f_view([-1])?)?;
    debug_assert_eq!(flat.len() as i64, b * v);
    Ok(flat.chunks(v as usize).map(<[f32]>::to_vec).collect())
}

/// Generates up to `max_new_tokens` after `prompt_ids`; returns only the new tokens (ending with
/// `eos_id` when it was produced).
pub fn generate(model: &CausalLm, prompt_ids: &[i64], opts: &GenerateOptions) -> Result<Vec<i64>> {
    Ok(generate_batch(model, &[prompt_ids.to_vec()], opts)?.remove(0))
}

/// [`generate`] for several prompts at once: one left-padded batch through one KV cache, so a
/// decoding step reads the weights once for all rows. Row i is what `generate(model,
/// &prompts[i], opts)` returns (the same per-row sampler, seeded with `opts.seed`), up to the
/// float rounding of the masked attention; a row stops at its own `eos_id`.
pub fn generate_batch(model: &CausalLm, prompts: &[Vec<i64>], opts: &GenerateOptions) -> Result<Vec<Vec<i64>>> {
    generate_batch_until(model, prompts, opts, |_, _| false)
}

/// [`generate_batch`] where row i also stops as soon as `stop(i, tokens)` holds for its tokens so
/// far (the last one included): stop strings, with the caller decoding.
pub fn generate_batch_until(
    model: &CausalLm,
    prompts: &[Vec<i64>],
    opts: &GenerateOptions,
    stop: impl Fn(usize, &[i64]) -> bool,
) -> Result<Vec<Vec<i64>>> {
    generate_batch_seeded(model, prompts, &vec![opts.seed; prompts.len()], opts, stop)
}

/// [`generate_batch_until`] with row i's sampler seeded by `seeds[i]` instead of `opts.seed`:
/// a data set's prompt i gets the same text whichever batch it lands in (up to the rounding of
/// the padded batch), and equal prompts get independent samples.
pub fn generate_batch_seeded(
    model: &CausalLm,
    prompts: &[Vec<i64>],
    seeds: &[u64],
    opts: &GenerateOptions,
    stop: impl Fn(usize, &[i64]) -> bool,
) -> Result<Vec<Vec<i64>>> {
    generate_after_prefix(model, &[], prompts, seeds, opts, stop)
}

/// [`generate_batch_seeded`] for prompts `prefix + prompts[i]` that share `prefix` (few-shot
/// examples, a system prompt): the prefix runs once, its KV cache is repeated for every row, and
/// the rows' own parts are left-padded after it. Row i is what the whole prompt gives, up to the
/// float rounding of the padded batch.
pub fn generate_after_prefix(
    model: &CausalLm,
    prefix: &[i64],
    prompts: &[Vec<i64>],
    seeds: &[u64],
    opts: &GenerateOptions,
    stop: impl Fn(usize, &[i64]) -> bool,
) -> Result<Vec<Vec<i64>>> {
    if seeds.len() != prompts.len() {
        return Err(Error::Invalid(format!("generate: {} seeds for {} prompts", seeds.len(), prompts.len())));
    }
    if !prefix.is_empty() {
        validate(model, prefix, opts)?;
    }
    for p in prompts {
        validate(model, p, opts)?;
    }
    let b = prompts.len();
    let mut outs: Vec<Vec<i64>> = vec![Vec::with_capacity(opts.max_new_tokens); b];
    if opts.max_new_tokens == 0 || b == 0 {
        return Ok(outs);
    }
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let padded = prompts.iter().any(|p| p.len() != longest);
    // Left padding (id 0, masked out) so that every row's last prompt token is the last column.
    let mut ids = Vec::with_capacity(b * longest);
    let mut mask = Vec::with_capacity(b * longest);
    for p in prompts {
        let pad = longest - p.len();
        ids.extend(std::iter::repeat_n(0, pad).chain(p.iter().copied()));
        mask.extend(std::iter::repeat_n(0i64, pad).chain(std::iter::repeat_n(1, p.len())));
    }
    let mut rngs: Vec<SplitMix64> = seeds.iter().map(|&s| SplitMix64::new(s)).collect();
    let mut seen: Vec<Vec<i64>> = prompts.iter().map(|p| [prefix, p].concat()).collect();
    let mut done = vec![false; b];
    let packed = decoding_weights(model, b)?;
    let model = packed.as_ref().unwrap_or(model);
    tch::no_grad(|| {
        let mut cache = KvCache::new();
        let pre = prefix.len() as i64;
        if pre > 0 {
            let _ = model.forward_cached(&Tensor::from_slice(prefix).view([1, pre]), None, &mut cache)?; // [1, P, V]
            cache.repeat_rows(b as i64);
        }
        let mut mask = padded.then(|| {
            let own = Tensor::from_slice(&mask).view([b as i64, longest as i64]); // [B, T]
            Tensor::cat(&[Tensor::ones([b as i64, pre], (Kind::Int64, Device::Cpu)), own], 1)
            // [B, P + T]
        });
        let ids = Tensor::from_slice(&ids).view([b as i64, longest as i64]); // [B, T]
        let mut logits = model.forward_cached(&ids, mask.as_ref(), &mut cache)?; // [B, T, V]
        loop {
            let mut next = vec![0i64; b];
            for (i, mut row) in last_rows(&logits)?.into_iter().enumerate() {
                if done[i] {
                    continue;
                }
                penalize(&mut row, &seen[i], opts.repetition_penalty);
                let t = pick(&row, opts, &mut rngs[i]) as i64;
                outs[i].push(t);
                seen[i].push(t);
                next[i] = t;
                done[i] = outs[i].len() >= opts.max_new_tokens || opts.eos_id == Some(t) || stop(i, &outs[i]);
            }
            if done.iter().all(|&d| d) {
                return Ok(outs);
            }
            if let Some(m) = mask.as_mut() {
                *m = Tensor::cat(&[&*m, &Tensor::ones([b as i64, 1], (Kind::Int64, m.device()))], 1);
                // [B, S + 1]
            }
            let ids = Tensor::from_slice(&next).view([b as i64, 1]); // [B, 1]
            logits = model.forward_cached(&ids, mask.as_ref(), &mut cache)?; // [B, 1, V]
        }
    })
}

/// The weights to decode a batch of `rows` sequences with: None where `model` serves as it is
/// (one row is bound by reading the weights, where packing would not pay; or `model` is already
/// packed for `rows`), else a copy packed for that row count ([`CausalLm::packed_for_rows`]). A
/// caller that decodes many batches with the same weights makes it once and passes it on.
pub fn decoding_weights(model: &CausalLm, rows: usize) -> Result<Option<CausalLm>> {
    Ok(if rows > 1 && model.packed_rows() != Some(rows as i64) {
        Some(model.packed_for_rows(rows as i64)?)
    } else {
        None
    })
}

/// The `k` most likely next tokens after `ids`, with their probabilities, most likely first.
pub fn top_k_next(model: &CausalLm, ids: &[i64], k: usize) -> Result<Vec<(i64, f32)>> {
    validate(model, ids, &GenerateOptions::default())?;
    let k = k.min(model.config().vocab_size as usize) as i64;
    tch::no_grad(|| {
        let input = Tensor::from_slice(ids).unsqueeze(0); // [1, T]
        let out = model.forward(&input, None, Default::default())?;
        let t = out.logits.size()[1];
        let probs =
            out.logits.f_select(0, 0)?.f_select(0, t - 1)?.f_to_kind(Kind::Float)?.f_softmax(-1, Kind::Float)?; // [V]
        let (p, i) = probs.f_topk(k, -1, true, true)?; // [k], [k]
        let p = Vec::<f32>::try_from(&p)?;
        let i = Vec::<i64>::try_from(&i)?;
        Ok(i.into_iter().zip(p).collect())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_p_keeps_most_likely_and_greedy_takes_first_max() {
        let logits = [0.0f32, 5.0, 5.0, 1.0];
        assert_eq!(argmax(&logits), 1);
        let opts = GenerateOptions { temperature: 1.0, top_p: 0.01, ..Default::default() };
        let mut rng = SplitMix64::new(7);
        for _ in 0..20 {
            let t = pick(&logits, &opts, &mut rng);
            assert!(t == 1 || t == 2, "{t}");
        }
        let opts = GenerateOptions { temperature: 1.0, top_k: 1, ..Default::default() };
        let picks: Vec<usize> = (0..20).map(|_| pick(&[0.0, 1.0, 3.0], &opts, &mut rng)).collect();
        assert!(picks.iter().all(|&t| t == 2));
    }

    #[test]
    fn repetition_penalty_divides_positive_and_multiplies_negative_logits_once() {
        let mut logits = [2.0f32, -1.0, 3.0, 0.5];
        penalize(&mut logits, &[0, 1, 0, 0], 2.0);
        assert_eq!(logits, [1.0, -2.0, 3.0, 0.5]);
        assert_eq!(argmax(&logits), 2);
        let mut same = [2.0f32, -1.0];
        penalize(&mut same, &[0, 1], 1.0);
        assert_eq!(same, [2.0, -1.0]);
    }
}
