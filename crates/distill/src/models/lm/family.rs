//! The causal-LM families: which checkpoints distill reads and writes, and what each family
//! changes in the one decoder ([`super::CausalLm`]).
//!
//! This file holds the only `match` on [`Family`], with no wildcard arm: a new family is a
//! variant here plus its file in `families/` (names, `config.json` quirks, export keys, traits),
//! and the compiler lists every arm it needs. Loading, export, pruning and generation ask the
//! family through these methods; none of them matches on it.

use serde_json::{Map, Value};

use super::families::{self, Names, Quirks};
use super::hf::HfLmConfig;
use super::LmConfig;

/// A causal-LM family: the HF class a checkpoint belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `LlamaForCausalLM`: `attention_bias` applies to q, k, v and o.
    Llama,
    /// `Qwen2ForCausalLM`: q, k and v always carry a bias, o never does.
    Qwen2,
    /// `MistralForCausalLM`: Llama with an optional sliding window.
    Mistral,
    /// `Qwen3ForCausalLM`: Llama with per-head RMSNorms on queries and keys.
    Qwen3,
    /// `Gemma2ForCausalLM`: GeGLU, (1 + w) norms before and after attention and MLP, √H
    /// embedding scale, alternating sliding/full layers, soft-capped scores and logits.
    Gemma2,
    /// `Gemma3ForCausalLM` (text): Gemma 2 with per-head q/k norms, 5 local : 1 global layers,
    /// a local RoPE base, no soft caps by default.
    Gemma3,
    /// `Olmo2ForCausalLM`: norms after attention and MLP only, q/k norms over the full width.
    Olmo2,
    /// `Phi3ForCausalLM` (Phi-3, Phi-4-mini): fused qkv and gate/up projections in checkpoints,
    /// LongRoPE, partial rotary.
    Phi3,
    /// Test-only: Llama whose RMSNorm gains are stored as offsets from 1 (`(1 + w)·x̂`, as
    /// Gemma's are); it proves that a family touches only this file and its own.
    #[cfg(test)]
    TestNorm,
}

/// What a family changes in the decoder's forward pass. Values that a checkpoint sets (biases,
/// windows, RoPE base, soft caps) live in [`LmConfig`]; these are fixed for the family.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Traits {
    /// Added to every RMSNorm gain in the forward pass (0 for Llama; 1 where a checkpoint stores
    /// `w − 1`, as Gemma's do).
    pub norm_offset: f64,
    /// The embedding is multiplied by √hidden (rounded to the weights' kind), Gemma's scale.
    pub embed_scale: bool,
    /// RMSNorms on queries and keys (`self_attn.q_norm`, `self_attn.k_norm`), before RoPE.
    pub qk_norm: QkNorm,
    /// Where each block's norms sit.
    pub layout: Layout,
    /// Checkpoints store `self_attn.qkv_proj` and `mlp.gate_up_proj` fused (Phi-3); the model
    /// holds them split, loading splits and export fuses.
    pub fused: bool,
}

impl Traits {
    /// Llama's decoder, unchanged.
    pub const LLAMA: Traits =
        Traits { norm_offset: 0.0, embed_scale: false, qk_norm: QkNorm::None, layout: Layout::Pre, fused: false };
}

/// Query/key normalization.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QkNorm {
    None,
    /// One RMSNorm of `head_dim` shared by every head (Qwen3, Gemma 3).
    PerHead,
    /// One RMSNorm over all heads together, `nh·hd` for q and `nkv·hd` for k (OLMo 2): the heads'
    /// statistics are coupled.
    Full,
}

/// Where a decoder block's RMSNorms sit (HF names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `x + attn(input_layernorm(x))`, then `x + mlp(post_attention_layernorm(x))` (Llama).
    Pre,
    /// `x + post_attention_layernorm(attn(input_layernorm(x)))`, then
    /// `x + post_feedforward_layernorm(mlp(pre_feedforward_layernorm(x)))` (Gemma 2/3).
    Sandwich,
    /// `x + post_attention_layernorm(attn(x))`, then `x + post_feedforward_layernorm(mlp(x))`
    /// (OLMo 2).
    Post,
}

impl Layout {
    /// RMSNorms of width `hidden` per block.
    pub fn norms_per_layer(self) -> u64 {
        match self {
            Layout::Pre | Layout::Post => 2,
            Layout::Sandwich => 4,
        }
    }

    /// The HF names of a block's hidden-width norms, in forward order.
    pub fn norm_names(self) -> &'static [&'static str] {
        match self {
            Layout::Pre => &["input_layernorm", "post_attention_layernorm"],
            Layout::Sandwich => &[
                "input_layernorm",
                "post_attention_layernorm",
                "pre_feedforward_layernorm",
                "post_feedforward_layernorm",
            ],
            Layout::Post => &["post_attention_layernorm", "post_feedforward_layernorm"],
        }
    }
}

impl Family {
    /// Every family, in the order errors list them.
    pub const ALL: &'static [Family] = &[
        Family::Llama,
        Family::Qwen2,
        Family::Mistral,
        Family::Qwen3,
        Family::Gemma2,
        Family::Gemma3,
        Family::Olmo2,
        Family::Phi3,
    ];

    fn names(self) -> &'static Names {
        match self {
            Family::Llama => &families::llama::NAMES,
            Family::Qwen2 => &families::qwen2::NAMES,
            Family::Mistral => &families::mistral::NAMES,
            Family::Qwen3 => &families::qwen3::NAMES,
            Family::Gemma2 => &families::gemma2::NAMES,
            Family::Gemma3 => &families::gemma3::NAMES,
            Family::Olmo2 => &families::olmo2::NAMES,
            Family::Phi3 => &families::phi3::NAMES,
            #[cfg(test)]
            Family::TestNorm => &families::test_norm::NAMES,
        }
    }

    /// The `architectures[0]` string (`LlamaForCausalLM`).
    pub fn hf_class(self) -> &'static str {
        self.names().hf_class
    }

    /// The transformers config class's defaults for the keys a `config.json` may leave out.
    pub fn hf_defaults(self) -> Value {
        serde_json::from_str(self.names().defaults).unwrap_or(Value::Null)
    }

    /// The `model_type` string (`llama`).
    pub fn model_type(self) -> &'static str {
        self.names().model_type
    }

    /// `general.architecture` of its GGUF files; `None`: distill writes no GGUF of this family.
    pub fn gguf_arch(self) -> Option<&'static str> {
        self.names().gguf_arch
    }

    /// Llama, Qwen2 and Mistral: one decoder told apart by biases and window, exported as
    /// whichever of the three expresses a config ([`LmConfig::export_family`]); their students
    /// built from the teacher are Llama.
    pub fn llama_like(self) -> bool {
        matches!(self, Family::Llama | Family::Qwen2 | Family::Mistral)
    }

    /// The family of a student built from a teacher of this family (its shape derived from the
    /// teacher's): Llama for the Llama-like families, the family itself otherwise, so that a
    /// layer subset or a pruned teacher keeps its norms, windows and caps.
    pub fn student_family(self) -> Family {
        if self.llama_like() {
            Family::Llama
        } else {
            self
        }
    }

    /// The family of an HF class or `model_type` (`LlamaForCausalLM` or `llama`).
    pub fn from_hf_name(name: &str) -> Option<Family> {
        Self::ALL.iter().copied().find(|f| f.hf_class() == name || f.model_type() == name)
    }

    /// The family of a GGUF `general.architecture`.
    pub fn from_gguf_arch(name: &str) -> Option<Family> {
        Self::ALL.iter().copied().find(|f| f.gguf_arch() == Some(name))
    }

    /// The supported HF classes, for error messages.
    pub fn supported_hf_classes() -> String {
        Self::ALL.iter().map(|f| f.hf_class()).collect::<Vec<_>>().join(", ")
    }

    /// What a GGUF file of this family means beyond its header (biases, layer pattern, the local
    /// RoPE base, the activation: llama.cpp hard-codes them per architecture).
    pub fn gguf_quirks(self) -> Quirks {
        match self {
            Family::Llama => families::llama::GGUF,
            Family::Qwen2 => families::qwen2::GGUF,
            Family::Mistral => families::mistral::GGUF,
            Family::Qwen3 => families::qwen3::GGUF,
            Family::Gemma2 => families::gemma2::GGUF,
            Family::Gemma3 => families::gemma3::GGUF,
            Family::Olmo2 => families::olmo2::GGUF,
            Family::Phi3 => families::phi3::GGUF,
            #[cfg(test)]
            Family::TestNorm => families::llama::GGUF,
        }
    }

    /// What the family changes in the forward pass.
    pub fn traits(self) -> Traits {
        match self {
            Family::Llama => families::llama::TRAITS,
            Family::Qwen2 => families::qwen2::TRAITS,
            Family::Mistral => families::mistral::TRAITS,
            Family::Qwen3 => families::qwen3::TRAITS,
            Family::Gemma2 => families::gemma2::TRAITS,
            Family::Gemma3 => families::gemma3::TRAITS,
            Family::Olmo2 => families::olmo2::TRAITS,
            Family::Phi3 => families::phi3::TRAITS,
            #[cfg(test)]
            Family::TestNorm => families::test_norm::TRAITS,
        }
    }

    /// The biases and window a `config.json` of this family means.
    pub(super) fn quirks(self, hf: &HfLmConfig) -> Result<Quirks, String> {
        match self {
            Family::Llama => Ok(families::llama::quirks(hf)),
            Family::Qwen2 => families::qwen2::quirks(hf),
            Family::Mistral => Ok(families::mistral::quirks(hf)),
            Family::Qwen3 => Ok(families::qwen3::quirks(hf)),
            Family::Gemma2 => Ok(families::gemma2::quirks(hf)),
            Family::Gemma3 => Ok(families::gemma3::quirks(hf)),
            Family::Olmo2 => Ok(families::olmo2::quirks(hf)),
            Family::Phi3 => Ok(families::phi3::quirks(hf)),
            #[cfg(test)]
            Family::TestNorm => Ok(families::llama::quirks(hf)),
        }
    }

    /// The family-specific keys of an exported `config.json`.
    pub(super) fn hf_keys(self, cfg: &LmConfig, m: &mut Map<String, Value>) {
        match self {
            Family::Llama => families::llama::hf_keys(cfg, m),
            Family::Qwen2 => families::qwen2::hf_keys(cfg, m),
            Family::Mistral => families::mistral::hf_keys(cfg, m),
            Family::Qwen3 => families::qwen3::hf_keys(cfg, m),
            Family::Gemma2 => families::gemma2::hf_keys(cfg, m),
            Family::Gemma3 => families::gemma3::hf_keys(cfg, m),
            Family::Olmo2 => families::olmo2::hf_keys(cfg, m),
            Family::Phi3 => families::phi3::hf_keys(cfg, m),
            #[cfg(test)]
            Family::TestNorm => families::llama::hf_keys(cfg, m),
        }
    }
}
