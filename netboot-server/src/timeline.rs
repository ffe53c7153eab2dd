//! The boot timeline: what each host did last, as DHCP, TFTP, HTTP and the boot reporter saw
//! it. Keyed by MAC; TFTP and HTTP only see addresses, which DHCP ties to MACs.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::mac::MacAddr;
use crate::policy::ArtifactKind;

/// Something a host did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Dhcp,
    Tftp { file: String },
    IpxeScript,
    Artifact(ArtifactKind),
    HostLayer,
    ReportedUp { role: String, image: String },
    Heartbeat,
}

/// When each step last happened, as RFC 3339 UTC timestamps.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HostRecord {
    pub ip: Option<Ipv4Addr>,
    pub dhcp: Option<String>,
    pub tftp: Option<String>,
    pub tftp_file: Option<String>,
    pub ipxe_script: Option<String>,
    pub kernel: Option<String>,
    pub initrd: Option<String>,
    pub root: Option<String>,
    pub host_layer: Option<String>,
    pub reported_up: Option<String>,
    pub last_heartbeat: Option<String>,
    pub role: Option<String>,
    pub image: Option<String>,
}

#[derive(Debug, Default)]
struct State {
    records: BTreeMap<MacAddr, HostRecord>,
    macs_by_ip: HashMap<Ipv4Addr, MacAddr>,
}

#[derive(Debug, Default)]
pub struct Timeline {
    state: Mutex<State>,
}

impl Timeline {
    /// `mac` now holds `ip` (a DHCP lease, reservation or a proxy client's own claim).
    pub fn bind_address(&self, mac: MacAddr, ip: Ipv4Addr) {
        let mut state = self.state.lock().expect("timeline lock");
        if let Some(old) = state.records.get(&mac).and_then(|record| record.ip) {
            state.macs_by_ip.remove(&old);
        }
        state.macs_by_ip.insert(ip, mac);
        state.records.entry(mac).or_default().ip = Some(ip);
    }

    pub fn ip_of(&self, mac: MacAddr) -> Option<Ipv4Addr> {
        self.state
            .lock()
            .expect("timeline lock")
            .records
            .get(&mac)
            .and_then(|record| record.ip)
    }

    pub fn mac_of(&self, ip: Ipv4Addr) -> Option<MacAddr> {
        self.state
            .lock()
            .expect("timeline lock")
            .macs_by_ip
            .get(&ip)
            .copied()
    }

    pub fn record(&self, mac: MacAddr, event: Event) {
        self.record_at(mac, event, SystemTime::now());
    }

    /// Records for whichever MAC holds `ip`; returns false if none does.
    pub fn record_from(&self, ip: Ipv4Addr, event: Event) -> bool {
        match self.mac_of(ip) {
            Some(mac) => {
                self.record(mac, event);
                true
            }
            None => false,
        }
    }

    fn record_at(&self, mac: MacAddr, event: Event, when: SystemTime) {
        let stamp = Some(rfc3339(when));
        let mut state = self.state.lock().expect("timeline lock");
        let record = state.records.entry(mac).or_default();
        match event {
            Event::Dhcp => record.dhcp = stamp,
            Event::Tftp { file } => {
                record.tftp = stamp;
                record.tftp_file = Some(file);
            }
            Event::IpxeScript => record.ipxe_script = stamp,
            Event::Artifact(ArtifactKind::Kernel) => record.kernel = stamp,
            Event::Artifact(ArtifactKind::Initrd) => record.initrd = stamp,
            Event::Artifact(ArtifactKind::Root) => record.root = stamp,
            Event::Artifact(ArtifactKind::Other) => {}
            Event::HostLayer => record.host_layer = stamp,
            Event::ReportedUp { role, image } => {
                record.reported_up = stamp.clone();
                record.last_heartbeat = stamp;
                record.role = Some(role);
                record.image = Some(image);
            }
            Event::Heartbeat => record.last_heartbeat = stamp,
        }
    }

    pub fn get(&self, mac: MacAddr) -> HostRecord {
        self.state
            .lock()
            .expect("timeline lock")
            .records
            .get(&mac)
            .cloned()
            .unwrap_or_default()
    }
}

/// `2026-11-21T21:30:07Z`; hand-written to avoid a date crate for one format.
fn rfc3339(when: SystemTime) -> String {
    let secs = when
        .duration_since(UNIX_EPOCH)
        .map(|since| since.as_secs())
        .unwrap_or(0);
    let (days, secs_of_day) = (secs / 86_400, secs % 86_400);
    // Civil-from-days (Howard Hinnant's algorithm), valid for any date after 1970.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    let (hour, minute, second) = (secs_of_day / 3600, secs_of_day / 60 % 60, secs_of_day % 60);
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}Z")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_795_296_607)),
            "2026-11-21T21:30:07Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
    }

    #[test]
    fn addresses_follow_the_latest_lease() {
        let timeline = Timeline::default();
        let mac = MacAddr([2, 0, 0, 0, 0, 1]);
        timeline.bind_address(mac, Ipv4Addr::new(10, 0, 0, 5));
        timeline.bind_address(mac, Ipv4Addr::new(10, 0, 0, 6));
        assert_eq!(timeline.mac_of(Ipv4Addr::new(10, 0, 0, 5)), None);
        assert!(timeline.record_from(
            Ipv4Addr::new(10, 0, 0, 6),
            Event::Tftp {
                file: "undionly.kpxe".into()
            }
        ));
        assert_eq!(
            timeline.get(mac).tftp_file.as_deref(),
            Some("undionly.kpxe")
        );
        assert!(!timeline.record_from(Ipv4Addr::new(10, 0, 0, 7), Event::Heartbeat));
    }
}
