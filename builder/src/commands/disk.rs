use std::path::PathBuf;

use anyhow::{Context, Result};

use super::{Global, print};
use crate::disk::{self, DiskFormat, DiskSpec};

/// Write a role's current image as a bootable UEFI disk (raw or qcow2) for VMs and cloud instances.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The role whose current image goes on the disk (build it first with `imgbuild role`).
    #[arg(long)]
    pub role: String,
    #[arg(long, value_enum, default_value = "raw")]
    pub format: DiskFormat,
    /// Where to write the disk. Default: `<role>-<image>.raw|qcow2` here.
    #[arg(long)]
    pub output: Option<PathBuf>,
}

pub fn run(args: &Args, global: &Global) -> Result<()> {
    let plan = global.plan()?;
    let server_url = plan.netboot_url().context(
        "the master file has no netboot server for the disk's hosts to fetch their layers from",
    )?;
    let store = global.open_store()?;
    let manifest = store.latest_manifest(&args.role)?.with_context(|| {
        format!(
            "no {} image in {}: build it first with `imgbuild role {}`",
            args.role,
            store.root().display(),
            args.role
        )
    })?;
    let output =
        (args.output.clone()).unwrap_or_else(|| disk::default_output(&manifest, args.format));
    let spec = DiskSpec {
        manifest: &manifest,
        server_url: &server_url,
        format: args.format,
        source_date_epoch: global.source_date_epoch,
    };
    let layout = disk::write_disk(&store, &spec, &output)?;
    print(&format!(
        "{} image {} on {}: {} MiB disk, ESP {} MiB, root {} bytes (sha256 as served over netboot)\n",
        manifest.role,
        manifest.image.short(),
        output.display(),
        layout.disk_size >> 20,
        layout.esp_size >> 20,
        layout.root_size,
    ))
}
