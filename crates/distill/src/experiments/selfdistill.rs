//! Verified self-distillation (STaR, Zelikman et al. 2022; rejection-sampling fine-tuning; the
//! notes' "self-distillation from proof"): a model samples N solutions to each training problem
//! of [`crate::eval::verify`]'s families, the checker keeps the correct ones, and the learner — the model
//! itself, or a student learning from the teacher's verified solutions — is fine-tuned on them
//! (cross-entropy on the solution tokens only); repeat for R rounds. Before the first round and
//! after each one the learner is evaluated on held-out problems: pass@1 with greedy decoding
//! and, optionally, pass@N with N samples.
//!
//! Everything a round produces is a file in the output directory, written atomically: the
//! evaluation of the learner after round r (`eval-{r}.json`, r = 0 before any training), the
//! round's verified solutions (`round-{r}/verified.jsonl`: family, question, answer, completion;
//! `round-{r}/sampled.json`: the same as token ids, with the per-family counts), its training
//! report (`round-{r}/round.json`) and the learner's weights (`round-{r}/model`, an HF
//! directory). Run again after an interruption and every finished file is kept: a round whose
//! solutions were sampled does not sample again, and its fine-tuning resumes from its checkpoint
//! (`round-{r}/train`, removed once the round is final).

use std::path::Path;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::data::rng::SplitMix64;
use crate::eval::generate::{decoding_weights, generate_after_prefix, GenerateOptions};
use crate::eval::verify::{check, problems, Family, Problem, Split, Verdict};
use crate::eval::{decode, encode, first_stop, reaches_stop};
use crate::io::lm::LoadedLm;
use crate::losses::chunked::ChunkedKd;
use crate::losses::divergence::Divergence;
use crate::models::lm::{CausalLm, ForwardOptions};
use crate::train::config::Schedule;
use crate::train::{fit, StepLoss, TrainCfg, TrainOptions, TrainTask};
use crate::{Error, Result};

/// The loop's settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SelfDistillOptions {
    pub families: Vec<Family>,
    /// Training problems per family (sampled every round).
    pub train_problems: usize,
    /// Held-out problems per family.
    pub heldout_problems: usize,
    /// Solutions sampled per training problem.
    pub samples: usize,
    /// Samples per held-out problem for pass@N (0 = greedy pass@1 only).
    pub eval_samples: usize,
    pub rounds: usize,
    pub temperature: f64,
    pub max_new_tokens: usize,
    /// At most this many distinct verified solutions per problem enter training.
    pub keep_per_problem: usize,
    /// Fine-tuning passes over a round's verified solutions.
    pub epochs: f64,
    pub lr: f64,
    pub train_batch: usize,
    /// Rows per generation batch.
    pub gen_batch: usize,
    /// Pose problems as one user turn in the chat template instead of a plain few-shot prompt.
    pub chat: bool,
    pub seed: u64,
}

impl SelfDistillOptions {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::Invalid(format!("self-distill: {m}")));
        if self.families.is_empty() {
            return bad("no task family");
        }
        if self.train_problems == 0 || self.heldout_problems == 0 || self.samples == 0 || self.rounds == 0 {
            return bad("--train, --heldout, --samples and --rounds must be ≥ 1");
        }
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            return bad("--temperature must be > 0");
        }
        if !(self.lr > 0.0 && self.lr.is_finite() && self.epochs > 0.0 && self.epochs.is_finite()) {
            return bad("--lr and --epochs must be > 0");
        }
        if self.train_batch == 0 || self.gen_batch == 0 || self.max_new_tokens == 0 || self.keep_per_problem == 0 {
            return bad("batch sizes, --max-tokens and --keep must be ≥ 1");
        }
        Ok(())
    }
}

/// One family's held-out scores.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FamilyEval {
    pub family: String,
    pub problems: usize,
    /// Greedy answers that are correct.
    pub pass1: f64,
    /// Greedy answers without a parsable `Answer:` line.
    pub malformed: f64,
    /// Problems with at least one correct sample of `eval_samples` (None when 0).
    pub pass_n: Option<f64>,
}

/// What one round sampled, kept and trained.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoundReport {
    pub round: usize,
    /// Per family: samples drawn, correct ones, distinct correct ones kept for training.
    pub sampled: Vec<(String, usize, usize, usize)>,
    pub train_steps: u64,
    /// NaN when the round kept no solution (nothing trained); `null` in the file.
    #[serde(deserialize_with = "nan_if_null")]
    pub final_loss: f64,
    pub seconds: f64,
}

/// A float that JSON wrote as `null` (NaN has no JSON spelling) read back as NaN.
fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// A round's sampling, kept so that a resumed round does not sample again
/// (`round-{r}/sampled.json`).
#[derive(Serialize, Deserialize)]
struct Sampled {
    sampled: Vec<(String, usize, usize, usize)>,
    examples: Vec<Example>,
    seconds: f64,
}

/// A verified solution: the prompt's shared prefix (few-shot preamble), the problem's own part
/// and the completion, as token ids.
#[derive(Serialize, Deserialize)]
struct Example {
    ids: Vec<i64>,
    /// Index in `ids` where the completion starts.
    start: usize,
}

/// Cross-entropy on the completion tokens of [`Example`]s (right-padded batches).
struct SftTask<'a> {
    model: &'a CausalLm,
    examples: &'a [Example],
}

impl TrainTask for SftTask<'_> {
    fn num_examples(&self) -> usize {
        self.examples.len()
    }

    fn loss(&mut self, batch: &[usize], _rng: &mut SplitMix64) -> Result<StepLoss> {
        let rows: Vec<&Example> = batch.iter().map(|&i| &self.examples[i]).collect();
        let t = rows.iter().map(|e| e.ids.len()).max().unwrap_or(1);
        let (mut ids, mut mask, mut targets) = (Vec::new(), Vec::new(), Vec::new());
        for e in &rows {
            let n = e.ids.len();
            ids.extend(e.ids.iter().copied().chain(std::iter::repeat_n(0, t - n)));
            mask.extend(std::iter::repeat_n(1i64, n).chain(std::iter::repeat_n(0, t - n)));
            // Position j predicts token j + 1: the completion's tokens start..n−1.
            targets.extend((0..t).map(|j| if j + 1 >= e.start && j + 1 < n { e.ids[j + 1] } else { -100 }));
        }
        let b = rows.len() as i64;
        let dev = self.model.device();
        let ids = Tensor::from_slice(&ids).view([b, t as i64]).to_device(dev); // [B, T]
        let mask = Tensor::from_slice(&mask).view([b, t as i64]).to_device(dev); // [B, T]
        let targets = Tensor::from_slice(&targets).view([-1]).to_device(dev); // [B·T]
        let idx = targets.ge(0).nonzero().squeeze_dim(1); // [N]
        let y = targets.index_select(0, &idx); // [N]
        let opts = ForwardOptions { train: true, ..Default::default() };
        let h = self.model.forward_states(&ids, Some(&mask), opts)?.last; // [B, T, H]
        let h = h.view([-1, h.size()[2]]).index_select(0, &idx); // [N, H]
        let ce = ChunkedKd { divergence: Divergence::ForwardKl, temperature: 1.0, alpha: 0.0, chunk_rows: 256 };
        let parts = ce.forward(&h, self.model.head(), None, Some(&y));
        Ok(StepLoss { total: parts.total, parts: vec![], weight: idx.size()[0] as f64 })
    }
}

/// The prompt of `p` as (shared prefix, own part): the few-shot preamble and the problem, or —
/// in chat mode — no prefix and the whole user turn in the template.
fn prompt_parts(lm: &LoadedLm, p: &Problem, chat: bool) -> Result<(String, String)> {
    if chat {
        let user = p.prompt().trim_end_matches("Solution:").trim_end().to_string();
        Ok((String::new(), lm.chat_prompt(&user)?))
    } else {
        Ok((p.family.preamble(), p.query()))
    }
}

const STOP: &str = "\n\n";

/// `k` completions per problem from `lm` (greedy when `temperature` is 0), cut before the first
/// blank line, each with a training example: the prompt's ids followed by the cut completion
/// and the blank line.
fn complete(
    lm: &LoadedLm,
    probs: &[Problem],
    k: usize,
    temperature: f64,
    o: &SelfDistillOptions,
    seed: u64,
) -> Result<Vec<Vec<(String, Example)>>> {
    let mut out: Vec<Vec<(String, Example)>> = (0..probs.len()).map(|_| Vec::new()).collect();
    let stops = vec![STOP.to_string()];
    // Every batch decodes with the same weights: packed once for all of them.
    let packed = decoding_weights(&lm.model, o.gen_batch)?;
    let model = packed.as_ref().unwrap_or(&lm.model);
    // Jobs (problem, sample) grouped by family so that a batch shares its prefix.
    let mut jobs: Vec<(usize, usize)> = (0..probs.len()).flat_map(|i| (0..k).map(move |s| (i, s))).collect();
    jobs.sort_by_key(|&(i, s)| (probs[i].family.name(), i, s));
    let mut at = 0;
    while at < jobs.len() {
        let fam = probs[jobs[at].0].family;
        let end = (at..jobs.len()).take_while(|&j| probs[jobs[j].0].family == fam).count().min(o.gen_batch) + at;
        let batch = &jobs[at..end];
        let (prefix, _) = prompt_parts(lm, &probs[batch[0].0], o.chat)?;
        let prefix_ids = if prefix.is_empty() { Vec::new() } else { encode(&lm.tokenizer, &prefix)? };
        let own = batch
            .iter()
            .map(|&(i, _)| encode(&lm.tokenizer, &prompt_parts(lm, &probs[i], o.chat)?.1))
            .collect::<Result<Vec<_>>>()?;
        let seeds: Vec<u64> =
            batch.iter().map(|&(i, s)| SplitMix64::derive(seed, i as u64, s as u64).next_u64()).collect();
        let opts = GenerateOptions {
            max_new_tokens: o.max_new_tokens,
            temperature,
            eos_id: lm.model.config().eos_token_ids.first().copied(),
            ..Default::default()
        };
        let stop = |_: usize, ids: &[i64]| reaches_stop(&lm.tokenizer, ids, &stops);
        let gens = generate_after_prefix(model, &prefix_ids, &own, &seeds, &opts, stop)?;
        for ((&(i, _), own), g) in batch.iter().zip(&own).zip(gens) {
            let mut text = decode(&lm.tokenizer, &g)?;
            if let Some(cut) = first_stop(&text, &stops) {
                text.truncate(cut);
            }
            let start = prefix_ids.len() + own.len();
            let ids = [&prefix_ids[..], own, &encode(&lm.tokenizer, &format!("{text}{STOP}"))?].concat();
            out[i].push((text, Example { ids, start }));
        }
        at = end;
    }
    Ok(out)
}

/// Held-out scores of `lm` per family.
fn evaluate(lm: &LoadedLm, heldout: &[Problem], o: &SelfDistillOptions, seed: u64) -> Result<Vec<FamilyEval>> {
    let greedy = complete(lm, heldout, 1, 0.0, o, seed)?;
    let sampled =
        if o.eval_samples > 0 { Some(complete(lm, heldout, o.eval_samples, o.temperature, o, seed)?) } else { None };
    let mut out = Vec::new();
    for &f in &o.families {
        let idx: Vec<usize> = (0..heldout.len()).filter(|&i| heldout[i].family == f).collect();
        let n = idx.len().max(1) as f64;
        let verdicts: Vec<Verdict> = idx.iter().map(|&i| check(&heldout[i], &greedy[i][0].0)).collect();
        let pass_n = sampled.as_ref().map(|s| {
            idx.iter().filter(|&&i| s[i].iter().any(|(t, _)| check(&heldout[i], t) == Verdict::Correct)).count() as f64
                / n
        });
        out.push(FamilyEval {
            family: f.name().into(),
            problems: idx.len(),
            pass1: verdicts.iter().filter(|&&v| v == Verdict::Correct).count() as f64 / n,
            malformed: verdicts.iter().filter(|&&v| v == Verdict::Malformed).count() as f64 / n,
            pass_n,
        });
    }
    Ok(out)
}

/// The whole loop's record, also written to `summary.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SelfDistillReport {
    pub options: SelfDistillOptions,
    /// `evals[r]`: the learner after round r (0 = before training).
    pub evals: Vec<Vec<FamilyEval>>,
    pub rounds: Vec<RoundReport>,
    pub seconds: f64,
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>> {
    match std::fs::read_to_string(path) {
        Ok(s) => serde_json::from_str(&s).map(Some).map_err(|e| Error::format(path, e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// Round `r` of self-distillation: the writer (or the learner) samples solutions of the training
/// problems, the checker keeps the verified ones, the learner is fine-tuned on them and exported
/// to `dir/model`; `dir/round.json` is written last.
fn train_round(
    learner: &LoadedLm,
    writer: Option<&LoadedLm>,
    train: &[Problem],
    o: &SelfDistillOptions,
    r: usize,
    dir: &Path,
    log: &dyn Fn(&str),
) -> Result<RoundReport> {
    let sampled_path = dir.join("sampled.json");
    let Sampled { sampled, examples, seconds: sampling_s } = match read_json::<Sampled>(&sampled_path)? {
        Some(s) => {
            log(&format!("round {r}: sampling already done ({} verified solutions)", s.examples.len()));
            s
        }
        None => {
            let s = sample_and_verify(writer.unwrap_or(learner), train, o, r, dir, log)?;
            distill_base::write_json(&sampled_path, &s)?;
            s
        }
    };
    let tr = Instant::now();
    let (steps, loss) = if examples.is_empty() {
        log(&format!("round {r}: no verified solution; the learner is unchanged"));
        (0, f64::NAN)
    } else {
        let cfg = TrainCfg {
            epochs: Some(o.epochs),
            batch_size: o.train_batch,
            lr: o.lr,
            schedule: Schedule::Constant,
            min_lr_ratio: 1.0,
            clip_grad_norm: Some(1.0),
            ..TrainCfg::default()
        };
        let topts = TrainOptions {
            phase: format!("round-{r}"),
            seed: o.seed.wrapping_add(r as u64),
            cfg,
            dir: dir.join("train"),
            checkpoint_every: 10,
            log_every: 5,
            progress: false,
            progress_seconds: 10.0,
            tensorboard: false,
            stop_after: None,
            tokens_per_example: None,
        };
        let mut task = SftTask { model: &learner.model, examples: &examples };
        let rep = fit(&learner.vs, &mut task, &topts)?;
        (rep.steps, rep.final_loss)
    };
    crate::io::export::export_hf_with_chat_template(
        &learner.model,
        Some(&learner.tokenizer_json),
        learner.chat_template.as_deref(),
        dir.join("model"),
    )?;
    let rep = RoundReport {
        round: r,
        sampled,
        train_steps: steps,
        final_loss: loss,
        seconds: sampling_s + tr.elapsed().as_secs_f64(),
    };
    distill_base::write_json(&dir.join("round.json"), &rep)?;
    // The round is final: its training checkpoint (weights and optimizer state,
    // 3× the model) is no longer needed to resume.
    let ckpt = dir.join("train").join("ckpt.safetensors");
    if ckpt.exists() {
        std::fs::remove_file(&ckpt).map_err(|e| Error::io(&ckpt, e))?;
    }
    log(&format!("round {r}: {steps} fine-tuning steps, final loss {loss:.4} ({:.0} s)", rep.seconds));
    Ok(rep)
}

/// Runs the loop into `out`. `writer` samples the training solutions (None: the learner itself,
/// i.e. self-distillation); `load_learner(path)` loads the learner (its initial weights, or a
/// finished round's HF directory) with trainable weights.
pub fn run(
    writer: Option<&LoadedLm>,
    load_learner: &dyn Fn(Option<&Path>) -> Result<LoadedLm>,
    o: &SelfDistillOptions,
    out: &Path,
    log: &dyn Fn(&str),
) -> Result<SelfDistillReport> {
    o.validate()?;
    let t0 = Instant::now();
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let opts_path = out.join("options.json");
    match read_json::<SelfDistillOptions>(&opts_path)? {
        Some(old) if serde_json::to_value(&old).ok() != serde_json::to_value(o).ok() => {
            return Err(Error::Invalid(format!(
                "{} was started with other settings ({}); use another --out",
                out.display(),
                opts_path.display()
            )))
        }
        Some(_) => {}
        None => distill_base::write_json(&opts_path, o)?,
    }
    let set = |split| -> Vec<Problem> {
        o.families
            .iter()
            .flat_map(|&f| {
                problems(
                    f,
                    split,
                    if split == Split::Train { o.train_problems } else { o.heldout_problems },
                    o.heldout_problems,
                    o.seed,
                )
            })
            .collect()
    };
    let (train, heldout) = (set(Split::Train), set(Split::HeldOut));
    let round_dir = |r: usize| out.join(format!("round-{r}"));
    let done = |r: usize| round_dir(r).join("round.json");
    // The learner in memory and the round it is the result of (0 = initial weights).
    let model_of = |r: usize| (r > 0).then(|| round_dir(r).join("model"));
    let mut held: Option<(usize, LoadedLm)> = None;
    let learner_at = |r: usize, held: &mut Option<(usize, LoadedLm)>| -> Result<()> {
        if held.as_ref().map(|h| h.0) != Some(r) {
            *held = Some((r, load_learner(model_of(r).as_deref())?));
        }
        Ok(())
    };
    let mut evals = Vec::new();
    let mut rounds = Vec::new();
    for r in 0..=o.rounds {
        if r > 0 {
            let dir = round_dir(r);
            if let Some(rep) = read_json::<RoundReport>(&done(r))? {
                rounds.push(rep);
            } else {
                learner_at(r - 1, &mut held)?;
                let learner = &held.as_ref().expect("loaded").1;
                let rep = train_round(learner, writer, &train, o, r, &dir, log)?;
                rounds.push(rep);
                if let Some(h) = held.as_mut() {
                    h.0 = r;
                }
            }
        }
        let eval_path = out.join(format!("eval-{r}.json"));
        let ev = match read_json::<Vec<FamilyEval>>(&eval_path)? {
            Some(ev) => ev,
            None => {
                learner_at(r, &mut held)?;
                let ev = evaluate(&held.as_ref().expect("loaded").1, &heldout, o, o.seed ^ 0xe7a1)?;
                distill_base::write_json(&eval_path, &ev)?;
                ev
            }
        };
        let line: Vec<String> = ev
            .iter()
            .map(|e| match e.pass_n {
                Some(pn) => {
                    format!("{} {:.0}% (pass@{} {:.0}%)", e.family, 100.0 * e.pass1, o.eval_samples, 100.0 * pn)
                }
                None => format!("{} {:.0}%", e.family, 100.0 * e.pass1),
            })
            .collect();
        log(&format!("after round {r}: greedy pass@1 {}", line.join(", ")));
        evals.push(ev);
    }
    let report = SelfDistillReport { options: o.clone(), evals, rounds, seconds: t0.elapsed().as_secs_f64() };
    distill_base::write_json(&out.join("summary.json"), &report)?;
    Ok(report)
}

/// Round `r`'s sampling: `w` writes `o.samples` solutions per training problem, the checker
/// keeps at most `o.keep_per_problem` distinct correct ones per problem; the kept ones are
/// written to `dir/verified.jsonl` and returned as token ids with the per-family counts.
fn sample_and_verify(
    w: &LoadedLm,
    train: &[Problem],
    o: &SelfDistillOptions,
    r: usize,
    dir: &Path,
    log: &dyn Fn(&str),
) -> Result<Sampled> {
    let t = Instant::now();
    let sols = complete(w, train, o.samples, o.temperature, o, o.seed ^ (r as u64) << 32)?;
    let mut examples = Vec::new();
    let mut sampled = Vec::new();
    let mut verified = String::new();
    for &f in &o.families {
        let (mut n, mut ok, mut kept) = (0, 0, 0);
        for (p, s) in train.iter().zip(&sols).filter(|(p, _)| p.family == f) {
            let mut seen = std::collections::HashSet::new();
            for (text, ex) in s {
                n += 1;
                if check(p, text) != Verdict::Correct {
                    continue;
                }
                ok += 1;
                if seen.len() < o.keep_per_problem && seen.insert(text.clone()) {
                    examples.push(Example { ids: ex.ids.clone(), start: ex.start });
                    let line = serde_json::json!({
                        "family": f.name(), "question": p.question, "answer": p.answer, "completion": text,
                    });
                    verified += &format!("{line}\n");
                    kept += 1;
                }
            }
        }
        log(&format!("round {r}: {}: {ok}/{n} samples correct, {kept} kept", f.name()));
        sampled.push((f.name().to_string(), n, ok, kept));
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    distill_base::write_atomic(&dir.join("verified.jsonl"), verified.as_bytes())?;
    Ok(Sampled { sampled, examples, seconds: t.elapsed().as_secs_f64() })
}

/// The learner loaded for training: `path` or, when None, `initial`, with its weights
/// trainable.
pub fn trainable(initial: &Path, path: Option<&Path>) -> Result<LoadedLm> {
    let mut lm = crate::io::lm::load_lm(path.unwrap_or(initial), tch::Device::Cpu)?;
    lm.vs.unfreeze();
    Ok(lm)
}

#[cfg(test)]
mod tests {
    use super::RoundReport;

    #[test]
    fn a_round_that_trained_nothing_reads_back() {
        let rep = RoundReport { round: 1, sampled: vec![], train_steps: 0, final_loss: f64::NAN, seconds: 2.0 };
        let text = serde_json::to_string(&rep).unwrap();
        assert!(text.contains("\"final_loss\":null"), "{text}");
        let back: RoundReport = serde_json::from_str(&text).unwrap();
        assert!(back.final_loss.is_nan() && back.seconds == 2.0);
        let back: RoundReport = serde_json::from_str(&text.replace("null", "0.25")).unwrap();
        assert_eq!(back.final_loss, 0.25);
    }
}
