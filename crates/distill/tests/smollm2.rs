//! Real weights: the SmolLM2-135M-Instruct GGUF teacher (fetched by the test script) against
//! transformers on the same file, its HF conversion, and an exported student.

#![allow(clippy::too_many_lines)] // tests read as scripts; the 120-line limit is for library and binary code

mod common;

use std::path::PathBuf;

use common::{max_diff, run_python};

use distill::io::export::GgufType;
use distill::io::lm::load_lm;
use distill::models::lm::CausalLm;
use distill::student::student_config;
use distill::student::{LmStudent, StudentInit};
use tch::{nn, Device, Tensor};

fn smollm2() -> PathBuf {
    let p = distill::io::fetch::asset("smollm2").unwrap().root_path().join("SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(p.is_file(), "{} is missing: run `./target/release/distill fetch smollm2`", p.display());
    p
}

/// The logits `[ids.len(), vocab]` of `model` on the one sequence `ids`.
fn row_logits(model: &CausalLm, ids: &[i64]) -> Tensor {
    common::logits(model, &Tensor::from_slice(ids).view([1, -1])).squeeze_dim(0)
}

#[test]
fn teacher_conversion_and_student_export_match_transformers() {
    let gguf = smollm2();
    let tmp = common::tmpdir("teacher");

    let teacher = load_lm(&gguf, Device::Cpu).unwrap();
    let cfg = teacher.model.config();
    assert_eq!((cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads), (30, 576, 9, 3));
    assert_eq!((cfg.vocab_size, cfg.intermediate_size), (49152, 1536));
    assert_eq!(teacher.model.param_count(), 134_515_008);
    let text = "The capital of France is Paris. In 1961, the Fulton County Grand Jury said";
    let ids: Vec<i64> = teacher.tokenizer.encode(text, false).unwrap().get_ids().iter().map(|&i| i as i64).collect();
    assert_eq!(&ids[..6], &[504, 3575, 282, 4649, 314, 7042]);

    // The teacher converted to an HF directory, and a random 6-layer student exported.
    let conv = tmp.join("teacher-hf");
    let template = teacher.chat_template.as_deref();
    assert!(template.is_some_and(|t| t.starts_with("{% for message in messages %}")), "{template:?}");
    distill::io::export::export_hf_with_chat_template(&teacher.model, Some(&teacher.tokenizer_json), template, &conv)
        .unwrap();
    assert_eq!(load_lm(&conv, Device::Cpu).unwrap().chat_template.as_deref(), template);
    let spec = LmStudent {
        init: Some(StudentInit::LayerSubset),
        hidden: Some(256),
        heads: Some(4),
        kv_heads: Some(2),
        intermediate: Some(768),
        ..LmStudent::with_layers(6)
    };
    let s_cfg = student_config(cfg, &spec).unwrap();
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let student = CausalLm::new(vs.root(), &s_cfg).unwrap();
    let calib = Tensor::from_slice(&ids).view([1, -1]);
    distill::student::init_student(&vs, &s_cfg, &teacher, StudentInit::LayerSubset, &calib).unwrap();
    assert_eq!(student.param_count(), 17_304_832);
    // layer-subset copies the teacher's embedding (sliced to 256 columns) and layer 29 → 5.
    let te = teacher.vs.variables();
    let sv = vs.variables();
    let emb = te["model.embed_tokens.weight"].narrow(1, 0, 256);
    assert!(sv["model.embed_tokens.weight"].equal(&emb));
    let w = te["model.layers.29.mlp.down_proj.weight"].narrow(0, 0, 256).narrow(1, 0, 768);
    assert!(sv["model.layers.5.mlp.down_proj.weight"].equal(&w));
    // embedding-pca: the teacher's embedding times its top-256 residual directions; layers random.
    tch::manual_seed(0);
    let vs_pca = nn::VarStore::new(Device::Cpu);
    let _pca_student = CausalLm::new(vs_pca.root(), &s_cfg).unwrap();
    let kept =
        distill::student::init_student(&vs_pca, &s_cfg, &teacher, StudentInit::EmbeddingPca, &calib).unwrap().kept;
    let (q, kept_q) = distill::student::residual_pca(&teacher.model, &calib, 256).unwrap();
    assert_eq!(kept, kept_q);
    assert!(kept > 0.8 && kept < 1.0, "{kept}");
    let pv = vs_pca.variables();
    assert!(pv["model.embed_tokens.weight"].allclose(&te["model.embed_tokens.weight"].mm(&q), 1e-6, 1e-6, false));
    assert!(pv["model.layers.5.mlp.down_proj.weight"].abs().max().double_value(&[]) < 0.2, "layers stay random");
    // The projection keeps more of the embedding than the leading 256 columns do.
    let e = &te["model.embed_tokens.weight"];
    let err = |p: &Tensor| (e - p).square().sum(tch::Kind::Double).double_value(&[]);
    let pca_err = err(&e.mm(&q).mm(&q.transpose(0, 1)));
    let slice_err = err(&Tensor::cat(&[e.narrow(1, 0, 256), e.narrow(1, 256, 320).zeros_like()], 1));
    assert!(pca_err < 0.8 * slice_err, "pca {pca_err} vs slice {slice_err}");
    let sdir = tmp.join("student-hf");
    distill::io::export::export_hf(&student, Some(&teacher.tokenizer_json), &sdir).unwrap();
    // The student as GGUF (llama.cpp's layout: Q/K rows permuted, tokenizer in metadata).
    let sgguf = tmp.join("student.gguf");
    distill::io::export::export_gguf(&student, &teacher.tokenizer, template, "student", &sgguf, GgufType::F32).unwrap();

    let ids_path = tmp.join("ids.json");
    std::fs::write(&ids_path, serde_json::to_string(&ids).unwrap()).unwrap();
    let out = tmp.join("ref.safetensors");
    let script = common::fixtures().join("smollm2/hf_logits.py");
    run_python(|c| {
        c.arg(&script)
            .arg(&ids_path)
            .arg(&out)
            .arg(format!("gguf=gguf:{}", gguf.display()))
            .arg(format!("conv={}", conv.display()))
            .arg(format!("student={}", sdir.display()))
            .arg(format!("student_gguf=gguf:{}", sgguf.display()))
    });
    let r = distill::train::checkpoint::load_tensors(&out).unwrap().tensors;

    let ours = row_logits(&teacher.model, &ids);
    assert_eq!(ours.size(), vec![ids.len() as i64, 49152]);
    let d_gguf = max_diff(&ours, &r["gguf"]);
    let d_conv = max_diff(&ours, &r["conv"]);
    let student_logits = row_logits(&student, &ids);
    let d_student = max_diff(&student_logits, &r["student"]);
    let d_student_gguf = max_diff(&student_logits, &r["student_gguf"]);
    eprintln!(
        "max |Δlogit|: teacher vs transformers(GGUF) {d_gguf:.2e}, vs converted dir {d_conv:.2e}, student {d_student:.2e}, \
         student GGUF {d_student_gguf:.2e}"
    );
    assert!(d_gguf <= 1e-4, "teacher vs transformers on the GGUF: {d_gguf}");
    assert!(d_conv <= 1e-4, "teacher vs transformers on the converted dir: {d_conv}");
    assert!(d_student <= 1e-4, "exported student vs transformers: {d_student}");
    assert!(d_student_gguf <= 1e-4, "student GGUF export vs transformers reading it: {d_student_gguf}");
    // distill reads its own GGUF back to the same weights, bit for bit, and the same tokenizer.
    let back = load_lm(&sgguf, Device::Cpu).unwrap();
    assert_eq!(back.model.config(), student.config());
    assert_eq!(back.chat_template.as_deref(), template);
    assert_eq!(max_diff(&row_logits(&back.model, &ids), &student_logits), 0.0);
    assert_eq!(
        distill_gguf::tokenizer_fingerprint(&back.tokenizer),
        distill_gguf::tokenizer_fingerprint(&teacher.tokenizer)
    );
    // F16 stores every matrix rounded to half precision (norms stay F32); Q8_0 within half a
    // quantization step (block max |w| / 127, bounded here by the tensor's max).
    for (ty, name) in [(GgufType::F16, "f16"), (GgufType::Q8_0, "q8_0")] {
        let path = tmp.join(format!("student-{name}.gguf"));
        distill::io::export::export_gguf(&student, &teacher.tokenizer, None, "student", &path, ty).unwrap();
        let q = load_lm(&path, Device::Cpu).unwrap();
        let qv = q.vs.variables();
        for (n, w) in sv.iter() {
            let got = &qv[n];
            if w.dim() == 1 {
                assert!(got.equal(w), "{name}: {n} must stay F32");
            } else if ty == GgufType::F16 {
                assert!(got.equal(&w.to_kind(tch::Kind::Half).to_kind(tch::Kind::Float)), "{name}: {n}");
            } else {
                // Half a step, plus 127 steps' worth of the scale's own f16 rounding (2^-11).
                let step = w.abs().max().double_value(&[]) / 127.0;
                let bound = step * (0.5 + 127.0 / 2048.0);
                assert!(max_diff(got, w) <= bound, "{name}: {n}: {} > {bound}", max_diff(got, w));
            }
        }
        let d = max_diff(&row_logits(&q.model, &ids), &student_logits);
        eprintln!("student GGUF {name}: max |Δlogit| vs f32 {d:.2e}");
    }
    // And the teacher is a real model: "Paris" is its top next token after "…France is".
    let top = ours.get(4).argmax(-1, false).int64_value(&[]);
    assert_eq!(teacher.tokenizer.decode(&[top as u32], false).unwrap(), " Paris");
    std::fs::remove_dir_all(&tmp).unwrap();
}

const CHAT_PY: &str = r#"
import json, sys
from transformers import AutoTokenizer
path, convs = sys.argv[1], json.loads(sys.argv[2])
d, f = path.rsplit("/", 1)
tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
print(json.dumps([tok.apply_chat_template(c, tokenize=False, add_generation_prompt=g) for c, g in convs]))
"#;

/// The chat template in SmolLM2's GGUF renders as transformers' `apply_chat_template` renders it:
/// a lone user turn (the default system turn added, generation prompt on) and a full
/// system / user / assistant conversation (no generation prompt).
#[test]
fn chat_template_matches_transformers() {
    use distill::io::chat::{apply_chat_template, Message};
    let gguf = smollm2();
    let teacher = load_lm(&gguf, Device::Cpu).unwrap();
    let template = teacher.chat_template.as_deref().expect("SmolLM2's GGUF has a chat template");
    let msg = |role: &str, content: &str| Message { role: role.into(), content: content.into() };
    let convs = [
        (vec![msg("user", "What is 2+2?")], true),
        (vec![msg("system", "Be brief."), msg("user", "Hi"), msg("assistant", "Hello!")], false),
    ];
    let ours: Vec<String> =
        convs.iter().map(|(c, g)| apply_chat_template(template, c, *g, "", "<|im_end|>").unwrap()).collect();
    let arg = serde_json::to_string(&convs.iter().map(|(c, g)| (c, g)).collect::<Vec<_>>()).unwrap();
    let stdout = String::from_utf8(run_python(|c| c.args(["-c", CHAT_PY, gguf.to_str().unwrap(), &arg]))).unwrap();
    let theirs: Vec<String> = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(ours, theirs);
    assert!(ours[0].ends_with("<|im_start|>assistant\n") && ours[0].contains("What is 2+2?"), "{}", ours[0]);
}
