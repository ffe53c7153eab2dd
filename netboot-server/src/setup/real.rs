//! [`System`] on this box: sysfs and procfs for what is, systemctl, networkctl and imgbuild for
//! what changes.

use std::collections::HashSet;
use std::net::SocketAddr;
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

/// `ip -json -details addr show` of `interface`, or of every interface: netlink's view of this
/// network namespace (a container's /sys may show its host's).
fn ip_links(interface: Option<&str>) -> Vec<serde_json::Value> {
    let mut args = vec!["-json", "-details", "addr", "show"];
    if let Some(interface) = interface {
        args.extend(["dev", interface]);
    }
    let shown = Command::new("ip")
        .args(&args)
        .stderr(Stdio::null())
        .output();
    shown
        .ok()
        .filter(|output| output.status.success())
        .and_then(|output| serde_json::from_slice(&output.stdout).ok())
        .unwrap_or_default()
}

/// An interface as `ip -json -details addr show` describes it.
fn interface_from(link: &serde_json::Value) -> Option<Interface> {
    let flags: Vec<&str> = (link["flags"].as_array()?.iter())
        .filter_map(|flag| flag.as_str())
        .collect();
    let addresses = (link["addr_info"].as_array().into_iter().flatten())
        .filter(|address| address["family"] == "inet")
        .filter_map(|address| {
            let ip = address["local"].as_str()?.parse().ok()?;
            Some((ip, u8::try_from(address["prefixlen"].as_u64()?).ok()?))
        })
        .collect();
    Some(Interface {
        mac: link["address"].as_str()?.parse().ok()?,
        is_bridge: link["linkinfo"]["info_kind"] == "bridge",
        up: flags.contains(&"UP"),
        carrier: flags.contains(&"LOWER_UP"),
        addresses,
    })
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
        let links = ip_links(Some(name));
        let link = links.iter().find(|link| link["ifname"] == name)?;
        interface_from(link)
    }

    fn interface_names(&self) -> Vec<String> {
        let mut names: Vec<String> = (ip_links(None).iter())
            .filter_map(|link| link["ifname"].as_str().map(str::to_owned))
            .filter(|name| name != "lo")
            .collect();
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
        let report = crate::check::check_master(
            master,
            None,
            paths.state_dir.clone(),
            paths.tftp_root.clone(),
            false,
        )?;
        Ok(report.problems)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_an_interface_as_ip_shows_it() {
        let shown: serde_json::Value = serde_json::from_str(
            r#"[{"ifindex":4,"ifname":"br0","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],
                "operstate":"UP","address":"52:54:00:aa:00:01","linkinfo":{"info_kind":"bridge"},
                "addr_info":[{"family":"inet","local":"10.99.0.1","prefixlen":24},
                             {"family":"inet6","local":"fe80::1","prefixlen":64}]},
               {"ifindex":5,"ifname":"lan0","flags":["BROADCAST","MULTICAST"],
                "address":"52:54:00:aa:00:02","addr_info":[]}]"#,
        )
        .unwrap();
        let bridge = interface_from(&shown[0]).unwrap();
        assert_eq!(
            bridge,
            Interface {
                mac: MacAddr([0x52, 0x54, 0, 0xaa, 0, 1]),
                is_bridge: true,
                up: true,
                carrier: true,
                addresses: vec![("10.99.0.1".parse().unwrap(), 24)],
            }
        );
        let down = interface_from(&shown[1]).unwrap();
        assert_eq!(
            (down.is_bridge, down.up, down.carrier),
            (false, false, false)
        );
        assert!(down.addresses.is_empty());
    }
}
