//! What the CLI test files share: running the binary, temporary directories, the one-error-line
//! check, and the kill -9 soak. (Each test file uses part of it.)
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_distill");

/// A fresh, empty `distill-<kind>-<name>-<pid>` under the temporary directory.
pub fn tmpdir(kind: &str, name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("distill-{kind}-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs the `distill` binary to completion.
pub fn distill(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The last stderr line is the one error line, naming every `want`; the exit code non-zero.
pub fn assert_error(o: &Output, want: &[&str]) {
    let err = stderr(o);
    assert!(!o.status.success(), "expected failure; stderr: {err}");
    let last = err.lines().last().unwrap_or("");
    assert!(last.starts_with("error: "), "{err}");
    assert_eq!(err.lines().filter(|l| l.starts_with("error")).count(), 1, "{err}");
    for w in want {
        assert!(last.contains(w), "`{w}` not in `{last}`");
    }
}

/// Kill points per path: `DISTILL_SOAK_KILLS` (bench/soak.sh sets 20), 2 in the test suite.
pub fn soak_kills() -> usize {
    std::env::var("DISTILL_SOAK_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(2)
}

/// Runs `bin args` to completion; panics with its stderr on failure; returns the wall time.
pub fn run_ok(bin: &str, args: &[String]) -> Duration {
    let t = Instant::now();
    let o = Command::new(bin).args(args).output().unwrap();
    assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    t.elapsed()
}

/// Starts the job (`fresh` while `out` does not exist, else `resume`), SIGKILLs it after a
/// random delay in `[5 %, 70 %]` of `span` — until `kills` runs were killed, each resuming what
/// the last left — then runs `resume` to completion. A run that finishes before its kill point
/// (the machine was faster than when `span` was measured) is not a kill: its output is removed
/// and the chain starts over, at most `4 · kills` starts in all. Returns the runs killed.
/// Delays come from `seed` (a fixed LCG), so a failure reproduces.
pub fn kill_chain(
    bin: &str,
    fresh: &[String],
    resume: &[String],
    out: &Path,
    span: Duration,
    kills: usize,
    seed: u64,
) -> usize {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut killed = 0;
    for _ in 0..4 * kills {
        if killed == kills {
            break;
        }
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let frac = 0.05 + 0.65 * ((s >> 33) as f64 / (1u64 << 31) as f64);
        let args = if out.exists() { resume } else { fresh };
        let mut child = Command::new(bin).args(args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        let deadline = Instant::now() + span.mul_f64(frac);
        while Instant::now() < deadline {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            killed += 1;
        } else {
            std::fs::remove_dir_all(out).unwrap();
        }
    }
    run_ok(bin, if out.exists() { resume } else { fresh });
    killed
}

/// Every `model.safetensors` under `dir` (recursively) with its bytes, sorted by path.
pub fn models(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n == "model.safetensors") {
                out.push((p.strip_prefix(dir).unwrap().to_path_buf(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// A synthetic 8×8, 10-class image set, written as CSV (`label,p0..p63`, pixels 0–16 like
/// sklearn's digits): each class is a plane wave of its own orientation and frequency, so a few
/// pixels of jitter keep it recognisable, plus uniform noise.
pub fn write_csv(path: &Path, n: usize, seed: u64) {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut next = move || {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((s >> 33) as f64) / (1u64 << 31) as f64
    };
    let mut proto_rng = {
        let mut p = 12345u64;
        move || {
            p = p.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((p >> 33) as f64) / (1u64 << 31) as f64
        }
    };
    let protos: Vec<[f64; 3]> = (0..10)
        .map(|c| {
            let angle = c as f64 * std::f64::consts::PI / 5.0;
            let freq = if c % 2 == 0 { 0.6 } else { 1.1 };
            [angle.cos() * freq, angle.sin() * freq, proto_rng() * 6.0]
        })
        .collect();
    let mut out = String::from("label");
    for i in 0..64 {
        out += &format!(",p{i}");
    }
    out.push('\n');
    for i in 0..n {
        let c = i % 10;
        out += &c.to_string();
        let [a, b, phase] = protos[c];
        for k in 0..64 {
            let (y, x) = ((k / 8) as f64, (k % 8) as f64);
            let v = (8.0 + 7.0 * (a * x + b * y + phase).sin() + (next() - 0.5) * 8.0).clamp(0.0, 16.0).round();
            out += &format!(",{v}");
        }
        out.push('\n');
    }
    std::fs::write(path, out).unwrap();
}

pub fn llama_fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/llama")
}

/// The tiny teacher as an HF directory.
pub fn lm_teacher(d: &Path) -> PathBuf {
    let t = d.join("teacher");
    std::fs::create_dir_all(&t).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(llama_fixtures().join("llama_tied").join(f), t.join(f)).unwrap();
    }
    std::fs::copy(llama_fixtures().join("tokenizer.json"), t.join("tokenizer.json")).unwrap();
    t
}

/// Paragraphs of words `w0…w92` drawn from a fixed first-order chain (LCG), so the text has
/// structure to learn.
pub fn lm_corpus(path: &Path, paragraphs: usize) {
    let mut s = 7u64;
    let mut out = String::new();
    let mut w = 0u64;
    for _ in 0..paragraphs {
        let mut p = Vec::new();
        for _ in 0..40 {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            w = (w * 7 + 3 + (s >> 61)) % 93;
            p.push(format!("w{w}"));
        }
        out += &p.join(" ");
        out += "\n\n";
    }
    std::fs::write(path, out).unwrap();
}
