//! Loss values and gradients against PyTorch 2.11 reference numbers
//! (`tests/fixtures/losses/make_fixtures.py` produced `kd.json`).

use distill::losses::KdLoss;
use tch::{Kind, Tensor};

fn fixture(name: &str) -> serde_json::Value {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/losses").join(name);
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol, "{what}[{i}]: {g} vs PyTorch {w}");
    }
}

#[test]
fn kd_loss_and_gradient_match_pytorch() {
    let f = fixture("kd.json");
    let cases = f["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 6);
    for (i, c) in cases.iter().enumerate() {
        let (n, k) = (c["n"].as_i64().unwrap(), c["c"].as_i64().unwrap());
        let s = Tensor::from_slice(&floats(&c["student"])).view([n, k]).set_requires_grad(true);
        let t = Tensor::from_slice(&floats(&c["teacher"])).view([n, k]);
        let y: Vec<i64> = c["labels"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
        let y = Tensor::from_slice(&y);
        let loss = KdLoss { temperature: c["temperature"].as_f64().unwrap(), alpha: c["alpha"].as_f64().unwrap() };
        let p = loss.forward(&s, &t, Some(&y));
        let case = format!("case {i} (T={}, alpha={})", loss.temperature, loss.alpha);
        let scalar = |t: &Tensor| [t.double_value(&[]) as f32];
        let want = |k: &str| [c[k].as_f64().unwrap() as f32];
        close(&format!("{case} loss"), &scalar(&p.total), &want("loss"), 1e-5);
        close(&format!("{case} soft"), &scalar(&p.soft), &want("soft"), 1e-5);
        close(&format!("{case} hard"), &scalar(&p.hard), &want("hard"), 1e-5);
        p.total.backward();
        let g: Vec<f32> = Vec::try_from(s.grad().flatten(0, -1).to_kind(Kind::Float)).unwrap();
        close(&format!("{case} grad"), &g, &floats(&c["grad"]), 1e-5);
    }
}

#[test]
fn kd_soft_term_is_zero_when_student_equals_teacher() {
    let z = Tensor::from_slice(&[1.0f32, 2.0, 3.0, -1.0, 0.0, 4.0]).view([2, 3]);
    let p = KdLoss { temperature: 3.0, alpha: 1.0 }.forward(&z, &z, None);
    assert!(p.soft.double_value(&[]).abs() < 1e-7);
}

/// Hidden-state KD (`mse`, TinyBERT; `cosine`, DistilBERT) through a projection `W`: loss and
/// the gradients reaching the student's states and `W`, against PyTorch
/// (`tests/fixtures/losses/make_hidden_fixtures.py`).
#[test]
fn hidden_state_losses_match_pytorch() {
    use distill::losses::HiddenLoss;
    let f = fixture("hidden.json");
    let cases = f["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 5);
    for (i, c) in cases.iter().enumerate() {
        let dim = |k: &str| c[k].as_i64().unwrap();
        let (n, hs, ht) = (dim("n"), dim("hs"), dim("ht"));
        let h = Tensor::from_slice(&floats(&c["student"])).view([n, hs]).set_requires_grad(true);
        let w = Tensor::from_slice(&floats(&c["proj"])).view([ht, hs]).set_requires_grad(true);
        let t = Tensor::from_slice(&floats(&c["teacher"])).view([n, ht]);
        let kind = match c["loss_kind"].as_str().unwrap() {
            "mse" => HiddenLoss::Mse,
            _ => HiddenLoss::Cosine,
        };
        let loss = kind.forward(&h.linear(&w, None::<Tensor>), &t);
        let case = format!("case {i} ({kind:?})");
        close(&format!("{case} loss"), &[loss.double_value(&[]) as f32], &[c["loss"].as_f64().unwrap() as f32], 1e-5);
        loss.backward();
        let flat = |g: Tensor| Vec::<f32>::try_from(g.flatten(0, -1)).unwrap();
        close(&format!("{case} d/dh"), &flat(h.grad()), &floats(&c["grad_student"]), 1e-5);
        close(&format!("{case} d/dW"), &flat(w.grad()), &floats(&c["grad_proj"]), 1e-5);
    }
}
