use std::fmt::Write;

use anyhow::{Context, Result, bail};

use super::{Global, print};

/// List a role's numbered releases, or make one of them current (roll back, or forward again).
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Every release of ROLE, oldest first; the last one is current.
    List { role: String },
    /// Make release NUMBER of ROLE current: netbootd serves it from the next boot of each host on,
    /// without a restart; running hosts keep what they booted.
    Use { role: String, number: u64 },
}

pub fn run(args: &Args, global: &Global) -> Result<()> {
    let store = global.open_store()?;
    match &args.command {
        Command::List { role } => {
            let releases = store.releases(role)?;
            if releases.is_empty() {
                bail!("no release of {role} in {}", store.root().display());
            }
            let mut text = String::new();
            for (index, (number, manifest)) in releases.iter().enumerate() {
                let first = releases
                    .iter()
                    .find(|(_, m)| m.image == manifest.image)
                    .map(|(n, _)| *n)
                    .filter(|n| n != number);
                let again = first
                    .map(|n| format!("  (release {n} again)"))
                    .unwrap_or_default();
                let current = if index + 1 == releases.len() {
                    "  current"
                } else {
                    ""
                };
                writeln!(
                    text,
                    "{number:>4}  {role} image {}  built {}{again}{current}",
                    manifest.image.short(),
                    manifest.created_unix
                )?;
            }
            print(&text)
        }
        Command::Use { role, number } => {
            let manifest = store.make_current(role, *number)?.with_context(|| {
                format!("{role} has no release {number} (see `imgbuild release list {role}`)")
            })?;
            print(&format!(
                "{role}: release {number} (image {}) is current; hosts boot it from their next boot on\n",
                manifest.image.short()
            ))
        }
    }
}
