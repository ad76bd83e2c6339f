//! `distill run` as one rank of a data-parallel job (torchrun's environment), and
//! `distill run --nproc N`, which starts N such ranks on this machine itself.
//!
//! Only rank 0 writes the run directory. The other ranks run the same plan in a private scratch
//! directory (removed when they end): on `--resume`, rank 0 first sends them its run directory
//! through the process group, so every rank skips the same finished phases and reloads the same
//! weights, on one machine or many, with or without a shared filesystem.

use std::io::Write;
use std::os::fd::FromRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use distill::train::dist::{self, WorldEnv};

/// Where error lines go: stderr, or a copy of it kept when [`quiet_stderr`] silenced it.
static ERR_FD: AtomicI32 = AtomicI32::new(2);

/// Silences this process's stderr (progress, warnings, libtorch's logs: rank 0 prints them once
/// for the job), keeping a copy of it for [`error_line`].
fn quiet_stderr() {
    // SAFETY: plain fd calls; on any failure stderr stays as it is.
    unsafe {
        let saved = libc::dup(2);
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY);
        if saved >= 0 && null >= 0 && libc::dup2(null, 2) >= 0 {
            ERR_FD.store(saved, Ordering::Relaxed);
        }
        if null >= 0 {
            libc::close(null);
        }
    }
}

/// Writes one `error: …` line where the user sees it (also on a silenced rank).
pub fn error_line(line: &str) {
    let fd = ERR_FD.load(Ordering::Relaxed);
    // SAFETY: `fd` is stderr or its duplicate, open for the life of the process; ManuallyDrop
    // keeps it open.
    let mut f = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(fd) });
    let _ = writeln!(f, "{line}");
}

/// Where this rank runs.
pub struct RunPlace {
    /// The directory the runner writes: `--out` on rank 0, a scratch directory elsewhere.
    pub dir: PathBuf,
    /// Rank 0 (or no job): prints and writes.
    pub main: bool,
    _scratch: Option<Scratch>,
}

struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Threads per rank when the recipe sets none: the machine's cores shared among its ranks
/// (`LOCAL_WORLD_SIZE`, set by torchrun and `--nproc`).
pub fn threads_per_rank() -> Option<usize> {
    let local: usize = std::env::var("LOCAL_WORLD_SIZE").ok()?.parse().ok().filter(|n| *n > 0)?;
    Some((crate::common::cores() / local).max(1))
}

/// Joins the job, has rank 0 check `--out` (`check`), and gives every rank its directory.
pub fn join(
    world: &WorldEnv,
    device: tch::Device,
    out: &Path,
    resume: bool,
    check: impl FnOnce() -> Result<()>,
) -> Result<RunPlace> {
    let g = dist::init(world, device)?;
    if g.rank != 0 {
        quiet_stderr();
    }
    // Rank 0's verdict on --out reaches every rank, so all of them stop on a bad one.
    let verdict = if g.rank == 0 { check().err().map(|e| format!("{e:#}")).unwrap_or_default() } else { String::new() };
    let verdict = String::from_utf8_lossy(&g.broadcast_bytes(verdict.as_bytes(), "the start of the run")?).into_owned();
    if !verdict.is_empty() {
        if g.rank == 0 {
            bail!("{verdict}");
        }
        // Rank 0 prints the one error line.
        std::process::exit(1);
    }
    let archive = if g.rank == 0 && resume && out.is_dir() { pack(out)? } else { Vec::new() };
    let archive = g.broadcast_bytes(&archive, "sending the run directory to every rank")?;
    if g.rank == 0 {
        return Ok(RunPlace { dir: out.to_path_buf(), main: true, _scratch: None });
    }
    remove_stale_scratch();
    let dir = std::env::temp_dir().join(format!("distill-rank{}-{}", g.rank, std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("rank {}: creating {}", g.rank, dir.display()))?;
    let scratch = Scratch(dir.clone());
    unpack(&archive, &dir)?;
    Ok(RunPlace { dir, main: false, _scratch: Some(scratch) })
}

/// Removes scratch directories of ranks that were killed (`distill-rank<r>-<pid>` whose process
/// is gone).
fn remove_stale_scratch() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let pid = name.strip_prefix("distill-rank").and_then(|r| r.split_once('-')).map(|(_, pid)| pid.to_string());
        if let Some(pid) = pid.and_then(|p| p.parse::<u32>().ok()) {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// The place of a run without a job.
pub fn single(out: &Path) -> RunPlace {
    RunPlace { dir: out.to_path_buf(), main: true, _scratch: None }
}

/// Every file under `dir` (temporary files of interrupted writes aside): relative path, length
/// and bytes, length-prefixed.
fn pack(dir: &Path) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let mut entries: Vec<_> =
            std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))?.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let path = e.path();
            if distill_base::atomic::is_temp_name(&e.file_name().to_string_lossy()) {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else if path.is_file() {
                let rel = path.strip_prefix(dir).expect("under dir").to_string_lossy().into_owned();
                let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
                out.extend((rel.len() as u64).to_le_bytes());
                out.extend(rel.as_bytes());
                out.extend((bytes.len() as u64).to_le_bytes());
                out.extend(bytes);
            }
        }
    }
    Ok(out)
}

fn unpack(mut bytes: &[u8], dir: &Path) -> Result<()> {
    let mut take = |n: usize| -> Result<&[u8]> {
        if bytes.len() < n {
            bail!("the run directory sent by rank 0 is truncated");
        }
        let (a, b) = bytes.split_at(n);
        bytes = b;
        Ok(a)
    };
    loop {
        let Ok(head) = take(8) else { return Ok(()) };
        let n = u64::from_le_bytes(head.try_into().expect("8 bytes")) as usize;
        let rel = String::from_utf8_lossy(take(n)?).into_owned();
        let len = u64::from_le_bytes(take(8)?.try_into().expect("8 bytes")) as usize;
        let data = take(len)?;
        let rel = Path::new(&rel);
        if rel.is_absolute() || rel.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
            bail!("the run directory sent by rank 0 names {} outside it", rel.display());
        }
        let path = dir.join(rel);
        if let Some(p) = path.parent() {
            std::fs::create_dir_all(p).with_context(|| format!("creating {}", p.display()))?;
        }
        std::fs::write(&path, data).with_context(|| format!("writing {}", path.display()))?;
    }
}

/// This process's arguments less `--nproc N` (or `--nproc=N`): the command each rank runs.
fn args_without_nproc() -> Vec<std::ffi::OsString> {
    let mut args = Vec::new();
    let mut it = std::env::args_os().skip(1);
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        if s == "--nproc" {
            it.next();
        } else if !s.starts_with("--nproc=") {
            args.push(a);
        }
    }
    args
}

/// Starts `n` ranks of this very command (without `--nproc`) on 127.0.0.1 and waits for them.
/// When one fails, the others get a grace period to notice (their collectives fail), then are
/// stopped; the exit status is the first failure's.
pub fn launch(n: usize) -> Result<ExitCode> {
    if n == 0 {
        bail!("--nproc must be at least 1");
    }
    let exe = std::env::current_exe().context("finding the distill binary")?;
    let args = args_without_nproc();
    let port = match std::env::var("MASTER_PORT") {
        Ok(p) => p,
        Err(_) => std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .context("finding a free port for the rendezvous")?
            .port()
            .to_string(),
    };
    let mut children: Vec<(usize, Child)> = Vec::new();
    for rank in 0..n {
        let mut cmd = Command::new(&exe);
        // A rank dies with the launcher (kill -9 included), as under torchrun.
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .args(&args)
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("WORLD_SIZE", n.to_string())
            .env("LOCAL_WORLD_SIZE", n.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", &port)
            .spawn()
            .with_context(|| format!("starting rank {rank}"))?;
        children.push((rank, child));
    }
    Ok(wait_for(children))
}

/// Waits for every rank; the exit status is the first failure's. After it the others get a grace
/// period to notice, then are stopped.
fn wait_for(mut children: Vec<(usize, Child)>) -> ExitCode {
    let mut failed: Option<(usize, i32, Instant)> = None;
    let mut running = children.len();
    while running > 0 {
        running = 0;
        for (rank, c) in &mut children {
            match c.try_wait() {
                Ok(Some(status)) if !status.success() && failed.is_none() => {
                    use std::os::unix::process::ExitStatusExt;
                    let code = status.code().unwrap_or(1);
                    if let Some(sig) = status.signal() {
                        eprintln!("error: rank {rank} was killed by signal {sig}");
                    }
                    failed = Some((*rank, code, Instant::now()));
                }
                Ok(Some(_)) => {}
                _ => running += 1,
            }
        }
        if let Some((_, _, at)) = failed {
            if running > 0 && at.elapsed() > Duration::from_secs(30) {
                for (_, c) in &mut children {
                    let _ = c.kill();
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    match failed {
        None => ExitCode::SUCCESS,
        Some((_, code, _)) => ExitCode::from(code.clamp(1, 255) as u8),
    }
}
