//! The one policy seam: every protocol asks this object what a client boots next.
//!
//! Protocol code hands over what it learned from the wire (a [`Client`]) and gets back
//! generic netboot answers: an address and network parameters, a first-stage file, a URL, an
//! iPXE script, the files behind artifact hashes. Rooms, roles and images stay on the other
//! side: an implementation for the master plan only has to fill in the required methods.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use sha2::Digest as _;

use crate::mac::MacAddr;

/// A machine the policy knows, by MAC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub mac: MacAddr,
    pub hostname: String,
    /// Reserved address; `None` takes one from the dynamic pool (authoritative mode) or
    /// whatever the venue's DHCP hands out (proxy mode).
    pub ip: Option<Ipv4Addr>,
}

/// A version of a host's layer: the sha256 of its public part and of its secrets, if it has any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerVersion {
    pub public: String,
    pub secrets: Option<String>,
}

impl LayerVersion {
    /// The version of these bytes.
    pub fn of(public: &[u8], secrets: Option<&[u8]>) -> Self {
        Self::with_secrets(sha256_hex(public), secrets)
    }

    /// The public part known by its sha256, the secrets by their bytes.
    pub fn with_secrets(public: String, secrets: Option<&[u8]>) -> Self {
        LayerVersion {
            public,
            secrets: secrets.map(sha256_hex),
        }
    }

    /// One name for both parts: what a host says it runs and what a heartbeat's answer names.
    pub fn digest(&self) -> String {
        let both = format!(
            "{}\n{}\n",
            self.public,
            self.secrets.as_deref().unwrap_or("-")
        );
        hex::encode(sha2::Sha256::digest(both.as_bytes()))
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

/// What a machine's firmware says it is (SMBIOS), as a booted host reads it from
/// `/sys/class/dmi/id` and presents it, over TLS, for its secrets.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
pub struct Smbios {
    /// The system UUID, lowercase.
    #[serde(default)]
    pub uuid: Option<String>,
    #[serde(default)]
    pub serial: Option<String>,
    #[serde(default)]
    pub asset_tag: Option<String>,
}

impl Smbios {
    /// The fields of `self` that `presented` does not match (absent counts as a mismatch); each
    /// field `self` leaves out matches anything.
    pub fn mismatches(&self, presented: &Smbios) -> Vec<&'static str> {
        let uuid = |value: &Option<String>| value.as_deref().map(str::to_ascii_lowercase);
        let mut wrong = Vec::new();
        if self.uuid.is_some() && uuid(&self.uuid) != uuid(&presented.uuid) {
            wrong.push("uuid");
        }
        if self.serial.is_some() && self.serial != presented.serial {
            wrong.push("serial");
        }
        if self.asset_tag.is_some() && self.asset_tag != presented.asset_tag {
            wrong.push("asset_tag");
        }
        wrong
    }
}

/// What a host must prove for its secrets: every SMBIOS field given, and, with `tpm_ek`, that it
/// holds the TPM whose endorsement key has that Name (see [`crate::tpm`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    pub smbios: Smbios,
    /// The endorsement key's Name, lowercase hexadecimal.
    pub tpm_ek: Option<String>,
}

/// Parameters every address is handed out with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    pub netmask: Ipv4Addr,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub ntp: Vec<Ipv4Addr>,
    pub domain: Option<String>,
    pub lease_time: Duration,
}

/// What a DHCP client told us about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    pub mac: MacAddr,
    /// Option 93, the first architecture listed.
    pub arch: Option<ClientArch>,
    pub stage: DhcpStage,
    /// The address the client holds or asks for, if any.
    pub ip: Option<Ipv4Addr>,
}

/// Which program on the machine is asking: each stage of a netboot asks in turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DhcpStage {
    /// The PXE ROM or UEFI's network boot: it names its architecture (option 93) or says
    /// `PXEClient` or `HTTPClient` (option 60).
    Firmware,
    /// iPXE (option 175 or user class `iPXE`), chainloaded or the NIC's own ROM, as qemu's is.
    Ipxe,
    /// Anything else: the booted kernel, its initrd's `ip=dhcp` then the system renewing its lease.
    Os,
}

/// Client system architecture (DHCP option 93, RFC 4578 and the IANA registry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientArch {
    BiosPxe,
    EfiIa32,
    EfiX64,
    EfiArm32,
    EfiArm64,
    EfiX86Http,
    EfiX64Http,
    EfiArm64Http,
    BiosHttp,
    Other(u16),
}

impl From<u16> for ClientArch {
    fn from(code: u16) -> Self {
        match code {
            0 => ClientArch::BiosPxe,
            6 => ClientArch::EfiIa32,
            // 9 is registered as "EFI BC" but every x64 firmware seen sending it means x64.
            7 | 9 => ClientArch::EfiX64,
            10 => ClientArch::EfiArm32,
            11 => ClientArch::EfiArm64,
            15 => ClientArch::EfiX86Http,
            16 => ClientArch::EfiX64Http,
            19 => ClientArch::EfiArm64Http,
            20 => ClientArch::BiosHttp,
            other => ClientArch::Other(other),
        }
    }
}

/// The next thing a client loads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootStep {
    /// Firmware PXE: this file from the TFTP root.
    Tftp(String),
    /// Firmware HTTP boot: this file from the TFTP root, fetched over HTTP.
    HttpBoot(String),
    /// iPXE is running: its per-host script over HTTP (ends the chainload loop).
    IpxeScript,
}

/// The first-stage iPXE builds Debian's `ipxe` package ships.
pub const BIOS_IPXE: &str = "undionly.kpxe";
pub const EFI_X64_IPXE: &str = "snponly.efi";

/// The usual chain: firmware loads iPXE, iPXE loads its script. Architectures without an
/// iPXE build get nothing, and so does the booted system: it loads nothing more.
pub fn standard_boot_step(client: &Client) -> Option<BootStep> {
    match client.stage {
        DhcpStage::Ipxe => Some(BootStep::IpxeScript),
        DhcpStage::Os => None,
        DhcpStage::Firmware => match client.arch {
            None | Some(ClientArch::BiosPxe) => Some(BootStep::Tftp(BIOS_IPXE.into())),
            Some(ClientArch::EfiX64) => Some(BootStep::Tftp(EFI_X64_IPXE.into())),
            Some(ClientArch::EfiX64Http) => Some(BootStep::HttpBoot(EFI_X64_IPXE.into())),
            Some(_) => None,
        },
    }
}

/// What an artifact is, so the timeline can tell a kernel fetch from a root fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArtifactKind {
    Kernel,
    Initrd,
    Root,
    Other,
}

/// An immutable file named by its content hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    pub path: PathBuf,
    pub kind: ArtifactKind,
}

/// Answers "what does this client boot next?" for DHCP, TFTP and HTTP.
pub trait BootPolicy: Send + Sync + 'static {
    /// Every machine of the fleet.
    fn hosts(&self) -> &[Host];

    /// Netmask, router, DNS, domain and lease time handed out with every address.
    fn network(&self) -> &Network;

    /// What `host` boots; `None` if nothing.
    fn boot(&self, host: &Host) -> Option<Boot>;

    /// The file behind an artifact hash, if the policy serves it.
    fn artifact(&self, hash: &str) -> Option<Artifact>;

    /// The host's layer without its secrets (served over HTTP to the host's own address).
    fn host_layer(&self, host: &Host) -> Option<PathBuf>;

    /// The host's secrets as a layer of their own: released only over TLS, once per boot, to the
    /// host's address presenting its [`BootPolicy::identity`].
    fn host_secrets(&self, host: &Host) -> Option<PathBuf>;

    /// Which version of the host's layer (both parts) the policy serves now; `None` without a layer.
    fn host_layer_version(&self, host: &Host) -> Option<LayerVersion>;

    /// The hardware identity the host must present for its secrets; `None`: its address is enough.
    fn identity(&self, _host: &Host) -> Option<&Identity> {
        None
    }

    /// What the operator's views gather `host` under (a deployment's room, say); `None`: nothing.
    fn group(&self, _host: &Host) -> Option<&str> {
        None
    }

    /// What the operator's views call what `host` does (a deployment's role); `None`: nothing.
    fn role(&self, _host: &Host) -> Option<&str> {
        None
    }

    fn host(&self, mac: MacAddr) -> Option<&Host> {
        self.hosts().iter().find(|host| host.mac == mac)
    }

    fn host_named(&self, hostname: &str) -> Option<&Host> {
        self.hosts().iter().find(|host| host.hostname == hostname)
    }

    /// What a known client loads next; `None` sends it no boot options.
    fn next_boot(&self, client: &Client) -> Option<BootStep> {
        standard_boot_step(client)
    }
}

/// The policy in force, replaced whole on reload. Each exchange takes the current one and
/// keeps it to the end, so a reload never changes an answer halfway.
#[derive(Clone)]
pub struct SharedPolicy(Arc<RwLock<Arc<dyn BootPolicy>>>);

impl SharedPolicy {
    pub fn new(policy: Arc<dyn BootPolicy>) -> Self {
        SharedPolicy(Arc::new(RwLock::new(policy)))
    }

    pub fn current(&self) -> Arc<dyn BootPolicy> {
        Arc::clone(&self.0.read().expect("policy lock"))
    }

    pub fn replace(&self, policy: Arc<dyn BootPolicy>) {
        *self.0.write().expect("policy lock") = policy;
    }
}

/// What a host boots, by artifact hash: the HTTP side turns it into URLs and an iPXE script
/// (see `ipxe.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Boot {
    pub kernel: String,
    /// After the host's own layer, in order.
    pub initrds: Vec<String>,
    /// The host's own layer (a plain cpio, without its secrets) goes first.
    pub host_layer: bool,
    /// The root image the initrd fetches and checks against this hash.
    pub root: Option<String>,
    /// The lectern image it runs; `None` for another kernel.
    pub image: Option<BootImage>,
    /// Kernel arguments of this host, after what the boot itself needs.
    pub args: Vec<String>,
}

/// The lectern image a host boots into, as its kernel command line names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootImage {
    pub id: String,
    pub role: String,
    pub hostname: String,
}

impl Boot {
    /// Every artifact it loads.
    pub fn artifacts(&self) -> impl Iterator<Item = &String> {
        std::iter::once(&self.kernel)
            .chain(&self.initrds)
            .chain(&self.root)
    }
}

/// One image for every host: kernel, initrds and optional root by content hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticImage {
    pub kernel: String,
    pub initrds: Vec<String>,
    pub root: Option<String>,
    pub cmdline: String,
}

/// An in-memory policy: a host list, one network, at most one image for all hosts, artifacts
/// in one directory named by hash and per-host layers in another named `<hostname>.cpio`.
#[derive(Debug, Clone)]
pub struct StaticPolicy {
    hosts: Vec<Host>,
    network: Network,
    image: Option<StaticImage>,
    artifact_dir: PathBuf,
    layer_dir: Option<PathBuf>,
    artifact_kinds: HashMap<String, ArtifactKind>,
    identities: HashMap<MacAddr, Identity>,
    groups: HashMap<MacAddr, String>,
}

impl StaticPolicy {
    pub fn new(hosts: Vec<Host>, network: Network) -> Self {
        StaticPolicy {
            hosts,
            network,
            image: None,
            artifact_dir: PathBuf::new(),
            layer_dir: None,
            artifact_kinds: HashMap::new(),
            identities: HashMap::new(),
            groups: HashMap::new(),
        }
    }

    /// `mac` gets its secrets only by presenting `identity`.
    pub fn with_identity(mut self, mac: MacAddr, identity: Identity) -> Self {
        self.identities.insert(mac, identity);
        self
    }

    /// The operator's views show `mac` under `group`.
    pub fn with_group(mut self, mac: MacAddr, group: String) -> Self {
        self.groups.insert(mac, group);
        self
    }

    pub fn with_image(mut self, image: StaticImage, artifact_dir: PathBuf) -> Self {
        let kinds = std::iter::once((image.kernel.clone(), ArtifactKind::Kernel))
            .chain(
                image
                    .initrds
                    .iter()
                    .map(|hash| (hash.clone(), ArtifactKind::Initrd)),
            )
            .chain(
                image
                    .root
                    .iter()
                    .map(|hash| (hash.clone(), ArtifactKind::Root)),
            );
        self.artifact_kinds = kinds.collect();
        self.image = Some(image);
        self.artifact_dir = artifact_dir;
        self
    }

    pub fn with_layer_dir(mut self, layer_dir: PathBuf) -> Self {
        self.layer_dir = Some(layer_dir);
        self
    }
}

impl BootPolicy for StaticPolicy {
    fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    fn network(&self) -> &Network {
        &self.network
    }

    fn boot(&self, host: &Host) -> Option<Boot> {
        let image = self.image.as_ref()?;
        let args = (image.cmdline.split_whitespace().map(str::to_owned))
            .chain([format!("hostname={}", host.hostname)])
            .collect();
        Some(Boot {
            kernel: image.kernel.clone(),
            initrds: image.initrds.clone(),
            host_layer: self.host_layer(host).is_some(),
            root: image.root.clone(),
            image: None,
            args,
        })
    }

    fn artifact(&self, hash: &str) -> Option<Artifact> {
        let kind = *self.artifact_kinds.get(hash)?;
        Some(Artifact {
            path: self.artifact_dir.join(hash),
            kind,
        })
    }

    fn host_layer(&self, host: &Host) -> Option<PathBuf> {
        let path = self
            .layer_dir
            .as_ref()?
            .join(format!("{}.cpio", host.hostname));
        path.is_file().then_some(path)
    }

    fn host_secrets(&self, host: &Host) -> Option<PathBuf> {
        let path = (self.layer_dir.as_ref()?).join(format!("{}.secrets.cpio", host.hostname));
        path.is_file().then_some(path)
    }

    /// Hashed at each call: the files in the directory may change under it.
    fn host_layer_version(&self, host: &Host) -> Option<LayerVersion> {
        let public = std::fs::read(self.host_layer(host)?).ok()?;
        let secrets = match self.host_secrets(host) {
            Some(path) => Some(std::fs::read(path).ok()?),
            None => None,
        };
        Some(LayerVersion::of(&public, secrets.as_deref()))
    }

    fn identity(&self, host: &Host) -> Option<&Identity> {
        self.identities.get(&host.mac)
    }

    fn group(&self, host: &Host) -> Option<&str> {
        self.groups.get(&host.mac).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(arch: Option<u16>, stage: DhcpStage) -> Client {
        Client {
            mac: MacAddr([2, 0, 0, 0, 0, 1]),
            arch: arch.map(ClientArch::from),
            stage,
            ip: None,
        }
    }

    #[test]
    fn firmware_gets_the_ipxe_build_for_its_architecture() {
        let firmware = |arch| standard_boot_step(&client(arch, DhcpStage::Firmware));
        assert_eq!(firmware(None), Some(BootStep::Tftp(BIOS_IPXE.into())));
        assert_eq!(firmware(Some(0)), Some(BootStep::Tftp(BIOS_IPXE.into())));
        for efi in [7, 9] {
            assert_eq!(
                firmware(Some(efi)),
                Some(BootStep::Tftp(EFI_X64_IPXE.into()))
            );
        }
        assert_eq!(
            firmware(Some(16)),
            Some(BootStep::HttpBoot(EFI_X64_IPXE.into()))
        );
        assert_eq!(firmware(Some(11)), None);
    }

    #[test]
    fn ipxe_gets_its_script_and_the_booted_system_nothing_whatever_the_architecture() {
        for arch in [None, Some(0), Some(7), Some(16)] {
            assert_eq!(
                standard_boot_step(&client(arch, DhcpStage::Ipxe)),
                Some(BootStep::IpxeScript)
            );
            assert_eq!(standard_boot_step(&client(arch, DhcpStage::Os)), None);
        }
    }

    #[test]
    fn static_policy_serves_only_the_image_artifacts() {
        let network = Network {
            netmask: Ipv4Addr::new(255, 255, 255, 0),
            router: None,
            dns: vec![],
            ntp: vec![],
            domain: None,
            lease_time: Duration::from_secs(3600),
        };
        let image = StaticImage {
            kernel: "k1".into(),
            initrds: vec!["i1".into()],
            root: None,
            cmdline: String::new(),
        };
        let policy = StaticPolicy::new(vec![], network).with_image(image, PathBuf::from("/store"));
        assert_eq!(
            policy.artifact("k1").unwrap(),
            Artifact {
                path: "/store/k1".into(),
                kind: ArtifactKind::Kernel
            }
        );
        assert_eq!(policy.artifact("i1").unwrap().kind, ArtifactKind::Initrd);
        assert_eq!(policy.artifact("../etc/passwd"), None);
    }
}
