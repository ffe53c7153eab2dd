//! End to end: real firmware PXE-boots the fixture plan's hosts from the real `netbootd --config master.toml`.
//!
//! Two guests boot at once in one network namespace, both under TCG:
//! - `lameere-mixer` on BIOS (`-machine pc`, qemu's own iPXE NIC ROM): DHCP → HTTP iPXE script;
//! - `lameere-source-2` (`capture = { kind = "test" }`) on UEFI (OVMF, `romfile=` empty): OVMF's PXE does DHCP
//!   and fetches `snponly.efi` over TFTP, which does DHCP again and fetches the HTTP iPXE script.
//!
//! Each then loads kernel + initrd + its per-host layer over HTTP; the initrd fetches the root image and checks
//! its sha256; systemd starts the role's services; the image's boot reporter POSTs to netbootd. The test reads
//! netbootd's `GET /api/hosts` until both hosts are `up` with their role and image, every boot step is stamped,
//! and a later heartbeat of the same boot is still `up` with unchanged restart counts (nothing crash-loops; the
//! source's ingest only stays up if it reached the mixer's voctocore).
//!
//! Before serving, `netbootd check --config …` must pass. netbootd is the workspace binary next to this test's
//! executable (`cargo build -p lectern-netboot`). Images are built into the shared VM test store
//! (`LECTERN_TEST_STORE`); unchanged layers are reused. LECTERN_IMAGE_TESTS=1, root.
//! `LECTERN_KEEP_LAB=1` keeps the lab directory (netbootd log, serial logs).
//!
//! The served master file is the fixture's without its encoder VM (its image is not built here), so that
//! `netbootd check` can require every served host to be bootable.
//!
//! Measured (images already in the store, 2 shared cores, load ~3, a clippy build running alongside): both up
//! 73–76 s after netbootd started, both stable (second `up` report with unchanged restarts) at 164 s; the whole
//! test 165 s wall (a rerun without the build alongside: up at 55–64 s, 134 s wall). This test found that UEFI
//! boots lost the host layer (the EFI stub concatenates initrds unaligned); netbootd now puts the layer first.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use lectern_qemu_tests::{
    Firmware, HTTP_PORT, Lab, SERVER_IP, fixture_builder, fixture_plan, repo, test_store_dir,
    vm_tests_enabled,
};
use serde_json::Value;

const TFTP_ROOT: &str = "/usr/lib/ipxe";

/// (hostname, role, mac, firmware) from the fixture plan.
const GUESTS: [(&str, &str, &str, Firmware); 2] = [
    (
        "lameere-mixer",
        "mixer",
        "8c:16:45:00:e6:f6",
        Firmware::Bios,
    ),
    (
        "lameere-source-2",
        "source",
        "10:02:b5:86:07:e8",
        Firmware::Uefi,
    ),
];

/// GETs `path` from netbootd inside the lab's namespace; `None` if it does not answer 2xx.
fn get(lab: &Lab, path: &str) -> Option<String> {
    let url = format!("http://{SERVER_IP}:{HTTP_PORT}{path}");
    let output = lab
        .in_netns("curl")
        .args(["-sf", "-m", "5", &url])
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

fn hosts(lab: &Lab) -> Value {
    get(lab, "/api/hosts")
        .and_then(|body| serde_json::from_str(&body).ok())
        .unwrap_or(Value::Null)
}

/// netbootd's log, `/api/hosts` and the end of every guest's logs.
fn diagnostics(lab: &Lab) -> String {
    let mut out = String::new();
    let netbootd = fs::read_to_string(lab.dir().join("netbootd.log")).unwrap_or_default();
    out.push_str(&format!("--- netbootd log ---\n{netbootd}\n"));
    out.push_str(&format!("--- /api/hosts ---\n{:#}\n", hosts(lab)));
    for path in lab.guest_logs() {
        let text = String::from_utf8_lossy(&fs::read(&path).unwrap_or_default()).into_owned();
        let lines: Vec<&str> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(60)..];
        out.push_str(&format!(
            "--- tail of {} ---\n{}\n",
            path.display(),
            tail.join("\n")
        ));
    }
    out
}

/// The workspace's netbootd: this test runs from target/<profile>/deps/, the binary sits in target/<profile>/.
fn netbootd_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test executable has no target/<profile>/deps parent")?;
    let binary = profile_dir.join("netbootd");
    ensure!(
        binary.is_file(),
        "no netbootd at {} (build it: cargo build -p lectern-netboot)",
        binary.display()
    );
    Ok(binary)
}

/// The fixture master file and its secrets, copied into `dir` with `[netboot] store` pointing at `store`, without
/// its encoder VM.
fn master_file(dir: &Path, store: &Path) -> Result<PathBuf> {
    let fixtures = repo().join("builder/tests/fixtures");
    let text = fs::read_to_string(fixtures.join("master.toml"))?;
    ensure!(
        text.contains("store = \"store\""),
        "the fixture master file no longer says store = \"store\""
    );
    let text = text.replace(
        "store = \"store\"",
        &format!("store = {:?}", store.display().to_string()),
    );
    // The encoder VM's image is not built here (ffmpeg makes it the heaviest build): leave it out of the plan
    // netbootd serves, so `netbootd check` can demand that every host it serves is bootable.
    let encoders = text
        .find("[[encoders]]")
        .context("the fixture master file has no [[encoders]]")?;
    ensure!(
        !text[encoders..].contains("[[machines]]") && !text[encoders..].contains("[[rooms]]"),
        "[[encoders]] is no longer the end of the fixture master file"
    );
    let text = &text[..encoders];
    let master = dir.join("master.toml");
    fs::write(&master, text)?;
    let secrets = dir.join("fixture-secrets.toml");
    fs::copy(fixtures.join("fixture-secrets.toml"), &secrets)?;
    fs::set_permissions(&secrets, fs::Permissions::from_mode(0o600))?;
    Ok(master)
}

fn host<'a>(hosts: &'a Value, hostname: &str) -> Option<&'a Value> {
    hosts
        .as_array()?
        .iter()
        .find(|host| host["hostname"] == hostname)
}

#[test]
fn firmware_pxe_boots_the_plan_from_netbootd_to_role_up() {
    if !vm_tests_enabled() {
        return;
    }
    let netbootd = netbootd_binary().unwrap();
    let store_dir = test_store_dir(env!("CARGO_TARGET_TMPDIR"));
    let builder = fixture_builder(&store_dir).unwrap();
    let plan = fixture_plan().unwrap();
    let mut images = Vec::new();
    for (hostname, role, _, _) in GUESTS {
        let built = Instant::now();
        let manifest = builder.build_role(role, &plan).unwrap();
        let layers = builder.build_host_layers(role, &plan).unwrap();
        assert!(
            layers.iter().any(|layer| layer.hostname == hostname),
            "no host layer for {hostname}"
        );
        eprintln!(
            "{role} image {} ready in {:.0} s",
            manifest.image,
            built.elapsed().as_secs_f64()
        );
        images.push(manifest.image.to_string());
    }
    let store_dir = fs::canonicalize(&store_dir).unwrap();

    let mut lab = Lab::bare().unwrap();
    let master = master_file(lab.dir(), &store_dir).unwrap();
    let state = lab.dir().join("state");
    fs::create_dir(&state).unwrap();
    let common = |command: &mut Command| {
        command
            .arg("--config")
            .arg(&master)
            .arg("--state-dir")
            .arg(&state)
            .args(["--tftp-root", TFTP_ROOT]);
    };

    let mut check = Command::new(&netbootd);
    check.arg("check");
    common(&mut check);
    let output = check.output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!("netbootd check: {said}");
    assert!(output.status.success(), "netbootd check failed:\n{said}");

    let mut serve = lab.in_netns(netbootd.to_str().unwrap());
    common(&mut serve);
    serve.env("RUST_LOG", "lectern_netboot=debug,info");
    lab.spawn(serve, "netbootd.log").unwrap();

    let started = Instant::now();
    if let Err(error) = run(&mut lab, &images, started) {
        panic!(
            "{error:#}\nafter {:.0} s\n{}",
            started.elapsed().as_secs_f64(),
            diagnostics(&lab)
        );
    }
    eprintln!(
        "both hosts up and stable {:.0} s after netbootd started",
        started.elapsed().as_secs_f64()
    );
}

fn run(lab: &mut Lab, images: &[String], started: Instant) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while get(lab, "/healthz").is_none() {
        ensure!(
            Instant::now() < deadline,
            "netbootd did not answer /healthz"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for (_, _, mac, firmware) in GUESTS {
        lab.pxe_boot(mac, firmware)?;
    }

    // First "up" report of each host, with every boot step netbootd saw stamped.
    let deadline = Instant::now() + Duration::from_secs(480);
    let mut first: Vec<Option<Value>> = vec![None; GUESTS.len()];
    while first.iter().any(Option::is_none) {
        let hosts = hosts(lab);
        for (i, (hostname, role, _, firmware)) in GUESTS.into_iter().enumerate() {
            if first[i].is_some() {
                continue;
            }
            let Some(record) = host(&hosts, hostname) else {
                continue;
            };
            if record["state"] == "up" {
                ensure!(
                    record["role"] == role && record["image"] == images[i].as_str(),
                    "{hostname} reported the wrong role or image: {record:#}"
                );
                for step in [
                    "dhcp",
                    "ipxe_script",
                    "kernel",
                    "initrd",
                    "root",
                    "host_layer",
                    "reported_up",
                ] {
                    ensure!(
                        record[step].is_string(),
                        "{hostname}: no {step}: {record:#}"
                    );
                }
                if let Firmware::Uefi = firmware {
                    ensure!(
                        record["tftp_file"] == "snponly.efi",
                        "{hostname} (UEFI) did not fetch snponly.efi over TFTP: {record:#}"
                    );
                }
                ensure!(
                    record["failed"].as_array().is_some_and(Vec::is_empty),
                    "{hostname} up with failed units: {record:#}"
                );
                eprintln!(
                    "{hostname}: up after {:.0} s: {record}",
                    started.elapsed().as_secs_f64()
                );
                first[i] = Some(record.clone());
            }
        }
        if Instant::now() > deadline {
            bail!("not every host reported up within 480 s");
        }
        std::thread::sleep(Duration::from_secs(3));
    }

    // Two consecutive reports of the same boot, both up with the same restart counts: nothing crash-loops.
    // (A source can report up before its mixer listens, then restart its ingest until it does.)
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut last: Vec<Value> = first.into_iter().map(Option::unwrap).collect();
    let mut stable = vec![false; GUESTS.len()];
    while stable.iter().any(|done| !done) {
        let hosts = hosts(lab);
        for (i, (hostname, ..)) in GUESTS.into_iter().enumerate() {
            let Some(record) = host(&hosts, hostname) else {
                continue;
            };
            if stable[i] || record["last_heartbeat"] == last[i]["last_heartbeat"] {
                continue;
            }
            ensure!(
                record["boot_id"] == last[i]["boot_id"],
                "{hostname} rebooted: {} then {record}",
                last[i]
            );
            if record["state"] == "up"
                && last[i]["state"] == "up"
                && record["restarts"] == last[i]["restarts"]
            {
                eprintln!(
                    "{hostname}: stable after {:.0} s: {record}",
                    started.elapsed().as_secs_f64()
                );
                stable[i] = true;
            }
            last[i] = record.clone();
        }
        if Instant::now() > deadline {
            bail!(
                "not every host stable (two consecutive up reports, same restarts) within 300 s: {last:?}"
            );
        }
        std::thread::sleep(Duration::from_secs(3));
    }
    Ok(())
}
