//! Optimizers whose whole state is plain tensors, so a checkpoint can hold it and a resumed run
//! continues bit for bit, plus the learning-rate schedule and gradient clipping.
//!
//! * AdamW (Loshchilov & Hutter 2019): `m ← β₁m + (1−β₁)g`, `v ← β₂v + (1−β₂)g²`,
//!   `θ ← θ − lr·λ·θ − lr·(m/(1−β₁ᵗ)) / (√(v/(1−β₂ᵗ)) + ε)`. Weight decay λ is applied to
//!   tensors with two or more dimensions only (matrices, embeddings, conv kernels), not to
//!   biases or norm gains — the usual convention for transformers.
//! * SGD with momentum, PyTorch convention: `b ← μb + (g + λθ)`, `θ ← θ − lr·b`
//!   (Nesterov: `θ ← θ − lr·(g + λθ + μb)`).

use tch::{Kind, Tensor};

use crate::train::config::{OptimizerKind, Schedule, TrainCfg};

/// A parameter with its name and optimizer slots.
#[derive(Debug)]
struct Slot {
    name: String,
    param: Tensor,
    m: Tensor,
    v: Option<Tensor>,
    decay: bool,
}

/// AdamW or SGD over a list of named parameters.
#[derive(Debug)]
pub struct Optimizer {
    kind: OptimizerKind,
    slots: Vec<Slot>,
    betas: [f64; 2],
    eps: f64,
    weight_decay: f64,
    momentum: f64,
    nesterov: bool,
    /// Number of updates applied so far (Adam's bias correction uses it).
    pub steps: u64,
}

impl Optimizer {
    /// Creates zeroed slots for `params` (name, tensor requiring grad).
    pub fn new(cfg: &TrainCfg, params: Vec<(String, Tensor)>) -> Self {
        let slots = params
            .into_iter()
            .map(|(name, param)| {
                let m = param.zeros_like();
                let v = (cfg.optimizer == OptimizerKind::Adamw).then(|| param.zeros_like());
                let decay = param.dim() >= 2;
                Slot { name, param, m, v, decay }
            })
            .collect();
        Optimizer {
            kind: cfg.optimizer,
            slots,
            betas: cfg.betas,
            eps: cfg.eps,
            weight_decay: cfg.weight_decay,
            momentum: cfg.momentum,
            nesterov: cfg.nesterov,
            steps: 0,
        }
    }

    /// Zeroes every parameter's gradient.
    pub fn zero_grad(&mut self) {
        for s in &mut self.slots {
            let mut g = s.param.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
    }

    /// Every parameter's gradient, zeros where none was computed (a parameter the loss did not
    /// reach): what data-parallel ranks sum, so each rank holds the same set.
    pub fn grads_defined(&mut self) -> Vec<Tensor> {
        let missing: Vec<Tensor> =
            self.slots.iter().filter(|s| !s.param.grad().defined()).map(|s| s.param.sum(Kind::Float) * 0.0).collect();
        if !missing.is_empty() {
            Tensor::stack(&missing, 0).sum(Kind::Float).backward();
        }
        self.slots.iter().map(|s| s.param.grad()).collect()
    }

    /// Global L2 norm of all gradients; when `max` is given and exceeded, scales them down to it.
    pub fn clip_grad_norm(&mut self, max: Option<f64>) -> f64 {
        let grads: Vec<Tensor> = self.slots.iter().map(|s| s.param.grad()).filter(|g| g.defined()).collect();
        if grads.is_empty() {
            return 0.0;
        }
        let sq: Vec<Tensor> = grads.iter().map(|g| g.square().sum(Kind::Float)).collect();
        let norm = Tensor::stack(&sq, 0).sum(Kind::Float).sqrt().double_value(&[]);
        if let Some(max) = max {
            if norm > max && norm.is_finite() {
                let scale = max / (norm + 1e-6);
                for mut g in grads {
                    let _ = g.g_mul_scalar_(scale);
                }
            }
        }
        norm
    }

    /// Applies one update at learning rate `lr`.
    pub fn step(&mut self, lr: f64) {
        self.steps += 1;
        let t = self.steps as i32;
        let [b1, b2] = self.betas;
        tch::no_grad(|| {
            for s in &mut self.slots {
                let g = s.param.grad();
                if !g.defined() {
                    continue;
                }
                let wd = if s.decay { self.weight_decay } else { 0.0 };
                match (self.kind, s.v.as_mut()) {
                    (OptimizerKind::Adamw, Some(v)) => {
                        let _ = s.m.lerp_(&g, 1.0 - b1);
                        let _ = v.g_mul_scalar_(b2);
                        let _ = v.addcmul_(&(&g * (1.0 - b2)), &g);
                        let bc1 = 1.0 - b1.powi(t);
                        let bc2 = 1.0 - b2.powi(t);
                        if wd > 0.0 {
                            let _ = s.param.g_mul_scalar_(1.0 - lr * wd);
                        }
                        let denom = (&*v / bc2).sqrt() + self.eps;
                        let _ = s.param.addcdiv_(&(&s.m * (-lr / bc1)), &denom);
                    }
                    _ => {
                        let d = if wd > 0.0 { &g + &s.param * wd } else { g.shallow_clone() };
                        let _ = s.m.g_mul_scalar_(self.momentum);
                        let _ = s.m.g_add_(&d);
                        let upd = if self.nesterov { &d + &s.m * self.momentum } else { s.m.shallow_clone() };
                        let _ = s.param.g_add_(&(upd * -lr));
                    }
                }
            }
        });
    }

    /// The optimizer's state tensors, named `m.<param>` / `v.<param>`, for a checkpoint.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for s in &self.slots {
            out.push((format!("m.{}", s.name), s.m.shallow_clone()));
            if let Some(v) = &s.v {
                out.push((format!("v.{}", s.name), v.shallow_clone()));
            }
        }
        out
    }

    /// Restores state saved by [`Optimizer::state`]; returns the names that were missing.
    pub fn load_state(&mut self, get: &dyn Fn(&str) -> Option<Tensor>, steps: u64) -> Vec<String> {
        let mut missing = Vec::new();
        tch::no_grad(|| {
            for s in &mut self.slots {
                match get(&format!("m.{}", s.name)) {
                    Some(t) => s.m.copy_(&t),
                    None => missing.push(format!("m.{}", s.name)),
                }
                if let Some(v) = &mut s.v {
                    match get(&format!("v.{}", s.name)) {
                        Some(t) => v.copy_(&t),
                        None => missing.push(format!("v.{}", s.name)),
                    }
                }
            }
        });
        self.steps = steps;
        missing
    }
}

/// Learning rate at `step` (0-based) of `total`: linear warmup, then the schedule.
pub fn lr_at(cfg: &TrainCfg, step: u64, total: u64) -> f64 {
    let base = cfg.lr;
    if step < cfg.warmup_steps {
        return base * (step + 1) as f64 / cfg.warmup_steps as f64;
    }
    let span = total.saturating_sub(cfg.warmup_steps).max(1) as f64;
    let progress = ((step - cfg.warmup_steps) as f64 / span).clamp(0.0, 1.0);
    let floor = base * cfg.min_lr_ratio;
    match cfg.schedule {
        Schedule::Constant => base,
        Schedule::Linear => floor + (base - floor) * (1.0 - progress),
        Schedule::Cosine => floor + (base - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(toml_text: &str) -> TrainCfg {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn schedule_warmup_then_cosine() {
        let c = cfg("lr = 1.0\nepochs = 1\nwarmup_steps = 10\nmin_lr_ratio = 0.1");
        assert!((lr_at(&c, 0, 110) - 0.1).abs() < 1e-12);
        assert!((lr_at(&c, 9, 110) - 1.0).abs() < 1e-12);
        assert!((lr_at(&c, 10, 110) - 1.0).abs() < 1e-12);
        assert!((lr_at(&c, 60, 110) - 0.55).abs() < 1e-12);
        assert!((lr_at(&c, 110, 110) - 0.1).abs() < 1e-12);
    }

    /// Reference numbers from `torch.optim.AdamW(lr=0.1, weight_decay=0.01)` and
    /// `torch.optim.SGD(lr=0.1, momentum=0.9, weight_decay=0.01)` on p = [[1, -2], [3, 0.5]]
    /// with gradient 2p + 1 for 3 steps, PyTorch 2.11:
    /// ```python
    /// p = torch.tensor([[1., -2.], [3., .5]], requires_grad=True)
    /// opt = torch.optim.AdamW([p], lr=0.1, weight_decay=0.01)
    /// for _ in range(3):
    ///     opt.zero_grad(); (p * p + p).sum().backward(); opt.step()
    /// ```
    #[test]
    fn adamw_and_sgd_match_pytorch() {
        for (kind, want) in [
            ("adamw", [0.6982171, -1.6952323, 2.6916387, 0.2003981]),
            ("sgd", [-0.4103658, -0.5849485, -0.2939776, -0.439463]),
        ] {
            let c = cfg(&format!("lr = 0.1\nepochs = 1\noptimizer = \"{kind}\"\nweight_decay = 0.01"));
            let p = Tensor::from_slice(&[1.0f32, -2.0, 3.0, 0.5]).view([2, 2]).set_requires_grad(true);
            let mut opt = Optimizer::new(&c, vec![("p".into(), p.shallow_clone())]);
            for _ in 0..3 {
                opt.zero_grad();
                (&p * &p + &p).sum(Kind::Float).backward();
                opt.step(0.1);
            }
            let got: Vec<f32> = Vec::try_from(p.detach().flatten(0, -1)).unwrap();
            for (g, w) in got.iter().zip(want) {
                assert!((g - w).abs() < 1e-5, "{kind}: {got:?} vs {want:?}");
            }
        }
    }
}
