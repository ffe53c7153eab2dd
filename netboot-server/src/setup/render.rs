//! What `netbootd setup` writes and decides, as pure functions of the plan and of what the box
//! holds now: the video LAN's networkd file, netbootd's arguments, the DHCP probe's verdict,
//! what a build changed, what each service needs, and the list of machines to switch on.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;

use lectern_master::Plan;
use lectern_master::model::DhcpMode;

use crate::dhcp::probe::Offer;

/// The systemd-networkd file of the video LAN: the netboot machine's address on `interface`,
/// nothing taken from the LAN, present with or without a link.
pub fn network_file(interface: &str, address: Ipv4Addr, prefix_len: u8) -> String {
    format!(
        "# The video LAN, written by `netbootd setup` from the master file (network.dhcp.interface and\n\
         # the ip of the machine with role \"netboot\"). Change those there and run the set-up again.\n\
         [Match]\n\
         Name={interface}\n\
         \n\
         [Link]\n\
         # Online (for netbootd's start) once configured, with or without a link to the switch.\n\
         RequiredForOnline=no-carrier\n\
         \n\
         [Network]\n\
         Address={address}/{prefix_len}\n\
         ConfigureWithoutCarrier=yes\n\
         # netbootd is this LAN's DHCP server and router advertiser: the box takes nothing from it.\n\
         DHCP=no\n\
         IPv6AcceptRA=no\n\
         # A restart of systemd-networkd leaves the address to netbootd's sockets bound to it.\n\
         KeepConfiguration=static\n"
    )
}

/// The variable of /etc/default/netbootd that both units pass to netbootd.
const ARGS_VARIABLE: &str = "NETBOOTD_ARGS";

/// `/etc/default/netbootd`'s `text` with netbootd's arguments naming `master` (its other
/// arguments kept), or `None` if they name it already.
pub fn point_at_master(text: &str, master: &Path) -> Option<String> {
    let master = master.display().to_string();
    let assignment = format!("{ARGS_VARIABLE}=");
    // The last assignment is the one systemd's EnvironmentFile keeps.
    let line = text
        .lines()
        .enumerate()
        .filter(|(_, line)| line.trim_start().starts_with(&assignment))
        .last();
    let Some((at, line)) = line else {
        let mut text = text.to_owned();
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&format!("{ARGS_VARIABLE}=\"--config {master}\"\n"));
        return Some(text);
    };
    let value = line.trim_start()[assignment.len()..].trim();
    let value = value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
        .unwrap_or(value);
    let mut args: Vec<String> = value.split_whitespace().map(str::to_owned).collect();
    let given = args.iter().position(|arg| arg == "--config");
    let joined = args.iter().position(|arg| arg.starts_with("--config="));
    match (given, joined) {
        (Some(i), _) if args.get(i + 1) == Some(&master) => return None,
        (Some(i), _) if i + 1 < args.len() => args[i + 1] = master,
        (Some(_), _) => args.push(master),
        (None, Some(i)) if args[i] == format!("--config={master}") => return None,
        (None, Some(i)) => args[i] = format!("--config={master}"),
        (None, None) => args
            .splice(0..0, ["--config".to_owned(), master])
            .for_each(drop),
    }
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    lines[at] = format!("{ARGS_VARIABLE}=\"{}\"", args.join(" "));
    Some(lines.join("\n") + "\n")
}

/// The line of ifupdown's configuration `text` that takes `interface` (`auto`, `allow-*` or
/// `iface`), if one does: ifupdown and networkd must not both configure it.
pub fn ifupdown_line<'t>(text: &'t str, interface: &str) -> Option<&'t str> {
    text.lines().map(str::trim).find(|line| {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("iface") => words.next() == Some(interface),
            Some(word) if word == "auto" || word.starts_with("allow-") => {
                words.any(|name| name == interface)
            }
            _ => false,
        }
    })
}

/// What the DHCP probe found, judged for the master file's mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DhcpVerdict {
    /// Nothing stands in the way: a sentence on what was heard, and a warning if any.
    Clear {
        heard: String,
        warning: Option<String>,
    },
    /// Another server would answer this LAN's machines: why the set-up refuses.
    Conflict(String),
}

/// Judges the `offers` heard on `interface` and the DHCP `servers_here` (programs holding UDP
/// port 67 on this box; netbootd's own is no conflict). In authoritative mode netbootd must be
/// the LAN's only DHCP server; in proxy mode the venue's is expected, and only another
/// proxyDHCP (boot) server conflicts.
pub fn judge_dhcp(
    mode: DhcpMode,
    interface: &str,
    offers: &[Offer],
    servers_here: &[String],
    listened: std::time::Duration,
) -> DhcpVerdict {
    let others_here: Vec<&String> = servers_here
        .iter()
        .filter(|program| !program.starts_with("netbootd "))
        .collect();
    let list = |offers: &[&Offer]| {
        offers
            .iter()
            .map(|offer| offer.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let seconds = listened.as_secs();
    match mode {
        DhcpMode::Authoritative => {
            let answered: Vec<&Offer> = offers.iter().collect();
            if !answered.is_empty() {
                return DhcpVerdict::Conflict(format!(
                    "another DHCP server answers on {interface}: {}. In authoritative mode (network.dhcp.mode) netbootd must be the video LAN's only DHCP server: switch that one off, or set network.dhcp.mode = \"proxy\" to serve beside it",
                    list(&answered)
                ));
            }
            if !others_here.is_empty() {
                return DhcpVerdict::Conflict(format!(
                    "another DHCP server runs on this box, holding UDP port 67: {}. In authoritative mode netbootd must be the video LAN's only DHCP server: stop and disable it",
                    others_here
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            DhcpVerdict::Clear {
                heard: format!("no other DHCP server answered on {interface} within {seconds} s"),
                warning: None,
            }
        }
        DhcpMode::Proxy => {
            let (venue, boot): (Vec<&Offer>, Vec<&Offer>) =
                offers.iter().partition(|offer| offer.offered.is_some());
            if !boot.is_empty() {
                return DhcpVerdict::Conflict(format!(
                    "another proxyDHCP (boot) server answers on {interface}: {}. Machines would get two answers on where to boot from: switch it off",
                    list(&boot)
                ));
            }
            if venue.is_empty() {
                DhcpVerdict::Clear {
                    heard: format!("no DHCP server answered on {interface} within {seconds} s"),
                    warning: Some(format!(
                        "in proxy mode the venue's DHCP server gives the machines their addresses, and none answered on {interface}: they will not boot until it does"
                    )),
                }
            } else {
                DhcpVerdict::Clear {
                    heard: format!(
                        "the venue's DHCP server answers on {interface}, as proxy mode expects: {}",
                        list(&venue)
                    ),
                    warning: None,
                }
            }
        }
    }
}

/// What the store serves: each role's current image and each host's current layer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreSnapshot {
    /// Role -> image id.
    pub images: BTreeMap<String, String>,
    /// Host name -> its layer's blob (and its secrets' blob).
    pub layers: BTreeMap<String, String>,
}

/// The roles whose image and the hosts whose layer differ between `before` and `after` (new
/// ones included).
pub fn store_changes(before: &StoreSnapshot, after: &StoreSnapshot) -> (Vec<String>, Vec<String>) {
    let changed = |old: &BTreeMap<String, String>, new: &BTreeMap<String, String>| {
        new.iter()
            .filter(|(name, value)| old.get(*name) != Some(value))
            .map(|(name, _)| name.clone())
            .collect()
    };
    (
        changed(&before.images, &after.images),
        changed(&before.layers, &after.layers),
    )
}

/// What a running service needs so that it runs what the master file says now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceAction {
    Start,
    Restart(String),
    Reload(String),
    Nothing,
}

/// What netbootd.service needs. `applied` is the master file the last set-up left it serving
/// (`None`: no set-up did), `restart_for` the settings between that and now that only a restart
/// applies (`server::needs_restart`).
pub fn netbootd_action(
    active: bool,
    arguments_changed: bool,
    applied: Option<&str>,
    master_text: &str,
    restart_for: &[&str],
) -> ServiceAction {
    if !active {
        return ServiceAction::Start;
    }
    if arguments_changed {
        return ServiceAction::Restart("its arguments changed".into());
    }
    match applied {
        None => ServiceAction::Restart("no record of the master file it serves".into()),
        Some(applied) if applied == master_text => ServiceAction::Nothing,
        Some(_) if !restart_for.is_empty() => {
            ServiceAction::Restart(format!("{} changed", restart_for.join(", ")))
        }
        Some(_) => ServiceAction::Reload("the master file changed".into()),
    }
}

/// What the operator does next: the machines to switch on, in the order that lets each find
/// what it talks to (the streaming servers the encoders push to, then room by room the mixer
/// before its sources and encoders), the VMs that run by themselves, and the dashboard.
pub fn next_steps(plan: &Plan, local_vms: &[String]) -> String {
    let mut out = String::new();
    let physical = |host: &&lectern_master::Host| {
        host.netboot && host.vm().is_none() && host.cloud().is_none()
    };
    let mut listed: Vec<&lectern_master::Host> = Vec::new();
    let mut rows: Vec<(Option<&str>, &lectern_master::Host)> = Vec::new();
    for host in plan
        .hosts
        .iter()
        .filter(physical)
        .filter(|h| h.room.is_none())
    {
        rows.push((None, host));
        listed.push(host);
    }
    for room in &plan.rooms {
        let mut hosts: Vec<&lectern_master::Host> = plan
            .hosts
            .iter()
            .filter(physical)
            .filter(|h| h.room.as_deref() == Some(room.slug.as_str()))
            .collect();
        hosts.sort_by_key(|h| match h.role {
            lectern_master::Role::Mixer => 0,
            lectern_master::Role::Source => 1,
            _ => 2,
        });
        for host in hosts {
            rows.push((Some(room.slug.as_str()), host));
            listed.push(host);
        }
    }
    let interface = &plan.network.dhcp.interface;
    if rows.is_empty() {
        let _ = writeln!(
            out,
            "No physical machine to switch on: the master file lists none that netboots."
        );
    } else {
        let _ = writeln!(
            out,
            "Next, switch these machines on, on the video LAN ({interface}), in this order; each netboots into its role by its MAC:"
        );
        let width = rows
            .iter()
            .map(|(_, h)| h.hostname.len())
            .max()
            .unwrap_or(0);
        let mut room_shown = None;
        for (number, (room, host)) in rows.iter().enumerate() {
            if *room != room_shown {
                if let Some(slug) = room {
                    let name = plan.room(slug).map_or("", |r| r.name.as_str());
                    let _ = writeln!(out, "  room {slug} ({name}):");
                }
                room_shown = *room;
            }
            let mac = host.mac.map_or("-".to_owned(), |mac| mac.to_string());
            let what = match &host.config {
                lectern_master::RoleConfig::Source(source) => format!(" ({})", source.source),
                _ => String::new(),
            };
            let _ = writeln!(
                out,
                "  {:>3}. {:<width$}  {mac}  {}{what}",
                number + 1,
                host.hostname,
                host.role
            );
        }
    }
    if !local_vms.is_empty() {
        let _ = writeln!(
            out,
            "Local VMs that netbootd-vms.service runs on this box, netbooting by themselves: {}",
            local_vms.join(", ")
        );
    }
    let elsewhere: Vec<String> = plan
        .hosts
        .iter()
        .filter_map(|host| {
            let vm = host.vm()?;
            let on = vm.hypervisor.as_deref()?;
            (on != plan.netboot.server).then(|| format!("{} on {on}", host.hostname))
        })
        .collect();
    if !elsewhere.is_empty() {
        let _ = writeln!(
            out,
            "Local VMs of other machines (run `netbootd vms --hypervisor NAME` there): {}",
            elsewhere.join(", ")
        );
    }
    let mut cloud_rooms: Vec<&str> = plan
        .hosts
        .iter()
        .filter(|host| host.cloud().is_some())
        .filter_map(|host| host.room.as_deref())
        .collect();
    cloud_rooms.sort_unstable();
    cloud_rooms.dedup();
    if !cloud_rooms.is_empty() {
        let _ = writeln!(
            out,
            "Cloud encoders: `imgbuild publish ec2 --role encoder`, then `netbootd cloud up ROOM` for rooms {}",
            cloud_rooms.join(", ")
        );
    }
    let operator = plan.netboot.operator_address;
    if operator.ip().is_loopback() {
        let _ = writeln!(
            out,
            "Watch them come up on the dashboard: {}/ on this box; from a laptop, `ssh -L {port}:{operator} root@<this box>` and open http://localhost:{port}/",
            plan.netboot.operator_url,
            port = operator.port()
        );
    } else {
        let _ = writeln!(
            out,
            "Watch them come up on the dashboard: {}/",
            plan.netboot.operator_url
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_network_file_holds_the_servers_address_and_takes_nothing_from_the_lan() {
        let file = network_file("enp1s0", Ipv4Addr::new(10, 42, 0, 1), 24);
        for line in [
            "Name=enp1s0\n",
            "Address=10.42.0.1/24\n",
            "DHCP=no\n",
            "IPv6AcceptRA=no\n",
            "ConfigureWithoutCarrier=yes\n",
            "RequiredForOnline=no-carrier\n",
        ] {
            assert!(file.contains(line), "{line:?} missing:\n{file}");
        }
        assert_eq!(
            file,
            network_file("enp1s0", Ipv4Addr::new(10, 42, 0, 1), 24)
        );
        assert_ne!(
            file,
            network_file("enp1s0", Ipv4Addr::new(10, 42, 0, 1), 16)
        );
    }

    const PACKAGED: &str =
        "# Arguments for `netbootd`.\nNETBOOTD_ARGS=\"--config /etc/lectern/master.toml\"\n";

    #[test]
    fn netbootds_arguments_name_the_master_file_and_keep_the_rest() {
        let here = PathBuf::from("/etc/lectern/master.toml");
        assert_eq!(
            point_at_master(PACKAGED, &here),
            None,
            "the package's default"
        );
        let there = PathBuf::from("/srv/fosdem/master.toml");
        assert_eq!(
            point_at_master(PACKAGED, &there).unwrap(),
            "# Arguments for `netbootd`.\nNETBOOTD_ARGS=\"--config /srv/fosdem/master.toml\"\n"
        );
        // A local -v stays; the last assignment is the one that counts.
        let edited = format!("{PACKAGED}NETBOOTD_ARGS=\"-v --config=/etc/lectern/master.toml\"\n");
        assert_eq!(point_at_master(&edited, &here), None);
        assert!(
            point_at_master(&edited, &there)
                .unwrap()
                .ends_with("\nNETBOOTD_ARGS=\"-v --config=/srv/fosdem/master.toml\"\n")
        );
        assert_eq!(
            point_at_master("NETBOOTD_ARGS='-q'", &there).unwrap(),
            "NETBOOTD_ARGS=\"--config /srv/fosdem/master.toml -q\"\n"
        );
        assert_eq!(
            point_at_master("# emptied\n", &here).unwrap(),
            "# emptied\nNETBOOTD_ARGS=\"--config /etc/lectern/master.toml\"\n"
        );
        assert_eq!(
            point_at_master("NETBOOTD_ARGS=\"-v --config\"", &here).unwrap(),
            "NETBOOTD_ARGS=\"-v --config /etc/lectern/master.toml\"\n"
        );
    }

    #[test]
    fn ifupdown_stanzas_that_take_the_interface_are_found() {
        let interfaces = "source /etc/network/interfaces.d/*\nauto lo\niface lo inet loopback\n\nallow-hotplug enp1s0 enp2s0\niface enp2s0 inet dhcp\n";
        assert_eq!(
            ifupdown_line(interfaces, "enp1s0"),
            Some("allow-hotplug enp1s0 enp2s0")
        );
        assert_eq!(
            ifupdown_line(interfaces, "enp2s0"),
            Some("allow-hotplug enp1s0 enp2s0")
        );
        assert_eq!(ifupdown_line(interfaces, "lan0"), None);
        assert_eq!(ifupdown_line("# iface lan0 inet static\n", "lan0"), None);
        assert_eq!(
            ifupdown_line("iface lan0 inet static\n", "lan0"),
            Some("iface lan0 inet static")
        );
    }

    fn offer(server: [u8; 4], offered: Option<[u8; 4]>) -> Offer {
        Offer {
            server: server.into(),
            offered: offered.map(Ipv4Addr::from),
            pxe: offered.is_none(),
        }
    }

    #[test]
    fn in_authoritative_mode_any_other_dhcp_server_is_refused() {
        let listened = Duration::from_secs(4);
        let judge = |offers: &[Offer], here: &[String]| {
            judge_dhcp(DhcpMode::Authoritative, "lan0", offers, here, listened)
        };
        assert_eq!(
            judge(&[], &["netbootd (pid 7)".into()]),
            DhcpVerdict::Clear {
                heard: "no other DHCP server answered on lan0 within 4 s".into(),
                warning: None
            },
            "netbootd itself, running already, is no conflict"
        );
        let DhcpVerdict::Conflict(why) =
            judge(&[offer([10, 99, 0, 254], Some([10, 99, 0, 201]))], &[])
        else {
            panic!("a rogue server is a conflict");
        };
        assert!(
            why.starts_with(
                "another DHCP server answers on lan0: 10.99.0.254 (offered 10.99.0.201)"
            ),
            "{why}"
        );
        let DhcpVerdict::Conflict(why) = judge(&[], &["dnsmasq (pid 12)".into()]) else {
            panic!("a DHCP server on the box is a conflict");
        };
        assert!(why.contains("dnsmasq (pid 12)"), "{why}");
    }

    #[test]
    fn in_proxy_mode_the_venues_server_is_expected_and_another_boot_server_refused() {
        let listened = Duration::from_secs(4);
        let judge = |offers: &[Offer]| {
            judge_dhcp(
                DhcpMode::Proxy,
                "lan0",
                offers,
                &["dnsmasq (pid 12)".into()],
                listened,
            )
        };
        let DhcpVerdict::Clear { heard, warning } =
            judge(&[offer([10, 99, 0, 254], Some([10, 99, 0, 120]))])
        else {
            panic!("the venue's server is expected");
        };
        assert!(heard.contains("10.99.0.254 (offered 10.99.0.120)") && warning.is_none());
        let DhcpVerdict::Clear { warning, .. } = judge(&[]) else {
            panic!("silence is no conflict");
        };
        assert!(warning.unwrap().contains("none answered on lan0"));
        assert!(matches!(
            judge(&[offer([10, 99, 0, 5], None)]),
            DhcpVerdict::Conflict(why) if why.contains("proxyDHCP (boot) server answers on lan0: 10.99.0.5")
        ));
    }

    #[test]
    fn a_build_changes_the_images_and_layers_that_differ() {
        let snapshot = |images: &[(&str, &str)], layers: &[(&str, &str)]| StoreSnapshot {
            images: images
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            layers: layers
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
        };
        let before = snapshot(
            &[("encoder", "e1"), ("mixer", "m1")],
            &[("enc", "l1"), ("mix", "l2")],
        );
        assert_eq!(store_changes(&before, &before), (vec![], vec![]));
        let after = snapshot(
            &[("encoder", "e1"), ("mixer", "m1"), ("source", "s1")],
            &[("enc", "l3"), ("mix", "l2")],
        );
        assert_eq!(
            store_changes(&before, &after),
            (vec!["source".to_owned()], vec!["enc".to_owned()])
        );
        assert_eq!(
            store_changes(&StoreSnapshot::default(), &before).1,
            ["enc", "mix"]
        );
    }

    #[test]
    fn netbootd_is_started_restarted_reloaded_or_left_alone_as_the_change_needs() {
        let text = "old";
        assert_eq!(
            netbootd_action(false, false, Some(text), text, &[]),
            ServiceAction::Start
        );
        assert_eq!(
            netbootd_action(true, false, Some(text), text, &[]),
            ServiceAction::Nothing
        );
        assert_eq!(
            netbootd_action(true, false, Some(text), "new", &[]),
            ServiceAction::Reload("the master file changed".into())
        );
        assert_eq!(
            netbootd_action(true, false, Some(text), "new", &["network.dhcp.mode"]),
            ServiceAction::Restart("network.dhcp.mode changed".into())
        );
        assert_eq!(
            netbootd_action(true, true, Some(text), text, &[]),
            ServiceAction::Restart("its arguments changed".into())
        );
        assert!(matches!(
            netbootd_action(true, false, None, text, &[]),
            ServiceAction::Restart(_)
        ));
    }

    /// The example master file with its example secrets.
    fn example() -> Plan {
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let text = std::fs::read_to_string(examples.join("master.toml")).unwrap();
        lectern_master::load_text_without_secret_values(&examples.join("master.toml"), &text)
            .unwrap()
    }

    #[test]
    fn the_next_steps_list_the_machines_in_boot_order_and_the_dashboard() {
        let plan = example();
        let text = next_steps(&plan, &["cornil-enc".to_owned()]);
        let position = |needle: &str| {
            text.find(needle)
                .unwrap_or_else(|| panic!("{needle:?} missing:\n{text}"))
        };
        // Every physical netbooted host once, by name, MAC and role.
        for host in plan
            .hosts
            .iter()
            .filter(|h| h.netboot && h.vm().is_none() && h.cloud().is_none())
        {
            let mac = host.mac.unwrap().to_string();
            let line = text
                .lines()
                .find(|line| line.contains(&format!(" {} ", host.hostname)))
                .unwrap_or_else(|| panic!("{} missing:\n{text}", host.hostname));
            assert!(
                line.contains(&mac) && line.contains(host.role.as_str()),
                "{line}"
            );
        }
        // Room by room, the mixer before its sources.
        let mixer = plan
            .hosts
            .iter()
            .find(|h| h.role == lectern_master::Role::Mixer)
            .unwrap();
        let room = mixer.room.as_deref().unwrap();
        let source = plan
            .hosts
            .iter()
            .find(|h| h.role == lectern_master::Role::Source && h.room.as_deref() == Some(room))
            .unwrap();
        assert!(position(&format!("room {room} (")) < position(&mixer.hostname));
        assert!(position(&mixer.hostname) < position(&source.hostname));
        assert!(text.contains(
            "netbootd-vms.service runs on this box, netbooting by themselves: cornil-enc"
        ));
        assert!(
            text.contains("http://127.0.0.1:8081/ on this box; from a laptop, `ssh -L 8081:127.0.0.1:8081 root@<this box>`"),
            "{text}"
        );
    }
}
