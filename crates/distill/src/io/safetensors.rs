//! Safetensors weights ↔ a tch `VarStore`, matched by name.
//!
//! Loading memory-maps each file, parses it with the `safetensors` crate and checks every name,
//! shape and dtype against the store *before* copying any data. F32, F16 and BF16 tensors are
//! converted to the kind of the variable they fill. Errors name the file and the tensor:
//! truncated data, a bad header, a variable with no tensor, a tensor with no variable, a wrong
//! shape, an unsupported dtype.
//!
//! Extra tensors policy: a checkpoint tensor with no variable is an error, except
//! - names ending in one of [`LoadOptions::ignore_suffixes`] (non-persistent buffers such as
//!   `rotary_emb.inv_freq` that old exports contain), skipped;
//! - `(extra, target)` pairs in [`LoadOptions::tied`] (a tied model's `lm_head.weight`, which
//!   older transformers wrote out): accepted only if bit-equal to `target` after conversion, since
//!   a different tensor means the checkpoint is really untied and the config is wrong.
//!
//! Saving writes the safetensors format directly, one tensor at a time, to a temporary sibling
//! file that is fsynced and then renamed over the destination, so a crash never leaves a
//! half-written `model.safetensors`.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::tensor::{Dtype, SafeTensorError, TensorView};
use safetensors::SafeTensors;
use serde_json::{json, Map, Value};
use tch::{nn::VarStore, Kind, Tensor};

use crate::{Error, Result};

/// The parts of a fused tensor: `(variable name, first row, rows)`.
pub type SplitParts = Vec<(String, i64, i64)>;

/// A checkpoint's tensors by name: file index, view, and the rows of a fused tensor's part.
type Found<'a> = BTreeMap<String, (usize, TensorView<'a>, Option<(i64, i64)>)>;

/// Which checkpoint tensors without a variable are tolerated; see the module docs.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// `(extra, target)`: `extra` may be present if it equals the variable `target`.
    pub tied: Vec<(String, String)>,
    /// Checkpoint tensors whose names end with one of these are skipped.
    pub ignore_suffixes: Vec<String>,
    /// `(fused, parts)`: a checkpoint tensor whose name ends with `fused` is split along its
    /// first dimension into the variables named with each part's suffix instead, `rows` each, in
    /// order (Phi-3's `qkv_proj` into `q_proj`, `k_proj`, `v_proj`).
    pub split: Vec<(String, Vec<(String, i64)>)>,
}

impl LoadOptions {
    fn ignored(&self, name: &str) -> bool {
        self.ignore_suffixes.iter().any(|s| name.ends_with(s.as_str()))
    }
    fn tied_target(&self, name: &str) -> Option<&str> {
        self.tied.iter().find(|(e, _)| e == name).map(|(_, t)| t.as_str())
    }

    /// The parts a fused tensor `name` splits into: `(part name, first row, rows)`; `None` when
    /// `name` is not fused. An error when its rows are not the parts' sum.
    pub fn split_of(&self, name: &str, rows: i64) -> Option<std::result::Result<SplitParts, String>> {
        let (fused, parts) = self.split.iter().find(|(f, _)| name.ends_with(f.as_str()))?;
        let stem = &name[..name.len() - fused.len()];
        let total: i64 = parts.iter().map(|(_, r)| r).sum();
        if total != rows {
            return Some(Err(format!("fused tensor `{name}` has {rows} rows, its parts {total}")));
        }
        let mut start = 0;
        Some(Ok(parts
            .iter()
            .map(|(suffix, r)| {
                start += r;
                (format!("{stem}{suffix}"), start - r, *r)
            })
            .collect()))
    }
}

/// The files that make up a checkpoint: one `model.safetensors`, or the shards listed by a
/// `model.safetensors.index.json`. `path` may be either file or a directory holding one.
pub fn checkpoint_files(path: &Path) -> Result<Vec<PathBuf>> {
    let path = if path.is_dir() {
        let single = path.join("model.safetensors");
        let index = path.join("model.safetensors.index.json");
        if single.is_file() {
            single
        } else if index.is_file() {
            index
        } else {
            return Err(Error::format(path, "no model.safetensors or model.safetensors.index.json"));
        }
    } else {
        path.to_path_buf()
    };
    if path.extension().and_then(|e| e.to_str()) != Some("json") {
        return Ok(vec![path]);
    }
    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    let index: Value =
        serde_json::from_slice(&bytes).map_err(|e| Error::format(&path, format!("invalid index JSON: {e}")))?;
    let map = index
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| Error::format(&path, "missing object `weight_map`"))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut shards: Vec<PathBuf> = Vec::new();
    for (name, file) in map {
        let file = file
            .as_str()
            .ok_or_else(|| Error::format(&path, format!("weight_map entry `{name}` is not a file name")))?;
        // A shard is a file beside the index: no directories, no `..`, no absolute path.
        if Path::new(file).file_name() != Some(std::ffi::OsStr::new(file)) || file == ".." {
            return Err(Error::format(
                &path,
                format!("weight_map entry `{name}`: `{file}` is not a file beside the index"),
            ));
        }
        let shard = dir.join(file);
        if !shards.contains(&shard) {
            shards.push(shard);
        }
    }
    if shards.is_empty() {
        return Err(Error::format(&path, "`weight_map` is empty"));
    }
    Ok(shards)
}

fn mmap(path: &Path) -> Result<Mmap> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: the map is read-only and lives only for this load; a checkpoint modified while it is
    // being loaded is outside what any safetensors reader can guard against.
    unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))
}

/// Explains a safetensors parse failure, naming the first tensor whose data lies past the end of
/// the file when the file is truncated.
fn explain(path: &Path, bytes: &[u8], err: SafeTensorError) -> Error {
    if let SafeTensorError::MetadataIncompleteBuffer = err {
        let n = bytes.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok()).map(u64::from_le_bytes).unwrap_or(0) as usize;
        let available = bytes.len().saturating_sub(8 + n);
        let header: Option<Map<String, Value>> = bytes.get(8..8 + n).and_then(|h| serde_json::from_slice(h).ok());
        let mut worst: Option<(String, usize)> = None;
        for (name, info) in header.iter().flatten() {
            let end = info.get("data_offsets").and_then(|o| o.get(1)).and_then(Value::as_u64).unwrap_or(0) as usize;
            if end > available && worst.as_ref().is_none_or(|(_, e)| end < *e) {
                worst = Some((name.clone(), end));
            }
        }
        return match worst {
            Some((name, end)) => Error::format(
                path,
                format!(
                    "truncated: tensor `{name}` needs data up to byte {end}, the file holds {available} data bytes"
                ),
            ),
            None => Error::format(path, "size does not match the header (trailing or missing data)"),
        };
    }
    Error::format(path, format!("invalid safetensors: {err}"))
}

fn kind_of(dtype: Dtype) -> Option<Kind> {
    match dtype {
        Dtype::F32 => Some(Kind::Float),
        Dtype::F16 => Some(Kind::Half),
        Dtype::BF16 => Some(Kind::BFloat16),
        _ => None,
    }
}

fn to_tensor(view: &TensorView<'_>, kind: Kind) -> Result<Tensor> {
    let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
    Ok(Tensor::f_from_data_size(view.data(), &shape, kind)?)
}

fn shape_i64(view: &TensorView<'_>) -> Vec<i64> {
    view.shape().iter().map(|&d| d as i64).collect()
}

fn list(names: &[String]) -> String {
    let head: Vec<&str> = names.iter().take(5).map(String::as_str).collect();
    let more = names.len().saturating_sub(5);
    if more > 0 {
        format!("{} (and {more} more)", head.join(", "))
    } else {
        head.join(", ")
    }
}

/// The tensor names and shapes of a checkpoint (a file, an index or a directory), read from the
/// files' headers only.
pub fn tensor_shapes(path: &Path) -> Result<Vec<(String, Vec<i64>)>> {
    let mut out = Vec::new();
    for f in checkpoint_files(path)? {
        let m = mmap(&f)?;
        let (_, meta) = SafeTensors::read_metadata(&m).map_err(|e| explain(&f, &m, e))?;
        for (name, info) in meta.tensors() {
            out.push((name, info.shape.iter().map(|&d| d as i64).collect()));
        }
    }
    Ok(out)
}

/// Loads a checkpoint (a `.safetensors` file, an index `.json`, or a directory) into `vs`.
/// Every variable must be filled; see the module docs for extras.
pub fn load_safetensors(vs: &mut VarStore, path: impl AsRef<Path>, opts: &LoadOptions) -> Result<()> {
    let path = path.as_ref();
    let files = checkpoint_files(path)?;
    let maps: Vec<Mmap> = files.iter().map(|f| mmap(f)).collect::<Result<_>>()?;
    let parsed: Vec<SafeTensors<'_>> = files
        .iter()
        .zip(&maps)
        .map(|(f, m)| SafeTensors::deserialize(m).map_err(|e| explain(f, m, e)))
        .collect::<Result<_>>()?;

    // name → (file index, view, rows of a fused tensor); a fused tensor is listed as its parts.
    let mut found: Found<'_> = BTreeMap::new();
    for (i, st) in parsed.iter().enumerate() {
        for (name, view) in st.iter() {
            let rows = view.shape().first().map_or(0, |&r| r as i64);
            let entries = match opts.split_of(name, rows) {
                Some(parts) => parts
                    .map_err(|m| Error::format(&files[i], m))?
                    .into_iter()
                    .map(|(n, start, len)| (n, (i, view.clone(), Some((start, len)))))
                    .collect(),
                None => vec![(name.to_string(), (i, view, None))],
            };
            for (name, entry) in entries {
                if let Some((j, ..)) = found.insert(name.clone(), entry) {
                    return Err(Error::format(
                        &files[i],
                        format!("tensor `{name}` also appears in {}", files[j].display()),
                    ));
                }
            }
        }
    }

    // Validate everything before copying anything.
    let vars: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    let missing: Vec<String> = vars.keys().filter(|n| !found.contains_key(*n)).cloned().collect();
    if !missing.is_empty() {
        return Err(Error::format(path, format!("missing tensors: {}", list(&missing))));
    }
    let mut extra = Vec::new();
    for (name, (i, view, rows)) in &found {
        let file = &files[*i];
        let target = match vars.get(name) {
            Some(v) => v,
            None if opts.ignored(name) => continue,
            None => match opts.tied_target(name).and_then(|t| vars.get(t)) {
                Some(v) => v,
                None => {
                    extra.push(name.clone());
                    continue;
                }
            },
        };
        if kind_of(view.dtype()).is_none() {
            return Err(Error::format(
                file,
                format!("tensor `{name}` has unsupported dtype {:?} (supported: F32, F16, BF16)", view.dtype()),
            ));
        }
        let mut shape = shape_i64(view);
        if let (Some((_, len)), Some(first)) = (rows, shape.first_mut()) {
            *first = *len;
        }
        if shape != target.size() {
            return Err(Error::format(
                file,
                format!("tensor `{name}` has shape {shape:?}, the model expects {:?}", target.size()),
            ));
        }
    }
    if !extra.is_empty() {
        return Err(Error::format(path, format!("unexpected tensors (not in the model): {}", list(&extra))));
    }

    tch::no_grad(|| -> Result<()> {
        for (name, var) in &vars {
            let (i, view, rows) = &found[name];
            let kind = kind_of(view.dtype()).unwrap_or(Kind::Float);
            let mut src = to_tensor(view, kind)?;
            if let Some((start, len)) = rows {
                src = src.f_narrow(0, *start, *len)?;
            }
            let src = src.f_to_kind(var.kind())?.f_to_device(var.device())?;
            let mut dst = var.shallow_clone();
            dst.f_copy_(&src).map_err(|e| Error::format(&files[*i], format!("tensor `{name}`: {e}")))?;
        }
        for (extra, target) in &opts.tied {
            let (Some((i, view, _)), Some(var)) = (found.get(extra), vars.get(target)) else {
                continue;
            };
            if vars.contains_key(extra) {
                continue;
            }
            let kind = kind_of(view.dtype()).unwrap_or(Kind::Float);
            let src = to_tensor(view, kind)?.f_to_kind(var.kind())?.f_to_device(var.device())?;
            if !src.f_equal(var)? {
                return Err(Error::format(
                    &files[*i],
                    format!("tensor `{extra}` differs from `{target}` but the config ties them (tie_word_embeddings)"),
                ));
            }
        }
        Ok(())
    })
}

/// Fills `vs` from `(name, shape, f32 data)` triples (e.g. dequantized GGUF tensors, already
/// renamed to the store's names), converting to each variable's kind. `source` labels errors.
/// Every variable must be provided; extras follow `opts` (a tied extra is checked for equality).
pub fn load_named_f32<I>(vs: &mut VarStore, source: &Path, tensors: I, opts: &LoadOptions) -> Result<()>
where
    I: IntoIterator<Item = (String, Vec<i64>, Vec<f32>)>,
{
    let vars: HashMap<String, Tensor> = vs.variables();
    let mut seen: HashMap<String, ()> = HashMap::new();
    let mut tied_pending: Vec<(String, Tensor)> = Vec::new();
    tch::no_grad(|| -> Result<()> {
        for (name, shape, data) in tensors {
            let numel: i64 = shape.iter().product();
            if shape.iter().any(|&d| d < 0) || numel as usize != data.len() {
                return Err(Error::format(
                    source,
                    format!("tensor `{name}`: shape {shape:?} does not match its {} values", data.len()),
                ));
            }
            let (var, is_tied) = match vars.get(&name) {
                Some(v) => (v, false),
                None if opts.ignored(&name) => continue,
                None => match opts.tied_target(&name).and_then(|t| vars.get(t)) {
                    Some(v) => (v, true),
                    None => {
                        return Err(Error::format(source, format!("unexpected tensor `{name}` (not in the model)")))
                    }
                },
            };
            if shape != var.size() {
                return Err(Error::format(
                    source,
                    format!("tensor `{name}` has shape {shape:?}, the model expects {:?}", var.size()),
                ));
            }
            let src = Tensor::from_slice(&data).f_reshape(&shape)?.f_to_kind(var.kind())?.f_to_device(var.device())?;
            if is_tied {
                tied_pending.push((name, src));
                continue;
            }
            if seen.insert(name.clone(), ()).is_some() {
                return Err(Error::format(source, format!("tensor `{name}` given twice")));
            }
            var.shallow_clone().f_copy_(&src)?;
        }
        let mut missing: Vec<String> = vars.keys().filter(|n| !seen.contains_key(*n)).cloned().collect();
        missing.sort();
        if !missing.is_empty() {
            return Err(Error::format(source, format!("missing tensors: {}", list(&missing))));
        }
        for (name, src) in tied_pending {
            let target = opts.tied_target(&name).unwrap_or_default();
            if let Some(var) = vars.get(target) {
                if !src.f_equal(var)? {
                    return Err(Error::format(
                        source,
                        format!("tensor `{name}` differs from `{target}` but the config ties them"),
                    ));
                }
            }
        }
        Ok(())
    })
}

fn dtype_of(kind: Kind) -> Option<(&'static str, usize)> {
    match kind {
        Kind::Float => Some(("F32", 4)),
        Kind::Half => Some(("F16", 2)),
        Kind::BFloat16 => Some(("BF16", 2)),
        Kind::Double => Some(("F64", 8)),
        Kind::Int64 => Some(("I64", 8)),
        Kind::Int => Some(("I32", 4)),
        _ => None,
    }
}

/// Writes `path` atomically: `write` fills a temporary sibling file, which is fsynced and renamed
/// over `path`; the directory is then fsynced (best effort). The temporary file is removed on error.
pub fn write_atomic(path: &Path, write: impl FnOnce(&mut BufWriter<File>) -> Result<()>) -> Result<()> {
    distill_base::write_atomic_with(path, write)
}

/// Saves named tensors (any device; F32, F16, BF16, F64, I64 or I32) as one safetensors file,
/// atomically, with `__metadata__ = {"format": "pt"}` as transformers expects.
pub fn save_safetensors(tensors: &[(String, Tensor)], path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    let mut sorted: Vec<&(String, Tensor)> = tensors.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut header = Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut offset = 0usize;
    for (name, t) in &sorted {
        let (dtype, size) = dtype_of(t.kind())
            .ok_or_else(|| Error::Invalid(format!("cannot save tensor `{name}` of kind {:?}", t.kind())))?;
        let n = t.numel() * size;
        header.insert(name.clone(), json!({"dtype": dtype, "shape": t.size(), "data_offsets": [offset, offset + n]}));
        offset += n;
    }
    let mut header =
        serde_json::to_vec(&Value::Object(header)).map_err(|e| Error::Invalid(format!("safetensors header: {e}")))?;
    header.resize(header.len().next_multiple_of(8), b' ');
    write_atomic(path, |w| {
        let io = |e| Error::io(path, e);
        w.write_all(&(header.len() as u64).to_le_bytes()).map_err(io)?;
        w.write_all(&header).map_err(io)?;
        for (_, t) in &sorted {
            let t = t.f_detach()?.f_to_device(tch::Device::Cpu)?.f_contiguous()?;
            let n = t.numel();
            let bytes = n * dtype_of(t.kind()).map_or(0, |d| d.1);
            let mut buf = vec![0u8; bytes];
            t.f_copy_data_u8(&mut buf, n)?;
            w.write_all(&buf).map_err(io)?;
        }
        Ok(())
    })
}
