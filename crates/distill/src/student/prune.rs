//! Structured pruning of a Llama-family teacher into a smaller student, Minitron-style
//! (Muralidharan et al. 2024, "Compact Language Models via Pruning and Knowledge Distillation";
//! Sreenivas et al. 2024): the importance of every MLP neuron, attention head, embedding channel
//! and block is estimated from forward passes over calibration rows, then the teacher's weights
//! are sliced to the student's shape, keeping the most important of each. The result is an
//! ordinary Llama checkpoint (same head size, so RoPE is untouched) that trains, exports to HF
//! and GGUF like any student; distillation from the unpruned teacher then heals it.
//!
//! Importance, accumulated over the real positions of the calibration rows:
//!
//! ```text
//! neuron j of layer l    mean_t |silu(gate(x))_j · up(x)_j|                  (the input of down_proj)
//! head h of layer l      mean_t ‖attn_out_h‖₂                                  (before o_proj)
//! channel c              mean over every RMSNorm output (2 per layer + final) of mean_t |x_c|
//! block l                1 − mean_t cos(x_in, x_out)      (block influence, ShortGPT, Men et al. 2024)
//! ```
//!
//! Per family: hidden channels slice every hidden-width norm (Gemma's post-norms with the
//! others); per-head q/k norms (Qwen3, Gemma 3) are shared by the heads and kept whole; OLMo 2's
//! q/k norms run over all heads together, which couples them, so its heads are not pruned
//! (refused by name). Gemma's √hidden embedding scale follows the student's width.
//!
//! Heads are pruned consistently with grouped-query attention: a student with `kv` groups of `g`
//! query heads keeps the teacher's `kv` groups of highest total head importance and, inside each,
//! its `g` most important query heads (so each kept query head still reads its own kv head).
//! Depth keeps the blocks of highest influence. Every kept index list is sorted, so the order of
//! layers, heads, channels and neurons is the teacher's.

use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

use crate::models::lm::family::QkNorm;
use crate::models::lm::LmConfig;
use crate::models::lm::{CausalLm, ForwardOptions};
use crate::{Error, Result};

/// Importance scores of a teacher over calibration rows (stored in the run directory).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Importance {
    /// Calibration positions the scores average over.
    pub tokens: usize,
    /// `[L][I]`: mean |activation| of the gated product feeding `down_proj`.
    pub neurons: Vec<Vec<f64>>,
    /// `[L][nh]`: mean L2 norm of each head's attention output.
    pub heads: Vec<Vec<f64>>,
    /// `[H]`: mean |activation| of the RMSNorm outputs, over all norms.
    pub channels: Vec<f64>,
    /// `[L]`: block influence `1 − mean cos(input, output)`.
    pub blocks: Vec<f64>,
}

fn to_vec(t: &Tensor) -> Vec<f64> {
    let t = t.to_kind(Kind::Double).to_device(tch::Device::Cpu).contiguous();
    let mut v = vec![0f64; t.numel()];
    t.copy_data(&mut v, t.numel());
    v
}

/// Scores `model` on calibration rows `ids` `[N, T]` (`mask` `[N, T]`, 1 = real, when padded),
/// `batch` rows per forward, under no-grad.
pub fn importance(model: &CausalLm, ids: &Tensor, mask: Option<&Tensor>, batch: i64) -> Result<Importance> {
    let cfg = model.config();
    let (l, h) = (cfg.num_layers as usize, cfg.hidden_size);
    let dev = model.device();
    let zeros = |n: i64| Tensor::zeros([n], (Kind::Double, dev));
    let mut neurons: Vec<Tensor> = (0..l).map(|_| zeros(cfg.intermediate_size)).collect();
    let mut heads: Vec<Tensor> = (0..l).map(|_| zeros(cfg.num_heads)).collect();
    let mut channels = zeros(h);
    let mut cos_sums: Vec<Tensor> = (0..l).map(|_| zeros(1)).collect();
    let mut tokens = 0f64;
    let n = ids.size()[0];
    tch::no_grad(|| -> Result<()> {
        for start in (0..n).step_by(batch.max(1) as usize) {
            let len = batch.min(n - start);
            let ids = ids.narrow(0, start, len); // [B, T]
            let m = mask.map(|m| m.narrow(0, start, len));
            let opts = ForwardOptions { internals: true, ..Default::default() };
            let st = model.forward_states(&ids, m.as_ref(), opts)?;
            // Weight of each position: 1 where real. [B, T, 1]
            let w = match &m {
                Some(m) => m.to_device(dev).to_kind(Kind::Double).unsqueeze(-1),
                None => Tensor::ones([len, ids.size()[1], 1], (Kind::Double, dev)),
            };
            tokens += w.sum(Kind::Double).double_value(&[]);
            let summed =
                |x: &Tensor| (x.to_kind(Kind::Double) * &w).sum_dim_intlist([0i64, 1].as_slice(), false, Kind::Double);
            for (i, li) in st.internals.iter().enumerate() {
                neurons[i] += summed(&li.mlp_act.abs());
                heads[i] += summed(&li.heads.to_kind(Kind::Double).norm_scalaropt_dim(2, [-1i64].as_slice(), false));
                channels += summed(&li.attn_norm.abs()) + summed(&li.mlp_norm.abs());
                let cos = Tensor::cosine_similarity(
                    &li.input.to_kind(Kind::Double),
                    &li.output.to_kind(Kind::Double),
                    -1,
                    1e-12,
                );
                cos_sums[i] += summed(&cos.unsqueeze(-1)); // [1]
            }
            channels += summed(&st.last.abs());
        }
        Ok(())
    })?;
    let t = tokens.max(1.0);
    let norms = (2 * l + 1) as f64;
    Ok(Importance {
        tokens: tokens as usize,
        neurons: neurons.iter().map(|x| to_vec(&(x / t))).collect(),
        heads: heads.iter().map(|x| to_vec(&(x / t))).collect(),
        channels: to_vec(&(channels / (t * norms))),
        blocks: cos_sums.iter().map(|c| 1.0 - to_vec(&(c / t))[0]).collect(),
    })
}

/// The teacher indices a pruned student keeps, each list sorted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Selection {
    /// Teacher layers, one per student layer.
    pub layers: Vec<i64>,
    /// Hidden channels.
    pub channels: Vec<i64>,
    /// Per student layer: the teacher's kv groups kept.
    pub kv_heads: Vec<Vec<i64>>,
    /// Per student layer: the teacher's query heads kept, grouped by kept kv group.
    pub heads: Vec<Vec<i64>>,
    /// Per student layer: the teacher's MLP neurons kept.
    pub neurons: Vec<Vec<i64>>,
}

/// Indices of the `k` largest `scores`, sorted ascending (ties: the lower index first).
pub fn top_k_sorted(scores: &[f64], k: usize) -> Vec<i64> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let mut kept: Vec<i64> = idx.into_iter().take(k).map(|i| i as i64).collect();
    kept.sort_unstable();
    kept
}

/// Checks that the student's shape `s` is a slice of the teacher's `t`; each error names the
/// recipe key.
pub fn check_slice(t: &LmConfig, s: &LmConfig) -> Result<()> {
    let bad = |key: &str, msg: String| Err(Error::Recipe(format!("student.{key}: {msg}")));
    for (key, sv, tv) in [
        ("layers", s.num_layers, t.num_layers),
        ("hidden", s.hidden_size, t.hidden_size),
        ("heads", s.num_heads, t.num_heads),
        ("kv_heads", s.num_kv_heads, t.num_kv_heads),
        ("intermediate", s.intermediate_size, t.intermediate_size),
    ] {
        if sv > tv {
            return bad(key, format!("{sv} is more than the teacher's {tv}; pruning can only remove"));
        }
    }
    if s.head_dim != t.head_dim {
        return bad("heads", format!("head size {} differs from the teacher's {}", s.head_dim, t.head_dim));
    }
    if s.num_heads % s.num_kv_heads != 0 {
        return bad("kv_heads", format!("{} does not divide student.heads {}", s.num_kv_heads, s.num_heads));
    }
    let (gs, gt) = (s.num_heads / s.num_kv_heads, t.num_heads / t.num_kv_heads);
    if gs > gt {
        return bad(
            "heads",
            format!(
                "{} heads in {} kv groups is {gs} per group, more than the teacher's {gt}: a query head can only keep its own kv head",
                s.num_heads, s.num_kv_heads
            ),
        );
    }
    if t.qkv_bias || t.o_bias || t.mlp_bias {
        return Err(Error::Invalid(
            "prune init: the teacher has biases; only bias-free Llama teachers are pruned".into(),
        ));
    }
    // OLMo 2 normalizes all heads' queries (and keys) together: dropping a head changes every
    // other head's statistics, so heads do not prune there.
    if t.family.traits().qk_norm == QkNorm::Full && (s.num_heads != t.num_heads || s.num_kv_heads != t.num_kv_heads) {
        return bad(
            "heads",
            format!(
                "a {} teacher's q/k norms run over all heads together, so its heads do not prune; keep heads = {} and kv_heads = {} (prune layers, hidden and intermediate)",
                t.family.hf_class(),
                t.num_heads,
                t.num_kv_heads
            ),
        );
    }
    Ok(())
}

/// What a student of shape `s` keeps of the teacher `t` by `imp`.
pub fn select(imp: &Importance, t: &LmConfig, s: &LmConfig) -> Result<Selection> {
    check_slice(t, s)?;
    let layers = top_k_sorted(&imp.blocks, s.num_layers as usize);
    let channels = top_k_sorted(&imp.channels, s.hidden_size as usize);
    let (gs, gt) = (s.num_heads / s.num_kv_heads, t.num_heads / t.num_kv_heads);
    let (mut kv_heads, mut heads, mut neurons) = (Vec::new(), Vec::new(), Vec::new());
    for &l in &layers {
        let hs = &imp.heads[l as usize];
        let group_score: Vec<f64> =
            (0..t.num_kv_heads as usize).map(|g| hs[g * gt as usize..][..gt as usize].iter().sum()).collect();
        let groups = top_k_sorted(&group_score, s.num_kv_heads as usize);
        let mut q = Vec::new();
        for &g in &groups {
            let first = g * gt;
            let within = top_k_sorted(&hs[first as usize..][..gt as usize], gs as usize);
            q.extend(within.into_iter().map(|j| first + j));
        }
        kv_heads.push(groups);
        heads.push(q);
        neurons.push(top_k_sorted(&imp.neurons[l as usize], s.intermediate_size as usize));
    }
    Ok(Selection { layers, channels, kv_heads, heads, neurons })
}

/// Rows per forward when [`plan`] scores calibration rows.
const CALIB_BATCH: i64 = 8;

/// Importance of `teacher` on calibration rows `calib` `[N, T]` and what a student of shape `s`
/// keeps by it: the whole decision, shared by `student.init = "prune"` and the LM runner.
pub fn plan(teacher: &CausalLm, calib: &Tensor, s: &LmConfig) -> Result<(Importance, Selection)> {
    let imp = importance(teacher, calib, None, CALIB_BATCH)?;
    let sel = select(&imp, teacher.config(), s)?;
    Ok((imp, sel))
}

/// Rows `[i·hd, (i+1)·hd)` of every head `i` in `heads`, in order.
fn head_rows(heads: &[i64], hd: i64) -> Vec<i64> {
    heads.iter().flat_map(|&h| (h * hd)..((h + 1) * hd)).collect()
}

/// Copies the teacher's weights (`t_vars`, config `t`) into the student's variables, sliced by
/// `sel`: embeddings and norms by channel; q/k/v by kept head blocks and channels; o by channels
/// and kept heads; gate/up by neurons and channels; down by channels and neurons.
pub fn slice_into(
    student: &nn::VarStore,
    t_vars: &std::collections::HashMap<String, Tensor>,
    t: &LmConfig,
    sel: &Selection,
) -> Result<()> {
    let dev = student.device();
    let idx = |v: &[i64]| Tensor::from_slice(v).to_device(dev);
    let channels = idx(&sel.channels);
    tch::no_grad(|| {
        for (name, dst) in student.variables() {
            let (src_name, picks): (String, Vec<(i64, Tensor)>) = match name.strip_prefix("model.layers.") {
                Some(rest) => {
                    let (i, tail) = rest
                        .split_once('.')
                        .ok_or_else(|| Error::Invalid(format!("prune: unexpected tensor `{name}`")))?;
                    let i: usize =
                        i.parse().map_err(|_| Error::Invalid(format!("prune: unexpected tensor `{name}`")))?;
                    let l = sel.layers[i];
                    let q = idx(&head_rows(&sel.heads[i], t.head_dim));
                    let kv = idx(&head_rows(&sel.kv_heads[i], t.head_dim));
                    let n = idx(&sel.neurons[i]);
                    let c = channels.shallow_clone();
                    let full_qk = t.family.traits().qk_norm == QkNorm::Full;
                    let picks = match tail {
                        "input_layernorm.weight"
                        | "post_attention_layernorm.weight"
                        | "pre_feedforward_layernorm.weight"
                        | "post_feedforward_layernorm.weight" => vec![(0, c)],
                        // One gain per head dimension, shared by every head: kept whole.
                        "self_attn.q_norm.weight" | "self_attn.k_norm.weight" if !full_qk => vec![],
                        // Over all heads together (OLMo 2): the kept heads' rows (all of them,
                        // `check_slice` refuses pruning heads there).
                        "self_attn.q_norm.weight" => vec![(0, q)],
                        "self_attn.k_norm.weight" => vec![(0, kv)],
                        "self_attn.q_proj.weight" => vec![(0, q), (1, c)],
                        "self_attn.k_proj.weight" | "self_attn.v_proj.weight" => vec![(0, kv), (1, c)],
                        "self_attn.o_proj.weight" => vec![(0, c), (1, q)],
                        "mlp.gate_proj.weight" | "mlp.up_proj.weight" => vec![(0, n), (1, c)],
                        "mlp.down_proj.weight" => vec![(0, c), (1, n)],
                        _ => return Err(Error::Invalid(format!("prune: no slicing rule for `{name}`"))),
                    };
                    (format!("model.layers.{l}.{tail}"), picks)
                }
                None => match name.as_str() {
                    "model.embed_tokens.weight" => (name.clone(), vec![(1, channels.shallow_clone())]),
                    "lm_head.weight" if t_vars.contains_key("lm_head.weight") => {
                        (name.clone(), vec![(1, channels.shallow_clone())])
                    }
                    "lm_head.weight" => ("model.embed_tokens.weight".into(), vec![(1, channels.shallow_clone())]),
                    "model.norm.weight" => (name.clone(), vec![(0, channels.shallow_clone())]),
                    _ => return Err(Error::Invalid(format!("prune: no slicing rule for `{name}`"))),
                },
            };
            let mut src = t_vars
                .get(&src_name)
                .ok_or_else(|| Error::Invalid(format!("prune: the teacher has no tensor `{src_name}`")))?
                .to_device(dev);
            for (dim, i) in picks {
                src = src.index_select(dim, &i);
            }
            if src.size() != dst.size() {
                return Err(Error::Invalid(format!(
                    "prune: `{name}` sliced to {:?}, the student's is {:?}",
                    src.size(),
                    dst.size()
                )));
            }
            dst.shallow_clone().copy_(&src.to_kind(dst.kind()));
        }
        Ok(())
    })
}
