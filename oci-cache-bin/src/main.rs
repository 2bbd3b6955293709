//! `oci-cache`: the pull-through cache server and its command-line tools.
//!
//! Thin by design: parse arguments, read configuration, install the log
//! subscriber, then hand over to `oci-cache-core` and `oci-cache-http`.

mod cli;
mod config;
mod duration;
mod resolve;
mod serve;
mod trust;

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log.as_deref(), cli.log_json);
    // Unlocked handles: the log subscriber writes to stderr from worker
    // threads, and a lock held here for the whole run would deadlock them.
    let mut stdout = std::io::stdout();
    let mut stderr = std::io::stderr();
    match &cli.command {
        Command::Resolve(args) => resolve::run(args, &mut stdout, &mut stderr),
        Command::CheckConfig(args) => serve::check_config(args, &mut stdout, &mut stderr),
        Command::Serve(args) => serve::run(args, &mut stderr),
    }
}

fn init_tracing(filter: Option<&str>, json: bool) {
    let filter = filter
        .map(EnvFilter::new)
        .or_else(|| EnvFilter::try_from_default_env().ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
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
