use std::path::PathBuf;

use anyhow::{Result, bail};

use super::{Global, print_manifest_summary};
use crate::context::Plan;

/// Build every role the plan uses and every host's per-host layer.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The plan to render overlays from (JSON until lectern-master's Plan is wired in).
    #[arg(long)]
    pub config: PathBuf,
}

pub fn run(args: &Args, global: &Global) -> Result<()> {
    let plan = Plan::load(&args.config)?;
    let builder = global.builder()?;
    let roles = plan.roles();
    let unknown: Vec<&str> = roles
        .iter()
        .map(String::as_str)
        .filter(|role| builder.recipes().role(role).is_err())
        .collect();
    if !unknown.is_empty() {
        bail!(
            "the plan has hosts with roles that have no recipe: {}",
            unknown.join(", ")
        );
    }
    let mut host_count = 0;
    for role in &roles {
        print_manifest_summary(&builder.build_role(role, &plan)?);
        host_count += builder.build_host_layers(role, &plan)?.len();
    }
    println!("{} roles, {host_count} per-host layers", roles.len());
    Ok(())
}
