//! `maki`, the Makiatto CLI. Thin: the arguments and commands live in [`makiatto::cli`].

use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    match makiatto::cli::main() {
        Ok((out, all_ok)) => {
            if let Err(e) = std::io::stdout().write_all(out.as_bytes()) {
                eprintln!("maki: cannot write the output: {e}");
                return ExitCode::FAILURE;
            }
            if all_ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("{:?}", miette::Report::new(e));
            ExitCode::FAILURE
        }
    }
}
