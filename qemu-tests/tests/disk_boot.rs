//! Encoders anywhere: the encoder's role image as a UEFI disk (`imgbuild disk`), raw and qcow2, booted by
//! OVMF as a VM on the production box or a cloud instance boots it, from the real `netbootd --config
//! master.toml`. Each boot must run the same root image as netboot (its sha256 checked by the initrd, the
//! image id in its report), learn which host it is (from the firmware's SMBIOS OEM string on the raw
//! disk, from its MAC alone on the qcow2 one), fetch that host's layer from netbootd and report its role.
//! The box's journal receiver holds each boot's journal, the first one still after the second boot, and
//! the host's stream key in no field of it, nor in the command line of the encoder's main process
//! (journald stamps it on the service's lines).
//!
//! LECTERN_IMAGE_TESTS=1, root.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use lectern_builder::disk::{self, DiskFormat, DiskSpec, ROOT_LABEL};
use lectern_qemu_tests::room::{Fixture, RoomLab, with_fixture_lab};
use lectern_store::Store;

const ENCODER: &str = "lameere-enc";

#[test]
fn the_encoder_disk_boots_under_uefi_raw_and_qcow2() {
    with_fixture_lab(env!("CARGO_TARGET_TMPDIR"), Fixture::AsMasterFile, run);
}

fn run(room: &mut RoomLab) -> Result<()> {
    let store = Store::open(&room.plan.netboot.store)?;
    let manifest = store
        .latest_manifest("encoder")?
        .context("no encoder image")?;
    let mut previous_boot = serde_json::Value::Null;
    for (format, name, firmware_names_it) in [
        (DiskFormat::Raw, "raw", true),
        (DiskFormat::Qcow2, "qcow2", false),
    ] {
        let disk = room.lab.dir().join(format!("encoder.{name}"));
        let spec = DiskSpec {
            manifest: &manifest,
            server_url: &room.plan.netboot.base_url,
            format,
            source_date_epoch: 1_700_000_000,
        };
        disk::write_disk(&store, &spec, &disk)?;
        room.power_on_disk(ENCODER, &disk, name, firmware_names_it)?;
        let label = format!("the encoder reporting from its {name} disk");
        room.wait_for(
            &label,
            Duration::from_secs(600),
            Some(Duration::from_secs(30)),
            |r| {
                let record = r.record(ENCODER);
                Ok(record["state"].is_string() && record["boot_id"] != previous_boot)
            },
        )?;
        let record = room.record(ENCODER);
        eprintln!(
            "{name} disk reported after {:.0} s: {record}",
            room.elapsed()
        );
        ensure!(
            record["image"] == manifest.image.as_str(),
            "the {name} disk reported image {} instead of {}",
            record["image"],
            manifest.image
        );
        ensure!(
            record["role"] == "encoder",
            "{name} disk: role {}",
            record["role"]
        );
        // Booted from the disk, not the network: no PXE, no kernel download, the root from its partition.
        ensure!(
            record["tftp"].is_null() && record["kernel"].is_null(),
            "the {name} disk boot fetched netboot artifacts: {record:#}"
        );
        let seen = room.ssh(
            ENCODER,
            "hostname; readlink -f \"$(findmnt -n -o SOURCE /run/lectern/lower)\"; cat /proc/cmdline; \
             systemctl is-active lectern-role.target; \
             tr '\\0' '\\n' < /sys/firmware/dmi/entries/11-0/raw 2>/dev/null | grep -a -o 'lectern.host=.*' || true",
        )?;
        let lines: Vec<&str> = seen.lines().collect();
        ensure!(
            lines.first() == Some(&ENCODER),
            "{name} disk: hostname is not {ENCODER}:\n{seen}"
        );
        ensure!(
            lines
                .get(1)
                .is_some_and(|source| source.starts_with("/dev/vda")),
            "{name} disk: the root image is not the disk's partition:\n{seen}"
        );
        ensure!(
            seen.contains(&format!("lectern.root=partlabel:{ROOT_LABEL}")),
            "{name} disk: {seen}"
        );
        ensure!(
            lines.get(3) == Some(&"active"),
            "{name} disk: the role target is not active:\n{seen}"
        );
        ensure!(
            seen.contains(&format!("lectern.host={ENCODER}")) == firmware_names_it,
            "{name} disk: the firmware {} name the host:\n{seen}",
            if firmware_names_it {
                "does not"
            } else {
                "should not"
            }
        );
        // The box holds the boot's journal, and the earlier boot's too: the logs outlive the reboot.
        let boot = record["boot_id"]
            .as_str()
            .unwrap_or_default()
            .replace('-', "");
        let host = format!("_HOSTNAME={ENCODER}");
        let this_boot = format!("_BOOT_ID={boot}");
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        // Before the first upload there is no journal file to read: nothing yet.
        while room
            .received_journal(&[&host, &this_boot, "-o", "cat"])
            .unwrap_or_default()
            .is_empty()
        {
            ensure!(
                std::time::Instant::now() < deadline,
                "{name} disk: the box received no journal of boot {boot}:\n{}",
                String::from_utf8_lossy(
                    &room
                        .received_journal(&["-o", "short", "-n", "20"])
                        .unwrap_or_default()
                )
            );
            std::thread::sleep(Duration::from_secs(2));
        }
        let boots = String::from_utf8_lossy(&room.received_journal(&[
            &host,
            "-o",
            "export",
            "--output-fields=_BOOT_ID",
        ])?)
        .into_owned();
        if let Some(earlier) = previous_boot.as_str() {
            let earlier = earlier.replace('-', "");
            ensure!(
                boots.contains(&format!("_BOOT_ID={earlier}")),
                "{name} disk: the box lost the journal of the boot before ({earlier})"
            );
        }
        // Every field of every entry: a secret of the host's (its stream key) is in none of them.
        let everything = room.received_journal(&[&host, "-o", "export"])?;
        // The fixture's (builder/tests/fixtures/fixture-secrets.toml).
        let key = "lectern-test-secret-7f3a9c";
        ensure!(
            !everything
                .windows(key.len())
                .any(|window| window == key.as_bytes()),
            "{name} disk: the host's stream key reached its journal on the box"
        );
        // Nor in the encoder's main process's command line, which journald stamps on each of its
        // lines (_CMDLINE) once its first seconds are past: sampled while ffmpeg retries its input
        // (no mixer here), whose arguments hold the key.
        let sampled = room.ssh(
            ENCODER,
            "for i in $(seq 30); do pid=$(systemctl show -p MainPID --value lectern-encoder); \
             [ \"$pid\" = 0 ] || { tr '\\0' ' ' < /proc/$pid/cmdline; echo; }; sleep 0.3; done",
        )?;
        ensure!(
            !sampled.contains(key),
            "{name} disk: the encoder's main process holds the stream key in its command line"
        );
        ensure!(
            sampled.contains("/usr/lib/lectern/encode"),
            "{name} disk: the encoder's main process was never seen: {sampled}"
        );
        previous_boot = record["boot_id"].clone();
        room.power_off(ENCODER)?;
    }
    Ok(())
}
