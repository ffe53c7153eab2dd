//! Render contexts for overlays, cut from the plan (lectern-master's expanded master file).
//!
//! Until imgbuild links lectern-master, the plan arrives as JSON (what the `Plan` serializes to) with this
//! shape; only these parts are read here:
//!
//! ```json
//! { "conference": { "org": "...", "slug": "...", ... },
//!   "ssh_authorized_keys": ["ssh-ed25519 ..."],
//!   "hosts": [ { "hostname": "...", "role": "mixer", "room": "...", "mixer": { ... } }, ... ] }
//! ```
//!
//! Two contexts, so that a change to one host never rebuilds a role image:
//! - role-wide (config layer): `{ role, conference }`; it must hold no secrets.
//! - per host (host layer): `{ role, conference, ssh_authorized_keys, host, room_hosts }`, with secrets
//!   revealed; it only ever reaches the per-host layer. `room_hosts` lists `{hostname, ip}` of the host's
//!   room peers.

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

pub struct Plan {
    plan: Value,
}

impl Plan {
    pub fn from_json(plan: Value) -> Result<Self> {
        if !plan.get("hosts").is_some_and(Value::is_array) {
            bail!("the plan has no `hosts` list");
        }
        for host in hosts(&plan) {
            for field in ["hostname", "role"] {
                if !host.get(field).is_some_and(Value::is_string) {
                    bail!("a host in the plan has no string `{field}`: {host}");
                }
            }
        }
        Ok(Self { plan })
    }

    pub fn load(path: &std::path::Path) -> Result<Self> {
        let is_json = path.extension().is_some_and(|ext| ext == "json");
        if !is_json {
            bail!(
                "{}: reading master.toml needs lectern-master's Plan, which imgbuild does not link yet; \
                 pass the plan as JSON (--config plan.json)",
                path.display()
            );
        }
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let plan =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        Self::from_json(plan)
    }

    fn conference(&self) -> Value {
        self.plan.get("conference").cloned().unwrap_or(Value::Null)
    }

    /// Roles some host in the plan has, sorted and deduplicated.
    pub fn roles(&self) -> Vec<String> {
        let mut roles: Vec<String> = hosts(&self.plan)
            .map(|host| role_of(host).to_owned())
            .collect();
        roles.sort();
        roles.dedup();
        roles
    }

    pub fn role_context(&self, role: &str) -> Value {
        json!({ "role": role, "conference": self.conference() })
    }

    /// `(hostname, context)` for every host of `role`, in plan order.
    pub fn host_contexts(&self, role: &str) -> Vec<(String, Value)> {
        let keys = self
            .plan
            .get("ssh_authorized_keys")
            .cloned()
            .unwrap_or_else(|| json!([]));
        hosts(&self.plan)
            .filter(|host| role_of(host) == role)
            .map(|host| {
                let hostname = host["hostname"].as_str().unwrap_or_default().to_owned();
                let context = json!({
                    "role": role,
                    "conference": self.conference(),
                    "ssh_authorized_keys": keys,
                    "host": host,
                    "room_hosts": self.room_hosts(host),
                });
                (hostname, context)
            })
            .collect()
    }
}

impl Plan {
    /// `{hostname, ip}` of the other hosts in `host`'s room that have an address, so that /etc/hosts can
    /// resolve the single-label names the plan uses (mDNS only answers for `.local`).
    fn room_hosts(&self, host: &Value) -> Vec<Value> {
        let Some(room) = host.get("room").filter(|room| room.is_string()) else {
            return Vec::new();
        };
        hosts(&self.plan)
            .filter(|peer| peer.get("room") == Some(room) && peer["hostname"] != host["hostname"])
            .filter_map(|peer| {
                Some(json!({ "hostname": peer["hostname"], "ip": peer.get("ip")?.as_str()? }))
            })
            .collect()
    }
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
mod tests {
    use super::*;

    fn plan() -> Plan {
        Plan::from_json(json!({
            "conference": { "org": "fosdem", "slug": "fosdem2027" },
            "ssh_authorized_keys": ["ssh-ed25519 AAAA team"],
            "hosts": [
                { "hostname": "a-mixer", "role": "mixer", "room": "a", "ip": "10.0.0.1" },
                { "hostname": "a-src", "role": "source", "room": "a", "ip": "10.0.0.2" },
                { "hostname": "a-enc", "role": "encoder", "encoder": { "push_url": "rtmp://x/a?key=s3cret" } },
                { "hostname": "b-mixer", "role": "mixer", "room": "b" }
            ]
        }))
        .unwrap()
    }

    #[test]
    fn role_context_has_no_hosts_and_no_secrets() {
        let context = plan().role_context("encoder");
        assert_eq!(context["role"], "encoder");
        assert_eq!(context["conference"]["org"], "fosdem");
        assert!(!context.to_string().contains("s3cret"));
        assert!(context.get("host").is_none());
    }

    #[test]
    fn host_contexts_select_the_role() {
        let plan = plan();
        assert_eq!(plan.roles(), ["encoder", "mixer", "source"]);
        let mixers = plan.host_contexts("mixer");
        let names: Vec<&str> = mixers.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, ["a-mixer", "b-mixer"]);
        assert_eq!(mixers[1].1["host"]["room"], "b");
        assert_eq!(
            mixers[0].1["ssh_authorized_keys"][0],
            "ssh-ed25519 AAAA team"
        );
    }

    #[test]
    fn rejects_hosts_without_role() {
        assert!(Plan::from_json(json!({ "hosts": [{ "hostname": "x" }] })).is_err());
        assert!(Plan::from_json(json!({})).is_err());
    }
}
