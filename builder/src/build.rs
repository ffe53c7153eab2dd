//! Building a role: base layer -> role layer -> config layer (the root image), each keyed by the sha256 of
//! its inputs and taken from the store when that key was built before. Per-host layers are small cpios.
//!
//! The base and role layers install the package versions of the lock file (see [`crate::lock`]), which
//! are in their keys: a layer the lock does not cover yet is resolved from the mirror and locked, and
//! [`Builder::update`] resolves them again on purpose.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use lectern_store::{BlobRef, Digest, HostLayer, LayerKind, LayerRecord, Manifest, Store};
use serde_json::{Value, json};

use crate::context::{Anchors, Plan};
use crate::lock::{self, Lock, LockedLayer, Packages};
use crate::mirror::{self, AptLists};
use crate::recipe::{BASE, OverlayKind, Recipe, Recipes};
use crate::scratch;
use crate::step::{self, sh_quote};
use crate::tools;
use crate::tree::Tree;

/// Names of layer outputs and netboot artifacts.
pub const ROOTFS_TAR: &str = "rootfs.tar";
pub const VMLINUZ: &str = "vmlinuz";
pub const INITRD: &str = "initrd";
pub const ROOT_SQUASHFS: &str = "root.squashfs";

/// Per-host layer files live under this directory in the cpio; the initrd copies them into the root.
pub const HOST_PREFIX: &str = "lectern-host/";

/// Removes what makes a rootfs differ between two builds of the same inputs, or would leak the build host.
/// Runs on every layer (`$1` = root directory): packages write logs and caches in each.
const SCRUB: &str = r#"set -eu
root="$1"
rm -f "$root"/etc/ssh/ssh_host_*_key "$root"/etc/ssh/ssh_host_*_key.pub
rm -f "$root"/var/cache/ldconfig/aux-cache "$root"/var/lib/systemd/random-seed
rm -f "$root"/etc/.resolv.conf.systemd-resolved.bak "$root"/var/lib/dpkg/*-old "$root"/var/cache/debconf/*-old
find "$root"/var/log -type f -delete
# apt writes in its download directory only when it fetches a package, and the apt package ships it
# with its own date: its mtime would say whether the package cache was warm. Now: clamped to the epoch.
if [ -d "$root"/var/cache/apt/archives/partial ]; then touch "$root"/var/cache/apt/archives/partial; fi
if [ -e "$root"/etc/machine-id ]; then : > "$root"/etc/machine-id; fi
echo lectern > "$root"/etc/hostname
ln -sfn ../run/systemd/resolve/stub-resolv.conf "$root"/etc/resolv.conf
"#;

/// What no role reads, left out as dpkg unpacks (documentation, manuals, translations): about a tenth
/// of a root image. Licences stay, as Debian asks of anyone who redistributes its packages.
const DPKG_PATH_FILTERS: &[&str] = &[
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
    "path-exclude=/usr/share/lintian/*",
];

/// Where the lock's apt preferences are while mmdebstrap resolves; [`RECORD_PACKAGES`] takes them out.
const PINS_FILE: &str = "/etc/apt/preferences.d/lectern-lock.pref";

/// Takes the lock's apt preferences out of the layer (`$1` = root) and lists its installed packages into
/// `$2/packages`, for the lock. The preferences' directory is touched either way (clamped to the epoch in
/// the tarball), or its date would say whether the build was pinned.
const RECORD_PACKAGES: &str = r#"set -eu
rm -f "$1"/etc/apt/preferences.d/lectern-lock.pref
if [ -d "$1"/etc/apt/preferences.d ]; then touch "$1"/etc/apt/preferences.d; fi
dpkg-query --admindir="$1"/var/lib/dpkg --show \
	--showformat='${db:Status-Status} ${Package} ${Version}\n' > "$2"/packages
"#;

/// Puts the package cache (`$2`) into the chroot's apt archives (`$1` = root) as hard links where it
/// can (mmdebstrap's sync-in copies it, 1–2 s a layer), else as copies: nothing in the chroot writes
/// to a cached package; apt replaces a file it fetches again.
const PACKAGES_IN: &str = r#"set -eu
archives="$1"/var/cache/apt/archives
mkdir -p "$archives"
set -- "$2"/*.deb
[ -e "$1" ] || exit 0
cp -l -- "$@" "$archives"/ 2>/dev/null || cp --remove-destination -- "$@" "$archives"/
"#;

/// Where [`NEW_PACKAGES`] gathers the packages for the cache, in the chroot.
const NEW_PACKAGES_DIR: &str = "/var/cache/lectern-new-packages";

/// Moves the packages the cache (`$2`) does not hold (`$1` = root: those apt fetched) to `$3`
/// ([`NEW_PACKAGES_DIR`]), for mmdebstrap's sync-out to copy back, which copied back every package
/// of the layer, 4 s a layer. Hard links are the cache's; copies (from another file system) are
/// compared.
const NEW_PACKAGES: &str = r#"set -eu
new="$1$3"
mkdir "$new"
for deb in "$1"/var/cache/apt/archives/*.deb; do
	[ -e "$deb" ] || continue
	cached="$2/${deb##*/}"
	[ "$deb" -ef "$cached" ] || cmp -s "$deb" "$cached" || mv "$deb" "$new"/
done
"#;

/// Runs after the eatmydata hook has taken its library out again: ldconfig ran while it was there,
/// and the loader's cache would name a library the image lacks.
const AFTER_EATMYDATA: &str = "chroot \"$1\" ldconfig";

/// Keeps update-initramfs from running while the base's packages install (`$1` = root; an essential
/// hook, before initramfs-tools is unpacked): the kernel's postinst and then initramfs-tools' trigger
/// each built the initrd, 18 s apiece. The initrd layer builds it once, from the finished base.
const DEFER_INITRAMFS: &str = r#"set -eu
chroot "$1" dpkg-divert --quiet --local --rename --add /usr/sbin/update-initramfs
printf '#!/bin/sh\nexit 0\n' > "$1"/usr/sbin/update-initramfs
chmod 0755 "$1"/usr/sbin/update-initramfs
"#;

/// Puts back the update-initramfs that [`DEFER_INITRAMFS`] set aside, copies the kernel out of the base
/// (`$1` = root, `$2` = output directory), drops it from the rootfs (it boots the rootfs, it is not
/// part of it) and stops later layers from making an initrd.
const TAKE_KERNEL: &str = r#"set -eu
root="$1"; out="$2"
rm "$root"/usr/sbin/update-initramfs
chroot "$root" dpkg-divert --quiet --local --rename --remove /usr/sbin/update-initramfs
rm -f "$root"/var/lib/dpkg/diversions-old
cp "$root"/boot/vmlinuz-* "$out"/vmlinuz
rm -f "$root"/boot/vmlinuz-* "$root"/boot/initrd.img-* "$root"/vmlinuz* "$root"/initrd.img*
sed -i 's/^update_initramfs=.*/update_initramfs=no/' "$root"/etc/initramfs-tools/update-initramfs.conf
"#;

/// Makes the initrd of the base's kernel with the base's initramfs-tools and hooks (the image overlay's
/// among them), inside a user namespace. Arguments: scratch dir, base tar, output path. mkinitramfs
/// clamps the files' dates to SOURCE_DATE_EPOCH, which the caller sets.
const INITRD_LAYER: &str = r#"set -eu
scratch="$1"; base_tar="$2"; out="$3"
root=$(mktemp -d -p "$scratch" lectern-initrd.XXXXXX)
trap 'rm -rf "$root"' EXIT
tar UNTAR_OPTIONS --file "$base_tar" --directory "$root"
chroot "$root" mkinitramfs -o /initrd "$(ls "$root"/lib/modules)"
mv "$root"/initrd "$out"
"#;

/// Where the root image keeps GStreamer's plugin registry (roles with GStreamer and Python's bindings).
const GST_REGISTRY: &str = "/usr/lib/lectern/gstreamer-registry.bin";

/// zstd level 3: measured 6.5 s for a 700 MB base (216 MB), vs 16 s at level 9 (201 MB) and 3 s for lz4
/// (318 MB). The image lives in RAM, so size matters more than the last seconds.
const MKSQUASHFS_OPTIONS: &str =
    "-comp zstd -Xcompression-level 3 -b 1M -noappend -no-progress -quiet";

/// Builds the root image from the role layer's tarball and the rendered config overlay, inside a user
/// namespace so that ownership is right without real root. Arguments: scratch dir, role tar, config cpio,
/// output path, source date epoch, then the units to enable.
const CONFIG_LAYER: &str = r#"set -eu
scratch="$1"; role_tar="$2"; config_cpio="$3"; out="$4"; epoch="$5"; shift 5
root=$(mktemp -d -p "$scratch" lectern-root.XXXXXX)
trap 'rm -rf "$root"' EXIT
chmod 0755 "$root"
tar UNTAR_OPTIONS --file "$role_tar" --directory "$root"
cpio --quiet --extract --make-directories --unconditional --directory "$root" < "$config_cpio"
if [ "$#" -gt 0 ]; then chroot "$root" systemctl enable --quiet "$@"; fi
# GStreamer's plugin registry, built here once instead of at every diskless boot (minutes on a slow CPU).
# GStreamer trusts an entry while its plugin's mtime and size match, and mksquashfs gives every file the
# epoch as mtime: give them that mtime first. Units using it set GST_REGISTRY to this file.
if [ -x "$root"/usr/lib/x86_64-linux-gnu/gstreamer1.0/gstreamer-1.0/gst-plugin-scanner ] && [ -x "$root"/usr/bin/python3 ]; then
	find "$root" -xdev -exec touch --no-dereference --date="@$epoch" {} +
	mkdir -p "$root"/usr/lib/lectern
	chroot "$root" env -i PATH=/usr/bin:/bin GST_REGISTRY=REGISTRY_PATH python3 -c \
		'import gi; gi.require_version("Gst", "1.0"); from gi.repository import Gst; Gst.init(None)'
	chmod 0644 "$root"REGISTRY_PATH
fi
scrub() {
SCRUB
}
scrub "$root"
mksquashfs "$root" "$out" MKSQUASHFS_OPTIONS -all-time "$epoch" -mkfs-time "$epoch"
"#;

pub struct BuildOptions {
    pub source_date_epoch: u64,
    /// Persistent apt package cache, shared by all builds.
    pub apt_cache: PathBuf,
    /// The lock file: the version of every package of each layer (`master.lock` beside `master.toml`).
    pub lock_file: PathBuf,
}

/// Where a base or role layer's package versions come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Versions {
    /// The lock's. A layer whose recipe the lock does not cover is resolved from the mirror, keeping
    /// every version the lock names, and locked.
    Locked,
    /// The mirror's, whatever the lock says (`imgbuild update`).
    Fresh,
}

/// What [`Builder::update`] found, and did unless it was a dry run.
pub struct Update {
    /// The lock before and after (the same after a dry run).
    pub before: Lock,
    pub after: Lock,
    /// Each layer resolved again (or to be, in a dry run), with why.
    pub resolved: Vec<(String, String)>,
}

pub struct Builder {
    store: Store,
    recipes: Recipes,
    options: BuildOptions,
    tool_versions: BTreeMap<String, String>,
    /// Where the trees are built (see [`scratch`]).
    scratch: PathBuf,
}

impl Builder {
    /// Checks that the image tools are installed before anything starts.
    pub fn new(store: Store, recipes: Recipes, options: BuildOptions) -> Result<Self> {
        tools::require(tools::IMAGE_TOOLS)?;
        std::fs::create_dir_all(&options.apt_cache)
            .with_context(|| format!("creating the apt cache {}", options.apt_cache.display()))?;
        let tool_versions = tools::versions(tools::IMAGE_TOOLS)?;
        let scratch = scratch::choose(&store.root().join("tmp"));
        crate::progress::detail(format_args!("building in {}", scratch.display()));
        Ok(Self {
            store,
            recipes,
            options,
            tool_versions,
            scratch,
        })
    }

    pub fn recipes(&self) -> &Recipes {
        &self.recipes
    }

    /// Builds (or finds) every layer of `role` and records the result as the role's newest release.
    pub fn build_role(&self, role: &str, plan: &Plan) -> Result<Manifest> {
        let PackageLayers {
            base,
            initrd,
            role: role_layer,
        } = self.package_layers(role)?;
        let below = role_layer.as_ref().unwrap_or(&base);
        let pin = self.store.server_key()?.pin;
        let journal_ca = self.store.journal_ca()?.certificate;
        let anchors = Anchors {
            netbootd_pin: &pin,
            journal_ca: &journal_ca,
        };
        let config = self.config_layer(role, below, &plan.role_context(role, anchors))?;

        let artifacts = BTreeMap::from([
            (VMLINUZ.to_owned(), base.outputs[VMLINUZ].clone()),
            (INITRD.to_owned(), initrd.outputs[INITRD].clone()),
            (
                ROOT_SQUASHFS.to_owned(),
                config.outputs[ROOT_SQUASHFS].clone(),
            ),
        ]);
        let debian = &self.recipes.debian;
        let mut inputs = BTreeMap::from([
            ("suite".to_owned(), debian.suite.clone()),
            ("mirror".to_owned(), debian.mirror.clone()),
            ("variant".to_owned(), debian.variant.clone()),
            (
                "source_date_epoch".to_owned(),
                self.options.source_date_epoch.to_string(),
            ),
        ]);
        for name in self.recipes.chain(role) {
            inputs.insert(
                format!("recipe.{name}"),
                self.recipes.role(name)?.digest.to_string(),
            );
        }
        let layers = [Some(base), Some(initrd), role_layer, Some(config)]
            .into_iter()
            .flatten()
            .collect();
        let manifest = Manifest::new(role, layers, artifacts, inputs, self.tool_versions.clone());
        self.store.add_manifest(&manifest)?;
        Ok(manifest)
    }

    /// Renders and stores the per-host layer of every host of `role` in the plan.
    pub fn build_host_layers(&self, role: &str, plan: &Plan) -> Result<Vec<HostLayer>> {
        plan.host_contexts(role)
            .into_iter()
            .map(|(hostname, context)| {
                let mut tree = self.recipes.render(role, OverlayKind::Host, &context)?;
                let key = tree.digest();
                let epoch = self.options.source_date_epoch;
                // What netbootd serves over plain HTTP leaves the secrets out: they go, over TLS, only
                // to a boot that proves it is the host. A cloud host reads its whole layer from SSM.
                let secrets = if plan.netboots(&hostname) {
                    Some(tree.take_private()).filter(|secrets| !secrets.is_empty())
                } else {
                    None
                };
                let blob = self.store.put_blob(&host_archive(&tree, epoch))?;
                let mut layer = HostLayer::new(&hostname, role, key, blob);
                if let Some(secrets) = secrets {
                    let blob = self
                        .store
                        .put_private_blob(&host_archive(&secrets, epoch))?;
                    layer = layer.with_secrets(blob);
                }
                self.store.add_host_layer(&layer)?;
                Ok(layer)
            })
            .collect::<Result<_>>()
            .with_context(|| format!("building the per-host layers of role {role}"))
    }

    /// Builds (or finds) the base layer, its initrd and `role`'s layer on the base (none for `base`)
    /// with the lock's versions, locking those of a layer the lock does not cover yet.
    pub fn package_layers(&self, role: &str) -> Result<PackageLayers> {
        let recipe = self.recipes.role(role)?;
        let mut session = self.session()?;
        let base = self.base_layer(&mut session, Versions::Locked)?;
        // The initrd needs the base alone: made beside the role layer, each mostly on one core.
        let (initrd, role_layer) = std::thread::scope(|scope| {
            let initrd = scope.spawn(|| self.initrd_layer(&base.0));
            let role_layer = (role != BASE)
                .then(|| self.role_layer(&mut session, &base, recipe, Versions::Locked))
                .transpose();
            (
                initrd.join().expect("the initrd build does not panic"),
                role_layer,
            )
        });
        Ok(PackageLayers {
            base: base.0,
            initrd: initrd?,
            role: role_layer?,
        })
    }

    /// Resolves the lock again from the mirror for the base and each of `roles` (and the roles the
    /// lock has whose recipes still exist; the others leave it): a layer whose recipe the lock does
    /// not cover, or of whose packages the mirror would now install another version, is built again
    /// with the mirror's versions (every role, when the base is), and locked. The layers it builds are
    /// in the store for the next build. `dry_run` only says which layers that would be, and why.
    pub fn update(&self, roles: &[String], dry_run: bool) -> Result<Update> {
        let mut session = self.session()?;
        let roles: BTreeSet<String> = (roles.iter())
            .chain(session.lock.layers.keys())
            .filter(|role| *role != BASE && self.recipes.roles.contains_key(*role))
            .cloned()
            .collect();
        let mut resolved = Vec::new();
        let base_reason = self.why_resolve(&mut session, BASE)?;
        let new_base = base_reason.is_some();
        resolved.extend(base_reason.map(|reason| (BASE.to_owned(), reason)));
        for role in &roles {
            let own = self.why_resolve(&mut session, role)?;
            let reason = match (new_base, own) {
                (true, Some(own)) => Some(format!("{own}; and it is built on the new base")),
                (true, None) => Some("built again on the new base".to_owned()),
                (false, own) => own,
            };
            resolved.extend(reason.map(|reason| (role.clone(), reason)));
        }
        let before = session.original.clone();
        if dry_run {
            let after = session.lock.clone();
            return Ok(Update {
                before,
                after,
                resolved,
            });
        }
        if !resolved.is_empty() {
            let versions = if new_base {
                Versions::Fresh
            } else {
                Versions::Locked
            };
            let base = self.base_layer(&mut session, versions)?;
            for (role, _) in resolved.iter().filter(|(name, _)| name != BASE) {
                let recipe = self.recipes.role(role)?;
                self.role_layer(&mut session, &base, recipe, Versions::Fresh)?;
            }
        }
        session
            .lock
            .layers
            .retain(|name, _| name == BASE || roles.contains(name));
        if session.lock != session.original {
            session.lock.write(&self.options.lock_file)?;
        }
        Ok(Update {
            before,
            after: session.lock,
            resolved,
        })
    }

    /// Why `imgbuild update` must resolve `layer` again, if it must: the lock does not cover its
    /// recipe, or the mirror would now install other versions of its locked packages (each named).
    fn why_resolve(&self, session: &mut Session, layer: &str) -> Result<Option<String>> {
        let recipe = self.recipes.role(layer)?;
        if let Some(reason) = lock::uncovered(&session.lock, layer, &recipe.packages) {
            return Ok(Some(reason));
        }
        let locked = session.lock.layers[layer].packages.clone();
        let sources = self.recipes.apt_sources(layer)?;
        let moved = session
            .lists(&sources)?
            .index(locked.keys())?
            .moved(&locked);
        if moved.is_empty() {
            return Ok(None);
        }
        let mut reason = format!(
            "the mirror has other versions of {} of its packages:",
            moved.len()
        );
        for change in moved {
            let candidate = change.candidate.as_deref().unwrap_or("none");
            let _ = write!(
                reason,
                "\n  {}: {} -> {candidate}",
                change.package, change.locked
            );
        }
        Ok(Some(reason))
    }

    fn session(&self) -> Result<Session> {
        Session::open(&self.options.lock_file, &self.store.root().join("tmp"))
    }

    /// The base layer, and its packages.
    fn base_layer(
        &self,
        session: &mut Session,
        versions: Versions,
    ) -> Result<(LayerRecord, Packages)> {
        let base = &self.recipes.base;
        let image_overlay = Tree::load(&self.recipes.overlay_dir(BASE, OverlayKind::Image), None)?;
        let layer = PackageLayer {
            kind: LayerKind::Base,
            name: BASE,
            recipe: &base.packages,
            sources: self.recipes.apt_sources(BASE)?,
            below: &Packages::new(),
            outputs: &[ROOTFS_TAR, VMLINUZ],
        };
        let key = |packages: &Packages| {
            layer_key(json!({
                "layer": "base",
                "packages": base.packages,
                "versions": packages,
                "apt_sources": base.apt_sources,
                "debian": { "suite": self.recipes.debian.suite, "mirror": self.recipes.debian.mirror,
                            "variant": self.recipes.debian.variant },
                "image_overlay": image_overlay.digest(),
                "scripts": [SCRUB, DEFER_INITRAMFS, TAKE_KERNEL, RECORD_PACKAGES, AFTER_EATMYDATA],
                "dpkg_path_filters": DPKG_PATH_FILTERS,
                "mmdebstrap": self.tool_versions.get("mmdebstrap"),
                "source_date_epoch": self.options.source_date_epoch,
            }))
        };
        let build = |work: &Path, include: &[String], pins: &Packages| {
            let overlay = work.join("image-overlay.cpio");
            std::fs::write(
                &overlay,
                image_overlay.to_cpio("", self.options.source_date_epoch),
            )?;
            let mut command = self.mmdebstrap(&self.recipes.debian.variant, include);
            command.arg(format!("--essential-hook={}", cpio_in(&overlay)));
            command.arg(format!(
                "--essential-hook=sh -c {} defer-initramfs \"$1\"",
                sh_quote(DEFER_INITRAMFS)
            ));
            command.arg(format!(
                "--customize-hook=sh -c {} take-kernel \"$1\" {}",
                sh_quote(TAKE_KERNEL),
                path_arg(work)
            ));
            self.run_mmdebstrap(command, work, "base layer", &layer.sources, pins)
        };
        self.package_layer(session, &layer, versions, key, build)
    }

    /// `recipe`'s layer on `base` (its record and packages).
    fn role_layer(
        &self,
        session: &mut Session,
        base: &(LayerRecord, Packages),
        recipe: &Recipe,
        versions: Versions,
    ) -> Result<LayerRecord> {
        let (base, base_packages) = base;
        let layer = PackageLayer {
            kind: LayerKind::Role,
            name: &recipe.name,
            recipe: &recipe.packages,
            sources: self.recipes.apt_sources(&recipe.name)?,
            below: base_packages,
            outputs: &[ROOTFS_TAR],
        };
        let key = |packages: &Packages| role_key(&base.key, recipe, packages);
        let build = |work: &Path, include: &[String], pins: &Packages| {
            let base_tar = self.store.blob_path(&base.outputs[ROOTFS_TAR].sha256);
            let mut command = self.mmdebstrap("custom", &[]);
            command.arg(format!("--setup-hook={}", untar_in(&base_tar)));
            command.arg(install_role_packages(include));
            let label = format!("{} role layer", recipe.name);
            self.run_mmdebstrap(command, work, &label, &layer.sources, pins)
        };
        let (record, _) = self.package_layer(session, &layer, versions, key, build)?;
        Ok(record)
    }

    /// A base or role layer with the versions `versions` says: taken from the store when its key (which
    /// holds them) was built before, else built by `build` (work directory, packages to name, versions
    /// to pin; it returns the packages the layer holds). Returns the record and the layer's entry in
    /// the lock.
    fn package_layer(
        &self,
        session: &mut Session,
        layer: &PackageLayer<'_>,
        versions: Versions,
        key: impl Fn(&Packages) -> Digest,
        build: impl Fn(&Path, &[String], &Packages) -> Result<Packages>,
    ) -> Result<(LayerRecord, Packages)> {
        let entry = session.lock.layers.get(layer.name).cloned();
        let covered = entry.filter(|entry| entry.covers(layer.recipe));
        if let (Versions::Locked, Some(entry)) = (versions, &covered) {
            let record = self.locked_layer(session, layer, &entry.packages, key, build)?;
            return Ok((record, entry.packages.clone()));
        }
        // Resolved from the mirror: pinned to what the lock already has of it, unless asked afresh.
        let keep = match versions {
            Versions::Locked => {
                let reason = lock::uncovered(&session.lock, layer.name, layer.recipe);
                let entry = session.lock.layers.get(layer.name);
                let how = match entry {
                    None => "resolving them from the mirror",
                    Some(_) => "resolving that layer again, keeping every version the lock names",
                };
                eprintln!(
                    "{}: {}: {how}",
                    self.options.lock_file.display(),
                    reason.unwrap_or_default()
                );
                entry
                    .map(|entry| entry.packages.clone())
                    .unwrap_or_default()
            }
            Versions::Fresh => Packages::new(),
        };
        session.require_available(&self.options.lock_file, layer, &keep)?;
        let pins = if keep.is_empty() {
            Packages::new()
        } else {
            Lock::layer_packages(layer.below, &keep)
        };
        let work = self.work_dir(layer.kind)?;
        let installed = build(work.path(), layer.recipe, &pins)
            .with_context(|| format!("building the {} layer", layer.name))?;
        let removed: Vec<&str> = (layer.below.keys())
            .filter(|name| !installed.contains_key(*name))
            .map(String::as_str)
            .collect();
        if !removed.is_empty() {
            bail!(
                "the {} layer removes packages of the base ({}): a role may only add to it",
                layer.name,
                removed.join(", ")
            );
        }
        let packages = Lock::beyond_base(layer.below, &installed);
        let key = key(&packages);
        let record = match self.store.layer(&key)? {
            Some(record) => record,
            None => self.import_layer(layer.kind, key, work.path(), layer.outputs)?,
        };
        let entry = LockedLayer {
            recipe: layer.recipe.iter().cloned().collect(),
            packages: packages.clone(),
        };
        session.record(&self.options.lock_file, layer.name, entry, versions)?;
        Ok((record, packages))
    }

    /// A layer the lock covers: from the store, or built with exactly the locked versions (refused
    /// before anything runs when the mirror lacks one, and checked after the install).
    fn locked_layer(
        &self,
        session: &mut Session,
        layer: &PackageLayer<'_>,
        locked: &Packages,
        key: impl Fn(&Packages) -> Digest,
        build: impl Fn(&Path, &[String], &Packages) -> Result<Packages>,
    ) -> Result<LayerRecord> {
        let key = key(locked);
        let expected = Lock::layer_packages(layer.below, locked);
        if self.store.layer(&key)?.is_none() {
            session.require_available(&self.options.lock_file, layer, locked)?;
        }
        let include: Vec<String> = (layer.recipe.iter())
            .map(|name| match expected.get(name) {
                Some(version) => format!("{name}={version}"),
                None => name.clone(),
            })
            .collect();
        self.layer(layer.kind, key, layer.outputs, |work| {
            let installed = build(work, &include, &expected)?;
            let differences = lock::package_changes(&expected, &installed);
            if differences.is_empty() {
                return Ok(());
            }
            let mut text = format!(
                "the {} layer as built differs from {} (locked -> built):",
                layer.name,
                self.options.lock_file.display()
            );
            for change in differences {
                let _ = write!(text, "\n  {change}");
            }
            bail!(
                "{text}\nnothing was recorded; `imgbuild update` resolves the layer again from the mirror"
            )
        })
    }

    /// The initrd of `base`'s kernel (see [`INITRD_LAYER`]).
    fn initrd_layer(&self, base: &LayerRecord) -> Result<LayerRecord> {
        let script = initrd_layer_script();
        let key = layer_key(json!({
            "layer": "initrd",
            "base": base.key,
            "script": script,
            "mmdebstrap": self.tool_versions.get("mmdebstrap"),
            "source_date_epoch": self.options.source_date_epoch,
        }));
        self.layer(LayerKind::Initrd, key, &[INITRD], |work| {
            let mut command = Command::new(tools::MMDEBSTRAP.command);
            command
                .env(
                    "SOURCE_DATE_EPOCH",
                    self.options.source_date_epoch.to_string(),
                )
                .args(["--unshare-helper", "sh", "-c", &script])
                .arg("initrd-layer")
                .arg(&self.scratch)
                .arg(self.store.blob_path(&base.outputs[ROOTFS_TAR].sha256))
                .arg(work.join(INITRD));
            step::run("initrd", &mut command, &work.join("initrd-layer.log"))?;
            Ok(())
        })
    }

    fn config_layer(
        &self,
        role: &str,
        below: &LayerRecord,
        context: &Value,
    ) -> Result<LayerRecord> {
        let tree = self.recipes.render(role, OverlayKind::Config, context)?;
        let units = self.recipes.units(role)?;
        let key = layer_key(json!({
            "layer": "config",
            "below": below.key,
            "tree": tree.digest(),
            "units": units,
            "script": config_layer_script(),
            "mksquashfs": [MKSQUASHFS_OPTIONS, self.tool_versions.get("mksquashfs")],
            "source_date_epoch": self.options.source_date_epoch,
        }));
        self.layer(LayerKind::Config, key, &[ROOT_SQUASHFS], |work| {
            let config_cpio = work.join("config.cpio");
            std::fs::write(
                &config_cpio,
                tree.to_cpio("", self.options.source_date_epoch),
            )?;
            let script = config_layer_script();
            let mut command = Command::new(tools::MMDEBSTRAP.command);
            command
                .args(["--unshare-helper", "sh", "-c", &script, "config-layer"])
                .arg(&self.scratch)
                .arg(self.store.blob_path(&below.outputs[ROOTFS_TAR].sha256))
                .arg(&config_cpio)
                .arg(work.join(ROOT_SQUASHFS))
                .arg(self.options.source_date_epoch.to_string())
                .args(&units);
            step::run(
                &format!("{role} root image"),
                &mut command,
                &work.join("config-layer.log"),
            )?;
            Ok(())
        })
    }

    /// Returns the cached layer for `key`, or runs `build` in a scratch directory inside the store and
    /// imports its `outputs` (files of those names in that directory).
    fn layer(
        &self,
        kind: LayerKind,
        key: Digest,
        outputs: &[&str],
        build: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<LayerRecord> {
        let label = format!("{kind:?} layer {}", key.short()).to_lowercase();
        if let Some(record) = self.store.layer(&key)? {
            crate::progress::say(format_args!("{label}: unchanged, taken from the store"));
            return Ok(record);
        }
        let _building = self.store.lock_layer_build(&key)?;
        if let Some(record) = self.store.layer(&key)? {
            crate::progress::say(format_args!(
                "{label}: built meanwhile by another build, taken from the store"
            ));
            return Ok(record);
        }
        let work = self.work_dir(kind)?;
        build(work.path()).with_context(|| format!("building {label}"))?;
        self.import_layer(kind, key, work.path(), outputs)
    }

    /// A scratch directory for building a layer, inside the store (so that its outputs move in).
    fn work_dir(&self, kind: LayerKind) -> Result<tempfile::TempDir> {
        Ok(tempfile::Builder::new()
            .prefix(&format!("{:?}-", kind).to_lowercase())
            .tempdir_in(self.store.root().join("tmp"))?)
    }

    /// Moves a built layer's `outputs` (files of those names in `work`) into the store, and records it.
    fn import_layer(
        &self,
        kind: LayerKind,
        key: Digest,
        work: &Path,
        outputs: &[&str],
    ) -> Result<LayerRecord> {
        let mut record = LayerRecord {
            kind,
            key,
            outputs: BTreeMap::new(),
        };
        for name in outputs {
            let blob: BlobRef = self.store.import_blob(&work.join(name))?;
            record.outputs.insert((*name).to_owned(), blob);
        }
        self.store.put_layer(&record)?;
        Ok(record)
    }

    /// An mmdebstrap command line producing `rootfs.tar` with the packages `include` names (`name` or
    /// `name=version`) and the apt cache wired in.
    fn mmdebstrap(&self, variant: &str, include: &[String]) -> Command {
        let cache = path_arg(&self.options.apt_cache);
        let mut command = Command::new(tools::MMDEBSTRAP.command);
        command
            .env(
                "SOURCE_DATE_EPOCH",
                self.options.source_date_epoch.to_string(),
            )
            .env("TMPDIR", &self.scratch)
            .arg("--mode=unshare")
            .arg(format!("--variant={variant}"))
            // dpkg without its fsync per unpacked file: a layer is written whole or thrown away,
            // and on a disk that takes ~5 ms a sync, the syncs were most of the role layer's time.
            .arg("--hook-dir=/usr/share/mmdebstrap/hooks/eatmydata")
            .arg(format!("--customize-hook={AFTER_EATMYDATA}"))
            .arg("--format=tar")
            .arg("--aptopt=Apt::Install-Recommends \"false\"")
            .arg("--skip=download/empty")
            // Keep the .debs of the packages installed as the essential set (in the role layer, all of
            // them) for the sync-out below: mmdebstrap deletes them after unpacking by default, and
            // the package cache kept 98 of the 374 .debs an encoder build fetches, so every cold build
            // fetched the rest again. apt's clean-up still takes them out of the image.
            .arg("--skip=essential/unlink")
            .args(
                DPKG_PATH_FILTERS
                    .iter()
                    .map(|filter| format!("--dpkgopt={filter}")),
            )
            .arg(format!(
                "--setup-hook=sh -c {} packages-in \"$1\" {}",
                sh_quote(PACKAGES_IN),
                sh_quote(&cache)
            ))
            .arg(format!(
                "--customize-hook=sh -c {} new-packages \"$1\" {} {NEW_PACKAGES_DIR}",
                sh_quote(NEW_PACKAGES),
                sh_quote(&cache)
            ))
            .arg(format!(
                "--customize-hook=sync-out {NEW_PACKAGES_DIR} {cache}"
            ))
            .arg(format!("--customize-hook=rm -r \"$1\"{NEW_PACKAGES_DIR}"))
            .arg(format!(
                "--customize-hook=sh -c {} scrub \"$1\"",
                sh_quote(SCRUB)
            ));
        if !include.is_empty() {
            command.arg(format!("--include={}", include.join(",")));
        }
        command
    }

    /// Runs `command` (from [`Builder::mmdebstrap`]) into `work` from the Debian mirror and `sources`
    /// (whose first line is the mirror's), with apt preferring exactly the versions `pins` names while
    /// it resolves; returns the packages the layer holds.
    fn run_mmdebstrap(
        &self,
        mut command: Command,
        work: &Path,
        label: &str,
        sources: &[String],
        pins: &Packages,
    ) -> Result<Packages> {
        if !pins.is_empty() {
            let preferences = work.join("apt-pins.pref");
            std::fs::write(&preferences, apt_pins(pins))?;
            command.arg(format!(
                "--setup-hook=cp {} \"$1\"{PINS_FILE}",
                sh_quote(&preferences.display().to_string())
            ));
        }
        command
            .arg(format!(
                "--customize-hook=sh -c {} record-packages \"$1\" {}",
                sh_quote(RECORD_PACKAGES),
                sh_quote(&work.display().to_string())
            ))
            .arg(&self.recipes.debian.suite)
            .arg(work.join(ROOTFS_TAR))
            .arg(&self.recipes.debian.mirror)
            .args(sources.iter().skip(1));
        step::run(label, &mut command, &work.join("mmdebstrap.log"))?;
        let listing = work.join("packages");
        let text = std::fs::read_to_string(&listing)
            .with_context(|| format!("reading {}", listing.display()))?;
        installed_packages(&text)
    }
}

/// The layers below a role's config layer.
pub struct PackageLayers {
    pub base: LayerRecord,
    pub initrd: LayerRecord,
    /// None for the base role.
    pub role: Option<LayerRecord>,
}

/// A base or role layer, as the lock sees it.
struct PackageLayer<'a> {
    kind: LayerKind,
    /// `base` or the role: its section in the lock.
    name: &'a str,
    /// The recipe's packages.
    recipe: &'a [String],
    /// Its apt sources (sources.list lines), the Debian mirror's first.
    sources: Vec<String>,
    /// The packages of the layer below (the base's, for a role layer), which it holds too.
    below: &'a Packages,
    /// The files its build leaves in the work directory, for the store.
    outputs: &'a [&'a str],
}

/// One command's use of the lock file: read when it starts, written whenever a layer is resolved.
struct Session {
    /// The lock as read, and as it is now.
    original: Lock,
    lock: Lock,
    /// The package lists fetched so far (the sources of a base and a role layer often match).
    lists: Vec<AptLists>,
    scratch: PathBuf,
}

impl Session {
    fn open(lock_file: &Path, scratch: &Path) -> Result<Self> {
        let lock = Lock::load(lock_file)?.unwrap_or_default();
        Ok(Self {
            original: lock.clone(),
            lock,
            lists: Vec::new(),
            scratch: scratch.to_owned(),
        })
    }

    /// The package lists of `sources`, fetched once per command.
    fn lists(&mut self, sources: &[String]) -> Result<&AptLists> {
        let index = match self.lists.iter().position(|l| l.sources() == sources) {
            Some(index) => index,
            None => {
                self.lists.push(AptLists::fetch(sources, &self.scratch)?);
                self.lists.len() - 1
            }
        };
        Ok(&self.lists[index])
    }

    /// Fails, naming each of them, when `layer`'s sources lack any version of `packages`.
    fn require_available(
        &mut self,
        lock_file: &Path,
        layer: &PackageLayer<'_>,
        packages: &Packages,
    ) -> Result<()> {
        if packages.is_empty() {
            return Ok(());
        }
        let missing = self
            .lists(&layer.sources)?
            .index(packages.keys())?
            .missing(packages);
        if missing.is_empty() {
            return Ok(());
        }
        bail!(mirror::missing_error(lock_file, layer.name, &missing))
    }

    /// Locks `entry` for `layer`. A build writes the lock file at once and says what changed; an update
    /// writes it whole at its end (or not at all, when it fails) and reports it all there.
    fn record(
        &mut self,
        lock_file: &Path,
        layer: &str,
        entry: LockedLayer,
        versions: Versions,
    ) -> Result<()> {
        let before = self.lock.layers.insert(layer.to_owned(), entry.clone());
        if versions == Versions::Fresh {
            return Ok(());
        }
        self.lock.write(lock_file)?;
        let lock_file = lock_file.display();
        match before {
            None => eprintln!(
                "{lock_file}: locked the {layer} layer, {} at the versions the mirror has today",
                lock::count_packages(&entry.packages)
            ),
            Some(before) => {
                let changes = lock::package_changes(&before.packages, &entry.packages);
                let mut text = format!("{lock_file}: the {layer} layer resolved again:");
                for change in changes {
                    let _ = write!(text, "\n  {change}");
                }
                eprintln!("{text}");
            }
        }
        Ok(())
    }
}

/// apt preferences that make exactly these versions the ones to install (priority 1001 would take
/// them even over a newer version).
fn apt_pins(packages: &Packages) -> String {
    packages
        .iter()
        .map(|(name, version)| {
            format!("Package: {name}\nPin: version {version}\nPin-Priority: 1001\n\n")
        })
        .collect()
}

/// The installed packages in what [`RECORD_PACKAGES`] lists (`<status> <package> <version>` lines).
fn installed_packages(text: &str) -> Result<Packages> {
    let mut packages = Packages::new();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        match (fields.next(), fields.next(), fields.next()) {
            (Some("installed"), Some(name), Some(version)) => {
                packages.insert(name.to_owned(), version.to_owned());
            }
            // Known to dpkg but not installed (configuration files left behind, half removed…).
            (Some(_), Some(_), _) => {}
            _ => bail!("unexpected dpkg-query line {line:?}"),
        }
    }
    Ok(packages)
}

fn initrd_layer_script() -> String {
    INITRD_LAYER.replace("UNTAR_OPTIONS", UNTAR_OPTIONS)
}

fn config_layer_script() -> String {
    CONFIG_LAYER
        .replace("UNTAR_OPTIONS", UNTAR_OPTIONS)
        .replace("MKSQUASHFS_OPTIONS", MKSQUASHFS_OPTIONS)
        .replace("REGISTRY_PATH", GST_REGISTRY)
        .replace("SCRUB", SCRUB)
}

/// The per-host layer as loaded by the boot loader: every file under [`HOST_PREFIX`].
pub fn host_archive(tree: &Tree, source_date_epoch: u64) -> Vec<u8> {
    tree.to_cpio(HOST_PREFIX, source_date_epoch)
}

/// The role layer's key: the base below it, the recipe's packages and apt sources, and the versions its
/// lock entry names (`versions`). Nothing else of the recipe goes in: its units and overlays only reach
/// the config layer, so editing them rebuilds only that.
fn role_key(base: &Digest, recipe: &Recipe, versions: &Packages) -> Digest {
    layer_key(json!({
        "layer": "role", "base": base, "packages": recipe.packages, "versions": versions,
        "apt_sources": recipe.apt_sources,
        "scripts": [SCRUB, RECORD_PACKAGES, AFTER_EATMYDATA, INSTALL_ROLE_PACKAGES],
        "untar": [UNTAR_OPTIONS, UNTAR_BELOW],
        "dpkg_path_filters": DPKG_PATH_FILTERS,
    }))
}

/// A layer key: the sha256 of its inputs as JSON with object keys sorted (serde_json keeps insertion order
/// when any crate in the build enables its `preserve_order` feature).
fn layer_key(inputs: Value) -> Digest {
    fn canonical(value: Value) -> Value {
        match value {
            Value::Object(map) => {
                let sorted: BTreeMap<String, Value> =
                    map.into_iter().map(|(k, v)| (k, canonical(v))).collect();
                Value::Object(sorted.into_iter().collect())
            }
            Value::Array(items) => Value::Array(items.into_iter().map(canonical).collect()),
            other => other,
        }
    }
    Digest::of_bytes(canonical(inputs).to_string().as_bytes())
}

/// Unpacks a lower layer's rootfs tarball into the chroot `$1` (a mmdebstrap hook command). Not `tar-in`:
/// /dev must stay out, mmdebstrap creates its own device entries and fails on existing ones. So does the
/// lower layer's sources.list: mmdebstrap has just written this layer's, with its recipe's apt sources.
fn untar_in(tarball: &Path) -> String {
    format!(
        "tar {UNTAR_OPTIONS} {UNTAR_BELOW} --directory \"$1\" --file {}",
        sh_quote(&tarball.display().to_string())
    )
}

/// Installs a role's packages (`$2`...) with apt inside the chroot `$1`, on the base [`untar_in`]
/// unpacked there, as mmdebstrap installs the base's beyond the essential set. Named with `--include`
/// in the custom variant, each would be unpacked twice (extracted, then installed by dpkg): half the
/// role layer's time. They are fetched first from outside the chroot, with mmdebstrap's apt
/// configuration, as mmdebstrap fetches: a source on this machine (`file:`, `copy:`) is not in it.
const INSTALL_ROLE_PACKAGES: &str = r#"set -eu
root="$1"; shift
env APT_CONFIG="$MMDEBSTRAP_APT_CONFIG" apt-get --yes --download-only install "$@"
chroot "$root" env DEBIAN_FRONTEND=noninteractive DEBCONF_NONINTERACTIVE_SEEN=true \
	apt-get --yes install "$@"
"#;

/// The mmdebstrap essential hook (run while eatmydata is in) of [`INSTALL_ROLE_PACKAGES`].
fn install_role_packages(packages: &[String]) -> String {
    let mut hook = format!(
        "--essential-hook=sh -c {} install-role-packages \"$1\"",
        sh_quote(INSTALL_ROLE_PACKAGES)
    );
    for package in packages {
        hook.push(' ');
        hook.push_str(&sh_quote(package));
    }
    hook
}

/// What [`untar_in`] leaves out besides /dev.
const UNTAR_BELOW: &str = "--exclude=./etc/apt/sources.list";

/// How every layer tarball is unpacked: owners, xattrs (file capabilities) kept, /dev left out (devtmpfs
/// covers it at boot, and device nodes cannot be created in an unprivileged user namespace).
const UNTAR_OPTIONS: &str =
    "--extract --numeric-owner --xattrs --xattrs-include='*' --exclude='./dev/*'";

/// A path for an mmdebstrap special hook line, which splits on spaces.
fn path_arg(path: &Path) -> String {
    path.display().to_string()
}

/// Unpacks an overlay archive over the chroot `$1` (a mmdebstrap hook command).
fn cpio_in(archive: &Path) -> String {
    format!(
        "cpio --quiet --extract --make-directories --unconditional --directory \"$1\" < {}",
        sh_quote(&archive.display().to_string())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_key_changes_exactly_when_inputs_change() {
        let a = layer_key(json!({ "layer": "role", "base": "b1", "recipe": "r1" }));
        let same = layer_key(json!({ "recipe": "r1", "layer": "role", "base": "b1" }));
        assert_eq!(a, same, "key order does not matter");
        assert_ne!(
            a,
            layer_key(json!({ "layer": "role", "base": "b2", "recipe": "r1" }))
        );
        assert_ne!(
            a,
            layer_key(json!({ "layer": "role", "base": "b1", "recipe": "r2" }))
        );
    }

    fn recipe(packages: &[&str], apt_sources: &[&str]) -> Recipe {
        let strings = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect();
        Recipe {
            name: "encoder".into(),
            description: "encoder".into(),
            packages: strings(packages),
            units: vec!["changed-units-do-not-matter.service".into()],
            host_private: Vec::new(),
            host_file_units: Default::default(),
            apt_sources: strings(apt_sources),
            digest: Digest::of_bytes(b"recipe file"),
        }
    }

    fn versions(list: &[(&str, &str)]) -> Packages {
        list.iter()
            .map(|(name, version)| ((*name).to_owned(), (*version).to_owned()))
            .collect()
    }

    #[test]
    fn role_key_changes_exactly_when_the_locked_versions_do() {
        let base = Digest::of_bytes(b"base layer key");
        let encoder = recipe(&["ffmpeg"], &[]);
        let locked = versions(&[("ffmpeg", "7:5.1.6-0+deb12u1"), ("libx264-164", "2:0.164")]);
        let key = role_key(&base, &encoder, &locked);
        assert_eq!(
            key,
            role_key(&base.clone(), &encoder.clone(), &locked.clone())
        );
        // Units and the recipe file's bytes only reach the config layer.
        let mut other_units = encoder.clone();
        other_units.units.clear();
        other_units.digest = Digest::of_bytes(b"edited comment");
        assert_eq!(key, role_key(&base, &other_units, &locked));
        // A new version of any package, a package more or less, another base, another recipe list or
        // apt source: another layer.
        let newer = versions(&[("ffmpeg", "7:5.1.7-0+deb12u1"), ("libx264-164", "2:0.164")]);
        assert_ne!(key, role_key(&base, &encoder, &newer));
        let fewer = versions(&[("ffmpeg", "7:5.1.6-0+deb12u1")]);
        assert_ne!(key, role_key(&base, &encoder, &fewer));
        assert_ne!(
            key,
            role_key(&Digest::of_bytes(b"another base"), &encoder, &locked)
        );
        assert_ne!(
            key,
            role_key(&base, &recipe(&["ffmpeg", "x264"], &[]), &locked)
        );
        let sourced = recipe(
            &["ffmpeg"],
            &["deb http://example.org/debian bookworm main"],
        );
        assert_ne!(key, role_key(&base, &sourced, &locked));
    }

    #[test]
    fn pins_make_each_locked_version_the_candidate() {
        assert_eq!(
            apt_pins(&versions(&[
                ("ffmpeg", "7:5.1.6-0+deb12u1"),
                ("jq", "1.6-2.1")
            ])),
            "Package: ffmpeg\nPin: version 7:5.1.6-0+deb12u1\nPin-Priority: 1001\n\n\
             Package: jq\nPin: version 1.6-2.1\nPin-Priority: 1001\n\n"
        );
    }

    #[test]
    fn reads_the_installed_packages_dpkg_lists() {
        let listing = "installed adduser 3.134\nconfig-files oldpkg 1.0\nnot-installed gone \ninstalled libc6 2.36-9+deb12u14\n";
        assert_eq!(
            installed_packages(listing).unwrap(),
            versions(&[("adduser", "3.134"), ("libc6", "2.36-9+deb12u14")])
        );
        assert!(installed_packages("garbage\n").is_err());
    }

    #[test]
    fn the_hook_scripts_parse() {
        let scripts = [
            RECORD_PACKAGES,
            DEFER_INITRAMFS,
            TAKE_KERNEL,
            PACKAGES_IN,
            NEW_PACKAGES,
            INSTALL_ROLE_PACKAGES,
            AFTER_EATMYDATA,
        ];
        for script in scripts {
            let check = Command::new("sh")
                .args(["-n", "-c", script])
                .status()
                .unwrap();
            assert!(check.success(), "{script}");
        }
        assert!(RECORD_PACKAGES.contains(PINS_FILE));
    }

    #[test]
    fn script_substitutions_are_complete() {
        for script in [config_layer_script(), initrd_layer_script()] {
            assert!(
                !script.contains("SCRUB") && !script.contains("OPTIONS"),
                "{script}"
            );
            let check = Command::new("sh")
                .args(["-n", "-c", &script])
                .status()
                .unwrap();
            assert!(check.success(), "script parses");
        }
    }

    /// Runs a hook script as mmdebstrap would, with `args` as `$1`...
    fn run_hook(script: &str, args: &[&Path]) {
        let status = Command::new("sh")
            .args(["-c", script, "hook"])
            .args(args)
            .status()
            .unwrap();
        assert!(status.success(), "{script}");
    }

    #[test]
    fn the_package_cache_goes_in_linked_and_only_what_apt_fetched_comes_out() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let (cache, root) = (dir.path().join("cache"), dir.path().join("root"));
        std::fs::create_dir_all(&cache).unwrap();
        std::fs::write(cache.join("kept_1_all.deb"), "kept").unwrap();
        std::fs::write(cache.join("copied_1_all.deb"), "copied").unwrap();
        std::fs::write(cache.join("refetched_1_all.deb"), "stale").unwrap();
        run_hook(PACKAGES_IN, &[&root, &cache]);
        let archives = root.join("var/cache/apt/archives");
        let inode = |path: &Path| std::fs::metadata(path).unwrap().ino();
        assert_eq!(
            inode(&archives.join("kept_1_all.deb")),
            inode(&cache.join("kept_1_all.deb")),
            "hard links on one file system"
        );
        // What a copy from another file system is like, what apt fetched again over a bad file, and
        // what it fetched anew.
        for (name, content) in [
            ("copied_1_all.deb", "copied"),
            ("refetched_1_all.deb", "fresh"),
            ("new_1_all.deb", "new"),
        ] {
            let path = archives.join(name);
            std::fs::remove_file(&path).ok();
            std::fs::write(&path, content).unwrap();
        }
        let staging = Path::new(NEW_PACKAGES_DIR);
        run_hook(NEW_PACKAGES, &[&root, &cache, staging]);
        let mut out: Vec<String> = std::fs::read_dir(root.join(staging.strip_prefix("/").unwrap()))
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        out.sort();
        assert_eq!(out, ["new_1_all.deb", "refetched_1_all.deb"]);
        assert_eq!(
            std::fs::read_to_string(cache.join("kept_1_all.deb")).unwrap(),
            "kept",
            "the cache's files untouched"
        );
    }

    #[test]
    fn an_empty_package_cache_goes_in_as_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (cache, root) = (dir.path().join("cache"), dir.path().join("root"));
        std::fs::create_dir_all(&cache).unwrap();
        run_hook(PACKAGES_IN, &[&root, &cache]);
        let archives = root.join("var/cache/apt/archives");
        assert_eq!(std::fs::read_dir(archives).unwrap().count(), 0);
    }
}
