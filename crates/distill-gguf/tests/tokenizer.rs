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
}

impl Default for Spec<'_> {
    fn default() -> Self {
        Spec { model: "gpt2", pre: Some("gpt2"), merges: vec!["1 2", "12 3", "' S"], add_bos: false, bos: ID_CTL }
    }
}

/// 256 byte tokens (id = byte), then "12", "123", "'S", a control token, a user-defined token,
/// and a control token spelled outside the byte alphabet (which transformers skips).
fn build(spec: Spec) -> GgufFile {
    let table = bytes_to_unicode();
    let mut tokens: Vec<String> = table.iter().map(|c| c.to_string()).collect();
    let mut types = vec![1i32; 256];
    for (t, ty) in [("12", 1), ("123", 1), ("'S", 1), ("<|ctl|>", 3), ("<think>", 4), ("<｜end｜>", 3)] {
        tokens.push(t.to_owned());
        types.push(ty);
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
    assert_eq!(tok.get_vocab_size(true), 262);
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

/// A SentencePiece vocabulary (`tokenizer.ggml.model = "llama"`, as Llama 2 / TinyLlama GGUFs
/// carry) gives SentencePiece's own ids — which llama.cpp reproduces too — including byte
/// fallback for characters outside the vocabulary, digits, runs of spaces and newlines, and
/// decodes back to the text. Reference: tests/fixtures/gguf/make_spm_reference.py.
#[test]
fn sentencepiece_gguf_tokenizer_matches_sentencepiece() {
    let dir = common::fixtures();
    let f = GgufFile::open(dir.join("spm_tokenizer.gguf")).unwrap();
    let tok = tokenizer_from_gguf(&f).unwrap();
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("spm_tokenizer.json")).unwrap()).unwrap();
    assert_eq!(tok.get_vocab_size(true) as u64, reference["vocab_size"].as_u64().unwrap());
    let mut total = 0;
    for case in reference["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
        assert_eq!(tok.encode(text, true).unwrap().get_ids(), &want[..], "case {name}");
        assert_eq!(tok.decode(&want, true).unwrap(), case["decoded"].as_str().unwrap(), "decode {name}");
        total += want.len();
    }
    assert!(total > 700, "{total} ids");
    // "🙂" is not a piece: four byte-fallback pieces <0xF0> <0x9F> <0x99> <0x82>.
    let ids = tok.encode("🙂", false).unwrap().get_ids().to_vec();
    let pieces: Vec<String> = ids.iter().map(|&i| tok.id_to_token(i).unwrap()).collect();
    assert_eq!(&pieces[pieces.len() - 4..], ["<0xF0>", "<0x9F>", "<0x99>", "<0x82>"]);
    // Exporting it back to GGUF metadata is refused by name.
    let e = distill_gguf::tokenizer_metadata(std::path::Path::new("x.gguf"), &tok, 1000, (Some(1), Some(2), None))
        .unwrap_err()
        .to_string();
    assert!(e.contains("x.gguf: tokenizer: a SentencePiece-style tokenizer"), "{e}");
}
