//! Real image builds with mmdebstrap (minutes): base + the encoder role from the fixture plan, inspected,
//! rebuilt after a config-only change, rebuilt from scratch to prove the artifacts are reproducible, and
//! written as disk images. The same builds prove the lock file: the first resolves the packages from the
//! mirror and locks them, the second installs exactly those; a lock naming a version the mirror lacks
//! fails; `update` against a small local apt repository says what changed.
//! Runs only with LECTERN_IMAGE_TESTS=1.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use lectern_builder::build::{BuildOptions, Builder, HOST_PREFIX, ROOT_SQUASHFS};
use lectern_builder::context::Plan;
use lectern_builder::disk::{self, DiskFormat, DiskSpec};
use lectern_builder::lock::{self, Lock, Packages};
use lectern_builder::recipe::Recipes;
use lectern_store::{Manifest, Store};

const ROLE: &str = "encoder";
const ENCODER_HOST: &str = "lameere-enc";
const SECRET: &str = "lectern-test-secret-7f3a9c";

fn enabled() -> bool {
    if std::env::var("LECTERN_IMAGE_TESTS").as_deref() == Ok("1") {
        return true;
    }
    eprintln!("skipping: real image builds take minutes; set LECTERN_IMAGE_TESTS=1 to run them");
    false
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// The fixture master file (one room on the VM lab's network). Its secrets file must be 0600 to be used,
/// which git cannot record.
fn fixture_master() -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let fixtures = repo().join("builder/tests/fixtures");
    fs::set_permissions(
        fixtures.join("fixture-secrets.toml"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    fixtures.join("master.toml")
}

/// The fixture's plan with the encoder's bitrate changed, written next to a copy of its secrets.
fn master_with_bitrate(dir: &Path, video_kbps: u32) -> PathBuf {
    let fixtures = repo().join("builder/tests/fixtures");
    let text = fs::read_to_string(fixtures.join("master.toml")).unwrap();
    let changed = text.replace("video_kbps = 3000", &format!("video_kbps = {video_kbps}"));
    assert_ne!(text, changed);
    fs::write(dir.join("master.toml"), changed).unwrap();
    fs::copy(
        fixtures.join("fixture-secrets.toml"),
        dir.join("fixture-secrets.toml"),
    )
    .unwrap();
    dir.join("master.toml")
}

fn apt_cache() -> PathBuf {
    std::env::var_os("LECTERN_APT_CACHE")
        .map_or_else(|| "/var/cache/lectern/apt".into(), PathBuf::from)
}

/// A builder over the repository's recipes into `store_dir`, with the lock file `lock_file`.
fn builder(store_dir: &Path, lock_file: &Path) -> Builder {
    let repo = repo();
    builder_with(
        store_dir,
        Recipes::load(&repo.join("recipes"), &repo.join("overlays")).unwrap(),
        &apt_cache(),
        lock_file,
    )
}

fn builder_with(store_dir: &Path, recipes: Recipes, apt_cache: &Path, lock_file: &Path) -> Builder {
    let options = BuildOptions {
        source_date_epoch: 1_700_000_000,
        apt_cache: apt_cache.to_owned(),
        lock_file: lock_file.to_owned(),
    };
    Builder::new(Store::create(store_dir).unwrap(), recipes, options).unwrap()
}

/// The installed packages of an unpacked root, from its dpkg status file.
fn dpkg_status(root: &Path) -> Packages {
    let status = fs::read_to_string(root.join("var/lib/dpkg/status")).unwrap();
    status
        .split("\n\n")
        .filter(|stanza| {
            stanza
                .lines()
                .any(|line| line == "Status: install ok installed")
        })
        .map(|stanza| {
            let field = |name: &str| {
                stanza
                    .lines()
                    .find_map(|line| line.strip_prefix(name))
                    .unwrap_or_else(|| panic!("no {name} in {stanza}"))
                    .to_owned()
            };
            (field("Package: "), field("Version: "))
        })
        .collect()
}

/// How many layer records the store holds: a build that reuses every layer adds none.
fn layer_records(store: &Store) -> usize {
    fs::read_dir(store.root().join("layers")).unwrap().count()
}

fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("lectern-image-test-")
        .tempdir()
        .unwrap()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

/// Extracts `root.squashfs` so that its files (compressed in the image) can be read and grepped.
fn unsquash(store: &Store, manifest: &Manifest, into: &Path) -> PathBuf {
    let image = store.blob_path(&manifest.artifacts["root.squashfs"].sha256);
    let root = into.join("root");
    let status = Command::new("unsquashfs")
        .args(["-quiet", "-no-progress", "-d"])
        .arg(&root)
        .arg(&image)
        .status();
    assert!(status.unwrap().success(), "unsquashfs failed");
    root
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                pending.push(entry.path());
            } else if kind.is_file() {
                files.push(entry.path());
            }
        }
    }
    files
}

/// A file of the per-host layer (its public part, then its secrets) as `(mode, content)`, read with
/// GNU cpio.
fn host_layer_file(store: &Store, hostname: &str, path: &str) -> (u32, String) {
    let layer = store
        .host_layer(hostname)
        .unwrap()
        .expect("host layer recorded");
    let out = scratch();
    for blob in std::iter::once(&layer.blob).chain(&layer.secrets) {
        let status = Command::new("cpio")
            .args(["--quiet", "-idm", "-D"])
            .arg(out.path())
            .arg("-F")
            .arg(store.blob_path(&blob.sha256))
            .status();
        assert!(status.unwrap().success());
    }
    let file = out.path().join(HOST_PREFIX).join(path);
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    (mode, fs::read_to_string(&file).unwrap())
}

#[test]
fn encoder_image_is_complete_secret_free_and_reproducible() {
    if !enabled() {
        return;
    }
    let plan = Plan::load(&fixture_master()).unwrap();
    let first_dir = scratch();
    let lock_dir = scratch();
    let lock_file = lock_dir.path().join("master.lock");
    let first = builder(first_dir.path(), &lock_file);
    let started = Instant::now();
    let manifest = first.build_role(ROLE, &plan).unwrap();
    first.build_host_layers(ROLE, &plan).unwrap();
    eprintln!(
        "cold build of base + {ROLE}: {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let store = Store::open(first_dir.path()).unwrap();

    // The root image holds the role, its unit enabled, and nothing host-specific or unreproducible.
    let work = scratch();
    let root = unsquash(&store, &manifest, work.path());
    assert_eq!(
        fs::read_to_string(root.join("etc/lectern/role")).unwrap(),
        "encoder\n"
    );

    // With no lock yet, the build resolved the packages from the mirror and locked them: the lock
    // names every package the image holds, at the version it holds, and nothing else.
    let lock = Lock::load(&lock_file)
        .unwrap()
        .expect("the first build writes the lock");
    assert_eq!(lock.layers.keys().collect::<Vec<_>>(), ["base", "encoder"]);
    let (base, encoder) = (&lock.layers["base"], &lock.layers["encoder"]);
    assert!(base.packages.contains_key("systemd") && encoder.packages.contains_key("ffmpeg"));
    assert!(
        !encoder.packages.contains_key("systemd"),
        "the encoder's entry holds only what it adds to the base"
    );
    assert_eq!(
        dpkg_status(&root),
        Lock::layer_packages(&base.packages, &encoder.packages),
        "the lock is not the image's dpkg status"
    );
    let wants = root.join("etc/systemd/system/lectern-role.target.wants/lectern-encoder.service");
    assert!(wants.symlink_metadata().is_ok(), "role unit enabled");
    let role_target = root.join("etc/systemd/system/multi-user.target.wants/lectern-role.target");
    assert!(role_target.symlink_metadata().is_ok(), "base units enabled");
    assert!(root.join("usr/bin/ffmpeg").exists());
    assert!(
        !root.join("etc/lectern/encoder.args").exists(),
        "per-host config stays out of the role image"
    );
    assert_eq!(fs::read(root.join("etc/machine-id")).unwrap(), b"");
    assert_eq!(
        fs::read_to_string(root.join("etc/hostname")).unwrap(),
        "lectern\n"
    );
    let ssh_keys: Vec<_> = fs::read_dir(root.join("etc/ssh"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with("ssh_host_"))
        .collect();
    assert!(
        ssh_keys.is_empty(),
        "ssh host keys in the image: {ssh_keys:?}"
    );
    // The journal upload is enabled and trusts the store's journal authority: its certificate, and
    // nothing of its key (checked below with the other secrets).
    let upload =
        root.join("etc/systemd/system/multi-user.target.wants/systemd-journal-upload.service");
    assert!(upload.symlink_metadata().is_ok(), "journal upload enabled");
    assert!(root.join("lib/systemd/systemd-journal-upload").exists());
    assert_eq!(
        fs::read_to_string(root.join("etc/lectern/journal-ca.pem"))
            .unwrap()
            .trim_end(),
        fs::read_to_string(store.journal_ca_certificate_path())
            .unwrap()
            .trim_end()
    );
    let ca_key = fs::read_to_string(store.journal_ca_key_path()).unwrap();
    let ca_key = ca_key.lines().nth(1).expect("a PEM body line").to_owned();

    // No secret in any byte of the role's artifacts and layers, nor in any file of the unpacked root.
    let blobs: Vec<_> = manifest.blobs().collect();
    for blob in blobs {
        let bytes = fs::read(store.blob_path(&blob.sha256)).unwrap();
        assert!(
            !contains(&bytes, SECRET.as_bytes()),
            "secret in blob {}",
            blob.sha256
        );
    }
    for file in files_under(&root) {
        let bytes = fs::read(&file).unwrap();
        assert!(
            !contains(&bytes, SECRET.as_bytes()) && !contains(&bytes, ca_key.as_bytes()),
            "secret in {}",
            file.display()
        );
    }

    // The per-host layer carries the rendered config with the secret, readable by root only, in a
    // part of its own that netbootd releases over TLS alone; the part served over HTTP has none.
    let layer = store.host_layer(ENCODER_HOST).unwrap().unwrap();
    let public = fs::read(store.blob_path(&layer.blob.sha256)).unwrap();
    assert!(
        !contains(&public, SECRET.as_bytes()),
        "a secret in the layer served over HTTP"
    );
    let secrets = store.blob_path(&layer.secrets.as_ref().expect("a secrets part").sha256);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(&secrets).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let (mode, args) = host_layer_file(&store, ENCODER_HOST, "etc/lectern/encoder.args");
    assert_eq!(mode, 0o600);
    assert!(args.contains(&format!(
        "\nrtmp://stream-backend.video.example.org/stream/lameere?key={SECRET}\n"
    )));
    assert!(
        args.contains("\n-i\ntcp://10.99.0.64:15000\n") && args.contains("\n-b:v\n3000k\n"),
        "{args}"
    );
    let (_, hostname) = host_layer_file(&store, ENCODER_HOST, "etc/hostname");
    assert_eq!(hostname, "lameere-enc\n");

    // A bitrate change touches only the per-host layer: same image, new host layer, seconds.
    let edited = scratch();
    let changed = Plan::load(&master_with_bitrate(edited.path(), 4500)).unwrap();
    let before = store.host_layer(ENCODER_HOST).unwrap().unwrap();
    let records = layer_records(&store);
    let started = Instant::now();
    let rebuilt = first.build_role(ROLE, &changed).unwrap();
    first.build_host_layers(ROLE, &changed).unwrap();
    eprintln!(
        "config-only rebuild: {:.2} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(rebuilt.image, manifest.image);
    // Built from the lock now, and from the store's layers: none was built again.
    assert_eq!(rebuilt.layers, manifest.layers);
    assert_eq!(layer_records(&store), records);
    // The encoder's arguments carry the stream key: they are in the layer's secrets part.
    let after = store.host_layer(ENCODER_HOST).unwrap().unwrap();
    assert_ne!(after.secrets, before.secrets);
    assert_eq!(after.blob, before.blob, "nothing public changed");
    assert!(
        host_layer_file(&store, ENCODER_HOST, "etc/lectern/encoder.args")
            .1
            .contains("\n-b:v\n4500k\n")
    );

    // From scratch again, in a fresh store with the same netbootd key and journal authority (inputs:
    // the key's pin and the authority's certificate are in the image), installing the locked
    // versions this time: identical bytes.
    let second_dir = scratch();
    let first_store = Store::open(first_dir.path()).unwrap();
    for key in [
        first_store.server_key_path(),
        first_store.journal_ca_key_path(),
        first_store.journal_ca_certificate_path(),
    ] {
        let copy = second_dir
            .path()
            .join("keys")
            .join(key.file_name().unwrap());
        fs::create_dir_all(copy.parent().unwrap()).unwrap();
        fs::copy(&key, &copy).unwrap();
    }
    let started = Instant::now();
    let again = builder(second_dir.path(), &lock_file)
        .build_role(ROLE, &plan)
        .unwrap();
    eprintln!(
        "cold build of base + {ROLE} from the lock: {:.0} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        Lock::load(&lock_file).unwrap().as_ref(),
        Some(&lock),
        "a build from the lock changed it"
    );
    assert_eq!(
        again.artifacts, manifest.artifacts,
        "artifacts differ between two builds"
    );
    assert_eq!(again.image, manifest.image);
    let layer_outputs = |m: &Manifest| {
        m.layers
            .iter()
            .map(|l| l.outputs.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        layer_outputs(&again),
        layer_outputs(&manifest),
        "layer outputs differ between two builds"
    );

    // The same image as a disk, from each store: identical bytes, the root partition is the netboot root
    // byte for byte, no secret anywhere on it; qcow2 holds the same disk.
    let disks = scratch();
    let write = |store: &Store, manifest: &Manifest, format: DiskFormat, name: &str| {
        let path = disks.path().join(name);
        let spec = DiskSpec {
            manifest,
            server_url: "http://10.99.0.1:8080",
            format,
            source_date_epoch: 1_700_000_000,
        };
        let layout = disk::write_disk(store, &spec, &path).unwrap();
        (path, layout)
    };
    let started = Instant::now();
    let (raw, layout) = write(&store, &manifest, DiskFormat::Raw, "first.raw");
    eprintln!("raw disk: {:.1} s", started.elapsed().as_secs_f64());
    let second_store = Store::open(second_dir.path()).unwrap();
    let (raw_again, _) = write(&second_store, &again, DiskFormat::Raw, "second.raw");
    let disk_bytes = fs::read(&raw).unwrap();
    assert!(
        disk_bytes == fs::read(&raw_again).unwrap(),
        "two disks of one image differ"
    );
    let root_image = fs::read(store.blob_path(&manifest.artifacts[ROOT_SQUASHFS].sha256)).unwrap();
    let offset = layout.root_offset as usize;
    assert!(
        disk_bytes[offset..offset + root_image.len()] == root_image[..],
        "the root partition is not the netboot root image"
    );
    assert!(
        !contains(&disk_bytes, SECRET.as_bytes()),
        "secret on the disk"
    );
    let cmdline = disk::cmdline(&manifest, "http://10.99.0.1:8080").unwrap();
    assert!(
        contains(&disk_bytes, cmdline.as_bytes()),
        "the UKI's command line is not on the disk"
    );
    let (qcow2, _) = write(&store, &manifest, DiskFormat::Qcow2, "first.qcow2");
    let status = Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "qcow2"])
        .arg(&raw)
        .arg(&qcow2)
        .status()
        .unwrap();
    assert!(status.success(), "the qcow2 disk differs from the raw one");
    eprintln!(
        "disk sizes: raw {} MiB, qcow2 {} MiB",
        fs::metadata(&raw).unwrap().len() >> 20,
        fs::metadata(&qcow2).unwrap().len() >> 20
    );

    let started = Instant::now();
    a_lock_the_mirror_cannot_honour_fails(&store, &plan, &lock, &manifest);
    update_says_what_a_mirror_changed(&store, &lock_file);
    eprintln!("lock file checks: {:.0} s", started.elapsed().as_secs_f64());
}

/// A lock naming a version the mirror does not have: the build fails before building anything, naming
/// that package and version and what to run, and the role's current image stays current.
fn a_lock_the_mirror_cannot_honour_fails(
    store: &Store,
    plan: &Plan,
    lock: &Lock,
    current: &Manifest,
) {
    let dir = scratch();
    let stale_lock = dir.path().join("master.lock");
    let mut stale = lock.clone();
    let encoder = stale.layers.get_mut(ROLE).unwrap();
    let ffmpeg = encoder.packages.get_mut("ffmpeg").unwrap();
    let locked = std::mem::replace(ffmpeg, "7:0.0-lectern-gone".to_owned());
    stale.write(&stale_lock).unwrap();
    let records = layer_records(store);
    let error = builder(store.root(), &stale_lock)
        .build_role(ROLE, plan)
        .unwrap_err();
    let error = format!("{error:#}");
    assert!(
        error.contains(&format!(
            "the mirror no longer has 1 of the versions {} locks for the encoder layer:\n  ffmpeg 7:0.0-lectern-gone (it has {locked})\n",
            stale_lock.display()
        )) && error.contains("`imgbuild update`"),
        "{error}"
    );
    assert_eq!(
        store.latest_manifest(ROLE).unwrap().unwrap().image,
        current.image,
        "a failed build changed the current image"
    );
    assert_eq!(
        layer_records(store),
        records,
        "a failed build stored a layer"
    );
    assert_eq!(
        Lock::load(&stale_lock).unwrap(),
        Some(stale),
        "a failed build changed the lock"
    );
}

/// A dummy package for the local repository: `name` at `version`, depending on `depends`.
fn dummy_deb(repo: &Path, name: &str, version: &str, depends: &[&str]) {
    let tree = scratch();
    fs::create_dir_all(tree.path().join("DEBIAN")).unwrap();
    fs::create_dir_all(tree.path().join("usr/share/lectern-lock-test")).unwrap();
    fs::write(
        tree.path().join("usr/share/lectern-lock-test").join(name),
        version,
    )
    .unwrap();
    let depends = if depends.is_empty() {
        String::new()
    } else {
        format!("Depends: {}\n", depends.join(", "))
    };
    fs::write(
        tree.path().join("DEBIAN/control"),
        format!(
            "Package: {name}\nVersion: {version}\nArchitecture: all\nMaintainer: lectern <lectern@localhost>\n{depends}Description: lock file test package\n"
        ),
    )
    .unwrap();
    let status = Command::new("dpkg-deb")
        .args(["--root-owner-group", "--build"])
        .arg(tree.path())
        .arg(repo.join(format!("{name}_{version}_all.deb")))
        .output()
        .unwrap();
    assert!(status.status.success(), "{status:?}");
}

/// A flat apt repository in `repo` holding exactly `packages` (name, version, depends).
fn publish(repo: &Path, packages: &[(&str, &str, &[&str])]) {
    for entry in fs::read_dir(repo).unwrap() {
        fs::remove_file(entry.unwrap().path()).unwrap();
    }
    for (name, version, depends) in packages {
        dummy_deb(repo, name, version, depends);
    }
    for (index, file) in [("packages", "Packages"), ("release", "Release")] {
        let output = Command::new("apt-ftparchive")
            .arg(index)
            .arg(".")
            .current_dir(repo)
            .output()
            .expect("apt-ftparchive (apt-get install apt-utils)");
        assert!(output.status.success(), "{output:?}");
        fs::write(repo.join(file), output.stdout).unwrap();
    }
}

/// `update` against a local apt repository (a role recipe's extra apt source) that publishes a new
/// version: the dry run names it, the update locks it and says what changed (old -> new, added,
/// removed), leaves the other layers alone, and the next build takes the layer it built. Then the
/// recipe asks for one more package, which the next build adds to the lock, keeping the rest.
fn update_says_what_a_mirror_changed(store: &Store, lock_file: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let dir = scratch();
    // mmdebstrap reads the repository from its user namespace: world-readable.
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let apt_repo = dir.path().join("repo");
    fs::create_dir(&apt_repo).unwrap();
    publish(
        &apt_repo,
        &[
            ("lectern-lock-probe", "1.0", &["lectern-lock-probe-dep"]),
            ("lectern-lock-probe-dep", "1.0", &[]),
        ],
    );
    // The repository's recipes, and a role with that repository as its extra apt source.
    let recipes = dir.path().join("recipes");
    fs::create_dir(&recipes).unwrap();
    for entry in fs::read_dir(repo().join("recipes")).unwrap() {
        let path = entry.unwrap().path();
        fs::copy(&path, recipes.join(path.file_name().unwrap())).unwrap();
    }
    let write_recipe = |packages: &[&str]| {
        let packages: Vec<String> = packages.iter().map(|name| format!("{name:?}")).collect();
        fs::write(
            recipes.join("probe.toml"),
            format!(
                "description = \"lock file test\"\nextends = \"base\"\npackages = [{}]\n\
                 apt_sources = [\"deb [trusted=yes] copy:{} ./\"]\n",
                packages.join(", "),
                apt_repo.display()
            ),
        )
        .unwrap();
    };
    write_recipe(&["lectern-lock-probe"]);
    // Its own package cache: the test's packages stay out of the shared one.
    let apt_cache = dir.path().join("apt");
    let probe = || {
        let recipes = Recipes::load(&recipes, &repo().join("overlays")).unwrap();
        builder_with(store.root(), recipes, &apt_cache, lock_file)
    };
    let roles = ["probe".to_owned()];

    let started = Instant::now();
    let first = probe().update(&roles, false).unwrap();
    eprintln!(
        "update locking a new role: {:.0} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        first
            .resolved
            .iter()
            .map(|(layer, _)| layer.as_str())
            .collect::<Vec<_>>(),
        ["probe"],
        "only the new role is resolved: {:?}",
        first.resolved
    );
    assert_eq!(
        first.after.layers["probe"].packages,
        Packages::from([
            ("lectern-lock-probe".to_owned(), "1.0".to_owned()),
            ("lectern-lock-probe-dep".to_owned(), "1.0".to_owned()),
        ])
    );
    assert_eq!(Lock::load(lock_file).unwrap().as_ref(), Some(&first.after));

    publish(
        &apt_repo,
        &[
            ("lectern-lock-probe", "2.0", &["lectern-lock-probe-extra"]),
            ("lectern-lock-probe-extra", "1.0", &[]),
        ],
    );
    let dry = probe().update(&roles, true).unwrap();
    assert_eq!(dry.resolved.len(), 1, "{:?}", dry.resolved);
    let (layer, reason) = &dry.resolved[0];
    assert_eq!(layer, "probe");
    assert_eq!(
        reason,
        "the mirror has other versions of 2 of its packages:\n  lectern-lock-probe: 1.0 -> 2.0\n  lectern-lock-probe-dep: 1.0 -> none"
    );
    assert_eq!(
        Lock::load(lock_file).unwrap().as_ref(),
        Some(&first.after),
        "a dry run wrote"
    );

    let started = Instant::now();
    let second = probe().update(&roles, false).unwrap();
    eprintln!(
        "update of a changed role: {:.0} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        lock::describe_changes(&second.before, &second.after),
        "base: unchanged\n\
         encoder: unchanged\n\
         probe:\n\
         \x20 lectern-lock-probe: 1.0 -> 2.0\n\
         \x20 lectern-lock-probe-dep: removed (was 1.0)\n\
         \x20 lectern-lock-probe-extra: added 1.0\n"
    );
    assert_eq!(Lock::load(lock_file).unwrap().as_ref(), Some(&second.after));

    // The next build takes the layers the update built.
    let records = layer_records(store);
    let started = Instant::now();
    assert!(probe().package_layers("probe").unwrap().role.is_some());
    assert_eq!(
        layer_records(store),
        records,
        "the build after the update built a layer"
    );
    eprintln!(
        "build after the update: {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // The recipe asks for one more package: the next build resolves the layer again, the new package
    // at the mirror's version, every locked one kept though the mirror has a newer one.
    publish(
        &apt_repo,
        &[
            ("lectern-lock-probe", "2.0", &["lectern-lock-probe-extra"]),
            ("lectern-lock-probe", "3.0", &["lectern-lock-probe-extra"]),
            ("lectern-lock-probe-extra", "1.0", &[]),
            ("lectern-lock-probe-more", "1.0", &[]),
        ],
    );
    write_recipe(&["lectern-lock-probe", "lectern-lock-probe-more"]);
    let started = Instant::now();
    probe().package_layers("probe").unwrap();
    eprintln!(
        "build after a recipe change: {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let lock = Lock::load(lock_file).unwrap().unwrap();
    assert_eq!(
        lock.layers["probe"].packages,
        Packages::from([
            ("lectern-lock-probe".to_owned(), "2.0".to_owned()),
            ("lectern-lock-probe-extra".to_owned(), "1.0".to_owned()),
            ("lectern-lock-probe-more".to_owned(), "1.0".to_owned()),
        ])
    );
    assert_eq!(lock.layers["base"], second.after.layers["base"]);
    assert_eq!(lock.layers["encoder"], second.after.layers["encoder"]);
}
