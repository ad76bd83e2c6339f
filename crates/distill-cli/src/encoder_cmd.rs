//! `distill embed` and the encoder mode of `distill eval`.

use std::path::Path;

use anyhow::{bail, Context, Result};
use distill::eval::embed::{mean_cos, probe, throughput, topk_overlap};
use distill::io::fetch;
use distill::models::sentence::{load_embedder, write_npy};

use crate::cli::{EmbedArgs, EvalArgs};
use crate::common::{resolve, set_threads};

/// Whether `model` (a path or an asset, fetched or not) is a sentence encoder (BERT or
/// Model2Vec) rather than a causal LM.
pub fn is_encoder(model: &Path) -> bool {
    let dir = fetch::resolve(&model.to_string_lossy()).unwrap_or_else(|_| model.to_path_buf());
    matches!(distill::models::sentence::model_type(&dir).as_deref(), Some("bert" | "model2vec"))
}

/// Texts of `data`: a `.jsonl` file (the `field` of each line), a labelled directory (JSON
/// records), or a text file (one text per non-blank line).
fn read_texts(data: &Path, field: &str) -> Result<Vec<String>> {
    if data.is_dir() {
        return Ok(distill_text::read_labelled(data)?.into_iter().map(|d| d.text).collect());
    }
    let text = std::fs::read_to_string(data).with_context(|| format!("cannot read {}", data.display()))?;
    if data.extension().is_some_and(|e| e == "jsonl") {
        let mut out = Vec::new();
        for (i, l) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let v: serde_json::Value =
                serde_json::from_str(l).with_context(|| format!("{}:{}: not a JSON object", data.display(), i + 1))?;
            let Some(t) = v.get(field).and_then(|t| t.as_str()) else {
                bail!("{}:{}: missing string field `{field}`", data.display(), i + 1)
            };
            out.push(t.to_string());
        }
        return Ok(out);
    }
    Ok(text.lines().filter(|l| !l.trim().is_empty()).map(str::to_string).collect())
}

/// `distill embed`: the embeddings of the texts in `--data`, into `--out`.
pub fn embed(a: EmbedArgs) -> Result<()> {
    set_threads(None);
    write_embeddings(&resolve(&a.model)?, &resolve(&a.data)?, &a.out, a.batch, &a.field)
}

/// Writes the embeddings of every text as `.npy` or JSONL.
fn write_embeddings(model: &Path, data: &Path, out: &Path, batch: usize, field: &str) -> Result<()> {
    let m = load_embedder(model)?;
    let texts = read_texts(data, field)?;
    if texts.is_empty() {
        bail!("{}: no texts", data.display());
    }
    let e = m.embed(&texts, batch.max(1))?;
    if out.extension().is_some_and(|x| x == "npy") {
        write_npy(out, &e)?;
    } else if out.extension().is_some_and(|x| x == "jsonl") {
        let rows: Vec<Vec<f32>> = Vec::<Vec<f32>>::try_from(&e)?;
        let mut s = String::new();
        for (t, r) in texts.iter().zip(rows) {
            s += &serde_json::to_string(&serde_json::json!({"text": t, "embedding": r}))?;
            s.push('\n');
        }
        distill::train::checkpoint::write_atomic(out, s.as_bytes())?;
    } else {
        bail!("--out: {} must end in .npy or .jsonl", out.display());
    }
    eprintln!("{} embeddings of {} dims → {}", texts.len(), e.size()[1], out.display());
    Ok(())
}

/// `distill eval` on an encoder (one labelled `--data`), 32 texts per forward.
pub fn eval(a: EvalArgs) -> Result<()> {
    let [d] = a.data.as_slice() else { bail!("--data: give one labelled file or directory for an encoder") };
    set_threads(None);
    let t = a.teacher.as_deref().map(resolve).transpose()?;
    evaluate(&resolve(&a.model)?, &resolve(Path::new(d))?, t.as_deref(), 32, a.json)
}

/// Probe on a labelled set (80/20 split by document), and with a teacher, cosine and top-10
/// retrieval agreement on the held-out texts; embeddings/s.
fn evaluate(model: &Path, data: &Path, teacher: Option<&Path>, batch: usize, json: bool) -> Result<()> {
    let m = load_embedder(model)?;
    let docs = distill_text::read_labelled(data)?;
    let classes = distill_text::classes(&docs);
    if classes.len() < 2 {
        bail!("--data: {} needs labelled documents of at least two classes", data.display());
    }
    let (mut tr, mut te): (Vec<_>, Vec<_>) = (vec![], vec![]);
    for d in docs {
        let y = classes.iter().position(|c| *c == d.label).unwrap_or(0) as i64;
        if d.is_test(0.2, 0) {
            te.push((d.text, y))
        } else {
            tr.push((d.text, y))
        }
    }
    if tr.is_empty() || te.len() < 2 {
        bail!("--data: too few documents for a train/test split");
    }
    let (tr_x, tr_y): (Vec<String>, Vec<i64>) = tr.into_iter().unzip();
    let (te_x, te_y): (Vec<String>, Vec<i64>) = te.into_iter().unzip();
    let (a, b) = (m.embed(&tr_x, batch)?, m.embed(&te_x, batch)?);
    let p = probe(&a, &tr_y, &b, &te_y, 300, 1e-3);
    let speed_texts: Vec<String> = te_x.iter().take(256).cloned().collect();
    let speed = throughput(m.as_ref(), &speed_texts, batch)?;
    let mut out = serde_json::json!({
        "model": model.display().to_string(), "classes": classes, "train_docs": tr_x.len(), "test_docs": te_x.len(),
        "probe_accuracy": p.accuracy, "probe_f1": p.f1, "embeddings_per_s": speed, "params": m.params(),
    });
    if let Some(t) = teacher {
        let t = load_embedder(t)?;
        let n = te_x.len().min(1000);
        let tb = t.embed(&te_x[..n], batch)?;
        out["cos_to_teacher"] = serde_json::json!(mean_cos(&tb, &b.narrow(0, 0, n as i64)));
        out["top10_overlap"] = serde_json::json!(topk_overlap(&tb, &b.narrow(0, 0, n as i64), 10));
    }
    if json {
        println!("{out}");
    } else {
        println!("model            {}", model.display());
        println!("documents        {} train / {} test ({})", tr_x.len(), te_x.len(), classes.join("/"));
        println!("probe accuracy   {:.2}%", p.accuracy * 100.0);
        println!("probe F1         {:.4}", p.f1);
        if let Some(c) = out.get("cos_to_teacher").and_then(|c| c.as_f64()) {
            println!("cos to teacher   {c:.4}");
        }
        if let Some(o) = out.get("top10_overlap").and_then(|c| c.as_f64()) {
            println!("top-10 overlap   {o:.3}");
        }
        println!("embeddings/s     {speed:.1} (batch {batch})");
    }
    Ok(())
}
