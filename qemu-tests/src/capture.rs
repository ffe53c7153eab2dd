//! Reads what tcpdump wrote (`-w`, a pcap file of Ethernet frames) on a lab's LAN: each IPv4 UDP
//! datagram and TCP segment with the time it crossed the wire. Benchmarks measure from it what
//! both servers they compare do, with the same instrument. A capture still being written may end
//! in a record cut short: it is left out.

use std::net::Ipv4Addr;

use anyhow::{Result, bail};

/// One IPv4 packet of the capture.
#[derive(Debug, Clone, PartialEq)]
pub struct Packet<'a> {
    /// Seconds since 1970, as tcpdump stamped it.
    pub at: f64,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub transport: Transport<'a>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Transport<'a> {
    Udp {
        src_port: u16,
        dst_port: u16,
        /// As much of the payload as was captured.
        payload: &'a [u8],
    },
    Tcp(Segment<'a>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Segment<'a> {
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    /// The payload's length on the wire (the IP header's count), however much was captured.
    pub len: u32,
    /// As much of the payload as was captured.
    pub payload: &'a [u8],
}

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const ACK: u8 = 0x10;

const ETHERNET: u32 = 1;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_VLAN: u16 = 0x8100;

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

/// Every IPv4 UDP and TCP packet of the pcap file `file`, in capture order; frames of other kinds
/// are skipped.
pub fn packets(file: &[u8]) -> Result<Vec<Packet<'_>>> {
    let Some(magic) = file.get(..4) else {
        bail!("not a pcap file: {} bytes", file.len());
    };
    // The writer's byte order, and whether its stamps count micro- or nanoseconds.
    let (little, fraction) = match magic {
        [0xd4, 0xc3, 0xb2, 0xa1] => (true, 1e-6),
        [0x4d, 0x3c, 0xb2, 0xa1] => (true, 1e-9),
        [0xa1, 0xb2, 0xc3, 0xd4] => (false, 1e-6),
        [0xa1, 0xb2, 0x3c, 0x4d] => (false, 1e-9),
        _ => bail!("not a pcap file (magic {magic:02x?})"),
    };
    let field = |at: usize| -> Option<u32> {
        let bytes: [u8; 4] = file.get(at..at + 4)?.try_into().ok()?;
        Some(if little {
            u32::from_le_bytes(bytes)
        } else {
            u32::from_be_bytes(bytes)
        })
    };
    let Some(link) = field(20) else {
        bail!("pcap file cut short in its header");
    };
    if link != ETHERNET {
        bail!("capture of link type {link}, not Ethernet");
    }
    let mut packets = Vec::new();
    let mut at = 24;
    while let (Some(seconds), Some(fractions), Some(captured)) =
        (field(at), field(at + 4), field(at + 8))
    {
        let start = at + 16;
        let Some(frame) = file.get(start..start + captured as usize) else {
            break;
        };
        at = start + captured as usize;
        let stamp = f64::from(seconds) + f64::from(fractions) * fraction;
        if let Some(packet) = ipv4(frame, stamp) {
            packets.push(packet);
        }
    }
    Ok(packets)
}

/// The IPv4 UDP or TCP packet in the Ethernet frame `frame`, if it holds one.
fn ipv4(frame: &[u8], at: f64) -> Option<Packet<'_>> {
    let mut ethertype = u16_at(frame, 12)?;
    let mut ip_start = 14;
    if ethertype == ETHERTYPE_VLAN {
        ethertype = u16_at(frame, 16)?;
        ip_start = 18;
    }
    if ethertype != ETHERTYPE_IPV4 {
        return None;
    }
    let ip = frame.get(ip_start..)?;
    let header_len = usize::from(ip.first()? & 0x0f) * 4;
    let total_len = usize::from(u16_at(ip, 2)?);
    let protocol = *ip.get(9)?;
    let src = Ipv4Addr::from(u32_at(ip, 12)?);
    let dst = Ipv4Addr::from(u32_at(ip, 16)?);
    let body = ip.get(header_len..)?;
    let wire_len = total_len.checked_sub(header_len)?;
    let transport = match protocol {
        17 => Transport::Udp {
            src_port: u16_at(body, 0)?,
            dst_port: u16_at(body, 2)?,
            payload: body.get(8..body.len().min(wire_len))?,
        },
        6 => {
            let data_offset = usize::from(body.get(12)? >> 4) * 4;
            Transport::Tcp(Segment {
                src_port: u16_at(body, 0)?,
                dst_port: u16_at(body, 2)?,
                seq: u32_at(body, 4)?,
                ack: u32_at(body, 8)?,
                flags: *body.get(13)?,
                len: u32::try_from(wire_len.checked_sub(data_offset)?).ok()?,
                payload: body.get(data_offset.min(body.len())..body.len().min(wire_len))?,
            })
        }
        _ => return None,
    };
    Some(Packet {
        at,
        src,
        dst,
        transport,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An Ethernet frame holding an IPv4 packet from `src` to `dst` of `protocol` with `transport`
    /// (its header and payload).
    pub fn frame(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, transport: &[u8]) -> Vec<u8> {
        let mut frame = vec![0xff; 12];
        frame.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        frame.extend_from_slice(&[0x45, 0]);
        frame.extend_from_slice(&(20 + transport.len() as u16).to_be_bytes());
        frame.extend_from_slice(&[0, 0, 0x40, 0, 64, protocol, 0, 0]);
        frame.extend_from_slice(&src.octets());
        frame.extend_from_slice(&dst.octets());
        frame.extend_from_slice(transport);
        frame
    }

    /// A TCP header (no options) and `payload`.
    pub fn tcp(ports: (u16, u16), seq: u32, ack: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut segment = Vec::new();
        segment.extend_from_slice(&ports.0.to_be_bytes());
        segment.extend_from_slice(&ports.1.to_be_bytes());
        segment.extend_from_slice(&seq.to_be_bytes());
        segment.extend_from_slice(&ack.to_be_bytes());
        segment.extend_from_slice(&[5 << 4, flags, 0xff, 0xff, 0, 0, 0, 0]);
        segment.extend_from_slice(payload);
        segment
    }

    /// A UDP header and `payload`.
    pub fn udp(ports: (u16, u16), payload: &[u8]) -> Vec<u8> {
        let mut datagram = Vec::new();
        datagram.extend_from_slice(&ports.0.to_be_bytes());
        datagram.extend_from_slice(&ports.1.to_be_bytes());
        datagram.extend_from_slice(&(8 + payload.len() as u16).to_be_bytes());
        datagram.extend_from_slice(&[0, 0]);
        datagram.extend_from_slice(payload);
        datagram
    }

    /// A little-endian microsecond pcap file of `frames`, each `(time, frame, bytes captured)`.
    pub fn pcap(frames: &[(f64, Vec<u8>, usize)]) -> Vec<u8> {
        let mut file = vec![0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0];
        file.extend_from_slice(&[0; 8]);
        file.extend_from_slice(&65535u32.to_le_bytes());
        file.extend_from_slice(&ETHERNET.to_le_bytes());
        for (at, frame, captured) in frames {
            let captured = (*captured).min(frame.len());
            file.extend_from_slice(&(at.trunc() as u32).to_le_bytes());
            file.extend_from_slice(&((at.fract() * 1e6).round() as u32).to_le_bytes());
            file.extend_from_slice(&(captured as u32).to_le_bytes());
            file.extend_from_slice(&(frame.len() as u32).to_le_bytes());
            file.extend_from_slice(&frame[..captured]);
        }
        file
    }

    const GUEST: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 101);
    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);

    #[test]
    fn reads_udp_and_tcp_with_their_times_and_wire_lengths() {
        let body = vec![b'x'; 1000];
        let file = pcap(&[
            (1.5, frame(GUEST, SERVER, 17, &udp((68, 67), b"dhcp")), 2000),
            (
                2.25,
                frame(SERVER, GUEST, 6, &tcp((8080, 40000), 7, 9, ACK, &body)),
                14 + 20 + 20 + 100,
            ),
        ]);
        let packets = packets(&file).unwrap();
        assert_eq!(packets.len(), 2);
        assert_eq!(packets[0].at, 1.5);
        assert_eq!(
            packets[0].transport,
            Transport::Udp {
                src_port: 68,
                dst_port: 67,
                payload: b"dhcp"
            }
        );
        assert_eq!((packets[1].src, packets[1].dst), (SERVER, GUEST));
        let Transport::Tcp(segment) = &packets[1].transport else {
            panic!("not TCP: {:?}", packets[1]);
        };
        assert_eq!((segment.seq, segment.ack, segment.flags), (7, 9, ACK));
        // 1000 bytes on the wire, 100 of them captured.
        assert_eq!((segment.len, segment.payload.len()), (1000, 100));
    }

    #[test]
    fn a_capture_still_being_written_ends_before_its_last_record() {
        let whole = pcap(&[
            (1.0, frame(GUEST, SERVER, 17, &udp((68, 67), b"a")), 2000),
            (2.0, frame(GUEST, SERVER, 17, &udp((68, 67), b"b")), 2000),
        ]);
        let cut = &whole[..whole.len() - 5];
        assert_eq!(packets(cut).unwrap().len(), 1);
        assert!(packets(b"junk").is_err());
        assert!(packets(&[]).is_err());
    }
}
