//! The drills a trusted server runs, against the real netbootd in network namespaces it creates and
//! removes: what an attacker on the video LAN, a full disk or a power cut does to it. Each is bounded
//! in count and time. Needs root; set LECTERN_REQUIRE_NETNS=1 to fail rather than skip.

// The namespace lab of every netbootd test; these drills use a part of it.
#[allow(dead_code)]
mod lab;

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use dhcproto::v4::{
    Decodable, Decoder, DhcpOption, Encodable, Message, MessageType, Opcode, OptionCode,
};
use lab::{CLIENT_LINK, HTTP, Lab, SERVER_IP, must};
use socket2::{Domain, Socket, Type};

const POOL: &str = "10.99.0.100-10.99.0.199";
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);

/// DHCP from the client link as anyone can send it: any MAC, any message.
struct Forger(UdpSocket);

impl Forger {
    fn new(lab: &Lab) -> Forger {
        Forger(lab.dhcp_client_socket())
    }

    fn send(&self, message: &Message) {
        let to = SocketAddr::from((Ipv4Addr::BROADCAST, 67));
        self.0.send_to(&message.to_vec().unwrap(), to).unwrap();
    }

    /// Sends `message`; the reply to it within `wait`, if any.
    fn ask(&self, message: &Message, wait: Duration) -> Option<Message> {
        self.ask_from(message, wait).map(|(reply, _)| reply)
    }

    /// Like [`Forger::ask`], with the address the reply came from.
    fn ask_from(&self, message: &Message, wait: Duration) -> Option<(Message, SocketAddr)> {
        self.send(message);
        let deadline = Instant::now() + wait;
        let mut buffer = [0u8; 1500];
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            self.0
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            let (len, from) = self.0.recv_from(&mut buffer).ok()?;
            let Ok(reply) = Message::decode(&mut Decoder::new(&buffer[..len])) else {
                continue;
            };
            if reply.xid() == message.xid() && reply.opcode() == Opcode::BootReply {
                return Some((reply, from));
            }
        }
    }

    /// DISCOVER, OFFER, REQUEST, ACK for `mac`: the address acknowledged.
    fn lease(&self, mac: [u8; 6]) -> Option<Ipv4Addr> {
        let offer = self.ask(&dhcp(mac, MessageType::Discover, None, None), WAIT)?;
        let request = dhcp(mac, MessageType::Request, Some(offer.yiaddr()), None);
        let ack = self.ask(&request, WAIT)?;
        (kind(&ack) == Some(MessageType::Ack)).then_some(ack.yiaddr())
    }

    /// `mac` asking to keep `ip`, as a client that rebooted does (INIT-REBOOT: the address as
    /// option 50, no server id): the server's answer, ACK if the lease is still the client's.
    fn renew(&self, mac: [u8; 6], ip: Ipv4Addr) -> Option<MessageType> {
        let mut request = dhcp(mac, MessageType::Request, Some(ip), None);
        request.opts_mut().remove(OptionCode::ServerIdentifier);
        kind(&self.ask(&request, WAIT)?)
    }
}

/// How long a forged exchange waits for its answer: a lease ACK waits for a sync, which on a
/// machine busy writing (the suite runs beside image builds) can take more than a second.
const WAIT: Duration = Duration::from_secs(5);

/// A client's message: `requested` as option 50 (with netbootd's server id), `ciaddr` as its
/// own address.
fn dhcp(
    mac: [u8; 6],
    kind: MessageType,
    requested: Option<Ipv4Addr>,
    ciaddr: Option<Ipv4Addr>,
) -> Message {
    let mut message = lab::client_message(mac, kind, ciaddr.unwrap_or(Ipv4Addr::UNSPECIFIED));
    let opts = message.opts_mut();
    if let Some(ip) = requested {
        opts.insert(DhcpOption::RequestedIpAddress(ip));
        opts.insert(DhcpOption::ServerIdentifier(SERVER));
    }
    message
}

fn kind(message: &Message) -> Option<MessageType> {
    match message.opts().get(OptionCode::MessageType)? {
        DhcpOption::MessageType(kind) => Some(*kind),
        _ => None,
    }
}

fn mac(n: u32) -> [u8; 6] {
    let [_, a, b, c] = n.to_be_bytes();
    [0x02, 0xd1, 0x11, a, b, c]
}

/// The value of the metric line that starts with `series`, 0 if none.
fn metric(lab: &Lab, series: &str) -> u64 {
    lab.operator("/metrics")
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_decline_and_release_storm_from_forged_macs_takes_no_lease_away() {
    let Some(mut lab) = Lab::new(&[]) else {
        return;
    };
    lab.start_netbootd(SERVER_IP, &["--pool", POOL]);
    let forger = Forger::new(&lab);
    let holder = mac(1);
    let ip = forger.lease(holder).expect("the holder's lease");
    // 400 forged DECLINEs and 400 forged RELEASEs of the holder's address, from fresh MACs.
    for n in 0..400 {
        forger.send(&dhcp(mac(1000 + n), MessageType::Decline, Some(ip), None));
        forger.send(&dhcp(mac(2000 + n), MessageType::Release, None, Some(ip)));
        // Paced, so that every one reaches netbootd rather than overflowing a socket buffer.
        if n % 16 == 15 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        forger.renew(holder, ip),
        Some(MessageType::Ack),
        "{}",
        lab.logs()
    );
    let newcomer = forger.lease(mac(3)).expect("a newcomer's lease");
    assert_ne!(newcomer, ip, "the holder's address went to another MAC");
    let refused = metric(
        &lab,
        "netbootd_dhcp_dropped_total{reason=\"decline_not_holder\"}",
    );
    assert_eq!(refused, 400);
}

#[test]
fn floods_of_silent_tftp_and_idle_http_clients_are_capped_and_boots_go_on() {
    let Some(mut lab) = Lab::new(&["curl", "busybox"]) else {
        return;
    };
    // This test holds 1,900 sockets open at once, beyond the usual 1,024 descriptors of a shell;
    // netbootd gets those 1,024, as it had when the flood took it down.
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only touch the struct they are given.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
    assert!(limit.rlim_cur >= 2048, "{} descriptors", limit.rlim_cur);
    let launcher = ["prlimit", "--nofile=1024:1024", "--"];
    lab.start_netbootd_via(&launcher, SERVER_IP, &["--pool", POOL]);
    lab.set_client_address("10.99.0.10/24");
    must(
        "ip",
        &[
            "-n",
            &lab.client_ns,
            "addr",
            "add",
            "10.99.0.50/24",
            "dev",
            CLIENT_LINK,
        ],
    );
    // 800 read requests that negotiate the longest timeout and never acknowledge, each from its own
    // port; 1,100 connections that never send a header. All from 10.99.0.50, all held open.
    let (tftp_flood, http_flood) = lab.in_client_ns(|| {
        let from = SocketAddr::from((Ipv4Addr::new(10, 99, 0, 50), 0));
        let tftp: Vec<UdpSocket> = (0..800)
            .map(|_| {
                let socket = UdpSocket::bind(from).unwrap();
                let rrq = b"\x00\x01undionly.kpxe\x00octet\x00timeout\x00255\x00";
                socket.send_to(rrq, (SERVER, 69)).unwrap();
                // Paced, so that every one reaches netbootd rather than overflowing its buffer.
                std::thread::sleep(Duration::from_micros(300));
                socket
            })
            .collect();
        let http: Vec<std::net::TcpStream> = (0..1100)
            .filter_map(|_| {
                let socket = Socket::new(Domain::IPV4, Type::STREAM, None).ok()?;
                socket.bind(&from.into()).ok()?;
                let to = SocketAddr::from((SERVER, 8080));
                socket
                    .connect_timeout(&to.into(), Duration::from_secs(2))
                    .ok()?;
                Some(socket.into())
            })
            .collect();
        (tftp, http)
    });
    assert_eq!(tftp_flood.len(), 800);
    // Meanwhile a machine boots: its lease, its first stage over TFTP, its files over HTTP.
    let started = Instant::now();
    let lease = lab.client(
        "busybox",
        &[
            "udhcpc",
            "-i",
            CLIENT_LINK,
            "-q",
            "-n",
            "-t",
            "5",
            "-T",
            "1",
            "-s",
            "/bin/true",
        ],
    );
    assert!(
        lease.status.success(),
        "no lease during the flood: {}",
        lab.logs()
    );
    let tftp = lab.client(
        "curl",
        &[
            "-sS",
            "-m",
            "20",
            "--interface",
            "10.99.0.10",
            "-o",
            "/dev/null",
            "-w",
            "%{size_download}",
            &format!("tftp://{SERVER_IP}/undionly.kpxe"),
        ],
    );
    let size = std::fs::metadata("/usr/lib/ipxe/undionly.kpxe")
        .unwrap()
        .len();
    assert_eq!(
        String::from_utf8_lossy(&tftp.stdout),
        size.to_string(),
        "{}",
        lab.logs()
    );
    // HTTP sheds the idle connections after its header timeout (10 s) and serves again.
    let http = lab.client(
        "curl",
        &[
            "-sS",
            "--retry",
            "15",
            "--retry-all-errors",
            "--retry-delay",
            "1",
            "-m",
            "40",
            "--interface",
            "10.99.0.10",
            &format!("{HTTP}/healthz"),
        ],
    );
    assert!(
        http.status.success(),
        "{}",
        String::from_utf8_lossy(&http.stderr)
    );
    let recovered = started.elapsed();
    assert!(recovered < Duration::from_secs(40), "{recovered:?}");
    eprintln!(
        "flood of {} TFTP and {} HTTP clients: a boot's lease, first stage and HTTP served within {recovered:.1?}",
        tftp_flood.len(),
        http_flood.len()
    );
    // The cap per address (8) held: the rest of the flood was turned away, and the boot's own
    // transfer went through.
    let accepted = metric(&lab, "netbootd_tftp_requests_total{outcome=\"accepted\"}");
    let busy = metric(
        &lab,
        "netbootd_tftp_requests_total{outcome=\"busy_client\"}",
    );
    assert!(accepted <= 9 && busy >= 790, "{}", lab.operator("/metrics"));
    let cut = metric(
        &lab,
        "netbootd_http_connections_cut_total{reason=\"over_cap\"}",
    ) + metric(
        &lab,
        "netbootd_http_connections_cut_total{reason=\"header_timeout\"}",
    );
    assert!(cut >= 500, "{}", lab.operator("/metrics"));
    drop((tftp_flood, http_flood));
}

#[test]
fn random_packets_at_every_listener_are_dropped_and_counted_without_a_panic() {
    let Some(mut lab) = Lab::new(&["curl"]) else {
        return;
    };
    lab.start_netbootd(SERVER_IP, &["--pool", POOL]);
    lab.set_client_address("10.99.0.10/24");
    // A fixed seed: the same 6,000 inputs on every run.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let inputs: Vec<Vec<u8>> = (0..6000)
        .map(|i| {
            let len = (next() % 600) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            // Every third one a BOOTP request with the cookie, so the options parser sees junk too.
            if i % 3 == 0 && len > 240 {
                bytes[0] = 1;
                bytes[236..240].copy_from_slice(&[99, 130, 83, 99]);
            }
            bytes
        })
        .collect();
    lab.in_client_ns(|| {
        let socket = UdpSocket::bind((Ipv4Addr::new(10, 99, 0, 10), 0)).unwrap();
        for (i, bytes) in inputs.iter().enumerate() {
            let port = [67, 69, 4011][i % 3];
            let _ = socket.send_to(bytes, (SERVER, port));
            // Paced, so that what is measured is netbootd, not the socket buffer overflowing.
            if i % 64 == 63 {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        for port in [8080, 8081, 8443] {
            for bytes in inputs.iter().take(100) {
                use std::io::Write;
                if let Ok(mut stream) = std::net::TcpStream::connect((SERVER, port)) {
                    let _ = stream.write_all(bytes);
                }
            }
        }
    });
    std::thread::sleep(Duration::from_secs(1));
    let health = lab.client("curl", &["-sf", "-m", "5", &format!("{HTTP}/healthz")]);
    assert!(health.status.success(), "netbootd is down:\n{}", lab.logs());
    let log = lab.log("netbootd");
    assert!(!log.contains("panicked"), "{log}");
    let received = metric(&lab, "netbootd_dhcp_received_total{port=\"67\"}");
    assert!(received >= 1900, "{received}: {}", lab.operator("/metrics"));
    // And it still leases.
    let forger = Forger::new(&lab);
    assert!(forger.lease(mac(7)).is_some(), "{}", lab.logs());
}

/// Unmounts what a drill mounted, also when it fails.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = lab::run("umount", &["-l", self.0.to_str().unwrap()]);
    }
}

#[test]
fn on_a_full_disk_no_lease_is_acknowledged_until_it_is_written() {
    let Some(mut lab) = Lab::new(&[]) else {
        return;
    };
    let state = lab.dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    must(
        "mount",
        &[
            "-t",
            "tmpfs",
            "-o",
            "size=256k",
            "tmpfs",
            state.to_str().unwrap(),
        ],
    );
    let _mounted = Mounted(state.clone());
    lab.start_netbootd(SERVER_IP, &["--pool", POOL]);
    let forger = Forger::new(&lab);
    let before = forger.lease(mac(1)).expect("a lease while there is room");
    // Fill the filesystem to the last byte.
    let filler = state.join("filler");
    let _ = lab::run(
        "dd",
        &["if=/dev/zero", &format!("of={}", filler.display()), "bs=4k"],
    );
    // The journal's last page may still hold a few lines: lease until a write finds no room.
    // Whatever was acknowledged until then is on disk; the rest waits.
    let acked: Vec<u32> = (2..200)
        .map_while(|n| forger.lease(mac(n)).map(|_| n))
        .collect();
    let refused = acked.len() as u32 + 2;
    eprintln!(
        "on a full disk: {} more leases fitted in the journal's last page, then none was acknowledged",
        acked.len()
    );
    assert!(
        refused < 200,
        "every lease was written: the disk is not full"
    );
    assert!(
        metric(
            &lab,
            "netbootd_dhcp_dropped_total{reason=\"lease_not_saved\"}"
        ) >= 1
    );
    let on_disk = lab.leases_on_disk();
    assert_eq!(
        on_disk.len(),
        acked.len() + 1,
        "an ACK for a lease not on disk: {on_disk:?}"
    );
    std::fs::remove_file(&filler).unwrap();
    let after = forger
        .lease(mac(refused))
        .expect("a lease once there is room again");
    assert_ne!(before, after);
    let leases = lab.leases_on_disk();
    assert_eq!(leases.len(), acked.len() + 2, "{leases:?}");
}

#[test]
fn kill_9_in_a_storm_loses_no_acknowledged_lease_and_every_client_completes() {
    let Some(mut lab) = Lab::new(&[]) else {
        return;
    };
    lab.start_netbootd(SERVER_IP, &["--pool", POOL]);
    let forger = Forger::new(&lab);
    let clients: Vec<[u8; 6]> = (0..90).map(|n| mac(100 + n)).collect();
    // The power cut comes a third of the way into the storm, however fast the machine, whatever
    // exchange is in flight then.
    let pid = lab.pid("netbootd");
    let leased = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let killer = std::thread::spawn({
        let leased = std::sync::Arc::clone(&leased);
        move || {
            while leased.load(std::sync::atomic::Ordering::Relaxed) < CUT_AFTER {
                std::thread::sleep(Duration::from_millis(1));
            }
            must("kill", &["-9", &pid.to_string()]);
            Instant::now()
        }
    });
    let mut killer = Some(killer);
    let mut acked: HashMap<[u8; 6], Ipv4Addr> = HashMap::new();
    let (mut before_cut, mut down_for) = (None, Duration::ZERO);
    for client in &clients {
        if let Some(ip) = forger.lease(*client) {
            acked.insert(*client, ip);
            leased.store(acked.len(), std::sync::atomic::Ordering::Relaxed);
        } else if killer.as_ref().is_some_and(|k| k.is_finished()) {
            // No answer: the server is gone. Start it again, as systemd would.
            let cut = killer.take().unwrap().join().unwrap();
            before_cut = Some(acked.len());
            lab.start_netbootd(SERVER_IP, &["--pool", POOL]);
            down_for = cut.elapsed();
        }
    }
    let before_cut = before_cut.expect("the storm ended before the cut");
    let first_try = acked.len();
    // Whoever the cut interrupted asks again, as a client does.
    for client in &clients {
        if !acked.contains_key(client) {
            acked.insert(*client, forger.lease(*client).expect("a retried lease"));
        }
    }
    eprintln!(
        "kill -9 during a storm of {} clients: {before_cut} leased before the cut, {first_try} at their first try, all {} after retrying; back in {down_for:.1?}",
        clients.len(),
        acked.len()
    );
    assert!(before_cut > 0 && before_cut < clients.len());
    let distinct: HashSet<&Ipv4Addr> = acked.values().collect();
    assert_eq!(
        distinct.len(),
        clients.len(),
        "two clients share an address"
    );
    // Every acknowledged lease is on disk and still the client's after the restart.
    let on_disk = lab.leases_on_disk();
    for (client, ip) in &acked {
        let text = client.map(|b| format!("{b:02x}")).join(":");
        assert_eq!(on_disk.get(&text), Some(ip), "{text}: {on_disk:?}");
        assert_eq!(forger.renew(*client, *ip), Some(MessageType::Ack), "{text}");
    }
}

/// Leases acknowledged before the kill -9 drill pulls the plug: a third of its 90 clients.
const CUT_AFTER: usize = 30;

/// netbootd's resident memory, in KiB.
fn resident_kib(lab: &Lab) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", lab.pid("netbootd"))).unwrap();
    (status.lines())
        .find_map(|line| {
            line.strip_prefix("VmRSS:")?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .expect("VmRSS")
}

#[test]
fn leases_from_thousands_of_fresh_macs_leave_memory_flat() {
    let Some(mut lab) = Lab::new(&[]) else {
        return;
    };
    lab.start_netbootd(SERVER_IP, &["--pool", POOL]);
    let forger = Forger::new(&lab);
    // Each fresh MAC leases an address and releases it, as a forger cycling MACs does.
    let churn = |macs: std::ops::Range<u32>| {
        for n in macs {
            let ip = forger.lease(mac(n)).expect("a lease");
            forger.send(&dhcp(mac(n), MessageType::Release, None, Some(ip)));
        }
    };
    // A first round brings the allocator and the pool to their working size.
    churn(10_000..10_300);
    let before = resident_kib(&lab);
    let started = Instant::now();
    churn(20_000..23_000);
    let grown = resident_kib(&lab).saturating_sub(before);
    eprintln!(
        "3,000 fresh MACs in {:.1} s: resident memory {before} KiB, then +{grown} KiB",
        started.elapsed().as_secs_f64()
    );
    assert!(grown < 1024, "+{grown} KiB for 3,000 strangers");
    let counted = metric(&lab, "netbootd_timeline_strangers_total{event=\"dhcp\"}");
    assert!(counted >= 3_000, "{}", lab.operator("/metrics"));
}

#[test]
fn replies_leave_from_the_served_address_not_the_interfaces_first() {
    let Some(mut lab) = Lab::new(&[]) else {
        return;
    };
    // The bridge's first address is 10.99.0.1; netbootd serves 10.99.0.5 beside it.
    lab.add_server_address("10.99.0.5/24");
    lab.start_netbootd("10.99.0.5", &["--pool", POOL]);
    let forger = Forger::new(&lab);
    let discover = dhcp(mac(1), MessageType::Discover, None, None);
    let (offer, from) = forger.ask_from(&discover, WAIT).expect("an offer");
    assert_eq!(from, SocketAddr::from(([10, 99, 0, 5], 67)));
    assert_eq!(
        offer.opts().get(OptionCode::ServerIdentifier),
        Some(&DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 99, 0, 5)))
    );
}

#[test]
fn inform_gets_the_network_settings_at_the_clients_own_address_and_no_lease() {
    let Some(mut lab) = Lab::new(&[]) else {
        return;
    };
    lab.start_netbootd(SERVER_IP, &["--pool", POOL]);
    // A client configured by hand asks only for the network's settings (RFC 2131 §3.4); the answer
    // goes to its address.
    lab.set_client_address("10.99.0.60/24");
    let forger = Forger::new(&lab);
    let mut inform = lab::client_message(mac(1), MessageType::Inform, Ipv4Addr::new(10, 99, 0, 60));
    inform.set_flags(Default::default());
    let (ack, from) = forger
        .ask_from(&inform, WAIT)
        .expect("an answer to DHCPINFORM");
    assert_eq!(kind(&ack), Some(MessageType::Ack));
    assert_eq!(from.ip(), SERVER);
    assert_eq!(
        ack.yiaddr(),
        Ipv4Addr::UNSPECIFIED,
        "an INFORM leases nothing"
    );
    assert!(ack.opts().get(OptionCode::AddressLeaseTime).is_none());
    assert!(ack.opts().get(OptionCode::SubnetMask).is_some());
    assert!(
        lab.leases_on_disk().is_empty(),
        "{:?}",
        lab.leases_on_disk()
    );
}

#[test]
fn a_damaged_lease_file_stops_netbootd_with_what_to_do_and_nothing_lost() {
    let Some(mut lab) = Lab::new(&[]) else {
        return;
    };
    let state = lab.dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let leases = state.join("dhcp-leases.json");
    std::fs::write(&leases, "[{\"mac\": \"02:00:00:00:00:01\", \"ip\": ").unwrap();
    let binary = std::env::var("LECTERN_NETBOOTD")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_netbootd").to_owned());
    let state_dir = state.to_str().unwrap();
    let args = [
        "10",
        &binary,
        "serve-static",
        "--interface",
        "br0",
        "--server-ip",
        SERVER_IP,
        "--state-dir",
        state_dir,
        "--pool",
        POOL,
    ];
    let refused = lab.server("timeout", &args);
    let said = String::from_utf8_lossy(&refused.stderr);
    // Refused at once (not stopped by the timeout), naming the file and the command that recovers.
    assert_eq!(refused.status.code(), Some(1), "{said}");
    let advice = format!("mv {} {}.corrupt", leases.display(), leases.display());
    assert!(said.contains(&advice), "{said}");
    assert!(leases.exists(), "the damaged file is kept for the operator");
    must(
        "mv",
        &[
            leases.to_str().unwrap(),
            &format!("{}.corrupt", leases.display()),
        ],
    );
    lab.start_netbootd(SERVER_IP, &["--pool", POOL]);
    assert!(Forger::new(&lab).lease(mac(2)).is_some(), "{}", lab.logs());
}
