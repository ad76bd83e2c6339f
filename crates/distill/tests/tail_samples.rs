//! The top-k + tail-samples teacher (`losses::sampled`, `cache::sample_tail`): with samples
//! whose counts are exactly proportional to the tail, the sparse estimate *is* the teacher, so
//! its loss and gradients must equal the dense forward KL at every temperature; and the sampler
//! draws from the tail distribution.

use distill::losses::response::cross_entropy;
use distill::losses::{ChunkTeacher, ChunkedKd, Divergence, SparseTeacher, TailSamples};
use distill::teacher::cache::sample_tail;
use tch::{Kind, Tensor};

const V: i64 = 10;
const K: i64 = 3;
/// Tail counts of tokens 3..10 (the top-k are tokens 0, 1, 2); they sum to S.
const COUNTS: [i64; 7] = [2, 1, 1, 1, 1, 1, 1];
const S: i64 = 8;

/// Two rows: top-k probabilities and a tail spread exactly as COUNTS / S.
fn teacher() -> (Tensor, SparseTeacher, TailSamples) {
    let tops = [[0.4f64, 0.2, 0.1], [0.5, 0.25, 0.09]];
    let (mut logp, mut ids, mut tlp, mut sid, mut slp) = (vec![], vec![], vec![], vec![], vec![]);
    let mut dense = vec![];
    for (r, top) in tops.iter().enumerate() {
        let m: f64 = 1.0 - top.iter().sum::<f64>();
        // Row 1 lists its top-k in another order of ids to exercise the scatter.
        let top_ids: [i64; 3] = if r == 0 { [0, 1, 2] } else { [2, 0, 1] };
        let mut p = vec![0f64; V as usize];
        for (i, &id) in top_ids.iter().enumerate() {
            p[id as usize] = top[i];
            ids.push(id);
            tlp.push(top[i].ln() as f32);
        }
        for (j, &c) in COUNTS.iter().enumerate() {
            let id = 3 + j as i64;
            p[id as usize] = m * c as f64 / S as f64;
            for _ in 0..c {
                sid.push(id);
                slp.push(p[id as usize].ln() as f32);
            }
        }
        logp.push(m.ln() as f32);
        dense.extend(p.iter().map(|&x| x.ln() as f32));
    }
    let sparse = SparseTeacher {
        ids: Tensor::from_slice(&ids).view([2, K]),
        logp: Tensor::from_slice(&tlp).view([2, K]),
        log_tail: Tensor::from_slice(&logp),
    };
    let samples =
        TailSamples { ids: Tensor::from_slice(&sid).view([2, S]), logp: Tensor::from_slice(&slp).view([2, S]) };
    (Tensor::from_slice(&dense).view([2, V]), sparse, samples)
}

/// (total, soft, hard, ∂/∂h, ∂/∂W) of the chunked loss against `teacher`.
fn run(kd: &ChunkedKd, h0: &Tensor, w0: &Tensor, teacher: ChunkTeacher<'_>, y: &Tensor) -> Vec<Vec<f64>> {
    let h = h0.detach().copy().set_requires_grad(true);
    let w = w0.detach().copy().set_requires_grad(true);
    let p = kd.forward(&h, &w, Some(teacher), Some(y));
    p.total.backward();
    [p.total, p.soft, p.hard, h.grad(), w.grad()]
        .iter()
        .map(|t| Vec::<f64>::try_from(t.flatten(0, -1).to_kind(Kind::Double)).unwrap())
        .collect()
}

/// The naive reference: dense forward KL at T on full logits, plus CE.
fn naive(kd: &ChunkedKd, h0: &Tensor, w0: &Tensor, dense: &Tensor, y: &Tensor) -> Vec<Vec<f64>> {
    let h = h0.detach().copy().set_requires_grad(true);
    let w = w0.detach().copy().set_requires_grad(true);
    let logits = h.linear::<Tensor>(&w, None).to_kind(Kind::Float);
    let soft = Divergence::ForwardKl.dense(&logits, dense, kd.temperature);
    // ChunkedKd reports no hard part at α = 1.
    let hard =
        if kd.alpha < 1.0 { cross_entropy(&logits, y) } else { Tensor::zeros([], (Kind::Float, tch::Device::Cpu)) };
    let total = &soft * kd.alpha + &hard * (1.0 - kd.alpha);
    total.backward();
    [total, soft, hard, h.grad(), w.grad()]
        .iter()
        .map(|t| Vec::<f64>::try_from(t.flatten(0, -1).to_kind(Kind::Double)).unwrap())
        .collect()
}

fn assert_close(what: &str, got: &[Vec<f64>], want: &[Vec<f64>]) {
    for (part, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.len(), w.len());
        for (i, (a, b)) in g.iter().zip(w).enumerate() {
            assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{what}: part {part}[{i}]: {a} vs {b}");
        }
    }
}

#[test]
fn exactly_proportional_samples_give_the_dense_forward_kl() {
    tch::manual_seed(3);
    let (dense, top, samples) = teacher();
    let y = Tensor::from_slice(&[4i64, -100]);
    for kind in [Kind::Float, Kind::Double] {
        // Float runs the closed-form gradient, Double the autograd path.
        let h = Tensor::randn([2, 6], (kind, tch::Device::Cpu));
        let w = Tensor::randn([V, 6], (kind, tch::Device::Cpu)) * 0.7;
        for t in [1.0, 2.0, 0.5] {
            for alpha in [1.0, 0.6] {
                let kd = ChunkedKd { divergence: Divergence::ForwardKl, temperature: t, alpha, chunk_rows: 1 };
                let got = run(&kd, &h, &w, ChunkTeacher::Sampled { top: &top, samples: &samples }, &y);
                let want = naive(&kd, &h, &w, &dense, &y);
                assert_close(&format!("{kind:?} T={t} alpha={alpha}"), &got, &want);
            }
        }
    }
}

#[test]
fn other_divergences_use_the_top_k_bins() {
    tch::manual_seed(4);
    let (_, top, samples) = teacher();
    let y = Tensor::from_slice(&[4i64, 7]);
    let h = Tensor::randn([2, 6], (Kind::Float, tch::Device::Cpu));
    let w = Tensor::randn([V, 6], (Kind::Float, tch::Device::Cpu)) * 0.7;
    let kd = ChunkedKd { divergence: Divergence::ReverseKl, temperature: 2.0, alpha: 0.5, chunk_rows: 2 };
    let got = run(&kd, &h, &w, ChunkTeacher::Sampled { top: &top, samples: &samples }, &y);
    let want = run(&kd, &h, &w, ChunkTeacher::Sparse(&top), &y);
    assert_close("reverse KL", &got, &want);
}

#[test]
fn tail_sampler_draws_the_tail_distribution_deterministically() {
    tch::manual_seed(5);
    let v = 40;
    let lp = (Tensor::randn([1, 2, v], (Kind::Float, tch::Device::Cpu)) * 1.5).log_softmax(-1, Kind::Float);
    let (_, top) = lp.topk(5, -1, true, true); // [1, 2, 5]
    let s = 40_000;
    let (ids, slp) = sample_tail(&lp, &top, &[7], s);
    assert_eq!(ids.size(), [1, 2, s as i64]);
    let (again, _) = sample_tail(&lp, &top, &[7], s);
    assert!(ids.equal(&again), "same row, same draws");
    let (other, _) = sample_tail(&lp, &top, &[8], s);
    assert!(!ids.equal(&other), "another row, other draws");
    // Log-probs are the teacher's at the drawn ids.
    assert!(slp.equal(&lp.gather(2, &ids, false)));
    for pos in 0..2 {
        let p: Vec<f64> = Vec::try_from(lp.get(0).get(pos).exp().to_kind(Kind::Double)).unwrap();
        let top_ids: Vec<i64> = Vec::try_from(top.get(0).get(pos)).unwrap();
        let drawn: Vec<i64> = Vec::try_from(ids.get(0).get(pos)).unwrap();
        let m: f64 = (0..v as usize).filter(|i| !top_ids.contains(&(*i as i64))).map(|i| p[i]).sum();
        let mut counts = vec![0usize; v as usize];
        for &d in &drawn {
            assert!(!top_ids.contains(&d), "drew top-k id {d}");
            counts[d as usize] += 1;
        }
        for i in 0..v as usize {
            if top_ids.contains(&(i as i64)) {
                continue;
            }
            let q = p[i] / m;
            let sd = (q * (1.0 - q) / s as f64).sqrt();
            let f = counts[i] as f64 / s as f64;
            assert!((f - q).abs() <= 5.0 * sd + 1e-4, "pos {pos} id {i}: frequency {f} vs {q}");
        }
    }
}
