//! IPv6 router advertisements that end iPXE's wait for one.
//!
//! After DHCPv4 succeeds, iPXE still waits 13–17 s for an IPv6 router advertisement on a link
//! that has none (netboot-lab trap 1), once in the firmware ROM and again in the chainloaded
//! iPXE. Any advertisement without the managed/other flags ends that wait, so known clients
//! that solicit one get an empty one: router lifetime 0 (not a default router), no prefixes,
//! which changes nothing for any other host on the link.

use std::net::{Ipv6Addr, SocketAddrV6};
use std::sync::Arc;

use anyhow::Context;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;

use crate::mac::MacAddr;
use crate::metrics::{Metrics, RA_SENT};
use crate::policy::SharedPolicy;

const ROUTER_SOLICITATION: u8 = 133;
const ROUTER_ADVERTISEMENT: u8 = 134;
const OPTION_SOURCE_LINK_LAYER: u8 = 1;
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
const ALL_ROUTERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);
/// RFC 4861 §6.1: neighbour discovery packets must arrive with hop limit 255.
const ND_HOP_LIMIT: u32 = 255;

/// An advertisement that says nothing but "a router-advertisement sender is here": hop limit
/// unspecified, no flags, lifetime 0, no timers, no options. The kernel fills the checksum.
const EMPTY_ADVERTISEMENT: [u8; 16] = [
    ROUTER_ADVERTISEMENT,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
];

/// The soliciting client's MAC, from a router solicitation's source link-layer option;
/// `None` for anything else (untrusted input: never panics).
pub fn solicitation_source(message: &[u8]) -> Option<MacAddr> {
    let (&kind, _) = message.split_first()?;
    if kind != ROUTER_SOLICITATION {
        return None;
    }
    let mut options = message.get(8..)?;
    while let [option_type, units, ..] = *options {
        let len = usize::from(units) * 8;
        let option = options.get(..len).filter(|_| len > 0)?;
        if option_type == OPTION_SOURCE_LINK_LAYER && len == 8 {
            return Some(MacAddr(option[2..8].try_into().ok()?));
        }
        options = &options[len..];
    }
    None
}

fn interface_index(interface: &str) -> anyhow::Result<u32> {
    let path = format!("/sys/class/net/{interface}/ifindex");
    let index = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    index
        .trim()
        .parse()
        .with_context(|| format!("parsing {path}"))
}

/// A raw ICMPv6 socket on `interface` that hears the all-routers group. Needs CAP_NET_RAW.
fn bind(interface: &str) -> anyhow::Result<(Socket, u32)> {
    let index = interface_index(interface)?;
    let socket = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))
        .context("raw ICMPv6 socket")?;
    socket.bind_device(Some(interface.as_bytes()))?;
    socket.join_multicast_v6(&ALL_ROUTERS, index)?;
    socket.set_multicast_if_v6(index)?;
    socket.set_multicast_hops_v6(ND_HOP_LIMIT)?;
    socket.set_unicast_hops_v6(ND_HOP_LIMIT)?;
    socket.set_multicast_loop_v6(false)?;
    socket.set_nonblocking(true)?;
    Ok((socket, index))
}

/// Answers known clients' router solicitations until a receive fails.
pub async fn serve(
    interface: &str,
    policy: SharedPolicy,
    metrics: Arc<Metrics>,
) -> anyhow::Result<()> {
    let (socket, index) = bind(interface)?;
    // Still a raw ICMPv6 socket: tokio's UdpSocket only adds readiness to plain
    // recv(2)/sendto(2), which is all this needs, without unsafe fd registration.
    let socket = UdpSocket::from_std(std::net::UdpSocket::from(socket))?;
    let all_nodes = SocketAddrV6::new(ALL_NODES, 0, 0, index);
    tracing::info!(%interface, "answering IPv6 router solicitations of known clients");
    let mut buffer = [0u8; 1500];
    loop {
        let len = socket.recv(&mut buffer).await.context("receiving ICMPv6")?;
        let Some(mac) = solicitation_source(&buffer[..len]) else {
            continue;
        };
        if policy.current().host(mac).is_none() {
            continue;
        }
        match socket.send_to(&EMPTY_ADVERTISEMENT, all_nodes).await {
            Ok(_) => metrics.inc(RA_SENT, &[]),
            Err(error) => tracing::warn!(%mac, %error, "could not send router advertisement"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_source_mac_of_a_router_solicitation() {
        let mut solicitation = vec![133, 0, 0x12, 0x34, 0, 0, 0, 0];
        solicitation.extend_from_slice(&[OPTION_SOURCE_LINK_LAYER, 1, 0x52, 0x54, 0, 0, 0, 1]);
        assert_eq!(
            solicitation_source(&solicitation),
            Some(MacAddr([0x52, 0x54, 0, 0, 0, 1]))
        );
    }

    #[test]
    fn skips_other_options_and_rejects_malformed_ones() {
        let mut solicitation = vec![133, 0, 0, 0, 0, 0, 0, 0, 14, 2];
        solicitation.extend_from_slice(&[0; 14]);
        solicitation.extend_from_slice(&[1, 1, 2, 0, 0, 0, 0, 9]);
        assert_eq!(
            solicitation_source(&solicitation),
            Some(MacAddr([2, 0, 0, 0, 0, 9]))
        );
        assert_eq!(
            solicitation_source(&[133, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1, 2]),
            None,
            "zero-length option"
        );
        assert_eq!(
            solicitation_source(&[133, 0, 0, 0, 0, 0, 0, 0, 1, 1, 2]),
            None,
            "truncated option"
        );
        assert_eq!(
            solicitation_source(&[133, 0, 0, 0, 0, 0, 0, 0]),
            None,
            "no source option"
        );
        assert_eq!(
            solicitation_source(&[134, 0, 0, 0, 0, 0, 0, 0, 1, 1, 2, 0, 0, 0, 0, 9]),
            None
        );
        assert_eq!(solicitation_source(&[]), None);
    }
}
