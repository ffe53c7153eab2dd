//! A boot storm of real VMs: the hosts named switch on at once and PXE-boot from netbootd, then
//! again from the reference setup (dnsmasq + nginx serving the same files and scripts); prints each
//! guest's milestones and the table of BENCHMARKS.md, after checking that every guest reached every
//! milestone and downloaded every file whole. The images must be built (`imgbuild all`).
//! `qemu-tests/bench/vm-storm.sh` writes the master file, builds them and runs this.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Parser;
use lectern_qemu_tests::storm::{Server, Storm, per_guest, stop_on_signals, summary};

#[derive(Parser)]
struct Args {
    /// The master file (its store holds the built images).
    #[arg(long, default_value = "master.toml")]
    config: PathBuf,
    /// The netbootd binary to serve with.
    #[arg(long)]
    netbootd: PathBuf,
    /// A host of the master file to switch on; give it once per guest.
    #[arg(long = "host", required = true)]
    hosts: Vec<String>,
    /// Storms per server: each run boots the guests from both, every other run the reference first.
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Seconds the slowest guest may take to its last milestone before the run fails.
    #[arg(long, default_value_t = 1800)]
    timeout: u64,
}

fn main() -> Result<()> {
    let args = Args::parse();
    stop_on_signals();
    if let Some(reason) = lectern_qemu_tests::unavailable() {
        bail!("the VM lab cannot run here: {reason}");
    }
    let plan = lectern_master::load(&args.config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let storm = Storm {
        master: args.config,
        store: plan.netboot.store,
        hosts: args.hosts,
        timeout: Duration::from_secs(args.timeout),
    };
    // The reference serves netbootd's own scripts: netbootd goes first in the first run.
    let mut outcomes = Vec::new();
    let mut scripts = None;
    for run in 1..=args.runs.max(1) {
        let netbootd_first = run % 2 == 1;
        for netbootd in [netbootd_first, !netbootd_first] {
            let mut outcome = match &scripts {
                Some(scripts) if !netbootd => storm.run(Server::Reference { scripts })?,
                _ => storm.run(Server::Netbootd(&args.netbootd))?,
            };
            outcome.run = run;
            eprint!("{}", per_guest(&outcome));
            scripts.get_or_insert_with(|| outcome.scripts.clone());
            outcomes.push(outcome);
        }
    }
    for outcome in &outcomes {
        println!("{}", per_guest(outcome));
    }
    print!("{}", summary(&outcomes));
    Ok(())
}
