//! The certificate authority of the hosts' journal uploads. imgbuild makes it with the store and
//! bakes its certificate into every role image; `netbootd journal-remote` issues the box's
//! receiver a certificate for its address at each start. A host's `systemd-journal-upload` sends
//! only to a receiver that proves it holds a key this authority certified, so nobody else on the
//! LAN can collect the hosts' logs; the images carry no private key, and a new address needs no new
//! image.

use std::fs;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

use crate::{Result, Store, StoreError, io_err};

/// The authority: its key, and its certificate as the images carry it.
pub struct JournalCa {
    key: KeyPair,
    /// PEM, made once with the key: the same bytes in every image built from this store.
    pub certificate: String,
}

impl std::fmt::Debug for JournalCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JournalCa").finish_non_exhaustive()
    }
}

/// A receiver's key and certificate, PEM.
pub struct ReceiverCertificate {
    pub key: String,
    pub certificate: String,
}

/// The authority's name and constraints: fixed, so that the certificate it signs with is the one
/// the images carry (same name, same key).
fn authority() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "lectern journal receivers");
    // It certifies receivers, nothing below them.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

fn failed(what: &str) -> impl Fn(rcgen::Error) -> StoreError + '_ {
    move |e| StoreError::Missing(format!("cannot {what}: {e}"))
}

impl JournalCa {
    /// A certificate for the receiver at `address` (its only name: hosts upload to the address),
    /// with a fresh key.
    pub fn issue_receiver(&self, address: Ipv4Addr) -> Result<ReceiverCertificate> {
        let issuer = authority()
            .self_signed(&self.key)
            .map_err(failed("load the journal authority"))?;
        let key = KeyPair::generate().map_err(failed("make the journal receiver's key"))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(
            DnType::CommonName,
            format!("lectern journal receiver {address}"),
        );
        params.subject_alt_names = vec![SanType::IpAddress(address.into())];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let certificate = params
            .signed_by(&key, &issuer, &self.key)
            .map_err(failed("certify the journal receiver"))?;
        Ok(ReceiverCertificate {
            key: key.serialize_pem(),
            certificate: certificate.pem(),
        })
    }
}

impl Store {
    /// The authority's private key: readable by the store's owner only.
    pub fn journal_ca_key_path(&self) -> PathBuf {
        self.root.join("keys/journal-ca.key")
    }

    /// The authority's certificate, which the images carry.
    pub fn journal_ca_certificate_path(&self) -> PathBuf {
        self.root.join("keys/journal-ca.pem")
    }

    /// The authority, if imgbuild has made it.
    pub fn existing_journal_ca(&self) -> Result<Option<JournalCa>> {
        let (key_path, certificate_path) = (
            self.journal_ca_key_path(),
            self.journal_ca_certificate_path(),
        );
        if !key_path.exists() || !certificate_path.exists() {
            return Ok(None);
        }
        let pem = fs::read_to_string(&key_path).map_err(io_err("reading", &key_path))?;
        let key = KeyPair::from_pem(&pem).map_err(|e| {
            StoreError::Missing(format!("{} is not a usable key: {e}", key_path.display()))
        })?;
        let certificate =
            fs::read_to_string(&certificate_path).map_err(io_err("reading", &certificate_path))?;
        Ok(Some(JournalCa { key, certificate }))
    }

    /// The authority, made (ECDSA P-256) the first time. Two writers racing keep the first key,
    /// and the first certificate of it.
    pub fn journal_ca(&self) -> Result<JournalCa> {
        if let Some(ca) = self.existing_journal_ca()? {
            self.own_key_file(&self.journal_ca_key_path())?;
            self.own_key_file(&self.journal_ca_certificate_path())?;
            return Ok(ca);
        }
        let key_path = self.journal_ca_key_path();
        if !key_path.exists() {
            let key = KeyPair::generate().map_err(failed("make the journal authority's key"))?;
            self.write_key_file_once(&key_path, &key.serialize_pem(), 0o600)?;
        }
        let pem = fs::read_to_string(&key_path).map_err(io_err("reading", &key_path))?;
        let key = KeyPair::from_pem(&pem).map_err(failed("read the journal authority's key"))?;
        let certificate = authority()
            .self_signed(&key)
            .map_err(failed("make the journal authority's certificate"))?;
        self.write_key_file_once(
            &self.journal_ca_certificate_path(),
            &certificate.pem(),
            0o644,
        )?;
        Ok(self.existing_journal_ca()?.expect("just written"))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;

    use super::*;

    #[test]
    fn the_authority_is_made_once_and_only_its_key_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path()).unwrap();
        assert!(store.existing_journal_ca().unwrap().is_none());
        let made = store.journal_ca().unwrap();
        let again = store.journal_ca().unwrap();
        assert_eq!(made.certificate, again.certificate);
        assert!(made.certificate.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(!made.certificate.contains("PRIVATE"));
        let mode = |path: PathBuf| fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(
            (
                mode(store.journal_ca_key_path()),
                mode(store.journal_ca_certificate_path())
            ),
            (0o600, 0o644)
        );
    }

    /// openssl's own verification (what curl in systemd-journal-upload does): the receiver's
    /// certificate chains to the authority the images carry, for its address and no other, and
    /// not to another store's.
    #[test]
    fn a_receiver_certificate_verifies_against_the_authority_for_its_address_only() {
        let Ok(version) = Command::new("openssl").arg("version").output() else {
            eprintln!("skipping: no openssl");
            return;
        };
        assert!(version.status.success());
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path().join("store")).unwrap();
        let ca = store.journal_ca().unwrap();
        let receiver = ca.issue_receiver(Ipv4Addr::new(10, 42, 0, 1)).unwrap();
        assert!(receiver.key.contains("PRIVATE KEY"));
        let leaf = dir.path().join("receiver.pem");
        fs::write(&leaf, &receiver.certificate).unwrap();
        let other = Store::create(dir.path().join("other")).unwrap();
        other.journal_ca().unwrap();
        let verify = |ca: PathBuf, address: &str| {
            Command::new("openssl")
                .args(["verify", "-CAfile"])
                .arg(ca)
                .args(["-verify_ip", address])
                .arg(&leaf)
                .output()
                .unwrap()
                .status
                .success()
        };
        assert!(verify(store.journal_ca_certificate_path(), "10.42.0.1"));
        assert!(!verify(store.journal_ca_certificate_path(), "10.42.0.2"));
        assert!(!verify(other.journal_ca_certificate_path(), "10.42.0.1"));
    }
}
