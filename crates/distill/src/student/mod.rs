//! The student: its `[student]` section, its config derived from the teacher's (shared
//! vocabulary, RoPE, norms and special ids; widths the recipe leaves out keep the teacher's
//! ratios), and its initialization strategies (random, a subset of the teacher's layers, the
//! teacher's embedding projected onto its residual stream's principal directions).

pub mod encoder;
pub mod prune;
pub mod quant;

use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

use crate::io::lm::LoadedLm;
use crate::models::lm::CausalLm;
use crate::models::lm::{LmConfig, LoraCfg};
use crate::{Error, Result};

/// How the student is initialized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum StudentInit {
    /// Normal(0, initializer_range) matrices, ones for norms (the HF Llama init).
    Random,
    /// Every k-th teacher layer (DistilBERT-style), embeddings and norms copied; matrices are
    /// sliced to the student's widths when they shrink.
    LayerSubset,
    /// The teacher's token embedding (and untied output projection) projected onto the top
    /// principal directions of its residual stream (SliceGPT-style rotation, then truncation);
    /// layers random. The scratch twin gets the same init, so KD vs scratch stays a fair test.
    EmbeddingPca,
    /// The teacher pruned to the student's shape (Minitron): neurons, heads (by whole kv
    /// groups and heads within them), channels and blocks ranked by their importance on
    /// `calib_rows` training rows, the most important kept ([`prune`]). Head size stays the
    /// teacher's.
    Prune,
}

/// The student's shape, derived from the teacher's config where a field is left out.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LmStudent {
    /// An existing model as the student, taken as is (an HF directory or a GGUF file, `asset:`
    /// paths too): its own architecture and weights, the teacher's tokenizer (checked before any
    /// weights load). Excludes `init`, `twin_init` and the shape keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// How a student built from the teacher starts (default `random`); see [`StudentInit`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<StudentInit>,
    /// Decoder layers (required unless `from`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub layers: usize,
    /// Hidden size (default: the teacher's).
    #[serde(default)]
    pub hidden: Option<usize>,
    /// Attention heads (default: the teacher's, or hidden / teacher head_dim).
    #[serde(default)]
    pub heads: Option<usize>,
    /// Key/value heads (default: keeps the teacher's query/kv ratio).
    #[serde(default)]
    pub kv_heads: Option<usize>,
    /// MLP width (default: the teacher's ratio to hidden).
    #[serde(default)]
    pub intermediate: Option<usize>,
    /// A target parameter count (a tied embedding counted once) instead of `hidden`, `heads`,
    /// `kv_heads` and `intermediate`: [`shape_for_params`] picks them, width before depth as
    /// Minitron prefers, `layers` as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<f64>,
    /// Tie the output projection to the embedding (default true).
    #[serde(default = "default_true")]
    pub tie_embeddings: bool,
    /// Training rows the `embedding-pca` and `prune` inits read (default 16 and 128).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calib_rows: Option<usize>,
    /// A twin of the KD student of the same shape built with this init instead (trained the
    /// same way): with `init = "prune"` and `twin_init = "embedding-pca"`, Minitron's third row,
    /// the same shape without the teacher's pruned weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub twin_init: Option<StudentInit>,
    /// `[student.lora]`: every trained student phase (KD, its CE twin, variants) trains LoRA
    /// adapters only — optimizer state and checkpoints hold just them — and exports the merged
    /// weights (quantized phases train every weight of the merged model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora: Option<LoraCfg>,
}

impl LmStudent {
    /// The calibration rows the init reads.
    pub fn calib_rows(&self) -> usize {
        self.calib_rows.unwrap_or(if self.init() == StudentInit::Prune { 128 } else { 16 })
    }

    /// How the student starts when built from the teacher: `init`, default `random`.
    pub fn init(&self) -> StudentInit {
        self.init.unwrap_or(StudentInit::Random)
    }

    /// A student of `layers` layers built from the teacher (every other key at its default).
    pub fn with_layers(layers: usize) -> Self {
        LmStudent {
            from: None,
            init: None,
            layers,
            hidden: None,
            heads: None,
            kv_heads: None,
            intermediate: None,
            params: None,
            tie_embeddings: true,
            calib_rows: None,
            twin_init: None,
            lora: None,
        }
    }
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl StudentInit {
    /// As recipes spell it.
    pub fn name(self) -> &'static str {
        match self {
            StudentInit::Random => "random",
            StudentInit::LayerSubset => "layer-subset",
            StudentInit::EmbeddingPca => "embedding-pca",
            StudentInit::Prune => "prune",
        }
    }
}

fn default_true() -> bool {
    true
}

impl LmStudent {
    /// Checks the shape the recipe gives (the rest is derived from the teacher).
    pub fn validate(&self) -> Result<()> {
        let st = self;
        if let Some(l) = &st.lora {
            l.validate().map_err(|m| Error::Recipe(format!("student.lora: {m}")))?;
        }
        if st.from.is_some() {
            let given: Vec<&str> = [
                ("init", st.init.is_some()),
                ("layers", st.layers > 0),
                ("hidden", st.hidden.is_some()),
                ("heads", st.heads.is_some()),
                ("kv_heads", st.kv_heads.is_some()),
                ("intermediate", st.intermediate.is_some()),
                ("params", st.params.is_some()),
                ("twin_init", st.twin_init.is_some()),
            ]
            .into_iter()
            .filter_map(|(k, on)| on.then_some(k))
            .collect();
            if let Some(k) = given.first() {
                return Err(Error::Recipe(format!(
                    "student.from takes an existing model as it is; remove student.{k} (init and the shape keys are for a student built from the teacher)"
                )));
            }
            return Ok(());
        }
        if st.layers == 0 {
            return Err(Error::Recipe(
                "student.layers must be > 0 (or student.from = an existing model's path)".into(),
            ));
        }
        for (k, v) in
            [("hidden", st.hidden), ("heads", st.heads), ("kv_heads", st.kv_heads), ("intermediate", st.intermediate)]
        {
            if v == Some(0) {
                return Err(Error::Recipe(format!("student.{k} must be > 0")));
            }
        }
        if let (Some(h), Some(kv)) = (st.heads, st.kv_heads) {
            if h % kv != 0 {
                return Err(Error::Recipe(format!(
                    "student.heads ({h}) must be a multiple of student.kv_heads ({kv})"
                )));
            }
        }
        if let Some(t) = st.twin_init {
            if t == st.init() || t == StudentInit::Prune {
                return Err(Error::Recipe(format!(
                    "student.twin_init must differ from student.init and cannot be `prune`, got `{}`",
                    t.name()
                )));
            }
        }
        if let Some(p) = st.params {
            if !(p >= 1.0 && p.is_finite()) {
                return Err(Error::Recipe(format!("student.params must be a positive count, got {p}")));
            }
            for (k, v) in [
                ("hidden", st.hidden),
                ("heads", st.heads),
                ("kv_heads", st.kv_heads),
                ("intermediate", st.intermediate),
            ] {
                if v.is_some() {
                    return Err(Error::Recipe(format!(
                        "student.params picks student.{k} (and the other widths); give one or the other"
                    )));
                }
            }
        }
        if st.calib_rows == Some(0) {
            return Err(Error::Recipe("student.calib_rows must be > 0".into()));
        }
        // A pruned student keeps the teacher's head size, whatever its width.
        if let (Some(hid), Some(h), false) = (st.hidden, st.heads, st.init() == StudentInit::Prune) {
            if hid % h != 0 {
                return Err(Error::Recipe(format!("student.hidden ({hid}) must be a multiple of student.heads ({h})")));
            }
        }
        Ok(())
    }
}

/// Derives the student's config from the teacher's: vocabulary, RoPE, norms and special ids
/// are shared; widths left out of the recipe keep the teacher's ratios. The student is always a
/// plain `LlamaForCausalLM` (no biases, no sliding window).
pub fn student_config(t: &LmConfig, s: &LmStudent) -> Result<LmConfig> {
    if let Some(p) = s.params {
        return student_config(t, &shape_for_params(t, s, p)?);
    }
    let hidden = s.hidden.map(|h| h as i64).unwrap_or(t.hidden_size);
    let heads = match s.heads {
        Some(h) => h as i64,
        None if hidden == t.hidden_size => t.num_heads,
        None => (hidden / t.head_dim).max(1),
    };
    let prune = s.init() == StudentInit::Prune;
    if hidden % heads != 0 && !prune {
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
    // The teacher's family (Llama for the Llama-like ones, see `Family::student_family`), with
    // its windows, caps and RoPE; each layer keeps the attention type of the teacher layer a
    // layer subset would take (pruning re-picks them by the layers it keeps).
    let family = t.family.student_family();
    let head_dim = if prune { t.head_dim } else { hidden / heads };
    // The rotated share of each head stays the teacher's (Phi-4-mini's ¾), rounded to even.
    let rotary_dim = if head_dim == t.head_dim {
        t.rotary_dim
    } else {
        ((head_dim as f64 * t.rotary_dim as f64 / t.head_dim as f64) as i64 / 2 * 2).max(2)
    };
    if head_dim != t.head_dim && matches!(t.rope_scaling, crate::models::lm::RopeScaling::LongRope { .. }) {
        return Err(Error::Recipe(format!(
            "student.hidden / student.heads gives heads of {head_dim}, the teacher's are {}: its LongRoPE factors are per rotary dimension, so keep the head size (hidden = {} × heads)",
            t.head_dim, t.head_dim
        )));
    }
    let keep_windows = !family.llama_like();
    let cfg = LmConfig {
        family,
        hidden_size: hidden,
        intermediate_size: inter,
        num_layers: s.layers as i64,
        num_heads: heads,
        num_kv_heads: kv,
        head_dim,
        tie_word_embeddings: s.tie_embeddings,
        qkv_bias: false,
        o_bias: false,
        mlp_bias: false,
        sliding_window: if keep_windows { t.sliding_window } else { None },
        layer_types: if keep_windows {
            t.pick_layers(&subset_layers(t.num_layers, s.layers as i64)).layer_types
        } else {
            vec![crate::models::lm::config::LayerAttention::Full; s.layers]
        },
        rotary_dim,
        // Gemma's query scale follows the head size (it is head_dim, or hidden/heads in the 27B).
        query_pre_attn_scalar: t.query_pre_attn_scalar.map(|q| q * head_dim as f64 / t.head_dim as f64),
        attention_dropout: 0.0,
        ..t.clone()
    };
    cfg.validate().map_err(Error::Recipe)?;
    Ok(cfg)
}

/// Parameters of a plain Llama of config `c` (no biases; a tied head counted once), what
/// [`CausalLm::param_count`] counts on the built model.
pub fn config_params(c: &LmConfig) -> i64 {
    let (h, hd, i) = (c.hidden_size, c.head_dim, c.intermediate_size);
    let layer = 2 * h + 2 * h * c.num_heads * hd + 2 * h * c.num_kv_heads * hd + 3 * h * i;
    let heads = if c.tie_word_embeddings { 1 } else { 2 };
    heads * c.vocab_size * h + c.num_layers * layer + h
}

/// The widths for a target of `params` parameters at `s.layers` layers, width before depth
/// (Minitron): the widest residual stream (the teacher's, then 64 fewer channels at a time),
/// then the most kv groups (whole groups, the teacher's query/kv ratio kept), whose largest MLP
/// (a multiple of 32, at most the teacher's) still fits and is at least as wide as the residual
/// stream. Returns `s` with `hidden`, `heads`, `kv_heads` and `intermediate` set.
pub fn shape_for_params(t: &LmConfig, s: &LmStudent, params: f64) -> Result<LmStudent> {
    let target = params as i64;
    let teacher_shape = LmStudent { params: None, ..s.clone() };
    let full = config_params(&student_config(
        t,
        &LmStudent {
            hidden: Some(t.hidden_size as usize),
            heads: Some(t.num_heads as usize),
            kv_heads: Some(t.num_kv_heads as usize),
            intermediate: Some(t.intermediate_size as usize),
            ..teacher_shape.clone()
        },
    )?);
    if target >= full {
        return Err(Error::Recipe(format!(
            "student.params ({target}) must be below the {full} parameters of the teacher's widths at {} layers",
            s.layers
        )));
    }
    let ratio = (t.num_heads / t.num_kv_heads.max(1)) as usize;
    let mut hidden = t.hidden_size;
    while hidden >= 64 {
        for groups in (1..=t.num_kv_heads as usize).rev() {
            let shape = |inter: usize| LmStudent {
                hidden: Some(hidden as usize),
                heads: Some(groups * ratio),
                kv_heads: Some(groups),
                intermediate: Some(inter),
                ..teacher_shape.clone()
            };
            let Ok(base) = student_config(t, &shape(32)) else { continue };
            // Each MLP neuron costs 3·hidden parameters per layer.
            let per_neuron = 3 * hidden * s.layers as i64;
            let spare = target - config_params(&base);
            if spare < 0 {
                continue;
            }
            let inter = ((32 + spare / per_neuron) / 32 * 32).min(t.intermediate_size);
            if inter >= hidden {
                return Ok(shape(inter as usize));
            }
        }
        hidden = if hidden % 64 == 0 { hidden - 64 } else { hidden / 64 * 64 };
    }
    Err(Error::Recipe(format!(
        "student.params ({target}) is too few for {} layers with an MLP at least as wide as the residual stream; lower student.layers",
        s.layers
    )))
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
pub fn residual_pca(teacher: &CausalLm, ids: &Tensor, k: i64) -> Result<(Tensor, f64)> {
    let h = teacher.config().hidden_size;
    if !(1..=h).contains(&k) {
        return Err(Error::Invalid(format!("residual PCA: {k} directions of a {h}-wide residual stream")));
    }
    tch::no_grad(|| {
        let opts = crate::models::lm::ForwardOptions { hidden_states: true, ..Default::default() };
        let out = teacher.forward(ids, None, opts)?;
        let mut c = Tensor::zeros([h, h], (Kind::Double, teacher.device()));
        for x in out.hidden_states.unwrap_or_default() {
            add_unit_outer(&mut c, &x.f_view([-1, h])?)?; // [N, H]
        }
        let (q, kept) = top_eigenvectors(&c, k)?;
        Ok((q.f_to_kind(Kind::Float)?, kept))
    })
}

/// `c += Σ ĥĥᵀ` over the rows `h` of `x` `[N, H]`, each scaled to unit length `ĥ = h/‖h‖`
/// (in f64; `c` `[H, H]` f64).
pub(crate) fn add_unit_outer(c: &mut Tensor, x: &Tensor) -> Result<()> {
    let x = x.f_to_kind(Kind::Double)?;
    let x = &x / x.f_norm_scalaropt_dim(2, [-1], true)?.f_clamp_min(1e-12)?;
    *c += x.f_transpose(0, 1)?.f_mm(&x)?;
    Ok(())
}

/// The top `k` eigenvectors of the symmetric `c` `[H, H]` as columns `[H, k]`, largest eigenvalue
/// first (in `c`'s kind), and the share of `tr c` their eigenvalues hold.
pub(crate) fn top_eigenvectors(c: &Tensor, k: i64) -> Result<(Tensor, f64)> {
    let (evals, evecs) = c.f_linalg_eigh("L")?; // ascending
    let order = evals.f_argsort(0, true)?;
    let q = evecs.f_index_select(1, &order)?.f_narrow(1, 0, k)?; // [H, k]
    let kept = evals.f_index_select(0, &order)?.f_narrow(0, 0, k)?.f_sum(Kind::Double)?.double_value(&[])
        / evals.f_sum(Kind::Double)?.double_value(&[]);
    Ok((q, kept))
}

/// Initializes a student built by [`CausalLm::new`] (already random, normal(0, 0.02)).
/// `layer-subset` copies the embedding, final norm and the [`subset_layers`] of the teacher,
/// slicing every tensor to the student's shape (leading rows/columns) when widths shrink.
/// `embedding-pca` copies only the teacher's token embedding (and output projection when the
/// student's is untied), projected onto the teacher's top principal directions
/// ([`residual_pca`] over `calib` `[B, T]`) when the student is narrower; the layers stay random.
/// Returns the share of the residual stream's second moment the projection keeps (1 when none).
pub fn init_student(
    student: &nn::VarStore,
    s_cfg: &LmConfig,
    teacher: &LoadedLm,
    init: StudentInit,
    calib: &Tensor,
) -> Result<InitReport> {
    let kept = |kept| InitReport { kept, pruned: None };
    match init {
        StudentInit::Random => Ok(kept(1.0)),
        StudentInit::LayerSubset => init_layer_subset(student, s_cfg, teacher).map(|_| kept(1.0)),
        StudentInit::EmbeddingPca => init_embedding_pca(student, s_cfg, teacher, calib).map(kept),
        StudentInit::Prune => {
            let (imp, sel) = prune::plan(&teacher.model, calib, s_cfg)?;
            prune::slice_into(student, &teacher.vs.variables(), teacher.model.config(), &sel)?;
            Ok(InitReport { kept: 1.0, pruned: Some((imp, sel)) })
        }
    }
}

/// What [`init_student`] did.
#[derive(Debug)]
pub struct InitReport {
    /// `embedding-pca`: the share of the residual stream's second moment the projection keeps
    /// (1 otherwise).
    pub kept: f64,
    /// `prune`: the importance scores and what was kept.
    pub pruned: Option<(prune::Importance, prune::Selection)>,
}

fn init_embedding_pca(student: &nn::VarStore, s_cfg: &LmConfig, teacher: &LoadedLm, calib: &Tensor) -> Result<f64> {
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

fn init_layer_subset(student: &nn::VarStore, s_cfg: &LmConfig, teacher: &LoadedLm) -> Result<()> {
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
}
