//! `distill run` on a causal-lm recipe with a tiny teacher (a 2-layer random Llama from
//! tests/fixtures/llama, word-level tokenizer) and a generated corpus; then eval, generate and
//! convert on the result, and the LM errors users hit.

#![allow(clippy::too_many_lines)] // tests read as scripts; the 120-line limit is for library and binary code

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::{assert_error, distill, stderr, summary, tmpdir, BIN};

fn recipe(d: &Path, teacher: &Path, text: &Path) -> PathBuf {
    let r = d.join("lm.toml");
    std::fs::write(
        &r,
        format!(
            r#"
task = "causal-lm"
name = "tiny-lm"
threads = 1
[teacher]
path = "{}"
[student]
layers = 1
hidden = 16
heads = 2
kv_heads = 1
intermediate = 32
[data]
sources = [{{ path = "{}" }}]
split = {{ val_fraction = 0.1 }}
pack = {{ seq_len = 16 }}
[train]
steps = 60
batch_size = 8
lr = 1e-2
warmup_steps = 5
[distill]
temperature = 2.0
alpha = 1.0
scratch_twin = true
[eval]
prompts = ["w1 w10 w73"]
max_new_tokens = 12
[checkpoint]
every_steps = 20
"#,
            teacher.display(),
            text.display()
        ),
    )
    .unwrap();
    r
}

/// `student.init = "prune"`: the teacher (2 layers, 32 wide, 4 heads in 2 kv groups, MLP 64)
/// pruned by importance to 1 layer, 24 channels, one kv group of 2 heads and 40 neurons;
/// evaluated before healing, healed by KD and by CE from the same pruned weights.
#[test]
fn pruned_student_is_evaluated_then_healed_by_kd_and_by_ce() {
    let d = tmpdir("prune");
    let t = common::lm_teacher(&d);
    let text = d.join("corpus.txt");
    common::lm_corpus(&text, 120);
    let r = recipe(&d, &t, &text);
    let toml = std::fs::read_to_string(&r).unwrap().replace(
        "[student]\nlayers = 1\nhidden = 16\nheads = 2\nkv_heads = 1\nintermediate = 32",
        "[student]\ninit = \"prune\"\nlayers = 1\nhidden = 24\nheads = 2\nkv_heads = 1\nintermediate = 40\ncalib_rows = 4",
    );
    assert!(toml.contains("init = \"prune\""));
    std::fs::write(&r, toml).unwrap();
    let out = d.join("run");
    let o = distill(&[
        "run",
        r.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--set",
        "train.steps=30",
        "--set",
        "student.twin_init=\"random\"",
        "--set",
        "quantize.steps=5",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s = summary(&out);
    let students = s["students"].as_array().unwrap();
    let roles: Vec<&str> = students.iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(
        roles,
        ["student-pruned", "student-kd", "student-scratch", "student-kd-twin-init", "student-kd-ptq", "student-kd-qad"]
    );
    let steps: Vec<Option<i64>> = students.iter().map(|m| m["train"]["steps"].as_i64()).collect();
    assert_eq!(steps, [None, Some(30), Some(30), Some(30), None, Some(5)]);
    // Rows of 24 values are no Q4_0 blocks: the quantized students' matrices are stored (and
    // evaluated) as F16, the norms F32. PTQ is the KD student rounded, so it barely moves.
    let (vs, ptq) =
        distill::models::lm::CausalLm::from_pretrained(out.join("student-kd-ptq"), tch::Device::Cpu, tch::Kind::Float)
            .unwrap();
    for (name, w) in ptq.named_parameters() {
        let f16 = w.to_kind(tch::Kind::Half).to_kind(tch::Kind::Float);
        if w.dim() == 2 {
            assert!(w.equal(&f16), "{name} is not on the F16 grid");
        }
    }
    drop(vs);
    let kl = |m: &serde_json::Value| m["validation"]["kl_to_teacher"].as_f64().unwrap();
    assert!((kl(&students[4]) - kl(&students[1])).abs() < 1e-3, "{} vs {}", kl(&students[4]), kl(&students[1]));
    // Tied 96 × 24 embedding; q 24→2·8, k and v 24→8, o 16→24; MLP 3 · 24 · 40; three norms.
    let params = 96 * 24 + (24 * 16 + 2 * 24 * 8 + 16 * 24) + 3 * 24 * 40 + 3 * 24;
    assert!(students.iter().all(|m| m["params"] == params), "{students:?}");
    let p = common::json(&out.join("pruning.json"));
    assert_eq!(p["importance"]["tokens"], 4 * 16);
    let len = |v: &serde_json::Value| v.as_array().unwrap().len();
    let sel = &p["selection"];
    assert_eq!(
        (len(&sel["layers"]), len(&sel["channels"]), len(&sel["heads"][0]), len(&sel["neurons"][0])),
        (1, 24, 2, 40)
    );
    // The pruned student keeps the teacher's head size (8): its export says so.
    let cfg = common::json(&out.join("pruned/config.json"));
    assert_eq!((cfg["head_dim"].as_i64(), cfg["hidden_size"].as_i64()), (Some(8), Some(24)));
    // Healing by KD (alpha = 1) brings the pruned student closer to the teacher.
    assert!(kl(&students[1]) < kl(&students[0]), "{} vs {}", kl(&students[1]), kl(&students[0]));
}

#[test]
fn tiny_lm_distills_evaluates_and_exports() {
    let d = tmpdir("run");
    let t = common::lm_teacher(&d);
    let text = d.join("corpus.txt");
    common::lm_corpus(&text, 120);
    let r = recipe(&d, &t, &text);
    let out = d.join("run");
    let o = distill(&["run", r.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report = String::from_utf8_lossy(&o.stdout);
    assert!(report.contains("KD student / scratch twin validation perplexity"), "{report}");
    // A word-level tokenizer has no GGUF form: the run says so and keeps the HF export.
    let err = stderr(&o);
    assert!(err.contains("kd: no GGUF export (") && err.contains("is not BPE"), "{err}");
    assert!(!out.join("student.gguf").exists());
    let s = summary(&out);
    let students = s["students"].as_array().unwrap();
    assert_eq!(students.len(), 2);
    let (kd, scratch) = (&students[0], &students[1]);
    assert_eq!(kd["role"], "student-kd");
    assert_eq!(scratch["role"], "student-scratch");
    // 1 layer, hidden 16, 2 heads × 8, 1 kv head, MLP 32, tied 96-token embedding.
    let params = 96 * 16 + (16 * 16 + 2 * 16 * 8 + 16 * 16) + 3 * 16 * 32 + 2 * 16 + 16;
    assert_eq!(kd["params"], params);
    assert_eq!(s["teacher"]["params"], 96 * 32 + 2 * (32 * 32 + 2 * 32 * 16 + 32 * 32 + 3 * 32 * 64 + 2 * 32) + 32);
    // The KD student is trained to match the teacher (alpha = 1): it must be clearly closer to it
    // than the scratch twin trained on the corpus labels.
    let kl = |m: &serde_json::Value| m["validation"]["kl_to_teacher"].as_f64().unwrap();
    assert!(kl(kd) < 0.7 * kl(scratch), "KL(teacher‖kd) {} vs KL(teacher‖scratch) {}", kl(kd), kl(scratch));
    let agree = |m: &serde_json::Value| m["validation"]["top1_agreement"].as_f64().unwrap();
    assert!(agree(kd) > agree(scratch));
    let ratio = s["ppl_ratio_kd_over_scratch"].as_f64().unwrap();
    let ppl = |m: &serde_json::Value| m["validation"]["perplexity"].as_f64().unwrap();
    assert!((ratio - ppl(kd) / ppl(scratch)).abs() < 1e-9);
    let g = &s["prompts"][0]["greedy"][1][1];
    assert_eq!(g["tokens"], 12);
    assert!(g["distinct_2"].as_f64().unwrap() > 0.0);
    // greedy+rp (default penalty 1.2) for teacher and both students, as long as plain greedy.
    assert_eq!(s["repetition_penalty"], 1.2);
    let pen = s["prompts"][0]["penalized"].as_array().unwrap();
    assert_eq!(pen.len(), 3);
    for (g, p) in s["prompts"][0]["greedy"].as_array().unwrap().iter().zip(pen) {
        assert_eq!(g[0], p[0]);
        assert_eq!(p[1]["tokens"], g[1]["tokens"]);
    }
    assert!(report.contains("greedy+rp"), "{report}");
    // The collapse table counts, per model and decoding, the prompts with distinct-2 >= 0.5.
    let n_prompts = s["prompts"].as_array().unwrap().len();
    let table = report.split("not collapsed (distinct-2 >= 0.5").nth(1).expect("collapse table");
    for (i, role) in ["teacher", "student-kd", "student-scratch"].iter().enumerate() {
        let row = table.lines().find(|l| l.trim_start().starts_with(role)).unwrap();
        let cells: Vec<&str> = row.split_whitespace().skip(1).collect();
        for (cell, kind) in cells.iter().zip(["greedy", "penalized", "sampled"]) {
            let pass = s["prompts"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|p| p[kind][i][1]["distinct_2"].as_f64().unwrap() >= 0.5)
                .count();
            assert_eq!(*cell, format!("{pass}/{n_prompts}"), "{role} {kind}: {row}");
        }
    }
    // teacher.dtype = "auto": the precision the online teacher trained in, and why, on record.
    let why = s["teacher_train_dtype"].as_str().unwrap();
    assert!(why.starts_with("f32 (auto: ") || why.starts_with("bf16 (auto: "), "{why}");
    assert!(report.contains(&format!("teacher during training: {why}; evaluation: f32")), "{report}");

    // The exported student evaluates on its own, with the same validation-style numbers.
    let o = distill(&[
        "eval",
        "--model",
        out.join("student").to_str().unwrap(),
        "--data",
        text.to_str().unwrap(),
        "--teacher",
        t.to_str().unwrap(),
        "--seq-len",
        "16",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let e: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let (p, n) = (e["perplexity"].as_f64().unwrap(), e["tokens"].as_u64().unwrap());
    // The teacher is random, so a student that imitates it (alpha = 1) is no better than chance
    // on the corpus itself; what matters here is that the number is a real perplexity.
    assert!(p > 1.0 && p.is_finite(), "{p}");
    assert!((e["nll"].as_f64().unwrap().exp() - p).abs() < 1e-6 * p);
    // 120 paragraphs of 40 words, each followed by EOS, packed into rows of 16 (the last padded):
    // every row predicts all its real tokens but the first.
    assert_eq!(n as usize, 120 * 41 - (120 * 41_usize).div_ceil(16));
    assert!(e["kl_to_teacher"].as_f64().unwrap() < 1.0);

    let o = distill(&[
        "generate",
        "--model",
        out.join("student").to_str().unwrap(),
        "--prompt",
        "w1 w10",
        "--max-tokens",
        "5",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let line = String::from_utf8_lossy(&o.stdout);
    assert!(line.starts_with("w1 w10"), "{line}");
    let student = out.join("student");
    let rp = |p: &str| {
        distill(&["generate", "--model", student.to_str().unwrap(), "--prompt", "w1", "--repetition-penalty", p])
    };
    assert!(rp("1.3").status.success());
    assert_error(&rp("0"), &["repetition_penalty must be > 0"]);

    // Resuming a finished run prints its results instead of training or evaluating again.
    let o = distill(&["run", r.to_str().unwrap(), "--out", out.to_str().unwrap(), "--resume"]);
    assert!(o.status.success());
    assert!(stderr(&o).contains("is finished (summary.json); nothing to resume"), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("KD student / scratch twin validation perplexity"));
    let s2 = summary(&out);
    assert_eq!(s2["students"][0]["validation"]["perplexity"], kd["validation"]["perplexity"]);
}

#[test]
fn lm_bad_inputs_fail_with_one_clear_line() {
    let d = tmpdir("bad");
    let t = common::lm_teacher(&d);
    let text = d.join("corpus.txt");
    common::lm_corpus(&text, 40);
    let r = recipe(&d, &t, &text);
    let rs = r.to_str().unwrap();
    let out = d.join("run");
    let outs = out.to_str().unwrap();

    // A corpus that is empty after cleaning.
    let short = d.join("short.txt");
    std::fs::write(&short, "w1 w2\n\n= Header =\n\nw3\n").unwrap();
    let o = distill(&["run", rs, "--out", outs, "--set", &format!("data.sources=[{{path=\"{}\"}}]", short.display())]);
    assert_error(&o, &["no documents left after cleaning: 3 read"]);
    assert!(!out.exists());

    // Truncated and corrupt GGUF files.
    let gguf = d.join("bad.gguf");
    let mut bytes = b"GGUF".to_vec();
    bytes.extend([3, 0, 0, 0, 1, 0]);
    std::fs::write(&gguf, &bytes).unwrap();
    let o = distill(&["generate", "--model", gguf.to_str().unwrap(), "--prompt", "hi"]);
    assert_error(&o, &["bad.gguf"]);
    let o = distill(&["run", rs, "--out", outs, "--set", &format!("teacher.path={}", gguf.display())]);
    assert_error(&o, &["bad.gguf"]);
    assert!(!out.exists());

    // GGUF output: an unknown storage type, and a model GGUF cannot hold (word-level tokenizer).
    let to = d.join("t.gguf");
    let o = distill(&["convert", t.to_str().unwrap(), "--out", to.to_str().unwrap(), "--gguf-type", "q4"]);
    assert_error(&o, &["--gguf-type `q4`: expected f32, f16, q8_0 or q4_0"]);
    let o = distill(&["convert", t.to_str().unwrap(), "--out", to.to_str().unwrap()]);
    assert_error(&o, &["t.gguf: tokenizer: model \"WordLevel\" is not BPE"]);
    assert!(!to.exists());

    // config.json missing a field; then a student tokenizer that differs from the teacher's.
    let broken = d.join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    let cfg = std::fs::read_to_string(t.join("config.json")).unwrap().replace("\"hidden_size\": 32,", "");
    std::fs::write(broken.join("config.json"), cfg).unwrap();
    std::fs::copy(t.join("model.safetensors"), broken.join("model.safetensors")).unwrap();
    let o = distill(&["eval", "--model", broken.to_str().unwrap(), "--data", text.to_str().unwrap()]);
    assert_error(&o, &["config.json", "hidden_size"]);
    // A config that claims a model far larger than its weight file: refused before anything
    // is allocated for it (it would ask for 10^15 floats).
    let cfg = std::fs::read_to_string(t.join("config.json")).unwrap();
    assert!(cfg.contains("\"intermediate_size\": 64,"));
    std::fs::write(
        broken.join("config.json"),
        cfg.replace("\"intermediate_size\": 64,", "\"intermediate_size\": 100000000000,"),
    )
    .unwrap();
    let o = distill(&["generate", "--model", broken.to_str().unwrap(), "--prompt", "w1"]);
    assert_error(&o, &["config.json: describes a model of", "parameters, but its weight files hold at most"]);
    // A layer count no model has: refused by name before any per-layer setting is built.
    std::fs::write(
        broken.join("config.json"),
        cfg.replace("\"num_hidden_layers\": 2,", "\"num_hidden_layers\": 100000000000,"),
    )
    .unwrap();
    let o = distill(&["generate", "--model", broken.to_str().unwrap(), "--prompt", "w1"]);
    assert_error(&o, &["config.json", "`num_hidden_layers` 100000000000"]);

    let other = d.join("other");
    std::fs::create_dir_all(&other).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(t.join(f), other.join(f)).unwrap();
    }
    let tok = std::fs::read_to_string(t.join("tokenizer.json")).unwrap().replace("\"w92\"", "\"zz\"");
    std::fs::write(other.join("tokenizer.json"), tok).unwrap();
    let o = distill(&[
        "eval",
        "--model",
        other.to_str().unwrap(),
        "--teacher",
        t.to_str().unwrap(),
        "--data",
        text.to_str().unwrap(),
        "--seq-len",
        "16",
    ]);
    assert_error(&o, &["tokenizer mismatch"]);

    // A tokenizer.json whose pipeline panics inside the tokenizers crate (a Strip decoder that
    // cuts more characters than a token has — token `ww` is all `w`; a post-processor template
    // naming a second sequence): one line naming the file, no panic text.
    for (name, field, value) in [
        ("strip", "\"decoder\": null", r#""decoder": {"type": "Strip", "content": "w", "start": 0, "stop": 100}"#),
        (
            "template",
            "\"post_processor\": null",
            r#""post_processor": {"type": "TemplateProcessing", "single": [{"Sequence": {"id": "B", "type_id": 0}}],
                "pair": [{"Sequence": {"id": "A", "type_id": 0}}], "special_tokens": {}}"#,
        ),
    ] {
        let m = d.join(name);
        std::fs::create_dir_all(&m).unwrap();
        for f in ["config.json", "model.safetensors"] {
            std::fs::copy(t.join(f), m.join(f)).unwrap();
        }
        let tok = std::fs::read_to_string(t.join("tokenizer.json")).unwrap();
        assert!(tok.contains(field), "{field}");
        std::fs::write(m.join("tokenizer.json"), tok.replace(field, value).replace("\"w0\":", "\"ww\":")).unwrap();
        let o = distill(&["generate", "--model", m.to_str().unwrap(), "--prompt", "w1 w2"]);
        assert_error(&o, &[&format!("{name}/tokenizer.json: not a usable tokenizer.json"), "panicked"]);
        let err = stderr(&o);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert_eq!(o.status.code(), Some(1));
    }

    // Unknown LM recipe key.
    let o = distill(&["run", rs, "--out", outs, "--set", "student.layer=2"]);
    assert_error(&o, &["unknown field `layer`"]);

    // On-policy distillation settings that cannot work, each refused before a model loads.
    let cases: [(&[&str], &str); 5] = [
        (&["distill.on_policy={lambda=1.5}"], "distill.on_policy.lambda must be in [0, 1], got 1.5"),
        (
            &["distill.on_policy={lambda=1, prompt_tokens=15}"],
            "prompt_tokens must be in 1..15 (the rows are data.pack.seq_len = 16",
        ),
        (
            &["distill.on_policy={lambda=1, prompt_tokens=4, temperature=0}"],
            "distill.on_policy.temperature must be > 0",
        ),
        (&["distill.on_policy={lambda=1, prompt_tokens=4}", "distill.alpha=0.5"], "set distill.alpha = 1, got 0.5"),
        (&["distill.on_policy={lambda=1, prompt_tokens=4}", "teacher.cache=."], "needs an online teacher"),
    ];
    for (sets, want) in cases {
        let mut a = vec!["run", rs, "--out", outs];
        for s in sets {
            a.extend(["--set", s]);
        }
        assert_error(&distill(&a), &[want]);
        assert!(!out.exists());
    }

    // Prompt files that cannot be read as prompts: one line each, nothing written.
    let gen = d.join("gen.jsonl");
    for (name, bytes, want) in [
        ("empty.jsonl", &b""[..], "empty.jsonl: no prompts: the file is empty"),
        ("latin1.txt", &b"caf\xe9 au lait\n"[..], "latin1.txt: not UTF-8 text"),
        ("notjson.jsonl", &b"{\"prompt\": \"a\"}\nplain text\n"[..], "notjson.jsonl: line 2: not JSON"),
    ] {
        let p = d.join(name);
        std::fs::write(&p, bytes).unwrap();
        let o = distill(&[
            "generate-data",
            "--model",
            t.to_str().unwrap(),
            "--prompts",
            p.to_str().unwrap(),
            "--out",
            gen.to_str().unwrap(),
        ]);
        assert_error(&o, &[want]);
        assert!(!gen.exists() && !d.join("gen.jsonl.parts").exists());
    }
}

/// The soak for the LM paths: a KD run and a teacher-cache capture, each killed with SIGKILL
/// at `DISTILL_SOAK_KILLS` random points (each kill hitting the job resumed from the last) and
/// then finished: the run's weights and the cache's shards equal the uninterrupted ones bit
/// for bit.
#[test]
fn kill_9_soak_lm_run_and_cache_capture() {
    let d = tmpdir("soak");
    let t = common::lm_teacher(&d);
    let text = d.join("corpus.txt");
    common::lm_corpus(&text, 120);
    let r = recipe(&d, &t, &text).to_str().unwrap().to_string();
    let kills = common::soak_kills();
    let s = |v: &[&str]| -> Vec<String> { v.iter().map(|x| x.to_string()).collect() };

    let (a, b) = (d.join("a"), d.join("b"));
    let run = |out: &Path| s(&["run", &r, "--out", out.to_str().unwrap()]);
    let span = common::run_ok(BIN, &run(&a));
    let mut resume = run(&b);
    resume.push("--resume".into());
    let killed = common::kill_chain(BIN, &run(&b), &resume, &b, span, kills, 11);
    assert_eq!(killed, kills, "run: kills that hit a running job");
    let (ma, mb) = (common::models(&a), common::models(&b));
    assert!(!ma.is_empty());
    let names =
        |m: &[(std::path::PathBuf, Vec<u8>)]| m.iter().map(|(p, _)| p.display().to_string()).collect::<Vec<_>>();
    assert_eq!(names(&ma), names(&mb), "run: the model files differ after {killed} kills");
    for ((p, x), (_, y)) in ma.iter().zip(&mb) {
        assert!(x == y, "run: {} differs after {killed} kills", p.display());
    }

    let (ca, cb) = (d.join("cache-a"), d.join("cache-b"));
    let capture = |out: &Path| {
        s(&[
            "cache",
            "--recipe",
            &r,
            "--top-k",
            "16",
            "--rows-per-shard",
            "4",
            "--batch",
            "2",
            "--out",
            out.to_str().unwrap(),
        ])
    };
    let span = common::run_ok(BIN, &capture(&ca));
    let killed = common::kill_chain(BIN, &capture(&cb), &capture(&cb), &cb, span, kills, 13);
    assert_eq!(killed, kills, "cache: kills that hit a running job");
    let shards = |dir: &Path| -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "bin"))
            .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), sha256_hex(&p)))
            .collect();
        v.sort();
        v
    };
    assert!(shards(&ca).len() >= 3);
    assert_eq!(shards(&ca), shards(&cb), "cache: shards differ after {killed} kills");
    let o = distill(&["inspect", cb.to_str().unwrap(), "--verify"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

fn sha256_hex(p: &Path) -> String {
    let out = Command::new("sha256sum").arg(p).output().unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap().to_string()
}

#[test]
fn offline_cache_captures_resumes_and_trains_like_the_online_teacher() {
    let d = tmpdir("cache");
    let t = common::lm_teacher(&d);
    let text = d.join("corpus.txt");
    common::lm_corpus(&text, 120);
    let r = recipe(&d, &t, &text);
    let rs = r.to_str().unwrap();
    // K = V = 96 with f16 log-probs: the cache holds the whole distribution, so training from it
    // must follow the online teacher up to f16 rounding.
    let cache = d.join("cache");
    let capture = |dir: &Path| {
        distill(&[
            "cache",
            "--recipe",
            rs,
            "--top-k",
            "96",
            "--encoding",
            "f16",
            "--rows-per-shard",
            "8",
            "--batch",
            "4",
            "--out",
            dir.to_str().unwrap(),
        ])
    };
    let o = capture(&cache);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = distill(&["inspect", cache.to_str().unwrap(), "--verify", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let info: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(info["top_k"], 96);
    assert_eq!(info["bytes_per_token"], 8 + 96 * (2 + 2));
    let rows = info["rows"].as_u64().unwrap();
    assert_eq!(info["tokens"].as_u64().unwrap(), rows * 16);
    assert!(info["shards"].as_u64().unwrap() >= 3);

    // A capture killed after its first shard: the manifest lists only that shard (and a torn
    // temp file lies around). Running the capture again completes it with identical shards.
    let part = d.join("partial");
    std::fs::create_dir_all(&part).unwrap();
    let mut m = common::json(&cache.join("manifest.json"));
    let first = m["shards"][0].clone();
    m["shards"] = serde_json::json!([first]);
    m["complete"] = serde_json::json!(false);
    m["tokens"] = serde_json::json!(first["rows"].as_u64().unwrap() * 16);
    std::fs::write(part.join("manifest.json"), serde_json::to_string(&m).unwrap()).unwrap();
    std::fs::copy(cache.join("shard-00000.bin"), part.join("shard-00000.bin")).unwrap();
    std::fs::write(part.join(".shard-00001.bin.tmp"), b"torn").unwrap();
    let o = distill(&["inspect", part.to_str().unwrap()]);
    assert!(o.status.success());
    let o = capture(&part);
    assert!(o.status.success(), "{}", stderr(&o));
    let n_shards = info["shards"].as_u64().unwrap() as usize;
    for i in 0..n_shards {
        let f = format!("shard-{i:05}.bin");
        assert_eq!(sha256_hex(&part.join(&f)), sha256_hex(&cache.join(&f)), "{f}");
    }
    assert!(!part.join(".shard-00001.bin.tmp").exists());

    // Online vs cached teacher, KD only, same steps: the same student up to f16 rounding.
    let online = d.join("online");
    let o = distill(&["run", rs, "--out", online.to_str().unwrap(), "--set", "distill.scratch_twin=false"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let cached = d.join("cached");
    let set_cache = format!("teacher.cache={}", cache.display());
    let o = distill(&[
        "run",
        rs,
        "--out",
        cached.to_str().unwrap(),
        "--set",
        "distill.scratch_twin=false",
        "--set",
        &set_cache,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let ppl = |dir: &Path| {
        let s = summary(dir);
        s["students"][0]["validation"]["perplexity"].as_f64().unwrap()
    };
    let (p_on, p_cache) = (ppl(&online), ppl(&cached));
    assert!((p_cache / p_on - 1.0).abs() < 0.01, "online {p_on} vs cached {p_cache}");

    // Top-8 + 16 tail samples (u8): 8 + 24·3 bytes/token, and the student trained from it
    // stays close to the online one.
    let sampled = d.join("sampled");
    let o =
        distill(&["cache", "--recipe", rs, "--top-k", "8", "--tail-samples", "16", "--out", sampled.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = distill(&["inspect", sampled.to_str().unwrap(), "--json"]);
    let info: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((info["top_k"].as_u64(), info["tail_samples"].as_u64()), (Some(8), Some(16)));
    assert_eq!(info["bytes_per_token"], 8 + 24 * 3);
    let from_sampled = d.join("from-sampled");
    let set_sampled = format!("teacher.cache={}", sampled.display());
    let o = distill(&[
        "run",
        rs,
        "--out",
        from_sampled.to_str().unwrap(),
        "--set",
        "distill.scratch_twin=false",
        "--set",
        &set_sampled,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let p_sampled = ppl(&from_sampled);
    assert!((p_sampled / p_on - 1.0).abs() < 0.05, "online {p_on} vs top-8 + 16 samples {p_sampled}");

    // Another seq_len is other data: refused before training, naming what differs.
    let bad = d.join("bad-run");
    let o = distill(&["run", rs, "--out", bad.to_str().unwrap(), "--set", &set_cache, "--set", "data.pack.seq_len=8"]);
    assert_error(&o, &["seq_len"]);
    // A flipped byte in a shard is caught and the shard named.
    let shard = cache.join("shard-00001.bin");
    let mut bytes = std::fs::read(&shard).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&shard, bytes).unwrap();
    let o = distill(&["inspect", cache.to_str().unwrap(), "--verify"]);
    assert_error(&o, &["shard-00001.bin"]);
}

/// `[distill.hidden]` end to end: the KD phase logs its hidden-state term (the scratch twin has
/// none), the run names the layer map, and the projection stays out of the exported student.
#[test]
fn hidden_state_kd_runs_and_is_not_exported() {
    let d = tmpdir("hidden");
    let t = common::lm_teacher(&d);
    let text = d.join("corpus.txt");
    common::lm_corpus(&text, 60);
    let r = recipe(&d, &t, &text);
    let out = d.join("run");
    let o = distill(&[
        "run",
        r.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--set",
        "train.steps=20",
        "--set",
        "distill.hidden={weight=1, loss=\"mse\"}",
    ]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    // 1 student layer, 2 teacher layers: 1→2 (uniform, the last layers pair up).
    assert!(err.contains("kd: hidden-state KD (mse, weight 1), student→teacher layers 1→2"), "{err}");
    let kd = common::metrics(&out, "kd");
    assert!(!kd.is_empty());
    for m in &kd {
        let (loss, soft, hard, hidden) =
            (m["loss"].as_f64(), m["soft"].as_f64(), m["hard"].as_f64(), m["hidden"].as_f64());
        let (loss, soft, hidden) = (loss.unwrap(), soft.unwrap(), hidden.unwrap());
        assert!(hidden > 0.0 && hard.is_some());
        // alpha = 1: loss = soft + hidden.
        assert!((loss - soft - hidden).abs() < 1e-4 * loss, "{m}");
    }
    let log = std::fs::read_to_string(out.join("phases/scratch/metrics.jsonl")).unwrap();
    assert!(!log.contains("hidden"));
    let names: Vec<String> = distill_names(&out.join("student").join("model.safetensors"));
    assert!(!names.is_empty() && names.iter().all(|n| n.starts_with("model.") || n == "lm_head.weight"), "{names:?}");
}

/// Tensor names in a safetensors file (its JSON header).
fn distill_names(path: &Path) -> Vec<String> {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    header.as_object().unwrap().keys().filter(|k| *k != "__metadata__").cloned().collect()
}

/// `distill generate-data`: prompts from a file and from a recipe's rows, a run killed with
/// SIGKILL between parts resumes to the same bytes as an uninterrupted one, and the written
/// text trains a student through `data.train_sources` on the same validation rows.
#[test]
fn generate_data_resumes_after_kill_9_and_trains_through_train_sources() {
    let d = tmpdir("gendata");
    let t = common::lm_teacher(&d);
    let prompts = d.join("prompts.jsonl");
    let lines: Vec<String> = (0..300).map(|i| format!("{{\"prompt\": \"w{} w{}\"}}", i % 93, (i * 7) % 93)).collect();
    std::fs::write(&prompts, lines.join("\n") + "\n").unwrap();
    let args = |out: &Path| -> Vec<String> {
        let mut a: Vec<String> =
            ["generate-data", "--model", t.to_str().unwrap(), "--prompts"].iter().map(|s| s.to_string()).collect();
        a.push(prompts.to_str().unwrap().into());
        for s in ["--batch", "2", "--max-tokens", "10", "--temperature", "1", "--top-p", "1", "--seed", "5", "--out"] {
            a.push(s.into());
        }
        a.push(out.to_str().unwrap().into());
        a
    };
    let a = d.join("a.jsonl");
    let o = distill(&args(&a));
    assert!(o.status.success(), "{}", stderr(&o));
    let records = common::jsonl(&a);
    assert_eq!(records.len(), 300);
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r["id"], i);
        assert_eq!(r["prompt"].as_str().unwrap(), format!("w{} w{}", i % 93, (i * 7) % 93));
        assert_eq!(
            r["text"].as_str().unwrap(),
            format!("{}{}", r["prompt"].as_str().unwrap(), r["completion"].as_str().unwrap())
        );
        assert_eq!(r["sampling"]["temperature"], 1.0);
        assert_eq!(r["sampling"]["seed"], 5);
        assert_eq!(r["sha256"].as_str().unwrap().len(), 64);
        let n = r["new_tokens"].as_u64().unwrap();
        assert!((1..=10).contains(&n));
        assert_eq!(r["finish"], if n == 10 { "length" } else { "eos" }, "{r}");
    }
    // Sampled per prompt: equal prompts (i and i + 93·k share none here) differ across seeds.
    let distinct: std::collections::HashSet<&str> = records.iter().map(|r| r["completion"].as_str().unwrap()).collect();
    assert!(distinct.len() > 250, "{}", distinct.len());

    // Killed after its second part, resumed: the same file, byte for byte.
    let b = d.join("b.jsonl");
    let parts = d.join("b.jsonl.parts");
    let mut child = Command::new(BIN).args(args(&b)).stderr(std::process::Stdio::null()).spawn().unwrap();
    let t0 = std::time::Instant::now();
    while !parts.join("part-000001.jsonl").exists() {
        if let Some(st) = child.try_wait().unwrap() {
            panic!("generate-data finished ({st}) before it could be killed");
        }
        assert!(t0.elapsed() < std::time::Duration::from_secs(60), "no part appeared");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(!b.exists());
    // Finished parts only: a kill during a write leaves its temporary sibling behind.
    let written = std::fs::read_dir(&parts)
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name().to_string_lossy().into_owned();
            name.starts_with("part-") && name.ends_with(".jsonl")
        })
        .count();
    assert!(written < 150, "{written} of 150 parts were written before the kill");
    let o = distill(&args(&b));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains(&format!("({} written now", 300 - 2 * written)));
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    assert!(!parts.exists());
    // Run again: nothing to do. With other settings: refused, the file kept.
    let o = distill(&args(&b));
    assert!(String::from_utf8_lossy(&o.stdout).contains("(0 written now"));
    let mut other = args(&b);
    let n = other.len();
    other[n - 3] = "6".into(); // --seed
    let o = distill(&other);
    assert_error(&o, &["b.jsonl already exists and holds another data set"]);
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    // A damaged record is named by its line.
    let damaged = std::fs::read_to_string(&a).unwrap().replacen("\"w", "\"x", 1);
    std::fs::write(&b, damaged).unwrap();
    assert_error(&distill(&args(&b)), &["b.jsonl: line 1: record 0 fails its sha256"]);

    // Prompts from a recipe's training rows: the first 6 tokens of the first 5 rows; the
    // completions fill each row (16 tokens) unless EOS comes first.
    let text = d.join("corpus.txt");
    common::lm_corpus(&text, 120);
    let r = recipe(&d, &t, &text);
    let rows = d.join("rows.jsonl");
    let o = distill(&[
        "generate-data",
        "--recipe",
        r.to_str().unwrap(),
        "--prompt-tokens",
        "6",
        "--limit",
        "5",
        "--out",
        rows.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let recs = common::jsonl(&rows);
    assert_eq!(recs.len(), 5);
    for r in &recs {
        assert_eq!(r["prompt"].as_str().unwrap().split(' ').count(), 6, "{r}");
        assert_eq!(r["sampling"]["max_new_tokens"], 10);
        assert_eq!((r["sampling"]["temperature"].as_f64(), r["sampling"]["top_p"].as_f64()), (Some(0.8), Some(0.95)));
    }

    // The written text as the training set: validation stays the corpus' split, so the
    // teacher's validation perplexity is the same number as in a run on the corpus itself.
    let run = |name: &str, set: &[&str]| -> serde_json::Value {
        let out = d.join(name);
        let mut a = vec![
            "run",
            r.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--set",
            "train.steps=20",
            "--set",
            "data.clean.min_chars=0",
        ];
        for s in set {
            a.extend(["--set", s]);
        }
        let o = distill(&a);
        assert!(o.status.success(), "{}", stderr(&o));
        summary(&out)
    };
    let plain = run("on-corpus", &[]);
    let src = format!("data.train_sources=[{{ path = \"{}\", format = \"jsonl\" }}]", a.display());
    let written = run("on-written", &[&src]);
    let ppl = |s: &serde_json::Value| s["teacher"]["validation"]["perplexity"].as_f64().unwrap();
    assert_eq!(ppl(&plain), ppl(&written));
    let kd_ppl = |s: &serde_json::Value| s["students"][0]["validation"]["perplexity"].as_f64().unwrap();
    assert_ne!(kd_ppl(&plain), kd_ppl(&written));
}

/// The LM method phases in one run: MiniLM relation KD and RKD as KD variants, a born-again
/// second generation taught by the KD student, and a teacher-assistant chain (an assistant
/// pruned from the teacher teaches one more student): the phases in plan order, each taught by
/// the right phase, each term in its own metrics only; and the errors of bad LM method recipes.
#[test]
fn lm_methods_run_in_order_and_learn_from_the_right_phase() {
    let d = tmpdir("methods");
    let t = common::lm_teacher(&d);
    let text = d.join("corpus.txt");
    common::lm_corpus(&text, 60);
    let r = recipe(&d, &t, &text);
    let mut toml = std::fs::read_to_string(&r).unwrap();
    toml += r#"
[distill.variants.attention]
attention = { weight = 1.0 }
[distill.variants.rkd]
rkd = { distance = 25.0, angle = 50.0 }
[distill.born_again]
generations = 2
[assistant]
init = "prune"
layers = 1
hidden = 24
heads = 2
kv_heads = 1
intermediate = 40
calib_rows = 4
"#;
    std::fs::write(&r, toml).unwrap();
    let out = d.join("run");
    let o = distill(&["run", r.to_str().unwrap(), "--out", out.to_str().unwrap(), "--set", "train.steps=12"]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    // Student q 16 / k, v 8 wide, teacher q 32 / k, v 16: 2 relation heads (the student's) divide all.
    assert!(err.contains("kd-attention: self-attention relation KD (MiniLM; qq+kk+vv over 2 relation heads, weight 1), student→teacher layers 1→2"), "{err}");
    let s = summary(&out);
    let students = s["students"].as_array().unwrap();
    let rows: Vec<(&str, &str, Vec<&str>)> = students
        .iter()
        .map(|m| {
            let by =
                m["taught_by"].as_array().map(|a| a.iter().map(|x| x.as_str().unwrap()).collect()).unwrap_or_default();
            (m["phase"].as_str().unwrap(), m["role"].as_str().unwrap(), by)
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("kd", "student-kd", vec!["teacher"]),
            ("scratch", "student-scratch", vec![]),
            ("kd-attention", "student-kd+attention", vec!["teacher"]),
            ("kd-rkd", "student-kd+rkd", vec!["teacher"]),
            ("born-again-g2", "student-born-again g2", vec!["kd"]),
            ("assistant", "assistant", vec!["teacher"]),
            ("kd-ta", "student-ta", vec!["assistant"]),
        ]
    );
    // Ran in that order.
    let done: Vec<_> =
        rows.iter().map(|(id, ..)| common::modified(&out.join("phases").join(id).join("train.json"))).collect();
    assert!(done.windows(2).all(|w| w[0] <= w[1]), "{done:?}");
    // The assistant is the pruned shape (24 wide), the chain's student the student's (16 wide).
    let params = |i: usize| students[i]["params"].as_i64().unwrap();
    assert_eq!(params(5), 96 * 24 + (24 * 16 + 2 * 24 * 8 + 16 * 24) + 3 * 24 * 40 + 3 * 24);
    assert!([2, 3, 4, 6].iter().all(|&i| params(i) == params(0)));
    let log = |phase: &str| std::fs::read_to_string(out.join("phases").join(phase).join("metrics.jsonl")).unwrap();
    for (phase, term) in [("kd-attention", "attention"), ("kd-rkd", "rkd")] {
        let m = common::metrics(&out, phase);
        assert!(!m.is_empty() && m.iter().all(|m| m[term].as_f64().unwrap() > 0.0), "{phase}");
        for other in ["kd", "born-again-g2", "kd-ta"] {
            assert!(!log(other).contains(&format!("\"{term}\"")), "{other} logged {term}");
        }
    }
    // Method students export under their phase directory; the KD student keeps DIR/student.
    assert!(out.join("phases/kd-ta/model/config.json").exists() && out.join("student/config.json").exists());

    // Bad LM method recipes: one line naming the key.
    let run = |name: &str, set: &str| {
        let o = d.join(name);
        distill(&["run", r.to_str().unwrap(), "--out", o.to_str().unwrap(), "--set", "train.steps=2", "--set", set])
    };
    assert_error(
        &run("e1", "distill.variants.attention.attention.layers=[[3, 1]]"),
        &["distill.variants.attention.attention.layers", "[3, 1]"],
    );
    assert_error(
        &run("e2", "distill.variants.attention.attention.relation_heads=3"),
        &["distill.attention.relation_heads = 3", "does not divide"],
    );
    assert_error(
        &run("e3", "distill.variants.attention.attention.relations=[\"attention\"]"),
        &["distill.attention.relations", "2 heads", "4"],
    );
    assert_error(
        &run("e4", "distill.variants.rkd.fitnets={weight=1}"),
        &["distill.variants.rkd.fitnets is for image students"],
    );
    assert_error(&run("e5", "assistant.layers=0"), &["assistant.layers must be > 0"]);
}

/// Multi-teacher KD for LMs: a second teacher identical to the first mixes into the first
/// itself, so a student distilled from the mixture (fixed or entropy weights) trains exactly
/// like the plain KD student; a teacher with another tokenizer is refused before any weights
/// load (its weights here are not even readable).
#[test]
fn lm_multi_teacher_mixes_teachers_and_checks_tokenizers_first() {
    let d = tmpdir("multi");
    let t = common::lm_teacher(&d);
    let t2 = d.join("teacher2");
    std::fs::create_dir_all(&t2).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(t.join(f), t2.join(f)).unwrap();
    }
    let text = d.join("corpus.txt");
    common::lm_corpus(&text, 60);
    let r = recipe(&d, &t, &text);
    let mut toml = std::fs::read_to_string(&r).unwrap();
    toml = toml.replace("[student]", &format!("[[teachers]]\npath = \"{}\"\n[student]", t2.display()));
    toml += "[distill.multi_teacher]\nweights = [0.5, 0.5]\nweightings = [\"fixed\", \"entropy\"]\n";
    std::fs::write(&r, &toml).unwrap();
    let out = d.join("run");
    let args = [
        "run",
        r.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--set",
        "train.steps=10",
        "--set",
        "teacher.dtype=\"f32\"",
    ];
    let o = distill(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let s = summary(&out);
    let students = s["students"].as_array().unwrap();
    let phases: Vec<&str> = students.iter().map(|m| m["phase"].as_str().unwrap()).collect();
    assert_eq!(phases, ["kd", "scratch", "kd-multi-fixed", "kd-multi-entropy"]);
    assert_eq!(students[3]["taught_by"], serde_json::json!(["teacher", "teacher2"]));
    let losses = |phase: &str| common::losses(&out, phase);
    let kd = losses("kd");
    for phase in ["kd-multi-fixed", "kd-multi-entropy"] {
        let m = losses(phase);
        assert_eq!(m.len(), kd.len());
        for (a, b) in m.iter().zip(&kd) {
            assert!((a - b).abs() < 1e-4 * b.abs(), "{phase}: {m:?} vs kd {kd:?}");
        }
    }

    // Another tokenizer: one token renamed. Its weights are unreadable, so only a check made
    // before any weights load can name the tokenizer.
    let tok = std::fs::read_to_string(t2.join("tokenizer.json")).unwrap().replacen("\"w1\"", "\"W1\"", 1);
    std::fs::write(t2.join("tokenizer.json"), tok).unwrap();
    std::fs::write(t2.join("model.safetensors"), b"not weights").unwrap();
    let out = d.join("run-bad");
    let o = distill(&["run", r.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert_error(&o, &["teachers[0].path", "different tokenizer than teacher.path"]);
    assert!(!out.exists(), "nothing is written before the check");
    // An empty teacher list, a negative weight: named keys.
    let o = distill(&["check", r.to_str().unwrap(), "--set", "teachers=[]"]);
    assert_error(&o, &["distill.multi_teacher", "[[teachers]]"]);
    let o = distill(&["check", r.to_str().unwrap(), "--set", "distill.multi_teacher.weights=[0.5, -0.5]"]);
    assert_error(&o, &["distill.multi_teacher.weights", "≥ 0"]);
}
