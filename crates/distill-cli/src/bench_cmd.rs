//! `distill bench …`: timings that bench/run.py sets next to their PyTorch twins.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::Subcommand;
use distill::lm;
use tch::Device;

use crate::{resolve, set_threads};

#[derive(Subcommand)]
pub enum BenchCmd {
    /// Time the KD training step of a configuration of bench/configs.json.
    Step {
        /// Configuration name (`a`, `b`).
        #[arg(long)]
        config: String,
        #[arg(long, default_value = "bench/configs.json")]
        spec: PathBuf,
        #[arg(long, default_value_t = 2)]
        warmup: usize,
        #[arg(long, default_value_t = 5)]
        steps: usize,
        #[arg(long)]
        threads: Option<usize>,
        #[arg(long)]
        json: bool,
    },
    /// Time a model's full-sequence forward (logits at every position, no-grad).
    Forward {
        /// GGUF file or HF directory.
        #[arg(long)]
        model: PathBuf,
        #[arg(long, default_value_t = 1)]
        rows: i64,
        #[arg(long, default_value_t = 512)]
        seq: i64,
        #[arg(long, default_value_t = 3)]
        reps: usize,
        #[arg(long)]
        threads: Option<usize>,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(what: BenchCmd) -> Result<()> {
    use distill::bench;
    match what {
        BenchCmd::Step { config, spec, warmup, steps, threads, json } => {
            set_threads(threads);
            let s = bench::load_spec(&spec, &config)?;
            let student_cfg = bench::config_from_json(&s.student, "student")?;
            let teacher = match (&s.teacher, &s.teacher_path) {
                (_, Some(p)) => lm::load_lm(&resolve(Path::new(p))?, Device::Cpu)?.model,
                (Some(c), None) => bench::random_model(&bench::config_from_json(c, "teacher")?, 1)?.1,
                (None, None) => bail!("configuration `{config}` has neither `teacher` nor `teacher_path`"),
            };
            let (vs, student) = bench::random_model(&student_cfg, 0)?;
            let r = bench::bench_step(&vs, &student, &teacher, &s, warmup, steps)?;
            if json {
                println!("{}", serde_json::json!({"name": config, "result": r}));
            } else {
                println!(
                    "{config}: {:.1} ms/step, {:.0} tok/s, peak RSS {:.0} MiB ({} threads; loss {:.3} -> {:.3})",
                    r.ms_per_step, r.tokens_per_s, r.peak_rss_mib, r.threads, r.loss_first, r.loss_last
                );
            }
        }
        BenchCmd::Forward { model, rows, seq, reps, threads, json } => {
            set_threads(threads);
            let m = lm::load_lm(&resolve(&model)?, Device::Cpu)?.model;
            let r = bench::bench_forward(&m, rows, seq, reps)?;
            if json {
                println!("{}", serde_json::json!({"model": model, "result": r}));
            } else {
                println!(
                    "{:.1} ms per {rows}x{seq} forward, {:.0} tok/s, peak RSS {:.0} MiB ({} threads)",
                    r.ms_per_forward, r.tokens_per_s, r.peak_rss_mib, r.threads
                );
            }
        }
    }
    Ok(())
}
