//! What the operator's views say of each host and each room, read once from the boot timeline:
//! the dashboard shows it (through `/api/hosts` and its events) and `/metrics` exports it as
//! gauges, so a host is `up` or `stale` by the same rule in both.

use std::collections::BTreeMap;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;

use crate::timeline::{BootStamps, HostRecord, ReportState, unix_seconds};

/// What a host is doing, first match wins: `stale` (it reported, then stopped for longer than
/// the master file allows), `degraded` (its latest report says so), `up` (its role came up in
/// this boot and nothing is wrong), `booting` (it reached some boot phase), `unseen`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Condition {
    Unseen,
    Booting,
    Up,
    Degraded,
    Stale,
}

/// The phases of a netboot in the order a host passes them, as the timeline stamps them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    DhcpFirmware = 1,
    Tftp,
    DhcpIpxe,
    IpxeScript,
    Kernel,
    HostLayer,
    Initrd,
    DhcpOs,
    Root,
    ReportedUp,
}

/// The latest phase in boot order that the host's current boot reached.
pub fn phase_reached(boot: &BootStamps) -> Option<Phase> {
    [
        (&boot.reported_up, Phase::ReportedUp),
        (&boot.root, Phase::Root),
        (&boot.dhcp_os, Phase::DhcpOs),
        (&boot.initrd, Phase::Initrd),
        (&boot.host_layer, Phase::HostLayer),
        (&boot.kernel, Phase::Kernel),
        (&boot.ipxe_script, Phase::IpxeScript),
        (&boot.dhcp_ipxe, Phase::DhcpIpxe),
        (&boot.tftp, Phase::Tftp),
        (&boot.dhcp_firmware, Phase::DhcpFirmware),
    ]
    .into_iter()
    .find_map(|(stamp, phase)| stamp.is_some().then_some(phase))
}

pub fn condition(record: &HostRecord, stale: bool) -> Condition {
    let up_now = matches!(record.state, Some(ReportState::Up | ReportState::Heartbeat));
    if stale {
        Condition::Stale
    } else if record.state == Some(ReportState::Degraded) {
        Condition::Degraded
    } else if record.boot.reported_up.is_some() && up_now {
        Condition::Up
    } else if phase_reached(&record.boot).is_some() {
        Condition::Booting
    } else {
        Condition::Unseen
    }
}

/// One host as the fleet views read it.
#[derive(Debug, Clone, Copy)]
pub struct FleetHost<'a> {
    pub hostname: &'a str,
    pub role: Option<&'a str>,
    pub room: Option<&'a str>,
    pub condition: Condition,
    pub record: &'a HostRecord,
    /// The image netbootd would boot it into now.
    pub serves: Option<&'a str>,
}

impl FleetHost<'_> {
    /// It runs an image other than the one netbootd would boot it into now.
    pub fn reboot_changes_image(&self) -> bool {
        matches!((self.record.image.as_deref(), self.serves), (Some(runs), Some(serves)) if runs != serves)
    }
}

/// A room's stream, as its encoders report it: `up` when every encoder is up; else the first
/// that is `degraded` or `stale`, named; else `not_up` (still booting, or never seen).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Stream {
    Up,
    Degraded { encoder: String },
    Stale { encoder: String },
    NotUp,
}

/// One room: how many of its hosts are up, and its stream if it has encoders.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Room {
    pub hosts: usize,
    pub hosts_up: usize,
    pub stream: Option<Stream>,
}

/// The role whose reports are a room's stream.
const ENCODER: &str = "encoder";

/// Every room the hosts name, by name.
pub fn rooms<'a>(hosts: &[FleetHost<'a>]) -> BTreeMap<&'a str, Room> {
    let mut rooms: BTreeMap<&str, Vec<&FleetHost>> = BTreeMap::new();
    for host in hosts {
        if let Some(room) = host.room {
            rooms.entry(room).or_default().push(host);
        }
    }
    rooms
        .into_iter()
        .map(|(name, members)| {
            let up = |host: &&&FleetHost| host.condition == Condition::Up;
            let encoders: Vec<_> = (members.iter())
                .filter(|host| host.role == Some(ENCODER))
                .collect();
            let stream = (!encoders.is_empty()).then(|| {
                let troubled = encoders.iter().find_map(|host| match host.condition {
                    Condition::Degraded => Some(Stream::Degraded {
                        encoder: host.hostname.to_owned(),
                    }),
                    Condition::Stale => Some(Stream::Stale {
                        encoder: host.hostname.to_owned(),
                    }),
                    _ => None,
                });
                match troubled {
                    _ if encoders.iter().all(up) => Stream::Up,
                    Some(troubled) => troubled,
                    None => Stream::NotUp,
                }
            });
            let room = Room {
                hosts: members.len(),
                hosts_up: members.iter().filter(up).count(),
                stream,
            };
            (name, room)
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct HostLabels {
    host: String,
    role: String,
    room: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RoomLabels {
    room: String,
}

/// The fleet's gauges as they stand now, for one scrape of `/metrics`: a host or room the plan
/// no longer has is gone from the next one.
pub fn gauges(hosts: &[FleetHost]) -> Registry {
    let mut registry = Registry::default();
    let mut family = |name: &str, help: &str| {
        let family = Family::<HostLabels, Gauge>::default();
        registry.register(name, help, family.clone());
        family
    };
    let up = family(
        "netbootd_host_up",
        "1 when the host's role came up in this boot and its latest report says nothing is wrong (the dashboard's up)",
    );
    let stale = family(
        "netbootd_host_stale",
        "1 when the host reported, then missed netboot.stale_after_missed_beats heartbeats (powered off, hung, or cut off the LAN)",
    );
    let degraded = family(
        "netbootd_host_degraded",
        "1 when the host's latest report says something is wrong: failed units, a crash loop, silent or frozen media (/api/hosts names each problem)",
    );
    let phase = family(
        "netbootd_host_boot_phase",
        "The latest phase the host's current boot reached, in boot order: 0 none, 1 firmware DHCP, 2 TFTP, 3 iPXE DHCP, 4 iPXE script, 5 kernel, 6 host layer, 7 initrd, 8 system DHCP, 9 root image, 10 reported up",
    );
    let heartbeat = family(
        "netbootd_host_last_heartbeat_timestamp_seconds",
        "When the host last reported, in seconds since 1970 (absent until it first does); time() minus it is the heartbeat's age",
    );
    let reboot = family(
        "netbootd_host_reboot_changes_image",
        "1 when the host runs another image than the one netbootd would boot it into now",
    );
    for host in hosts {
        let labels = HostLabels {
            host: host.hostname.to_owned(),
            role: host.role.unwrap_or_default().to_owned(),
            room: host.room.unwrap_or_default().to_owned(),
        };
        let flag = |family: &Family<HostLabels, Gauge>, on: bool| {
            family.get_or_create(&labels).set(i64::from(on));
        };
        flag(&up, host.condition == Condition::Up);
        flag(&stale, host.condition == Condition::Stale);
        flag(&degraded, host.condition == Condition::Degraded);
        flag(&reboot, host.reboot_changes_image());
        let reached = phase_reached(&host.record.boot).map_or(0, |phase| phase as i64);
        phase.get_or_create(&labels).set(reached);
        if let Some(at) = (host.record.last_heartbeat.as_deref()).and_then(unix_seconds) {
            heartbeat.get_or_create(&labels).set(at as i64);
        }
    }
    let mut family = |name: &str, help: &str| {
        let family = Family::<RoomLabels, Gauge>::default();
        registry.register(name, help, family.clone());
        family
    };
    let expected = family(
        "netbootd_room_hosts",
        "Hosts the master file puts in the room",
    );
    let hosts_up = family("netbootd_room_hosts_up", "The room's hosts that are up");
    let stream_up = family(
        "netbootd_room_stream_up",
        "1 when every encoder of the room reports up, 0 when one is degraded, stale or not up yet (absent for a room without encoders)",
    );
    for (name, room) in rooms(hosts) {
        let labels = RoomLabels {
            room: name.to_owned(),
        };
        expected.get_or_create(&labels).set(room.hosts as i64);
        hosts_up.get_or_create(&labels).set(room.hosts_up as i64);
        if let Some(stream) = room.stream {
            stream_up
                .get_or_create(&labels)
                .set(i64::from(stream == Stream::Up));
        }
    }
    registry
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::render_into;

    fn stamp() -> Option<String> {
        Some("2026-12-04T10:00:00Z".into())
    }

    fn booted_up() -> HostRecord {
        let mut record = HostRecord::default();
        record.boot.dhcp_firmware = stamp();
        record.boot.root = stamp();
        record.boot.reported_up = stamp();
        record.state = Some(ReportState::Up);
        record.last_heartbeat = stamp();
        record.image = Some("img-1".into());
        record
    }

    #[test]
    fn a_host_s_condition_follows_its_boot_and_reports_first_match_wins() {
        let mut record = HostRecord::default();
        assert_eq!(condition(&record, false), Condition::Unseen);
        record.boot.dhcp_ipxe = stamp();
        assert_eq!(
            (condition(&record, false), phase_reached(&record.boot)),
            (Condition::Booting, Some(Phase::DhcpIpxe))
        );
        let mut record = booted_up();
        assert_eq!(
            (condition(&record, false), phase_reached(&record.boot)),
            (Condition::Up, Some(Phase::ReportedUp))
        );
        assert_eq!(condition(&record, true), Condition::Stale);
        record.state = Some(ReportState::Degraded);
        assert_eq!(condition(&record, false), Condition::Degraded);
        assert_eq!(condition(&record, true), Condition::Stale, "stale first");
    }

    fn host<'a>(
        hostname: &'a str,
        role: &'a str,
        condition: Condition,
        record: &'a HostRecord,
    ) -> FleetHost<'a> {
        FleetHost {
            hostname,
            role: Some(role),
            room: Some("lameere"),
            condition,
            record,
            serves: Some("img-1"),
        }
    }

    #[test]
    fn a_room_s_stream_is_its_encoders_and_names_the_one_in_trouble() {
        let record = booted_up();
        let mixer = host("lameere-mixer", "mixer", Condition::Up, &record);
        let stream = |encoders: &[Condition]| {
            let names = ["enc-a", "enc-b"];
            let mut hosts = vec![mixer];
            for (name, condition) in names.iter().zip(encoders) {
                hosts.push(host(name, "encoder", *condition, &record));
            }
            rooms(&hosts)["lameere"].clone()
        };
        assert_eq!(
            stream(&[]),
            Room {
                hosts: 1,
                hosts_up: 1,
                stream: None
            }
        );
        assert_eq!(
            stream(&[Condition::Up, Condition::Up]).stream,
            Some(Stream::Up)
        );
        assert_eq!(
            stream(&[Condition::Up, Condition::Booting]).stream,
            Some(Stream::NotUp)
        );
        let room = stream(&[Condition::Booting, Condition::Stale]);
        assert_eq!(
            (room.hosts, room.hosts_up, room.stream),
            (
                3,
                1,
                Some(Stream::Stale {
                    encoder: "enc-b".into()
                })
            )
        );
    }

    #[test]
    fn the_gauges_read_what_the_views_show_by_host_role_and_room() {
        let up = booted_up();
        let mut stale = booted_up();
        stale.image = Some("img-0".into());
        let seen = HostRecord::default();
        let hosts = [
            host("lameere-mixer", "mixer", Condition::Up, &up),
            host("lameere-enc", "encoder", Condition::Stale, &stale),
            FleetHost {
                room: None,
                ..host("backend", "streaming-backend", Condition::Unseen, &seen)
            },
        ];
        let mut text = String::new();
        render_into(&mut text, &gauges(&hosts));
        let heartbeat = unix_seconds(up.last_heartbeat.as_deref().unwrap()).unwrap();
        for line in [
            r#"netbootd_host_up{host="lameere-mixer",role="mixer",room="lameere"} 1"#,
            r#"netbootd_host_up{host="lameere-enc",role="encoder",room="lameere"} 0"#,
            r#"netbootd_host_stale{host="lameere-enc",role="encoder",room="lameere"} 1"#,
            r#"netbootd_host_reboot_changes_image{host="lameere-enc",role="encoder",room="lameere"} 1"#,
            r#"netbootd_host_reboot_changes_image{host="lameere-mixer",role="mixer",room="lameere"} 0"#,
            r#"netbootd_host_boot_phase{host="lameere-mixer",role="mixer",room="lameere"} 10"#,
            r#"netbootd_host_boot_phase{host="backend",role="streaming-backend",room=""} 0"#,
            &format!(
                r#"netbootd_host_last_heartbeat_timestamp_seconds{{host="lameere-mixer",role="mixer",room="lameere"}} {heartbeat}"#
            ),
            r#"netbootd_room_hosts{room="lameere"} 2"#,
            r#"netbootd_room_hosts_up{room="lameere"} 1"#,
            r#"netbootd_room_stream_up{room="lameere"} 0"#,
            "# TYPE netbootd_host_up gauge",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
        }
        assert!(
            !text.contains(r#"netbootd_host_last_heartbeat_timestamp_seconds{host="backend""#),
            "no heartbeat yet: absent, not 0"
        );
    }
}
