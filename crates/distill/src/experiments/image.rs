//! Hinton-style distillation on an image set: per seed a teacher, a student trained from labels
//! only, and the same student trained by KD; then, on request, the ensemble of the seeds'
//! teachers and a student distilled from it; then a temperature sweep on the first seed.
//!
//! Run directory:
//! ```text
//! DIR/recipe.toml                 the resolved recipe
//! DIR/phases/<id>/ckpt.safetensors, metrics.jsonl, model.safetensors, result.json
//! DIR/summary.json                {"results": [...], "gap_recovered": ...}
//! ```
//! A phase is complete when its `result.json` exists (written last, atomically); `--resume`
//! skips complete phases and continues the interrupted one from its checkpoint.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

use crate::data::images::{load_recipe_data, ImageSet};
use crate::data::rng::SplitMix64;
use crate::methods::multi_teacher::Weighting;
use crate::methods::response::image_term;
use crate::methods::{BuildContext, Term};
use crate::models::{image_classifier, param_count, Classifier};
use crate::plan::{display_name, image_plan, Arch, ImageModels, InitFrom, Phase, Role, TeacherFrom};
use crate::recipe::{ImageRecipe, Stage};
use crate::tasks::ClassifierTask;
use crate::teacher::{combine_weighted, example_weights, Ensemble, Teacher};
use crate::train::checkpoint::{load_tensors, save_tensors, write_atomic, write_json};
use crate::train::{fit, TrainOptions, TrainReport, TrainTask};
use crate::{Error, Result};

/// One trained model's evaluation.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PhaseResult {
    /// The phase (its directory under `phases/`).
    #[serde(default)]
    pub id: String,
    pub role: Role,
    /// What tells it apart from phases of the same role: a variant, a generation, a weighting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// The phases it learned from (or averages).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub taught_by: Vec<String>,
    /// The phase whose weights it started from (FitNets' KD stage: its hint stage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_from: Option<String>,
    pub seed: u64,
    pub temperature: Option<f64>,
    pub alpha: Option<f64>,
    pub test_errors: i64,
    pub test_total: i64,
    pub test_accuracy: f64,
    pub params: usize,
    pub size_bytes: u64,
    pub latency_ms_per_1k: f64,
    pub compression_ratio: f64,
    pub train_examples: usize,
    pub labeled_examples: usize,
    pub steps: u64,
    pub train_seconds: f64,
}

/// `summary.json`.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Summary {
    pub recipe: String,
    pub results: Vec<PhaseResult>,
    /// Per seed: `(scratch − kd) / (scratch − teacher)` test errors at the main temperature.
    pub gap_recovered: BTreeMap<String, f64>,
    pub gap_recovered_mean: Option<f64>,
    /// With `distill.ensemble`: `(scratch − kd-ensemble) / (scratch − teacher-ensemble)`, first seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ensemble_gap_recovered: Option<f64>,
    /// Per model (role and label) at the main temperature: test errors over the seeds.
    #[serde(default)]
    pub methods: Vec<MethodRow>,
}

/// One row of the methods table: a model's test errors over the seeds it ran with.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct MethodRow {
    /// As tables print it (`student-kd+fitnets`, `student-born-again g2`).
    pub name: String,
    pub seeds: Vec<u64>,
    pub test_errors: Vec<i64>,
    pub mean_errors: f64,
    /// Sample standard deviation (n − 1); 0 for one seed.
    pub std_errors: f64,
    /// Mean errors minus the KD student's mean over the same seeds (negative = fewer errors).
    pub vs_kd: Option<f64>,
    pub params: usize,
}

pub use super::RunOptions;

/// Logits (eval mode) for every image. `[N, C]`.
fn predict(logits: &dyn Fn(&Tensor) -> Tensor, x: &Tensor) -> Tensor {
    tch::no_grad(|| {
        let n = x.size()[0];
        let chunks: Vec<Tensor> = (0..n).step_by(1000).map(|s| logits(&x.narrow(0, s, (n - s).min(1000)))).collect();
        Tensor::cat(&chunks, 0)
    })
}

fn errors(logits: &dyn Fn(&Tensor) -> Tensor, set: &ImageSet) -> i64 {
    let pred = predict(logits, &set.images).argmax(-1, false);
    pred.ne_tensor(&set.labels).sum(Kind::Int64).int64_value(&[])
}

/// Median over 3 runs of the time to classify 1,000 test images (batch 1,000, eval mode).
fn latency_ms_per_1k(logits: &dyn Fn(&Tensor) -> Tensor, set: &ImageSet) -> f64 {
    let n = set.len().min(1000) as i64;
    let x = set.images.narrow(0, 0, n);
    let mut times: Vec<f64> = (0..3)
        .map(|_| {
            let t = Instant::now();
            tch::no_grad(|| logits(&x)).sum(Kind::Float).double_value(&[]);
            t.elapsed().as_secs_f64() * 1000.0 * 1000.0 / n as f64
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[1]
}

/// Builds the model of `stage` in a fresh var store, seeded for its initialization.
fn build(stage: &Stage, seed: u64, hw: [usize; 2], classes: usize) -> (nn::VarStore, Box<dyn Classifier>) {
    tch::manual_seed(seed as i64);
    let vs = nn::VarStore::new(Device::Cpu);
    let m = image_classifier(&vs.root(), &stage.model, hw, classes);
    (vs, m)
}

fn load_weights(vs: &nn::VarStore, path: &Path) -> Result<()> {
    let l = load_tensors(path)?;
    tch::no_grad(|| {
        for (k, t) in model_variables(vs) {
            let src = l.tensors.get(&k).ok_or_else(|| Error::format(path, format!("missing tensor `{k}`")))?;
            t.shallow_clone().copy_(src);
        }
        Ok(())
    })
}

/// The model's own variables: a term's parameters (`distill_…`, a FitNets regressor) train and
/// checkpoint with the student but are not part of the model it leaves as.
fn model_variables(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    vs.variables().into_iter().filter(|(k, _)| !k.starts_with("distill_")).collect()
}

fn save_weights(vs: &nn::VarStore, path: &Path) -> Result<()> {
    let mut v = model_variables(vs);
    v.sort_by(|a, b| a.0.cmp(&b.0));
    save_tensors(path, &v, BTreeMap::from([("format".into(), "distill-weights-v1".into())]))
}

/// The images whose label a student may see (`data.labeled_subset`; the same for every seed: a
/// fixed shuffle of the training set) and the student labels: -100 for the others.
struct Labels {
    /// The labeled rows, sorted; `None`: every row.
    labeled: Option<Vec<i64>>,
    student: Tensor,
    n_labeled: usize,
}

impl Labels {
    fn new(subset: Option<usize>, train: &ImageSet) -> Labels {
        let n = train.len();
        let labeled: Option<Vec<i64>> = subset.map(|k| {
            let mut p: Vec<i64> =
                SplitMix64::new(0x1abe1).permutation(n).into_iter().take(k.min(n)).map(|i| i as i64).collect();
            p.sort_unstable();
            p
        });
        let student = match &labeled {
            None => train.labels.shallow_clone(),
            Some(rows) => {
                let y = Tensor::full([n as i64], -100, (Kind::Int64, Device::Cpu));
                let r = Tensor::from_slice(rows);
                y.index_copy(0, &r, &train.labels.index_select(0, &r))
            }
        };
        let n_labeled = labeled.as_ref().map(|l| l.len()).unwrap_or(n);
        Labels { labeled, student, n_labeled }
    }
}

/// What every phase of an image run reads.
struct ImageRun<'a> {
    recipe: &'a ImageRecipe,
    train: ImageSet,
    test: ImageSet,
    hw: [usize; 2],
    classes: usize,
    labels: Labels,
    plan: Vec<Phase>,
    out: &'a Path,
    opts: &'a RunOptions,
}

/// A phase's model loaded once, with its logits on the training images. `[N, C]`
type Loaded = (nn::VarStore, Box<dyn Classifier>, Tensor);

impl ImageRun<'_> {
    /// The stage (model and training) of each architecture; checked by validation.
    fn stage(&self, arch: Arch) -> &Stage {
        let r = self.recipe;
        match arch {
            Arch::Teacher => &r.teacher,
            Arch::Student => &r.student,
            Arch::Assistant => r.assistant.as_ref().unwrap_or(&r.student),
            Arch::ExtraTeacher(i) => r.teachers.get(i).unwrap_or(&r.teacher),
        }
    }

    /// An earlier phase's model (by id), with its training-set logits.
    fn load(&self, id: &str) -> Result<Loaded> {
        let ph = self.plan.iter().find(|p| p.id == id);
        let (seed, arch) = ph.map(|p| (p.seed, p.arch)).unwrap_or_default();
        let (vs, m) = build(self.stage(arch), seed, self.hw, self.classes);
        load_weights(&vs, &self.out.join("phases").join(id).join("model.safetensors"))?;
        let logits = predict(&|x| m.logits(x, false), &self.train.images);
        Ok((vs, m, logits))
    }
}

/// The models a phase learns from (or averages) and how a weighted phase weighs them.
fn sources(ph: &Phase) -> (Vec<String>, Option<Weighting>) {
    match &ph.teacher {
        TeacherFrom::Phase(id) => (vec![id.clone()], None),
        TeacherFrom::Ensemble(ids) => (ids.clone(), None),
        TeacherFrom::Weighted(ids, w) => (ids.clone(), Some(*w)),
        TeacherFrom::None | TeacherFrom::Recipe => (vec![], None),
    }
}

/// The soft targets on the whole training set, computed once from the sources' training-set
/// logits: per-example weighted teachers, the uniform ensemble, or the one teacher. `[N, C]`
fn train_logits(
    run: &ImageRun<'_>,
    ph: &Phase,
    loaded: &[&Loaded],
    weighting: Option<Weighting>,
    ensemble: Option<&Ensemble<'_>>,
    labels: &Tensor,
) -> Result<Option<Tensor>> {
    let t = ph.temperature.unwrap_or(1.0);
    let z = || loaded.iter().map(|l| l.2.shallow_clone()).collect::<Vec<Tensor>>();
    Ok(match (ensemble, weighting, loaded.first()) {
        (_, Some(w), _) => {
            let mt = run.recipe.distill.multi_teacher.as_ref().ok_or_else(|| {
                Error::Invalid(format!("phase {}: weighted teachers without distill.multi_teacher", ph.id))
            })?;
            let z = z();
            let ew = example_weights(&z, labels, w, &mt.fixed_weights(z.len())); // [k, N]
            if run.opts.verbose {
                let mean: Vec<String> = Vec::<f64>::try_from(ew.mean_dim(1, false, Kind::Double))
                    .unwrap_or_default()
                    .iter()
                    .map(|x| format!("{x:.3}"))
                    .collect();
                eprintln!("{:>18}: {} weights, mean per teacher [{}]", ph.id, w.name(), mean.join(", "));
            }
            Some(tch::no_grad(|| combine_weighted(&z, &ew, t, mt.combine))) // [N, C]
        }
        (Some(e), None, _) => Some(tch::no_grad(|| e.combine(&z()))), // [N, C]
        (None, None, Some(l)) => Some(l.2.shallow_clone()),
        (None, None, None) => None,
    })
}

/// The extra terms of a phase, built against the student's and its one teacher's features.
fn build_phase_terms(
    run: &ImageRun<'_>,
    ph: &Phase,
    vs: &nn::VarStore,
    model: &dyn Classifier,
    members: &[&dyn Classifier],
) -> Result<Vec<Box<dyn Term>>> {
    let term_cfgs = ph.terms(&run.recipe.distill.terms, &run.recipe.distill.variants)?;
    if !term_cfgs.is_empty() && members.len() != 1 {
        return Err(Error::Invalid(format!("phase {}: the extra terms need a single teacher model", ph.id)));
    }
    let mut terms = Vec::new();
    if !term_cfgs.is_empty() {
        let probe = run.train.images.narrow(0, 0, 2.min(run.train.len() as i64));
        let (ss, ts) = (feature_shapes(model, &probe), feature_shapes(members[0], &probe));
        for cfg in term_cfgs {
            let term = cfg.build(image_build_context(vs.root(), &ss, &ts))?;
            if run.opts.verbose {
                eprintln!("{:>18}: {}", ph.id, term.describe());
            }
            terms.push(term);
        }
    }
    Ok(terms)
}

/// Trains one phase's model (from its sources, loaded) and returns it with its training report
/// and the number of examples it trained on.
fn train_phase(
    run: &ImageRun<'_>,
    ph: &Phase,
    loaded: &[&Loaded],
    weighting: Option<Weighting>,
) -> Result<(nn::VarStore, Box<dyn Classifier>, TrainReport, usize)> {
    let (train, stage) = (&run.train, run.stage(ph.arch));
    let members: Vec<&dyn Classifier> = loaded.iter().map(|l| l.1.as_ref()).collect();
    // Same initialization for the scratch and KD students of a seed.
    let (vs, model) = match &ph.init {
        InitFrom::Salted(salt) => build(stage, ph.seed ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15), run.hw, run.classes),
        _ => build(stage, ph.seed, run.hw, run.classes),
    };
    if let InitFrom::Phase(from) = &ph.init {
        load_weights(&vs, &run.out.join("phases").join(from).join("model.safetensors"))?;
    }
    let kd = ph.temperature.map(|t| image_term(&run.recipe.distill, t));
    let t = ph.temperature.unwrap_or(1.0);
    let terms = build_phase_terms(run, ph, &vs, model.as_ref(), &members)?;
    let (labels, rows) = match ph.role {
        Role::Teacher | Role::TeacherEnsemble | Role::TeacherExtra => (&train.labels, None),
        Role::StudentScratch | Role::StudentPruned => (&train.labels, run.labels.labeled.as_deref()),
        _ => (&run.labels.student, None),
    };
    // The soft targets: computed once from the training-set logits, or, when the student's
    // images are jittered or a term reads the teacher's features, the teacher (or ensemble)
    // run on the same batch. Weighted teachers always come from the training-set logits.
    let ensemble = (members.len() > 1 && weighting.is_none()).then(|| Ensemble::uniform(members.clone(), t));
    let train_logits = train_logits(run, ph, loaded, weighting, ensemble.as_ref(), labels)?;
    // The terms read the teacher's features: computed once for the training set when the
    // student sees the images unaugmented (eval mode, so the same as at every step).
    let teacher_features = (!terms.is_empty() && stage.jitter == 0 && members.len() == 1)
        .then(|| predict_features(members[0], &train.images));
    let teacher = match (&train_logits, ensemble) {
        (None, _) => None,
        (Some(l), _)
            if weighting.is_some() || (stage.jitter == 0 && (terms.is_empty() || teacher_features.is_some())) =>
        {
            Some(Teacher::Logits(l))
        }
        (Some(_), Some(e)) => Some(Teacher::Ensemble(e)),
        (Some(_), None) => Some(Teacher::Classifier(members[0])),
    };
    let mut task = ClassifierTask {
        model: model.as_ref(),
        x: &train.images,
        labels,
        teacher,
        kd,
        jitter: stage.jitter,
        rows,
        terms,
        terms_only: ph.role == Role::StudentHint,
        teacher_features: teacher_features.as_deref(),
    };
    let examples = task.num_examples();
    let topts = TrainOptions {
        phase: ph.id.clone(),
        seed: ph.seed,
        cfg: stage.train.clone(),
        dir: ph.dir(run.out),
        checkpoint_every: run.recipe.checkpoint.every_steps,
        log_every: run.recipe.log.every_steps.unwrap_or(20),
        progress: run.opts.progress,
        progress_seconds: run.recipe.log.progress_seconds,
        tensorboard: run.recipe.log.tensorboard,
        stop_after: None,
        tokens_per_example: None,
    };
    let report = fit(&vs, &mut task, &topts)?;
    drop(task);
    Ok((vs, model, report, examples))
}

/// The evaluation of a trained phase's model, saved beside its result.
fn trained_result(
    run: &ImageRun<'_>,
    ph: &Phase,
    (vs, model, report, examples): (nn::VarStore, Box<dyn Classifier>, TrainReport, usize),
    teacher_params: &mut HashMap<u64, usize>,
) -> Result<PhaseResult> {
    let (test, n) = (&run.test, run.train.len());
    let model_path = ph.dir(run.out).join("model.safetensors");
    save_weights(&vs, &model_path)?;
    let errs = errors(&|x| model.logits(x, false), test);
    let params: usize = model_variables(&vs).iter().map(|(_, t)| t.numel()).sum();
    if ph.role == Role::Teacher {
        teacher_params.insert(ph.seed, params);
    }
    let tp = teacher_params.get(&ph.seed).copied().unwrap_or(params);
    Ok(PhaseResult {
        id: ph.id.clone(),
        role: ph.role,
        label: ph.label.clone(),
        taught_by: ph.taught_by(),
        init_from: match &ph.init {
            InitFrom::Phase(id) => Some(id.clone()),
            _ => None,
        },
        seed: ph.seed,
        temperature: ph.temperature,
        alpha: ph.temperature.map(|t| image_term(&run.recipe.distill, t).alpha),
        test_errors: errs,
        test_total: test.len() as i64,
        test_accuracy: 1.0 - errs as f64 / test.len() as f64,
        params,
        size_bytes: std::fs::metadata(&model_path).map(|m| m.len()).unwrap_or(0),
        latency_ms_per_1k: latency_ms_per_1k(&|x| model.logits(x, false), test),
        compression_ratio: tp as f64 / params as f64,
        train_examples: if matches!(ph.role, Role::Teacher | Role::TeacherExtra) { n } else { examples },
        labeled_examples: match ph.role {
            Role::Teacher | Role::TeacherEnsemble | Role::TeacherExtra => n,
            _ => run.labels.n_labeled,
        },
        steps: report.steps,
        train_seconds: report.seconds,
    })
}

/// Runs (or resumes) the whole experiment in `out`, returning the summary it also writes.
pub fn run(recipe: &ImageRecipe, recipe_toml: &str, out: &Path, opts: &RunOptions) -> Result<Summary> {
    let (train, test) = load_recipe_data(&recipe.data)?;
    let labels = Labels::new(recipe.data.labeled_subset, &train);
    // The recipe first: a directory without it holds nothing a resume would need.
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    write_atomic(&out.join("recipe.toml"), recipe_toml.as_bytes())?;
    std::fs::create_dir_all(out.join("phases")).map_err(|e| Error::io(out, e))?;

    let (n, classes, hw) = (train.len(), train.num_classes(), [train.height, train.width]);
    check_terms(recipe, &train.images.narrow(0, 0, 2.min(n as i64)), hw, classes)?;
    let plan = image_plan(&recipe.seeds, &recipe.distill, image_models(recipe));
    let run = ImageRun { recipe, train, test, hw, classes, labels, plan, out, opts };
    // Phases loaded as teachers so far (by phase id), with their logits on the training images.
    let mut teachers: HashMap<String, Loaded> = HashMap::new();
    let mut teacher_params = HashMap::new();
    let mut results = Vec::new();
    for ph in &run.plan {
        let result_path = ph.dir(out).join("result.json");
        if let Ok(text) = std::fs::read_to_string(&result_path) {
            let r: PhaseResult = serde_json::from_str(&text).map_err(|e| Error::format(&result_path, e.to_string()))?;
            if r.role == Role::Teacher {
                teacher_params.insert(r.seed, r.params);
            }
            let r = PhaseResult { id: ph.id.clone(), label: ph.label.clone(), taught_by: ph.taught_by(), ..r };
            if opts.verbose {
                eprintln!("{:>18}: done earlier ({} test errors)", ph.id, r.test_errors);
            }
            results.push(r);
            continue;
        }
        let (sources, weighting) = sources(ph);
        for id in &sources {
            if !teachers.contains_key(id) {
                teachers.insert(id.clone(), run.load(id)?);
            }
        }
        let loaded: Vec<&Loaded> = sources.iter().map(|id| &teachers[id]).collect();
        if !ph.trains {
            let members: Vec<&dyn Classifier> = loaded.iter().map(|l| l.1.as_ref()).collect();
            let params: usize = loaded.iter().map(|l| param_count(&l.0)).sum();
            let test = &run.test;
            results.push(evaluate_ensemble(ph, &members, &sources, params, test, &teacher_params, out, n, opts)?);
            continue;
        }
        let trained = train_phase(&run, ph, &loaded, weighting)?;
        let seconds = trained.2.seconds;
        let res = trained_result(&run, ph, trained, &mut teacher_params)?;
        write_json(&result_path, &res)?;
        if opts.verbose {
            eprintln!("{:>18}: {} test errors ({:.1}s)", ph.id, res.test_errors, seconds);
        }
        results.push(res);
    }
    let summary = summarize(recipe, results);
    write_json(&out.join("summary.json"), &summary)?;
    crate::report::write_report_or_warn(out);
    Ok(summary)
}

/// Several phases' models averaged (T = 1: the seeds' teachers, the born-again generations),
/// evaluated, not trained; its result is written like a trained phase's.
#[allow(clippy::too_many_arguments)]
fn evaluate_ensemble(
    ph: &Phase,
    members: &[&dyn Classifier],
    sources: &[String],
    params: usize,
    test: &ImageSet,
    teacher_params: &HashMap<u64, usize>,
    out: &Path,
    n: usize,
    opts: &RunOptions,
) -> Result<PhaseResult> {
    let ens = Ensemble::uniform(members.to_vec(), 1.0);
    let errs = errors(&|x| ens.logits(x), test);
    let size_bytes = sources
        .iter()
        .filter_map(|id| std::fs::metadata(out.join("phases").join(id).join("model.safetensors")).ok())
        .map(|m| m.len())
        .sum();
    let tp = teacher_params.get(&ph.seed).copied().unwrap_or(params);
    let res = PhaseResult {
        id: ph.id.clone(),
        role: ph.role,
        label: ph.label.clone(),
        taught_by: ph.taught_by(),
        init_from: None,
        seed: ph.seed,
        temperature: None,
        alpha: None,
        test_errors: errs,
        test_total: test.len() as i64,
        test_accuracy: 1.0 - errs as f64 / test.len() as f64,
        params,
        size_bytes,
        latency_ms_per_1k: latency_ms_per_1k(&|x| ens.logits(x), test),
        compression_ratio: tp as f64 / params.max(1) as f64,
        train_examples: n,
        labeled_examples: n,
        steps: 0,
        train_seconds: 0.0,
    };
    let dir = ph.dir(out);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    write_json(&dir.join("result.json"), &res)?;
    if opts.verbose {
        eprintln!("{:>18}: {} test errors ({} models averaged)", ph.id, errs, members.len());
    }
    Ok(res)
}

fn summarize(recipe: &ImageRecipe, results: Vec<PhaseResult>) -> Summary {
    let t = recipe.distill.temperature;
    let mut gap = BTreeMap::new();
    for &seed in &recipe.seeds {
        let find = |role: Role, temp: Option<f64>| {
            results
                .iter()
                .find(|r| r.seed == seed && r.role == role && r.temperature == temp)
                .map(|r| r.test_errors as f64)
        };
        if let (Some(te), Some(sc), Some(kd)) =
            (find(Role::Teacher, None), find(Role::StudentScratch, None), find(Role::StudentKd, Some(t)))
        {
            if sc != te {
                gap.insert(seed.to_string(), (sc - kd) / (sc - te));
            }
        }
    }
    let mean = (!gap.is_empty()).then(|| gap.values().sum::<f64>() / gap.len() as f64);
    let s0 = recipe.seeds[0];
    let find = |role: Role| results.iter().find(|r| r.seed == s0 && r.role == role).map(|r| r.test_errors as f64);
    let ensemble_gap = match (find(Role::TeacherEnsemble), find(Role::StudentScratch), find(Role::StudentKdEnsemble)) {
        (Some(te), Some(sc), Some(kd)) if sc != te => Some((sc - kd) / (sc - te)),
        _ => None,
    };
    let methods = method_rows(&results, t);
    Summary {
        recipe: recipe.name.clone(),
        results,
        gap_recovered: gap,
        gap_recovered_mean: mean,
        ensemble_gap_recovered: ensemble_gap,
        methods,
    }
}

/// Test errors per model (role and label) over the seeds, at the main temperature `t` (the
/// sweep's other temperatures are left out), in plan order.
fn method_rows(results: &[PhaseResult], t: f64) -> Vec<MethodRow> {
    let mut rows: Vec<MethodRow> = Vec::new();
    for r in results {
        // The sweep's other temperatures, the seeds' ensembles and FitNets' hint stages are not
        // models of the table.
        let other_t = r.role == Role::StudentKd && r.temperature != Some(t);
        if other_t || matches!(r.role, Role::StudentKdEnsemble | Role::TeacherEnsemble | Role::StudentHint) {
            continue;
        }
        let name = display_name(r.role, r.label.as_deref());
        match rows.iter_mut().find(|m| m.name == name) {
            Some(m) => {
                m.seeds.push(r.seed);
                m.test_errors.push(r.test_errors);
            }
            None => rows.push(MethodRow {
                name,
                seeds: vec![r.seed],
                test_errors: vec![r.test_errors],
                mean_errors: 0.0,
                std_errors: 0.0,
                vs_kd: None,
                params: r.params,
            }),
        }
    }
    let stats = |e: &[i64]| {
        let n = e.len() as f64;
        let mean = e.iter().sum::<i64>() as f64 / n;
        let var = if e.len() > 1 { e.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
        (mean, var.sqrt())
    };
    let kd: Option<(Vec<u64>, Vec<i64>)> =
        rows.iter().find(|m| m.name == Role::StudentKd.name()).map(|m| (m.seeds.clone(), m.test_errors.clone()));
    for m in rows.iter_mut() {
        (m.mean_errors, m.std_errors) = stats(&m.test_errors);
        if let Some((seeds, errs)) = &kd {
            // Over the seeds both have.
            let pairs: Vec<(i64, i64)> = m
                .seeds
                .iter()
                .zip(&m.test_errors)
                .filter_map(|(s, e)| seeds.iter().position(|x| x == s).map(|i| (*e, errs[i])))
                .collect();
            if !pairs.is_empty() {
                let d: f64 = pairs.iter().map(|(a, b)| (a - b) as f64).sum::<f64>() / pairs.len() as f64;
                m.vs_kd = Some(d);
            }
        }
    }
    rows
}

/// The methods table: test errors mean ± std over seeds per model, against plain KD.
pub fn methods_table(s: &Summary) -> String {
    let mut o =
        format!("{:<34} {:>6} {:>16} {:>10} {:>22}\n", "model", "seeds", "errors mean ± std", "vs KD", "per seed");
    for m in &s.methods {
        let vs = m.vs_kd.map(|d| format!("{d:+.1}")).unwrap_or_else(|| "-".into());
        let per: Vec<String> = m.test_errors.iter().map(|e| e.to_string()).collect();
        o += &format!(
            "{:<34} {:>6} {:>9.1} ± {:<5.1} {:>10} {:>22}\n",
            m.name,
            m.seeds.len(),
            m.mean_errors,
            m.std_errors,
            vs,
            per.join(" / ")
        );
    }
    o
}

/// The summary as a plain-text table.
pub fn table(s: &Summary) -> String {
    let mut o = format!(
        "{:<34} {:>4} {:>6} {:>8} {:>9} {:>10} {:>9} {:>12} {:>7}\n",
        "role", "seed", "T", "errors", "accuracy", "params", "size", "ms/1k imgs", "compr."
    );
    for r in &s.results {
        let role = display_name(r.role, r.label.as_deref());
        let t = r.temperature.map(|t| format!("{t}")).unwrap_or_else(|| "-".into());
        o += &format!(
            "{:<34} {:>4} {:>6} {:>8} {:>8.2}% {:>10} {:>8.2}M {:>12.2} {:>6.2}x\n",
            role,
            r.seed,
            t,
            r.test_errors,
            r.test_accuracy * 100.0,
            r.params,
            r.size_bytes as f64 / 1e6,
            r.latency_ms_per_1k,
            r.compression_ratio
        );
    }
    for (seed, g) in &s.gap_recovered {
        o += &format!("gap recovered by KD, seed {seed}: {:.1}%\n", g * 100.0);
    }
    if let Some(m) = s.gap_recovered_mean {
        o += &format!("gap recovered by KD, mean: {:.1}%  ((scratch − kd) / (scratch − teacher))\n", m * 100.0);
    }
    if let Some(g) = s.ensemble_gap_recovered {
        o += &format!("gap recovered by KD from the teacher ensemble: {:.1}%\n", g * 100.0);
    }
    if s.methods.iter().any(|m| m.seeds.len() > 1) || s.methods.len() > 3 {
        o += "\n";
        o += &methods_table(s);
    }
    o
}

/// A model's features for every image (eval mode, batches of 1,000): `[N, …]` per state.
fn predict_features(m: &dyn Classifier, x: &Tensor) -> Vec<Tensor> {
    tch::no_grad(|| {
        let n = x.size()[0];
        let mut parts: Vec<Vec<Tensor>> = Vec::new();
        for s in (0..n).step_by(1000) {
            let f = m.forward_outputs(&x.narrow(0, s, (n - s).min(1000)), false).features;
            if parts.is_empty() {
                parts = f.iter().map(|_| Vec::new()).collect();
            }
            for (p, t) in parts.iter_mut().zip(f) {
                p.push(t);
            }
        }
        parts.iter().map(|p| Tensor::cat(p, 0)).collect()
    })
}

/// Each feature state's per-example shape (`[C, H, W]` or `[F]`) on `probe` `[B, 1, H, W]`.
fn feature_shapes(m: &dyn Classifier, probe: &Tensor) -> Vec<Vec<i64>> {
    tch::no_grad(|| m.forward_outputs(probe, false)).features.iter().map(|f| f.size()[1..].to_vec()).collect()
}

/// What an image term is built against: the two models' feature shapes.
fn image_build_context<'a>(vs: nn::Path<'a>, ss: &[Vec<i64>], ts: &[Vec<i64>]) -> BuildContext<'a> {
    BuildContext {
        vs,
        student_layers: ss.len(),
        student_width: ss.last().map(|s| s.iter().product()).unwrap_or(0),
        teacher_layers: ts.len(),
        teacher_width: ts.last().map(|s| s.iter().product()).unwrap_or(0),
        student_shapes: ss.to_vec(),
        teacher_shapes: ts.to_vec(),
        student_qkv: [0; 3],
        teacher_qkv: [0; 3],
        student_heads: 0,
        teacher_heads: 0,
    }
}

/// Builds every configured term (the KD student's and each variant's) against the student's and
/// the teacher's feature shapes on `probe`, in throwaway variables: a layer past a model or a map
/// that is not one is an error before anything trains.
fn check_terms(recipe: &ImageRecipe, probe: &Tensor, hw: [usize; 2], classes: usize) -> Result<()> {
    let cfgs: Vec<_> = recipe
        .distill
        .terms
        .configured()
        .into_iter()
        .chain(recipe.distill.variants.values().flat_map(|v| v.terms.configured()))
        .collect();
    if cfgs.is_empty() {
        return Ok(());
    }
    let (_svs, s) = build(&recipe.student, 0, hw, classes);
    let (_tvs, t) = build(&recipe.teacher, 0, hw, classes);
    let (ss, ts) = (feature_shapes(s.as_ref(), probe), feature_shapes(t.as_ref(), probe));
    let vs = nn::VarStore::new(Device::Cpu);
    for cfg in cfgs {
        cfg.build(image_build_context(vs.root() / "check", &ss, &ts))?;
    }
    Ok(())
}

/// The recipe's models besides teacher and student, as the plan needs them.
fn image_models(recipe: &ImageRecipe) -> ImageModels {
    ImageModels { extra_teachers: recipe.teachers.len(), assistant: recipe.assistant.is_some() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::Outputs;

    #[derive(Debug)]
    struct Linear(nn::Linear);

    impl Classifier for Linear {
        fn forward_outputs(&self, x: &Tensor, _train: bool) -> Outputs {
            Outputs { logits: x.apply(&self.0), features: Vec::new() }
        }
    }

    /// The ensemble's logits at temperature T give, through softmax at T, the members' average
    /// distribution at T.
    #[test]
    fn ensemble_logits_average_the_members_softened_distributions() {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let a = Linear(nn::linear(vs.root() / "a", 5, 4, Default::default()));
        let b = Linear(nn::linear(vs.root() / "b", 5, 4, Default::default()));
        let c = Linear(nn::linear(vs.root() / "c", 5, 4, Default::default()));
        let x = Tensor::randn([3, 5], (Kind::Float, Device::Cpu)) * 3.0;
        let members: Vec<&dyn Classifier> = vec![&a, &b, &c];
        for t in [1.0, 2.0, 8.0] {
            let z = tch::no_grad(|| Ensemble::uniform(members.clone(), t).logits(&x)); // [3, 4]
            let got = (&z / t).softmax(-1, Kind::Float);
            let want = tch::no_grad(|| {
                members
                    .iter()
                    .map(|m| (m.logits(&x, false) / t).softmax(-1, Kind::Float))
                    .fold(Tensor::zeros([3, 4], (Kind::Float, Device::Cpu)), |acc, p| acc + p)
                    / 3.0
            });
            let d = (&got - &want).abs().max().double_value(&[]);
            assert!(d < 1e-6, "T = {t}: {d}");
        }
    }
}
