//! Corrupt, truncated, missing and mismatched caches, and malformed rows: one clear error each.

mod common;

use std::fs;

use common::{flip, small_rows, small_spec, write_small, K, N, S};
use distill_cache::{inspect, CacheError, CacheReader, CacheWriter, LogprobEncoding};

/// A change to a spec, for the table-driven tests.
type SpecEdit = fn(&mut distill_cache::CacheSpec);

fn read(r: &CacheReader, rows: &[usize]) -> Result<(), CacheError> {
    r.read_rows(rows, &mut Vec::new(), &mut Vec::new(), &mut Vec::new())
}

#[test]
fn flipped_byte_is_caught_lazily_and_names_the_shard() {
    let tmp = tempfile::tempdir().unwrap();
    write_small(tmp.path());
    flip(&tmp.path().join("shard-00001.bin"), 200, 0x40);
    let r = CacheReader::open(tmp.path()).expect("opening does not hash the shards");
    read(&r, &[0, 2, 6, 9]).unwrap();
    let err = read(&r, &[4]).unwrap_err();
    assert!(matches!(err, CacheError::ChecksumMismatch { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("shard-00001.bin") && msg.contains("sha256 mismatch"), "{msg}");
    assert!(read(&r, &[3]).unwrap_err().to_string().contains("shard-00001.bin"), "the outcome is remembered");

    let fresh = CacheReader::open(tmp.path()).unwrap();
    let err = fresh.verify_all().unwrap_err();
    assert!(err.to_string().contains("shard-00001.bin"), "{err}");
}

#[test]
fn damaged_header_truncated_or_missing_shard_fails_at_open() {
    let tmp = tempfile::tempdir().unwrap();
    write_small(tmp.path());
    let dir = tmp.path();

    flip(&dir.join("shard-00001.bin"), 8, 0x40); // the shard index field
    let msg = CacheReader::open(dir).unwrap_err().to_string();
    assert!(msg.contains("shard-00001.bin: corrupt teacher cache shard: header says shard index"), "{msg}");
    flip(&dir.join("shard-00001.bin"), 8, 0x40);

    flip(&dir.join("shard-00001.bin"), 0, 0x40); // the magic
    let msg = CacheReader::open(dir).unwrap_err().to_string();
    assert!(msg.contains("shard-00001.bin") && msg.contains("not a teacher cache shard"), "{msg}");
    flip(&dir.join("shard-00001.bin"), 0, 0x40);

    let path = dir.join("shard-00002.bin");
    let bytes = fs::read(&path).unwrap();
    fs::write(&path, &bytes[..bytes.len() - 7]).unwrap();
    let err = CacheReader::open(dir).unwrap_err();
    assert!(matches!(err, CacheError::BadShard { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("shard-00002.bin") && msg.contains("truncated"), "{msg}");
    fs::write(&path, &bytes[..0]).unwrap();
    assert!(CacheReader::open(dir).unwrap_err().to_string().contains("shard-00002.bin: corrupt"));
    fs::write(&path, &bytes).unwrap();
    CacheReader::open(dir).unwrap().verify_all().unwrap();

    fs::remove_file(dir.join("shard-00003.bin")).unwrap();
    let msg = CacheReader::open(dir).unwrap_err().to_string();
    assert!(msg.contains("shard-00003.bin: open shard"), "{msg}");
}

#[test]
fn missing_or_invalid_manifest() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let err = CacheReader::open(dir).unwrap_err();
    assert_eq!(err.to_string(), format!("{}: no teacher cache here (manifest.json is missing)", dir.display()));
    assert!(matches!(inspect(dir).unwrap_err(), CacheError::MissingManifest { .. }));

    write_small(dir);
    let manifest = dir.join("manifest.json");
    let good = fs::read_to_string(&manifest).unwrap();
    fs::write(&manifest, &good[..good.len() / 2]).unwrap();
    let err = CacheReader::open(dir).unwrap_err();
    assert!(matches!(err, CacheError::BadManifest { .. }), "{err}");
    assert!(err.to_string().starts_with(&format!("{}: invalid teacher cache manifest", manifest.display())), "{err}");
    // A damaged manifest is never overwritten by a resume.
    assert!(matches!(CacheWriter::create_or_resume(dir, small_spec()).unwrap_err(), CacheError::BadManifest { .. }));

    fs::write(&manifest, good.replace("\"tokens\": 40", "\"tokens\": 41")).unwrap();
    let msg = CacheReader::open(dir).unwrap_err().to_string();
    assert!(msg.contains("tokens is 41, expected 40"), "{msg}");

    fs::write(&manifest, good.replace("shard-00002.bin", "../shard-00002.bin")).unwrap();
    let msg = CacheReader::open(dir).unwrap_err().to_string();
    assert!(msg.contains("shard entry 2 (../shard-00002.bin"), "{msg}");

    fs::write(&manifest, good.replace("distill-teacher-cache", "something-else")).unwrap();
    assert!(CacheReader::open(dir).unwrap_err().to_string().contains("format is \"something-else\""));
}

#[test]
fn incomplete_cache_names_rows_and_the_fix() {
    let tmp = tempfile::tempdir().unwrap();
    let data = small_rows();
    let mut w = CacheWriter::create_or_resume(tmp.path(), small_spec()).unwrap();
    let (ids, logp, tail) = data.rows(0, 5, S, K);
    w.push_rows(ids, logp, tail).unwrap();
    drop(w);
    let err = CacheReader::open(tmp.path()).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("cache {} is incomplete (3 of 10 rows): run the capture again to resume", tmp.path().display())
    );
    let report = inspect(tmp.path()).unwrap();
    assert!(!report.complete);
    assert_eq!((report.rows, report.n_rows, report.tokens, report.shards), (3, 10, 12, 1));
}

#[test]
fn resume_with_a_different_spec_names_the_field() {
    let tmp = tempfile::tempdir().unwrap();
    write_small(tmp.path());
    let cases: [(&str, SpecEdit); 7] = [
        ("seq_len", |s| s.seq_len = 5),
        ("top_k", |s| s.top_k = 4),
        ("n_rows", |s| s.n_rows = 11),
        ("rows_per_shard", |s| s.rows_per_shard = 4),
        ("logprob_step", |s| s.logprob_encoding = LogprobEncoding::U8 { step: 0.125 }),
        ("logprob_encoding", |s| s.logprob_encoding = LogprobEncoding::F16),
        ("data_fingerprint", |s| s.data_fingerprint = "other-data".into()),
    ];
    for (field, change) in cases {
        let mut spec = small_spec();
        change(&mut spec);
        let err = CacheWriter::create_or_resume(tmp.path(), spec).unwrap_err();
        assert!(matches!(&err, CacheError::SpecMismatch { field: f, .. } if *f == field), "{field}: {err}");
        assert!(err.to_string().contains(&format!("different {field} (cache: ")), "{err}");
    }
    let mut spec = small_spec();
    spec.teacher_fingerprint = "teacher-v2".into();
    let msg = CacheWriter::create_or_resume(tmp.path(), spec).unwrap_err().to_string();
    assert!(msg.contains("different teacher_fingerprint (cache: teacher-fp, requested: teacher-v2)"), "{msg}");
}

#[test]
fn check_compatible_names_every_difference() {
    let tmp = tempfile::tempdir().unwrap();
    write_small(tmp.path());
    let r = CacheReader::open(tmp.path()).unwrap();
    r.check_compatible("tokenizer-fp", "data-fp", S, 1000).unwrap();
    let one = |tok: &str, data: &str, seq: usize, vocab: usize| {
        r.check_compatible(tok, data, seq, vocab).unwrap_err().to_string()
    };
    assert!(one("tok2", "data-fp", S, 1000).ends_with("tokenizer_fingerprint differs (cache: tokenizer-fp, run: tok2)"));
    assert!(one("tokenizer-fp", "data2", S, 1000).ends_with("data_fingerprint differs (cache: data-fp, run: data2)"));
    assert!(one("tokenizer-fp", "data-fp", 8, 1000).ends_with("seq_len differs (cache: 4, run: 8)"));
    assert!(one("tokenizer-fp", "data-fp", S, 999).ends_with("vocab_size differs (cache: 1000, run: 999)"));
    let err = r.check_compatible("x", "y", 1, 2).unwrap_err();
    match &err {
        CacheError::Incompatible { fields, .. } => assert_eq!(fields.len(), 4),
        other => panic!("{other}"),
    }
    assert!(err.to_string().starts_with(&format!("cache {} does not match this run: ", tmp.path().display())));
}

#[test]
fn malformed_rows_are_rejected_before_anything_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let data = small_rows();
    let mut w = CacheWriter::create_or_resume(tmp.path(), small_spec()).unwrap();
    let (ids, logp, tail) = data.rows(0, 4, S, K);
    let bad_rows = |err: CacheError| match err {
        CacheError::BadRows { message, .. } => message,
        other => panic!("{other}"),
    };

    let mut l = logp.to_vec();
    l[K * 5 + 2] = f32::NAN; // row 1, position 1, rank 2
    let msg = bad_rows(w.push_rows(ids, &l, tail).unwrap_err());
    assert_eq!(msg, "log-probability at row 1, position 1, rank 2 is NaN");

    let mut i = ids.to_vec();
    i[3] = 1000;
    assert_eq!(
        bad_rows(w.push_rows(&i, logp, tail).unwrap_err()),
        "id 1000 at row 0, position 0, rank 3 is not in 0..1000"
    );
    let mut i64s: Vec<i64> = ids.iter().map(|&x| i64::from(x)).collect();
    i64s[K] = -1;
    assert!(bad_rows(w.push_rows(&i64s, logp, tail).unwrap_err()).starts_with("id -1 at row 0, position 1, rank 0"));

    let mut l = logp.to_vec();
    l.swap(1, 2);
    assert!(bad_rows(w.push_rows(ids, &l, tail).unwrap_err()).starts_with("log-probabilities not sorted"));

    let logits: Vec<f32> = logp.iter().map(|x| x + 12.0).collect();
    assert!(bad_rows(w.push_rows(ids, &logits, tail).unwrap_err()).contains("not logits"));

    let no_tail = vec![f32::NEG_INFINITY; tail.len()];
    assert!(bad_rows(w.push_rows(ids, logp, &no_tail).unwrap_err()).contains("probabilities sum to"));

    assert!(
        bad_rows(w.push_rows(ids, logp, &tail[..tail.len() - 1]).unwrap_err()).contains("not a whole number of rows")
    );
    assert!(bad_rows(w.push_rows(&ids[1..], logp, tail).unwrap_err()).contains("ids has"));

    assert_eq!(w.next_row(), 0);
    let names: Vec<_> = fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["manifest.json"], "nothing written");
    let (ids, logp, tail) = data.rows(0, N, S, K);
    let i64s: Vec<i64> = ids.iter().map(|&x| i64::from(x)).collect();
    w.push_rows(&i64s, logp, tail).unwrap();
    assert!(w.finish().unwrap().complete);
}

#[test]
fn invalid_specs_name_the_field() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: [(&str, SpecEdit); 6] = [
        ("top_k", |s| s.top_k = 0),
        ("top_k", |s| s.top_k = 1001),
        ("seq_len", |s| s.seq_len = 0),
        ("n_rows", |s| s.n_rows = 0),
        ("logprob_step", |s| s.logprob_encoding = LogprobEncoding::U8 { step: 0.0 }),
        ("logprob_step", |s| s.logprob_encoding = LogprobEncoding::U8 { step: f32::NAN }),
    ];
    for (field, change) in cases {
        let mut spec = small_spec();
        change(&mut spec);
        let err = CacheWriter::create_or_resume(tmp.path(), spec).unwrap_err();
        assert!(matches!(&err, CacheError::InvalidSpec { field: f, .. } if *f == field), "{field}: {err}");
    }
    assert!(!tmp.path().join("manifest.json").exists());
}

/// A shard whose checksum matches its manifest entry (both rewritten, as anyone can) but whose
/// ids lie past the vocabulary: an error naming the shard, row and position, never an id the
/// loss would index out of bounds with.
#[test]
fn ids_past_the_vocabulary_are_refused_even_with_a_matching_checksum() {
    use sha2::Digest;
    let tmp = tempfile::tempdir().unwrap();
    write_small(tmp.path());
    let shard = tmp.path().join("shard-00000.bin");
    let mut bytes = fs::read(&shard).unwrap();
    // Record 0 (row 0, position 0): logp0, log_tail, then the first id as u16 (V = 1000).
    let at = distill_cache::HEADER_BYTES + 8;
    bytes[at..at + 2].copy_from_slice(&60_000u16.to_le_bytes());
    let old = format!("{:x}", sha2::Sha256::digest(fs::read(&shard).unwrap()));
    let new = format!("{:x}", sha2::Sha256::digest(&bytes));
    fs::write(&shard, &bytes).unwrap();
    let manifest = tmp.path().join("manifest.json");
    let text = fs::read_to_string(&manifest).unwrap();
    assert!(text.contains(&old));
    fs::write(&manifest, text.replace(&old, &new)).unwrap();

    let r = CacheReader::open(tmp.path()).unwrap();
    let err = read(&r, &[1, 0]).unwrap_err().to_string();
    assert!(
        err.contains("shard-00000.bin")
            && err.contains("row 0, position 0: token id 60000 is past the vocabulary (1000)"),
        "{err}"
    );
    read(&r, &[1, 2]).unwrap();
}
