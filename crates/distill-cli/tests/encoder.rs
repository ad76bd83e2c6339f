//! Sentence encoders from the command line: `distill embed` (npy/JSONL, the truncation warning,
//! the one error line for a directory that is not an encoder), a small `sentence-embedding`
//! recipe end to end with resume, and `distill eval` in encoder mode agreeing with the run.

mod common;

use std::process::Command;

use common::{assert_error, distill, python, stderr, tmpdir};

fn minilm() -> String {
    let p = distill::io::fetch::asset("minilm").unwrap().root_path();
    assert!(p.join("model.safetensors").is_file(), "run `distill fetch minilm`");
    p.display().to_string()
}

const CHECK_NPY: &str = r#"
import json, sys, numpy as np
from sentence_transformers import SentenceTransformer
e = np.load(sys.argv[1])
texts = [l for l in open(sys.argv[3]).read().splitlines() if l.strip()]
ref = SentenceTransformer(sys.argv[2], device="cpu").encode(texts)
print(json.dumps({"shape": list(e.shape), "dtype": str(e.dtype), "max_diff": float(np.abs(e - ref).max())}))
"#;

#[test]
fn embed_writes_npy_equal_to_sentence_transformers_and_warns_on_truncation() {
    let d = tmpdir("embed");
    let texts = d.join("texts.txt");
    let long = "word ".repeat(400);
    std::fs::write(&texts, format!("A short sentence.\n\nAnother one, about spam.\n{long}\n")).unwrap();
    let npy = d.join("e.npy");
    let o =
        distill(&["embed", "--model", &minilm(), "--data", texts.to_str().unwrap(), "--out", npy.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("warning: 1 of 3 texts are longer than the model's 256 tokens and were truncated"));
    let p = Command::new(python())
        .env("HF_HUB_OFFLINE", "1")
        .args(["-c", CHECK_NPY, npy.to_str().unwrap(), &minilm(), texts.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(p.status.success(), "{}", String::from_utf8_lossy(&p.stderr));
    let v: serde_json::Value = serde_json::from_slice(&p.stdout).unwrap();
    assert_eq!(v["shape"], serde_json::json!([3, 384]));
    assert_eq!(v["dtype"], "float32");
    assert!(v["max_diff"].as_f64().unwrap() <= 1e-4, "{v}");

    // JSONL output: one record per text, the same numbers.
    let jl = d.join("e.jsonl");
    let o = distill(&["embed", "--model", &minilm(), "--data", texts.to_str().unwrap(), "--out", jl.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let lines = common::jsonl(&jl);
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["text"], "A short sentence.");
    assert_eq!(lines[0]["embedding"].as_array().unwrap().len(), 384);

    // Not an encoder: one error line naming what is missing; nothing written.
    let empty = d.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let out = d.join("x.npy");
    let o = distill(&[
        "embed",
        "--model",
        empty.to_str().unwrap(),
        "--data",
        texts.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_error(&o, &["not a BERT encoder directory", "no config.json"]);
    assert!(!out.exists());
    let _ = std::fs::remove_dir_all(&d);
}

/// Two classes of short texts, 40 each, as JSONL.
fn labelled(path: &std::path::Path) {
    let sports = ["team", "match", "goal", "coach", "league", "season", "player", "stadium"];
    let money = ["bank", "loan", "interest", "stock", "market", "price", "invest", "credit"];
    let mut s = String::new();
    for i in 0..40 {
        let a = sports[i % 8];
        let b = sports[(i * 3 + 1) % 8];
        s +=
            &serde_json::json!({"text": format!("The {a} and the {b} were in the news on day {i}."), "label": "sport"})
                .to_string();
        s.push('\n');
        let a = money[i % 8];
        let b = money[(i * 5 + 2) % 8];
        s += &serde_json::json!({"text": format!("Our {a} report mentions the {b} again, item {i}."), "label": "finance"}).to_string();
        s.push('\n');
    }
    std::fs::write(path, s).unwrap();
}

#[test]
fn a_small_encoder_recipe_runs_resumes_and_agrees_with_eval() {
    let d = tmpdir("recipe");
    let data = d.join("labelled.jsonl");
    labelled(&data);
    let recipe = d.join("r.toml");
    std::fs::write(
        &recipe,
        format!(
            r#"task = "sentence-embedding"
name = "tiny"
threads = 1
[teacher]
path = "{}"
[student]
layers = 3
[student.narrow]
layers = 2
hidden = 128
heads = 4
intermediate = 256
[student.static]
dim = 32
[data]
labelled = "{}"
test_fraction = 0.2
[train]
steps = 6
batch_size = 8
lr = 1e-4
[distill.hidden]
weight = 0.5
[eval]
speed_texts = 8
batch = 8
"#,
            minilm(),
            data.display()
        ),
    )
    .unwrap();
    let out = d.join("run");
    let o = distill(&["run", recipe.to_str().unwrap(), "--out", out.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let rows = s["results"].as_array().unwrap();
    let ids: Vec<&str> = rows.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["teacher", "init", "kd", "narrow", "static"]);
    let t = &rows[0];
    // The teacher against itself: 1 up to rounding (MKL's last bits differ between CPUs).
    assert!((t["cos_to_teacher"].as_f64().unwrap() - 1.0).abs() < 1e-6, "{t}");
    assert_eq!(t["topk_overlap"].as_f64().unwrap(), 1.0);
    assert_eq!(t["params"].as_i64().unwrap(), 22_565_376);
    assert_eq!(rows[1]["params"].as_i64().unwrap(), 22_565_376 - 3 * 1_774_464);
    assert_eq!(rows[2]["train_steps"].as_u64().unwrap(), 6);
    assert!(rows[4]["cos_to_teacher"].is_null(), "the static student is 32 wide");
    assert_eq!(rows[4]["params"].as_i64().unwrap(), 30522 * 32);
    for r in rows {
        let a = r["probe_accuracy"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&a), "{r}");
    }
    assert!(out.join("student/modules.json").is_file());
    assert!(out.join("report.html").is_file());
    assert!(out.join("phases/static/model/config.json").is_file());
    assert_eq!(s["test_docs"].as_u64().unwrap() + s["probe_train_docs"].as_u64().unwrap(), 80);

    // Resume: every phase is done; the summary is the same.
    let o = distill(&["run", recipe.to_str().unwrap(), "--out", out.to_str().unwrap(), "--resume", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let again: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(again["results"], s["results"]);

    // `distill eval` on the exported student splits and probes as the run does (20 %, seed 0,
    // the same probe): the same accuracy and cosine as the run's distilled row.
    let o = distill(&[
        "eval",
        "--model",
        out.join("student").to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--teacher",
        &minilm(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let e: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let kd = &rows[2];
    assert_eq!(e["probe_accuracy"].as_f64().unwrap(), kd["probe_accuracy"].as_f64().unwrap(), "{e}");
    let cos = e["cos_to_teacher"].as_f64().unwrap();
    assert!((cos - kd["cos_to_teacher"].as_f64().unwrap()).abs() < 1e-5, "{e} vs {kd}");
    assert_eq!(e["train_docs"].as_u64().unwrap() + e["test_docs"].as_u64().unwrap(), 80);
    let _ = std::fs::remove_dir_all(&d);
}
