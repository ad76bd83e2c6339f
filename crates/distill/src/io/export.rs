//! Export a Llama-family model as a Hugging Face directory that
//! `AutoModelForCausalLM.from_pretrained` and `AutoTokenizer.from_pretrained` load as is.
//!
//! The directory holds `config.json` (float32, see [`LmConfig::to_hf_json`]),
//! `model.safetensors` (F32, no `lm_head.weight` when the head is tied),
//! `generation_config.json`, and, when a tokenizer is given, `tokenizer.json` with a minimal
//! `tokenizer_config.json` (`PreTrainedTokenizerFast`, bos/eos strings looked up in the tokenizer).
//!
//! The export is atomic: everything is written into a temporary sibling directory which then
//! replaces `out_dir`. An existing `out_dir` is replaced only if it is empty or looks like an
//! earlier export (holds a `config.json`), so a mistyped path cannot wipe unrelated files.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use tch::{Kind, Tensor};

pub use distill_gguf::ExportType as GgufType;

use crate::io::safetensors::save_safetensors;
use crate::models::lm::CausalLm;
use crate::models::lm::{LmConfig, RopeScaling};
use crate::train::checkpoint::{write_atomic, write_json};
use crate::{Error, Result};

/// The token string of `id` in a `tokenizer.json` (added tokens first, then the model vocab).
fn token_string(tok: &Value, id: i64) -> Option<String> {
    let added = tok.get("added_tokens").and_then(Value::as_array);
    for t in added.into_iter().flatten() {
        if t.get("id").and_then(Value::as_i64) == Some(id) {
            return t.get("content").and_then(Value::as_str).map(str::to_string);
        }
    }
    let vocab = tok.get("model")?.get("vocab")?.as_object()?;
    vocab.iter().find(|(_, v)| v.as_i64() == Some(id)).map(|(k, _)| k.clone())
}

/// `tokenizer_config.json` for a fast tokenizer.
fn tokenizer_config(cfg: &LmConfig, tokenizer_json: &[u8]) -> Result<Value> {
    let tok: Value = serde_json::from_slice(tokenizer_json)
        .map_err(|e| Error::Invalid(format!("tokenizer.json is not valid JSON: {e}")))?;
    let mut out = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": cfg.max_position_embeddings,
        "clean_up_tokenization_spaces": false,
    });
    let specials = [
        ("bos_token", cfg.bos_token_id),
        ("eos_token", cfg.eos_token_ids.first().copied()),
        ("pad_token", cfg.pad_token_id),
    ];
    for (key, id) in specials {
        if let Some(s) = id.and_then(|id| token_string(&tok, id)) {
            out[key] = json!(s);
        }
    }
    Ok(out)
}

fn generation_config(cfg: &LmConfig) -> Value {
    let eos = match cfg.eos_token_ids.as_slice() {
        [] => Value::Null,
        [one] => json!(one),
        many => json!(many),
    };
    json!({"bos_token_id": cfg.bos_token_id, "eos_token_id": eos, "pad_token_id": cfg.pad_token_id})
}

/// A fresh sibling path `.{name}.{tag}-{pid}` of `dir`.
fn sibling(dir: &Path, tag: &str) -> PathBuf {
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("export");
    dir.with_file_name(format!(".{name}.{tag}-{}", std::process::id()))
}

/// Writes `model` (weights as F32) and its config, plus the tokenizer when given, to `out_dir`.
pub fn export_hf(model: &CausalLm, tokenizer_json: Option<&[u8]>, out_dir: impl AsRef<Path>) -> Result<()> {
    export_hf_with_chat_template(model, tokenizer_json, None, out_dir)
}

/// [`export_hf`], with a chat template (Jinja) stored as `chat_template` in
/// `tokenizer_config.json` (needs the tokenizer), so that `apply_chat_template` works on the
/// export as on the original.
pub fn export_hf_with_chat_template(
    model: &CausalLm,
    tokenizer_json: Option<&[u8]>,
    chat_template: Option<&str>,
    out_dir: impl AsRef<Path>,
) -> Result<()> {
    let cfg = model.config();
    // Validate the tokenizer before writing anything.
    let mut tok_cfg = tokenizer_json.map(|t| tokenizer_config(cfg, t)).transpose()?;
    if let (Some(tc), Some(template)) = (tok_cfg.as_mut(), chat_template) {
        tc["chat_template"] = json!(template);
    }
    write_dir(out_dir.as_ref(), |tmp| {
        let tensors: Vec<(String, Tensor)> = tch::no_grad(|| {
            model
                .checkpoint_tensors()
                .into_iter()
                .map(|(n, t)| Ok((n, t.f_to_kind(Kind::Float)?)))
                .collect::<Result<_>>()
        })?;
        save_safetensors(&tensors, tmp.join("model.safetensors"))?;
        write_json(&tmp.join("config.json"), &cfg.to_hf_json())?;
        write_json(&tmp.join("generation_config.json"), &generation_config(cfg))?;
        if let (Some(tok), Some(tc)) = (tokenizer_json, &tok_cfg) {
            let p = tmp.join("tokenizer.json");
            write_atomic(&p, tok)?;
            write_json(&tmp.join("tokenizer_config.json"), tc)?;
        }
        Ok(())
    })
}

/// Writes a model directory as a whole: `write` fills a temporary sibling, which then replaces
/// `out_dir` (an earlier export — a directory with a `config.json` — or an empty one; anything
/// else is refused). A failure leaves `out_dir` as it was.
pub fn write_dir(out_dir: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    if out_dir.as_os_str().is_empty() {
        return Err(Error::Invalid("export directory is empty".into()));
    }
    let out_dir = if out_dir.is_relative() {
        std::env::current_dir().map_err(|e| Error::io(out_dir, e))?.join(out_dir)
    } else {
        out_dir.to_path_buf()
    };
    if out_dir.exists() {
        let is_export = out_dir.join("config.json").is_file();
        let is_empty = std::fs::read_dir(&out_dir).map_err(|e| Error::io(&out_dir, e))?.next().is_none();
        if !out_dir.is_dir() || !(is_export || is_empty) {
            return Err(Error::format(
                &out_dir,
                "exists and is not an earlier export (no config.json); refusing to replace it",
            ));
        }
    }
    // A process killed mid-export leaves its temporary sibling (named by its pid), or, between
    // the two renames of the swap, the previous export as `.old-`: remove those (an `.old-` one
    // only when `out_dir` itself is whole).
    if let (Some(parent), Some(name)) = (out_dir.parent(), out_dir.file_name().and_then(|n| n.to_str())) {
        let (tmp_prefix, old_prefix) = (format!(".{name}.tmp-"), format!(".{name}.old-"));
        let whole = out_dir.join("config.json").is_file();
        for e in std::fs::read_dir(parent).into_iter().flatten().flatten() {
            let stale = e
                .file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(&tmp_prefix) || (whole && n.starts_with(&old_prefix)));
            if stale && e.path().is_dir() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let tmp = sibling(&out_dir, "tmp");
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    if let Err(e) = write(&tmp) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    // Swap into place: old → backup, tmp → out_dir, drop backup.
    if out_dir.exists() {
        let old = sibling(&out_dir, "old");
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
        }
        std::fs::rename(&out_dir, &old).map_err(|e| Error::io(&out_dir, e))?;
        if let Err(e) = std::fs::rename(&tmp, &out_dir) {
            let _ = std::fs::rename(&old, &out_dir);
            return Err(Error::io(&out_dir, e));
        }
        std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
    } else {
        if let Some(parent) = out_dir.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        std::fs::rename(&tmp, &out_dir).map_err(|e| Error::io(&out_dir, e))?;
    }
    Ok(())
}

/// What a GGUF file of `cfg`'s architecture cannot say, so that llama.cpp would compute
/// something else: `None` when it can say everything. llama.cpp fixes per architecture what
/// the header does not carry (the layer pattern, Gemma 3's local RoPE base, Gemma's query scale
/// `head_dim^-½`, the activation), so a config that differs there is refused by name.
pub fn gguf_unexpressible(cfg: &LmConfig) -> Option<String> {
    let family = cfg.export_family();
    let q = family.gguf_quirks();
    if family.llama_like() && cfg.sliding_window.is_some() {
        return Some("a sliding attention window in a Llama-architecture file".into());
    }
    let gguf_qpas = match q.hidden_per_head_scale_layers {
        Some(l) if l == cfg.num_layers => (cfg.hidden_size / cfg.num_heads) as f64,
        _ => cfg.head_dim as f64,
    };
    if let Some(s) = cfg.query_pre_attn_scalar.filter(|&s| s != gguf_qpas) {
        return Some(format!(
            "query_pre_attn_scalar {s} (llama.cpp's `{}` scales queries by {gguf_qpas}^-½ at {} layers)",
            family.model_type(),
            cfg.num_layers
        ));
    }
    if q.softcaps.0.is_some() && cfg.attn_softcap.is_none() || q.softcaps.1.is_some() && cfg.final_softcap.is_none() {
        return Some(format!("a `{}` model without soft caps (llama.cpp caps at 50 / 30 then)", family.model_type()));
    }
    if q.o_bias_unsupported && cfg.o_bias {
        return Some(format!("a bias on o_proj (llama.cpp's `{}` has none)", family.model_type()));
    }
    if cfg.sliding_window.is_some() && cfg.layer_types != q.pattern.layer_types(cfg.layer_types.len()) {
        return Some(format!(
            "this layer pattern of sliding windows (llama.cpp's `{}` files follow {:?})",
            family.model_type(),
            q.pattern
        ));
    }
    if cfg.rope_local_theta.is_some() && cfg.rope_local_theta != q.rope_local_theta {
        return Some(format!(
            "a local RoPE base of {:?} (llama.cpp uses {:?})",
            cfg.rope_local_theta, q.rope_local_theta
        ));
    }
    if cfg.hidden_act != q.act {
        return Some(format!("the {} activation in a `{}` file", cfg.hidden_act.hf_name(), family.model_type()));
    }
    match &cfg.rope_scaling {
        RopeScaling::Default | RopeScaling::Linear { .. } => None,
        RopeScaling::LongRope { .. } if family == crate::models::lm::Family::Phi3 => None,
        other => Some(format!("rope scaling {other:?}")),
    }
}

/// Writes `model` with `tokenizer` (and its chat template, when given, as
/// `tokenizer.chat_template`) as a GGUF file llama.cpp runs (`general.architecture`
/// `llama`, or `qwen2` for a model with q/k/v biases only), matrices stored as `ty`, norms and
/// biases F32; atomically (temporary file, fsync, rename). See [`distill_gguf::write_llama_gguf`].
///
/// Refused, before anything is written: a sliding window or Llama-3 rope scaling (llama.cpp's
/// `llama` graph would compute something else), or a tokenizer that is neither byte-level BPE
/// with a pre-tokenizer GGUF names nor SentencePiece-style BPE with byte fallback.
pub fn export_gguf(
    model: &CausalLm,
    tokenizer: &tokenizers::Tokenizer,
    chat_template: Option<&str>,
    name: &str,
    path: impl AsRef<Path>,
    ty: GgufType,
) -> Result<()> {
    let path = path.as_ref();
    let cfg = model.config();
    let refuse = |what: &str| Error::Invalid(format!("{}: GGUF export does not support {what}", path.display()));
    if let Some(what) = gguf_unexpressible(cfg) {
        return Err(refuse(&what));
    }
    let family = cfg.export_family();
    let architecture = family
        .gguf_arch()
        .filter(|a| distill_gguf::EXPORT_ARCHITECTURES.contains(a))
        .ok_or_else(|| refuse(&format!("the {} family", family.hf_class())))?;
    let untie = family.gguf_quirks().untied_head && cfg.tie_word_embeddings;
    let linear = match cfg.rope_scaling {
        RopeScaling::Linear { factor } => Some(factor as f32),
        _ => None,
    };
    let rope_factors = match &cfg.rope_scaling {
        RopeScaling::LongRope { short_factor, long_factor, .. } => {
            let f32s = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
            Some((f32s(long_factor), f32s(short_factor)))
        }
        _ => None,
    };
    let (rope_orig_ctx, rope_attn_factor) = match &cfg.rope_scaling {
        RopeScaling::LongRope { original_max_position_embeddings, attention_factor, .. } => {
            (Some(*original_max_position_embeddings as usize), Some(*attention_factor as f32))
        }
        _ => (None, None),
    };
    let id = |v: Option<i64>| v.and_then(|v| u32::try_from(v).ok());
    let params = distill_gguf::LlamaExportParams {
        model: distill_gguf::LlamaGgufParams {
            architecture: architecture.into(),
            block_count: cfg.num_layers as usize,
            embedding_length: cfg.hidden_size as usize,
            feed_forward_length: cfg.intermediate_size as usize,
            head_count: cfg.num_heads as usize,
            head_count_kv: cfg.num_kv_heads as usize,
            head_dim: cfg.head_dim as usize,
            rope_freq_base: cfg.rope_theta as f32,
            rms_norm_eps: cfg.rms_norm_eps as f32,
            context_length: cfg.max_position_embeddings as usize,
            vocab_size: cfg.vocab_size as usize,
            // llama.cpp's OLMo 2 graph needs its own `output.weight`: a copy of the embedding.
            tied_embeddings: cfg.tie_word_embeddings && !untie,
            rope_dim: cfg.rotary_dim as usize,
            sliding_window: cfg.sliding_window.map(|w| w as usize),
            sliding_window_pattern: None,
            attn_softcap: cfg.attn_softcap.map(|c| c as f32),
            final_softcap: cfg.final_softcap.map(|c| c as f32),
            rope_orig_ctx,
            rope_attn_factor,
            rope_freq_base_swa: cfg.rope_local_theta.map(|t| t as f32),
            rope_scaling_type: linear.map(|_| "linear".to_string()),
            rope_scaling_factor: linear,
        },
        name: name.into(),
        bos_token_id: id(cfg.bos_token_id),
        eos_token_id: id(cfg.eos_token_ids.first().copied()),
        pad_token_id: id(cfg.pad_token_id),
        chat_template: chat_template.map(str::to_string),
        rope_factors,
    };
    let tensors: Vec<(String, Vec<usize>, Vec<f32>)> = tch::no_grad(|| {
        model
            .checkpoint_tensors()
            .into_iter()
            .map(|(n, t)| {
                let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
                let flat = t.f_to_kind(Kind::Float)?.f_contiguous()?.f_view([-1])?.f_to_device(tch::Device::Cpu)?;
                let data = Vec::<f32>::try_from(&flat)?;
                Ok((n, shape, data))
            })
            .collect::<Result<_>>()
    })?;
    let mut tensors = tensors;
    if untie {
        if let Some((_, shape, data)) = tensors.iter().find(|(n, ..)| n == "model.embed_tokens.weight").cloned() {
            tensors.push(("lm_head.weight".into(), shape, data));
        }
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    distill_gguf::write_llama_gguf(path, &params, &tensors, tokenizer, ty).map_err(|e| Error::Invalid(e.to_string()))
}
