//! The JSON records the store keeps: layer cache entries, one manifest per role build, one record per host layer.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Digest;

/// Bumped when a record's meaning changes incompatibly.
pub const FORMAT: u32 = 1;

/// A blob in the store: its content hash and size in bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRef {
    pub sha256: Digest,
    pub size: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LayerKind {
    /// Debian base rootfs (+ the kernel installed in it).
    Base,
    /// The initrd, made from the base by its initramfs-tools.
    Initrd,
    /// Base + the role's packages.
    Role,
    /// Role + role-wide rendered overlays, packed as the bootable root image.
    Config,
}

/// A built layer: `key` is the sha256 of everything that went into it, `outputs` the blobs it produced
/// (e.g. `rootfs.tar`, `vmlinuz`, `initrd`, `root.squashfs`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    pub kind: LayerKind,
    pub key: Digest,
    pub outputs: BTreeMap<String, BlobRef>,
}

/// One build of a role: what netbootd serves. `image` identifies the artifact set and is what the boot
/// reporter sends back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub role: String,
    pub image: Digest,
    pub created_unix: u64,
    pub layers: Vec<LayerRecord>,
    /// Netboot artifacts by name: `vmlinuz`, `initrd`, `root.squashfs`.
    pub artifacts: BTreeMap<String, BlobRef>,
    /// Human-readable description of the inputs (recipe hashes, suite, mirror, SOURCE_DATE_EPOCH…).
    pub inputs: BTreeMap<String, String>,
    /// Versions of the tools that built it (mmdebstrap, mksquashfs…).
    pub tools: BTreeMap<String, String>,
}

impl Manifest {
    /// Builds a manifest whose `image` id is derived from the artifacts alone, so identical artifacts give the
    /// same id whenever and wherever they were built.
    pub fn new(
        role: &str,
        layers: Vec<LayerRecord>,
        artifacts: BTreeMap<String, BlobRef>,
        inputs: BTreeMap<String, String>,
        tools: BTreeMap<String, String>,
    ) -> Self {
        let listing: String = artifacts
            .iter()
            .map(|(name, blob)| format!("{name} {}\n", blob.sha256))
            .collect();
        Self {
            format: FORMAT,
            role: role.to_owned(),
            image: Digest::of_bytes(listing.as_bytes()),
            created_unix: crate::now_unix(),
            layers,
            artifacts,
            inputs,
            tools,
        }
    }

    /// Every blob this manifest needs kept.
    pub fn blobs(&self) -> impl Iterator<Item = &BlobRef> {
        self.layers
            .iter()
            .flat_map(|layer| layer.outputs.values())
            .chain(self.artifacts.values())
    }
}

/// The per-host layer: a small cpio (identity, network config, per-host rendered files and secrets) loaded
/// as a second initrd next to the role's image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostLayer {
    pub format: u32,
    pub hostname: String,
    pub role: String,
    pub key: Digest,
    /// What every boot of the host loads: its files without secrets.
    pub blob: BlobRef,
    /// Its files with secrets (a 0600 blob), released only over TLS to a boot that proves it is the
    /// host. None: the host has none, or `blob` holds them (a cloud host, which reads its layer from
    /// SSM rather than from netbootd).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets: Option<BlobRef>,
    pub created_unix: u64,
}

impl HostLayer {
    pub fn new(hostname: &str, role: &str, key: Digest, blob: BlobRef) -> Self {
        Self {
            format: FORMAT,
            hostname: hostname.to_owned(),
            role: role.to_owned(),
            key,
            blob,
            secrets: None,
            created_unix: crate::now_unix(),
        }
    }

    /// The same layer with its secrets in a blob of their own.
    pub fn with_secrets(self, secrets: BlobRef) -> Self {
        Self {
            secrets: Some(secrets),
            ..self
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn blob(content: &[u8]) -> BlobRef {
        BlobRef {
            sha256: Digest::of_bytes(content),
            size: content.len() as u64,
        }
    }

    pub(crate) fn sample_manifest(role: &str, kernel: &[u8]) -> Manifest {
        let base = LayerRecord {
            kind: LayerKind::Base,
            key: Digest::of_bytes(b"base inputs"),
            outputs: BTreeMap::from([("rootfs.tar".to_owned(), blob(b"tar"))]),
        };
        Manifest::new(
            role,
            vec![base],
            BTreeMap::from([
                ("vmlinuz".to_owned(), blob(kernel)),
                ("root.squashfs".to_owned(), blob(b"sq")),
            ]),
            BTreeMap::from([("suite".to_owned(), "bookworm".to_owned())]),
            BTreeMap::from([("mmdebstrap".to_owned(), "1.3.5".to_owned())]),
        )
    }

    #[test]
    fn manifest_json_round_trip() {
        let manifest = sample_manifest("mixer", b"kernel");
        let json = serde_json::to_string_pretty(&manifest).unwrap();
        assert!(json.contains("\"kind\": \"base\""), "{json}");
        let back: Manifest = serde_json::from_str(&json).unwrap();
        assert_eq!(back, manifest);
    }

    #[test]
    fn image_id_depends_on_artifacts_only() {
        let a = sample_manifest("mixer", b"kernel");
        let mut b = sample_manifest("mixer", b"kernel");
        b.inputs.insert("note".to_owned(), "other".to_owned());
        assert_eq!(
            a.image,
            Manifest::new("mixer", b.layers, b.artifacts, b.inputs, b.tools).image
        );
        assert_ne!(a.image, sample_manifest("mixer", b"other kernel").image);
    }

    #[test]
    fn corrupt_digest_is_rejected() {
        let upper = Digest::of_bytes(b"x").as_str().to_uppercase();
        let json = format!(r#"{{"sha256":"{upper}","size":1}}"#);
        assert!(serde_json::from_str::<BlobRef>(&json).is_err());
    }
}
