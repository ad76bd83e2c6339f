//! Times dequantizing every tensor of a GGUF file, and the HF view of a Llama-family one.
//!
//! `cargo run --release -p distill-gguf --example dequant_bench -- path/to/model.gguf`

use std::time::Instant;

use distill_gguf::{hf_tensors, GgufFile, LlamaGgufParams};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args().nth(1).ok_or("usage: dequant_bench FILE.gguf")?;
    let t0 = Instant::now();
    let file = GgufFile::open(&path)?;
    println!("open + parse: {:.2?} ({} tensors)", t0.elapsed(), file.tensors().len());

    for round in 0..3 {
        let t = Instant::now();
        let mut n = 0usize;
        for info in file.tensors() {
            n += file.info_f32(info)?.len();
        }
        let s = t.elapsed().as_secs_f64();
        println!("round {round}: dequantized {n} values in {s:.3} s ({:.0} M values/s)", n as f64 / s / 1e6);
    }

    if let Ok(params) = LlamaGgufParams::from_gguf(&file) {
        let t = Instant::now();
        let mut n = 0usize;
        for tensor in hf_tensors(&file, &params) {
            n += tensor?.data.len();
        }
        println!("hf_tensors (dequantize + un-permute): {n} values in {:.3} s", t.elapsed().as_secs_f64());
    }
    Ok(())
}
