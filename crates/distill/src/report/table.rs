//! The comparison table and the metric bars: every scalar field of the summary's entries is a
//! column, named and formatted by its key (known keys get a header and a unit, others show as
//! their dotted path).

use std::fmt::Write as _;

use serde_json::Value;

use super::{escape, Row};

/// How a value is printed, chosen from its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Integral counts, printed in full (`953`).
    Int,
    /// A fraction as a percentage with this many decimals (`90.47%`).
    Percent(usize),
    /// Fixed decimals (`213.92`).
    Fixed(usize),
    /// A parameter count: `1.28M`, `8.9k`.
    Count,
    /// Bytes: `12.97 MB`.
    Bytes,
    /// A ratio: `2.54×`.
    Ratio,
    /// Integral values as integers, others to four significant digits.
    General,
}

/// The last path segment that is not an index: `extra.0.perplexity` → `perplexity`.
fn leaf(key: &str) -> &str {
    key.rsplit('.').find(|s| s.parse::<usize>().is_err()).unwrap_or(key)
}

impl Format {
    /// The format of the field at `key` (a dotted path).
    pub fn of(key: &str) -> Format {
        let l = leaf(key);
        match l {
            "test_errors" | "errors" | "steps" | "test_total" | "train_examples" | "labeled_examples" | "tokens" => {
                Format::Int
            }
            "perplexity" => Format::Fixed(2),
            "params" | "trainable_params" => Format::Count,
            "peak_rss_mb" => Format::Fixed(0),
            "size_bytes" => Format::Bytes,
            "compression_ratio" => Format::Ratio,
            "tokens_per_s" | "samples_per_s" => Format::Fixed(0),
            "nll" => Format::Fixed(4),
            _ if key.contains("gap_recovered") => Format::Percent(1),
            _ if l.ends_with("accuracy") || l.ends_with("agreement") => Format::Percent(2),
            _ if l.starts_with("kl") => Format::Fixed(3),
            _ if l.ends_with("seconds") => Format::Fixed(1),
            _ if l.starts_with("latency") => Format::Fixed(2),
            _ if l.ends_with("loss") => Format::Fixed(4),
            _ => Format::General,
        }
    }

    fn number(self, x: f64) -> String {
        if !x.is_finite() {
            return x.to_string();
        }
        let scaled = |v: f64, units: &[(f64, &str)], small: &dyn Fn(f64) -> String| {
            units
                .iter()
                .find(|(u, _)| v.abs() >= *u)
                .map(|(u, s)| format!("{:.2}{s}", v / u))
                .unwrap_or_else(|| small(v))
        };
        match self {
            Format::Int if x.fract() == 0.0 => format!("{x:.0}"),
            Format::Int | Format::General => general(x),
            Format::Percent(d) => format!("{:.d$}%", x * 100.0),
            Format::Fixed(d) => format!("{x:.d$}"),
            Format::Count => scaled(x, &[(1e9, "G"), (1e6, "M"), (1e3, "k")], &|v| format!("{v:.0}")),
            Format::Bytes => scaled(x, &[(1e9, " GB"), (1e6, " MB"), (1e3, " kB")], &|v| format!("{v:.0} B")),
            Format::Ratio => format!("{x:.2}×"),
        }
    }
}

/// Integral values as integers, others to four significant digits, trailing zeros dropped.
fn general(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        return format!("{x:.0}");
    }
    let mag = x.abs().log10().floor() as i32;
    if !(-3..15).contains(&mag) {
        return format!("{x:.3e}");
    }
    let d = (3 - mag).clamp(0, 6) as usize;
    let s = format!("{x:.d$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// A JSON value as the report prints the field `key`: numbers by [`Format::of`], strings as they
/// are, `null` as a dash. Not escaped.
pub fn format_value(key: &str, v: &Value) -> String {
    match v {
        Value::Null => "–".into(),
        Value::Bool(b) => (if *b { "yes" } else { "no" }).into(),
        Value::String(s) => s.clone(),
        Value::Number(n) => n.as_f64().map(|x| Format::of(key).number(x)).unwrap_or_else(|| n.to_string()),
        Value::Array(a) if a.iter().all(is_scalar) => {
            a.iter().map(|x| format_value(key, x)).collect::<Vec<_>>().join(", ")
        }
        v => v.to_string(),
    }
}

/// Known leaf keys: their place in the table and their header.
const KNOWN: &[(&str, &str)] = &[
    ("role", "role"),
    ("method", "method"),
    ("label", "label"),
    ("seed", "seed"),
    ("temperature", "T"),
    ("alpha", "α"),
    ("test_errors", "test errors"),
    ("test_total", "test images"),
    ("test_accuracy", "test accuracy"),
    ("perplexity", "PPL"),
    ("kl_to_teacher", "KL(t‖s)"),
    ("top1_agreement", "top-1 agreement"),
    ("params", "params"),
    ("size_bytes", "size"),
    ("compression_ratio", "compression"),
    ("tokens_per_s", "tokens/s"),
    ("latency_ms_per_1k", "ms / 1k images"),
    ("train_examples", "train examples"),
    ("labeled_examples", "labeled"),
    ("steps", "steps"),
    ("final_loss", "final loss"),
    ("train_seconds", "train time (s)"),
    ("peak_rss_mb", "peak RSS (MB)"),
    ("trainable_params", "trainable params"),
    ("seconds", "time (s)"),
];

/// Fields not worth a column: where a model lies, bookkeeping, what perplexity already says.
fn hidden(key: &str) -> bool {
    matches!(key, "path" | "phase" | "id") || matches!(leaf(key), "nll" | "resumed_from") || key.ends_with(".tokens")
}

/// A column of the comparison.
#[derive(Debug, Clone)]
pub(super) struct Column {
    /// The field's dotted path in an entry.
    pub key: String,
    pub header: String,
}

fn is_scalar(v: &Value) -> bool {
    !v.is_object() && !v.is_array()
}

/// Every scalar of `v` under its dotted path: objects and short arrays of objects are walked
/// (`extra.0.perplexity`); an array of scalars is one field (`taught_by`).
fn flatten(prefix: &str, v: &Value, out: &mut Vec<(String, Value)>) {
    let join = |k: &str| if prefix.is_empty() { k.to_string() } else { format!("{prefix}.{k}") };
    match v {
        Value::Object(m) => m.iter().for_each(|(k, x)| flatten(&join(k), x, out)),
        Value::Array(a) if a.is_empty() => {}
        Value::Array(a) if a.iter().all(is_scalar) => out.push((prefix.to_string(), v.clone())),
        Value::Array(a) if a.len() <= 16 => {
            a.iter().enumerate().for_each(|(i, x)| flatten(&join(&i.to_string()), x, out))
        }
        Value::Array(_) => {}
        v => out.push((prefix.to_string(), v.clone())),
    }
}

/// The field at dotted path `key` of `v`.
pub(super) fn lookup<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    key.split('.').try_fold(v, |v, k| match v {
        Value::Array(a) => a.get(k.parse::<usize>().ok()?),
        v => v.get(k),
    })
}

/// The header of field `key`; `extra.N.…` is named after the summary's `extra_sources[N]`.
pub(super) fn header(key: &str, summary: &Value) -> String {
    let l = leaf(key);
    let name =
        KNOWN.iter().find(|(k, _)| *k == l).map(|(_, h)| (*h).to_string()).unwrap_or_else(|| l.replace('_', " "));
    let segs: Vec<&str> = key.split('.').collect();
    let prefix = match segs.as_slice() {
        [_] => String::new(),
        ["validation", ..] => "val ".into(),
        ["extra", i, ..] => {
            let src =
                i.parse::<usize>().ok().and_then(|i| summary.get("extra_sources")?.get(i)?.as_str().map(String::from));
            let short =
                src.map(|s| s.rsplit('/').next().unwrap_or(&s).to_string()).unwrap_or_else(|| format!("extra {i}"));
            format!("{short} ")
        }
        [first, ..] if *first != l => format!("{} ", first.replace('_', " ")),
        [..] => String::new(),
    };
    format!("{prefix}{name}")
}

/// Where a column goes: known fields in `KNOWN`'s order (other strings after the labels),
/// unknown ones after; then by prefix (top level, validation, extra sources in order, others,
/// training); then as first seen.
fn rank(key: &str, is_string: bool) -> (usize, usize) {
    let l = leaf(key);
    let known = KNOWN.iter().position(|(k, _)| *k == l);
    let field = match (known, is_string) {
        (Some(i), _) => i * 2,
        (None, true) => 5, // after role/method/label (0, 2, 4), before seed (6)
        (None, false) => KNOWN.len() * 2,
    };
    let segs: Vec<&str> = key.split('.').collect();
    let prefix = match segs.as_slice() {
        [_] => 0,
        ["validation", ..] => 1,
        ["extra", i, ..] => 2 + i.parse::<usize>().unwrap_or(0),
        ["train", ..] => 1000,
        _ => 500,
    };
    (field, prefix)
}

/// The table's columns: every scalar field that some entry sets (not `null`).
pub(super) fn columns(rows: &[Row], summary: &Value) -> Vec<Column> {
    let mut seen: Vec<(String, bool)> = Vec::new();
    for r in rows {
        let mut flat = Vec::new();
        flatten("", &r.value, &mut flat);
        for (k, v) in flat {
            if v.is_null() || hidden(&k) {
                continue;
            }
            if !seen.iter().any(|(s, _)| *s == k) {
                seen.push((k, v.is_string() || v.is_array()));
            }
        }
    }
    let mut order: Vec<(usize, (String, bool))> = seen.into_iter().enumerate().collect();
    order.sort_by_key(|(i, (k, s))| (rank(k, *s), *i));
    order.into_iter().map(|(_, (key, _))| Column { header: header(&key, summary), key }).collect()
}

/// The page's text width (CSS `max-width` 1150 px less padding) that one table fills at most: a
/// window of 1200 px shows every table without scrolling.
const TABLE_PX: f64 = 1100.0;

/// A column's rendered width, estimated from its longest cell and its header's longest word
/// (headers wrap between words when a table needs the room): 13 px type, DejaVu Sans digits are
/// 8.3 px, 8 px padding a side.
fn width_px(header: &str, cells: &[String]) -> f64 {
    let cell = cells.iter().map(|c| c.chars().count()).max().unwrap_or(0);
    let word = header.split(' ').map(|w| w.chars().count()).max().unwrap_or(0);
    cell.max(word) as f64 * 8.4 + 16.0
}

/// The comparison: a row per entry, a column per field; every cell carries its field's key
/// (`data-key`) and its exact value (`title`). Columns that would not fit [`TABLE_PX`] continue
/// in further tables (in column order: labels, scores, size and speed, training), each repeating
/// the row labels (phase and role) so that it reads alone.
pub(super) fn comparison(rows: &[Row], columns: &[Column]) -> String {
    let with_phase = rows.iter().any(|r| r.phase.is_some());
    let text = |r: &Row, c: &Column| format_value(&c.key, lookup(&r.value, &c.key).unwrap_or(&Value::Null));
    let label_cols: Vec<&Column> = columns.iter().filter(|c| c.key == "role").collect();
    let phase_px = if with_phase {
        width_px("phase", &rows.iter().map(|r| r.phase.clone().unwrap_or_default()).collect::<Vec<_>>())
    } else {
        0.0
    };
    let labels_px = phase_px
        + label_cols
            .iter()
            .map(|c| width_px(&c.header, &rows.iter().map(|r| text(r, c)).collect::<Vec<_>>()))
            .sum::<f64>();
    let mut chunks: Vec<Vec<&Column>> = vec![Vec::new()];
    let mut used = labels_px;
    for c in columns.iter().filter(|c| c.key != "role") {
        let w = width_px(&c.header, &rows.iter().map(|r| text(r, c)).collect::<Vec<_>>());
        let last = chunks.last_mut().expect("one chunk");
        if used + w > TABLE_PX && !last.is_empty() {
            chunks.push(vec![c]);
            used = labels_px + w;
        } else {
            last.push(c);
            used += w;
        }
    }
    let mut o = String::new();
    for (i, chunk) in chunks.iter().enumerate() {
        o += "<div class=\"scroll\"><table class=\"comparison\">\n<tr>";
        if with_phase {
            o += "<th>phase</th>";
        }
        for c in label_cols.iter().chain(chunk) {
            let _ = write!(o, "<th title=\"{}\">{}</th>", escape(&c.key), escape(&c.header));
        }
        o += "</tr>\n";
        for r in rows {
            o += "<tr>";
            if with_phase {
                let _ = write!(o, "<td>{}</td>", escape(r.phase.as_deref().unwrap_or("–")));
            }
            for c in &label_cols {
                // The first table's labels carry the key; the repeats are labels only.
                let key = if i == 0 { format!(" data-key=\"{}\"", escape(&c.key)) } else { String::new() };
                let _ = write!(o, "<td{key}>{}</td>", escape(&text(r, c)));
            }
            for c in chunk {
                let v = lookup(&r.value, &c.key).unwrap_or(&Value::Null);
                let class = if v.is_number() { " class=\"num\"" } else { "" };
                let exact = match v {
                    Value::String(s) => s.clone(),
                    v => v.to_string(),
                };
                let _ = write!(
                    o,
                    "<td{class} data-key=\"{}\" title=\"{}\">{}</td>",
                    escape(&c.key),
                    escape(&exact),
                    escape(&format_value(&c.key, v))
                );
            }
            o += "</tr>\n";
        }
        o += "</table></div>\n";
    }
    o
}

/// Metrics drawn as bars, by leaf key, and which way is better.
const BARRED: &[(&str, &str)] = &[
    ("test_errors", "lower is better"),
    ("perplexity", "lower is better"),
    ("kl_to_teacher", "lower is better"),
    ("top1_agreement", "higher is better"),
];

/// A bar chart per error-like metric that two or more entries report.
pub(super) fn bars(rows: &[Row], columns: &[Column]) -> String {
    let mut blocks = Vec::new();
    for c in columns {
        let Some((_, better)) = BARRED.iter().find(|(k, _)| *k == leaf(&c.key)) else { continue };
        let vals: Vec<(String, f64)> = rows
            .iter()
            .filter_map(|r| Some((r.label(), lookup(&r.value, &c.key)?.as_f64().filter(|x| x.is_finite())?)))
            .collect();
        if vals.len() < 2 {
            continue;
        }
        let max = vals.iter().fold(0.0f64, |m, v| m.max(v.1.abs()));
        let mut b = format!(
            "<div><h3>{} <span class=\"note\">({better})</span></h3><table class=\"bars\">\n",
            escape(&c.header)
        );
        for (label, v) in &vals {
            let w = if max > 0.0 { 100.0 * v.abs() / max } else { 0.0 };
            let _ = writeln!(
                b,
                "<tr><td>{}</td><td class=\"barcell\"><div class=\"bar\" style=\"width:{w:.1}%\"></div></td><td class=\"num\">{}</td></tr>",
                escape(label),
                escape(&Format::of(&c.key).number(*v))
            );
        }
        blocks.push(b + "</table></div>\n");
    }
    if blocks.is_empty() {
        return String::new();
    }
    format!(
        "<div style=\"display:grid;grid-template-columns:repeat(auto-fill,minmax(540px,1fr));gap:0 24px\">\n{}</div>\n",
        blocks.concat()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_are_formatted_by_their_key() {
        assert_eq!(format_value("test_errors", &json!(953)), "953");
        assert_eq!(format_value("test_accuracy", &json!(0.9047000000000001)), "90.47%");
        assert_eq!(format_value("validation.perplexity", &json!(213.92464054260546)), "213.92");
        assert_eq!(format_value("extra.0.kl_to_teacher", &json!(1.864087942028183)), "1.864");
        assert_eq!(format_value("params", &json!(1276810)), "1.28M");
        assert_eq!(format_value("size_bytes", &json!(5107744)), "5.11 MB");
        assert_eq!(format_value("compression_ratio", &json!(2.5386345658320346)), "2.54×");
        assert_eq!(format_value("temperature", &json!(2.0)), "2");
        assert_eq!(format_value("gap_recovered_mean", &json!(0.0989010989010989)), "9.9%");
        assert_eq!(format_value("something_new", &json!(0.123456)), "0.1235");
        assert_eq!(format_value("alpha", &json!(0.9)), "0.9");
        assert_eq!(format_value("alpha", &Value::Null), "–");
        assert_eq!(format_value("taught_by", &json!(["teacher-s0", "teacher-s1"])), "teacher-s0, teacher-s1");
    }

    #[test]
    fn columns_cover_every_field_known_ones_first() {
        let rows = vec![
            Row {
                phase: None,
                value: json!({"role": "teacher", "validation": {"perplexity": 65.0, "nll": 4.1, "tokens": 10}, "params": 10}),
            },
            Row {
                phase: Some("kd".into()),
                value: json!({"role": "student-kd", "method": "fitnets", "validation": {"perplexity": 213.9, "kl_to_teacher": 1.5},
                              "extra": [{"perplexity": 241.5}], "params": 5, "new_metric": 0.5, "path": "x",
                              "taught_by": ["teacher"], "nothing": []}),
            },
        ];
        let summary = json!({"extra_sources": ["/data/gpl-3.txt"]});
        let keys: Vec<(String, String)> = columns(&rows, &summary).into_iter().map(|c| (c.key, c.header)).collect();
        let want = [
            ("role", "role"),
            ("method", "method"),
            ("taught_by", "taught by"),
            ("validation.perplexity", "val PPL"),
            ("extra.0.perplexity", "gpl-3.txt PPL"),
            ("validation.kl_to_teacher", "val KL(t‖s)"),
            ("params", "params"),
            ("new_metric", "new metric"),
        ];
        let want: Vec<(String, String)> = want.iter().map(|(k, h)| (k.to_string(), h.to_string())).collect();
        assert_eq!(keys, want);
        assert_eq!(lookup(&rows[1].value, "extra.0.perplexity"), Some(&json!(241.5)));
    }
}
