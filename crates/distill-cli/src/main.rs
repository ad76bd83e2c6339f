//! `distill`: parse → validate → run → exit code. Errors are printed once, on one line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Parser;
use cli::{Cli, Cmd, Encoding};
use distill::io::{fetch, lm};
use distill::recipe::Recipe;
use distill_text::TextSource;
use tch::Device;

mod bench_cmd;
mod cli;
mod dist_cmd;
mod encoder_cmd;

/// A model path that may name an asset (`asset:smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`).
fn resolve(p: &Path) -> Result<PathBuf> {
    let s = p.to_string_lossy();
    for a in fetch::missing_assets([s.as_ref()])? {
        eprintln!("fetching asset `{}` ({})", a.name, a.spec);
        fetch::fetch(a)?;
    }
    Ok(fetch::resolve(&s)?)
}

/// Keeps freed memory in the process instead of returning every large buffer to the kernel.
///
/// glibc serves each allocation of ≥ 32 MiB with a fresh `mmap` and unmaps it on free; a
/// distillation step allocates several `[tokens, vocab]` tensors (200 MB each at 1,024 × 49,152),
/// so every step pays hundreds of thousands of page faults. With mmap disabled and trimming
/// off, those buffers are reused from the heap. `DISTILL_MALLOC=system` keeps glibc's defaults.
fn tune_allocator() {
    if std::env::var_os("DISTILL_MALLOC").is_some_and(|v| v == "system") {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

/// A panic is one line on stderr, never a backtrace: silent when [`distill_base::guard::catch`]
/// turns it into an error (printed by `main`), otherwise reported as a bug with its place.
fn one_line_panics() {
    std::panic::set_hook(Box::new(|info| {
        if distill_base::guard::guarded() {
            return;
        }
        let msg = distill_base::guard::panic_message(info.payload()).replace('\n', " ");
        let at = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        dist_cmd::error_line(&format!("error: internal error (a bug in distill; please report it): {msg}{at}"));
    }));
}

fn main() -> ExitCode {
    tune_allocator();
    one_line_panics();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    if let Cmd::Run { nproc: Some(n), recipe, set, .. } = &cli.cmd {
        // A bad recipe is one error line here, not one per rank.
        let checked = load_recipe(recipe, set).and_then(|r| {
            let gpus = tch::Cuda::device_count() as usize;
            match r.cuda_device() {
                Some(d) if gpus < *n as usize => {
                    bail!("--nproc {n} with device `{d}`: one GPU per rank, but libtorch sees {gpus}")
                }
                _ => Ok(()),
            }
        });
        return match checked.and_then(|_| dist_cmd::launch(*n as usize)) {
            Ok(code) => code,
            Err(e) => {
                dist_cmd::error_line(&format!("error: {}", one_line(&e)));
                ExitCode::FAILURE
            }
        };
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            dist_cmd::error_line(&format!("error: {}", one_line(&e)));
            ExitCode::FAILURE
        }
    }
}

/// Help and version go to stdout as clap prints them; a usage error is one `error:` line (exit 2).
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = e.print();
        return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
    }
    let text = e.to_string();
    let parts: Vec<&str> =
        text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with("For more information")).collect();
    eprintln!("error: {}", parts.join(" ").trim_start_matches("error: "));
    ExitCode::from(2)
}

/// The error and its causes on one line, each cause once: library errors already embed their
/// source's message (`path: No such file or directory`), so a cause whose text is part of the
/// line so far is not repeated.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let msg = cause.to_string();
        if line.contains(&msg) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&msg);
    }
    line.replace('\n', " ")
}

fn set_threads(threads: Option<usize>) {
    let n = threads.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    tch::set_num_threads(n as i32);
}

/// `DIR: N tokens, B bytes/token, X MB in S shards`.
fn describe_cache(dir: &Path, m: &distill_cache::Manifest) -> String {
    format!(
        "{}: {} tokens, {} bytes/token, {:.1} MB in {} shards",
        dir.display(),
        m.tokens,
        m.bytes_per_token,
        m.total_bytes() as f64 / 1e6,
        m.shards.len()
    )
}

/// `--out` may be new or empty; with `--resume` it must hold this very recipe (with the same
/// overrides).
fn check_run_dir(out: &Path, resume: bool, text: &str) -> Result<()> {
    // A run killed before it wrote its recipe leaves a directory with nothing in it but, at most,
    // a temporary file of an atomic write: resuming it is starting it.
    let saved = out.join("recipe.toml");
    let nothing_done = !saved.exists()
        && std::fs::read_dir(out).map_or(true, |d| {
            d.flatten().all(|e| distill_base::atomic::is_temp_name(&e.file_name().to_string_lossy()))
        });
    if resume && !nothing_done {
        let before = std::fs::read_to_string(&saved)
            .with_context(|| format!("--resume: {} is not a run directory (no recipe.toml)", out.display()))?;
        if before != text {
            bail!(
                "--resume: the recipe (with --set overrides) differs from the one {} was started with; use the same recipe and overrides",
                out.display()
            );
        }
    } else if !resume && out.exists() && std::fs::read_dir(out).map(|mut d| d.next().is_some()).unwrap_or(true) {
        bail!("{} already exists; pass --resume to continue it or choose another --out", out.display());
    }
    Ok(())
}

fn load_recipe(path: &Path, set: &[String]) -> Result<Recipe> {
    let r = Recipe::load(path, set)?;
    r.validate()?;
    Ok(r)
}

fn fetch_missing(r: &Recipe) -> Result<()> {
    for a in fetch::missing_assets(r.paths())? {
        eprintln!("fetching asset `{}` ({})", a.name, a.spec);
        fetch::fetch(a)?;
    }
    Ok(())
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Bench { what } => bench_cmd::run(what),
        Cmd::Cache { action: Some(cli::CacheAction::Merge { parts, out }), .. } => {
            let parts: Vec<&Path> = parts.iter().map(PathBuf::as_path).collect();
            let m = distill_cache::merge(&parts, &out)?;
            println!("{}, from {} parts", describe_cache(&out, &m), parts.len());
            Ok(())
        }
        Cmd::Cache {
            action: None,
            shard,
            teacher,
            data,
            recipe,
            set,
            seq_len,
            top_k,
            tail_samples,
            encoding,
            step,
            rows_per_shard,
            batch,
            threads,
            out,
        } => {
            let (teacher_path, data_cfg) = match (&recipe, &teacher) {
                (Some(rp), None) => {
                    if !data.is_empty() {
                        bail!("--data and --recipe are exclusive: the recipe's [data] is used");
                    }
                    let Recipe::Lm(r) = load_recipe(rp, &set)? else {
                        bail!("--recipe: {} is not a causal-lm recipe", rp.display());
                    };
                    (PathBuf::from(&r.teacher.path), r.resolve()?.data)
                }
                (None, Some(t)) => {
                    if data.is_empty() {
                        bail!("--data: give at least one text file, directory or glob (or --recipe)");
                    }
                    let sources: Vec<TextSource> = data.iter().map(TextSource::new).collect();
                    let mut d = distill_text::TextDataConfig::new(distill::data::text::resolve_sources(&sources)?);
                    d.pack.seq_len = seq_len;
                    (t.clone(), d)
                }
                (Some(_), Some(_)) => bail!("--teacher and --recipe are exclusive"),
                (None, None) => bail!("give --teacher and --data, or --recipe"),
            };
            let encoding = match encoding {
                Encoding::U8 => distill_cache::LogprobEncoding::U8 { step },
                Encoding::F16 => distill_cache::LogprobEncoding::F16,
            };
            set_threads(threads.or_else(dist_cmd::threads_per_rank)); // under torchrun, a share of the cores
            let t = lm::load_lm(&resolve(&teacher_path)?, Device::Cpu)?;
            let mut opts = distill::teacher::cache::CaptureOptions {
                top_k,
                tail_samples,
                rows_per_shard,
                batch_rows: batch,
                encoding,
                progress: true,
                part: None,
            };
            let mut out = out.context("--out is required")?;
            opts.part = match shard {
                None => None,
                Some(cli::Shard::Part(i, n)) => Some((i, n)),
                Some(cli::Shard::Auto) => {
                    let Some(w) = distill::train::dist::WorldEnv::from_env()? else {
                        bail!("--shard auto takes the part from torchrun's RANK and WORLD_SIZE, which are not set");
                    };
                    out = out.join(format!("part-{}-of-{}", w.rank + 1, w.size));
                    Some((w.rank, w.size))
                }
            };
            let t0 = std::time::Instant::now();
            let m = distill::teacher::cache::capture_text(&t, &data_cfg, &opts, &out)?;
            println!("{} ({:.0} s)", describe_cache(&out, &m), t0.elapsed().as_secs_f64());
            Ok(())
        }
        Cmd::GenerateData {
            model,
            prompts,
            field,
            recipe,
            set,
            prompt_tokens,
            limit,
            out,
            stop,
            chat,
            max_tokens,
            temperature,
            top_k,
            top_p,
            repetition_penalty,
            seed,
            batch,
            threads,
        } => {
            let (writer, from_rows) = match (&prompts, &recipe) {
                (Some(p), None) => {
                    let Some(m) = &model else { bail!("--model: give the model that writes (or use --recipe)") };
                    // Read and check the prompts before the model loads.
                    (m.clone(), Err(distill::experiments::gendata::read_prompts(p, &field)?))
                }
                (None, Some(rp)) => {
                    let Recipe::Lm(r) = load_recipe(rp, &set)? else {
                        bail!("--recipe: {} is not a causal-lm recipe", rp.display());
                    };
                    fetch_missing(&Recipe::Lm(r.clone()))?;
                    let writer = model.clone().unwrap_or_else(|| PathBuf::from(&r.teacher.path));
                    (writer, Ok(r.resolve()?.data))
                }
                (Some(_), Some(_)) => bail!("--prompts and --recipe are exclusive"),
                (None, None) => bail!("give --prompts FILE (with --model), or --recipe"),
            };
            set_threads(threads);
            let m = lm::load_lm(&resolve(&writer)?, Device::Cpu)?;
            let (prompts, max_new) = match from_rows {
                Err(list) => (list, max_tokens.unwrap_or(256)),
                Ok(data) => {
                    let rows = distill_text::build_dataset(&data, &m.tokenizer)?.train;
                    let p = distill::experiments::gendata::prompts_from_rows(
                        &rows,
                        &m.tokenizer,
                        prompt_tokens,
                        limit.unwrap_or(usize::MAX),
                    )?;
                    (p, max_tokens.unwrap_or(rows.seq_len - prompt_tokens))
                }
            };
            let opts = distill::experiments::gendata::GenDataOptions {
                generate: distill::eval::generate::GenerateOptions {
                    max_new_tokens: max_new,
                    temperature,
                    top_k,
                    top_p,
                    seed,
                    eos_id: m.model.config().eos_token_ids.first().copied(),
                    repetition_penalty,
                },
                stops: stop,
                chat,
                batch,
                progress: true,
            };
            let s = distill::experiments::gendata::generate_data(&m, &prompts, &opts, &out)?;
            println!(
                "{}: {} records ({} written now, {} tokens, {:.0} s; ends: {} EOS, {} stop string, {} length)",
                out.display(),
                s.records,
                s.generated,
                s.new_tokens,
                s.seconds,
                s.finish_eos,
                s.finish_stop,
                s.finish_length
            );
            Ok(())
        }
        Cmd::SelfDistill {
            model,
            student,
            families,
            train,
            heldout,
            samples,
            eval_samples,
            rounds,
            temperature,
            max_tokens,
            keep,
            epochs,
            lr,
            train_batch,
            batch,
            chat,
            seed,
            out,
            threads,
        } => {
            use distill::experiments::selfdistill::{run, trainable, SelfDistillOptions};
            let families = families
                .split(',')
                .map(|f| distill::eval::verify::Family::parse(f.trim()))
                .collect::<distill::Result<Vec<_>>>()?;
            let o = SelfDistillOptions {
                families,
                train_problems: train,
                heldout_problems: heldout,
                samples,
                eval_samples,
                rounds,
                temperature,
                max_new_tokens: max_tokens,
                keep_per_problem: keep,
                epochs,
                lr,
                train_batch,
                gen_batch: batch,
                chat,
                seed,
            };
            o.validate()?;
            set_threads(threads);
            let model = resolve(&model)?;
            let student = student.as_deref().map(resolve).transpose()?;
            let writer = match &student {
                Some(s) => {
                    let w = lm::load_lm(&model, Device::Cpu)?;
                    let st = lm::load_lm(s, Device::Cpu)?;
                    if lm::tokenizer_fingerprint(&w.tokenizer) != lm::tokenizer_fingerprint(&st.tokenizer) {
                        bail!(
                            "--student {} has another tokenizer than --model; it cannot learn from its token ids",
                            s.display()
                        );
                    }
                    Some(w)
                }
                None => None,
            };
            let initial = student.clone().unwrap_or_else(|| model.clone());
            let load = |p: Option<&Path>| trainable(&initial, p);
            let rep = run(writer.as_ref(), &load, &o, &out, &|m| eprintln!("{m}"))?;
            let header: Vec<String> = (0..=rounds).map(|r| format!("round {r}")).collect();
            println!("held-out greedy pass@1 (pass@{eval_samples}) per family, before training (round 0) and after each round");
            println!("| family | {} |", header.join(" | "));
            println!("|---|{}", "---|".repeat(rounds + 1));
            for (i, f) in o.families.iter().enumerate() {
                let cells: Vec<String> = rep
                    .evals
                    .iter()
                    .map(|ev| {
                        let e = &ev[i];
                        match e.pass_n {
                            Some(pn) => format!("{:.1}% ({:.1}%)", 100.0 * e.pass1, 100.0 * pn),
                            None => format!("{:.1}%", 100.0 * e.pass1),
                        }
                    })
                    .collect();
                println!("| {} | {} |", f.name(), cells.join(" | "));
            }
            println!("{}: {:.0} s", out.display(), rep.seconds);
            Ok(())
        }
        Cmd::Inspect { dir, verify, json } => {
            let rep = distill_cache::inspect(&dir)?;
            if verify {
                distill_cache::CacheReader::open(&dir)?.verify_all()?;
            }
            if json {
                println!("{}", serde_json::to_string(&rep)?);
            } else {
                print!("{rep}");
                if verify {
                    println!("checksums: all {} shards verified", rep.shards);
                }
            }
            Ok(())
        }
        Cmd::Fetch { names, list } => {
            if list || names.is_empty() {
                for a in fetch::ASSETS {
                    let state = if a.is_fetched() { "fetched" } else { "not fetched" };
                    println!("{:<14} {:<12} {}", a.name, state, a.about);
                }
                return Ok(());
            }
            let assets: Vec<_> = names.iter().map(|n| fetch::asset(n)).collect::<Result<_, _>>()?;
            let mut paths = Vec::new();
            for a in assets {
                if !a.is_fetched() {
                    eprintln!("fetching {} ({})", a.name, a.spec);
                }
                paths.push(fetch::fetch(a)?);
            }
            for p in paths {
                println!("{}", p.display());
            }
            Ok(())
        }
        Cmd::Report { run_dir } => {
            println!("{}", distill::report::write_report(&run_dir)?.display());
            Ok(())
        }
        Cmd::Check { recipe, set } => {
            let r = load_recipe(&recipe, &set)?;
            let missing = fetch::missing_assets(r.paths())?;
            println!("{}: ok", recipe.display());
            for a in missing {
                println!("asset `{}` will be fetched on first run", a.name);
            }
            Ok(())
        }
        Cmd::Run { recipe, out, set, resume, json, nproc: _ } => {
            let r = load_recipe(&recipe, &set)?;
            let text = r.to_toml()?;
            let world = distill::train::dist::WorldEnv::from_env()?;
            set_threads(r.threads().or_else(|| world.as_ref().and_then(|_| dist_cmd::threads_per_rank())));
            let check = || -> Result<()> {
                check_run_dir(&out, resume, &text)?;
                fetch_missing(&r)
            };
            let place = match &world {
                Some(w) => {
                    let device = match r.cuda_device() {
                        Some(d) => {
                            let gpus = tch::Cuda::device_count() as usize;
                            if w.local_rank >= gpus {
                                bail!(
                                    "rank {} (LOCAL_RANK {}): device `{d}` needs one GPU per local rank, but libtorch sees {gpus}",
                                    w.rank,
                                    w.local_rank
                                );
                            }
                            Device::Cuda(w.local_rank)
                        }
                        None => Device::Cpu,
                    };
                    dist_cmd::join(w, device, &out, resume, check)?
                }
                None => {
                    check()?;
                    dist_cmd::single(&out)
                }
            };
            let (dir, main) = (place.dir.as_path(), place.main);
            // The summary as JSON, the table, and the exported students to name.
            let (summary, table, students) = match r {
                Recipe::Image(ir) => {
                    let opts = distill::experiments::image::RunOptions { progress: main, verbose: main };
                    let s = distill::experiments::image::run(&ir, &text, dir, &opts)?;
                    (serde_json::to_string_pretty(&s)?, distill::experiments::image::table(&s), vec![])
                }
                Recipe::Encoder(er) => {
                    let opts = distill::experiments::encoder::RunOptions { progress: main, verbose: main };
                    let s = distill::experiments::encoder::run(&er, &text, dir, &opts)?;
                    let students = vec![("student", "sentence-transformers directory")];
                    (serde_json::to_string_pretty(&s)?, distill::experiments::encoder::table(&s), students)
                }
                Recipe::Lm(lr) => {
                    let opts = distill::experiments::lm::RunOptions { progress: main, verbose: main };
                    let s = distill::experiments::lm::run(&lr, &text, dir, &opts)?;
                    let students = vec![("student", "Hugging Face directory"), ("student.gguf", "GGUF, llama.cpp")];
                    (serde_json::to_string_pretty(&s)?, distill::experiments::lm::report(&s), students)
                }
            };
            if main && json {
                println!("{summary}");
            } else if main {
                print!("{table}");
                println!("summary: {}", out.join("summary.json").display());
                for (path, what) in students.into_iter().filter(|(p, _)| out.join(p).exists()) {
                    println!("student: {} ({what})", out.join(path).display());
                }
            }
            Ok(())
        }
        Cmd::Convert { model, out, gguf_type: ty } => {
            let to_gguf = out.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
            set_threads(None);
            let m = lm::load_lm(&resolve(&model)?, Device::Cpu)?;
            if to_gguf {
                let name = model.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                distill::io::export::export_gguf(&m.model, &m.tokenizer, m.chat_template.as_deref(), &name, &out, ty)?;
            } else {
                let template = m.chat_template.as_deref();
                distill::io::export::export_hf_with_chat_template(&m.model, Some(&m.tokenizer_json), template, &out)?;
            }
            println!("{}", out.display());
            Ok(())
        }
        Cmd::Embed { model, data, out, field, batch } => {
            set_threads(None);
            encoder_cmd::embed(&resolve(&model)?, &resolve(&data)?, &out, batch, &field)
        }
        Cmd::Eval { model, data, teacher, json, .. }
            if encoder_cmd::is_encoder_dir(
                &fetch::resolve(&model.to_string_lossy()).unwrap_or_else(|_| model.clone()),
            ) =>
        {
            let [d] = data.as_slice() else { bail!("--data: give one labelled file or directory for an encoder") };
            set_threads(None);
            let t = teacher.as_deref().map(resolve).transpose()?;
            encoder_cmd::eval(&resolve(&model)?, &resolve(Path::new(d))?, t.as_deref(), 32, json)
        }
        Cmd::Eval { model, data, teacher, seq_len, max_rows, min_chars, json } => {
            if data.is_empty() {
                bail!("--data: give at least one text file, directory or glob");
            }
            if seq_len < 2 {
                bail!("--seq-len must be at least 2");
            }
            set_threads(None);
            let m = lm::load_lm(&resolve(&model)?, Device::Cpu)?;
            let t = match &teacher {
                Some(p) => {
                    let t = lm::load_lm(&resolve(p)?, Device::Cpu)?;
                    lm::check_compatible(&t, m.model.config().vocab_size, Some(&m.tokenizer))?;
                    Some(t)
                }
                None => None,
            };
            let sources: Vec<TextSource> = data.iter().map(TextSource::new).collect();
            let blocks = distill::data::text::text_blocks(&sources, &m.tokenizer, seq_len, min_chars)?;
            let s = distill::eval::score(&m.model, t.as_ref().map(|t| &t.model), &blocks, max_rows, 4)?;
            if json {
                println!("{}", serde_json::to_string(&s)?);
            } else {
                println!("model       {}", model.display());
                println!("tokens      {}", s.tokens);
                println!("nll         {:.4} nats/token", s.nll);
                println!("perplexity  {:.3}", s.perplexity);
                if let (Some(kl), Some(a)) = (s.kl_to_teacher, s.top1_agreement) {
                    println!("KL(teacher‖model)  {kl:.4} nats/token");
                    println!("top-1 agreement    {:.2}%", a * 100.0);
                }
            }
            Ok(())
        }
        Cmd::Generate {
            model,
            prompt,
            stop,
            chat,
            max_tokens,
            temperature,
            top_k,
            top_p,
            repetition_penalty,
            seed,
        } => {
            set_threads(None);
            let m = lm::load_lm(&resolve(&model)?, Device::Cpu)?;
            let sampling = temperature.is_some() || top_k.is_some() || top_p.is_some();
            let opts = distill::eval::generate::GenerateOptions {
                max_new_tokens: max_tokens,
                temperature: if sampling { temperature.unwrap_or(1.0) } else { 0.0 },
                top_k: top_k.unwrap_or(0),
                top_p: top_p.unwrap_or(1.0),
                seed,
                eos_id: m.model.config().eos_token_ids.first().copied(),
                repetition_penalty,
            };
            let inputs: Vec<String> = if chat {
                prompt.iter().map(|p| m.chat_prompt(p)).collect::<distill::Result<_>>()?
            } else {
                prompt.clone()
            };
            let gens = distill::eval::generate_texts(&m.model, &m.tokenizer, &inputs, &opts, &stop)?;
            // A chat answer is printed after the user's prompt, a continuation after its prompt.
            for (i, (p, g)) in prompt.iter().zip(gens).enumerate() {
                if i > 0 {
                    println!();
                }
                if chat {
                    println!("{p}\n{}", g.text);
                } else {
                    println!("{p}{}", g.text);
                }
            }
            Ok(())
        }
    }
}
