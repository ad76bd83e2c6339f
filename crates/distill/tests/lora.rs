//! LoRA adapters on the causal LM (`models/lm/lora.rs`): the adapted forward against its merged
//! model, the KV-cache and packed decoding paths, one projection against PyTorch, the merged
//! export against transformers, which variables a frozen base leaves to train, the adapter
//! dropout, and the settings' errors.
//!
//! The model is the `llama_untied` fixture (vocab 96, hidden 32, head_dim 16, 4 heads / 2 kv
//! heads, MLP 64, 2 layers, q/k/v/o biases, Llama 3 RoPE, weights of std 0.2) with rank-4
//! adapters (alpha 8, scale 2) on all seven projections and `lora_B` set to N(0, 0.2), so that the
//! adapters move the logits.

mod common;

use std::collections::HashSet;
use std::sync::{Mutex, MutexGuard};

use common::{llama_fixtures, logits, max_diff, run_python};

use distill::models::lm::{CausalLm, ForwardOptions, KvCache, LmConfig, LoraCfg};
use tch::{nn, Device, Kind, Tensor};

/// The tests draw from torch's global generator (adapter init, dropout) and run in parallel
/// threads: each holds this lock, so that its seeds give its draws.
static RNG: Mutex<()> = Mutex::new(());

fn rng_lock() -> MutexGuard<'static, ()> {
    RNG.lock().unwrap_or_else(|e| e.into_inner())
}

fn all_rank4() -> LoraCfg {
    LoraCfg { rank: 4, alpha: 8.0, dropout: 0.0, targets: vec!["all".into()] }
}

/// The `llama_untied` fixture with `lora`'s adapters added after loading.
fn fixture_with_lora(lora: &LoraCfg) -> (nn::VarStore, CausalLm) {
    let (vs, mut model) =
        CausalLm::from_pretrained(llama_fixtures().join("llama_untied"), Device::Cpu, Kind::Float).unwrap();
    tch::manual_seed(5);
    model.add_lora(&vs.root(), lora).unwrap();
    (vs, model)
}

/// Sets every `lora_B` to N(0, `std`) (seeded), so that the adapters change the outputs.
fn randomize_b(model: &CausalLm, seed: i64, std: f64) {
    tch::manual_seed(seed);
    tch::no_grad(|| {
        for (name, mut b) in model.named_lora_parameters() {
            if name.ends_with("lora_B") {
                b.copy_(&(Tensor::randn(b.size(), (Kind::Float, Device::Cpu)) * std));
            }
        }
    });
}

/// Two rows of six token ids.
fn ids() -> Tensor {
    Tensor::from_slice(&[1i64, 4, 17, 33, 90, 5, 2, 61, 7, 7, 40, 95]).view([2, 6])
}

/// The logits of `model` decoding `ids` through a KV cache: a 3-token prompt, then one token per
/// step.
fn cached_logits(model: &CausalLm, ids: &Tensor) -> Tensor {
    tch::no_grad(|| {
        let mut cache = KvCache::new();
        let mut parts = vec![model.forward_cached(&ids.narrow(1, 0, 3), None, &mut cache).unwrap()];
        for t in 3..ids.size()[1] {
            parts.push(model.forward_cached(&ids.narrow(1, t, 1), None, &mut cache).unwrap());
        }
        Tensor::cat(&parts, 1) // [B, T, V]
    })
}

const PROJ_PY: &str = r#"
import sys, torch
from safetensors.torch import load_file, save_file
t = load_file(sys.argv[1])
s = float(sys.argv[2])
h, w, b, a, bb = t["h"], t["weight"], t["bias"], t["lora_A"], t["lora_B"]
save_file({"v": h @ w.T + b + s * (h @ a.T) @ bb.T}, sys.argv[3])
"#;

/// (a) A fresh adapter changes nothing (B = 0, A within PEFT's bound); with random B the
/// adapted logits equal the merged model's (≤ 1e-5) and differ from the base's; the KV-cache path
/// of the adapted model and the packed decoding copy give the full forward's logits; `v_proj`'s
/// output equals PyTorch's `h·Wᵀ + b + s·(h·Aᵀ)·Bᵀ` on the same inputs (≤ 1e-5).
#[test]
fn adapted_forward_equals_merged_model_decoding_paths_and_torch() {
    let _rng = rng_lock();
    let (_bvs, base) =
        CausalLm::from_pretrained(llama_fixtures().join("llama_untied"), Device::Cpu, Kind::Float).unwrap();
    let (vs, model) = fixture_with_lora(&all_rank4());
    let ids = ids();
    let z_base = logits(&base, &ids);
    assert!(model.has_lora() && !base.has_lora());
    assert_eq!(max_diff(&logits(&model, &ids), &z_base), 0.0, "a fresh adapter changes the logits");
    for (name, t) in model.named_lora_parameters() {
        let max = t.abs().max().double_value(&[]);
        if name.ends_with("lora_A") {
            let bound = 1.0 / (t.size()[1] as f64).sqrt();
            assert!(max <= bound && max > 0.8 * bound, "{name}: max |A| {max}, bound {bound}");
        } else {
            assert_eq!(max, 0.0, "{name}");
        }
    }

    randomize_b(&model, 11, 0.2);
    let z = logits(&model, &ids);
    let merged = model.merged().unwrap();
    assert!(!merged.has_lora() && merged.lora_param_count() == 0);
    let d_merged = max_diff(&z, &logits(&merged, &ids));
    let moved = max_diff(&z, &z_base);
    eprintln!("max|Δ| adapted vs merged {d_merged:.2e} (adapters move the logits by {moved:.2})");
    assert!(d_merged <= 1e-5, "{d_merged}");
    assert!(moved > 0.5, "{moved}");

    let d_cache = max_diff(&cached_logits(&model, &ids), &z);
    let packed = model.packed_for_rows(2).unwrap();
    assert!(!packed.has_lora());
    let d_packed = max_diff(&cached_logits(&packed, &ids), &z);
    eprintln!("max|Δ| KV cache {d_cache:.2e}, packed merged copy {d_packed:.2e}");
    assert!(d_cache <= 1e-5 && d_packed <= 1e-5, "{d_cache} {d_packed}");

    // One projection against PyTorch: layer 0's v_proj (no RoPE on v) on its real input.
    let opts = ForwardOptions { internals: true, qkv: true, ..Default::default() };
    let st = tch::no_grad(|| model.forward_states(&ids, None, opts)).unwrap();
    let var = |n: &str| vs.variables()[&format!("model.layers.0.self_attn.v_proj.{n}")].detach();
    let tmp = tempfile::tempdir().unwrap();
    let (inp, out) = (tmp.path().join("in.safetensors"), tmp.path().join("out.safetensors"));
    let named = [
        ("h", st.internals[0].attn_norm.detach()),
        ("weight", var("weight")),
        ("bias", var("bias")),
        ("lora_A", var("lora_A")),
        ("lora_B", var("lora_B")),
    ];
    Tensor::write_safetensors(&named, &inp).unwrap();
    let scale = all_rank4().scale();
    assert_eq!(scale, 2.0);
    run_python(|c| c.arg("-c").arg(PROJ_PY).arg(&inp).arg(scale.to_string()).arg(&out));
    let torch_v = Tensor::read_safetensors(&out).unwrap().remove(0).1;
    let d_torch = max_diff(&st.qkv[0].v, &torch_v);
    eprintln!("max|Δ| v_proj vs torch {d_torch:.2e}");
    assert!(d_torch <= 1e-5, "{d_torch}");
}

const EXPORT_PY: &str = r#"
import json, sys, torch
from transformers import AutoModelForCausalLM
ids = torch.tensor(json.loads(sys.argv[2]))
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32).eval()
with torch.no_grad():
    logits = model(ids).logits
print(json.dumps({"class": type(model).__name__, "shape": list(logits.shape), "logits": logits.flatten().tolist()}))
"#;

/// (b) The merged model's HF export loads in transformers and gives distill's logits (≤ 1e-4);
/// exporting the adapted model itself writes the same file (merged weights, no adapter names).
#[test]
fn merged_export_matches_transformers() {
    let _rng = rng_lock();
    let (_vs, model) = fixture_with_lora(&all_rank4());
    randomize_b(&model, 12, 0.2);
    let merged = model.merged().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (d_merged, d_lora) = (tmp.path().join("merged"), tmp.path().join("lora"));
    distill::io::export::export_hf(&merged, None, &d_merged).unwrap();
    distill::io::export::export_hf(&model, None, &d_lora).unwrap();
    let read = |d: &std::path::Path| {
        let mut named = Tensor::read_safetensors(d.join("model.safetensors")).unwrap();
        named.sort_by(|x, y| x.0.cmp(&y.0));
        named
    };
    let (a, b) = (read(&d_merged), read(&d_lora));
    assert_eq!(a.len(), b.len());
    assert_eq!(a.len(), 3 + 2 * 13); // embed, norm, head; per layer 2 norms, 7 weights, 4 biases
    for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        assert!(!na.contains("lora"), "{na}");
        assert_eq!(max_diff(ta, tb), 0.0, "{na}");
    }

    let ids = ids();
    let flat = Vec::<i64>::try_from(&ids.view([-1])).unwrap();
    let ids_json = serde_json::to_string(&flat.chunks(6).collect::<Vec<_>>()).unwrap();
    let out = run_python(|c| c.arg("-c").arg(EXPORT_PY).arg(&d_merged).arg(&ids_json));
    let res: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(res["class"], "LlamaForCausalLM");
    let hf: Vec<f32> = serde_json::from_value(res["logits"].clone()).unwrap();
    let hf = Tensor::from_slice(&hf).view([2, 6, 96]);
    let d_hf = max_diff(&logits(&merged, &ids), &hf);
    let d_hf_lora = max_diff(&logits(&model, &ids), &hf);
    eprintln!("max|Δ| transformers vs merged {d_hf:.2e}, vs adapted {d_hf_lora:.2e}");
    assert!(d_hf <= 1e-4 && d_hf_lora <= 1e-4, "{d_hf} {d_hf_lora}");
}

/// (c) `new_with_lora` draws the base weights as `new` does; after `freeze_base` the variables
/// that require grad — what the Trainer trains and checkpoints — are exactly the 2 × 7 × 2
/// adapters (r·(in+out) parameters each); a loss sends no gradient to the base, zero to `A` and a
/// nonzero one to `B` (B = 0 at init).
#[test]
fn frozen_base_leaves_exactly_the_adapters_trainable() {
    let _rng = rng_lock();
    let cfg = LmConfig::from_file(llama_fixtures().join("llama_untied")).unwrap();
    let lora = all_rank4();
    tch::manual_seed(7);
    let plain_vs = nn::VarStore::new(Device::Cpu);
    let plain = CausalLm::new(plain_vs.root(), &cfg).unwrap();
    tch::manual_seed(7);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = CausalLm::new_with_lora(vs.root(), &cfg, Some(&lora)).unwrap();
    let vars = vs.variables();
    for (name, t) in plain_vs.variables() {
        assert_eq!(max_diff(&t, &vars[&name]), 0.0, "{name}");
    }
    assert_eq!(vars.len(), plain_vs.variables().len() + 28);
    assert_eq!(model.param_count(), plain.param_count());

    model.freeze_base().unwrap();
    let trainable: HashSet<String> =
        vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).map(|(n, _)| n).collect();
    let adapters: HashSet<String> = model.named_lora_parameters().into_iter().map(|(n, _)| n).collect();
    assert_eq!(trainable, adapters);
    assert_eq!(adapters.len(), 2 * 7 * 2);
    assert!(adapters.contains("model.layers.0.self_attn.q_proj.lora_A"));
    assert!(adapters.contains("model.layers.1.mlp.down_proj.lora_B"));
    let (h, q, kv, i) =
        (cfg.hidden_size, cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim, cfg.intermediate_size);
    let per_layer = 4 * ((h + q) + 2 * (h + kv) + (q + h) + 3 * (h + i));
    assert_eq!(model.lora_param_count(), 2 * per_layer);
    assert_eq!(model.lora_param_count(), 4864);

    let ids = ids();
    let z = model.forward(&ids, None, ForwardOptions { train: true, ..Default::default() }).unwrap().logits;
    let loss = z.narrow(1, 0, 5).reshape([-1, 96]).cross_entropy_for_logits(&ids.narrow(1, 1, 5).reshape([-1]));
    loss.backward();
    for (name, t) in vs.variables() {
        let g = t.grad();
        if !adapters.contains(&name) {
            assert!(!g.defined(), "{name} has a gradient");
        } else if name.ends_with("lora_A") {
            assert_eq!(g.abs().max().double_value(&[]), 0.0, "{name}");
        } else {
            let norm = g.norm().double_value(&[]);
            assert!(norm > 0.0 && norm.is_finite(), "{name}: {norm}");
        }
    }
}

/// Adapter dropout: only in training, only on the adapter's input (with B = 0 a training forward
/// equals evaluation exactly), drawn from torch's generator (the same seed, the same logits).
#[test]
fn adapter_dropout_applies_only_when_training_and_only_to_the_adapter() {
    let _rng = rng_lock();
    let (_vs, model) = fixture_with_lora(&LoraCfg { dropout: 0.5, ..all_rank4() });
    let ids = ids();
    let train = ForwardOptions { train: true, ..Default::default() };
    let run = |seed: i64| {
        tch::manual_seed(seed);
        tch::no_grad(|| model.forward(&ids, None, train)).unwrap().logits
    };
    let z_eval = logits(&model, &ids);
    assert_eq!(max_diff(&run(1), &z_eval), 0.0, "dropout reached the base product");

    randomize_b(&model, 13, 0.2);
    let z_eval = logits(&model, &ids);
    assert!(max_diff(&z_eval, &logits(&model.merged().unwrap(), &ids)) <= 1e-5);
    let (a, b, c) = (run(1), run(1), run(2));
    assert_eq!(max_diff(&a, &b), 0.0);
    let (d_eval, d_seed) = (max_diff(&a, &z_eval), max_diff(&a, &c));
    eprintln!("dropout 0.5: training vs eval {d_eval:.2}, seed 1 vs 2 {d_seed:.2}");
    assert!(d_eval > 0.1 && d_seed > 0.1, "{d_eval} {d_seed}");
}

/// (d) Settings: defaults, spellings, and one-line errors naming the key or value at fault.
#[test]
fn lora_settings_are_checked_and_errors_name_the_fault() {
    let _rng = rng_lock();
    let d = LoraCfg::default();
    assert_eq!((d.rank, d.alpha, d.dropout, d.scale()), (8, 16.0, 0.0, 2.0));
    assert_eq!(d.modules(), ["q_proj", "k_proj", "v_proj", "o_proj"]);
    d.validate().unwrap();

    let parsed: LoraCfg = toml::from_str("rank = 4\ntargets = [\"down_proj\", \"q\", \"q_proj\", \"gate\"]").unwrap();
    assert_eq!((parsed.rank, parsed.alpha), (4, 16.0));
    assert_eq!(parsed.modules(), ["q_proj", "gate_proj", "down_proj"]);
    assert_eq!(all_rank4().modules().len(), 7);
    let unknown = toml::from_str::<LoraCfg>("ranks = 4").unwrap_err().to_string();
    assert!(unknown.contains("ranks"), "{unknown}");

    let err = |c: LoraCfg| c.validate().unwrap_err();
    assert!(err(LoraCfg { rank: 0, ..d.clone() }).contains("`rank`"));
    for alpha in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        assert!(err(LoraCfg { alpha, ..d.clone() }).contains("`alpha`"), "{alpha}");
    }
    for dropout in [1.0, -0.1, f64::NAN] {
        assert!(err(LoraCfg { dropout, ..d.clone() }).contains("`dropout`"), "{dropout}");
    }
    assert!(err(LoraCfg { targets: vec![], ..d.clone() }).contains("`targets`"));
    let bad = err(LoraCfg { targets: vec!["q".into(), "qkv".into()], ..d.clone() });
    assert!(bad.contains("`qkv`") && bad.contains("gate") && bad.contains("down_proj") && bad.contains("all"), "{bad}");

    // The model refuses a bad setting before creating a variable, a second set of adapters, and
    // a path it was not built under.
    let cfg = LmConfig::from_file(llama_fixtures().join("llama_untied")).unwrap();
    let vs = nn::VarStore::new(Device::Cpu);
    let bad = LoraCfg { targets: vec!["mlp".into()], ..d.clone() };
    let e = CausalLm::new_with_lora(vs.root(), &cfg, Some(&bad)).unwrap_err().to_string();
    assert!(e.contains("`mlp`"), "{e}");
    assert!(vs.variables().is_empty());
    let mut m = CausalLm::new_with_lora(vs.root(), &cfg, Some(&d)).unwrap();
    assert!(m.add_lora(&vs.root(), &d).unwrap_err().to_string().contains("already"));
    let vs2 = nn::VarStore::new(Device::Cpu);
    let mut plain = CausalLm::new(vs2.root() / "student", &cfg).unwrap();
    let e = plain.add_lora(&vs2.root(), &d).unwrap_err().to_string();
    assert!(e.contains("model.embed_tokens.weight"), "{e}");
    plain.add_lora(&(vs2.root() / "student"), &d).unwrap();
    assert!(vs2.variables().contains_key("student.model.layers.1.self_attn.o_proj.lora_B"));
    assert!(CausalLm::new_with_lora(vs2.root(), &cfg, None).is_ok_and(|m| !m.has_lora()));
}
