//! One file per causal-LM family: its names, what its `config.json` means beyond the shared keys
//! ([`Quirks`]), the keys its exported `config.json` adds, and its forward-pass traits.
//! [`super::family::Family`] dispatches to them.

pub mod gemma2;
pub mod gemma3;
pub mod llama;
pub mod mistral;
pub mod olmo2;
pub mod phi3;
pub mod qwen2;
pub mod qwen3;
#[cfg(test)]
pub mod test_norm;

use super::config::{Activation, LayerAttention};

/// How a family is named in HF checkpoints and GGUF files.
#[derive(Debug)]
pub struct Names {
    pub hf_class: &'static str,
    pub model_type: &'static str,
    /// `general.architecture` of GGUF files; `None` where distill reads and writes none.
    pub gguf_arch: Option<&'static str>,
    /// The transformers config class's defaults for the keys distill reads, as a JSON object:
    /// `save_pretrained` leaves out the keys equal to them.
    pub defaults: &'static str,
}

/// What a `config.json` (or a GGUF file) of a family means beyond the shared keys.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quirks {
    /// Bias on q_proj, k_proj and v_proj (`config.json`; a GGUF says by its tensors).
    pub qkv_bias: bool,
    /// Bias on o_proj (`config.json`; a GGUF says by its tensors).
    pub o_bias: bool,
    /// Keys further back than this many positions are masked in sliding layers; `None` = full
    /// causal everywhere.
    pub sliding_window: Option<i64>,
    /// Which layers slide when the file does not list `layer_types`.
    pub pattern: Pattern,
    /// The MLP activation when the file does not name one.
    pub act: Activation,
    /// The sliding layers' RoPE base when the file does not give one (Gemma 3's GGUF).
    pub rope_local_theta: Option<f64>,
    /// GGUF only: the attention and final soft caps llama.cpp applies when the file has no key
    /// (Gemma 2: 50 and 30).
    pub softcaps: (Option<f64>, Option<f64>),
    /// GGUF only: llama.cpp scales queries by `(hidden/heads)^-½` instead of `head_dim^-½` in
    /// files of this many layers (Gemma 2 and 3 27B).
    pub hidden_per_head_scale_layers: Option<i64>,
    /// GGUF only: llama.cpp needs `output.weight` even when the head is tied (OLMo 2).
    pub untied_head: bool,
    /// GGUF only: llama.cpp's graph has no `attn_output.bias` (Qwen3).
    pub o_bias_unsupported: bool,
}

impl Quirks {
    /// Llama's: no biases, no window, SiLU.
    pub const LLAMA: Quirks = Quirks {
        qkv_bias: false,
        o_bias: false,
        sliding_window: None,
        pattern: Pattern::Uniform,
        act: Activation::Silu,
        rope_local_theta: None,
        softcaps: (None, None),
        hidden_per_head_scale_layers: None,
        untied_head: false,
        o_bias_unsupported: false,
    };
}

/// Which layers use the sliding window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    /// Every layer (Mistral, Phi-3).
    Uniform,
    /// Layer `i` is full when `(i + 1) % k == 0`, sliding otherwise (Gemma 2: k = 2, Gemma 3: 6).
    Every(usize),
}

impl Pattern {
    /// The attention type of each of `layers` layers.
    pub fn layer_types(self, layers: usize) -> Vec<LayerAttention> {
        (0..layers)
            .map(|i| match self {
                Pattern::Every(k) if (i + 1) % k.max(1) == 0 => LayerAttention::Full,
                _ => LayerAttention::Sliding,
            })
            .collect()
    }
}
