//! Fake quantization on GGUF's Q8_0 / Q4_0 grids against gguf-py's own quantize → dequantize
//! (the reference llama.cpp's files are written with), bit for bit, and its straight-through
//! gradient.

mod common;

use common::run_python;

use distill::io::export::GgufType;
use distill::models::lm::CausalLm;
use distill::models::lm::LmConfig;
use distill::student::quant::{fake_quant, fake_quant_ste, quantize_weights, quantized_view, QuantGrid};
use tch::{nn, Device, Kind, Tensor};

const ROUNDTRIP_PY: &str = r#"
import sys, numpy as np
from gguf.quants import quantize, dequantize
from gguf import GGMLQuantizationType as T
a = np.fromfile(sys.argv[1], dtype=np.float32).reshape(-1, int(sys.argv[2]))
for name, path in (("Q8_0", sys.argv[3]), ("Q4_0", sys.argv[4])):
    q = getattr(T, name)
    dequantize(quantize(a, q), q).astype(np.float32).tofile(path)
"#;

/// Rows of 96 values (3 blocks): normal weights at several scales, a block of zeros, a block
/// whose largest magnitude is negative, one with ties in |x|, values on the .5 rounding edges of
/// the Q8_0 grid, and a wide dynamic range.
fn weights() -> Tensor {
    tch::manual_seed(11);
    let mut rows: Vec<Tensor> =
        [0.02, 1.0, 50.0].iter().map(|s| Tensor::randn([64, 96], (Kind::Float, Device::Cpu)) * *s).collect();
    let mut special = vec![0f32; 96];
    special[32] = -3.0; // block 1: the maximum magnitude is negative
    special[33] = 1.5;
    for (i, v) in special.iter_mut().enumerate().skip(64) {
        // block 2: 127 · k/254 lands on the .5 edges; the tie between ±1.0 keeps the first
        *v = if i == 64 {
            1.0
        } else if i == 65 {
            -1.0
        } else {
            (i as f32 - 64.0) / 254.0
        };
    }
    rows.push(Tensor::from_slice(&special).view([1, 96]));
    let wide: Vec<f32> = (0..96).map(|i| if i % 7 == 0 { 1e3 } else { 1e-4 * i as f32 }).collect();
    rows.push(Tensor::from_slice(&wide).view([1, 96]));
    Tensor::cat(&rows, 0) // [194, 96]
}

fn bits(t: &Tensor) -> Vec<u32> {
    let t = t.contiguous().view([-1]);
    let mut v = vec![0f32; t.numel()];
    t.copy_data(&mut v, t.numel());
    v.into_iter().map(f32::to_bits).collect()
}

#[test]
fn grids_equal_gguf_py_bit_for_bit() {
    let w = weights();
    let dir = common::tmpdir("grids");
    let (src, q8, q4) = (dir.join("w.f32"), dir.join("q8.f32"), dir.join("q4.f32"));
    let raw: Vec<u8> = bits(&w).into_iter().flat_map(u32::to_le_bytes).collect();
    std::fs::write(&src, raw).unwrap();
    run_python(|c| {
        c.args(["-c", ROUNDTRIP_PY]).args([src.to_str().unwrap(), "96", q8.to_str().unwrap(), q4.to_str().unwrap()])
    });
    for (grid, path) in [(QuantGrid::Q8_0, &q8), (QuantGrid::Q4_0, &q4)] {
        let want: Vec<u32> =
            std::fs::read(path).unwrap().chunks(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        let got = bits(&fake_quant(&w, grid).unwrap());
        assert_eq!(got.len(), 194 * 96);
        let differ = got.iter().zip(&want).filter(|(a, b)| a != b).count();
        assert_eq!(differ, 0, "{grid:?}: {differ} of {} values differ", got.len());
    }
    // The zero block stays zero; Q4_0 has at most 16 levels per block, Q8_0 at most 255.
    let q4 = fake_quant(&w, QuantGrid::Q4_0).unwrap();
    assert_eq!(q4.get(192).narrow(0, 0, 32).abs().sum(Kind::Float).double_value(&[]), 0.0);
    let levels = |t: &Tensor| t.narrow(0, 0, 32).unique_dim(0, true, false, false).0.size()[0];
    assert!(levels(&q4.get(1)) <= 16);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn straight_through_gradient_is_the_identity() {
    let w = (Tensor::randn([4, 64], (Kind::Float, Device::Cpu)) * 0.1).set_requires_grad(true);
    let g = Tensor::randn([4, 64], (Kind::Float, Device::Cpu));
    let y = fake_quant_ste(&w, QuantGrid::Q4_0).unwrap();
    assert!(y.equal(&fake_quant(&w, QuantGrid::Q4_0).unwrap()));
    (&y * &g).sum(Kind::Float).backward();
    assert!(w.grad().equal(&g));
    let e = fake_quant(&Tensor::zeros([2, 40], (Kind::Float, Device::Cpu)), QuantGrid::Q8_0).unwrap_err();
    assert!(e.to_string().contains("a row of 40 values does not divide"), "{e}");
}

fn grads(model: &CausalLm) -> Vec<Tensor> {
    model.named_parameters().iter().map(|(_, w)| w.grad().copy()).collect()
}

/// The quantization-aware forward (straight-through view) computes exactly what the model
/// computes after post-training quantization, which is exactly what distill reads back from the
/// Q4_0 GGUF it writes (projections Q4_0, tied embedding Q8_0): the file holds the weights QAD
/// trained against. The view's gradient reaches the full-precision weights unchanged.
#[test]
fn quantized_view_equals_quantized_weights_equals_the_q4_0_gguf() {
    let cfg = LmConfig::from_file(common::llama_fixtures().join("llama_tied")).unwrap();
    let cfg = LmConfig { vocab_size: 1000, max_position_embeddings: 512, initializer_range: 0.3, ..cfg };
    tch::manual_seed(5);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = CausalLm::new(vs.root(), &cfg).unwrap();
    let ids = Tensor::randint(1000, [2, 24], (Kind::Int64, Device::Cpu));
    let logits = |m: &CausalLm| m.forward(&ids, None, Default::default()).unwrap().logits;
    let before = tch::no_grad(|| logits(&model));

    let view = quantized_view(&model, GgufType::Q4_0).unwrap();
    let lv = logits(&view);
    assert!((&lv - &before).abs().max().double_value(&[]) > 1e-3, "Q4_0 must change the logits");
    let g_out = Tensor::randn(lv.size(), (Kind::Float, Device::Cpu));
    (&lv * &g_out).sum(Kind::Float).backward();
    let through_view = grads(&model);
    assert!(through_view.iter().all(|g| g.defined() && g.abs().sum(Kind::Float).double_value(&[]) > 0.0));

    quantize_weights(&model, GgufType::Q4_0).unwrap();
    for (_, w) in model.named_parameters() {
        let _ = w.grad().zero_();
    }
    let lq = logits(&model);
    assert!(lq.equal(&lv), "the view and the quantized weights disagree");
    (&lq * &g_out).sum(Kind::Float).backward();
    for ((name, _), (a, b)) in model.named_parameters().iter().zip(through_view.iter().zip(grads(&model))) {
        assert!(a.allclose(&b, 1e-6, 1e-7, false), "{name}: the straight-through gradient is not the identity");
    }
    // Quantizing twice changes nothing.
    let w = model.named_parameters()[1].1.copy();
    quantize_weights(&model, GgufType::Q4_0).unwrap();
    assert!(model.named_parameters()[1].1.equal(&w));

    let tok = tokenizers::Tokenizer::from_file(common::fixtures().join("gguf/spm_tokenizer.hf.json")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q4.gguf");
    distill::io::export::export_gguf(&model, &tok, None, "q4", &path, GgufType::Q4_0).unwrap();
    let f = distill_gguf::GgufFile::open(&path).unwrap();
    let ty = |n: &str| f.tensor_info(n).unwrap().ty;
    use distill_gguf::GgmlType as G;
    assert_eq!(
        (ty("blk.0.attn_q.weight"), ty("blk.1.ffn_down.weight"), ty("token_embd.weight"), ty("blk.0.attn_norm.weight")),
        (G::Q4_0, G::Q4_0, G::Q8_0, G::F32)
    );
    let back = distill::io::lm::load_lm(&path, Device::Cpu).unwrap();
    let (a, b) = (back.model.named_parameters(), model.named_parameters());
    assert_eq!(a.len(), b.len());
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        assert!(x.equal(y), "{name}: the GGUF holds other values than the quantized model");
    }
    assert!(tch::no_grad(|| logits(&back.model)).equal(&lq.detach()));
}
