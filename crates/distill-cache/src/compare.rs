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
    };
    let (mut shared, mut sum_diff) = (0usize, 0f64);
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
            if k < 2 || xl[0] - xl[1] >= CONFIDENT_LEAD {
                c.confident += 1;
                c.confident_top1_equal += usize::from(same);
            }
            let mut found = 0usize;
            for (i, id) in x.iter().enumerate() {
                if let Some(j) = y.iter().position(|q| q == id) {
                    let d = (xl[i] - yl[j]).abs();
                    if d.is_finite() {
                        c.max_abs_logp_diff = c.max_abs_logp_diff.max(d);
                        sum_diff += f64::from(d);
                        shared += 1;
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
    c.mean_abs_logp_diff = sum_diff / shared.max(1) as f64;
    Ok(c)
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
            "shared top-k log-probs: |Δ| max {:.4}, mean {:.4}; top-k overlap {:.2}%",
            self.max_abs_logp_diff,
            self.mean_abs_logp_diff,
            100.0 * self.topk_overlap
        )?;
        writeln!(f, "tail mass: mean |Δ| {:.5}", self.mean_abs_tail_diff)
    }
}
