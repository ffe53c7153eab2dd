//! A cloud encoder, end to end, with an AWS stand-in on the lab's LAN: `imgbuild publish ec2` uploads the
//! encoder's disk into an EBS snapshot and registers the AMI (moto), `netbootd cloud up` stores the host's
//! layer in SSM and runs the instance, and a UEFI VM with an EC2 instance's firmware boots the snapshot's
//! blocks read back as its volume, beside an IMDSv2 metadata service that serves it the instance's
//! user-data and role. The instance must learn it is `lameere-enc` from that alone, read its layer (its
//! ssh keys, SRT passphrase and stream key) from SSM, and turn the mixer's SRT contribution into the
//! room's HLS on the netbooted streaming backend: ffprobe finds every rendition, and the decoded stream is
//! not black, silent or frozen. The contribution is sent by the mixer's own `contribute` script (from a
//! stand-in of voctocore's live output: five emulated guests, the mixer's among them, are more than this
//! machine's two cores carry; see the room test). No secret is on the disk, in the snapshot or in the
//! user-data; a contribution with a wrong passphrase is refused; `netbootd cloud down` ends it.
//!
//! LECTERN_IMAGE_TESTS=1, root, moto (scripts/install-deps.sh --test).

#[allow(dead_code)]
#[path = "../../cloud/tests/stand_in/mod.rs"]
mod stand_in;

use std::fs::{self, File};
use std::net::Ipv4Addr;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use base64::Engine;
use lectern_cloud::ebs::{self, BLOCK_SIZE};
use lectern_cloud::ec2;
use lectern_master::RoleConfig;
use lectern_qemu_tests::room::{CLOUD_PASSPHRASE, Fixture, RoomLab, with_fixture_lab};
use lectern_qemu_tests::{Firmware, workspace_binary};
use stand_in::{FakeImds, Moto, aws_at, create_instance_profile};

const ROOM: &str = "lameere";
const ENCODER: &str = "lameere-enc";
const BACKEND: &str = "stream-backend";
const MIXER: &str = "lameere-mixer";
/// The instance's NIC: not in the master file (a cloud host has none there), so netbootd leases it a
/// pool address as the VPC's DHCP would.
const INSTANCE_MAC: &str = "52:54:00:00:0e:c2";
const METADATA: &str = "169.254.169.254";
const STREAM_KEY: &str = "lectern-test-secret-7f3a9c";

#[test]
fn a_cloud_encoder_boots_its_ami_learns_who_it_is_and_streams_the_contribution() {
    with_fixture_lab(env!("CARGO_TARGET_TMPDIR"), Fixture::CloudEncoder, run);
}

fn run(room: &mut RoomLab) -> Result<()> {
    // The backend netboots while the instance is published and launched.
    room.power_on(BACKEND, Firmware::Bios)?;
    let server = room.plan.netboot.server_ip;
    let moto = room
        .lab
        .in_netns_thread(move || Moto::start_on(&server.to_string()))?
        .context("moto is required for the cloud encoder test (scripts/install-deps.sh --test)")?;
    let url = moto.url.clone();
    // Publish, then launch: the real commands, against the stand-in.
    let published = cli(
        room,
        "imgbuild",
        &[
            "publish",
            "ec2",
            "--role",
            "encoder",
            "--endpoint-url",
            &url,
        ],
    )?;
    eprintln!("{published}");
    let url_for_iam = url.clone();
    room.lab
        .in_netns_thread(move || create_instance_profile(&url_for_iam, "lectern-encoder"))?;
    cloud(room, "up", &url, "started i-")?;

    // What EC2 would hand the instance: its user-data, and its root volume from the AMI's snapshot.
    let volume = room.lab.dir().join("instance-volume.raw");
    let (user_data, snapshot_blocks) = {
        let (url, volume) = (url.clone(), volume.clone());
        room.lab
            .in_netns_thread(move || instance_boot_media(&url, &volume))??
    };
    eprintln!("user-data:\n{user_data}the volume has {snapshot_blocks} written blocks");
    for secret in [STREAM_KEY, CLOUD_PASSPHRASE] {
        ensure!(!user_data.contains(secret), "a secret in the user-data");
        ensure!(
            !file_contains(&volume, secret.as_bytes())?,
            "a secret on the instance's volume (the AMI)"
        );
    }

    // The instance: EC2 firmware, the metadata service at its link-local address behind the LAN's router.
    room.lab
        .add_address(&format!("{}/24", room.plan.network.gateway))?;
    room.lab.add_address(&format!("{METADATA}/32"))?;
    let imds = room
        .lab
        .in_netns_thread(move || FakeImds::start_on(&format!("{METADATA}:80"), user_data))?;
    let smbios = ["type=1,manufacturer=Amazon EC2,product=c6i.large".to_owned()];
    room.lab.disk_boot(INSTANCE_MAC, &volume, "raw", &smbios)?;

    let started = Instant::now();
    let address = wait(
        Duration::from_secs(300),
        "the instance's DHCP lease",
        || Ok(room.leased_address(INSTANCE_MAC)),
    )?;
    // Logging in proves the layer from SSM is applied: the lab's ssh key comes only in it. Then the
    // role's units start, after network-online.target, which the layer's unit holds back until it is done.
    let seen = wait(
        Duration::from_secs(600),
        "the instance's encoder running",
        || {
            Ok(room
            .ssh_to(
                address,
                "hostname; systemctl is-active lectern-cloud-layer.service lectern-encoder.service; \
                 stat -c %a /etc/lectern/encoder.args; journalctl -b -u lectern-cloud-layer -o cat",
            )
            .ok()
            .map(|out| String::from_utf8_lossy(&out).into_owned())
            .filter(|seen| !seen.contains("activating") && seen.lines().nth(2) != Some("inactive")))
        },
    )?;
    eprintln!(
        "instance {address} up in {:.0} s:\n{seen}",
        started.elapsed().as_secs_f64()
    );
    let lines: Vec<&str> = seen.lines().collect();
    ensure!(
        lines.first() == Some(&ENCODER),
        "the instance is not {ENCODER}:\n{seen}"
    );
    ensure!(
        lines.get(1..3) == Some(&["active", "active"][..]),
        "cloud-layer and encoder not both active:\n{seen}"
    );
    ensure!(
        lines.get(3) == Some(&"600"),
        "encoder.args is not private:\n{seen}"
    );
    ensure!(
        imds.tokenless.load(std::sync::atomic::Ordering::Relaxed) == 0,
        "the instance used IMDSv1"
    );
    ensure!(
        !seen.contains(STREAM_KEY) && !seen.contains(CLOUD_PASSPHRASE),
        "a secret in the cloud-layer journal:\n{seen}"
    );

    // A contribution with the wrong passphrase gets nowhere.
    let contribution = contribution_line(room, address)?;
    let wrong = contribution.replace(CLOUD_PASSPHRASE, "not-the-rooms-passphrase");
    let refused = room
        .lab
        .in_netns("timeout")
        .args(["20", "ffmpeg", "-hide_banner", "-loglevel", "error", "-re"])
        .args(["-f", "lavfi", "-i", "testsrc2=size=320x180:rate=5"])
        .args(["-t", "10", "-c:v", "libx264", "-f", "mpegts"])
        .arg(wrong.split(' ').next().context("no URL")?)
        .output()?;
    // ffmpeg 5.1 reports libsrt's rejection as an I/O error; that the listener is there is shown by the
    // right passphrase streaming next. Not the timeout's 124: it gave up, it was not left hanging.
    let said = String::from_utf8_lossy(&refused.stderr);
    ensure!(
        !refused.status.success() && refused.status.code() != Some(124),
        "a contribution with the wrong passphrase was not refused ({}): {said}",
        refused.status
    );
    eprintln!("wrong passphrase refused: {}", said.trim());

    // The mixer's contribution: its own script, fed by a stand-in of voctocore's live output (which,
    // like voctocore, takes a client again after one leaves).
    let mut live = room.lab.in_netns("setsid");
    live.args(["bash", "-c", "while :; do ffmpeg \"$@\"; done", "live"])
        .args(["-hide_banner", "-loglevel", "error", "-re"])
        .args(["-f", "lavfi", "-i", "testsrc2=size=640x360:rate=5"])
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"])
        .args([
            "-c:v",
            "rawvideo",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "pcm_s16le",
        ])
        .args(["-f", "matroska", "tcp://127.0.0.1:15000?listen=1"]);
    let live = room.lab.spawn(live, "live-output.log")?;
    // Start the mixer's side once its input listens.
    wait(
        Duration::from_secs(30),
        "voctocore's stand-in listening",
        || {
            let listening = room
                .lab
                .in_netns("ss")
                .args(["-Hltn", "sport = :15000"])
                .output()?;
            Ok((!listening.stdout.is_empty()).then_some(()))
        },
    )?;
    let credentials = room.lab.dir().join("mixer-credentials");
    fs::create_dir_all(&credentials)?;
    fs::write(
        credentials.join("contributions"),
        format!("{contribution}\n"),
    )?;
    let mixer = room.plan.host(MIXER).context("no mixer")?;
    let secrets = lectern_master::secrets::secret_values_in(mixer);
    ensure!(
        secrets.iter().any(|s| s == CLOUD_PASSPHRASE),
        "the mixer's secrets: {secrets:?}"
    );
    fs::write(
        credentials.join("redact"),
        format!("# header\n{}\n", secrets.join("\n")),
    )?;
    // /usr/lib/lectern as the mixer's image has it: the base's scripts and the mixer's.
    let scripts = room.lab.dir().join("usr-lib-lectern");
    fs::create_dir_all(&scripts)?;
    for overlay in ["base", "mixer"] {
        let dir =
            lectern_qemu_tests::repo().join(format!("overlays/{overlay}/config/usr/lib/lectern"));
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            fs::copy(entry.path(), scripts.join(entry.file_name()))?;
        }
    }
    let script = scripts.join("contribute");
    // Restarted when it stops, as its unit is (the instance's listener restarts after the refused
    // caller, and a caller that comes meanwhile is turned away).
    let mut contribute = room.lab.in_netns("setsid");
    contribute
        .args(["bash", "-c", "while :; do bash \"$0\"; sleep 3; done"])
        .arg(&script)
        .env("CREDENTIALS_DIRECTORY", &credentials)
        .stdin(Stdio::null());
    room.lab.spawn(contribute, "contribute.log")?;

    room.wait_for(
        "the cloud encoder's HLS on the backend",
        Duration::from_secs(600),
        Some(Duration::from_secs(30)),
        |r| r.streaming(ROOM),
    )?;
    eprintln!(
        "HLS from the cloud encoder {:.0} s after the instance powered on",
        started.elapsed().as_secs_f64()
    );
    room.check_renditions(ROOM)?;
    let urls = room.rendition_urls(ROOM)?;
    let media = room.lab.media_check(&urls[0], 8)?;
    if let Some(problem) = media.problem() {
        bail!("the cloud encoder's stream is {problem}: {media:?}");
    }
    room.lab.stop(live)?;
    // The mixer's ffmpeg names the URL it fails on (the first tries may meet the listener restarting):
    // never with the passphrase in it.
    let said = fs::read_to_string(room.lab.dir().join("contribute.log"))?;
    ensure!(
        !said.contains(CLOUD_PASSPHRASE),
        "the passphrase in the mixer's log:\n{said}"
    );
    eprintln!("the mixer's contribution log:\n{said}");

    cloud(room, "down", &url, "terminated i-")?;
    Ok(())
}

/// Runs the workspace's `binary` (imgbuild, netbootd) on the served master file in the lab's namespace,
/// with stand-in AWS credentials; what it printed.
fn cli(room: &RoomLab, binary: &str, args: &[&str]) -> Result<String> {
    let exe = std::env::current_exe()?;
    let mut command = room
        .lab
        .in_netns(workspace_binary(&exe, binary)?.to_str().context("path")?);
    command
        .arg("--config")
        .arg(&room.master)
        .args(args)
        .env("AWS_ACCESS_KEY_ID", "AKIDLECTERNTEST")
        .env("AWS_SECRET_ACCESS_KEY", "lectern-test-secret");
    let output = command.output()?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    ensure!(output.status.success(), "{binary} {args:?}:\n{said}");
    Ok(said)
}

/// `netbootd cloud ACTION` on the room against the stand-in at `url`; it must say `expected`.
fn cloud(room: &RoomLab, action: &str, url: &str, expected: &str) -> Result<()> {
    let said = cli(
        room,
        "netbootd",
        &["cloud", action, ROOM, "--endpoint-url", url],
    )?;
    ensure!(said.contains(expected), "netbootd cloud {action}: {said}");
    Ok(())
}

/// The launched instance's user-data, and its root volume written from the AMI's snapshot (a sparse file
/// of the volume's size, as EBS presents it); the number of blocks the snapshot holds.
fn instance_boot_media(url: &str, volume: &Path) -> Result<(String, usize)> {
    let aws = aws_at(url);
    let instance = ec2::instances(&aws, &[("tag:lectern:host", &[ENCODER])])?
        .into_iter()
        .next()
        .context("netbootd cloud up started no instance")?;
    let id = instance.require("instanceId")?;
    let answer = ec2::call(
        &aws,
        "DescribeInstanceAttribute",
        &ec2::Params::new()
            .set("InstanceId", id)
            .set("Attribute", "userData"),
    )?;
    let user_data =
        base64::engine::general_purpose::STANDARD.decode(ec2::text(&answer, "value")?)?;
    let snapshot = ec2::snapshots_tagged(&aws, "lectern:role", "encoder")?
        .into_iter()
        .next()
        .context("no snapshot of the encoder's disk")?;
    let volume_gib: u64 = snapshot.require("volumeSize")?.parse()?;
    let file = File::create(volume)?;
    file.set_len(volume_gib << 30)?;
    let blocks = ebs::read_blocks(&aws, snapshot.require("snapshotId")?)?;
    for (index, data) in &blocks {
        file.write_all_at(data, index * BLOCK_SIZE)?;
    }
    Ok((String::from_utf8(user_data)?, blocks.len()))
}

/// The mixer's contribution to the cloud encoder, as its host layer renders it
/// (`overlays/mixer/host/etc/lectern/contributions.j2`), sent to the instance's address.
fn contribution_line(room: &RoomLab, address: Ipv4Addr) -> Result<String> {
    let RoleConfig::Mixer(mixer) = &room.plan.host(MIXER).context("no mixer")?.config else {
        bail!("{MIXER} is not a mixer");
    };
    let feed = mixer
        .contributions
        .first()
        .context("the mixer contributes nothing")?;
    let url: String = lectern_master::with_secrets_revealed(|| serde_json::to_value(&feed.url))?
        .as_str()
        .context("a URL")?
        .to_owned();
    // srt://HOST:PORT?…: the instance's public name would resolve to it; here its address stands in.
    let port_and_options = url
        .strip_prefix("srt://")
        .and_then(|rest| rest.find(':').map(|at| &rest[at..]))
        .with_context(|| format!("not an srt://HOST:PORT URL: {url}"))?;
    Ok(format!(
        "srt://{address}{port_and_options} {} {}",
        feed.video_kbps, feed.audio_kbps
    ))
}

fn file_contains(file: &Path, needle: &[u8]) -> Result<bool> {
    let status = Command::new("grep")
        .args(["-q", "-a", "-F", "--"])
        .arg(std::str::from_utf8(needle)?)
        .arg(file)
        .status()?;
    Ok(status.success())
}

fn wait<T>(limit: Duration, what: &str, mut probe: impl FnMut() -> Result<Option<T>>) -> Result<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = probe()? {
            return Ok(value);
        }
        ensure!(Instant::now() < deadline, "no {what} within {limit:?}");
        std::thread::sleep(Duration::from_secs(1));
    }
}
