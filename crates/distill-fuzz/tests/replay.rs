//! CI's share of the fuzzing: every seed, corpus file and saved regression input of every
//! target runs without a panic (an allocation past the fuzz cap is checked by the runner, not
//! here). New failures found by `bench/fuzz.sh` are copied to `fuzz/regressions/<target>/`.

#[test]
fn every_corpus_and_regression_input_runs_without_a_panic() {
    let mut ran = 0;
    for t in distill_fuzz::targets() {
        let inputs = distill_fuzz::corpus(&t);
        assert!(!inputs.is_empty(), "target {} has no input", t.name);
        for (name, bytes) in inputs {
            let r = std::panic::catch_unwind(|| (t.run)(&bytes));
            assert!(r.is_ok(), "target {}: panic on {name}", t.name);
            ran += 1;
        }
    }
    assert!(ran >= 14, "{ran} inputs");
}
