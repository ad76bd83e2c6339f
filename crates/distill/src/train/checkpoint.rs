//! Named tensors in safetensors files, written atomically (temporary file, fsync, rename), and
//! small atomic text/JSON writes for run directories.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use tch::{Kind, Tensor};

use crate::{Error, Result};

/// Writes `bytes` to `path` atomically: a crash leaves either the old file or the new one
/// (temporary sibling, fsync, rename; [`distill_base::atomic`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    Ok(distill_base::write_atomic(path, bytes)?)
}

/// Serializes `value` as pretty JSON and writes it atomically.
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    Ok(distill_base::write_json(path, value)?)
}

fn dtype_of(kind: Kind) -> Result<(Dtype, usize)> {
    Ok(match kind {
        Kind::Float => (Dtype::F32, 4),
        Kind::Double => (Dtype::F64, 8),
        Kind::Half => (Dtype::F16, 2),
        Kind::BFloat16 => (Dtype::BF16, 2),
        Kind::Int64 => (Dtype::I64, 8),
        Kind::Int => (Dtype::I32, 4),
        Kind::Int16 => (Dtype::I16, 2),
        Kind::Uint8 => (Dtype::U8, 1),
        Kind::Int8 => (Dtype::I8, 1),
        k => return Err(Error::Invalid(format!("cannot store tensors of kind {k:?} in safetensors"))),
    })
}

fn kind_of(d: Dtype) -> Option<Kind> {
    Some(match d {
        Dtype::F32 => Kind::Float,
        Dtype::F64 => Kind::Double,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::I16 => Kind::Int16,
        Dtype::U8 => Kind::Uint8,
        Dtype::I8 => Kind::Int8,
        _ => return None,
    })
}

/// Raw little-endian bytes of a CPU copy of `t`.
pub fn tensor_bytes(t: &Tensor) -> Result<Vec<u8>> {
    let (_, size) = dtype_of(t.kind())?;
    let t = t.detach().to_device(tch::Device::Cpu).contiguous();
    let n = t.numel();
    let mut buf = vec![0u8; n * size];
    t.f_copy_data_u8(&mut buf, n)?;
    Ok(buf)
}

/// Saves named tensors (any device) with string metadata, atomically.
pub fn save_tensors(path: &Path, tensors: &[(String, Tensor)], metadata: BTreeMap<String, String>) -> Result<()> {
    let mut bufs = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let (dtype, _) = dtype_of(t.kind())?;
        let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
        bufs.push((name.clone(), dtype, shape, tensor_bytes(t)?));
    }
    let views: Vec<(String, TensorView<'_>)> = bufs
        .iter()
        .map(|(n, d, s, b)| TensorView::new(*d, s.clone(), b).map(|v| (n.clone(), v)))
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| Error::format(path, format!("cannot build tensor view: {e}")))?;
    let meta: HashMap<String, String> = metadata.into_iter().collect();
    let bytes = safetensors::serialize(views, Some(meta)).map_err(|e| Error::format(path, e.to_string()))?;
    write_atomic(path, &bytes)
}

/// Tensors loaded from a safetensors file, with its metadata.
#[derive(Debug)]
pub struct Loaded {
    pub tensors: HashMap<String, Tensor>,
    pub metadata: HashMap<String, String>,
}

/// Loads every tensor of a safetensors file onto the CPU. Corrupt or truncated files are
/// errors naming the file.
pub fn load_tensors(path: &Path) -> Result<Loaded> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    tensors_from_bytes(path, &bytes)
}

/// [`load_tensors`] on bytes already read; `path` names them in errors.
pub fn tensors_from_bytes(path: &Path, bytes: &[u8]) -> Result<Loaded> {
    let (_, meta) = SafeTensors::read_metadata(bytes)
        .map_err(|e| Error::format(path, format!("not a valid safetensors file: {e}")))?;
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| Error::format(path, format!("not a valid safetensors file: {e}")))?;
    let mut tensors = HashMap::new();
    for (name, view) in st.tensors() {
        let kind = kind_of(view.dtype())
            .ok_or_else(|| Error::format(path, format!("tensor `{name}` has unsupported dtype {:?}", view.dtype())))?;
        let shape = view
            .shape()
            .iter()
            .map(|&d| i64::try_from(d))
            .collect::<std::result::Result<Vec<i64>, _>>()
            .map_err(|_| Error::format(path, format!("tensor `{name}` has a dimension past i64")))?;
        let t = Tensor::f_from_data_size(view.data(), &shape, kind)?;
        tensors.insert(name, t);
    }
    let metadata = meta.metadata().clone().unwrap_or_default();
    Ok(Loaded { tensors, metadata })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_corruption() {
        let dir = std::env::temp_dir().join(format!("distill-ckpt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("a.safetensors");
        let a = Tensor::from_slice(&[1.5f32, -2.0, 3.25]).view([3, 1]);
        let b = Tensor::from_slice(&[7i64, 8]);
        let meta = BTreeMap::from([("step".to_string(), "42".to_string())]);
        save_tensors(&p, &[("a".into(), a.shallow_clone()), ("b".into(), b.shallow_clone())], meta).unwrap();
        let l = load_tensors(&p).unwrap();
        assert_eq!(l.metadata["step"], "42");
        assert!(l.tensors["a"].equal(&a));
        assert!(l.tensors["b"].equal(&b));
        // Truncation is an error naming the file, never a panic.
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 3]).unwrap();
        let e = load_tensors(&p).unwrap_err().to_string();
        assert!(e.contains("a.safetensors") && e.contains("not a valid safetensors file"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
