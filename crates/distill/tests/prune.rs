//! Structured pruning (`student.init = "prune"`): importance scores, the slice, and the pruned
//! model against the teacher with the pruned parts zeroed and against transformers.

mod common;

use common::{logits, run_python};

use distill::models::lm::CausalLm;
use distill::models::lm::LmConfig;
use distill::student::prune::{importance, select, slice_into, top_k_sorted, Importance};
use tch::{nn, Device, Kind, Tensor};

/// A random teacher: vocab 96, hidden 64, 3 layers, 4 heads in 2 kv groups (head size 16),
/// MLP 128, weights normal(0, 0.2) so that the layers matter.
fn teacher() -> (nn::VarStore, CausalLm) {
    let hf = serde_json::json!({"architectures": ["LlamaForCausalLM"], "vocab_size": 96, "hidden_size": 64,
        "intermediate_size": 128, "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
        "initializer_range": 0.2, "rms_norm_eps": 1e-5});
    let cfg = distill::bench::config_from_json(&hf, "teacher").unwrap();
    let (mut vs, m) = distill::bench::random_model(&cfg, 7).unwrap();
    vs.freeze();
    (vs, m)
}

fn ids(rows: i64, seq: i64, seed: i64) -> Tensor {
    tch::manual_seed(seed);
    Tensor::randint(96, [rows, seq], (Kind::Int64, Device::Cpu))
}

fn shape(t: &LmConfig, layers: i64, hidden: i64, heads: i64, kv: i64, inter: i64) -> LmConfig {
    LmConfig {
        num_layers: layers,
        hidden_size: hidden,
        num_heads: heads,
        num_kv_heads: kv,
        intermediate_size: inter,
        ..t.pick_layers(&(0..layers).collect::<Vec<_>>())
    }
}

/// The student of shape `s` pruned from `t` by importance on `calib`.
fn pruned(t: &(nn::VarStore, CausalLm), s: &LmConfig, calib: &Tensor) -> (nn::VarStore, CausalLm, Importance) {
    let imp = importance(&t.1, calib, None, 3).unwrap();
    let sel = select(&imp, t.1.config(), s).unwrap();
    let vs = nn::VarStore::new(Device::Cpu);
    let m = CausalLm::new(vs.root(), s).unwrap();
    slice_into(&vs, &t.0.variables(), t.1.config(), &sel).unwrap();
    (vs, m, imp)
}

#[test]
fn pruning_nothing_reproduces_the_teacher_exactly() {
    let t = teacher();
    let calib = ids(8, 12, 1);
    let (_vs, s, imp) = pruned(&t, &t.1.config().clone(), &calib);
    let x = ids(3, 10, 2);
    assert_eq!((&logits(&t.1, &x) - logits(&s, &x)).abs().max().double_value(&[]), 0.0);
    assert_eq!(imp.tokens, 96);
    assert_eq!((imp.neurons.len(), imp.neurons[0].len(), imp.heads[2].len(), imp.channels.len()), (3, 128, 4, 64));
    // Every score is a mean of non-negative terms; block influence 1 − cos lies in [0, 2].
    assert!(imp.neurons.iter().flatten().chain(imp.heads.iter().flatten()).chain(&imp.channels).all(|&v| v > 0.0));
    assert!(imp.blocks.iter().all(|&b| (0.0..=2.0).contains(&b)), "{:?}", imp.blocks);
}

/// Removing heads (a whole kv group) and MLP neurons gives the teacher's logits with those
/// heads' `o_proj` columns and those neurons' `down_proj` columns set to zero.
#[test]
fn pruning_heads_and_neurons_equals_zeroing_them() {
    let t = teacher();
    let calib = ids(8, 12, 1);
    let cfg = t.1.config().clone();
    let s_cfg = shape(&cfg, 3, 64, 2, 1, 100);
    let (_vs, s, imp) = pruned(&t, &s_cfg, &calib);
    let sel = select(&imp, &cfg, &s_cfg).unwrap();
    // The kept group is the one of higher total head importance, with both its heads.
    let group = |g: usize, l: usize| imp.heads[l][2 * g] + imp.heads[l][2 * g + 1];
    for l in 0..3 {
        let g = if group(1, l) > group(0, l) { 1 } else { 0 };
        assert_eq!(sel.kv_heads[l], vec![g as i64]);
        assert_eq!(sel.heads[l], vec![2 * g as i64, 2 * g as i64 + 1]);
        assert_eq!(sel.neurons[l], top_k_sorted(&imp.neurons[l], 100));
    }
    // The teacher with the removed heads and neurons zeroed.
    let zvs = nn::VarStore::new(Device::Cpu);
    let z = CausalLm::new(zvs.root(), &cfg).unwrap();
    let mut zvs = zvs;
    zvs.copy(&t.0).unwrap();
    let vars = zvs.variables();
    tch::no_grad(|| {
        for l in 0..3 {
            let o = &vars[&format!("model.layers.{l}.self_attn.o_proj.weight")]; // [H, nh·hd]
            for h in 0..4 {
                if !sel.heads[l].contains(&h) {
                    let _ = o.narrow(1, h * 16, 16).shallow_clone().zero_();
                }
            }
            let d = &vars[&format!("model.layers.{l}.mlp.down_proj.weight")]; // [H, I]
            for j in 0..128 {
                if !sel.neurons[l].contains(&j) {
                    let _ = d.narrow(1, j, 1).shallow_clone().zero_();
                }
            }
        }
    });
    zvs.freeze();
    let x = ids(3, 10, 2);
    let diff = (logits(&z, &x) - logits(&s, &x)).abs().max().double_value(&[]);
    assert!(diff < 1e-5, "{diff}");
}

/// A neuron whose `up_proj` row is zero never fires: importance exactly 0, pruned first.
#[test]
fn a_dead_neuron_scores_zero_and_goes_first() {
    let t = teacher();
    let up = &t.0.variables()["model.layers.1.mlp.up_proj.weight"];
    let _ = tch::no_grad(|| up.narrow(0, 37, 1).shallow_clone().zero_());
    let imp = importance(&t.1, &ids(4, 12, 3), None, 4).unwrap();
    assert_eq!(imp.neurons[1][37], 0.0);
    let sel = select(&imp, t.1.config(), &shape(t.1.config(), 3, 64, 4, 2, 127)).unwrap();
    assert!(!sel.neurons[1].contains(&37));
    assert_eq!(sel.neurons[0].len(), 127);
}

#[test]
fn shapes_that_are_not_a_slice_are_named() {
    let t = teacher();
    let imp = importance(&t.1, &ids(2, 8, 4), None, 2).unwrap();
    let cfg = t.1.config().clone();
    for (s, needle) in [
        (shape(&cfg, 4, 64, 4, 2, 128), "student.layers: 4 is more than the teacher's 3"),
        (shape(&cfg, 3, 64, 4, 4, 128), "student.kv_heads: 4 is more than the teacher's 2"),
        (
            shape(&cfg, 3, 64, 3, 1, 128),
            "student.heads: 3 heads in 1 kv groups is 3 per group, more than the teacher's 2",
        ),
        (shape(&cfg, 3, 64, 4, 2, 200), "student.intermediate: 200 is more than the teacher's 128"),
        (LmConfig { head_dim: 8, ..shape(&cfg, 3, 32, 4, 2, 128) }, "student.heads: head size 8 differs"),
    ] {
        let e = select(&imp, &cfg, &s).unwrap_err().to_string();
        assert!(e.contains(needle), "{e}");
        assert!(!e.contains('\n'));
    }
}

const LOGITS_PY: &str = r#"
import json, sys, torch
from transformers import AutoModelForCausalLM
m = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32).eval()
ids = torch.tensor(json.loads(sys.argv[2]))
with torch.no_grad():
    out = m(input_ids=ids).logits
print(json.dumps({"logits": out.flatten().tolist(), "head_dim": m.config.head_dim,
                  "layers": m.config.num_hidden_layers}))
"#;

/// A student pruned in every dimension (depth 3 → 2, width 64 → 48, 4 → 2 heads in 1 kv group,
/// MLP 128 → 96), exported as an HF directory: transformers gives distill's logits.
#[test]
fn transformers_loads_a_pruned_export_with_the_same_logits() {
    let t = teacher();
    let s_cfg = shape(t.1.config(), 2, 48, 2, 1, 96);
    let (_vs, s, _) = pruned(&t, &s_cfg, &ids(8, 12, 1));
    let dir = common::tmpdir("hf");
    distill::io::export::export_hf(&s, None, &dir).unwrap();
    let x = ids(2, 9, 5);
    let want = logits(&s, &x);
    let rows: Vec<Vec<i64>> = (0..2).map(|r| Vec::<i64>::try_from(x.get(r)).unwrap()).collect();
    let out = run_python(|c| c.arg("-c").arg(LOGITS_PY).arg(&dir).arg(serde_json::to_string(&rows).unwrap()));
    let res: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!((res["head_dim"].as_i64(), res["layers"].as_i64()), (Some(16), Some(2)));
    let hf: Vec<f32> = serde_json::from_value(res["logits"].clone()).unwrap();
    let hf = Tensor::from_slice(&hf).view([2, 9, 96]);
    let diff = (hf - want).abs().max().double_value(&[]);
    assert!(diff < 1e-4, "{diff}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `student.params` picks the widths: SmolLM2-135M's shape (30 layers, 576 wide, 9 heads in 3
/// kv groups of head size 64, MLP 1,536, 49,152 tokens, tied) at 79.3M parameters keeps every
/// channel and 2 of 3 kv groups, and the widest MLP that fits: 640 — the shape the prune recipe
/// names. The count agrees with the built model's, and impossible targets name the key.
#[test]
fn a_parameter_target_picks_the_shape() {
    use distill::student::{config_params, student_config, LmStudent};
    let hf = serde_json::json!({"architectures": ["LlamaForCausalLM"], "vocab_size": 49152, "hidden_size": 576,
        "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
        "tie_word_embeddings": true});
    let smol = distill::bench::config_from_json(&hf, "teacher").unwrap();
    assert_eq!(config_params(&smol), 134_515_008);
    let st = |extra: &str| -> LmStudent { toml::from_str(&format!("layers = 30\ninit = \"prune\"\n{extra}")).unwrap() };
    let s = student_config(&smol, &st("params = 79.3e6")).unwrap();
    let got = (s.num_layers, s.hidden_size, s.num_heads, s.num_kv_heads, s.head_dim, s.intermediate_size);
    assert_eq!(got, (30, 576, 6, 2, 64, 640));
    assert_eq!(config_params(&s), 79_219_008);
    // Fewer parameters: the MLP shrinks until it would be narrower than the residual stream,
    // then a kv group goes, then channels.
    let s = student_config(&smol, &st("params = 60e6")).unwrap();
    assert!(config_params(&s) <= 60_000_000 && s.intermediate_size >= s.hidden_size, "{s:?}");
    assert!(s.hidden_size < 576 || s.num_kv_heads < 2, "{s:?}");
    // The built model counts the same.
    let t = teacher();
    let mut two = st("params = 60000");
    two.layers = 2;
    let small = student_config(t.1.config(), &two).unwrap();
    assert_eq!((small.hidden_size, small.num_kv_heads, small.intermediate_size), (64, 2, 64));
    let vs = nn::VarStore::new(Device::Cpu);
    assert_eq!(CausalLm::new(vs.root(), &small).unwrap().param_count(), config_params(&small));
    for (extra, needle) in [
        ("params = 2e8", "student.params (200000000) must be below the 134515008 parameters"),
        ("params = 2e6", "student.params (2000000) is too few for 30 layers"),
    ] {
        let e = student_config(&smol, &st(extra)).unwrap_err().to_string();
        assert!(e.contains(needle), "{e}");
    }
    let e = st("params = 79.3e6\nhidden = 512").validate().unwrap_err().to_string();
    assert!(e.contains("student.params picks student.hidden"), "{e}");
}
