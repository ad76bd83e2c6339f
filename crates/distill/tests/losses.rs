//! Loss values and gradients against PyTorch 2.11 reference numbers
//! (`tests/fixtures/losses/make_fixtures.py` produced `kd.json`).

mod common;

use common::{floats, ints, loss_fixture, tensor};
use distill::losses::KdLoss;
use tch::{Kind, Tensor};

fn close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol, "{what}[{i}]: {g} vs PyTorch {w}");
    }
}

#[test]
fn kd_loss_and_gradient_match_pytorch() {
    let f = loss_fixture("kd.json");
    let cases = f["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 6);
    for (i, c) in cases.iter().enumerate() {
        let (n, k) = (c["n"].as_i64().unwrap(), c["c"].as_i64().unwrap());
        let s = tensor(&c["student"], &[n, k]).set_requires_grad(true);
        let t = tensor(&c["teacher"], &[n, k]);
        let y = Tensor::from_slice(&ints(&c["labels"]));
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
    let f = loss_fixture("hidden.json");
    let cases = f["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 5);
    for (i, c) in cases.iter().enumerate() {
        let dim = |k: &str| c[k].as_i64().unwrap();
        let (n, hs, ht) = (dim("n"), dim("hs"), dim("ht"));
        let h = tensor(&c["student"], &[n, hs]).set_requires_grad(true);
        let w = tensor(&c["proj"], &[ht, hs]).set_requires_grad(true);
        let t = tensor(&c["teacher"], &[n, ht]);
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

/// The integer `c[k]`.
fn int(c: &serde_json::Value, k: &str) -> i64 {
    c[k].as_i64().unwrap()
}

fn flat(g: Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(g.flatten(0, -1).to_kind(Kind::Float)).unwrap()
}

fn scalar(t: &Tensor) -> [f32; 1] {
    [t.double_value(&[]) as f32]
}

/// FitNets hints through a 1×1-conv or linear regressor (maps of different sizes pooled to the
/// smaller): loss and gradients for the student's features and the regressor, against PyTorch
/// (`tests/fixtures/losses/make_method_fixtures.py`).
#[test]
fn fitnets_hint_matches_pytorch() {
    use distill::losses::feature_map::{hint_loss, match_spatial};
    let f = loss_fixture("methods.json");
    let cases = f["hint"].as_array().unwrap();
    assert_eq!(cases.len(), 5);
    for (i, c) in cases.iter().enumerate() {
        let (b, cs, ct, hs, ht) = (int(c, "b"), int(c, "cs"), int(c, "ct"), int(c, "hs"), int(c, "ht"));
        let conv = c["kind"] == "conv";
        let (s_shape, t_shape, w_shape) = if conv {
            (vec![b, cs, hs, hs], vec![b, ct, ht, ht], vec![ct, cs, 1, 1])
        } else {
            (vec![b, cs], vec![b, ct], vec![ct, cs])
        };
        let s = tensor(&c["student"], &s_shape).set_requires_grad(true);
        let t = tensor(&c["teacher"], &t_shape);
        let w = tensor(&c["weight"], &w_shape).set_requires_grad(true);
        let bias = tensor(&c["bias"], &[ct]).set_requires_grad(true);
        let r = if conv { s.conv2d(&w, Some(&bias), [1], [0], [1], 1) } else { s.linear(&w, Some(&bias)) };
        let (r, t) = match_spatial(&r, &t);
        let loss = hint_loss(&r, &t);
        close(&format!("hint case {i} loss"), &scalar(&loss), &[c["loss"].as_f64().unwrap() as f32], 1e-5);
        loss.backward();
        close(&format!("hint case {i} d/ds"), &flat(s.grad()), &floats(&c["grad_student"]), 1e-5);
        close(&format!("hint case {i} d/dW"), &flat(w.grad()), &floats(&c["grad_weight"]), 1e-5);
        close(&format!("hint case {i} d/db"), &flat(bias.grad()), &floats(&c["grad_bias"]), 1e-5);
    }
}

/// Attention transfer (`p` = 2 and 1, different channel counts, pooled spatial sizes): loss
/// and gradient against PyTorch.
#[test]
fn attention_transfer_matches_pytorch() {
    use distill::losses::feature_map::attention_transfer;
    let f = loss_fixture("methods.json");
    let cases = f["attention_transfer"].as_array().unwrap();
    assert_eq!(cases.len(), 3);
    for (i, c) in cases.iter().enumerate() {
        let (b, cs, ct, hs, ht) = (int(c, "b"), int(c, "cs"), int(c, "ct"), int(c, "hs"), int(c, "ht"));
        let s = tensor(&c["student"], &[b, cs, hs, hs]).set_requires_grad(true);
        let t = tensor(&c["teacher"], &[b, ct, ht, ht]);
        let loss = attention_transfer(&s, &t, c["p"].as_f64().unwrap());
        close(&format!("AT case {i} loss"), &scalar(&loss), &[c["loss"].as_f64().unwrap() as f32], 1e-6);
        loss.backward();
        close(&format!("AT case {i} d/ds"), &flat(s.grad()), &floats(&c["grad_student"]), 1e-6);
    }
}

/// RKD distance and angle between embeddings of different widths: losses and gradients against
/// PyTorch (the authors' formulation).
#[test]
fn rkd_distance_and_angle_match_pytorch() {
    use distill::losses::relation::{rkd_angle, rkd_distance};
    let f = loss_fixture("methods.json");
    let cases = f["rkd"].as_array().unwrap();
    assert_eq!(cases.len(), 3);
    for (i, c) in cases.iter().enumerate() {
        let (n, ds, dt) = (int(c, "n"), int(c, "ds"), int(c, "dt"));
        let t = tensor(&c["teacher"], &[n, dt]);
        for (name, f) in [("distance", rkd_distance as fn(&Tensor, &Tensor) -> Tensor), ("angle", rkd_angle)] {
            let s = tensor(&c["student"], &[n, ds]).set_requires_grad(true);
            let loss = f(&s, &t);
            close(&format!("RKD {name} case {i}"), &scalar(&loss), &[c[name].as_f64().unwrap() as f32], 1e-5);
            loss.backward();
            close(&format!("RKD {name} case {i} d/ds"), &flat(s.grad()), &floats(&c[&format!("grad_{name}")]), 1e-5);
        }
    }
}

/// MiniLMv2's relation KL (relation heads splitting different widths, causal mask, left
/// padding) and MiniLM's attention-map KL: losses and gradients against PyTorch.
#[test]
fn minilm_relation_and_attention_kl_match_pytorch() {
    use distill::losses::relation::{attention_kl, relation_kl};
    let f = loss_fixture("methods.json");
    let cases = f["relation"].as_array().unwrap();
    assert_eq!(cases.len(), 3);
    for (i, c) in cases.iter().enumerate() {
        let (b, t, ds, dt) = (int(c, "b"), int(c, "t"), int(c, "ds"), int(c, "dt"));
        let s = tensor(&c["student"], &[b, t, ds]).set_requires_grad(true);
        let x = tensor(&c["teacher"], &[b, t, dt]);
        let mask = c["mask"].as_array().map(|m| {
            let v: Vec<i64> = m.iter().map(|x| x.as_i64().unwrap()).collect();
            Tensor::from_slice(&v).view([b, t])
        });
        let loss = relation_kl(&s, &x, int(c, "heads"), mask.as_ref());
        close(&format!("relation case {i}"), &scalar(&loss), &[c["loss"].as_f64().unwrap() as f32], 1e-5);
        loss.backward();
        close(&format!("relation case {i} d/ds"), &flat(s.grad()), &floats(&c["grad_student"]), 1e-5);
    }
    for (i, c) in f["attention_map"].as_array().unwrap().iter().enumerate() {
        let (b, h, t) = (int(c, "b"), int(c, "h"), int(c, "t"));
        let ps = tensor(&c["student"], &[b, h, t, t]).set_requires_grad(true);
        let pt = tensor(&c["teacher"], &[b, h, t, t]);
        let loss = attention_kl(&ps, &pt, None);
        close(&format!("attention KL case {i}"), &scalar(&loss), &[c["loss"].as_f64().unwrap() as f32], 1e-5);
        loss.backward();
        close(&format!("attention KL case {i} d/dp"), &flat(ps.grad()), &floats(&c["grad_probs"]), 1e-5);
    }
}
