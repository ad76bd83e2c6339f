//! `distill self-distill` on the real SmolLM2-135M-Instruct (fetched by the test script): only
//! solutions whose answer line is exactly right are trained on, the learner's files resume, and
//! a finished round is not trained again.

use std::process::Command;

mod common;
use common::{json, BIN};

const MODEL: &str = "asset:smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";

#[test]
fn self_distill_trains_on_verified_solutions_only_and_resumes() {
    let d = common::tmpdir("run");
    let out = d.join("out");
    let args = [
        "self-distill",
        "--model",
        MODEL,
        "--families",
        "add,sort",
        "--train",
        "8",
        "--heldout",
        "4",
        "--samples",
        "2",
        "--eval-samples",
        "2",
        "--rounds",
        "1",
        "--max-tokens",
        "32",
        "--epochs",
        "1",
        "--threads",
        "2",
        "--out",
    ];
    let run = || {
        let o = Command::new(BIN).args(args).arg(&out).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let table = run();
    assert!(table.contains("| add |") && table.contains("| sort |"), "{table}");

    // Every kept solution checks out by an independent reading: the first `Answer:` line holds
    // exactly the sum (add) or the sorted numbers (sort) of the question.
    let round = json(&out.join("round-1/round.json"));
    let verified = std::fs::read_to_string(out.join("round-1/verified.jsonl")).unwrap();
    let kept: Vec<serde_json::Value> = verified.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let nums = |s: &str| -> Vec<i64> {
        s.split(|c: char| !c.is_ascii_digit()).filter(|t| !t.is_empty()).map(|t| t.parse().unwrap()).collect()
    };
    for k in &kept {
        let q = k["question"].as_str().unwrap();
        let c = k["completion"].as_str().unwrap();
        let line = c.lines().find_map(|l| l.trim().strip_prefix("Answer:")).unwrap_or_else(|| panic!("{c:?}"));
        let mut want = nums(q);
        if k["family"] == "add" {
            want = vec![want.iter().sum()];
        } else {
            want.sort_unstable();
        }
        assert_eq!(nums(line), want, "{q} → {c:?}");
    }
    let mut total_kept = 0;
    for s in round["sampled"].as_array().unwrap() {
        let (n, ok, kept_f) = (s[1].as_u64().unwrap(), s[2].as_u64().unwrap(), s[3].as_u64().unwrap());
        assert_eq!(n, 16, "8 problems × 2 samples");
        assert!(kept_f <= ok && kept_f <= 16);
        total_kept += kept_f;
    }
    assert_eq!(total_kept as usize, kept.len());
    // One epoch over the kept solutions in batches of 8.
    assert_eq!(round["train_steps"].as_u64().unwrap(), (kept.len() as u64).div_ceil(8));
    let evals = |r: usize| json(&out.join(format!("eval-{r}.json")));
    for r in 0..=1 {
        for f in evals(r).as_array().unwrap() {
            let p1 = f["pass1"].as_f64().unwrap();
            assert_eq!(f["problems"], 4);
            assert!((p1 * 4.0 - (p1 * 4.0).round()).abs() < 1e-9 && f["pass_n"].as_f64().is_some());
        }
    }

    // The sampled solutions are kept as ids; the finished round's training checkpoint is gone.
    let sampled = json(&out.join("round-1/sampled.json"));
    assert_eq!(sampled["examples"].as_array().unwrap().len(), kept.len());
    assert_eq!(sampled["sampled"], round["sampled"]);
    assert!(!out.join("round-1/train/ckpt.safetensors").exists());
    assert!(out.join("round-1/train/metrics.jsonl").is_file());

    // Interrupted after sampling, before the round was final: the samples are not drawn again,
    // the fine-tuning and the evaluation redone give the same numbers.
    let before = evals(1);
    let mtime = |p: &str| std::fs::metadata(out.join(p)).unwrap().modified().unwrap();
    let drawn = mtime("round-1/sampled.json");
    for f in ["round-1/round.json", "eval-1.json", "summary.json"] {
        std::fs::remove_file(out.join(f)).unwrap();
    }
    let again = run();
    assert_eq!(mtime("round-1/sampled.json"), drawn);
    let redone = json(&out.join("round-1/round.json"));
    assert_eq!((&redone["sampled"], &redone["train_steps"]), (&round["sampled"], &round["train_steps"]));
    assert_eq!(evals(1), before);
    let rows = |t: &str| t.lines().filter(|l| l.starts_with('|')).map(str::to_string).collect::<Vec<_>>();
    assert_eq!(rows(&again), rows(&table));

    // Other settings into the same directory are refused.
    let o = Command::new(BIN).args(args).arg(&out).args(["--seed", "1"]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.lines().last().unwrap().contains("was started with other settings"), "{err}");
    let _ = std::fs::remove_dir_all(&d);
}
