//! `distill run`, `distill check` and `distill report`: a recipe end to end, checked, reported.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use distill::io::fetch;
use distill::recipe::Recipe;
use distill::train::dist::WorldEnv;
use tch::Device;

use crate::cli::RunArgs;
use crate::common::{fetch_missing, load_recipe, set_threads};
use crate::dist_cmd;

/// `distill run`: this process runs the recipe (alone, or as one rank of torchrun's job), or with
/// `--nproc` starts the ranks that do.
pub fn run(a: RunArgs) -> Result<ExitCode> {
    if let Some(n) = a.nproc {
        // A terminal's Ctrl-C reaches every rank, which stop together and checkpoint; this
        // launcher waits for them.
        crate::interrupt::ignore_sigint();
        return launch(&a, n as usize);
    }
    let r = load_recipe(&a.recipe, &a.set)?;
    let text = r.to_toml()?;
    let world = WorldEnv::from_env()?;
    let threads = a.threads.map(|t| t as usize);
    set_threads(threads.or(r.threads()).or_else(|| world.as_ref().and_then(|_| dist_cmd::threads_per_rank())));
    crate::interrupt::install();
    let check = || -> Result<()> {
        check_run_dir(&a.out, a.resume, &text)?;
        fetch_missing(r.paths())
    };
    let place = match &world {
        Some(w) => dist_cmd::join(w, rank_device(&r, w)?, &a.out, a.resume, check)?,
        None => {
            check()?;
            if a.resume && a.out.join("summary.json").is_file() {
                // Finished: its results, not a second evaluation.
                eprintln!("{} is finished (summary.json); nothing to resume", a.out.display());
                print_finished(&r, &a)?;
                return Ok(ExitCode::SUCCESS);
            }
            dist_cmd::single(&a.out)
        }
    };
    let (summary, table, students) = match run_recipe(r, &text, &place.dir, place.main) {
        Err(e) if matches!(e.downcast_ref::<distill::Error>(), Some(distill::Error::Interrupted { .. })) => {
            if place.main {
                eprintln!("{e}; continue with: {}", resume_command(&a));
            }
            return Ok(ExitCode::from(130));
        }
        other => other?,
    };
    if place.main && a.json {
        println!("{summary}");
    } else if place.main {
        print!("{table}");
        println!("summary: {}", a.out.join("summary.json").display());
        for (path, what) in students.into_iter().filter(|(p, _)| a.out.join(p).exists()) {
            println!("student: {} ({what})", a.out.join(path).display());
        }
        if a.out.join("report.html").exists() {
            println!("report: {}", a.out.join("report.html").display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A finished run's table (or summary JSON with --json), read from its summary.json.
fn print_finished(r: &Recipe, a: &RunArgs) -> Result<()> {
    use distill::experiments::{encoder, image, lm};
    let path = a.out.join("summary.json");
    let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    if a.json {
        println!("{text}");
        return Ok(());
    }
    let bad = |e: serde_json::Error| anyhow::anyhow!("{}: {e}", path.display());
    let table = match r {
        Recipe::Image(_) => image::table(&serde_json::from_str(&text).map_err(bad)?),
        Recipe::Encoder(_) => encoder::table(&serde_json::from_str(&text).map_err(bad)?),
        Recipe::Lm(_) => lm::report(&serde_json::from_str(&text).map_err(bad)?),
    };
    print!("{table}");
    println!("summary: {}", path.display());
    if a.out.join("report.html").exists() {
        println!("report: {}", a.out.join("report.html").display());
    }
    Ok(())
}

/// `check --out DIR`: the run directory `run` would use is new or empty, and its parent takes
/// files.
fn check_out_writable(out: &Path) -> Result<()> {
    if out.exists() && std::fs::read_dir(out).map(|mut d| d.next().is_some()).unwrap_or(true) {
        bail!("{} already exists and is not empty; `run` would need --resume or another --out", out.display());
    }
    let parent = match out.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(p) => p.to_path_buf(),
        None => std::path::PathBuf::from("."),
    };
    let probe = parent.join(format!(".distill-check-{}", std::process::id()));
    std::fs::create_dir_all(&parent)
        .and_then(|_| std::fs::write(&probe, b""))
        .with_context(|| format!("--out {}: cannot write in {}", out.display(), parent.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// The command that continues an interrupted run: this one with `--resume`.
fn resume_command(a: &RunArgs) -> String {
    let mut cmd = format!("distill run {} --out {}", a.recipe.display(), a.out.display());
    for s in &a.set {
        cmd += &format!(" --set '{s}'");
    }
    if let Some(t) = a.threads {
        cmd += &format!(" --threads {t}");
    }
    cmd + " --resume"
}

/// `--nproc N`: the recipe is checked once here (a bad one is one error line, not one per rank),
/// then N ranks of this command run it.
fn launch(a: &RunArgs, n: usize) -> Result<ExitCode> {
    let r = load_recipe(&a.recipe, &a.set)?;
    let gpus = tch::Cuda::device_count() as usize;
    if let Some(d) = r.cuda_device() {
        if gpus < n {
            bail!("--nproc {n} with device `{d}`: one GPU per rank, but libtorch sees {gpus}");
        }
    }
    dist_cmd::launch(n)
}

/// The device of this rank: its local GPU for a CUDA recipe, else the CPU.
fn rank_device(r: &Recipe, w: &WorldEnv) -> Result<Device> {
    let Some(d) = r.cuda_device() else { return Ok(Device::Cpu) };
    let gpus = tch::Cuda::device_count() as usize;
    if w.local_rank >= gpus {
        bail!(
            "rank {} (LOCAL_RANK {}): device `{d}` needs one GPU per local rank, but libtorch sees {gpus}",
            w.rank,
            w.local_rank
        );
    }
    Ok(Device::Cuda(w.local_rank))
}

/// What a run prints: its summary as JSON, its table, and the exported students to name (file
/// in the run directory, format).
type RunOutput = (String, String, Vec<(&'static str, &'static str)>);

/// Runs the recipe into `dir`; `main` (rank 0, or no job) shows progress.
fn run_recipe(r: Recipe, text: &str, dir: &Path, main: bool) -> Result<RunOutput> {
    use distill::experiments::{encoder, image, lm};
    Ok(match r {
        Recipe::Image(ir) => {
            let opts = image::RunOptions { progress: main, verbose: main, time_steps: None };
            let s = image::run(&ir, text, dir, &opts)?;
            (serde_json::to_string_pretty(&s)?, image::table(&s), vec![])
        }
        Recipe::Encoder(er) => {
            let opts = encoder::RunOptions { progress: main, verbose: main, time_steps: None };
            let s = encoder::run(&er, text, dir, &opts)?;
            let students = vec![("student", "sentence-transformers directory")];
            (serde_json::to_string_pretty(&s)?, encoder::table(&s), students)
        }
        Recipe::Lm(lr) => {
            let opts = lm::RunOptions { progress: main, verbose: main, time_steps: None };
            let s = lm::run(&lr, text, dir, &opts)?;
            let students = vec![("student", "Hugging Face directory"), ("student.gguf", "GGUF, llama.cpp")];
            (serde_json::to_string_pretty(&s)?, lm::report(&s), students)
        }
    })
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
                "--resume: the recipe (with --set overrides) differs from the one {} was started with in {}; use the same recipe and overrides",
                out.display(),
                differing_keys(&before, text)
            );
        }
    } else if !resume && out.exists() && std::fs::read_dir(out).map(|mut d| d.next().is_some()).unwrap_or(true) {
        bail!("{} already exists; pass --resume to continue it or choose another --out", out.display());
    }
    Ok(())
}

/// The dotted keys whose values differ between two resolved recipes (`train.steps: 100 → 200`),
/// at most five named.
fn differing_keys(before: &str, now: &str) -> String {
    fn flat(prefix: &str, v: &toml::Value, out: &mut std::collections::BTreeMap<String, String>) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    flat(&key, v, out);
                }
            }
            other => {
                out.insert(prefix.to_string(), other.to_string());
            }
        }
    }
    let parse = |t: &str| {
        let mut m = std::collections::BTreeMap::new();
        if let Ok(v) = t.parse::<toml::Table>() {
            flat("", &toml::Value::Table(v), &mut m);
        }
        m
    };
    let (a, b) = (parse(before), parse(now));
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    let diffs: Vec<String> = keys
        .into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| {
            let show = |v: Option<&String>| v.cloned().unwrap_or_else(|| "(unset)".into());
            format!("{k}: {} → {}", show(a.get(k)), show(b.get(k)))
        })
        .collect();
    match diffs.len() {
        0 => "its formatting".into(),
        n if n > 5 => format!("{} and {} more", diffs[..5].join(", "), n - 5),
        _ => diffs.join(", "),
    }
}

/// `distill check`: the recipe parses and validates, its device exists, and — for an LM recipe
/// whose assets are here — its models and data are read as `run` would read them (no weights);
/// which assets a run would fetch.
pub fn check(recipe: &Path, set: &[String], out: Option<&Path>, estimate: bool) -> Result<()> {
    let r = load_recipe(recipe, set)?;
    if let Some(d) = r.cuda_device() {
        if !tch::Cuda::is_available() {
            bail!("device `{d}`: libtorch sees no CUDA GPU here (build and driver: `python -c \"import torch; print(torch.cuda.is_available())\"`); use device = \"cpu\"");
        }
    }
    let missing = fetch::missing_assets(r.paths())?;
    let plan = match (&r, missing.is_empty()) {
        (Recipe::Lm(lm), true) => distill::experiments::lm::check_models(lm)?,
        _ => vec![],
    };
    if let Some(out) = out {
        check_out_writable(out)?;
    }
    println!("{}: ok", recipe.display());
    for line in plan {
        println!("  {line}");
    }
    for a in &missing {
        println!("asset `{}` will be fetched on first run", a.name);
    }
    if estimate {
        estimate_time(&r, &missing)?;
    }
    Ok(())
}

/// `check --estimate`: each trained phase timed over two steps (after one untimed) on the real
/// models and rows, in a scratch directory that is removed after.
fn estimate_time(r: &Recipe, missing: &[&fetch::Asset]) -> Result<()> {
    let Recipe::Lm(lm) = r else { bail!("--estimate: LM recipes only (image and encoder runs take minutes)") };
    if !missing.is_empty() {
        bail!("--estimate needs the recipe's assets here: `distill fetch` them first");
    }
    set_threads(r.threads());
    let scratch = tempfile_dir()?;
    let t0 = std::time::Instant::now();
    let timed = distill::experiments::lm::estimate(lm, &r.to_toml()?, &scratch, 2);
    let _ = std::fs::remove_dir_all(&scratch);
    let timed = timed?;
    let setup = t0.elapsed().as_secs_f64();
    let mut total = 0.0;
    println!("estimate (mean of 2 timed steps per phase, after 1 untimed):");
    for t in &timed {
        let s = t.steps as f64 * t.step_seconds;
        total += s;
        println!("  phase {}: {} steps × {:.3} s = {}", t.phase, t.steps, t.step_seconds, duration(s));
    }
    println!("  training ≈ {}; evaluation is not included (this estimate took {})", duration(total), duration(setup));
    Ok(())
}

/// A new directory under the system's temporary one.
fn tempfile_dir() -> Result<std::path::PathBuf> {
    let d = std::env::temp_dir().join(format!("distill-estimate-{}", std::process::id()));
    std::fs::create_dir_all(&d).with_context(|| d.display().to_string())?;
    Ok(d)
}

/// `1h02m`, `3m05s`, `12s`.
fn duration(s: f64) -> String {
    let s = s.round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

/// `distill init KIND`: a commented starter recipe, written to `--out` (default `KIND.toml`),
/// with `recipe.schema.json` beside it (its `#:schema` line); an existing recipe is left alone.
pub fn init(kind: &str, out: Option<std::path::PathBuf>) -> Result<()> {
    let text = match kind {
        "lm" => include_str!("templates/lm.toml"),
        "image" => include_str!("templates/image.toml"),
        _ => include_str!("templates/encoder.toml"),
    };
    let out = out.unwrap_or_else(|| format!("{kind}.toml").into());
    if out.exists() {
        bail!("{} exists; choose another --out", out.display());
    }
    distill_base::write_atomic(&out, text.as_bytes()).with_context(|| out.display().to_string())?;
    // The schema its `#:schema` line names, for editors (taplo, Even Better TOML).
    let schema = out.with_file_name("recipe.schema.json");
    if !schema.exists() {
        let json = serde_json::to_string_pretty(&distill::recipe::schema::schema())? + "\n";
        distill_base::write_atomic(&schema, json.as_bytes()).with_context(|| schema.display().to_string())?;
    }
    println!("{}", out.display());
    eprintln!("next: distill check {0}, then distill run {0} --out runs/{kind}", out.display());
    Ok(())
}

/// `distill report`: writes RUN_DIR/report.html and prints its path.
pub fn report(run_dir: &Path) -> Result<()> {
    println!("{}", distill::report::write_report(run_dir)?.display());
    Ok(())
}
