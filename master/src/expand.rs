//! Semantic checks and expansion of a structurally valid master file into a [`Plan`].
//! Every check reports through the locator so errors carry line, column and field; checking
//! goes on after a problem so that one run shows them all.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::Path;

use ipnet::Ipv4Net;

use crate::diagnostics::{Diagnostics, did_you_mean};
use crate::ffmpeg;
use crate::model::*;
use crate::plan::*;
use crate::secrets::{Secret, Secrets};
use crate::structure::Locator;

/// Where tzdata keeps the zones, on the build host as on the hosts.
const ZONEINFO: &str = "/usr/share/zoneinfo";

/// The secrets file as far as it could be loaded; its problems are reported once, at the
/// first reference that needs it.
pub enum SecretsSource {
    Loaded(Secrets),
    Failed(Diagnostics),
    /// Not read at all: references are checked for form, their values stand unread.
    Unread,
}

pub struct Expander<'l, 'a> {
    locator: &'l Locator<'a>,
    secrets: SecretsSource,
    secrets_path: &'l Path,
    problems: Diagnostics,
    warnings: Diagnostics,
}

/// A host of any kind, where the master file has it, seen through the fields every host has.
struct HostEntry<'m> {
    path: String,
    /// Lives on the video LAN and boots from netbootd.
    on_lan: bool,
    fields: HostFields<'m>,
}

impl<'l, 'a> Expander<'l, 'a> {
    pub fn new(locator: &'l Locator<'a>, secrets: SecretsSource, secrets_path: &'l Path) -> Self {
        Expander {
            locator,
            secrets,
            secrets_path,
            problems: Diagnostics::default(),
            warnings: Diagnostics::default(),
        }
    }

    fn error(&mut self, path: &str, message: impl Into<String>, help: Option<String>) {
        let diagnostic = self.locator.error(path, message, help);
        self.problems.push(diagnostic);
    }

    fn warn(&mut self, path: &str, message: impl Into<String>, help: Option<String>) {
        let diagnostic = self.locator.error(path, message, help).into_warning();
        self.warnings.push(diagnostic);
    }

    fn secret(&mut self, reference: &str, path: &str) -> Option<Secret> {
        match &mut self.secrets {
            SecretsSource::Loaded(secrets) => secrets.resolve(
                reference,
                path,
                self.locator,
                self.secrets_path,
                &mut self.problems,
            ),
            SecretsSource::Failed(problems) => {
                let problems = std::mem::take(problems);
                self.problems.extend(problems);
                None
            }
            SecretsSource::Unread => {
                crate::secrets::reference_name(
                    reference,
                    path,
                    self.locator,
                    self.secrets_path,
                    &mut self.problems,
                )?;
                Some(Secret::unread())
            }
        }
    }

    pub fn expand(mut self, m: &MasterFile, master_dir: &Path) -> Result<Plan, Diagnostics> {
        if m.schema_version != 1 {
            self.error(
                "schema_version",
                format!("schema version {} is not supported", m.schema_version),
                Some("this lectern reads `schema_version = 1`".into()),
            );
        }
        self.name("conference.slug", &m.conference.slug);
        self.name("conference.org", &m.conference.org);
        self.timezone(&m.conference.timezone);
        let network = self.network(&m.network);
        let hosts = self.host_entries(m);
        self.identities(&hosts, network.as_ref().map(|(_, net)| *net), &m.network);
        let rooms = self.rooms(m);
        let netboot = self.netboot_server(m, master_dir);
        // Each room's media settings, key, renditions and mixer inputs are derived once, for the
        // room plan, its hosts and the backend.
        let parts: Vec<RoomParts> = (m.rooms.iter().enumerate())
            .map(|(i, room)| self.room_parts(m, i, room, rooms.get(room.slug.as_str()) == Some(&i)))
            .collect();
        self.ingest(m, &parts);
        let plan_hosts = self.hosts(m, &rooms, &parts);
        let rooms = self.room_plans(m, rooms, &plan_hosts, parts);
        match (network, netboot, self.problems.is_empty()) {
            (Some((network, _)), Some(netboot), true) => Ok(Plan {
                secrets_file: std::path::absolute(self.secrets_path)
                    .unwrap_or_else(|_| self.secrets_path.to_path_buf()),
                conference: m.conference.clone(),
                streaming: StreamingPlan {
                    ingest: m.streaming.ingest,
                    hls_url: m.streaming.hls_url.clone(),
                    watch_url: m.streaming.watch_url.clone(),
                },
                network,
                netboot,
                ssh_authorized_keys: m.ssh.authorized_keys.clone(),
                rooms,
                hosts: plan_hosts,
                warnings: self.warnings.finish().0,
            }),
            _ => Err(self.problems.finish()),
        }
    }

    /// Host names, slugs and such end up in DNS, paths and unit names: keep them plain.
    fn name(&mut self, path: &str, value: &str) -> bool {
        let ok = !value.is_empty()
            && value.len() <= 63
            && value
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !value.starts_with('-')
            && !value.ends_with('-');
        if !ok {
            self.error(
                path,
                format!("\"{value}\" is not a valid name"),
                Some("use 1 to 63 lowercase letters, digits and '-', not starting or ending with '-'".into()),
            );
        }
        ok
    }

    /// Hosts link /etc/localtime to `<zoneinfo>/<zone>`: a zone their tzdata lacks would leave them
    /// on UTC. Checked against this machine's tzdata when it has one.
    fn timezone(&mut self, zone: &str) {
        let zoneinfo = Path::new(ZONEINFO);
        let plain = |part: &str| {
            !part.is_empty()
                && !part.starts_with(['.', '-'])
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_+-".contains(c))
        };
        let looks_iana = zone == "UTC" || (zone.contains('/') && zone.split('/').all(plain));
        let known = !zoneinfo.is_dir() || zoneinfo.join(zone).is_file();
        if looks_iana && known {
            return;
        }
        let area = zone.rsplit_once('/').map(|(area, _)| area);
        let siblings: Vec<String> = (area.filter(|area| area.split('/').all(plain)))
            .and_then(|area| Some((area, std::fs::read_dir(zoneinfo.join(area)).ok()?)))
            .into_iter()
            .flat_map(|(area, entries)| {
                entries.filter_map(move |entry| {
                    Some(format!("{area}/{}", entry.ok()?.file_name().to_str()?))
                })
            })
            .collect();
        let help = match did_you_mean(zone, siblings.iter().map(String::as_str)) {
            Some(guess) => format!("did you mean \"{guess}\"?"),
            None => "write an IANA zone like \"Europe/Brussels\", or \"UTC\" (`timedatectl list-timezones` lists them)".into(),
        };
        self.error(
            "conference.timezone",
            format!("\"{zone}\" is not a known time zone"),
            Some(help),
        );
    }

    fn network(&mut self, n: &Network) -> Option<(NetworkPlan, Ipv4Net)> {
        let net: Ipv4Net = match n.subnet.parse() {
            Ok(net) => net,
            Err(_) => {
                self.error(
                    "network.subnet",
                    format!("\"{}\" is not a subnet in CIDR notation", n.subnet),
                    Some(
                        "write the network address and prefix length, like \"10.42.0.0/24\"".into(),
                    ),
                );
                return None;
            }
        };
        if net.trunc() != net {
            self.error(
                "network.subnet",
                format!("\"{}\" has host bits set", n.subnet),
                Some(format!("did you mean \"{}\"?", net.trunc())),
            );
        }
        let net = net.trunc();
        if !net.contains(&n.gateway) {
            self.error(
                "network.gateway",
                format!("{} is outside the subnet {net}", n.gateway),
                None,
            );
        }
        let lease_secs = self.lease(&n.dhcp.lease);
        if let Some([first, last]) = n.dhcp.range {
            if n.dhcp.mode == DhcpMode::Proxy {
                self.error(
                    "network.dhcp.range",
                    "a dynamic range makes no sense in proxy mode: the venue DHCP gives the addresses",
                    Some("remove `range`, or set mode = \"authoritative\"".into()),
                );
            }
            for (i, end) in [first, last].into_iter().enumerate() {
                if !usable(&net, end) {
                    self.error(
                        &format!("network.dhcp.range[{i}]"),
                        format!("{end} is not a usable host address in {net}"),
                        None,
                    );
                }
            }
            if first > last {
                self.error(
                    "network.dhcp.range",
                    format!("the range starts at {first}, after its end {last}"),
                    Some("write [first, last]".into()),
                );
            }
        }
        if let Err(why) = interface_name(&n.dhcp.interface) {
            self.error(
                "network.dhcp.interface",
                format!(
                    "\"{}\" is not a Linux interface name: {why}",
                    n.dhcp.interface
                ),
                Some("copy it from `ip link`, e.g. \"enp1s0\"".into()),
            );
        }
        if let Err(why) = dns_name(&n.domain) {
            self.error(
                "network.domain",
                format!("\"{}\" is not a DNS domain: {why}", n.domain),
                Some("write labels of letters, digits and '-' joined by dots, like \"video.example.org\"".into()),
            );
        }
        let plan = NetworkPlan {
            domain: n.domain.clone(),
            subnet: net.to_string(),
            prefix_len: net.prefix_len(),
            netmask: net.netmask(),
            gateway: n.gateway,
            dns: n.dns.clone(),
            ntp: if n.ntp.is_empty() {
                vec![n.gateway]
            } else {
                n.ntp.clone()
            },
            dhcp: DhcpPlan {
                mode: n.dhcp.mode,
                interface: n.dhcp.interface.clone(),
                range: n.dhcp.range,
                lease_secs: lease_secs.unwrap_or(0),
            },
        };
        Some((plan, net))
    }

    fn lease(&mut self, text: &str) -> Option<u32> {
        let (number, unit) = text.split_at(
            text.find(|c: char| !c.is_ascii_digit())
                .unwrap_or(text.len()),
        );
        let factor = match unit {
            "s" | "" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86400,
            _ => 0,
        };
        let secs = number
            .parse::<u32>()
            .ok()
            .and_then(|n| n.checked_mul(factor))
            .filter(|s| *s >= 60);
        if secs.is_none() {
            self.error(
                "network.dhcp.lease",
                format!("\"{text}\" is not a lease time of at least a minute"),
                Some("write a number followed by s, m, h or d, like \"6h\"".into()),
            );
        }
        secs
    }

    /// A host's hardware identity: only where netbootd releases secrets, well-formed, and one
    /// machine's UUID and TPM per host.
    fn hardware_identity<'h>(
        &mut self,
        h: &'h HostEntry,
        hardware: &HardwareIdentity,
        seen: &mut HashMap<(&'static str, String), &'h HostEntry<'h>>,
    ) {
        let path = format!("{}.identity", h.path);
        if !h.on_lan {
            self.error(
                &path,
                format!(
                    "{} does not boot from netbootd, which is what checks an identity",
                    h.fields.hostname
                ),
                Some("remove identity".into()),
            );
            return;
        }
        let HardwareIdentity {
            uuid,
            serial,
            asset_tag,
            tpm_ek,
        } = hardware;
        if uuid.is_none() && serial.is_none() && asset_tag.is_none() && tpm_ek.is_none() {
            self.error(
                &path,
                "an identity needs at least one of uuid, serial, asset_tag and tpm_ek",
                None,
            );
        }
        if let Some(name) = tpm_ek {
            if h.fields.placement == Where::LocalVm {
                self.error(
                    &format!("{path}.tpm_ek"),
                    format!(
                        "{} is a local VM: its TPM would be a file on this server, not a key its own machine holds",
                        h.fields.hostname
                    ),
                    Some("bind a local VM by its SMBIOS uuid, which `netbootd vms` gives it".into()),
                );
            } else {
                match normalized_ek_name(name) {
                    None => self.error(
                        &format!("{path}.tpm_ek"),
                        format!("{name:?} is not a TPM key Name: \"000b\" (SHA-256) and 64 hexadecimal digits"),
                        Some("copy the `name:` that `tpm2_readpublic -c ek.ctx` prints".into()),
                    ),
                    Some(name) => self.one_machine_each(h, "tpm_ek", name, seen),
                }
            }
        }
        if let Some(uuid) = uuid {
            match normalized_uuid(uuid) {
                None => self.error(
                    &format!("{path}.uuid"),
                    format!("{uuid:?} is not a UUID (8-4-4-4-12 hexadecimal digits)"),
                    None,
                ),
                Some(uuid) => self.one_machine_each(h, "uuid", uuid, seen),
            }
        }
        for (field, value) in [("serial", serial), ("asset_tag", asset_tag)] {
            let Some(value) = value else { continue };
            let plain = !value.is_empty()
                && value.len() <= 64
                && value.chars().all(|c| c.is_ascii_graphic() || c == ' ')
                && value.trim() == value;
            if !plain {
                self.error(
                    &format!("{path}.{field}"),
                    format!("{value:?} is not an SMBIOS string lectern can compare: 1 to 64 printable ASCII characters, no space at either end"),
                    None,
                );
            }
        }
    }

    /// `value` of the identity's `field` names one machine: the first host that claims it keeps it.
    fn one_machine_each<'h>(
        &mut self,
        h: &'h HostEntry,
        field: &'static str,
        value: String,
        seen: &mut HashMap<(&'static str, String), &'h HostEntry<'h>>,
    ) {
        if let Some(first) = seen.insert((field, value), h) {
            let first_line = self.locator.error(&first.path, "", None).line;
            self.error(
                &format!("{}.identity.{field}", h.path),
                format!(
                    "this {field} is already {}'s identity (line {first_line}): two machines cannot both be one",
                    first.fields.hostname
                ),
                None,
            );
        }
    }

    fn host_entries<'m>(&mut self, m: &'m MasterFile) -> Vec<HostEntry<'m>> {
        let machines = m.machines.iter().enumerate().map(|(i, h)| HostEntry {
            path: format!("machines[{i}]"),
            on_lan: h.role != MachineRole::Netboot,
            fields: machine_fields(h),
        });
        let deployed = |list: &str, i: usize, hostname: &'m str, d: &'m Deployment| HostEntry {
            path: format!("{list}[{i}]"),
            on_lan: d.placement != Where::Ec2,
            fields: deployed_fields(hostname, d),
        };
        let encoders = (m.encoders.iter().enumerate())
            .map(|(i, e)| deployed("encoders", i, &e.hostname, &e.deployment));
        let servers = (m.servers.iter().enumerate())
            .map(|(i, s)| deployed("servers", i, &s.hostname, &s.deployment));
        machines.chain(encoders).chain(servers).collect()
    }

    /// Names, MACs and addresses: well-formed, unique, and on the LAN where they must be.
    fn identities(&mut self, hosts: &[HostEntry], net: Option<Ipv4Net>, n: &Network) {
        let mut hostnames: HashMap<&str, &str> = HashMap::new();
        let mut macs: HashMap<MacAddr, &str> = HashMap::new();
        let mut ips: HashMap<Ipv4Addr, &str> = HashMap::new();
        let mut claimed = HashMap::new();
        for h in hosts {
            if let Some(hardware) = h.fields.hardware {
                self.hardware_identity(h, hardware, &mut claimed);
            }
            for (i, arg) in h.fields.kernel_args.iter().enumerate() {
                let path = format!("{}.kernel_args[{i}]", h.path);
                if arg.is_empty() || arg.contains(char::is_whitespace) {
                    self.error(
                        &path,
                        format!("{arg:?} is not one kernel argument"),
                        Some("write one argument per string, without spaces".into()),
                    );
                } else if arg.starts_with("lectern.")
                    || arg.starts_with("initrd=")
                    || arg.starts_with("boot=")
                {
                    self.error(&path, format!("`{arg}` is set by netbootd"), None);
                }
            }
            if !h.fields.kernel_args.is_empty() && !h.on_lan {
                self.error(
                    &format!("{}.kernel_args", h.path),
                    format!(
                        "{} does not netboot, so netbootd cannot pass it kernel arguments",
                        h.fields.hostname
                    ),
                    None,
                );
            }
            let hostname_path = format!("{}.hostname", h.path);
            if self.name(&hostname_path, h.fields.hostname) {
                let fqdn = h.fields.hostname.len() + 1 + n.domain.len();
                if fqdn > MAX_DNS_NAME {
                    self.error(
                        &hostname_path,
                        format!(
                            "{}.{} is {fqdn} characters long, more than a DNS name may be ({MAX_DNS_NAME})",
                            h.fields.hostname, n.domain
                        ),
                        Some("shorten the host name or network.domain".into()),
                    );
                }
                if let Some(first) = hostnames.insert(h.fields.hostname, &h.path) {
                    let first_line = self.locator.error(first, "", None).line;
                    self.error(
                        &hostname_path,
                        format!(
                            "host name \"{}\" is already used on line {first_line}",
                            h.fields.hostname
                        ),
                        Some("every host needs its own name".into()),
                    );
                }
            }
            match (h.fields.mac, h.on_lan) {
                (Some(text), true) => match text.parse::<MacAddr>() {
                    Ok(mac) if mac.0[0] & 1 == 1 || mac.0 == [0; 6] => self.error(
                        &format!("{}.mac", h.path),
                        format!(
                            "\"{text}\" is {}, not a machine's",
                            if mac.0[0] & 1 == 1 {
                                "a multicast address"
                            } else {
                                "all zeros"
                            }
                        ),
                        Some("copy the MAC from the machine's label or `ip link`".into()),
                    ),
                    Ok(mac) => {
                        if let Some(first) = macs.insert(mac, &h.path) {
                            let first_line = self.locator.error(first, "", None).line;
                            self.error(
                                &format!("{}.mac", h.path),
                                format!("MAC {mac} is already used on line {first_line}"),
                                Some("two hosts cannot share one network card".into()),
                            );
                        }
                    }
                    Err(_) => self.error(
                        &format!("{}.mac", h.path),
                        format!("\"{text}\" is not a MAC address"),
                        Some(
                            "write six hex pairs separated by colons, like 8c:16:45:00:e6:f6"
                                .into(),
                        ),
                    ),
                },
                (None, true) => self.error(
                    &h.path,
                    format!(
                        "{} has no `mac`: netbootd recognises machines by MAC",
                        h.fields.hostname
                    ),
                    Some("add mac = \"…\" (from the machine's label or `ip link`)".into()),
                ),
                (Some(_), false) => self.error(
                    &format!("{}.mac", h.path),
                    format!(
                        "{} does not boot from the video LAN, so a MAC is meaningless here",
                        h.fields.hostname
                    ),
                    Some("remove `mac`".into()),
                ),
                _ => {}
            }
            let Some(ip) = h.fields.ip else {
                if h.on_lan && n.dhcp.mode == DhcpMode::Authoritative && n.dhcp.range.is_none() {
                    self.error(
                        &h.path,
                        format!(
                            "{} has no `ip` and [network.dhcp] has no `range` to lease one from",
                            h.fields.hostname
                        ),
                        Some(
                            "give it ip = \"…\", or add range = [first, last] to [network.dhcp]"
                                .into(),
                        ),
                    );
                }
                continue;
            };
            let ip_path = format!("{}.ip", h.path);
            if let Some(net) = net {
                if !usable(&net, ip) {
                    self.error(&ip_path, format!("{ip} is outside the subnet {net}"), None);
                }
            }
            if let Some([first, last]) = n.dhcp.range {
                if (first..=last).contains(&ip) {
                    self.error(
                        &ip_path,
                        format!("{ip} is inside the dynamic range {first}–{last}"),
                        Some("a fixed address must not be handed out to another machine: pick one outside the range, or shrink the range".into()),
                    );
                }
            }
            if ip == n.gateway {
                self.error(&ip_path, format!("{ip} is the gateway's address"), None);
            }
            if let Some(first) = ips.insert(ip, &h.path) {
                let first_line = self.locator.error(first, "", None).line;
                self.error(
                    &ip_path,
                    format!("address {ip} is already used on line {first_line}"),
                    None,
                );
            }
        }
    }

    /// Room slugs and their sources; returns the rooms by slug.
    fn rooms<'m>(&mut self, m: &'m MasterFile) -> BTreeMap<&'m str, usize> {
        let mut by_slug = BTreeMap::new();
        for (i, room) in m.rooms.iter().enumerate() {
            let path = format!("rooms[{i}]");
            if self.name(&format!("{path}.slug"), &room.slug) {
                if let Some(first) = by_slug.insert(room.slug.as_str(), i) {
                    let first_line = self
                        .locator
                        .error(&format!("rooms[{first}]"), "", None)
                        .line;
                    self.error(
                        &format!("{path}.slug"),
                        format!(
                            "room \"{}\" is already defined on line {first_line}",
                            room.slug
                        ),
                        None,
                    );
                }
            }
            if room.sources.is_empty() {
                self.error(
                    &format!("{path}.sources"),
                    format!("room \"{}\" has no sources", room.slug),
                    Some(
                        "list the inputs in mixer order, like sources = [\"cam\", \"slides\"]"
                            .into(),
                    ),
                );
            }
            for (j, source) in room.sources.iter().enumerate() {
                let source_path = format!("{path}.sources[{j}]");
                if self.name(&source_path, source) && room.sources[..j].contains(source) {
                    self.error(
                        &source_path,
                        format!("source \"{source}\" is listed twice"),
                        None,
                    );
                }
            }
            if let Some(audio) = &room.audio_source {
                if !room.sources.contains(audio) {
                    self.unknown_name(
                        &format!("{path}.audio_source"),
                        "source",
                        "",
                        audio,
                        &room.sources,
                    );
                }
            }
            if room.sources.len() > 100 {
                self.error(
                    &format!("{path}.sources"),
                    "more than 100 sources would overlap voctocore's port ranges",
                    None,
                );
            }
        }
        by_slug
    }

    /// `given` names no `what` (`where_` narrows it down, e.g. ` in room "x"`).
    fn unknown_name(
        &mut self,
        path: &str,
        what: &str,
        where_: &str,
        given: &str,
        known: &[String],
    ) {
        let help = match did_you_mean(given, known.iter().map(String::as_str)) {
            Some(guess) => format!("did you mean \"{guess}\"?"),
            None if known.is_empty() => format!("no {what} is defined yet"),
            None => format!("known: {}", known.join(", ")),
        };
        self.error(
            path,
            format!("there is no {what} \"{given}\"{where_}"),
            Some(help),
        );
    }

    fn room_index(
        &mut self,
        m: &MasterFile,
        path: &str,
        slug: Option<&str>,
        rooms: &BTreeMap<&str, usize>,
    ) -> Option<usize> {
        let Some(slug) = slug else {
            self.error(
                path,
                "this host needs a `room`",
                Some("add room = \"<room slug>\"".into()),
            );
            return None;
        };
        let found = rooms.get(slug).copied();
        if found.is_none() {
            let known: Vec<String> = m.rooms.iter().map(|r| r.slug.clone()).collect();
            self.unknown_name(&format!("{path}.room"), "room", "", slug, &known);
        }
        found
    }

    fn netboot_server(&mut self, m: &MasterFile, master_dir: &Path) -> Option<NetbootPlan> {
        let servers: Vec<(usize, &Machine)> = m
            .machines
            .iter()
            .enumerate()
            .filter(|(_, h)| h.role == MachineRole::Netboot)
            .collect();
        let (i, server) = match servers.as_slice() {
            [one] => *one,
            [] => {
                self.error(
                    "machines",
                    "no machine has role = \"netboot\"",
                    Some("add the box that runs netbootd as a [[machines]] entry with role = \"netboot\" and its ip".into()),
                );
                return None;
            }
            [_, (second, _), ..] => {
                self.error(
                    &format!("machines[{second}].role"),
                    "only one machine can have role = \"netboot\"",
                    None,
                );
                return None;
            }
        };
        let Some(server_ip) = server.ip else {
            self.error(
                &format!("machines[{i}]"),
                "the netboot machine needs an `ip`: it is the address every client boots from",
                None,
            );
            return None;
        };
        let port = m.netboot.http_port;
        let operator = m.netboot.operator_address;
        if operator.ip().is_unspecified() {
            self.warn(
                "netboot.operator_address",
                format!("{operator} serves the operator's views (every host's MAC, address and state) to the video LAN too"),
                Some("keep the default 127.0.0.1:8081, or use an address of an admin network".into()),
            );
        }
        let on_server =
            operator.ip().is_unspecified() || operator.ip() == std::net::IpAddr::V4(server_ip);
        if on_server && [port, m.netboot.https_port].contains(&operator.port()) {
            self.error(
                "netboot.operator_address",
                format!(
                    "port {} is netbootd's HTTP or HTTPS port already",
                    operator.port()
                ),
                None,
            );
        }
        let limits = &m.netboot.limits;
        if limits.tftp_per_client > limits.tftp_total {
            self.error(
                "netboot.limits.tftp_per_client",
                format!("more than tftp_total ({}) allows in all", limits.tftp_total),
                None,
            );
        }
        if m.netboot.https_port == port {
            self.error(
                "netboot.https_port",
                format!("netbootd serves HTTP on {port} already: HTTPS needs a port of its own"),
                None,
            );
        }
        let journal = m.netboot.journal_port;
        let taken = [
            (port, "netbootd's HTTP"),
            (m.netboot.https_port, "netbootd's HTTPS"),
        ]
        .into_iter()
        .chain(on_server.then_some((operator.port(), "the operator address's")));
        if let Some((_, what)) = taken.into_iter().find(|(taken, _)| *taken == journal) {
            self.error(
                "netboot.journal_port",
                format!("port {journal} is {what} port already: the journal receiver needs one of its own"),
                None,
            );
        }
        let base_url = if port == 80 {
            format!("http://{server_ip}")
        } else {
            format!("http://{server_ip}:{port}")
        };
        Some(NetbootPlan {
            server: server.hostname.clone(),
            server_ip,
            http_port: port,
            base_url,
            https_port: m.netboot.https_port,
            secure_url: format!("https://{server_ip}:{}", m.netboot.https_port),
            journal_port: journal,
            journal_url: format!("https://{server_ip}:{journal}"),
            operator_url: format!("http://{}", m.netboot.operator_address),
            operator_address: m.netboot.operator_address,
            stale_after_secs: u64::from(m.netboot.stale_after_missed_beats) * HEARTBEAT_SECS,
            limits: m.netboot.limits.clone(),
            store: master_dir.join(&m.netboot.store),
        })
    }

    /// What is derived once per room; `first` is false for a duplicate slug (reported already),
    /// which gets no mixer inputs.
    fn room_parts(&mut self, m: &MasterFile, i: usize, room: &Room, first: bool) -> RoomParts {
        let video = room_video(m, room);
        let encode = room_encode(m, room);
        let streams = self.streams(m, i, room, &video, &encode);
        RoomParts {
            audio_source: (room.audio_source.clone())
                .unwrap_or_else(|| room.sources.first().cloned().unwrap_or_default()),
            inputs: if first {
                self.mixer_inputs(m, i, room)
            } else {
                Vec::new()
            },
            video,
            encode,
            streams,
        }
    }

    /// The room's stream key and renditions (main, then each variant), resolved once for the
    /// room, its encoders and the backend. `None` if the key is missing.
    fn streams(
        &mut self,
        m: &MasterFile,
        i: usize,
        room: &Room,
        video: &VideoPlan,
        encode: &Encode,
    ) -> Option<RoomStreams> {
        let wants_key = m.streaming.ingest_url.contains("{key}");
        let key_path = format!("rooms[{i}].stream_key");
        let key = match (&room.stream_key, wants_key) {
            (Some(reference), true) => Some(self.secret(reference, &key_path)?),
            (None, true) => {
                self.error(
                    &format!("rooms[{i}]"),
                    format!("room \"{}\" has no `stream_key`, but streaming.ingest_url needs one ({{key}})", room.slug),
                    Some(format!("add stream_key = \"secret:stream_keys.{}\" and the key to the secrets file", room.slug)),
                );
                return None;
            }
            (Some(_), false) => {
                self.error(
                    &key_path,
                    "streaming.ingest_url has no {key} placeholder, so this key would never be used",
                    Some("put {key} into streaming.ingest_url where the ingest expects it, or remove stream_key".into()),
                );
                return None;
            }
            (None, false) => None,
        };
        let push_url = |stream: &str| {
            let template = m.streaming.ingest_url.replace("{room}", stream);
            Secret::fill(&template, "{key}", key.as_ref().unwrap_or(&Secret::new("")))
        };
        let rendition =
            |name: &str, stream: String, (width, height), video_kbps, maxrate_kbps| Rendition {
                name: name.to_owned(),
                push_url: push_url(&stream),
                stream,
                width,
                height,
                video_kbps,
                maxrate_kbps,
                audio_kbps: encode.audio_kbps,
                bandwidth: u64::from(maxrate_kbps + encode.audio_kbps) * 1000,
            };
        let mut renditions = vec![rendition(
            "main",
            room.slug.clone(),
            (video.width, video.height),
            encode.video_kbps,
            encode.maxrate_kbps,
        )];
        let variants_path = match room.encode.as_ref().and_then(|e| e.variants.as_ref()) {
            Some(_) => format!("rooms[{i}].encode.variants"),
            None => "defaults.encode.variants".to_owned(),
        };
        for (j, variant) in encode.variants.iter().enumerate() {
            let path = format!("{variants_path}[{j}]");
            if !self.name(&format!("{path}.name"), &variant.name) {
                continue;
            }
            if encode.variants[..j].iter().any(|v| v.name == variant.name) {
                self.error(
                    &format!("{path}.name"),
                    format!("variant \"{}\" is listed twice", variant.name),
                    None,
                );
                continue;
            }
            if variant.height >= video.height || variant.height < 2 || variant.height % 2 != 0 {
                self.error(
                    &format!("{path}.height"),
                    format!(
                        "a variant of room \"{}\" must be an even height below its {}-line picture, not {}",
                        room.slug, video.height, variant.height
                    ),
                    None,
                );
                continue;
            }
            // Same aspect ratio, rounded to an even width (H.264 in 4:2:0 needs one).
            let (h, w, vh) = (
                u64::from(variant.height),
                u64::from(video.width),
                u64::from(video.height),
            );
            let width = ((h * w + vh) / (2 * vh) * 2) as u32;
            let maxrate = (u64::from(variant.video_kbps) * u64::from(encode.maxrate_kbps)
                / u64::from(encode.video_kbps.max(1))) as u32;
            renditions.push(rendition(
                &variant.name,
                format!("{}_{}", room.slug, variant.name),
                (width, variant.height),
                variant.video_kbps,
                maxrate.max(variant.video_kbps),
            ));
        }
        let contribution_passphrase = self.contribution_passphrase(m, i, room).ok()?;
        Some(RoomStreams {
            key,
            renditions,
            contribution_passphrase,
        })
    }

    /// The room's contribution passphrase: required (10 to 79 characters, as SRT wants) when the room
    /// has a cloud encoder, refused when nothing would use it. `Ok(None)`: the room needs none.
    fn contribution_passphrase(
        &mut self,
        m: &MasterFile,
        i: usize,
        room: &Room,
    ) -> Result<Option<Secret>, Reported> {
        let path = format!("rooms[{i}].contribution_passphrase");
        let cloud = cloud_encoders(m, &room.slug).next().is_some();
        match (&room.contribution_passphrase, cloud) {
            (Some(reference), true) => {
                let passphrase = self.secret(reference, &path).ok_or(Reported)?;
                if passphrase.is_unread() {
                    return Ok(Some(passphrase));
                }
                let length = passphrase.expose().chars().count();
                let url_safe = (passphrase.expose().chars())
                    .all(|c| c.is_ascii_alphanumeric() || "-._~".contains(c));
                if !url_safe {
                    // Not quoting the value: it is the secret.
                    self.error(
                        &path,
                        "the SRT passphrase travels in the feed's URL: use letters, digits and - . _ ~ only",
                        None,
                    );
                    return Err(Reported);
                }
                if !(10..=79).contains(&length) {
                    // Not quoting the value: it is the secret.
                    self.error(
                        &path,
                        format!("an SRT passphrase has 10 to 79 characters, this one has {length}"),
                        None,
                    );
                    return Err(Reported);
                }
                Ok(Some(passphrase))
            }
            (None, true) => {
                self.error(
                    &format!("rooms[{i}]"),
                    format!(
                        "room \"{}\" has a cloud encoder but no `contribution_passphrase`: its feed would cross the internet unencrypted",
                        room.slug
                    ),
                    Some(format!(
                        "add contribution_passphrase = \"secret:contribution.{}\" and 10 to 79 characters of it to the secrets file",
                        room.slug
                    )),
                );
                Err(Reported)
            }
            (Some(_), false) => {
                self.error(
                    &path,
                    "the room has no cloud (`ec2`) encoder, so this passphrase would never be used",
                    Some("remove contribution_passphrase".into()),
                );
                Err(Reported)
            }
            (None, false) => Ok(None),
        }
    }

    fn hosts(
        &mut self,
        m: &MasterFile,
        rooms: &BTreeMap<&str, usize>,
        parts: &[RoomParts],
    ) -> Vec<Host> {
        let domain = &m.network.domain;
        let mut hosts = Vec::new();
        let mixer_of: HashMap<&str, &Machine> = m
            .machines
            .iter()
            .filter(|h| h.role == MachineRole::Mixer)
            .filter_map(|h| Some((h.room.as_deref()?, h)))
            .collect();
        for (i, h) in m.machines.iter().enumerate() {
            let path = format!("machines[{i}]");
            let room_index = match h.role {
                MachineRole::Netboot => None,
                _ => self.room_index(m, &path, h.room.as_deref(), rooms),
            };
            let config = match (h.role, room_index) {
                (MachineRole::Netboot, _) => Some(RoleConfig::Netboot),
                (MachineRole::Mixer, Some(r)) => {
                    if h.record_disk.is_none() {
                        self.warn(
                            &path,
                            "no `record_disk`: recordings go to RAM, beside the root file system",
                            Some("set record_disk to the mixer's recording disk, e.g. \"/dev/disk/by-id/…\"; without one the recorder deletes the oldest segments to keep a quarter of the RAM free".into()),
                        );
                    }
                    Some(RoleConfig::Mixer(self.mixer(m, r, h, &parts[r])))
                }
                (MachineRole::Source, Some(r)) => {
                    let room = &m.rooms[r];
                    let mixer = mixer_of
                        .get(room.slug.as_str())
                        .map(|x| reach(&x.hostname, x.ip));
                    self.source_config(&path, h, room)
                        .map(|(source, port, capture)| {
                            RoleConfig::Source(SourceConfig {
                                room: room.slug.clone(),
                                source,
                                mixer: mixer.unwrap_or_default(),
                                mixer_port: port,
                                capture,
                                video: parts[r].video.clone(),
                            })
                        })
                }
                _ => None,
            };
            if h.role != MachineRole::Source && (h.source.is_some() || h.capture.is_some()) {
                self.error(
                    &path,
                    "`source` and `capture` are only for machines with role = \"source\"",
                    None,
                );
            }
            let role = match h.role {
                MachineRole::Mixer => Role::Mixer,
                MachineRole::Source => Role::Source,
                MachineRole::Netboot => Role::Netboot,
            };
            if let Some(config) = config {
                let mut host = new_host(machine_fields(h), domain, role, h.room.clone(), config);
                host.netboot = role != Role::Netboot;
                self.unbound_secrets(&path, &host, m.network.dhcp.mode);
                hosts.push(host);
            }
        }
        for (i, e) in m.encoders.iter().enumerate() {
            let path = format!("encoders[{i}]");
            let (vm, cloud) = self.deployment(&path, &e.hostname, &e.deployment, m);
            let Some(r) = self.room_index(m, &path, Some(&e.room), rooms) else {
                continue;
            };
            let room = &m.rooms[r];
            let Some(room_streams) = &parts[r].streams else {
                continue;
            };
            let pull_url = match e.deployment.placement {
                Where::Ec2 => srt_url(
                    &format!("srt://0.0.0.0:{}?mode=listener&", ports::CONTRIBUTION),
                    room_streams.contribution_passphrase.as_ref(),
                ),
                _ => {
                    let mixer = mixer_of.get(room.slug.as_str());
                    let mixer = mixer.map(|x| reach(&x.hostname, x.ip)).unwrap_or_default();
                    Secret::public(format!("tcp://{mixer}:{}", ports::LIVE_OUT))
                }
            };
            let (video, encode) = (parts[r].video.clone(), parts[r].encode.clone());
            let renditions = room_streams.renditions.clone();
            let ffmpeg_args =
                ffmpeg::encoder_args(&pull_url, &renditions, m.streaming.ingest, &video, &encode);
            let config = RoleConfig::Encoder(EncoderConfig {
                room: room.slug.clone(),
                pull_url,
                renditions,
                ingest: m.streaming.ingest,
                video,
                hwaccel: encode.hwaccel,
                encode,
                ffmpeg_args,
                vm,
                cloud,
            });
            let fields = deployed_fields(&e.hostname, &e.deployment);
            let mut host = new_host(
                fields,
                domain,
                Role::Encoder,
                Some(room.slug.clone()),
                config,
            );
            if e.deployment.placement == Where::Ec2 {
                host.address = cloud_address(e, domain);
            }
            self.unbound_secrets(&path, &host, m.network.dhcp.mode);
            hosts.push(host);
        }
        for (i, s) in m.servers.iter().enumerate() {
            let path = format!("servers[{i}]");
            let (vm, cloud) = self.deployment(&path, &s.hostname, &s.deployment, m);
            let server = ServerConfig { vm, cloud };
            let (role, config) = match s.role {
                ServerRole::StreamingBackend => {
                    let Some(backend) = self.backend(m, &path, parts, server) else {
                        continue;
                    };
                    (
                        Role::StreamingBackend,
                        RoleConfig::StreamingBackend(backend),
                    )
                }
                ServerRole::StreamingFrontend => {
                    let Some(frontend) = self.frontend(m, &path, parts, server) else {
                        continue;
                    };
                    (
                        Role::StreamingFrontend,
                        RoleConfig::StreamingFrontend(frontend),
                    )
                }
            };
            let fields = deployed_fields(&s.hostname, &s.deployment);
            let mut host = new_host(fields, domain, role, None, config);
            host.address = server_address(s, domain);
            self.unbound_secrets(&path, &host, m.network.dhcp.mode);
            hosts.push(host);
        }
        hosts
    }

    /// A netbooted host with secrets and no hardware identity gets them by its address alone.
    fn unbound_secrets(&mut self, path: &str, host: &Host, mode: DhcpMode) {
        if !host.netboot || host.identity.is_some() {
            return;
        }
        let count = crate::secrets::secret_values_in(&host.config).len();
        if count == 0 {
            return;
        }
        if mode == DhcpMode::Proxy && host.ip.is_none() {
            // The venue hands out its address and anyone can claim to hold it: nothing proves it.
            self.error(
                path,
                format!(
                    "{} has secrets ({count}) but neither a reserved `ip` nor an `identity`: beside the venue's DHCP nothing proves which machine is {}, so netbootd never releases them",
                    host.hostname, host.hostname
                ),
                Some("add identity = { uuid = \"…\" } (its SMBIOS system UUID), or the address the venue reserved for it".into()),
            );
            return;
        }
        let lan = match mode {
            DhcpMode::Proxy => "any machine on the venue's LAN",
            DhcpMode::Authoritative => "any machine on the video LAN",
        };
        self.warn(
            path,
            format!(
                "{} has secrets ({count}) but no `identity`: {lan} that takes its address can fetch them",
                host.hostname
            ),
            Some("add identity = { uuid = \"…\" } (its SMBIOS system UUID: `cat /sys/class/dmi/id/product_uuid` on it, or what netbootd logs at its boot)".into()),
        );
    }

    /// The ingest URL: placeholders, and a scheme that matches the ingest kind.
    fn ingest(&mut self, m: &MasterFile, parts: &[RoomParts]) {
        let url = &m.streaming.ingest_url;
        let bad_placeholder = url
            .replace("{room}", "")
            .replace("{key}", "")
            .contains(['{', '}']);
        if bad_placeholder {
            self.error(
                "streaming.ingest_url",
                "the URL has a placeholder other than {room} and {key}",
                None,
            );
        }
        if !url.contains("{room}") {
            self.error(
                "streaming.ingest_url",
                "the URL has no {room}: every room (and variant) would push to the same stream",
                Some("put {room} where the ingest expects the stream name".into()),
            );
        }
        if url.contains(char::is_whitespace) {
            self.error("streaming.ingest_url", "the URL contains white space", None);
        }
        let schemes: &[&str] = match m.streaming.ingest {
            IngestKind::Rtmp => &["rtmp://", "rtmps://"],
            IngestKind::Srt => &["srt://"],
            IngestKind::Icecast => &["icecast://"],
        };
        if !schemes.iter().any(|scheme| url.starts_with(scheme)) {
            self.error(
                "streaming.ingest_url",
                format!(
                    "ingest = {:?} pushes to {} URLs, not \"{url}\"",
                    ingest_name(m.streaming.ingest),
                    schemes.join(" or ")
                ),
                None,
            );
        }
        let vaapi = std::iter::once(m.defaults.encode.hwaccel)
            .chain(m.rooms.iter().filter_map(|r| r.encode.as_ref()?.hwaccel))
            .any(|h| h == HwAccel::Vaapi);
        // A preset tunes x264 only: refused where a room encodes with VAAPI or VP8 instead.
        for (i, (room, parts)) in m.rooms.iter().zip(parts).enumerate() {
            let encode = &parts.encode;
            let Some(preset) = encode.preset else {
                continue;
            };
            let encoder = match (encode.hwaccel, m.streaming.ingest) {
                (HwAccel::Vaapi, _) => "VAAPI (hwaccel = \"vaapi\")",
                (_, IngestKind::Icecast) => "VP8 (ingest = \"icecast\")",
                _ => continue,
            };
            let path = match room.encode.as_ref().and_then(|o| o.preset) {
                Some(_) => format!("rooms[{i}].encode.preset"),
                None => "defaults.encode.preset".to_owned(),
            };
            self.error(
                &path,
                format!(
                    "preset = {:?} tunes x264, but room {} encodes with {encoder}",
                    preset.name(),
                    room.slug
                ),
                Some("remove preset".into()),
            );
        }
        if vaapi && m.streaming.ingest == IngestKind::Icecast {
            self.error(
                "streaming.ingest",
                "icecast streams are WebM (VP8), which lectern encodes on the CPU only",
                Some("set hwaccel = \"none\", or ingest over rtmp or srt".into()),
            );
        }
    }

    /// A streaming backend of this file: it ingests RTMP and serves HLS and the watch pages at
    /// the paths of `hls_url` and `watch_url`.
    fn backend(
        &mut self,
        m: &MasterFile,
        path: &str,
        parts: &[RoomParts],
        server: ServerConfig,
    ) -> Option<BackendConfig> {
        let s = &m.streaming;
        if s.ingest != IngestKind::Rtmp {
            self.error(
                "streaming.ingest",
                format!(
                    "the streaming-backend role ingests rtmp, but ingest = {:?}",
                    ingest_name(s.ingest)
                ),
                Some("use ingest = \"rtmp\", or remove the streaming-backend server and run your own ingest".into()),
            );
        }
        let rtmp_app = s
            .ingest_url
            .split_once("://")
            .and_then(|(_, rest)| rest.split_once('/'))
            .and_then(|(_, path)| path.split_once('/'))
            .filter(|(app, stream)| !app.is_empty() && stream.starts_with("{room}"))
            .map(|(app, _)| app.to_owned());
        if rtmp_app.is_none() {
            self.error(
                "streaming.ingest_url",
                "a streaming-backend ingests at rtmp://<host>/<application>/{room}",
                Some("e.g. \"rtmp://stream-backend.example.org/stream/{room}?key={key}\"".into()),
            );
        }
        let mut url_path = |field: &str, value: Option<&str>, suffix: &str, example: &str| {
            let found = value.and_then(|url| path_before(url, suffix));
            if found.is_none() {
                self.error(
                    &format!("streaming.{field}"),
                    format!("the streaming-backend ({path}) serves `{field}`: it must be set and end in /{suffix}"),
                    Some(format!("e.g. {field} = \"{example}\"")),
                );
            }
            found
        };
        let hls_path = url_path(
            "hls_url",
            s.hls_url.as_deref(),
            "{room}.m3u8",
            "https://stream.example.org/hls/{room}.m3u8",
        );
        let watch_path = url_path(
            "watch_url",
            s.watch_url.as_deref(),
            "{room}",
            "https://stream.example.org/watch/{room}",
        );
        let rooms = m
            .rooms
            .iter()
            .zip(parts)
            .filter_map(|(room, parts)| {
                let streams = parts.streams.as_ref()?;
                Some(BackendRoom {
                    slug: room.slug.clone(),
                    name: room.name.clone(),
                    irc_channel: room.irc_channel.clone(),
                    schedule_url: room.url.clone(),
                    hls_url: per_room(s.hls_url.as_deref(), &room.slug)?,
                    watch_url: per_room(s.watch_url.as_deref(), &room.slug)?,
                    stream_key: streams.key.clone(),
                    renditions: streams.renditions.clone(),
                })
            })
            .collect();
        Some(BackendConfig {
            ingest: s.ingest,
            rtmp_app: rtmp_app?,
            hls_path: hls_path?,
            watch_path: watch_path?,
            rooms,
            server,
        })
    }

    /// A streaming frontend of this file: an HTTP cache of its one streaming backend, at the
    /// backend's paths, sized for every room's renditions.
    fn frontend(
        &mut self,
        m: &MasterFile,
        path: &str,
        parts: &[RoomParts],
        server: ServerConfig,
    ) -> Option<FrontendConfig> {
        let backends: Vec<&Server> = (m.servers.iter())
            .filter(|s| s.role == ServerRole::StreamingBackend)
            .collect();
        let backend = match backends.as_slice() {
            [one] => *one,
            others => {
                let (found, help) = match others.len() {
                    0 => (
                        "none".to_owned(),
                        "add the [[servers]] entry with role = \"streaming-backend\" it caches, or remove the frontend",
                    ),
                    n => (
                        format!("{n}"),
                        "keep one [[servers]] entry with role = \"streaming-backend\"",
                    ),
                };
                self.error(
                    &format!("{path}.role"),
                    format!("a streaming-frontend caches the file's one streaming-backend, and the file has {found}"),
                    Some(help.into()),
                );
                return None;
            }
        };
        // The backend refuses a missing or malformed hls_url or watch_url already.
        let hls_path = path_before(m.streaming.hls_url.as_deref()?, "{room}.m3u8")?;
        let watch_path = path_before(m.streaming.watch_url.as_deref()?, "{room}")?;
        let peak_bits_per_sec: u64 = (parts.iter())
            .filter_map(|part| part.streams.as_ref())
            .flat_map(|streams| &streams.renditions)
            .map(|rendition| rendition.bandwidth)
            .sum();
        let cache_mb = (peak_bits_per_sec * FRONTEND_CACHE_IDLE_SECS / 8)
            .div_ceil(1 << 20)
            .max(FRONTEND_CACHE_MIN_MB);
        Some(FrontendConfig {
            backend: backend.hostname.clone(),
            backend_address: server_address(backend, &m.network.domain),
            hls_path,
            watch_path,
            cache_idle_secs: FRONTEND_CACHE_IDLE_SECS,
            cache_mb,
            server,
        })
    }

    fn mixer(&mut self, m: &MasterFile, r: usize, h: &Machine, parts: &RoomParts) -> MixerConfig {
        let room = &m.rooms[r];
        let passphrase = (parts.streams.as_ref()).and_then(|s| s.contribution_passphrase.as_ref());
        let encode = &parts.encode;
        let contributions = cloud_encoders(m, &room.slug)
            .map(|e| {
                let target = cloud_address(e, &m.network.domain);
                Contribution {
                    encoder: e.hostname.clone(),
                    url: srt_url(
                        &format!("srt://{target}:{}?", ports::CONTRIBUTION),
                        passphrase,
                    ),
                    // Enough headroom that the cloud encoder's re-encode does not show it.
                    video_kbps: encode.maxrate_kbps * 2,
                    audio_kbps: encode.audio_kbps * 2,
                }
            })
            .collect();
        MixerConfig {
            room: room.slug.clone(),
            video: parts.video.clone(),
            sources: parts.inputs.clone(),
            audio_source: parts.audio_source.clone(),
            control_port: ports::CONTROL,
            mix_out_port: ports::MIX_OUT,
            live_out_port: ports::LIVE_OUT,
            recording_dir: recording_dir(m, room),
            record_disk: h.record_disk.clone(),
            contributions,
        }
    }

    fn source_config(
        &mut self,
        path: &str,
        h: &Machine,
        room: &Room,
    ) -> Option<(String, u16, Capture)> {
        let Some(source) = &h.source else {
            self.error(
                path,
                format!(
                    "source machine {} does not say which source it captures",
                    h.hostname
                ),
                Some(format!(
                    "add source = \"…\", one of: {}",
                    room.sources.join(", ")
                )),
            );
            return None;
        };
        let Some(index) = room.sources.iter().position(|s| s == source) else {
            self.unknown_name(
                &format!("{path}.source"),
                "source",
                &format!(" in room \"{}\"", room.slug),
                source,
                &room.sources,
            );
            return None;
        };
        let capture = h.capture.clone().unwrap_or(Capture {
            kind: CaptureKind::Test,
            device: None,
            audio: None,
            video_delay_ms: None,
            audio_delay_ms: None,
        });
        Some((source.clone(), ports::SOURCE_BASE + index as u16, capture))
    }

    fn deployment(
        &mut self,
        path: &str,
        hostname: &str,
        f: &Deployment,
        m: &MasterFile,
    ) -> (Option<VmPlan>, Option<CloudPlan>) {
        // A field of another placement would be accepted and do nothing: refuse it.
        let fields = [
            ("host", f.host.is_some(), Where::LocalVm),
            ("vcpus", f.vcpus.is_some(), Where::LocalVm),
            ("memory_mb", f.memory_mb.is_some(), Where::LocalVm),
            ("region", f.region.is_some(), Where::Ec2),
            ("instance_type", f.instance_type.is_some(), Where::Ec2),
            ("instance_profile", f.instance_profile.is_some(), Where::Ec2),
            ("security_groups", !f.security_groups.is_empty(), Where::Ec2),
            ("subnet", f.subnet.is_some(), Where::Ec2),
        ];
        for (field, set, placement) in fields {
            if set && placement != f.placement {
                self.error(
                    &format!("{path}.{field}"),
                    format!(
                        "`{field}` is for `where = \"{}\"` hosts; this one is `{}`",
                        placement.as_str(),
                        f.placement.as_str()
                    ),
                    None,
                );
            }
        }
        match f.placement {
            Where::Ec2 => {
                let mut need = |field: &str, value: Option<&String>| match value {
                    Some(v) => v.clone(),
                    None => {
                        self.error(path, format!("an ec2 host needs `{field}`"), None);
                        String::new()
                    }
                };
                let cloud = CloudPlan {
                    region: need("region", f.region.as_ref()),
                    instance_type: need("instance_type", f.instance_type.as_ref()),
                    instance_profile: need("instance_profile", f.instance_profile.as_ref()),
                    security_groups: f.security_groups.clone(),
                    subnet: f.subnet.clone(),
                    layer_parameter: format!("/lectern/{}/{hostname}/layer", m.conference.slug),
                };
                (None, Some(cloud))
            }
            Where::LocalVm => {
                if let Some(hypervisor) = &f.host {
                    let known: Vec<String> =
                        m.machines.iter().map(|h| h.hostname.clone()).collect();
                    if !known.contains(hypervisor) {
                        self.unknown_name(
                            &format!("{path}.host"),
                            "machine",
                            "",
                            hypervisor,
                            &known,
                        );
                    }
                }
                let vm = VmPlan {
                    hypervisor: f.host.clone(),
                    vcpus: f.vcpus.unwrap_or(2),
                    memory_mb: f.memory_mb.unwrap_or(2048),
                };
                (Some(vm), None)
            }
            Where::BareMetal => (None, None),
        }
    }

    /// Room `i`'s sources in mixer order: the n-th feeds port 10000+n from the one source machine of
    /// the room that captures it.
    fn mixer_inputs(&mut self, m: &MasterFile, i: usize, room: &Room) -> Vec<MixerInput> {
        let path = format!("rooms[{i}]");
        let mut inputs = Vec::new();
        for (j, name) in room.sources.iter().enumerate() {
            let feeding: Vec<&Machine> = (m.machines.iter())
                .filter(|h| h.role == MachineRole::Source && h.room.as_deref() == Some(&room.slug))
                .filter(|h| h.source.as_ref() == Some(name))
                .collect();
            match feeding.as_slice() {
                [one] => inputs.push(MixerInput {
                    name: name.clone(),
                    port: ports::SOURCE_BASE + j as u16,
                    machine: one.hostname.clone(),
                }),
                [] => self.error(
                    &format!("{path}.sources[{j}]"),
                    format!("no machine captures source \"{name}\" of room \"{}\"", room.slug),
                    Some(format!("add a [[machines]] entry with role = \"source\", room = \"{}\", source = \"{name}\"", room.slug)),
                ),
                [a, b, ..] => self.error(
                    &format!("{path}.sources[{j}]"),
                    format!("source \"{name}\" is captured by both {} and {}", a.hostname, b.hostname),
                    None,
                ),
            }
        }
        inputs
    }

    /// Wires each room: its mixer, the machine behind each source, its encoders.
    fn room_plans(
        &mut self,
        m: &MasterFile,
        rooms: BTreeMap<&str, usize>,
        hosts: &[Host],
        parts: Vec<RoomParts>,
    ) -> Vec<RoomPlan> {
        let mut plans = Vec::new();
        for ((i, room), parts) in m.rooms.iter().enumerate().zip(parts) {
            if rooms.get(room.slug.as_str()) != Some(&i) {
                continue; // duplicate slug, reported already
            }
            let path = format!("rooms[{i}]");
            let in_room = |role: Role| {
                hosts
                    .iter()
                    .filter(move |h| h.role == role && h.room.as_deref() == Some(&room.slug))
            };
            let mixers: Vec<&Host> = in_room(Role::Mixer).collect();
            let mixer = match mixers.as_slice() {
                [one] => Some(one.hostname.clone()),
                [] => {
                    self.error(
                        &path,
                        format!("room \"{}\" has no mixer", room.slug),
                        Some(format!(
                            "add a [[machines]] entry with role = \"mixer\" and room = \"{}\"",
                            room.slug
                        )),
                    );
                    None
                }
                [_, second, ..] => {
                    self.error(
                        &path,
                        format!(
                            "room \"{}\" has more than one mixer ({} and {})",
                            room.slug, mixers[0].hostname, second.hostname
                        ),
                        None,
                    );
                    None
                }
            };
            let encoders: Vec<&Host> = in_room(Role::Encoder).collect();
            let (Some(mixer), Some(room_streams)) = (mixer, parts.streams) else {
                continue;
            };
            plans.push(RoomPlan {
                slug: room.slug.clone(),
                name: room.name.clone(),
                irc_channel: room.irc_channel.clone(),
                url: room.url.clone(),
                mixer,
                sources: parts.inputs,
                audio_source: parts.audio_source,
                encoders: encoders.iter().map(|h| h.hostname.clone()).collect(),
                video: parts.video,
                encode: parts.encode,
                renditions: room_streams.renditions,
                hls_url: per_room(m.streaming.hls_url.as_deref(), &room.slug),
                watch_url: per_room(m.streaming.watch_url.as_deref(), &room.slug),
                recording_dir: recording_dir(m, room),
            });
        }
        plans
    }
}

/// A problem that is in the diagnostics already.
struct Reported;

/// What is derived once per room (see [`Expander::room_parts`]).
struct RoomParts {
    video: VideoPlan,
    encode: Encode,
    /// The source the room's sound comes from.
    audio_source: String,
    /// `None` if its key or contribution passphrase was refused.
    streams: Option<RoomStreams>,
    /// The mixer's inputs, in order.
    inputs: Vec<MixerInput>,
}

/// A room's key and renditions (see [`Expander::streams`]).
struct RoomStreams {
    key: Option<Secret>,
    renditions: Vec<Rendition>,
    /// The SRT passphrase of the contribution feeds to the room's cloud encoders, if it has any.
    contribution_passphrase: Option<Secret>,
}

/// A room's picture and sound: its own settings over `[defaults.video]`.
fn room_video(m: &MasterFile, room: &Room) -> VideoPlan {
    let d = &m.defaults.video;
    let o = room.video.clone().unwrap_or_default();
    let mode = o.mode.unwrap_or(d.mode);
    let (width, height) = mode.dimensions();
    VideoPlan {
        mode,
        width,
        height,
        framerate: o.framerate.unwrap_or(d.framerate),
        audio_channels: o.audio_channels.unwrap_or(d.audio_channels),
        audio_rate: o.audio_rate.unwrap_or(d.audio_rate),
    }
}

/// A room's encoding: its own settings over `[defaults.encode]`.
fn room_encode(m: &MasterFile, room: &Room) -> Encode {
    let d = &m.defaults.encode;
    let o = room.encode.clone().unwrap_or_default();
    Encode {
        hwaccel: o.hwaccel.unwrap_or(d.hwaccel),
        preset: o.preset.or(d.preset),
        video_kbps: o.video_kbps.unwrap_or(d.video_kbps),
        maxrate_kbps: o.maxrate_kbps.unwrap_or(d.maxrate_kbps),
        keyframe_s: o.keyframe_s.unwrap_or(d.keyframe_s),
        audio_kbps: o.audio_kbps.unwrap_or(d.audio_kbps),
        variants: o.variants.unwrap_or_else(|| d.variants.clone()),
    }
}

/// An SRT URL (`base` ends in `?` or `&`) encrypted with `passphrase` (AES-256), if there is one.
fn srt_url(base: &str, passphrase: Option<&Secret>) -> Secret {
    match passphrase {
        Some(passphrase) => Secret::fill(
            &format!("{base}pbkeylen=32&passphrase={{passphrase}}"),
            "{passphrase}",
            passphrase,
        ),
        None => Secret::public(base.trim_end_matches(['?', '&'])),
    }
}

/// A `{room}` URL template filled in for one room.
fn per_room(template: Option<&str>, slug: &str) -> Option<String> {
    template.map(|t| t.replace("{room}", slug))
}

/// The path of an `http(s)://host/path` URL template up to its `suffix` (e.g. `{room}.m3u8`),
/// if it ends with it.
fn path_before(url: &str, suffix: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let path = &rest[rest.find('/')?..];
    Some(path.strip_suffix(suffix)?.to_owned()).filter(|p| p.ends_with('/'))
}

/// The encoders of room `slug` that run in the cloud: the mixer contributes to each.
fn cloud_encoders<'m>(m: &'m MasterFile, slug: &'m str) -> impl Iterator<Item = &'m Encoder> {
    (m.encoders.iter()).filter(move |e| e.room == slug && e.deployment.placement == Where::Ec2)
}

/// How the LAN reaches a cloud encoder: the master file's `address`, else `<hostname>.<domain>`.
fn cloud_address(encoder: &Encoder, domain: &str) -> String {
    (encoder.address.clone()).unwrap_or_else(|| format!("{}.{domain}", encoder.hostname))
}

/// How other hosts reach a server: as any host on the LAN, by its public name in the cloud.
fn server_address(server: &Server, domain: &str) -> String {
    match server.deployment.placement {
        Where::Ec2 => format!("{}.{domain}", server.hostname),
        _ => reach(&server.hostname, server.deployment.ip),
    }
}

/// How other hosts reach a host: its fixed address, else its mDNS name.
fn reach(hostname: &str, ip: Option<Ipv4Addr>) -> String {
    ip.map_or_else(|| format!("{hostname}.local"), |ip| ip.to_string())
}

/// What every host of the master file has, whichever list it is in.
struct HostFields<'m> {
    hostname: &'m str,
    mac: Option<&'m str>,
    ip: Option<Ipv4Addr>,
    placement: Where,
    kernel_args: &'m [String],
    hardware: Option<&'m HardwareIdentity>,
}

fn machine_fields(h: &Machine) -> HostFields<'_> {
    HostFields {
        hostname: &h.hostname,
        mac: h.mac.as_deref(),
        ip: h.ip,
        placement: Where::BareMetal,
        kernel_args: &h.kernel_args,
        hardware: h.identity.as_ref(),
    }
}

fn deployed_fields<'m>(hostname: &'m str, d: &'m Deployment) -> HostFields<'m> {
    HostFields {
        hostname,
        mac: d.mac.as_deref(),
        ip: d.ip,
        placement: d.placement,
        kernel_args: &d.kernel_args,
        hardware: d.identity.as_ref(),
    }
}

fn new_host(
    fields: HostFields,
    domain: &str,
    role: Role,
    room: Option<String>,
    config: RoleConfig,
) -> Host {
    let HostFields {
        hostname,
        mac,
        ip,
        placement,
        kernel_args,
        hardware,
    } = fields;
    Host {
        hostname: hostname.to_string(),
        fqdn: format!("{hostname}.{domain}"),
        mac: mac.and_then(|m| m.parse().ok()),
        ip,
        address: reach(hostname, ip),
        role,
        room,
        placement,
        netboot: placement != Where::Ec2,
        kernel_args: kernel_args.to_vec(),
        identity: hardware.map(|h| HardwareIdentity {
            uuid: h.uuid.as_deref().and_then(normalized_uuid),
            tpm_ek: h.tpm_ek.as_deref().and_then(normalized_ek_name),
            ..h.clone()
        }),
        config,
    }
}

fn ingest_name(kind: IngestKind) -> &'static str {
    match kind {
        IngestKind::Rtmp => "rtmp",
        IngestKind::Srt => "srt",
        IngestKind::Icecast => "icecast",
    }
}

fn recording_dir(m: &MasterFile, room: &Room) -> String {
    format!(
        "/srv/recordings/{}/{}/{}",
        m.conference.org, m.conference.slug, room.slug
    )
}

/// A UUID in its canonical lowercase form, as Linux shows it in /sys/class/dmi/id/product_uuid.
fn normalized_uuid(text: &str) -> Option<String> {
    let groups: Vec<&str> = text.split('-').collect();
    let shape = groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12]);
    let hex = groups
        .iter()
        .all(|g| g.chars().all(|c| c.is_ascii_hexdigit()));
    (shape && hex).then(|| text.to_ascii_lowercase())
}

/// A TPM key's Name with a SHA-256 name algorithm (0x000b), lowercase.
fn normalized_ek_name(text: &str) -> Option<String> {
    let hex = text.len() == 68 && text.chars().all(|c| c.is_ascii_hexdigit());
    (hex && text.starts_with("000b")).then(|| text.to_ascii_lowercase())
}

/// An address a host may have: inside the subnet, not its network or broadcast address.
fn usable(net: &Ipv4Net, ip: Ipv4Addr) -> bool {
    net.contains(&ip) && (net.prefix_len() >= 31 || (ip != net.network() && ip != net.broadcast()))
}

/// RFC 1035 §2.3.4, in characters of the written name.
const MAX_DNS_NAME: usize = 253;

/// Why `name` cannot be a network interface's name, as the kernel's `dev_valid_name` sees it.
fn interface_name(name: &str) -> Result<(), &'static str> {
    // IFNAMSIZ, with the terminating NUL.
    const MAX_LEN: usize = 15;
    if name.is_empty() {
        Err("it is empty")
    } else if name.len() > MAX_LEN {
        Err("longer than the kernel's 15 characters")
    } else if name == "." || name == ".." {
        Err("that names a directory")
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        Err("it holds '/', ':' or a space")
    } else {
        Ok(())
    }
}

/// Why `domain` cannot be a DNS domain (RFC 1123 host name syntax).
fn dns_name(domain: &str) -> Result<(), &'static str> {
    if domain.is_empty() {
        return Err("it is empty");
    }
    if domain.len() > MAX_DNS_NAME {
        return Err("longer than the 253 characters DNS allows");
    }
    for label in domain.split('.') {
        if label.is_empty() {
            return Err("it has an empty label (two dots, or a dot at an end)");
        }
        if label.len() > 63 {
            return Err("a label is longer than 63 characters");
        }
        if !label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err("a label holds something other than letters, digits and '-'");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a label starts or ends with '-'");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_are_what_the_kernel_takes() {
        for good in ["enp1s0", "lectern0", "br-video.100", "a", "abcdefghijklmno"] {
            assert_eq!(interface_name(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "abcdefghijklmnop",
            "eth0:1",
            "a/b",
            "en p1",
            "a\tb",
        ] {
            assert!(interface_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn domains_are_dns_names() {
        let longest_label = "a".repeat(63);
        for good in [
            "video.example.org",
            "lan",
            "Video-1.Example.ORG",
            longest_label.as_str(),
        ] {
            assert_eq!(dns_name(good), Ok(()), "{good}");
        }
        let long_label = "a".repeat(64);
        let long_name = ["a".repeat(63).as_str(); 4].join(".");
        for bad in [
            "",
            ".example.org",
            "example.org.",
            "a..b",
            "-a.org",
            "a-.org",
            "a_b.org",
            "é.org",
            long_label.as_str(),
            long_name.as_str(),
        ] {
            assert!(dns_name(bad).is_err(), "{bad:?}");
        }
    }
}
