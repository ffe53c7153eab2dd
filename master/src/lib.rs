//! The one model of lectern's master file.
//!
//! [`load`] reads `master.toml` (and the secrets file it references), checks it, and expands it
//! into a [`Plan`]: every host with its role, room, addresses, ports and service settings. Both
//! `imgbuild` and `netbootd` start from the plan; nothing else in lectern parses the master
//! file. Problems come back as [`Diagnostics`] naming file, line, column and field.

pub mod diagnostics;
mod expand;
pub mod model;
pub mod plan;
pub mod reference;
pub mod secrets;
mod structure;

use std::path::Path;

pub use diagnostics::{Diagnostic, Diagnostics};
pub use plan::{Host, MacAddr, Plan, Role, RoleConfig};
pub use secrets::{Secret, with_secrets_revealed};

use diagnostics::SourceFile;
use expand::{Expander, SecretsSource};
use model::MasterFile;
use secrets::Secrets;

/// The JSON Schema of the master file, as served by `imgbuild schema`.
pub fn schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(MasterFile)).expect("a schema is plain JSON")
}

/// Reads, checks and expands the master file at `path`.
pub fn load(path: &Path) -> Result<Plan, Diagnostics> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Diagnostics(vec![Diagnostic::file_level(
            path,
            format!("cannot read the master file: {e}"),
            Some("pass the right file with --config FILE".into()),
        )])
    })?;
    load_from(path, &text, |secrets_path| Secrets::load(secrets_path))
}

/// Checks and expands master-file `text` (named `path` in messages), with the secrets file
/// loaded by `load_secrets` from the path the master file gives.
pub fn load_from(
    path: &Path,
    text: &str,
    load_secrets: impl FnOnce(&Path) -> Result<Secrets, Diagnostics>,
) -> Result<Plan, Diagnostics> {
    let schema = schema();
    let source = SourceFile { path, text };
    let (locator, problems) = structure::check(source, &schema)?;
    if !problems.is_empty() {
        return Err(problems);
    }
    let master: MasterFile = toml::from_str(text).map_err(|e| {
        // The structural check should have caught anything serde rejects; report it anyway.
        let span = e.span().unwrap_or(0..0);
        Diagnostics(vec![locator.file().error(
            span,
            "",
            e.message().to_string(),
            None,
        )])
    })?;
    let master_dir = path.parent().unwrap_or(Path::new("."));
    let master_dir = if master_dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        master_dir
    };
    let secrets_path = master_dir.join(&master.secrets.file);
    let secrets = if uses_secrets(&master) {
        match load_secrets(&secrets_path) {
            Ok(secrets) => SecretsSource::Loaded(secrets),
            Err(problems) => SecretsSource::Failed(problems),
        }
    } else {
        SecretsSource::Loaded(Secrets::default())
    };
    let master_dir = std::path::absolute(master_dir).unwrap_or_else(|_| master_dir.to_path_buf());
    Expander::new(&locator, secrets, &secrets_path).expand(&master, &master_dir)
}

fn uses_secrets(master: &MasterFile) -> bool {
    master.rooms.iter().any(|r| r.stream_key.is_some())
}
