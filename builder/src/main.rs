use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use lectern_builder::commands::{self, Global};

/// Build lectern's immutable netboot images and per-host layers.
#[derive(Debug, Parser)]
#[command(name = "imgbuild", version = lectern_master::VERSION)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate the master file and its secrets, find the recipes its roles need, and say which layers
    /// the lock file does not cover yet (exit code 0 or 1).
    Check,
    /// Show every host with its role, room, addresses and wiring.
    Plan {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print the master file's JSON Schema.
    Schema {
        /// Print the Markdown field reference instead (as in the README).
        #[arg(long)]
        markdown: bool,
    },
    Role(commands::role::Args),
    All(commands::all::Args),
    Update(commands::update::Args),
    Disk(commands::disk::Args),
    Publish(commands::publish::Args),
    List(commands::list::Args),
    Release(commands::release::Args),
    Gc(commands::gc::Args),
}

fn main() -> ExitCode {
    lectern_cli_docs::write_if_asked(Cli::command);
    let cli = Cli::parse();
    lectern_builder::progress::set(cli.global.verbose, cli.global.quiet);
    let result = match &cli.command {
        Command::Check => return commands::inspect::check(&cli.global),
        Command::Plan { json } => return commands::inspect::plan(&cli.global.config, *json),
        Command::Schema { markdown } => return commands::inspect::schema(*markdown),
        Command::Role(args) => commands::role::run(args, &cli.global),
        Command::All(args) => commands::all::run(args, &cli.global),
        Command::Update(args) => commands::update::run(args, &cli.global),
        Command::Disk(args) => commands::disk::run(args, &cli.global),
        Command::Publish(args) => commands::publish::run(args, &cli.global),
        Command::List(args) => commands::list::run(args, &cli.global),
        Command::Release(args) => commands::release::run(args, &cli.global),
        Command::Gc(args) => commands::gc::run(args, &cli.global),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("imgbuild: {err:#}");
            ExitCode::FAILURE
        }
    }
}
