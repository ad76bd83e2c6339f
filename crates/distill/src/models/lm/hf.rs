//! Hugging Face `config.json` for the Llama family (`LlamaForCausalLM`, `Qwen2ForCausalLM`,
//! `MistralForCausalLM`).
//!
//! [`HfLmConfig`] mirrors the file: its fields keep the checkpoint's names, optional fields stay
//! optional, and nothing is interpreted. [`HfLmConfig::into_config`] resolves defaults and the
//! family's quirks (`families/`) into the runtime [`LmConfig`] that the model is built from, and
//! [`LmConfig::to_hf_json`] writes a file that transformers loads back.
//!
//! Both spellings of the RoPE base are accepted: transformers 4 writes a top-level `rope_theta`
//! (and `rope_scaling` for Llama 3), transformers 5 writes
//! `rope_parameters: {rope_theta, rope_type, …}`. RoPE types `default` and `llama3` are
//! implemented; any other (`linear`, `dynamic`, `yarn`, `longrope`, …) is rejected at load time.

use std::path::Path;

use serde::Deserialize;

use super::families::Quirks;
use super::{Family, LmConfig, RopeScaling};
use crate::{Error, Result};

/// An integer or a list of integers (`eos_token_id` may be either).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(i64),
    Many(Vec<i64>),
}

impl OneOrMany {
    /// The ids as a list.
    pub fn to_vec(&self) -> Vec<i64> {
        match self {
            OneOrMany::One(x) => vec![*x],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// RoPE parameters as written by transformers 5 (`rope_parameters`) or 4 (`rope_scaling`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct HfRopeParameters {
    pub rope_type: Option<String>,
    /// transformers 4 spelling of `rope_type`.
    #[serde(rename = "type")]
    pub type_: Option<String>,
    pub rope_theta: Option<f64>,
    pub factor: Option<f64>,
    pub low_freq_factor: Option<f64>,
    pub high_freq_factor: Option<f64>,
    pub original_max_position_embeddings: Option<i64>,
    pub partial_rotary_factor: Option<f64>,
}

/// `config.json` of a Llama-family checkpoint, field names as in the file.
///
/// Unknown keys are ignored (HF configs carry many that do not affect the forward pass).
#[derive(Debug, Clone, Deserialize)]
pub struct HfLmConfig {
    pub architectures: Option<Vec<String>>,
    pub model_type: Option<String>,
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub num_key_value_heads: Option<i64>,
    pub head_dim: Option<i64>,
    pub hidden_act: Option<String>,
    pub rms_norm_eps: Option<f64>,
    pub rope_theta: Option<f64>,
    pub rope_parameters: Option<HfRopeParameters>,
    pub rope_scaling: Option<HfRopeParameters>,
    pub max_position_embeddings: Option<i64>,
    pub tie_word_embeddings: Option<bool>,
    pub attention_bias: Option<bool>,
    pub attention_dropout: Option<f64>,
    pub mlp_bias: Option<bool>,
    pub sliding_window: Option<i64>,
    pub use_sliding_window: Option<bool>,
    pub bos_token_id: Option<OneOrMany>,
    pub eos_token_id: Option<OneOrMany>,
    pub pad_token_id: Option<OneOrMany>,
    pub torch_dtype: Option<String>,
    pub dtype: Option<String>,
    pub initializer_range: Option<f64>,
}

impl HfLmConfig {
    /// Reads and parses `path`. A missing required field is reported with the file and field
    /// name (serde: "missing field `hidden_size`").
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_slice(&bytes).map_err(|msg| Error::format(path, msg))
    }

    /// Parses config.json bytes; the error is the message without a path.
    pub fn from_slice(bytes: &[u8]) -> std::result::Result<Self, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("invalid config.json: {e}"))
    }

    /// The family named by `architectures[0]` (or `model_type` if absent).
    pub fn family(&self) -> std::result::Result<Family, String> {
        let name = self
            .architectures
            .as_ref()
            .and_then(|a| a.first().cloned())
            .or_else(|| self.model_type.clone())
            .ok_or("neither `architectures` nor `model_type` is set")?;
        Family::from_hf_name(&name)
            .ok_or_else(|| format!("unsupported architecture `{name}` (supported: {})", Family::supported_hf_classes()))
    }

    /// Resolves defaults (those of the transformers classes) and validates. `path` only labels
    /// errors.
    pub fn into_config(self, path: impl AsRef<Path>) -> Result<LmConfig> {
        let path = path.as_ref();
        self.resolve().map_err(|msg| Error::format(path, msg))
    }

    fn resolve(self) -> std::result::Result<LmConfig, String> {
        let family = self.family()?;
        if let Some(act) = &self.hidden_act {
            if act != "silu" && act != "swish" {
                return Err(format!("`hidden_act` = {act:?} is not supported (only \"silu\")"));
            }
        }
        for (field, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
        ] {
            if v <= 0 {
                return Err(format!("`{field}` must be positive, got {v}"));
            }
        }
        let num_kv_heads = self.num_key_value_heads.unwrap_or(self.num_attention_heads);
        let head_dim = match self.head_dim {
            Some(d) => d,
            None => {
                if self.hidden_size % self.num_attention_heads != 0 {
                    return Err(format!(
                        "`hidden_size` {} is not divisible by `num_attention_heads` {} and `head_dim` is not set",
                        self.hidden_size, self.num_attention_heads
                    ));
                }
                self.hidden_size / self.num_attention_heads
            }
        };

        // RoPE: transformers 5 `rope_parameters` wins over transformers 4 `rope_theta`/`rope_scaling`.
        let params = self.rope_parameters.clone().or_else(|| self.rope_scaling.clone()).unwrap_or_default();
        let rope_theta = params.rope_theta.or(self.rope_theta).unwrap_or(10_000.0);
        if let Some(f) = params.partial_rotary_factor {
            if f != 1.0 {
                return Err(format!("`partial_rotary_factor` = {f} is not supported (only 1.0)"));
            }
        }
        let rope_type = params.rope_type.clone().or(params.type_.clone()).unwrap_or_else(|| "default".into());
        let rope_scaling = match rope_type.as_str() {
            "default" => RopeScaling::Default,
            "llama3" => {
                let need = |v: Option<f64>, name: &str| {
                    v.ok_or_else(|| format!("rope_type \"llama3\" needs `{name}` in `rope_parameters`"))
                };
                RopeScaling::Llama3 {
                    factor: need(params.factor, "factor")?,
                    low_freq_factor: need(params.low_freq_factor, "low_freq_factor")?,
                    high_freq_factor: need(params.high_freq_factor, "high_freq_factor")?,
                    original_max_position_embeddings: params
                        .original_max_position_embeddings
                        .or(self.max_position_embeddings)
                        .ok_or("rope_type \"llama3\" needs `original_max_position_embeddings`")?,
                }
            }
            other => return Err(format!("rope_type {other:?} is not supported (supported: \"default\", \"llama3\")")),
        };

        let Quirks { qkv_bias, o_bias, sliding_window } = family.quirks(&self)?;
        if let Some(w) = sliding_window {
            if w <= 0 {
                return Err(format!("`sliding_window` must be positive, got {w}"));
            }
        }
        let cfg = LmConfig {
            family,
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_layers: self.num_hidden_layers,
            num_heads: self.num_attention_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: self.rms_norm_eps.unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            max_position_embeddings: self.max_position_embeddings.unwrap_or(2048),
            tie_word_embeddings: self.tie_word_embeddings.unwrap_or(false),
            qkv_bias,
            o_bias,
            mlp_bias: self.mlp_bias.unwrap_or(false),
            sliding_window,
            attention_dropout: self.attention_dropout.unwrap_or(0.0),
            initializer_range: self.initializer_range.unwrap_or(0.02),
            bos_token_id: self.bos_token_id.and_then(|b| b.to_vec().first().copied()),
            eos_token_ids: self.eos_token_id.map(|e| e.to_vec()).unwrap_or_default(),
            pad_token_id: self.pad_token_id.and_then(|b| b.to_vec().first().copied()),
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    fn base() -> Value {
        json!({"architectures": ["LlamaForCausalLM"], "vocab_size": 96, "hidden_size": 32,
               "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4})
    }

    fn parse(v: Value) -> std::result::Result<LmConfig, String> {
        HfLmConfig::from_slice(v.to_string().as_bytes())?.resolve()
    }

    #[test]
    fn defaults_match_transformers_classes() {
        let c = parse(base()).unwrap();
        assert_eq!((c.num_kv_heads, c.head_dim, c.rope_theta), (4, 8, 10_000.0));
        assert!(!c.tie_word_embeddings && !c.qkv_bias && c.sliding_window.is_none());
    }

    #[test]
    fn rope_parameters_override_and_reject_unknown_types() {
        let mut v = base();
        v["rope_theta"] = json!(5.0);
        v["rope_parameters"] = json!({"rope_theta": 100000.0, "rope_type": "default"});
        assert_eq!(parse(v.clone()).unwrap().rope_theta, 100000.0);
        v["rope_parameters"] = json!({"rope_theta": 1.0, "rope_type": "yarn", "factor": 4.0});
        assert!(parse(v).unwrap_err().contains("yarn"));
    }

    #[test]
    fn qwen2_biases_and_eos_list() {
        let mut v = base();
        v["architectures"] = json!(["Qwen2ForCausalLM"]);
        v["eos_token_id"] = json!([3, 4]);
        v["sliding_window"] = Value::Null;
        let c = parse(v).unwrap();
        assert!(c.qkv_bias && !c.o_bias);
        assert_eq!(c.eos_token_ids, vec![3, 4]);
        assert_eq!(c.export_family(), Family::Qwen2);
    }

    #[test]
    fn missing_field_is_named() {
        let mut v = base();
        v.as_object_mut().unwrap().remove("hidden_size");
        assert!(parse(v).unwrap_err().contains("hidden_size"));
    }
}
