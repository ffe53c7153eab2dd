//! No panics at the untrusted-input boundaries: DHCP, TFTP and router-solicitation packets, arbitrary bytes and
//! near-valid ones (a well-formed header followed by random options). The same entry points
//! are the cargo-fuzz targets in `fuzz/`.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use lectern_netboot::dhcp::{Mode, Port, Responder, decode};
use lectern_netboot::mac::MacAddr;
use lectern_netboot::policy::{Host, Network, SharedPolicy, StaticPolicy};
use lectern_netboot::urls::Urls;
use lectern_netboot::{ra, tftp};
use proptest::prelude::*;

const KNOWN: [u8; 6] = [0x52, 0x54, 0, 0, 0, 1];

fn responder(mode: Mode) -> Responder {
    let host = Host {
        mac: MacAddr(KNOWN),
        hostname: "mixer1".into(),
        ip: Some(Ipv4Addr::new(10, 99, 0, 10)),
    };
    let network = Network {
        netmask: Ipv4Addr::new(255, 255, 255, 0),
        router: None,
        dns: vec![],
        ntp: vec![],
        domain: None,
        lease_time: Duration::from_secs(60),
    };
    Responder {
        mode,
        server_ip: Ipv4Addr::new(10, 99, 0, 1),
        policy: SharedPolicy::new(Arc::new(StaticPolicy::new(vec![host], network))),
        pool: None,
        timeline: Arc::default(),
        metrics: Arc::default(),
        urls: Urls::new("http://10.99.0.1:8080"),
    }
}

/// A BOOTREQUEST header from the known MAC (or a random one), then `options`.
fn near_valid(known_mac: bool, random_mac: [u8; 6], options: &[u8]) -> Vec<u8> {
    let mut packet = vec![0u8; 240];
    packet[..3].copy_from_slice(&[1, 1, 6]);
    packet[28..34].copy_from_slice(if known_mac { &KNOWN } else { &random_mac });
    packet[236..240].copy_from_slice(&[99, 130, 83, 99]);
    packet.extend_from_slice(options);
    packet
}

/// Options that are mostly well-framed, with codes we read weighted up.
fn options() -> impl Strategy<Value = Vec<u8>> {
    let code = prop_oneof![
        prop::sample::select(vec![50u8, 53, 54, 55, 57, 60, 61, 77, 93, 94, 97, 175]),
        any::<u8>(),
    ];
    let option = (code, prop::collection::vec(any::<u8>(), 0..12)).prop_map(|(code, data)| {
        let mut bytes = vec![code, data.len() as u8];
        bytes.extend(data);
        bytes
    });
    (
        prop::collection::vec(option, 0..12),
        prop::collection::vec(any::<u8>(), 0..4),
        any::<bool>(),
    )
        .prop_map(|(options, noise, message_type_first)| {
            let mut bytes = if message_type_first {
                vec![53, 1, 1]
            } else {
                vec![]
            };
            bytes.extend(options.concat());
            bytes.extend(noise);
            bytes
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn dhcp_decode_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..700)) {
        let _ = decode::decode(&bytes);
    }

    #[test]
    fn dhcp_handling_never_panics_on_near_valid_packets(
        known_mac in any::<bool>(),
        random_mac in any::<[u8; 6]>(),
        options in options(),
        proxy in any::<bool>(),
        port_4011 in any::<bool>(),
    ) {
        let packet = near_valid(known_mac, random_mac, &options);
        let mode = if proxy { Mode::Proxy } else { Mode::Authoritative };
        let port = if port_4011 { Port::ProxyPxe } else { Port::Dhcp };
        let from = SocketAddrV4::new(Ipv4Addr::new(10, 99, 0, 10), 68);
        if let Some(reply) = responder(mode).handle(port, from, &packet) {
            prop_assert!(reply.bytes.len() >= 300);
        }
    }

    #[test]
    fn router_solicitation_parse_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..64), solicitation in any::<bool>()) {
        let mut message = bytes;
        if solicitation && !message.is_empty() {
            message[0] = 133;
        }
        let _ = ra::solicitation_source(&message);
    }

    #[test]
    fn tftp_parse_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = tftp::parse(&bytes);
    }

    #[test]
    fn tftp_negotiation_stays_in_bounds(
        options in prop::collection::vec(("[a-zA-Z]{0,10}", "[0-9]{0,22}"), 0..8),
        size in any::<u64>(),
    ) {
        let options: Vec<(String, String)> = options.into_iter().map(|(name, value)| (name.to_ascii_lowercase(), value)).collect();
        let max_timeout = tftp::Limits::default().max_timeout;
        let negotiated = tftp::negotiate(&options, size, max_timeout);
        prop_assert!(negotiated.timeout <= max_timeout);
        prop_assert!((8..=65_464).contains(&negotiated.blksize) || negotiated.blksize == 512);
        prop_assert!((1..=64).contains(&negotiated.windowsize));
    }
}
