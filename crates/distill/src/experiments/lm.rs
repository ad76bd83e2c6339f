//! LLM distillation end to end: teacher (GGUF or HF) → student derived from it → KD training on
//! packed text (and, when asked, the same student trained without the teacher) → evaluation
//! against the teacher → Hugging Face export (and GGUF for llama.cpp).
//!
//! Run directory:
//! ```text
//! DIR/recipe.toml                 the resolved recipe
//! DIR/phases/{kd,scratch}/        ckpt.safetensors, metrics.jsonl, train.json (written last)
//! DIR/student/, DIR/scratch/      exported HF directories (config.json, model.safetensors, tokenizer.json…)
//! DIR/student.gguf                the KD student for llama.cpp (F16 matrices; when GGUF can hold it)
//! DIR/summary.json, DIR/report.txt
//! ```

use std::path::{Path, PathBuf};

use distill_text::{TextDataConfig, TextSource, TokenBlocks};
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind};

use crate::cache::CachedTeacher;
use crate::checkpoint::{write_atomic, write_json};
use crate::eval::{generate_text, score, tokens_per_second, top_k_table, Generation, LmScores, TopToken};
use crate::export::export_hf;
use crate::generate::GenerateOptions;
use crate::lm::{init_student, load_lm, resolve_teacher_kind, student_config, teacher_in_kind, LoadedLm};
use crate::lm_task::{HiddenKd, LmKdTask, TeacherSource};
use crate::losses::chunked::ChunkedKd;
use crate::models::llama::Llama;
use crate::recipe::LmRecipe;
use crate::train::{fit, TrainOptions, TrainReport};
use crate::{fetch, Error, Result};

/// Options of a run that are not part of the recipe.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub progress: bool,
    pub verbose: bool,
}

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
    #[serde(default = "one")]
    pub repetition_penalty: f64,
    /// The online teacher's precision during training and why (`None`: no online teacher).
    #[serde(default)]
    pub teacher_train_dtype: Option<String>,
}

fn text_err(e: distill_text::TextError) -> Error {
    Error::Invalid(e.to_string())
}

/// Replaces `asset:` paths of text sources by their cache paths.
pub fn resolve_sources(sources: &[TextSource]) -> Result<Vec<TextSource>> {
    sources
        .iter()
        .map(|s| {
            let mut s = s.clone();
            s.path = fetch::resolve(&s.path)?.to_string_lossy().into_owned();
            Ok(s)
        })
        .collect()
}

/// All of `sources` packed into `seq_len` rows (no split, last partial row kept and masked).
pub fn text_blocks(
    sources: &[TextSource],
    tok: &tokenizers::Tokenizer,
    seq_len: usize,
    min_chars: usize,
) -> Result<TokenBlocks> {
    let mut cfg = TextDataConfig::new(resolve_sources(sources)?);
    cfg.split.val_fraction = 0.0;
    cfg.clean.min_chars = min_chars;
    cfg.pack.seq_len = seq_len;
    cfg.pack.keep_partial = true;
    Ok(distill_text::build_dataset(&cfg, tok).map_err(text_err)?.train)
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().ends_with(".safetensors"))
                .filter_map(|e| e.metadata().ok().map(|m| m.len()))
                .sum()
        })
        .unwrap_or(0)
}

/// Trains (or reloads, when already done) one student phase. Returns its var store, model and
/// training report.
#[allow(clippy::too_many_arguments)]
fn student_phase(
    r: &LmRecipe,
    teacher: &LoadedLm,
    online: &Llama,
    cached: Option<&CachedTeacher>,
    train: &TokenBlocks,
    name: &str,
    alpha: f64,
    out: &Path,
    opts: &RunOptions,
) -> Result<(nn::VarStore, Llama, TrainReport, PathBuf)> {
    let s_cfg = student_config(teacher.model.config(), &r.student)?;
    let export_dir = out.join(if name == "kd" { "student" } else { "scratch" });
    let phase_dir = out.join("phases").join(name);
    let done = phase_dir.join("train.json");
    if let Ok(text) = std::fs::read_to_string(&done) {
        let report: TrainReport = serde_json::from_str(&text).map_err(|e| Error::format(&done, e.to_string()))?;
        let (vs, model) = Llama::from_pretrained(&export_dir, teacher.model.device(), Kind::Float)?;
        if opts.verbose {
            eprintln!("{name:>8}: trained earlier, reloaded from {}", export_dir.display());
        }
        return Ok((vs, model, report, export_dir));
    }
    tch::manual_seed(r.seed as i64);
    let vs = nn::VarStore::new(teacher.model.device());
    let model = Llama::new(vs.root(), &s_cfg)?;
    let calib_rows: Vec<usize> = (0..train.n_blocks().min(16)).collect();
    let calib = crate::eval::lm_batch(train, &calib_rows, teacher.model.device()).ids;
    let kept = init_student(&vs, &s_cfg, teacher, r.student.init, &calib)?;
    if opts.verbose && r.student.init == crate::recipe::StudentInit::EmbeddingPca && kept < 1.0 {
        eprintln!(
            "{name:>8}: embedding projected onto the teacher's top {} principal directions ({:.1}% of its residual stream)",
            s_cfg.hidden_size,
            100.0 * kept
        );
    }
    let source = match cached {
        Some(c) => TeacherSource::Cache(c),
        None => TeacherSource::Model(online),
    };
    let loss = ChunkedKd {
        divergence: r.distill.divergence()?,
        temperature: r.distill.temperature,
        alpha,
        chunk_rows: r.distill.chunk_tokens as i64,
    };
    // Feature KD (KD student only): a projection to the teacher's width, trained with the
    // student and checkpointed with it, never exported.
    let hidden = match (&r.distill.hidden, name) {
        (Some(h), "kd") => {
            let t_cfg = teacher.model.config();
            let pairs = h.pairs(s_cfg.num_layers as usize, t_cfg.num_layers as usize)?;
            let no_bias = nn::LinearConfig { bias: false, ..Default::default() };
            let proj = nn::linear(vs.root() / "distill_hidden_proj", s_cfg.hidden_size, t_cfg.hidden_size, no_bias);
            if opts.verbose {
                let shown: Vec<String> = pairs.iter().map(|(s, t)| format!("{s}→{t}")).collect();
                eprintln!(
                    "{name:>8}: hidden-state KD ({}, weight {}), student→teacher layers {}",
                    h.loss,
                    h.weight,
                    shown.join(" ")
                );
            }
            Some(HiddenKd { pairs, proj: proj.ws, loss: h.loss, weight: h.weight })
        }
        _ => None,
    };
    let mut task = LmKdTask { student: &model, teacher: Some(source), blocks: train, loss, hidden };
    let topts = TrainOptions {
        phase: name.to_string(),
        seed: r.seed,
        cfg: r.train.clone(),
        dir: phase_dir.clone(),
        checkpoint_every: r.checkpoint.every_steps,
        log_every: 10,
        progress: opts.progress,
    };
    let report = fit(&vs, &mut task, &topts)?;
    export_hf(&model, Some(&teacher.tokenizer_json), &export_dir)?;
    if name == "kd" {
        // The distilled student also leaves as a GGUF file for llama.cpp (matrices F16), when
        // GGUF can express it (byte-level BPE tokenizer, no sliding window); otherwise say why.
        let gguf = export_dir.with_extension("gguf");
        let ty = crate::export::GgufType::F16;
        if let Err(e) = crate::export::export_gguf(&model, &teacher.tokenizer, None, &r.name, &gguf, ty) {
            eprintln!("{name:>8}: no GGUF export ({e}); the HF directory {} is complete", export_dir.display());
        }
    }
    write_json(&done, &report)?;
    if opts.verbose {
        eprintln!("{name:>8}: {} steps in {:.0}s, final loss {:.4}", report.steps, report.seconds, report.final_loss);
    }
    Ok((vs, model, report, export_dir))
}

/// Runs (or resumes) an LM distillation recipe into `out`.
pub fn run(r: &LmRecipe, recipe_toml: &str, out: &Path, opts: &RunOptions) -> Result<LmSummary> {
    let say = |m: String| {
        if opts.verbose {
            eprintln!("{m}");
        }
    };
    let teacher_path = fetch::resolve(&r.teacher.path)?;
    say(format!("loading teacher {}", teacher_path.display()));
    let device = crate::recipe::parse_device(&r.device)?;
    let teacher = load_lm(&teacher_path, device)?;
    let t_cfg = teacher.model.config().clone();
    let s_cfg = student_config(&t_cfg, &r.student)?;

    let mut data_cfg = r.data.clone();
    data_cfg.sources = resolve_sources(&r.data.sources)?;
    data_cfg.val_sources = resolve_sources(&r.data.val_sources)?;
    let data = distill_text::build_dataset(&data_cfg, &teacher.tokenizer).map_err(text_err)?;
    if data.validation.is_empty() {
        return Err(Error::Invalid("the validation split has no full row; raise data.split.val_fraction".into()));
    }
    say(format!(
        "data: {} train rows, {} validation rows of {} tokens",
        data.train.n_blocks(),
        data.validation.n_blocks(),
        data.train.seq_len
    ));

    // Parameter counts before anything trains: warn on a huge capacity gap.
    let t_params = teacher.model.param_count();
    let s_params = {
        let vs = nn::VarStore::new(Device::Cpu);
        Llama::new(vs.root(), &s_cfg)?.param_count()
    };
    if (s_params as f64) < 0.01 * t_params as f64 {
        eprintln!(
            "warning: the student has {s_params} parameters, {:.2}% of the teacher's {t_params}: a capacity gap this large often makes KD fail (Mirzadeh et al. 2020); consider a teacher assistant",
            100.0 * s_params as f64 / t_params as f64
        );
    }

    // An offline teacher: checked against this teacher and these rows before anything trains.
    let cached = match &r.teacher.cache {
        Some(dir) => {
            let dir = fetch::resolve(dir)?;
            let c = CachedTeacher::open(&dir, &teacher, &data.train)?;
            say(format!(
                "teacher cache {}: top-{}{}, {} bytes/token",
                dir.display(),
                c.reader().top_k(),
                match c.reader().tail_samples() {
                    0 => String::new(),
                    s => format!(" + {s} tail samples"),
                },
                c.reader().bytes_per_token()
            ));
            Some(c)
        }
        None => None,
    };

    std::fs::create_dir_all(out.join("phases")).map_err(|e| Error::io(out, e))?;
    write_atomic(&out.join("recipe.toml"), recipe_toml.as_bytes())?;

    let mut phases: Vec<(&str, f64)> = Vec::new();
    if r.distill.alpha > 0.0 {
        phases.push(("kd", r.distill.alpha));
    }
    if r.distill.alpha == 0.0 || r.distill.scratch_twin {
        phases.push(("scratch", 0.0));
    }
    // The online teacher the students train against: a bf16 copy where that is faster.
    let mut teacher_train_dtype = None;
    let mut online: Option<(nn::VarStore, Llama)> = None;
    if cached.is_none() && phases.iter().any(|&(_, a)| a > 0.0) {
        let (kind, why) = resolve_teacher_kind(r.teacher.dtype, &t_cfg, device)?;
        say(format!("teacher during training: {why}"));
        if kind != Kind::Float {
            online = Some(teacher_in_kind(&teacher.vs, &teacher.model, kind)?);
        }
        teacher_train_dtype = Some(why);
    }
    let online_model = online.as_ref().map(|(_, m)| m).unwrap_or(&teacher.model);
    let mut students = Vec::new();
    for (name, alpha) in phases {
        let phase = student_phase(r, &teacher, online_model, cached.as_ref(), &data.train, name, alpha, out, opts)?;
        students.push((name, phase));
    }
    drop(online);

    // Evaluation.
    say("evaluating".into());
    let extra_blocks: Vec<TokenBlocks> = r
        .eval
        .extra
        .iter()
        .map(|s| text_blocks(std::slice::from_ref(s), &teacher.tokenizer, data.train.seq_len, data_cfg.clean.min_chars))
        .collect::<Result<_>>()?;
    let max_rows = r.eval.max_val_blocks;
    let eval_batch = r.train.batch_size.clamp(1, 8);
    let t_val = score(&teacher.model, None, &data.validation, max_rows, eval_batch)?;
    let t_extra: Vec<LmScores> =
        extra_blocks.iter().map(|b| score(&teacher.model, None, b, max_rows, eval_batch)).collect::<Result<_>>()?;
    let teacher_report = ModelReport {
        role: "teacher".into(),
        params: t_params,
        size_bytes: teacher.file_bytes,
        compression_ratio: 1.0,
        tokens_per_s: tokens_per_second(&teacher.model, 1, data.train.seq_len as i64)?,
        validation: t_val,
        extra: t_extra,
        train: None,
        path: Some(teacher_path.clone()),
    };
    let mut reports = Vec::new();
    for (name, (_vs, model, report, dir)) in &students {
        let val = score(model, Some(&teacher.model), &data.validation, max_rows, eval_batch)?;
        let extra: Vec<LmScores> = extra_blocks
            .iter()
            .map(|b| score(model, Some(&teacher.model), b, max_rows, eval_batch))
            .collect::<Result<_>>()?;
        reports.push(ModelReport {
            role: if *name == "kd" { "student-kd".into() } else { "student-scratch".into() },
            params: model.param_count(),
            size_bytes: dir_bytes(dir),
            compression_ratio: t_params as f64 / model.param_count() as f64,
            tokens_per_s: tokens_per_second(model, 1, data.train.seq_len as i64)?,
            validation: val,
            extra,
            train: Some(report.clone()),
            path: Some(dir.clone()),
        });
    }

    let mut prompts = Vec::new();
    let eos = t_cfg.eos_token_ids.first().copied();
    for p in &r.eval.prompts {
        let mut pr =
            PromptReport { prompt: p.clone(), top_k: vec![], greedy: vec![], penalized: vec![], sampled: vec![] };
        let models: Vec<(&str, &Llama)> = std::iter::once(("teacher", &teacher.model))
            .chain(students.iter().map(|(n, s)| (if *n == "kd" { "student-kd" } else { "student-scratch" }, &s.1)))
            .collect();
        for (role, m) in models {
            pr.top_k.push((role.into(), top_k_table(m, &teacher.tokenizer, p, r.eval.top_k_table)?));
            let greedy = GenerateOptions {
                max_new_tokens: r.eval.max_new_tokens,
                temperature: 0.0,
                top_k: 0,
                top_p: 1.0,
                seed: r.seed,
                eos_id: None,
                repetition_penalty: 1.0,
            };
            pr.greedy.push((role.into(), generate_text(m, &teacher.tokenizer, p, &greedy)?));
            if r.eval.repetition_penalty != 1.0 {
                let pen = GenerateOptions { repetition_penalty: r.eval.repetition_penalty, ..greedy.clone() };
                pr.penalized.push((role.into(), generate_text(m, &teacher.tokenizer, p, &pen)?));
            }
            let sampled = GenerateOptions {
                temperature: r.eval.sample_temperature,
                top_k: r.eval.sample_top_k,
                top_p: r.eval.sample_top_p,
                eos_id: eos,
                ..greedy
            };
            pr.sampled.push((role.into(), generate_text(m, &teacher.tokenizer, p, &sampled)?));
        }
        prompts.push(pr);
    }
    let ppl = |role: &str| reports.iter().find(|m| m.role == role).map(|m| m.validation.perplexity);
    let ratio = match (ppl("student-kd"), ppl("student-scratch")) {
        (Some(k), Some(s)) => Some(k / s),
        _ => None,
    };
    let summary = LmSummary {
        recipe: r.name.clone(),
        teacher: teacher_report,
        students: reports,
        prompts,
        extra_sources: r.eval.extra.iter().map(|s| s.path.clone()).collect(),
        train_tokens: data.train.n_tokens_real,
        validation_tokens: data.validation.n_tokens_real,
        ppl_ratio_kd_over_scratch: ratio,
        repetition_penalty: r.eval.repetition_penalty,
        teacher_train_dtype,
    };
    write_json(&out.join("summary.json"), &summary)?;
    write_atomic(&out.join("report.txt"), report(&summary).as_bytes())?;
    Ok(summary)
}

fn one() -> f64 {
    1.0
}

/// The human-readable comparison printed at the end of a run.
pub fn report(s: &LmSummary) -> String {
    let mut o = String::new();
    o +=
        &format!("== {}: {} training tokens, {} validation tokens ==\n", s.recipe, s.train_tokens, s.validation_tokens);
    o += &format!(
        "{:<16} {:>11} {:>9} {:>7} {:>9} {:>10} {:>9} {:>8}",
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
            "{:<16} {:>11} {:>9.1} {:>6.1}x {:>9.0} {:>10.2} {:>9} {:>8}",
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
            o += &format!("  {:<16} {}\n", role, cells.join(" | "));
        }
        for (kind, gens) in p.by_decoding() {
            for (role, g) in gens {
                o += &format!(
                    "  {kind:<9} {role:<16} [distinct-2 {:.2}, repetition {:.2}] {:?}\n",
                    g.distinct_2, g.repetition_rate, g.text
                );
            }
        }
    }
    o += &collapse_table(s);
    o
}

/// Distinct-2 below which a generation counts as collapsed (looping) in the report.
pub const COLLAPSE_DISTINCT_2: f64 = 0.5;

/// Per model and decoding, how many prompts' generations are not collapsed (distinct-2 ≥ 0.5).
fn collapse_table(s: &LmSummary) -> String {
    if s.prompts.is_empty() {
        return String::new();
    }
    let mut o = format!(
        "\nnot collapsed (distinct-2 >= {COLLAPSE_DISTINCT_2} over the generated tokens), prompts:\n{:<18}",
        ""
    );
    for (kind, _) in s.prompts[0].by_decoding() {
        o += &format!(" {kind:>10}");
    }
    o.push('\n');
    for role in std::iter::once(&s.teacher.role).chain(s.students.iter().map(|m| &m.role)) {
        o += &format!("  {role:<16}");
        for k in 0..3 {
            let found: Vec<f64> = s
                .prompts
                .iter()
                .filter_map(|p| p.by_decoding()[k].1.iter().find(|(r, _)| r == role).map(|(_, g)| g.distinct_2))
                .collect();
            let cell = if found.is_empty() {
                "-".to_owned()
            } else {
                format!("{}/{}", found.iter().filter(|&&d| d >= COLLAPSE_DISTINCT_2).count(), found.len())
            };
            o += &format!(" {cell:>10}");
        }
        o.push('\n');
    }
    o
}
