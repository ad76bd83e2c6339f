//! `distill-fuzz [TARGET…] [--execs N] [--seed S] [--max-len BYTES]`: mutates each target's
//! corpus N times (default 1,000,000) and runs the target on every mutant. A panic, an
//! allocation above `ALLOC_CAP` or an execution slower than 2 s is a failure: the input is saved
//! under `fuzz/crashes/<target>/` and the run ends with exit 1. Prints executions, rate and
//! failures per target. `bench/fuzz.sh` runs every target.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use distill_base::SplitMix64;
use distill_fuzz::{corpus, mutate, root, targets, ALLOC_CAP};
use sha2::Digest;

/// The input being run and its target's name, for the allocator to save before it aborts.
static CURRENT: AtomicPtr<u8> = AtomicPtr::new(std::ptr::null_mut());
static CURRENT_LEN: AtomicUsize = AtomicUsize::new(0);
static TARGET: AtomicPtr<u8> = AtomicPtr::new(std::ptr::null_mut());
static TARGET_LEN: AtomicUsize = AtomicUsize::new(0);

/// The system allocator, refusing (and recording) allocations above [`ALLOC_CAP`].
struct Capped;

// SAFETY: forwards to `System` except for oversized requests, which end the process.
unsafe impl GlobalAlloc for Capped {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > ALLOC_CAP {
            oversized(layout.size());
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > ALLOC_CAP {
            oversized(layout.size());
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > ALLOC_CAP {
            oversized(new_size);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Capped = Capped;

/// Saves the current input as an allocation failure and aborts. Small allocations made here
/// go through `System` (the cap does not apply to them), so this may allocate.
fn oversized(size: usize) -> ! {
    let input = CURRENT.load(Ordering::SeqCst);
    let target = TARGET.load(Ordering::SeqCst);
    if !input.is_null() && !target.is_null() {
        // SAFETY: both point into buffers the runner keeps alive while the target runs.
        let (bytes, name) = unsafe {
            (
                std::slice::from_raw_parts(input, CURRENT_LEN.load(Ordering::SeqCst)),
                std::slice::from_raw_parts(target, TARGET_LEN.load(Ordering::SeqCst)),
            )
        };
        let name = String::from_utf8_lossy(name).into_owned();
        let path = save(&name, "alloc", bytes);
        eprintln!("{name}: allocation of {size} bytes (cap {ALLOC_CAP}); input saved as {}", path.display());
    }
    std::process::abort();
}

fn save(target: &str, kind: &str, bytes: &[u8]) -> std::path::PathBuf {
    let dir = root().join("fuzz/crashes").join(target);
    let _ = std::fs::create_dir_all(&dir);
    let hash = format!("{:x}", sha2::Sha256::digest(bytes));
    let path = dir.join(format!("{kind}-{}", &hash[..16]));
    let _ = std::fs::write(&path, bytes);
    path
}

fn main() -> std::process::ExitCode {
    let mut args = std::env::args().skip(1);
    let (mut execs, mut seed, mut max_len, mut names) = (1_000_000u64, 0u64, 1usize << 18, Vec::new());
    while let Some(a) = args.next() {
        let mut num = |what: &str| -> u64 {
            args.next().and_then(|v| v.replace('_', "").parse().ok()).unwrap_or_else(|| {
                eprintln!("error: {what} needs a number");
                std::process::exit(2)
            })
        };
        match a.as_str() {
            "--execs" => execs = num("--execs"),
            "--seed" => seed = num("--seed"),
            "--max-len" => max_len = num("--max-len") as usize,
            name => names.push(name.to_string()),
        }
    }
    let all = targets();
    if let Some(bad) = names.iter().find(|n| !all.iter().any(|t| t.name == n.as_str())) {
        let known: Vec<&str> = all.iter().map(|t| t.name).collect();
        eprintln!("error: unknown target `{bad}` (known: {})", known.join(", "));
        return std::process::ExitCode::from(2);
    }
    // Panics are counted, not printed.
    std::panic::set_hook(Box::new(|_| {}));
    let mut failed = false;
    for t in all.iter().filter(|t| names.is_empty() || names.iter().any(|n| n == t.name)) {
        let seeds: Vec<Vec<u8>> = corpus(t).into_iter().map(|(_, b)| b).collect();
        if seeds.is_empty() {
            eprintln!("error: target {} has no seed input", t.name);
            return std::process::ExitCode::from(2);
        }
        TARGET.store(t.name.as_ptr() as *mut u8, Ordering::SeqCst);
        TARGET_LEN.store(t.name.len(), Ordering::SeqCst);
        let mut rng = SplitMix64::derive(seed, 0xf022, t.name.len() as u64 ^ t.name.as_bytes()[0] as u64);
        let (mut panics, mut slow) = (0u64, 0u64);
        let start = Instant::now();
        for i in 0..execs {
            let base = &seeds[(i % seeds.len() as u64) as usize];
            let input = if i < seeds.len() as u64 { base.clone() } else { mutate(base, &seeds, &mut rng, max_len) };
            CURRENT.store(input.as_ptr() as *mut u8, Ordering::SeqCst);
            CURRENT_LEN.store(input.len(), Ordering::SeqCst);
            let t0 = Instant::now();
            let r = std::panic::catch_unwind(|| (t.run)(&input));
            let took = t0.elapsed();
            CURRENT.store(std::ptr::null_mut(), Ordering::SeqCst);
            if r.is_err() {
                panics += 1;
                let p = save(t.name, "panic", &input);
                if panics <= 3 {
                    eprintln!("{}: panic on input saved as {}", t.name, p.display());
                }
            } else if took > Duration::from_secs(2) {
                slow += 1;
                let p = save(t.name, "slow", &input);
                eprintln!("{}: {:.1} s on input saved as {}", t.name, took.as_secs_f64(), p.display());
            }
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{:<15} {:>10} executions in {:>7.1} s ({:>8.0}/s), {} seeds, {} panics, {} slow (> 2 s)",
            t.name,
            execs,
            secs,
            execs as f64 / secs,
            seeds.len(),
            panics,
            slow
        );
        let _ = std::io::stdout().flush();
        failed |= panics + slow > 0;
    }
    if failed {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    }
}
