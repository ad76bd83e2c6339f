//! GGUF metadata values: the thirteen value types of the format, arrays (nested too) kept typed
//! so that a 49k-entry token list is one `Vec<String>`, not 49k enum boxes.

use std::fmt;

/// The value type ids of the GGUF format (`gguf_type` in ggml).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetadataValueType {
    /// 0
    U8,
    /// 1
    I8,
    /// 2
    U16,
    /// 3
    I16,
    /// 4
    U32,
    /// 5
    I32,
    /// 6
    F32,
    /// 7
    Bool,
    /// 8
    String,
    /// 9
    Array,
    /// 10
    U64,
    /// 11
    I64,
    /// 12
    F64,
}

impl MetadataValueType {
    /// The type with GGUF id `id`, or `None` for an undefined id.
    pub fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => Self::U8,
            1 => Self::I8,
            2 => Self::U16,
            3 => Self::I16,
            4 => Self::U32,
            5 => Self::I32,
            6 => Self::F32,
            7 => Self::Bool,
            8 => Self::String,
            9 => Self::Array,
            10 => Self::U64,
            11 => Self::I64,
            12 => Self::F64,
            _ => return None,
        })
    }

    /// The id written in the file.
    pub fn id(self) -> u32 {
        match self {
            Self::U8 => 0,
            Self::I8 => 1,
            Self::U16 => 2,
            Self::I16 => 3,
            Self::U32 => 4,
            Self::I32 => 5,
            Self::F32 => 6,
            Self::Bool => 7,
            Self::String => 8,
            Self::Array => 9,
            Self::U64 => 10,
            Self::I64 => 11,
            Self::F64 => 12,
        }
    }

    /// Size in bytes of one scalar of this type, `None` for strings and arrays.
    pub fn scalar_size(self) -> Option<u64> {
        Some(match self {
            Self::U8 | Self::I8 | Self::Bool => 1,
            Self::U16 | Self::I16 => 2,
            Self::U32 | Self::I32 | Self::F32 => 4,
            Self::U64 | Self::I64 | Self::F64 => 8,
            Self::String | Self::Array => return None,
        })
    }
}

impl fmt::Display for MetadataValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Self::U8 => "u8",
            Self::I8 => "i8",
            Self::U16 => "u16",
            Self::I16 => "i16",
            Self::U32 => "u32",
            Self::I32 => "i32",
            Self::F32 => "f32",
            Self::Bool => "bool",
            Self::String => "string",
            Self::Array => "array",
            Self::U64 => "u64",
            Self::I64 => "i64",
            Self::F64 => "f64",
        };
        f.write_str(s)
    }
}

/// A typed GGUF array. Nested arrays hold one [`MetadataArray`] per element.
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)]
pub enum MetadataArray {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    F32(Vec<f32>),
    Bool(Vec<bool>),
    String(Vec<String>),
    Array(Vec<MetadataArray>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F64(Vec<f64>),
}

impl MetadataArray {
    /// The element type.
    pub fn element_type(&self) -> MetadataValueType {
        match self {
            Self::U8(_) => MetadataValueType::U8,
            Self::I8(_) => MetadataValueType::I8,
            Self::U16(_) => MetadataValueType::U16,
            Self::I16(_) => MetadataValueType::I16,
            Self::U32(_) => MetadataValueType::U32,
            Self::I32(_) => MetadataValueType::I32,
            Self::F32(_) => MetadataValueType::F32,
            Self::Bool(_) => MetadataValueType::Bool,
            Self::String(_) => MetadataValueType::String,
            Self::Array(_) => MetadataValueType::Array,
            Self::U64(_) => MetadataValueType::U64,
            Self::I64(_) => MetadataValueType::I64,
            Self::F64(_) => MetadataValueType::F64,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Self::U8(v) => v.len(),
            Self::I8(v) => v.len(),
            Self::U16(v) => v.len(),
            Self::I16(v) => v.len(),
            Self::U32(v) => v.len(),
            Self::I32(v) => v.len(),
            Self::F32(v) => v.len(),
            Self::Bool(v) => v.len(),
            Self::String(v) => v.len(),
            Self::Array(v) => v.len(),
            Self::U64(v) => v.len(),
            Self::I64(v) => v.len(),
            Self::F64(v) => v.len(),
        }
    }

    /// Whether the array has no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every element as `i64` when the array holds integers (any width) that all fit.
    pub fn to_i64_vec(&self) -> Option<Vec<i64>> {
        fn conv<T: Copy>(v: &[T], f: impl Fn(T) -> Option<i64>) -> Option<Vec<i64>> {
            v.iter().map(|&x| f(x)).collect()
        }
        match self {
            Self::U8(v) => conv(v, |x| Some(i64::from(x))),
            Self::I8(v) => conv(v, |x| Some(i64::from(x))),
            Self::U16(v) => conv(v, |x| Some(i64::from(x))),
            Self::I16(v) => conv(v, |x| Some(i64::from(x))),
            Self::U32(v) => conv(v, |x| Some(i64::from(x))),
            Self::I32(v) => conv(v, |x| Some(i64::from(x))),
            Self::U64(v) => conv(v, |x| i64::try_from(x).ok()),
            Self::I64(v) => Some(v.clone()),
            _ => None,
        }
    }
}

/// One GGUF metadata value.
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)]
pub enum MetadataValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(MetadataArray),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl MetadataValue {
    /// The value type as the file spells it.
    pub fn value_type(&self) -> MetadataValueType {
        match self {
            Self::U8(_) => MetadataValueType::U8,
            Self::I8(_) => MetadataValueType::I8,
            Self::U16(_) => MetadataValueType::U16,
            Self::I16(_) => MetadataValueType::I16,
            Self::U32(_) => MetadataValueType::U32,
            Self::I32(_) => MetadataValueType::I32,
            Self::F32(_) => MetadataValueType::F32,
            Self::Bool(_) => MetadataValueType::Bool,
            Self::String(_) => MetadataValueType::String,
            Self::Array(_) => MetadataValueType::Array,
            Self::U64(_) => MetadataValueType::U64,
            Self::I64(_) => MetadataValueType::I64,
            Self::F64(_) => MetadataValueType::F64,
        }
    }

    /// A short description of the type for error messages (`"u32"`, `"array of string"`).
    pub fn type_description(&self) -> String {
        match self {
            Self::Array(a) => format!("array of {}", a.element_type()),
            v => v.value_type().to_string(),
        }
    }

    /// Any integer value (of any width or sign) as `i128`; `None` for other types.
    fn as_integer(&self) -> Option<i128> {
        Some(match *self {
            Self::U8(x) => x.into(),
            Self::I8(x) => x.into(),
            Self::U16(x) => x.into(),
            Self::I16(x) => x.into(),
            Self::U32(x) => x.into(),
            Self::I32(x) => x.into(),
            Self::U64(x) => x.into(),
            Self::I64(x) => x.into(),
            _ => return None,
        })
    }

    /// The value as `u32` if it is an integer of any GGUF width that fits (files differ in which
    /// width they use for counts).
    pub fn as_u32(&self) -> Option<u32> {
        self.as_integer().and_then(|x| u32::try_from(x).ok())
    }

    /// The value as `u64` if it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        self.as_integer().and_then(|x| u64::try_from(x).ok())
    }

    /// The value as `i64` if it is an integer of any width that fits.
    pub fn as_i64(&self) -> Option<i64> {
        self.as_integer().and_then(|x| i64::try_from(x).ok())
    }

    /// The value as `f32`: an `F32` as is, an `F64` rounded to nearest.
    pub fn as_f32(&self) -> Option<f32> {
        match *self {
            Self::F32(x) => Some(x),
            Self::F64(x) => Some(x as f32),
            _ => None,
        }
    }

    /// The value as `f64`: `F32` widened exactly, `F64` as is.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::F32(x) => Some(f64::from(x)),
            Self::F64(x) => Some(x),
            _ => None,
        }
    }

    /// The value if it is a bool.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Self::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The value if it is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value if it is an array (of anything).
    pub fn as_array(&self) -> Option<&MetadataArray> {
        match self {
            Self::Array(a) => Some(a),
            _ => None,
        }
    }

    /// The value if it is an array of strings.
    pub fn as_str_array(&self) -> Option<&[String]> {
        match self {
            Self::Array(MetadataArray::String(v)) => Some(v),
            _ => None,
        }
    }

    /// The value if it is an array of `f32`.
    pub fn as_f32_array(&self) -> Option<&[f32]> {
        match self {
            Self::Array(MetadataArray::F32(v)) => Some(v),
            _ => None,
        }
    }

    /// The value as `i64`s if it is an array of integers of any width.
    pub fn to_i64_array(&self) -> Option<Vec<i64>> {
        self.as_array().and_then(MetadataArray::to_i64_vec)
    }
}

impl From<&str> for MetadataValue {
    fn from(s: &str) -> Self {
        Self::String(s.to_owned())
    }
}
impl From<String> for MetadataValue {
    fn from(s: String) -> Self {
        Self::String(s)
    }
}
impl From<u32> for MetadataValue {
    fn from(x: u32) -> Self {
        Self::U32(x)
    }
}
impl From<i32> for MetadataValue {
    fn from(x: i32) -> Self {
        Self::I32(x)
    }
}
impl From<u64> for MetadataValue {
    fn from(x: u64) -> Self {
        Self::U64(x)
    }
}
impl From<f32> for MetadataValue {
    fn from(x: f32) -> Self {
        Self::F32(x)
    }
}
impl From<bool> for MetadataValue {
    fn from(x: bool) -> Self {
        Self::Bool(x)
    }
}
impl From<MetadataArray> for MetadataValue {
    fn from(a: MetadataArray) -> Self {
        Self::Array(a)
    }
}
