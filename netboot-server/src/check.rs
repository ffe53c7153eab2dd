//! `netbootd check`: what would break a boot, found without touching the network.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use std::path::{Path, PathBuf};

use crate::plan_policy::{self, PlanPolicy};
use crate::policy::{BIOS_IPXE, BootPolicy, EFI_X64_IPXE};
use crate::server::ServerConfig;

/// `netbootd check` of the master file at `master`: every problem found (and what is missing from
/// the store for some host), and how many hosts it netboots.
pub fn check_master(
    master: &Path,
    state_dir: PathBuf,
    tftp_root: PathBuf,
) -> anyhow::Result<(Vec<String>, usize)> {
    let (plan, store) = plan_policy::load(master)?;
    let config = plan_policy::server_config(&plan, &store, state_dir, tftp_root)?;
    let policy = PlanPolicy::new(&plan, &store);
    let mut problems = check(&config, &policy);
    problems.extend(policy.gaps().iter().cloned());
    Ok((problems, policy.hosts().len()))
}

fn same_subnet(a: Ipv4Addr, b: Ipv4Addr, netmask: Ipv4Addr) -> bool {
    u32::from(a) & u32::from(netmask) == u32::from(b) & u32::from(netmask)
}

/// Every problem found, one sentence each; empty when all is well.
pub fn check(config: &ServerConfig, policy: &dyn BootPolicy) -> Vec<String> {
    let mut problems = Vec::new();
    for file in [BIOS_IPXE, EFI_X64_IPXE] {
        if !config.tftp_root.join(file).is_file() {
            problems.push(format!(
                "TFTP root {} has no {file} (Debian package ipxe)",
                config.tftp_root.display()
            ));
        }
    }
    if config.https.is_none() {
        problems.push(
            "no TLS key in the store: hosts could neither fetch their secrets nor report (imgbuild makes it with the first image)".to_owned(),
        );
    }
    let netmask = policy.network().netmask;
    let in_subnet = |ip: Ipv4Addr| same_subnet(ip, config.server_ip, netmask);
    if let Some((first, last)) = config.pool {
        if !in_subnet(first) || !in_subnet(last) {
            problems.push(format!(
                "pool {first}-{last} is not in the server's subnet ({}/{netmask})",
                config.server_ip
            ));
        }
        if (first..=last).contains(&config.server_ip) {
            problems.push(format!(
                "pool {first}-{last} contains the server's own address"
            ));
        }
    }
    let mut macs = HashMap::new();
    let mut names = HashMap::new();
    let mut addresses = HashMap::new();
    for host in policy.hosts() {
        let name = &host.hostname;
        if let Some(other) = macs.insert(host.mac, name) {
            problems.push(format!("{name} and {other} share MAC {}", host.mac));
        }
        if let Some(other) = names.insert(name, host.mac) {
            problems.push(format!(
                "host name {name} is used by {other} and {}",
                host.mac
            ));
        }
        if let Some(ip) = host.ip {
            if let Some(other) = addresses.insert(ip, name) {
                problems.push(format!("{name} and {other} both reserve {ip}"));
            }
            if ip == config.server_ip {
                problems.push(format!("{name} reserves the server's own address {ip}"));
            } else if !in_subnet(ip) {
                problems.push(format!(
                    "{name} reserves {ip}, outside the server's subnet ({}/{netmask})",
                    config.server_ip
                ));
            }
        }
        let Some(boot) = policy.boot(host) else {
            problems.push(format!("{name} has no iPXE script: it would boot nothing"));
            continue;
        };
        for hash in boot.artifacts() {
            match policy.artifact(hash) {
                Some(artifact) if artifact.path.is_file() => {}
                Some(artifact) => problems.push(format!(
                    "{name} needs {}, which is missing",
                    artifact.path.display()
                )),
                None => problems.push(format!(
                    "{name} boots artifact {hash}, which the store does not serve"
                )),
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::*;
    use crate::dhcp::Mode;
    use crate::mac::MacAddr;
    use crate::policy::{Host, Network, StaticImage, StaticPolicy};

    fn config(tftp_root: &Path, pool: Option<(Ipv4Addr, Ipv4Addr)>) -> ServerConfig {
        ServerConfig {
            interface: "br0".into(),
            server_ip: Ipv4Addr::new(10, 99, 0, 1),
            mode: Mode::Authoritative,
            pool,
            state_dir: "/var/lib/netbootd".into(),
            tftp_root: tftp_root.into(),
            http_port: 8080,
            operator_address: "127.0.0.1:8081".parse().unwrap(),
            stale_after: Duration::from_secs(90),
            tftp_limits: Default::default(),
            http_limits: Default::default(),
            https: Some(crate::server::Https {
                port: 8443,
                key: lectern_store::ServerKey {
                    pem: String::new(),
                    pin: String::new(),
                },
            }),
        }
    }

    fn host(last: u8, name: &str, ip: Option<Ipv4Addr>) -> Host {
        Host {
            mac: MacAddr([2, 0, 0, 0, 0, last]),
            hostname: name.into(),
            ip,
        }
    }

    fn policy(hosts: Vec<Host>, store: &Path) -> StaticPolicy {
        let network = Network {
            netmask: Ipv4Addr::new(255, 255, 255, 0),
            router: None,
            dns: vec![],
            ntp: vec![],
            domain: None,
            lease_time: Duration::from_secs(3600),
        };
        let image = StaticImage {
            kernel: "k".into(),
            initrds: vec!["i".into()],
            root: None,
            cmdline: String::new(),
        };
        StaticPolicy::new(hosts, network).with_image(image, store.into())
    }

    #[test]
    fn a_sound_setup_has_no_problems() {
        let dir = tempfile::tempdir().unwrap();
        for file in [BIOS_IPXE, EFI_X64_IPXE, "k", "i"] {
            std::fs::write(dir.path().join(file), b"x").unwrap();
        }
        let hosts = vec![
            host(1, "mixer1", Some(Ipv4Addr::new(10, 99, 0, 10))),
            host(2, "encoder1", None),
        ];
        let pool = Some((Ipv4Addr::new(10, 99, 0, 200), Ipv4Addr::new(10, 99, 0, 250)));
        assert_eq!(
            check(&config(dir.path(), pool), &policy(hosts, dir.path())),
            Vec::<String>::new()
        );
    }

    #[test]
    fn reports_clashes_bad_addresses_and_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("k"), b"x").unwrap();
        let hosts = vec![
            host(1, "mixer1", Some(Ipv4Addr::new(10, 99, 0, 10))),
            host(1, "mixer2", Some(Ipv4Addr::new(10, 99, 0, 10))),
            host(3, "mixer1", Some(Ipv4Addr::new(10, 98, 0, 10))),
            host(4, "server", Some(Ipv4Addr::new(10, 99, 0, 1))),
        ];
        let pool = Some((Ipv4Addr::new(10, 99, 0, 1), Ipv4Addr::new(10, 99, 1, 5)));
        let problems = check(&config(dir.path(), pool), &policy(hosts, dir.path())).join("\n");
        for expected in [
            "has no undionly.kpxe",
            "has no snponly.efi",
            "pool 10.99.0.1-10.99.1.5 is not in the server's subnet",
            "contains the server's own address",
            "mixer2 and mixer1 share MAC 02:00:00:00:00:01",
            "mixer2 and mixer1 both reserve 10.99.0.10",
            "host name mixer1 is used by 02:00:00:00:00:01 and 02:00:00:00:00:03",
            "mixer1 reserves 10.98.0.10, outside the server's subnet",
            "server reserves the server's own address 10.99.0.1",
            "mixer1 needs ",
        ] {
            assert!(
                problems.contains(expected),
                "{expected:?} not in:\n{problems}"
            );
        }
    }
}
