//! `netbootd check` and bare `netbootd`: exit status and messages, no network touched. The checks
//! serve on loopback, which every machine has (`lo`, 127.0.0.1/8).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

use lectern_store::{BlobRef, HostLayer, Manifest, Store};

fn netbootd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_netbootd"))
        .env_remove("LECTERN_STORE")
        .args(args)
        .output()
        .expect("netbootd runs")
}

fn check(args: &[&str]) -> (bool, String) {
    let output = netbootd(&[&["check-static"], args].concat());
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

#[test]
fn check_passes_a_sound_setup_and_names_every_problem_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    for file in ["undionly.kpxe", "snponly.efi", "kernel1"] {
        std::fs::write(dir.path().join(file), b"x").unwrap();
    }
    let root = dir.path().to_str().unwrap();
    let state = dir.path().join("state");
    let store = Store::create(dir.path().join("store")).unwrap();
    store.server_key().unwrap();
    let key = store.server_key_path();
    let common = [
        "--interface",
        "lo",
        "--server-ip",
        "127.0.0.1",
        "--state-dir",
        state.to_str().unwrap(),
        "--tftp-root",
        root,
        "--artifact-dir",
        root,
        "--tls-key",
        key.to_str().unwrap(),
    ];

    let (ok, out) = check(
        &[
            &common[..],
            &[
                "--kernel",
                "kernel1",
                "--host",
                "52:54:00:00:00:01,127.0.0.10,mixer1",
            ],
        ]
        .concat(),
    );
    assert!(ok, "{out}");
    assert_eq!(
        out,
        "ok: 1 netbooted hosts; lo holds 127.0.0.1; 0 store files match their sha256 (0.00 GiB: 0 hashed now, 0 unchanged since hashed)\n"
    );

    let broken = [
        "--kernel",
        "missing-kernel",
        "--host",
        "52:54:00:00:00:01,127.0.0.10,mixer1",
        "--host",
        "52:54:00:00:00:01,127.0.1.10,mixer2",
    ];
    let (ok, out) = check(&[&common[..], &broken].concat());
    assert!(!ok);
    assert!(
        out.contains("problem: mixer2 and mixer1 share MAC 52:54:00:00:00:01"),
        "{out}"
    );
    assert!(
        out.contains("problem: mixer2 reserves 127.0.1.10, outside the server's subnet"),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "problem: {root}/missing-kernel (the kernel of mixer1 and mixer2) is missing"
        )),
        "{out}"
    );
}

#[test]
fn bare_netbootd_serves_nothing_and_says_how_to_ask() {
    let output = netbootd(&["--config", "/nonexistent/master.toml"]);
    let said = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{said}");
    assert!(said.contains("netbootd serve --config FILE"), "{said}");
}

/// A room with a mixer and a camera, served on loopback from `store` (relative to the file).
const LOOPBACK_MASTER: &str = r#"
schema_version = 1

[conference]
name = "Loopback conference"
slug = "loop2027"
org = "loop"

[streaming]
ingest = "rtmp"
ingest_url = "rtmp://127.0.0.30/stream/{room}"

[network]
domain = "video.example.org"
subnet = "127.0.0.0/24"
gateway = "127.0.0.254"

[network.dhcp]
mode = "authoritative"
interface = "lo"

[netboot]
store = "store"

[[rooms]]
slug = "room1"
name = "Room 1"
sources = ["cam"]

[[machines]]
hostname = "control"
ip = "127.0.0.1"
role = "netboot"

[[machines]]
hostname = "room1-mixer"
mac = "52:54:00:00:00:10"
ip = "127.0.0.10"
role = "mixer"
room = "room1"
record_disk = "/dev/sdb"

[[machines]]
hostname = "room1-cam"
mac = "52:54:00:00:00:11"
ip = "127.0.0.11"
role = "source"
room = "room1"
source = "cam"
capture = { kind = "test" }
"#;

/// Puts a release of `role` (kernel, initrd, root) and the host layers of `hosts` into `store`.
fn build(store: &Store, role: &str, hosts: &[&str]) -> Manifest {
    let artifacts: BTreeMap<String, BlobRef> = ["vmlinuz", "initrd", "root.squashfs"]
        .into_iter()
        .map(|name| {
            let blob = store.put_blob(format!("{role} {name}").as_bytes()).unwrap();
            (name.to_owned(), blob)
        })
        .collect();
    let manifest = Manifest::new(role, vec![], artifacts, BTreeMap::new(), BTreeMap::new());
    store.add_manifest(&manifest).unwrap();
    for host in hosts {
        let blob = store
            .put_blob(format!("layer of {host}").as_bytes())
            .unwrap();
        let layer = HostLayer::new(host, role, blob.sha256.clone(), blob);
        store.add_host_layer(&layer).unwrap();
    }
    manifest
}

/// `netbootd check` with the loopback master file in `dir` (and `args`): exit code and what it said.
fn check_loopback(dir: &Path, args: &[&str]) -> (Option<i32>, String) {
    let master = dir.join("master.toml");
    let state = dir.join("state");
    let output = netbootd(
        &[
            &[
                "check",
                "--config",
                master.to_str().unwrap(),
                "--state-dir",
                state.to_str().unwrap(),
                "--tftp-root",
                dir.to_str().unwrap(),
            ],
            args,
        ]
        .concat(),
    );
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code(), said)
}

#[test]
fn check_says_the_cause_once_then_verifies_every_file_and_keeps_the_hashes() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("master.toml"), LOOPBACK_MASTER).unwrap();
    for file in ["undionly.kpxe", "snponly.efi"] {
        std::fs::write(dir.path().join(file), b"iPXE").unwrap();
    }
    let store = Store::create(dir.path().join("store")).unwrap();

    // An empty store: one line, the cause and what to run.
    let (code, said) = check_loopback(dir.path(), &[]);
    assert_eq!(code, Some(1), "{said}");
    assert_eq!(
        said,
        format!(
            "problem: the store {} has no images yet: none of the 2 netbooted hosts can boot (run: imgbuild all)\n",
            store.root().display()
        )
    );

    // One role built, the other not: its hosts are named once, with the command.
    build(&store, "mixer", &["room1-mixer"]);
    store.server_key().unwrap();
    let (code, said) = check_loopback(dir.path(), &[]);
    assert_eq!(code, Some(1), "{said}");
    assert_eq!(
        said,
        "problem: no source image in the store yet: room1-cam cannot boot (run: imgbuild role source)\n"
    );

    // All built: the files the last check hashed (the mixer's) are taken from the hashes it kept,
    // the new ones hashed; then every one is kept.
    let source = build(&store, "source", &["room1-cam"]);
    let (code, said) = check_loopback(dir.path(), &[]);
    assert_eq!(code, Some(0), "{said}");
    assert_eq!(
        said,
        "ok: 2 netbooted hosts; lo holds 127.0.0.1; 8 store files match their sha256 (0.00 GiB: 4 hashed now, 4 unchanged since hashed)\n"
    );
    let (code, said) = check_loopback(dir.path(), &[]);
    assert_eq!(code, Some(0), "{said}");
    assert!(
        said.contains("(0.00 GiB: 0 hashed now, 8 unchanged since hashed)"),
        "{said}"
    );
    let (_, said) = check_loopback(dir.path(), &["--rehash"]);
    assert!(
        said.contains("(0.00 GiB: 8 hashed now, 0 unchanged since hashed)"),
        "{said}"
    );

    // A root image damaged at its size: newest_whole_release cannot tell, the hash can.
    let root = store.blob_path(&source.artifacts["root.squashfs"].sha256);
    let damaged = b"SOURCE root.squashfs";
    std::fs::write(&root, damaged).unwrap();
    let (code, said) = check_loopback(dir.path(), &[]);
    assert_eq!(code, Some(1), "{said}");
    let found = lectern_store::Digest::of_bytes(damaged);
    assert_eq!(
        said,
        format!(
            "problem: {} (room1-cam's root image) is damaged: its content hashes to {}…, not to its name (delete it; imgbuild all builds it again)\n",
            root.display(),
            found.short()
        )
    );
}

#[test]
fn check_takes_the_store_flag_as_imgbuild_does() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("master.toml"), LOOPBACK_MASTER).unwrap();
    for file in ["undionly.kpxe", "snponly.efi"] {
        std::fs::write(dir.path().join(file), b"iPXE").unwrap();
    }
    // The master file's store does not exist; the one named on the command line is whole.
    let elsewhere = dir.path().join("elsewhere");
    let store = Store::create(&elsewhere).unwrap();
    store.server_key().unwrap();
    build(&store, "mixer", &["room1-mixer"]);
    build(&store, "source", &["room1-cam"]);
    let (code, said) = check_loopback(dir.path(), &[]);
    assert_eq!(code, Some(1), "{said}");
    assert!(
        said.contains("not a lectern store") && said.contains("imgbuild all --config"),
        "{said}"
    );
    let (code, said) = check_loopback(dir.path(), &["--store", elsewhere.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{said}");
    let master = dir.path().join("master.toml");
    let output = Command::new(env!("CARGO_BIN_EXE_netbootd"))
        .env("LECTERN_STORE", &elsewhere)
        .args(["check", "--config", master.to_str().unwrap()])
        .args(["--state-dir", dir.path().join("state").to_str().unwrap()])
        .args(["--tftp-root", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    // A command line netbootd cannot parse: exit code 2, as the README documents.
    let (code, said) = check_loopback(dir.path(), &["--no-such-flag"]);
    assert_eq!(code, Some(2), "{said}");
}
