//! TOML recipes: the schema, `--set dotted.key=value` overrides and validation.
//!
//! A recipe is parsed in two steps: the `task` key picks the schema, then the whole document is
//! deserialized into it with unknown keys rejected by name. [`ImageRecipe::validate`] then checks
//! everything that can be checked without a tensor (files exist, values in range), so a typo
//! fails in milliseconds. Defaults are declared once, on the fields below.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::losses::divergence::{Divergence, DivergenceCfg, DivergenceKind};
use crate::losses::hidden::{uniform_layer_map, HiddenLoss};
use crate::{fetch, Error, Result};

/// Which kind of experiment a recipe describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Task {
    /// Teacher, scratch student and distilled student on an image classification set.
    ImageClassification,
    /// A causal LM teacher (GGUF or HF directory) distilled into a smaller decoder.
    CausalLm,
}

#[derive(Deserialize)]
struct TaskOnly {
    task: Option<Task>,
}

/// A parsed recipe of any task.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Recipe {
    Image(ImageRecipe),
    Lm(LmRecipe),
}

impl Recipe {
    /// Parses TOML text, applying `overrides` (`dotted.key=value`, value in TOML syntax or a bare
    /// string) before deserializing.
    pub fn parse(text: &str, overrides: &[String]) -> Result<Recipe> {
        let mut doc: toml::Table = toml::from_str(text).map_err(|e| Error::Recipe(one_line(&e)))?;
        for o in overrides {
            apply_override(&mut doc, o)?;
        }
        let t: TaskOnly = doc.clone().try_into().map_err(|e: toml::de::Error| Error::Recipe(one_line(&e)))?;
        match t.task {
            Some(Task::ImageClassification) => {
                let r: ImageRecipe = doc.try_into().map_err(|e: toml::de::Error| Error::Recipe(one_line(&e)))?;
                Ok(Recipe::Image(r))
            }
            Some(Task::CausalLm) => {
                let r: LmRecipe = doc.try_into().map_err(|e: toml::de::Error| Error::Recipe(one_line(&e)))?;
                Ok(Recipe::Lm(r))
            }
            None => Err(Error::Recipe("missing key `task` (one of: image-classification, causal-lm)".into())),
        }
    }

    /// Reads and parses a recipe file.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Recipe> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Recipe::parse(&text, overrides).map_err(|e| match e {
            Error::Recipe(m) => Error::Recipe(format!("{}: {m}", path.display())),
            e => e,
        })
    }

    /// The resolved recipe as TOML, saved in every run directory.
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string_pretty(self).map_err(|e| Error::Recipe(e.to_string()))
    }

    /// Checks everything that needs no tensor. `asset:` paths that are not fetched yet pass
    /// (the runner fetches them).
    pub fn validate(&self) -> Result<()> {
        match self {
            Recipe::Image(r) => r.validate(),
            Recipe::Lm(r) => r.validate(),
        }
    }

    /// Every path in the recipe, as written (possibly `asset:` paths).
    pub fn paths(&self) -> Vec<&str> {
        match self {
            Recipe::Image(r) => r.data.paths(),
            Recipe::Lm(r) => r.paths(),
        }
    }
}

fn one_line(e: &dyn std::fmt::Display) -> String {
    // toml's errors span several lines (a source excerpt); keep the message and the location.
    let s = e.to_string();
    let lines: Vec<&str> = s.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let msg = lines.last().copied().unwrap_or("");
    match lines.first() {
        Some(first) if lines.len() > 1 => format!("{msg} ({})", first.trim_end_matches(':')),
        _ => msg.to_string(),
    }
}

/// Applies one `a.b.c=value` override to a TOML document; `a.b.c=` (empty value) removes the
/// key, so its default applies (e.g. `--set train.epochs= --set train.steps=100`).
pub fn apply_override(doc: &mut toml::Table, spec: &str) -> Result<()> {
    let (key, raw) =
        spec.split_once('=').ok_or_else(|| Error::Recipe(format!("--set `{spec}`: expected dotted.key=value")))?;
    let key = key.trim();
    let remove = raw.trim().is_empty();
    let value: toml::Value = match toml::from_str::<toml::Table>(&format!("v = {}", raw.trim())) {
        Ok(mut t) => t.remove("v").unwrap_or(toml::Value::String(raw.to_string())),
        Err(_) => toml::Value::String(raw.trim().to_string()),
    };
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(Error::Recipe(format!("--set `{spec}`: empty key segment")));
    }
    let mut table = doc;
    for p in &parts[..parts.len() - 1] {
        let entry = table.entry(p.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = entry.as_table_mut().ok_or_else(|| Error::Recipe(format!("--set `{spec}`: `{p}` is not a table")))?;
    }
    let last = parts[parts.len() - 1];
    if remove {
        table.remove(last);
    } else {
        table.insert(last.to_string(), value);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Image classification
// ---------------------------------------------------------------------------------------------

/// Teacher, scratch student and distilled student on an image set (Hinton et al. 2015, §3).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageRecipe {
    pub task: Task,
    /// Name shown in tables and summary.json.
    pub name: String,
    /// Each seed trains a teacher, a scratch student and a KD student.
    #[serde(default = "default_seeds")]
    pub seeds: Vec<u64>,
    /// Intra-op threads for libtorch (default: all cores).
    #[serde(default)]
    pub threads: Option<usize>,
    pub data: ImageData,
    pub teacher: Stage,
    pub student: Stage,
    pub distill: ImageDistill,
    #[serde(default)]
    pub checkpoint: CheckpointCfg,
}

fn default_seeds() -> Vec<u64> {
    vec![0]
}

/// File format of an image set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ImageFormat {
    /// IDX (MNIST) files, raw or gzip: separate image and label files.
    Idx,
    /// CSV, one image per row: a label column and the pixels.
    Csv,
}

/// Where the images are and how to read them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageData {
    pub format: ImageFormat,
    /// IDX: training images file.
    #[serde(default)]
    pub train_images: Option<String>,
    /// IDX: training labels file.
    #[serde(default)]
    pub train_labels: Option<String>,
    /// IDX: test images file.
    #[serde(default)]
    pub test_images: Option<String>,
    /// IDX: test labels file.
    #[serde(default)]
    pub test_labels: Option<String>,
    /// CSV: training file.
    #[serde(default)]
    pub train: Option<String>,
    /// CSV: test file.
    #[serde(default)]
    pub test: Option<String>,
    /// CSV: index of the label column (default 0); every other column is a pixel.
    #[serde(default)]
    pub label_column: usize,
    /// CSV: whether the first row is a header (default: detected — a first row that is not all
    /// numbers is a header).
    #[serde(default)]
    pub header: Option<bool>,
    /// Pixels are divided by this (default 255 for 8-bit images; 16 for sklearn digits).
    #[serde(default = "default_pixel_scale")]
    pub pixel_scale: f64,
    /// Image height × width (default: IDX header, or the square root of the CSV pixel count).
    #[serde(default)]
    pub image_size: Option<[usize; 2]>,
    /// Students see labels for only the first N (shuffled, class-balanced not guaranteed)
    /// training images; the teacher's soft targets still cover all of them (KD with
    /// unlabeled data). The scratch student trains on those N only.
    #[serde(default)]
    pub labeled_subset: Option<usize>,
}

fn default_pixel_scale() -> f64 {
    255.0
}

impl ImageData {
    /// The paths this section names, as written.
    pub fn paths(&self) -> Vec<&str> {
        [&self.train_images, &self.train_labels, &self.test_images, &self.test_labels, &self.train, &self.test]
            .into_iter()
            .filter_map(|p| p.as_deref())
            .collect()
    }
}

/// A model architecture.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ModelSpec {
    /// Fully connected ReLU network.
    Mlp {
        /// Hidden widths, e.g. `[1200, 1200]`.
        hidden: Vec<usize>,
        /// Dropout after each hidden layer (Hinton: 0.5).
        #[serde(default)]
        dropout: f64,
        /// Dropout on the input pixels (Hinton: 0.2).
        #[serde(default)]
        input_dropout: f64,
    },
    /// Small conv net: 3×3 conv + ReLU + 2×2 max-pool per entry of `channels`, then one hidden
    /// fully connected layer.
    Cnn {
        channels: Vec<usize>,
        hidden: usize,
        #[serde(default)]
        dropout: f64,
    },
}

/// Optimizer family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OptimizerKind {
    /// AdamW (Loshchilov & Hutter 2019), decoupled weight decay on matrices only.
    Adamw,
    /// SGD with (optionally Nesterov) momentum, PyTorch convention.
    Sgd,
}

/// Learning-rate schedule after warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Schedule {
    Constant,
    /// Cosine decay from `lr` to `lr·min_lr_ratio` at the last step.
    Cosine,
    Linear,
}

/// How one model is trained.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainCfg {
    /// Passes over the training set (exclusive with `steps`).
    #[serde(default)]
    pub epochs: Option<f64>,
    /// Optimizer steps (exclusive with `epochs`).
    #[serde(default)]
    pub steps: Option<u64>,
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    #[serde(default = "default_optimizer")]
    pub optimizer: OptimizerKind,
    pub lr: f64,
    #[serde(default)]
    pub weight_decay: f64,
    /// SGD momentum.
    #[serde(default = "default_momentum")]
    pub momentum: f64,
    #[serde(default)]
    pub nesterov: bool,
    /// AdamW betas.
    #[serde(default = "default_betas")]
    pub betas: [f64; 2],
    #[serde(default = "default_eps")]
    pub eps: f64,
    #[serde(default = "default_schedule")]
    pub schedule: Schedule,
    /// Linear warmup steps from 0 to `lr`.
    #[serde(default)]
    pub warmup_steps: u64,
    #[serde(default)]
    pub min_lr_ratio: f64,
    /// Clip the global gradient L2 norm to this value.
    #[serde(default)]
    pub clip_grad_norm: Option<f64>,
}

fn default_batch() -> usize {
    128
}
fn default_optimizer() -> OptimizerKind {
    OptimizerKind::Adamw
}
fn default_momentum() -> f64 {
    0.9
}
fn default_betas() -> [f64; 2] {
    [0.9, 0.999]
}
fn default_eps() -> f64 {
    1e-8
}
fn default_schedule() -> Schedule {
    Schedule::Cosine
}

impl TrainCfg {
    fn validate(&self, what: &str) -> Result<()> {
        let bad = |m: String| Err(Error::Recipe(format!("{what}: {m}")));
        match (self.epochs, self.steps) {
            (Some(_), Some(_)) => return bad("set either `epochs` or `steps`, not both".into()),
            (None, None) => return bad("set `epochs` or `steps`".into()),
            (Some(e), None) if !(e > 0.0 && e.is_finite()) => return bad(format!("epochs must be > 0, got {e}")),
            (None, Some(0)) => return bad("steps must be > 0".into()),
            _ => {}
        }
        if self.batch_size == 0 {
            return bad("batch_size must be > 0".into());
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad(format!("lr must be > 0, got {}", self.lr));
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return bad(format!("momentum must be in [0, 1), got {}", self.momentum));
        }
        if self.betas.iter().any(|b| !(0.0..1.0).contains(b)) {
            return bad(format!("betas must be in [0, 1), got {:?}", self.betas));
        }
        if self.weight_decay < 0.0 {
            return bad("weight_decay must be >= 0".into());
        }
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            return bad("min_lr_ratio must be in [0, 1]".into());
        }
        if let Some(c) = self.clip_grad_norm {
            if c <= 0.0 {
                return bad("clip_grad_norm must be > 0".into());
            }
        }
        Ok(())
    }

    /// Total optimizer steps for a training set of `n` examples.
    pub fn total_steps(&self, n: usize) -> u64 {
        let per_epoch = n.div_ceil(self.batch_size.max(1)) as u64;
        match (self.steps, self.epochs) {
            (Some(s), _) => s,
            (None, Some(e)) => ((per_epoch as f64) * e).ceil().max(1.0) as u64,
            (None, None) => per_epoch,
        }
    }
}

/// A model and how it is trained.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    pub model: ModelSpec,
    pub train: TrainCfg,
    /// Random translation of up to ±N pixels per training image (Hinton's teacher: 2).
    #[serde(default)]
    pub jitter: usize,
}

/// The distillation objective for image classification.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageDistill {
    /// Softmax temperature T of the main KD run.
    pub temperature: f64,
    /// Weight α of the soft term: `α·T²·KL + (1−α)·CE`.
    pub alpha: f64,
    /// Extra KD runs at these temperatures (first seed only): the temperature sweep.
    #[serde(default)]
    pub sweep: Vec<f64>,
    /// Multi-teacher KD: after the seeds, evaluate the ensemble of every seed's teacher and
    /// distill one more student (the first seed's init) from it, soft targets
    /// `mean_k softmax(z_k/T)` (Hinton et al. 2015 distil an ensemble). Needs ≥ 2 seeds.
    #[serde(default)]
    pub ensemble: bool,
}

/// Checkpointing.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointCfg {
    /// Save a checkpoint every N optimizer steps (and at the end).
    #[serde(default = "default_every")]
    pub every_steps: u64,
}

fn default_every() -> u64 {
    200
}

impl Default for CheckpointCfg {
    fn default() -> Self {
        CheckpointCfg { every_steps: default_every() }
    }
}

fn check_model(m: &ModelSpec, what: &str) -> Result<()> {
    let bad = |msg: String| Err(Error::Recipe(format!("{what}.model: {msg}")));
    match m {
        ModelSpec::Mlp { hidden, dropout, input_dropout } => {
            if hidden.contains(&0) {
                return bad("hidden widths must be > 0".into());
            }
            for (k, p) in [("dropout", dropout), ("input_dropout", input_dropout)] {
                if !(0.0..1.0).contains(p) {
                    return bad(format!("{k} must be in [0, 1), got {p}"));
                }
            }
        }
        ModelSpec::Cnn { channels, hidden, dropout } => {
            if channels.is_empty() || channels.contains(&0) || *hidden == 0 {
                return bad("channels must be a non-empty list of widths > 0 and hidden > 0".into());
            }
            if !(0.0..1.0).contains(dropout) {
                return bad(format!("dropout must be in [0, 1), got {dropout}"));
            }
        }
    }
    Ok(())
}

/// Checks that a recipe path exists, resolving `asset:` paths (an unfetched asset passes: the
/// runner fetches it).
pub fn check_path(p: &str, key: &str) -> Result<PathBuf> {
    let path = fetch::resolve(p)?;
    if p.starts_with("asset:") && !fetch::missing_assets([p])?.is_empty() {
        return Ok(path);
    }
    if !path.exists() {
        return Err(Error::Recipe(format!("{key}: no such file: {}", path.display())));
    }
    Ok(path)
}

impl ImageRecipe {
    /// Checks values and paths. No tensor is created.
    pub fn validate(&self) -> Result<()> {
        if self.seeds.is_empty() {
            return Err(Error::Recipe("seeds: give at least one seed".into()));
        }
        if let Some(0) = self.threads {
            return Err(Error::Recipe("threads must be > 0".into()));
        }
        let d = &self.data;
        let need = |v: &Option<String>, key: &str| -> Result<()> {
            match v {
                Some(p) => check_path(p, &format!("data.{key}")).map(|_| ()),
                None => Err(Error::Recipe(format!("data.{key} is required for format = {:?}", d.format))),
            }
        };
        match d.format {
            ImageFormat::Idx => {
                need(&d.train_images, "train_images")?;
                need(&d.train_labels, "train_labels")?;
                need(&d.test_images, "test_images")?;
                need(&d.test_labels, "test_labels")?;
            }
            ImageFormat::Csv => {
                need(&d.train, "train")?;
                need(&d.test, "test")?;
            }
        }
        if !(d.pixel_scale > 0.0 && d.pixel_scale.is_finite()) {
            return Err(Error::Recipe(format!("data.pixel_scale must be > 0, got {}", d.pixel_scale)));
        }
        if let Some([h, w]) = d.image_size {
            if h == 0 || w == 0 {
                return Err(Error::Recipe("data.image_size must be positive".into()));
            }
        }
        if d.labeled_subset == Some(0) {
            return Err(Error::Recipe("data.labeled_subset must be > 0".into()));
        }
        check_model(&self.teacher.model, "teacher")?;
        check_model(&self.student.model, "student")?;
        self.teacher.train.validate("teacher.train")?;
        self.student.train.validate("student.train")?;
        let dd = &self.distill;
        for t in std::iter::once(&dd.temperature).chain(&dd.sweep) {
            if !(*t > 0.0 && t.is_finite()) {
                return Err(Error::Recipe(format!("distill: temperatures must be > 0, got {t}")));
            }
        }
        if !(0.0..=1.0).contains(&dd.alpha) {
            return Err(Error::Recipe(format!("distill.alpha must be in [0, 1], got {}", dd.alpha)));
        }
        if dd.ensemble && self.seeds.len() < 2 {
            return Err(Error::Recipe(format!(
                "distill.ensemble needs at least two seeds (one teacher each), got seeds = {:?}",
                self.seeds
            )));
        }
        if self.checkpoint.every_steps == 0 {
            return Err(Error::Recipe("checkpoint.every_steps must be > 0".into()));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Causal LM
// ---------------------------------------------------------------------------------------------

/// LLM distillation: a frozen teacher's next-token distributions train a smaller decoder that
/// shares its tokenizer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LmRecipe {
    pub task: Task,
    pub name: String,
    /// Seed of the student's initialization, data order and dropout.
    #[serde(default)]
    pub seed: u64,
    /// Intra-op threads for libtorch (default: all cores).
    #[serde(default)]
    pub threads: Option<usize>,
    /// Where models train and run: `cpu` (default), `cuda` or `cuda:N`.
    #[serde(default = "default_device")]
    pub device: String,
    pub teacher: LmTeacher,
    pub student: LmStudent,
    /// Text sources, cleaning, split and packing (see `distill_text::TextDataConfig`).
    pub data: distill_text::TextDataConfig,
    pub train: TrainCfg,
    pub distill: LmDistill,
    #[serde(default)]
    pub eval: LmEval,
    #[serde(default)]
    pub checkpoint: CheckpointCfg,
}

/// Where the teacher comes from.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LmTeacher {
    /// A GGUF file or a Hugging Face directory (config.json, model.safetensors, tokenizer.json).
    pub path: String,
    /// An offline cache of this teacher's top-k over the training rows (`distill cache`):
    /// training reads the teacher's distributions from it instead of running the model, which
    /// still provides the tokenizer, the student's shape and the evaluation.
    #[serde(default)]
    pub cache: Option<String>,
    /// The precision the online teacher runs in while students train; evaluation always runs
    /// it in f32.
    #[serde(default)]
    pub dtype: TeacherDtype,
}

/// Precision of the online teacher during training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TeacherDtype {
    /// bf16 on CUDA, and on a CPU where a bf16 matmul of the teacher's shape is measured at
    /// least 1.25× faster than f32 (AVX512-BF16, AMX); f32 elsewhere.
    #[default]
    Auto,
    F32,
    /// Weights and activations in bf16 (RMSNorm and softmax statistics in f32); the teacher's
    /// logits are turned into log-probabilities in f32.
    Bf16,
}

/// How the student is initialized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StudentInit {
    /// Normal(0, initializer_range) matrices, ones for norms (the HF Llama init).
    Random,
    /// Every k-th teacher layer (DistilBERT-style), embeddings and norms copied; matrices are
    /// sliced to the student's widths when they shrink.
    LayerSubset,
    /// The teacher's token embedding (and untied output projection) projected onto the top
    /// principal directions of its residual stream (SliceGPT-style rotation, then truncation);
    /// layers random. The scratch twin gets the same init, so KD vs scratch stays a fair test.
    EmbeddingPca,
}

/// The student's shape, derived from the teacher's config where a field is left out.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LmStudent {
    #[serde(default = "default_init")]
    pub init: StudentInit,
    /// Decoder layers.
    pub layers: usize,
    /// Hidden size (default: the teacher's).
    #[serde(default)]
    pub hidden: Option<usize>,
    /// Attention heads (default: the teacher's, or hidden / teacher head_dim).
    #[serde(default)]
    pub heads: Option<usize>,
    /// Key/value heads (default: keeps the teacher's query/kv ratio).
    #[serde(default)]
    pub kv_heads: Option<usize>,
    /// MLP width (default: the teacher's ratio to hidden).
    #[serde(default)]
    pub intermediate: Option<usize>,
    /// Tie the output projection to the embedding (default true).
    #[serde(default = "default_true")]
    pub tie_embeddings: bool,
}

fn default_device() -> String {
    "cpu".into()
}

/// Parses `cpu`, `cuda` or `cuda:N` into a device and checks that libtorch can use it.
pub fn parse_device(s: &str) -> Result<tch::Device> {
    let dev = match s {
        "cpu" => return Ok(tch::Device::Cpu),
        "cuda" => 0,
        _ => s
            .strip_prefix("cuda:")
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| Error::Recipe(format!("device must be `cpu`, `cuda` or `cuda:N`, got `{s}`")))?,
    };
    let n = tch::Cuda::device_count() as usize;
    if dev >= n {
        return Err(Error::Invalid(format!(
            "device `{s}` requested but libtorch sees {n} CUDA device(s) (CPU-only torch wheel or no GPU)"
        )));
    }
    Ok(tch::Device::Cuda(dev))
}

fn default_init() -> StudentInit {
    StudentInit::Random
}
fn default_true() -> bool {
    true
}

/// The LM distillation objective: `α·T²·KL(p_t^T ‖ p_s^T) + (1−α)·CE` over predicted tokens.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LmDistill {
    pub temperature: f64,
    /// Weight of the soft term; 0 trains the scratch baseline through the identical pipeline.
    pub alpha: f64,
    /// Also train the same student with `alpha = 0` in the same run and compare.
    #[serde(default)]
    pub scratch_twin: bool,
    /// The divergence between teacher and student distributions: `forward-kl` (default),
    /// `reverse-kl`, `jsd` (+ `beta`), `skew-kl` / `skew-reverse-kl` (+ `skew`), `tvd`.
    #[serde(default = "default_divergence")]
    pub divergence: DivergenceKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beta: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skew: Option<f64>,
    /// Tokens per chunk of the loss: the student's logits and probabilities exist for this many
    /// tokens at a time, never for the whole batch (see `losses::chunked`).
    #[serde(default = "default_chunk_tokens")]
    pub chunk_tokens: usize,
    /// Feature KD on intermediate states (`[distill.hidden]`), added to the KD student's loss.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden: Option<HiddenKdCfg>,
}

/// `[distill.hidden]`: `+ weight · mean over layer pairs of L(h_s Wᵀ, h_t)` for the KD student
/// (never the scratch twin), `W` a learned projection to the teacher's width (see
/// `losses::hidden`). Needs the online teacher.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HiddenKdCfg {
    /// β, the weight of the hidden-state term (≥ 0).
    pub weight: f64,
    /// `cosine` (default, DistilBERT) or `mse` (TinyBERT).
    #[serde(default = "default_hidden_loss")]
    pub loss: HiddenLoss,
    /// `[[student_layer, teacher_layer], …]`, 1-based block outputs (0 = the embeddings);
    /// default: every student layer `i` with teacher layer `round(i·L_t/L_s)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<Vec<[usize; 2]>>,
}

fn default_hidden_loss() -> HiddenLoss {
    HiddenLoss::Cosine
}

impl HiddenKdCfg {
    /// The (student layer, teacher layer) pairs, checked against both depths.
    pub fn pairs(&self, student_layers: usize, teacher_layers: usize) -> Result<Vec<(usize, usize)>> {
        let pairs = match &self.layers {
            Some(l) => l.iter().map(|&[s, t]| (s, t)).collect(),
            None => uniform_layer_map(student_layers, teacher_layers),
        };
        for &(s, t) in &pairs {
            if s > student_layers || t > teacher_layers {
                return Err(Error::Recipe(format!(
                    "distill.hidden.layers: [{s}, {t}] is past the student's {student_layers} or the teacher's \
                     {teacher_layers} layers (1-based; 0 = embeddings)"
                )));
            }
        }
        Ok(pairs)
    }
}

fn default_divergence() -> DivergenceKind {
    DivergenceKind::ForwardKl
}
fn default_chunk_tokens() -> usize {
    256
}

impl LmDistill {
    /// The divergence the recipe names (validated).
    pub fn divergence(&self) -> Result<Divergence> {
        DivergenceCfg { divergence: self.divergence, beta: self.beta, skew: self.skew }
            .validate()
            .map_err(|e| Error::Recipe(format!("distill: {e}")))
    }
}

/// What the run reports after training.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LmEval {
    /// Prompts for the top-k next-token tables and generations.
    #[serde(default = "default_prompts")]
    pub prompts: Vec<String>,
    /// Tokens generated per prompt.
    #[serde(default = "default_max_new")]
    pub max_new_tokens: usize,
    /// Rows of the next-token table.
    #[serde(default = "default_top")]
    pub top_k_table: usize,
    /// Sampling for the sampled generations.
    #[serde(default = "default_sample_t")]
    pub sample_temperature: f64,
    #[serde(default = "default_sample_k")]
    pub sample_top_k: usize,
    #[serde(default = "default_sample_p")]
    pub sample_top_p: f64,
    /// CTRL repetition penalty for a third, penalized greedy generation next to plain greedy
    /// and sampled (1.0 = leave it out).
    #[serde(default = "default_rep_penalty")]
    pub repetition_penalty: f64,
    /// Evaluate on at most this many validation rows (default: all).
    #[serde(default)]
    pub max_val_blocks: Option<usize>,
    /// Extra held-out text sources evaluated for perplexity (e.g. text never seen in training).
    #[serde(default)]
    pub extra: Vec<distill_text::TextSource>,
}

fn default_prompts() -> Vec<String> {
    ["The capital of France is", "Once upon a time", "The history of the United States", "In the morning, the"]
        .map(String::from)
        .to_vec()
}
fn default_max_new() -> usize {
    50
}
fn default_top() -> usize {
    5
}
fn default_sample_t() -> f64 {
    0.8
}
fn default_sample_k() -> usize {
    50
}
fn default_sample_p() -> f64 {
    0.95
}
fn default_rep_penalty() -> f64 {
    1.2
}

impl Default for LmEval {
    fn default() -> Self {
        LmEval {
            prompts: default_prompts(),
            max_new_tokens: default_max_new(),
            top_k_table: default_top(),
            sample_temperature: default_sample_t(),
            sample_top_k: default_sample_k(),
            sample_top_p: default_sample_p(),
            repetition_penalty: default_rep_penalty(),
            max_val_blocks: None,
            extra: Vec::new(),
        }
    }
}

impl LmRecipe {
    /// Every path the recipe names, as written.
    pub fn paths(&self) -> Vec<&str> {
        let mut v = vec![self.teacher.path.as_str()];
        v.extend(
            self.data.sources.iter().chain(&self.data.val_sources).chain(&self.eval.extra).map(|s| s.path.as_str()),
        );
        v
    }

    /// Checks values and paths. No tensor is created.
    pub fn validate(&self) -> Result<()> {
        if let Some(0) = self.threads {
            return Err(Error::Recipe("threads must be > 0".into()));
        }
        if !(self.device == "cpu" || self.device == "cuda" || self.device.starts_with("cuda:")) {
            return Err(Error::Recipe(format!("device must be `cpu`, `cuda` or `cuda:N`, got `{}`", self.device)));
        }
        check_path(&self.teacher.path, "teacher.path")?;
        if let Some(c) = &self.teacher.cache {
            check_path(c, "teacher.cache")?;
        }
        self.data.validate().map_err(|e| Error::Recipe(format!("data: {e}")))?;
        let lists = [
            ("data.sources", &self.data.sources),
            ("data.val_sources", &self.data.val_sources),
            ("eval.extra", &self.eval.extra),
        ];
        for (key, list) in lists {
            for (i, s) in list.iter().enumerate() {
                if !s.path.contains(['*', '?', '[']) {
                    check_path(&s.path, &format!("{key}[{i}].path"))?;
                }
            }
        }
        let st = &self.student;
        if st.layers == 0 {
            return Err(Error::Recipe("student.layers must be > 0".into()));
        }
        for (k, v) in
            [("hidden", st.hidden), ("heads", st.heads), ("kv_heads", st.kv_heads), ("intermediate", st.intermediate)]
        {
            if v == Some(0) {
                return Err(Error::Recipe(format!("student.{k} must be > 0")));
            }
        }
        if let (Some(h), Some(kv)) = (st.heads, st.kv_heads) {
            if h % kv != 0 {
                return Err(Error::Recipe(format!(
                    "student.heads ({h}) must be a multiple of student.kv_heads ({kv})"
                )));
            }
        }
        if let (Some(hid), Some(h)) = (st.hidden, st.heads) {
            if hid % h != 0 {
                return Err(Error::Recipe(format!("student.hidden ({hid}) must be a multiple of student.heads ({h})")));
            }
        }
        self.train.validate("train")?;
        let d = &self.distill;
        if !(d.temperature > 0.0 && d.temperature.is_finite()) {
            return Err(Error::Recipe(format!("distill.temperature must be > 0, got {}", d.temperature)));
        }
        if !(0.0..=1.0).contains(&d.alpha) {
            return Err(Error::Recipe(format!("distill.alpha must be in [0, 1], got {}", d.alpha)));
        }
        d.divergence()?;
        if d.chunk_tokens == 0 {
            return Err(Error::Recipe("distill.chunk_tokens must be > 0".into()));
        }
        if let Some(h) = &d.hidden {
            if !(h.weight >= 0.0 && h.weight.is_finite()) {
                return Err(Error::Recipe(format!("distill.hidden.weight must be ≥ 0, got {}", h.weight)));
            }
            if matches!(&h.layers, Some(l) if l.is_empty()) {
                return Err(Error::Recipe("distill.hidden.layers is empty (leave it out for the uniform map)".into()));
            }
            if self.teacher.cache.is_some() {
                return Err(Error::Recipe(
                    "distill.hidden needs the online teacher: teacher.cache holds only its output distributions".into(),
                ));
            }
            // The teacher's depth is known once it loads; the student's is checked now.
            if let Some(&[s, t]) = h.layers.iter().flatten().find(|&&[s, _]| s > st.layers) {
                return Err(Error::Recipe(format!(
                    "distill.hidden.layers: [{s}, {t}] is past the student's {} layers (1-based; 0 = embeddings)",
                    st.layers
                )));
            }
        }
        let e = &self.eval;
        if e.top_k_table == 0 || e.sample_top_k == 0 || !(e.sample_top_p > 0.0 && e.sample_top_p <= 1.0) {
            return Err(Error::Recipe("eval: top_k_table and sample_top_k must be > 0, sample_top_p in (0, 1]".into()));
        }
        if e.sample_temperature.is_nan() || e.sample_temperature <= 0.0 {
            return Err(Error::Recipe("eval.sample_temperature must be > 0".into()));
        }
        if !(e.repetition_penalty >= 1.0 && e.repetition_penalty.is_finite()) {
            return Err(Error::Recipe(format!("eval.repetition_penalty must be ≥ 1, got {}", e.repetition_penalty)));
        }
        if self.checkpoint.every_steps == 0 {
            return Err(Error::Recipe("checkpoint.every_steps must be > 0".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = r#"
task = "image-classification"
name = "t"
[data]
format = "csv"
train = "Cargo.toml"
test = "Cargo.toml"
[teacher]
model = { type = "mlp", hidden = [8] }
train = { epochs = 1, lr = 0.001 }
[student]
model = { type = "mlp", hidden = [4] }
train = { epochs = 1, lr = 0.001 }
[distill]
temperature = 4.0
alpha = 0.9
"#;

    fn parse(over: &[&str]) -> Result<Recipe> {
        let o: Vec<String> = over.iter().map(|s| s.to_string()).collect();
        Recipe::parse(MIN, &o)
    }

    #[test]
    fn minimal_recipe_parses_with_documented_defaults() {
        let r = image(parse(&[]).unwrap());
        assert_eq!(r.seeds, vec![0]);
        assert_eq!(r.student.train.batch_size, 128);
        assert_eq!(r.student.train.optimizer, OptimizerKind::Adamw);
        assert_eq!(r.data.pixel_scale, 255.0);
        assert_eq!(r.checkpoint.every_steps, 200);
        assert_eq!(r.teacher.model, ModelSpec::Mlp { hidden: vec![8], dropout: 0.0, input_dropout: 0.0 });
    }

    #[test]
    fn unknown_key_is_named() {
        let e = parse(&["distill.temprature=3"]).unwrap_err().to_string();
        assert!(e.contains("unknown field `temprature`"), "{e}");
        assert!(!e.contains('\n'), "{e}");
        let e = parse(&["teacher.model.widths=[3]"]).unwrap_err().to_string();
        assert!(e.contains("unknown field `widths`"), "{e}");
    }

    fn image(r: Recipe) -> ImageRecipe {
        match r {
            Recipe::Image(r) => r,
            Recipe::Lm(_) => panic!("not an image recipe"),
        }
    }

    #[test]
    fn overrides_take_toml_values_and_bare_strings() {
        let o = ["seeds=[1,2,3]", "distill.temperature=20", "name=hello world", "student.train.epochs=2.5"];
        let r = image(parse(&o).unwrap());
        assert_eq!(r.seeds, vec![1, 2, 3]);
        assert_eq!(r.distill.temperature, 20.0);
        assert_eq!(r.name, "hello world");
        assert_eq!(r.student.train.epochs, Some(2.5));
        // An empty value removes the key, so `steps` can replace `epochs`.
        let r2 = image(parse(&["teacher.train.epochs=", "teacher.train.steps=7"]).unwrap());
        assert_eq!((r2.teacher.train.epochs, r2.teacher.train.steps), (None, Some(7)));
    }

    #[test]
    fn validation_catches_ranges_and_paths() {
        let cases = [
            ("distill.alpha=1.5", "distill.alpha must be in [0, 1]"),
            ("distill.temperature=0", "temperatures must be > 0"),
            ("data.train=missing.csv", "data.train: no such file: missing.csv"),
            ("teacher.train.lr=-1", "teacher.train: lr must be > 0"),
            ("student.train.steps=10", "set either `epochs` or `steps`"),
            ("teacher.model.dropout=1.0", "teacher.model: dropout must be in [0, 1)"),
        ];
        for (o, want) in cases {
            let e = parse(&[o]).and_then(|r| r.validate()).unwrap_err().to_string();
            assert!(e.contains(want), "{o}: {e}");
        }
        parse(&[]).unwrap().validate().unwrap();
    }

    #[test]
    fn lm_recipes_in_the_repo_parse_and_validate_shape_rules() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../recipes");
        for f in ["smollm2-brown.toml", "smollm2-brown-scratch.toml"] {
            let r = Recipe::load(&dir.join(f), &[]).unwrap();
            let Recipe::Lm(lm) = &r else { panic!("{f} is not a causal-lm recipe") };
            assert_eq!(lm.data.pack.seq_len, 128);
            let twin = f.contains("scratch");
            assert_eq!(lm.distill.alpha == 0.0, twin, "{f}");
        }
        let o = |s: &str| vec![s.to_string()];
        let e = Recipe::load(&dir.join("smollm2-brown.toml"), &o("student.kv_heads=3")).unwrap().validate();
        assert!(e.unwrap_err().to_string().contains("student.heads (4) must be a multiple of student.kv_heads (3)"));
        let e = Recipe::load(&dir.join("smollm2-brown.toml"), &o("student.init=\"copy\"")).unwrap_err();
        assert!(e.to_string().contains("unknown variant `copy`"), "{e}");
        // The divergence keys, chunking and the teacher cache.
        let lm = |sets: &[&str]| -> Result<LmRecipe> {
            let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
            match Recipe::load(&dir.join("smollm2-brown.toml"), &sets)? {
                Recipe::Lm(r) => {
                    r.validate()?;
                    Ok(r)
                }
                Recipe::Image(_) => unreachable!(),
            }
        };
        let r = lm(&[]).unwrap();
        assert_eq!(r.distill.divergence().unwrap(), Divergence::ForwardKl);
        assert_eq!(r.distill.chunk_tokens, 256);
        assert!(r.teacher.cache.is_none());
        assert_eq!(r.teacher.dtype, TeacherDtype::Auto);
        assert_eq!(lm(&["teacher.dtype=bf16"]).unwrap().teacher.dtype, TeacherDtype::Bf16);
        assert_eq!(lm(&["teacher.dtype=f32"]).unwrap().teacher.dtype, TeacherDtype::F32);
        assert!(r.distill.hidden.is_none());
        let h = lm(&["distill.hidden={weight=0.5}"]).unwrap().distill.hidden.unwrap();
        assert_eq!((h.weight, h.loss), (0.5, HiddenLoss::Cosine));
        assert_eq!(h.pairs(6, 30).unwrap(), vec![(1, 5), (2, 10), (3, 15), (4, 20), (5, 25), (6, 30)]);
        let h =
            lm(&["distill.hidden={weight=1, loss=\"mse\", layers=[[0,0],[6,30]]}"]).unwrap().distill.hidden.unwrap();
        assert_eq!((h.loss, h.pairs(6, 30).unwrap()), (HiddenLoss::Mse, vec![(0, 0), (6, 30)]));
        assert!(h
            .pairs(6, 24)
            .unwrap_err()
            .to_string()
            .contains("[6, 30] is past the student's 6 or the teacher's 24"));
        let r = lm(&["distill.divergence=\"jsd\"", "distill.beta=0.5"]).unwrap();
        assert_eq!(r.distill.divergence().unwrap(), Divergence::Jsd { beta: 0.5 });
        let r = lm(&["distill.divergence=skew-reverse-kl", "distill.skew=0.1"]).unwrap();
        assert_eq!(r.distill.divergence().unwrap(), Divergence::SkewReverseKl { alpha: 0.1 });
        for (sets, needle) in [
            (&["distill.divergence=jsd"][..], "needs beta"),
            (&["distill.divergence=tvd", "distill.beta=0.5"][..], "beta only applies"),
            (&["distill.divergence=kl"][..], "unknown variant `kl`"),
            (&["teacher.dtype=fp16"][..], "unknown variant `fp16`, expected one of `auto`, `f32`, `bf16`"),
            (&["distill.chunk_tokens=0"][..], "distill.chunk_tokens must be > 0"),
            (&["teacher.cache=/nonexistent/cache"][..], "teacher.cache: no such file"),
            (&["distill.hidden={weight=-1}"][..], "distill.hidden.weight must be ≥ 0"),
            (&["distill.hidden={weight=1, loss=\"l2\"}"][..], "unknown variant `l2`, expected `mse` or `cosine`"),
            (&["distill.hidden={weight=1, layer=[[1,2]]}"][..], "unknown field `layer`"),
            (&["distill.hidden={weight=1, layers=[[7,30]]}"][..], "[7, 30] is past the student's 6"),
            (&["distill.hidden={weight=1, layers=[]}"][..], "distill.hidden.layers is empty"),
            (&["distill.hidden={weight=1}", "teacher.cache=Cargo.toml"][..], "distill.hidden needs the online teacher"),
        ] {
            let e = lm(sets).unwrap_err().to_string();
            assert!(e.contains(needle), "{sets:?}: {e}");
        }
    }

    #[test]
    fn total_steps_from_epochs() {
        let r = image(parse(&["student.train.epochs=1.5", "student.train.batch_size=100"]).unwrap());
        assert_eq!(r.student.train.total_steps(1000), 15);
        assert_eq!(r.student.train.total_steps(1001), 17);
    }
}
