//! `report.html`: written at the end of a run and again by `distill report`, then rendered by
//! headless Chromium. The screenshot must be a drawn page (charts and bars in colour, many
//! colours, not blank) and both the file and Chromium's rendered DOM must hold the run's
//! numbers exactly as summary.json has them, formatted as the page formats them.
//!
//! Chromium is required (scripts/setup.sh installs it): without it these tests fail, they do
//! not skip.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{json, Value};

mod common;
use common::{distill, stderr, summary, tmpdir};

/// The report's first chart colour (Tableau 10 blue), also the bars' colour.
const BLUE: [u8; 3] = [0x4e, 0x79, 0xa7];
/// Its second chart colour (Tableau 10 orange): only a chart with two or more lines has it.
const ORANGE: [u8; 3] = [0xf2, 0x8e, 0x2b];

/// A teacher, a scratch student and KD students at T = 4 and T = 2 (a two-point sweep).
fn tiny_image_run(dir: &Path) -> PathBuf {
    common::write_quadrant_csv(&dir.join("train.csv"), 400, 1);
    common::write_quadrant_csv(&dir.join("test.csv"), 100, 2);
    let r = dir.join("tiny.toml");
    std::fs::write(
        &r,
        format!(
            r#"
task = "image-classification"
name = "tiny-report"
seeds = [0]
threads = 1
[data]
format = "csv"
train = "{0}/train.csv"
test = "{0}/test.csv"
pixel_scale = 16.0
[teacher]
model = {{ type = "mlp", hidden = [32] }}
train = {{ epochs = 4, batch_size = 50, lr = 1e-2 }}
[student]
model = {{ type = "mlp", hidden = [8] }}
train = {{ epochs = 4, batch_size = 50, lr = 1e-2 }}
[distill]
temperature = 4.0
alpha = 0.9
sweep = [2.0]
"#,
            dir.display()
        ),
    )
    .unwrap();
    let out = dir.join("run");
    let o = distill(&["run", r.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    out
}

/// `distill report DIR`: succeeds, prints the report's path, and the file is there.
fn report(dir: &Path) -> String {
    let o = distill(&["report", dir.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let path = dir.join("report.html");
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), path.to_str().unwrap());
    std::fs::read_to_string(path).unwrap()
}

fn chromium() -> &'static str {
    for c in ["chromium", "chromium-browser"] {
        if Command::new(c).arg("--version").output().is_ok_and(|o| o.status.success()) {
            return c;
        }
    }
    panic!("chromium is not installed: these tests render report.html in headless Chromium; run scripts/setup.sh (it installs Debian's `chromium`)");
}

/// Headless Chromium on `html` with its own profile; returns its output.
fn chromium_run(html: &Path, profile: &Path, extra: &[String]) -> Output {
    let mut cmd = Command::new(chromium());
    cmd.args(["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--disable-dev-shm-usage"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(format!("file://{}", html.display()));
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "chromium failed on {}: {}", html.display(), stderr(&o));
    o
}

/// What a screenshot holds.
struct Shot {
    width: u32,
    height: u32,
    /// Pixels darker than near-white in some channel.
    non_white: usize,
    distinct: usize,
    /// Pixels within a few levels of [`BLUE`] and of [`ORANGE`].
    blue: usize,
    orange: usize,
}

/// Renders `html` at 1200 × 2000 and decodes the PNG; also returns the rendered DOM.
fn render(html: &Path, work: &Path) -> (Shot, String) {
    let png_path = work.join("shot.png");
    chromium_run(
        html,
        &work.join("profile-shot"),
        &[format!("--screenshot={}", png_path.display()), "--window-size=1200,2000".into()],
    );
    let dom = chromium_run(html, &work.join("profile-dom"), &["--dump-dom".into()]);
    let bytes = std::fs::read(&png_path).unwrap();
    let mut dec = png::Decoder::new(std::io::Cursor::new(bytes));
    dec.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = dec.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let bpp = info.line_size / info.width as usize;
    assert!(bpp >= 3, "{:?}", info.color_type);
    let mut shot = Shot { width: info.width, height: info.height, non_white: 0, distinct: 0, blue: 0, orange: 0 };
    let mut colors = HashSet::new();
    for row in buf[..info.line_size * info.height as usize].chunks(info.line_size) {
        for px in row.chunks(bpp) {
            let rgb = [px[0], px[1], px[2]];
            colors.insert(rgb);
            if rgb.iter().any(|&c| c < 235) {
                shot.non_white += 1;
            }
            let near = |want: [u8; 3]| rgb.iter().zip(want).all(|(&c, w)| c.abs_diff(w) <= 6);
            shot.blue += near(BLUE) as usize;
            shot.orange += near(ORANGE) as usize;
        }
    }
    shot.distinct = colors.len();
    (shot, String::from_utf8(dom.stdout).unwrap())
}

/// `(tables that scroll sideways, the page's width, comparison tables)` of `html` rendered in a
/// window 1200 px wide (a probe script, added to a copy, writes them where `--dump-dom` shows them).
fn layout_at_1200(html: &Path, work: &Path) -> (usize, u32, usize) {
    const PROBE: &str = "<script>document.body.setAttribute('data-probe', [...document.querySelectorAll('.scroll')].filter(e => e.scrollWidth > e.clientWidth).length + ':' + document.documentElement.scrollWidth + ':' + document.querySelectorAll('table.comparison').length)</script></body>";
    let probe = work.join("probe.html");
    std::fs::write(&probe, std::fs::read_to_string(html).unwrap().replace("</body>", PROBE)).unwrap();
    let o = chromium_run(&probe, &work.join("profile-probe"), &["--dump-dom".into(), "--window-size=1200,2000".into()]);
    let dom = String::from_utf8_lossy(&o.stdout);
    let v = dom.split("data-probe=\"").nth(1).and_then(|r| r.split('"').next()).expect("the probe ran");
    let n: Vec<&str> = v.split(':').collect();
    (n[0].parse().unwrap(), n[1].parse().unwrap(), n[2].parse().unwrap())
}

/// The text of every table cell of field `key` (`data-key`), in order.
fn cells(html: &str, key: &str) -> Vec<String> {
    let tag = format!("data-key=\"{key}\"");
    html.match_indices(&tag)
        .map(|(i, _)| {
            let rest = &html[i..];
            let start = rest.find('>').unwrap() + 1;
            rest[start..start + rest[start..].find("</td>").unwrap()].to_string()
        })
        .collect()
}

/// The page is drawn: text, rules, bars (blue) and, when `orange`, a chart of several lines.
/// (The pages tested here measure 3–6 % non-white, 2,000+ colours, 3,000+ blue pixels, and
/// about 1,900 orange ones for the image run's charts.)
fn assert_drawn(shot: &Shot, what: &str, orange: bool) {
    assert_eq!((shot.width, shot.height), (1200, 2000), "{what}");
    let area = (shot.width * shot.height) as usize;
    assert!(shot.non_white > area / 50, "{what}: only {} non-white pixels of {area}", shot.non_white);
    assert!(shot.distinct > 500, "{what}: only {} distinct colours", shot.distinct);
    assert!(shot.blue > 1500, "{what}: only {} pixels of the chart/bar blue", shot.blue);
    if orange {
        assert!(shot.orange > 500, "{what}: only {} pixels of the second curve's orange", shot.orange);
    }
}

/// A real (tiny) image run: the run itself writes report.html; `distill report` rewrites it;
/// the comparison, the sweep and the loss curves are in the rendered page.
#[test]
fn image_run_report_renders_with_the_runs_numbers() {
    let d = tmpdir("image");
    let out = tiny_image_run(&d);
    let html_path = out.join("report.html");
    assert!(html_path.is_file(), "the run did not write report.html");
    std::fs::remove_file(&html_path).unwrap();
    let html = report(&out);

    let s = summary(&out);
    let res = s["results"].as_array().unwrap();
    let roles: Vec<String> = res.iter().map(|r| r["role"].as_str().unwrap().to_string()).collect();
    assert_eq!(roles, ["teacher", "student-scratch", "student-kd", "student-kd"]);
    let errors: Vec<String> = res.iter().map(|r| r["test_errors"].as_i64().unwrap().to_string()).collect();
    let accuracy: Vec<String> =
        res.iter().map(|r| format!("{:.2}%", r["test_accuracy"].as_f64().unwrap() * 100.0)).collect();
    let temps = ["–", "–", "4", "2"];

    let (shot, dom) = render(&html_path, &d);
    for (page, what) in [(&html, "report.html"), (&dom, "rendered DOM")] {
        assert_eq!(cells(page, "role"), roles, "{what}");
        assert_eq!(cells(page, "test_errors"), errors, "{what}");
        assert_eq!(cells(page, "test_accuracy"), accuracy, "{what}");
        assert_eq!(cells(page, "temperature"), temps, "{what}");
        // Each row is joined to its phase directory.
        for id in ["teacher-s0", "scratch-s0", "kd-s0-T4", "kd-s0-T2"] {
            assert!(page.contains(&format!("<td>{id}</td>")), "{what}: no row for phase {id}");
        }
        assert!(page.contains("<h2>Temperature sweep</h2>"), "{what}");
        assert!(page.contains("<h2>Training loss</h2>"), "{what}");
        // Loss curves: one line per phase; the KD phases also chart their hard and soft parts;
        // the sweep: the KD line and two reference lines (teacher, scratch).
        assert!(page.matches("<svg").count() >= 4, "{what}");
        assert!(page.contains("Loss parts: kd-s0-T2 (student-kd)"), "{what}");
    }
    assert!(html.contains("student-kd · seed 0"), "sweep legend");
    // Self-contained: nothing to fetch, nothing to run.
    for needle in ["src=", "href=", "<link", "<script", "@import", "url("] {
        assert!(!html.contains(needle), "report.html contains `{needle}`");
    }
    assert_drawn(&shot, "image report", true);

    // Roles and fields added later show up, escaped, without a code change.
    let extra = tmpdir("generic");
    let mut s2 = s.clone();
    s2["results"].as_array_mut().unwrap().push(json!({
        "role": "born-again-g2", "method": "fitnets <hint>", "seed": 0, "temperature": 3.0,
        "test_errors": 7, "test_accuracy": 0.93, "new_score": 0.5
    }));
    std::fs::write(extra.join("summary.json"), serde_json::to_string(&s2).unwrap()).unwrap();
    let h2 = report(&extra);
    assert_eq!(cells(&h2, "role").last().unwrap(), "born-again-g2");
    assert_eq!(cells(&h2, "method"), ["–", "–", "–", "–", "fitnets &lt;hint&gt;"]);
    assert_eq!(cells(&h2, "new_score").last().unwrap(), "0.5");
    assert_eq!(cells(&h2, "test_errors").last().unwrap(), "7");
    assert!(!h2.contains("<hint>"));
}

/// An LM run's summary (the shape `experiments::lm` writes), with markup in its texts.
fn lm_summary() -> Value {
    let scores = |ppl: f64, kl: Option<f64>, agree: Option<f64>| json!({"tokens": 8128, "nll": ppl.ln(), "perplexity": ppl, "kl_to_teacher": kl, "top1_agreement": agree});
    let model = |role: &str, ppl: f64, kl: Option<f64>, agree: Option<f64>, train: Value| {
        json!({
            "role": role, "params": 79219008, "size_bytes": 316906312, "compression_ratio": 1.698014294751078,
            "tokens_per_s": 945.2, "validation": scores(ppl, kl, agree),
            "extra": [scores(ppl * 1.1, kl.map(|k| k + 0.3), agree.map(|a| a - 0.03))],
            "train": train, "path": format!("runs/x/{role}")
        })
    };
    let gen = |text: &str, d2: f64| json!({"text": text, "tokens": 50, "distinct_2": d2, "repetition_rate": 0.3});
    json!({
        "recipe": "smollm2-prune",
        "teacher": model("teacher", 65.04663997037028, None, None, Value::Null),
        "students": [
            model("student-pruned", 610.8772451063262, Some(2.5885932705896892), Some(0.27989665354330706), Value::Null),
            model("student-kd", 213.92464054260546, Some(1.5504011413120626), Some(0.39431594488188976),
                  json!({"steps": 40, "final_loss": 1.410064697265625, "seconds": 203.29633286, "resumed_from": null})),
        ],
        "prompts": [{
            "prompt": "The capital of <France> is",
            "top_k": [
                ["teacher", [{"token": " Paris", "id": 7042, "prob": 0.7725387}, {"token": " the", "id": 260, "prob": 0.06452251}]],
                ["student-kd", [{"token": " a", "id": 253, "prob": 0.153}, {"token": "\n", "id": 198, "prob": 0.059}]]
            ],
            "greedy": [["teacher", gen(" Paris.<script>alert(1)</script>", 0.63)], ["student-kd", gen(" a city a city a city", 0.33)]],
            "penalized": [["teacher", gen(" Paris & Lyon", 1.0)], ["student-kd", gen(" a city where", 1.0)]],
            "sampled": [["teacher", gen(" Paris.", 1.0)], ["student-kd", gen(" made by", 0.84)]]
        }],
        "extra_sources": ["/assets/gpl-3.0.txt"],
        "train_tokens": 1276032,
        "validation_tokens": 51200,
        "ppl_ratio_kd_over_scratch": 0.9452053104032309,
        "repetition_penalty": 1.2,
        "teacher_train_dtype": "f32"
    })
}

/// An LM run directory (summary, a KD phase with its log): the table, bars, next-token tables
/// and generations are in the rendered page, markup in texts escaped.
#[test]
fn lm_run_report_renders_scores_tables_and_generations() {
    let d = tmpdir("lm");
    let run = d.join("run");
    let s = lm_summary();
    std::fs::create_dir_all(run.join("phases/kd")).unwrap();
    std::fs::create_dir_all(run.join("phases/pruned")).unwrap();
    std::fs::write(run.join("summary.json"), serde_json::to_string_pretty(&s).unwrap()).unwrap();
    std::fs::write(run.join("phases/kd/train.json"), s["students"][1]["train"].to_string()).unwrap();
    std::fs::write(
        run.join("phases/pruned/train.json"),
        r#"{"steps": 0, "final_loss": 0.0, "seconds": 0.0, "resumed_from": null}"#,
    )
    .unwrap();
    let log: String = (1..=40)
        .map(|i| {
            let soft = 1.4 + 3.0 / i as f64;
            format!(
                "{{\"phase\":\"kd\",\"step\":{i},\"epoch\":0.01,\"loss\":{soft},\"lr\":0.0005,\"grad_norm\":1.0,\"samples_per_s\":1.6,\"hard\":0.0,\"soft\":{soft}}}\n"
            )
        })
        .collect();
    std::fs::write(run.join("phases/kd/metrics.jsonl"), log).unwrap();
    let html = report(&run);
    let (shot, dom) = render(&run.join("report.html"), &d);

    let models = [&s["teacher"], &s["students"][0], &s["students"][1]];
    let ppl: Vec<String> =
        models.iter().map(|m| format!("{:.2}", m["validation"]["perplexity"].as_f64().unwrap())).collect();
    assert_eq!(ppl, ["65.05", "610.88", "213.92"]);
    let extra_ppl: Vec<String> =
        models.iter().map(|m| format!("{:.2}", m["extra"][0]["perplexity"].as_f64().unwrap())).collect();
    // Quotes in text: entities in the file, literal in Chromium's serialization of its DOM.
    let unquote = |s: &str| s.replace("&quot;", "\"").replace("&#39;", "'");
    for (page, what) in [(&unquote(&html), "report.html"), (&unquote(&dom), "rendered DOM")] {
        assert_eq!(cells(page, "role"), ["teacher", "student-pruned", "student-kd"], "{what}");
        assert_eq!(cells(page, "validation.perplexity"), ppl, "{what}");
        assert_eq!(cells(page, "validation.top1_agreement"), ["–", "27.99%", "39.43%"], "{what}");
        assert_eq!(cells(page, "validation.kl_to_teacher"), ["–", "2.589", "1.550"], "{what}");
        assert_eq!(cells(page, "extra.0.perplexity"), extra_ppl, "{what}");
        assert_eq!(cells(page, "tokens_per_s"), ["945", "945", "945"], "{what}");
        assert_eq!(cells(page, "size_bytes"), ["316.91 MB"; 3], "{what}");
        // The KD row found its phase through train.json; the teacher has none.
        assert!(page.contains("<td>kd</td>") && page.contains("<td>–</td>"), "{what}");
        // Bars for PPL (both sources), KL and agreement.
        for h in ["val PPL", "gpl-3.0.txt PPL", "val KL(t‖s)", "val top-1 agreement"] {
            assert!(page.contains(&format!("<h3>{h} <span")), "{what}: no bars for {h}");
        }
        // Next-token table and generations, escaped.
        assert!(page.contains("<code class=\"tok\">\" Paris\"</code> 77.3%"), "{what}");
        assert!(page.contains("<code class=\"tok\">\"\\n\"</code> 5.9%"), "{what}");
        assert!(page.contains("Paris.&lt;script&gt;alert(1)&lt;/script&gt;"), "{what}");
        assert!(page.contains("The capital of &lt;France&gt; is"), "{what}");
        assert!(page.contains("greedy + repetition penalty 1.2"), "{what}");
        assert!(page.contains("<tr class=\"collapsed\"><td>student-kd</td>"), "{what}");
        // One phase logged: its loss curve, legend named after its role.
        assert!(page.contains("kd (student-kd)"), "{what}");
    }
    assert!(!html.contains("<script>"), "unescaped markup");
    assert_drawn(&shot, "LM report", false);
    // At 1200 px nothing scrolls sideways: the comparison's columns continue in a second table.
    let (scrolling, width, tables) = layout_at_1200(&run.join("report.html"), &d);
    assert_eq!(scrolling, 0, "a table scrolls sideways at 1200 px");
    assert!(width <= 1200, "the page is {width} px wide");
    assert!(tables >= 2, "{tables} comparison tables");
}

/// A directory that is not a finished run: one error line naming summary.json, non-zero exit,
/// nothing written.
#[test]
fn report_without_summary_is_one_clear_error() {
    let d = tmpdir("missing");
    let o = distill(&["report", d.to_str().unwrap()]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: ") && err.contains("summary.json") && err.contains("missing"), "{err}");
    assert!(!d.join("report.html").exists());
    let o = distill(&["report", d.join("nope").to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("nope") && stderr(&o).contains("not a run directory"), "{}", stderr(&o));
}
