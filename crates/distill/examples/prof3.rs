use std::time::Instant;
use tch::Kind;
fn main() {
    tch::set_num_threads(2);
    let t = distill::lm::load_lm(
        &distill::fetch::resolve("asset:smollm2/SmolLM2-135M-Instruct.Q4_1.gguf").unwrap(),
        tch::Device::Cpu,
    )
    .unwrap();
    let ids = tch::Tensor::randint(49152, [8, 128], (tch::Kind::Int64, tch::Device::Cpu));
    for _ in 0..2 {
        tch::no_grad(|| {
            let t0 = Instant::now();
            let logits = t.model.forward(&ids, None, Default::default()).unwrap().logits;
            let _ = logits.get(0).get(0).get(0).double_value(&[]);
            let t1 = Instant::now();
            let lp = logits.log_softmax(-1, Kind::Float);
            let _ = lp.get(0).get(0).get(0).double_value(&[]);
            let t2 = Instant::now();
            let (vals, idx) = lp.topk(64, -1, true, true);
            let _ = vals.get(0).get(0).get(0).double_value(&[]);
            let t3 = Instant::now();
            let tail = lp.scatter_value(-1, &idx, f64::NEG_INFINITY).logsumexp([-1i64].as_slice(), false);
            let _ = tail.get(0).get(0).double_value(&[]);
            let t4 = Instant::now();
            let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
            println!(
                "forward {:.0} log_softmax {:.0} topk {:.0} tail {:.0}",
                ms(t0, t1),
                ms(t1, t2),
                ms(t2, t3),
                ms(t3, t4)
            );
        });
    }
}
