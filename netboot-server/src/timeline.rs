//! The boot timeline: when each phase of each host's latest boot first happened and what the
//! host last reported, as DHCP, TFTP, HTTP and the boot reporter saw it. Keyed by MAC; TFTP and
//! HTTP only see addresses, which DHCP ties to MACs. Only the policy's hosts get a record: anyone
//! on the LAN can send DHCP from fresh MACs, so strangers are counted, never stored.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use subtle::ConstantTimeEq;

use crate::mac::MacAddr;
use crate::metrics::{Metrics, TIMELINE_STRANGERS};
use crate::policy::{ArtifactKind, DhcpStage};

/// Something a host did. A report is boxed: it is far bigger than the other events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Dhcp(DhcpStage),
    Tftp { file: String },
    IpxeScript,
    Artifact(ArtifactKind),
    HostLayer,
    Report(Box<Report>),
}

impl Event {
    fn label(&self) -> &'static str {
        match self {
            Event::Dhcp(_) => "dhcp",
            Event::Tftp { .. } => "tftp",
            Event::IpxeScript => "ipxe_script",
            Event::Artifact(_) => "artifact",
            Event::HostLayer => "host_layer",
            Event::Report(_) => "report",
        }
    }
}

/// How a host's role is doing, as its boot reporter sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReportState {
    /// Every service of the role is active and nothing is wrong.
    Up,
    /// Something is wrong: the reporter names each reason in `problems`.
    Degraded,
    /// Still alive, nothing new.
    Heartbeat,
}

/// What the boot reporter on each machine posts to `/api/report`, once the role is up and
/// then every 30 s. Fields beyond these are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Report {
    pub host: String,
    pub role: String,
    pub image: String,
    pub state: ReportState,
    #[serde(default)]
    pub failed: Vec<String>,
    /// Automatic restarts per service: rising between reports means a crash loop.
    #[serde(default)]
    pub restarts: BTreeMap<String, u64>,
    /// Why the host is not fully up, one sentence each (failed units, crash loops, media).
    #[serde(default)]
    pub problems: Vec<String>,
    /// The role's own media measurements (audio level, frames...); anything but an object is
    /// dropped, so a broken probe cannot put arbitrary values into the host list.
    #[serde(default, deserialize_with = "object_only")]
    pub media: Option<Value>,
    /// The kernel's boot id: a new one is a new boot.
    #[serde(default)]
    pub boot_id: Option<String>,
    /// The version of its host layer it runs ([`crate::policy::LayerVersion::digest`]): the one
    /// netbootd named with its secrets at boot, or the one it last applied live.
    #[serde(default)]
    pub layer: Option<String>,
    /// Its latest live layer update in this boot, if any.
    #[serde(default)]
    pub layer_update: Option<LayerUpdate>,
}

/// A live update of a running host's layer, as the host reports it: what changed files made it
/// restart, and what they change only at its next boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerUpdate {
    /// The layer version it applied, or tried to.
    pub layer: String,
    /// The units it restarted because files they read changed.
    #[serde(default)]
    pub restarted: Vec<String>,
    /// Files changed in this boot that no unit rereads when restarted: a reboot would change
    /// what they govern.
    #[serde(default)]
    pub needs_reboot: Vec<String>,
    /// Why it failed, if it did: it then runs the layer it had (its files put back).
    #[serde(default)]
    pub failed: Option<String>,
    /// When netbootd first heard of this update (its clock, not the host's).
    #[serde(default)]
    pub at: Option<String>,
}

fn object_only<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Value>, D::Error> {
    Ok(Some(Value::deserialize(deserializer)?).filter(Value::is_object))
}

/// When each phase of a host's latest boot first happened, as RFC 3339 UTC timestamps, in boot
/// order. Renewals and retries later in the boot move nothing; the machine starting over (see
/// [`BootStamps::went_past`]) clears them all.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BootStamps {
    pub dhcp_firmware: Option<String>,
    pub tftp: Option<String>,
    pub tftp_file: Option<String>,
    pub dhcp_ipxe: Option<String>,
    pub ipxe_script: Option<String>,
    pub kernel: Option<String>,
    pub host_layer: Option<String>,
    pub initrd: Option<String>,
    /// The initrd's `ip=dhcp`, before it fetches the root; the system only renews.
    pub dhcp_os: Option<String>,
    pub root: Option<String>,
    /// When this boot first reported its role up.
    pub reported_up: Option<String>,
}

impl BootStamps {
    /// Whether this boot is past `stage`'s DHCP, so that the stage asking again is the machine
    /// starting over. iPXE asks before its script, and is the first stage when it is the NIC's
    /// own ROM (qemu's): after a kernel download it is a new boot.
    fn went_past(&self, stage: DhcpStage) -> bool {
        let booted_kernel = [
            &self.kernel,
            &self.host_layer,
            &self.initrd,
            &self.dhcp_os,
            &self.root,
            &self.reported_up,
        ];
        let any = |stamps: &[&Option<String>]| stamps.iter().any(|stamp| stamp.is_some());
        match stage {
            DhcpStage::Firmware => {
                any(&[&self.tftp, &self.dhcp_ipxe, &self.ipxe_script]) || any(&booted_kernel)
            }
            DhcpStage::Ipxe => any(&booted_kernel),
            // The booted system renews its lease all along: it starts nothing.
            DhcpStage::Os => false,
        }
    }

    /// Where `stage`'s DHCP is stamped.
    fn dhcp(&mut self, stage: DhcpStage) -> &mut Option<String> {
        match stage {
            DhcpStage::Firmware => &mut self.dhcp_firmware,
            DhcpStage::Ipxe => &mut self.dhcp_ipxe,
            DhcpStage::Os => &mut self.dhcp_os,
        }
    }
}

/// A host's latest boot, its address, and what it reported and was refused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HostRecord {
    pub ip: Option<Ipv4Addr>,
    #[serde(flatten)]
    pub boot: BootStamps,
    /// When the host last reported anything.
    pub last_heartbeat: Option<String>,
    pub role: Option<String>,
    pub image: Option<String>,
    pub state: Option<ReportState>,
    pub failed: Vec<String>,
    pub restarts: BTreeMap<String, u64>,
    pub problems: Vec<String>,
    pub media: Option<Value>,
    pub boot_id: Option<String>,
    /// The version of its host layer it runs, as it reports it (see [`Report::layer`]).
    pub layer: Option<String>,
    /// Its latest live layer update in this boot.
    pub layer_update: Option<LayerUpdate>,
    /// When this host's secrets last went out (over TLS, to the boot that proved it is the host).
    pub secrets: Option<String>,
    /// What was refused in this host's name (a spoofer, or the host itself after one), newest
    /// last; the last [`ALERTS_KEPT`].
    pub alerts: Vec<String>,
}

/// Alerts kept per host: enough to see what happened, bounded against a flood.
pub const ALERTS_KEPT: usize = 10;

/// Why a host's secrets were not released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// They went out already in this boot (since the host last fetched its layer), to another
    /// boot id.
    Again,
}

/// Whether a host's secrets may go out, and to which boot: the window opens when the host fetches
/// its layer (a new boot) and closes at the first release. Never shown: it holds the report token.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
struct Release {
    open: bool,
    boot_id: Option<String>,
    /// The bearer token of that boot's reports.
    token: Option<String>,
    /// The sha256 of the public layer the boot fetched, which opened the window: what it runs.
    public_layer: Option<String>,
}

impl HostRecord {
    /// How long since its last report, if it ever reported.
    pub fn silent_for(&self) -> Option<std::time::Duration> {
        let beat = unix_seconds(self.last_heartbeat.as_deref()?)?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
        Some(std::time::Duration::from_secs(now.saturating_sub(beat)))
    }

    fn forget_reports(&mut self) {
        self.boot.reported_up = None;
        self.state = None;
        self.failed.clear();
        self.restarts.clear();
        self.problems.clear();
        self.media = None;
        self.boot_id = None;
        self.layer = None;
        self.layer_update = None;
    }
}

#[derive(Debug, Default)]
struct State {
    records: BTreeMap<MacAddr, HostRecord>,
    releases: HashMap<MacAddr, Release>,
    macs_by_ip: HashMap<Ipv4Addr, MacAddr>,
    /// The policy's MACs; `None` until [`Timeline::set_known`] is first called, and then every
    /// MAC is recorded.
    known: Option<HashSet<MacAddr>>,
}

impl State {
    fn knows(&self, mac: MacAddr) -> bool {
        self.known.as_ref().is_none_or(|known| known.contains(&mac))
    }
}

#[derive(Debug, Default)]
pub struct Timeline {
    state: Mutex<State>,
    metrics: Arc<Metrics>,
    /// Where [`Timeline::save`] keeps it across restarts, if anywhere.
    file: Option<std::path::PathBuf>,
    /// Changed since the last save.
    changed: std::sync::atomic::AtomicBool,
}

#[derive(Serialize)]
struct SavedRef<'a> {
    records: &'a BTreeMap<MacAddr, HostRecord>,
    releases: &'a HashMap<MacAddr, Release>,
}

/// What the timeline file holds: every known host's record, and its boot's release (with the
/// report token, so running hosts keep reporting across a restart: hence 0600).
#[derive(Debug, Default, Serialize, Deserialize)]
struct Saved {
    records: BTreeMap<MacAddr, HostRecord>,
    releases: HashMap<MacAddr, Release>,
}

impl Timeline {
    /// Strangers are counted in `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Timeline {
            metrics,
            ..Timeline::default()
        }
    }

    /// A timeline kept in `file`: what it holds is read back now (a missing file is an empty
    /// timeline; an unreadable one is set aside as `<file>.corrupt`, said, and started afresh).
    pub fn persistent(metrics: Arc<Metrics>, file: std::path::PathBuf) -> Self {
        let saved = match std::fs::read(&file) {
            Ok(bytes) => serde_json::from_slice::<Saved>(&bytes).unwrap_or_else(|error| {
                let aside = file.with_extension("json.corrupt");
                let _ = std::fs::rename(&file, &aside);
                tracing::warn!(%error, aside = %aside.display(), "the boot timeline was unreadable: starting afresh");
                Saved::default()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Saved::default(),
            Err(error) => {
                tracing::warn!(%error, file = %file.display(), "cannot read the boot timeline: starting afresh");
                Saved::default()
            }
        };
        let macs_by_ip = (saved.records.iter())
            .filter_map(|(mac, record)| Some((record.ip?, *mac)))
            .collect();
        let state = State {
            records: saved.records,
            releases: saved.releases,
            macs_by_ip,
            known: None,
        };
        Timeline {
            state: Mutex::new(state),
            metrics,
            file: Some(file),
            changed: Default::default(),
        }
    }

    /// Writes the timeline to its file, atomically, if it changed since the last time.
    pub fn save(&self) {
        use std::io::Write;
        use std::os::unix::fs::PermissionsExt;
        use std::sync::atomic::Ordering;
        let Some(file) = &self.file else { return };
        if !self.changed.swap(false, Ordering::AcqRel) {
            return;
        }
        let bytes = {
            let state = self.state.lock().expect("timeline lock");
            let saved = SavedRef {
                records: &state.records,
                releases: &state.releases,
            };
            serde_json::to_vec(&saved).expect("the timeline serializes")
        };
        let written = lectern_store::write_atomic(file, |out| {
            out.set_permissions(std::fs::Permissions::from_mode(0o600))?;
            out.write_all(&bytes)
        });
        if let Err(error) = written {
            // Kept in memory; the next save tries again.
            self.changed.store(true, Ordering::Release);
            tracing::warn!(%error, file = %file.display(), "cannot save the boot timeline");
        }
    }

    fn touch(&self) {
        self.changed
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Only these MACs get records from now on; records of any other are dropped.
    pub fn set_known(&self, macs: impl IntoIterator<Item = MacAddr>) {
        let known: HashSet<MacAddr> = macs.into_iter().collect();
        let mut state = self.state.lock().expect("timeline lock");
        state.records.retain(|mac, _| known.contains(mac));
        state.releases.retain(|mac, _| known.contains(mac));
        state.macs_by_ip.retain(|_, mac| known.contains(mac));
        state.known = Some(known);
        self.touch();
    }

    /// `mac` now holds `ip` (a DHCP lease, reservation or a proxy client's own claim).
    pub fn bind_address(&self, mac: MacAddr, ip: Ipv4Addr) {
        let mut state = self.state.lock().expect("timeline lock");
        // One holder per address: a host whose address another client now holds (a stranger or
        // a listed host) no longer has it, so nothing of its own is served there.
        if let Some(previous) = state
            .macs_by_ip
            .get(&ip)
            .copied()
            .filter(|holder| *holder != mac)
        {
            state.macs_by_ip.remove(&ip);
            if let Some(record) = state.records.get_mut(&previous) {
                record.ip = None;
            }
        }
        if !state.knows(mac) {
            drop(state);
            self.metrics
                .inc(TIMELINE_STRANGERS, &[("event", "address")]);
            return;
        }
        if let Some(old) = state.records.get(&mac).and_then(|record| record.ip) {
            state.macs_by_ip.remove(&old);
        }
        state.macs_by_ip.insert(ip, mac);
        state.records.entry(mac).or_default().ip = Some(ip);
        self.touch();
    }

    /// `mac` gave its address back (a DHCPRELEASE): it holds none until it leases again.
    pub fn forget_address(&self, mac: MacAddr) {
        let mut state = self.state.lock().expect("timeline lock");
        if let Some(ip) = state
            .records
            .get_mut(&mac)
            .and_then(|record| record.ip.take())
        {
            state.macs_by_ip.remove(&ip);
            drop(state);
            self.touch();
        }
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
        let stamp = rfc3339(when);
        let mut state = self.state.lock().expect("timeline lock");
        if !state.knows(mac) {
            drop(state);
            self.metrics
                .inc(TIMELINE_STRANGERS, &[("event", event.label())]);
            return;
        }
        // A host's layer opens its boot: its secrets may go out once more.
        if event == Event::HostLayer {
            state.releases.entry(mac).or_default().open = true;
        }
        let record = state.records.entry(mac).or_default();
        let boot = &mut record.boot;
        match event {
            Event::Dhcp(stage) => {
                if boot.went_past(stage) {
                    *boot = BootStamps::default();
                }
                first(boot.dhcp(stage), stamp);
            }
            Event::Tftp { file } => {
                if boot.tftp.is_none() {
                    boot.tftp = Some(stamp);
                    boot.tftp_file = Some(file);
                }
            }
            // Anyone may fetch any host's script, so it starts no boot and ends no report.
            Event::IpxeScript => first(&mut boot.ipxe_script, stamp),
            Event::Artifact(ArtifactKind::Kernel) => first(&mut boot.kernel, stamp),
            Event::Artifact(ArtifactKind::Initrd) => first(&mut boot.initrd, stamp),
            Event::Artifact(ArtifactKind::Root) => first(&mut boot.root, stamp),
            Event::Artifact(ArtifactKind::Other) => {}
            Event::HostLayer => first(&mut boot.host_layer, stamp),
            Event::Report(report) => {
                let report = *report;
                if report.boot_id.is_some() && report.boot_id != record.boot_id {
                    record.forget_reports();
                    record.boot_id = report.boot_id;
                }
                if report.state == ReportState::Up {
                    first(&mut record.boot.reported_up, stamp.clone());
                }
                if report.state != ReportState::Heartbeat {
                    record.state = Some(report.state);
                    record.failed = report.failed;
                    record.restarts = report.restarts;
                    record.problems = report.problems;
                    record.media = report.media;
                }
                if let Some(mut update) = report.layer_update {
                    let known = record.layer_update.as_ref().map(|known| LayerUpdate {
                        at: None,
                        ..known.clone()
                    });
                    update.at = None;
                    if known.as_ref() != Some(&update) {
                        record.layer_update = Some(LayerUpdate {
                            at: Some(stamp.clone()),
                            ..update
                        });
                    }
                }
                record.layer = report.layer;
                record.last_heartbeat = Some(stamp);
                record.role = Some(report.role);
                record.image = Some(report.image);
            }
        }
        self.touch();
    }

    /// Releases `mac`'s secrets to `boot_id` and returns the token of its reports: once per boot
    /// (the same boot id may ask again, a client retrying), or refuses.
    pub fn release_secrets(&self, mac: MacAddr, boot_id: &str) -> Result<String, Refusal> {
        let mut state = self.state.lock().expect("timeline lock");
        let release = state.releases.entry(mac).or_default();
        let token = match (&release.token, release.boot_id.as_deref()) {
            (Some(token), Some(released_to)) if released_to == boot_id => token.clone(),
            _ if release.open => {
                let token = random_token();
                *release = Release {
                    open: false,
                    boot_id: Some(boot_id.to_owned()),
                    token: Some(token.clone()),
                    public_layer: release.public_layer.take(),
                };
                token
            }
            _ => return Err(Refusal::Again),
        };
        if state.knows(mac) {
            state.records.entry(mac).or_default().secrets = Some(rfc3339(SystemTime::now()));
        }
        drop(state);
        self.touch();
        // At once: a restart must not lose the token of a host that is booting.
        self.save();
        Ok(token)
    }

    /// `mac`'s boot fetched the public layer of sha256 `public` (just recorded as
    /// [`Event::HostLayer`]): what it runs until it applies another.
    pub fn layer_served(&self, mac: MacAddr, public: &str) {
        let mut state = self.state.lock().expect("timeline lock");
        if !state.knows(mac) {
            return;
        }
        state.releases.entry(mac).or_default().public_layer = Some(public.to_owned());
        drop(state);
        self.touch();
    }

    /// The sha256 of the public layer `mac`'s latest boot fetched, if netbootd saw it.
    pub fn public_layer_served(&self, mac: MacAddr) -> Option<String> {
        let state = self.state.lock().expect("timeline lock");
        state.releases.get(&mac)?.public_layer.clone()
    }

    /// Whether `token` is the one boot `boot_id` of `mac` was given with its secrets: that boot
    /// may have its layer again while it runs.
    pub fn same_boot(&self, mac: MacAddr, boot_id: &str, token: &str) -> bool {
        let state = self.state.lock().expect("timeline lock");
        state.releases.get(&mac).is_some_and(|release| {
            release.boot_id.as_deref() == Some(boot_id)
                && (release.token.as_deref())
                    .is_some_and(|current| bool::from(current.as_bytes().ct_eq(token.as_bytes())))
        })
    }

    /// `mac`'s secrets went out again, to its running boot (see [`Timeline::same_boot`]).
    pub fn secrets_went_out_again(&self, mac: MacAddr) {
        let mut state = self.state.lock().expect("timeline lock");
        if !state.knows(mac) {
            return;
        }
        state.records.entry(mac).or_default().secrets = Some(rfc3339(SystemTime::now()));
        drop(state);
        self.touch();
    }

    /// Whether `token` is the one `mac`'s current boot was given with its secrets.
    pub fn report_token_is(&self, mac: MacAddr, token: &str) -> bool {
        let state = self.state.lock().expect("timeline lock");
        let current = state.releases.get(&mac).and_then(|r| r.token.as_deref());
        current.is_some_and(|current| bool::from(current.as_bytes().ct_eq(token.as_bytes())))
    }

    /// Notes on `mac`'s record something refused in its name.
    pub fn alert(&self, mac: MacAddr, what: &str) {
        let mut state = self.state.lock().expect("timeline lock");
        if !state.knows(mac) {
            return;
        }
        let alerts = &mut state.records.entry(mac).or_default().alerts;
        alerts.push(format!("{} {what}", rfc3339(SystemTime::now())));
        if alerts.len() > ALERTS_KEPT {
            alerts.remove(0);
        }
        drop(state);
        self.touch();
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

/// A phase keeps the first stamp of its boot: what comes later is a renewal or a retry.
fn first(phase: &mut Option<String>, stamp: String) {
    phase.get_or_insert(stamp);
}

/// Seconds since 1970 of an [`rfc3339`] stamp (`2026-11-21T21:30:07Z`), the inverse of it.
pub(crate) fn unix_seconds(stamp: &str) -> Option<u64> {
    let number = |range: std::ops::Range<usize>| stamp.get(range)?.parse::<u64>().ok();
    let shape = stamp.len() == 20 && stamp.as_bytes()[10] == b'T' && stamp.ends_with('Z');
    if !shape {
        return None;
    }
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    // Days-from-civil (Howard Hinnant's algorithm), the inverse of the one in `rfc3339`.
    let year = if month <= 2 { year - 1 } else { year };
    let era = year / 400;
    let yoe = year - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = (era * 146_097 + doe).checked_sub(719_468)?;
    Some(days * 86_400 + hour * 3600 + minute * 60 + second)
}

/// 32 random bytes from the kernel, hex.
fn random_token() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut bytes))
        .expect("the kernel's random source");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `2026-11-21T21:30:07Z`; hand-written to avoid a date crate for one format.
pub fn rfc3339(when: SystemTime) -> String {
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
    fn reads_back_what_it_formats() {
        for secs in [0, 951_782_400, 1_795_296_607, 4_102_444_800] {
            assert_eq!(
                unix_seconds(&rfc3339(UNIX_EPOCH + Duration::from_secs(secs))),
                Some(secs)
            );
        }
        assert_eq!(unix_seconds("2026-11-21 21:30:07"), None);
        let ten_minutes_ago = SystemTime::now() - Duration::from_secs(600);
        let record = HostRecord {
            last_heartbeat: Some(rfc3339(ten_minutes_ago)),
            ..HostRecord::default()
        };
        let silent = record.silent_for().unwrap();
        assert!((599..=601).contains(&silent.as_secs()), "{silent:?}");
        assert_eq!(
            HostRecord::default().silent_for(),
            None,
            "never reported: not stale"
        );
    }

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

    fn report(state: ReportState, boot_id: &str, failed: &[&str]) -> Event {
        Event::Report(Box::new(Report {
            host: "mixer1".into(),
            role: "mixer".into(),
            image: "sha".into(),
            state,
            failed: failed.iter().map(|unit| unit.to_string()).collect(),
            restarts: BTreeMap::new(),
            problems: failed.iter().map(|unit| format!("{unit} failed")).collect(),
            media: None,
            boot_id: Some(boot_id.into()),
            layer: None,
            layer_update: None,
        }))
    }

    /// A report of boot `boot_id` running layer `layer`, after `update` if given.
    fn report_layer(boot_id: &str, layer: &str, update: Option<LayerUpdate>) -> Event {
        let mut event = report(ReportState::Up, boot_id, &[]);
        if let Event::Report(report) = &mut event {
            report.layer = Some(layer.into());
            report.layer_update = update;
        }
        event
    }

    #[test]
    fn a_live_update_is_stamped_when_first_heard_of_and_forgotten_with_its_boot() {
        let timeline = Timeline::default();
        let update = |layer: &str, restarted: &[&str]| LayerUpdate {
            layer: layer.into(),
            restarted: restarted.iter().map(|unit| unit.to_string()).collect(),
            needs_reboot: vec!["etc/timezone".into()],
            failed: None,
            // What a host may claim is ignored: netbootd's clock stamps it.
            at: Some("1999-01-01T00:00:00Z".into()),
        };
        timeline.record_at(MAC, report_layer("b1", "v1", None), at(100));
        assert_eq!(timeline.get(MAC).layer.as_deref(), Some("v1"));
        let applied = update("v2", &["lectern-encoder.service"]);
        for secs in [130, 160] {
            timeline.record_at(
                MAC,
                report_layer("b1", "v2", Some(applied.clone())),
                at(secs),
            );
        }
        let record = timeline.get(MAC);
        assert_eq!(record.layer.as_deref(), Some("v2"));
        assert_eq!(
            record.layer_update,
            Some(LayerUpdate {
                at: stamp(130),
                ..applied
            }),
            "the heartbeats repeating it move nothing"
        );
        timeline.record_at(
            MAC,
            report_layer("b1", "v3", Some(update("v3", &[]))),
            at(190),
        );
        assert_eq!(timeline.get(MAC).layer_update.unwrap().at, stamp(190));

        timeline.record_at(MAC, report_layer("b2", "v3", None), at(500));
        let rebooted = timeline.get(MAC);
        assert_eq!(
            (rebooted.layer.as_deref(), rebooted.layer_update),
            (Some("v3"), None),
            "a new boot runs the layer it booted with"
        );
    }

    #[test]
    fn a_boot_runs_the_public_layer_it_fetched_and_its_token_names_that_boot() {
        let timeline = Timeline::default();
        assert_eq!(timeline.public_layer_served(MAC), None);
        timeline.record(MAC, Event::HostLayer);
        timeline.layer_served(MAC, "p1");
        let token = timeline.release_secrets(MAC, "b1").unwrap();
        assert_eq!(timeline.public_layer_served(MAC).as_deref(), Some("p1"));
        assert!(timeline.same_boot(MAC, "b1", &token));
        assert!(!timeline.same_boot(MAC, "b2", &token), "another boot id");
        assert!(!timeline.same_boot(MAC, "b1", &token[1..]), "another token");
        assert!(!timeline.same_boot(MacAddr([2, 0, 0, 0, 0, 2]), "b1", &token));
        // The next boot fetches its own.
        timeline.record(MAC, Event::HostLayer);
        timeline.layer_served(MAC, "p2");
        assert_eq!(timeline.public_layer_served(MAC).as_deref(), Some("p2"));
    }

    #[test]
    fn reads_what_the_image_reporter_sends_and_ignores_the_rest() {
        let body = r#"{"host":"h","role":"base","image":"sha","state":"degraded","failed":["a.service"],
            "restarts":{"a.service":3},"boot_id":"dc31","uptime":12}"#;
        let report: Report = serde_json::from_str(body).unwrap();
        assert_eq!(
            (report.host.as_str(), report.state),
            ("h", ReportState::Degraded)
        );
        assert_eq!((report.failed.len(), report.restarts["a.service"]), (1, 3));
        let minimal = r#"{"host":"h","role":"r","image":"i","state":"heartbeat"}"#;
        let minimal: Report = serde_json::from_str(minimal).unwrap();
        assert_eq!(
            (minimal.state, minimal.boot_id),
            (ReportState::Heartbeat, None)
        );
        assert_eq!((minimal.problems.len(), minimal.media), (0, None));
        assert!(
            serde_json::from_str::<Report>(
                r#"{"host":"h","role":"r","image":"i","state":"sideways"}"#
            )
            .is_err()
        );
    }

    #[test]
    fn reports_keep_the_first_up_of_each_boot_and_the_latest_state() {
        let timeline = Timeline::default();
        let mac = MacAddr([2, 0, 0, 0, 0, 1]);
        let at = |secs| UNIX_EPOCH + Duration::from_secs(secs);
        timeline.record_at(mac, report(ReportState::Up, "boot-a", &[]), at(100));
        timeline.record_at(
            mac,
            report(ReportState::Degraded, "boot-a", &["x.service"]),
            at(130),
        );
        timeline.record_at(mac, report(ReportState::Heartbeat, "boot-a", &[]), at(160));
        let record = timeline.get(mac);
        assert_eq!(record.boot.reported_up, Some(rfc3339(at(100))));
        assert_eq!(record.last_heartbeat, Some(rfc3339(at(160))));
        assert_eq!(
            (record.state, record.failed),
            (Some(ReportState::Degraded), vec!["x.service".to_string()])
        );

        timeline.record_at(mac, report(ReportState::Up, "boot-b", &[]), at(400));
        assert_eq!(
            timeline.get(mac).boot.reported_up,
            Some(rfc3339(at(400))),
            "a new boot id is a new boot"
        );
        timeline.record_at(mac, Event::IpxeScript, at(500));
        let fetched = timeline.get(mac);
        assert_eq!(
            (
                fetched.boot.reported_up,
                fetched.state,
                fetched.boot.ipxe_script
            ),
            (
                Some(rfc3339(at(400))),
                Some(ReportState::Up),
                Some(rfc3339(at(500)))
            ),
            "anyone may fetch a script: that changes no host's state"
        );
    }

    const MAC: MacAddr = MacAddr([2, 0, 0, 0, 0, 1]);

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn stamp(secs: u64) -> Option<String> {
        Some(rfc3339(at(secs)))
    }

    /// A UEFI netboot as the timeline sees it, at `start` + the seconds below.
    fn uefi_boot(timeline: &Timeline, start: u64) {
        let tftp = || Event::Tftp {
            file: "snponly.efi".into(),
        };
        for (secs, event) in [
            // ProxyDHCP: the firmware's offer on 67, then its request on 4011.
            (0, Event::Dhcp(DhcpStage::Firmware)),
            (1, Event::Dhcp(DhcpStage::Firmware)),
            // OVMF asks for the size first, then the file.
            (2, tftp()),
            (3, tftp()),
            (10, Event::Dhcp(DhcpStage::Ipxe)),
            (11, Event::IpxeScript),
            (12, Event::Artifact(ArtifactKind::Kernel)),
            (13, Event::HostLayer),
            (14, Event::Artifact(ArtifactKind::Initrd)),
            (20, Event::Dhcp(DhcpStage::Os)),
            (21, Event::Artifact(ArtifactKind::Root)),
            (40, report(ReportState::Up, "boot-a", &[])),
            // The system's renewals, its reports and a refetched root move nothing.
            (41, Event::Dhcp(DhcpStage::Os)),
            (70, report(ReportState::Up, "boot-a", &[])),
            (80, Event::Artifact(ArtifactKind::Root)),
            (1800, Event::Dhcp(DhcpStage::Os)),
        ] {
            timeline.record_at(MAC, event, at(start + secs));
        }
    }

    /// The stamps of a boot, in boot order.
    fn phases(boot: &BootStamps) -> [Option<String>; 10] {
        [
            &boot.dhcp_firmware,
            &boot.tftp,
            &boot.dhcp_ipxe,
            &boot.ipxe_script,
            &boot.kernel,
            &boot.host_layer,
            &boot.initrd,
            &boot.dhcp_os,
            &boot.root,
            &boot.reported_up,
        ]
        .map(Clone::clone)
    }

    #[test]
    fn a_boot_keeps_the_first_stamp_of_each_phase_in_boot_order() {
        let timeline = Timeline::default();
        uefi_boot(&timeline, 1000);
        let boot = timeline.get(MAC).boot;
        assert_eq!(
            phases(&boot),
            [1000, 1002, 1010, 1011, 1012, 1013, 1014, 1020, 1021, 1040].map(stamp)
        );
        assert_eq!(boot.tftp_file.as_deref(), Some("snponly.efi"));
    }

    #[test]
    fn the_firmware_asking_again_starts_a_new_boot_and_the_host_keeps_the_rest() {
        let timeline = Timeline::default();
        let address = Ipv4Addr::new(10, 0, 0, 5);
        timeline.bind_address(MAC, address);
        uefi_boot(&timeline, 1000);
        let token = timeline.release_secrets(MAC, "boot-a").unwrap();
        timeline.alert(MAC, "secrets refused to 10.0.0.66: a spoofer");
        let booted = timeline.get(MAC);

        timeline.record_at(MAC, Event::Dhcp(DhcpStage::Firmware), at(5000));
        let record = timeline.get(MAC);
        assert_eq!(
            record.boot,
            BootStamps {
                dhcp_firmware: stamp(5000),
                ..BootStamps::default()
            }
        );
        assert_eq!(
            HostRecord {
                boot: booted.boot.clone(),
                ..record
            },
            booted,
            "the address, the reports, the secrets and the alerts are the host's"
        );
        assert_eq!(timeline.mac_of(address), Some(MAC));
        assert!(timeline.report_token_is(MAC, &token));

        uefi_boot(&timeline, 5000);
        assert_eq!(
            phases(&timeline.get(MAC).boot),
            [5000, 5002, 5010, 5011, 5012, 5013, 5014, 5020, 5021, 5040].map(stamp),
            "the new boot keeps its own first stamps"
        );
    }

    #[test]
    fn ipxe_as_the_nic_s_rom_starts_a_boot_once_the_last_one_loaded_a_kernel() {
        let timeline = Timeline::default();
        for (secs, event) in [
            (0, Event::Dhcp(DhcpStage::Ipxe)),
            (1, Event::Dhcp(DhcpStage::Ipxe)),
            (2, Event::IpxeScript),
            (3, Event::Dhcp(DhcpStage::Ipxe)),
            (4, Event::Artifact(ArtifactKind::Kernel)),
        ] {
            timeline.record_at(MAC, event, at(secs));
        }
        let boot = timeline.get(MAC).boot;
        assert_eq!(
            (boot.dhcp_ipxe, boot.ipxe_script, boot.kernel),
            (stamp(0), stamp(2), stamp(4)),
            "asking again before a kernel is the same boot"
        );
        timeline.record_at(MAC, Event::Dhcp(DhcpStage::Ipxe), at(100));
        let boot = timeline.get(MAC).boot;
        assert_eq!(
            (boot.dhcp_ipxe, boot.ipxe_script, boot.kernel),
            (stamp(100), None, None)
        );
    }

    #[test]
    fn keeps_problems_and_media_objects_and_drops_other_media() {
        let body = r#"{"host":"h","role":"mixer","image":"sha","state":"degraded",
            "problems":["live output is silent (mean -91.0 dB)"],
            "media":{"frames":45,"mean_volume_db":-91.0}}"#;
        let report: Report = serde_json::from_str(body).unwrap();
        assert_eq!(report.problems, ["live output is silent (mean -91.0 dB)"]);
        assert_eq!(
            report.media,
            Some(serde_json::json!({"frames": 45, "mean_volume_db": -91.0}))
        );
        for media in ["[1,2]", "\"loud\"", "3", "null"] {
            let body =
                format!(r#"{{"host":"h","role":"r","image":"i","state":"up","media":{media}}}"#);
            let report: Report = serde_json::from_str(&body).unwrap();
            assert_eq!(report.media, None, "media {media} is not an object");
        }
        assert!(
            serde_json::from_str::<Report>(
                r#"{"host":"h","role":"r","image":"i","state":"up","problems":"all of them"}"#
            )
            .is_err(),
            "problems are a list"
        );
    }

    #[test]
    fn the_latest_report_s_problems_and_media_replace_the_previous_ones() {
        let timeline = Timeline::default();
        let mac = MacAddr([2, 0, 0, 0, 0, 1]);
        let at = |secs| UNIX_EPOCH + Duration::from_secs(secs);
        let media = |frames: u64| {
            let mut event = report(ReportState::Degraded, "boot-a", &["x.service"]);
            if let Event::Report(report) = &mut event {
                report.media = Some(serde_json::json!({ "frames": frames }));
            }
            event
        };
        timeline.record_at(mac, media(0), at(100));
        let record = timeline.get(mac);
        assert_eq!(record.problems, ["x.service failed"]);
        assert_eq!(record.media, Some(serde_json::json!({ "frames": 0 })));

        timeline.record_at(mac, report(ReportState::Heartbeat, "boot-a", &[]), at(130));
        assert_eq!(
            timeline.get(mac).problems,
            ["x.service failed"],
            "a bare heartbeat says nothing new"
        );
        timeline.record_at(mac, report(ReportState::Up, "boot-a", &[]), at(160));
        let record = timeline.get(mac);
        assert_eq!((record.problems.len(), record.media), (0, None));

        timeline.record_at(mac, media(45), at(190));
        timeline.record_at(mac, report(ReportState::Up, "boot-b", &[]), at(500));
        let rebooting = timeline.get(mac);
        assert_eq!(
            (rebooting.problems.len(), rebooting.media),
            (0, None),
            "a new boot forgets the old one's problems"
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
            timeline.get(mac).boot.tftp_file.as_deref(),
            Some("undionly.kpxe")
        );
        assert!(!timeline.record_from(Ipv4Addr::new(10, 0, 0, 7), Event::Dhcp(DhcpStage::Ipxe)));
    }

    #[test]
    fn strangers_are_counted_not_stored() {
        let metrics = Arc::new(Metrics::default());
        let timeline = Timeline::new(Arc::clone(&metrics));
        let (host, leased) = (MacAddr([2, 0, 0, 0, 0, 1]), Ipv4Addr::new(10, 0, 0, 5));
        timeline.bind_address(host, leased);
        timeline.set_known([host]);
        assert_eq!(timeline.mac_of(leased), Some(host), "known leases survive");
        for last in 0..=255u8 {
            let stranger = MacAddr([2, 0, 0, 0, 1, last]);
            timeline.bind_address(stranger, Ipv4Addr::new(10, 0, 1, last));
            timeline.record(stranger, Event::Dhcp(DhcpStage::Ipxe));
        }
        let state = timeline.state.lock().unwrap();
        assert_eq!(
            (state.records.len(), state.macs_by_ip.len()),
            (1, 1),
            "only the policy's host is stored"
        );
        drop(state);
        assert_eq!(metrics.get(TIMELINE_STRANGERS, &[("event", "dhcp")]), 256);
        timeline.bind_address(MacAddr([2, 0, 0, 0, 2, 0]), leased);
        assert_eq!(
            timeline.mac_of(leased),
            None,
            "the host's old address went to a stranger"
        );
        assert_eq!(
            timeline.ip_of(host),
            None,
            "and the host no longer holds it"
        );
        let other = MacAddr([2, 0, 0, 0, 0, 2]);
        timeline.set_known([host, other]);
        timeline.bind_address(host, leased);
        timeline.bind_address(other, leased);
        assert_eq!(
            (timeline.ip_of(host), timeline.ip_of(other)),
            (None, Some(leased)),
            "one holder"
        );
        timeline.forget_address(other);
        assert_eq!(
            (timeline.ip_of(other), timeline.mac_of(leased)),
            (None, None),
            "released"
        );
        timeline.set_known([]);
        assert_eq!(
            timeline.get(host),
            HostRecord::default(),
            "dropped with the host"
        );
    }

    #[test]
    fn a_restart_keeps_the_records_and_the_report_tokens() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("timeline.json");
        let mac = MacAddr([0x52, 0x54, 0, 0, 0, 1]);
        let first = Timeline::persistent(Arc::default(), file.clone());
        first.bind_address(mac, Ipv4Addr::new(10, 0, 0, 10));
        first.record(mac, Event::Dhcp(DhcpStage::Firmware));
        first.record(
            mac,
            Event::Tftp {
                file: "undionly.kpxe".into(),
            },
        );
        first.record(mac, Event::Dhcp(DhcpStage::Ipxe));
        first.record(mac, Event::HostLayer);
        first.record(mac, Event::Dhcp(DhcpStage::Os));
        let token = first.release_secrets(mac, "b1").unwrap();
        first.record(mac, report(ReportState::Up, "b1", &[]));
        first.save();
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );

        let second = Timeline::persistent(Arc::default(), file.clone());
        assert!(
            second.report_token_is(mac, &token),
            "running hosts keep reporting"
        );
        assert_eq!(second.mac_of(Ipv4Addr::new(10, 0, 0, 10)), Some(mac));
        assert_eq!(second.get(mac), first.get(mac));
        assert_eq!(second.release_secrets(mac, "b2"), Err(Refusal::Again));

        // Written before the stamps told the stages apart: its one `dhcp` is dropped.
        let before_stages = r#"{"records":{"52:54:00:00:00:01":{"ip":"10.0.0.10",
            "dhcp":"2026-11-21T21:40:00Z","ipxe_script":"2026-11-21T21:30:07Z","state":"up"}},
            "releases":{"52:54:00:00:00:01":{"open":false,"boot_id":"b1","token":"0f0f"}}}"#;
        std::fs::write(&file, before_stages).unwrap();
        let upgraded = Timeline::persistent(Arc::default(), file.clone()).get(mac);
        assert_eq!(
            (upgraded.ip, upgraded.state),
            (Some(Ipv4Addr::new(10, 0, 0, 10)), Some(ReportState::Up))
        );
        assert_eq!(
            upgraded.boot,
            BootStamps {
                ipxe_script: Some("2026-11-21T21:30:07Z".into()),
                ..BootStamps::default()
            }
        );

        std::fs::write(&file, b"{ not json").unwrap();
        let third = Timeline::persistent(Arc::default(), file.clone());
        assert_eq!(third.get(mac), HostRecord::default());
        assert!(
            dir.path().join("timeline.json.corrupt").exists(),
            "set aside, not lost"
        );
    }
}
