//! Boots the `base` netboot artifacts the way netbootd will hand them out (kernel + initrd + per-host layer,
//! root image fetched over HTTP and pinned by sha256) and waits for the boot reporter. A second guest gets a
//! wrong pin and must refuse to boot. Runs only with LECTERN_IMAGE_TESTS=1, as root.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lectern_builder::build::{BuildOptions, Builder, INITRD, ROOT_SQUASHFS, VMLINUZ};
use lectern_builder::context::Plan;
use lectern_builder::recipe::Recipes;
use lectern_qemu_tests::{HTTP_PORT, Lab, SERVER_IP, unavailable};
use lectern_store::Store;

const HOST: &str = "lab-base";
const HOST_MAC: &str = "52:54:00:00:00:01";
const HOST_IP: &str = "10.99.0.10";
const ROGUE_MAC: &str = "52:54:00:00:00:66";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

#[test]
fn base_boots_and_reports_and_a_wrong_pin_refuses_to_boot() {
    if std::env::var("LECTERN_IMAGE_TESTS").as_deref() != Ok("1") {
        eprintln!("skipping: VM boots take minutes; set LECTERN_IMAGE_TESTS=1 to run them");
        return;
    }
    if let Some(reason) = unavailable() {
        panic!("LECTERN_IMAGE_TESTS=1 but the VM lab cannot run: {reason}");
    }

    // A persistent LECTERN_TEST_STORE lets repeated runs (and CI with a cache) skip the build.
    let scratch = tempfile::tempdir().unwrap();
    let store_dir = std::env::var_os("LECTERN_TEST_STORE")
        .map_or_else(|| scratch.path().to_owned(), PathBuf::from);
    let repo = repo();
    let recipes = Recipes::load(&repo.join("recipes"), &repo.join("overlays")).unwrap();
    let options = BuildOptions {
        source_date_epoch: 1_700_000_000,
        apt_cache: std::env::var_os("LECTERN_APT_CACHE")
            .map_or_else(|| "/var/cache/lectern/apt".into(), PathBuf::from),
    };
    let builder = Builder::new(Store::create(&store_dir).unwrap(), recipes, options).unwrap();
    let plan_text = fs::read_to_string(repo.join("builder/tests/fixtures/plan.json")).unwrap();
    let plan = Plan::from_json(serde_json::from_str(&plan_text).unwrap()).unwrap();
    let manifest = builder.build_role("base", &plan).unwrap();
    let host_layers = builder.build_host_layers("base", &plan).unwrap();
    let host_layer = host_layers
        .iter()
        .find(|layer| layer.hostname == HOST)
        .expect("fixture has lab-base");

    let store = Store::open(&store_dir).unwrap();
    let blob = |name: &str| store.blob_path(&manifest.artifacts[name].sha256);
    let mut lab = Lab::new(&[(HOST_MAC, HOST_IP)]).unwrap();
    let www = lab.dir().join("www");
    fs::create_dir(&www).unwrap();
    std::os::unix::fs::symlink(blob(ROOT_SQUASHFS), www.join(ROOT_SQUASHFS)).unwrap();
    lab.serve_http(&www).unwrap();

    let server = format!("http://{SERVER_IP}:{HTTP_PORT}");
    let root_sha256 = &manifest.artifacts[ROOT_SQUASHFS].sha256;
    let cmdline = |pin: &str| {
        format!(
            "console=ttyS0 boot=lectern ip=dhcp lectern.root={server}/{ROOT_SQUASHFS} lectern.root_sha256={pin} \
             lectern.server={server} lectern.image={}",
            manifest.image
        )
    };
    let host_cpio = store.blob_path(&host_layer.blob.sha256);
    let started = Instant::now();
    let serial = lab
        .boot_direct(
            HOST_MAC,
            &blob(VMLINUZ),
            &[&blob(INITRD), &host_cpio],
            &cmdline(root_sha256.as_str()),
        )
        .unwrap();
    let wrong_pin = "0".repeat(64);
    let rogue_serial = lab
        .boot_direct(
            ROGUE_MAC,
            &blob(VMLINUZ),
            &[&blob(INITRD)],
            &cmdline(&wrong_pin),
        )
        .unwrap();

    let image = manifest.image.to_string();
    let is_ours = |report: &serde_json::Value| {
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

    let rogue_log = fs::read_to_string(&rogue_serial).unwrap_or_default();
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
    let heartbeat = |report: &serde_json::Value| is_ours(report) && report["boot_id"] == boot_id;
    let deadline = Instant::now() + Duration::from_secs(120);
    while lab.reports().into_iter().filter(|r| heartbeat(r)).count() < 2 {
        assert!(
            Instant::now() < deadline,
            "no heartbeat after the first report: {:?}",
            lab.reports()
        );
        std::thread::sleep(Duration::from_secs(2));
    }
}
