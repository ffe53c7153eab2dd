//! Local-VM encoders on the production box, and releases: `netbootd vms` runs the fixture's
//! `where = "local-vm"` encoder from the master file (its MAC, vCPUs and memory), it netboots from the real
//! `netbootd --config` and reports its role. A new bitrate in the master file reaches the running encoder
//! without a reboot: its layer is applied live and only its encoder restarts, with the new arguments.
//! `kill -9` of its qemu brings it back as a new boot. A new
//! encoder release is what its next boot runs, without restarting netbootd; after a rollback
//! (`Store::make_current`, what `imgbuild release use` does) the next boot runs the old image again.
//! SIGHUP (`systemctl reload netbootd-vms`) rereads the master file: unchanged, the VM runs on; with less
//! memory for it, the supervisor restarts it alone, as the file now says. SIGTERM to the supervisor powers
//! the VM off and removes its tap.
//!
//! Beside it, in a lab of its own, runs the hostile LAN's last drill: the streaming backend PXE-boots from
//! the real `netbootd --config master.toml` through a link that loses 10 % of the frames each way and delays
//! every other one by up to 50 ms, so that frames overtake each other (what `tc netem loss 10% delay 25ms
//! 25ms` does; this lab's kernel has no netem, so the lab relays the link in user space). Every phase of
//! the boot crosses it: the firmware's DHCP and iPXE's, iPXE's HTTP, the host layer, the booted system's
//! DHCP, the root image, the secrets and the reports; the backend must reach its role. It shares this
//! binary so that the two run at once: under loss the guest mostly waits for its link.
//!
//! LECTERN_IMAGE_TESTS=1, root.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use lectern_builder::context::Plan as RenderPlan;
use lectern_master::Role;
use lectern_netboot::vms::STATE_FILE;
use lectern_qemu_tests::Firmware;
use lectern_qemu_tests::impairment::Impairment;
use lectern_qemu_tests::room::{Fixture, RoomLab, with_fixture_lab};
use lectern_qemu_tests::{fixture_builder, fixture_builder_with_overlays, netbootd_binary, repo};
use lectern_store::Store;
use serde_json::Value;

const ENCODER: &str = "lameere-enc";
const BACKEND: &str = "stream-backend";

#[test]
fn netbootd_runs_the_local_vms_of_the_master_file() {
    with_fixture_lab(env!("CARGO_TARGET_TMPDIR"), Fixture::AsMasterFile, run);
}

#[test]
fn a_host_boots_to_its_role_through_ten_percent_loss_and_50_ms_of_jitter() {
    with_fixture_lab(
        env!("CARGO_TARGET_TMPDIR"),
        Fixture::AsMasterFile,
        boot_through_a_lossy_link,
    );
}

fn boot_through_a_lossy_link(room: &mut RoomLab) -> Result<()> {
    room.lab.impair_links(Some(Impairment {
        loss: 0.10,
        delay: Duration::ZERO,
        jitter: Duration::from_millis(50),
        seed: 0x1055_7001,
    }));
    room.power_on(BACKEND, Firmware::Bios)?;
    room.wait_for(
        "the backend up through the lossy link",
        Duration::from_secs(1800),
        Some(Duration::from_secs(60)),
        |r| Ok(r.record(BACKEND)["state"] == "up"),
    )?;
    let link = room.lab.link_counts()[0];
    eprintln!(
        "{BACKEND} up after {:.0} s through the lossy link ({}):\n{}",
        room.elapsed(),
        link.summary(),
        room.boot_phases()
    );
    let seen = room.ssh(BACKEND, "hostname; systemctl is-active lectern-role.target")?;
    ensure!(
        seen.lines().collect::<Vec<_>>() == [BACKEND, "active"],
        "the backend is not in its role:\n{seen}"
    );
    // The link did lose its share: the boot crossed a lossy link, not a clean one.
    let (passed, dropped) = link.frames();
    let share = dropped as f64 / (passed + dropped) as f64;
    ensure!(
        (0.08..0.12).contains(&share) && passed > 10_000,
        "the link passed {passed} frames and dropped {dropped}"
    );
    Ok(())
}

fn run(room: &mut RoomLab) -> Result<()> {
    let netbootd = netbootd_binary(&std::env::current_exe()?)?;
    let store_dir = room.plan.netboot.store.clone();
    let state = room.local_vm_state();
    let mut supervisor = room
        .lab
        .in_netns(netbootd.to_str().context("netbootd path")?);
    supervisor
        .arg("vms")
        .arg("--config")
        .arg(&room.master)
        .arg("--state-dir")
        .arg(&state)
        .args(["--accel", "tcg", "--only", ENCODER]);
    let index = room.lab.spawn(supervisor, "vms.log")?;
    let states = state.join("vms").join(STATE_FILE);
    let vm_state = || -> Value {
        std::fs::read_to_string(&states)
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or(Value::Null)
    };

    let every = Some(Duration::from_secs(30));
    room.wait_for(
        "the local VM reporting",
        Duration::from_secs(600),
        every,
        |r| Ok(r.record(ENCODER)["state"].is_string()),
    )?;
    let first = room.record(ENCODER);
    eprintln!("{ENCODER} reported after {:.0} s: {first}", room.elapsed());
    let running = vm_state();
    ensure!(
        running[ENCODER]["starts"] == 1,
        "supervisor state: {running}"
    );
    let pid = running[ENCODER]["pid"].as_u64().context("no qemu pid")?;
    // The master file's size, and the machine's name in its firmware.
    let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline"))?.replace('\0', " ");
    let vm = room
        .plan
        .host(ENCODER)
        .and_then(|h| h.vm())
        .context("not a VM")?;
    for part in [
        format!("-smp {}", vm.vcpus),
        format!("-m {}", vm.memory_mb),
        format!("lectern.host={ENCODER}"),
    ] {
        ensure!(
            cmdline.contains(&part),
            "qemu runs without {part}: {cmdline}"
        );
    }
    let seen = room.ssh(ENCODER, "nproc; hostname")?;
    ensure!(
        seen.lines().next() == Some(vm.vcpus.to_string().as_str()),
        "the VM does not have its {} vCPUs: {seen}",
        vm.vcpus
    );

    // A new bitrate for the room, built into its hosts' layers: the running encoder's next heartbeat
    // hears of its new layer and applies it live, restarting its encoder alone, with the new
    // arguments, in the same boot.
    let master = std::fs::read_to_string(&room.master)?;
    ensure!(
        master.contains("video_kbps = 3000\n"),
        "the fixture's bitrate moved"
    );
    let master = master.replacen("video_kbps = 3000\n", "video_kbps = 2500\n", 1);
    std::fs::write(&room.master, master)?;
    let render = RenderPlan::load(&room.master)?;
    fixture_builder(&store_dir)?.build_host_layers(Role::Encoder.as_str(), &render)?;
    let built = Instant::now();
    room.wait_for(
        "the running encoder on its new layer",
        Duration::from_secs(300),
        every,
        |r| {
            let record = r.record(ENCODER);
            Ok(record["layer"].is_string()
                && record["layer"] == record["serves_layer"]
                && record["layer_update"]["layer"] == record["layer"])
        },
    )?;
    let live = room.record(ENCODER);
    eprintln!(
        "{ENCODER} applied its new layer live {:.0} s after the build: {}",
        built.elapsed().as_secs_f64(),
        live["layer_update"]
    );
    ensure!(live["boot_id"] == first["boot_id"], "it rebooted: {live}");
    let update = &live["layer_update"];
    ensure!(
        update["restarted"] == serde_json::json!(["lectern-encoder.service"])
            && update["needs_reboot"] == serde_json::json!([])
            && update["failed"].is_null(),
        "the live update: {update}"
    );
    // With no mixer in this lab ffmpeg exits and the unit restarts it every few seconds: catch it.
    let ffmpeg = room.ssh(
        ENCODER,
        "for try in $(seq 40); do pgrep -a ffmpeg && exit; sleep 0.5; done; exit 1",
    )?;
    ensure!(
        ffmpeg.contains("-b:v 2500k") && !ffmpeg.contains("-b:v 3000k"),
        "the encoder runs {ffmpeg}"
    );

    // A reload (SIGHUP, `systemctl reload netbootd-vms`) with the VM's machine unchanged leaves it
    // running.
    let supervisor_pid = room.lab.pid(index) as i32;
    let reloaded = |times: usize| {
        let log = std::fs::read_to_string(room.lab.dir().join("vms.log")).unwrap_or_default();
        log.matches("reloaded: no local VM changed").count() >= times
    };
    // SAFETY: kill only sends a signal.
    ensure!(
        unsafe { libc::kill(supervisor_pid, libc::SIGHUP) } == 0,
        "SIGHUP"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !reloaded(1) {
        ensure!(Instant::now() < deadline, "the supervisor did not reload");
        std::thread::sleep(Duration::from_millis(200));
    }
    ensure!(
        vm_state()[ENCODER]["pid"].as_u64() == Some(pid),
        "a reload without a change restarted the VM: {}",
        vm_state()
    );

    // The VM dies: it comes back by itself, as a new boot (of the same image).
    let back = kill_and_wait(room, &vm_state, &first["boot_id"], "kill -9")?;
    ensure!(back["image"] == first["image"], "{back}");
    let restarted = vm_state();
    ensure!(
        restarted[ENCODER]["starts"] == 2,
        "supervisor state: {restarted}"
    );
    ensure!(
        restarted[ENCODER]["last_exit"]
            .as_str()
            .is_some_and(|exit| exit.contains('9')),
        "the kill is not recorded: {restarted}"
    );

    // A new release (another config overlay): the next boot runs it, netbootd never restarted.
    let store = Store::open(&store_dir)?;
    let (old_number, old) = store
        .releases("encoder")?
        .pop()
        .context("no encoder release")?;
    let overlays = tempfile::tempdir()?;
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(repo().join("overlays/."))
        .arg(overlays.path())
        .status()?;
    ensure!(copied.success(), "copying the overlays");
    let note = overlays
        .path()
        .join("encoder/config/etc/lectern-release-note");
    std::fs::create_dir_all(note.parent().context("no parent")?)?;
    std::fs::write(&note, "the second release of the local VM test\n")?;
    let builder = fixture_builder_with_overlays(&store_dir, overlays.path())?;
    room.build_roles(&builder, &[Role::Encoder])?;
    let new = store
        .latest_manifest("encoder")?
        .context("no new release")?;
    ensure!(
        new.image != old.image,
        "the changed overlay made no new release"
    );
    // Its machine changes too (less memory): a reload restarts it alone, as the master file now says,
    // and that boot runs the new release.
    let master = std::fs::read_to_string(&room.master)?;
    let smaller = format!("memory_mb = {}", vm.memory_mb - 256);
    let memory = format!("memory_mb = {}", vm.memory_mb);
    ensure!(master.contains(&memory), "the master file has no {memory}");
    std::fs::write(&room.master, master.replacen(&memory, &smaller, 1))?;
    // SAFETY: kill only sends a signal.
    ensure!(
        unsafe { libc::kill(supervisor_pid, libc::SIGHUP) } == 0,
        "SIGHUP"
    );
    let upgraded = wait_for_new_boot(room, &back["boot_id"], "a reload with less memory")?;
    let pid = vm_state()[ENCODER]["pid"].as_u64().context("no qemu pid")?;
    let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline"))?.replace('\0', " ");
    ensure!(
        cmdline.contains(&format!("-m {}", vm.memory_mb - 256))
            && vm_state()[ENCODER]["spec"]["memory_mb"] == vm.memory_mb - 256,
        "the reload did not give the VM its new memory: {cmdline}\n{}",
        vm_state()
    );
    ensure!(
        upgraded["image"] == new.image.as_str(),
        "the next boot after a new release runs {} instead of {}",
        upgraded["image"],
        new.image
    );

    // Rolled back: the next boot runs the old image again.
    store
        .make_current("encoder", old_number)?
        .context("no old release")?;
    let rolled_back = kill_and_wait(room, &vm_state, &upgraded["boot_id"], "the rollback")?;
    ensure!(
        rolled_back["image"] == old.image.as_str(),
        "the next boot after a rollback runs {} instead of {}",
        rolled_back["image"],
        old.image
    );
    let restarted = vm_state();

    // Down: the supervisor stops, its VM and tap with it.
    let new_pid = restarted[ENCODER]["pid"].as_u64().context("no qemu pid")?;
    ensure!(
        room.lab.terminate(index, Duration::from_secs(30))?,
        "netbootd vms did not stop on SIGTERM"
    );
    ensure!(
        !std::path::Path::new(&format!("/proc/{new_pid}")).exists(),
        "qemu {new_pid} still runs after the supervisor stopped"
    );
    let taps = room
        .lab
        .in_netns("ip")
        .args(["-o", "link", "show", "lvm0"])
        .output()?;
    ensure!(!taps.status.success(), "the VM's tap is still there");
    Ok(())
}

/// Kills the VM's qemu (-9) and waits until it has booted again and reported (a boot other than
/// `previous_boot`); returns that report.
fn kill_and_wait(
    room: &RoomLab,
    vm_state: &dyn Fn() -> Value,
    previous_boot: &Value,
    why: &str,
) -> Result<Value> {
    let pid = vm_state()[ENCODER]["pid"].as_u64().context("no qemu pid")?;
    // SAFETY: kill only sends a signal.
    ensure!(
        unsafe { libc::kill(pid as i32, libc::SIGKILL) } == 0,
        "kill -9 {pid}"
    );
    wait_for_new_boot(room, previous_boot, &format!("kill -9 ({why})"))
}

/// Waits until the VM has booted again and reported (a boot other than `previous_boot`); returns that
/// report.
fn wait_for_new_boot(room: &RoomLab, previous_boot: &Value, why: &str) -> Result<Value> {
    let killed = Instant::now();
    room.wait_for(
        &format!("the local VM back after {why}"),
        Duration::from_secs(600),
        Some(Duration::from_secs(30)),
        |r| {
            let record = r.record(ENCODER);
            Ok(record["state"].is_string() && &record["boot_id"] != previous_boot)
        },
    )?;
    eprintln!(
        "{ENCODER} booted again {:.0} s after {why}",
        killed.elapsed().as_secs_f64()
    );
    Ok(room.record(ENCODER))
}
