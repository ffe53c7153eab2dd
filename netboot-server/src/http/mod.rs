//! HTTP: per-host iPXE scripts, immutable artifacts by content hash, per-host layers (without
//! secrets) for their own host only, firmware files for UEFI HTTP boot, the boot timeline,
//! metrics and health. HTTPS (the same server over TLS): each host's secrets, once per boot, to
//! the host that proves it is the host; the boot reports, with the token that release gave; and,
//! to a running boot with that token that proves it all again, its whole layer (a live update).

mod file;
mod plain;

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Json;
use axum::extract::{ConnectInfo, DefaultBodyLimit, MatchedPath, Path as UrlPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tower::ServiceExt;

use crate::fleet;
use crate::mac::MacAddr;
use crate::metrics::{
    Counter, HTTP_CONNECTIONS_CUT, HTTP_RESPONSES, LIVE_LAYERS, Metrics, REPORTS_REFUSED, SECRETS,
};
use crate::policy::{BootPolicy, Host, LayerVersion, SharedPolicy, Smbios};
use crate::safe_path;
use crate::timeline::{Event, HostRecord, Refusal, Report, Timeline};
use crate::tpm;
use crate::urls::{
    ROUTE_ARTIFACT, ROUTE_DASHBOARD, ROUTE_FIRMWARE, ROUTE_HEALTH, ROUTE_HOST_EVENTS,
    ROUTE_HOST_LAYER, ROUTE_HOSTS, ROUTE_LIVE_LAYER, ROUTE_METRICS, ROUTE_REPORT, ROUTE_SCRIPT,
    ROUTE_SECRETS, ROUTES, Urls,
};

/// The response header that carries a boot's report token with its secrets.
pub const REPORT_TOKEN_HEADER: &str = "lectern-report-token";
/// The response header that names, with a boot's secrets, the version of the layer it boots with.
pub const LAYER_HEADER: &str = "lectern-layer";

/// Artifacts never change under their hash: cache them for a year.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// Host layers carry secrets: no cache may keep them.
const PRIVATE: &str = "no-store";
/// A boot report is a few hundred bytes; axum's default (2 MiB) would let every host on the
/// LAN make us parse and keep megabytes of `media` per report.
const REPORT_MAX_BYTES: usize = 64 * 1024;
/// A boot id, three SMBIOS strings and a TPM's public keys.
const SECRETS_REQUEST_MAX_BYTES: usize = 4 * 1024;

pub struct HttpState {
    pub policy: SharedPolicy,
    pub timeline: Arc<Timeline>,
    pub metrics: Arc<Metrics>,
    pub urls: Urls,
    /// The TFTP root, offered over HTTP to UEFI HTTP-boot firmware.
    pub firmware_root: PathBuf,
    /// A host whose last report is older than this is shown `stale`.
    pub stale_after: Duration,
    /// TPM credentials handed out for secrets and not yet redeemed.
    pub tpm_challenges: tpm::Challenges,
    /// Whether the address a host was last seen leasing proves it is that host: so when netbootd
    /// leased it (authoritative), not when anyone can claim it to the venue's DHCP (proxy).
    pub leases_are_ours: bool,
}

type AppState = State<Arc<HttpState>>;
type Peer = ConnectInfo<SocketAddr>;

/// What plain HTTP serves the LAN: what clients boot, nothing secret.
fn router(state: Arc<HttpState>) -> axum::Router {
    let routes = axum::Router::new()
        .route(ROUTE_SCRIPT, get(ipxe_script))
        .route(ROUTE_ARTIFACT, get(artifact))
        .route(ROUTE_HOST_LAYER, get(host_layer))
        .route(ROUTE_FIRMWARE, get(firmware));
    with_common(routes, state)
}

/// The operator's views, on an address of their own: every host's MAC, address and state, as
/// JSON, as a live stream of it, and as the fleet dashboard that follows that stream.
fn operator_router(state: Arc<HttpState>) -> axum::Router {
    let routes = axum::Router::new()
        .route(ROUTE_DASHBOARD, get(dashboard))
        .route(ROUTE_HOSTS, get(hosts))
        .route(ROUTE_HOST_EVENTS, get(host_events))
        .route(ROUTE_METRICS, get(metrics));
    with_common(routes, state)
}

/// What only TLS serves: secrets, the reports whose token came with them, and a running host's
/// layer again.
fn secure_router(state: Arc<HttpState>) -> axum::Router {
    let routes = axum::Router::new()
        .route(
            ROUTE_SECRETS,
            post(host_secrets).layer(DefaultBodyLimit::max(SECRETS_REQUEST_MAX_BYTES)),
        )
        .route(
            ROUTE_LIVE_LAYER,
            post(live_layer).layer(DefaultBodyLimit::max(SECRETS_REQUEST_MAX_BYTES)),
        )
        .route(
            ROUTE_REPORT,
            post(report).layer(DefaultBodyLimit::max(REPORT_MAX_BYTES)),
        );
    with_common(routes, state)
}

fn with_common(routes: axum::Router<Arc<HttpState>>, state: Arc<HttpState>) -> axum::Router {
    routes
        .route(ROUTE_HEALTH, get(|| async { "ok\n" }))
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            count_responses,
        ))
        .with_state(state)
}

/// What connections may hold: each holds a descriptor, so these bound what LAN peers can pin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections at once; any more are closed as soon as they are accepted.
    pub connections: usize,
    /// A request's headers must have arrived this long after the connection opened or the
    /// previous response ended: it also ends a kept-alive connection left waiting.
    pub header_read_timeout: Duration,
    /// A connection on which no byte has moved either way for this long is closed: a stalled
    /// download or upload. One that keeps flowing, however slowly, never is.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connections: 512,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
        }
    }
}

/// Serves the LAN ([`router`], files by sendfile) until accepting fails for good.
pub async fn serve(listener: TcpListener, state: Arc<HttpState>, limits: Limits) -> io::Result<()> {
    let metrics = Arc::clone(&state.metrics);
    accept(listener, router(state), metrics, limits, Protocol::Lan).await
}

/// Serves the operator's views ([`operator_router`]) until accepting fails for good.
pub async fn serve_operator(
    listener: TcpListener,
    state: Arc<HttpState>,
    limits: Limits,
) -> io::Result<()> {
    let metrics = Arc::clone(&state.metrics);
    accept(
        listener,
        operator_router(state),
        metrics,
        limits,
        Protocol::Hyper,
    )
    .await
}

/// Serves [`secure_router`] over TLS until accepting fails for good. A handshake must be done
/// within the header-read timeout.
pub async fn serve_tls(
    listener: TcpListener,
    state: Arc<HttpState>,
    limits: Limits,
    tls: Arc<rustls::ServerConfig>,
) -> io::Result<()> {
    let metrics = Arc::clone(&state.metrics);
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    accept(
        listener,
        secure_router(state),
        metrics,
        limits,
        Protocol::Tls(acceptor),
    )
    .await
}

/// How an accepted connection is served.
#[derive(Clone)]
enum Protocol {
    /// [`plain`]: what the LAN boots, files sent by sendfile(2).
    Lan,
    /// hyper, in the clear.
    Hyper,
    /// hyper over TLS.
    Tls(tokio_rustls::TlsAcceptor),
}

/// Our own loop rather than `axum::serve`, which sets no timer (so no header timeout) and
/// takes every connection offered.
async fn accept(
    listener: TcpListener,
    app: axum::Router,
    metrics: Arc<Metrics>,
    limits: Limits,
    protocol: Protocol,
) -> io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.connections));
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            // Out of descriptors, say: give connections time to close rather than spin.
            Err(error) => {
                tracing::warn!(%error, "HTTP accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            metrics.inc(HTTP_CONNECTIONS_CUT, &[("reason", "over_cap")]);
            continue;
        };
        let (app, http1, metrics) = (app.clone(), http1.clone(), Arc::clone(&metrics));
        let protocol = protocol.clone();
        tokio::spawn(async move {
            let idle = limits.idle_timeout;
            match protocol {
                Protocol::Lan => plain::serve_connection(stream, peer, app, &metrics, limits).await,
                Protocol::Hyper => {
                    serve_connection(stream, peer, app, &http1, &metrics, idle).await
                }
                Protocol::Tls(tls) => {
                    let handshake = tls.accept(stream);
                    match tokio::time::timeout(limits.header_read_timeout, handshake).await {
                        Ok(Ok(stream)) => {
                            serve_connection(stream, peer, app, &http1, &metrics, idle).await;
                        }
                        Ok(Err(error)) => {
                            metrics.inc(HTTP_CONNECTIONS_CUT, &[("reason", "tls_handshake")]);
                            tracing::debug!(%peer, %error, "TLS handshake failed");
                        }
                        Err(_) => {
                            metrics.inc(HTTP_CONNECTIONS_CUT, &[("reason", "tls_timeout")]);
                        }
                    }
                }
            }
            drop(permit);
        });
    }
}

async fn serve_connection<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    stream: S,
    peer: SocketAddr,
    app: axum::Router,
    http1: &hyper::server::conn::http1::Builder,
    metrics: &Metrics,
    idle_timeout: Duration,
) {
    let opened = Instant::now();
    let moved = Arc::new(AtomicU64::default());
    let stream = Watched {
        stream,
        opened,
        moved_at_ms: Arc::clone(&moved),
    };
    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        app.clone().oneshot(request)
    });
    let connection = http1.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    loop {
        let idle_until =
            opened + Duration::from_millis(moved.load(Ordering::Relaxed)) + idle_timeout;
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    if error.is_timeout() {
                        metrics.inc(HTTP_CONNECTIONS_CUT, &[("reason", "header_timeout")]);
                    }
                    tracing::debug!(%peer, %error, "HTTP connection ended");
                }
                return;
            }
            () = tokio::time::sleep_until(idle_until) => {
                let moved_at = opened + Duration::from_millis(moved.load(Ordering::Relaxed));
                if moved_at.elapsed() >= idle_timeout {
                    metrics.inc(HTTP_CONNECTIONS_CUT, &[("reason", "idle_timeout")]);
                    tracing::debug!(%peer, "closed an idle HTTP connection");
                    return;
                }
            }
        }
    }
}

/// A connection that notes when a byte last moved, for the idle timeout.
struct Watched<S> {
    stream: S,
    opened: Instant,
    /// Milliseconds after `opened`.
    moved_at_ms: Arc<AtomicU64>,
}

impl<S> Watched<S> {
    fn moved(&self) {
        let since = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.moved_at_ms.store(since, Ordering::Relaxed);
    }

    fn noting<T>(
        &self,
        poll: Poll<io::Result<T>>,
        moved: impl Fn(&T) -> bool,
    ) -> Poll<io::Result<T>> {
        if let Poll::Ready(Ok(value)) = &poll
            && moved(value)
        {
            self.moved();
        }
        poll
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.stream).poll_read(cx, buf);
        let read = buf.filled().len() > before;
        self.noting(poll, |()| read)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.noting(poll, |written| *written > 0)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.noting(poll, |written| *written > 0)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

async fn count_responses(State(state): AppState, request: Request, next: Next) -> Response {
    let matched = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned());
    let route = ROUTES
        .into_iter()
        .find(|route| matched.as_deref() == Some(*route))
        .unwrap_or("unmatched");
    let response = next.run(request).await;
    let status = match response.status().as_u16() {
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    state
        .metrics
        .inc(HTTP_RESPONSES, &[("route", route), ("status", status)]);
    response
}

fn peer_ipv4(peer: SocketAddr) -> Option<Ipv4Addr> {
    match peer {
        SocketAddr::V4(v4) => Some(*v4.ip()),
        SocketAddr::V6(v6) => v6.ip().to_ipv4_mapped(),
    }
}

/// The address that holds the host's reservation or, without one, its latest lease.
fn address_of(state: &HttpState, host: &Host) -> Option<Ipv4Addr> {
    host.ip.or_else(|| state.timeline.ip_of(host.mac))
}

fn known_host<'a>(policy: &'a dyn BootPolicy, mac: &str) -> Result<&'a Host, StatusCode> {
    let mac: MacAddr = mac.parse().map_err(|_| StatusCode::NOT_FOUND)?;
    policy.host(mac).ok_or(StatusCode::NOT_FOUND)
}

async fn ipxe_script(
    State(state): AppState,
    UrlPath(mac): UrlPath<String>,
) -> Result<Response, StatusCode> {
    let policy = state.policy.current();
    let host = known_host(&*policy, &mac)?;
    let boot = policy.boot(host).ok_or(StatusCode::NOT_FOUND)?;
    let script = crate::ipxe::script(&boot, host.mac, &state.urls);
    state.timeline.record(host.mac, Event::IpxeScript);
    Ok((
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        script,
    )
        .into_response())
}

async fn artifact(
    State(state): AppState,
    ConnectInfo(peer): Peer,
    UrlPath(hash): UrlPath<String>,
    headers: HeaderMap,
) -> Result<Response, StatusCode> {
    let artifact = state
        .policy
        .current()
        .artifact(&hash)
        .ok_or(StatusCode::NOT_FOUND)?;
    if let Some(ip) = peer_ipv4(peer) {
        state
            .timeline
            .record_from(ip, Event::Artifact(artifact.kind));
    }
    let etag = HeaderValue::from_str(&format!("\"{hash}\"")).map_err(|_| StatusCode::NOT_FOUND)?;
    Ok(file::respond(
        &headers,
        &artifact.path,
        IMMUTABLE,
        Some(etag),
    ))
}

/// Only to the host's own address (see [`address_of`]).
async fn host_layer(
    State(state): AppState,
    ConnectInfo(peer): Peer,
    UrlPath(host): UrlPath<String>,
    headers: HeaderMap,
) -> Result<Response, StatusCode> {
    let policy = state.policy.current();
    // By MAC (netboot, and disks that know only their MAC) or by the name a disk-booted machine's
    // firmware gives it; either way only from the address the host holds.
    let host = known_host(&*policy, &host)
        .or_else(|_| policy.host_named(&host).ok_or(StatusCode::NOT_FOUND))?;
    let holder = address_of(&state, host);
    if holder.is_none() || holder != peer_ipv4(peer) {
        tracing::warn!(%peer, mac = %host.mac, ?holder, "refused host layer to an address that does not hold it");
        return Err(StatusCode::FORBIDDEN);
    }
    let path = policy.host_layer(host).ok_or(StatusCode::NOT_FOUND)?;
    state.timeline.record(host.mac, Event::HostLayer);
    if let Some(version) = policy.host_layer_version(host) {
        state.timeline.layer_served(host.mac, &version.public);
    }
    Ok(file::respond(&headers, &path, PRIVATE, None))
}

/// The endorsement key and the key Name a TPM proof presents, or why they are unusable.
fn tpm_keys(proof: &TpmProof) -> Result<(tpm::EndorsementKey, [u8; tpm::NAME_LEN]), String> {
    let public = BASE64
        .decode(&proof.ek_public)
        .map_err(|_| "its TPM endorsement key is not base64".to_owned())?;
    let ek = tpm::EndorsementKey::parse(&public)
        .map_err(|why| format!("its TPM endorsement key is unusable: {why}"))?;
    let ak_name = tpm::parse_name(&proof.ak_name)
        .ok_or_else(|| "its TPM key Name is not a SHA-256 Name".to_owned())?;
    Ok((ek, ak_name))
}

/// What a booted host sends for its secrets: its boot, what its firmware says it is and, when
/// asked, its TPM's part of the credential exchange.
#[derive(Debug, serde::Deserialize)]
struct SecretsRequest {
    boot_id: String,
    #[serde(flatten)]
    smbios: Smbios,
    #[serde(default)]
    tpm: Option<TpmProof>,
}

/// The TPM's keys (`tpm2_createek -G rsa -u`, base64, and `tpm2_createak -n`, hexadecimal) and,
/// once challenged, the credential it recovered (`tpm2_activatecredential -o`, hexadecimal).
#[derive(Debug, serde::Deserialize)]
struct TpmProof {
    ek_public: String,
    ak_name: String,
    #[serde(default)]
    activated: Option<String>,
}

/// What a host whose policy names its TPM is told until it has proved it: 401 with
/// `{"needs":"tpm"}`, then with `{"credential":"<base64 tpm2-tools credential file>"}`.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "lowercase")]
enum TpmChallenge {
    Needs(&'static str),
    Credential(String),
}

/// Where a host's secrets go out: once at each boot, or again to a running boot for a live update
/// of its layer. Each counts and notes its refusals under its own name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivery {
    AtBoot,
    Live,
}

impl Delivery {
    fn counter(self) -> Counter {
        match self {
            Delivery::AtBoot => SECRETS,
            Delivery::Live => LIVE_LAYERS,
        }
    }

    fn what(self) -> &'static str {
        match self {
            Delivery::AtBoot => "secrets",
            Delivery::Live => "live layer",
        }
    }
}

/// Refuses `host`'s secrets to `peer` (403): counted, logged with what was presented (for the
/// operator to copy into the master file, not for the API) and noted on the host.
fn refuse(
    state: &HttpState,
    host: &Host,
    peer: SocketAddr,
    request: &SecretsRequest,
    delivery: Delivery,
    outcome: &'static str,
    why: String,
) -> Response {
    state
        .metrics
        .inc(delivery.counter(), &[("outcome", outcome)]);
    let (presented, what) = (&request.smbios, delivery.what());
    tracing::warn!(host = %host.hostname, %peer, outcome, ?presented, "refused the host's {what}: {why}");
    state
        .timeline
        .alert(host.mac, &format!("{what} refused to {peer}: {why}"));
    StatusCode::FORBIDDEN.into_response()
}

/// The host a request names, by MAC or by name; counted under `delivery` when there is none.
fn requested_host<'a>(
    state: &HttpState,
    policy: &'a dyn BootPolicy,
    host: &str,
    delivery: Delivery,
) -> Option<&'a Host> {
    let found = known_host(policy, host)
        .ok()
        .or_else(|| policy.host_named(host));
    if found.is_none() {
        state
            .metrics
            .inc(delivery.counter(), &[("outcome", "unknown_host")]);
    }
    found
}

/// What to answer a request that does not prove it comes from `host` as its boot must to get its
/// secrets (from the host's address, presenting the identity the policy asks for and, when bound
/// to a TPM, holding it: 401 with a challenge until it has); `None` when it does.
fn answer_unless_proved(
    state: &HttpState,
    policy: &dyn BootPolicy,
    host: &Host,
    peer: SocketAddr,
    request: &SecretsRequest,
    delivery: Delivery,
) -> Option<Response> {
    let refuse = |outcome, why| refuse(state, host, peer, request, delivery, outcome, why);
    let expected = policy.identity(host);
    if host.ip.is_some() || state.leases_are_ours {
        let holder = address_of(state, host);
        if holder.is_none() || holder != peer_ipv4(peer) {
            let holder = holder.map_or("no address yet".to_owned(), |ip| ip.to_string());
            return Some(refuse(
                "wrong_address",
                format!("the host's address is {holder}"),
            ));
        }
    } else if expected.is_none() {
        return Some(refuse(
            "no_credential",
            "beside the venue's DHCP, a host without a reserved address proves itself only by an identity, and it has none".to_owned(),
        ));
    }
    if let Some(expected) = expected {
        let wrong = expected.smbios.mismatches(&request.smbios);
        if !wrong.is_empty() {
            return Some(refuse(
                "wrong_identity",
                format!("its SMBIOS {} did not match", wrong.join(", ")),
            ));
        }
    }
    let boot_id = &request.boot_id;
    let plain_id = (1..=64).contains(&boot_id.len())
        && boot_id.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
    if !plain_id {
        return Some(refuse("bad_request", "no usable boot_id".to_owned()));
    }
    // Not bound to a TPM: proved.
    let ek_name = expected.and_then(|identity| identity.tpm_ek.as_deref())?;
    let challenge = |challenge: TpmChallenge| {
        state
            .metrics
            .inc(delivery.counter(), &[("outcome", "tpm_challenge")]);
        (StatusCode::UNAUTHORIZED, Json(challenge)).into_response()
    };
    let Some(proof) = &request.tpm else {
        return Some(challenge(TpmChallenge::Needs("tpm")));
    };
    let (ek, ak_name) = match tpm_keys(proof) {
        Ok((ek, _)) if ek.name_hex() != ek_name => {
            let presented = ek.name_hex();
            tracing::warn!(host = %host.hostname, %peer, tpm_ek = %presented, "a TPM the master file does not name");
            return Some(refuse(
                "wrong_identity",
                "its TPM's endorsement key is not the one the master file names".to_owned(),
            ));
        }
        Ok(keys) => keys,
        Err(why) => return Some(refuse("bad_request", why)),
    };
    match &proof.activated {
        None => {
            let credential = state.tpm_challenges.issue(host.mac, boot_id);
            let file = ek.make_credential(&ak_name, &credential);
            Some(challenge(TpmChallenge::Credential(BASE64.encode(file))))
        }
        Some(activated) if state.tpm_challenges.redeem(host.mac, boot_id, activated) => None,
        Some(_) => Some(refuse(
            "wrong_identity",
            "its TPM did not recover the credential sealed to it".to_owned(),
        )),
    }
}

/// The bytes of a layer part the policy names; `Err` answers 500 (the store lost it).
async fn read_part(path: Option<PathBuf>) -> Result<Option<Vec<u8>>, Response> {
    let Some(path) = path else { return Ok(None) };
    match tokio::fs::read(&path).await {
        Ok(bytes) => Ok(Some(bytes)),
        Err(error) => {
            tracing::error!(path = %path.display(), %error, "cannot read a host layer");
            Err(StatusCode::INTERNAL_SERVER_ERROR.into_response())
        }
    }
}

/// The host's secrets (a cpio, empty if it has none), its boot's report token and the version of
/// the layer it boots with: to the host's address, presenting the identity the policy asks for,
/// once per boot. Each refusal is counted, logged and noted on the host.
async fn host_secrets(
    State(state): AppState,
    ConnectInfo(peer): Peer,
    UrlPath(host): UrlPath<String>,
    Json(request): Json<SecretsRequest>,
) -> Response {
    let delivery = Delivery::AtBoot;
    let policy = state.policy.current();
    let Some(host) = requested_host(&state, &*policy, &host, delivery) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if let Some(answer) = answer_unless_proved(&state, &*policy, host, peer, &request, delivery) {
        return answer;
    }
    let secrets = match read_part(policy.host_secrets(host)).await {
        Ok(secrets) => secrets,
        Err(answer) => return answer,
    };
    let token = match state.timeline.release_secrets(host.mac, &request.boot_id) {
        Ok(token) => token,
        Err(Refusal::Again) => {
            return refuse(
                &state,
                host,
                peer,
                &request,
                delivery,
                "again",
                "they went out already in this boot (a second fetch)".to_owned(),
            );
        }
    };
    state.metrics.inc(SECRETS, &[("outcome", "released")]);
    let bytes = secrets.as_ref().map_or(0, Vec::len);
    tracing::info!(host = %host.hostname, %peer, presented = ?request.smbios, bytes, "released the host's secrets");
    // What the boot runs: the public layer it fetched (a build may have come since) and these.
    let public = (state.timeline.public_layer_served(host.mac)).or_else(|| {
        policy
            .host_layer_version(host)
            .map(|version| version.public)
    });
    let layer = public.map(|public| LayerVersion::with_secrets(public, secrets.as_deref()));
    let token = HeaderValue::from_str(&token).expect("hex is a header value");
    let mut answer = (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static(PRIVATE)),
            (header::HeaderName::from_static(REPORT_TOKEN_HEADER), token),
        ],
        secrets.unwrap_or_default(),
    )
        .into_response();
    if let Some(layer) = layer {
        let digest = HeaderValue::from_str(&layer.digest()).expect("hex is a header value");
        (answer.headers_mut()).insert(header::HeaderName::from_static(LAYER_HEADER), digest);
    }
    answer
}

/// What a running host gets for a live update: its whole layer, both parts as served now.
#[derive(Debug, Serialize)]
struct LiveLayer {
    /// [`LayerVersion::digest`] of these parts.
    layer: String,
    /// The public part's cpio, base64.
    public: String,
    /// The secrets' cpio, base64, if it has any.
    secrets: Option<String>,
}

/// A running host's layer again, both parts (over TLS: one answer, one version), for a live
/// update: only to the boot its secrets went to (that boot's report token and boot id), proving
/// again all it proved then (address, identity, TPM). Each refusal is counted, logged and, once
/// the token matched, noted on the host.
async fn live_layer(
    State(state): AppState,
    ConnectInfo(peer): Peer,
    UrlPath(host): UrlPath<String>,
    headers: HeaderMap,
    Json(request): Json<SecretsRequest>,
) -> Response {
    let delivery = Delivery::Live;
    let policy = state.policy.current();
    let Some(host) = requested_host(&state, &*policy, &host, delivery) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    // Without its boot's token a request proves nothing: counted, not noted on the host.
    let outcome = match bearer_token(&headers) {
        None => Some("no_token"),
        Some(token) if !state.timeline.same_boot(host.mac, &request.boot_id, token) => {
            Some("wrong_token")
        }
        Some(_) => None,
    };
    if let Some(outcome) = outcome {
        state.metrics.inc(LIVE_LAYERS, &[("outcome", outcome)]);
        tracing::warn!(host = %host.hostname, %peer, outcome, "refused a live layer: not the token of the boot it names");
        return StatusCode::FORBIDDEN.into_response();
    }
    if let Some(answer) = answer_unless_proved(&state, &*policy, host, peer, &request, delivery) {
        return answer;
    }
    let public = match read_part(policy.host_layer(host)).await {
        Ok(Some(public)) => public,
        Ok(None) => return StatusCode::NOT_FOUND.into_response(),
        Err(answer) => return answer,
    };
    let secrets = match read_part(policy.host_secrets(host)).await {
        Ok(secrets) => secrets,
        Err(answer) => return answer,
    };
    let layer = LayerVersion::of(&public, secrets.as_deref()).digest();
    state.timeline.secrets_went_out_again(host.mac);
    state.metrics.inc(LIVE_LAYERS, &[("outcome", "released")]);
    tracing::info!(host = %host.hostname, %peer, %layer, "released the host's layer to its running boot");
    let live = LiveLayer {
        layer,
        public: BASE64.encode(public),
        secrets: secrets.map(|secrets| BASE64.encode(secrets)),
    };
    ([(header::CACHE_CONTROL, PRIVATE)], Json(live)).into_response()
}

/// The bearer token of an `Authorization` header.
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    (headers.get(header::AUTHORIZATION))
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
}

async fn firmware(
    State(state): AppState,
    UrlPath(file): UrlPath<String>,
    headers: HeaderMap,
) -> Result<Response, StatusCode> {
    let path = safe_path::resolve(&state.firmware_root, &file).map_err(|error| match error {
        safe_path::PathError::Escapes => StatusCode::FORBIDDEN,
        _ => StatusCode::NOT_FOUND,
    })?;
    Ok(file::respond(&headers, &path, "public, max-age=300", None))
}

/// What netbootd answers a host's report: the version of its layer it would serve now, which
/// the host applies live when it runs another (`null`: it has no layer).
#[derive(Debug, Serialize)]
struct ReportAnswer {
    layer: Option<String>,
}

/// Accepted with the token the host's current boot got with its secrets, from the host's own
/// address when we know it (its reservation or lease); answered with a [`ReportAnswer`].
async fn report(
    State(state): AppState,
    ConnectInfo(peer): Peer,
    headers: HeaderMap,
    Json(report): Json<Report>,
) -> Result<Json<ReportAnswer>, StatusCode> {
    let policy = state.policy.current();
    let Some(host) = policy.host_named(&report.host) else {
        return Err(StatusCode::NOT_FOUND);
    };
    let refused = |reason: &'static str| {
        state.metrics.inc(REPORTS_REFUSED, &[("reason", reason)]);
        tracing::warn!(host = %report.host, %peer, reason, "refused a boot report");
        Err(StatusCode::FORBIDDEN)
    };
    match bearer_token(&headers) {
        None => return refused("no_token"),
        Some(token) if !state.timeline.report_token_is(host.mac, token) => {
            return refused("wrong_token");
        }
        Some(_) => {}
    }
    let holder = address_of(&state, host);
    if holder.is_some() && holder != peer_ipv4(peer) {
        return refused("wrong_address");
    }
    tracing::info!(host = %report.host, %peer, role = %report.role, image = %report.image, state = ?report.state, failed = ?report.failed, problems = ?report.problems, layer = ?report.layer, "boot report");
    state
        .timeline
        .record(host.mac, Event::Report(Box::new(report)));
    let layer = (policy.host_layer_version(host)).map(|version| version.digest());
    Ok(Json(ReportAnswer { layer }))
}

#[derive(Serialize)]
struct HostView<'a> {
    mac: MacAddr,
    hostname: &'a str,
    reserved_ip: Option<Ipv4Addr>,
    /// The room (or other group) the policy shows it under.
    group: Option<&'a str>,
    /// What netbootd would boot it into now: a host that reported another image runs something
    /// else until its next boot.
    serves: Option<ServedImage>,
    /// The version of its layer netbootd serves now: a host that reported another applies it
    /// live (see [`live_layer`]).
    serves_layer: Option<String>,
    /// It reported once, and not for the last `stale_after`.
    stale: bool,
    /// What it is doing, as the dashboard shows it and `/metrics` counts it.
    condition: fleet::Condition,
    /// The latest phase of its current boot.
    phase: Option<fleet::Phase>,
    /// What the policy says it does (its plan role), for the metrics' labels.
    #[serde(skip)]
    policy_role: Option<&'a str>,
    #[serde(flatten)]
    timeline: HostRecord,
}

impl<'a> HostView<'a> {
    fn fleet_host(&'a self) -> fleet::FleetHost<'a> {
        fleet::FleetHost {
            hostname: self.hostname,
            role: self.policy_role.or(self.timeline.role.as_deref()),
            room: self.group,
            condition: self.condition,
            record: &self.timeline,
            serves: self.serves.as_ref().map(|image| image.id.as_str()),
        }
    }
}

#[derive(Serialize)]
struct ServedImage {
    id: String,
    role: String,
}

/// Every host as the operator's views show it.
fn host_views<'a>(state: &HttpState, policy: &'a dyn BootPolicy) -> Vec<HostView<'a>> {
    policy
        .hosts()
        .iter()
        .map(|host| {
            let timeline = state.timeline.get(host.mac);
            let stale = timeline
                .silent_for()
                .is_some_and(|silent| silent > state.stale_after);
            HostView {
                mac: host.mac,
                hostname: &host.hostname,
                reserved_ip: host.ip,
                group: policy.group(host),
                serves: policy
                    .boot(host)
                    .and_then(|boot| boot.image)
                    .map(|image| ServedImage {
                        id: image.id,
                        role: image.role,
                    }),
                serves_layer: (policy.host_layer_version(host)).map(|version| version.digest()),
                stale,
                condition: fleet::condition(&timeline, stale),
                phase: fleet::phase_reached(&timeline.boot),
                policy_role: policy.role(host),
                timeline,
            }
        })
        .collect()
}

/// Every host as the operator's views show it, as JSON.
fn hosts_json(state: &HttpState) -> String {
    let policy = state.policy.current();
    let views = host_views(state, &*policy);
    serde_json::to_string(&views).expect("host views serialize")
}

/// Every host, and every room with its stream, as the dashboard's events carry them.
fn fleet_json(state: &HttpState) -> serde_json::Value {
    let policy = state.policy.current();
    let views = host_views(state, &*policy);
    let hosts: Vec<_> = views.iter().map(HostView::fleet_host).collect();
    serde_json::json!({ "hosts": views, "rooms": fleet::rooms(&hosts) })
}

async fn hosts(State(state): AppState) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        hosts_json(&state),
    )
        .into_response()
}

/// How often a stream of the hosts looks for a change, and the longest it stays silent: the
/// dashboard shows ages from the server's clock it last heard.
const HOST_EVENTS_POLL: Duration = Duration::from_secs(1);
const HOST_EVENTS_REFRESH: Duration = Duration::from_secs(10);

/// Server-sent events, one `hosts` event (`{"now": …, "hosts": [as /api/hosts], "rooms": {room:
/// {hosts, hosts_up, stream}}}`) at once and at each change. The stream holds the connection: it counts against the connection cap.
async fn host_events(State(state): AppState) -> Response {
    let events = futures_util::stream::unfold(
        (state, None::<(serde_json::Value, Instant)>),
        |(state, last)| async move {
            loop {
                if last.is_some() {
                    tokio::time::sleep(HOST_EVENTS_POLL).await;
                }
                let fleet = fleet_json(&state);
                let unchanged = last
                    .as_ref()
                    .is_some_and(|(sent, at)| *sent == fleet && at.elapsed() < HOST_EVENTS_REFRESH);
                if unchanged {
                    continue;
                }
                let mut data = fleet.clone();
                data["now"] = crate::timeline::rfc3339(std::time::SystemTime::now()).into();
                let event = axum::response::sse::Event::default()
                    .event("hosts")
                    .data(data.to_string());
                return Some((
                    Ok::<_, std::convert::Infallible>(event),
                    (state, Some((fleet, Instant::now()))),
                ));
            }
        },
    );
    axum::response::sse::Sse::new(events)
        .keep_alive(axum::response::sse::KeepAlive::default())
        .into_response()
}

/// The fleet dashboard: one page, no build step; it follows [`host_events`].
async fn dashboard() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("dashboard.html"),
    )
        .into_response()
}

/// netbootd's counters, then the fleet's gauges as the dashboard's model reads them now.
async fn metrics(State(state): AppState) -> impl IntoResponse {
    let mut text = state.metrics.render();
    let policy = state.policy.current();
    let views = host_views(&state, &*policy);
    let hosts: Vec<_> = views.iter().map(HostView::fleet_host).collect();
    crate::metrics::render_into(&mut text, &fleet::gauges(&hosts));
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::body::Body;
    use axum::extract::connect_info::MockConnectInfo;
    use tokio::net::TcpStream;

    use super::*;
    use crate::policy::{Identity, Network, StaticPolicy};

    #[test]
    fn urls_fill_the_route_parameter() {
        let urls = Urls::new("http://10.0.0.1:8080/");
        let mac = MacAddr([0x52, 0x54, 0, 0, 0, 1]);
        assert_eq!(
            urls.ipxe_script(mac),
            "http://10.0.0.1:8080/ipxe/52:54:00:00:00:01"
        );
        assert_eq!(
            urls.host_layer(mac),
            "http://10.0.0.1:8080/host/52:54:00:00:00:01/layer"
        );
        assert_eq!(urls.artifact("abc"), "http://10.0.0.1:8080/a/abc");
        assert_eq!(
            urls.firmware("snponly.efi"),
            "http://10.0.0.1:8080/firmware/snponly.efi"
        );
    }

    /// A POST to the TLS side of a server that knows one host, `mixer1` at 10.0.0.10, from `from`.
    async fn post(
        state: &Arc<HttpState>,
        from: [u8; 4],
        path: &str,
        token: Option<&str>,
        body: String,
    ) -> Response {
        let app = secure_router(Arc::clone(state))
            .layer(MockConnectInfo(SocketAddr::from((from, 40_000))));
        let mut request = Request::post(path).header(header::CONTENT_TYPE, "application/json");
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        app.oneshot(request.body(Body::from(body)).unwrap())
            .await
            .unwrap()
    }

    const HOST_ADDRESS: [u8; 4] = [10, 0, 0, 10];

    async fn post_report(state: &Arc<HttpState>, token: Option<&str>, body: String) -> StatusCode {
        post(state, HOST_ADDRESS, ROUTE_REPORT, token, body)
            .await
            .status()
    }

    /// Asks for mixer1's secrets from `from` as boot `boot_id`; the report token, or the status.
    async fn secrets(
        state: &Arc<HttpState>,
        from: [u8; 4],
        boot_id: &str,
    ) -> Result<String, StatusCode> {
        let body = format!(r#"{{"boot_id":"{boot_id}","uuid":null}}"#);
        let response = post(state, from, "/host/mixer1/secrets", None, body).await;
        match response.status() {
            StatusCode::OK => Ok(response.headers()[REPORT_TOKEN_HEADER]
                .to_str()
                .unwrap()
                .to_owned()),
            status => Err(status),
        }
    }

    const MIXER: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 1]);

    /// A server whose one host is mixer1 at 10.0.0.10, bound to `identity` if one is given.
    fn mixer_state(identity: Option<Identity>) -> Arc<HttpState> {
        serving_mixer(Some(Ipv4Addr::new(10, 0, 0, 10)), identity, true, None)
    }

    /// A server whose one host is mixer1, at `reserved` if it has a reservation, its layers (if
    /// any) in `layers` as `mixer1.cpio` and `mixer1.secrets.cpio`.
    fn serving_mixer(
        reserved: Option<Ipv4Addr>,
        identity: Option<Identity>,
        leases_are_ours: bool,
        layers: Option<&std::path::Path>,
    ) -> Arc<HttpState> {
        let mac = MIXER;
        let host = Host {
            mac,
            hostname: "mixer1".into(),
            ip: reserved,
        };
        let network = Network {
            netmask: Ipv4Addr::new(255, 255, 255, 0),
            router: None,
            dns: vec![],
            ntp: vec![],
            domain: None,
            lease_time: Duration::from_secs(3600),
        };
        let mut policy = StaticPolicy::new(vec![host], network);
        if let Some(identity) = identity {
            policy = policy.with_identity(mac, identity);
        }
        if let Some(layers) = layers {
            policy = policy.with_layer_dir(layers.to_owned());
        }
        Arc::new(HttpState {
            policy: SharedPolicy::new(Arc::new(policy)),
            timeline: Arc::default(),
            metrics: Arc::default(),
            urls: Urls::new("http://10.0.0.1:8080"),
            firmware_root: PathBuf::new(),
            stale_after: Duration::from_secs(90),
            tpm_challenges: Default::default(),
            leases_are_ours,
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]
        /// Whatever the LAN sends (any bytes, or well-formed requests with any boot id and UUID
        /// but the host's, and any bearer token), it gets no secrets and plants no report.
        #[test]
        fn no_request_gets_secrets_or_plants_a_report(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
            boot_id in "[0-9a-f-]{0,70}|\\PC{0,20}",
            uuid in "[0-9a-fA-F-]{0,40}",
            token in "[ -~]{0,80}",
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let state = mixer_state(Some(Identity {
                smbios: Smbios {
                    uuid: Some("4c4c4544-0042-3510-8052-b4c04f4e3732".into()),
                    ..Smbios::default()
                },
                tpm_ek: None,
            }));
            state.timeline.record(MIXER, Event::HostLayer);
            runtime.block_on(async {
                let near = serde_json::json!({ "boot_id": boot_id, "uuid": uuid }).to_string();
                for body in [String::from_utf8_lossy(&bytes).into_owned(), near] {
                    let response = post(&state, HOST_ADDRESS, "/host/mixer1/secrets", None, body.clone()).await;
                    proptest::prop_assert!(response.status().is_client_error(), "{}", response.status());
                    let live = post(&state, HOST_ADDRESS, "/host/mixer1/live-layer", Some(&token), body).await;
                    proptest::prop_assert!(live.status().is_client_error(), "{}", live.status());
                }
                let report = r#"{"host":"mixer1","role":"mixer","image":"x","state":"up"}"#;
                let status = post(&state, HOST_ADDRESS, ROUTE_REPORT, Some(&token), report.into()).await.status();
                proptest::prop_assert!(status.is_client_error(), "{status}");
                Ok(())
            })?;
            let record = state.timeline.get(MIXER);
            proptest::prop_assert!(record.secrets.is_none() && record.state.is_none());
        }

        /// Whatever TPM proof a client makes up for a host bound to a TPM (any key, a real key
        /// changed anywhere, any Name, any answer), it gets a challenge at most, never the secrets.
        #[test]
        fn no_made_up_tpm_proof_gets_secrets(
            garbage in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400),
            at in 0usize..316,
            value: u8,
            ak_name in "[0-9a-f]{0,80}",
            activated in proptest::option::of("[0-9a-f]{0,80}"),
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let real = tpm::tests::SWTPM_EK;
            let state = mixer_state(Some(Identity {
                smbios: Smbios::default(),
                tpm_ek: Some(tpm::EndorsementKey::parse(real).unwrap().name_hex()),
            }));
            state.timeline.record(MIXER, Event::HostLayer);
            let mut changed = real.to_vec();
            changed[at % real.len()] ^= value | 1;
            runtime.block_on(async {
                for ek in [garbage, changed, real.to_vec()] {
                    let tpm = serde_json::json!({
                        "ek_public": BASE64.encode(&ek), "ak_name": ak_name, "activated": activated,
                    });
                    let body = serde_json::json!({ "boot_id": "b1", "tpm": tpm }).to_string();
                    let response = post(&state, HOST_ADDRESS, "/host/mixer1/secrets", None, body).await;
                    proptest::prop_assert!(response.status().is_client_error(), "{}", response.status());
                }
                Ok(())
            })?;
            proptest::prop_assert!(state.timeline.get(MIXER).secrets.is_none());
        }
    }

    #[tokio::test]
    async fn a_host_bound_to_its_tpm_gets_its_secrets_only_by_recovering_the_credential() {
        let (tpm, ek_public) = tpm::tests::SoftwareTpm::new();
        let other_ek = tpm::tests::SoftwareTpm::new().1;
        let ak_name = format!("000b{}", "ab".repeat(32));
        let state = mixer_state(Some(Identity {
            smbios: Smbios::default(),
            tpm_ek: Some(tpm::EndorsementKey::parse(&ek_public).unwrap().name_hex()),
        }));
        state.timeline.record(MIXER, Event::HostLayer);
        let ask = |tpm: Option<serde_json::Value>| {
            let state = Arc::clone(&state);
            async move {
                let body = serde_json::json!({"boot_id": "b1", "tpm": tpm}).to_string();
                let response = post(&state, HOST_ADDRESS, "/host/mixer1/secrets", None, body).await;
                let status = response.status();
                let body = axum::body::to_bytes(response.into_body(), 4096)
                    .await
                    .unwrap();
                (status, serde_json::from_slice(&body).unwrap_or_default())
            }
        };
        let keys = |ek: &[u8], activated: Option<String>| {
            Some(serde_json::json!({
                "ek_public": BASE64.encode(ek), "ak_name": ak_name, "activated": activated,
            }))
        };
        let (status, body): (_, serde_json::Value) = ask(None).await;
        assert_eq!(
            (status, body),
            (
                StatusCode::UNAUTHORIZED,
                serde_json::json!({"needs": "tpm"})
            )
        );
        // Another TPM, or none that can recover the credential: refused.
        assert_eq!(ask(keys(&other_ek, None)).await.0, StatusCode::FORBIDDEN);
        let (status, _) = ask(keys(&ek_public, Some("00".repeat(32)))).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "no credential was issued");
        let (status, body) = ask(keys(&ek_public, None)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let file = BASE64.decode(body["credential"].as_str().unwrap()).unwrap();
        let activated = hex::encode(tpm.activate(&ak_name, &file).unwrap());
        assert_eq!(
            ask(keys(&ek_public, Some(activated.clone()))).await.0,
            StatusCode::OK
        );
        // A credential is spent once redeemed: a replay of the answer gets nothing.
        assert_eq!(
            ask(keys(&ek_public, Some(activated))).await.0,
            StatusCode::FORBIDDEN
        );
        let alerts = state.timeline.get(MIXER).alerts;
        assert_eq!(alerts.len(), 3, "{alerts:?}");
        assert!(
            alerts[0].contains("endorsement key is not the one"),
            "{alerts:?}"
        );
        assert!(
            alerts[1].contains("did not recover the credential"),
            "{alerts:?}"
        );
        let metrics = state.metrics.render();
        for outcome in ["tpm_challenge\"} 2", "wrong_identity\"} 3", "released\"} 1"] {
            assert!(metrics.contains(outcome), "{outcome}: {metrics}");
        }
    }

    #[tokio::test]
    async fn beside_a_venues_dhcp_a_claimed_address_proves_nothing_and_an_identity_does() {
        let uuid = "4c4c4544-0042-3510-8052-b4c04f4e3732";
        let ask = |state: Arc<HttpState>, body: &'static str| async move {
            post(
                &state,
                HOST_ADDRESS,
                "/host/mixer1/secrets",
                None,
                body.into(),
            )
            .await
            .status()
        };
        // Without an identity: the address it claimed to the venue's DHCP is all there is.
        let unbound = serving_mixer(None, None, false, None);
        unbound
            .timeline
            .bind_address(MIXER, Ipv4Addr::from(HOST_ADDRESS));
        unbound.timeline.record(MIXER, Event::HostLayer);
        assert_eq!(
            ask(Arc::clone(&unbound), r#"{"boot_id":"b1"}"#).await,
            StatusCode::FORBIDDEN
        );
        assert!(unbound.metrics.render().contains("no_credential\"} 1"));
        // With one, from whichever address the venue gave it (none learned here).
        let identity = Identity {
            smbios: Smbios {
                uuid: Some(uuid.into()),
                ..Smbios::default()
            },
            tpm_ek: None,
        };
        let bound = serving_mixer(None, Some(identity), false, None);
        bound.timeline.record(MIXER, Event::HostLayer);
        let wrong = r#"{"boot_id":"b1","uuid":"00000000-0000-0000-0000-000000000000"}"#;
        assert_eq!(ask(Arc::clone(&bound), wrong).await, StatusCode::FORBIDDEN);
        let right = r#"{"boot_id":"b1","uuid":"4C4C4544-0042-3510-8052-B4C04F4E3732"}"#;
        assert_eq!(ask(Arc::clone(&bound), right).await, StatusCode::OK);
    }

    #[tokio::test]
    async fn secrets_go_once_per_boot_and_reports_need_that_boots_token() {
        let mac = MIXER;
        let state = mixer_state(None);
        let report = |media: &str| {
            format!(
                r#"{{"host":"mixer1","role":"mixer","image":"sha","state":"degraded","failed":[],
                "problems":["live output is black"],"media":{media},"boot_id":"b1"}}"#
            )
        };
        let frames = || report(r#"{"frames":45}"#);

        // Before the host fetched its layer (a boot), nothing goes out.
        assert_eq!(
            secrets(&state, HOST_ADDRESS, "b1").await,
            Err(StatusCode::FORBIDDEN)
        );
        state.timeline.record(mac, Event::HostLayer);
        assert_eq!(
            secrets(&state, [10, 0, 0, 66], "b1").await,
            Err(StatusCode::FORBIDDEN)
        );
        let token = secrets(&state, HOST_ADDRESS, "b1").await.unwrap();
        assert_eq!(token.len(), 64);
        // The same boot may ask again (a retry); another boot id in the same boot may not.
        assert_eq!(secrets(&state, HOST_ADDRESS, "b1").await, Ok(token.clone()));
        assert_eq!(
            secrets(&state, HOST_ADDRESS, "b2").await,
            Err(StatusCode::FORBIDDEN)
        );
        let record = state.timeline.get(mac);
        assert!(record.secrets.is_some());
        assert_eq!(record.alerts.len(), 3, "{:?}", record.alerts);
        assert!(
            record.alerts[2].contains("a second fetch"),
            "{:?}",
            record.alerts
        );
        let metrics = state.metrics.render();
        for outcome in ["released\"} 2", "wrong_address\"} 1", "again\"} 2"] {
            assert!(metrics.contains(outcome), "{outcome}: {metrics}");
        }

        assert_eq!(
            post_report(&state, None, frames()).await,
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            post_report(&state, Some("0f0f"), frames()).await,
            StatusCode::FORBIDDEN
        );
        assert_eq!(state.timeline.get(mac).problems, Vec::<String>::new());
        assert_eq!(
            post_report(&state, Some(&token), frames()).await,
            StatusCode::OK
        );
        let record = state.timeline.get(mac);
        assert_eq!(record.problems, ["live output is black"]);
        assert_eq!(record.media, Some(serde_json::json!({ "frames": 45 })));

        let padding = "x".repeat(REPORT_MAX_BYTES);
        assert_eq!(
            post_report(
                &state,
                Some(&token),
                report(&format!(r#"{{"log":"{padding}"}}"#))
            )
            .await,
            StatusCode::PAYLOAD_TOO_LARGE
        );
        assert_eq!(
            state.timeline.get(mac).media,
            Some(serde_json::json!({ "frames": 45 })),
            "a refused report changes nothing"
        );
    }
    /// mixer1's layers in `dir`: `public`, and `secrets` if any.
    fn write_layers(dir: &std::path::Path, public: &[u8], secrets: Option<&[u8]>) {
        std::fs::write(dir.join("mixer1.cpio"), public).unwrap();
        let secrets_file = dir.join("mixer1.secrets.cpio");
        match secrets {
            Some(secrets) => std::fs::write(secrets_file, secrets).unwrap(),
            None => drop(std::fs::remove_file(secrets_file)),
        }
    }

    /// Asks for mixer1's layer as its running boot `boot_id` with `token`, presenting `more` (JSON
    /// fields after the boot id); the status and the answer.
    async fn live(
        state: &Arc<HttpState>,
        from: [u8; 4],
        boot_id: &str,
        token: Option<&str>,
        more: &str,
    ) -> (StatusCode, serde_json::Value) {
        let body = format!(r#"{{"boot_id":"{boot_id}"{more}}}"#);
        let response = post(state, from, "/host/mixer1/live-layer", token, body).await;
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, serde_json::from_slice(&body).unwrap_or_default())
    }

    fn decoded(answer: &serde_json::Value, part: &str) -> Option<Vec<u8>> {
        (answer[part].as_str()).map(|text| BASE64.decode(text).unwrap())
    }

    #[tokio::test]
    async fn a_running_boot_gets_its_layer_again_only_with_its_token_and_what_its_boot_proved() {
        let uuid = "4c4c4544-0042-3510-8052-b4c04f4e3732";
        let layers = tempfile::tempdir().unwrap();
        write_layers(layers.path(), b"public v1", Some(b"stream key v1"));
        let identity = Identity {
            smbios: Smbios {
                uuid: Some(uuid.into()),
                ..Smbios::default()
            },
            tpm_ek: None,
        };
        let address = Some(Ipv4Addr::from(HOST_ADDRESS));
        let state = serving_mixer(address, Some(identity), true, Some(layers.path()));
        let v1 = LayerVersion::of(b"public v1", Some(b"stream key v1")).digest();
        let presented = format!(r#","uuid":"{uuid}""#);

        // The boot fetched v1's public part; v2 was built before it asked for its secrets.
        state.timeline.record(MIXER, Event::HostLayer);
        let served = state
            .policy
            .current()
            .host_layer_version(&state.policy.current().hosts()[0]);
        state.timeline.layer_served(MIXER, &served.unwrap().public);
        write_layers(layers.path(), b"public v2", Some(b"stream key v2"));
        let body = format!(r#"{{"boot_id":"b1","uuid":"{uuid}"}}"#);
        let response = post(&state, HOST_ADDRESS, "/host/mixer1/secrets", None, body).await;
        assert_eq!(response.status(), StatusCode::OK);
        let token = response.headers()[REPORT_TOKEN_HEADER]
            .to_str()
            .unwrap()
            .to_owned();
        let booted_with = response.headers()[LAYER_HEADER]
            .to_str()
            .unwrap()
            .to_owned();
        assert_eq!(
            booted_with,
            LayerVersion::of(b"public v1", Some(b"stream key v2")).digest(),
            "it runs the public part it fetched and the secrets it got"
        );
        assert_ne!(booted_with, v1);

        // Its report is answered with the version it would boot now: not the one it runs.
        let v2 = LayerVersion::of(b"public v2", Some(b"stream key v2")).digest();
        let report = r#"{"host":"mixer1","role":"mixer","image":"i","state":"up","boot_id":"b1"}"#;
        let response = post(
            &state,
            HOST_ADDRESS,
            ROUTE_REPORT,
            Some(&token),
            report.into(),
        )
        .await;
        let body = axum::body::to_bytes(response.into_body(), 4096)
            .await
            .unwrap();
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&body).unwrap(),
            serde_json::json!({ "layer": v2 })
        );

        // Refused: no token, another boot's token or another boot id, another address, another
        // machine's SMBIOS.
        let (status, _) = live(&state, HOST_ADDRESS, "b1", None, &presented).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        for (boot_id, token) in [("b1", "0f0f"), ("b2", token.as_str())] {
            let (status, _) = live(&state, HOST_ADDRESS, boot_id, Some(token), &presented).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{boot_id} {token}");
        }
        let (status, _) = live(&state, [10, 0, 0, 66], "b1", Some(&token), &presented).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let copied = r#","uuid":"00000000-0000-0000-0000-000000000000""#;
        let (status, _) = live(&state, HOST_ADDRESS, "b1", Some(&token), copied).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let alerts = state.timeline.get(MIXER).alerts;
        assert_eq!(
            alerts.len(),
            2,
            "a token-less request is counted, not noted: {alerts:?}"
        );
        assert!(
            alerts[0].contains("live layer refused to 10.0.0.66")
                && alerts[1].contains("SMBIOS uuid did not match"),
            "{alerts:?}"
        );

        // The boot itself: both parts as served now, in one answer, with their version.
        let (status, answer) = live(&state, HOST_ADDRESS, "b1", Some(&token), &presented).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(answer["layer"], v2.as_str());
        assert_eq!(decoded(&answer, "public").unwrap(), b"public v2");
        assert_eq!(decoded(&answer, "secrets").unwrap(), b"stream key v2");
        // A layer whose secrets were dropped: none, and a version that says so.
        write_layers(layers.path(), b"public v3", None);
        let (_, answer) = live(&state, HOST_ADDRESS, "b1", Some(&token), &presented).await;
        assert_eq!(
            answer["layer"],
            LayerVersion::of(b"public v3", None).digest()
        );
        assert_eq!(
            (decoded(&answer, "secrets"), &answer["secrets"]),
            (None, &serde_json::Value::Null)
        );

        // Its boot's window stays closed: another boot id is still refused its secrets.
        assert_eq!(
            secrets(&state, HOST_ADDRESS, "b2").await,
            Err(StatusCode::FORBIDDEN)
        );
        let metrics = state.metrics.render();
        for counted in [
            "netbootd_live_layers_total{outcome=\"no_token\"} 1",
            "netbootd_live_layers_total{outcome=\"wrong_token\"} 2",
            "netbootd_live_layers_total{outcome=\"wrong_address\"} 1",
            "netbootd_live_layers_total{outcome=\"wrong_identity\"} 1",
            "netbootd_live_layers_total{outcome=\"released\"} 2",
            "netbootd_secrets_total{outcome=\"released\"} 1",
        ] {
            assert!(metrics.contains(counted), "{counted}: {metrics}");
        }
    }

    #[tokio::test]
    async fn a_running_boot_bound_to_its_tpm_proves_it_again_for_its_layer() {
        let (tpm, ek_public) = tpm::tests::SoftwareTpm::new();
        let other_ek = tpm::tests::SoftwareTpm::new().1;
        let ak_name = format!("000b{}", "cd".repeat(32));
        let layers = tempfile::tempdir().unwrap();
        write_layers(layers.path(), b"public", Some(b"rotated key"));
        let identity = Identity {
            smbios: Smbios::default(),
            tpm_ek: Some(tpm::EndorsementKey::parse(&ek_public).unwrap().name_hex()),
        };
        let address = Some(Ipv4Addr::from(HOST_ADDRESS));
        let state = serving_mixer(address, Some(identity), true, Some(layers.path()));
        // A boot that proved its TPM (as the test above does it) and holds its token.
        state.timeline.record(MIXER, Event::HostLayer);
        let token = state.timeline.release_secrets(MIXER, "b1").unwrap();
        let keys = |ek: &[u8], activated: Option<String>| {
            let tpm = serde_json::json!({
                "ek_public": BASE64.encode(ek), "ak_name": ak_name, "activated": activated,
            });
            format!(r#","tpm":{tpm}"#)
        };
        let ask = |more: String| {
            let (state, token) = (Arc::clone(&state), token.clone());
            async move { live(&state, HOST_ADDRESS, "b1", Some(&token), &more).await }
        };

        assert_eq!(
            ask(String::new()).await,
            (
                StatusCode::UNAUTHORIZED,
                serde_json::json!({"needs": "tpm"})
            )
        );
        // The token with another TPM (a copied token): refused.
        assert_eq!(ask(keys(&other_ek, None)).await.0, StatusCode::FORBIDDEN);
        let (status, challenge) = ask(keys(&ek_public, None)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let file = BASE64
            .decode(challenge["credential"].as_str().unwrap())
            .unwrap();
        let activated = hex::encode(tpm.activate(&ak_name, &file).unwrap());
        let (status, answer) = ask(keys(&ek_public, Some(activated.clone()))).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(decoded(&answer, "secrets").unwrap(), b"rotated key");
        assert_eq!(
            ask(keys(&ek_public, Some(activated))).await.0,
            StatusCode::FORBIDDEN,
            "spent"
        );
        let metrics = state.metrics.render();
        for counted in ["tpm_challenge\"} 2", "wrong_identity\"} 2", "released\"} 1"] {
            let counted = format!("netbootd_live_layers_total{{outcome=\"{counted}");
            assert!(metrics.contains(&counted), "{counted}: {metrics}");
        }
    }

    async fn closed_within(stream: &mut TcpStream, wait: Duration) -> bool {
        use tokio::io::AsyncReadExt;
        let mut buffer = [0u8; 64];
        matches!(
            tokio::time::timeout(wait, stream.read(&mut buffer)).await,
            Ok(Ok(0) | Err(_))
        )
    }

    /// A client whose small receive buffer makes the server wait on it.
    async fn get(address: SocketAddr, path: &str) -> TcpStream {
        use tokio::io::AsyncWriteExt;
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(64 * 1024).unwrap();
        let mut stream = socket.connect(address).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        stream
    }

    #[tokio::test]
    async fn connections_past_the_cap_or_idle_are_closed_while_slow_downloads_flow() {
        use tokio::io::AsyncReadExt;
        let firmware = tempfile::tempdir().unwrap();
        let contents: Vec<u8> = (0..8 << 20).map(|index| (index % 251) as u8).collect();
        std::fs::write(firmware.path().join("big.bin"), &contents).unwrap();
        let network = Network {
            netmask: Ipv4Addr::new(255, 255, 255, 0),
            router: None,
            dns: vec![],
            domain: None,
            ntp: vec![],
            lease_time: Duration::from_secs(3600),
        };
        let state = Arc::new(HttpState {
            policy: SharedPolicy::new(Arc::new(StaticPolicy::new(vec![], network))),
            timeline: Arc::default(),
            metrics: Arc::default(),
            urls: Urls::new("http://127.0.0.1"),
            firmware_root: firmware.path().into(),
            stale_after: Duration::from_secs(90),
            tpm_challenges: Default::default(),
            leases_are_ours: true,
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let limits = Limits {
            connections: 2,
            header_read_timeout: Duration::from_millis(500),
            idle_timeout: Duration::from_secs(1),
        };
        tokio::spawn(serve(listener, Arc::clone(&state), limits));
        let cut = |reason| {
            state
                .metrics
                .get(HTTP_CONNECTIONS_CUT, &[("reason", reason)])
        };

        let mut idle = [
            TcpStream::connect(address).await.unwrap(),
            TcpStream::connect(address).await.unwrap(),
        ];
        let mut over_cap = TcpStream::connect(address).await.unwrap();
        assert!(closed_within(&mut over_cap, Duration::from_millis(300)).await);
        assert_eq!(cut("over_cap"), 1);
        for stream in &mut idle {
            assert!(
                closed_within(stream, Duration::from_secs(2)).await,
                "no request headers: closed"
            );
        }
        assert_eq!(cut("header_timeout"), 2);

        let _stalled = get(address, "/firmware/big.bin").await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(cut("idle_timeout"), 1, "a download nobody reads is dropped");

        // Slower than both timeouts in all, never idle for one.
        let mut slow = get(address, "/firmware/big.bin").await;
        let started = std::time::Instant::now();
        let mut response = Vec::new();
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let read = slow.read(&mut buffer).await.unwrap();
            if read == 0 {
                break;
            }
            let before = response.len();
            response.extend_from_slice(&buffer[..read]);
            if before >> 20 != response.len() >> 20 {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
        assert!(started.elapsed() > limits.idle_timeout * 2);
        let body = response
            .windows(4)
            .position(|window| window == b"\r\n\r\n")
            .map(|end| &response[end + 4..]);
        assert!(body == Some(&contents[..]), "the whole file arrived");
        assert_eq!(cut("idle_timeout"), 1);

        let mut health = get(address, "/healthz").await;
        let mut answer = String::new();
        health.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("ok\n"));
    }
}
