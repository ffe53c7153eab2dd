use std::path::PathBuf;

use anyhow::Result;

use super::{Global, load_plan, manifest_summary, print};

/// Build one role's image (and, with --config, its hosts' per-host layers).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Role to build: `base` or a recipe name (mixer, source, encoder…).
    pub role: String,
    /// The master file (master.toml) whose plan the overlays are rendered from.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

pub fn run(args: &Args, global: &Global) -> Result<()> {
    let plan = load_plan(args.config.as_deref())?;
    let builder = global.builder()?;
    let manifest = builder.build_role(&args.role, &plan)?;
    let mut text = manifest_summary(&manifest);
    let hosts = builder.build_host_layers(&args.role, &plan)?;
    if !hosts.is_empty() {
        text.push_str(&format!("  {} per-host layers\n", hosts.len()));
    }
    print(&text)
}
