use anyhow::Result;

use super::{Global, manifest_summary, print};

/// Build one role's image and its hosts' per-host layers.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Role to build: `base` or a recipe name (mixer, source, encoder…).
    pub role: String,
}

pub fn run(args: &Args, global: &Global) -> Result<()> {
    let plan = global.plan_if_any()?;
    let builder = global.builder(&plan)?;
    let manifest = builder.build_role(&args.role, &plan)?;
    let mut text = manifest_summary(&manifest);
    let hosts = builder.build_host_layers(&args.role, &plan)?;
    if !hosts.is_empty() {
        text.push_str(&format!("  {} per-host layers\n", hosts.len()));
    }
    print(&text)
}
