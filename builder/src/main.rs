use std::process::ExitCode;

use clap::{Parser, Subcommand};
use lectern_builder::commands::{self, Global};

/// Build lectern's immutable netboot images and per-host layers.
#[derive(Debug, Parser)]
#[command(name = "imgbuild", version)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Role(commands::role::Args),
    All(commands::all::Args),
    List(commands::list::Args),
    Gc(commands::gc::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Role(args) => commands::role::run(args, &cli.global),
        Command::All(args) => commands::all::run(args, &cli.global),
        Command::List(args) => commands::list::run(args, &cli.global),
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
