//! The bundled examples load, and their plans wire rooms the way the video team expects.

use std::path::{Path, PathBuf};

use lectern_master::plan::{RoleConfig, ports};
use lectern_master::{Plan, Role};

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name)
}

/// Loads an example with the example secrets, copied to a private 0600 file.
fn load_example(name: &str, secrets_file: &str) -> Plan {
    let dir = tempfile::tempdir().unwrap();
    let master = dir.path().join(name);
    std::fs::copy(example(name), &master).unwrap();
    let secrets = dir.path().join(secrets_file);
    std::fs::copy(example(&format!("{secrets_file}.example")), &secrets).unwrap();
    set_private(&secrets);
    lectern_master::load(&master).unwrap_or_else(|e| panic!("{name}:\n{e}"))
}

fn set_private(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

#[test]
fn two_room_example_wires_sources_mixer_and_encoders() {
    let plan = load_example("master.toml", "secrets.toml");
    let room = plan.room("lameere").unwrap();
    assert_eq!(room.mixer, "lameere-mixer");
    // The cloud encoder is reached by its public name, where the mixer's contribution goes.
    let cloud = plan.host("lameere-enc").unwrap();
    assert_eq!(cloud.address, "lameere-enc.video.example.org");
    let lectern_master::RoleConfig::Mixer(mixer) = &plan.host("lameere-mixer").unwrap().config
    else {
        panic!("lameere-mixer is a mixer");
    };
    assert!(
        mixer.contributions[0]
            .url
            .to_string()
            .starts_with("srt://lameere-enc.video.example.org:9000?")
    );
    let ports: Vec<(&str, u16, &str)> = room
        .sources
        .iter()
        .map(|s| (s.name.as_str(), s.port, s.machine.as_str()))
        .collect();
    assert_eq!(
        ports,
        [
            ("cam", 10000, "lameere-source-1"),
            ("slides", 10001, "lameere-source-2")
        ]
    );

    let RoleConfig::Source(slides) = &plan.host("lameere-source-2").unwrap().config else {
        panic!("lameere-source-2 is a source");
    };
    assert_eq!(
        (slides.mixer.as_str(), slides.mixer_port),
        ("10.42.0.10", 10001)
    );

    let RoleConfig::Encoder(local) = &plan.host("cornil-enc").unwrap().config else {
        panic!("cornil-enc is an encoder");
    };
    assert_eq!(
        local.pull_url.to_string(),
        format!("tcp://10.42.0.20:{}", ports::LIVE_OUT)
    );
    let pushed: Vec<(&str, &str, u32, u32)> = (local.renditions.iter())
        .map(|r| (r.name.as_str(), r.stream.as_str(), r.width, r.height))
        .collect();
    assert_eq!(
        pushed,
        [
            ("main", "cornil", 1280, 720),
            ("480p", "cornil_480p", 854, 480)
        ]
    );
    assert_eq!(
        local.renditions[1].push_url.expose(),
        "rtmp://stream-backend.video.example.org/stream/cornil_480p?key=example-key-cornil-b81e07"
    );
    assert_eq!(
        local.renditions[0].push_url.to_string(),
        "rtmp://stream-backend.video.example.org/stream/cornil?key=***"
    );
    assert!(
        (local.ffmpeg_args.iter()).any(|a| a.to_string().ends_with("cornil_480p?key=***")),
        "{:?}",
        local.ffmpeg_args
    );

    // The cloud encoder gets a compressed feed pushed by the mixer, never raw :15000.
    let RoleConfig::Encoder(cloud) = &plan.host("lameere-enc").unwrap().config else {
        panic!("lameere-enc is an encoder");
    };
    // Encrypted with the room's passphrase from the secrets file, shown redacted.
    assert_eq!(
        cloud.pull_url.to_string(),
        "srt://0.0.0.0:9000?mode=listener&pbkeylen=32&passphrase=***"
    );
    let passphrase =
        lectern_master::with_secrets_revealed(|| serde_json::to_string(&cloud.pull_url).unwrap());
    assert!(
        passphrase.contains("passphrase=example-contribution-lameere"),
        "{passphrase}"
    );
    let RoleConfig::Mixer(mixer) = &plan.host("lameere-mixer").unwrap().config else {
        panic!("lameere-mixer is a mixer");
    };
    assert_eq!(mixer.contributions.len(), 1);
    let inputs: Vec<(&str, u16)> = mixer
        .sources
        .iter()
        .map(|s| (s.name.as_str(), s.port))
        .collect();
    assert_eq!(inputs, [("cam", 10000), ("slides", 10001)]);
    assert_eq!(
        mixer.contributions[0].url.to_string(),
        "srt://lameere-enc.video.example.org:9000?pbkeylen=32&passphrase=***"
    );
    // Per-room overrides.
    assert_eq!(
        (local.video.width, local.video.height, local.video.framerate),
        (1280, 720, 25)
    );
    assert_eq!(plan.room("cornil").unwrap().encode.video_kbps, 2000);
    assert_eq!(plan.room("lameere").unwrap().encode.video_kbps, 3000);

    assert_eq!(plan.netboot.base_url, "http://10.42.0.1:8080");
    assert!(!plan.host("lameere-enc").unwrap().netboot);
    assert!(plan.host("cornil-enc").unwrap().netboot);
    assert_eq!(
        plan.image_roles(),
        [
            Role::Mixer,
            Role::Source,
            Role::Encoder,
            Role::StreamingBackend
        ]
    );
}

#[test]
fn fosdem_25_lists_every_host_and_room() {
    let plan = load_example("fosdem-25.toml", "fosdem-25.secrets.toml");
    assert_eq!(plan.rooms.len(), 25);
    // Nothing for the team to act on: mixers record to disks, hosts with secrets have identities.
    assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
    let two_rooms = load_example("master.toml", "secrets.toml");
    let warned: Vec<&str> = two_rooms
        .warnings
        .iter()
        .map(|w| w.field.as_str())
        .collect();
    assert_eq!(warned, ["machines[cornil-mixer]"], "only its RAM recording");
    let physical = plan
        .hosts
        .iter()
        .filter(|h| h.role == Role::Mixer || h.role == Role::Source)
        .count();
    assert!(physical >= 60, "{physical} physical machines");
    let encoders = plan
        .hosts
        .iter()
        .filter(|h| h.role == Role::Encoder)
        .count();
    assert_eq!(encoders, 25);
    for room in &plan.rooms {
        let mixer = plan.host(&room.mixer).unwrap();
        for (i, input) in room.sources.iter().enumerate() {
            assert_eq!(input.port, 10000 + i as u16);
            let RoleConfig::Source(source) = &plan.host(&input.machine).unwrap().config else {
                panic!("{} is a source", input.machine);
            };
            assert_eq!(source.mixer, mixer.address);
            assert_eq!(source.mixer_port, input.port);
        }
    }
}

#[test]
fn fosdem_25_frontends_cache_its_backend_sized_for_every_rendition() {
    let plan = load_example("fosdem-25.toml", "fosdem-25.secrets.toml");
    assert!(plan.image_roles().contains(&Role::StreamingFrontend));
    // 90 s of every rendition of the 25 rooms at its peak (152.2 Mbit/s in all): 1.6 GiB, which
    // the frontends' 8 GiB of RAM hold.
    let peak_bits: u64 = (plan.rooms.iter())
        .flat_map(|room| &room.renditions)
        .map(|rendition| rendition.bandwidth)
        .sum();
    assert_eq!(peak_bits, 152_225_000);
    let frontends: Vec<&str> = (plan.hosts.iter())
        .filter_map(|host| match &host.config {
            RoleConfig::StreamingFrontend(frontend) => {
                assert_eq!(
                    (frontend.backend.as_str(), frontend.backend_address.as_str()),
                    ("stream-backend", "185.175.218.2")
                );
                assert_eq!(
                    (frontend.hls_path.as_str(), frontend.watch_path.as_str()),
                    ("/hls/", "/watch/")
                );
                assert_eq!(frontend.cache_idle_secs, 90);
                assert_eq!(frontend.cache_mb, 1634);
                Some(host.hostname.as_str())
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        frontends,
        [
            "stream-frontend-1",
            "stream-frontend-2",
            "stream-frontend-3",
            "stream-frontend-4"
        ]
    );
}

#[test]
fn plan_json_never_shows_secret_values() {
    let plan = load_example("master.toml", "secrets.toml");
    let json = serde_json::to_string(&plan).unwrap();
    assert!(!json.contains("example-key"), "{json}");
    assert!(json.contains("key=***"));
    let revealed = lectern_master::with_secrets_revealed(|| serde_json::to_string(&plan).unwrap());
    assert!(revealed.contains("example-key-lameere-4f9c2a"));
    // The reveal scope ends with the closure.
    assert_eq!(serde_json::to_string(&plan).unwrap(), json);
}

#[test]
fn a_reader_without_secret_values_needs_no_secrets_file_and_sees_none() {
    let dir = tempfile::tempdir().unwrap();
    let master = dir.path().join("master.toml");
    std::fs::copy(example("master.toml"), &master).unwrap();
    // No secrets.toml next to it at all.
    let plan =
        lectern_master::load_without_secret_values(&master).unwrap_or_else(|e| panic!("{e}"));
    let with_values = load_example("master.toml", "secrets.toml");
    assert_eq!(plan.hosts.len(), with_values.hosts.len());
    for host in &plan.hosts {
        let values = lectern_master::secrets::secret_values_in(&host.config);
        assert!(values.is_empty(), "{} holds {values:?}", host.hostname);
    }
    lectern_master::with_secrets_revealed(|| {
        let json = serde_json::to_string(&plan.hosts).unwrap();
        assert!(!json.contains("example-key"), "no secret value anywhere");
    });
    // A secret written into the master file itself is still refused.
    let inline = std::fs::read_to_string(&master).unwrap().replacen(
        "\"secret:stream_keys.cornil\"",
        "\"cornil-key-in-clear\"",
        1,
    );
    std::fs::write(&master, inline).unwrap();
    let refused = lectern_master::load_without_secret_values(&master).unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("secrets may not be written in the master file")
    );
}
