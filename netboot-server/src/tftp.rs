//! TFTP, read-only: RFC 1350 with options (2347), blksize (2348), tsize and timeout (2349)
//! and windowsize (7440).
//!
//! Our own small server rather than async-tftp 0.4: that crate ignores client ERROR packets,
//! so a UEFI size probe (RRQ, OACK, ERROR 8) keeps it resending for minutes and it refuses
//! new requests from that port meanwhile. Here a client ERROR ends the transfer at once,
//! retries are bounded, and the packet decoder is a plain function to fuzz.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::net::UdpSocket;

use crate::metrics::{Metrics, TFTP_REQUESTS, TFTP_TRANSFERS};
use crate::safe_path::{self, PathError};
use crate::timeline::{Event, Timeline};

pub const PORT: u16 = 69;
const DEFAULT_BLKSIZE: usize = 512;
const MAX_BLKSIZE: usize = 65_464;
const MIN_BLKSIZE: usize = 8;
/// Gains flatten near 64 (netboot-lab); more only fills buffers.
const MAX_WINDOWSIZE: u16 = 64;
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// Bytes read from the file at a time: one read(2) per 178 blocks of 1468 bytes.
const READ_AHEAD: usize = 256 * 1024;
/// Each transfer runs on a thread of its own in blocking I/O, as tftpd-hpa runs a process per
/// transfer: lock-step TFTP waits for one ACK at a time, and a thread blocked in recv(2) is woken
/// by the ACK itself, where a task on the runtime took a timer, an epoll round and a failed
/// recv(2) per block. [`Limits::total`] bounds the threads; their stacks are small.
const TRANSFER_STACK: usize = 256 * 1024;

/// What one client, or all of them, may hold: every transfer holds a socket, so these bound
/// the descriptors a LAN peer can pin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest `timeout` option honoured (RFC 2349); a longer one is left out of the OACK and
    /// our default retransmission timeout applies.
    pub max_timeout: Duration,
    /// Retransmissions of one window (or OACK) before a transfer is abandoned: a silent client
    /// holds its transfer at most `(retries + 1) × max_timeout`.
    pub retries: u32,
    /// Transfers at once from one client address.
    pub per_client: usize,
    /// Transfers at once in all.
    pub total: usize,
}

impl Default for Limits {
    /// 5 s × 6 sends: a silent client is dropped within 30 s. Eight per address covers a
    /// firmware's size probe beside its download with room for retries.
    fn default() -> Self {
        Limits {
            max_timeout: Duration::from_secs(5),
            retries: 5,
            per_client: 8,
            total: 256,
        }
    }
}

/// Transfers under way, by client transfer ID and request, and by address.
#[derive(Debug, Default)]
struct Transfers {
    requests: HashSet<(SocketAddr, Vec<u8>)>,
    per_ip: HashMap<IpAddr, usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admission {
    Admitted,
    /// The client resent its request while we answer it: the same bytes from the same port.
    /// Another request from that port is a new one (UEFI firmware asks a file's size, ends that
    /// transfer with an ERROR and asks for the file from the same port at once, maybe before the
    /// transfer's thread has seen the ERROR).
    Duplicate,
    /// Over a cap: the label says which.
    Busy(&'static str),
}

impl Transfers {
    fn admit(&mut self, client: SocketAddr, request: &[u8], limits: &Limits) -> Admission {
        let key = (client, request.to_vec());
        if self.requests.contains(&key) {
            return Admission::Duplicate;
        }
        if self.requests.len() >= limits.total {
            return Admission::Busy("busy_total");
        }
        let from_client = self.per_ip.entry(client.ip()).or_default();
        if *from_client >= limits.per_client {
            return Admission::Busy("busy_client");
        }
        *from_client += 1;
        self.requests.insert(key);
        Admission::Admitted
    }

    fn release(&mut self, client: SocketAddr, request: Vec<u8>) {
        if !self.requests.remove(&(client, request)) {
            return;
        }
        if let Some(count) = self.per_ip.get_mut(&client.ip()) {
            *count -= 1;
            if *count == 0 {
                self.per_ip.remove(&client.ip());
            }
        }
    }
}

/// An admitted transfer's place, given back however its thread ends.
struct Slot {
    transfers: Arc<Mutex<Transfers>>,
    client: SocketAddr,
    request: Vec<u8>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let request = std::mem::take(&mut self.request);
        self.transfers
            .lock()
            .expect("tftp lock")
            .release(self.client, request);
    }
}

const OP_RRQ: u16 = 1;
const OP_WRQ: u16 = 2;
const OP_DATA: u16 = 3;
const OP_ACK: u16 = 4;
const OP_ERROR: u16 = 5;
const OP_OACK: u16 = 6;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
enum ErrorCode {
    NotDefined = 0,
    FileNotFound = 1,
    AccessViolation = 2,
    IllegalOperation = 4,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRequest {
    pub filename: String,
    pub mode: String,
    /// Option names lower-cased, in the order sent.
    pub options: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    Read(ReadRequest),
    Write,
    Data { block: u16 },
    Ack { block: u16 },
    Error { code: u16, message: String },
    OptionAck,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("packet too short")]
    TooShort,
    #[error("unknown opcode {0}")]
    UnknownOpcode(u16),
    #[error("string field not NUL-terminated")]
    Unterminated,
    #[error("string field not UTF-8")]
    NotUtf8,
}

/// Decodes one packet from an untrusted peer.
pub fn parse(bytes: &[u8]) -> Result<Packet, ParseError> {
    let (opcode, body) = split_u16(bytes)?;
    match opcode {
        OP_RRQ => {
            let mut fields = nul_terminated(body)?.into_iter();
            let filename = fields.next().ok_or(ParseError::TooShort)?;
            let mode = fields
                .next()
                .ok_or(ParseError::TooShort)?
                .to_ascii_lowercase();
            let mut options = Vec::new();
            while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
                options.push((name.to_ascii_lowercase(), value));
            }
            Ok(Packet::Read(ReadRequest {
                filename,
                mode,
                options,
            }))
        }
        OP_WRQ => Ok(Packet::Write),
        OP_DATA => Ok(Packet::Data {
            block: split_u16(body)?.0,
        }),
        OP_ACK => Ok(Packet::Ack {
            block: split_u16(body)?.0,
        }),
        OP_ERROR => {
            let (code, text) = split_u16(body)?;
            let message = nul_terminated(text)?.into_iter().next().unwrap_or_default();
            Ok(Packet::Error { code, message })
        }
        OP_OACK => Ok(Packet::OptionAck),
        other => Err(ParseError::UnknownOpcode(other)),
    }
}

fn split_u16(bytes: &[u8]) -> Result<(u16, &[u8]), ParseError> {
    match bytes {
        [high, low, rest @ ..] => Ok((u16::from_be_bytes([*high, *low]), rest)),
        _ => Err(ParseError::TooShort),
    }
}

fn nul_terminated(bytes: &[u8]) -> Result<Vec<String>, ParseError> {
    let Some(body) = bytes.strip_suffix(&[0]) else {
        return if bytes.is_empty() {
            Ok(Vec::new())
        } else {
            Err(ParseError::Unterminated)
        };
    };
    body.split(|byte| *byte == 0)
        .map(|field| String::from_utf8(field.to_vec()).map_err(|_| ParseError::NotUtf8))
        .collect()
}

fn error_packet(code: ErrorCode, message: &str) -> Vec<u8> {
    let mut packet = OP_ERROR.to_be_bytes().to_vec();
    packet.extend_from_slice(&(code as u16).to_be_bytes());
    packet.extend_from_slice(message.as_bytes());
    packet.push(0);
    packet
}

/// What we agreed to, and the OACK saying so (`None` if the client asked for nothing we honour).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub blksize: usize,
    pub timeout: Duration,
    pub windowsize: u16,
    pub oack: Option<Vec<u8>>,
}

/// Honours blksize, tsize, timeout (up to `max_timeout`) and windowsize within bounds;
/// anything else, or a value out of range, is left out of the OACK as RFC 2347 allows
/// (RFC 2349 lets a server only echo a timeout or refuse it, never lower it).
pub fn negotiate(
    options: &[(String, String)],
    file_size: u64,
    max_timeout: Duration,
) -> Negotiated {
    let mut negotiated = Negotiated {
        blksize: DEFAULT_BLKSIZE,
        timeout: DEFAULT_TIMEOUT.min(max_timeout),
        windowsize: 1,
        oack: None,
    };
    let mut acknowledged: Vec<(&str, String)> = Vec::new();
    for (name, value) in options {
        let Ok(number) = value.parse::<u64>() else {
            continue;
        };
        match name.as_str() {
            "blksize" if number >= MIN_BLKSIZE as u64 => {
                negotiated.blksize = usize::try_from(number)
                    .unwrap_or(MAX_BLKSIZE)
                    .min(MAX_BLKSIZE);
                acknowledged.push(("blksize", negotiated.blksize.to_string()));
            }
            "tsize" => acknowledged.push(("tsize", file_size.to_string())),
            "timeout"
                if (1..=255).contains(&number) && Duration::from_secs(number) <= max_timeout =>
            {
                negotiated.timeout = Duration::from_secs(number);
                acknowledged.push(("timeout", number.to_string()));
            }
            "windowsize" if number >= 1 => {
                negotiated.windowsize = u16::try_from(number)
                    .unwrap_or(MAX_WINDOWSIZE)
                    .min(MAX_WINDOWSIZE);
                acknowledged.push(("windowsize", negotiated.windowsize.to_string()));
            }
            _ => {}
        }
    }
    if !acknowledged.is_empty() {
        let mut oack = OP_OACK.to_be_bytes().to_vec();
        for (name, value) in acknowledged {
            oack.extend_from_slice(name.as_bytes());
            oack.push(0);
            oack.extend_from_slice(value.as_bytes());
            oack.push(0);
        }
        negotiated.oack = Some(oack);
    }
    negotiated
}

pub struct TftpServer {
    pub root: PathBuf,
    pub timeline: Arc<Timeline>,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
}

impl TftpServer {
    /// Serves requests arriving on `listener` until it fails.
    pub async fn serve(self: Arc<Self>, listener: UdpSocket) -> anyhow::Result<()> {
        let local_ip = listener.local_addr()?.ip();
        tracing::info!(address = %listener.local_addr()?, root = %self.root.display(), "TFTP listening");
        let transfers: Arc<Mutex<Transfers>> = Arc::default();
        let mut buffer = vec![0u8; 2048];
        loop {
            let (len, client) = listener
                .recv_from(&mut buffer)
                .await
                .context("receiving TFTP")?;
            let packet = match parse(&buffer[..len]) {
                Ok(packet) => packet,
                Err(error) => {
                    tracing::debug!(%client, %error, "dropped malformed TFTP packet");
                    self.metrics.inc(TFTP_REQUESTS, &[("outcome", "malformed")]);
                    continue;
                }
            };
            let admission =
                transfers
                    .lock()
                    .expect("tftp lock")
                    .admit(client, &buffer[..len], &self.limits);
            match admission {
                Admission::Admitted => {}
                // A client that resends its RRQ while we answer it must not get two transfers.
                Admission::Duplicate => {
                    self.metrics.inc(TFTP_REQUESTS, &[("outcome", "duplicate")]);
                    continue;
                }
                // From port 69 itself: a refusal must not cost a socket of its own.
                Admission::Busy(label) => {
                    tracing::debug!(%client, label, "TFTP request refused: busy");
                    self.metrics.inc(TFTP_REQUESTS, &[("outcome", label)]);
                    let busy = error_packet(ErrorCode::NotDefined, "busy");
                    if let Err(error) = listener.send_to(&busy, client).await {
                        tracing::debug!(%client, %error, "TFTP busy reply not sent");
                    }
                    continue;
                }
            }
            let slot = Slot {
                transfers: Arc::clone(&transfers),
                client,
                request: buffer[..len].to_vec(),
            };
            let server = Arc::clone(&self);
            let local = SocketAddr::new(local_ip, 0);
            let started = std::thread::Builder::new()
                .name("tftp-transfer".into())
                .stack_size(TRANSFER_STACK)
                .spawn(move || {
                    if let Err(error) = server.answer(packet, client, local) {
                        tracing::warn!(%client, %error, "TFTP transfer failed");
                    }
                    drop(slot);
                });
            // The system holds no more threads: the closure, and its slot, are dropped unrun.
            if let Err(error) = started {
                tracing::warn!(%client, %error, "TFTP transfer not started");
                self.metrics.inc(TFTP_REQUESTS, &[("outcome", "no_thread")]);
                let busy = error_packet(ErrorCode::NotDefined, "busy");
                if let Err(error) = listener.send_to(&busy, client).await {
                    tracing::debug!(%client, %error, "TFTP busy reply not sent");
                }
            }
        }
    }

    /// Answers one request from a fresh port (the transfer ID, RFC 1350 §4), blocking.
    fn answer(&self, packet: Packet, client: SocketAddr, local: SocketAddr) -> anyhow::Result<()> {
        let socket = std::net::UdpSocket::bind(local)?;
        socket.connect(client)?;
        let request = match packet {
            Packet::Read(request) => request,
            Packet::Write => {
                return self.refuse(
                    &socket,
                    ErrorCode::AccessViolation,
                    "read-only server",
                    "write",
                );
            }
            _ => {
                return self.refuse(
                    &socket,
                    ErrorCode::IllegalOperation,
                    "expected a read request",
                    "illegal",
                );
            }
        };
        if request.mode != "octet" {
            return self.refuse(
                &socket,
                ErrorCode::IllegalOperation,
                "only octet mode is served",
                "mode",
            );
        }
        let path = match safe_path::resolve(&self.root, &request.filename) {
            Ok(path) => path,
            Err(PathError::Escapes) => {
                tracing::warn!(%client, file = %request.filename, "refused TFTP path outside the root");
                return self.refuse(
                    &socket,
                    ErrorCode::AccessViolation,
                    "outside the served root",
                    "refused",
                );
            }
            Err(error) => {
                tracing::info!(%client, file = %request.filename, %error, "TFTP file not served");
                return self.refuse(
                    &socket,
                    ErrorCode::FileNotFound,
                    "file not found",
                    "not_found",
                );
            }
        };
        let file = File::open(&path)?;
        let size = file.metadata()?.len();
        let negotiated = negotiate(&request.options, size, self.limits.max_timeout);
        self.metrics.inc(TFTP_REQUESTS, &[("outcome", "accepted")]);
        if let SocketAddr::V4(v4) = client {
            self.timeline.record_from(
                *v4.ip(),
                Event::Tftp {
                    file: request.filename.clone(),
                },
            );
        }
        tracing::info!(%client, file = %request.filename, size, blksize = negotiated.blksize, windowsize = negotiated.windowsize, "TFTP transfer");
        let mut peer = Peer {
            socket,
            read_timeout: None,
        };
        let outcome = send_file(&mut peer, file, &negotiated, self.limits.retries);
        let label = match &outcome {
            Ok(Ending::Complete) => "complete",
            Ok(Ending::ClientError) => "client_error",
            Ok(Ending::TimedOut) => "timed_out",
            Err(_) => "io_error",
        };
        self.metrics.inc(TFTP_TRANSFERS, &[("outcome", label)]);
        tracing::debug!(%client, file = %request.filename, outcome = label, "TFTP transfer ended");
        outcome?;
        Ok(())
    }

    fn refuse(
        &self,
        socket: &std::net::UdpSocket,
        code: ErrorCode,
        message: &str,
        label: &'static str,
    ) -> anyhow::Result<()> {
        self.metrics.inc(TFTP_REQUESTS, &[("outcome", label)]);
        socket.send(&error_packet(code, message))?;
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    Complete,
    /// The client sent ERROR (a UEFI size probe does right after the OACK).
    ClientError,
    TimedOut,
}

/// What the client said while we waited for an acknowledgement.
enum Heard {
    Ack(u16),
    Error,
    Nothing,
}

/// A transfer's socket, connected to the client, and the receive timeout last set on it: lock-step
/// waits the same time for every ACK, so the timeout is set once, not once per block.
struct Peer {
    socket: std::net::UdpSocket,
    read_timeout: Option<Duration>,
}

impl Peer {
    fn send(&self, packet: &[u8]) -> io::Result<()> {
        loop {
            match self.socket.send(packet) {
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                result => return result.map(drop),
            }
        }
    }

    /// Waits up to `timeout` for an ACK or an ERROR, passing over anything else the client sends.
    fn listen(&mut self, timeout: Duration) -> io::Result<Heard> {
        let mut buffer = [0u8; 512];
        let started = Instant::now();
        let mut wait = timeout;
        loop {
            if self.read_timeout != Some(wait) {
                self.socket.set_read_timeout(Some(wait))?;
                self.read_timeout = Some(wait);
            }
            let len = match self.socket.recv(&mut buffer) {
                Ok(len) => Some(len),
                Err(error) => match error.kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                        return Ok(Heard::Nothing);
                    }
                    // A signal: wait out the rest.
                    io::ErrorKind::Interrupted => None,
                    // ICMP port unreachable: the client has gone.
                    io::ErrorKind::ConnectionRefused => return Ok(Heard::Error),
                    _ => return Err(error),
                },
            };
            if let Some(len) = len {
                match parse(&buffer[..len]) {
                    Ok(Packet::Ack { block }) => return Ok(Heard::Ack(block)),
                    Ok(Packet::Error { .. }) => return Ok(Heard::Error),
                    _ => {}
                }
            }
            // Whole milliseconds, rounded up: the kernel counts in coarser ticks anyway.
            let left = timeout.saturating_sub(started.elapsed());
            if left.is_zero() {
                return Ok(Heard::Nothing);
            }
            wait = Duration::from_millis(left.as_nanos().div_ceil(1_000_000) as u64);
        }
    }
}

/// The DATA packets sent but not yet acknowledged, read ahead from the file.
struct Window {
    file: BufReader<File>,
    blksize: usize,
    /// (block number, DATA packet), oldest first. Block numbers are 64-bit here; the wire
    /// carries the low 16 bits and wraps to 0 as most clients expect.
    blocks: VecDeque<(u64, Vec<u8>)>,
    /// Acknowledged packets, filled again: no allocation per block.
    spare: Vec<Vec<u8>>,
    next_block: u64,
    last_block: Option<u64>,
}

impl Window {
    fn new(file: File, blksize: usize) -> Self {
        Window {
            file: BufReader::with_capacity(READ_AHEAD, file),
            blksize,
            blocks: VecDeque::new(),
            spare: Vec::new(),
            next_block: 1,
            last_block: None,
        }
    }

    fn fill(&mut self, windowsize: usize) -> io::Result<()> {
        while self.blocks.len() < windowsize
            && self.last_block.is_none_or(|last| self.next_block <= last)
        {
            // A packet used before is already full-sized: nothing to zero.
            let mut packet = self.spare.pop().unwrap_or_default();
            packet.resize(4 + self.blksize, 0);
            packet[..2].copy_from_slice(&OP_DATA.to_be_bytes());
            packet[2..4].copy_from_slice(&(self.next_block as u16).to_be_bytes());
            let read = read_up_to(&mut self.file, &mut packet[4..])?;
            packet.truncate(4 + read);
            if read < self.blksize {
                self.last_block = Some(self.next_block);
            }
            self.blocks.push_back((self.next_block, packet));
            self.next_block += 1;
        }
        Ok(())
    }

    /// Drops the blocks up to the one `ack` names; false if it names none in the window.
    fn acknowledge(&mut self, ack: u16) -> bool {
        let Some(position) = self
            .blocks
            .iter()
            .position(|(block, _)| *block as u16 == ack)
        else {
            return false;
        };
        let acknowledged = self.blocks.drain(..=position).map(|(_, packet)| packet);
        self.spare.extend(acknowledged);
        true
    }

    fn is_done(&self) -> bool {
        self.blocks.is_empty() && self.last_block.is_some_and(|last| self.next_block > last)
    }
}

/// Fills `buffer` from `reader`, short only at the end of the file; the bytes read.
fn read_up_to(reader: &mut impl Read, buffer: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match reader.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(read) => filled += read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(filled)
}

fn send_file(
    peer: &mut Peer,
    file: File,
    negotiated: &Negotiated,
    max_retries: u32,
) -> io::Result<Ending> {
    if let Some(oack) = &negotiated.oack {
        if !send_option_ack(peer, oack, negotiated.timeout, max_retries)? {
            return Ok(Ending::ClientError);
        }
    }
    let mut window = Window::new(file, negotiated.blksize);
    let mut retries = 0;
    while !window.is_done() {
        window.fill(usize::from(negotiated.windowsize))?;
        for (_, packet) in &window.blocks {
            peer.send(packet)?;
        }
        loop {
            match peer.listen(negotiated.timeout)? {
                Heard::Error => return Ok(Ending::ClientError),
                Heard::Nothing => {
                    retries += 1;
                    if retries > max_retries {
                        return Ok(Ending::TimedOut);
                    }
                    break;
                }
                // An ACK for a block before the window is a duplicate: answering it would
                // resend the window twice (Sorcerer's Apprentice); the timeout covers loss.
                Heard::Ack(ack) if window.acknowledge(ack) => {
                    retries = 0;
                    break;
                }
                Heard::Ack(_) => {}
            }
        }
    }
    Ok(Ending::Complete)
}

/// Sends the OACK until the client acknowledges it as block 0; false if it sent ERROR (a
/// size probe) or never answered.
fn send_option_ack(
    peer: &mut Peer,
    oack: &[u8],
    timeout: Duration,
    max_retries: u32,
) -> io::Result<bool> {
    for _ in 0..=max_retries {
        peer.send(oack)?;
        loop {
            match peer.listen(timeout)? {
                Heard::Ack(0) => return Ok(true),
                Heard::Ack(_) => {}
                Heard::Error => return Ok(false),
                Heard::Nothing => break,
            }
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rrq(fields: &[&str]) -> Vec<u8> {
        let mut packet = OP_RRQ.to_be_bytes().to_vec();
        for field in fields {
            packet.extend_from_slice(field.as_bytes());
            packet.push(0);
        }
        packet
    }

    #[test]
    fn parses_read_requests_with_options() {
        let packet = rrq(&["undionly.kpxe", "OCTET", "BlkSize", "1468", "tsize", "0"]);
        assert_eq!(
            parse(&packet).unwrap(),
            Packet::Read(ReadRequest {
                filename: "undionly.kpxe".into(),
                mode: "octet".into(),
                options: vec![
                    ("blksize".into(), "1468".into()),
                    ("tsize".into(), "0".into())
                ],
            })
        );
    }

    #[test]
    fn parses_acks_and_errors_and_rejects_garbage() {
        assert_eq!(parse(&[0, 4, 1, 2]).unwrap(), Packet::Ack { block: 0x102 });
        assert_eq!(
            parse(&[0, 5, 0, 8, b'n', b'o', 0]).unwrap(),
            Packet::Error {
                code: 8,
                message: "no".into()
            }
        );
        assert_eq!(parse(&[0]).unwrap_err(), ParseError::TooShort);
        assert_eq!(parse(&[0, 9]).unwrap_err(), ParseError::UnknownOpcode(9));
        assert_eq!(parse(&[0, 1, b'a']).unwrap_err(), ParseError::Unterminated);
        assert_eq!(parse(&[0, 1, 0xff, 0]).unwrap_err(), ParseError::NotUtf8);
    }

    #[test]
    fn negotiates_within_bounds_and_reports_the_size() {
        let options = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(name, value)| (name.to_string(), value.to_string()))
                .collect()
        };
        let negotiated = negotiate(
            &options(&[
                ("blksize", "1468"),
                ("tsize", "0"),
                ("windowsize", "4"),
                ("foo", "1"),
            ]),
            70_000,
            MAX,
        );
        assert_eq!((negotiated.blksize, negotiated.windowsize), (1468, 4));
        let mut expected = vec![0, 6];
        expected.extend_from_slice(b"blksize\x001468\x00tsize\x0070000\x00windowsize\x004\x00");
        assert_eq!(negotiated.oack, Some(expected));

        let clamped = negotiate(
            &options(&[
                ("blksize", "100000"),
                ("windowsize", "1000"),
                ("timeout", "0"),
            ]),
            1,
            MAX,
        );
        assert_eq!(
            (clamped.blksize, clamped.windowsize, clamped.timeout),
            (MAX_BLKSIZE, MAX_WINDOWSIZE, DEFAULT_TIMEOUT)
        );
        assert_eq!(
            negotiate(&options(&[("blksize", "4"), ("bogus", "x")]), 1, MAX).oack,
            None
        );
    }

    #[test]
    fn echoes_a_timeout_within_the_limit_and_refuses_a_longer_one() {
        let timeout = |value: &str| negotiate(&[("timeout".into(), value.into())], 1, MAX);
        let honoured = timeout("5");
        assert_eq!(honoured.timeout, Duration::from_secs(5));
        assert_eq!(
            honoured.oack,
            Some([&[0, 6][..], b"timeout\x005\x00"].concat())
        );
        let refused = timeout("255");
        assert_eq!((refused.timeout, refused.oack), (DEFAULT_TIMEOUT, None));
    }

    const MAX: Duration = Duration::from_secs(5);

    #[test]
    fn caps_transfers_per_client_and_in_all_and_frees_them() {
        let limits = Limits {
            per_client: 2,
            total: 3,
            ..Limits::default()
        };
        let from = |ip: [u8; 4], port| SocketAddr::from((ip, port));
        let mut transfers = Transfers::default();
        const REQUEST: &[u8] = b"\0\x01file.bin\0octet\0";
        let admit = |transfers: &mut Transfers, client| transfers.admit(client, REQUEST, &limits);
        assert_eq!(
            admit(&mut transfers, from([10, 0, 0, 1], 1)),
            Admission::Admitted
        );
        assert_eq!(
            admit(&mut transfers, from([10, 0, 0, 1], 1)),
            Admission::Duplicate
        );
        assert_eq!(
            admit(&mut transfers, from([10, 0, 0, 1], 2)),
            Admission::Admitted
        );
        assert_eq!(
            admit(&mut transfers, from([10, 0, 0, 1], 3)),
            Admission::Busy("busy_client")
        );
        assert_eq!(
            admit(&mut transfers, from([10, 0, 0, 2], 1)),
            Admission::Admitted
        );
        assert_eq!(
            admit(&mut transfers, from([10, 0, 0, 3], 1)),
            Admission::Busy("busy_total")
        );
        transfers.release(from([10, 0, 0, 1], 1), REQUEST.to_vec());
        transfers.release(from([10, 0, 0, 1], 3), REQUEST.to_vec());
        assert_eq!(
            admit(&mut transfers, from([10, 0, 0, 3], 1)),
            Admission::Admitted
        );
        transfers.release(from([10, 0, 0, 2], 1), REQUEST.to_vec());
        assert!(!transfers.per_ip.contains_key(&IpAddr::from([10, 0, 0, 2])));
    }

    #[test]
    fn another_request_from_a_port_under_transfer_is_a_new_one() {
        let limits = Limits::default();
        let client = SocketAddr::from(([10, 0, 0, 1], 1));
        let probe = rrq(&["file.bin", "octet", "tsize", "0"]);
        let download = rrq(&["file.bin", "octet", "blksize", "1468"]);
        let mut transfers = Transfers::default();
        assert_eq!(
            transfers.admit(client, &probe, &limits),
            Admission::Admitted
        );
        assert_eq!(
            transfers.admit(client, &download, &limits),
            Admission::Admitted
        );
        assert_eq!(
            transfers.admit(client, &download, &limits),
            Admission::Duplicate
        );
        transfers.release(client, probe);
        transfers.release(client, download);
        assert!(transfers.requests.is_empty() && transfers.per_ip.is_empty());
    }

    /// A server on loopback serving one file of `size` bytes, and a client socket.
    async fn server_and_client(
        size: usize,
    ) -> (
        Arc<TftpServer>,
        tempfile::TempDir,
        UdpSocket,
        SocketAddr,
        Vec<u8>,
    ) {
        server_with_limits(size, Limits::default()).await
    }

    async fn server_with_limits(
        size: usize,
        limits: Limits,
    ) -> (
        Arc<TftpServer>,
        tempfile::TempDir,
        UdpSocket,
        SocketAddr,
        Vec<u8>,
    ) {
        let root = tempfile::tempdir().unwrap();
        let contents: Vec<u8> = (0..size).map(|index| (index % 253) as u8).collect();
        std::fs::write(root.path().join("file.bin"), &contents).unwrap();
        let server = Arc::new(TftpServer {
            root: root.path().into(),
            timeline: Arc::default(),
            metrics: Arc::default(),
            limits,
        });
        let listener = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(Arc::clone(&server).serve(listener));
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        (server, root, client, address, contents)
    }

    async fn receive(client: &UdpSocket) -> (Vec<u8>, SocketAddr) {
        let mut buffer = vec![0u8; 70_000];
        let (len, from) =
            tokio::time::timeout(Duration::from_secs(5), client.recv_from(&mut buffer))
                .await
                .unwrap()
                .unwrap();
        buffer.truncate(len);
        (buffer, from)
    }

    fn ack(block: u16) -> Vec<u8> {
        [OP_ACK.to_be_bytes(), block.to_be_bytes()].concat()
    }

    #[tokio::test]
    async fn windowed_transfer_delivers_every_byte_and_resends_after_a_lost_ack() {
        // 10 full blocks and a short one: windows of 4, 4 and 3.
        let (server, _root, client, address, contents) = server_and_client(10 * 512 + 100).await;
        client
            .send_to(
                &rrq(&["file.bin", "octet", "windowsize", "4", "tsize", "0"]),
                address,
            )
            .await
            .unwrap();
        let (oack, transfer) = receive(&client).await;
        assert_eq!(
            oack,
            [&[0, 6][..], b"windowsize\x004\x00tsize\x005220\x00"].concat()
        );
        client.send_to(&ack(0), transfer).await.unwrap();
        let mut received = Vec::new();
        let mut ignored_first_window_ack = false;
        loop {
            let (packet, _) = receive(&client).await;
            let block = u16::from_be_bytes([packet[2], packet[3]]);
            if usize::from(block) != received.len() / 512 + 1 {
                continue; // a resent block we already have
            }
            received.extend_from_slice(&packet[4..]);
            let last = packet.len() - 4 < 512;
            if block % 4 == 0 || last {
                if block == 4 && !ignored_first_window_ack {
                    // Pretend this ACK was lost: the server must resend the window.
                    ignored_first_window_ack = true;
                    received.truncate(0);
                    continue;
                }
                client.send_to(&ack(block), transfer).await.unwrap();
            }
            if last {
                break;
            }
        }
        assert_eq!(received, contents);
        for _ in 0..50 {
            if server
                .metrics
                .get(TFTP_TRANSFERS, &[("outcome", "complete")])
                == 1
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("transfer not counted complete: {}", server.metrics.render());
    }

    #[tokio::test]
    async fn a_client_error_after_the_oack_ends_the_transfer_at_once() {
        // What UEFI firmware does to learn a file's size.
        let (server, _root, client, address, _) = server_and_client(5000).await;
        client
            .send_to(
                &rrq(&["file.bin", "octet", "tsize", "0", "blksize", "1468"]),
                address,
            )
            .await
            .unwrap();
        let (_oack, transfer) = receive(&client).await;
        client
            .send_to(&[0, 5, 0, 8, b'p', b'r', b'o', b'b', b'e', 0], transfer)
            .await
            .unwrap();
        for _ in 0..25 {
            if server
                .metrics
                .get(TFTP_TRANSFERS, &[("outcome", "client_error")])
                == 1
            {
                let mut buffer = [0u8; 16];
                let resent =
                    tokio::time::timeout(Duration::from_millis(300), client.recv(&mut buffer))
                        .await;
                assert!(resent.is_err(), "nothing may follow the client's ERROR");
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "transfer not ended by the client's ERROR: {}",
            server.metrics.render()
        );
    }

    #[tokio::test]
    async fn a_download_asked_from_the_probes_port_right_after_its_error_is_answered() {
        // UEFI firmware: size probe, ERROR, then at once the download from the same port, which
        // may reach the server before the probe's transfer has seen the ERROR.
        let (_server, _root, _client, address, contents) = server_and_client(5000).await;
        for _ in 0..20 {
            // A port per boot, as firmware takes.
            let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            client
                .send_to(&rrq(&["file.bin", "octet", "tsize", "0"]), address)
                .await
                .unwrap();
            let (_oack, transfer) = receive(&client).await;
            client
                .send_to(&[0, 5, 0, 8, b'p', b'r', b'o', b'b', b'e', 0], transfer)
                .await
                .unwrap();
            assert_eq!(download(&client, address).await, contents);
        }
    }

    /// A full transfer in lock step from `client`; the file's bytes.
    async fn download(client: &UdpSocket, address: SocketAddr) -> Vec<u8> {
        client
            .send_to(&rrq(&["file.bin", "octet"]), address)
            .await
            .unwrap();
        let mut received = Vec::new();
        loop {
            let (packet, transfer) = receive(client).await;
            assert_eq!(&packet[..2], &[0, 3], "DATA, not {packet:?}");
            received.extend_from_slice(&packet[4..]);
            let block = u16::from_be_bytes([packet[2], packet[3]]);
            client.send_to(&ack(block), transfer).await.unwrap();
            if packet.len() - 4 < 512 {
                return received;
            }
        }
    }

    #[tokio::test]
    async fn silent_clients_past_the_caps_are_told_busy_and_soon_dropped() {
        let limits = Limits {
            max_timeout: Duration::from_secs(1),
            retries: 1,
            per_client: 2,
            total: 4,
        };
        let (server, _root, _client, address, contents) = server_with_limits(1500, limits).await;
        // What the attacker sent: a long timeout, then silence.
        let silent = |ip: [u8; 4]| async move {
            let socket = UdpSocket::bind(SocketAddr::from((ip, 0))).await.unwrap();
            socket
                .send_to(&rrq(&["file.bin", "octet", "timeout", "255"]), address)
                .await
                .unwrap();
            socket
        };
        let mut held = Vec::new();
        for ip in [[127, 0, 0, 1], [127, 0, 0, 1], [127, 0, 0, 3]] {
            let socket = silent(ip).await;
            let (first, _) = receive(&socket).await;
            assert_eq!(&first[..2], &[0, 3], "no OACK: the long timeout is refused");
            held.push(socket);
        }
        let over_client = silent([127, 0, 0, 1]).await;
        assert_eq!(receive(&over_client).await.0, b"\0\x05\0\0busy\0");
        let last = silent([127, 0, 0, 4]).await;
        assert_eq!(&receive(&last).await.0[..2], &[0, 3]);
        held.push(last);
        let normal = UdpSocket::bind("127.0.0.2:0").await.unwrap();
        normal
            .send_to(&rrq(&["file.bin", "octet"]), address)
            .await
            .unwrap();
        assert_eq!(receive(&normal).await.0, b"\0\x05\0\0busy\0");
        assert_eq!(
            server
                .metrics
                .get(TFTP_REQUESTS, &[("outcome", "busy_client")]),
            1
        );
        assert_eq!(
            server
                .metrics
                .get(TFTP_REQUESTS, &[("outcome", "busy_total")]),
            1
        );
        // Two sends a second apart, then the silent transfers are given up.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_eq!(
            server
                .metrics
                .get(TFTP_TRANSFERS, &[("outcome", "timed_out")]),
            4
        );
        assert_eq!(download(&normal, address).await, contents);
    }

    #[tokio::test]
    async fn refuses_writes_and_escapes_with_tftp_errors() {
        let (_server, _root, client, address, _) = server_and_client(10).await;
        client
            .send_to(&[&[0, 2][..], b"file.bin\0octet\0"].concat(), address)
            .await
            .unwrap();
        assert_eq!(&receive(&client).await.0[..4], &[0, 5, 0, 2]);
        client
            .send_to(&rrq(&["../file.bin", "octet"]), address)
            .await
            .unwrap();
        assert_eq!(&receive(&client).await.0[..4], &[0, 5, 0, 2]);
        client
            .send_to(&rrq(&["file.bin", "netascii"]), address)
            .await
            .unwrap();
        assert_eq!(&receive(&client).await.0[..4], &[0, 5, 0, 4]);
    }
}
