use anyhow::Result;

use super::{Global, manifest_summary, print};

/// Build every role the plan uses and every host's per-host layer.
#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_: &Args, global: &Global) -> Result<()> {
    let plan = global.plan()?;
    let builder = global.builder(&plan)?;
    // Hosts such as the pxe/control server are not netbooted from an image: say so, build the rest.
    let (roles, skipped): (Vec<String>, Vec<String>) = plan
        .roles()
        .into_iter()
        .partition(|role| builder.recipes().role(role).is_ok());
    if !skipped.is_empty() {
        crate::progress::say(format_args!(
            "no recipe, not netbooted: hosts with role {}",
            skipped.join(", ")
        ));
    }
    let mut host_count = 0;
    for role in &roles {
        print(&manifest_summary(&builder.build_role(role, &plan)?))?;
        host_count += builder.build_host_layers(role, &plan)?.len();
    }
    print(&format!(
        "{} roles, {host_count} per-host layers\n",
        roles.len()
    ))
}
