//! A capture split into parts (whole shards each) merges into the single capture byte for byte;
//! parts that do not belong together, or a damaged shard, are refused naming the problem.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::{small_rows, small_spec, write_small, K, N, S};
use distill_cache::{merge, CacheError, CacheReader, CacheWriter, Part};

/// Writes part `index` of `count` of the small capture into `dir`.
fn write_part(dir: &Path, index: usize, count: usize) -> distill_cache::Manifest {
    let data = small_rows();
    let mut w = CacheWriter::create_or_resume_part(dir, small_spec(), Some((index, count))).unwrap();
    let (start, end) = (w.next_row(), w.end_row());
    let (ids, logp, tail) = data.rows(start, end, S, K);
    w.push_rows(ids, logp, tail).unwrap();
    w.finish().unwrap()
}

#[test]
fn parts_merge_into_the_single_capture_byte_for_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let whole = tmp.path().join("whole");
    write_small(&whole);
    // 10 rows in shards of 3: 4 shards over 3 parts = 1 + 1 + 2 shards.
    let parts: Vec<PathBuf> = (0..3).map(|i| tmp.path().join(format!("p{i}"))).collect();
    let ranges: Vec<(usize, usize)> = (0..3)
        .map(|i| {
            let m = write_part(&parts[i], i, 3);
            assert_eq!(m.part, Some(Part::new(i, 3, 4)));
            (m.row_range().start, m.row_range().end)
        })
        .collect();
    assert_eq!(ranges, [(0, 3), (3, 6), (6, N)]);
    // A part is not a cache to read.
    let err = CacheReader::open(&parts[1]).unwrap_err();
    assert!(matches!(err, CacheError::Partial { index: 2, count: 3, .. }), "{err}");

    let out = tmp.path().join("merged");
    let m = merge(&[&parts[2], &parts[0], &parts[1]], &out).unwrap();
    assert!(m.complete && m.part.is_none());
    let mut names: Vec<String> =
        fs::read_dir(&whole).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names.len(), 5);
    for n in &names {
        assert!(fs::read(whole.join(n)).unwrap() == fs::read(out.join(n)).unwrap(), "{n} differs");
    }
    CacheReader::open(&out).unwrap().verify_all().unwrap();

    // Merging again over the result replaces it with the same bytes.
    merge(&[&parts[0], &parts[1], &parts[2]], &out).unwrap();
    assert!(fs::read(whole.join("manifest.json")).unwrap() == fs::read(out.join("manifest.json")).unwrap());
}

#[test]
fn parts_that_do_not_make_one_capture_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let p = |name: &str| tmp.path().join(name);
    let (a, b, c) = (p("a"), p("b"), p("c"));
    write_part(&a, 0, 3);
    write_part(&b, 1, 3);
    write_part(&c, 2, 3);
    let out = p("out");
    let msg = |parts: &[&Path]| merge(parts, &out).unwrap_err().to_string();
    assert!(msg(&[&a, &c]).contains("part 2 of 3 is missing"), "{}", msg(&[&a, &c]));
    assert!(msg(&[&a, &a, &b, &c]).contains("part 1 is given twice"));
    // A part of a two-way split does not join a three-way one.
    let two = p("two");
    write_part(&two, 1, 2);
    assert!(msg(&[&a, &two, &c]).contains("one of 3 parts"), "{}", msg(&[&a, &two, &c]));
    // Another teacher: the spec field is named.
    let other = p("other");
    let mut spec = small_spec();
    spec.teacher_fingerprint = "another-teacher".into();
    let data = small_rows();
    let mut w = CacheWriter::create_or_resume_part(&other, spec, Some((1, 3))).unwrap();
    let (ids, logp, tail) = data.rows(w.next_row(), w.end_row(), S, K);
    w.push_rows(ids, logp, tail).unwrap();
    w.finish().unwrap();
    assert!(msg(&[&a, &other, &c]).contains("teacher_fingerprint"), "{}", msg(&[&a, &other, &c]));
    // A whole cache is not a part; an unfinished part is not merged.
    let whole = p("whole");
    write_small(&whole);
    assert!(msg(&[&whole]).contains("is a whole cache"));
    let unfinished = p("unfinished");
    {
        let mut w = CacheWriter::create_or_resume_part(&unfinished, small_spec(), Some((2, 3))).unwrap();
        let (ids, logp, tail) = data.rows(w.next_row(), w.next_row() + 3, S, K);
        w.push_rows(ids, logp, tail).unwrap();
    }
    assert!(msg(&[&a, &b, &unfinished]).contains("is incomplete (3 of 4 rows)"), "{}", msg(&[&a, &b, &unfinished]));
    // A damaged shard: its checksum fails while it is copied, and no manifest claims the result.
    let shard = b.join("shard-00001.bin");
    let mut bytes = fs::read(&shard).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    fs::write(&shard, bytes).unwrap();
    let err = merge(&[&a, &b, &c], &out).unwrap_err();
    assert!(matches!(err, CacheError::ChecksumMismatch { .. }), "{err}");
    assert!(!out.join("manifest.json").exists());
    // Resuming a part as another part, or as the whole capture, names the difference.
    let err = CacheWriter::create_or_resume_part(&a, small_spec(), Some((1, 3))).unwrap_err();
    assert!(err.to_string().contains("part"), "{err}");
    let err = CacheWriter::create_or_resume(&a, small_spec()).unwrap_err();
    assert!(matches!(err, CacheError::SpecMismatch { field: "part", .. }), "{err}");
    // More parts than shards.
    let err = CacheWriter::create_or_resume_part(p("many"), small_spec(), Some((0, 5))).unwrap_err();
    assert!(matches!(err, CacheError::InvalidSpec { field: "part", .. }), "{err}");
}
