//! A disk image as an EC2 AMI: uploaded once per disk, registered for UEFI boot with ENA, tagged, and
//! found again by name the next time (the name carries the disk's hash), so publishing the same image
//! twice creates nothing. Snapshots a crashed publish left behind are reused when complete and deleted
//! otherwise.

use std::path::Path;

use anyhow::{Context, Result};

use crate::client::Aws;
use crate::ebs::{self, Progress};
use crate::ec2::{self, Params};

/// The tag every lectern snapshot and AMI carries: the SHA-256 of the disk image it holds.
pub const DISK_TAG: &str = "lectern:disk-sha256";
const ROOT_DEVICE: &str = "/dev/xvda";

pub struct AmiSpec<'a> {
    /// `lectern-<role>-<disk hash prefix>`: unique per disk, so it is the idempotency key.
    pub name: String,
    pub description: String,
    pub disk: &'a Path,
    pub disk_sha256: String,
    /// Also on the snapshot; `DISK_TAG` is added.
    pub tags: Vec<(String, String)>,
    pub workers: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Published {
    /// An AMI of this disk was there already.
    Existing { ami: String },
    /// This publish registered it; `uploaded` is `None` when a complete snapshot of the disk was reused.
    Registered {
        ami: String,
        snapshot: String,
        uploaded: Option<ebs::Uploaded>,
    },
}

impl Published {
    pub fn ami(&self) -> &str {
        match self {
            Published::Existing { ami } | Published::Registered { ami, .. } => ami,
        }
    }
}

pub fn publish(aws: &Aws, spec: &AmiSpec, progress: Progress) -> Result<Published> {
    let existing = ec2::images(aws, &[("name", &[spec.name.as_str()])])?;
    if let Some(image) = existing
        .iter()
        .find(|i| i.get("name") == Some(spec.name.as_str()))
    {
        return Ok(Published::Existing {
            ami: image.require("imageId")?.to_owned(),
        });
    }
    let mut tags = spec.tags.clone();
    tags.push((DISK_TAG.to_owned(), spec.disk_sha256.clone()));
    let (snapshot, uploaded) = match reusable_snapshot(aws, &spec.disk_sha256)? {
        Some(snapshot) => (snapshot, None),
        None => {
            let uploaded = ebs::upload(
                aws,
                spec.disk,
                &spec.description,
                &tags,
                spec.workers,
                progress,
            )?;
            (uploaded.snapshot.clone(), Some(uploaded))
        }
    };
    // On failure the snapshot is complete and tagged: the next publish registers it without uploading.
    let ami = register(aws, spec, &snapshot)
        .with_context(|| format!("snapshot {snapshot} is kept for the next attempt"))?;
    ec2::create_tags(aws, &ami, &tags).with_context(|| format!("tagging {ami}"))?;
    Ok(Published::Registered {
        ami,
        snapshot,
        uploaded,
    })
}

/// A completed snapshot of this disk from an earlier, interrupted publish; unfinished ones are deleted.
fn reusable_snapshot(aws: &Aws, disk_sha256: &str) -> Result<Option<String>> {
    let mut reusable = None;
    for snapshot in ec2::snapshots_tagged(aws, DISK_TAG, disk_sha256)? {
        let id = snapshot.require("snapshotId")?;
        match snapshot.get("status") {
            Some("completed") if reusable.is_none() => reusable = Some(id.to_owned()),
            Some("completed") => {}
            status => {
                tracing::info!(
                    snapshot = id,
                    ?status,
                    "deleting an unfinished snapshot of this disk"
                );
                ec2::delete_snapshot(aws, id)?;
            }
        }
    }
    Ok(reusable)
}

/// The request AWS needs to boot the disk: x86-64, UEFI, ENA, one gp3 root volume from the snapshot.
pub fn register_params(spec: &AmiSpec, snapshot: &str) -> Params {
    Params::new()
        .set("Name", &spec.name)
        .set("Description", &spec.description)
        .set("Architecture", "x86_64")
        .set("VirtualizationType", "hvm")
        .set("BootMode", "uefi")
        .set("EnaSupport", "true")
        .set("RootDeviceName", ROOT_DEVICE)
        .set("BlockDeviceMapping.1.DeviceName", ROOT_DEVICE)
        .set("BlockDeviceMapping.1.Ebs.SnapshotId", snapshot)
        .set("BlockDeviceMapping.1.Ebs.VolumeType", "gp3")
        .set("BlockDeviceMapping.1.Ebs.DeleteOnTermination", "true")
}

fn register(aws: &Aws, spec: &AmiSpec, snapshot: &str) -> Result<String> {
    let answer = ec2::call(aws, "RegisterImage", &register_params(spec, snapshot))?;
    ec2::text(&answer, "imageId")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ami_boots_uefi_with_ena_from_its_snapshot() {
        let spec = AmiSpec {
            name: "lectern-encoder-0123".into(),
            description: "d".into(),
            disk: Path::new("/dev/null"),
            disk_sha256: "0123".into(),
            tags: vec![],
            workers: 1,
        };
        let params = register_params(&spec, "snap-1").0;
        for (name, value) in [
            ("BootMode", "uefi"),
            ("EnaSupport", "true"),
            ("Architecture", "x86_64"),
            ("BlockDeviceMapping.1.Ebs.SnapshotId", "snap-1"),
            ("RootDeviceName", "/dev/xvda"),
        ] {
            assert!(
                params.contains(&(name.to_owned(), value.to_owned())),
                "{name}: {params:?}"
            );
        }
    }
}
