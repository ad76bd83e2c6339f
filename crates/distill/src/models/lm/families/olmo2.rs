//! `Olmo2ForCausalLM`: no norm before attention or MLP; an RMSNorm after each
//! (`post_attention_layernorm`, `post_feedforward_layernorm`) before the residual add, and RMSNorms
//! over the full query and key width (all heads together) before RoPE.

use serde_json::{json, Map, Value};

use super::{Names, Quirks};
use crate::models::lm::family::{Layout, QkNorm, Traits};
use crate::models::lm::hf::HfLmConfig;
use crate::models::lm::LmConfig;

pub const NAMES: Names =
    Names { hf_class: "Olmo2ForCausalLM", model_type: "olmo2", gguf_arch: Some("olmo2"), defaults: DEFAULTS };
/// Olmo2Config's defaults, where they differ from the resolver's own (Llama's).
const DEFAULTS: &str = r#"{"rms_norm_eps": 1e-5, "pad_token_id": 1, "eos_token_id": 50279}"#;
pub const TRAITS: Traits = Traits { qk_norm: QkNorm::Full, layout: Layout::Post, ..Traits::LLAMA };
/// What a GGUF of this family holds (its header does not say): llama.cpp's `olmo2` needs
/// `output.weight` (no tied head).
pub const GGUF: Quirks = Quirks { untied_head: true, ..Quirks::LLAMA };

pub fn quirks(hf: &HfLmConfig) -> Quirks {
    let bias = hf.attention_bias.unwrap_or(false);
    Quirks { qkv_bias: bias, o_bias: bias, ..Quirks::LLAMA }
}

pub fn hf_keys(cfg: &LmConfig, m: &mut Map<String, Value>) {
    m.insert("attention_bias".into(), json!(cfg.o_bias));
}
