//! `netbootd check`: what would break a boot, found without sending a packet, the cause first.
//!
//! Like `kea-dhcp4 -t`, it checks the machine as well as the configuration: the interface exists,
//! is up and holds the server's address ([`crate::interface`]), the iPXE binaries and every file a
//! host would load are there, not empty, and what their names or their Debian package say
//! ([`crate::verify`]). One line per problem: a cause that leaves many hosts without a boot is said
//! once, not once per host.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use crate::interface::{self, Interface};
use crate::listing::some_of;
use crate::plan_policy::{self, Gaps, PlanPolicy};
use crate::policy::{ArtifactKind, BIOS_IPXE, BootPolicy, EFI_X64_IPXE};
use crate::server::ServerConfig;
use crate::verify::{self, Verdicts};

/// The machine as `check` found it: the interface the configuration names (`None`: no such
/// interface), and where dpkg recorded the iPXE binaries' md5s.
pub struct Machine<'a> {
    pub interface: Option<&'a Interface>,
    pub ipxe_md5sums: &'a Path,
}

fn same_subnet(a: Ipv4Addr, b: Ipv4Addr, netmask: Ipv4Addr) -> bool {
    u32::from(a) & u32::from(netmask) == u32::from(b) & u32::from(netmask)
}

/// A file hosts load, what it is to them, and who loads it.
struct Served<'a> {
    what: &'static str,
    hosts: Vec<&'a str>,
}

/// Every problem found, the causes first, one sentence each; empty when all is well.
pub fn check<'a>(
    config: &ServerConfig,
    policy: &'a dyn BootPolicy,
    gaps: &Gaps,
    machine: &Machine,
    verdicts: &mut Verdicts,
) -> Vec<String> {
    let netmask = policy.network().netmask;
    let mut problems = interface::problems(
        &config.interface,
        machine.interface,
        config.server_ip,
        u32::from(netmask).count_ones() as u8,
        config.mode,
    );
    for file in [BIOS_IPXE, EFI_X64_IPXE] {
        let path = config.tftp_root.join(file);
        if let Some(problem) = verify::firmware_problem(&path, machine.ipxe_md5sums) {
            problems.push(format!(
                "TFTP root {}: {file} {problem} (Debian package ipxe)",
                config.tftp_root.display()
            ));
        }
    }
    problems.extend(gaps.causes.iter().cloned());
    let hosts = policy.hosts();
    // Without images the key is missing too: imgbuild makes it with the first, and says so above.
    let nothing_built = !hosts.is_empty() && gaps.unbootable.len() == hosts.len();
    if config.https.is_none() && !nothing_built {
        problems.push(
            "no TLS key in the store: hosts could neither fetch their secrets nor report (imgbuild makes it with the first image)".to_owned(),
        );
    }
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
    let mut bootless = Vec::new();
    let mut served: BTreeMap<PathBuf, Served> = BTreeMap::new();
    let mut serve = |path: PathBuf, what: &'static str, host: &'a str| {
        let file = served.entry(path).or_insert(Served {
            what,
            hosts: Vec::new(),
        });
        file.hosts.push(host);
    };
    for host in hosts {
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
            if !gaps.unbootable.contains(&host.mac) {
                bootless.push(name.as_str());
            }
            continue;
        };
        for hash in boot.artifacts() {
            match policy.artifact(hash) {
                Some(artifact) => {
                    let what = match artifact.kind {
                        ArtifactKind::Kernel => "kernel",
                        ArtifactKind::Initrd => "initrd",
                        ArtifactKind::Root => "root image",
                        ArtifactKind::Other => "file",
                    };
                    serve(artifact.path, what, name);
                }
                None => problems.push(format!(
                    "{name} boots artifact {hash}, which the store does not serve"
                )),
            }
        }
        if let Some(layer) = policy.host_layer(host) {
            serve(layer, "host layer", name);
        }
        if let Some(secrets) = policy.host_secrets(host) {
            serve(secrets, "secrets", name);
        }
    }
    match bootless.as_slice() {
        [] => {}
        [one] => problems.push(format!("{one} has no iPXE script: it would boot nothing")),
        many => problems.push(format!(
            "{} hosts have no iPXE script: they would boot nothing ({})",
            many.len(),
            some_of(many, 3)
        )),
    }
    for (path, file) in &served {
        if let Some(problem) = verify::store_file_problem(path, verdicts) {
            let whose = match file.hosts.as_slice() {
                [one] => format!("{one}'s {}", file.what),
                [first, other] => format!("the {} of {first} and {other}", file.what),
                [first, rest @ ..] => {
                    format!(
                        "the {} of {first} and {} other hosts",
                        file.what,
                        rest.len()
                    )
                }
                [] => unreachable!("a served file has a host"),
            };
            problems.push(format!("{} ({whose}) {problem}", path.display()));
        }
    }
    problems
}

/// What `netbootd check` says.
#[derive(Debug)]
pub struct Report {
    pub problems: Vec<String>,
    /// What was found sound, for the `ok` line.
    pub summary: String,
    /// Why the hashes could not be kept for the next check, if they could not.
    pub unkept: Option<String>,
}

/// `netbootd check` of the master file at `master` and the store it names (or `store`), as
/// [`run`] checks it.
pub fn check_master(
    master: &Path,
    store: Option<&Path>,
    state_dir: PathBuf,
    tftp_root: PathBuf,
    rehash: bool,
) -> anyhow::Result<Report> {
    let (plan, store) = plan_policy::load(master, store)?;
    let config = plan_policy::server_config(&plan, &store, state_dir, tftp_root)?;
    let policy = PlanPolicy::new(&plan, &store);
    Ok(run(&config, &policy, policy.gaps(), rehash))
}

/// `netbootd check` on this machine: its interface, dpkg's record of the iPXE binaries, and the
/// hashes kept in the state directory (hashed again with `rehash`, and kept for the next check).
pub fn run(config: &ServerConfig, policy: &dyn BootPolicy, gaps: &Gaps, rehash: bool) -> Report {
    let found = interface::lookup(&config.interface);
    let machine = Machine {
        interface: found.as_ref().ok().and_then(Option::as_ref),
        ipxe_md5sums: Path::new(verify::IPXE_MD5SUMS),
    };
    let mut verdicts = Verdicts::load(&config.state_dir, rehash);
    let mut problems = check(config, policy, gaps, &machine, &mut verdicts);
    if let Err(err) = &found {
        problems.insert(0, format!("cannot list this machine's interfaces: {err}"));
    }
    let unkept = (verdicts.save().err()).map(|err| format!("{}: {err}", verdicts.file().display()));
    let files = verdicts.hashed_files + verdicts.reused_files;
    let gib = (verdicts.hashed_bytes + verdicts.reused_bytes) as f64 / f64::from(1 << 30);
    let summary = format!(
        "{} netbooted hosts; {} holds {}; {files} store files match their sha256 ({gib:.2} GiB: {} hashed now, {} unchanged since hashed)",
        policy.hosts().len(),
        config.interface,
        config.server_ip,
        verdicts.hashed_files,
        verdicts.reused_files,
    );
    Report {
        problems,
        summary,
        unkept,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::*;
    use crate::dhcp::Mode;
    use crate::mac::MacAddr;
    use crate::policy::{Host, Network, StaticImage, StaticPolicy};
    use lectern_store::Digest;

    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);

    fn config(dir: &Path, pool: Option<(Ipv4Addr, Ipv4Addr)>) -> ServerConfig {
        ServerConfig {
            interface: "br0".into(),
            server_ip: SERVER,
            mode: Mode::Authoritative,
            pool,
            state_dir: dir.join("state"),
            tftp_root: dir.into(),
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

    fn network() -> Network {
        Network {
            netmask: Ipv4Addr::new(255, 255, 255, 0),
            router: None,
            dns: vec![],
            ntp: vec![],
            domain: None,
            lease_time: Duration::from_secs(3600),
        }
    }

    fn policy(hosts: Vec<Host>, store: &Path, kernel: &str) -> StaticPolicy {
        let image = StaticImage {
            kernel: kernel.into(),
            initrds: vec!["i".into()],
            root: None,
            cmdline: String::new(),
        };
        StaticPolicy::new(hosts, network()).with_image(image, store.into())
    }

    /// `br0` up, holding the server's address, and no dpkg record of the iPXE binaries.
    fn checked(config: &ServerConfig, policy: &dyn BootPolicy, gaps: &Gaps) -> Vec<String> {
        let br0 = Interface {
            up: true,
            addresses: vec![(SERVER, 24)],
        };
        let machine = Machine {
            interface: Some(&br0),
            ipxe_md5sums: Path::new("/nonexistent/ipxe.md5sums"),
        };
        let mut verdicts = Verdicts::load(&config.state_dir, false);
        check(config, policy, gaps, &machine, &mut verdicts)
    }

    #[test]
    fn a_sound_setup_has_no_problems() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = Digest::of_bytes(b"kernel");
        std::fs::write(dir.path().join(kernel.as_str()), b"kernel").unwrap();
        for file in [BIOS_IPXE, EFI_X64_IPXE, "i"] {
            std::fs::write(dir.path().join(file), b"x").unwrap();
        }
        let hosts = vec![
            host(1, "mixer1", Some(Ipv4Addr::new(10, 99, 0, 10))),
            host(2, "encoder1", None),
        ];
        let pool = Some((Ipv4Addr::new(10, 99, 0, 200), Ipv4Addr::new(10, 99, 0, 250)));
        let policy = policy(hosts, dir.path(), kernel.as_str());
        let config = config(dir.path(), pool);
        assert_eq!(
            checked(&config, &policy, &Gaps::default()),
            Vec::<String>::new()
        );
    }

    #[test]
    fn reports_clashes_bad_addresses_and_missing_or_damaged_files() {
        let dir = tempfile::tempdir().unwrap();
        // Stored under the hash of what it was, holding something else.
        let kernel = Digest::of_bytes(b"kernel");
        std::fs::write(dir.path().join(kernel.as_str()), b"kernel, damaged").unwrap();
        std::fs::write(dir.path().join(EFI_X64_IPXE), b"").unwrap();
        let hosts = vec![
            host(1, "mixer1", Some(Ipv4Addr::new(10, 99, 0, 10))),
            host(1, "mixer2", Some(Ipv4Addr::new(10, 99, 0, 10))),
            host(3, "mixer1", Some(Ipv4Addr::new(10, 98, 0, 10))),
            host(4, "server", Some(SERVER)),
        ];
        let pool = Some((SERVER, Ipv4Addr::new(10, 99, 1, 5)));
        let policy = policy(hosts, dir.path(), kernel.as_str());
        let config = config(dir.path(), pool);
        let problems = checked(&config, &policy, &Gaps::default());
        let root = dir.path().display();
        let damaged = Digest::of_bytes(b"kernel, damaged");
        assert_eq!(
            problems,
            [
                format!("TFTP root {root}: undionly.kpxe is missing (Debian package ipxe)"),
                format!("TFTP root {root}: snponly.efi is empty (Debian package ipxe)"),
                "pool 10.99.0.1-10.99.1.5 is not in the server's subnet (10.99.0.1/255.255.255.0)"
                    .into(),
                "pool 10.99.0.1-10.99.1.5 contains the server's own address".into(),
                "mixer2 and mixer1 share MAC 02:00:00:00:00:01".into(),
                "mixer2 and mixer1 both reserve 10.99.0.10".into(),
                "host name mixer1 is used by 02:00:00:00:00:01 and 02:00:00:00:00:03".into(),
                "mixer1 reserves 10.98.0.10, outside the server's subnet (10.99.0.1/255.255.255.0)"
                    .into(),
                "server reserves the server's own address 10.99.0.1".into(),
                format!(
                    "{root}/{kernel} (the kernel of mixer1 and 3 other hosts) is damaged: its content hashes to {}…, not to its name (delete it; imgbuild all builds it again)",
                    damaged.short()
                ),
                format!(
                    "{root}/i (the initrd of mixer1 and 3 other hosts) is missing (imgbuild all builds it again)"
                ),
            ]
        );
    }

    #[test]
    fn a_cause_the_policy_names_is_said_once_not_once_per_host() {
        let dir = tempfile::tempdir().unwrap();
        for file in [BIOS_IPXE, EFI_X64_IPXE] {
            std::fs::write(dir.path().join(file), b"x").unwrap();
        }
        let hosts: Vec<Host> = (1..=5)
            .map(|i| host(i, &format!("mixer{i}"), None))
            .collect();
        let imageless = StaticPolicy::new(hosts.clone(), network());
        let mut config = config(dir.path(), None);
        config.https = None;
        // Nothing explains why they boot nothing: one line names them.
        assert_eq!(
            checked(&config, &imageless, &Gaps::default()),
            [
                "no TLS key in the store: hosts could neither fetch their secrets nor report (imgbuild makes it with the first image)",
                "5 hosts have no iPXE script: they would boot nothing (mixer1, mixer2, mixer3 and 2 more)",
            ]
        );
        // The policy's cause covers them, and the key that comes with the first image.
        let gaps = Gaps {
            causes: vec!["the store has no images yet (run: imgbuild all)".into()],
            unbootable: hosts.iter().map(|h| h.mac).collect(),
        };
        assert_eq!(
            checked(&config, &imageless, &gaps),
            ["the store has no images yet (run: imgbuild all)"]
        );
    }

    #[test]
    fn the_interface_comes_first() {
        let dir = tempfile::tempdir().unwrap();
        let policy = StaticPolicy::new(vec![], network());
        let config = config(dir.path(), None);
        let machine = Machine {
            interface: None,
            ipxe_md5sums: Path::new("/nonexistent/ipxe.md5sums"),
        };
        let mut verdicts = Verdicts::load(&config.state_dir, false);
        let problems = check(&config, &policy, &Gaps::default(), &machine, &mut verdicts);
        assert!(
            problems[0].starts_with("interface br0 does not exist here")
                && problems[1].contains("undionly.kpxe is missing"),
            "{problems:#?}"
        );
    }
}
