//! What the mirror offers now, asked of apt itself (apt-get update and apt-cache policy in a scratch
//! apt directory of its own, with the host's trusted keys, as mmdebstrap does): whether a locked
//! version can still be installed, and which version a fresh resolution would pick.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::lock::Packages;

/// The versions of some packages that the sources offer.
#[derive(Debug, Default)]
pub struct Index {
    packages: BTreeMap<String, Offer>,
}

#[derive(Debug, Default, PartialEq, Eq)]
struct Offer {
    /// What apt would install now.
    candidate: Option<String>,
    /// Every version the sources have.
    versions: Vec<String>,
}

/// A locked version that the mirror no longer has ([`Index::missing`]), or no longer installs
/// ([`Index::moved`]).
#[derive(Debug, PartialEq, Eq)]
pub struct Stale {
    pub package: String,
    pub locked: String,
    /// What the mirror would install instead, if anything.
    pub candidate: Option<String>,
}

/// A scratch apt directory holding the package lists of some sources.
pub struct AptLists {
    sources: Vec<String>,
    _dir: tempfile::TempDir,
    config: PathBuf,
}

impl AptLists {
    /// Fetches the package lists of `sources` (sources.list lines) into a scratch directory under
    /// `scratch_in`.
    pub fn fetch(sources: &[String], scratch_in: &Path) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("apt-lists-")
            .tempdir_in(scratch_in)
            .with_context(|| format!("creating a scratch directory in {}", scratch_in.display()))?;
        let root = dir.path();
        for sub in [
            "etc/apt/apt.conf.d",
            "etc/apt/preferences.d",
            "etc/apt/sources.list.d",
            "var/lib/apt/lists/partial",
            "var/cache/apt/archives/partial",
            "var/lib/dpkg",
        ] {
            std::fs::create_dir_all(root.join(sub))?;
        }
        std::fs::write(root.join("var/lib/dpkg/status"), "")?;
        std::fs::write(
            root.join("etc/apt/sources.list"),
            sources
                .iter()
                .map(|line| format!("{line}\n"))
                .collect::<String>(),
        )?;
        let config = root.join("apt.conf");
        std::fs::write(&config, apt_config(root, &native_architecture()?))?;
        let output = Command::new("apt-get")
            .env("APT_CONFIG", &config)
            .args(["--quiet", "update"])
            .output()
            .context("running apt-get update (apt-get install apt)")?;
        let said = String::from_utf8_lossy(&output.stderr);
        // apt-get update exits 0 when a source failed to download; its "E:" lines say so.
        if !output.status.success() || said.lines().any(|line| line.starts_with("E:")) {
            bail!(
                "reading the package lists of {} failed:\n{said}",
                sources.join(" and ")
            );
        }
        Ok(Self {
            sources: sources.to_vec(),
            _dir: dir,
            config,
        })
    }

    /// The sources whose lists these are.
    pub fn sources(&self) -> &[String] {
        &self.sources
    }

    /// What the sources offer of `names`.
    pub fn index<'n>(&self, names: impl IntoIterator<Item = &'n String>) -> Result<Index> {
        let names: Vec<&String> = names.into_iter().collect();
        if names.is_empty() {
            return Ok(Index::default());
        }
        let output = Command::new("apt-cache")
            .env("APT_CONFIG", &self.config)
            .arg("policy")
            .args(&names)
            .output()
            .context("running apt-cache policy")?;
        if !output.status.success() {
            bail!(
                "apt-cache policy failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(Index::from_policy(&String::from_utf8_lossy(&output.stdout)))
    }
}

impl Index {
    /// Reads `apt-cache policy`'s output: a `name:` line per package, its `Candidate:` and the
    /// versions of its version table (five columns in, or after ` *** ` for the installed one).
    fn from_policy(text: &str) -> Self {
        let mut packages = BTreeMap::new();
        let mut current: Option<(String, Offer)> = None;
        for line in text.lines() {
            if !line.starts_with(' ') {
                if let Some(name) = line.strip_suffix(':') {
                    packages.extend(current.take());
                    current = Some((name.to_owned(), Offer::default()));
                }
                continue;
            }
            let Some((_, offer)) = current.as_mut() else {
                continue;
            };
            if let Some(candidate) = line.trim_start().strip_prefix("Candidate:") {
                let candidate = candidate.trim();
                offer.candidate = (candidate != "(none)").then(|| candidate.to_owned());
            } else if let Some(version) = line
                .strip_prefix(" *** ")
                .or_else(|| line.strip_prefix("     "))
                .filter(|entry| !entry.starts_with(' '))
                .and_then(|entry| entry.split_whitespace().next())
            {
                offer.versions.push(version.to_owned());
            }
        }
        packages.extend(current);
        Self { packages }
    }

    fn offer(&self, package: &str) -> Option<&Offer> {
        self.packages.get(package)
    }

    /// The locked versions of `locked` the sources do not have.
    pub fn missing(&self, locked: &Packages) -> Vec<Stale> {
        locked
            .iter()
            .filter(|(package, version)| {
                !self
                    .offer(package)
                    .is_some_and(|offer| offer.versions.contains(version))
            })
            .map(|(package, version)| Stale {
                package: package.clone(),
                locked: version.clone(),
                candidate: self.offer(package).and_then(|o| o.candidate.clone()),
            })
            .collect()
    }

    /// The packages of `locked` whose version apt would pick now is another one.
    pub fn moved(&self, locked: &Packages) -> Vec<Stale> {
        locked
            .iter()
            .filter_map(|(package, version)| {
                let candidate = self.offer(package).and_then(|o| o.candidate.clone());
                (candidate.as_ref() != Some(version)).then(|| Stale {
                    package: package.clone(),
                    locked: version.clone(),
                    candidate,
                })
            })
            .collect()
    }
}

/// The error of a build whose lock names versions the mirror no longer has: each of them, what the
/// mirror has instead, and what to run.
pub fn missing_error(lock_file: &Path, layer: &str, missing: &[Stale]) -> String {
    let mut text = format!(
        "the mirror no longer has {} of the versions {} locks for the {layer} layer:\n",
        missing.len(),
        lock_file.display()
    );
    for item in missing {
        let instead = match &item.candidate {
            Some(candidate) => format!("it has {candidate}"),
            None => "it has no version of it".to_owned(),
        };
        let _ = writeln!(text, "  {} {} ({instead})", item.package, item.locked);
    }
    text.push_str(
        "nothing was built and the current images stay as they are; \
         `imgbuild update` locks what the mirror has now and prints what changes",
    );
    text
}

/// `dpkg --print-architecture`: the images are this machine's architecture, as mmdebstrap builds them.
fn native_architecture() -> Result<String> {
    let output = Command::new("dpkg")
        .arg("--print-architecture")
        .output()
        .context("running dpkg --print-architecture")?;
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// apt's configuration for a scratch root: its own lists, an empty dpkg status (nothing installed, so
/// the candidate is what a new layer gets), only the native architecture, the host's trusted keys.
fn apt_config(root: &Path, architecture: &str) -> String {
    let root = root.display();
    format!(
        "Dir \"{root}/\";\n\
         Dir::State::Status \"{root}/var/lib/dpkg/status\";\n\
         Dir::Etc::Trusted \"/etc/apt/trusted.gpg\";\n\
         Dir::Etc::TrustedParts \"/etc/apt/trusted.gpg.d/\";\n\
         APT::Architecture \"{architecture}\";\n\
         APT::Architectures {{ \"{architecture}\"; }};\n\
         Acquire::Languages \"none\";\n\
         APT::Sandbox::User \"root\";\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = "\
libc6:
  Installed: (none)
  Candidate: 2.36-9+deb12u14
  Version table:
     2.36-9+deb12u14 500
        500 http://deb.debian.org/debian bookworm/main amd64 Packages
     2.36-9+deb12u13 100
        100 http://deb.debian.org/debian bookworm-backports/main amd64 Packages
ffmpeg:
  Installed: 7:5.1.6-0+deb12u1
  Candidate: 7:5.1.9-0+deb12u1
  Version table:
     7:5.1.9-0+deb12u1 500
        500 http://deb.debian.org/debian bookworm/main amd64 Packages
 *** 7:5.1.6-0+deb12u1 100
        100 /var/lib/dpkg/status
mail-transport-agent:
  Installed: (none)
  Candidate: (none)
  Version table:
";

    fn locked(list: &[(&str, &str)]) -> Packages {
        list.iter()
            .map(|(name, version)| ((*name).to_owned(), (*version).to_owned()))
            .collect()
    }

    #[test]
    fn reads_candidates_and_every_version_from_apt_cache_policy() {
        let index = Index::from_policy(POLICY);
        assert_eq!(
            index.offer("libc6").unwrap(),
            &Offer {
                candidate: Some("2.36-9+deb12u14".into()),
                versions: vec!["2.36-9+deb12u14".into(), "2.36-9+deb12u13".into()],
            }
        );
        assert_eq!(
            index.offer("ffmpeg").unwrap().versions,
            ["7:5.1.9-0+deb12u1", "7:5.1.6-0+deb12u1"]
        );
        assert_eq!(
            index.offer("mail-transport-agent").unwrap(),
            &Offer::default()
        );
        assert!(index.offer("nosuchpackage").is_none());
    }

    #[test]
    fn missing_and_moved_versions() {
        let index = Index::from_policy(POLICY);
        let lock = locked(&[
            ("libc6", "2.36-9+deb12u13"),
            ("ffmpeg", "7:5.1.5-0+deb12u1"),
            ("gone", "1.0"),
        ]);
        assert_eq!(
            index.missing(&lock),
            [
                Stale {
                    package: "ffmpeg".into(),
                    locked: "7:5.1.5-0+deb12u1".into(),
                    candidate: Some("7:5.1.9-0+deb12u1".into()),
                },
                Stale {
                    package: "gone".into(),
                    locked: "1.0".into(),
                    candidate: None,
                },
            ]
        );
        // Still there, but no longer what apt picks.
        let moved = index.moved(&locked(&[("libc6", "2.36-9+deb12u13")]));
        assert_eq!(moved[0].candidate.as_deref(), Some("2.36-9+deb12u14"));
        assert!(
            index
                .moved(&locked(&[("libc6", "2.36-9+deb12u14")]))
                .is_empty()
        );
    }

    #[test]
    fn the_error_names_each_missing_version_and_the_way_out() {
        let missing = [
            Stale {
                package: "ffmpeg".into(),
                locked: "7:5.1.5-0+deb12u1".into(),
                candidate: Some("7:5.1.9-0+deb12u1".into()),
            },
            Stale {
                package: "gone".into(),
                locked: "1.0".into(),
                candidate: None,
            },
        ];
        assert_eq!(
            missing_error(Path::new("/etc/lectern/master.lock"), "encoder", &missing),
            "the mirror no longer has 2 of the versions /etc/lectern/master.lock locks for the encoder layer:\n\
             \x20 ffmpeg 7:5.1.5-0+deb12u1 (it has 7:5.1.9-0+deb12u1)\n\
             \x20 gone 1.0 (it has no version of it)\n\
             nothing was built and the current images stay as they are; \
             `imgbuild update` locks what the mirror has now and prints what changes"
        );
    }
}
