//! The `maki` command line: its arguments (clap) and what each command calls. The `maki`
//! binary only calls [`main`].

use std::path::{Path, PathBuf};

use clap::{CommandFactory, Parser, Subcommand};

use crate::MakiattoError;
use crate::machine::{self, InitOptions, Nameserver};
use crate::ssh::Target;
use crate::{
    health, manifest, nameserver, plan::Plan, profile, project::Project, remote::Remote, wit,
};

/// maki: provision the machines of a Makiatto CDN and deploy sites to them.
#[derive(Debug, Parser)]
#[command(name = "maki", version = crate::VERSION)]
pub struct Cli {
    /// Profile file (else MAKIATTO_PROFILE, else ~/.config/makiatto/default.toml).
    #[arg(long, global = true)]
    profile: Option<PathBuf>,
    /// Project file.
    #[arg(long, global = true, default_value = crate::project::FILE_NAME)]
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
    /// Run a local demo cluster (no root): GeoDNS, HTTP and HTTPS on loopback addresses.
    Demo(DemoArgs),
}

#[derive(Debug, clap::Args)]
struct DemoArgs {
    /// Number of nodes (1-3: Sydney, Frankfurt, New York).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Print one JSON line with every node's endpoints once the cluster serves.
    #[arg(long)]
    json: bool,
    /// The project to deploy.
    #[arg(long, default_value = "examples/makiatto.toml")]
    project: PathBuf,
    /// GeoIP city database (else MAKIATTO_GEOIP, else the test setup's cache).
    #[arg(long)]
    geoip: Option<PathBuf>,
    /// Address of the first node (the others follow).
    #[arg(long, default_value = "127.0.0.1")]
    first_ip: std::net::Ipv4Addr,
    /// Added to every port (DNS 10053, HTTP 10080, HTTPS 10443, ...).
    #[arg(long, default_value_t = 0)]
    port_offset: u16,
    /// Skip HTTPS (otherwise on when Pebble, the test ACME CA, is installed).
    #[arg(long)]
    no_https: bool,
}

#[derive(Debug, Subcommand)]
enum Machine {
    /// Install Makiatto on a server and join it to the cluster.
    Init(Init),
    /// Add an existing Makiatto node to the profile.
    Add {
        ssh_target: String,
        /// SSH port.
        #[arg(long, default_value_t = 22)]
        port: u16,
    },
    /// List the machines of the profile.
    List,
    /// Upgrade the Makiatto binary (all machines when none is named).
    Upgrade {
        names: Vec<String>,
        #[command(flatten)]
        binary: BinaryArgs,
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

#[derive(Debug, clap::Args)]
#[allow(clippy::struct_excessive_bools)] // one per command-line flag
struct Init {
    /// Node name (becomes <name>.ns.<domain>).
    name: String,
    /// user@host.
    ssh_target: String,
    /// SSH port.
    #[arg(long, default_value_t = 22)]
    port: u16,
    #[command(flatten)]
    binary: BinaryArgs,
    /// Pin this mesh address in the node's configuration (default: the cluster allocates
    /// one, and the node moves if it loses an address collision).
    #[arg(long)]
    mesh_address: Option<std::net::Ipv4Addr>,
    /// Not a nameserver.
    #[arg(long, conflicts_with = "force_ns")]
    skip_ns: bool,
    /// A nameserver even after the first three.
    #[arg(long)]
    force_ns: bool,
    /// Latitude (degrees); default: from the GeoIP database.
    #[arg(long, requires = "lon", allow_hyphen_values = true)]
    lat: Option<f64>,
    /// Longitude (degrees).
    #[arg(long, requires = "lat", allow_hyphen_values = true)]
    lon: Option<f64>,
    /// GeoIP database (mmdb) copied to the node for GeoDNS (else MAKIATTO_GEOIP_DB).
    #[arg(long, env = "MAKIATTO_GEOIP_DB")]
    geoip_db: Option<PathBuf>,
    /// Wipe the Makiatto data already on the machine and install again.
    #[arg(long)]
    recreate: bool,
    /// Do not obtain certificates (HTTP only).
    #[arg(long)]
    no_acme: bool,
}

/// Which daemon binary `init` and `upgrade` install.
#[derive(Debug, clap::Args)]
#[allow(clippy::struct_field_names)] // the fields are the --binary-* flags
struct BinaryArgs {
    /// The makiatto daemon binary to upload (default: `makiatto` beside `maki`, else the
    /// release download).
    #[arg(long)]
    binary_path: Option<PathBuf>,
    /// Release download URL the machine fetches; {version} and {arch} (x86_64, aarch64)
    /// are replaced (default: the GitHub release of this version).
    #[arg(long, env = machine::BINARY_URL_ENV)]
    binary_url: Option<String>,
    /// The download's SHA-256 (default: read from the URL with `.sha256` appended; required
    /// for a plain http:// URL).
    #[arg(long)]
    binary_sha256: Option<String>,
}

impl BinaryArgs {
    /// --binary-path, else --binary-url, else `makiatto` beside `maki`, else the release.
    fn source(&self) -> machine::BinarySource {
        let url = |template: String| machine::BinarySource::Url {
            template,
            sha256: self.binary_sha256.clone(),
        };
        if let Some(p) = &self.binary_path {
            return machine::BinarySource::Path(p.clone());
        }
        if let Some(u) = &self.binary_url {
            return url(u.clone());
        }
        let beside = beside_maki();
        if beside.is_file() {
            machine::BinarySource::Path(beside)
        } else {
            url(machine::DEFAULT_BINARY_URL.to_owned())
        }
    }
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

const DRY: &str = "dry run: nothing was uploaded\n";

/// Parses the process arguments and runs the command; returns what to print and whether
/// everything was fine (`maki health` prints a report even when something is red).
pub fn main() -> Result<(String, bool), MakiattoError> {
    run(&Cli::parse())
}

/// Runs a command; returns what to print and whether it all went well.
pub fn run(cli: &Cli) -> Result<(String, bool), MakiattoError> {
    let ok = |s: String| Ok((s, true));
    let location = || profile::locate_from_env(cli.profile.as_deref());
    let profile = || profile::Profile::load(&location()?);
    match &cli.command {
        Command::Check | Command::Sync { dry_run: true } => {
            ok(plan(&cli.config)?.to_string() + DRY)
        }
        Command::Sync { .. } => {
            let plan = plan(&cli.config)?;
            let remote = node(cli)?;
            ok(with_bar(|bar| {
                remote.sync(&plan, "maki", &|d, p| bar(p.bytes_done, p.bytes_total, d))
            })?)
        }
        Command::Dns(Dns::NameserverSetup) => ok(nameserver::for_project(
            &profile()?,
            &Project::load(&cli.config)?,
        )?),
        Command::Machine(Machine::List) => ok(profile()?.table()),
        Command::Machine(Machine::Init(i)) => {
            let loc = location()?;
            // `init` creates the profile it names.
            let mut profile = match profile::Profile::load(&loc) {
                Err(profile::ProfileError::Missing { .. }) => profile::Profile::default(),
                other => other?,
            };
            let options = init_options(cli, i)?;
            let runtime = runtime()?;
            let out = with_steps(|progress| {
                runtime.block_on(machine::init(&mut profile, &loc.path, &options, progress))
            })?;
            ok(out)
        }
        Command::Machine(Machine::Remove { name, force }) => {
            let loc = location()?;
            let mut profile = profile::Profile::load(&loc)?;
            let (key, runtime) = (cli.ssh_priv_key.as_deref(), runtime()?);
            let out = with_steps(|progress| {
                runtime.block_on(machine::remove(
                    &mut profile,
                    &loc.path,
                    name,
                    key,
                    *force,
                    &confirm,
                    progress,
                ))
            })?;
            ok(out)
        }
        Command::Machine(Machine::Restart { names }) => {
            let (profile, key, runtime) = (profile()?, cli.ssh_priv_key.as_deref(), runtime()?);
            let out = with_steps(|progress| {
                runtime.block_on(machine::restart(&profile, names, key, progress))
            })?;
            ok(out)
        }
        Command::Machine(Machine::Upgrade { names, binary }) => {
            let (profile, key, runtime) = (profile()?, cli.ssh_priv_key.as_deref(), runtime()?);
            let binary = binary.source();
            let out = with_steps(|progress| {
                runtime.block_on(machine::upgrade(&profile, names, &binary, key, progress))
            })?;
            ok(out)
        }
        Command::Machine(Machine::Add { ssh_target, port }) => {
            let loc = location()?;
            let mut profile = match profile::Profile::load(&loc) {
                Err(profile::ProfileError::Missing { .. }) => profile::Profile::default(),
                other => other?,
            };
            let target: Target = ssh_target.parse()?;
            let options = crate::ssh::Options {
                port: *port,
                key: cli.ssh_priv_key.clone(),
                interactive: true,
            };
            let runtime = runtime()?;
            let out = with_steps(|progress| {
                runtime.block_on(machine::add(
                    &mut profile,
                    &loc.path,
                    &target,
                    &options,
                    progress,
                ))
            })?;
            ok(out)
        }
        Command::Wasm(Wasm::Fetch { force }) => ok(wit::fetch(Path::new("wit"), *force)?),
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "maki", &mut script);
            ok(String::from_utf8_lossy(&script).into_owned())
        }
        Command::Health { json } => {
            let report =
                runtime()?.block_on(health::check(&profile()?, cli.ssh_priv_key.as_deref()));
            let text = if *json { report.json() } else { report.table() };
            Ok((text, report.all_green()))
        }
        Command::Peer(Peer::Add(a)) => {
            ok(node(cli)?.add_peer(&a.name, &a.wg_pubkey, &a.endpoint, a.wg_address)?)
        }
        Command::Peer(Peer::List) => ok(node(cli)?.peers()?),
        Command::Peer(Peer::Remove { name }) => ok(node(cli)?.remove_peer(name)?),
        Command::Peer(Peer::WgConfig { name }) => ok(node(cli)?.wg_config(name)?),
        Command::Rollback { domain, id } => ok(node(cli)?.rollback(domain, id.as_deref())?),
        Command::Deployments { domain } => ok(node(cli)?.deployments(domain)?),
        Command::Demo(d) => {
            let mut o = crate::demo::DemoOptions::new();
            (o.nodes, o.project, o.first_ip) = (d.nodes, d.project.clone(), d.first_ip);
            (o.port_offset, o.https) = (d.port_offset, !d.no_https);
            o.geoip = d.geoip.clone().unwrap_or(o.geoip);
            crate::demo::run(&o, d.json)?;
            ok(String::new())
        }
    }
}

fn init_options(cli: &Cli, i: &Init) -> Result<InitOptions, MakiattoError> {
    let target: Target = i.ssh_target.parse()?;
    let binary = i.binary.source();
    Ok(InitOptions {
        name: i.name.clone(),
        target,
        ssh: crate::ssh::Options {
            port: i.port,
            key: cli.ssh_priv_key.clone(),
            interactive: true,
        },
        binary,
        mesh_address: i.mesh_address,
        nameserver: match (i.skip_ns, i.force_ns) {
            (true, _) => Nameserver::Skip,
            (_, true) => Nameserver::Force,
            _ => Nameserver::Auto,
        },
        coordinates: i.lat.zip(i.lon),
        geoip_db: i.geoip_db.clone(),
        recreate: i.recreate,
        acme: !i.no_acme,
    })
}

/// The `makiatto` binary beside the running `maki`.
fn beside_maki() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("makiatto")))
        .unwrap_or_else(|| PathBuf::from("makiatto"))
}

/// Asks `question` on the terminal (the spinner hidden meanwhile); anything but y/yes is
/// no (and no terminal is no).
fn confirm(question: &str) -> bool {
    crate::ssh::on_terminal(|| ask(question))
}

fn ask(question: &str) -> bool {
    use std::io::{BufRead, Write};
    let Ok(tty) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
    else {
        return false;
    };
    let mut w = &tty;
    if write!(w, "{question} [y/N] ")
        .and_then(|()| w.flush())
        .is_err()
    {
        return false;
    }
    let mut answer = String::new();
    let _ = std::io::BufReader::new(&tty).read_line(&mut answer);
    matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}

fn runtime() -> Result<tokio::runtime::Runtime, MakiattoError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| MakiattoError::Io(e.to_string()))
}

/// Runs `f` with a spinner on stderr naming the current step; the spinner hides while a
/// question is asked on the terminal ([`crate::ssh::on_terminal`]).
fn with_steps<T>(f: impl FnOnce(machine::Progress<'_>) -> T) -> T {
    let bar = indicatif::ProgressBar::new_spinner();
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    let hidden = bar.clone();
    crate::ssh::set_suspender(Some(std::sync::Arc::new(move |f: &mut dyn FnMut()| {
        hidden.suspend(f);
    })));
    let result = f(&|step| match step {
        Some(s) => {
            bar.println(format!("==> {s}"));
            bar.set_message(s.to_owned());
        }
        None => bar.finish_and_clear(),
    });
    crate::ssh::set_suspender(None);
    bar.finish_and_clear();
    result
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

/// The node behind `--socket`, else the first machine of the profile that answers over SSH.
fn node(cli: &Cli) -> Result<Remote, MakiattoError> {
    if let Some(socket) = cli.socket.as_deref() {
        return Remote::new(socket);
    }
    let profile = profile::Profile::load(&profile::locate_from_env(cli.profile.as_deref())?)?;
    Remote::over_ssh(&profile, cli.ssh_priv_key.as_deref())
}
