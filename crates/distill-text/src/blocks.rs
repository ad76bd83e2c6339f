//! Packed token rows, gathered into batches by row index, and the data fingerprint.

use sha2::{Digest, Sha256};

/// Token rows of a fixed length, row-major.
///
/// # Shapes
/// - `input_ids`: `[n_blocks, seq_len]`
/// - `attention_mask`: `[n_blocks, seq_len]`, 1 = real token, 0 = padding; `None` means every
///   position is real (concat mode without a kept partial block).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenBlocks {
    /// Tokens per row.
    pub seq_len: usize,
    /// Token ids, `[n_blocks, seq_len]` row-major.
    pub input_ids: Vec<u32>,
    /// Attention mask, `[n_blocks, seq_len]` row-major, or `None` when there is no padding.
    pub attention_mask: Option<Vec<u8>>,
    /// Number of real (non-padding) positions over all rows.
    pub n_tokens_real: usize,
    /// Which tokens are learned, `[n_blocks, seq_len]` row-major: 1 where the token at that
    /// position is a target (an assistant token of a conversation, every token of a text), 0
    /// where it is only context. `None`: every real token is a target.
    pub target_mask: Option<Vec<u8>>,
}

/// One batch of rows gathered from [`TokenBlocks`].
///
/// # Shapes
/// - `input_ids`, `attention_mask`, `loss_mask`: `[indices.len(), seq_len]` row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// Which rows of the [`TokenBlocks`] these are, in the order gathered.
    pub indices: Vec<usize>,
    /// Tokens per row.
    pub seq_len: usize,
    /// Token ids.
    pub input_ids: Vec<u32>,
    /// 1 = real token, 0 = padding (all ones when the blocks have no padding).
    pub attention_mask: Vec<u8>,
    /// 1 where the logits at that position have a next-token target: positions `t` and
    /// `t + 1` of the row are both real and the token at `t + 1` is a target (see
    /// [`TokenBlocks::target_mask`]), so the last column is always 0 and padding is never
    /// counted.
    pub loss_mask: Vec<u8>,
}

impl TokenBlocks {
    /// Number of rows.
    pub fn n_blocks(&self) -> usize {
        self.input_ids.len().checked_div(self.seq_len).unwrap_or(0)
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.n_blocks() == 0
    }

    /// Row `i` (`[seq_len]`), or `None` past the end.
    pub fn row(&self, i: usize) -> Option<&[u32]> {
        let start = i.checked_mul(self.seq_len)?;
        self.input_ids.get(start..start.checked_add(self.seq_len)?)
    }

    /// The attention mask of row `i` (`[seq_len]`, all ones when there is no padding), or `None`
    /// past the end.
    pub fn mask_row(&self, i: usize) -> Option<Vec<u8>> {
        if i >= self.n_blocks() {
            return None;
        }
        match &self.attention_mask {
            Some(mask) => mask.get(i * self.seq_len..(i + 1) * self.seq_len).map(<[u8]>::to_vec),
            None => Some(vec![1; self.seq_len]),
        }
    }

    /// Gathers the given rows into a [`Batch`]; indices past the end are skipped.
    pub fn gather(&self, indices: &[usize]) -> Batch {
        let mut batch = Batch {
            indices: Vec::with_capacity(indices.len()),
            seq_len: self.seq_len,
            input_ids: Vec::with_capacity(indices.len() * self.seq_len),
            attention_mask: Vec::with_capacity(indices.len() * self.seq_len),
            loss_mask: Vec::with_capacity(indices.len() * self.seq_len),
        };
        for &i in indices {
            let (Some(row), Some(mask)) = (self.row(i), self.mask_row(i)) else {
                continue;
            };
            batch.indices.push(i);
            batch.input_ids.extend_from_slice(row);
            batch.attention_mask.extend_from_slice(&mask);
            batch.loss_mask.extend(row_loss_mask(self, i));
        }
        batch
    }

    /// The fingerprint of this data; see [`fingerprint`].
    pub fn fingerprint(&self) -> String {
        fingerprint(self)
    }
}

/// Row `b`'s loss mask (`[seq_len]`; see [`Batch::loss_mask`]).
fn row_loss_mask(blocks: &TokenBlocks, b: usize) -> Vec<u8> {
    let seq_len = blocks.seq_len;
    let mut out = vec![0u8; seq_len];
    fill_real_pairs(blocks, b, &mut out);
    if let Some(target) = &blocks.target_mask {
        match target.get(b * seq_len..(b + 1) * seq_len) {
            Some(row) => {
                for (v, &next) in out.iter_mut().zip(&row[1..]) {
                    *v &= next;
                }
            }
            None => out.fill(0),
        }
    }
    out
}

/// 1 at `t` where positions `t` and `t + 1` of row `b` are both real.
fn fill_real_pairs(blocks: &TokenBlocks, b: usize, out: &mut [u8]) {
    let seq_len = blocks.seq_len;
    match &blocks.attention_mask {
        None => {
            for v in out.iter_mut().take(seq_len.saturating_sub(1)) {
                *v = 1;
            }
        }
        Some(mask) => {
            // A mask shorter than the ids (inconsistent hand-built blocks) counts nothing.
            if let Some(row) = mask.get(b * seq_len..(b + 1) * seq_len) {
                for (v, pair) in out.iter_mut().zip(row.windows(2)) {
                    *v = u8::from(pair[0] == 1 && pair[1] == 1);
                }
            }
        }
    }
}

/// SHA-256 (lowercase hex) of the packed data, so an offline teacher cache can check it was
/// built from the same rows.
///
/// Hashed, in order: the tag `distill-text/token-blocks/v1`, `seq_len` and `n_blocks` as u64
/// little-endian, every id as u32 little-endian, then `0x00` if there is no attention mask or
/// `0x01` followed by the mask bytes; then, when there is a target mask, `targets` and its bytes.
pub fn fingerprint(blocks: &TokenBlocks) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"distill-text/token-blocks/v1");
    hasher.update((blocks.seq_len as u64).to_le_bytes());
    hasher.update((blocks.n_blocks() as u64).to_le_bytes());
    let mut buf = Vec::with_capacity(4 * 4096);
    for chunk in blocks.input_ids.chunks(4096) {
        buf.clear();
        for id in chunk {
            buf.extend_from_slice(&id.to_le_bytes());
        }
        hasher.update(&buf);
    }
    match &blocks.attention_mask {
        None => hasher.update([0u8]),
        Some(mask) => {
            hasher.update([1u8]);
            hasher.update(mask);
        }
    }
    // Appended only when present, so that text without conversations keeps its fingerprint.
    if let Some(target) = &blocks.target_mask {
        hasher.update(b"targets");
        hasher.update(target);
    }
    hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()
}
