//! Counters every protocol bumps, rendered by hand as Prometheus text for `/metrics`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

/// A counter family: its name and help line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Counter {
    pub name: &'static str,
    pub help: &'static str,
}

pub const DHCP_RECEIVED: Counter = Counter {
    name: "netbootd_dhcp_received_total",
    help: "DHCP packets received, by port.",
};
pub const DHCP_REPLIED: Counter = Counter {
    name: "netbootd_dhcp_replies_total",
    help: "DHCP replies sent, by type.",
};
pub const DHCP_DROPPED: Counter = Counter {
    name: "netbootd_dhcp_dropped_total",
    help: "DHCP packets dropped without a reply, by reason.",
};
pub const DHCP_NOTED: Counter = Counter {
    name: "netbootd_dhcp_noted_total",
    help: "DHCP messages taken that want no reply (a release, a decline, a request to the venue's server), by type.",
};
pub const TFTP_REQUESTS: Counter = Counter {
    name: "netbootd_tftp_requests_total",
    help: "TFTP requests, by outcome.",
};
pub const TFTP_TRANSFERS: Counter = Counter {
    name: "netbootd_tftp_transfers_total",
    help: "TFTP transfers that ended, by outcome.",
};
pub const HTTP_RESPONSES: Counter = Counter {
    name: "netbootd_http_responses_total",
    help: "HTTP responses, by route and status class.",
};
pub const HTTP_CONNECTIONS_CUT: Counter = Counter {
    name: "netbootd_http_connections_cut_total",
    help: "HTTP connections refused or closed by a limit, by reason.",
};
pub const TIMELINE_STRANGERS: Counter = Counter {
    name: "netbootd_timeline_strangers_total",
    help: "Events from MACs outside the policy, counted instead of recorded, by event.",
};
pub const SECRETS: Counter = Counter {
    name: "netbootd_secrets_total",
    help: "Requests for a host's secrets, by outcome (released, or why refused).",
};
pub const LIVE_LAYERS: Counter = Counter {
    name: "netbootd_live_layers_total",
    help: "Requests for a running host's layer (a live update), by outcome (released, or why refused).",
};
pub const REPORTS_REFUSED: Counter = Counter {
    name: "netbootd_reports_refused_total",
    help: "Boot reports refused, by reason.",
};

pub const RA_SENT: Counter = Counter {
    name: "netbootd_router_advertisements_total",
    help: "IPv6 router advertisements sent to end iPXE's wait.",
};

type Labels = Vec<(&'static str, &'static str)>;

#[derive(Debug, Default)]
pub struct Metrics {
    counters: Mutex<BTreeMap<(Counter, Labels), u64>>,
}

impl Metrics {
    pub fn inc(&self, counter: Counter, labels: &[(&'static str, &'static str)]) {
        self.add(counter, labels, 1);
    }

    pub fn add(&self, counter: Counter, labels: &[(&'static str, &'static str)], count: u64) {
        let mut counters = self.counters.lock().expect("metrics lock");
        *counters.entry((counter, labels.to_vec())).or_default() += count;
    }

    pub fn get(&self, counter: Counter, labels: &[(&'static str, &'static str)]) -> u64 {
        let counters = self.counters.lock().expect("metrics lock");
        counters
            .get(&(counter, labels.to_vec()))
            .copied()
            .unwrap_or(0)
    }

    /// Prometheus text exposition format 0.0.4.
    pub fn render(&self) -> String {
        let counters = self.counters.lock().expect("metrics lock");
        let mut text = String::new();
        let mut family = None;
        for ((counter, labels), value) in counters.iter() {
            if family != Some(counter.name) {
                family = Some(counter.name);
                let _ = writeln!(
                    text,
                    "# HELP {} {}\n# TYPE {} counter",
                    counter.name, counter.help, counter.name
                );
            }
            let labels: Vec<String> = labels
                .iter()
                .map(|(key, value)| format!("{key}=\"{value}\""))
                .collect();
            let labels = if labels.is_empty() {
                String::new()
            } else {
                format!("{{{}}}", labels.join(","))
            };
            let _ = writeln!(text, "{}{labels} {value}", counter.name);
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_one_header_per_family() {
        let metrics = Metrics::default();
        metrics.inc(DHCP_DROPPED, &[("reason", "malformed")]);
        metrics.inc(DHCP_DROPPED, &[("reason", "malformed")]);
        metrics.inc(DHCP_DROPPED, &[("reason", "unknown_client")]);
        assert_eq!(metrics.get(DHCP_DROPPED, &[("reason", "malformed")]), 2);
        assert_eq!(
            metrics.render(),
            "# HELP netbootd_dhcp_dropped_total DHCP packets dropped without a reply, by reason.\n\
             # TYPE netbootd_dhcp_dropped_total counter\n\
             netbootd_dhcp_dropped_total{reason=\"malformed\"} 2\n\
             netbootd_dhcp_dropped_total{reason=\"unknown_client\"} 1\n"
        );
    }
}
