//! Boots one room of a master file in a private lab (network namespace, bridge, TCG guests) from the real
//! netbootd, shows its hosts' boot phases as they come up, and prints what a viewer gets. The images must
//! be built (`imgbuild all`). Used by `scripts/demo.sh`; the room test drives the same code.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::Parser;
use lectern_qemu_tests::room::RoomLab;

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

fn main() -> Result<()> {
    let args = Args::parse();
    let plan = lectern_master::load(&args.config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut room = RoomLab::new(&args.config, &plan.netboot.store)?;
    room.serve(&args.netbootd)?;
    room.power_on_room(&args.room)?;
    let outcome = (|| {
        room.wait_for(
            "every host up",
            Duration::from_secs(1200),
            Some(Duration::from_secs(10)),
            |r| Ok(r.all_up()),
        )?;
        let hls = room.backend_hls(&args.room)?;
        room.wait_for(
            "the room's stream on the backend",
            Duration::from_secs(300),
            None,
            |r| Ok(r.curl(&hls).is_some()),
        )?;
        Ok::<_, anyhow::Error>(hls)
    })();
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
