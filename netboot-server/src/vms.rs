//! `netbootd vms`: runs the master file's local VMs (`where = "local-vm"`) on this machine, each a qemu
//! with the master file's MAC, vCPUs and memory on a tap of the video LAN's bridge, netbooting from
//! netbootd like a physical machine, and started again whenever it dies. Stopping the supervisor (SIGTERM,
//! Ctrl-C) powers them all off. The state file lists each VM's qemu pid, starts and last exit, for the
//! operator and the tests.
//!
//! Supervised here rather than by libvirt: the master file is the only inventory, a VM needs nothing a
//! qemu command line does not give, and there is no second daemon, XML or storage pool to keep in step.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use lectern_master::Plan;
use lectern_master::model::HardwareIdentity;
use serde::{Deserialize, Serialize};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A VM of the master file: the machine this supervisor gives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSpec {
    pub hostname: String,
    pub mac: String,
    pub vcpus: u32,
    pub memory_mb: u32,
    /// qemu `-smbios` values: its name ([`name_smbios`]), and the identity its secrets are released
    /// to ([`identity_smbios`]).
    pub smbios: Vec<String>,
}

/// What a new version of the master file does to the running VMs; a VM that stays the same is
/// not in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmChange {
    Added(VmSpec),
    Removed(VmSpec),
    /// Its machine changed: powered off and started again as `to`.
    Changed {
        from: VmSpec,
        to: VmSpec,
    },
}

impl VmChange {
    pub fn hostname(&self) -> &str {
        match self {
            VmChange::Added(vm) | VmChange::Removed(vm) | VmChange::Changed { to: vm, .. } => {
                &vm.hostname
            }
        }
    }

    /// What happens to the VM, and why: `lameere-enc: restarted (memory 1536 -> 2048 MiB)`.
    pub fn describe(&self) -> String {
        match self {
            VmChange::Added(vm) => format!("{}: started (new)", vm.hostname),
            VmChange::Removed(vm) => {
                format!("{}: powered off (no longer a local VM here)", vm.hostname)
            }
            VmChange::Changed { from, to } => {
                let mut what = Vec::new();
                if from.mac != to.mac {
                    what.push(format!("MAC {} -> {}", from.mac, to.mac));
                }
                if from.vcpus != to.vcpus {
                    what.push(format!("vCPUs {} -> {}", from.vcpus, to.vcpus));
                }
                if from.memory_mb != to.memory_mb {
                    what.push(format!("memory {} -> {} MiB", from.memory_mb, to.memory_mb));
                }
                if from.smbios != to.smbios {
                    what.push("identity".to_owned());
                }
                format!("{}: restarted ({})", to.hostname, what.join(", "))
            }
        }
    }
}

/// How going from the `running` VMs to the `wanted` ones changes each VM: those added or whose
/// machine changed (in `wanted`'s order), then those removed.
pub fn changes(running: &[VmSpec], wanted: &[VmSpec]) -> Vec<VmChange> {
    let find =
        |vms: &[VmSpec], hostname: &str| vms.iter().find(|vm| vm.hostname == hostname).cloned();
    let mut changes: Vec<VmChange> = wanted
        .iter()
        .filter_map(|vm| match find(running, &vm.hostname) {
            None => Some(VmChange::Added(vm.clone())),
            Some(old) if old != *vm => Some(VmChange::Changed {
                from: old,
                to: vm.clone(),
            }),
            Some(_) => None,
        })
        .collect();
    changes.extend(
        running
            .iter()
            .filter(|vm| find(wanted, &vm.hostname).is_none())
            .map(|vm| VmChange::Removed(vm.clone())),
    );
    changes
}

/// The `-smbios` values that make a qemu guest present `identity` as its firmware's.
pub fn identity_smbios(identity: Option<&HardwareIdentity>) -> Vec<String> {
    let Some(identity) = identity else {
        return Vec::new();
    };
    // qemu splits -smbios values at commas; a doubled comma is a literal one.
    let value = |text: &str| text.replace(',', ",,");
    let system: Vec<String> = [("uuid", &identity.uuid), ("serial", &identity.serial)]
        .into_iter()
        .filter_map(|(field, v)| Some(format!("{field}={}", value(v.as_deref()?))))
        .collect();
    let mut args = Vec::new();
    if !system.is_empty() {
        args.push(format!("type=1,{}", system.join(",")));
    }
    if let Some(tag) = &identity.asset_tag {
        args.push(format!("type=3,asset={}", value(tag)));
    }
    args
}

/// The OEM string a disk-booted guest finds its layer by.
pub fn name_smbios(hostname: &str) -> String {
    format!("type=11,value=lectern.host={hostname}")
}

/// How this machine runs VMs.
#[derive(Debug, Clone)]
pub struct Supervisor {
    /// The video LAN's bridge the taps join (`network.dhcp.interface`).
    pub bridge: String,
    /// qemu's `-accel`: `kvm:tcg` uses KVM where it works.
    pub accel: String,
    /// Serial consoles and the state file go here.
    pub state_dir: PathBuf,
    /// Restart delays: doubled after each quick death, up to the last.
    pub backoff: Vec<Duration>,
}

/// What the state file says about one VM.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct VmState {
    /// The machine it runs as, from the master file it was last started from.
    pub spec: Option<VmSpec>,
    pub pid: Option<u32>,
    pub starts: u64,
    pub last_exit: Option<String>,
}

/// The VMs the state file in `state_dir` says run, with the machine each was started as.
pub fn running_vms(state_dir: &Path) -> Result<Vec<VmSpec>> {
    let path = state_dir.join(STATE_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error).with_context(|| format!("reading {}", path.display())),
    };
    let states: BTreeMap<String, VmState> =
        serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))?;
    Ok(states
        .into_values()
        .filter_map(|state| state.spec)
        .collect())
}

/// The first tap name `lvm0`, `lvm1`… that none of `taken` is (at most 15 characters, as Linux wants).
pub fn free_tap<'a>(taken: impl IntoIterator<Item = &'a str> + Clone) -> String {
    (0..)
        .map(|n| format!("lvm{n}"))
        .find(|tap| !taken.clone().into_iter().any(|used| used == tap))
        .expect("a free number")
}

/// A VM the supervisor runs: its machine, its tap, and the task that keeps it running.
struct Running {
    spec: VmSpec,
    tap: String,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<()>>,
}

type States = Arc<Mutex<BTreeMap<String, VmState>>>;

/// The local VMs `hypervisor` runs: every host of the plan placed on a local VM there (or with no
/// hypervisor named), with a MAC to netboot by.
pub fn local_vms(plan: &Plan, hypervisor: &str) -> Result<Vec<VmSpec>> {
    let mut vms = Vec::new();
    for host in &plan.hosts {
        let Some(vm) = host.vm() else { continue };
        if vm.hypervisor.as_deref().is_some_and(|h| h != hypervisor) {
            continue;
        }
        let mac = host
            .mac
            .with_context(|| format!("local VM {} has no mac to netboot by", host.hostname))?;
        vms.push(VmSpec {
            hostname: host.hostname.clone(),
            mac: mac.to_string(),
            vcpus: vm.vcpus,
            memory_mb: vm.memory_mb,
            smbios: std::iter::once(name_smbios(&host.hostname))
                .chain(identity_smbios(host.identity.as_ref()))
                .collect(),
        });
    }
    Ok(vms)
}

impl Supervisor {
    /// The qemu command line of `vm` on `tap`: a PC that netboots from its NIC (qemu's iPXE ROM),
    /// headless, its serial console in the state directory, named `lectern.host=` in an SMBIOS OEM
    /// string.
    pub fn qemu_args(&self, vm: &VmSpec, tap: &str) -> Vec<String> {
        let serial = self.state_dir.join(format!("{}.serial.log", vm.hostname));
        [
            "-name",
            &vm.hostname,
            "-machine",
            "pc",
            "-accel",
            &self.accel,
            "-smp",
            &vm.vcpus.to_string(),
            "-m",
            &vm.memory_mb.to_string(),
            "-nographic",
            "-monitor",
            "none",
            "-serial",
            &format!("file:{}", serial.display()),
            "-netdev",
            &format!("tap,id=lan,ifname={tap},script=no,downscript=no"),
            "-device",
            &format!("virtio-net-pci,netdev=lan,mac={},bootindex=1", vm.mac),
            "-boot",
            "n",
        ]
        .map(String::from)
        .into_iter()
        .chain(
            vm.smbios
                .iter()
                .flat_map(|value| ["-smbios".to_owned(), value.clone()]),
        )
        .collect()
    }

    /// Runs the VMs `load` gives until `shutdown` resolves, then powers them off. At each of
    /// `reloads` it calls `load` again and applies the [`changes`]; when `load` fails the VMs run on
    /// as they are.
    pub async fn run(
        &self,
        load: impl Fn() -> Result<Vec<VmSpec>>,
        mut reloads: impl ReloadSignal,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<()> {
        std::fs::create_dir_all(&self.state_dir)
            .with_context(|| format!("creating {}", self.state_dir.display()))?;
        let states: States = Arc::default();
        // A state file left by an earlier supervisor names VMs that no longer run.
        self.save(&states)?;
        let mut running = Vec::new();
        for vm in load()? {
            let started = self.launch(vm, &running, &states).await?;
            running.push(started);
        }
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = reloads.next() => match load() {
                    Ok(wanted) => self.apply(&mut running, wanted, &states).await,
                    Err(error) => tracing::error!(
                        error = format!("{error:#}"),
                        "reload failed: the local VMs run on as they are"
                    ),
                },
            }
        }
        tracing::info!("powering the local VMs off");
        for vm in running {
            Self::power_off_vm(vm).await?;
        }
        Ok(())
    }

    /// Brings the `running` VMs to `wanted`, touching only those that change.
    async fn apply(&self, running: &mut Vec<Running>, wanted: Vec<VmSpec>, states: &States) {
        let current: Vec<VmSpec> = running.iter().map(|vm| vm.spec.clone()).collect();
        let changes = changes(&current, &wanted);
        if changes.is_empty() {
            tracing::info!("reloaded: no local VM changed");
        }
        for change in changes {
            tracing::info!("{}", change.describe());
            let hostname = change.hostname().to_owned();
            if let Some(at) = running.iter().position(|vm| vm.spec.hostname == hostname) {
                let old = running.remove(at);
                if let Err(error) = Self::power_off_vm(old).await {
                    tracing::error!(host = %hostname, error = format!("{error:#}"), "powering off");
                }
                states.lock().expect("not poisoned").remove(&hostname);
            }
            if let VmChange::Added(vm) | VmChange::Changed { to: vm, .. } = change {
                match self.launch(vm, running, states).await {
                    Ok(started) => running.push(started),
                    Err(error) => {
                        tracing::error!(host = %hostname, error = format!("{error:#}"), "cannot start")
                    }
                }
            }
            if let Err(error) = self.save(states) {
                tracing::error!(error = format!("{error:#}"), "writing the state file");
            }
        }
    }

    /// `vm` on a tap of its own (one the `running` VMs do not use), kept running by a task.
    async fn launch(&self, vm: VmSpec, running: &[Running], states: &States) -> Result<Running> {
        let tap = free_tap(running.iter().map(|vm| vm.tap.as_str()));
        ip(&["tuntap", "add", "dev", &tap, "mode", "tap"])
            .await
            .or_else(|error| {
                // Left over from a supervisor that was killed: reuse it.
                if Path::new("/sys/class/net").join(&tap).exists() {
                    Ok(())
                } else {
                    Err(error)
                }
            })?;
        ip(&["link", "set", &tap, "master", &self.bridge, "up"]).await?;
        let (stop, stopped) = watch::channel(false);
        let supervisor = self.clone();
        let states = Arc::clone(states);
        let (spec, on_tap) = (vm.clone(), tap.clone());
        let task = tokio::spawn(async move {
            let ran = supervisor
                .keep_running(&spec, &on_tap, states, stopped)
                .await;
            ip(&["link", "del", &on_tap]).await.ok();
            ran
        });
        Ok(Running {
            spec: vm,
            tap,
            stop,
            task,
        })
    }

    /// Powers `vm` off and waits until its tap is gone.
    async fn power_off_vm(vm: Running) -> Result<()> {
        vm.stop.send(true).ok();
        vm.task.await?
    }

    /// Starts `vm` and starts it again whenever it exits, until told to stop.
    async fn keep_running(
        &self,
        vm: &VmSpec,
        tap: &str,
        states: States,
        mut stop: watch::Receiver<bool>,
    ) -> Result<()> {
        let mut quick_deaths = 0usize;
        loop {
            let mut child = self.start(vm, tap)?;
            let started = tokio::time::Instant::now();
            self.update(&states, &vm.hostname, |state| {
                state.spec = Some(vm.clone());
                state.pid = child.id();
                state.starts += 1;
            })?;
            tracing::info!(host = %vm.hostname, pid = ?child.id(), "local VM started");
            let exit = tokio::select! {
                status = child.wait() => status?,
                _ = stop.changed() => {
                    power_off(&mut child).await;
                    return Ok(());
                }
            };
            tracing::warn!(host = %vm.hostname, %exit, "local VM exited: starting it again");
            self.update(&states, &vm.hostname, |state| {
                state.pid = None;
                state.last_exit = Some(exit.to_string());
            })?;
            // A VM that dies at once (bad qemu arguments, no memory) is not restarted in a tight loop.
            quick_deaths = if started.elapsed() < Duration::from_secs(60) {
                quick_deaths + 1
            } else {
                0
            };
            let delay = self.backoff[quick_deaths.min(self.backoff.len() - 1)];
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.changed() => return Ok(()),
            }
        }
    }

    fn start(&self, vm: &VmSpec, tap: &str) -> Result<Child> {
        let log = std::fs::File::create(self.state_dir.join(format!("{}.qemu.log", vm.hostname)))?;
        Command::new("qemu-system-x86_64")
            .args(self.qemu_args(vm, tap))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| {
                format!(
                    "starting qemu for {} (apt-get install qemu-system-x86)",
                    vm.hostname
                )
            })
    }

    fn update(
        &self,
        states: &States,
        hostname: &str,
        change: impl FnOnce(&mut VmState),
    ) -> Result<()> {
        change(
            states
                .lock()
                .expect("not poisoned")
                .entry(hostname.to_owned())
                .or_default(),
        );
        self.save(states)
    }

    fn save(&self, states: &States) -> Result<()> {
        let json = serde_json::to_vec_pretty(&*states.lock().expect("not poisoned"))?;
        lectern_store::write_atomic(&self.state_dir.join(STATE_FILE), |file| {
            std::io::Write::write_all(file, &json)
        })?;
        Ok(())
    }
}

/// What tells the supervisor to reread the master file: SIGHUP (`systemctl reload netbootd-vms`).
pub trait ReloadSignal {
    /// Resolves at the next reload asked for.
    fn next(&mut self) -> impl std::future::Future<Output = ()>;
}

impl ReloadSignal for tokio::signal::unix::Signal {
    async fn next(&mut self) {
        if self.recv().await.is_none() {
            std::future::pending::<()>().await;
        }
    }
}

/// The supervisor's state file in its state directory: `{hostname: {pid, starts, last_exit}}`.
pub const STATE_FILE: &str = "vms.json";

/// SIGTERM, as a power button: qemu exits at once (the guests are diskless or run from a snapshot).
async fn power_off(child: &mut Child) {
    if let Some(pid) = child.id() {
        // SAFETY: kill only sends a signal to our own child.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    }
    if tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .is_err()
    {
        child.kill().await.ok();
    }
}

async fn ip(args: &[&str]) -> Result<()> {
    let status = Command::new("ip")
        .args(args)
        .status()
        .await
        .context("running ip (apt-get install iproute2)")?;
    if !status.success() {
        bail!("ip {} failed ({status})", args.join(" "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example master file with its example secrets.
    fn fixture() -> Plan {
        use std::os::unix::fs::PermissionsExt;
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let dir = tempfile::tempdir().unwrap();
        let secrets = dir.path().join("secrets.toml");
        std::fs::copy(examples.join("secrets.toml.example"), &secrets).unwrap();
        std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o600)).unwrap();
        let text = std::fs::read_to_string(examples.join("master.toml")).unwrap();
        lectern_master::load_from(&examples.join("master.toml"), &text, |_| {
            lectern_master::secrets::Secrets::load(&secrets)
        })
        .expect("the example master file loads")
    }

    #[test]
    fn the_local_vms_of_a_hypervisor_come_from_the_master_file() {
        let plan = fixture();
        let all: Vec<&str> = plan
            .hosts
            .iter()
            .filter(|h| h.vm().is_some())
            .map(|h| h.hostname.as_str())
            .collect();
        assert!(!all.is_empty(), "the example has local VMs");
        let here = local_vms(&plan, &plan.netboot.server).unwrap();
        assert!(!here.is_empty());
        for vm in &here {
            let host = plan.host(&vm.hostname).unwrap();
            assert_eq!(Some(vm.mac.clone()), host.mac.map(|m| m.to_string()));
            assert_eq!(vm.vcpus, host.vm().unwrap().vcpus);
        }
        // Another machine runs only the VMs that name no hypervisor: none in the example.
        let unplaced = (plan.hosts.iter())
            .filter(|h| h.vm().is_some_and(|vm| vm.hypervisor.is_none()))
            .count();
        assert_eq!(local_vms(&plan, "some-other-box").unwrap().len(), unplaced);
        assert_eq!(here.len(), all.len());
    }

    #[test]
    fn qemu_gets_the_master_files_mac_size_and_name() {
        let supervisor = Supervisor {
            bridge: "br0".into(),
            accel: "tcg".into(),
            state_dir: "/var/lib/netbootd/vms".into(),
            backoff: vec![Duration::from_secs(1)],
        };
        let vm = VmSpec {
            hostname: "cornil-enc".into(),
            mac: "52:54:00:00:02:01".into(),
            vcpus: 4,
            memory_mb: 4096,
            smbios: std::iter::once(name_smbios("cornil-enc"))
                .chain(identity_smbios(Some(&HardwareIdentity {
                    uuid: Some("4c4c4544-0042-3510-8052-b4c04f4e3732".into()),
                    serial: None,
                    asset_tag: Some("AV,17".into()),
                    tpm_ek: None,
                })))
                .collect(),
        };
        let args = supervisor.qemu_args(&vm, "lvm0").join(" ");
        for part in [
            "-accel tcg",
            "-smp 4",
            "-m 4096",
            "tap,id=lan,ifname=lvm0,script=no",
            "mac=52:54:00:00:02:01,bootindex=1",
            "-boot n",
            "-smbios type=11,value=lectern.host=cornil-enc",
            "-smbios type=1,uuid=4c4c4544-0042-3510-8052-b4c04f4e3732 -smbios type=3,asset=AV,,17",
            "file:/var/lib/netbootd/vms/cornil-enc.serial.log",
        ] {
            assert!(args.contains(part), "{part} missing: {args}");
        }
    }

    fn vm(hostname: &str, memory_mb: u32) -> VmSpec {
        VmSpec {
            hostname: hostname.into(),
            mac: "52:54:00:00:02:01".into(),
            vcpus: 2,
            memory_mb,
            smbios: vec![name_smbios(hostname)],
        }
    }

    #[test]
    fn a_reload_touches_only_the_vms_whose_machine_changed() {
        let running = [
            vm("cornil-enc", 2048),
            vm("stream-backend", 2048),
            vm("old-enc", 1024),
        ];
        assert_eq!(
            changes(&running, &running),
            [],
            "the same file changes nothing"
        );
        let mut bigger = vm("cornil-enc", 4096);
        bigger.vcpus = 4;
        let mut tagged = vm("stream-backend", 2048);
        tagged.smbios.push("type=3,asset=AV17".into());
        let wanted = [bigger.clone(), tagged.clone(), vm("new-enc", 1024)];
        let changes = changes(&running, &wanted);
        let described: Vec<String> = changes.iter().map(VmChange::describe).collect();
        assert_eq!(
            described,
            [
                "cornil-enc: restarted (vCPUs 2 -> 4, memory 2048 -> 4096 MiB)",
                "stream-backend: restarted (identity)",
                "new-enc: started (new)",
                "old-enc: powered off (no longer a local VM here)",
            ]
        );
        assert_eq!(
            changes[0],
            VmChange::Changed {
                from: vm("cornil-enc", 2048),
                to: bigger
            }
        );
        // Order alone is no change.
        let reordered = [running[2].clone(), running[0].clone(), running[1].clone()];
        assert_eq!(super::changes(&running, &reordered), []);
    }

    #[test]
    fn taps_are_numbered_from_the_first_free_one() {
        assert_eq!(free_tap([]), "lvm0");
        assert_eq!(free_tap(["lvm0", "lvm2"]), "lvm1");
        assert_eq!(free_tap(["lvm1", "lvm0"]), "lvm2");
    }

    #[test]
    fn the_state_file_names_the_machines_that_run() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(running_vms(dir.path()).unwrap(), []);
        let states = BTreeMap::from([
            (
                "cornil-enc".to_owned(),
                VmState {
                    spec: Some(vm("cornil-enc", 2048)),
                    pid: Some(42),
                    starts: 1,
                    last_exit: None,
                },
            ),
            // Written by a supervisor from before the state file named machines.
            ("unknown".to_owned(), VmState::default()),
        ]);
        std::fs::write(
            dir.path().join(STATE_FILE),
            serde_json::to_vec(&states).unwrap(),
        )
        .unwrap();
        assert_eq!(running_vms(dir.path()).unwrap(), [vm("cornil-enc", 2048)]);
        std::fs::write(dir.path().join(STATE_FILE), "not json").unwrap();
        let error = running_vms(dir.path()).unwrap_err();
        assert!(format!("{error:#}").contains(STATE_FILE), "{error:#}");
    }
}
