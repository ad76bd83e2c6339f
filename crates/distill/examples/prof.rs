use distill::bench::*;
use distill::eval::lm_batch;
use distill::losses::chunked::{ChunkTeacher, ChunkedKd};
use distill::losses::divergence::Divergence;
use std::time::Instant;

fn main() {
    unsafe {
        libc_mallopt();
    }
    let args: Vec<String> = std::env::args().collect();
    let cfgname = args.get(1).cloned().unwrap_or("a".into());
    tch::set_num_threads(args.get(2).map(|s| s.parse().unwrap()).unwrap_or(2));
    let chunk: i64 = args.get(3).map(|s| s.parse().unwrap()).unwrap_or(256);
    let spec = load_spec(std::path::Path::new("bench/configs.json"), &cfgname).unwrap();
    let scfg = config_from_json(&spec.student, "s").unwrap();
    let teacher = match &spec.teacher_path {
        Some(p) => distill::lm::load_lm(&distill::fetch::resolve(p).unwrap(), tch::Device::Cpu).unwrap().model,
        None => random_model(&config_from_json(spec.teacher.as_ref().unwrap(), "t").unwrap(), 1).unwrap().1,
    };
    let (_vs, student) = random_model(&scfg, 0).unwrap();
    let blocks = random_blocks(spec.batch, spec.seq, scfg.vocab_size, 0);
    let rows: Vec<usize> = (0..spec.batch).collect();
    let loss = ChunkedKd {
        divergence: Divergence::ForwardKl,
        temperature: spec.temperature,
        alpha: spec.alpha,
        chunk_rows: chunk,
    };
    for it in 0..4 {
        let t0 = Instant::now();
        let b = lm_batch(&blocks, &rows, tch::Device::Cpu);
        let idx = b.targets.ge(0).view([-1]).nonzero().squeeze_dim(1);
        let y = b.targets.view([-1]).index_select(0, &idx);
        let t1 = Instant::now();
        let th = tch::no_grad(|| teacher.forward_hidden(&b.ids, None, false).unwrap());
        let th = th.view([-1, th.size()[2]]).index_select(0, &idx);
        let tw = teacher.lm_head_weight().detach();
        let _ = th.get(0).get(0).double_value(&[]);
        let t2 = Instant::now();
        let h = student.forward_hidden(&b.ids, None, true).unwrap();
        let h = h.view([-1, h.size()[2]]).index_select(0, &idx);
        let _ = h.get(0).get(0).double_value(&[]);
        let t3 = Instant::now();
        let w = student.lm_head_weight();
        let p = loss.forward(&h, &w, Some(ChunkTeacher::DenseHidden { hidden: &th, weight: &tw }), Some(&y));
        let _ = p.total.double_value(&[]);
        let t4 = Instant::now();
        p.total.backward();
        let t5 = Instant::now();
        let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
        println!(
            "it {it}: teacher {:.0} student-trunk {:.0} chunked-loss(fwd+bwd) {:.0} outer-backward {:.0} total {:.0}",
            ms(t1, t2),
            ms(t2, t3),
            ms(t3, t4),
            ms(t4, t5),
            ms(t0, t5)
        );
    }
}

extern "C" {
    fn mallopt(param: i32, value: i32) -> i32;
}
unsafe fn libc_mallopt() {
    unsafe {
        mallopt(-4, 0);
        mallopt(-1, i32::MAX);
    }
}
