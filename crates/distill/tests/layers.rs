//! The library's house rules, read from its source: no import circles between files, and no
//! import from a lower layer up to a higher one (the layers as ARCHITECTURE.md lists them).
//!
//! An import is any `crate::a::b` path (in a `use`, nested `use crate::{…}` groups included, or
//! inline) or a `super::…` path, resolved to the file that defines the longest prefix; a folder's
//! `mod.rs` using its own children, and a child using an ancestor's shared items, are not
//! circles. `#[cfg(test)]` modules are left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Lowest first; a module may import from its own layer and the ones before it.
const LAYERS: &[&[&str]] = &[
    &["error"],
    &["data", "io", "losses", "models", "train"],
    &["eval"],
    &["methods", "student"],
    &["teacher"],
    &["plan", "tasks"],
    &["bench", "experiments", "recipe", "report"],
];

/// `src`-relative file path → source text without comments and test modules.
fn sources() -> BTreeMap<String, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = BTreeMap::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&p).unwrap();
                let text = text.split("#[cfg(test)]").next().unwrap_or_default();
                let code: Vec<&str> = text.lines().map(|l| l.split("//").next().unwrap_or_default()).collect();
                let rel = p.strip_prefix(&root).unwrap().to_string_lossy().replace('\\', "/");
                out.insert(rel, code.join("\n"));
            }
        }
    }
    out
}

/// The module path of a file (`models/lm/mod.rs` → `[models, lm]`).
fn module_of(file: &str) -> Vec<String> {
    let mut parts: Vec<String> = file.trim_end_matches(".rs").split('/').map(String::from).collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts
}

/// The file defining the longest prefix of `path`.
fn resolve(files: &BTreeMap<String, String>, path: &[String]) -> Option<String> {
    let mut best = None;
    for i in 1..=path.len() {
        let base = path[..i].join("/");
        for f in [format!("{base}.rs"), format!("{base}/mod.rs")] {
            if files.contains_key(&f) {
                best = Some(f);
            }
        }
    }
    best
}

/// Every path a `use` tree names (`a::{b, c::{d, e}}` → `a::b`, `a::c::d`, `a::c::e`).
fn expand(prefix: &str, tree: &str, out: &mut Vec<String>) {
    let tree = tree.trim();
    if let Some(open) = tree.find('{') {
        let head = tree[..open].trim_end_matches("::");
        let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
        let (mut depth, mut start) = (0, 0);
        let full = |h: &str| if prefix.is_empty() { h.to_string() } else { format!("{prefix}::{h}") };
        let base = if head.is_empty() { prefix.to_string() } else { full(head) };
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(&base, &inner[start..i], out);
                    start = i + 1;
                }
                _ => {}
            }
        }
        expand(&base, &inner[start..], out);
    } else if !tree.is_empty() {
        let item = tree.split(" as ").next().unwrap_or_default().trim();
        out.push(if prefix.is_empty() { item.to_string() } else { format!("{prefix}::{item}") });
    }
}

/// The segments of a path, `self` and globs left out.
fn split(p: &str) -> impl Iterator<Item = String> + '_ {
    p.split("::").filter(|s| !s.is_empty() && *s != "self" && *s != "*").map(String::from)
}

/// Each file's imports (files), ancestors left out.
fn imports(files: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph = BTreeMap::new();
    for (file, code) in files {
        let me = module_of(file);
        let mut paths: Vec<Vec<String>> = Vec::new();
        for stmt in code.split(';') {
            let Some(at) = stmt.find("use ") else { continue };
            let tree = stmt[at + 4..].trim();
            let (base, rest): (Vec<String>, &str) = if let Some(r) = tree.strip_prefix("crate::") {
                (vec![], r)
            } else if tree.starts_with("super::") {
                let mut base = me.clone();
                let mut r = tree;
                while let Some(x) = r.strip_prefix("super::") {
                    base.pop();
                    r = x;
                }
                (base, r)
            } else {
                continue;
            };
            let mut expanded = Vec::new();
            expand("", rest, &mut expanded);
            for e in expanded {
                paths.push(base.iter().cloned().chain(split(&e)).collect());
            }
        }
        for (i, _) in code.match_indices("crate::") {
            let tail: String =
                code[i + 7..].chars().take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':').collect();
            paths.push(split(&tail).collect());
        }
        let ancestors: BTreeSet<String> =
            (0..me.len()).filter_map(|i| resolve(files, &me[..i])).chain(["lib.rs".to_string()]).collect();
        let deps: BTreeSet<String> =
            paths.iter().filter_map(|p| resolve(files, p)).filter(|f| f != file && !ancestors.contains(f)).collect();
        graph.insert(file.clone(), deps);
    }
    graph
}

/// Every file that reaches itself again, with the path.
fn circles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let mut circles = Vec::new();
    for start in graph.keys() {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<(String, Vec<String>)> = vec![(start.clone(), vec![start.clone()])];
        while let Some((f, path)) = stack.pop() {
            for d in &graph[&f] {
                if d == start {
                    circles.push(format!("{} → {start}", path.join(" → ")));
                } else if seen.insert(d.clone()) {
                    stack.push((d.clone(), path.iter().cloned().chain([d.clone()]).collect()));
                }
            }
        }
    }
    circles
}

/// Every import from a lower layer up to a higher one.
fn upward(graph: &BTreeMap<String, BTreeSet<String>>, layers: &[&[&str]]) -> Vec<String> {
    let layer = |f: &str| {
        let top = f.split('/').next().unwrap_or_default().trim_end_matches(".rs");
        layers.iter().position(|l| l.contains(&top))
    };
    graph
        .iter()
        .flat_map(|(a, deps)| deps.iter().map(move |b| (a, b)))
        .filter(|(a, b)| matches!((layer(a), layer(b)), (Some(x), Some(y)) if y > x))
        .map(|(a, b)| format!("{a} → {b}"))
        .collect()
}

#[test]
fn no_file_imports_one_that_imports_it_back() {
    let circles = circles(&imports(&sources()));
    assert!(circles.is_empty(), "import circles:\n{}", circles.join("\n"));
}

#[test]
fn no_module_imports_from_a_higher_layer() {
    let files = sources();
    for top in files.keys().map(|f| f.split('/').next().unwrap().trim_end_matches(".rs")) {
        assert!(top == "lib" || LAYERS.iter().any(|l| l.contains(&top)), "{top} is in no layer: add it to LAYERS");
    }
    let up = upward(&imports(&files), LAYERS);
    assert!(up.is_empty(), "imports from a lower layer up to a higher one:\n{}", up.join("\n"));
}

#[test]
fn the_checker_sees_a_circle_and_an_upward_import() {
    let files: BTreeMap<String, String> = [
        ("lib.rs", "pub mod a; pub mod b;"),
        ("a.rs", "use crate::b::{x, y::{z}};"),
        ("b/mod.rs", "pub mod y; fn f() { crate::a::g(); }"),
        ("b/y.rs", "use super::super::a::h; use super::w;"),
    ]
    .into_iter()
    .map(|(f, c)| (f.to_string(), c.to_string()))
    .collect();
    let g = imports(&files);
    assert_eq!(g["a.rs"], BTreeSet::from(["b/mod.rs".to_string(), "b/y.rs".to_string()]));
    assert_eq!(g["b/mod.rs"], BTreeSet::from(["a.rs".to_string()]));
    // `super::super` from a child file is the crate root; `super::w`, its own folder (an ancestor).
    assert_eq!(g["b/y.rs"], BTreeSet::from(["a.rs".to_string()]));
    assert_eq!(circles(&g).len(), 4, "{:?}", circles(&g));
    assert_eq!(upward(&g, &[&["b"], &["a"]]), ["b/mod.rs → a.rs", "b/y.rs → a.rs"]);
}
