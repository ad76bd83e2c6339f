//! `Phi3ForCausalLM` (Phi-3, Phi-3.5-mini, Phi-4-mini): checkpoints store `self_attn.qkv_proj`
//! (q, k, v rows stacked) and `mlp.gate_up_proj` (gate rows, then up rows) fused — the model
//! holds them split, loading splits and export fuses —, LongRoPE scaling, a partial rotary
//! dimension (Phi-4-mini: ¾ of each head), an optional window on every layer.

use serde_json::{json, Map, Value};

use super::{Names, Quirks};
use crate::models::lm::family::Traits;
use crate::models::lm::hf::HfLmConfig;
use crate::models::lm::LmConfig;

pub const NAMES: Names =
    Names { hf_class: "Phi3ForCausalLM", model_type: "phi3", gguf_arch: Some("phi3"), defaults: DEFAULTS };
/// Phi3Config's defaults, where they differ from the resolver's own (Llama's).
const DEFAULTS: &str = r#"{"rms_norm_eps": 1e-5, "max_position_embeddings": 4096,
    "bos_token_id": 1, "eos_token_id": 32000, "pad_token_id": 32000}"#;
pub const TRAITS: Traits = Traits { fused: true, ..Traits::LLAMA };
/// What a GGUF of this family holds (its header does not say).
pub const GGUF: Quirks = Quirks::LLAMA;

pub fn quirks(hf: &HfLmConfig) -> Quirks {
    Quirks { sliding_window: hf.sliding_window, ..Quirks::LLAMA }
}

pub fn hf_keys(cfg: &LmConfig, m: &mut Map<String, Value>) {
    m.insert("sliding_window".into(), json!(cfg.sliding_window));
    if let crate::models::lm::RopeScaling::LongRope { original_max_position_embeddings, .. } = &cfg.rope_scaling {
        m.insert("original_max_position_embeddings".into(), json!(original_max_position_embeddings));
    }
    // transformers reads it from `rope_parameters` and from the top level.
    if let Some(p) = m.get("rope_parameters").and_then(|r| r.get("partial_rotary_factor")).cloned() {
        m.insert("partial_rotary_factor".into(), p);
    }
}
