//! `distill`: parse → dispatch to the command's module → exit code. Errors are printed once, on
//! one line.

use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;
use cli::{Cli, Cmd};

mod bench_cmd;
mod cache_cmd;
mod cli;
mod common;
mod dist_cmd;
mod encoder_cmd;
mod fetch_cmd;
mod interrupt;
mod lm_cmd;
mod run_cmd;
mod selfdistill_cmd;

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
    match try_main(cli) {
        Ok(code) => code,
        Err(e) => {
            dist_cmd::error_line(&format!("error: {}", one_line(&e)));
            ExitCode::FAILURE
        }
    }
}

/// Runs the command. Only `run` (with `--nproc`: the first failing rank's) sets an exit code of
/// its own.
fn try_main(cli: Cli) -> Result<ExitCode> {
    match cli.cmd {
        Cmd::Run(a) => return run_cmd::run(a),
        Cmd::Check { recipe, set, out, estimate } => run_cmd::check(&recipe, &set, out.as_deref(), estimate),
        Cmd::Report { run_dir } => run_cmd::report(&run_dir),
        Cmd::Convert { model, out, gguf_type } => lm_cmd::convert(&model, &out, gguf_type),
        Cmd::Eval(a) if encoder_cmd::is_encoder(&a.model) => encoder_cmd::eval(a),
        Cmd::Eval(a) => lm_cmd::eval(a),
        Cmd::Embed(a) => encoder_cmd::embed(a),
        Cmd::Generate(a) => lm_cmd::generate(a),
        Cmd::GenerateData(a) => lm_cmd::generate_data(a),
        Cmd::SelfDistill(a) => selfdistill_cmd::run(a),
        Cmd::Cache(a) => cache_cmd::run(a),
        Cmd::Inspect { dir, verify, json, against } => cache_cmd::inspect(&dir, verify, json, against.as_deref()),
        Cmd::Bench { what } => bench_cmd::run(what),
        Cmd::Fetch { names, list } => fetch_cmd::run(&names, list),
        Cmd::Init { kind, out } => run_cmd::init(&kind, out),
        Cmd::Schema => {
            println!("{}", serde_json::to_string_pretty(&distill::recipe::schema::schema())?);
            Ok(())
        }
    }?;
    Ok(ExitCode::SUCCESS)
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
