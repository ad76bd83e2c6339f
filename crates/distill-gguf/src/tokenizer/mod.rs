//! Building a `tokenizers::Tokenizer` from GGUF metadata, and a stable fingerprint of one.
//!
//! Supported: `tokenizer.ggml.model == "gpt2"` (byte-level BPE) with the pre-tokenizer that
//! `tokenizer.ggml.pre` names. The result gives the same ids as the model's original
//! `tokenizer.json` (the tokenizer it was trained with), which is also what llama.cpp does. For
//! `smollm` that is *not* what `transformers` builds from the GGUF file
//! (`AutoTokenizer.from_pretrained(dir, gguf_file=...)`): transformers drops the digit split; see
//! `PRE_TOKENIZERS`. Otherwise it is built as transformers does:
//!
//! * vocabulary: `tokenizer.ggml.tokens`, index = id; a token with a character outside the
//!   byte-level alphabet is re-spelled from its UTF-8 bytes, as transformers does;
//! * merges: `tokenizer.ggml.merges` (`"a b"`, best first);
//! * special tokens: every token of type 3 (control) spelled in the byte alphabet, matched whole
//!   and never normalized; type 4 (user-defined) tokens as plain added tokens;
//! * `tokenizer.ggml.add_bos_token` / `add_eos_token`: a template post-processor;
//! * decoder: byte-level.

use std::collections::HashSet;

use sha2::{Digest, Sha256};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Merges, Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use crate::error::{GgufError, Result};
use crate::metadata::{MetadataArray, MetadataValue};
use crate::reader::GgufFile;

mod export;

pub use export::tokenizer_metadata;

/// llama.cpp token types (`tokenizer.ggml.token_type`).
const TOKEN_TYPE_NORMAL: i64 = 1;
const TOKEN_TYPE_UNKNOWN: i64 = 2;
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;
/// The padding rows past a tokenizer's vocabulary.
const TOKEN_TYPE_UNUSED: i64 = 5;
/// SentencePiece's byte-fallback pieces `<0x00>` … `<0xFF>`.
const TOKEN_TYPE_BYTE: i64 = 6;

/// Llama 3's split regex (`llama-bpe` in llama.cpp).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen2's split regex: like Llama 3's, but digits one by one.
const QWEN2_SPLIT: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// How text is cut before BPE, per `tokenizer.ggml.pre`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PreKind {
    /// GPT-2's byte-level regex.
    Gpt2,
    /// Every digit isolated (`Digits(individual_digits)`), then GPT-2's byte-level regex.
    DigitsGpt2,
    /// A split regex, then byte-level mapping without a regex.
    Regex(&'static str),
}

/// `tokenizer.ggml.pre` values understood, and what they mean.
const PRE_TOKENIZERS: &[(&str, PreKind)] = &[
    ("gpt2", PreKind::Gpt2),
    // SmolLM2's original tokenizer.json (and llama.cpp) isolate each digit (`char::is_numeric`)
    // before GPT-2's regex. transformers' GGUF conversion drops the digit split. SmolLM2's
    // vocabulary has no token with a digit inside a longer piece, so numbers encode the same
    // either way; the ids differ on a whitespace run directly before a digit: ".\n\n1" is
    // [".", "\n", "\n", "1"] in transformers, [".", "\n\n", "1"] here. We follow the original:
    // those are the ids the model was trained on.
    ("smollm", PreKind::DigitsGpt2),
    ("llama-bpe", PreKind::Regex(LLAMA3_SPLIT)),
    ("llama3", PreKind::Regex(LLAMA3_SPLIT)),
    ("llama-v3", PreKind::Regex(LLAMA3_SPLIT)),
    ("smaug-bpe", PreKind::Regex(LLAMA3_SPLIT)),
    ("dbrx", PreKind::Regex(LLAMA3_SPLIT)),
    ("falcon3", PreKind::Regex(LLAMA3_SPLIT)),
    ("qwen2", PreKind::Regex(QWEN2_SPLIT)),
    ("deepseek-r1-qwen", PreKind::Regex(QWEN2_SPLIT)),
];

/// The pre-tokenizer `kind` stands for, as `tokenizers` builds it.
fn pre_tokenizer(kind: PreKind) -> std::result::Result<PreTokenizerWrapper, String> {
    Ok(match kind {
        PreKind::Gpt2 => ByteLevel::new(false, true, true).into(),
        PreKind::DigitsGpt2 => {
            Sequence::new(vec![Digits::new(true).into(), ByteLevel::new(false, true, true).into()]).into()
        }
        PreKind::Regex(re) => {
            let split = Split::new(SplitPattern::Regex(re.to_owned()), SplitDelimiterBehavior::Isolated, false)
                .map_err(|e| format!("split regex: {e}"))?;
            Sequence::new(vec![split.into(), ByteLevel::new(false, true, false).into()]).into()
        }
    })
}

/// `tokenizer.ggml.token_type`, one per token (all `NORMAL` when the key is absent).
fn token_types(file: &GgufFile, n_tokens: usize) -> Result<Vec<i64>> {
    let Some(_) = file.get("tokenizer.ggml.token_type") else {
        return Ok(vec![TOKEN_TYPE_NORMAL; n_tokens]);
    };
    let types = file.get_i64_array("tokenizer.ggml.token_type")?;
    if types.len() != n_tokens {
        return Err(tok_err(file, format!("{} token types for {n_tokens} tokens", types.len())));
    }
    Ok(types)
}

/// The BPE vocabulary of `tokens`, the id of each being its index.
fn vocab_by_id(file: &GgufFile, tokens: &[String]) -> Result<Vocab> {
    let mut vocab = Vocab::default();
    for (id, t) in tokens.iter().enumerate() {
        let id = u32::try_from(id).map_err(|_| tok_err(file, "more than 2^32 tokens".into()))?;
        // A second spelling of a token would leave a hole in the id space (the first id maps
        // to nothing) and tokenizers would serialize a corrupt vocabulary.
        if let Some(first) = vocab.insert(t.clone(), id) {
            return Err(tok_err(file, format!("token {t:?} appears twice (ids {first} and {id})")));
        }
    }
    Ok(vocab)
}

/// `tokenizer.ggml.merges` (`"a b"`, best first) as pairs.
fn merges_of(file: &GgufFile) -> Result<Merges> {
    let raw = file.get_str_array("tokenizer.ggml.merges")?;
    let mut merges: Merges = Vec::with_capacity(raw.len());
    for (i, m) in raw.iter().enumerate() {
        let mut parts = m.split(' ');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(a), Some(b), None) => merges.push((a.to_owned(), b.to_owned())),
            _ => return Err(tok_err(file, format!("merge #{i} `{m}` is not two tokens separated by one space"))),
        }
    }
    Ok(merges)
}

fn tok_err(file: &GgufFile, message: String) -> GgufError {
    GgufError::Tokenizer { path: file.path().to_path_buf(), message }
}

/// GPT-2's byte → printable-character table (`bytes_to_unicode`): printable Latin-1 bytes map to
/// themselves, the other 68 to U+0100 onwards, in byte order.
pub fn bytes_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for (b, slot) in table.iter_mut().enumerate() {
        let printable = (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
        let code = if printable {
            b as u32
        } else {
            next += 1;
            next - 1
        };
        *slot = char::from_u32(code).unwrap_or('\0');
    }
    table
}

/// Builds the tokenizer described by `file`'s `tokenizer.ggml.*` metadata.
///
/// Errors name the file and the problem: a tokenizer model other than `gpt2`, an unknown
/// `tokenizer.ggml.pre`, missing or malformed tokens / merges / token types / special ids.
pub fn tokenizer_from_gguf(file: &GgufFile) -> Result<Tokenizer> {
    let model = file.get_str("tokenizer.ggml.model")?;
    if model == "llama" {
        return sentencepiece_from_gguf(file);
    }
    if model != "gpt2" {
        return Err(tok_err(
            file,
            format!(
                "tokenizer.ggml.model `{model}` is not supported (supported: gpt2, byte-level BPE; llama, SentencePiece BPE)"
            ),
        ));
    }
    let pre_name = match file.get("tokenizer.ggml.pre") {
        Some(_) => file.get_str("tokenizer.ggml.pre")?,
        None => "gpt2",
    };
    let pre = PRE_TOKENIZERS.iter().find(|(name, _)| *name == pre_name).map(|&(_, kind)| kind).ok_or_else(|| {
        let known: Vec<&str> = PRE_TOKENIZERS.iter().map(|(n, _)| *n).collect();
        tok_err(file, format!("tokenizer.ggml.pre `{pre_name}` is not supported (supported: {})", known.join(", ")))
    })?;

    let tokens = file.get_str_array("tokenizer.ggml.tokens")?;
    let token_types = token_types(file, tokens.len())?;

    // Vocabulary, re-spelled into the byte alphabet where needed.
    let table = bytes_to_unicode();
    let alphabet: HashSet<char> = table.iter().copied().collect();
    let in_alphabet = |t: &str| t.chars().all(|c| alphabet.contains(&c));
    let spelled: Vec<String> = tokens
        .iter()
        .map(|t| if in_alphabet(t) { t.clone() } else { t.bytes().map(|b| table[b as usize]).collect() })
        .collect();
    let vocab = vocab_by_id(file, &spelled)?;
    let merges = merges_of(file)?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| tok_err(file, format!("invalid BPE vocabulary/merges: {e}")))?;

    let mut tokenizer = Tokenizer::new(bpe);
    let pre_tokenizer = pre_tokenizer(pre).map_err(|e| tok_err(file, e))?;
    tokenizer.with_pre_tokenizer(Some(pre_tokenizer));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));

    // Control tokens → special added tokens; user-defined → plain added tokens.
    let special: Vec<AddedToken> = tokens
        .iter()
        .enumerate()
        .filter(|&(i, t)| token_types[i] == TOKEN_TYPE_CONTROL && in_alphabet(t))
        .map(|(_, t)| AddedToken::from(t.clone(), true).normalized(false))
        .collect();
    tokenizer.add_special_tokens(&special);
    let known = tokenizer.get_vocab(true);
    let user: Vec<AddedToken> = tokens
        .iter()
        .enumerate()
        .filter(|&(i, t)| token_types[i] == TOKEN_TYPE_USER_DEFINED && known.contains_key(t))
        .map(|(_, t)| AddedToken::from(t.clone(), false).normalized(false))
        .collect();
    tokenizer.add_tokens(&user);

    add_post_processor(file, &mut tokenizer, &spelled)?;
    Ok(tokenizer)
}

/// BOS / EOS insertion as `tokenizer.ggml.add_bos_token` / `add_eos_token` say (a template
/// post-processor), and a check of every special id against the vocabulary (`spelled`: the
/// tokens as the tokenizer spells them).
fn add_post_processor(file: &GgufFile, tokenizer: &mut Tokenizer, spelled: &[String]) -> Result<()> {
    let flag = |key: &str| -> Result<bool> {
        match file.get(key) {
            Some(_) => file.get_bool(key),
            None => Ok(false),
        }
    };
    let special_token = |key: &str| -> Result<Option<(String, u32)>> {
        if file.get(key).is_none() {
            return Ok(None);
        }
        let id = file.get_u32(key)?;
        let token =
            spelled.get(id as usize).ok_or_else(|| tok_err(file, format!("{key} = {id} is past the vocabulary")))?;
        Ok(Some((token.clone(), id)))
    };
    // The template is built from pieces, not from strings: tokenizers would read a token spelled
    // `$B` as the second sequence (and panic on every encode) and refuse one containing `:`.
    let special_piece = |t: &str| serde_json::json!({"SpecialToken": {"id": t, "type_id": 0}});
    let mut template = Vec::new();
    let mut specials: Vec<(String, u32)> = Vec::new();
    if flag("tokenizer.ggml.add_bos_token")? {
        let bos = special_token("tokenizer.ggml.bos_token_id")?
            .ok_or_else(|| tok_err(file, "add_bos_token is set but bos_token_id is missing".into()))?;
        template.push(special_piece(&bos.0));
        specials.push(bos);
    }
    template.push(serde_json::json!({"Sequence": {"id": "A", "type_id": 0}}));
    if flag("tokenizer.ggml.add_eos_token")? {
        let eos = special_token("tokenizer.ggml.eos_token_id")?
            .ok_or_else(|| tok_err(file, "add_eos_token is set but eos_token_id is missing".into()))?;
        template.push(special_piece(&eos.0));
        specials.push(eos);
    }
    if !specials.is_empty() {
        let template: tokenizers::processors::template::Template =
            serde_json::from_value(serde_json::Value::Array(template))
                .map_err(|e| tok_err(file, format!("post-processor template: {e}")))?;
        let post = TemplateProcessing::builder()
            .single(template)
            .special_tokens(specials)
            .build()
            .map_err(|e| tok_err(file, format!("post-processor: {e}")))?;
        tokenizer.with_post_processor(Some(post));
    }
    // Validate the special ids even when they are not inserted, so a broken file fails here.
    for key in [
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.padding_token_id",
        "tokenizer.ggml.unknown_token_id",
    ] {
        special_token(key)?;
    }
    Ok(())
}

/// A SentencePiece vocabulary (`tokenizer.ggml.model = "llama"`: Llama 2, TinyLlama, Mistral
/// v0.1…) as `tokenizers` expresses it, the way transformers converts such a model
/// (`LlamaConverter`, legacy mode): a BPE over the pieces with byte fallback (`<0xNN>` pieces) and
/// `<unk>` fused, whose merges are every split of a piece into two pieces, ranked by the merged
/// piece's score (highest first) — SentencePiece BPE's own merge order — or, when the file has
/// `tokenizer.ggml.merges` (distill's export writes them), those; normalizer: prepend `▁` (unless
/// `tokenizer.ggml.add_space_prefix` is false), spaces → `▁`; no pre-tokenizer; decoder: `▁` → space, byte fallback, fuse, strip the leading
/// space. Control and unknown tokens (types 3, 2) are special; `add_bos_token` /
/// `add_eos_token` as for gpt2. Gives the ids of SentencePiece and of llama.cpp (tested).
fn sentencepiece_from_gguf(file: &GgufFile) -> Result<Tokenizer> {
    let tokens = file.get_str_array("tokenizer.ggml.tokens")?;
    let scores = file.get_f32_array("tokenizer.ggml.scores")?;
    if scores.len() != tokens.len() {
        return Err(tok_err(file, format!("{} scores for {} tokens", scores.len(), tokens.len())));
    }
    let token_types = token_types(file, tokens.len())?;
    let vocab = vocab_by_id(file, tokens)?;
    let merges = match file.get("tokenizer.ggml.merges") {
        // Written by distill's export: the tokenizer's own merge order, exactly.
        Some(_) => merges_of(file)?,
        None => merges_from_scores(tokens, &scores, &token_types, &vocab),
    };
    let mut builder = BPE::builder().vocab_and_merges(vocab, merges).byte_fallback(true).fuse_unk(true);
    if let Some(unk) =
        file.get("tokenizer.ggml.unknown_token_id").map(|_| file.get_u32("tokenizer.ggml.unknown_token_id"))
    {
        let unk = unk? as usize;
        let t =
            tokens.get(unk).ok_or_else(|| tok_err(file, format!("unknown_token_id {unk} is past the vocabulary")))?;
        builder = builder.unk_token(t.clone());
    }
    let bpe = builder.build().map_err(|e| tok_err(file, format!("invalid SentencePiece vocabulary: {e}")))?;
    let mut tokenizer = Tokenizer::new(bpe);
    let replace = |from: &str, to: &str| {
        tokenizers::normalizers::Replace::new(from, to).map_err(|e| tok_err(file, format!("replace: {e}")))
    };
    let space_prefix = match file.get("tokenizer.ggml.add_space_prefix") {
        Some(_) => file.get_bool("tokenizer.ggml.add_space_prefix")?,
        None => true,
    };
    tokenizer.with_normalizer(Some(sentencepiece_normalizer(space_prefix).map_err(|e| tok_err(file, e))?));
    let decoder = tokenizers::decoders::sequence::Sequence::new(vec![
        replace("▁", " ")?.into(),
        tokenizers::decoders::byte_fallback::ByteFallback::new().into(),
        tokenizers::decoders::fuse::Fuse::new().into(),
        tokenizers::decoders::strip::Strip::new(' ', 1, 0).into(),
    ]);
    tokenizer.with_decoder(Some(decoder));
    let special: Vec<AddedToken> = tokens
        .iter()
        .enumerate()
        .filter(|&(i, _)| token_types[i] == TOKEN_TYPE_CONTROL || token_types[i] == TOKEN_TYPE_UNKNOWN)
        .map(|(_, t)| AddedToken::from(t.clone(), true).normalized(false))
        .collect();
    tokenizer.add_special_tokens(&special);
    add_post_processor(file, &mut tokenizer, tokens)?;
    Ok(tokenizer)
}

/// SentencePiece BPE's merges from its scores: (left, right) for every normal piece that splits
/// into two pieces, grouped per piece by the parts' ids, ranked by the piece's score (stable:
/// ties keep vocabulary order).
fn merges_from_scores(tokens: &[String], scores: &[f32], token_types: &[i64], vocab: &Vocab) -> Merges {
    let mut merges: Vec<(String, String, f32)> = Vec::new();
    for (id, piece) in tokens.iter().enumerate() {
        if token_types[id] != TOKEN_TYPE_NORMAL {
            continue;
        }
        let mut local: Vec<(u32, u32, String, String)> = piece
            .char_indices()
            .skip(1)
            .filter_map(|(i, _)| {
                let (l, r) = piece.split_at(i);
                Some((*vocab.get(l)?, *vocab.get(r)?, l.to_owned(), r.to_owned()))
            })
            .collect();
        local.sort_by_key(|&(a, b, _, _)| (a, b));
        merges.extend(local.into_iter().map(|(_, _, l, r)| (l, r, scores[id])));
    }
    merges.sort_by(|a, b| b.2.total_cmp(&a.2));
    merges.into_iter().map(|(l, r, _)| (l, r)).collect()
}

/// SentencePiece's text handling as a normalizer (transformers' legacy `LlamaConverter`): `▁`
/// prepended when `space_prefix` (`tokenizer.ggml.add_space_prefix`, default true), every space
/// → `▁`.
fn sentencepiece_normalizer(space_prefix: bool) -> std::result::Result<tokenizers::NormalizerWrapper, String> {
    use tokenizers::normalizers::{Prepend, Replace, Sequence};
    let mut steps = Vec::new();
    if space_prefix {
        steps.push(Prepend::new("▁".into()).into());
    }
    steps.push(Replace::new(" ", "▁").map_err(|e| format!("replace: {e}"))?.into());
    Ok(Sequence::new(steps).into())
}

/// Feeds one length-prefixed field to the hash, so that no two field sequences collide.
fn field(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

/// A stable identity of a tokenizer's vocabulary, merges and special tokens: hex SHA-256 over
///
/// * every `(id, token)` of the vocabulary including added tokens, by id;
/// * the BPE merges in rank order (none for other models);
/// * every added token as `(id, content, special)`, by id.
///
/// Pre-tokenizer, normalizer and decoder settings are not part of it. Two tokenizers with the
/// same fingerprint map the same ids to the same strings — the check a teacher/student pair
/// must pass before logits are compared.
pub fn tokenizer_fingerprint(tokenizer: &Tokenizer) -> String {
    let mut h = Sha256::new();
    field(&mut h, b"distill-tokenizer-fingerprint/v1");

    let mut vocab: Vec<(u32, String)> = tokenizer.get_vocab(true).into_iter().map(|(t, id)| (id, t)).collect();
    vocab.sort();
    field(&mut h, b"vocab");
    h.update((vocab.len() as u64).to_le_bytes());
    for (id, t) in &vocab {
        h.update(id.to_le_bytes());
        field(&mut h, t.as_bytes());
    }

    field(&mut h, b"merges");
    let merges = serde_json::to_value(tokenizer.get_model()).ok().and_then(|v| v.get("merges").cloned());
    if let Some(serde_json::Value::Array(merges)) = merges {
        h.update((merges.len() as u64).to_le_bytes());
        for m in &merges {
            match m {
                // Older serializations write "a b", newer ones ["a", "b"]: hash both as (a, b).
                serde_json::Value::String(s) => {
                    let (a, b) = s.split_once(' ').unwrap_or((s.as_str(), ""));
                    field(&mut h, a.as_bytes());
                    field(&mut h, b.as_bytes());
                }
                serde_json::Value::Array(pair) => {
                    for part in pair {
                        field(&mut h, part.as_str().unwrap_or_default().as_bytes());
                    }
                }
                other => field(&mut h, other.to_string().as_bytes()),
            }
        }
    } else {
        h.update(0u64.to_le_bytes());
    }

    field(&mut h, b"added");
    let mut added: Vec<(u32, String, bool)> =
        tokenizer.get_added_tokens_decoder().into_iter().map(|(id, t)| (id, t.content, t.special)).collect();
    added.sort();
    h.update((added.len() as u64).to_le_bytes());
    for (id, content, special) in &added {
        h.update(id.to_le_bytes());
        field(&mut h, content.as_bytes());
        h.update([u8::from(*special)]);
    }

    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_matches_gpt2() {
        let t = bytes_to_unicode();
        assert_eq!(t[b'a' as usize], 'a');
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[b'\n' as usize], 'Ċ');
        assert_eq!(t[0], 'Ā');
        assert_eq!(t[0xAD], 'Ń');
        let distinct: HashSet<char> = t.iter().copied().collect();
        assert_eq!(distinct.len(), 256);
    }
}
