//! The causal-LM families beyond Llama (Qwen3, Gemma 2, Gemma 3, OLMo 2, Phi-3), each checked
//! against transformers and llama.cpp's converter on the same weights.
//!
//! `tests/fixtures/families/<name>/` comes from `tests/fixtures/families/make_fixtures.py`
//! (transformers 5.23, torch 2.11, float32, eager attention): tiny random models made from each
//! family's own config class with large weights (std 0.2, so logits are far from ties), saved by
//! `save_pretrained`, and `model.gguf` written from that directory by llama.cpp's own
//! `convert_hf_to_gguf.py` (llama-cpp-python 0.3.36's, F32; only its vocabulary step patched for
//! the toy word-level tokenizer, see `convert.py`). `expected.safetensors` holds a batch of 3 rows
//! of 12 tokens — full, right-padded by 3, left-padded by 2, longer than every window (4) and than
//! Phi-3's original context (8) — with transformers' logits, hidden states and attention maps, and
//! a greedy `generate` of 16 tokens after a 5-token prompt (KV cache, crossing the window).
//!
//! | fixture       | what it exercises                                                            |
//! |---------------|------------------------------------------------------------------------------|
//! | `qwen3`       | per-head q/k norms, head_dim 16 ≠ hidden/heads, untied head, GQA              |
//! | `qwen3_tied`  | tied head, q/k/v/o biases                                                    |
//! | `gemma2`      | (1 + w) norms, 4 norms per block, √H embedding, GeGLU, soft caps 5 / 3, window 4 on even layers |
//! | `gemma2_qpas` | `query_pre_attn_scalar` 24 ≠ head_dim 16 (no GGUF: llama.cpp cannot say it)  |
//! | `gemma3`      | 5 sliding : 1 full layers, local RoPE base 10k vs 1M, q/k norms, no caps     |
//! | `gemma3_linear` | linear RoPE scaling (factor 8) on the full layers only (Gemma 3 4B+)     |
//! | `olmo2`       | post-norm blocks, full-width q/k norms, sharded checkpoint                   |
//! | `phi3`        | fused qkv / gate_up, LongRoPE (short/long factors), partial rotary ¾, tied   |

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use common::{max_diff, run_python};

use distill::eval::generate::{generate, GenerateOptions};
use distill::io::export::GgufType;
use distill::io::lm::load_lm;
use distill::models::lm::{CausalLm, ForwardOptions, KvCache, LmConfig};
use distill::student::prune;
use tch::{nn, Device, Kind, Tensor};

/// Every fixture, and whether it has a GGUF made by llama.cpp's converter.
const FIXTURES: [(&str, bool); 8] = [
    ("qwen3", true),
    ("qwen3_tied", true),
    ("gemma2", true),
    ("gemma2_qpas", false),
    ("gemma3", true),
    ("gemma3_linear", true),
    ("olmo2", true),
    ("phi3", true),
];

fn dir(name: &str) -> PathBuf {
    common::fixtures().join("families").join(name)
}

fn expected(name: &str) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(dir(name).join("expected.safetensors")).unwrap().into_iter().collect()
}

fn all_outputs() -> ForwardOptions {
    ForwardOptions { hidden_states: true, attentions: true, train: false, internals: false, qkv: false }
}

/// The largest |Δ| of logits, hidden states and attention maps against transformers', at the real
/// positions of each row (the mask says which).
fn worst_against(model: &CausalLm, exp: &HashMap<String, Tensor>) -> (f64, f64, f64) {
    let out = tch::no_grad(|| model.forward(&exp["input_ids"], Some(&exp["attention_mask"]), all_outputs())).unwrap();
    let mask = exp["attention_mask"].to_kind(Kind::Bool); // [3, T]
    let (mut dl, mut dh, mut da) = (0f64, 0f64, 0f64);
    for b in 0..3 {
        let real = mask.get(b).nonzero().squeeze_dim(1); // [n]
        let rows = |t: &Tensor| t.get(b).index_select(0, &real);
        dl = dl.max(max_diff(&rows(&out.logits), &rows(&exp["logits"])));
        for (i, h) in out.hidden_states.as_ref().unwrap().iter().enumerate() {
            dh = dh.max(max_diff(&rows(h), &rows(&exp[&format!("hidden_{i}")])));
        }
        for (i, a) in out.attentions.as_ref().unwrap().iter().enumerate() {
            // [nh, T, T] at real query rows and real key columns.
            let q = |t: &Tensor| t.get(b).index_select(1, &real).index_select(2, &real);
            da = da.max(max_diff(&q(a), &q(&exp[&format!("attn_{i}")])));
        }
    }
    (dl, dh, da)
}

/// Greedy decoding with the KV cache, as the fixture's `generate` did.
fn greedy(model: &CausalLm, exp: &HashMap<String, Tensor>) -> Vec<i64> {
    let prompt = Vec::<i64>::try_from(&exp["gen_prompt"]).unwrap();
    let n = exp["gen_ids"].size()[0] as usize - prompt.len();
    let opts = GenerateOptions { max_new_tokens: n, temperature: 0.0, eos_id: None, ..Default::default() };
    let out = generate(model, &prompt, &opts).unwrap();
    prompt.into_iter().chain(out).collect()
}

/// Logits, hidden states and attention maps within 1e-4 of transformers' on every fixture, from
/// the HF directory (sharded for OLMo 2) and from llama.cpp's GGUF of it.
#[test]
fn every_family_matches_transformers_from_hf_and_gguf() {
    for (name, has_gguf) in FIXTURES {
        let exp = expected(name);
        assert!(exp["logits"].abs().max().double_value(&[]) > 1.0, "{name}: logits too small to test");
        let hf = load_lm(&dir(name), Device::Cpu).unwrap();
        let (dl, dh, da) = worst_against(&hf.model, &exp);
        eprintln!("{name} (HF): max|Δ| logits {dl:.2e}, hidden {dh:.2e}, attn {da:.2e}");
        assert!(dl <= 1e-4 && dh <= 1e-4 && da <= 1e-4, "{name} (HF): {dl} {dh} {da}");
        if has_gguf {
            let gg = load_lm(&dir(name).join("model.gguf"), Device::Cpu).unwrap();
            let (dl, dh, da) = worst_against(&gg.model, &exp);
            eprintln!("{name} (GGUF): max|Δ| logits {dl:.2e}, hidden {dh:.2e}, attn {da:.2e}");
            assert!(dl <= 1e-4 && dh <= 1e-4 && da <= 1e-4, "{name} (GGUF): {dl} {dh} {da}");
        }
    }
}

/// Greedy generation with the KV cache equals transformers' `generate` (which crosses the
/// window and Phi-3's original context), from the HF directory and the GGUF.
#[test]
fn every_family_generates_as_transformers() {
    for (name, has_gguf) in FIXTURES {
        let exp = expected(name);
        let want = Vec::<i64>::try_from(&exp["gen_ids"]).unwrap();
        let mut paths = vec![dir(name)];
        if has_gguf {
            paths.push(dir(name).join("model.gguf"));
        }
        for p in paths {
            let m = load_lm(&p, Device::Cpu).unwrap();
            assert_eq!(greedy(&m.model, &exp), want, "{}", p.display());
        }
    }
}

/// The KV-cache path (a 3-token prefix, then one token at a time) gives at each step the
/// logits of a full forward pass over the sequence so far: windows hold in cached decoding, and
/// Phi-3's LongRoPE switches from its short to its long factors at the step that crosses its
/// original context (recomputing the sequence, as transformers does).
#[test]
fn kv_cache_equals_full_forward_for_every_family() {
    for (name, _) in FIXTURES {
        let m = load_lm(&dir(name), Device::Cpu).unwrap().model;
        let ids = expected(name)["input_ids"].get(0).unsqueeze(0); // [1, 12]
        let mut cache = KvCache::new();
        let mut worst = 0f64;
        for (start, len) in std::iter::once((0, 3)).chain((3..12).map(|i| (i, 1))) {
            let z = tch::no_grad(|| m.forward_cached(&ids.narrow(1, start, len), None, &mut cache)).unwrap();
            let prefix = ids.narrow(1, 0, start + len);
            let full = tch::no_grad(|| m.forward(&prefix, None, ForwardOptions::default())).unwrap().logits;
            worst = worst.max(max_diff(&z, &full.narrow(1, start, len)));
        }
        assert!(worst <= 1e-4, "{name}: {worst}");
    }
}

/// Phi-3 within its original context (8 tokens) rotates with the short factors, as transformers
/// does for a sequence that short (the batch above is all long-factor).
#[test]
fn phi3_short_sequences_use_the_short_factors() {
    let exp = expected("phi3");
    let m = load_lm(&dir("phi3"), Device::Cpu).unwrap().model;
    let ids = exp["input_ids"].get(0).narrow(0, 0, 8).unsqueeze(0); // [1, 8]
    let z = tch::no_grad(|| m.forward(&ids, None, ForwardOptions::default())).unwrap().logits;
    let d = max_diff(&z, &exp["logits_short"]);
    assert!(d <= 1e-4, "{d}");
    // …and they differ from the long-factor logits of the same tokens.
    assert!(max_diff(&z.get(0), &exp["logits"].get(0).narrow(0, 0, 8)) > 0.1);
}

/// Loads each exported directory with transformers and prints its class and logits on the
/// fixture's batch: `python -c EXPORT_PY '{"name": dir, …}' expected_dir_root`.
const EXPORT_PY: &str = r#"
import json, sys, torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
dirs, root = json.loads(sys.argv[1]), sys.argv[2]
out = {}
for name, d in dirs.items():
    exp = load_file(f"{root}/{name}/expected.safetensors")
    m = AutoModelForCausalLM.from_pretrained(d, attn_implementation="eager").eval()
    with torch.no_grad():
        z = m(input_ids=exp["input_ids"], attention_mask=exp["attention_mask"]).logits
    real = exp["attention_mask"].bool().unsqueeze(-1)
    out[name] = {"class": type(m).__name__,
                 "max_diff": float(((z - exp["logits"]).abs() * real).max())}
print(json.dumps(out))
"#;

/// HF export writes what transformers loads as the same family with the same logits (Phi-3's
/// projections fused back); a reload in distill is bit-identical. GGUF export of each family
/// whose config a GGUF can say reads back within float noise.
#[test]
fn every_family_exports_to_hf_and_gguf() {
    let tmp = tempfile::tempdir().unwrap();
    let mut dirs = serde_json::Map::new();
    for (name, has_gguf) in FIXTURES {
        let exp = expected(name);
        let src = load_lm(&dir(name), Device::Cpu).unwrap();
        let out = tmp.path().join(name);
        distill::io::export::export_hf(&src.model, Some(&src.tokenizer_json), &out).unwrap();
        let back = load_lm(&out, Device::Cpu).unwrap();
        assert_eq!(back.model.config(), src.model.config(), "{name}: config round trip");
        let z = |m: &CausalLm| {
            tch::no_grad(|| m.forward(&exp["input_ids"], Some(&exp["attention_mask"]), ForwardOptions::default()))
                .unwrap()
                .logits
        };
        assert_eq!(max_diff(&z(&back.model), &z(&src.model)), 0.0, "{name}: HF reload");
        dirs.insert(name.to_string(), serde_json::json!(out));
        if has_gguf {
            // The GGUF's own tokenizer (SentencePiece-style, no space prefix), which GGUF export accepts.
            let gg = load_lm(&dir(name).join("model.gguf"), Device::Cpu).unwrap();
            let path = tmp.path().join(format!("{name}.gguf"));
            let written = distill::io::export::export_gguf(&gg.model, &gg.tokenizer, None, name, &path, GgufType::F32);
            if name == "qwen3_tied" {
                // Its o_proj bias: llama.cpp's qwen3 graph has none, so distill refuses by name.
                let e = written.unwrap_err().to_string();
                assert!(e.contains("a bias on o_proj"), "{e}");
                continue;
            }
            written.unwrap();
            let again = load_lm(&path, Device::Cpu).unwrap();
            assert_eq!(again.model.config(), gg.model.config(), "{name}: GGUF config round trip");
            let (dl, ..) = worst_against(&again.model, &exp);
            assert!(dl <= 1e-4, "{name}: GGUF export {dl}");
        }
    }
    let root = common::fixtures().join("families");
    let out = run_python(|c| c.arg("-c").arg(EXPORT_PY).arg(serde_json::Value::Object(dirs).to_string()).arg(&root));
    let res: serde_json::Value = serde_json::from_slice(&out).unwrap();
    for (name, _) in FIXTURES {
        let r = &res[name];
        let want = serde_json::from_slice::<serde_json::Value>(&std::fs::read(dir(name).join("config.json")).unwrap())
            .unwrap()["architectures"][0]
            .clone();
        assert_eq!(r["class"], want, "{name}");
        let d = r["max_diff"].as_f64().unwrap();
        eprintln!("{name}: transformers on distill's export, max|Δ| logits {d:.2e}");
        assert!(d <= 1e-4, "{name}: {d}");
    }
}

/// Pruning a teacher "by nothing" (a student of its own shape, importance estimated on the
/// fixture's rows) reproduces its logits exactly, for Qwen3 (per-head q/k norms) and Gemma 3
/// (post-norms, (1 + w) gains, sliding layers); OLMo 2's coupled head norms refuse head pruning.
#[test]
fn pruning_by_nothing_is_exact_and_olmo2_heads_do_not_prune() {
    for name in ["qwen3", "gemma3"] {
        let t = load_lm(&dir(name), Device::Cpu).unwrap();
        let t_cfg = t.model.config().clone();
        let calib = expected(name)["input_ids"].shallow_clone();
        let (_, sel) = prune::plan(&t.model, &calib, &t_cfg).unwrap();
        let s_cfg = LmConfig { layer_types: t_cfg.pick_layers(&sel.layers).layer_types, ..t_cfg.clone() };
        let vs = nn::VarStore::new(Device::Cpu);
        let s = CausalLm::new(vs.root(), &s_cfg).unwrap();
        prune::slice_into(&vs, &t.vs.variables(), &t_cfg, &sel).unwrap();
        let ids = &expected(name)["input_ids"];
        let z = |m: &CausalLm| tch::no_grad(|| m.forward(ids, None, ForwardOptions::default())).unwrap().logits;
        assert_eq!(max_diff(&z(&s), &z(&t.model)), 0.0, "{name}");
    }
    // The same path with fewer heads on OLMo 2 is refused by name; fewer neurons are fine.
    let t_cfg = load_lm(&dir("olmo2"), Device::Cpu).unwrap().model.config().clone();
    let fewer_heads = LmConfig { num_heads: t_cfg.num_kv_heads, ..t_cfg.clone() };
    let e = prune::check_slice(&t_cfg, &fewer_heads).unwrap_err().to_string();
    assert!(e.contains("student.heads") && e.contains("do not prune"), "{e}");
    prune::check_slice(&t_cfg, &LmConfig { intermediate_size: 16, ..t_cfg.clone() }).unwrap();
}

/// What `distill check` reads without weights: an unknown family in config.json, a GGUF of an
/// unsupported architecture and a missing tensor are one error each, naming the key or tensor.
#[test]
fn model_files_are_checked_without_weights() {
    use distill::io::lm::check_model_files;
    let tmp = tempfile::tempdir().unwrap();
    for (name, _) in FIXTURES {
        let (cfg, _) = check_model_files(&dir(name)).unwrap();
        assert_eq!(&cfg, load_lm(&dir(name), Device::Cpu).unwrap().model.config(), "{name}");
    }
    // An architecture distill does not implement.
    let bad = tmp.path().join("bad");
    std::fs::create_dir(&bad).unwrap();
    for f in ["model.safetensors", "tokenizer.json"] {
        std::fs::copy(dir("qwen3").join(f), bad.join(f)).unwrap();
    }
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir("qwen3").join("config.json")).unwrap()).unwrap();
    cfg["architectures"] = serde_json::json!(["FalconMambaForCausalLM"]);
    std::fs::write(bad.join("config.json"), cfg.to_string()).unwrap();
    let e = check_model_files(&bad).unwrap_err().to_string();
    assert!(e.contains("unsupported architecture `FalconMambaForCausalLM`") && e.contains("Qwen3ForCausalLM"), "{e}");
    // A tensor missing from the checkpoint.
    cfg["architectures"] = serde_json::json!(["Qwen3ForCausalLM"]);
    std::fs::write(bad.join("config.json"), cfg.to_string()).unwrap();
    let kept: Vec<(String, Tensor)> = Tensor::read_safetensors(dir("qwen3").join("model.safetensors"))
        .unwrap()
        .into_iter()
        .filter(|(n, _)| n != "model.layers.1.self_attn.k_norm.weight")
        .collect();
    distill::io::safetensors::save_safetensors(&kept, bad.join("model.safetensors")).unwrap();
    let e = check_model_files(&bad).unwrap_err().to_string();
    assert!(e.contains("missing tensor `model.layers.1.self_attn.k_norm.weight`"), "{e}");
    // A GGUF whose architecture has no reader here.
    let mut bytes = std::fs::read(dir("qwen3").join("model.gguf")).unwrap();
    let at = bytes.windows(5).position(|w| w == b"qwen3").unwrap();
    bytes[at..at + 5].copy_from_slice(b"mamba");
    let g = tmp.path().join("mamba.gguf");
    std::fs::write(&g, bytes).unwrap();
    let e = check_model_files(&g).unwrap_err().to_string();
    assert!(e.contains("architecture `mamba`"), "{e}");
}

/// Gemma 2's final soft cap inside the chunked loss: value and gradients (into the hidden states
/// and the output projection) equal the dense loss on `c·tanh(h·Wᵀ/c)` computed by autograd,
/// for forward KL (the analytic-gradient path) and for JSD (the recorded path), with a
/// soft-capped online teacher; and the cap changes the loss (it is applied).
#[test]
fn soft_capped_logits_go_through_the_chunked_loss() {
    use distill::losses::chunked::{softcap, ChunkTeacher, ChunkedKd, LogitHead};
    use distill::losses::divergence::Divergence;
    tch::manual_seed(5);
    let (n, h, v, cap) = (37i64, 16i64, 50i64, 3.0);
    let hid = (Tensor::randn([n, h], (Kind::Float, Device::Cpu)) * 2.0).set_requires_grad(true);
    let w = (Tensor::randn([v, h], (Kind::Float, Device::Cpu)) * 0.5).set_requires_grad(true);
    let th = Tensor::randn([n, 24], (Kind::Float, Device::Cpu)) * 2.0;
    let tw = Tensor::randn([v, 24], (Kind::Float, Device::Cpu)) * 0.5;
    let y = Tensor::randint(v, [n], (Kind::Int64, Device::Cpu));
    let (t, alpha) = (2.0, 0.7);
    for divergence in [Divergence::ForwardKl, Divergence::Jsd { beta: 0.5 }] {
        let kd = ChunkedKd { divergence, temperature: t, alpha, chunk_rows: 8 };
        let teacher = ChunkTeacher::DenseHidden { hidden: &th, weight: &tw, softcap: Some(cap) };
        let head = LogitHead { weight: w.shallow_clone(), softcap: Some(cap) };
        let parts = kd.forward(&hid, head, Some(teacher), Some(&y));
        let (gh, gw) = {
            let g = Tensor::run_backward(&[&parts.total], &[&hid, &w], false, false);
            (g[0].shallow_clone(), g[1].shallow_clone())
        };
        // The dense reference on full logits.
        let zs = softcap(hid.linear::<Tensor>(&w, None), Some(cap)); // [N, V]
        let zt = softcap(th.linear::<Tensor>(&tw, None), Some(cap)); // [N, V]
        let soft = divergence.dense(&zs, &zt, t);
        let hard = zs.cross_entropy_for_logits(&y);
        let total = &soft * alpha + &hard * (1.0 - alpha);
        let g = Tensor::run_backward(&[&total], &[&hid, &w], false, false);
        let dv = (parts.total.double_value(&[]) - total.double_value(&[])).abs();
        let (dh, dw) = (max_diff(&gh, &g[0]), max_diff(&gw, &g[1]));
        eprintln!("{divergence:?}: |Δ| loss {dv:.2e}, ∂h {dh:.2e}, ∂W {dw:.2e}");
        assert!(dv < 1e-5 && dh < 1e-5 && dw < 1e-5, "{divergence:?}: {dv} {dh} {dw}");
        // Without the cap the loss is another number: the cap is applied, not ignored.
        let plain = kd.forward(
            &hid,
            &w,
            Some(ChunkTeacher::DenseHidden { hidden: &th, weight: &tw, softcap: Some(cap) }),
            Some(&y),
        );
        assert!((plain.total.double_value(&[]) - total.double_value(&[])).abs() > 1e-2);
    }
}
