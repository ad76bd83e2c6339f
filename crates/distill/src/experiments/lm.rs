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

use distill_text::TokenBlocks;
use tch::{nn, Device, Kind};

use crate::data::text::{lm_batch, text_blocks};
use crate::eval::generate::GenerateOptions;
use crate::eval::instruct::{self, read_instructions, KindGrades};
use crate::eval::{generate_texts, score_many, tokens_per_second, top_k_table, Generation, LmScores};
use crate::io::export::{export_hf_with_chat_template, GgufType};
use crate::io::lm::{load_lm, LoadedLm};
use crate::losses::divergence::Divergence;
use crate::methods::{response, BuildContext};
use crate::models::lm::CausalLm;
use crate::models::lm::LmConfig;
use crate::plan::{lm_plan, Arch, InitFrom, Phase, Role, TeacherFrom};
use crate::recipe::{LmRecipe, ResolvedLm};
use crate::student::prune::{self, Importance, Selection};
use crate::student::quant::{quantize_weights, QuantFormat};
use crate::student::{init_student, student_config, LmStudent, StudentInit};
use crate::tasks::{LmKdTask, TeacherMemo};
use crate::teacher::cache::CachedTeacher;
use crate::teacher::{resolve_teacher_kind, teacher_in_kind, LmMixture, Teacher};
use crate::train::checkpoint::{write_atomic, write_json};
use crate::train::{fit, TrainOptions, TrainReport};
use crate::{Error, Result};

pub use super::lm_report::{report, LmSummary, ModelReport, PromptReport};
pub use super::RunOptions;

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

/// The first `rows` training rows' ids `[rows, T]`, what the student inits read.
fn calibration(train: &TokenBlocks, rows: usize, device: Device) -> tch::Tensor {
    let rows: Vec<usize> = (0..train.n_blocks().min(rows)).collect();
    lm_batch(train, &rows, device).ids
}

/// What every student phase of a run shares.
struct PhaseInputs<'a> {
    /// The logit term's divergence, as the recipe resolved it.
    divergence: Divergence,
    /// With `student.init = "prune"`: the teacher's importance scores and what the student keeps.
    pruning: Option<(Importance, Selection)>,
    /// The teacher assistant's config and, with `assistant.init = "prune"`, what it keeps.
    assistant: Option<(LmConfig, Option<Selection>)>,
    /// `[[teachers]]`, loaded (multi-teacher KD).
    extra_teachers: &'a [LoadedLm],
    /// `student.from`, loaded: the existing model every student phase starts from.
    student_from: Option<&'a LoadedLm>,
    r: &'a LmRecipe,
    teacher: &'a LoadedLm,
    /// The student's config, derived once from the teacher's.
    s_cfg: &'a LmConfig,
    /// The teacher the students train against: the online model (f32 or its bf16 copy) or the
    /// cache.
    training_teacher: Teacher<'a>,
    train: &'a TokenBlocks,
    /// The online teacher's final hidden states per training batch, shared by the phases that
    /// train on the same rows (KD, its twin, QAD): the teacher runs once per batch.
    memo: &'a TeacherMemo,
    out: &'a Path,
    opts: &'a RunOptions,
}

/// A student phase's var store, model, training report and export directory.
type PhaseResult = (nn::VarStore, CausalLm, TrainReport, PathBuf);

/// A phase's config, its `[student]`-like spec and what pruning keeps of the teacher for it.
type PhaseArch<'a> = (&'a LmConfig, &'a LmStudent, Option<&'a Selection>);

/// The architecture a phase trains: the student's, or the teacher assistant's — its config,
/// its `[student]`-like spec and what pruning keeps of the teacher for it.
fn phase_arch<'a>(inp: &'a PhaseInputs<'_>, ph: &Phase) -> Result<PhaseArch<'a>> {
    let r = inp.r;
    match (ph.arch, &inp.assistant, r.assistant.as_ref()) {
        (Arch::Assistant, Some((cfg, sel)), Some(spec)) => Ok((cfg, spec, sel.as_ref())),
        (Arch::Assistant, ..) => Err(Error::Invalid(format!("phase {}: the recipe has no [assistant]", ph.id))),
        _ => Ok((inp.s_cfg, &r.student, inp.pruning.as_ref().map(|(_, s)| s))),
    }
}

/// Seeds and fills a fresh student's weights as the phase's init says: an earlier phase's
/// weights, the run's pruned slice of the teacher, or `student.init` (or the phase's own).
fn init_weights(
    inp: &PhaseInputs<'_>,
    ph: &Phase,
    (s_cfg, spec, pruning): PhaseArch<'_>,
    earlier: &[(&str, &nn::VarStore, &CausalLm)],
) -> Result<(nn::VarStore, CausalLm)> {
    let PhaseInputs { r, teacher, train, opts, .. } = *inp;
    let name = ph.id.as_str();
    match &ph.init {
        InitFrom::Salted(salt) => tch::manual_seed((r.seed ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15)) as i64),
        _ => tch::manual_seed(r.seed as i64),
    }
    let mut vs = nn::VarStore::new(teacher.model.device());
    let mut model = CausalLm::new(vs.root(), s_cfg)?;
    match (&ph.init, pruning) {
        (InitFrom::Phase(from), _) => {
            let src = earlier.iter().find(|(id, ..)| id == from).ok_or_else(|| {
                Error::Invalid(format!("phase {name} starts from phase {from}'s weights, but {from} has not run"))
            })?;
            if src.2.has_lora() {
                // A LoRA phase hands on its merged weights.
                let vars = vs.variables();
                tch::no_grad(|| {
                    for (n, w) in src.2.merged()?.named_parameters() {
                        let dst =
                            vars.get(&n).ok_or_else(|| Error::Invalid(format!("phase {name}: no variable {n}")))?;
                        dst.shallow_clone().f_copy_(&w)?;
                    }
                    Ok::<_, Error>(())
                })?;
            } else {
                vs.copy(src.1)?;
            }
        }
        // An existing student: every phase of its architecture starts from its weights.
        (InitFrom::Seed | InitFrom::Salted(_), _) if spec.from.is_some() => {
            let loaded = inp.student_from.ok_or_else(|| {
                Error::Invalid(format!("phase {name}: student.from is set but the student was not loaded"))
            })?;
            vs.copy(&loaded.vs)?;
        }
        // The same pruned weights for every phase, importance estimated once per run.
        (InitFrom::Seed | InitFrom::Salted(_), Some(sel)) => {
            prune::slice_into(&vs, &teacher.vs.variables(), teacher.model.config(), sel)?
        }
        (how, _) => {
            let how = match how {
                InitFrom::With(init) => *init,
                _ => spec.init(),
            };
            let calib = calibration(train, spec.calib_rows(), teacher.model.device());
            let init = init_student(&vs, s_cfg, teacher, how, &calib)?;
            if opts.verbose && how == StudentInit::EmbeddingPca && init.kept < 1.0 {
                eprintln!(
                    "{name:>8}: embedding projected onto the teacher's top {} principal directions ({:.1}% of its residual stream)",
                    s_cfg.hidden_size,
                    100.0 * init.kept
                );
            }
        }
    }
    if let Some(lora) = ph.lora(r.student.lora.as_ref(), &r.distill.variants) {
        // Adapters on the initialized weights, which freeze: only the adapters train.
        model.add_lora(&vs.root(), lora)?;
        model.freeze_base()?;
        if opts.verbose {
            eprintln!(
                "{name:>8}: LoRA rank {} on {}: {} trainable parameters of {}",
                lora.rank,
                lora.modules().join(", "),
                model.lora_param_count(),
                model.param_count()
            );
        }
    }
    Ok((vs, model))
}

/// The teacher a phase learns from — the recipe's (online or cached, with the run's memo), an
/// earlier phase's model (a born-again generation, the teacher assistant), or the weighted
/// teachers of multi-teacher KD.
fn phase_teacher<'a>(
    inp: &'a PhaseInputs<'a>,
    ph: &Phase,
    earlier: &[(&str, &nn::VarStore, &'a CausalLm)],
) -> Result<(Teacher<'a>, Option<&'a TeacherMemo>)> {
    let (r, name) = (inp.r, ph.id.as_str());
    Ok(match &ph.teacher {
        TeacherFrom::Phase(from) => {
            let src = earlier.iter().find(|(id, ..)| id == from).ok_or_else(|| {
                Error::Invalid(format!("phase {name} learns from phase {from}, but {from} has not run"))
            })?;
            (Teacher::Lm(src.2), None)
        }
        TeacherFrom::Weighted(_, weighting) => {
            let mt = r.distill.multi_teacher.as_ref().ok_or_else(|| {
                Error::Invalid(format!("phase {name}: weighted teachers without distill.multi_teacher"))
            })?;
            let first = match &inp.training_teacher {
                Teacher::Lm(m) => *m,
                _ => &inp.teacher.model,
            };
            let members: Vec<&CausalLm> =
                std::iter::once(first).chain(inp.extra_teachers.iter().map(|t| &t.model)).collect();
            let fixed = mt.fixed_weights(members.len());
            (Teacher::Mixture(LmMixture { members, fixed, weighting: *weighting, combine: mt.combine }), None)
        }
        _ => (inp.training_teacher.clone(), Some(inp.memo)),
    })
}

/// Exports a finished phase's model: the HF directory, and — for the KD student and quantized
/// phases — a GGUF file for llama.cpp (matrices F16, or the phase's quantized format) when GGUF
/// can express it (byte-level BPE tokenizer, no sliding window); otherwise it says why.
fn export_phase(
    inp: &PhaseInputs<'_>,
    ph: &Phase,
    model: &CausalLm,
    quant: Option<GgufType>,
    dir: &Path,
) -> Result<()> {
    let teacher = inp.teacher;
    // The teacher's chat template goes with every student: they share its tokenizer, and a
    // student distilled on conversations is used through it.
    let template = teacher.chat_template.as_deref();
    export_hf_with_chat_template(model, Some(&teacher.tokenizer_json), template, dir)?;
    let gguf_ty = match (quant, ph.role) {
        (Some(ty), _) => Some(ty),
        (None, Role::StudentKd) => Some(GgufType::F16),
        _ => None,
    };
    if let Some(ty) = gguf_ty {
        let gguf = dir.with_extension("gguf");
        if let Err(e) = crate::io::export::export_gguf(model, &teacher.tokenizer, template, &inp.r.name, &gguf, ty) {
            eprintln!("{:>8}: no GGUF export ({e}); the HF directory {} is complete", ph.id, dir.display());
        }
    }
    Ok(())
}

/// Trains (or reloads, when already done) one student phase; `earlier` holds the var stores and
/// models of the phases before it, by id. Returns its var store, model, training report and
/// export directory (the phase's own `export`, or `phases/<id>/model`).
fn student_phase(
    inp: &PhaseInputs<'_>,
    ph: &Phase,
    earlier: &[(&str, &nn::VarStore, &CausalLm)],
) -> Result<PhaseResult> {
    let PhaseInputs { r, teacher, train, out, opts, .. } = *inp;
    let name = ph.id.as_str();
    let export_dir = match ph.export {
        Some(e) => out.join(e),
        None => ph.dir(out).join("model"),
    };
    let arch = phase_arch(inp, ph)?;
    let s_cfg = arch.0;
    let phase_dir = ph.dir(out);
    let done = phase_dir.join("train.json");
    if let Ok(text) = std::fs::read_to_string(&done) {
        let report: TrainReport = serde_json::from_str(&text).map_err(|e| Error::format(&done, e.to_string()))?;
        let (vs, model) = CausalLm::from_pretrained(&export_dir, teacher.model.device(), Kind::Float)?;
        if opts.verbose {
            eprintln!("{name:>8}: trained earlier, reloaded from {}", export_dir.display());
        }
        return Ok((vs, model, report, export_dir));
    }
    let (vs, model) = init_weights(inp, ph, arch, earlier)?;
    let quant = ph.quant.map(QuantFormat::export_type);
    let loss = response::lm_term(&r.distill, inp.divergence, ph.alpha.unwrap_or(0.0));
    let (phase_teacher, memo) = phase_teacher(inp, ph, earlier)?;
    let t_cfg = match &phase_teacher {
        Teacher::Lm(m) => m.config(),
        _ => teacher.model.config(),
    };
    // The extra terms (the KD student's `[distill.<term>]`, a variant's own), their parameters
    // trained and checkpointed with the student, never exported.
    let mut terms = Vec::new();
    if ph.distills() && ph.trains {
        for cfg in ph.terms(&r.distill.terms, &r.distill.variants)? {
            let term = cfg.build(lm_build_context(vs.root(), s_cfg, t_cfg))?;
            if opts.verbose {
                eprintln!("{name:>8}: {}", term.describe());
            }
            terms.push(term);
        }
    }
    let report = if ph.trains {
        let on_policy = r.distill.on_policy.clone().filter(|_| ph.distills());
        let mut task = LmKdTask {
            student: &model,
            teacher: Some(phase_teacher),
            blocks: train,
            loss,
            terms,
            quant,
            memo,
            on_policy,
        };
        let topts = TrainOptions {
            phase: name.to_string(),
            seed: r.seed,
            cfg: ph.train.clone().unwrap_or_else(|| r.train.clone()),
            dir: phase_dir.clone(),
            checkpoint_every: r.checkpoint.every_steps,
            log_every: r.log.every_steps.unwrap_or(10),
            progress: opts.progress,
            progress_seconds: r.log.progress_seconds,
            tensorboard: r.log.tensorboard,
            stop_after: opts.time_steps,
            tokens_per_example: Some(r.data.pack.seq_len),
        };
        let report = fit(&vs, &mut task, &topts)?;
        if opts.time_steps.is_some() {
            // Timed, not trained: nothing to export or record.
            return Ok((vs, model, report, export_dir));
        }
        report
    } else {
        std::fs::create_dir_all(&phase_dir).map_err(|e| Error::io(&phase_dir, e))?;
        TrainReport::untrained()
    };
    if let Some(ty) = quant {
        // From here on the model is what the GGUF file holds (QAD trained the full-precision
        // weights behind the rounding; PTQ rounds the KD student's).
        quantize_weights(&model, ty)?;
    }
    export_phase(inp, ph, &model, quant, &export_dir)?;
    write_json(&done, &report)?;
    if opts.verbose && ph.trains {
        eprintln!("{name:>8}: {} steps in {:.0}s, final loss {:.4}", report.steps, report.seconds, report.final_loss);
    } else if opts.verbose {
        eprintln!("{name:>8}: not trained; exported to {}", export_dir.display());
    }
    Ok((vs, model, report, export_dir))
}

/// What an LM term is built against: both models' depth, width, heads and q/k/v widths.
fn lm_build_context<'a>(vs: nn::Path<'a>, s: &LmConfig, t: &LmConfig) -> BuildContext<'a> {
    let qkv = |c: &LmConfig| [c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim, c.num_kv_heads * c.head_dim];
    BuildContext {
        vs,
        student_layers: s.num_layers as usize,
        student_width: s.hidden_size,
        teacher_layers: t.num_layers as usize,
        teacher_width: t.hidden_size,
        student_shapes: vec![],
        teacher_shapes: vec![],
        student_qkv: qkv(s),
        teacher_qkv: qkv(t),
        student_heads: s.num_heads,
        teacher_heads: t.num_heads,
    }
}

/// Builds every configured term (the KD student's and each variant's) against the student's and
/// the teacher's configs in throwaway variables: a layer past a model or relation heads that
/// do not divide the widths are errors before anything trains.
fn check_terms(r: &LmRecipe, s: &LmConfig, t: &LmConfig) -> Result<()> {
    let vs = nn::VarStore::new(Device::Cpu);
    let variants = r.distill.variants.values().flat_map(|v| v.terms.configured());
    for cfg in r.distill.terms.configured().into_iter().chain(variants) {
        cfg.build(lm_build_context(vs.root() / "check", s, t))?;
    }
    Ok(())
}

/// The recipe's teacher and its `[[teachers]]`, every tokenizer checked before any weights load.
fn load_teachers(rr: &ResolvedLm, multi_teacher: bool, say: &dyn Fn(String)) -> Result<(LoadedLm, Vec<LoadedLm>)> {
    let teacher_path = rr.teacher_path.as_path();
    if multi_teacher {
        let keys: Vec<(String, &Path)> = std::iter::once(("teacher.path".to_string(), teacher_path))
            .chain(rr.extra_teachers.iter().enumerate().map(|(i, p)| (format!("teachers[{i}].path"), p.as_path())))
            .collect();
        crate::io::lm::check_same_tokenizer(&keys)?;
    }
    say(format!("loading teacher {}", teacher_path.display()));
    let teacher = load_lm(teacher_path, rr.device)?;
    let vocab = teacher.model.config().vocab_size;
    let extra_teachers: Vec<LoadedLm> = rr
        .extra_teachers
        .iter()
        .map(|p| {
            say(format!("loading teacher {}", p.display()));
            let t = load_lm(p, rr.device)?;
            crate::io::lm::check_compatible(&t, vocab, Some(&teacher.tokenizer))?;
            Ok(t)
        })
        .collect::<Result<_>>()?;
    Ok((teacher, extra_teachers))
}

/// `student.from`: an existing model as the student — its tokenizer checked against the
/// teacher's before any weights load, then loaded (f32) and its shape said.
fn load_student(rr: &ResolvedLm, teacher: &LoadedLm, say: &dyn Fn(String)) -> Result<Option<LoadedLm>> {
    let Some(path) = &rr.student_from else { return Ok(None) };
    check_student_tokenizer(rr, &teacher.tokenizer)?;
    say(format!("loading student {}", path.display()));
    let s = load_lm(path, rr.device)?;
    // The tokenizers were compared above; the logits' width is known only now.
    crate::io::lm::check_compatible(teacher, s.model.config().vocab_size, None)?;
    let c = s.model.config();
    say(format!(
        "student {}: {} layers × {} channels, {} heads ({} kv), MLP {}, {} parameters",
        c.family.model_type(),
        c.num_layers,
        c.hidden_size,
        c.num_heads,
        c.num_kv_heads,
        c.intermediate_size,
        s.model.param_count()
    ));
    Ok(Some(s))
}

/// `student.from`'s tokenizer equals the teacher's (read without any weights).
fn check_student_tokenizer(rr: &ResolvedLm, teacher: &tokenizers::Tokenizer) -> Result<()> {
    let Some(path) = &rr.student_from else { return Ok(()) };
    crate::io::lm::check_tokenizer_of(
        ("student.from", path),
        ("the teacher", &rr.teacher_path, teacher),
        "distillation compares the two models' next-token distributions token by token, so the student needs the teacher's vocabulary and special tokens",
    )
}

/// The recipe's phases, as `run` executes them and `check` shows them.
fn recipe_plan(r: &LmRecipe, extra_teachers: usize) -> Vec<crate::plan::Phase> {
    lm_plan(&r.distill, &r.student, r.quantize.as_ref(), &r.train, r.seed, r.assistant.is_some(), extra_teachers)
}

/// Evaluation needs at least one full validation row: the error says what the split held and
/// what to change (`run` and `check` both refuse through it).
fn require_validation_rows(data: &distill_text::TextDataset) -> Result<()> {
    if data.validation.is_empty() {
        return Err(Error::Invalid(format!(
            "the validation split has no full row ({} training and {} validation documents, rows of {} tokens); raise data.split.val_fraction or lower data.pack.seq_len",
            data.stats.train_docs, data.stats.val_docs, data.train.seq_len
        )));
    }
    Ok(())
}

/// What `distill check` can check of an LM recipe's models and data without loading weights
/// (when their files are here): `student.from`'s tokenizer against the teacher's, each model's
/// config, family, tokenizer and tensor names ([`crate::io::lm::check_model_files`]), the
/// student's shape derived from the teacher, and every data source read (its records' fields).
/// Returns the plan as lines to print: the models with their parameter counts, the documents,
/// and each training phase's steps and tokens.
pub fn check_models(r: &LmRecipe) -> Result<Vec<String>> {
    let rr = r.resolve()?;
    // The teacher first, then its tokenizer against student.from's: a student of another
    // vocabulary is refused before its weights files are even opened, as at run time.
    let (t_cfg, t_tok) = match rr.teacher_path.exists() {
        true => crate::io::lm::check_model_files(&rr.teacher_path).map(|(c, t)| (Some(c), Some(t)))?,
        false => (None, None),
    };
    if let Some(teacher) = &t_tok {
        check_student_tokenizer(&rr, teacher)?;
    }
    if let Some(s) = &r.teacher.server {
        crate::teacher::server::ping(&s.options())?;
    }
    let mut cfgs = Vec::new();
    for p in rr.extra_teachers.iter().chain(&rr.student_from) {
        if p.exists() {
            cfgs.push((p.clone(), crate::io::lm::check_model_files(p)?.0));
        }
    }
    let describe = |who: &str, c: &LmConfig| {
        format!(
            "{who}: {} {} layers × {} ({} heads, {} kv), {} parameters",
            c.family.hf_class(),
            c.num_layers,
            c.hidden_size,
            c.num_heads,
            c.num_kv_heads,
            c.param_count().map_or("?".into(), |n| match n {
                0..1_000_000 => n.to_string(),
                _ => format!("{:.1}M", n as f64 / 1e6),
            })
        )
    };
    let mut lines = Vec::new();
    if let Some(t) = &t_cfg {
        lines.push(describe("teacher", t));
    }
    match (&rr.student_from, &t_cfg) {
        (Some(p), _) => {
            if let Some((_, s)) = cfgs.iter().find(|(q, _)| q == p) {
                lines.push(describe("student (from)", s));
            }
        }
        (None, Some(t)) => {
            let s_cfg = student_config(t, &r.student)?;
            if r.student.init() == StudentInit::Prune {
                prune::check_slice(t, &s_cfg)?;
            }
            lines.push(format!("{} (init {})", describe("student", &s_cfg), r.student.init().name()));
        }
        (None, None) => {}
    }
    // The data: every source read, its records' fields found, and — with the teacher's tokenizer
    // and chat template, as `run` does — tokenized and packed, so that an empty validation split
    // fails here.
    match (&t_cfg, &t_tok) {
        (Some(t), Some(tok)) => {
            let chat = crate::io::lm::model_chat(&rr.teacher_path, t, tok)?;
            let data = distill_text::build_dataset_chat(&rr.data, tok, chat.as_ref().map(|c| c as _))?;
            require_validation_rows(&data)?;
            lines.push(format!(
                "data: {} training and {} validation documents → {} training and {} validation rows of {} tokens",
                data.stats.train_docs,
                data.stats.val_docs,
                data.train.n_blocks(),
                data.validation.n_blocks(),
                data.train.seq_len
            ));
        }
        _ => {
            let text = distill_text::prepare_text(&rr.data)?;
            lines.push(format!(
                "data: {} training and {} validation documents",
                text.split.train.len(),
                text.split.validation.len()
            ));
        }
    }
    for ph in recipe_plan(r, rr.extra_teachers.len()).iter().filter(|p| p.trains) {
        let t = ph.train.as_ref().unwrap_or(&r.train);
        let steps = match (t.steps, t.epochs) {
            (Some(s), _) => format!(
                "{s} steps × {} rows × {} tokens = {} tokens",
                t.batch_size,
                rr.data.pack.seq_len,
                s as usize * t.batch_size * rr.data.pack.seq_len
            ),
            (None, Some(e)) => format!("{e} epochs of {} rows", t.batch_size),
            (None, None) => "1 epoch".into(),
        };
        lines.push(format!("phase {}: {} ({steps})", ph.id, ph.role.name()));
    }
    Ok(lines)
}

/// The student's parameter count, with a warning on a huge capacity gap to the teacher's.
fn student_params(s_cfg: &LmConfig, t_params: i64) -> Result<i64> {
    let vs = nn::VarStore::new(Device::Cpu);
    let s_params = CausalLm::new(vs.root(), s_cfg)?.param_count();
    if (s_params as f64) < 0.01 * t_params as f64 {
        eprintln!(
            "warning: the student has {s_params} parameters, {:.2}% of the teacher's {t_params}: a capacity gap this large often makes KD fail (Mirzadeh et al. 2020); consider a teacher assistant",
            100.0 * s_params as f64 / t_params as f64
        );
    }
    Ok(s_params)
}

/// An offline teacher, checked against this teacher and these rows before anything trains: the
/// recipe's `teacher.cache`, or with `[teacher.server]` the server's capture into
/// `RUN/teacher-cache` (resumed like the run).
fn open_cache(
    (r, rr): (&LmRecipe, &ResolvedLm),
    teacher: &LoadedLm,
    train: &TokenBlocks,
    (out, opts): (&Path, &RunOptions),
    say: &dyn Fn(String),
) -> Result<Option<CachedTeacher>> {
    let dir = match (&r.teacher.server, &rr.cache) {
        (Some(s), _) => {
            if opts.time_steps.is_some() {
                return Err(Error::Invalid(
                    "--estimate does not time a served teacher's capture: capture it first (distill cache --server) and set teacher.cache".into(),
                ));
            }
            let dir = out.join("teacher-cache");
            say(format!(
                "asking {} for the teacher's top-{} over {} rows into {}",
                s.url,
                s.top_k,
                train.n_blocks(),
                dir.display()
            ));
            let cap = crate::teacher::server::ServerCapture {
                top_k: s.top_k,
                rows_per_shard: 256,
                encoding: distill_cache::LogprobEncoding::default(),
                part: None,
                progress: opts.progress,
            };
            let cfg = teacher.model.config();
            let bos = cfg.bos_token_id.and_then(|b| u32::try_from(b).ok());
            let (_, st) = crate::teacher::server::capture_server(
                &s.options(),
                &teacher.tokenizer,
                cfg.vocab_size as usize,
                bos,
                train,
                &dir,
                &cap,
            )?;
            say(format!(
                "teacher server: {} positions, {} retries, {} answer keys naming no single id left in the tail, a top-1 behind a shared key found at {} positions and unknown at {}",
                st.positions, st.retries, st.ambiguous_keys, st.top1_resolved, st.top1_ambiguous
            ));
            dir
        }
        (None, Some(d)) => d.clone(),
        (None, None) => return Ok(None),
    };
    let c = CachedTeacher::open(&dir, teacher, train)?;
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
    Ok(Some(c))
}

/// With `student.init = "prune"`: the teacher's importance on the calibration rows and what the
/// student keeps, written to `pruning.json`.
fn plan_pruning(
    r: &LmRecipe,
    teacher: &LoadedLm,
    s_cfg: &LmConfig,
    train: &TokenBlocks,
    (s_params, t_params): (i64, i64),
    out: &Path,
    say: &dyn Fn(String),
) -> Result<Option<(Importance, Selection)>> {
    if r.student.init() != StudentInit::Prune || r.student.from.is_some() {
        return Ok(None);
    }
    let calib = calibration(train, r.student.calib_rows(), teacher.model.device());
    let (imp, sel) = prune::plan(&teacher.model, &calib, s_cfg)?;
    let v = serde_json::json!({ "importance": imp, "selection": sel });
    write_json(&out.join("pruning.json"), &v)?;
    say(format!(
        "pruned the teacher to {} layers × {} channels, {} heads ({} kv), {} MLP neurons: {s_params} parameters, {:.1}% of its {t_params}; importance on {} tokens in pruning.json",
        s_cfg.num_layers,
        s_cfg.hidden_size,
        s_cfg.num_heads,
        s_cfg.num_kv_heads,
        s_cfg.intermediate_size,
        100.0 * s_params as f64 / t_params as f64,
        imp.tokens
    ));
    Ok(Some((imp, sel)))
}

/// The teacher assistant's shape (and pruning), derived from the teacher like the student's.
fn plan_assistant(
    r: &LmRecipe,
    teacher: &LoadedLm,
    train: &TokenBlocks,
    say: &dyn Fn(String),
) -> Result<Option<(LmConfig, Option<Selection>)>> {
    let Some(spec) = &r.assistant else { return Ok(None) };
    let a_cfg = student_config(teacher.model.config(), spec)?;
    let sel = match spec.init() {
        StudentInit::Prune => {
            let calib = calibration(train, spec.calib_rows(), teacher.model.device());
            Some(prune::plan(&teacher.model, &calib, &a_cfg)?.1)
        }
        _ => None,
    };
    let a_cfg = match &sel {
        Some(sel) => LmConfig { layer_types: teacher.model.config().pick_layers(&sel.layers).layer_types, ..a_cfg },
        None => a_cfg,
    };
    let a_params = CausalLm::new(nn::VarStore::new(Device::Cpu).root(), &a_cfg)?.param_count();
    say(format!(
        "teacher assistant: {} layers × {} channels, {a_params} parameters",
        a_cfg.num_layers, a_cfg.hidden_size
    ));
    Ok(Some((a_cfg, sel)))
}

/// A copy of the teacher in another precision, with its variables.
type Online = (nn::VarStore, CausalLm);

/// The online teacher the students train against: a bf16 copy where that is faster (`None`:
/// the f32 model itself), and the precision as the summary records it.
fn online_teacher(
    r: &LmRecipe,
    teacher: &LoadedLm,
    device: Device,
    needed: bool,
    say: &dyn Fn(String),
) -> Result<(Option<Online>, Option<String>)> {
    if !needed {
        return Ok((None, None));
    }
    let (kind, why) = resolve_teacher_kind(r.teacher.dtype, teacher.model.config(), device)?;
    say(format!("teacher during training: {why}"));
    let online = if kind != Kind::Float { Some(teacher_in_kind(&teacher.vs, &teacher.model, kind)?) } else { None };
    Ok((online, Some(why)))
}

/// Every trained phase's result, in plan order.
type Students<'p> = Vec<(&'p Phase, PhaseResult)>;

/// Perplexity (and agreement with the teacher) of the teacher and every student on validation
/// and each `eval.extra` source: every student on the same rows, the teacher run once per batch
/// for all of them (and scored from that same forward).
fn score_models(
    r: &LmRecipe,
    rr: &ResolvedLm,
    teacher: &LoadedLm,
    students: &Students<'_>,
    data: &distill_text::TextDataset,
) -> Result<(ModelReport, Vec<ModelReport>)> {
    let chat = teacher.chat();
    let extra_blocks: Vec<TokenBlocks> = rr
        .extra
        .iter()
        .map(|s| {
            let (seq, min_chars) = (data.train.seq_len, rr.data.clean.min_chars);
            text_blocks(std::slice::from_ref(s), &teacher.tokenizer, seq, min_chars, chat.as_ref().map(|c| c as _))
        })
        .collect::<Result<_>>()?;
    let max_rows = r.eval.max_val_blocks;
    let eval_batch = r.train.batch_size.clamp(1, 8);
    let models: Vec<&CausalLm> = students.iter().map(|(_, s)| &s.1).collect();
    let score_all = |b: &TokenBlocks| -> Result<(LmScores, Vec<LmScores>)> {
        let (t, s) = score_many(&models, Some(&teacher.model), b, max_rows, eval_batch)?;
        Ok((t.expect("a teacher was given"), s))
    };
    let (t_val, val_scores) = score_all(&data.validation)?;
    let (t_extra, extra_scores): (Vec<LmScores>, Vec<Vec<LmScores>>) =
        extra_blocks.iter().map(score_all).collect::<Result<Vec<_>>>()?.into_iter().unzip();
    let t_params = teacher.model.param_count();
    let seq = data.train.seq_len as i64;
    let teacher_report = ModelReport {
        role: Role::Teacher.name().into(),
        params: t_params,
        size_bytes: teacher.file_bytes,
        compression_ratio: 1.0,
        tokens_per_s: tokens_per_second(&teacher.model, 1, seq)?,
        validation: t_val,
        extra: t_extra,
        train: None,
        path: Some(rr.teacher_path.clone()),
        phase: None,
        taught_by: vec![],
        answers: None,
    };
    let mut reports = Vec::new();
    for (i, (ph, (_vs, model, report, dir))) in students.iter().enumerate() {
        // A quantized student's size is its GGUF file's; the others', their F32 safetensors.
        let gguf = dir.with_extension("gguf");
        let size_bytes = match (ph.quant, std::fs::metadata(&gguf)) {
            (Some(_), Ok(m)) => m.len(),
            _ => dir_bytes(dir),
        };
        reports.push(ModelReport {
            role: ph.display_name(),
            params: model.param_count(),
            size_bytes,
            compression_ratio: t_params as f64 / model.param_count() as f64,
            tokens_per_s: tokens_per_second(model, 1, seq)?,
            validation: val_scores[i].clone(),
            extra: extra_scores.iter().map(|e| e[i].clone()).collect(),
            train: (report.steps > 0).then(|| report.clone()),
            path: Some(dir.clone()),
            phase: Some(ph.id.clone()),
            taught_by: ph.taught_by(),
            answers: None,
        });
    }
    Ok((teacher_report, reports))
}

/// Next-token tables and greedy, penalized and sampled generations of every model for every
/// `eval.prompts` entry. Each model decodes all prompts as one batch per decoding (the weights
/// are read once per step for every prompt); row i is what decoding prompt i alone gives.
fn prompt_reports(r: &LmRecipe, teacher: &LoadedLm, students: &Students<'_>) -> Result<Vec<PromptReport>> {
    let mut prompts: Vec<PromptReport> = r
        .eval
        .prompts
        .iter()
        .map(|p| PromptReport { prompt: p.clone(), top_k: vec![], greedy: vec![], penalized: vec![], sampled: vec![] })
        .collect();
    let models: Vec<(String, &CausalLm)> = std::iter::once((Role::Teacher.name().to_string(), &teacher.model))
        .chain(students.iter().map(|(ph, s)| (ph.display_name(), &s.1)))
        .collect();
    let greedy = GenerateOptions {
        max_new_tokens: r.eval.max_new_tokens,
        temperature: 0.0,
        top_k: 0,
        top_p: 1.0,
        seed: r.seed,
        eos_id: None,
        repetition_penalty: 1.0,
    };
    let pen = GenerateOptions { repetition_penalty: r.eval.repetition_penalty, ..greedy.clone() };
    let sampled = GenerateOptions {
        temperature: r.eval.sample_temperature,
        top_k: r.eval.sample_top_k,
        top_p: r.eval.sample_top_p,
        eos_id: teacher.model.config().eos_token_ids.first().copied(),
        ..greedy.clone()
    };
    for (role, m) in models {
        let role = role.as_str();
        for pr in prompts.iter_mut() {
            pr.top_k.push((role.into(), top_k_table(m, &teacher.tokenizer, &pr.prompt, r.eval.top_k_table)?));
        }
        let mut decode =
            |opts: &GenerateOptions, pick: fn(&mut PromptReport) -> &mut Vec<(String, Generation)>| -> Result<()> {
                let gens = generate_texts(m, &teacher.tokenizer, &r.eval.prompts, opts, &[])?;
                for (pr, g) in prompts.iter_mut().zip(gens) {
                    pick(pr).push((role.into(), g));
                }
                Ok(())
            };
        decode(&greedy, |pr| &mut pr.greedy)?;
        if r.eval.repetition_penalty != 1.0 {
            decode(&pen, |pr| &mut pr.penalized)?;
        }
        decode(&sampled, |pr| &mut pr.sampled)?;
    }
    Ok(prompts)
}

/// `eval.instructions`: every model's greedy answers through the teacher's chat template,
/// graded into its report; the responses side by side per instruction, and per-kind grades.
type InstructionReports = (Vec<PromptReport>, Vec<(String, KindGrades)>);

fn answer_instructions(
    r: &LmRecipe,
    teacher: &LoadedLm,
    students: &Students<'_>,
    teacher_report: &mut ModelReport,
    reports: &mut [ModelReport],
) -> Result<InstructionReports> {
    let Some(path) = &r.eval.instructions else { return Ok((vec![], vec![])) };
    let path = crate::io::fetch::resolve(path)?;
    let items = read_instructions(&path)?;
    let chat = teacher.chat().ok_or_else(|| {
        Error::Invalid(format!("eval.instructions: the teacher {} has no chat template", teacher.source.display()))
    })?;
    let mut prompts: Vec<PromptReport> = items
        .iter()
        .map(|it| PromptReport {
            prompt: match &it.answer {
                Some(a) => format!("[{}] {} (answer: {a})", it.kind, it.prompt),
                None => format!("[{}] {}", it.kind, it.prompt),
            },
            top_k: vec![],
            greedy: vec![],
            penalized: vec![],
            sampled: vec![],
        })
        .collect();
    let mut by_kind = Vec::new();
    let models = std::iter::once((&teacher.model, teacher_report)).chain(students.iter().map(|s| &s.1 .1).zip(reports));
    for (model, report) in models {
        let a = instruct::answer(model, &teacher.tokenizer, &chat, &items, r.eval.instruction_tokens, 16)?;
        for (p, g) in prompts.iter_mut().zip(a.responses) {
            p.greedy.push((report.role.clone(), g));
        }
        by_kind.push((report.role.clone(), a.by_kind));
        report.answers = Some(a.scores);
    }
    Ok((prompts, by_kind))
}

/// Runs (or resumes) an LM distillation recipe into `out`.
pub fn run(r: &LmRecipe, recipe_toml: &str, out: &Path, opts: &RunOptions) -> Result<LmSummary> {
    match run_or_time(r, recipe_toml, out, opts)? {
        Ran::Summary(s) => Ok(*s),
        Ran::Timed(_) => Err(Error::Invalid("a timed run (RunOptions::time_steps) has no summary".into())),
    }
}

/// A trained phase's timing (`distill check --estimate`).
#[derive(Debug, Clone)]
pub struct PhaseTiming {
    pub phase: String,
    /// The steps the phase trains for in the real run.
    pub steps: u64,
    /// Mean seconds of its timed steps after the first.
    pub step_seconds: f64,
}

/// What the recipe's phases cost: each trained phase's first `timed + 1` steps run on the real
/// models and rows in `scratch` (a new directory), the first untimed; nothing is exported or
/// evaluated.
pub fn estimate(r: &LmRecipe, recipe_toml: &str, scratch: &Path, timed: u64) -> Result<Vec<PhaseTiming>> {
    let opts = RunOptions { progress: false, verbose: false, time_steps: Some(timed + 1) };
    match run_or_time(r, recipe_toml, scratch, &opts)? {
        Ran::Timed(t) => Ok(t),
        Ran::Summary(_) => Err(Error::Invalid("estimate: the run was not timed".into())),
    }
}

fn timing(p: &Phase, report: &TrainReport) -> PhaseTiming {
    PhaseTiming { phase: p.id.clone(), steps: report.steps, step_seconds: report.step_seconds.unwrap_or(0.0) }
}

enum Ran {
    Summary(Box<LmSummary>),
    Timed(Vec<PhaseTiming>),
}

fn run_or_time(r: &LmRecipe, recipe_toml: &str, out: &Path, opts: &RunOptions) -> Result<Ran> {
    let say = |m: String| {
        if opts.verbose {
            eprintln!("{m}");
        }
    };
    let rr: ResolvedLm = r.resolve()?;
    let (teacher, extra_teachers) = load_teachers(&rr, r.distill.multi_teacher.is_some(), &say)?;
    let t_cfg = teacher.model.config().clone();
    let student_from = load_student(&rr, &teacher, &say)?;
    let mut s_cfg = match &student_from {
        Some(s) => s.model.config().clone(),
        None => student_config(&t_cfg, &r.student)?,
    };
    check_terms(r, &s_cfg, &t_cfg)?;

    // Conversation records are rendered by the teacher's chat template (the student shares its
    // tokenizer), their assistant tokens learned.
    let chat = teacher.chat();
    let data = distill_text::build_dataset_chat(&rr.data, &teacher.tokenizer, chat.as_ref().map(|c| c as _))?;
    let cut = data.stats.train_pack.n_targets_dropped + data.stats.val_pack.n_targets_dropped;
    if cut > 0 {
        eprintln!(
            "warning: {} conversations are longer than data.pack.seq_len = {}: {cut} assistant tokens past the row are not learned; raise seq_len",
            data.stats.train_pack.n_truncated_docs + data.stats.val_pack.n_truncated_docs,
            rr.data.pack.seq_len
        );
    }
    require_validation_rows(&data)?;
    // What evaluation scores: at most `eval.max_val_blocks` validation rows.
    let val_rows = data.validation.n_blocks();
    let scored = r.eval.max_val_blocks.map_or(val_rows, |m| m.min(val_rows));
    say(format!(
        "data: {} train rows, {val_rows} validation rows of {} tokens{}",
        data.train.n_blocks(),
        data.train.seq_len,
        if scored < val_rows { format!(" ({scored} of them scored: eval.max_val_blocks)") } else { String::new() }
    ));
    // Parameter counts before anything trains.
    let t_params = teacher.model.param_count();
    let s_params = student_params(&s_cfg, t_params)?;
    // A given cache is checked before the run directory exists (a bad one leaves nothing
    // behind); a served teacher is captured into it, after the recipe.
    let (served, cache) =
        (r.teacher.server.is_some(), || open_cache((r, &rr), &teacher, &data.train, (out, opts), &say));
    let mut cached = if served { None } else { cache()? };

    // The recipe first: a directory without it holds nothing a resume would need.
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    write_atomic(&out.join("recipe.toml"), recipe_toml.as_bytes())?;
    std::fs::create_dir_all(out.join("phases")).map_err(|e| Error::io(out, e))?;
    if served {
        cached = cache()?;
    }

    let plan = recipe_plan(r, extra_teachers.len());
    let needs_online = cached.is_none() && plan.iter().any(|p| p.teacher == TeacherFrom::Recipe);
    let (online, teacher_train_dtype) = online_teacher(r, &teacher, rr.device, needs_online, &say)?;
    let online_model = online.as_ref().map(|(_, m)| m).unwrap_or(&teacher.model);
    let training_teacher = match &cached {
        Some(c) => Teacher::Cache(c),
        None => Teacher::Lm(online_model),
    };
    let pruning = plan_pruning(r, &teacher, &s_cfg, &data.train, (s_params, t_params), out, &say)?;
    if let Some((_, sel)) = &pruning {
        // The kept layers keep their attention type (sliding or full).
        s_cfg.layer_types = t_cfg.pick_layers(&sel.layers).layer_types;
    }
    let assistant = plan_assistant(r, &teacher, &data.train, &say)?;
    // 1 GiB of teacher states: 120 batches of 8 × 128 tokens of a 576-wide teacher are 0.28 GiB.
    let memo = TeacherMemo::new(1 << 30);
    let inputs = PhaseInputs {
        divergence: rr.divergence,
        pruning,
        assistant,
        extra_teachers: &extra_teachers,
        student_from: student_from.as_ref(),
        r,
        teacher: &teacher,
        s_cfg: &s_cfg,
        training_teacher,
        train: &data.train,
        memo: &memo,
        out,
        opts,
    };
    let mut students: Students<'_> = Vec::new();
    for ph in &plan {
        let earlier: Vec<(&str, &nn::VarStore, &CausalLm)> =
            students.iter().map(|(p, s)| (p.id.as_str(), &s.0, &s.1)).collect();
        let got = student_phase(&inputs, ph, &earlier)?;
        students.push((ph, got));
    }
    drop(inputs);
    drop(online);
    if opts.time_steps.is_some() {
        return Ok(Ran::Timed(students.iter().filter(|(p, _)| p.trains).map(|(p, s)| timing(p, &s.2)).collect()));
    }

    say("evaluating".into());
    let (mut teacher_report, mut reports) = score_models(r, &rr, &teacher, &students, &data)?;
    let prompts = prompt_reports(r, &teacher, &students)?;
    let (instructions, answers_by_kind) =
        answer_instructions(r, &teacher, &students, &mut teacher_report, &mut reports)?;
    let ppl = |role: Role| reports.iter().find(|m| m.role == role.name()).map(|m| m.validation.perplexity);
    let ratio = match (ppl(Role::StudentKd), ppl(Role::StudentScratch)) {
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
        instructions,
        answers_by_kind,
    };
    write_json(&out.join("summary.json"), &summary)?;
    write_atomic(&out.join("report.txt"), report(&summary).as_bytes())?;
    crate::report::write_report_or_warn(out);
    Ok(Ran::Summary(Box::new(summary)))
}
