//! `makiatto`: the node daemon. Thin: argument parsing only; the node lives in the
//! `makiatto` library.

use clap::Parser;

/// Run a Makiatto CDN node.
#[derive(Debug, Parser)]
#[command(name = "makiatto", version = makiatto::VERSION, about)]
struct Args {}

fn main() {
    let _args = Args::parse();
    eprintln!(
        "makiatto {}: the node is not implemented yet (see issue 6)",
        makiatto::VERSION
    );
    std::process::exit(2);
}
