//! The box's receiver of the hosts' journals: Debian's `systemd-journal-remote` over TLS on the
//! netboot machine's address and the master file's `journal_port`, with a certificate for that
//! address from the store's journal authority, which the role images trust. `netbootd
//! journal-remote` prepares it and becomes it (exec): the service that runs it is its own
//! (`lectern-journal-remote.service`), netbootd's serving is not involved.

use std::net::SocketAddrV4;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use lectern_master::Plan;
use lectern_store::Store;

/// Debian's receiver (package systemd-journal-remote).
pub const RECEIVER: &str = "/lib/systemd/systemd-journal-remote";

/// What the receiver is run with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receiver {
    pub listen: SocketAddrV4,
    pub key: PathBuf,
    pub certificate: PathBuf,
    /// One journal file per sending address, `remote-<address>.journal`.
    pub output: PathBuf,
}

impl Receiver {
    /// Certifies the receiver for the plan's netboot address with the store's journal authority
    /// (key and certificate written to `key_dir`, the key 0600), to write under `output`.
    pub fn prepare(plan: &Plan, store: &Store, key_dir: &Path, output: &Path) -> Result<Receiver> {
        let ca = store.existing_journal_ca()?.with_context(|| {
            format!(
                "the store {} has no journal authority yet, so no image trusts a receiver: build the images first (imgbuild all)",
                plan.netboot.store.display()
            )
        })?;
        let address = plan.netboot.server_ip;
        let issued = ca.issue_receiver(address)?;
        for dir in [key_dir, output] {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let key = key_dir.join("journal-remote.key");
        let certificate = key_dir.join("journal-remote.pem");
        let write = |path: &Path, text: &str, mode: u32| -> Result<()> {
            lectern_store::write_atomic(path, |file| {
                use std::io::Write;
                file.set_permissions(std::fs::Permissions::from_mode(mode))?;
                file.write_all(text.as_bytes())
            })
            .with_context(|| format!("writing {}", path.display()))
        };
        write(&key, &issued.key, 0o600)?;
        write(&certificate, &issued.certificate, 0o644)?;
        Ok(Receiver {
            listen: SocketAddrV4::new(address, plan.netboot.journal_port),
            key,
            certificate,
            output: output.to_owned(),
        })
    }

    /// The receiver's command line. No `--trust`: Debian builds it without the TLS library that
    /// checks client certificates, so hosts hold no key and anyone may send (see SECURITY.md).
    pub fn command(&self) -> Command {
        let mut command = Command::new(RECEIVER);
        command
            .arg(format!("--listen-https={}", self.listen))
            .arg(format!("--key={}", self.key.display()))
            .arg(format!("--cert={}", self.certificate.display()))
            .arg("--split-mode=host")
            // A directory: its trailing slash is how the receiver tells one from a file.
            .arg(format!("--output={}/", self.output.display()));
        command
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_receiver_listens_on_the_netboot_address_with_a_certificate_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path().join("store")).unwrap();
        let master = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/master.toml");
        let mut plan = lectern_master::load_without_secret_values(&master).unwrap();
        plan.netboot.store = dir.path().join("store");
        let keys = dir.path().join("keys");
        let output = dir.path().join("journals");

        let error = Receiver::prepare(&plan, &store, &keys, &output).unwrap_err();
        assert!(format!("{error:#}").contains("imgbuild all"), "{error:#}");

        store.journal_ca().unwrap();
        let receiver = Receiver::prepare(&plan, &store, &keys, &output).unwrap();
        assert_eq!(
            receiver.listen,
            SocketAddrV4::new(plan.netboot.server_ip, 19532)
        );
        let mode = std::fs::metadata(&receiver.key)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let command = receiver.command();
        let args: Vec<String> = command
            .get_args()
            .map(|arg| arg.to_string_lossy().into_owned())
            .collect();
        assert_eq!(command.get_program(), RECEIVER);
        assert_eq!(
            args,
            [
                format!("--listen-https={}:19532", plan.netboot.server_ip),
                format!("--key={}", keys.join("journal-remote.key").display()),
                format!("--cert={}", keys.join("journal-remote.pem").display()),
                "--split-mode=host".to_owned(),
                format!("--output={}/", output.display()),
            ]
        );
    }
}
