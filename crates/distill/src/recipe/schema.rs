//! The recipe's JSON Schema (draft-07), made from the recipe types themselves (their doc comments
//! are the descriptions, serde's defaults the defaults), and the key reference generated from it
//! (`docs/recipe-reference.md`; a test fails when either drifts from the types).
//!
//! The three kinds are a `oneOf` told apart by `task`; editors that read `#:schema` lines (taplo,
//! Even Better TOML) validate and complete recipes with it.

use serde_json::{json, Map, Value};

use super::{EncoderRecipe, ImageRecipe, LmRecipe};

/// The recipe kinds: `task`, the type's schema name, a title.
const KINDS: [(&str, &str); 3] = [
    ("causal-lm", "a causal LM distilled into a smaller decoder"),
    ("image-classification", "image classifiers: teacher, scratch and distilled students"),
    ("sentence-embedding", "a sentence encoder distilled into smaller encoders"),
];

/// The JSON Schema of a recipe.
pub fn schema() -> Value {
    let mut g = schemars::generate::SchemaSettings::draft07().into_generator();
    let refs = [g.subschema_for::<LmRecipe>(), g.subschema_for::<ImageRecipe>(), g.subschema_for::<EncoderRecipe>()];
    let one_of: Vec<Value> = KINDS
        .iter()
        .zip(refs)
        .map(|((task, title), r)| {
            json!({
                "title": format!("task = \"{task}\": {title}"),
                "allOf": [r, { "properties": { "task": { "const": task } }, "required": ["task"] }]
            })
        })
        .collect();
    let definitions: Map<String, Value> = g.take_definitions(true).into_iter().collect();
    json!({
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "distill recipe",
        "description": "A distill recipe (TOML): `task` picks one of the three kinds.",
        "oneOf": one_of,
        "definitions": definitions,
    })
}

/// One documented key: dotted path, type, default (or "required"), description.
#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    pub path: String,
    pub ty: String,
    pub default: Option<String>,
    pub required: bool,
    pub description: String,
}

/// Every key of the recipe kind `task`, depth first in declaration order, tables expanded.
pub fn keys(schema: &Value, task: &str) -> Vec<Key> {
    let defs = schema["definitions"].as_object().cloned().unwrap_or_default();
    let root = KINDS.iter().position(|(t, _)| *t == task).and_then(|i| schema["oneOf"][i]["allOf"][0].as_object());
    let mut out = Vec::new();
    if let Some(r) = root {
        walk(&Value::Object(r.clone()), &defs, "", &mut out, 0);
    }
    out
}

/// The schema `v` with a `$ref` followed (one level).
fn resolve<'a>(v: &'a Value, defs: &'a Map<String, Value>) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str).and_then(|r| r.rsplit('/').next()) {
        Some(name) => defs.get(name).unwrap_or(v),
        None => v,
    }
}

/// The table schemas `v` stands for: itself or its reference when it has properties, and every
/// alternative of an `anyOf` / `oneOf` / `allOf` that is a table (path-or-table keys, tagged
/// enums such as `model = { type = "cnn", … }`).
fn tables<'a>(v: &'a Value, defs: &'a Map<String, Value>, out: &mut Vec<&'a Value>) {
    let v = resolve(v, defs);
    if v.get("properties").is_some() {
        out.push(v);
    }
    for key in ["anyOf", "oneOf", "allOf"] {
        for alt in v.get(key).and_then(Value::as_array).into_iter().flatten() {
            tables(alt, defs, out);
        }
    }
}

/// The value schema of a table keyed by the user's names (`[distill.variants.NAME]`), if `v` is one.
fn map_values<'a>(v: &'a Value, defs: &'a Map<String, Value>) -> Option<&'a Value> {
    let v = resolve(v, defs);
    let alts: Vec<&Value> = std::iter::once(v)
        .chain(["anyOf", "oneOf"].iter().flat_map(|k| v.get(*k).and_then(Value::as_array).into_iter().flatten()))
        .collect();
    alts.into_iter().find_map(|a| a.get("additionalProperties").filter(|x| x.is_object()))
}

/// A short type for the reference: `string`, `integer`, `"a" | "b"`, `table`, `list of …`.
fn type_name(v: &Value, defs: &Map<String, Value>) -> String {
    let v = resolve(v, defs);
    if let Some(e) = v.get("enum").and_then(Value::as_array) {
        return e.iter().map(Value::to_string).collect::<Vec<_>>().join(" \\| ");
    }
    if let Some(c) = v.get("const") {
        return c.to_string();
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(alts) = v.get(key).and_then(Value::as_array) {
            let mut names: Vec<String> = alts.iter().map(|a| type_name(a, defs)).filter(|n| n != "null").collect();
            names.dedup();
            return names.join(" or ");
        }
    }
    if let Some(all) = v.get("allOf").and_then(Value::as_array) {
        if let Some(first) = all.first() {
            return type_name(first, defs);
        }
    }
    let ty = match v.get("type") {
        Some(Value::Array(ts)) => {
            ts.iter().filter_map(Value::as_str).find(|t| *t != "null").unwrap_or("value").to_string()
        }
        Some(Value::String(t)) => t.clone(),
        _ => return if v.get("properties").is_some() { "table".into() } else { "value".into() },
    };
    match ty.as_str() {
        "array" => format!("list of {}", v.get("items").map_or("values".into(), |i| type_name(i, defs))),
        "object" => "table".into(),
        "number" => "number".into(),
        other => other.into(),
    }
}

fn walk(v: &Value, defs: &Map<String, Value>, prefix: &str, out: &mut Vec<Key>, depth: usize) {
    if depth > 6 {
        return;
    }
    if let Some(values) = map_values(v, defs) {
        let path = format!("{prefix}.<name>");
        let what = resolve(values, defs).get("description").and_then(Value::as_str).unwrap_or("one entry");
        let description = format!("a table per name you choose: {}", what.replace('\n', " "));
        let ty = type_name(values, defs);
        out.push(Key { path: path.clone(), ty, default: Some("unset".into()), required: false, description });
        walk(values, defs, &path, out, depth + 1);
    }
    let mut ts = Vec::new();
    tables(v, defs, &mut ts);
    for t in ts {
        let required: Vec<&str> =
            t.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
        let Some(props) = t.get("properties").and_then(Value::as_object) else { continue };
        for (name, p) in props {
            let path = if prefix.is_empty() { name.clone() } else { format!("{prefix}.{name}") };
            if out.iter().any(|k| k.path == path) {
                continue;
            }
            let target = resolve(p, defs);
            let mut description = p
                .get("description")
                .or_else(|| target.get("description"))
                .and_then(Value::as_str)
                .unwrap_or("")
                .replace('\n', " ");
            let ty = type_name(p, defs);
            if description.is_empty() && (p.get("const").is_some() || p.get("enum").is_some()) {
                // A tagged enum's tag: which alternative this table is.
                description = format!("which kind: {ty}");
            }
            let required = required.contains(&name.as_str());
            let default = p.get("default").or_else(|| target.get("default")).map(|d| match d {
                Value::String(s) => format!("\"{s}\""),
                other => other.to_string(),
            });
            // serde's default of an optional key (an Option, an empty list) leaves it unset.
            let default = default.or_else(|| (!required).then(|| "unset".to_string()));
            out.push(Key { path: path.clone(), ty, default, required, description });
            walk(p, defs, &path, out, depth + 1);
        }
    }
}

/// `docs/recipe-reference.md`, generated from [`schema`].
pub fn reference_markdown() -> String {
    let s = schema();
    let mut md = String::from(
        "# Recipe reference\n\nGenerated from the recipe types (`distill schema` prints the JSON Schema it comes from; \
         `cargo test -p distill --test schema` fails when this file drifts). Every key with its type, its default \
         (or *required*) and what it does. A table key (`[student]`) lists its own keys below it as \
         `student.layers`; a path-or-table key (`teacher`, `data.sources`) also takes a plain path.\n",
    );
    for (task, title) in KINDS {
        md += &format!(
            "\n## `task = \"{task}\"`: {title}\n\n| key | type | default | description |\n|---|---|---|---|\n"
        );
        for k in keys(&s, task) {
            let default = match (&k.default, k.required) {
                (_, true) => "*required*".to_string(),
                (Some(d), _) if d == "unset" => "unset".to_string(),
                (Some(d), _) => format!("`{}`", d.replace('|', "\\|")),
                (None, _) => "—".to_string(),
            };
            md += &format!("| `{}` | {} | {} | {} |\n", k.path, k.ty, default, k.description.replace('|', "\\|"));
        }
    }
    md
}
