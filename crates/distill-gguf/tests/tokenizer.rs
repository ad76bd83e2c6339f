//! The GGUF tokenizer builder on small synthetic vocabularies: each `tokenizer.ggml.pre` splits
//! as its regex says, control / user-defined tokens, BOS insertion, and clear errors.

mod common;

use distill_gguf::tokenizer::bytes_to_unicode;
use distill_gguf::{
    tokenizer_fingerprint, tokenizer_from_gguf, GgufError, GgufFile, GgufWriter, MetadataArray, MetadataValue,
};

const ID_12: u32 = 256;
const ID_123: u32 = 257;
const ID_QUOTE_S: u32 = 258;
const ID_CTL: u32 = 259;
const ID_THINK: u32 = 260;
const ID_FULLWIDTH: u32 = 261;

struct Spec<'a> {
    model: &'a str,
    pre: Option<&'a str>,
    merges: Vec<&'a str>,
    add_bos: bool,
    bos: u32,
    /// Tokens appended after the fixed ones (type normal).
    extra: Vec<&'a str>,
}

impl Default for Spec<'_> {
    fn default() -> Self {
        Spec {
            model: "gpt2",
            pre: Some("gpt2"),
            merges: vec!["1 2", "12 3", "' S"],
            add_bos: false,
            bos: ID_CTL,
            extra: vec![],
        }
    }
}

/// 256 byte tokens (id = byte), then "12", "123", "'S", a control token, a user-defined token,
/// and a control token spelled outside the byte alphabet (which transformers skips).
fn build(spec: Spec) -> GgufFile {
    let table = bytes_to_unicode();
    let mut tokens: Vec<String> = table.iter().map(|c| c.to_string()).collect();
    let mut types = vec![1i32; 256];
    for (t, ty) in
        [("12", 1), ("123", 1), ("'S", 1), ("<|ctl|>", 3), ("<think>", 4), ("<｜end｜>", 3), ("$B", 3), ("<a:b>", 3)]
    {
        tokens.push(t.to_owned());
        types.push(ty);
    }
    for t in &spec.extra {
        tokens.push(t.to_string());
        types.push(1);
    }
    let mut w = GgufWriter::new("synthetic.gguf");
    w.add_metadata("general.architecture", "llama").unwrap();
    w.add_metadata("tokenizer.ggml.model", spec.model).unwrap();
    if let Some(pre) = spec.pre {
        w.add_metadata("tokenizer.ggml.pre", pre).unwrap();
    }
    w.add_metadata("tokenizer.ggml.tokens", MetadataArray::String(tokens)).unwrap();
    w.add_metadata("tokenizer.ggml.token_type", MetadataArray::I32(types)).unwrap();
    let merges = spec.merges.iter().map(|m| m.to_string()).collect();
    w.add_metadata("tokenizer.ggml.merges", MetadataArray::String(merges)).unwrap();
    w.add_metadata("tokenizer.ggml.bos_token_id", MetadataValue::U32(spec.bos)).unwrap();
    w.add_metadata("tokenizer.ggml.add_bos_token", spec.add_bos).unwrap();
    GgufFile::from_bytes(w.to_bytes(), "synthetic.gguf").unwrap()
}

fn ids(pre: &str, text: &str) -> Vec<u32> {
    let tok = tokenizer_from_gguf(&build(Spec { pre: Some(pre), ..Spec::default() })).unwrap();
    tok.encode(text, true).unwrap().get_ids().to_vec()
}

const SPACE: u32 = b' ' as u32;

#[test]
fn pre_tokenizers_split_as_their_regex() {
    // GPT-2: "'S" is not a contraction (lowercase only), " 123" is one piece.
    assert_eq!(ids("gpt2", "'S 123"), [u32::from(b'\''), u32::from(b'S'), SPACE, ID_123]);
    // smollm: GPT-2's regex after isolating every digit, so "12" never forms.
    assert_eq!(ids("smollm", "'S 123"), [u32::from(b'\''), u32::from(b'S'), SPACE, 49, 50, 51]);
    assert_eq!(ids("smollm", "x 1a"), [u32::from(b'x'), SPACE, 49, u32::from(b'a')]);
    // Llama 3: case-insensitive contractions, digits in groups of up to three.
    assert_eq!(ids("llama-bpe", "'S 123"), [ID_QUOTE_S, SPACE, ID_123]);
    assert_eq!(ids("llama-bpe", "1234"), [ID_123, u32::from(b'4')]);
    assert_eq!(ids("llama3", "1234"), ids("llama-bpe", "1234"));
    // Qwen2: digits one by one, so "12" never forms.
    assert_eq!(ids("qwen2", "'S 123"), [ID_QUOTE_S, SPACE, 49, 50, 51]);
    // No pre-tokenizer key at all: GPT-2 behaviour.
    let tok = tokenizer_from_gguf(&build(Spec { pre: None, ..Spec::default() })).unwrap();
    assert_eq!(tok.encode("x 12", false).unwrap().get_ids(), [u32::from(b'x'), SPACE, ID_12]);
    // Non-ASCII text goes through the byte alphabet and decodes back.
    let tok = tokenizer_from_gguf(&build(Spec::default())).unwrap();
    let e = tok.encode("é🦀", false).unwrap();
    assert_eq!(e.get_ids(), [0xC3, 0xA9, 0xF0, 0x9F, 0xA6, 0x80]);
    assert_eq!(tok.decode(e.get_ids(), false).unwrap(), "é🦀");
}

#[test]
fn control_and_user_defined_tokens() {
    let tok = tokenizer_from_gguf(&build(Spec::default())).unwrap();
    let e = tok.encode("a<|ctl|>b<think>c", false).unwrap();
    assert_eq!(e.get_ids(), [u32::from(b'a'), ID_CTL, u32::from(b'b'), ID_THINK, u32::from(b'c')]);
    // Control tokens are special (dropped when skipping specials), user-defined ones are not.
    assert_eq!(tok.decode(e.get_ids(), true).unwrap(), "ab<think>c");
    assert_eq!(tok.decode(e.get_ids(), false).unwrap(), "a<|ctl|>b<think>c");
    // The control token spelled outside the byte alphabet is re-spelled, not made special, and
    // adds nothing to the vocabulary.
    assert_eq!(tok.get_vocab_size(true), 264);
    assert_eq!(tok.token_to_id("<｜end｜>"), None);
    let respelled: String = "<｜end｜>".bytes().map(|b| bytes_to_unicode()[b as usize]).collect();
    assert_eq!(tok.token_to_id(&respelled), Some(ID_FULLWIDTH));
}

#[test]
fn add_bos_token_inserts_bos() {
    let tok = tokenizer_from_gguf(&build(Spec { add_bos: true, ..Spec::default() })).unwrap();
    assert_eq!(tok.encode("12", true).unwrap().get_ids(), [ID_CTL, ID_12]);
    assert_eq!(tok.encode("12", false).unwrap().get_ids(), [ID_12]);
}

/// A BOS spelled like a template placeholder (`$B`, the second sequence) or with a `:` (a type
/// id) is just BOS: inserted as a token, not read as template syntax (which would insert a
/// sequence, making every encode panic, or refuse the template).
#[test]
fn bos_spelled_like_template_syntax_is_still_bos() {
    for bos in [262, 263] {
        let tok = tokenizer_from_gguf(&build(Spec { add_bos: true, bos, ..Spec::default() })).unwrap();
        assert_eq!(tok.encode("12", true).unwrap().get_ids(), [bos, ID_12]);
    }
}

#[test]
fn unsupported_or_broken_tokenizers_are_clear_errors() {
    let err = |spec: Spec| match tokenizer_from_gguf(&build(spec)) {
        Err(e @ GgufError::Tokenizer { .. }) => e.to_string(),
        other => panic!("expected a tokenizer error, got {:?}", other.map(|_| ())),
    };
    let e = err(Spec { pre: Some("tekken-9000"), ..Spec::default() });
    assert!(e.starts_with("synthetic.gguf") && e.contains("tekken-9000") && e.contains("llama-bpe"), "{e}");
    let e = err(Spec { model: "t5", ..Spec::default() });
    assert!(e.contains("`t5` is not supported") && e.contains("llama, SentencePiece"), "{e}");
    // A SentencePiece vocabulary without its scores names the missing key.
    let e = tokenizer_from_gguf(&build(Spec { model: "llama", ..Spec::default() })).unwrap_err().to_string();
    assert!(e.contains("tokenizer.ggml.scores"), "{e}");
    let e = err(Spec { merges: vec!["1 2 3"], ..Spec::default() });
    assert!(e.contains("merge #0"), "{e}");
    let e = err(Spec { bos: 9999, ..Spec::default() });
    assert!(e.contains("9999"), "{e}");
    // A token spelled twice would leave a hole in the ids (found by the fuzzer).
    let e = err(Spec { extra: vec!["12"], ..Spec::default() });
    assert!(e.contains("token \"12\" appears twice (ids 256 and 264)"), "{e}");
}

#[test]
fn fingerprint_tracks_vocab_merges_and_specials() {
    let a = tokenizer_fingerprint(&tokenizer_from_gguf(&build(Spec::default())).unwrap());
    // The pre-tokenizer is not part of the identity…
    let b =
        tokenizer_fingerprint(&tokenizer_from_gguf(&build(Spec { pre: Some("qwen2"), ..Spec::default() })).unwrap());
    assert_eq!(a, b);
    // …but the merges are.
    let c = tokenizer_fingerprint(
        &tokenizer_from_gguf(&build(Spec { merges: vec!["1 2", "' S", "12 3"], ..Spec::default() })).unwrap(),
    );
    assert_ne!(a, c);
    assert!(a.chars().all(|ch| ch.is_ascii_hexdigit()) && a.len() == 64);
}

/// The SentencePiece fixture's cases: `(name, text, ids)`; ids = `[bos] + sentencepiece.encode`.
fn spm_cases() -> Vec<(String, String, Vec<u32>, String)> {
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(common::fixtures().join("spm_tokenizer.json")).unwrap()).unwrap();
    reference["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let ids = c["ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
            let s = |k: &str| c[k].as_str().unwrap().to_owned();
            (s("name"), s("text"), ids, s("decoded"))
        })
        .collect()
}

/// The tokenizer read back from `tok`'s GGUF metadata.
fn back_of(tok: &tokenizers::Tokenizer) -> tokenizers::Tokenizer {
    spm_round_trip(tok, 1000).1
}

/// `tokenizer_metadata` of `tok` written into a metadata-only GGUF and read back.
fn spm_round_trip(tok: &tokenizers::Tokenizer, vocab_size: usize) -> (GgufFile, tokenizers::Tokenizer) {
    let meta =
        distill_gguf::tokenizer_metadata(std::path::Path::new("x.gguf"), tok, vocab_size, (Some(1), Some(2), None))
            .unwrap();
    let mut w = GgufWriter::new("x.gguf");
    w.add_metadata("general.architecture", "llama").unwrap();
    for (k, v) in meta {
        w.add_metadata(&k, v).unwrap();
    }
    let f = GgufFile::from_bytes(w.to_bytes(), "x.gguf").unwrap();
    let back = tokenizer_from_gguf(&f).unwrap();
    (f, back)
}

/// A SentencePiece vocabulary (`tokenizer.ggml.model = "llama"`, as Llama 2 / TinyLlama GGUFs
/// carry) gives SentencePiece's own ids — which llama.cpp reproduces too — including byte
/// fallback for characters outside the vocabulary, digits, runs of spaces and newlines, and
/// decodes back to the text. Reference: tests/fixtures/gguf/make_spm_reference.py.
#[test]
fn sentencepiece_gguf_tokenizer_matches_sentencepiece() {
    let dir = common::fixtures();
    let f = GgufFile::open(dir.join("spm_tokenizer.gguf")).unwrap();
    let tok = tokenizer_from_gguf(&f).unwrap();
    assert_eq!(tok.get_vocab_size(true), 1000);
    let mut total = 0;
    for (name, text, want, decoded) in spm_cases() {
        assert_eq!(tok.encode(text.as_str(), true).unwrap().get_ids(), &want[..], "case {name}");
        assert_eq!(tok.decode(&want, true).unwrap(), decoded, "decode {name}");
        total += want.len();
    }
    assert!(total > 700, "{total} ids");
    // "🙂" is not a piece: four byte-fallback pieces <0xF0> <0x9F> <0x99> <0x82>.
    let ids = tok.encode("🙂", false).unwrap().get_ids().to_vec();
    let pieces: Vec<String> = ids.iter().map(|&i| tok.id_to_token(i).unwrap()).collect();
    assert_eq!(&pieces[pieces.len() - 4..], ["<0xF0>", "<0x9F>", "<0x99>", "<0x82>"]);
}

/// Export of SentencePiece-style tokenizers to GGUF (`tokenizer.ggml.model = "llama"`), from the
/// GGUF-built tokenizer and from the tokenizer.json transformers' LlamaConverter writes for the
/// same vocabulary (legacy `▁` normalizer, and the newer Metaspace form): the same tokens and
/// token types as SentencePiece's own GGUF (bytes 6, unknown 2, control 3), scores that order
/// the merged pieces as SentencePiece's scores do, and read back, SentencePiece's ids on every
/// case. Tokenizers whose merges llama.cpp could not reproduce are refused by name.
#[test]
fn sentencepiece_tokenizers_export_to_gguf() {
    let dir = common::fixtures();
    let original = GgufFile::open(dir.join("spm_tokenizer.gguf")).unwrap();
    let want_tokens = original.get_str_array("tokenizer.ggml.tokens").unwrap().to_vec();
    let want_types = original.get_i64_array("tokenizer.ggml.token_type").unwrap();
    let want_scores = original.get_f32_array("tokenizer.ggml.scores").unwrap();
    let from_gguf = tokenizer_from_gguf(&original).unwrap();
    let hf = tokenizers::Tokenizer::from_file(dir.join("spm_tokenizer.hf.json")).unwrap();
    let mut metaspace = hf.clone();
    metaspace.with_normalizer(None::<tokenizers::NormalizerWrapper>);
    metaspace.with_pre_tokenizer(Some(tokenizers::pre_tokenizers::metaspace::Metaspace::new(
        '▁',
        tokenizers::pre_tokenizers::metaspace::PrependScheme::First,
        false,
    )));
    let cases = spm_cases();
    for (label, tok) in [("gguf", &from_gguf), ("hf legacy", &hf), ("hf metaspace", &metaspace)] {
        let (f, back) = spm_round_trip(tok, 1000);
        assert_eq!(f.get_str("tokenizer.ggml.model").unwrap(), "llama", "{label}");
        assert_eq!(f.get_str_array("tokenizer.ggml.tokens").unwrap(), &want_tokens[..], "{label}");
        assert_eq!(f.get_i64_array("tokenizer.ggml.token_type").unwrap(), want_types, "{label}");
        assert_eq!(f.get_u32("tokenizer.ggml.unknown_token_id").unwrap(), 0, "{label}");
        assert!(f.get_bool("tokenizer.ggml.add_bos_token").unwrap(), "{label}");
        assert!(!f.get_bool("tokenizer.ggml.add_eos_token").unwrap(), "{label}");
        // Merged pieces keep SentencePiece's order (its scores are distinct); the rest score 0
        // (control, unknown, bytes) or below every merged piece (single characters).
        let scores = f.get_f32_array("tokenizer.ggml.scores").unwrap();
        let merged: Vec<usize> =
            (0..1000).filter(|&i| want_types[i] == 1 && want_tokens[i].chars().count() > 1).collect();
        let mut by_ours = merged.clone();
        by_ours.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
        let mut by_spm = merged.clone();
        by_spm.sort_by(|&a, &b| want_scores[b].total_cmp(&want_scores[a]));
        assert_eq!(by_ours, by_spm, "{label}");
        assert!(merged.len() > 600, "{}", merged.len());
        let lowest_merged = merged.iter().map(|&i| scores[i]).fold(f32::INFINITY, f32::min);
        for i in 0..1000 {
            match want_types[i] {
                2 | 3 | 6 => assert_eq!(scores[i], 0.0, "{label} {}", want_tokens[i]),
                _ if !merged.contains(&i) => assert!(scores[i] < lowest_merged, "{label} {}", want_tokens[i]),
                _ => {}
            }
        }
        for (name, text, want, decoded) in &cases {
            assert_eq!(back.encode(text.as_str(), true).unwrap().get_ids(), &want[..], "{label}: case {name}");
            assert_eq!(&back.decode(want, true).unwrap(), decoded, "{label}: decode {name}");
        }
        // The merges travel too: the tokenizer read back is the one exported, merge order included.
        assert_eq!(tokenizer_fingerprint(&back), tokenizer_fingerprint(tok), "{label}");
    }
    // The HF tokenizer.json gives the same ids itself.
    for (name, text, want, _) in &cases {
        assert_eq!(hf.encode(text.as_str(), true).unwrap().get_ids(), &want[..], "hf: case {name}");
    }
    // `tokenizer.ggml.add_space_prefix = false`: no `▁` is prepended to the text.
    let meta =
        distill_gguf::tokenizer_metadata(std::path::Path::new("x.gguf"), &hf, 1000, (Some(1), Some(2), None)).unwrap();
    let mut w = GgufWriter::new("x.gguf");
    w.add_metadata("general.architecture", "llama").unwrap();
    for (k, v) in meta {
        let v = if k == "tokenizer.ggml.add_space_prefix" { MetadataValue::Bool(false) } else { v };
        w.add_metadata(&k, v).unwrap();
    }
    let bare = tokenizer_from_gguf(&GgufFile::from_bytes(w.to_bytes(), "x.gguf").unwrap()).unwrap();
    let pieces = |t: &tokenizers::Tokenizer| t.encode("the jury", false).unwrap().get_tokens().concat();
    assert_eq!((pieces(&back_of(&hf)), pieces(&bare)), ("▁the▁jury".to_owned(), "the▁jury".to_owned()));

    // Padding rows past the vocabulary: `[PAD{id}]`, unused, score 0.
    let (f, _) = spm_round_trip(&hf, 1003);
    assert_eq!(f.get_str_array("tokenizer.ggml.tokens").unwrap()[1002], "[PAD1002]");
    assert_eq!(f.get_i64_array("tokenizer.ggml.token_type").unwrap()[1001], 5);

    // Refusals, by name.
    let metadata_err = |tok: &tokenizers::Tokenizer| {
        distill_gguf::tokenizer_metadata(std::path::Path::new("x.gguf"), tok, 1000, (Some(1), Some(2), None))
            .unwrap_err()
            .to_string()
    };
    let mut json: serde_json::Value = serde_json::from_str(&hf.to_string(false).unwrap()).unwrap();
    let merges = json["model"]["merges"].as_array_mut().unwrap();
    // A two-character piece has one merge only: without it, nothing makes the piece.
    let pair = |m: &serde_json::Value| -> Vec<String> {
        m.as_array().unwrap().iter().map(|p| p.as_str().unwrap().to_owned()).collect()
    };
    let at = merges.iter().position(|m| pair(m).iter().all(|p| p.chars().count() == 1)).unwrap();
    let dropped = pair(&merges.remove(at));
    let incomplete: tokenizers::Tokenizer = json.to_string().parse().unwrap();
    let e = metadata_err(&incomplete);
    let piece = format!("{}{}", dropped[0], dropped[1]);
    assert!(e.contains(&format!("`{piece}` splits into")) && e.contains("no merge makes it"), "{e}");
    let mut no_prefix = hf.clone();
    no_prefix.with_normalizer(Some(tokenizers::normalizers::Replace::new(" ", "▁").unwrap()));
    let e = metadata_err(&no_prefix);
    assert!(
        e.starts_with("x.gguf: tokenizer: BPE with byte fallback, but its text handling is not SentencePiece's"),
        "{e}"
    );
}
