//! File trees that go into images: overlays read from `overlays/`, with `*.j2` files rendered, hashed for
//! layer keys and packed as deterministic newc cpio archives (the format the kernel unpacks as an initrd and
//! GNU cpio extracts inside mmdebstrap hooks).

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, Result, bail};
use lectern_store::Digest;
use serde_json::Value;

/// An entry's content; paths are relative, `/`-separated, without `.` or `..` components.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    Dir { mode: u32 },
    File { mode: u32, content: Vec<u8> },
    Symlink { target: String },
}

/// Directories whose mode is not 0755 on Debian. An archive unpacked over an existing root must carry each
/// parent directory's real mode: the kernel and cpio apply it to directories that already exist.
const PRIVATE_DIRS: &[&str] = &["root", "root/.ssh"];

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tree {
    entries: BTreeMap<String, Entry>,
}

impl Tree {
    /// Reads `dir` (absent = empty tree). Files ending in `.j2` are rendered against `context` and lose the
    /// suffix; one that renders to nothing but whitespace is left out. Without a context, a template is an
    /// error (the layer being built must not depend on the plan).
    pub fn load(dir: &Path, context: Option<&Value>) -> Result<Self> {
        let mut tree = Self::default();
        if dir.exists() {
            tree.load_dir(dir, "", context)?;
        }
        Ok(tree)
    }

    fn load_dir(&mut self, dir: &Path, prefix: &str, context: Option<&Value>) -> Result<()> {
        let mut children: Vec<_> = fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .collect::<Result<_, _>>()?;
        children.sort_by_key(|child| child.file_name());
        for child in children {
            let path = child.path();
            let name = child
                .file_name()
                .into_string()
                .map_err(|name| anyhow::anyhow!("non-UTF-8 name {name:?}"))?;
            let rel = format!("{prefix}{name}");
            let meta = fs::symlink_metadata(&path)?;
            if meta.is_dir() {
                self.add_dir(&rel);
                self.load_dir(&path, &format!("{rel}/"), context)?;
            } else if meta.is_symlink() {
                let target = fs::read_link(&path)?.to_string_lossy().into_owned();
                self.insert(&rel, Entry::Symlink { target });
            } else {
                // Git keeps only the executable bit, so normalise to 0755/0644.
                let mode = if meta.permissions().mode() & 0o111 != 0 {
                    0o755
                } else {
                    0o644
                };
                let raw = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
                match rel.strip_suffix(".j2") {
                    Some(rendered) => {
                        let Some(context) = context else {
                            bail!(
                                "{} is a template, but this layer is built without a render context",
                                path.display()
                            )
                        };
                        let content =
                            crate::render::render(&path.display().to_string(), &raw, context)?;
                        // Lets a template wrap itself in `{% if %}`: files some hosts need and others not.
                        if content.trim().is_empty() {
                            continue;
                        }
                        self.insert(
                            rendered,
                            Entry::File {
                                mode,
                                content: content.into_bytes(),
                            },
                        );
                    }
                    None => self.insert(&rel, Entry::File { mode, content: raw }),
                }
            }
        }
        Ok(())
    }

    /// Adds (or replaces) an entry, creating parent directories as needed.
    pub fn insert(&mut self, path: &str, entry: Entry) {
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.add_dir(parent);
        }
        self.entries.insert(path.to_owned(), entry);
    }

    fn add_dir(&mut self, path: &str) {
        let mut end = 0;
        for component in path.split('/') {
            end += component.len();
            let dir = &path[..end];
            let mode = if PRIVATE_DIRS.contains(&dir) {
                0o700
            } else {
                0o755
            };
            self.entries
                .entry(dir.to_owned())
                .or_insert(Entry::Dir { mode });
            end += 1;
        }
    }

    /// Overlays `other` on top of `self` (later trees win on conflicts).
    pub fn merge(&mut self, other: Tree) {
        self.entries.extend(other.entries);
    }

    /// Restricts a file to its owner (for per-host secrets). False if there is no such file (a template
    /// that rendered empty for this host is left out).
    pub fn make_private(&mut self, path: &str) -> Result<bool> {
        match self.entries.get_mut(path) {
            Some(Entry::File { mode, .. }) => {
                *mode = 0o600;
                Ok(true)
            }
            Some(_) => bail!("{path} is listed as private but it is not a file"),
            None => Ok(false),
        }
    }

    /// Moves the files only their owner may read (the host's secrets, see [`Tree::make_private`]) into a
    /// tree of their own, with their directories.
    pub fn take_private(&mut self) -> Tree {
        let private: Vec<String> = (self.entries.iter())
            .filter(|(_, entry)| matches!(entry, Entry::File { mode, .. } if mode & 0o077 == 0))
            .map(|(path, _)| path.clone())
            .collect();
        let mut taken = Tree::default();
        for path in private {
            let entry = self.entries.remove(&path).expect("listed above");
            taken.insert(&path, entry);
        }
        taken
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The paths of its files and symlinks, in order.
    pub fn file_paths(&self) -> impl Iterator<Item = &str> {
        (self.entries.iter())
            .filter(|(_, entry)| !matches!(entry, Entry::Dir { .. }))
            .map(|(path, _)| path.as_str())
    }

    pub fn get(&self, path: &str) -> Option<&Entry> {
        self.entries.get(path)
    }

    /// Content hash over paths, kinds, modes and bytes: equal trees, equal digests.
    pub fn digest(&self) -> Digest {
        Digest::of_bytes(&self.to_cpio("", 0))
    }

    /// A newc cpio archive of the tree with every path under `prefix` (e.g. `lectern-host/`, or `` for none),
    /// owned by root, with all times set to `mtime`. Never contains `.`.
    pub fn to_cpio(&self, prefix: &str, mtime: u64) -> Vec<u8> {
        let mut archive = Vec::new();
        let mut inode = 0;
        let mut write = |name: &str, mode: u32, data: &[u8]| {
            inode += 1;
            let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
            let header = format!(
                "070701{inode:08x}{mode:08x}{:08x}{:08x}{nlink:08x}{mtime:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
                0,
                0,
                data.len(),
                0,
                0,
                0,
                0,
                name.len() + 1,
                0
            );
            archive.extend_from_slice(header.as_bytes());
            archive.extend_from_slice(name.as_bytes());
            archive.push(0);
            pad4(&mut archive);
            archive.extend_from_slice(data);
            pad4(&mut archive);
        };
        if let Some(top) = prefix.strip_suffix('/') {
            write(top, 0o040755, &[]);
        }
        for (path, entry) in &self.entries {
            let name = format!("{prefix}{path}");
            match entry {
                Entry::Dir { mode } => write(&name, 0o040000 | mode, &[]),
                Entry::File { mode, content } => write(&name, 0o100000 | mode, content),
                Entry::Symlink { target } => write(&name, 0o120777, target.as_bytes()),
            }
        }
        write("TRAILER!!!", 0, &[]);
        archive
    }
}

fn pad4(buffer: &mut Vec<u8>) {
    buffer.resize(buffer.len().next_multiple_of(4), 0);
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    fn write(root: &Path, rel: &str, content: &str) {
        let path = root.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
    }

    #[test]
    fn renders_templates_and_keeps_plain_files() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "etc/hostname.j2", "{{ host.hostname }}\n");
        write(dir.path(), "etc/static.conf", "{{ not rendered }}");
        let context = serde_json::json!({ "host": { "hostname": "lameere-mixer" } });
        let tree = Tree::load(dir.path(), Some(&context)).unwrap();
        assert_eq!(tree.get("etc"), Some(&Entry::Dir { mode: 0o755 }));
        assert_eq!(tree.get("etc/hostname.j2"), None);
        assert_eq!(
            tree.get("etc/hostname"),
            Some(&Entry::File {
                mode: 0o644,
                content: b"lameere-mixer\n".to_vec()
            })
        );
        assert!(
            matches!(tree.get("etc/static.conf"), Some(Entry::File { content, .. }) if content.starts_with(b"{{"))
        );
    }

    #[test]
    fn empty_renders_are_left_out() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "etc/disk.mount.j2",
            "{% if host.disk is defined %}What={{ host.disk }}{% endif %}\n",
        );
        let without = Tree::load(dir.path(), Some(&serde_json::json!({ "host": {} }))).unwrap();
        assert_eq!(without.get("etc/disk.mount"), None);
        let with = Tree::load(
            dir.path(),
            Some(&serde_json::json!({ "host": { "disk": "/dev/sdb" } })),
        )
        .unwrap();
        assert!(with.get("etc/disk.mount").is_some());
    }

    #[test]
    fn templates_need_a_context() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "etc/x.j2", "{{ role }}");
        assert!(Tree::load(dir.path(), None).is_err());
    }

    #[test]
    fn private_dirs_keep_their_modes_and_digest_tracks_content() {
        let mut tree = Tree::default();
        tree.insert(
            "root/.ssh/authorized_keys",
            Entry::File {
                mode: 0o644,
                content: b"k1".to_vec(),
            },
        );
        assert_eq!(tree.get("root"), Some(&Entry::Dir { mode: 0o700 }));
        assert_eq!(tree.get("root/.ssh"), Some(&Entry::Dir { mode: 0o700 }));
        let before = tree.digest();
        tree.make_private("root/.ssh/authorized_keys").unwrap();
        assert_ne!(tree.digest(), before, "mode changes the digest");
        assert!(!tree.make_private("etc/nothing").unwrap());
    }

    #[test]
    fn cpio_extracts_with_gnu_cpio() {
        if Command::new("cpio").arg("--version").output().is_err() {
            eprintln!("skipping: cpio is not installed (apt-get install cpio)");
            return;
        }
        let mut tree = Tree::default();
        tree.insert(
            "etc/lectern/env",
            Entry::File {
                mode: 0o600,
                content: b"A=1\n".to_vec(),
            },
        );
        tree.insert(
            "usr/bin/tool",
            Entry::Symlink {
                target: "../lib/tool".to_owned(),
            },
        );
        let archive = tree.to_cpio("lectern-host/", 1_700_000_000);
        assert_eq!(
            archive,
            tree.to_cpio("lectern-host/", 1_700_000_000),
            "deterministic"
        );
        let out = tempfile::tempdir().unwrap();
        let archive_path = out.path().join("a.cpio");
        fs::write(&archive_path, &archive).unwrap();
        let listing = Command::new("cpio")
            .args(["-itv", "-F"])
            .arg(&archive_path)
            .output()
            .unwrap();
        let listing = String::from_utf8(listing.stdout).unwrap();
        assert!(
            !listing.lines().any(|line| line.ends_with(" .")),
            "{listing}"
        );
        let extract = Command::new("cpio")
            .args(["--quiet", "-idm", "-D"])
            .arg(out.path())
            .arg("-F")
            .arg(&archive_path)
            .status()
            .unwrap();
        assert!(extract.success());
        let env = out.path().join("lectern-host/etc/lectern/env");
        assert_eq!(fs::read(&env).unwrap(), b"A=1\n");
        assert_eq!(
            fs::metadata(&env).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let link = fs::read_link(out.path().join("lectern-host/usr/bin/tool")).unwrap();
        assert_eq!(link, Path::new("../lib/tool"));
    }
}
