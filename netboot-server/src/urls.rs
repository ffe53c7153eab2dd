//! The paths netbootd's HTTP server answers and the URLs built from them. Apart from the server
//! (`http.rs`), so that the policy and DHCP can name URLs without depending on the server.

use crate::mac::MacAddr;

pub(crate) const ROUTE_SCRIPT: &str = "/ipxe/{mac}";
pub(crate) const ROUTE_ARTIFACT: &str = "/a/{hash}";
/// `{host}`: a MAC, or a host name of the master file.
pub(crate) const ROUTE_HOST_LAYER: &str = "/host/{host}/layer";
/// Over TLS only: `{host}` as for the layer.
pub(crate) const ROUTE_SECRETS: &str = "/host/{host}/secrets";
/// Over TLS only, to a running host: its whole layer again.
pub(crate) const ROUTE_LIVE_LAYER: &str = "/host/{host}/live-layer";
pub(crate) const ROUTE_FIRMWARE: &str = "/firmware/{file}";
pub(crate) const ROUTE_REPORT: &str = "/api/report";
pub(crate) const ROUTE_HOSTS: &str = "/api/hosts";
pub(crate) const ROUTE_HOST_EVENTS: &str = "/api/hosts/events";
pub(crate) const ROUTE_DASHBOARD: &str = "/";
pub(crate) const ROUTE_METRICS: &str = "/metrics";
pub(crate) const ROUTE_HEALTH: &str = "/healthz";
pub(crate) const ROUTES: [&str; 12] = [
    ROUTE_SCRIPT,
    ROUTE_ARTIFACT,
    ROUTE_HOST_LAYER,
    ROUTE_SECRETS,
    ROUTE_LIVE_LAYER,
    ROUTE_FIRMWARE,
    ROUTE_REPORT,
    ROUTE_HOSTS,
    ROUTE_HOST_EVENTS,
    ROUTE_DASHBOARD,
    ROUTE_METRICS,
    ROUTE_HEALTH,
];

/// Builds the URLs this server answers, from its base (`http://10.99.0.1:8080`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Urls {
    base: String,
}

impl Urls {
    pub fn new(base: impl Into<String>) -> Self {
        Urls {
            base: base.into().trim_end_matches('/').to_owned(),
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn route(&self, route: &str, parameter: &str) -> String {
        let path = route
            .split_once('{')
            .map_or(route.to_owned(), |(before, after)| {
                let rest = after.split_once('}').map_or("", |(_, rest)| rest);
                format!("{before}{parameter}{rest}")
            });
        format!("{}{path}", self.base)
    }

    pub fn ipxe_script(&self, mac: MacAddr) -> String {
        self.route(ROUTE_SCRIPT, &mac.to_string())
    }

    pub fn artifact(&self, hash: &str) -> String {
        self.route(ROUTE_ARTIFACT, hash)
    }

    pub fn host_layer(&self, mac: MacAddr) -> String {
        self.route(ROUTE_HOST_LAYER, &mac.to_string())
    }

    pub fn firmware(&self, file: &str) -> String {
        self.route(ROUTE_FIRMWARE, file)
    }
}
