//! A lossy, jittery link between one guest and the lab's bridge, as `tc netem` would make it: this lab's
//! kernel has no netem, so the link is relayed in user space. The guest's NIC is a qemu `dgram` netdev
//! (its Ethernet frames as UDP datagrams on the namespace's loopback); the relay passes each frame to a tap
//! on the bridge and back, dropping a share of them and holding each other one for a random delay, so that
//! frames overtake one another as they do under netem's jitter.

use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};

/// What the link does to every frame, in each direction.
#[derive(Clone, Copy, Debug)]
pub struct Impairment {
    /// The share of frames dropped (0.1 is 10 %).
    pub loss: f64,
    /// The least delay of a frame; each one waits `delay` plus up to `jitter`, uniformly.
    pub delay: Duration,
    pub jitter: Duration,
    /// Seeds the drops and delays, so that a failing run can be repeated.
    pub seed: u64,
}

/// What a link has done so far, in both directions.
#[derive(Debug, Default)]
pub struct LinkCounts {
    pub passed: AtomicU64,
    pub dropped: AtomicU64,
}

impl LinkCounts {
    /// Frames passed and dropped.
    pub fn frames(&self) -> (u64, u64) {
        (
            self.passed.load(Ordering::Relaxed),
            self.dropped.load(Ordering::Relaxed),
        )
    }

    pub fn summary(&self) -> String {
        let (passed, dropped) = self.frames();
        let share = 100.0 * dropped as f64 / (passed + dropped).max(1) as f64;
        format!("{passed} frames passed, {dropped} dropped ({share:.1} %)")
    }
}

/// A running relay; it stops when dropped.
pub struct ImpairedLink {
    /// Where the guest's qemu sends its frames (`remote` of its `dgram` netdev).
    pub relay: SocketAddr,
    /// Where the guest's qemu receives them (`local` of its `dgram` netdev).
    pub guest: SocketAddr,
    pub counts: Arc<LinkCounts>,
    stop: Arc<AtomicBool>,
}

impl ImpairedLink {
    /// Creates tap `tap` and the relay's socket; call on a thread inside the lab's namespace (the tap
    /// and the sockets are made in the caller's). The caller puts the tap on the bridge.
    pub fn start(tap: &str, impairment: Impairment) -> Result<Self> {
        let tap_file = open_tap(tap)?;
        let socket = UdpSocket::bind("127.0.0.1:0")?;
        // qemu binds the guest's end itself: take a free port for it.
        let guest = UdpSocket::bind("127.0.0.1:0")?.local_addr()?;
        let relay = socket.local_addr()?;
        socket.set_read_timeout(Some(POLL))?;
        let counts = Arc::new(LinkCounts::default());
        let stop = Arc::new(AtomicBool::new(false));
        let random = Arc::new(Mutex::new(SplitMix(impairment.seed)));
        let fate = move || -> Option<Duration> {
            let mut random = random.lock().unwrap();
            if random.unit() < impairment.loss {
                return None;
            }
            Some(impairment.delay + impairment.jitter.mul_f64(random.unit()))
        };

        let to_bridge = delayed_sender(stop.clone(), {
            let tap = tap_file.try_clone()?;
            move |frame: &[u8]| {
                let _ = (&tap).write(frame);
            }
        });
        let to_guest = delayed_sender(stop.clone(), {
            let socket = socket.try_clone()?;
            move |frame: &[u8]| {
                let _ = socket.send_to(frame, guest);
            }
        });
        let relayed = Arc::new(
            move |counts: &LinkCounts, sender: &mpsc::Sender<(Instant, Vec<u8>)>, frame| match fate(
            ) {
                Some(wait) => {
                    counts.passed.fetch_add(1, Ordering::Relaxed);
                    let _ = sender.send((Instant::now() + wait, frame));
                }
                None => {
                    counts.dropped.fetch_add(1, Ordering::Relaxed);
                }
            },
        );

        std::thread::spawn({
            let (stop, counts, relayed) = (stop.clone(), counts.clone(), relayed.clone());
            move || {
                let mut buffer = vec![0; 65536];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((length, _)) = socket.recv_from(&mut buffer) {
                        relayed(&counts, &to_bridge, buffer[..length].to_vec());
                    }
                }
            }
        });
        std::thread::spawn({
            let (stop, counts) = (stop.clone(), counts.clone());
            let mut tap = tap_file;
            move || {
                let mut buffer = vec![0; 65536];
                while !stop.load(Ordering::Relaxed) {
                    if !readable(&tap) {
                        continue;
                    }
                    if let Ok(length) = tap.read(&mut buffer) {
                        relayed(&counts, &to_guest, buffer[..length].to_vec());
                    }
                }
            }
        });
        Ok(Self {
            relay,
            guest,
            counts,
            stop,
        })
    }

    /// qemu's `-netdev` value for the guest's end of the link.
    pub fn netdev(&self, id: &str) -> String {
        format!(
            "dgram,id={id},local.type=inet,local.host={},local.port={},remote.type=inet,remote.host={},remote.port={}",
            self.guest.ip(),
            self.guest.port(),
            self.relay.ip(),
            self.relay.port()
        )
    }
}

impl Drop for ImpairedLink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// How long a relay thread waits for a frame before it looks whether to stop.
const POLL: Duration = Duration::from_millis(200);

/// A thread that hands each queued frame to `send` when its time comes, earliest first.
fn delayed_sender(
    stop: Arc<AtomicBool>,
    send: impl Fn(&[u8]) + Send + 'static,
) -> mpsc::Sender<(Instant, Vec<u8>)> {
    let (sender, queue) = mpsc::channel::<(Instant, Vec<u8>)>();
    std::thread::spawn(move || {
        let mut waiting = BinaryHeap::new();
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            while waiting.peek().is_some_and(|Due(due, _)| *due <= now) {
                let Due(_, frame) = waiting.pop().unwrap();
                send(&frame);
            }
            let wait = waiting
                .peek()
                .map_or(POLL, |Due(due, _)| due.saturating_duration_since(now));
            match queue.recv_timeout(wait) {
                Ok((due, frame)) => waiting.push(Due(due, frame)),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
        }
    });
    sender
}

/// A frame and when it leaves, ordered so that the heap yields the earliest first.
struct Due(Instant, Vec<u8>);

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Due {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other.0.cmp(&self.0)
    }
}

/// Opens (creating) tap `name` in the caller's namespace: Ethernet frames, no packet information header.
fn open_tap(name: &str) -> Result<File> {
    const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
    const IFF_TAP: libc::c_short = 0x0002;
    const IFF_NO_PI: libc::c_short = 0x1000;
    ensure!(name.len() < libc::IFNAMSIZ, "tap name {name} too long");
    let tun = File::options()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .context("opening /dev/net/tun")?;
    let mut request = [0u8; 40];
    request[..name.len()].copy_from_slice(name.as_bytes());
    request[libc::IFNAMSIZ..libc::IFNAMSIZ + 2]
        .copy_from_slice(&(IFF_TAP | IFF_NO_PI).to_ne_bytes());
    // SAFETY: TUNSETIFF reads and writes the 40-byte ifreq we pass, on a descriptor we own.
    let done = unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF, request.as_mut_ptr()) };
    ensure!(
        done == 0,
        "TUNSETIFF {name}: {}",
        std::io::Error::last_os_error()
    );
    Ok(tun)
}

/// Whether `tap` has a frame to read within [`POLL`].
fn readable(tap: &File) -> bool {
    let mut poll = libc::pollfd {
        fd: tap.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll on one descriptor we own, with a valid pollfd.
    unsafe { libc::poll(&mut poll, 1, POLL.as_millis() as i32) > 0 }
}

/// SplitMix64: enough randomness for drops and delays, and repeatable from its seed.
struct SplitMix(u64);

impl SplitMix {
    /// A number in [0, 1).
    fn unit(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) as f64 / (u64::MAX as f64 + 1.0)
    }
}
