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
    /// Test-only: Llama whose RMSNorm gains are stored as offsets from 1 (`(1 + w)·x̂`, as
    /// Gemma's are); it proves that a family touches only this file and its own.
    #[cfg(test)]
    TestNorm,
}

/// What a family changes in the decoder's forward pass. Values that a checkpoint sets (biases,
/// windows, RoPE base) live in [`LmConfig`]; these are fixed for the family.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Traits {
    /// Added to every RMSNorm gain in the forward pass (0 for Llama; 1 where a checkpoint stores
    /// `w − 1`, as Gemma's do).
    pub norm_offset: f64,
}

impl Traits {
    /// Llama's decoder, unchanged.
    pub const LLAMA: Traits = Traits { norm_offset: 0.0 };
}

impl Family {
    /// Every family, in the order errors list them.
    pub const ALL: &'static [Family] = &[Family::Llama, Family::Qwen2, Family::Mistral];

    fn names(self) -> &'static Names {
        match self {
            Family::Llama => &families::llama::NAMES,
            Family::Qwen2 => &families::qwen2::NAMES,
            Family::Mistral => &families::mistral::NAMES,
            #[cfg(test)]
            Family::TestNorm => &families::test_norm::NAMES,
        }
    }

    /// The `architectures[0]` string (`LlamaForCausalLM`).
    pub fn hf_class(self) -> &'static str {
        self.names().hf_class
    }

    /// The `model_type` string (`llama`).
    pub fn model_type(self) -> &'static str {
        self.names().model_type
    }

    /// `general.architecture` of its GGUF files; `None`: distill writes no GGUF of this family.
    pub fn gguf_arch(self) -> Option<&'static str> {
        self.names().gguf_arch
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

    /// The biases and window of a GGUF file of this family (GGUF headers do not say).
    pub fn gguf_quirks(self) -> Quirks {
        match self {
            Family::Llama => families::llama::GGUF,
            Family::Qwen2 => families::qwen2::GGUF,
            Family::Mistral => families::mistral::GGUF,
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
            #[cfg(test)]
            Family::TestNorm => families::llama::hf_keys(cfg, m),
        }
    }
}
