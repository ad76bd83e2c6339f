//! The real `distill` binary on small data sets it makes itself: end-to-end numbers, exact
//! resume after `kill -9`, and one clear error line for each kind of bad input.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

mod common;
use common::{assert_error, distill, stderr, summary, tmpdir, BIN};

fn tiny_recipe(dir: &Path) -> PathBuf {
    common::write_csv(&dir.join("train.csv"), 600, 1);
    common::write_csv(&dir.join("test.csv"), 200, 2);
    let r = dir.join("tiny.toml");
    std::fs::write(
        &r,
        format!(
            r#"
task = "image-classification"
name = "tiny"
seeds = [0]
threads = 1
[data]
format = "csv"
train = "{0}/train.csv"
test = "{0}/test.csv"
pixel_scale = 16.0
[teacher]
model = {{ type = "mlp", hidden = [64, 64], dropout = 0.2 }}
jitter = 1
train = {{ epochs = 10, batch_size = 50, lr = 1e-2 }}
[student]
model = {{ type = "mlp", hidden = [16] }}
train = {{ epochs = 10, batch_size = 50, lr = 1e-2 }}
[distill]
temperature = 4.0
alpha = 0.9
sweep = [2.0]
[checkpoint]
every_steps = 10
"#,
            dir.display()
        ),
    )
    .unwrap();
    r
}

/// `distill.ensemble`: after the seeds, the average of their teachers is evaluated (not trained)
/// and one more student is distilled from it; one seed is a named error.
#[test]
fn teacher_ensemble_is_evaluated_and_distilled() {
    let d = tmpdir("ensemble");
    let r = tiny_recipe(&d);
    let out = d.join("run");
    let sets = ["--set", "seeds=[0, 1]", "--set", "distill.sweep=[]", "--set", "distill.ensemble=true"];
    let mut args = vec!["run", r.to_str().unwrap(), "--out", out.to_str().unwrap()];
    args.extend(sets);
    let o = distill(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let s = summary(&out);
    let res = s["results"].as_array().unwrap();
    let roles: Vec<&str> = res.iter().map(|r| r["role"].as_str().unwrap()).collect();
    assert_eq!(
        roles,
        [
            "teacher",
            "student-scratch",
            "student-kd",
            "teacher",
            "student-scratch",
            "student-kd",
            "teacher-ensemble",
            "student-kd-ensemble"
        ]
    );
    let (ens, kd_ens) = (&res[6], &res[7]);
    assert_eq!(ens["params"], 2 * res[0]["params"].as_i64().unwrap());
    assert_eq!(ens["compression_ratio"], 0.5);
    assert_eq!(ens["steps"], 0);
    assert_eq!(kd_ens["temperature"], 4.0);
    assert_eq!(kd_ens["params"], res[1]["params"]);
    assert!(kd_ens["steps"].as_i64().unwrap() > 0);
    for r in [ens, kd_ens] {
        assert!(r["test_errors"].as_i64().unwrap() < 20, "{r}");
    }
    let e = |r: &serde_json::Value| r["test_errors"].as_f64().unwrap();
    let want = (e(&res[1]) - e(kd_ens)) / (e(&res[1]) - e(ens));
    if e(&res[1]) != e(ens) {
        assert!((s["ensemble_gap_recovered"].as_f64().unwrap() - want).abs() < 1e-12);
    }
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(table.contains("teacher-ensemble") && table.contains("student-kd-ensemble"), "{table}");

    let o = distill(&["check", r.to_str().unwrap(), "--set", "distill.ensemble=true"]);
    assert_error(&o, &["distill.ensemble needs at least two seeds", "seeds = [0]"]);
}

#[test]
fn csv_run_reports_numbers_in_summary() {
    let d = tmpdir("csv");
    let r = tiny_recipe(&d);
    let out = d.join("run");
    let o = distill(&["run", r.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s = summary(&out);
    let res = s["results"].as_array().unwrap();
    let roles: Vec<&str> = res.iter().map(|r| r["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["teacher", "student-scratch", "student-kd", "student-kd"]);
    // 64-64-64-10 teacher and 64-16-10 student.
    assert_eq!(res[0]["params"], 64 * 64 + 64 + 64 * 64 + 64 + 64 * 10 + 10);
    assert_eq!(res[1]["params"], 64 * 16 + 16 + 16 * 10 + 10);
    let ratio = res[1]["compression_ratio"].as_f64().unwrap();
    assert!((ratio - 8970.0 / 1210.0).abs() < 1e-9, "{ratio}");
    assert_eq!(res[2]["temperature"], 4.0);
    assert_eq!(res[3]["temperature"], 2.0);
    for r in res {
        let errs = r["test_errors"].as_i64().unwrap();
        assert_eq!(r["test_total"], 200);
        assert!((r["test_accuracy"].as_f64().unwrap() - (1.0 - errs as f64 / 200.0)).abs() < 1e-12);
        // The classes are well separated: every model must learn them.
        assert!(errs < 20, "{} has {errs} test errors", r["role"]);
        assert!(r["latency_ms_per_1k"].as_f64().unwrap() > 0.0);
    }
    // Every phase logged its loss, and it went down.
    let losses = common::losses(&out, "teacher-s0");
    assert_eq!(losses.len(), 6); // 120 steps, a line every 20
    assert!(losses[5] < losses[0], "{losses:?}");
    assert!(out.join("recipe.toml").is_file());
}

/// Runs `recipe` with `--json` on a synthetic 8×8 CSV set of (train, test) images instead of
/// its own data (plus `extra` overrides) and returns summary.json.
fn run_on_csv(name: &str, recipe: &str, (train, test): (usize, usize), extra: &[&str]) -> serde_json::Value {
    let d = tmpdir(name);
    common::write_csv(&d.join("train.csv"), train, 3);
    common::write_csv(&d.join("test.csv"), test, 4);
    let out = d.join("run");
    let mut sets = vec![
        "data.format=csv".to_string(),
        format!("data.train={}", d.join("train.csv").display()),
        format!("data.test={}", d.join("test.csv").display()),
        "data.pixel_scale=16".to_string(),
    ];
    sets.extend(extra.iter().map(|s| s.to_string()));
    let mut args = vec!["run", recipe, "--out", out.to_str().unwrap(), "--json"];
    for s in &sets {
        args.extend(["--set", s]);
    }
    let o = distill(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn fashion_recipe_runs_on_a_csv_set_by_overriding_data_only() {
    let s = run_on_csv("fashion-csv", "recipes/fashion-hinton.toml", (1000, 100), &[]);
    let res = s["results"].as_array().unwrap();
    // 3 seeds × (teacher, scratch, kd at T=2) + sweep {1, 4, 8, 20}.
    assert_eq!(res.len(), 13);
    // CNN teacher on 8×8 images: conv 1→32, conv 32→64, two 2×2 pools (8→4→2), fc 256→1024, out.
    assert_eq!(res[0]["params"], (32 * 9 + 32) + (64 * 32 * 9 + 64) + (64 * 2 * 2 * 1024 + 1024) + (1024 * 10 + 10));
    assert_eq!(res[1]["params"], 64 * 800 + 800 + 800 * 800 + 800 + 800 * 10 + 10);
    for r in res {
        // 8 epochs-worth of 8 steps is little training, but far better than chance (90 errors).
        assert!(r["test_errors"].as_i64().unwrap() < 45, "{r}");
        assert_eq!(r["train_examples"], 1000);
    }
}

/// `recipes/fashion-fewlabel.toml` (KD with unlabeled data) at a tiny budget on a CSV set: the
/// scratch student trains on the labelled subset alone, the KD student on every image with
/// labels for the subset only, and both learn.
#[test]
fn fewlabel_recipe_trains_the_scratch_student_on_the_labelled_subset_only() {
    let sets = [
        "data.labeled_subset=150",
        "teacher.train.epochs=8",
        "teacher.train.warmup_steps=0",
        "student.train.steps=60",
        "student.train.warmup_steps=0",
        "student.model.hidden=[64]",
    ];
    let s = run_on_csv("fewlabel", "recipes/fashion-fewlabel.toml", (600, 100), &sets);
    let res = s["results"].as_array().unwrap();
    let roles: Vec<&str> = res.iter().map(|r| r["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["teacher", "student-scratch", "student-kd"]);
    // (train_examples, labeled_examples, steps): the teacher sees every label; the scratch
    // student only the 150 labelled images; the KD student all 600 images, 150 labels.
    let seen: Vec<(i64, i64, i64)> = res
        .iter()
        .map(|r| {
            (
                r["train_examples"].as_i64().unwrap(),
                r["labeled_examples"].as_i64().unwrap(),
                r["steps"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(seen, [(600, 600, 40), (150, 150, 60), (600, 150, 60)]);
    for r in res {
        // Far better than chance (90 errors of 100).
        assert!(r["test_errors"].as_i64().unwrap() < 60, "{r}");
    }
}

fn weights(out: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(out.join("phases")).unwrap() {
        let p = e.unwrap().path();
        v.push((
            p.file_name().unwrap().to_string_lossy().into_owned(),
            std::fs::read(p.join("model.safetensors")).unwrap(),
        ));
    }
    v.sort();
    v
}

#[test]
fn kill_9_then_resume_gives_the_same_model_bit_for_bit() {
    let d = tmpdir("resume");
    let r = tiny_recipe(&d);
    let (a, b) = (d.join("a"), d.join("b"));
    let o = distill(&["run", r.to_str().unwrap(), "--out", a.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));

    // Start b, kill it once the KD phase has written a checkpoint but not finished.
    let mut child = Command::new(BIN)
        .args(["run", r.to_str().unwrap(), "--out", b.to_str().unwrap()])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let kd = b.join("phases/kd-s0-T4");
    let t0 = Instant::now();
    let mid_phase = || kd.join("ckpt.safetensors").exists() && !kd.join("result.json").exists();
    while !mid_phase() {
        if let Some(st) = child.try_wait().unwrap() {
            panic!("run finished ({st}) before it could be killed");
        }
        assert!(t0.elapsed() < Duration::from_secs(120), "no checkpoint appeared");
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(!b.join("summary.json").exists());

    let o = distill(&["run", r.to_str().unwrap(), "--out", b.to_str().unwrap(), "--resume"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (sa, sb) = (summary(&a), summary(&b));
    let errs = |s: &serde_json::Value| -> Vec<i64> {
        s["results"].as_array().unwrap().iter().map(|r| r["test_errors"].as_i64().unwrap()).collect()
    };
    assert_eq!(errs(&sa), errs(&sb));
    assert_eq!(weights(&a), weights(&b), "final weights differ after resume");
    // The resumed metrics log has each step once.
    let steps: Vec<u64> = common::metrics(&b, "kd-s0-T4").iter().map(|m| m["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, [20, 40, 60, 80, 100, 120]);
}

/// The soak: an image run killed with SIGKILL at `DISTILL_SOAK_KILLS` random points (each kill
/// hitting the run resumed from the last), then resumed to the end, has the uninterrupted run's
/// weights bit for bit in every phase.
#[test]
fn kill_9_soak_image_run() {
    let d = tmpdir("soak");
    let r = tiny_recipe(&d).to_str().unwrap().to_string();
    let (a, b) = (d.join("a"), d.join("b"));
    let args = |out: &Path, resume: bool| {
        let mut v = vec!["run".to_string(), r.clone(), "--out".into(), out.to_str().unwrap().into()];
        if resume {
            v.push("--resume".into());
        }
        v
    };
    let span = common::run_ok(BIN, &args(&a, false));
    let kills = common::soak_kills();
    let killed = common::kill_chain(BIN, &args(&b, false), &args(&b, true), &b, span, kills, 7);
    assert_eq!(killed, kills, "runs killed while still going");
    let (ma, mb) = (common::models(&a), common::models(&b));
    assert!(!ma.is_empty());
    assert!(ma == mb, "final weights differ after {killed} kills");
    let numbers = |s: serde_json::Value| -> Vec<String> {
        let keys = ["role", "seed", "temperature", "steps", "test_errors"];
        s["results"].as_array().unwrap().iter().map(|r| keys.map(|k| r[k].to_string()).join(" ")).collect()
    };
    assert_eq!(numbers(summary(&a)), numbers(summary(&b)));
}

/// Bytes of every file under `dir`.
fn du(dir: &Path) -> u64 {
    common::files(dir).iter().map(|f| std::fs::metadata(dir.join(f)).unwrap().len()).sum()
}

/// A full disk: the run's output lives on a tmpfs with room for half of what the run writes.
/// The run stops with one error line naming the write that failed, leaves no temporary file,
/// and once the disk is larger (`mount -o remount`) `--resume` finishes with the weights of an
/// uninterrupted run. Needs permission to mount a tmpfs (root); without it the same is tested
/// with a file-size limit (`ulimit -f`), which fails the write with EFBIG instead of ENOSPC.
#[test]
fn full_disk_fails_cleanly_and_resumes() {
    let d = tmpdir("disk");
    let r = tiny_recipe(&d).to_str().unwrap().to_string();
    let a = d.join("a");
    let o = distill(&["run", &r, "--out", a.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let total = du(&a);
    let disk = d.join("disk");
    std::fs::create_dir_all(&disk).unwrap();
    let mount =
        |opts: &str| Command::new("mount").args(["-t", "tmpfs", "-o", opts, "tmpfs", disk.to_str().unwrap()]).output();
    let half = format!("size={}k", (total / 2 / 1024).max(16));
    let mounted = std::env::var_os("DISTILL_TEST_NO_MOUNT").is_none() && mount(&half).is_ok_and(|o| o.status.success());
    let b = disk.join("b");
    let bs = b.to_str().unwrap().to_string();
    let o = if mounted {
        distill(&["run", &r, "--out", &bs])
    } else {
        // No mount permission: every file is limited to a quarter of the largest file.
        let largest = common::models(&a).iter().map(|(_, m)| m.len() as u64).max().unwrap();
        let blocks = (largest / 4 / 512).max(1);
        Command::new("sh")
            .args([
                "-c",
                &format!("trap '' XFSZ; ulimit -f {blocks}; exec \"$0\" \"$@\""),
                BIN,
                "run",
                &r,
                "--out",
                &bs,
            ])
            .output()
            .unwrap()
    };
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    let last = err.lines().last().unwrap_or("");
    let want = if mounted { "No space left on device" } else { "File too large" };
    assert!(last.starts_with("error: ") && last.contains(want), "{err}");
    let mut stack = vec![b.clone()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            assert!(!name.ends_with(".tmp"), "temporary file left behind: {}", p.display());
            if p.is_dir() {
                stack.push(p);
            }
        }
    }
    if mounted {
        let grown = mount(&format!("remount,size={}k", total * 4 / 1024 + 64)).unwrap();
        assert!(grown.status.success(), "{}", String::from_utf8_lossy(&grown.stderr));
    }
    let o = distill(&["run", &r, "--out", &bs, "--resume"]);
    let ok = o.status.success();
    let (ma, mb) = (common::models(&a), common::models(&b));
    if mounted {
        let _ = Command::new("umount").arg(&disk).output();
    }
    assert!(ok, "{}", stderr(&o));
    assert!(!ma.is_empty() && ma == mb, "weights differ after a full disk and a resume");
}

#[test]
fn bad_inputs_fail_with_one_clear_line_and_leave_nothing() {
    let d = tmpdir("bad");
    let r = tiny_recipe(&d);
    let rs = r.to_str().unwrap();
    let out = d.join("run");
    let outs = out.to_str().unwrap();

    let o = distill(&["run", rs, "--out", outs, "--set", "distill.temprature=3"]);
    assert_error(&o, &["unknown field `temprature`"]);
    let o = distill(&["run", rs, "--out", outs, "--set", "data.train=/nonexistent/train.csv"]);
    assert_error(&o, &["data.train: no such file: /nonexistent/train.csv"]);
    let o = distill(&["run", "/nonexistent/recipe.toml", "--out", outs]);
    assert_error(&o, &["/nonexistent/recipe.toml"]);
    // The OS's reason once, not once per layer of the error chain.
    assert_eq!(stderr(&o).matches("No such file or directory").count(), 1, "{}", stderr(&o));

    // A truncated IDX file and a label file that disagrees with it.
    let img = d.join("img.idx");
    let mut bytes = vec![0u8, 0, 8, 3, 0, 0, 0, 10, 0, 0, 0, 8, 0, 0, 0, 8];
    bytes.extend(vec![7u8; 10 * 64]);
    std::fs::write(&img, &bytes[..bytes.len() - 5]).unwrap();
    let lab = d.join("lab.idx");
    std::fs::write(&lab, [0u8, 0, 8, 1, 0, 0, 0, 9, 0, 1, 2, 3, 4, 5, 6, 7, 8]).unwrap();
    let idx_sets = |images: &Path| {
        vec![
            "data.format=idx".to_string(),
            format!("data.train_images={}", images.display()),
            format!("data.train_labels={}", lab.display()),
            format!("data.test_images={}", images.display()),
            format!("data.test_labels={}", lab.display()),
        ]
    };
    let run_with = |sets: Vec<String>| {
        let mut a = vec!["run".to_string(), rs.to_string(), "--out".into(), outs.to_string()];
        for s in sets {
            a.push("--set".into());
            a.push(s);
        }
        distill(&a)
    };
    let o = run_with(idx_sets(&img));
    assert_error(&o, &["img.idx", "truncated IDX data: dims [10, 8, 8] need 640 bytes, file has 635"]);
    std::fs::write(&img, &bytes).unwrap();
    let o = run_with(idx_sets(&img));
    assert_error(&o, &["img.idx has 10 images but", "lab.idx has 9 labels"]);

    // A CSV with a broken row names the file and line.
    let bad = d.join("bad.csv");
    let mut text = std::fs::read_to_string(d.join("train.csv")).unwrap();
    text.push_str("3,1,2,x\n");
    std::fs::write(&bad, text).unwrap();
    let o = run_with(vec![format!("data.train={}", bad.display())]);
    assert_error(&o, &["bad.csv: line 602: 4 columns, expected 65"]);
    let empty = d.join("empty.csv");
    std::fs::write(&empty, "label,p0\n").unwrap();
    let o = run_with(vec![format!("data.train={}", empty.display())]);
    assert_error(&o, &["empty.csv: no data rows"]);

    // The label in the last column, read with the default label_column = 0: column 0 (a pixel
    // that is 0 in every image) would make a one-class set, trained to "100% accuracy". It is
    // refused, naming the single value and the setting; label_column = -1 reads the last column.
    let last = |name: &str| {
        let src = std::fs::read_to_string(d.join(name)).unwrap();
        let rows: Vec<String> = src
            .lines()
            .skip(1)
            .map(|l| {
                let (label, px) = l.split_once(',').unwrap();
                let px: Vec<&str> = px.split(',').skip(1).collect();
                format!("0,{},{label}", px.join(","))
            })
            .collect();
        let p = d.join(format!("last-{name}"));
        std::fs::write(&p, rows.join("\n") + "\n").unwrap();
        p
    };
    let (train_last, test_last) = (last("train.csv"), last("test.csv"));
    let last_sets = |extra: &[&str]| {
        let mut v = vec![format!("data.train={}", train_last.display()), format!("data.test={}", test_last.display())];
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let o = run_with(last_sets(&[]));
    assert_error(
        &o,
        &[
            "the training labels hold one class (every label is 0)",
            "data.label_column = 0 picks the label (-1 = the last column)",
        ],
    );
    let o = run_with(last_sets(&["data.label_column=-1", "teacher.train.lr=1e30"]));
    assert_error(&o, &["loss is", "phase teacher-s0"]); // loaded, then diverged at step 1 as asked
    let _ = std::fs::remove_dir_all(&out);
    // A label that cannot be a class index (it would size the classifier).
    let huge = d.join("huge.csv");
    let mut text = std::fs::read_to_string(d.join("train.csv")).unwrap();
    text.push_str(&format!("1e300{}\n", ",0".repeat(64)));
    std::fs::write(&huge, text).unwrap();
    let o = run_with(vec![format!("data.train={}", huge.display())]);
    assert_error(&o, &["huge.csv: line 602: label `1e300` is not a class index below 1048576"]);
    assert!(!out.exists(), "a failed run left {} behind", out.display());

    // Divergence is caught at the step it happens, with the phase named.
    let o = distill(&["run", rs, "--out", outs, "--set", "teacher.train.lr=1e30"]);
    assert_error(&o, &["loss is", "phase teacher-s0"]);
    assert!(!out.join("summary.json").exists());

    // An existing run directory is never overwritten without --resume.
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("keep"), "x").unwrap();
    let o = distill(&["run", rs, "--out", outs]);
    assert_error(&o, &["already exists; pass --resume"]);
    assert_eq!(std::fs::read_to_string(out.join("keep")).unwrap(), "x");
}
