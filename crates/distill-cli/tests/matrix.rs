//! The bad-input matrix: one row per kind of damaged or wrong input, each run through the real
//! binary, asserting the exact error line (the scratch directory written as `$D`), exit code 1,
//! and that the output path holds nothing afterwards. Other files test more cases of the same
//! kinds (cli.rs: CSV, IDX, recipes, divergence; lm.rs: GGUF, configs, tokenizers, prompts).

#![allow(clippy::too_many_lines)] // tests read as scripts; the 120-line limit is for library and binary code

use std::path::Path;

mod common;
use common::{distill, hf_teacher};

/// A GGUF v3 file with one F32 tensor `t` of `dims`, GGML type `ty`, data offset `offset`,
/// and `data` after the aligned header.
fn gguf(dims: &[u64], ty: u32, offset: u64, data: &[u8]) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(1u64.to_le_bytes()); // tensors
    b.extend(1u64.to_le_bytes()); // metadata
    let key = b"general.architecture";
    b.extend((key.len() as u64).to_le_bytes());
    b.extend(key);
    b.extend(8u32.to_le_bytes()); // string
    b.extend(5u64.to_le_bytes());
    b.extend(b"llama");
    b.extend(1u64.to_le_bytes());
    b.push(b't');
    b.extend((dims.len() as u32).to_le_bytes());
    for d in dims {
        b.extend(d.to_le_bytes());
    }
    b.extend(ty.to_le_bytes());
    b.extend(offset.to_le_bytes());
    while b.len() % 32 != 0 {
        b.push(0);
    }
    b.extend(data);
    b
}

#[test]
fn every_bad_input_is_one_exact_line_exit_1_and_no_output() {
    let d = common::tmpdir("bad-inputs");
    let ds = d.to_str().unwrap().to_string();
    let write = |name: &str, bytes: &[u8]| {
        let p = d.join(name);
        std::fs::write(&p, bytes).unwrap();
        p.to_str().unwrap().to_string()
    };
    let teacher = hf_teacher(&d.join("teacher"));
    let ts = teacher.to_str().unwrap().to_string();
    let out = d.join("out");
    let outs = out.to_str().unwrap().to_string();

    // A safetensors file whose header gives a tensor more bytes than the file holds.
    let lying = d.join("lying");
    hf_teacher(&lying);
    let st = std::fs::read(lying.join("model.safetensors")).unwrap();
    let n = u64::from_le_bytes(st[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8(st[8..8 + n].to_vec()).unwrap();
    let (start, end) = header
        .split_once("\"data_offsets\":[")
        .map(|(_, r)| r.split_once(']').unwrap().0.split_once(',').unwrap())
        .unwrap();
    let (start, end): (u64, u64) = (start.parse().unwrap(), end.parse().unwrap());
    let liar = header.replacen(
        &format!("\"data_offsets\":[{start},{end}]"),
        &format!("\"data_offsets\":[{start},{}]", end + (1 << 40)),
        1,
    );
    assert_ne!(liar, header);
    let mut bytes = (liar.len() as u64).to_le_bytes().to_vec();
    bytes.extend(liar.as_bytes());
    bytes.extend(&st[8 + n..]);
    std::fs::write(lying.join("model.safetensors"), bytes).unwrap();

    let gen =
        |model: &str| vec!["generate".to_string(), "--model".into(), model.to_string(), "--prompt".into(), "w1".into()];
    let convert = |model: &str| vec!["convert".to_string(), model.to_string(), "--out".into(), outs.clone()];
    let text_run = |text: &str| {
        let recipe = format!(
            "task = \"causal-lm\"\nname = \"m\"\n[teacher]\npath = \"{ts}\"\n[student]\nlayers = 1\nhidden = 16\nheads = 2\nkv_heads = 1\nintermediate = 32\n[data]\nsources = [{{ path = \"{text}\" }}]\npack = {{ seq_len = 16 }}\n[train]\nsteps = 2\nbatch_size = 2\nlr = 1e-3\n[distill]\ntemperature = 2.0\nalpha = 1.0\n"
        );
        let r = d.join(format!("{}.toml", Path::new(text).file_stem().unwrap().to_string_lossy()));
        std::fs::write(&r, recipe).unwrap();
        vec!["run".to_string(), r.to_str().unwrap().into(), "--out".into(), outs.clone()]
    };

    // Image sets: 2×2 pixels, training labels 0–1, a test set with label 2.
    let train_csv = write("train.csv", b"0,1,2,3,4\n1,4,3,2,1\n0,1,1,1,1\n1,9,9,9,9\n");
    let test_csv = write("test.csv", b"0,1,2,3,4\n2,4,3,2,1\n");
    let image_run = |test: &str| {
        let mut v: Vec<String> =
            ["run", "recipes/fashion-hinton.toml", "--out", outs.as_str()].iter().map(|s| s.to_string()).collect();
        for set in ["data.format=csv".to_string(), format!("data.train={train_csv}"), format!("data.test={test}")] {
            v.extend(["--set".to_string(), set]);
        }
        v
    };
    // A teacher cache captured at seq_len 16, read by a run packing 8-token rows.
    let corpus: String = (0..200)
        .map(|i| (0..16).map(|j| format!("w{}", (i * 7 + j * 13) % 90)).collect::<Vec<_>>().join(" ") + ".\n\n")
        .collect();
    let corpus_path = write("corpus.txt", corpus.as_bytes());
    let cache_recipe = text_run(&corpus_path);
    let cache = d.join("cache");
    let o = distill(&["cache", "--recipe", &cache_recipe[1], "--top-k", "8", "--out", cache.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut other_seq = cache_recipe.clone();
    for set in [format!("teacher.cache={}", cache.display()), "data.pack.seq_len=8".to_string()] {
        other_seq.extend(["--set".to_string(), set]);
    }

    let rows: Vec<(&str, Vec<String>, String)> = vec![
        (
            "CSV: a test label the training set lacks",
            image_run(&test_csv),
            "error: test set has label 2 but the training set's labels stop at 1".into(),
        ),
        (
            "cache: made for another seq_len",
            other_seq,
            "error: cache $D/cache does not match this run: data_fingerprint differs (cache: ".into(),
        ),
        (
            "GGUF: bad magic",
            gen(&write("magic.gguf", b"GGUX\x03\x00\x00\x00")),
            "error: $D/magic.gguf: neither a GGUF file nor a Hugging Face directory".into(),
        ),
        (
            "GGUF: short tensor data",
            gen(&write("short.gguf", &gguf(&[8], 0, 0, &[0u8; 16]))),
            "error: $D/short.gguf: tensor `t` data [128, 160) lies past the end of the file (144 bytes)".into(),
        ),
        (
            "GGUF: unknown type id",
            gen(&write("type.gguf", &gguf(&[8], 99, 0, &[0u8; 32]))),
            "error: $D/type.gguf: tensor `t` has unknown ggml type id 99".into(),
        ),
        (
            "GGUF: misaligned offset",
            gen(&write("align.gguf", &gguf(&[4], 0, 8, &[0u8; 64]))),
            "error: $D/align.gguf: tensor `t` data offset 8 is not a multiple of the alignment 32".into(),
        ),
        (
            "safetensors: header lies about a tensor's size",
            gen(lying.to_str().unwrap()),
            "error: $D/lying/model.safetensors: invalid safetensors: invalid shape, data type, or offset for tensor"
                .into(),
        ),
        (
            "text: not UTF-8",
            text_run(&write("latin1.txt", b"caf\xe9 au lait\n\nmore w1 w2 text here\n")),
            "error: $D/latin1.txt: invalid UTF-8 at byte offset 3".into(),
        ),
        (
            "text: empty",
            text_run(&write("empty.txt", b"")),
            "error: no documents left after cleaning: 0 read, 0 empty, 0 shorter than 50 chars".into(),
        ),
        (
            "output: not a directory",
            convert(&ts)
                .into_iter()
                .map(|a| if a == outs { format!("{ds}/teacher/config.json/out") } else { a })
                .collect(),
            "error: $D/teacher/config.json/".into(),
        ),
    ];
    let mut failures = Vec::new();
    for (name, args, want) in rows {
        let o = distill(&args);
        let err = String::from_utf8_lossy(&o.stderr).replace(&ds, "$D");
        let last = err.lines().last().unwrap_or("").to_string();
        // Progress lines ("loading teacher …") may come first; the error is the last line.
        let seq = name.starts_with("cache") && !last.ends_with("seq_len differs (cache: 16, run: 8)");
        if seq
            || o.status.code() != Some(1)
            || !last.starts_with(&want)
            || !err.lines().rev().skip(1).all(|l| !l.starts_with("error"))
        {
            failures.push(format!("{name}: exit {:?}, stderr {err:?}, want a line starting {want:?}", o.status.code()));
        }
        if out.exists() {
            failures.push(format!("{name}: {} was left behind", out.display()));
            let _ = std::fs::remove_dir_all(&out);
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}
