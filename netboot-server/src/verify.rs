//! Whether a file netbootd serves is still what it should be: a store file hashes to the sha256 it
//! is stored under, an iPXE binary to the md5 its Debian package recorded (what `dpkg --verify`
//! compares).
//!
//! A fleet's images are over a gigabyte, seconds of hashing, so each store file's hash is kept in
//! the state directory ([`VERDICTS_FILE`]) with what any write to the file changes: its device,
//! inode, size, modification time and change time (which nobody can set back). A file that still
//! matches all five gets its kept hash; any other is hashed again. Damage below the file system
//! that leaves all five alone (a failing disk) is found only by hashing everything again, which
//! `netbootd check --rehash` does.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use lectern_store::Digest;
use md5::{Digest as _, Md5};
use serde::{Deserialize, Serialize};

/// The kept hashes, in the state directory.
pub const VERDICTS_FILE: &str = "verified.json";

/// Where dpkg keeps the md5 of every file of the ipxe package.
pub const IPXE_MD5SUMS: &str = "/var/lib/dpkg/info/ipxe.md5sums";

/// A file as it was when it was hashed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Seen {
    device: u64,
    inode: u64,
    size: u64,
    modified_ns: i128,
    changed_ns: i128,
    sha256: Digest,
}

impl Seen {
    fn same_file(&self, other: &Seen) -> bool {
        (
            self.device,
            self.inode,
            self.size,
            self.modified_ns,
            self.changed_ns,
        ) == (
            other.device,
            other.inode,
            other.size,
            other.modified_ns,
            other.changed_ns,
        )
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct VerdictsFile {
    files: BTreeMap<PathBuf, Seen>,
}

/// Hashes of store files: kept ones reused while the file is unchanged, the rest hashed now.
#[derive(Debug)]
pub struct Verdicts {
    file: PathBuf,
    kept: VerdictsFile,
    /// What this run found, which is what [`Verdicts::save`] keeps.
    found: VerdictsFile,
    pub hashed_files: usize,
    pub hashed_bytes: u64,
    pub reused_files: usize,
    pub reused_bytes: u64,
}

impl Verdicts {
    /// The verdicts kept in `state_dir`, or none with `rehash` (or when there are none yet, or
    /// they cannot be read: then everything is hashed).
    pub fn load(state_dir: &Path, rehash: bool) -> Verdicts {
        let file = state_dir.join(VERDICTS_FILE);
        let kept = match rehash {
            true => VerdictsFile::default(),
            false => (fs::read(&file).ok())
                .and_then(|bytes| serde_json::from_slice(&bytes).ok())
                .unwrap_or_default(),
        };
        Verdicts {
            file,
            kept,
            found: VerdictsFile::default(),
            hashed_files: 0,
            hashed_bytes: 0,
            reused_files: 0,
            reused_bytes: 0,
        }
    }

    /// The sha256 of the file at `path`: kept, if the file has not changed since, else hashed now.
    pub fn sha256(&mut self, path: &Path) -> io::Result<Digest> {
        let path = fs::canonicalize(path)?;
        let file = File::open(&path)?;
        let meta = file.metadata()?;
        let nanos = |secs: i64, nsecs: i64| i128::from(secs) * 1_000_000_000 + i128::from(nsecs);
        let mut now = Seen {
            device: meta.dev(),
            inode: meta.ino(),
            size: meta.size(),
            modified_ns: nanos(meta.mtime(), meta.mtime_nsec()),
            changed_ns: nanos(meta.ctime(), meta.ctime_nsec()),
            sha256: Digest::of_bytes(b""),
        };
        match self.kept.files.get(&path) {
            Some(kept) if kept.same_file(&now) => {
                now.sha256 = kept.sha256.clone();
                self.reused_files += 1;
                self.reused_bytes += now.size;
            }
            _ => {
                let (digest, size) = Digest::of_reader(BufReader::new(file))?;
                now.sha256 = digest;
                self.hashed_files += 1;
                self.hashed_bytes += size;
            }
        }
        let digest = now.sha256.clone();
        self.found.files.insert(path, now);
        Ok(digest)
    }

    /// Keeps what this run found (and only that: files no longer served drop out) for the next.
    pub fn save(&self) -> io::Result<()> {
        if self.found.files == self.kept.files {
            return Ok(());
        }
        let json = serde_json::to_vec_pretty(&self.found).expect("plain data");
        if let Some(dir) = self.file.parent() {
            fs::create_dir_all(dir)?;
        }
        lectern_store::write_atomic(&self.file, |file| file.write_all(&json))
    }

    pub fn file(&self) -> &Path {
        &self.file
    }
}

/// How a store file comes back: imgbuild writes a blob its store lacks or holds at another size,
/// but keeps one damaged at its size (the size is all it compares), so that one must go first.
const REBUILD: &str = "imgbuild all builds it again";

/// What is wrong with a store file netbootd serves (named by its sha256, or not: then it only
/// needs content), if anything.
pub fn store_file_problem(path: &Path, verdicts: &mut Verdicts) -> Option<String> {
    let meta = match fs::metadata(path) {
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            return Some(format!("is missing ({REBUILD})"));
        }
        Err(err) => return Some(format!("cannot be read ({err})")),
        Ok(meta) => meta,
    };
    if meta.len() == 0 {
        return Some(format!("is empty ({REBUILD})"));
    }
    let name = path.file_name()?.to_str()?;
    let expected = Digest::try_from(name.to_owned()).ok()?;
    match verdicts.sha256(path) {
        Err(err) => Some(format!("cannot be read ({err})")),
        Ok(found) if found == expected => None,
        Ok(found) => Some(format!(
            "is damaged: its content hashes to {}…, not to its name (delete it; {REBUILD})",
            found.short()
        )),
    }
}

/// What is wrong with the iPXE binary at `path`, if anything: missing, empty, or (when it is a
/// file of the ipxe package, after symbolic links) not what `md5sums` (dpkg's list) records.
pub fn firmware_problem(path: &Path, md5sums: &Path) -> Option<String> {
    let meta = match fs::metadata(path) {
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Some("is missing".into()),
        Err(err) => return Some(format!("cannot be read ({err})")),
        Ok(meta) => meta,
    };
    if meta.len() == 0 {
        return Some("is empty".into());
    }
    let real = fs::canonicalize(path).ok()?;
    let recorded = recorded_md5(&fs::read_to_string(md5sums).ok()?, &real)?;
    let found = match md5_of(&real) {
        Ok(found) => found,
        Err(err) => return Some(format!("cannot be read ({err})")),
    };
    (found != recorded).then(|| {
        format!(
            "is not the file its Debian package installed: its md5 is {found}, dpkg recorded {recorded} (apt reinstall ipxe)"
        )
    })
}

/// The md5 a dpkg md5sums list (`<md5>  <path without the leading slash>` lines) records for `path`.
fn recorded_md5(md5sums: &str, path: &Path) -> Option<String> {
    let relative = path.strip_prefix("/").ok()?.to_str()?;
    md5sums.lines().find_map(|line| {
        let (md5, file) = line.split_once("  ")?;
        (file == relative).then(|| md5.to_owned())
    })
}

fn md5_of(path: &Path) -> io::Result<String> {
    let mut reader = BufReader::new(File::open(path)?);
    let mut hasher = Md5::new();
    let mut buffer = vec![0; 1 << 16];
    loop {
        match reader.read(&mut buffer)? {
            0 => return Ok(hex::encode(hasher.finalize())),
            read => hasher.update(&buffer[..read]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(dir: &Path, content: &[u8]) -> PathBuf {
        let path = dir.join(Digest::of_bytes(content).as_str());
        fs::write(&path, content).unwrap();
        path
    }

    #[test]
    fn a_store_file_is_whole_when_it_hashes_to_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let mut verdicts = Verdicts::load(dir.path(), false);
        let whole = blob(dir.path(), b"kernel");
        assert_eq!(store_file_problem(&whole, &mut verdicts), None);

        let damaged = blob(dir.path(), b"initrd");
        fs::write(&damaged, b"initrD").unwrap();
        let said = store_file_problem(&damaged, &mut verdicts).unwrap();
        let found = Digest::of_bytes(b"initrD");
        assert_eq!(
            said,
            format!(
                "is damaged: its content hashes to {}…, not to its name (delete it; {REBUILD})",
                found.short()
            )
        );

        let empty = dir.path().join(Digest::of_bytes(b"").as_str());
        fs::write(&empty, b"").unwrap();
        assert_eq!(
            store_file_problem(&empty, &mut verdicts).as_deref(),
            Some("is empty (imgbuild all builds it again)")
        );
        let gone = dir.path().join(Digest::of_bytes(b"gone").as_str());
        assert_eq!(
            store_file_problem(&gone, &mut verdicts).as_deref(),
            Some("is missing (imgbuild all builds it again)")
        );
        // A file not named by a hash (a command-line layer) only needs content.
        let layer = dir.path().join("mixer1.cpio");
        fs::write(&layer, b"070701").unwrap();
        assert_eq!(store_file_problem(&layer, &mut verdicts), None);
    }

    #[test]
    fn a_kept_hash_stands_until_the_file_changes_and_rehash_ignores_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = blob(dir.path(), b"root image");
        let mut first = Verdicts::load(dir.path(), false);
        assert_eq!(store_file_problem(&path, &mut first), None);
        assert_eq!((first.hashed_files, first.reused_files), (1, 0));
        first.save().unwrap();

        // What was kept is what the next check believes: a verdict planted for this very file
        // (its device, inode, size and times) is taken without reading the file.
        let file = dir.path().join(VERDICTS_FILE);
        let mut kept: serde_json::Value =
            serde_json::from_slice(&fs::read(&file).unwrap()).unwrap();
        let key = fs::canonicalize(&path).unwrap().display().to_string();
        let lie = Digest::of_bytes(b"something else");
        kept["files"][&key]["sha256"] = lie.as_str().into();
        fs::write(&file, kept.to_string()).unwrap();
        let mut second = Verdicts::load(dir.path(), false);
        let said = store_file_problem(&path, &mut second).unwrap();
        assert!(said.contains(lie.short()), "{said}");
        assert_eq!((second.hashed_files, second.reused_files), (0, 1));

        // --rehash reads every file again.
        let mut rehashed = Verdicts::load(dir.path(), true);
        assert_eq!(store_file_problem(&path, &mut rehashed), None);
        assert_eq!((rehashed.hashed_files, rehashed.reused_files), (1, 0));
        rehashed.save().unwrap();

        // Any write changes the file's times, even with the same bytes: it is hashed again.
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs::write(&path, b"root image").unwrap();
        let mut after_write = Verdicts::load(dir.path(), false);
        assert_eq!(store_file_problem(&path, &mut after_write), None);
        assert_eq!((after_write.hashed_files, after_write.reused_files), (1, 0));
    }

    #[test]
    fn firmware_is_checked_against_what_dpkg_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let binary = dir.path().join("undionly.kpxe");
        fs::write(&binary, b"iPXE").unwrap();
        let real = fs::canonicalize(&binary).unwrap();
        let md5sums = dir.path().join("ipxe.md5sums");
        let relative = real.strip_prefix("/").unwrap().display();
        let recorded = md5_of(&real).unwrap();
        fs::write(
            &md5sums,
            format!("0123  other/file\n{recorded}  {relative}\n"),
        )
        .unwrap();
        assert_eq!(firmware_problem(&binary, &md5sums), None);

        fs::write(&binary, b"iPXF").unwrap();
        let said = firmware_problem(&binary, &md5sums).unwrap();
        assert!(
            said.starts_with("is not the file its Debian package installed: its md5 is ")
                && said.ends_with(&format!("dpkg recorded {recorded} (apt reinstall ipxe)")),
            "{said}"
        );
        // A file no package lists only needs content.
        let own = dir.path().join("snponly.efi");
        fs::write(&own, b"x").unwrap();
        assert_eq!(firmware_problem(&own, &md5sums), None);
        fs::write(&own, b"").unwrap();
        assert_eq!(
            firmware_problem(&own, &md5sums).as_deref(),
            Some("is empty")
        );
    }

    #[test]
    fn debians_ipxe_is_what_dpkg_recorded() {
        let binary = Path::new("/usr/lib/ipxe/undionly.kpxe");
        if !binary.exists() {
            eprintln!("skipping: no Debian ipxe package here");
            return;
        }
        assert_eq!(firmware_problem(binary, Path::new(IPXE_MD5SUMS)), None);
    }
}
