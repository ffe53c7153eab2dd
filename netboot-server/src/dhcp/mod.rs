//! DHCP on plain UDP sockets bound to one interface (no raw packets): authoritative or
//! ProxyDHCP, answering per [`responder`]. [`probe`] is the client side: whether another server
//! answers on a LAN.

pub mod decode;
pub mod link;
pub mod pool;
pub mod probe;
pub mod responder;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;

use anyhow::Context;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;

use crate::metrics::{DHCP_DROPPED, DHCP_RECEIVED};
pub use responder::{Destination, Mode, Port, Reply, Responder};

pub const SERVER_PORT: u16 = 67;
pub const PROXY_PXE_PORT: u16 = 4011;
/// Most requests handled before their replies go out (and the leases are written).
const MAX_BATCH: usize = 64;
/// Batches of lease ACKs that may wait for the lease writer; past that, the receive loop waits
/// for it too.
const WRITES_QUEUED: usize = 16;

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

/// Sends `bytes` to `to` from `source`, the served address (IP_PKTINFO), as dnsmasq does:
/// unset, the kernel would take the interface's primary address, which beside a venue's DHCP
/// server on the same interface is not the one netbootd serves and names as the server.
async fn send_from(
    socket: &UdpSocket,
    bytes: &[u8],
    to: SocketAddrV4,
    source: Ipv4Addr,
) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    loop {
        socket.writable().await?;
        let fd = socket.as_raw_fd();
        match socket.try_io(tokio::io::Interest::WRITABLE, || {
            sendmsg_from(fd, bytes, to, source)
        }) {
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => continue,
            sent => return sent,
        }
    }
}

fn sendmsg_from(
    fd: std::os::fd::RawFd,
    bytes: &[u8],
    to: SocketAddrV4,
    source: Ipv4Addr,
) -> std::io::Result<usize> {
    use std::mem::size_of;
    let in_addr = |ip: Ipv4Addr| libc::in_addr {
        s_addr: u32::from(ip).to_be(),
    };
    let mut address = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: to.port().to_be(),
        sin_addr: in_addr(*to.ip()),
        sin_zero: [0; 8],
    };
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    // Room for one in_pktinfo control message, aligned as cmsghdr wants.
    let mut control = [0u64; 8];
    let info_len = size_of::<libc::in_pktinfo>() as libc::c_uint;
    // SAFETY: a zeroed msghdr is valid; every pointer set below outlives the sendmsg call, the
    // control buffer (64 bytes) holds CMSG_SPACE(in_pktinfo) (32), and CMSG_FIRSTHDR of a
    // buffer that size is not null.
    unsafe {
        let mut header: libc::msghdr = std::mem::zeroed();
        header.msg_name = (&mut address as *mut libc::sockaddr_in).cast();
        header.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        header.msg_iov = &mut iov;
        header.msg_iovlen = 1;
        header.msg_control = control.as_mut_ptr().cast();
        header.msg_controllen = libc::CMSG_SPACE(info_len) as usize;
        let message = libc::CMSG_FIRSTHDR(&header);
        (*message).cmsg_level = libc::IPPROTO_IP;
        (*message).cmsg_type = libc::IP_PKTINFO;
        (*message).cmsg_len = libc::CMSG_LEN(info_len) as usize;
        let info = libc::in_pktinfo {
            ipi_ifindex: 0,
            ipi_spec_dst: in_addr(source),
            ipi_addr: in_addr(Ipv4Addr::UNSPECIFIED),
        };
        std::ptr::write_unaligned(libc::CMSG_DATA(message).cast(), info);
        let sent = libc::sendmsg(fd, &header, 0);
        if sent < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(sent as usize)
        }
    }
}

/// Answers on 67 (and 4011 in proxy mode) until an I/O error on receive.
pub async fn serve(responder: Arc<Responder>, interface: &str) -> anyhow::Result<()> {
    let proxy = responder.mode == Mode::Proxy;
    let mut listeners = vec![(Port::Dhcp, bind(interface, SERVER_PORT, proxy)?)];
    if proxy {
        listeners.push((Port::ProxyPxe, bind(interface, PROXY_PXE_PORT, proxy)?));
    }
    // Without it (no CAP_NET_RAW), clients without an address are answered by broadcast.
    let link = match link::LinkSender::open(interface) {
        Ok(link) => Some(Arc::new(link)),
        Err(error) => {
            tracing::warn!(%interface, %error, "cannot send DHCP replies to hardware addresses; broadcasting them instead");
            None
        }
    };
    tracing::info!(%interface, mode = ?responder.mode, server = %responder.server_ip, "DHCP listening");
    let mut tasks = tokio::task::JoinSet::new();
    for (port, socket) in listeners {
        let replier = Arc::new(Replier {
            socket,
            link: link.clone(),
            server_ip: responder.server_ip,
        });
        let (writes, queue) = tokio::sync::mpsc::channel(WRITES_QUEUED);
        tasks.spawn(write_leases_then_acknowledge(
            Arc::clone(&responder),
            Arc::clone(&replier),
            queue,
        ));
        tasks.spawn(answer(Arc::clone(&responder), port, replier, writes));
    }
    match tasks.join_next().await {
        Some(result) => result?,
        None => Ok(()),
    }
}

/// What sends one listener's replies.
struct Replier {
    socket: UdpSocket,
    link: Option<Arc<link::LinkSender>>,
    server_ip: Ipv4Addr,
}

impl Replier {
    async fn send(&self, reply: &Reply, metrics: &crate::metrics::Metrics) {
        let broadcast = SocketAddrV4::new(Ipv4Addr::BROADCAST, 68);
        let to = match (reply.to, &self.link) {
            (Destination::Udp(to), _) => to,
            (Destination::Hardware { to, mac }, Some(link)) => {
                let from = SocketAddrV4::new(self.server_ip, SERVER_PORT);
                match link.send(&reply.bytes, from, to, mac.0).await {
                    Ok(()) => return,
                    Err(error) => {
                        tracing::warn!(%to, %mac, %error, "could not send a DHCP reply to its hardware address; broadcasting it");
                        broadcast
                    }
                }
            }
            (Destination::Hardware { .. }, None) => broadcast,
        };
        if let Err(error) = send_from(&self.socket, &reply.bytes, to, self.server_ip).await {
            tracing::warn!(%to, %error, "could not send DHCP reply");
            metrics.inc(DHCP_DROPPED, &[("reason", "send_error")]);
        }
    }
}

async fn answer(
    responder: Arc<Responder>,
    port: Port,
    replier: Arc<Replier>,
    writes: tokio::sync::mpsc::Sender<Vec<Reply>>,
) -> anyhow::Result<()> {
    let port_label = match port {
        Port::Dhcp => "67",
        Port::ProxyPxe => "4011",
    };
    let socket = &replier.socket;
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
        // Offers, NAKs and the ACKs of reserved hosts go now; lease ACKs wait for their write,
        // which runs beside this loop.
        let (acks, now): (Vec<Reply>, Vec<Reply>) = replies
            .drain(..)
            .partition(|reply| reply.awaits_lease_write);
        for reply in &now {
            replier.send(reply, &responder.metrics).await;
        }
        if !acks.is_empty() || responder.has_unsaved_leases() {
            writes
                .send(acks)
                .await
                .context("the lease writer stopped")?;
        }
    }
}

/// Writes the lease table for each batch of lease ACKs queued by [`answer`], in order, and sends
/// them once it is on disk: no client may hold an ACK for a lease that is not, or after a restart
/// its address would go to another. Batches queued while a write runs share the next one (group
/// commit). Unsaved, the ACKs are dropped; the clients ask again, and the next write tries again.
async fn write_leases_then_acknowledge(
    responder: Arc<Responder>,
    replier: Arc<Replier>,
    mut queue: tokio::sync::mpsc::Receiver<Vec<Reply>>,
) -> anyhow::Result<()> {
    while let Some(mut acks) = queue.recv().await {
        while let Ok(more) = queue.try_recv() {
            acks.extend(more);
        }
        let writer = Arc::clone(&responder);
        let saved = tokio::task::spawn_blocking(move || writer.save_leases())
            .await
            .context("the lease write panicked")?;
        if !saved {
            responder.metrics.add(
                DHCP_DROPPED,
                &[("reason", "lease_not_saved")],
                acks.len() as u64,
            );
            continue;
        }
        for reply in &acks {
            replier.send(reply, &responder.metrics).await;
        }
    }
    Ok(())
}
