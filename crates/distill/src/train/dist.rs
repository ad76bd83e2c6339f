//! Data-parallel training on PyTorch's own distributed runtime, c10d: a `TCPStore` rendezvous
//! and the gloo backend on CPU (NCCL on CUDA in builds that have it), reached through the crate's
//! C++ shim (`csrc/c10d.cpp`), since tch binds none of c10d.
//!
//! A process learns its place from torchrun's environment (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`,
//! `MASTER_ADDR`, `MASTER_PORT`), so `torchrun --nproc-per-node N --no-python distill run …`
//! works, and so does `distill run --nproc N`, which spawns N workers with that environment
//! itself. [`init`] joins the group once per process; the Trainer then reads [`group`].
//!
//! Every failure of a collective (a peer gone, a timeout) is an [`Error::Dist`] naming this rank
//! and, where it can be told, the rank that was lost: with two ranks it is the other one; on one
//! machine, a rank whose process is gone.

use std::ffi::{c_char, c_void, CStr, CString};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;
use std::time::Instant;

use tch::{Device, Kind, Tensor};
use torch_sys::C_tensor;

use crate::{Error, Result};

extern "C" {
    fn distill_c10d_backends() -> i32;
    fn distill_c10d_new(
        host: *const c_char,
        port: i32,
        rank: i32,
        world: i32,
        serve: i32,
        prefix: *const c_char,
        timeout_ms: i64,
        threads: i32,
        cuda: i32,
        out: *mut *mut c_void,
    ) -> *mut c_char;
    fn distill_c10d_free(g: *mut c_void);
    fn distill_c10d_allreduce_sum(g: *mut c_void, ts: *const *mut C_tensor, n: usize) -> *mut c_char;
    fn distill_c10d_broadcast(g: *mut c_void, ts: *const *mut C_tensor, n: usize, root: i32) -> *mut c_char;
    fn distill_c10d_store_set(g: *mut c_void, key: *const c_char, value: *const u8, len: usize) -> *mut c_char;
    fn distill_c10d_store_get(g: *mut c_void, key: *const c_char, value: *mut *mut u8, len: *mut usize) -> *mut c_char;
    fn distill_c10d_free_bytes(p: *mut u8);
    fn distill_free_message(m: *mut c_char);
}

/// The C++ side's message, first line only (c10 appends a stack trace).
fn take_message(msg: *mut c_char) -> Option<String> {
    if msg.is_null() {
        return None;
    }
    // SAFETY: a non-null message is a NUL-terminated string malloc'd by the shim, freed once.
    let text = unsafe { CStr::from_ptr(msg) }.to_string_lossy().into_owned();
    unsafe { distill_free_message(msg) };
    Some(text.lines().next().unwrap_or("").trim().to_string())
}

/// Whether this build can run a process group on CPU (gloo) and on CUDA (NCCL).
pub fn backends() -> (bool, bool) {
    // SAFETY: reads two compile-time flags.
    let b = unsafe { distill_c10d_backends() };
    (b & 1 != 0, b & 2 != 0)
}

/// This process's place in a job, read from torchrun's environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorldEnv {
    pub rank: usize,
    pub size: usize,
    pub local_rank: usize,
    pub master_addr: String,
    pub master_port: u16,
}

impl WorldEnv {
    /// `None` when `WORLD_SIZE` is unset (one process); an error naming the variable when one is
    /// malformed or missing.
    pub fn from_env() -> Result<Option<WorldEnv>> {
        Self::from_lookup(&|k| std::env::var(k).ok())
    }

    /// As [`from_env`](Self::from_env), over any lookup (tests).
    pub fn from_lookup(get: &dyn Fn(&str) -> Option<String>) -> Result<Option<WorldEnv>> {
        let Some(size) = get("WORLD_SIZE") else { return Ok(None) };
        let num = |k: &str, v: Option<String>| -> Result<usize> {
            let v = v.ok_or_else(|| Error::Dist(format!("WORLD_SIZE is set but {k} is not (torchrun sets both)")))?;
            v.trim().parse().map_err(|_| Error::Dist(format!("{k}={v:?} is not a non-negative integer")))
        };
        let size = num("WORLD_SIZE", Some(size))?;
        if size == 0 {
            return Err(Error::Dist("WORLD_SIZE=0: a job has at least one process".into()));
        }
        let rank = num("RANK", get("RANK"))?;
        if rank >= size {
            return Err(Error::Dist(format!("RANK={rank} is not below WORLD_SIZE={size}")));
        }
        let local_rank = match get("LOCAL_RANK") {
            Some(v) => num("LOCAL_RANK", Some(v))?,
            None => rank,
        };
        let master_addr = get("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into());
        let port = get("MASTER_PORT").unwrap_or_else(|| "29500".into());
        let master_port = port
            .trim()
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| Error::Dist(format!("MASTER_PORT={port:?} is not a port (1-65535)")))?;
        Ok(Some(WorldEnv { rank, size, local_rank, master_addr, master_port }))
    }
}

/// A joined process group.
#[derive(Debug)]
pub struct ProcessGroup {
    raw: *mut c_void,
    pub rank: usize,
    pub size: usize,
    /// The rank among this machine's processes (its CUDA device).
    pub local_rank: usize,
    /// `gloo` or `nccl`.
    pub backend: &'static str,
    /// Every rank's `host pid`, exchanged at the start: tells which rank is gone.
    peers: Vec<(String, u32)>,
    /// Nanoseconds spent in collectives so far (waiting for peers included).
    comm_ns: AtomicU64,
}

// SAFETY: c10d's store and backends are thread-safe; the handle is only freed on drop.
unsafe impl Send for ProcessGroup {}
unsafe impl Sync for ProcessGroup {}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: `raw` came from distill_c10d_new and is freed once.
        unsafe { distill_c10d_free(self.raw) }
    }
}

static GROUP: OnceLock<ProcessGroup> = OnceLock::new();

/// The process group this process joined, if any.
pub fn group() -> Option<&'static ProcessGroup> {
    GROUP.get()
}

/// How long a collective may wait for its peers: `DISTILL_DIST_TIMEOUT` seconds (default 600).
fn timeout() -> Result<Duration> {
    match std::env::var("DISTILL_DIST_TIMEOUT") {
        Err(_) => Ok(Duration::from_secs(600)),
        Ok(v) => v
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|s| *s > 0.0 && s.is_finite())
            .map(Duration::from_secs_f64)
            .ok_or_else(|| Error::Dist(format!("DISTILL_DIST_TIMEOUT={v:?} is not a positive number of seconds"))),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// Joins the group `env` describes: gloo for a CPU `device`, NCCL for CUDA. Once per process;
/// returns the group.
pub fn init(env: &WorldEnv, device: Device) -> Result<&'static ProcessGroup> {
    if let Some(g) = GROUP.get() {
        return Ok(g);
    }
    let cuda = device.is_cuda();
    let (gloo, nccl) = backends();
    if (cuda && !nccl) || (!cuda && !gloo) {
        let (what, how) = if cuda {
            ("NCCL", "it was compiled without CUDA and NCCL's headers")
        } else {
            ("gloo", "gloo's headers were not found when it was compiled; install Debian's libgloo-dev and rebuild")
        };
        return Err(Error::Dist(format!("this build of distill has no {what} backend ({how})")));
    }
    let host = CString::new(env.master_addr.clone()).map_err(|_| Error::Dist("MASTER_ADDR holds a NUL byte".into()))?;
    let mut raw = std::ptr::null_mut();
    let ms = timeout()?.as_millis().min(i64::MAX as u128) as i64;
    // Under torchrun its agent serves the store on MASTER_PORT, and a restarted job must not see
    // the keys of the attempt before (torch's own rule).
    let agent = std::env::var("TORCHELASTIC_USE_AGENT_STORE").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    let restart = std::env::var("TORCHELASTIC_RESTART_COUNT").unwrap_or_else(|_| "0".into());
    let prefix = CString::new(format!("distill/{restart}"))
        .map_err(|_| Error::Dist("TORCHELASTIC_RESTART_COUNT holds a NUL byte".into()))?;
    let threads = tch::get_num_threads().max(1);
    // SAFETY: valid C string and out-pointer; the shim returns a message or sets `raw`.
    let msg = unsafe {
        distill_c10d_new(
            host.as_ptr(),
            i32::from(env.master_port),
            env.rank as i32,
            env.size as i32,
            i32::from(env.rank == 0 && !agent),
            prefix.as_ptr(),
            ms,
            threads,
            i32::from(cuda),
            &mut raw,
        )
    };
    if let Some(m) = take_message(msg) {
        return Err(Error::Dist(format!(
            "rank {} of {}: could not join the group at {}:{} ({m})",
            env.rank, env.size, env.master_addr, env.master_port
        )));
    }
    let mut g = ProcessGroup {
        raw,
        rank: env.rank,
        size: env.size,
        local_rank: env.local_rank,
        backend: if cuda { "nccl" } else { "gloo" },
        peers: Vec::new(),
        comm_ns: AtomicU64::new(0),
    };
    g.peers = g.exchange_peers()?;
    Ok(GROUP.get_or_init(|| g))
}

impl ProcessGroup {
    fn exchange_peers(&self) -> Result<Vec<(String, u32)>> {
        let me = format!("{} {}", hostname(), std::process::id());
        self.store_set(&format!("peer/{}", self.rank), me.as_bytes())?;
        (0..self.size)
            .map(|r| {
                let v = self.store_get(&format!("peer/{r}"))?;
                let v = String::from_utf8_lossy(&v).into_owned();
                let (host, pid) = v.rsplit_once(' ').unwrap_or((&v, "0"));
                Ok((host.to_string(), pid.parse().unwrap_or(0)))
            })
            .collect()
    }

    fn store_set(&self, key: &str, value: &[u8]) -> Result<()> {
        let k = CString::new(key).expect("store keys have no NUL");
        // SAFETY: valid key and value buffer for the call's duration.
        let msg = unsafe { distill_c10d_store_set(self.raw, k.as_ptr(), value.as_ptr(), value.len()) };
        self.check(msg, "the rendezvous store")
    }

    fn store_get(&self, key: &str) -> Result<Vec<u8>> {
        let k = CString::new(key).expect("store keys have no NUL");
        let (mut p, mut n) = (std::ptr::null_mut(), 0usize);
        // SAFETY: out-pointers valid; on success `p` holds `n` bytes malloc'd by the shim.
        let msg = unsafe { distill_c10d_store_get(self.raw, k.as_ptr(), &mut p, &mut n) };
        self.check(msg, "the rendezvous store")?;
        // SAFETY: as above; freed once after copying.
        let v = unsafe { std::slice::from_raw_parts(p, n) }.to_vec();
        unsafe { distill_c10d_free_bytes(p) };
        Ok(v)
    }

    /// Which rank is gone: the other one of two; else one on this host whose process has ended.
    fn lost_rank(&self) -> Option<usize> {
        if self.size == 2 {
            return Some(1 - self.rank);
        }
        let here = hostname();
        self.peers.iter().enumerate().find_map(|(r, (host, pid))| {
            let gone = r != self.rank && *host == here && *pid != 0 && {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                // Gone, or a zombie waiting for its parent.
                stat.is_empty() || stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
            };
            gone.then_some(r)
        })
    }

    fn check(&self, msg: *mut c_char, what: &str) -> Result<()> {
        match take_message(msg) {
            None => Ok(()),
            Some(m) => {
                let lost = match self.lost_rank() {
                    Some(r) => format!("lost rank {r}"),
                    None => "a peer failed".to_string(),
                };
                Err(Error::Dist(format!(
                    "rank {} of {}: {lost} during {what} ({}: {m})",
                    self.rank, self.size, self.backend
                )))
            }
        }
    }

    /// Seconds spent in collectives since the group started (waiting for slower peers
    /// included): what data parallelism costs beyond the work itself.
    pub fn comm_seconds(&self) -> f64 {
        self.comm_ns.load(Ordering::Relaxed) as f64 * 1e-9
    }

    fn timed(&self, f: impl FnOnce() -> *mut c_char) -> *mut c_char {
        let t0 = Instant::now();
        let msg = f();
        self.comm_ns.fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
        msg
    }

    /// Sums each tensor over the ranks, in place.
    pub fn all_reduce_sum(&self, ts: &[&Tensor], what: &str) -> Result<()> {
        let ptrs: Vec<*mut C_tensor> = ts.iter().map(|t| t.as_ptr() as *mut C_tensor).collect();
        // SAFETY: the tensors outlive the call; the shim reduces them in place.
        let msg = self.timed(|| unsafe { distill_c10d_allreduce_sum(self.raw, ptrs.as_ptr(), ptrs.len()) });
        self.check(msg, what)
    }

    /// Copies rank `root`'s values of each tensor into every rank's, in place.
    pub fn broadcast(&self, ts: &[&Tensor], root: usize, what: &str) -> Result<()> {
        let ptrs: Vec<*mut C_tensor> = ts.iter().map(|t| t.as_ptr() as *mut C_tensor).collect();
        // SAFETY: as in all_reduce_sum.
        let msg = self.timed(|| unsafe { distill_c10d_broadcast(self.raw, ptrs.as_ptr(), ptrs.len(), root as i32) });
        self.check(msg, what)
    }

    /// Sums tensors (gradients) over the ranks through flat buckets of about `bucket_bytes`, one
    /// collective per bucket, as DDP does: a few large messages instead of one per parameter.
    pub fn all_reduce_bucketed(&self, ts: &[Tensor], bucket_bytes: usize, what: &str) -> Result<()> {
        self.bucketed(ts, bucket_bytes, |flat| self.all_reduce_sum(&[flat], what))
    }

    /// Rank 0's values of `ts` on every rank, through flat buckets.
    pub fn broadcast_bucketed(&self, ts: &[Tensor], bucket_bytes: usize, what: &str) -> Result<()> {
        self.bucketed(ts, bucket_bytes, |flat| self.broadcast(&[flat], 0, what))
    }

    fn bucketed(&self, ts: &[Tensor], bucket_bytes: usize, op: impl Fn(&Tensor) -> Result<()>) -> Result<()> {
        let mut start = 0;
        while start < ts.len() {
            // Consecutive tensors of one kind and device, up to the size.
            let (kind, device) = (ts[start].kind(), ts[start].device());
            let mut end = start;
            let mut bytes = 0usize;
            while end < ts.len()
                && ts[end].kind() == kind
                && ts[end].device() == device
                && (end == start || bytes + nbytes(&ts[end]) <= bucket_bytes)
            {
                bytes += nbytes(&ts[end]);
                end += 1;
            }
            let group = &ts[start..end];
            tch::no_grad(|| -> Result<()> {
                let flat = Tensor::cat(&group.iter().map(|t| t.reshape([-1])).collect::<Vec<_>>(), 0);
                op(&flat)?;
                let mut off = 0i64;
                for t in group {
                    let n = t.numel() as i64;
                    t.shallow_clone().copy_(&flat.narrow(0, off, n).view(t.size().as_slice()));
                    off += n;
                }
                Ok(())
            })?;
            start = end;
        }
        Ok(())
    }

    /// Rank 0's bytes on every rank (others pass anything; their input is ignored).
    pub fn broadcast_bytes(&self, bytes: &[u8], what: &str) -> Result<Vec<u8>> {
        let len = Tensor::from_slice(&[bytes.len() as i64]);
        self.broadcast(&[&len], 0, what)?;
        let n = len.int64_value(&[0]) as usize;
        let buf = if self.rank == 0 {
            Tensor::from_slice(bytes)
        } else {
            Tensor::zeros([n as i64], (Kind::Uint8, Device::Cpu))
        };
        if n > 0 {
            self.broadcast(&[&buf], 0, what)?;
        }
        let mut out = vec![0u8; n];
        buf.copy_data(&mut out, n);
        Ok(out)
    }
}

fn nbytes(t: &Tensor) -> usize {
    t.numel() * t.kind().elt_size_in_bytes()
}

/// Rank 0's `value` on every rank (the value itself without a group): for decisions that must
/// agree across ranks but rest on something measured, like a timing.
pub fn rank0_value(value: f64, what: &str) -> Result<f64> {
    let Some(g) = group() else { return Ok(value) };
    let t = Tensor::from_slice(&[value]);
    g.broadcast(&[&t], 0, what)?;
    Ok(t.double_value(&[0]))
}

/// Rank `rank`'s slice of a global batch of `n` examples split over `size` ranks: contiguous,
/// sizes differing by at most one, in rank order (so the concatenation is the global batch).
pub fn slice(n: usize, rank: usize, size: usize) -> std::ops::Range<usize> {
    (rank * n / size)..((rank + 1) * n / size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torchrun_environment() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
        };
        assert_eq!(WorldEnv::from_lookup(&env(&[])).unwrap(), None);
        let w = WorldEnv::from_lookup(&env(&[("WORLD_SIZE", "4"), ("RANK", "3"), ("MASTER_PORT", "1234")]))
            .unwrap()
            .unwrap();
        assert_eq!((w.rank, w.size, w.local_rank, w.master_addr.as_str(), w.master_port), (3, 4, 3, "127.0.0.1", 1234));
        let err = |p| WorldEnv::from_lookup(&env(p)).unwrap_err().to_string();
        assert_eq!(err(&[("WORLD_SIZE", "2")]), "distributed: WORLD_SIZE is set but RANK is not (torchrun sets both)");
        assert_eq!(err(&[("WORLD_SIZE", "2"), ("RANK", "2")]), "distributed: RANK=2 is not below WORLD_SIZE=2");
        assert_eq!(
            err(&[("WORLD_SIZE", "2"), ("RANK", "0"), ("MASTER_PORT", "70000")]),
            "distributed: MASTER_PORT=\"70000\" is not a port (1-65535)"
        );
    }

    #[test]
    fn slices_cover_the_batch_in_order() {
        for n in [1usize, 5, 8, 129] {
            for size in [1usize, 2, 3, 8] {
                let parts: Vec<_> = (0..size).map(|r| slice(n, r, size)).collect();
                assert_eq!(parts[0].start, 0);
                assert_eq!(parts[size - 1].end, n);
                assert!(parts.windows(2).all(|w| w[0].end == w[1].start));
                assert!(parts.iter().all(|p| p.len().abs_diff(n / size) <= 1));
            }
        }
    }
}
