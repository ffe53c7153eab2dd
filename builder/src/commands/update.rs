use anyhow::Result;

use super::{Global, print};
use crate::lock;

/// Resolve the lock file (`master.lock` beside the master file) again from the mirror: rebuild the
/// base and role layers of which the mirror now has other package versions, lock those, and print
/// what changed. Builds use the lock and nothing else; this is how newer packages get in.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Say which layers the mirror changed, and how, without building or writing anything.
    #[arg(long)]
    pub dry_run: bool,
}

pub fn run(args: &Args, global: &Global) -> Result<()> {
    let plan = global.plan_if_any()?;
    let builder = global.builder(&plan)?;
    let lock_file = global.lock_file();
    let roles: Vec<String> = (plan.roles().into_iter())
        .filter(|role| builder.recipes().role(role).is_ok())
        .collect();
    let update = builder.update(&roles, args.dry_run)?;
    let lock_file = lock_file.display();
    if args.dry_run {
        let mut text = String::new();
        for (layer, reason) in &update.resolved {
            text.push_str(&format!("{layer}: {reason}\n"));
        }
        text.push_str(&if update.resolved.is_empty() {
            format!("{lock_file} is up to date: the mirror has nothing newer for it\n")
        } else {
            format!(
                "dry run: nothing built, {lock_file} unchanged. `imgbuild update` builds these layers \
                 with the mirror's versions and locks them (dependencies that come or go show then)\n"
            )
        });
        return print(&text);
    }
    let mut text = lock::describe_changes(&update.before, &update.after);
    text.push_str(&if update.before == update.after {
        format!("{lock_file} is up to date: the mirror has nothing newer for it\n")
    } else {
        format!("{lock_file} updated: `imgbuild all` builds the images from it\n")
    });
    print(&text)
}
