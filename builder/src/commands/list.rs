use anyhow::Result;

use super::Global;

/// Show the releases and per-host layers in the store.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print every release of each role, not just the current one.
    #[arg(long)]
    pub all: bool,
}

pub fn run(args: &Args, global: &Global) -> Result<()> {
    let store = global.open_store()?;
    for role in store.roles()? {
        let mut releases = store.manifests(&role)?;
        let shown = if args.all { releases.len() } else { 1 };
        let current = releases.len();
        for (index, manifest) in releases.drain(..).rev().take(shown).enumerate() {
            let size: u64 = manifest.artifacts.values().map(|blob| blob.size).sum();
            let marker = if index == 0 { "current" } else { "" };
            println!(
                "{role:<10} #{:<3} image {}  {:>6} MiB  built {}  {marker}",
                current - index,
                manifest.image.short(),
                size >> 20,
                manifest.created_unix,
            );
        }
    }
    let hosts = store.hosts()?;
    println!("{} per-host layers", hosts.len());
    for host in hosts {
        if let Some(layer) = store.host_layer(&host)? {
            println!(
                "  {host:<24} {:<10} {:>7} bytes  {}",
                layer.role,
                layer.blob.size,
                layer.blob.sha256.short()
            );
        }
    }
    Ok(())
}
