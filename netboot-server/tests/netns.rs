//! netbootd against stock clients we did not write (busybox udhcpc, tftp-hpa, curl) and a
//! stock venue DHCP (dnsmasq), each test in network namespaces it creates and removes.
//! Needs root; set LECTERN_REQUIRE_NETNS=1 to fail rather than skip when it cannot run.

mod lab;
// Shared with the VM lab, which also uses its qemu half.
#[allow(dead_code)]
#[path = "lab/soft_tpm.rs"]
mod soft_tpm;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use dhcproto::v4::{
    Decodable, Decoder, DhcpOption, Encodable, Message, MessageType, Opcode, OptionCode,
};
use lab::{CLIENT_LINK, HTTP, Lab, SERVER_IP, must};
use soft_tpm::SoftTpm;

const MIXER: &str = "52:54:00:00:00:01";
const ENCODER: &str = "52:54:00:00:00:02";
const STRANGER: &str = "52:54:00:00:00:03";
const PROXY_IP: &str = "10.99.0.2";
const BIOS_PXE_CLASS: &str = "PXEClient:Arch:00000:UNDI:002001";

/// Runs busybox udhcpc once on the client link and returns what it handed its script.
fn udhcpc(lab: &Lab, mac: &str, extra: &[&str]) -> HashMap<String, String> {
    lab.set_client_mac(mac);
    let script = lab.dir.path().join("udhcpc.sh");
    let out = lab.dir.path().join("udhcpc.env");
    let _ = std::fs::remove_file(&out);
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n[ \"$1\" = bound ] && env > {}\nexit 0\n",
            out.display()
        ),
    )
    .unwrap();
    must("chmod", &["+x", script.to_str().unwrap()]);
    let mut args = vec![
        "udhcpc",
        "-i",
        CLIENT_LINK,
        "-f",
        "-q",
        "-n",
        "-t",
        "5",
        "-T",
        "1",
        "-s",
        script.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let output = lab.client("busybox", &args);
    assert!(
        output.status.success(),
        "udhcpc got no lease: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        lab.logs()
    );
    let env = std::fs::read_to_string(&out).expect("udhcpc ran its script");
    env.lines()
        .filter_map(|line| line.split_once('='))
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect()
}

/// Compares two files byte for byte, reporting sizes rather than bytes on a mismatch.
fn assert_same_bytes(
    got: impl AsRef<std::path::Path>,
    want: impl AsRef<std::path::Path>,
    what: &str,
) {
    let (got, want) = (std::fs::read(got).unwrap(), std::fs::read(want).unwrap());
    assert!(
        got == want,
        "{what}: got {} bytes, want {} bytes, contents differ",
        got.len(),
        want.len()
    );
}

fn var<'a>(env: &'a HashMap<String, String>, key: &str) -> Option<&'a str> {
    env.get(key).map(String::as_str)
}

/// The HTTP status curl got for `args`.
fn http_status(lab: &Lab, args: &[&str]) -> String {
    http(
        lab,
        &[&["-o", "/dev/null", "-w", "%{http_code}"], args].concat(),
    )
}

fn http(lab: &Lab, args: &[&str]) -> String {
    let output = lab.client("curl", &[&["-sS", "-m", "10"], args].concat());
    assert!(
        output.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn authoritative_dhcp_gives_udhcpc_its_reservation_name_and_boot_file() {
    let Some(mut lab) = Lab::new(&["busybox", "curl"]) else {
        return;
    };
    lab.start_netbootd(
        SERVER_IP,
        &[
            "--host",
            &format!("{MIXER},10.99.0.10,mixer1"),
            "--host",
            &format!("{ENCODER},encoder1"),
            "--router",
            "10.99.0.1",
            "--dns",
            "10.99.0.53",
            "--domain",
            "video.lan",
            "--pool",
            "10.99.0.200-10.99.0.210",
        ],
    );

    let bios = udhcpc(&lab, MIXER, &["-V", BIOS_PXE_CLASS, "-x", "0x5d:0000"]);
    assert_eq!(var(&bios, "ip"), Some("10.99.0.10"));
    assert_eq!(var(&bios, "hostname"), Some("mixer1"));
    assert_eq!(var(&bios, "domain"), Some("video.lan"));
    assert_eq!(var(&bios, "router"), Some("10.99.0.1"));
    assert_eq!(var(&bios, "dns"), Some("10.99.0.53"));
    assert_eq!(var(&bios, "subnet"), Some("255.255.255.0"));
    assert_eq!(var(&bios, "siaddr"), Some("10.99.0.1"));
    assert_eq!(var(&bios, "boot_file"), Some("undionly.kpxe"));

    let efi = udhcpc(
        &lab,
        MIXER,
        &["-V", "PXEClient:Arch:00007:UNDI:003016", "-x", "0x5d:0007"],
    );
    assert_eq!(var(&efi, "boot_file"), Some("snponly.efi"));

    // iPXE announces itself with option 175; it gets its script and no proxy wait.
    let ipxe = udhcpc(
        &lab,
        MIXER,
        &[
            "-V",
            BIOS_PXE_CLASS,
            "-x",
            "0x5d:0000",
            "-x",
            "0xaf:130101",
            "-O",
            "175",
        ],
    );
    assert_eq!(
        var(&ipxe, "boot_file"),
        Some("http://10.99.0.1:8080/ipxe/52:54:00:00:00:01")
    );
    assert_eq!(var(&ipxe, "opt175"), Some("b00101"));

    // The booted system says neither: its address, and no boot file.
    let booted = udhcpc(&lab, MIXER, &[]);
    assert_eq!(
        (var(&booted, "ip"), var(&booted, "boot_file")),
        (Some("10.99.0.10"), None)
    );
    let mixer = || -> serde_json::Value {
        let hosts: serde_json::Value = serde_json::from_str(&lab.operator("/api/hosts")).unwrap();
        assert_eq!(hosts[0]["hostname"], "mixer1", "{hosts:#}");
        hosts[0].clone()
    };
    let booting = mixer();
    for stage in ["dhcp_firmware", "dhcp_ipxe", "dhcp_os"] {
        assert!(booting[stage].is_string(), "{stage}: {booting:#}");
    }

    let floating = udhcpc(&lab, ENCODER, &["-V", BIOS_PXE_CLASS]);
    assert_eq!(var(&floating, "ip"), Some("10.99.0.200"));
    assert_eq!(var(&floating, "hostname"), Some("encoder1"));
    assert_eq!(var(&floating, "boot_file"), Some("undionly.kpxe"));

    let stranger = udhcpc(&lab, STRANGER, &["-V", BIOS_PXE_CLASS]);
    assert_eq!(var(&stranger, "ip"), Some("10.99.0.201"));
    assert_eq!(
        (var(&stranger, "hostname"), var(&stranger, "boot_file")),
        (None, None)
    );

    let leases = lab.leases_on_disk();
    assert_eq!(
        leases.get(ENCODER),
        Some(&"10.99.0.200".parse().unwrap()),
        "{leases:?}"
    );
    assert!(
        !leases.contains_key(MIXER),
        "reservations stay out of the lease file: {leases:?}"
    );

    // SIGHUP reloads the policy and keeps serving.
    lab.signal("netbootd", "HUP");
    let again = udhcpc(&lab, MIXER, &["-V", BIOS_PXE_CLASS]);
    assert_eq!(var(&again, "ip"), Some("10.99.0.10"));
    assert!(
        lab.log("netbootd").contains("reloaded the boot policy"),
        "{}",
        lab.logs()
    );

    lab.set_client_address("10.99.0.10/24");
    let rebooting = mixer();
    assert!(
        rebooting["dhcp_firmware"].is_string()
            && rebooting["dhcp_ipxe"].is_null()
            && rebooting["dhcp_os"].is_null(),
        "the firmware asking again is a new boot: {rebooting:#}"
    );
}

/// A PXE client's DISCOVER (or, to 4011, REQUEST) from `mac`; every reply that arrives
/// within two seconds.
fn pxe_exchange(
    lab: &Lab,
    mac: [u8; 6],
    kind: MessageType,
    to: SocketAddr,
    ciaddr: Ipv4Addr,
) -> Vec<Message> {
    let replies = pxe_exchange_from(lab, mac, kind, to, ciaddr);
    replies.into_iter().map(|(reply, _)| reply).collect()
}

/// Like [`pxe_exchange`], each reply with the address it came from.
fn pxe_exchange_from(
    lab: &Lab,
    mac: [u8; 6],
    kind: MessageType,
    to: SocketAddr,
    ciaddr: Ipv4Addr,
) -> Vec<(Message, SocketAddr)> {
    // Broadcast replies: without the flag dnsmasq unicasts to the offered address.
    let mut request = lab::client_message(mac, kind, ciaddr);
    let opts = request.opts_mut();
    opts.insert(DhcpOption::ClassIdentifier(
        BIOS_PXE_CLASS.as_bytes().to_vec(),
    ));
    opts.insert(DhcpOption::ClientSystemArchitecture(0.into()));
    opts.insert(DhcpOption::ClientMachineIdentifier(vec![0; 17]));
    let bytes = request.to_vec().unwrap();
    let xid = request.xid();
    let socket = lab.dhcp_client_socket();
    socket.send_to(&bytes, to).unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut replies = Vec::new();
    let mut buffer = [0u8; 1500];
    while let Some(left) = deadline
        .checked_duration_since(Instant::now())
        .filter(|left| !left.is_zero())
    {
        socket.set_read_timeout(Some(left)).unwrap();
        let Ok((len, from)) = socket.recv_from(&mut buffer) else {
            break;
        };
        if let Ok(reply) = Message::decode(&mut Decoder::new(&buffer[..len])) {
            if reply.xid() == xid && reply.opcode() == Opcode::BootReply {
                replies.push((reply, from));
            }
        }
    }
    replies
}

fn file(message: &Message) -> Option<String> {
    Some(message.fname_str()?.ok()?.trim_end_matches('\0').to_owned())
}

/// dnsmasq as the venue's DHCP server (addresses .100–.150, no boot options) on the bridge's
/// first address, and a second address for netbootd beside it, as on a machine of its own.
fn start_venue_dhcp(lab: &mut Lab) {
    let dir = lab.dir.path().to_owned();
    let lease_file = format!("--dhcp-leasefile={}", dir.join("venue.leases").display());
    let pid_file = format!("--pid-file={}", dir.join("dnsmasq.pid").display());
    let args = [
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--port=0",
        "--no-resolv",
        "--no-hosts",
        "--no-ping",
        "--interface=br0",
        "--bind-interfaces",
        "--dhcp-authoritative",
        "--log-dhcp",
        "--log-facility=-",
        "--user=root",
        "--dhcp-range=10.99.0.100,10.99.0.150,255.255.255.0,1h",
        &lease_file,
        &pid_file,
    ];
    lab.spawn_in_server("dnsmasq", "dnsmasq", &args);
    lab.add_server_address(&format!("{PROXY_IP}/24"));
}

/// What `netbootd setup`'s DHCP probe hears from the client link, sent as `mac`.
fn probe_from_client(lab: &Lab, mac: &str) -> Vec<lectern_netboot::dhcp::probe::Offer> {
    lab.set_client_mac(mac);
    let mac = mac.parse().unwrap();
    lab.in_client_ns(|| {
        lectern_netboot::dhcp::probe::probe(lab::CLIENT_LINK, mac, Duration::from_secs(3))
    })
    .unwrap_or_else(|error| panic!("probing: {error}"))
}

#[test]
fn the_setups_probe_hears_a_dhcp_server_and_a_proxy_and_nothing_on_a_quiet_lan() {
    let Some(mut lab) = Lab::new(&["dnsmasq", "curl"]) else {
        return;
    };
    assert_eq!(probe_from_client(&lab, STRANGER), [], "nothing serves yet");
    start_venue_dhcp(&mut lab);
    lab.start_netbootd(
        PROXY_IP,
        &["--mode", "proxy", "--host", &format!("{MIXER},mixer1")],
    );
    // The venue's dnsmasq offers the stranger an address; netbootd, in proxy mode, knows only
    // the mixer, and says where it boots from.
    let heard = probe_from_client(&lab, STRANGER);
    assert_eq!(heard.len(), 1, "{heard:?}\n{}", lab.logs());
    assert_eq!(heard[0].server, Ipv4Addr::new(10, 99, 0, 1));
    assert!(
        heard[0]
            .offered
            .is_some_and(|ip| (100..=150).contains(&ip.octets()[3])),
        "{heard:?}"
    );
    let mut heard = probe_from_client(&lab, MIXER);
    heard.sort_by_key(|offer| offer.offered.is_some());
    assert_eq!(heard.len(), 2, "{heard:?}\n{}", lab.logs());
    assert_eq!(
        (heard[0].server, heard[0].offered, heard[0].pxe),
        (Ipv4Addr::new(10, 99, 0, 2), None, true),
        "netbootd's proxy offer: {heard:?}"
    );
    assert_eq!(heard[1].server, Ipv4Addr::new(10, 99, 0, 1));
}

#[test]
fn proxy_mode_adds_boot_options_beside_a_venue_dnsmasq_and_ignores_unlisted_macs() {
    let Some(mut lab) = Lab::new(&["busybox", "dnsmasq", "curl"]) else {
        return;
    };
    start_venue_dhcp(&mut lab);
    lab.start_netbootd(
        PROXY_IP,
        &["--mode", "proxy", "--host", &format!("{MIXER},mixer1")],
    );
    let broadcast = SocketAddr::from((Ipv4Addr::BROADCAST, 67));
    let mixer = [0x52, 0x54, 0, 0, 0, 1];

    // Like a real client, retransmit: a loaded machine can leave the venue server slow to answer.
    let mut offers = Vec::new();
    let mut sources = Vec::new();
    for _ in 0..3 {
        let replies = pxe_exchange_from(
            &lab,
            mixer,
            MessageType::Discover,
            broadcast,
            Ipv4Addr::UNSPECIFIED,
        );
        (offers, sources) = replies.into_iter().unzip();
        if offers.iter().any(|offer| !offer.yiaddr().is_unspecified()) {
            break;
        }
    }
    // netbootd answers from the address it serves, not the interface's first (the venue's).
    let from_proxy = offers
        .iter()
        .zip(&sources)
        .find(|(offer, _)| offer.yiaddr().is_unspecified());
    assert_eq!(
        from_proxy.map(|(_, from)| *from),
        Some(SocketAddr::from(([10, 99, 0, 2], 67))),
        "{sources:?}"
    );
    let (proxy, venue): (Vec<&Message>, Vec<&Message>) = offers
        .iter()
        .partition(|offer| offer.yiaddr().is_unspecified());
    assert_eq!(
        venue.len(),
        1,
        "one address offer, from the venue: {offers:?}\n{}",
        lab.logs()
    );
    assert!(venue[0].yiaddr().octets()[3] >= 100 && file(venue[0]).is_none());
    assert_eq!(
        proxy.len(),
        1,
        "one ProxyDHCP offer, from netbootd: {offers:?}\n{}",
        lab.logs()
    );
    assert_eq!(file(proxy[0]).as_deref(), Some("undionly.kpxe"));
    assert_eq!(proxy[0].siaddr(), Ipv4Addr::new(10, 99, 0, 2));
    assert_eq!(
        proxy[0].opts().get(OptionCode::ClassIdentifier),
        Some(&DhcpOption::ClassIdentifier(b"PXEClient".to_vec()))
    );

    let stranger = pxe_exchange(
        &lab,
        [0x52, 0x54, 0, 0, 0, 3],
        MessageType::Discover,
        broadcast,
        Ipv4Addr::UNSPECIFIED,
    );
    assert_eq!(
        stranger.len(),
        1,
        "only the venue answers an unlisted MAC: {stranger:?}"
    );
    assert!(!stranger[0].yiaddr().is_unspecified());

    // With an address, the PXE client asks netbootd on 4011 and gets its boot file back.
    lab.set_client_address("10.99.0.120/24");
    let proxy_port = SocketAddr::from((Ipv4Addr::new(10, 99, 0, 2), 4011));
    let acks = pxe_exchange(
        &lab,
        mixer,
        MessageType::Request,
        proxy_port,
        Ipv4Addr::new(10, 99, 0, 120),
    );
    assert_eq!(acks.len(), 1, "{acks:?}\n{}", lab.logs());
    assert_eq!(acks[0].opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(file(&acks[0]).as_deref(), Some("undionly.kpxe"));

    // A stock client with an unlisted MAC gets its lease from the venue alone, no boot file.
    must(
        "ip",
        &["-n", &lab.client_ns, "addr", "flush", "dev", CLIENT_LINK],
    );
    let env = udhcpc(&lab, STRANGER, &["-V", BIOS_PXE_CLASS, "-x", "0x5d:0000"]);
    assert!(
        var(&env, "ip").is_some_and(|ip| ip.starts_with("10.99.0.1")),
        "{env:?}"
    );
    assert_eq!(var(&env, "boot_file"), None);
    lab.set_client_address("10.99.0.121/24");
    let metrics = lab.operator("/metrics");
    assert!(
        metrics.contains("netbootd_dhcp_dropped_total{reason=\"unknown_client\"}"),
        "{metrics}"
    );
}

#[test]
fn tftp_serves_ipxe_binaries_byte_exact_and_refuses_escapes() {
    let Some(mut lab) = Lab::new(&["tftp", "curl"]) else {
        return;
    };
    // The iPXE binaries, and a file past 65535 blocks of 512 bytes: block numbers wrap to 0.
    let root = lab.dir.path().join("tftp");
    std::fs::create_dir_all(&root).unwrap();
    for file in ["undionly.kpxe", "snponly.efi"] {
        // Copies: a symlink out of the root is refused, as it should be.
        std::fs::copy(format!("/usr/lib/ipxe/{file}"), root.join(file)).unwrap();
    }
    let big: Vec<u8> = (0..34_000_000u32)
        .map(|index| (index % 251) as u8)
        .collect();
    std::fs::write(root.join("big.bin"), &big).unwrap();
    lab.start_netbootd(SERVER_IP, &["--tftp-root", root.to_str().unwrap()]);
    lab.set_client_address("10.99.0.50/24");
    let dir = lab.dir.path().to_owned();
    let local = dir.join("big.bin");
    let output = lab.client(
        "tftp",
        &[
            "-m",
            "binary",
            SERVER_IP,
            "-c",
            "get",
            "big.bin",
            local.to_str().unwrap(),
        ],
    );
    assert!(output.status.success(), "{output:?}");
    assert!(
        std::fs::read(&local).unwrap() == big,
        "34 MB file differs after the block-number wrap"
    );
    for file in ["undionly.kpxe", "snponly.efi"] {
        let local = dir.join(format!("hpa-{file}"));
        let output = lab.client(
            "tftp",
            &[
                "-m",
                "binary",
                "10.99.0.1",
                "-c",
                "get",
                file,
                local.to_str().unwrap(),
            ],
        );
        assert!(output.status.success(), "{output:?}");
        assert_same_bytes(
            &local,
            format!("/usr/lib/ipxe/{file}"),
            &format!("tftp-hpa {file}"),
        );

        for blksize in ["512", "1468", "8192"] {
            let local = dir.join(format!("curl-{blksize}-{file}"));
            let url = format!("tftp://10.99.0.1/{file}");
            http(
                &lab,
                &[
                    "--tftp-blksize",
                    blksize,
                    &url,
                    "-o",
                    local.to_str().unwrap(),
                ],
            );
            assert_same_bytes(
                &local,
                format!("/usr/lib/ipxe/{file}"),
                &format!("curl {blksize} {file}"),
            );
        }
    }

    let escape = lab.client(
        "tftp",
        &[
            "-m",
            "binary",
            "10.99.0.1",
            "-c",
            "get",
            "../../etc/passwd",
            dir.join("p1").to_str().unwrap(),
        ],
    );
    assert!(
        String::from_utf8_lossy(&escape.stdout).contains("Error code 2"),
        "{escape:?}"
    );
    let absolute = lab.client(
        "tftp",
        &[
            "-m",
            "binary",
            "10.99.0.1",
            "-c",
            "get",
            "/etc/passwd",
            dir.join("p2").to_str().unwrap(),
        ],
    );
    assert!(
        String::from_utf8_lossy(&absolute.stdout).contains("Error code 1"),
        "{absolute:?}"
    );
    let curl_escape = lab.client(
        "curl",
        &[
            "-sS",
            "--path-as-is",
            "tftp://10.99.0.1/../../etc/passwd",
            "-o",
            dir.join("p3").to_str().unwrap(),
        ],
    );
    assert!(!curl_escape.status.success());
    for refused in ["p1", "p2", "p3"] {
        let contents = std::fs::read_to_string(dir.join(refused)).unwrap_or_default();
        assert!(!contents.contains("root:"), "{refused} leaked /etc/passwd");
    }
}

#[test]
fn http_serves_ranges_etags_host_layers_to_their_owner_and_the_boot_timeline() {
    let Some(mut lab) = Lab::new(&["curl"]) else {
        return;
    };
    let store = lab.dir.path().join("store");
    let layers = lab.dir.path().join("layers");
    std::fs::create_dir_all(&store).unwrap();
    std::fs::create_dir_all(&layers).unwrap();
    let kernel: Vec<u8> = (0..200_000u32)
        .map(|index| (index * 7 % 251) as u8)
        .collect();
    let kernel_hash = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    std::fs::write(store.join(kernel_hash), &kernel).unwrap();
    std::fs::write(store.join("c0ffee"), b"initrd").unwrap();
    std::fs::write(layers.join("mixer1.cpio"), b"secret layer").unwrap();
    lab.start_netbootd(
        SERVER_IP,
        &[
            "--host",
            &format!("{MIXER},10.99.0.10,mixer1"),
            "--artifact-dir",
            store.to_str().unwrap(),
            "--kernel",
            kernel_hash,
            "--initrd",
            "c0ffee",
            "--cmdline",
            "console=ttyS0",
            "--layer-dir",
            layers.to_str().unwrap(),
        ],
    );
    lab.set_client_address("10.99.0.10/24");

    let script = http(&lab, &[&format!("{HTTP}/ipxe/{MIXER}")]);
    assert!(script.starts_with("#!ipxe\n"), "{script}");
    assert!(script.contains(&format!("kernel {HTTP}/a/{kernel_hash} initrd=initrd0 initrd=initrd1 lectern.server={HTTP} console=ttyS0 hostname=mixer1")), "{script}");
    assert!(
        script.contains(&format!("initrd --name initrd0 {HTTP}/host/{MIXER}/layer")),
        "{script}"
    );

    let artifact = format!("{HTTP}/a/{kernel_hash}");
    let range = lab.client(
        "curl",
        &[
            "-sS",
            "-r",
            "1000-1999",
            "-o",
            "-",
            "-w",
            "%{http_code}",
            &artifact,
        ],
    );
    let (body, status) = range.stdout.split_at(range.stdout.len() - 3);
    assert_eq!((status, body), (&b"206"[..], &kernel[1000..2000]));
    let headers = http(&lab, &["-D", "-", "-o", "/dev/null", &artifact]).to_ascii_lowercase();
    assert!(
        headers.contains(&format!("etag: \"{kernel_hash}\"")),
        "{headers}"
    );
    assert!(
        headers.contains("cache-control: public, max-age=31536000, immutable"),
        "{headers}"
    );
    assert!(headers.contains("accept-ranges: bytes"), "{headers}");
    let revalidate = http(
        &lab,
        &[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            &format!("If-None-Match: \"{kernel_hash}\""),
            &artifact,
        ],
    );
    assert_eq!(revalidate, "304");
    let head = http(&lab, &["-I", &artifact]).to_ascii_lowercase();
    assert!(
        head.starts_with("http/1.1 200") && head.contains("content-length: 200000\r\n"),
        "{head}"
    );
    let tail = lab.client("curl", &["-sS", "-r", "-500", &artifact]);
    assert_eq!(tail.stdout, &kernel[kernel.len() - 500..]);
    let beyond = http_status(&lab, &["-r", "200000-", &artifact]);
    assert_eq!(beyond, "416");
    // One connection for a script and the kernel twice, as iPXE keeps it open.
    let reused = http(
        &lab,
        &[
            "-w",
            "%{num_connects}:%{size_download} ",
            "-o",
            "/dev/null",
            &format!("{HTTP}/ipxe/{MIXER}"),
            "-o",
            "/dev/null",
            &artifact,
            "-o",
            "/dev/null",
            &artifact,
        ],
    );
    let transfers: Vec<&str> = reused.split_whitespace().collect();
    assert_eq!(transfers.len(), 3, "{reused}");
    assert_eq!(&transfers[0][..2], "1:", "{reused}");
    assert_eq!(&transfers[1..], ["0:200000", "0:200000"], "{reused}");
    let unknown = http(
        &lab,
        &[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("{HTTP}/a/deadbeef"),
        ],
    );
    assert_eq!(unknown, "404");

    let layer = format!("{HTTP}/host/{MIXER}/layer");
    assert_eq!(http(&lab, &[&layer]), "secret layer");
    // A disk-booted machine asks by the name its firmware gives it.
    assert_eq!(
        http(&lab, &[&format!("{HTTP}/host/mixer1/layer")]),
        "secret layer"
    );
    assert!(
        http(&lab, &["-D", "-", "-o", "/dev/null", &layer])
            .to_ascii_lowercase()
            .contains("cache-control: no-store")
    );
    lab.set_client_address("10.99.0.11/24");
    assert_eq!(
        http_status(&lab, &[&layer]),
        "403",
        "another address must not get the layer"
    );

    let firmware = lab.dir.path().join("snponly.efi");
    http(
        &lab,
        &[
            &format!("{HTTP}/firmware/snponly.efi"),
            "-o",
            firmware.to_str().unwrap(),
        ],
    );
    assert_same_bytes(
        &firmware,
        "/usr/lib/ipxe/snponly.efi",
        "snponly.efi over HTTP",
    );
    let escape = http(
        &lab,
        &[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("{HTTP}/firmware/..%2F..%2Fetc%2Fpasswd"),
        ],
    );
    assert_eq!(escape, "403");

    // Reports carry a token that comes with the host's secrets: they go over TLS only.
    let json = "Content-Type: application/json";
    let plain_report = http_status(
        &lab,
        &["-H", json, "-d", "{}", &format!("{HTTP}/api/report")],
    );
    assert_eq!(plain_report, "404", "no report route over plain HTTP");
    let hosts = lab.operator("/api/hosts");
    for field in [
        "\"kernel\":\"20",
        "\"ipxe_script\":\"20",
        "\"host_layer\":\"20",
    ] {
        assert!(hosts.contains(field), "{field} missing from {hosts}");
    }
    let metrics = lab.operator("/metrics");
    assert!(
        metrics.contains(
            "netbootd_http_responses_total{route=\"/host/{host}/layer\",status=\"4xx\"} 1"
        ),
        "{metrics}"
    );
}

const UUID: &str = "4c4c4544-0042-3510-8052-b4c04f4e3732";
/// What the secrets layer holds: it must never show on the wire.
const SECRET_MARK: &str = "stream-key-7d1f0c29e8";

/// A store (for netbootd's TLS key) and mixer1's layers in `dir`: its public layer, and
/// `secrets` as its secrets layer.
fn mixer1_store_and_layers(
    dir: &std::path::Path,
    secrets: &[u8],
) -> (lectern_store::Store, std::path::PathBuf) {
    let store = lectern_store::Store::create(dir.join("store")).unwrap();
    let layers = dir.join("layers");
    std::fs::create_dir_all(&layers).unwrap();
    std::fs::write(layers.join("mixer1.cpio"), b"public layer of mixer1").unwrap();
    std::fs::write(layers.join("mixer1.secrets.cpio"), secrets).unwrap();
    (store, layers)
}

/// netbootd serving mixer1 at 10.99.0.10, bound to `identity` (`--host` fields), its layers from
/// `layers`, its TLS key from `store`; the client namespace is mixer1, at its address.
fn serve_mixer1_at_its_address(
    lab: &mut Lab,
    identity: &str,
    layers: &std::path::Path,
    store: &lectern_store::Store,
    more: &[&str],
) {
    let mixer1 = format!("{MIXER},10.99.0.10,mixer1,{identity}");
    let layers = layers.to_str().unwrap();
    let key = store.server_key_path();
    let args = [
        &["--host", &mixer1, "--layer-dir", layers][..],
        &["--tls-key", key.to_str().unwrap()],
        more,
    ]
    .concat();
    lab.start_netbootd(SERVER_IP, &args);
    lab.set_client_mac(MIXER);
    lab.set_client_address("10.99.0.10/24");
}

/// curl on the client, as the booted host's scripts run it: pinned to `pin`, a JSON body.
fn https(lab: &Lab, pin: &str, args: &[&str]) -> std::process::Output {
    let pinned = ["-sS", "-m", "10", "--insecure", "--pinnedpubkey", pin];
    lab.client("curl", &[&pinned[..], args].concat())
}

/// Asks for mixer1's secrets as boot `boot_id` presenting `smbios` (JSON fields); the status, the
/// body and the report token.
fn ask_secrets(lab: &Lab, pin: &str, boot_id: &str, smbios: &str) -> (String, Vec<u8>, String) {
    let body_file = lab.dir.path().join("secrets.out");
    let _ = std::fs::remove_file(&body_file);
    let body = format!(r#"{{"boot_id":"{boot_id}"{smbios}}}"#);
    let output = https(
        lab,
        pin,
        &[
            "-D",
            "-",
            "-o",
            body_file.to_str().unwrap(),
            "-H",
            "Content-Type: application/json",
            "-d",
            &body,
            &format!("https://{SERVER_IP}:8443/host/mixer1/secrets"),
        ],
    );
    assert!(
        output.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let headers = String::from_utf8_lossy(&output.stdout).to_ascii_lowercase();
    let status = headers
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    let token = (headers.lines())
        .find_map(|line| line.strip_prefix("lectern-report-token: "))
        .map(|token| token.trim().to_owned())
        .unwrap_or_default();
    (status, std::fs::read(&body_file).unwrap_or_default(), token)
}

/// mixer1's boot `b1` reporting its role up with `token`; the HTTP status.
fn report_up(lab: &Lab, pin: &str, token: &str) -> String {
    report(lab, pin, token, "up")
}

/// mixer1's boot `b1` reporting `state` (`up`, `degraded`, `heartbeat`) with `token`; the HTTP
/// status.
fn report(lab: &Lab, pin: &str, token: &str, state: &str) -> String {
    let auth = format!("Authorization: Bearer {token}");
    let body = format!(
        r#"{{"host":"mixer1","role":"mixer","image":"sha256:abc","state":"{state}","boot_id":"b1"}}"#
    );
    let body = body.as_str();
    let output = https(
        lab,
        pin,
        &[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            "Content-Type: application/json",
            "-H",
            &auth,
            "-d",
            body,
            &format!("https://{SERVER_IP}:8443/api/report"),
        ],
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn secrets_go_over_tls_once_per_boot_to_the_host_that_proves_it() {
    let Some(mut lab) = Lab::new(&["curl", "tcpdump"]) else {
        return;
    };
    let secrets = format!("070701 lectern-host/etc/lectern/encoder.args {SECRET_MARK}");
    let (store, layers) = mixer1_store_and_layers(lab.dir.path(), secrets.as_bytes());
    let key = store.server_key().unwrap();
    // Everything on the wire, from the first request on.
    let capture = lab.dir.path().join("boot.pcap");
    lab.capture_bridge(&capture);
    serve_mixer1_at_its_address(&mut lab, &format!("uuid={UUID}"), &layers, &store, &[]);
    let pin = key.pin.as_str();
    let identity = format!(r#","uuid":"{}""#, UUID.to_ascii_uppercase());

    // Nothing before the host's boot has fetched its layer.
    assert_eq!(ask_secrets(&lab, pin, "b0", &identity).0, "403");
    assert_eq!(
        http(&lab, &[&format!("{HTTP}/host/{MIXER}/layer")]),
        "public layer of mixer1"
    );
    // A spoofer with the host's MAC and address, but not its SMBIOS UUID: nothing.
    let spoofed = r#","uuid":"00000000-0000-0000-0000-000000000000""#;
    let (status, body, token) = ask_secrets(&lab, pin, "f00d", spoofed);
    assert_eq!(
        (status.as_str(), body.len(), token.as_str()),
        ("403", 0, "")
    );
    assert_eq!(
        ask_secrets(&lab, pin, "f00d", "").0,
        "403",
        "no identity at all"
    );
    // A client that does not pin netbootd's key never even asks.
    let other_pin = "sha256//AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    let unpinned = https(
        &lab,
        other_pin,
        &[&format!("https://{SERVER_IP}:8443/healthz")],
    );
    assert_eq!(
        unpinned.status.code(),
        Some(90),
        "curl's pinned key mismatch"
    );

    // The host itself (its UUID as the firmware spells it, in any case) gets them, with a token.
    let (status, body, token) = ask_secrets(&lab, pin, "b1", &identity);
    assert_eq!(status, "200");
    assert_eq!(body, secrets.as_bytes());
    assert_eq!(token.len(), 64, "{token}");
    // Once: a second fetch in the same boot, with the host's UUID but another boot id, is refused.
    assert_eq!(ask_secrets(&lab, pin, "f00d", &identity).0, "403");

    assert_eq!(
        report_up(&lab, pin, "0123"),
        "403",
        "a report without the boot's token"
    );
    assert_eq!(report_up(&lab, pin, &token), "200");

    let hosts = lab.operator("/api/hosts");
    let hosts: serde_json::Value = serde_json::from_str(&hosts).unwrap();
    let mixer = &hosts[0];
    assert_eq!(mixer["state"], "up", "{mixer:#}");
    assert_eq!(mixer["stale"], false, "it just reported: {mixer:#}");
    assert!(mixer["secrets"].is_string(), "{mixer:#}");
    let alerts: Vec<&str> = (mixer["alerts"].as_array().unwrap().iter())
        .filter_map(|alert| alert.as_str())
        .collect();
    assert_eq!(alerts.len(), 4, "{alerts:#?}");
    assert!(
        alerts[1].contains("SMBIOS uuid did not match"),
        "{alerts:#?}"
    );
    assert!(alerts[3].contains("a second fetch"), "{alerts:#?}");
    let metrics = lab.operator("/metrics");
    for counted in [
        "netbootd_secrets_total{outcome=\"released\"} 1",
        "netbootd_secrets_total{outcome=\"wrong_identity\"} 2",
        "netbootd_secrets_total{outcome=\"again\"} 2",
        "netbootd_reports_refused_total{reason=\"wrong_token\"} 1",
    ] {
        assert!(metrics.contains(counted), "{counted}: {metrics}");
    }

    // The wire saw the public layer, and neither the secrets nor the token.
    std::thread::sleep(Duration::from_secs(1));
    let wire = std::fs::read(&capture).unwrap();
    let seen = |needle: &[u8]| wire.windows(needle.len()).any(|window| window == needle);
    assert!(
        seen(b"public layer of mixer1"),
        "the capture caught the boot ({} bytes)",
        wire.len()
    );
    assert!(
        !seen(SECRET_MARK.as_bytes()),
        "a secret crossed the LAN in clear"
    );
    assert!(
        !seen(token.as_bytes()),
        "the report token crossed the LAN in clear"
    );
    assert!(
        !seen(UUID.to_ascii_uppercase().as_bytes()),
        "the identity crossed the LAN in clear"
    );
    let log = lab.log("netbootd");
    assert!(
        log.contains(&UUID.to_ascii_uppercase()),
        "the operator's log names what was presented"
    );
}

const OVMF: &str = "/usr/share/ovmf/OVMF.fd";
const QEMU_NEEDS: [&str; 3] = ["qemu-system-x86_64", "curl", OVMF];
const BIOS_GUEST: &str = "52:54:00:00:00:11";
const UEFI_GUEST: &str = "52:54:00:00:00:12";

/// A store with noise for kernel and initrd: iPXE fetches the kernel, fails to boot it, stops.
fn noise_image(lab: &Lab) -> Vec<String> {
    let store = lab.dir.path().join("store");
    std::fs::create_dir_all(&store).unwrap();
    std::fs::write(store.join("kernel1"), vec![0x5a; 300_000]).unwrap();
    std::fs::write(store.join("initrd1"), vec![0xa5; 100_000]).unwrap();
    let store = store.to_str().unwrap();
    [
        "--artifact-dir",
        store,
        "--kernel",
        "kernel1",
        "--initrd",
        "initrd1",
    ]
    .map(String::from)
    .to_vec()
}

/// Boots two real firmwares against the lab's netbootd: qemu's own iPXE ROM (BIOS) and
/// OVMF's PXE client (UEFI, `romfile=` drops the iPXE ROM). Returns `/api/hosts` once both
/// have fetched their kernel, after checking every step of the chain.
fn boot_firmware_to_kernel(lab: &mut Lab) -> serde_json::Value {
    for (name, machine, tap, mac, firmware) in [
        (
            "qemu-bios",
            "pc",
            "tapbios",
            BIOS_GUEST,
            ["-boot", "n", "", ""],
        ),
        (
            "qemu-uefi",
            "q35",
            "tapuefi",
            UEFI_GUEST,
            ["-bios", OVMF, ",romfile=", ""],
        ),
    ] {
        lab.add_tap(tap);
        let netdev = format!("tap,id=n0,ifname={tap},script=no,downscript=no");
        let nic = format!(
            "virtio-net-pci,netdev=n0,mac={mac},bootindex=1{}",
            firmware[2]
        );
        let args = [
            "-machine",
            machine,
            "-accel",
            "tcg",
            "-m",
            "256",
            "-nographic",
            "-monitor",
            "none",
            "-no-reboot",
            "-netdev",
            &netdev,
            "-device",
            &nic,
            firmware[0],
            firmware[1],
        ];
        lab.spawn_in_server(name, "qemu-system-x86_64", &args);
    }
    let deadline = Instant::now() + Duration::from_secs(400);
    let hosts = loop {
        let hosts: serde_json::Value =
            serde_json::from_str(&lab.operator("/api/hosts")).unwrap_or_default();
        if hosts[0]["kernel"].is_string() && hosts[1]["kernel"].is_string() {
            break hosts;
        }
        assert!(
            Instant::now() < deadline,
            "no kernel download: {hosts:#}\n{}",
            lab.logs()
        );
        std::thread::sleep(Duration::from_secs(2));
    };
    let (bios, uefi) = (&hosts[0], &hosts[1]);
    assert_eq!(
        (&bios["hostname"], &uefi["hostname"]),
        (&"bios1".into(), &"uefi1".into())
    );
    for step in ["dhcp_ipxe", "ipxe_script", "kernel"] {
        assert!(
            bios[step].is_string() && uefi[step].is_string(),
            "{step} missing: {hosts:#}"
        );
    }
    // OVMF's own PXE client chainloads iPXE; qemu's BIOS ROM is iPXE.
    assert!(uefi["dhcp_firmware"].is_string(), "{hosts:#}");
    assert_eq!(uefi["tftp_file"], "snponly.efi", "{hosts:#}");
    // netbootd's router advertisements end iPXE's 13–17 s wait for one after DHCP.
    let unix = |stamp: &serde_json::Value| -> i64 {
        must("date", &["-d", stamp.as_str().unwrap(), "+%s"])
            .trim()
            .parse()
            .unwrap()
    };
    for host in [bios, uefi] {
        let wait = unix(&host["ipxe_script"]) - unix(&host["dhcp_ipxe"]);
        assert!(
            wait < 10,
            "{wait} s from DHCP to the script request: {hosts:#}\n{}",
            lab.logs()
        );
    }
    let metrics = lab.operator("/metrics");
    // Accepted, not necessarily complete yet: a lost final ACK is only noticed later.
    assert!(
        metrics.contains("netbootd_tftp_requests_total{outcome=\"accepted\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("netbootd_router_advertisements_total "),
        "{metrics}"
    );
    hosts
}

#[test]
fn qemu_bios_and_uefi_firmware_chain_to_the_kernel_download() {
    let Some(mut lab) = Lab::new(&QEMU_NEEDS) else {
        return;
    };
    let mut args = vec![
        format!("--host={BIOS_GUEST},10.99.0.11,bios1"),
        format!("--host={UEFI_GUEST},10.99.0.12,uefi1"),
    ];
    args.extend(noise_image(&lab));
    lab.start_netbootd(
        SERVER_IP,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let hosts = boot_firmware_to_kernel(&mut lab);
    assert_eq!(
        (&hosts[0]["ip"], &hosts[1]["ip"]),
        (&"10.99.0.11".into(), &"10.99.0.12".into())
    );
}

/// The same firmware beside a venue DHCP: addresses from dnsmasq, boot from netbootd's
/// ProxyDHCP offers (iPXE drops proxy replies without a next-server; this caught it).
#[test]
fn qemu_firmware_boots_through_proxy_mode_beside_a_venue_dnsmasq() {
    let mut needs = QEMU_NEEDS.to_vec();
    needs.push("dnsmasq");
    let Some(mut lab) = Lab::new(&needs) else {
        return;
    };
    start_venue_dhcp(&mut lab);
    let mut args = vec![
        "--mode=proxy".into(),
        format!("--host={BIOS_GUEST},bios1"),
        format!("--host={UEFI_GUEST},uefi1"),
    ];
    args.extend(noise_image(&lab));
    lab.start_netbootd(
        PROXY_IP,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let hosts = boot_firmware_to_kernel(&mut lab);
    for host in [&hosts[0], &hosts[1]] {
        let ip = host["ip"].as_str().unwrap_or_default();
        assert!(
            ip.starts_with("10.99.0.1") && ip.len() == 11,
            "a venue address, not {ip}: {hosts:#}"
        );
    }
}

#[test]
fn runs_as_nobody_with_only_the_bind_and_raw_capabilities() {
    let Some(mut lab) = Lab::new(&["busybox", "tftp", "curl", "setpriv"]) else {
        return;
    };
    lab.start_netbootd_unprivileged(
        SERVER_IP,
        &["--host", &format!("{MIXER},10.99.0.10,mixer1")],
    );
    let pid = lab.pid("netbootd");
    let proc_status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(
        proc_status
            .lines()
            .any(|line| line.starts_with("Uid:\t65534\t")),
        "{proc_status}"
    );
    // CAP_NET_BIND_SERVICE (10) and CAP_NET_RAW (13), nothing else.
    assert!(
        proc_status.contains("CapEff:\t0000000000002400"),
        "{proc_status}"
    );

    let lease = udhcpc(&lab, MIXER, &["-V", BIOS_PXE_CLASS]);
    assert_eq!(var(&lease, "ip"), Some("10.99.0.10"));
    lab.set_client_address("10.99.0.10/24");
    let local = lab.dir.path().join("undionly.kpxe");
    let output = lab.client(
        "tftp",
        &[
            "-m",
            "binary",
            SERVER_IP,
            "-c",
            "get",
            "undionly.kpxe",
            local.to_str().unwrap(),
        ],
    );
    assert!(output.status.success(), "{output:?}");
    assert_same_bytes(
        &local,
        "/usr/lib/ipxe/undionly.kpxe",
        "undionly.kpxe from netbootd as nobody",
    );
    assert!(
        !lab.log("netbootd")
            .contains("no IPv6 router advertisements"),
        "{}",
        lab.logs()
    );
}

/// RFC 2131 §4.1: a client without an address that did not ask for a broadcast is answered at
/// its own hardware address, so that in a boot storm no client wakes for another's replies; one
/// that asks for a broadcast gets one. As user nobody with the documented capabilities.
#[test]
fn replies_go_to_the_clients_hardware_address_unless_it_asks_for_a_broadcast() {
    let Some(mut lab) = Lab::new(&["busybox", "tcpdump", "setpriv"]) else {
        return;
    };
    lab.spawn_in_server(
        "tcpdump",
        "tcpdump",
        &["-i", "vs0", "-l", "-e", "-n", "udp and src port 67"],
    );
    std::thread::sleep(Duration::from_secs(1));
    lab.start_netbootd_unprivileged(
        SERVER_IP,
        &["--host", &format!("{MIXER},10.99.0.10,mixer1")],
    );
    // Destination MACs of the replies seen so far, once `count` have been.
    let destinations = |count: usize| -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = lab.log("tcpdump");
            let seen: Vec<String> = log
                .lines()
                .filter(|line| line.contains(".67 > "))
                .filter_map(|line| line.split(" > ").nth(1)?.split(',').next())
                .map(str::to_owned)
                .collect();
            if seen.len() >= count || Instant::now() > deadline {
                return seen;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    };

    let lease = udhcpc(&lab, MIXER, &[]);
    assert_eq!(var(&lease, "ip"), Some("10.99.0.10"));
    assert_eq!(destinations(2), [MIXER, MIXER], "{}", lab.logs());

    let lease = udhcpc(&lab, MIXER, &["-B"]);
    assert_eq!(var(&lease, "ip"), Some("10.99.0.10"));
    assert_eq!(
        destinations(4)[2..],
        ["ff:ff:ff:ff:ff:ff", "ff:ff:ff:ff:ff:ff"],
        "{}",
        lab.logs()
    );
    assert!(
        !lab.log("netbootd").contains("broadcasting them instead"),
        "{}",
        lab.logs()
    );
}

/// A booted host as its image's scripts see it, in the test's directories: its root (where its
/// layer goes, with what its role image holds: netbootd's URL and pin, its role), its
/// /run/lectern, its firmware's SMBIOS (mixer1's UUID), and a systemctl that logs what it is
/// asked, answers `show` with nothing and fails one `restart` while a `fail-restart` file exists.
struct Machine {
    root: std::path::PathBuf,
    run: std::path::PathBuf,
    dmi: std::path::PathBuf,
    systemctl: std::path::PathBuf,
}

impl Machine {
    fn new(dir: &std::path::Path, pin: &str) -> Machine {
        let machine = Machine {
            root: dir.join("root"),
            run: dir.join("run"),
            dmi: dir.join("dmi"),
            systemctl: dir.join("systemctl"),
        };
        let etc = machine.root.join("etc/lectern");
        for made in [&etc, &machine.run, &machine.dmi] {
            std::fs::create_dir_all(made).unwrap();
        }
        let url = format!("https://{SERVER_IP}:8443/\n");
        std::fs::write(etc.join("netbootd-url"), url).unwrap();
        std::fs::write(etc.join("netbootd.pin"), pin).unwrap();
        std::fs::write(etc.join("role"), "mixer\n").unwrap();
        std::fs::write(machine.dmi.join("product_uuid"), UUID).unwrap();
        let log = dir.join("systemctl.log");
        let fail = dir.join("fail-restart");
        let fake = format!(
            "#!/bin/sh\necho \"$*\" >>'{}'\ncase $1 in\nrestart) if [ -e '{}' ]; then rm '{}'; exit 1; fi ;;\nesac\n",
            log.display(),
            fail.display(),
            fail.display()
        );
        std::fs::write(&machine.systemctl, fake).unwrap();
        must("chmod", &["+x", machine.systemctl.to_str().unwrap()]);
        machine
    }

    /// Runs the image's script `name` (`overlays/base/config/usr/lib/lectern/`) with `args` as
    /// mixer1 runs it, in the client namespace, its TPM reached through `tcti`. Whether it
    /// succeeded, and what it printed.
    fn run(&self, lab: &Lab, name: &str, args: &[&str], tcti: &str) -> (bool, String) {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../overlays/base/config/usr/lib/lectern")
            .join(name);
        let output = std::process::Command::new("ip")
            .args(["netns", "exec", &lab.client_ns, "unshare", "--uts"])
            .args(["sh", "-c", r#"hostname mixer1 && exec bash "$0" "$@""#])
            .arg(&script)
            .args(args)
            .env("LECTERN_ETC", self.root.join("etc/lectern"))
            .env("LECTERN_DMI", &self.dmi)
            .env("LECTERN_RUN", &self.run)
            .env("LECTERN_ROOT", &self.root)
            .env("LECTERN_SYSTEMCTL", &self.systemctl)
            .env("TPM2TOOLS_TCTI", tcti)
            .output()
            .unwrap();
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.success(), printed)
    }

    /// What systemctl was asked, one call a line, since the last time this was asked.
    fn systemctl_calls(&self) -> Vec<String> {
        let log = self.systemctl.with_extension("log");
        let calls = std::fs::read_to_string(&log).unwrap_or_default();
        let _ = std::fs::remove_file(&log);
        calls.lines().map(str::to_owned).collect()
    }

    fn file(&self, path: &str) -> String {
        std::fs::read_to_string(self.root.join(path)).unwrap_or_default()
    }
}

/// A newc cpio of `files` (path, content) under `lectern-host/`, each of `mode`, as imgbuild
/// makes a host layer, made by busybox in `scratch`.
fn host_cpio(scratch: &std::path::Path, files: &[(&str, &str)], mode: u32) -> Vec<u8> {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::remove_dir_all(scratch);
    for (path, content) in files {
        let file = scratch.join("lectern-host").join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, content).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let cpio = std::process::Command::new("sh")
        .args(["-c", "find lectern-host | sort | busybox cpio -o -H newc"])
        .current_dir(scratch)
        .output()
        .unwrap();
    assert!(cpio.status.success());
    cpio.stdout
}

#[test]
fn a_host_bound_to_its_tpm_proves_it_at_boot_and_for_a_live_layer_and_another_tpm_cannot() {
    let Some(mut lab) = Lab::new(&["curl", "jq", "busybox", "unshare", "swtpm", "tpm2_createek"])
    else {
        return;
    };
    let dir = lab.dir.path().to_owned();
    let real = SoftTpm::manufacture(&dir.join("tpm-real")).unwrap();
    let other = SoftTpm::manufacture(&dir.join("tpm-other")).unwrap();
    assert_ne!(real.ek_name, other.ek_name);
    // Each on the client namespace's own loopback, where the machine's tools reach it.
    for (name, tpm, port) in [("swtpm-real", &real, 2321), ("swtpm-other", &other, 2331)] {
        let args = tpm.tcp_server(port);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        lab.spawn_in_client(name, "swtpm", &args);
    }

    let secrets = [("etc/lectern/encoder.args", SECRET_MARK)];
    let cpio = host_cpio(&dir.join("staging"), &secrets, 0o600);
    let (store, layers) = mixer1_store_and_layers(&dir, &cpio);
    let key = store.server_key().unwrap();
    let identity = format!("uuid={UUID},tpm_ek={}", real.ek_name);
    serve_mixer1_at_its_address(&mut lab, &identity, &layers, &store, &[]);
    // The host's boot fetches its layer, which opens the window for its secrets.
    assert_eq!(
        http(&lab, &[&format!("{HTTP}/host/{MIXER}/layer")]),
        "public layer of mixer1"
    );

    // A spoofer with the host's MAC, address and SMBIOS UUID, and a TPM of its own: nothing.
    let spoofer = Machine::new(&dir.join("spoofer"), &key.pin);
    let (ok, printed) = spoofer.run(&lab, "host-secrets", &[], "swtpm:port=2331");
    assert!(!ok, "{printed}");
    assert!(printed.contains("HTTP 403"), "{printed}");
    assert!(!spoofer.root.join("etc/lectern/encoder.args").exists());
    // One without any TPM: nothing either.
    let (ok, printed) = spoofer.run(&lab, "host-secrets", &[], "swtpm:port=2399");
    assert!(!ok, "{printed}");
    assert!(!spoofer.root.join("etc/lectern/encoder.args").exists());

    // The host, with its TPM: its secrets, and its reports' token.
    let host = Machine::new(&dir.join("host"), &key.pin);
    let (ok, printed) = host.run(&lab, "host-secrets", &[], "swtpm:port=2321");
    assert!(ok, "{printed}");
    assert!(printed.contains("applied 1 files"), "{printed}");
    assert_eq!(host.file("etc/lectern/encoder.args"), SECRET_MARK);
    let auth = std::fs::read_to_string(host.run.join("report-auth")).unwrap();
    assert!(auth.starts_with("Authorization: Bearer "), "{auth}");

    // Its key is rotated while it runs: for its layer it proves its TPM again. Its token copied
    // into a machine with another TPM (at its address, with its SMBIOS) gets nothing.
    let rotated = format!("{SECRET_MARK}-rotated");
    let listed = "etc/lectern/encoder.args\netc/lectern/layer-files\n";
    let public = host_cpio(
        &dir.join("staging"),
        &[("etc/lectern/layer-files", listed)],
        0o644,
    );
    std::fs::write(layers.join("mixer1.cpio"), public).unwrap();
    let secrets = [("etc/lectern/encoder.args", rotated.as_str())];
    let cpio = host_cpio(&dir.join("staging"), &secrets, 0o600);
    std::fs::write(layers.join("mixer1.secrets.cpio"), cpio).unwrap();
    let thief = Machine::new(&dir.join("thief"), &key.pin);
    std::fs::copy(host.run.join("report-auth"), thief.run.join("report-auth")).unwrap();
    let (ok, printed) = thief.run(&lab, "live-layer", &[], "swtpm:port=2331");
    assert!(!ok && printed.contains("HTTP 403"), "{printed}");
    assert!(!thief.root.join("etc/lectern/encoder.args").exists());
    let (ok, printed) = host.run(&lab, "live-layer", &[], "swtpm:port=2321");
    assert!(ok, "{printed}");
    assert_eq!(host.file("etc/lectern/encoder.args"), rotated);

    let hosts: serde_json::Value = serde_json::from_str(&lab.operator("/api/hosts")).unwrap();
    let alerts = hosts[0]["alerts"].to_string();
    assert!(
        alerts.contains("endorsement key is not the one the master file names"),
        "{alerts}"
    );
    let metrics = lab.operator("/metrics");
    for counted in [
        "netbootd_secrets_total{outcome=\"wrong_identity\"} 1",
        "netbootd_secrets_total{outcome=\"released\"} 1",
        // Each boot is asked for its TPM, the host's then challenged.
        "netbootd_secrets_total{outcome=\"tpm_challenge\"} 4",
        // The same, for the running host's layer.
        "netbootd_live_layers_total{outcome=\"wrong_identity\"} 1",
        "netbootd_live_layers_total{outcome=\"tpm_challenge\"} 3",
        "netbootd_live_layers_total{outcome=\"released\"} 1",
    ] {
        assert!(metrics.contains(counted), "{counted}: {metrics}");
    }
    let log = lab.logs();
    assert!(
        log.contains(&other.ek_name),
        "netbootd logs the spoofer's key Name: {log}"
    );
}

#[test]
fn the_dashboard_follows_a_boot_live_and_shows_a_silent_host_stale() {
    let Some(mut lab) = Lab::new(&["curl", "chromium", "python3"]) else {
        return;
    };
    let (store, layers) = mixer1_store_and_layers(lab.dir.path(), b"secrets of mixer1");
    let key = store.server_key().unwrap();
    // Stale after one missed heartbeat (30 s), so that the test sees it happen.
    serve_mixer1_at_its_address(
        &mut lab,
        &format!("uuid={UUID},group=room-a"),
        &layers,
        &store,
        &[
            "--host",
            "52:54:00:00:00:09,10.99.0.19,slides1,group=room-b",
            "--stale-after-missed-beats",
            "1",
        ],
    );
    let probe = lab.dir.path().join("browser_probe.py");
    std::fs::write(&probe, include_str!("lab/browser_probe.py")).unwrap();
    // Kept after the test, for a person to look at.
    let screenshot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let _ = std::fs::remove_file(&screenshot);
    let pin = key.pin.as_str();
    let identity = format!(r#","uuid":"{UUID}""#);

    let page = std::thread::scope(|scope| {
        let browser = scope.spawn(|| watch_dashboard(&lab, &probe, 50, &screenshot));
        std::thread::sleep(Duration::from_secs(6));
        http(&lab, &[&format!("{HTTP}/host/{MIXER}/layer")]);
        std::thread::sleep(Duration::from_secs(5));
        let (status, _, token) = ask_secrets(&lab, pin, "b1", &identity);
        assert_eq!(status, "200");
        assert_eq!(report_up(&lab, pin, &token), "200");
        browser.join().unwrap()
    });
    assert!(
        page.status.success(),
        "browser probe: {}",
        String::from_utf8_lossy(&page.stderr)
    );
    let page: serde_json::Value = serde_json::from_slice(&page.stdout).unwrap();
    let texts: Vec<&str> = (page["texts"].as_array().unwrap().iter())
        .map(|text| text.as_str().unwrap_or_default())
        .collect();
    let first = |wanted: &str| texts.iter().position(|text| text.contains(wanted));
    let booting = first("mixer1\nno role\nbooting: host layer");
    let up = first("mixer1\nmixer\nup\n");
    let stale = first("mixer1\nmixer\nstale\n");
    assert!(
        booting.is_some() && booting < up && up < stale,
        "booting at {booting:?}, up at {up:?}, stale at {stale:?}: {texts:#?}"
    );
    let last = texts.last().unwrap();
    for shown in [
        "room-a",
        "room-b",
        "slides1\nno role\nnot seen yet",
        "image sha256:abc",
        "2 hosts: 1 stale, 1 not seen",
    ] {
        assert!(last.contains(shown), "{shown:?} not in {last}");
    }
    let png = std::fs::read(&screenshot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
}

#[test]
fn check_finds_the_interface_up_and_holding_the_servers_address_only_where_it_is() {
    let Some(lab) = Lab::new(&[]) else {
        return;
    };
    let state = lab.dir.path().join("state");
    let netbootd = env!("CARGO_BIN_EXE_netbootd");
    // `check` as the server namespace sees the machine: its br0 holds 10.99.0.1/24. Debian's iPXE
    // binaries are the TFTP root, checked against dpkg's record of them.
    let check = |command: &str, args: &[&str]| {
        let mut full = vec![
            netbootd,
            command,
            "--state-dir",
            state.to_str().unwrap(),
            "--tftp-root",
            "/usr/lib/ipxe",
        ];
        full.extend_from_slice(args);
        let output = lab.server("env", &[&["-u", "LECTERN_STORE"], &full[..]].concat());
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        )
    };
    let store = lectern_store::Store::create(lab.dir.path().join("store")).unwrap();
    store.server_key().unwrap();
    let key = store.server_key_path();
    let static_check = |interface: &str, server_ip: &str, mode: &str| {
        let args = ["--interface", interface, "--server-ip", server_ip];
        let tls = ["--tls-key", key.to_str().unwrap(), "--mode", mode];
        check("check-static", &[&args[..], &tls].concat())
    };
    let (code, said) = static_check("br0", SERVER_IP, "authoritative");
    assert_eq!(code, Some(0), "{said}");
    assert!(
        said.starts_with("ok: 0 netbooted hosts; br0 holds 10.99.0.1;"),
        "{said}"
    );

    let (code, said) = static_check("br0", "10.99.0.2", "authoritative");
    assert_eq!(code, Some(1), "{said}");
    assert_eq!(
        said,
        "problem: interface br0 does not hold the server's address 10.99.0.2 (it has 10.99.0.1/24): netbootd binds TFTP and HTTP to it and every boot URL names it (ip addr add 10.99.0.2/24 dev br0)\n"
    );
    // In proxy mode too: the venue's DHCP server hands the box its address.
    let (_, said) = static_check("br0", "10.99.0.2", "proxy");
    assert!(
        said.contains("(the venue's DHCP server must give this box 10.99.0.2, or set it statically: ip addr add 10.99.0.2/24 dev br0)"),
        "{said}"
    );
    let (_, said) = static_check("br7", SERVER_IP, "authoritative");
    assert_eq!(
        said,
        "problem: interface br7 does not exist here (`ip link` lists this machine's): netbootd serves on the interface the master file names\n"
    );
    lab.add_server_address("10.99.0.129/25");
    let (_, said) = static_check("br0", "10.99.0.129", "authoritative");
    assert_eq!(
        said,
        "problem: interface br0 holds 10.99.0.129/25, narrower than the master file's /24: hosts outside that /25 are off its link (give the address /24)\n"
    );

    // The VM labs' master file names br0 and 10.99.0.1: in this namespace all that is missing is
    // the images.
    let master = lab.dir.path().join("master.toml");
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../builder/tests/fixtures/master.toml"
    );
    std::fs::copy(fixture, &master).unwrap();
    let (code, said) = check("check", &["--config", master.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{said}");
    assert_eq!(
        said,
        format!(
            "problem: the store {} has no images yet: none of the 5 netbooted hosts can boot (run: imgbuild all)\n",
            store.root().display()
        )
    );

    must("ip", &["-n", &lab.server_ns, "link", "set", "br0", "down"]);
    let (_, said) = static_check("br0", SERVER_IP, "authoritative");
    assert_eq!(
        said,
        "problem: interface br0 is down (ip link set br0 up)\n"
    );
}

/// mixer1's layer, as imgbuild splits it: the public part, and the secrets (0600). `rate` and
/// `passphrase` go into its contribution feed, `framerate` into voctocore's settings, `zone` is
/// its time zone; with a recording disk it has a mount unit.
fn mixer1_layer(
    scratch: &std::path::Path,
    (framerate, rate, passphrase, zone, disk): (u32, u32, &str, &str, bool),
) -> (Vec<u8>, Vec<u8>) {
    let ini =
        format!("[mix]\nvideocaps=video/x-raw,width=640,height=360,framerate={framerate}/1\n");
    let feed =
        format!("srt://enc.example.org:9000?pbkeylen=32&passphrase={passphrase} {rate} 128\n");
    let redact = format!("# The secrets this host holds.\n{passphrase}\n");
    let mount = "[Mount]\nWhat=/dev/sdb\nWhere=/srv/recordings\n";
    let url = format!("https://{SERVER_IP}:8443/\n");
    let mut public = vec![
        ("etc/hosts", "10.99.0.1\tnetboot\n"),
        ("etc/timezone", zone),
        ("etc/voctomix/voctocore.ini", ini.as_str()),
        ("etc/lectern/netbootd-url", url.as_str()),
    ];
    if disk {
        public.push(("etc/systemd/system/srv-recordings.mount", mount));
    }
    let secrets = [
        ("etc/lectern/contributions", feed.as_str()),
        ("etc/lectern/redact", redact.as_str()),
    ];
    let mut listed: Vec<&str> = (public.iter().chain(&secrets))
        .map(|(path, _)| *path)
        .collect();
    listed.push("etc/lectern/layer-files");
    listed.sort_unstable();
    let list = format!("# The files of this host's layer.\n{}\n", listed.join("\n"));
    public.push(("etc/lectern/layer-files", &list));
    (
        host_cpio(scratch, &public, 0o644),
        host_cpio(scratch, &secrets, 0o600),
    )
}

/// The inode of a file of `machine`'s root.
fn inode(machine: &Machine, path: &str) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(machine.root.join(path)).unwrap().ino()
}

#[test]
fn a_running_host_applies_its_changed_layer_over_tls_restarting_only_what_reads_the_changed_files()
{
    let Some(mut lab) = Lab::new(&[
        "curl", "jq", "busybox", "unshare", "tcpdump", "chromium", "python3",
    ]) else {
        return;
    };
    let dir = lab.dir.path().to_owned();
    let scratch = dir.join("scratch");
    let (public, secrets) =
        mixer1_layer(&scratch, (25, 3000, "first-passphrase-51c0", "UTC\n", true));
    let (store, layers) = mixer1_store_and_layers(&dir, &secrets);
    std::fs::write(layers.join("mixer1.cpio"), &public).unwrap();
    let pin = store.server_key().unwrap().pin;
    let capture = dir.join("live.pcap");
    lab.capture_bridge(&capture);
    serve_mixer1_at_its_address(
        &mut lab,
        &format!("uuid={UUID},group=room-a"),
        &layers,
        &store,
        &[],
    );

    // mixer1 boots: its initrd unpacks the public part over the root image, its secrets come over
    // TLS. Its role image says which units read which files of its layer.
    let host = Machine::new(&dir.join("mixer1"), &pin);
    let units = "# Which units read which files of this host's layer.\n\
        etc/hosts\netc/lectern/contributions lectern-contribute.service\netc/lectern/layer-files\n\
        etc/lectern/netbootd-url\netc/lectern/redact lectern-contribute.service\n\
        etc/voctomix/voctocore.ini lectern-voctocore.service\n";
    std::fs::create_dir_all(host.root.join("usr/lib/lectern")).unwrap();
    std::fs::write(host.root.join("usr/lib/lectern/host-file-units"), units).unwrap();
    let fetched = dir.join("fetched.cpio");
    http(
        &lab,
        &[
            "-o",
            fetched.to_str().unwrap(),
            &format!("{HTTP}/host/{MIXER}/layer"),
        ],
    );
    must(
        "sh",
        &[
            "-c",
            &format!(
                "cd {} && busybox cpio -i -d -m < {} && cp -a lectern-host/. {}/",
                scratch.display(),
                fetched.display(),
                host.root.display()
            ),
        ],
    );
    let (ok, printed) = host.run(&lab, "host-secrets", &[], "");
    assert!(ok && printed.contains("applied 2 files"), "{printed}");
    let booted = std::fs::read_to_string(host.run.join("layer")).unwrap();
    let (ok, printed) = host.run(&lab, "report", &[], "");
    assert!(ok, "{printed}");
    assert_eq!(
        host.systemctl_calls(),
        ["show --property=Wants --value lectern-role.target"],
        "nothing to apply"
    );
    let hosts: serde_json::Value = serde_json::from_str(&lab.operator("/api/hosts")).unwrap();
    assert_eq!(hosts[0]["layer"].as_str(), Some(booted.trim()), "{hosts:#}");
    assert_eq!(hosts[0]["layer"], hosts[0]["serves_layer"], "{hosts:#}");
    let untouched = inode(&host, "etc/hosts");
    let replaced = inode(&host, "etc/voctomix/voctocore.ini");

    // A new bitrate and a rotated passphrase for its contribution feed, 30 fps in voctocore, a time
    // zone, no recording disk: the build writes its layer, netbootd serves it at once.
    let rotated = "rotated-passphrase-0e7d";
    let (public, secrets) = mixer1_layer(&scratch, (30, 4500, rotated, "Europe/Brussels\n", false));
    std::fs::write(layers.join("mixer1.cpio"), &public).unwrap();
    std::fs::write(layers.join("mixer1.secrets.cpio"), &secrets).unwrap();
    let probe = dir.join("browser_probe.py");
    std::fs::write(&probe, include_str!("lab/browser_probe.py")).unwrap();
    let screenshot =
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-live-layer.png");
    let page = std::thread::scope(|scope| {
        let browser = scope.spawn(|| watch_dashboard(&lab, &probe, 16, &screenshot));
        std::thread::sleep(Duration::from_secs(4));
        // Its next heartbeat hears of it and starts the live update, which systemd would run.
        let (ok, printed) = host.run(&lab, "report", &[], "");
        assert!(ok && printed.contains("applying it"), "{printed}");
        let calls = host.systemctl_calls();
        assert_eq!(
            calls.last().map(String::as_str),
            Some("start --no-block lectern-live-layer.service")
        );
        let (ok, printed) = host.run(&lab, "live-layer", &[], "");
        assert!(ok, "{printed}");
        assert!(
            !printed.contains(rotated),
            "the log shows no secret: {printed}"
        );
        // Only the units that read the changed files restart, at once, once they are all in place.
        assert_eq!(
            host.systemctl_calls(),
            [
                "restart lectern-contribute.service lectern-voctocore.service",
                "start --no-block lectern-heartbeat.service",
            ]
        );
        let (ok, printed) = host.run(&lab, "report", &[], "");
        assert!(ok && !printed.contains("applying it"), "{printed}");
        std::thread::sleep(Duration::from_secs(5));

        // The next version makes the feed's restart fail: every file goes back, the units restart on
        // them, and that version is not tried again.
        let (public, secrets) =
            mixer1_layer(&scratch, (30, 6000, rotated, "Europe/Brussels\n", false));
        std::fs::write(layers.join("mixer1.cpio"), &public).unwrap();
        std::fs::write(layers.join("mixer1.secrets.cpio"), &secrets).unwrap();
        std::fs::write(dir.join("mixer1/fail-restart"), "").unwrap();
        let before = host.file("etc/lectern/contributions");
        let (ok, _) = host.run(&lab, "report", &[], "");
        assert!(ok);
        let (ok, printed) = host.run(&lab, "live-layer", &[], "");
        assert!(
            !ok && printed.contains("restarting lectern-contribute.service failed"),
            "{printed}"
        );
        assert_eq!(host.file("etc/lectern/contributions"), before, "put back");
        let calls = host.systemctl_calls();
        assert_eq!(
            calls[calls.len() - 3..],
            [
                "restart lectern-contribute.service",
                "restart lectern-contribute.service",
                "start --no-block lectern-heartbeat.service"
            ]
        );
        let (ok, printed) = host.run(&lab, "report", &[], "");
        assert!(
            ok && !printed.contains("applying it"),
            "a failed version is not tried again: {printed}"
        );
        browser.join().unwrap()
    });

    // A version whose time zone cannot go in place (a directory stands there): the files renamed in
    // before it go back.
    let (public, secrets) = mixer1_layer(&scratch, (30, 7000, rotated, "UTC\n", false));
    std::fs::write(layers.join("mixer1.cpio"), &public).unwrap();
    std::fs::write(layers.join("mixer1.secrets.cpio"), &secrets).unwrap();
    let zone = host.root.join("etc/timezone");
    std::fs::remove_file(&zone).unwrap();
    std::fs::create_dir_all(zone.join("in-the-way")).unwrap();
    host.systemctl_calls();
    let (ok, printed) = host.run(&lab, "live-layer", &[], "");
    assert!(
        !ok && printed.contains("cannot put etc/timezone in place"),
        "{printed}"
    );
    assert_eq!(
        host.systemctl_calls(),
        ["start --no-block lectern-heartbeat.service"],
        "no unit restarted"
    );
    std::fs::remove_dir_all(&zone).unwrap();
    std::fs::write(&zone, "Europe/Brussels\n").unwrap();
    let (ok, printed) = host.run(&lab, "report", &[], "");
    assert!(ok && !printed.contains("applying it"), "{printed}");

    // Replaced whole, each file by a rename: new inodes, nothing half-written left beside them, the
    // secrets still the root's alone, the old ones kept for a rollback in the host's RAM.
    assert_eq!(
        host.file("etc/lectern/contributions"),
        format!("srt://enc.example.org:9000?pbkeylen=32&passphrase={rotated} 4500 128\n")
    );
    assert!(
        host.file("etc/voctomix/voctocore.ini")
            .contains("framerate=30/1")
    );
    assert_eq!(host.file("etc/timezone"), "Europe/Brussels\n");
    assert!(
        !host
            .root
            .join("etc/systemd/system/srv-recordings.mount")
            .exists(),
        "removed with the disk"
    );
    assert_ne!(inode(&host, "etc/voctomix/voctocore.ini"), replaced);
    assert_eq!(
        inode(&host, "etc/hosts"),
        untouched,
        "an unchanged file is left alone"
    );
    let leftovers = must(
        "find",
        &[host.root.to_str().unwrap(), "-name", "*.lectern-*"],
    );
    assert_eq!(leftovers, "");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(host.root.join("etc/lectern/contributions"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let kept = std::fs::read_to_string(host.run.join("layers/previous/etc/lectern/contributions"))
        .unwrap();
    assert!(kept.contains("first-passphrase-51c0"), "{kept}");

    // netbootd knows what it runs and what the update did; the dashboard shows both.
    let hosts: serde_json::Value = serde_json::from_str(&lab.operator("/api/hosts")).unwrap();
    let mixer = &hosts[0];
    let update = &mixer["layer_update"];
    assert_ne!(mixer["layer"], mixer["serves_layer"], "{mixer:#}");
    assert_eq!(update["layer"], mixer["serves_layer"], "{mixer:#}");
    assert!(
        update["failed"]
            .as_str()
            .is_some_and(|why| why.contains("the files are as they were")),
        "{mixer:#}"
    );
    assert_eq!(
        update["needs_reboot"],
        serde_json::json!(["etc/systemd/system/srv-recordings.mount", "etc/timezone"]),
        "{mixer:#}"
    );
    assert!(update["at"].is_string(), "{mixer:#}");
    let metrics = lab.operator("/metrics");
    for counted in [
        "netbootd_live_layers_total{outcome=\"released\"} 3",
        "netbootd_secrets_total{outcome=\"released\"} 1",
    ] {
        assert!(metrics.contains(counted), "{counted}: {metrics}");
    }
    // Not on plain HTTP.
    let plain = http_status(
        &lab,
        &["-d", "{}", &format!("{HTTP}/host/mixer1/live-layer")],
    );
    assert_eq!(plain, "404");

    assert!(
        page.status.success(),
        "browser probe: {}",
        String::from_utf8_lossy(&page.stderr)
    );
    let page: serde_json::Value = serde_json::from_slice(&page.stdout).unwrap();
    let texts: Vec<&str> = (page["texts"].as_array().unwrap().iter())
        .map(|text| text.as_str().unwrap_or_default())
        .collect();
    let shown = |wanted: &str| texts.iter().position(|text| text.contains(wanted));
    let live = shown("layer updated live");
    let restarted = shown("restarted lectern-contribute.service, lectern-voctocore.service");
    let reboot =
        shown("a reboot would change etc/systemd/system/srv-recordings.mount, etc/timezone");
    let failed = shown("live layer update failed");
    assert!(
        live.is_some() && live == restarted && restarted <= reboot && reboot < failed,
        "{texts:#?}"
    );
    assert!(
        texts
            .last()
            .unwrap()
            .contains("a reboot would change its layer"),
        "{texts:#?}"
    );

    // Neither the new secrets nor the new settings crossed the LAN in clear: the update went over TLS.
    std::thread::sleep(Duration::from_secs(1));
    let wire = std::fs::read(&capture).unwrap();
    let seen = |needle: &[u8]| wire.windows(needle.len()).any(|window| window == needle);
    assert!(
        seen(b"framerate=25/1"),
        "the capture caught the boot's public layer ({} bytes)",
        wire.len()
    );
    assert!(
        !seen(rotated.as_bytes()),
        "a secret crossed the LAN in clear"
    );
    assert!(
        !seen(b"framerate=30/1"),
        "the live layer crossed the LAN in clear"
    );
}

/// The value of the one sample of `family` whose labels include `labels` (`host="mixer1"`), from
/// a scrape of `/metrics`.
fn sample(metrics: &str, family: &str, labels: &str) -> Option<f64> {
    let prefix = format!("{family}{{");
    (metrics.lines())
        .filter(|line| line.starts_with(&prefix) && line.contains(labels))
        .find_map(|line| line.rsplit_once(' ')?.1.parse().ok())
}

/// Prometheus's own parser and linter (`promtool check metrics`) on a scrape.
fn promtool_accepts(metrics: &str) {
    use std::io::Write;
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool");
    let mut stdin = promtool.stdin.take().unwrap();
    stdin.write_all(metrics.as_bytes()).unwrap();
    drop(stdin);
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}\n{metrics}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
}

#[test]
fn metrics_parse_for_prometheus_and_follow_a_host_from_unseen_to_up_degraded_and_stale() {
    let Some(mut lab) = Lab::new(&["curl", "promtool"]) else {
        return;
    };
    let (store, layers) = mixer1_store_and_layers(lab.dir.path(), b"secrets of mixer1");
    let key = store.server_key().unwrap();
    serve_mixer1_at_its_address(
        &mut lab,
        &format!("uuid={UUID},group=room-a"),
        &layers,
        &store,
        &[
            "--host",
            "52:54:00:00:00:09,10.99.0.19,slides1,group=room-a",
            "--stale-after-missed-beats",
            "1",
        ],
    );
    let mixer1 = r#"host="mixer1""#;
    let scrape = || {
        let metrics = lab.operator("/metrics");
        promtool_accepts(&metrics);
        metrics
    };
    let metrics = scrape();
    for (family, labels, value) in [
        ("netbootd_host_boot_phase", mixer1, 0.0),
        ("netbootd_host_up", mixer1, 0.0),
        ("netbootd_host_stale", mixer1, 0.0),
        ("netbootd_room_hosts", r#"room="room-a""#, 2.0),
        ("netbootd_room_hosts_up", r#"room="room-a""#, 0.0),
    ] {
        assert_eq!(
            sample(&metrics, family, labels),
            Some(value),
            "{family}: {metrics}"
        );
    }
    assert!(
        metrics.contains(r#"netbootd_host_up{host="slides1",role="",room="room-a"} 0"#),
        "{metrics}"
    );

    // Its boot takes its layer: phase 6.
    http(&lab, &[&format!("{HTTP}/host/{MIXER}/layer")]);
    let metrics = scrape();
    assert_eq!(
        sample(&metrics, "netbootd_host_boot_phase", mixer1),
        Some(6.0)
    );
    assert!(
        metrics.contains(
            r#"netbootd_http_responses_total{route="/host/{host}/layer",status="2xx"} 1"#
        ),
        "the counters are still there: {metrics}"
    );

    // Up: its role (from its report) labels it from now on.
    let pin = key.pin.as_str();
    let (status, _, token) = ask_secrets(&lab, pin, "b1", &format!(r#","uuid":"{UUID}""#));
    assert_eq!(status, "200");
    let reported = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert_eq!(report_up(&lab, pin, &token), "200");
    let metrics = scrape();
    let up = r#"host="mixer1",role="mixer",room="room-a""#;
    for (family, value) in [
        ("netbootd_host_up", 1.0),
        ("netbootd_host_boot_phase", 10.0),
        ("netbootd_host_degraded", 0.0),
        ("netbootd_host_reboot_changes_image", 0.0),
    ] {
        assert_eq!(
            sample(&metrics, family, up),
            Some(value),
            "{family}: {metrics}"
        );
    }
    assert_eq!(
        sample(&metrics, "netbootd_room_hosts_up", r#"room="room-a""#),
        Some(1.0)
    );
    let heartbeat = sample(
        &metrics,
        "netbootd_host_last_heartbeat_timestamp_seconds",
        up,
    )
    .unwrap();
    assert!(
        (heartbeat - reported).abs() < 5.0,
        "{heartbeat} vs {reported}"
    );

    // Degraded, then silent: stale after one missed heartbeat (30 s).
    assert_eq!(report(&lab, pin, &token, "degraded"), "200");
    let metrics = scrape();
    assert_eq!(
        (
            sample(&metrics, "netbootd_host_degraded", up),
            sample(&metrics, "netbootd_host_up", up)
        ),
        (Some(1.0), Some(0.0))
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(50);
    let stale = loop {
        let metrics = scrape();
        if sample(&metrics, "netbootd_host_stale", up) == Some(1.0) {
            break metrics;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never stale: {metrics}"
        );
        std::thread::sleep(Duration::from_secs(2));
    };
    assert_eq!(
        sample(&stale, "netbootd_host_degraded", up),
        Some(0.0),
        "stale first, as the dashboard shows it"
    );
}

const JOURNAL_REMOTE: &str = "/lib/systemd/systemd-journal-remote";
const JOURNAL_UPLOAD: &str = "/lib/systemd/systemd-journal-upload";

/// A journal file with one entry that `host` logged, written by systemd's own receiver from the
/// journal export format (what `journalctl -o export` prints).
fn journal_of(dir: &std::path::Path, host: &str, message: &str) -> std::path::PathBuf {
    use std::io::Write;
    let file = dir.join(format!("{host}.journal"));
    let export = format!(
        "__REALTIME_TIMESTAMP=1764842400000000\n_HOSTNAME={host}\nSYSLOG_IDENTIFIER=lectern-test\nPRIORITY=6\nMESSAGE={message}\n\n"
    );
    let mut writer = std::process::Command::new(JOURNAL_REMOTE)
        .arg(format!("--output={}", file.display()))
        .arg("-")
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    writer
        .stdin
        .take()
        .unwrap()
        .write_all(export.as_bytes())
        .unwrap();
    assert!(writer.wait().unwrap().success());
    file
}

/// The role images' own upload (the ExecStart of their drop-in on systemd-journal-upload.service),
/// run once on the client: `file` instead of the host's journal, `ca` where the image has its
/// trust anchor, to `url` (what the host layer names).
fn upload_as_the_images_do(
    lab: &Lab,
    url: &str,
    ca: &std::path::Path,
    file: &std::path::Path,
) -> std::process::Output {
    let drop_in = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(
        "../overlays/base/config/usr/lib/systemd/system/systemd-journal-upload.service.d/lectern.conf",
    );
    let drop_in = std::fs::read_to_string(drop_in).unwrap();
    let exec = (drop_in.lines())
        .filter_map(|line| line.strip_prefix("ExecStart="))
        .rfind(|line| !line.is_empty())
        .expect("the drop-in's ExecStart");
    let mut words = exec.split_whitespace();
    assert_eq!(words.next(), Some(JOURNAL_UPLOAD));
    let mut args: Vec<String> = words
        .map(|arg| match arg {
            "--save-state" => format!("--file={}", file.display()),
            trust if trust.starts_with("--trust=") => format!("--trust={}", ca.display()),
            arg => arg.to_owned(),
        })
        .collect();
    assert!(
        args.iter().any(|arg| arg.starts_with("--trust=")),
        "the images check the receiver: {exec}"
    );
    args.extend(["--follow=no".to_owned(), format!("--url={url}")]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    lab.client(JOURNAL_UPLOAD, &args)
}

#[test]
fn hosts_journals_reach_the_box_over_tls_split_per_host_and_never_an_untrusted_receiver() {
    let Some(mut lab) = Lab::new(&["journalctl", "tcpdump", JOURNAL_REMOTE, JOURNAL_UPLOAD]) else {
        return;
    };
    // The fixture conference: its netboot machine is this lab's server (10.99.0.1 on br0).
    let dir = lab.dir.path().to_owned();
    let fixtures =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../builder/tests/fixtures");
    let master = dir.join("master.toml");
    std::fs::copy(fixtures.join("master.toml"), &master).unwrap();
    let plan = lectern_master::load_without_secret_values(&master).unwrap();
    let store = lectern_store::Store::create(&plan.netboot.store).unwrap();
    store.journal_ca().unwrap();
    let trusted = store.journal_ca_certificate_path();
    let capture = dir.join("journal.pcap");
    lab.capture_bridge(&capture);
    let received = dir.join("remote");
    lab.spawn_in_server(
        "journal-remote",
        env!("CARGO_BIN_EXE_netbootd"),
        &[
            "--config",
            master.to_str().unwrap(),
            "journal-remote",
            "--key-dir",
            dir.join("receiver").to_str().unwrap(),
            "--output",
            received.to_str().unwrap(),
        ],
    );
    assert_eq!(plan.netboot.journal_url, "https://10.99.0.1:19532");
    let url = plan.netboot.journal_url.as_str();
    lab.set_client_address("10.99.0.64/24");
    let mixer = journal_of(&dir, "lameere-mixer", "mixer-line-5b1e");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let sent = upload_as_the_images_do(&lab, url, &trusted, &mixer);
        if sent.status.success() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the mixer's upload: {}\n{}",
            String::from_utf8_lossy(&sent.stderr),
            lab.logs()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    lab.set_client_address("10.99.0.128/24");
    let source = journal_of(&dir, "lameere-source-1", "source-line-0c7d");
    let sent = upload_as_the_images_do(&lab, url, &trusted, &source);
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );

    // One file per host address; each host's entries read back by its name.
    std::thread::sleep(Duration::from_secs(1));
    let mut files: Vec<String> = std::fs::read_dir(&received)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        ["remote-10.99.0.128.journal", "remote-10.99.0.64.journal"]
    );
    let read = |filter: &str| {
        let directory = format!("--directory={}", received.display());
        lab::must("journalctl", &[&directory, "-o", "cat", filter])
    };
    assert_eq!(read("_HOSTNAME=lameere-mixer").trim(), "mixer-line-5b1e");
    assert_eq!(
        read("_HOSTNAME=lameere-source-1").trim(),
        "source-line-0c7d"
    );

    // A receiver another authority certified (another store's, a LAN impostor's) gets nothing.
    let impostor = lectern_store::Store::create(dir.join("impostor")).unwrap();
    impostor.journal_ca().unwrap();
    let refused = upload_as_the_images_do(
        &lab,
        url,
        &impostor.journal_ca_certificate_path(),
        &journal_of(&dir, "lameere-source-2", "never-line-9a4f"),
    );
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("certificate"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert_eq!(read("_HOSTNAME=lameere-source-2"), "");

    // And the LAN saw the uploads, never their text.
    std::thread::sleep(Duration::from_secs(1));
    let wire = std::fs::read(&capture).unwrap();
    let seen = |needle: &[u8]| wire.windows(needle.len()).any(|window| window == needle);
    assert!(wire.len() > 2000, "the capture caught the uploads");
    for line in ["mixer-line-5b1e", "source-line-0c7d", "lameere-mixer"] {
        assert!(!seen(line.as_bytes()), "{line} crossed the LAN in clear");
    }
}

/// The browser probe (`lab/browser_probe.py`, at `probe`) on the operator's dashboard for `seconds`, in
/// headless Chromium in the server's namespace, saving `screenshot` at the end: what it printed.
fn watch_dashboard(
    lab: &Lab,
    probe: &std::path::Path,
    seconds: u32,
    screenshot: &std::path::Path,
) -> std::process::Output {
    lab.server(
        "python3",
        &[
            probe.to_str().unwrap(),
            "http://127.0.0.1:8081/",
            &seconds.to_string(),
            screenshot.to_str().unwrap(),
        ],
    )
}
