//! netbootd: DHCP, TFTP and HTTP that boot every machine of the fleet by MAC.
//!
//! Each protocol lives in its own module and asks one question of one object, the
//! [`policy::BootPolicy`]: "what does this client boot next?". The protocols know nothing of
//! rooms or roles; whatever they see is recorded into the shared [`timeline::Timeline`] and
//! counted in [`metrics::Metrics`].
//!
//! A deployment provides one `BootPolicy` (hosts, network parameters, per-host iPXE script,
//! artifacts by hash, per-host layers) and hands [`server::run`] a closure that builds it;
//! the closure runs again on every SIGHUP. [`policy::StaticPolicy`] is the in-memory one that
//! tests and the command line use.

pub mod check;
pub mod cloud;
pub mod dhcp;
pub mod fleet;
pub mod http;
pub mod interface;
pub mod ipxe;
pub mod journal;
pub mod listing;
pub mod mac;
pub mod metrics;
pub mod plan_policy;
pub mod policy;
pub mod ra;
pub mod safe_path;
pub mod schedule;
pub mod server;
pub mod setup;
pub mod tftp;
pub mod timeline;
pub mod tls;
pub mod tpm;
pub mod urls;
pub mod verify;
pub mod vms;
