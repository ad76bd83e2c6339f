//! Sentence encoders: a BERT directory in sentence-transformers' layout (`modules.json`,
//! `1_Pooling/config.json`, an optional `Dense` and `Normalize`) loaded with its tokenizer, texts
//! embedded in length-sorted batches, and the export back to that layout; and the static
//! (Model2Vec-style) encoder — one vector per vocabulary token, averaged — with its own layout.
//!
//! Texts longer than the model's maximum length (`sentence_bert_config.json`'s
//! `max_seq_length`, else `max_position_embeddings`) are truncated as sentence-transformers
//! truncates them (the tokens past the limit are dropped, `[SEP]` kept), with one warning per
//! call that says how many were.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use tch::{nn, nn::Module, Device, Kind, Tensor};
use tokenizers::{Tokenizer, TruncationParams};

use crate::io::lm::tokenizer_from_json;
use crate::io::safetensors::save_safetensors;
use crate::models::bert::{load_weights, mean_pool, Bert, BertConfig, BertOutputs};
use crate::train::checkpoint::write_json;
use crate::{Error, Result};

/// How token states become one vector (`1_Pooling/config.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Pooling {
    Mean,
    Cls,
    Max,
}

/// Anything that turns texts into vectors: a transformer encoder or a static one.
pub trait Embedder {
    /// `[N, D]` float embeddings of `texts`, `batch` at a time.
    fn embed(&self, texts: &[String], batch: usize) -> Result<Tensor>;
    /// Output width.
    fn dim(&self) -> i64;
    /// Parameters.
    fn params(&self) -> i64;
}

/// A BERT sentence encoder: weights, tokenizer, pooling, optional dense head and normalisation.
pub struct Encoder {
    pub vs: nn::VarStore,
    pub bert: Bert,
    pub tokenizer: Tokenizer,
    /// tokenizer.json as read, for export.
    pub tokenizer_json: Vec<u8>,
    /// Tokens per text, special tokens included.
    pub max_len: usize,
    pub pooling: Pooling,
    /// A `Dense` module after pooling (`[out, in]` weight and bias), e.g. a narrow student's
    /// projection back to its teacher's width.
    pub dense: Option<nn::Linear>,
    pub normalize: bool,
    /// Extra tokenizer files copied on export (`vocab.txt`, `tokenizer_config.json`, …).
    pub tokenizer_files: Vec<(String, Vec<u8>)>,
    /// Whether the truncation warning was printed already (once per encoder).
    pub warned: std::cell::Cell<bool>,
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::format(path, format!("not JSON: {e}")))
}

/// The tokenizer files copied beside an exported encoder.
const TOKENIZER_FILES: [&str; 3] = ["vocab.txt", "tokenizer_config.json", "special_tokens_map.json"];

/// The sentence-transformers modules of `dir` after the transformer: pooling, dense, normalize.
struct StLayout {
    pooling: Pooling,
    dense: Option<(PathBuf, i64, i64)>,
    normalize: bool,
    max_len: Option<usize>,
}

fn st_layout(dir: &Path) -> Result<StLayout> {
    let mut out = StLayout { pooling: Pooling::Mean, dense: None, normalize: false, max_len: None };
    let sb = dir.join("sentence_bert_config.json");
    if sb.is_file() {
        out.max_len = read_json(&sb)?.get("max_seq_length").and_then(Value::as_u64).map(|v| v as usize);
    }
    let modules = dir.join("modules.json");
    let list = if modules.is_file() {
        read_json(&modules)?.as_array().cloned().ok_or_else(|| Error::format(&modules, "expected a JSON list"))?
    } else {
        vec![]
    };
    for m in &list {
        let ty = m.get("type").and_then(Value::as_str).unwrap_or("");
        let sub = dir.join(m.get("path").and_then(Value::as_str).unwrap_or(""));
        match ty.rsplit('.').next().unwrap_or("") {
            "Transformer" | "" => {}
            "Pooling" => {
                let c = read_json(&sub.join("config.json"))?;
                let on = |k: &str| c.get(k).and_then(Value::as_bool).unwrap_or(false);
                let mode = c.get("pooling_mode").and_then(Value::as_str).unwrap_or("");
                out.pooling = if on("pooling_mode_cls_token") || mode == "cls" {
                    Pooling::Cls
                } else if on("pooling_mode_max_tokens") || mode == "max" {
                    Pooling::Max
                } else if on("pooling_mode_mean_tokens") || mode == "mean" {
                    Pooling::Mean
                } else {
                    return Err(Error::format(sub.join("config.json"), "pooling mode not supported (mean, cls, max)"));
                };
            }
            "Dense" => {
                let cfgp = sub.join("config.json");
                let c = read_json(&cfgp)?;
                let get = |k: &str| {
                    c.get(k)
                        .and_then(Value::as_i64)
                        .ok_or_else(|| Error::format(&cfgp, format!("Dense config lacks `{k}`")))
                };
                let act = c.get("activation_function").and_then(Value::as_str).unwrap_or("");
                if !act.ends_with("Identity") {
                    return Err(Error::format(&cfgp, format!("Dense activation `{act}` is not supported (Identity)")));
                }
                out.dense = Some((sub.join("model.safetensors"), get("in_features")?, get("out_features")?));
            }
            "Normalize" => out.normalize = true,
            other => return Err(Error::format(&modules, format!("module type `{other}` is not supported"))),
        }
    }
    Ok(out)
}

impl Encoder {
    /// Loads a BERT directory (HF BertModel, optionally in sentence-transformers' layout) on
    /// `device`, frozen. A directory that is not one is one error naming the missing piece.
    pub fn load(dir: &Path, device: Device) -> Result<Encoder> {
        if !dir.is_dir() {
            return Err(Error::Invalid(format!(
                "{}: not a directory (expected a BERT model directory)",
                dir.display()
            )));
        }
        for f in ["config.json", "model.safetensors", "tokenizer.json"] {
            if !dir.join(f).is_file() {
                return Err(Error::format(dir, format!("not a BERT encoder directory: no {f}")));
            }
        }
        let config = BertConfig::from_file(&dir.join("config.json"))?;
        let layout = st_layout(dir)?;
        let tj = dir.join("tokenizer.json");
        let tokenizer_json = std::fs::read(&tj).map_err(|e| Error::io(&tj, e))?;
        let mut files = Vec::new();
        for f in TOKENIZER_FILES {
            if let Ok(b) = std::fs::read(dir.join(f)) {
                files.push((f.to_string(), b));
            }
        }
        let max_len = layout.max_len.unwrap_or(config.max_position_embeddings as usize);
        let mut enc = Encoder::build(config, device, &tokenizer_json, &tj, max_len, layout.pooling, layout.normalize)?;
        enc.tokenizer_files = files;
        if let Some((_, i, o)) = &layout.dense {
            enc.add_dense(*i, *o)?;
        }
        load_weights(&mut enc.vs, &dir.join("model.safetensors"), "dense.")?;
        if let Some((file, _, _)) = &layout.dense {
            load_dense(&enc, file)?;
        }
        enc.vs.freeze();
        Ok(enc)
    }

    /// A fresh encoder of `config` (random weights) with a tokenizer and pooling settings.
    pub fn build(
        config: BertConfig,
        device: Device,
        tokenizer_json: &[u8],
        tokenizer_path: &Path,
        max_len: usize,
        pooling: Pooling,
        normalize: bool,
    ) -> Result<Encoder> {
        let max_len = max_len.clamp(2, config.max_position_embeddings as usize);
        let mut tokenizer = tokenizer_from_json(tokenizer_json, tokenizer_path)?;
        let trunc = TruncationParams { max_length: max_len, ..Default::default() };
        tokenizer.with_truncation(Some(trunc)).map_err(|e| Error::format(tokenizer_path, e.to_string()))?;
        if tokenizer.get_vocab_size(true) as i64 > config.vocab_size {
            return Err(Error::format(
                tokenizer_path,
                format!(
                    "{} tokens, but the model has {} embeddings",
                    tokenizer.get_vocab_size(true),
                    config.vocab_size
                ),
            ));
        }
        let vs = nn::VarStore::new(device);
        let bert = Bert::new(&vs.root(), &config);
        Ok(Encoder {
            vs,
            bert,
            tokenizer,
            tokenizer_json: tokenizer_json.to_vec(),
            max_len,
            pooling,
            dense: None,
            normalize,
            tokenizer_files: vec![],
            warned: std::cell::Cell::new(false),
        })
    }

    /// Adds a trainable `Dense` head `in → out` (identity-free random init; set its weights).
    pub fn add_dense(&mut self, inp: i64, out: i64) -> Result<()> {
        if inp != self.bert.config.hidden_size {
            return Err(Error::Invalid(format!(
                "Dense in_features {inp} differs from the encoder's width {}",
                self.bert.config.hidden_size
            )));
        }
        self.dense = Some(nn::linear(self.vs.root() / "dense", inp, out, Default::default()));
        Ok(())
    }

    /// Token ids of each text (special tokens added, truncated to `max_len`) and how many texts
    /// were truncated.
    pub fn tokenize(&self, texts: &[String]) -> Result<(Vec<Vec<i64>>, usize)> {
        let mut out = Vec::with_capacity(texts.len());
        let mut truncated = 0;
        let encode = |t: &str| {
            distill_base::guard::catch(|| self.tokenizer.encode(t, true))
                .map_err(|p| Error::Invalid(format!("tokenizer panicked: {p}")))?
                .map_err(|e| Error::Invalid(format!("tokenizer: {e}")))
        };
        // A long text is first tokenized from a prefix cut at whitespace (the pre-tokenizer
        // splits there, so the prefix's tokens are the text's first tokens): when that already
        // overflows, the truncated result is the full text's. Otherwise the whole text is read.
        let cut = 32 * self.max_len;
        for t in texts {
            let prefix = (t.len() > cut).then(|| {
                let mut end = cut;
                while !t.is_char_boundary(end) {
                    end -= 1;
                }
                &t[..t[..end].rfind(char::is_whitespace).unwrap_or(end)]
            });
            let enc = match prefix.map(encode).transpose()? {
                Some(e) if !e.get_overflowing().is_empty() => e,
                _ => encode(t)?,
            };
            if !enc.get_overflowing().is_empty() {
                truncated += 1;
            }
            out.push(enc.get_ids().iter().map(|&i| i as i64).collect());
        }
        Ok((out, truncated))
    }

    /// Pads `rows` to their longest → (ids `[B, T]`, mask `[B, T]`) on the encoder's device.
    pub fn pad(&self, rows: &[&[i64]]) -> (Tensor, Tensor) {
        let t = rows.iter().map(|r| r.len()).max().unwrap_or(1).max(1);
        let pad = self.bert.config.pad_token_id;
        let mut ids = Vec::with_capacity(rows.len() * t);
        let mut mask = Vec::with_capacity(rows.len() * t);
        for r in rows {
            ids.extend_from_slice(r);
            mask.extend(std::iter::repeat_n(1i64, r.len()));
            ids.extend(std::iter::repeat_n(pad, t - r.len()));
            mask.extend(std::iter::repeat_n(0i64, t - r.len()));
        }
        let dev = self.vs.device();
        let b = rows.len() as i64;
        (Tensor::from_slice(&ids).view([b, t as i64]).to(dev), Tensor::from_slice(&mask).view([b, t as i64]).to(dev))
    }

    /// Forward of a padded batch → (outputs, the sentence embedding `[B, D]`).
    pub fn forward(&self, ids: &Tensor, mask: &Tensor, attentions: bool, train: bool) -> (BertOutputs, Tensor) {
        let out = self.bert.forward(ids, mask, attentions, train);
        let e = self.pool(out.last(), mask);
        (out, e)
    }

    /// Pooling, dense head and normalisation of the last hidden state.
    pub fn pool(&self, last: &Tensor, mask: &Tensor) -> Tensor {
        let mut e = match self.pooling {
            Pooling::Mean => mean_pool(last, mask),
            Pooling::Cls => last.select(1, 0),
            Pooling::Max => {
                let m = mask.unsqueeze(-1).to_kind(Kind::Bool);
                last.masked_fill(&m.logical_not(), -1e9).amax([1i64].as_slice(), false)
            }
        };
        if let Some(d) = &self.dense {
            e = d.forward(&e);
        }
        if self.normalize {
            e = normalize(&e);
        }
        e
    }

    /// Writes the encoder as a sentence-transformers directory (BertModel weights and config,
    /// tokenizer, `modules.json`, pooling, dense and normalize modules), atomically.
    pub fn save(&self, out: &Path) -> Result<()> {
        crate::io::export::write_dir(out, |tmp| {
            let tensors: Vec<(String, Tensor)> = tch::no_grad(|| {
                let mut v: Vec<(String, Tensor)> = self
                    .vs
                    .variables()
                    .into_iter()
                    .filter(|(k, _)| !k.starts_with("dense.") && !k.starts_with("distill_"))
                    .map(|(k, t)| (k, t.to_kind(Kind::Float).to(Device::Cpu)))
                    .collect();
                v.sort_by(|a, b| a.0.cmp(&b.0));
                v
            });
            save_safetensors(&tensors, tmp.join("model.safetensors"))?;
            write_json(&tmp.join("config.json"), &self.bert.config.to_hf_json())?;
            crate::train::checkpoint::write_atomic(&tmp.join("tokenizer.json"), &self.tokenizer_json)?;
            for (name, bytes) in &self.tokenizer_files {
                crate::train::checkpoint::write_atomic(&tmp.join(name), bytes)?;
            }
            write_json(
                &tmp.join("sentence_bert_config.json"),
                &json!({"max_seq_length": self.max_len, "do_lower_case": false}),
            )?;
            let h = self.bert.config.hidden_size;
            let mut modules = vec![
                json!({"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}),
                json!({"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}),
            ];
            std::fs::create_dir_all(tmp.join("1_Pooling")).map_err(|e| Error::io(tmp, e))?;
            write_json(
                &tmp.join("1_Pooling/config.json"),
                &json!({
                    "word_embedding_dimension": h,
                    "pooling_mode_cls_token": self.pooling == Pooling::Cls,
                    "pooling_mode_mean_tokens": self.pooling == Pooling::Mean,
                    "pooling_mode_max_tokens": self.pooling == Pooling::Max,
                    "pooling_mode_mean_sqrt_len_tokens": false,
                }),
            )?;
            if let Some(d) = &self.dense {
                let (o, i) = d.ws.size2().map_err(Error::Torch)?;
                let sub = tmp.join("2_Dense");
                std::fs::create_dir_all(&sub).map_err(|e| Error::io(&sub, e))?;
                write_json(
                    &sub.join("config.json"),
                    &json!({"in_features": i, "out_features": o, "bias": true,
                            "activation_function": "torch.nn.modules.linear.Identity"}),
                )?;
                let bs =
                    d.bs.as_ref().map(|b| b.detach()).unwrap_or_else(|| Tensor::zeros([o], (Kind::Float, Device::Cpu)));
                let w = vec![
                    ("linear.weight".to_string(), d.ws.detach().to(Device::Cpu)),
                    ("linear.bias".to_string(), bs.to(Device::Cpu)),
                ];
                save_safetensors(&w, sub.join("model.safetensors"))?;
                modules.push(
                    json!({"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}),
                );
            }
            if self.normalize {
                let idx = modules.len();
                let path = format!("{idx}_Normalize");
                std::fs::create_dir_all(tmp.join(&path)).map_err(|e| Error::io(tmp, e))?;
                modules.push(json!({"idx": idx, "name": idx.to_string(), "path": path,
                                    "type": "sentence_transformers.models.Normalize"}));
            }
            write_json(&tmp.join("modules.json"), &modules)?;
            Ok(())
        })
    }

    /// Bytes of the weights as exported (f32).
    pub fn size_bytes(&self) -> i64 {
        self.params() * 4
    }

    /// The sentence embeddings `[N, D]` of token rows (as [`Encoder::tokenize`] gives them).
    pub fn embed_ids(&self, ids: &[Vec<i64>], batch: usize) -> Tensor {
        embed_sorted(ids, batch, |rows| {
            let (x, m) = self.pad(rows);
            tch::no_grad(|| self.forward(&x, &m, false, false).1).to_kind(Kind::Float).to(Device::Cpu)
        })
    }
}

impl Embedder for Encoder {
    fn embed(&self, texts: &[String], batch: usize) -> Result<Tensor> {
        let (ids, truncated) = self.tokenize(texts)?;
        if truncated > 0 && !self.warned.replace(true) {
            warn_truncated(truncated, texts.len(), self.max_len);
        }
        Ok(self.embed_ids(&ids, batch))
    }

    fn dim(&self) -> i64 {
        match &self.dense {
            Some(d) => d.ws.size()[0],
            None => self.bert.config.hidden_size,
        }
    }

    fn params(&self) -> i64 {
        self.vs.variables().values().map(|t| t.numel() as i64).sum()
    }
}

/// One warning line when texts were cut to the model's maximum length.
pub fn warn_truncated(truncated: usize, total: usize, max_len: usize) {
    if truncated > 0 {
        eprintln!(
            "warning: {truncated} of {total} texts are longer than the model's {max_len} tokens and were truncated"
        );
    }
}

/// Runs `f` over batches of `ids` sorted by length (longest first, as sentence-transformers
/// does, so a batch pads little) and returns the rows in the original order.
pub fn embed_sorted(ids: &[Vec<i64>], batch: usize, mut f: impl FnMut(&[&[i64]]) -> Tensor) -> Tensor {
    let mut order: Vec<usize> = (0..ids.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(ids[i].len()));
    let mut parts = Vec::new();
    for chunk in order.chunks(batch.max(1)) {
        let rows: Vec<&[i64]> = chunk.iter().map(|&i| ids[i].as_slice()).collect();
        parts.push(f(&rows));
    }
    if parts.is_empty() {
        return Tensor::zeros([0, 0], (Kind::Float, Device::Cpu));
    }
    let sorted = Tensor::cat(&parts, 0);
    let mut inv = vec![0i64; ids.len()];
    for (pos, &i) in order.iter().enumerate() {
        inv[i] = pos as i64;
    }
    sorted.index_select(0, &Tensor::from_slice(&inv))
}

/// Rows scaled to unit L2 norm (zero rows stay zero), as `torch.nn.functional.normalize`.
pub fn normalize(e: &Tensor) -> Tensor {
    let n = e.norm_scalaropt_dim(2, [-1i64].as_slice(), true).clamp_min(1e-12);
    e / n
}

fn load_dense(enc: &Encoder, file: &Path) -> Result<()> {
    let Some(d) = &enc.dense else { return Ok(()) };
    let t = Tensor::read_safetensors(file).map_err(|e| Error::format(file, format!("Dense weights: {e}")))?;
    let get = |n: &str| {
        t.iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.shallow_clone())
            .ok_or_else(|| Error::format(file, format!("no tensor `{n}`")))
    };
    let w = get("linear.weight")?;
    if w.size() != d.ws.size() {
        return Err(Error::format(file, format!("linear.weight has shape {:?}, expected {:?}", w.size(), d.ws.size())));
    }
    tch::no_grad(|| {
        d.ws.shallow_clone().copy_(&w);
        if let (Some(b), Ok(src)) = (&d.bs, get("linear.bias")) {
            b.shallow_clone().copy_(&src);
        }
    });
    Ok(())
}

/// A static encoder (Model2Vec): one vector per vocabulary token; a text's embedding is the
/// mean of its tokens' vectors (no special tokens), optionally normalised.
pub struct StaticEncoder {
    /// `[V, D]`.
    pub embeddings: Tensor,
    pub tokenizer: Tokenizer,
    pub tokenizer_json: Vec<u8>,
    pub normalize: bool,
    /// Tokens read per text.
    pub max_len: usize,
    /// The unknown token, dropped from texts (as Model2Vec).
    pub unk: Option<i64>,
}

impl StaticEncoder {
    /// Loads a Model2Vec directory (`model.safetensors` with `embeddings`, `tokenizer.json`,
    /// `config.json`).
    pub fn load(dir: &Path) -> Result<StaticEncoder> {
        for f in ["config.json", "model.safetensors", "tokenizer.json"] {
            if !dir.join(f).is_file() {
                return Err(Error::format(dir, format!("not a static (Model2Vec) directory: no {f}")));
            }
        }
        let cfg = read_json(&dir.join("config.json"))?;
        let file = dir.join("model.safetensors");
        let t = Tensor::read_safetensors(&file).map_err(|e| Error::format(&file, format!("not safetensors: {e}")))?;
        let e = t
            .into_iter()
            .find(|(k, _)| k == "embeddings")
            .map(|(_, v)| v.to_kind(Kind::Float))
            .ok_or_else(|| Error::format(&file, "no tensor `embeddings`"))?;
        if e.dim() != 2 {
            return Err(Error::format(&file, format!("`embeddings` has shape {:?}, expected [vocab, dim]", e.size())));
        }
        let tj = dir.join("tokenizer.json");
        let tokenizer_json = std::fs::read(&tj).map_err(|e| Error::io(&tj, e))?;
        let tokenizer = tokenizer_from_json(&tokenizer_json, &tj)?;
        if tokenizer.get_vocab_size(true) as i64 > e.size()[0] {
            return Err(Error::format(&file, "fewer embeddings than tokenizer tokens"));
        }
        let unk = tokenizer.token_to_id("[UNK]").map(|i| i as i64);
        Ok(StaticEncoder {
            embeddings: e,
            tokenizer,
            tokenizer_json,
            normalize: cfg.get("normalize").and_then(Value::as_bool).unwrap_or(false),
            max_len: cfg.get("seq_length").and_then(Value::as_u64).unwrap_or(512) as usize,
            unk,
        })
    }

    /// Token ids of each text without special tokens, at most `max_len`.
    fn ids(&self, texts: &[String]) -> Result<Vec<Vec<i64>>> {
        // One batch call: the tokenizer encodes the texts in parallel.
        let inputs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let encs = distill_base::guard::catch(|| self.tokenizer.encode_batch(inputs, false))
            .map_err(|p| Error::Invalid(format!("tokenizer panicked: {p}")))?
            .map_err(|e| Error::Invalid(format!("tokenizer: {e}")))?;
        Ok(encs
            .iter()
            .map(|enc| {
                let ids = enc.get_ids().iter().map(|&i| i as i64).filter(|&i| Some(i) != self.unk);
                ids.take(self.max_len).collect()
            })
            .collect())
    }

    /// Writes the Model2Vec layout: `model.safetensors` (`embeddings` `[V, D]`), `tokenizer.json`
    /// and `config.json`, atomically.
    pub fn save(&self, out: &Path, base_model: &str) -> Result<()> {
        crate::io::export::write_dir(out, |tmp| {
            let e = self.embeddings.to_kind(Kind::Float).to(Device::Cpu);
            save_safetensors(&[("embeddings".to_string(), e)], tmp.join("model.safetensors"))?;
            crate::train::checkpoint::write_atomic(&tmp.join("tokenizer.json"), &self.tokenizer_json)?;
            write_json(
                &tmp.join("config.json"),
                &json!({
                    "model_type": "model2vec",
                    "architectures": ["StaticModel"],
                    "tokenizer_name": base_model,
                    "apply_pca": self.embeddings.size()[1],
                    "apply_zipf": true,
                    "hidden_dim": self.embeddings.size()[1],
                    "seq_length": self.max_len,
                    "normalize": self.normalize,
                }),
            )?;
            Ok(())
        })
    }
}

impl Embedder for StaticEncoder {
    fn embed(&self, texts: &[String], batch: usize) -> Result<Tensor> {
        let ids = self.ids(texts)?;
        Ok(embed_sorted(&ids, batch, |rows| {
            // Mean of each row's vectors in one `embedding_bag` (an empty row is zeros).
            let flat: Vec<i64> = rows.iter().flat_map(|r| r.iter().copied()).collect();
            let offsets: Vec<i64> = rows
                .iter()
                .scan(0i64, |acc, r| {
                    let o = *acc;
                    *acc += r.len() as i64;
                    Some(o)
                })
                .collect();
            let (e, _, _, _) = Tensor::embedding_bag(
                &self.embeddings,
                &Tensor::from_slice(&flat),
                &Tensor::from_slice(&offsets),
                false,
                1,
                false,
                None::<Tensor>,
                false,
            );
            if self.normalize {
                normalize(&e)
            } else {
                e
            }
        }))
    }

    fn dim(&self) -> i64 {
        self.embeddings.size()[1]
    }

    fn params(&self) -> i64 {
        self.embeddings.numel() as i64
    }
}

/// The `model_type` of `dir/config.json`, when it has one.
pub fn model_type(dir: &Path) -> Option<String> {
    let v = read_json(&dir.join("config.json")).ok()?;
    v.get("model_type").and_then(Value::as_str).map(str::to_string)
}

/// Loads a sentence encoder directory: Model2Vec (`model_type` `model2vec`) or BERT.
pub fn load_embedder(dir: &Path) -> Result<Box<dyn Embedder>> {
    if model_type(dir).as_deref() == Some("model2vec") {
        Ok(Box::new(StaticEncoder::load(dir)?))
    } else {
        Ok(Box::new(Encoder::load(dir, Device::Cpu)?))
    }
}

/// Writes `[N, D]` float32 as a NumPy `.npy` file (format 1.0), atomically.
pub fn write_npy(path: &Path, e: &Tensor) -> Result<()> {
    let (n, d) = e.size2()?;
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({n}, {d}), }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    let v: Vec<f32> = e.to_kind(Kind::Float).to(Device::Cpu).contiguous().view([-1]).try_into()?;
    for x in v {
        bytes.extend_from_slice(&x.to_le_bytes());
    }
    crate::train::checkpoint::write_atomic(path, &bytes)
}
