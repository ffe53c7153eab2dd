//! `recipes/*.toml`: imgbuild's own input format. `base.toml` describes the Debian base; every other file is
//! a role that extends it with packages and systemd units. Overlays are found by convention under
//! `overlays/<recipe>/`:
//!
//! - `image/`  static files put into the base before its packages install (base only; no templates): what
//!   the kernel's initrd must contain, since it is built while the packages install
//! - `config/` role-wide files, rendered per role into the root image (base's apply to every role); cheap
//!   to change: only the root image is rebuilt
//! - `host/`   per-host files, rendered per host into the per-host layer (base's apply to every host)

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use lectern_store::Digest;
use serde::Deserialize;
use serde_json::Value;

use crate::tree::{Entry, Tree};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecipeFile {
    description: String,
    extends: Option<String>,
    #[serde(default)]
    debian: Option<Debian>,
    #[serde(default)]
    packages: Vec<String>,
    /// Units to enable (`systemctl enable`) in the root image, e.g. the role's services; their files come
    /// from packages or the config overlays.
    #[serde(default)]
    units: Vec<String>,
    /// Files of the per-host layer that hold secrets: mode 0600.
    #[serde(default)]
    host_private: Vec<String>,
    /// Which units read which files of the per-host layer: globs over the host overlays' files
    /// (`*` and `?` within one path component), each to the units a running host restarts when
    /// that file changes in a live update (`[]`: read afresh at each use).
    #[serde(default)]
    host_file_units: BTreeMap<String, Vec<String>>,
    /// More apt sources for this recipe's layer (sources.list lines).
    #[serde(default)]
    apt_sources: Vec<String>,
}

/// Where the base comes from (base recipe only).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Debian {
    pub suite: String,
    pub mirror: String,
    /// mmdebstrap `--variant`.
    pub variant: String,
}

#[derive(Clone, Debug)]
pub struct Recipe {
    pub name: String,
    pub description: String,
    pub packages: Vec<String>,
    pub units: Vec<String>,
    pub host_private: Vec<String>,
    pub host_file_units: BTreeMap<String, Vec<String>>,
    /// apt sources besides the Debian mirror, as sources.list lines (e.g. a team's own repository):
    /// the layer installs from them too, and keeps them in its `/etc/apt/sources.list`. A role
    /// layer has the base's as well.
    pub apt_sources: Vec<String>,
    /// sha256 of the recipe file: part of the layer keys.
    pub digest: Digest,
}

/// All recipes: the base and the roles extending it.
#[derive(Clone, Debug)]
pub struct Recipes {
    pub base: Recipe,
    pub debian: Debian,
    pub roles: BTreeMap<String, Recipe>,
    pub overlays_dir: PathBuf,
}

pub const BASE: &str = "base";

/// The list of a host layer's own files, which imgbuild adds to it: a live update removes the
/// files the previous layer had and the new one has not.
pub const LAYER_FILES: &str = "etc/lectern/layer-files";

/// Where a root image says which units read which files of the host layer (the recipes'
/// `host_file_units`, expanded): what a live update of the layer restarts.
pub const HOST_FILE_UNITS: &str = "usr/lib/lectern/host-file-units";

/// The overlay trees a recipe may have (see the module docs).
#[derive(Clone, Copy, Debug)]
pub enum OverlayKind {
    Image,
    Config,
    Host,
}

impl Recipes {
    pub fn load(recipes_dir: &Path, overlays_dir: &Path) -> Result<Self> {
        let mut base = None;
        let mut roles = BTreeMap::new();
        let mut paths: Vec<PathBuf> = fs::read_dir(recipes_dir)
            .with_context(|| format!("reading recipes from {}", recipes_dir.display()))?
            .map(|entry| entry.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        paths.retain(|path| path.extension().is_some_and(|ext| ext == "toml"));
        paths.sort();
        for path in paths {
            let name = path
                .file_stem()
                .and_then(|s| s.to_str())
                .context("recipe file name is not UTF-8")?
                .to_owned();
            let raw = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            let file: RecipeFile =
                toml::from_slice(&raw).with_context(|| format!("parsing {}", path.display()))?;
            let recipe = Recipe {
                name: name.clone(),
                description: file.description,
                packages: file.packages,
                units: file.units,
                host_private: file.host_private,
                host_file_units: file.host_file_units,
                apt_sources: file.apt_sources,
                digest: Digest::of_bytes(&raw),
            };
            match (name.as_str(), file.extends.as_deref(), file.debian) {
                (BASE, None, Some(debian)) => base = Some((recipe, debian)),
                (BASE, ..) => bail!(
                    "{}: the base recipe needs a [debian] table and extends nothing",
                    path.display()
                ),
                (_, Some(BASE), None) => {
                    roles.insert(name, recipe);
                }
                _ => bail!(
                    "{}: a role recipe must say `extends = \"base\"` and has no [debian] table",
                    path.display()
                ),
            }
        }
        let (base, debian) =
            base.with_context(|| format!("no base.toml in {}", recipes_dir.display()))?;
        let recipes = Self {
            base,
            debian,
            roles,
            overlays_dir: overlays_dir.to_owned(),
        };
        // A typo in a glob would leave a file unread until the next boot: refused here, for
        // `imgbuild check` and every build alike.
        for role in recipes.names() {
            recipes.host_file_units(role)?;
        }
        Ok(recipes)
    }

    /// The recipe for `role`; `base` is itself a bootable role with no additions.
    pub fn role(&self, role: &str) -> Result<&Recipe> {
        if role == BASE {
            return Ok(&self.base);
        }
        self.roles.get(role).with_context(|| {
            let known: Vec<&str> = self.names().collect();
            format!("no recipe for role {role:?} (known: {})", known.join(", "))
        })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        std::iter::once(BASE).chain(self.roles.keys().map(String::as_str))
    }

    pub fn overlay_dir(&self, recipe: &str, kind: OverlayKind) -> PathBuf {
        let sub = match kind {
            OverlayKind::Image => "image",
            OverlayKind::Config => "config",
            OverlayKind::Host => "host",
        };
        self.overlays_dir.join(recipe).join(sub)
    }

    /// The apt sources `layer` (`base` or a role) installs from, as sources.list lines: the Debian
    /// mirror's suite (as mmdebstrap writes it) first, then the base recipe's `apt_sources`, then the
    /// role's.
    pub fn apt_sources(&self, layer: &str) -> Result<Vec<String>> {
        let mut sources = vec![format!(
            "deb {} {} main",
            self.debian.mirror, self.debian.suite
        )];
        for name in self.chain(layer) {
            sources.extend(self.role(name)?.apt_sources.iter().cloned());
        }
        Ok(sources)
    }

    /// The recipes whose overlays apply to `role`, base first.
    pub fn chain<'a>(&'a self, role: &'a str) -> Vec<&'a str> {
        if role == BASE {
            vec![BASE]
        } else {
            vec![BASE, role]
        }
    }
}

impl Recipes {
    /// The units enabled in `role`'s root image: base's, then the role's own.
    pub fn units(&self, role: &str) -> Result<Vec<String>> {
        let mut units = Vec::new();
        for name in self.chain(role) {
            units.extend(self.role(name)?.units.iter().cloned());
        }
        Ok(units)
    }

    /// Every file a host layer of `role` may hold: its recipes' host overlay files (templates by
    /// the names they render to) and [`LAYER_FILES`].
    fn host_paths(&self, role: &str) -> Result<BTreeSet<String>> {
        fn walk(dir: &Path, prefix: &str, paths: &mut BTreeSet<String>) -> Result<()> {
            for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
                let entry = entry?;
                let name = entry.file_name().to_string_lossy().into_owned();
                let path = format!("{prefix}{name}");
                if entry.file_type()?.is_dir() {
                    walk(&entry.path(), &format!("{path}/"), paths)?;
                } else {
                    paths.insert(path.strip_suffix(".j2").unwrap_or(&path).to_owned());
                }
            }
            Ok(())
        }
        let mut paths = BTreeSet::from([LAYER_FILES.to_owned()]);
        for name in self.chain(role) {
            let overlay = self.overlay_dir(name, OverlayKind::Host);
            if overlay.is_dir() {
                walk(&overlay, "", &mut paths)?;
            }
        }
        Ok(paths)
    }

    /// The units a running host of `role` restarts when each file of its layer changes: the
    /// `host_file_units` of its recipes, merged, each glob expanded to the host files it names.
    /// A glob that names no file, or a unit that is not a unit name, is an error naming its recipe.
    pub fn host_file_units(&self, role: &str) -> Result<BTreeMap<String, BTreeSet<String>>> {
        let paths = self.host_paths(role)?;
        let mut units: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for name in self.chain(role) {
            for (glob, readers) in &self.role(name)?.host_file_units {
                let context = || format!("recipes/{name}.toml: host_file_units {glob:?}");
                if let Some(bad) = readers.iter().find(|unit| !is_unit_name(unit)) {
                    bail!("{}: {bad:?} is not a systemd unit name", context());
                }
                let named: Vec<&String> = paths
                    .iter()
                    .filter(|path| glob_matches(glob, path))
                    .collect();
                if named.is_empty() {
                    bail!(
                        "{}: names no file of the host overlays of {}",
                        context(),
                        self.chain(role).join(" and ")
                    );
                }
                for path in named {
                    units
                        .entry(path.clone())
                        .or_default()
                        .extend(readers.iter().cloned());
                }
            }
        }
        Ok(units)
    }

    /// [`HOST_FILE_UNITS`] for `role`: one line per file, its path then the units that read it.
    fn host_file_units_file(&self, role: &str) -> Result<String> {
        let mut text = String::from(
            "# Which units read which files of this host's layer (the recipes' host_file_units): a live update\n\
             # restarts the units of the files that changed; a changed file not listed changes at the next boot.\n",
        );
        for (path, units) in self.host_file_units(role)? {
            let line: Vec<&str> = std::iter::once(path.as_str())
                .chain(units.iter().map(String::as_str))
                .collect();
            text.push_str(&line.join(" "));
            text.push('\n');
        }
        Ok(text)
    }

    /// Renders one overlay kind of every recipe in `role`'s chain against `context`, later recipes winning;
    /// for the host kind, the recipes' `host_private` files become 0600 and [`LAYER_FILES`] lists the
    /// files; the config kind gets [`HOST_FILE_UNITS`].
    pub fn render(&self, role: &str, kind: OverlayKind, context: &Value) -> Result<Tree> {
        let chain = self.chain(role);
        let mut tree = Tree::default();
        for name in &chain {
            tree.merge(Tree::load(&self.overlay_dir(name, kind), Some(context))?);
        }
        if matches!(kind, OverlayKind::Config) {
            let content = self.host_file_units_file(role)?.into_bytes();
            tree.insert(
                HOST_FILE_UNITS,
                Entry::File {
                    mode: 0o644,
                    content,
                },
            );
        }
        if matches!(kind, OverlayKind::Host) {
            for name in &chain {
                for path in &self.role(name)?.host_private {
                    let overlay = self.overlay_dir(name, kind);
                    let known = [path.clone(), format!("{path}.j2")]
                        .iter()
                        .any(|file| overlay.join(file).is_file());
                    if !known {
                        bail!(
                            "{path} is listed as private in recipe {name}, but its host overlay has no such file"
                        );
                    }
                    tree.make_private(path)?;
                }
            }
            let mut files: Vec<&str> = tree.file_paths().collect();
            files.push(LAYER_FILES);
            files.sort_unstable();
            let list = format!(
                "# The files of this host's layer, which a live update of it compares with the next one's.\n{}\n",
                files.join("\n")
            );
            tree.insert(
                LAYER_FILES,
                Entry::File {
                    mode: 0o644,
                    content: list.into_bytes(),
                },
            );
        }
        Ok(tree)
    }
}

/// Whether `path` matches `glob`: `*` any run of characters and `?` any one, both within one path
/// component; anything else itself.
fn glob_matches(glob: &str, path: &str) -> bool {
    let mut glob_chars = glob.chars();
    match glob_chars.next() {
        None => path.is_empty(),
        Some('*') => (path.char_indices().map(|(at, _)| at).chain([path.len()]))
            .take_while(|&end| !path[..end].contains('/'))
            .any(|end| glob_matches(glob_chars.as_str(), &path[end..])),
        Some(wanted) => {
            let mut path_chars = path.chars();
            match path_chars.next() {
                Some(c) if c == wanted || (wanted == '?' && c != '/') => {
                    glob_matches(glob_chars.as_str(), path_chars.as_str())
                }
                _ => false,
            }
        }
    }
}

/// A systemd unit name: no spaces (the host's list splits on them), a unit type's suffix.
fn is_unit_name(unit: &str) -> bool {
    let types = [
        ".service", ".socket", ".target", ".mount", ".path", ".timer",
    ];
    let (stem, suffix) = unit.rsplit_once('.').unwrap_or((unit, ""));
    !stem.is_empty()
        && types.contains(&format!(".{suffix}").as_str())
        && stem
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@' | ':' | '\\'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::tests::TEST_ANCHORS;

    fn recipes(files: &[(&str, &str)]) -> Result<Recipes> {
        let dir = tempfile::tempdir().unwrap();
        for (name, body) in files {
            fs::write(dir.path().join(name), body).unwrap();
        }
        Recipes::load(dir.path(), Path::new("overlays"))
    }

    const BASE_TOML: &str = r#"
description = "base"
packages = ["systemd"]
units = ["base.target"]
[debian]
suite = "bookworm"
mirror = "http://deb.debian.org/debian"
variant = "apt"
"#;

    #[test]
    fn loads_base_and_roles() {
        let mixer = "description = \"mixer\"\nextends = \"base\"\npackages = [\"voctomix-core\"]\nunits = [\"x.service\"]\n";
        let all = recipes(&[
            ("base.toml", BASE_TOML),
            ("mixer.toml", mixer),
            ("README", "ignored"),
        ])
        .unwrap();
        assert_eq!(all.debian.suite, "bookworm");
        assert_eq!(all.names().collect::<Vec<_>>(), ["base", "mixer"]);
        assert_eq!(all.role("mixer").unwrap().packages, ["voctomix-core"]);
        assert_eq!(all.chain("mixer"), ["base", "mixer"]);
        assert_eq!(all.units("mixer").unwrap(), ["base.target", "x.service"]);
        assert_eq!(all.units("base").unwrap(), ["base.target"]);
        let err = all.role("encoder").unwrap_err().to_string();
        assert!(err.contains("known: base, mixer"), "{err}");
    }

    #[test]
    fn a_layers_apt_sources_are_the_mirrors_then_the_bases_then_the_roles() {
        let base = BASE_TOML.replace(
            "[debian]",
            "apt_sources = [\"deb http://security.debian.org/debian-security bookworm-security main\"]\n[debian]",
        );
        let team = "description = \"m\"\nextends = \"base\"\napt_sources = [\"deb [trusted=yes] file:/srv/repo ./\"]\n";
        let all = recipes(&[
            ("base.toml", &base),
            ("mixer.toml", team),
            ("source.toml", "description = \"s\"\nextends = \"base\"\n"),
        ])
        .unwrap();
        let mirror = "deb http://deb.debian.org/debian bookworm main";
        let security = "deb http://security.debian.org/debian-security bookworm-security main";
        assert_eq!(all.apt_sources("base").unwrap(), [mirror, security]);
        assert_eq!(all.apt_sources("source").unwrap(), [mirror, security]);
        assert_eq!(
            all.apt_sources("mixer").unwrap(),
            [mirror, security, "deb [trusted=yes] file:/srv/repo ./"]
        );
    }

    #[test]
    fn rejects_malformed_recipes() {
        assert!(
            recipes(&[("mixer.toml", "description = \"m\"\nextends = \"base\"\n")]).is_err(),
            "no base"
        );
        let orphan = "description = \"m\"\n";
        assert!(
            recipes(&[("base.toml", BASE_TOML), ("mixer.toml", orphan)]).is_err(),
            "role without extends"
        );
        let typo = "description = \"m\"\nextends = \"base\"\npackges = []\n";
        assert!(
            recipes(&[("base.toml", BASE_TOML), ("mixer.toml", typo)]).is_err(),
            "unknown field"
        );
    }

    /// The repository's own recipes and overlays.
    fn repo_recipes() -> Recipes {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        Recipes::load(&repo.join("recipes"), &repo.join("overlays")).unwrap()
    }

    /// The fixture master file's plan, with each `(from, to)` edit made to the first occurrence of
    /// `from` and `secrets` added to a copy of its secrets file: a change as a video team makes it.
    fn fixture_plan(edits: &[(&str, &str)], secrets: &str) -> crate::context::Plan {
        use std::os::unix::fs::PermissionsExt;
        let fixture = crate::context::tests::fixture_path();
        let mut text = std::fs::read_to_string(&fixture).unwrap();
        for (from, to) in edits {
            assert!(text.contains(from), "the fixture has no {from:?}");
            text = text.replacen(from, to, 1);
        }
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("secrets.toml");
        let original = fixture.with_file_name("fixture-secrets.toml");
        std::fs::write(&copy, std::fs::read_to_string(original).unwrap() + secrets).unwrap();
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o600)).unwrap();
        let text = text.replacen(
            "file = \"fixture-secrets.toml\"",
            &format!("file = {:?}", copy.display().to_string()),
            1,
        );
        let master = dir.path().join("master.toml");
        std::fs::write(&master, text).unwrap();
        crate::context::Plan::load(&master).unwrap()
    }

    fn fixture() -> crate::context::Plan {
        fixture_plan(&[], "")
    }

    fn host_tree(
        recipes: &Recipes,
        plan: &crate::context::Plan,
        role: &str,
        hostname: &str,
    ) -> Tree {
        let (_, context) = plan
            .host_contexts(role)
            .into_iter()
            .find(|(name, _)| name == hostname)
            .unwrap();
        recipes.render(role, OverlayKind::Host, &context).unwrap()
    }

    fn file_text(tree: &Tree, path: &str) -> String {
        match tree.get(path) {
            Some(crate::tree::Entry::File { content, .. }) => {
                String::from_utf8(content.clone()).unwrap()
            }
            other => panic!("{path}: {other:?}"),
        }
    }

    #[test]
    fn every_role_renders_against_the_fixture() {
        let (recipes, plan) = (repo_recipes(), fixture());
        let roles: Vec<String> = plan
            .roles()
            .into_iter()
            .filter(|role| recipes.role(role).is_ok())
            .collect();
        assert_eq!(roles, ["encoder", "mixer", "source", "streaming-backend"]);
        for role in &roles {
            let config = recipes
                .render(
                    role,
                    OverlayKind::Config,
                    &plan.role_context(role, TEST_ANCHORS),
                )
                .unwrap();
            assert_eq!(file_text(&config, "etc/lectern/role"), format!("{role}\n"));
            for (_, context) in plan.host_contexts(role) {
                recipes.render(role, OverlayKind::Host, &context).unwrap();
            }
        }
    }

    #[test]
    fn host_files_follow_the_plan() {
        let (recipes, plan) = (repo_recipes(), fixture());
        let mixer = host_tree(&recipes, &plan, "mixer", "lameere-mixer");
        let ini = file_text(&mixer, "etc/voctomix/voctocore.ini");
        assert!(ini.contains("\nsources=cam,slides\n"), "{ini}");
        assert!(ini.contains("width=640,height=360,framerate=5/1"), "{ini}");
        assert!(ini.contains("[source.slides]\nkind=tcp"), "{ini}");
        assert!(ini.contains("audiosource=cam\n"), "{ini}");
        let record = file_text(&mixer, "etc/lectern/record.env");
        assert!(
            record.contains("RECORD_DIR=") && record.contains("fosdem"),
            "{record}"
        );
        assert_eq!(file_text(&mixer, "etc/hostname"), "lameere-mixer\n");
        assert!(
            file_text(&mixer, "etc/hosts")
                .contains("10.99.0.129\tlameere-source-2.video.example.org\tlameere-source-2\n")
        );
        let network = file_text(&mixer, "etc/systemd/network/10-lectern-boot.network");
        assert!(
            network.contains("MACAddress=8c:16:45:00:e6:f6\n"),
            "{network}"
        );

        let source = file_text(
            &host_tree(&recipes, &plan, "source", "lameere-source-2"),
            "etc/lectern/ingest.env",
        );
        assert!(
            source.contains("MIXER_PORT=10001\n") && source.contains("CAPTURE_KIND=v4l2\n"),
            "{source}"
        );
        let encoder = host_tree(&recipes, &plan, "encoder", "lameere-enc");
        let args = file_text(&encoder, "etc/lectern/encoder.args");
        assert!(
            args.contains(crate::context::tests::FIXTURE_SECRET),
            "{args}"
        );
        assert!(args.contains("\n-i\ntcp://10.99.0.64:15000\n"), "{args}");
        // One argument per line and no empty one: ffmpeg would take "" for an output.
        assert!(
            args.ends_with("key=lectern-test-secret-7f3a9c\n") && !args.contains("\n\n"),
            "{args:?}"
        );
        assert!(matches!(
            encoder.get("etc/lectern/encoder.args"),
            Some(crate::tree::Entry::File { mode: 0o600, .. })
        ));
    }

    #[test]
    fn recording_disk_gets_a_mount_unit_only_when_planned() {
        let recipes = repo_recipes();
        let mount = "etc/systemd/system/srv-recordings.mount";
        assert!(
            host_tree(&recipes, &fixture(), "mixer", "lameere-mixer")
                .get(mount)
                .is_none()
        );
        let recording = fixture_plan(
            &[(
                "hostname = \"lameere-mixer\"\n",
                "hostname = \"lameere-mixer\"\nrecord_disk = \"/dev/sdb\"\n",
            )],
            "",
        );
        let unit = file_text(
            &host_tree(&recipes, &recording, "mixer", "lameere-mixer"),
            mount,
        );
        assert!(
            unit.contains("What=/dev/sdb\nWhere=/srv/recordings\n"),
            "{unit}"
        );
    }

    #[test]
    fn hosts_keep_time_from_the_lan_in_the_venues_zone() {
        let recipes = repo_recipes();
        let chrony = "etc/chrony/conf.d/lectern.conf";
        let mixer = host_tree(&recipes, &fixture(), "mixer", "lameere-mixer");
        assert!(
            file_text(&mixer, chrony).ends_with(").\nserver 10.99.0.254 iburst\n"),
            "{}",
            file_text(&mixer, chrony)
        );
        assert_eq!(file_text(&mixer, "etc/timezone"), "UTC\n");
        let in_brussels = fixture_plan(
            &[
                (
                    "domain = \"video.example.org\"\n",
                    "domain = \"video.example.org\"\nntp = [\"10.99.0.1\", \"10.99.0.2\"]\n",
                ),
                (
                    "org = \"fosdem\"\n",
                    "org = \"fosdem\"\ntimezone = \"Europe/Brussels\"\n",
                ),
            ],
            "",
        );
        let source = host_tree(&recipes, &in_brussels, "source", "lameere-source-1");
        let servers = file_text(&source, chrony);
        assert!(
            servers.ends_with("\nserver 10.99.0.1 iburst\nserver 10.99.0.2 iburst\n"),
            "{servers}"
        );
        assert_eq!(file_text(&source, "etc/timezone"), "Europe/Brussels\n");
        assert!(
            file_text(&source, "etc/tmpfiles.d/lectern-timezone.conf")
                .ends_with("\nL+ /etc/localtime - - - - /usr/share/zoneinfo/Europe/Brussels\n")
        );
        // Debian's chrony.conf would also poll the internet pool, which a video LAN cannot reach.
        let context = in_brussels.role_context("source", TEST_ANCHORS);
        let config = recipes
            .render("source", OverlayKind::Config, &context)
            .unwrap();
        let main = file_text(&config, "etc/chrony/chrony.conf");
        assert!(
            main.contains("\nconfdir /etc/chrony/conf.d\n") && !main.contains("\npool "),
            "{main}"
        );
    }

    #[test]
    fn capture_delays_reach_the_ingest_env_and_script() {
        let recipes = repo_recipes();
        let env = "etc/lectern/ingest.env";
        let before = file_text(
            &host_tree(&recipes, &fixture(), "source", "lameere-source-2"),
            env,
        );
        assert!(
            before.contains("\nVIDEO_DELAY_MS=0\nAUDIO_DELAY_MS=0\n"),
            "{before}"
        );
        let delayed = fixture_plan(
            &[(
                "capture = { kind = \"v4l2\", device = \"/dev/video0\" }",
                "capture = { kind = \"v4l2\", device = \"/dev/video0\", video_delay_ms = 120, audio_delay_ms = 40 }",
            )],
            "",
        );
        let after = file_text(
            &host_tree(&recipes, &delayed, "source", "lameere-source-2"),
            env,
        );
        assert!(
            after.contains("\nVIDEO_DELAY_MS=120\nAUDIO_DELAY_MS=40\n"),
            "{after}"
        );
        let context = delayed.role_context("source", TEST_ANCHORS);
        let config = recipes
            .render("source", OverlayKind::Config, &context)
            .unwrap();
        let script = file_text(&config, "usr/lib/lectern/ingest");
        assert!(script.contains("--video-delay \"$((${VIDEO_DELAY_MS:-0} * 10))\""));
        // The v4l2 pipeline names its sources as voctomix-ingest's own do, or the delays find nothing.
        assert!(
            script.contains("v4l2src name=videosrc ")
                && script.matches("name=audiosrc ").count() == 2,
            "{script}"
        );
        let check = std::process::Command::new("sh")
            .args(["-n", "-c", &script])
            .status()
            .unwrap();
        assert!(check.success());
    }

    #[test]
    fn contributions_are_listed_only_for_mixers_with_cloud_encoders() {
        let recipes = repo_recipes();
        let list = "etc/lectern/contributions";
        assert!(
            host_tree(&recipes, &fixture(), "mixer", "lameere-mixer")
                .get(list)
                .is_none()
        );
        // The room's encoder moved to the cloud, with the passphrase that must then protect its feed.
        let cloud = fixture_plan(
            &[
                (
                    "where = \"local-vm\"\nhost = \"control\"\n",
                    "where = \"ec2\"\nregion = \"eu-west-1\"\ninstance_type = \"c6i.large\"\ninstance_profile = \"p\"\n",
                ),
                ("vcpus = 1\n", ""),
                ("memory_mb = 1536\n", ""),
                ("mac = \"52:54:00:00:01:01\"\n", ""),
                ("ip = \"10.99.0.70\"\n", ""),
                (
                    "identity = { uuid = \"6c656374-6572-6e00-0000-000000000070\" }\n",
                    "",
                ),
                (
                    "stream_key = \"secret:stream_keys.lameere\"\n",
                    "stream_key = \"secret:stream_keys.lameere\"\ncontribution_passphrase = \"secret:contribution.lameere\"\n",
                ),
            ],
            "\n[contribution]\nlameere = \"p4ss-phrase-0123\"\n",
        );
        let tree = host_tree(&recipes, &cloud, "mixer", "lameere-mixer");
        assert_eq!(
            file_text(&tree, list),
            "srt://lameere-enc.video.example.org:9000?pbkeylen=32&passphrase=p4ss-phrase-0123 10000 256\n"
        );
        // The URLs carry the passphrase: root's only.
        assert!(
            matches!(
                tree.get(list),
                Some(crate::tree::Entry::File { mode: 0o600, .. })
            ),
            "{:?}",
            tree.get(list)
        );
    }

    #[test]
    fn a_hosts_secrets_are_listed_for_its_log_filter_and_masked_by_it() {
        let recipes = repo_recipes();
        let encoder = host_tree(&recipes, &fixture(), "encoder", "lameere-enc");
        let redact = "etc/lectern/redact";
        let header = "# The secrets this host holds, one per line after this one: its role scripts show them as *** in logs.\n";
        assert_eq!(
            file_text(&encoder, redact),
            format!("{header}{}\n", crate::context::tests::FIXTURE_SECRET)
        );
        assert!(matches!(
            encoder.get(redact),
            Some(crate::tree::Entry::File { mode: 0o600, .. })
        ));
        let source = host_tree(&recipes, &fixture(), "source", "lameere-source-1");
        assert_eq!(
            file_text(&source, redact),
            header,
            "a source holds no secret"
        );

        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("redact");
        std::fs::write(&list, file_text(&encoder, redact)).unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../overlays/base/config/usr/lib/lectern/redact");
        let mut filter = std::process::Command::new("bash")
            .arg(&script)
            .arg(&list)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let failure = format!(
            "rtmp://b/stream/lameere?key={}: Input/output error\nframe=1 & more\nno newline at the end",
            crate::context::tests::FIXTURE_SECRET
        );
        std::io::Write::write_all(filter.stdin.as_mut().unwrap(), failure.as_bytes()).unwrap();
        drop(filter.stdin.take());
        let output = filter.wait_with_output().unwrap();
        assert_eq!(
            String::from_utf8(output.stdout).unwrap(),
            "rtmp://b/stream/lameere?key=***: Input/output error\nframe=1 & more\nno newline at the end\n"
        );
    }

    #[test]
    fn netbooted_hosts_upload_their_journal_to_the_box_trusting_the_store_s_authority() {
        let recipes = repo_recipes();
        let config = recipes
            .render(
                "encoder",
                OverlayKind::Config,
                &fixture().role_context("encoder", TEST_ANCHORS),
            )
            .unwrap();
        assert_eq!(
            file_text(&config, "etc/lectern/journal-ca.pem").trim_end(),
            TEST_ANCHORS.journal_ca.trim_end()
        );
        let upload = "usr/lib/systemd/system/systemd-journal-upload.service.d/lectern.conf";
        assert!(file_text(&config, upload).contains("--trust=/etc/lectern/journal-ca.pem"));
        let moved = fixture_plan(
            &[(
                "http_port = 8080\n",
                "http_port = 8080\njournal_port = 20514\n",
            )],
            "",
        );
        for (plan, url) in [
            (fixture(), "URL=https://10.99.0.1:19532\n"),
            (moved, "URL=https://10.99.0.1:20514\n"),
        ] {
            let host = host_tree(&recipes, &plan, "encoder", "lameere-enc");
            let conf = file_text(&host, "etc/systemd/journal-upload.conf.d/lectern.conf");
            assert!(conf.contains(url), "{conf}");
        }
    }

    #[test]
    fn a_bitrate_change_touches_only_the_host_layer() {
        let recipes = repo_recipes();
        let before = fixture();
        let after = fixture_plan(&[("video_kbps = 3000\n", "video_kbps = 4500\n")], "");
        let role_tree = |plan: &crate::context::Plan| {
            recipes
                .render(
                    "encoder",
                    OverlayKind::Config,
                    &plan.role_context("encoder", TEST_ANCHORS),
                )
                .unwrap()
                .digest()
        };
        assert_eq!(role_tree(&before), role_tree(&after));
        let old = host_tree(&recipes, &before, "encoder", "lameere-enc");
        let new = host_tree(&recipes, &after, "encoder", "lameere-enc");
        assert_ne!(old.digest(), new.digest());
        assert!(file_text(&new, "etc/lectern/encoder.args").contains("\n-b:v\n4500k\n"));
        // A running encoder restarts its encoder for it, and nothing else.
        let update = restarts(&recipes, "encoder", &old, &new);
        assert_eq!(update.changed, ["etc/lectern/encoder.args"]);
        assert_eq!(update.restarted, ["lectern-encoder.service"]);
        assert_eq!(update.needs_reboot, Vec::<String>::new());
    }

    /// What a live update does on a host of some role, as its root image's [`HOST_FILE_UNITS`] says.
    struct LiveUpdate {
        changed: Vec<String>,
        restarted: Vec<String>,
        /// The changed files no unit reads: a reboot changes them.
        needs_reboot: Vec<String>,
    }

    /// A live update from `old` to `new` on a host of `role`.
    fn restarts(recipes: &Recipes, role: &str, old: &Tree, new: &Tree) -> LiveUpdate {
        let units = recipes.host_file_units(role).unwrap();
        let paths: BTreeSet<&str> = old.file_paths().chain(new.file_paths()).collect();
        let changed: Vec<String> = (paths.into_iter())
            .filter(|path| old.get(path) != new.get(path))
            .map(str::to_owned)
            .collect();
        let restarted: BTreeSet<&String> = changed
            .iter()
            .filter_map(|path| units.get(path))
            .flatten()
            .collect();
        LiveUpdate {
            restarted: restarted.into_iter().cloned().collect(),
            needs_reboot: (changed.iter())
                .filter(|path| !units.contains_key(*path))
                .cloned()
                .collect(),
            changed,
        }
    }

    #[test]
    fn a_rotated_key_restarts_what_holds_it_and_a_new_time_zone_waits_for_a_reboot() {
        let recipes = repo_recipes();
        let before = fixture();
        let rotated = fixture_plan(
            &[(
                "stream_key = \"secret:stream_keys.lameere\"",
                "stream_key = \"secret:rotated.lameere\"",
            )],
            "\n[rotated]\nlameere = \"lectern-rotated-key-41d2\"\n",
        );
        let tree = |plan, role, host| host_tree(&recipes, plan, role, host);
        let backend = ("streaming-backend", "stream-backend");
        let update = restarts(
            &recipes,
            backend.0,
            &tree(&before, backend.0, backend.1),
            &tree(&rotated, backend.0, backend.1),
        );
        assert_eq!(
            update.changed,
            ["etc/lectern/backend/publish-keys.map", "etc/lectern/redact"]
        );
        assert_eq!(update.restarted, ["nginx.service"]);
        assert_eq!(update.needs_reboot, Vec::<String>::new());
        let encoder = ("encoder", "lameere-enc");
        let update = restarts(
            &recipes,
            encoder.0,
            &tree(&before, encoder.0, encoder.1),
            &tree(&rotated, encoder.0, encoder.1),
        );
        assert_eq!(update.restarted, ["lectern-encoder.service"]);

        let in_brussels = fixture_plan(
            &[(
                "org = \"fosdem\"\n",
                "org = \"fosdem\"\ntimezone = \"Europe/Brussels\"\n",
            )],
            "",
        );
        let source = ("source", "lameere-source-1");
        let update = restarts(
            &recipes,
            source.0,
            &tree(&before, source.0, source.1),
            &tree(&in_brussels, source.0, source.1),
        );
        assert_eq!(update.restarted, Vec::<String>::new());
        assert_eq!(
            update.needs_reboot,
            ["etc/timezone", "etc/tmpfiles.d/lectern-timezone.conf"]
        );
        assert_eq!(update.changed, update.needs_reboot);
    }

    #[test]
    fn host_layers_list_their_files_and_root_images_which_units_read_them() {
        let (recipes, plan) = (repo_recipes(), fixture());
        let encoder = host_tree(&recipes, &plan, "encoder", "lameere-enc");
        let listed = file_text(&encoder, LAYER_FILES);
        let listed: Vec<&str> = listed
            .lines()
            .filter(|line| !line.starts_with('#'))
            .collect();
        assert_eq!(
            listed,
            encoder.file_paths().collect::<Vec<_>>(),
            "every file, itself and the secrets too"
        );
        assert!(listed.contains(&LAYER_FILES) && listed.contains(&"etc/lectern/encoder.args"));

        let context = plan.role_context("streaming-backend", TEST_ANCHORS);
        let config = recipes
            .render("streaming-backend", OverlayKind::Config, &context)
            .unwrap();
        let units = file_text(&config, HOST_FILE_UNITS);
        let lines: Vec<&str> = units
            .lines()
            .filter(|line| !line.starts_with('#'))
            .collect();
        assert_eq!(
            lines,
            [
                "etc/chrony/conf.d/lectern.conf chrony.service",
                "etc/hosts",
                "etc/lectern/backend/publish-keys.map nginx.service",
                "etc/lectern/backend/rtmp.conf nginx.service",
                "etc/lectern/backend/site.conf nginx.service",
                "etc/lectern/layer-files",
                "etc/lectern/netbootd-url",
                "etc/lectern/redact",
                "root/.ssh/authorized_keys",
            ]
        );
        // Every role's recipes name only files its hosts have.
        for role in recipes.names() {
            recipes.host_file_units(role).unwrap();
        }
    }

    #[test]
    fn a_host_file_glob_must_name_a_file_and_its_units_must_be_units() {
        let dir = tempfile::tempdir().unwrap();
        let overlay = dir.path().join("overlays/base/host/etc/lectern");
        fs::create_dir_all(&overlay).unwrap();
        fs::write(overlay.join("encoder.args.j2"), "{{ x }}").unwrap();
        let with = |units: &str| {
            let recipes = dir.path().join("recipes");
            fs::create_dir_all(&recipes).unwrap();
            fs::write(
                recipes.join("base.toml"),
                format!("{BASE_TOML}\n[host_file_units]\n{units}\n"),
            )
            .unwrap();
            Recipes::load(&recipes, &dir.path().join("overlays"))
                .and_then(|recipes| recipes.host_file_units(BASE))
        };
        let units = with(r#""etc/lectern/*.args" = ["lectern-encoder.service"]"#).unwrap();
        assert_eq!(
            units.keys().collect::<Vec<_>>(),
            ["etc/lectern/encoder.args"],
            "the template by its rendered name"
        );
        let error = with(r#""etc/lectern/encodr.args" = []"#)
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            "recipes/base.toml: host_file_units \"etc/lectern/encodr.args\": names no file of the host overlays of base"
        );
        let error = with(r#""etc/lectern/encoder.args" = ["lectern encoder"]"#)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("\"lectern encoder\" is not a systemd unit name"),
            "{error}"
        );
    }

    #[test]
    fn globs_match_within_one_path_component() {
        for (glob, path, matches) in [
            (
                "etc/lectern/backend/*",
                "etc/lectern/backend/site.conf",
                true,
            ),
            ("etc/lectern/backend/*", "etc/lectern/backend/", true),
            ("etc/*", "etc/lectern/redact", false),
            ("etc/*/redact", "etc/lectern/redact", true),
            ("etc/host?", "etc/hosts", true),
            ("etc/host?", "etc/host/", false),
            ("etc/hosts", "etc/hosts", true),
            ("etc/hosts", "etc/hosts.allow", false),
            ("*.conf", "résumé.conf", true),
        ] {
            assert_eq!(glob_matches(glob, path), matches, "{glob} {path}");
        }
    }
}
