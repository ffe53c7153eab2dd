//! The example Prometheus set-up (`examples/prometheus/`): Prometheus's own `promtool` checks the
//! scrape configuration and the alert rules and runs the rules' unit tests, and every netbootd
//! metric they name is one netbootd exports.

use std::path::Path;
use std::process::Command;

use lectern_netboot::fleet::{self, Condition, FleetHost};
use lectern_netboot::timeline::HostRecord;

fn examples() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/prometheus")
}

/// `promtool args…` in the examples' directory, or `None` when this machine has no promtool (a
/// failure instead under the suite, `LECTERN_REQUIRE_NETNS=1`).
fn promtool(args: &[&str]) -> Option<(bool, String)> {
    let output = match Command::new("promtool")
        .args(args)
        .current_dir(examples())
        .output()
    {
        Ok(output) => output,
        Err(error) if std::env::var("LECTERN_REQUIRE_NETNS").as_deref() != Ok("1") => {
            eprintln!("skipping: promtool ({error}; Debian: prometheus)");
            return None;
        }
        Err(error) => panic!("promtool: {error} (Debian: prometheus)"),
    };
    let printed = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    Some((output.status.success(), printed))
}

#[test]
fn promtool_checks_the_scrape_configuration_and_passes_the_rules_unit_tests() {
    let Some((ok, printed)) = promtool(&["check", "config", "prometheus.yml"]) else {
        return;
    };
    assert!(ok && printed.contains("8 rules found"), "{printed}");
    let (ok, printed) = promtool(&["test", "rules", "lectern-alerts.test.yml"]).unwrap();
    assert!(ok && printed.contains("SUCCESS"), "{printed}");

    // The same tests fail on rules that miss what they should catch: here, one that never fires.
    let dir = tempfile::tempdir().unwrap();
    let rules = std::fs::read_to_string(examples().join("lectern-alerts.yml")).unwrap();
    let broken = rules.replace("netbootd_host_stale == 1", "netbootd_host_stale == 2");
    assert_ne!(broken, rules);
    std::fs::write(dir.path().join("lectern-alerts.yml"), broken).unwrap();
    std::fs::copy(
        examples().join("lectern-alerts.test.yml"),
        dir.path().join("lectern-alerts.test.yml"),
    )
    .unwrap();
    let output = Command::new("promtool")
        .args(["test", "rules", "lectern-alerts.test.yml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && printed.contains("alertname: LecternHostStale"),
        "{printed}"
    );
}

/// Every metric name `/metrics` can hold: the counters, and the gauges of a fleet whose one room
/// has an encoder that reported.
fn exported_names() -> Vec<String> {
    let record = HostRecord {
        last_heartbeat: Some("2026-12-04T10:00:00Z".into()),
        ..HostRecord::default()
    };
    let encoder = FleetHost {
        hostname: "lameere-enc",
        role: Some("encoder"),
        room: Some("lameere"),
        condition: Condition::Up,
        record: &record,
        serves: None,
    };
    let mut text = String::new();
    lectern_netboot::metrics::render_into(&mut text, &fleet::gauges(&[encoder]));
    let gauges = (text.lines())
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned);
    lectern_netboot::metrics::counter_names()
        .chain(gauges)
        .collect()
}

#[test]
fn the_rules_and_their_tests_name_only_metrics_netbootd_exports() {
    let exported = exported_names();
    assert!(exported.contains(&"netbootd_room_stream_up".to_owned()));
    for file in ["lectern-alerts.yml", "lectern-alerts.test.yml"] {
        let text = std::fs::read_to_string(examples().join(file)).unwrap();
        let named: Vec<&str> = text
            .match_indices("netbootd_")
            .map(|(at, _)| {
                let rest = &text[at..];
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                &rest[..end]
            })
            .collect();
        assert!(named.len() > 5, "{file}: {named:?}");
        for name in named {
            assert!(
                exported.iter().any(|exported| exported == name),
                "{file} names {name}, which netbootd does not export ({exported:?})"
            );
        }
    }
}
