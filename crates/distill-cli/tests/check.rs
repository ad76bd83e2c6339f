//! `distill check` refuses, one line each and before any run, what `run` would refuse: a model
//! directory without `tokenizer.json`, a JSONL source without the field, a CUDA device where
//! libtorch sees no GPU (an unsupported family: tests/families.rs); a good recipe is `ok`.

use std::path::{Path, PathBuf};

mod common;
use common::{assert_error, distill, tmpdir};

fn recipe(d: &Path, teacher: &Path, data: &Path, extra: &str) -> PathBuf {
    let r = d.join("lm.toml");
    std::fs::write(
        &r,
        format!(
            r#"task = "causal-lm"
name = "check"
{extra}
[teacher]
path = "{}"
[student]
layers = 1
[data]
sources = [{{ path = "{}" }}]
[train]
steps = 10
lr = 1e-3
[distill]
temperature = 1.0
alpha = 0.5
"#,
            teacher.display(),
            data.display()
        ),
    )
    .unwrap();
    r
}

#[test]
fn check_refuses_what_run_would() {
    let d = tmpdir("check");
    let t = common::lm_teacher(&d);
    let text = d.join("corpus.txt");
    common::lm_corpus(&text, 600);
    let ok =
        distill(&["check", recipe(&d, &t, &text, "").to_str().unwrap(), "--out", d.join("new-run").to_str().unwrap()]);
    common::ok(&ok);
    let out = String::from_utf8_lossy(&ok.stdout).to_string();
    assert!(out.contains("lm.toml: ok"), "{out}");
    // The plan: the models with their sizes, the documents, each phase's steps and tokens.
    assert!(out.contains("teacher: LlamaForCausalLM 2 layers × 32 (4 heads, 2 kv)"), "{out}");
    assert!(out.contains("student: LlamaForCausalLM 1 layers × 32") && out.contains("(init random)"), "{out}");
    assert!(out.contains("phase kd: student-kd (10 steps × 128 rows × 512 tokens"), "{out}");
    assert!(out.contains("validation rows of 512 tokens"), "{out}");
    assert!(!d.join("new-run").exists(), "check writes nothing");
    // --estimate: every trained phase timed over two steps on the real models and rows, its
    // steps × the mean step time; nothing written where the run would go.
    let o = distill(&["check", recipe(&d, &t, &text, "").to_str().unwrap(), "--estimate"]);
    common::ok(&o);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    {
        let phase = "kd";
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("  phase {phase}: 10 steps × ")))
            .unwrap_or_else(|| panic!("{out}"));
        let secs: f64 = line.split(" × ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
        assert!(secs > 0.0 && secs < 30.0, "{line}");
    }
    assert!(out.contains("training ≈ ") && out.contains("evaluation is not included"), "{out}");
    // Data too short for a row of 512 tokens, or a validation split too small for one: refused
    // here, as `run` would.
    let short = d.join("short.txt");
    std::fs::write(&short, "w1 w2 w3 w4 w5 w6 w7 w8 w9 w10 w11 w12 w13 w14 w15 w16 w17 w18 w19 w20 w21 w22 w23 w24 w25 w26 w27 w28 w29 w30 w31 w32 w33\n").unwrap();
    let o = distill(&["check", recipe(&d, &t, &short, "").to_str().unwrap()]);
    assert_error(&o, &["training data packs into no rows: 34 tokens"]);
    let r = recipe(&d, &t, &text, "");
    let o = distill(&["check", r.to_str().unwrap(), "--set", "data.split.val_fraction=0.002"]);
    assert_error(&o, &["the validation split has no full row"]);
    // A run directory that exists with files in it.
    let o = distill(&["check", recipe(&d, &t, &text, "").to_str().unwrap(), "--out", t.to_str().unwrap()]);
    assert_error(&o, &["already exists and is not empty"]);

    // A JSONL whose records lack the field the source reads.
    let jsonl = d.join("records.jsonl");
    std::fs::write(&jsonl, "{\"body\": \"w1 w2 w3\"}\n{\"body\": \"w4 w5\"}\n").unwrap();
    let o = distill(&["check", recipe(&d, &t, &jsonl, "").to_str().unwrap()]);
    assert_error(&o, &["records.jsonl", "line 1", "text"]);

    // A model directory without its tokenizer.
    let bare = d.join("bare");
    std::fs::create_dir_all(&bare).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(t.join(f), bare.join(f)).unwrap();
    }
    let o = distill(&["check", recipe(&d, &bare, &text, "").to_str().unwrap()]);
    assert_error(&o, &["bare/tokenizer.json"]);

    // A CUDA device where libtorch sees none (on a machine with a GPU, check accepts it).
    let o = distill(&["check", recipe(&d, &t, &text, "device = \"cuda\"").to_str().unwrap()]);
    if tch::Cuda::is_available() {
        common::ok(&o);
    } else {
        assert_error(&o, &["device `cuda`", "no CUDA GPU"]);
    }
}

/// `distill init` writes each kind's starter recipe, which `check` accepts (its assets are
/// fetched by the test command), and does not replace an existing file.
#[test]
fn init_templates_pass_check() {
    let d = tmpdir("init");
    for kind in ["lm", "image", "encoder"] {
        let out = d.join(format!("{kind}.toml"));
        let o = distill(&["init", kind, "--out", out.to_str().unwrap()]);
        common::ok(&o);
        let text = std::fs::read_to_string(&out).unwrap();
        assert!(text.starts_with("#:schema ./recipe.schema.json\n# "), "{kind}: a commented template");
        let schema: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(d.join("recipe.schema.json")).unwrap()).unwrap();
        assert_eq!(schema["$schema"], "http://json-schema.org/draft-07/schema#");
        let o = distill(&["check", out.to_str().unwrap()]);
        common::ok(&o);
        assert!(String::from_utf8_lossy(&o.stdout).contains(": ok"), "{kind}");
        let o = distill(&["init", kind, "--out", out.to_str().unwrap()]);
        assert_error(&o, &["exists"]);
        assert_eq!(std::fs::read_to_string(&out).unwrap(), text);
    }
}
