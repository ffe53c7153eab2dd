//! Boots the `base` netboot artifacts the way netbootd will hand them out (kernel + initrd, root image
//! fetched over HTTP and pinned by sha256) and waits for the boot reporter and its heartbeat. No host in
//! the plan has role base, so it boots without a per-host layer (boot_roles covers those) and reports the
//! image's own hostname. A second guest gets a wrong pin and must refuse to boot. LECTERN_IMAGE_TESTS=1, root.

use std::time::{Duration, Instant};

use lectern_builder::context::Plan;
use lectern_qemu_tests::{Lab, fixture_builder, test_store_dir, vm_tests_enabled};
use lectern_store::Store;
use serde_json::Value;

/// What the base image calls itself until a per-host layer names it.
const HOST: &str = "lectern";
const HOST_MAC: &str = "52:54:00:00:00:01";
const HOST_IP: &str = "10.99.0.10";
const ROGUE_MAC: &str = "52:54:00:00:00:66";

#[test]
fn base_boots_and_reports_and_a_wrong_pin_refuses_to_boot() {
    if !vm_tests_enabled() {
        return;
    }
    let store_dir = test_store_dir(env!("CARGO_TARGET_TMPDIR"));
    let builder = fixture_builder(&store_dir).unwrap();
    let manifest = builder.build_role("base", &Plan::empty()).unwrap();
    let store = Store::open(&store_dir).unwrap();

    let mut lab = Lab::new(&[(HOST_MAC, HOST_IP)]).unwrap();
    let root_sha256 = manifest.artifacts["root.squashfs"].sha256.to_string();
    let started = Instant::now();
    let serial = lab
        .netboot(&store, &manifest, None, HOST_MAC, &root_sha256)
        .unwrap();
    let rogue_serial = lab
        .netboot(&store, &manifest, None, ROGUE_MAC, &"0".repeat(64))
        .unwrap();

    let image = manifest.image.to_string();
    let is_ours = |report: &Value| {
        report["host"] == HOST
            && report["role"] == "base"
            && report["image"] == image.as_str()
            && report["state"] == "up"
    };
    let first = lab
        .wait_for_report(Duration::from_secs(480), &serial, is_ours)
        .unwrap();
    eprintln!(
        "boot report after {:.0} s: {first}",
        started.elapsed().as_secs_f64()
    );

    let rogue_log = std::fs::read_to_string(&rogue_serial).unwrap_or_default();
    assert!(
        rogue_log.contains("refusing to boot"),
        "the guest with a wrong pin did not refuse:\n{rogue_log}"
    );
    assert!(
        lab.reports().iter().all(is_ours),
        "only the good guest reports: {:?}",
        lab.reports()
    );

    // The heartbeat timer repeats the report within ~30 s, from the same boot.
    let boot_id = first["boot_id"].clone();
    let deadline = Instant::now() + Duration::from_secs(120);
    while lab
        .reports()
        .iter()
        .filter(|r| is_ours(r) && r["boot_id"] == boot_id)
        .count()
        < 2
    {
        assert!(
            Instant::now() < deadline,
            "no heartbeat after the first report: {:?}",
            lab.reports()
        );
        std::thread::sleep(Duration::from_secs(2));
    }
}
