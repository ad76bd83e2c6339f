//! The causal-LM decoder of every family (Llama, Qwen2/3, Mistral, Gemma 2/3, OLMo 2, Phi-3) on tch.
//!
//! Token embedding (× √H for Gemma) → L × [RMSNorm → GQA self-attention with RoPE → residual →
//! RMSNorm → gated MLP → residual] → RMSNorm → lm_head (tied to the embedding or not; soft-capped
//! for Gemma 2). What a family changes is read from its [`family::Traits`] (norm placement,
//! q/k norms, `(1 + w)` gains, embedding scale) and its config (per-layer windows, a local RoPE
//! base, partial rotary, soft caps, the activation); no code here matches on the family. The
//! numerics follow transformers' modeling files (RMSNorm and softmax in float32, `rotate_half`
//! RoPE, keys and values repeated per query group), so logits, hidden states and attention
//! probabilities match them to float32 rounding.
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

pub use config::{Activation, LayerAttention, LmConfig, RopeScaling};
pub use family::{Family, Layout, QkNorm};
pub use hf::HfLmConfig;
use lora::Adapter;
pub use lora::LoraCfg;
use packed::Packed;

use std::path::Path;

use tch::{nn, Device, Kind, Tensor};

use crate::io::safetensors::{load_safetensors, LoadOptions};
use crate::losses::chunked::{softcap, LogitHead};
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
    /// `[B, len]`: the ids seen, kept for LongRoPE models only (see [`CausalLm::forward_cached`]).
    ids: Option<Tensor>,
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
        if let Some(ids) = &mut self.ids {
            *ids = ids.expand([rows, -1], false).contiguous(); // [rows, len]
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

/// RoPE on the leading `rot` = `cos.size(-1)` dimensions of each head (all of them unless the
/// config has a partial rotary factor); the rest pass through.
///
/// # Shapes
/// `x` `[B, n, T, hd]`, `cos`/`sin` `[B, 1, T, rot]` → `[B, n, T, hd]`.
fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    let (hd, rot) = (x.size()[3], cos.size()[3]);
    if rot == hd {
        return x * cos + rotate_half(x) * sin;
    }
    let r = x.narrow(-1, 0, rot); // [B, n, T, rot]
    let rotated = &r * cos + rotate_half(&r) * sin; // [B, n, T, rot]
    Tensor::cat(&[rotated, x.narrow(-1, rot, hd - rot)], -1) // [B, n, T, hd]
}

#[derive(Debug)]
struct Attention {
    q_proj: Proj,
    k_proj: Proj,
    v_proj: Proj,
    o_proj: Proj,
    /// Query/key norms ([`QkNorm`]): `[hd]` per head, or `[nh·hd]` / `[nkv·hd]` over all heads.
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    qk_norm: QkNorm,
    num_heads: i64,
    num_kv_heads: i64,
    head_dim: i64,
    dropout: f64,
    /// Multiplies `q·kᵀ`: `query_pre_attn_scalar^-½` or `head_dim^-½`.
    scale: f64,
    /// Scores become `c·tanh(s/c)` before the mask.
    softcap: Option<f64>,
    /// Keys further back than this are masked in this layer.
    window: Option<i64>,
    /// This layer rotates with the local RoPE tables (a sliding layer of a config with a local base).
    local_rope: bool,
}

impl Attention {
    fn new(p: nn::Path, cfg: &LmConfig, layer: usize) -> Self {
        let (h, nh, nkv, hd, s) =
            (cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.initializer_range);
        let qk_norm = cfg.family.traits().qk_norm;
        let (q_width, k_width) = match qk_norm {
            QkNorm::Full => (nh * hd, nkv * hd),
            _ => (hd, hd),
        };
        let has_norm = qk_norm != QkNorm::None;
        let window = cfg.layer_window(layer);
        Self {
            q_proj: linear(&p, "q_proj", h, nh * hd, cfg.qkv_bias, s),
            k_proj: linear(&p, "k_proj", h, nkv * hd, cfg.qkv_bias, s),
            v_proj: linear(&p, "v_proj", h, nkv * hd, cfg.qkv_bias, s),
            o_proj: linear(&p, "o_proj", nh * hd, h, cfg.o_bias, s),
            q_norm: has_norm.then(|| RmsNorm::new(&p / "q_norm", q_width, cfg)),
            k_norm: has_norm.then(|| RmsNorm::new(&p / "k_norm", k_width, cfg)),
            qk_norm,
            num_heads: nh,
            num_kv_heads: nkv,
            head_dim: hd,
            dropout: cfg.attention_dropout,
            scale: cfg.query_pre_attn_scalar.unwrap_or(hd as f64).powf(-0.5),
            softcap: cfg.attn_softcap,
            window,
            local_rope: window.is_some() && cfg.rope_local_theta.is_some(),
        }
    }

    /// This layer's settings with the projections and norms still to fill: what
    /// [`CausalLm::map_weights`] completes (struct update syntax needs every field).
    fn plain(&self) -> Attention {
        let none = || Proj { ws: Tensor::new(), bs: None, packed: None, lora: None };
        Attention {
            q_proj: none(),
            k_proj: none(),
            v_proj: none(),
            o_proj: none(),
            q_norm: None,
            k_norm: None,
            qk_norm: self.qk_norm,
            num_heads: self.num_heads,
            num_kv_heads: self.num_kv_heads,
            head_dim: self.head_dim,
            dropout: self.dropout,
            scale: self.scale,
            softcap: self.softcap,
            window: self.window,
            local_rope: self.local_rope,
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
        let q = apply_linear(&self.q_proj, x, train); // [B, T, nh·hd]
        let k = apply_linear(&self.k_proj, x, train); // [B, T, nkv·hd]
                                                      // Full-width norms before the split into heads, per-head norms after it.
        let norm = |n: &Option<RmsNorm>, x: Tensor, full: bool| match n {
            Some(n) if (self.qk_norm == QkNorm::Full) == full => n.forward(&x),
            _ => x,
        };
        let q = norm(&self.q_norm, q, true).view([b, t, nh, hd]); // [B, T, nh, hd]
        let k = norm(&self.k_norm, k, true).view([b, t, nkv, hd]); // [B, T, nkv, hd]
        let q = norm(&self.q_norm, q, false).transpose(1, 2); // [B, nh, T, hd]
        let k = norm(&self.k_norm, k, false).transpose(1, 2); // [B, nkv, T, hd]
        let v = apply_linear(&self.v_proj, x, train).view([b, t, nkv, hd]).transpose(1, 2); // [B, nkv, T, hd]
        let q = apply_rope(&q, cos, sin); // [B, nh, T, hd]
        let k = apply_rope(&k, cos, sin); // [B, nkv, T, hd]
        let qkv = want_qkv.then(|| {
            let cat = |x: &Tensor| x.transpose(1, 2).reshape([b, t, -1]); // [B, T, n·hd]
            Qkv { q: cat(&q), k: cat(&k), v: cat(&v) }
        });
        let (k, v) = match cache {
            Some(slot) => LayerKv::append(slot, &k, &v), // [B, nkv, S, hd] each
            None => (k, v),
        };
        let scale = self.scale;
        let p_drop = if train { self.dropout } else { 0.0 };

        let s = k.size()[2];
        // Without a mask: plain causal, offset by the cached positions (row i sees keys ≤ S−T+i).
        let causal = || Tensor::ones([t, s], (Kind::Bool, x.device())).tril(s - t); // [T, S]

        // Soft-capped scores have no fused kernel: they take the explicit path.
        let (out, probs) = if want_probs || self.softcap.is_some() {
            let allowed = mask.map_or_else(causal, Tensor::shallow_clone); // [B, 1, T, S] or [T, S]
            let k = self.repeat_kv(&k); // [B, nh, S, hd]
            let v = self.repeat_kv(&v); // [B, nh, S, hd]
            let scores = q.matmul(&k.transpose(-2, -1)) * scale; // [B, nh, T, S]
            let scores = match self.softcap {
                Some(c) => (scores / c).tanh() * c,
                None => scores,
            }; // [B, nh, T, S]
            let scores = scores.masked_fill(&allowed.logical_not(), f64::NEG_INFINITY); // [B, nh, T, S]
            let probs = scores.softmax(-1, Kind::Float).to_kind(q.kind()); // [B, nh, T, S]
            let probs = if p_drop > 0.0 { probs.dropout(p_drop, true) } else { probs };
            (probs.matmul(&v), want_probs.then_some(probs)) // [B, nh, T, hd]
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
    act: Activation,
}

impl Mlp {
    fn new(p: nn::Path, cfg: &LmConfig) -> Self {
        let (h, i, b, s) = (cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias, cfg.initializer_range);
        Self {
            gate_proj: linear(&p, "gate_proj", h, i, b, s),
            up_proj: linear(&p, "up_proj", h, i, b, s),
            down_proj: linear(&p, "down_proj", i, h, b, s),
            act: cfg.hidden_act,
        }
    }

    /// `down(act(gate(x)) ⊙ up(x))`, and the product fed to `down` `[B, T, I]`.
    fn forward(&self, x: &Tensor, train: bool) -> (Tensor, Tensor) {
        let g = apply_linear(&self.gate_proj, x, train); // [B, T, I]
        let g = match self.act {
            Activation::Silu => g.silu(),
            Activation::GeluTanh => g.gelu("tanh"),
        }; // [B, T, I]
        let u = apply_linear(&self.up_proj, x, train); // [B, T, I]
        let act = g * u; // [B, T, I]
        (apply_linear(&self.down_proj, &act, train), act) // [B, T, H]
    }
}

/// One block; which norms exist and where they apply is the family's [`Layout`].
#[derive(Debug)]
struct DecoderLayer {
    /// Before attention (`Pre`, `Sandwich`).
    input_layernorm: Option<RmsNorm>,
    self_attn: Attention,
    /// Before the MLP (`Pre`) or on the attention output (`Sandwich`, `Post`).
    post_attention_layernorm: RmsNorm,
    /// Before the MLP (`Sandwich`).
    pre_feedforward_layernorm: Option<RmsNorm>,
    /// On the MLP output (`Sandwich`, `Post`).
    post_feedforward_layernorm: Option<RmsNorm>,
    mlp: Mlp,
    layout: Layout,
}

/// A Llama-family causal language model.
#[derive(Debug)]
pub struct CausalLm {
    cfg: LmConfig,
    embed_tokens: Tensor, // [V, H]
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Option<Tensor>, // [V, H], None when tied
    rope: Rope,
    /// The output projection packed for decoding ([`CausalLm::packed_for_rows`]).
    head_packed: Option<Packed>,
}

/// The rotary tables' inverse frequencies, f32, as transformers computes them.
#[derive(Debug)]
struct Rope {
    /// `[rot/2]`: the full layers' (every layer's without a local base); LongRoPE's short ones.
    inv_freq: Tensor,
    /// `[rot/2]`: the sliding layers' when the config gives them their own base.
    local: Option<Tensor>,
    /// `[rot/2]` LongRoPE's long frequencies, used when the sequence (cached positions included)
    /// is longer than `original`.
    long: Option<(Tensor, i64)>,
    /// cos and sin are multiplied by this (LongRoPE's attention factor; 1 otherwise).
    attention_factor: f64,
}

impl Rope {
    fn new(cfg: &LmConfig, device: Device) -> Rope {
        let base = |theta: f64| {
            let rot = cfg.rotary_dim;
            let exponent =
                Tensor::arange_start_step(0, rot, 2, (Kind::Int64, device)).to_kind(Kind::Float) / rot as f64; // [rot/2]
            Tensor::pow_scalar(theta, &exponent) // [rot/2]
        };
        let local = cfg.rope_local_theta.map(|t| base(t).reciprocal());
        match &cfg.rope_scaling {
            RopeScaling::LongRope { short_factor, long_factor, original_max_position_embeddings, attention_factor } => {
                // transformers: 1 / (ext_factors · base^(2i/d)), the factors as f32.
                let with = |f: &[f64]| {
                    let ext = Tensor::from_slice(f).to_kind(Kind::Float).to_device(device); // [rot/2]
                    (ext * base(cfg.rope_theta)).reciprocal() // [rot/2]
                };
                Rope {
                    inv_freq: with(short_factor),
                    local,
                    long: Some((with(long_factor), *original_max_position_embeddings)),
                    attention_factor: *attention_factor,
                }
            }
            _ => Rope {
                inv_freq: rope_inv_freq(cfg, base(cfg.rope_theta).reciprocal()),
                local,
                long: None,
                attention_factor: 1.0,
            },
        }
    }

    fn shallow_clone(&self) -> Rope {
        Rope {
            inv_freq: self.inv_freq.shallow_clone(),
            local: self.local.as_ref().map(Tensor::shallow_clone),
            long: self.long.as_ref().map(|(t, n)| (t.shallow_clone(), *n)),
            attention_factor: self.attention_factor,
        }
    }

    /// cos and sin `[B, 1, T, rot]` in `kind` at positions `pos` `[B, T]`, with the local
    /// frequencies when `local` (and the config has them); `seq_len` (the largest position + 1)
    /// picks LongRoPE's set.
    fn tables(&self, pos: &Tensor, seq_len: i64, local: bool, kind: Kind) -> (Tensor, Tensor) {
        let dev = pos.device();
        let inv_freq = match (&self.local, &self.long) {
            (Some(l), _) if local => l,
            (_, Some((long, original))) if seq_len > *original => long,
            _ => &self.inv_freq,
        }
        .to_device(dev); // [rot/2]
        let freqs = pos.to_kind(Kind::Float).unsqueeze(-1) * inv_freq.view([1, 1, -1]); // [B, T, rot/2]
        let emb = Tensor::cat(&[&freqs, &freqs], -1); // [B, T, rot]
        let (cos, sin) = if self.attention_factor == 1.0 {
            (emb.cos(), emb.sin())
        } else {
            (emb.cos() * self.attention_factor, emb.sin() * self.attention_factor)
        };
        (cos.to_kind(kind).unsqueeze(1), sin.to_kind(kind).unsqueeze(1)) // [B, 1, T, rot] each
    }
}

/// The scaled inverse frequencies `[rot/2]` from the plain ones (`theta^(-2i/rot)`).
fn rope_inv_freq(cfg: &LmConfig, inv_freq: Tensor) -> Tensor {
    match &cfg.rope_scaling {
        RopeScaling::Default | RopeScaling::LongRope { .. } => inv_freq,
        RopeScaling::Linear { factor } => inv_freq / *factor,
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
        let layout = cfg.family.traits().layout;
        let layers = (0..cfg.num_layers)
            .map(|i| {
                let p = &model / "layers" / i;
                let norm = |name: &str, on: bool| on.then(|| RmsNorm::new(&p / name, cfg.hidden_size, cfg));
                let sandwich = layout == Layout::Sandwich;
                // Created in HF order: input, attention, post-attention, pre- and post-MLP, MLP.
                let input_layernorm = norm("input_layernorm", layout != Layout::Post);
                let self_attn = Attention::new(&p / "self_attn", cfg, i as usize);
                DecoderLayer {
                    input_layernorm,
                    self_attn,
                    post_attention_layernorm: RmsNorm::new(&p / "post_attention_layernorm", cfg.hidden_size, cfg),
                    pre_feedforward_layernorm: norm("pre_feedforward_layernorm", sandwich),
                    post_feedforward_layernorm: norm("post_feedforward_layernorm", layout != Layout::Pre),
                    mlp: Mlp::new(&p / "mlp", cfg),
                    layout,
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
        let rope = Rope::new(cfg, path.device());
        Ok(CausalLm { cfg: cfg.clone(), embed_tokens, layers, norm, lm_head, rope, head_packed: None })
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
            let norms = [&l.input_layernorm, &l.self_attn.q_norm, &l.self_attn.k_norm]
                .into_iter()
                .chain([&l.pre_feedforward_layernorm, &l.post_feedforward_layernorm])
                .flatten()
                .chain([&l.post_attention_layernorm]);
            base.extend(norms.map(|n| &n.weight));
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
        if cfg.family.traits().fused {
            o.split = Self::fused(cfg);
        }
        o
    }

    /// How a family with fused checkpoints (Phi-3) stacks projections: `(fused suffix, [(part
    /// suffix, rows)])`, weights only (the family has no biases). Loading splits by it, export
    /// concatenates by it.
    pub fn fused(cfg: &LmConfig) -> Vec<(String, Vec<(String, i64)>)> {
        let (q, kv, i) = (cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim, cfg.intermediate_size);
        let part = |n: &str, r: i64| (format!(".{n}.weight"), r);
        vec![
            (
                ".self_attn.qkv_proj.weight".into(),
                vec![part("self_attn.q_proj", q), part("self_attn.k_proj", kv), part("self_attn.v_proj", kv)],
            ),
            (".mlp.gate_up_proj.weight".into(), vec![part("mlp.gate_proj", i), part("mlp.up_proj", i)]),
        ]
    }

    /// The runtime config.
    pub fn config(&self) -> &LmConfig {
        &self.cfg
    }

    /// The device of the weights.
    pub fn device(&self) -> Device {
        self.embed_tokens.device()
    }

    /// The output layer: the projection and the final soft cap, what chunked losses take.
    pub fn head(&self) -> LogitHead {
        LogitHead { weight: self.lm_head_weight(), softcap: self.cfg.final_softcap }
    }

    /// `[V, H]`: the output projection (the embedding when tied). Logits are
    /// [`CausalLm::head`]'s: this alone misses a soft cap.
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

    /// Every parameter as the family's checkpoints store it: [`CausalLm::named_parameters`] with
    /// fused projections concatenated ([`CausalLm::fused`], Phi-3), what export writes.
    pub fn checkpoint_tensors(&self) -> Vec<(String, Tensor)> {
        let params = self.named_parameters();
        if !self.cfg.family.traits().fused {
            return params;
        }
        let rules = Self::fused(&self.cfg);
        let mut pending: std::collections::HashMap<String, Tensor> = std::collections::HashMap::new();
        let mut out = Vec::with_capacity(params.len());
        for (name, t) in params {
            let rule = rules.iter().find_map(|(fused, parts)| {
                parts.iter().find(|(p, _)| name.ends_with(p.as_str())).map(|(p, _)| (fused, parts, p))
            });
            let Some((fused, parts, part)) = rule else {
                out.push((name, t));
                continue;
            };
            let stem = name[..name.len() - part.len()].to_string();
            pending.insert(name, t);
            let names: Vec<String> = parts.iter().map(|(p, _)| format!("{stem}{p}")).collect();
            if names.iter().all(|n| pending.contains_key(n)) {
                let cat: Vec<Tensor> = names.iter().filter_map(|n| pending.remove(n)).collect();
                out.push((format!("{stem}{fused}"), Tensor::cat(&cat, 0)));
            }
        }
        out
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
        let opt_norm = |name: String, n: &Option<RmsNorm>| n.as_ref().map(|n| norm(name, n)).transpose();
        let mut layers = Vec::with_capacity(self.layers.len());
        for (i, l) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            let a = &l.self_attn;
            // In HF order, the order `named_parameters` lists.
            let input_layernorm = opt_norm(format!("{p}.input_layernorm"), &l.input_layernorm)?;
            let (q_proj, k_proj, v_proj, o_proj) = (
                lin(format!("{p}.self_attn.q_proj"), &a.q_proj)?,
                lin(format!("{p}.self_attn.k_proj"), &a.k_proj)?,
                lin(format!("{p}.self_attn.v_proj"), &a.v_proj)?,
                lin(format!("{p}.self_attn.o_proj"), &a.o_proj)?,
            );
            let q_norm = opt_norm(format!("{p}.self_attn.q_norm"), &a.q_norm)?;
            let k_norm = opt_norm(format!("{p}.self_attn.k_norm"), &a.k_norm)?;
            let self_attn = Attention { q_proj, k_proj, v_proj, o_proj, q_norm, k_norm, ..a.plain() };
            let post_attention_layernorm = norm(format!("{p}.post_attention_layernorm"), &l.post_attention_layernorm)?;
            let pre_feedforward_layernorm =
                opt_norm(format!("{p}.pre_feedforward_layernorm"), &l.pre_feedforward_layernorm)?;
            let post_feedforward_layernorm =
                opt_norm(format!("{p}.post_feedforward_layernorm"), &l.post_feedforward_layernorm)?;
            let mlp = Mlp {
                gate_proj: lin(format!("{p}.mlp.gate_proj"), &l.mlp.gate_proj)?,
                up_proj: lin(format!("{p}.mlp.up_proj"), &l.mlp.up_proj)?,
                down_proj: lin(format!("{p}.mlp.down_proj"), &l.mlp.down_proj)?,
                act: l.mlp.act,
            };
            layers.push(DecoderLayer {
                input_layernorm,
                self_attn,
                post_attention_layernorm,
                pre_feedforward_layernorm,
                post_feedforward_layernorm,
                mlp,
                layout: l.layout,
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
            rope: self.rope.shallow_clone(),
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
        let logits = self.head().logits(&tr.x); // [B, T, V]
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
    ///
    /// LongRoPE (Phi-3) rotates with its short factors up to `original_max_position_embeddings`
    /// and its long ones past it; the step that crosses that length recomputes the whole
    /// sequence with the long factors (a fresh cache), as transformers' Phi-3 generation does,
    /// so decoding equals the full forward pass of the sequence it has produced.
    pub fn forward_cached(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        cache: &mut KvCache,
    ) -> Result<Tensor> {
        if let Some((_, original)) = &self.rope.long {
            let (past, t) = (cache.len, input_ids.size().get(1).copied().unwrap_or(0));
            if let (Some(seen), true) = (&cache.ids, past > 0 && past <= *original && past + t > *original) {
                let ids = Tensor::cat(&[seen, &input_ids.to_device(seen.device()).to_kind(Kind::Int64)], 1); // [B, S]
                *cache = KvCache::new();
                return Ok(self.forward_cached(&ids, attention_mask, cache)?.narrow(1, past, t));
                // [B, T, V]
            }
        }
        let x = self.trunk(input_ids, attention_mask, Some(cache), ForwardOptions::default())?.x; // [B, T, H]
        let z = match &self.head_packed {
            Some(p) => p.linear(&x, &self.lm_head_weight(), None)?, // [B, T, V]
            None => x.linear(&self.lm_head_weight(), None::<Tensor>), // [B, T, V]
        };
        Ok(softcap(z, self.cfg.final_softcap))
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

        // One mask per distinct window among the layers (full and sliding at most).
        let mut masks: Vec<(Option<i64>, Option<Tensor>)> = Vec::new();
        for l in &self.layers {
            if !masks.iter().any(|(w, _)| *w == l.self_attn.window) {
                masks.push((l.self_attn.window, window_mask(pad.as_ref(), l.self_attn.window, (b, past, t), dev)));
            }
        }

        // RoPE tables in float32, cast to the activation kind; LongRoPE picks its frequencies by
        // the longest sequence of the batch, as transformers does.
        let kind = self.embed_tokens.kind();
        let seq_len = if self.rope.long.is_some() { pos.max().int64_value(&[]) + 1 } else { 0 };
        let global = self.rope.tables(&pos, seq_len, false, kind); // [B, 1, T, rot] each
        let local =
            self.layers.iter().any(|l| l.self_attn.local_rope).then(|| self.rope.tables(&pos, seq_len, true, kind));

        let embedded = Tensor::embedding(&self.embed_tokens, &ids, -1, false, false); // [B, T, H]
        let mut x = if self.cfg.family.traits().embed_scale {
            // Gemma: × √H rounded to the weights' kind first, as transformers does.
            embedded * Tensor::from((self.cfg.hidden_size as f64).sqrt()).to_kind(kind).to_device(dev)
        // [B, T, H]
        } else {
            embedded
        };
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
            let at = &layer.self_attn;
            let mask = masks.iter().find(|(w, _)| *w == at.window).and_then(|(_, m)| m.as_ref());
            let (cos, sin) = match (&local, at.local_rope) {
                (Some(l), true) => (&l.0, &l.1),
                _ => (&global.0, &global.1),
            };
            let apply = |n: &Option<RmsNorm>, x: Tensor| match n {
                Some(n) => n.forward(&x),
                None => x,
            };
            // Pre: norm → attention; Sandwich: norm → attention → norm; Post: attention → norm.
            let h = apply(&layer.input_layernorm, x.shallow_clone()); // [B, T, H]
            let (a, probs, heads, qkv) = at.forward(&h, cos, sin, mask, slot, opts.attentions, opts.train, opts.qkv); // [B, T, H]
            if let Some(all) = qkvs.as_mut() {
                if let Some(one) = qkv {
                    all.push(one);
                }
            }
            let a = if layer.layout == Layout::Pre { a } else { layer.post_attention_layernorm.forward(&a) };
            x = &x + a; // [B, T, H] (not `+=`: that is in place and would alias hidden_states[i])
            let h2 = match layer.layout {
                Layout::Pre => layer.post_attention_layernorm.forward(&x),
                Layout::Sandwich => apply(&layer.pre_feedforward_layernorm, x.shallow_clone()),
                Layout::Post => x.shallow_clone(),
            }; // [B, T, H]
            let (m, act) = layer.mlp.forward(&h2, opts.train); // [B, T, H], [B, T, I]
            let m = apply(&layer.post_feedforward_layernorm, m); // [B, T, H]
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
            if self.rope.long.is_some() {
                c.ids = Some(match &c.ids {
                    Some(seen) => Tensor::cat(&[seen, &ids], 1),
                    None => ids.shallow_clone(),
                }); // [B, S]
            }
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

/// The boolean attention mask `[B, 1, T, S]` (true = attend) of `T` new positions after `past`
/// cached ones, for a `window` (None = full causal) and the padding `pad` `[B, S]` (true = real);
/// `None` = plain causal (SDPA's `is_causal`).
fn window_mask(
    pad: Option<&Tensor>,
    window: Option<i64>,
    (b, past, t): (i64, i64, i64),
    dev: Device,
) -> Option<Tensor> {
    if pad.is_none() && window.is_none() {
        return None;
    }
    let s = past + t;
    let q_abs = Tensor::arange_start(past, s, (Kind::Int64, dev)).unsqueeze(1); // [T, 1]
    let k_abs = Tensor::arange(s, (Kind::Int64, dev)).unsqueeze(0); // [1, S]
    let causal = k_abs.le_tensor(&q_abs).unsqueeze(0); // [1, T, S]
    let allowed = match (window, pad) {
        // The window counts real positions, not columns: padding may sit between cached and new
        // tokens (a shared prompt prefix), where the two differ.
        (Some(w), Some(p)) => {
            let k_pos = p.cumsum(1, Kind::Int64) - 1; // [B, S]
            let q_pos = k_pos.narrow(1, past, t); // [B, T]
            let in_window = k_pos.unsqueeze(1).gt_tensor(&(q_pos.unsqueeze(2) - w)); // [B, T, S]
            causal.logical_and(&in_window)
        }
        (Some(w), None) => causal.logical_and(&k_abs.gt_tensor(&(&q_abs - w)).unsqueeze(0)), // [1, T, S]
        (None, _) => causal,
    };
    let allowed = match pad {
        // A padded query may see only itself so that its softmax row stays finite.
        Some(p) => allowed.logical_and(&p.unsqueeze(1)).logical_or(&k_abs.eq_tensor(&q_abs).unsqueeze(0)), // [B, T, S]
        None => allowed.expand([b, t, s], false),                                                          // [B, T, S]
    };
    Some(allowed.unsqueeze(1)) // [B, 1, T, S]
}

/// What [`CausalLm::trunk`] computes: the normed state `[B, T, H]` and what `opts` asked for.
struct Trunk {
    x: Tensor,
    hidden: Option<Vec<Tensor>>,
    attns: Option<Vec<Tensor>>,
    internals: Option<Vec<LayerInternals>>,
    qkv: Option<Vec<Qkv>>,
}
