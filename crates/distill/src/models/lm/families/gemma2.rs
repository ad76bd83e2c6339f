//! `Gemma2ForCausalLM`: GeGLU MLP, RMSNorm gains stored as `w − 1`, norms before and after both
//! attention and MLP, embeddings scaled by √hidden, queries by `query_pre_attn_scalar^-½`,
//! alternating sliding (even) and full (odd) layers, attention scores and final logits
//! soft-capped.

use serde_json::{json, Map, Value};

use super::{Names, Pattern, Quirks};
use crate::models::lm::config::Activation;
use crate::models::lm::family::{Layout, Traits};
use crate::models::lm::hf::HfLmConfig;
use crate::models::lm::LmConfig;

pub const NAMES: Names =
    Names { hf_class: "Gemma2ForCausalLM", model_type: "gemma2", gguf_arch: Some("gemma2"), defaults: DEFAULTS };
/// Gemma2Config's defaults, where they differ from the resolver's own (Llama's).
const DEFAULTS: &str = r#"{"head_dim": 256, "max_position_embeddings": 8192, "tie_word_embeddings": true,
    "query_pre_attn_scalar": 256, "sliding_window": 4096, "final_logit_softcapping": 30.0,
    "attn_logit_softcapping": 50.0, "hidden_activation": "gelu_pytorch_tanh",
    "pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2}"#;
pub const TRAITS: Traits = Traits { norm_offset: 1.0, embed_scale: true, layout: Layout::Sandwich, ..Traits::LLAMA };
/// What a GGUF of this family holds (its header does not say): llama.cpp alternates the window
/// from layer 0, caps at 50 / 30 when the keys are absent, and scales queries by
/// `(hidden/heads)^-½` in the 46-layer model (27B), `head_dim^-½` otherwise.
pub const GGUF: Quirks = Quirks {
    pattern: Pattern::Every(2),
    act: Activation::GeluTanh,
    softcaps: (Some(50.0), Some(30.0)),
    hidden_per_head_scale_layers: Some(46),
    ..Quirks::LLAMA
};

pub fn quirks(hf: &HfLmConfig) -> Quirks {
    let bias = hf.attention_bias.unwrap_or(false);
    Quirks { qkv_bias: bias, o_bias: bias, sliding_window: hf.sliding_window, softcaps: (None, None), ..GGUF }
}

pub fn hf_keys(cfg: &LmConfig, m: &mut Map<String, Value>) {
    gemma_keys(cfg, m);
}

/// The keys Gemma 2 and 3 share.
pub fn gemma_keys(cfg: &LmConfig, m: &mut Map<String, Value>) {
    m.insert("hidden_activation".into(), json!(cfg.hidden_act.hf_name()));
    m.insert("attention_bias".into(), json!(cfg.o_bias));
    // transformers' config class wants an integer.
    let qpas = cfg.query_pre_attn_scalar.unwrap_or(cfg.head_dim as f64);
    m.insert("query_pre_attn_scalar".into(), if qpas.fract() == 0.0 { json!(qpas as i64) } else { json!(qpas) });
    m.insert("sliding_window".into(), json!(cfg.sliding_window));
    m.insert("attn_logit_softcapping".into(), json!(cfg.attn_softcap));
    m.insert("final_logit_softcapping".into(), json!(cfg.final_softcap));
    let types: Vec<&str> = cfg.layer_types.iter().map(|t| t.hf_name()).collect();
    m.insert("layer_types".into(), json!(types));
}
