//! Writing: round trips through our reader, Q8_0 bytes equal to gguf-py's quantizer, atomic
//! replacement, and gguf-py's GGUFReader reading our output with the same values.

mod common;

use std::process::Command;

use distill_gguf::{
    dequantize_to_vec, quantize_q4_0, quantize_q8_0, GgmlType, GgufError, GgufFile, GgufWriter, MetadataArray,
    MetadataValue,
};

fn sample(n: usize, seed: u32) -> Vec<f32> {
    // Deterministic values in about [-2, 2], with some exact zeros.
    (0..n)
        .map(|i| {
            let x = ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8) as f32;
            if i % 17 == 0 {
                0.0
            } else {
                x / (1u32 << 23) as f32 - 1.0 + (i % 5) as f32 * 0.25
            }
        })
        .collect()
}

fn all_metadata() -> Vec<(&'static str, MetadataValue)> {
    vec![
        ("general.architecture", MetadataValue::from("llama")),
        ("t.u8", MetadataValue::U8(255)),
        ("t.i8", MetadataValue::I8(-128)),
        ("t.u16", MetadataValue::U16(65535)),
        ("t.i16", MetadataValue::I16(-32768)),
        ("t.u32", MetadataValue::U32(u32::MAX)),
        ("t.i32", MetadataValue::I32(i32::MIN)),
        ("t.f32", MetadataValue::F32(-0.375)),
        ("t.bool", MetadataValue::Bool(false)),
        ("t.string", MetadataValue::from("ünïcödé 🦀")),
        ("t.u64", MetadataValue::U64(u64::MAX)),
        ("t.i64", MetadataValue::I64(i64::MIN)),
        ("t.f64", MetadataValue::F64(1e300)),
        ("t.str_array", MetadataValue::Array(MetadataArray::String(vec!["x".into(), "".into(), "ÿ".into()]))),
        ("t.f32_array", MetadataValue::Array(MetadataArray::F32(vec![1.0, -2.5]))),
        ("t.bool_array", MetadataValue::Array(MetadataArray::Bool(vec![true, false]))),
        (
            "t.nested",
            MetadataValue::Array(MetadataArray::Array(vec![MetadataArray::U8(vec![1, 2]), MetadataArray::U8(vec![])])),
        ),
    ]
}

#[test]
fn round_trip_metadata_and_tensors() {
    let dir = common::tmpdir("roundtrip");
    for alignment in [32u64, 64] {
        let path = dir.join(format!("rt{alignment}.gguf"));
        let mut w = GgufWriter::new(&path);
        w.set_alignment(alignment).unwrap();
        for (k, v) in all_metadata() {
            w.add_metadata(k, v).unwrap();
        }
        let a = sample(3 * 5, 1);
        let b = sample(4 * 64, 2);
        let c = sample(2 * 3 * 32, 3);
        w.add_tensor_f32("a.f32", &[3, 5], &a, GgmlType::F32).unwrap();
        w.add_tensor_f32("b.f16", &[4, 64], &b, GgmlType::F16).unwrap();
        w.add_tensor_f32("c.q8_0", &[2, 3, 32], &c, GgmlType::Q8_0).unwrap();
        w.add_tensor_f32("d.scalarish", &[1], &[42.0], GgmlType::F32).unwrap();
        w.write().unwrap();

        let f = GgufFile::open(&path).unwrap();
        assert_eq!(f.version(), 3);
        assert_eq!(f.alignment(), alignment);
        let got: Vec<(String, MetadataValue)> =
            f.metadata().filter(|(k, _)| *k != "general.alignment").map(|(k, v)| (k.to_owned(), v.clone())).collect();
        let want: Vec<(String, MetadataValue)> = all_metadata().into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        assert_eq!(got, want);
        for t in f.tensors() {
            assert_eq!((f.data_offset() + t.offset) % alignment, 0);
        }

        let (ra, sa) = f.tensor_f32("a.f32").unwrap();
        assert_eq!(sa, [3, 5]);
        common::assert_bitwise("f32", &ra, &a);

        let (rb, sb) = f.tensor_f32("b.f16").unwrap();
        assert_eq!(sb, [4, 64]);
        for (x, y) in rb.iter().zip(&b) {
            // f16 has 11 significant bits: relative error at most 2^-11.
            assert!((x - y).abs() <= y.abs() * 4.9e-4 + 6e-8, "{x} vs {y}");
        }
        assert_eq!(rb[0], 0.0);

        let (rc, sc) = f.tensor_f32("c.q8_0").unwrap();
        assert_eq!(sc, [2, 3, 32]);
        assert_eq!(f.tensor_info("c.q8_0").unwrap().dims, [32, 3, 2]);
        let q = quantize_q8_0(&c).unwrap();
        assert_eq!(f.tensor_bytes("c.q8_0").unwrap(), &q[..]);
        common::assert_bitwise("q8_0", &rc, &dequantize_to_vec(GgmlType::Q8_0, &q, c.len()).unwrap());
        for (blk_got, blk_src) in rc.chunks(32).zip(c.chunks(32)) {
            let amax = blk_src.iter().fold(0f32, |m, x| m.max(x.abs()));
            for (x, y) in blk_got.iter().zip(blk_src) {
                assert!((x - y).abs() <= amax / 127.0 * 0.51 + 1e-3 * amax, "{x} vs {y}");
            }
        }
        assert_eq!(f.tensor_f32("d.scalarish").unwrap(), (vec![42.0], vec![1]));
    }
}

#[test]
fn q8_0_quantization_matches_gguf_py_bitwise() {
    let input = common::read_f32(&common::fixtures().join("q8_0_input.f32"));
    let want = std::fs::read(common::fixtures().join("q8_0_expected.bin")).unwrap();
    assert_eq!(input.len(), 8 * 64);
    let got = quantize_q8_0(&input).unwrap();
    assert_eq!(got.len(), want.len());
    if let Some(i) = (0..got.len()).find(|&i| got[i] != want[i]) {
        panic!("byte {i} (block {}) differs: {} vs {}", i / 34, got[i], want[i]);
    }
    // Row 2 is -127..127 in 32 steps: d = 1, so q = round(x) exactly.
    let blk = &got[4 * 34..4 * 34 + 34];
    assert_eq!(u16::from_le_bytes([blk[0], blk[1]]), 0x3c00); // f16 1.0
    assert_eq!(blk[2] as i8, -127);
    assert_eq!(blk[33] as i8, 127);
    // Row 1's first block is all zeros: d = 0, q = 0.
    assert!(got[2 * 34..3 * 34].iter().all(|&b| b == 0));
    assert!(quantize_q8_0(&[0.0; 31]).is_err());
}

#[test]
fn q4_0_quantization_matches_gguf_py_bitwise() {
    let input = common::read_f32(&common::fixtures().join("q8_0_input.f32"));
    let want = std::fs::read(common::fixtures().join("q4_0_expected.bin")).unwrap();
    let got = quantize_q4_0(&input).unwrap();
    assert_eq!(got.len(), input.len() / 32 * 18);
    if let Some(i) = (0..got.len()).find(|&i| got[i] != want[i]) {
        panic!("byte {i} (block {}) differs: {} vs {}", i / 18, got[i], want[i]);
    }
    // Row 2 runs -127..127: the largest magnitude is the first, -127, so d = 127/8 and it is q = 0.
    let blk = &got[4 * 18..5 * 18];
    assert_eq!(half::f16::from_bits(u16::from_le_bytes([blk[0], blk[1]])).to_f32(), 15.875);
    assert_eq!(blk[2] & 0xf, 0);
    // The dequantizer reads back what the quantizer wrote: |x - x̂| <= d/2 + f16 error, and 15
    // as the largest code (x = +max maps to 16, clipped).
    let back = dequantize_to_vec(GgmlType::Q4_0, &got, input.len()).unwrap();
    assert_eq!(back[4 * 32], -127.0);
    assert_eq!(back[4 * 32 + 31], 7.0 * 15.875);
    assert!(quantize_q4_0(&[0.0; 33]).is_err());
}

#[test]
fn write_replaces_atomically_and_leaves_no_temp_file() {
    let dir = common::tmpdir("atomic");
    let path = dir.join("model.gguf");
    std::fs::write(&path, b"old contents").unwrap();
    let mut w = GgufWriter::new(&path);
    w.add_metadata("general.name", "new").unwrap();
    w.add_tensor_f32("x", &[32], &[1.0; 32], GgmlType::Q8_0).unwrap();
    let expected = w.to_bytes();
    w.write().unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), expected);
    let names: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["model.gguf"]);
    assert_eq!(GgufFile::open(&path).unwrap().get_str("general.name").unwrap(), "new");

    // A destination directory that does not exist: an Io error naming the file.
    let bad = dir.join("no/such/dir/model.gguf");
    let e = GgufWriter::new(&bad).write().unwrap_err();
    assert!(matches!(e, GgufError::Io { .. }));
    assert!(e.to_string().contains("no/such/dir/model.gguf"), "{e}");
}

#[test]
fn invalid_writes_are_errors() {
    let mut w = GgufWriter::new("x.gguf");
    let e = w.add_tensor_f32("a", &[2, 3], &[0.0; 5], GgmlType::F32).unwrap_err();
    assert!(matches!(e, GgufError::InvalidWrite { .. }) && e.to_string().contains("x.gguf"));
    assert!(w.add_tensor_f32("a", &[2, 33], &[0.0; 66], GgmlType::Q8_0).is_err());
    assert!(w.add_tensor_f32("a", &[32], &[0.0; 32], GgmlType::Q4_K).is_err());
    assert!(w.add_tensor_raw("a", &[256], GgmlType::Q4_K, vec![0; 143]).is_err());
    assert!(w.add_tensor_raw("a", &[1, 1, 1, 1, 1], GgmlType::F32, vec![0; 4]).is_err());
    w.add_tensor_f32("a", &[32], &[0.0; 32], GgmlType::F16).unwrap();
    assert!(matches!(w.add_tensor_f32("a", &[32], &[0.0; 32], GgmlType::F32), Err(GgufError::DuplicateTensor { .. })));
    w.add_metadata("k", 1u32).unwrap();
    assert!(matches!(w.add_metadata("k", 2u32), Err(GgufError::DuplicateKey { .. })));
    assert!(w.add_metadata("general.alignment", 64u32).is_err());
    assert!(w.set_alignment(48).is_err());
}

/// gguf-py (the reference reader) reads what we write: metadata, tensor shapes, types and
/// dequantized values.
#[test]
fn python_gguf_reader_reads_our_file() {
    let python = common::python();
    assert!(
        python.exists(),
        "{} not found: run scripts/setup.sh (or set DISTILL_PYTHON to a python with `gguf`)",
        python.display()
    );
    let dir = common::tmpdir("pyread");
    let path = dir.join("ours.gguf");
    let a = sample(2 * 8, 7);
    let b = sample(3 * 32, 8);
    let c = sample(4 * 64, 9);
    let mut w = GgufWriter::new(&path);
    for (k, v) in all_metadata() {
        w.add_metadata(k, v).unwrap();
    }
    w.add_tensor_f32("a", &[2, 8], &a, GgmlType::F32).unwrap();
    w.add_tensor_f32("b", &[3, 32], &b, GgmlType::F16).unwrap();
    w.add_tensor_f32("c", &[4, 64], &c, GgmlType::Q8_0).unwrap();
    w.write().unwrap();

    let script = r#"
import sys, json, numpy as np, gguf
from gguf.quants import dequantize
r = gguf.GGUFReader(sys.argv[1])
out = {"fields": {}, "tensors": {}}
for k, f in r.fields.items():
    if k.startswith("GGUF."):
        continue
    v = f.contents()
    out["fields"][k] = v if not isinstance(v, float) else repr(v)
    out["fields"][k + ":types"] = [int(t) for t in f.types]
for t in r.tensors:
    vals = dequantize(t.data, t.tensor_type).reshape(-1).astype("<f4")
    out["tensors"][t.name] = {"type": t.tensor_type.name, "shape": [int(x) for x in t.shape],
                              "bits": [int(x) for x in vals.view("<u4")]}
print(json.dumps(out))
"#;
    let output = Command::new(&python)
        .arg("-c")
        .arg(script)
        .arg(&path)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", python.display()));
    assert!(output.status.success(), "gguf-py failed on our file:\n{}", String::from_utf8_lossy(&output.stderr));
    let v: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let fields = &v["fields"];
    assert_eq!(fields["general.architecture"], "llama");
    assert_eq!(fields["t.u8"], 255);
    assert_eq!(fields["t.u16"], 65535);
    assert_eq!(fields["t.i16"], -32768);
    assert_eq!(fields["t.i8"], -128);
    assert_eq!(fields["t.u32"], u32::MAX);
    assert_eq!(fields["t.i32"], i32::MIN);
    assert_eq!(fields["t.u64"], u64::MAX);
    assert_eq!(fields["t.i64"], i64::MIN);
    assert_eq!(fields["t.f32"], "-0.375");
    assert_eq!(fields["t.f64"], "1e+300");
    assert_eq!(fields["t.bool"], false);
    assert_eq!(fields["t.string"], "ünïcödé 🦀");
    assert_eq!(fields["t.str_array"], serde_json::json!(["x", "", "ÿ"]));
    assert_eq!(fields["t.f32_array"], serde_json::json!([1.0, -2.5]));
    assert_eq!(fields["t.bool_array"], serde_json::json!([true, false]));
    // gguf-py flattens nested arrays in `contents()`; its type list shows the nesting.
    assert_eq!(fields["t.nested"], serde_json::json!([1, 2]));
    assert_eq!(fields["t.nested:types"], serde_json::json!([9, 9, 0]));
    assert_eq!(fields["t.u16:types"], serde_json::json!([2]));
    assert_eq!(fields["t.str_array:types"], serde_json::json!([9, 8]));

    let f = GgufFile::open(&path).unwrap();
    for (name, ty, gguf_shape) in [("a", "F32", [8, 2]), ("b", "F16", [32, 3]), ("c", "Q8_0", [64, 4])] {
        let t = &v["tensors"][name];
        assert_eq!(t["type"], ty);
        assert_eq!(t["shape"], serde_json::json!(gguf_shape));
        let bits: Vec<u32> = t["bits"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
        let ours: Vec<u32> = f.tensor_f32(name).unwrap().0.iter().map(|x| x.to_bits()).collect();
        assert_eq!(ours, bits, "tensor {name}");
    }
}
