//! Divergences (dense and top-k sparse) and the chunked objective against PyTorch 2.11 reference
//! numbers (`tests/fixtures/losses/make_divergence_fixtures.py` produced `divergences.json`), plus
//! chunked-vs-naive equivalence and edge cases.

mod common;

use common::{ints, loss_fixture, tensor};
use distill::losses::response::cross_entropy;
use distill::losses::{ChunkTeacher, ChunkedKd, Divergence, DivergenceCfg, DivergenceKind, SparseTeacher};
use tch::{Kind, Tensor};

/// Absolute tolerance, relative above magnitude 1.
const TOL: f64 = 1e-5;

fn vec_of(t: &Tensor) -> Vec<f64> {
    Vec::try_from(t.flatten(0, -1).to_kind(Kind::Double)).unwrap()
}

/// Asserts `|got − want| ≤ TOL·max(1, |want|)` elementwise; returns the max abs error.
fn close(what: &str, got: &[f64], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = 0f64;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs();
        assert!(err <= TOL * w.abs().max(1.0), "{what}[{i}]: {g} vs {w} (err {err:e})");
        worst = worst.max(err);
    }
    worst
}

fn want(v: &serde_json::Value) -> Vec<f64> {
    match v {
        serde_json::Value::Array(a) => a.iter().map(|x| x.as_f64().unwrap()).collect(),
        x => vec![x.as_f64().unwrap()],
    }
}

fn cfg_of(c: &serde_json::Value) -> Divergence {
    let cfg: DivergenceCfg = serde_json::from_value(c["cfg"].clone()).unwrap();
    cfg.validate().unwrap()
}

const ALL: [Divergence; 10] = [
    Divergence::ForwardKl,
    Divergence::ReverseKl,
    Divergence::Tvd,
    Divergence::Jsd { beta: 0.0 },
    Divergence::Jsd { beta: 0.5 },
    Divergence::Jsd { beta: 1.0 },
    Divergence::SkewKl { alpha: 0.0 },
    Divergence::SkewKl { alpha: 0.1 },
    Divergence::SkewReverseKl { alpha: 0.0 },
    Divergence::SkewReverseKl { alpha: 0.1 },
];

/// Runs `f(student)` for a fresh leaf copy of `s`; returns (loss, d loss / d student).
fn value_and_grad(s: &Tensor, f: impl Fn(&Tensor) -> Tensor) -> (f64, Vec<f64>) {
    let s = s.detach().copy().set_requires_grad(true);
    let loss = f(&s);
    loss.backward();
    (loss.double_value(&[]), vec_of(&s.grad()))
}

#[test]
fn dense_divergences_match_pytorch() {
    let f = loss_fixture("divergences.json");
    let d = &f["dense"];
    let (n, v) = (d["n"].as_i64().unwrap(), d["v"].as_i64().unwrap());
    let (s, t) = (tensor(&d["student"], &[n, v]), tensor(&d["teacher"], &[n, v]));
    let cases = d["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 48);
    let (mut worst_v, mut worst_g) = (0f64, 0f64);
    for c in cases {
        let (div, temp) = (cfg_of(c), c["temperature"].as_f64().unwrap());
        let (loss, grad) = value_and_grad(&s, |s| div.dense(s, &t, temp));
        let what = format!("dense {div} T={temp}");
        worst_v = worst_v.max(close(&format!("{what} loss"), &[loss], &want(&c["loss"])));
        worst_g = worst_g.max(close(&format!("{what} grad"), &grad, &want(&c["grad"])));
    }
    eprintln!("dense: max abs err value {worst_v:e}, grad {worst_g:e}");
}

fn fixture_sparse(d: &serde_json::Value) -> SparseTeacher {
    let (n, k) = (d["n"].as_i64().unwrap(), d["k"].as_i64().unwrap());
    SparseTeacher {
        ids: Tensor::from_slice(&ints(&d["ids"])).view([n, k]),
        logp: tensor(&d["logp"], &[n, k]),
        log_tail: tensor(&d["log_tail"], &[n]),
    }
}

#[test]
fn sparse_divergences_match_pytorch() {
    let f = loss_fixture("divergences.json");
    let d = &f["sparse"];
    let (n, v) = (d["n"].as_i64().unwrap(), d["v"].as_i64().unwrap());
    let s = tensor(&d["student"], &[n, v]);
    let teacher = fixture_sparse(d);
    let cases = d["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 48);
    let (mut worst_v, mut worst_g) = (0f64, 0f64);
    for c in cases {
        let (div, temp) = (cfg_of(c), c["temperature"].as_f64().unwrap());
        let (loss, grad) = value_and_grad(&s, |s| div.sparse(s, &teacher, temp));
        let what = format!("sparse {div} T={temp}");
        worst_v = worst_v.max(close(&format!("{what} loss"), &[loss], &want(&c["loss"])));
        worst_g = worst_g.max(close(&format!("{what} grad"), &grad, &want(&c["grad"])));
    }
    eprintln!("sparse: max abs err value {worst_v:e}, grad {worst_g:e}");
}

#[test]
fn sparse_teacher_from_logits_matches_the_pytorch_cache() {
    let f = loss_fixture("divergences.json");
    let d = &f["sparse"];
    let (n, v, k) = (d["n"].as_i64().unwrap(), d["v"].as_i64().unwrap(), d["k"].as_i64().unwrap());
    let got = SparseTeacher::from_logits(&tensor(&d["teacher"], &[n, v]), k);
    let want_t = fixture_sparse(d);
    assert_eq!(Vec::<i64>::try_from(got.ids.flatten(0, -1)).unwrap(), ints(&d["ids"]));
    close("logp", &vec_of(&got.logp), &vec_of(&want_t.logp));
    close("log_tail", &vec_of(&got.log_tail), &vec_of(&want_t.log_tail));
}

#[test]
fn reconstruct_is_exact_at_t1_and_normalised() {
    tch::manual_seed(1);
    let (n, v, k) = (6, 40, 7);
    let z = Tensor::randn([n, v], (Kind::Float, tch::Device::Cpu)) * 3.0;
    let st = SparseTeacher::from_logits(&z, k);
    let dense = z.log_softmax(-1, Kind::Float); // [N, V]
    let rec = st.reconstruct(1.0, v); // [N, V]
                                      // Top-k log-probs are the dense teacher's.
    close("top-k", &vec_of(&rec.gather(1, &st.ids, false)), &vec_of(&dense.gather(1, &st.ids, false)));
    // The tail holds log_tail, spread uniformly over the V − K other tokens.
    let outside = rec.scatter_value(1, &st.ids, f64::NEG_INFINITY);
    close("tail mass", &vec_of(&outside.logsumexp(-1, false)), &vec_of(&st.log_tail));
    let tail_tok = vec_of(&(&st.log_tail - ((v - k) as f64).ln()));
    for row in 0..n {
        let vals: Vec<f64> =
            vec_of(&rec.get(row)).into_iter().filter(|&x| (x - tail_tok[row as usize]).abs() < 1e-5).collect();
        assert_eq!(vals.len() as i64, v - k, "row {row}: uniform tail");
    }
    // Rows are distributions at any T; the bins of log_probs are the reconstruction's.
    for temp in [1.0, 2.0, 4.0] {
        let rec = st.reconstruct(temp, v);
        close("row mass", &vec_of(&rec.logsumexp(-1, false)), &[0.0; 6]);
        let bins = st.log_probs(temp, v);
        close("bins", &vec_of(&bins.narrow(1, 0, k)), &vec_of(&rec.gather(1, &st.ids, false)));
    }
    // K = V: no tail.
    let all = SparseTeacher::from_logits(&z, v);
    assert!(vec_of(&all.log_tail).iter().all(|x| *x == f64::NEG_INFINITY));
    close("K = V", &vec_of(&all.reconstruct(1.0, v)), &vec_of(&dense));
}

#[test]
fn sparse_with_all_ids_equals_dense() {
    let f = loss_fixture("divergences.json");
    let d = &f["dense"];
    let (n, v) = (d["n"].as_i64().unwrap(), d["v"].as_i64().unwrap());
    let (s, t) = (tensor(&d["student"], &[n, v]), tensor(&d["teacher"], &[n, v]));
    let st = SparseTeacher::from_logits(&t, v);
    for div in ALL {
        for temp in [1.0, 2.0, 4.0] {
            let (a, ga) = value_and_grad(&s, |s| div.dense(s, &t, temp));
            let (b, gb) = value_and_grad(&s, |s| div.sparse(s, &st, temp));
            close(&format!("{div} T={temp} loss"), &[b], &[a]);
            close(&format!("{div} T={temp} grad"), &gb, &ga);
        }
    }
}

#[test]
fn zero_probabilities_give_no_nan() {
    // Logits of −∞ (masked tokens) behave as probabilities that underflow to 0: the teacher's in
    // two places, the student's in one of them (both zero: the mixtures' log 0 + log 0 case).
    let s_inf = Tensor::from_slice(&[0.5f32, f32::NEG_INFINITY, 2.0, 0.0, 1.0, -3.0, 0.3, 0.2]).view([2, 4]);
    let t_inf =
        Tensor::from_slice(&[1.0f32, f32::NEG_INFINITY, 0.0, 2.0, f32::NEG_INFINITY, 1.0, 0.5, -0.5]).view([2, 4]);
    let (s_fin, t_fin) = (s_inf.clamp_min(-1000.0), t_inf.clamp_min(-1000.0));
    for div in ALL {
        for temp in [1.0, 3.0] {
            let (a, ga) = value_and_grad(&s_inf, |s| div.dense(s, &t_inf, temp));
            let mode_seeking = matches!(div, Divergence::ReverseKl | Divergence::Jsd { beta: 1.0 })
                || div == Divergence::SkewReverseKl { alpha: 0.0 };
            if mode_seeking {
                // The student has mass where the teacher has none: +∞, never NaN.
                assert_eq!(a, f64::INFINITY, "{div}");
                continue;
            }
            let (b, gb) = value_and_grad(&s_fin, |s| div.dense(s, &t_fin, temp));
            assert!(a.is_finite() && ga.iter().all(|g| g.is_finite()), "{div} T={temp}: {a} {ga:?}");
            close(&format!("{div} T={temp} loss"), &[a], &[b]);
            close(&format!("{div} T={temp} grad"), &ga, &gb);
        }
    }
}

#[test]
fn divergences_vanish_when_student_equals_teacher() {
    let z = Tensor::from_slice(&[1.0f32, 2.0, 3.0, -1.0, 0.0, 4.0]).view([2, 3]);
    for div in ALL {
        assert!(div.dense(&z, &z, 2.0).double_value(&[]).abs() < 1e-6, "{div}");
    }
    let st = SparseTeacher::from_logits(&z, 2);
    for div in ALL {
        assert!(div.sparse(&z, &st, 1.0).double_value(&[]).abs() < 1e-6, "{div} sparse");
    }
}

#[test]
fn recipe_config_parses_and_validates() {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Section {
        temperature: f64,
        divergence: DivergenceKind,
        beta: Option<f64>,
        skew: Option<f64>,
    }
    let parse = |s: &str| -> Result<Divergence, String> {
        toml::from_str::<DivergenceCfg>(s).map_err(|e| e.to_string())?.validate()
    };
    assert_eq!(parse("").unwrap(), Divergence::ForwardKl);
    assert_eq!(parse("divergence = \"reverse-kl\"").unwrap(), Divergence::ReverseKl);
    assert_eq!(parse("divergence = \"tvd\"").unwrap(), Divergence::Tvd);
    assert_eq!(parse("divergence = \"jsd\"\nbeta = 0.5").unwrap(), Divergence::Jsd { beta: 0.5 });
    assert_eq!(parse("divergence = \"skew-kl\"\nskew = 0.1").unwrap(), Divergence::SkewKl { alpha: 0.1 });
    assert_eq!(parse("divergence = \"skew-reverse-kl\"\nskew = 0").unwrap(), Divergence::SkewReverseKl { alpha: 0.0 });
    for (text, needle) in [
        ("divergence = \"jsd\"", "needs beta"),
        ("divergence = \"jsd\"\nbeta = 1.5", "beta must be in [0, 1]"),
        ("divergence = \"skew-kl\"\nskew = 1.0", "skew must be in [0, 1)"),
        ("divergence = \"skew-reverse-kl\"", "needs skew"),
        ("divergence = \"forward-kl\"\nbeta = 0.5", "beta only applies"),
        ("divergence = \"jsd\"\nbeta = 0.5\nskew = 0.1", "skew only applies"),
        ("divergence = \"kl\"", "unknown variant"),
        ("divergence = \"tvd\"\nalpha = 0.1", "unknown field"),
    ] {
        let err = parse(text).unwrap_err();
        assert!(err.contains(needle), "{text:?}: {err}");
    }
    // A Divergence round-trips through its config form.
    for div in ALL {
        let text = toml::to_string(&div).unwrap();
        assert_eq!(toml::from_str::<Divergence>(&text).unwrap(), div, "{text}");
    }
    // The three keys can sit in a deny_unknown_fields section and build a Divergence.
    let s: Section = toml::from_str("temperature = 2.0\ndivergence = \"jsd\"\nbeta = 0.9").unwrap();
    let cfg = DivergenceCfg { divergence: s.divergence, beta: s.beta, skew: s.skew };
    assert_eq!(cfg.validate().unwrap(), Divergence::Jsd { beta: 0.9 });
}

// --- chunked ----------------------------------------------------------------------------------

/// A tiny model-like setup: x → linear (upstream, trainable) → hidden → · Wᵀ → logits.
struct Setup {
    x: Tensor,      // [N, Din]
    w_in: Tensor,   // [H, Din]
    b_in: Tensor,   // [H]
    w_out: Tensor,  // [V, H]
    labels: Tensor, // [N]
}

impl Setup {
    fn leaves(&self) -> [Tensor; 3] {
        [&self.w_in, &self.b_in, &self.w_out].map(|p| p.detach().copy().set_requires_grad(true))
    }
}

enum Teach<'a> {
    Dense(&'a Tensor),
    Hidden(&'a Tensor, &'a Tensor),
    Sparse(&'a SparseTeacher),
}

/// (total, soft, hard, grads of w_in, b_in, w_out) by the chunked path or the naive dense one.
fn run(su: &Setup, kd: &ChunkedKd, teacher: &Teach, chunked: bool) -> (Vec<f64>, Vec<Vec<f64>>) {
    let [w_in, b_in, w_out] = su.leaves();
    let hidden = su.x.linear(&w_in, Some(&b_in)); // [N, H]
    let (total, soft, hard) = if chunked {
        let t = match teacher {
            Teach::Dense(z) => ChunkTeacher::Dense(z),
            Teach::Hidden(h, w) => ChunkTeacher::DenseHidden { hidden: h, weight: w, softcap: None },
            Teach::Sparse(s) => ChunkTeacher::Sparse(s),
        };
        let p = kd.forward(&hidden, &w_out, Some(t), Some(&su.labels));
        (p.total, p.soft, p.hard)
    } else {
        let logits = hidden.linear::<Tensor>(&w_out, None); // [N, V]
        let soft = match teacher {
            Teach::Dense(z) => kd.divergence.dense(&logits, z, kd.temperature),
            Teach::Hidden(h, w) => kd.divergence.dense(&logits, &h.linear::<Tensor>(w, None), kd.temperature),
            Teach::Sparse(s) => kd.divergence.sparse(&logits, s, kd.temperature),
        };
        let hard = cross_entropy(&logits, &su.labels);
        (&soft * kd.alpha + &hard * (1.0 - kd.alpha), soft, hard)
    };
    total.backward();
    let vals = [&total, &soft, &hard].map(|t| t.double_value(&[])).to_vec();
    (vals, [w_in, b_in, w_out].iter().map(|p| vec_of(&p.grad())).collect())
}

fn setup(n: i64, d_in: i64, h: i64, v: i64) -> Setup {
    let opts = (Kind::Float, tch::Device::Cpu);
    let mut labels = Tensor::randint(v, [n], (Kind::Int64, tch::Device::Cpu));
    let unlabeled: Vec<i64> = [0, 3, 9, 10, 30].into_iter().filter(|&i| i < n).collect();
    let _ = labels.index_fill_(0, &Tensor::from_slice(&unlabeled), -100);
    Setup {
        x: Tensor::randn([n, d_in], opts),
        w_in: Tensor::randn([h, d_in], opts) * 0.5,
        b_in: Tensor::randn([h], opts) * 0.1,
        w_out: Tensor::randn([v, h], opts) * 0.5,
        labels,
    }
}

#[test]
fn chunked_equals_naive_for_every_teacher_and_alpha() {
    tch::manual_seed(7);
    let (n, d_in, h, v, ht) = (37, 5, 16, 101, 12);
    let su = setup(n, d_in, h, v);
    let opts = (Kind::Float, tch::Device::Cpu);
    let t_hidden = Tensor::randn([n, ht], opts);
    let t_weight = Tensor::randn([v, ht], opts) * 0.5;
    let t_logits = t_hidden.linear::<Tensor>(&t_weight, None);
    let sparse = SparseTeacher::from_logits(&t_logits, 10);
    let teachers = [Teach::Dense(&t_logits), Teach::Hidden(&t_hidden, &t_weight), Teach::Sparse(&sparse)];
    for (ti, teacher) in teachers.iter().enumerate() {
        for alpha in [0.0, 0.5, 1.0] {
            for (divergence, temperature) in [
                (Divergence::ForwardKl, 2.0),
                (Divergence::ForwardKl, 1.0),
                (Divergence::Jsd { beta: 0.5 }, 1.0),
                (Divergence::SkewReverseKl { alpha: 0.1 }, 4.0),
                (Divergence::Tvd, 1.0),
            ] {
                let kd = ChunkedKd { divergence, temperature, alpha, chunk_rows: 8 };
                let what = format!("teacher {ti} alpha {alpha} {divergence} T={temperature}");
                let (cv, cg) = run(&su, &kd, teacher, true);
                let (nv, ng) = run(&su, &kd, teacher, false);
                let nv = [nv[0], if alpha > 0.0 { nv[1] } else { 0.0 }, if alpha < 1.0 { nv[2] } else { 0.0 }];
                close(&format!("{what} total/soft/hard"), &cv, &nv);
                for (name, (c, w)) in ["w_in", "b_in", "w_out"].iter().zip(cg.iter().zip(&ng)) {
                    close(&format!("{what} grad {name}"), c, w);
                }
            }
        }
    }
}

#[test]
fn chunked_matches_pytorch() {
    let f = loss_fixture("divergences.json");
    let mut worst = 0f64;
    for c in f["chunked"].as_array().unwrap() {
        let dim = |k: &str| c[k].as_i64().unwrap();
        let (n, d_in, h, v) = (dim("n"), dim("d_in"), dim("h"), dim("v"));
        let su = Setup {
            x: tensor(&c["x"], &[n, d_in]),
            w_in: tensor(&c["w_in"], &[h, d_in]),
            b_in: tensor(&c["b_in"], &[h]),
            w_out: tensor(&c["w_out"], &[v, h]),
            labels: Tensor::from_slice(&ints(&c["labels"])),
        };
        let teacher_logits = tensor(&c["teacher"], &[n, v]);
        let sparse = c.get("k").map(|k| SparseTeacher {
            ids: Tensor::from_slice(&ints(&c["ids"])).view([n, k.as_i64().unwrap()]),
            logp: tensor(&c["logp"], &[n, k.as_i64().unwrap()]),
            log_tail: tensor(&c["log_tail"], &[n]),
        });
        let teacher = match &sparse {
            Some(s) => Teach::Sparse(s),
            None => Teach::Dense(&teacher_logits),
        };
        let kd = ChunkedKd {
            divergence: cfg_of(c),
            temperature: c["temperature"].as_f64().unwrap(),
            alpha: c["alpha"].as_f64().unwrap(),
            chunk_rows: 4,
        };
        let (vals, grads) = run(&su, &kd, &teacher, true);
        let what = format!("chunked {}", kd.divergence);
        for (i, k) in ["loss", "soft", "hard"].iter().enumerate() {
            worst = worst.max(close(&format!("{what} {k}"), &[vals[i]], &want(&c[*k])));
        }
        for (g, k) in grads.iter().zip(["grad_w_in", "grad_b_in", "grad_w_out"]) {
            worst = worst.max(close(&format!("{what} {k}"), g, &want(&c[k])));
        }
    }
    eprintln!("chunked: max abs err {worst:e}");
}

#[test]
fn chunked_scratch_needs_no_teacher_and_nonfinite_propagates() {
    tch::manual_seed(3);
    let su = setup(11, 3, 4, 7);
    let [w_in, b_in, w_out] = su.leaves();
    let hidden = su.x.linear(&w_in, Some(&b_in));
    let kd = ChunkedKd { divergence: Divergence::ForwardKl, temperature: 2.0, alpha: 0.0, chunk_rows: 4 };
    let p = kd.forward(&hidden, &w_out, None, Some(&su.labels));
    let ce = cross_entropy(&hidden.linear::<Tensor>(&w_out, None), &su.labels).double_value(&[]);
    close("scratch = CE", &[p.total.double_value(&[]), p.soft.double_value(&[])], &[ce, 0.0]);
    // One NaN teacher row makes the loss non-finite (the Trainer's NaN guard sees it).
    let t = Tensor::randn([11, 7], (Kind::Float, tch::Device::Cpu));
    let _ = t.get(5).get(2).fill_(f64::NAN);
    let kd = ChunkedKd { alpha: 0.5, ..kd };
    let p = kd.forward(&hidden, &w_out, Some(ChunkTeacher::Dense(&t)), Some(&su.labels));
    assert!(p.total.double_value(&[]).is_nan());
    // Without grad (evaluation) only the value is computed.
    let hd = hidden.detach();
    let p = kd.forward(&hd, &w_out.detach(), Some(ChunkTeacher::Dense(&t.nan_to_num(0.0, None, None))), None);
    assert!(p.total.double_value(&[]).is_finite() && !p.total.requires_grad());
}
