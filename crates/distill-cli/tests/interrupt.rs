//! Ctrl-C keeps the work: `distill run` in a real terminal (a pty from util-linux `script`), a
//! Ctrl-C typed during training → the message, exit 130 and a checkpoint at that step; `--resume`
//! says where it resumes and ends with the weights of an uninterrupted run. Off a terminal, a
//! phase prints a progress line every `log.progress_seconds`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{distill, stderr, tmpdir, BIN};

fn recipe(d: &Path, steps: u64, extra: &str) -> PathBuf {
    let t = common::lm_teacher(d);
    let text = d.join("corpus.txt");
    common::lm_corpus(&text, 120);
    let r = d.join("lm.toml");
    std::fs::write(
        &r,
        format!(
            r#"
task = "causal-lm"
name = "interrupt"
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
sources = [{{ path = "{}" }}]
split = {{ val_fraction = 0.1 }}
pack = {{ seq_len = 16 }}
[train]
steps = {steps}
batch_size = 8
lr = 1e-3
[distill]
temperature = 2.0
alpha = 0.5
[eval]
prompts = ["w1 w10"]
max_new_tokens = 4
[checkpoint]
every_steps = 100000
[log]
every_steps = 1
{extra}
"#,
            t.display(),
            text.display()
        ),
    )
    .unwrap();
    r
}

/// Steps logged so far in the KD phase's metrics.
fn logged_steps(run: &Path) -> usize {
    std::fs::read_to_string(run.join("phases/kd/metrics.jsonl")).map_or(0, |m| m.lines().count())
}

#[test]
fn ctrl_c_in_a_terminal_checkpoints_and_resume_ends_where_an_uninterrupted_run_does() {
    let d = tmpdir("interrupt");
    let r = recipe(&d, 4000, "tensorboard = true");
    let run = d.join("run");
    let cmd = format!("{BIN} run {} --out {}", r.display(), run.display());
    // `script` gives the command a pty; what we write to its stdin is typed at that terminal.
    let mut child = Command::new("script")
        .args(["-qfec", &cmd, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("util-linux `script`");
    let t0 = Instant::now();
    while logged_steps(&run) < 20 {
        assert!(t0.elapsed() < Duration::from_secs(120), "training did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&[0x03]).unwrap(); // Ctrl-C
    stdin.flush().unwrap();
    let out = child.wait_with_output().unwrap();
    drop(stdin);
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{text}");
    let line = text.lines().find(|l| l.contains("interrupted at step")).unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains("of 4000 (phase kd)") && line.contains("--resume"), "{line}");
    let step: u64 = line.split("interrupted at step ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!((20..4000).contains(&step), "{line}");
    // The checkpoint is at that step, and the metrics stop there.
    let ckpt = distill::train::checkpoint::load_tensors(&run.join("phases/kd/ckpt.safetensors")).unwrap().metadata;
    assert_eq!(ckpt.get("step").map(String::as_str), Some(step.to_string().as_str()), "{ckpt:?}");
    assert_eq!(logged_steps(&run) as u64, step);

    // The interrupted run has a report: the phases so far and their live curves.
    let o = distill(&["report", run.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let html = std::fs::read_to_string(run.join("report.html")).unwrap();
    assert!(html.contains("This run has not finished") && html.contains("kd"), "report of the unfinished run");
    std::fs::remove_file(run.join("report.html")).unwrap();
    // Resuming with another value is refused, naming the key and both values.
    let o =
        distill(&["run", r.to_str().unwrap(), "--out", run.to_str().unwrap(), "--resume", "--set", "train.lr=2e-3"]);
    common::assert_error(&o, &["--resume: the recipe", "train.lr: 0.001 → 0.002"]);
    let o = distill(&["run", r.to_str().unwrap(), "--out", run.to_str().unwrap(), "--resume"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains(&format!("kd: resumed from step {step} of 4000")), "{}", stderr(&o));
    let whole = d.join("whole");
    let o = distill(&["run", r.to_str().unwrap(), "--out", whole.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let w = |dir: &Path| std::fs::read(dir.join("student/model.safetensors")).unwrap();
    assert!(w(&run) == w(&whole), "resumed weights differ from the uninterrupted run's");
    // The TensorBoard events, read by TensorBoard's own reader, mirror metrics.jsonl: every step
    // once (the resumed phase's file replays the kept lines), the values as f32.
    let metrics = common::metrics(&run, "kd");
    let events = tensorboard_scalars(&run.join("phases/kd"));
    for tag in ["loss", "lr", "grad_norm"] {
        let want: Vec<(i64, f32)> =
            metrics.iter().map(|m| (m["step"].as_i64().unwrap(), m[tag].as_f64().unwrap() as f32)).collect();
        assert_eq!(want.len(), 4000);
        assert_eq!(events[tag], want, "{tag}");
    }
    // Resuming a finished run prints its results without evaluating again.
    let before = std::fs::metadata(run.join("summary.json")).unwrap().modified().unwrap();
    let o = distill(&["run", r.to_str().unwrap(), "--out", run.to_str().unwrap(), "--resume"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("is finished (summary.json)"), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("student-kd"), "{}", String::from_utf8_lossy(&o.stdout));
    assert_eq!(std::fs::metadata(run.join("summary.json")).unwrap().modified().unwrap(), before);
}

/// `tag → [(step, value)]` of the event files in `dir`, as TensorBoard's `EventAccumulator`
/// reads them.
fn tensorboard_scalars(dir: &Path) -> std::collections::BTreeMap<String, Vec<(i64, f32)>> {
    const READ: &str = r#"
import json, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
ea = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0})
ea.Reload()
print(json.dumps({t: [[e.step, e.value] for e in ea.Scalars(t)] for t in ea.Tags()["scalars"]}))
"#;
    let o = Command::new(common::python()).args(["-c", READ, dir.to_str().unwrap()]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// Off a terminal (stderr piped), a phase of several seconds prints a progress line at least every
/// `log.progress_seconds` (here 1 s): step, loss, tokens/s, ETA — timed as the lines arrive.
#[test]
fn off_a_terminal_progress_lines_come_every_few_seconds() {
    use std::io::BufRead;
    let d = tmpdir("progress");
    let r = recipe(&d, 3000, "progress_seconds = 1.0");
    let run = d.join("run");
    let mut child = Command::new(BIN)
        .args(["run", r.to_str().unwrap(), "--out", run.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut seen: Vec<(Instant, String)> = Vec::new();
    for line in std::io::BufReader::new(child.stderr.take().unwrap()).lines() {
        seen.push((Instant::now(), line.unwrap()));
    }
    assert!(child.wait().unwrap().success());
    let all: Vec<&str> = seen.iter().map(|(_, l)| l.as_str()).collect();
    let progress: Vec<&(Instant, String)> = seen.iter().filter(|(_, l)| l.starts_with("kd: step ")).collect();
    assert!(progress.len() >= 3, "{all:#?}");
    for (_, l) in &progress {
        assert!(l.contains("| loss ") && l.contains("tokens/s") && l.contains("ETA"), "{l}");
    }
    assert!(progress.last().unwrap().1.starts_with("kd: step 3000/3000 (100%)"), "{all:#?}");
    // No gap between progress lines much longer than the period (1 s; slack for a loaded CI).
    let worst = progress.windows(2).map(|w| w[1].0.duration_since(w[0].0).as_secs_f64()).fold(0.0, f64::max);
    assert!(worst < 3.0, "{worst:.1} s between progress lines: {all:#?}");
}
