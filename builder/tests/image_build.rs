//! Real image builds with mmdebstrap (minutes): base + the encoder role from the fixture plan, inspected,
//! rebuilt after a config-only change, rebuilt from scratch to prove the artifacts are reproducible, and
//! written as disk images.
//! Runs only with LECTERN_IMAGE_TESTS=1.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use lectern_builder::build::{BuildOptions, Builder, HOST_PREFIX, ROOT_SQUASHFS};
use lectern_builder::context::Plan;
use lectern_builder::disk::{self, DiskFormat, DiskSpec};
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

fn builder(store_dir: &Path) -> Builder {
    let repo = repo();
    let recipes = Recipes::load(&repo.join("recipes"), &repo.join("overlays")).unwrap();
    let options = BuildOptions {
        source_date_epoch: 1_700_000_000,
        apt_cache: std::env::var_os("LECTERN_APT_CACHE")
            .map_or_else(|| "/var/cache/lectern/apt".into(), PathBuf::from),
    };
    Builder::new(Store::create(store_dir).unwrap(), recipes, options).unwrap()
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
    let first = builder(first_dir.path());
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
    let started = Instant::now();
    let rebuilt = first.build_role(ROLE, &changed).unwrap();
    first.build_host_layers(ROLE, &changed).unwrap();
    eprintln!(
        "config-only rebuild: {:.2} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(rebuilt.image, manifest.image);
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
    // the key's pin and the authority's certificate are in the image): identical bytes.
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
    let again = builder(second_dir.path()).build_role(ROLE, &plan).unwrap();
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
}
