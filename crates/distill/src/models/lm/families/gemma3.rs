//! `Gemma3ForCausalLM` (`gemma3_text`, the text model): Gemma 2's block with per-head q/k norms
//! (stored as `w − 1` too), five sliding layers with their own RoPE base (10k) to one full layer
//! (1M, possibly linearly scaled), no soft caps unless the config sets them.

use serde_json::{json, Map, Value};

use super::{Names, Pattern, Quirks};
use crate::models::lm::config::Activation;
use crate::models::lm::family::{Layout, QkNorm, Traits};
use crate::models::lm::hf::HfLmConfig;
use crate::models::lm::LmConfig;

pub const NAMES: Names =
    Names { hf_class: "Gemma3ForCausalLM", model_type: "gemma3_text", gguf_arch: Some("gemma3"), defaults: DEFAULTS };
/// Gemma3TextConfig's defaults, where they differ from the resolver's own (Llama's).
const DEFAULTS: &str = r#"{"head_dim": 256, "max_position_embeddings": 131072, "tie_word_embeddings": true,
    "query_pre_attn_scalar": 256, "sliding_window": 4096, "rope_theta": 1000000.0,
    "hidden_activation": "gelu_pytorch_tanh", "pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2}"#;
pub const TRAITS: Traits =
    Traits { norm_offset: 1.0, embed_scale: true, qk_norm: QkNorm::PerHead, layout: Layout::Sandwich, ..Traits::LLAMA };
/// What a GGUF of this family holds (its header does not say): llama.cpp's 5 : 1 pattern, the
/// local RoPE base when `rope.freq_base_swa` is absent, queries scaled by `(hidden/heads)^-½` in
/// the 62-layer model (27B), `head_dim^-½` otherwise.
pub const GGUF: Quirks = Quirks {
    pattern: Pattern::Every(6),
    act: Activation::GeluTanh,
    rope_local_theta: Some(10_000.0),
    hidden_per_head_scale_layers: Some(62),
    ..Quirks::LLAMA
};

pub fn quirks(hf: &HfLmConfig) -> Quirks {
    let bias = hf.attention_bias.unwrap_or(false);
    Quirks { qkv_bias: bias, o_bias: bias, sliding_window: hf.sliding_window, ..GGUF }
}

pub fn hf_keys(cfg: &LmConfig, m: &mut Map<String, Value>) {
    super::gemma2::gemma_keys(cfg, m);
    // One RoPE map per layer type: the full layers' (with any scaling), the sliding layers' base.
    let global = m.get("rope_parameters").cloned().unwrap_or(Value::Null);
    let local = json!({"rope_type": "default", "rope_theta": cfg.rope_local_theta.unwrap_or(cfg.rope_theta)});
    m.insert("rope_parameters".into(), json!({"full_attention": global, "sliding_attention": local}));
    m.insert("use_bidirectional_attention".into(), json!(false));
}
