//! Causal LMs as teachers and students: loading a teacher from GGUF or a Hugging Face
//! directory (with its tokenizer), the tokenizer identity check, and deriving and initializing a
//! smaller student that shares the teacher's vocabulary.

use std::path::{Path, PathBuf};

use distill_base::guard;
use tch::{nn, Device, Kind};
use tokenizers::Tokenizer;

use crate::io::safetensors::load_named_f32;
use crate::models::lm::config::LayerAttention;
use crate::models::lm::CausalLm;
use crate::models::lm::{Family, LmConfig, RopeScaling};
use crate::{Error, Result};

/// A loaded causal LM with its tokenizer.
pub struct LoadedLm {
    pub vs: nn::VarStore,
    pub model: CausalLm,
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

impl LoadedLm {
    /// `user` as one user turn in the model's chat template, ending where the assistant's answer
    /// starts; an error when the model has none.
    pub fn chat_prompt(&self, user: &str) -> Result<String> {
        let Some(chat) = self.chat() else {
            return Err(Error::Invalid(format!(
                "{} has no chat template (tokenizer.chat_template / chat_template.jinja); drop --chat",
                self.source.display()
            )));
        };
        chat.prompt(user)
    }

    /// The model's chat template with its BOS/EOS strings, when it has one: what renders
    /// conversation records.
    pub fn chat(&self) -> Option<crate::io::chat::ModelChat> {
        let template = self.chat_template.clone()?;
        let name = |id: Option<i64>| id.and_then(|i| self.tokenizer.id_to_token(i as u32)).unwrap_or_default();
        let cfg = self.model.config();
        let (bos, eos) = (name(cfg.bos_token_id), name(cfg.eos_token_ids.first().copied()));
        Some(crate::io::chat::ModelChat { template, bos, eos })
    }
}

impl std::fmt::Debug for LoadedLm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedLm").field("source", &self.source).field("config", self.model.config()).finish()
    }
}

/// Whether `path` is a GGUF file (by its magic bytes).
pub fn is_gguf(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut magic)).is_ok() && &magic == b"GGUF"
}

/// The runtime config of a causal-LM GGUF, from its parsed hyper-parameters `p`; what GGUF
/// headers do not carry (biases, the layer pattern, the local RoPE base, the activation, Gemma's
/// query scale `head_dim^-½`) is what llama.cpp assumes for the architecture (its family's
/// `GGUF` quirks). Phi-3's LongRoPE factors come from its `rope_factors_*` tensors.
pub fn config_from_gguf(file: &distill_gguf::GgufFile, p: &distill_gguf::LlamaGgufParams) -> Result<LmConfig> {
    let family = Family::from_gguf_arch(&p.architecture).ok_or_else(|| {
        let known: Vec<&str> = Family::ALL.iter().filter_map(|f| f.gguf_arch()).collect();
        Error::format(
            file.path(),
            format!("unsupported architecture `{}` (supported: {})", p.architecture, known.join(", ")),
        )
    })?;
    let quirks = family.gguf_quirks();
    if p.block_count as i64 > crate::models::lm::hf::MAX_LAYERS {
        return Err(Error::format(
            file.path(),
            format!("`block_count` {} is outside 1..={}", p.block_count, crate::models::lm::hf::MAX_LAYERS),
        ));
    }
    let id = |k: &str| file.get_u32(k).ok().map(|v| v as i64);
    let sliding_window = p.sliding_window.map(|w| w as i64).or(quirks.sliding_window);
    let pattern = match p.sliding_window_pattern {
        Some(k) => crate::models::lm::families::Pattern::Every(k.max(1)),
        None => quirks.pattern,
    };
    let layer_types = match sliding_window {
        Some(_) => pattern.layer_types(p.block_count),
        None => vec![LayerAttention::Full; p.block_count],
    };
    let factors = |name: &str| -> Result<Option<Vec<f64>>> {
        let Some(info) = file.tensor_info(name) else { return Ok(None) };
        Ok(Some(file.info_f32(info)?.into_iter().map(f64::from).collect()))
    };
    let rope_scaling = match (factors("rope_factors_long.weight")?, factors("rope_factors_short.weight")?) {
        (Some(long_factor), Some(short_factor)) => RopeScaling::LongRope {
            short_factor,
            long_factor,
            original_max_position_embeddings: p.rope_orig_ctx.unwrap_or(p.context_length) as i64,
            attention_factor: p.rope_attn_factor.map_or(1.0, f64::from),
        },
        // llama.cpp's default type is linear; a factor of 0 or 1 is no scaling.
        _ => match (p.rope_scaling_type.as_deref().unwrap_or("linear"), p.rope_scaling_factor) {
            ("linear", Some(f)) if f > 0.0 && f != 1.0 => RopeScaling::Linear { factor: f64::from(f) },
            ("linear" | "none" | "longrope", _) => RopeScaling::Default,
            (other, _) => {
                return Err(Error::format(
                    file.path(),
                    format!("rope scaling type `{other}` is not supported (linear, and Phi-3's longrope)"),
                ))
            }
        },
    };
    let cfg = LmConfig {
        family,
        vocab_size: p.vocab_size as i64,
        hidden_size: p.embedding_length as i64,
        intermediate_size: p.feed_forward_length as i64,
        num_layers: p.block_count as i64,
        num_heads: p.head_count as i64,
        num_kv_heads: p.head_count_kv as i64,
        head_dim: p.head_dim as i64,
        rms_norm_eps: p.rms_norm_eps as f64,
        rope_theta: p.rope_freq_base as f64,
        rope_scaling,
        max_position_embeddings: p.context_length as i64,
        tie_word_embeddings: p.tied_embeddings,
        // The file says by its tensors (Qwen2's are always there, a Qwen3's with attention_bias).
        qkv_bias: file.tensor_info("blk.0.attn_q.bias").is_some() || file.tensor_info("blk.0.attn_qkv.bias").is_some(),
        o_bias: file.tensor_info("blk.0.attn_output.bias").is_some(),
        mlp_bias: false,
        sliding_window,
        layer_types,
        rope_local_theta: p.rope_freq_base_swa.map(f64::from).or(quirks.rope_local_theta),
        rotary_dim: p.rope_dim as i64,
        query_pre_attn_scalar: match quirks.hidden_per_head_scale_layers {
            Some(l) if l == p.block_count as i64 => Some((p.embedding_length / p.head_count) as f64),
            _ => None,
        },
        attn_softcap: p.attn_softcap.map(f64::from).or(quirks.softcaps.0),
        final_softcap: p.final_softcap.map(f64::from).or(quirks.softcaps.1),
        hidden_act: quirks.act,
        attention_dropout: 0.0,
        initializer_range: 0.02,
        bos_token_id: id("tokenizer.ggml.bos_token_id"),
        eos_token_ids: id("tokenizer.ggml.eos_token_id").into_iter().collect(),
        pad_token_id: id("tokenizer.ggml.padding_token_id"),
    };
    cfg.validate().map_err(|m| Error::format(file.path(), m))?;
    Ok(cfg)
}

/// A tokenizer.json read into a tokenizer that cannot take the process down: parsed with any
/// panic caught, its own truncation and padding off (distill packs and pads itself), and a
/// trial — decode the first ids of the vocabulary, encode that text and a test sentence — so
/// that a pipeline that panics (a decoder stripping more than a token holds, a post-processor
/// template naming a second sequence) is an error here, naming the file. Errors the tokenizer
/// reports itself are left to the text that causes them.
pub fn tokenizer_from_json(bytes: &[u8], path: &Path) -> Result<Tokenizer> {
    let bad = |m: String| Error::format(path, format!("not a usable tokenizer.json: {m}"));
    let mut tok = guard::catch(|| Tokenizer::from_bytes(bytes)).map_err(bad)?.map_err(|e| bad(e.to_string()))?;
    tok.with_truncation(None).map_err(|e| bad(e.to_string()))?;
    tok.with_padding(None);
    let ids: Vec<u32> = (0..tok.get_vocab_size(true).min(64) as u32).collect();
    let text = guard::catch(|| tok.decode(&ids, true))
        .map_err(|p| bad(format!("decoding its first tokens panicked: {p}")))?
        .unwrap_or_default();
    for t in [text.as_str(), "Hello, world! 1234 \u{2014} \u{e7}a va?\n"] {
        let _ = guard::catch(|| tok.encode(t, false)).map_err(|p| bad(format!("encoding text panicked: {p}")))?;
    }
    Ok(tok)
}

/// Loads a causal LM from a GGUF file or an HF directory, frozen (no gradients), in f32.
pub fn load_lm(path: &Path, device: Device) -> Result<LoadedLm> {
    if path.is_dir() {
        let (mut vs, model) = CausalLm::from_pretrained(path, device, Kind::Float)?;
        vs.freeze();
        let tj = path.join("tokenizer.json");
        let tokenizer_json = std::fs::read(&tj).map_err(|e| Error::io(&tj, e))?;
        let tokenizer = tokenizer_from_json(&tokenizer_json, &tj)?;
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
    let file = distill_gguf::GgufFile::open(path)?;
    let params = distill_gguf::LlamaGgufParams::from_gguf(&file)?;
    let cfg = config_from_gguf(&file, &params)?;
    let held = file.tensors().iter().try_fold(0u64, |acc, t| acc.checked_add(t.n_elements())).unwrap_or(u64::MAX);
    cfg.check_fits(held).map_err(|m| Error::format(path, format!("its metadata {m}")))?;
    let mut vs = nn::VarStore::new(device);
    let model = CausalLm::new(vs.root(), &cfg)?;
    let opts = CausalLm::load_options(&cfg);
    let mut tensors: Vec<(String, Vec<i64>, Vec<f32>)> = Vec::new();
    for t in distill_gguf::hf_tensors(&file, &params) {
        let t = t?;
        let shape: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
        match opts.split_of(&t.name, shape.first().copied().unwrap_or(0)) {
            // Phi-3's fused projections, split as the model holds them.
            Some(parts) => {
                let cols: usize = t.shape.iter().skip(1).product();
                for (name, start, rows) in parts.map_err(|m| Error::format(path, m))? {
                    let (a, b) = (start as usize * cols, (start + rows) as usize * cols);
                    let mut part_shape = shape.clone();
                    part_shape[0] = rows;
                    tensors.push((name, part_shape, t.data[a..b].to_vec()));
                }
            }
            None => tensors.push((t.name, shape, t.data)),
        }
    }
    load_named_f32(&mut vs, path, tensors, &opts)?;
    vs.freeze();
    let tokenizer = distill_gguf::tokenizer_from_gguf(&file)?;
    let tokenizer_json = tokenizer
        .to_string(false)
        .map_err(|e| Error::format(path, format!("cannot serialize its tokenizer: {e}")))?
        .into_bytes();
    let file_bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let chat_template = file.get_str("tokenizer.chat_template").ok().map(str::to_string);
    Ok(LoadedLm { vs, model, tokenizer, tokenizer_json, file_bytes, source: path.to_path_buf(), chat_template })
}

/// What `distill check` reads of a model without its weights: the config (an HF `config.json`
/// or a GGUF header — an unsupported family, a bad key or a GGUF of another architecture is an
/// error naming it), the tokenizer (`tokenizer.json` or the GGUF's), and the tensor names the
/// family needs against those the files hold (a missing tensor is named). Returns the config and
/// the tokenizer.
pub fn check_model_files(path: &Path) -> Result<(LmConfig, Tokenizer)> {
    if !path.exists() {
        return Err(Error::Invalid(format!("{}: no such file or directory", path.display())));
    }
    let (cfg, held): (LmConfig, Vec<String>) = if path.is_dir() {
        let cfg = LmConfig::from_file(path.join("config.json"))?;
        let opts = CausalLm::load_options(&cfg);
        let mut names = Vec::new();
        for (name, shape) in crate::io::safetensors::tensor_shapes(path)? {
            match opts.split_of(&name, shape.first().copied().unwrap_or(0)) {
                Some(parts) => names.extend(parts.map_err(|m| Error::format(path, m))?.into_iter().map(|p| p.0)),
                None => names.push(name),
            }
        }
        (cfg, names)
    } else {
        if !is_gguf(path) {
            return Err(Error::format(path, "neither a GGUF file nor a Hugging Face directory"));
        }
        let file = distill_gguf::GgufFile::open(path)?;
        let params = distill_gguf::LlamaGgufParams::from_gguf(&file)?;
        let cfg = config_from_gguf(&file, &params)?;
        let opts = CausalLm::load_options(&cfg);
        let mut names = Vec::new();
        for t in file.tensors() {
            let Some(name) = distill_gguf::hf_name_in(&params.architecture, &t.name) else { continue };
            match opts.split_of(&name, t.shape().first().copied().unwrap_or(0) as i64) {
                Some(parts) => names.extend(parts.map_err(|m| Error::format(path, m))?.into_iter().map(|p| p.0)),
                None => names.push(name),
            }
        }
        (cfg, names)
    };
    let tokenizer = load_tokenizer(path)?;
    // The names a model of this family and depth holds, from a copy a few values wide.
    let skeleton = LmConfig {
        vocab_size: 2,
        hidden_size: 2 * cfg.num_heads,
        intermediate_size: 2,
        head_dim: 2,
        rotary_dim: 2,
        rope_scaling: RopeScaling::Default,
        bos_token_id: None,
        eos_token_ids: vec![],
        pad_token_id: None,
        ..cfg.clone()
    };
    let vs = nn::VarStore::new(Device::Cpu);
    let _ = CausalLm::new(vs.root(), &skeleton)?;
    let mut missing: Vec<String> = vs.variables().into_keys().filter(|n| !held.contains(n)).collect();
    missing.sort();
    if let Some(first) = missing.first() {
        return Err(Error::format(
            path,
            format!(
                "missing tensor `{first}`{} (a {} model of {} layers needs it)",
                if missing.len() > 1 { format!(" and {} more", missing.len() - 1) } else { String::new() },
                cfg.family.hf_class(),
                cfg.num_layers
            ),
        ));
    }
    Ok((cfg, tokenizer))
}

/// The chat template of a model (GGUF `tokenizer.chat_template`, or an HF directory's), with the
/// BOS/EOS strings of `cfg` in `tok`, without reading any weights; `None` when it has none.
pub fn model_chat(path: &Path, cfg: &LmConfig, tok: &Tokenizer) -> Result<Option<crate::io::chat::ModelChat>> {
    let template = if path.is_dir() {
        hf_chat_template(path)
    } else {
        distill_gguf::GgufFile::open(path)?.get_str("tokenizer.chat_template").ok().map(str::to_string)
    };
    let name = |id: Option<i64>| id.and_then(|i| tok.id_to_token(i as u32)).unwrap_or_default();
    Ok(template.map(|template| crate::io::chat::ModelChat {
        template,
        bos: name(cfg.bos_token_id),
        eos: name(cfg.eos_token_ids.first().copied()),
    }))
}

/// The tokenizer of a GGUF file or a Hugging Face directory, without reading any weights.
pub fn load_tokenizer(path: &Path) -> Result<Tokenizer> {
    if path.is_dir() {
        let tj = path.join("tokenizer.json");
        let bytes = std::fs::read(&tj).map_err(|e| Error::io(&tj, e))?;
        return tokenizer_from_json(&bytes, &tj);
    }
    if !path.exists() {
        return Err(Error::Invalid(format!("{}: no such file or directory", path.display())));
    }
    if !is_gguf(path) {
        return Err(Error::format(path, "neither a GGUF file nor a Hugging Face directory"));
    }
    let file = distill_gguf::GgufFile::open(path)?;
    Ok(distill_gguf::tokenizer_from_gguf(&file)?)
}

/// Checks, before any weights load, that every teacher of a multi-teacher recipe has the first
/// one's tokenizer; the error names the teacher that differs and how.
pub fn check_same_tokenizer(paths: &[(String, &Path)]) -> Result<()> {
    let Some((first_key, first)) = paths.first() else { return Ok(()) };
    let want = load_tokenizer(first)?;
    for (key, p) in &paths[1..] {
        check_tokenizer_of(
            (key, p),
            (first_key, first, &want),
            "multi-teacher KD mixes distributions token by token, so every teacher needs the same tokenizer",
        )?;
    }
    Ok(())
}

/// Reads the tokenizer of the model at `path` (no weights) and checks it equals `want`, the
/// tokenizer of `want_key` at `want_path`; the error names both, the vocabulary sizes and
/// fingerprints, and `why` they must be equal.
pub fn check_tokenizer_of(
    (key, path): (&str, &Path),
    (want_key, want_path, want): (&str, &Path, &Tokenizer),
    why: &str,
) -> Result<()> {
    let tok = load_tokenizer(path)?;
    let (got, fp) = (tokenizer_fingerprint(&tok), tokenizer_fingerprint(want));
    if got != fp {
        return Err(Error::Invalid(format!(
            "{key} ({}) has a different tokenizer than {want_key} ({}): {} vs {} tokens, fingerprint {got:.12} vs {fp:.12}; {why}",
            path.display(),
            want_path.display(),
            tok.get_vocab_size(true),
            want.get_vocab_size(true)
        )));
    }
    Ok(())
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
