//! Atomic file writes: the content goes to a temporary file in the destination's directory
//! (created exclusively, named `.NAME.tmp-PID-NANOS`), which is flushed, fsynced and renamed over
//! the destination; the directory is then fsynced (best effort: not every platform allows it).
//! On any error the temporary file is removed and the destination is untouched.

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// A step of an atomic write failed.
#[derive(Debug)]
pub struct AtomicWriteError {
    /// The destination (the temporary file is an implementation detail; `action` names the step).
    pub path: PathBuf,
    /// What was being done (`create temporary file`, `write`, `fsync`, `rename temporary file`).
    pub action: &'static str,
    pub source: std::io::Error,
}

impl std::fmt::Display for AtomicWriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}: {}", self.path.display(), self.action, self.source)
    }
}

impl std::error::Error for AtomicWriteError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// The temporary sibling an atomic write of `path` uses: `.NAME.tmp-PID-NANOS` in the same
/// directory (so the rename never crosses a file system).
pub fn temp_path(path: &Path) -> PathBuf {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "out".to_owned());
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    dir.join(format!(".{name}.tmp-{}-{nanos}", std::process::id()))
}

/// Whether a directory entry's `name` is the temporary file of an atomic write (an interrupted
/// one, when found lying around): `.NAME.tmp…`.
pub fn is_temp_name(name: &str) -> bool {
    name.starts_with('.') && name.contains(".tmp")
}

/// Fsyncs a directory so that a rename inside it is durable (best effort).
pub fn sync_dir(dir: &Path) {
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Writes `path` atomically, `write` filling the temporary file through a 1 MiB buffer. The
/// caller's error type takes both `write`'s errors and the write's own ([`AtomicWriteError`]).
pub fn write_atomic_with<E: From<AtomicWriteError>>(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> Result<(), E>,
) -> Result<(), E> {
    let tmp = temp_path(path);
    let fail = |action: &'static str| {
        let path = path.to_path_buf();
        move |source| AtomicWriteError { path, action, source }
    };
    let result = (|| {
        let file = OpenOptions::new().write(true).create_new(true).open(&tmp).map_err(fail("create temporary file"))?;
        let mut w = BufWriter::with_capacity(1 << 20, file);
        write(&mut w)?;
        let file = w.into_inner().map_err(|e| fail("write")(e.into_error()))?;
        file.sync_all().map_err(fail("fsync"))?;
        drop(file);
        fs::rename(&tmp, path).map_err(fail("rename temporary file"))?;
        sync_dir(path.parent().unwrap_or(Path::new(".")));
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Writes `bytes` to `path` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), AtomicWriteError> {
    write_atomic_with(path, |w| {
        w.write_all(bytes).map_err(|source| AtomicWriteError { path: path.to_path_buf(), action: "write", source })
    })
}

/// Writes `value` as pretty JSON (with a final newline) to `path` atomically.
pub fn write_json<T: serde::Serialize + ?Sized>(path: &Path, value: &T) -> Result<(), AtomicWriteError> {
    let mut s = serde_json::to_string_pretty(value).map_err(|e| AtomicWriteError {
        path: path.to_path_buf(),
        action: "serialize JSON",
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
    })?;
    s.push('\n');
    write_atomic(path, s.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_file_and_leaves_no_temporary_behind() {
        let dir = std::env::temp_dir().join(format!("distill-base-atomic-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join("a.json");
        write_atomic(&p, b"old").unwrap();
        write_json(&p, &[1, 2]).unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "[\n  1,\n  2\n]\n");
        // A failing writer leaves the old content and no temporary file.
        let r: Result<(), AtomicWriteError> = write_atomic_with(&p, |_| {
            Err(AtomicWriteError { path: p.clone(), action: "write", source: std::io::Error::other("boom") })
        });
        assert!(r.unwrap_err().to_string().ends_with("a.json: write: boom"));
        assert_eq!(fs::read_to_string(&p).unwrap(), "[\n  1,\n  2\n]\n");
        let names: Vec<String> =
            fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert_eq!(names, vec!["a.json".to_string()]);
        fs::remove_dir_all(&dir).unwrap();
    }
}
