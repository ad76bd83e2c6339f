//! Reading and writing model files: HF `config.json` and safetensors weights.
pub mod hf;
pub mod safetensors;
