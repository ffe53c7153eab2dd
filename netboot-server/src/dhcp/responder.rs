//! What to answer a decoded request with, in either mode. Pure decisions and packet building:
//! sockets live in the parent module.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use dhcproto::v4::{
    DhcpOption, Encodable, HType, Message, MessageType, Opcode, OptionCode, UnknownOption,
};

use super::decode::{OPTION_IPXE_ENCAP, Request, decode};
use super::pool::{Pool, PoolError};
use crate::mac::MacAddr;
use crate::metrics::{DHCP_DROPPED, DHCP_NOTED, DHCP_REPLIED, Metrics};
use crate::policy::{BootPolicy, BootStep, Client, DhcpStage, Host, SharedPolicy};
use crate::timeline::{Event, Timeline};
use crate::urls::Urls;

/// iPXE encapsulated option 176 (no-pxedhcp) = 1: don't wait ~3 s for ProxyDHCP offers.
const IPXE_NO_PXEDHCP: [u8; 3] = [176, 1, 1];
/// PXE vendor option 6 (discovery control) = 8: boot the file named in this packet, no
/// boot server discovery; then the end of the encapsulated options.
const PXE_BOOT_FROM_THIS_PACKET: [u8; 4] = [6, 1, 8, 255];
/// Some PXE ROMs drop replies shorter than a BOOTP packet.
const MIN_REPLY_LEN: usize = 300;
/// The BOOTP `file` field holds 127 bytes and a NUL; longer URLs go in option 67 only.
const FILE_FIELD_MAX: usize = 127;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The only DHCP server on the LAN: addresses and boot options.
    Authoritative,
    /// Beside a venue's DHCP: boot options only, on 67 and 4011, to known MACs.
    Proxy,
}

/// Which socket a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// 67, where clients broadcast.
    Dhcp,
    /// 4011, where PXE clients send ProxyDHCP requests.
    ProxyPxe,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub bytes: Vec<u8>,
    pub to: Destination,
    /// An ACK of a pool lease: it may leave only once the lease is on disk.
    pub awaits_lease_write: bool,
}

/// Where a reply goes (RFC 2131 §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// An address the kernel routes to: a relay, the client's own address, the sender on 4011,
    /// or everyone (the broadcast address).
    Udp(SocketAddrV4),
    /// A client without an address that did not ask for a broadcast: the address it is given,
    /// at its hardware address.
    Hardware { to: SocketAddrV4, mac: MacAddr },
}

/// Why a request got no reply; counted under that label.
type Silent = &'static str;

pub struct Responder {
    pub mode: Mode,
    pub server_ip: Ipv4Addr,
    pub policy: SharedPolicy,
    pub pool: Option<Mutex<Pool>>,
    pub timeline: Arc<Timeline>,
    pub metrics: Arc<Metrics>,
    pub urls: Urls,
}

impl Responder {
    /// Everything about one packet: decode, decide, count, encode. Never panics on input.
    pub fn handle(&self, port: Port, from: SocketAddrV4, packet: &[u8]) -> Option<Reply> {
        let request = match decode(packet) {
            Ok(request) => request,
            Err(malformed) => {
                tracing::debug!(%from, ?malformed, "dropped malformed DHCP packet");
                self.metrics
                    .inc(DHCP_DROPPED, &[("reason", malformed.label())]);
                return None;
            }
        };
        // One policy for the whole exchange, even if a reload swaps it meanwhile.
        let policy = self.policy.current();
        let outcome = match (self.mode, port) {
            (Mode::Authoritative, _) => self.authoritative(&*policy, &request),
            (Mode::Proxy, Port::Dhcp) => self.proxy_dhcp(&*policy, &request),
            (Mode::Proxy, Port::ProxyPxe) => self.proxy_pxe(&*policy, &request),
        };
        let message = match outcome {
            Ok(message) => message,
            Err(reason) => {
                tracing::debug!(mac = %request.mac, kind = ?request.kind, reason, "no DHCP reply");
                // Taken, and wanting no answer: not a drop.
                match reason {
                    "released" | "declined" | "venue_request" => {
                        self.metrics.inc(DHCP_NOTED, &[("type", reason)]);
                    }
                    _ => self.metrics.inc(DHCP_DROPPED, &[("reason", reason)]),
                }
                return None;
            }
        };
        let mut bytes = match message.to_vec() {
            Ok(bytes) => bytes,
            Err(error) => {
                tracing::error!(mac = %request.mac, %error, "could not encode DHCP reply");
                self.metrics
                    .inc(DHCP_DROPPED, &[("reason", "encode_error")]);
                return None;
            }
        };
        bytes.resize(bytes.len().max(MIN_REPLY_LEN), 0);
        let kind = message.opts().msg_type();
        let boot = match message.opts().get(OptionCode::BootfileName) {
            Some(DhcpOption::BootfileName(file)) => String::from_utf8_lossy(file).into_owned(),
            _ => String::new(),
        };
        tracing::info!(mac = %request.mac, stage = ?request.stage, ip = %message.yiaddr(), %boot, reply = reply_label(kind), "DHCP reply");
        self.metrics
            .inc(DHCP_REPLIED, &[("type", reply_label(kind))]);
        let to = match port {
            Port::ProxyPxe => Destination::Udp(from),
            Port::Dhcp => destination(&request, &message),
        };
        let awaits_lease_write = kind == Some(MessageType::Ack)
            && self
                .with_pool(|pool| pool.leases_to(request.mac, message.yiaddr()))
                .unwrap_or(false);
        Some(Reply {
            bytes,
            to,
            awaits_lease_write,
        })
    }

    fn authoritative(&self, policy: &dyn BootPolicy, request: &Request) -> Result<Message, Silent> {
        let host = policy.host(request.mac);
        match request.kind {
            MessageType::Discover => {
                let ip = match host.and_then(|host| host.ip) {
                    Some(reserved) => reserved,
                    None => self
                        .with_pool(|pool| {
                            pool.offer(request.mac, request.requested_ip, SystemTime::now())
                        })
                        .flatten()
                        .ok_or("no_address")?,
                };
                Ok(self.lease_reply(policy, request, MessageType::Offer, ip, host))
            }
            MessageType::Request => {
                if request
                    .server_id
                    .is_some_and(|server| server != self.server_ip)
                {
                    self.with_pool(|pool| pool.forget_offer(request.mac));
                    return Err("other_server");
                }
                let wanted = request
                    .requested_ip
                    .or(nonzero(request.message.ciaddr()))
                    .ok_or("no_requested_address")?;
                let confirmed = match host.and_then(|host| host.ip) {
                    Some(reserved) => Some(wanted == reserved),
                    None => self.with_pool(|pool| {
                        match pool.commit(request.mac, wanted, SystemTime::now()) {
                            Ok(()) => true,
                            Err(PoolError::OutOfRange(_) | PoolError::Taken(_)) => false,
                        }
                    }),
                };
                match confirmed {
                    Some(true) => {
                        self.timeline.bind_address(request.mac, wanted);
                        self.timeline
                            .record(request.mac, Event::Dhcp(request.stage));
                        Ok(self.lease_reply(policy, request, MessageType::Ack, wanted, host))
                    }
                    Some(false) => Ok(self.nak(request)),
                    // No reservation and no pool: RFC 2131 says stay silent about clients we
                    // have no record of.
                    None => Err("unknown_client"),
                }
            }
            MessageType::Release => {
                self.with_pool(|pool| pool.release(request.mac));
                // A reserved host keeps its address: only a pool lease is given back.
                if host.and_then(|host| host.ip).is_none() {
                    self.timeline.forget_address(request.mac);
                }
                Err("released")
            }
            // RFC 2131 §4.3.5: a client with an address of its own asks for the network's
            // parameters; the ACK goes to that address, with no lease in it.
            MessageType::Inform => {
                let ciaddr = nonzero(request.message.ciaddr()).ok_or("inform_without_address")?;
                let mut ack = self.lease_reply(
                    policy,
                    request,
                    MessageType::Ack,
                    Ipv4Addr::UNSPECIFIED,
                    host,
                );
                ack.set_ciaddr(ciaddr);
                let opts = ack.opts_mut();
                for lease in [
                    OptionCode::AddressLeaseTime,
                    OptionCode::Renewal,
                    OptionCode::Rebinding,
                ] {
                    opts.remove(lease);
                }
                Ok(ack)
            }
            MessageType::Decline => {
                let ip = request.requested_ip.ok_or("decline_without_address")?;
                let now = SystemTime::now();
                match self.with_pool(|pool| pool.decline(request.mac, ip, now)) {
                    Some(true) => Err("declined"),
                    _ => Err("decline_not_holder"),
                }
            }
            _ => Err("unsupported_type"),
        }
    }

    /// Port 67 beside a venue DHCP: offer boot options to known PXE clients, and note which
    /// address a known client asks the venue for (the host layer is served only there).
    fn proxy_dhcp(&self, policy: &dyn BootPolicy, request: &Request) -> Result<Message, Silent> {
        let host = policy.host(request.mac).ok_or("unknown_client")?;
        match request.kind {
            MessageType::Discover => self.proxy_reply(policy, request, host, MessageType::Offer),
            MessageType::Request if request.server_id == Some(self.server_ip) => {
                self.proxy_reply(policy, request, host, MessageType::Ack)
            }
            MessageType::Request => {
                if let Some(ip) = request.requested_ip.or(nonzero(request.message.ciaddr())) {
                    self.timeline.bind_address(host.mac, ip);
                }
                Err("venue_request")
            }
            _ => Err("unsupported_type"),
        }
    }

    /// Port 4011: the PXE client, now with an address, asks us for its boot file.
    fn proxy_pxe(&self, policy: &dyn BootPolicy, request: &Request) -> Result<Message, Silent> {
        let host = policy.host(request.mac).ok_or("unknown_client")?;
        if let Some(ip) = nonzero(request.message.ciaddr()) {
            self.timeline.bind_address(host.mac, ip);
        }
        match request.kind {
            MessageType::Request | MessageType::Inform => {
                self.proxy_reply(policy, request, host, MessageType::Ack)
            }
            _ => Err("unsupported_type"),
        }
    }

    fn proxy_reply(
        &self,
        policy: &dyn BootPolicy,
        request: &Request,
        host: &Host,
        kind: MessageType,
    ) -> Result<Message, Silent> {
        if !request.pxe_client && !request.http_client {
            return Err("not_pxe");
        }
        let mut message = reply_base(request, kind, self.server_ip);
        if kind == MessageType::Ack {
            message.set_ciaddr(request.message.ciaddr());
        }
        if !self.add_boot(policy, &mut message, request) {
            return Err("nothing_to_boot");
        }
        let opts = message.opts_mut();
        if !request.http_client {
            opts.insert(DhcpOption::ClassIdentifier(b"PXEClient".to_vec()));
            opts.insert(DhcpOption::VendorExtensions(
                PXE_BOOT_FROM_THIS_PACKET.to_vec(),
            ));
        }
        if let Some(machine_id) = &request.machine_id {
            opts.insert(DhcpOption::ClientMachineIdentifier(machine_id.clone()));
        }
        self.timeline.record(host.mac, Event::Dhcp(request.stage));
        Ok(message)
    }

    fn lease_reply(
        &self,
        policy: &dyn BootPolicy,
        request: &Request,
        kind: MessageType,
        ip: Ipv4Addr,
        host: Option<&Host>,
    ) -> Message {
        let network = policy.network();
        let mut message = reply_base(request, kind, self.server_ip);
        message.set_yiaddr(ip);
        if kind == MessageType::Ack {
            message.set_ciaddr(request.message.ciaddr());
        }
        let lease_secs = u32::try_from(network.lease_time.as_secs()).unwrap_or(u32::MAX);
        let opts = message.opts_mut();
        opts.insert(DhcpOption::AddressLeaseTime(lease_secs));
        opts.insert(DhcpOption::Renewal(lease_secs / 2));
        opts.insert(DhcpOption::Rebinding(lease_secs / 8 * 7));
        opts.insert(DhcpOption::SubnetMask(network.netmask));
        if let Some(router) = network.router {
            opts.insert(DhcpOption::Router(vec![router]));
        }
        if !network.dns.is_empty() {
            opts.insert(DhcpOption::DomainNameServer(network.dns.clone()));
        }
        if !network.ntp.is_empty() {
            opts.insert(DhcpOption::NtpServers(network.ntp.clone()));
        }
        if let Some(domain) = &network.domain {
            opts.insert(DhcpOption::DomainName(domain.clone()));
        }
        if let Some(host) = host {
            opts.insert(DhcpOption::Hostname(host.hostname.clone()));
            self.add_boot(policy, &mut message, request);
        }
        message
    }

    fn nak(&self, request: &Request) -> Message {
        let mut message = reply_base(request, MessageType::Nak, self.server_ip);
        message
            .opts_mut()
            .insert(DhcpOption::Message("requested address is not yours".into()));
        message
    }

    /// Adds what the policy says the client loads next; false if nothing.
    fn add_boot(&self, policy: &dyn BootPolicy, message: &mut Message, request: &Request) -> bool {
        let client = Client {
            mac: request.mac,
            arch: request.arch,
            stage: request.stage,
            ip: nonzero(message.yiaddr()).or(nonzero(request.message.ciaddr())),
        };
        let Some(step) = policy.next_boot(&client) else {
            return false;
        };
        // Next server, whatever the step: iPXE ignores a ProxyDHCP reply without one.
        message.set_siaddr(self.server_ip);
        let file = match &step {
            BootStep::Tftp(file) => {
                message.opts_mut().insert(DhcpOption::TFTPServerName(
                    self.server_ip.to_string().into_bytes(),
                ));
                file.clone()
            }
            BootStep::HttpBoot(file) => {
                message
                    .opts_mut()
                    .insert(DhcpOption::ClassIdentifier(b"HTTPClient".to_vec()));
                self.urls.firmware(file)
            }
            BootStep::IpxeScript => self.urls.ipxe_script(request.mac),
        };
        if file.len() <= FILE_FIELD_MAX {
            message.set_fname_str(&file);
        }
        let opts = message.opts_mut();
        opts.insert(DhcpOption::BootfileName(file.into_bytes()));
        if request.stage == DhcpStage::Ipxe {
            let code = OptionCode::Unknown(OPTION_IPXE_ENCAP);
            opts.insert(DhcpOption::Unknown(UnknownOption::new(
                code,
                IPXE_NO_PXEDHCP.to_vec(),
            )));
        }
        true
    }

    /// Writes lease changes to disk; call before sending the replies that announce them. False
    /// if they could not be written.
    /// Puts the pool's changes on disk ([`super::pool::save`]); true without a pool.
    pub fn save_leases(&self) -> bool {
        self.pool.as_ref().is_none_or(super::pool::save)
    }

    /// Whether the pool has changes that [`Responder::save_leases`] has not written yet.
    pub fn has_unsaved_leases(&self) -> bool {
        self.with_pool(|pool| pool.has_unsaved()).unwrap_or(false)
    }

    fn with_pool<T>(&self, action: impl FnOnce(&mut Pool) -> T) -> Option<T> {
        self.pool
            .as_ref()
            .map(|pool| action(&mut pool.lock().expect("pool lock")))
    }
}

fn nonzero(ip: Ipv4Addr) -> Option<Ipv4Addr> {
    (!ip.is_unspecified()).then_some(ip)
}

fn reply_base(request: &Request, kind: MessageType, server_ip: Ipv4Addr) -> Message {
    let mut message = Message::default();
    message
        .set_opcode(Opcode::BootReply)
        .set_htype(HType::Eth)
        .set_xid(request.message.xid())
        .set_flags(request.message.flags())
        .set_giaddr(request.message.giaddr())
        .set_chaddr(request.message.chaddr());
    let opts = message.opts_mut();
    opts.insert(DhcpOption::MessageType(kind));
    opts.insert(DhcpOption::ServerIdentifier(server_ip));
    message
}

/// RFC 2131 §4.1: to the relay; else to the client's own address; a NAK, a client that asked
/// for it, or a reply that gives no address, broadcast; else to the given address at the
/// client's hardware address.
fn destination(request: &Request, reply: &Message) -> Destination {
    let asked = &request.message;
    if let Some(relay) = nonzero(asked.giaddr()) {
        return Destination::Udp(SocketAddrV4::new(relay, 67));
    }
    let is_nak = reply.opts().msg_type() == Some(MessageType::Nak);
    match (nonzero(asked.ciaddr()), nonzero(reply.yiaddr())) {
        _ if is_nak => Destination::Udp(SocketAddrV4::new(Ipv4Addr::BROADCAST, 68)),
        (Some(client), _) => Destination::Udp(SocketAddrV4::new(client, 68)),
        (None, Some(given)) if !asked.flags().broadcast() => Destination::Hardware {
            to: SocketAddrV4::new(given, 68),
            mac: request.mac,
        },
        _ => Destination::Udp(SocketAddrV4::new(Ipv4Addr::BROADCAST, 68)),
    }
}

fn reply_label(kind: Option<MessageType>) -> &'static str {
    match kind {
        Some(MessageType::Offer) => "offer",
        Some(MessageType::Ack) => "ack",
        Some(MessageType::Nak) => "nak",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use dhcproto::v4::{Decodable, Decoder};

    use super::*;
    use crate::dhcp::decode::tests::packet;
    use crate::mac::MacAddr;
    use crate::policy::{Network, StaticPolicy};

    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
    const RESERVED: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 10);
    const KNOWN: [u8; 6] = [0x52, 0x54, 0, 0, 0, 1];
    const FLOATING: [u8; 6] = [0x52, 0x54, 0, 0, 0, 2];
    const STRANGER: [u8; 6] = [0x52, 0x54, 0, 0, 0, 9];
    const CLIENT: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68);

    fn responder(mode: Mode, pool_dir: Option<&std::path::Path>) -> Responder {
        let hosts = vec![
            Host {
                mac: MacAddr(KNOWN),
                hostname: "mixer1".into(),
                ip: Some(RESERVED),
            },
            Host {
                mac: MacAddr(FLOATING),
                hostname: "encoder1".into(),
                ip: None,
            },
        ];
        let network = Network {
            netmask: Ipv4Addr::new(255, 255, 255, 0),
            router: Some(SERVER),
            dns: vec![Ipv4Addr::new(10, 99, 0, 53)],
            ntp: vec![SERVER],
            domain: Some("video.lan".into()),
            lease_time: Duration::from_secs(3600),
        };
        let pool = pool_dir.map(|dir| {
            let (first, last) = (Ipv4Addr::new(10, 99, 0, 200), Ipv4Addr::new(10, 99, 0, 201));
            let reservations = [(MacAddr(KNOWN), RESERVED)];
            let pool = Pool::load(
                first,
                last,
                network.lease_time,
                reservations,
                dir.join("leases.json"),
                SystemTime::now(),
            );
            Mutex::new(pool.unwrap())
        });
        Responder {
            mode,
            server_ip: SERVER,
            policy: SharedPolicy::new(Arc::new(StaticPolicy::new(hosts, network))),
            pool,
            timeline: Arc::default(),
            metrics: Arc::default(),
            urls: Urls::new("http://10.99.0.1:8080"),
        }
    }

    fn reply(responder: &Responder, port: Port, request: &[u8]) -> Option<(Message, Destination)> {
        let reply = responder.handle(port, CLIENT, request)?;
        assert!(reply.bytes.len() >= MIN_REPLY_LEN);
        Some((
            Message::decode(&mut Decoder::new(&reply.bytes)).unwrap(),
            reply.to,
        ))
    }

    /// The BOOTP file field as sent; dhcproto keeps the NUL terminator when decoding.
    fn file(message: &Message) -> Option<&str> {
        message
            .fname_str()?
            .ok()
            .map(|file| file.trim_end_matches('\0'))
    }

    fn option(message: &Message, code: OptionCode) -> Option<&DhcpOption> {
        message.opts().get(code)
    }

    const BIOS_PXE_DISCOVER: &[u8] = &[
        53, 1, 1, 93, 2, 0, 0, 60, 9, b'P', b'X', b'E', b'C', b'l', b'i', b'e', b'n', b't', 97, 2,
        0, 7, 255,
    ];

    #[test]
    fn inform_gets_the_network_at_its_own_address_and_no_lease() {
        let responder = responder(Mode::Authoritative, None);
        let mut inform = packet(STRANGER, &[53, 1, 8, 255]);
        inform[12..16].copy_from_slice(&[10, 99, 0, 77]);
        let (ack, to) = reply(&responder, Port::Dhcp, &inform).unwrap();
        assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
        assert_eq!(
            to,
            Destination::Udp(SocketAddrV4::new(Ipv4Addr::new(10, 99, 0, 77), 68))
        );
        assert_eq!(ack.yiaddr(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(
            option(&ack, OptionCode::NtpServers),
            Some(&DhcpOption::NtpServers(vec![SERVER]))
        );
        assert_eq!(option(&ack, OptionCode::AddressLeaseTime), None);
        // Without an address of its own there is nothing to inform.
        assert!(
            responder
                .handle(Port::Dhcp, CLIENT, &packet(STRANGER, &[53, 1, 8, 255]))
                .is_none()
        );
    }

    #[test]
    fn reserved_host_is_offered_its_address_name_network_and_first_stage() {
        let responder = responder(Mode::Authoritative, None);
        let (offer, to) = reply(&responder, Port::Dhcp, &packet(KNOWN, BIOS_PXE_DISCOVER)).unwrap();
        assert_eq!(
            to,
            Destination::Hardware {
                to: SocketAddrV4::new(RESERVED, 68),
                mac: MacAddr(KNOWN)
            }
        );
        assert_eq!(offer.opts().msg_type(), Some(MessageType::Offer));
        assert_eq!((offer.yiaddr(), offer.siaddr()), (RESERVED, SERVER));
        assert_eq!(file(&offer), Some("undionly.kpxe"));
        assert_eq!(
            option(&offer, OptionCode::Hostname),
            Some(&DhcpOption::Hostname("mixer1".into()))
        );
        assert_eq!(
            option(&offer, OptionCode::DomainName),
            Some(&DhcpOption::DomainName("video.lan".into()))
        );
        assert_eq!(
            option(&offer, OptionCode::Router),
            Some(&DhcpOption::Router(vec![SERVER]))
        );
        assert_eq!(
            option(&offer, OptionCode::NtpServers),
            Some(&DhcpOption::NtpServers(vec![SERVER]))
        );
        assert_eq!(
            option(&offer, OptionCode::ServerIdentifier),
            Some(&DhcpOption::ServerIdentifier(SERVER))
        );
        assert_eq!(
            option(&offer, OptionCode::Unknown(OPTION_IPXE_ENCAP)),
            None,
            "only iPXE reads 175"
        );
    }

    #[test]
    fn ipxe_gets_its_script_url_and_no_proxy_wait() {
        let responder = responder(Mode::Authoritative, None);
        let discover = packet(
            KNOWN,
            &[
                53, 1, 1, 93, 2, 0, 7, 77, 4, b'i', b'P', b'X', b'E', 175, 3, 0xb1, 1, 1, 255,
            ],
        );
        let (offer, _) = reply(&responder, Port::Dhcp, &discover).unwrap();
        assert_eq!(
            file(&offer),
            Some("http://10.99.0.1:8080/ipxe/52:54:00:00:00:01")
        );
        let encapsulated = DhcpOption::Unknown(UnknownOption::new(
            OptionCode::Unknown(175),
            vec![176, 1, 1],
        ));
        assert_eq!(
            option(&offer, OptionCode::Unknown(175)),
            Some(&encapsulated)
        );
    }

    #[test]
    fn uefi_http_boot_gets_a_url_and_httpclient() {
        let responder = responder(Mode::Authoritative, None);
        let (offer, _) = reply(
            &responder,
            Port::Dhcp,
            &packet(KNOWN, &[53, 1, 1, 93, 2, 0, 16, 255]),
        )
        .unwrap();
        assert_eq!(
            file(&offer),
            Some("http://10.99.0.1:8080/firmware/snponly.efi")
        );
        assert_eq!(
            option(&offer, OptionCode::ClassIdentifier),
            Some(&DhcpOption::ClassIdentifier(b"HTTPClient".to_vec()))
        );
    }

    #[test]
    fn request_for_the_reservation_is_acked_and_anything_else_naked() {
        let responder = responder(Mode::Authoritative, None);
        let request = |ip: Ipv4Addr| {
            let mut options = vec![53, 1, 3, 54, 4, 10, 99, 0, 1, 50, 4];
            options.extend_from_slice(&ip.octets());
            options.push(255);
            packet(KNOWN, &options)
        };
        let (ack, _) = reply(&responder, Port::Dhcp, &request(RESERVED)).unwrap();
        assert_eq!(
            (ack.opts().msg_type(), ack.yiaddr()),
            (Some(MessageType::Ack), RESERVED)
        );
        assert_eq!(responder.timeline.mac_of(RESERVED), Some(MacAddr(KNOWN)));
        let (nak, to) = reply(
            &responder,
            Port::Dhcp,
            &request(Ipv4Addr::new(10, 99, 0, 11)),
        )
        .unwrap();
        assert_eq!(
            (nak.opts().msg_type(), to),
            (
                Some(MessageType::Nak),
                Destination::Udp(SocketAddrV4::new(Ipv4Addr::BROADCAST, 68))
            )
        );
    }

    #[test]
    fn a_client_that_asks_for_a_broadcast_or_gets_no_address_is_answered_by_broadcast() {
        let broadcast = Destination::Udp(SocketAddrV4::new(Ipv4Addr::BROADCAST, 68));
        let authoritative = responder(Mode::Authoritative, None);
        let mut discover = packet(KNOWN, BIOS_PXE_DISCOVER);
        discover[10] = 0x80;
        let (offer, to) = reply(&authoritative, Port::Dhcp, &discover).unwrap();
        assert_eq!((offer.yiaddr(), to), (RESERVED, broadcast));
        // ProxyDHCP gives no address: the client can only hear a broadcast.
        let proxy = responder(Mode::Proxy, None);
        let (_, to) = reply(&proxy, Port::Dhcp, &packet(KNOWN, BIOS_PXE_DISCOVER)).unwrap();
        assert_eq!(to, broadcast);
    }

    #[test]
    fn each_stage_s_exchange_is_stamped_as_its_own_and_the_booted_system_gets_no_boot_file() {
        let responder = responder(Mode::Authoritative, None);
        let ack = |stage: &[u8]| {
            let mut options = vec![53, 1, 3, 54, 4, 10, 99, 0, 1, 50, 4];
            options.extend_from_slice(&RESERVED.octets());
            options.extend_from_slice(stage);
            options.push(255);
            let (ack, _) = reply(&responder, Port::Dhcp, &packet(KNOWN, &options)).unwrap();
            assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
            let boot = responder.timeline.get(MacAddr(KNOWN)).boot;
            let stamped = [boot.dhcp_firmware, boot.dhcp_ipxe, boot.dhcp_os].map(|s| s.is_some());
            (ack, stamped)
        };
        let firmware = &BIOS_PXE_DISCOVER[3..BIOS_PXE_DISCOVER.len() - 1];
        let (from_firmware, stamped) = ack(firmware);
        assert_eq!(
            (file(&from_firmware), stamped),
            (Some("undionly.kpxe"), [true, false, false])
        );
        let (from_ipxe, stamped) = ack(&[firmware, &[77, 4, b'i', b'P', b'X', b'E']].concat());
        assert_eq!(
            (file(&from_ipxe), stamped),
            (
                Some("http://10.99.0.1:8080/ipxe/52:54:00:00:00:01"),
                [true, true, false]
            )
        );
        let (from_os, stamped) = ack(&[]);
        assert_eq!(
            (file(&from_os), option(&from_os, OptionCode::BootfileName)),
            (None, None),
            "booted, it loads nothing more"
        );
        assert_eq!(stamped, [true, true, true]);
        assert_eq!(from_os.siaddr(), Ipv4Addr::UNSPECIFIED);
    }

    #[test]
    fn pool_serves_hosts_without_reservation_and_strangers_without_boot() {
        let dir = tempfile::tempdir().unwrap();
        let responder = responder(Mode::Authoritative, Some(dir.path()));
        let (floating, _) =
            reply(&responder, Port::Dhcp, &packet(FLOATING, BIOS_PXE_DISCOVER)).unwrap();
        let (stranger, _) =
            reply(&responder, Port::Dhcp, &packet(STRANGER, BIOS_PXE_DISCOVER)).unwrap();
        assert_ne!(floating.yiaddr(), stranger.yiaddr());
        assert_eq!(file(&floating), Some("undionly.kpxe"));
        assert_eq!(
            (stranger.fname(), option(&stranger, OptionCode::Hostname)),
            (None, None)
        );
        assert!(
            reply(
                &responder,
                Port::Dhcp,
                &packet([2, 0, 0, 0, 0, 3], BIOS_PXE_DISCOVER)
            )
            .is_none(),
            "pool full"
        );
        assert_eq!(
            responder
                .metrics
                .get(DHCP_DROPPED, &[("reason", "no_address")]),
            1
        );
    }

    #[test]
    fn strangers_get_nothing_without_a_pool_and_malformed_packets_are_counted() {
        let responder = responder(Mode::Authoritative, None);
        assert!(reply(&responder, Port::Dhcp, &packet(STRANGER, BIOS_PXE_DISCOVER)).is_none());
        assert!(reply(&responder, Port::Dhcp, &[0u8; 10]).is_none());
        assert_eq!(
            responder
                .metrics
                .get(DHCP_DROPPED, &[("reason", "no_address")]),
            1
        );
        assert_eq!(
            responder
                .metrics
                .get(DHCP_DROPPED, &[("reason", "too_short")]),
            1
        );
    }

    #[test]
    fn a_reloaded_policy_answers_the_next_exchange() {
        let responder = responder(Mode::Authoritative, None);
        assert!(reply(&responder, Port::Dhcp, &packet(STRANGER, BIOS_PXE_DISCOVER)).is_none());
        let mut network = responder.policy.current().network().clone();
        network.domain = Some("reloaded.lan".into());
        let newcomer = Host {
            mac: MacAddr(STRANGER),
            hostname: "newcomer".into(),
            ip: Some(Ipv4Addr::new(10, 99, 0, 33)),
        };
        let reloaded = Arc::new(StaticPolicy::new(vec![newcomer], network));
        crate::server::apply_policy(
            reloaded,
            &responder.policy,
            responder.pool.as_ref(),
            &responder.timeline,
        );
        let (offer, _) =
            reply(&responder, Port::Dhcp, &packet(STRANGER, BIOS_PXE_DISCOVER)).unwrap();
        assert_eq!(offer.yiaddr(), Ipv4Addr::new(10, 99, 0, 33));
        assert_eq!(
            option(&offer, OptionCode::DomainName),
            Some(&DhcpOption::DomainName("reloaded.lan".into()))
        );
        assert_eq!(
            responder.timeline.mac_of(Ipv4Addr::new(10, 99, 0, 33)),
            Some(MacAddr(STRANGER))
        );
        assert!(
            reply(&responder, Port::Dhcp, &packet(KNOWN, BIOS_PXE_DISCOVER)).is_none(),
            "mixer1 left the policy"
        );
    }

    #[test]
    fn proxy_offers_boot_options_only_to_known_pxe_clients() {
        let responder = responder(Mode::Proxy, None);
        let (offer, _) = reply(&responder, Port::Dhcp, &packet(KNOWN, BIOS_PXE_DISCOVER)).unwrap();
        assert_eq!(offer.yiaddr(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(file(&offer), Some("undionly.kpxe"));
        assert_eq!(
            option(&offer, OptionCode::ClassIdentifier),
            Some(&DhcpOption::ClassIdentifier(b"PXEClient".to_vec()))
        );
        assert_eq!(
            option(&offer, OptionCode::VendorExtensions),
            Some(&DhcpOption::VendorExtensions(vec![6, 1, 8, 255]))
        );
        assert_eq!(
            option(&offer, OptionCode::ClientMachineIdentifier),
            Some(&DhcpOption::ClientMachineIdentifier(vec![0, 7]))
        );
        assert_eq!(
            (
                option(&offer, OptionCode::AddressLeaseTime),
                option(&offer, OptionCode::Hostname)
            ),
            (None, None)
        );
        assert!(reply(&responder, Port::Dhcp, &packet(STRANGER, BIOS_PXE_DISCOVER)).is_none());
        assert!(
            reply(&responder, Port::Dhcp, &packet(KNOWN, &[53, 1, 1, 255])).is_none(),
            "not a PXE client"
        );
    }

    #[test]
    fn proxy_replies_to_ipxe_name_the_next_server_or_ipxe_ignores_them() {
        let responder = responder(Mode::Proxy, None);
        let discover = packet(
            KNOWN,
            &[
                &BIOS_PXE_DISCOVER[..BIOS_PXE_DISCOVER.len() - 1],
                &[175, 3, 0xb1, 1, 1, 255],
            ]
            .concat(),
        );
        let (offer, _) = reply(&responder, Port::Dhcp, &discover).unwrap();
        assert_eq!(
            file(&offer),
            Some("http://10.99.0.1:8080/ipxe/52:54:00:00:00:01")
        );
        assert_eq!(offer.siaddr(), SERVER);
    }

    #[test]
    fn proxy_answers_port_4011_back_to_the_sender_and_learns_its_address() {
        let responder = responder(Mode::Proxy, None);
        let mut request = packet(
            FLOATING,
            &[
                53, 1, 3, 60, 9, b'P', b'X', b'E', b'C', b'l', b'i', b'e', b'n', b't', 255,
            ],
        );
        request[12..16].copy_from_slice(&[10, 99, 0, 77]);
        let from = SocketAddrV4::new(Ipv4Addr::new(10, 99, 0, 77), 68);
        let reply = responder.handle(Port::ProxyPxe, from, &request).unwrap();
        assert_eq!(reply.to, Destination::Udp(from));
        let ack = Message::decode(&mut Decoder::new(&reply.bytes)).unwrap();
        assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
        assert_eq!(
            responder.timeline.ip_of(MacAddr(FLOATING)),
            Some(Ipv4Addr::new(10, 99, 0, 77))
        );
    }
}
