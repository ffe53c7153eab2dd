//! Building a role: base layer -> role layer -> config layer (the root image), each keyed by the sha256 of
//! its inputs and taken from the store when that key was built before. Per-host layers are small cpios.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use lectern_store::{BlobRef, Digest, HostLayer, LayerKind, LayerRecord, Manifest, Store};
use serde_json::{Value, json};

use crate::context::Plan;
use crate::recipe::{BASE, OverlayKind, Recipe, Recipes};
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

/// Runs after the eatmydata hook has taken its library out again: ldconfig ran while it was there,
/// and the loader's cache would name a library the image lacks.
const AFTER_EATMYDATA: &str = "chroot \"$1\" ldconfig";

/// Copies the kernel and initrd out of the base (`$1` = root, `$2` = output directory), drops them from the
/// rootfs (they boot it, they are not part of it) and stops later layers from regenerating the initrd.
const TAKE_KERNEL: &str = r#"set -eu
root="$1"; out="$2"
cp "$root"/boot/vmlinuz-* "$out"/vmlinuz
cp "$root"/boot/initrd.img-* "$out"/initrd
rm -f "$root"/boot/vmlinuz-* "$root"/boot/initrd.img-* "$root"/vmlinuz* "$root"/initrd.img*
sed -i 's/^update_initramfs=.*/update_initramfs=no/' "$root"/etc/initramfs-tools/update-initramfs.conf
"#;

/// Where the root image keeps GStreamer's plugin registry (roles with GStreamer and Python's bindings).
const GST_REGISTRY: &str = "/usr/lib/lectern/gstreamer-registry.bin";

/// zstd level 3: measured 6.5 s for a 700 MB base (216 MB), vs 16 s at level 9 (201 MB) and 3 s for lz4
/// (318 MB). The image lives in RAM, so size matters more than the last seconds.
const MKSQUASHFS_OPTIONS: &str =
    "-comp zstd -Xcompression-level 3 -b 1M -noappend -no-progress -quiet";

/// Builds the root image from the role layer's tarball and the rendered config overlay, inside a user
/// namespace so that ownership is right without real root. Arguments: work dir, role tar, config cpio,
/// output path, source date epoch, then the units to enable.
const CONFIG_LAYER: &str = r#"set -eu
work="$1"; role_tar="$2"; config_cpio="$3"; out="$4"; epoch="$5"; shift 5
root="$work/root"
trap 'rm -rf "$root"' EXIT
mkdir "$root"
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
}

pub struct Builder {
    store: Store,
    recipes: Recipes,
    options: BuildOptions,
    tool_versions: BTreeMap<String, String>,
}

impl Builder {
    /// Checks that the image tools are installed before anything starts.
    pub fn new(store: Store, recipes: Recipes, options: BuildOptions) -> Result<Self> {
        tools::require(tools::IMAGE_TOOLS)?;
        std::fs::create_dir_all(&options.apt_cache)
            .with_context(|| format!("creating the apt cache {}", options.apt_cache.display()))?;
        let tool_versions = tools::versions(tools::IMAGE_TOOLS)?;
        Ok(Self {
            store,
            recipes,
            options,
            tool_versions,
        })
    }

    pub fn recipes(&self) -> &Recipes {
        &self.recipes
    }

    /// Builds (or finds) every layer of `role` and records the result as the role's newest release.
    pub fn build_role(&self, role: &str, plan: &Plan) -> Result<Manifest> {
        let recipe = self.recipes.role(role)?;
        let base = self.base_layer()?;
        let role_layer = if role == BASE {
            None
        } else {
            Some(self.role_layer(&base, recipe)?)
        };
        let below = role_layer.as_ref().unwrap_or(&base);
        let pin = self.store.server_key()?.pin;
        let config = self.config_layer(role, below, &plan.role_context(role, &pin))?;

        let artifacts = BTreeMap::from([
            (VMLINUZ.to_owned(), base.outputs[VMLINUZ].clone()),
            (INITRD.to_owned(), base.outputs[INITRD].clone()),
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
        let layers = [Some(base), role_layer, Some(config)]
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

    fn base_layer(&self) -> Result<LayerRecord> {
        let base = &self.recipes.base;
        let image_overlay = Tree::load(&self.recipes.overlay_dir(BASE, OverlayKind::Image), None)?;
        let key = layer_key(json!({
            "layer": "base",
            "packages": base.packages,
            "debian": { "suite": self.recipes.debian.suite, "mirror": self.recipes.debian.mirror,
                        "variant": self.recipes.debian.variant },
            "image_overlay": image_overlay.digest(),
            "scripts": [SCRUB, TAKE_KERNEL, AFTER_EATMYDATA],
            "dpkg_path_filters": DPKG_PATH_FILTERS,
            "mmdebstrap": self.tool_versions.get("mmdebstrap"),
            "source_date_epoch": self.options.source_date_epoch,
        }));
        self.layer(
            LayerKind::Base,
            key,
            &[ROOTFS_TAR, VMLINUZ, INITRD],
            |work| {
                let overlay = work.join("image-overlay.cpio");
                std::fs::write(
                    &overlay,
                    image_overlay.to_cpio("", self.options.source_date_epoch),
                )?;
                let mut command = self.mmdebstrap(&self.recipes.debian.variant, base);
                command.arg(format!("--essential-hook={}", cpio_in(&overlay)));
                command.arg(format!(
                    "--customize-hook=sh -c {} take-kernel \"$1\" {}",
                    sh_quote(TAKE_KERNEL),
                    path_arg(work)
                ));
                self.run_mmdebstrap(command, work, "base layer")
            },
        )
    }

    fn role_layer(&self, base: &LayerRecord, recipe: &Recipe) -> Result<LayerRecord> {
        let key = role_key(&base.key, &recipe.packages);
        self.layer(LayerKind::Role, key, &[ROOTFS_TAR], |work| {
            let base_tar = self.store.blob_path(&base.outputs[ROOTFS_TAR].sha256);
            let mut command = self.mmdebstrap("custom", recipe);
            command.arg(format!("--setup-hook={}", untar_in(&base_tar)));
            self.run_mmdebstrap(command, work, &format!("{} role layer", recipe.name))
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
                .arg(work)
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
            eprintln!("{label}: unchanged, taken from the store");
            return Ok(record);
        }
        let work = tempfile::Builder::new()
            .prefix(&format!("{:?}-", kind).to_lowercase())
            .tempdir_in(self.store.root().join("tmp"))?;
        build(work.path()).with_context(|| format!("building {label}"))?;
        let mut record = LayerRecord {
            kind,
            key,
            outputs: BTreeMap::new(),
        };
        for name in outputs {
            let blob: BlobRef = self.store.import_blob(&work.path().join(name))?;
            record.outputs.insert((*name).to_owned(), blob);
        }
        self.store.put_layer(&record)?;
        Ok(record)
    }

    /// An mmdebstrap command line producing `rootfs.tar` with `recipe`'s packages and the apt cache wired in.
    fn mmdebstrap(&self, variant: &str, recipe: &Recipe) -> Command {
        let cache = path_arg(&self.options.apt_cache);
        let mut command = Command::new(tools::MMDEBSTRAP.command);
        command
            .env(
                "SOURCE_DATE_EPOCH",
                self.options.source_date_epoch.to_string(),
            )
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
            .arg("--setup-hook=mkdir -p \"$1\"/var/cache/apt/archives")
            .arg(format!(
                "--setup-hook=sync-in {cache} /var/cache/apt/archives/"
            ))
            .arg(format!(
                "--customize-hook=sync-out /var/cache/apt/archives {cache}"
            ))
            .arg(format!(
                "--customize-hook=sh -c {} scrub \"$1\"",
                sh_quote(SCRUB)
            ));
        if !recipe.packages.is_empty() {
            command.arg(format!("--include={}", recipe.packages.join(",")));
        }
        command
    }

    fn run_mmdebstrap(&self, mut command: Command, work: &Path, label: &str) -> Result<()> {
        command
            .arg(&self.recipes.debian.suite)
            .arg(work.join(ROOTFS_TAR))
            .arg(&self.recipes.debian.mirror);
        step::run(label, &mut command, &work.join("mmdebstrap.log"))?;
        Ok(())
    }
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

/// The role layer's key: the base below it and the packages installed on top. Nothing else of the recipe
/// goes in: its units and overlays only reach the config layer, so editing them rebuilds only that.
fn role_key(base: &Digest, packages: &[String]) -> Digest {
    layer_key(
        json!({ "layer": "role", "base": base, "packages": packages, "scripts": [SCRUB, AFTER_EATMYDATA],
                      "dpkg_path_filters": DPKG_PATH_FILTERS }),
    )
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
/// /dev must stay out, mmdebstrap creates its own device entries and fails on existing ones.
fn untar_in(tarball: &Path) -> String {
    format!(
        "tar {UNTAR_OPTIONS} --directory \"$1\" --file {}",
        sh_quote(&tarball.display().to_string())
    )
}

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

    #[test]
    fn role_key_follows_the_base_and_the_packages() {
        let base = Digest::of_bytes(b"base layer key");
        let packages = ["ffmpeg".to_owned()];
        let key = role_key(&base, &packages);
        assert_eq!(key, role_key(&base.clone(), &packages.clone()));
        assert_ne!(key, role_key(&Digest::of_bytes(b"another base"), &packages));
        assert_ne!(
            key,
            role_key(&base, &["ffmpeg".to_owned(), "x264".to_owned()])
        );
    }

    #[test]
    fn config_script_substitutions_are_complete() {
        let script = config_layer_script();
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
