//! Wires the protocols to one policy, timeline and metrics, and runs them until a signal.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use anyhow::Context;
use tokio::net::{TcpListener, UdpSocket};

use crate::dhcp::{self, Mode, Responder, pool::Pool};
use crate::http::{self, HttpState, Urls};
use crate::metrics::Metrics;
use crate::policy::BootPolicy;
use crate::ra;
use crate::tftp::{self, TftpServer};
use crate::timeline::Timeline;

/// Lease file name inside the state directory.
pub const LEASE_FILE: &str = "dhcp-leases.json";

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// DHCP listens only here.
    pub interface: String,
    /// This server's address on `interface`: DHCP server identifier, TFTP and HTTP bind here.
    pub server_ip: Ipv4Addr,
    pub mode: Mode,
    /// Dynamic pool, first and last address (authoritative mode only).
    pub pool: Option<(Ipv4Addr, Ipv4Addr)>,
    pub state_dir: PathBuf,
    pub tftp_root: PathBuf,
    pub http_port: u16,
}

pub async fn run(config: ServerConfig, policy: Arc<dyn BootPolicy>) -> anyhow::Result<()> {
    let timeline = Arc::new(Timeline::default());
    let metrics = Arc::new(Metrics::default());
    let urls = Urls::new(format!("http://{}:{}", config.server_ip, config.http_port));
    let reservations: Vec<_> = policy
        .hosts()
        .iter()
        .filter_map(|host| Some((host.mac, host.ip?)))
        .collect();
    for (mac, ip) in &reservations {
        timeline.bind_address(*mac, *ip);
    }
    let pool = match (config.pool, config.mode) {
        (Some((first, last)), Mode::Authoritative) => {
            let lease_file = config.state_dir.join(LEASE_FILE);
            let lease_time = policy.network().lease_time;
            let pool = Pool::load(
                first,
                last,
                lease_time,
                reservations,
                lease_file.clone(),
                SystemTime::now(),
            )
            .with_context(|| format!("loading leases from {}", lease_file.display()))?;
            for (mac, ip) in pool.leases() {
                timeline.bind_address(mac, ip);
            }
            Some(Mutex::new(pool))
        }
        (Some(_), Mode::Proxy) => {
            tracing::warn!("proxy mode hands out no addresses: the dynamic pool is ignored");
            None
        }
        (None, _) => None,
    };
    let responder = Arc::new(Responder {
        mode: config.mode,
        server_ip: config.server_ip,
        policy: Arc::clone(&policy),
        pool,
        timeline: Arc::clone(&timeline),
        metrics: Arc::clone(&metrics),
        urls: urls.clone(),
    });
    let tftp_socket = UdpSocket::bind((config.server_ip, tftp::PORT))
        .await
        .with_context(|| format!("binding TFTP {}:{}", config.server_ip, tftp::PORT))?;
    let tftp = Arc::new(TftpServer {
        root: config.tftp_root.clone(),
        timeline: Arc::clone(&timeline),
        metrics: Arc::clone(&metrics),
    });
    let http_address = SocketAddr::from((config.server_ip, config.http_port));
    let http_listener = TcpListener::bind(http_address)
        .await
        .with_context(|| format!("binding HTTP {http_address}"))?;
    // Without CAP_NET_RAW the rest still works; boots just take the IPv6 wait.
    let router_advertisements = {
        let (interface, policy, metrics) = (
            config.interface.clone(),
            Arc::clone(&policy),
            Arc::clone(&metrics),
        );
        async move {
            if let Err(error) = ra::serve(&interface, policy, metrics).await {
                tracing::warn!(
                    error = format!("{error:#}"),
                    "no IPv6 router advertisements: iPXE will wait for one"
                );
            }
            std::future::pending().await
        }
    };
    let http_state = Arc::new(HttpState {
        policy,
        timeline,
        metrics,
        urls,
        firmware_root: config.tftp_root,
    });
    tracing::info!(%http_address, "HTTP listening");

    tokio::select! {
        result = dhcp::serve(responder, &config.interface) => result.context("DHCP"),
        result = router_advertisements => result,
        result = tftp.serve(tftp_socket) => result.context("TFTP"),
        result = http::serve(http_listener, http_state) => result.context("HTTP"),
        signal = shutdown_signal() => {
            tracing::info!(signal, "stopping");
            Ok(())
        }
    }
}

async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = terminate.recv() => "SIGTERM",
    }
}
