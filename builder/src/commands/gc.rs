use std::time::Duration;

use anyhow::Result;

use super::{Global, print};

/// Delete old releases and everything only they used.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Releases to keep per role (and per-host layers per host), for rollback.
    #[arg(long, default_value_t = 3)]
    pub keep: usize,
    /// Minutes during which fresh, unreferenced blobs survive (a build may be writing them right now).
    #[arg(long, default_value_t = 60)]
    pub grace_minutes: u64,
}

pub fn run(args: &Args, global: &Global) -> Result<()> {
    let store = global.open_store()?;
    let report = store.gc(args.keep, Duration::from_secs(args.grace_minutes * 60))?;
    print(&format!(
        "removed {} releases, {} host layers, {} cached layers, {} blobs ({} MiB freed)\n",
        report.manifests,
        report.host_layers,
        report.layers,
        report.blobs,
        report.bytes >> 20
    ))
}
