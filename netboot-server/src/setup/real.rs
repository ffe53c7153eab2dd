//! [`System`] on this box: sysfs and procfs for what is, systemctl, networkctl and imgbuild for
//! what changes.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use lectern_store::Store;

use super::render::StoreSnapshot;
use super::{Interface, Paths, System, UnitState};
use crate::dhcp::probe::{self, Offer};
use crate::mac::MacAddr;
use crate::vms::{self, VmSpec};

/// This box. `imgbuild` is the image builder to run (the one installed beside netbootd).
pub struct Real {
    pub imgbuild: PathBuf,
}

impl Real {
    /// With the imgbuild beside this netbootd, else the one on the PATH.
    pub fn beside_this_program() -> Real {
        let beside = std::env::current_exe()
            .ok()
            .map(|exe| exe.with_file_name("imgbuild"))
            .filter(|path| path.is_file());
        Real {
            imgbuild: beside.unwrap_or_else(|| "imgbuild".into()),
        }
    }
}

fn sysfs(interface: &str, file: &str) -> Option<String> {
    let path = Path::new("/sys/class/net").join(interface).join(file);
    Some(std::fs::read_to_string(path).ok()?.trim().to_owned())
}

/// Runs `program` with `args`; its output in the error when it fails.
fn run(program: &str, args: &[&str]) -> Result<String> {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {program}"))?;
    if !output.status.success() {
        bail!(
            "{program} {} failed ({}): {}{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stdout).trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The IPv4 addresses of every interface, by interface name.
fn ipv4_addresses() -> Vec<(String, Ipv4Addr, u8)> {
    let mut found = Vec::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a list we free below with freeifaddrs; every pointer read is
    // checked for null and points into that list while it lives.
    unsafe {
        if libc::getifaddrs(&mut list) != 0 {
            return found;
        }
        let mut entry = list;
        while !entry.is_null() {
            let ifa = &*entry;
            entry = ifa.ifa_next;
            if ifa.ifa_addr.is_null() || i32::from((*ifa.ifa_addr).sa_family) != libc::AF_INET {
                continue;
            }
            let address = &*(ifa.ifa_addr as *const libc::sockaddr_in);
            let prefix = if ifa.ifa_netmask.is_null() {
                32
            } else {
                let mask = &*(ifa.ifa_netmask as *const libc::sockaddr_in);
                u32::from_be(mask.sin_addr.s_addr).count_ones() as u8
            };
            let name = std::ffi::CStr::from_ptr(ifa.ifa_name)
                .to_string_lossy()
                .into_owned();
            found.push((
                name,
                Ipv4Addr::from(u32::from_be(address.sin_addr.s_addr)),
                prefix,
            ));
        }
        libc::freeifaddrs(list);
    }
    found
}

/// Socket inodes of UDP sockets bound to local port 67 (/proc/net/udp).
fn dhcp_server_sockets() -> HashSet<String> {
    let table = std::fs::read_to_string("/proc/net/udp").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let port = fields.get(1)?.rsplit(':').next()?;
            (u16::from_str_radix(port, 16).ok()? == crate::dhcp::SERVER_PORT)
                .then(|| fields.get(9).map(|inode| inode.to_string()))?
        })
        .collect()
}

impl System for Real {
    fn is_root(&self) -> bool {
        // SAFETY: geteuid only reads the process's credentials.
        unsafe { libc::geteuid() == 0 }
    }

    fn systemd_running(&self) -> bool {
        Path::new("/run/systemd/system").is_dir()
    }

    fn interface(&self, name: &str) -> Option<Interface> {
        if name.is_empty() || name.contains('/') {
            return None;
        }
        let mac = sysfs(name, "address")?.parse::<MacAddr>().ok()?;
        let flags = sysfs(name, "flags")?;
        let flags = u32::from_str_radix(flags.trim_start_matches("0x"), 16).unwrap_or(0);
        let addresses = ipv4_addresses()
            .into_iter()
            .filter(|(interface, ..)| interface == name)
            .map(|(_, address, prefix)| (address, prefix))
            .collect();
        Some(Interface {
            mac,
            is_bridge: Path::new("/sys/class/net")
                .join(name)
                .join("bridge")
                .is_dir(),
            up: flags & libc::IFF_UP as u32 != 0,
            // Reading `carrier` of a link that is down fails: no carrier.
            carrier: sysfs(name, "carrier").as_deref() == Some("1"),
            addresses,
        })
    }

    fn interface_names(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir("/sys/class/net")
            .map(|entries| {
                entries
                    .flatten()
                    .map(|entry| entry.file_name().to_string_lossy().into_owned())
                    .filter(|name| name != "lo")
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    fn set_link_up(&mut self, name: &str, up: bool) -> Result<()> {
        run(
            "ip",
            &["link", "set", "dev", name, if up { "up" } else { "down" }],
        )
        .map(drop)
    }

    fn probe_dhcp(
        &mut self,
        interface: &str,
        mac: MacAddr,
        listen: Duration,
    ) -> Result<Vec<Offer>> {
        Ok(probe::probe(interface, mac, listen)?)
    }

    fn dhcp_servers_here(&self) -> Vec<String> {
        let sockets = dhcp_server_sockets();
        if sockets.is_empty() {
            return Vec::new();
        }
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let holds = std::fs::read_dir(entry.path().join("fd"))
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|fd| std::fs::read_link(fd.path()).ok())
                .any(|target| {
                    let target = target.to_string_lossy();
                    target
                        .strip_prefix("socket:[")
                        .and_then(|rest| rest.strip_suffix(']'))
                        .is_some_and(|inode| sockets.contains(inode))
                });
            if holds {
                let name = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
                found.push(format!("{} (pid {pid})", name.trim()));
            }
        }
        found
    }

    fn user_id(&self, user: &str) -> Option<u32> {
        let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
        passwd.lines().find_map(|line| {
            let mut fields = line.split(':');
            (fields.next()? == user).then(|| fields.nth(1)?.parse().ok())?
        })
    }

    fn owner(&self, path: &Path) -> Option<u32> {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).ok().map(|meta| meta.uid())
    }

    fn readable_as(&self, user: &str, path: &Path) -> bool {
        Command::new("runuser")
            .args(["-u", user, "--", "test", "-r"])
            .arg(path)
            .stdin(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    }

    fn create_owned_dir(&mut self, path: &Path, uid: u32) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir(path).with_context(|| format!("creating {}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o750))?;
        // SAFETY: getpwuid reads the user database; its result is only read here.
        let gid = unsafe { libc::getpwuid(uid).as_ref().map(|user| user.pw_gid) };
        std::os::unix::fs::chown(path, Some(uid), gid)
            .with_context(|| format!("giving {} to uid {uid}", path.display()))
    }

    fn unit(&self, unit: &str) -> UnitState {
        let shown = run(
            "systemctl",
            &[
                "show",
                "--property=LoadState,UnitFileState,ActiveState",
                unit,
            ],
        )
        .unwrap_or_default();
        let property = |name: &str| {
            shown
                .lines()
                .find_map(|line| line.strip_prefix(&format!("{name}=")))
                .unwrap_or_default()
                .to_owned()
        };
        UnitState {
            installed: property("LoadState") == "loaded",
            enabled: property("UnitFileState") == "enabled",
            active: ["active", "reloading", "activating"]
                .contains(&property("ActiveState").as_str()),
        }
    }

    fn systemctl(&mut self, args: &[&str]) -> Result<()> {
        run("systemctl", args).map(drop)
    }

    fn networkctl(&mut self, args: &[&str]) -> Result<()> {
        run("networkctl", args).map(drop)
    }

    fn build_images(&mut self, master: &Path, log_path: &Path) -> Result<()> {
        let log = std::fs::File::create(log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let status = Command::new(&self.imgbuild)
            .arg("--config")
            .arg(master)
            .arg("all")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .status()
            .with_context(|| format!("running {}", self.imgbuild.display()))?;
        if !status.success() {
            let text = std::fs::read_to_string(log_path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            bail!(
                "imgbuild all failed ({status}); the images netbootd serves are as they were. The end of {}:\n{}",
                log_path.display(),
                lines[lines.len().saturating_sub(25)..].join("\n")
            );
        }
        Ok(())
    }

    fn store_snapshot(&self, store: &Path) -> StoreSnapshot {
        let Ok(store) = Store::open(store) else {
            return StoreSnapshot::default();
        };
        let images = (store.roles().unwrap_or_default().into_iter())
            .filter_map(|role| {
                let image = store.latest_manifest(&role).ok()??.image;
                Some((role, image.to_string()))
            })
            .collect();
        let layers = (store.hosts().unwrap_or_default().into_iter())
            .filter_map(|host| {
                let layer = store.host_layer(&host).ok()??;
                let secrets = layer.secrets.map(|blob| blob.sha256.to_string());
                Some((
                    host,
                    format!("{} {}", layer.blob.sha256, secrets.unwrap_or_default()),
                ))
            })
            .collect();
        StoreSnapshot { images, layers }
    }

    fn netbootd_check(&self, master: &Path, paths: &Paths) -> Result<Vec<String>> {
        Ok(crate::check::check_master(master, paths.state_dir.clone(), paths.tftp_root.clone())?.0)
    }

    fn answers(&self, address: SocketAddr) -> bool {
        std::net::TcpStream::connect_timeout(&address, Duration::from_secs(1)).is_ok()
    }

    fn running_vms(&self, paths: &Paths) -> Result<Vec<VmSpec>> {
        vms::running_vms(&paths.state_dir.join("vms"))
    }

    fn sleep(&self, duration: Duration) {
        std::thread::sleep(duration);
    }
}
