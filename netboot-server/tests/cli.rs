//! `netbootd check` and bare `netbootd`: exit status and messages, no network touched.

use std::process::Command;

fn check(args: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_netbootd"))
        .arg("check-static")
        .args(args)
        .output()
        .expect("netbootd runs");
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
    let store = lectern_store::Store::create(dir.path().join("store")).unwrap();
    store.server_key().unwrap();
    let key = store.server_key_path();
    let common = [
        "--interface",
        "br0",
        "--server-ip",
        "10.99.0.1",
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
                "52:54:00:00:00:01,10.99.0.10,mixer1",
            ],
        ]
        .concat(),
    );
    assert!(ok, "{out}");
    assert_eq!(out, "ok: 1 hosts\n");

    let broken = [
        "--kernel",
        "missing-kernel",
        "--host",
        "52:54:00:00:00:01,10.99.0.10,mixer1",
        "--host",
        "52:54:00:00:00:01,10.98.0.10,mixer2",
    ];
    let (ok, out) = check(&[&common[..], &broken].concat());
    assert!(!ok);
    assert!(
        out.contains("problem: mixer2 and mixer1 share MAC 52:54:00:00:00:01"),
        "{out}"
    );
    assert!(
        out.contains("problem: mixer2 reserves 10.98.0.10, outside the server's subnet"),
        "{out}"
    );
    assert!(out.contains("missing-kernel, which is missing"), "{out}");
}

#[test]
fn bare_netbootd_serves_nothing_and_says_how_to_ask() {
    let output = Command::new(env!("CARGO_BIN_EXE_netbootd"))
        .args(["--config", "/nonexistent/master.toml"])
        .output()
        .expect("netbootd runs");
    let said = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{said}");
    assert!(said.contains("netbootd serve --config FILE"), "{said}");
}
