//! Interrupted captures resume at the last complete shard and end byte-identical.

mod common;

use std::fs;
use std::path::Path;

use common::{small_rows, small_spec, write_small, K, N, S};
use distill_cache::{CacheError, CacheReader, CacheWriter};

fn file_bytes(dir: &Path, name: &str) -> Vec<u8> {
    fs::read(dir.join(name)).unwrap_or_else(|e| panic!("{}: {e}", dir.join(name).display()))
}

#[test]
fn interrupted_capture_resumes_at_the_shard_boundary_and_matches_an_uninterrupted_one() {
    let tmp = tempfile::tempdir().unwrap();
    let (reference, resumed) = (tmp.path().join("reference"), tmp.path().join("resumed"));
    let data = write_small(&reference);

    // A capture killed after 5 of 10 rows: shard 0 (rows 0..3) is complete, shard 1 half written.
    {
        let mut w = CacheWriter::create_or_resume(&resumed, small_spec()).unwrap();
        let (ids, logp, tail) = data.rows(0, 5, S, K);
        w.push_rows(ids, logp, tail).unwrap();
        assert_eq!(w.manifest().shards.len(), 1);
        // Dropped without finish.
    }
    // What a kill leaves behind: a temporary shard, a temporary manifest, and a shard renamed
    // into place whose manifest update never happened.
    fs::write(resumed.join(".shard-00001.bin.tmp-4242-17"), b"half a shard").unwrap();
    fs::write(resumed.join(".manifest.json.tmp-4242-18"), b"{").unwrap();
    fs::write(resumed.join("shard-00001.bin"), b"unlisted").unwrap();
    fs::write(resumed.join("notes.txt"), b"not ours").unwrap();
    let err = CacheReader::open(&resumed).unwrap_err();
    assert!(matches!(err, CacheError::Incomplete { rows: 3, n_rows: 10, .. }), "{err}");

    let mut w = CacheWriter::create_or_resume(&resumed, small_spec()).unwrap();
    assert_eq!(w.next_row(), 3);
    assert!(!w.is_complete());
    for stray in [".shard-00001.bin.tmp-4242-17", ".manifest.json.tmp-4242-18", "shard-00001.bin"] {
        assert!(!resumed.join(stray).exists(), "{stray} was removed");
    }
    assert!(resumed.join("notes.txt").exists(), "unrelated files are left alone");
    fs::remove_file(resumed.join("notes.txt")).unwrap();
    let (ids, logp, tail) = data.rows(3, N, S, K);
    w.push_rows(ids, logp, tail).unwrap();
    let resumed_manifest = w.finish().unwrap();

    let reference_manifest = CacheReader::open(&reference).unwrap().manifest().clone();
    assert_eq!(resumed_manifest, reference_manifest);
    assert_eq!(resumed_manifest.shards.len(), 4);
    for shard in &reference_manifest.shards {
        assert_eq!(file_bytes(&resumed, &shard.file), file_bytes(&reference, &shard.file), "{}", shard.file);
    }
    assert_eq!(file_bytes(&resumed, "manifest.json"), file_bytes(&reference, "manifest.json"));
    CacheReader::open(&resumed).unwrap().verify_all().unwrap();
}

#[test]
fn complete_cache_resumes_with_nothing_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_small(tmp.path());
    let before = file_bytes(tmp.path(), "manifest.json");
    let mut spec = small_spec();
    spec.teacher = "another description".into(); // free-form: not part of the identity
    let mut w = CacheWriter::create_or_resume(tmp.path(), spec).unwrap();
    assert!(w.is_complete());
    assert_eq!(w.next_row(), N);
    let (ids, logp, tail) = data.rows(0, 1, S, K);
    let err = w.push_rows(ids, logp, tail).unwrap_err();
    assert!(matches!(err, CacheError::TooManyRows { next_row: 10, pushed: 1, n_rows: 10, .. }), "{err}");
    let manifest = w.finish().unwrap();
    assert_eq!(manifest.teacher, "test teacher");
    assert_eq!(file_bytes(tmp.path(), "manifest.json"), before);
}

#[test]
fn finish_before_the_last_row_fails_and_the_capture_can_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let data = small_rows();
    let mut w = CacheWriter::create_or_resume(tmp.path(), small_spec()).unwrap();
    let (ids, logp, tail) = data.rows(0, 7, S, K);
    w.push_rows(ids, logp, tail).unwrap();
    let err = w.finish().unwrap_err();
    assert_eq!(err.to_string(), format!("cannot finish cache {}: only 7 of 10 rows were pushed", tmp.path().display()));
    let mut w = CacheWriter::create_or_resume(tmp.path(), small_spec()).unwrap();
    assert_eq!(w.next_row(), 6);
    let (ids, logp, tail) = data.rows(6, N, S, K);
    w.push_rows(ids, logp, tail).unwrap();
    assert!(w.finish().unwrap().complete);
}

#[test]
fn resume_refuses_a_corrupt_listed_shard() {
    let tmp = tempfile::tempdir().unwrap();
    let data = small_rows();
    {
        let mut w = CacheWriter::create_or_resume(tmp.path(), small_spec()).unwrap();
        let (ids, logp, tail) = data.rows(0, 6, S, K);
        w.push_rows(ids, logp, tail).unwrap();
    }
    common::flip(&tmp.path().join("shard-00001.bin"), 100, 0x01);
    let err = CacheWriter::create_or_resume(tmp.path(), small_spec()).unwrap_err();
    assert!(matches!(err, CacheError::ChecksumMismatch { .. }), "{err}");
    assert!(err.to_string().contains("shard-00001.bin: sha256 mismatch"), "{err}");
}
