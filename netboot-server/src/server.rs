//! Wires the protocols to one policy, timeline and metrics, and runs them until SIGTERM or
//! SIGINT. SIGHUP reloads the policy; transfers in flight keep what they opened.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{Context, anyhow};
use tokio::net::{TcpListener, UdpSocket};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::oneshot;

use crate::dhcp::{self, Mode, Responder, pool::Pool};
use crate::http::{self, HttpState};
use crate::mac::MacAddr;
use crate::metrics::Metrics;
use crate::policy::{BootPolicy, SharedPolicy};
use crate::ra;
use crate::tftp::{self, TftpServer};
use crate::timeline::Timeline;
use crate::urls::Urls;

/// Lease file name inside the state directory.
pub const LEASE_FILE: &str = "dhcp-leases.json";
/// The boot timeline (and each boot's report token), inside the state directory.
pub const TIMELINE_FILE: &str = "timeline.json";

/// A TFTP transfer or an HTTP download holds its socket and the file it serves.
const DESCRIPTORS_PER_TRANSFER: u64 = 2;
/// Listeners, DHCP and RA sockets, the lease file, the runtime's own.
const DESCRIPTOR_MARGIN: u64 = 64;

/// Descriptors the caps let clients make us hold, with room for our own.
fn descriptors_needed(tftp: &tftp::Limits, http: &http::Limits) -> u64 {
    let transfers = (tftp.total + http.connections) as u64;
    transfers * DESCRIPTORS_PER_TRANSFER + DESCRIPTOR_MARGIN
}

/// The soft limit to set, if the current one is short of `needed`: as far as the hard limit.
fn raised_soft_limit(soft: u64, hard: u64, needed: u64) -> Option<u64> {
    (soft < needed && hard > soft).then_some(hard)
}

/// Past the descriptor limit, accepts and transfers fail for everyone, not just the peer
/// holding them: make sure the caps bite first.
fn ensure_descriptor_limit(needed: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "cannot read the descriptor limit");
        return;
    }
    if let Some(raised) = raised_soft_limit(limit.rlim_cur, limit.rlim_max, needed) {
        let wanted = libc::rlimit {
            rlim_cur: raised,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) } == 0 {
            limit.rlim_cur = raised;
        }
    }
    if limit.rlim_cur < needed {
        tracing::warn!(
            limit = limit.rlim_cur,
            needed,
            "descriptor limit below what the TFTP and HTTP caps allow: raise LimitNOFILE"
        );
    }
}

/// What needs new sockets to change; a reload leaves it as it is.
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
    /// Where the operator's views (`/api/hosts`, `/metrics`) listen.
    pub operator_address: SocketAddr,
    /// A host silent for this long is shown stale.
    pub stale_after: Duration,
    pub tftp_limits: tftp::Limits,
    pub http_limits: http::Limits,
    /// The HTTPS side (secrets and reports); without it no host gets its secrets or may report.
    pub https: Option<Https>,
}

/// Where HTTPS listens, and the key whose pin the hosts carry (its `Debug` shows the pin only).
#[derive(Debug, Clone)]
pub struct Https {
    pub port: u16,
    pub key: lectern_store::ServerKey,
}

/// The settings of `wanted` that differ from `running` and that only a restart applies (they
/// hold sockets or shape the server); the policy itself, leases and reservations reload.
pub fn needs_restart(running: &ServerConfig, wanted: &ServerConfig) -> Vec<&'static str> {
    let port = |config: &ServerConfig| config.https.as_ref().map(|https| https.port);
    let key = |config: &ServerConfig| config.https.as_ref().map(|https| https.key.pin.clone());
    [
        (
            "network.dhcp.interface",
            running.interface != wanted.interface,
        ),
        (
            "the netboot machine's ip",
            running.server_ip != wanted.server_ip,
        ),
        ("network.dhcp.mode", running.mode != wanted.mode),
        // A range moves with a reload; a pool comes or goes only with a restart.
        (
            "network.dhcp.range",
            running.pool.is_some() != wanted.pool.is_some(),
        ),
        ("netboot.http_port", running.http_port != wanted.http_port),
        ("netboot.https_port", port(running) != port(wanted)),
        ("netbootd's TLS key", key(running) != key(wanted)),
        (
            "netboot.operator_address",
            running.operator_address != wanted.operator_address,
        ),
        (
            "netboot.stale_after_missed_beats",
            running.stale_after != wanted.stale_after,
        ),
        (
            "netboot.limits",
            (running.tftp_limits, running.http_limits) != (wanted.tftp_limits, wanted.http_limits),
        ),
    ]
    .into_iter()
    .filter_map(|(setting, changed)| changed.then_some(setting))
    .collect()
}

fn reservations(policy: &dyn BootPolicy) -> Vec<(MacAddr, Ipv4Addr)> {
    policy
        .hosts()
        .iter()
        .filter_map(|host| Some((host.mac, host.ip?)))
        .collect()
}

/// Puts `policy` in force: only its hosts get timeline records; its reservations go to the
/// timeline and out of the pool.
pub fn apply_policy(
    policy: Arc<dyn BootPolicy>,
    shared: &SharedPolicy,
    pool: Option<&Mutex<Pool>>,
    timeline: &Timeline,
) {
    timeline.set_known(policy.hosts().iter().map(|host| host.mac));
    let reserved = reservations(&*policy);
    for (mac, ip) in &reserved {
        timeline.bind_address(*mac, *ip);
    }
    if let Some(pool) = pool {
        {
            let mut pool = pool.lock().expect("pool lock");
            // What clients are told is what the pool records.
            pool.set_lease_time(policy.network().lease_time);
            pool.set_reservations(reserved);
        }
        dhcp::pool::save(pool);
    }
    shared.replace(policy);
}

/// Runs the future `serve` makes on a single-threaded runtime of a thread of its own, apart from HTTP's
/// runtime: the kernel wakes that thread as soon as a datagram arrives, however busy the HTTP workers
/// are with a storm's downloads (DHCP answered behind them in 15 ms, with retries at 90 hosts, where
/// dnsmasq beside nginx answered in 2). Resolves when it stops.
fn serve_on_own_thread<Serve, Serving>(
    name: &str,
    serve: Serve,
) -> anyhow::Result<oneshot::Receiver<anyhow::Result<()>>>
where
    Serve: FnOnce() -> Serving + Send + 'static,
    Serving: std::future::Future<Output = anyhow::Result<()>>,
{
    let (stopped, result) = oneshot::channel();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let outcome = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|runtime| runtime.block_on(serve()));
            let _ = stopped.send(outcome);
        })?;
    Ok(result)
}

/// How often [`run`] asks whether the policy's inputs changed.
const CHANGE_POLL: Duration = Duration::from_secs(2);

/// Serves until a signal. `load` builds the policy and the settings it comes with, at start and
/// again on every SIGHUP and whenever `changed` (polled every [`CHANGE_POLL`]) says its inputs
/// changed (a build or a rollback in the store). A reload applies what it can (the policy, the
/// lease time, the pool's range) and names what needs a restart; a failed one keeps the running
/// policy.
pub async fn run(
    config: ServerConfig,
    load: impl Fn() -> anyhow::Result<(Arc<dyn BootPolicy>, ServerConfig)>,
    mut changed: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let (tftp_limits, http_limits) = (config.tftp_limits, config.http_limits);
    let dhcp = match config.mode {
        Mode::Authoritative => "authoritative DHCP",
        Mode::Proxy => "proxyDHCP",
    };
    tracing::info!(
        "netbootd {}: {dhcp} on {} as {}, TFTP, HTTP on port {}",
        lectern_master::VERSION,
        config.interface,
        config.server_ip,
        config.http_port
    );
    ensure_descriptor_limit(descriptors_needed(&tftp_limits, &http_limits));
    let (initial, _) = load().context("loading the boot policy")?;
    let metrics = Arc::new(Metrics::default());
    let timeline = Arc::new(Timeline::persistent(
        Arc::clone(&metrics),
        config.state_dir.join(TIMELINE_FILE),
    ));
    let urls = Urls::new(format!("http://{}:{}", config.server_ip, config.http_port));
    let pool = match (config.pool, config.mode) {
        (Some((first, last)), Mode::Authoritative) => {
            let lease_file = config.state_dir.join(LEASE_FILE);
            let lease_time = initial.network().lease_time;
            let pool = Pool::load(
                first,
                last,
                lease_time,
                reservations(&*initial),
                lease_file.clone(),
                SystemTime::now(),
            )
            .with_context(|| {
                let file = lease_file.display();
                format!(
                    "loading leases from {file}\n  help: if it is damaged, move it aside (mv {file} {file}.corrupt) and start again: \
                     netbootd then knows no dynamic lease, and may offer a client's address to another until that client renews"
                )
            })?;
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
    let policy = SharedPolicy::new(Arc::clone(&initial));
    apply_policy(initial, &policy, pool.as_ref(), &timeline);
    let responder = Arc::new(Responder {
        mode: config.mode,
        server_ip: config.server_ip,
        policy: policy.clone(),
        pool,
        timeline: Arc::clone(&timeline),
        metrics: Arc::clone(&metrics),
        urls: urls.clone(),
    });
    let tftp_socket = std::net::UdpSocket::bind((config.server_ip, tftp::PORT))
        .with_context(|| format!("binding TFTP {}:{}", config.server_ip, tftp::PORT))?;
    let tftp = Arc::new(TftpServer {
        root: config.tftp_root.clone(),
        timeline: Arc::clone(&timeline),
        metrics: Arc::clone(&metrics),
        limits: tftp_limits,
    });
    let http_address = SocketAddr::from((config.server_ip, config.http_port));
    let http_listener = TcpListener::bind(http_address)
        .await
        .with_context(|| format!("binding HTTP {http_address}"))?;
    tracing::info!(%http_address, "HTTP listening");
    let operator_listener = TcpListener::bind(config.operator_address)
        .await
        .with_context(|| {
            format!(
                "binding the operator's views to {}",
                config.operator_address
            )
        })?;
    tracing::info!(address = %config.operator_address, "operator's views listening");
    let https = match &config.https {
        Some(https) => {
            let tls = crate::tls::server_config(&https.key.pem)?;
            let address = SocketAddr::from((config.server_ip, https.port));
            let listener = TcpListener::bind(address)
                .await
                .with_context(|| format!("binding HTTPS {address}"))?;
            tracing::info!(%address, "HTTPS listening");
            Some((listener, tls))
        }
        None => {
            tracing::warn!("no TLS key: hosts can neither fetch their secrets nor report");
            None
        }
    };
    // Without CAP_NET_RAW the rest still works; boots just take the IPv6 wait.
    let router_advertisements = {
        let (interface, policy, metrics) = (
            config.interface.clone(),
            policy.clone(),
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
        policy: policy.clone(),
        timeline: Arc::clone(&timeline),
        metrics,
        urls,
        firmware_root: config.tftp_root.clone(),
        stale_after: config.stale_after,
        tpm_challenges: Default::default(),
        leases_are_ours: config.mode == Mode::Authoritative,
    });
    // Each TFTP transfer then runs on a thread of its own (`tftp::TRANSFER_STACK` says why).
    let tftp_stopped = serve_on_own_thread("tftp", move || async move {
        tftp_socket.set_nonblocking(true)?;
        tftp.serve(UdpSocket::from_std(tftp_socket)?).await
    })?;
    let dhcp_stopped = {
        let (responder, interface) = (Arc::clone(&responder), config.interface.clone());
        serve_on_own_thread("dhcp", move || async move {
            dhcp::serve(responder, &interface).await
        })?
    };
    let serving = async {
        tokio::select! {
            result = dhcp_stopped => result.unwrap_or_else(|_| Err(anyhow!("DHCP thread died"))).context("DHCP"),
            result = tftp_stopped => result.unwrap_or_else(|_| Err(anyhow!("TFTP thread died"))).context("TFTP"),
            result = http::serve(http_listener, Arc::clone(&http_state), http_limits) => result.context("HTTP"),
            result = http::serve_operator(operator_listener, Arc::clone(&http_state), http_limits) => result.context("operator's views"),
            result = async {
                match https {
                    Some((listener, tls)) => http::serve_tls(listener, http_state, http_limits, tls).await,
                    None => std::future::pending().await,
                }
            } => result.context("HTTPS"),
            result = router_advertisements => result,
        }
    };
    tokio::pin!(serving);
    let mut hangup = signal(SignalKind::hangup())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut poll = tokio::time::interval(CHANGE_POLL);
    let running = config.clone();
    let reload = |why: &str| match load() {
        Ok((reloaded, wanted)) => {
            let hosts = reloaded.hosts().len();
            if let (Some(pool), Some((first, last))) = (&responder.pool, wanted.pool) {
                pool.lock().expect("pool lock").set_range(first, last);
            }
            apply_policy(reloaded, &policy, responder.pool.as_ref(), &timeline);
            for setting in needs_restart(&running, &wanted) {
                tracing::warn!(
                    "{setting} changed: restart netbootd to apply it (it keeps the old one until then)"
                );
            }
            tracing::info!(hosts, why, "reloaded the boot policy");
        }
        Err(error) => tracing::error!(
            error = format!("{error:#}"),
            why,
            "reload failed: keeping the running policy"
        ),
    };
    loop {
        tokio::select! {
            result = &mut serving => return result,
            _ = hangup.recv() => reload("SIGHUP"),
            _ = poll.tick() => {
                if changed() { reload("the store changed") }
                timeline.save();
            }
            _ = terminate.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    tracing::info!("stopping");
    timeline.save();
    Ok(())
}

/// Resolves at SIGTERM or Ctrl-C.
pub async fn terminated() {
    match signal(SignalKind::terminate()) {
        Ok(mut terminate) => tokio::select! {
            _ = terminate.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        },
        Err(_) => {
            tokio::signal::ctrl_c().await.ok();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_names_the_settings_only_a_restart_applies() {
        let running = ServerConfig {
            interface: "lectern0".into(),
            server_ip: Ipv4Addr::new(10, 42, 0, 1),
            mode: Mode::Authoritative,
            pool: Some((Ipv4Addr::new(10, 42, 0, 200), Ipv4Addr::new(10, 42, 0, 250))),
            state_dir: "/var/lib/netbootd".into(),
            tftp_root: "/usr/lib/ipxe".into(),
            http_port: 8080,
            operator_address: "127.0.0.1:8081".parse().unwrap(),
            stale_after: Duration::from_secs(90),
            tftp_limits: tftp::Limits::default(),
            http_limits: http::Limits::default(),
            https: None,
        };
        assert_eq!(
            needs_restart(&running, &running.clone()),
            Vec::<&str>::new()
        );
        let moved = ServerConfig {
            pool: Some((Ipv4Addr::new(10, 42, 0, 100), Ipv4Addr::new(10, 42, 0, 150))),
            ..running.clone()
        };
        assert_eq!(
            needs_restart(&running, &moved),
            Vec::<&str>::new(),
            "a reload moves the range"
        );
        let wanted = ServerConfig {
            mode: Mode::Proxy,
            pool: None,
            ..running.clone()
        };
        assert_eq!(
            needs_restart(&running, &wanted),
            ["network.dhcp.mode", "network.dhcp.range"]
        );
    }

    #[test]
    fn the_descriptor_limit_covers_the_caps_and_is_raised_only_when_short() {
        let needed = descriptors_needed(&tftp::Limits::default(), &http::Limits::default());
        assert_eq!(needed, (256 + 512) * 2 + 64);
        assert!(
            needed <= 4096,
            "systemd/netbootd.service sets LimitNOFILE=4096"
        );
        assert_eq!(raised_soft_limit(1024, 524_288, needed), Some(524_288));
        assert_eq!(raised_soft_limit(4096, 524_288, needed), None);
        assert_eq!(
            raised_soft_limit(1024, 1024, needed),
            None,
            "nothing to raise to"
        );
    }
}
