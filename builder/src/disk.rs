//! Disk images of a built role image, for VMs and cloud instances: a GPT disk whose EFI system partition
//! holds a unified kernel image (the role's kernel, initrd and command line in one EFI binary) and whose
//! root partition is the role's `root.squashfs`, byte for byte, so the disk boots the same content hash
//! as the netbooted machines. Writable state lives in RAM (the initrd's tmpfs overlay), as on netboot.
//!
//! Built without loop devices or mounts: `mkfs.vfat` and mtools for the ESP, `sfdisk` writing the
//! partition table into the file, the partitions copied to their offsets. Every identifier is derived
//! from the image id and every timestamp is `SOURCE_DATE_EPOCH`: two builds give the same bytes.

use std::fs::{self, File};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use lectern_store::command_line::{HostLayer, Image, KernelCommandLine};
use lectern_store::{Digest, Manifest, Store};

use crate::build::{INITRD, ROOT_SQUASHFS, VMLINUZ};
use crate::tools::{self, Tool};

/// The EFI stub a unified kernel image is built on (no ukify in bookworm).
pub const EFI_STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";
/// GPT partition names: the initrd finds the root by its name.
pub const ESP_LABEL: &str = "lectern-esp";
pub const ROOT_LABEL: &str = "lectern-root";

const MIB: u64 = 1024 * 1024;
const SECTOR: u64 = 512;
/// The smallest FAT32 file system mkfs.vfat makes without complaint, with room to spare.
const MIN_ESP: u64 = 64 * MIB;
/// GPT type GUIDs (UEFI spec; Discoverable Partitions Specification for the x86-64 root).
const ESP_TYPE: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
const ROOT_X86_64_TYPE: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";

pub const DISK_TOOLS: &[Tool] = &[
    tools::OBJCOPY,
    tools::MKFS_VFAT,
    tools::MMD,
    tools::MCOPY,
    tools::SFDISK,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DiskFormat {
    Raw,
    Qcow2,
}

/// What goes on the disk besides the image: the command line netbooted hosts get from netbootd.
pub struct DiskSpec<'a> {
    pub manifest: &'a Manifest,
    /// netbootd's base URL: where the disk-booted host fetches its per-host layer and reports.
    pub server_url: &'a str,
    pub format: DiskFormat,
    pub source_date_epoch: u64,
}

/// Where a disk's partitions start and how long they are, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub esp_offset: u64,
    pub esp_size: u64,
    pub root_offset: u64,
    pub root_size: u64,
    pub disk_size: u64,
}

impl Layout {
    /// 1 MiB aligned partitions; the root partition is exactly the squashfs (mksquashfs pads it to
    /// 4 KiB), so that hashing the partition checks the image; 1 MiB at the end for the backup GPT.
    pub fn new(uki_size: u64, root_size: u64) -> Result<Self> {
        if root_size % SECTOR != 0 {
            bail!("the root image is {root_size} bytes, not a whole number of sectors");
        }
        let esp_size = (uki_size + uki_size / 4 + 4 * MIB)
            .next_multiple_of(MIB)
            .max(MIN_ESP);
        let esp_offset = MIB;
        let root_offset = esp_offset + esp_size;
        let disk_size = (root_offset + root_size).next_multiple_of(MIB) + MIB;
        Ok(Layout {
            esp_offset,
            esp_size,
            root_offset,
            root_size,
            disk_size,
        })
    }

    /// The `sfdisk` script for this layout, with identifiers derived from `image`.
    pub fn sfdisk_script(&self, image: &Digest) -> String {
        format!(
            "label: gpt\nlabel-id: {}\nunit: sectors\nfirst-lba: 2048\n\n\
             start={}, size={}, type={ESP_TYPE}, uuid={}, name={ESP_LABEL}\n\
             start={}, size={}, type={ROOT_X86_64_TYPE}, uuid={}, name={ROOT_LABEL}, attrs=GUID:60\n",
            uuid_from(image, "disk"),
            self.esp_offset / SECTOR,
            self.esp_size / SECTOR,
            uuid_from(image, "esp"),
            self.root_offset / SECTOR,
            self.root_size / SECTOR,
            uuid_from(image, "root"),
        )
    }
}

/// A stable UUID (version 4 layout) for `what` of `image`: same image, same identifiers.
fn uuid_from(image: &Digest, what: &str) -> String {
    let hex = Digest::of_bytes(format!("{}:{what}", image.as_str()).as_bytes());
    let h = hex.as_str();
    // Version nibble 4, variant bits 10.
    let variant = ["8", "9", "a", "b"][usize::from_str_radix(&h[16..17], 16).unwrap_or(0) % 4];
    format!(
        "{}-{}-4{}-{}{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        variant,
        &h[17..20],
        &h[20..32]
    )
}

/// The kernel command line baked into the disk's unified kernel image. The same image boots every host
/// of its role: the host learns who it is from its firmware (`lectern.host=` in an SMBIOS OEM string)
/// or else by its MAC, when the initrd fetches its per-host layer from `server_url`.
pub fn cmdline(manifest: &Manifest, server_url: &str) -> Result<String> {
    let root = artifact(manifest, ROOT_SQUASHFS)?;
    let partition = format!("partlabel:{ROOT_LABEL}");
    Ok(KernelCommandLine {
        root: Some((&partition, root.sha256.as_str())),
        server: server_url,
        image: Some(Image {
            id: manifest.image.as_str(),
            role: &manifest.role,
            hostname: None,
            layer: HostLayer::Fetch,
        }),
        extra: &[],
    }
    .render())
}

fn artifact<'a>(manifest: &'a Manifest, name: &str) -> Result<&'a lectern_store::BlobRef> {
    manifest
        .artifacts
        .get(name)
        .with_context(|| format!("the {} image has no {name}", manifest.role))
}

/// Writes the disk image of `spec` to `output` (replaced only once complete). Returns its layout.
pub fn write_disk(store: &Store, spec: &DiskSpec, output: &Path) -> Result<Layout> {
    tools::require(DISK_TOOLS)?;
    if !Path::new(EFI_STUB).is_file() {
        bail!("missing {EFI_STUB}: install with `apt-get install systemd-boot-efi`");
    }
    if spec.format == DiskFormat::Qcow2 {
        tools::require(&[tools::QEMU_IMG])?;
    }
    let manifest = spec.manifest;
    let parent = output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let work = tempfile::Builder::new()
        .prefix(".disk-")
        .tempdir_in(parent)
        .with_context(|| format!("creating a scratch directory in {}", parent.display()))?;
    let work = work.path();
    let epoch = spec.source_date_epoch.to_string();

    let uki = work.join("BOOTX64.EFI");
    build_uki(store, spec, work, &uki)?;
    let root = store.blob_path(&artifact(manifest, ROOT_SQUASHFS)?.sha256);
    let layout = Layout::new(fs::metadata(&uki)?.len(), fs::metadata(&root)?.len())?;

    let esp = work.join("esp.img");
    let volume_id = &manifest.image.as_str()[..8];
    run(
        "ESP file system",
        Command::new(tools::MKFS_VFAT.command)
            .env("SOURCE_DATE_EPOCH", &epoch)
            .args([
                "--invariant",
                "-F",
                "32",
                "-n",
                "LECTERN",
                "-i",
                volume_id,
                "-C",
            ])
            .arg(&esp)
            .arg((layout.esp_size / 1024).to_string()),
    )?;
    for dir in ["::/EFI", "::/EFI/BOOT"] {
        run(
            "ESP directories",
            Command::new(tools::MMD.command)
                .env("SOURCE_DATE_EPOCH", &epoch)
                .arg("-i")
                .arg(&esp)
                .arg(dir),
        )?;
    }
    set_mtime(&uki, spec.source_date_epoch)?;
    run(
        "unified kernel image onto the ESP",
        Command::new(tools::MCOPY.command)
            .env("SOURCE_DATE_EPOCH", &epoch)
            .args(["-m", "-i"])
            .arg(&esp)
            .arg(&uki)
            .arg("::/EFI/BOOT/BOOTX64.EFI"),
    )?;

    let raw = work.join("disk.raw");
    File::create(&raw)?.set_len(layout.disk_size)?;
    let script = work.join("sfdisk.script");
    fs::write(&script, layout.sfdisk_script(&manifest.image))?;
    run(
        "partition table",
        Command::new(tools::SFDISK.command)
            .args(["--quiet", "--no-reread", "--no-tell-kernel"])
            .arg(&raw)
            .stdin(File::open(&script)?),
    )?;
    copy_into(&esp, &raw, layout.esp_offset)?;
    copy_into(&root, &raw, layout.root_offset)?;

    let finished = match spec.format {
        DiskFormat::Raw => raw,
        DiskFormat::Qcow2 => {
            let qcow2 = work.join("disk.qcow2");
            run(
                "qcow2 conversion",
                Command::new(tools::QEMU_IMG.command)
                    .args(["convert", "-f", "raw", "-O", "qcow2"])
                    .arg(&raw)
                    .arg(&qcow2),
            )?;
            qcow2
        }
    };
    fs::rename(&finished, output)
        .with_context(|| format!("moving the disk image to {}", output.display()))?;
    Ok(layout)
}

/// The role's kernel, initrd and command line as one EFI binary, section addresses as systemd-stub
/// expects them.
fn build_uki(store: &Store, spec: &DiskSpec, work: &Path, uki: &Path) -> Result<()> {
    let manifest = spec.manifest;
    let cmdline_file = work.join("cmdline");
    fs::write(&cmdline_file, cmdline(manifest, spec.server_url)?)?;
    let os_release = work.join("os-release");
    fs::write(
        &os_release,
        format!(
            "NAME=lectern\nID=lectern\nPRETTY_NAME=\"lectern {} {}\"\nVERSION_ID={}\n",
            manifest.role,
            manifest.image.short(),
            manifest.image.short()
        ),
    )?;
    let kernel = store.blob_path(&artifact(manifest, VMLINUZ)?.sha256);
    let initrd = store.blob_path(&artifact(manifest, INITRD)?.sha256);
    let section = |name: &str, file: &Path, vma: &str| {
        [
            "--add-section".to_owned(),
            format!("{name}={}", file.display()),
            "--change-section-vma".to_owned(),
            format!("{name}={vma}"),
        ]
    };
    let mut objcopy = Command::new(tools::OBJCOPY.command);
    objcopy
        .args(section(".osrel", &os_release, "0x20000"))
        .args(section(".cmdline", &cmdline_file, "0x30000"))
        .args(section(".linux", &kernel, "0x2000000"))
        .args(section(".initrd", &initrd, "0x3000000"))
        .arg(EFI_STUB)
        .arg(uki);
    run("unified kernel image", &mut objcopy)?;
    let mut bytes = fs::read(uki)?;
    pin_pe_timestamp(&mut bytes)?;
    fs::write(uki, bytes)?;
    Ok(())
}

/// objcopy (binutils 2.40) stamps the PE header with the current time: zero it, as in the stub, and
/// recompute the header checksum over the result.
fn pin_pe_timestamp(pe: &mut [u8]) -> Result<()> {
    let u32_at = |pe: &[u8], at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(pe.get(at..at + 4)?.try_into().ok()?))
    };
    let header = u32_at(pe, 0x3c).context("not a PE file")? as usize;
    if pe.get(header..header + 4) != Some(b"PE\0\0") {
        bail!("not a PE file: no signature at {header:#x}");
    }
    let timestamp = header + 8;
    // The optional header follows the 24-byte COFF header; CheckSum is 64 bytes into it.
    let checksum = header + 24 + 64;
    if pe.len() < checksum + 4 {
        bail!("truncated PE header");
    }
    pe[timestamp..timestamp + 4].fill(0);
    pe[checksum..checksum + 4].fill(0);
    let sum = pe_checksum(pe, checksum);
    pe[checksum..checksum + 4].copy_from_slice(&sum.to_le_bytes());
    Ok(())
}

/// The PE image checksum: 16-bit one's-complement-style sum of the file (its CheckSum field read as
/// zero), folded, plus the file length.
fn pe_checksum(pe: &[u8], checksum_at: usize) -> u32 {
    let mut sum: u64 = 0;
    for (i, chunk) in pe.chunks(2).enumerate() {
        if (checksum_at..checksum_at + 4).contains(&(i * 2)) {
            continue;
        }
        let word = u16::from_le_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u64::from(word);
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let folded = (sum & 0xffff) + (sum >> 16);
    (folded as u32 & 0xffff) + pe.len() as u32
}

/// Runs one short step; its output is shown only when it fails.
fn run(label: &str, command: &mut Command) -> Result<()> {
    let output = command
        .output()
        .with_context(|| format!("starting {:?} for the {label}", command.get_program()))?;
    if !output.status.success() {
        let text = String::from_utf8_lossy(&output.stderr);
        let lines: Vec<&str> = text.lines().collect();
        bail!(
            "{label}: {:?} failed ({}):\n{}",
            command.get_program(),
            output.status,
            lines[lines.len().saturating_sub(15)..].join("\n")
        );
    }
    Ok(())
}

fn set_mtime(path: &Path, epoch: u64) -> Result<()> {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(epoch);
    File::options()
        .write(true)
        .open(path)?
        .set_modified(time)
        .with_context(|| format!("dating {}", path.display()))
}

fn copy_into(from: &Path, disk: &Path, offset: u64) -> Result<()> {
    let mut source = File::open(from).with_context(|| format!("reading {}", from.display()))?;
    let mut target = File::options().write(true).open(disk)?;
    target.seek(SeekFrom::Start(offset))?;
    io::copy(&mut source, &mut target)?;
    target.flush()?;
    Ok(())
}

/// The default file name of a role's disk image: `<role>-<image>.raw|qcow2`.
pub fn default_output(manifest: &Manifest, format: DiskFormat) -> PathBuf {
    let extension = match format {
        DiskFormat::Raw => "raw",
        DiskFormat::Qcow2 => "qcow2",
    };
    PathBuf::from(format!(
        "{}-{}.{extension}",
        manifest.role,
        manifest.image.short()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_aligned_and_the_root_is_exactly_the_image() {
        let layout = Layout::new(45 * MIB + 123, 300 * MIB + 4096).unwrap();
        assert_eq!(layout.esp_offset, MIB);
        assert_eq!(layout.esp_offset % MIB, 0);
        assert_eq!(layout.root_offset % MIB, 0);
        assert!(layout.esp_size >= 45 * MIB + 123);
        assert_eq!(layout.root_size, 300 * MIB + 4096);
        assert!(layout.disk_size >= layout.root_offset + layout.root_size + 33 * SECTOR);
        assert!(Layout::new(MIB, 1000).is_err());
        assert_eq!(Layout::new(MIB, 4096).unwrap().esp_size, MIN_ESP);
    }

    #[test]
    fn the_pe_header_is_pinned_and_summed() {
        // A minimal PE header: e_lfanew at 0x3c, signature, COFF header with a timestamp, optional header.
        let mut pe = vec![0u8; 0x200];
        pe[0x3c] = 0x80;
        pe[0x80..0x84].copy_from_slice(b"PE\0\0");
        pe[0x88..0x8c].copy_from_slice(&0x6b0e_c778u32.to_le_bytes());
        pe[0x100] = 0x34;
        let mut again = pe.clone();
        again[0x88..0x8c].copy_from_slice(&0x1234_5678u32.to_le_bytes());
        pin_pe_timestamp(&mut pe).unwrap();
        pin_pe_timestamp(&mut again).unwrap();
        assert_eq!(pe, again);
        assert_eq!(&pe[0x88..0x8c], &[0; 4]);
        let checksum = u32::from_le_bytes(pe[0xd8..0xdc].try_into().unwrap());
        // Words: 0x0080 (e_lfanew), 0x4550 ("PE"), 0x0034; plus the length.
        assert_eq!(checksum, 0x80 + 0x4550 + 0x34 + 0x200);
        assert!(pin_pe_timestamp(&mut [0u8; 16]).is_err());
    }

    #[test]
    fn identifiers_follow_the_image_only() {
        let image = Digest::of_bytes(b"image");
        let layout = Layout::new(10 * MIB, 100 * MIB).unwrap();
        let script = layout.sfdisk_script(&image);
        assert_eq!(script, layout.sfdisk_script(&image));
        assert_ne!(script, layout.sfdisk_script(&Digest::of_bytes(b"other")));
        assert!(script.contains("name=lectern-root"), "{script}");
        assert!(script.contains(&format!("start={}, size={}", 2048 + 64 * 2048, 100 * 2048)));
        let uuid = uuid_from(&image, "root");
        assert_eq!(uuid.len(), 36);
        assert_eq!(&uuid[14..15], "4");
        assert!("89ab".contains(&uuid[19..20]), "{uuid}");
    }
}
