//! Phase plans: the typed list of phases a run goes through. A phase has a directory (`DIR/phases/<id>`), a role in the report, and says where its
//! teacher and its starting weights come from — the recipe's teacher, another phase's model or an
//! ensemble of phases — which is what multi-stage methods (born-again generations,
//! teacher-assistant chains, prune → heal → quantize) are made of. Runners walk the plan in
//! order; a phase whose result file exists is done and is skipped on `--resume`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::methods::multi_teacher::Weighting;
use crate::methods::{ImageDistill, LmDistill, TermConfig, Terms, Variant};
use crate::models::lm::LoraCfg;
use crate::student::quant::{QuantCfg, QuantFormat};
use crate::student::{LmStudent, StudentInit};
use crate::train::TrainCfg;
use crate::{Error, Result};

/// What a phase produces, as the report names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Teacher,
    StudentScratch,
    StudentKd,
    /// Every seed's teacher averaged (evaluated, not trained).
    TeacherEnsemble,
    /// A student distilled from the teacher ensemble.
    StudentKdEnsemble,
    /// The student as its init made it (pruned from the teacher: Minitron for an LM, a layer
    /// subset for an encoder), evaluated before training.
    StudentPruned,
    /// A KD student of the same shape from another init (`student.twin_init`).
    StudentKdTwinInit,
    /// The KD student quantized after training (post-training quantization).
    StudentKdPtq,
    /// The KD student trained on with fake-quantized weights (quantization-aware distillation).
    StudentKdQad,
    /// A KD student with extra per-step terms (`[distill.variants.<name>]`).
    StudentKdMethod,
    /// A teacher assistant: a model of intermediate size distilled from the teacher.
    Assistant,
    /// The student distilled from the teacher assistant (teacher-assistant chain).
    StudentTa,
    /// A born-again generation: the student's architecture, taught by the previous generation.
    StudentBornAgain,
    /// The born-again generations averaged (evaluated, not trained).
    BornAgainEnsemble,
    /// Another teacher of the run (a different architecture or size; multi-teacher KD).
    TeacherExtra,
    /// FitNets' stage 1: the student trained on the hint alone (its init for the KD stage).
    StudentHint,
    /// A student distilled from the weighted teachers (multi-teacher KD).
    StudentKdMulti,
    /// An encoder student narrower than the teacher, projected onto its principal directions.
    StudentNarrow,
    /// The static (Model2Vec) encoder student: per-token teacher embeddings, not trained.
    StudentStatic,
    /// An existing model as the student (`student.from`), evaluated as loaded, before training.
    StudentUntouched,
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
            Role::StudentUntouched => "student-untouched",
            Role::StudentKdTwinInit => "student-kd-twin-init",
            Role::StudentKdPtq => "student-kd-ptq",
            Role::StudentKdQad => "student-kd-qad",
            Role::StudentKdMethod => "student-kd+",
            Role::Assistant => "assistant",
            Role::StudentTa => "student-ta",
            Role::StudentBornAgain => "student-born-again",
            Role::BornAgainEnsemble => "born-again-ensemble",
            Role::TeacherExtra => "teacher-extra",
            Role::StudentHint => "student-hint",
            Role::StudentKdMulti => "student-kd-multi",
            Role::StudentNarrow => "student-narrow",
            Role::StudentStatic => "student-static",
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
    /// Several phases' models combined with the recipe's weights or per example by confidence
    /// (multi-teacher KD).
    Weighted(Vec<String>, Weighting),
}

/// Which of the recipe's architectures a phase trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Arch {
    Teacher,
    #[default]
    Student,
    /// `[assistant]`.
    Assistant,
    /// `[[teachers]]` entry `i` (multi-teacher).
    ExtraTeacher(usize),
}

/// Where a phase's starting weights come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitFrom {
    /// Built fresh from the phase's seed (and, for an LM student, `student.init`).
    Seed,
    /// Built fresh from the phase's seed with this init instead of `student.init`.
    With(StudentInit),
    /// Built fresh from the phase's seed mixed with this salt: another random initialization
    /// (a born-again generation).
    Salted(u64),
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
    /// The architecture it trains (or evaluates).
    pub arch: Arch,
    /// What tells it apart from phases of the same role in tables: a variant's name, a
    /// generation, a weighting.
    pub label: Option<String>,
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

    /// The phases (or `teacher` for the recipe's) it learns from, as summaries record them.
    pub fn taught_by(&self) -> Vec<String> {
        match &self.teacher {
            TeacherFrom::None => vec![],
            TeacherFrom::Recipe => vec![Role::Teacher.name().into()],
            TeacherFrom::Phase(id) => vec![id.clone()],
            TeacherFrom::Ensemble(ids) | TeacherFrom::Weighted(ids, _) => ids.clone(),
        }
    }

    /// The role as tables print it, with the label: `student-kd+fitnets`, `student-born-again g2`.
    pub fn display_name(&self) -> String {
        display_name(self.role, self.label.as_deref())
    }

    /// The LoRA adapters the phase trains instead of every weight: a variant's own `lora`, else
    /// the student's `[student.lora]`; none for a phase that does not train, a quantized phase
    /// (it trains the merged weights on the grid) or another architecture.
    pub fn lora<'a>(
        &self,
        student: Option<&'a LoraCfg>,
        variants: &'a BTreeMap<String, Variant>,
    ) -> Option<&'a LoraCfg> {
        if !self.trains || self.quant.is_some() || self.arch != Arch::Student {
            return None;
        }
        let own = match (self.role, &self.label) {
            (Role::StudentKdMethod, Some(name)) => variants.get(name).and_then(|v| v.lora.as_ref()),
            _ => None,
        };
        own.or(student)
    }

    /// The extra per-step terms the phase trains with — the KD student's `[distill.<term>]`, a
    /// variant's own (FitNets: the hint alone in its first stage, the rest in the KD stage that
    /// starts from it) — decided here for every runner. `main`/`variants`: the recipe's
    /// `[distill]` terms and `[distill.variants]`.
    pub fn terms<'a>(
        &self,
        main: &'a Terms,
        variants: &'a BTreeMap<String, Variant>,
    ) -> Result<Vec<&'a dyn TermConfig>> {
        let variant = || match &self.label {
            Some(name) => variants
                .get(name)
                .ok_or_else(|| Error::Invalid(format!("phase {}: no variant {name} in the recipe", self.id))),
            None => Err(Error::Invalid(format!("phase {}: a variant phase without a variant name", self.id))),
        };
        Ok(match self.role {
            Role::StudentKd | Role::StudentKdTwinInit | Role::StudentKdQad => main.configured(),
            Role::StudentHint => variant()?.terms.hint_stage(),
            Role::StudentKdMethod if matches!(self.init, InitFrom::Phase(_)) => variant()?.terms.after_hint_stage(),
            Role::StudentKdMethod => variant()?.terms.configured(),
            _ => vec![],
        })
    }
}

/// The phases of a sentence-embedding run: the teacher, the shallow student as its layer subset
/// makes it (`init`) and distilled (`kd`), then the narrow and the static student where the
/// recipe has them.
pub fn encoder_plan(seed: u64, narrow: bool, static_: bool) -> Vec<Phase> {
    let phase = |id: &str, role, teacher, trains| Phase {
        id: id.into(),
        role,
        seed,
        temperature: None,
        alpha: None,
        teacher,
        init: InitFrom::Seed,
        trains,
        export: None,
        quant: None,
        train: None,
        arch: Arch::Student,
        label: None,
    };
    let mut out = vec![
        Phase { arch: Arch::Teacher, ..phase("teacher", Role::Teacher, TeacherFrom::None, false) },
        phase("init", Role::StudentPruned, TeacherFrom::None, false),
        phase("kd", Role::StudentKd, TeacherFrom::Recipe, true),
    ];
    if narrow {
        out.push(phase("narrow", Role::StudentNarrow, TeacherFrom::Recipe, true));
    }
    if static_ {
        out.push(phase("static", Role::StudentStatic, TeacherFrom::Recipe, false));
    }
    out
}

/// A role and a phase label as tables print them.
pub fn display_name(role: Role, label: Option<&str>) -> String {
    match (role, label) {
        (Role::StudentKdMethod, Some(l)) => format!("student-kd+{l}"),
        (r, Some(l)) => format!("{} {l}", r.name()),
        (r, None) => r.name().to_string(),
    }
}

/// The id of seed `seed`'s teacher phase in an image run.
pub fn teacher_id(seed: u64) -> String {
    format!("teacher-s{seed}")
}

/// What an image run's plan is made of besides `[distill]`: the other models of the recipe.
#[derive(Debug, Clone, Copy, Default)]
pub struct ImageModels {
    /// Entries of `[[teachers]]` (multi-teacher KD).
    pub extra_teachers: usize,
    /// Whether `[assistant]` is set (teacher-assistant chain).
    pub assistant: bool,
}

/// An image run: per seed a teacher (and the `[[teachers]]`), a scratch student and a KD
/// student; then that seed's method phases: a KD student per `[distill.variants.<name>]`, the
/// teacher-assistant chain (assistant, then the student it teaches), the born-again generations
/// and their average, a multi-teacher student per weighting. Then, with `distill.ensemble`, the
/// seeds' teachers averaged and a student distilled from them; then the temperature sweep on
/// the first seed.
pub fn image_plan(seeds: &[u64], d: &ImageDistill, models: ImageModels) -> Vec<Phase> {
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
        trains: !matches!(role, Role::TeacherEnsemble | Role::BornAgainEnsemble),
        export: None,
        quant: None,
        train: None,
        arch: match role {
            Role::Teacher | Role::TeacherEnsemble => Arch::Teacher,
            _ => Arch::Student,
        },
        label: None,
    };
    for &seed in seeds {
        let tid = teacher_id(seed);
        out.push(phase(tid.clone(), Role::Teacher, seed, None, TeacherFrom::None));
        let extra: Vec<String> = (0..models.extra_teachers).map(|i| format!("teacher{}-s{seed}", i + 2)).collect();
        for (i, id) in extra.iter().enumerate() {
            let p = phase(id.clone(), Role::TeacherExtra, seed, None, TeacherFrom::None);
            out.push(Phase { arch: Arch::ExtraTeacher(i), label: Some(format!("#{}", i + 2)), ..p });
        }
        out.push(phase(format!("scratch-s{seed}"), Role::StudentScratch, seed, None, TeacherFrom::None));
        let from = TeacherFrom::Phase(tid.clone());
        let kd_id = format!("kd-s{seed}-T{t}");
        out.push(phase(kd_id.clone(), Role::StudentKd, seed, Some(t), from.clone()));
        for (name, v) in &d.variants {
            let p = phase(format!("kd-{name}-s{seed}"), Role::StudentKdMethod, seed, Some(t), from.clone());
            let p = Phase { label: Some(name.clone()), ..p };
            if v.terms.fitnets.as_ref().is_some_and(|f| f.stage1) {
                // FitNets' stage 1 (hint only), whose weights the KD stage starts from.
                let hint = format!("fitnets-hint-{name}-s{seed}");
                let h = phase(hint.clone(), Role::StudentHint, seed, None, from.clone());
                out.push(Phase { label: Some(name.clone()), ..h });
                out.push(Phase { init: InitFrom::Phase(hint), ..p });
            } else {
                out.push(p);
            }
        }
        if models.assistant {
            let a_id = format!("assistant-s{seed}");
            let a = phase(a_id.clone(), Role::Assistant, seed, Some(t), from.clone());
            out.push(Phase { arch: Arch::Assistant, ..a });
            out.push(phase(format!("kd-ta-s{seed}"), Role::StudentTa, seed, Some(t), TeacherFrom::Phase(a_id)));
        }
        if let Some(ba) = &d.born_again {
            let mut gens = vec![kd_id.clone()];
            for g in 2..=ba.generations {
                let id = format!("born-again-g{g}-s{seed}");
                let prev = TeacherFrom::Phase(gens.last().cloned().unwrap_or_default());
                let p = phase(id.clone(), Role::StudentBornAgain, seed, Some(t), prev);
                out.push(Phase { init: InitFrom::Salted(g as u64), label: Some(format!("g{g}")), ..p });
                gens.push(id);
            }
            let p = phase(
                format!("born-again-ensemble-s{seed}"),
                Role::BornAgainEnsemble,
                seed,
                None,
                TeacherFrom::Ensemble(gens),
            );
            out.push(Phase { label: Some(format!("g1..g{}", ba.generations)), ..p });
        }
        if let Some(mt) = &d.multi_teacher {
            let ids: Vec<String> = std::iter::once(tid.clone()).chain(extra.iter().cloned()).collect();
            for &w in &mt.weightings {
                let p = phase(
                    format!("kd-multi-{}-s{seed}", w.name()),
                    Role::StudentKdMulti,
                    seed,
                    Some(t),
                    TeacherFrom::Weighted(ids.clone(), w),
                );
                out.push(Phase { label: Some(w.name().into()), ..p });
            }
        }
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
/// and, with `quantize.steps > 0`, trained on with fake-quantized weights (QAD). Then the method
/// phases: a KD student per `[distill.variants.<name>]`, the born-again generations (each taught
/// by the one before, the KD student being the first), and with `assistant` the
/// teacher-assistant chain (the assistant distilled from the teacher, then a student from it).
pub fn lm_plan(
    d: &LmDistill,
    student: &LmStudent,
    quant: Option<&QuantCfg>,
    train: &TrainCfg,
    seed: u64,
    assistant: bool,
    extra_teachers: usize,
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
        arch: Arch::Student,
        label: None,
    };
    if student.from.is_some() {
        out.push(Phase {
            id: "untouched".into(),
            role: Role::StudentUntouched,
            temperature: None,
            alpha: None,
            teacher: TeacherFrom::None,
            trains: false,
            export: None,
            ..base.clone()
        });
    } else if student.init() == StudentInit::Prune {
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
    if kd {
        out.extend(method_phases(d, &base, train, assistant, extra_teachers));
        if let Some(q) = quant {
            out.extend(quant_phases(q, train, base));
        }
    }
    out
}

/// The KD student's method phases: its variants, born-again generations, multi-teacher students
/// and the teacher-assistant chain.
fn method_phases(d: &LmDistill, base: &Phase, train: &TrainCfg, assistant: bool, extra_teachers: usize) -> Vec<Phase> {
    let mut out = Vec::new();
    for (name, v) in &d.variants {
        out.push(Phase {
            id: format!("kd-{name}"),
            role: Role::StudentKdMethod,
            export: None,
            label: Some(name.clone()),
            train: v.lr.map(|lr| TrainCfg { lr, ..train.clone() }),
            ..base.clone()
        });
    }
    if let Some(ba) = &d.born_again {
        let mut prev = "kd".to_string();
        for g in 2..=ba.generations {
            let id = format!("born-again-g{g}");
            out.push(Phase {
                id: id.clone(),
                role: Role::StudentBornAgain,
                teacher: TeacherFrom::Phase(prev),
                init: InitFrom::Salted(g as u64),
                export: None,
                label: Some(format!("g{g}")),
                ..base.clone()
            });
            prev = id;
        }
    }
    if let Some(mt) = &d.multi_teacher {
        // The recipe's teachers: `teacher`, then `teacher2`, … for `[[teachers]]`.
        let ids: Vec<String> = std::iter::once("teacher".to_string())
            .chain((0..extra_teachers).map(|i| format!("teacher{}", i + 2)))
            .collect();
        for &w in &mt.weightings {
            out.push(Phase {
                id: format!("kd-multi-{}", w.name()),
                role: Role::StudentKdMulti,
                teacher: TeacherFrom::Weighted(ids.clone(), w),
                export: None,
                label: Some(w.name().into()),
                ..base.clone()
            });
        }
    }
    if assistant {
        out.push(Phase {
            id: "assistant".into(),
            role: Role::Assistant,
            arch: Arch::Assistant,
            export: None,
            ..base.clone()
        });
        out.push(Phase {
            id: "kd-ta".into(),
            role: Role::StudentTa,
            teacher: TeacherFrom::Phase("assistant".into()),
            export: None,
            ..base.clone()
        });
    }
    out
}

/// The KD student quantized after training (PTQ) and, with `quantize.steps > 0`, trained on
/// through its quantized weights (QAD).
fn quant_phases(q: &QuantCfg, train: &TrainCfg, base: Phase) -> Vec<Phase> {
    let mut out = Vec::new();
    let from = InitFrom::Phase("kd".into());
    out.push(Phase {
        id: format!("ptq-{}", q.format.name()),
        role: Role::StudentKdPtq,
        teacher: TeacherFrom::None,
        init: from.clone(),
        trains: false,
        export: Some("student-kd-ptq"),
        quant: Some(q.format),
        ..base.clone()
    });
    if q.steps > 0 {
        out.push(Phase {
            id: format!("qad-{}", q.format.name()),
            role: Role::StudentKdQad,
            init: from,
            export: Some("student-kd-qad"),
            quant: Some(q.format),
            train: Some(q.train_cfg(train)),
            ..base
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_plan_lists_seeds_then_ensemble_then_sweep() {
        let d: ImageDistill =
            toml::from_str("temperature = 2.0\nalpha = 0.9\nsweep = [1.0, 2.0, 8.0]\nensemble = true").unwrap();
        let ids: Vec<String> = image_plan(&[0, 1], &d, ImageModels::default()).into_iter().map(|p| p.id).collect();
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
        let p = image_plan(&[3], &d, ImageModels::default());
        assert_eq!(p[2].teacher, TeacherFrom::Phase("teacher-s3".into()));
        assert_eq!((p[2].alpha, p[1].alpha), (Some(0.9), None));
    }

    #[test]
    fn lm_plan_prunes_heals_twins_then_quantizes_the_kd_student() {
        let d: LmDistill = toml::from_str("temperature = 2.0\nalpha = 1.0\nscratch_twin = true").unwrap();
        let st: LmStudent = toml::from_str("layers = 2\ninit = \"prune\"\ntwin_init = \"embedding-pca\"").unwrap();
        let train: TrainCfg = toml::from_str("steps = 100\nlr = 5e-4\nwarmup_steps = 10").unwrap();
        let q: QuantCfg = toml::from_str("steps = 20").unwrap();
        let p = lm_plan(&d, &st, Some(&q), &train, 7, false, 0);
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
        let p = lm_plan(&scratch, &st, Some(&q), &train, 0, true, 0);
        assert_eq!(p.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(), ["pruned", "scratch"]);
    }
}
