//! Fresh Debian systems for the package's tests: lectern's package (`LECTERN_DEB`, else built from this
//! checkout), a root made by mmdebstrap from the recipes' suite and mirror with Debian's packages cached
//! between runs, and [`SystemContainer`]: such a root booted with systemd (systemd-nspawn) in a network
//! namespace of its own, its one interface on a [`Lab`]'s bridge, playing the production box.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use lectern_builder::recipe::Recipes;

use crate::{Lab, repo};

/// `LECTERN_DEB` (scripts/test.sh builds the package once for the suite), else the package built from
/// this checkout, once per test binary, into `target_tmpdir` (cargo's dev profile, in a target directory
/// of its own: the one the tests run from is locked by cargo while they run).
pub fn lectern_deb(target_tmpdir: &Path) -> Result<PathBuf> {
    if let Some(deb) = std::env::var_os("LECTERN_DEB") {
        return Ok(deb.into());
    }
    // scripts/package.sh builds in the checkout's debian/: one build at a time.
    static BUILT: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut built = BUILT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(deb) = &*built {
        return Ok(deb.clone());
    }
    let output = Command::new(repo().join("scripts/package.sh"))
        .arg(target_tmpdir.join("deb"))
        .env(
            "CARGO_TARGET_DIR",
            target_tmpdir.join("debian-package-target"),
        )
        .env("DEB_BUILD_OPTIONS", "noopt nostrip noddebs")
        .output()?;
    ensure!(
        output.status.success(),
        "scripts/package.sh failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let deb = PathBuf::from(String::from_utf8(output.stdout)?.trim());
    *built = Some(deb.clone());
    Ok(deb)
}

/// An empty directory at `path` for one test's files. What an interrupted run left there goes first,
/// the file systems it left mounted in a Debian root (/proc, /sys, /dev/pts) included: removing files
/// under a mount point fails, and mmdebstrap refuses a root that is not empty.
pub fn fresh_dir(path: &Path) -> Result<()> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
    // Deepest first, lazily: a mount inside another must go before it.
    let mut stale: Vec<&str> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .filter(|point| Path::new(point).starts_with(path))
        .collect();
    stale.sort_by_key(|point| std::cmp::Reverse(point.len()));
    for point in stale {
        run(Command::new("umount").args(["--lazy", point]))?;
    }
    match fs::remove_dir_all(path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            return Err(error).with_context(|| format!("removing {}", path.display()));
        }
        _ => {}
    }
    fs::create_dir_all(path)?;
    Ok(())
}

/// Runs `command`; its output in the error when it fails.
pub fn run(command: &mut Command) -> Result<()> {
    let output = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    ensure!(
        output.status.success(),
        "{command:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// mmdebstrap (`--variant=apt`, as root) of the recipes' suite and mirror into `root`, its downloaded
/// packages kept between runs in `$LECTERN_CACHE/<cache>` (beside imgbuild's cache, not in it; a cache
/// per test, read in at the start and written back at the end, so that tests run side by side).
/// `hooks` are more `--customize-hook`s, run before the cache is saved. apt's lists and the packages
/// downloaded stay in the root, as on an installed system: apt installs from them there without a
/// mirror.
pub fn debian_root(root: &Path, cache: &str, include: &[&str], hooks: &[String]) -> Result<()> {
    let cache =
        Path::new(&std::env::var("LECTERN_CACHE").unwrap_or_else(|_| "/var/cache/lectern".into()))
            .join(cache);
    fs::create_dir_all(&cache)?;
    let cache = cache.to_str().context("cache path is not UTF-8")?;
    let debian = Recipes::load(&repo().join("recipes"), &repo().join("overlays"))?.debian;
    let mut command = Command::new("mmdebstrap");
    command
        .args(["--variant=apt", "--mode=root", "--quiet", "--skip=cleanup/apt"])
        .arg("--hook-dir=/usr/share/mmdebstrap/hooks/eatmydata")
        .arg("--setup-hook=mkdir -p \"$1\"/var/cache/apt/archives")
        .arg(format!("--setup-hook=sync-in {cache} /var/cache/apt/archives/"))
        .arg("--essential-hook=echo 'Binary::apt::APT::Keep-Downloaded-Packages \"true\";' > \"$1\"/etc/apt/apt.conf.d/keep-cache");
    if !include.is_empty() {
        command.arg(format!("--include={}", include.join(",")));
    }
    command
        .args(hooks.iter().map(|hook| format!("--customize-hook={hook}")))
        // Debian's packages only: lectern's own, which apt copies there too, changes every commit.
        .arg("--customize-hook=rm -f \"$1\"/var/cache/apt/archives/lectern_*.deb")
        .arg(format!(
            "--customize-hook=sync-out /var/cache/apt/archives {cache}"
        ))
        .arg("--customize-hook=rm \"$1\"/etc/apt/apt.conf.d/keep-cache")
        .arg(&debian.suite)
        .arg(root)
        .arg(&debian.mirror);
    run(&mut command)
}

/// A `--customize-hook` copying `from` (a host path) to `to` inside the root.
pub fn copy_in(from: &Path, to: &str) -> Result<String> {
    let from = from.to_str().context("path is not UTF-8")?;
    Ok(format!("cp {from} \"$1\"{to}"))
}

/// What a booted Debian needs beside apt: systemd as init, D-Bus for systemctl's peers, iproute2.
pub const BOOTABLE: &[&str] = &["systemd", "systemd-sysv", "dbus", "iproute2"];

/// A network namespace of the test's, removed when dropped.
struct Namespace(String);

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = crate::ip(&["netns", "del", &self.0]);
    }
}

/// A Debian root booted with systemd in a container (systemd-nspawn): its own network namespace, whose
/// one link, `interface`, is a veth whose peer joins the lab's bridge. Stopped (halted, then killed) and
/// its namespace removed when dropped.
pub struct SystemContainer {
    nspawn: Child,
    /// The container's init (systemd), whose namespaces commands enter.
    init: u32,
    log: PathBuf,
    netns: Namespace,
}

impl SystemContainer {
    /// Boots `root` with `lab`'s bridge reachable through `interface` (left down, as a new box's
    /// second NIC is); `overlays` are nspawn `--overlay=` values (`LOWER:UPPER:PATH_INSIDE`). Waits
    /// until systemd has finished booting. Without machined (`--register=no --keep-unit`): the
    /// host need not run systemd.
    pub fn boot(root: &Path, lab: &Lab, interface: &str, overlays: &[String]) -> Result<Self> {
        let netns = Namespace(format!("{}-box", lab.netns()));
        crate::ip(&["netns", "add", &netns.0])?;
        let ns = netns.0.as_str();
        let switch_port = format!("{interface}-sw");
        crate::ip(&["-n", ns, "link", "set", "lo", "up"])?;
        crate::ip(&[
            "-n",
            lab.netns(),
            "link",
            "add",
            &switch_port,
            "type",
            "veth",
            "peer",
            "name",
            interface,
            "netns",
            ns,
        ])?;
        crate::ip(&[
            "-n",
            lab.netns(),
            "link",
            "set",
            &switch_port,
            "master",
            lab.bridge(),
            "up",
        ])?;
        let log = root.with_extension("console.log");
        let console = fs::File::create(&log)?;
        let nspawn = Command::new("systemd-nspawn")
            .arg("--directory")
            .arg(root)
            .arg(format!("--machine={ns}"))
            .args(["--boot", "--register=no", "--keep-unit", "--console=pipe"])
            .args(["--resolv-conf=off", "--timezone=off"])
            // The box configures its own network (systemd-networkd needs CAP_NET_ADMIN, which nspawn
            // keeps only for networks of its own making).
            .arg("--capability=CAP_NET_ADMIN")
            .arg(format!("--network-namespace-path=/run/netns/{ns}"))
            .args(
                overlays
                    .iter()
                    .map(|overlay| format!("--overlay={overlay}")),
            )
            .stdin(Stdio::null())
            .stdout(console.try_clone()?)
            .stderr(console)
            .spawn()
            .context("starting systemd-nspawn (apt-get install systemd-container)")?;
        let mut container = SystemContainer {
            nspawn,
            init: 0,
            log,
            netns,
        };
        container.init = container.wait_for_init()?;
        // systemctl answers once systemd has its socket; then --wait waits for the boot to end.
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let booted = container.sh("systemctl is-system-running --wait")?;
            let state = String::from_utf8_lossy(&booted.stdout).trim().to_owned();
            if state == "running" || state == "degraded" {
                return Ok(container);
            }
            ensure!(
                Instant::now() < deadline,
                "the container did not boot ({state:?}: {}); its console:\n{}",
                String::from_utf8_lossy(&booted.stderr).trim(),
                container.console()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// The container's systemd: the child of systemd-nspawn that runs /usr/lib/systemd/systemd.
    fn wait_for_init(&mut self) -> Result<u32> {
        let nspawn = self.nspawn.id();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let children = fs::read_to_string(format!("/proc/{nspawn}/task/{nspawn}/children"))
                .unwrap_or_default();
            for child in children.split_whitespace() {
                let exe = fs::read_link(format!("/proc/{child}/exe")).unwrap_or_default();
                if exe.ends_with("systemd/systemd") {
                    return child.parse().context("a pid");
                }
            }
            if let Some(status) = self.nspawn.try_wait()? {
                bail!(
                    "systemd-nspawn exited ({status}): {}",
                    fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "no systemd in the container after 60 s; see {}",
            self.log.display()
        )
    }

    /// The container's network namespace: the production box's LAN side, for commands from the host
    /// (`ip netns exec NAME curl …` reaches its loopback).
    pub fn netns(&self) -> &str {
        &self.netns.0
    }

    /// Runs `script` with `sh -e` inside the container as root, as an administrator's shell would (its
    /// environment a login's, not the test's).
    pub fn sh(&self, script: &str) -> Result<Output> {
        let init = self.init.to_string();
        Command::new("nsenter")
            .args([
                "--target", &init, "--mount", "--uts", "--ipc", "--net", "--pid", "--",
            ])
            .args(["sh", "-ec", script])
            .env_clear()
            .envs([
                (
                    "PATH",
                    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                ),
                ("HOME", "/root"),
                ("LANG", "C.UTF-8"),
                ("TERM", "dumb"),
            ])
            .stdin(Stdio::null())
            .output()
            .context("running nsenter")
    }

    /// [`SystemContainer::sh`], failing unless the script succeeds; its stdout.
    pub fn must(&self, script: &str) -> Result<String> {
        let output = self.sh(script)?;
        ensure!(
            output.status.success(),
            "in the container, {script:?} failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// The container's console so far (systemd's boot messages).
    pub fn console(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for SystemContainer {
    fn drop(&mut self) {
        // SIGTERM asks systemd-nspawn to halt the container (its services stop as on a shutdown).
        // SAFETY: kill only sends a signal to our own child.
        unsafe { libc::kill(self.nspawn.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !matches!(self.nspawn.try_wait(), Ok(Some(_))) {
            if Instant::now() > deadline {
                let console = self.console();
                let lines: Vec<&str> = console.lines().collect();
                eprintln!(
                    "the container did not halt within 60 s; the end of its console:\n{}",
                    lines[lines.len().saturating_sub(20)..].join("\n")
                );
                let _ = self.nspawn.kill();
                let _ = self.nspawn.wait();
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}
