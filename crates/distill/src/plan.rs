//! Phase plans: the typed list of phases a run goes through, replacing phase names compared as
//! strings. A phase has a directory (`DIR/phases/<id>`), a role in the report, and says where its
//! teacher and its starting weights come from — the recipe's teacher, another phase's model or an
//! ensemble of phases — which is what multi-stage methods (born-again generations,
//! teacher-assistant chains, prune → heal → quantize) are made of. Runners walk the plan in
//! order; a phase whose result file exists is done and is skipped on `--resume`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::methods::{ImageDistill, LmDistill};
use crate::student::quant::{QuantCfg, QuantFormat};
use crate::student::{LmStudent, StudentInit};
use crate::train::TrainCfg;

/// What a phase produces, as the report names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Teacher,
    StudentScratch,
    StudentKd,
    /// Every seed's teacher averaged (evaluated, not trained).
    TeacherEnsemble,
    /// A student distilled from the teacher ensemble.
    StudentKdEnsemble,
    /// The student as its init made it (pruned from the teacher), evaluated before training.
    StudentPruned,
    /// A KD student of the same shape from another init (`student.twin_init`).
    StudentKdTwinInit,
    /// The KD student quantized after training (post-training quantization).
    StudentPtq,
    /// The KD student trained on with fake-quantized weights (quantization-aware distillation).
    StudentQad,
}

impl Role {
    /// As the tables print it.
    pub fn name(self) -> &'static str {
        match self {
            Role::Teacher => "teacher",
            Role::StudentScratch => "student-scratch",
            Role::StudentKd => "student-kd",
            Role::TeacherEnsemble => "teacher-ensemble",
            Role::StudentKdEnsemble => "student-kd-ensemble",
            Role::StudentPruned => "student-pruned",
            Role::StudentKdTwinInit => "student-kd-twin-init",
            Role::StudentPtq => "student-kd-ptq",
            Role::StudentQad => "student-kd-qad",
        }
    }
}

/// Where a phase's teacher comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TeacherFrom {
    /// No teacher: trained on the labels alone (or a teacher itself).
    None,
    /// The recipe's `[teacher]` (an LM recipe's GGUF or HF model, or its cache).
    Recipe,
    /// The model another phase trained (by phase id).
    Phase(String),
    /// The average of several phases' models.
    Ensemble(Vec<String>),
}

/// Where a phase's starting weights come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitFrom {
    /// Built fresh from the phase's seed (and, for an LM student, `student.init`).
    Seed,
    /// Built fresh from the phase's seed with this init instead of `student.init`.
    With(StudentInit),
    /// Another phase's trained weights (by phase id).
    Phase(String),
}

/// One phase of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct Phase {
    /// Directory name under `DIR/phases/`.
    pub id: String,
    pub role: Role,
    pub seed: u64,
    /// Temperature of the logit term (KD phases).
    pub temperature: Option<f64>,
    /// Weight α of the soft term (KD phases; 0 for an LM scratch twin).
    pub alpha: Option<f64>,
    pub teacher: TeacherFrom,
    pub init: InitFrom,
    /// Whether the phase trains (an ensemble is only evaluated).
    pub trains: bool,
    /// The Hugging Face directory the phase exports to, under the run directory (LM phases).
    pub export: Option<&'static str>,
    /// The phase's student is quantized to this GGUF format: after training (PTQ, `trains =
    /// false`) or throughout (QAD: the forward sees the quantized weights); it leaves as that
    /// GGUF file.
    pub quant: Option<QuantFormat>,
    /// Training other than the recipe's `[train]` (QAD's steps and lr).
    pub train: Option<TrainCfg>,
}

impl Phase {
    /// `DIR/phases/<id>`.
    pub fn dir(&self, out: &Path) -> PathBuf {
        out.join("phases").join(&self.id)
    }

    /// Whether the phase learns from a teacher (and so gets the extra terms).
    pub fn distills(&self) -> bool {
        !matches!(self.teacher, TeacherFrom::None)
    }
}

/// The id of seed `seed`'s teacher phase in an image run.
pub fn teacher_id(seed: u64) -> String {
    format!("teacher-s{seed}")
}

/// An image run: per seed a teacher, a scratch student and a KD student; then, with
/// `distill.ensemble`, the seeds' teachers averaged and a student distilled from them; then the
/// temperature sweep on the first seed.
pub fn image_plan(seeds: &[u64], d: &ImageDistill) -> Vec<Phase> {
    let mut out = Vec::new();
    let t = d.temperature;
    let phase = |id: String, role, seed, temperature: Option<f64>, teacher| Phase {
        id,
        role,
        seed,
        temperature,
        alpha: temperature.map(|_| d.alpha),
        teacher,
        init: InitFrom::Seed,
        trains: role != Role::TeacherEnsemble,
        export: None,
        quant: None,
        train: None,
    };
    for &seed in seeds {
        out.push(phase(teacher_id(seed), Role::Teacher, seed, None, TeacherFrom::None));
        out.push(phase(format!("scratch-s{seed}"), Role::StudentScratch, seed, None, TeacherFrom::None));
        let from = TeacherFrom::Phase(teacher_id(seed));
        out.push(phase(format!("kd-s{seed}-T{t}"), Role::StudentKd, seed, Some(t), from));
    }
    let s0 = seeds[0];
    if d.ensemble {
        let all = TeacherFrom::Ensemble(seeds.iter().map(|&s| teacher_id(s)).collect());
        out.push(phase("teacher-ensemble".into(), Role::TeacherEnsemble, s0, None, all.clone()));
        out.push(phase(format!("kd-ensemble-T{t}"), Role::StudentKdEnsemble, s0, Some(t), all));
    }
    for &ts in &d.sweep {
        if ts != t {
            let from = TeacherFrom::Phase(teacher_id(s0));
            out.push(phase(format!("kd-s{s0}-T{ts}"), Role::StudentKd, s0, Some(ts), from));
        }
    }
    out
}

/// An LM run: with a pruned init, the pruned student before any training (evaluated only);
/// the KD student (when `alpha > 0`), then the scratch twin (when asked, or when `alpha = 0`
/// makes the recipe a scratch run), then a KD twin from `student.twin_init`. All start from the
/// same seeded init: with `prune`, KD healing against CE healing of the same pruned model
/// (Minitron's comparison). With `[quantize]`, the KD student quantized after training (PTQ)
/// and, with `quantize.steps > 0`, trained on with fake-quantized weights (QAD).
pub fn lm_plan(
    d: &LmDistill,
    student: &LmStudent,
    quant: Option<&QuantCfg>,
    train: &TrainCfg,
    seed: u64,
) -> Vec<Phase> {
    let mut out = Vec::new();
    let base = Phase {
        id: String::new(),
        role: Role::StudentKd,
        seed,
        temperature: Some(d.temperature),
        alpha: Some(d.alpha),
        teacher: TeacherFrom::Recipe,
        init: InitFrom::Seed,
        trains: true,
        export: None,
        quant: None,
        train: None,
    };
    if student.init == StudentInit::Prune {
        out.push(Phase {
            id: "pruned".into(),
            role: Role::StudentPruned,
            temperature: None,
            alpha: None,
            teacher: TeacherFrom::None,
            trains: false,
            export: Some("pruned"),
            ..base.clone()
        });
    }
    let kd = d.alpha > 0.0;
    if kd {
        out.push(Phase { id: "kd".into(), export: Some("student"), ..base.clone() });
    }
    if !kd || d.scratch_twin {
        out.push(Phase {
            id: "scratch".into(),
            role: Role::StudentScratch,
            alpha: Some(0.0),
            teacher: TeacherFrom::None,
            export: Some("scratch"),
            ..base.clone()
        });
    }
    if let (Some(init), true) = (student.twin_init, kd) {
        out.push(Phase {
            id: format!("kd-{}", init.name()),
            role: Role::StudentKdTwinInit,
            init: InitFrom::With(init),
            export: Some("student-twin-init"),
            ..base.clone()
        });
    }
    if let (Some(q), true) = (quant, kd) {
        let from = InitFrom::Phase("kd".into());
        out.push(Phase {
            id: format!("ptq-{}", q.format.name()),
            role: Role::StudentPtq,
            teacher: TeacherFrom::None,
            init: from.clone(),
            trains: false,
            export: Some("student-ptq"),
            quant: Some(q.format),
            ..base.clone()
        });
        if q.steps > 0 {
            out.push(Phase {
                id: format!("qad-{}", q.format.name()),
                role: Role::StudentQad,
                init: from,
                export: Some("student-qad"),
                quant: Some(q.format),
                train: Some(q.train_cfg(train)),
                ..base
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_plan_lists_seeds_then_ensemble_then_sweep() {
        let d = ImageDistill { temperature: 2.0, alpha: 0.9, sweep: vec![1.0, 2.0, 8.0], ensemble: true };
        let ids: Vec<String> = image_plan(&[0, 1], &d).into_iter().map(|p| p.id).collect();
        let want = [
            "teacher-s0",
            "scratch-s0",
            "kd-s0-T2",
            "teacher-s1",
            "scratch-s1",
            "kd-s1-T2",
            "teacher-ensemble",
            "kd-ensemble-T2",
            "kd-s0-T1",
            "kd-s0-T8",
        ];
        assert_eq!(ids, want);
        let p = image_plan(&[3], &d);
        assert_eq!(p[2].teacher, TeacherFrom::Phase("teacher-s3".into()));
        assert_eq!((p[2].alpha, p[1].alpha), (Some(0.9), None));
    }

    #[test]
    fn lm_plan_prunes_heals_twins_then_quantizes_the_kd_student() {
        let d: LmDistill = toml::from_str("temperature = 2.0\nalpha = 1.0\nscratch_twin = true").unwrap();
        let st: LmStudent = toml::from_str("layers = 2\ninit = \"prune\"\ntwin_init = \"embedding-pca\"").unwrap();
        let train: TrainCfg = toml::from_str("steps = 100\nlr = 5e-4\nwarmup_steps = 10").unwrap();
        let q: QuantCfg = toml::from_str("steps = 20").unwrap();
        let p = lm_plan(&d, &st, Some(&q), &train, 7);
        let ids: Vec<&str> = p.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, ["pruned", "kd", "scratch", "kd-embedding-pca", "ptq-q4_0", "qad-q4_0"]);
        assert_eq!(p[3].init, InitFrom::With(StudentInit::EmbeddingPca));
        let (ptq, qad) = (&p[4], &p[5]);
        assert_eq!(
            (ptq.init.clone(), ptq.trains, ptq.quant),
            (InitFrom::Phase("kd".into()), false, Some(QuantFormat::Q4_0))
        );
        assert_eq!((qad.init.clone(), qad.teacher.clone()), (InitFrom::Phase("kd".into()), TeacherFrom::Recipe));
        let t = qad.train.as_ref().unwrap();
        assert_eq!((t.steps, t.lr, t.warmup_steps), (Some(20), 5e-5, 2));
        assert!(p.iter().all(|p| p.seed == 7));
        // Without a KD student there is nothing to quantize or twin.
        let scratch: LmDistill = toml::from_str("temperature = 1.0\nalpha = 0.0").unwrap();
        let p = lm_plan(&scratch, &st, Some(&q), &train, 0);
        assert_eq!(p.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(), ["pruned", "scratch"]);
    }
}
