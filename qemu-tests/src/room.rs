//! A whole room in the lab: a master file's hosts PXE-boot from the real `netbootd --config master.toml`
//! (real firmware: qemu's iPXE ROM on BIOS, OVMF's own PXE on UEFI) and are then checked the way a video team
//! would: boot phases in `GET /api/hosts`, the stream on the backend decoded with ffprobe/ffmpeg, the watch
//! page in Chromium, the hosts themselves over ssh. The room test and the demo both drive it.

use std::cell::Cell;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use lectern_builder::build::Builder;
use lectern_builder::context::Plan as RenderPlan;
use lectern_master::model::HardwareIdentity;
use lectern_master::{Plan, Role};
use lectern_netboot::vms::{identity_smbios, name_smbios};
use serde_json::Value;

use crate::soft_tpm::SoftTpm;
use crate::{Firmware, Lab};

/// The boot phases netbootd stamps for every guest it leases to, in boot order. The firmware's own
/// DHCP and TFTP come first where the firmware is not iPXE already (OVMF's PXE client, not qemu's
/// BIOS ROM); beside a venue's DHCP there is no `dhcp_os`.
pub const PHASES: [&str; 8] = [
    "dhcp_ipxe",
    "ipxe_script",
    "kernel",
    "host_layer",
    "initrd",
    "dhcp_os",
    "root",
    "reported_up",
];

/// Debian's iPXE first stages, served over TFTP to firmware that has no iPXE.
const TFTP_ROOT: &str = "/usr/lib/ipxe";

pub struct Guest {
    pub hostname: String,
    pub role: Role,
    pub firmware: Firmware,
    /// Its lab index, once started.
    running: Option<usize>,
    powered_on: SystemTime,
    /// qemu's CPU seconds when netbootd first showed this boot up.
    cpu_at_up: Cell<Option<f64>>,
}

impl Guest {
    /// When its qemu was started.
    pub fn powered_on(&self) -> SystemTime {
        self.powered_on
    }
}

pub struct RoomLab {
    pub lab: Lab,
    /// The served copy of the master file.
    pub master: PathBuf,
    pub plan: Plan,
    ssh_key: PathBuf,
    pub guests: Vec<Guest>,
    started: Instant,
    fixture: Fixture,
    /// The soft TPMs of the hosts the served master file binds to one, by host name.
    tpms: HashMap<String, SoftTpm>,
}

/// Which copy of the master file the lab serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fixture {
    /// As it is: netbootd hands out the addresses, in the mode the master file says.
    AsMasterFile,
    /// A venue's DHCP server (dnsmasq) hands them out, with netbootd in proxy mode beside it; the
    /// room's encoder is a machine at the venue, bound to its (soft) TPM.
    ProxyBesideVenue,
    /// The room's encoder runs in the cloud (`where = "ec2"`), fed by the mixer's SRT contribution with
    /// the room's passphrase (added to a copy of the secrets file).
    CloudEncoder,
}

/// The contribution passphrase the `CloudEncoder` fixture adds to the secrets.
pub const CLOUD_PASSPHRASE: &str = "lectern-test-contribution-91be";

/// `Fixture::CloudEncoder`'s edit of the fixture: its room's encoder moved from a local VM to EC2, the
/// room given a contribution passphrase.
fn move_encoder_to_the_cloud(text: &str) -> Result<String> {
    let cloud = "where = \"ec2\"\nregion = \"eu-west-1\"\ninstance_type = \"c6i.large\"\ninstance_profile = \"lectern-encoder\"";
    let (room, encoder, rest) = move_encoder(text, &["mac = ", "ip = ", "identity = "], |line| {
        (line == "where = \"local-vm\"").then(|| cloud.to_owned())
    })?;
    let key = "stream_key = \"secret:stream_keys.lameere\"\n";
    ensure!(room.contains(key), "the fixture's room has no stream key");
    Ok(room.replacen(
        key,
        &format!("{key}contribution_passphrase = \"secret:contribution.lameere\"\n"),
        1,
    ) + &encoder
        + rest)
}

/// `Fixture::ProxyBesideVenue`'s edit of the fixture: its room's encoder a machine at the venue
/// (`bare-metal`), bound to its TPM as well as its SMBIOS UUID.
fn move_encoder_to_bare_metal(text: &str, tpm_ek: &str) -> Result<String> {
    let (before, encoder, rest) = move_encoder(text, &[], |line| {
        if line == "where = \"local-vm\"" {
            Some("where = \"bare-metal\"".to_owned())
        } else if line.starts_with("identity = { ") {
            Some(line.replacen("{ ", &format!("{{ tpm_ek = {tpm_ek:?}, "), 1))
        } else {
            None
        }
    })?;
    ensure!(encoder.contains("tpm_ek"), "lameere-enc has no identity");
    Ok(before.to_owned() + &encoder + rest)
}

/// The fixture around lameere-enc's table, and that table without what only a local VM has (and
/// the lines starting with `dropped`), each line `rewrite` answers for replaced by its answer.
fn move_encoder<'t>(
    text: &'t str,
    dropped: &[&str],
    rewrite: impl Fn(&str) -> Option<String>,
) -> Result<(&'t str, String, &'t str)> {
    let block = text
        .find("hostname = \"lameere-enc\"\n")
        .context("the fixture has no lameere-enc")?;
    let end = block
        + text[block..]
            .find("\n[[")
            .context("lameere-enc is the last table")?;
    let local_vm_only = ["host = ", "vcpus = ", "memory_mb = ", "# "];
    let mut encoder: String = text[block..end]
        .lines()
        .filter(|line| !(local_vm_only.iter().chain(dropped)).any(|field| line.starts_with(field)))
        .map(|line| rewrite(line).unwrap_or_else(|| line.to_owned()) + "\n")
        .collect();
    encoder.push('\n');
    Ok((&text[..block], encoder, &text[end..]))
}

/// Runs `test` in the lab every room-sized VM test starts from: the fixture master file served by the
/// real netbootd of this build (beside the test executable), with the images of every role the plan
/// needs built into, or taken from, the test store under `target_tmpdir` (all of them: `netbootd check`
/// must pass before it serves, and the tests share the store, so each image is built once per run). Skips unless
/// VM tests are enabled; a failure fails the test with the hosts' table and the logs.
pub fn with_fixture_lab(
    target_tmpdir: &str,
    fixture: Fixture,
    test: impl FnOnce(&mut RoomLab) -> Result<()>,
) {
    if !crate::vm_tests_enabled() {
        return;
    }
    let serve = || -> Result<RoomLab> {
        let store_dir = crate::test_store_dir(target_tmpdir);
        let netbootd = crate::netbootd_binary(&std::env::current_exe()?)?;
        let builder = crate::fixture_builder(&store_dir)?;
        crate::fixture_plan()?; // makes the fixture's secrets file 0600
        let master_file = crate::repo().join("builder/tests/fixtures/master.toml");
        let mut room = RoomLab::new(&master_file, &store_dir, fixture)?;
        {
            // One build at a time in the shared test store: the tests of a binary run side by side.
            static BUILDS: std::sync::Mutex<()> = std::sync::Mutex::new(());
            let _building = BUILDS
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            room.build(&builder)?;
        }
        room.serve(&netbootd)?;
        Ok(room)
    };
    let mut room = serve().unwrap();
    if let Err(error) = test(&mut room) {
        room.fail(error);
    }
}

/// The ssh key the labs of the test store `store` authorize on every host, made once beside it. One key
/// for all: the public key is in every host layer, and the labs share the store's host layers, so labs
/// with keys of their own, running side by side, would replace each other's layers and lock each other
/// out.
pub fn store_ssh_key(store: &Path) -> Result<PathBuf> {
    let dir = store.with_extension("ssh");
    let key = dir.join("id_ed25519");
    if key.with_extension("pub").is_file() {
        return Ok(key);
    }
    // Made aside and renamed into place whole: a lab that loses the race uses the winner's key.
    let scratch = tempfile::tempdir_in(dir.parent().context("the store has a parent")?)?;
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "room-test", "-f"])
        .arg(scratch.path().join("id_ed25519"))
        .status()
        .context("running ssh-keygen (apt-get install openssh-client)")?;
    ensure!(status.success(), "ssh-keygen failed");
    let made = scratch.keep();
    if fs::rename(&made, &dir).is_err() {
        fs::remove_dir_all(&made)?;
    }
    ensure!(
        key.with_extension("pub").is_file(),
        "no ssh key in {}",
        dir.display()
    );
    Ok(key)
}

impl RoomLab {
    /// Fails the test with `error`, when it happened, the hosts' table and the logs.
    pub fn fail(&self, error: anyhow::Error) -> ! {
        panic!(
            "{error:#}\nafter {:.0} s\n{}\n{}",
            self.elapsed(),
            self.table(),
            self.diagnostics()
        )
    }

    /// A lab for the video LAN of `master` (its interface as the bridge, the netboot machine's address on
    /// it) serving a copy of the master file (and the secrets file beside it) with the store at `store`, and
    /// the store's ssh key (see [`store_ssh_key`]) that can log in to every host.
    pub fn new(master: &Path, store: &Path, fixture: Fixture) -> Result<Self> {
        let original = lectern_master::load(master).map_err(|e| anyhow::anyhow!("{e}"))?;
        let lan = format!(
            "{}/{}",
            original.netboot.server_ip, original.network.prefix_len
        );
        let lab = Lab::with_lan(&original.network.dhcp.interface, &lan)?;
        let ssh_key = store_ssh_key(store)?;
        let public = fs::read_to_string(ssh_key.with_extension("pub"))?;
        let mut tpms = HashMap::new();
        if fixture == Fixture::ProxyBesideVenue {
            let tpm = SoftTpm::manufacture(&lab.dir().join("tpm-lameere-enc"))
                .map_err(|e| anyhow::anyhow!(e))?;
            tpms.insert("lameere-enc".to_owned(), tpm);
        }
        let served = copy_master(
            master,
            &original.secrets_file,
            lab.dir(),
            store,
            public.trim(),
            fixture,
            tpms.get("lameere-enc").map(|tpm| tpm.ek_name.as_str()),
        )?;
        let plan = lectern_master::load(&served).map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(RoomLab {
            lab,
            master: served,
            plan,
            ssh_key,
            guests: Vec::new(),
            started: Instant::now(),
            fixture,
            tpms,
        })
    }

    /// dnsmasq as the venue's DHCP server, on an address of its own beside netbootd's: reservations for
    /// the plan's fixed addresses, a pool for everyone else, no boot options.
    fn start_venue_dhcp(&mut self) -> Result<()> {
        let server = u32::from(self.plan.netboot.server_ip);
        let prefix = self.plan.network.prefix_len;
        let on_lan = |host: u32| Ipv4Addr::from(server & u32::MAX << (32 - prefix) | host);
        let venue = Ipv4Addr::from(server + 1);
        let added = self
            .lab
            .in_netns("ip")
            .args(["addr", "add", &format!("{venue}/{prefix}"), "dev"])
            .arg(&self.plan.network.dhcp.interface)
            .status()?;
        ensure!(added.success(), "adding the venue DHCP's address");
        let dir = self.lab.dir().to_owned();
        let mut dnsmasq = self.lab.dnsmasq(&self.plan.network.dhcp.interface);
        dnsmasq
            .args(["--dhcp-authoritative", "--log-dhcp"])
            .arg(format!("--listen-address={venue}"))
            .arg(format!("--dhcp-range={},{},1h", on_lan(100), on_lan(150)))
            .arg(format!(
                "--dhcp-leasefile={}",
                dir.join("venue.leases").display()
            ))
            .arg(format!(
                "--pid-file={}",
                dir.join("venue-dnsmasq.pid").display()
            ))
            .arg(format!(
                "--dhcp-option=option:router,{}",
                self.plan.network.gateway
            ));
        for host in &self.plan.hosts {
            if let (Some(mac), Some(ip)) = (host.mac, host.ip) {
                dnsmasq.arg(format!("--dhcp-host={mac},{ip},{}", host.hostname));
            }
        }
        self.lab.spawn(dnsmasq, "venue-dnsmasq.log")?;
        Ok(())
    }

    /// The venue DHCP server's leases (dnsmasq's lease file), when serving beside one.
    pub fn venue_leases(&self) -> String {
        fs::read_to_string(self.lab.dir().join("venue.leases")).unwrap_or_default()
    }

    /// Builds (or reuses) every role image the plan needs and every host's layer, into the builder's store.
    pub fn build(&self, builder: &Builder) -> Result<()> {
        self.build_roles(builder, &self.plan.image_roles())
    }

    /// Builds (or reuses) the images of `roles` and their hosts' layers.
    pub fn build_roles(&self, builder: &Builder, roles: &[Role]) -> Result<()> {
        let render = RenderPlan::load(&self.master)?;
        for role in roles {
            let started = Instant::now();
            let manifest = builder.build_role(role.as_str(), &render)?;
            builder.build_host_layers(role.as_str(), &render)?;
            eprintln!(
                "{role} image {} ready in {:.0} s",
                manifest.image,
                started.elapsed().as_secs_f64()
            );
        }
        Ok(())
    }

    /// `netbootd check`, then `netbootd serve` in the lab's namespace (after the venue's DHCP server,
    /// in proxy mode), logging at debug level, and the receiver of the hosts' journals.
    pub fn serve(&mut self, netbootd: &Path) -> Result<()> {
        self.serve_logging(netbootd, "lectern_netboot=debug,info")
            .map(drop)
    }

    /// [`RoomLab::serve`], netbootd logging as `RUST_LOG` says in `log`; returns netbootd's lab index.
    pub fn serve_logging(&mut self, netbootd: &Path, log: &str) -> Result<usize> {
        if self.fixture == Fixture::ProxyBesideVenue {
            self.start_venue_dhcp()?;
        }
        // Where `serve` runs, whose bridge holds the server's address; its hashes of the store's files
        // kept beside the shared store, so that each is hashed once per run rather than once per lab.
        let netbootd_path = netbootd.to_str().context("netbootd path")?;
        let mut check = self.lab.in_netns(netbootd_path);
        check
            .arg("check")
            .arg("--config")
            .arg(&self.master)
            .arg("--state-dir")
            .arg(self.plan.netboot.store.with_extension("check"))
            .args(["--tftp-root", TFTP_ROOT]);
        let output = check.output().context("running netbootd check")?;
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        ensure!(output.status.success(), "netbootd check failed:\n{said}");
        let state = self.lab.dir().join("state");
        fs::create_dir_all(&state)?;
        let mut serve = self.lab.in_netns(netbootd_path);
        serve
            .arg("serve")
            .arg("--config")
            .arg(&self.master)
            .arg("--state-dir")
            .arg(&state)
            .args(["--tftp-root", TFTP_ROOT])
            .env("RUST_LOG", log);
        let running = self.lab.spawn(serve, "netbootd.log")?;
        self.started = Instant::now();
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.get("/healthz").is_none() {
            ensure!(
                Instant::now() < deadline,
                "netbootd did not answer /healthz"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        // The hosts' journals, received as the box's lectern-journal-remote.service receives them.
        let mut receiver = self.lab.in_netns(netbootd_path);
        receiver
            .arg("journal-remote")
            .arg("--config")
            .arg(&self.master)
            .arg("--state-dir")
            .arg(&state)
            .arg("--key-dir")
            .arg(self.lab.dir().join("journal-receiver"))
            .arg("--output")
            .arg(self.journals());
        self.lab.spawn(receiver, "journal-remote.log")?;
        Ok(running)
    }

    /// Where the lab's receiver keeps the hosts' journals, one file per host address (the box's
    /// /var/log/journal/remote).
    pub fn journals(&self) -> PathBuf {
        self.lab.dir().join("journals")
    }

    /// `journalctl --directory <journals> ARGS…`: what the box received of the hosts' journals.
    pub fn received_journal(&self, args: &[&str]) -> Result<Vec<u8>> {
        let output = Command::new("journalctl")
            .arg("--directory")
            .arg(self.journals())
            .args(args)
            .output()
            .context("running journalctl")?;
        ensure!(
            output.status.success(),
            "journalctl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(output.stdout)
    }

    /// Switches `hostname` (a netbooted host of the plan) on, with `firmware`, its SMBIOS the identity
    /// the master file gives it, and its TPM if the master file binds it to one.
    pub fn power_on(&mut self, hostname: &str, firmware: Firmware) -> Result<()> {
        let identity = self
            .plan
            .host(hostname)
            .and_then(|host| host.identity.clone());
        let smbios = identity_smbios(identity.as_ref());
        let tpm = self.tpms.remove(hostname);
        let started = self.start_guest(hostname, firmware, |lab, mac| {
            lab.pxe_boot(mac, firmware, &smbios, tpm.as_ref())
        });
        self.tpms.extend(tpm.map(|tpm| (hostname.to_owned(), tpm)));
        started
    }

    /// Like [`RoomLab::power_on`], the firmware presenting `identity` instead (a spoofer's, or none),
    /// and no TPM.
    pub fn power_on_as(
        &mut self,
        hostname: &str,
        firmware: Firmware,
        identity: Option<&HardwareIdentity>,
    ) -> Result<()> {
        let smbios = identity_smbios(identity);
        self.start_guest(hostname, firmware, |lab, mac| {
            lab.pxe_boot(mac, firmware, &smbios, None)
        })
    }

    /// Starts `hostname` (a host of the plan with a MAC) from `disk` instead of the network, UEFI, named by
    /// its firmware when `firmware_names_it` (else it is known by its MAC alone).
    pub fn power_on_disk(
        &mut self,
        hostname: &str,
        disk: &Path,
        format: &str,
        firmware_names_it: bool,
    ) -> Result<()> {
        let identity = self
            .plan
            .host(hostname)
            .and_then(|host| host.identity.as_ref());
        let smbios: Vec<String> = (firmware_names_it.then(|| name_smbios(hostname)))
            .into_iter()
            .chain(identity_smbios(identity))
            .collect();
        self.start_guest(hostname, Firmware::Uefi, |lab, mac| {
            lab.disk_boot(mac, disk, format, &smbios)
        })
    }

    fn start_guest(
        &mut self,
        hostname: &str,
        firmware: Firmware,
        start: impl FnOnce(&mut Lab, &str) -> Result<usize>,
    ) -> Result<()> {
        let host = self
            .plan
            .host(hostname)
            .with_context(|| format!("{hostname} is not in the master file"))?;
        let mac = host.mac.with_context(|| format!("{hostname} has no MAC"))?;
        let role = host.role;
        let powered_on = SystemTime::now();
        let running = start(&mut self.lab, &mac.to_string())?;
        // Under emulation the mixer is the room's bottleneck (it mixes, records and is probed): the others,
        // lighter and able to catch up, yield the CPU to it. (Two vCPUs for the mixer and a lower priority
        // for the others starved their boots: the mixer took both host cores.)
        if role != Role::Mixer {
            self.lab.deprioritize(running, 5)?;
        }
        self.guests.retain(|g| g.hostname != hostname);
        self.guests.push(Guest {
            hostname: hostname.to_owned(),
            role,
            firmware,
            running: Some(running),
            powered_on,
            cpu_at_up: Cell::new(None),
        });
        Ok(())
    }

    /// qemu's CPU seconds so far for `hostname`'s guest, while it runs.
    pub fn guest_cpu_seconds(&self, hostname: &str) -> Option<f64> {
        let index = self.guest(hostname).ok()?.running?;
        self.lab.cpu_seconds(index)
    }

    /// Switches `hostname` off (its power cord pulled).
    pub fn power_off(&mut self, hostname: &str) -> Result<()> {
        if let Some(index) = self.guest(hostname)?.running {
            self.lab.stop(index)?;
        }
        self.guests.retain(|g| g.hostname != hostname);
        Ok(())
    }

    /// Pulls `hostname`'s power cord and switches it on again.
    pub fn reboot(&mut self, hostname: &str) -> Result<()> {
        let guest = self.guest(hostname)?;
        let firmware = guest.firmware;
        if let Some(index) = guest.running {
            self.lab.stop(index)?;
        }
        self.power_on(hostname, firmware)
    }

    /// The netbooted hosts of room `slug` and the streaming backend(s), the mixer first.
    pub fn room_hosts(&self, slug: &str) -> Result<Vec<String>> {
        ensure!(
            self.plan.room(slug).is_some(),
            "there is no room {slug:?} in the master file"
        );
        let mut hosts: Vec<&lectern_master::Host> = (self.plan.netbooted())
            .filter(|h| h.room.as_deref() == Some(slug) || h.role == Role::StreamingBackend)
            .collect();
        hosts.sort_by_key(|h| h.role != Role::Mixer);
        Ok(hosts.into_iter().map(|h| h.hostname.clone()).collect())
    }

    /// What a viewer gets from room `slug`: each rendition as ffprobe sees it and the main one decoded.
    pub fn stream_summary(&self, slug: &str) -> Result<String> {
        let room = self.plan.room(slug).context("no such room")?;
        let hls = self.backend_hls(slug)?;
        let mut out = format!(
            "HLS: {hls}
"
        );
        for (rendition, url) in room.renditions.iter().zip(self.rendition_urls(slug)?) {
            let streams = match self.lab.probe_streams(&url) {
                Ok(streams) => (streams.iter())
                    .map(|(kind, codec, w, h, rate)| match kind.as_str() {
                        "video" => format!("{codec} {w}x{h}"),
                        _ => format!("{codec} {rate} Hz"),
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
                Err(error) => format!("{error:#}"),
            };
            let _ = writeln!(out, "  {:<6} {url}: {streams}", rendition.name);
        }
        let check = self.lab.media_check(&self.rendition_urls(slug)?[0], 6)?;
        let _ = writeln!(
            out,
            "  6 s of the main rendition: {} frames, mean volume {}, black {:.1} s, frozen {:.1} s: {}",
            check.frames,
            check
                .mean_volume_db
                .map_or("none".into(), |db| format!("{db:.1} dB")),
            check.black_seconds,
            check.frozen_seconds,
            check.problem().unwrap_or_else(|| "the room's mix".into())
        );
        Ok(out)
    }

    /// Each rendition's playlist of room `slug` on the backend, the main one first.
    pub fn rendition_urls(&self, slug: &str) -> Result<Vec<String>> {
        let hls = self.backend_hls(slug)?;
        let room = self.plan.room(slug).context("no such room")?;
        Ok((room.renditions.iter())
            .map(|r| hls.replace(&format!("{slug}.m3u8"), &format!("{}/index.m3u8", r.stream)))
            .collect())
    }

    /// The backend's HLS of room `slug` as the plan says it must be: its master playlist lists every
    /// rendition, and ffprobe finds each one H.264 at its size with AAC at the room's audio rate.
    pub fn check_renditions(&self, slug: &str) -> Result<()> {
        let room = self
            .plan
            .room(slug)
            .with_context(|| format!("no room {slug}"))?;
        let hls = room.hls_url.as_deref().context("no hls_url")?;
        let master_playlist = self.curl(hls).context("the master playlist")?;
        for (rendition, url) in room.renditions.iter().zip(self.rendition_urls(slug)?) {
            ensure!(
                master_playlist.contains(&format!("{}/index.m3u8", rendition.stream)),
                "the master playlist does not list {}:\n{master_playlist}",
                rendition.stream
            );
            let streams = self.lab.probe_streams(&url)?;
            let video = (
                "video".to_owned(),
                "h264".to_owned(),
                u64::from(rendition.width),
                u64::from(rendition.height),
                0,
            );
            let audio = (
                "audio".to_owned(),
                "aac".to_owned(),
                0,
                0,
                u64::from(room.video.audio_rate),
            );
            ensure!(
                streams.contains(&video) && streams.contains(&audio),
                "{url}: {streams:?}, wanted {video:?} and {audio:?}"
            );
            eprintln!("{url}: {streams:?}");
        }
        Ok(())
    }

    /// Whether the backend serves every rendition of room `slug` (the encoder pushed its first segments).
    pub fn streaming(&self, slug: &str) -> Result<bool> {
        Ok(self
            .rendition_urls(slug)?
            .iter()
            .all(|url| self.curl(url).is_some()))
    }

    /// Room `slug`'s HLS playlist on this LAN's streaming backend: the path of `hls_url` at the backend's
    /// address (the public `hls_url` is usually a frontend in front of it).
    pub fn backend_hls(&self, slug: &str) -> Result<String> {
        let backend = (self.plan.hosts.iter())
            .find(|h| h.role == Role::StreamingBackend)
            .context("the master file has no streaming-backend")?;
        let lectern_master::RoleConfig::StreamingBackend(config) = &backend.config else {
            bail!("{} has no backend config", backend.hostname);
        };
        Ok(format!(
            "http://{}{}{slug}.m3u8",
            backend.address, config.hls_path
        ))
    }

    pub fn guest(&self, hostname: &str) -> Result<&Guest> {
        self.guests
            .iter()
            .find(|g| g.hostname == hostname)
            .with_context(|| format!("{hostname} was never switched on"))
    }

    /// Seconds since netbootd started.
    pub fn elapsed(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// GETs `path` from netbootd; `None` unless it answers 2xx.
    pub fn get(&self, path: &str) -> Option<String> {
        self.curl(&format!("{}{path}", self.plan.netboot.base_url))
    }

    /// GETs `path` from netbootd's operator views (`/api/hosts`, `/metrics`), which listen on the
    /// lab's loopback as on the production box's.
    pub fn operator(&self, path: &str) -> Option<String> {
        self.curl(&format!("{}{path}", self.plan.netboot.operator_url))
    }

    /// GETs `url` from inside the lab; `None` unless it answers 2xx.
    pub fn curl(&self, url: &str) -> Option<String> {
        let output = self
            .lab
            .in_netns("curl")
            .args(["-sf", "-m", "10", url])
            .output()
            .ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// netbootd's `/api/hosts` record of `hostname` (null if none yet).
    pub fn record(&self, hostname: &str) -> Value {
        let hosts: Value = self
            .operator("/api/hosts")
            .and_then(|body| serde_json::from_str(&body).ok())
            .unwrap_or(Value::Null);
        hosts
            .as_array()
            .and_then(|hosts| hosts.iter().find(|h| h["hostname"] == hostname).cloned())
            .unwrap_or(Value::Null)
    }

    /// One line per switched-on host: role, the last boot phase reached, state and problems.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{:>5.0} s  {:<18} {:<18} {:<12} {:<9} problems\n",
            self.elapsed(),
            "host",
            "role",
            "phase",
            "state"
        );
        for guest in &self.guests {
            let record = self.record(&guest.hostname);
            let phase = PHASES
                .iter()
                .rev()
                .find(|phase| record[**phase].is_string())
                .copied()
                .unwrap_or("powered on");
            let state = record["state"].as_str().unwrap_or("-");
            let problems = record["problems"]
                .as_array()
                .map(|p| {
                    p.iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join("; ")
                })
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "         {:<18} {:<18} {:<12} {:<9} {problems}",
                guest.hostname,
                guest.role.as_str(),
                phase,
                state
            );
        }
        out
    }

    /// Polls `done` every 3 s until it says yes, printing the table every `show` (if any); fails after
    /// `timeout` with `what` and the table.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        show: Option<Duration>,
        mut done: impl FnMut(&Self) -> Result<bool>,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut shown = Instant::now();
        loop {
            if done(self)? {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{what}: not within {} s\n{}",
                    timeout.as_secs(),
                    self.table()
                );
            }
            if let Some(every) = show {
                if shown.elapsed() >= every {
                    eprint!("{}", self.table());
                    shown = Instant::now();
                }
            }
            std::thread::sleep(Duration::from_secs(3));
        }
    }

    /// Whether every switched-on host has reported its role up in its current boot (noting the CPU time
    /// each took to get there).
    pub fn all_up(&self) -> bool {
        let mut all = true;
        for guest in &self.guests {
            if self.record(&guest.hostname)["state"] == "up" {
                if guest.cpu_at_up.get().is_none() {
                    let index = guest.running;
                    guest
                        .cpu_at_up
                        .set(index.and_then(|i| self.lab.cpu_seconds(i)));
                }
            } else {
                all = false;
            }
        }
        all
    }

    /// Per host: seconds from power-on to each boot phase netbootd stamped, and qemu's CPU seconds until
    /// it was first seen up. A table for BENCHMARKS.md.
    pub fn boot_phases(&self) -> String {
        let mut out = String::from("| host | role | firmware |");
        for phase in PHASES {
            let _ = write!(out, " {phase} |");
        }
        out.push_str(" CPU-s to up |\n|---|---|---|");
        out.push_str(&"---|".repeat(PHASES.len() + 1));
        out.push('\n');
        for guest in &self.guests {
            let record = self.record(&guest.hostname);
            let on = guest
                .powered_on
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let _ = write!(
                out,
                "| {} | {} | {:?} |",
                guest.hostname, guest.role, guest.firmware
            );
            for phase in PHASES {
                match record[phase].as_str().and_then(unix_seconds) {
                    Some(at) => {
                        let _ = write!(out, " {} |", at.saturating_sub(on));
                    }
                    None => out.push_str(" - |"),
                }
            }
            match guest.cpu_at_up.get() {
                Some(cpu) => {
                    let _ = writeln!(out, " {cpu:.0} |");
                }
                None => out.push_str(" - |\n"),
            }
        }
        out
    }

    /// Runs `command` on `hostname` over ssh as root; its stdout, or the error with stderr.
    pub fn ssh(&self, hostname: &str, command: &str) -> Result<String> {
        Ok(String::from_utf8_lossy(&self.ssh_bytes(hostname, command)?).into_owned())
    }

    /// [`RoomLab::ssh`], for binary output. Any host of the plan with a fixed address, whoever
    /// started it (this lab, or `netbootd vms`).
    pub fn ssh_bytes(&self, hostname: &str, command: &str) -> Result<Vec<u8>> {
        let ip = (self.plan.host(hostname))
            .and_then(|host| host.ip)
            .with_context(|| format!("{hostname} has no fixed address in the master file"))?;
        self.ssh_to(ip, command)
            .with_context(|| format!("ssh {hostname}"))
    }

    /// Runs `command` as root on the guest at `ip` (one with no fixed address, e.g. a cloud instance).
    pub fn ssh_to(&self, ip: Ipv4Addr, command: &str) -> Result<Vec<u8>> {
        let output = self
            .lab
            .in_netns("ssh")
            .arg("-i")
            .arg(&self.ssh_key)
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "ConnectTimeout=10",
                "-o",
                "LogLevel=ERROR",
                "-o",
                "BatchMode=yes",
                &format!("root@{ip}"),
                command,
            ])
            .output()?;
        ensure!(
            output.status.success(),
            "ssh {ip} {command:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(output.stdout)
    }

    /// The address netbootd leased to `mac` (a machine the master file does not list), if any.
    pub fn leased_address(&self, mac: &str) -> Option<Ipv4Addr> {
        let state = self.lab.dir().join("state");
        let leases = lectern_netboot::dhcp::pool::leases_on_disk(
            state.join(lectern_netboot::server::LEASE_FILE),
        )
        .ok()?;
        (leases.into_iter())
            .find(|(leased, _)| leased.to_string().eq_ignore_ascii_case(mac))
            .map(|(_, ip)| ip)
    }

    /// netbootd's log, every host's record and the end of every guest's logs.
    /// The state directory of the lab's `netbootd vms`, if it runs one (each local VM's console in
    /// `vms/<host>.serial.log`, which [`RoomLab::diagnostics`] shows).
    pub fn local_vm_state(&self) -> PathBuf {
        self.lab.dir().join("vm-state")
    }

    pub fn diagnostics(&self) -> String {
        let mut out = String::new();
        let netbootd = fs::read_to_string(self.lab.dir().join("netbootd.log")).unwrap_or_default();
        let lines: Vec<&str> = netbootd.lines().collect();
        let tail = &lines[lines.len().saturating_sub(80)..];
        let _ = writeln!(out, "--- netbootd log (end) ---\n{}", tail.join("\n"));
        let _ = writeln!(
            out,
            "--- /api/hosts ---\n{}",
            self.operator("/api/hosts").unwrap_or_default()
        );
        let local_vm_consoles = fs::read_dir(self.local_vm_state().join("vms"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| entry.path())
            .filter(|path| path.to_string_lossy().ends_with(".serial.log"));
        out.push_str(&crate::log_tails(
            self.lab.guest_logs().into_iter().chain(local_vm_consoles),
            40,
        ));
        out
    }
}

/// Seconds since 1970 of netbootd's `2026-12-01T10:06:25Z` stamps.
pub fn unix_seconds(stamp: &str) -> Option<u64> {
    let number = |range: std::ops::Range<usize>| stamp.get(range)?.parse::<i64>().ok();
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    // Days from civil (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (month + if month > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + hour * 3600 + minute * 60 + second).ok()
}

/// The master file at `master` copied into `dir` with `[netboot] store` pointing at `store`, `[secrets]
/// file` at the original's `secrets` file and `ssh_key` authorized on every host; in proxy mode, with no
/// dynamic range and the encoder bound to the TPM `tpm_ek` names, for [`Fixture::ProxyBesideVenue`].
fn copy_master(
    master: &Path,
    secrets: &Path,
    dir: &Path,
    store: &Path,
    ssh_key: &str,
    fixture: Fixture,
    tpm_ek: Option<&str>,
) -> Result<PathBuf> {
    let mut text = fs::read_to_string(master)?;
    if let Some(tpm_ek) = tpm_ek {
        text = move_encoder_to_bare_metal(&text, tpm_ek)?;
    }
    let store = fs::canonicalize(store)?;
    let proxy = fixture == Fixture::ProxyBesideVenue;
    let secrets = if fixture == Fixture::CloudEncoder {
        text = move_encoder_to_the_cloud(&text)?;
        let copy = dir.join("secrets.toml");
        let mut secrets_text = fs::read_to_string(secrets)?;
        secrets_text.push_str(&format!(
            "\n[contribution]\nlameere = {CLOUD_PASSPHRASE:?}\n"
        ));
        fs::write(&copy, secrets_text)?;
        fs::set_permissions(&copy, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        copy
    } else {
        secrets.to_owned()
    };
    let mut replaced = 0;
    let text: String = text
        .lines()
        .filter(|line| !(proxy && line.starts_with("range = [")))
        .map(|line| {
            let line = if line.starts_with("store = ") {
                replaced += 1;
                format!("store = {:?}", store.display().to_string())
            } else if line.starts_with("file = ") {
                replaced += 1;
                format!("file = {:?}", secrets.display().to_string())
            } else if line.starts_with("authorized_keys = [") {
                replaced += 1;
                line.replacen('[', &format!("[{ssh_key:?}, "), 1)
            } else if proxy && line.starts_with("mode = \"authoritative\"") {
                replaced += 1;
                "mode = \"proxy\"".to_owned()
            } else {
                line.to_owned()
            };
            line + "\n"
        })
        .collect();
    let wanted = if proxy { 4 } else { 3 };
    ensure!(
        replaced == wanted,
        "{} needs one `store = `, one `file = `, one `authorized_keys = [` line{}",
        master.display(),
        if proxy {
            " and `mode = \"authoritative\"`"
        } else {
            ""
        }
    );
    let served = dir.join("master.toml");
    fs::write(&served, text)?;
    Ok(served)
}

/// One stream as ffprobe sees it: `(codec_type, codec_name, width, height, sample_rate)`.
pub type StreamInfo = (String, String, u64, u64, u64);

/// What ffmpeg's analysis filters saw in a stretch of a stream.
#[derive(Debug, Clone, Default)]
pub struct MediaCheck {
    pub seconds: f64,
    pub frames: u64,
    pub mean_volume_db: Option<f64>,
    pub black_seconds: f64,
    pub frozen_seconds: f64,
}

impl MediaCheck {
    /// Why this stretch is not the room's live mix (silent, black, frozen, empty), or `None`.
    pub fn problem(&self) -> Option<String> {
        let mut problems = Vec::new();
        if self.frames < 2 {
            problems.push(format!("{} frames", self.frames));
        }
        match self.mean_volume_db {
            Some(db) if db > -60.0 => {}
            Some(db) => problems.push(format!("silent (mean {db:.1} dB)")),
            None => problems.push("no audio".into()),
        }
        if self.black_seconds > self.seconds * 0.5 {
            problems.push(format!(
                "black for {:.1} of {:.1} s",
                self.black_seconds, self.seconds
            ));
        }
        if self.frozen_seconds > self.seconds * 0.8 {
            problems.push(format!(
                "frozen for {:.1} of {:.1} s",
                self.frozen_seconds, self.seconds
            ));
        }
        (!problems.is_empty()).then(|| problems.join(", "))
    }
}

impl Lab {
    /// Decodes `seconds` of `url` (from inside the lab) through volumedetect, blackdetect and freezedetect.
    pub fn media_check(&self, url: &str, seconds: u32) -> Result<MediaCheck> {
        let output = self
            .in_netns("ffmpeg")
            .args([
                "-hide_banner",
                "-nostdin",
                "-rw_timeout",
                "20000000",
                "-i",
                url,
            ])
            .args(["-t", &seconds.to_string()])
            .args([
                "-af",
                "volumedetect",
                "-vf",
                "blackdetect=d=0.5:pix_th=0.10,freezedetect=n=-60dB:d=1",
                "-f",
                "null",
                "-",
            ])
            .output()
            .context("running ffmpeg (apt-get install ffmpeg)")?;
        let log = String::from_utf8_lossy(&output.stderr);
        ensure!(
            output.status.success(),
            "ffmpeg could not read {url}:\n{log}"
        );
        Ok(parse_analysis(&log, f64::from(seconds)))
    }

    /// Every stream of `url` as ffprobe sees it.
    pub fn probe_streams(&self, url: &str) -> Result<Vec<StreamInfo>> {
        let output = self
            .in_netns("ffprobe")
            .args(["-v", "error", "-rw_timeout", "20000000", "-of", "json"])
            .args([
                "-show_entries",
                "stream=codec_type,codec_name,width,height,sample_rate",
                url,
            ])
            .output()
            .context("running ffprobe (apt-get install ffmpeg)")?;
        ensure!(
            output.status.success(),
            "ffprobe {url}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let json: Value = serde_json::from_slice(&output.stdout)?;
        let number = |v: &Value| v.as_u64().or_else(|| v.as_str()?.parse().ok()).unwrap_or(0);
        Ok(json["streams"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| {
                (
                    s["codec_type"].as_str().unwrap_or_default().to_owned(),
                    s["codec_name"].as_str().unwrap_or_default().to_owned(),
                    number(&s["width"]),
                    number(&s["height"]),
                    number(&s["sample_rate"]),
                )
            })
            .collect())
    }

    /// Loads `url` in headless Chromium inside the lab for `seconds`; the page's title, text, the
    /// `<video>`'s currentTime sampled every second, and a screenshot at `screenshot`.
    pub fn browse(&self, url: &str, seconds: u32, screenshot: &Path) -> Result<Value> {
        let script = self.dir().join("browser_probe.py");
        fs::write(
            &script,
            include_str!("../../netboot-server/tests/lab/browser_probe.py"),
        )?;
        let output = self
            .in_netns("python3")
            .arg(&script)
            .arg(url)
            .arg(seconds.to_string())
            .arg(screenshot)
            .output()
            .context("running the browser probe (apt-get install chromium)")?;
        ensure!(
            output.status.success(),
            "browser probe of {url}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(serde_json::from_slice(&output.stdout)?)
    }
}

/// Reads ffmpeg's analysis filter output (stderr) for a stretch of `seconds`.
fn parse_analysis(log: &str, seconds: f64) -> MediaCheck {
    let after = |line: &str, key: &str| -> Option<f64> {
        let rest = &line[line.find(key)? + key.len()..];
        rest.split_whitespace()
            .next()?
            .trim_end_matches("dB")
            .parse()
            .ok()
    };
    let mut check = MediaCheck {
        seconds,
        ..MediaCheck::default()
    };
    for line in log.lines() {
        if let Some(db) = after(line, "mean_volume:") {
            check.mean_volume_db = Some(db);
        }
        if let Some(d) = after(line, "black_duration:") {
            check.black_seconds += d;
        }
        if let Some(d) = after(line, "freeze_duration:") {
            check.frozen_seconds += d;
        }
        // The progress line: "frame=  123 fps=..."; the last one counts.
        if let Some(frames) = line
            .rsplit("frame=")
            .next()
            .filter(|_| line.contains("frame="))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        {
            check.frames = frames;
        }
    }
    // A freeze still going on at the end has a start but no duration line.
    if let Some(start) = log
        .lines()
        .rev()
        .find(|l| l.contains("freeze_start:") || l.contains("freeze_end:"))
        .filter(|l| l.contains("freeze_start:"))
        .and_then(|l| after(l, "freeze_start:"))
    {
        check.frozen_seconds += (seconds - start).max(0.0);
    }
    check
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_served_master_file_points_at_the_store_the_secrets_and_the_test_key() {
        crate::fixture_plan().unwrap(); // makes the fixture's secrets file 0600
        let fixture = crate::repo().join("builder/tests/fixtures/master.toml");
        let original = lectern_master::load(&fixture).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let key =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHRoZS10ZXN0cy1rZXktbm90LWEtcmVhbC1vbmU room-test";
        let ek = "000b29aeca4fd2d0de87d60b5f7f59fb57a9a35866142ef07387683be71c747dc4cd";
        let serve = |variant| {
            let tpm_ek = (variant == Fixture::ProxyBesideVenue).then_some(ek);
            let served = copy_master(
                &fixture,
                &original.secrets_file,
                dir.path(),
                dir.path(),
                key,
                variant,
                tpm_ek,
            );
            lectern_master::load(&served.unwrap()).unwrap()
        };
        let plan = serve(Fixture::AsMasterFile);
        assert_eq!(
            plan.netboot.store,
            std::fs::canonicalize(dir.path()).unwrap()
        );
        assert_eq!(plan.secrets_file, original.secrets_file);
        assert_eq!(plan.ssh_authorized_keys[0], key);
        assert_eq!(
            plan.ssh_authorized_keys.len(),
            original.ssh_authorized_keys.len() + 1
        );
        assert!(plan.network.dhcp.range.is_some());

        // Beside a venue's DHCP: proxy mode, no range of its own.
        let proxy = serve(Fixture::ProxyBesideVenue);
        assert_eq!(
            proxy.network.dhcp.mode,
            lectern_master::model::DhcpMode::Proxy
        );
        assert_eq!(proxy.network.dhcp.range, None);
        // Its encoder a machine at the venue, bound to its TPM.
        let encoder = proxy.host("lameere-enc").unwrap();
        assert_eq!(encoder.placement, lectern_master::model::Where::BareMetal);
        let identity = encoder.identity.as_ref().unwrap();
        assert_eq!(identity.tpm_ek.as_deref(), Some(ek));
        assert!(identity.uuid.is_some());

        // The encoder in the cloud, fed by the mixer's encrypted contribution.
        let cloud = serve(Fixture::CloudEncoder);
        let encoder = cloud.host("lameere-enc").unwrap();
        assert_eq!(encoder.cloud().unwrap().region, "eu-west-1");
        assert_eq!((encoder.mac, encoder.netboot), (None, false));
        let lectern_master::RoleConfig::Mixer(mixer) = &cloud.host("lameere-mixer").unwrap().config
        else {
            panic!("the mixer is a mixer");
        };
        assert_eq!(mixer.contributions.len(), 1);
        let url = lectern_master::with_secrets_revealed(|| {
            serde_json::to_string(&mixer.contributions[0].url)
        })
        .unwrap();
        assert!(url.contains(CLOUD_PASSPHRASE), "{url}");
    }

    #[test]
    fn reads_netbootds_stamps() {
        assert_eq!(unix_seconds("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(unix_seconds("2026-12-01T10:06:25Z"), Some(1_796_119_585));
        assert_eq!(unix_seconds("2024-02-29T23:59:59Z"), Some(1_709_251_199));
        assert_eq!(unix_seconds("not a time"), None);
    }

    #[test]
    fn reads_ffmpegs_analysis() {
        let log = "\
[blackdetect @ 0x1] black_start:0 black_end:1.2 black_duration:1.2
[freezedetect @ 0x2] lavfi.freezedetect.freeze_start: 2
[freezedetect @ 0x2] lavfi.freezedetect.freeze_duration: 1.5
[freezedetect @ 0x2] lavfi.freezedetect.freeze_end: 3.5
[freezedetect @ 0x2] lavfi.freezedetect.freeze_start: 5
frame=   90 fps= 30 q=-0.0 Lsize=N/A time=00:00:06.00 bitrate=N/A speed=1x
[Parsed_volumedetect_0 @ 0x3] mean_volume: -23.4 dB
[Parsed_volumedetect_0 @ 0x3] max_volume: -12.0 dB
";
        let check = parse_analysis(log, 6.0);
        assert_eq!(check.frames, 90);
        assert_eq!(check.mean_volume_db, Some(-23.4));
        assert!((check.black_seconds - 1.2).abs() < 1e-9);
        assert!((check.frozen_seconds - 2.5).abs() < 1e-9, "{check:?}");
        assert_eq!(check.problem(), None);
        let silent = MediaCheck {
            mean_volume_db: Some(-91.0),
            frozen_seconds: 6.0,
            ..check
        };
        assert_eq!(
            silent.problem().unwrap(),
            "silent (mean -91.0 dB), frozen for 6.0 of 6.0 s"
        );
    }
}
