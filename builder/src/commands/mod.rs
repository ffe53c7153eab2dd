//! One module per `imgbuild` subcommand; `main.rs` holds the clap enum that dispatches to them.

pub mod all;
pub mod gc;
pub mod list;
pub mod role;

use std::path::PathBuf;

use anyhow::Result;
use lectern_store::Store;

use crate::build::{BuildOptions, Builder};
use crate::context::Plan;
use crate::recipe::Recipes;

/// Fixed default so that builds are reproducible without any setup; override to date a release.
const DEFAULT_SOURCE_DATE_EPOCH: u64 = 1_700_000_000;

/// Options every subcommand shares.
#[derive(Debug, clap::Args)]
pub struct Global {
    /// The image store (blobs, layers, manifests, host layers).
    #[arg(
        long,
        global = true,
        env = "LECTERN_STORE",
        default_value = "/var/cache/lectern/store"
    )]
    pub store: PathBuf,
    /// Directory of recipe files (base.toml and one per role).
    #[arg(long, global = true, default_value = "recipes")]
    pub recipes: PathBuf,
    /// Directory of overlay trees (overlays/<recipe>/{image,config,host}).
    #[arg(long, global = true, default_value = "overlays")]
    pub overlays: PathBuf,
    /// Persistent apt package cache shared by all builds.
    #[arg(long, global = true, default_value = "/var/cache/lectern/apt")]
    pub apt_cache: PathBuf,
    /// Timestamp for every file in the images; same value + same packages = same bytes.
    #[arg(long, global = true, env = "SOURCE_DATE_EPOCH", default_value_t = DEFAULT_SOURCE_DATE_EPOCH)]
    pub source_date_epoch: u64,
}

impl Global {
    pub fn open_store(&self) -> Result<Store> {
        Ok(Store::open(&self.store)?)
    }

    pub fn builder(&self) -> Result<Builder> {
        let recipes = Recipes::load(&self.recipes, &self.overlays)?;
        let options = BuildOptions {
            source_date_epoch: self.source_date_epoch,
            apt_cache: self.apt_cache.clone(),
        };
        Builder::new(Store::create(&self.store)?, recipes, options)
    }
}

/// The plan from `--config` (a master file), or an empty one for building role images alone.
fn load_plan(config: Option<&std::path::Path>) -> Result<Plan> {
    config.map_or_else(|| Ok(Plan::empty()), Plan::load)
}

/// Writes command output to stdout; a closed pipe (`imgbuild list | head`) is not an error.
fn print(text: &str) -> Result<()> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

fn manifest_summary(manifest: &lectern_store::Manifest) -> String {
    let mut text = format!("{} image {}\n", manifest.role, manifest.image.short());
    for (name, blob) in &manifest.artifacts {
        text.push_str(&format!(
            "  {name:<14} {:>12} bytes  sha256 {}\n",
            blob.size, blob.sha256
        ));
    }
    text
}
