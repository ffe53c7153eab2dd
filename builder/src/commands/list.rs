use std::fmt::Write;

use anyhow::Result;

use super::{Global, print};

/// Show the releases and per-host layers in the store.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print every release of each role, not just the current one.
    #[arg(long)]
    pub all: bool,
}

pub fn run(args: &Args, global: &Global) -> Result<()> {
    let store = global.open_store()?;
    let mut text = String::new();
    for role in store.roles()? {
        let releases = store.manifests(&role)?;
        let shown = if args.all { releases.len() } else { 1 };
        for (index, manifest) in releases.iter().enumerate().rev().take(shown) {
            let size: u64 = manifest.artifacts.values().map(|blob| blob.size).sum();
            let current = if index + 1 == releases.len() {
                "current"
            } else {
                ""
            };
            writeln!(
                text,
                "{role:<10} image {}  {:>6} MiB  built {}  {current}",
                manifest.image.short(),
                size >> 20,
                manifest.created_unix,
            )?;
        }
    }
    let hosts = store.hosts()?;
    writeln!(text, "{} per-host layers", hosts.len())?;
    for host in hosts {
        if let Some(layer) = store.host_layer(&host)? {
            let blob = &layer.blob;
            writeln!(
                text,
                "  {host:<24} {:<10} {:>7} bytes  {}",
                layer.role,
                blob.size,
                blob.sha256.short()
            )?;
        }
    }
    print(&text)
}
