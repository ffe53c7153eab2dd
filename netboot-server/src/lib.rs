//! netbootd: DHCP, TFTP and HTTP that boot every machine of the fleet by MAC.
//!
//! Each protocol lives in its own module and asks one question of one object, the
//! [`policy::BootPolicy`]: "what does this client boot next?". The protocols know nothing of
//! rooms or roles; whatever they see is recorded into the shared [`timeline::Timeline`] and
//! counted in [`metrics::Metrics`].

pub mod check;
pub mod dhcp;
pub mod http;
pub mod mac;
pub mod metrics;
pub mod policy;
pub mod ra;
pub mod safe_path;
pub mod server;
pub mod tftp;
pub mod timeline;
