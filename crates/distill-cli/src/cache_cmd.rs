//! `distill cache` (capture a teacher cache, or `merge` the parts of a split capture) and
//! `distill inspect`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use distill::teacher::cache::CaptureOptions;
use distill_cache::{LogprobEncoding, Manifest};
use distill_text::TextDataConfig;

use crate::cli::{CacheAction, CacheArgs, Encoding, Shard};
use crate::common::{load_lm, load_lm_recipe, set_threads, text_sources};
use crate::dist_cmd;

pub fn run(a: CacheArgs) -> Result<()> {
    match &a.action {
        Some(CacheAction::Merge { parts, out }) => merge(parts, out),
        None => capture(a),
    }
}

/// `DIR: N tokens, B bytes/token, X MB in S shards`.
fn describe_cache(dir: &Path, m: &Manifest) -> String {
    format!(
        "{}: {} tokens, {} bytes/token, {:.1} MB in {} shards",
        dir.display(),
        m.tokens,
        m.bytes_per_token,
        m.total_bytes() as f64 / 1e6,
        m.shards.len()
    )
}

fn merge(parts: &[PathBuf], out: &Path) -> Result<()> {
    let parts: Vec<&Path> = parts.iter().map(PathBuf::as_path).collect();
    let m = distill_cache::merge(&parts, out)?;
    println!("{}, from {} parts", describe_cache(out, &m), parts.len());
    Ok(())
}

fn capture(a: CacheArgs) -> Result<()> {
    let (teacher_path, data_cfg) = teacher_and_data(&a)?;
    let encoding = match a.encoding {
        Encoding::U8 => LogprobEncoding::U8 { step: a.step },
        Encoding::F16 => LogprobEncoding::F16,
    };
    set_threads(a.threads.or_else(dist_cmd::threads_per_rank)); // under torchrun, a share of the cores
    let out = a.out.clone().context("--out is required")?;
    let (part, out) = part_and_dir(a.shard, out)?;
    if let Some(url) = &a.server {
        return capture_from_server(&a, url, &teacher_path, &data_cfg, (encoding, part), &out);
    }
    let t = load_lm(&teacher_path)?;
    let opts = CaptureOptions {
        top_k: a.top_k,
        tail_samples: a.tail_samples,
        rows_per_shard: a.rows_per_shard,
        batch_rows: a.batch,
        encoding,
        progress: true,
        part,
    };
    let t0 = std::time::Instant::now();
    let m = distill::teacher::cache::capture_text(&t, &data_cfg, &opts, &out)?;
    println!("{} ({:.0} s)", describe_cache(&out, &m), t0.elapsed().as_secs_f64());
    Ok(())
}

/// `cache --server`: the served teacher's top-k over the rows, tokenized with the local files'
/// tokenizer.
fn capture_from_server(
    a: &CacheArgs,
    url: &str,
    model_files: &Path,
    data: &TextDataConfig,
    (encoding, part): (LogprobEncoding, Option<(usize, usize)>),
    out: &Path,
) -> Result<()> {
    use distill::teacher::server::{capture_server_text, ServerCapture};
    let server = a.net.cfg(url, a.model.clone(), a.top_k)?.options();
    let opts = ServerCapture { top_k: a.top_k, rows_per_shard: a.rows_per_shard, encoding, part, progress: true };
    let t0 = std::time::Instant::now();
    let (m, st) = capture_server_text(model_files, data, &server, &opts, out)?;
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "{} ({secs:.0} s, {:.0} tokens/s from the server; {} extra requests, {} retries, {} answer keys naming no single id left in the tail; a top-1 behind a shared key found at {} positions, unknown at {}; {} positions padded)",
        describe_cache(out, &m),
        st.positions as f64 / secs.max(1e-9),
        st.extra_requests,
        st.retries,
        st.ambiguous_keys,
        st.top1_resolved,
        st.top1_ambiguous,
        st.padded_positions
    );
    Ok(())
}

/// The teacher and the text it reads: `--teacher` and `--data`, or both from `--recipe`.
fn teacher_and_data(a: &CacheArgs) -> Result<(PathBuf, TextDataConfig)> {
    Ok(match (&a.recipe, &a.teacher) {
        (Some(rp), None) => {
            if !a.data.is_empty() {
                bail!("--data and --recipe are exclusive: the recipe's [data] is used");
            }
            let r = load_lm_recipe(rp, &a.set)?;
            (PathBuf::from(&r.teacher.path), r.resolve()?.data)
        }
        (None, Some(t)) => {
            if a.data.is_empty() {
                bail!("--data: give at least one text file, directory or glob (or --recipe)");
            }
            let mut d = TextDataConfig::new(distill::data::text::resolve_sources(&text_sources(&a.data))?);
            d.pack.seq_len = a.seq_len;
            (t.clone(), d)
        }
        (Some(_), Some(_)) => bail!("--teacher and --recipe are exclusive"),
        (None, None) => bail!("give --teacher and --data, or --recipe"),
    })
}

/// The part of the rows `--shard` captures, and the directory it goes to: `--shard auto` puts
/// this rank's part in OUT/part-I-of-N.
fn part_and_dir(shard: Option<Shard>, out: PathBuf) -> Result<(Option<(usize, usize)>, PathBuf)> {
    Ok(match shard {
        None => (None, out),
        Some(Shard::Part(i, n)) => (Some((i, n)), out),
        Some(Shard::Auto) => {
            let Some(w) = distill::train::dist::WorldEnv::from_env()? else {
                bail!("--shard auto takes the part from torchrun's RANK and WORLD_SIZE, which are not set");
            };
            (Some((w.rank, w.size)), out.join(format!("part-{}-of-{}", w.rank + 1, w.size)))
        }
    })
}

/// `distill inspect`: a cache's description (`--json`: as one object), `--verify`: every
/// shard's checksum checked too; `--against REF`: how it agrees with REF, a capture of the same
/// rows.
pub fn inspect(dir: &Path, verify: bool, json: bool, against: Option<&Path>) -> Result<()> {
    if let Some(reference) = against {
        let c = distill_cache::compare(
            &distill_cache::CacheReader::open(reference)?,
            &distill_cache::CacheReader::open(dir)?,
        )?;
        if json {
            println!("{}", serde_json::to_string(&c)?);
        } else {
            println!("{} against {}:", dir.display(), reference.display());
            print!("{c}");
        }
        return Ok(());
    }
    let rep = distill_cache::inspect(dir)?;
    if verify {
        distill_cache::CacheReader::open(dir)?.verify_all()?;
    }
    if json {
        println!("{}", serde_json::to_string(&rep)?);
    } else {
        print!("{rep}");
        if verify {
            println!("checksums: all {} shards verified", rep.shards);
        }
    }
    Ok(())
}
