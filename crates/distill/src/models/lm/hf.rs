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
//! `rope_parameters: {rope_theta, rope_type, …}`, or one such map per layer type
//! (`full_attention`, `sliding_attention`: Gemma 3). RoPE types `default`, `llama3`, `linear`
//! and `longrope` are implemented; any other (`dynamic`, `yarn`, …) is rejected at load time.
//!
//! transformers' `save_pretrained` writes only the keys that differ from the config class's
//! defaults, and those differ per family (Gemma's `tie_word_embeddings` is true, Qwen3's
//! `head_dim` 128): each family's `DEFAULTS` fill the keys its file leaves out before parsing.

use std::path::Path;

use serde::Deserialize;

use super::families::{Pattern, Quirks};
use super::{Activation, Family, LayerAttention, LmConfig, RopeScaling};
use crate::{Error, Result};

/// More layers than any causal LM has (the largest have a few hundred): a config beyond it is
/// refused before per-layer settings are built for it.
pub const MAX_LAYERS: i64 = 1 << 16;

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
    pub short_factor: Option<Vec<f64>>,
    pub long_factor: Option<Vec<f64>>,
    pub attention_factor: Option<f64>,
}

/// The keys that name a checkpoint's family.
#[derive(Debug, Clone, Deserialize)]
struct FamilyKeys {
    architectures: Option<Vec<String>>,
    model_type: Option<String>,
}

impl FamilyKeys {
    fn family(&self) -> std::result::Result<Family, String> {
        let name = self
            .architectures
            .as_ref()
            .and_then(|a| a.first().cloned())
            .or_else(|| self.model_type.clone())
            .ok_or("neither `architectures` nor `model_type` is set")?;
        Family::from_hf_name(&name)
            .ok_or_else(|| format!("unsupported architecture `{name}` (supported: {})", Family::supported_hf_classes()))
    }
}

/// A RoPE parameter map, or `None` for JSON null.
fn rope_map(v: &serde_json::Value) -> std::result::Result<Option<HfRopeParameters>, String> {
    if v.is_null() {
        return Ok(None);
    }
    serde_json::from_value(v.clone()).map(Some).map_err(|e| format!("invalid `rope_parameters`: {e}"))
}

/// The RoPE scaling of one parameter map (`head_dim`-relative sizes already resolved).
fn rope_scaling(
    params: &HfRopeParameters,
    max_position_embeddings: Option<i64>,
    top_original_max: Option<i64>,
) -> std::result::Result<RopeScaling, String> {
    let rope_type = params.rope_type.clone().or(params.type_.clone()).unwrap_or_else(|| "default".into());
    let need = |v: Option<f64>, name: &str| {
        v.ok_or_else(|| format!("rope_type {rope_type:?} needs `{name}` in `rope_parameters`"))
    };
    Ok(match rope_type.as_str() {
        "default" => RopeScaling::Default,
        "llama3" => RopeScaling::Llama3 {
            factor: need(params.factor, "factor")?,
            low_freq_factor: need(params.low_freq_factor, "low_freq_factor")?,
            high_freq_factor: need(params.high_freq_factor, "high_freq_factor")?,
            original_max_position_embeddings: params
                .original_max_position_embeddings
                .or(max_position_embeddings)
                .ok_or("rope_type \"llama3\" needs `original_max_position_embeddings`")?,
        },
        "linear" => RopeScaling::Linear { factor: need(params.factor, "factor")? },
        "longrope" => {
            let original = top_original_max
                .or(params.original_max_position_embeddings)
                .or(max_position_embeddings)
                .ok_or("rope_type \"longrope\" needs `original_max_position_embeddings`")?;
            let factor = match params.factor {
                Some(f) => f,
                None => max_position_embeddings.unwrap_or(original) as f64 / original as f64,
            };
            let attention_factor = match params.attention_factor {
                Some(a) => a,
                None if factor <= 1.0 => 1.0,
                None => (1.0 + factor.ln() / (original as f64).ln()).sqrt(),
            };
            let list = |v: &Option<Vec<f64>>, name: &str| {
                v.clone().ok_or_else(|| format!("rope_type \"longrope\" needs `{name}` in `rope_parameters`"))
            };
            RopeScaling::LongRope {
                short_factor: list(&params.short_factor, "short_factor")?,
                long_factor: list(&params.long_factor, "long_factor")?,
                original_max_position_embeddings: original,
                attention_factor,
            }
        }
        other => {
            return Err(format!(
                "rope_type {other:?} is not supported (supported: \"default\", \"llama3\", \"linear\", \"longrope\")"
            ))
        }
    })
}

/// `config.json` of a causal-LM checkpoint, field names as in the file.
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
    /// Gemma's spelling of `hidden_act`.
    pub hidden_activation: Option<String>,
    pub rms_norm_eps: Option<f64>,
    pub rope_theta: Option<f64>,
    /// One [`HfRopeParameters`] map, or one per layer type.
    pub rope_parameters: Option<serde_json::Value>,
    pub rope_scaling: Option<HfRopeParameters>,
    /// Top level in Phi-3 configs (inside `rope_parameters` elsewhere).
    pub partial_rotary_factor: Option<f64>,
    /// Top level in Phi-3 configs; wins over the one in `rope_parameters`, as in transformers.
    pub original_max_position_embeddings: Option<i64>,
    /// transformers 4 spelling of Gemma 3's local RoPE base.
    pub rope_local_base_freq: Option<f64>,
    pub max_position_embeddings: Option<i64>,
    pub tie_word_embeddings: Option<bool>,
    pub attention_bias: Option<bool>,
    pub attention_dropout: Option<f64>,
    pub mlp_bias: Option<bool>,
    pub sliding_window: Option<i64>,
    pub use_sliding_window: Option<bool>,
    /// `full_attention` / `sliding_attention` per layer (transformers 5).
    pub layer_types: Option<Vec<String>>,
    /// Gemma 3 before `layer_types`: every this-many-th layer is full.
    pub sliding_window_pattern: Option<i64>,
    pub query_pre_attn_scalar: Option<f64>,
    pub attn_logit_softcapping: Option<f64>,
    pub final_logit_softcapping: Option<f64>,
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

    /// Parses config.json bytes, the keys the file leaves out filled with its family's class
    /// defaults; the error is the message without a path.
    pub fn from_slice(bytes: &[u8]) -> std::result::Result<Self, String> {
        let mut v: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| format!("invalid config.json: {e}"))?;
        let family = serde_json::from_value::<FamilyKeys>(v.clone())
            .map_err(|e| format!("invalid config.json: {e}"))?
            .family()?;
        if let (serde_json::Value::Object(m), serde_json::Value::Object(d)) = (&mut v, family.hf_defaults()) {
            for (k, dv) in d {
                m.entry(k).or_insert(dv);
            }
        }
        serde_json::from_value(v).map_err(|e| format!("invalid config.json: {e}"))
    }

    /// The family named by `architectures[0]` (or `model_type` if absent).
    pub fn family(&self) -> std::result::Result<Family, String> {
        FamilyKeys { architectures: self.architectures.clone(), model_type: self.model_type.clone() }.family()
    }

    /// Resolves defaults (those of the transformers classes) and validates. `path` only labels
    /// errors.
    pub fn into_config(self, path: impl AsRef<Path>) -> Result<LmConfig> {
        let path = path.as_ref();
        self.resolve().map_err(|msg| Error::format(path, msg))
    }

    fn resolve(self) -> std::result::Result<LmConfig, String> {
        let family = self.family()?;
        if !(1..=MAX_LAYERS).contains(&self.num_hidden_layers) {
            return Err(format!("`num_hidden_layers` {} is outside 1..={MAX_LAYERS}", self.num_hidden_layers));
        }
        let quirks = family.quirks(&self)?;
        let hidden_act = match self.hidden_activation.as_ref().or(self.hidden_act.as_ref()) {
            Some(name) => Activation::from_hf(name)
                .ok_or_else(|| format!("`hidden_act` = {name:?} is not supported (\"silu\", \"gelu_pytorch_tanh\")"))?,
            None => quirks.act,
        };
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

        // RoPE: transformers 5 `rope_parameters` wins over transformers 4 `rope_theta`/`rope_scaling`;
        // a map per layer type gives the sliding layers their own base (Gemma 3).
        let (global, local) = match &self.rope_parameters {
            Some(v) if v.get("full_attention").is_some() || v.get("sliding_attention").is_some() => (
                rope_map(v.get("full_attention").unwrap_or(&serde_json::Value::Null))?,
                rope_map(v.get("sliding_attention").unwrap_or(&serde_json::Value::Null))?,
            ),
            Some(v) => (rope_map(v)?, None),
            None => (None, None),
        };
        let params = global.or_else(|| self.rope_scaling.clone()).unwrap_or_default();
        let rope_theta = params.rope_theta.or(self.rope_theta).unwrap_or(10_000.0);
        let rope_local_theta = match &local {
            Some(l) => {
                if !matches!(rope_scaling(l, None, None)?, RopeScaling::Default) {
                    return Err("rope scaling of the sliding layers is not supported".into());
                }
                Some(l.rope_theta.unwrap_or(rope_theta))
            }
            None => self.rope_local_base_freq.or(quirks.rope_local_theta),
        };
        let partial = params.partial_rotary_factor.or(self.partial_rotary_factor).unwrap_or(1.0);
        let rotary_dim = (head_dim as f64 * partial) as i64;
        let rope_scaling = rope_scaling(&params, self.max_position_embeddings, self.original_max_position_embeddings)?;

        let Quirks { qkv_bias, o_bias, sliding_window, pattern, .. } = quirks;
        let layer_types = match (&self.layer_types, sliding_window) {
            (_, None) => vec![LayerAttention::Full; self.num_hidden_layers as usize],
            (Some(types), Some(_)) => types
                .iter()
                .map(|t| match t.as_str() {
                    "full_attention" => Ok(LayerAttention::Full),
                    "sliding_attention" => Ok(LayerAttention::Sliding),
                    other => Err(format!("`layer_types` entry {other:?} is not supported")),
                })
                .collect::<std::result::Result<_, _>>()?,
            (None, Some(_)) => {
                let every = self.sliding_window_pattern.map(|p| Pattern::Every(p.max(1) as usize)).unwrap_or(pattern);
                every.layer_types(self.num_hidden_layers as usize)
            }
        };
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
            layer_types,
            rope_local_theta,
            rotary_dim,
            query_pre_attn_scalar: self.query_pre_attn_scalar,
            attn_softcap: self.attn_logit_softcapping,
            final_softcap: self.final_logit_softcapping,
            hidden_act,
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
