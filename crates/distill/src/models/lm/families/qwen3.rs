//! `Qwen3ForCausalLM`: Llama with a per-head RMSNorm on queries and keys (before RoPE);
//! `attention_bias` applies to q, k, v and o; sliding windows only with `use_sliding_window`.

use serde_json::{json, Map, Value};

use super::{Names, Quirks};
use crate::models::lm::family::{QkNorm, Traits};
use crate::models::lm::hf::HfLmConfig;
use crate::models::lm::LmConfig;

pub const NAMES: Names =
    Names { hf_class: "Qwen3ForCausalLM", model_type: "qwen3", gguf_arch: Some("qwen3"), defaults: DEFAULTS };
/// Qwen3Config's defaults, where they differ from the resolver's own (Llama's).
const DEFAULTS: &str = r#"{"head_dim": 128, "max_position_embeddings": 32768}"#;
pub const TRAITS: Traits = Traits { qk_norm: QkNorm::PerHead, ..Traits::LLAMA };
/// What a GGUF of this family holds (its header does not say): llama.cpp's `qwen3` has no
/// `attn_output.bias`.
pub const GGUF: Quirks = Quirks { o_bias_unsupported: true, ..Quirks::LLAMA };

pub fn quirks(hf: &HfLmConfig) -> Quirks {
    let bias = hf.attention_bias.unwrap_or(false);
    let window = if hf.use_sliding_window == Some(true) { hf.sliding_window } else { None };
    Quirks { qkv_bias: bias, o_bias: bias, sliding_window: window, ..Quirks::LLAMA }
}

pub fn hf_keys(cfg: &LmConfig, m: &mut Map<String, Value>) {
    m.insert("attention_bias".into(), json!(cfg.o_bias));
    m.insert("use_sliding_window".into(), json!(cfg.sliding_window.is_some()));
    m.insert("sliding_window".into(), json!(cfg.sliding_window));
    let types: Vec<&str> = cfg.layer_types.iter().map(|t| t.hf_name()).collect();
    m.insert("layer_types".into(), json!(types));
    // transformers derives `layer_types` from this when the list is absent; with the list given
    // it only has to be consistent: every layer may slide.
    m.insert("max_window_layers".into(), json!(0));
}
