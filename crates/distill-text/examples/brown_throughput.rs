//! Throughput of reading + cleaning + tokenizing + packing the whole Brown corpus.
//!
//! ```text
//! cargo run --release -p distill-text --example brown_throughput [-- TOKENIZER_JSON [THREADS]]
//! ```
//!
//! Reads `$DISTILL_HOME/assets/brown/package` (default `~/.cache/distill`) and, by default,
//! `$DISTILL_HOME/assets/smollm2/tokenizer.json` (made by
//! `tests/fixtures/text/smollm2_tokenizer_json.py`). Without a tokenizer it measures reading and
//! cleaning only.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use distill_text::{pack, prepare_text, tokenize_documents, PackConfig, SpecialTokens, TextDataConfig, TextSource};

fn distill_home() -> PathBuf {
    if let Some(home) = std::env::var_os("DISTILL_HOME") {
        return PathBuf::from(home);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache"));
    cache.join("distill")
}

fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(threads) = args.get(1) {
        rayon::ThreadPoolBuilder::new().num_threads(threads.parse()?).build_global()?;
    }
    let brown = distill_home().join("assets/brown/package");
    if !brown.is_dir() {
        return Err(format!(
            "Brown corpus not found at {}: run `./target/release/distill fetch brown`",
            brown.display()
        )
        .into());
    }
    let mut config = TextDataConfig::new(vec![TextSource::brown(&brown)]);
    config.split.val_fraction = 0.0;

    let t0 = Instant::now();
    let prepared = prepare_text(&config)?;
    let t_read = t0.elapsed().as_secs_f64();
    let docs = &prepared.split.train;
    let bytes: usize = docs.iter().map(|d| d.text.len()).sum();
    println!(
        "read+clean: {} docs, {} chars, {:.2} MB in {:.3} s ({:.0} docs/s, {:.1} MB/s), {} threads",
        docs.len(),
        prepared.clean.chars,
        bytes as f64 / 1e6,
        t_read,
        docs.len() as f64 / t_read,
        bytes as f64 / 1e6 / t_read,
        rayon::current_num_threads()
    );

    let tokenizer_path =
        args.first().map(PathBuf::from).unwrap_or_else(|| distill_home().join("assets/smollm2/tokenizer.json"));
    if !tokenizer_path.is_file() {
        println!(
            "no tokenizer at {}: skipping tokenization (make it with tests/fixtures/text/smollm2_tokenizer_json.py)",
            tokenizer_path.display()
        );
        return Ok(());
    }
    let tokenizer = tokenizers::Tokenizer::from_file(&tokenizer_path)?;
    let pack_config = PackConfig::default();
    let specials = SpecialTokens::resolve(&tokenizer, &pack_config)?;

    let t1 = Instant::now();
    let tokens = tokenize_documents(docs, &tokenizer)?;
    let t_tok = t1.elapsed().as_secs_f64();
    let n_tokens: usize = tokens.iter().map(Vec::len).sum();
    let (blocks, stats) = pack(&tokens, &pack_config, &specials)?;
    let t_all = t0.elapsed().as_secs_f64();
    println!(
        "tokenize: {} tokens in {:.3} s ({:.0} docs/s, {:.0} tokens/s)",
        n_tokens,
        t_tok,
        docs.len() as f64 / t_tok,
        n_tokens as f64 / t_tok
    );
    println!(
        "pack (seq_len {}, eos {}): {} blocks, {} real tokens, {} dropped; fingerprint {}",
        blocks.seq_len,
        specials.eos,
        blocks.n_blocks(),
        stats.n_tokens_real,
        stats.n_tokens_dropped,
        blocks.fingerprint()
    );
    println!(
        "end to end: {:.3} s ({:.0} docs/s, {:.0} tokens/s)",
        t_all,
        docs.len() as f64 / t_all,
        n_tokens as f64 / t_all
    );
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
