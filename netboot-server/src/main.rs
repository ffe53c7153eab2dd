//! netbootd: serves DHCP, TFTP and HTTP so every machine boots its role by MAC.
//!
//! Until the master-plan adapter is wired in (`--config master.toml`), hosts, network and one
//! image are given on the command line and served through the in-memory `StaticPolicy`.

use std::io::IsTerminal;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use lectern_netboot::check;
use lectern_netboot::dhcp::Mode;
use lectern_netboot::mac::MacAddr;
use lectern_netboot::policy::{BootPolicy, Host, Network, StaticImage, StaticPolicy};
use lectern_netboot::server::{self, ServerConfig};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ModeArg {
    Authoritative,
    Proxy,
}

/// `MAC,IP,HOSTNAME` or `MAC,HOSTNAME` (no reservation), like dnsmasq's dhcp-host.
#[derive(Debug, Clone)]
struct HostArg(Host);

impl FromStr for HostArg {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> anyhow::Result<Self> {
        let fields: Vec<&str> = text.split(',').collect();
        let (mac, ip, hostname) = match fields.as_slice() {
            [mac, ip, hostname] => (
                mac,
                Some(ip.parse::<Ipv4Addr>().context("host address")?),
                hostname,
            ),
            [mac, hostname] => (mac, None, hostname),
            _ => bail!("want MAC,IP,HOSTNAME or MAC,HOSTNAME: {text:?}"),
        };
        Ok(HostArg(Host {
            mac: mac.parse::<MacAddr>()?,
            hostname: hostname.to_string(),
            ip,
        }))
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
    /// Known machine, repeatable: MAC,IP,HOSTNAME or MAC,HOSTNAME.
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
    #[arg(long)]
    domain: Option<String>,
    #[arg(long, default_value_t = 3600)]
    lease_secs: u64,
    /// Where the lease table is kept.
    #[arg(long, default_value = "/var/lib/netbootd")]
    state_dir: PathBuf,
    /// TFTP root (and HTTP-boot firmware): the iPXE binaries.
    #[arg(long, default_value = "/usr/lib/ipxe")]
    tftp_root: PathBuf,
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
    /// Directory of per-host layers named HOSTNAME.cpio.
    #[arg(long)]
    layer_dir: Option<PathBuf>,
}

fn init_logging() {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    // journald stamps every line itself.
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.without_time().init();
    } else {
        builder.init();
    }
}

#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve DHCP, TFTP and HTTP until SIGTERM; SIGHUP reloads.
    Serve(Args),
    /// Check the configuration and the files it names, without touching the network.
    Check(Args),
}

/// The server settings and the policy the arguments describe.
fn configure(args: Args) -> (ServerConfig, StaticPolicy) {
    let network = Network {
        netmask: args.netmask,
        router: args.router,
        dns: args.dns,
        domain: args.domain,
        lease_time: Duration::from_secs(args.lease_secs),
    };
    let hosts = args.hosts.into_iter().map(|HostArg(host)| host).collect();
    let mut policy = StaticPolicy::new(hosts, network);
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
        state_dir: args.state_dir,
        tftp_root: args.tftp_root,
        http_port: args.http_port,
    };
    (config, policy)
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    init_logging();
    match Cli::parse().command {
        Command::Serve(args) => {
            let (config, policy) = configure(args);
            // Everything comes from the command line, so a reload re-applies the same policy.
            server::run(config, move || {
                Ok(Arc::new(policy.clone()) as Arc<dyn BootPolicy>)
            })
            .await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check(args) => {
            let (config, policy) = configure(args);
            let problems = check::check(&config, &policy);
            for problem in &problems {
                println!("problem: {problem}");
            }
            if problems.is_empty() {
                println!("ok: {} hosts", policy.hosts().len());
                Ok(ExitCode::SUCCESS)
            } else {
                Ok(ExitCode::FAILURE)
            }
        }
    }
}
