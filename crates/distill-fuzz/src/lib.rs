//! Fuzz targets: every parser distill runs on input from outside — GGUF (header, metadata,
//! tensor infos, every dequantizer, the Llama view and the tokenizer built from it), tokenizer
//! files, safetensors and HF `config.json`, the teacher cache (manifest and shards), IDX and CSV
//! images, text sources (plain, JSONL, Brown) and recipes with `--set` overrides.
//!
//! A target takes arbitrary bytes and must return — an `Err` is the right answer to a bad
//! input, a panic or an allocation past [`ALLOC_CAP`] is a bug. The runner (`src/main.rs`,
//! `bench/fuzz.sh`) mutates the seed corpus for a given number of executions per target; the
//! corpus and every input that ever failed (`fuzz/regressions/`) are replayed by
//! `tests/replay.rs` in the normal test suite.
//!
//! Why a stable, in-tree harness and not cargo-fuzz: it runs on the toolchain every machine
//! has, its replay is an ordinary test, and the targets that link libtorch need no sanitizer
//! build of it. The cost: mutation is blind (no coverage feedback), so deep paths are reached
//! only through seeds that already contain them — the seeds are real files of each format.

use std::path::{Path, PathBuf};

use distill_base::SplitMix64;

/// Allocations above this many bytes abort the fuzz runner (recording the input): no parser
/// may allocate far beyond the input it was given (inputs are at most a few hundred KiB).
pub const ALLOC_CAP: usize = 256 << 20;

/// A fuzz target.
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]),
    /// Files (relative to the repository root) whose bytes seed the corpus.
    pub seed_files: &'static [&'static str],
    /// Seeds made in code (formats without a fixture file).
    pub seeds: fn() -> Vec<Vec<u8>>,
}

/// The repository root (for seed files and the corpus).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn no_seeds() -> Vec<Vec<u8>> {
    Vec::new()
}

/// A scratch directory private to this process and thread (targets that read from files), in
/// memory where the machine has /dev/shm.
fn scratch() -> PathBuf {
    let shm = Path::new("/dev/shm");
    let base = if shm.is_dir() { shm.to_path_buf() } else { std::env::temp_dir() };
    let d = base.join(format!("distill-fuzz-{}-{:?}", std::process::id(), std::thread::current().id()));
    let _ = std::fs::create_dir_all(&d);
    d
}

/// Splits `b` at the first occurrence of `sep` (inputs with several parts).
fn split<'a>(b: &'a [u8], sep: &[u8]) -> (&'a [u8], &'a [u8]) {
    match b.windows(sep.len()).position(|w| w == sep) {
        Some(i) => (&b[..i], &b[i + sep.len()..]),
        None => (b, &[]),
    }
}

fn gguf(b: &[u8]) {
    let Ok(f) = distill_gguf::GgufFile::from_bytes(b.to_vec(), "fuzz.gguf") else { return };
    for t in f.tensors() {
        if t.n_bytes <= 1 << 20 {
            let _ = f.info_f32(t);
        }
    }
    let _ = f.tensor_f32("token_embd.weight");
    if let Ok(p) = distill_gguf::LlamaGgufParams::from_gguf(&f) {
        let _ = distill::io::lm::config_from_gguf(&f, &p).map(|c| c.param_count());
        for t in distill_gguf::hf_tensors(&f, &p).take(4) {
            let _ = t;
        }
    }
    if let Ok(tok) = distill_gguf::tokenizer_from_gguf(&f) {
        if let Ok(e) = tok.encode("Hello, world! 12 <s> $B", true) {
            let _ = tok.decode(e.get_ids(), false);
        }
        let _ = distill_gguf::tokenizer_fingerprint(&tok);
    }
}

fn dequant(b: &[u8]) {
    use distill_gguf::GgmlType as T;
    let types = [T::F32, T::F16, T::BF16, T::Q8_0, T::Q4_0, T::Q4_1, T::Q4_K, T::Q5_K, T::Q6_K];
    let Some((&sel, data)) = b.split_first() else { return };
    let ty = types[sel as usize % types.len()];
    let whole = data.len() as u64 / ty.type_size() * ty.block_size();
    for n in [whole, whole + 1, whole.saturating_mul(1 << 40)] {
        let _ = distill_gguf::dequantize_to_vec(ty, data, n as usize);
    }
}

fn tokenizer_json(b: &[u8]) {
    let Ok(tok) = distill::io::lm::tokenizer_from_json(b, Path::new("fuzz/tokenizer.json")) else { return };
    if let Ok(ids) = distill::eval::encode(&tok, "Hello, world! w1 w2 12") {
        let _ = distill::eval::decode(&tok, &ids);
    }
    let _ = distill::eval::decode(&tok, &[0, 1, 2, 3, 1_000_000]);
}

fn safetensors(b: &[u8]) {
    let _ = distill::train::checkpoint::tensors_from_bytes(Path::new("fuzz.safetensors"), b);
}

fn hf_config(b: &[u8]) {
    if let Ok(c) = distill::models::lm::HfLmConfig::from_slice(b) {
        if let Ok(cfg) = c.into_config("fuzz/config.json") {
            let _ = cfg.param_count();
            let _ = cfg.check_fits(1 << 20);
            let _ = cfg.to_hf_json();
        }
    }
}

/// Input: manifest JSON, a `\0\0SHARD\0\0` separator, then the bytes of every shard the
/// manifest lists (the same bytes for each).
fn cache(b: &[u8]) {
    let (manifest, shard) = split(b, b"\0\0SHARD\0\0");
    // Every file is overwritten each time: the manifest and the four shards it may list.
    let dir = scratch().join("cache");
    if std::fs::create_dir_all(&dir).is_err() || std::fs::write(dir.join("manifest.json"), manifest).is_err() {
        return;
    }
    for i in 0..4 {
        let _ = std::fs::write(dir.join(distill_cache::shard_file_name(i)), shard);
    }
    let _ = distill_cache::inspect(&dir);
    if let Ok(r) = distill_cache::CacheReader::open(&dir) {
        let rows: Vec<usize> = (0..r.n_rows().min(64)).collect();
        let _ = r.read_rows(&rows, &mut Vec::new(), &mut Vec::new(), &mut Vec::new());
        let _ = r.verify_all();
    }
}

/// A small real cache as one input (see [`cache`]).
fn cache_seeds() -> Vec<Vec<u8>> {
    let dir = scratch().join("cache-seed");
    let _ = std::fs::remove_dir_all(&dir);
    let spec = distill_cache::CacheSpec {
        top_k: 4,
        tail_samples: 2,
        vocab_size: 300,
        seq_len: 3,
        rows_per_shard: 2,
        n_rows: 2,
        logprob_encoding: distill_cache::LogprobEncoding::default(),
        teacher_fingerprint: "t".into(),
        tokenizer_fingerprint: "k".into(),
        data_fingerprint: "d".into(),
        teacher: "fuzz".into(),
    };
    let Ok(mut w) = distill_cache::CacheWriter::create_or_resume(&dir, spec) else { return Vec::new() };
    // Per position: 4 top-k entries (probabilities e^-1.5 … e^-4.5), 2 tail samples, and the
    // log of the mass outside the top-k, so that each position sums to 1.
    let (rows, s, e) = (2, 3, 6);
    let ids: Vec<u32> = (0..rows * s * e).map(|i| ((i % e) * 37 + i / e) as u32 % 300).collect();
    let lp = [-1.5f32, -2.5, -3.5, -4.5, -6.0, -7.0];
    let logp: Vec<f32> = (0..rows * s * e).map(|i| lp[i % e]).collect();
    let top: f32 = lp[..4].iter().map(|l| l.exp()).sum();
    let tail: Vec<f32> = vec![(1.0 - top).ln(); rows * s];
    if let Err(e) = w.push_rows(&ids, &logp, &tail).and_then(|_| w.finish()) {
        eprintln!("cache seed: {e}");
        return Vec::new();
    }
    let mut input = std::fs::read(dir.join("manifest.json")).unwrap_or_default();
    input.extend_from_slice(b"\0\0SHARD\0\0");
    input.extend(std::fs::read(dir.join(distill_cache::shard_file_name(0))).unwrap_or_default());
    vec![input]
}

fn idx(b: &[u8]) {
    if let Ok(i) = distill::data::images::parse_idx(b) {
        let _ = i.dims.iter().product::<usize>() == i.data.len();
    }
}

fn csv(b: &[u8]) {
    let text = String::from_utf8_lossy(b);
    for label in [0, -1, 3] {
        let _ = distill::data::images::parse_csv(Path::new("fuzz.csv"), &text, label, None, 255.0, None);
    }
    let _ = distill::data::images::parse_csv(Path::new("fuzz.csv"), &text, 0, Some(true), 16.0, Some([2, 2]));
}

fn csv_seeds() -> Vec<Vec<u8>> {
    vec![b"label,a,b,c,d\n1,0,5,9,3\n0,1,1,1,1\n2,8,8,8,8\n".to_vec(), b"0,0,0,0,1\n3,2,2,2,2\n".to_vec()]
}

fn text(b: &[u8]) {
    use distill_text::{DocBoundary, TextFormat};
    let t = String::from_utf8_lossy(b);
    let formats = [TextFormat::Auto, TextFormat::Plain, TextFormat::jsonl(), TextFormat::Brown];
    for f in &formats {
        for d in [None, Some(DocBoundary::File), Some(DocBoundary::Paragraph)] {
            let _ = distill_text::source::parse_text(Path::new("fuzz.jsonl"), "k", &t, f, d);
        }
    }
    let _ = distill_text::brown::looks_like_brown(&t);
    let _ = distill_text::brown::brown_paragraphs(&t);
    let _ = distill_text::brown::brown_document(&t);
    let _ = distill_text::clean_text(&t, &distill_text::CleanConfig::default());
}

/// A Parquet file of records: texts and conversations read by field, every row to JSON.
fn parquet(b: &[u8]) {
    let path = Path::new("fuzz.parquet");
    let _ = distill_text::parse_parquet(b.to_vec(), path, &["messages", "text", "prompt", "completion", "n"]);
    let _ = distill_text::parse_parquet(b.to_vec(), path, &["messages"]);
}

fn text_seeds() -> Vec<Vec<u8>> {
    vec![
        b"The/at Fulton/np-tl County/nn-tl Grand/jj-tl Jury/nn-tl said/vbd ./.\n\n\tIt/pps said/vbd ./.\n".to_vec(),
        b"{\"text\": \"one doc\"}\n{\"text\": \"two\", \"x\": 1}\n".to_vec(),
        b"{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}, {\"role\": \"assistant\", \"content\": \"Yo\"}]}\n{\"prompt\": \"a\", \"completion\": [{\"role\": \"assistant\", \"content\": \"b\"}]}\n".to_vec(),
        b"= Title =\n\nA paragraph of text.\nMore.\n\n\nAnother one.\n".to_vec(),
    ]
}

/// Input: the recipe TOML, then `\n---\n`, then one `--set` override per line.
fn recipe(b: &[u8]) {
    let t = String::from_utf8_lossy(b);
    let (doc, sets) = t.split_once("\n---\n").unwrap_or((&t, ""));
    let overrides: Vec<String> = sets.lines().map(str::to_string).collect();
    let _ = distill::recipe::Recipe::parse(doc, &overrides);
}

fn recipe_seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for name in ["fashion-hinton", "smollm2-brown", "smollm2-prune"] {
        if let Ok(mut b) = std::fs::read(root().join(format!("recipes/{name}.toml"))) {
            b.extend_from_slice(b"\n---\ndistill.temperature=4\nstudent.layers=2\ntrain.lr=1e-3\n");
            out.push(b);
        }
    }
    out
}

/// Every target.
pub fn targets() -> Vec<Target> {
    vec![
        Target {
            name: "gguf",
            run: gguf,
            seed_files: &["tests/fixtures/gguf/quants.gguf", "tests/fixtures/gguf/spm_tokenizer.gguf"],
            seeds: no_seeds,
        },
        Target {
            name: "dequant",
            run: dequant,
            seed_files: &["tests/fixtures/gguf/q8_0_expected.bin"],
            seeds: no_seeds,
        },
        Target {
            name: "tokenizer-json",
            run: tokenizer_json,
            seed_files: &["tests/fixtures/llama/tokenizer.json", "tests/fixtures/gguf/spm_tokenizer.json"],
            seeds: no_seeds,
        },
        Target {
            name: "safetensors",
            run: safetensors,
            seed_files: &["tests/fixtures/llama/llama_tied/expected.safetensors"],
            seeds: no_seeds,
        },
        Target {
            name: "hf-config",
            run: hf_config,
            seed_files: &[
                "tests/fixtures/llama/llama_tied/config.json",
                "tests/fixtures/llama/qwen2/config.json",
                "tests/fixtures/llama/mistral_window/config.json",
            ],
            seeds: no_seeds,
        },
        Target { name: "cache", run: cache, seed_files: &[], seeds: cache_seeds },
        Target {
            name: "idx",
            run: idx,
            seed_files: &[],
            seeds: || vec![vec![0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 2, 1, 2, 3, 4]],
        },
        Target { name: "csv", run: csv, seed_files: &[], seeds: csv_seeds },
        Target { name: "text", run: text, seed_files: &[], seeds: text_seeds },
        Target { name: "parquet", run: parquet, seed_files: &["tests/fixtures/text/records.parquet"], seeds: no_seeds },
        Target { name: "recipe", run: recipe, seed_files: &[], seeds: recipe_seeds },
    ]
}

/// The seed corpus of `t`: its seed files, its code seeds and every file of
/// `fuzz/corpus/<name>/` and `fuzz/regressions/<name>/`.
pub fn corpus(t: &Target) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    for f in t.seed_files {
        if let Ok(b) = std::fs::read(root().join(f)) {
            out.push((f.to_string(), b));
        }
    }
    for (i, b) in (t.seeds)().into_iter().enumerate() {
        out.push((format!("{}#seed{i}", t.name), b));
    }
    for sub in ["corpus", "regressions"] {
        let dir = root().join("fuzz").join(sub).join(t.name);
        let mut files: Vec<PathBuf> =
            std::fs::read_dir(&dir).into_iter().flatten().filter_map(|e| e.ok().map(|e| e.path())).collect();
        files.sort();
        for p in files {
            if let Ok(b) = std::fs::read(&p) {
                out.push((p.display().to_string(), b));
            }
        }
    }
    out
}

/// Values that break size and offset arithmetic, as little-endian u32 / u64.
const INTERESTING: [u64; 12] = [0, 1, 2, 7, 31, 32, 255, 0x7fff_ffff, 0xffff_ffff, 1 << 32, i64::MAX as u64, u64::MAX];

/// One mutation of `input` (bit flips, interesting integers, deletions, duplications,
/// insertions, truncation, splices from `others`), at most `max_len` bytes.
pub fn mutate(input: &[u8], others: &[Vec<u8>], rng: &mut SplitMix64, max_len: usize) -> Vec<u8> {
    let mut b = input.to_vec();
    let rounds = 1 + rng.below(4);
    for _ in 0..rounds {
        let len = b.len() as u64;
        let at = if len == 0 { 0 } else { rng.below(len) as usize };
        match rng.below(9) {
            0 if !b.is_empty() => b[at] ^= 1 << rng.below(8),
            1 if !b.is_empty() => b[at] = [0u8, 0xff, 0x7f, 0x80, b'0', b'"', b'\n', b','][rng.below(8) as usize],
            2 => {
                let v = INTERESTING[rng.below(INTERESTING.len() as u64) as usize];
                let bytes =
                    if rng.below(2) == 0 { v.to_le_bytes().to_vec() } else { (v as u32).to_le_bytes().to_vec() };
                let end = (at + bytes.len()).min(b.len());
                b.splice(at..end, bytes);
            }
            3 if !b.is_empty() => {
                let n = (rng.below(16) + 1) as usize;
                b.drain(at..(at + n).min(b.len()));
            }
            4 if !b.is_empty() => {
                let n = ((rng.below(64) + 1) as usize).min(b.len() - at);
                let chunk = b[at..at + n].to_vec();
                let to = rng.below(b.len() as u64 + 1) as usize;
                b.splice(to..to, chunk);
            }
            5 => {
                let n = rng.below(8) + 1;
                let ins: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
                b.splice(at..at, ins);
            }
            6 => b.truncate(at),
            7 if !others.is_empty() => {
                let o = &others[rng.below(others.len() as u64) as usize];
                if !o.is_empty() {
                    let from = rng.below(o.len() as u64) as usize;
                    let n = ((rng.below(256) + 1) as usize).min(o.len() - from);
                    b.splice(at..at, o[from..from + n].iter().copied());
                }
            }
            _ => {
                // A decimal number where digits were: text formats parse numbers.
                let num = ["0", "-1", "1e300", "NaN", "18446744073709551616", "4294967296", "99999999999"];
                let s = num[rng.below(num.len() as u64) as usize].as_bytes();
                b.splice(at..at, s.iter().copied());
            }
        }
    }
    b.truncate(max_len);
    b
}
