//! `report.html`: one self-contained page per run directory (no network: inline CSS, inline SVG
//! charts, no scripts, no external fonts).
//!
//! The page is built from what the run wrote, read as untyped JSON so that a role, a phase or a
//! field added later (`"student-kd-fitnets"`, a `method` or `label` string, a new metric)
//! appears without a change here:
//!
//! - the comparison table: every entry of `summary.json`'s `results` (image runs), `phases`, or
//!   `teacher` + `students` (LM runs); every scalar field becomes a column, nested ones under
//!   their dotted path (`validation.perplexity`, `extra.0.top1_agreement`);
//! - bars of the error-like metrics (test errors, perplexity, KL, top-1 agreement);
//! - the temperature sweep: a metric against T for each role and seed trained at several
//!   temperatures, with the same seed's untempered models as reference lines;
//! - the loss curves from `phases/<id>/metrics.jsonl` (the Trainer's lines): total loss per
//!   phase against step, and per phase its logged parts;
//! - for LM runs, per prompt the next-token tables and every decoding's generations, and how
//!   many prompts each model does not collapse on;
//! - `recipe.toml`.
//!
//! Charts are drawn with `plotters` restricted to its SVG backend and line series: it adds
//! three small crates (`plotters`, `plotters-backend`, `plotters-svg`; `num-traits` was already
//! in the tree) and compiles in about 4 s, and without its `ttf` feature it loads no fonts —
//! text stays SVG `<text>` (escaped by the backend) for the browser to render, laid out with an
//! estimated width. Axis ticks, log scales and dashed reference lines then come for free, which
//! hand-written SVG would have to reimplement. Bars are plain HTML.
//!
//! A phase's directory is joined to its summary entry by its `phase`/`id` field when it has
//! one, else by equal content (`result.json` equals the entry, or `train.json` equals the
//! entry's `train`).

mod chart;
mod prompts;
mod table;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::train::checkpoint::write_atomic;
use crate::{Error, Result};

pub use table::{format_value, Format};

/// The report's file name inside a run directory.
pub const REPORT_FILE: &str = "report.html";

/// Writes `run_dir/report.html` (atomically) from the run's files and returns its path.
///
/// Fails when `run_dir/summary.json` is missing or malformed; a phase file that cannot be read
/// (a metrics line cut short, say) is left out of the page rather than failing it.
pub fn write_report(run_dir: &Path) -> Result<PathBuf> {
    let html = render(run_dir)?;
    let path = run_dir.join(REPORT_FILE);
    write_atomic(&path, html.as_bytes())?;
    Ok(path)
}

/// [`write_report`] for the end of a run: the run's results are already written, so a failure
/// is one warning line on stderr, not an error.
pub fn write_report_or_warn(run_dir: &Path) {
    if let Err(e) = write_report(run_dir) {
        eprintln!("warning: no {REPORT_FILE} ({e}); the results are in {}", run_dir.join("summary.json").display());
    }
}

/// The page for `run_dir`, as [`write_report`] writes it.
pub fn render(run_dir: &Path) -> Result<String> {
    let run = Run::read(run_dir)?;
    Ok(page(&run))
}

/// One entry of the comparison: a model's result as the run wrote it.
#[derive(Debug, Clone)]
struct Row {
    /// The phase directory it came from, when known.
    phase: Option<String>,
    /// The entry as written in `summary.json`.
    value: Value,
}

impl Row {
    fn str(&self, key: &str) -> Option<&str> {
        self.value.get(key).and_then(Value::as_str)
    }

    /// How charts and bars name it: its role (and method/label when present), then its phase.
    fn label(&self) -> String {
        let mut parts: Vec<String> =
            ["role", "method", "label"].iter().filter_map(|k| self.str(k)).map(String::from).collect();
        if parts.is_empty() {
            parts.push(self.phase.clone().unwrap_or_else(|| "?".into()));
        } else if let Some(p) = &self.phase {
            parts.push(format!("({p})"));
        }
        parts.join(" ")
    }
}

/// A phase's training log (`metrics.jsonl`): `(step, value)` per logged line.
#[derive(Debug, Clone, Default)]
struct Curve {
    /// What the legend says: the phase, and the role of its summary entry when known.
    label: String,
    loss: Vec<(f64, f64)>,
    /// The loss parts the task logged (`hard`, `soft`, a term's name…), in first-seen order.
    parts: Vec<(String, Vec<(f64, f64)>)>,
}

/// What a Trainer metrics line holds besides the loss parts.
const METRICS_BOOKKEEPING: &[&str] = &["phase", "step", "epoch", "loss", "lr", "grad_norm", "samples_per_s"];

/// A run directory, read generically.
struct Run {
    dir: PathBuf,
    summary: Value,
    rows: Vec<Row>,
    curves: Vec<Curve>,
    recipe: Option<String>,
}

/// One phase directory's files.
struct PhaseFiles {
    id: String,
    result: Option<Value>,
    train: Option<Value>,
    metrics: Option<String>,
}

fn read_json(path: &Path) -> Option<Value> {
    std::fs::read_to_string(path).ok().and_then(|t| serde_json::from_str(&t).ok())
}

impl Run {
    fn read(dir: &Path) -> Result<Run> {
        if !dir.is_dir() {
            return Err(Error::format(dir, "not a run directory (it does not exist or is not a directory)"));
        }
        let sp = dir.join("summary.json");
        let summary: Value = if sp.is_file() {
            let text = std::fs::read_to_string(&sp).map_err(|e| Error::io(&sp, e))?;
            serde_json::from_str(&text).map_err(|e| Error::format(&sp, e.to_string()))?
        } else if dir.join("recipe.toml").is_file() {
            // A run still going, or interrupted: its finished phases and live training curves.
            serde_json::json!({ "unfinished": true })
        } else {
            return Err(Error::format(
                &sp,
                "missing, and no recipe.toml either: not a run directory (`distill run --out` makes one)",
            ));
        };
        if !summary.is_object() {
            return Err(Error::format(&sp, "expected a JSON object"));
        }
        let phases = read_phases(&dir.join("phases"));
        let mut rows: Vec<Row> = summary_entries(&summary)
            .into_iter()
            .map(|value| Row {
                phase: value.get("phase").or(value.get("id")).and_then(Value::as_str).map(String::from),
                value,
            })
            .collect();
        if rows.is_empty() {
            // A summary of another shape: the phases' own results.
            rows = phases
                .iter()
                .filter_map(|p| Some(Row { phase: Some(p.id.clone()), value: p.result.clone()? }))
                .collect();
        }
        join_phases(&mut rows, &phases);
        let curves = curves(&rows, &phases);
        let recipe = std::fs::read_to_string(dir.join("recipe.toml")).ok();
        Ok(Run { dir: dir.to_path_buf(), summary, rows, curves, recipe })
    }
}

/// The comparison's entries: `results`, else `phases`, else `teacher` followed by `students`.
fn summary_entries(s: &Value) -> Vec<Value> {
    let objects = |v: Option<&Value>| -> Vec<Value> {
        v.and_then(Value::as_array).map(|a| a.iter().filter(|x| x.is_object()).cloned().collect()).unwrap_or_default()
    };
    for key in ["results", "phases"] {
        let v = objects(s.get(key));
        if !v.is_empty() {
            return v;
        }
    }
    let mut v: Vec<Value> = s.get("teacher").filter(|t| t.is_object()).cloned().into_iter().collect();
    v.extend(objects(s.get("students")));
    v
}

/// `dir/phases/*`, sorted by name.
fn read_phases(dir: &Path) -> Vec<PhaseFiles> {
    let mut ids: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten().filter(|e| e.path().is_dir()).map(|e| e.file_name().to_string_lossy().into_owned()).collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids.into_iter()
        .map(|id| {
            let p = dir.join(&id);
            PhaseFiles {
                result: read_json(&p.join("result.json")),
                train: read_json(&p.join("train.json")),
                metrics: std::fs::read_to_string(p.join("metrics.jsonl")).ok(),
                id,
            }
        })
        .collect()
}

/// Names each row's phase: by equal `result.json`, else by `train.json` equal to its `train`.
fn join_phases(rows: &mut [Row], phases: &[PhaseFiles]) {
    let mut used: Vec<bool> = phases.iter().map(|p| rows.iter().any(|r| r.phase.as_deref() == Some(&p.id))).collect();
    for row in rows.iter_mut().filter(|r| r.phase.is_none()) {
        let by_result = phases.iter().position(|p| p.result.as_ref() == Some(&row.value));
        let by_train = || {
            let t = row.value.get("train").filter(|t| t.is_object())?;
            phases.iter().enumerate().position(|(i, p)| !used[i] && p.train.as_ref() == Some(t))
        };
        if let Some(i) = by_result.filter(|&i| !used[i]).or_else(by_train) {
            used[i] = true;
            row.phase = Some(phases[i].id.clone());
        }
    }
}

/// The phases' training logs, in the order of their rows, then the others by name.
fn curves(rows: &[Row], phases: &[PhaseFiles]) -> Vec<Curve> {
    let rank = |id: &str| rows.iter().position(|r| r.phase.as_deref() == Some(id)).unwrap_or(usize::MAX);
    let mut order: Vec<&PhaseFiles> = phases.iter().filter(|p| p.metrics.is_some()).collect();
    order.sort_by_key(|p| rank(&p.id));
    order
        .into_iter()
        .filter_map(|p| {
            let role = rows.iter().find(|r| r.phase.as_deref() == Some(&p.id)).and_then(|r| r.str("role"));
            let label = match role {
                Some(role) if role != p.id => format!("{} ({role})", p.id),
                _ => p.id.clone(),
            };
            let c = parse_metrics(label, p.metrics.as_deref()?);
            (!c.loss.is_empty()).then_some(c)
        })
        .collect()
}

/// A Trainer metrics log: `loss` and every other numeric field that is not bookkeeping (the
/// task's loss parts), against `step`. Lines that do not parse are skipped.
fn parse_metrics(label: String, text: &str) -> Curve {
    let mut c = Curve { label, ..Default::default() };
    for line in text.lines() {
        let Ok(Value::Object(m)) = serde_json::from_str::<Value>(line) else { continue };
        let Some(step) = m.get("step").and_then(Value::as_f64) else { continue };
        let finite = |v: &Value| v.as_f64().filter(|x| x.is_finite());
        if let Some(l) = m.get("loss").and_then(finite) {
            c.loss.push((step, l));
        }
        for (k, v) in &m {
            let Some(x) = finite(v).filter(|_| !METRICS_BOOKKEEPING.contains(&k.as_str())) else { continue };
            match c.parts.iter_mut().find(|(name, _)| name == k) {
                Some((_, pts)) => pts.push((step, x)),
                None => c.parts.push((k.clone(), vec![(step, x)])),
            }
        }
    }
    c
}

/// `&`, `<`, `>`, `"` and `'` as entities: safe in text and in quoted attributes.
pub fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

const CSS: &str = "
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,'DejaVu Sans',sans-serif;color:#1d2430;margin:24px auto;max-width:1150px;padding:0 16px;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #d6dbe3;padding-bottom:4px}h3{font-size:15px;margin:18px 0 6px}
.sub{color:#5a6473;margin:0 0 12px}
dl.facts{display:grid;grid-template-columns:max-content auto;gap:2px 14px;margin:8px 0}dl.facts dt{color:#5a6473}dl.facts dd{margin:0}
table{border-collapse:collapse;margin:6px 0 10px;font-size:13px}th,td{padding:3px 8px;border-bottom:1px solid #e3e7ee;text-align:left;vertical-align:top}
table.comparison td{white-space:nowrap}
th{background:#f2f4f8;font-weight:600}td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr:nth-child(even) td{background:#fafbfc}
.scroll{overflow-x:auto}
.bars td{border:none;padding:2px 8px;white-space:nowrap}.bar{height:14px;background:#4e79a7;border-radius:2px;min-width:1px}.barcell{width:100%}.bars{width:100%}
.chart svg{max-width:100%;height:auto;display:block}
.legend{display:flex;flex-wrap:wrap;gap:4px 16px;margin:4px 0 14px;font-size:13px}.legend span.sw{display:inline-block;width:22px;height:4px;vertical-align:middle;margin-right:6px;border-radius:2px}
.legend span.dash{background:none!important;border-top:3px dashed}
code.tok{background:#eef1f6;border-radius:3px;padding:0 3px;white-space:pre}
td.gen{white-space:pre-wrap;font-family:ui-monospace,'DejaVu Sans Mono',monospace;font-size:12px;max-width:760px}
tr.collapsed td{color:#9a3b3b}
pre.recipe{background:#f6f8fa;padding:10px;border-radius:4px;overflow-x:auto;font-size:12px}
.note{color:#5a6473;font-size:13px}
";

/// The whole page.
fn page(run: &Run) -> String {
    let name = run.summary.get("recipe").and_then(Value::as_str).unwrap_or("run");
    let dir_name = run.dir.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    let mut o = String::new();
    let _ = write!(
        o,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{} — distill report</title><style>{CSS}</style></head><body>\n",
        escape(name)
    );
    let _ = writeln!(o, "<h1>{}</h1>", escape(name));
    let _ = writeln!(
        o,
        "<p class=\"sub\">run directory <code>{}</code> · report by distill {}</p>",
        escape(&dir_name),
        env!("CARGO_PKG_VERSION")
    );
    if run.summary.get("unfinished").is_some() {
        o += "<p class=\"note\">This run has not finished (no summary.json yet): the phases that have, and every phase's training curve so far. <code>distill report</code> again for the rest; the run's own report replaces this page when it ends.</p>\n";
    }
    o += &facts(&run.summary);
    let columns = table::columns(&run.rows, &run.summary);
    o += "<h2>Comparison</h2>\n";
    if run.rows.is_empty() {
        o += "<p class=\"note\">summary.json lists no results.</p>\n";
    } else {
        o += &table::comparison(&run.rows, &columns);
        o += &table::bars(&run.rows, &columns);
    }
    o += &methods(&run.summary);
    o += &sweep(&run.rows);
    o += &loss_curves(&run.curves);
    o += &prompts::section(&run.summary);
    if let Some(r) = &run.recipe {
        let _ = writeln!(
            o,
            "<h2>Recipe</h2>\n<details><summary>recipe.toml</summary><pre class=\"recipe\">{}</pre></details>",
            escape(r)
        );
    }
    o += "</body></html>\n";
    o
}

/// The methods table of an image run (`summary.methods`): each model's test errors over the
/// seeds, mean ± std, and the difference to plain KD on the same seeds.
fn methods(s: &Value) -> String {
    let Some(rows) = s.get("methods").and_then(Value::as_array).filter(|r| !r.is_empty()) else {
        return String::new();
    };
    let mut o = String::from(
        "<h2>Methods over seeds</h2>\n<p class=\"note\">test errors per model, mean ± standard deviation over the seeds; vs KD: mean difference to plain KD on the same seeds (negative = fewer errors).</p>\n<table class=\"methods\"><thead><tr><th>model</th><th>seeds</th><th>errors mean ± std</th><th>vs KD</th><th>per seed</th><th>params</th></tr></thead><tbody>\n",
    );
    for r in rows {
        let num = |k: &str| r.get(k).and_then(Value::as_f64);
        let per: Vec<String> = r
            .get("test_errors")
            .and_then(Value::as_array)
            .map(|a| a.iter().map(|v| v.to_string()).collect())
            .unwrap_or_default();
        let seeds = r.get("seeds").and_then(Value::as_array).map(|a| a.len()).unwrap_or(0);
        let _ = writeln!(
            o,
            "<tr><td data-key=\"methods_model\">{}</td><td>{seeds}</td><td data-key=\"methods_mean_errors\">{:.1} ± {:.1}</td><td data-key=\"methods_vs_kd\">{}</td><td>{}</td><td>{}</td></tr>",
            escape(r.get("name").and_then(Value::as_str).unwrap_or("")),
            num("mean_errors").unwrap_or(f64::NAN),
            num("std_errors").unwrap_or(f64::NAN),
            num("vs_kd").map(|d| format!("{d:+.1}")).unwrap_or_else(|| "–".into()),
            escape(&per.join(" / ")),
            num("params").map(|p| format!("{:.2}k", p / 1e3)).unwrap_or_default(),
        );
    }
    o + "</tbody></table>\n"
}

/// The summary's scalar fields (and maps of scalars, such as `gap_recovered` per seed).
fn facts(s: &Value) -> String {
    let Some(m) = s.as_object() else { return String::new() };
    let mut items = Vec::new();
    for (k, v) in m {
        if k == "recipe" {
            continue;
        }
        match v {
            Value::Object(inner) if inner.values().all(|x| !x.is_object() && !x.is_array()) => {
                for (ik, iv) in inner {
                    items.push((format!("{k} [{ik}]"), table::format_value(k, iv)));
                }
            }
            Value::Object(_) | Value::Array(_) | Value::Null => {}
            v => items.push((k.clone(), table::format_value(k, v))),
        }
    }
    if items.is_empty() {
        return String::new();
    }
    let mut o = String::from("<dl class=\"facts\">\n");
    for (k, v) in items {
        let _ = writeln!(o, "<dt>{}</dt><dd>{}</dd>", escape(&k.replace('_', " ")), escape(&v));
    }
    o + "</dl>\n"
}

/// A model family trained at several temperatures: one line of the sweep.
struct SweepLine {
    /// What the family's rows share: their seed and every string field but their phase id.
    key: Vec<(String, String)>,
    label: String,
    points: Vec<(f64, f64)>,
}

/// What makes rows one sweep line: the seed and the string fields (role, method, label, the
/// teachers…), not the phase id, which names the temperature too.
fn sweep_key(r: &Row) -> Vec<(String, String)> {
    let Some(m) = r.value.as_object() else { return Vec::new() };
    m.iter()
        .filter(|(k, v)| {
            k.as_str() == "seed" || (v.is_string() || v.is_array()) && !["id", "phase"].contains(&k.as_str())
        })
        .map(|(k, v)| (k.clone(), v.to_string()))
        .collect()
}

/// Every family of rows (same seed and string fields) trained at two or more temperatures: a
/// metric against T, the same seed's models without a temperature as dashed reference lines.
fn sweep(rows: &[Row]) -> String {
    let Some(metric) = ["test_errors", "test_accuracy"]
        .into_iter()
        .find(|k| rows.iter().any(|r| r.value.get(k).is_some_and(Value::is_number)))
    else {
        return String::new();
    };
    let mut lines: Vec<SweepLine> = Vec::new();
    for r in rows {
        let (Some(t), Some(y)) =
            (r.value.get("temperature").and_then(Value::as_f64), r.value.get(metric).and_then(Value::as_f64))
        else {
            continue;
        };
        let key = sweep_key(r);
        match lines.iter_mut().find(|l| l.key == key) {
            Some(l) => l.points.push((t, y)),
            None => {
                let names: Vec<&str> = [r.str("role"), r.str("method"), r.str("label")].into_iter().flatten().collect();
                let seed = r.value.get("seed").map(|s| format!(" · seed {s}")).unwrap_or_default();
                lines.push(SweepLine { key, label: format!("{}{seed}", names.join(" ")), points: vec![(t, y)] });
            }
        }
    }
    lines.retain(|l| {
        let mut ts: Vec<f64> = l.points.iter().map(|p| p.0).collect();
        ts.sort_by(f64::total_cmp);
        ts.dedup();
        ts.len() >= 2
    });
    if lines.is_empty() {
        return String::new();
    }
    let mut series = Vec::new();
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for l in &mut lines {
        l.points.sort_by(|a, b| a.0.total_cmp(&b.0));
        lo = l.points.iter().fold(lo, |m, p| m.min(p.0));
        hi = l.points.iter().fold(hi, |m, p| m.max(p.0));
        series.push(chart::Series { label: l.label.clone(), points: l.points.clone(), dashed: false, markers: true });
    }
    let seed_of = |r: &Row| r.value.get("seed").map(|s| s.to_string()).unwrap_or_default();
    let seeds: Vec<String> =
        lines.iter().filter_map(|l| l.key.iter().find(|(k, _)| k == "seed").map(|(_, v)| v.clone())).collect();
    for r in rows {
        let tempered = r.value.get("temperature").is_some_and(|t| !t.is_null());
        if let (false, true, Some(y)) =
            (tempered, seeds.contains(&seed_of(r)), r.value.get(metric).and_then(Value::as_f64))
        {
            let label = format!("{} · seed {} (no T)", r.label(), seed_of(r));
            series.push(chart::Series { label, points: vec![(lo, y), (hi, y)], dashed: true, markers: false });
        }
    }
    let header = table::header(metric, &Value::Null);
    let spec =
        chart::Spec { x_desc: "temperature T".into(), y_desc: header.clone(), width: 900, height: 360, log_x: true };
    format!(
        "<h2>Temperature sweep</h2>\n<p class=\"note\">{} against the distillation temperature.</p>\n{}",
        escape(&header),
        chart::render(&spec, &series)
    )
}

/// Total loss of every phase against step, then each phase's logged parts.
fn loss_curves(curves: &[Curve]) -> String {
    if curves.is_empty() {
        return String::new();
    }
    let mut o = String::from("<h2>Training loss</h2>\n<h3>Total loss per phase</h3>\n");
    let series: Vec<chart::Series> = curves
        .iter()
        .map(|c| chart::Series { label: c.label.clone(), points: c.loss.clone(), dashed: false, markers: false })
        .collect();
    let spec = chart::Spec { x_desc: "step".into(), y_desc: "loss".into(), width: 900, height: 380, log_x: false };
    o += &chart::render(&spec, &series);
    for c in curves {
        // A part that is zero throughout (the hard term at α = 0), or the total itself (the only
        // term), says nothing on a chart: named, not drawn.
        let (zero, same, live) = c.parts.iter().fold((vec![], vec![], vec![]), |(mut z, mut s, mut l), part| {
            if part.1.iter().all(|p| p.1 == 0.0) {
                z.push(escape(&part.0));
            } else if part.1 == c.loss {
                s.push(escape(&part.0));
            } else {
                l.push(part);
            }
            (z, s, l)
        });
        if live.is_empty() {
            continue;
        }
        let mut s =
            vec![chart::Series { label: "loss (total)".into(), points: c.loss.clone(), dashed: false, markers: false }];
        s.extend(live.iter().map(|(k, pts)| chart::Series {
            label: k.clone(),
            points: pts.clone(),
            dashed: false,
            markers: false,
        }));
        let _ = writeln!(o, "<h3>Loss parts: {}</h3>", escape(&c.label));
        for (names, what) in [(zero, "zero throughout"), (same, "equal to the total")] {
            if !names.is_empty() {
                let _ = writeln!(o, "<p class=\"note\">{what}: {}</p>", names.join(", "));
            }
        }
        let spec = chart::Spec { x_desc: "step".into(), y_desc: "loss".into(), width: 900, height: 300, log_x: false };
        o += &chart::render(&spec, &s);
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_covers_markup_and_quotes() {
        assert_eq!(escape(r#"<a href="x">'&'</a>"#), "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;");
    }

    #[test]
    fn metrics_parts_are_the_non_bookkeeping_numbers() {
        let text = concat!(
            r#"{"phase":"kd","step":10,"epoch":0.1,"loss":2.0,"lr":0.1,"grad_norm":1.0,"samples_per_s":5.0,"hard":1.0,"soft":3.0}"#,
            "\n",
            "{\"phase\":\"kd\",\"step\":20,\"loss\":1.0,\"soft\":1.5,\"hidden\":0.2}\n",
            "{\"step\":30,\"loss\":\n" // cut short: skipped
        );
        let c = parse_metrics("kd".into(), text);
        assert_eq!(c.loss, [(10.0, 2.0), (20.0, 1.0)]);
        let names: Vec<&str> = c.parts.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["hard", "soft", "hidden"]);
        assert_eq!(c.parts[1].1, [(10.0, 3.0), (20.0, 1.5)]);
    }

    #[test]
    fn rows_join_their_phase_by_equal_result_or_train_record() {
        let a = serde_json::json!({"role": "teacher", "seed": 0, "test_errors": 5});
        let b = serde_json::json!({"role": "student-kd", "train": {"steps": 4, "seconds": 1.5}});
        let phases = vec![
            PhaseFiles {
                id: "kd".into(),
                result: None,
                train: Some(serde_json::json!({"steps": 4, "seconds": 1.5})),
                metrics: None,
            },
            PhaseFiles { id: "teacher-s0".into(), result: Some(a.clone()), train: None, metrics: None },
        ];
        let mut rows = vec![Row { phase: None, value: a }, Row { phase: None, value: b }];
        join_phases(&mut rows, &phases);
        assert_eq!(rows[0].phase.as_deref(), Some("teacher-s0"));
        assert_eq!(rows[1].phase.as_deref(), Some("kd"));
        assert_eq!(rows[1].label(), "student-kd (kd)");
    }
}
