//! Untrusted bytes in, a [`Request`] out. dhcproto 0.15 panics (debug) or silently stops
//! (release) on some malformed option lengths, so it only ever sees a packet rebuilt here from
//! the options we use, each length-checked.

use std::net::Ipv4Addr;

use dhcproto::v4::{Decodable, Decoder, DhcpOption, Message, MessageType, OptionCode};

use crate::mac::MacAddr;
use crate::policy::{ClientArch, DhcpStage};

/// Fixed BOOTP header up to and including the magic cookie.
const HEADER_LEN: usize = 240;
const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];
const OPTION_PAD: u8 = 0;
const OPTION_END: u8 = 255;
pub const OPTION_IPXE_ENCAP: u8 = 175;

/// Why a packet got no answer; the label it is counted under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    TooShort,
    NotARequest,
    NotEthernet,
    BadMagic,
    TruncatedOption,
    BadOptionLength(u8),
    NoMessageType,
    Undecodable,
}

impl Malformed {
    pub fn label(self) -> &'static str {
        match self {
            Malformed::TooShort => "too_short",
            Malformed::NotARequest => "not_a_request",
            Malformed::NotEthernet => "not_ethernet",
            Malformed::BadMagic => "bad_magic",
            Malformed::TruncatedOption => "truncated_option",
            Malformed::BadOptionLength(_) => "bad_option_length",
            Malformed::NoMessageType => "no_message_type",
            Malformed::Undecodable => "undecodable",
        }
    }
}

/// A client's DHCP request, with what the boot policy needs already pulled out.
#[derive(Debug, Clone)]
pub struct Request {
    pub message: Message,
    pub kind: MessageType,
    pub mac: MacAddr,
    pub arch: Option<ClientArch>,
    pub stage: DhcpStage,
    /// Option 60 starts with `PXEClient`: PXE firmware (or iPXE, which says so too).
    pub pxe_client: bool,
    /// Option 60 starts with `HTTPClient`: UEFI HTTP boot.
    pub http_client: bool,
    pub requested_ip: Option<Ipv4Addr>,
    pub server_id: Option<Ipv4Addr>,
    /// Option 97, echoed in PXE replies.
    pub machine_id: Option<Vec<u8>>,
}

/// The options we read, each with its length rule; all others are dropped unread.
fn length_rule(code: u8) -> Option<fn(usize) -> bool> {
    match code {
        53 => Some(|len| len == 1),
        50 | 54 => Some(|len| len == 4),
        57 => Some(|len| len == 2),
        93 => Some(|len| len >= 2 && len % 2 == 0),
        94 => Some(|len| len == 3),
        55 | 60 | 61 | 77 | 97 | OPTION_IPXE_ENCAP => Some(|_| true),
        _ => None,
    }
}

/// Checks the header and every option length, and rebuilds the packet from the options we
/// read (repeated options concatenated per RFC 3396, in ascending code order).
fn sanitize(packet: &[u8]) -> Result<Vec<u8>, Malformed> {
    if packet.len() < HEADER_LEN {
        return Err(Malformed::TooShort);
    }
    if packet[0] != 1 {
        return Err(Malformed::NotARequest);
    }
    if packet[1] != 1 || packet[2] != 6 {
        return Err(Malformed::NotEthernet);
    }
    if packet[236..240] != MAGIC_COOKIE {
        return Err(Malformed::BadMagic);
    }
    let mut options: std::collections::BTreeMap<u8, Vec<u8>> = Default::default();
    let mut rest = &packet[HEADER_LEN..];
    while let Some((&code, after_code)) = rest.split_first() {
        match code {
            OPTION_PAD => rest = after_code,
            OPTION_END => break,
            _ => {
                let (&len, after_len) =
                    after_code.split_first().ok_or(Malformed::TruncatedOption)?;
                let data = after_len
                    .get(..usize::from(len))
                    .ok_or(Malformed::TruncatedOption)?;
                if length_rule(code).is_some() {
                    options.entry(code).or_default().extend_from_slice(data);
                }
                rest = &after_len[usize::from(len)..];
            }
        }
    }
    let mut clean = packet[..HEADER_LEN].to_vec();
    for (code, data) in options {
        if !length_rule(code).is_some_and(|valid| valid(data.len())) {
            return Err(Malformed::BadOptionLength(code));
        }
        if data.is_empty() {
            clean.extend_from_slice(&[code, 0]);
        }
        for chunk in data.chunks(usize::from(u8::MAX)) {
            clean.extend_from_slice(&[code, chunk.len() as u8]);
            clean.extend_from_slice(chunk);
        }
    }
    clean.push(OPTION_END);
    Ok(clean)
}

/// iPXE sends its user class as the bare bytes `iPXE`, not RFC 3004's length-prefixed list;
/// accept both.
fn user_class_is_ipxe(user_class: &[u8]) -> bool {
    if user_class == b"iPXE" {
        return true;
    }
    let mut rest = user_class;
    while let Some((&len, after)) = rest.split_first() {
        let Some(class) = after.get(..usize::from(len)) else {
            return false;
        };
        if class == b"iPXE" {
            return true;
        }
        rest = &after[usize::from(len)..];
    }
    false
}

pub fn decode(packet: &[u8]) -> Result<Request, Malformed> {
    let clean = sanitize(packet)?;
    let message = Message::decode(&mut Decoder::new(&clean)).map_err(|_| Malformed::Undecodable)?;
    let opts = message.opts();
    let kind = opts.msg_type().ok_or(Malformed::NoMessageType)?;
    let mac = MacAddr(
        message
            .chaddr()
            .try_into()
            .map_err(|_| Malformed::NotEthernet)?,
    );
    let arch = match opts.get(OptionCode::ClientSystemArchitecture) {
        Some(DhcpOption::ClientSystemArchitecture(arch)) => {
            Some(ClientArch::from(u16::from(*arch)))
        }
        _ => None,
    };
    let ipxe = opts.get(OptionCode::Unknown(OPTION_IPXE_ENCAP)).is_some()
        || matches!(opts.get(OptionCode::UserClass), Some(DhcpOption::UserClass(class)) if user_class_is_ipxe(class));
    let vendor_class = match opts.get(OptionCode::ClassIdentifier) {
        Some(DhcpOption::ClassIdentifier(class)) => class.as_slice(),
        _ => &[],
    };
    let pxe_client = vendor_class.starts_with(b"PXEClient");
    let http_client = vendor_class.starts_with(b"HTTPClient");
    let stage = if ipxe {
        DhcpStage::Ipxe
    } else if arch.is_some() || pxe_client || http_client {
        DhcpStage::Firmware
    } else {
        DhcpStage::Os
    };
    let requested_ip = match opts.get(OptionCode::RequestedIpAddress) {
        Some(DhcpOption::RequestedIpAddress(ip)) => Some(*ip),
        _ => None,
    };
    let server_id = match opts.get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
        _ => None,
    };
    let machine_id = match opts.get(OptionCode::ClientMachineIdentifier) {
        Some(DhcpOption::ClientMachineIdentifier(id)) => Some(id.clone()),
        _ => None,
    };
    Ok(Request {
        kind,
        mac,
        arch,
        stage,
        pxe_client,
        http_client,
        requested_ip,
        server_id,
        machine_id,
        message,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A DHCPDISCOVER header from `mac` followed by raw option bytes.
    pub fn packet(mac: [u8; 6], options: &[u8]) -> Vec<u8> {
        let mut packet = vec![0u8; HEADER_LEN];
        packet[..3].copy_from_slice(&[1, 1, 6]);
        packet[4..8].copy_from_slice(&0x1234_5678u32.to_be_bytes());
        packet[28..34].copy_from_slice(&mac);
        packet[236..240].copy_from_slice(&MAGIC_COOKIE);
        packet.extend_from_slice(options);
        packet
    }

    const MAC: [u8; 6] = [0x52, 0x54, 0, 0, 0, 1];

    #[test]
    fn decodes_a_bios_pxe_discover() {
        let mut options = vec![53, 1, 1, 93, 2, 0, 0, 60, 9];
        options.extend_from_slice(b"PXEClient");
        options.extend_from_slice(&[97, 3, 0, 1, 2, 255]);
        let request = decode(&packet(MAC, &options)).unwrap();
        assert_eq!(request.kind, MessageType::Discover);
        assert_eq!(request.mac, MacAddr(MAC));
        assert_eq!(request.arch, Some(ClientArch::BiosPxe));
        assert!(request.pxe_client);
        assert_eq!(request.stage, DhcpStage::Firmware);
        assert_eq!(request.machine_id.as_deref(), Some(&[0, 1, 2][..]));
    }

    fn stage(options: &[u8]) -> DhcpStage {
        decode(&packet(MAC, options)).unwrap().stage
    }

    #[test]
    fn recognises_ipxe_by_option_175_or_either_user_class_encoding() {
        let by_175 = [53, 1, 1, 175, 3, 0xb1, 1, 1, 255];
        let bare_class = [53, 1, 1, 77, 4, b'i', b'P', b'X', b'E', 255];
        let rfc3004_class = [
            53, 1, 1, 77, 8, 2, b'x', b'y', 4, b'i', b'P', b'X', b'E', 255,
        ];
        // iPXE names its architecture and says PXEClient too.
        let as_qemu_rom = [
            53, 1, 1, 93, 2, 0, 0, 60, 9, b'P', b'X', b'E', b'C', b'l', b'i', b'e', b'n', b't', 77,
            4, b'i', b'P', b'X', b'E', 255,
        ];
        for options in [&by_175[..], &bare_class, &rfc3004_class, &as_qemu_rom] {
            assert_eq!(stage(options), DhcpStage::Ipxe, "{options:?}");
        }
        assert_eq!(
            stage(&[53, 1, 1, 77, 3, b'f', b'o', b'o', 255]),
            DhcpStage::Os
        );
    }

    #[test]
    fn firmware_names_its_architecture_or_boot_class_and_the_booted_system_neither() {
        let by_arch = [53, 1, 1, 93, 2, 0, 7, 255];
        let by_class = [
            53, 1, 1, 60, 9, b'P', b'X', b'E', b'C', b'l', b'i', b'e', b'n', b't', 255,
        ];
        let http_boot = [
            53, 1, 1, 60, 10, b'H', b'T', b'T', b'P', b'C', b'l', b'i', b'e', b'n', b't', 255,
        ];
        for options in [&by_arch[..], &by_class, &http_boot] {
            assert_eq!(stage(options), DhcpStage::Firmware, "{options:?}");
        }
        let ipconfig = [
            53, 1, 3, 60, 14, b'L', b'i', b'n', b'u', b'x', b' ', b'i', b'p', b'c', b'o', b'n',
            b'f', b'i', b'g', 255,
        ];
        for options in [&[53, 1, 3, 255][..], &ipconfig] {
            assert_eq!(stage(options), DhcpStage::Os, "{options:?}");
        }
    }

    #[test]
    fn reads_x64_efi_and_http_boot_architectures() {
        let efi = decode(&packet(MAC, &[53, 1, 1, 93, 2, 0, 7, 255])).unwrap();
        assert_eq!(efi.arch, Some(ClientArch::EfiX64));
        let http = decode(&packet(MAC, &[53, 1, 1, 93, 4, 0, 16, 0, 7, 255])).unwrap();
        assert_eq!(http.arch, Some(ClientArch::EfiX64Http));
    }

    #[test]
    fn concatenates_split_options() {
        let options = [53, 1, 3, 50, 2, 10, 0, 50, 2, 0, 7, 255];
        assert_eq!(
            decode(&packet(MAC, &options)).unwrap().requested_ip,
            Some(Ipv4Addr::new(10, 0, 0, 7))
        );
    }

    #[test]
    fn drops_bad_lengths_that_would_trip_dhcproto() {
        // option 94 must be 3 bytes (dhcproto debug_asserts it); 53 must be 1.
        assert_eq!(
            decode(&packet(MAC, &[53, 1, 1, 94, 1, 1, 255])).unwrap_err(),
            Malformed::BadOptionLength(94)
        );
        assert_eq!(
            decode(&packet(MAC, &[53, 2, 1, 1, 255])).unwrap_err(),
            Malformed::BadOptionLength(53)
        );
        assert_eq!(
            decode(&packet(MAC, &[53, 1, 1, 93, 1, 0, 255])).unwrap_err(),
            Malformed::BadOptionLength(93)
        );
    }

    #[test]
    fn ignores_options_it_does_not_read_whatever_their_content() {
        // 81 (FQDN) with a length dhcproto would debug_assert on, 151 with zero length.
        let request = decode(&packet(MAC, &[53, 1, 1, 81, 1, 0, 151, 0, 255])).unwrap();
        assert_eq!(request.kind, MessageType::Discover);
    }

    #[test]
    fn rejects_broken_headers_and_truncation() {
        assert_eq!(decode(&[1; 100]).unwrap_err(), Malformed::TooShort);
        let mut reply = packet(MAC, &[53, 1, 2, 255]);
        reply[0] = 2;
        assert_eq!(decode(&reply).unwrap_err(), Malformed::NotARequest);
        let mut long_hw = packet(MAC, &[53, 1, 1, 255]);
        long_hw[2] = 200;
        assert_eq!(decode(&long_hw).unwrap_err(), Malformed::NotEthernet);
        assert_eq!(
            decode(&packet(MAC, &[53, 1, 1, 60, 9, b'P'])).unwrap_err(),
            Malformed::TruncatedOption
        );
        assert_eq!(
            decode(&packet(MAC, &[12, 3, b'a', b'b', b'c', 255])).unwrap_err(),
            Malformed::NoMessageType
        );
    }
}
