//! `MistralForCausalLM`: Llama with an optional sliding window; `attention_bias` as Llama's.

use serde_json::{json, Map, Value};

use super::{Names, Quirks};
use crate::models::lm::family::Traits;
use crate::models::lm::hf::HfLmConfig;
use crate::models::lm::LmConfig;

pub const NAMES: Names =
    Names { hf_class: "MistralForCausalLM", model_type: "mistral", gguf_arch: Some("mistral"), defaults: DEFAULTS };
/// The config class's defaults, where they differ from the resolver's own (Llama's).
const DEFAULTS: &str = r#"{"sliding_window": 4096}"#;
pub const TRAITS: Traits = Traits::LLAMA;
/// What a GGUF of this family holds (its header does not say).
pub const GGUF: Quirks = Quirks::LLAMA;

pub fn quirks(hf: &HfLmConfig) -> Quirks {
    let bias = hf.attention_bias.unwrap_or(false);
    Quirks { qkv_bias: bias, o_bias: bias, sliding_window: hf.sliding_window, ..Quirks::LLAMA }
}

pub fn hf_keys(cfg: &LmConfig, m: &mut Map<String, Value>) {
    m.insert("sliding_window".into(), json!(cfg.sliding_window));
}
