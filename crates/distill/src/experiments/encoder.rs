//! The sentence-embedding runner: teacher, the DistilBERT-style student before and after
//! distillation, the narrow student and the static student, each judged on the same held-out
//! documents (probe accuracy and F1, top-k retrieval agreement and cosine with the teacher,
//! embeddings/s at the recipe's batch and threads, parameters and size).
//!
//! Run directory: `recipe.toml`, `teacher_train.safetensors` (the teacher's embedding of every
//! training text, computed once), `phases/<id>/{ckpt.safetensors, metrics.jsonl, result.json,
//! model/}`, `student/` (the distilled student, sentence-transformers layout), `summary.json`,
//! `report.html`.
//! A phase is done when its `result.json` exists; a killed run resumes from its checkpoints.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use crate::data::rng::SplitMix64;
use crate::eval::embed::{mean_cos, probe, throughput, topk_overlap};
use crate::methods::{BuildContext, Term};
use crate::models::sentence::{Embedder, Encoder};
use crate::plan::{encoder_plan, Phase, Role};
use crate::recipe::EncoderRecipe;
use crate::student::encoder::{every_other, layer_subset, projected, static_student};
use crate::tasks::encoder::EncoderKdTask;
use crate::train::checkpoint::{load_tensors, save_tensors, write_atomic, write_json};
use crate::train::{fit, TrainOptions, TrainReport};
use crate::{Error, Result};

pub use super::RunOptions;

/// One model's row of the comparison.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct EncoderRow {
    pub id: String,
    pub label: String,
    pub params: i64,
    /// Weights on disk as exported (f32), MB.
    pub size_mb: f64,
    pub probe_accuracy: f64,
    pub probe_f1: f64,
    /// Mean cos(teacher, model) on the held-out texts (`None`: another width).
    pub cos_to_teacher: Option<f64>,
    /// Overlap of the top-k neighbours with the teacher's on the held-out texts.
    pub topk_overlap: f64,
    pub embeddings_per_s: f64,
    /// Embeddings/s relative to the teacher's.
    pub speedup: f64,
    /// Probe accuracy relative to the teacher's.
    pub accuracy_vs_teacher: f64,
    pub taught_by: Option<String>,
    pub train_steps: Option<u64>,
    pub train_seconds: Option<f64>,
    pub export: Option<String>,
}

/// `summary.json` of a sentence-embedding run.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct EncoderSummary {
    pub name: String,
    pub task: String,
    pub teacher: String,
    pub classes: Vec<String>,
    pub probe_train_docs: usize,
    pub test_docs: usize,
    pub train_texts: usize,
    pub top_k: usize,
    pub batch: usize,
    pub threads: usize,
    /// One row per model, in run order (the report's comparison table).
    pub results: Vec<EncoderRow>,
}

struct Labelled {
    classes: Vec<String>,
    train_texts: Vec<String>,
    train_y: Vec<i64>,
    test_texts: Vec<String>,
    test_y: Vec<i64>,
    /// The training documents the probe is fitted on.
    probe_texts: Vec<String>,
    probe_y: Vec<i64>,
}

fn labelled(r: &EncoderRecipe) -> Result<Labelled> {
    let path = crate::io::fetch::resolve(&r.data.labelled)?;
    let docs = distill_text::read_labelled(&path)?;
    let classes = distill_text::classes(&docs);
    if classes.len() < 2 {
        return Err(Error::Invalid(format!("data.labelled: {} has fewer than two classes", path.display())));
    }
    let mut l = Labelled {
        classes,
        train_texts: vec![],
        train_y: vec![],
        test_texts: vec![],
        test_y: vec![],
        probe_texts: vec![],
        probe_y: vec![],
    };
    let mut seen = std::collections::HashSet::new();
    for d in docs {
        if d.text.trim().is_empty() || !seen.insert(d.text.clone()) {
            continue; // empty or an exact duplicate
        }
        let y = l.classes.iter().position(|c| *c == d.label).unwrap_or(0) as i64;
        if d.is_test(r.data.test_fraction, r.data.split_seed) {
            l.test_texts.push(d.text);
            l.test_y.push(y);
        } else {
            l.train_texts.push(d.text);
            l.train_y.push(y);
        }
    }
    if r.eval.probe_train_texts > 0 && l.train_texts.len() > r.eval.probe_train_texts {
        // A fixed subset (the split's order is by file name; shuffle first).
        let order = SplitMix64::new(r.data.split_seed ^ 0x9b0b).permutation(l.train_texts.len());
        let keep = &order[..r.eval.probe_train_texts];
        l.probe_texts = keep.iter().map(|&i| l.train_texts[i].clone()).collect();
        l.probe_y = keep.iter().map(|&i| l.train_y[i]).collect();
    } else {
        l.probe_texts = l.train_texts.clone();
        l.probe_y = l.train_y.clone();
    }
    if l.train_texts.is_empty() || l.test_texts.len() < 2 {
        return Err(Error::Invalid("data.labelled: the split left no training or test documents".into()));
    }
    Ok(l)
}

/// Unlabeled training texts: the labelled training split and passages of `train_sources`.
fn training_texts(r: &EncoderRecipe, l: &Labelled) -> Result<Vec<String>> {
    let mut texts = if r.data.train_on_labelled { l.train_texts.clone() } else { vec![] };
    if !r.data.train_sources.is_empty() {
        let mut sources = r.data.train_sources.clone();
        for s in &mut sources {
            s.path = crate::io::fetch::resolve(&s.path)?.to_string_lossy().into_owned();
        }
        for d in distill_text::read_sources(&sources)? {
            let words: Vec<&str> = d.text.split_whitespace().collect();
            for c in words.chunks(r.data.passage_words) {
                if c.len() >= 8 {
                    texts.push(c.join(" "));
                }
            }
        }
    }
    let mut order = SplitMix64::new(r.data.split_seed ^ 0x7e47).permutation(texts.len());
    if r.data.max_train_texts > 0 {
        order.truncate(r.data.max_train_texts);
    }
    Ok(order.into_iter().map(|i| std::mem::take(&mut texts[i])).collect())
}

/// Cuts token rows to `max` tokens, keeping the last (the `[SEP]`).
fn cut(rows: Vec<Vec<i64>>, max: usize) -> Vec<Vec<i64>> {
    rows.into_iter()
        .map(|mut r| {
            if r.len() > max {
                let last = *r.last().expect("non-empty");
                r.truncate(max - 1);
                r.push(last);
            }
            r
        })
        .collect()
}

struct EvalSet<'a> {
    l: &'a Labelled,
    teacher_test: Tensor,
    retrieval: usize,
    top_k: usize,
    batch: usize,
    speed_texts: Vec<String>,
    probe_steps: usize,
    probe_l2: f64,
}

/// Scores `model` (the run warned about truncation once, at the start); `test`: its held-out
/// embeddings when already computed (the teacher's).
fn evaluate(model: &dyn Embedder, set: &EvalSet<'_>, size_bytes: i64, test: Option<Tensor>) -> Result<EncoderRow> {
    let train = model.embed(&set.l.probe_texts, set.batch)?;
    let test = match test {
        Some(t) => t,
        None => model.embed(&set.l.test_texts, set.batch)?,
    };
    let p = probe(&train, &set.l.probe_y, &test, &set.l.test_y, set.probe_steps, set.probe_l2);
    let n = set.retrieval.min(test.size()[0] as usize) as i64;
    let overlap = topk_overlap(&set.teacher_test.narrow(0, 0, n), &test.narrow(0, 0, n), set.top_k);
    let cos = mean_cos(&set.teacher_test, &test);
    let speed = throughput(model, &set.speed_texts, set.batch)?;
    let row = EncoderRow {
        id: String::new(),
        label: String::new(),
        params: model.params(),
        size_mb: size_bytes as f64 / 1e6,
        probe_accuracy: p.accuracy,
        probe_f1: p.f1,
        cos_to_teacher: cos,
        topk_overlap: overlap,
        embeddings_per_s: speed,
        speedup: 1.0,
        accuracy_vs_teacher: 1.0,
        taught_by: None,
        train_steps: None,
        train_seconds: None,
        export: None,
    };
    Ok(row)
}

fn build_terms(r: &EncoderRecipe, s: &Encoder, t: &Encoder) -> Result<Vec<Box<dyn Term>>> {
    let (sc, tc) = (&s.bert.config, &t.bert.config);
    r.distill
        .terms()
        .into_iter()
        .map(|cfg| {
            cfg.build(BuildContext {
                vs: s.vs.root() / format!("distill_{}", cfg.key()),
                student_layers: sc.num_hidden_layers as usize,
                student_width: sc.hidden_size,
                teacher_layers: tc.num_hidden_layers as usize,
                teacher_width: tc.hidden_size,
                student_shapes: vec![],
                teacher_shapes: vec![],
                student_qkv: [sc.hidden_size; 3],
                teacher_qkv: [tc.hidden_size; 3],
                student_heads: sc.num_attention_heads,
                teacher_heads: tc.num_attention_heads,
            })
        })
        .collect()
}

/// What every phase of an encoder run reads: the teacher, the training rows and their teacher
/// embeddings, the held-out set.
struct EncoderRun<'a> {
    r: &'a EncoderRecipe,
    teacher: Encoder,
    /// The teacher layers the shallow student keeps.
    layers: Vec<i64>,
    rows: Vec<Vec<i64>>,
    teacher_train: Tensor,
    set: EvalSet<'a>,
    opts: &'a RunOptions,
}

impl EncoderRun<'_> {
    fn say(&self, m: String) {
        if self.opts.verbose {
            eprintln!("{m}");
        }
    }
}

/// The teacher and the shallow student's layers, checked against each other, every term built
/// against both encoders before anything trains.
fn teacher_and_layers(r: &EncoderRecipe) -> Result<(Encoder, Vec<i64>)> {
    let teacher_dir = crate::io::fetch::resolve(&r.teacher.path)?;
    let teacher = Encoder::load(&teacher_dir, Device::Cpu)?;
    let tl = teacher.bert.config.num_hidden_layers;
    let layers = r.student.layer_ids.clone().unwrap_or_else(|| every_other(tl, r.student.layers));
    if let Some(bad) = layers.iter().find(|&&l| l >= tl) {
        return Err(Error::Recipe(format!("student.layer_ids: layer {bad} does not exist (the teacher has {tl})")));
    }
    build_terms(r, &layer_subset(&teacher, &layers)?, &teacher)?;
    Ok((teacher, layers))
}

/// The teacher's embedding of every training row, computed once into `out`.
fn teacher_embeddings(teacher: &Encoder, rows: &[Vec<i64>], out: &Path, verbose: bool) -> Result<Tensor> {
    let cache = out.join("teacher_train.safetensors");
    match load_tensors(&cache) {
        Ok(t) if t.tensors.get("embeddings").map(|e| e.size()[0]) == Some(rows.len() as i64) => {
            Ok(t.tensors["embeddings"].shallow_clone())
        }
        _ => {
            if verbose {
                eprintln!("teacher: embedding {} training texts", rows.len());
            }
            let e = teacher.embed_ids(rows, 64);
            save_tensors(&cache, &[("embeddings".into(), e.shallow_clone())], BTreeMap::new())?;
            Ok(e)
        }
    }
}

/// The held-out set every model is judged on, with the teacher's embeddings of it.
fn eval_set<'a>(r: &EncoderRecipe, teacher: &Encoder, l: &'a Labelled) -> Result<EvalSet<'a>> {
    let (test_ids, test_cut) = teacher.tokenize(&l.test_texts)?;
    let truncated = test_cut + teacher.tokenize(&l.probe_texts)?.1;
    crate::models::sentence::warn_truncated(truncated, l.test_texts.len() + l.probe_texts.len(), teacher.max_len);
    teacher.warned.set(true);
    let teacher_test = teacher.embed_ids(&test_ids, r.eval.batch);
    let mut speed_texts: Vec<String> = l.test_texts.iter().take(r.eval.speed_texts).cloned().collect();
    while speed_texts.len() < r.eval.speed_texts.min(32) {
        speed_texts.extend(l.test_texts.iter().cloned());
    }
    Ok(EvalSet {
        l,
        teacher_test,
        retrieval: r.eval.retrieval_texts,
        top_k: r.eval.top_k,
        batch: r.eval.batch,
        speed_texts,
        probe_steps: r.eval.probe_steps,
        probe_l2: r.eval.probe_l2,
    })
}

/// How the table labels a phase.
fn label(ph: &Phase, run: &EncoderRun<'_>) -> String {
    let r = run.r;
    let ks = run.layers.len();
    let layer_list = run.layers.iter().map(|l| l.to_string()).collect::<Vec<_>>().join(",");
    let narrow = r.student.narrow.map_or((0, 0), |n| (n.layers, n.hidden));
    let static_dim = r.student.static_.as_ref().map(|s| s.dim).unwrap_or_default();
    match ph.role {
        Role::Teacher => format!("teacher ({} layers)", run.teacher.bert.config.num_hidden_layers),
        Role::StudentPruned => format!("{ks}-layer, teacher layers {layer_list}, no distillation"),
        Role::StudentNarrow => format!("{}-layer × {} wide, projected, distilled", narrow.0, narrow.1),
        Role::StudentStatic => format!("static (Model2Vec), {static_dim} dims"),
        _ => format!("{ks}-layer, distilled"),
    }
}

/// Trains a transformer student (the shallow one, or the narrow one) on the teacher's
/// embeddings, exports it to `export` and returns what was exported, reloaded.
fn distill_student(run: &EncoderRun<'_>, ph: &Phase, dir: &Path, export: &Path) -> Result<(Encoder, TrainReport)> {
    let r = run.r;
    let teacher = &run.teacher;
    let mut s = match (ph.role, &r.student.narrow) {
        (Role::StudentNarrow, Some(n)) => {
            let calib: Vec<Vec<i64>> = run.rows.iter().take(64).cloned().collect();
            projected(teacher, *n, &every_other(teacher.bert.config.num_hidden_layers, n.layers), &calib)?
        }
        _ => layer_subset(teacher, &run.layers)?,
    };
    s.bert.dropout = r.student.dropout;
    tch::manual_seed(r.seed as i64);
    let terms = build_terms(r, &s, teacher)?;
    let mut task = EncoderKdTask {
        student: &s,
        teacher,
        rows: &run.rows,
        teacher_embeddings: &run.teacher_train,
        cosine: r.distill.cosine,
        mse: r.distill.mse,
        terms,
    };
    let topts = TrainOptions {
        phase: ph.id.clone(),
        seed: r.seed,
        cfg: r.train.clone(),
        dir: dir.to_path_buf(),
        checkpoint_every: r.checkpoint.every_steps,
        log_every: r.log.every_steps.unwrap_or(10),
        progress: run.opts.progress,
        progress_seconds: r.log.progress_seconds,
        tensorboard: r.log.tensorboard,
        stop_after: None,
        tokens_per_example: None,
    };
    let rep = fit(&s.vs, &mut task, &topts)?;
    drop(task);
    s.vs.freeze();
    run.say(format!("{:>8}: {} steps in {:.0}s, final loss {:.5}", ph.id, rep.steps, rep.seconds, rep.final_loss));
    s.save(export)?;
    // Evaluate what was exported: reload it.
    s = Encoder::load(export, Device::Cpu)?;
    s.warned.set(true);
    Ok((s, rep))
}

/// Builds (and trains, where the phase trains) the phase's model and evaluates it.
fn run_phase(run: &EncoderRun<'_>, ph: &Phase, dir: &Path, export: &Path) -> Result<(EncoderRow, Option<TrainReport>)> {
    let (teacher, set) = (&run.teacher, &run.set);
    match ph.role {
        Role::Teacher => {
            Ok((evaluate(teacher, set, teacher.size_bytes(), Some(set.teacher_test.shallow_clone()))?, None))
        }
        Role::StudentPruned => {
            let s = layer_subset(teacher, &run.layers)?;
            s.warned.set(true);
            Ok((evaluate(&s, set, s.size_bytes(), None)?, None))
        }
        Role::StudentStatic => {
            let cfg = run.r.student.static_.clone().unwrap_or_default();
            let st = static_student(teacher, &cfg)?;
            st.save(export, &run.r.teacher.path)?;
            let bytes = st.embeddings.numel() as i64 * 4;
            Ok((evaluate(&st, set, bytes, None)?, None))
        }
        _ => {
            let (s, rep) = distill_student(run, ph, dir, export)?;
            Ok((evaluate(&s, set, s.size_bytes(), None)?, Some(rep)))
        }
    }
}

/// The phase's row: its result file when the phase is done, else run and written.
fn phase_row(run: &EncoderRun<'_>, ph: &Phase, out: &Path, first: Option<&EncoderRow>) -> Result<EncoderRow> {
    let dir = ph.dir(out);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let done = dir.join("result.json");
    if let Ok(text) = std::fs::read_to_string(&done) {
        if let Ok(row) = serde_json::from_str::<EncoderRow>(&text) {
            run.say(format!("{:>8}: done (result.json)", ph.id));
            return Ok(row);
        }
    }
    let export = dir.join("model");
    let (mut row, train) = run_phase(run, ph, &dir, &export)?;
    row.id = ph.id.clone();
    row.label = label(ph, run);
    row.taught_by = ph.taught_by().into_iter().next();
    if let Some(rep) = train {
        row.train_steps = Some(rep.steps);
        row.train_seconds = Some(rep.seconds);
    }
    if export.exists() {
        row.export = Some(export.display().to_string());
    }
    if let Some(t) = first {
        row.speedup = row.embeddings_per_s / t.embeddings_per_s;
        row.accuracy_vs_teacher = row.probe_accuracy / t.probe_accuracy;
    }
    run.say(format!(
        "{:>8}: probe acc {:.4} F1 {:.4} | top-{} overlap {:.3} | {:.1} emb/s",
        ph.id, row.probe_accuracy, row.probe_f1, run.r.eval.top_k, row.topk_overlap, row.embeddings_per_s
    ));
    write_json(&done, &row)?;
    Ok(row)
}

/// Runs the recipe into `out` (resuming what is there).
pub fn run(r: &EncoderRecipe, recipe_toml: &str, out: &Path, opts: &RunOptions) -> Result<EncoderSummary> {
    std::fs::create_dir_all(out.join("phases")).map_err(|e| Error::io(out, e))?;
    write_atomic(&out.join("recipe.toml"), recipe_toml.as_bytes())?;
    let (teacher, layers) = teacher_and_layers(r)?;
    let l = labelled(r)?;
    let texts = training_texts(r, &l)?;
    let (ids, _) = teacher.tokenize(&texts)?;
    let rows = cut(ids, r.data.train_max_tokens.min(teacher.max_len));
    if opts.verbose {
        eprintln!(
            "data: {} labelled documents ({} train / {} test, classes {:?}); {} training texts",
            l.train_texts.len() + l.test_texts.len(),
            l.train_texts.len(),
            l.test_texts.len(),
            l.classes,
            rows.len()
        );
    }
    let teacher_train = teacher_embeddings(&teacher, &rows, out, opts.verbose)?;
    let threads = tch::get_num_threads().max(1) as usize;
    let set = eval_set(r, &teacher, &l)?;
    let run = EncoderRun { r, teacher, layers, rows, teacher_train, set, opts };

    let mut rows_out: Vec<EncoderRow> = Vec::new();
    for ph in encoder_plan(r.seed, r.student.narrow.is_some(), r.student.static_.is_some()) {
        let row = phase_row(&run, &ph, out, rows_out.first())?;
        rows_out.push(row);
    }
    // The distilled student at the top of the run directory.
    let kd = out.join("phases/kd/model");
    if kd.is_dir() {
        Encoder::load(&kd, Device::Cpu)?.save(&out.join("student"))?;
    }
    let summary = EncoderSummary {
        name: r.name.clone(),
        task: "sentence-embedding".into(),
        teacher: r.teacher.path.clone(),
        classes: l.classes.clone(),
        probe_train_docs: l.probe_texts.len(),
        test_docs: l.test_texts.len(),
        train_texts: run.rows.len(),
        top_k: r.eval.top_k,
        batch: r.eval.batch,
        threads,
        results: rows_out,
    };
    write_json(&out.join("summary.json"), &summary)?;
    crate::report::write_report_or_warn(out);
    Ok(summary)
}

/// The comparison as a text table.
pub fn table(s: &EncoderSummary) -> String {
    let mut t = format!(
        "{:<44} {:>8} {:>7} {:>8} {:>7} {:>7} {:>7} {:>8} {:>8} {:>6}\n",
        "model",
        "params",
        "MB",
        "probe",
        "vs T",
        "F1",
        "cos",
        format!("top{}", s.top_k),
        "emb/s",
        "speed"
    );
    for r in &s.results {
        let cos = r.cos_to_teacher.map(|c| format!("{c:.4}")).unwrap_or_else(|| "—".into());
        t += &format!(
            "{:<44} {:>7.1}M {:>7.1} {:>7.2}% {:>6.1}% {:>7.4} {:>7} {:>8.3} {:>8.1} {:>5.2}×\n",
            r.label,
            r.params as f64 / 1e6,
            r.size_mb,
            r.probe_accuracy * 100.0,
            r.accuracy_vs_teacher * 100.0,
            r.probe_f1,
            cos,
            r.topk_overlap,
            r.embeddings_per_s,
            r.speedup
        );
    }
    t += &format!(
        "probe: logistic regression on frozen embeddings, {} train / {} test documents ({}); speed at batch {} on {} threads\n",
        s.probe_train_docs,
        s.test_docs,
        s.classes.join("/"),
        s.batch,
        s.threads
    );
    t
}
