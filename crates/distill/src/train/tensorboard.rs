//! TensorBoard event files: each `metrics.jsonl` line of a phase also written as scalars
//! (`log.tensorboard = true`), so `tensorboard --logdir RUN_DIR` shows every phase as a run.
//!
//! The format is TensorFlow's TFRecord of `Event` protos: per record the payload's length
//! (u64 LE), the masked CRC-32C of those 8 bytes, the payload, its masked CRC-32C. An `Event` is
//! `wall_time` (field 1, double), `step` (2, int64), `file_version` (3, string, the first record
//! only: `brain.Event:2`) or `summary` (5): `Summary { repeated Value value = 1 }`, `Value { tag
//! = 1 (string); simple_value = 2 (float) }`. Three messages of scalars do not warrant a protobuf
//! dependency; the encoding below is tested by TensorBoard's own reader
//! (`crates/distill-cli/tests/tensorboard.rs`).

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// What names an event file (TensorBoard reads every file whose name contains `tfevents`).
const PREFIX: &str = "events.out.tfevents.";

/// An open event file, appended to line by line.
pub struct EventWriter {
    path: PathBuf,
    file: std::fs::File,
}

impl EventWriter {
    /// Starts `dir`'s event file afresh: earlier event files there are removed (a resumed phase
    /// replays its kept `metrics.jsonl` lines through [`EventWriter::metrics_line`], so the file
    /// always mirrors the log, with no steps past the checkpoint).
    pub fn create(dir: &Path) -> Result<Self> {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(PREFIX) {
                    std::fs::remove_file(e.path()).map_err(|err| Error::io(e.path(), err))?;
                }
            }
        }
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let path = dir.join(format!("{PREFIX}{}.distill", now.as_secs()));
        let file = std::fs::File::create(&path).map_err(|e| Error::io(&path, e))?;
        let mut w = EventWriter { path, file };
        let mut event = Vec::new();
        put_double(&mut event, 1, wall_time());
        put_bytes(&mut event, 3, b"brain.Event:2");
        w.record(&event)?;
        Ok(w)
    }

    /// One `metrics.jsonl` line as one event: its `step`, and every other numeric field a scalar
    /// under its own name (`loss`, `lr`, `grad_norm`, the terms' parts…).
    pub fn metrics_line(&mut self, line: &serde_json::Value) -> Result<()> {
        let Some(obj) = line.as_object() else { return Ok(()) };
        let Some(step) = obj.get("step").and_then(|s| s.as_i64()) else { return Ok(()) };
        let scalars: Vec<(&str, f32)> = obj
            .iter()
            .filter(|(k, _)| k.as_str() != "step")
            .filter_map(|(k, v)| v.as_f64().map(|x| (k.as_str(), x as f32)))
            .collect();
        self.scalars(step, &scalars)
    }

    /// One event holding these scalars at `step`.
    pub fn scalars(&mut self, step: i64, scalars: &[(&str, f32)]) -> Result<()> {
        let mut summary = Vec::new();
        for (tag, v) in scalars {
            let mut value = Vec::new();
            put_bytes(&mut value, 1, tag.as_bytes());
            put_key(&mut value, 2, 5);
            value.extend_from_slice(&v.to_le_bytes());
            put_bytes(&mut summary, 1, &value);
        }
        let mut event = Vec::new();
        put_double(&mut event, 1, wall_time());
        put_key(&mut event, 2, 0);
        put_varint(&mut event, step as u64);
        put_bytes(&mut event, 5, &summary);
        self.record(&event)
    }

    /// One TFRecord, written at once (a reader sees whole records as training goes).
    fn record(&mut self, data: &[u8]) -> Result<()> {
        let len = (data.len() as u64).to_le_bytes();
        let mut rec = Vec::with_capacity(data.len() + 16);
        rec.extend_from_slice(&len);
        rec.extend_from_slice(&masked_crc(&len).to_le_bytes());
        rec.extend_from_slice(data);
        rec.extend_from_slice(&masked_crc(data).to_le_bytes());
        self.file.write_all(&rec).map_err(|e| Error::io(&self.path, e))
    }
}

fn wall_time() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// TFRecord's CRC mask: rotate right by 15, add a constant.
fn masked_crc(data: &[u8]) -> u32 {
    let c = crc32c::crc32c(data);
    c.rotate_right(15).wrapping_add(0xa282_ead8)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A field's key: its number and wire type (0 varint, 1 64-bit, 2 length-delimited, 5 32-bit).
fn put_key(out: &mut Vec<u8>, field: u32, wire: u32) {
    put_varint(out, u64::from(field << 3 | wire));
}

fn put_double(out: &mut Vec<u8>, field: u32, v: f64) {
    put_key(out, field, 1);
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, field: u32, v: &[u8]) {
    put_key(out, field, 2);
    put_varint(out, v.len() as u64);
    out.extend_from_slice(v);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_masks_match_the_references() {
        let mut v = Vec::new();
        put_varint(&mut v, 300);
        assert_eq!(v, [0xac, 0x02]); // protobuf's documented example
                                     // CRC-32C of "123456789" is 0xe3069283 (RFC 3720's check value); the mask as TensorFlow's
                                     // `masked_crc32c`.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(masked_crc(b"123456789"), 0xe306_9283u32.rotate_right(15).wrapping_add(0xa282_ead8));
    }
}
