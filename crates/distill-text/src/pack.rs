//! Tokenizing documents in parallel and packing the token streams into rows.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use crate::blocks::TokenBlocks;
use crate::chat::ChatTemplate;
use crate::config::{PackConfig, PackMode};
use crate::error::{Result, TextError};
use crate::source::Document;

/// BOS token strings tried, in order, when `pack.bos_token` is not set.
pub const BOS_CANDIDATES: &[&str] = &["<s>", "<|begin_of_text|>", "<bos>", "<|im_start|>", "[CLS]"];
/// EOS token strings tried, in order, when `pack.eos_token` is not set.
pub const EOS_CANDIDATES: &[&str] = &["<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>", "<|im_end|>", "[SEP]"];
/// Pad token strings tried, in order, when `pack.pad_token` is not set and the tokenizer has no
/// padding configured.
pub const PAD_CANDIDATES: &[&str] = &["<pad>", "[PAD]", "<|padding|>"];

/// The special token ids the packer uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SpecialTokens {
    /// Put before every document when set.
    pub bos: Option<u32>,
    /// Put after every document.
    pub eos: u32,
    /// Fills padded positions (always masked out).
    pub pad: u32,
}

fn lookup(
    tokenizer: &Tokenizer,
    role: &'static str,
    explicit: Option<&str>,
    candidates: &[&str],
) -> Result<Option<u32>> {
    if let Some(name) = explicit {
        return match tokenizer.token_to_id(name) {
            Some(id) => Ok(Some(id)),
            None => Err(TextError::MissingSpecialToken { role, candidates: vec![name.to_string()] }),
        };
    }
    Ok(candidates.iter().find_map(|c| tokenizer.token_to_id(c)))
}

impl SpecialTokens {
    /// Looks the special tokens of `config` up in `tokenizer` (see [`PackConfig`] for the
    /// defaults). Fails when a named token is unknown, when no EOS is found, or when `add_bos`
    /// is set and no BOS is found.
    pub fn resolve(tokenizer: &Tokenizer, config: &PackConfig) -> Result<Self> {
        let eos = lookup(tokenizer, "eos", config.eos_token.as_deref(), EOS_CANDIDATES)?.ok_or_else(|| {
            TextError::MissingSpecialToken {
                role: "eos",
                candidates: EOS_CANDIDATES.iter().map(|s| s.to_string()).collect(),
            }
        })?;
        let bos = if config.add_bos {
            Some(lookup(tokenizer, "bos", config.bos_token.as_deref(), BOS_CANDIDATES)?.ok_or_else(|| {
                TextError::MissingSpecialToken {
                    role: "bos",
                    candidates: BOS_CANDIDATES.iter().map(|s| s.to_string()).collect(),
                }
            })?)
        } else {
            None
        };
        let pad = match config.pad_token.as_deref() {
            Some(name) => lookup(tokenizer, "pad", Some(name), &[])?,
            None => tokenizer.get_padding().map(|p| p.pad_id).or(lookup(tokenizer, "pad", None, PAD_CANDIDATES)?),
        }
        .unwrap_or(eos);
        Ok(SpecialTokens { bos, eos, pad })
    }
}

/// `tokenizer` without its own truncation or padding: every token of a document is kept.
fn whole(tokenizer: &Tokenizer) -> Result<Tokenizer> {
    let mut tokenizer = tokenizer.clone();
    tokenizer
        .with_truncation(None)
        .map_err(|e| TextError::InvalidConfig { field: "tokenizer.truncation".to_string(), message: e.to_string() })?;
    tokenizer.with_padding(None);
    Ok(tokenizer)
}

/// Tokenizes every document (in parallel, order kept) without special tokens and without the
/// tokenizer's own truncation or padding.
pub fn tokenize_documents(docs: &[Document], tokenizer: &Tokenizer) -> Result<Vec<Vec<u32>>> {
    let tokenizer = whole(tokenizer)?;
    docs.par_iter()
        .map(|doc| {
            let err = |message: String| TextError::Tokenize { key: doc.key.clone(), index: doc.index, message };
            // A tokenizer.json is untrusted input: a panic in its pipeline is this document's error.
            distill_base::guard::catch(|| tokenizer.encode_fast(doc.text.as_str(), false))
                .map_err(|p| err(format!("the tokenizer failed: {p}")))?
                .map(|enc| enc.get_ids().to_vec())
                .map_err(|e| err(e.to_string()))
        })
        .collect()
}

/// What packing did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PackStats {
    /// Documents packed.
    pub n_docs: usize,
    /// Tokens of the documents, without BOS/EOS.
    pub n_doc_tokens: usize,
    /// Tokens in the stream(s) including BOS/EOS, before cutting or truncating.
    pub n_stream_tokens: usize,
    /// Real tokens that ended up in rows.
    pub n_tokens_real: usize,
    /// Tokens lost: the dropped final partial block (concat) or truncated tails (pad).
    pub n_tokens_dropped: usize,
    /// Padding positions in rows.
    pub n_pad: usize,
    /// Documents longer than a row (pad mode only).
    pub n_truncated_docs: usize,
    /// Rows produced.
    pub n_blocks: usize,
    /// Target (assistant) tokens lost with the tails of conversations longer than a row.
    #[serde(default)]
    pub n_targets_dropped: usize,
}

/// Packs tokenized documents into rows.
///
/// - [`PackMode::Concat`]: the stream `[bos?] doc₀ [eos] [bos?] doc₁ [eos] …` is cut into rows of
///   `seq_len`; the final partial row is dropped, or kept right-padded with `pad` and masked when
///   `keep_partial`. Without a kept partial row there is no attention mask.
/// - [`PackMode::Pad`]: row `i` is `([bos?] docᵢ [eos])[..seq_len]` right-padded with `pad`,
///   with an attention mask (a truncated document loses its tail, EOS included).
pub fn pack(docs: &[Vec<u32>], config: &PackConfig, specials: &SpecialTokens) -> Result<(TokenBlocks, PackStats)> {
    let seq_len = config.seq_len;
    if seq_len == 0 {
        return Err(TextError::ZeroSeqLen);
    }
    let n_specials = usize::from(specials.bos.is_some()) + 1;
    let n_doc_tokens: usize = docs.iter().map(Vec::len).sum();
    let mut stats = PackStats {
        n_docs: docs.len(),
        n_doc_tokens,
        n_stream_tokens: n_doc_tokens + n_specials * docs.len(),
        ..PackStats::default()
    };
    let push_doc = |out: &mut Vec<u32>, doc: &[u32]| {
        out.extend(specials.bos);
        out.extend_from_slice(doc);
        out.push(specials.eos);
    };
    let blocks = match config.mode {
        PackMode::Concat => {
            let mut stream = Vec::with_capacity(stats.n_stream_tokens);
            for doc in docs {
                push_doc(&mut stream, doc);
            }
            let n_full = stream.len() / seq_len;
            let rem = stream.len() % seq_len;
            if config.keep_partial && rem > 0 {
                let n_pad = seq_len - rem;
                let mut mask = vec![1u8; stream.len()];
                mask.resize(stream.len() + n_pad, 0);
                stats.n_tokens_real = stream.len();
                stats.n_pad = n_pad;
                stream.resize(stream.len() + n_pad, specials.pad);
                TokenBlocks {
                    seq_len,
                    n_tokens_real: stats.n_tokens_real,
                    input_ids: stream,
                    attention_mask: Some(mask),
                    target_mask: None,
                }
            } else {
                stream.truncate(n_full * seq_len);
                stats.n_tokens_real = stream.len();
                stats.n_tokens_dropped = rem;
                TokenBlocks {
                    seq_len,
                    n_tokens_real: stats.n_tokens_real,
                    input_ids: stream,
                    attention_mask: None,
                    target_mask: None,
                }
            }
        }
        PackMode::Pad => {
            let mut ids = Vec::with_capacity(docs.len() * seq_len);
            let mut mask = Vec::with_capacity(docs.len() * seq_len);
            let mut row = Vec::with_capacity(seq_len + n_specials);
            for doc in docs {
                row.clear();
                push_doc(&mut row, doc);
                if row.len() > seq_len {
                    stats.n_truncated_docs += 1;
                    stats.n_tokens_dropped += row.len() - seq_len;
                    row.truncate(seq_len);
                }
                let n_pad = seq_len - row.len();
                stats.n_tokens_real += row.len();
                stats.n_pad += n_pad;
                ids.extend_from_slice(&row);
                ids.extend(std::iter::repeat_n(specials.pad, n_pad));
                mask.extend(std::iter::repeat_n(1u8, row.len()));
                mask.extend(std::iter::repeat_n(0u8, n_pad));
            }
            TokenBlocks {
                seq_len,
                n_tokens_real: stats.n_tokens_real,
                input_ids: ids,
                attention_mask: Some(mask),
                target_mask: None,
            }
        }
    };
    stats.n_blocks = blocks.n_blocks();
    Ok((blocks, stats))
}

/// Tokenizes conversations: each rendered by `template` into its ids and, per token, 1 where it
/// is learned — an assistant token (see [`crate::chat::render`]), or every token when not
/// `assistant_only`. In parallel, order kept; no special tokens besides the template's.
pub fn tokenize_conversations(
    docs: &[&Document],
    tokenizer: &Tokenizer,
    template: &dyn ChatTemplate,
    assistant_only: bool,
) -> Result<Vec<(Vec<u32>, Vec<u8>)>> {
    let tokenizer = whole(tokenizer)?;
    docs.par_iter()
        .map(|doc| {
            let turns = doc.conversation.as_deref().unwrap_or_default();
            let bad = |message: String| TextError::ChatRender { path: doc.path.clone(), index: doc.index, message };
            let (text, spans) = if assistant_only {
                crate::chat::render(template, turns).map_err(bad)?
            } else {
                let text = template.render(turns, false).map_err(bad)?;
                let all = 0..text.len();
                (text, vec![all])
            };
            let err = |message: String| TextError::Tokenize { key: doc.key.clone(), index: doc.index, message };
            let enc = distill_base::guard::catch(|| tokenizer.encode(text.as_str(), false))
                .map_err(|p| err(format!("the tokenizer failed: {p}")))?
                .map_err(|e| err(e.to_string()))?;
            Ok((enc.get_ids().to_vec(), crate::chat::span_mask(enc.get_offsets(), &spans)))
        })
        .collect()
}

/// One conversation per row: `ids[..seq_len]` right-padded with `pad`, with an attention mask
/// and the target mask — no conversation attends to another. A conversation longer than a row
/// loses its tail; [`PackStats::n_truncated_docs`] and [`PackStats::n_targets_dropped`] count
/// what was cut.
pub fn pack_conversations(convs: &[(Vec<u32>, Vec<u8>)], seq_len: usize, pad: u32) -> Result<(TokenBlocks, PackStats)> {
    if seq_len == 0 {
        return Err(TextError::ZeroSeqLen);
    }
    let n_doc_tokens: usize = convs.iter().map(|c| c.0.len()).sum();
    let mut stats =
        PackStats { n_docs: convs.len(), n_doc_tokens, n_stream_tokens: n_doc_tokens, ..PackStats::default() };
    let mut ids = Vec::with_capacity(convs.len() * seq_len);
    let mut mask = Vec::with_capacity(convs.len() * seq_len);
    let mut target = Vec::with_capacity(convs.len() * seq_len);
    for (row, learn) in convs {
        let n = row.len().min(seq_len);
        if row.len() > seq_len {
            stats.n_truncated_docs += 1;
            stats.n_tokens_dropped += row.len() - seq_len;
            stats.n_targets_dropped += learn[seq_len..].iter().map(|&x| x as usize).sum::<usize>();
        }
        let n_pad = seq_len - n;
        stats.n_tokens_real += n;
        stats.n_pad += n_pad;
        ids.extend_from_slice(&row[..n]);
        ids.extend(std::iter::repeat_n(pad, n_pad));
        mask.extend(std::iter::repeat_n(1u8, n));
        mask.extend(std::iter::repeat_n(0u8, n_pad));
        target.extend_from_slice(&learn[..n]);
        target.extend(std::iter::repeat_n(0u8, n_pad));
    }
    let blocks = TokenBlocks {
        seq_len,
        n_tokens_real: stats.n_tokens_real,
        input_ids: ids,
        attention_mask: Some(mask),
        target_mask: Some(target),
    };
    stats.n_blocks = blocks.n_blocks();
    Ok((blocks, stats))
}

/// `a`'s rows, then `b`'s (same `seq_len`); masks are materialized where only one side has them.
pub fn concat_blocks(a: TokenBlocks, b: TokenBlocks) -> TokenBlocks {
    if b.is_empty() {
        return a;
    }
    if a.is_empty() {
        return b;
    }
    let ones = |x: &TokenBlocks| vec![1u8; x.input_ids.len()];
    let merge = |x: Option<Vec<u8>>, y: Option<Vec<u8>>, a: &TokenBlocks, b: &TokenBlocks| match (x, y) {
        (None, None) => None,
        (x, y) => {
            let mut m = x.unwrap_or_else(|| ones(a));
            m.extend(y.unwrap_or_else(|| ones(b)));
            Some(m)
        }
    };
    let attention_mask = merge(a.attention_mask.clone(), b.attention_mask.clone(), &a, &b);
    let target_mask = merge(a.target_mask.clone(), b.target_mask.clone(), &a, &b);
    let mut input_ids = a.input_ids;
    input_ids.extend(b.input_ids);
    TokenBlocks {
        seq_len: a.seq_len,
        input_ids,
        attention_mask,
        n_tokens_real: a.n_tokens_real + b.n_tokens_real,
        target_mask,
    }
}
