//! A Llama-family view of a GGUF file: hyper-parameters from metadata, and every tensor as `f32`
//! under its Hugging Face name and shape, with llama.cpp's rotary permutation of `attn_q` /
//! `attn_k` undone — exactly what `transformers` loads from the same file.

use crate::error::{GgufError, Result};
use crate::reader::{GgufFile, TensorInfo};

/// Architectures (`general.architecture`) this view understands.
pub const SUPPORTED_ARCHITECTURES: &[&str] =
    &["llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "olmo2", "phi3"];

/// Hyper-parameters of a Llama-family model, read from GGUF metadata (`{arch}.*` keys).
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaGgufParams {
    /// `general.architecture` (`llama`, `mistral`, `qwen2`, `qwen3`).
    pub architecture: String,
    /// `{arch}.block_count`: number of decoder layers.
    pub block_count: usize,
    /// `{arch}.embedding_length`: hidden size.
    pub embedding_length: usize,
    /// `{arch}.feed_forward_length`: MLP intermediate size.
    pub feed_forward_length: usize,
    /// `{arch}.attention.head_count`.
    pub head_count: usize,
    /// `{arch}.attention.head_count_kv` (defaults to `head_count`).
    pub head_count_kv: usize,
    /// `{arch}.attention.key_length`, else `embedding_length / head_count`.
    pub head_dim: usize,
    /// `{arch}.rope.freq_base` (defaults to 10000).
    pub rope_freq_base: f32,
    /// `{arch}.attention.layer_norm_rms_epsilon`.
    pub rms_norm_eps: f32,
    /// `{arch}.context_length`.
    pub context_length: usize,
    /// `{arch}.vocab_size`, else the length of `tokenizer.ggml.tokens`, else the rows of
    /// `token_embd.weight`.
    pub vocab_size: usize,
    /// True when there is no `output.weight`: the LM head reuses the token embedding.
    pub tied_embeddings: bool,
    /// `{arch}.rope.dimension_count`: the leading dimensions of each head RoPE rotates (else
    /// `head_dim`).
    pub rope_dim: usize,
    /// `{arch}.attention.sliding_window` (0 or absent: none).
    pub sliding_window: Option<usize>,
    /// `{arch}.attention.sliding_window_pattern`: every this-many-th layer is full (absent:
    /// llama.cpp's per-architecture default).
    pub sliding_window_pattern: Option<usize>,
    /// `{arch}.attn_logit_softcapping` (Gemma 2).
    pub attn_softcap: Option<f32>,
    /// `{arch}.final_logit_softcapping` (Gemma 2).
    pub final_softcap: Option<f32>,
    /// `{arch}.rope.scaling.original_context_length` (Phi-3's LongRoPE).
    pub rope_orig_ctx: Option<usize>,
    /// `{arch}.rope.scaling.attn_factor` (Phi-3's LongRoPE).
    pub rope_attn_factor: Option<f32>,
    /// `{arch}.rope.freq_base_swa`: the sliding layers' RoPE base (Gemma 3).
    pub rope_freq_base_swa: Option<f32>,
    /// `{arch}.rope.scaling.type` (llama.cpp's default: `linear`).
    pub rope_scaling_type: Option<String>,
    /// `{arch}.rope.scaling.factor` (or the older `{arch}.rope.scale_linear`): positions are
    /// divided by it (linear scaling; Gemma 3's global layers).
    pub rope_scaling_factor: Option<f32>,
}

impl LlamaGgufParams {
    /// Reads the parameters from `file`'s metadata; errors name the missing or malformed key.
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let arch = file.get_str("general.architecture")?.to_owned();
        if !SUPPORTED_ARCHITECTURES.contains(&arch.as_str()) {
            return Err(model_err(
                file,
                format!(
                    "architecture `{arch}` is not a supported Llama-family architecture ({})",
                    SUPPORTED_ARCHITECTURES.join(", ")
                ),
            ));
        }
        let usize_key = |k: &str| -> Result<usize> { Ok(file.get_u64(&format!("{arch}.{k}"))? as usize) };
        let block_count = usize_key("block_count")?;
        let embedding_length = usize_key("embedding_length")?;
        let feed_forward_length = usize_key("feed_forward_length")?;
        let head_count = usize_key("attention.head_count")?;
        let head_count_kv = match file.get(&format!("{arch}.attention.head_count_kv")) {
            Some(_) => usize_key("attention.head_count_kv")?,
            None => head_count,
        };
        if head_count == 0 || head_count_kv == 0 || head_count % head_count_kv != 0 {
            return Err(model_err(file, format!("invalid head counts: {head_count} heads, {head_count_kv} kv heads")));
        }
        let head_dim = match file.get(&format!("{arch}.attention.key_length")) {
            Some(_) => usize_key("attention.key_length")?,
            None => embedding_length / head_count,
        };
        let rope_freq_base = match file.get(&format!("{arch}.rope.freq_base")) {
            Some(_) => file.get_f32(&format!("{arch}.rope.freq_base"))?,
            None => 10_000.0,
        };
        let rms_norm_eps = file.get_f32(&format!("{arch}.attention.layer_norm_rms_epsilon"))?;
        let context_length = usize_key("context_length")?;
        let vocab_size = if file.get(&format!("{arch}.vocab_size")).is_some() {
            usize_key("vocab_size")?
        } else if let Ok(tokens) = file.get_str_array("tokenizer.ggml.tokens") {
            tokens.len()
        } else {
            match file.tensor_info("token_embd.weight") {
                Some(t) => t.shape().first().copied().unwrap_or(0),
                None => return Err(model_err(file, "cannot tell the vocabulary size".into())),
            }
        };
        let opt_usize = |k: &str| -> Result<Option<usize>> {
            let key = format!("{arch}.{k}");
            Ok(match file.get(&key) {
                Some(_) => Some(file.get_u64(&key)? as usize),
                None => None,
            })
        };
        let opt_f32 = |k: &str| -> Result<Option<f32>> {
            let key = format!("{arch}.{k}");
            Ok(match file.get(&key) {
                Some(_) => Some(file.get_f32(&key)?),
                None => None,
            })
        };
        Ok(Self {
            rope_dim: opt_usize("rope.dimension_count")?.unwrap_or(head_dim),
            sliding_window: opt_usize("attention.sliding_window")?.filter(|&w| w > 0),
            sliding_window_pattern: opt_usize("attention.sliding_window_pattern")?,
            attn_softcap: opt_f32("attn_logit_softcapping")?,
            final_softcap: opt_f32("final_logit_softcapping")?,
            rope_orig_ctx: opt_usize("rope.scaling.original_context_length")?,
            rope_attn_factor: opt_f32("rope.scaling.attn_factor")?,
            rope_freq_base_swa: opt_f32("rope.freq_base_swa")?,
            rope_scaling_type: match file.get(&format!("{arch}.rope.scaling.type")) {
                Some(_) => Some(file.get_str(&format!("{arch}.rope.scaling.type"))?.to_owned()),
                None => None,
            },
            rope_scaling_factor: opt_f32("rope.scaling.factor")?.or(opt_f32("rope.scale_linear")?),
            tied_embeddings: file.tensor_info("output.weight").is_none(),
            architecture: arch,
            block_count,
            embedding_length,
            feed_forward_length,
            head_count,
            head_count_kv,
            head_dim,
            rope_freq_base,
            rms_norm_eps,
            context_length,
            vocab_size,
        })
    }

    /// Whether llama.cpp's converter permuted `attn_q` / `attn_k` rows for this architecture
    /// (`llama`, `mistral`: yes; every other: no).
    pub fn rope_permuted(&self) -> bool {
        matches!(self.architecture.as_str(), "llama" | "mistral")
    }

    /// What llama.cpp's converter adds to every RMSNorm gain of this architecture (Gemma's are
    /// stored as `1 + w`, transformers' as `w`).
    pub fn norm_shift(&self) -> f32 {
        norm_shift(&self.architecture)
    }
}

/// See [`LlamaGgufParams::norm_shift`].
pub(crate) fn norm_shift(arch: &str) -> f32 {
    if matches!(arch, "gemma2" | "gemma3") {
        1.0
    } else {
        0.0
    }
}

fn model_err(file: &GgufFile, message: String) -> GgufError {
    GgufError::Model { path: file.path().to_path_buf(), message }
}

/// The Hugging Face name of a GGUF tensor of a Llama-family model, or `None` for a name with no
/// HF counterpart (e.g. `rope_freqs.weight`) or an unknown one.
///
/// `token_embd` → `model.embed_tokens`, `output_norm` → `model.norm`, `output` → `lm_head`,
/// `blk.{i}.attn_{q,k,v,output}` → `model.layers.{i}.self_attn.{q,k,v,o}_proj`,
/// `blk.{i}.ffn_{gate,up,down}` → `model.layers.{i}.mlp.{gate,up,down}_proj`,
/// `blk.{i}.attn_norm` / `ffn_norm` → `input_layernorm` / `post_attention_layernorm`,
/// `blk.{i}.attn_{q,k}_norm` → `self_attn.{q,k}_norm`; the `.weight` / `.bias` suffix is kept.
pub fn hf_name(gguf_name: &str) -> Option<String> {
    map_name(gguf_name, true, "llama")
}

/// [`hf_name`] in a file of architecture `arch`, whose layer tensors may mean other HF tensors
/// ([`ARCH_LAYER_NAMES`]: Gemma's `ffn_norm` is the pre-MLP norm beside post-norms, Phi-3's
/// `ffn_up` the fused gate/up projection).
pub fn hf_name_in(arch: &str, gguf_name: &str) -> Option<String> {
    map_name(gguf_name, true, arch)
}

/// Maps a tensor name between the two conventions through [`TOP_NAMES`], the architecture's
/// [`ARCH_LAYER_NAMES`] and [`LAYER_NAMES`]: GGUF → HF when `to_hf`, else HF → GGUF; the
/// `.weight` / `.bias` suffix is kept.
pub(crate) fn map_name(name: &str, to_hf: bool, arch: &str) -> Option<String> {
    let (stem, suffix) = name.rsplit_once('.')?;
    if suffix != "weight" && suffix != "bias" {
        return None;
    }
    let orient = |&(g, h): &(&'static str, &'static str)| if to_hf { (g, h) } else { (h, g) };
    let (layer_from, layer_to) = orient(&("blk.", "model.layers."));
    if let Some((_, to)) = TOP_NAMES.iter().map(orient).find(|(from, _)| *from == stem) {
        return Some(format!("{to}.{suffix}"));
    }
    let (layer, leaf) = stem.strip_prefix(layer_from)?.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let own = ARCH_LAYER_NAMES.iter().filter(|(a, _)| *a == arch).flat_map(|(_, names)| names.iter());
    let (_, to) = own.chain(LAYER_NAMES).map(orient).find(|(from, _)| *from == leaf)?;
    Some(format!("{layer_to}{layer}.{to}.{suffix}"))
}

/// The heads whose rows a GGUF tensor's rotary reorder runs over: `head_count` for `attn_q`,
/// `head_count_kv` for `attn_k`, `None` for every other tensor.
pub(crate) fn rope_heads(gguf_name: &str, head_count: usize, head_count_kv: usize) -> Option<usize> {
    if gguf_name.contains(".attn_q.") {
        Some(head_count)
    } else if gguf_name.contains(".attn_k.") {
        Some(head_count_kv)
    } else {
        None
    }
}

/// `(GGUF, Hugging Face)` names of the tensors outside the layers.
pub(crate) const TOP_NAMES: &[(&str, &str)] =
    &[("token_embd", "model.embed_tokens"), ("output_norm", "model.norm"), ("output", "lm_head")];

/// `(GGUF, Hugging Face)` names of a layer's tensors (`blk.{i}.` / `model.layers.{i}.`).
pub(crate) const LAYER_NAMES: &[(&str, &str)] = &[
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("attn_q_norm", "self_attn.q_norm"),
    ("attn_k_norm", "self_attn.k_norm"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
    ("attn_norm", "input_layernorm"),
    ("ffn_norm", "post_attention_layernorm"),
];

/// Per architecture, `(GGUF, Hugging Face)` names of layer tensors that differ from
/// [`LAYER_NAMES`] (looked up first).
pub(crate) const ARCH_LAYER_NAMES: &[(&str, &[(&str, &str)])] = &[
    ("gemma2", GEMMA_NORMS),
    ("gemma3", GEMMA_NORMS),
    ("olmo2", &[("post_attention_norm", "post_attention_layernorm"), ("post_ffw_norm", "post_feedforward_layernorm")]),
    ("phi3", &[("attn_qkv", "self_attn.qkv_proj"), ("ffn_up", "mlp.gate_up_proj")]),
];

/// Gemma's four block norms.
const GEMMA_NORMS: &[(&str, &str)] = &[
    ("attn_norm", "input_layernorm"),
    ("post_attention_norm", "post_attention_layernorm"),
    ("ffn_norm", "pre_feedforward_layernorm"),
    ("post_ffw_norm", "post_feedforward_layernorm"),
];

/// GGUF tensors that carry no Hugging Face weight and are skipped by [`hf_tensors`]
/// (`rope_factors_*`: Phi-3's LongRoPE factors, which are config values in HF).
const SKIPPED: &[&str] = &["rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight"];

/// One tensor under its Hugging Face name.
#[derive(Debug, Clone, PartialEq)]
pub struct HfTensor {
    /// The Hugging Face state-dict key (`model.layers.0.self_attn.q_proj.weight`).
    pub name: String,
    /// The GGUF tensor it comes from (`blk.0.attn_q.weight`).
    pub gguf_name: String,
    /// Row-major shape, as in the HF checkpoint (`[out_features, in_features]` for linears).
    pub shape: Vec<usize>,
    /// The values, dequantized to `f32`, row-major.
    pub data: Vec<f32>,
}

/// Undoes llama.cpp's rotary permutation of the rows of a Q or K projection (weight or bias).
///
/// `convert_hf_to_gguf.py` reorders each head's rows from HF's "rotate half" layout to
/// interleaved pairs: GGUF row `h·d + 2i + j` holds HF row `h·d + j·d/2 + i` (`d` = rows per head,
/// `i < d/2`, `j ∈ {0,1}`). This puts them back.
///
/// # Shapes
/// `data`: `(rows, cols)` row-major with `rows = n_head · d`, `d` even; returns the same shape.
pub fn unpermute_rope_rows(data: &[f32], rows: usize, cols: usize, n_head: usize) -> Option<Vec<f32>> {
    reorder_rope_rows(data, rows, cols, n_head, false)
}

/// Moves the rows of each of `n_head` heads between HF's "rotate half" order and llama.cpp's
/// interleaved pairs (`to_gguf`) or back; `None` when the rows do not split into heads of even
/// size.
pub(crate) fn reorder_rope_rows(
    data: &[f32],
    rows: usize,
    cols: usize,
    n_head: usize,
    to_gguf: bool,
) -> Option<Vec<f32>> {
    if n_head == 0 || rows % n_head != 0 || (rows / n_head) % 2 != 0 || data.len() != rows * cols {
        return None;
    }
    let d = rows / n_head;
    let half = d / 2;
    let mut out = vec![0f32; data.len()];
    for h in 0..n_head {
        for i in 0..half {
            for j in 0..2 {
                let (gguf_row, hf_row) = ((h * d + 2 * i + j) * cols, (h * d + j * half + i) * cols);
                let (src, dst) = if to_gguf { (hf_row, gguf_row) } else { (gguf_row, hf_row) };
                out[dst..dst + cols].copy_from_slice(&data[src..src + cols]);
            }
        }
    }
    Some(out)
}

/// Dequantizes one GGUF tensor into its HF form (name, shape, un-permuted Q/K rows, Gemma's
/// norm gains back to `w`).
fn to_hf(file: &GgufFile, params: &LlamaGgufParams, info: &TensorInfo) -> Result<HfTensor> {
    let name = hf_name_in(&params.architecture, &info.name)
        .ok_or_else(|| model_err(file, format!("tensor `{}` has no Hugging Face counterpart", info.name)))?;
    let shape = info.shape();
    let mut data = file.info_f32(info)?;
    let n_head = rope_heads(&info.name, params.head_count, params.head_count_kv);
    if let (Some(n_head), true) = (n_head, params.rope_permuted()) {
        let rows = shape.first().copied().unwrap_or(0);
        let cols = shape.iter().skip(1).product();
        data = unpermute_rope_rows(&data, rows, cols, n_head).ok_or_else(|| {
            model_err(
                file,
                format!("tensor `{}` of shape {shape:?} cannot be split into {n_head} heads of even size", info.name),
            )
        })?;
    }
    let shift = params.norm_shift();
    if shift != 0.0 && name.ends_with("norm.weight") {
        data.iter_mut().for_each(|x| *x -= shift);
    }
    Ok(HfTensor { name, gguf_name: info.name.clone(), shape, data })
}

/// Every tensor of a Llama-family GGUF as `f32` under its Hugging Face name and shape, in file
/// order, dequantized lazily one at a time. `lm_head.weight` appears only when the file has an
/// `output.weight` (see [`LlamaGgufParams::tied_embeddings`]). Tensors without an HF counterpart
/// that llama.cpp adds (`rope_freqs.weight`) are skipped; any other unknown name is an error.
pub fn hf_tensors<'a>(file: &'a GgufFile, params: &'a LlamaGgufParams) -> impl Iterator<Item = Result<HfTensor>> + 'a {
    file.tensors().iter().filter(|t| !SKIPPED.contains(&t.name.as_str())).map(move |t| to_hf(file, params, t))
}

/// The single tensor `gguf_name` in HF form (see [`hf_tensors`]).
pub fn hf_tensor(file: &GgufFile, params: &LlamaGgufParams, gguf_name: &str) -> Result<HfTensor> {
    let info = file
        .tensor_info(gguf_name)
        .ok_or_else(|| GgufError::MissingTensor { path: file.path().to_path_buf(), tensor: gguf_name.to_owned() })?;
    to_hf(file, params, info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hf_names() {
        assert_eq!(hf_name("token_embd.weight").as_deref(), Some("model.embed_tokens.weight"));
        assert_eq!(hf_name("output.weight").as_deref(), Some("lm_head.weight"));
        assert_eq!(hf_name("output_norm.weight").as_deref(), Some("model.norm.weight"));
        assert_eq!(hf_name("blk.12.attn_output.weight").as_deref(), Some("model.layers.12.self_attn.o_proj.weight"));
        assert_eq!(hf_name("blk.3.attn_q.bias").as_deref(), Some("model.layers.3.self_attn.q_proj.bias"));
        assert_eq!(hf_name("blk.0.ffn_norm.weight").as_deref(), Some("model.layers.0.post_attention_layernorm.weight"));
        assert_eq!(hf_name("blk.x.attn_q.weight"), None);
        assert_eq!(hf_name("rope_freqs.weight"), None);
    }

    /// The inverse of convert_hf_to_gguf's `permute`:
    /// `w.reshape(n_head, 2, d/2, cols).swapaxes(1, 2).reshape(w.shape)`.
    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        let (n_head, d, cols) = (3, 4, 2);
        let rows = n_head * d;
        let hf: Vec<f32> = (0..rows * cols).map(|x| x as f32).collect();
        // permute: gguf[h][i][j] = hf[h][j][i] over (n_head, d/2, 2) vs (n_head, 2, d/2).
        let mut gguf = vec![0f32; hf.len()];
        for h in 0..n_head {
            for i in 0..d / 2 {
                for j in 0..2 {
                    for c in 0..cols {
                        gguf[(h * d + 2 * i + j) * cols + c] = hf[(h * d + j * d / 2 + i) * cols + c];
                    }
                }
            }
        }
        // Row 1 of head 0 in GGUF is HF row d/2 = 2 (first element 4.0).
        assert_eq!(gguf[cols], 4.0);
        assert_eq!(unpermute_rope_rows(&gguf, rows, cols, n_head), Some(hf));
        assert_eq!(unpermute_rope_rows(&gguf, rows, cols, 5), None);
    }
}
