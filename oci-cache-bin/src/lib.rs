//! `oci-cache`: the pull-through cache server and its command-line tools.
//!
//! Thin by design: parse arguments, read configuration, install the log
//! subscriber, then hand over to `oci-cache-core` and `oci-cache-http`. The
//! binary (`src/main.rs`) only calls [`run`]; this library target exists so
//! the fuzz targets in `fuzz/` reach the configuration parser ([`fuzzing`]).
//! Embedders want `oci-cache-core` and `oci-cache-http`, not this crate.

mod check_config;
mod cli;
mod client_config;
mod config;
mod doctor;
mod engine;
mod evict;
mod fleet;
mod healthcheck;
mod images;
mod layout;
mod progress;
mod registry_compat;
mod reload;
mod resolve;
mod serve;
mod trust;
mod verify;
mod walk;
mod warm;

#[doc(hidden)]
pub mod fuzzing;

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use crate::cli::{Cli, Command};

/// Runs the command line: parses `std::env::args`, then runs the command.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    // The operating commands report per image on stdout; engine logs at
    // `info` would bury that (and break up progress bars).
    let default_filter = match &cli.command {
        Command::Warm(_)
        | Command::Verify(_)
        | Command::Export(_)
        | Command::Import(_)
        | Command::Purge(_)
        | Command::Gc(_) => "warn",
        _ => "info",
    };
    init_tracing(cli.log.as_deref(), cli.log_json, default_filter);
    // Unlocked handles: the log subscriber writes to stderr from worker
    // threads, and a lock held here for the whole run would deadlock them.
    let mut stdout = std::io::stdout();
    let mut stderr = std::io::stderr();
    match &cli.command {
        Command::Resolve(args) => resolve::run(args, &mut stdout, &mut stderr),
        Command::CheckConfig(args) => check_config::run(args, &mut stdout, &mut stderr),
        Command::Serve(args) => serve::run(args, &mut stderr),
        Command::ClientConfig(args) => client_config::run(args, &mut stdout, &mut stderr),
        Command::Doctor(args) => doctor::run(args, &mut stdout, &mut stderr),
        Command::Healthcheck(args) => healthcheck::run(args, &mut stderr),
        Command::Warm(args) => warm::run(args, &mut stderr),
        Command::Verify(args) => verify::run(args, &mut stderr),
        Command::Export(args) => layout::export(args, &mut stderr),
        Command::Import(args) => layout::import(args, &mut stderr),
        Command::Purge(args) => evict::purge(args, &mut stdout, &mut stderr),
        Command::Gc(args) => evict::gc(args, &mut stdout, &mut stderr),
        Command::Registry(args) => serve::run(&args.command.serve_args(), &mut stderr),
    }
}

fn init_tracing(filter: Option<&str>, json: bool, default_filter: &str) {
    let filter = filter
        .map(EnvFilter::new)
        .or_else(|| EnvFilter::try_from_default_env().ok())
        .unwrap_or_else(|| EnvFilter::new(default_filter));
    // Colours only for a person at a terminal, not in files and log collectors.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
