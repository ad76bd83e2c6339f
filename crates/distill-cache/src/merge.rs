//! Joining the parts of a capture split over machines (`distill cache --shard i/N` on each)
//! into the cache one machine would have written, byte for byte.

use std::fs::{self, OpenOptions};
use std::io::BufWriter;
use std::path::Path;

use crate::error::{io, CacheError, Result};
use crate::manifest::{sync_dir, temp_path, Manifest, MANIFEST_FILE};
use crate::shard;
use crate::writer::compare_spec;

/// Merges the complete parts in `parts` (any order) into `out` (created; an earlier merge there
/// is replaced). Checks that they belong together — the same teacher, tokenizer, rows and
/// record spec, the same number of parts, each part exactly once — and every shard's size,
/// header and sha256 while copying it. The merged manifest is the one a single capture writes
/// (the free-form `teacher` description is part 1's). Returns it.
pub fn merge(parts: &[&Path], out: &Path) -> Result<Manifest> {
    let bad = |m: String| CacheError::Merge(m);
    if parts.is_empty() {
        return Err(bad("no parts given".into()));
    }
    let mut loaded = Vec::with_capacity(parts.len());
    for dir in parts {
        let m = Manifest::load(dir)?;
        let Some(p) = m.part else {
            return Err(bad(format!("{} is a whole cache, not a part of one", dir.display())));
        };
        if !m.complete {
            return Err(bad(format!(
                "{} (part {} of {}) is incomplete ({} of {} rows): finish its capture first",
                dir.display(),
                p.index + 1,
                p.count,
                m.rows_stored(),
                m.row_range().len()
            )));
        }
        loaded.push((*dir, m, p));
    }
    loaded.sort_by_key(|(_, _, p)| p.index);
    let (first_dir, first, p0) = &loaded[0];
    for (dir, m, p) in &loaded[1..] {
        compare_spec(dir, m, &first.spec())
            .map_err(|e| bad(format!("{} and {} differ: {e}", first_dir.display(), dir.display())))?;
        if p.count != p0.count {
            return Err(bad(format!(
                "{} is one of {} parts, {} one of {}",
                first_dir.display(),
                p0.count,
                dir.display(),
                p.count
            )));
        }
    }
    let count = p0.count;
    for (i, (dir, _, p)) in loaded.iter().enumerate() {
        if p.index != i {
            let what = if p.index < i {
                format!("part {} is given twice ({})", p.index + 1, dir.display())
            } else {
                format!("part {} of {count} is missing", i + 1)
            };
            return Err(bad(what));
        }
    }
    if loaded.len() != count {
        return Err(bad(format!("part {} of {count} is missing", loaded.len() + 1)));
    }
    fs::create_dir_all(out).map_err(io(out, "create cache directory"))?;
    // A manifest left by an earlier merge goes first, so a crash in the middle never leaves a
    // directory that claims to be complete.
    match fs::remove_file(out.join(MANIFEST_FILE)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(out, "remove old manifest")(e)),
        _ => {}
    }
    let mut merged = first.clone();
    merged.part = None;
    merged.shards.clear();
    for (dir, m, p) in &loaded {
        for (j, entry) in m.shards.iter().enumerate() {
            copy_shard(&dir.join(&entry.file), &out.join(&entry.file), m, p.first_shard + j, entry)?;
            merged.shards.push(entry.clone());
        }
    }
    merged.tokens = merged.rows_stored() * merged.seq_len;
    merged.complete = true;
    merged.store(out)?;
    // The result must load as a whole cache.
    Manifest::load(out)?;
    Ok(merged)
}

/// Copies one shard, checking its size and header first and its sha256 on the way; the copy is
/// fsynced and renamed into place.
fn copy_shard(src: &Path, dst: &Path, m: &Manifest, index: usize, entry: &crate::ShardEntry) -> Result<()> {
    let tmp = temp_path(dst);
    let result = (|| {
        let out =
            OpenOptions::new().write(true).create(true).truncate(true).open(&tmp).map_err(io(&tmp, "create shard"))?;
        let mut w = BufWriter::with_capacity(1 << 20, out);
        shard::verify_into(src, m, index, entry, &mut w, &tmp)?;
        let out = w.into_inner().map_err(|e| io(&tmp, "flush shard")(e.into_error()))?;
        out.sync_all().map_err(io(&tmp, "fsync shard"))?;
        fs::rename(&tmp, dst).map_err(io(dst, "rename shard"))?;
        if let Some(parent) = dst.parent() {
            sync_dir(parent);
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}
