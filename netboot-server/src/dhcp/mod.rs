//! DHCP on plain UDP sockets bound to one interface (no raw packets): authoritative or
//! ProxyDHCP, answering per [`responder`].

pub mod decode;
pub mod pool;
pub mod responder;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use anyhow::Context;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;

use crate::metrics::{DHCP_DROPPED, DHCP_RECEIVED};
pub use responder::{Mode, Port, Reply, Responder};

pub const SERVER_PORT: u16 = 67;
pub const PROXY_PXE_PORT: u16 = 4011;
/// Most requests handled before their replies go out (and the leases are written).
const MAX_BATCH: usize = 64;

/// A UDP socket on `0.0.0.0:port` that only sees `interface` and may broadcast. `shared`
/// lets a ProxyDHCP server sit beside a DHCP server on the same machine and interface; an
/// authoritative server must be alone there, so a second one fails to start instead of two
/// servers answering.
pub fn bind(interface: &str, port: u16, shared: bool) -> anyhow::Result<UdpSocket> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(shared)?;
    socket.set_broadcast(true)?;
    socket
        .bind_device(Some(interface.as_bytes()))
        .with_context(|| format!("binding to device {interface}"))?;
    socket.set_nonblocking(true)?;
    let address = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
    socket
        .bind(&address.into())
        .with_context(|| format!("binding UDP {address} on {interface}"))?;
    Ok(UdpSocket::from_std(socket.into())?)
}

/// Answers on 67 (and 4011 in proxy mode) until an I/O error on receive.
pub async fn serve(responder: Arc<Responder>, interface: &str) -> anyhow::Result<()> {
    let proxy = responder.mode == Mode::Proxy;
    let mut listeners = vec![(Port::Dhcp, bind(interface, SERVER_PORT, proxy)?)];
    if proxy {
        listeners.push((Port::ProxyPxe, bind(interface, PROXY_PXE_PORT, proxy)?));
    }
    tracing::info!(%interface, mode = ?responder.mode, server = %responder.server_ip, "DHCP listening");
    let mut tasks = tokio::task::JoinSet::new();
    for (port, socket) in listeners {
        tasks.spawn(answer(Arc::clone(&responder), port, socket));
    }
    match tasks.join_next().await {
        Some(result) => result?,
        None => Ok(()),
    }
}

async fn answer(responder: Arc<Responder>, port: Port, socket: UdpSocket) -> anyhow::Result<()> {
    let port_label = match port {
        Port::Dhcp => "67",
        Port::ProxyPxe => "4011",
    };
    let mut buffer = vec![0u8; 1500];
    let mut replies = Vec::with_capacity(MAX_BATCH);
    loop {
        // Wait for one request, then take whatever else has already arrived: one lease-table
        // write covers the batch. A quiet LAN sees batches of one.
        let mut received = Some(
            socket
                .recv_from(&mut buffer)
                .await
                .context("receiving DHCP")?,
        );
        let mut handled = 0;
        while let Some((len, from)) = received {
            handled += 1;
            responder
                .metrics
                .inc(DHCP_RECEIVED, &[("port", port_label)]);
            if let SocketAddr::V4(from) = from {
                replies.extend(responder.handle(port, from, &buffer[..len]));
            }
            // Nothing more waiting (WouldBlock) or a real error: either way the next
            // recv_from reports it.
            received = if handled < MAX_BATCH {
                socket.try_recv_from(&mut buffer).ok()
            } else {
                None
            };
        }
        // No client may hold an ACK for a lease that is not on disk: after a restart its address
        // would go to another. Unsaved, the batch goes unanswered; the clients ask again, and the
        // next batch tries the write again.
        if !responder.save_leases() {
            let dropped = replies.len() as u64;
            replies.clear();
            responder
                .metrics
                .add(DHCP_DROPPED, &[("reason", "lease_not_saved")], dropped);
        }
        for reply in replies.drain(..) {
            if let Err(error) = socket.send_to(&reply.bytes, SocketAddr::V4(reply.to)).await {
                tracing::warn!(to = %reply.to, %error, "could not send DHCP reply");
                responder
                    .metrics
                    .inc(DHCP_DROPPED, &[("reason", "send_error")]);
            }
        }
    }
}
