//! netbootd's TLS key. imgbuild makes it with the store and bakes its pin into every role image;
//! netbootd serves secrets and takes boot reports only over TLS with it, so a host that checks the
//! pin talks to this server and nobody on the LAN reads what they say.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use base64::Engine;
use sha2::{Digest as _, Sha256};

use crate::{Result, Store, StoreError, io_err, write_new_atomic};

/// The key and what clients pin of it.
#[derive(Clone)]
pub struct ServerKey {
    /// PKCS#8 PEM of the private key.
    pub pem: String,
    /// `sha256//<base64 of the SHA-256 of its SubjectPublicKeyInfo>`, as curl's `--pinnedpubkey` takes it.
    pub pin: String,
}

impl std::fmt::Debug for ServerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerKey")
            .field("pin", &self.pin)
            .finish_non_exhaustive()
    }
}

impl ServerKey {
    /// The key in the PEM file at `path` (the store's, or one given to `netbootd serve-static`).
    pub fn read(path: &std::path::Path) -> Result<ServerKey> {
        let pem = fs::read_to_string(path).map_err(io_err("reading", path))?;
        ServerKey::from_pem(pem, path)
    }

    fn from_pem(pem: String, path: &std::path::Path) -> Result<ServerKey> {
        let key = rcgen::KeyPair::from_pem(&pem).map_err(|e| {
            StoreError::Missing(format!("{} is not a usable key: {e}", path.display()))
        })?;
        let spki = Sha256::digest(key.public_key_der());
        let pin = format!(
            "sha256//{}",
            base64::engine::general_purpose::STANDARD.encode(spki)
        );
        Ok(ServerKey { pem, pin })
    }
}

impl Store {
    /// Where the key lives: readable by the store's owner only.
    pub fn server_key_path(&self) -> PathBuf {
        self.root.join("keys/netbootd.key")
    }

    /// The key, if imgbuild has made it.
    pub fn existing_server_key(&self) -> Result<Option<ServerKey>> {
        let path = self.server_key_path();
        if !path.exists() {
            return Ok(None);
        }
        ServerKey::read(&path).map(Some)
    }

    /// The key, made (ECDSA P-256) the first time. Two writers racing keep the first one's. An
    /// existing key is given to the store's owner too: a store copied in, or made by root before
    /// the package's user existed, serves once netbootd (that user) can read its key.
    pub fn server_key(&self) -> Result<ServerKey> {
        if let Some(key) = self.existing_server_key()? {
            self.own_key_file(&self.server_key_path())?;
            return Ok(key);
        }
        let key = rcgen::KeyPair::generate()
            .map_err(|e| StoreError::Missing(format!("cannot make netbootd's TLS key: {e}")))?;
        self.write_key_file_once(&self.server_key_path(), &key.serialize_pem(), 0o600)?;
        Ok(self.existing_server_key()?.expect("just written"))
    }

    /// Gives an existing key file under `keys/`, and `keys/`, to the store's owner.
    pub(crate) fn own_key_file(&self, path: &std::path::Path) -> Result<()> {
        self.own(path.parent().expect("keys/ has a parent"))?;
        self.own(path)
    }

    /// Writes `pem` to `path` under `keys/` (made 0700, the store owner's) with `mode`, unless a
    /// racing writer made it first: theirs stays.
    pub(crate) fn write_key_file_once(
        &self,
        path: &std::path::Path,
        pem: &str,
        mode: u32,
    ) -> Result<()> {
        let dir = path.parent().expect("keys/ has a parent");
        fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(io_err("restricting", dir))?;
        self.own(dir)?;
        let written = write_new_atomic(path, |file| {
            file.set_permissions(fs::Permissions::from_mode(mode))?;
            file.write_all(pem.as_bytes())
        });
        match written {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err("writing", path)(e)),
        }
        self.own(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_made_once_private_and_pinned_by_its_public_half() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path()).unwrap();
        assert!(store.existing_server_key().unwrap().is_none());
        let made = store.server_key().unwrap();
        let again = store.server_key().unwrap();
        assert_eq!(
            (made.pem.as_str(), made.pin.as_str()),
            (again.pem.as_str(), again.pin.as_str())
        );
        assert!(
            made.pin.starts_with("sha256//") && made.pin.len() == 8 + 44,
            "{}",
            made.pin
        );
        let mode = fs::metadata(store.server_key_path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(
            !format!("{made:?}").contains("PRIVATE"),
            "Debug shows no key"
        );
    }

    #[test]
    fn private_files_belong_to_the_stores_owner() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path()).unwrap();
        // As root (the tests' usual case here), hand the store to `nobody` as the package does to
        // `lectern`; as anyone else the store is theirs already.
        let _ = std::os::unix::fs::chown(dir.path(), Some(65534), Some(65534));
        let owner = fs::metadata(dir.path()).unwrap().uid();
        let blob = store.put_private_blob(b"stream key").unwrap();
        store.server_key().unwrap();
        for path in [store.blob_path(&blob.sha256), store.server_key_path()] {
            let meta = fs::metadata(&path).unwrap();
            assert_eq!(
                (meta.uid(), meta.mode() & 0o777),
                (owner, 0o600),
                "{}",
                path.display()
            );
        }
    }

    #[test]
    fn a_key_made_before_the_store_changed_hands_follows_it() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path()).unwrap();
        let made = store.server_key().unwrap();
        // Root hands the store to `nobody` after the key was made (as root, the suite's case).
        if std::os::unix::fs::chown(dir.path(), Some(65534), Some(65534)).is_err() {
            return;
        }
        let again = store.server_key().unwrap();
        assert_eq!(again.pin, made.pin, "the same key");
        let key = fs::metadata(store.server_key_path()).unwrap();
        let keys = fs::metadata(store.server_key_path().parent().unwrap()).unwrap();
        assert_eq!((key.uid(), keys.uid()), (65534, 65534));
    }
}
