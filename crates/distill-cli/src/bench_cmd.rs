//! `distill bench …`: timings that bench/run.py sets next to their PyTorch twins.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use distill::bench::{self, loss as bench_loss, StepBenchResult, StepBenchSpec};
use distill::models::lm::{CausalLm, LmConfig};
use distill::teacher::cache::CachedTeacher;
use distill::teacher::{Teacher, TeacherDtype};
use tch::{nn, Device, Kind};

use crate::common::{load_lm, resolve, set_threads, text_sources};

#[derive(Subcommand)]
pub enum BenchCmd {
    /// Time the KD training step of a configuration of bench/configs.json.
    #[command(after_help = "Example:\n  distill bench step --config a --steps 5 --json")]
    Step(StepArgs),
    /// Time a model's full-sequence forward (logits at every position, no-grad).
    #[command(after_help = "Example:\n  distill bench forward --model teacher.gguf --rows 1 --seq 512")]
    Forward(ForwardArgs),
    /// Sentence-encoder throughput: embeddings/s over deterministic texts of 16–255 words (best
    /// of three passes, tokenization included), as `bench/twin.py embed` with sentence-transformers.
    #[command(after_help = "Example:\n  distill bench embed --model runs/enc/student --json")]
    Embed(EmbedArgs),
    /// Greedy generation with the KV cache at several batch sizes (batch 1 = `distill generate`):
    /// generated tokens/s over all rows, and each batch size's speed-up over batch 1.
    #[command(after_help = "Example:\n  distill bench generate --model runs/mine/student --batch 1,8")]
    Generate(GenerateArgs),
    /// Time and measure the peak extra memory of the KD loss's forward + backward from hidden
    /// states: chunked (default) or naive full logits (--naive).
    #[command(after_help = "Example:\n  distill bench loss --vocab 49152 --tokens 2048 --hidden 576")]
    Loss(LossArgs),
    /// What a top-k teacher cache loses, per k: bytes/token and KL to the full distribution.
    #[command(after_help = "Example:\n  distill bench cache-kl --teacher teacher.gguf --data text.txt")]
    CacheKl(CacheKlArgs),
    /// Print rows of a teacher cache as the Rust reader decodes them (bench/check_cache_format.py).
    #[command(after_help = "Example:\n  distill bench cache-dump cache/ --rows 2")]
    CacheDump(CacheDumpArgs),
}

#[derive(Args)]
pub struct StepArgs {
    /// Configuration name (`a`, `b`, `c`).
    #[arg(long)]
    pub config: String,
    /// The configurations file.
    #[arg(long, default_value = "bench/configs.json")]
    pub spec: PathBuf,
    /// Teacher cache directory (`distill cache`), for a configuration with `teacher_cache`.
    #[arg(long)]
    pub cache: Option<PathBuf>,
    /// Untimed steps first.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Timed steps (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// Intra-op threads (default: every core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct ForwardArgs {
    /// GGUF file or HF directory.
    #[arg(long)]
    pub model: PathBuf,
    /// Rows per forward.
    #[arg(long, default_value_t = 1)]
    pub rows: i64,
    /// Tokens per row.
    #[arg(long, default_value_t = 512)]
    pub seq: i64,
    /// Timed repetitions (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Intra-op threads (default: every core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Run the model in bf16 (as `teacher.dtype = "bf16"` does while students train).
    #[arg(long)]
    pub bf16: bool,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct EmbedArgs {
    /// Encoder directory (BERT in sentence-transformers' layout, or Model2Vec).
    #[arg(long)]
    pub model: PathBuf,
    /// Texts embedded per pass.
    #[arg(long, default_value_t = 256)]
    pub texts: usize,
    /// Texts per forward.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Intra-op threads (default: every core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct GenerateArgs {
    /// GGUF file or HF directory.
    #[arg(long)]
    pub model: PathBuf,
    /// Batch sizes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    pub batch: Vec<usize>,
    /// Tokens of the prompt each row starts from.
    #[arg(long, default_value_t = 16)]
    pub prompt_tokens: usize,
    /// Tokens generated per row.
    #[arg(long, default_value_t = 64)]
    pub new_tokens: usize,
    /// Timed repetitions (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Intra-op threads (default: every core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct LossArgs {
    /// Vocabulary size.
    #[arg(long)]
    pub vocab: i64,
    /// Rows (tokens).
    #[arg(long, default_value_t = 2048)]
    pub tokens: i64,
    /// Hidden size of student and teacher.
    #[arg(long, default_value_t = 896)]
    pub hidden: i64,
    /// Rows per chunk of the chunked loss.
    #[arg(long, default_value_t = 256)]
    pub chunk_rows: i64,
    /// Full [tokens, vocab] logits for student and teacher instead of chunks.
    #[arg(long)]
    pub naive: bool,
    /// Untimed repetitions first.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Timed repetitions (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Intra-op threads (default: every core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct CacheKlArgs {
    /// Teacher: GGUF file or HF directory.
    #[arg(long)]
    pub teacher: PathBuf,
    /// Text: files, directories or globs (the first --rows rows are used).
    #[arg(long, required = true)]
    pub data: Vec<String>,
    /// Rows of the cache to compare.
    #[arg(long, default_value_t = 16)]
    pub rows: usize,
    /// Tokens per row.
    #[arg(long, default_value_t = 128)]
    pub seq: usize,
    /// The k values, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "8,16,32,64,128")]
    pub k: Vec<usize>,
    /// Quantization step of the u8 encoding, nats.
    #[arg(long, default_value_t = distill_cache::DEFAULT_LOGPROB_STEP)]
    pub step: f32,
    /// Intra-op threads (default: every core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct CacheDumpArgs {
    /// The cache directory.
    pub dir: PathBuf,
    /// Rows, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "0")]
    pub rows: Vec<usize>,
    /// One JSON object (the default output is a short human-readable listing).
    #[arg(long)]
    pub json: bool,
}

pub fn run(what: BenchCmd) -> Result<()> {
    match what {
        BenchCmd::Step(a) => step(a),
        BenchCmd::Forward(a) => forward(a),
        BenchCmd::Embed(a) => embed(a),
        BenchCmd::Generate(a) => generate(a),
        BenchCmd::Loss(a) => loss(a),
        BenchCmd::CacheKl(a) => cache_kl(a),
        BenchCmd::CacheDump(a) => cache_dump(a),
    }
}

/// The model as benchmarked: itself, or (`bf16`) only its bf16 copy — the f32 original is
/// dropped, as PyTorch's `model.to(torch.bfloat16)` keeps one copy.
fn bf16_if(vs: nn::VarStore, model: CausalLm, bf16: bool) -> Result<(nn::VarStore, CausalLm)> {
    Ok(if bf16 { distill::teacher::teacher_in_kind(&vs, &model, Kind::BFloat16)? } else { (vs, model) })
}

fn step(a: StepArgs) -> Result<()> {
    set_threads(a.threads);
    // Under torchrun (or with its environment), one rank of a data-parallel step: each
    // rank its slice of the batch, gradients all-reduced (gloo); rank 0 reports.
    let main = match distill::train::dist::WorldEnv::from_env()? {
        Some(w) => distill::train::dist::init(&w, Device::Cpu)?.rank == 0,
        None => true,
    };
    let s = bench::load_spec(&a.spec, &a.config)?;
    let uses_cache = bench_loss::spec_uses_cache(&a.spec, &a.config)?;
    let student_cfg = bench::config_from_json(&s.student, "student")?;
    let r = if uses_cache { step_from_cache(&a, &s, &student_cfg)? } else { step_online(&a, &s, &student_cfg)? };
    let (config, ranks) = (&a.config, r.ranks.unwrap_or(1));
    if main && a.json {
        println!("{}", serde_json::json!({"name": config, "result": r}));
    } else if main {
        println!(
            "{config} ({ranks} rank(s)): {:.1} ms/step, {:.0} tok/s, peak RSS {:.0} MiB ({} threads; loss {:.3} -> {:.3})",
            r.ms_per_step, r.tokens_per_s, r.peak_rss_mib, r.threads, r.loss_first, r.loss_last
        );
    }
    Ok(())
}

/// A step against the configuration's teacher cache (`--cache`).
fn step_from_cache(a: &StepArgs, s: &StepBenchSpec, student_cfg: &LmConfig) -> Result<StepBenchResult> {
    let config = &a.config;
    let Some(dir) = &a.cache else {
        bail!("configuration `{config}` reads its teacher from a cache: give --cache DIR (made by `distill cache --seq-len {}`)", s.seq);
    };
    let (vs, student) = bench::random_model(student_cfg, 0)?;
    let reader = bench_loss::open_step_cache(dir, s, student_cfg.vocab_size)?;
    let cached = CachedTeacher::from_reader(reader);
    Ok(bench::bench_step(&vs, &student, Teacher::Cache(&cached), s, a.warmup, a.steps)?)
}

/// A step against a teacher run online: a model file, or a random model of a given config.
fn step_online(a: &StepArgs, s: &StepBenchSpec, student_cfg: &LmConfig) -> Result<StepBenchResult> {
    let config = &a.config;
    if a.cache.is_some() {
        bail!("--cache: configuration `{config}` runs its teacher online (no \"teacher_cache\": true)");
    }
    let (t_vs, teacher) = match (&s.teacher, &s.teacher_path) {
        (_, Some(p)) => {
            let t = load_lm(Path::new(p))?;
            (t.vs, t.model)
        }
        (Some(c), None) => bench::random_model(&bench::config_from_json(c, "teacher")?, 1)?,
        (None, None) => bail!("configuration `{config}` has neither `teacher` nor `teacher_path`"),
    };
    let bf16 = match s.teacher_dtype {
        Some(TeacherDtype::Bf16) => true,
        None | Some(TeacherDtype::F32) => false,
        Some(TeacherDtype::Auto) => bail!("configuration `{config}`: teacher_dtype is \"f32\" or \"bf16\""),
    };
    let (_t_vs, teacher) = bf16_if(t_vs, teacher, bf16)?;
    let (vs, student) = bench::random_model(student_cfg, 0)?;
    Ok(bench::bench_step(&vs, &student, Teacher::Lm(&teacher), s, a.warmup, a.steps)?)
}

fn forward(a: ForwardArgs) -> Result<()> {
    let ForwardArgs { model, rows, seq, reps, threads, bf16, json } = a;
    set_threads(threads);
    let t = load_lm(&model)?;
    let (_vs, m) = bf16_if(t.vs, t.model, bf16)?;
    let r = bench::bench_forward(&m, rows, seq, reps)?;
    if json {
        println!("{}", serde_json::json!({"model": model, "result": r}));
    } else {
        println!(
            "{:.1} ms per {rows}x{seq} forward, {:.0} tok/s, peak RSS {:.0} MiB ({} threads)",
            r.ms_per_forward, r.tokens_per_s, r.peak_rss_mib, r.threads
        );
    }
    Ok(())
}

fn embed(a: EmbedArgs) -> Result<()> {
    set_threads(a.threads);
    let m = distill::models::sentence::load_embedder(&resolve(&a.model)?)?;
    let r = bench::bench_embed(m.as_ref(), a.texts, a.batch)?;
    if a.json {
        println!("{}", serde_json::json!({"model": a.model, "result": r}));
    } else {
        println!(
            "{:.1} embeddings/s ({} texts, batch {}, {} threads), peak RSS {:.0} MiB",
            r.embeddings_per_s, r.texts, r.batch, r.threads, r.peak_rss_mib
        );
    }
    Ok(())
}

fn generate(a: GenerateArgs) -> Result<()> {
    let GenerateArgs { model, batch, prompt_tokens, new_tokens, reps, threads, json } = a;
    set_threads(threads);
    let t = load_lm(&model)?;
    let results = batch
        .iter()
        .map(|&b| bench::bench_generate(&t.model, b, prompt_tokens, new_tokens, reps))
        .collect::<distill::Result<Vec<_>>>()?;
    let base = results.first().map_or(1.0, |r| r.tokens_per_s);
    if json {
        println!("{}", serde_json::json!({"model": model, "results": results}));
    } else {
        for r in &results {
            println!(
                "batch {:>3}: {:.0} ms per generation ({prompt_tokens} prompt + {new_tokens} new tokens), {:.1} generated tok/s, {:.2}x batch {} ({} threads)",
                r.batch,
                r.ms_per_generation,
                r.tokens_per_s,
                r.tokens_per_s / base,
                results[0].batch,
                r.threads
            );
        }
    }
    Ok(())
}

fn loss(a: LossArgs) -> Result<()> {
    let LossArgs { vocab, tokens, hidden, chunk_rows, naive, warmup, reps, threads, json } = a;
    let o = bench_loss::LossBenchOpts { vocab, tokens, hidden, chunk_rows, naive, warmup, reps, ..Default::default() };
    o.validate()?;
    let need = o.estimated_extra_bytes() + 4 * (2 * vocab as u64 * hidden as u64 + 2 * tokens as u64 * hidden as u64);
    if let Some(avail) = bench_loss::proc_meminfo_kib("MemAvailable") {
        if need / 1024 > avail {
            bail!(
                "--vocab {vocab} --tokens {tokens} --hidden {hidden}{} needs about {:.1} GiB, only {:.1} GiB is available",
                if naive { " --naive" } else { "" },
                need as f64 / (1u64 << 30) as f64,
                avail as f64 / (1u64 << 20) as f64
            );
        }
    }
    set_threads(threads);
    let r = bench_loss::bench_loss(&o)?;
    if json {
        println!("{}", serde_json::json!({"name": "loss", "result": r}));
    } else {
        println!(
            "{} loss, V {vocab}, N {tokens}, H {hidden}: {:.0} ms per forward+backward, peak extra RSS {:.0} MiB \
             (timed passes only: {:.0} MiB; {} threads; loss {:.4})",
            r.mode, r.ms_per_pass, r.extra_peak_mib, r.extra_peak_timed_mib, r.threads, r.loss
        );
    }
    Ok(())
}

fn cache_kl(a: CacheKlArgs) -> Result<()> {
    let CacheKlArgs { teacher, data, rows, seq, k, step, threads, json } = a;
    if seq < 2 {
        bail!("--seq must be at least 2");
    }
    set_threads(threads);
    let t = load_lm(&teacher)?;
    let blocks = distill::data::text::text_blocks(&text_sources(&data), &t.tokenizer, seq, 50, None)?;
    let o = bench_loss::FrontierOpts { rows, ks: k, step, batch_rows: 4 };
    let r = bench_loss::cache_frontier(&t.model, &blocks, &o)?;
    if json {
        println!("{}", serde_json::json!({"name": "cache-kl", "teacher": teacher, "result": r}));
    } else {
        print!("{}", bench_loss::frontier_table(&r));
    }
    Ok(())
}

fn cache_dump(a: CacheDumpArgs) -> Result<()> {
    if a.rows.is_empty() {
        bail!("--rows: give at least one row");
    }
    let d = bench_loss::cache_dump(&a.dir, &a.rows)?;
    if a.json {
        println!("{}", serde_json::to_string(&d)?);
        return Ok(());
    }
    let k = d.top_k;
    for (j, &row) in d.rows.iter().enumerate() {
        for t in 0..d.seq_len {
            let at = (j * d.seq_len + t) * k;
            let show = k.min(4);
            let pairs: Vec<String> = (at..at + show).map(|i| format!("{}:{}", d.ids[i], d.logp[i])).collect();
            println!("row {row} pos {t}: log_tail {} top {}", d.log_tail[j * d.seq_len + t], pairs.join(" "));
        }
    }
    Ok(())
}
