//! Is another DHCP server on this LAN? [`probe`] sends a DHCPDISCOVER from an interface, as a
//! booting PXE client would, and collects every offer heard within a few seconds: a DHCP server
//! answers any client, a proxyDHCP (PXE) server only PXE clients, so one probe finds both.
//!
//! It runs on a packet socket (AF_PACKET, the IP packets of one interface), so it needs no
//! address on the interface and no free UDP port 68, and hears replies whether they are
//! broadcast or sent to the probe's MAC. Frames sent on a packet socket never reach this
//! machine's own stack: a DHCP server on this machine does not see the probe (look for one
//! holding UDP port 67 instead).

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use super::link::ipv4_udp_datagram;
use crate::mac::MacAddr;

const IPV4_HEADER_LEN: usize = 20;
const UDP_HEADER_LEN: usize = 8;
/// BOOTP's fixed header up to and including the magic cookie.
const BOOTP_LEN: usize = 240;
const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];
const CLIENT_PORT: u16 = 68;
const SERVER_PORT: u16 = 67;
const UDP: u8 = 17;
const ETH_P_IP: u16 = 0x0800;
/// BOOTP flags: ask servers to broadcast their reply (the probe has no address to send to).
const BROADCAST_FLAG: u16 = 0x8000;
const DHCPDISCOVER: u8 = 1;
const DHCPOFFER: u8 = 2;
/// What a BIOS PXE ROM sends as its vendor class (option 60): proxyDHCP servers answer it.
const PXE_CLASS: &[u8] = b"PXEClient:Arch:00000:UNDI:002001";

/// One answer to the probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    /// The server's identifier (option 54), else the packet's source address.
    pub server: Ipv4Addr,
    /// The address offered to the probe; `None` from a proxyDHCP server, which offers none.
    pub offered: Option<Ipv4Addr>,
    /// The offer carries PXE boot information (vendor class `PXEClient`).
    pub pxe: bool,
}

impl std::fmt::Display for Offer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.offered {
            Some(address) => write!(f, "{} (offered {address})", self.server),
            None => write!(f, "{} (proxyDHCP: boot information only)", self.server),
        }
    }
}

/// The DHCPDISCOVER `xid` from `mac` as an IPv4 packet (0.0.0.0:68 to 255.255.255.255:67).
pub fn discover_packet(xid: u32, mac: MacAddr) -> Vec<u8> {
    let mut bootp = vec![0u8; BOOTP_LEN];
    bootp[..3].copy_from_slice(&[1, 1, 6]); // BOOTREQUEST, Ethernet, 6-byte addresses
    bootp[4..8].copy_from_slice(&xid.to_be_bytes());
    bootp[10..12].copy_from_slice(&BROADCAST_FLAG.to_be_bytes());
    bootp[28..34].copy_from_slice(&mac.0);
    bootp[236..240].copy_from_slice(&MAGIC_COOKIE);
    bootp.extend_from_slice(&[53, 1, DHCPDISCOVER]);
    // Parameter request list: subnet, router, DNS, domain, TFTP server, boot file.
    bootp.extend_from_slice(&[55, 6, 1, 3, 6, 15, 66, 67]);
    bootp.extend_from_slice(&[60, PXE_CLASS.len() as u8]);
    bootp.extend_from_slice(PXE_CLASS);
    bootp.extend_from_slice(&[93, 2, 0, 0]); // client architecture: x86 BIOS
    bootp.extend_from_slice(&[94, 3, 1, 2, 1]); // network interface: UNDI 2.1
    bootp.push(255);
    ipv4_udp_datagram(
        &bootp,
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, CLIENT_PORT),
        SocketAddrV4::new(Ipv4Addr::BROADCAST, SERVER_PORT),
    )
}

/// The offer for probe `xid` that the IPv4 `packet` carries, if it is one. Anything else (our
/// own DISCOVER seen leaving, other traffic, malformed bytes) is `None`.
pub fn parse_offer(packet: &[u8], xid: u32) -> Option<Offer> {
    let (&version_and_length, _) = packet.split_first()?;
    let header_len = usize::from(version_and_length & 0x0f) * 4;
    let fragmented = u16::from_be_bytes([*packet.get(6)?, *packet.get(7)?]) & 0x3fff != 0;
    if version_and_length >> 4 != 4 || header_len < IPV4_HEADER_LEN || fragmented {
        return None;
    }
    if *packet.get(9)? != UDP {
        return None;
    }
    let total_len = usize::from(u16::from_be_bytes([*packet.get(2)?, *packet.get(3)?]));
    let source = Ipv4Addr::from(<[u8; 4]>::try_from(packet.get(12..16)?).ok()?);
    let udp = packet.get(header_len..total_len.min(packet.len()))?;
    if u16::from_be_bytes([*udp.get(2)?, *udp.get(3)?]) != CLIENT_PORT {
        return None;
    }
    let bootp = udp.get(UDP_HEADER_LEN..)?;
    if bootp.len() < BOOTP_LEN || bootp[0] != 2 || bootp[4..8] != xid.to_be_bytes() {
        return None;
    }
    if bootp[236..240] != MAGIC_COOKIE {
        return None;
    }
    let mut kind = None;
    let mut server = None;
    let mut pxe = false;
    let mut options = &bootp[BOOTP_LEN..];
    while let Some((&code, rest)) = options.split_first() {
        match code {
            0 => options = rest,
            255 => break,
            _ => {
                let (&len, rest) = rest.split_first()?;
                let data = rest.get(..usize::from(len))?;
                match (code, data) {
                    (53, [message_type]) => kind = Some(*message_type),
                    (54, &[a, b, c, d]) => server = Some(Ipv4Addr::new(a, b, c, d)),
                    (60, class) => pxe = class.starts_with(b"PXEClient"),
                    _ => {}
                }
                options = &rest[usize::from(len)..];
            }
        }
    }
    if kind != Some(DHCPOFFER) {
        return None;
    }
    let offered = Ipv4Addr::new(bootp[16], bootp[17], bootp[18], bootp[19]);
    Some(Offer {
        server: server.unwrap_or(source),
        offered: (!offered.is_unspecified()).then_some(offered),
        pxe,
    })
}

/// Sends DHCPDISCOVERs from `interface` (whose MAC is `mac`), at once and again each second,
/// and returns every distinct offer heard within `listen`. The interface must be up.
pub fn probe(interface: &str, mac: MacAddr, listen: Duration) -> io::Result<Vec<Offer>> {
    let socket = PacketSocket::open(interface)?;
    let xid = probe_xid();
    let discover = discover_packet(xid, mac);
    let started = Instant::now();
    let mut next_send = started;
    let mut offers: Vec<Offer> = Vec::new();
    let mut buffer = vec![0u8; 2048];
    while started.elapsed() < listen {
        if Instant::now() >= next_send {
            socket.send_broadcast(&discover)?;
            next_send += Duration::from_secs(1);
        }
        let wait = next_send
            .min(started + listen)
            .saturating_duration_since(Instant::now());
        if let Some(len) = socket.receive(&mut buffer, wait)? {
            if let Some(offer) = parse_offer(&buffer[..len], xid) {
                if !offers.contains(&offer) {
                    offers.push(offer);
                }
            }
        }
    }
    Ok(offers)
}

/// A transaction id no earlier probe used: clock and pid mixed.
fn probe_xid() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.subsec_nanos());
    nanos ^ std::process::id().rotate_left(16)
}

/// An AF_PACKET socket carrying IPv4 packets (without their Ethernet header) on one interface.
struct PacketSocket {
    fd: std::os::fd::OwnedFd,
    ifindex: i32,
}

impl PacketSocket {
    fn open(interface: &str) -> io::Result<Self> {
        let (fd, ifindex) = super::link::packet_socket(interface, ETH_P_IP.to_be(), 0)?;
        let socket = Self { fd, ifindex };
        let address = socket.link_address(&[0; 6]);
        // SAFETY: bind reads a sockaddr_ll of the size given.
        let bound = unsafe {
            libc::bind(
                socket.fd.as_raw_fd(),
                (&address as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if bound != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(socket)
    }

    fn link_address(&self, hardware: &[u8; 6]) -> libc::sockaddr_ll {
        let mut address = libc::sockaddr_ll {
            sll_family: libc::AF_PACKET as u16,
            sll_protocol: ETH_P_IP.to_be(),
            sll_ifindex: self.ifindex,
            sll_hatype: 0,
            sll_pkttype: 0,
            sll_halen: 6,
            sll_addr: [0; 8],
        };
        address.sll_addr[..6].copy_from_slice(hardware);
        address
    }

    /// Sends the IPv4 `packet` to the link's broadcast address.
    fn send_broadcast(&self, packet: &[u8]) -> io::Result<()> {
        let address = self.link_address(&[0xff; 6]);
        // SAFETY: sendto reads `packet` and a sockaddr_ll of the size given.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&address as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The next packet's length, or `None` if none came within `wait`.
    fn receive(&self, buffer: &mut [u8], wait: Duration) -> io::Result<Option<usize>> {
        let mut poll = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let millis = i32::try_from(wait.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: poll reads and writes the one pollfd given.
        match unsafe { libc::poll(&mut poll, 1, millis) } {
            0 => return Ok(None),
            ready if ready < 0 => {
                let error = io::Error::last_os_error();
                return match error.kind() {
                    io::ErrorKind::Interrupted => Ok(None),
                    _ => Err(error),
                };
            }
            _ => {}
        }
        // SAFETY: recv writes at most buffer.len() bytes into the buffer.
        let len = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                buffer.as_mut_ptr().cast(),
                buffer.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if len < 0 {
            let error = io::Error::last_os_error();
            return match error.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(None),
                _ => Err(error),
            };
        }
        Ok(Some(len as usize))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dhcp::link::checksum;

    const MAC: MacAddr = MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
    const XID: u32 = 0xdead_beef;

    /// A server's reply to `xid` from `source`, with BOOTP `yiaddr` and raw option bytes.
    fn reply(source: Ipv4Addr, xid: u32, yiaddr: Ipv4Addr, options: &[u8]) -> Vec<u8> {
        let mut bootp = vec![0u8; BOOTP_LEN];
        bootp[..3].copy_from_slice(&[2, 1, 6]);
        bootp[4..8].copy_from_slice(&xid.to_be_bytes());
        bootp[16..20].copy_from_slice(&yiaddr.octets());
        bootp[28..34].copy_from_slice(&MAC.0);
        bootp[236..240].copy_from_slice(&MAGIC_COOKIE);
        bootp.extend_from_slice(options);
        ipv4_udp_datagram(
            &bootp,
            SocketAddrV4::new(source, SERVER_PORT),
            SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT),
        )
    }

    const ROGUE: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 254);
    const OFFERED: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 201);

    #[test]
    fn the_discover_is_a_checksummed_broadcast_pxe_discover() {
        let packet = discover_packet(XID, MAC);
        assert_eq!(checksum(&[&packet[..IPV4_HEADER_LEN]]), 0, "IP checksum");
        assert_eq!(&packet[12..20], &[0, 0, 0, 0, 255, 255, 255, 255]);
        let udp = &packet[IPV4_HEADER_LEN..];
        assert_eq!(&udp[..4], &[0, 68, 0, 67]);
        assert_eq!(usize::from(u16::from_be_bytes([udp[4], udp[5]])), udp.len());
        let mut pseudo = vec![0, 0, 0, 0, 255, 255, 255, 255, 0, UDP];
        pseudo.extend_from_slice(&(udp.len() as u16).to_be_bytes());
        pseudo.extend_from_slice(udp);
        assert_eq!(checksum(&[&pseudo]), 0, "UDP checksum");
        // netbootd's own decoder, the strictest reader at hand, takes it as a PXE firmware's.
        let request = crate::dhcp::decode::decode(&udp[UDP_HEADER_LEN..]).unwrap();
        assert_eq!(request.kind, dhcproto::v4::MessageType::Discover);
        assert_eq!(request.mac, MAC);
        assert!(request.pxe_client);
        assert_eq!(request.stage, crate::policy::DhcpStage::Firmware);
        assert_eq!(request.message.xid(), XID);
        assert!(request.message.flags().broadcast());
    }

    #[test]
    fn an_offer_names_its_server_and_the_address_it_offers() {
        let options = [53, 1, DHCPOFFER, 54, 4, 10, 99, 0, 253, 255];
        let offer = parse_offer(&reply(ROGUE, XID, OFFERED, &options), XID).unwrap();
        assert_eq!(
            offer,
            Offer {
                server: Ipv4Addr::new(10, 99, 0, 253),
                offered: Some(OFFERED),
                pxe: false
            }
        );
        assert_eq!(offer.to_string(), "10.99.0.253 (offered 10.99.0.201)");
        // Without a server identifier, the packet's source names it.
        let bare = parse_offer(&reply(ROGUE, XID, OFFERED, &[53, 1, DHCPOFFER, 255]), XID);
        assert_eq!(bare.unwrap().server, ROGUE);
    }

    #[test]
    fn a_proxy_offer_carries_boot_information_and_no_address() {
        let mut options = vec![53, 1, DHCPOFFER, 0, 0, 60, 9];
        options.extend_from_slice(b"PXEClient");
        options.push(255);
        let offer = parse_offer(&reply(ROGUE, XID, Ipv4Addr::UNSPECIFIED, &options), XID).unwrap();
        assert_eq!((offer.offered, offer.pxe), (None, true));
        assert_eq!(
            offer.to_string(),
            "10.99.0.254 (proxyDHCP: boot information only)"
        );
    }

    #[test]
    fn everything_but_an_offer_to_this_probe_is_ignored() {
        let offer = [53, 1, DHCPOFFER, 255];
        assert!(parse_offer(&reply(ROGUE, XID, OFFERED, &offer), XID).is_some());
        // Another client's transaction, an ACK, our own DISCOVER going out, no message type.
        assert_eq!(parse_offer(&reply(ROGUE, 7, OFFERED, &offer), XID), None);
        assert_eq!(
            parse_offer(&reply(ROGUE, XID, OFFERED, &[53, 1, 5, 255]), XID),
            None
        );
        assert_eq!(parse_offer(&discover_packet(XID, MAC), XID), None);
        assert_eq!(parse_offer(&reply(ROGUE, XID, OFFERED, &[255]), XID), None);
        // Not UDP; to another port; a fragment; IPv6.
        let mut tcp = reply(ROGUE, XID, OFFERED, &offer);
        tcp[9] = 6;
        assert_eq!(parse_offer(&tcp, XID), None);
        let mut elsewhere = reply(ROGUE, XID, OFFERED, &offer);
        elsewhere[IPV4_HEADER_LEN + 3] = 69;
        assert_eq!(parse_offer(&elsewhere, XID), None);
        let mut fragment = reply(ROGUE, XID, OFFERED, &offer);
        fragment[6] = 0x20;
        assert_eq!(parse_offer(&fragment, XID), None);
        let mut six = reply(ROGUE, XID, OFFERED, &offer);
        six[0] = 0x60;
        assert_eq!(parse_offer(&six, XID), None);
    }

    #[test]
    fn malformed_packets_are_ignored_without_a_panic() {
        let good = reply(
            ROGUE,
            XID,
            OFFERED,
            &[53, 1, DHCPOFFER, 54, 4, 10, 99, 0, 254, 255],
        );
        for len in 0..good.len() {
            let _ = parse_offer(&good[..len], XID);
        }
        // An option running past the end, and a header length beyond the packet.
        let mut overrun = reply(ROGUE, XID, OFFERED, &[53, 1, DHCPOFFER, 54, 200, 1]);
        assert_eq!(parse_offer(&overrun, XID), None);
        overrun[0] = 0x4f;
        assert_eq!(parse_offer(&overrun, XID), None);
        // Every single-byte corruption of a good offer.
        for at in 0..good.len() {
            let mut bad = good.clone();
            bad[at] ^= 0xff;
            let _ = parse_offer(&bad, XID);
        }
    }
}
