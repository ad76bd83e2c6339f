//! The inverse of [`tokenizer_from_gguf`](super::tokenizer_from_gguf): a `tokenizers::Tokenizer`
//! written as the `tokenizer.ggml.*` metadata llama.cpp reads — byte-level BPE (`gpt2`) or
//! SentencePiece-style BPE (`llama`, with scores that make llama.cpp merge in the BPE's order).

use super::*;

/// `tokenizer.ggml.*` metadata for a BPE tokenizer: the inverse of [`tokenizer_from_gguf`],
/// which builds the same tokenizer back from it.
///
/// * byte-level BPE → `tokenizer.ggml.model = "gpt2"`, `tokenizer.ggml.pre` the name whose
///   pre-tokenizer equals the tokenizer's (compared as `tokenizers` serializes them), merges as
///   `"a b"`, best first;
/// * BPE with byte fallback and SentencePiece's `▁` handling (Llama 2, TinyLlama, Mistral v0.1:
///   transformers' `LlamaConverter`, legacy or not) → `tokenizer.ggml.model = "llama"` with the
///   merges (read back by distill) and `tokenizer.ggml.scores`: llama.cpp merges the adjacent pair whose concatenation scores
///   highest, so a piece scores −(1 + the rank of its first merge) (byte, control and unknown
///   pieces 0, as SentencePiece writes them); `<0xNN>` pieces are `BYTE`, the model's unknown
///   token `UNKNOWN`. That order is the tokenizer's only when every piece that splits into two
///   pieces has a merge and each piece's merges are adjacent (as `LlamaConverter` writes them):
///   checked, and named when not;
/// * tokens by id (added tokens spelled as their content), padded with `[PAD{id}]` (type
///   `UNUSED`) up to `vocab_size` (the model's embedding rows); token types: special added
///   tokens `CONTROL`, other added tokens `USER_DEFINED`, the rest `NORMAL`;
/// * `bos/eos/padding_token_id` as given; `add_bos_token` / `add_eos_token` as the tokenizer's
///   post-processor behaves (it is asked to encode a word).
///
/// `path` only names the destination in errors.
pub fn tokenizer_metadata(
    path: &std::path::Path,
    tokenizer: &Tokenizer,
    vocab_size: usize,
    (bos, eos, pad): (Option<u32>, Option<u32>, Option<u32>),
) -> Result<Vec<(String, MetadataValue)>> {
    let err = |message: String| GgufError::Tokenizer { path: path.to_path_buf(), message };
    let json: serde_json::Value = serde_json::from_str(
        &tokenizer.to_string(false).map_err(|e| err(format!("cannot serialize the tokenizer: {e}")))?,
    )
    .map_err(|e| err(format!("cannot read the serialized tokenizer: {e}")))?;
    let model = &json["model"];
    if model["type"] != "BPE" {
        return Err(err(format!(
            "model {} is not BPE; GGUF export supports byte-level BPE (gpt2) and SentencePiece-style BPE (llama)",
            model["type"]
        )));
    }

    // Tokens and their types, by id.
    let n = tokenizer.get_vocab_size(true);
    if n > vocab_size {
        return Err(err(format!("{n} tokens but the model has only {vocab_size} embedding rows")));
    }
    let mut tokens: Vec<Option<String>> = vec![None; vocab_size];
    let mut types = vec![TOKEN_TYPE_UNUSED; vocab_size];
    for (t, id) in tokenizer.get_vocab(false) {
        let i = id as usize;
        if i >= vocab_size {
            return Err(err(format!("token id {id} is past the model's {vocab_size} embedding rows")));
        }
        tokens[i] = Some(t);
        types[i] = TOKEN_TYPE_NORMAL;
    }
    for (id, added) in tokenizer.get_added_tokens_decoder() {
        let i = id as usize;
        if i >= vocab_size {
            return Err(err(format!("added token id {id} is past the model's {vocab_size} embedding rows")));
        }
        tokens[i] = Some(added.content.clone());
        types[i] = if added.special { TOKEN_TYPE_CONTROL } else { TOKEN_TYPE_USER_DEFINED };
    }
    let tokens: Vec<String> =
        tokens.into_iter().enumerate().map(|(i, t)| t.unwrap_or_else(|| format!("[PAD{i}]"))).collect();

    // Merges in rank order (tokenizer.json writes "a b" or [a, b]).
    let merges = model["merges"].as_array().ok_or_else(|| err("the BPE model has no merges".into()))?;
    let merges: Vec<(String, String)> = merges
        .iter()
        .enumerate()
        .map(|(i, m)| match m {
            serde_json::Value::String(s) => match s.split_once(' ') {
                Some((a, b)) => Ok((a.to_owned(), b.to_owned())),
                None => Err(err(format!("merge #{i} `{s}` has no space"))),
            },
            serde_json::Value::Array(p) => {
                match (p.first().and_then(|v| v.as_str()), p.get(1).and_then(|v| v.as_str())) {
                    (Some(a), Some(b)) if p.len() == 2 && !a.contains(' ') && !b.contains(' ') => {
                        Ok((a.to_owned(), b.to_owned()))
                    }
                    _ => Err(err(format!("merge #{i} is not a pair of strings without spaces"))),
                }
            }
            _ => Err(err(format!("merge #{i} is neither \"a b\" nor [a, b]"))),
        })
        .collect::<Result<_>>()?;

    let unk = model["unk_token"].as_str().and_then(|t| tokenizer.token_to_id(t));
    let mut out: Vec<(String, MetadataValue)> = if model["byte_fallback"] == true {
        let (scores, space_prefix) = sentencepiece_scores(&json, &tokens, &mut types, &merges, unk).map_err(err)?;
        // The merges too (llama.cpp goes by the scores): distill reads them back exactly.
        let merges: Vec<String> = merges.into_iter().map(|(a, b)| format!("{a} {b}")).collect();
        vec![
            ("tokenizer.ggml.model".into(), "llama".into()),
            ("tokenizer.ggml.tokens".into(), MetadataValue::Array(MetadataArray::String(tokens))),
            ("tokenizer.ggml.scores".into(), MetadataValue::Array(MetadataArray::F32(scores))),
            (
                "tokenizer.ggml.token_type".into(),
                MetadataValue::Array(MetadataArray::I32(types.iter().map(|&t| t as i32).collect())),
            ),
            ("tokenizer.ggml.merges".into(), MetadataValue::Array(MetadataArray::String(merges))),
            ("tokenizer.ggml.add_space_prefix".into(), space_prefix.into()),
        ]
    } else {
        // Pre-tokenizer → `tokenizer.ggml.pre`.
        let have = serde_json::to_value(tokenizer.get_pre_tokenizer()).map_err(|e| err(e.to_string()))?;
        let pre = PRE_TOKENIZERS
            .iter()
            .find(|(_, kind)| {
                pre_tokenizer(*kind).ok().and_then(|p| serde_json::to_value(Some(&p)).ok()).is_some_and(|v| v == have)
            })
            .map(|(name, _)| *name)
            .ok_or_else(|| {
                let known: Vec<&str> = PRE_TOKENIZERS.iter().map(|(n, _)| *n).collect();
                err(format!("its pre-tokenizer is none that GGUF names (supported: {}): {have}", known.join(", ")))
            })?;
        let merges: Vec<String> = merges.into_iter().map(|(a, b)| format!("{a} {b}")).collect();
        vec![
            ("tokenizer.ggml.model".into(), "gpt2".into()),
            ("tokenizer.ggml.pre".into(), pre.into()),
            ("tokenizer.ggml.tokens".into(), MetadataValue::Array(MetadataArray::String(tokens))),
            (
                "tokenizer.ggml.token_type".into(),
                MetadataValue::Array(MetadataArray::I32(types.iter().map(|&t| t as i32).collect())),
            ),
            ("tokenizer.ggml.merges".into(), MetadataValue::Array(MetadataArray::String(merges))),
        ]
    };

    // Whether the post-processor adds BOS / EOS.
    let with = tokenizer.encode("a", true).map_err(|e| err(format!("cannot encode: {e}")))?;
    let without = tokenizer.encode("a", false).map_err(|e| err(format!("cannot encode: {e}")))?;
    let (w, wo) = (with.get_ids(), without.get_ids());
    let add_bos = bos.is_some() && w.len() > wo.len() && w.first().copied() == bos;
    let add_eos = eos.is_some() && w.len() > wo.len() && w.last().copied() == eos;
    for (key, id) in
        [("bos_token_id", bos), ("eos_token_id", eos), ("padding_token_id", pad), ("unknown_token_id", unk)]
    {
        if let Some(id) = id {
            out.push((format!("tokenizer.ggml.{key}"), id.into()));
        }
    }
    out.push(("tokenizer.ggml.add_bos_token".into(), add_bos.into()));
    out.push(("tokenizer.ggml.add_eos_token".into(), add_eos.into()));
    Ok(out)
}

/// The scores llama.cpp's SentencePiece tokenizer needs to merge as the BPE `merges` do (see
/// [`tokenizer_metadata`]), after checking that the tokenizer handles text as SentencePiece
/// does, and whether it prepends `▁` (`add_space_prefix`: Llama 2 does, Gemma does not); marks
/// byte and unknown (`unk`) pieces in `types`.
fn sentencepiece_scores(
    json: &serde_json::Value,
    tokens: &[String],
    types: &mut [i64],
    merges: &[(String, String)],
    unk: Option<u32>,
) -> std::result::Result<(Vec<f32>, bool), String> {
    // SentencePiece's text handling: `▁` for every space, prepended or not (Gemma's
    // `add_space_prefix` false), either in the normalizer (transformers' legacy conversion) or in
    // a Metaspace pre-tokenizer that does not split (the newer one); nothing else.
    let legacy = serde_json::to_value(sentencepiece_normalizer(true)?).map_err(|e| e.to_string())?;
    let no_prefix = serde_json::to_value(sentencepiece_normalizer(false)?).map_err(|e| e.to_string())?;
    let pre = &json["pre_tokenizer"];
    let metaspace = pre["type"] == "Metaspace"
        && pre["replacement"] == "▁"
        && pre["split"] == false
        && (pre["prepend_scheme"] == "first" || pre["prepend_scheme"] == "always");
    let prefix = match (&json["normalizer"], pre) {
        (n, serde_json::Value::Null) if *n == legacy => Some(true),
        (n, serde_json::Value::Null) if *n == no_prefix => Some(false),
        (serde_json::Value::Null, _) if metaspace => Some(true),
        _ => None,
    };
    let Some(space_prefix) = prefix else {
        return Err(format!(
            "BPE with byte fallback, but its text handling is not SentencePiece's (spaces → `▁`, `▁` \
             prepended or not, no split); normalizer {}, pre-tokenizer {pre}",
            json["normalizer"]
        ));
    };

    let ids: std::collections::HashMap<&str, usize> = tokens.iter().enumerate().map(|(i, t)| (t.as_str(), i)).collect();
    for (i, t) in tokens.iter().enumerate() {
        let byte = t.len() == 6
            && t.starts_with("<0x")
            && t.ends_with('>')
            && t[3..5].chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_lowercase());
        if types[i] == TOKEN_TYPE_NORMAL && byte {
            types[i] = TOKEN_TYPE_BYTE;
        }
        if Some(i as u32) == unk {
            types[i] = TOKEN_TYPE_UNKNOWN;
        }
    }

    // A piece scores -(1 + the rank of its first merge); each piece's merges must be adjacent.
    let mut scores = vec![0.0f32; tokens.len()];
    let mut first: Vec<Option<usize>> = vec![None; tokens.len()];
    let mut previous: Option<usize> = None;
    for (rank, (a, b)) in merges.iter().enumerate() {
        let piece = format!("{a}{b}");
        let &id = ids.get(piece.as_str()).ok_or_else(|| format!("merge #{rank} `{a} {b}` makes no token"))?;
        match first[id] {
            None => first[id] = Some(rank),
            Some(r) if previous != Some(id) => {
                return Err(format!(
                    "the merges of `{piece}` are not adjacent (#{r} and #{rank}): not SentencePiece's merge order"
                ))
            }
            Some(_) => {}
        }
        previous = Some(id);
        if rank + 1 >= 1 << 24 {
            return Err(format!("{} merges: ranks past 2^24 do not fit a score exactly", merges.len()));
        }
        scores[id] = -((rank + 1) as f32);
    }
    // Every piece that splits into two normal pieces must have a merge: llama.cpp would join them.
    for (id, piece) in tokens.iter().enumerate() {
        if types[id] != TOKEN_TYPE_NORMAL {
            continue;
        }
        match first[id] {
            Some(_) => {}
            None => {
                let split = piece.char_indices().skip(1).find(|&(i, _)| {
                    let (l, r) = piece.split_at(i);
                    [l, r].iter().all(|p| ids.get(p).is_some_and(|&j| types[j] == TOKEN_TYPE_NORMAL))
                });
                if let Some((i, _)) = split {
                    return Err(format!(
                        "`{piece}` splits into `{}` + `{}` but no merge makes it: not SentencePiece's merges",
                        &piece[..i],
                        &piece[i..]
                    ));
                }
                // Never the result of a merge (single characters): below every merged piece.
                scores[id] = -((merges.len() + 1 + id) as f32);
            }
        }
    }
    Ok((scores, space_prefix))
}
