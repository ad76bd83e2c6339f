//! The BERT encoder against sentence-transformers on all-MiniLM-L6-v2's weights, and the
//! students' exports read back by sentence-transformers and model2vec.

mod common;

use std::path::PathBuf;

use common::run_python;

use distill::models::sentence::{Embedder, Encoder};
use distill::student::encoder::{every_other, layer_subset, projected, static_student, NarrowShape, StaticCfg};
use tch::{Device, Tensor};

fn minilm() -> PathBuf {
    let p = distill::io::fetch::asset("minilm").unwrap().root_path();
    assert!(p.join("model.safetensors").is_file(), "{} is missing: run `distill fetch minilm`", p.display());
    p
}

fn texts() -> Vec<String> {
    let long = "The quarterly report shows revenue growth across every region, ".repeat(40);
    vec![
        "Hello world, this is a test.".into(),
        "FREE!!! Click here to claim your prize: http://example.com/win?id=42".into(),
        "The committee met on Tuesday to discuss the budget.".into(),
        "naïve café — résumé".into(),
        "a".into(),
        long,
    ]
}

/// Runs `code` with the argument list; returns stdout parsed as a JSON list of vectors.
fn py_embed(code: &str, args: &[&str]) -> Tensor {
    let v: Vec<Vec<f32>> = serde_json::from_slice(&run_python(|c| c.arg("-c").arg(code).args(args))).unwrap();
    let rows: Vec<Tensor> = v.iter().map(|r| Tensor::from_slice(r)).collect();
    Tensor::stack(&rows, 0)
}

const ST_PY: &str = r#"
import json, sys
from sentence_transformers import SentenceTransformer
m = SentenceTransformer(sys.argv[1], device="cpu")
texts = json.loads(sys.argv[2])
print(json.dumps(m.encode(texts, batch_size=4, convert_to_numpy=True).tolist()))
"#;

const M2V_PY: &str = r#"
import json, sys
from model2vec import StaticModel
m = StaticModel.from_pretrained(sys.argv[1])
texts = json.loads(sys.argv[2])
print(json.dumps(m.encode(texts).tolist()))
"#;

fn compare(a: &Tensor, b: &Tensor) -> (f64, f64) {
    assert_eq!(a.size(), b.size());
    let cos = Tensor::cosine_similarity(a, b, 1, 1e-8).min().double_value(&[]);
    let diff = (a - b).abs().max().double_value(&[]);
    (cos, diff)
}

#[test]
fn bert_matches_sentence_transformers_on_minilm() {
    tch::set_num_threads(1);
    let dir = minilm();
    let enc = Encoder::load(&dir, Device::Cpu).unwrap();
    assert_eq!(enc.max_len, 256);
    assert!(enc.normalize);
    let t = texts();
    let (ids, truncated) = enc.tokenize(&t).unwrap();
    assert_eq!(truncated, 1, "the long text is cut");
    assert_eq!(ids[5].len(), 256);
    assert_eq!(ids[0][0], 101); // [CLS]
    assert_eq!(*ids[5].last().unwrap(), 102); // [SEP] kept after truncation
    let ours = enc.embed(&t, 4).unwrap();
    let theirs = py_embed(ST_PY, &[dir.to_str().unwrap(), &serde_json::to_string(&t).unwrap()]);
    let (cos, diff) = compare(&ours, &theirs);
    assert!(cos >= 0.9999, "cos {cos}");
    assert!(diff <= 1e-4, "max abs diff {diff}");
    // Batching and padding do not change a text's embedding.
    let one = enc.embed(&t[..1], 1).unwrap();
    assert!((one - ours.narrow(0, 0, 1)).abs().max().double_value(&[]) < 1e-5);
}

#[test]
fn students_export_to_layouts_their_libraries_load() {
    tch::set_num_threads(1);
    let dir = minilm();
    let teacher = Encoder::load(&dir, Device::Cpu).unwrap();
    let t = texts();
    let tmp = common::tmpdir("export");

    // DistilBERT-style: layers 1, 3, 5; the weights are the teacher's.
    let layers = every_other(6, 3);
    let s = layer_subset(&teacher, &layers).unwrap();
    assert_eq!(s.bert.config.num_hidden_layers, 3);
    let tv = teacher.vs.variables();
    let sv = s.vs.variables();
    let a = &sv["encoder.layer.1.attention.self.query.weight"];
    assert!(a.equal(&tv["encoder.layer.3.attention.self.query.weight"]));
    s.save(&tmp.join("l3")).unwrap();
    // What a process killed mid-export leaves beside the directory is removed by the next export.
    for stale in [".l3.tmp-999999", ".l3.old-999999"] {
        std::fs::create_dir_all(tmp.join(stale)).unwrap();
        std::fs::write(tmp.join(stale).join("model.safetensors"), b"partial").unwrap();
    }
    s.save(&tmp.join("l3")).unwrap();
    assert!(!tmp.join(".l3.tmp-999999").exists() && !tmp.join(".l3.old-999999").exists());
    let theirs = py_embed(ST_PY, &[tmp.join("l3").to_str().unwrap(), &serde_json::to_string(&t).unwrap()]);
    let (cos, diff) = compare(&s.embed(&t, 4).unwrap(), &theirs);
    assert!(cos >= 0.9999 && diff <= 1e-4, "3-layer export: cos {cos}, diff {diff}");

    // Narrow: 256 wide (8 heads of 32), through a Dense head back to 384.
    let (calib, _) = teacher.tokenize(&t).unwrap();
    let shape = NarrowShape { layers: 3, hidden: 256, heads: 8, intermediate: 1024 };
    let n = projected(&teacher, shape, &layers, &calib).unwrap();
    assert_eq!(n.dim(), 384);
    n.save(&tmp.join("narrow")).unwrap();
    let theirs = py_embed(ST_PY, &[tmp.join("narrow").to_str().unwrap(), &serde_json::to_string(&t).unwrap()]);
    let ours = n.embed(&t, 4).unwrap();
    let (cos, diff) = compare(&ours, &theirs);
    assert!(cos >= 0.9999 && diff <= 1e-4, "narrow export: cos {cos}, diff {diff}");
    // Static (Model2Vec) student.
    let st = static_student(&teacher, &StaticCfg { dim: 64, ..Default::default() }).unwrap();
    assert_eq!(st.embeddings.size(), vec![30522, 64]);
    st.save(&tmp.join("static"), "all-MiniLM-L6-v2").unwrap();
    let theirs = py_embed(M2V_PY, &[tmp.join("static").to_str().unwrap(), &serde_json::to_string(&t).unwrap()]);
    let (cos, diff) = compare(&st.embed(&t, 4).unwrap(), &theirs);
    assert!(cos >= 0.9999 && diff <= 1e-4, "static export: cos {cos}, diff {diff}");
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn a_directory_that_is_not_bert_is_one_error_naming_what_is_missing() {
    let tmp = common::tmpdir("not-bert");
    let err = |p: &std::path::Path| Encoder::load(p, Device::Cpu).err().expect("an error").to_string();
    let e = err(&tmp);
    assert!(e.contains("no config.json") && !e.contains('\n'), "{e}");
    std::fs::write(tmp.join("config.json"), r#"{"model_type": "llama", "hidden_size": 8}"#).unwrap();
    std::fs::write(tmp.join("model.safetensors"), b"").unwrap();
    std::fs::write(tmp.join("tokenizer.json"), b"{}").unwrap();
    let e = err(&tmp);
    assert!(e.contains("model_type `llama`") && e.contains("expected `bert`"), "{e}");
    std::fs::write(tmp.join("config.json"), r#"{"model_type": "bert", "hidden_size": 8}"#).unwrap();
    let e = err(&tmp);
    assert!(e.contains("lacks `vocab_size`"), "{e}");
    let _ = std::fs::remove_dir_all(&tmp);
}

const LOSS_PY: &str = r#"
import json, sys, torch
import torch.nn.functional as F
d = json.loads(sys.argv[1])
s = torch.tensor(d["s"], requires_grad=True)
t = torch.tensor(d["t"])
loss = (1 - F.cosine_similarity(s, t, dim=1, eps=1e-8)).mean() * d["wc"] + F.mse_loss(s, t) * d["wm"]
loss.backward()
print(json.dumps({"loss": loss.item(), "grad": s.grad.tolist()}))
"#;

#[test]
fn embedding_loss_matches_pytorch() {
    use distill::losses::embedding::embedding_loss;
    tch::manual_seed(3);
    let s = Tensor::randn([5, 7], (tch::Kind::Float, Device::Cpu));
    let t = Tensor::randn([5, 7], (tch::Kind::Float, Device::Cpu)) * 0.5;
    let (wc, wm) = (0.7, 2.5);
    let sv: Vec<Vec<f32>> = Vec::<Vec<f32>>::try_from(&s).unwrap();
    let tv: Vec<Vec<f32>> = Vec::<Vec<f32>>::try_from(&t).unwrap();
    let arg = serde_json::json!({"s": sv, "t": tv, "wc": wc, "wm": wm}).to_string();
    let r: serde_json::Value = serde_json::from_slice(&run_python(|c| c.arg("-c").arg(LOSS_PY).arg(&arg))).unwrap();
    let s = s.set_requires_grad(true);
    let (total, _, _) = embedding_loss(&s, &t, wc, wm);
    total.backward();
    let want = r["loss"].as_f64().unwrap();
    assert!((total.double_value(&[]) - want).abs() < 1e-5, "{} vs {want}", total.double_value(&[]));
    let g: Vec<Vec<f32>> = serde_json::from_value(r["grad"].clone()).unwrap();
    let g = Tensor::stack(&g.iter().map(|r| Tensor::from_slice(r)).collect::<Vec<_>>(), 0);
    let diff = (s.grad() - g).abs().max().double_value(&[]);
    assert!(diff < 1e-5, "gradient differs by {diff}");
}
