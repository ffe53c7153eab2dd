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
use serde::Serialize;
use tokio::process::{Child, Command};

/// A VM of the master file, as this supervisor runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSpec {
    pub hostname: String,
    pub mac: String,
    pub vcpus: u32,
    pub memory_mb: u32,
    /// Its tap on the bridge (at most 15 characters, as Linux wants).
    pub tap: String,
    /// qemu `-smbios` values: its name ([`name_smbios`]), and the identity its secrets are released
    /// to ([`identity_smbios`]).
    pub smbios: Vec<String>,
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
#[derive(Debug, Clone, Default, Serialize)]
pub struct VmState {
    pub pid: Option<u32>,
    pub starts: u64,
    pub last_exit: Option<String>,
}

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
            tap: format!("lvm{}", vms.len()),
            smbios: std::iter::once(name_smbios(&host.hostname))
                .chain(identity_smbios(host.identity.as_ref()))
                .collect(),
        });
    }
    Ok(vms)
}

impl Supervisor {
    /// The qemu command line of `vm`: a PC that netboots from its NIC (qemu's iPXE ROM), headless, its
    /// serial console in the state directory, named `lectern.host=` in an SMBIOS OEM string.
    pub fn qemu_args(&self, vm: &VmSpec) -> Vec<String> {
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
            &format!("tap,id=lan,ifname={},script=no,downscript=no", vm.tap),
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

    /// Runs every VM until `shutdown` resolves, then powers them off.
    pub async fn run(
        &self,
        vms: Vec<VmSpec>,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<()> {
        std::fs::create_dir_all(&self.state_dir)
            .with_context(|| format!("creating {}", self.state_dir.display()))?;
        let states: Arc<Mutex<BTreeMap<String, VmState>>> = Arc::default();
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut tasks = Vec::new();
        for vm in vms {
            ip(&["tuntap", "add", "dev", &vm.tap, "mode", "tap"])
                .await
                .or_else(|error| {
                    // Left over from a supervisor that was killed: reuse it.
                    if Path::new("/sys/class/net").join(&vm.tap).exists() {
                        Ok(())
                    } else {
                        Err(error)
                    }
                })?;
            ip(&["link", "set", &vm.tap, "master", &self.bridge, "up"]).await?;
            let supervisor = self.clone();
            let states = Arc::clone(&states);
            let stop = stop_rx.clone();
            tasks.push(tokio::spawn(async move {
                let ran = supervisor.keep_running(&vm, states, stop).await;
                ip(&["link", "del", &vm.tap]).await.ok();
                ran
            }));
        }
        shutdown.await;
        tracing::info!("powering the local VMs off");
        stop_tx.send(true).ok();
        for task in tasks {
            task.await??;
        }
        Ok(())
    }

    /// Starts `vm` and starts it again whenever it exits, until told to stop.
    async fn keep_running(
        &self,
        vm: &VmSpec,
        states: Arc<Mutex<BTreeMap<String, VmState>>>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> Result<()> {
        let mut quick_deaths = 0usize;
        loop {
            let mut child = self.start(vm)?;
            let started = tokio::time::Instant::now();
            self.update(&states, &vm.hostname, |state| {
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

    fn start(&self, vm: &VmSpec) -> Result<Child> {
        let log = std::fs::File::create(self.state_dir.join(format!("{}.qemu.log", vm.hostname)))?;
        Command::new("qemu-system-x86_64")
            .args(self.qemu_args(vm))
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
        states: &Mutex<BTreeMap<String, VmState>>,
        hostname: &str,
        change: impl FnOnce(&mut VmState),
    ) -> Result<()> {
        let mut states = states.lock().expect("not poisoned");
        change(states.entry(hostname.to_owned()).or_default());
        let json = serde_json::to_vec_pretty(&*states)?;
        lectern_store::write_atomic(&self.state_dir.join(STATE_FILE), |file| {
            std::io::Write::write_all(file, &json)
        })?;
        Ok(())
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
            assert!(vm.tap.len() <= 15);
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
            tap: "lvm0".into(),
            smbios: std::iter::once(name_smbios("cornil-enc"))
                .chain(identity_smbios(Some(&HardwareIdentity {
                    uuid: Some("4c4c4544-0042-3510-8052-b4c04f4e3732".into()),
                    serial: None,
                    asset_tag: Some("AV,17".into()),
                    tpm_ek: None,
                })))
                .collect(),
        };
        let args = supervisor.qemu_args(&vm).join(" ");
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
}
