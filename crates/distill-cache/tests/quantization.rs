//! The `u8` code formula, saturation, `f16` deltas, and the record bytes on disk.

mod common;

use common::spec;
use distill_cache::{
    dequantize, quantize, saturation_mass_bound, CacheReader, CacheWriter, LogprobEncoding, HEADER_BYTES,
};

const STEP: f32 = 1.0 / 16.0;

#[test]
fn code_formula_rounding_and_clamping() {
    assert_eq!(quantize(-0.5, -0.5, STEP), 0);
    assert_eq!(quantize(-0.5, -1.5, STEP), 16);
    assert_eq!(quantize(0.0, -1.03, STEP), 16); // 16.48 rounds down
    assert_eq!(quantize(0.0, -1.04, STEP), 17); // 16.64 rounds up
    assert_eq!(quantize(-1.0, -0.9, STEP), 0, "above the top-1 clamps to 0");
    assert_eq!(quantize(0.0, -254.0 * STEP, STEP), 254);
    assert_eq!(quantize(0.0, -255.0 * STEP, STEP), 255);
    assert_eq!(quantize(0.0, -20.0, STEP), 255, "more than 255 steps below saturates");
    assert_eq!(quantize(0.0, f32::NEG_INFINITY, STEP), 255);
    assert_eq!(quantize(0.0, -2.0, 0.5), 4);
    assert_eq!(dequantize(-0.5, 0, STEP), -0.5);
    assert_eq!(dequantize(-0.5, 16, STEP), -1.5);
    assert_eq!(dequantize(-0.5, 255, STEP), -0.5 - 15.9375);
    // Every value within 255.5 steps decodes within step/2.
    for i in 0..3990 {
        let logp0 = -0.3f32;
        let logp = logp0 - i as f32 * 0.004;
        assert!(logp0 - logp <= 255.5 * STEP);
        let err = (dequantize(logp0, quantize(logp0, logp, STEP), STEP) - logp).abs();
        assert!(err <= STEP / 2.0 + 1e-5, "{logp}: error {err}");
    }
    let bound = saturation_mass_bound(STEP);
    assert!((bound - (-15.9375f64).exp()).abs() < 1e-15);
    assert!(bound < 1.2e-7);
}

/// One position, K = 4, V = 10: p = 0.6, 0.3, e^-20, e^-30; the tail holds the rest.
fn one_token(last: f32) -> (Vec<u32>, Vec<f32>, Vec<f32>) {
    let logp = vec![0.6f32.ln(), 0.3f32.ln(), -20.0, last];
    let tail = (1.0f64 - 0.6 - 0.3 - (-20f64).exp() - f64::from(last).exp()).ln() as f32;
    (vec![7, 2, 9, 0], logp, vec![tail])
}

fn round_trip(encoding: LogprobEncoding, last: f32) -> (Vec<u8>, Vec<f32>, Vec<f32>) {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = spec(4, 10, 1, 1, 1);
    s.logprob_encoding = encoding;
    let (ids, logp, tail) = one_token(last);
    let mut w = CacheWriter::create_or_resume(tmp.path(), s).unwrap();
    w.push_rows(&ids, &logp, &tail).unwrap();
    w.finish().unwrap();
    let r = CacheReader::open(tmp.path()).unwrap();
    let (mut got_ids, mut got_logp, mut got_tail) = (Vec::new(), Vec::new(), Vec::new());
    r.read_rows(&[0], &mut got_ids, &mut got_logp, &mut got_tail).unwrap();
    assert_eq!(got_ids, [7, 2, 9, 0]);
    assert_eq!(got_tail, tail);
    let file = std::fs::read(tmp.path().join("shard-00000.bin")).unwrap();
    (file[HEADER_BYTES..].to_vec(), logp, got_logp)
}

#[test]
fn u8_saturates_far_entries_and_the_record_layout_matches_the_docs() {
    let (rec, logp, got) = round_trip(LogprobEncoding::default(), -30.0);
    // 4 + 4 + 4 × u16 + 4 × u8 = 20 bytes.
    assert_eq!(rec.len(), 20);
    assert_eq!(f32::from_le_bytes(rec[0..4].try_into().unwrap()), logp[0]);
    assert_eq!(rec[8..16], [7, 0, 2, 0, 9, 0, 0, 0]);
    let c1 = ((logp[0] - logp[1]) / STEP).round() as u8; // ln 2 / (1/16) = 11.09 → 11
    assert_eq!(rec[16..20], [0, c1, 255, 255]);
    assert_eq!(c1, 11);
    assert_eq!(got[0], logp[0]);
    assert_eq!(got[1], logp[0] - 11.0 * STEP);
    assert!((got[1] - logp[1]).abs() <= STEP / 2.0);
    // Both far entries saturate at 255 steps below the top-1, overstating their mass, but by
    // less than e^{-255 step} of the top-1's probability.
    assert_eq!(got[2], logp[0] - 255.0 * STEP);
    assert_eq!(got[3], logp[0] - 255.0 * STEP);
    let overstated = f64::from(got[2]).exp() - f64::from(logp[2]).exp();
    assert!(overstated > 0.0 && overstated < 0.6 * saturation_mass_bound(STEP));

    // A coarser step reaches further: at 1/8 nat, -20 is 155.9 steps below and does not saturate.
    let (rec, logp, got) = round_trip(LogprobEncoding::U8 { step: 0.125 }, -30.0);
    assert_eq!(rec[18], 156);
    assert!((got[2] - logp[2]).abs() <= 0.0625);
    assert_eq!(rec[19], 236); // (30 + ln 0.6) / 0.125 = 235.9
}

#[test]
fn f16_keeps_far_entries_and_minus_infinity() {
    let (rec, logp, got) = round_trip(LogprobEncoding::F16, f32::NEG_INFINITY);
    assert_eq!(rec.len(), 4 + 4 + 4 * 2 + 4 * 2);
    assert_eq!(rec[16..18], [0, 0], "entry 0's distance is 0");
    assert_eq!(got[0], logp[0]);
    for i in 1..3 {
        let d = logp[0] - logp[i];
        assert!((got[i] - logp[i]).abs() <= d * 2f32.powi(-11) + 1e-6, "entry {i}: {} vs {}", got[i], logp[i]);
    }
    assert_eq!(got[3], f32::NEG_INFINITY);
}
