//! Replies to a client that has no address yet, sent to its own hardware address (RFC 2131 §4.1:
//! with the broadcast bit clear, "unicast … to the client's hardware address and yiaddr"). A UDP
//! socket cannot do that: the kernel has no ARP entry for an address the client does not hold
//! yet. A broadcast instead reaches every machine on the LAN, and in a boot storm each booting
//! client wakes for every other client's replies. A packet socket (CAP_NET_RAW, which netbootd
//! holds for its router advertisements) sends the IPv4/UDP datagram straight to the MAC.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

const IPV4_HEADER_LEN: usize = 20;
const UDP_HEADER_LEN: usize = 8;
const TTL: u8 = 64;
const PROTOCOL_UDP: u8 = 17;

/// A send-only packet socket on one interface.
pub struct LinkSender {
    socket: AsyncFd<OwnedFd>,
    interface_index: i32,
}

impl LinkSender {
    /// Opens the socket on `interface`. Fails without CAP_NET_RAW.
    pub fn open(interface: &str) -> io::Result<Self> {
        // Protocol 0: the socket receives nothing, it only sends.
        let (fd, interface_index) = packet_socket(interface, 0, libc::SOCK_NONBLOCK)?;
        // SAFETY: the descriptor is valid and owned by the AsyncFd, which nothing closes or
        // replaces while it is registered.
        let socket = unsafe { AsyncFd::register_with_interest(fd, Interest::WRITABLE)? };
        Ok(Self {
            socket,
            interface_index,
        })
    }

    /// Sends `payload` from `from` to `to` at the link-layer address `mac`.
    pub async fn send(
        &self,
        payload: &[u8],
        from: SocketAddrV4,
        to: SocketAddrV4,
        mac: [u8; 6],
    ) -> io::Result<()> {
        let datagram = ipv4_udp_datagram(payload, from, to);
        // SAFETY: sockaddr_ll is plain old data; all zeroes is a valid value.
        let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        address.sll_family = libc::AF_PACKET as u16;
        address.sll_protocol = (libc::ETH_P_IP as u16).to_be();
        address.sll_ifindex = self.interface_index;
        address.sll_halen = 6;
        address.sll_addr[..6].copy_from_slice(&mac);
        loop {
            let mut ready = self.socket.writable().await?;
            let sent = ready.try_io(|socket| {
                // SAFETY: the buffer and the address outlive the call; the lengths are theirs.
                let sent = unsafe {
                    libc::sendto(
                        socket.as_raw_fd(),
                        datagram.as_ptr().cast(),
                        datagram.len(),
                        0,
                        (&address as *const libc::sockaddr_ll).cast(),
                        std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                    )
                };
                if sent < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(())
                }
            });
            match sent {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }
}

/// A datagram packet socket (the kernel writes the link header) on `interface` for `protocol`
/// (network byte order; 0 receives nothing), with more socket `flags`; and the interface's index.
pub(super) fn packet_socket(
    interface: &str,
    protocol: u16,
    flags: libc::c_int,
) -> io::Result<(OwnedFd, i32)> {
    let name = std::ffi::CString::new(interface)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface name"))?;
    // SAFETY: `name` is a valid NUL-terminated string for the call's duration.
    let interface_index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if interface_index == 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: plain socket(2); the descriptor is owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | flags,
            libc::c_int::from(protocol),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    Ok((unsafe { OwnedFd::from_raw_fd(fd) }, interface_index as i32))
}

/// An IPv4 header, a UDP header and `payload`, both checksums filled in.
pub fn ipv4_udp_datagram(payload: &[u8], from: SocketAddrV4, to: SocketAddrV4) -> Vec<u8> {
    let udp_len = UDP_HEADER_LEN + payload.len();
    let total_len = IPV4_HEADER_LEN + udp_len;
    let mut datagram = Vec::with_capacity(total_len);
    // Version 4, 5 words of header; no TOS; length; id 0 with Don't Fragment, as Linux sends.
    datagram.extend_from_slice(&[0x45, 0]);
    datagram.extend_from_slice(&(total_len as u16).to_be_bytes());
    datagram.extend_from_slice(&[0, 0, 0x40, 0, TTL, PROTOCOL_UDP, 0, 0]);
    datagram.extend_from_slice(&from.ip().octets());
    datagram.extend_from_slice(&to.ip().octets());
    let header_sum = checksum(&[&datagram]);
    datagram[10..12].copy_from_slice(&header_sum.to_be_bytes());

    datagram.extend_from_slice(&from.port().to_be_bytes());
    datagram.extend_from_slice(&to.port().to_be_bytes());
    datagram.extend_from_slice(&(udp_len as u16).to_be_bytes());
    datagram.extend_from_slice(&[0, 0]);
    datagram.extend_from_slice(payload);
    let pseudo_header = pseudo_header(*from.ip(), *to.ip(), udp_len as u16);
    // A computed zero goes out as all ones: zero means "no checksum" in UDP over IPv4.
    let udp_sum = match checksum(&[&pseudo_header, &datagram[IPV4_HEADER_LEN..]]) {
        0 => 0xffff,
        sum => sum,
    };
    datagram[IPV4_HEADER_LEN + 6..IPV4_HEADER_LEN + 8].copy_from_slice(&udp_sum.to_be_bytes());
    datagram
}

fn pseudo_header(from: Ipv4Addr, to: Ipv4Addr, udp_len: u16) -> [u8; 12] {
    let mut header = [0u8; 12];
    header[..4].copy_from_slice(&from.octets());
    header[4..8].copy_from_slice(&to.octets());
    header[9] = PROTOCOL_UDP;
    header[10..].copy_from_slice(&udp_len.to_be_bytes());
    header
}

/// The Internet checksum (RFC 1071) of the parts taken one after the other; each part but the
/// last has an even length.
pub(super) fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for part in parts {
        let mut words = part.chunks_exact(2);
        for word in &mut words {
            sum += u32::from(u16::from_be_bytes([word[0], word[1]]));
        }
        if let [last] = words.remainder() {
            sum += u32::from(*last) << 8;
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FROM: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 99, 0, 1), 67);
    const TO: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 99, 0, 10), 68);

    #[test]
    fn headers_carry_the_addresses_ports_and_lengths() {
        let datagram = ipv4_udp_datagram(b"offer", FROM, TO);
        assert_eq!(datagram.len(), 20 + 8 + 5);
        assert_eq!(datagram[0], 0x45);
        assert_eq!(u16::from_be_bytes([datagram[2], datagram[3]]), 33);
        assert_eq!(datagram[9], 17);
        assert_eq!(&datagram[12..16], &[10, 99, 0, 1]);
        assert_eq!(&datagram[16..20], &[10, 99, 0, 10]);
        assert_eq!(u16::from_be_bytes([datagram[20], datagram[21]]), 67);
        assert_eq!(u16::from_be_bytes([datagram[22], datagram[23]]), 68);
        assert_eq!(u16::from_be_bytes([datagram[24], datagram[25]]), 13);
        assert_eq!(&datagram[28..], b"offer");
    }

    #[test]
    fn checksums_verify_as_a_receiver_checks_them() {
        // A receiver sums the header with its checksum in place and gets zero; the same for the
        // UDP datagram under its pseudo header. Odd and even payload lengths alike.
        for payload in [&b"offer"[..], &b"acks"[..], &[0xff; 300][..], &[][..]] {
            let datagram = ipv4_udp_datagram(payload, FROM, TO);
            assert_eq!(checksum(&[&datagram[..20]]), 0, "IPv4 header");
            let pseudo = pseudo_header(*FROM.ip(), *TO.ip(), (8 + payload.len()) as u16);
            assert_eq!(checksum(&[&pseudo, &datagram[20..]]), 0, "UDP");
        }
    }

    #[test]
    fn checksum_matches_rfc_1071s_example() {
        // RFC 1071 §3: the words 0001 f203 f4f5 f6f7 sum to ddf2, whose complement is 220d.
        assert_eq!(
            checksum(&[&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]]),
            0x220d
        );
    }
}
