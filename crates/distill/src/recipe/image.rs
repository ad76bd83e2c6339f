//! The image-classification recipe: a teacher, a scratch student and a distilled student per
//! seed (Hinton et al. 2015, §3).

use serde::{Deserialize, Serialize};

use super::Task;
use crate::data::images::ImageData;
use crate::methods::{Domain, ImageDistill, TermContext};
use crate::models::ModelSpec;
use crate::train::{CheckpointCfg, TrainCfg};
use crate::{Error, Result};

/// Teacher, scratch student and distilled student on an image set (Hinton et al. 2015, §3).
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageRecipe {
    /// `"image-classification"`.
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
    /// A teacher assistant (Mirzadeh et al. 2020): a model of intermediate size distilled from
    /// the teacher, which then teaches one more student (the teacher-assistant chain).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assistant: Option<Stage>,
    /// More teachers, trained in the run besides `[teacher]` (other architectures or sizes),
    /// for `[distill.multi_teacher]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub teachers: Vec<Stage>,
    /// Checkpoint cadence.
    #[serde(default)]
    pub checkpoint: CheckpointCfg,
    /// `metrics.jsonl` cadence and progress lines off a terminal.
    #[serde(default)]
    pub log: crate::train::LogCfg,
}

fn default_seeds() -> Vec<u64> {
    vec![0]
}

/// A model and how it is trained.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    pub model: ModelSpec,
    pub train: TrainCfg,
    /// Random translation of up to ±N pixels per training image (Hinton's teacher: 2).
    #[serde(default)]
    pub jitter: usize,
}

impl ImageRecipe {
    /// The paths the recipe names, as written.
    pub fn paths(&self) -> Vec<&str> {
        self.data.paths()
    }

    /// Checks values and paths. No tensor is created.
    pub fn validate(&self) -> Result<()> {
        if self.seeds.is_empty() {
            return Err(Error::Recipe("seeds: give at least one seed".into()));
        }
        if let Some(0) = self.threads {
            return Err(Error::Recipe("threads must be > 0".into()));
        }
        self.data.validate()?;
        self.teacher.model.validate("teacher")?;
        self.student.model.validate("student")?;
        self.teacher.train.validate("teacher.train")?;
        self.student.train.validate("student.train")?;
        let ctx = TermContext { domain: Domain::Image, student_layers: 0, online_teacher: true };
        self.distill.validate(&ctx)?;
        if let Some(a) = &self.assistant {
            a.model.validate("assistant")?;
            a.train.validate("assistant.train")?;
        }
        for (i, t) in self.teachers.iter().enumerate() {
            t.model.validate(&format!("teachers[{i}]"))?;
            t.train.validate(&format!("teachers[{i}].train"))?;
        }
        match &self.distill.multi_teacher {
            Some(m) => m.validate(1 + self.teachers.len())?,
            None if !self.teachers.is_empty() => {
                return Err(Error::Recipe(
                    "teachers: [[teachers]] are trained only for distill.multi_teacher; add [distill.multi_teacher] or remove them".into(),
                ))
            }
            None => {}
        }
        if self.distill.ensemble && self.seeds.len() < 2 {
            return Err(Error::Recipe(format!(
                "distill.ensemble needs at least two seeds (one teacher each), got seeds = {:?}",
                self.seeds
            )));
        }
        if self.checkpoint.every_steps == 0 {
            return Err(Error::Recipe("checkpoint.every_steps must be > 0".into()));
        }
        self.log.validate().map_err(Error::Recipe)?;
        Ok(())
    }
}
