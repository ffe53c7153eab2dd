//! `netbootd setup`: makes this box the netboot server its master file describes, and says what
//! it did. Run as root after installing the package, and again after every change to the
//! master file or the secrets: each step compares what is with what the file says and changes
//! only what differs.
//!
//! First it checks, changing nothing, and refuses when a check fails: the master file and its
//! secrets, that netbootd (user `lectern`) can read the master file and owns the store, that the
//! video LAN's interface exists and nothing else configures it, and that no other DHCP server
//! answers on it in authoritative mode (a DHCPDISCOVER sent from the interface, and a look for
//! another program holding UDP port 67 here). Then it applies: the interface's address with
//! systemd-networkd, every role image and host layer (`imgbuild all`, the binary installed
//! beside netbootd: the daemon does not link the image builder), netbootd's arguments in
//! /etc/default/netbootd, netbootd.service enabled and started (or reloaded, or restarted when
//! a setting only a restart applies changed), and netbootd-vms.service for this box's local
//! VMs (reloaded only when a VM's machine changed: the supervisor restarts just that one).
//! Running hosts keep what they booted; netbootd serves new layers and images from the store
//! by itself.
//!
//! Every system call goes through [`System`]; [`real::Real`] is this box.

pub mod real;
pub mod render;

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use lectern_master::Plan;
use lectern_master::model::DhcpMode;

use crate::dhcp::probe::Offer;
use crate::listing::some_of;
use crate::mac::MacAddr;
use crate::vms::{self, VmSpec};
use render::{DhcpVerdict, ServiceAction, StoreSnapshot};

/// The user netbootd.service runs as (the package's).
pub const SERVICE_USER: &str = "lectern";
pub const NETBOOTD_UNIT: &str = "netbootd.service";
pub const VMS_UNIT: &str = "netbootd-vms.service";
pub const JOURNAL_UNIT: &str = "lectern-journal-remote.service";
const NETWORKD_UNIT: &str = "systemd-networkd.service";
/// How long the probe listens for other DHCP servers (dnsmasq and ISC's first ping the
/// address they will offer, for up to a second or two).
pub const PROBE_TIME: Duration = Duration::from_secs(4);
/// Directories systemd's ProtectHome= hides from netbootd.
const HIDDEN_FROM_NETBOOTD: [&str; 3] = ["/home", "/root", "/run/user"];

/// An interface as the kernel has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub mac: MacAddr,
    pub is_bridge: bool,
    /// Administratively up.
    pub up: bool,
    pub carrier: bool,
    pub addresses: Vec<(Ipv4Addr, u8)>,
}

/// A systemd unit's state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnitState {
    pub installed: bool,
    pub enabled: bool,
    pub active: bool,
}

/// Everything the set-up asks of, or does to, the box.
pub trait System {
    fn is_root(&self) -> bool;
    /// systemd runs this box (it has /run/systemd/system).
    fn systemd_running(&self) -> bool;
    fn interface(&self, name: &str) -> Option<Interface>;
    fn interface_names(&self) -> Vec<String>;
    fn set_link_up(&mut self, name: &str, up: bool) -> Result<()>;
    /// Offers heard for DHCPDISCOVERs sent from `interface` as `mac`, within `listen`.
    fn probe_dhcp(&mut self, interface: &str, mac: MacAddr, listen: Duration)
    -> Result<Vec<Offer>>;
    /// Programs holding UDP port 67 here, as `name (pid N)`.
    fn dhcp_servers_here(&self) -> Vec<String>;
    fn user_id(&self, user: &str) -> Option<u32>;
    fn owner(&self, path: &Path) -> Option<u32>;
    fn readable_as(&self, user: &str, path: &Path) -> bool;
    /// Creates directory `path` (0750), owned by `uid`.
    fn create_owned_dir(&mut self, path: &Path, uid: u32) -> Result<()>;
    fn unit(&self, unit: &str) -> UnitState;
    fn systemctl(&mut self, args: &[&str]) -> Result<()>;
    fn networkctl(&mut self, args: &[&str]) -> Result<()>;
    /// `imgbuild --config MASTER all`, its output in `log`.
    fn build_images(&mut self, master: &Path, log: &Path) -> Result<()>;
    fn store_snapshot(&self, store: &Path) -> StoreSnapshot;
    /// `netbootd check`'s problems.
    fn netbootd_check(&self, master: &Path, paths: &Paths) -> Result<Vec<String>>;
    /// Something accepts TCP connections at `address`.
    fn answers(&self, address: SocketAddr) -> bool;
    /// The local VMs `netbootd vms` runs now, from its state file.
    fn running_vms(&self, paths: &Paths) -> Result<Vec<VmSpec>>;
    fn sleep(&self, duration: Duration);
}

/// Where the set-up reads and writes.
#[derive(Debug, Clone)]
pub struct Paths {
    /// The video LAN's systemd-networkd file.
    pub network_file: PathBuf,
    /// The units' arguments (the package's conffile).
    pub netbootd_default: PathBuf,
    /// ifupdown's configuration, and the directory its `source` line usually reads.
    pub ifupdown: PathBuf,
    pub ifupdown_dir: PathBuf,
    /// The set-up's own records (root's): the master file it last applied, imgbuild's log.
    pub setup_dir: PathBuf,
    /// netbootd's state directory (the units' `--state-dir`).
    pub state_dir: PathBuf,
    pub tftp_root: PathBuf,
}

impl Paths {
    /// This box's, as the package lays it out; `state_dir` and `tftp_root` as netbootd was told.
    pub fn production(state_dir: PathBuf, tftp_root: PathBuf) -> Paths {
        Paths {
            network_file: "/etc/systemd/network/10-lectern-video-lan.network".into(),
            netbootd_default: "/etc/default/netbootd".into(),
            ifupdown: "/etc/network/interfaces".into(),
            ifupdown_dir: "/etc/network/interfaces.d".into(),
            setup_dir: "/var/lib/lectern/setup".into(),
            state_dir,
            tftp_root,
        }
    }

    fn applied_master(&self) -> PathBuf {
        self.setup_dir.join("applied-master.toml")
    }

    fn imgbuild_log(&self) -> PathBuf {
        self.setup_dir.join("imgbuild.log")
    }
}

/// Why the set-up changed nothing.
#[derive(Debug)]
pub struct Refusal(pub String);

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}\nnothing was changed", self.0)
    }
}

impl std::error::Error for Refusal {}

fn refuse<T>(why: impl Into<String>) -> Result<T> {
    Err(Refusal(why.into()).into())
}

/// Prints each step as it ends: `ok` for a check, `done` for a change, `unchanged`, `warning`.
struct Report<'a> {
    out: &'a mut dyn Write,
}

impl Report<'_> {
    fn line(&mut self, status: &str, step: &str, detail: &str) {
        let _ = writeln!(self.out, "{status:<9} {step}: {detail}");
        let _ = self.out.flush();
    }
    fn ok(&mut self, step: &str, detail: &str) {
        self.line("ok", step, detail);
    }
    fn done(&mut self, step: &str, detail: &str) {
        self.line("done", step, detail);
    }
    fn unchanged(&mut self, step: &str, detail: &str) {
        self.line("unchanged", step, detail);
    }
    fn warning(&mut self, step: &str, detail: &str) {
        self.line("warning", step, detail);
    }
}

/// Sets this box up as `master` says (see the module's documentation). A [`Refusal`] error means
/// nothing was changed.
pub fn run(
    master: &Path,
    paths: &Paths,
    system: &mut dyn System,
    out: &mut dyn Write,
) -> Result<()> {
    let mut report = Report { out };
    let checked = check(master, paths, system, &mut report)?;
    apply(&checked, paths, system, &mut report)
}

/// What the checks established, for the changes.
struct Checked {
    master: PathBuf,
    master_text: String,
    plan: Plan,
    service_uid: u32,
    /// This box's local VMs, as the master file says.
    local_vms: Vec<VmSpec>,
}

fn check(
    master: &Path,
    paths: &Paths,
    system: &mut dyn System,
    report: &mut Report,
) -> Result<Checked> {
    if !system.is_root() {
        return refuse(
            "the set-up changes the box's network and services: run it as root (sudo netbootd setup …)",
        );
    }
    if !system.systemd_running() {
        return refuse(
            "systemd does not run this system: the set-up needs a box booted with systemd",
        );
    }
    let service_uid = system.user_id(SERVICE_USER);
    let units = system.unit(NETBOOTD_UNIT);
    let Some(service_uid) = service_uid.filter(|_| units.installed) else {
        return refuse(format!(
            "no `{SERVICE_USER}` user or no {NETBOOTD_UNIT}: install the lectern package first (apt install ./lectern_*.deb)"
        ));
    };
    let master = std::path::absolute(master).context("the master file's path")?;
    if master.display().to_string().contains(char::is_whitespace) {
        return refuse(format!(
            "{}: netbootd's unit splits its arguments at spaces: keep the master file at a path without any",
            master.display()
        ));
    }
    let plan = match lectern_master::load(&master) {
        Ok(plan) => plan,
        Err(problems) => return refuse(problems.to_string()),
    };
    let master_text = std::fs::read_to_string(&master)
        .with_context(|| format!("reading {}", master.display()))?;
    for warning in &plan.warnings {
        let _ = writeln!(report.out, "{warning}");
    }
    report.ok(
        "master file",
        &format!(
            "{}: {}, {}, {} netbooted; secrets from {}",
            master.display(),
            count(plan.rooms.len(), "room"),
            count(plan.hosts.len(), "host"),
            plan.netbooted().count(),
            plan.secrets_file.display()
        ),
    );

    // netbootd runs as `lectern`, with the home directories hidden.
    let store = &plan.netboot.store;
    for (what, path) in [("the master file", &master), ("the store", store)] {
        if let Some(hidden) = HIDDEN_FROM_NETBOOTD
            .iter()
            .find(|dir| path.starts_with(dir))
        {
            return refuse(format!(
                "{what} {} is under {hidden}, which netbootd.service cannot see (ProtectHome): keep it in /etc/lectern and /var/lib/lectern",
                path.display()
            ));
        }
    }
    if !system.readable_as(SERVICE_USER, &master) {
        return refuse(format!(
            "netbootd runs as `{SERVICE_USER}`, which cannot read {}: make it and its directories readable (chmod 644 {}; the secrets file stays 600, netbootd never reads it)",
            master.display(),
            master.display()
        ));
    }
    if let Some(owner) = system.owner(store) {
        if owner != service_uid {
            return refuse(format!(
                "the store {} is not owned by `{SERVICE_USER}`, and netbootd (running as that user) must read the hosts' secrets in it: set [netboot] store = \"/var/lib/lectern/store\" (the package's), or chown -R {SERVICE_USER}: {}",
                store.display(),
                store.display()
            ));
        }
    } else if !store.parent().is_some_and(Path::is_dir) {
        return refuse(format!(
            "the store {} cannot be made: its parent directory does not exist",
            store.display()
        ));
    }

    let name = &plan.network.dhcp.interface;
    let Some(interface) = system.interface(name) else {
        return refuse(format!(
            "the video LAN's interface {name} (network.dhcp.interface in {}) does not exist on this box; its interfaces: {}",
            master.display(),
            system.interface_names().join(", ")
        ));
    };
    let mut ifupdown = vec![paths.ifupdown.clone()];
    if let Ok(entries) = std::fs::read_dir(&paths.ifupdown_dir) {
        let mut files: Vec<PathBuf> = entries.flatten().map(|entry| entry.path()).collect();
        files.sort();
        ifupdown.extend(files);
    }
    for file in ifupdown {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        if let Some(line) = render::ifupdown_line(&text, name) {
            return refuse(format!(
                "{} configures {name} with ifupdown (`{line}`): remove that, so that systemd-networkd alone configures the video LAN (ifdown {name} first)",
                file.display()
            ));
        }
    }
    let local_vms = vms::local_vms(&plan, &plan.netboot.server)?;
    if !local_vms.is_empty() && !interface.is_bridge {
        return refuse(format!(
            "{name} is not a bridge, and the local VMs of this box ({}) join the video LAN through taps on network.dhcp.interface: make a bridge holding the LAN's port (a systemd-networkd .netdev and .network) and name it there",
            local_vms
                .iter()
                .map(|vm| vm.hostname.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    report.ok(
        "interface",
        &format!(
            "{name} ({}{})",
            interface.mac,
            if interface.is_bridge {
                ", a bridge"
            } else {
                ""
            }
        ),
    );

    match probe(&plan, &interface, system)? {
        DhcpVerdict::Conflict(why) => return refuse(why),
        DhcpVerdict::Clear { heard, warning } => {
            report.ok("DHCP", &heard);
            if let Some(warning) = warning {
                report.warning("DHCP", &warning);
            }
        }
    }
    Ok(Checked {
        master,
        master_text,
        plan,
        service_uid,
        local_vms,
    })
}

/// Listens for other DHCP servers on the video LAN; the interface's state is left as it was.
fn probe(plan: &Plan, interface: &Interface, system: &mut dyn System) -> Result<DhcpVerdict> {
    let name = &plan.network.dhcp.interface;
    let was_down = !interface.up;
    if was_down {
        system.set_link_up(name, true)?;
    }
    // A NIC just brought up negotiates its link for a few seconds.
    let mut carrier = interface.carrier;
    for _ in 0..60 {
        if carrier {
            break;
        }
        system.sleep(Duration::from_millis(100));
        carrier = system.interface(name).is_some_and(|now| now.carrier);
    }
    let heard = if carrier {
        system.probe_dhcp(name, interface.mac, PROBE_TIME)
    } else {
        Ok(Vec::new())
    };
    if was_down {
        system.set_link_up(name, false)?;
    }
    let heard = heard.with_context(|| format!("probing for DHCP servers on {name}"))?;
    if !carrier {
        return Ok(DhcpVerdict::Clear {
            heard: format!("{name} has no link, so no DHCP server could answer"),
            warning: Some(format!(
                "{name} has no link: plug it into the video LAN's switch; another DHCP server there would go unnoticed until the next set-up"
            )),
        });
    }
    // netbootd itself, running already, never hears a probe sent on a packet socket; should one
    // come back from its address, it is its own.
    let ours = system
        .unit(NETBOOTD_UNIT)
        .active
        .then_some(plan.netboot.server_ip);
    let others: Vec<Offer> = heard
        .into_iter()
        .filter(|offer| Some(offer.server) != ours)
        .collect();
    let mode = plan.network.dhcp.mode;
    let here = match mode {
        DhcpMode::Authoritative => system.dhcp_servers_here(),
        // Beside the venue's server a proxy may share the box with it.
        DhcpMode::Proxy => Vec::new(),
    };
    Ok(render::judge_dhcp(mode, name, &others, &here, PROBE_TIME))
}

fn apply(
    checked: &Checked,
    paths: &Paths,
    system: &mut dyn System,
    report: &mut Report,
) -> Result<()> {
    let plan = &checked.plan;
    configure_network(plan, paths, system, report)?;
    build(checked, paths, system, report)?;

    let problems = system.netbootd_check(&checked.master, paths)?;
    if !problems.is_empty() {
        bail!(
            "netbootd check found problems; netbootd was not started:\n{}",
            problems
                .iter()
                .map(|p| format!("  {p}"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    report.ok(
        "netbootd check",
        &format!("{} netbooted hosts can boot", plan.netbooted().count()),
    );

    let default = std::fs::read_to_string(&paths.netbootd_default).unwrap_or_default();
    let arguments_changed = match render::point_at_master(&default, &checked.master) {
        Some(text) => {
            write_file(&paths.netbootd_default, &text)?;
            report.done(
                &paths.netbootd_default.display().to_string(),
                &format!("netbootd's arguments name {}", checked.master.display()),
            );
            true
        }
        None => {
            report.unchanged(
                &paths.netbootd_default.display().to_string(),
                &format!("netbootd's arguments name {}", checked.master.display()),
            );
            false
        }
    };

    // The master file as the last set-up applied it, to tell what changed since.
    let applied = std::fs::read_to_string(paths.applied_master()).ok();
    let applied = applied.as_deref();
    start_netbootd(checked, applied, arguments_changed, system, report)?;
    start_journal_receiver(checked, applied, arguments_changed, system, report)?;
    start_local_vms(checked, paths, arguments_changed, system, report)?;
    std::fs::create_dir_all(&paths.setup_dir)?;
    write_file(&paths.applied_master(), &checked.master_text)?;
    let names: Vec<String> = checked
        .local_vms
        .iter()
        .map(|vm| vm.hostname.clone())
        .collect();
    let _ = write!(report.out, "\n{}", render::next_steps(plan, &names));
    Ok(())
}

fn configure_network(
    plan: &Plan,
    paths: &Paths,
    system: &mut dyn System,
    report: &mut Report,
) -> Result<()> {
    let name = &plan.network.dhcp.interface;
    let address = (plan.netboot.server_ip, plan.network.prefix_len);
    let wanted = render::network_file(name, address.0, address.1);
    let file = &paths.network_file;
    let written = std::fs::read_to_string(file).ok().as_deref() != Some(wanted.as_str());
    let networkd = system.unit(NETWORKD_UNIT);
    let present = |system: &dyn System| {
        system
            .interface(name)
            .is_some_and(|interface| interface.addresses.contains(&address))
    };
    if !written && networkd.enabled && networkd.active && present(system) {
        report.unchanged(
            "network",
            &format!("{}/{} on {name} ({})", address.0, address.1, file.display()),
        );
        return Ok(());
    }
    let mut did = Vec::new();
    if written {
        write_file(file, &wanted)?;
        did.push(format!("wrote {}", file.display()));
    }
    if !networkd.enabled || !networkd.active {
        system.systemctl(&["enable", "--now", NETWORKD_UNIT])?;
        did.push(format!(
            "enabled and started {NETWORKD_UNIT} (it configures only what its .network files name)"
        ));
    }
    system.networkctl(&["reload"])?;
    system.networkctl(&["reconfigure", name])?;
    for _ in 0..100 {
        if present(system) {
            report.done(
                "network",
                &format!("{}/{} on {name}: {}", address.0, address.1, did.join("; ")),
            );
            return Ok(());
        }
        system.sleep(Duration::from_millis(200));
    }
    bail!(
        "systemd-networkd did not put {}/{} on {name} within 20 s (networkctl status {name}; journalctl -u {NETWORKD_UNIT})",
        address.0,
        address.1
    )
}

fn build(
    checked: &Checked,
    paths: &Paths,
    system: &mut dyn System,
    report: &mut Report,
) -> Result<()> {
    let store = &checked.plan.netboot.store;
    if system.owner(store).is_none() {
        system.create_owned_dir(store, checked.service_uid)?;
        report.done(
            "store",
            &format!("made {}, owned by {SERVICE_USER}", store.display()),
        );
    }
    let before = system.store_snapshot(store);
    let log = paths.imgbuild_log();
    std::fs::create_dir_all(&paths.setup_dir)?;
    if before.images.is_empty() {
        let _ = writeln!(
            report.out,
            "          images: building every role image and host layer with imgbuild (minutes, the first time; log: {})",
            log.display()
        );
    }
    system.build_images(&checked.master, &log)?;
    let after = system.store_snapshot(store);
    let (images, layers) = render::store_changes(&before, &after);
    let roles: Vec<String> = after.images.keys().cloned().collect();
    if images.is_empty() {
        report.unchanged("images", &some_of(&roles, 8));
    } else {
        report.done("images", &format!("new image for {}", some_of(&images, 8)));
    }
    if layers.is_empty() {
        report.unchanged("host layers", &format!("{} hosts", after.layers.len()));
    } else {
        report.done(
            "host layers",
            &format!("new layer for {}", some_of(&layers, 8)),
        );
    }
    Ok(())
}

fn start_netbootd(
    checked: &Checked,
    applied: Option<&str>,
    arguments_changed: bool,
    system: &mut dyn System,
    report: &mut Report,
) -> Result<()> {
    let unit = system.unit(NETBOOTD_UNIT);
    let restart_for = match applied {
        Some(text) if text != checked.master_text => restart_settings(checked, text),
        _ => Vec::new(),
    };
    let restart_for: Vec<&str> = restart_for.iter().map(String::as_str).collect();
    let action = render::netbootd_action(
        unit.active,
        arguments_changed,
        applied,
        &checked.master_text,
        &restart_for,
    );
    let mut did = enable(system, NETBOOTD_UNIT, &unit)?;
    match &action {
        ServiceAction::Start => {
            system.systemctl(&["start", NETBOOTD_UNIT])?;
            did.push("started".to_owned());
        }
        ServiceAction::Restart(why) => {
            system.systemctl(&["restart", NETBOOTD_UNIT])?;
            did.push(format!("restarted ({why})"));
        }
        ServiceAction::Reload(why) => {
            system.systemctl(&["reload", NETBOOTD_UNIT])?;
            did.push(format!("reloaded ({why})"));
        }
        ServiceAction::Nothing => {}
    }
    if did.is_empty() {
        report.unchanged(
            NETBOOTD_UNIT,
            "enabled and running; it picks up new images and layers from the store by itself",
        );
        return Ok(());
    }
    let operator = checked.plan.netboot.operator_address;
    for _ in 0..75 {
        if system.unit(NETBOOTD_UNIT).active && system.answers(operator) {
            report.done(NETBOOTD_UNIT, &did.join(", "));
            return Ok(());
        }
        system.sleep(Duration::from_millis(200));
    }
    bail!(
        "{NETBOOTD_UNIT} is not serving after it was {}: journalctl -u netbootd says why",
        did.join(", ")
    )
}

/// The hosts' journals' receiver: enabled and running, and restarted when the address it listens
/// on (the netboot machine's, `[netboot] journal_port`) or its arguments changed.
fn start_journal_receiver(
    checked: &Checked,
    applied: Option<&str>,
    arguments_changed: bool,
    system: &mut dyn System,
    report: &mut Report,
) -> Result<()> {
    let unit = system.unit(JOURNAL_UNIT);
    let listen = |plan: &Plan| (plan.netboot.server_ip, plan.netboot.journal_port);
    let moved = applied
        .and_then(|applied| {
            lectern_master::load_text_without_secret_values(&checked.master, applied).ok()
        })
        .is_some_and(|old| listen(&old) != listen(&checked.plan));
    let (ip, port) = listen(&checked.plan);
    let mut did = enable(system, JOURNAL_UNIT, &unit)?;
    if !unit.active {
        system.systemctl(&["start", JOURNAL_UNIT])?;
        did.push(format!("started on {ip}:{port}"));
    } else if arguments_changed || moved {
        system.systemctl(&["restart", JOURNAL_UNIT])?;
        did.push(format!("restarted on {ip}:{port}"));
    }
    if did.is_empty() {
        report.unchanged(JOURNAL_UNIT, &format!("receiving on {ip}:{port}"));
    } else {
        report.done(JOURNAL_UNIT, &did.join(", "));
    }
    Ok(())
}

/// The settings between the master file last applied (`applied`) and now that only a restart of
/// netbootd applies; all of them when the old one no longer reads.
fn restart_settings(checked: &Checked, applied: &str) -> Vec<String> {
    let configs = || -> Result<(crate::server::ServerConfig, crate::server::ServerConfig)> {
        let old = lectern_master::load_text_without_secret_values(&checked.master, applied)
            .map_err(|problems| anyhow::anyhow!("{problems}"))?;
        let store = lectern_store::Store::open(&checked.plan.netboot.store)?;
        let config = |plan: &Plan| {
            crate::plan_policy::server_config(plan, &store, PathBuf::new(), PathBuf::new())
        };
        Ok((config(&old)?, config(&checked.plan)?))
    };
    match configs() {
        Ok((old, new)) => crate::server::needs_restart(&old, &new)
            .into_iter()
            .map(str::to_owned)
            .collect(),
        Err(_) => vec!["the master file last applied, which no longer reads,".to_owned()],
    }
}

fn start_local_vms(
    checked: &Checked,
    paths: &Paths,
    arguments_changed: bool,
    system: &mut dyn System,
    report: &mut Report,
) -> Result<()> {
    let unit = system.unit(VMS_UNIT);
    let here = &checked.plan.netboot.server;
    if checked.local_vms.is_empty() {
        if unit.enabled || unit.active {
            system.systemctl(&["disable", "--now", VMS_UNIT])?;
            report.done(
                VMS_UNIT,
                &format!("stopped and disabled: no local VMs on {here} any more"),
            );
        } else {
            report.unchanged(VMS_UNIT, &format!("not needed: no local VMs on {here}"));
        }
        return Ok(());
    }
    let names = |vms: &[VmSpec]| {
        vms.iter()
            .map(|vm| vm.hostname.clone())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut did = enable(system, VMS_UNIT, &unit)?;
    if !unit.active {
        system.systemctl(&["start", VMS_UNIT])?;
        did.push(format!("started {}", names(&checked.local_vms)));
    } else if arguments_changed {
        system.systemctl(&["restart", VMS_UNIT])?;
        did.push(format!(
            "restarted {} (its arguments changed)",
            names(&checked.local_vms)
        ));
    } else {
        let running = system.running_vms(paths)?;
        let changes = vms::changes(&running, &checked.local_vms);
        if !changes.is_empty() {
            system.systemctl(&["reload", VMS_UNIT])?;
            did.extend(changes.iter().map(vms::VmChange::describe));
        }
    }
    if did.is_empty() {
        report.unchanged(VMS_UNIT, &format!("running {}", names(&checked.local_vms)));
    } else {
        report.done(VMS_UNIT, &did.join("; "));
    }
    Ok(())
}

/// Enables `name` (in state `unit`) unless it is: what was done to it so far.
fn enable(system: &mut dyn System, name: &str, unit: &UnitState) -> Result<Vec<String>> {
    if unit.enabled {
        return Ok(Vec::new());
    }
    system.systemctl(&["enable", name])?;
    Ok(vec!["enabled".to_owned()])
}

/// `1 room`, `2 rooms`.
fn count(n: usize, thing: &str) -> String {
    format!("{n} {thing}{}", if n == 1 { "" } else { "s" })
}

/// Writes `text` to `path` whole (a reader never sees half of it), 0644.
fn write_file(path: &Path, text: &str) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    lectern_store::write_atomic(path, |file| {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o644))?;
        file.write_all(text.as_bytes())
    })
    .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests;
