//! TOML recipes: the top-level schemas, `--set dotted.key=value` overrides, the rules that span
//! sections, and resolution into the typed values a run reads.
//!
//! A recipe is parsed in two steps: the `task` key picks the schema, then the whole document is
//! deserialized into it with unknown keys rejected by name. `validate` then checks everything
//! that can be checked without a tensor (files exist, values in range), so a typo fails in
//! milliseconds. Each section's settings are declared (with their defaults) beside the code they
//! configure — `[train]` in [`crate::train`], `[data]` in [`crate::data`], `[teacher]` in
//! [`crate::teacher`], `[student]` in [`crate::student`], `[distill]` in [`crate::methods`],
//! `[eval]` in [`crate::eval`]; this module only composes them.

mod encoder;
mod image;
mod lm;
pub mod schema;

pub use encoder::{EncoderData, EncoderDistill, EncoderRecipe, EncoderStudents, EncoderTeacher};
pub use image::{ImageRecipe, Stage};
pub use lm::{parse_device, LmRecipe, ResolvedLm};

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Which kind of experiment a recipe describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Task {
    /// Teacher, scratch student and distilled student on an image classification set.
    ImageClassification,
    /// A causal LM teacher (GGUF or HF directory) distilled into a smaller decoder.
    CausalLm,
    /// A BERT sentence encoder distilled into smaller and static encoders, judged downstream.
    SentenceEmbedding,
}

#[derive(Deserialize, schemars::JsonSchema)]
struct TaskOnly {
    task: Option<Task>,
}

/// A parsed recipe of any task.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
#[allow(clippy::large_enum_variant)] // one per process, parsed once
pub enum Recipe {
    Image(ImageRecipe),
    Lm(LmRecipe),
    Encoder(EncoderRecipe),
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
            Some(Task::SentenceEmbedding) => {
                let r: EncoderRecipe = doc.try_into().map_err(|e: toml::de::Error| Error::Recipe(one_line(&e)))?;
                Ok(Recipe::Encoder(r))
            }
            None => Err(Error::Recipe(
                "missing key `task` (one of: image-classification, causal-lm, sentence-embedding)".into(),
            )),
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
            Recipe::Encoder(r) => r.validate(),
        }
    }

    /// The recipe's `threads` (None: the default).
    pub fn threads(&self) -> Option<usize> {
        match self {
            Recipe::Image(r) => r.threads,
            Recipe::Lm(r) => r.threads,
            Recipe::Encoder(r) => r.threads,
        }
    }

    /// The CUDA device an LM recipe names (`cuda`, `cuda:N`); None where it runs on the CPU.
    pub fn cuda_device(&self) -> Option<&str> {
        match self {
            Recipe::Lm(r) if r.device != "cpu" => Some(&r.device),
            _ => None,
        }
    }

    /// Every path in the recipe, as written (possibly `asset:` paths).
    pub fn paths(&self) -> Vec<&str> {
        match self {
            Recipe::Image(r) => r.paths(),
            Recipe::Lm(r) => r.paths(),
            Recipe::Encoder(r) => r.paths(),
        }
    }
}

fn one_line(e: &dyn std::fmt::Display) -> String {
    // toml's errors span several lines (a source excerpt); keep the message and the location.
    let s = e.to_string();
    let lines: Vec<&str> = s.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let msg = plain_types(lines.last().copied().unwrap_or(""));
    match lines.first() {
        Some(first) if lines.len() > 1 => format!("{msg} ({})", first.trim_end_matches(':')),
        _ => msg,
    }
}

/// serde's wording of TOML types, not Rust's: "expected struct LmStudent" → "expected a table",
/// "expected a sequence" → "expected a list", "expected a map" → "expected a table".
fn plain_types(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    while let Some(at) = rest.find("expected struct ") {
        out.push_str(&rest[..at]);
        out.push_str("expected a table");
        let after = &rest[at + "expected struct ".len()..];
        rest = after.trim_start_matches(|c: char| c.is_alphanumeric() || c == '_');
    }
    out.push_str(rest);
    out.replace("expected a sequence", "expected a list").replace("expected a map", "expected a table")
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::losses::divergence::Divergence;
    use crate::losses::hidden::HiddenLoss;
    use crate::models::ModelSpec;
    use crate::teacher::TeacherDtype;
    use crate::train::config::OptimizerKind;

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

    #[test]
    fn errors_name_toml_types_not_rust_ones() {
        assert_eq!(
            plain_types("invalid type: string \"x\", expected struct LmStudent"),
            "invalid type: string \"x\", expected a table"
        );
        assert_eq!(
            plain_types("invalid type: integer `3`, expected a sequence"),
            "invalid type: integer `3`, expected a list"
        );
    }

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
            _ => panic!("not an image recipe"),
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
                _ => unreachable!(),
            }
        };
        let r = lm(&[]).unwrap();
        assert_eq!(r.distill.divergence().unwrap(), Divergence::ForwardKl);
        assert_eq!(r.distill.chunk_tokens, 256);
        assert!(r.teacher.cache.is_none());
        assert_eq!(r.teacher.dtype, TeacherDtype::Auto);
        assert_eq!(lm(&["teacher.dtype=bf16"]).unwrap().teacher.dtype, TeacherDtype::Bf16);
        assert_eq!(lm(&["teacher.dtype=f32"]).unwrap().teacher.dtype, TeacherDtype::F32);
        assert!(r.distill.terms.hidden.is_none());
        let h = lm(&["distill.hidden={weight=0.5}"]).unwrap().distill.terms.hidden.unwrap();
        assert_eq!((h.weight, h.loss), (0.5, HiddenLoss::Cosine));
        assert_eq!(h.pairs(6, 30).unwrap(), vec![(1, 5), (2, 10), (3, 15), (4, 20), (5, 25), (6, 30)]);
        let h = lm(&["distill.hidden={weight=1, loss=\"mse\", layers=[[0,0],[6,30]]}"])
            .unwrap()
            .distill
            .terms
            .hidden
            .unwrap();
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
            (&["teacher.server={url=\"localhost:8080\"}"][..], "teacher.server.url must start with http://"),
            (&["teacher.server={url=\"http://h\", top_k=0}"][..], "top_k, concurrency and attempts must be ≥ 1"),
            (
                &["teacher.server={url=\"http://h\", api=\"sglang\"}"][..],
                "unknown variant `sglang`, expected `llama-cpp` or `vllm`",
            ),
            (
                &["teacher.server={url=\"http://h\"}", "teacher.cache=Cargo.toml"][..],
                "teacher.server and teacher.cache are exclusive",
            ),
            (
                &["teacher.server={url=\"http://h\"}", "distill.hidden={weight=1}"][..],
                "distill.hidden needs the online teacher",
            ),
        ] {
            let e = lm(sets).unwrap_err().to_string();
            assert!(e.contains(needle), "{sets:?}: {e}");
        }
    }

    /// Every recipe shipped in `recipes/` parses and validates as it is.
    #[test]
    fn every_recipe_in_the_repo_validates() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../recipes");
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".toml"))
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "fashion-fewlabel.toml",
                "fashion-hinton.toml",
                "methods-fashion.toml",
                "methods-smollm2.toml",
                "minilm-spam.toml",
                "smollm2-blackbox.toml",
                "smollm2-brown-scratch.toml",
                "smollm2-brown.toml",
                "smollm2-instruct.toml",
                "smollm2-prune.toml"
            ]
        );
        // smollm2-instruct and smollm2-blackbox read what other commands write under runs/ (the
        // pruned student, the teacher's responses): checked here with files the repository has
        // in their place.
        let root = dir.join("..");
        let instruct = [
            "student.from=\"asset:smollm2/SmolLM2-135M-Instruct.Q4_1.gguf\"".to_string(),
            format!("data.sources=[{{path=\"{}\"}}]", root.join("data/instruct/train.jsonl").display()),
            format!("data.val_sources=[{{path=\"{}\"}}]", root.join("data/instruct/held-out.jsonl").display()),
            format!("eval.instructions=\"{}\"", root.join("data/instruct/held-out.jsonl").display()),
        ];
        for n in &names {
            let over: &[String] =
                if matches!(n.as_str(), "smollm2-instruct.toml" | "smollm2-blackbox.toml") { &instruct } else { &[] };
            let r = Recipe::load(&dir.join(n), over).unwrap();
            r.validate().unwrap_or_else(|e| panic!("{n}: {e}"));
        }
    }

    #[test]
    fn encoder_recipe_rules_name_the_key() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../recipes/minilm-spam.toml");
        let check = |sets: &[&str]| -> Result<()> {
            let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
            Recipe::load(&dir, &sets)?.validate()
        };
        check(&[]).unwrap();
        for (sets, needle) in [
            (&["student.dropout=1.0"][..], "student.dropout must be in [0, 1)"),
            (&["student.narrow.hidden=250"][..], "hidden divisible by heads"),
            (&["data.test_fraction=0"][..], "data.test_fraction must be in (0, 1)"),
            (&["distill.cosine=0", "distill.mse=0"][..], "not both 0"),
            (&["distill.attention={weight=1}"][..], "encoders take relations = [\"attention\"]"),
            (&["data.labeled=x"][..], "unknown field `labeled`"),
            (&["data.labelled=/nonexistent/spam"][..], "data.labelled: no such file"),
        ] {
            let e = check(sets).unwrap_err().to_string();
            assert!(e.contains(needle), "{sets:?}: {e}");
        }
        check(&["distill.attention={weight=1, relations=[\"attention\"]}"]).unwrap();
    }

    #[test]
    fn total_steps_from_epochs() {
        let r = image(parse(&["student.train.epochs=1.5", "student.train.batch_size=100"]).unwrap());
        assert_eq!(r.student.train.total_steps(1000), 15);
        assert_eq!(r.student.train.total_steps(1001), 17);
    }
}
