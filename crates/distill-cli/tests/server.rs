//! A teacher behind a server (`distill cache --server`), against a stand-in for llama-cpp-python's
//! OpenAI server (tests/fixtures/server/standin.py: the same answers, computed by transformers
//! from the tiny HF teacher): the captured cache agrees with distill's own capture of that
//! teacher, resumes byte-identically after the server dies, trains like the local cache, keeps
//! the API key out of every file; the fault drills (503s, a hang, broken JSON, too few
//! log-probs, another tokenization) end in one line naming the row.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use distill_cache::CacheReader;

mod common;
use common::{assert_error, distill, stderr, tmpdir, BIN};

/// A stand-in server on a free loopback port; killed when dropped.
struct Standin {
    child: Child,
    url: String,
}

impl Standin {
    fn start(d: &Path, teacher: &Path, flags: &[&str]) -> Standin {
        static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port_file = d.join(format!("port-{n}"));
        let _ = std::fs::remove_file(&port_file);
        let script = common::root().join("tests/fixtures/server/standin.py");
        let child = Command::new(common::python())
            .arg(&script)
            .arg(teacher)
            .arg("--port-file")
            .arg(&port_file)
            .args(flags)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let t0 = Instant::now();
        while !port_file.is_file() {
            assert!(t0.elapsed() < Duration::from_secs(120), "the stand-in server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        let port = std::fs::read_to_string(&port_file).unwrap();
        Standin { child, url: format!("http://127.0.0.1:{port}") }
    }
}

impl Drop for Standin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn recipe(d: &Path, teacher: &Path, text: &Path) -> PathBuf {
    let r = d.join("lm.toml");
    std::fs::write(
        &r,
        format!(
            r#"task = "causal-lm"
name = "server"
threads = 1
[teacher]
path = "{}"
dtype = "f32"
[student]
layers = 1
hidden = 16
heads = 2
kv_heads = 1
intermediate = 32
[data]
sources = ["{}"]
split = {{ val_fraction = 0.1 }}
pack = {{ seq_len = 16 }}
[train]
steps = 30
batch_size = 8
lr = 3e-3
[distill]
temperature = 1.0
alpha = 0.5
scratch_twin = false
[eval]
prompts = []
"#,
            teacher.display(),
            text.display()
        ),
    )
    .unwrap();
    r
}

/// `distill cache --server URL --recipe R --top-k 8 …` with an API key in the environment.
fn capture(url: &str, r: &Path, out: &Path, extra: &[&str]) -> Output {
    Command::new(BIN)
        .args(["cache", "--server", url, "--recipe", r.to_str().unwrap(), "--top-k", "8", "--encoding", "f16"])
        .args(["--rows-per-shard", "8", "--out", out.to_str().unwrap()])
        .args(extra)
        .env("OPENAI_API_KEY", "sk-test-SECRET-1234")
        .output()
        .unwrap()
}

/// The server's capture `remote` against distill's own `local` (top-8, f16): top-1 equal
/// wherever the teacher's top-1 is not <s> or </s> (which the server generates with no log-prob),
/// shared log-probs within f16 rounding, and `inspect --against` counting the same. `shared`:
/// the ids whose pieces other ids share (keys that name no single id, left in the tail unless
/// the top-1, which the capture finds by generating under logit biases). Returns how many
/// positions' top-1 was one of them, by id.
fn agrees_with_local(local: &Path, remote: &Path, shared: &[i64]) -> std::collections::BTreeMap<i64, usize> {
    let (a, b) = (CacheReader::open(local).unwrap(), CacheReader::open(remote).unwrap());
    assert_eq!((a.n_rows(), b.manifest().tail_samples), (b.n_rows(), 0));
    assert!(b.manifest().teacher.starts_with("server http://127.0.0.1:"), "{}", b.manifest().teacher);
    let read = |c: &CacheReader| {
        let rows: Vec<usize> = (0..c.n_rows()).collect();
        let (mut ids, mut logp, mut tail) = (Vec::new(), Vec::new(), Vec::new());
        c.read_rows(&rows, &mut ids, &mut logp, &mut tail).unwrap();
        (ids, logp, tail)
    };
    let ((xi, xl, xt), (yi, yl, _)) = (read(&a), read(&b));
    // <s> (1) is left out of llama-cpp-python's answers and </s> (2) ends a generation.
    let readable = |id: i64| id != 1 && id != 2;
    let (mut known_top1, mut top1_equal, mut worst) = (0usize, 0usize, 0f32);
    let mut found = std::collections::BTreeMap::new();
    for p in 0..xt.len() {
        let (x, y) = (&xi[p * 8..p * 8 + 8], &yi[p * 8..p * 8 + 8]);
        assert!(
            y[1..].iter().all(|id| !shared.contains(id)),
            "position {p}: a shared piece's id below the top-1: {y:?}"
        );
        if readable(x[0]) {
            known_top1 += 1;
            top1_equal += usize::from(x[0] == y[0]);
            if shared.contains(&x[0]) {
                *found.entry(x[0]).or_insert(0) += 1;
            }
        }
        // Same ids, log-probs within f16 rounding (transformers' f32 vs distill's f32).
        for (i, id) in x.iter().enumerate().filter(|(i, id)| !shared.contains(id) || (*i == 0 && readable(**id))) {
            match y.iter().position(|q| q == id) {
                Some(j) => worst = worst.max((xl[p * 8 + i] - yl[p * 8 + j]).abs()),
                // A tie at the top-8's edge may pick another id: then it is as likely as y's 8th.
                None => assert!((xl[p * 8 + i] - yl[p * 8 + 7]).abs() < 1e-3, "position {p}: id {id} not in {y:?}"),
            }
        }
    }
    assert!(known_top1 > xt.len() / 2, "{known_top1} of {} positions", xt.len());
    assert_eq!(top1_equal, known_top1, "top-1 ids where the teacher's top-1 is not <s> or </s>");
    assert!(worst < 2e-2, "largest log-prob difference {worst}");
    // `inspect --against` counts the same.
    let o = distill(&["inspect", remote.to_str().unwrap(), "--against", local.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let c: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(c["positions"].as_u64(), Some(xt.len() as u64));
    assert_eq!(c["top1_equal"].as_u64(), Some(top1_equal as u64));
    found
}

#[test]
fn server_cache_agrees_with_the_local_capture_resumes_and_trains() {
    let d = tmpdir("server");
    let t = common::lm_teacher(&d);
    let text = d.join("corpus.txt");
    common::lm_corpus(&text, 40);
    let r = recipe(&d, &t, &text);
    let rs = r.to_str().unwrap();

    // distill's own capture, no tail samples: the reference.
    let local = d.join("local");
    let o = distill(&[
        "cache",
        "--recipe",
        rs,
        "--top-k",
        "8",
        "--tail-samples",
        "0",
        "--encoding",
        "f16",
        "--rows-per-shard",
        "8",
        "--out",
        local.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));

    let auth = d.join("auth.log");
    let srv = Standin::start(&d, &t, &["--auth-log", auth.to_str().unwrap()]);
    let remote = d.join("remote");
    let o = capture(&srv.url, &r, &remote, &["--concurrency", "3"]);
    assert!(o.status.success(), "{}", stderr(&o));
    drop(srv);
    agrees_with_local(&local, &remote, &[0, 1, 2]);
    // The key went to the server, and into no file of the capture.
    let sent = std::fs::read_to_string(&auth).unwrap();
    assert!(sent.lines().all(|l| l == "Bearer sk-test-SECRET-1234"), "{sent}");
    for f in common::files(&remote) {
        let bytes = std::fs::read(remote.join(&f)).unwrap();
        assert!(!String::from_utf8_lossy(&bytes).contains("SECRET"), "the key is in {f}");
    }

    // The server dies mid-capture (after 25 answers: 3 shards of 8 rows need 48); run again
    // against new ones: it resumes at the last whole shard and ends byte-identical.
    let part = d.join("part");
    let dying = Standin::start(&d, &t, &["--exit-after", "25"]);
    let o = capture(&dying.url, &r, &part, &[]);
    assert_error(&o, &["teacher server", "row "]);
    drop(dying);
    let kept = common::json(&part.join("manifest.json"))["shards"].as_array().map_or(0, Vec::len);
    assert!(kept >= 1, "a whole shard before the server died");
    // Two servers of the model this time, taking the rows in turn.
    let (again, other) = (Standin::start(&d, &t, &[]), Standin::start(&d, &t, &[]));
    let o = capture(&format!("{},{}", again.url, other.url), &r, &part, &["--concurrency", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    drop((again, other));
    let m = CacheReader::open(&remote).unwrap().manifest().shards.len();
    for i in 0..m {
        let f = format!("shard-{i:05}.bin");
        assert!(std::fs::read(part.join(&f)).unwrap() == std::fs::read(remote.join(&f)).unwrap(), "{f} differs");
    }

    // vLLM's dialect (ids in, `prompt_logprobs` keyed by ids): the same cache, special ids
    // included (no key is ambiguous).
    let vllm = Standin::start(&d, &t, &["--vllm"]);
    let by_ids = d.join("vllm");
    let o = capture(&vllm.url, &r, &by_ids, &["--api", "vllm", "--concurrency", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    drop(vllm);
    let o = distill(&["inspect", by_ids.to_str().unwrap(), "--against", local.to_str().unwrap(), "--json"]);
    let c: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(c["top1_equal"], c["positions"], "{c}");
    assert!(c["max_abs_logp_diff"].as_f64().unwrap() < 2e-2 && c["topk_overlap"].as_f64().unwrap() > 0.99, "{c}");

    // Trained from the server's cache vs the local one: the same student up to f16 rounding.
    let ppl = |cache: &Path, out: &str| {
        let run = d.join(out);
        let set = format!("teacher.cache={}", cache.display());
        let o = distill(&["run", rs, "--out", run.to_str().unwrap(), "--set", &set]);
        assert!(o.status.success(), "{}", stderr(&o));
        (common::summary(&run)["students"][0]["validation"]["perplexity"].as_f64().unwrap(), stderr(&o))
    };
    let (p_local, _) = ppl(&local, "run-local");
    let (p_remote, log) = ppl(&remote, "run-remote");
    assert!(log.contains("captured from server http://127.0.0.1:"), "{log}");
    assert!(
        (p_remote / p_local - 1.0).abs() < 0.01,
        "PPL {p_remote} from the server's cache, {p_local} from the local one"
    );

    // `[teacher.server]` in the recipe: `check` reaches the server; the run captures into
    // RUN/teacher-cache and trains from it (u8 log-probs: within 3% of the local f16 cache's).
    let srv = Standin::start(&d, &t, &[]);
    let served = d.join("served.toml");
    let table = format!("dtype = \"f32\"\n[teacher.server]\nurl = \"{}\"\ntop_k = 8\nconcurrency = 2\n", srv.url);
    std::fs::write(&served, std::fs::read_to_string(&r).unwrap().replacen("dtype = \"f32\"\n", &table, 1)).unwrap();
    let o = distill(&["check", served.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let run = d.join("run-served");
    let o = distill(&["run", served.to_str().unwrap(), "--out", run.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    drop(srv);
    let m = common::json(&run.join("teacher-cache/manifest.json"));
    assert!(m["teacher"].as_str().unwrap().starts_with("server http://127.0.0.1:"), "{m}");
    let p_served = common::summary(&run)["students"][0]["validation"]["perplexity"].as_f64().unwrap();
    assert!((p_served / p_local - 1.0).abs() < 0.03, "PPL {p_served} with [teacher.server], {p_local} local");
    // With the server gone, `check` says so in one line.
    let o = distill(&["check", served.to_str().unwrap()]);
    assert_error(&o, &["teacher server: http://127.0.0.1:", "/v1/models"]);
}

/// llama-cpp-python keys its log-probs by strings decoded with `errors="ignore"`, so a token of
/// partial UTF-8 (`" \xe2"`) has the key of a whole one (`" "`): the teacher's tokenizer here
/// has `w92` spelled `w91` + an invalid byte (U+FFFD), so key `w91` names ids 94 and 95. Where
/// either leads, the capture generates under logit biases to find which; the stored top-1 is
/// the local capture's at every position (but <s>, </s>), both ids found.
#[test]
fn server_top1_behind_a_shared_key_is_found() {
    let d = tmpdir("server-shared");
    let t = common::lm_teacher(&d);
    let tj = t.join("tokenizer.json");
    let spelled = std::fs::read_to_string(&tj).unwrap().replace("\"w92\"", "\"w91\\ufffd\"");
    std::fs::write(&tj, spelled).unwrap();
    let text = d.join("corpus.txt");
    common::lm_corpus(&text, 40);
    let r = recipe(&d, &t, &text);
    let local = d.join("local");
    let o = distill(
        &["cache", "--recipe", r.to_str().unwrap(), "--top-k", "8", "--tail-samples", "0"]
            .into_iter()
            .chain(["--encoding", "f16", "--rows-per-shard", "8", "--out", local.to_str().unwrap()])
            .collect::<Vec<_>>(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let srv = Standin::start(&d, &t, &[]);
    let remote = d.join("remote");
    let o = capture(&srv.url, &r, &remote, &["--concurrency", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let found = agrees_with_local(&local, &remote, &[0, 1, 2, 94, 95]);
    assert!(
        found.get(&94).is_some_and(|&n| n > 0) && found.get(&95).is_some_and(|&n| n > 0),
        "leaders found: {found:?}"
    );
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(said.contains("a top-1 behind a shared key found at"), "{said}");
}

#[test]
fn server_faults_end_in_one_line_naming_the_row() {
    let d = tmpdir("server-faults");
    let t = common::lm_teacher(&d);
    let text = d.join("corpus.txt");
    common::lm_corpus(&text, 12);
    let r = recipe(&d, &t, &text);

    // 503 twice, then answers: retried, the capture completes.
    let busy = Standin::start(&d, &t, &["--fail-first", "2"]);
    let o = capture(&busy.url, &r, &d.join("busy"), &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains(", 2 retries,"), "{}", String::from_utf8_lossy(&o.stdout));
    drop(busy);

    // A server that never answers: one line after the timeout (2 attempts of 1 s).
    let hang = Standin::start(&d, &t, &["--hang"]);
    let t0 = Instant::now();
    let o = capture(&hang.url, &r, &d.join("hang"), &["--timeout", "1", "--attempts", "2"]);
    assert_error(&o, &["teacher server: row 0", "no answer within 1 s (2 attempts"]);
    assert!(t0.elapsed() < Duration::from_secs(30));
    drop(hang);

    let s = Standin::start(&d, &t, &["--vllm", "--fewer"]);
    let o = capture(&s.url, &r, &d.join("vllm-fewer"), &["--api", "vllm"]);
    assert_error(&o, &["teacher server: row 0, position 0", "log-probs where 8 were asked"]);
    drop(s);
    for (flag, want) in [
        ("--malformed", "the answer is not JSON"),
        ("--fewer", "3 log-probs where 16 were asked"), // 2 + the keyed token's own
        ("--add-bos", "the server made 17 tokens of the row's 16"),
    ] {
        let s = Standin::start(&d, &t, &[flag]);
        let o = capture(&s.url, &r, &d.join(flag.trim_start_matches('-')), &[]);
        assert_error(&o, &["teacher server: row 0", want]);
        drop(s);
    }
}

/// A black-box teacher (`generate-data --server`): the stand-in's chat endpoint answers each
/// prompt; greedy answers equal what distill's own generation of the same teacher writes, the
/// records carry the server's log-probs, the key stays out of every file, a server that dies
/// mid-set is resumed (another port, same model) into the same records, and a student trained
/// on the answers (CE on the assistant turns: sequence-level KD) fits held-out answers better
/// than the untouched student.
#[test]
fn generate_data_from_a_black_box_teacher() {
    let d = tmpdir("server-blackbox");
    let t = common::lm_teacher(&d);
    let corpus = d.join("corpus.txt");
    common::lm_corpus(&corpus, 112);
    let text = std::fs::read_to_string(&corpus).unwrap();
    let starts: Vec<String> = text
        .split("\n\n")
        .filter(|p| !p.is_empty())
        .map(|p| p.split(' ').take(4).collect::<Vec<_>>().join(" "))
        .collect();
    let prompts = |name: &str, range: std::ops::Range<usize>| {
        let p = d.join(name);
        let lines: Vec<String> = starts[range].iter().map(|s| format!("{{\"prompt\": \"{s}\"}}")).collect();
        std::fs::write(&p, lines.join("\n") + "\n").unwrap();
        p
    };
    let (train, held) = (prompts("train.jsonl", 0..96), prompts("held.jsonl", 96..112));
    let gen = |url: &str, p: &Path, out: &Path, extra: &[&str]| {
        Command::new(BIN)
            .args(["generate-data", "--server", url, "--prompts", p.to_str().unwrap(), "--max-tokens", "12"])
            .args(["--temperature", "0", "--batch", "4", "--out", out.to_str().unwrap()])
            .args(extra)
            .env("OPENAI_API_KEY", "sk-test-SECRET-1234")
            .output()
            .unwrap()
    };
    let srv = Standin::start(&d, &t, &[]);
    let bb = d.join("bb.jsonl");
    let o = gen(&srv.url, &train, &bb, &["--logprobs", "3", "--concurrency", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let recs = common::jsonl(&bb);
    assert_eq!(recs.len(), 96);
    // distill's own greedy writing with the same teacher and prompts (no template: the stand-in
    // continues the user turn's text).
    let local = d.join("local.jsonl");
    let o = distill(&[
        "generate-data",
        "--model",
        t.to_str().unwrap(),
        "--prompts",
        train.to_str().unwrap(),
        "--max-tokens",
        "12",
        "--temperature",
        "0",
        "--out",
        local.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mine = common::jsonl(&local);
    for (r, m) in recs.iter().zip(&mine) {
        assert_eq!(r["messages"][0]["content"], r["prompt"]);
        assert_eq!(
            r["messages"][1]["content"].as_str().unwrap().trim(),
            m["completion"].as_str().unwrap().trim(),
            "{r}"
        );
        let lps = r["logprobs"].as_array().unwrap();
        assert_eq!(lps.len() as u64, r["new_tokens"].as_u64().unwrap());
        for e in lps {
            let top = e["top_logprobs"].as_array().unwrap();
            assert_eq!(top.len(), 3);
            assert_eq!(top[0][0], e["token"], "greedy: the token is the most likely");
            assert!((top[0][1].as_f64().unwrap() - e["logprob"].as_f64().unwrap()).abs() < 1e-6);
        }
    }
    assert!(!std::fs::read_to_string(&bb).unwrap().contains("SECRET"));
    drop(srv);

    // Killed after 5 answers (part 2 of 24 unfinished), resumed against a new server.
    let part = d.join("resumed.jsonl");
    let dying = Standin::start(&d, &t, &["--exit-after", "5"]);
    let o = gen(&dying.url, &train, &part, &["--logprobs", "3"]);
    assert_error(&o, &["teacher server: prompt 5"]);
    drop(dying);
    let again = Standin::start(&d, &t, &["--fail-first", "1"]);
    let o = gen(&again.url, &train, &part, &["--logprobs", "3"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(&part).unwrap(), std::fs::read(&bb).unwrap(), "resumed ≠ uninterrupted");

    // The answers to the held-out prompts, then a student fit to the training answers.
    let held_bb = d.join("held-bb.jsonl");
    assert!(gen(&again.url, &held, &held_bb, &[]).status.success());
    drop(again);
    // The conversations are rendered by the teacher's chat template (the stand-in used none).
    let template = "{% for m in messages %}{% if m['role'] == 'assistant' %}</s> {{ m['content'] }} </s> \
                    {% else %}<s> {{ m['content'] }} {% endif %}{% endfor %}{% if add_generation_prompt %}</s> {% endif %}";
    std::fs::write(t.join("chat_template.jinja"), template).unwrap();
    // The student: another model with the teacher's tokenizer (the untied 2-layer fixture).
    let student = d.join("student");
    std::fs::create_dir_all(&student).unwrap();
    let llama = common::fixtures().join("llama");
    for f in ["llama_untied/config.json", "llama_untied/model.safetensors", "tokenizer.json"] {
        std::fs::copy(llama.join(f), student.join(Path::new(f).file_name().unwrap())).unwrap();
    }
    let r = d.join("seqkd.toml");
    let recipe = format!(
        "task = \"causal-lm\"\nname = \"seqkd\"\nthreads = 1\n[teacher]\npath = \"{t}\"\ndtype = \"f32\"\n[student]\nfrom = \"{s}\"\n\
         [data]\nsources = [\"{bb}\"]\nval_sources = [\"{hb}\"]\npack = {{ seq_len = 32 }}\n\
         [train]\nsteps = 30\nbatch_size = 8\nlr = 3e-3\n[distill]\ntemperature = 1.0\nalpha = 0.0\nscratch_twin = false\n[eval]\nprompts = []\n",
        t = t.display(),
        s = student.display(),
        bb = bb.display(),
        hb = held_bb.display()
    );
    std::fs::write(&r, recipe).unwrap();
    let run = d.join("run");
    let o = distill(&["run", r.to_str().unwrap(), "--out", run.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s = common::summary(&run);
    let rows = s["students"].as_array().unwrap();
    let ppl = |untouched: bool| {
        let row = rows.iter().find(|x| x["role"].as_str().unwrap().contains("untouched") == untouched).unwrap();
        row["validation"]["perplexity"].as_f64().unwrap()
    };
    let (trained, untouched) = (ppl(false), ppl(true));
    assert!(trained < 0.8 * untouched, "held-out PPL {trained} trained on the answers, {untouched} untouched");
}

/// llama-cpp-python's OpenAI server (`python -m llama_cpp.server`, installed by scripts/setup.sh)
/// on a free loopback port, serving `gguf` with every position's logits; killed when dropped.
fn llama_cpp_server(gguf: &Path) -> Standin {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(common::python())
        .args(["-m", "llama_cpp.server", "--model", gguf.to_str().unwrap(), "--logits_all", "true"])
        .args(["--n_ctx", "512", "--n_threads", "2", "--host", "127.0.0.1", "--port", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let srv = Standin { child, url: format!("http://127.0.0.1:{port}") };
    // uvicorn binds once the model is loaded.
    let t0 = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(t0.elapsed() < Duration::from_secs(120), "llama-cpp-python's server did not start");
        std::thread::sleep(Duration::from_millis(200));
    }
    srv
}

/// The real server: SmolLM2-135M-Instruct's Q4_1 GGUF served by llama.cpp against distill's own
/// capture of the same GGUF (dequantized, f32) on the same rows of English text: top-1 equal at
/// every position whose top-1 leads by ≥ 0.5 nat (the " " of SmolLM2, shared by 38 ids in
/// llama-cpp-python's string keys, found by generating under logit biases), the top-1 log-prob
/// within llama.cpp's noise (it rounds activations to 8 bits for Q4_1 products: p99 |Δ| 0.23
/// in bench/server_capture.sh); and the black-box path: the chat endpoint's greedy answers,
/// each token its own most likely alternative.
#[test]
fn real_llama_cpp_server_agrees_with_distill() {
    let d = tmpdir("server-real");
    let gguf = distill::io::fetch::asset("smollm2").unwrap().root_path().join("SmolLM2-135M-Instruct.Q4_1.gguf");
    let text = d.join("text.txt");
    std::fs::write(
        &text,
        "The committee met on Tuesday to review the budget for the coming year. Several members argued that the \
         city should spend more on roads and schools, while others wanted to lower taxes. After a long discussion, \
         they agreed to hold a public hearing next month.\n\n\
         Rivers carry water from the mountains to the sea. Along the way they shape valleys, deposit soil on their \
         banks and provide homes for fish, birds and many other animals. People have built towns near rivers for \
         thousands of years, because the water is useful for drinking, farming and travel.\n\n\
         The train left the station at seven o'clock in the morning. Most of the passengers were reading newspapers \
         or looking out of the windows at the green fields. A small boy asked his mother how long the journey would \
         take, and she told him that they would arrive before lunch.\n",
    )
    .unwrap();
    let r = d.join("r.toml");
    std::fs::write(
        &r,
        format!(
            "task = \"causal-lm\"\nname = \"real\"\n[teacher]\npath = \"{}\"\ndtype = \"f32\"\n[student]\nlayers = 1\nhidden = 16\n\
             heads = 2\nkv_heads = 1\nintermediate = 32\n[data]\nsources = [\"{}\"]\nsplit = {{ val_fraction = 0.0 }}\n\
             pack = {{ seq_len = 64 }}\n[train]\nsteps = 1\nbatch_size = 1\nlr = 1e-3\n[distill]\ntemperature = 1.0\nalpha = 0.5\n\
             [eval]\nprompts = []\n",
            gguf.display(),
            text.display()
        ),
    )
    .unwrap();
    let local = d.join("local");
    let o = distill(&[
        "cache",
        "--recipe",
        r.to_str().unwrap(),
        "--top-k",
        "16",
        "--tail-samples",
        "0",
        "--encoding",
        "f16",
        "--out",
        local.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let srv = llama_cpp_server(&gguf);
    let remote = d.join("remote");
    let o = Command::new(BIN)
        .args(["cache", "--server", &srv.url, "--recipe", r.to_str().unwrap(), "--top-k", "16", "--encoding", "f16"])
        .args(["--out", remote.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let o = distill(&["inspect", remote.to_str().unwrap(), "--against", local.to_str().unwrap(), "--json"]);
    let c: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    eprintln!("{c}");
    let n = |k: &str| c[k].as_f64().unwrap();
    assert!(n("positions") >= 128.0, "{c}");
    assert!(n("confident") > 0.3 * n("positions") && n("confident_top1_equal") == n("confident"), "{c}");
    assert!(n("top1_equal") > 0.9 * n("positions"), "{c}");
    assert!(n("top1_p99_abs_logp_diff") < 0.5 && n("top1_mean_abs_logp_diff") < 0.1, "{c}");
    assert!(n("mean_abs_logp_diff") < 0.15 && n("topk_overlap") > 0.9, "{c}");

    // Black-box: two instructions through the chat endpoint, greedy, with 3 alternatives a token.
    let prompts = d.join("p.jsonl");
    std::fs::write(
        &prompts,
        "{\"prompt\": \"What is the capital of France?\"}\n{\"prompt\": \"Name three colors.\"}\n",
    )
    .unwrap();
    let out = d.join("answers.jsonl");
    let o = Command::new(BIN)
        .args(["generate-data", "--server", &srv.url, "--prompts", prompts.to_str().unwrap(), "--max-tokens", "24"])
        .args(["--temperature", "0", "--logprobs", "3", "--out", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    drop(srv);
    let recs = common::jsonl(&out);
    assert_eq!(recs.len(), 2);
    for r in &recs {
        let answer = r["messages"][1]["content"].as_str().unwrap();
        assert!(answer.chars().filter(|c| c.is_alphabetic()).count() >= 4, "{r}");
        let lps = r["logprobs"].as_array().unwrap();
        assert!(!lps.is_empty() && lps.len() as u64 <= r["new_tokens"].as_u64().unwrap(), "{r}");
        for e in lps {
            let top = e["top_logprobs"].as_array().unwrap();
            assert_eq!(top.len(), 3, "{e}");
            assert!((top[0][1].as_f64().unwrap() - e["logprob"].as_f64().unwrap()).abs() < 1e-5, "greedy: {e}");
        }
    }
}
