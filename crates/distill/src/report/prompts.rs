//! LM runs: per prompt, every model's next-token table and its generations under each decoding,
//! then how many prompts each model does not collapse on. Read from `summary.json`'s `prompts`
//! by shape, not by name: a list of `[model, [{token, prob}…]]` pairs is a next-token table, a
//! list of `[model, {text, …}]` pairs is one decoding's generations (named by its key).

use std::fmt::Write as _;

use serde_json::Value;

use super::escape;
use crate::eval::Generation;

const COLLAPSE_DISTINCT_2: f64 = Generation::COLLAPSE_DISTINCT_2;

/// `[[name, x], …]` as `(name, x)` pairs, when every entry has that shape.
fn pairs(v: &Value) -> Option<Vec<(&str, &Value)>> {
    let a = v.as_array().filter(|a| !a.is_empty())?;
    a.iter().map(|e| Some((e.get(0)?.as_str()?, e.get(1)?))).collect()
}

fn is_top_k(v: &Value) -> bool {
    pairs(v).is_some_and(|p| {
        p.iter().all(|(_, x)| x.as_array().is_some_and(|t| t.iter().all(|t| t.get("token").is_some())))
    })
}

fn is_generations(v: &Value) -> bool {
    pairs(v).is_some_and(|p| p.iter().all(|(_, x)| x.get("text").is_some_and(Value::is_string)))
}

/// The decodings in the order the text report prints them, others after by name.
fn decoding_rank(key: &str) -> usize {
    ["greedy", "penalized", "sampled"].iter().position(|k| *k == key).unwrap_or(3)
}

fn decoding_name(key: &str, summary: &Value) -> String {
    match key {
        "penalized" => match summary.get("repetition_penalty").and_then(Value::as_f64) {
            Some(rp) => format!("greedy + repetition penalty {rp}"),
            None => "greedy + repetition penalty".into(),
        },
        k => k.replace('_', " "),
    }
}

/// The prompts section and the held-out instructions' responses, each empty when the summary
/// has none.
pub(super) fn section(summary: &Value) -> String {
    section_of(summary, "prompts", "Prompts") + &section_of(summary, "instructions", "Held-out instructions")
}

/// The section of the prompt reports under `key`.
fn section_of(summary: &Value, key: &str, title: &str) -> String {
    let Some(prompts) = summary.get(key).and_then(Value::as_array).filter(|p| !p.is_empty()) else {
        return String::new();
    };
    let mut o = format!("<h2>{title}</h2>\n");
    // (decoding key, model) → distinct-2 of each prompt's generation.
    let mut collapse: Vec<(String, String, Vec<f64>)> = Vec::new();
    for p in prompts {
        let Some(m) = p.as_object() else { continue };
        let text = m.get("prompt").and_then(Value::as_str).unwrap_or("");
        let _ = writeln!(o, "<h3>Prompt <code class=\"tok\">{}</code></h3>", escape(&format!("{text:?}")));
        for (key, v) in m.iter().filter(|(_, v)| is_top_k(v)) {
            o += &top_k_table(key, v);
        }
        let mut decodings: Vec<(&String, &Value)> = m.iter().filter(|(_, v)| is_generations(v)).collect();
        decodings.sort_by_key(|(k, _)| decoding_rank(k));
        for (key, v) in decodings {
            o += &generations(&decoding_name(key, summary), text, v);
            for (model, g) in pairs(v).unwrap_or_default() {
                let Some(d) = g.get("distinct_2").and_then(Value::as_f64) else { continue };
                match collapse.iter_mut().find(|c| c.0 == *key && c.1 == model) {
                    Some(c) => c.2.push(d),
                    None => collapse.push((key.clone(), model.to_string(), vec![d])),
                }
            }
        }
    }
    o + &collapse_table(&collapse, summary)
}

/// One prompt's next-token table: a row per model, its top tokens with their probabilities.
fn top_k_table(key: &str, v: &Value) -> String {
    let rows = pairs(v).unwrap_or_default();
    let k = rows.iter().map(|(_, t)| t.as_array().map_or(0, Vec::len)).max().unwrap_or(0);
    let mut o = format!(
        "<p class=\"note\">{} — next token, most probable first</p>\n<table class=\"topk\"><tr><th>model</th>",
        escape(&key.replace('_', " "))
    );
    for i in 1..=k {
        let _ = write!(o, "<th>{i}</th>");
    }
    o += "</tr>\n";
    for (model, toks) in rows {
        let _ = write!(o, "<tr><td>{}</td>", escape(model));
        for t in toks.as_array().map(Vec::as_slice).unwrap_or_default() {
            let token = t.get("token").and_then(Value::as_str).unwrap_or("");
            let prob = t.get("prob").and_then(Value::as_f64).unwrap_or(0.0);
            let _ = write!(
                o,
                "<td style=\"background:rgba(78,121,167,{:.3})\"><code class=\"tok\">{}</code> {:.1}%</td>",
                (prob * 0.6).clamp(0.0, 0.6),
                escape(&format!("{token:?}")),
                prob * 100.0
            );
        }
        o += "</tr>\n";
    }
    o + "</table>\n"
}

/// One decoding's generations for one prompt (the prompt greyed, then the continuation).
fn generations(name: &str, prompt: &str, v: &Value) -> String {
    let mut o = format!(
        "<p class=\"note\">{} — red rows: distinct-2 below {COLLAPSE_DISTINCT_2} (collapsed)</p>\n<table class=\"gens\"><tr><th>model</th><th class=\"num\">distinct-2</th><th class=\"num\">repetition</th><th class=\"num\">tokens</th><th>text</th></tr>\n",
        escape(name)
    );
    for (model, g) in pairs(v).unwrap_or_default() {
        let num = |k: &str, d: usize| {
            g.get(k).and_then(Value::as_f64).map(|x| format!("{x:.d$}")).unwrap_or_else(|| "–".into())
        };
        let collapsed = g.get("distinct_2").and_then(Value::as_f64).is_some_and(Generation::collapses);
        let _ = writeln!(
            o,
            "<tr{}><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"gen\"><span class=\"note\">{}</span>{}</td></tr>",
            if collapsed { " class=\"collapsed\"" } else { "" },
            escape(model),
            num("distinct_2", 2),
            num("repetition_rate", 2),
            num("tokens", 0),
            escape(prompt),
            escape(g.get("text").and_then(Value::as_str).unwrap_or(""))
        );
    }
    o + "</table>\n"
}

/// Per model and decoding: prompts whose generation has distinct-2 ≥ the collapse threshold.
fn collapse_table(cells: &[(String, String, Vec<f64>)], summary: &Value) -> String {
    if cells.is_empty() {
        return String::new();
    }
    let mut decodings: Vec<&str> = Vec::new();
    let mut models: Vec<&str> = Vec::new();
    for (d, m, _) in cells {
        if !decodings.contains(&d.as_str()) {
            decodings.push(d);
        }
        if !models.contains(&m.as_str()) {
            models.push(m);
        }
    }
    decodings.sort_by_key(|k| decoding_rank(k));
    let mut o = format!(
        "<h3>Not collapsed</h3>\n<p class=\"note\">prompts whose generation has distinct-2 ≥ {COLLAPSE_DISTINCT_2} over the generated tokens</p>\n<table><tr><th>model</th>"
    );
    for d in &decodings {
        let _ = write!(o, "<th class=\"num\">{}</th>", escape(&decoding_name(d, summary)));
    }
    o += "</tr>\n";
    for m in models {
        let _ = write!(o, "<tr><td>{}</td>", escape(m));
        for d in &decodings {
            let cell = match cells.iter().find(|c| c.0 == *d && c.1 == m) {
                Some((_, _, ds)) => {
                    format!("{}/{}", ds.iter().filter(|&&x| !Generation::collapses(x)).count(), ds.len())
                }
                None => "–".into(),
            };
            let _ = write!(o, "<td class=\"num\">{cell}</td>");
        }
        o += "</tr>\n";
    }
    o + "</table>\n"
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_and_generations_are_found_by_shape_and_escaped() {
        let s = json!({
            "repetition_penalty": 1.2,
            "prompts": [{
                "prompt": "a <b>",
                "top_k": [["teacher", [{"token": " <Paris>", "id": 1, "prob": 0.75}]]],
                "greedy": [["teacher", {"text": " & more", "tokens": 3, "distinct_2": 1.0, "repetition_rate": 0.0}],
                           ["student-kd", {"text": " x x x", "tokens": 3, "distinct_2": 0.2, "repetition_rate": 0.9}]],
                "penalized": [],
                "beam": [["teacher", {"text": "beam text", "distinct_2": 0.9}]]
            }]
        });
        let h = section(&s);
        assert!(h.contains("<code class=\"tok\">&quot; &lt;Paris&gt;&quot;</code> 75.0%"), "{h}");
        assert!(h.contains("&amp; more") && !h.contains("<b>"), "{h}");
        assert!(h.contains("<tr class=\"collapsed\"><td>student-kd</td>"), "{h}");
        assert!(h.contains("beam text"), "a decoding added later shows up: {h}");
        assert!(h.find("greedy —").unwrap() < h.find("beam —").unwrap());
        // Collapse table: teacher 1/1 greedy, 1/1 beam; student 0/1 greedy, none beam.
        assert!(h.contains("<tr><td>student-kd</td><td class=\"num\">0/1</td><td class=\"num\">–</td></tr>"), "{h}");
    }
}
