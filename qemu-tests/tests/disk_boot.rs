//! Encoders anywhere: the encoder's role image as a UEFI disk (`imgbuild disk`), raw and qcow2, booted by
//! OVMF as a VM on the production box or a cloud instance boots it, from the real `netbootd --config
//! master.toml`. Each boot must run the same root image as netboot (its sha256 checked by the initrd, the
//! image id in its report), learn which host it is (from the firmware's SMBIOS OEM string on the raw
//! disk, from its MAC alone on the qcow2 one), fetch that host's layer from netbootd and report its role.
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
        previous_boot = record["boot_id"].clone();
        room.power_off(ENCODER)?;
    }
    Ok(())
}
