//! netbootd: serves DHCP, TFTP and HTTP so every machine boots its role by MAC.
//!
//! `netbootd --config master.toml serve` serves the master file's hosts with the images imgbuild put
//! in the store. `netbootd serve-static …` takes hosts, network and one image on the command
//! line instead (tests and one-off setups).

use std::io::IsTerminal;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use lectern_netboot::check;
use lectern_netboot::cloud::{CloudEncoders, Started};
use lectern_netboot::dhcp::Mode;
use lectern_netboot::mac::MacAddr;
use lectern_netboot::plan_policy::{self, PlanPolicy};
use lectern_netboot::policy::{BootPolicy, Host, Identity, Network, StaticImage, StaticPolicy};
use lectern_netboot::schedule;
use lectern_netboot::server::{self, Https, ServerConfig};
use lectern_netboot::setup;
use lectern_netboot::tpm;
use lectern_netboot::vms;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ModeArg {
    Authoritative,
    Proxy,
}

/// `MAC,IP,HOSTNAME` or `MAC,HOSTNAME` (no reservation), like dnsmasq's dhcp-host, then
/// optionally the identity its secrets need: `,uuid=…`, `,serial=…`, `,asset_tag=…`, `,tpm_ek=…`
/// (its TPM endorsement key's Name), and `,group=…` to show it under in the operator's views.
#[derive(Debug, Clone)]
struct HostArg(Host, Option<Identity>, Option<String>);

impl FromStr for HostArg {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> anyhow::Result<Self> {
        let (fields, identity): (Vec<&str>, Vec<&str>) =
            text.split(',').partition(|field| !field.contains('='));
        let mut wanted = Identity::default();
        let mut group = None;
        let mut identified = false;
        for field in &identity {
            let (key, value) = field.split_once('=').expect("partitioned on '='");
            if key == "group" {
                group = Some(value.to_owned());
                continue;
            }
            identified = true;
            let slot = match key {
                "uuid" => &mut wanted.smbios.uuid,
                "serial" => &mut wanted.smbios.serial,
                "asset_tag" => &mut wanted.smbios.asset_tag,
                "tpm_ek" if tpm::parse_name(value).is_some() => &mut wanted.tpm_ek,
                "tpm_ek" => bail!("tpm_ek={value} is not a TPM key Name (000b and 64 hex digits)"),
                _ => bail!(
                    "unknown host field {key:?} (uuid, serial, asset_tag, tpm_ek or group): {text:?}"
                ),
            };
            *slot = Some(value.to_owned());
        }
        wanted.tpm_ek = wanted.tpm_ek.map(|name| name.to_ascii_lowercase());
        let (mac, ip, hostname) = match fields.as_slice() {
            [mac, ip, hostname] => (
                mac,
                Some(ip.parse::<Ipv4Addr>().context("host address")?),
                hostname,
            ),
            [mac, hostname] => (mac, None, hostname),
            _ => bail!("want MAC,IP,HOSTNAME or MAC,HOSTNAME: {text:?}"),
        };
        let host = Host {
            mac: mac.parse::<MacAddr>()?,
            hostname: hostname.to_string(),
            ip,
        };
        Ok(HostArg(host, identified.then_some(wanted), group))
    }
}

/// `FIRST-LAST` addresses of the dynamic pool.
fn parse_range(text: &str) -> anyhow::Result<(Ipv4Addr, Ipv4Addr)> {
    let (first, last) = text.split_once('-').context("want FIRST-LAST")?;
    let range = (first.parse()?, last.parse()?);
    if range.0 > range.1 {
        bail!("pool starts after it ends: {text}");
    }
    Ok(range)
}

#[derive(Debug, clap::Args)]
struct Args {
    /// Interface DHCP listens on.
    #[arg(long)]
    interface: String,
    /// This server's address on that interface.
    #[arg(long)]
    server_ip: Ipv4Addr,
    #[arg(long, value_enum, default_value = "authoritative")]
    mode: ModeArg,
    /// Known machine, repeatable: MAC,IP,HOSTNAME or MAC,HOSTNAME, then ,uuid=… ,serial=… ,asset_tag=… ,tpm_ek=…
    /// for the identity its secrets need, and ,group=… for the operator's views.
    #[arg(long = "host")]
    hosts: Vec<HostArg>,
    /// Dynamic pool FIRST-LAST (authoritative mode).
    #[arg(long, value_parser = parse_range)]
    pool: Option<(Ipv4Addr, Ipv4Addr)>,
    #[arg(long, default_value = "255.255.255.0")]
    netmask: Ipv4Addr,
    #[arg(long)]
    router: Option<Ipv4Addr>,
    /// DNS server, repeatable.
    #[arg(long)]
    dns: Vec<Ipv4Addr>,
    /// NTP server, repeatable.
    #[arg(long)]
    ntp: Vec<Ipv4Addr>,
    #[arg(long)]
    domain: Option<String>,
    #[arg(long, default_value_t = 3600)]
    lease_secs: u64,
    #[arg(long, default_value_t = 8080)]
    http_port: u16,
    /// Directory of artifacts named by content hash.
    #[arg(long, requires = "kernel")]
    artifact_dir: Option<PathBuf>,
    /// Hash of the kernel every host boots.
    #[arg(long, requires = "artifact_dir")]
    kernel: Option<String>,
    /// Hash of an initrd, repeatable.
    #[arg(long)]
    initrd: Vec<String>,
    /// Hash of the root image, passed as lectern.root=URL.
    #[arg(long)]
    root_image: Option<String>,
    #[arg(long, default_value = "")]
    cmdline: String,
    /// Directory of per-host layers named HOSTNAME.cpio, and their secrets, HOSTNAME.secrets.cpio.
    #[arg(long)]
    layer_dir: Option<PathBuf>,
    /// PKCS#8 PEM key of the HTTPS side (secrets, reports); without one there is none.
    #[arg(long)]
    tls_key: Option<PathBuf>,
    #[arg(long, default_value_t = 8443)]
    https_port: u16,
    /// Where the operator's views (/api/hosts, /metrics) listen.
    #[arg(long, default_value = "127.0.0.1:8081")]
    operator_address: std::net::SocketAddr,
    /// Hosts report every 30 s: one silent for this many beats is shown stale.
    #[arg(long, default_value_t = 3)]
    stale_after_missed_beats: u32,
}

/// `RUST_LOG` when set, else info, less with `-q`, more with each `-v`. Colour only on a
/// terminal and without `NO_COLOR` (no-color.org).
fn init_logging(verbosity: &Verbosity) {
    let level = match i16::from(verbosity.verbose) - i16::from(verbosity.quiet) {
        ..=-1 => "warn",
        0 => "info",
        1 => "debug",
        2.. => "trace",
    };
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| level.into());
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour);
    // journald stamps every line itself.
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.without_time().init();
    } else {
        builder.init();
    }
}

#[derive(Debug, Parser)]
#[command(name = "netbootd", version = lectern_master::VERSION, about)]
struct Cli {
    #[command(flatten)]
    master: MasterArgs,
    #[command(flatten)]
    verbosity: Verbosity,
    /// What to do; `serve` answers DHCP on the master file's interface, so it is never the default.
    #[command(subcommand)]
    command: Option<Command>,
}

/// How much netbootd logs (`RUST_LOG`, when set, decides instead).
#[derive(Debug, clap::Args)]
struct Verbosity {
    /// Log warnings and errors only.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    quiet: u8,
    /// Log more: once for debug, twice for trace.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
}

/// Serving what the master file describes.
#[derive(Debug, clap::Args)]
struct MasterArgs {
    /// The master file.
    #[arg(long, global = true, default_value = "master.toml")]
    config: PathBuf,
    /// The image store. Default: the master file's `[netboot] store`, where imgbuild builds.
    #[arg(long, global = true, env = "LECTERN_STORE")]
    store: Option<PathBuf>,
    /// Where the lease table (and `check`'s hashes of the store's files) are kept.
    #[arg(long, global = true, default_value = "/var/lib/netbootd")]
    state_dir: PathBuf,
    /// TFTP root (and HTTP-boot firmware): the iPXE binaries.
    #[arg(long, global = true, default_value = "/usr/lib/ipxe")]
    tftp_root: PathBuf,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the master file's hosts until SIGTERM: DHCP (authoritative or proxy, as the master file
    /// says) on its interface, TFTP and HTTP; SIGHUP rereads the master file and the store.
    Serve,
    /// Check, without sending a packet, what `serve` needs: the master file, the interface it
    /// names (it exists, is up and holds the server's address), the TFTP root's iPXE binaries (as
    /// their Debian package installed them) and every file of the store a host would load (there,
    /// not empty, its content's sha256 its name). Exit code 1 on any problem.
    Check(CheckArgs),
    /// Make this box the netboot server the master file describes (as root, after installing the
    /// package; again after each change to the master file or the secrets): check the master file,
    /// the video LAN's interface and that no other DHCP server answers there, refusing with no
    /// change when one fails; then give the interface its address (systemd-networkd), build every
    /// image and host layer (imgbuild all), and enable and start netbootd and this box's local VMs.
    /// Says what it did, step by step, and which machines to switch on next.
    Setup,
    /// Serve hosts and one image given on the command line until SIGTERM; SIGHUP reloads.
    ServeStatic(Args),
    /// `check` for a command-line configuration.
    CheckStatic {
        #[command(flatten)]
        server: Args,
        #[command(flatten)]
        check: CheckArgs,
    },
    /// Run this machine's local VMs of the master file (`where = "local-vm"`) until SIGTERM: each
    /// netboots with its MAC, vCPUs and memory, and starts again when it dies. SIGHUP rereads the
    /// master file and restarts only the VMs whose machine changed.
    Vms(VmsArgs),
    /// Start or stop a room's cloud encoders (`where = "ec2"`) from the role's published AMI.
    /// Credentials come from the standard AWS chain (environment, ~/.aws).
    Cloud(CloudArgs),
    /// Receive the hosts' journals until SIGTERM: becomes systemd-journal-remote, over TLS on the
    /// master file's netboot address and `journal_port`, certified for that address by the store's
    /// journal authority (the one the role images trust), one journal file per host address.
    JournalRemote(JournalRemoteArgs),
}

#[derive(Debug, clap::Args)]
struct JournalRemoteArgs {
    /// Where the receiver's key and certificate are written (the key 0600): a directory of its own.
    #[arg(long)]
    key_dir: PathBuf,
    /// Where the hosts' journals go: `remote-<address>.journal` each.
    #[arg(long, default_value = "/var/log/journal/remote")]
    output: PathBuf,
}

#[derive(Debug, clap::Args)]
struct CheckArgs {
    /// Hash every store file again. Without it, a file whose device, inode, size, modification and
    /// change times are those of an earlier check's hash (kept in the state directory) is not read:
    /// any write changes them, damage below the file system does not.
    #[arg(long)]
    rehash: bool,
}

#[derive(Debug, clap::Args)]
struct CloudArgs {
    #[command(subcommand)]
    action: CloudAction,
    /// Talk to this endpoint instead of AWS (a stand-in such as moto); default: `AWS_ENDPOINT_URL`, else AWS.
    #[arg(long, global = true)]
    endpoint_url: Option<String>,
}

#[derive(Debug, Subcommand)]
enum CloudAction {
    /// Store each cloud host's layer in SSM and run its instance (a running one is left alone).
    Up { room: String },
    /// Terminate the room's instances and delete their layers from SSM.
    Down { room: String },
    /// Until SIGTERM: run each room's cloud encoders from LEAD before its first talk of each day until
    /// TAIL after its last, as the conference's schedule (Pentabarf/frab XML) says; read again every
    /// 10 minutes. Outside those windows the rooms' instances are kept down.
    Schedule {
        /// A file or http(s) URL; default: the master file's `conference.schedule_url`.
        #[arg(long)]
        schedule: Option<String>,
        /// Minutes before a room's first talk of the day.
        #[arg(long, default_value_t = 30)]
        lead_minutes: u64,
        /// Minutes after its last.
        #[arg(long, default_value_t = 15)]
        tail_minutes: u64,
    },
}

/// The system clock, waiting in short steps so that SIGTERM (`stop`) ends the wait at once.
struct SystemClock {
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl lectern_netboot::schedule::Clock for SystemClock {
    fn now(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default()
    }

    fn wait(&mut self, until: u64) -> bool {
        while self.now() < until {
            if self.stop.load(std::sync::atomic::Ordering::Relaxed) {
                return false;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        !self.stop.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The schedule's text, from a file or over http(s).
fn read_schedule(source: &str) -> anyhow::Result<String> {
    if source.starts_with("http://") || source.starts_with("https://") {
        let mut answer = ureq::get(source)
            .call()
            .with_context(|| format!("fetching the schedule {source}"))?;
        Ok(answer.body_mut().read_to_string()?)
    } else {
        std::fs::read_to_string(source).with_context(|| format!("reading the schedule {source}"))
    }
}

#[derive(Debug, clap::Args)]
struct VmsArgs {
    /// The machine whose VMs to run (the master file's `host` of each VM). Default: the netboot server.
    #[arg(long)]
    hypervisor: Option<String>,
    /// qemu's accelerator; `kvm:tcg` falls back to emulation where KVM is missing.
    #[arg(long, default_value = "kvm:tcg")]
    accel: String,
    /// Run only this VM (repeatable); default: every local VM of the hypervisor.
    #[arg(long = "only", value_name = "HOST")]
    only: Vec<String>,
}

/// The server settings and the policy the arguments describe.
fn configure(
    args: Args,
    state_dir: PathBuf,
    tftp_root: PathBuf,
) -> anyhow::Result<(ServerConfig, StaticPolicy)> {
    let https = match &args.tls_key {
        Some(path) => Some(Https {
            port: args.https_port,
            key: lectern_store::ServerKey::read(path).context("the TLS key")?,
        }),
        None => None,
    };
    let network = Network {
        netmask: args.netmask,
        router: args.router,
        dns: args.dns,
        ntp: args.ntp,
        domain: args.domain,
        lease_time: Duration::from_secs(args.lease_secs),
    };
    let hosts = args
        .hosts
        .iter()
        .map(|HostArg(host, ..)| host.clone())
        .collect();
    let mut policy = StaticPolicy::new(hosts, network);
    for HostArg(host, identity, group) in args.hosts {
        if let Some(identity) = identity {
            policy = policy.with_identity(host.mac, identity);
        }
        if let Some(group) = group {
            policy = policy.with_group(host.mac, group);
        }
    }
    if let (Some(artifact_dir), Some(kernel)) = (args.artifact_dir, args.kernel) {
        let image = StaticImage {
            kernel,
            initrds: args.initrd,
            root: args.root_image,
            cmdline: args.cmdline,
        };
        policy = policy.with_image(image, artifact_dir);
    }
    if let Some(layer_dir) = args.layer_dir {
        policy = policy.with_layer_dir(layer_dir);
    }
    let mode = match args.mode {
        ModeArg::Authoritative => Mode::Authoritative,
        ModeArg::Proxy => Mode::Proxy,
    };
    let config = ServerConfig {
        interface: args.interface,
        server_ip: args.server_ip,
        mode,
        pool: args.pool,
        state_dir,
        tftp_root,
        http_port: args.http_port,
        operator_address: args.operator_address,
        stale_after: Duration::from_secs(
            u64::from(args.stale_after_missed_beats) * lectern_master::plan::HEARTBEAT_SECS,
        ),
        tftp_limits: Default::default(),
        http_limits: Default::default(),
        https,
    };
    Ok((config, policy))
}

/// Prints what `check` found, the causes first; the exit code says whether there were problems.
fn report(report: &check::Report) -> ExitCode {
    if let Some(unkept) = &report.unkept {
        eprintln!("note: the store files' hashes could not be kept for the next check ({unkept})");
    }
    for problem in &report.problems {
        println!("problem: {problem}");
    }
    if report.problems.is_empty() {
        println!("ok: {}", report.summary);
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    lectern_cli_docs::write_if_asked(Cli::command);
    let cli = Cli::parse();
    init_logging(&cli.verbosity);
    let MasterArgs {
        config: master,
        store: store_dir,
        state_dir,
        tftp_root,
    } = cli.master;
    match cli.command {
        None => {
            // A DHCP server on the wrong LAN takes machines over: serving is asked for, by name.
            eprintln!(
                "netbootd: no command given; `netbootd serve --config FILE` answers DHCP on the interface FILE names, `netbootd check` checks it first, `netbootd --help` lists the rest"
            );
            Ok(ExitCode::from(2))
        }
        Some(Command::Serve) => {
            let loaded = plan_policy::load(&master, store_dir.as_deref())?;
            let config = plan_policy::server_config(&loaded.0, &loaded.1, state_dir, tftp_root)?;
            // New builds and rollbacks in the store are served without a restart or a SIGHUP.
            let store = loaded.1.clone();
            let mut seen = store.changed_at();
            // The first call uses what was just read; every SIGHUP rereads the master file and store.
            let first = std::sync::Mutex::new(Some(loaded));
            let running = config.clone();
            server::run(
                config,
                move || {
                    let taken = first.lock().expect("not poisoned").take();
                    let (plan, store) = match taken {
                        Some(loaded) => loaded,
                        None => plan_policy::load(&master, store_dir.as_deref())?,
                    };
                    let (state_dir, tftp_root) =
                        (running.state_dir.clone(), running.tftp_root.clone());
                    let wanted = plan_policy::server_config(&plan, &store, state_dir, tftp_root)?;
                    let policy = PlanPolicy::new(&plan, &store);
                    for gap in &policy.gaps().causes {
                        tracing::warn!("{gap}");
                    }
                    Ok((Arc::new(policy) as Arc<dyn BootPolicy>, wanted))
                },
                move || {
                    let now = store.changed_at();
                    std::mem::replace(&mut seen, now) != now
                },
            )
            .await?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Check(args)) => Ok(report(&check::check_master(
            &master,
            store_dir.as_deref(),
            state_dir,
            tftp_root,
            args.rehash,
        )?)),
        Some(Command::Setup) => {
            // The units serve the store the master file names; one given here would be used by
            // this run alone.
            if store_dir.is_some() {
                bail!(
                    "netbootd setup builds into and serves the store the master file names ([netboot] store): drop --store (or LECTERN_STORE)"
                );
            }
            let paths = setup::Paths::production(state_dir, tftp_root);
            let mut this_box = setup::real::Real::beside_this_program();
            let done = tokio::task::block_in_place(|| {
                setup::run(&master, &paths, &mut this_box, &mut std::io::stdout())
            });
            match done {
                Ok(()) => Ok(ExitCode::SUCCESS),
                Err(error) if error.is::<setup::Refusal>() => {
                    eprintln!("netbootd setup: refused: {error}");
                    Ok(ExitCode::FAILURE)
                }
                Err(error) => {
                    eprintln!("netbootd setup: {error:#}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Some(Command::ServeStatic(args)) => {
            let (config, policy) = configure(args, state_dir, tftp_root)?;
            // Everything comes from the command line, so a reload re-applies the same policy.
            let same = config.clone();
            server::run(
                config,
                move || {
                    Ok((
                        Arc::new(policy.clone()) as Arc<dyn BootPolicy>,
                        same.clone(),
                    ))
                },
                || false,
            )
            .await?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Vms(args)) => {
            let hypervisor = match args.hypervisor {
                Some(hypervisor) => hypervisor,
                None => {
                    plan_policy::load(&master, store_dir.as_deref())?
                        .0
                        .netboot
                        .server
                }
            };
            // At start and at every SIGHUP: this machine's VMs as the master file says now.
            let load = || -> anyhow::Result<Vec<vms::VmSpec>> {
                let (plan, _) = plan_policy::load(&master, store_dir.as_deref())?;
                let mut vms = vms::local_vms(&plan, &hypervisor)?;
                if let Some(unknown) =
                    (args.only.iter()).find(|h| !vms.iter().any(|vm| &vm.hostname == *h))
                {
                    bail!(
                        "{unknown} is not a local VM of {hypervisor} in {}",
                        master.display()
                    );
                }
                if !args.only.is_empty() {
                    vms.retain(|vm| args.only.contains(&vm.hostname));
                }
                Ok(vms)
            };
            let count = load()?.len();
            if count == 0 {
                println!("no local VMs on {hypervisor} in {}", master.display());
                return Ok(ExitCode::SUCCESS);
            }
            let (plan, _) = plan_policy::load(&master, store_dir.as_deref())?;
            let supervisor = vms::Supervisor {
                bridge: plan.network.dhcp.interface.clone(),
                accel: args.accel,
                state_dir: state_dir.join("vms"),
                backoff: [2, 4, 8, 16, 30].map(Duration::from_secs).to_vec(),
            };
            tracing::info!(count, %hypervisor, "running the local VMs");
            let reloads = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
            supervisor.run(load, reloads, server::terminated()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Cloud(args)) => {
            let (plan, store) = plan_policy::load(&master, store_dir.as_deref())?;
            let fleet = CloudEncoders {
                plan: &plan,
                store: &store,
                endpoint: args.endpoint_url,
            };
            match args.action {
                CloudAction::Up { room } => {
                    for started in fleet.up(&room)? {
                        match started {
                            Started::Launched {
                                hostname,
                                instance,
                                ami,
                            } => {
                                println!("{hostname}: started {instance} from {ami}")
                            }
                            Started::AlreadyRunning { hostname, instance } => {
                                println!(
                                    "{hostname}: {instance} runs already (its layer is updated for its next boot)"
                                )
                            }
                        }
                    }
                }
                CloudAction::Schedule {
                    schedule,
                    lead_minutes,
                    tail_minutes,
                } => {
                    let source = (schedule.or_else(|| plan.conference.schedule_url.clone()))
                        .context(
                            "no --schedule and no conference.schedule_url in the master file",
                        )?;
                    let rooms = fleet.rooms();
                    if rooms.is_empty() {
                        bail!("no room of {} has cloud encoders", master.display());
                    }
                    let (lead, tail) = (
                        Duration::from_secs(lead_minutes * 60),
                        Duration::from_secs(tail_minutes * 60),
                    );
                    let load = || {
                        let talks = schedule::talks(&read_schedule(&source)?)?;
                        schedule::windows(&talks, &rooms, lead, tail)
                    };
                    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
                    let stopping = stop.clone();
                    tokio::spawn(async move {
                        server::terminated().await;
                        stopping.store(true, std::sync::atomic::Ordering::Relaxed);
                    });
                    tokio::task::block_in_place(|| {
                        schedule::run(&load, &fleet, &mut SystemClock { stop })
                    })?;
                }
                CloudAction::Down { room } => {
                    let terminated = fleet.down(&room)?;
                    if terminated.is_empty() {
                        println!("{room}: no cloud instance was running");
                    } else {
                        println!("{room}: terminated {}", terminated.join(", "));
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::JournalRemote(args)) => {
            use std::os::unix::process::CommandExt;
            let (plan, store) = plan_policy::load(&master, store_dir.as_deref())?;
            let receiver = lectern_netboot::journal::Receiver::prepare(
                &plan,
                &store,
                &args.key_dir,
                &args.output,
            )?;
            tracing::info!(listen = %receiver.listen, output = %receiver.output.display(), "receiving the hosts' journals");
            let error = receiver.command().exec();
            Err(anyhow::anyhow!(error).context(format!(
                "cannot run {} (Debian: systemd-journal-remote)",
                lectern_netboot::journal::RECEIVER
            )))
        }
        Some(Command::CheckStatic { server, check }) => {
            let (config, policy) = configure(server, state_dir, tftp_root)?;
            let gaps = plan_policy::Gaps::default();
            Ok(report(&check::run(&config, &policy, &gaps, check.rehash)))
        }
    }
}
