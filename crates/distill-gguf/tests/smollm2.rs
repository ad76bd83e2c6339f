//! The real SmolLM2-135M-Instruct GGUF (fetched by `distill fetch smollm2`): header, Llama
//! parameters, every tensor under its HF name bitwise equal to what transformers loads, and the
//! tokenizer giving the ids of SmolLM2's original tokenizer.json (digits split, unlike
//! transformers' GGUF tokenizer). References: tests/fixtures/gguf/make_smollm2_reference.py
//! and make_tokenizer_reference.py.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use distill_gguf::{
    hf_tensor, hf_tensors, tokenizer_fingerprint, tokenizer_from_gguf, tokenizer_metadata, GgmlType, GgufFile,
    LlamaGgufParams, MetadataArray, MetadataValue,
};
use serde_json::Value;
use sha2::{Digest, Sha256};

fn reference(name: &str) -> Value {
    let path = common::fixtures().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn sha256_f32(data: &[f32]) -> String {
    let mut h = Sha256::new();
    for x in data {
        h.update(x.to_le_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn smollm2_header_and_params() {
    let f = GgufFile::open(common::smollm2_gguf()).unwrap();
    assert_eq!(f.version(), 3);
    assert_eq!(f.tensors().len(), 272);
    assert_eq!(f.metadata().count(), 33);
    let mut counts = BTreeMap::new();
    for t in f.tensors() {
        *counts.entry(t.ty.name()).or_insert(0) += 1;
    }
    assert_eq!(counts, BTreeMap::from([("F32", 61), ("Q4_1", 210), ("Q8_0", 1)]));
    let emb = f.tensor_info("token_embd.weight").unwrap();
    assert_eq!((emb.ty, emb.dims.clone(), emb.shape()), (GgmlType::Q8_0, vec![576, 49152], vec![49152, 576]));
    assert_eq!(f.data_offset() + emb.offset, 1_785_664);

    let p = LlamaGgufParams::from_gguf(&f).unwrap();
    let cfg = &reference("smollm2_tensors.json")["config"];
    assert_eq!(p.architecture, "llama");
    assert_eq!(p.block_count as u64, cfg["num_hidden_layers"].as_u64().unwrap());
    assert_eq!(p.embedding_length as u64, cfg["hidden_size"].as_u64().unwrap());
    assert_eq!(p.feed_forward_length as u64, cfg["intermediate_size"].as_u64().unwrap());
    assert_eq!(p.head_count as u64, cfg["num_attention_heads"].as_u64().unwrap());
    assert_eq!(p.head_count_kv as u64, cfg["num_key_value_heads"].as_u64().unwrap());
    assert_eq!(p.context_length as u64, cfg["max_position_embeddings"].as_u64().unwrap());
    assert_eq!(p.vocab_size as u64, cfg["vocab_size"].as_u64().unwrap());
    assert_eq!(f64::from(p.rope_freq_base), cfg["rope_theta"].as_f64().unwrap());
    assert_eq!(f64::from(p.rms_norm_eps), cfg["rms_norm_eps"].as_f64().unwrap());
    assert_eq!(p.tied_embeddings, cfg["tie_word_embeddings"].as_bool().unwrap());
    assert_eq!((p.block_count, p.embedding_length, p.head_count, p.head_count_kv, p.head_dim), (30, 576, 9, 3, 64));
    assert!(p.rope_permuted());
}

#[test]
fn smollm2_hf_tensors_match_transformers_bitwise() {
    let f = GgufFile::open(common::smollm2_gguf()).unwrap();
    let p = LlamaGgufParams::from_gguf(&f).unwrap();
    let reference = reference("smollm2_tensors.json");
    let tensors = reference["tensors"].as_object().unwrap();

    let start = Instant::now();
    let mut seen = BTreeSet::new();
    let mut n_params = 0usize;
    for t in hf_tensors(&f, &p) {
        let t = t.unwrap();
        let want = tensors
            .get(&t.name)
            .unwrap_or_else(|| panic!("{} ({}) not in transformers' state dict", t.name, t.gguf_name));
        let shape: Vec<usize> =
            want["shape"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
        assert_eq!(t.shape, shape, "{}", t.name);
        let first: Vec<f32> = want["first"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
        assert_eq!(&t.data[..first.len()], &first[..], "{} first values", t.name);
        assert_eq!(sha256_f32(&t.data), want["sha256"].as_str().unwrap(), "{} bytes", t.name);
        n_params += t.data.len();
        seen.insert(t.name);
    }
    eprintln!("dequantized + un-permuted {n_params} params in {:.2?}", start.elapsed());
    assert_eq!(n_params, 134_515_008);
    // Tied head: transformers lists lm_head.weight as the embedding itself; we yield no copy.
    let expected: BTreeSet<String> = tensors.keys().filter(|k| *k != "lm_head.weight").cloned().collect();
    assert_eq!(seen, expected);
    assert_eq!(tensors["lm_head.weight"]["sha256"], tensors["model.embed_tokens.weight"]["sha256"]);
}

#[test]
fn smollm2_q_proj_is_unpermuted_and_v_proj_is_not() {
    let f = GgufFile::open(common::smollm2_gguf()).unwrap();
    let p = LlamaGgufParams::from_gguf(&f).unwrap();
    let q = hf_tensor(&f, &p, "blk.3.attn_q.weight").unwrap();
    let (raw, raw_shape) = f.tensor_f32("blk.3.attn_q.weight").unwrap();
    assert_eq!(raw_shape, q.shape);
    assert_eq!(q.shape, [576, 576]);
    // HF row 32 of head 0 (second half of the rotary dims) is GGUF row 1.
    assert_eq!(&q.data[32 * 576..33 * 576], &raw[576..2 * 576]);
    assert_ne!(q.data, raw);
    let v = hf_tensor(&f, &p, "blk.3.attn_v.weight").unwrap();
    assert_eq!(v.data, f.tensor_f32("blk.3.attn_v.weight").unwrap().0);
    assert_eq!(v.name, "model.layers.3.self_attn.v_proj.weight");
}

#[test]
fn smollm2_tokenizer_matches_original() {
    let f = GgufFile::open(common::smollm2_gguf()).unwrap();
    let tok = tokenizer_from_gguf(&f).unwrap();
    let reference = reference("smollm2_tokenizer.json");
    assert_eq!(tok.get_vocab_size(true) as u64, reference["vocab_size"].as_u64().unwrap());
    assert_eq!(tok.token_to_id("<|im_start|>"), Some(1));
    assert_eq!(tok.token_to_id("<|im_end|>"), Some(2));
    let cases = reference["cases"].as_array().unwrap();
    let mut total = 0;
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
        let enc = tok.encode(text, true).unwrap();
        assert_eq!(enc.get_ids(), &want[..], "case {name}");
        let decoded = tok.decode(&want, false).unwrap();
        assert_eq!(decoded, case["decoded"].as_str().unwrap(), "decode {name}");
        assert_eq!(decoded, text, "round trip {name}");
        total += want.len();
    }
    assert!(cases.len() >= 15 && total > 1900, "{} cases, {total} ids", cases.len());
    // A whitespace run before a digit stays whole (transformers' GGUF tokenizer gives
    // [30, 198, 198, 33]); every digit is its own token.
    assert_eq!(tok.encode(".\n\n1", false).unwrap().get_ids(), [30, 1116, 33]);
    assert_eq!(tok.encode(" 2024", false).unwrap().get_ids(), [216, 34, 32, 34, 36]);
    // Special tokens stay whole and are dropped when asked to.
    let chat = tok.encode("<|im_start|>user\nhi<|im_end|>", true).unwrap();
    assert_eq!(chat.get_ids().first(), Some(&1));
    assert_eq!(chat.get_ids().last(), Some(&2));
    assert_eq!(tok.decode(chat.get_ids(), true).unwrap(), "user\nhi");
}

#[test]
fn smollm2_tokenizer_fingerprint_is_stable() {
    let f = GgufFile::open(common::smollm2_gguf()).unwrap();
    let a = tokenizer_from_gguf(&f).unwrap();
    let b = tokenizer_from_gguf(&f).unwrap();
    let fa = tokenizer_fingerprint(&a);
    assert_eq!(fa.len(), 64);
    assert_eq!(fa, tokenizer_fingerprint(&b));
    // Pinned: changes only if the vocabulary, merges or special tokens (or the v1 scheme) change.
    assert_eq!(fa, "04f7757041c785301adefa95051f029fdab68ebe3c259610be444d3797e19e91");
    let mut c = tokenizer_from_gguf(&f).unwrap();
    c.add_special_tokens(&[tokenizers::AddedToken::from("<|new|>", true)]);
    assert_ne!(tokenizer_fingerprint(&c), fa);
}

/// The metadata written for an exported model's tokenizer is the metadata llama.cpp's converter
/// wrote for SmolLM2: the same tokens, token types, merges, pre-tokenizer and special ids.
#[test]
fn smollm2_tokenizer_metadata_reproduces_the_original() {
    let f = GgufFile::open(common::smollm2_gguf()).unwrap();
    let tok = tokenizer_from_gguf(&f).unwrap();
    let specials = (Some(1), Some(2), Some(f.get_u32("tokenizer.ggml.padding_token_id").unwrap()));
    let meta: BTreeMap<String, MetadataValue> =
        tokenizer_metadata(std::path::Path::new("out.gguf"), &tok, 49152, specials).unwrap().into_iter().collect();
    let strings = |k: &str| match &meta[k] {
        MetadataValue::Array(MetadataArray::String(v)) => v.clone(),
        other => panic!("{k}: {other:?}"),
    };
    assert_eq!(strings("tokenizer.ggml.tokens"), f.get_str_array("tokenizer.ggml.tokens").unwrap());
    assert_eq!(strings("tokenizer.ggml.merges"), f.get_str_array("tokenizer.ggml.merges").unwrap());
    let types = match &meta["tokenizer.ggml.token_type"] {
        MetadataValue::Array(MetadataArray::I32(v)) => v.iter().map(|&t| t as i64).collect::<Vec<_>>(),
        other => panic!("{other:?}"),
    };
    assert_eq!(types, f.get_i64_array("tokenizer.ggml.token_type").unwrap());
    assert_eq!(meta["tokenizer.ggml.pre"], MetadataValue::String("smollm".into()));
    assert_eq!(meta["tokenizer.ggml.model"], MetadataValue::String("gpt2".into()));
    assert_eq!(meta["tokenizer.ggml.bos_token_id"], MetadataValue::U32(1));
    assert_eq!(meta["tokenizer.ggml.eos_token_id"], MetadataValue::U32(2));
    assert_eq!(
        meta["tokenizer.ggml.add_bos_token"],
        MetadataValue::Bool(f.get_bool("tokenizer.ggml.add_bos_token").unwrap())
    );
    // A model with more embedding rows than tokens gets `[PAD{id}]` placeholders of type UNUSED.
    let padded: BTreeMap<String, MetadataValue> =
        tokenizer_metadata(std::path::Path::new("out.gguf"), &tok, 49160, specials).unwrap().into_iter().collect();
    match (&padded["tokenizer.ggml.tokens"], &padded["tokenizer.ggml.token_type"]) {
        (MetadataValue::Array(MetadataArray::String(t)), MetadataValue::Array(MetadataArray::I32(ty))) => {
            assert_eq!((t.len(), t[49159].as_str(), ty[49159]), (49160, "[PAD49159]", 5));
        }
        other => panic!("{other:?}"),
    }
    let e = tokenizer_metadata(std::path::Path::new("out.gguf"), &tok, 1000, specials).unwrap_err();
    assert!(e.to_string().contains("49152 tokens but the model has only 1000 embedding rows"), "{e}");
}
