//! Render contexts for overlays, cut from lectern-master's `Plan` (the expanded master file) as JSON.
//!
//! Two contexts, so that a change to one host never rebuilds a role image and secrets never reach one:
//! - role-wide (config layer): `{ role, conference, netbootd_pin, journal_ca }`, from the plan's
//!   ordinary serialization, in which secrets are `***`, and what the store's hosts trust.
//! - per host (host layer): `{ role, conference, network, ssh_authorized_keys, host, room, lan_hosts,
//!   secret_values, netbootd_secure_url, netbootd_journal_url }`,
//!   from the plan serialized with secrets revealed; `network` is the plan's video LAN (`domain`, `gateway`,
//!   `dns`, `ntp`…), `host` the plan's host (`hostname`, `mac`, `ip`, `room`, `config.<role>`…), `room` the
//!   plan's entry for its room (or null), `lan_hosts` lists `{hostname, fqdn, ip}` of every other host
//!   with a fixed address, `secret_values` the raw secrets the host holds (for its log filter) and
//!   `netbootd_secure_url` where it fetches its secrets and sends its reports (`https://…:8443`),
//!   `netbootd_journal_url` where it uploads its journal (`https://…:19532`).

use std::path::Path;

use anyhow::Result;
use lectern_master::Host;
use serde_json::{Value, json};

/// Reads, checks and expands a master file (with its secrets file).
pub fn load_typed(master_file: &Path) -> Result<lectern_master::Plan> {
    lectern_master::load(master_file).map_err(|diagnostics| {
        anyhow::anyhow!(
            "{} is not a usable master file:\n{diagnostics}",
            master_file.display()
        )
    })
}

/// What every role image of a store trusts, baked into its config layer: public halves only.
#[derive(Debug, Clone, Copy)]
pub struct Anchors<'a> {
    /// What hosts pin of netbootd's TLS key (`lectern_store::ServerKey::pin`).
    pub netbootd_pin: &'a str,
    /// The certificate of the authority that certifies the box's journal receiver
    /// (`lectern_store::JournalCa`), PEM.
    pub journal_ca: &'a str,
}

pub struct Plan {
    /// The expanded master file; `None` without one (role images need no hosts).
    plan: Option<lectern_master::Plan>,
}

impl Plan {
    /// Reads, checks and expands a master file (with its secrets file).
    pub fn load(master_file: &Path) -> Result<Self> {
        Ok(Self::from_typed(load_typed(master_file)?))
    }

    pub fn from_typed(plan: lectern_master::Plan) -> Self {
        Self { plan: Some(plan) }
    }

    /// A plan with no hosts: role images need no more than this.
    pub fn empty() -> Self {
        Self { plan: None }
    }

    /// The image store the master file names (where netbootd serves from).
    pub fn store_dir(&self) -> Option<std::path::PathBuf> {
        Some(self.plan.as_ref()?.netboot.store.clone())
    }

    /// netbootd's base URL (`http://10.42.0.1:8080`), if there is a master file.
    pub fn netboot_url(&self) -> Option<String> {
        Some(self.plan.as_ref()?.netboot.base_url.clone())
    }

    fn hosts(&self) -> &[Host] {
        self.plan.as_ref().map_or(&[], |plan| &plan.hosts)
    }

    /// Roles some host in the plan has, sorted and deduplicated.
    pub fn roles(&self) -> Vec<String> {
        let mut roles: Vec<String> = (self.hosts().iter())
            .map(|host| host.role.as_str().to_owned())
            .collect();
        roles.sort();
        roles.dedup();
        roles
    }

    /// `{ role, conference, netbootd_pin, journal_ca }`: serialized as the plan always is, secrets
    /// as `***` (the conference holds none), and the store's [`Anchors`].
    pub fn role_context(&self, role: &str, anchors: Anchors) -> Value {
        json!({
            "role": role,
            "conference": self.plan.as_ref().map(|plan| &plan.conference),
            "netbootd_pin": anchors.netbootd_pin,
            "journal_ca": anchors.journal_ca,
        })
    }

    /// Whether `hostname` boots from netbootd (a cloud host does not).
    pub fn netboots(&self, hostname: &str) -> bool {
        self.hosts()
            .iter()
            .any(|host| host.hostname == hostname && host.netboot)
    }

    /// `(hostname, context)` for every host of `role`, in plan order, serialized with secrets revealed.
    pub fn host_contexts(&self, role: &str) -> Vec<(String, Value)> {
        let Some(plan) = &self.plan else {
            return Vec::new();
        };
        lectern_master::with_secrets_revealed(|| {
            (plan.hosts.iter())
                .filter(|host| host.role.as_str() == role)
                .map(|host| {
                    let context = json!({
                        "role": role,
                        "conference": plan.conference,
                        "network": plan.network,
                        "ssh_authorized_keys": plan.ssh_authorized_keys,
                        "host": host,
                        "room": host.room.as_deref().and_then(|slug| plan.room(slug)),
                        "lan_hosts": lan_hosts(plan, host),
                        "secret_values": lectern_master::secrets::secret_values_in(host),
                        "netbootd_secure_url": plan.netboot.secure_url,
                        "netbootd_journal_url": plan.netboot.journal_url,
                    });
                    (host.hostname.clone(), context)
                })
                .collect()
        })
    }
}

/// `{hostname, fqdn, ip}` of the other hosts with a fixed address, so that /etc/hosts resolves the
/// names the plan uses (the ingest URL's backend, a room's mixer) on a LAN without DNS of its own
/// (mDNS only answers for `.local`).
fn lan_hosts(plan: &lectern_master::Plan, host: &Host) -> Vec<Value> {
    (plan.hosts.iter())
        .filter(|peer| peer.hostname != host.hostname)
        .filter_map(|peer| {
            Some(json!({ "hostname": peer.hostname, "fqdn": peer.fqdn, "ip": peer.ip? }))
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::PathBuf;

    use super::*;

    pub(crate) const FIXTURE_SECRET: &str = "lectern-test-secret-7f3a9c";
    /// What role contexts pin in tests (a real one is `lectern_store::ServerKey::pin`).
    pub(crate) const TEST_PIN: &str = "sha256//AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    /// What role contexts trust in tests (real ones come from the store).
    pub(crate) const TEST_ANCHORS: Anchors<'static> = Anchors {
        netbootd_pin: TEST_PIN,
        journal_ca: "-----BEGIN CERTIFICATE-----\ntest\n-----END CERTIFICATE-----\n",
    };

    /// The fixture master file. Its secrets file must be 0600 to be used, which git cannot record.
    pub(crate) fn fixture_path() -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let secrets = fixtures.join("fixture-secrets.toml");
        std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o600)).unwrap();
        fixtures.join("master.toml")
    }

    #[test]
    fn fixture_master_file_loads() {
        let plan = Plan::load(&fixture_path()).unwrap();
        assert_eq!(
            plan.roles(),
            ["encoder", "mixer", "netboot", "source", "streaming-backend"]
        );
    }

    #[test]
    fn role_context_has_no_hosts_and_no_secrets() {
        let plan = Plan::load(&fixture_path()).unwrap();
        let context = plan.role_context("encoder", TEST_ANCHORS);
        assert_eq!(context["role"], "encoder");
        assert_eq!(context["conference"]["org"], "fosdem");
        assert!(context.get("host").is_none());
        assert!(!context.to_string().contains(FIXTURE_SECRET));
    }

    #[test]
    fn host_contexts_select_the_role_and_reveal_secrets() {
        let plan = Plan::load(&fixture_path()).unwrap();
        let sources = plan.host_contexts("source");
        let names: Vec<&str> = sources.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, ["lameere-source-1", "lameere-source-2"]);
        let context = &sources[1].1;
        assert_eq!(context["host"]["room"], "lameere");
        assert_eq!(context["room"]["sources"][1]["port"], 10001);
        assert_eq!(context["ssh_authorized_keys"].as_array().unwrap().len(), 1);
        // The fixture gives no `ntp`: the plan's default, the gateway.
        assert_eq!(context["network"]["ntp"], json!(["10.99.0.254"]));
        let peers: Vec<&str> = context["lan_hosts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["hostname"].as_str().unwrap())
            .collect();
        assert_eq!(
            peers,
            [
                "control",
                "lameere-mixer",
                "lameere-source-1",
                "lameere-enc",
                "stream-backend"
            ]
        );
        let (_, encoder) = &plan.host_contexts("encoder")[0];
        assert!(encoder.to_string().contains(FIXTURE_SECRET));
    }

    #[test]
    fn without_a_master_file_there_are_no_hosts() {
        let empty = Plan::empty();
        assert!(empty.roles().is_empty() && empty.host_contexts("encoder").is_empty());
        assert_eq!(
            empty.role_context("base", TEST_ANCHORS)["conference"],
            Value::Null
        );
    }
}
