//! BERT encoder (BertModel: all-MiniLM, DistilBERT-style students) on tch.
//!
//! Embeddings (word + absolute position + token type) → LayerNorm → L × [self-attention with
//! the padding mask → dense → residual → LayerNorm → GELU MLP → residual → LayerNorm] (post-LN).
//! The numerics follow transformers' `modeling_bert.py` (eager attention: scores `qkᵀ/√hd` plus
//! the dtype's minimum at padded keys, softmax, exact erf GELU), so hidden states match it to
//! float32 rounding. The pooler is not built: sentence encoders pool the last hidden state.
//!
//! Parameter names follow the HF module tree (`embeddings.word_embeddings.weight`,
//! `encoder.layer.{i}.attention.self.query.weight`, …), so a `VarStore` loads BertModel
//! safetensors by name (with or without the `bert.` prefix of BertFor* heads) and saves them.
//!
//! # Shapes
//! `B` batch, `T` tokens, `H` hidden, `nh` heads, `hd = H / nh`, `I` MLP width, `L` layers.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

use crate::{Error, Result};

/// The BertModel fields of a `config.json` that the forward pass reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct BertConfig {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub intermediate_size: i64,
    pub max_position_embeddings: i64,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: i64,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default)]
    pub pad_token_id: i64,
}

fn default_type_vocab() -> i64 {
    2
}
fn default_eps() -> f64 {
    1e-12
}
fn default_act() -> String {
    "gelu".into()
}

impl BertConfig {
    /// Reads a BERT `config.json`. A file of another architecture, or one lacking a field the
    /// forward pass needs, is one error naming what is wrong.
    pub fn from_file(path: &Path) -> Result<BertConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| Error::format(path, format!("not JSON: {e}")))?;
        let ty = v.get("model_type").and_then(|t| t.as_str()).unwrap_or("");
        if ty != "bert" {
            let what = if ty.is_empty() { "no `model_type`".to_string() } else { format!("model_type `{ty}`") };
            return Err(Error::format(path, format!("not a BERT encoder: {what} (expected `bert`)")));
        }
        for key in ["vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"] {
            if v.get(key).and_then(|x| x.as_i64()).is_none() {
                return Err(Error::format(path, format!("BERT config lacks `{key}`")));
            }
        }
        let mut v = v;
        if v.get("max_position_embeddings").is_none() {
            v["max_position_embeddings"] = 512.into();
        }
        let c: BertConfig = serde_json::from_value(v).map_err(|e| Error::format(path, format!("BERT config: {e}")))?;
        c.validate().map_err(|m| Error::format(path, m))?;
        Ok(c)
    }

    /// Checks the sizes against each other.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let pos = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("type_vocab_size", self.type_vocab_size),
        ];
        if let Some((k, v)) = pos.iter().find(|(_, v)| *v <= 0 || *v > 1 << 24) {
            return Err(format!("`{k}` = {v} is out of range"));
        }
        if self.hidden_size % self.num_attention_heads != 0 {
            return Err(format!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !matches!(self.hidden_act.as_str(), "gelu" | "gelu_new" | "gelu_pytorch_tanh" | "relu") {
            return Err(format!("hidden_act `{}` is not supported (gelu, gelu_new, relu)", self.hidden_act));
        }
        Ok(())
    }

    /// The HF `config.json` of this shape (BertModel), for export.
    pub fn to_hf_json(&self) -> serde_json::Value {
        serde_json::json!({
            "architectures": ["BertModel"],
            "model_type": "bert",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "intermediate_size": self.intermediate_size,
            "max_position_embeddings": self.max_position_embeddings,
            "type_vocab_size": self.type_vocab_size,
            "layer_norm_eps": self.layer_norm_eps,
            "hidden_act": self.hidden_act,
            "hidden_dropout_prob": 0.1,
            "attention_probs_dropout_prob": 0.1,
            "position_embedding_type": "absolute",
            "pad_token_id": self.pad_token_id,
            "initializer_range": 0.02,
            "torch_dtype": "float32",
        })
    }

    /// Parameters (without the pooler).
    pub fn param_count(&self) -> i64 {
        let (h, i, l) = (self.hidden_size, self.intermediate_size, self.num_hidden_layers);
        let emb = (self.vocab_size + self.max_position_embeddings + self.type_vocab_size) * h + 2 * h;
        let layer = 4 * (h * h + h) + (h * i + i) + (i * h + h) + 4 * h;
        emb + l * layer
    }
}

struct Layer {
    q: nn::Linear,
    k: nn::Linear,
    v: nn::Linear,
    o: nn::Linear,
    ln1: nn::LayerNorm,
    up: nn::Linear,
    down: nn::Linear,
    ln2: nn::LayerNorm,
}

/// Every position's outputs of a forward pass.
#[derive(Debug)]
pub struct BertOutputs {
    /// `L+1 × [B, T, H]`: the embeddings after their LayerNorm, then each layer's output.
    pub hidden_states: Vec<Tensor>,
    /// `L × [B, nh, T, T]` attention probabilities, when asked for.
    pub attentions: Vec<Tensor>,
}

impl BertOutputs {
    /// The last hidden state `[B, T, H]`.
    pub fn last(&self) -> &Tensor {
        self.hidden_states.last().expect("at least the embeddings")
    }
}

/// A BertModel whose variables live in the `VarStore` it was built on.
pub struct Bert {
    pub config: BertConfig,
    word: nn::Embedding,
    pos: nn::Embedding,
    ty: nn::Embedding,
    ln: nn::LayerNorm,
    layers: Vec<Layer>,
    /// Dropout probability in training mode (BERT: 0.1).
    pub dropout: f64,
}

fn ln(p: nn::Path, h: i64, eps: f64) -> nn::LayerNorm {
    nn::layer_norm(p, vec![h], nn::LayerNormConfig { eps, ..Default::default() })
}

fn lin(p: nn::Path, i: i64, o: i64) -> nn::Linear {
    let ws_init = nn::Init::Randn { mean: 0.0, stdev: 0.02 };
    nn::linear(p, i, o, nn::LinearConfig { ws_init, bs_init: Some(nn::Init::Const(0.0)), bias: true })
}

impl Bert {
    /// Builds a randomly initialised model (std 0.02, as BERT) under `p`.
    pub fn new(p: &nn::Path, config: &BertConfig) -> Bert {
        let c = config;
        let (h, eps) = (c.hidden_size, c.layer_norm_eps);
        let e = p / "embeddings";
        let emb = |name: &str, n: i64| {
            let cfg = nn::EmbeddingConfig { ws_init: nn::Init::Randn { mean: 0.0, stdev: 0.02 }, ..Default::default() };
            nn::embedding(&e / name, n, h, cfg)
        };
        let (word, pos, ty) = (
            emb("word_embeddings", c.vocab_size),
            emb("position_embeddings", c.max_position_embeddings),
            emb("token_type_embeddings", c.type_vocab_size),
        );
        let ln0 = ln(&e / "LayerNorm", h, eps);
        let layers = (0..c.num_hidden_layers)
            .map(|i| {
                let l = p / "encoder" / "layer" / i;
                let a = &l / "attention";
                Layer {
                    q: lin(&a / "self" / "query", h, h),
                    k: lin(&a / "self" / "key", h, h),
                    v: lin(&a / "self" / "value", h, h),
                    o: lin(&a / "output" / "dense", h, h),
                    ln1: ln(&a / "output" / "LayerNorm", h, eps),
                    up: lin(&l / "intermediate" / "dense", h, c.intermediate_size),
                    down: lin(&l / "output" / "dense", c.intermediate_size, h),
                    ln2: ln(&l / "output" / "LayerNorm", h, eps),
                }
            })
            .collect();
        Bert { config: c.clone(), word, pos, ty, ln: ln0, layers, dropout: 0.1 }
    }

    fn act(&self, x: &Tensor) -> Tensor {
        match self.config.hidden_act.as_str() {
            "relu" => x.relu(),
            "gelu_new" | "gelu_pytorch_tanh" => x.gelu("tanh"),
            _ => x.gelu("none"),
        }
    }

    /// `ids` `[B, T]` (int64), `mask` `[B, T]` (1 = real token). `train` applies dropout (p 0.1).
    pub fn forward(&self, ids: &Tensor, mask: &Tensor, attentions: bool, train: bool) -> BertOutputs {
        use tch::nn::Module;
        let (b, t) = ids.size2().expect("ids [B, T]");
        let c = &self.config;
        let (nh, hd) = (c.num_attention_heads, c.hidden_size / c.num_attention_heads);
        let positions = Tensor::arange(t, (Kind::Int64, ids.device())).unsqueeze(0); // [1, T]
        let types = ids.zeros_like();
        let x = self.word.forward(ids) + self.pos.forward(&positions) + self.ty.forward(&types); // [B, T, H]
        let mut x = self.ln.forward(&x).dropout(self.dropout, train);
        // Additive mask on the keys: 0 where real, the float minimum where padded (as HF).
        let bias = (mask.to_kind(Kind::Float).ones_like() - mask.to_kind(Kind::Float)) * f32::MIN as f64; // [B, T]
        let bias = bias.view([b, 1, 1, t]);
        let mut hidden = vec![x.shallow_clone()];
        let mut maps = Vec::new();
        let split = |y: Tensor| y.view([b, t, nh, hd]).transpose(1, 2); // [B, nh, T, hd]
        for l in &self.layers {
            let (q, k, v) = (split(l.q.forward(&x)), split(l.k.forward(&x)), split(l.v.forward(&x)));
            let scores = q.matmul(&k.transpose(-1, -2)) / (hd as f64).sqrt() + &bias; // [B, nh, T, T]
            let probs = scores.softmax(-1, Kind::Float);
            if attentions {
                maps.push(probs.shallow_clone());
            }
            let ctx = probs.dropout(self.dropout, train).matmul(&v).transpose(1, 2).contiguous().view([b, t, -1]);
            let a = l.ln1.forward(&(l.o.forward(&ctx).dropout(self.dropout, train) + &x));
            let m = l.down.forward(&self.act(&l.up.forward(&a))).dropout(self.dropout, train);
            x = l.ln2.forward(&(m + &a));
            hidden.push(x.shallow_clone());
        }
        BertOutputs { hidden_states: hidden, attentions: maps }
    }
}

/// Mean of `x` `[B, T, H]` over the real positions of `mask` `[B, T]` → `[B, H]`
/// (sentence-transformers' mean pooling: a row with no real token divides by 1e-9).
pub fn mean_pool(x: &Tensor, mask: &Tensor) -> Tensor {
    let m = mask.to_kind(Kind::Float).unsqueeze(-1); // [B, T, 1]
    let sum = (x * &m).sum_dim_intlist([1i64].as_slice(), false, Kind::Float);
    let n = m.sum_dim_intlist([1i64].as_slice(), false, Kind::Float).clamp_min(1e-9);
    sum / n
}

/// Loads BertModel weights from one safetensors file into the variables of `vs` (those whose
/// name starts with `skip` excepted), accepting names with or without the `bert.` prefix and
/// the old `gamma`/`beta` LayerNorm names. Every variable must be present with its shape; the
/// first one missing is named.
pub fn load_weights(vs: &mut nn::VarStore, file: &Path, skip: &str) -> Result<()> {
    let tensors = Tensor::read_safetensors(file).map_err(|e| Error::format(file, format!("not safetensors: {e}")))?;
    let mut by_name: HashMap<String, Tensor> = HashMap::new();
    for (k, t) in tensors {
        let k = k.strip_prefix("bert.").unwrap_or(&k).replace(".gamma", ".weight").replace(".beta", ".bias");
        by_name.insert(k, t);
    }
    let vars = vs.variables();
    let mut names: Vec<&String> = vars.keys().filter(|k| skip.is_empty() || !k.starts_with(skip)).collect();
    names.sort();
    tch::no_grad(|| -> Result<()> {
        for name in names {
            let var = &vars[name];
            let src = by_name.get(name).ok_or_else(|| {
                Error::format(file, format!("not a BERT checkpoint of this config: no tensor `{name}`"))
            })?;
            if src.size() != var.size() {
                return Err(Error::format(
                    file,
                    format!("tensor `{name}` has shape {:?}, the config needs {:?}", src.size(), var.size()),
                ));
            }
            var.shallow_clone().copy_(&src.to_kind(var.kind()).to_device(var.device()));
        }
        Ok(())
    })
}
