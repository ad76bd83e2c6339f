//! Packed text as training and evaluation batches: rows of token ids with their next-token
//! targets, and the text sources of a recipe resolved and packed.

use distill_text::{ChatTemplate, TextDataConfig, TextSource, TokenBlocks};
use tch::{Device, Tensor};

use crate::io::fetch;
use crate::Result;

/// A batch of rows as tensors: ids `[B, T]` i64, targets `[B, T]` i64 (−100 where position t
/// has no real next token), and the attention mask `[B, T]` when any row has padding.
pub struct LmBatch {
    pub ids: Tensor,
    pub targets: Tensor,
    pub mask: Option<Tensor>,
}

/// Gathers rows of `blocks` into tensors on `device`.
pub fn lm_batch(blocks: &TokenBlocks, rows: &[usize], device: Device) -> LmBatch {
    let b = blocks.gather(rows);
    let (n, t) = (rows.len() as i64, b.seq_len as i64);
    let ids: Vec<i64> = b.input_ids.iter().map(|&x| x as i64).collect();
    let mut targets = vec![-100i64; ids.len()];
    for r in 0..rows.len() {
        for p in 0..b.seq_len.saturating_sub(1) {
            let i = r * b.seq_len + p;
            if b.loss_mask[i] == 1 {
                targets[i] = ids[i + 1];
            }
        }
    }
    let padded = b.attention_mask.contains(&0);
    let mask = padded.then(|| {
        let m: Vec<i64> = b.attention_mask.iter().map(|&x| x as i64).collect();
        Tensor::from_slice(&m).view([n, t]).to_device(device)
    });
    LmBatch {
        ids: Tensor::from_slice(&ids).view([n, t]).to_device(device),
        targets: Tensor::from_slice(&targets).view([n, t]).to_device(device),
        mask,
    }
}

/// Replaces `asset:` paths of text sources by their cache paths.
pub fn resolve_sources(sources: &[TextSource]) -> Result<Vec<TextSource>> {
    sources
        .iter()
        .map(|s| {
            let mut s = s.clone();
            s.path = fetch::resolve(&s.path)?.to_string_lossy().into_owned();
            Ok(s)
        })
        .collect()
}

/// All of `sources` packed into `seq_len` rows (no split, last partial row kept and masked);
/// conversation records one per row, rendered by `chat`, only their assistant tokens scored.
pub fn text_blocks(
    sources: &[TextSource],
    tok: &tokenizers::Tokenizer,
    seq_len: usize,
    min_chars: usize,
    chat: Option<&dyn ChatTemplate>,
) -> Result<TokenBlocks> {
    let mut cfg = TextDataConfig::new(resolve_sources(sources)?);
    cfg.split.val_fraction = 0.0;
    cfg.clean.min_chars = min_chars;
    cfg.pack.seq_len = seq_len;
    cfg.pack.keep_partial = true;
    Ok(distill_text::build_dataset_chat(&cfg, tok, chat)?.train)
}
