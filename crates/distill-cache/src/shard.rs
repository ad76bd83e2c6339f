//! Checks shared by the writer (resume) and the reader: size, header and checksum of a shard.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::{io, CacheError, Result};
use crate::format::{Layout, ShardHeader, HEADER_BYTES};
use crate::manifest::{hex, Manifest, ShardEntry};

/// The header shard `index` of `manifest` must carry.
pub(crate) fn expected_header(manifest: &Manifest, index: usize, rows: usize) -> ShardHeader {
    let layout = Layout::new(manifest.top_k, manifest.tail_samples, manifest.vocab_size, manifest.logprob_encoding);
    ShardHeader::expected(&layout, manifest.vocab_size, manifest.seq_len, index, index * manifest.rows_per_shard, rows)
}

/// Checks the file length against the manifest entry, then the header.
pub(crate) fn check_size_and_header(
    path: &Path,
    len: u64,
    head: &[u8],
    manifest: &Manifest,
    index: usize,
    entry: &ShardEntry,
) -> Result<()> {
    let bad = |message: String| CacheError::BadShard { path: path.to_path_buf(), message };
    if len != entry.bytes {
        let what = if len < entry.bytes { "truncated" } else { "too long" };
        return Err(bad(format!("{what}: {len} bytes, the manifest says {}", entry.bytes)));
    }
    let header = ShardHeader::parse(head).map_err(bad)?;
    match header.mismatch(&expected_header(manifest, index, entry.rows)) {
        Some(message) => Err(bad(message)),
        None => Ok(()),
    }
}

/// Checks a shard file's size, header and sha256 against its manifest entry, streaming it.
pub(crate) fn verify_file(path: &Path, manifest: &Manifest, index: usize, entry: &ShardEntry) -> Result<()> {
    verify_into(path, manifest, index, entry, &mut std::io::sink(), path)
}

/// [`verify_file`], writing the file's bytes to `out` on the way (errors writing it name
/// `out_path`); the checksum is known only once all of it went through.
pub(crate) fn verify_into(
    path: &Path,
    manifest: &Manifest,
    index: usize,
    entry: &ShardEntry,
    out: &mut impl Write,
    out_path: &Path,
) -> Result<()> {
    let mut file = File::open(path).map_err(io(path, "open shard"))?;
    let len = file.metadata().map_err(io(path, "stat shard"))?.len();
    let mut head = [0u8; HEADER_BYTES];
    if len == entry.bytes {
        file.read_exact(&mut head).map_err(io(path, "read shard"))?;
        file.rewind().map_err(io(path, "read shard"))?;
    }
    check_size_and_header(path, len, &head, manifest, index, entry)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match file.read(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => r.map_err(io(path, "read shard"))?,
        };
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(io(out_path, "write shard"))?;
    }
    let actual = hex(&hasher.finalize());
    if actual == entry.sha256 {
        Ok(())
    } else {
        Err(CacheError::ChecksumMismatch { path: path.to_path_buf(), expected: entry.sha256.clone(), actual })
    }
}
