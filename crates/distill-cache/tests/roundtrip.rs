//! Write → read round trips, sizes on disk, the record layout and `inspect`.

mod common;

use common::{small_spec, spec, write_small, TeacherRows, K, N, RPS, S, V};
use distill_cache::{
    bytes_per_token, inspect, CacheError, CacheReader, CacheWriter, IdDtype, LogprobEncoding, HEADER_BYTES,
};

#[test]
fn bytes_per_token_formula() {
    let u8_enc = LogprobEncoding::default();
    assert_eq!(bytes_per_token(64, 0, 49_152, u8_enc), 200);
    assert_eq!(bytes_per_token(64, 0, 49_152, LogprobEncoding::F16), 264);
    assert_eq!(bytes_per_token(64, 0, 65_536, u8_enc), 200);
    assert_eq!(bytes_per_token(64, 0, 65_537, u8_enc), 8 + 64 * 5);
    assert_eq!(bytes_per_token(64, 0, 151_936, LogprobEncoding::F16), 8 + 64 * 6);
    assert_eq!(IdDtype::for_vocab(65_536), IdDtype::U16);
    assert_eq!(IdDtype::for_vocab(65_537), IdDtype::U32);
    assert_eq!(small_spec().bytes_per_token(), 8 + K * 3);
}

#[test]
fn u8_round_trip_over_uneven_pushes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cache");
    let data = TeacherRows::generate(N, S, K, V, 11);
    let mut w = CacheWriter::create_or_resume(&dir, small_spec()).unwrap();
    assert_eq!(w.next_row(), 0);
    // 4 + 1 + 5 rows: pushes that start and end inside shards and cross their boundaries.
    for (a, b) in [(0, 4), (4, 5), (5, 10)] {
        let (ids, logp, tail) = data.rows(a, b, S, K);
        w.push_rows(ids, logp, tail).unwrap();
        assert_eq!(w.next_row(), b);
        // Full shards are listed as soon as they fill, the short last one when row n_rows − 1 arrives.
        assert_eq!(w.manifest().shards.len(), if b == N { 4 } else { b / RPS });
    }
    let manifest = w.finish().unwrap();
    assert!(manifest.complete);
    assert_eq!(manifest.tokens, N * S);
    assert_eq!(manifest.temperature_stored, 1.0);
    assert_eq!(
        manifest.shards.iter().map(|s| (s.first_row, s.rows)).collect::<Vec<_>>(),
        [(0, 3), (3, 3), (6, 3), (9, 1)]
    );

    let step = 1.0 / 16.0;
    let r = CacheReader::open(&dir).unwrap();
    assert_eq!(r.n_rows(), N);
    let rows = [9, 0, 5, 3, 3, 7, 1, 2, 4, 6, 8];
    let (mut ids, mut logp, mut tail) = (Vec::new(), Vec::new(), Vec::new());
    r.read_rows(&rows, &mut ids, &mut logp, &mut tail).unwrap();
    assert_eq!(ids.len(), rows.len() * S * K);
    assert_eq!(tail.len(), rows.len() * S);
    let mut max_err = 0f32;
    for (j, &row) in rows.iter().enumerate() {
        let (want_ids, want_logp, want_tail) = data.rows(row, row + 1, S, K);
        let got = j * S * K..(j + 1) * S * K;
        assert_eq!(ids[got.clone()].iter().map(|&i| i as u32).collect::<Vec<_>>(), want_ids, "row {row}");
        for (t, (&g, &w)) in tail[j * S..(j + 1) * S].iter().zip(want_tail).enumerate() {
            assert_eq!(g.to_bits(), w.to_bits(), "log_tail row {row} pos {t} is stored exactly");
        }
        for (i, (&g, &w)) in logp[got].iter().zip(want_logp).enumerate() {
            if i % K == 0 {
                assert_eq!(g, w, "logp_0 is stored exactly");
            }
            let top = want_logp[i - i % K];
            assert!(top - w < 254.0 * step, "test data must not saturate");
            max_err = max_err.max((g - w).abs());
        }
    }
    assert!(max_err <= step / 2.0 + 1e-5, "max |logp error| {max_err} > step/2");
    assert!(max_err > step / 8.0, "quantization is really applied (max error {max_err})");

    // Bytes on disk: bytes_per_token per token plus one header per shard.
    let on_disk: u64 = manifest.shards.iter().map(|s| std::fs::metadata(dir.join(&s.file)).unwrap().len()).sum();
    assert_eq!(manifest.bytes_per_token, 32);
    assert_eq!(on_disk, (4 * HEADER_BYTES + N * S * 32) as u64);
    assert_eq!(on_disk, manifest.total_bytes());
    r.verify_all().unwrap();

    // Nothing but the manifest and the four shards is left in the directory.
    let mut names: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["manifest.json", "shard-00000.bin", "shard-00001.bin", "shard-00002.bin", "shard-00003.bin"]);
}

#[test]
fn f16_round_trip_with_u32_ids() {
    let tmp = tempfile::tempdir().unwrap();
    let (k, v, s, n) = (5, 70_000, 3, 4);
    let data = TeacherRows::generate(n, s, k, v, 3);
    assert!(data.ids.iter().any(|&i| i >= 65_536), "ids need u32");
    let mut sp = spec(k, v, s, 3, n);
    sp.logprob_encoding = LogprobEncoding::F16;
    let mut w = CacheWriter::create_or_resume(tmp.path(), sp).unwrap();
    assert_eq!(w.bytes_per_token(), 8 + k * (4 + 2));
    w.push_rows(&data.ids, &data.logp, &data.log_tail).unwrap();
    let manifest = w.finish().unwrap();
    assert_eq!(manifest.id_dtype, IdDtype::U32);
    let json = std::fs::read_to_string(tmp.path().join("manifest.json")).unwrap();
    assert!(json.contains("\"logprob_encoding\": \"f16\"") && !json.contains("logprob_step"), "{json}");

    let r = CacheReader::open(tmp.path()).unwrap();
    let (mut ids, mut logp, mut tail) = (Vec::new(), Vec::new(), Vec::new());
    r.read_rows(&(0..n).collect::<Vec<_>>(), &mut ids, &mut logp, &mut tail).unwrap();
    assert_eq!(ids.iter().map(|&i| i as u32).collect::<Vec<_>>(), data.ids);
    assert_eq!(tail, data.log_tail);
    for (i, (&g, &w)) in logp.iter().zip(&data.logp).enumerate() {
        let d = data.logp[i - i % k] - w;
        // f16 keeps 11 significant bits: relative error ≤ 2^-11 on the distance below the top-1.
        assert!((g - w).abs() <= d * 2f32.powi(-11) + 1e-5, "entry {i}: {g} vs {w} (distance {d})");
    }
}

#[test]
fn manifest_and_inspect_report_numbers() {
    let tmp = tempfile::tempdir().unwrap();
    write_small(tmp.path());
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("manifest.json")).unwrap()).unwrap();
    assert_eq!(json["format"], "distill-teacher-cache");
    assert_eq!(json["version"], 1);
    assert_eq!(json["id_dtype"], "u16");
    assert_eq!(json["logprob_encoding"], "u8");
    assert_eq!(json["logprob_step"], 0.0625);
    assert_eq!(json["temperature_stored"], 1.0);
    assert_eq!(json["bytes_per_token"], 32);
    assert_eq!(json["shards"][1]["file"], "shard-00001.bin");
    assert_eq!(json["shards"][1]["bytes"], (HEADER_BYTES + 3 * S * 32) as u64);
    assert_eq!(json["shards"][1]["sha256"].as_str().unwrap().len(), 64);

    let report = inspect(tmp.path()).unwrap();
    assert!(report.complete);
    assert_eq!((report.rows, report.n_rows, report.tokens, report.shards), (N, N, N * S, 4));
    assert_eq!((report.top_k, report.vocab_size, report.seq_len, report.bytes_per_token), (K, V, S, 32));
    assert_eq!(report.total_bytes, (4 * HEADER_BYTES + N * S * 32) as u64);
    assert_eq!(report.data_fingerprint, "data-fp");
    let value = serde_json::to_value(&report).unwrap();
    assert_eq!(value["bytes_per_token"], 32);
    assert_eq!(value["logprob_encoding"], "u8");
    assert!(report.to_string().contains("complete"));
}

#[test]
fn reader_is_shared_across_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<CacheReader>();
    let tmp = tempfile::tempdir().unwrap();
    let data = write_small(tmp.path());
    let r = CacheReader::open(tmp.path()).unwrap();
    std::thread::scope(|s| {
        for row in 0..N {
            let (r, data) = (&r, &data);
            s.spawn(move || {
                let (mut ids, mut logp, mut tail) = (Vec::new(), Vec::new(), Vec::new());
                r.read_rows(&[row], &mut ids, &mut logp, &mut tail).unwrap();
                assert_eq!(ids.iter().map(|&i| i as u32).collect::<Vec<_>>(), data.rows(row, row + 1, S, K).0);
            });
        }
    });
    let err = r.read_rows(&[0, N], &mut Vec::new(), &mut Vec::new(), &mut Vec::new()).unwrap_err();
    assert!(matches!(err, CacheError::RowOutOfRange { row: N, n_rows: N, .. }), "{err}");
}

#[test]
fn tail_samples_round_trip_and_header() {
    // K = 8 top entries plus 3 tail samples per token: the samples are stored after the top-k
    // in both arrays, need not be sorted, and only the top-k + tail must be normalized.
    let tmp = tempfile::tempdir().unwrap();
    let data = TeacherRows::generate(N, S, K, V, 5);
    let ns = 3;
    let (mut ids, mut logp) = (Vec::new(), Vec::new());
    for t in 0..N * S {
        ids.extend_from_slice(&data.ids[t * K..(t + 1) * K]);
        logp.extend_from_slice(&data.logp[t * K..(t + 1) * K]);
        let tail_id = |j: u32| (0..V as u32).rev().find(|v| !data.ids[t * K..(t + 1) * K].contains(v)).unwrap() - j;
        ids.extend([tail_id(0), tail_id(0), tail_id(2)]);
        logp.extend([data.log_tail[t] - 3.0, data.log_tail[t] - 3.0, data.log_tail[t] - 1.5]);
    }
    let mut sp = small_spec();
    sp.tail_samples = ns;
    assert_eq!(sp.bytes_per_token(), 8 + (K + ns) * 3);
    let mut w = CacheWriter::create_or_resume(tmp.path(), sp.clone()).unwrap();
    w.push_rows(&ids, &logp, &data.log_tail).unwrap();
    w.finish().unwrap();
    let head = std::fs::read(tmp.path().join("shard-00000.bin")).unwrap();
    assert_eq!(u16::from_le_bytes([head[42], head[43]]), ns as u16);
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("manifest.json")).unwrap()).unwrap();
    assert_eq!(json["tail_samples"], ns);

    let r = CacheReader::open(tmp.path()).unwrap();
    assert_eq!((r.top_k(), r.tail_samples(), r.entries()), (K, ns, K + ns));
    let (mut rid, mut rlp, mut tail) = (Vec::new(), Vec::new(), Vec::new());
    r.read_rows(&(0..N).collect::<Vec<_>>(), &mut rid, &mut rlp, &mut tail).unwrap();
    assert_eq!(rid.iter().map(|&i| i as u32).collect::<Vec<_>>(), ids);
    assert_eq!(tail, data.log_tail);
    for (i, (&g, &w)) in rlp.iter().zip(&logp).enumerate() {
        // Entries further than 255 steps below the top-1 saturate there.
        let w = w.max(logp[i - i % (K + ns)] - 255.0 / 16.0);
        assert!((g - w).abs() <= 1.0 / 32.0 + 1e-5, "entry {i}: {g} vs {w}");
    }
    assert_eq!(inspect(tmp.path()).unwrap().tail_samples, ns);

    // Resuming with another number of samples is refused, naming the field.
    let mut other = sp.clone();
    other.tail_samples = 4;
    let err = CacheWriter::create_or_resume(tmp.path(), other).unwrap_err().to_string();
    assert!(err.contains("tail_samples"), "{err}");
    // A sample above the top-1 is refused.
    let tmp2 = tempfile::tempdir().unwrap();
    let mut w = CacheWriter::create_or_resume(tmp2.path(), sp).unwrap();
    let mut bad = logp.clone();
    bad[K] = 0.0;
    let err = w.push_rows(&ids, &bad, &data.log_tail).unwrap_err().to_string();
    assert!(err.contains("tail sample") && err.contains("row 0, position 0, rank 8"), "{err}");
}

#[test]
fn manifest_without_tail_samples_reads_as_zero() {
    // Caches written before tail samples existed have no `tail_samples` key and zero header bytes.
    let tmp = tempfile::tempdir().unwrap();
    write_small(tmp.path());
    let path = tmp.path().join("manifest.json");
    let mut json: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    json.as_object_mut().unwrap().remove("tail_samples");
    std::fs::write(&path, serde_json::to_vec_pretty(&json).unwrap()).unwrap();
    let r = CacheReader::open(tmp.path()).unwrap();
    assert_eq!((r.tail_samples(), r.entries()), (0, K));
}
