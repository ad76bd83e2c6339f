//! What the library's test files share: the fixtures directory, scratch directories, the
//! reference Python, and reading the PyTorch reference numbers. (Each test file uses part of it.)
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use distill::models::lm::{CausalLm, ForwardOptions};
use tch::Tensor;

/// `tests/fixtures/` at the workspace root.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// `tests/fixtures/llama/`: tiny random Llama-family models and their word-level tokenizer.
pub fn llama_fixtures() -> PathBuf {
    fixtures().join("llama")
}

/// A fresh, empty `distill-<test file>-<name>-<pid>` under the temporary directory.
pub fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("distill-{}-{name}-{}", env!("CARGO_CRATE_NAME"), std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The Python with the reference libraries, resolved as scripts/env.sh does: `$DISTILL_PYTHON`,
/// else `<DISTILL_HOME>/venv/bin/python` ([`distill::io::fetch::distill_home`]).
pub fn python() -> PathBuf {
    std::env::var_os("DISTILL_PYTHON")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| distill::io::fetch::distill_home().join("venv/bin/python"))
}

/// Runs [`python`] with the arguments `args` adds, Hugging Face offline; panics naming the fix
/// when it cannot start and with its stderr when it fails. Returns its stdout.
pub fn run_python(args: impl FnOnce(&mut Command) -> &mut Command) -> Vec<u8> {
    let mut cmd = Command::new(python());
    cmd.env("HF_HUB_OFFLINE", "1");
    let out = args(&mut cmd).output().unwrap_or_else(|e| {
        panic!("cannot run {} (set DISTILL_PYTHON or run scripts/setup.sh): {e}", python().display())
    });
    assert!(out.status.success(), "python failed:\n{}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// The logits of `model` on the batch `ids` (`[B, T]`), without a graph.
pub fn logits(model: &CausalLm, ids: &Tensor) -> Tensor {
    tch::no_grad(|| model.forward(ids, None, ForwardOptions::default()).unwrap().logits)
}

/// The largest absolute difference of two tensors of one shape.
pub fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a - b).abs().max().double_value(&[])
}

/// A reference file of `tests/fixtures/losses/` (written by the `make_*fixtures.py` beside it).
pub fn loss_fixture(name: &str) -> serde_json::Value {
    let p = fixtures().join("losses").join(name);
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

/// A JSON array of numbers as f32.
pub fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

/// A JSON array of integers.
pub fn ints(v: &serde_json::Value) -> Vec<i64> {
    v.as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect()
}

/// A JSON array of numbers as an f32 tensor of `shape`.
pub fn tensor(v: &serde_json::Value, shape: &[i64]) -> Tensor {
    Tensor::from_slice(&floats(v)).view(shape)
}
