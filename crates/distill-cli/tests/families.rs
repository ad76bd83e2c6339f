//! `distill run` with teachers of the newer families — a tiny random Qwen3 and Gemma 2 from
//! tests/fixtures/families (see crates/distill/tests/families.rs) — distilled into a student of
//! the teacher's own family built from it, and into an existing Llama student (`student.from`,
//! the same word-level tokenizer); plus `distill check` on a recipe whose teacher's family is not
//! implemented.

use std::path::{Path, PathBuf};

mod common;
use common::{distill, stderr, summary, tmpdir};

fn recipe(d: &Path, teacher: &Path, student: &str, text: &Path) -> PathBuf {
    let r = d.join("lm.toml");
    std::fs::write(
        &r,
        format!(
            r#"
task = "causal-lm"
name = "family-kd"
threads = 1
[teacher]
path = "{}"
[student]
{student}
[data]
sources = [{{ path = "{}" }}]
split = {{ val_fraction = 0.1 }}
pack = {{ seq_len = 16 }}
[train]
steps = 50
batch_size = 8
lr = 1e-2
warmup_steps = 5
[distill]
temperature = 1.0
alpha = 1.0
scratch_twin = true
[eval]
prompts = ["w1 w10 w73"]
max_new_tokens = 8
"#,
            teacher.display(),
            text.display()
        ),
    )
    .unwrap();
    r
}

fn class_of(dir: &Path) -> String {
    common::json(&dir.join("config.json"))["architectures"][0].as_str().unwrap().to_string()
}

/// Each teacher family trains a student of its own family (1 layer of 16 channels, the teacher's
/// norms, windows and caps) and an existing Llama student; KD ends clearly closer to the teacher
/// than the twin trained on the labels, and the exports are of the student's family.
#[test]
fn qwen3_and_gemma2_teachers_distill_into_their_family_and_into_llama() {
    let d = tmpdir("families-kd");
    let text = d.join("corpus.txt");
    common::lm_corpus(&text, 120);
    let llama = common::hf_teacher(&d.join("llama-student"));
    let built = "layers = 1\nhidden = 16\nheads = 2\nkv_heads = 1\nintermediate = 32";
    let from = format!("from = \"{}\"", llama.display());
    for (family, class) in [("qwen3", "Qwen3ForCausalLM"), ("gemma2", "Gemma2ForCausalLM")] {
        let teacher = common::fixtures().join("families").join(family);
        for (student, want) in [(built, class), (from.as_str(), "LlamaForCausalLM")] {
            let run = d.join(format!("{family}-{}", want.to_lowercase()));
            let r = recipe(&d, &teacher, student, &text);
            let o = distill(&["run", r.to_str().unwrap(), "--out", run.to_str().unwrap()]);
            assert!(o.status.success(), "{family} → {want}: {}", stderr(&o));
            let s = summary(&run);
            let rows = s["students"].as_array().unwrap();
            let by_role = |role: &str| rows.iter().find(|m| m["role"] == role).unwrap();
            let kl = |m: &serde_json::Value| m["validation"]["kl_to_teacher"].as_f64().unwrap();
            let (kd, scratch) = (by_role("student-kd"), by_role("student-scratch"));
            eprintln!("{family} → {want}: KL kd {:.3}, scratch {:.3}", kl(kd), kl(scratch));
            assert!(kl(kd) < 0.8 * kl(scratch), "{family} → {want}: KL kd {} vs scratch {}", kl(kd), kl(scratch));
            if want == "LlamaForCausalLM" {
                // The loaded student, before any training, is further from the teacher.
                assert!(kl(kd) < kl(by_role("student-untouched")));
            }
            assert_eq!(class_of(&run.join("student")), want, "{family}");
        }
    }
}

/// `distill check` reads the teacher's config.json: a family distill does not implement is one
/// error line there, naming the class and the supported ones, before any run.
#[test]
fn check_refuses_an_unsupported_family() {
    let d = tmpdir("families-check");
    let text = d.join("corpus.txt");
    common::lm_corpus(&text, 4);
    let t = common::hf_teacher(&d.join("teacher"));
    let mut cfg = common::json(&t.join("config.json"));
    cfg["architectures"] = serde_json::json!(["MambaForCausalLM"]);
    std::fs::write(t.join("config.json"), cfg.to_string()).unwrap();
    let r = recipe(&d, &t, "layers = 1", &text);
    let o = distill(&["check", r.to_str().unwrap()]);
    common::assert_error(&o, &["unsupported architecture `MambaForCausalLM`", "Gemma2ForCausalLM"]);
}
