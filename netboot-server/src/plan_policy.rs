//! The conference's boot policy: hosts and network from the master file's plan, images from
//! the store imgbuild fills. This is the only module that knows about roles and the store; the
//! protocols see it through [`BootPolicy`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use lectern_master::Plan;
use lectern_store::{Manifest, Store};

use crate::dhcp::Mode;
use crate::listing::some_of;
use crate::mac::MacAddr;
use crate::policy::{
    Artifact, ArtifactKind, Boot, BootImage, BootPolicy, Host, Identity, LayerVersion, Network,
    Smbios,
};
use crate::server::{Https, ServerConfig};
use crate::{http, tftp};
use lectern_master::model::NetbootLimits;

/// What a boot policy already knows to be missing: sentences that name a cause and its fix, and
/// the hosts those causes leave with nothing to boot (which `check` then does not list again).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Gaps {
    pub causes: Vec<String>,
    pub unbootable: HashSet<MacAddr>,
}

/// The artifact names imgbuild gives a role's netboot files.
const KERNEL: &str = "vmlinuz";
const INITRD: &str = "initrd";
const ROOT: &str = "root.squashfs";

/// A role's current image, by content hash.
#[derive(Debug, Clone)]
struct RoleImage {
    id: String,
    kernel: String,
    initrd: String,
    root: String,
}

impl RoleImage {
    /// `None` (with the reason) if the manifest lacks a netboot artifact.
    fn from_manifest(manifest: &Manifest) -> Result<RoleImage, String> {
        let hash = |name: &str| {
            manifest
                .artifacts
                .get(name)
                .map(|blob| blob.sha256.as_str().to_owned())
                .ok_or_else(|| format!("the {} image has no {name}", manifest.role))
        };
        Ok(RoleImage {
            id: manifest.image.as_str().to_owned(),
            kernel: hash(KERNEL)?,
            initrd: hash(INITRD)?,
            root: hash(ROOT)?,
        })
    }
}

#[derive(Debug, Clone)]
struct HostBoot {
    hostname: String,
    role: String,
    kernel_args: Vec<String>,
    image: Option<RoleImage>,
    layer: Option<PathBuf>,
    secrets: Option<PathBuf>,
    /// The blobs' own names: the store names each blob by its sha256.
    layer_version: Option<LayerVersion>,
    identity: Option<Identity>,
    /// Its room, for the operator's views.
    group: Option<String>,
}

/// Boot answers for every netbooted host of a plan.
#[derive(Debug, Clone)]
pub struct PlanPolicy {
    hosts: Vec<Host>,
    network: Network,
    boots: HashMap<MacAddr, HostBoot>,
    artifacts: HashMap<String, Artifact>,
    /// What is missing for some host to boot (role images or host layers not built yet).
    gaps: Gaps,
}

impl PlanPolicy {
    pub fn new(plan: &Plan, store: &Store) -> PlanPolicy {
        let mut causes = Vec::new();
        let mut images: HashMap<String, Option<RoleImage>> = HashMap::new();
        let mut artifacts = HashMap::new();
        let mut hosts = Vec::new();
        let mut boots = HashMap::new();
        // Roles with no release at all, and their hosts; hosts with an image but no layer.
        let mut never_built: BTreeMap<String, Vec<&str>> = BTreeMap::new();
        let mut without_layer = Vec::new();
        let mut host_causes = Vec::new();
        for host in plan.netbooted() {
            let Some(mac) = host.mac else { continue };
            let role = host.role.as_str();
            let image = images
                .entry(role.to_owned())
                .or_insert_with(|| {
                    let image = match store.newest_whole_release(role) {
                        Ok((Some(manifest), passed_over)) => {
                            for damaged in passed_over {
                                causes.push(format!(
                                    "{damaged}: serving the release before it, {} (rebuild: imgbuild role {role})",
                                    manifest.image
                                ));
                            }
                            RoleImage::from_manifest(&manifest).map_err(Some)
                        }
                        Ok((None, passed_over)) if passed_over.is_empty() => {
                            never_built.insert(role.to_owned(), Vec::new());
                            Err(None)
                        }
                        Ok((None, passed_over)) => Err(Some(format!(
                            "no whole {role} image in the store: {} (run: imgbuild role {role})",
                            passed_over.join("; ")
                        ))),
                        Err(e) => Err(Some(format!("cannot read the {role} image: {e}"))),
                    };
                    match image {
                        Ok(image) => {
                            for (hash, kind) in [
                                (&image.kernel, ArtifactKind::Kernel),
                                (&image.initrd, ArtifactKind::Initrd),
                                (&image.root, ArtifactKind::Root),
                            ] {
                                let digest = hash.parse().expect("manifests hold valid digests");
                                let path = store.blob_path(&digest);
                                artifacts.insert(hash.clone(), Artifact { path, kind });
                            }
                            Some(image)
                        }
                        Err(cause) => {
                            causes.extend(cause);
                            None
                        }
                    }
                })
                .clone();
            let (mut secrets, mut layer_version) = (None, None);
            let layer = match store.host_layer(&host.hostname) {
                Ok(Some(layer)) if layer.role == role => {
                    secrets = (layer.secrets.as_ref()).map(|blob| store.blob_path(&blob.sha256));
                    layer_version = Some(LayerVersion {
                        public: layer.blob.sha256.to_string(),
                        secrets: (layer.secrets.as_ref()).map(|blob| blob.sha256.to_string()),
                    });
                    Some(store.blob_path(&layer.blob.sha256))
                }
                Ok(Some(layer)) => {
                    host_causes.push(format!(
                        "{}'s host layer was built for role {}, not {role} (run: imgbuild all)",
                        host.hostname, layer.role
                    ));
                    None
                }
                // Said once for the role when it has no image either.
                Ok(None) if image.is_some() => {
                    without_layer.push(host.hostname.as_str());
                    None
                }
                Ok(None) => None,
                Err(e) => {
                    host_causes.push(format!("cannot read {}'s host layer: {e}", host.hostname));
                    None
                }
            };
            if let Some(role_hosts) = never_built.get_mut(role) {
                role_hosts.push(&host.hostname);
            }
            hosts.push(Host {
                mac,
                hostname: host.hostname.clone(),
                ip: host.ip,
            });
            let boot = HostBoot {
                group: host.room.clone(),
                hostname: host.hostname.clone(),
                role: role.to_owned(),
                kernel_args: host.kernel_args.clone(),
                image,
                layer,
                secrets,
                layer_version,
                identity: host.identity.as_ref().map(|identity| Identity {
                    smbios: Smbios {
                        uuid: identity.uuid.clone(),
                        serial: identity.serial.clone(),
                        asset_tag: identity.asset_tag.clone(),
                    },
                    tpm_ek: identity.tpm_ek.clone(),
                }),
            };
            boots.insert(mac, boot);
        }
        // The causes first: what leaves whole roles without a boot, then single hosts.
        let netbooted = hosts.len();
        if !never_built.is_empty() && never_built.len() == images.len() {
            causes.push(format!(
                "the store {} has no images yet: none of the {netbooted} netbooted hosts can boot (run: imgbuild all)",
                store.root().display()
            ));
        } else {
            for (role, role_hosts) in &never_built {
                let which = match role_hosts.as_slice() {
                    [one] => one.to_string(),
                    many => format!("its {} hosts", many.len()),
                };
                causes.push(format!(
                    "no {role} image in the store yet: {which} cannot boot (run: imgbuild role {role})"
                ));
            }
        }
        match without_layer.as_slice() {
            [] => {}
            [one] => causes.push(format!("{one} has no host layer yet (run: imgbuild all)")),
            many => causes.push(format!(
                "{} hosts have no host layer yet: {} (run: imgbuild all)",
                many.len(),
                some_of(many, 3)
            )),
        }
        causes.extend(host_causes);
        let unbootable = (boots.iter())
            .filter(|(_, boot)| boot.image.is_none())
            .map(|(mac, _)| *mac)
            .collect();
        let gaps = Gaps { causes, unbootable };
        let n = &plan.network;
        let network = Network {
            netmask: n.netmask,
            router: Some(n.gateway),
            dns: n.dns.clone(),
            ntp: n.ntp.clone(),
            domain: Some(n.domain.clone()),
            lease_time: Duration::from_secs(n.dhcp.lease_secs.into()),
        };
        PlanPolicy {
            hosts,
            network,
            boots,
            artifacts,
            gaps,
        }
    }

    /// Hosts that cannot boot yet and why.
    pub fn gaps(&self) -> &Gaps {
        &self.gaps
    }
}

impl BootPolicy for PlanPolicy {
    fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    fn network(&self) -> &Network {
        &self.network
    }

    fn boot(&self, host: &Host) -> Option<Boot> {
        let boot = self.boots.get(&host.mac)?;
        let image = boot.image.as_ref()?;
        Some(Boot {
            kernel: image.kernel.clone(),
            initrds: vec![image.initrd.clone()],
            host_layer: boot.layer.is_some(),
            root: Some(image.root.clone()),
            image: Some(BootImage {
                id: image.id.clone(),
                role: boot.role.clone(),
                hostname: boot.hostname.clone(),
            }),
            args: boot.kernel_args.clone(),
        })
    }

    fn artifact(&self, hash: &str) -> Option<Artifact> {
        self.artifacts.get(hash).cloned()
    }

    fn host_layer(&self, host: &Host) -> Option<PathBuf> {
        self.boots.get(&host.mac)?.layer.clone()
    }

    fn host_secrets(&self, host: &Host) -> Option<PathBuf> {
        self.boots.get(&host.mac)?.secrets.clone()
    }

    fn host_layer_version(&self, host: &Host) -> Option<LayerVersion> {
        self.boots.get(&host.mac)?.layer_version.clone()
    }

    fn identity(&self, host: &Host) -> Option<&Identity> {
        self.boots.get(&host.mac)?.identity.as_ref()
    }

    fn group(&self, host: &Host) -> Option<&str> {
        self.boots.get(&host.mac)?.group.as_deref()
    }

    fn role(&self, host: &Host) -> Option<&str> {
        Some(&self.boots.get(&host.mac)?.role)
    }
}

/// The protocols' limits as `[netboot.limits]` sets them.
pub fn protocol_limits(limits: &NetbootLimits) -> (tftp::Limits, http::Limits) {
    let seconds = |s: u32| Duration::from_secs(u64::from(s));
    let tftp = tftp::Limits {
        max_timeout: seconds(limits.tftp_max_timeout_s),
        per_client: limits.tftp_per_client as usize,
        total: limits.tftp_total as usize,
        ..tftp::Limits::default()
    };
    let http = http::Limits {
        connections: limits.http_connections as usize,
        header_read_timeout: seconds(limits.http_header_timeout_s),
        idle_timeout: seconds(limits.http_idle_timeout_s),
    };
    (tftp, http)
}

/// Loads the master file and the store it names, or `store` instead (`--store`, as imgbuild
/// takes it). Not the secrets file: what netbootd serves, imgbuild rendered, and the hosts'
/// secrets are in the store's private blobs.
pub fn load(config: &Path, store: Option<&Path>) -> anyhow::Result<(Plan, Store)> {
    let mut plan = lectern_master::load_without_secret_values(config)
        .map_err(|problems| anyhow::anyhow!("{problems}"))?;
    if let Some(store) = store {
        plan.netboot.store = store.to_owned();
    }
    let opened = Store::open(&plan.netboot.store).map_err(|e| {
        let with_store = match store {
            Some(store) => format!(" --store {}", store.display()),
            None => String::new(),
        };
        anyhow::anyhow!(
            "{e}\n  help: build the images first: imgbuild all --config {}{with_store}",
            config.display()
        )
    })?;
    Ok((plan, opened))
}

/// The server settings a plan implies, with the store's TLS key if imgbuild has made it;
/// `state_dir` and `tftp_root` are the host's own choice.
pub fn server_config(
    plan: &Plan,
    store: &Store,
    state_dir: PathBuf,
    tftp_root: PathBuf,
) -> anyhow::Result<ServerConfig> {
    let https = store.existing_server_key()?.map(|key| Https {
        port: plan.netboot.https_port,
        key,
    });
    let dhcp = &plan.network.dhcp;
    let limits = protocol_limits(&plan.netboot.limits);
    Ok(ServerConfig {
        interface: dhcp.interface.clone(),
        server_ip: plan.netboot.server_ip,
        mode: match dhcp.mode {
            lectern_master::model::DhcpMode::Authoritative => Mode::Authoritative,
            lectern_master::model::DhcpMode::Proxy => Mode::Proxy,
        },
        pool: dhcp.range.map(|[first, last]| (first, last)),
        state_dir,
        tftp_root,
        http_port: plan.netboot.http_port,
        operator_address: plan.netboot.operator_address,
        stale_after: Duration::from_secs(plan.netboot.stale_after_secs),
        tftp_limits: limits.0,
        http_limits: limits.1,
        https,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::urls::Urls;
    use std::collections::BTreeMap;
    use std::net::Ipv4Addr;

    use lectern_store::{BlobRef, HostLayer, Manifest};

    const MASTER: &str = include_str!("../../examples/master.toml");
    const SECRETS: &str = include_str!("../../examples/secrets.toml.example");

    /// The example with one host given extra kernel arguments (which its script must carry), and
    /// the `(from, to)` edits.
    fn plan_with(dir: &Path, edits: &[(&str, &str)]) -> Plan {
        use std::os::unix::fs::PermissionsExt;
        let master = dir.join("master.toml");
        let mut text = MASTER.to_owned();
        for (from, to) in [(
            "\nsource = \"cam\"\n",
            "\nsource = \"cam\"\nkernel_args = [\"nomodeset\", \"modules-load=vivid\"]\n",
        )]
        .iter()
        .chain(edits)
        {
            let edited = text.replacen(from, to, 1);
            assert_ne!(edited, text, "{from:?} is not in the example");
            text = edited;
        }
        std::fs::write(&master, text).unwrap();
        let secrets = dir.join("secrets.toml");
        std::fs::write(&secrets, SECRETS).unwrap();
        std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o600)).unwrap();
        lectern_master::load(&master).unwrap()
    }

    fn plan(dir: &Path) -> Plan {
        plan_with(dir, &[])
    }

    fn put(store: &Store, content: &str) -> BlobRef {
        store.put_blob(content.as_bytes()).unwrap()
    }

    #[test]
    fn a_truncated_newest_image_falls_back_to_the_release_before_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let plan = plan(dir.path());
        let store = Store::create(dir.path().join("store")).unwrap();
        let release = |tag: &str| {
            let artifacts: BTreeMap<String, BlobRef> = [KERNEL, INITRD, ROOT]
                .into_iter()
                .map(|name| {
                    (
                        name.to_owned(),
                        put(&store, &format!("{tag} source {name}")),
                    )
                })
                .collect();
            let manifest = Manifest::new(
                "source",
                vec![],
                artifacts,
                BTreeMap::new(),
                BTreeMap::new(),
            );
            store.add_manifest(&manifest).unwrap();
            manifest
        };
        let first = release("first");
        let second = release("second");
        let layer = put(&store, "layer of lameere-source-1");
        let host_layer = HostLayer::new("lameere-source-1", "source", layer.sha256.clone(), layer);
        store.add_host_layer(&host_layer).unwrap();
        let root = &second.artifacts[ROOT];
        std::fs::write(store.blob_path(&root.sha256), "cut short").unwrap();

        let policy = PlanPolicy::new(&plan, &store);
        let host = policy
            .host("52:54:00:42:01:11".parse().unwrap())
            .unwrap()
            .clone();
        let boot = policy.boot(&host).unwrap();
        assert_eq!(
            boot.root.as_deref(),
            Some(first.artifacts[ROOT].sha256.as_str())
        );
        let said = policy.gaps().causes.join("\n");
        assert!(
            said.contains(&format!("source image {}", second.image))
                && said.contains(&format!("serving the release before it, {}", first.image)),
            "{said}"
        );
    }

    #[test]
    fn hosts_boot_their_role_image_with_their_own_layer() {
        let dir = tempfile::tempdir().unwrap();
        let plan = plan(dir.path());
        let store = Store::create(dir.path().join("store")).unwrap();
        let artifacts: BTreeMap<String, BlobRef> = [KERNEL, INITRD, ROOT]
            .into_iter()
            .map(|name| (name.to_owned(), put(&store, &format!("source {name}"))))
            .collect();
        let manifest = Manifest::new(
            "source",
            vec![],
            artifacts.clone(),
            BTreeMap::new(),
            BTreeMap::new(),
        );
        store.add_manifest(&manifest).unwrap();
        let layer = put(&store, "layer of lameere-source-1");
        let key = layer.sha256.clone();
        store
            .add_host_layer(&HostLayer::new(
                "lameere-source-1",
                "source",
                key,
                layer.clone(),
            ))
            .unwrap();

        let policy = PlanPolicy::new(&plan, &store);
        // No `ntp` in the example: the gateway keeps time.
        assert_eq!(policy.network().ntp, [Ipv4Addr::new(10, 42, 0, 254)]);
        let mac: MacAddr = "52:54:00:42:01:11".parse().unwrap();
        let host = policy.host(mac).unwrap().clone();
        assert_eq!(host.ip, Some(Ipv4Addr::new(10, 42, 0, 11)));
        let urls = Urls::new("http://10.42.0.1:8080");
        let boot = policy.boot(&host).unwrap();
        assert_eq!(boot.root.as_deref(), Some(artifacts[ROOT].sha256.as_str()));
        let script = crate::ipxe::script(&boot, host.mac, &urls);
        let root = artifacts[ROOT].sha256.as_str();
        assert!(
            script.contains(&format!("lectern.root_sha256={root}")),
            "{script}"
        );
        assert!(
            script.contains(&format!("lectern.image={}", manifest.image.as_str())),
            "{script}"
        );
        assert!(
            script.contains("systemd.hostname=lameere-source-1"),
            "{script}"
        );
        assert!(
            script.contains(" nomodeset modules-load=vivid\n"),
            "{script}"
        );
        assert!(script.contains(&urls.host_layer(mac)), "{script}");
        // A plain cpio first: UEFI's EFI stub concatenates initrds unaligned.
        let layer_at = script.find(&urls.host_layer(mac)).unwrap();
        let initrd_at = script.find(&urls.artifact(artifacts[INITRD].sha256.as_str()));
        assert!(initrd_at.is_some_and(|at| layer_at < at), "{script}");
        assert_eq!(
            policy.host_layer(&host),
            Some(store.blob_path(&layer.sha256))
        );
        // Read from the store's record, and the same as the version of the bytes it serves.
        assert_eq!(
            policy.host_layer_version(&host),
            Some(LayerVersion::of(b"layer of lameere-source-1", None))
        );
        assert_eq!(policy.artifact(root).unwrap().kind, ArtifactKind::Root);

        // A mixer: no image built yet, so no script, and `check` can say why.
        let mixer = policy
            .host("52:54:00:42:01:10".parse().unwrap())
            .unwrap()
            .clone();
        assert_eq!(policy.boot(&mixer), None);
        assert!(
            policy
                .gaps()
                .causes
                .iter()
                .any(|g| g.contains("imgbuild role mixer")),
            "{:?}",
            policy.gaps()
        );
        // The cloud encoder does not netboot at all.
        assert!(policy.hosts().iter().all(|h| h.hostname != "lameere-enc"));
    }

    #[test]
    fn what_is_missing_is_said_once_per_cause() {
        let dir = tempfile::tempdir().unwrap();
        let plan = plan(dir.path());
        let store = Store::create(dir.path().join("store")).unwrap();
        let nothing = PlanPolicy::new(&plan, &store);
        assert_eq!(
            nothing.gaps().causes,
            [format!(
                "the store {} has no images yet: none of the 8 netbooted hosts can boot (run: imgbuild all)",
                store.root().display()
            )]
        );
        assert_eq!(nothing.gaps().unbootable.len(), 8);

        let artifacts: BTreeMap<String, BlobRef> = [KERNEL, INITRD, ROOT]
            .into_iter()
            .map(|name| (name.to_owned(), put(&store, &format!("source {name}"))))
            .collect();
        let manifest = Manifest::new(
            "source",
            vec![],
            artifacts,
            BTreeMap::new(),
            BTreeMap::new(),
        );
        store.add_manifest(&manifest).unwrap();
        let sources = PlanPolicy::new(&plan, &store);
        assert_eq!(
            sources.gaps().causes,
            [
                "no encoder image in the store yet: cornil-enc cannot boot (run: imgbuild role encoder)",
                "no mixer image in the store yet: its 2 hosts cannot boot (run: imgbuild role mixer)",
                "no streaming-backend image in the store yet: stream-backend cannot boot (run: imgbuild role streaming-backend)",
                "4 hosts have no host layer yet: lameere-source-1, lameere-source-2, cornil-source-1 and 1 more (run: imgbuild all)",
            ]
        );
        assert_eq!(sources.gaps().unbootable.len(), 4);
    }

    #[test]
    fn the_master_files_time_servers_are_what_dhcp_offers() {
        let dir = tempfile::tempdir().unwrap();
        let edit = (
            "dns = [\"10.42.0.254\"]\n",
            "dns = [\"10.42.0.254\"]\nntp = [\"10.42.0.5\", \"10.42.0.6\"]\n",
        );
        let plan = plan_with(dir.path(), &[edit]);
        let store = Store::create(dir.path().join("store")).unwrap();
        let policy = PlanPolicy::new(&plan, &store);
        // Option 42 is rendered from this list (the responder's tests).
        assert_eq!(
            policy.network().ntp,
            [Ipv4Addr::new(10, 42, 0, 5), Ipv4Addr::new(10, 42, 0, 6)]
        );
    }

    #[test]
    fn the_master_files_limits_are_what_the_server_runs_with() {
        let dir = tempfile::tempdir().unwrap();
        let limits = "store = \"store\"\n\n[netboot.limits]\ntftp_per_client = 2\nhttp_idle_timeout_s = 60\n";
        let plan = plan_with(dir.path(), &[("store = \"store\"\n", limits)]);
        let store = Store::create(dir.path().join("store")).unwrap();
        let config = server_config(&plan, &store, "/state".into(), "/tftp".into()).unwrap();
        assert_eq!(config.tftp_limits.per_client, 2);
        assert_eq!(config.http_limits.idle_timeout, Duration::from_secs(60));
        assert_eq!(
            config.tftp_limits.total, 256,
            "the others keep their defaults"
        );
    }

    #[test]
    fn the_master_files_default_limits_are_the_protocols() {
        let (tftp, http) = protocol_limits(&NetbootLimits::default());
        assert_eq!(
            (tftp, http),
            (tftp::Limits::default(), http::Limits::default())
        );
    }
}
