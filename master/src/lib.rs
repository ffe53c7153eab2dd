//! The one model of lectern's master file.
//!
//! [`load`] reads `master.toml` (and the secrets file it references), checks it, and expands it
//! into a [`Plan`]: every host with its role, room, addresses, ports and service settings. Both
//! `imgbuild` and `netbootd` start from the plan; nothing else in lectern parses the master
//! file. Problems come back as [`Diagnostics`] naming file, line, column and field.

pub mod diagnostics;
mod expand;
pub mod ffmpeg;
pub mod input;
pub mod mac;
pub mod model;
pub mod plan;
pub mod reference;
pub mod secrets;
mod structure;

use std::path::Path;

pub use diagnostics::{Diagnostic, Diagnostics};

/// What `--version` prints for both binaries: the release and the commit it was built from.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("LECTERN_COMMIT"), ")");
pub use plan::{Host, MacAddr, Plan, Role, RoleConfig};
pub use secrets::{Secret, with_secrets_revealed};

use diagnostics::SourceFile;
use expand::{Expander, SecretsSource};
use model::MasterFile;
use secrets::Secrets;
use structure::Segment;

/// The JSON Schema of the master file, as served by `imgbuild schema`.
pub fn schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(MasterFile)).expect("a schema is plain JSON")
}

/// Reads, checks and expands the master file at `path`.
pub fn load(path: &Path) -> Result<Plan, Diagnostics> {
    let text = read_master(path)?;
    load_from(path, &text, Secrets::load)
}

/// Like [`load`], without reading the secrets file: each `secret:` reference is checked for its
/// form only and stands for a value nobody read ([`Secret::unread`]). For netbootd, which serves
/// what imgbuild rendered and needs no secret values.
pub fn load_without_secret_values(path: &Path) -> Result<Plan, Diagnostics> {
    let text = read_master(path)?;
    load_text_without_secret_values(path, &text)
}

/// Like [`load_without_secret_values`], from master-file `text` (an earlier version of the file
/// at `path`, whose relative paths it resolves).
pub fn load_text_without_secret_values(path: &Path, text: &str) -> Result<Plan, Diagnostics> {
    expand_text(path, text, |_| SecretsSource::Unread)
}

fn read_master(path: &Path) -> Result<String, Diagnostics> {
    input::read_bounded(path, "master file", input::MASTER_FILE_LIMIT).map_err(|e| {
        Diagnostics(vec![Diagnostic::file_level(
            path,
            e,
            Some("pass the right file with --config FILE".into()),
        )])
    })
}

/// Checks and expands master-file `text` (named `path` in messages), with the secrets file
/// loaded by `load_secrets` from the path the master file gives.
pub fn load_from(
    path: &Path,
    text: &str,
    load_secrets: impl FnOnce(&Path) -> Result<Secrets, Diagnostics>,
) -> Result<Plan, Diagnostics> {
    expand_text(path, text, |path| match load_secrets(path) {
        Ok(secrets) => SecretsSource::Loaded(secrets),
        Err(problems) => SecretsSource::Failed(problems),
    })
}

fn expand_text(
    path: &Path,
    text: &str,
    secrets_source: impl FnOnce(&Path) -> SecretsSource,
) -> Result<Plan, Diagnostics> {
    let schema = schema();
    let source = SourceFile { path, text };
    let checked = structure::check(source, &schema)?;
    let locator = checked.locator;
    let mut problems = checked.problems;
    // Drop what the structural check objected to; if what remains still makes a master file,
    // check its meaning too, so one run reports as much as possible.
    let master = match repaired(text, &checked.offending) {
        Some(master) => master,
        None if !problems.is_empty() => return Err(problems),
        None => {
            let e = toml::from_str::<MasterFile>(text).expect_err("repair failed on a clean file");
            let span = e.span().unwrap_or(0..0);
            let message = e.message().to_string();
            return Err(Diagnostics(vec![
                locator.file().error(span, "", message, None),
            ]));
        }
    };
    let master_dir = path.parent().unwrap_or(Path::new("."));
    let master_dir = if master_dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        master_dir
    };
    let secrets_path = master_dir.join(&master.secrets.file);
    let secrets = if uses_secrets(&master) {
        secrets_source(&secrets_path)
    } else {
        SecretsSource::Loaded(Secrets::default())
    };
    let master_dir = std::path::absolute(master_dir).unwrap_or_else(|_| master_dir.to_path_buf());
    match Expander::new(&locator, secrets, &secrets_path).expand(&master, &master_dir) {
        Ok(plan) if problems.is_empty() => Ok(plan),
        Ok(_) => Err(problems),
        Err(more) => {
            problems.extend(more);
            Err(problems.finish())
        }
    }
}

/// The master file without the values at `offending`, if that still deserialises.
fn repaired(text: &str, offending: &[Vec<Segment>]) -> Option<MasterFile> {
    let mut document: toml::Value = toml::from_str(text).ok()?;
    for path in offending {
        let (last, parents) = path.split_last()?;
        let mut node = &mut document;
        for segment in parents {
            node = match segment {
                Segment::Key(key) => node.get_mut(key.as_str())?,
                Segment::Index(i) => node.get_mut(*i)?,
            };
        }
        match (last, node) {
            (Segment::Key(key), toml::Value::Table(table)) => {
                table.remove(key);
            }
            // Removing from a list would shift the indexes of the paths after it.
            _ => return None,
        }
    }
    document.try_into().ok()
}

fn uses_secrets(master: &MasterFile) -> bool {
    master.rooms.iter().any(|r| r.stream_key.is_some())
}
