//! Crash-safe file writes: write a temp file beside the target, fsync it, then move it into place, so a reader
//! sees either the old file or the complete new one, never a torn write.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A temp path in the same directory as `target` (so the final rename stays on one filesystem).
pub(crate) fn sibling_temp_path(target: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = target
        .file_name()
        .map_or_else(Default::default, |n| n.to_string_lossy().into_owned());
    let unique = format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    target.with_file_name(unique)
}

/// Writes `target` atomically, replacing any existing file. `fill` writes the content; if it (or anything
/// else) fails, the temp file is removed and the old `target` is left untouched.
pub fn write_atomic(
    target: &Path,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> io::Result<()> {
    let temp = write_temp(target, fill)?;
    let result = fs::rename(&temp, target).and_then(|()| sync_parent(target));
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

/// Like [`write_atomic`], but never replaces an existing file: fails with `ErrorKind::AlreadyExists` instead.
/// Used for append-only records whose name is chosen by the writer.
pub fn write_new_atomic(
    target: &Path,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> io::Result<()> {
    let temp = write_temp(target, fill)?;
    // link(2) fails when the target exists, which rename(2) would silently overwrite.
    let result = fs::hard_link(&temp, target).and_then(|()| sync_parent(target));
    let _ = fs::remove_file(&temp);
    result
}

fn write_temp(
    target: &Path,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> io::Result<PathBuf> {
    let temp = sibling_temp_path(target);
    let written = File::create_new(&temp).and_then(|mut file| {
        fill(&mut file)?;
        file.flush()?;
        file.sync_all()
    });
    match written {
        Ok(()) => Ok(temp),
        Err(err) => {
            let _ = fs::remove_file(&temp);
            Err(err)
        }
    }
}

/// Makes a rename or link durable: the directory entry lives in the parent directory.
pub fn sync_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => File::open(parent)?.sync_all(),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        write_atomic(&path, |f| f.write_all(b"one")).unwrap();
        write_atomic(&path, |f| f.write_all(b"two")).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left behind"
        );
    }

    #[test]
    fn failure_keeps_old_file_and_removes_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        write_atomic(&path, |f| f.write_all(b"good")).unwrap();
        let err = write_atomic(&path, |f| {
            f.write_all(b"half-writ")?;
            Err(io::Error::other("interrupted"))
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "interrupted");
        assert_eq!(fs::read(&path).unwrap(), b"good");
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left behind"
        );
    }

    #[test]
    fn write_new_refuses_to_replace() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        write_new_atomic(&path, |f| f.write_all(b"first")).unwrap();
        let err = write_new_atomic(&path, |f| f.write_all(b"second")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&path).unwrap(), b"first");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
