//! Writing GGUF v3 files: metadata, then F32 / F16 / Q8_0 / Q4_0 (or pre-encoded) tensors, every tensor
//! aligned, the whole file written to a temporary file in the destination directory, fsynced and
//! renamed into place so that a reader never sees a half-written file.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::error::{GgufError, Result};
use crate::metadata::{MetadataArray, MetadataValue};
use crate::quant::{quantize_f16, quantize_f32, quantize_q4_0, quantize_q8_0};
use crate::reader::{DEFAULT_ALIGNMENT, GGUF_MAGIC, MAX_DIMS};
use crate::types::GgmlType;

struct PendingTensor {
    name: String,
    /// GGUF order: innermost first.
    dims: Vec<u64>,
    ty: GgmlType,
    data: Vec<u8>,
}

/// Builds a GGUF v3 file in memory and writes it atomically with [`GgufWriter::write`].
///
/// ```no_run
/// # use distill_gguf::{GgufWriter, GgmlType};
/// let mut w = GgufWriter::new("student.gguf");
/// w.add_metadata("general.architecture", "llama")?;
/// w.add_tensor_f32("token_embd.weight", &[4, 32], &[0.0; 128], GgmlType::Q8_0)?;
/// w.write()?;
/// # Ok::<(), distill_gguf::GgufError>(())
/// ```
pub struct GgufWriter {
    path: PathBuf,
    alignment: u64,
    metadata: Vec<(String, MetadataValue)>,
    keys: HashSet<String>,
    tensors: Vec<PendingTensor>,
    names: HashSet<String>,
}

impl GgufWriter {
    /// A writer for the file at `path` (nothing is written before [`GgufWriter::write`]).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            alignment: DEFAULT_ALIGNMENT,
            metadata: Vec::new(),
            keys: HashSet::new(),
            tensors: Vec::new(),
            names: HashSet::new(),
        }
    }

    fn invalid(&self, tensor: &str, message: String) -> GgufError {
        GgufError::InvalidWrite { path: self.path.clone(), tensor: tensor.to_owned(), message }
    }

    /// Sets the data alignment (a power of two, default 32); written as `general.alignment`
    /// when it differs from the default.
    pub fn set_alignment(&mut self, alignment: u64) -> Result<()> {
        if !alignment.is_power_of_two() {
            return Err(GgufError::Malformed {
                path: self.path.clone(),
                message: format!("alignment {alignment} is not a power of two"),
            });
        }
        self.alignment = alignment;
        Ok(())
    }

    /// Adds a metadata entry; keys are written in insertion order and must be unique.
    /// `general.alignment` is managed by [`GgufWriter::set_alignment`].
    pub fn add_metadata(&mut self, key: &str, value: impl Into<MetadataValue>) -> Result<()> {
        if key == "general.alignment" || !self.keys.insert(key.to_owned()) {
            return Err(GgufError::DuplicateKey { path: self.path.clone(), key: key.to_owned() });
        }
        self.metadata.push((key.to_owned(), value.into()));
        Ok(())
    }

    /// Adds a tensor given as `f32` in row-major `shape` (PyTorch order), encoded as `ty`:
    /// F32, F16 (round to nearest even), Q8_0 or Q4_0 (innermost dim a multiple of 32).
    ///
    /// # Shapes
    /// `data.len() == shape.iter().product()`; at most 4 dims.
    pub fn add_tensor_f32(&mut self, name: &str, shape: &[usize], data: &[f32], ty: GgmlType) -> Result<()> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(self.invalid(name, format!("shape {shape:?} holds {n} elements, data has {}", data.len())));
        }
        let bytes = match ty {
            GgmlType::F32 => quantize_f32(data),
            GgmlType::F16 => quantize_f16(data),
            GgmlType::Q8_0 | GgmlType::Q4_0 => {
                let row = shape.last().copied().unwrap_or(1);
                if row % 32 != 0 {
                    return Err(
                        self.invalid(name, format!("{ty} needs the innermost dim to be a multiple of 32, got {row}"))
                    );
                }
                let q = if ty == GgmlType::Q8_0 { quantize_q8_0(data) } else { quantize_q4_0(data) };
                q.map_err(|e| self.invalid(name, e.to_string()))?
            }
            other => {
                return Err(self.invalid(name, format!("encoding {other} is not supported (F32, F16, Q8_0, Q4_0)")))
            }
        };
        self.add_tensor_raw(name, shape, ty, bytes)
    }

    /// Adds a tensor whose bytes are already encoded as `ty` (e.g. copied from another GGUF).
    /// `shape` is row-major (PyTorch order); the byte length must match it exactly.
    pub fn add_tensor_raw(&mut self, name: &str, shape: &[usize], ty: GgmlType, data: Vec<u8>) -> Result<()> {
        if shape.len() > MAX_DIMS as usize {
            return Err(self.invalid(name, format!("{} dims, at most {MAX_DIMS}", shape.len())));
        }
        let dims: Vec<u64> = shape.iter().rev().map(|&d| d as u64).collect();
        let row = dims.first().copied().unwrap_or(1);
        let n: u64 = dims.iter().product();
        let expected = if row % ty.block_size() == 0 { ty.bytes_for(n) } else { None };
        if expected != Some(data.len() as u64) {
            return Err(self.invalid(
                name,
                format!("{} bytes do not encode shape {shape:?} as {ty} (block of {})", data.len(), ty.block_size()),
            ));
        }
        if !self.names.insert(name.to_owned()) {
            return Err(GgufError::DuplicateTensor { path: self.path.clone(), tensor: name.to_owned() });
        }
        self.tensors.push(PendingTensor { name: name.to_owned(), dims, ty, data });
        Ok(())
    }

    /// Serializes the whole file into memory (what [`GgufWriter::write`] puts on disk).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&GGUF_MAGIC);
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        let extra = u64::from(self.alignment != DEFAULT_ALIGNMENT);
        out.extend_from_slice(&(self.metadata.len() as u64 + extra).to_le_bytes());
        if extra == 1 {
            put_string(&mut out, "general.alignment");
            put_value(&mut out, &MetadataValue::U32(self.alignment as u32));
        }
        for (key, value) in &self.metadata {
            put_string(&mut out, key);
            put_value(&mut out, value);
        }
        let mut offset = 0u64;
        let mut offsets = Vec::with_capacity(self.tensors.len());
        for t in &self.tensors {
            put_string(&mut out, &t.name);
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.ty.id().to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            offsets.push(offset);
            offset = (offset + t.data.len() as u64).div_ceil(self.alignment) * self.alignment;
        }
        pad(&mut out, self.alignment);
        for t in &self.tensors {
            out.extend_from_slice(&t.data);
            pad(&mut out, self.alignment);
        }
        out
    }

    /// Writes the file atomically: to a temporary file in the same directory, fsync, rename over
    /// the destination, fsync the directory (best effort).
    pub fn write(self) -> Result<()> {
        let bytes = self.to_bytes();
        write_atomic(&self.path, &bytes)
    }
}

fn pad(out: &mut Vec<u8>, alignment: u64) {
    let len = out.len() as u64;
    let padded = len.div_ceil(alignment) * alignment;
    out.resize(padded as usize, 0);
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &MetadataValue) {
    out.extend_from_slice(&v.value_type().id().to_le_bytes());
    put_payload(out, v);
}

fn put_payload(out: &mut Vec<u8>, v: &MetadataValue) {
    match v {
        MetadataValue::U8(x) => out.push(*x),
        MetadataValue::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetadataValue::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetadataValue::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetadataValue::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetadataValue::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetadataValue::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetadataValue::Bool(x) => out.push(u8::from(*x)),
        MetadataValue::String(s) => put_string(out, s),
        MetadataValue::Array(a) => put_array(out, a),
        MetadataValue::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetadataValue::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetadataValue::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
    }
}

fn put_array(out: &mut Vec<u8>, a: &MetadataArray) {
    out.extend_from_slice(&a.element_type().id().to_le_bytes());
    out.extend_from_slice(&(a.len() as u64).to_le_bytes());
    macro_rules! le {
        ($v:expr) => {
            for x in $v {
                out.extend_from_slice(&x.to_le_bytes());
            }
        };
    }
    match a {
        MetadataArray::U8(v) => out.extend_from_slice(v),
        MetadataArray::I8(v) => le!(v),
        MetadataArray::U16(v) => le!(v),
        MetadataArray::I16(v) => le!(v),
        MetadataArray::U32(v) => le!(v),
        MetadataArray::I32(v) => le!(v),
        MetadataArray::F32(v) => le!(v),
        MetadataArray::Bool(v) => out.extend(v.iter().map(|&b| u8::from(b))),
        MetadataArray::String(v) => v.iter().for_each(|s| put_string(out, s)),
        MetadataArray::Array(v) => v.iter().for_each(|inner| put_array(out, inner)),
        MetadataArray::U64(v) => le!(v),
        MetadataArray::I64(v) => le!(v),
        MetadataArray::F64(v) => le!(v),
    }
}

/// Writes `bytes` to `path` atomically (temp file in the same directory + fsync + rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    Ok(distill_base::write_atomic(path, bytes)?)
}
