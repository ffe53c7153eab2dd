//! Boots one room of a master file in a private lab (network namespace, bridge, TCG guests) from the real
//! netbootd, shows its hosts' boot phases as they come up, and prints what a viewer gets. The images must
//! be built (`imgbuild all`). Used by `scripts/demo.sh`; the room test drives the same code.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use lectern_qemu_tests::Firmware;
use lectern_qemu_tests::room::{Fixture, RoomLab};

#[derive(Parser)]
struct Args {
    /// The master file (its store holds the built images).
    #[arg(long, default_value = "master.toml")]
    config: PathBuf,
    /// The room to boot (with the streaming backend).
    #[arg(long)]
    room: String,
    /// The netbootd binary to serve with.
    #[arg(long)]
    netbootd: PathBuf,
    /// Keep everything running until Enter is pressed.
    #[arg(long)]
    keep: bool,
}

/// Switches the room on, the mixer first (under emulation its start needs the CPU the others would take),
/// and waits for every host to report and the room's main rendition to be on the backend; returns the room's
/// HLS.
fn boot(room: &mut RoomLab, slug: &str) -> Result<String> {
    let every = Some(Duration::from_secs(10));
    let hosts = room.room_hosts(slug)?;
    let (mixer, others) = hosts.split_first().context("the room has no hosts")?;
    room.power_on(mixer, Firmware::Bios)?;
    // Degraded until its sources feed it: its role running is enough.
    room.wait_for(
        "the mixer reporting",
        Duration::from_secs(600),
        every,
        |r| Ok(r.record(mixer)["state"].is_string()),
    )?;
    for hostname in others {
        room.power_on(hostname, Firmware::Bios)?;
    }
    // Every host running its role; one that is degraded says why in the table (under emulation a
    // starved mixer may not finish its media checks), and the stream itself is judged below.
    room.wait_for(
        "every host reporting",
        Duration::from_secs(1200),
        every,
        |r| {
            Ok(r.guests
                .iter()
                .all(|g| r.record(&g.hostname)["state"].is_string()))
        },
    )?;
    let hls = room.backend_hls(slug)?;
    room.wait_for(
        "the room's stream on the backend (every rendition)",
        Duration::from_secs(300),
        None,
        |r| r.streaming(slug),
    )?;
    Ok(hls)
}

fn main() -> Result<()> {
    let args = Args::parse();
    let plan = lectern_master::load(&args.config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut room = RoomLab::new(&args.config, &plan.netboot.store, Fixture::AsMasterFile)?;
    room.serve(&args.netbootd)?;
    let outcome = boot(&mut room, &args.room);
    print!("{}", room.table());
    let hls = match outcome {
        Ok(hls) => hls,
        Err(error) => {
            eprintln!("{}", room.diagnostics());
            return Err(error);
        }
    };
    print!("{}", room.stream_summary(&args.room)?);
    if args.keep {
        let watch = room
            .plan
            .room(&args.room)
            .and_then(|r| r.watch_url.clone())
            .unwrap_or_default();
        println!(
            "left running in network namespace {ns}; watch it with:\n  ip netns exec {ns} mpv {hls}\n  \
             (or open the watch page {watch} at the backend's address from inside the namespace)\n\
             press Enter to stop everything",
            ns = room.lab.netns()
        );
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
    }
    Ok(())
}
