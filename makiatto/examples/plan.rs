//! Validates a makiatto.toml and prints what `maki sync` would deploy, with the rows one
//! deployment of each domain would write to the cluster.
//!
//! Run with `cargo run -p makiatto --example plan -- examples/makiatto.toml`.

use std::fmt::Write as _;
use std::path::PathBuf;

use makiatto::manifest::Options;
use makiatto::plan::Plan;
use makiatto::project::Project;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args_os()
        .nth(1)
        .map_or_else(|| PathBuf::from("makiatto.toml"), PathBuf::from);
    let project = match Project::load(&path) {
        Ok(project) => project,
        Err(e) => {
            // One line per problem; the `maki` CLI renders the same error with excerpts.
            if let makiatto::project::ProjectError::Invalid(file) = &e {
                eprint!("{}", file.summary());
            }
            return Err(e.into());
        }
    };
    let plan = Plan::build(&project, &Options::default(), &|_, _| {})?;
    let mut out = String::new();
    out.push_str(&plan.to_string());
    for d in &plan.domains {
        let rows = d.rows("example-deployment", 0, "example")?;
        writeln!(
            out,
            "{}: {} file rows, {} record rows, {} function rows, {} transform rows",
            d.domain.name,
            rows.files.len(),
            rows.records.len(),
            rows.functions.len(),
            rows.transforms.len()
        )?;
    }
    std::io::Write::write_all(&mut std::io::stdout(), out.as_bytes())?;
    Ok(())
}
