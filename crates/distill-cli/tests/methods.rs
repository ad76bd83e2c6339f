//! The method family through the real binary on tiny data: every per-step method as a KD
//! variant, the teacher-assistant chain, born-again generations and multi-teacher KD, checking
//! that phases ran in plan order, that each learned from the right phase, and that each term
//! trained; and the recipe errors the methods add.

use std::path::{Path, PathBuf};

mod common;
use common::{assert_error, distill, metrics, modified, stderr, summary, tmpdir};

fn image_recipe(d: &Path) -> PathBuf {
    common::write_wave_csv(&d.join("train.csv"), 400, 1);
    common::write_wave_csv(&d.join("test.csv"), 120, 2);
    let r = d.join("methods.toml");
    let train = "{ epochs = 10, batch_size = 40, lr = 1e-2 }";
    std::fs::write(
        &r,
        format!(
            r#"
task = "image-classification"
name = "tiny-methods"
seeds = [0]
threads = 1
[data]
format = "csv"
train = "{0}/train.csv"
test = "{0}/test.csv"
pixel_scale = 16.0
[teacher]
model = {{ type = "cnn", channels = [8, 16], hidden = 32 }}
train = {train}
[student]
model = {{ type = "cnn", channels = [4, 8], hidden = 16 }}
train = {train}
[assistant]
model = {{ type = "cnn", channels = [6, 12], hidden = 24 }}
train = {train}
[[teachers]]
model = {{ type = "mlp", hidden = [32] }}
train = {train}
[distill]
temperature = 4.0
alpha = 0.9
[distill.variants.fitnets]
fitnets = {{ weight = 1.0 }}
[distill.variants.fitnets2]
fitnets = {{ weight = 1.0, stage1 = true }}
[distill.variants.at]
attention_transfer = {{ weight = 1000.0 }}
[distill.variants.rkd]
rkd = {{ distance = 25.0, angle = 50.0 }}
[distill.born_again]
generations = 3
[distill.multi_teacher]
weights = [0.75, 0.25]
weightings = ["fixed", "entropy", "true-label"]
[checkpoint]
every_steps = 20
"#,
            d.display()
        ),
    )
    .unwrap();
    r
}

/// Every image method in one run: the phases in plan order, each taught by the right phase,
/// each variant's term in its metrics (and only there), the born-again ensemble averaging the
/// generations, and the methods table over them.
#[test]
fn image_methods_run_in_order_and_learn_from_the_right_phase() {
    let d = tmpdir("image");
    let r = image_recipe(&d);
    let out = d.join("run");
    let o = distill(&["run", r.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s = summary(&out);
    let res = s["results"].as_array().unwrap();
    let ids: Vec<&str> = res.iter().map(|r| r["id"].as_str().unwrap()).collect();
    let want = [
        "teacher-s0",
        "teacher2-s0",
        "scratch-s0",
        "kd-s0-T4",
        "kd-at-s0",
        "kd-fitnets-s0",
        "fitnets-hint-fitnets2-s0",
        "kd-fitnets2-s0",
        "kd-rkd-s0",
        "assistant-s0",
        "kd-ta-s0",
        "born-again-g2-s0",
        "born-again-g3-s0",
        "born-again-ensemble-s0",
        "kd-multi-fixed-s0",
        "kd-multi-entropy-s0",
        "kd-multi-true-label-s0",
    ];
    assert_eq!(ids, want);
    // Ran in that order: each phase's result was written after the one before it.
    let done: Vec<_> = want.iter().map(|id| modified(&out.join("phases").join(id).join("result.json"))).collect();
    assert!(done.windows(2).all(|w| w[0] <= w[1]), "{done:?}");
    let taught = |id: &str| -> Vec<String> {
        let r = res.iter().find(|r| r["id"] == id).unwrap();
        r["taught_by"]
            .as_array()
            .map(|a| a.iter().map(|x| x.as_str().unwrap().to_string()).collect())
            .unwrap_or_default()
    };
    assert_eq!(taught("teacher-s0"), Vec::<String>::new());
    assert_eq!(taught("kd-fitnets-s0"), ["teacher-s0"]);
    assert_eq!(taught("assistant-s0"), ["teacher-s0"]);
    assert_eq!(taught("kd-ta-s0"), ["assistant-s0"]);
    assert_eq!(taught("born-again-g2-s0"), ["kd-s0-T4"]);
    assert_eq!(taught("born-again-g3-s0"), ["born-again-g2-s0"]);
    assert_eq!(taught("born-again-ensemble-s0"), ["kd-s0-T4", "born-again-g2-s0", "born-again-g3-s0"]);
    assert_eq!(taught("kd-multi-entropy-s0"), ["teacher-s0", "teacher2-s0"]);
    // FitNets in two stages: the hint alone (no soft or hard part), then KD from its weights
    // without the hint.
    let init_from = |id: &str| res.iter().find(|r| r["id"] == id).unwrap()["init_from"].clone();
    assert_eq!(init_from("kd-fitnets2-s0"), "fitnets-hint-fitnets2-s0");
    assert_eq!(init_from("kd-fitnets-s0"), serde_json::Value::Null);
    for m in metrics(&out, "fitnets-hint-fitnets2-s0") {
        assert!(m.get("soft").is_none() && m.get("hard").is_none(), "{m}");
        assert!((m["loss"].as_f64().unwrap() - m["fitnets"].as_f64().unwrap()).abs() < 1e-6, "{m}");
    }
    assert!(metrics(&out, "kd-fitnets2-s0").iter().all(|m| m.get("fitnets").is_none() && m.get("soft").is_some()));
    let get = |id: &str, k: &str| res.iter().find(|r| r["id"] == id).unwrap()[k].as_i64().unwrap();
    // Same student architecture for every student; the assistant in between; the ensemble holds
    // the three generations and is not trained.
    let p_student = get("scratch-s0", "params");
    for id in ["kd-at-s0", "kd-ta-s0", "born-again-g3-s0", "kd-multi-fixed-s0"] {
        assert_eq!(get(id, "params"), p_student, "{id}");
    }
    let p_assistant = get("assistant-s0", "params");
    assert!(p_student < p_assistant && p_assistant < get("teacher-s0", "params"));
    assert_eq!(get("born-again-ensemble-s0", "params"), 3 * p_student);
    assert_eq!(get("born-again-ensemble-s0", "steps"), 0);
    // The students learn the task (4 classes, 120 test images).
    // (The hint stage's classifier layers never trained: it is a starting point, not a model.)
    for r in res.iter().filter(|r| r["role"] != "student-hint") {
        assert!(r["test_errors"].as_i64().unwrap() < 60, "{r}");
    }
    // Each variant's term is logged (and positive) in its own metrics, and nowhere else.
    for (phase, term) in [("kd-fitnets-s0", "fitnets"), ("kd-at-s0", "attention_transfer"), ("kd-rkd-s0", "rkd")] {
        let m = metrics(&out, phase);
        assert!(!m.is_empty() && m.iter().all(|m| m[term].as_f64().unwrap() > 0.0), "{phase}: {m:?}");
        for m in &m {
            // The logged loss is α·soft + (1 − α)·hard + the method's term.
            let part = |k: &str| m[k].as_f64().unwrap();
            let parts = 0.9 * part("soft") + 0.1 * part("hard") + part(term);
            let loss = m["loss"].as_f64().unwrap();
            assert!((loss - parts).abs() < 1e-4 * loss.abs().max(1.0), "{phase}: {m}");
        }
        for other in ["kd-s0-T4", "kd-ta-s0", "born-again-g2-s0", "kd-fitnets2-s0"] {
            assert!(metrics(&out, other).iter().all(|m| m.get(term).is_none()), "{other} logged {term}");
        }
    }
    // The methods table: one row per model, plain KD compared with itself as 0.
    let rows = s["methods"].as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|m| m["name"].as_str().unwrap()).collect();
    for n in [
        "student-kd",
        "student-kd+fitnets",
        "student-kd+at",
        "student-kd+rkd",
        "student-ta",
        "student-born-again g2",
        "student-kd-multi entropy",
    ] {
        assert!(names.contains(&n), "{n} not in {names:?}");
    }
    let kd = rows.iter().find(|m| m["name"] == "student-kd").unwrap();
    assert_eq!(kd["vs_kd"].as_f64(), Some(0.0));
    // The report shows the same table.
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    let kd_cell = format!("{:.1} ± {:.1}", kd["mean_errors"].as_f64().unwrap(), kd["std_errors"].as_f64().unwrap());
    assert!(html.contains("Methods over seeds") && html.contains(&kd_cell), "{kd_cell}");
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(table.contains("errors mean ± std") && table.contains("student-kd+fitnets"), "{table}");
}

/// The recipe errors the methods add: one line naming the key, before anything trains.
#[test]
fn image_method_recipe_errors_name_the_key() {
    let d = tmpdir("errors");
    let r = image_recipe(&d);
    let r = r.to_str().unwrap();
    let check = |sets: &[&str]| {
        let mut args = vec!["check", r];
        for s in sets {
            args.extend(["--set", s]);
        }
        distill(&args)
    };
    assert!(check(&[]).status.success());
    assert_error(&check(&["distill.multi_teacher.weights=[1, -1]"]), &["distill.multi_teacher.weights", "≥ 0", "-1"]);
    assert_error(&check(&["distill.multi_teacher.weights=[1]"]), &["distill.multi_teacher.weights", "2 teachers"]);
    assert_error(&check(&["teachers=[]"]), &["distill.multi_teacher", "[[teachers]]"]);
    assert_error(&check(&["distill.variants.rkd.rdk=1"]), &["distill.variants.rkd", "rdk"]);
    assert_error(&check(&["distill.variants.rkd.rkd.distance=-1"]), &["distill.variants.rkd.rkd.distance", "≥ 0"]);
    assert_error(&check(&["distill.variants.bad={}"]), &["distill.variants.bad names no term"]);
    assert_error(&check(&["distill.born_again.generations=1"]), &["distill.born_again.generations", "2..=10"]);
    assert_error(&check(&["distill.attention={weight=1}"]), &["distill.attention is for transformer"]);
    // A layer past the model and a map that is not a map are caught when the models exist,
    // before any training.
    let out = d.join("bad-layer");
    let o = distill(&[
        "run",
        r,
        "--out",
        out.to_str().unwrap(),
        "--set",
        "distill.variants.fitnets.fitnets.layers=[[7, 0]]",
    ]);
    assert_error(&o, &["distill.fitnets.layers", "[7, 0]", "past the student's 3"]);
    let out = d.join("bad-map");
    let o = distill(&[
        "run",
        r,
        "--out",
        out.to_str().unwrap(),
        "--set",
        "distill.variants.at.attention_transfer.layers=[[2, 0]]",
    ]);
    assert_error(&o, &["distill.attention_transfer.layers", "[2, 0]", "not a pair of conv feature maps"]);
}
