//! Pure-Rust GGUF support for distill: read (v2/v3), dequantize (F32, F16, BF16, Q8_0, Q4_0,
//! Q4_1, Q4_K, Q5_K, Q6_K — bitwise equal to gguf-py), write (v3; F32, F16, Q8_0, Q4_0), view a
//! Llama-family model under Hugging Face tensor names, build its tokenizer from metadata, and
//! export a Llama-family model with its tokenizer as a GGUF file llama.cpp runs.

pub mod dequant;
pub mod error;
pub mod export;
pub mod llama;
pub mod metadata;
pub mod quant;
pub mod reader;
pub mod tokenizer;
pub mod types;
pub mod writer;

pub use dequant::{dequantize, dequantize_to_vec, DequantError};
pub use error::{GgufError, Result};
pub use export::{
    gguf_name, gguf_name_in, permute_rope_rows, write_llama_gguf, ExportType, LlamaExportParams, EXPORT_ARCHITECTURES,
};
pub use llama::{hf_name, hf_name_in, hf_tensor, hf_tensors, unpermute_rope_rows, HfTensor, LlamaGgufParams};
pub use metadata::{MetadataArray, MetadataValue, MetadataValueType};
pub use quant::{quantize_f16, quantize_q4_0, quantize_q8_0};
pub use reader::{GgufFile, TensorInfo};
pub use tokenizer::{tokenizer_fingerprint, tokenizer_from_gguf, tokenizer_metadata};
pub use types::GgmlType;
pub use writer::GgufWriter;
