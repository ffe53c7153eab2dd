//! A boot storm of real guests: hosts of a master file switched on at once as TCG VMs (BIOS, qemu's
//! iPXE ROM as the first stage), booting from the real netbootd, and again from the reference setup
//! a video team would otherwise run: dnsmasq handing out the same addresses and the per-MAC script
//! URL, nginx serving the very same files and netbootd's own iPXE scripts. Both runs are measured
//! with the same instrument, one capture on the lab's LAN (see [`CAPTURE_FILTER`]): DHCP, and for
//! HTTP every response's header and every acknowledgement the guests sent, from which come when
//! each guest was answered and when it held each file whole. netbootd's timeline adds when each
//! role reported up; the reference has no channel for that. Every milestone of every guest, and
//! every file's size, is checked before anything is printed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::fs;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use dhcproto::v4::{Decodable, Decoder, Message, MessageType};
use lectern_netboot::policy::DhcpStage;
use lectern_store::Store;

use crate::Firmware;
use crate::capture::{self, ACK, FIN, Packet, SYN, Transport};
use crate::room::{Fixture, RoomLab, unix_seconds};

/// What the capture keeps: DHCP whole; of HTTP (port 8080, as `[netboot] http_port` has it
/// here), every segment a guest sends (its acknowledgements and requests, headers only), and of
/// the server's only the connection's start and end and the segments that begin a response. The
/// files themselves are not captured. (pcap's `and` and `or` bind alike, left to right: every
/// group is bracketed.)
pub const CAPTURE_FILTER: &str = "(udp and (port 67 or port 68)) \
     or (tcp and dst port 8080) \
     or (tcp and src port 8080 and (tcp[tcpflags] & (tcp-syn|tcp-fin|tcp-rst) != 0 \
     or tcp[((tcp[12] & 0xf0) >> 2):4] = 0x48545450))";

/// Set by SIGINT, SIGTERM or SIGHUP (see [`stop_on_signals`]).
static STOPPED: AtomicBool = AtomicBool::new(false);

/// Makes SIGINT, SIGTERM and SIGHUP end a storm at its next look, its lab taken down, instead of
/// leaving its guests and servers running.
pub fn stop_on_signals() {
    extern "C" fn stop(_: libc::c_int) {
        STOPPED.store(true, Ordering::Relaxed);
    }
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(
                signal,
                stop as extern "C" fn(libc::c_int) as libc::sighandler_t,
            )
        };
    }
}

/// Bytes kept of each captured packet: a DHCP message, or a response's header.
const SNAPLEN: &str = "1600";

/// How often the run samples the server's and the guests' CPU time, and how many samples apart it
/// looks at the capture and netbootd's timeline.
const SAMPLE: Duration = Duration::from_secs(1);
const LOOK_EVERY: usize = 5;

/// A guest of the storm, as the master file and the store say it must boot.
#[derive(Debug, Clone)]
pub struct GuestPlan {
    pub hostname: String,
    /// As netbootd writes it in URLs: `52:54:00:99:00:01`.
    pub mac: String,
    pub ip: Ipv4Addr,
    /// The HTTP path of its root image.
    pub root: String,
    /// Every file its boot downloads over HTTP but the script: path, file in the store, size.
    pub files: Vec<(String, PathBuf, u64)>,
}

impl GuestPlan {
    fn script(&self) -> String {
        format!("/ipxe/{}", self.mac)
    }
}

/// The guests `hosts` of `plan`, with what the store's current release of each one's role and its
/// current host layer hold.
pub fn guest_plans(
    plan: &lectern_master::Plan,
    store: &Store,
    hosts: &[String],
) -> Result<Vec<GuestPlan>> {
    hosts
        .iter()
        .map(|hostname| {
            let host = plan
                .host(hostname)
                .with_context(|| format!("{hostname} is not in the master file"))?;
            let mac = host.mac.with_context(|| format!("{hostname} has no MAC"))?;
            let ip = host
                .ip
                .with_context(|| format!("{hostname} has no fixed address"))?;
            let (manifest, _) = store.newest_whole_release(host.role.as_str())?;
            let manifest = manifest
                .with_context(|| format!("the store has no {} image (imgbuild all)", host.role))?;
            let layer = store
                .host_layer(hostname)?
                .with_context(|| format!("the store has no layer of {hostname} (imgbuild all)"))?;
            let artifact = |name: &str| -> Result<(String, PathBuf, u64)> {
                let blob = manifest
                    .artifacts
                    .get(name)
                    .with_context(|| format!("the {} image has no {name}", host.role))?;
                Ok((
                    format!("/a/{}", blob.sha256),
                    store.blob_path(&blob.sha256),
                    blob.size,
                ))
            };
            let root = artifact("root.squashfs")?;
            Ok(GuestPlan {
                hostname: hostname.clone(),
                mac: mac.to_string(),
                ip,
                root: root.0.clone(),
                files: vec![
                    artifact("vmlinuz")?,
                    (
                        format!("/host/{mac}/layer"),
                        store.blob_path(&layer.blob.sha256),
                        layer.blob.size,
                    ),
                    artifact("initrd")?,
                    root,
                ],
            })
        })
        .collect()
}

/// One HTTP response a guest got, as the capture shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Transfer {
    pub asked_at: f64,
    /// 0: no response (yet).
    pub status: u16,
    pub content_length: u64,
    /// Body bytes the server sent: up to the next response on the connection, the server's FIN, or
    /// else the last byte the guest acknowledged.
    pub sent: u64,
    /// When the guest acknowledged the body's last byte.
    pub done_at: Option<f64>,
}

impl Transfer {
    /// Whether this is the whole file of `size` bytes, received.
    pub fn whole(&self, size: u64) -> bool {
        self.status == 200
            && self.content_length == size
            && self.sent == size
            && self.done_at.is_some()
    }
}

/// What one guest's boot looked like on the wire; times in seconds since 1970.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GuestWire {
    /// The ACK to the first stage's DHCP (the firmware's, or iPXE's where it is the NIC's ROM).
    pub first_stage_dhcp: Option<f64>,
    /// The ACK to the initrd's DHCP (`ip=dhcp`), the first after the first stage's.
    pub initrd_dhcp: Option<f64>,
    /// When the guest asked for the root image it then received whole, and when it held it.
    pub root_asked: Option<f64>,
    pub root_sent: Option<f64>,
    /// The ACK to the booted system's own DHCP (systemd-networkd's), after the root image.
    pub system_dhcp: Option<f64>,
    /// DISCOVERs and REQUESTs beyond one each per stage.
    pub dhcp_retries: u32,
    pub naks: u32,
    /// Every address an ACK gave it.
    pub addresses: BTreeSet<Ipv4Addr>,
    /// Every HTTP request it made, by path, in order.
    pub transfers: BTreeMap<String, Vec<Transfer>>,
}

/// The stages whose DHCP a storm tells apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Stage {
    First,
    Initrd,
    System,
}

/// One TCP connection to the HTTP server, as captured.
#[derive(Debug, Default)]
struct Connection<'a> {
    /// The server's initial sequence number (its SYN).
    isn: Option<u32>,
    /// (time, guest's sequence number, path) of each GET.
    requests: Vec<(f64, u32, String)>,
    /// (server's sequence number, segment) of each segment starting a response.
    responses: Vec<(u32, &'a [u8])>,
    /// (time, acknowledgement) of each segment of the guest's.
    acks: Vec<(f64, u32)>,
    /// The sequence number of the server's FIN.
    fin: Option<u32>,
}

/// A response header's status, length and Content-Length, if `segment` starts with a whole one.
fn response_head(segment: &[u8]) -> Option<(u16, usize, u64)> {
    let end = segment.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&segment[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let length = lines
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse().ok())
        .unwrap_or(0);
    Some((status, end, length))
}

impl Connection<'_> {
    /// Each request's transfer, in order, with the path it asked for.
    fn transfers(&self) -> Vec<(String, Transfer)> {
        let Some(isn) = self.isn else {
            return Vec::new();
        };
        let offset = |seq: u32| u64::from(seq.wrapping_sub(isn));
        let acked = |at_least: u64| {
            (self.acks.iter())
                .find(|(_, ack)| offset(*ack) >= at_least)
                .map(|(at, _)| *at)
        };
        let last_acked = self.acks.iter().map(|(_, ack)| offset(*ack)).max();
        (self.requests.iter().enumerate())
            .map(|(i, (asked_at, _, path))| {
                let mut transfer = Transfer {
                    asked_at: *asked_at,
                    status: 0,
                    content_length: 0,
                    sent: 0,
                    done_at: None,
                };
                if let Some((seq, segment)) = self.responses.get(i) {
                    if let Some((status, head, length)) = response_head(segment) {
                        let start = offset(*seq) + head as u64;
                        let end = start + length;
                        let boundary = (self.responses.get(i + 1))
                            .map(|(next, _)| offset(*next))
                            .or(self.fin.map(offset))
                            .or(last_acked)
                            .unwrap_or(start);
                        transfer = Transfer {
                            status,
                            content_length: length,
                            sent: boundary.saturating_sub(start),
                            done_at: acked(end),
                            ..transfer
                        };
                    }
                }
                (path.clone(), transfer)
            })
            .collect()
    }
}

/// A request's path with its `%XX` escapes decoded (iPXE writes a MAC's colons as `%3A`).
fn percent_decoded(path: &[u8]) -> String {
    let mut decoded = Vec::with_capacity(path.len());
    let mut rest = path;
    while let Some((&byte, after)) = rest.split_first() {
        let escaped = (byte == b'%')
            .then(|| std::str::from_utf8(after.get(..2)?).ok())
            .flatten()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(value) => {
                decoded.push(value);
                rest = &after[2..];
            }
            None => {
                decoded.push(byte);
                rest = after;
            }
        }
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

/// What `guests` did on the wire in `packets`, a capture of the LAN of the HTTP server `server`.
pub fn read_wire(packets: &[Packet], server: SocketAddrV4, guests: &[GuestPlan]) -> Vec<GuestWire> {
    let mut connections: BTreeMap<(Ipv4Addr, u16), Connection> = BTreeMap::new();
    // Client messages: (time, MAC, xid, kind, first stage); replies: (time, MAC, xid, kind, address).
    let mut asked = Vec::new();
    let mut answered = Vec::new();
    for packet in packets {
        match &packet.transport {
            Transport::Tcp(segment)
                if packet.dst == *server.ip() && segment.dst_port == server.port() =>
            {
                let connection = connections
                    .entry((packet.src, segment.src_port))
                    .or_default();
                if segment.flags & ACK != 0 {
                    connection.acks.push((packet.at, segment.ack));
                }
                if let Some(request) = segment.payload.strip_prefix(b"GET ") {
                    let path = request.split(|b| *b == b' ').next().unwrap_or_default();
                    let retransmitted =
                        (connection.requests.iter()).any(|(_, seq, _)| *seq == segment.seq);
                    if !retransmitted {
                        connection
                            .requests
                            .push((packet.at, segment.seq, percent_decoded(path)));
                    }
                }
            }
            Transport::Tcp(segment)
                if packet.src == *server.ip() && segment.src_port == server.port() =>
            {
                let connection = connections
                    .entry((packet.dst, segment.dst_port))
                    .or_default();
                if segment.flags & SYN != 0 {
                    connection.isn = Some(segment.seq);
                }
                if segment.flags & FIN != 0 {
                    connection.fin = Some(segment.seq.wrapping_add(segment.len));
                }
                let retransmitted =
                    (connection.responses.iter()).any(|(seq, _)| *seq == segment.seq);
                if segment.payload.starts_with(b"HTTP/1.") && !retransmitted {
                    connection.responses.push((segment.seq, segment.payload));
                }
            }
            Transport::Udp {
                src_port,
                dst_port,
                payload,
            } if matches!((src_port, dst_port), (68, 67) | (67, 68)) => {
                let Ok(message) = Message::decode(&mut Decoder::new(payload)) else {
                    continue;
                };
                let Some(kind) = message.opts().msg_type() else {
                    continue;
                };
                let Some(mac) = message.chaddr().get(..6).map(|mac| {
                    (mac.iter().map(|b| format!("{b:02x}")))
                        .collect::<Vec<_>>()
                        .join(":")
                }) else {
                    continue;
                };
                if *dst_port == 67 {
                    // Told apart as netbootd tells them apart for its timeline.
                    let first = lectern_netboot::dhcp::decode::decode(payload)
                        .is_ok_and(|request| request.stage != DhcpStage::Os);
                    asked.push((packet.at, mac, message.xid(), kind, first));
                } else {
                    answered.push((packet.at, mac, message.xid(), kind, message.yiaddr()));
                }
            }
            _ => {}
        }
    }

    guests
        .iter()
        .map(|guest| {
            let mut wire = GuestWire::default();
            for ((client, _), connection) in &connections {
                if *client != guest.ip {
                    continue;
                }
                for (path, transfer) in connection.transfers() {
                    wire.transfers.entry(path).or_default().push(transfer);
                }
            }
            for transfers in wire.transfers.values_mut() {
                transfers.sort_by(|a, b| a.asked_at.total_cmp(&b.asked_at));
            }
            let root = wire.transfers.get(&guest.root);
            let root_asked = root
                .and_then(|transfers| transfers.first())
                .map_or(f64::INFINITY, |transfer| transfer.asked_at);
            let root_size = guest
                .files
                .iter()
                .find(|(path, ..)| *path == guest.root)
                .map(|f| f.2);
            let whole_root = (root.into_iter().flatten())
                .find(|transfer| root_size.is_some_and(|size| transfer.whole(size)));
            wire.root_sent = whole_root.and_then(|transfer| transfer.done_at);
            wire.root_asked = whole_root.map(|transfer| transfer.asked_at);

            // Each exchange's stage, from the first message of its xid: the booted system's before
            // the root image is the initrd's.
            let mut stages: HashMap<u32, Stage> = HashMap::new();
            let mut counts: HashMap<(Stage, MessageType), u32> = HashMap::new();
            for (at, mac, xid, kind, first) in &asked {
                if *mac != guest.mac {
                    continue;
                }
                let stage = *stages.entry(*xid).or_insert(if *first {
                    Stage::First
                } else if *at < root_asked {
                    Stage::Initrd
                } else {
                    Stage::System
                });
                *counts.entry((stage, *kind)).or_default() += 1;
            }
            wire.dhcp_retries = counts
                .iter()
                .filter(|((_, kind), _)| {
                    matches!(kind, MessageType::Discover | MessageType::Request)
                })
                .map(|(_, count)| count.saturating_sub(1))
                .sum();
            for (at, mac, xid, kind, address) in &answered {
                if *mac != guest.mac {
                    continue;
                }
                match kind {
                    MessageType::Ack => {
                        wire.addresses.insert(*address);
                        let milestone = match stages.get(xid) {
                            Some(Stage::First) => &mut wire.first_stage_dhcp,
                            Some(Stage::Initrd) => &mut wire.initrd_dhcp,
                            Some(Stage::System) => &mut wire.system_dhcp,
                            None => continue,
                        };
                        milestone.get_or_insert(*at);
                    }
                    MessageType::Nak => wire.naks += 1,
                    _ => {}
                }
            }
            wire
        })
        .collect()
}

impl GuestWire {
    /// The milestones common to both servers still missing.
    fn missing(&self) -> Vec<&'static str> {
        [
            ("first-stage DHCP", self.first_stage_dhcp),
            ("initrd's DHCP", self.initrd_dhcp),
            ("root image", self.root_sent),
            ("system's DHCP", self.system_dhcp),
        ]
        .into_iter()
        .filter(|(_, at)| at.is_none())
        .map(|(what, _)| what)
        .collect()
    }

    /// Why this boot did not download `files` (path, size) whole, one sentence each; and the
    /// requests beyond one per file.
    fn check_files(&self, files: &[(String, u64)]) -> (Vec<String>, u32) {
        let mut problems = Vec::new();
        let mut requests = 0;
        for (path, size) in files {
            let transfers = self
                .transfers
                .get(path)
                .map(Vec::as_slice)
                .unwrap_or_default();
            requests += transfers.len() as u32;
            if !transfers.iter().any(|transfer| transfer.whole(*size)) {
                problems.push(format!(
                    "{path}: wanted {size} bytes with 200, got {transfers:?}"
                ));
            }
        }
        (problems, requests.saturating_sub(files.len() as u32))
    }
}

/// Which server a storm boots from.
pub enum Server<'a> {
    /// The real netbootd, this binary, serving the master file.
    Netbootd(&'a Path),
    /// dnsmasq and nginx, serving netbootd's own scripts (by MAC) and the store's files.
    Reference {
        scripts: &'a BTreeMap<String, String>,
    },
}

/// A guest's storm, in seconds from its power-on.
#[derive(Debug, Clone)]
pub struct GuestOutcome {
    pub hostname: String,
    pub first_stage_dhcp: f64,
    pub initrd_dhcp: f64,
    pub root_sent: f64,
    /// From its request to its last byte: the server's and the link's part of the boot.
    pub root_transfer: f64,
    pub system_dhcp: f64,
    /// qemu's CPU seconds until then: the emulated work of the boot, which the machine's load does
    /// not change (it only spreads it over more time).
    pub cpu_to_system_dhcp: f64,
    /// Whole seconds: netbootd's timeline stamps them so. None from the reference.
    pub up: Option<f64>,
    pub dhcp_retries: u32,
    pub http_retries: u32,
    pub bytes: u64,
}

/// One server's storm.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub server: String,
    /// Which of the runs (from 1).
    pub run: usize,
    pub guests: Vec<GuestOutcome>,
    /// The server's CPU seconds (every process of it) from the first power-on until the last
    /// guest's system DHCP, and (netbootd) until the last role reported up.
    pub cpu_to_system_dhcp: f64,
    pub cpu_to_up: Option<f64>,
    /// The peak resident memory of the server's processes, summed.
    pub peak_kib: u64,
    /// The machine's 1-minute load at the first power-on and at the end.
    pub load: (f64, f64),
    /// netbootd's iPXE script of each guest, by MAC (empty from the reference).
    pub scripts: BTreeMap<String, String>,
}

/// The storm: `hosts` of the master file `master`, with the images of `store`, at once.
pub struct Storm {
    pub master: PathBuf,
    pub store: PathBuf,
    pub hosts: Vec<String>,
    /// Longest the slowest guest may take to its last milestone.
    pub timeout: Duration,
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn load_average() -> f64 {
    (fs::read_to_string("/proc/loadavg").ok())
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// `pids` and every process descending from them.
fn process_tree(pids: &[u32]) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = (fs::read_dir("/proc").into_iter().flatten().flatten())
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = fs::read_to_string(entry.path().join("stat")).ok()?;
            let ppid = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            Some((pid, ppid))
        })
        .collect();
    let mut tree = pids.to_vec();
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(
            parents
                .iter()
                .filter(|(_, ppid)| *ppid == parent)
                .map(|(pid, _)| *pid),
        );
        i += 1;
    }
    tree
}

/// CPU seconds (user + system) used so far by `pids` and their descendants.
fn cpu_seconds(pids: &[u32]) -> f64 {
    // SAFETY: sysconf only reads a constant.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let ticks: u64 = (process_tree(pids).into_iter())
        .filter_map(|pid| {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
        })
        .sum();
    ticks as f64 / per_second
}

/// The peak resident memory (VmHWM) of `pids` and their descendants, summed, in KiB.
fn peak_kib(pids: &[u32]) -> u64 {
    (process_tree(pids).into_iter())
        .filter_map(|pid| {
            let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .sum()
}

/// The first line of `program --version` (or `-v`) that names a version, its last word.
fn version(program: &str, flag: &str) -> String {
    let output = Command::new(program).arg(flag).output();
    let text = output.map_or_else(
        |_| String::new(),
        |out| String::from_utf8_lossy(&[out.stdout, out.stderr].concat()).into_owned(),
    );
    let line = text
        .lines()
        .find(|line| line.contains("ersion"))
        .unwrap_or_default();
    let word = line
        .split_whitespace()
        .find(|word| word.contains(|c: char| c.is_ascii_digit()));
    word.map_or("?".into(), |word| {
        word.trim_start_matches("nginx/").to_owned()
    })
}

impl Storm {
    /// Boots every host of the storm at once from `server` and measures it.
    pub fn run(&self, server: Server) -> Result<Outcome> {
        let mut room = RoomLab::new(&self.master, &self.store, Fixture::AsMasterFile)?;
        let store = Store::open(&self.store)?;
        let guests = guest_plans(&room.plan, &store, &self.hosts)?;
        let http = SocketAddrV4::new(room.plan.netboot.server_ip, room.plan.netboot.http_port);
        ensure!(
            CAPTURE_FILTER.contains(&format!("port {}", http.port())),
            "the capture filter is written for HTTP on port 8080, the master file says {}",
            http.port()
        );
        let (label, servers) = match server {
            Server::Netbootd(netbootd) => {
                // At netbootd's default level, as a box runs it.
                (
                    "netbootd".to_owned(),
                    vec![room.serve_logging(netbootd, "info")?],
                )
            }
            Server::Reference { scripts } => (
                format!(
                    "dnsmasq {} + nginx {}",
                    version("dnsmasq", "--version"),
                    version("nginx", "-v")
                ),
                serve_reference(&mut room, &guests, scripts)?,
            ),
        };
        let pids: Vec<u32> = servers.iter().map(|index| room.lab.pid(*index)).collect();
        let pcap = start_capture(&mut room)?;
        // Every file in the page cache, as it is for a server that has served them before.
        for (_, file, _) in guests.iter().flat_map(|guest| &guest.files) {
            fs::read(file).with_context(|| format!("reading {}", file.display()))?;
        }

        // (when, the server's CPU seconds, each guest's qemu's): a guest not started yet has used none.
        let sample = |room: &RoomLab| {
            let guests: Vec<f64> = (guests.iter())
                .map(|guest| room.guest_cpu_seconds(&guest.hostname).unwrap_or(0.0))
                .collect();
            (unix_now(), cpu_seconds(&pids), guests)
        };
        let load_at_start = load_average();
        let mut samples = vec![sample(&room)];
        for guest in &guests {
            room.power_on(&guest.hostname, Firmware::Bios)?;
        }
        let started = Instant::now();
        let expect_up = matches!(server, Server::Netbootd(_));
        let mut shown = Instant::now();
        let (wire, up) = loop {
            std::thread::sleep(SAMPLE);
            ensure!(
                !STOPPED.load(Ordering::Relaxed),
                "{label}: stopped by a signal"
            );
            samples.push(sample(&room));
            if samples.len() % LOOK_EVERY != 0 {
                continue;
            }
            let bytes = fs::read(&pcap)?;
            let wire = read_wire(&capture::packets(&bytes)?, http, &guests);
            let up: Vec<Option<f64>> = (guests.iter())
                .map(|guest| {
                    let record = room.record(&guest.hostname);
                    record["reported_up"]
                        .as_str()
                        .and_then(unix_seconds)
                        .map(|at| at as f64)
                })
                .collect();
            let done = |missing: usize| guests.len() - missing;
            let missing_wire = wire.iter().filter(|w| !w.missing().is_empty()).count();
            let missing_up = up.iter().filter(|at| at.is_none()).count();
            if missing_wire == 0 && (!expect_up || missing_up == 0) {
                break (wire, up);
            }
            if shown.elapsed() >= Duration::from_secs(30) {
                let count = |milestone: fn(&GuestWire) -> Option<f64>| {
                    wire.iter().filter(|w| milestone(w).is_some()).count()
                };
                eprintln!(
                    "{label}, {:.0} s: first-stage DHCP {}, initrd's DHCP {}, root {}, system's DHCP {}{} of {}",
                    started.elapsed().as_secs_f64(),
                    count(|w| w.first_stage_dhcp),
                    count(|w| w.initrd_dhcp),
                    count(|w| w.root_sent),
                    count(|w| w.system_dhcp),
                    if expect_up {
                        format!(", up {}", done(missing_up))
                    } else {
                        String::new()
                    },
                    guests.len()
                );
                shown = Instant::now();
            }
            if started.elapsed() > self.timeout {
                let mut report = String::new();
                for ((guest, wire), up) in guests.iter().zip(&wire).zip(&up) {
                    let mut missing = wire.missing();
                    if expect_up && up.is_none() {
                        missing.push("role up");
                    }
                    let _ = writeln!(
                        report,
                        "  {}: missing {}",
                        guest.hostname,
                        missing.join(", ")
                    );
                }
                if expect_up {
                    eprintln!("{}", room.diagnostics());
                } else {
                    eprintln!("{}", crate::log_tails(room.lab.guest_logs(), 30));
                }
                bail!(
                    "{label}: not every guest reached every milestone within {} s:\n{report}",
                    self.timeout.as_secs()
                );
            }
        };

        let scripts: BTreeMap<String, String> = if expect_up {
            (guests.iter())
                .map(|guest| {
                    let script = room.get(&guest.script()).with_context(|| {
                        format!("netbootd gave no script for {}", guest.hostname)
                    })?;
                    Ok((guest.mac.clone(), script))
                })
                .collect::<Result<_>>()?
        } else {
            BTreeMap::new()
        };
        let served_scripts = match server {
            Server::Reference { scripts } => scripts,
            Server::Netbootd(_) => &scripts,
        };
        // The first sample taken at or after `until` (seconds since 1970).
        let sampled_at = |until: f64| {
            (samples.iter())
                .find(|(at, ..)| *at >= until)
                .unwrap_or(samples.last().expect("sampled at the start"))
        };
        let mut outcomes = Vec::new();
        let mut problems = Vec::new();
        for (i, ((guest, wire), up)) in guests.iter().zip(&wire).zip(&up).enumerate() {
            let script = served_scripts
                .get(&guest.mac)
                .with_context(|| format!("no script for {}", guest.hostname))?;
            for (path, ..) in &guest.files {
                ensure!(
                    script.contains(&format!("{}{path}", room.plan.netboot.base_url)),
                    "{}'s script does not name {path}:\n{script}",
                    guest.hostname
                );
            }
            let files: Vec<(String, u64)> = std::iter::once((guest.script(), script.len() as u64))
                .chain(
                    guest
                        .files
                        .iter()
                        .map(|(path, _, size)| (path.clone(), *size)),
                )
                .collect();
            let (wrong, http_retries) = wire.check_files(&files);
            problems.extend(
                wrong
                    .into_iter()
                    .map(|p| format!("{}: {p}", guest.hostname)),
            );
            if wire.addresses != BTreeSet::from([guest.ip]) {
                problems.push(format!(
                    "{}: given {:?}, not its address {}",
                    guest.hostname, wire.addresses, guest.ip
                ));
            }
            if wire.naks > 0 {
                problems.push(format!("{}: {} NAKs", guest.hostname, wire.naks));
            }
            let on = (room.guest(&guest.hostname)?.powered_on())
                .duration_since(UNIX_EPOCH)?
                .as_secs_f64();
            let since = |at: Option<f64>| at.map_or(f64::NAN, |at| at - on);
            outcomes.push(GuestOutcome {
                hostname: guest.hostname.clone(),
                first_stage_dhcp: since(wire.first_stage_dhcp),
                initrd_dhcp: since(wire.initrd_dhcp),
                root_sent: since(wire.root_sent),
                root_transfer: since(wire.root_sent) - since(wire.root_asked),
                system_dhcp: since(wire.system_dhcp),
                cpu_to_system_dhcp: wire.system_dhcp.map_or(f64::NAN, |at| sampled_at(at).2[i]),
                // The stamp has whole seconds, the power-on's fraction is dropped with them.
                up: up.map(|at| at - on.floor()),
                dhcp_retries: wire.dhcp_retries,
                http_retries,
                bytes: files.iter().map(|(_, size)| size).sum(),
            });
        }
        if let Server::Reference { .. } = server {
            problems.extend(check_nginx_log(&room, &guests)?);
        }
        ensure!(
            problems.is_empty(),
            "{label}: the storm did not deliver what it should:\n  {}",
            problems.join("\n  ")
        );

        let server_cpu_at = |until: f64| sampled_at(until).1 - samples[0].1;
        let last = |milestone: fn(&GuestWire) -> Option<f64>| {
            wire.iter().filter_map(milestone).fold(0.0, f64::max)
        };
        Ok(Outcome {
            server: label,
            run: 1,
            guests: outcomes,
            cpu_to_system_dhcp: server_cpu_at(last(|w| w.system_dhcp)),
            // reported_up is stamped in whole seconds: up to the end of that second.
            cpu_to_up: expect_up
                .then(|| server_cpu_at(up.iter().flatten().fold(0.0_f64, |a, b| a.max(*b)) + 1.0)),
            peak_kib: peak_kib(&pids),
            load: (load_at_start, load_average()),
            scripts,
        })
    }
}

/// Starts tcpdump on the lab's LAN; returns the file it writes.
fn start_capture(room: &mut RoomLab) -> Result<PathBuf> {
    let pcap = room.lab.dir().join("storm.pcap");
    let mut tcpdump = room.lab.in_netns("tcpdump");
    tcpdump
        .args([
            "-i",
            &room.plan.network.dhcp.interface,
            "-n",
            "-U",
            "-s",
            SNAPLEN,
            "-w",
        ])
        .arg(&pcap)
        .arg(CAPTURE_FILTER);
    room.lab.spawn(tcpdump, "tcpdump.log")?;
    let log = room.lab.dir().join("tcpdump.log");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("listening on")
    {
        ensure!(
            Instant::now() < deadline,
            "tcpdump did not start (apt-get install tcpdump): {}",
            fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(pcap)
}

/// The nginx access log line format the reference writes: when, who, what, and what nginx says
/// it sent.
const NGINX_LOG_FORMAT: &str =
    "$msec $remote_addr $request_method $uri $status $body_bytes_sent $request_time";

/// Starts the reference setup on the lab's LAN: nginx serving each guest's script (netbootd's, from
/// `scripts`), files and layer at the URLs netbootd gives them, and dnsmasq handing out the master
/// file's addresses and pointing iPXE at the script, with the options of the reference
/// configuration (`shared/netboot-lab.md`): no wait for ProxyDHCP, router advertisements, TFTP of
/// the first stage for firmware that is not iPXE. Returns their lab indexes.
fn serve_reference(
    room: &mut RoomLab,
    guests: &[GuestPlan],
    scripts: &BTreeMap<String, String>,
) -> Result<Vec<usize>> {
    let dir = room.lab.dir().to_owned();
    let www = dir.join("www");
    let netboot = room.plan.netboot.clone();
    for guest in guests {
        let script = scripts
            .get(&guest.mac)
            .with_context(|| format!("no script of {} to serve", guest.hostname))?;
        let path = www.join(guest.script().trim_start_matches('/'));
        fs::create_dir_all(path.parent().context("a script's directory")?)?;
        fs::write(&path, script)?;
        for (url, file, _) in &guest.files {
            let served = www.join(url.trim_start_matches('/'));
            fs::create_dir_all(served.parent().context("a file's directory")?)?;
            if !served.exists() {
                std::os::unix::fs::symlink(file, &served)?;
            }
        }
    }
    let conf = dir.join("nginx.conf");
    fs::write(
        &conf,
        format!(
            "daemon off;\nworker_processes auto;\npid {dir}/nginx.pid;\nerror_log stderr;\n\
             events {{ worker_connections 4096; }}\nhttp {{\n    log_format storm '{NGINX_LOG_FORMAT}';\n    \
             access_log {dir}/access.log storm;\n    sendfile on;\n    default_type application/octet-stream;\n    \
             client_body_temp_path {dir};\n    server {{ listen {}:{}; root {}; }}\n}}\n",
            netboot.server_ip,
            netboot.http_port,
            www.display(),
            dir = dir.display()
        ),
    )?;
    let mut nginx = room.lab.in_netns("nginx");
    nginx.arg("-c").arg(&conf);
    let nginx = room.lab.spawn(nginx, "nginx.log")?;

    // Router advertisements need an IPv6 prefix on the bridge.
    room.lab.add_address("fd99::1/64")?;
    let network = &room.plan.network;
    let bridge = &network.dhcp.interface;
    let range = network
        .dhcp
        .range
        .context("the master file has no DHCP range")?;
    let mut dnsmasq = room.lab.dnsmasq(bridge);
    dnsmasq
        .args(["--except-interface=lo", "--dhcp-authoritative"])
        .arg(format!(
            "--dhcp-range={},{},{},{}s",
            range[0], range[1], network.netmask, network.dhcp.lease_secs
        ))
        .arg(format!(
            "--dhcp-leasefile={}",
            dir.join("dnsmasq.leases").display()
        ))
        .arg(format!("--pid-file={}", dir.join("dnsmasq.pid").display()))
        .arg(format!("--dhcp-option=option:router,{}", network.gateway))
        .arg(format!("--domain={}", network.domain))
        .args([
            "--dhcp-match=set:ipxe,175",
            "--dhcp-userclass=set:ipxe,iPXE",
        ])
        .arg("--dhcp-option=tag:ipxe,175,b0:1:1")
        .args(["--enable-tftp", "--tftp-root=/usr/lib/ipxe", "--enable-ra"])
        .arg(format!(
            "--dhcp-range=::,constructor:{bridge},ra-only,64,1h"
        ));
    if !network.dns.is_empty() {
        let dns: Vec<String> = network.dns.iter().map(ToString::to_string).collect();
        dnsmasq.arg(format!("--dhcp-option=option:dns-server,{}", dns.join(",")));
    }
    if !network.ntp.is_empty() {
        let ntp: Vec<String> = network.ntp.iter().map(ToString::to_string).collect();
        dnsmasq.arg(format!("--dhcp-option=option:ntp-server,{}", ntp.join(",")));
    }
    for host in &room.plan.hosts {
        if let (Some(mac), Some(ip)) = (host.mac, host.ip) {
            dnsmasq.arg(format!(
                "--dhcp-host={mac},set:{},{ip},{}",
                host.hostname, host.hostname
            ));
            dnsmasq.arg(format!(
                "--dhcp-boot=tag:ipxe,tag:{},{}/ipxe/{mac}",
                host.hostname, netboot.base_url
            ));
        }
    }
    dnsmasq.arg(format!(
        "--dhcp-boot=tag:!ipxe,undionly.kpxe,,{}",
        netboot.server_ip
    ));
    let dnsmasq = room.lab.spawn(dnsmasq, "dnsmasq.log")?;

    let first = guests.first().context("no guests")?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while room
        .curl(&format!("{}{}", netboot.base_url, first.script()))
        .is_none()
    {
        ensure!(
            Instant::now() < deadline,
            "nginx did not serve {}: {}",
            first.script(),
            fs::read_to_string(dir.join("nginx.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(vec![dnsmasq, nginx])
}

/// Where nginx's own log disagrees with the capture: each guest's files must have gone out whole
/// (status 200, the file's size) as nginx counts them.
fn check_nginx_log(room: &RoomLab, guests: &[GuestPlan]) -> Result<Vec<String>> {
    let log = fs::read_to_string(room.lab.dir().join("access.log"))?;
    let mut problems = Vec::new();
    for guest in guests {
        for (path, _, size) in &guest.files {
            let whole = log.lines().any(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                matches!(fields[..], [_, address, "GET", uri, "200", sent, _]
                    if address == guest.ip.to_string() && uri == path && sent == size.to_string())
            });
            if !whole {
                problems.push(format!(
                    "{}: nginx logged no whole GET of {path}",
                    guest.hostname
                ));
            }
        }
    }
    Ok(problems)
}

fn seconds(value: f64) -> String {
    if value.is_nan() {
        "-".into()
    } else {
        format!("{value:.1}")
    }
}

/// "median / slowest" of `values`, in seconds.
fn median_slowest(mut values: Vec<f64>) -> String {
    values.retain(|v| !v.is_nan());
    if values.is_empty() {
        return "-".into();
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    let median = if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    };
    format!("{} / {} s", seconds(median), seconds(values[n - 1]))
}

/// One row of [`summary`]: `guests` pooled.
fn summary_row(
    server: &str,
    runs: &str,
    guests: &[&GuestOutcome],
    cpu: &str,
    peak_kib: u64,
    load: (f64, f64),
) -> String {
    let column = |milestone: fn(&GuestOutcome) -> f64| {
        median_slowest(guests.iter().map(|guest| milestone(guest)).collect())
    };
    let up = if guests.iter().all(|g| g.up.is_some()) {
        column(|g| g.up.unwrap_or(f64::NAN))
    } else {
        "no report channel".into()
    };
    format!(
        "| {server} | {runs} | {} | {} | {} | {} | {} | {} | {} | {up} | {cpu} | {:.0} MiB | {} | {} | {:.1}–{:.1} |\n",
        guests.len(),
        column(|g| g.first_stage_dhcp),
        column(|g| g.initrd_dhcp),
        column(|g| g.root_sent),
        column(|g| g.root_transfer),
        column(|g| g.system_dhcp),
        column(|g| g.cpu_to_system_dhcp),
        peak_kib as f64 / 1024.0,
        guests.iter().map(|g| g.dhcp_retries).sum::<u32>(),
        guests.iter().map(|g| g.http_retries).sum::<u32>(),
        load.0,
        load.1,
    )
}

/// The table of BENCHMARKS.md: a row per server and run, each milestone as median / slowest over
/// the guests in seconds from power-on, then (with several runs) a row per server over every guest
/// of every run, with the median run's CPU seconds.
pub fn summary(outcomes: &[Outcome]) -> String {
    let mut out = String::from(
        "| server | run | guests | first-stage DHCP answered | initrd's DHCP answered | root image received | \
         root image, request to last byte | system's DHCP answered | guest CPU-s to it | role reported up | \
         server CPU-s to the last system DHCP (to the last up) | peak memory | DHCP retries | HTTP retries | \
         load |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let cpu = |to_system_dhcp: f64, to_up: Option<f64>| match to_up {
        Some(to_up) => format!("{to_system_dhcp:.2} ({to_up:.2})"),
        None => format!("{to_system_dhcp:.2}"),
    };
    for outcome in outcomes {
        let guests: Vec<&GuestOutcome> = outcome.guests.iter().collect();
        let (low, high) = outcome.load;
        out.push_str(&summary_row(
            &outcome.server,
            &outcome.run.to_string(),
            &guests,
            &cpu(outcome.cpu_to_system_dhcp, outcome.cpu_to_up),
            outcome.peak_kib,
            (low.min(high), low.max(high)),
        ));
    }
    let mut servers: Vec<&str> = outcomes.iter().map(|o| o.server.as_str()).collect();
    servers.sort_unstable();
    servers.dedup();
    for server in servers {
        let runs: Vec<&Outcome> = outcomes.iter().filter(|o| o.server == server).collect();
        if runs.len() < 2 {
            continue;
        }
        let median = |mut values: Vec<f64>| {
            values.sort_by(f64::total_cmp);
            values[values.len() / 2]
        };
        let to_up: Vec<f64> = runs.iter().filter_map(|o| o.cpu_to_up).collect();
        let loads = runs.iter().flat_map(|o| [o.load.0, o.load.1]);
        out.push_str(&summary_row(
            server,
            &format!("all {}", runs.len()),
            &runs.iter().flat_map(|o| &o.guests).collect::<Vec<_>>(),
            &cpu(
                median(runs.iter().map(|o| o.cpu_to_system_dhcp).collect()),
                (to_up.len() == runs.len()).then(|| median(to_up)),
            ),
            runs.iter().map(|o| o.peak_kib).max().unwrap_or(0),
            loads.fold((f64::INFINITY, 0.0), |(low, high), load| {
                (low.min(load), high.max(load))
            }),
        ));
    }
    out
}

/// Every guest's milestones, in seconds from its power-on.
pub fn per_guest(outcome: &Outcome) -> String {
    let mut out = format!(
        "{}, run {}:\n| guest | first-stage DHCP | initrd's DHCP | root image | root transfer | system's DHCP | \
         its CPU-s | up | DHCP retries | HTTP retries | bytes checked |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
        outcome.server, outcome.run
    );
    for g in &outcome.guests {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            g.hostname,
            seconds(g.first_stage_dhcp),
            seconds(g.initrd_dhcp),
            seconds(g.root_sent),
            seconds(g.root_transfer),
            seconds(g.system_dhcp),
            seconds(g.cpu_to_system_dhcp),
            g.up.map_or("-".into(), |up| format!("{up:.0}")),
            g.dhcp_retries,
            g.http_retries,
            g.bytes
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::tests::{frame, pcap, tcp, udp};
    use crate::capture::{RST, packets};

    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
    const GUEST: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 101);
    const MAC: [u8; 6] = [0x52, 0x54, 0, 0x99, 0, 1];
    const ROOT: &str = "/a/root";

    fn guest() -> GuestPlan {
        GuestPlan {
            hostname: "storm-1".into(),
            mac: "52:54:00:99:00:01".into(),
            ip: GUEST,
            root: ROOT.into(),
            files: vec![(ROOT.into(), PathBuf::new(), 3000)],
        }
    }

    /// A DHCP message of `kind` for MAC, from the client (`op` 1) or the server (2), with `extra`
    /// options.
    fn dhcp(op: u8, xid: u32, kind: u8, yiaddr: Ipv4Addr, extra: &[u8]) -> Vec<u8> {
        let mut message = vec![0u8; 240];
        message[..3].copy_from_slice(&[op, 1, 6]);
        message[4..8].copy_from_slice(&xid.to_be_bytes());
        message[16..20].copy_from_slice(&yiaddr.octets());
        message[28..34].copy_from_slice(&MAC);
        message[236..240].copy_from_slice(&[99, 130, 83, 99]);
        message.extend_from_slice(&[53, 1, kind]);
        message.extend_from_slice(extra);
        message.push(255);
        message
    }

    const IPXE: &[u8] = &[77, 4, b'i', b'P', b'X', b'E'];
    const NONE: Ipv4Addr = Ipv4Addr::UNSPECIFIED;

    fn asks(at: f64, xid: u32, kind: u8, extra: &[u8]) -> (f64, Vec<u8>, usize) {
        let message = dhcp(1, xid, kind, NONE, extra);
        (
            at,
            frame(NONE, Ipv4Addr::BROADCAST, 17, &udp((68, 67), &message)),
            2000,
        )
    }

    fn answers(at: f64, xid: u32, kind: u8) -> (f64, Vec<u8>, usize) {
        let message = dhcp(2, xid, kind, GUEST, &[]);
        (at, frame(SERVER, GUEST, 17, &udp((67, 68), &message)), 2000)
    }

    fn from_guest(at: f64, seq: u32, ack: u32, flags: u8, payload: &[u8]) -> (f64, Vec<u8>, usize) {
        (
            at,
            frame(
                GUEST,
                SERVER,
                6,
                &tcp((40000, 8080), seq, ack, flags, payload),
            ),
            2000,
        )
    }

    fn from_server(at: f64, seq: u32, flags: u8, payload: &[u8]) -> (f64, Vec<u8>, usize) {
        (
            at,
            frame(
                SERVER,
                GUEST,
                6,
                &tcp((8080, 40000), seq, 1, flags, payload),
            ),
            200,
        )
    }

    fn wire(frames: &[(f64, Vec<u8>, usize)]) -> GuestWire {
        let file = pcap(frames);
        let packets = packets(&file).unwrap();
        let server = SocketAddrV4::new(SERVER, 8080);
        read_wire(&packets, server, &[guest()]).remove(0)
    }

    const HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 3000\r\n\r\n";

    /// A boot: iPXE's DHCP (with one DISCOVER again), the root over HTTP in two acknowledged halves,
    /// the initrd's DHCP before it and networkd's after it.
    fn boot(last_ack: u32) -> Vec<(f64, Vec<u8>, usize)> {
        let isn = 1000u32;
        let head = HEAD.len() as u32;
        vec![
            asks(1.0, 7, 1, IPXE),
            asks(2.0, 7, 1, IPXE),
            answers(2.1, 7, 2),
            asks(2.2, 7, 3, IPXE),
            answers(2.3, 7, 5),
            asks(10.0, 8, 1, &[]),
            answers(10.1, 8, 2),
            asks(10.2, 8, 3, &[]),
            answers(10.3, 8, 5),
            from_guest(11.0, 1, 0, SYN, b""),
            from_server(11.0, isn, SYN | ACK, b""),
            from_guest(11.1, 1, isn + 1, ACK, b"GET /a/root HTTP/1.1\r\n\r\n"),
            from_server(11.2, isn + 1, ACK, HEAD),
            from_guest(12.0, 2, isn + 1 + head + 1500, ACK, b""),
            from_server(12.5, isn + 1 + head + 3000, FIN | ACK, b""),
            from_guest(13.0, 2, isn + 1 + last_ack, ACK | FIN, b""),
            asks(20.0, 9, 1, &[]),
            answers(20.1, 9, 2),
            asks(20.2, 9, 3, &[]),
            answers(20.5, 9, 5),
        ]
    }

    #[test]
    fn reads_each_milestone_of_a_boot_from_the_wire() {
        let head = HEAD.len() as u32;
        let wire = wire(&boot(head + 3000 + 1));
        assert_eq!(wire.first_stage_dhcp, Some(2.3));
        assert_eq!(wire.initrd_dhcp, Some(10.3));
        assert_eq!(wire.root_sent, Some(13.0));
        assert_eq!(wire.system_dhcp, Some(20.5));
        assert_eq!(wire.dhcp_retries, 1);
        assert_eq!(wire.naks, 0);
        assert_eq!(wire.addresses, BTreeSet::from([GUEST]));
        assert_eq!(
            wire.transfers[ROOT],
            [Transfer {
                asked_at: 11.1,
                status: 200,
                content_length: 3000,
                sent: 3000,
                done_at: Some(13.0)
            }]
        );
        assert!(wire.missing().is_empty());
        assert_eq!(wire.check_files(&[(ROOT.into(), 3000)]), (vec![], 0));
    }

    #[test]
    fn a_root_image_cut_short_is_not_received() {
        let head = HEAD.len() as u32;
        // The guest acknowledged half of it, then reset the connection.
        let mut frames = boot(head + 1500);
        frames.retain(|(at, ..)| *at != 12.5);
        frames.push(from_guest(13.5, 2, 1000 + 1 + head + 1500, RST, b""));
        let wire = wire(&frames);
        assert_eq!(wire.root_sent, None);
        assert_eq!(wire.transfers[ROOT][0].sent, 1500);
        assert_eq!(wire.transfers[ROOT][0].done_at, None);
        assert_eq!(wire.missing(), ["root image"]);
        let (problems, _) = wire.check_files(&[(ROOT.into(), 3000)]);
        assert_eq!(problems.len(), 1, "{problems:?}");
        // The wrong size is no whole file either.
        let (problems, _) = wire.check_files(&[(ROOT.into(), 2999)]);
        assert_eq!(problems.len(), 1, "{problems:?}");
    }

    #[test]
    fn responses_sharing_a_connection_end_where_the_next_begins() {
        let isn = 5000u32;
        let head = HEAD.len() as u32;
        let second = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n";
        let next = isn + 1 + head + 3000;
        let wire = wire(&[
            from_server(1.0, isn, SYN | ACK, b""),
            from_guest(1.1, 1, isn + 1, ACK, b"GET /a/root HTTP/1.1\r\n\r\n"),
            from_guest(1.1, 1, isn + 1, ACK, b"GET /a/root HTTP/1.1\r\n\r\n"),
            from_server(1.2, isn + 1, ACK, HEAD),
            from_guest(2.0, 30, next, ACK, b"GET /a/other HTTP/1.1\r\n\r\n"),
            from_server(2.1, next, ACK, second),
            from_guest(2.5, 60, next + second.len() as u32 + 10, ACK, b""),
        ]);
        // The retransmitted GET is one request.
        assert_eq!(wire.transfers[ROOT].len(), 1);
        assert_eq!(wire.transfers[ROOT][0].sent, 3000);
        assert_eq!(wire.transfers[ROOT][0].done_at, Some(2.0));
        assert_eq!(wire.transfers["/a/other"][0].sent, 10);
        assert_eq!(wire.transfers["/a/other"][0].done_at, Some(2.5));
        assert!(wire.check_files(&[("/a/other".into(), 10)]).0.is_empty());
        assert_eq!(wire.check_files(&[(ROOT.into(), 3000)]).1, 0);
    }

    #[test]
    fn decodes_the_escapes_of_a_path() {
        assert_eq!(percent_decoded(b"/ipxe/52%3A54%3a00"), "/ipxe/52:54:00");
        assert_eq!(percent_decoded(b"/a/100%"), "/a/100%");
        assert_eq!(percent_decoded(b"/a/%zz"), "/a/%zz");
    }

    #[test]
    fn reads_a_response_head() {
        assert_eq!(
            response_head(b"HTTP/1.1 200 OK\r\ncontent-length: 42\r\nX: y\r\n\r\nbody"),
            Some((200, 45, 42))
        );
        assert_eq!(
            response_head(b"HTTP/1.1 404 Not Found\r\n\r\n"),
            Some((404, 26, 0))
        );
        assert_eq!(response_head(b"HTTP/1.1 200 OK\r\nContent-Le"), None);
    }

    #[test]
    fn summarises_median_and_slowest() {
        assert_eq!(median_slowest(vec![3.0, 1.0, 2.0]), "2.0 / 3.0 s");
        assert_eq!(median_slowest(vec![4.0, 1.0, 2.0, 3.0]), "2.5 / 4.0 s");
        assert_eq!(median_slowest(vec![]), "-");
    }
}
