//! An existing student (`student.from`) distilled on conversation records, with the tiny teacher
//! of tests/fixtures/llama given a chat template; `distill eval` on conversations; and the
//! errors a user's own model and chat data can hit, each one line, nothing written.

#![allow(clippy::too_many_lines)] // tests read as scripts; the 120-line limit is for library and binary code

use std::path::{Path, PathBuf};

mod common;
use common::{assert_error, distill, fixtures, json, summary, tmpdir, Lcg};

/// User turns plain, assistant turns between `</s>` markers: every assistant turn ends with
/// `</s>` (learned: the student learns to stop), and rendering a prefix with the generation
/// prompt (`</s>`) gives the text up to where the next assistant turn starts.
const TEMPLATE: &str = "{% for m in messages %}{% if m['role'] == 'assistant' %}</s> {{ m['content'] }} </s> \
                        {% else %}<s> {{ m['content'] }} {% endif %}{% endfor %}\
                        {% if add_generation_prompt %}</s> {% endif %}";

/// The tiny teacher with [`TEMPLATE`] as its chat template.
fn chat_teacher(d: &Path) -> PathBuf {
    let t = common::lm_teacher(d);
    std::fs::write(t.join("chat_template.jinja"), TEMPLATE).unwrap();
    t
}

/// An existing model with the teacher's tokenizer: the untied 2-layer fixture.
fn existing_student(d: &Path) -> PathBuf {
    let s = d.join("my-student");
    std::fs::create_dir_all(&s).unwrap();
    let llama = fixtures().join("llama");
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(llama.join("llama_untied").join(f), s.join(f)).unwrap();
    }
    std::fs::copy(llama.join("tokenizer.json"), s.join("tokenizer.json")).unwrap();
    s
}

/// `n` conversations of words from a first-order chain: a user turn of 5 words and an
/// assistant turn of 8 (a system turn on every third).
fn chat_jsonl(path: &Path, n: usize) {
    let mut rng = Lcg::seeded(3);
    let mut w = 0u64;
    let mut words = |k: usize| {
        (0..k)
            .map(|_| {
                w = (w * 7 + 3 + (rng.step() >> 61)) % 93;
                format!("w{w}")
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut out = String::new();
    for i in 0..n {
        let mut msgs = vec![];
        if i % 3 == 0 {
            msgs.push(serde_json::json!({"role": "system", "content": words(2)}));
        }
        msgs.push(serde_json::json!({"role": "user", "content": words(5)}));
        msgs.push(serde_json::json!({"role": "assistant", "content": words(8)}));
        out += &serde_json::json!({ "messages": msgs }).to_string();
        out.push('\n');
    }
    std::fs::write(path, out).unwrap();
}

fn recipe(d: &Path, teacher: &Path, student: &Path, data: &Path) -> PathBuf {
    let r = d.join("chat.toml");
    std::fs::write(
        &r,
        format!(
            r#"
task = "causal-lm"
name = "tiny-chat"
threads = 1
[teacher]
path = "{}"
[student]
from = "{}"
[data]
sources = [{{ path = "{}" }}]
split = {{ val_fraction = 0.15 }}
pack = {{ seq_len = 24 }}
[train]
steps = 40
batch_size = 8
lr = 1e-2
warmup_steps = 4
[distill]
temperature = 1.0
alpha = 1.0
scratch_twin = true
[eval]
prompts = ["w1 w10 w73"]
max_new_tokens = 6
[checkpoint]
every_steps = 20
"#,
            teacher.display(),
            student.display(),
            data.display()
        ),
    )
    .unwrap();
    r
}

/// The student as loaded, then KD and CE from its weights on the assistant turns: the exported
/// students keep its architecture (untied, 2 layers); the untouched row scores the loaded
/// weights; KD pulls the student toward the teacher; every model is scored on the same
/// assistant tokens (a system/user turn of the validation split is never counted).
#[test]
fn existing_student_distilled_on_conversations() {
    let d = tmpdir("chat-from");
    let t = chat_teacher(&d);
    let s = existing_student(&d);
    let data = d.join("chat.jsonl");
    chat_jsonl(&data, 160);
    let r = recipe(&d, &t, &s, &data);
    let run = d.join("run");
    let o = distill(&["run", r.to_str().unwrap(), "--out", run.to_str().unwrap()]);
    common::ok(&o);
    let sm = summary(&run);
    let rows = sm["students"].as_array().unwrap();
    let roles: Vec<&str> = rows.iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["student-untouched", "student-kd", "student-scratch"]);
    let val = |i: usize, k: &str| rows[i]["validation"][k].as_f64().unwrap();
    // Every row scores the same tokens: the validation conversations' assistant turns, each 8
    // words and its closing `</s>`.
    let tokens = val(0, "tokens");
    assert_eq!(tokens % 9.0, 0.0, "{tokens} scored tokens are not whole assistant turns of 9");
    assert!(tokens >= 9.0 * 10.0, "{tokens}");
    assert_eq!(sm["teacher"]["validation"]["tokens"].as_f64().unwrap(), tokens);
    for i in 1..3 {
        assert_eq!(val(i, "tokens"), tokens);
    }
    // The untouched row is the loaded model: its export scores as the original directory.
    let untouched = PathBuf::from(rows[0]["path"].as_str().unwrap());
    let few = d.join("few.jsonl");
    chat_jsonl(&few, 7);
    let eval = |model: &Path| -> serde_json::Value {
        let o = distill(&[
            "eval",
            "--model",
            model.to_str().unwrap(),
            "--teacher",
            t.to_str().unwrap(),
            "--data",
            few.to_str().unwrap(),
            "--seq-len",
            "24",
            "--json",
        ]);
        common::ok(&o);
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let (a, b) = (eval(&untouched), eval(&s));
    assert!((a["nll"].as_f64().unwrap() - b["nll"].as_f64().unwrap()).abs() < 1e-6, "{a} vs {b}");
    let cfg = json(&run.join("student/config.json"));
    assert_eq!((cfg["num_hidden_layers"].as_i64(), cfg["tie_word_embeddings"].as_bool()), (Some(2), Some(false)));
    // KD moves the student toward the teacher more than CE on the same rows.
    let (kl0, kl_kd, kl_ce) = (val(0, "kl_to_teacher"), val(1, "kl_to_teacher"), val(2, "kl_to_teacher"));
    assert!(kl_kd < kl0 && kl_kd < kl_ce, "KL: untouched {kl0}, KD {kl_kd}, CE {kl_ce}");
    // The export carries the teacher's chat template.
    let tc = json(&run.join("student/tokenizer_config.json"));
    assert_eq!(tc["chat_template"].as_str(), Some(TEMPLATE));

    // `distill eval` on conversations: assistant tokens only (8 words + `</s>` per record).
    assert_eq!(b["tokens"].as_f64(), Some(63.0), "{b}");
    // The teacher against itself: KL 0, agreement 1.
    let e = eval(&t);
    assert!(e["kl_to_teacher"].as_f64().unwrap().abs() < 1e-6 && e["top1_agreement"].as_f64() == Some(1.0), "{e}");
    std::fs::remove_dir_all(&d).unwrap();
}

/// Bad models and chat data: one line naming the file, line and field; no run directory.
#[test]
fn bad_students_and_conversations_are_one_line_errors() {
    let d = tmpdir("chat-errors");
    let t = chat_teacher(&d);
    let s = existing_student(&d);
    let data = d.join("chat.jsonl");
    chat_jsonl(&data, 40);
    let r = recipe(&d, &t, &s, &data);
    let out = d.join("run");
    let run = |extra: &[&str]| {
        let mut args = vec!["run", r.to_str().unwrap(), "--out", out.to_str().unwrap()];
        for e in extra {
            args.extend(["--set", e]);
        }
        let o = distill(&args);
        assert!(!out.exists(), "{extra:?} wrote the run directory");
        o
    };
    assert_error(
        &run(&["student.layers=2"]),
        &["student.from takes an existing model as it is; remove student.layers"],
    );
    assert_error(&run(&["student.init=\"prune\""]), &["remove student.init"]);
    assert_error(&run(&["student.lora={targets=[\"qkv\"]}"]), &["student.lora", "`qkv` names no projection"]);

    // A student whose tokenizer differs: refused before its weights load.
    let other = d.join("other-student");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::copy(s.join("config.json"), other.join("config.json")).unwrap();
    std::fs::write(other.join("model.safetensors"), b"not read").unwrap();
    let mut tok = json(&s.join("tokenizer.json"));
    tok["model"]["vocab"]["w0"] = serde_json::json!(95);
    tok["model"]["vocab"]["w92"] = serde_json::json!(3);
    std::fs::write(other.join("tokenizer.json"), tok.to_string()).unwrap();
    let from_other = format!("student.from=\"{}\"", other.display());
    let o = run(&[&from_other]);
    assert_error(&o, &["student.from", "has a different tokenizer than the teacher"]);
    // `distill check` refuses it too, as `run` would.
    let o = distill(&["check", r.to_str().unwrap(), "--set", &from_other]);
    assert_error(&o, &["student.from", "has a different tokenizer than the teacher"]);

    // Conversations: no assistant turn, an unknown role, a content that is not a string.
    let bad = d.join("bad.jsonl");
    let set_data = format!("data.sources=[{{path=\"{}\"}}]", bad.display());
    for (line, want) in [
        (
            r#"{"messages": [{"role": "user", "content": "w1 w2"}]}"#,
            "line 3: the conversation in `messages` has no assistant turn",
        ),
        (r#"{"messages": [{"role": "bot", "content": "w1"}]}"#, "line 3: messages[0]: unknown role `bot`"),
        (
            r#"{"messages": [{"role": "user", "content": ["w1"]}]}"#,
            "line 3: messages[0].content is a list, not a string",
        ),
        (
            r#"{"content": "w1 w2"}"#,
            "line 3: no `text` field (text), `messages` (conversation) or `prompt` + `completion`",
        ),
    ] {
        let good = r#"{"prompt": "w1 w2", "completion": "w3 w4"}"#;
        std::fs::write(&bad, format!("{good}\n{good}\n{line}\n")).unwrap();
        let o = run(&[&set_data]);
        assert_error(&o, &[bad.to_str().unwrap(), want]);
    }
    // A teacher without a chat template, and one whose template fails.
    std::fs::write(&bad, "{\"prompt\": \"w1 w2\", \"completion\": \"w3 w4\"}\n".repeat(30)).unwrap();
    std::fs::remove_file(t.join("chat_template.jinja")).unwrap();
    assert_error(&run(&[&set_data]), &["conversation records need a chat template, and the model has none"]);
    std::fs::write(t.join("chat_template.jinja"), "{{ raise_exception('no chats here') }}").unwrap();
    assert_error(&run(&[&set_data]), &[bad.to_str().unwrap(), "no chats here"]);
    std::fs::remove_dir_all(&d).unwrap();
}

/// `[student.lora]` on an existing student: only the adapters train (the trainer's count is
/// theirs; the checkpoint holds nothing else), the export is the merged model in the student's
/// own shape (no adapter left in it) and differs from the untouched one; and a run killed with
/// SIGKILL, then resumed, ends with the same files bit for bit.
#[test]
fn lora_student_trains_adapters_only_and_resumes_after_kill_9() {
    let d = tmpdir("chat-lora");
    let t = chat_teacher(&d);
    let s = existing_student(&d);
    let data = d.join("chat.jsonl");
    chat_jsonl(&data, 120);
    let r = recipe(&d, &t, &s, &data).to_str().unwrap().to_string();
    let args = |out: &Path, resume: bool| {
        let mut v: Vec<String> = ["run", &r, "--out", out.to_str().unwrap()].iter().map(|x| x.to_string()).collect();
        for set in ["student.lora={rank=4, alpha=8, targets=[\"all\"]}", "distill.scratch_twin=false", "train.lr=5e-3"]
        {
            v.extend(["--set".to_string(), set.to_string()]);
        }
        if resume {
            v.push("--resume".into());
        }
        v
    };
    let (a, b) = (d.join("a"), d.join("b"));
    let span = common::run_ok(common::BIN, &args(&a, false));
    let train = json(&a.join("phases/kd/train.json"));
    // rank 4 on q, k, v, o, gate, up, down of both layers: 4 · (in + out) each.
    assert_eq!(train["trainable_params"].as_i64(), Some(4864), "{train}");
    assert!(train["peak_rss_mb"].as_f64().unwrap() > 10.0, "{train}");
    let ckpt = std::fs::read(a.join("phases/kd/ckpt.safetensors")).unwrap();
    let n = u64::from_le_bytes(ckpt[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&ckpt[8..8 + n]).unwrap();
    let names: Vec<&String> = header.as_object().unwrap().keys().filter(|k| *k != "__metadata__").collect();
    assert!(!names.is_empty() && names.iter().all(|k| k.contains("lora_")), "{names:?}");
    let st = std::fs::read(a.join("student/model.safetensors")).unwrap();
    let n = u64::from_le_bytes(st[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8_lossy(&st[8..8 + n]).into_owned();
    assert!(!header.contains("lora"), "the export holds adapters: {header}");
    let cfg = json(&a.join("student/config.json"));
    assert_eq!((cfg["num_hidden_layers"].as_i64(), cfg["tie_word_embeddings"].as_bool()), (Some(2), Some(false)));
    let rows = summary(&a)["students"].as_array().unwrap().clone();
    let kl = |i: usize| rows[i]["validation"]["kl_to_teacher"].as_f64().unwrap();
    assert!(kl(1) < kl(0), "LoRA KD moved the student toward the teacher: {} vs untouched {}", kl(1), kl(0));

    let killed = common::kill_chain(common::BIN, &args(&b, false), &args(&b, true), &b, span, 1, 23);
    assert_eq!(killed, 1);
    let (ma, mb) = (common::models(&a), common::models(&b));
    assert!(!ma.is_empty());
    for ((p, x), (q, y)) in ma.iter().zip(&mb) {
        assert_eq!(p, q);
        assert!(x == y, "{} differs after a kill and a resume", p.display());
    }
    std::fs::remove_dir_all(&d).unwrap();
}
