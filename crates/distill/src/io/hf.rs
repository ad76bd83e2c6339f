//! Hugging Face `config.json` for the Llama family (`LlamaForCausalLM`, `Qwen2ForCausalLM`,
//! `MistralForCausalLM`).
//!
//! [`HfLlamaConfig`] mirrors the file: its fields keep the checkpoint's names, optional fields stay
//! optional, and nothing is interpreted. [`HfLlamaConfig::into_config`] resolves defaults and
//! architecture quirks into the runtime [`LlamaConfig`] that the model is built from, and
//! [`LlamaConfig::to_hf_json`] writes a file that transformers loads back.
//!
//! Both spellings of the RoPE base are accepted: transformers 4 writes a top-level `rope_theta`
//! (and `rope_scaling` for Llama 3), transformers 5 writes
//! `rope_parameters: {rope_theta, rope_type, …}`. RoPE types `default` and `llama3` are
//! implemented; any other (`linear`, `dynamic`, `yarn`, `longrope`, …) is rejected at load time.

use std::path::Path;

use serde::Deserialize;
use serde_json::{json, Map, Value};

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
pub struct HfLlamaConfig {
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

/// Which HF class a checkpoint belongs to. It decides the defaults and the bias layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// `LlamaForCausalLM`: `attention_bias` applies to q, k, v and o.
    Llama,
    /// `Qwen2ForCausalLM`: q, k and v always carry a bias, o never does.
    Qwen2,
    /// `MistralForCausalLM`: Llama with an optional sliding window.
    Mistral,
}

impl Arch {
    /// The `architectures[0]` string.
    pub fn hf_class(self) -> &'static str {
        match self {
            Arch::Llama => "LlamaForCausalLM",
            Arch::Qwen2 => "Qwen2ForCausalLM",
            Arch::Mistral => "MistralForCausalLM",
        }
    }
    /// The `model_type` string.
    pub fn model_type(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Mistral => "mistral",
        }
    }
}

/// How rotary frequencies are derived from `rope_theta`.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// `inv_freq[i] = theta^(-2i/d)`.
    Default,
    /// Llama 3.1 frequency smoothing (`rope_type: "llama3"`).
    Llama3 { factor: f64, low_freq_factor: f64, high_freq_factor: f64, original_max_position_embeddings: i64 },
}

/// The runtime configuration the model is built from: every default resolved, every field valid.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub arch: Arch,
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_layers: i64,
    pub num_heads: i64,
    pub num_kv_heads: i64,
    pub head_dim: i64,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    pub max_position_embeddings: i64,
    pub tie_word_embeddings: bool,
    /// Bias on q_proj, k_proj and v_proj.
    pub qkv_bias: bool,
    /// Bias on o_proj.
    pub o_bias: bool,
    /// Bias on gate_proj, up_proj and down_proj.
    pub mlp_bias: bool,
    /// Keys further back than this many positions are masked (Mistral); `None` = full causal.
    pub sliding_window: Option<i64>,
    /// Dropout on attention probabilities, applied only when training.
    pub attention_dropout: f64,
    /// Standard deviation of the normal init of linear and embedding weights.
    pub initializer_range: f64,
    pub bos_token_id: Option<i64>,
    pub eos_token_ids: Vec<i64>,
    pub pad_token_id: Option<i64>,
}

impl HfLlamaConfig {
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

    /// The architecture named by `architectures[0]` (or `model_type` if absent).
    pub fn arch(&self) -> std::result::Result<Arch, String> {
        let name = self
            .architectures
            .as_ref()
            .and_then(|a| a.first().cloned())
            .or_else(|| self.model_type.clone())
            .ok_or("neither `architectures` nor `model_type` is set")?;
        match name.as_str() {
            "LlamaForCausalLM" | "llama" => Ok(Arch::Llama),
            "Qwen2ForCausalLM" | "qwen2" => Ok(Arch::Qwen2),
            "MistralForCausalLM" | "mistral" => Ok(Arch::Mistral),
            other => Err(format!(
                "unsupported architecture `{other}` (supported: LlamaForCausalLM, Qwen2ForCausalLM, MistralForCausalLM)"
            )),
        }
    }

    /// Resolves defaults (those of the transformers classes) and validates. `path` only labels
    /// errors.
    pub fn into_config(self, path: impl AsRef<Path>) -> Result<LlamaConfig> {
        let path = path.as_ref();
        self.resolve().map_err(|msg| Error::format(path, msg))
    }

    fn resolve(self) -> std::result::Result<LlamaConfig, String> {
        let arch = self.arch()?;
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

        let attention_bias = self.attention_bias.unwrap_or(false);
        let (qkv_bias, o_bias) = match arch {
            Arch::Qwen2 => (true, false),
            Arch::Llama | Arch::Mistral => (attention_bias, attention_bias),
        };
        let sliding_window = match arch {
            Arch::Mistral => self.sliding_window,
            Arch::Qwen2 => {
                if self.use_sliding_window == Some(true) && self.sliding_window.is_some() {
                    return Err("Qwen2 `use_sliding_window: true` (per-layer windows) is not supported".into());
                }
                None
            }
            Arch::Llama => None,
        };
        if let Some(w) = sliding_window {
            if w <= 0 {
                return Err(format!("`sliding_window` must be positive, got {w}"));
            }
        }
        let cfg = LlamaConfig {
            arch,
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

impl LlamaConfig {
    /// Reads `config.json` (a file, or a directory that holds one) into a validated config.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let mut path = path.as_ref().to_path_buf();
        if path.is_dir() {
            path = path.join("config.json");
        }
        HfLlamaConfig::from_file(&path)?.into_config(&path)
    }

    /// Parameters the model has (a tied head counted once); None when the count overflows.
    pub fn param_count(&self) -> Option<u64> {
        let u = |v: i64| u64::try_from(v).ok();
        let (v, h, i, l) = (u(self.vocab_size)?, u(self.hidden_size)?, u(self.intermediate_size)?, u(self.num_layers)?);
        let (q, kv) =
            (u(self.num_heads)?.checked_mul(u(self.head_dim)?)?, u(self.num_kv_heads)?.checked_mul(u(self.head_dim)?)?);
        let attn = h.checked_mul(q.checked_mul(2)?.checked_add(kv.checked_mul(2)?)?)?;
        let mlp = h.checked_mul(i)?.checked_mul(3)?;
        let layer = attn.checked_add(mlp)?.checked_add(h.checked_mul(2)?)?;
        let embed = v.checked_mul(h)?.checked_mul(if self.tie_word_embeddings { 1 } else { 2 })?;
        l.checked_mul(layer)?.checked_add(embed)?.checked_add(h)
    }

    /// Checks that the weights `config` describes fit in the `held` elements its weight files
    /// hold, before anything is allocated for them: a config (or GGUF header) that claims a
    /// larger model than its files is refused instead of allocating without bound.
    pub fn check_fits(&self, held: u64) -> std::result::Result<(), String> {
        match self.param_count() {
            Some(n) if n <= held => Ok(()),
            Some(n) => {
                Err(format!("describes a model of {n} parameters, but its weight files hold at most {held} values"))
            }
            None => Err("describes a model whose parameter count overflows".into()),
        }
    }

    /// Checks the invariants the model relies on.
    pub fn validate(&self) -> std::result::Result<(), String> {
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_layers),
            ("num_attention_heads", self.num_heads),
        ] {
            if v <= 0 {
                return Err(format!("`{name}` must be positive, got {v}"));
            }
        }
        if self.num_kv_heads <= 0 || self.num_heads % self.num_kv_heads != 0 {
            return Err(format!(
                "`num_attention_heads` {} is not a multiple of `num_key_value_heads` {}",
                self.num_heads, self.num_kv_heads
            ));
        }
        if self.head_dim <= 0 || self.head_dim % 2 != 0 {
            return Err(format!("`head_dim` must be positive and even for RoPE, got {}", self.head_dim));
        }
        if self.rms_norm_eps.is_nan() || self.rms_norm_eps <= 0.0 || self.rope_theta.is_nan() || self.rope_theta <= 0.0
        {
            return Err("`rms_norm_eps` and `rope_theta` must be positive".into());
        }
        if !(0.0..1.0).contains(&self.attention_dropout) {
            return Err(format!("`attention_dropout` must be in [0, 1), got {}", self.attention_dropout));
        }
        for &id in self.eos_token_ids.iter().chain(self.bos_token_id.iter()) {
            if id < 0 || id >= self.vocab_size {
                return Err(format!("special token id {id} is outside the vocabulary (size {})", self.vocab_size));
            }
        }
        Ok(())
    }

    /// The HF class this config is exported as: `LlamaForCausalLM` unless the biases or the
    /// sliding window need Qwen2 or Mistral to be expressed.
    pub fn export_arch(&self) -> Arch {
        if self.sliding_window.is_some() {
            Arch::Mistral
        } else if self.qkv_bias && !self.o_bias {
            Arch::Qwen2
        } else {
            Arch::Llama
        }
    }

    /// A transformers-5 `config.json` for this model with `dtype` float32.
    pub fn to_hf_json(&self) -> Value {
        let arch = self.export_arch();
        let mut rope = Map::new();
        rope.insert("rope_theta".into(), json!(self.rope_theta));
        match &self.rope_scaling {
            RopeScaling::Default => {
                rope.insert("rope_type".into(), json!("default"));
            }
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => {
                rope.insert("rope_type".into(), json!("llama3"));
                rope.insert("factor".into(), json!(factor));
                rope.insert("low_freq_factor".into(), json!(low_freq_factor));
                rope.insert("high_freq_factor".into(), json!(high_freq_factor));
                rope.insert("original_max_position_embeddings".into(), json!(original_max_position_embeddings));
            }
        }
        let eos = match self.eos_token_ids.as_slice() {
            [] => Value::Null,
            [one] => json!(one),
            many => json!(many),
        };
        let mut v = json!({
            "architectures": [arch.hf_class()],
            "model_type": arch.model_type(),
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_parameters": Value::Object(rope),
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_dropout": self.attention_dropout,
            "initializer_range": self.initializer_range,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": eos,
            "pad_token_id": self.pad_token_id,
            "use_cache": true,
            "dtype": "float32",
        });
        if let Value::Object(m) = &mut v {
            match arch {
                Arch::Llama => {
                    m.insert("attention_bias".into(), json!(self.o_bias));
                    m.insert("mlp_bias".into(), json!(self.mlp_bias));
                }
                Arch::Mistral => {
                    m.insert("sliding_window".into(), json!(self.sliding_window));
                }
                Arch::Qwen2 => {
                    m.insert("use_sliding_window".into(), json!(false));
                    m.insert("sliding_window".into(), Value::Null);
                }
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Value {
        json!({"architectures": ["LlamaForCausalLM"], "vocab_size": 96, "hidden_size": 32,
               "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4})
    }

    fn parse(v: Value) -> std::result::Result<LlamaConfig, String> {
        HfLlamaConfig::from_slice(v.to_string().as_bytes())?.resolve()
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
        assert_eq!(c.export_arch(), Arch::Qwen2);
    }

    #[test]
    fn missing_field_is_named() {
        let mut v = base();
        v.as_object_mut().unwrap().remove("hidden_size");
        assert!(parse(v).unwrap_err().contains("hidden_size"));
    }
}
