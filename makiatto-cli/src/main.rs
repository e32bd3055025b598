//! `maki`: the Makiatto command-line tool. Thin: argument parsing, then calls into the
//! `makiatto` library, which holds the logic.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Args, CommandFactory, Parser, Subcommand};
use makiatto::MakiattoError::{self, NotYet};
use makiatto::{manifest, nameserver, plan::Plan, profile, project::Project, wit};
use miette::IntoDiagnostic;

/// Manage a Makiatto CDN cluster.
#[derive(Debug, Parser)]
#[command(name = "maki", version = makiatto::VERSION, about)]
struct Cli {
    /// Profile file (else MAKIATTO_PROFILE, else ~/.config/makiatto/default.toml).
    #[arg(long, global = true)]
    profile: Option<PathBuf>,
    /// Project file.
    #[arg(long, global = true, default_value = makiatto::project::FILE_NAME)]
    config: PathBuf,
    /// SSH private key used to reach the machines.
    #[arg(long, global = true)]
    ssh_priv_key: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Provision and manage the machines of the profile.
    #[command(subcommand)]
    Machine(Machine),
    /// Deploy makiatto.toml's domains to every node.
    Sync {
        /// Validate and hash locally, print what would be deployed, upload nothing.
        #[arg(long)]
        dry_run: bool,
        /// How long to wait for every healthy node to activate, seconds.
        #[arg(long, default_value_t = 120)]
        timeout_secs: u64,
    },
    /// Validate makiatto.toml and print what `maki sync` would deploy.
    Check,
    /// DNS setup at your registrar.
    #[command(subcommand)]
    Dns(Dns),
    /// Check every node of the cluster.
    Health {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// External WireGuard peers (e.g. an observability server).
    #[command(subcommand)]
    Peer(Peer),
    /// WebAssembly tooling.
    #[command(subcommand)]
    Wasm(Wasm),
    /// Switch a domain back to an earlier deployment.
    Rollback {
        domain: String,
        deployment: Option<String>,
    },
    /// List a domain's deployments.
    Deployments { domain: String },
    /// Print a shell completion script.
    Completions { shell: clap_complete::Shell },
    /// Run a local multi-node cluster serving examples/site.
    Demo {
        /// Number of nodes.
        #[arg(long, default_value_t = 3)]
        nodes: u8,
        /// Print one JSON line describing the cluster once it serves.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum Machine {
    /// Install Makiatto on a server and join it to the cluster.
    Init { name: String, ssh_target: String },
    /// Add an existing Makiatto node to the profile.
    Add { ssh_target: String },
    /// List the machines of the profile.
    List,
    /// Upgrade the Makiatto binary (all machines when none is named).
    Upgrade {
        names: Vec<String>,
        /// Use this local binary instead of a release download.
        #[arg(long)]
        binary_path: Option<PathBuf>,
    },
    /// Remove a machine from the cluster and clean it up.
    Remove {
        name: String,
        /// Skip the confirmation prompt.
        #[arg(long)]
        force: bool,
    },
    /// Restart the Makiatto service (all machines when none is named).
    Restart { names: Vec<String> },
}

#[derive(Debug, Subcommand)]
enum Dns {
    /// Print the glue records and nameservers to set at your registrar.
    NameserverSetup,
}

#[derive(Debug, Subcommand)]
enum Peer {
    /// Register an external peer.
    Add(PeerAdd),
    /// List external peers.
    List,
    /// Remove an external peer.
    Remove { name: String },
    /// Print a peer's wg-quick configuration.
    WgConfig { name: String },
}

#[derive(Debug, Args)]
struct PeerAdd {
    name: String,
    /// The peer's WireGuard public key.
    #[arg(long)]
    wg_pubkey: String,
    /// The peer's public IP or host name.
    #[arg(long)]
    endpoint: String,
    /// Mesh address to assign (allocated when absent).
    #[arg(long)]
    wg_address: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Wasm {
    /// Write the WIT interface files to ./wit.
    Fetch {
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
}

const NODE_API: &str = "it needs the node's admin API, which arrives with issue 6";
const PROVISIONING: &str = "provisioning over SSH arrives with issue 7";

fn main() -> miette::Result<()> {
    std::io::stdout()
        .write_all(run(&Cli::parse())?.as_bytes())
        .into_diagnostic()
}

/// Runs a command; returns what to print.
fn run(cli: &Cli) -> Result<String, MakiattoError> {
    let not_yet = |command, delivery| Err(NotYet { command, delivery });
    let load_profile =
        || profile::Profile::load(&profile::locate_from_env(cli.profile.as_deref())?);
    match &cli.command {
        Command::Check | Command::Sync { dry_run: true, .. } => check(&cli.config),
        Command::Sync { .. } => not_yet("sync", NODE_API),
        Command::Dns(Dns::NameserverSetup) => {
            let project = Project::load(&cli.config)?;
            let domains: Vec<&str> = project.domains.iter().map(|d| d.name.as_str()).collect();
            Ok(nameserver::instructions(&load_profile()?, &domains)?)
        }
        Command::Machine(Machine::List) => Ok(load_profile()?.table()),
        Command::Machine(_) => not_yet("machine init|add|upgrade|remove|restart", PROVISIONING),
        Command::Wasm(Wasm::Fetch { force }) => Ok(wit::fetch(Path::new("wit"), *force)?),
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "maki", &mut script);
            Ok(String::from_utf8_lossy(&script).into_owned())
        }
        Command::Health { .. } => not_yet("health", NODE_API),
        Command::Peer(_) => not_yet("peer", NODE_API),
        Command::Rollback { .. } => not_yet("rollback", NODE_API),
        Command::Deployments { .. } => not_yet("deployments", NODE_API),
        Command::Demo { .. } => not_yet("demo", "the local demo cluster arrives with issue 6"),
    }
}

/// `maki check` and `maki sync --dry-run`: validate, hash, show the plan.
fn check(config: &Path) -> Result<String, MakiattoError> {
    let project = Project::load(config)?;
    let bar = indicatif::ProgressBar::new(0);
    let progress = |domain: &str, p: manifest::Progress| {
        bar.set_length(p.bytes_total);
        bar.set_position(p.bytes_done);
        bar.set_message(format!("{domain}: {}/{}", p.files_done, p.files_total));
    };
    let plan = Plan::build(&project, &manifest::Options::default(), &progress);
    bar.finish_and_clear();
    Ok(format!("{}dry run: nothing was uploaded\n", plan?))
}
