//! A disk image into an EBS snapshot through the EBS direct APIs, as coldsnap does it: 512 KiB blocks
//! in parallel, each with its SHA-256, all-zero blocks skipped (a snapshot reads zeros where nothing
//! was written), each block retried by the client, and the snapshot completed with the count of blocks
//! written. AWS's block size is fixed at 512 KiB whatever a stand-in reports.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::client::{Aws, Request, Service};
use crate::ec2;

pub const BLOCK_SIZE: u64 = 512 * 1024;
const GIB: u64 = 1024 * 1024 * 1024;
/// How long AWS may keep an unfinished snapshot before erroring it (StartSnapshot's `Timeout`, minutes).
const START_TIMEOUT_MINUTES: u64 = 60;
const COMPLETION_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Progress of an upload: bytes of the disk done (written or skipped) so far.
pub type Progress<'a> = &'a (dyn Fn(u64) + Sync);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uploaded {
    pub snapshot: String,
    pub volume_gib: u64,
    pub blocks_written: u64,
    pub blocks_total: u64,
}

/// Starts a snapshot of `disk`'s size (whole GiB) with `tags`, and writes the disk into it.
/// A failed upload deletes the snapshot it started.
pub fn upload(
    aws: &Aws,
    disk: &Path,
    description: &str,
    tags: &[(String, String)],
    workers: usize,
    progress: Progress,
) -> Result<Uploaded> {
    let file = File::open(disk).with_context(|| format!("cannot open {}", disk.display()))?;
    let size = file.metadata()?.len();
    if size == 0 {
        bail!("{} is empty", disk.display());
    }
    let volume_gib = size.div_ceil(GIB);
    let tags: Vec<_> = tags
        .iter()
        .map(|(k, v)| json!({ "Key": k, "Value": v }))
        .collect();
    let started = call_json(
        aws,
        "POST",
        "/snapshots".to_owned(),
        &json!({
            "VolumeSize": volume_gib,
            "Description": description,
            "Tags": tags,
            "Timeout": START_TIMEOUT_MINUTES,
        }),
    )
    .context("EBS StartSnapshot")?;
    let snapshot = started["SnapshotId"]
        .as_str()
        .context("EBS StartSnapshot answered without a SnapshotId")?
        .to_owned();
    match write_blocks(aws, &snapshot, &file, size, workers, progress)
        .and_then(|written| complete(aws, &snapshot, written).map(|()| written))
    {
        Ok(blocks_written) => Ok(Uploaded {
            snapshot,
            volume_gib,
            blocks_written,
            blocks_total: size.div_ceil(BLOCK_SIZE),
        }),
        Err(e) => {
            if let Err(cleanup) = ec2::delete_snapshot(aws, &snapshot) {
                tracing::warn!(%snapshot, "cannot delete the unfinished snapshot: {cleanup:#}");
            }
            Err(e.context(format!(
                "uploading {} into {snapshot} (deleted)",
                disk.display()
            )))
        }
    }
}

/// Every non-zero block, by `workers` threads taking the next block index in turn; the number written.
fn write_blocks(
    aws: &Aws,
    snapshot: &str,
    file: &File,
    size: u64,
    workers: usize,
    progress: Progress,
) -> Result<u64> {
    let blocks = size.div_ceil(BLOCK_SIZE);
    let next = AtomicU64::new(0);
    let done = AtomicU64::new(0);
    let written = AtomicU64::new(0);
    let failed = AtomicBool::new(false);
    let first_error = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..workers.max(1) {
            scope.spawn(|| {
                let mut block = vec![0u8; BLOCK_SIZE as usize];
                while !failed.load(Ordering::Relaxed) {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    if index >= blocks {
                        break;
                    }
                    match write_block(aws, snapshot, file, index, blocks, &mut block) {
                        Ok(wrote) => {
                            written.fetch_add(u64::from(wrote), Ordering::Relaxed);
                            let length = BLOCK_SIZE.min(size - index * BLOCK_SIZE);
                            progress(done.fetch_add(length, Ordering::Relaxed) + length);
                        }
                        Err(e) => {
                            failed.store(true, Ordering::Relaxed);
                            first_error.lock().unwrap().get_or_insert(e);
                        }
                    }
                }
            });
        }
    });
    match first_error.into_inner().unwrap() {
        Some(e) => Err(e),
        None => Ok(written.into_inner()),
    }
}

/// Reads block `index` (zero-padded past the end of the file) and writes it unless it is all zeros.
fn write_block(
    aws: &Aws,
    snapshot: &str,
    file: &File,
    index: u64,
    blocks: u64,
    block: &mut [u8],
) -> Result<bool> {
    block.fill(0);
    let mut filled = 0;
    while filled < block.len() {
        let n = file
            .read_at(&mut block[filled..], index * BLOCK_SIZE + filled as u64)
            .context("cannot read the disk image")?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    if block.iter().all(|&b| b == 0) {
        return Ok(false);
    }
    let digest = Sha256::digest(&*block);
    let checksum = BASE64.encode(digest);
    let response = aws
        .call(&Request {
            service: Service::Ebs,
            method: "PUT",
            path: format!("/snapshots/{snapshot}/blocks/{index}"),
            headers: vec![
                ("content-type", "application/octet-stream".to_owned()),
                ("x-amz-data-length", BLOCK_SIZE.to_string()),
                ("x-amz-checksum", checksum.clone()),
                ("x-amz-checksum-algorithm", "SHA256".to_owned()),
                ("x-amz-progress", ((index + 1) * 100 / blocks).to_string()),
            ],
            body: block,
            body_sha256: Some(hex::encode(digest)),
        })
        .with_context(|| format!("EBS PutSnapshotBlock {index}"))?;
    if let Some(echoed) = response.header("x-amz-checksum") {
        if echoed != checksum {
            bail!(
                "EBS PutSnapshotBlock {index}: the service stored checksum {echoed}, not {checksum}"
            );
        }
    }
    Ok(true)
}

/// Seals the snapshot and waits until EC2 calls it `completed` (AWS builds it asynchronously).
fn complete(aws: &Aws, snapshot: &str, written: u64) -> Result<()> {
    let response = aws
        .call(&Request {
            service: Service::Ebs,
            method: "POST",
            path: format!("/snapshots/completion/{snapshot}"),
            headers: vec![("x-amz-changedblockscount", written.to_string())],
            body: b"",
            body_sha256: None,
        })
        .context("EBS CompleteSnapshot")?;
    let status = response.json()?["Status"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    if status == "error" {
        bail!("EBS CompleteSnapshot: the snapshot failed");
    }
    let deadline = Instant::now() + COMPLETION_TIMEOUT;
    loop {
        let state = ec2::snapshot(aws, snapshot)?;
        match state.get("status") {
            Some("completed") => return Ok(()),
            Some("error") => bail!("EC2 reports snapshot {snapshot} failed"),
            _ if Instant::now() > deadline => {
                bail!("snapshot {snapshot} still not completed after {COMPLETION_TIMEOUT:?}")
            }
            _ => std::thread::sleep(Duration::from_secs(5)),
        }
    }
}

/// The snapshot's written blocks, as (index, bytes), read back with ListSnapshotBlocks and
/// GetSnapshotBlock: what a published disk really holds.
pub fn read_blocks(aws: &Aws, snapshot: &str) -> Result<Vec<(u64, Vec<u8>)>> {
    let mut blocks = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut path = format!("/snapshots/{snapshot}/blocks?maxResults=1000");
        if let Some(token) = &token {
            path.push_str(&format!("&pageToken={}", ec2::percent_encode(token)));
        }
        let page = call_json(aws, "GET", path, &serde_json::Value::Null)
            .context("EBS ListSnapshotBlocks")?;
        for block in page["Blocks"].as_array().into_iter().flatten() {
            // AWS sends a number; some stand-ins send it as a string.
            let index = (block["BlockIndex"].as_u64())
                .or_else(|| block["BlockIndex"].as_str()?.parse().ok())
                .context("a block without an index")?;
            let block_token = block["BlockToken"]
                .as_str()
                .context("a block without a token")?;
            let response = aws
                .call(&Request {
                    service: Service::Ebs,
                    method: "GET",
                    path: format!(
                        "/snapshots/{snapshot}/blocks/{index}?blockToken={}",
                        ec2::percent_encode(block_token)
                    ),
                    headers: vec![],
                    body: b"",
                    body_sha256: None,
                })
                .with_context(|| format!("EBS GetSnapshotBlock {index}"))?;
            blocks.push((index, response.body));
        }
        token = page["NextToken"].as_str().map(str::to_owned);
        if token.is_none() {
            return Ok(blocks);
        }
    }
}

fn call_json(
    aws: &Aws,
    method: &'static str,
    path: String,
    body: &serde_json::Value,
) -> Result<serde_json::Value> {
    let bytes = if body.is_null() {
        Vec::new()
    } else {
        serde_json::to_vec(body)?
    };
    aws.call(&Request {
        service: Service::Ebs,
        method,
        path,
        headers: vec![("content-type", "application/json".to_owned())],
        body: &bytes,
        body_sha256: None,
    })?
    .json()
}
