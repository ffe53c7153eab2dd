//! The master file as written by people: one struct per TOML table.
//!
//! These types are the single source of truth for the file's shape. The JSON Schema
//! (`imgbuild schema`), the structural checks with line/column errors and the README's field
//! reference are all generated from them, so they cannot drift apart. Doc comments here are
//! user-facing: they end up in the schema and in the README.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The master file (`master.toml`): everything lectern needs to know about one conference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MasterFile {
    /// Version of this file format. Only `1` exists.
    pub schema_version: u32,
    /// The event: names used in paths and on screen.
    pub conference: Conference,
    /// Where encoders push the streams.
    pub streaming: Streaming,
    /// The video LAN.
    pub network: Network,
    /// Settings of the netbootd process itself.
    #[serde(default)]
    pub netboot: Netboot,
    /// Who can log in to the hosts.
    #[serde(default)]
    pub ssh: Ssh,
    /// Video and encoding settings for every room; rooms override them one by one.
    #[serde(default)]
    pub defaults: Defaults,
    /// Where the secrets file is.
    #[serde(default)]
    pub secrets: SecretsFileRef,
    /// The rooms that are recorded and streamed. The slug is the key everywhere.
    #[serde(default)]
    pub rooms: Vec<Room>,
    /// Physical machines on the video LAN (mixers, sources, the netboot server).
    #[serde(default)]
    pub machines: Vec<Machine>,
    /// Encoders: local VMs, cloud instances or bare-metal boxes, one or more per room.
    #[serde(default)]
    pub encoders: Vec<Encoder>,
    /// Other servers (streaming backend and frontends).
    #[serde(default)]
    pub servers: Vec<Server>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Conference {
    /// Display name, e.g. "FOSDEM 2027".
    pub name: String,
    /// Short name used in paths (the veyepar show slug), e.g. "fosdem2027".
    pub slug: String,
    /// Organisation slug (the veyepar client slug); first level of the recordings tree.
    pub org: String,
    /// The conference's web site; `imgbuild plan` shows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The schedule (Pentabarf/frab XML), for review and cutting tools; `imgbuild plan` shows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_url: Option<String>,
    /// IANA time zone of the venue, e.g. "Europe/Brussels": the hosts' local time (/etc/localtime),
    /// which dates the recordings' day directories. It must exist in this machine's tzdata.
    #[serde(default = "default_timezone")]
    pub timezone: String,
    /// IRC network of the rooms' channels, e.g. "libera"; `imgbuild plan` and the watch pages show it
    /// beside them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub irc_network: Option<String>,
}

fn default_timezone() -> String {
    "UTC".into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Streaming {
    /// Protocol of the streaming ingest the encoders push to: `rtmp` (FLV, H.264/AAC), `srt`
    /// (MPEG-TS, H.264/AAC) or `icecast` (WebM, VP8/Opus). A `streaming-backend` server of this
    /// file ingests `rtmp`; the others need an ingest of your own.
    pub ingest: IngestKind,
    /// Where encoders push. `{room}` is replaced by the stream name (the room slug, or
    /// `<slug>_<variant>` for a variant) and `{key}` by the room's stream key (from the secrets
    /// file), e.g. "rtmp://backend.example.org/stream/{room}?key={key}". With a
    /// `streaming-backend` server the path is `/<application>/{room}`.
    pub ingest_url: String,
    /// Public HLS playlist per room (`{room}` replaced), for the web frontends. It ends in
    /// `{room}.m3u8`; a `streaming-backend` server serves the room's playlists (every rendition)
    /// below that path, and `streaming-frontend` servers cache them at the same path (playlists
    /// for a second, segments while viewers ask for them): point the URL's host name at them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hls_url: Option<String>,
    /// Public watch page per room (`{room}` replaced), ending in `{room}`; a
    /// `streaming-backend` server serves it, and the list of rooms one level up, and
    /// `streaming-frontend` servers cache both (for 10 s) at the same path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watch_url: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum IngestKind {
    Rtmp,
    Srt,
    Icecast,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// DNS domain of the video LAN; hosts are `<hostname>.<domain>`.
    pub domain: String,
    /// The video LAN in CIDR notation, e.g. "10.42.0.0/24".
    pub subnet: String,
    /// Default router handed to hosts.
    pub gateway: Ipv4Addr,
    /// DNS servers handed to hosts.
    #[serde(default)]
    pub dns: Vec<Ipv4Addr>,
    /// NTP servers: netbootd hands them out (DHCP option 42) and the hosts' chrony uses only them.
    /// Empty means the gateway.
    #[serde(default)]
    pub ntp: Vec<Ipv4Addr>,
    /// How netbootd answers DHCP on the LAN.
    pub dhcp: Dhcp,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Dhcp {
    /// `authoritative`: netbootd is the LAN's DHCP server. `proxy`: a venue DHCP server gives
    /// the addresses and netbootd only adds boot options for the machines listed here.
    pub mode: DhcpMode,
    /// Network interface netbootd serves on, e.g. "enp1s0".
    pub interface: String,
    /// Dynamic pool `[first, last]` for hosts without a fixed `ip` (authoritative mode only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<[Ipv4Addr; 2]>,
    /// Lease time: a number followed by s, m, h or d, e.g. "6h".
    #[serde(default = "default_lease")]
    pub lease: String,
}

fn default_lease() -> String {
    "6h".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum DhcpMode {
    Authoritative,
    Proxy,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Netboot {
    /// TCP port of netbootd's HTTP server (iPXE scripts, images, public host layers).
    #[serde(default = "default_http_port")]
    #[schemars(range(min = 1))]
    pub http_port: u16,
    /// TCP port of netbootd's HTTPS server: hosts fetch their secrets and send their boot reports
    /// there, pinning the server's key (kept in the store, baked into the role images).
    #[serde(default = "default_https_port")]
    #[schemars(range(min = 1))]
    pub https_port: u16,
    /// TCP port on the netboot machine's address where the box receives the hosts' journals over
    /// TLS (`systemd-journal-remote`, run by the `lectern-journal-remote` service): every netbooted
    /// host uploads its journal there (`systemd-journal-upload`), checking the receiver's
    /// certificate against an authority kept in the store and baked into the role images.
    #[serde(default = "default_journal_port")]
    #[schemars(range(min = 1))]
    pub journal_port: u16,
    /// Where netbootd serves the operator's views (`/api/hosts`, `/metrics`): every host's MAC,
    /// address and state, which the LAN does not get. The box's loopback by default (reach it with
    /// `ssh -L 8081:127.0.0.1:8081`); an address on an admin network of its own otherwise.
    #[serde(default = "default_operator_address")]
    pub operator_address: std::net::SocketAddr,
    /// Hosts report every 30 s; one whose reports stop for this many beats is marked `stale` in
    /// netbootd's `/api/hosts` (powered off, hung, or cut off the LAN).
    #[serde(default = "default_stale_after_missed_beats")]
    #[schemars(range(min = 1))]
    pub stale_after_missed_beats: u32,
    /// What netbootd lets the LAN hold at once; each refusal or cut is counted in `/metrics`.
    #[serde(default)]
    pub limits: NetbootLimits,
    /// Image store directory, relative to the master file's directory.
    #[serde(default = "default_store")]
    pub store: String,
}

impl Default for Netboot {
    fn default() -> Self {
        Netboot {
            http_port: default_http_port(),
            https_port: default_https_port(),
            journal_port: default_journal_port(),
            operator_address: default_operator_address(),
            stale_after_missed_beats: default_stale_after_missed_beats(),
            limits: NetbootLimits::default(),
            store: default_store(),
        }
    }
}

fn default_http_port() -> u16 {
    8080
}

fn default_https_port() -> u16 {
    8443
}

/// systemd-journal-remote's own default.
fn default_journal_port() -> u16 {
    19532
}

/// `[netboot.limits]`: what one client, or the whole LAN, may make netbootd hold. Each bounds
/// the descriptors and memory a flood can take; the defaults serve a 90-host storm.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NetbootLimits {
    /// TFTP transfers at once from one address (a firmware's size probe beside its download,
    /// with room for retries); more get an ERROR "busy".
    #[serde(default = "default_tftp_per_client")]
    #[schemars(range(min = 1))]
    pub tftp_per_client: u32,
    /// TFTP transfers at once in all.
    #[serde(default = "default_tftp_total")]
    #[schemars(range(min = 1))]
    pub tftp_total: u32,
    /// Longest TFTP `timeout` option honoured, in seconds; a longer one is not acknowledged. A
    /// silent client is dropped after six of them.
    #[serde(default = "default_tftp_max_timeout_s")]
    #[schemars(range(min = 1, max = 255))]
    pub tftp_max_timeout_s: u32,
    /// HTTP and HTTPS connections at once, each; more are closed as soon as they are accepted.
    #[serde(default = "default_http_connections")]
    #[schemars(range(min = 1))]
    pub http_connections: u32,
    /// Seconds a client has to send a request's headers (and a TLS handshake).
    #[serde(default = "default_http_header_timeout_s")]
    #[schemars(range(min = 1))]
    pub http_header_timeout_s: u32,
    /// Seconds without a byte moving either way before a connection is closed; a download that
    /// keeps moving, however slowly, never is.
    #[serde(default = "default_http_idle_timeout_s")]
    #[schemars(range(min = 1))]
    pub http_idle_timeout_s: u32,
}

impl Default for NetbootLimits {
    fn default() -> Self {
        NetbootLimits {
            tftp_per_client: default_tftp_per_client(),
            tftp_total: default_tftp_total(),
            tftp_max_timeout_s: default_tftp_max_timeout_s(),
            http_connections: default_http_connections(),
            http_header_timeout_s: default_http_header_timeout_s(),
            http_idle_timeout_s: default_http_idle_timeout_s(),
        }
    }
}

fn default_tftp_per_client() -> u32 {
    8
}

fn default_tftp_total() -> u32 {
    256
}

fn default_tftp_max_timeout_s() -> u32 {
    5
}

fn default_http_connections() -> u32 {
    512
}

fn default_http_header_timeout_s() -> u32 {
    10
}

fn default_http_idle_timeout_s() -> u32 {
    30
}

fn default_stale_after_missed_beats() -> u32 {
    3
}

fn default_operator_address() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], 8081))
}

fn default_store() -> String {
    "store".into()
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Ssh {
    /// Public keys (OpenSSH format) allowed to log in as root on every host.
    #[serde(default)]
    pub authorized_keys: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    /// Capture and mixing format.
    #[serde(default)]
    pub video: Video,
    /// Stream encoding.
    #[serde(default)]
    pub encode: Encode,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Video {
    /// Picture size.
    #[serde(default = "default_video_mode")]
    pub mode: VideoMode,
    /// Frames per second.
    #[serde(default = "default_framerate")]
    #[schemars(range(min = 1))]
    pub framerate: u32,
    /// Audio channels mixed and streamed.
    #[serde(default = "default_audio_channels")]
    #[schemars(range(min = 1))]
    pub audio_channels: u32,
    /// Audio sample rate in Hz.
    #[serde(default = "default_audio_rate")]
    #[schemars(range(min = 1))]
    pub audio_rate: u32,
}

impl Default for Video {
    fn default() -> Self {
        Video {
            mode: default_video_mode(),
            framerate: default_framerate(),
            audio_channels: default_audio_channels(),
            audio_rate: default_audio_rate(),
        }
    }
}

fn default_video_mode() -> VideoMode {
    VideoMode::P1080
}
fn default_framerate() -> u32 {
    30
}
fn default_audio_channels() -> u32 {
    2
}
fn default_audio_rate() -> u32 {
    48000
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum VideoMode {
    /// 640x360: previews, tests and low-power machines.
    #[serde(rename = "360p")]
    P360,
    #[serde(rename = "720p")]
    P720,
    #[serde(rename = "1080p")]
    P1080,
}

impl VideoMode {
    pub fn dimensions(self) -> (u32, u32) {
        match self {
            VideoMode::P360 => (640, 360),
            VideoMode::P720 => (1280, 720),
            VideoMode::P1080 => (1920, 1080),
        }
    }
}

/// A room's override of `[defaults.video]`: only the fields given replace the defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VideoOverride {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<VideoMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub framerate: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub audio_channels: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub audio_rate: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Encode {
    /// Hardware video encoding: `vaapi` on Intel/AMD GPUs, `none` for x264 on the CPU.
    #[serde(default = "default_hwaccel")]
    pub hwaccel: HwAccel,
    /// x264's speed preset, for `hwaccel = "none"` over rtmp or srt: a faster preset spends less CPU per
    /// frame for a little more bitrate at the same quality. Default `veryfast`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<X264Preset>,
    /// Target video bitrate of the main rendition, kbit/s.
    #[serde(default = "default_video_kbps")]
    #[schemars(range(min = 1))]
    pub video_kbps: u32,
    /// Peak video bitrate, kbit/s.
    #[serde(default = "default_maxrate_kbps")]
    #[schemars(range(min = 1))]
    pub maxrate_kbps: u32,
    /// Seconds between keyframes.
    #[serde(default = "default_keyframe_s")]
    #[schemars(range(min = 1))]
    pub keyframe_s: u32,
    /// Audio bitrate, kbit/s.
    #[serde(default = "default_audio_kbps")]
    #[schemars(range(min = 1))]
    pub audio_kbps: u32,
    /// Extra lower-resolution renditions pushed beside the main one.
    #[serde(default)]
    pub variants: Vec<Variant>,
}

impl Default for Encode {
    fn default() -> Self {
        Encode {
            hwaccel: default_hwaccel(),
            preset: None,
            video_kbps: default_video_kbps(),
            maxrate_kbps: default_maxrate_kbps(),
            keyframe_s: default_keyframe_s(),
            audio_kbps: default_audio_kbps(),
            variants: Vec::new(),
        }
    }
}

fn default_hwaccel() -> HwAccel {
    HwAccel::None
}
fn default_video_kbps() -> u32 {
    3000
}
fn default_maxrate_kbps() -> u32 {
    5000
}
fn default_keyframe_s() -> u32 {
    2
}
fn default_audio_kbps() -> u32 {
    128
}

/// A room's override of `[defaults.encode]`: only the fields given replace the defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EncodeOverride {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hwaccel: Option<HwAccel>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<X264Preset>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub video_kbps: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub maxrate_kbps: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub keyframe_s: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub audio_kbps: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variants: Option<Vec<Variant>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum HwAccel {
    None,
    Vaapi,
}

/// x264's presets, fastest first (the slower ones cannot keep up with a live stream on an encoder box).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum X264Preset {
    Ultrafast,
    Superfast,
    Veryfast,
    Faster,
    Fast,
    Medium,
}

impl X264Preset {
    /// The name x264 (and ffmpeg's `-preset`) knows it by.
    pub fn name(self) -> &'static str {
        match self {
            X264Preset::Ultrafast => "ultrafast",
            X264Preset::Superfast => "superfast",
            X264Preset::Veryfast => "veryfast",
            X264Preset::Faster => "faster",
            X264Preset::Fast => "fast",
            X264Preset::Medium => "medium",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Variant {
    /// Rendition name, e.g. "480p"; the encoder pushes it as stream `<room>_<name>` (the
    /// ingest URL's `{room}`), and the backend lists it in the room's HLS playlist.
    pub name: String,
    /// Output height in pixels; width follows the aspect ratio.
    #[schemars(range(min = 1))]
    pub height: u32,
    /// Video bitrate of this rendition, kbit/s.
    #[schemars(range(min = 1))]
    pub video_kbps: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretsFileRef {
    /// Path of the secrets file, relative to the master file's directory. It must not be
    /// readable by group or others (chmod 600).
    #[serde(default = "default_secrets_file")]
    pub file: String,
}

impl Default for SecretsFileRef {
    fn default() -> Self {
        SecretsFileRef {
            file: default_secrets_file(),
        }
    }
}

fn default_secrets_file() -> String {
    "secrets.toml".into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Room {
    /// Short lowercase name (letters, digits, '-'): host names, stream names and paths use it.
    pub slug: String,
    /// Display name, e.g. "UB2.252A (Lameere)".
    pub name: String,
    /// The room's IRC channel, e.g. "#fosdem-lameere"; `imgbuild plan` and its watch page show
    /// it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub irc_channel: Option<String>,
    /// The room's schedule page; `imgbuild plan` shows it and its watch page links it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Video sources in order: the n-th (from 0) feeds the mixer on port 10000+n.
    pub sources: Vec<String>,
    /// Which source carries the room's audio; defaults to the first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio_source: Option<String>,
    /// Reference into the secrets file, e.g. "secret:stream_keys.lameere".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_key: Option<String>,
    /// Reference into the secrets file for the SRT passphrase (10 to 79 characters) that encrypts the
    /// mixer's contribution feed to the room's cloud (`ec2`) encoders, e.g.
    /// "secret:contribution.lameere"; required when the room has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contribution_passphrase: Option<String>,
    /// This room's changes to `[defaults.video]`, e.g. `{ mode = "720p", framerate = 25 }`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub video: Option<VideoOverride>,
    /// This room's changes to `[defaults.encode]`, e.g. `{ video_kbps = 2000 }`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encode: Option<EncodeOverride>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum MachineRole {
    /// Runs voctomix-core for one room.
    Mixer,
    /// Captures a camera or the slides and feeds its room's mixer.
    Source,
    /// The box that runs netbootd (its `ip` is the server address); it is not netbooted.
    Netboot,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Machine {
    /// Short host name (letters, digits, '-'), e.g. "lameere-mixer".
    pub hostname: String,
    /// Ethernet address, e.g. "8c:16:45:00:e6:f6". Required for netbooted machines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Fixed address; without it the host gets one from the DHCP range (or the venue DHCP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<Ipv4Addr>,
    /// What the machine does.
    pub role: MachineRole,
    /// Room slug (mixers and sources).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    /// For a source: which of its room's `sources` it captures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// For a source: the capture device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture: Option<Capture>,
    /// For a mixer: the local disk recordings are written to, mounted on /srv/recordings. Without
    /// one the mixer records into RAM, deleting the oldest segments to keep a quarter of it free,
    /// and `imgbuild check` warns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record_disk: Option<String>,
    /// Extra kernel command line arguments netbootd boots this machine with, e.g.
    /// `["nomodeset"]`, or `["modules-load=vivid"]` for the kernel's virtual capture device.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kernel_args: Vec<String>,
    /// The machine's hardware identity: netbootd releases its secrets (stream keys, passphrases)
    /// only to a boot that presents it, over TLS. Without one they go to whichever machine holds the
    /// host's address, and `imgbuild check` warns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<HardwareIdentity>,
}

/// What a machine's firmware says it is (SMBIOS), which the wire does not show: the host's
/// secrets are released only to a boot whose `/sys/class/dmi/id` matches every field given. qemu
/// sets them with `-smbios type=1,uuid=…,serial=…` and `-smbios type=3,asset=…`; `netbootd vms`
/// does so for local VMs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HardwareIdentity {
    /// System UUID (`dmidecode -s system-uuid`), e.g. "4c4c4544-0042-3510-8052-b4c04f4e3732".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// System serial number (`dmidecode -s system-serial-number`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// Chassis asset tag (`dmidecode -s chassis-asset-tag`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asset_tag: Option<String>,
    /// The Name of the machine's TPM 2.0 RSA endorsement key, "000b" and 64 hexadecimal digits
    /// (`tpm2_createek -G rsa -c ek.ctx && tpm2_readpublic -c ek.ctx` on it, or what netbootd logs
    /// when it refuses the machine's first boot). The boot must then also prove it holds that TPM:
    /// netbootd encrypts a one-time credential to the key (TPM2_MakeCredential), and only that TPM can
    /// recover it (TPM2_ActivateCredential). SMBIOS strings can be copied; the key cannot. For
    /// `[[machines]]` and bare-metal deployments: a local VM's TPM would be a file on this server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm_ek: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Capture {
    /// The capture hardware.
    pub kind: CaptureKind,
    /// Video device, e.g. "/dev/video0" (defaults depend on the kind).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// ALSA device for audio, e.g. "hw:1,0"; none means no audio from this source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio: Option<String>,
    /// Delays this source's video by this many milliseconds, to line up with its audio
    /// (voctomix-ingest's `--video-delay`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub video_delay_ms: Option<u32>,
    /// Delays this source's audio by this many milliseconds (voctomix-ingest's `--audio-delay`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio_delay_ms: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum CaptureKind {
    Hdmi2usb,
    V4l2,
    Blackmagic,
    /// Test pattern and tone: no hardware needed.
    Test,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Where {
    /// A VM on a hypervisor on the video LAN, run by `netbootd vms` there; netboots like a physical
    /// machine.
    LocalVm,
    /// An Amazon EC2 instance booted from the role's AMI.
    Ec2,
    /// A physical machine on the video LAN.
    BareMetal,
}

impl Where {
    /// As the master file spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Where::LocalVm => "local-vm",
            Where::Ec2 => "ec2",
            Where::BareMetal => "bare-metal",
        }
    }
}

/// Where an encoder or server runs and how it is reached; shared by `[[encoders]]` and
/// `[[servers]]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Deployment {
    /// Where it runs.
    #[serde(rename = "where")]
    pub placement: Where,
    /// Required for `local-vm` and `bare-metal`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Fixed address on the video LAN (`local-vm`, `bare-metal`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<Ipv4Addr>,
    /// For `local-vm`: the host name of the machine whose `netbootd vms` runs it (default: the netboot
    /// server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// For `local-vm`: virtual CPUs `netbootd vms` gives the VM (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub vcpus: Option<u32>,
    /// For `local-vm`: memory in MiB `netbootd vms` gives the VM (default 2048, at least 1024: the
    /// root image lives in its RAM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1024))]
    pub memory_mb: Option<u32>,
    /// For `ec2`: the region, e.g. "eu-west-1": `imgbuild publish ec2` registers the role's AMI
    /// there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// For `ec2`: the instance type `netbootd cloud up` runs, e.g. "c6i.xlarge".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_type: Option<String>,
    /// For `ec2`: the IAM instance profile the instance runs with. Its role must allow
    /// `ssm:GetParameter` (and `kms:Decrypt`) on `/lectern/<conference slug>/<hostname>/*`: the
    /// instance reads its per-host layer (with its secrets) from there at boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_profile: Option<String>,
    /// For `ec2`: security group ids, e.g. `["sg-0123…"]`; they must let the mixer's SRT
    /// contribution feed in (UDP 9000). Default: the VPC's default group.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security_groups: Vec<String>,
    /// For `ec2`: the subnet id to launch in. Default: the default VPC's subnet AWS picks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
    /// For netbooted hosts: extra kernel command line arguments, e.g. `["nomodeset"]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kernel_args: Vec<String>,
    /// For `local-vm` and `bare-metal`: the hardware identity its secrets are released to (see
    /// `[[machines]] identity`). `netbootd vms` gives a local VM these SMBIOS values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<HardwareIdentity>,
}

// serde cannot deny unknown fields beside `flatten`; the schema does, and the structural check
// that runs before deserialisation enforces it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
/// An encoder: pulls its room's live mix and pushes the stream to the ingest.
pub struct Encoder {
    /// Short host name, e.g. "lameere-enc".
    pub hostname: String,
    /// Room slug whose live mix this encoder streams.
    pub room: String,
    #[serde(flatten)]
    pub deployment: Deployment,
    /// For `ec2`: the public DNS name the room's mixer sends its contribution feed to;
    /// defaults to `<hostname>.<domain>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ServerRole {
    StreamingBackend,
    StreamingFrontend,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
/// A streaming server (backend or frontend).
pub struct Server {
    /// Short host name, e.g. "stream-backend".
    pub hostname: String,
    /// What the server does: a `streaming-backend` takes the encoders' RTMP and serves each
    /// room's HLS and watch page over HTTP (port 80); a `streaming-frontend` is an HTTP cache
    /// (nginx `proxy_cache`, port 80) in front of the file's one backend, for the viewers.
    pub role: ServerRole,
    #[serde(flatten)]
    pub deployment: Deployment,
}

/// The secrets file (`secrets.toml`): free-form tables of strings, addressed from the master
/// file as `secret:<table>.<key>`.
pub type SecretsFile = BTreeMap<String, toml::Value>;
