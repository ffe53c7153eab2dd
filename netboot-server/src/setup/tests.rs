//! The set-up against a box that only records what is asked of it: what it changes, what it
//! leaves, and that a refusal changes nothing.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::*;

const LECTERN_UID: u32 = 990;
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
const PACKAGED_DEFAULT: &str =
    "# Arguments for `netbootd`.\nNETBOOTD_ARGS=\"--config /etc/lectern/master.toml\"\n";

/// A box that does what it is told to its own state and records every change it is asked for.
struct Fake {
    root: bool,
    interfaces: BTreeMap<String, Interface>,
    offers: Vec<Offer>,
    servers_here: Vec<String>,
    readable: bool,
    owners: BTreeMap<PathBuf, u32>,
    units: BTreeMap<String, UnitState>,
    store: StoreSnapshot,
    /// What the next `imgbuild all` leaves in the store.
    built: StoreSnapshot,
    vms: Vec<VmSpec>,
    changes: Vec<String>,
}

impl Fake {
    fn new(store: &Path) -> Fake {
        let lan = Interface {
            mac: MacAddr([0x52, 0x54, 0, 0xaa, 0, 1]),
            is_bridge: true,
            up: false,
            carrier: false,
            addresses: Vec::new(),
        };
        let installed = UnitState {
            installed: true,
            ..UnitState::default()
        };
        Fake {
            root: true,
            interfaces: BTreeMap::from([("br0".to_owned(), lan)]),
            offers: Vec::new(),
            servers_here: Vec::new(),
            readable: true,
            owners: BTreeMap::from([(store.to_owned(), LECTERN_UID)]),
            units: [NETBOOTD_UNIT, JOURNAL_UNIT, VMS_UNIT, NETWORKD_UNIT]
                .into_iter()
                .map(|unit| (unit.to_owned(), installed))
                .collect(),
            store: StoreSnapshot::default(),
            built: snapshot(
                &[("encoder", "e1"), ("mixer", "m1")],
                &[("lameere-enc", "l1"), ("lameere-mixer", "l2")],
            ),
            vms: Vec::new(),
            changes: Vec::new(),
        }
    }

    fn unit_mut(&mut self, unit: &str) -> &mut UnitState {
        self.units.entry(unit.to_owned()).or_default()
    }
}

fn snapshot(images: &[(&str, &str)], layers: &[(&str, &str)]) -> StoreSnapshot {
    let map = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    };
    StoreSnapshot {
        images: map(images),
        layers: map(layers),
    }
}

impl System for Fake {
    fn is_root(&self) -> bool {
        self.root
    }
    fn systemd_running(&self) -> bool {
        true
    }
    fn interface(&self, name: &str) -> Option<Interface> {
        self.interfaces.get(name).cloned()
    }
    fn interface_names(&self) -> Vec<String> {
        self.interfaces.keys().cloned().collect()
    }
    fn set_link_up(&mut self, name: &str, up: bool) -> Result<()> {
        let interface = self.interfaces.get_mut(name).unwrap();
        interface.up = up;
        // The switch is there: a link up has carrier.
        interface.carrier = up;
        self.changes
            .push(format!("link {name} {}", if up { "up" } else { "down" }));
        Ok(())
    }
    fn probe_dhcp(&mut self, interface: &str, _: MacAddr, _: Duration) -> Result<Vec<Offer>> {
        assert!(
            self.interfaces[interface].up,
            "probing on a link that is down"
        );
        Ok(self.offers.clone())
    }
    fn dhcp_servers_here(&self) -> Vec<String> {
        self.servers_here.clone()
    }
    fn user_id(&self, user: &str) -> Option<u32> {
        (user == SERVICE_USER).then_some(LECTERN_UID)
    }
    fn owner(&self, path: &Path) -> Option<u32> {
        self.owners.get(path).copied()
    }
    fn readable_as(&self, _: &str, _: &Path) -> bool {
        self.readable
    }
    fn create_owned_dir(&mut self, path: &Path, uid: u32) -> Result<()> {
        self.owners.insert(path.to_owned(), uid);
        self.changes.push(format!("mkdir {}", path.display()));
        Ok(())
    }
    fn unit(&self, unit: &str) -> UnitState {
        self.units.get(unit).copied().unwrap_or_default()
    }
    fn systemctl(&mut self, args: &[&str]) -> Result<()> {
        self.changes.push(format!("systemctl {}", args.join(" ")));
        let unit = args.last().unwrap();
        match args {
            ["enable", "--now", _] => {
                *self.unit_mut(unit) = UnitState {
                    installed: true,
                    enabled: true,
                    active: true,
                }
            }
            ["disable", "--now", _] => {
                *self.unit_mut(unit) = UnitState {
                    installed: true,
                    enabled: false,
                    active: false,
                }
            }
            ["enable", _] => self.unit_mut(unit).enabled = true,
            ["start", _] => self.unit_mut(unit).active = true,
            ["restart" | "reload", _] => {}
            _ => panic!("unexpected systemctl {args:?}"),
        }
        Ok(())
    }
    fn networkctl(&mut self, args: &[&str]) -> Result<()> {
        self.changes.push(format!("networkctl {}", args.join(" ")));
        if let ["reconfigure", name] = args {
            let interface = self.interfaces.get_mut(*name).unwrap();
            interface.up = true;
            interface.carrier = true;
            interface.addresses = vec![(SERVER, 24)];
        }
        Ok(())
    }
    fn build_images(&mut self, _: &Path, _: &Path) -> Result<()> {
        self.changes.push("imgbuild all".to_owned());
        self.store = self.built.clone();
        Ok(())
    }
    fn store_snapshot(&self, _: &Path) -> StoreSnapshot {
        self.store.clone()
    }
    fn netbootd_check(&self, _: &Path, _: &Paths) -> Result<Vec<String>> {
        Ok(Vec::new())
    }
    fn answers(&self, _: SocketAddr) -> bool {
        true
    }
    fn running_vms(&self, _: &Paths) -> Result<Vec<VmSpec>> {
        Ok(self.vms.clone())
    }
    fn sleep(&self, _: Duration) {}
}

/// The fixture's master file (one room, its encoder and backend local VMs on this box, the
/// LAN on br0) and secrets in a directory of their own, with the box's paths beside them.
struct Setting {
    dir: tempfile::TempDir,
    master: PathBuf,
    paths: Paths,
    fake: Fake,
}

impl Setting {
    fn new() -> Setting {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../builder/tests/fixtures");
        let master = dir.path().join("master.toml");
        std::fs::copy(fixtures.join("master.toml"), &master).unwrap();
        let secrets = dir.path().join("fixture-secrets.toml");
        std::fs::copy(fixtures.join("fixture-secrets.toml"), &secrets).unwrap();
        std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o600)).unwrap();
        let store = dir.path().join("store");
        lectern_store::Store::create(&store).unwrap();
        let root = dir.path().join("root");
        let paths = Paths {
            network_file: root.join("etc/systemd/network/10-lectern-video-lan.network"),
            netbootd_default: root.join("etc/default/netbootd"),
            ifupdown: root.join("etc/network/interfaces"),
            ifupdown_dir: root.join("etc/network/interfaces.d"),
            setup_dir: root.join("var/lib/lectern/setup"),
            state_dir: root.join("var/lib/netbootd"),
            tftp_root: "/usr/lib/ipxe".into(),
        };
        std::fs::create_dir_all(paths.netbootd_default.parent().unwrap()).unwrap();
        std::fs::write(&paths.netbootd_default, PACKAGED_DEFAULT).unwrap();
        let fake = Fake::new(&store);
        Setting {
            dir,
            master,
            paths,
            fake,
        }
    }

    /// Runs the set-up; its output, or its error. The changes it asked for are in `fake.changes`.
    fn run(&mut self) -> Result<String, String> {
        self.fake.changes.clear();
        let mut out = Vec::new();
        let result = run(&self.master, &self.paths, &mut self.fake, &mut out);
        let out = String::from_utf8(out).unwrap();
        match result {
            Ok(()) => Ok(out),
            Err(error) if error.is::<Refusal>() => Err(format!("refused: {error}")),
            Err(error) => Err(format!("failed: {error:#}\n{out}")),
        }
    }

    fn edit(&self, from: &str, to: &str) {
        let text = std::fs::read_to_string(&self.master).unwrap();
        assert!(text.contains(from), "the fixture has no {from:?}");
        std::fs::write(&self.master, text.replacen(from, to, 1)).unwrap();
    }

    /// What the set-up may write: the network file, netbootd's arguments, its own record.
    fn files(&self) -> Vec<Option<String>> {
        [
            &self.paths.network_file,
            &self.paths.netbootd_default,
            &self.paths.applied_master(),
        ]
        .iter()
        .map(|path| std::fs::read_to_string(path).ok())
        .collect()
    }

    /// Runs it once successfully and records what runs then, as the box would.
    fn first_run(&mut self) -> String {
        let out = self.run().unwrap();
        let plan = lectern_master::load(&self.master).unwrap();
        self.fake.vms = vms::local_vms(&plan, "control").unwrap();
        out
    }
}

/// The step lines of `out` with the given status.
fn lines<'o>(out: &'o str, status: &str) -> Vec<&'o str> {
    out.lines()
        .filter(|line| line.split_whitespace().next() == Some(status))
        .collect()
}

#[test]
fn a_first_run_configures_builds_and_starts_everything() {
    let mut setting = Setting::new();
    let out = setting.first_run();
    let store = setting.dir.path().join("store");
    assert_eq!(
        setting.fake.changes,
        [
            "link br0 up",
            "link br0 down",
            "systemctl enable --now systemd-networkd.service",
            "networkctl reload",
            "networkctl reconfigure br0",
            "imgbuild all",
            "systemctl enable netbootd.service",
            "systemctl start netbootd.service",
            "systemctl enable lectern-journal-remote.service",
            "systemctl start lectern-journal-remote.service",
            "systemctl enable netbootd-vms.service",
            "systemctl start netbootd-vms.service",
        ],
        "{out}"
    );
    let done = lines(&out, "done");
    assert_eq!(done.len(), 7, "{out}");
    for (line, wanted) in done.iter().zip([
        "network: 10.99.0.1/24 on br0: wrote ",
        "images: new image for encoder, mixer",
        "host layers: new layer for lameere-enc, lameere-mixer",
        "netbootd: netbootd's arguments name ",
        "netbootd.service: enabled, started",
        "lectern-journal-remote.service: enabled, started on 10.99.0.1:19532",
        "netbootd-vms.service: enabled; started lameere-enc, stream-backend",
    ]) {
        assert!(line.contains(wanted), "{wanted:?} not in {line:?}:\n{out}");
    }
    assert!(
        out.contains("ok        DHCP: no other DHCP server answered on br0 within 4 s"),
        "{out}"
    );
    let network = std::fs::read_to_string(&setting.paths.network_file).unwrap();
    assert!(network.contains("Name=br0\n") && network.contains("Address=10.99.0.1/24\n"));
    let arguments = std::fs::read_to_string(&setting.paths.netbootd_default).unwrap();
    assert!(
        arguments.ends_with(&format!(
            "NETBOOTD_ARGS=\"--config {}\"\n",
            setting.master.display()
        )),
        "{arguments}"
    );
    assert!(
        out.contains("lameere-mixer") && out.contains("8c:16:45:00:e6:f6"),
        "{out}"
    );
    assert!(
        !out.contains("lectern-test-secret"),
        "a secret in the output:\n{out}"
    );
    assert!(
        !(setting.fake.changes.iter()).any(|change| change.contains(&store.display().to_string())),
        "the package's store is used as it is"
    );
    if std::env::var_os("LECTERN_SHOW_SETUP").is_some() {
        eprintln!("{out}");
    }
}

#[test]
fn a_second_run_without_a_change_changes_nothing() {
    let mut setting = Setting::new();
    setting.first_run();
    let files = setting.files();
    let out = setting.run().unwrap();
    assert_eq!(setting.fake.changes, ["imgbuild all"], "{out}");
    assert_eq!(lines(&out, "done"), Vec::<&str>::new(), "{out}");
    assert_eq!(lines(&out, "unchanged").len(), 7, "{out}");
    assert_eq!(setting.files(), files);
}

#[test]
fn a_new_bitrate_rebuilds_the_layers_and_reloads_netbootd_alone() {
    let mut setting = Setting::new();
    setting.first_run();
    setting.edit("video_kbps = 3000", "video_kbps = 2500");
    setting
        .fake
        .built
        .layers
        .insert("lameere-enc".into(), "l9".into());
    let out = setting.run().unwrap();
    assert_eq!(
        setting.fake.changes,
        ["imgbuild all", "systemctl reload netbootd.service"],
        "{out}"
    );
    assert_eq!(
        lines(&out, "done"),
        [
            "done      host layers: new layer for lameere-enc",
            "done      netbootd.service: reloaded (the master file changed)",
        ],
        "{out}"
    );
}

#[test]
fn a_new_journal_port_restarts_the_journal_receiver() {
    let mut setting = Setting::new();
    setting.first_run();
    setting.edit("[netboot]\n", "[netboot]\njournal_port = 19600\n");
    let out = setting.run().unwrap();
    assert!(
        setting
            .fake
            .changes
            .contains(&"systemctl restart lectern-journal-remote.service".to_owned()),
        "{out}"
    );
    assert!(
        out.contains("done      lectern-journal-remote.service: restarted on 10.99.0.1:19600"),
        "{out}"
    );
}

#[test]
fn a_vm_whose_machine_changed_is_the_only_one_restarted() {
    let mut setting = Setting::new();
    setting.first_run();
    setting.edit("memory_mb = 1536", "memory_mb = 2048");
    let out = setting.run().unwrap();
    assert_eq!(
        setting.fake.changes,
        [
            "imgbuild all",
            "systemctl reload netbootd.service",
            "systemctl reload netbootd-vms.service"
        ],
        "{out}"
    );
    assert!(
        out.contains(
            "done      netbootd-vms.service: lameere-enc: restarted (memory 1536 -> 2048 MiB)\n"
        ),
        "{out}"
    );
}

#[test]
fn a_setting_only_a_restart_applies_restarts_netbootd() {
    let mut setting = Setting::new();
    setting.first_run();
    setting.edit("http_port = 8080", "http_port = 8088");
    let out = setting.run().unwrap();
    assert!(
        setting
            .fake
            .changes
            .contains(&"systemctl restart netbootd.service".to_owned())
    );
    assert!(
        out.contains("done      netbootd.service: restarted (netboot.http_port changed)"),
        "{out}"
    );
}

#[test]
fn without_local_vms_here_their_service_is_left_off_and_stopped_when_they_go() {
    let mut setting = Setting::new();
    setting.first_run();
    // Both VMs become machines of their own.
    for _ in 0..2 {
        setting.edit(
            "where = \"local-vm\"\nhost = \"control\"",
            "where = \"bare-metal\"",
        );
    }
    setting.edit("vcpus = 1\nmemory_mb = 1536\n", "");
    let out = setting.run().unwrap();
    assert!(
        out.contains(
            "done      netbootd-vms.service: stopped and disabled: no local VMs on control any more"
        ),
        "{out}"
    );
    let out = setting.run().unwrap();
    assert!(
        out.contains("unchanged netbootd-vms.service: not needed: no local VMs on control"),
        "{out}"
    );
    // They are machines to switch on now.
    assert!(
        out.contains("stream-backend") && out.contains("52:54:00:00:01:02  streaming-backend"),
        "{out}"
    );
}

/// Runs the set-up expecting a refusal that changes nothing; the refusal.
fn refused(setting: &mut Setting) -> String {
    let files = setting.files();
    let units = setting.fake.units.clone();
    let why = setting.run().unwrap_err();
    assert!(
        why.starts_with("refused: ") && why.ends_with("\nnothing was changed"),
        "{why}"
    );
    let changed: Vec<&String> = (setting.fake.changes.iter())
        .filter(|change| !change.starts_with("link "))
        .collect();
    assert_eq!(changed, Vec::<&String>::new(), "{why}");
    assert_eq!(setting.files(), files, "{why}");
    assert_eq!(setting.fake.units, units, "{why}");
    let link = &setting.fake.interfaces.get("br0").map(|i| i.up);
    assert_ne!(link, &Some(true), "the probe left the link up: {why}");
    why
}

#[test]
fn an_invalid_master_file_is_refused_naming_file_line_and_field() {
    let mut setting = Setting::new();
    setting.edit("mac = \"8c:16:45:00:e6:f6\"", "mac = \"8c:16:45:00:e6\"");
    let why = refused(&mut setting);
    assert!(why.contains("master.toml:") && why.contains("mac"), "{why}");
}

#[test]
fn a_missing_interface_is_refused_naming_those_there_are() {
    let mut setting = Setting::new();
    setting.edit("interface = \"br0\"", "interface = \"lan9\"");
    let why = refused(&mut setting);
    assert!(
        why.contains("the video LAN's interface lan9 (network.dhcp.interface in ")
            && why.contains("its interfaces: br0"),
        "{why}"
    );
}

#[test]
fn another_dhcp_server_on_the_lan_is_refused_in_authoritative_mode() {
    let mut setting = Setting::new();
    setting.fake.offers = vec![Offer {
        server: Ipv4Addr::new(10, 99, 0, 254),
        offered: Some(Ipv4Addr::new(10, 99, 0, 201)),
        pxe: false,
    }];
    let why = refused(&mut setting);
    assert!(
        why.contains("another DHCP server answers on br0: 10.99.0.254 (offered 10.99.0.201)"),
        "{why}"
    );
    assert!(
        setting.fake.changes.contains(&"link br0 up".to_owned()),
        "it did probe"
    );

    // Beside it, in proxy mode, the set-up goes ahead.
    setting.edit("mode = \"authoritative\"", "mode = \"proxy\"");
    setting.edit("range = [\"10.99.0.200\", \"10.99.0.250\"]\n", "");
    let out = setting.run().unwrap();
    assert!(
        out.contains("the venue's DHCP server answers on br0, as proxy mode expects: 10.99.0.254"),
        "{out}"
    );
}

#[test]
fn a_dhcp_server_on_this_box_is_refused_but_netbootd_itself_is_not() {
    let mut setting = Setting::new();
    setting.fake.servers_here = vec!["dnsmasq (pid 12)".into()];
    let why = refused(&mut setting);
    assert!(
        why.contains("another DHCP server runs on this box, holding UDP port 67: dnsmasq (pid 12)"),
        "{why}"
    );
    setting.fake.servers_here = vec!["netbootd (pid 13)".into()];
    setting.run().unwrap();
}

#[test]
fn what_netbootd_could_not_read_or_reach_is_refused() {
    let mut setting = Setting::new();
    setting.fake.readable = false;
    let why = refused(&mut setting);
    assert!(why.contains("which cannot read "), "{why}");

    let mut setting = Setting::new();
    let store = setting.dir.path().join("store");
    setting.fake.owners.insert(store, 0);
    let why = refused(&mut setting);
    assert!(why.contains("is not owned by `lectern`"), "{why}");

    let mut setting = Setting::new();
    setting.fake.interfaces.get_mut("br0").unwrap().is_bridge = false;
    let why = refused(&mut setting);
    assert!(
        why.contains(
            "br0 is not a bridge, and the local VMs of this box (lameere-enc, stream-backend)"
        ),
        "{why}"
    );

    let mut setting = Setting::new();
    std::fs::create_dir_all(&setting.paths.ifupdown_dir).unwrap();
    std::fs::write(
        setting.paths.ifupdown_dir.join("video"),
        "auto br0\niface br0 inet static\n",
    )
    .unwrap();
    let why = refused(&mut setting);
    assert!(
        why.contains("configures br0 with ifupdown (`auto br0`)"),
        "{why}"
    );

    let mut setting = Setting::new();
    setting.fake.root = false;
    let why = refused(&mut setting);
    assert!(why.contains("run it as root"), "{why}");
}
