//! Any master file built from random valid rooms and machines parses, validates, expands into
//! a plan with every host, and survives a write/read round trip unchanged.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use lectern_master::model::*;
use lectern_master::secrets::Secrets;
use proptest::prelude::*;

#[derive(Debug, Clone)]
struct RoomSpec {
    slug: String,
    sources: usize,
    framerate: Option<u32>,
    encoder: Option<Where>,
    capture: CaptureKind,
}

fn room_spec() -> impl Strategy<Value = RoomSpec> {
    (
        "[a-z][a-z0-9]{0,8}",
        1usize..=3,
        proptest::option::of(prop_oneof![Just(25u32), Just(30), Just(50)]),
        proptest::option::of(prop_oneof![
            Just(Where::LocalVm),
            Just(Where::Ec2),
            Just(Where::BareMetal)
        ]),
        prop_oneof![
            Just(CaptureKind::Hdmi2usb),
            Just(CaptureKind::V4l2),
            Just(CaptureKind::Blackmagic),
            Just(CaptureKind::Test)
        ],
    )
        .prop_map(|(slug, sources, framerate, encoder, capture)| RoomSpec {
            slug,
            sources,
            framerate,
            encoder,
            capture,
        })
}

const SOURCE_NAMES: [&str; 3] = ["cam", "slides", "audience"];

fn master_file(rooms: &[RoomSpec], mode: DhcpMode, seed: u8) -> MasterFile {
    let mut next_host = 10u32;
    let mut next_ip = || {
        next_host += 1;
        Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 1, 0, 0)) + next_host)
    };
    let mut next_mac_n = 0u32;
    let mut next_mac = || {
        next_mac_n += 1;
        let [_, a, b, c] = next_mac_n.to_be_bytes();
        format!("02:00:{seed:02x}:{a:02x}:{b:02x}:{c:02x}")
    };
    let mut machines = vec![Machine {
        hostname: "control".into(),
        mac: None,
        ip: Some(Ipv4Addr::new(10, 1, 0, 1)),
        role: MachineRole::Netboot,
        room: None,
        source: None,
        capture: None,
        record_disk: None,
        kernel_args: Vec::new(),
        identity: None,
    }];
    let mut encoders = Vec::new();
    let mut room_entries = Vec::new();
    for room in rooms {
        let sources: Vec<String> = SOURCE_NAMES[..room.sources]
            .iter()
            .map(|s| s.to_string())
            .collect();
        machines.push(Machine {
            hostname: format!("{}-mixer", room.slug),
            mac: Some(next_mac()),
            ip: (mode == DhcpMode::Authoritative).then(&mut next_ip),
            role: MachineRole::Mixer,
            room: Some(room.slug.clone()),
            source: None,
            capture: None,
            record_disk: None,
            kernel_args: Vec::new(),
            // Beside a venue's DHCP, what proves a mixer without a reserved address is its machine.
            identity: (mode == DhcpMode::Proxy).then(|| HardwareIdentity {
                uuid: Some(format!(
                    "00000000-0000-4000-9000-{seed:06x}{:06x}",
                    machines.len()
                )),
                serial: None,
                asset_tag: None,
                tpm_ek: None,
            }),
        });
        for (i, source) in sources.iter().enumerate() {
            machines.push(Machine {
                hostname: format!("{}-source-{}", room.slug, i + 1),
                mac: Some(next_mac()),
                ip: Some(next_ip()),
                role: MachineRole::Source,
                room: Some(room.slug.clone()),
                source: Some(source.clone()),
                capture: Some(Capture {
                    kind: room.capture,
                    device: None,
                    audio: None,
                    video_delay_ms: None,
                    audio_delay_ms: None,
                }),
                record_disk: None,
                kernel_args: Vec::new(),
                identity: Some(HardwareIdentity {
                    uuid: None,
                    serial: Some(format!("SN-{}-{i}", room.slug)),
                    asset_tag: None,
                    tpm_ek: Some(format!("000b{seed:02x}{:062x}", machines.len())),
                }),
            });
        }
        if let Some(placement) = room.encoder {
            let cloud = placement == Where::Ec2;
            encoders.push(Encoder {
                hostname: format!("{}-enc", room.slug),
                room: room.slug.clone(),
                deployment: Deployment {
                    placement,
                    mac: (!cloud).then(&mut next_mac),
                    ip: (!cloud).then(&mut next_ip),
                    host: None,
                    vcpus: (placement == Where::LocalVm).then_some(4),
                    memory_mb: (placement == Where::LocalVm).then_some(4096),
                    region: cloud.then(|| "eu-west-1".into()),
                    instance_type: cloud.then(|| "c6i.xlarge".into()),
                    instance_profile: cloud.then(|| "lectern-encoder".into()),
                    security_groups: Vec::new(),
                    subnet: None,
                    kernel_args: Vec::new(),
                    identity: (!cloud).then(|| HardwareIdentity {
                        uuid: Some(format!(
                            "00000000-0000-4000-8000-{seed:06x}{:06x}",
                            encoders.len()
                        )),
                        serial: None,
                        asset_tag: None,
                        tpm_ek: None,
                    }),
                },
                address: None,
            });
        }
        room_entries.push(Room {
            slug: room.slug.clone(),
            name: format!("Room {}", room.slug),
            irc_channel: None,
            url: None,
            sources,
            audio_source: None,
            stream_key: Some(format!("secret:stream_keys.{}", room.slug)),
            contribution_passphrase: (room.encoder == Some(Where::Ec2))
                .then(|| format!("secret:contribution.{}", room.slug)),
            video: room.framerate.map(|framerate| VideoOverride {
                framerate: Some(framerate),
                ..Default::default()
            }),
            encode: None,
        });
    }
    MasterFile {
        schema_version: 1,
        conference: Conference {
            name: "Test Conf".into(),
            slug: "testconf".into(),
            org: "test".into(),
            url: None,
            schedule_url: None,
            timezone: "UTC".into(),
            irc_network: None,
        },
        streaming: Streaming {
            ingest: IngestKind::Srt,
            ingest_url: "srt://ingest.example.org:1337?streamid=publish/{room}/{key}".into(),
            hls_url: None,
            watch_url: None,
        },
        network: Network {
            domain: "video.test".into(),
            subnet: "10.1.0.0/16".into(),
            gateway: Ipv4Addr::new(10, 1, 255, 254),
            dns: vec![],
            ntp: vec![],
            dhcp: Dhcp {
                mode,
                interface: "eth0".into(),
                range: (mode == DhcpMode::Authoritative)
                    .then_some([Ipv4Addr::new(10, 1, 200, 1), Ipv4Addr::new(10, 1, 200, 200)]),
                lease: "1h".into(),
            },
        },
        netboot: Netboot::default(),
        ssh: Ssh::default(),
        defaults: Defaults::default(),
        secrets: SecretsFileRef::default(),
        rooms: room_entries,
        machines,
        encoders,
        servers: vec![],
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn random_valid_files_validate_and_round_trip(
        rooms in proptest::collection::vec(room_spec(), 1..6),
        authoritative in any::<bool>(),
        seed in any::<u8>(),
    ) {
        let mut seen = BTreeSet::new();
        let rooms: Vec<RoomSpec> = rooms.into_iter().filter(|r| seen.insert(r.slug.clone())).collect();
        let mode = if authoritative { DhcpMode::Authoritative } else { DhcpMode::Proxy };
        let master = master_file(&rooms, mode, seed);
        let text = toml::to_string(&master).unwrap();

        let dir = tempfile::tempdir().unwrap();
        let secrets = dir.path().join("secrets.toml");
        let keys: String = rooms.iter().map(|r| format!("{} = \"key-{}\"\n", r.slug, r.slug)).collect();
        let passphrases: String =
            rooms.iter().map(|r| format!("{} = \"passphrase-{}\"\n", r.slug, r.slug)).collect();
        std::fs::write(&secrets, format!("[stream_keys]\n{keys}\n[contribution]\n{passphrases}")).unwrap();
        std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o600)).unwrap();

        let plan = lectern_master::load_from(Path::new("master.toml"), &text, |_| Secrets::load(&secrets))
            .unwrap_or_else(|e| panic!("{e}\n---\n{text}"));
        let hosts = master.machines.len() + master.encoders.len();
        prop_assert_eq!(plan.hosts.len(), hosts);
        prop_assert_eq!(plan.rooms.len(), rooms.len());

        let reread: MasterFile = toml::from_str(&text).unwrap();
        prop_assert_eq!(reread, master);
    }
}
