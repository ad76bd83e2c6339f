//! Writing a Llama-family model as a GGUF file that llama.cpp loads: the inverse of
//! [`crate::llama`]'s view. Hugging Face tensor names become GGUF names, the rows of `q_proj` /
//! `k_proj` get llama.cpp's rotary permutation (for the `llama` architecture, as
//! `convert_hf_to_gguf.py` does), the hyper-parameters become `{arch}.*` keys and a BPE
//! `tokenizers::Tokenizer` (byte-level, or SentencePiece-style with byte fallback) becomes
//! `tokenizer.ggml.*` metadata ([`tokenizer_metadata`]).
//!
//! Reading the file back with [`crate::hf_tensors`] and [`crate::tokenizer_from_gguf`] gives the
//! same weights (exactly, for F32) and the same tokenizer.

use std::path::Path;

use tokenizers::Tokenizer;

use crate::error::{GgufError, Result};
use crate::llama::{map_name, norm_shift, reorder_rope_rows, rope_heads, LlamaGgufParams};
use crate::metadata::MetadataValue;
use crate::tokenizer::tokenizer_metadata;
use crate::types::GgmlType;
use crate::writer::GgufWriter;

/// How the matrices of an exported model are stored. Norms and biases are always F32 (as
/// llama.cpp's converter writes them); [`ExportType::tensor_type`] is the rule per tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportType {
    /// Every tensor F32: reads back bit for bit.
    F32,
    /// Matrices F16 (round to nearest even).
    F16,
    /// Matrices Q8_0 (blocks of 32 with one f16 scale); a matrix whose rows are not a multiple of
    /// 32 falls back to F16.
    Q8_0,
    /// The projection matrices Q4_0 (blocks of 32 4-bit values with one f16 scale); the token
    /// embedding (also the output matrix when tied) and an untied output matrix Q8_0, as
    /// `llama-quantize` keeps the output at higher precision; rows that are not a multiple of 32
    /// F16.
    Q4_0,
}

impl ExportType {
    /// Parses `f32`, `f16`, `q8_0` or `q4_0` (case-insensitive).
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Some(Self::F32),
            "f16" => Some(Self::F16),
            "q8_0" => Some(Self::Q8_0),
            "q4_0" => Some(Self::Q4_0),
            _ => None,
        }
    }

    /// `general.file_type` (llama.cpp's `llama_ftype`): 0 all F32, 1 mostly F16, 7 mostly Q8_0,
    /// 2 mostly Q4_0.
    fn file_type(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q8_0 => 7,
            Self::Q4_0 => 2,
        }
    }

    /// How the tensor `gguf_name` of `shape` (PyTorch order) is stored. Quantization-aware
    /// training reads the same rule, so that the weights it trains against are the ones this
    /// export writes.
    pub fn tensor_type(self, gguf_name: &str, shape: &[usize]) -> GgmlType {
        let blocks = shape.last().is_some_and(|c| c % 32 == 0);
        let embedding = gguf_name == "token_embd.weight" || gguf_name == "output.weight";
        match (shape.len(), self) {
            (0 | 1, _) | (_, Self::F32) => GgmlType::F32,
            (_, Self::F16) => GgmlType::F16,
            _ if !blocks => GgmlType::F16,
            (_, Self::Q8_0) => GgmlType::Q8_0,
            (_, Self::Q4_0) if embedding => GgmlType::Q8_0,
            (_, Self::Q4_0) => GgmlType::Q4_0,
        }
    }
}

/// What an export writes besides the tensors and the tokenizer.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaExportParams {
    /// The hyper-parameters, as the reader ([`LlamaGgufParams::from_gguf`]) gives them back:
    /// written as `{architecture}.*` keys. `architecture` is `llama` (Q/K rows permuted for
    /// llama.cpp's rotary layout) or `qwen2` (not permuted); `tied_embeddings` must agree with
    /// the tensors (no `lm_head.weight` when tied).
    pub model: LlamaGgufParams,
    /// `general.name`.
    pub name: String,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    pub pad_token_id: Option<u32>,
    /// `tokenizer.chat_template` (Jinja), when the model has one.
    pub chat_template: Option<String>,
    /// Phi-3's LongRoPE factors `(long, short)`, `rope_dim / 2` each: written as the tensors
    /// `rope_factors_long.weight` / `rope_factors_short.weight` llama.cpp reads.
    pub rope_factors: Option<(Vec<f32>, Vec<f32>)>,
}

/// The architectures [`write_llama_gguf`] writes.
pub const EXPORT_ARCHITECTURES: &[&str] = &["llama", "qwen2", "qwen3", "gemma2", "gemma3", "olmo2", "phi3"];

/// The GGUF name of a Llama-family Hugging Face tensor (the inverse of [`crate::hf_name`]), or
/// `None` for a name with no GGUF counterpart.
pub fn gguf_name(hf: &str) -> Option<String> {
    map_name(hf, false, "llama")
}

/// [`gguf_name`] in a file of architecture `arch` (see [`crate::hf_name_in`]).
pub fn gguf_name_in(arch: &str, hf: &str) -> Option<String> {
    map_name(hf, false, arch)
}

/// llama.cpp's rotary permutation of the rows of a Q or K projection (weight or bias), the
/// inverse of [`crate::unpermute_rope_rows`]: GGUF row `h·d + 2i + j` takes HF row
/// `h·d + j·d/2 + i`.
pub fn permute_rope_rows(data: &[f32], rows: usize, cols: usize, n_head: usize) -> Option<Vec<f32>> {
    reorder_rope_rows(data, rows, cols, n_head, true)
}

fn invalid(path: &Path, tensor: &str, message: String) -> GgufError {
    GgufError::InvalidWrite { path: path.to_path_buf(), tensor: tensor.to_owned(), message }
}

/// Writes a Llama-family model to `path` atomically (temporary file, fsync, rename).
///
/// `tensors` are `(HF name, row-major shape, f32 values)`, e.g. a model's state dict; `tokenizer`
/// must be a byte-level BPE tokenizer with a pre-tokenizer GGUF can name, or a SentencePiece-style
/// one (see [`tokenizer_metadata`]). Every tensor must have a GGUF name; an untied model carries
/// `lm_head.weight`, a tied one does not (llama.cpp then reuses `token_embd`), as
/// `params.model.tied_embeddings` says (checked).
pub fn write_llama_gguf(
    path: &Path,
    params: &LlamaExportParams,
    tensors: &[(String, Vec<usize>, Vec<f32>)],
    tokenizer: &Tokenizer,
    ty: ExportType,
) -> Result<()> {
    let (m, arch) = (&params.model, params.model.architecture.as_str());
    if !EXPORT_ARCHITECTURES.contains(&arch) {
        return Err(GgufError::Model {
            path: path.to_path_buf(),
            message: format!("cannot export architecture `{arch}` ({})", EXPORT_ARCHITECTURES.join(", ")),
        });
    }
    // llama.cpp's converter permutes q/k rows for `llama` only; Gemma's norms are stored 1 + w.
    let permute = arch == "llama";
    let shift = norm_shift(arch);
    let has_head = tensors.iter().any(|(n, _, _)| n == "lm_head.weight");
    if has_head == m.tied_embeddings {
        return Err(GgufError::Model {
            path: path.to_path_buf(),
            message: format!(
                "tied_embeddings = {} but the tensors {} lm_head.weight",
                m.tied_embeddings,
                if has_head { "include" } else { "lack" }
            ),
        });
    }
    let mut w = GgufWriter::new(path);
    let u32_of = |key: &str, v: usize| -> Result<MetadataValue> {
        u32::try_from(v)
            .map(MetadataValue::U32)
            .map_err(|_| GgufError::Model { path: path.to_path_buf(), message: format!("{key} = {v} exceeds u32") })
    };
    w.add_metadata("general.architecture", arch)?;
    w.add_metadata("general.name", params.name.as_str())?;
    w.add_metadata("general.file_type", ty.file_type())?;
    let keys: [(&str, usize); 8] = [
        ("context_length", m.context_length),
        ("embedding_length", m.embedding_length),
        ("block_count", m.block_count),
        ("feed_forward_length", m.feed_forward_length),
        ("rope.dimension_count", m.rope_dim),
        ("attention.head_count", m.head_count),
        ("attention.head_count_kv", m.head_count_kv),
        ("vocab_size", m.vocab_size),
    ];
    for (k, v) in keys {
        let key = format!("{arch}.{k}");
        w.add_metadata(&key, u32_of(&key, v)?)?;
    }
    if m.head_dim * m.head_count != m.embedding_length {
        let key = format!("{arch}.attention.key_length");
        w.add_metadata(&key, u32_of(&key, m.head_dim)?)?;
        let key = format!("{arch}.attention.value_length");
        w.add_metadata(&key, u32_of(&key, m.head_dim)?)?;
    }
    w.add_metadata(&format!("{arch}.rope.freq_base"), m.rope_freq_base)?;
    if let Some(win) = m.sliding_window {
        let key = format!("{arch}.attention.sliding_window");
        w.add_metadata(&key, u32_of(&key, win)?)?;
    } else if arch == "phi3" {
        // 0 tells llama.cpp's phi3 graph that no layer slides.
        w.add_metadata(&format!("{arch}.attention.sliding_window"), MetadataValue::U32(0))?;
    }
    if let Some(p) = m.sliding_window_pattern {
        let key = format!("{arch}.attention.sliding_window_pattern");
        w.add_metadata(&key, u32_of(&key, p)?)?;
    }
    for (k, v) in [("attn_logit_softcapping", m.attn_softcap), ("final_logit_softcapping", m.final_softcap)] {
        if let Some(v) = v {
            w.add_metadata(&format!("{arch}.{k}"), v)?;
        }
    }
    if let Some(ctx) = m.rope_orig_ctx {
        let key = format!("{arch}.rope.scaling.original_context_length");
        w.add_metadata(&key, u32_of(&key, ctx)?)?;
    }
    if let Some(t) = &m.rope_scaling_type {
        w.add_metadata(&format!("{arch}.rope.scaling.type"), t.as_str())?;
    }
    if let Some(f) = m.rope_scaling_factor {
        w.add_metadata(&format!("{arch}.rope.scaling.factor"), f)?;
    }
    if let Some(b) = m.rope_freq_base_swa {
        w.add_metadata(&format!("{arch}.rope.freq_base_swa"), b)?;
    }
    if let Some(f) = m.rope_attn_factor {
        w.add_metadata(&format!("{arch}.rope.scaling.attn_factor"), f)?;
    }
    w.add_metadata(&format!("{arch}.attention.layer_norm_rms_epsilon"), m.rms_norm_eps)?;
    let specials = (params.bos_token_id, params.eos_token_id, params.pad_token_id);
    for (key, value) in tokenizer_metadata(path, tokenizer, m.vocab_size, specials)? {
        w.add_metadata(&key, value)?;
    }
    if let Some(t) = &params.chat_template {
        w.add_metadata("tokenizer.chat_template", t.as_str())?;
    }

    if let Some((long, short)) = &params.rope_factors {
        for (gname, f) in [("rope_factors_long.weight", long), ("rope_factors_short.weight", short)] {
            w.add_tensor_f32(gname, &[f.len()], f, GgmlType::F32)?;
        }
    }
    for (name, shape, data) in tensors {
        let gname = gguf_name_in(arch, name)
            .ok_or_else(|| invalid(path, name, format!("has no GGUF name in a `{arch}` file")))?;
        let shifted: Vec<f32>;
        let data = if shift != 0.0 && name.ends_with("norm.weight") {
            shifted = data.iter().map(|x| x + shift).collect();
            &shifted
        } else {
            data
        };
        let heads = rope_heads(&gname, m.head_count, m.head_count_kv);
        let permuted;
        let data = match heads {
            Some(n_head) if permute => {
                let rows = shape.first().copied().unwrap_or(0);
                let cols = shape.iter().skip(1).product();
                permuted = permute_rope_rows(data, rows, cols, n_head).ok_or_else(|| {
                    invalid(path, name, format!("shape {shape:?} cannot be split into {n_head} heads of even size"))
                })?;
                &permuted
            }
            _ => data,
        };
        w.add_tensor_f32(&gname, shape, data, ty.tensor_type(&gname, shape))?;
    }
    w.write()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{hf_name, unpermute_rope_rows};

    #[test]
    fn names_round_trip() {
        for hf in [
            "model.embed_tokens.weight",
            "model.norm.weight",
            "lm_head.weight",
            "model.layers.0.self_attn.q_proj.weight",
            "model.layers.7.self_attn.k_proj.bias",
            "model.layers.12.self_attn.o_proj.weight",
            "model.layers.3.mlp.down_proj.weight",
            "model.layers.3.input_layernorm.weight",
            "model.layers.3.post_attention_layernorm.weight",
        ] {
            let g = gguf_name(hf).unwrap();
            assert_eq!(hf_name(&g).as_deref(), Some(hf), "{g}");
        }
        assert_eq!(gguf_name("model.layers.0.self_attn.q_proj.weight").as_deref(), Some("blk.0.attn_q.weight"));
        assert_eq!(gguf_name("model.rotary_emb.inv_freq"), None);
        assert_eq!(gguf_name("model.layers.x.mlp.up_proj.weight"), None);
    }

    #[test]
    fn permute_inverts_unpermute() {
        let (n_head, d, cols) = (3, 6, 5);
        let rows = n_head * d;
        let hf: Vec<f32> = (0..rows * cols).map(|x| x as f32).collect();
        let g = permute_rope_rows(&hf, rows, cols, n_head).unwrap();
        assert_ne!(g, hf);
        // GGUF row 1 of head 0 is HF row d/2.
        assert_eq!(g[cols], hf[(d / 2) * cols]);
        assert_eq!(unpermute_rope_rows(&g, rows, cols, n_head), Some(hf.clone()));
        assert_eq!(permute_rope_rows(&hf, rows, cols, 4), None);
    }

    #[test]
    fn export_types_parse() {
        assert_eq!(ExportType::parse("F16"), Some(ExportType::F16));
        assert_eq!(ExportType::parse("q8_0"), Some(ExportType::Q8_0));
        assert_eq!(ExportType::parse("Q4_0"), Some(ExportType::Q4_0));
        let q4 = ExportType::Q4_0;
        assert_eq!(q4.tensor_type("blk.0.ffn_down.weight", &[576, 640]), GgmlType::Q4_0);
        assert_eq!(q4.tensor_type("token_embd.weight", &[49152, 576]), GgmlType::Q8_0);
        assert_eq!(q4.tensor_type("output.weight", &[49152, 576]), GgmlType::Q8_0);
        assert_eq!(q4.tensor_type("blk.0.attn_q.weight", &[64, 48]), GgmlType::F16);
        assert_eq!(q4.tensor_type("blk.0.attn_norm.weight", &[576]), GgmlType::F32);
        assert_eq!(ExportType::Q8_0.tensor_type("token_embd.weight", &[8, 64]), GgmlType::Q8_0);
        assert_eq!(ExportType::parse("q4_1"), None);
    }
}
