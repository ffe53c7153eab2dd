//! The room test: one room of the fixture master file streams, end to end, from real firmware to a browser.
//!
//! Five TCG guests PXE-boot from the real `netbootd --config master.toml` (the mixer first): the mixer, the camera
//! (`test` capture), the slides (v4l2 from the kernel's `vivid` virtual capture device, loaded through the
//! machine's `kernel_args`; UEFI: OVMF's PXE fetches `snponly.efi` over TFTP), the netbooted encoder and the
//! streaming backend. Then, on that one booted room:
//! 1. every host reaches `up` with every boot phase stamped;
//! 2. media: ffprobe reads the backend's HLS (main rendition and the variant) at the plan's sizes with AAC at the
//!    plan's rate, and the decoded main rendition is the room's mix: not black, not silent, not frozen; the
//!    mixer's recording is a growing file with the same checks;
//! 3. the watch page plays in headless Chromium (its player's position advances); a screenshot is kept;
//! 4. the operator blanks the stream on voctocore's control port: the mixer reports `degraded` saying its
//!    live output is frozen/silent, and the stream comes back when set live again;
//! 5. a wrong stream key: the backend refuses a publish with it; an encoder pushing with it reports
//!    `degraded`, naming its unit;
//! 6. the mixer loses power mid-stream: sources and encoder reconnect by themselves; the time until the HLS
//!    stream carries the mix again is measured.
//!
//! LECTERN_ROOM_TEST=1 LECTERN_IMAGE_TESTS=1, root. `LECTERN_KEEP_LAB=1` keeps the lab directory (logs,
//! screenshot).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use lectern_qemu_tests::Firmware;
use lectern_qemu_tests::room::{Fixture, PHASES, RoomLab, with_fixture_lab};
use serde_json::Value;

const MIXER: &str = "lameere-mixer";
const ENCODER: &str = "lameere-enc";
const BACKEND: &str = "stream-backend";
const ROOM: &str = "lameere";
/// (hostname, firmware): every host of the fixture's room.
const GUESTS: [(&str, Firmware); 5] = [
    (MIXER, Firmware::Bios),
    ("lameere-source-1", Firmware::Bios),
    ("lameere-source-2", Firmware::Uefi),
    (ENCODER, Firmware::Bios),
    (BACKEND, Firmware::Bios),
];

#[test]
fn a_room_streams_from_power_on_to_the_browser() {
    // Opt-in for now: five TCG guests need more than two host cores. The mixer's voctocore alone takes
    // about one before any source connects, the others' boots then take 10 minutes and more, and voctocore
    // drops its slower clients (recorder, media monitor) as "too slow", so the mixer never reports `up`:
    // the suite would fail on the machine, not on lectern. Run it with LECTERN_ROOM_TEST=1 (and
    // LECTERN_IMAGE_TESTS=1).
    if std::env::var("LECTERN_ROOM_TEST").as_deref() != Ok("1") {
        eprintln!("skipping: the room test runs with LECTERN_ROOM_TEST=1");
        return;
    }
    with_fixture_lab(env!("CARGO_TARGET_TMPDIR"), Fixture::AsMasterFile, run);
}

fn run(room: &mut RoomLab) -> Result<()> {
    // The mixer first: its start (voctocore scanning GStreamer's plugins on a diskless boot) is the
    // slowest, and under emulation it needs the CPU the others would take. Once its role runs (it reports,
    // degraded until sources feed it) the others boot and connect to it.
    let every = Some(Duration::from_secs(30));
    let (mixer, others) = GUESTS.split_first().context("no guests")?;
    room.power_on(mixer.0, mixer.1)?;
    room.wait_for(
        "the mixer reporting",
        Duration::from_secs(600),
        every,
        |r| Ok(r.record(mixer.0)["state"].is_string()),
    )?;
    for &(hostname, firmware) in others {
        room.power_on(hostname, firmware)?;
    }
    room.wait_for("every host up", Duration::from_secs(900), every, |r| {
        Ok(r.all_up())
    })?;
    eprintln!("every host up after {:.0} s", room.elapsed());
    eprint!("{}", room.table());
    eprint!(
        "boot phases, seconds from power-on:\n{}",
        room.boot_phases()
    );
    for (hostname, firmware) in GUESTS {
        let record = room.record(hostname);
        for phase in PHASES {
            ensure!(
                record[phase].is_string(),
                "{hostname}: no {phase}: {record:#}"
            );
        }
        if let Firmware::Uefi = firmware {
            ensure!(
                record["tftp_file"] == "snponly.efi",
                "{hostname} (UEFI) did not fetch snponly.efi over TFTP: {record:#}"
            );
        }
    }

    let room_plan = room.plan.room(ROOM).context("no room")?.clone();
    // The backend has a rendition's playlist once the encoder has pushed its first segments (the room's
    // playlist of renditions is there as soon as the backend is).
    let urls = room.rendition_urls(ROOM)?;
    let main = urls[0].clone();
    room.wait_for(
        "first HLS segment of every rendition",
        Duration::from_secs(300),
        None,
        |r| r.streaming(ROOM),
    )?;
    let first_segment = room.elapsed();
    eprintln!("first HLS playlist on the backend {first_segment:.0} s after netbootd started");

    // 2. Every rendition: H.264 at its size, AAC at the room's rate.
    room.check_renditions(ROOM)?;
    let check = room.lab.media_check(&main, 8)?;
    eprintln!("main rendition: {check:?}");
    ensure!(
        check.problem().is_none(),
        "the stream is not the room's mix: {}",
        check.problem().unwrap()
    );

    // The recording: a growing MPEG-TS file under the room's recording directory, with the same checks.
    let newest = format!("ls -t {}/*/*.ts | head -n 1", room_plan.recording_dir);
    let file = room.ssh(MIXER, &newest)?.trim().to_owned();
    ensure!(!file.is_empty(), "no recording on the mixer");
    let size = |r: &RoomLab| -> Result<u64> {
        Ok(r.ssh(MIXER, &format!("stat -c %s {file}"))?
            .trim()
            .parse()?)
    };
    let before = size(room)?;
    std::thread::sleep(Duration::from_secs(10));
    let after = size(room)?;
    ensure!(
        after > before,
        "the recording {file} does not grow ({before} → {after} bytes)"
    );
    let copy = room.lab.dir().join("recording.ts");
    let bytes = room.ssh_bytes(MIXER, &format!("cat {file}"))?;
    std::fs::write(&copy, bytes)?;
    let recording = room.lab.media_check(copy.to_str().unwrap(), 6)?;
    eprintln!("recording {file} ({after} bytes): {recording:?}");
    ensure!(
        recording.problem().is_none(),
        "the recording is not the room's mix: {}",
        recording.problem().unwrap()
    );

    // 3. The watch page plays in a browser.
    let watch = room_plan.watch_url.clone().context("no watch_url")?;
    let screenshot = room.lab.dir().join("watch.png");
    let page = room.lab.browse(&watch, 12, &screenshot)?;
    eprintln!("watch page: {page}");
    let times: Vec<f64> = page["times"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_f64)
        .collect();
    ensure!(
        times.len() > 2 && times.last() > times.iter().find(|t| **t > 0.0),
        "the watch page's player does not advance: {page}"
    );
    ensure!(
        page["text"]
            .as_str()
            .is_some_and(|t| t.contains(&room_plan.name)),
        "the watch page does not name the room: {page}"
    );
    keep_artifact(&screenshot);

    // 4. The operator blanks the stream, and sets it live again.
    let control = |r: &RoomLab, command: &str| -> Result<String> {
        r.ssh(
            MIXER,
            &format!(
                "exec 3<>/dev/tcp/127.0.0.1/9999; echo {command} >&3; timeout 5 head -n 1 <&3"
            ),
        )
    };
    let said = control(room, "set_stream_blank pause")?;
    eprintln!("set_stream_blank pause: {said}");
    room.wait_for(
        "mixer degraded while blanked",
        Duration::from_secs(120),
        None,
        |r| {
            let record = r.record(MIXER);
            Ok(record["state"] == "degraded" && problems(&record).contains("live output"))
        },
    )?;
    eprintln!("blanked: {}", room.record(MIXER)["problems"]);
    let said = control(room, "set_stream_live")?;
    eprintln!("set_stream_live: {said}");
    room.wait_for(
        "mixer up again when live",
        Duration::from_secs(120),
        None,
        |r| Ok(r.record(MIXER)["state"] == "up"),
    )?;

    // 5. A wrong stream key: refused by the backend, and an encoder using it reports degraded.
    let push = room_plan.renditions[0].push_url.expose();
    let at = push
        .rfind("key=")
        .context("the fixture's ingest URL has key=")?
        + "key=".len();
    let wrong = format!("{}not-the-key", &push[..at]);
    let refused = room
        .lab
        .in_netns("ffmpeg")
        .args([
            "-hide_banner",
            "-nostdin",
            "-loglevel",
            "error",
            "-re",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=s=320x180:r=5",
            "-t",
            "5",
            "-c:v",
            "libx264",
            "-f",
            "flv",
            &wrong,
        ])
        .output()?;
    ensure!(
        !refused.status.success(),
        "the backend accepted a publish with a wrong key"
    );
    let log = room.ssh(
        BACKEND,
        "journalctl -b --no-pager | grep -i refus | tail -n 3",
    )?;
    ensure!(
        !log.trim().is_empty(),
        "the backend did not log the refused publish"
    );
    eprintln!("backend refused a wrong key: {}", log.trim());
    room.ssh(ENCODER, "cp /etc/lectern/encoder.args /run/encoder.args.good && sed -i 's/key=[^&]*$/key=not-the-key/' /etc/lectern/encoder.args && systemctl restart lectern-encoder")?;
    room.wait_for(
        "encoder degraded with a wrong key",
        Duration::from_secs(180),
        None,
        |r| {
            let record = r.record(ENCODER);
            Ok(record["state"] == "degraded"
                && problems(&record).contains("lectern-encoder.service"))
        },
    )?;
    eprintln!("wrong key: {}", room.record(ENCODER)["problems"]);
    room.ssh(
        ENCODER,
        "cp /run/encoder.args.good /etc/lectern/encoder.args && systemctl restart lectern-encoder",
    )?;
    room.wait_for(
        "encoder up with the right key",
        Duration::from_secs(180),
        None,
        |r| Ok(r.record(ENCODER)["state"] == "up"),
    )?;

    // 6. The mixer loses power mid-stream; everyone else reconnects by themselves.
    let rebooted = Instant::now();
    room.reboot(MIXER)?;
    room.wait_for(
        "the stream back after a mixer reboot",
        Duration::from_secs(900),
        Some(Duration::from_secs(60)),
        |r| {
            Ok(r.record(MIXER)["state"] == "up"
                && r.lab
                    .media_check(&main, 4)
                    .is_ok_and(|c| c.problem().is_none()))
        },
    )?;
    let recovery = rebooted.elapsed().as_secs_f64();
    eprintln!("mixer reboot: the stream carried the mix again {recovery:.0} s after the power cut");
    room.wait_for(
        "every host up after the mixer reboot",
        Duration::from_secs(300),
        None,
        |r| Ok(r.all_up()),
    )?;
    eprint!("{}", room.table());
    Ok(())
}

fn problems(record: &Value) -> String {
    record["problems"].to_string()
}

/// Copies `file` to LECTERN_TEST_ARTIFACTS (if set), so CI keeps it.
fn keep_artifact(file: &std::path::Path) {
    if let Some(dir) = std::env::var_os("LECTERN_TEST_ARTIFACTS") {
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::copy(
            file,
            std::path::Path::new(&dir).join(file.file_name().unwrap()),
        );
    }
}
