//! `maki`, the Makiatto CLI. Thin: it parses arguments and calls the `makiatto` library.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{CommandFactory, Parser, Subcommand};
use makiatto::MakiattoError::{self, NotYet};
use makiatto::{manifest, nameserver, plan::Plan, profile, project::Project, remote::Remote, wit};

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
    /// Talk to this node admin socket directly (on a node, or an SSH-forwarded one).
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
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
    /// Switch a domain back to an earlier deployment (the previous one by default).
    Rollback { domain: String, id: Option<String> },
    /// List a domain's deployments.
    Deployments { domain: String },
    /// Print a shell completion script.
    Completions { shell: clap_complete::Shell },
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
    /// Register an external peer (--wg-pubkey, --endpoint, optional --wg-address).
    Add(PeerAdd),
    /// List external peers.
    List,
    /// Remove an external peer.
    Remove { name: String },
    /// Print a peer's wg-quick configuration.
    WgConfig { name: String },
}

#[derive(Debug, clap::Args)]
struct PeerAdd {
    name: String,
    #[arg(long)]
    wg_pubkey: String,
    #[arg(long)]
    endpoint: String,
    #[arg(long)]
    wg_address: Option<std::net::Ipv4Addr>,
}

#[derive(Debug, Subcommand)]
enum Wasm {
    /// Write the WIT interface files to ./wit (--force overwrites).
    Fetch {
        #[arg(long)]
        force: bool,
    },
}

const NODE_API: &str = "needs SSH (issue 6); --socket <path> reaches a node's admin socket";
const PROVISIONING: &str = "provisioning over SSH arrives with issue 7";
const DRY: &str = "dry run: nothing was uploaded\n";

fn main() -> miette::Result<()> {
    let out = run(&Cli::parse())?;
    miette::IntoDiagnostic::into_diagnostic(std::io::stdout().write_all(out.as_bytes()))
}

/// Runs a command; returns what to print.
fn run(cli: &Cli) -> Result<String, MakiattoError> {
    let profile = || profile::Profile::load(&profile::locate_from_env(cli.profile.as_deref())?);
    match &cli.command {
        Command::Check | Command::Sync { dry_run: true } => {
            Ok(plan(&cli.config)?.to_string() + DRY)
        }
        Command::Sync { .. } => {
            let (remote, plan) = (node(cli, "sync")?, plan(&cli.config)?);
            with_bar(|bar| remote.sync(&plan, "maki", &|d, p| bar(p.bytes_done, p.bytes_total, d)))
        }
        Command::Dns(Dns::NameserverSetup) => Ok(nameserver::for_project(
            &profile()?,
            &Project::load(&cli.config)?,
        )?),
        Command::Machine(Machine::List) => Ok(profile()?.table()),
        Command::Machine(_) => not_yet("machine init|add|upgrade|remove|restart", PROVISIONING),
        Command::Wasm(Wasm::Fetch { force }) => Ok(wit::fetch(Path::new("wit"), *force)?),
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "maki", &mut script);
            Ok(String::from_utf8_lossy(&script).into_owned())
        }
        Command::Health { .. } => not_yet("health", NODE_API),
        Command::Peer(Peer::Add(a)) => {
            node(cli, "peer add")?.add_peer(&a.name, &a.wg_pubkey, &a.endpoint, a.wg_address)
        }
        Command::Peer(Peer::List) => node(cli, "peer list")?.peers(),
        Command::Peer(Peer::Remove { name }) => node(cli, "peer remove")?.remove_peer(name),
        Command::Peer(Peer::WgConfig { name }) => node(cli, "peer wg-config")?.wg_config(name),
        Command::Rollback { domain, id } => node(cli, "rollback")?.rollback(domain, id.as_deref()),
        Command::Deployments { domain } => node(cli, "deployments")?.deployments(domain),
    }
}

/// Validates makiatto.toml and hashes its sites.
fn plan(config: &Path) -> Result<Plan, MakiattoError> {
    let (project, o) = (Project::load(config)?, manifest::Options::default());
    let plan = with_bar(|b| Plan::build(&project, &o, &|d, p| b(p.bytes_done, p.bytes_total, d)));
    Ok(plan?)
}

/// Runs `f` with a progress bar (position, length, label) on stderr when it is a terminal.
fn with_bar<T>(f: impl FnOnce(&(dyn Fn(u64, u64, &str) + Sync)) -> T) -> T {
    let bar = indicatif::ProgressBar::new(0);
    let result = f(&|done, total, label| {
        bar.set_length(total);
        bar.set_position(done);
        bar.set_message(label.to_owned());
    });
    bar.finish_and_clear();
    result
}

/// The node behind `--socket`, until SSH lands.
fn node(cli: &Cli, what: &'static str) -> Result<Remote, MakiattoError> {
    Option::map_or(cli.socket.as_deref(), not_yet(what, NODE_API), Remote::new)
}

fn not_yet<T>(command: &'static str, delivery: &'static str) -> Result<T, MakiattoError> {
    Err(NotYet { command, delivery })
}
