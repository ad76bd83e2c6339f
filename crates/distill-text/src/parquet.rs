//! Parquet files — what dataset hubs store — read as rows of JSON objects.
//!
//! [`read_parquet`] returns every row of a file as a JSON object holding only the requested
//! columns: the other columns are not decoded (the record reader is given a projected schema).
//! Values become JSON as `datasets`/pyarrow's `to_pylist` followed by `json.dumps` writes them:
//!
//! | Parquet | JSON |
//! |---|---|
//! | string (and binary holding UTF-8 text, as older writers store strings) | string |
//! | bool, integers, floats | bool, number (a NaN or infinity: `null`, JSON has no such number) |
//! | null | null |
//! | list | array |
//! | struct | object (a chat column `list<struct<role, content>>` → `[{"role": …, "content": …}, …]`) |
//! | map | object (a key that is not a string: its text) |
//! | decimal, date, time, timestamp | string (their text) |
//!
//! Binary that is not UTF-8 (images, audio) is an error naming the file, the column (with its
//! path inside lists and structs) and the row (counted from 0, as `dataset[i]`). A truncated or
//! corrupt file is an error too: the third-party reader runs under
//! [`distill_base::guard::catch`], so a panic inside it becomes an error.
//!
//! The codecs read: uncompressed, snappy, gzip and zstd (what pyarrow, `datasets` and polars
//! write); another (lz4, brotli, lzo) is an error naming it and the column, before any row is
//! read.

use std::path::Path;

use parquet::basic::Compression;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::{Field, Row};
use parquet::schema::types::Type;
use serde_json::{Map, Value};

use crate::error::{Result, TextError};

/// One row: column name → value.
pub type JsonRow = Map<String, Value>;

/// Longest parquet error message kept (some print whole byte arrays).
const MAX_MESSAGE: usize = 300;

/// Every row of the Parquet file at `path`, as a JSON object holding only `columns` (in the
/// module docs: how values map to JSON). A requested column the file lacks is an error naming
/// it and the columns the file has; an empty `columns` is an error.
pub fn read_parquet(path: &Path, columns: &[&str]) -> Result<Vec<JsonRow>> {
    let bytes = std::fs::read(path).map_err(|error| TextError::Io { path: path.to_path_buf(), error })?;
    parse_parquet(bytes, path, columns)
}

/// [`read_parquet`] of those of `columns` the file has (at least one; the error names the
/// columns looked for and the file's): how a record's fields are found.
pub fn read_parquet_any(path: &Path, columns: &[&str]) -> Result<Vec<JsonRow>> {
    let bytes = std::fs::read(path).map_err(|error| TextError::Io { path: path.to_path_buf(), error })?;
    parse(bytes, path, columns, true)
}

/// [`read_parquet`] on a file already in memory; `path` only names it in errors.
pub fn parse_parquet(bytes: Vec<u8>, path: &Path, columns: &[&str]) -> Result<Vec<JsonRow>> {
    parse(bytes, path, columns, false)
}

/// `columns` of the file in `bytes`; with `any`, those it has.
fn parse(bytes: Vec<u8>, path: &Path, columns: &[&str], any: bool) -> Result<Vec<JsonRow>> {
    let err = |column: Option<&str>, row: Option<usize>, message: String| TextError::Parquet {
        path: path.to_path_buf(),
        column: column.map(str::to_string),
        row,
        message,
    };
    check_magic(&bytes).map_err(|m| err(None, None, m))?;
    if columns.is_empty() {
        return Err(err(None, None, "no columns requested".into()));
    }
    let reader = distill_base::guard::catch(|| SerializedFileReader::new(bytes::Bytes::from(bytes)))
        .map_err(|p| err(None, None, format!("reading the metadata panicked: {}", clip(&p))))?
        .map_err(|e| err(None, None, format!("cannot read the metadata: {}", parquet_message(&e))))?;
    let present: Vec<&str>;
    let columns = if any {
        let fields = reader.metadata().file_metadata().schema().get_fields();
        present = columns.iter().copied().filter(|c| fields.iter().any(|f| f.name() == *c)).collect();
        if present.is_empty() {
            let names: Vec<String> = fields.iter().map(|f| format!("`{}`", f.name())).collect();
            let wanted: Vec<String> = columns.iter().map(|c| format!("`{c}`")).collect();
            return Err(err(
                None,
                None,
                format!(
                    "none of the columns {} (name yours with format = {{ parquet = {{ field = \"…\" }} }}, or messages_field, prompt_field, completion_field); the file has {}",
                    wanted.join(", "),
                    names.join(", ")
                ),
            ));
        }
        &present[..]
    } else {
        columns
    };
    let projection = project(&reader, columns).map_err(|(column, m)| err(column.as_deref(), None, m))?;
    check_columns(&reader, &projection).map_err(|(column, m)| err(column.as_deref(), None, m))?;

    let mut at = 0usize;
    let rows = distill_base::guard::catch(|| read_rows(&reader, projection, &mut at, path))
        .map_err(|p| err(None, Some(at), format!("the Parquet reader panicked: {}", clip(&p))))??;
    Ok(rows)
}

/// A Parquet file starts and ends with `PAR1` (an encrypted footer ends with `PARE`).
fn check_magic(bytes: &[u8]) -> Result<(), String> {
    if !bytes.starts_with(b"PAR1") {
        return Err("not a Parquet file (it does not start with `PAR1`)".into());
    }
    if bytes.ends_with(b"PARE") {
        return Err("encrypted Parquet files are not supported".into());
    }
    if !bytes.ends_with(b"PAR1") {
        return Err(format!(
            "truncated Parquet file: {} bytes and no footer (it does not end with `PAR1`)",
            bytes.len()
        ));
    }
    if bytes.len() < 12 {
        return Err(format!("truncated Parquet file: {} bytes, too short for a footer", bytes.len()));
    }
    Ok(())
}

/// The file's schema cut to the top-level fields named in `columns` (each once, in the file's
/// order). A name the file lacks: `Err((the name, a message listing the file's columns))`.
fn project(reader: &SerializedFileReader<bytes::Bytes>, columns: &[&str]) -> Result<Type, (Option<String>, String)> {
    let root = reader.metadata().file_metadata().schema();
    let fields = root.get_fields();
    if let Some(missing) = columns.iter().find(|c| !fields.iter().any(|f| f.name() == **c)) {
        let names: Vec<String> = fields.iter().map(|f| format!("`{}`", f.name())).collect();
        return Err((Some(missing.to_string()), format!("no such column; the file has {}", names.join(", "))));
    }
    let kept: Vec<_> = fields.iter().filter(|f| columns.contains(&f.name())).cloned().collect();
    Type::group_type_builder(root.name()).with_fields(kept).build().map_err(|e| (None, parquet_message(&e)))
}

/// Checks each projected column chunk: compressed with a codec this build reads, and holding at
/// least one entry (a value, a null or an empty list) per row its row group claims — otherwise
/// the record reader would make up nulls past the end of the data.
fn check_columns(
    reader: &SerializedFileReader<bytes::Bytes>,
    projection: &Type,
) -> Result<(), (Option<String>, String)> {
    let names: Vec<&str> = projection.get_fields().iter().map(|f| f.name()).collect();
    for (g, rg) in reader.metadata().row_groups().iter().enumerate() {
        if rg.num_rows() < 0 {
            return Err((None, format!("row group {g} claims {} rows", rg.num_rows())));
        }
        for col in rg.columns() {
            let path = col.column_descr().path();
            if !path.parts().first().is_some_and(|top| names.contains(&top.as_str())) {
                continue;
            }
            if let Some(codec) = unsupported_codec(col.compression()) {
                let message = format!("compressed with {codec}, which is not supported (snappy, gzip and zstd are)");
                return Err((Some(path.string()), message));
            }
            if col.num_values() < rg.num_rows() {
                let message = format!(
                    "row group {g} claims {} rows but the column holds {} values",
                    rg.num_rows(),
                    col.num_values()
                );
                return Err((Some(path.string()), message));
            }
        }
    }
    Ok(())
}

/// The name of a codec this build does not read (`None`: one it reads).
fn unsupported_codec(codec: Compression) -> Option<&'static str> {
    match codec {
        Compression::UNCOMPRESSED | Compression::SNAPPY | Compression::GZIP(_) | Compression::ZSTD(_) => None,
        Compression::LZ4 => Some("lz4 (Hadoop framing)"),
        Compression::LZ4_RAW => Some("lz4"),
        Compression::BROTLI(_) => Some("brotli"),
        Compression::LZO => Some("lzo"),
    }
}

/// The rows through the record reader; `at` follows the row being read (for a panic's message).
fn read_rows(
    reader: &SerializedFileReader<bytes::Bytes>,
    projection: Type,
    at: &mut usize,
    path: &Path,
) -> Result<Vec<JsonRow>> {
    let err = |column: Option<String>, row: Option<usize>, message: String| TextError::Parquet {
        path: path.to_path_buf(),
        column,
        row,
        message,
    };
    let iter = reader.get_row_iter(Some(projection)).map_err(|e| err(None, None, parquet_message(&e)))?;
    let mut rows = Vec::new();
    for (i, row) in iter.enumerate() {
        *at = i;
        let row = row.map_err(|e| err(None, Some(i), parquet_message(&e)))?;
        let json = row_to_json(&row).map_err(|bad| err(Some(bad.column()), Some(i), bad.message))?;
        rows.push(json);
    }
    Ok(rows)
}

/// A value with no JSON form: where it sits (outermost first) and why.
struct BadValue {
    path: Vec<String>,
    message: String,
}

impl BadValue {
    /// The column as `messages[2].content`.
    fn column(&self) -> String {
        let mut s = String::new();
        for part in self.path.iter().rev() {
            if !s.is_empty() && !part.starts_with('[') {
                s.push('.');
            }
            s.push_str(part);
        }
        s
    }

    fn within(mut self, part: String) -> Self {
        self.path.push(part);
        self
    }
}

fn row_to_json(row: &Row) -> Result<JsonRow, BadValue> {
    row.get_column_iter()
        .map(|(name, field)| Ok((name.clone(), field_to_json(field).map_err(|b| b.within(name.clone()))?)))
        .collect()
}

fn field_to_json(field: &Field) -> Result<Value, BadValue> {
    let float = |x: f64| serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number);
    Ok(match field {
        Field::Null => Value::Null,
        Field::Bool(b) => Value::Bool(*b),
        Field::Byte(n) => (*n).into(),
        Field::Short(n) => (*n).into(),
        Field::Int(n) => (*n).into(),
        Field::Long(n) => (*n).into(),
        Field::UByte(n) => (*n).into(),
        Field::UShort(n) => (*n).into(),
        Field::UInt(n) => (*n).into(),
        Field::ULong(n) => (*n).into(),
        Field::Float16(x) => float(f64::from(*x)),
        Field::Float(x) => float(f64::from(*x)),
        Field::Double(x) => float(*x),
        Field::Str(s) => Value::String(s.clone()),
        Field::Bytes(b) => match std::str::from_utf8(b.data()) {
            Ok(s) => Value::String(s.to_string()),
            Err(e) => {
                return Err(BadValue {
                    path: Vec::new(),
                    message: format!(
                        "binary data that is not UTF-8 text (byte {} of {} is invalid)",
                        e.valid_up_to(),
                        b.len()
                    ),
                })
            }
        },
        Field::Decimal(_)
        | Field::Date(_)
        | Field::TimeMillis(_)
        | Field::TimeMicros(_)
        | Field::TimestampMillis(_)
        | Field::TimestampMicros(_) => Value::String(field.to_string()),
        Field::Group(row) => Value::Object(row_to_json(row)?),
        Field::ListInternal(list) => Value::Array(
            list.elements()
                .iter()
                .enumerate()
                .map(|(i, f)| field_to_json(f).map_err(|b| b.within(format!("[{i}]"))))
                .collect::<Result<_, _>>()?,
        ),
        Field::MapInternal(map) => {
            let mut out = Map::new();
            for (k, v) in map.entries() {
                let key = match k {
                    Field::Str(s) => s.clone(),
                    other => other.to_string(),
                };
                let value = field_to_json(v).map_err(|b| b.within(format!("[{key:?}]")))?;
                out.insert(key, value);
            }
            Value::Object(out)
        }
    })
}

/// A parquet error's message on one line, without the crate's `Parquet error: ` prefix, clipped.
fn parquet_message(e: &parquet::errors::ParquetError) -> String {
    let text = e.to_string();
    clip(text.strip_prefix("Parquet error: ").unwrap_or(&text))
}

/// `text` on one line, at most [`MAX_MESSAGE`] characters.
fn clip(text: &str) -> String {
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match one_line.char_indices().nth(MAX_MESSAGE) {
        Some((cut, _)) => format!("{}…", &one_line[..cut]),
        None => one_line,
    }
}

/// Where a [`TextError::Parquet`] happened: the file, then the row and the column when known.
pub(crate) fn describe_place(path: &Path, column: Option<&str>, row: Option<usize>) -> String {
    let mut s = path.display().to_string();
    if let Some(row) = row {
        s.push_str(&format!(": row {row}"));
    }
    if let Some(column) = column {
        s.push_str(if row.is_some() { ", " } else { ": " });
        s.push_str(&format!("column `{column}`"));
    }
    s
}
