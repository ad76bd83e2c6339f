//! The recipe schema and its reference stay true to the recipe types: `docs/recipe.schema.json`
//! and `docs/recipe-reference.md` equal what the types generate (run with `DISTILL_BLESS=1` to
//! rewrite them after changing a recipe type), every key has a description and a default or is
//! required, and the shipped recipes and starter templates use only keys the reference lists.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use distill::recipe::schema::{keys, reference_markdown, schema};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Compares a generated file with the committed one (or writes it under DISTILL_BLESS=1).
fn same_as_committed(rel: &str, generated: &str) {
    let path = root().join(rel);
    if std::env::var_os("DISTILL_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, generated).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{rel} is out of date with the recipe types: run `DISTILL_BLESS=1 cargo test -p distill --test schema` and commit it"
    );
}

#[test]
fn schema_and_reference_match_the_recipe_types() {
    let s = schema();
    same_as_committed("docs/recipe.schema.json", &(serde_json::to_string_pretty(&s).unwrap() + "\n"));
    same_as_committed("docs/recipe-reference.md", &reference_markdown());
}

#[test]
fn every_key_has_a_description_and_a_default_or_is_required() {
    let s = schema();
    let mut bad = Vec::new();
    for task in ["causal-lm", "image-classification", "sentence-embedding"] {
        let ks = keys(&s, task);
        assert!(ks.len() > 20, "{task}: {} keys", ks.len());
        for k in ks {
            if k.description.trim().is_empty() {
                bad.push(format!("{task} {}: no description", k.path));
            }
            if k.default.is_none() && !k.required {
                bad.push(format!("{task} {}: neither a default nor required", k.path));
            }
        }
    }
    assert!(bad.is_empty(), "{} keys:\n{}", bad.len(), bad.join("\n"));
}

/// Every key the shipped recipes set is one the reference documents (so the reference covers
/// what users copy).
#[test]
fn shipped_recipes_use_documented_keys() {
    let s = schema();
    let mut documented: BTreeSet<String> = BTreeSet::new();
    for task in ["causal-lm", "image-classification", "sentence-embedding"] {
        documented.extend(keys(&s, task).into_iter().map(|k| k.path));
    }
    fn flat(prefix: &str, v: &toml::Value, out: &mut Vec<String>) {
        if let toml::Value::Table(t) = v {
            for (k, v) in t {
                let p = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                out.push(p.clone());
                flat(&p, v, out);
            }
        }
    }
    let mut missing = Vec::new();
    let recipes = std::fs::read_dir(root().join("recipes")).unwrap().flatten().map(|e| e.path());
    let templates =
        std::fs::read_dir(root().join("crates/distill-cli/src/templates")).unwrap().flatten().map(|e| e.path());
    for p in recipes.chain(templates).filter(|p| p.extension().is_some_and(|e| e == "toml")) {
        let doc: toml::Value = toml::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        let mut ks = Vec::new();
        flat("", &doc, &mut ks);
        for k in ks {
            // `<name>` stands for a user's name (`distill.variants.lora`).
            let matches = |d: &String| {
                let (a, b): (Vec<&str>, Vec<&str>) = (d.split('.').collect(), k.split('.').collect());
                a.len() == b.len() && a.iter().zip(&b).all(|(x, y)| x == y || *x == "<name>")
            };
            if !documented.iter().any(matches) {
                missing.push(format!("{}: {k}", p.display()));
            }
        }
    }
    assert!(missing.is_empty(), "undocumented keys:\n{}", missing.join("\n"));
}
