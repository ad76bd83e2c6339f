//! Outside files in and out: safetensors weights, loading a language model
//! (HF directory or GGUF), HF/GGUF export, assets from package registries, chat templates.
pub mod chat;
pub mod export;
pub mod fetch;
pub mod lm;
pub mod safetensors;
