//! Reading GGUF files (v2 and v3, little-endian).
//!
//! Layout (all integers little-endian):
//!
//! ```text
//! magic "GGUF" | version u32 | tensor_count u64 | kv_count u64
//! kv_count × { key: string, value_type u32, value }
//! tensor_count × { name: string, n_dims u32, dims u64 × n_dims (innermost first), ggml_type u32, offset u64 }
//! padding to general.alignment (default 32)
//! tensor data; each tensor at data_offset + offset, offset a multiple of the alignment
//! string = len u64 + UTF-8 bytes; array = elem_type u32 + count u64 + elements
//! ```
//!
//! Everything is validated at open: a corrupt or truncated file gives an [`GgufError`], never a panic.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::dequant::dequantize;
use crate::error::{GgufError, Result};
use crate::metadata::{MetadataArray, MetadataValue, MetadataValueType};
use crate::types::GgmlType;

/// The magic bytes every GGUF file starts with.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Alignment of the tensor data when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's limit on tensor rank.
pub const MAX_DIMS: u32 = 4;
/// Deepest nesting of arrays accepted in metadata (guards the stack against corrupt files).
const MAX_ARRAY_DEPTH: u32 = 8;

/// Where the bytes of an open file live.
enum Storage {
    Mmap(Mmap),
    Owned(Vec<u8>),
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mmap(m) => m,
            Storage::Owned(v) => v,
        }
    }
}

/// One tensor as described in the file's tensor-info table.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// The tensor name (`blk.0.attn_q.weight`).
    pub name: String,
    /// Dimensions as GGUF stores them: innermost (contiguous) first, i.e. ggml's `ne[0], ne[1], …`.
    pub dims: Vec<u64>,
    /// Element type.
    pub ty: GgmlType,
    /// Offset of the data relative to the start of the data section.
    pub offset: u64,
    /// Size of the data in bytes.
    pub n_bytes: u64,
}

impl TensorInfo {
    /// The shape in PyTorch / row-major order (outermost first): GGUF dims reversed.
    /// A GGUF `[576, 49152]` embedding is `[49152, 576]` here.
    pub fn shape(&self) -> Vec<usize> {
        // Dims were checked at open: each is below 2^62, and unless one is 0 their product is
        // the element count of bytes inside the file.
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }

    /// Number of elements (product of the dims; 1 for a scalar).
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// An open GGUF file: parsed header, metadata and tensor infos, with the bytes memory-mapped.
pub struct GgufFile {
    path: PathBuf,
    storage: Storage,
    version: u32,
    metadata: Vec<(String, MetadataValue)>,
    metadata_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    alignment: u64,
    data_offset: u64,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata_keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .field("alignment", &self.alignment)
            .field("data_offset", &self.data_offset)
            .finish()
    }
}

impl GgufFile {
    /// Opens and memory-maps `path`, then parses and validates header, metadata and tensor infos.
    ///
    /// The map is read-only; as with any mmap, the file must not be truncated by another process
    /// while it is open.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let io = |action: &'static str| {
            let path = path.clone();
            move |source| GgufError::Io { path, action, source }
        };
        let file = File::open(&path).map_err(io("open"))?;
        let len = file.metadata().map_err(io("stat"))?.len();
        let storage = if len == 0 {
            // mmap of an empty file fails on some platforms; parsing reports the truncation.
            Storage::Owned(Vec::new())
        } else {
            // SAFETY: the map is read-only and private to this struct; the usual mmap caveat
            // (another process truncating the file underneath) is documented on `open`.
            let map = unsafe { Mmap::map(&file) }.map_err(io("mmap"))?;
            Storage::Mmap(map)
        };
        Self::parse(path, storage)
    }

    /// Parses a GGUF image held in memory. `label` stands for the file name in error messages.
    pub fn from_bytes(bytes: Vec<u8>, label: impl Into<PathBuf>) -> Result<Self> {
        Self::parse(label.into(), Storage::Owned(bytes))
    }

    fn parse(path: PathBuf, storage: Storage) -> Result<Self> {
        let header = parse_header(&path, storage.bytes())?;
        let Header { version, metadata, metadata_index, tensors, tensor_index, alignment, data_offset } = header;
        Ok(Self { path, storage, version, metadata, metadata_index, tensors, tensor_index, alignment, data_offset })
    }

    /// The path the file was opened from (or the label given to [`GgufFile::from_bytes`]).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// `general.alignment`, or 32 when absent.
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute offset of the tensor data section.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// All metadata entries in file order.
    pub fn metadata(&self) -> impl Iterator<Item = (&str, &MetadataValue)> {
        self.metadata.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The value under `key`, if any.
    pub fn get(&self, key: &str) -> Option<&MetadataValue> {
        self.metadata_index.get(key).map(|&i| &self.metadata[i].1)
    }

    fn require(&self, key: &str) -> Result<&MetadataValue> {
        self.get(key).ok_or_else(|| GgufError::MissingKey { path: self.path.clone(), key: key.to_owned() })
    }

    fn typed<'a, T>(
        &'a self,
        key: &str,
        expected: &'static str,
        f: impl FnOnce(&'a MetadataValue) -> Option<T>,
    ) -> Result<T> {
        let v = self.require(key)?;
        f(v).ok_or_else(|| GgufError::WrongType {
            path: self.path.clone(),
            key: key.to_owned(),
            expected,
            found: v.type_description(),
        })
    }

    /// The integer under `key` as `u32` (any integer width accepted if the value fits).
    pub fn get_u32(&self, key: &str) -> Result<u32> {
        self.typed(key, "an integer fitting u32", MetadataValue::as_u32)
    }

    /// The integer under `key` as `u64` (any non-negative integer).
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        self.typed(key, "a non-negative integer", MetadataValue::as_u64)
    }

    /// The float under `key` as `f32` (`F64` rounded).
    pub fn get_f32(&self, key: &str) -> Result<f32> {
        self.typed(key, "a float", MetadataValue::as_f32)
    }

    /// The bool under `key`.
    pub fn get_bool(&self, key: &str) -> Result<bool> {
        self.typed(key, "a bool", MetadataValue::as_bool)
    }

    /// The string under `key`.
    pub fn get_str(&self, key: &str) -> Result<&str> {
        self.typed(key, "a string", MetadataValue::as_str)
    }

    /// The array of strings under `key`.
    pub fn get_str_array(&self, key: &str) -> Result<&[String]> {
        self.typed(key, "an array of strings", MetadataValue::as_str_array)
    }

    /// The array of integers (any width) under `key`, widened to `i64`.
    pub fn get_i64_array(&self, key: &str) -> Result<Vec<i64>> {
        self.typed(key, "an array of integers", MetadataValue::to_i64_array)
    }

    /// The array of floats under `key` (`F32`, or `F64` rounded).
    pub fn get_f32_array(&self, key: &str) -> Result<Vec<f32>> {
        self.typed(key, "an array of floats", |v| match v {
            MetadataValue::Array(MetadataArray::F32(a)) => Some(a.clone()),
            MetadataValue::Array(MetadataArray::F64(a)) => Some(a.iter().map(|&x| x as f32).collect()),
            _ => None,
        })
    }

    /// All tensor infos in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The info of tensor `name`, if present.
    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    fn require_tensor(&self, name: &str) -> Result<&TensorInfo> {
        self.tensor_info(name)
            .ok_or_else(|| GgufError::MissingTensor { path: self.path.clone(), tensor: name.to_owned() })
    }

    /// The raw (possibly quantized) bytes of tensor `name`.
    pub fn tensor_bytes(&self, name: &str) -> Result<&[u8]> {
        let info = self.require_tensor(name)?;
        Ok(self.info_bytes(info))
    }

    fn info_bytes(&self, info: &TensorInfo) -> &[u8] {
        // Bounds were checked at open (data_offset + offset + n_bytes <= file length).
        let start = (self.data_offset + info.offset) as usize;
        let end = start + info.n_bytes as usize;
        self.storage.bytes().get(start..end).unwrap_or(&[])
    }

    /// Tensor `name` dequantized to `f32`, with its row-major shape (see [`TensorInfo::shape`]).
    ///
    /// # Shapes
    /// Returns `(data, shape)` with `data.len() == shape.iter().product()`.
    pub fn tensor_f32(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let info = self.require_tensor(name)?;
        let data = self.info_f32(info)?;
        Ok((data, info.shape()))
    }

    /// Like [`GgufFile::tensor_f32`] for an info taken from [`GgufFile::tensors`].
    pub fn info_f32(&self, info: &TensorInfo) -> Result<Vec<f32>> {
        if !info.ty.can_dequantize() {
            return Err(GgufError::UnsupportedType { path: self.path.clone(), tensor: info.name.clone(), ty: info.ty });
        }
        let n = info.n_elements() as usize;
        let mut out = vec![0f32; n];
        dequantize(info.ty, self.info_bytes(info), &mut out).map_err(|e| GgufError::Malformed {
            path: self.path.clone(),
            message: format!("tensor `{}`: {e}", info.name),
        })?;
        Ok(out)
    }
}

struct Header {
    version: u32,
    metadata: Vec<(String, MetadataValue)>,
    metadata_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    alignment: u64,
    data_offset: u64,
}

/// A bounds-checked little-endian reader over the file bytes.
struct Cursor<'a> {
    path: &'a Path,
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(GgufError::Truncated {
                path: self.path.to_path_buf(),
                what: what(),
                offset: self.pos as u64,
                needed: n,
                len: self.buf.len() as u64,
            });
        }
        let start = self.pos;
        self.pos += n as usize;
        Ok(&self.buf[start..self.pos])
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N]> {
        let bytes = self.take(N as u64, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64> {
        self.array(what).map(u64::from_le_bytes)
    }

    fn malformed(&self, message: String) -> GgufError {
        GgufError::Malformed { path: self.path.to_path_buf(), message }
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String> {
        let len = self.u64(what)?;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|e| self.malformed(format!("{}: invalid UTF-8: {e}", what())))
    }

    /// Reserves at most what the remaining bytes could possibly hold, so that a corrupt count
    /// cannot make us allocate terabytes.
    fn capacity(&self, count: u64, min_elem_size: u64) -> usize {
        let possible = self.remaining() / min_elem_size.max(1);
        count.min(possible) as usize
    }

    fn value(&mut self, ty: MetadataValueType, depth: u32, what: &dyn Fn() -> String) -> Result<MetadataValue> {
        Ok(match ty {
            MetadataValueType::U8 => MetadataValue::U8(self.array::<1>(what)?[0]),
            MetadataValueType::I8 => MetadataValue::I8(i8::from_le_bytes(self.array(what)?)),
            MetadataValueType::U16 => MetadataValue::U16(u16::from_le_bytes(self.array(what)?)),
            MetadataValueType::I16 => MetadataValue::I16(i16::from_le_bytes(self.array(what)?)),
            MetadataValueType::U32 => MetadataValue::U32(self.u32(what)?),
            MetadataValueType::I32 => MetadataValue::I32(i32::from_le_bytes(self.array(what)?)),
            MetadataValueType::F32 => MetadataValue::F32(f32::from_le_bytes(self.array(what)?)),
            MetadataValueType::Bool => MetadataValue::Bool(self.bool(what)?),
            MetadataValueType::String => MetadataValue::String(self.string(what)?),
            MetadataValueType::Array => MetadataValue::Array(self.array_value(depth, what)?),
            MetadataValueType::U64 => MetadataValue::U64(self.u64(what)?),
            MetadataValueType::I64 => MetadataValue::I64(i64::from_le_bytes(self.array(what)?)),
            MetadataValueType::F64 => MetadataValue::F64(f64::from_le_bytes(self.array(what)?)),
        })
    }

    fn bool(&mut self, what: &dyn Fn() -> String) -> Result<bool> {
        match self.array::<1>(what)?[0] {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(self.malformed(format!("{}: invalid bool byte {b}", what()))),
        }
    }

    fn value_type(&mut self, what: &dyn Fn() -> String) -> Result<MetadataValueType> {
        let id = self.u32(what)?;
        MetadataValueType::from_id(id).ok_or_else(|| self.malformed(format!("{}: unknown value type id {id}", what())))
    }

    fn array_value(&mut self, depth: u32, what: &dyn Fn() -> String) -> Result<MetadataArray> {
        if depth >= MAX_ARRAY_DEPTH {
            return Err(self.malformed(format!("{}: arrays nested deeper than {MAX_ARRAY_DEPTH}", what())));
        }
        let elem = self.value_type(what)?;
        let count = self.u64(what)?;
        // Fixed-size elements: check the whole array fits before reading any of it.
        if let Some(size) = elem.scalar_size() {
            let needed = count.saturating_mul(size);
            if needed > self.remaining() {
                return Err(GgufError::Truncated {
                    path: self.path.to_path_buf(),
                    what: what(),
                    offset: self.pos as u64,
                    needed,
                    len: self.buf.len() as u64,
                });
            }
        }
        macro_rules! scalars {
            ($variant:ident, $t:ty) => {{
                let size = std::mem::size_of::<$t>() as u64;
                let bytes = self.take(count * size, what)?;
                MetadataArray::$variant(
                    bytes
                        .chunks_exact(size as usize)
                        .map(|c| {
                            let mut a = [0u8; std::mem::size_of::<$t>()];
                            a.copy_from_slice(c);
                            <$t>::from_le_bytes(a)
                        })
                        .collect(),
                )
            }};
        }
        Ok(match elem {
            MetadataValueType::U8 => MetadataArray::U8(self.take(count, what)?.to_vec()),
            MetadataValueType::I8 => scalars!(I8, i8),
            MetadataValueType::U16 => scalars!(U16, u16),
            MetadataValueType::I16 => scalars!(I16, i16),
            MetadataValueType::U32 => scalars!(U32, u32),
            MetadataValueType::I32 => scalars!(I32, i32),
            MetadataValueType::F32 => scalars!(F32, f32),
            MetadataValueType::U64 => scalars!(U64, u64),
            MetadataValueType::I64 => scalars!(I64, i64),
            MetadataValueType::F64 => scalars!(F64, f64),
            MetadataValueType::Bool => {
                let mut v = Vec::with_capacity(self.capacity(count, 1));
                for _ in 0..count {
                    v.push(self.bool(what)?);
                }
                MetadataArray::Bool(v)
            }
            MetadataValueType::String => {
                let mut v = Vec::with_capacity(self.capacity(count, 8));
                for _ in 0..count {
                    v.push(self.string(what)?);
                }
                MetadataArray::String(v)
            }
            MetadataValueType::Array => {
                let mut v = Vec::with_capacity(self.capacity(count, 12));
                for _ in 0..count {
                    v.push(self.array_value(depth + 1, what)?);
                }
                MetadataArray::Array(v)
            }
        })
    }
}

fn parse_header(path: &Path, buf: &[u8]) -> Result<Header> {
    let mut c = Cursor { path, buf, pos: 0 };
    let magic: [u8; 4] = c.array(&|| "magic".to_owned())?;
    if magic != GGUF_MAGIC {
        return Err(GgufError::BadMagic { path: path.to_path_buf(), found: magic });
    }
    let version = c.u32(&|| "version".to_owned())?;
    if version != 2 && version != 3 {
        return Err(GgufError::UnsupportedVersion { path: path.to_path_buf(), version });
    }
    let tensor_count = c.u64(&|| "tensor count".to_owned())?;
    let kv_count = c.u64(&|| "metadata count".to_owned())?;

    // Each kv takes at least 8 (key len) + 4 (type) + 1 bytes; each tensor info at least 8+4+4+8.
    let mut metadata = Vec::with_capacity(c.capacity(kv_count, 13));
    let mut metadata_index = HashMap::with_capacity(c.capacity(kv_count, 13));
    for i in 0..kv_count {
        let key = c.string(&|| format!("metadata key #{i}"))?;
        let what = || format!("metadata value `{key}`");
        let ty = c.value_type(&what)?;
        let value = c.value(ty, 0, &what)?;
        if metadata_index.insert(key.clone(), metadata.len()).is_some() {
            return Err(GgufError::DuplicateKey { path: path.to_path_buf(), key });
        }
        metadata.push((key, value));
    }

    let alignment = match metadata_index.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(&i) => {
            let v = &metadata[i].1;
            match v.as_u64() {
                Some(a) if a.is_power_of_two() => a,
                _ => {
                    return Err(GgufError::Malformed {
                        path: path.to_path_buf(),
                        message: format!("general.alignment must be a power-of-two integer, found {v:?}"),
                    })
                }
            }
        }
    };

    let mut tensors = Vec::with_capacity(c.capacity(tensor_count, 24));
    let mut tensor_index = HashMap::with_capacity(c.capacity(tensor_count, 24));
    for i in 0..tensor_count {
        let name = c.string(&|| format!("tensor info #{i} name"))?;
        let what = || format!("tensor info `{name}`");
        let n_dims = c.u32(&what)?;
        if n_dims > MAX_DIMS {
            return Err(
                c.malformed(format!("tensor `{name}` has {n_dims} dimensions (ggml supports at most {MAX_DIMS})"))
            );
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(c.u64(&what)?);
        }
        let type_id = c.u32(&what)?;
        let offset = c.u64(&what)?;
        let ty = GgmlType::from_id(type_id).ok_or_else(|| GgufError::UnknownGgmlType {
            path: path.to_path_buf(),
            tensor: name.clone(),
            type_id,
        })?;
        let n_elements = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| c.malformed(format!("tensor `{name}`: element count overflows")))?;
        // An empty tensor (a zero dim) would let the other dims be anything; every dim must be
        // a size a tensor library can hold, whatever the product.
        if let Some(&d) = dims.iter().find(|&&d| d > i64::MAX as u64 / 2) {
            return Err(c.malformed(format!("tensor `{name}`: dimension {d} is not a tensor size")));
        }
        let row = dims.first().copied().unwrap_or(1);
        if row % ty.block_size() != 0 {
            return Err(c.malformed(format!(
                "tensor `{name}`: row length {row} is not a multiple of the {ty} block size {}",
                ty.block_size()
            )));
        }
        let n_bytes =
            ty.bytes_for(n_elements).ok_or_else(|| c.malformed(format!("tensor `{name}`: byte size overflows")))?;
        if offset % alignment != 0 {
            return Err(GgufError::MisalignedOffset { path: path.to_path_buf(), tensor: name, offset, alignment });
        }
        if tensor_index.insert(name.clone(), tensors.len()).is_some() {
            return Err(GgufError::DuplicateTensor { path: path.to_path_buf(), tensor: name });
        }
        tensors.push(TensorInfo { name, dims, ty, offset, n_bytes });
    }

    let len = buf.len() as u64;
    let data_offset = (c.pos as u64).div_ceil(alignment) * alignment;
    for t in &tensors {
        let start = data_offset.checked_add(t.offset);
        let end = start.and_then(|s| s.checked_add(t.n_bytes));
        match (start, end) {
            (Some(_), Some(end)) if end <= len => {}
            _ => {
                return Err(GgufError::TensorOutOfBounds {
                    path: path.to_path_buf(),
                    tensor: t.name.clone(),
                    start: start.unwrap_or(u64::MAX),
                    end: end.unwrap_or(u64::MAX),
                    len,
                })
            }
        }
    }

    Ok(Header { version, metadata, metadata_index, tensors, tensor_index, alignment, data_offset })
}
