//! `maki`: the Makiatto command-line tool. Thin: argument parsing only; the logic lives in
//! the `makiatto` library.

use clap::Parser;

/// Manage a Makiatto CDN cluster.
#[derive(Debug, Parser)]
#[command(name = "maki", version = makiatto::VERSION, about)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
    eprintln!(
        "maki {}: no subcommands are implemented yet (see issue 6)",
        makiatto::VERSION
    );
    std::process::exit(2);
}
