//! Boots a room: the mixer and a `test` capture source from the fixture plan, each with its per-host layer.
//! Both must report "up" twice in a row with unchanged restart counts (every role service active and not
//! crash-looping for 30 s): the source's ingest only stays up if it reached the mixer's voctocore by the
//! name the plan uses. LECTERN_IMAGE_TESTS=1, root.

use std::time::{Duration, Instant};

use lectern_qemu_tests::{Lab, fixture_builder, fixture_plan, test_store_dir, vm_tests_enabled};
use lectern_store::Store;
use serde_json::Value;

/// (hostname, role, mac, ip) from the fixture plan.
const GUESTS: [(&str, &str, &str, &str); 2] = [
    ("lameere-mixer", "mixer", "8c:16:45:00:e6:f6", "10.99.0.64"),
    (
        "lameere-source-2",
        "source",
        "10:02:b5:86:07:e8",
        "10.99.0.129",
    ),
];

#[test]
fn mixer_and_test_source_come_up_and_stay_up() {
    if !vm_tests_enabled() {
        return;
    }
    let store_dir = test_store_dir(env!("CARGO_TARGET_TMPDIR"));
    let builder = fixture_builder(&store_dir).unwrap();
    let plan = fixture_plan().unwrap();
    let reservations: Vec<(&str, &str)> = GUESTS.iter().map(|&(_, _, mac, ip)| (mac, ip)).collect();
    let mut boots = Vec::new();
    for (hostname, role, mac, _) in GUESTS {
        let manifest = builder.build_role(role, &plan).unwrap();
        let layers = builder.build_host_layers(role, &plan).unwrap();
        let layer = layers
            .into_iter()
            .find(|layer| layer.hostname == hostname)
            .unwrap();
        boots.push((hostname, role, mac, manifest, layer));
    }
    let store = Store::open(&store_dir).unwrap();
    let mut lab = Lab::new(&reservations).unwrap();
    let started = Instant::now();
    let mut serials = Vec::new();
    for (_, _, mac, manifest, layer) in &boots {
        let pin = manifest.artifacts["root.squashfs"].sha256.to_string();
        serials.push(
            lab.netboot(&store, manifest, Some(layer), mac, &pin)
                .unwrap(),
        );
    }

    for ((hostname, role, _, manifest, _), serial) in boots.iter().zip(&serials) {
        let image = manifest.image.to_string();
        let ours = |report: &Value| {
            report["host"] == *hostname
                && report["role"] == *role
                && report["image"] == image.as_str()
        };
        let first = lab
            .wait_for_report(Duration::from_secs(600), serial, ours)
            .unwrap();
        eprintln!(
            "{hostname}: first report after {:.0} s: {first}",
            started.elapsed().as_secs_f64()
        );
        let boot_id = first["boot_id"].clone();
        // Two consecutive reports (30 s apart), both "up" with the same restart counts: nothing crash-loops.
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let reports: Vec<Value> = lab
                .reports()
                .into_iter()
                .filter(|r| ours(r) && r["boot_id"] == boot_id)
                .collect();
            let stable = reports.windows(2).any(|pair| {
                pair[0]["state"] == "up"
                    && pair[1]["state"] == "up"
                    && pair[0]["restarts"] == pair[1]["restarts"]
            });
            if stable {
                eprintln!("{hostname}: stable: {}", reports.last().unwrap());
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{hostname} is not stable: {reports:?}"
            );
            std::thread::sleep(Duration::from_secs(3));
        }
    }
}
