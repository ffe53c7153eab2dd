//! Secrets: referenced from the master file as `secret:<table>.<key>`, resolved from the
//! secrets file, and shown as `***` everywhere unless a caller explicitly reveals them (only
//! the per-host layer renderer does).

use std::cell::{Cell, RefCell};
use std::fmt;
use std::path::Path;

use serde::{Serialize, Serializer};

use crate::diagnostics::{Diagnostic, Diagnostics, SourceFile};
use crate::model::SecretsFile;
use crate::structure::Locator;

pub const REDACTED: &str = "***";
const PREFIX: &str = "secret:";

thread_local! {
    static REVEALING: Cell<bool> = const { Cell::new(false) };
    /// While [`secret_values_in`] runs: the secret values serialised so far.
    static COLLECTED: RefCell<Option<Vec<String>>> = const { RefCell::new(None) };
}

/// Every secret value (a stream key, a passphrase: what a `Secret` was made of, not the URL around it)
/// somewhere in `value`, deduplicated, longest first: what a host's logs must never show.
pub fn secret_values_in<T: Serialize>(value: &T) -> Vec<String> {
    COLLECTED.with(|c| c.replace(Some(Vec::new())));
    // Serialising walks every field; each Secret adds its parts (see `Serialize for Secret`).
    let _ = serde_json::to_value(value);
    let mut values = COLLECTED.with(|c| c.take()).unwrap_or_default();
    values.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    values.dedup();
    values
}

/// Runs `f` with secrets serialising as their real values. Use only to render files that go
/// to a single host (the per-host layer); never for anything shared, logged or printed.
pub fn with_secrets_revealed<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            REVEALING.with(|r| r.set(self.0));
        }
    }
    let _restore = Restore(REVEALING.with(|r| r.replace(true)));
    f()
}

/// A value that contains secret material. `Display`, `Debug` and `Serialize` show the
/// redacted form, e.g. `rtmp://backend/stream/lameere?key=***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    value: String,
    redacted: String,
    /// The secret values inside `value` (a key filled into a URL): empty for a public value.
    parts: Vec<String>,
    /// Stands for a value nobody read (see [`Secret::unread`]).
    unread: bool,
}

impl Secret {
    /// A bare secret value, redacted as `***`.
    pub fn new(value: impl Into<String>) -> Self {
        let value = value.into();
        Secret {
            parts: vec![value.clone()]
                .into_iter()
                .filter(|v| !v.is_empty())
                .collect(),
            value,
            redacted: REDACTED.into(),
            unread: false,
        }
    }

    /// A secret whose value was not read: what a reader that only checks the master file gets
    /// (netbootd, which needs no secret values). Its value is `***` too.
    pub fn unread() -> Self {
        Secret {
            value: REDACTED.into(),
            redacted: REDACTED.into(),
            parts: Vec::new(),
            unread: true,
        }
    }

    /// Whether this is (or holds) a secret that was not read: checks of its value do not apply.
    pub fn is_unread(&self) -> bool {
        self.unread
    }

    /// A value with nothing secret in it, for lists that mix both (shown as it is).
    pub fn public(value: impl Into<String>) -> Self {
        let value = value.into();
        Secret {
            redacted: value.clone(),
            value,
            parts: Vec::new(),
            unread: false,
        }
    }

    /// A template like a URL with `{key}` in it, filled with `secret` (redacted as `***`).
    pub fn fill(template: &str, placeholder: &str, secret: &Secret) -> Self {
        Secret {
            value: template.replace(placeholder, &secret.value),
            redacted: template.replace(placeholder, REDACTED),
            parts: secret.parts.clone(),
            unread: secret.unread,
        }
    }

    /// The real value. Call sites are the places secrets can leak from: keep them few.
    pub fn expose(&self) -> &str {
        &self.value
    }

    pub fn redacted(&self) -> &str {
        &self.redacted
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({:?})", self.redacted)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        COLLECTED.with(|c| {
            if let Some(values) = c.borrow_mut().as_mut() {
                values.extend(self.parts.iter().cloned());
            }
        });
        serializer.serialize_str(self.shown())
    }
}

/// The name a `secret:<table>.<key>` reference points to, or a problem: a master file never holds
/// a secret itself.
pub(crate) fn reference_name<'r>(
    reference: &'r str,
    path: &str,
    locator: &Locator,
    secrets_file: &Path,
    problems: &mut Diagnostics,
) -> Option<&'r str> {
    let Some(name) = reference.strip_prefix(PREFIX) else {
        // Not quoting the line: it holds the secret.
        let diagnostic = locator.error(
            path,
            "secrets may not be written in the master file",
            Some(format!(
                "move the value into {} and write a reference here, like \"secret:stream_keys.<room>\"",
                secrets_file.display()
            )),
        );
        problems.push(diagnostic.without_snippet());
        return None;
    };
    Some(name)
}

/// The secrets file, loaded and checked.
#[derive(Default)]
pub struct Secrets {
    table: SecretsFile,
}

impl Secrets {
    /// Loads the secrets file, refusing one that group or others can read.
    pub fn load(path: &Path) -> Result<Secrets, Diagnostics> {
        let refuse = |message: String, help: Option<String>| {
            Diagnostics(vec![Diagnostic::file_level(path, message, help)])
        };
        let metadata = std::fs::metadata(path).map_err(|e| {
            refuse(
                format!("cannot read the secrets file: {e}"),
                Some(
                    "create it (see examples/secrets.toml.example) and chmod 600 it, or set [secrets] file in the master file"
                        .into(),
                ),
            )
        })?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = metadata.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(refuse(
                    format!(
                        "the secrets file is readable by group or others (mode {mode:04o}); refusing to use it"
                    ),
                    Some(format!("run: chmod 600 {}", path.display())),
                ));
            }
        }
        let text =
            crate::input::read_bounded(path, "secrets file", crate::input::SECRETS_FILE_LIMIT)
                .map_err(|e| refuse(e, None))?;
        let table: SecretsFile = toml::from_str(&text).map_err(|e| {
            let source = SourceFile { path, text: &text };
            let span = e.span().unwrap_or(0..0);
            // The parser's message and the line may hold a secret: say where, and which key, only.
            let line_start = text[..span.start.min(text.len())]
                .rfind('\n')
                .map_or(0, |i| i + 1);
            let key = text[line_start..]
                .split(['=', '\n'])
                .next()
                .map(str::trim)
                .filter(|key| {
                    !key.is_empty()
                        && key.len() <= 64
                        && key
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || "_-.\"".contains(c))
                        && text[line_start..]
                            .split('\n')
                            .next()
                            .is_some_and(|l| l.contains('='))
                });
            let message = match key {
                Some(key) => format!(
                    "this is not a valid secrets file (TOML tables of strings): at key {key}"
                ),
                None => "this is not a valid secrets file (TOML tables of strings)".to_owned(),
            };
            Diagnostics(vec![
                source
                    .error(span.start..span.start, "", message, None)
                    .without_snippet(),
            ])
        })?;
        Ok(Secrets { table })
    }

    /// Resolves `reference` (`secret:table.key`) found at `path` of the master file.
    pub fn resolve(
        &self,
        reference: &str,
        path: &str,
        locator: &Locator,
        secrets_file: &Path,
        problems: &mut Diagnostics,
    ) -> Option<Secret> {
        let name = reference_name(reference, path, locator, secrets_file, problems)?;
        let mut parts = name.split('.');
        let mut node = parts.next().and_then(|first| self.table.get(first));
        for part in parts {
            node = node.and_then(|n| n.get(part));
        }
        match node.and_then(toml::Value::as_str) {
            Some(value) => Some(Secret::new(value)),
            None => {
                let (table, key) = name.rsplit_once('.').unwrap_or(("", name));
                let help = if table.is_empty() {
                    format!("add `{key} = \"…\"` to {}", secrets_file.display())
                } else {
                    format!(
                        "add `{key} = \"…\"` under `[{table}]` in {}",
                        secrets_file.display()
                    )
                };
                problems.push(locator.error(
                    path,
                    format!("`{reference}` is not a string in the secrets file"),
                    Some(help),
                ));
                None
            }
        }
    }
}

impl Secret {
    fn shown(&self) -> &str {
        if REVEALING.with(Cell::get) {
            &self.value
        } else {
            &self.redacted
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_values_inside_a_value_are_found_wherever_they_sit() {
        let key = Secret::new("k3y-0123");
        let url = Secret::fill("rtmp://backend/stream/r?key={key}", "{key}", &key);
        let passphrase = Secret::new("a-longer-passphrase");
        let value = (
            vec![Secret::public("-i"), url.clone()],
            Some(Secret::fill(
                "srt://e:9000?passphrase={p}",
                "{p}",
                &passphrase,
            )),
            url,
            Secret::new(""),
        );
        assert_eq!(
            secret_values_in(&value),
            ["a-longer-passphrase", "k3y-0123"]
        );
        // Outside the collector, serialising collects nothing and shows no secret.
        assert!(!serde_json::to_string(&value).unwrap().contains("k3y"));
        assert!(secret_values_in(&Secret::public("nothing secret")).is_empty());
    }
}
