//! `makiatto`: the node daemon. Thin: it parses arguments, sets up logging, loads the node
//! configuration and runs [`makiatto::node::Node`] until SIGTERM or SIGINT.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use makiatto::config::NodeConfig;
use makiatto::node::{Node, shutdown_signal};

/// Run a Makiatto CDN node.
#[derive(Debug, Parser)]
#[command(name = "makiatto", version = makiatto::VERSION, about)]
struct Args {
    /// The node configuration file.
    #[arg(long, default_value = "/etc/makiatto/config.toml")]
    config: PathBuf,
    /// Check the configuration and exit.
    #[arg(long)]
    check: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Create the node's WireGuard key if missing and print its public key.
    WgKey {
        /// The node's data directory.
        #[arg(long, default_value = "/var/makiatto")]
        data_dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(Command::WgKey { data_dir }) = &args.command {
        return match makiatto::node::wg_public_key(data_dir) {
            Ok(key) => {
                let mut out = std::io::stdout();
                match std::io::Write::write_all(&mut out, format!("{key}\n").as_bytes()) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => fail(miette::miette!("writing the key: {e}")),
                }
            }
            Err(e) => fail(e),
        };
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = match NodeConfig::load(&args.config) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    if args.check {
        eprintln!("{}: ok", args.config.display());
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(miette::miette!("cannot start the runtime: {e}")),
    };
    let result = runtime.block_on(Node::run(config, shutdown_signal()));
    // Blocking work still running (a blob fetch, a sync answer) must not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

fn fail(e: impl Into<miette::Report>) -> ExitCode {
    eprintln!("{:?}", e.into());
    ExitCode::FAILURE
}
