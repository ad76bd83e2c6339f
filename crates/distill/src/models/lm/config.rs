//! The runtime configuration of a causal LM: every default resolved, every field valid. Read from
//! a `config.json` ([`super::hf`]) or a GGUF header ([`crate::io::lm`]), derived for a student
//! ([`crate::student`]), written back by [`LmConfig::to_hf_json`].

use std::path::Path;

use serde_json::{json, Map, Value};

use super::hf::HfLmConfig;
use super::Family;
use super::QkNorm;
use crate::Result;

/// How rotary frequencies are derived from `rope_theta`.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// `inv_freq[i] = theta^(-2i/d)`.
    Default,
    /// Llama 3.1 frequency smoothing (`rope_type: "llama3"`).
    Llama3 { factor: f64, low_freq_factor: f64, high_freq_factor: f64, original_max_position_embeddings: i64 },
    /// Positions divided by `factor` (`rope_type: "linear"`; Gemma 3's global layers).
    Linear { factor: f64 },
    /// Phi-3's LongRoPE (`rope_type: "longrope"`): each frequency divided by its factor — the
    /// short ones while the sequence (cached positions included) fits in
    /// `original_max_position_embeddings`, the long ones past it — and cos/sin scaled by
    /// `attention_factor`.
    LongRope {
        short_factor: Vec<f64>,
        long_factor: Vec<f64>,
        original_max_position_embeddings: i64,
        attention_factor: f64,
    },
}

/// The MLP's gate activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `silu` (Llama, Qwen, Mistral, Phi-3, OLMo 2).
    Silu,
    /// `gelu_pytorch_tanh` (Gemma): GeGLU.
    GeluTanh,
}

impl Activation {
    /// The transformers name (`hidden_act`).
    pub fn hf_name(self) -> &'static str {
        match self {
            Activation::Silu => "silu",
            Activation::GeluTanh => "gelu_pytorch_tanh",
        }
    }

    /// The activation of a transformers `hidden_act` / `hidden_activation` name.
    pub fn from_hf(name: &str) -> Option<Activation> {
        match name {
            "silu" | "swish" => Some(Activation::Silu),
            "gelu_pytorch_tanh" | "gelu_tanh" => Some(Activation::GeluTanh),
            _ => None,
        }
    }
}

/// Which keys a layer attends to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerAttention {
    /// Every earlier position (`full_attention`).
    Full,
    /// The last `sliding_window` positions (`sliding_attention`), with Gemma 3's local RoPE base
    /// where the config has one.
    Sliding,
}

impl LayerAttention {
    /// The transformers `layer_types` entry.
    pub fn hf_name(self) -> &'static str {
        match self {
            LayerAttention::Full => "full_attention",
            LayerAttention::Sliding => "sliding_attention",
        }
    }
}

/// The runtime configuration the model is built from: every default resolved, every field valid.
#[derive(Debug, Clone, PartialEq)]
pub struct LmConfig {
    pub family: Family,
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
    /// Keys further back than this many positions are masked in the [`LayerAttention::Sliding`]
    /// layers; `None` = every layer is full causal.
    pub sliding_window: Option<i64>,
    /// Per layer: full or sliding-window attention (`num_layers` entries).
    pub layer_types: Vec<LayerAttention>,
    /// RoPE base of the sliding layers (Gemma 3's local layers, without rope scaling); `None`:
    /// `rope_theta` for every layer.
    pub rope_local_theta: Option<f64>,
    /// Leading dimensions of each head that RoPE rotates (`partial_rotary_factor · head_dim`, even);
    /// the rest pass through.
    pub rotary_dim: i64,
    /// Queries are scaled by `query_pre_attn_scalar^-½` (Gemma) instead of `head_dim^-½`.
    pub query_pre_attn_scalar: Option<f64>,
    /// Attention scores soft-capped to `c·tanh(s/c)` before the mask (Gemma 2).
    pub attn_softcap: Option<f64>,
    /// Final logits soft-capped to `c·tanh(z/c)` (Gemma 2): in every forward, divergence and
    /// cache capture.
    pub final_softcap: Option<f64>,
    /// The MLP's gate activation.
    pub hidden_act: Activation,
    /// Dropout on attention probabilities, applied only when training.
    pub attention_dropout: f64,
    /// Standard deviation of the normal init of linear and embedding weights.
    pub initializer_range: f64,
    pub bos_token_id: Option<i64>,
    pub eos_token_ids: Vec<i64>,
    pub pad_token_id: Option<i64>,
}

impl LmConfig {
    /// Reads `config.json` (a file, or a directory that holds one) into a validated config.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let mut path = path.as_ref().to_path_buf();
        if path.is_dir() {
            path = path.join("config.json");
        }
        HfLmConfig::from_file(&path)?.into_config(&path)
    }

    /// Parameters the model has (a tied head counted once); None when the count overflows.
    pub fn param_count(&self) -> Option<u64> {
        let u = |v: i64| u64::try_from(v).ok();
        let (v, h, i, l) = (u(self.vocab_size)?, u(self.hidden_size)?, u(self.intermediate_size)?, u(self.num_layers)?);
        let (q, kv) =
            (u(self.num_heads)?.checked_mul(u(self.head_dim)?)?, u(self.num_kv_heads)?.checked_mul(u(self.head_dim)?)?);
        let attn = h.checked_mul(q.checked_mul(2)?.checked_add(kv.checked_mul(2)?)?)?;
        let mlp = h.checked_mul(i)?.checked_mul(3)?;
        let t = self.family.traits();
        let norms = h.checked_mul(t.layout.norms_per_layer())?.checked_add(match t.qk_norm {
            QkNorm::None => 0,
            QkNorm::PerHead => 2 * u(self.head_dim)?,
            QkNorm::Full => q.checked_add(kv)?,
        })?;
        let layer = attn.checked_add(mlp)?.checked_add(norms)?;
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
        if self.layer_types.len() as i64 != self.num_layers {
            return Err(format!("`layer_types` has {} entries for {} layers", self.layer_types.len(), self.num_layers));
        }
        if self.layer_types.contains(&LayerAttention::Sliding) && self.sliding_window.is_none() {
            return Err("`layer_types` has sliding_attention layers but `sliding_window` is not set".into());
        }
        if let Some(w) = self.sliding_window {
            if w <= 0 {
                return Err(format!("`sliding_window` must be positive, got {w}"));
            }
        }
        if self.rotary_dim <= 0 || self.rotary_dim % 2 != 0 || self.rotary_dim > self.head_dim {
            return Err(format!(
                "the rotary dimension ({}: `partial_rotary_factor` × `head_dim`) must be even and in (0, {}]",
                self.rotary_dim, self.head_dim
            ));
        }
        for (key, v) in [
            ("query_pre_attn_scalar", self.query_pre_attn_scalar),
            ("attn_logit_softcapping", self.attn_softcap),
            ("final_logit_softcapping", self.final_softcap),
            ("rope_local_base_freq", self.rope_local_theta),
        ] {
            if let Some(v) = v {
                if !(v > 0.0 && v.is_finite()) {
                    return Err(format!("`{key}` must be positive, got {v}"));
                }
            }
        }
        match &self.rope_scaling {
            RopeScaling::Linear { factor } if !(*factor > 0.0 && factor.is_finite()) => {
                return Err(format!("rope scaling `factor` must be positive, got {factor}"));
            }
            RopeScaling::LongRope { short_factor, long_factor, .. } => {
                let half = (self.rotary_dim / 2) as usize;
                if short_factor.len() != half || long_factor.len() != half {
                    return Err(format!(
                        "longrope `short_factor` and `long_factor` need {half} entries (rotary dim / 2), got {} and {}",
                        short_factor.len(),
                        long_factor.len()
                    ));
                }
                if short_factor.iter().chain(long_factor).any(|f| !(*f > 0.0 && f.is_finite())) {
                    return Err("longrope factors must be positive".into());
                }
            }
            _ => {}
        }
        for &id in self.eos_token_ids.iter().chain(self.bos_token_id.iter()) {
            if id < 0 || id >= self.vocab_size {
                return Err(format!("special token id {id} is outside the vocabulary (size {})", self.vocab_size));
            }
        }
        Ok(())
    }

    /// The window of layer `i`: `sliding_window` for a sliding layer, `None` for a full one.
    pub fn layer_window(&self, i: usize) -> Option<i64> {
        match self.layer_types.get(i) {
            Some(LayerAttention::Sliding) => self.sliding_window,
            _ => None,
        }
    }

    /// The same model with `layers` of this one, in order (a student of a layer subset, a pruned
    /// depth): each keeps its attention type.
    pub fn pick_layers(&self, layers: &[i64]) -> LmConfig {
        let layer_types =
            layers.iter().map(|&l| self.layer_types.get(l as usize).copied().unwrap_or(LayerAttention::Full)).collect();
        LmConfig { num_layers: layers.len() as i64, layer_types, ..self.clone() }
    }

    /// The HF class this config is exported as. The Llama-like families (Llama, Qwen2,
    /// Mistral) export as `LlamaForCausalLM` unless the biases or the sliding window need Qwen2 or
    /// Mistral to be expressed; every other family as itself.
    pub fn export_family(&self) -> Family {
        if !self.family.llama_like() {
            self.family
        } else if self.sliding_window.is_some() {
            Family::Mistral
        } else if self.qkv_bias && !self.o_bias {
            Family::Qwen2
        } else {
            Family::Llama
        }
    }

    /// A transformers-5 `config.json` for this model with `dtype` float32.
    pub fn to_hf_json(&self) -> Value {
        let family = self.export_family();
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
            RopeScaling::Linear { factor } => {
                rope.insert("rope_type".into(), json!("linear"));
                rope.insert("factor".into(), json!(factor));
            }
            RopeScaling::LongRope { short_factor, long_factor, original_max_position_embeddings, attention_factor } => {
                rope.insert("rope_type".into(), json!("longrope"));
                rope.insert("short_factor".into(), json!(short_factor));
                rope.insert("long_factor".into(), json!(long_factor));
                rope.insert("original_max_position_embeddings".into(), json!(original_max_position_embeddings));
                rope.insert("attention_factor".into(), json!(attention_factor));
            }
        }
        if self.rotary_dim != self.head_dim {
            rope.insert("partial_rotary_factor".into(), json!(self.rotary_dim as f64 / self.head_dim as f64));
        }
        let eos = match self.eos_token_ids.as_slice() {
            [] => Value::Null,
            [one] => json!(one),
            many => json!(many),
        };
        let mut v = json!({
            "architectures": [family.hf_class()],
            "model_type": family.model_type(),
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": self.hidden_act.hf_name(),
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
            family.hf_keys(self, m);
        }
        v
    }
}
