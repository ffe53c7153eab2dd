//! Reading the files lectern is given, bounded: a master file or secrets file is a few kilobytes, so
//! anything that is not a regular file, or is larger than a limit far above any real one, is refused
//! with a message instead of read until memory runs out (`--config /dev/zero`).

use std::fs::File;
use std::io::Read;
use std::path::Path;

/// The largest master file read: 4 MiB, ~100 times the 1000-line example of a 30-room conference.
pub const MASTER_FILE_LIMIT: u64 = 4 << 20;
/// The largest secrets file read.
pub const SECRETS_FILE_LIMIT: u64 = 1 << 20;

/// The text of `path`, a regular file of at most `limit` bytes; `what` names it in the error.
pub fn read_bounded(path: &Path, what: &str, limit: u64) -> Result<String, String> {
    let file = File::open(path).map_err(|e| format!("cannot read the {what}: {e}"))?;
    let metadata = file
        .metadata()
        .map_err(|e| format!("cannot read the {what}: {e}"))?;
    if !metadata.is_file() {
        return Err(format!("the {what} is not a regular file"));
    }
    let mut bytes = Vec::new();
    // Read one byte past the limit: a file that grows while read is caught too.
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read the {what}: {e}"))?;
    if bytes.len() as u64 > limit {
        return Err(format!(
            "the {what} is larger than {} MiB: that is not a {what}",
            limit >> 20
        ));
    }
    String::from_utf8(bytes).map_err(|e| {
        format!(
            "the {what} is not UTF-8 text (byte {} is not)",
            e.utf8_error().valid_up_to()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_big_files_and_binary_are_refused() {
        assert_eq!(
            read_bounded(Path::new("/dev/zero"), "master file", MASTER_FILE_LIMIT),
            Err("the master file is not a regular file".into())
        );
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.toml");
        std::fs::write(&big, vec![b'#'; 2 * 1024 * 1024 + 1]).unwrap();
        assert_eq!(
            read_bounded(&big, "secrets file", 2 << 20),
            Err("the secrets file is larger than 2 MiB: that is not a secrets file".into())
        );
        std::fs::write(&big, b"name = \"\xff\"").unwrap();
        assert_eq!(
            read_bounded(&big, "master file", MASTER_FILE_LIMIT),
            Err("the master file is not UTF-8 text (byte 8 is not)".into())
        );
        std::fs::write(&big, "schema_version = 1\n").unwrap();
        assert_eq!(
            read_bounded(&big, "master file", MASTER_FILE_LIMIT).unwrap(),
            "schema_version = 1\n"
        );
        assert!(read_bounded(dir.path(), "master file", MASTER_FILE_LIMIT).is_err());
    }
}
