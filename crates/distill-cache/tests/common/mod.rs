//! Helpers shared by the integration tests: a seeded generator of realistic teacher top-k data,
//! the small cache most tests use, and damaging a file.
#![allow(dead_code)]

use distill_cache::{CacheSpec, LogprobEncoding};

/// SplitMix64: a small deterministic generator (no `rand` dependency).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

/// Teacher outputs for `rows × seq_len` positions: full-vocabulary logits (Gaussian, scale 3,
/// plus a few boosted tokens so the top is peaked), log-softmax in f64, top-k by descending
/// probability, tail = logsumexp of the rest.
pub struct TeacherRows {
    pub ids: Vec<u32>,
    pub logp: Vec<f32>,
    pub log_tail: Vec<f32>,
}

impl TeacherRows {
    pub fn generate(rows: usize, seq_len: usize, top_k: usize, vocab: usize, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let (mut ids, mut logp, mut log_tail) = (Vec::new(), Vec::new(), Vec::new());
        let mut z = vec![0f64; vocab];
        let mut order: Vec<usize> = Vec::with_capacity(vocab);
        for _ in 0..rows * seq_len {
            for v in z.iter_mut() {
                *v = 3.0 * rng.normal();
            }
            for _ in 0..3 {
                let v = (rng.next_u64() % vocab as u64) as usize;
                z[v] += 8.0 + 4.0 * rng.uniform();
            }
            let max = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = max + z.iter().map(|&v| (v - max).exp()).sum::<f64>().ln();
            order.clear();
            order.extend(0..vocab);
            order.sort_by(|&a, &b| z[b].total_cmp(&z[a]).then(a.cmp(&b)));
            for &v in &order[..top_k] {
                ids.push(v as u32);
                logp.push((z[v] - lse) as f32);
            }
            let rest = &order[top_k..];
            let tail = if rest.is_empty() {
                f64::NEG_INFINITY
            } else {
                let m = z[rest[0]];
                m + rest.iter().map(|&v| (z[v] - m).exp()).sum::<f64>().ln() - lse
            };
            log_tail.push(tail as f32);
        }
        TeacherRows { ids, logp, log_tail }
    }

    /// The slices of rows `start..end`.
    pub fn rows(&self, start: usize, end: usize, seq_len: usize, top_k: usize) -> (&[u32], &[f32], &[f32]) {
        let (a, b) = (start * seq_len, end * seq_len);
        (&self.ids[a * top_k..b * top_k], &self.logp[a * top_k..b * top_k], &self.log_tail[a..b])
    }
}

pub fn spec(top_k: usize, vocab_size: usize, seq_len: usize, rows_per_shard: usize, n_rows: usize) -> CacheSpec {
    CacheSpec {
        top_k,
        tail_samples: 0,
        vocab_size,
        seq_len,
        rows_per_shard,
        n_rows,
        logprob_encoding: LogprobEncoding::default(),
        teacher_fingerprint: "teacher-fp".into(),
        tokenizer_fingerprint: "tokenizer-fp".into(),
        data_fingerprint: "data-fp".into(),
        teacher: "test teacher".into(),
    }
}

/// The 10-row, 3-rows-per-shard cache most tests use: K = 8, V = 1000, seq_len = 4.
pub const K: usize = 8;
pub const V: usize = 1000;
pub const S: usize = 4;
pub const RPS: usize = 3;
pub const N: usize = 10;

pub fn small_spec() -> CacheSpec {
    spec(K, V, S, RPS, N)
}

pub fn small_rows() -> TeacherRows {
    TeacherRows::generate(N, S, K, V, 7)
}

/// XORs the byte at `offset` of the file at `path` with `mask`.
pub fn flip(path: &std::path::Path, offset: usize, mask: u8) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[offset] ^= mask;
    std::fs::write(path, bytes).unwrap();
}

/// Writes the complete small cache into `dir`.
pub fn write_small(dir: &std::path::Path) -> TeacherRows {
    let data = small_rows();
    let mut w = distill_cache::CacheWriter::create_or_resume(dir, small_spec()).unwrap();
    w.push_rows(&data.ids, &data.logp, &data.log_tail).unwrap();
    w.finish().unwrap();
    data
}
