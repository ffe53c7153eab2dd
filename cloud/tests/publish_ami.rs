//! A disk image published as an AMI against moto: the snapshot's blocks read back equal to the disk,
//! the AMI is registered for UEFI, a second publish creates nothing, a flaky service is retried, and a
//! failed upload leaves no snapshot behind while a complete one is reused.

// Shared with netbootd's cloud tests, which use more of it.
#[allow(dead_code)]
mod stand_in;

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

use lectern_cloud::ami::{self, AmiSpec, DISK_TAG, Published};
use lectern_cloud::ebs::{self, BLOCK_SIZE};
use lectern_cloud::{Aws, ec2};
use stand_in::{FaultyProxy, Moto, aws_at};

/// Four and a half blocks, the second all zeros (not uploaded), the last one short (padded).
fn write_disk(path: &Path, seed: u8) -> Vec<u8> {
    let block = BLOCK_SIZE as usize;
    let mut disk: Vec<u8> = (0..block * 4 + block / 2)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    disk[block..2 * block].fill(0);
    std::fs::write(path, &disk).unwrap();
    disk
}

fn spec_of<'a>(disk: &'a Path, bytes: &[u8]) -> AmiSpec<'a> {
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(bytes));
    AmiSpec {
        name: format!("lectern-encoder-{}", &sha[..16]),
        description: "lectern encoder test image".into(),
        disk,
        disk_sha256: sha,
        tags: vec![("lectern:release".into(), "7".into())],
        workers: 3,
    }
}

fn no_progress(_: u64) {}

/// The snapshot's content as a disk: written blocks at their offsets, zeros elsewhere.
fn read_back(aws: &Aws, snapshot: &str, length: usize) -> Vec<u8> {
    let mut disk = vec![0u8; length.next_multiple_of(BLOCK_SIZE as usize)];
    for (index, data) in ebs::read_blocks(aws, snapshot).unwrap() {
        assert_eq!(data.len(), BLOCK_SIZE as usize, "block {index}");
        let at = index as usize * BLOCK_SIZE as usize;
        disk[at..at + data.len()].copy_from_slice(&data);
    }
    disk.truncate(length);
    disk
}

#[test]
fn a_disk_becomes_one_uefi_ami_whose_snapshot_holds_the_disk() {
    let Some(moto) = Moto::start() else { return };
    let aws = moto.aws();
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("encoder.raw");
    let bytes = write_disk(&disk, 1);
    let spec = spec_of(&disk, &bytes);

    let progress_seen = AtomicU32::new(0);
    let progress = |done: u64| {
        assert!(done <= bytes.len() as u64);
        progress_seen.fetch_add(1, Ordering::Relaxed);
    };
    let published = ami::publish(&aws, &spec, &progress).unwrap();
    let Published::Registered {
        ami,
        snapshot,
        uploaded: Some(uploaded),
    } = &published
    else {
        panic!("the first publish registers and uploads: {published:?}");
    };
    assert_eq!(progress_seen.into_inner(), 5, "one progress step per block");
    assert_eq!(
        (
            uploaded.blocks_total,
            uploaded.blocks_written,
            uploaded.volume_gib
        ),
        (5, 4, 1)
    );
    assert_eq!(
        read_back(&aws, snapshot, bytes.len()),
        bytes,
        "the snapshot holds the disk"
    );

    let answer = ec2::call(
        &aws,
        "DescribeImages",
        &ec2::Params::new().set("ImageId.1", ami),
    )
    .unwrap();
    let image = &ec2::items(&answer, "imagesSet").unwrap()[0];
    assert_eq!(image.get("name"), Some(spec.name.as_str()));
    assert_eq!(image.get("bootMode"), Some("uefi"), "{answer}");
    assert_eq!(image.tag(DISK_TAG), Some(spec.disk_sha256.as_str()));
    assert_eq!(image.tag("lectern:release"), Some("7"));

    let again = ami::publish(&aws, &spec, &no_progress).unwrap();
    assert_eq!(
        again,
        Published::Existing { ami: ami.clone() },
        "the same disk twice: nothing new"
    );
    let snapshots = ec2::snapshots_tagged(&aws, DISK_TAG, &spec.disk_sha256).unwrap();
    assert_eq!(snapshots.len(), 1, "one snapshot of the disk");
}

#[test]
fn a_flaky_service_is_retried_and_a_refusing_one_leaves_no_snapshot() {
    let Some(moto) = Moto::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("encoder.raw");
    let bytes = write_disk(&disk, 2);
    let spec = spec_of(&disk, &bytes);
    let is_block = |method: &str, path: &str| method == "PUT" && path.contains("/blocks/");

    // Every other block upload fails once with 503 (and one StartSnapshot too): retried, all there.
    let puts = AtomicU32::new(0);
    let starts = AtomicU32::new(0);
    let flaky = FaultyProxy::start(
        &moto.url,
        Box::new(move |seen| {
            let flaky_block =
                is_block(seen.method, seen.path) && puts.fetch_add(1, Ordering::Relaxed) % 2 == 0;
            let flaky_start =
                seen.path == "/snapshots" && starts.fetch_add(1, Ordering::Relaxed) == 0;
            (flaky_block || flaky_start).then_some(503)
        }),
    );
    let published = ami::publish(&aws_at(&flaky.url), &spec, &no_progress).unwrap();
    let Published::Registered { snapshot, .. } = &published else {
        panic!("{published:?}")
    };
    assert_eq!(read_back(&moto.aws(), snapshot, bytes.len()), bytes);

    // A service that refuses blocks (a permission or quota error: not retried) fails the publish,
    // which names the failure and deletes the snapshot it started.
    let other = dir.path().join("other.raw");
    let other_bytes = write_disk(&other, 3);
    let other_spec = spec_of(&other, &other_bytes);
    let refusing = FaultyProxy::start(
        &moto.url,
        Box::new(move |seen| is_block(seen.method, seen.path).then_some(403)),
    );
    let err = ami::publish(&aws_at(&refusing.url), &other_spec, &no_progress).unwrap_err();
    let message = format!("{err:#}");
    assert!(
        message.contains("PutSnapshotBlock") && message.contains("403"),
        "{message}"
    );
    assert!(message.contains("(deleted)"), "{message}");
    let left = ec2::snapshots_tagged(&moto.aws(), DISK_TAG, &other_spec.disk_sha256).unwrap();
    assert!(
        left.is_empty(),
        "the failed upload's snapshot is gone: {left:?}"
    );

    // A publish whose upload completed but whose RegisterImage was refused keeps the snapshot, and the
    // next publish registers it without uploading again.
    let no_register = FaultyProxy::start(
        &moto.url,
        Box::new(|seen| seen.body.contains("Action=RegisterImage").then_some(400)),
    );
    let err = ami::publish(&aws_at(&no_register.url), &other_spec, &no_progress).unwrap_err();
    assert!(
        format!("{err:#}").contains("kept for the next attempt"),
        "{err:#}"
    );
    let kept = ec2::snapshots_tagged(&moto.aws(), DISK_TAG, &other_spec.disk_sha256).unwrap();
    assert_eq!(kept.len(), 1, "{kept:?}");
    let resumed = ami::publish(&moto.aws(), &other_spec, &no_progress).unwrap();
    let Published::Registered {
        snapshot,
        uploaded: None,
        ..
    } = &resumed
    else {
        panic!("the complete snapshot is reused: {resumed:?}");
    };
    assert_eq!(Some(snapshot.as_str()), kept[0].get("snapshotId"));
    assert_eq!(
        read_back(&moto.aws(), snapshot, other_bytes.len()),
        other_bytes
    );
}
