//! `LlamaForCausalLM`: `attention_bias` applies to q, k, v and o; no window.

use serde_json::{json, Map, Value};

use super::{Names, Quirks};
use crate::models::lm::family::Traits;
use crate::models::lm::hf::HfLmConfig;
use crate::models::lm::LmConfig;

pub const NAMES: Names =
    Names { hf_class: "LlamaForCausalLM", model_type: "llama", gguf_arch: Some("llama"), defaults: DEFAULTS };
/// The config class's defaults, where they differ from the resolver's own (Llama's).
const DEFAULTS: &str = "{}";
pub const TRAITS: Traits = Traits::LLAMA;
/// What a GGUF of this family holds (its header does not say).
pub const GGUF: Quirks = Quirks::LLAMA;

pub fn quirks(hf: &HfLmConfig) -> Quirks {
    let bias = hf.attention_bias.unwrap_or(false);
    Quirks { qkv_bias: bias, o_bias: bias, ..Quirks::LLAMA }
}

pub fn hf_keys(cfg: &LmConfig, m: &mut Map<String, Value>) {
    m.insert("attention_bias".into(), json!(cfg.o_bias));
    m.insert("mlp_bias".into(), json!(cfg.mlp_bias));
}
