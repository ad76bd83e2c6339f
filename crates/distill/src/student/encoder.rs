//! Encoder students: a shallower BERT from every other teacher layer (DistilBERT), a narrower
//! one initialised by projecting the teacher onto its residual stream's principal directions
//! (with a `Dense` head back to the teacher's width), and the static (Model2Vec) student built
//! from the teacher's per-token embeddings.

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::models::bert::{mean_pool, BertConfig};
use crate::models::sentence::{Encoder, StaticEncoder};
use crate::student::{add_unit_outer, top_eigenvectors};
use crate::{Error, Result};

/// Every other teacher layer, ending at the last (`6 → 3`: layers 1, 3, 5), DistilBERT's rule;
/// evenly spaced when the student has more than half the teacher's layers.
pub fn every_other(teacher_layers: i64, student_layers: i64) -> Vec<i64> {
    let n = student_layers.clamp(1, teacher_layers);
    if 2 * n <= teacher_layers + 1 {
        (0..n).map(|i| teacher_layers - 1 - 2 * (n - 1 - i)).collect()
    } else {
        crate::student::subset_layers(teacher_layers, n)
    }
}

/// The teacher's tokenizer and pooling around a fresh BERT of `config`.
fn sibling(teacher: &Encoder, config: BertConfig) -> Result<Encoder> {
    let mut s = Encoder::build(
        config,
        teacher.vs.device(),
        &teacher.tokenizer_json,
        std::path::Path::new("tokenizer.json"),
        teacher.max_len,
        teacher.pooling,
        teacher.normalize,
    )?;
    s.tokenizer_files = teacher.tokenizer_files.clone();
    Ok(s)
}

/// A student with the teacher's `layers` (embeddings copied), trainable.
pub fn layer_subset(teacher: &Encoder, layers: &[i64]) -> Result<Encoder> {
    let tc = &teacher.bert.config;
    if layers.is_empty() || layers.iter().any(|&l| l < 0 || l >= tc.num_hidden_layers) {
        return Err(Error::Invalid(format!(
            "student layers {layers:?}: the teacher has layers 0..{}",
            tc.num_hidden_layers - 1
        )));
    }
    let cfg = BertConfig { num_hidden_layers: layers.len() as i64, ..tc.clone() };
    let s = sibling(teacher, cfg)?;
    let tv = teacher.vs.variables();
    tch::no_grad(|| -> Result<()> {
        for (name, dst) in s.vs.variables() {
            if name.starts_with("dense.") {
                continue;
            }
            let src_name = map_layer(&name, layers);
            let src = tv.get(&src_name).ok_or_else(|| Error::Invalid(format!("teacher lacks `{src_name}`")))?;
            dst.shallow_clone().copy_(src);
        }
        Ok(())
    })?;
    if let Some(d) = &teacher.dense {
        let (o, i) = d.ws.size2()?;
        let mut s = s;
        s.add_dense(i, o)?;
        let sd = s.dense.as_ref().expect("just added");
        tch::no_grad(|| {
            sd.ws.shallow_clone().copy_(&d.ws);
            if let (Some(a), Some(b)) = (&sd.bs, &d.bs) {
                a.shallow_clone().copy_(b);
            }
        });
        return Ok(s);
    }
    Ok(s)
}

fn map_layer(name: &str, layers: &[i64]) -> String {
    if let Some(rest) = name.strip_prefix("encoder.layer.") {
        if let Some((i, tail)) = rest.split_once('.') {
            if let Some(t) = i.parse::<usize>().ok().and_then(|i| layers.get(i)) {
                return format!("encoder.layer.{t}.{tail}");
            }
        }
    }
    name.to_string()
}

/// The narrow student's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NarrowShape {
    /// Its layers (every other teacher layer, ending at the last).
    pub layers: i64,
    /// Its hidden width (the teacher's projected onto its top principal directions).
    pub hidden: i64,
    /// Its attention heads.
    pub heads: i64,
    /// Its MLP width.
    pub intermediate: i64,
}

/// Principal directions of the teacher's residual stream over the real tokens of `rows`: the
/// top `k` eigenvectors of `Σ ĥĥᵀ` over every hidden state, each position normalised
/// (uncentered, as SliceGPT). Returns `[H, k]`.
pub fn residual_pca(teacher: &Encoder, rows: &[Vec<i64>], k: i64) -> Result<Tensor> {
    let h = teacher.bert.config.hidden_size;
    let mut c = Tensor::zeros([h, h], (Kind::Double, teacher.vs.device()));
    tch::no_grad(|| -> Result<()> {
        for chunk in rows.chunks(16) {
            let r: Vec<&[i64]> = chunk.iter().map(|v| v.as_slice()).collect();
            let (ids, mask) = teacher.pad(&r);
            let out = teacher.bert.forward(&ids, &mask, false, false);
            let keep = mask.view([-1]).nonzero().squeeze_dim(1);
            for x in &out.hidden_states {
                add_unit_outer(&mut c, &x.view([-1, h]).index_select(0, &keep))?;
            }
        }
        Ok(())
    })?;
    Ok(top_eigenvectors(&c, k)?.0.to_kind(Kind::Float))
}

/// A narrower, possibly shallower student: residual stream projected by `P` `[H, h]` (the
/// teacher's principal directions), the first `heads` heads of each kept layer (the head size
/// stays the teacher's), the MLP neurons with the largest input-weight norms, and a `Dense`
/// head `h → H` initialised to `P` so the student's embedding lives in the teacher's space.
/// LayerNorm gains and biases are projected like vectors (an approximation: LayerNorm does not
/// commute with a projection). Returns the student, trainable.
pub fn projected(teacher: &Encoder, shape: NarrowShape, layers: &[i64], calib: &[Vec<i64>]) -> Result<Encoder> {
    let tc = &teacher.bert.config;
    let hd = tc.hidden_size / tc.num_attention_heads;
    if shape.heads * hd != shape.hidden {
        return Err(Error::Invalid(format!(
            "narrow student: hidden {} must be heads {} × the teacher's head size {hd}",
            shape.hidden, shape.heads
        )));
    }
    if shape.hidden > tc.hidden_size || shape.intermediate > tc.intermediate_size || layers.len() as i64 != shape.layers
    {
        return Err(Error::Invalid("narrow student: widths must not exceed the teacher's".into()));
    }
    let cfg = BertConfig {
        num_hidden_layers: shape.layers,
        hidden_size: shape.hidden,
        num_attention_heads: shape.heads,
        intermediate_size: shape.intermediate,
        ..tc.clone()
    };
    let mut s = sibling(teacher, cfg)?;
    let p = residual_pca(teacher, calib, shape.hidden)?; // [H, h]
    let pt = p.transpose(0, 1); // [h, H]
    let tv = teacher.vs.variables();
    let head_rows = Tensor::arange(shape.hidden, (Kind::Int64, Device::Cpu)).to(p.device());
    tch::no_grad(|| -> Result<()> {
        for (name, dst) in s.vs.variables() {
            let src_name = map_layer(&name, layers);
            let src = tv.get(&src_name).ok_or_else(|| Error::Invalid(format!("teacher lacks `{src_name}`")))?;
            let v = project(&name, src, &p, &pt, &head_rows, &tv, &src_name, shape.intermediate)?;
            dst.shallow_clone().copy_(&v);
        }
        Ok(())
    })?;
    s.add_dense(shape.hidden, tc.hidden_size)?;
    let d = s.dense.as_ref().expect("just added");
    tch::no_grad(|| {
        d.ws.shallow_clone().copy_(&p);
        if let Some(b) = &d.bs {
            let _ = b.shallow_clone().zero_();
        }
    });
    Ok(s)
}

/// The MLP neurons of a teacher layer ranked by the L2 norm of their input weights, top `n`.
fn top_neurons(tv: &std::collections::HashMap<String, Tensor>, src_name: &str, n: i64) -> Result<Tensor> {
    let layer = src_name.split(".intermediate.").next().unwrap_or("").split(".output.").next().unwrap_or("");
    let w = tv
        .get(&format!("{layer}.intermediate.dense.weight"))
        .ok_or_else(|| Error::Invalid(format!("teacher lacks `{layer}.intermediate.dense.weight`")))?;
    let norms = w.norm_scalaropt_dim(2, [1i64].as_slice(), false);
    Ok(norms.argsort(0, true).narrow(0, 0, n).sort(0, false).0)
}

#[allow(clippy::too_many_arguments)]
fn project(
    name: &str,
    src: &Tensor,
    p: &Tensor,
    pt: &Tensor,
    head_rows: &Tensor,
    tv: &std::collections::HashMap<String, Tensor>,
    src_name: &str,
    inter: i64,
) -> Result<Tensor> {
    let is = |s: &str| name.ends_with(s);
    Ok(if name.starts_with("embeddings.") && is("_embeddings.weight") {
        src.mm(p) // [n, H] → [n, h]
    } else if is("LayerNorm.weight") {
        (p * p).transpose(0, 1).mv(src) // weighted mean of the gains per direction
    } else if is("LayerNorm.bias") {
        pt.mv(src)
    } else if is("self.query.weight") || is("self.key.weight") || is("self.value.weight") {
        src.index_select(0, head_rows).mm(p) // [h(out heads), H] · [H, h]
    } else if is("self.query.bias") || is("self.key.bias") || is("self.value.bias") {
        src.index_select(0, head_rows)
    } else if is("attention.output.dense.weight") {
        pt.mm(&src.index_select(1, head_rows)) // [h, H] · [H, h]
    } else if is("output.dense.bias") {
        pt.mv(src)
    } else if is("intermediate.dense.weight") {
        src.index_select(0, &top_neurons(tv, src_name, inter)?).mm(p) // [I', H] · [H, h]
    } else if is("intermediate.dense.bias") {
        src.index_select(0, &top_neurons(tv, src_name, inter)?)
    } else if is("output.dense.weight") {
        pt.mm(&src.index_select(1, &top_neurons(tv, src_name, inter)?)) // [h, H] · [H, I']
    } else {
        return Err(Error::Invalid(format!("narrow student: no projection rule for `{name}`")));
    })
}

/// How the static student is built (Model2Vec's distillation).
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct StaticCfg {
    /// Output width after PCA (default 256).
    pub dim: i64,
    /// SIF coefficient `a` of the frequency weight `a / (a + p(token))`, with `p` Zipf's law over
    /// the vocabulary's order (default 1e-4, Model2Vec's); 0 turns the weighting off.
    pub sif: f64,
    /// Vocabulary tokens per teacher forward (default 1024).
    pub batch: usize,
}

impl Default for StaticCfg {
    fn default() -> Self {
        StaticCfg { dim: 256, sif: 1e-4, batch: 1024 }
    }
}

/// Model2Vec: every vocabulary token `t` run through the teacher as `[CLS] t [SEP]`, its
/// last hidden state mean-pooled over the three positions; the `[V, H]` table mean-centred and
/// projected on its top `dim` principal components; each row scaled by `a / (a + p_i)` with
/// `p_i ∝ 1/(i + 2)` (Zipf over the vocabulary order). Embeddings are normalised at inference
/// when the teacher's are.
pub fn static_student(teacher: &Encoder, cfg: &StaticCfg) -> Result<StaticEncoder> {
    let tok = &teacher.tokenizer;
    let v = tok.get_vocab_size(true) as i64;
    let id = |s: &str| tok.token_to_id(s).map(|i| i as i64);
    let (cls, sep) = match (id("[CLS]"), id("[SEP]")) {
        (Some(c), Some(s)) => (c, s),
        _ => return Err(Error::Invalid("static student: the tokenizer has no [CLS]/[SEP] tokens".into())),
    };
    let h = teacher.bert.config.hidden_size;
    if !(1..=h).contains(&cfg.dim) {
        return Err(Error::Invalid(format!("static student: dim {} must be in 1..={h}", cfg.dim)));
    }
    let dev = teacher.vs.device();
    let mut parts = Vec::new();
    tch::no_grad(|| {
        let mut start = 0;
        while start < v {
            let n = (cfg.batch as i64).min(v - start);
            let mid = Tensor::arange_start(start, start + n, (Kind::Int64, dev)).unsqueeze(1);
            let ids = Tensor::cat(&[mid.full_like(cls), mid.shallow_clone(), mid.full_like(sep)], 1); // [n, 3]
            let mask = ids.ones_like();
            let out = teacher.bert.forward(&ids, &mask, false, false);
            parts.push(mean_pool(out.last(), &mask).to(Device::Cpu));
            start += n;
        }
    });
    let table = Tensor::cat(&parts, 0).to_kind(Kind::Double); // [V, H]
    let centred = &table - table.mean_dim([0i64].as_slice(), true, Kind::Double);
    let cov = centred.transpose(0, 1).mm(&centred);
    let (comps, _) = top_eigenvectors(&cov, cfg.dim)?; // [H, d]
    let mut e = centred.mm(&comps); // [V, d]
    if cfg.sif > 0.0 {
        let inv = Tensor::arange(v, (Kind::Double, Device::Cpu)).f_add_scalar(2.0)?.reciprocal();
        let p = &inv / inv.sum(Kind::Double);
        let w = (p + cfg.sif).reciprocal() * cfg.sif; // [V]
        e *= w.unsqueeze(1);
    }
    let mut tokenizer = teacher.tokenizer.clone();
    tokenizer.with_truncation(None).map_err(|e| Error::Invalid(e.to_string()))?;
    Ok(StaticEncoder {
        embeddings: e.to_kind(Kind::Float),
        tokenizer,
        tokenizer_json: teacher.tokenizer_json.clone(),
        normalize: teacher.normalize,
        max_len: 512,
        unk: id("[UNK]"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_other_layer_ends_at_the_last() {
        assert_eq!(every_other(6, 3), vec![1, 3, 5]);
        assert_eq!(every_other(12, 6), vec![1, 3, 5, 7, 9, 11]);
        assert_eq!(every_other(6, 1), vec![5]);
        assert_eq!(every_other(6, 5), vec![0, 1, 3, 4, 5]);
    }

    #[test]
    fn layer_names_map_to_teacher_layers() {
        assert_eq!(map_layer("encoder.layer.1.output.dense.weight", &[1, 3, 5]), "encoder.layer.3.output.dense.weight");
        assert_eq!(map_layer("embeddings.LayerNorm.weight", &[1, 3, 5]), "embeddings.LayerNorm.weight");
    }
}
