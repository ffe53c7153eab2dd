//! One module per `imgbuild` subcommand; `main.rs` holds the clap enum that dispatches to them.

pub mod all;
pub mod disk;
pub mod gc;
pub mod inspect;
pub mod list;
pub mod publish;
pub mod release;
pub mod role;
pub mod update;

use std::path::{Path, PathBuf};

use anyhow::Result;
use lectern_store::Store;

use crate::build::{BuildOptions, Builder};
use crate::context::Plan;
use crate::recipe::Recipes;

/// Fixed default so that builds are reproducible without any setup; override to date a release.
const DEFAULT_SOURCE_DATE_EPOCH: u64 = 1_700_000_000;

/// The master file commands read unless told otherwise.
const DEFAULT_CONFIG: &str = "master.toml";
/// Where images go without a master file naming a store.
const FALLBACK_STORE: &str = "/var/cache/lectern/store";

/// Options every subcommand shares.
#[derive(Debug, clap::Args)]
pub struct Global {
    /// The master file (secrets are read from the file it names).
    #[arg(long, global = true, default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// The image store. Default: the master file's `[netboot] store`, where netbootd serves from.
    #[arg(long, global = true, env = "LECTERN_STORE")]
    pub store: Option<PathBuf>,
    /// Directory of recipe files (base.toml and one per role). Default: `recipes` in the data
    /// directory (`$LECTERN_DATA_DIR`, else /usr/share/lectern for an installed imgbuild, else the
    /// source checkout it was built in).
    #[arg(long, global = true)]
    pub recipes: Option<PathBuf>,
    /// Directory of overlay trees (overlays/<recipe>/{image,config,host}). Default: `overlays` in
    /// the data directory.
    #[arg(long, global = true)]
    pub overlays: Option<PathBuf>,
    /// Persistent apt package cache shared by all builds.
    #[arg(long, global = true, default_value = "/var/cache/lectern/apt")]
    pub apt_cache: PathBuf,
    /// Timestamp for every file in the images; same value + same packages = same bytes.
    #[arg(long, global = true, env = "SOURCE_DATE_EPOCH", default_value_t = DEFAULT_SOURCE_DATE_EPOCH)]
    pub source_date_epoch: u64,
    /// Say nothing of the progress (steps done, layers taken from the store): results, warnings and
    /// errors only.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub quiet: u8,
    /// Say more: each external step's command line and log file.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

impl Global {
    /// The master file's plan.
    pub fn plan(&self) -> Result<Plan> {
        Plan::load(&self.config)
    }

    /// The master file's typed plan, for commands that act on hosts rather than render templates.
    pub fn typed_plan(&self) -> Result<lectern_master::Plan> {
        crate::context::load_typed(&self.config)
    }

    /// The plan, or an empty one (role images need no more) when the default master file is
    /// absent. A master file named with --config must exist.
    pub fn plan_if_any(&self) -> Result<Plan> {
        if self.config == Path::new(DEFAULT_CONFIG) && !self.config.exists() {
            crate::progress::say(format_args!(
                "no {DEFAULT_CONFIG} here: building without per-host layers"
            ));
            return Ok(Plan::empty());
        }
        self.plan()
    }

    /// --store, else the plan's store, else the fallback.
    fn store_dir(&self, plan: &Plan) -> PathBuf {
        (self.store.clone())
            .or_else(|| plan.store_dir())
            .unwrap_or_else(|| FALLBACK_STORE.into())
    }

    pub fn open_store(&self) -> Result<Store> {
        Ok(Store::open(self.store_dir(&self.plan_if_any()?))?)
    }

    /// The lock file beside the master file: its path with `.lock` (master.toml -> master.lock).
    pub fn lock_file(&self) -> PathBuf {
        self.config.with_extension("lock")
    }

    /// The recipe directory: --recipes, else the data directory's.
    pub fn recipes_dir(&self) -> PathBuf {
        (self.recipes.clone()).unwrap_or_else(|| crate::data_dir::find().join("recipes"))
    }

    /// The recipes and their overlays (--overlays, else the data directory's).
    pub fn recipes(&self) -> Result<Recipes> {
        let overlays =
            (self.overlays.clone()).unwrap_or_else(|| crate::data_dir::find().join("overlays"));
        Recipes::load(&self.recipes_dir(), &overlays)
    }

    pub fn builder(&self, plan: &Plan) -> Result<Builder> {
        let recipes = self.recipes()?;
        let options = BuildOptions {
            source_date_epoch: self.source_date_epoch,
            apt_cache: self.apt_cache.clone(),
            lock_file: self.lock_file(),
        };
        Builder::new(Store::create(self.store_dir(plan))?, recipes, options)
    }
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
