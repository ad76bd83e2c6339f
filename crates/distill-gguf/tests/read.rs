//! Reading: metadata of every value type, tensor infos, bitwise dequantization against gguf-py
//! (fixtures from tests/fixtures/gguf/make_fixtures.py), and corrupt input that must be an
//! error, never a panic.

mod common;

use distill_gguf::{GgmlType, GgufError, GgufFile, GgufWriter, MetadataArray, MetadataValue, MetadataValueType};

fn fixture() -> GgufFile {
    GgufFile::open(common::fixtures().join("quants.gguf")).unwrap()
}

fn fixture_bytes() -> Vec<u8> {
    std::fs::read(common::fixtures().join("quants.gguf")).unwrap()
}

#[test]
fn fixture_metadata_has_every_value_type() {
    let f = fixture();
    assert_eq!(f.version(), 3);
    assert_eq!(f.alignment(), 32);
    assert_eq!(f.get_str("general.architecture").unwrap(), "fixture");
    assert_eq!(f.get("fixture.u8"), Some(&MetadataValue::U8(200)));
    assert_eq!(f.get("fixture.i8"), Some(&MetadataValue::I8(-100)));
    assert_eq!(f.get("fixture.u16"), Some(&MetadataValue::U16(60000)));
    assert_eq!(f.get("fixture.i16"), Some(&MetadataValue::I16(-30000)));
    assert_eq!(f.get_u32("fixture.u32").unwrap(), 4_000_000_000);
    assert_eq!(f.get("fixture.i32"), Some(&MetadataValue::I32(-2_000_000_000)));
    assert_eq!(f.get_f32("fixture.f32").unwrap(), 0.1f32);
    assert_eq!(f.get_u64("fixture.u64").unwrap(), (1u64 << 63) + 5);
    assert_eq!(f.get("fixture.i64"), Some(&MetadataValue::I64(-(1i64 << 62))));
    assert_eq!(f.get("fixture.f64"), Some(&MetadataValue::F64(std::f64::consts::E)));
    assert!(f.get_bool("fixture.bool").unwrap());
    assert_eq!(f.get_str("fixture.string").unwrap(), "héllo ✓ 🦀");
    assert_eq!(f.get_str_array("fixture.str_array").unwrap(), ["a", "", "ü"]);
    assert_eq!(f.get_i64_array("fixture.i32_array").unwrap(), [1, -2, 3]);
    assert_eq!(f.get("fixture.f32_array").and_then(MetadataValue::as_f32_array), Some(&[0.5f32, -1.25][..]));
    let nested = f.get("fixture.nested").and_then(MetadataValue::as_array).unwrap();
    assert_eq!(nested.element_type(), MetadataValueType::Array);
    assert_eq!(
        nested,
        &MetadataArray::Array(vec![
            MetadataArray::I32(vec![1, 2]),
            MetadataArray::I32(vec![3]),
            MetadataArray::I32(vec![4, 5, 6]),
        ])
    );
    // Integer accessors widen or narrow when the value fits, refuse when it does not.
    assert_eq!(f.get_u64("fixture.u8").unwrap(), 200);
    assert!(f.get_u32("fixture.i8").is_err());
    assert!(f.get_u32("fixture.u64").is_err());
}

#[test]
fn metadata_errors_name_the_file_and_key() {
    let f = fixture();
    let e = f.get_u32("fixture.string").unwrap_err();
    assert!(matches!(e, GgufError::WrongType { .. }));
    let msg = e.to_string();
    assert!(msg.contains("quants.gguf") && msg.contains("fixture.string") && msg.contains("string"));
    let e = f.get_str("no.such.key").unwrap_err();
    assert!(e.to_string().contains("quants.gguf") && e.to_string().contains("no.such.key"));
    let e = f.tensor_f32("nope").unwrap_err();
    assert!(matches!(e, GgufError::MissingTensor { .. }));
}

#[test]
fn fixture_tensor_infos_and_shapes() {
    let f = fixture();
    let names: Vec<&str> = f.tensors().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q4_k", "q5_k", "q6_k", "q8_0_3d", "f32_1d"]);
    let t = f.tensor_info("q8_0_3d").unwrap();
    assert_eq!(t.dims, [32, 3, 2]);
    assert_eq!(t.shape(), [2, 3, 32]);
    assert_eq!(t.ty, GgmlType::Q8_0);
    assert_eq!(t.n_bytes, 6 * 34);
    let t = f.tensor_info("q6_k").unwrap();
    assert_eq!((t.shape(), t.n_bytes), (vec![3, 512], 6 * 210));
    assert_eq!(f.tensor_info("f32_1d").unwrap().shape(), [7]);
    // Offsets as gguf-py's GGUFReader reports them (absolute data_offset).
    assert_eq!(f.data_offset() + f.tensor_info("f32").unwrap().offset, 1184);
    assert_eq!(f.data_offset() + f.tensor_info("q8_0_3d").unwrap().offset, 7136);
    for t in f.tensors() {
        assert_eq!(t.offset % 32, 0, "{}", t.name);
    }
    assert_eq!(f.tensor_bytes("q4_k").unwrap().len(), 6 * 144);
}

#[test]
fn dequantize_matches_gguf_py_bitwise() {
    let f = fixture();
    let mut checked = Vec::new();
    for t in f.tensors() {
        let (got, shape) = f.tensor_f32(&t.name).unwrap();
        assert_eq!(shape, t.shape());
        let want = common::read_f32(&common::fixtures().join(format!("quants_expected/{}.f32", t.name)));
        common::assert_bitwise(&t.name, &got, &want);
        checked.push(t.ty);
    }
    for ty in [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
    ] {
        assert!(checked.contains(&ty), "{ty} not covered");
    }
    // Spot values: F32 special values survive, f16 subnormal widened exactly.
    let (f32s, _) = f.tensor_f32("f32").unwrap();
    assert_eq!(f32s[2], f32::INFINITY);
    assert_eq!(f32s[1].to_bits(), (-0.0f32).to_bits());
    let (f16s, _) = f.tensor_f32("f16").unwrap();
    assert_eq!(f16s[3], 2f32.powi(-24)); // smallest f16 subnormal
}

#[test]
fn large_tensor_parallel_path_matches_serial_blocks() {
    // > 65536 elements takes the rayon path; each block must equal its one-block decode.
    let blocks: Vec<u8> = (0..2000u32)
        .flat_map(|b| {
            let mut blk = vec![0u8; 144];
            blk[0..2].copy_from_slice(&0x1c00u16.to_le_bytes()); // d = 2^-8
            blk[2..4].copy_from_slice(&0x2000u16.to_le_bytes()); // dmin = 2^-7
            for (i, x) in blk[4..].iter_mut().enumerate() {
                *x = (b as usize * 31 + i * 7) as u8;
            }
            blk
        })
        .collect();
    let all = distill_gguf::dequantize_to_vec(GgmlType::Q4_K, &blocks, 2000 * 256).unwrap();
    for (i, blk) in blocks.chunks(144).enumerate().step_by(97) {
        let one = distill_gguf::dequantize_to_vec(GgmlType::Q4_K, blk, 256).unwrap();
        common::assert_bitwise("block", &all[i * 256..(i + 1) * 256], &one);
    }
    // Length mismatches are errors.
    assert!(distill_gguf::dequantize_to_vec(GgmlType::Q4_K, &blocks[..143], 256).is_err());
    assert!(distill_gguf::dequantize_to_vec(GgmlType::Q8_0, &[0u8; 34], 33).is_err());
    // A header-sized element count is checked against the bytes before anything is allocated
    // (2^60 floats would abort the process).
    assert!(matches!(
        distill_gguf::dequantize_to_vec(GgmlType::F32, &[0u8; 4], 1 << 60),
        Err(distill_gguf::DequantError::LengthMismatch { .. })
    ));
    assert!(matches!(
        distill_gguf::dequantize_to_vec(GgmlType::Q5_0, &[0u8; 22], 32),
        Err(distill_gguf::DequantError::Unsupported(GgmlType::Q5_0))
    ));
}

#[test]
fn unsupported_type_is_a_clear_error() {
    let dir = common::tmpdir("unsupported");
    let path = dir.join("q5_0.gguf");
    let mut w = GgufWriter::new(&path);
    w.add_tensor_raw("t", &[2, 32], GgmlType::Q5_0, vec![0u8; 44]).unwrap();
    w.write().unwrap();
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.tensor_info("t").unwrap().ty, GgmlType::Q5_0);
    let e = f.tensor_f32("t").unwrap_err();
    assert!(matches!(e, GgufError::UnsupportedType { ty: GgmlType::Q5_0, .. }));
    assert!(e.to_string().contains("q5_0.gguf") && e.to_string().contains("Q5_0"));
}

#[test]
fn truncation_at_every_offset_is_an_error() {
    let bytes = fixture_bytes();
    // Past the end of the last tensor there is only alignment padding, which may be cut.
    let f = fixture();
    let end = f.tensors().iter().map(|t| f.data_offset() + t.offset + t.n_bytes).max().unwrap();
    assert_eq!(end, 7388);
    let mut kinds = std::collections::BTreeSet::new();
    for cut in 0..end as usize {
        let r = GgufFile::from_bytes(bytes[..cut].to_vec(), "cut.gguf");
        let e = r.err().unwrap_or_else(|| panic!("cut at {cut} parsed"));
        assert!(e.to_string().starts_with("cut.gguf"), "{e}");
        kinds.insert(match e {
            GgufError::Truncated { .. } => "truncated",
            GgufError::TensorOutOfBounds { .. } => "out of bounds",
            other => panic!("cut at {cut}: unexpected {other}"),
        });
    }
    assert_eq!(kinds.len(), 2);
    assert!(GgufFile::from_bytes(bytes[..end as usize].to_vec(), "end.gguf").is_ok());
    assert!(GgufFile::from_bytes(bytes, "whole.gguf").is_ok());
}

#[test]
fn truncated_file_on_disk_is_an_error() {
    let dir = common::tmpdir("trunc");
    let bytes = fixture_bytes();
    for cut in [0, 3, 4, 23, 100, 1000, 7387] {
        let p = dir.join(format!("cut{cut}.gguf"));
        std::fs::write(&p, &bytes[..cut]).unwrap();
        let e = GgufFile::open(&p).unwrap_err();
        assert!(e.to_string().contains(&format!("cut{cut}.gguf")), "{e}");
    }
    let e = GgufFile::open(dir.join("missing.gguf")).unwrap_err();
    assert!(matches!(e, GgufError::Io { action: "open", .. }));
}

#[test]
fn random_corruption_never_panics() {
    let bytes = fixture_bytes();
    let header_end = 1184; // corrupt the header / metadata / tensor-info region
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let (mut ok, mut err) = (0, 0);
    for _ in 0..3000 {
        let mut b = bytes.clone();
        for _ in 0..1 + next() % 4 {
            let i = (next() % header_end) as usize;
            b[i] = next() as u8;
        }
        match GgufFile::from_bytes(b, "fuzz.gguf") {
            Ok(f) => {
                // Whatever opens must also dequantize without panicking.
                for t in f.tensors() {
                    let _ = f.info_f32(t);
                }
                ok += 1;
            }
            Err(_) => err += 1,
        }
    }
    assert_eq!(ok + err, 3000);
    assert!(err > 500, "only {err} of 3000 corruptions detected");
}

#[test]
fn bad_magic_and_versions() {
    let bytes = fixture_bytes();
    let mut b = bytes.clone();
    b[0] = b'X';
    let e = GgufFile::from_bytes(b, "m.gguf").unwrap_err();
    assert!(matches!(e, GgufError::BadMagic { found, .. } if found == *b"XGUF"));
    assert!(e.to_string().contains("m.gguf"));
    for (v, ok) in [(1u32, false), (2, true), (3, true), (4, false), (0x0300_0000, false)] {
        let mut b = bytes.clone();
        b[4..8].copy_from_slice(&v.to_le_bytes());
        let r = GgufFile::from_bytes(b, "v.gguf");
        match (r, ok) {
            (Ok(f), true) => {
                assert_eq!(f.version(), v);
                assert_eq!(f.tensors().len(), 11);
            }
            (Err(GgufError::UnsupportedVersion { version, .. }), false) => assert_eq!(version, v),
            (r, _) => panic!("version {v}: {:?}", r.map(|f| f.version())),
        }
    }
}

/// Builds a GGUF image by hand so that each test can break exactly one thing.
struct Raw {
    kvs: Vec<u8>,
    n_kv: u64,
    infos: Vec<u8>,
    n_tensors: u64,
    data: Vec<u8>,
}

impl Raw {
    fn new() -> Self {
        Raw { kvs: vec![], n_kv: 0, infos: vec![], n_tensors: 0, data: vec![0u8; 64] }
    }
    fn string(out: &mut Vec<u8>, s: &[u8]) {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s);
    }
    fn kv(mut self, key: &[u8], ty: u32, payload: &[u8]) -> Self {
        Self::string(&mut self.kvs, key);
        self.kvs.extend_from_slice(&ty.to_le_bytes());
        self.kvs.extend_from_slice(payload);
        self.n_kv += 1;
        self
    }
    fn tensor(mut self, name: &str, dims: &[u64], ty: u32, offset: u64) -> Self {
        Self::string(&mut self.infos, name.as_bytes());
        self.infos.extend_from_slice(&(dims.len() as u32).to_le_bytes());
        for d in dims {
            self.infos.extend_from_slice(&d.to_le_bytes());
        }
        self.infos.extend_from_slice(&ty.to_le_bytes());
        self.infos.extend_from_slice(&offset.to_le_bytes());
        self.n_tensors += 1;
        self
    }
    fn bytes(&self) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&self.n_tensors.to_le_bytes());
        b.extend_from_slice(&self.n_kv.to_le_bytes());
        b.extend_from_slice(&self.kvs);
        b.extend_from_slice(&self.infos);
        while b.len() % 32 != 0 {
            b.push(0);
        }
        b.extend_from_slice(&self.data);
        b
    }
    fn open(&self) -> Result<GgufFile, GgufError> {
        GgufFile::from_bytes(self.bytes(), "raw.gguf")
    }
}

#[test]
fn hand_built_file_opens_and_reads() {
    let mut raw = Raw::new().kv(b"k", 4, &7u32.to_le_bytes()).tensor("t", &[4, 2], 0, 32);
    raw.data = vec![0u8; 64];
    for i in 0..8 {
        raw.data[32 + 4 * i..36 + 4 * i].copy_from_slice(&(i as f32).to_le_bytes());
    }
    let f = raw.open().unwrap();
    assert_eq!(f.get_u32("k").unwrap(), 7);
    let (v, shape) = f.tensor_f32("t").unwrap();
    assert_eq!(shape, [2, 4]);
    assert_eq!(v, [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]);
}

#[test]
fn structural_errors() {
    let check = |raw: Raw, pred: &dyn Fn(&GgufError) -> bool, what: &str| {
        let e = raw.open().err().unwrap_or_else(|| panic!("{what}: opened"));
        assert!(pred(&e), "{what}: got {e}");
        assert!(e.to_string().starts_with("raw.gguf"), "{what}: {e}");
    };
    check(
        Raw::new().tensor("t", &[4], 0, 8),
        &|e| matches!(e, GgufError::MisalignedOffset { offset: 8, alignment: 32, .. }),
        "misaligned",
    );
    check(
        Raw::new().tensor("t", &[4], 0, 0).tensor("t", &[4], 0, 32),
        &|e| matches!(e, GgufError::DuplicateTensor { tensor, .. } if tensor == "t"),
        "duplicate tensor",
    );
    check(
        Raw::new().tensor("t", &[4], 99, 0),
        &|e| matches!(e, GgufError::UnknownGgmlType { type_id: 99, .. }),
        "unknown type",
    );
    check(Raw::new().tensor("t", &[64], 0, 0), &|e| matches!(e, GgufError::TensorOutOfBounds { .. }), "past end");
    check(
        Raw::new().tensor("t", &[4], 0, u64::MAX - 31),
        &|e| matches!(e, GgufError::TensorOutOfBounds { .. }),
        "offset overflow",
    );
    // An empty tensor whose other dim is 2^64 − 1 (the product is 0, inside any file): a shape
    // no tensor library can hold, refused before anything multiplies or converts it.
    check(
        Raw::new().tensor("t", &[0, u64::MAX], 0, 0),
        &|e| matches!(e, GgufError::Malformed { message, .. } if message.contains("is not a tensor size")),
        "huge dim beside a zero dim",
    );
    check(
        Raw::new().tensor("t", &[u64::MAX, 4], 0, 0),
        &|e| matches!(e, GgufError::Malformed { .. }),
        "element count overflow",
    );
    check(
        Raw::new().tensor("t", &[1, 1, 1, 1, 1], 0, 0),
        &|e| matches!(e, GgufError::Malformed { .. }),
        "too many dims",
    );
    check(
        Raw::new().tensor("t", &[33], 8, 0),
        &|e| matches!(e, GgufError::Malformed { message, .. } if message.contains("block size")),
        "row not a multiple of the block",
    );
    check(
        Raw::new().kv(b"a", 4, &[0; 4]).kv(b"a", 4, &[0; 4]),
        &|e| matches!(e, GgufError::DuplicateKey { key, .. } if key == "a"),
        "duplicate key",
    );
    check(Raw::new().kv(b"a", 13, &[0; 4]), &|e| matches!(e, GgufError::Malformed { .. }), "unknown value type");
    check(
        Raw::new().kv(b"\xff\xfe", 4, &[0; 4]),
        &|e| matches!(e, GgufError::Malformed { message, .. } if message.contains("UTF-8")),
        "invalid UTF-8 key",
    );
    check(Raw::new().kv(b"b", 7, &[2]), &|e| matches!(e, GgufError::Malformed { .. }), "invalid bool");
    check(
        Raw::new().kv(b"general.alignment", 4, &24u32.to_le_bytes()),
        &|e| matches!(e, GgufError::Malformed { message, .. } if message.contains("alignment")),
        "alignment not a power of two",
    );
    // A huge element count must fail fast on the size check, not try to allocate.
    let mut payload = 4u32.to_le_bytes().to_vec();
    payload.extend_from_slice(&u64::MAX.to_le_bytes());
    check(Raw::new().kv(b"arr", 9, &payload), &|e| matches!(e, GgufError::Truncated { .. }), "huge u32 array");
    let mut payload = 8u32.to_le_bytes().to_vec();
    payload.extend_from_slice(&u64::MAX.to_le_bytes());
    check(Raw::new().kv(b"arr", 9, &payload), &|e| matches!(e, GgufError::Truncated { .. }), "huge string array");
    // Arrays nested 100 deep.
    let mut payload = Vec::new();
    for _ in 0..100 {
        payload.extend_from_slice(&9u32.to_le_bytes());
        payload.extend_from_slice(&1u64.to_le_bytes());
    }
    check(
        Raw::new().kv(b"deep", 9, &payload),
        &|e| matches!(e, GgufError::Malformed { message, .. } if message.contains("nested")),
        "deep nesting",
    );
    // Huge string length.
    check(
        Raw::new().kv(b"s", 8, &u64::MAX.to_le_bytes()),
        &|e| matches!(e, GgufError::Truncated { .. }),
        "huge string",
    );
}

#[test]
fn custom_alignment_is_honoured() {
    let raw = Raw::new().kv(b"general.alignment", 4, &64u32.to_le_bytes()).tensor("t", &[4], 0, 0);
    let mut b = raw.bytes();
    // Re-pad the data section to 64.
    let header_len = b.len() - raw.data.len();
    let start = header_len.div_ceil(64) * 64;
    b.truncate(header_len);
    b.resize(start, 0);
    b.extend_from_slice(&1.5f32.to_le_bytes().repeat(4));
    let f = GgufFile::from_bytes(b, "a64.gguf").unwrap();
    assert_eq!(f.alignment(), 64);
    assert_eq!(f.data_offset() % 64, 0);
    assert_eq!(f.tensor_f32("t").unwrap().0, [1.5; 4]);
}
