//! Render contexts for overlays, cut from lectern-master's `Plan` (the expanded master file) as JSON.
//!
//! Two contexts, so that a change to one host never rebuilds a role image and secrets never reach one:
//! - role-wide (config layer): `{ role, conference }`, from the plan's ordinary serialization, in which
//!   secrets are `***`.
//! - per host (host layer): `{ role, conference, network, ssh_authorized_keys, host, room, lan_hosts }`,
//!   from the plan serialized with secrets revealed; `network` is the plan's video LAN (`domain`, `gateway`,
//!   `dns`, `ntp`…), `host` the plan's host (`hostname`, `mac`, `ip`, `room`, `config.<role>`…), `room` the
//!   plan's entry for its room (or null) and `lan_hosts` lists `{hostname, fqdn, ip}` of every other host
//!   with a fixed address.

use std::path::Path;

use anyhow::{Result, bail};
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

pub struct Plan {
    /// Secrets shown as `***`: the only view role-wide contexts are cut from.
    redacted: Value,
    /// Secrets revealed: only per-host contexts are cut from it.
    revealed: Value,
}

impl Plan {
    /// Reads, checks and expands a master file (with its secrets file).
    pub fn load(master_file: &Path) -> Result<Self> {
        Self::from_typed(&load_typed(master_file)?)
    }

    /// The two views of an expanded master file.
    pub fn from_typed(plan: &lectern_master::Plan) -> Result<Self> {
        let redacted = serde_json::to_value(plan)?;
        let revealed = lectern_master::with_secrets_revealed(|| serde_json::to_value(plan))?;
        Self::from_views(redacted, revealed)
    }

    /// The image store the master file names (where netbootd serves from).
    pub fn store_dir(&self) -> Option<std::path::PathBuf> {
        let store = self.redacted.get("netboot")?.get("store")?.as_str()?;
        Some(store.into())
    }

    /// netbootd's base URL (`http://10.42.0.1:8080`), if the master file has a netboot server.
    pub fn netboot_url(&self) -> Option<String> {
        let url = self.redacted.get("netboot")?.get("base_url")?.as_str()?;
        Some(url.to_owned())
    }

    /// A plan with no hosts: role images need no more than this.
    pub fn empty() -> Self {
        let nothing = json!({ "hosts": [] });
        Self {
            redacted: nothing.clone(),
            revealed: nothing,
        }
    }

    /// The two serializations of one plan.
    pub fn from_views(redacted: Value, revealed: Value) -> Result<Self> {
        for host in hosts(&revealed) {
            for field in ["hostname", "role"] {
                if !host.get(field).is_some_and(Value::is_string) {
                    bail!("a host in the plan has no string `{field}`: {host}");
                }
            }
        }
        Ok(Self { redacted, revealed })
    }

    /// The redacted and revealed views, for tests that edit a plan.
    #[cfg(test)]
    pub(crate) fn into_views(self) -> (Value, Value) {
        (self.redacted, self.revealed)
    }

    /// Roles some host in the plan has, sorted and deduplicated.
    pub fn roles(&self) -> Vec<String> {
        let mut roles: Vec<String> = hosts(&self.revealed)
            .map(|host| role_of(host).to_owned())
            .collect();
        roles.sort();
        roles.dedup();
        roles
    }

    pub fn role_context(&self, role: &str) -> Value {
        json!({ "role": role, "conference": self.redacted.get("conference").cloned().unwrap_or(Value::Null) })
    }

    /// `(hostname, context)` for every host of `role`, in plan order.
    pub fn host_contexts(&self, role: &str) -> Vec<(String, Value)> {
        let plan = &self.revealed;
        let keys = plan
            .get("ssh_authorized_keys")
            .cloned()
            .unwrap_or_else(|| json!([]));
        hosts(plan)
            .filter(|host| role_of(host) == role)
            .map(|host| {
                let hostname = host["hostname"].as_str().unwrap_or_default().to_owned();
                let context = json!({
                    "role": role,
                    "conference": plan.get("conference").cloned().unwrap_or(Value::Null),
                    "network": plan.get("network").cloned().unwrap_or(Value::Null),
                    "ssh_authorized_keys": keys,
                    "host": host,
                    "room": room_of(plan, host),
                    "lan_hosts": lan_hosts(plan, host),
                });
                (hostname, context)
            })
            .collect()
    }
}

/// The plan's entry for `host`'s room (`slug`, `sources` in mixer order with ports and machines, `video`,
/// `encode`…), or null.
fn room_of(plan: &Value, host: &Value) -> Value {
    let slug = host.get("room");
    let mut rooms = plan
        .get("rooms")
        .and_then(Value::as_array)
        .into_iter()
        .flatten();
    rooms
        .find(|room| slug.is_some_and(|slug| room.get("slug") == Some(slug)))
        .cloned()
        .unwrap_or(Value::Null)
}

/// `{hostname, fqdn, ip}` of the other hosts with a fixed address, so that /etc/hosts resolves the
/// names the plan uses (the ingest URL's backend, a room's mixer) on a LAN without DNS of its own
/// (mDNS only answers for `.local`).
fn lan_hosts(plan: &Value, host: &Value) -> Vec<Value> {
    hosts(plan)
        .filter(|peer| peer["hostname"] != host["hostname"])
        .filter_map(|peer| {
            Some(json!({ "hostname": peer["hostname"], "fqdn": peer["fqdn"], "ip": peer.get("ip")?.as_str()? }))
        })
        .collect()
}

fn hosts(plan: &Value) -> impl Iterator<Item = &Value> {
    plan.get("hosts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

fn role_of(host: &Value) -> &str {
    host.get("role").and_then(Value::as_str).unwrap_or_default()
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::PathBuf;

    use super::*;

    pub(crate) const FIXTURE_SECRET: &str = "lectern-test-secret-7f3a9c";

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
        assert!(plan.redacted.to_string().contains("***"));
        assert!(!plan.redacted.to_string().contains(FIXTURE_SECRET));
        assert!(plan.revealed.to_string().contains(FIXTURE_SECRET));
    }

    #[test]
    fn role_context_has_no_hosts_and_no_secrets() {
        let plan = Plan::load(&fixture_path()).unwrap();
        let context = plan.role_context("encoder");
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
    fn rejects_hosts_without_role() {
        let bad = json!({ "hosts": [{ "hostname": "x" }] });
        assert!(Plan::from_views(bad.clone(), bad).is_err());
        assert!(Plan::empty().roles().is_empty());
    }
}
