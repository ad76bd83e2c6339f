//! Data-parallel distillation over c10d (gloo on 127.0.0.1, one thread per rank): two ranks train
//! what one process trains, within 1e-5; only rank 0 writes; a lost rank is one error line
//! naming it, and `--resume` then finishes; a sharded cache capture merges into the
//! single-machine capture byte for byte.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{assert_error, files, ok, tmpdir, BIN};

/// Runs `distill` with its temporary directory (rank 1's scratch) under `tmp`.
fn distill_in<S: AsRef<std::ffi::OsStr>>(tmp: &Path, args: &[S]) -> Output {
    std::fs::create_dir_all(tmp).unwrap();
    Command::new(BIN).args(args).env("TMPDIR", tmp).output().unwrap()
}

/// The `param.*` tensors of a phase's checkpoint.
fn params(ckpt: &Path) -> BTreeMap<String, tch::Tensor> {
    tch::Tensor::read_safetensors(ckpt).unwrap().into_iter().filter(|(k, _)| k.starts_with("param.")).collect()
}

fn max_abs_diff(a: &Path, b: &Path) -> f64 {
    let (a, b) = (params(a), params(b));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    assert!(!a.is_empty());
    a.iter().map(|(k, t)| (t - &b[k]).abs().max().double_value(&[])).fold(0.0, f64::max)
}

/// Trains `recipe` (with `extra` arguments) in one process and in two ranks (`--nproc 2`); the
/// weights and loss curves of every trained phase agree, and the two run directories hold the
/// same files.
fn one_vs_two(d: &Path, recipe: &Path, phases: &[&str], extra: &[&str]) {
    let (one, two) = (d.join("one"), d.join("two"));
    let rs = recipe.to_str().unwrap();
    let run = |out: &Path, more: &[&str]| {
        let mut a = vec!["run", rs, "--out", out.to_str().unwrap()];
        a.extend(extra);
        a.extend(more);
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    ok(&distill_in(&d.join("tmp1"), &run(&one, &[])));
    let tmp = d.join("tmp2");
    ok(&distill_in(&tmp, &run(&two, &["--nproc", "2"])));
    for ph in phases {
        let (a, b) = (one.join("phases").join(ph), two.join("phases").join(ph));
        let diff = max_abs_diff(&a.join("ckpt.safetensors"), &b.join("ckpt.safetensors"));
        eprintln!("{ph}: 1 process vs 2 ranks, max |Δw| = {diff:e}");
        assert!(diff <= 1e-5, "{ph}: weights differ by {diff}");
        // An LM phase's train.json records the ranks (absent for one process).
        let ranks = |p: &Path| -> Option<u64> {
            let text = std::fs::read_to_string(p.join("train.json")).ok()?;
            serde_json::from_str::<serde_json::Value>(&text).unwrap()["ranks"].as_u64()
        };
        if a.join("train.json").exists() {
            assert_eq!((ranks(&a), ranks(&b)), (None, Some(2)));
        }
        let (la, lb) = (common::losses(&one, ph), common::losses(&two, ph));
        assert_eq!(la.len(), lb.len());
        assert!(la.len() >= 2);
        for (x, y) in la.iter().zip(&lb) {
            assert!((x - y).abs() <= 1e-5 * x.abs().max(1.0), "{ph}: loss {x} vs {y}");
        }
    }
    // Rank 0 wrote what one process writes; rank 1 wrote only into its scratch, now removed.
    assert_eq!(files(&one), files(&two));
    assert_eq!(files(&tmp), Vec::<String>::new());
}

#[test]
fn lm_kd_on_two_ranks_equals_one_process() {
    let d = tmpdir("lm");
    let t = common::lm_teacher(&d);
    let text = d.join("corpus.txt");
    common::lm_corpus(&text, 60);
    let r = lm_recipe(&d, &t, &text, 20);
    one_vs_two(&d, &r, &["kd"], &[]);
}

fn lm_recipe(d: &Path, teacher: &Path, text: &Path, steps: usize) -> PathBuf {
    let r = d.join("lm.toml");
    std::fs::write(
        &r,
        format!(
            r#"
task = "causal-lm"
name = "tiny-dp"
threads = 1
[teacher]
path = "{}"
# Not "auto", which times a matmul: one process and two ranks could choose differently.
dtype = "f32"
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
steps = {steps}
batch_size = 8
lr = 1e-2
warmup_steps = 2
clip_grad_norm = 1.0
[distill]
temperature = 2.0
alpha = 0.8
[eval]
prompts = ["w1 w10"]
max_new_tokens = 4
[checkpoint]
every_steps = 10
"#,
            teacher.display(),
            text.display()
        ),
    )
    .unwrap();
    r
}

#[test]
fn image_kd_on_two_ranks_equals_one_process() {
    let d = tmpdir("image");
    // 201 examples in batches of 50: every epoch ends with a batch of one, which one rank trains
    // on while the other takes part with weight 0.
    common::write_csv(&d.join("train.csv"), 201, 1);
    common::write_csv(&d.join("test.csv"), 60, 2);
    let r = d.join("image.toml");
    std::fs::write(
        &r,
        format!(
            r#"
task = "image-classification"
name = "tiny-dp"
seeds = [0]
threads = 1
[data]
format = "csv"
train = "{0}/train.csv"
test = "{0}/test.csv"
pixel_scale = 16.0
[teacher]
model = {{ type = "mlp", hidden = [32], dropout = 0.0 }}
train = {{ steps = 40, batch_size = 50, lr = 1e-2 }}
[student]
model = {{ type = "mlp", hidden = [16] }}
train = {{ steps = 40, batch_size = 50, lr = 1e-2, optimizer = "sgd", momentum = 0.9 }}
[distill]
temperature = 4.0
alpha = 0.9
[checkpoint]
every_steps = 10
"#,
            d.display()
        ),
    )
    .unwrap();
    one_vs_two(&d, &r, &["teacher-s0", "scratch-s0", "kd-s0-T4"], &[]);
}

/// A free TCP port on 127.0.0.1 for the rendezvous.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Rank `r` of 2 as torchrun starts it: its place in the environment; stdout discarded.
fn rank(tmp: &Path, r: usize, port: u16, args: &[&str]) -> Command {
    std::fs::create_dir_all(tmp).unwrap();
    let mut c = Command::new(BIN);
    c.args(args)
        .env("TMPDIR", tmp)
        .env("RANK", r.to_string())
        .env("LOCAL_RANK", r.to_string())
        .env("WORLD_SIZE", "2")
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

#[test]
fn a_lost_rank_is_one_error_line_and_resume_finishes() {
    let d = tmpdir("kill");
    let t = common::lm_teacher(&d);
    let text = d.join("corpus.txt");
    common::lm_corpus(&text, 60);
    let r = lm_recipe(&d, &t, &text, 400);
    let (rs, out) = (r.to_str().unwrap(), d.join("run"));
    let args = ["run", rs, "--out", out.to_str().unwrap()];
    let port = free_port();
    let mut r0 = rank(&d.join("tmp0"), 0, port, &args).spawn().unwrap();
    let r1 = rank(&d.join("tmp1"), 1, port, &args).spawn().unwrap();
    // Rank 0, the writer, is killed once it has written a checkpoint.
    let ckpt = out.join("phases/kd/ckpt.safetensors");
    let t0 = Instant::now();
    while !ckpt.exists() {
        assert!(t0.elapsed() < Duration::from_secs(120), "no checkpoint after 120 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    r0.kill().unwrap();
    r0.wait().unwrap();
    let t1 = Instant::now();
    let o = r1.wait_with_output().unwrap();
    assert!(t1.elapsed() < Duration::from_secs(60), "rank 1 took {:?} to notice", t1.elapsed());
    assert_error(&o, &["rank 1 of 2", "lost rank 0"]);
    // Whatever rank 0 left is complete: every checkpoint reads back.
    assert!(!params(&ckpt).is_empty());
    let step = |p: &Path| {
        let m = std::fs::read_to_string(p.with_file_name("metrics.jsonl")).unwrap_or_default();
        m.lines().count()
    };
    assert!(step(&ckpt) < 40, "the run finished before the kill");
    // Resumed on two ranks, it finishes, and ends where an uninterrupted one-process run ends.
    ok(&distill_in(&d.join("tmp2"), &["run", rs, "--out", out.to_str().unwrap(), "--resume", "--nproc", "2"]));
    let train = common::json(&out.join("phases/kd/train.json"));
    assert!(train["resumed_from"].as_u64().unwrap() > 0, "{train}");
    let one = d.join("one");
    ok(&distill_in(&d.join("tmp3"), &["run", rs, "--out", one.to_str().unwrap()]));
    let diff = max_abs_diff(&ckpt, &one.join("phases/kd/ckpt.safetensors"));
    assert!(diff <= 1e-5, "resumed weights differ by {diff}");
    // Rank 0's refusal of --out is the job's one error line.
    let o = distill_in(&d.join("tmp4"), &["run", rs, "--out", out.to_str().unwrap(), "--nproc", "2"]);
    assert_error(&o, &["already exists"]);
    // A peer that never comes: one line once DISTILL_DIST_TIMEOUT has passed.
    let alone_out = d.join("alone");
    let alone_args = ["run", rs, "--out", alone_out.to_str().unwrap()];
    let alone = rank(&d.join("tmp5"), 1, free_port(), &alone_args).env("DISTILL_DIST_TIMEOUT", "2").output().unwrap();
    assert_error(&alone, &["rank 1 of 2: could not join the group at 127.0.0.1:", "timed out"]);
    // CUDA ranks need a GPU each (this machine has none): refused before any rank starts.
    if tch::Cuda::device_count() == 0 {
        let o = distill_in(&d.join("tmp4"), &["run", rs, "--out", "x", "--nproc", "2", "--set", "device=cuda"]);
        assert_error(&o, &["--nproc 2 with device `cuda`: one GPU per rank, but libtorch sees 0"]);
    }
    let missing = d.join("missing.toml");
    let o = distill_in(&d.join("tmp4"), &["run", missing.to_str().unwrap(), "--out", "x", "--nproc", "2"]);
    assert_error(&o, &["missing.toml"]);
}

#[test]
fn sharded_capture_merges_into_the_single_capture_byte_for_byte() {
    let d = tmpdir("shard");
    let t = common::lm_teacher(&d);
    let text = d.join("corpus.txt");
    common::lm_corpus(&text, 60);
    let r = lm_recipe(&d, &t, &text, 20);
    // `distill cache` over the recipe's rows: top-k `k` + 4 tail samples, shards of 16 rows.
    let cache_args = |k: &str, out: &Path, extra: &[&str]| {
        let mut args = vec!["cache", "--recipe", r.to_str().unwrap(), "--top-k", k, "--tail-samples", "4"];
        args.extend(["--rows-per-shard", "16", "--batch", "4", "--out", out.to_str().unwrap()]);
        args.extend(extra);
        args.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let capture = |out: &Path, extra: &[&str]| distill_in(&d.join("tmp"), &cache_args("8", out, extra));
    let whole = d.join("whole");
    ok(&capture(&whole, &[]));
    // Three machines' parts (uneven: 8 shards over 3), merged in any order.
    let parts: Vec<PathBuf> = (1..=3).map(|i| d.join(format!("part{i}"))).collect();
    for (i, p) in parts.iter().enumerate() {
        ok(&capture(p, &["--shard", &format!("{}/3", i + 1)]));
    }
    let (p1, p2, p3) = (parts[0].to_str().unwrap(), parts[1].to_str().unwrap(), parts[2].to_str().unwrap());
    let merged = d.join("merged");
    ok(&distill_in(&d.join("tmp"), &["cache", "merge", p3, p1, p2, "--out", merged.to_str().unwrap()]));
    let names = files(&whole);
    assert!(names.len() >= 9, "{names:?}");
    assert_eq!(names, files(&merged));
    for f in &names {
        assert!(std::fs::read(whole.join(f)).unwrap() == std::fs::read(merged.join(f)).unwrap(), "{f} differs");
    }
    // Under torchrun, `--shard auto`: part RANK+1 of WORLD_SIZE into OUT/part-I-of-N.
    let auto = d.join("auto");
    for rank in 0..3 {
        let args = cache_args("8", &auto, &["--shard", "auto"]);
        let o = Command::new(BIN).args(&args).env("RANK", rank.to_string()).env("WORLD_SIZE", "3").output().unwrap();
        ok(&o);
    }
    let auto_parts: Vec<String> = (1..=3).map(|i| auto.join(format!("part-{i}-of-3")).display().to_string()).collect();
    let mut args = vec!["cache", "merge"];
    args.extend(auto_parts.iter().map(String::as_str));
    let merged_auto = d.join("merged-auto");
    args.extend(["--out", merged_auto.to_str().unwrap()]);
    ok(&distill_in(&d.join("tmp"), &args));
    assert!(names.iter().all(|f| std::fs::read(whole.join(f)).unwrap() == std::fs::read(merged_auto.join(f)).unwrap()));
    // Each part holds only its shards; together, every shard once.
    let counts: Vec<usize> = parts.iter().map(|p| files(p).len() - 1).collect();
    assert_eq!(counts.iter().sum::<usize>(), names.len() - 1);
    assert!(counts.iter().all(|&c| c >= 2), "{counts:?}");

    // Parts that do not make one capture: one error line each.
    let err = |args: &[&str], want: &[&str]| assert_error(&distill_in(&d.join("tmp"), args), want);
    let out = d.join("bad");
    let o = out.to_str().unwrap();
    err(&["cache", "merge", p1, p3, "--out", o], &["part 2 of 3 is missing"]);
    err(&["cache", "merge", p1, p1, p2, p3, "--out", o], &["part 1 is given twice"]);
    let other = d.join("other");
    ok(&distill_in(&d.join("tmp"), &cache_args("6", &other, &["--shard", "2/3"])));
    err(&["cache", "merge", p1, other.to_str().unwrap(), p3, "--out", o], &["top_k"]);
    // A part is not a cache to train from.
    err(&["inspect", p1, "--verify"], &["part 1 of 3", "distill cache merge"]);
    err(&["cache", "--recipe", r.to_str().unwrap(), "--shard", "0/3", "--out", o], &["--shard `0/3`"]);
    err(&["cache", "--recipe", r.to_str().unwrap(), "--shard", "auto", "--out", o], &["--shard auto", "RANK"]);
    err(&["run", r.to_str().unwrap(), "--out", o, "--set", &format!("teacher.cache={p1}")], &["part 1 of 3"]);

    // The merged cache as the teacher: two ranks train what one process trains.
    one_vs_two(&d, &r, &["kd"], &["--set", &format!("teacher.cache={}", merged.display())]);
}

/// A 2-rank run SIGKILLed anywhere (the launcher, its ranks with it) resumes, each time, to the
/// bytes of an uninterrupted 2-rank run.
#[test]
fn kill_9_soak_data_parallel_run() {
    let d = tmpdir("soak");
    let t = common::lm_teacher(&d);
    let text = d.join("corpus.txt");
    common::lm_corpus(&text, 60);
    let r = lm_recipe(&d, &t, &text, 60);
    let args = |out: &Path, resume: bool| {
        let mut a: Vec<String> =
            ["run", r.to_str().unwrap(), "--out", out.to_str().unwrap(), "--nproc", "2"].map(String::from).to_vec();
        if resume {
            a.push("--resume".into());
        }
        a
    };
    let reference = d.join("reference");
    let span = common::run_ok(BIN, &args(&reference, false));
    // SIGKILL the launcher at random points (its ranks die with it), resume each time.
    let out = d.join("killed");
    let killed = common::kill_chain(BIN, &args(&out, false), &args(&out, true), &out, span, common::soak_kills(), 19);
    assert!(killed >= 1, "no run was killed");
    let (a, b) = (common::models(&reference), common::models(&out));
    assert_eq!(a.len(), b.len());
    for ((pa, ba), (pb, bb)) in a.iter().zip(&b) {
        assert_eq!(pa, pb);
        assert!(ba == bb, "{} differs after {killed} kills", pa.display());
    }
}
