//! Llama-family decoder (Llama, Qwen2, Mistral) on tch.
//!
//! Token embedding → L × [RMSNorm → GQA self-attention with RoPE → residual → RMSNorm → SwiGLU MLP
//! → residual] → RMSNorm → lm_head (tied to the embedding or not). The numerics follow
//! transformers' `modeling_llama.py` (RMSNorm and softmax in float32, `rotate_half` RoPE, keys and
//! values repeated per query group), so logits, hidden states and attention probabilities match
//! it to float32 rounding.
//!
//! Parameter names follow the HF module tree by construction (`model.embed_tokens.weight`,
//! `model.layers.{i}.self_attn.q_proj.weight`, …, `model.norm.weight`, `lm_head.weight` only when
//! untied), so a `VarStore` loads and saves HF safetensors without a name map.
//!
//! LoRA adapters ([`lora`]) sit beside the projections they adapt
//! (`model.layers.{i}.self_attn.q_proj.lora_A`/`lora_B`) and are added to their output in every
//! forward, the KV-cache step included. [`CausalLm::map_weights`] — and so export, parameter
//! lists, fake-quantized views, [`CausalLm::packed_for_rows`] and [`CausalLm::column_major`]
//! copies — sees the merged weight `W + s·B·A`; [`CausalLm::merged`] is that plain model.
//!
//! Position ids are derived from the attention mask (`cumsum(mask) - 1`), so a left- or
//! right-padded row gives the same outputs at its real positions as the sequence alone.
//!
//! # Shapes
//! `B` batch, `T` new tokens, `S` keys (cached + new), `H` hidden, `nh`/`nkv` query/key-value
//! heads, `hd` head dim, `I` MLP width, `V` vocabulary, `L` layers.

pub mod config;
pub mod families;
pub mod family;
pub mod hf;
pub mod lora;
pub mod packed;

pub use config::{LmConfig, RopeScaling};
pub use family::Family;
pub use hf::HfLmConfig;
use lora::Adapter;
pub use lora::LoraCfg;
use packed::Packed;

use std::path::Path;

use tch::{nn, Device, Kind, Tensor};

use crate::io::safetensors::{load_safetensors, LoadOptions};
use crate::{Error, Result};

/// What [`CausalLm::forward`] computes besides logits.
#[derive(Debug, Clone, Copy, Default)]
pub struct ForwardOptions {
    /// Return the L+1 hidden states (embeddings first, final normed state last).
    pub hidden_states: bool,
    /// Return the L attention-probability tensors (forces the explicit softmax path).
    pub attentions: bool,
    /// Training mode: attention dropout is applied when the config sets one.
    pub train: bool,
    /// Return every layer's intermediate activations ([`LayerInternals`]), for importance
    /// estimation.
    pub internals: bool,
    /// Return every layer's queries, keys and values ([`Qkv`]), for MiniLM's relation KD.
    pub qkv: bool,
}

/// One layer's queries, keys and values at every position, heads concatenated: `q` `[B, T,
/// nh·hd]` and `k` `[B, T, nkv·hd]` after RoPE (what the attention compares), `v` `[B, T,
/// nkv·hd]`.
#[derive(Debug)]
pub struct Qkv {
    pub q: Tensor,
    pub k: Tensor,
    pub v: Tensor,
}

/// Full-sequence outputs of a forward pass: every position, never only the last.
#[derive(Debug)]
pub struct ModelOutputs {
    /// `[B, T, V]` unnormalised next-token scores.
    pub logits: Tensor,
    /// `L+1 × [B, T, H]`: the embeddings, then the output of each layer, the last one after the
    /// final norm (the HF convention).
    pub hidden_states: Option<Vec<Tensor>>,
    /// `L × [B, nh, T, S]` attention probabilities (rows at padded query positions are not meaningful).
    pub attentions: Option<Vec<Tensor>>,
    /// `L` layers' intermediate activations, when [`ForwardOptions::internals`] asks.
    pub internals: Option<Vec<LayerInternals>>,
}

/// One decoder layer's intermediate activations, at every position.
#[derive(Debug)]
pub struct LayerInternals {
    /// The block's input, the residual stream `[B, T, H]`.
    pub input: Tensor,
    /// `input_layernorm(input)` `[B, T, H]`.
    pub attn_norm: Tensor,
    /// The attention output of each head, before `o_proj` `[B, T, nh, hd]`.
    pub heads: Tensor,
    /// `post_attention_layernorm` of the stream after attention `[B, T, H]`.
    pub mlp_norm: Tensor,
    /// `silu(gate(x)) ⊙ up(x)`, the input of `down_proj` `[B, T, I]`.
    pub mlp_act: Tensor,
    /// The block's output `[B, T, H]`.
    pub output: Tensor,
}

/// [`CausalLm::forward_states`]: every position, lists empty unless [`ForwardOptions`] asked.
#[derive(Debug)]
pub struct States {
    /// The final normed hidden state `[B, T, H]` (what `lm_head` reads).
    pub last: Tensor,
    /// `L+1 × [B, T, H]`, as [`ModelOutputs::hidden_states`].
    pub hidden_states: Vec<Tensor>,
    /// `L × [B, nh, T, S]` attention probabilities.
    pub attentions: Vec<Tensor>,
    /// `L` layers' intermediate activations.
    pub internals: Vec<LayerInternals>,
    /// `L` layers' queries, keys and values.
    pub qkv: Vec<Qkv>,
}

/// Keys and values of the positions seen so far, per layer, for incremental decoding.
#[derive(Debug, Default)]
pub struct KvCache {
    layers: Vec<Option<LayerKv>>,
    len: i64,
}

/// One layer's keys and values in buffers with room to grow: a decoding step writes its new
/// positions in place instead of copying the whole cache into a longer tensor.
#[derive(Debug)]
struct LayerKv {
    k: Tensor, // [B, nkv, capacity, hd]
    v: Tensor, // [B, nkv, capacity, hd]
    len: i64,
}

impl LayerKv {
    /// Appends `k`, `v` `[B, nkv, T, hd]`; returns views of every cached position
    /// `[B, nkv, len, hd]`.
    fn append(slot: &mut Option<LayerKv>, k: &Tensor, v: &Tensor) -> (Tensor, Tensor) {
        let t = k.size()[2];
        let len = slot.as_ref().map_or(0, |c| c.len);
        let cap = slot.as_ref().map_or(0, |c| c.k.size()[2]);
        if len + t > cap {
            // Grow geometrically (at least 64 positions) so that a long decode copies O(log S) times.
            let new_cap = (len + t).max(2 * cap).max(64);
            let mut size = k.size();
            size[2] = new_cap;
            let grown = |old: Option<&Tensor>| {
                let buf = Tensor::empty(size.as_slice(), (k.kind(), k.device())); // [B, nkv, cap', hd]
                if let Some(o) = old {
                    buf.narrow(2, 0, len).copy_(&o.narrow(2, 0, len));
                }
                buf
            };
            let (nk, nv) = (grown(slot.as_ref().map(|c| &c.k)), grown(slot.as_ref().map(|c| &c.v)));
            *slot = Some(LayerKv { k: nk, v: nv, len });
        }
        let c = slot.as_mut().expect("allocated above");
        c.k.narrow(2, len, t).copy_(k);
        c.v.narrow(2, len, t).copy_(v);
        c.len = len + t;
        (c.k.narrow(2, 0, c.len), c.v.narrow(2, 0, c.len))
    }
}

impl KvCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }
    /// Number of cached positions.
    pub fn len(&self) -> i64 {
        self.len
    }
    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// A one-row cache repeated for `rows` rows: a prompt prefix computed once for a batch.
    pub fn repeat_rows(&mut self, rows: i64) {
        for c in self.layers.iter_mut().flatten() {
            c.k = c.k.expand([rows, -1, -1, -1], false).contiguous(); // [rows, nkv, capacity, hd]
            c.v = c.v.expand([rows, -1, -1, -1], false).contiguous(); // [rows, nkv, capacity, hd]
        }
    }
}

#[derive(Debug)]
struct RmsNorm {
    weight: Tensor, // [H]
    eps: f64,
    /// Added to the gain in the forward pass (the family's `norm_offset`).
    offset: f64,
}

impl RmsNorm {
    fn new(p: nn::Path, dim: i64, cfg: &LmConfig) -> Self {
        let offset = cfg.family.traits().norm_offset;
        Self { weight: p.var("weight", &[dim], nn::Init::Const(1.0 - offset)), eps: cfg.rms_norm_eps, offset }
    }

    /// `(w + offset) · x / sqrt(mean(x²) + eps)`, the statistics in float32.
    fn forward(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        let xf = x.to_kind(Kind::Float); // [B, T, H]
        let var = xf.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float); // [B, T, 1]
        let normed = (xf * (var + self.eps).rsqrt()).to_kind(kind); // [B, T, H]
        if self.offset == 0.0 {
            &self.weight * normed // [B, T, H]
        } else {
            (&self.weight + self.offset) * normed
        }
    }
}

/// A projection: weight `[out, in]`, optional bias, optional LoRA adapter ([`lora`]), and — in
/// a [`CausalLm::packed_for_rows`] copy, which is merged and so has no adapter — the weight
/// packed for decoding.
#[derive(Debug)]
struct Proj {
    ws: Tensor,
    bs: Option<Tensor>,
    packed: Option<Packed>,
    lora: Option<Adapter>,
}

fn linear(p: &nn::Path, name: &str, inp: i64, out: i64, bias: bool, std: f64) -> Proj {
    let cfg = nn::LinearConfig {
        ws_init: nn::Init::Randn { mean: 0.0, stdev: std },
        bs_init: Some(nn::Init::Const(0.0)),
        bias,
    };
    let l = nn::linear(p / name, inp, out, cfg);
    Proj { ws: l.ws, bs: l.bs, packed: None, lora: None }
}

/// `x·Wᵀ + b`, plus the adapter's `s · dropout(x)·Aᵀ·Bᵀ` where there is one (dropout only when
/// `train`).
fn apply_linear(l: &Proj, x: &Tensor, train: bool) -> Tensor {
    let y = match &l.packed {
        // The shim reports its errors instead of throwing; the plain product is the fallback.
        Some(p) => p.linear(x, &l.ws, l.bs.as_ref()).unwrap_or_else(|_| x.linear(&l.ws, l.bs.as_ref())),
        None => x.linear(&l.ws, l.bs.as_ref()),
    }; // [..., out]
    match &l.lora {
        Some(a) => y + a.forward(x, train),
        None => y,
    }
}

/// `cat(-x2, x1)` over the last dim, `x = cat(x1, x2)`.
fn rotate_half(x: &Tensor) -> Tensor {
    let half = x.size().last().copied().unwrap_or(0) / 2;
    let x1 = x.narrow(-1, 0, half); // [B, n, T, hd/2]
    let x2 = x.narrow(-1, half, half); // [B, n, T, hd/2]
    Tensor::cat(&[x2.neg(), x1], -1) // [B, n, T, hd]
}

#[derive(Debug)]
struct Attention {
    q_proj: Proj,
    k_proj: Proj,
    v_proj: Proj,
    o_proj: Proj,
    num_heads: i64,
    num_kv_heads: i64,
    head_dim: i64,
    dropout: f64,
}

impl Attention {
    fn new(p: nn::Path, cfg: &LmConfig) -> Self {
        let (h, nh, nkv, hd, s) =
            (cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.initializer_range);
        Self {
            q_proj: linear(&p, "q_proj", h, nh * hd, cfg.qkv_bias, s),
            k_proj: linear(&p, "k_proj", h, nkv * hd, cfg.qkv_bias, s),
            v_proj: linear(&p, "v_proj", h, nkv * hd, cfg.qkv_bias, s),
            o_proj: linear(&p, "o_proj", nh * hd, h, cfg.o_bias, s),
            num_heads: nh,
            num_kv_heads: nkv,
            head_dim: hd,
            dropout: cfg.attention_dropout,
        }
    }

    /// `[B, nkv, S, hd]` → `[B, nh, S, hd]`, kv head `j` serving query heads `j·g .. (j+1)·g`.
    fn repeat_kv(&self, x: &Tensor) -> Tensor {
        let g = self.num_heads / self.num_kv_heads;
        if g == 1 {
            return x.shallow_clone();
        }
        let (b, s) = (x.size()[0], x.size()[2]);
        x.unsqueeze(2) // [B, nkv, 1, S, hd]
            .expand([b, self.num_kv_heads, g, s, self.head_dim], false) // [B, nkv, g, S, hd]
            .reshape([b, self.num_heads, s, self.head_dim]) // [B, nh, S, hd]
    }

    #[allow(clippy::too_many_arguments)]
    fn forward(
        &self,
        x: &Tensor,            // [B, T, H]
        cos: &Tensor,          // [B, 1, T, hd]
        sin: &Tensor,          // [B, 1, T, hd]
        mask: Option<&Tensor>, // [B, 1, T, S] bool, true = attend; None = plain causal
        cache: Option<&mut Option<LayerKv>>,
        want_probs: bool,
        train: bool,
        want_qkv: bool,
    ) -> (Tensor, Option<Tensor>, Tensor, Option<Qkv>) {
        let (b, t) = (x.size()[0], x.size()[1]);
        let (nh, nkv, hd) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let q = apply_linear(&self.q_proj, x, train).view([b, t, nh, hd]).transpose(1, 2); // [B, nh, T, hd]
        let k = apply_linear(&self.k_proj, x, train).view([b, t, nkv, hd]).transpose(1, 2); // [B, nkv, T, hd]
        let v = apply_linear(&self.v_proj, x, train).view([b, t, nkv, hd]).transpose(1, 2); // [B, nkv, T, hd]
        let q = &q * cos + rotate_half(&q) * sin; // [B, nh, T, hd]
        let k = &k * cos + rotate_half(&k) * sin; // [B, nkv, T, hd]
        let qkv = want_qkv.then(|| {
            let cat = |x: &Tensor| x.transpose(1, 2).reshape([b, t, -1]); // [B, T, n·hd]
            Qkv { q: cat(&q), k: cat(&k), v: cat(&v) }
        });
        let (k, v) = match cache {
            Some(slot) => LayerKv::append(slot, &k, &v), // [B, nkv, S, hd] each
            None => (k, v),
        };
        let scale = (hd as f64).powf(-0.5);
        let p_drop = if train { self.dropout } else { 0.0 };

        let s = k.size()[2];
        // Without a mask: plain causal, offset by the cached positions (row i sees keys ≤ S−T+i).
        let causal = || Tensor::ones([t, s], (Kind::Bool, x.device())).tril(s - t); // [T, S]

        let (out, probs) = if want_probs {
            let allowed = mask.map_or_else(causal, Tensor::shallow_clone); // [B, 1, T, S] or [T, S]
            let k = self.repeat_kv(&k); // [B, nh, S, hd]
            let v = self.repeat_kv(&v); // [B, nh, S, hd]
            let scores = q.matmul(&k.transpose(-2, -1)) * scale; // [B, nh, T, S]
            let scores = scores.masked_fill(&allowed.logical_not(), f64::NEG_INFINITY); // [B, nh, T, S]
            let probs = scores.softmax(-1, Kind::Float).to_kind(q.kind()); // [B, nh, T, S]
            let probs = if p_drop > 0.0 { probs.dropout(p_drop, true) } else { probs };
            (probs.matmul(&v), Some(probs)) // [B, nh, T, hd]
        } else {
            // SDPA repeats the kv heads itself (`enable_gqa`, repeat_interleave semantics, the
            // same grouping as `repeat_kv`) without materialising [B, nh, S, hd] copies.
            let gqa = nh != nkv;
            let out = match mask {
                Some(m) => Tensor::scaled_dot_product_attention(&q, &k, &v, Some(m), p_drop, false, scale, gqa),
                None if t == s => {
                    Tensor::scaled_dot_product_attention(&q, &k, &v, None::<Tensor>, p_drop, true, scale, gqa)
                }
                None => Tensor::scaled_dot_product_attention(&q, &k, &v, Some(causal()), p_drop, false, scale, gqa),
            }; // [B, nh, T, hd]
            (out, None)
        };
        let out = out.transpose(1, 2).contiguous().reshape([b, t, nh * hd]); // [B, T, nh·hd]
        (apply_linear(&self.o_proj, &out, train), probs, out, qkv) // [B, T, H], probs, [B, T, nh·hd], qkv
    }
}

#[derive(Debug)]
struct Mlp {
    gate_proj: Proj,
    up_proj: Proj,
    down_proj: Proj,
}

impl Mlp {
    fn new(p: nn::Path, cfg: &LmConfig) -> Self {
        let (h, i, b, s) = (cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias, cfg.initializer_range);
        Self {
            gate_proj: linear(&p, "gate_proj", h, i, b, s),
            up_proj: linear(&p, "up_proj", h, i, b, s),
            down_proj: linear(&p, "down_proj", i, h, b, s),
        }
    }

    /// `down(silu(gate(x)) ⊙ up(x))`, and the product fed to `down` `[B, T, I]`.
    fn forward(&self, x: &Tensor, train: bool) -> (Tensor, Tensor) {
        let g = apply_linear(&self.gate_proj, x, train).silu(); // [B, T, I]
        let u = apply_linear(&self.up_proj, x, train); // [B, T, I]
        let act = g * u; // [B, T, I]
        (apply_linear(&self.down_proj, &act, train), act) // [B, T, H]
    }
}

#[derive(Debug)]
struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

/// A Llama-family causal language model.
#[derive(Debug)]
pub struct CausalLm {
    cfg: LmConfig,
    embed_tokens: Tensor, // [V, H]
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Option<Tensor>, // [V, H], None when tied
    inv_freq: Tensor,        // [hd/2] f32
    /// The output projection packed for decoding ([`CausalLm::packed_for_rows`]).
    head_packed: Option<Packed>,
}

/// Rotary inverse frequencies `[hd/2]` (f32, as transformers computes them).
fn rope_inv_freq(cfg: &LmConfig, device: Device) -> Tensor {
    let hd = cfg.head_dim;
    let exponent = Tensor::arange_start_step(0, hd, 2, (Kind::Int64, device)).to_kind(Kind::Float) / hd as f64; // [hd/2]
    let inv_freq = Tensor::pow_scalar(cfg.rope_theta, &exponent).reciprocal(); // [hd/2]
    match &cfg.rope_scaling {
        RopeScaling::Default => inv_freq,
        RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => {
            let old = *original_max_position_embeddings as f64;
            let low_wavelen = old / low_freq_factor;
            let high_wavelen = old / high_freq_factor;
            // Python's `c / t` is `t.reciprocal() * c`; written the same way to round the same.
            let wavelen = inv_freq.reciprocal() * (2.0 * std::f64::consts::PI); // [hd/2]
            let scaled = &inv_freq / *factor; // [hd/2]
            let llama = scaled.where_self(&wavelen.gt(low_wavelen), &inv_freq); // [hd/2]
            let smooth = (wavelen.reciprocal() * old - *low_freq_factor) / (high_freq_factor - low_freq_factor); // [hd/2]
            let smoothed: Tensor = smooth.g_mul_scalar(-1.0).g_add_scalar(1.0) * &llama / *factor + &smooth * &llama; // [hd/2]
            let medium = wavelen.lt(high_wavelen).logical_not().logical_and(&wavelen.gt(low_wavelen).logical_not());
            smoothed.where_self(&medium, &llama) // [hd/2]
        }
    }
}

impl CausalLm {
    /// Creates the variables under `path` (normal(0, initializer_range) for matrices, ones for
    /// norms, zeros for biases). Pass `vs.root()` for HF names.
    pub fn new(path: nn::Path, cfg: &LmConfig) -> Result<CausalLm> {
        cfg.validate().map_err(Error::Invalid)?;
        let std = cfg.initializer_range;
        let model = &path / "model";
        let embed_tokens = (&model / "embed_tokens").var(
            "weight",
            &[cfg.vocab_size, cfg.hidden_size],
            nn::Init::Randn { mean: 0.0, stdev: std },
        );
        let layers = (0..cfg.num_layers)
            .map(|i| {
                let p = &model / "layers" / i;
                DecoderLayer {
                    input_layernorm: RmsNorm::new(&p / "input_layernorm", cfg.hidden_size, cfg),
                    self_attn: Attention::new(&p / "self_attn", cfg),
                    post_attention_layernorm: RmsNorm::new(&p / "post_attention_layernorm", cfg.hidden_size, cfg),
                    mlp: Mlp::new(&p / "mlp", cfg),
                }
            })
            .collect();
        let norm = RmsNorm::new(&model / "norm", cfg.hidden_size, cfg);
        let lm_head = (!cfg.tie_word_embeddings).then(|| {
            (&path / "lm_head").var(
                "weight",
                &[cfg.vocab_size, cfg.hidden_size],
                nn::Init::Randn { mean: 0.0, stdev: std },
            )
        });
        let inv_freq = rope_inv_freq(cfg, path.device());
        Ok(CausalLm { cfg: cfg.clone(), embed_tokens, layers, norm, lm_head, inv_freq, head_packed: None })
    }

    /// [`CausalLm::new`], then — with `lora` — its adapters ([`CausalLm::add_lora`]). The base
    /// variables are created first and drawn as `new` draws them, so a seed gives the same base
    /// weights with or without adapters.
    pub fn new_with_lora(path: nn::Path, cfg: &LmConfig, lora: Option<&LoraCfg>) -> Result<CausalLm> {
        if let Some(l) = lora {
            l.validate().map_err(|m| Error::Invalid(format!("lora: {m}")))?;
        }
        let mut model = Self::new(path.clone(), cfg)?;
        if let Some(l) = lora {
            model.add_lora(&path, l)?;
        }
        Ok(model)
    }

    /// Adds a LoRA adapter ([`lora`]) to every projection `lora` targets: the variables
    /// `<module>.lora_A` `[r, in]` (PEFT's init, U(−1/√in, 1/√in)) and `<module>.lora_B` `[out, r]`
    /// (zeros) under `root`, the path the model was built under (`vs.root()` for
    /// `model.layers.0.self_attn.q_proj.lora_A`), in the var store's kind. A fresh adapter
    /// changes no output. Works on a loaded model: load the checkpoint, then add adapters.
    pub fn add_lora(&mut self, root: &nn::Path, lora: &LoraCfg) -> Result<()> {
        lora.validate().map_err(|m| Error::Invalid(format!("lora: {m}")))?;
        if self.has_lora() {
            return Err(Error::Invalid("lora: the model has adapters already".into()));
        }
        let embed = (root / "model" / "embed_tokens").get("weight");
        if embed.is_none_or(|e| e.data_ptr() != self.embed_tokens.data_ptr()) {
            let name: Vec<&str> = root.components().chain(["model", "embed_tokens", "weight"]).collect();
            return Err(Error::Invalid(format!(
                "lora: `{}` is not this model's embedding: pass the path the model was built under",
                name.join(".")
            )));
        }
        let modules = lora.modules();
        let mut slots = Vec::new();
        for (i, l) in self.layers.iter_mut().enumerate() {
            let (a, m) = (&mut l.self_attn, &mut l.mlp);
            let projs = [
                ("self_attn", "q_proj", &mut a.q_proj),
                ("self_attn", "k_proj", &mut a.k_proj),
                ("self_attn", "v_proj", &mut a.v_proj),
                ("self_attn", "o_proj", &mut a.o_proj),
                ("mlp", "gate_proj", &mut m.gate_proj),
                ("mlp", "up_proj", &mut m.up_proj),
                ("mlp", "down_proj", &mut m.down_proj),
            ];
            for (group, name, proj) in projs.into_iter().filter(|(_, n, _)| modules.contains(n)) {
                let p = root / "model" / "layers" / i / group / name;
                if let Some(taken) = ["lora_A", "lora_B"].into_iter().find(|v| p.get(v).is_some()) {
                    return Err(Error::Invalid(format!(
                        "lora: the variable `model.layers.{i}.{group}.{name}.{taken}` exists already"
                    )));
                }
                slots.push((p, proj));
            }
        }
        for (p, proj) in slots {
            let (out, inp) = (proj.ws.size()[0], proj.ws.size()[1]);
            proj.lora = Some(Adapter::new(&p, inp, out, lora)?);
        }
        Ok(())
    }

    /// True when some projection carries a LoRA adapter.
    pub fn has_lora(&self) -> bool {
        self.projections().iter().any(|(_, p)| p.lora.is_some())
    }

    /// Every adapter variable with its name (`model.layers.{i}.self_attn.q_proj.lora_A`, then
    /// `….lora_B`), layer by layer in [`lora::MODULES`]' order; empty without adapters.
    pub fn named_lora_parameters(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (name, p) in self.projections() {
            if let Some(a) = &p.lora {
                out.push((format!("{name}.lora_A"), a.a.shallow_clone()));
                out.push((format!("{name}.lora_B"), a.b.shallow_clone()));
            }
        }
        out
    }

    /// Number of adapter parameters, `r·(in + out)` per adapted projection: what a frozen base
    /// ([`CausalLm::freeze_base`]) leaves to train.
    pub fn lora_param_count(&self) -> i64 {
        self.named_lora_parameters().iter().map(|(_, t)| t.numel() as i64).sum()
    }

    /// Stops gradients to every base parameter of the model (embedding, norms, projection
    /// weights and biases, head): `requires_grad = false`, so that the Trainer, which trains and
    /// checkpoints the variables that require grad, trains only the adapters. Variables of the
    /// var store that are not the model's (a method's regressor) are left as they are. An error
    /// on a view whose weights are computed ([`CausalLm::map_weights`]).
    pub fn freeze_base(&self) -> Result<()> {
        let mut base = vec![&self.embed_tokens, &self.norm.weight];
        base.extend(self.lm_head.iter());
        for l in &self.layers {
            base.extend([&l.input_layernorm.weight, &l.post_attention_layernorm.weight]);
        }
        for (_, p) in self.projections() {
            base.push(&p.ws);
            base.extend(p.bs.iter());
        }
        for t in base {
            let _ = t.f_set_requires_grad(false)?;
        }
        Ok(())
    }

    /// The plain model (no adapters) computing what this one computes in evaluation: `W + s·B·A`
    /// for each adapted projection (computed without a graph), every other parameter shared.
    /// What export, decoding copies and PTQ take. Without adapters, a model sharing everything.
    pub fn merged(&self) -> Result<CausalLm> {
        tch::no_grad(|| self.map_weights(&|_, w| Ok(w.shallow_clone())))
    }

    /// Every projection with its module name (`model.layers.{i}.self_attn.q_proj`, …,
    /// `model.layers.{i}.mlp.down_proj`), layer by layer in [`lora::MODULES`]' order.
    fn projections(&self) -> Vec<(String, &Proj)> {
        let mut out = Vec::with_capacity(self.layers.len() * lora::MODULES.len());
        for (i, l) in self.layers.iter().enumerate() {
            let (a, m) = (&l.self_attn, &l.mlp);
            for (name, p) in [
                ("self_attn.q_proj", &a.q_proj),
                ("self_attn.k_proj", &a.k_proj),
                ("self_attn.v_proj", &a.v_proj),
                ("self_attn.o_proj", &a.o_proj),
                ("mlp.gate_proj", &m.gate_proj),
                ("mlp.up_proj", &m.up_proj),
                ("mlp.down_proj", &m.down_proj),
            ] {
                out.push((format!("model.layers.{i}.{name}"), p));
            }
        }
        out
    }

    /// Loads `dir/config.json` and `dir/model.safetensors` (or a sharded index) onto `device`,
    /// converting the weights to `kind`.
    pub fn from_pretrained(dir: impl AsRef<Path>, device: Device, kind: Kind) -> Result<(nn::VarStore, CausalLm)> {
        let dir = dir.as_ref();
        let cfg_path = dir.join("config.json");
        let cfg = LmConfig::from_file(&cfg_path)?;
        // At least 2 bytes per value (f16/bf16) in the checkpoint files.
        let bytes: u64 = crate::io::safetensors::checkpoint_files(dir)?
            .iter()
            .map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
            .sum();
        cfg.check_fits(bytes / 2).map_err(|m| Error::format(&cfg_path, m))?;
        let mut vs = nn::VarStore::new(device);
        let model = CausalLm::new(vs.root(), &cfg)?;
        if kind != Kind::Float {
            vs.set_kind(kind);
        }
        load_safetensors(&mut vs, dir, &Self::load_options(&cfg))?;
        Ok((vs, model))
    }

    /// What a Llama checkpoint may hold beyond the model's variables: `lm_head.weight` in a tied
    /// model (accepted only if equal to the embedding) and non-persistent RoPE buffers.
    pub fn load_options(cfg: &LmConfig) -> LoadOptions {
        let mut o = LoadOptions::default();
        o.ignore_suffixes.push(".rotary_emb.inv_freq".into());
        if cfg.tie_word_embeddings {
            o.tied.push(("lm_head.weight".into(), "model.embed_tokens.weight".into()));
        }
        o
    }

    /// The runtime config.
    pub fn config(&self) -> &LmConfig {
        &self.cfg
    }

    /// The device of the weights.
    pub fn device(&self) -> Device {
        self.embed_tokens.device()
    }

    /// `[V, H]`: the output projection (the embedding when tied), for chunked losses.
    pub fn lm_head_weight(&self) -> Tensor {
        self.lm_head.as_ref().unwrap_or(&self.embed_tokens).shallow_clone()
    }

    /// Every parameter with its HF name, in [`CausalLm::map_weights`]' order. For a model with
    /// adapters an adapted projection's weight is the merged one, a new tensor: what export writes;
    /// an in-place edit of it changes nothing (edit [`CausalLm::merged`]'s instead).
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let out = std::cell::RefCell::new(Vec::new());
        let _ = self.map_weights(&|name, w| {
            out.borrow_mut().push((name.to_string(), w.shallow_clone()));
            Ok(w.shallow_clone())
        });
        out.into_inner()
    }

    /// The same model with every parameter replaced by `f(hf_name, parameter)` (same shape and
    /// kind), e.g. a fake-quantized view for quantization-aware training: the result shares
    /// nothing with `self` but what `f` returns, and gradients flow back through `f`. `f` sees
    /// the embedding, then each layer's parameters, the final norm and an untied head, in that
    /// order; the one place that names the parameters.
    ///
    /// With LoRA adapters `f` sees each adapted projection's merged weight `W + s·B·A` (computed
    /// in the graph, so gradients reach `A`, `B` and, unless frozen, `W`) and the result has no
    /// adapters: a fake-quantized view quantizes what the model computes, decoding copies are
    /// merged, and adapter dropout does not apply to the view.
    pub fn map_weights(&self, f: &dyn Fn(&str, &Tensor) -> Result<Tensor>) -> Result<CausalLm> {
        let embed_tokens = f("model.embed_tokens.weight", &self.embed_tokens)?;
        let lin = |name: String, l: &Proj| -> Result<Proj> {
            let bs = match &l.bs {
                Some(b) => Some(f(&format!("{name}.bias"), b)?),
                None => None,
            };
            let ws = match &l.lora {
                Some(a) => f(&format!("{name}.weight"), &(&l.ws + a.delta()))?,
                None => f(&format!("{name}.weight"), &l.ws)?,
            };
            Ok(Proj { ws, bs, packed: None, lora: None })
        };
        let norm = |name: String, n: &RmsNorm| -> Result<RmsNorm> {
            Ok(RmsNorm { weight: f(&format!("{name}.weight"), &n.weight)?, eps: n.eps, offset: n.offset })
        };
        let mut layers = Vec::with_capacity(self.layers.len());
        for (i, l) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            let a = &l.self_attn;
            layers.push(DecoderLayer {
                input_layernorm: norm(format!("{p}.input_layernorm"), &l.input_layernorm)?,
                self_attn: Attention {
                    q_proj: lin(format!("{p}.self_attn.q_proj"), &a.q_proj)?,
                    k_proj: lin(format!("{p}.self_attn.k_proj"), &a.k_proj)?,
                    v_proj: lin(format!("{p}.self_attn.v_proj"), &a.v_proj)?,
                    o_proj: lin(format!("{p}.self_attn.o_proj"), &a.o_proj)?,
                    num_heads: a.num_heads,
                    num_kv_heads: a.num_kv_heads,
                    head_dim: a.head_dim,
                    dropout: a.dropout,
                },
                post_attention_layernorm: norm(format!("{p}.post_attention_layernorm"), &l.post_attention_layernorm)?,
                mlp: Mlp {
                    gate_proj: lin(format!("{p}.mlp.gate_proj"), &l.mlp.gate_proj)?,
                    up_proj: lin(format!("{p}.mlp.up_proj"), &l.mlp.up_proj)?,
                    down_proj: lin(format!("{p}.mlp.down_proj"), &l.mlp.down_proj)?,
                },
            });
        }
        let norm = norm("model.norm".into(), &self.norm)?;
        let lm_head = match &self.lm_head {
            Some(w) => Some(f("lm_head.weight", w)?),
            None => None,
        };
        Ok(CausalLm {
            cfg: self.cfg.clone(),
            embed_tokens,
            layers,
            norm,
            lm_head,
            inv_freq: self.inv_freq.shallow_clone(),
            head_packed: None,
        })
    }

    /// The same weights with every matrix also packed for products of exactly `rows` rows
    /// ([`crate::models::lm::packed`]): what decoding a batch of `rows` sequences multiplies by.
    /// Costs one more copy of the matrices while it lives; other row counts (a prompt) use the
    /// plain weights. Where packing does not apply (not float32 on the CPU, no MKL) this is
    /// [`CausalLm::column_major`]. A model with adapters gives a merged copy (no adapters).
    pub fn packed_for_rows(&self, rows: i64) -> Result<CausalLm> {
        tch::no_grad(|| {
            let mut m = self.map_weights(&|_, w| Ok(w.shallow_clone()))?;
            let Some(head) = Packed::new(&m.lm_head_weight(), rows)? else {
                return self.column_major();
            };
            m.head_packed = Some(head);
            for l in &mut m.layers {
                let a = &mut l.self_attn;
                let p = &mut l.mlp;
                for proj in [&mut a.q_proj, &mut a.k_proj, &mut a.v_proj, &mut a.o_proj].into_iter().chain([
                    &mut p.gate_proj,
                    &mut p.up_proj,
                    &mut p.down_proj,
                ]) {
                    proj.packed = Packed::new(&proj.ws, rows)?;
                }
            }
            Ok(m)
        })
    }

    /// The row count of a [`CausalLm::packed_for_rows`] copy.
    pub fn packed_rows(&self) -> Option<i64> {
        self.head_packed.as_ref().map(Packed::rows)
    }

    /// The same model with every matrix stored column-major (`w.t().contiguous().t()`: same
    /// shape, transposed strides), so that `x.linear(w)` multiplies by a contiguous `[in, out]`
    /// matrix. For decoding several rows at once this is about 1.2× faster on CPU (the BLAS
    /// kernels for a few rows against a transposed operand are the slow ones); the values are the
    /// same, the copy costs one model's memory while it lives. A model with adapters gives a
    /// merged copy.
    pub fn column_major(&self) -> Result<CausalLm> {
        tch::no_grad(|| {
            self.map_weights(&|_, w| {
                Ok(if w.dim() == 2 { w.f_tr()?.f_contiguous()?.f_tr()? } else { w.shallow_clone() })
            })
        })
    }

    /// Number of parameters (a tied head counted once; adapters not counted:
    /// [`CausalLm::lora_param_count`]).
    pub fn param_count(&self) -> i64 {
        self.named_parameters().iter().map(|(_, t)| t.numel() as i64).sum()
    }

    /// Full forward pass. Records autograd unless called inside `tch::no_grad` (do so for
    /// teacher and evaluation passes).
    ///
    /// # Shapes
    /// `input_ids` `[B, T]` (any integer kind), `attention_mask` `[B, T]` (1 = real, 0 = pad,
    /// left or right padding) → [`ModelOutputs`] with logits `[B, T, V]`.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        opts: ForwardOptions,
    ) -> Result<ModelOutputs> {
        let tr = self.trunk(input_ids, attention_mask, None, opts)?; // [B, T, H]
        let logits = tr.x.linear(&self.lm_head_weight(), None::<Tensor>); // [B, T, V]
        Ok(ModelOutputs { logits, hidden_states: tr.hidden, attentions: tr.attns, internals: tr.internals })
    }

    /// The final normed hidden state (no lm_head) and whatever else `opts` asks for: what
    /// chunked losses, the methods that read intermediate states and importance estimation take.
    pub fn forward_states(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        opts: ForwardOptions,
    ) -> Result<States> {
        let tr = self.trunk(input_ids, attention_mask, None, opts)?;
        Ok(States {
            last: tr.x,
            hidden_states: tr.hidden.unwrap_or_default(),
            attentions: tr.attns.unwrap_or_default(),
            internals: tr.internals.unwrap_or_default(),
            qkv: tr.qkv.unwrap_or_default(),
        })
    }

    /// Incremental forward: `input_ids` `[B, T]` are the positions after the `cache.len()` cached
    /// ones; `attention_mask` `[B, cache.len() + T]` (1 = real, 0 = pad; None = no padding) covers
    /// the cached positions and the new ones, so left-padded rows decode together. Returns logits
    /// `[B, T, V]` and extends the cache.
    pub fn forward_cached(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        cache: &mut KvCache,
    ) -> Result<Tensor> {
        let x = self.trunk(input_ids, attention_mask, Some(cache), ForwardOptions::default())?.x; // [B, T, H]
        match &self.head_packed {
            Some(p) => p.linear(&x, &self.lm_head_weight(), None), // [B, T, V]
            None => Ok(x.linear(&self.lm_head_weight(), None::<Tensor>)), // [B, T, V]
        }
    }

    /// Checks ids and mask before any compute; returns `(B, T)`.
    fn check_inputs(&self, ids: &Tensor, mask: Option<&Tensor>, past: i64) -> Result<(i64, i64)> {
        let size = ids.size();
        let &[b, t] = size.as_slice() else {
            return Err(Error::Invalid(format!("input_ids must be [B, T], got {size:?}")));
        };
        if b == 0 || t == 0 {
            return Err(Error::Invalid(format!("input_ids is empty: {size:?}")));
        }
        if ids.is_floating_point() || ids.kind() == Kind::Bool {
            return Err(Error::Invalid(format!("input_ids must be integers, got {:?}", ids.kind())));
        }
        let lo = ids.f_min()?.f_int64_value(&[])?;
        let hi = ids.f_max()?.f_int64_value(&[])?;
        if lo < 0 || hi >= self.cfg.vocab_size {
            return Err(Error::Invalid(format!(
                "token id out of range [0, {}): min {lo}, max {hi}",
                self.cfg.vocab_size
            )));
        }
        if let Some(m) = mask {
            if m.size() != [b, past + t] {
                return Err(Error::Invalid(format!("attention_mask must be [{b}, {}], got {:?}", past + t, m.size())));
            }
        }
        Ok((b, t))
    }

    /// Embedding → layers → final norm. Returns the normed state `[B, T, H]` and the optional
    /// hidden states / attention probabilities.
    fn trunk(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        mut cache: Option<&mut KvCache>,
        opts: ForwardOptions,
    ) -> Result<Trunk> {
        let past = cache.as_ref().map_or(0, |c| c.len);
        let (b, t) = self.check_inputs(input_ids, attention_mask, past)?;
        let dev = self.device();
        let ids = input_ids.to_device(dev).to_kind(Kind::Int64); // [B, T]
        let s = past + t;

        // Positions of the new tokens: cumsum over the mask, so padding does not shift them.
        let pad = attention_mask.map(|m| m.to_device(dev).ne(0)); // [B, S] bool
        let pos = match &pad {
            Some(p) => (p.cumsum(1, Kind::Int64) - 1).clamp_min(0).narrow(1, past, t), // [B, T]
            None => Tensor::arange_start(past, s, (Kind::Int64, dev)).unsqueeze(0).expand([b, t], false), // [B, T]
        };

        // Boolean mask [B, 1, T, S] (true = attend); None = plain causal (SDPA's is_causal).
        let mask = if pad.is_some() || self.cfg.sliding_window.is_some() {
            let q_abs = Tensor::arange_start(past, s, (Kind::Int64, dev)).unsqueeze(1); // [T, 1]
            let k_abs = Tensor::arange(s, (Kind::Int64, dev)).unsqueeze(0); // [1, S]
            let causal = k_abs.le_tensor(&q_abs).unsqueeze(0); // [1, T, S]
            let allowed = match (self.cfg.sliding_window, &pad) {
                // The window counts real positions, not columns: padding may sit between cached
                // and new tokens (a shared prompt prefix), where the two differ.
                (Some(w), Some(p)) => {
                    let k_pos = p.cumsum(1, Kind::Int64) - 1; // [B, S]
                    let q_pos = k_pos.narrow(1, past, t); // [B, T]
                    let in_window = k_pos.unsqueeze(1).gt_tensor(&(q_pos.unsqueeze(2) - w)); // [B, T, S]
                    causal.logical_and(&in_window)
                }
                (Some(w), None) => causal.logical_and(&k_abs.gt_tensor(&(&q_abs - w)).unsqueeze(0)), // [1, T, S]
                (None, _) => causal,
            };
            let allowed = match &pad {
                // A padded query may see only itself so that its softmax row stays finite.
                Some(p) => allowed.logical_and(&p.unsqueeze(1)).logical_or(&k_abs.eq_tensor(&q_abs).unsqueeze(0)), // [B, T, S]
                None => allowed.expand([b, t, s], false), // [B, T, S]
            };
            Some(allowed.unsqueeze(1)) // [B, 1, T, S]
        } else {
            None
        };

        // RoPE tables in float32, cast to the activation kind.
        let inv_freq = self.inv_freq.to_device(dev); // [hd/2]
        let freqs = pos.to_kind(Kind::Float).unsqueeze(-1) * inv_freq.view([1, 1, -1]); // [B, T, hd/2]
        let emb = Tensor::cat(&[&freqs, &freqs], -1); // [B, T, hd]
        let kind = self.embed_tokens.kind();
        let cos = emb.cos().to_kind(kind).unsqueeze(1); // [B, 1, T, hd]
        let sin = emb.sin().to_kind(kind).unsqueeze(1); // [B, 1, T, hd]

        let mut x = Tensor::embedding(&self.embed_tokens, &ids, -1, false, false); // [B, T, H]
        let mut hidden = opts.hidden_states.then(|| vec![x.shallow_clone()]);
        let mut attns = opts.attentions.then(Vec::new);
        let mut internals = opts.internals.then(Vec::new);
        let mut qkvs = opts.qkv.then(Vec::new);
        if let Some(c) = cache.as_deref_mut() {
            c.layers.resize_with(self.layers.len(), || None);
        }
        for (i, layer) in self.layers.iter().enumerate() {
            let slot = cache.as_deref_mut().map(|c| &mut c.layers[i]);
            let input = x.shallow_clone(); // [B, T, H]
            let h = layer.input_layernorm.forward(&x); // [B, T, H]
            let (a, probs, heads, qkv) =
                layer.self_attn.forward(&h, &cos, &sin, mask.as_ref(), slot, opts.attentions, opts.train, opts.qkv); // [B, T, H]
            if let (Some(all), Some(one)) = (qkvs.as_mut(), qkv) {
                all.push(one);
            }
            x = &x + a; // [B, T, H] (not `+=`: that is in place and would alias hidden_states[i])
            let h2 = layer.post_attention_layernorm.forward(&x); // [B, T, H]
            let (m, act) = layer.mlp.forward(&h2, opts.train); // [B, T, H], [B, T, I]
            x = &x + m; // [B, T, H]
            if let Some(li) = internals.as_mut() {
                let nh = layer.self_attn.num_heads;
                li.push(LayerInternals {
                    input,
                    attn_norm: h,
                    heads: heads.view([b, t, nh, -1]),
                    mlp_norm: h2,
                    mlp_act: act,
                    output: x.shallow_clone(),
                });
            }
            if let Some(hs) = hidden.as_mut() {
                hs.push(x.shallow_clone());
            }
            if let (Some(at), Some(p)) = (attns.as_mut(), probs) {
                at.push(p);
            }
        }
        if let Some(c) = cache {
            c.len = s;
        }
        let x = self.norm.forward(&x); // [B, T, H]
        if let Some(hs) = hidden.as_mut() {
            if let Some(last) = hs.last_mut() {
                *last = x.shallow_clone();
            }
        }
        Ok(Trunk { x, hidden, attns, internals, qkv: qkvs })
    }
}

/// What [`CausalLm::trunk`] computes: the normed state `[B, T, H]` and what `opts` asked for.
struct Trunk {
    x: Tensor,
    hidden: Option<Vec<Tensor>>,
    attns: Option<Vec<Tensor>>,
    internals: Option<Vec<LayerInternals>>,
    qkv: Option<Vec<Qkv>>,
}
