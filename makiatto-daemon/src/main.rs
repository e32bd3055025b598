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
}

fn main() -> ExitCode {
    let args = Args::parse();
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
    match runtime.block_on(Node::run(config, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

fn fail(e: impl Into<miette::Report>) -> ExitCode {
    eprintln!("{:?}", e.into());
    ExitCode::FAILURE
}
