//! `Qwen2ForCausalLM`: q, k and v always carry a bias, o never does; per-layer sliding windows
//! (`use_sliding_window: true`) are refused.

use serde_json::{Map, Value};

use super::{Names, Quirks};
use crate::models::lm::family::Traits;
use crate::models::lm::hf::HfLmConfig;
use crate::models::lm::LmConfig;

pub const NAMES: Names =
    Names { hf_class: "Qwen2ForCausalLM", model_type: "qwen2", gguf_arch: Some("qwen2"), defaults: DEFAULTS };
/// The config class's defaults, where they differ from the resolver's own (Llama's).
const DEFAULTS: &str = "{}";
pub const TRAITS: Traits = Traits::LLAMA;
/// What a GGUF of this family holds (its header does not say; its biases are read off its
/// tensors).
pub const GGUF: Quirks = Quirks::LLAMA;

pub fn quirks(hf: &HfLmConfig) -> Result<Quirks, String> {
    if hf.use_sliding_window == Some(true) && hf.sliding_window.is_some() {
        return Err("Qwen2 `use_sliding_window: true` (per-layer windows) is not supported".into());
    }
    Ok(Quirks { qkv_bias: true, ..Quirks::LLAMA })
}

pub fn hf_keys(_: &LmConfig, m: &mut Map<String, Value>) {
    m.insert("use_sliding_window".into(), Value::Bool(false));
    m.insert("sliding_window".into(), Value::Null);
}
