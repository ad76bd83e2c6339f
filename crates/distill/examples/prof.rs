use distill::bench::*;
use distill::eval::lm_batch;
use distill::losses::response::KdLoss;
use distill::models::llama::ForwardOptions;
use std::time::Instant;
use tch::Kind;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let cfgname = args.get(1).cloned().unwrap_or("a".into());
    tch::set_num_threads(args.get(2).map(|s| s.parse().unwrap()).unwrap_or(2));
    let spec = load_spec(std::path::Path::new("bench/configs.json"), &cfgname).unwrap();
    let scfg = config_from_json(&spec.student, "s").unwrap();
    let teacher = match &spec.teacher_path {
        Some(p) => distill::lm::load_lm(&distill::fetch::resolve(p).unwrap(), tch::Device::Cpu).unwrap().model,
        None => random_model(&config_from_json(spec.teacher.as_ref().unwrap(), "t").unwrap(), 1).unwrap().1,
    };
    let (_vs, student) = random_model(&scfg, 0).unwrap();
    let blocks = random_blocks(spec.batch, spec.seq, scfg.vocab_size, 0);
    let rows: Vec<usize> = (0..spec.batch).collect();
    let kd = KdLoss { temperature: spec.temperature, alpha: spec.alpha };
    for it in 0..4 {
        let t0 = Instant::now();
        let b = lm_batch(&blocks, &rows, tch::Device::Cpu);
        let idx = b.targets.ge(0).view([-1]).nonzero().squeeze_dim(1);
        let y = b.targets.view([-1]).index_select(0, &idx);
        let t1 = Instant::now();
        let tl = tch::no_grad(|| teacher.forward(&b.ids, None, ForwardOptions::default()).unwrap().logits);
        let _ = tl.get(0).get(0).get(0).double_value(&[]);
        let t2 = Instant::now();
        let h = student.forward_hidden(&b.ids, None, true).unwrap();
        let _ = h.get(0).get(0).get(0).double_value(&[]);
        let t3 = Instant::now();
        let logits = h.linear(&student.lm_head_weight(), None::<tch::Tensor>);
        let v = logits.size()[2];
        let s = logits.view([-1, v]).index_select(0, &idx);
        let t = tl.view([-1, v]).index_select(0, &idx);
        let _ = s.get(0).get(0).double_value(&[]);
        let t4 = Instant::now();
        let p = kd.forward(&s, &t, Some(&y));
        let _ = p.total.double_value(&[]);
        let t5 = Instant::now();
        p.total.backward();
        let t6 = Instant::now();
        let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
        println!("it {it}: batch {:.0} teacher {:.0} student-trunk {:.0} head+select {:.0} loss {:.0} backward {:.0} total {:.0}",
            ms(t0,t1), ms(t1,t2), ms(t2,t3), ms(t3,t4), ms(t4,t5), ms(t5,t6), ms(t0,t6));
        let _ = Kind::Float;
    }
}
