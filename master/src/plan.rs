//! The plan: the master file expanded into every host with its role, room, derived names,
//! addresses and ports, and the rendered settings of its services. This is what imgbuild
//! renders templates against and what netbootd serves from. It serialises with secrets as
//! `***` (see [`crate::secrets::with_secrets_revealed`]).

use std::fmt;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::str::FromStr;

use serde::Serialize;

use crate::diagnostics::Diagnostic;
pub use crate::mac::MacAddr;
use crate::model::{
    Capture, Conference, DhcpMode, Encode, HardwareIdentity, HwAccel, IngestKind, VideoMode, Where,
};
use crate::secrets::Secret;

/// voctocore's ports (voctomix 1.x, as packaged in Debian bookworm).
pub mod ports {
    pub const CONTROL: u16 = 9999;
    /// Source n feeds the mixer on `SOURCE_BASE + n`.
    pub const SOURCE_BASE: u16 = 10000;
    /// Raw program mix (what the recorder takes).
    pub const MIX_OUT: u16 = 11000;
    /// Program after the stream blanker (what on-LAN encoders pull).
    pub const LIVE_OUT: u16 = 15000;
    /// Where a cloud encoder listens for the mixer's compressed SRT contribution feed.
    pub const CONTRIBUTION: u16 = 9000;
}

/// How often a booted host reports (`lectern-heartbeat.timer` in the base image).
pub const HEARTBEAT_SECS: u64 = 30;

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub conference: Conference,
    pub streaming: StreamingPlan,
    pub network: NetworkPlan,
    pub netboot: NetbootPlan,
    pub ssh_authorized_keys: Vec<String>,
    pub rooms: Vec<RoomPlan>,
    pub hosts: Vec<Host>,
    /// The secrets file the master file names (its values are in the plan's secrets).
    #[serde(skip)]
    pub secrets_file: std::path::PathBuf,
    /// What the master file allows but probably does not mean, for `imgbuild check` to show.
    #[serde(skip)]
    pub warnings: Vec<Diagnostic>,
}

impl Plan {
    pub fn host(&self, hostname: &str) -> Option<&Host> {
        self.hosts.iter().find(|h| h.hostname == hostname)
    }

    pub fn host_by_mac(&self, mac: MacAddr) -> Option<&Host> {
        self.hosts.iter().find(|h| h.mac == Some(mac))
    }

    pub fn room(&self, slug: &str) -> Option<&RoomPlan> {
        self.rooms.iter().find(|r| r.slug == slug)
    }

    /// Hosts that boot from netbootd.
    pub fn netbooted(&self) -> impl Iterator<Item = &Host> {
        self.hosts.iter().filter(|h| h.netboot)
    }

    /// Roles used by at least one host that gets an image, in a stable order.
    pub fn image_roles(&self) -> Vec<Role> {
        let mut roles: Vec<Role> = self
            .hosts
            .iter()
            .filter(|h| h.role.has_image())
            .map(|h| h.role)
            .collect();
        roles.sort();
        roles.dedup();
        roles
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct StreamingPlan {
    pub ingest: IngestKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hls_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub watch_url: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NetworkPlan {
    pub domain: String,
    /// CIDR, e.g. "10.42.0.0/24".
    pub subnet: String,
    pub prefix_len: u8,
    pub netmask: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub dns: Vec<Ipv4Addr>,
    pub ntp: Vec<Ipv4Addr>,
    pub dhcp: DhcpPlan,
}

#[derive(Debug, Clone, Serialize)]
pub struct DhcpPlan {
    pub mode: DhcpMode,
    pub interface: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub range: Option<[Ipv4Addr; 2]>,
    pub lease_secs: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct NetbootPlan {
    /// Host name of the machine with role `netboot`.
    pub server: String,
    pub server_ip: Ipv4Addr,
    pub http_port: u16,
    /// e.g. "http://10.42.0.1:8080"
    pub base_url: String,
    pub https_port: u16,
    /// e.g. "https://10.42.0.1:8443": secrets and boot reports, to the pinned key.
    pub secure_url: String,
    pub journal_port: u16,
    /// e.g. "https://10.42.0.1:19532": where hosts upload their journals.
    pub journal_url: String,
    /// e.g. "http://127.0.0.1:8081": the operator's views.
    pub operator_url: String,
    /// A host that has not reported for this long is stale (`stale_after_missed_beats` heartbeats).
    pub stale_after_secs: u64,
    pub limits: crate::model::NetbootLimits,
    pub operator_address: std::net::SocketAddr,
    /// Absolute path of the image store.
    pub store: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
pub struct VideoPlan {
    pub mode: VideoMode,
    pub width: u32,
    pub height: u32,
    pub framerate: u32,
    pub audio_channels: u32,
    pub audio_rate: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct RoomPlan {
    pub slug: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub irc_channel: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Host name of the room's mixer.
    pub mixer: String,
    pub sources: Vec<MixerInput>,
    pub audio_source: String,
    /// Host names of the room's encoders.
    pub encoders: Vec<String>,
    pub video: VideoPlan,
    pub encode: Encode,
    /// What the room's encoders push: the main rendition first, then each variant.
    pub renditions: Vec<Rendition>,
    /// The room's public HLS playlist (every rendition), if the master file gives one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hls_url: Option<String>,
    /// The room's public watch page, if the master file gives one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub watch_url: Option<String>,
    /// Recordings go below this directory, one subdirectory per day.
    pub recording_dir: String,
}

/// One stream an encoder pushes for its room: the main rendition or a variant.
#[derive(Debug, Clone, Serialize)]
pub struct Rendition {
    /// `main`, or the variant's name (e.g. "480p").
    pub name: String,
    /// Stream name at the ingest: the room slug, or `<slug>_<variant>`.
    pub stream: String,
    pub width: u32,
    pub height: u32,
    pub video_kbps: u32,
    pub maxrate_kbps: u32,
    pub audio_kbps: u32,
    /// Peak bits per second of video and audio (HLS `BANDWIDTH`).
    pub bandwidth: u64,
    /// Where this rendition is pushed, key included (redacted when shown).
    pub push_url: Secret,
}

/// One of a mixer's inputs: a named source on a voctocore port.
#[derive(Debug, Clone, Serialize)]
pub struct MixerInput {
    pub name: String,
    pub port: u16,
    /// Host name of the source machine that feeds it.
    pub machine: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Mixer,
    Source,
    Encoder,
    Netboot,
    StreamingBackend,
    StreamingFrontend,
}

impl Role {
    pub const ALL: [Role; 6] = [
        Role::Mixer,
        Role::Source,
        Role::Encoder,
        Role::Netboot,
        Role::StreamingBackend,
        Role::StreamingFrontend,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Mixer => "mixer",
            Role::Source => "source",
            Role::Encoder => "encoder",
            Role::Netboot => "netboot",
            Role::StreamingBackend => "streaming-backend",
            Role::StreamingFrontend => "streaming-frontend",
        }
    }

    /// Whether imgbuild builds an image for this role (the netboot server is installed by hand).
    pub fn has_image(self) -> bool {
        self != Role::Netboot
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Role::ALL.iter().map(|r| r.as_str()).collect();
                format!("unknown role `{s}` (known: {})", names.join(", "))
            })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Host {
    pub hostname: String,
    pub fqdn: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac: Option<MacAddr>,
    /// Fixed address, if the master file gives one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<Ipv4Addr>,
    /// How other hosts reach it: the fixed address, else its mDNS name (a cloud host: its public name).
    pub address: String,
    pub role: Role,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    #[serde(rename = "where")]
    pub placement: Where,
    /// Boots from netbootd (by MAC).
    pub netboot: bool,
    /// Extra kernel command line arguments it netboots with.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kernel_args: Vec<String>,
    /// The SMBIOS identity its secrets are released to (UUID lowercase), if the master file binds one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<HardwareIdentity>,
    pub config: RoleConfig,
}

impl Host {
    /// The VM this host runs as (`where = "local-vm"`): its size and hypervisor.
    pub fn vm(&self) -> Option<&VmPlan> {
        match &self.config {
            RoleConfig::Encoder(encoder) => encoder.vm.as_ref(),
            RoleConfig::StreamingBackend(backend) => backend.server.vm.as_ref(),
            RoleConfig::StreamingFrontend(frontend) => frontend.server.vm.as_ref(),
            RoleConfig::Mixer(_) | RoleConfig::Source(_) | RoleConfig::Netboot => None,
        }
    }

    /// The cloud instance this host runs as (`where = "ec2"`): its region and instance type.
    pub fn cloud(&self) -> Option<&CloudPlan> {
        match &self.config {
            RoleConfig::Encoder(encoder) => encoder.cloud.as_ref(),
            RoleConfig::StreamingBackend(backend) => backend.server.cloud.as_ref(),
            RoleConfig::StreamingFrontend(frontend) => frontend.server.cloud.as_ref(),
            RoleConfig::Mixer(_) | RoleConfig::Source(_) | RoleConfig::Netboot => None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RoleConfig {
    Mixer(MixerConfig),
    Source(SourceConfig),
    Encoder(EncoderConfig),
    Netboot,
    StreamingBackend(BackendConfig),
    StreamingFrontend(FrontendConfig),
}

#[derive(Debug, Clone, Serialize)]
pub struct MixerConfig {
    pub room: String,
    pub video: VideoPlan,
    pub sources: Vec<MixerInput>,
    pub audio_source: String,
    pub control_port: u16,
    pub mix_out_port: u16,
    pub live_out_port: u16,
    pub recording_dir: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record_disk: Option<String>,
    /// Compressed feeds this mixer sends to cloud encoders (raw video cannot leave the LAN).
    pub contributions: Vec<Contribution>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Contribution {
    pub encoder: String,
    /// e.g. "srt://cornil-enc.example.org:9000?pbkeylen=32&passphrase=***"
    pub url: Secret,
    pub video_kbps: u32,
    pub audio_kbps: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct SourceConfig {
    pub room: String,
    pub source: String,
    /// Address of the room's mixer and the port this source feeds.
    pub mixer: String,
    pub mixer_port: u16,
    pub capture: Capture,
    pub video: VideoPlan,
}

#[derive(Debug, Clone, Serialize)]
pub struct EncoderConfig {
    pub room: String,
    /// What the encoder reads: the mixer's raw live output on the LAN, or an SRT listener for
    /// the mixer's contribution feed in the cloud.
    pub pull_url: Secret,
    /// Main rendition first, then the variants.
    pub renditions: Vec<Rendition>,
    pub ingest: IngestKind,
    pub video: VideoPlan,
    pub encode: Encode,
    pub hwaccel: HwAccel,
    /// The whole ffmpeg command line after `ffmpeg` (see [`crate::ffmpeg`]); arguments holding
    /// the stream key show as `***`.
    pub ffmpeg_args: Vec<Secret>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vm: Option<VmPlan>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cloud: Option<CloudPlan>,
}

/// A streaming backend: the ingest every room's encoders push to, HLS per room and rendition,
/// and the watch pages.
#[derive(Debug, Clone, Serialize)]
pub struct BackendConfig {
    pub ingest: IngestKind,
    /// The RTMP application encoders publish to (first path segment of the ingest URL).
    pub rtmp_app: String,
    /// URL path below which `<room>.m3u8` (and each rendition's `<stream>/index.m3u8`) is
    /// served, from `streaming.hls_url`, e.g. "/hls/".
    pub hls_path: String,
    /// URL path of the watch pages (`<path>` lists the rooms, `<path><room>` plays one), from
    /// `streaming.watch_url`, e.g. "/watch/".
    pub watch_path: String,
    pub rooms: Vec<BackendRoom>,
    #[serde(flatten)]
    pub server: ServerConfig,
}

/// What the backend knows of a room.
#[derive(Debug, Clone, Serialize)]
pub struct BackendRoom {
    pub slug: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub irc_channel: Option<String>,
    /// The room's schedule page (`rooms.url`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule_url: Option<String>,
    pub hls_url: String,
    pub watch_url: String,
    /// The key a publish must carry; `None` when the ingest URL has no `{key}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_key: Option<Secret>,
    pub renditions: Vec<Rendition>,
}

/// A streaming frontend: an HTTP cache in front of the file's streaming backend, serving the same
/// HLS and watch page paths to the public.
#[derive(Debug, Clone, Serialize)]
pub struct FrontendConfig {
    /// Host name of the backend it caches.
    pub backend: String,
    /// How it reaches that backend's HTTP port (80): the backend's address.
    pub backend_address: String,
    /// The backend's HLS path (see [`BackendConfig::hls_path`]): playlists are cached for a
    /// second, segments for as long as viewers ask for them.
    pub hls_path: String,
    /// The backend's watch page path (see [`BackendConfig::watch_path`]).
    pub watch_path: String,
    /// Seconds the cache keeps an entry nobody asks for (nginx's `inactive`): a live segment is
    /// asked for while the room's playlist lists it, then dropped this long after.
    pub cache_idle_secs: u64,
    /// The most the cache may hold, in MiB: `cache_idle_secs` of every rendition of every room at
    /// its peak bitrate, and at least [`FRONTEND_CACHE_MIN_MB`].
    pub cache_mb: u64,
    #[serde(flatten)]
    pub server: ServerConfig,
}

/// A frontend's [`FrontendConfig::cache_idle_secs`].
pub const FRONTEND_CACHE_IDLE_SECS: u64 = 90;
/// A frontend's smallest cache, in MiB: the watch pages and a few segments of a small room.
pub const FRONTEND_CACHE_MIN_MB: u64 = 64;

#[derive(Debug, Clone, Serialize)]
pub struct ServerConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vm: Option<VmPlan>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cloud: Option<CloudPlan>,
}

#[derive(Debug, Clone, Serialize)]
pub struct VmPlan {
    /// Host name of the hypervisor, if given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hypervisor: Option<String>,
    pub vcpus: u32,
    pub memory_mb: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct CloudPlan {
    pub region: String,
    pub instance_type: String,
    pub instance_profile: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub security_groups: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
    /// The SSM parameter (SecureString) holding the host's layer, which the instance reads at boot.
    pub layer_parameter: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_round_trip_through_their_names() {
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
        }
        assert!("mixr".parse::<Role>().unwrap_err().contains("known: mixer"));
    }
}
