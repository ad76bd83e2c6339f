use std::time::Instant;
fn main() {
    tch::set_num_threads(2);
    let t = distill::lm::load_lm(
        &distill::fetch::resolve("asset:smollm2/SmolLM2-135M-Instruct.Q4_1.gguf").unwrap(),
        tch::Device::Cpu,
    )
    .unwrap();
    let mut nc = 0;
    for (k, v) in t.model.named_parameters() {
        if !v.is_contiguous() {
            nc += 1;
            if nc < 5 {
                println!("non-contiguous {k} {:?} {:?}", v.size(), v.stride());
            }
        }
    }
    println!("{nc} non-contiguous, kind {:?}", t.model.named_parameters()[1].1.kind());
    let ids = tch::Tensor::randint(49152, [8, 128], (tch::Kind::Int64, tch::Device::Cpu));
    for _ in 0..3 {
        let t0 = Instant::now();
        let h = tch::no_grad(|| t.model.forward_hidden(&ids, None, false).unwrap());
        let _ = h.sum(tch::Kind::Float).double_value(&[]);
        println!("trunk {:.0} ms", t0.elapsed().as_secs_f64() * 1e3);
    }
}
