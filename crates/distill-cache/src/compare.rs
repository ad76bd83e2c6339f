//! How closely two captures of the same rows agree: a server's against distill's own, a
//! quantized teacher's against the full-precision one (`distill inspect A --against B`).

use std::fmt;

use serde::Serialize;

use crate::error::{CacheError, Result};
use crate::reader::CacheReader;

/// What [`compare`] measures over every stored position (the top-k entries only; tail samples
/// are not compared). `a` is the reference.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    /// Positions compared (rows × seq_len).
    pub positions: usize,
    /// Positions whose top-1 ids are equal.
    pub top1_equal: usize,
    /// Positions whose top-1 in `a` leads its second by at least [`CONFIDENT_LEAD`] nats
    /// (= logits).
    pub confident: usize,
    /// Confident positions whose top-1 ids are equal.
    pub confident_top1_equal: usize,
    /// Over the ids in both top-k: the largest |Δ log-prob|.
    pub max_abs_logp_diff: f32,
    /// Over the ids in both top-k: the mean |Δ log-prob|.
    pub mean_abs_logp_diff: f64,
    /// Over the ids in both top-k: the 99th percentile of |Δ log-prob|.
    pub p99_abs_logp_diff: f32,
    /// Over the positions whose top-1 ids are equal: the mean |Δ| of the top-1 log-prob (stored
    /// exactly in both encodings: the engines' own difference, no rounding of the cache's).
    pub top1_mean_abs_logp_diff: f64,
    /// Its 99th percentile.
    pub top1_p99_abs_logp_diff: f32,
    /// Mean fraction of `a`'s top-k ids that `b`'s top-k holds.
    pub topk_overlap: f64,
    /// Mean |Δ| of the tail mass (probability outside the stored top-k).
    pub mean_abs_tail_diff: f64,
}

/// The lead of a "confident" top-1, in nats.
pub const CONFIDENT_LEAD: f32 = 0.5;

/// Compares two caches of the same rows and `seq_len` over their first `min(k_a, k_b)` entries.
pub fn compare(a: &CacheReader, b: &CacheReader) -> Result<Comparison> {
    if (a.n_rows(), a.seq_len()) != (b.n_rows(), b.seq_len()) {
        return Err(CacheError::Merge(format!(
            "{} holds {} rows of {} tokens, {} holds {} of {}: not captures of the same rows",
            a.dir().display(),
            a.n_rows(),
            a.seq_len(),
            b.dir().display(),
            b.n_rows(),
            b.seq_len()
        )));
    }
    let (ka, kb) = (a.entries(), b.entries());
    let k = a.top_k().min(b.top_k());
    let mut c = Comparison {
        positions: 0,
        top1_equal: 0,
        confident: 0,
        confident_top1_equal: 0,
        max_abs_logp_diff: 0.0,
        mean_abs_logp_diff: 0.0,
        topk_overlap: 0.0,
        mean_abs_tail_diff: 0.0,
        p99_abs_logp_diff: 0.0,
        top1_mean_abs_logp_diff: 0.0,
        top1_p99_abs_logp_diff: 0.0,
    };
    let (mut diffs, mut top1_diffs) = (Vec::new(), Vec::new());
    let (mut ai, mut al, mut at) = (Vec::new(), Vec::new(), Vec::new());
    let (mut bi, mut bl, mut bt) = (Vec::new(), Vec::new(), Vec::new());
    let all: Vec<usize> = (0..a.n_rows()).collect();
    for rows in all.chunks(64) {
        a.read_rows(rows, &mut ai, &mut al, &mut at)?;
        b.read_rows(rows, &mut bi, &mut bl, &mut bt)?;
        for p in 0..at.len() {
            let (x, xl) = (&ai[p * ka..p * ka + k], &al[p * ka..p * ka + k]);
            let (y, yl) = (&bi[p * kb..p * kb + k], &bl[p * kb..p * kb + k]);
            c.positions += 1;
            let same = x[0] == y[0];
            c.top1_equal += usize::from(same);
            if same && (xl[0] - yl[0]).is_finite() {
                top1_diffs.push((xl[0] - yl[0]).abs());
            }
            if k < 2 || xl[0] - xl[1] >= CONFIDENT_LEAD {
                c.confident += 1;
                c.confident_top1_equal += usize::from(same);
            }
            let mut found = 0usize;
            for (i, id) in x.iter().enumerate() {
                if let Some(j) = y.iter().position(|q| q == id) {
                    let d = (xl[i] - yl[j]).abs();
                    if d.is_finite() {
                        diffs.push(d);
                    }
                    found += 1;
                }
            }
            c.topk_overlap += found as f64 / k as f64;
            c.mean_abs_tail_diff += f64::from((at[p].exp() - bt[p].exp()).abs());
        }
    }
    let n = c.positions.max(1) as f64;
    c.topk_overlap /= n;
    c.mean_abs_tail_diff /= n;
    (c.mean_abs_logp_diff, c.p99_abs_logp_diff, c.max_abs_logp_diff) = spread(&mut diffs);
    (c.top1_mean_abs_logp_diff, c.top1_p99_abs_logp_diff, _) = spread(&mut top1_diffs);
    Ok(c)
}

/// Mean, 99th percentile (nearest rank) and largest of `d` (zeros when empty).
fn spread(d: &mut [f32]) -> (f64, f32, f32) {
    if d.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    d.sort_by(f32::total_cmp);
    let mean = d.iter().map(|&x| f64::from(x)).sum::<f64>() / d.len() as f64;
    let p99 = d[((d.len() as f64 * 0.99).ceil() as usize).clamp(1, d.len()) - 1];
    (mean, p99, d[d.len() - 1])
}

impl fmt::Display for Comparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pct = |a: usize, b: usize| 100.0 * a as f64 / b.max(1) as f64;
        writeln!(f, "positions: {}", self.positions)?;
        writeln!(
            f,
            "top-1 equal: {:.2}% of all; {:.2}% of the {} whose top-1 leads by ≥ {CONFIDENT_LEAD} nat",
            pct(self.top1_equal, self.positions),
            pct(self.confident_top1_equal, self.confident),
            self.confident
        )?;
        writeln!(
            f,
            "shared top-k log-probs: |Δ| mean {:.4}, p99 {:.4}, max {:.4}; top-k overlap {:.2}%",
            self.mean_abs_logp_diff,
            self.p99_abs_logp_diff,
            self.max_abs_logp_diff,
            100.0 * self.topk_overlap
        )?;
        writeln!(
            f,
            "top-1 log-prob (equal top-1): |Δ| mean {:.4}, p99 {:.4}",
            self.top1_mean_abs_logp_diff, self.top1_p99_abs_logp_diff
        )?;
        writeln!(f, "tail mass: mean |Δ| {:.5}", self.mean_abs_tail_diff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CacheSpec, CacheWriter, LogprobEncoding};

    /// One row of 2 positions, top-2, f16: `lp` holds each position's two log-probs.
    fn cache(dir: &std::path::Path, ids: &[u32], lp: &[f32]) -> CacheReader {
        let spec = CacheSpec {
            top_k: 2,
            tail_samples: 0,
            vocab_size: 10,
            seq_len: 2,
            rows_per_shard: 1,
            n_rows: 1,
            logprob_encoding: LogprobEncoding::F16,
            teacher_fingerprint: "t".into(),
            tokenizer_fingerprint: "k".into(),
            data_fingerprint: "d".into(),
            teacher: "t".into(),
        };
        let mut w = CacheWriter::create_or_resume(dir, spec).unwrap();
        let tail: Vec<f32> = lp.chunks(2).map(|p| (1.0 - p[0].exp() - p[1].exp()).ln()).collect();
        w.push_rows(ids, lp, &tail).unwrap();
        w.finish().unwrap();
        CacheReader::open(dir).unwrap()
    }

    #[test]
    fn counts_agreement_and_the_spread_of_differences() {
        let d = tempfile::tempdir().unwrap();
        // Position 0: same ids, top-1 leads by 1.0 (confident); position 1: top-1s swapped.
        let a = cache(&d.path().join("a"), &[3, 4, 5, 6], &[-0.5, -1.5, -1.0, -1.2]);
        let b = cache(&d.path().join("b"), &[3, 4, 6, 5], &[-0.75, -1.5, -1.1, -1.25]);
        let c = compare(&a, &b).unwrap();
        assert_eq!((c.positions, c.top1_equal, c.confident, c.confident_top1_equal), (2, 1, 1, 1));
        // Shared |Δ|: 0.25, 0, 0.25 (id 5), 0.1 (id 6).
        assert!((c.mean_abs_logp_diff - 0.15).abs() < 1e-3, "{c:?}");
        assert!((c.max_abs_logp_diff - 0.25).abs() < 1e-3 && (c.p99_abs_logp_diff - 0.25).abs() < 1e-3, "{c:?}");
        assert!((c.top1_mean_abs_logp_diff - 0.25).abs() < 1e-6 && (c.top1_p99_abs_logp_diff - 0.25).abs() < 1e-6);
        assert!((c.topk_overlap - 1.0).abs() < 1e-12);
    }
}
