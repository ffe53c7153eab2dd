//! Proxy mode, end to end: the fixture's netbooted encoder boots to its role on a venue's LAN, where
//! dnsmasq is the DHCP server (the addresses, as the venue's network team reserved them) and
//! `netbootd --config master.toml` in `mode = "proxy"` only adds the boot options. The host must get its
//! address from the venue, its boot from netbootd, and report its role. Before that, the same VM boots
//! with another SMBIOS UUID than the master file binds it to (a spoofer on the venue's LAN with its MAC and
//! address): it must get no secrets, and netbootd must say why. The real one, a machine at the venue
//! bound to its TPM (swtpm) as well, proves it holds that TPM and gets them. The booted host keeps the master
//! file's time: the venue's time zone, and chrony asking `network.ntp` (the gateway by default), not an
//! internet pool.
//!
//! LECTERN_IMAGE_TESTS=1, root.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use lectern_master::model::HardwareIdentity;
use lectern_qemu_tests::Firmware;
use lectern_qemu_tests::room::{Fixture, RoomLab, with_fixture_lab};

const ENCODER: &str = "lameere-enc";

#[test]
fn a_host_boots_to_its_role_in_proxy_mode_beside_the_venue_dhcp() {
    with_fixture_lab(env!("CARGO_TARGET_TMPDIR"), Fixture::ProxyBesideVenue, run);
}

fn run(room: &mut RoomLab) -> Result<()> {
    let spoofed = HardwareIdentity {
        uuid: Some("00000000-0000-4000-8000-00000000dead".into()),
        serial: None,
        asset_tag: None,
        tpm_ek: None,
    };
    room.power_on_as(ENCODER, Firmware::Bios, Some(&spoofed))?;
    let refused = |r: &RoomLab| {
        let alerts = r.record(ENCODER)["alerts"].to_string();
        Ok(alerts.contains("SMBIOS uuid did not match"))
    };
    let every = Some(Duration::from_secs(30));
    room.wait_for(
        "netbootd refusing the spoofer",
        Duration::from_secs(600),
        every,
        refused,
    )?;
    let holds = "test -e /etc/lectern/encoder.args && echo holds || echo none";
    let mut seen = String::new();
    room.wait_for("ssh to the spoofer", Duration::from_secs(120), None, |r| {
        seen = r.ssh(ENCODER, holds).unwrap_or_default();
        Ok(!seen.is_empty())
    })?;
    ensure!(seen.trim() == "none", "the spoofer holds the stream key");
    let metrics = room.operator("/metrics").unwrap_or_default();
    ensure!(
        metrics.contains("netbootd_secrets_total{outcome=\"wrong_identity\"}"),
        "{metrics}"
    );
    room.power_off(ENCODER)?;

    room.power_on(ENCODER, Firmware::Bios)?;
    room.wait_for(
        "the encoder reporting in proxy mode",
        Duration::from_secs(600),
        Some(Duration::from_secs(30)),
        |r| Ok(r.record(ENCODER)["state"].is_string()),
    )?;
    let record = room.record(ENCODER);
    eprintln!("{ENCODER} reported after {:.0} s: {record}", room.elapsed());
    let host = room.plan.host(ENCODER).context("no encoder")?;
    let (mac, ip) = (host.mac.context("no mac")?, host.ip.context("no ip")?);
    // The address came from the venue's dnsmasq, the boot from netbootd.
    let leases = room.venue_leases();
    ensure!(
        leases
            .lines()
            .any(|l| l.contains(&mac.to_string()) && l.contains(&ip.to_string())),
        "the venue DHCP has no lease of {ip} for {mac}:\n{leases}"
    );
    ensure!(
        record["ipxe_script"].is_string() && record["root"].is_string(),
        "netbootd did not boot it: {record:#}"
    );
    ensure!(record["role"] == "encoder", "{record:#}");
    // Its secrets came to its TPM's proof: challenged, released, and nothing refused since.
    let metrics = room.operator("/metrics").unwrap_or_default();
    ensure!(
        metrics.contains("netbootd_secrets_total{outcome=\"tpm_challenge\"} 2")
            && metrics.contains("netbootd_secrets_total{outcome=\"released\"} 1"),
        "{metrics}"
    );
    let holds = room.ssh(ENCODER, "test -s /etc/lectern/encoder.args && echo holds")?;
    ensure!(holds.trim() == "holds", "the host has no stream key");
    let seen = room.ssh(ENCODER, "hostname; systemctl is-active lectern-role.target")?;
    ensure!(
        seen.lines().collect::<Vec<_>>() == [ENCODER, "active"],
        "in proxy mode the encoder is not in its role:\n{seen}"
    );

    let zone = &room.plan.conference.timezone;
    let offset = |seen: &[u8]| String::from_utf8_lossy(seen).trim().to_owned();
    let here = std::process::Command::new("date")
        .arg("+%z")
        .env("TZ", zone)
        .output()?;
    let seen = room.ssh(ENCODER, "cat /etc/timezone; date +%z")?;
    ensure!(
        seen.lines().collect::<Vec<_>>() == [zone.as_str(), &offset(&here.stdout)],
        "the host does not keep {zone}'s time:\n{seen}"
    );
    let sources = room.ssh(ENCODER, "chronyc -n -c sources | cut -d, -f3")?;
    let want: Vec<String> = (room.plan.network.ntp.iter())
        .map(|ip| ip.to_string())
        .collect();
    ensure!(
        sources.lines().collect::<Vec<_>>() == want,
        "chrony asks {sources:?}, not network.ntp {want:?}"
    );
    Ok(())
}
