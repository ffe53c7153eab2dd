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
    let auth = format!("Authorization: Bearer {token}");
    let body =
        r#"{"host":"mixer1","role":"mixer","image":"sha256:abc","state":"up","boot_id":"b1"}"#;
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
    lab.spawn_in_server(
        "tcpdump",
        "tcpdump",
        &[
            "-i",
            lab::BRIDGE,
            "-U",
            "-s",
            "0",
            "-w",
            capture.to_str().unwrap(),
        ],
    );
    std::thread::sleep(Duration::from_secs(1));
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
    assert_eq!(report_up(&lab, pin, &token), "204");

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

/// The image's host-secrets script, as a booted mixer1 runs it, in the client namespace: its host
/// name, its SMBIOS UUID, its role image's netbootd URL and pin, a TPM reached through `tcti`; the
/// secrets go under `root`. Its exit status and what it printed.
fn host_secrets(lab: &Lab, pin: &str, tcti: &str, root: &std::path::Path) -> (bool, String) {
    let machine = root.join("machine");
    let (etc, dmi, run) = (
        machine.join("etc"),
        machine.join("dmi"),
        machine.join("run"),
    );
    for dir in [&etc, &dmi, &run] {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(
        etc.join("netbootd-url"),
        format!("https://{SERVER_IP}:8443/"),
    )
    .unwrap();
    std::fs::write(etc.join("netbootd.pin"), pin).unwrap();
    std::fs::write(dmi.join("product_uuid"), UUID).unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../overlays/base/config/usr/lib/lectern/host-secrets");
    let output = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.client_ns,
            "unshare",
            "--uts",
            "sh",
            "-c",
        ])
        .arg(r#"hostname mixer1 && exec bash "$0""#)
        .arg(&script)
        .env("LECTERN_ETC", &etc)
        .env("LECTERN_DMI", &dmi)
        .env("LECTERN_RUN", &run)
        .env("LECTERN_ROOT", root)
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

#[test]
fn a_host_bound_to_its_tpm_proves_it_and_a_spoofer_with_its_smbios_but_another_tpm_cannot() {
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

    let secret_file = "lectern-host/etc/lectern/encoder.args";
    let staging = dir.join("staging");
    std::fs::create_dir_all(staging.join("lectern-host/etc/lectern")).unwrap();
    std::fs::write(staging.join(secret_file), SECRET_MARK).unwrap();
    let cpio = std::process::Command::new("sh")
        .arg("-c")
        .arg("find lectern-host | busybox cpio -o -H newc")
        .current_dir(&staging)
        .output()
        .unwrap();
    assert!(cpio.status.success());
    let (store, layers) = mixer1_store_and_layers(&dir, &cpio.stdout);
    let key = store.server_key().unwrap();
    let identity = format!("uuid={UUID},tpm_ek={}", real.ek_name);
    serve_mixer1_at_its_address(&mut lab, &identity, &layers, &store, &[]);
    // The host's boot fetches its layer, which opens the window for its secrets.
    assert_eq!(
        http(&lab, &[&format!("{HTTP}/host/{MIXER}/layer")]),
        "public layer of mixer1"
    );

    // A spoofer with the host's MAC, address and SMBIOS UUID, and a TPM of its own: nothing.
    let spoofer_root = dir.join("spoofer");
    let (ok, printed) = host_secrets(&lab, &key.pin, "swtpm:port=2331", &spoofer_root);
    assert!(!ok, "{printed}");
    assert!(printed.contains("HTTP 403"), "{printed}");
    assert!(!spoofer_root.join("etc/lectern/encoder.args").exists());
    // One without any TPM: nothing either.
    let (ok, printed) = host_secrets(&lab, &key.pin, "swtpm:port=2399", &spoofer_root);
    assert!(!ok, "{printed}");
    assert!(!spoofer_root.join("etc/lectern/encoder.args").exists());

    // The host, with its TPM: its secrets, and its reports' token.
    let host_root = dir.join("host");
    let (ok, printed) = host_secrets(&lab, &key.pin, "swtpm:port=2321", &host_root);
    assert!(ok, "{printed}");
    assert!(printed.contains("applied 1 files"), "{printed}");
    assert_eq!(
        std::fs::read_to_string(host_root.join("etc/lectern/encoder.args")).unwrap(),
        SECRET_MARK
    );
    let auth = std::fs::read_to_string(host_root.join("machine/run/report-auth")).unwrap();
    assert!(auth.starts_with("Authorization: Bearer "), "{auth}");

    let hosts: serde_json::Value = serde_json::from_str(&lab.operator("/api/hosts")).unwrap();
    let alerts = hosts[0]["alerts"].to_string();
    assert!(
        alerts.contains("endorsement key is not the one the master file names"),
        "{alerts}"
    );
    let metrics = lab.operator("/metrics");
    for outcome in [
        "outcome=\"wrong_identity\"} 1",
        "outcome=\"released\"} 1",
        // Each boot is asked for its TPM, the host's then challenged.
        "outcome=\"tpm_challenge\"} 4",
    ] {
        assert!(metrics.contains(outcome), "{outcome}: {metrics}");
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
        let browser = scope.spawn(|| {
            lab.server(
                "python3",
                &[
                    probe.to_str().unwrap(),
                    "http://127.0.0.1:8081/",
                    "50",
                    screenshot.to_str().unwrap(),
                ],
            )
        });
        std::thread::sleep(Duration::from_secs(6));
        http(&lab, &[&format!("{HTTP}/host/{MIXER}/layer")]);
        std::thread::sleep(Duration::from_secs(5));
        let (status, _, token) = ask_secrets(&lab, pin, "b1", &identity);
        assert_eq!(status, "200");
        assert_eq!(report_up(&lab, pin, &token), "204");
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
