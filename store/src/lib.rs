//! lectern's content-addressed image store.
//!
//! `imgbuild` writes it, `netbootd` reads it. Layout under the store directory:
//!
//! ```text
//! blobs/sha256/<hex>           every artifact and layer output, named by its sha256
//! layers/<key>.json            layer cache: layer key (sha256 of its inputs) -> the blobs it produced
//! manifests/<role>/<seq>.json  one manifest per build of a role (a release); the highest seq is current
//! hosts/<hostname>/<seq>.json  one record per per-host layer build; the highest seq is current
//! tmp/                         scratch space on the same filesystem, for atomic imports
//! locks/<key>.lock             held while the layer with that key is being built
//! keys/netbootd.key            netbootd's TLS key (0600), whose pin the role images carry
//! ```
//!
//! Every file is written to a temp path, fsynced and renamed (or linked) into place, so an interrupted build
//! never damages what is already there. Writers start with [`Store::create`]; readers need nothing but
//! [`Store::open`], [`Store::latest_manifest`],
//! [`Store::host_layer`] and [`Store::blob_path`].

mod atomic;
pub mod command_line;
mod digest;
mod gc;
mod journal_ca;
mod records;
mod server_key;

use std::fs::{self, File};
use std::io::{self, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use atomic::{sync_parent, write_atomic, write_new_atomic};
pub use digest::{Digest, InvalidDigest};
pub use gc::GcReport;
pub use journal_ca::{JournalCa, ReceiverCertificate};
pub use records::{BlobRef, FORMAT, HostLayer, LayerKind, LayerRecord, Manifest};
pub use server_key::ServerKey;

/// Each variant's message includes its cause (they are not chained as `source()`, so it prints once).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{action} {path}: {cause}")]
    Io {
        action: &'static str,
        path: PathBuf,
        cause: io::Error,
    },
    #[error("{path} is not a valid record: {cause}")]
    Corrupt {
        path: PathBuf,
        cause: serde_json::Error,
    },
    #[error("{0:?} is not a usable role or host name (letters, digits, '-', '_' and '.' only)")]
    BadName(String),
    #[error("{0}")]
    Missing(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A record's number: its file is `<seq>.json`.
fn sequence_number(path: &Path) -> Option<u64> {
    path.file_name()?
        .to_str()?
        .strip_suffix(".json")?
        .parse()
        .ok()
}

/// See [`Store::lock_layer_build`]; released when dropped (or when its process dies).
#[derive(Debug)]
pub struct LayerBuildLock {
    _file: File,
}

pub(crate) fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StoreError {
    let path = path.to_owned();
    move |cause| StoreError::Io {
        action,
        path,
        cause,
    }
}

pub(crate) fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// A handle on a store directory. Cheap to clone; holds no open files.
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
}

/// Which family of append-only records a name belongs to.
#[derive(Clone, Copy)]
enum Records {
    Manifests,
    Hosts,
}

impl Records {
    fn dir(self) -> &'static str {
        match self {
            Self::Manifests => "manifests",
            Self::Hosts => "hosts",
        }
    }
}

impl Store {
    /// Opens an existing store (what readers such as netbootd want: a wrong path is an error, not a new store).
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let root = dir.as_ref().to_owned();
        if !root.join("blobs/sha256").is_dir() {
            let cause = io::Error::new(
                io::ErrorKind::NotFound,
                "no blobs/sha256 inside: not a lectern store",
            );
            return Err(StoreError::Io {
                action: "opening the store",
                path: root,
                cause,
            });
        }
        Ok(Self { root })
    }

    /// Opens the store at `dir`, creating it and its layout if needed (for writers).
    pub fn create(dir: impl AsRef<Path>) -> Result<Self> {
        let store = Self {
            root: dir.as_ref().to_owned(),
        };
        for sub in ["blobs/sha256", "layers", "manifests", "hosts", "tmp"] {
            let path = store.root.join(sub);
            fs::create_dir_all(&path).map_err(io_err("creating", &path))?;
        }
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob with this digest lives (whether or not it exists).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.as_str())
    }

    pub fn has_blob(&self, blob: &BlobRef) -> bool {
        fs::metadata(self.blob_path(&blob.sha256)).is_ok_and(|meta| meta.len() == blob.size)
    }

    /// A fresh, not yet existing path in the store's scratch directory, named after `hint`. Write a large
    /// output there, then [`Store::import_blob`] it: the rename into `blobs/` needs no copy.
    pub fn temp_path(&self, hint: &str) -> PathBuf {
        atomic::sibling_temp_path(&self.root.join("tmp").join(hint))
    }

    /// Moves the finished file at `path` into the store under its sha256 and returns its reference.
    /// The file should be on the store's filesystem (see [`Store::temp_path`]); it is consumed.
    pub fn import_blob(&self, path: &Path) -> Result<BlobRef> {
        let file = File::open(path).map_err(io_err("opening", path))?;
        file.sync_all().map_err(io_err("syncing", path))?;
        let (sha256, size) =
            Digest::of_reader(BufReader::new(file)).map_err(io_err("reading", path))?;
        let target = self.blob_path(&sha256);
        if self.has_blob(&BlobRef {
            sha256: sha256.clone(),
            size,
        }) {
            fs::remove_file(path).map_err(io_err("removing", path))?;
        } else {
            fs::rename(path, &target).map_err(io_err("moving into the store", path))?;
            atomic::sync_parent(&target).map_err(io_err("syncing", &target))?;
        }
        Ok(BlobRef { sha256, size })
    }

    /// Stores a small in-memory blob.
    pub fn put_blob(&self, bytes: &[u8]) -> Result<BlobRef> {
        let sha256 = Digest::of_bytes(bytes);
        let blob = BlobRef {
            sha256,
            size: bytes.len() as u64,
        };
        if !self.has_blob(&blob) {
            let target = self.blob_path(&blob.sha256);
            write_atomic(&target, |file| file.write_all(bytes))
                .map_err(io_err("writing", &target))?;
        }
        Ok(blob)
    }

    /// Gives a private file to the store's owner: netbootd runs as that user (`lectern`), and imgbuild
    /// may run as root.
    pub(crate) fn own(&self, path: &Path) -> Result<()> {
        use std::os::unix::fs::MetadataExt;
        let owner = fs::metadata(&self.root).map_err(io_err("reading", &self.root))?;
        let current = fs::metadata(path).map_err(io_err("reading", path))?;
        if (current.uid(), current.gid()) != (owner.uid(), owner.gid()) {
            std::os::unix::fs::chown(path, Some(owner.uid()), Some(owner.gid()))
                .map_err(io_err("giving to the store's owner", path))?;
        }
        Ok(())
    }

    /// Stores a small blob only the store's owner may read (0600): a host's secrets.
    pub fn put_private_blob(&self, bytes: &[u8]) -> Result<BlobRef> {
        use std::os::unix::fs::PermissionsExt;
        let blob = BlobRef {
            sha256: Digest::of_bytes(bytes),
            size: bytes.len() as u64,
        };
        let target = self.blob_path(&blob.sha256);
        if self.has_blob(&blob) {
            fs::set_permissions(&target, fs::Permissions::from_mode(0o600))
                .map_err(io_err("restricting", &target))?;
        } else {
            write_atomic(&target, |file| {
                file.set_permissions(fs::Permissions::from_mode(0o600))?;
                file.write_all(bytes)
            })
            .map_err(io_err("writing", &target))?;
        }
        self.own(&target)?;
        Ok(blob)
    }

    /// The cached layer with this key, if it and all its outputs are present.
    pub fn layer(&self, key: &Digest) -> Result<Option<LayerRecord>> {
        let path = self.layer_path(key);
        let Some(record) = read_json::<LayerRecord>(&path)? else {
            return Ok(None);
        };
        Ok(record
            .outputs
            .values()
            .all(|blob| self.has_blob(blob))
            .then_some(record))
    }

    /// Waits until no other builder (another imgbuild, a test beside this one) is building the layer
    /// with this key, and holds it until the returned lock is dropped: build it only if
    /// [`Store::layer`] still has no record then, so that each layer is built once.
    pub fn lock_layer_build(&self, key: &Digest) -> Result<LayerBuildLock> {
        let dir = self.root.join("locks");
        fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
        let path = dir.join(format!("{key}.lock"));
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err("opening", &path))?;
        // SAFETY: flock on a descriptor this function owns; it does not touch memory.
        let locked = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&file), libc::LOCK_EX) };
        if locked != 0 {
            return Err(io_err("locking", &path)(io::Error::last_os_error()));
        }
        Ok(LayerBuildLock { _file: file })
    }

    pub fn put_layer(&self, record: &LayerRecord) -> Result<()> {
        write_json(&self.layer_path(&record.key), record)
    }

    fn layer_path(&self, key: &Digest) -> PathBuf {
        self.root.join("layers").join(format!("{key}.json"))
    }

    /// Records a build of `manifest.role` as its newest release. Recording the same image as the current
    /// release again is a no-op, so rebuilding unchanged inputs does not push older releases out.
    pub fn add_manifest(&self, manifest: &Manifest) -> Result<()> {
        let current = self.latest_manifest(&manifest.role)?;
        if current.is_some_and(|current| current.image == manifest.image) {
            return Ok(());
        }
        self.append(Records::Manifests, &manifest.role, manifest)
    }

    /// The current release of `role`, if any.
    pub fn latest_manifest(&self, role: &str) -> Result<Option<Manifest>> {
        Ok(self
            .history(Records::Manifests, role)?
            .pop()
            .map(|(_, manifest)| manifest))
    }

    /// A blob of `manifest` the store lacks or holds at the wrong size.
    fn missing_blob<'m>(&self, manifest: &'m Manifest) -> Option<&'m BlobRef> {
        manifest.blobs().find(|blob| !self.has_blob(blob))
    }

    /// The newest release of `role` that is whole (its record readable, every blob there at its size),
    /// and a sentence for each newer one passed over: a damaged newest release falls back to the one
    /// before it instead of leaving the role's hosts with nothing to boot. `None`: no whole release.
    pub fn newest_whole_release(&self, role: &str) -> Result<(Option<Manifest>, Vec<String>)> {
        let dir = self.records_dir(Records::Manifests, role)?;
        let mut passed_over = Vec::new();
        for seq in self.sequence_numbers(&dir)?.into_iter().rev() {
            let manifest: Manifest = match read_json(&dir.join(format!("{seq:08}.json"))) {
                Ok(Some(manifest)) => manifest,
                Ok(None) => continue,
                Err(err) => {
                    passed_over.push(format!("{role} release record {seq} is unreadable ({err})"));
                    continue;
                }
            };
            let damaged = self.missing_blob(&manifest).map(|blob| blob.sha256.clone());
            match damaged {
                Some(blob) => passed_over.push(format!(
                    "{role} image {} (record {seq}) lost blob {blob} or has it truncated",
                    manifest.image
                )),
                None => return Ok((Some(manifest), passed_over)),
            }
        }
        Ok((None, passed_over))
    }

    /// All releases of `role`, oldest first.
    pub fn manifests(&self, role: &str) -> Result<Vec<Manifest>> {
        Ok(self
            .history(Records::Manifests, role)?
            .into_iter()
            .map(|(_, m)| m)
            .collect())
    }

    /// Every release of `role` with its number, oldest first. A rollback appends an older release again,
    /// so a number's image may appear twice; the last entry is current.
    pub fn releases(&self, role: &str) -> Result<Vec<(u64, Manifest)>> {
        Ok(self
            .history(Records::Manifests, role)?
            .into_iter()
            .filter_map(|(path, manifest)| Some((sequence_number(&path)?, manifest)))
            .collect())
    }

    /// Makes release `number` of `role` current again (rolling back, or forward after a rollback) by
    /// appending it as the newest record: netbootd serves it from the next boot on, and the history says
    /// what was current when. Returns it; `None` if there is no such release.
    pub fn make_current(&self, role: &str, number: u64) -> Result<Option<Manifest>> {
        let releases = self.releases(role)?;
        let Some((_, chosen)) = releases.iter().find(|(seq, _)| *seq == number) else {
            return Ok(None);
        };
        if releases
            .last()
            .is_some_and(|(_, current)| current.image == chosen.image)
        {
            return Ok(Some(chosen.clone()));
        }
        if let Some(blob) = self.missing_blob(chosen) {
            return Err(StoreError::Missing(format!(
                "release {number} of {role} lost blob {} (pruned by gc?)",
                blob.sha256
            )));
        }
        self.append(Records::Manifests, role, chosen)?;
        Ok(Some(chosen.clone()))
    }

    /// When releases or host layers last changed: a reader polls it to pick up builds and rollbacks
    /// without being told. Each record is a new file, so the directories' mtimes say it.
    pub fn changed_at(&self) -> Option<SystemTime> {
        let mut latest = None;
        for family in [Records::Manifests, Records::Hosts] {
            let dir = self.root.join(family.dir());
            let names = list_dir(&dir).unwrap_or_default();
            let dirs = std::iter::once(dir.clone()).chain(names.iter().map(|name| dir.join(name)));
            for path in dirs {
                let modified = fs::metadata(&path).and_then(|m| m.modified()).ok();
                latest = latest.max(modified);
            }
        }
        latest
    }

    /// Roles with at least one release, sorted.
    pub fn roles(&self) -> Result<Vec<String>> {
        self.names(Records::Manifests)
    }

    /// Records a host layer build as that host's current one (a no-op if its blob is already current).
    pub fn add_host_layer(&self, layer: &HostLayer) -> Result<()> {
        let current = self.host_layer(&layer.hostname)?;
        let same = |current: &HostLayer| {
            (current.blob == layer.blob && current.secrets == layer.secrets)
                && current.role == layer.role
        };
        if current.is_some_and(|current| same(&current)) {
            return Ok(());
        }
        self.append(Records::Hosts, &layer.hostname, layer)
    }

    /// The current per-host layer of `hostname`, if any.
    pub fn host_layer(&self, hostname: &str) -> Result<Option<HostLayer>> {
        Ok(self
            .history(Records::Hosts, hostname)?
            .pop()
            .map(|(_, layer)| layer))
    }

    /// Hosts with at least one layer, sorted.
    pub fn hosts(&self) -> Result<Vec<String>> {
        self.names(Records::Hosts)
    }

    /// Removes all but the newest `keep` releases per role and host layers per host, the layer cache entries
    /// and blobs nothing kept refers to, and stale scratch files. Blobs and scratch files younger than
    /// `grace` survive, so a build running concurrently keeps its fresh outputs.
    pub fn gc(&self, keep: usize, grace: std::time::Duration) -> Result<GcReport> {
        gc::run(self, keep.max(1), grace)
    }

    fn records_dir(&self, family: Records, name: &str) -> Result<PathBuf> {
        let valid = !name.is_empty()
            && !name.starts_with('.')
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid {
            return Err(StoreError::BadName(name.to_owned()));
        }
        Ok(self.root.join(family.dir()).join(name))
    }

    fn append(&self, family: Records, name: &str, record: &impl Serialize) -> Result<()> {
        let dir = self.records_dir(family, name)?;
        fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
        let json = to_json(record);
        let mut seq = self
            .sequence_numbers(&dir)?
            .last()
            .map_or(1, |last| last + 1);
        // Another writer may take the same number between our listing and our link: retry with the next one.
        loop {
            let path = dir.join(format!("{seq:08}.json"));
            match write_new_atomic(&path, |file| file.write_all(&json)) {
                Err(err) if err.kind() == io::ErrorKind::AlreadyExists => seq += 1,
                other => return other.map_err(io_err("writing", &path)),
            }
        }
    }

    /// Records of one name, oldest first, with their paths.
    fn history<T: DeserializeOwned>(
        &self,
        family: Records,
        name: &str,
    ) -> Result<Vec<(PathBuf, T)>> {
        let dir = self.records_dir(family, name)?;
        let mut records = Vec::new();
        for seq in self.sequence_numbers(&dir)? {
            let path = dir.join(format!("{seq:08}.json"));
            if let Some(record) = read_json(&path)? {
                records.push((path, record));
            }
        }
        Ok(records)
    }

    fn sequence_numbers(&self, dir: &Path) -> Result<Vec<u64>> {
        let mut numbers: Vec<u64> = list_dir(dir)?
            .iter()
            .filter_map(|name| sequence_number(Path::new(name)))
            .collect();
        numbers.sort_unstable();
        Ok(numbers)
    }

    fn names(&self, family: Records) -> Result<Vec<String>> {
        let mut names = list_dir(&self.root.join(family.dir()))?;
        names.retain(|name| !name.starts_with('.'));
        names.sort();
        Ok(names)
    }
}

/// File names in `dir`; an absent directory is empty.
fn list_dir(dir: &Path) -> Result<Vec<String>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(io_err("listing", dir)(err)),
    };
    entries
        .map(|entry| {
            entry
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .map_err(io_err("listing", dir))
        })
        .collect()
}

fn to_json(record: &impl Serialize) -> Vec<u8> {
    let mut json = serde_json::to_vec_pretty(record).expect("store records always serialize");
    json.push(b'\n');
    json
}

fn write_json(path: &Path, record: &impl Serialize) -> Result<()> {
    let json = to_json(record);
    write_atomic(path, |file| file.write_all(&json)).map_err(io_err("writing", path))
}

fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    match fs::read(path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|cause| StoreError::Corrupt {
                    path: path.to_owned(),
                    cause,
                })
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(io_err("reading", path)(err)),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::records::tests::sample_manifest;

    #[test]
    fn a_layer_is_built_by_one_builder_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path()).unwrap();
        let key = Digest::of_bytes(b"layer inputs");
        let other = Digest::of_bytes(b"another layer");
        let held = store.lock_layer_build(&key).unwrap();
        let (done, waited) = std::sync::mpsc::channel();
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let _second = store.lock_layer_build(&key).unwrap();
                done.send(()).unwrap();
            });
            // Another layer is not held up.
            drop(store.lock_layer_build(&other).unwrap());
            let timeout = std::time::Duration::from_millis(300);
            assert!(
                waited.recv_timeout(timeout).is_err(),
                "the second builder waits"
            );
            drop(held);
            waited
                .recv_timeout(std::time::Duration::from_secs(5))
                .unwrap();
        });
    }

    #[test]
    fn import_names_blob_by_content_and_dedups() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path()).unwrap();
        let mut blobs = Vec::new();
        for _ in 0..2 {
            let temp = store.temp_path("vmlinuz");
            fs::write(&temp, b"kernel bytes").unwrap();
            blobs.push(store.import_blob(&temp).unwrap());
            assert!(!temp.exists());
        }
        assert_eq!(blobs[0], blobs[1]);
        assert_eq!(blobs[0].sha256, Digest::of_bytes(b"kernel bytes"));
        assert_eq!(
            fs::read(store.blob_path(&blobs[0].sha256)).unwrap(),
            b"kernel bytes"
        );
        assert_eq!(store.put_blob(b"kernel bytes").unwrap(), blobs[0]);
    }

    #[test]
    fn layer_cache_needs_its_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path()).unwrap();
        let blob = store.put_blob(b"rootfs").unwrap();
        let record = LayerRecord {
            kind: LayerKind::Role,
            key: Digest::of_bytes(b"inputs"),
            outputs: [("rootfs.tar".to_owned(), blob.clone())].into(),
        };
        store.put_layer(&record).unwrap();
        assert_eq!(store.layer(&record.key).unwrap(), Some(record.clone()));
        fs::remove_file(store.blob_path(&blob.sha256)).unwrap();
        assert_eq!(store.layer(&record.key).unwrap(), None);
    }

    #[test]
    fn a_damaged_newest_release_falls_back_to_the_one_before_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path().join("store")).unwrap();
        let release = |content: &[u8]| {
            let blob = store.put_blob(content).unwrap();
            let artifacts = [("root.squashfs".to_owned(), blob.clone())].into();
            let manifest =
                Manifest::new("mixer", vec![], artifacts, BTreeMap::new(), BTreeMap::new());
            store.add_manifest(&manifest).unwrap();
            (manifest, blob)
        };
        let (first, _) = release(b"first root");
        let (second, blob) = release(b"second root");
        assert_eq!(
            store.newest_whole_release("mixer").unwrap(),
            (Some(second), vec![])
        );

        // Truncated, then unreadable on top: both passed over, each said.
        fs::write(store.blob_path(&blob.sha256), b"second").unwrap();
        let (served, passed_over) = store.newest_whole_release("mixer").unwrap();
        assert_eq!(served, Some(first.clone()));
        assert!(passed_over[0].contains("truncated"), "{passed_over:?}");
        let third = store
            .records_dir(Records::Manifests, "mixer")
            .unwrap()
            .join("00000003.json");
        fs::write(&third, b"{ not json").unwrap();
        let (served, passed_over) = store.newest_whole_release("mixer").unwrap();
        assert_eq!(served, Some(first));
        assert!(
            passed_over[0].contains("record 3 is unreadable"),
            "{passed_over:?}"
        );
        assert_eq!(passed_over.len(), 2);
    }

    #[test]
    fn releases_append_and_skip_repeats() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path()).unwrap();
        assert_eq!(store.latest_manifest("mixer").unwrap(), None);
        let first = sample_manifest("mixer", b"k1");
        let second = sample_manifest("mixer", b"k2");
        store.add_manifest(&first).unwrap();
        store.add_manifest(&first).unwrap();
        store.add_manifest(&second).unwrap();
        assert_eq!(
            store.manifests("mixer").unwrap(),
            vec![first, second.clone()]
        );
        assert_eq!(store.latest_manifest("mixer").unwrap(), Some(second));
        assert_eq!(store.roles().unwrap(), vec!["mixer"]);
    }

    #[test]
    fn a_rollback_makes_an_older_release_current_and_keeps_the_history() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path()).unwrap();
        let first = sample_manifest("encoder", b"k1");
        let second = sample_manifest("encoder", b"k2");
        for content in [&b"k1"[..], b"k2", b"tar", b"sq"] {
            store.put_blob(content).unwrap();
        }
        store.add_manifest(&first).unwrap();
        store.add_manifest(&second).unwrap();
        let before = store.changed_at();
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(
            store.make_current("encoder", 1).unwrap(),
            Some(first.clone())
        );
        assert_eq!(
            store.latest_manifest("encoder").unwrap(),
            Some(first.clone())
        );
        assert!(store.changed_at() > before, "a reader sees the rollback");
        let numbers: Vec<u64> = store
            .releases("encoder")
            .unwrap()
            .iter()
            .map(|(n, _)| *n)
            .collect();
        assert_eq!(numbers, [1, 2, 3]);
        // Already current: nothing appended. Forward again: release 2 is current.
        store.make_current("encoder", 3).unwrap();
        assert_eq!(store.releases("encoder").unwrap().len(), 3);
        assert_eq!(
            store.make_current("encoder", 2).unwrap(),
            Some(second.clone())
        );
        assert_eq!(store.latest_manifest("encoder").unwrap(), Some(second));
        assert_eq!(store.make_current("encoder", 9).unwrap(), None);
        // A release whose files gc pruned cannot come back.
        fs::remove_file(store.blob_path(&first.artifacts["vmlinuz"].sha256)).unwrap();
        assert!(store.make_current("encoder", 1).is_err());
    }

    #[test]
    fn host_layers_latest_wins() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path()).unwrap();
        let old = store.put_blob(b"cpio 1").unwrap();
        let new = store.put_blob(b"cpio 2").unwrap();
        let key = Digest::of_bytes(b"k");
        store
            .add_host_layer(&HostLayer::new("room-mixer", "mixer", key.clone(), old))
            .unwrap();
        store
            .add_host_layer(&HostLayer::new("room-mixer", "mixer", key, new.clone()))
            .unwrap();
        assert_eq!(store.host_layer("room-mixer").unwrap().unwrap().blob, new);
        assert_eq!(store.hosts().unwrap(), vec!["room-mixer"]);
        assert_eq!(store.host_layer("nobody").unwrap(), None);
    }

    #[test]
    fn open_needs_an_existing_store() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Store::open(dir.path().join("missing")).is_err());
        assert!(!dir.path().join("missing").exists());
        Store::create(dir.path()).unwrap();
        assert!(Store::open(dir.path()).is_ok());
    }

    #[test]
    fn names_cannot_escape_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path()).unwrap();
        assert!(matches!(
            store.latest_manifest("../etc"),
            Err(StoreError::BadName(_))
        ));
        assert!(matches!(store.host_layer(""), Err(StoreError::BadName(_))));
    }
}
