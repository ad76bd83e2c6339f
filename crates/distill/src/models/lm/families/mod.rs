//! One file per causal-LM family: its names, what its `config.json` means beyond the shared keys
//! ([`Quirks`]), the keys its exported `config.json` adds, and its forward-pass traits.
//! [`super::family::Family`] dispatches to them.

pub mod llama;
pub mod mistral;
pub mod qwen2;
#[cfg(test)]
pub mod test_norm;

/// How a family is named in HF checkpoints and GGUF files.
#[derive(Debug)]
pub struct Names {
    pub hf_class: &'static str,
    pub model_type: &'static str,
    /// `general.architecture` of GGUF files; `None` where distill reads and writes none.
    pub gguf_arch: Option<&'static str>,
}

/// What a `config.json` means for the attention biases and window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quirks {
    /// Bias on q_proj, k_proj and v_proj.
    pub qkv_bias: bool,
    /// Bias on o_proj.
    pub o_bias: bool,
    /// Keys further back than this many positions are masked; `None` = full causal.
    pub sliding_window: Option<i64>,
}
