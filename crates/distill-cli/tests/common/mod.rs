//! What the CLI test files share: running the binary, scratch directories, the one-error-line
//! check, reading a run's files, the synthetic data sets and teacher, and the kill -9 soak.
//! (Each test file uses part of it.)
#![allow(dead_code)]

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The `distill` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_distill");

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `tests/fixtures/` at the workspace root.
pub fn fixtures() -> PathBuf {
    root().join("tests/fixtures")
}

/// The Python with the reference libraries, resolved as scripts/env.sh does: `$DISTILL_PYTHON`,
/// else `<DISTILL_HOME>/venv/bin/python` ([`distill::io::fetch::distill_home`]).
pub fn python() -> PathBuf {
    std::env::var_os("DISTILL_PYTHON")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| distill::io::fetch::distill_home().join("venv/bin/python"))
}

/// A fresh, empty `distill-<test file>-<name>-<pid>` under the temporary directory.
pub fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("distill-{}-{name}-{}", env!("CARGO_CRATE_NAME"), std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs the `distill` binary to completion in the workspace root (so `recipes/…` resolves).
pub fn distill<S: AsRef<OsStr>>(args: &[S]) -> Output {
    Command::new(BIN).args(args).current_dir(root()).output().unwrap()
}

/// A process's stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts the process succeeded, showing its stderr when it did not.
pub fn ok(o: &Output) {
    assert!(o.status.success(), "{}", stderr(o));
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

/// A JSON file, parsed; panics naming the file.
pub fn json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A JSONL file's records, one value per line.
pub fn jsonl(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).collect()
}

/// A run's summary.json.
pub fn summary(run: &Path) -> Value {
    json(&run.join("summary.json"))
}

/// The records of phase `phase`'s metrics.jsonl in run `run`.
pub fn metrics(run: &Path, phase: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(run.join("phases").join(phase).join("metrics.jsonl")).unwrap();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// The `loss` column of phase `phase`'s metrics.jsonl in run `run`.
pub fn losses(run: &Path, phase: &str) -> Vec<f64> {
    metrics(run, phase).iter().map(|m| m["loss"].as_f64().unwrap()).collect()
}

/// When `p` was last written.
pub fn modified(p: &Path) -> std::time::SystemTime {
    std::fs::metadata(p).unwrap().modified().unwrap()
}

/// Every file under `dir` (recursively), relative to it, sorted.
pub fn files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    out
}

/// Every `model.safetensors` under `dir` (recursively) with its bytes, sorted by path.
pub fn models(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    files(dir)
        .into_iter()
        .map(PathBuf::from)
        .filter(|p| p.file_name().is_some_and(|n| n == "model.safetensors"))
        .map(|p| {
            let bytes = std::fs::read(dir.join(&p)).unwrap();
            (p, bytes)
        })
        .collect()
}

/// Knuth's MMIX linear congruential generator: the tests' small deterministic source of numbers.
/// `Lcg(s)` starts at state `s`.
pub struct Lcg(pub u64);

impl Lcg {
    /// The generator seeded by `seed`: its state one step past `seed`.
    pub fn seeded(seed: u64) -> Lcg {
        let mut g = Lcg(seed);
        g.step();
        g
    }

    /// Advances the state; returns the new one.
    pub fn step(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0
    }

    /// Uniform in [0, 1), from the top 31 bits of the next state.
    pub fn uniform(&mut self) -> f64 {
        ((self.step() >> 33) as f64) / (1u64 << 31) as f64
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
/// Delays come from `seed` (an [`Lcg`]), so a failure reproduces.
pub fn kill_chain(
    bin: &str,
    fresh: &[String],
    resume: &[String],
    out: &Path,
    span: Duration,
    kills: usize,
    seed: u64,
) -> usize {
    let mut rng = Lcg::seeded(seed);
    let mut killed = 0;
    for _ in 0..4 * kills {
        if killed == kills {
            break;
        }
        let frac = 0.05 + 0.65 * rng.uniform();
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

/// Writes `n` 8×8 images as CSV (`label,p0..p63`): image `i` has class `i % classes` and pixel
/// `k` (row `k / 8`, column `k % 8`) the value `pixel(class, k)`, called in file order.
pub fn write_image_csv(path: &Path, n: usize, classes: usize, mut pixel: impl FnMut(usize, usize) -> f64) {
    let mut out = String::from("label");
    for i in 0..64 {
        out += &format!(",p{i}");
    }
    out.push('\n');
    for i in 0..n {
        let c = i % classes;
        out += &c.to_string();
        for k in 0..64 {
            out += &format!(",{}", pixel(c, k));
        }
        out.push('\n');
    }
    std::fs::write(path, out).unwrap();
}

/// A synthetic 8×8, 10-class image set (pixels 0–16 like sklearn's digits): each class is a plane
/// wave of its own orientation, frequency and phase, so a few pixels of jitter keep it
/// recognisable, plus uniform noise.
pub fn write_csv(path: &Path, n: usize, seed: u64) {
    let mut noise = Lcg::seeded(seed);
    let mut phases = Lcg(12345);
    let protos: Vec<[f64; 3]> = (0..10)
        .map(|c| {
            let angle = c as f64 * std::f64::consts::PI / 5.0;
            let freq = if c % 2 == 0 { 0.6 } else { 1.1 };
            [angle.cos() * freq, angle.sin() * freq, phases.uniform() * 6.0]
        })
        .collect();
    write_image_csv(path, n, 10, |c, k| {
        let [a, b, phase] = protos[c];
        let (y, x) = ((k / 8) as f64, (k % 8) as f64);
        (8.0 + 7.0 * (a * x + b * y + phase).sin() + (noise.uniform() - 0.5) * 8.0).clamp(0.0, 16.0).round()
    });
}

/// A synthetic 8×8, 4-class image set (pixels 0–16): each class a plane wave of its own
/// orientation, plus noise.
pub fn write_wave_csv(path: &Path, n: usize, seed: u64) {
    let mut noise = Lcg::seeded(seed);
    write_image_csv(path, n, 4, |c, k| {
        let angle = c as f64 * std::f64::consts::PI / 4.0;
        let (y, x) = ((k / 8) as f64, (k % 8) as f64);
        let v = 8.0 + 7.0 * (angle.cos() * x + angle.sin() * y).sin() + (noise.uniform() - 0.5) * 10.0;
        v.clamp(0.0, 16.0).round()
    });
}

/// A synthetic 8×8, 4-class image set (pixels 0–16): class c brightens quadrant c by 3 over
/// noise of 0–14, so that models make some errors and differ.
pub fn write_quadrant_csv(path: &Path, n: usize, seed: u64) {
    let mut noise = Lcg(seed.wrapping_add(0x9e37_79b9_7f4a_7c15));
    write_image_csv(path, n, 4, |c, k| {
        let (y, x) = (k / 8, k % 8);
        let lit = (y / 4) * 2 + x / 4 == c;
        ((noise.step() >> 61) as f64 * 2.0 + if lit { 3.0 } else { 0.0 }).min(16.0)
    });
}

/// A copy of the tiny HF teacher (tests/fixtures/llama: `llama_tied` and the word-level
/// tokenizer) in `dir`.
pub fn hf_teacher(dir: &Path) -> PathBuf {
    let llama = fixtures().join("llama");
    std::fs::create_dir_all(dir).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(llama.join("llama_tied").join(f), dir.join(f)).unwrap();
    }
    std::fs::copy(llama.join("tokenizer.json"), dir.join("tokenizer.json")).unwrap();
    dir.to_path_buf()
}

/// The tiny HF teacher in `d/teacher`.
pub fn lm_teacher(d: &Path) -> PathBuf {
    hf_teacher(&d.join("teacher"))
}

/// Paragraphs of words `w0…w92` drawn from a fixed first-order chain (an [`Lcg`]), so the text has
/// structure to learn.
pub fn lm_corpus(path: &Path, paragraphs: usize) {
    let mut rng = Lcg(7);
    let mut out = String::new();
    let mut w = 0u64;
    for _ in 0..paragraphs {
        let mut p = Vec::new();
        for _ in 0..40 {
            w = (w * 7 + 3 + (rng.step() >> 61)) % 93;
            p.push(format!("w{w}"));
        }
        out += &p.join(" ");
        out += "\n\n";
    }
    std::fs::write(path, out).unwrap();
}
