//! The causal-LM recipe: a frozen teacher's next-token distributions train a smaller decoder
//! that shares its tokenizer; resolved once ([`LmRecipe::resolve`]) into the values a run reads.

use std::path::PathBuf;

use distill_text::{TextDataConfig, TextSource};
use serde::{Deserialize, Serialize};

use super::Task;
use crate::data::text::resolve_sources;
use crate::eval::LmEval;
use crate::io::fetch;
use crate::losses::divergence::Divergence;
use crate::methods::{LmDistill, TermContext};
use crate::student::quant::QuantCfg;
use crate::student::LmStudent;
use crate::teacher::ExtraLmTeacher;
use crate::teacher::LmTeacher;
use crate::train::{CheckpointCfg, TrainCfg};
use crate::{Error, Result};

/// LLM distillation: a frozen teacher's next-token distributions train a smaller decoder that
/// shares its tokenizer.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LmRecipe {
    /// `"causal-lm"`.
    pub task: Task,
    /// The run's name (reports, exported models, GGUF `general.name`).
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
    /// The teacher: a path, or a table with `path` (and `cache`, `dtype`).
    #[serde(deserialize_with = "distill_base::de::path_or_table")]
    #[schemars(schema_with = "distill_text::config::path_or_table_schema::<LmTeacher>")]
    pub teacher: LmTeacher,
    /// The student: built from the teacher (`layers`, widths, `init`) or `from` an existing model.
    pub student: LmStudent,
    /// Text sources, cleaning, split and packing (see `distill_text::TextDataConfig`).
    pub data: distill_text::TextDataConfig,
    /// Optimizer, steps, batch, schedule.
    pub train: TrainCfg,
    /// The loss: temperature, α, divergence, extra terms, method variants.
    pub distill: LmDistill,
    /// What is measured after training: validation, prompts, extra text, instructions.
    #[serde(default)]
    pub eval: LmEval,
    /// Checkpoint cadence (Ctrl-C also writes one).
    #[serde(default)]
    pub checkpoint: CheckpointCfg,
    /// `metrics.jsonl` cadence and progress lines off a terminal.
    #[serde(default)]
    pub log: crate::train::LogCfg,
    /// Post-training quantization and quantization-aware distillation of the KD student.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantize: Option<QuantCfg>,
    /// A teacher assistant (Mirzadeh et al. 2020): a model of intermediate size, derived from
    /// the teacher like the student (`[student]`'s keys), distilled from the teacher; it then
    /// teaches one more student with the KD student's steps (the teacher-assistant chain).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assistant: Option<LmStudent>,
    /// More teachers (same tokenizer as `[teacher]`) for `[distill.multi_teacher]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub teachers: Vec<ExtraLmTeacher>,
}

fn default_device() -> String {
    "cpu".into()
}

/// Parses `cpu`, `cuda` or `cuda:N` into a device and checks that libtorch can use it. In a
/// data-parallel job, `cuda` is this process's own GPU (`LOCAL_RANK`).
pub fn parse_device(s: &str) -> Result<tch::Device> {
    let dev = match s {
        "cpu" => return Ok(tch::Device::Cpu),
        "cuda" => crate::train::dist::group().map_or(0, |g| g.local_rank),
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

/// An LM recipe resolved once: the values every later stage reads, never derived twice.
#[derive(Debug, Clone)]
pub struct ResolvedLm {
    pub device: tch::Device,
    /// The teacher's model file or directory (`asset:` resolved).
    pub teacher_path: PathBuf,
    /// The teacher cache directory, when training reads the teacher from one.
    pub cache: Option<PathBuf>,
    /// `[data]` with every source path resolved.
    pub data: TextDataConfig,
    /// `eval.extra` with every source path resolved.
    pub extra: Vec<TextSource>,
    /// The divergence of the logit term.
    pub divergence: Divergence,
    /// `[[teachers]]` paths (`asset:` resolved).
    pub extra_teachers: Vec<PathBuf>,
    /// `student.from` (`asset:` resolved): an existing model as the student.
    pub student_from: Option<PathBuf>,
}

impl LmRecipe {
    /// Every path the recipe names, as written.
    pub fn paths(&self) -> Vec<&str> {
        let mut v = vec![self.teacher.path.as_str()];
        v.extend(self.student.from.as_deref());
        v.extend(self.teachers.iter().map(|t| t.path.as_str()));
        v.extend(
            self.data
                .sources
                .iter()
                .chain(&self.data.val_sources)
                .chain(&self.data.train_sources)
                .chain(&self.eval.extra)
                .map(|s| s.path.as_str()),
        );
        v.extend(self.eval.instructions.as_deref());
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
        fetch::check_path(&self.teacher.path, "teacher.path")?;
        if let Some(c) = &self.teacher.cache {
            fetch::check_path(c, "teacher.cache")?;
        }
        if let Some(s) = &self.teacher.server {
            s.validate().map_err(Error::Recipe)?;
            if self.teacher.cache.is_some() {
                return Err(Error::Recipe(
                    "teacher.server and teacher.cache are exclusive: the server's capture is the cache".into(),
                ));
            }
        }
        self.data.validate().map_err(|e| Error::Recipe(format!("data: {e}")))?;
        let lists = [
            ("data.sources", &self.data.sources),
            ("data.val_sources", &self.data.val_sources),
            ("data.train_sources", &self.data.train_sources),
            ("eval.extra", &self.eval.extra),
        ];
        for (key, list) in lists {
            for (i, s) in list.iter().enumerate() {
                if !s.path.contains(['*', '?', '[']) {
                    fetch::check_path(&s.path, &format!("{key}[{i}].path"))?;
                }
            }
        }
        if let Some(p) = &self.eval.instructions {
            fetch::check_path(p, "eval.instructions")?;
        }
        self.student.validate()?;
        if let Some(from) = &self.student.from {
            fetch::check_path(from, "student.from")?;
            if self.quantize.is_some() && self.distill.alpha == 0.0 {
                return Err(Error::Recipe("quantize needs the KD student (distill.alpha > 0)".into()));
            }
        }
        if let Some(a) = &self.assistant {
            if a.from.is_some() {
                return Err(Error::Recipe(
                    "assistant.from: the teacher assistant is built from the teacher; give its shape".into(),
                ));
            }
            a.validate().map_err(|e| match e {
                Error::Recipe(m) => Error::Recipe(m.replace("student.", "assistant.")),
                e => e,
            })?;
            if a.twin_init.is_some() {
                return Err(Error::Recipe("assistant.twin_init: the assistant has no twin".into()));
            }
            if self.distill.alpha == 0.0 {
                return Err(Error::Recipe("assistant is distilled from the teacher, but distill.alpha = 0".into()));
            }
        }
        for (i, t) in self.teachers.iter().enumerate() {
            fetch::check_path(&t.path, &format!("teachers[{i}].path"))?;
        }
        match &self.distill.multi_teacher {
            Some(m) => {
                m.validate(1 + self.teachers.len())?;
                if self.teacher.offline() {
                    return Err(Error::Recipe(
                        "distill.multi_teacher runs every teacher online; remove teacher.cache / teacher.server".into(),
                    ));
                }
                if self.distill.on_policy.is_some() {
                    return Err(Error::Recipe("distill.multi_teacher and distill.on_policy cannot be combined".into()));
                }
                if self.distill.alpha == 0.0 {
                    return Err(Error::Recipe("distill.multi_teacher needs distill.alpha > 0".into()));
                }
            }
            None if !self.teachers.is_empty() => {
                return Err(Error::Recipe(
                    "teachers: [[teachers]] are used only by distill.multi_teacher; add [distill.multi_teacher] or remove them".into(),
                ))
            }
            None => {}
        }
        self.train.validate("train")?;
        let ctx = TermContext {
            domain: crate::methods::Domain::Lm,
            // An existing student's depth is known once it loads (the terms are built against it
            // then, before anything trains).
            student_layers: if self.student.from.is_some() { usize::MAX } else { self.student.layers },
            online_teacher: !self.teacher.offline(),
        };
        self.distill.validate(&ctx)?;
        if let Some(op) = &self.distill.on_policy {
            op.validate(self.data.pack.seq_len, !self.teacher.offline(), self.distill.alpha)?;
        }
        self.eval.validate()?;
        if self.checkpoint.every_steps == 0 {
            return Err(Error::Recipe("checkpoint.every_steps must be > 0".into()));
        }
        self.log.validate().map_err(Error::Recipe)?;
        if let Some(q) = &self.quantize {
            q.validate()?;
            if self.distill.alpha == 0.0 {
                return Err(Error::Recipe(
                    "quantize quantizes the KD student, but distill.alpha = 0 trains none; set distill.alpha > 0"
                        .into(),
                ));
            }
        }
        Ok(())
    }

    /// Resolves the recipe once into the values a run reads: the device (checked against
    /// libtorch), `asset:` paths, the divergence.
    pub fn resolve(&self) -> Result<ResolvedLm> {
        let mut data = self.data.clone();
        data.sources = resolve_sources(&self.data.sources)?;
        data.val_sources = resolve_sources(&self.data.val_sources)?;
        data.train_sources = resolve_sources(&self.data.train_sources)?;
        Ok(ResolvedLm {
            device: parse_device(&self.device)?,
            teacher_path: fetch::resolve(&self.teacher.path)?,
            cache: self.teacher.cache.as_deref().map(fetch::resolve).transpose()?,
            data,
            extra: resolve_sources(&self.eval.extra)?,
            divergence: self.distill.divergence()?,
            extra_teachers: self.teachers.iter().map(|t| fetch::resolve(&t.path)).collect::<Result<_>>()?,
            student_from: self.student.from.as_deref().map(fetch::resolve).transpose()?,
        })
    }
}
