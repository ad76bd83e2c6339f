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
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

use crate::checkpoint::{load_tensors, save_tensors, write_atomic, write_json};
use crate::data::images::{load_recipe_data, ImageSet};
use crate::data::rng::SplitMix64;
use crate::methods::response::image_term;
use crate::models::{image_classifier, param_count, Classifier};
use crate::plan::{image_plan, InitFrom, Phase, Role, TeacherFrom};
use crate::recipe::{ImageRecipe, Stage};
use crate::tasks::ClassifierTask;
use crate::teacher::{Ensemble, Teacher};
use crate::train::{fit, TrainOptions, TrainTask};
use crate::{Error, Result};

/// One trained model's evaluation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PhaseResult {
    pub role: Role,
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
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub recipe: String,
    pub results: Vec<PhaseResult>,
    /// Per seed: `(scratch − kd) / (scratch − teacher)` test errors at the main temperature.
    pub gap_recovered: BTreeMap<String, f64>,
    pub gap_recovered_mean: Option<f64>,
    /// With `distill.ensemble`: `(scratch − kd-ensemble) / (scratch − teacher-ensemble)`, first seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ensemble_gap_recovered: Option<f64>,
}

/// Options of a run that are not part of the recipe.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub progress: bool,
    /// Print a line per finished phase to stderr.
    pub verbose: bool,
}

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
        for (k, t) in vs.variables() {
            let src = l.tensors.get(&k).ok_or_else(|| Error::format(path, format!("missing tensor `{k}`")))?;
            t.shallow_clone().copy_(src);
        }
        Ok(())
    })
}

fn save_weights(vs: &nn::VarStore, path: &Path) -> Result<()> {
    let mut v: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    save_tensors(path, &v, BTreeMap::from([("format".into(), "distill-weights-v1".into())]))
}

/// Runs (or resumes) the whole experiment in `out`, returning the summary it also writes.
pub fn run(recipe: &ImageRecipe, recipe_toml: &str, out: &Path, opts: &RunOptions) -> Result<Summary> {
    let (train, test) = load_recipe_data(&recipe.data)?;
    let classes = train.num_classes();
    let hw = [train.height, train.width];
    let n = train.len();
    // The labeled subset is the same for every seed: a fixed shuffle of the training set.
    let labeled: Option<Vec<i64>> = recipe.data.labeled_subset.map(|k| {
        let mut p: Vec<i64> =
            SplitMix64::new(0x1abe1).permutation(n).into_iter().take(k.min(n)).map(|i| i as i64).collect();
        p.sort_unstable();
        p
    });
    // Student labels: -100 for the images whose label the student may not see.
    let student_labels = match &labeled {
        None => train.labels.shallow_clone(),
        Some(rows) => {
            let y = Tensor::full([n as i64], -100, (Kind::Int64, Device::Cpu));
            let r = Tensor::from_slice(rows);
            y.index_copy(0, &r, &train.labels.index_select(0, &r))
        }
    };
    let n_labeled = labeled.as_ref().map(|l| l.len()).unwrap_or(n);

    // The recipe first: a directory without it holds nothing a resume would need.
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    write_atomic(&out.join("recipe.toml"), recipe_toml.as_bytes())?;
    std::fs::create_dir_all(out.join("phases")).map_err(|e| Error::io(out, e))?;

    let plan = image_plan(&recipe.seeds, &recipe.distill);
    let seed_of = |id: &str| plan.iter().find(|p| p.id == id).map(|p| p.seed).unwrap_or(0);
    // Teacher phases loaded so far (by phase id), with their logits on the training images.
    let mut teachers: HashMap<String, (nn::VarStore, Box<dyn Classifier>, Tensor)> = HashMap::new();
    let mut teacher_params = HashMap::new();
    let mut results = Vec::new();
    for ph in &plan {
        let dir = ph.dir(out);
        let result_path = dir.join("result.json");
        if let Ok(text) = std::fs::read_to_string(&result_path) {
            let r: PhaseResult = serde_json::from_str(&text).map_err(|e| Error::format(&result_path, e.to_string()))?;
            if r.role == Role::Teacher {
                teacher_params.insert(r.seed, r.params);
            }
            if opts.verbose {
                eprintln!("{:>18}: done earlier ({} test errors)", ph.id, r.test_errors);
            }
            results.push(r);
            continue;
        }
        // The teachers this phase learns from (or is), loaded once with their training-set logits.
        let sources: Vec<String> = match &ph.teacher {
            TeacherFrom::Phase(id) => vec![id.clone()],
            TeacherFrom::Ensemble(ids) => ids.clone(),
            TeacherFrom::None | TeacherFrom::Recipe => vec![],
        };
        for id in &sources {
            if !teachers.contains_key(id) {
                let (tvs, tm) = build(&recipe.teacher, seed_of(id), hw, classes);
                load_weights(&tvs, &out.join("phases").join(id).join("model.safetensors"))?;
                let logits = predict(&|x| tm.logits(x, false), &train.images);
                teachers.insert(id.clone(), (tvs, tm, logits));
            }
        }
        let members: Vec<&dyn Classifier> = sources.iter().map(|id| teachers[id].1.as_ref()).collect();
        if ph.role == Role::TeacherEnsemble {
            let params: usize = sources.iter().map(|id| param_count(&teachers[id].0)).sum();
            results.push(evaluate_ensemble(ph, &members, &sources, params, &test, &teacher_params, out, n, opts)?);
            continue;
        }
        if let InitFrom::Phase(from) = &ph.init {
            return Err(Error::Invalid(format!(
                "phase {}: starting from phase {from}'s weights is not supported by image runs yet",
                ph.id
            )));
        }
        let stage = if ph.role == Role::Teacher { &recipe.teacher } else { &recipe.student };
        // Same initialization for the scratch and KD students of a seed.
        let (vs, model) = build(stage, ph.seed, hw, classes);
        let kd = ph.temperature.map(|t| image_term(&recipe.distill, t));
        let t = ph.temperature.unwrap_or(1.0);
        // The soft targets: computed once from the training-set logits, or, when the student's
        // images are jittered, the teacher (or ensemble) run on the same jittered batch.
        let ensemble = (members.len() > 1).then(|| Ensemble::uniform(members.clone(), t));
        let train_logits = match (&ensemble, sources.first()) {
            (Some(e), _) => {
                let z: Vec<Tensor> = sources.iter().map(|id| teachers[id].2.shallow_clone()).collect();
                Some(tch::no_grad(|| e.combine(&z))) // [N, C]
            }
            (None, Some(id)) => Some(teachers[id].2.shallow_clone()),
            (None, None) => None,
        };
        let teacher = match (&train_logits, ensemble) {
            (None, _) => None,
            (Some(l), _) if stage.jitter == 0 => Some(Teacher::Logits(l)),
            (Some(_), Some(e)) => Some(Teacher::Ensemble(e)),
            (Some(_), None) => Some(Teacher::Classifier(members[0])),
        };
        let (labels, rows) = match ph.role {
            Role::Teacher | Role::TeacherEnsemble => (&train.labels, None),
            Role::StudentScratch | Role::StudentPruned => (&train.labels, labeled.as_deref()),
            Role::StudentKd
            | Role::StudentKdEnsemble
            | Role::StudentKdTwinInit
            | Role::StudentPtq
            | Role::StudentQad => (&student_labels, None),
        };
        let mut task = ClassifierTask {
            model: model.as_ref(),
            x: &train.images,
            labels,
            teacher,
            kd,
            jitter: stage.jitter,
            rows,
            terms: Vec::new(),
        };
        let examples = task.num_examples();
        let topts = TrainOptions {
            phase: ph.id.clone(),
            seed: ph.seed,
            cfg: stage.train.clone(),
            dir: dir.clone(),
            checkpoint_every: recipe.checkpoint.every_steps,
            log_every: 20,
            progress: opts.progress,
        };
        let report = fit(&vs, &mut task, &topts)?;
        let model_path = dir.join("model.safetensors");
        save_weights(&vs, &model_path)?;
        let errs = errors(&|x| model.logits(x, false), &test);
        let params = param_count(&vs);
        if ph.role == Role::Teacher {
            teacher_params.insert(ph.seed, params);
        }
        let tp = teacher_params.get(&ph.seed).copied().unwrap_or(params);
        let res = PhaseResult {
            role: ph.role,
            seed: ph.seed,
            temperature: ph.temperature,
            alpha: kd.map(|k| k.alpha),
            test_errors: errs,
            test_total: test.len() as i64,
            test_accuracy: 1.0 - errs as f64 / test.len() as f64,
            params,
            size_bytes: std::fs::metadata(&model_path).map(|m| m.len()).unwrap_or(0),
            latency_ms_per_1k: latency_ms_per_1k(&|x| model.logits(x, false), &test),
            compression_ratio: tp as f64 / params as f64,
            train_examples: if ph.role == Role::Teacher { n } else { examples },
            labeled_examples: match ph.role {
                Role::Teacher | Role::TeacherEnsemble => n,
                _ => n_labeled,
            },
            steps: report.steps,
            train_seconds: report.seconds,
        };
        write_json(&result_path, &res)?;
        if opts.verbose {
            eprintln!("{:>18}: {} test errors ({:.1}s)", ph.id, errs, report.seconds);
        }
        results.push(res);
    }
    let summary = summarize(recipe, results);
    write_json(&out.join("summary.json"), &summary)?;
    Ok(summary)
}

/// The seeds' teachers averaged (T = 1), evaluated, not trained; its result is written like a
/// trained phase's.
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
        role: ph.role,
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
        eprintln!("{:>18}: {} test errors ({} teachers averaged)", ph.id, errs, members.len());
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
    Summary {
        recipe: recipe.name.clone(),
        results,
        gap_recovered: gap,
        gap_recovered_mean: mean,
        ensemble_gap_recovered: ensemble_gap,
    }
}

/// The summary as a plain-text table.
pub fn table(s: &Summary) -> String {
    let mut o = format!(
        "{:<19} {:>4} {:>6} {:>8} {:>9} {:>10} {:>9} {:>12} {:>7}\n",
        "role", "seed", "T", "errors", "accuracy", "params", "size", "ms/1k imgs", "compr."
    );
    for r in &s.results {
        let role = r.role.name();
        let t = r.temperature.map(|t| format!("{t}")).unwrap_or_else(|| "-".into());
        o += &format!(
            "{:<19} {:>4} {:>6} {:>8} {:>8.2}% {:>10} {:>8.2}M {:>12.2} {:>6.2}x\n",
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
    o
}

/// The phase directories a run uses, for tools and tests.
pub fn phase_dirs(recipe: &ImageRecipe, out: &Path) -> Vec<PathBuf> {
    image_plan(&recipe.seeds, &recipe.distill).iter().map(|p| p.dir(out)).collect()
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
