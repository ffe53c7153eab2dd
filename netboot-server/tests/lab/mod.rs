//! A throwaway lab per test: a server namespace with a bridge, a client namespace joined to
//! it by a veth pair, and netbootd running in the server namespace. Everything is removed in
//! `Drop`, also when the test fails. Never touches an existing interface.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const SERVER_IP: &str = "10.99.0.1";
pub const HTTP: &str = "http://10.99.0.1:8080";
pub const BRIDGE: &str = "br0";
pub const CLIENT_LINK: &str = "vc0";

/// A DHCP client's message of `kind` from `mac` holding `ciaddr`, asking for broadcast replies: the
/// client link has no address they could go to.
pub fn client_message(
    mac: [u8; 6],
    kind: dhcproto::v4::MessageType,
    ciaddr: std::net::Ipv4Addr,
) -> dhcproto::v4::Message {
    use dhcproto::v4::{DhcpOption, Flags, Message};
    use std::net::Ipv4Addr;
    let mut message = Message::new(
        ciaddr,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        &mac,
    );
    message.set_flags(Flags::default().set_broadcast());
    message.opts_mut().insert(DhcpOption::MessageType(kind));
    message
}

/// Runs `program args…`, returning its output; panics if it cannot start.
pub fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|error| panic!("{program} {args:?}: {error}"))
}

/// Like [`run`], and panics with its stderr unless it succeeded.
pub fn must(program: &str, args: &[&str]) -> String {
    let output = run(program, args);
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn exec_in(namespace: &str, program: &str, args: &[&str]) -> Output {
    let mut full = vec!["netns", "exec", namespace, program];
    full.extend_from_slice(args);
    run("ip", &full)
}

fn on_path(tool: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .any(|dir| dir.join(tool).is_file())
}

/// Why this machine cannot run the lab, if it cannot.
fn missing_prerequisite(needs: &[&str]) -> Option<String> {
    let uid = run("id", &["-u"]);
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Some("network-namespace tests need root".into());
    }
    let missing: Vec<&str> = ["ip", "/usr/lib/ipxe/undionly.kpxe"]
        .iter()
        .chain(needs)
        .copied()
        .filter(|need| {
            if need.starts_with('/') {
                !Path::new(need).is_file()
            } else {
                !on_path(need)
            }
        })
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "missing {} (Debian: iproute2 busybox-static tftp-hpa curl dnsmasq-base ipxe qemu-system-x86 ovmf swtpm tpm2-tools)",
            missing.join(", ")
        )
    })
}

pub struct Lab {
    pub server_ns: String,
    pub client_ns: String,
    pub dir: tempfile::TempDir,
    children: Vec<(Child, PathBuf)>,
}

static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

impl Lab {
    /// A fresh lab, or `None` (after saying why) when prerequisites are missing and
    /// `LECTERN_REQUIRE_NETNS=1` is not set; with it set, missing prerequisites fail the test.
    /// `needs` names commands, or files by absolute path.
    pub fn new(needs: &[&str]) -> Option<Lab> {
        if let Some(why) = missing_prerequisite(needs) {
            if std::env::var("LECTERN_REQUIRE_NETNS").as_deref() == Ok("1") {
                panic!("LECTERN_REQUIRE_NETNS=1 but {why}");
            }
            eprintln!("skipping network-namespace test: {why}");
            return None;
        }
        let id = format!(
            "{}-{}",
            std::process::id(),
            NEXT_LAB.fetch_add(1, Ordering::Relaxed)
        );
        let lab = Lab {
            server_ns: format!("lectern-nbs-{id}"),
            client_ns: format!("lectern-nbc-{id}"),
            dir: tempfile::tempdir().expect("temporary directory"),
            children: Vec::new(),
        };
        must("ip", &["netns", "add", &lab.server_ns]);
        must("ip", &["netns", "add", &lab.client_ns]);
        let (s, c) = (lab.server_ns.as_str(), lab.client_ns.as_str());
        for args in [
            vec!["-n", s, "link", "set", "lo", "up"],
            vec!["-n", c, "link", "set", "lo", "up"],
            vec!["-n", s, "link", "add", BRIDGE, "type", "bridge"],
            vec!["-n", s, "addr", "add", "10.99.0.1/24", "dev", BRIDGE],
            vec!["-n", s, "link", "set", BRIDGE, "up"],
            vec![
                "-n",
                s,
                "link",
                "add",
                "vs0",
                "type",
                "veth",
                "peer",
                "name",
                CLIENT_LINK,
                "netns",
                c,
            ],
            vec!["-n", s, "link", "set", "vs0", "master", BRIDGE, "up"],
            vec!["-n", c, "link", "set", CLIENT_LINK, "up"],
        ] {
            must("ip", &args);
        }
        Some(lab)
    }

    /// Gives the client link this MAC (the DHCP client's identity).
    pub fn set_client_mac(&self, mac: &str) {
        must(
            "ip",
            &["-n", &self.client_ns, "link", "set", CLIENT_LINK, "down"],
        );
        must(
            "ip",
            &[
                "-n",
                &self.client_ns,
                "link",
                "set",
                CLIENT_LINK,
                "address",
                mac,
            ],
        );
        must(
            "ip",
            &["-n", &self.client_ns, "link", "set", CLIENT_LINK, "up"],
        );
    }

    /// Gives the client link this address (`10.99.0.10/24`), replacing any other.
    pub fn set_client_address(&self, cidr: &str) {
        must(
            "ip",
            &["-n", &self.client_ns, "addr", "flush", "dev", CLIENT_LINK],
        );
        must(
            "ip",
            &[
                "-n",
                &self.client_ns,
                "addr",
                "add",
                cidr,
                "dev",
                CLIENT_LINK,
            ],
        );
    }

    /// Adds a tap device on the server's bridge, for a qemu guest in the server namespace.
    pub fn add_tap(&self, name: &str) {
        must(
            "ip",
            &[
                "-n",
                &self.server_ns,
                "tuntap",
                "add",
                "dev",
                name,
                "mode",
                "tap",
            ],
        );
        must(
            "ip",
            &[
                "-n",
                &self.server_ns,
                "link",
                "set",
                name,
                "master",
                BRIDGE,
                "up",
            ],
        );
    }

    /// Adds another address to the server's bridge.
    pub fn add_server_address(&self, cidr: &str) {
        must(
            "ip",
            &["-n", &self.server_ns, "addr", "add", cidr, "dev", BRIDGE],
        );
    }

    /// Runs a command in the client namespace.
    pub fn client(&self, program: &str, args: &[&str]) -> Output {
        exec_in(&self.client_ns, program, args)
    }

    /// GETs `path` from netbootd's operator views (the server namespace's loopback); "" if it fails.
    pub fn operator(&self, path: &str) -> String {
        let url = format!("http://127.0.0.1:8081{path}");
        let output = self.server("curl", &["-sf", "-m", "10", &url]);
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Runs a command in the server namespace.
    pub fn server(&self, program: &str, args: &[&str]) -> Output {
        exec_in(&self.server_ns, program, args)
    }

    /// Starts a long-running program in the server namespace, its output kept in a log.
    pub fn spawn_in_server(&mut self, name: &str, program: &str, args: &[&str]) {
        let namespace = self.server_ns.clone();
        self.spawn_in(&namespace, name, program, args);
    }

    /// Starts a long-running program in the client namespace, its output kept in a log.
    pub fn spawn_in_client(&mut self, name: &str, program: &str, args: &[&str]) {
        let namespace = self.client_ns.clone();
        self.spawn_in(&namespace, name, program, args);
    }

    fn spawn_in(&mut self, namespace: &str, name: &str, program: &str, args: &[&str]) {
        let log = self.dir.path().join(format!("{name}.log"));
        let file = File::create(&log).expect("log file");
        let child = Command::new("ip")
            .args(["netns", "exec", namespace, program])
            .args(args)
            .env("RUST_LOG", "lectern_netboot=debug,info")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|error| panic!("starting {program}: {error}"));
        self.children.push((child, log));
    }

    /// Captures every frame on the bridge into `file` (pcap) from the moment this returns.
    pub fn capture_bridge(&mut self, file: &Path) {
        let file = file.to_str().expect("a UTF-8 path");
        self.spawn_in_server(
            "tcpdump",
            "tcpdump",
            &["-i", BRIDGE, "-U", "-s", "0", "-w", file],
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.log("tcpdump").contains("listening on") {
            assert!(
                Instant::now() < deadline,
                "tcpdump did not start: {}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts netbootd at `server_ip` (an address of the bridge) with these arguments, and
    /// waits until its HTTP side answers.
    pub fn start_netbootd(&mut self, server_ip: &str, args: &[&str]) {
        self.start_netbootd_via(&[], server_ip, args);
    }

    /// Like [`Lab::start_netbootd`], as user nobody holding only the capabilities netbootd
    /// documents: binding ports below 1024 and raw ICMPv6.
    pub fn start_netbootd_unprivileged(&mut self, server_ip: &str, args: &[&str]) {
        must("chmod", &["755", self.dir.path().to_str().unwrap()]);
        let caps = "-all,+net_bind_service,+net_raw";
        let launcher = [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            &format!("--inh-caps={caps}"),
            &format!("--ambient-caps={caps}"),
            &format!("--bounding-set={caps}"),
            "--",
        ]
        .map(String::from);
        let launcher: Vec<&str> = launcher.iter().map(String::as_str).collect();
        self.start_netbootd_via(&launcher, server_ip, args);
    }

    /// Like [`Lab::start_netbootd`], started through `launcher` (a command that runs the rest).
    pub fn start_netbootd_via(&mut self, launcher: &[&str], server_ip: &str, args: &[&str]) {
        let state = self.dir.path().join("state");
        std::fs::create_dir_all(&state).expect("state directory");
        must("chown", &["65534:65534", state.to_str().unwrap()]);
        // LECTERN_NETBOOTD runs the tests against another build (an older one, to see a test fail).
        let binary = std::env::var("LECTERN_NETBOOTD")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_netbootd").to_owned());
        let binary = binary.as_str();
        let mut full = launcher.to_vec();
        full.extend_from_slice(&[
            binary,
            "serve-static",
            "--interface",
            BRIDGE,
            "--server-ip",
            server_ip,
        ]);
        full.extend_from_slice(&["--state-dir", state.to_str().unwrap()]);
        full.extend_from_slice(args);
        let (program, rest) = full.split_first().expect("a program");
        self.spawn_in_server("netbootd", program, rest);
        let deadline = Instant::now() + Duration::from_secs(20);
        let health = format!("http://{server_ip}:8080/healthz");
        loop {
            let probe = self.server("curl", &["-sf", "-m", "1", &health]);
            if probe.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "netbootd did not come up:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The pid of the program started under `name` (`ip netns exec` execs it, so the child's
    /// pid is the program's).
    pub fn pid(&self, name: &str) -> u32 {
        let log = self.dir.path().join(format!("{name}.log"));
        let (child, _) = self
            .children
            .iter()
            .find(|(_, path)| *path == log)
            .expect("no such program");
        child.id()
    }

    /// Sends `signal` (`HUP`, `TERM`…) to the program started under `name`.
    pub fn signal(&self, name: &str, signal: &str) {
        must(
            "kill",
            &[&format!("-{signal}"), &self.pid(name).to_string()],
        );
    }

    /// The log of the program started under `name`.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    pub fn logs(&self) -> String {
        self.children
            .iter()
            .map(|(_, log)| {
                format!(
                    "--- {}\n{}",
                    log.display(),
                    std::fs::read_to_string(log).unwrap_or_default()
                )
            })
            .collect()
    }

    /// The leases on netbootd's disk, MAC to address, as a restart reads them.
    pub fn leases_on_disk(&self) -> std::collections::HashMap<String, std::net::Ipv4Addr> {
        let file = self
            .dir
            .path()
            .join("state")
            .join(lectern_netboot::server::LEASE_FILE);
        let leases = lectern_netboot::dhcp::pool::leases_on_disk(file).expect("the lease table");
        (leases.into_iter())
            .map(|(mac, ip)| (mac.to_string(), ip))
            .collect()
    }

    /// A UDP socket on the client link at port 68, as a DHCP client has, broadcasts allowed.
    pub fn dhcp_client_socket(&self) -> std::net::UdpSocket {
        use socket2::{Domain, Protocol, Socket, Type};
        self.in_client_ns(|| {
            let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
            socket.set_reuse_address(true).unwrap();
            socket.set_broadcast(true).unwrap();
            socket.bind_device(Some(CLIENT_LINK.as_bytes())).unwrap();
            let any = std::net::SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, 68));
            socket.bind(&any.into()).unwrap();
            std::net::UdpSocket::from(socket)
        })
    }

    /// Runs `action` on a thread that has entered the client namespace: sockets it opens
    /// live there.
    pub fn in_client_ns<T: Send>(&self, action: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.client_ns);
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let namespace =
                        File::open(&path).unwrap_or_else(|error| panic!("{path}: {error}"));
                    // SAFETY: setns only changes this (scoped, about to end) thread's network namespace.
                    let entered = unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) };
                    assert_eq!(
                        entered,
                        0,
                        "setns {path}: {}",
                        std::io::Error::last_os_error()
                    );
                    action()
                })
                .join()
                .expect("client-namespace thread")
        })
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for (child, _) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        for namespace in [&self.server_ns, &self.client_ns] {
            let _ = run("ip", &["netns", "del", namespace]);
        }
    }
}
