//! A throwaway lab for VM tests: a network namespace with a bridge (10.99.0.1/24) and a tap, a DHCP server
//! (busybox udhcpd, reservations per MAC), an HTTP server standing in for netbootd (serves a directory and
//! logs POSTs to /api/report), and qemu guests (TCG: KVM does not run guests on these machines).
//! Everything it starts is stopped by pid and the namespace deleted when the [`Lab`] is dropped.
//! [`Lab::netboot`] boots a role's artifacts from a lectern store the way netbootd hands them out.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use impairment::{ImpairedLink, Impairment, LinkCounts};
use lectern_builder::build::{BuildOptions, Builder};
use lectern_builder::context::Plan;
use lectern_builder::recipe::Recipes;
use lectern_store::command_line::{self, Image, KernelCommandLine};
use lectern_store::{HostLayer, Manifest, Store};
use serde_json::Value;
use soft_tpm::SoftTpm;

pub mod capture;
pub mod debian_box;
pub mod impairment;
pub mod room;
pub mod storm;
// The one soft TPM of the test labs, shared with the namespace tests.
#[path = "../../netboot-server/tests/lab/soft_tpm.rs"]
pub mod soft_tpm;

pub const SERVER_IP: &str = "10.99.0.1";
const OVMF: &str = "/usr/share/ovmf/OVMF.fd";

/// The firmware a PXE-booted guest runs.
#[derive(Clone, Copy, Debug)]
pub enum Firmware {
    Bios,
    Uefi,
}
pub const HTTP_PORT: u16 = 8080;

/// Tools a lab needs, with the apt package providing each.
const TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("busybox", "busybox"),
    ("python3", "python3"),
];

pub struct Lab {
    netns: String,
    /// The lab's bridge, the video LAN every guest's tap joins.
    bridge: String,
    dir: tempfile::TempDir,
    children: Vec<Child>,
    taps: usize,
    /// What the links of guests started from now on do to their frames (see [`Lab::impair_links`]).
    impairment: Option<Impairment>,
    links: Vec<ImpairedLink>,
}

/// Why a lab cannot run here (not root, a tool missing), or `None` if it can.
pub fn unavailable() -> Option<String> {
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.stdout == b"0\n");
    if !is_root {
        return Some("VM tests need root (network namespaces, taps)".to_owned());
    }
    let missing: Vec<String> = TOOLS
        .iter()
        .filter(|(tool, _)| {
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .is_ok_and(|o| !o.status.success())
        })
        .map(|(tool, package)| format!("{tool} (apt-get install {package})"))
        .collect();
    (!missing.is_empty()).then(|| format!("missing {}", missing.join(", ")))
}

fn ip(args: &[&str]) -> Result<()> {
    let status = Command::new("ip")
        .args(args)
        .status()
        .context("running ip")?;
    ensure!(status.success(), "ip {} failed", args.join(" "));
    Ok(())
}

impl Lab {
    /// Creates the namespace and bridge with the stand-in servers: busybox udhcpd (`hosts` are its
    /// reservations `(mac, ip)` inside 10.99.0.0/24) and the HTTP server of [`Lab::www`].
    pub fn new(hosts: &[(&str, &str)]) -> Result<Self> {
        let mut lab = Self::bare()?;
        lab.start_dhcp(hosts)?;
        fs::create_dir(lab.www())?;
        lab.serve_http()?;
        Ok(lab)
    }

    /// Creates the namespace and the bridge (`br0`, 10.99.0.1/24) with nothing serving on it.
    pub fn bare() -> Result<Self> {
        Self::with_lan("br0", &format!("{SERVER_IP}/24"))
    }

    /// Creates the namespace and a bridge named `bridge` holding the server's `address` (CIDR), with
    /// nothing serving on it: the video LAN of a master file.
    pub fn with_lan(bridge: &str, address: &str) -> Result<Self> {
        // Unique per lab: the tests of one binary run side by side, each in a lab of its own.
        static LABS: AtomicUsize = AtomicUsize::new(0);
        let netns = format!(
            "lectern-lab-{}-{}",
            std::process::id(),
            LABS.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &netns])?;
        let lab = Self {
            netns,
            bridge: bridge.to_owned(),
            dir: tempfile::Builder::new().prefix("lectern-lab-").tempdir()?,
            children: Vec::new(),
            taps: 0,
            impairment: None,
            links: Vec::new(),
        };
        let ns = lab.netns.as_str();
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        ip(&["-n", ns, "link", "add", bridge, "type", "bridge"])?;
        ip(&["-n", ns, "addr", "add", address, "dev", bridge])?;
        ip(&["-n", ns, "link", "set", bridge, "up"])?;
        Ok(lab)
    }

    /// The namespace's name, for commands a person runs in it (`ip netns exec NAME …`).
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// The lab's bridge: the video LAN.
    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `program` run inside the lab's namespace.
    pub fn in_netns(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.netns, program]);
        command
    }

    /// dnsmasq in the lab's namespace as the tests run it: in the foreground, logging to its output,
    /// no DNS, no configuration file, bound to `interface` only. Each caller adds its DHCP.
    pub fn dnsmasq(&self, interface: &str) -> Command {
        let mut dnsmasq = self.in_netns("dnsmasq");
        dnsmasq
            .args(["--keep-in-foreground", "--conf-file=/dev/null", "--port=0"])
            .args([
                "--no-resolv",
                "--no-hosts",
                "--no-ping",
                "--bind-interfaces",
            ])
            .args(["--log-facility=-", "--user=root"])
            .arg(format!("--interface={interface}"));
        dnsmasq
    }

    /// Starts `command` with its output in `log` (in [`Lab::dir`]); it is killed when the lab drops.
    /// Returns its index for [`Lab::stop`].
    pub fn spawn(&mut self, mut command: Command, log: &str) -> Result<usize> {
        let log = fs::File::create(self.dir.path().join(log))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.children.push(child);
        Ok(self.children.len() - 1)
    }

    /// swtpm for the guest on `tap`, serving `tpm`; the socket qemu connects to.
    fn start_tpm(&mut self, tpm: &SoftTpm, tap: &str) -> Result<PathBuf> {
        let socket = self.dir.path().join(format!("{tap}.tpm.sock"));
        let mut swtpm = Command::new("swtpm");
        swtpm.args(tpm.qemu_server(&socket));
        self.spawn(swtpm, &format!("{tap}.swtpm.log"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            ensure!(Instant::now() < deadline, "swtpm made no socket for {tap}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(socket)
    }

    /// CPU seconds (user + system) the process [`Lab::spawn`] started as `index` has used so far.
    pub fn cpu_seconds(&self, index: usize) -> Option<f64> {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.children[index].id())).ok()?;
        // Fields after the parenthesised command name; utime and stime are the 14th and 15th of the line.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks: f64 =
            fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
        // SAFETY: sysconf only reads a constant.
        let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        Some(ticks / per_second)
    }

    /// Lowers the CPU priority of what [`Lab::spawn`] started as `index` to `nice` (0 to 19).
    pub fn deprioritize(&self, index: usize, nice: i32) -> Result<()> {
        let pid = self.children[index].id();
        // SAFETY: setpriority only changes the scheduling priority of our own child.
        let done = unsafe { libc::setpriority(libc::PRIO_PROCESS, pid, nice) };
        ensure!(
            done == 0,
            "setpriority {pid}: {}",
            std::io::Error::last_os_error()
        );
        Ok(())
    }

    /// The pid of what [`Lab::spawn`] started as `index` (`ip netns exec` execs the program, so it is
    /// the program's).
    pub fn pid(&self, index: usize) -> u32 {
        self.children[index].id()
    }

    /// Kills what [`Lab::spawn`] started as `index` (a guest: its power cord pulled).
    pub fn stop(&mut self, index: usize) -> Result<()> {
        kill(&mut self.children[index])
    }

    /// Asks what [`Lab::spawn`] started as `index` to stop (SIGTERM) and waits for it; true if it
    /// exited within `grace` (else it is killed).
    pub fn terminate(&mut self, index: usize, grace: Duration) -> Result<bool> {
        let child = &mut self.children[index];
        // SAFETY: kill only sends a signal to our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if child.try_wait()?.is_some() {
                return Ok(true);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        child.kill()?;
        child.wait()?;
        Ok(false)
    }

    fn start_dhcp(&mut self, hosts: &[(&str, &str)]) -> Result<()> {
        let leases = self.dir.path().join("udhcpd.leases");
        fs::write(&leases, b"")?;
        let mut config = format!(
            "start 10.99.0.200\nend 10.99.0.250\ninterface br0\nlease_file {}\noption subnet 255.255.255.0\n\
             option router {SERVER_IP}\n",
            leases.display()
        );
        for (mac, ip) in hosts {
            config.push_str(&format!("static_lease {mac} {ip}\n"));
        }
        let config_path = self.dir.path().join("udhcpd.conf");
        fs::write(&config_path, config)?;
        let mut command = self.in_netns("busybox");
        command.args(["udhcpd", "-f"]).arg(&config_path);
        self.spawn(command, "udhcpd.log").map(drop)
    }

    /// The directory served at http://10.99.0.1:8080/.
    pub fn www(&self) -> PathBuf {
        self.dir.path().join("www")
    }

    /// Serves [`Lab::www`] and records POSTs to /api/report (see [`Lab::reports`]).
    fn serve_http(&mut self) -> Result<()> {
        let www = self.www();
        let script = self.dir.path().join("lab_server.py");
        fs::write(&script, include_str!("lab_server.py"))?;
        let mut command = self.in_netns("python3");
        command
            .arg(&script)
            .arg(www)
            .arg(SERVER_IP)
            .arg(HTTP_PORT.to_string())
            .arg(self.reports_path());
        self.spawn(command, "http.log")?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let probe = self
                .in_netns("busybox")
                .args([
                    "wget",
                    "-q",
                    "-O",
                    "/dev/null",
                    &format!("http://{SERVER_IP}:{HTTP_PORT}/"),
                ])
                .status()?;
            if probe.success() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        bail!(
            "the lab HTTP server did not come up; see {}",
            self.dir.path().join("http.log").display()
        )
    }

    fn reports_path(&self) -> PathBuf {
        self.dir.path().join("reports.jsonl")
    }

    /// Every report POSTed so far, parsed.
    pub fn reports(&self) -> Vec<Value> {
        let text = fs::read_to_string(self.reports_path()).unwrap_or_default();
        text.lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// Boots a guest directly (`-kernel/-initrd/-append`) on a new tap. Several initrds are concatenated, each
    /// padded to 4 bytes (the kernel looks for the next archive's magic at 4-byte boundaries), as iPXE does.
    /// Returns the path of the guest's serial log.
    pub fn boot_direct(
        &mut self,
        mac: &str,
        kernel: &Path,
        initrds: &[&Path],
        cmdline: &str,
    ) -> Result<PathBuf> {
        let (tap, serial, mut command) = self.guest("pc", &format!("mac={mac}"))?;
        let initrd = self.dir.path().join(format!("{tap}.initrd"));
        let mut combined = fs::File::create(&initrd)?;
        for part in initrds {
            let bytes = fs::read(part).with_context(|| format!("reading {}", part.display()))?;
            combined.write_all(&bytes)?;
            combined.write_all(&vec![0; bytes.len().next_multiple_of(4) - bytes.len()])?;
        }
        command
            .arg("-kernel")
            .arg(kernel)
            .arg("-initrd")
            .arg(&initrd)
            .args(["-append", cmdline]);
        self.spawn(command, &format!("{tap}.qemu.log"))?;
        Ok(serial)
    }

    /// Starts a guest that boots from its NIC, as a machine at the venue does: BIOS with qemu's own
    /// iPXE ROM, or UEFI (OVMF) with the firmware's own PXE; `smbios` are qemu `-smbios` values (its
    /// identity). Returns its index for [`Lab::stop`].
    pub fn pxe_boot(
        &mut self,
        mac: &str,
        firmware: Firmware,
        smbios: &[String],
        tpm: Option<&SoftTpm>,
    ) -> Result<usize> {
        let (machine, nic) = match firmware {
            Firmware::Bios => ("pc", format!("mac={mac},bootindex=1")),
            Firmware::Uefi => ("q35", format!("mac={mac},bootindex=1,romfile=")),
        };
        let (tap, _, mut command) = self.guest(machine, &nic)?;
        for value in smbios {
            command.arg("-smbios").arg(value);
        }
        if let Some(tpm) = tpm {
            let socket = self.start_tpm(tpm, &tap)?;
            command.args(SoftTpm::qemu_args(&socket));
        }
        match firmware {
            Firmware::Bios => command.args(["-boot", "n"]),
            Firmware::Uefi => command.args(["-bios", OVMF]),
        };
        self.spawn(command, &format!("{tap}.qemu.log"))
    }

    /// Starts a UEFI guest (OVMF) that boots `disk` (an `imgbuild disk` image, `format` raw or qcow2) as
    /// a VM or cloud instance does, its NIC without a PXE ROM. `smbios` are qemu `-smbios` values: an OEM
    /// string `type=11,value=lectern.host=NAME` names the host as the production box's VMs are started,
    /// `type=1,manufacturer=Amazon EC2` makes the firmware an EC2 instance's. The disk stays unchanged
    /// (qemu's snapshot mode). Returns its index for [`Lab::stop`].
    pub fn disk_boot(
        &mut self,
        mac: &str,
        disk: &Path,
        format: &str,
        smbios: &[String],
    ) -> Result<usize> {
        let (tap, _, mut command) = self.guest("q35", &format!("mac={mac},romfile="))?;
        command
            .args(["-bios", OVMF, "-snapshot", "-drive"])
            .arg(format!("file={},format={format},if=virtio", disk.display()));
        for value in smbios {
            command.arg("-smbios").arg(value);
        }
        self.spawn(command, &format!("{tap}.qemu.log"))
    }

    /// Runs `work` on a thread inside the lab's namespace, so that the sockets it opens and the
    /// processes it starts are on the lab's LAN (an AWS stand-in and its clients, a metadata service).
    pub fn in_netns_thread<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T> {
        let namespace = fs::File::open(format!("/run/netns/{}", self.netns))
            .with_context(|| format!("opening namespace {}", self.netns))?;
        std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            // SAFETY: setns on this thread only, with a namespace file we hold open.
            if unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(anyhow::anyhow!(
                    "setns: {}",
                    std::io::Error::last_os_error()
                ));
            }
            Ok(work())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the namespace thread panicked"))?
    }

    /// Adds `address` (CIDR) to the lab's bridge: a router or service address guests reach.
    pub fn add_address(&self, address: &str) -> Result<()> {
        ip(&[
            "-n",
            &self.netns,
            "addr",
            "add",
            address,
            "dev",
            &self.bridge,
        ])
    }

    /// Guests started from now on reach the bridge through a link that drops and delays their frames
    /// as `impairment` says; `None` gives the next ones a plain tap again.
    pub fn impair_links(&mut self, impairment: Option<Impairment>) {
        self.impairment = impairment;
    }

    /// What each impaired link has done so far, in the order the guests were started.
    pub fn link_counts(&self) -> Vec<&LinkCounts> {
        self.links.iter().map(|link| &*link.counts).collect()
    }

    /// A new tap on the bridge and a TCG qemu on it (`nic` completes its virtio-net device); returns
    /// the tap's name, the serial log and the command, for the caller to add the boot source.
    fn guest(&mut self, machine: &str, nic: &str) -> Result<(String, PathBuf, Command)> {
        let tap = format!("tap{}", self.taps);
        self.taps += 1;
        let ns = self.netns.clone();
        let netdev = match self.impairment {
            None => {
                ip(&["-n", &ns, "tuntap", "add", "dev", &tap, "mode", "tap"])?;
                format!("tap,id=n0,ifname={tap},script=no,downscript=no")
            }
            Some(impairment) => {
                let name = tap.clone();
                let link =
                    self.in_netns_thread(move || ImpairedLink::start(&name, impairment))??;
                let netdev = link.netdev("n0");
                self.links.push(link);
                netdev
            }
        };
        ip(&["-n", &ns, "link", "set", &tap, "master", &self.bridge, "up"])?;
        let serial = self.dir.path().join(format!("{tap}.serial.log"));
        let mut command = self.in_netns("qemu-system-x86_64");
        command
            .args([
                "-machine", machine, "-accel", "tcg", "-m", "2048", "-smp", "1",
            ])
            .args(["-nographic", "-monitor", "none", "-no-reboot"])
            .arg("-serial")
            .arg(format!("file:{}", serial.display()))
            .args(["-netdev", &netdev])
            .args(["-device", &format!("virtio-net-pci,netdev=n0,{nic}")]);
        if let Ok(extra) = std::env::var("LECTERN_LAB_QEMU_ARGS") {
            command.args(extra.split_whitespace());
        }
        Ok((tap, serial, command))
    }

    /// Every guest's serial and qemu log, in boot order.
    pub fn guest_logs(&self) -> Vec<PathBuf> {
        (0..self.taps)
            .flat_map(|tap| {
                ["qemu.log", "serial.log"]
                    .map(|suffix| self.dir.path().join(format!("tap{tap}.{suffix}")))
            })
            .collect()
    }

    /// Boots `manifest`'s artifacts on a guest with `mac`, like netbootd will: kernel + initrd + the host's
    /// layer, root image over HTTP pinned by `root_sha256` (pass a wrong one to test the refusal).
    pub fn netboot(
        &mut self,
        store: &Store,
        manifest: &Manifest,
        host_layer: Option<&HostLayer>,
        mac: &str,
        root_sha256: &str,
    ) -> Result<PathBuf> {
        let artifact = |name: &str| -> Result<PathBuf> {
            let blob = manifest
                .artifacts
                .get(name)
                .with_context(|| format!("manifest has no {name}"))?;
            Ok(store.blob_path(&blob.sha256))
        };
        let root = artifact("root.squashfs")?;
        let root_name = format!("{}.squashfs", manifest.artifacts["root.squashfs"].sha256);
        let served = self.www().join(&root_name);
        if !served.exists() {
            std::os::unix::fs::symlink(&root, &served)?;
        }
        let server = format!("http://{SERVER_IP}:{HTTP_PORT}");
        let root_url = format!("{server}/{root_name}");
        // e.g. LECTERN_LAB_CMDLINE=systemd.journald.forward_to_console=1 puts the journal in the serial log.
        let extra: Vec<String> = std::env::var("LECTERN_LAB_CMDLINE")
            .map(|extra| extra.split_whitespace().map(String::from).collect())
            .unwrap_or_default();
        let cmdline = KernelCommandLine {
            root: Some((&root_url, root_sha256)),
            server: &server,
            image: Some(Image {
                id: manifest.image.as_str(),
                role: &manifest.role,
                hostname: None,
                layer: command_line::HostLayer::Loaded,
            }),
            extra: &extra,
        }
        .render();
        let initrd = artifact("initrd")?;
        let host_cpio = host_layer.map(|layer| store.blob_path(&layer.blob.sha256));
        let initrds: Vec<&Path> = std::iter::once(initrd.as_path())
            .chain(host_cpio.as_deref())
            .collect();
        self.boot_direct(mac, &artifact("vmlinuz")?, &initrds, &cmdline)
    }

    /// Waits until a report satisfies `wanted`, or fails after `timeout` with the end of `serial`.
    pub fn wait_for_report(
        &self,
        timeout: Duration,
        serial: &Path,
        wanted: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(report) = self.reports().into_iter().find(|r| wanted(r)) {
                return Ok(report);
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        let log = String::from_utf8_lossy(&fs::read(serial).unwrap_or_default()).into_owned();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!(
            "no matching report within {timeout:?}; reports: {:?}\nserial log tail:\n{}",
            self.reports(),
            tail.join("\n")
        )
    }
}

/// Kills `child`, and the process group it leads if it was started under `setsid` (a restart loop and
/// what it runs).
fn kill(child: &mut std::process::Child) -> Result<()> {
    let pid = child.id() as libc::pid_t;
    // SAFETY: plain syscalls on a child we have not reaped, so its pid is still ours.
    if unsafe { libc::getpgid(pid) } == pid {
        unsafe { libc::kill(-pid, libc::SIGKILL) };
    }
    child.kill()?;
    child.wait()?;
    Ok(())
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = kill(child);
        }
        let _ = ip(&["netns", "del", &self.netns]);
        if std::env::var_os("LECTERN_KEEP_LAB").is_some() {
            let kept = self.dir.path().with_extension("kept");
            let _ = fs::rename(self.dir.path(), &kept);
            eprintln!("lab files kept in {}", kept.display());
        }
    }
}

/// The last `lines` lines of each file of `paths` (a guest's console, a server's log), each under a
/// header naming it, for a failure's message.
pub fn log_tails(paths: impl IntoIterator<Item = PathBuf>, lines: usize) -> String {
    let mut out = String::new();
    for path in paths {
        let text = String::from_utf8_lossy(&fs::read(&path).unwrap_or_default()).into_owned();
        let all: Vec<&str> = text.lines().collect();
        let tail = &all[all.len().saturating_sub(lines)..];
        out.push_str(&format!(
            "--- tail of {} ---\n{}\n",
            path.display(),
            tail.join("\n")
        ));
    }
    out
}

/// The repository checkout (recipes, overlays, fixtures).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("qemu-tests sits in the repo")
        .to_owned()
}

/// The builder tests' fixture master file (one room on this lab's 10.99.0.0/24: mixer, two sources,
/// encoder), expanded into its plan. Its secrets file must be 0600 to be used, which git cannot record.
pub fn fixture_plan() -> Result<Plan> {
    use std::os::unix::fs::PermissionsExt;
    let fixtures = repo().join("builder/tests/fixtures");
    fs::set_permissions(
        fixtures.join("fixture-secrets.toml"),
        fs::Permissions::from_mode(0o600),
    )?;
    Plan::load(&fixtures.join("master.toml"))
}

/// A builder over the repository's recipes into `store_dir`, with the apt cache from LECTERN_APT_CACHE and
/// the lock file beside the store (`lectern-test-store.lock`), kept with it from run to run. The tests
/// build from that lock like any build, but the test store is a cache of today's Debian, not an event's
/// frozen set: before its first build, each test process updates the lock (see [`Builder::update`]),
/// which asks the mirror and builds nothing unless a Debian point release changed locked packages.
pub fn fixture_builder(store_dir: &Path) -> Result<Builder> {
    fixture_builder_with_overlays(store_dir, &repo().join("overlays"))
}

/// [`fixture_builder`] with the overlay trees of `overlays` (a changed copy makes another release).
pub fn fixture_builder_with_overlays(store_dir: &Path, overlays: &Path) -> Result<Builder> {
    let repo = repo();
    let recipes = Recipes::load(&repo.join("recipes"), overlays)?;
    let apt_cache = std::env::var_os("LECTERN_APT_CACHE")
        .map_or_else(|| "/var/cache/lectern/apt".into(), PathBuf::from);
    let builder = Builder::new(
        Store::create(store_dir)?,
        recipes,
        BuildOptions {
            source_date_epoch: 1_700_000_000,
            apt_cache,
            lock_file: store_dir.with_extension("lock"),
        },
    )?;
    // Once per process (the tests of a binary run side by side): the lock's layers and the base.
    static UPDATED: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let mut updated = UPDATED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if !*updated {
        let update = builder.update(&[], false)?;
        if update.after != update.before {
            eprint!(
                "the test store's lock, updated:\n{}",
                lectern_builder::lock::describe_changes(&update.before, &update.after)
            );
        }
        *updated = true;
    }
    Ok(builder)
}

/// The netbootd of this build, beside the test executable `test_exe` (target/<profile>/deps/…):
/// `cargo test --workspace` builds it; alone, build it first with `cargo build -p lectern-netboot`.
pub fn netbootd_binary(test_exe: &Path) -> Result<PathBuf> {
    workspace_binary(test_exe, "netbootd")
}

/// The workspace binary `name` (netbootd, imgbuild) cargo built beside the test executable.
pub fn workspace_binary(test_exe: &Path, name: &str) -> Result<PathBuf> {
    let binary = test_exe
        .parent()
        .and_then(Path::parent)
        .context("test executable has no target/<profile>/deps parent")?
        .join(name);
    ensure!(
        binary.is_file(),
        "no {name} at {} (cargo build --workspace)",
        binary.display()
    );
    Ok(binary)
}

/// Whether VM tests should run: LECTERN_IMAGE_TESTS=1 (they take minutes). Panics if asked for but
/// impossible here, so CI cannot pass by skipping.
pub fn vm_tests_enabled() -> bool {
    if std::env::var("LECTERN_IMAGE_TESTS").as_deref() != Ok("1") {
        eprintln!("skipping: VM boots take minutes; set LECTERN_IMAGE_TESTS=1 to run them");
        return false;
    }
    if let Some(reason) = unavailable() {
        panic!("LECTERN_IMAGE_TESTS=1 but the VM lab cannot run: {reason}");
    }
    true
}

/// The store VM tests build into: LECTERN_TEST_STORE if set, else `lectern-test-store` in `target_tmpdir`
/// (pass `env!("CARGO_TARGET_TMPDIR")`). Either way it persists, so the tests share layers and reruns are
/// quick; unchanged layers are never rebuilt.
pub fn test_store_dir(target_tmpdir: &str) -> PathBuf {
    std::env::var_os("LECTERN_TEST_STORE").map_or_else(
        || Path::new(target_tmpdir).join("lectern-test-store"),
        PathBuf::from,
    )
}
