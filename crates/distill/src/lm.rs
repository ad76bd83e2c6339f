//! Causal LMs as teachers and students: loading a teacher from GGUF or a Hugging Face
//! directory (with its tokenizer), the tokenizer identity check, and deriving and initializing a
//! smaller student that shares the teacher's vocabulary.

use std::path::{Path, PathBuf};

use tch::{nn, Device, Kind, Tensor};
use tokenizers::Tokenizer;

use crate::io::hf::{Arch, LlamaConfig, RopeScaling};
use crate::io::safetensors::load_named_f32;
use crate::models::llama::Llama;
use crate::recipe::{LmStudent, StudentInit, TeacherDtype};
use crate::{Error, Result};

/// A loaded causal LM with its tokenizer.
pub struct LoadedLm {
    pub vs: nn::VarStore,
    pub model: Llama,
    pub tokenizer: Tokenizer,
    /// `tokenizer.json` bytes, for export.
    pub tokenizer_json: Vec<u8>,
    /// Size of the weights on disk (the GGUF file or the safetensors files).
    pub file_bytes: u64,
    pub source: PathBuf,
    /// The model's chat template (Jinja), when it has one: `tokenizer.chat_template` of a GGUF,
    /// `chat_template.jinja` or `tokenizer_config.json`'s `chat_template` of an HF directory.
    /// Conversions carry it; students (trained on plain text) do not.
    pub chat_template: Option<String>,
}

/// The chat template of an HF directory: `chat_template.jinja` (transformers 5), else a string
/// `chat_template` in `tokenizer_config.json`.
fn hf_chat_template(dir: &Path) -> Option<String> {
    if let Ok(t) = std::fs::read_to_string(dir.join("chat_template.jinja")) {
        return Some(t);
    }
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("tokenizer_config.json")).ok()?).ok()?;
    cfg.get("chat_template")?.as_str().map(str::to_string)
}

impl std::fmt::Debug for LoadedLm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedLm").field("source", &self.source).field("config", self.model.config()).finish()
    }
}

fn gguf_err(e: distill_gguf::GgufError) -> Error {
    Error::Invalid(e.to_string())
}

/// Whether `path` is a GGUF file (by its magic bytes).
pub fn is_gguf(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut magic)).is_ok() && &magic == b"GGUF"
}

/// The runtime config of a Llama-family GGUF, from its parsed hyper-parameters `p`.
pub fn config_from_gguf(file: &distill_gguf::GgufFile, p: &distill_gguf::LlamaGgufParams) -> Result<LlamaConfig> {
    let arch = match p.architecture.as_str() {
        "qwen2" => Arch::Qwen2,
        "mistral" => Arch::Mistral,
        _ => Arch::Llama,
    };
    let id = |k: &str| file.get_u32(k).ok().map(|v| v as i64);
    let cfg = LlamaConfig {
        arch,
        vocab_size: p.vocab_size as i64,
        hidden_size: p.embedding_length as i64,
        intermediate_size: p.feed_forward_length as i64,
        num_layers: p.block_count as i64,
        num_heads: p.head_count as i64,
        num_kv_heads: p.head_count_kv as i64,
        head_dim: p.head_dim as i64,
        rms_norm_eps: p.rms_norm_eps as f64,
        rope_theta: p.rope_freq_base as f64,
        rope_scaling: RopeScaling::Default,
        max_position_embeddings: p.context_length as i64,
        tie_word_embeddings: p.tied_embeddings,
        qkv_bias: arch == Arch::Qwen2,
        o_bias: false,
        mlp_bias: false,
        sliding_window: None,
        attention_dropout: 0.0,
        initializer_range: 0.02,
        bos_token_id: id("tokenizer.ggml.bos_token_id"),
        eos_token_ids: id("tokenizer.ggml.eos_token_id").into_iter().collect(),
        pad_token_id: id("tokenizer.ggml.padding_token_id"),
    };
    cfg.validate().map_err(|m| Error::format(file.path(), m))?;
    Ok(cfg)
}

/// Loads a causal LM from a GGUF file or an HF directory, frozen (no gradients), in f32.
pub fn load_lm(path: &Path, device: Device) -> Result<LoadedLm> {
    if path.is_dir() {
        let (mut vs, model) = Llama::from_pretrained(path, device, Kind::Float)?;
        vs.freeze();
        let tj = path.join("tokenizer.json");
        let tokenizer_json = std::fs::read(&tj).map_err(|e| Error::io(&tj, e))?;
        let tokenizer = Tokenizer::from_bytes(&tokenizer_json)
            .map_err(|e| Error::format(&tj, format!("not a valid tokenizer.json: {e}")))?;
        let file_bytes = std::fs::read_dir(path)
            .map_err(|e| Error::io(path, e))?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".safetensors"))
            .filter_map(|e| e.metadata().ok().map(|m| m.len()))
            .sum();
        let chat_template = hf_chat_template(path);
        return Ok(LoadedLm {
            vs,
            model,
            tokenizer,
            tokenizer_json,
            file_bytes,
            source: path.to_path_buf(),
            chat_template,
        });
    }
    if !path.exists() {
        return Err(Error::Invalid(format!("{}: no such file or directory", path.display())));
    }
    if !is_gguf(path) {
        return Err(Error::format(path, "neither a GGUF file nor a Hugging Face directory"));
    }
    let file = distill_gguf::GgufFile::open(path).map_err(gguf_err)?;
    let params = distill_gguf::LlamaGgufParams::from_gguf(&file).map_err(gguf_err)?;
    let cfg = config_from_gguf(&file, &params)?;
    let mut vs = nn::VarStore::new(device);
    let model = Llama::new(vs.root(), &cfg)?;
    let tensors: Vec<(String, Vec<i64>, Vec<f32>)> = distill_gguf::hf_tensors(&file, &params)
        .map(|t| t.map(|t| (t.name, t.shape.iter().map(|&d| d as i64).collect(), t.data)))
        .collect::<std::result::Result<_, _>>()
        .map_err(gguf_err)?;
    load_named_f32(&mut vs, path, tensors, &Llama::load_options(&cfg))?;
    vs.freeze();
    let tokenizer = distill_gguf::tokenizer_from_gguf(&file).map_err(gguf_err)?;
    let tokenizer_json = tokenizer
        .to_string(false)
        .map_err(|e| Error::format(path, format!("cannot serialize its tokenizer: {e}")))?
        .into_bytes();
    let file_bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let chat_template = file.get_str("tokenizer.chat_template").ok().map(str::to_string);
    Ok(LoadedLm { vs, model, tokenizer, tokenizer_json, file_bytes, source: path.to_path_buf(), chat_template })
}

/// A stable fingerprint of a tokenizer's vocabulary, merges and special tokens.
pub fn tokenizer_fingerprint(t: &Tokenizer) -> String {
    distill_gguf::tokenizer_fingerprint(t)
}

/// Checks that two models can be distilled into each other: same vocabulary size and the same
/// tokenizer. The error says exactly what differs.
pub fn check_compatible(teacher: &LoadedLm, student_vocab: i64, student_tok: Option<&Tokenizer>) -> Result<()> {
    let tv = teacher.model.config().vocab_size;
    if tv != student_vocab {
        return Err(Error::Invalid(format!(
            "vocabulary mismatch: teacher {} has {tv} logits, student has {student_vocab}",
            teacher.source.display()
        )));
    }
    if let Some(st) = student_tok {
        let (a, b) = (tokenizer_fingerprint(&teacher.tokenizer), tokenizer_fingerprint(st));
        if a != b {
            let (va, vb) = (teacher.tokenizer.get_vocab_size(true), st.get_vocab_size(true));
            return Err(Error::Invalid(format!(
                "tokenizer mismatch: teacher tokenizer {a:.12} ({va} tokens) vs student tokenizer {b:.12} ({vb} tokens)"
            )));
        }
    }
    Ok(())
}

/// The kind the online teacher trains in, with the reason (for the log and the summary).
/// `auto` picks bf16 on CUDA, and on a CPU when [`bf16_matmul_speedup`] is at least 1.25.
pub fn resolve_teacher_kind(dtype: TeacherDtype, cfg: &LlamaConfig, device: Device) -> Result<(Kind, String)> {
    Ok(match dtype {
        TeacherDtype::F32 => (Kind::Float, "f32 (teacher.dtype)".into()),
        TeacherDtype::Bf16 => (Kind::BFloat16, "bf16 (teacher.dtype)".into()),
        TeacherDtype::Auto if device.is_cuda() => (Kind::BFloat16, "bf16 (auto: CUDA)".into()),
        TeacherDtype::Auto => {
            let s = bf16_matmul_speedup(cfg, device)?;
            let kind = if s >= 1.25 { Kind::BFloat16 } else { Kind::Float };
            let name = if kind == Kind::Float { "f32" } else { "bf16" };
            (kind, format!("{name} (auto: a bf16 matmul of the teacher's MLP shape ran {s:.2}x the f32 speed here)"))
        }
    })
}

/// f32 time over bf16 time of a `[1024, hidden] × [hidden, intermediate]` matmul on `device`
/// (best of 5 after a warm-up each; ~0.2 s on 2 CPU cores for SmolLM2's shape). Uses no random
/// numbers, so it does not move the seeded RNG.
pub fn bf16_matmul_speedup(cfg: &LlamaConfig, device: Device) -> Result<f64> {
    let x = Tensor::f_full([1024, cfg.hidden_size], 0.01, (Kind::Float, device))?;
    let w = Tensor::f_full([cfg.hidden_size, cfg.intermediate_size], 0.02, (Kind::Float, device))?;
    let time = |kind: Kind| -> Result<f64> {
        let (x, w) = (x.f_to_kind(kind)?, w.f_to_kind(kind)?);
        let _ = x.f_mm(&w)?;
        let mut best = f64::INFINITY;
        for _ in 0..5 {
            let t = std::time::Instant::now();
            let _ = x.f_mm(&w)?;
            best = best.min(t.elapsed().as_secs_f64());
        }
        Ok(best)
    };
    Ok(time(Kind::Float)? / time(Kind::BFloat16)?.max(1e-9))
}

/// A frozen copy of a teacher (`model` with variables `vs`) in `kind`: the online teacher during
/// training; the f32 original stays for evaluation.
pub fn teacher_in_kind(vs_src: &nn::VarStore, model: &Llama, kind: Kind) -> Result<(nn::VarStore, Llama)> {
    let mut vs = nn::VarStore::new(model.device());
    let model = Llama::new(vs.root(), model.config())?;
    vs.set_kind(kind);
    vs.copy(vs_src)?;
    vs.freeze();
    Ok((vs, model))
}

/// Derives the student's config from the teacher's: vocabulary, RoPE, norms and special ids
/// are shared; widths left out of the recipe keep the teacher's ratios. The student is always a
/// plain `LlamaForCausalLM` (no biases, no sliding window).
pub fn student_config(t: &LlamaConfig, s: &LmStudent) -> Result<LlamaConfig> {
    let hidden = s.hidden.map(|h| h as i64).unwrap_or(t.hidden_size);
    let heads = match s.heads {
        Some(h) => h as i64,
        None if hidden == t.hidden_size => t.num_heads,
        None => (hidden / t.head_dim).max(1),
    };
    if hidden % heads != 0 {
        return Err(Error::Recipe(format!("student hidden {hidden} is not a multiple of its {heads} heads")));
    }
    let kv = match s.kv_heads {
        Some(k) => k as i64,
        None => (heads * t.num_kv_heads / t.num_heads).max(1),
    };
    if heads % kv != 0 {
        return Err(Error::Recipe(format!("student heads {heads} is not a multiple of its {kv} kv heads")));
    }
    let inter = s.intermediate.map(|i| i as i64).unwrap_or_else(|| {
        let r = t.intermediate_size as f64 / t.hidden_size as f64;
        ((hidden as f64 * r / 64.0).round() as i64 * 64).max(64)
    });
    let cfg = LlamaConfig {
        arch: Arch::Llama,
        hidden_size: hidden,
        intermediate_size: inter,
        num_layers: s.layers as i64,
        num_heads: heads,
        num_kv_heads: kv,
        head_dim: hidden / heads,
        tie_word_embeddings: s.tie_embeddings,
        qkv_bias: false,
        o_bias: false,
        mlp_bias: false,
        sliding_window: None,
        attention_dropout: 0.0,
        ..t.clone()
    };
    cfg.validate().map_err(Error::Recipe)?;
    Ok(cfg)
}

/// Teacher layers a `layer-subset` student of `student_layers` copies: evenly spaced, first and
/// last included (DistilBERT took every other layer of BERT-base).
pub fn subset_layers(teacher_layers: i64, student_layers: i64) -> Vec<i64> {
    if student_layers <= 1 {
        return vec![0];
    }
    (0..student_layers)
        .map(|i| ((i as f64) * (teacher_layers - 1) as f64 / (student_layers - 1) as f64).round() as i64)
        .collect()
}

/// Principal directions of the teacher's residual stream: the top `k` eigenvectors of
/// `C = Σ ĥĥᵀ` over every position of `ids` `[B, T]` and every hidden state (embeddings and
/// each layer's output), each normalised `ĥ = h/‖h‖` so that no layer's scale dominates;
/// uncentered, as SliceGPT's rotation (Ashkboos et al. 2024). Returns `Q` `[H, k]` (orthonormal
/// columns, largest eigenvalue first) and the share of `tr C` that the `k` directions keep.
pub fn residual_pca(teacher: &Llama, ids: &Tensor, k: i64) -> Result<(Tensor, f64)> {
    let h = teacher.config().hidden_size;
    if !(1..=h).contains(&k) {
        return Err(Error::Invalid(format!("residual PCA: {k} directions of a {h}-wide residual stream")));
    }
    tch::no_grad(|| {
        let opts = crate::models::llama::ForwardOptions { hidden_states: true, ..Default::default() };
        let out = teacher.forward(ids, None, opts)?;
        let mut c = Tensor::zeros([h, h], (Kind::Double, teacher.device()));
        for x in out.hidden_states.unwrap_or_default() {
            let x = x.f_to_kind(Kind::Double)?.f_view([-1, h])?; // [N, H]
            let x = &x / x.f_norm_scalaropt_dim(2, [-1], true)?.f_clamp_min(1e-12)?;
            c += x.f_transpose(0, 1)?.f_mm(&x)?;
        }
        let (evals, evecs) = c.f_linalg_eigh("L")?; // ascending
        let order = evals.f_argsort(0, true)?;
        let q = evecs.f_index_select(1, &order)?.f_narrow(1, 0, k)?; // [H, k]
        let kept = evals.f_index_select(0, &order)?.f_narrow(0, 0, k)?.f_sum(Kind::Double)?.double_value(&[])
            / evals.f_sum(Kind::Double)?.double_value(&[]);
        Ok((q.f_to_kind(Kind::Float)?, kept))
    })
}

/// Initializes a student built by [`Llama::new`] (already random, normal(0, 0.02)).
/// `layer-subset` copies the embedding, final norm and the [`subset_layers`] of the teacher,
/// slicing every tensor to the student's shape (leading rows/columns) when widths shrink.
/// `embedding-pca` copies only the teacher's token embedding (and output projection when the
/// student's is untied), projected onto the teacher's top principal directions
/// ([`residual_pca`] over `calib` `[B, T]`) when the student is narrower; the layers stay random.
/// Returns the share of the residual stream's second moment the projection keeps (1 when none).
pub fn init_student(
    student: &nn::VarStore,
    s_cfg: &LlamaConfig,
    teacher: &LoadedLm,
    init: StudentInit,
    calib: &Tensor,
) -> Result<f64> {
    match init {
        StudentInit::Random => Ok(1.0),
        StudentInit::LayerSubset => init_layer_subset(student, s_cfg, teacher).map(|_| 1.0),
        StudentInit::EmbeddingPca => init_embedding_pca(student, s_cfg, teacher, calib),
    }
}

fn init_embedding_pca(student: &nn::VarStore, s_cfg: &LlamaConfig, teacher: &LoadedLm, calib: &Tensor) -> Result<f64> {
    let t_cfg = teacher.model.config();
    let (h_t, h_s) = (t_cfg.hidden_size, s_cfg.hidden_size);
    if h_s > h_t {
        return Err(Error::Recipe(format!(
            "embedding-pca init: the student is wider than the teacher ({h_s} > {h_t}); use init = \"random\""
        )));
    }
    let (q, kept) =
        if h_s == h_t { (None, 1.0) } else { residual_pca(&teacher.model, calib, h_s).map(|(q, f)| (Some(q), f))? };
    let t_vars = teacher.vs.variables();
    let project = |src: &Tensor| match &q {
        Some(q) => src.f_mm(q),
        None => Ok(src.shallow_clone()),
    };
    let s_vars = student.variables();
    tch::no_grad(|| {
        let emb = project(&t_vars["model.embed_tokens.weight"])?;
        s_vars["model.embed_tokens.weight"].shallow_clone().copy_(&emb);
        if let Some(head) = s_vars.get("lm_head.weight") {
            let src = t_vars.get("lm_head.weight").unwrap_or(&t_vars["model.embed_tokens.weight"]);
            head.shallow_clone().copy_(&project(src)?);
        }
        Ok::<_, Error>(())
    })?;
    Ok(kept)
}

fn init_layer_subset(student: &nn::VarStore, s_cfg: &LlamaConfig, teacher: &LoadedLm) -> Result<()> {
    let t_vars = teacher.vs.variables();
    let layers = subset_layers(teacher.model.config().num_layers, s_cfg.num_layers);
    tch::no_grad(|| {
        for (name, dst) in student.variables() {
            let src_name = map_layer(&name, &layers);
            let src_name = if name == "lm_head.weight" && !t_vars.contains_key("lm_head.weight") {
                "model.embed_tokens.weight".to_string()
            } else {
                src_name
            };
            let src = t_vars
                .get(&src_name)
                .ok_or_else(|| Error::Invalid(format!("layer-subset init: teacher has no tensor `{src_name}`")))?;
            let mut sl: Tensor = src.shallow_clone();
            for (d, &n) in dst.size().iter().enumerate() {
                let have = sl.size()[d];
                if n > have {
                    return Err(Error::Recipe(format!(
                        "layer-subset init: student `{name}` is wider than the teacher's ({n} > {have} on dim {d}); use init = \"random\""
                    )));
                }
                sl = sl.narrow(d as i64, 0, n);
            }
            dst.shallow_clone().copy_(&sl);
        }
        Ok(())
    })
}

fn map_layer(name: &str, layers: &[i64]) -> String {
    if let Some(rest) = name.strip_prefix("model.layers.") {
        if let Some((i, tail)) = rest.split_once('.') {
            if let Ok(i) = i.parse::<usize>() {
                if let Some(t) = layers.get(i) {
                    return format!("model.layers.{t}.{tail}");
                }
            }
        }
    }
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subset_layers_are_evenly_spaced_with_ends() {
        assert_eq!(subset_layers(30, 6), vec![0, 6, 12, 17, 23, 29]);
        assert_eq!(subset_layers(12, 6), vec![0, 2, 4, 7, 9, 11]);
        assert_eq!(subset_layers(30, 1), vec![0]);
        assert_eq!(
            map_layer("model.layers.3.mlp.up_proj.weight", &[0, 6, 12, 17]),
            "model.layers.17.mlp.up_proj.weight"
        );
        assert_eq!(map_layer("model.norm.weight", &[0]), "model.norm.weight");
    }

    #[test]
    fn teacher_dtype_resolves_explicitly_or_by_measurement() {
        let hf = serde_json::json!({"architectures": ["LlamaForCausalLM"], "vocab_size": 96, "hidden_size": 64,
                                    "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 4});
        let cfg = crate::bench::config_from_json(&hf, "teacher").unwrap();
        let cpu = Device::Cpu;
        assert_eq!(resolve_teacher_kind(TeacherDtype::F32, &cfg, cpu).unwrap().0, Kind::Float);
        assert_eq!(resolve_teacher_kind(TeacherDtype::Bf16, &cfg, cpu).unwrap().0, Kind::BFloat16);
        let s = bf16_matmul_speedup(&cfg, cpu).unwrap();
        assert!(s.is_finite() && s > 0.0, "{s}");
        let (kind, why) = resolve_teacher_kind(TeacherDtype::Auto, &cfg, cpu).unwrap();
        assert!(why.starts_with(if kind == Kind::Float { "f32 (auto" } else { "bf16 (auto" }), "{why}");
    }
}
