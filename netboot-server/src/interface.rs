//! The interface netbootd serves on, as this machine has it: whether it exists, is up, and holds
//! the server's address, which `netbootd check` requires before `serve` binds to it.

use std::ffi::CStr;
use std::net::Ipv4Addr;

use crate::dhcp::Mode;

/// An interface as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// Administratively up (`ip link set … up`); a bridge without ports is up but has no carrier,
    /// which is fine before its guests start.
    pub up: bool,
    /// Its IPv4 addresses with their prefix lengths.
    pub addresses: Vec<(Ipv4Addr, u8)>,
}

/// This machine's interface `name` (in the caller's network namespace); `None` if there is none.
pub fn lookup(name: &str) -> std::io::Result<Option<Interface>> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a list that freeifaddrs releases below.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut found: Option<Interface> = None;
    let mut entry = list;
    while !entry.is_null() {
        // SAFETY: `entry` is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*entry };
        entry = ifa.ifa_next;
        // SAFETY: ifa_name is a NUL-terminated string of the node.
        if unsafe { CStr::from_ptr(ifa.ifa_name) }.to_bytes() != name.as_bytes() {
            continue;
        }
        let interface = found.get_or_insert(Interface {
            up: false,
            addresses: Vec::new(),
        });
        interface.up |= ifa.ifa_flags & libc::IFF_UP as u32 != 0;
        if let (Some(address), Some(netmask)) = (ipv4(ifa.ifa_addr), ipv4(ifa.ifa_netmask)) {
            let prefix = u32::from(netmask).count_ones() as u8;
            interface.addresses.push((address, prefix));
        }
    }
    // SAFETY: `list` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(list) };
    Ok(found)
}

/// The IPv4 address in a socket address of getifaddrs's, if it is one.
fn ipv4(address: *const libc::sockaddr) -> Option<Ipv4Addr> {
    if address.is_null() {
        return None;
    }
    // SAFETY: a non-null sockaddr of getifaddrs's; its family says which struct it is.
    if i32::from(unsafe { (*address).sa_family }) != libc::AF_INET {
        return None;
    }
    // SAFETY: an AF_INET sockaddr is a sockaddr_in.
    let inet = unsafe { &*address.cast::<libc::sockaddr_in>() };
    Some(Ipv4Addr::from(u32::from_be(inet.sin_addr.s_addr)))
}

/// What keeps netbootd from serving on `name` as `found`: the interface must exist, be up and hold
/// `server_ip` with a prefix no narrower than the LAN's (`prefix`), in either mode, since netbootd
/// binds TFTP, HTTP and HTTPS to that address and every boot URL names it.
pub fn problems(
    name: &str,
    found: Option<&Interface>,
    server_ip: Ipv4Addr,
    prefix: u8,
    mode: Mode,
) -> Vec<String> {
    let Some(interface) = found else {
        return vec![format!(
            "interface {name} does not exist here (`ip link` lists this machine's): netbootd serves on the interface the master file names"
        )];
    };
    let mut problems = Vec::new();
    if !interface.up {
        problems.push(format!("interface {name} is down (ip link set {name} up)"));
    }
    let how = match mode {
        Mode::Authoritative => format!("ip addr add {server_ip}/{prefix} dev {name}"),
        Mode::Proxy => format!(
            "the venue's DHCP server must give this box {server_ip}, or set it statically: ip addr add {server_ip}/{prefix} dev {name}"
        ),
    };
    match interface.addresses.iter().find(|(ip, _)| *ip == server_ip) {
        None => {
            let held: Vec<String> = (interface.addresses.iter())
                .map(|(ip, len)| format!("{ip}/{len}"))
                .collect();
            let held = match held.is_empty() {
                true => "no IPv4 address".to_owned(),
                false => held.join(", "),
            };
            problems.push(format!(
                "interface {name} does not hold the server's address {server_ip} (it has {held}): netbootd binds TFTP and HTTP to it and every boot URL names it ({how})"
            ));
        }
        Some((_, len)) if *len > prefix => problems.push(format!(
            "interface {name} holds {server_ip}/{len}, narrower than the master file's /{prefix}: hosts outside that /{len} are off its link (give the address /{prefix})"
        )),
        Some(_) => {}
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);

    fn up_with(addresses: &[(Ipv4Addr, u8)]) -> Interface {
        Interface {
            up: true,
            addresses: addresses.to_vec(),
        }
    }

    #[test]
    fn loopback_is_up_and_holds_127_0_0_1() {
        let lo = lookup("lo").unwrap().expect("every namespace has lo");
        assert!(lo.up);
        assert!(lo.addresses.contains(&(Ipv4Addr::LOCALHOST, 8)), "{lo:?}");
        assert_eq!(lookup("lectern-none0").unwrap(), None);
    }

    #[test]
    fn the_server_address_held_at_the_lans_prefix_or_wider_is_enough() {
        for held in [24, 16] {
            let found = up_with(&[(Ipv4Addr::new(10, 99, 0, 7), 24), (SERVER, held)]);
            let said = problems("br0", Some(&found), SERVER, 24, Mode::Authoritative);
            assert_eq!(said, Vec::<String>::new());
        }
    }

    #[test]
    fn names_what_is_wrong_and_how_to_mend_it() {
        assert_eq!(
            problems("br9", None, SERVER, 24, Mode::Authoritative),
            [
                "interface br9 does not exist here (`ip link` lists this machine's): netbootd serves on the interface the master file names"
            ]
        );
        let down = Interface {
            up: false,
            addresses: vec![(Ipv4Addr::new(10, 99, 0, 2), 24)],
        };
        assert_eq!(
            problems("br0", Some(&down), SERVER, 24, Mode::Authoritative),
            [
                "interface br0 is down (ip link set br0 up)",
                "interface br0 does not hold the server's address 10.99.0.1 (it has 10.99.0.2/24): netbootd binds TFTP and HTTP to it and every boot URL names it (ip addr add 10.99.0.1/24 dev br0)"
            ]
        );
        let bare = problems("br0", Some(&up_with(&[])), SERVER, 24, Mode::Proxy);
        assert_eq!(
            bare,
            [
                "interface br0 does not hold the server's address 10.99.0.1 (it has no IPv4 address): netbootd binds TFTP and HTTP to it and every boot URL names it (the venue's DHCP server must give this box 10.99.0.1, or set it statically: ip addr add 10.99.0.1/24 dev br0)"
            ]
        );
        let narrow = problems(
            "br0",
            Some(&up_with(&[(SERVER, 25)])),
            SERVER,
            24,
            Mode::Authoritative,
        );
        assert_eq!(
            narrow,
            [
                "interface br0 holds 10.99.0.1/25, narrower than the master file's /24: hosts outside that /25 are off its link (give the address /24)"
            ]
        );
    }
}
