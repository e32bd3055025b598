//! `maki machine …`: provisioning Makiatto nodes over SSH.
//!
//! [`init`] installs a node step by step (each step named in progress and in errors):
//! connect and check sudo, detect the OS and architecture, refuse a machine that already
//! holds Makiatto data (unless `recreate`), install the daemon binary (a local file uploaded,
//! or a release the machine downloads — [`BinarySource`]; SHA-256 checked on the machine
//! either way), create the `makiatto` system user and its directories, have the node generate
//! its WireGuard key (only the public key leaves it), place it (given coordinates or the
//! GeoIP database), register it through a node already in the cluster, write its
//! configuration and a least-privilege systemd unit, start it, wait until it is in the
//! membership view, and record it in the profile. The mesh address is not written into the
//! configuration (unless asked for): the node takes the one the cluster allocates, may move
//! when it loses an address collision, and the profile records the address it has once it
//! joined.
//!
//! [`upgrade`] copies the store database aside (service stopped; the copy counts only once
//! it is complete and on disk) before starting the new binary, judges the new binary by the
//! node's own fresh health report, and on failure puts back both the previous binary and
//! that copy of the data, which then continues under a new replica identity (the new binary
//! may have issued versions under the old one). It refuses a machine where an earlier
//! upgrade or rollback did not finish. A download over plain http needs a checksum given
//! with it (`--binary-sha256`): one fetched from the same server proves nothing.
//!
//! Files on a node: `/usr/local/bin/makiatto`, `/etc/makiatto/config.toml`,
//! `/var/makiatto/` (data, WireGuard key, GeoIP database),
//! `/etc/systemd/system/makiatto.service`, and the `makiatto` user and group.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use miette::Diagnostic;

use crate::admin::NewNode;
use crate::admin::client::Client;
use crate::config::{NodeConfig, SeedNode};
use crate::profile::{Machine, Profile};
use crate::ssh::{self, Ssh, SshError, Target, quote};

/// Where the daemon binary goes.
pub const BINARY: &str = "/usr/local/bin/makiatto";
/// The node configuration.
pub const CONFIG: &str = "/etc/makiatto/config.toml";
/// The data directory.
pub const DATA_DIR: &str = "/var/makiatto";
/// The systemd unit.
pub const UNIT: &str = "/etc/systemd/system/makiatto.service";
/// The admin socket on a node.
pub const ADMIN_SOCKET: &str = "/run/makiatto/admin.sock";
/// The WireGuard port.
pub const WG_PORT: u16 = 51880;
/// How long `init` waits for the new node to join.
pub const JOIN_WAIT: Duration = Duration::from_secs(90);
/// Nameservers a cluster gets before new nodes stop being nameservers by default.
pub const DEFAULT_NAMESERVERS: usize = 3;
/// Where `upgrade` keeps the store database while a new binary is on trial. It only ever
/// holds a complete copy: the copy is made in [`UPGRADE_BACKUP_TMP`], flushed to disk and
/// then renamed.
pub const UPGRADE_BACKUP: &str = "/var/makiatto/upgrade-backup";
/// Where `upgrade` copies the store database before the copy is complete.
pub const UPGRADE_BACKUP_TMP: &str = "/var/makiatto/upgrade-backup.tmp";
/// The store database files (SQLite and its write-ahead log).
const STORE_FILES: &str = "store.db store.db-wal store.db-shm";
/// The release download used when no binary is given: `{version}` is this `maki`'s
/// version, `{arch}` the machine's (`uname -m`: x86_64, aarch64). The SHA-256 is read from
/// the same URL with `.sha256` appended.
pub const DEFAULT_BINARY_URL: &str = "https://github.com/makiatto/makiatto/releases/download/v{version}/makiatto-{arch}-unknown-linux-gnu";
/// The environment variable with another release download URL template.
pub const BINARY_URL_ENV: &str = "MAKIATTO_BINARY_URL";
/// The architectures a release exists for (`uname -m` spelling).
pub const ARCHITECTURES: [&str; 2] = ["x86_64", "aarch64"];

/// Where the daemon binary comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BinarySource {
    /// A local file, uploaded over SSH.
    Path(PathBuf),
    /// A release the machine downloads (curl, else wget).
    Url {
        /// URL template: `{version}` and `{arch}` are replaced.
        template: String,
        /// The expected SHA-256 (hex); `None`: read from `<url>.sha256`.
        sha256: Option<String>,
    },
}

impl BinarySource {
    /// The release download URL for this version and `arch`.
    pub fn url(template: &str, arch: &str) -> String {
        template
            .replace("{version}", crate::VERSION)
            .replace("{arch}", arch)
    }
}

/// A [`BinarySource`] checked and (for a file) read before any machine is touched.
enum Binary {
    Bytes {
        data: Vec<u8>,
        arch: &'static str,
    },
    Url {
        template: String,
        sha256: Option<String>,
    },
}

impl Binary {
    fn load(source: &BinarySource) -> Result<Self, MachineError> {
        match source {
            BinarySource::Path(path) => {
                let data = std::fs::read(path).map_err(|e| {
                    usage(
                        format!("cannot read the daemon binary {}: {e}", path.display()),
                        "build it (`cargo build -p makiatto-daemon`), pass --binary-path, or --binary-url",
                    )
                })?;
                let Some(arch) = elf_arch(&data) else {
                    return Err(usage(
                        format!("{} is not a Linux x86_64 or aarch64 binary", path.display()),
                        "pass the makiatto daemon binary with --binary-path",
                    ));
                };
                Ok(Self::Bytes { data, arch })
            }
            BinarySource::Url { template, sha256 } => {
                if !(template.starts_with("https://") || template.starts_with("http://")) {
                    return Err(usage(
                        format!("`{template}` is not an http(s) URL"),
                        "pass --binary-url https://…/makiatto-{arch} ({version} and {arch} are replaced)",
                    ));
                }
                let sha256 = sha256
                    .as_deref()
                    .map(parse_sha256)
                    .transpose()
                    .map_err(|()| {
                        usage(
                            "--binary-sha256 is not a SHA-256 (64 hex digits)",
                            "pass the output of `sha256sum makiatto`",
                        )
                    })?;
                // Over plain http, whoever sits on the path serves both the binary and the
                // `.sha256` beside it: only a checksum from elsewhere proves anything.
                if template.starts_with("http://") && sha256.is_none() {
                    return Err(usage(
                        format!(
                            "`{template}` is plain http, and a checksum downloaded beside it proves nothing (anyone on the path can change both)"
                        ),
                        "use an https:// URL, or pass --binary-sha256 with the SHA-256 from a source you trust",
                    ));
                }
                Ok(Self::Url {
                    template: template.clone(),
                    sha256,
                })
            }
        }
    }

    /// Whether the binary suits a machine of architecture `arch`; else why not.
    fn check_arch(&self, arch: &str) -> Result<(), String> {
        match self {
            Self::Bytes { arch: ours, .. } if *ours != arch => {
                Err(format!("the machine is {arch} but the binary is {ours}"))
            }
            Self::Url { .. } if !ARCHITECTURES.contains(&arch) => Err(format!(
                "the machine is {arch}; Makiatto releases exist for {}",
                ARCHITECTURES.join(" and ")
            )),
            _ => Ok(()),
        }
    }

    /// The SHA-256 the binary must have on a machine of architecture `arch` (for a
    /// download without a given one: read from `<url>.sha256` by the machine).
    async fn sha256(&self, ssh: &Ssh, arch: &str) -> Result<String, SshError> {
        match self {
            Self::Bytes { data, .. } => Ok(ssh::sha256_hex(data)),
            Self::Url {
                sha256: Some(sha), ..
            } => Ok(sha.clone()),
            Self::Url { template, .. } => {
                let url = format!("{}.sha256", BinarySource::url(template, arch));
                let text = ssh.fetch_text(&url).await?;
                let first = text.split_whitespace().next().unwrap_or_default();
                parse_sha256(first).map_err(|()| SshError::Command {
                    target: ssh.target().to_string(),
                    command: format!("download {url}"),
                    reason: "it does not start with a SHA-256 (64 hex digits)".into(),
                })
            }
        }
    }

    /// Installs the binary at [`BINARY`] (atomically) once it has SHA-256 `sha`.
    async fn install(&self, ssh: &Ssh, arch: &str, sha: &str) -> Result<(), SshError> {
        match self {
            Self::Bytes { data, .. } => ssh.upload(BINARY, data, 0o755).await,
            Self::Url { template, .. } => {
                ssh.fetch(BINARY, &BinarySource::url(template, arch), sha, 0o755)
                    .await
            }
        }
    }

    /// What `init`'s and `upgrade`'s remedies say to pass instead.
    fn remedy(&self) -> &'static str {
        match self {
            Self::Bytes { .. } => "pass a binary built for the machine with --binary-path",
            Self::Url { .. } => {
                "check --binary-url (or MAKIATTO_BINARY_URL) and --binary-sha256, or pass --binary-path"
            }
        }
    }
}

/// A lowercase SHA-256 from 64 hex digits.
fn parse_sha256(s: &str) -> Result<String, ()> {
    if s.len() == 64 && s.chars().all(|c| c.is_ascii_hexdigit()) {
        Ok(s.to_ascii_lowercase())
    } else {
        Err(())
    }
}

/// The systemd unit: the daemon as the unprivileged `makiatto` user with only the two
/// capabilities it needs (ports below 1024, the WireGuard interface), a read-only system
/// and write access to its data directory only.
pub const UNIT_FILE: &str = "\
[Unit]
Description=Makiatto CDN node
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
User=makiatto
Group=makiatto
ExecStart=/usr/local/bin/makiatto --config /etc/makiatto/config.toml
Restart=on-failure
RestartSec=2
TimeoutStopSec=30
AmbientCapabilities=CAP_NET_BIND_SERVICE CAP_NET_ADMIN
CapabilityBoundingSet=CAP_NET_BIND_SERVICE CAP_NET_ADMIN
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
ProtectKernelModules=yes
ProtectControlGroups=yes
RestrictSUIDSGID=yes
LockPersonality=yes
ReadWritePaths=/var/makiatto
RuntimeDirectory=makiatto wireguard
RuntimeDirectoryMode=0750
DeviceAllow=/dev/net/tun rw
LimitNOFILE=65536

[Install]
WantedBy=multi-user.target
";

/// Whether the new node answers as a nameserver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Nameserver {
    /// Yes while the profile has fewer than [`DEFAULT_NAMESERVERS`].
    #[default]
    Auto,
    /// No (`--skip-ns`).
    Skip,
    /// Yes (`--force-ns`).
    Force,
}

/// What `maki machine init` was asked.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// Node name (a DNS label).
    pub name: String,
    /// `user@host`.
    pub target: Target,
    /// Port, key.
    pub ssh: ssh::Options,
    /// The daemon binary to install.
    pub binary: BinarySource,
    /// The mesh address to pin in the configuration; `None` (usual): the cluster
    /// allocates one and the node may move on a collision.
    pub mesh_address: Option<Ipv4Addr>,
    /// Nameserver choice.
    pub nameserver: Nameserver,
    /// Coordinates; `None`: looked up in `geoip_db`.
    pub coordinates: Option<(f64, f64)>,
    /// GeoIP database: copied to the node (GeoDNS needs it) and used to place it.
    pub geoip_db: Option<PathBuf>,
    /// Wipe Makiatto data already on the machine.
    pub recreate: bool,
    /// Obtain certificates (ACME).
    pub acme: bool,
}

/// A failed step.
#[derive(Debug, thiserror::Error, Diagnostic)]
#[non_exhaustive]
pub enum MachineError {
    /// A step failed on a machine.
    #[error("{step} failed on {host}: {reason}")]
    #[diagnostic(help("{remedy}"))]
    Step {
        /// The step.
        step: String,
        /// The machine.
        host: String,
        /// What went wrong.
        reason: String,
        /// What to do.
        remedy: String,
    },
    /// The request is wrong before anything is touched.
    #[error("{reason}")]
    #[diagnostic(help("{remedy}"))]
    Usage {
        /// What is wrong.
        reason: String,
        /// What to do.
        remedy: String,
    },
}

fn usage(reason: impl Into<String>, remedy: impl Into<String>) -> MachineError {
    MachineError::Usage {
        reason: reason.into(),
        remedy: remedy.into(),
    }
}

/// Reports progress: a step starts (`Some(name)`) or everything is done (`None`).
pub type Progress<'a> = &'a (dyn Fn(Option<&str>) + Sync);

/// Runs a step: reports it, and names it, the host and a remedy when it fails.
struct Steps<'a> {
    host: String,
    progress: Progress<'a>,
}

impl Steps<'_> {
    fn start(&self, step: &str) {
        (self.progress)(Some(step));
    }

    fn fail(&self, step: &str, e: &dyn Diagnostic, remedy: &str) -> MachineError {
        let help = e.help().map(|h| h.to_string());
        MachineError::Step {
            step: step.to_owned(),
            host: self.host.clone(),
            reason: e.to_string(),
            remedy: help.map_or_else(|| remedy.to_owned(), |h| format!("{h}; {remedy}")),
        }
    }

    fn failed(&self, step: &str, reason: impl Into<String>, remedy: &str) -> MachineError {
        MachineError::Step {
            step: step.to_owned(),
            host: self.host.clone(),
            reason: reason.into(),
            remedy: remedy.to_owned(),
        }
    }
}

/// Whether `name` is one lower-case DNS label.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// The architecture an ELF binary is built for (`uname -m` spelling), if recognised.
pub fn elf_arch(head: &[u8]) -> Option<&'static str> {
    if head.len() < 20 || &head[..4] != b"\x7fELF" || head[5] != 1 {
        return None;
    }
    match u16::from_le_bytes([head[18], head[19]]) {
        0x3e => Some("x86_64"),
        0xb7 => Some("aarch64"),
        _ => None,
    }
}

/// The node configuration `init` writes, built with the `toml` crate (values are
/// escaped: a name or key cannot add keys of its own).
pub fn render_config(
    name: &str,
    ipv4: Ipv4Addr,
    (lat, lon): (f64, f64),
    is_nameserver: bool,
    mesh_address: Option<Ipv4Addr>,
    seeds: &[&Machine],
    acme: bool,
) -> Result<String, toml::ser::Error> {
    #[derive(serde::Serialize)]
    struct File<'a> {
        node: Node<'a>,
        dns: Dns,
        admin: Admin,
        acme: Acme,
        mesh: Mesh,
    }
    #[derive(serde::Serialize)]
    struct Node<'a> {
        name: &'a str,
        latitude: f64,
        longitude: f64,
        ipv4: Ipv4Addr,
        is_nameserver: bool,
        data_dir: &'static str,
    }
    #[derive(serde::Serialize)]
    struct Dns {
        geoip_db: String,
    }
    #[derive(serde::Serialize)]
    struct Admin {
        socket: &'static str,
    }
    #[derive(serde::Serialize)]
    struct Acme {
        enabled: bool,
    }
    #[derive(serde::Serialize)]
    struct Mesh {
        backend: &'static str,
        port: u16,
        #[serde(skip_serializing_if = "Option::is_none")]
        address: Option<Ipv4Addr>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        seed_nodes: Vec<SeedNode>,
    }
    let file = File {
        node: Node {
            name,
            latitude: lat,
            longitude: lon,
            ipv4,
            is_nameserver,
            data_dir: DATA_DIR,
        },
        dns: Dns {
            geoip_db: format!("{DATA_DIR}/geoip.mmdb"),
        },
        admin: Admin {
            socket: ADMIN_SOCKET,
        },
        acme: Acme { enabled: acme },
        mesh: Mesh {
            backend: "boringtun",
            port: WG_PORT,
            address: mesh_address,
            seed_nodes: seeds
                .iter()
                .filter_map(|m| {
                    let (Some(address), false) = (m.wg_address, m.wg_public_key.is_empty()) else {
                        return None;
                    };
                    Some(SeedNode {
                        name: m.name.clone(),
                        wg_public_key: m.wg_public_key.clone(),
                        endpoint: format!("{}:{WG_PORT}", m.ipv4),
                        address,
                    })
                })
                .collect(),
        },
    };
    Ok(format!(
        "# Written by `maki machine init`.\n{}",
        toml::to_string(&file)?
    ))
}

/// A node's admin API reached over SSH (the admin socket forwarded to a local one).
#[derive(Debug)]
pub struct AdminLink {
    ssh: Ssh,
    _dir: tempfile::TempDir,
    /// The client of the forwarded socket.
    pub client: Client,
}

impl AdminLink {
    /// Connects to `target` and forwards its admin socket. Needs no root (the login user is
    /// in the `makiatto` group), so it never asks for a sudo password.
    pub async fn connect(target: &Target, options: &ssh::Options) -> Result<Self, SshError> {
        let options = ssh::Options {
            interactive: false,
            ..options.clone()
        };
        let ssh = Ssh::connect(target, &options).await?;
        Self::over(ssh).await
    }

    /// Forwards the admin socket over an open connection.
    pub async fn over(ssh: Ssh) -> Result<Self, SshError> {
        let dir = tempfile::Builder::new()
            .prefix("maki-")
            .tempdir()
            .map_err(|e| SshError::Local {
                path: std::env::temp_dir(),
                source: e,
            })?;
        let local = ssh
            .forward_unix(Path::new(ADMIN_SOCKET), dir.path())
            .await?;
        Ok(Self {
            ssh,
            _dir: dir,
            client: Client::new(local),
        })
    }

    /// The SSH connection.
    pub fn ssh(&self) -> &Ssh {
        &self.ssh
    }

    /// Closes the connection.
    pub async fn close(self) {
        self.ssh.close().await;
    }
}

/// SSH options for a machine of the profile.
pub fn options_for(m: &Machine, key: Option<&Path>) -> ssh::Options {
    ssh::Options {
        port: m.ssh_port,
        key: key.map(Path::to_owned),
        interactive: true,
    }
}

/// The first machine of `machines` whose admin API answers over SSH.
pub async fn first_reachable(
    machines: &[&Machine],
    key: Option<&Path>,
) -> Result<(String, AdminLink), MachineError> {
    let mut why = Vec::new();
    for m in machines {
        let target: Target = match m.ssh_target.parse() {
            Ok(t) => t,
            Err(e) => {
                why.push(format!("{}: {e}", m.name));
                continue;
            }
        };
        match AdminLink::connect(&target, &options_for(m, key)).await {
            Ok(link) => match link.client.version().await {
                Ok(_) => return Ok((m.name.clone(), link)),
                Err(e) => {
                    why.push(format!("{}: {e}", m.name));
                    link.close().await;
                }
            },
            Err(e) => why.push(format!("{}: {e}", m.name)),
        }
    }
    Err(usage(
        if machines.is_empty() {
            "the profile has no machines".to_owned()
        } else {
            format!("no machine of the profile answers: {}", why.join("; "))
        },
        "check `maki machine list` and `maki health`; pass --ssh-priv-key if the machines need a key",
    ))
}

/// `maki machine init`: installs and starts a node and records it in `profile` (saved to
/// `profile_path`). Returns the text to print.
pub async fn init(
    profile: &mut Profile,
    profile_path: &Path,
    o: &InitOptions,
    progress: Progress<'_>,
) -> Result<String, MachineError> {
    if !valid_name(&o.name) {
        return Err(usage(
            format!("machine name `{}` is not one lower-case DNS label", o.name),
            "names become <name>.ns.<domain>: use 1 to 63 lower-case letters, digits and hyphens",
        ));
    }
    if profile.machine(&o.name).is_some() && !o.recreate {
        return Err(usage(
            format!("the profile already has a machine named `{}`", o.name),
            "choose another name, or pass --recreate to reinstall it",
        ));
    }
    let binary = Binary::load(&o.binary)?;
    let geoip = match &o.geoip_db {
        Some(p) => Some(std::fs::read(p).map_err(|e| {
            usage(
                format!("cannot read the GeoIP database {}: {e}", p.display()),
                "pass an mmdb file with --geoip-db",
            )
        })?),
        None => None,
    };
    let s = Steps {
        host: format!("{}:{}", o.target, o.ssh.port),
        progress,
    };

    s.start("connecting over SSH and checking sudo");
    let ssh = Ssh::connect(&o.target, &o.ssh)
        .await
        .map_err(|e| s.fail("connecting", &e, "fix SSH access, then run init again"))?;

    s.start("detecting the system");
    let facts = ssh
        .root(
            "detect",
            "uname -s; uname -m; . /etc/os-release 2>/dev/null; echo \"${ID:-unknown} ${ID_LIKE:-}\"; \
             test -d /run/systemd/system && echo systemd || echo no-systemd; \
             echo \"${SSH_CONNECTION:-}\"; \
             { test -e /var/makiatto || test -e /etc/makiatto || test -e /usr/local/bin/makiatto; } && echo has-data || echo empty",
        )
        .await
        .map_err(|e| s.fail("detecting the system", &e, "check that the machine runs Linux"))?;
    let lines: Vec<&str> = facts.lines().collect();
    let field = |i: usize| lines.get(i).copied().unwrap_or("").trim();
    if field(0) != "Linux" {
        return Err(s.failed(
            "detecting the system",
            format!("unsupported OS `{}`", field(0)),
            "Makiatto runs on Linux (Debian, Ubuntu or similar)",
        ));
    }
    let arch = field(1);
    binary
        .check_arch(arch)
        .map_err(|r| s.failed("detecting the system", r, binary.remedy()))?;
    if field(3) != "systemd" {
        return Err(s.failed(
            "detecting the system",
            format!("no systemd on this {} machine", field(2)),
            "Makiatto installs a systemd service; use a distribution with systemd",
        ));
    }
    let ipv4 = public_ipv4(&o.target.host, field(4)).ok_or_else(|| {
        s.failed(
            "detecting the system",
            "cannot tell the machine's public IPv4 address",
            "give the machine by its IPv4 address: <user>@<ip>",
        )
    })?;
    if field(5) == "has-data" {
        if !o.recreate {
            return Err(s.failed(
                "checking for an existing installation",
                "the machine already holds Makiatto data (/var/makiatto, /etc/makiatto or /usr/local/bin/makiatto)",
                "nothing was changed; `maki machine add` imports a running node, `--recreate` wipes it and installs again",
            ));
        }
        s.start("removing the previous installation (--recreate)");
        ssh.root("wipe", &cleanup_script()).await.map_err(|e| {
            s.fail(
                "removing the previous installation",
                &e,
                "remove it by hand",
            )
        })?;
    }

    s.start("installing the makiatto binary (checksum verified)");
    let sha = binary
        .sha256(&ssh, arch)
        .await
        .map_err(|e| s.fail("installing the binary", &e, binary.remedy()))?;
    binary.install(&ssh, arch, &sha).await.map_err(|e| {
        s.fail(
            "installing the binary",
            &e,
            &format!(
                "nothing was installed; {}; check free space in /usr/local/bin",
                binary.remedy()
            ),
        )
    })?;

    s.start("creating the makiatto user and directories");
    let user = &o.target.user;
    let mut script = format!(
        "set -e; getent group makiatto >/dev/null || groupadd --system makiatto; \
         id -u makiatto >/dev/null 2>&1 || useradd --system --gid makiatto --home-dir {DATA_DIR} \
         --no-create-home --shell /usr/sbin/nologin makiatto; \
         install -d -o makiatto -g makiatto -m 750 {DATA_DIR}; install -d -m 755 /etc/makiatto"
    );
    if user != "root" {
        // The login user reaches the admin socket (group makiatto) through SSH forwarding.
        script.push_str("; usermod -a -G makiatto ");
        script.push_str(&quote(user));
    }
    ssh.root("create user", &script).await.map_err(|e| {
        s.fail(
            "creating the makiatto user",
            &e,
            "check useradd and groupadd",
        )
    })?;
    if let Some(db) = &geoip {
        s.start("copying the GeoIP database");
        let path = format!("{DATA_DIR}/geoip.mmdb");
        ssh.upload(&path, db, 0o644)
            .await
            .map_err(|e| s.fail("copying the GeoIP database", &e, "check free space"))?;
        ssh.root(
            "chown",
            &format!("chown makiatto:makiatto {}", quote(&path)),
        )
        .await
        .map_err(|e| s.fail("copying the GeoIP database", &e, "check the makiatto user"))?;
    }

    s.start("generating the WireGuard key on the node");
    let wg = ssh
        .root(
            "wg-key",
            &format!("runuser -u makiatto -- {BINARY} wg-key --data-dir {DATA_DIR}"),
        )
        .await
        .map_err(|e| {
            s.fail(
                "generating the WireGuard key",
                &e,
                "run `makiatto wg-key` on the node to see why",
            )
        })?;
    let wg_public_key = wg.trim().to_owned();
    crate::peer::check_key(&wg_public_key).map_err(|e| {
        s.failed(
            "generating the WireGuard key",
            format!("the node printed `{wg_public_key}`: {e}"),
            "check that the binary is the makiatto daemon",
        )
    })?;

    s.start("locating the node");
    let (lat, lon) = match o.coordinates {
        Some(c) => c,
        None => locate(o.geoip_db.as_deref(), ipv4).ok_or_else(|| {
            s.failed(
                "locating the node",
                format!("{ipv4} is not in the GeoIP database"),
                "pass --lat and --lon (degrees), or --geoip-db with a database that knows the address",
            )
        })?,
    };
    let is_nameserver = match o.nameserver {
        Nameserver::Force => true,
        Nameserver::Skip => false,
        Nameserver::Auto => {
            profile.nameservers().filter(|m| m.name != o.name).count() < DEFAULT_NAMESERVERS
        }
    };

    let others: Vec<&Machine> = profile
        .machines
        .iter()
        .filter(|m| m.name != o.name)
        .collect();
    // The node's own entry among the seeds: the address the cluster allocated for it, its
    // first claim (not a pin: it moves if it loses a collision). The other nodes have it
    // at that address as a WireGuard peer before it starts.
    let mut itself = None;
    if !others.is_empty() {
        s.start("registering the node with the cluster");
        let (via, link) = first_reachable(&others, o.ssh.key.as_deref()).await?;
        let row = link
            .client
            .add_node(&NewNode {
                name: o.name.clone(),
                wg_public_key: wg_public_key.clone(),
                endpoint: format!("{ipv4}:{WG_PORT}"),
                ipv4,
                latitude: lat,
                longitude: lon,
                is_nameserver,
                replace: o.recreate,
                mesh_address: o.mesh_address,
            })
            .await
            .map_err(|e| {
                s.fail(
                    &format!("registering the node through {via}"),
                    &e,
                    "check `maki health`",
                )
            })?;
        link.close().await;
        let address = row.mesh_address.parse().map_err(|_| {
            s.failed(
                &format!("registering the node through {via}"),
                format!("the cluster gave the mesh address `{}`", row.mesh_address),
                "check `maki health`",
            )
        })?;
        itself = Some(Machine {
            name: o.name.clone(),
            ssh_target: o.target.to_string(),
            ssh_port: o.ssh.port,
            is_nameserver,
            wg_public_key: wg_public_key.clone(),
            wg_address: Some(address),
            ipv4,
            ipv6: None,
            latitude: Some(lat),
            longitude: Some(lon),
        });
    }
    let seeds: Vec<&Machine> = others.iter().copied().chain(itself.as_ref()).collect();

    s.start("writing the node configuration");
    // No mesh address unless asked for: a pinned node could never move off an address
    // collision. The node starts at the one allocated above (its own seed entry).
    let config = render_config(
        &o.name,
        ipv4,
        (lat, lon),
        is_nameserver,
        o.mesh_address,
        &seeds,
        o.acme,
    )
    .map_err(|e| {
        s.failed(
            "writing the node configuration",
            e.to_string(),
            "report this as a bug",
        )
    })?;
    NodeConfig::parse(Path::new(CONFIG), &config)
        .map_err(|e| s.fail("writing the node configuration", &e, "report this as a bug"))?;
    ssh.upload(CONFIG, config.as_bytes(), 0o644)
        .await
        .map_err(|e| s.fail("writing the node configuration", &e, "check /etc/makiatto"))?;
    ssh.root(
        "check config",
        &format!("{BINARY} --config {CONFIG} --check"),
    )
    .await
    .map_err(|e| {
        s.fail(
            "checking the node configuration",
            &e,
            "report this as a bug",
        )
    })?;

    s.start("installing and starting the systemd service");
    ssh.upload(UNIT, UNIT_FILE.as_bytes(), 0o644)
        .await
        .map_err(|e| s.fail("installing the service", &e, "check /etc/systemd/system"))?;
    ssh.root(
        "start",
        "systemctl daemon-reload && systemctl enable --quiet makiatto.service && systemctl restart makiatto.service",
    )
    .await
    .map_err(|e| s.fail("starting the service", &e, "see `journalctl -u makiatto` on the node"))?;
    let options = o.ssh.clone();
    ssh.close().await;

    s.start("waiting for the node to join the cluster");
    let others_names: Vec<String> = others.iter().map(|m| m.name.clone()).collect();
    let row = wait_joined(&o.target, &options, &o.name, &others_names)
        .await
        .map_err(|reason| {
            s.failed(
                "waiting for the node to join",
                reason,
                "see `journalctl -u makiatto` on the node; check that UDP port 51880 is open between the machines",
            )
        })?;

    let machine = Machine {
        name: o.name.clone(),
        ssh_target: o.target.to_string(),
        ssh_port: o.ssh.port,
        is_nameserver,
        wg_public_key,
        wg_address: row.mesh_address.parse().ok(),
        ipv4,
        ipv6: None,
        latitude: Some(lat),
        longitude: Some(lon),
    };
    profile.machines.retain(|m| m.name != o.name);
    profile.machines.push(machine);
    profile
        .save(profile_path)
        .map_err(|e| s.fail("saving the profile", &e, "check the profile path"))?;
    progress(None);
    Ok(format!(
        "{} is up: {ipv4}, mesh {}, {}; recorded in {}\n",
        o.name,
        row.mesh_address,
        if is_nameserver {
            "nameserver"
        } else {
            "not a nameserver"
        },
        profile_path.display()
    ))
}

/// Polls the new node's admin API until it reports itself with a mesh address and sees at
/// least one node of `others` alive (when there are others).
async fn wait_joined(
    target: &Target,
    options: &ssh::Options,
    name: &str,
    others: &[String],
) -> Result<crate::store::cluster::nodes::Node, String> {
    let deadline = tokio::time::Instant::now() + JOIN_WAIT;
    let mut last;
    // A new connection: group membership given during init applies to new logins.
    let link = AdminLink::connect(target, options)
        .await
        .map_err(|e| e.to_string())?;
    let result = loop {
        match (link.client.nodes().await, link.client.membership().await) {
            (Ok(nodes), Ok(view)) => {
                let me = nodes.iter().find(|n| n.node.name == name);
                let missing: Vec<&String> =
                    others.iter().filter(|o| !view.alive.contains(o)).collect();
                match me {
                    Some(n)
                        if n.health.is_some()
                            && !n.node.mesh_address.is_empty()
                            && missing.is_empty() =>
                    {
                        break Ok(n.node.clone());
                    }
                    Some(_) => last = format!("it does not see {missing:?} alive yet"),
                    None => last = "it has not recorded itself yet".into(),
                }
            }
            (Err(e), _) | (_, Err(e)) => last = e.to_string(),
        }
        if tokio::time::Instant::now() >= deadline {
            break Err(format!("not joined after {}s: {last}", JOIN_WAIT.as_secs()));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    link.close().await;
    result
}

/// The machine's public IPv4: the host when it is an address, else the address the SSH
/// connection reached (`$SSH_CONNECTION`'s third field).
fn public_ipv4(host: &str, ssh_connection: &str) -> Option<Ipv4Addr> {
    if let Ok(a) = host.parse::<Ipv4Addr>() {
        return Some(a);
    }
    ssh_connection
        .split_whitespace()
        .nth(2)
        .and_then(|a| a.parse().ok())
}

/// The coordinates of `ip` in the GeoIP database at `db`.
fn locate(db: Option<&Path>, ip: Ipv4Addr) -> Option<(f64, f64)> {
    use crate::dns::GeoLocator as _;
    let geo = crate::dns::MmdbLocator::open(db?).ok()?;
    let p = geo.locate(IpAddr::V4(ip))?;
    Some((p.latitude, p.longitude))
}

/// `maki machine remove`: stops the node, removes it from the cluster state through another
/// node, deletes everything Makiatto put on it, and drops it from the profile. A machine
/// that cannot be reached (no connection) is removed from the cluster and the profile only
/// with `force` (the output says that its files remain); a machine that answers but
/// refuses the login (or sudo) is an error and nothing changes. `confirm` is asked unless
/// `force`.
pub async fn remove(
    profile: &mut Profile,
    profile_path: &Path,
    name: &str,
    key: Option<&Path>,
    force: bool,
    confirm: &dyn Fn(&str) -> bool,
    progress: Progress<'_>,
) -> Result<String, MachineError> {
    let Some(m) = profile.machine(name).cloned() else {
        return Err(usage(
            format!("the profile has no machine named `{name}`"),
            "`maki machine list` shows the machines",
        ));
    };
    if !force
        && !confirm(&format!(
            "Remove {name} ({}) from the cluster and delete Makiatto from it? This cannot be undone.",
            m.ssh_target
        ))
    {
        return Err(usage(
            "removal cancelled",
            "pass --force to skip the question",
        ));
    }
    let s = Steps {
        host: format!("{}:{}", m.ssh_target, m.ssh_port),
        progress,
    };
    let target: Target = m.ssh_target.parse().map_err(|e: SshError| {
        s.fail("reading the profile", &e, "fix ssh_target in the profile")
    })?;
    let mut options = options_for(&m, key);
    options.interactive = true;
    s.start("stopping the service");
    let unreachable = |reason: String| {
        s.failed(
            "connecting",
            format!("the machine cannot be reached: {reason}"),
            "nothing was changed; if the machine is gone for good, `--force` removes it from the cluster and the profile (its files stay on it)",
        )
    };
    let ssh = match tokio::time::timeout(Duration::from_secs(20), Ssh::connect(&target, &options))
        .await
    {
        Ok(Err(e @ SshError::Connect { .. })) if !force => return Err(unreachable(e.to_string())),
        Err(_) if !force => return Err(unreachable("SSH timed out after 20s".into())),
        Ok(Err(e @ SshError::Connect { .. })) => {
            tracing::debug!(error = %e, "removing an unreachable machine");
            None
        }
        Err(_) => None,
        Ok(Err(e)) => {
            return Err(s.fail(
                "connecting",
                &e,
                "nothing was changed: the machine answers but refuses this login; fix the access and run remove again",
            ));
        }
        Ok(Ok(ssh)) => {
            ssh.root(
                "stop",
                "systemctl disable --now makiatto.service >/dev/null 2>&1 || true",
            )
            .await
            .map_err(|e| {
                s.fail(
                    "stopping the service",
                    &e,
                    "stop it by hand: systemctl disable --now makiatto",
                )
            })?;
            Some(ssh)
        }
    };
    let others: Vec<&Machine> = profile.machines.iter().filter(|o| o.name != name).collect();
    if !others.is_empty() {
        s.start("removing the node from the cluster");
        let (via, link) = first_reachable(&others, key).await?;
        link.client.remove_node(name).await.map_err(|e| {
            s.fail(
                &format!("removing the node through {via}"),
                &e,
                "check `maki health`",
            )
        })?;
        link.close().await;
    }
    let mut out = String::new();
    if let Some(ssh) = ssh {
        s.start("deleting Makiatto from the machine");
        ssh.root("clean up", &cleanup_script()).await.map_err(|e| {
            s.fail(
                "deleting Makiatto from the machine",
                &e,
                "run `maki machine remove` again",
            )
        })?;
        ssh.close().await;
        let _ = writeln!(
            out,
            "{name}: service, binary, configuration, keys, data, user and unit deleted"
        );
    } else {
        let _ = writeln!(
            out,
            "{name}: unreachable over SSH, so its files were left in place; `maki machine init --recreate` reinstalls it"
        );
    }
    profile.machines.retain(|o| o.name != name);
    profile
        .save(profile_path)
        .map_err(|e| s.fail("saving the profile", &e, "check the profile path"))?;
    progress(None);
    let _ = writeln!(out, "{name} removed from the cluster and the profile");
    Ok(out)
}

/// The machines named (all when `names` is empty), or an error naming an unknown one.
pub fn select<'p>(
    profile: &'p Profile,
    names: &[String],
) -> Result<Vec<&'p Machine>, MachineError> {
    if names.is_empty() {
        return Ok(profile.machines.iter().collect());
    }
    names
        .iter()
        .map(|n| {
            profile.machine(n).ok_or_else(|| {
                usage(
                    format!("the profile has no machine named `{n}`"),
                    "`maki machine list` shows the machines",
                )
            })
        })
        .collect()
}

/// Starts `step` on machine `m` of the profile and connects to it: the step's progress,
/// the machine's target and SSH options, and the connection.
async fn reach<'a>(
    m: &Machine,
    key: Option<&Path>,
    progress: Progress<'a>,
    step: &str,
) -> Result<(Steps<'a>, Target, ssh::Options, Ssh), MachineError> {
    let s = Steps {
        host: format!("{}:{}", m.ssh_target, m.ssh_port),
        progress,
    };
    s.start(step);
    let target: Target = m
        .ssh_target
        .parse()
        .map_err(|e: SshError| s.fail("reading the profile", &e, "fix ssh_target"))?;
    let options = options_for(m, key);
    let ssh = Ssh::connect(&target, &options)
        .await
        .map_err(|e| s.fail("connecting", &e, "fix SSH access"))?;
    Ok((s, target, options, ssh))
}

/// `maki machine restart`: restarts the service on each machine in turn and waits until
/// its admin API answers again.
pub async fn restart(
    profile: &Profile,
    names: &[String],
    key: Option<&Path>,
    progress: Progress<'_>,
) -> Result<String, MachineError> {
    let mut out = String::new();
    for m in select(profile, names)? {
        let (s, target, options, ssh) =
            reach(m, key, progress, &format!("restarting {}", m.name)).await?;
        ssh.root("restart", "systemctl restart makiatto.service")
            .await
            .map_err(|e| {
                s.fail(
                    "restarting the service",
                    &e,
                    "see `journalctl -u makiatto` on the node",
                )
            })?;
        ssh.close().await;
        let others: Vec<String> = profile
            .machines
            .iter()
            .filter(|o| o.name != m.name)
            .map(|o| o.name.clone())
            .collect();
        wait_joined(&target, &options, &m.name, &others)
            .await
            .map_err(|r| {
                s.failed(
                    "waiting for the node",
                    r,
                    "see `journalctl -u makiatto` on the node",
                )
            })?;
        let _ = writeln!(out, "{} restarted", m.name);
    }
    progress(None);
    Ok(out)
}

/// How long `upgrade` waits for an upgraded node before putting the old binary back.
pub const UPGRADE_WAIT: Duration = Duration::from_secs(30);

/// `maki machine upgrade`: one machine at a time, refuses a machine where an earlier upgrade
/// or rollback left its previous binary or store copy behind, installs `binary` (checksum
/// verified) beside the running one, stops the service, copies the store database aside
/// ([`UPGRADE_BACKUP`], complete or absent), starts the new binary and waits until the node
/// itself reports it healthy (its own health report written after the restart, the new
/// binary running, the other nodes seen alive). Otherwise it puts back the previous binary
/// AND the copied database (the new binary may have migrated the store to a schema the old
/// one refuses) under a new replica identity, restarts, and stops the rollout with an error.
pub async fn upgrade(
    profile: &Profile,
    names: &[String],
    binary: &BinarySource,
    key: Option<&Path>,
    progress: Progress<'_>,
) -> Result<String, MachineError> {
    let machines = select(profile, names)?;
    let binary = Binary::load(binary)?;
    let mut out = String::new();
    for m in machines {
        let (s, target, options, ssh) =
            reach(m, key, progress, &format!("upgrading {}", m.name)).await?;
        let machine_arch = ssh
            .root("uname", "uname -m")
            .await
            .map_err(|e| s.fail("detecting the system", &e, "check the machine"))?;
        let arch = machine_arch.trim();
        binary
            .check_arch(arch)
            .map_err(|r| s.failed("detecting the system", r, binary.remedy()))?;
        refuse_unfinished(&ssh, &s).await?;
        let sha = binary
            .sha256(&ssh, arch)
            .await
            .map_err(|e| s.fail("installing the binary", &e, binary.remedy()))?;
        ssh.root(
            "keep the previous binary",
            &format!("cp -p {BINARY} {BINARY}.previous"),
        )
        .await
        .map_err(|e| s.fail("keeping the previous binary", &e, "check /usr/local/bin"))?;
        // The running service keeps the old file open: replacing it changes nothing yet.
        if let Err(e) = binary.install(&ssh, arch, &sha).await {
            let _ = ssh
                .root("clean up", &format!("rm -f {BINARY}.previous"))
                .await;
            return Err(s.fail(
                "installing the binary",
                &e,
                &format!(
                    "nothing changed on the node; {}; check free space",
                    binary.remedy()
                ),
            ));
        }
        s.start(&format!(
            "stopping {}, copying its store aside, starting the new binary",
            m.name
        ));
        // The node's clock: its health report must be newer than this.
        let started = ssh
            .root(
                "stopping the service, copying its store aside, starting it",
                &swap_script(),
            )
            .await;
        let healthy = match started {
            Ok(text) => {
                let since: i64 = text.trim().parse().unwrap_or(i64::MAX);
                let others: Vec<String> = profile
                    .machines
                    .iter()
                    .filter(|o| o.name != m.name)
                    .map(|o| o.name.clone())
                    .collect();
                let deadline = tokio::time::Instant::now() + UPGRADE_WAIT;
                if running_sha(&ssh).await.as_deref() == Some(sha.as_str()) {
                    wait_healthy_since(&target, &options, &m.name, &others, since, deadline)
                        .await
                        .map_err(|r| format!("the new binary did not become healthy ({r})"))
                } else {
                    Err(
                        "the new binary did not become healthy (the service does not run it)"
                            .to_owned(),
                    )
                }
            }
            Err(e) => Err(format!("the new binary was not started ({e})")),
        };
        if let Err(reason) = healthy {
            s.start(&format!(
                "putting the previous binary and its data back on {}",
                m.name
            ));
            let restored = ssh.root("restore", &restore_script()).await;
            ssh.close().await;
            let (what, remedy) = match &restored {
                Ok(text) if text.trim_end().ends_with("restored") => (
                    "the previous binary and its store are back (the store continues under a \
                     new replica identity and catches up from the other nodes)"
                        .to_owned(),
                    "the rollout stopped here; see `journalctl -u makiatto` on the node",
                ),
                Ok(_) => (
                    "the previous binary is back; the store was left as it was, because no \
                     complete copy of it had been made (the new binary never started)"
                        .to_owned(),
                    "the rollout stopped here; check free space in /var/makiatto and see \
                     `journalctl -u makiatto` on the node",
                ),
                Err(e) => (
                    format!("putting the previous binary back failed too: {e}"),
                    UNFINISHED_REMEDY,
                ),
            };
            return Err(s.failed("upgrading", format!("{reason}; {what}"), remedy));
        }
        let leftovers = upgrade_leftovers();
        let cleaned = ssh
            .root("clean up", &("rm -rf ".to_owned() + &leftovers))
            .await;
        ssh.close().await;
        let _ = writeln!(out, "{} upgraded", m.name);
        if let Err(e) = cleaned {
            // The upgrade stands, but the next one would take the leftovers for an
            // unfinished upgrade and refuse: say so now.
            let _ = writeln!(
                out,
                "warning: removing {leftovers} on {} failed ({e}); remove them by hand before the next upgrade",
                m.name
            );
        }
    }
    progress(None);
    Ok(out)
}

/// What to do on a node an upgrade or its rollback left half-done.
const UNFINISHED_REMEDY: &str = "on the node: if the service runs the binary you want and is \
     healthy, remove /usr/local/bin/makiatto.previous, /var/makiatto/upgrade-backup and \
     /var/makiatto/upgrade-backup.tmp; to finish the rollback by hand instead, stop \
     makiatto.service, move makiatto.previous over /usr/local/bin/makiatto, and if \
     /var/makiatto/upgrade-backup exists, delete the store.db* files in /var/makiatto, copy \
     those of upgrade-backup there (`cp -p`) and run `install -o makiatto -g makiatto -m 600 /dev/null /var/makiatto/store.retire-identity` \
     (the store then takes a new replica identity), remove the leftovers and start the service";

/// Refuses a machine where an earlier upgrade or rollback did not finish: the previous
/// binary or a copy of the store is still there, and a new upgrade would overwrite them.
/// What an upgrade leaves on the node until it finishes (space-separated paths).
fn upgrade_leftovers() -> String {
    format!("{BINARY}.previous {UPGRADE_BACKUP} {UPGRADE_BACKUP_TMP}")
}

async fn refuse_unfinished(ssh: &Ssh, s: &Steps<'_>) -> Result<(), MachineError> {
    let left = ssh
        .root(
            "looking for an unfinished upgrade",
            &format!(
                "for p in {}; do \
                 if [ -e $p ]; then echo $p; fi; done",
                upgrade_leftovers()
            ),
        )
        .await
        .map_err(|e| s.fail("looking for an unfinished upgrade", &e, "check the machine"))?;
    let left: Vec<&str> = left.split_whitespace().collect();
    if left.is_empty() {
        return Ok(());
    }
    Err(s.failed(
        "looking for an unfinished upgrade",
        format!(
            "an earlier upgrade or its rollback did not finish: {} still exist, and upgrading \
             again would overwrite them; nothing was changed",
            left.join(", ")
        ),
        UNFINISHED_REMEDY,
    ))
}

/// Stops the service, copies the store database into [`UPGRADE_BACKUP_TMP`] (owner and mode
/// kept), flushes it to disk and renames it to [`UPGRADE_BACKUP`] (so that directory only
/// ever holds a complete copy), records the time (ms, the node's clock) and starts the
/// service again (with the binary now installed). Prints that time. Any failure stops the
/// script before the new binary starts.
fn swap_script() -> String {
    format!(
        "set -e; systemctl stop makiatto.service; rm -rf {UPGRADE_BACKUP_TMP}; \
         install -d -o makiatto -g makiatto -m 700 {UPGRADE_BACKUP_TMP}; \
         for f in {STORE_FILES}; do if [ -e {DATA_DIR}/$f ]; then cp -p {DATA_DIR}/$f {UPGRADE_BACKUP_TMP}/; fi; done; \
         sync; mv -T {UPGRADE_BACKUP_TMP} {UPGRADE_BACKUP}; sync; \
         date +%s%3N; systemctl reset-failed makiatto.service >/dev/null 2>&1 || true; \
         systemctl start makiatto.service"
    )
}

/// Stops the service and puts back the previous binary. The store database comes back from
/// [`UPGRADE_BACKUP`] only when that complete copy exists, with the marker
/// ([`RETIRE_MARKER`](crate::mesh::RETIRE_MARKER)) that makes the node give the restored
/// store a new replica identity at start: the new binary may have issued versions under
/// the old one. Without a complete copy the store files stay as they are (the new binary
/// never started: the swap stops before it when the copy fails). Then it starts the service
/// (`reset-failed`: a binary that exits at once can run the unit into its start limit,
/// after which systemd refuses to start it at all). Prints `restored` or `kept` last.
///
/// The previous binary honours the marker (every build since the marker exists; no release
/// predates it). The binary being rolled back is not run again to retire the store itself:
/// a binary that failed may damage the restored copy (the machines test's fake one does).
///
/// The order survives an interruption: the marker is written (and synced) before any store
/// file is replaced (retiring a store that is not a copy is harmless), and the leftovers
/// (`.previous`, the copy) go last, so a half-done rollback is refused by the next upgrade.
fn restore_script() -> String {
    let marker = format!("{DATA_DIR}/{}", crate::mesh::RETIRE_MARKER);
    format!(
        "set -e; systemctl stop makiatto.service; \
         if systemctl is-active --quiet makiatto.service; then echo 'makiatto.service did not stop' >&2; exit 1; fi; \
         if [ -d {UPGRADE_BACKUP} ]; then \
         if [ -e {UPGRADE_BACKUP}/store.db ]; then install -o makiatto -g makiatto -m 600 /dev/null {marker}; sync; fi; \
         for f in {STORE_FILES}; do rm -f {DATA_DIR}/$f; done; \
         for f in {STORE_FILES}; do if [ -e {UPGRADE_BACKUP}/$f ]; then cp -p {UPGRADE_BACKUP}/$f {DATA_DIR}/; fi; done; \
         sync; \
         result=restored; else result=kept; fi; \
         mv -f {BINARY}.previous {BINARY}; rm -rf {UPGRADE_BACKUP} {UPGRADE_BACKUP_TMP}; \
         systemctl reset-failed makiatto.service >/dev/null 2>&1 || true; systemctl start makiatto.service; \
         echo $result"
    )
}

/// Polls the node's own admin API until its own health report is newer than `since` (its
/// clock, ms) and healthy, and it sees every node of `others` alive; at most until
/// `deadline`.
async fn wait_healthy_since(
    target: &Target,
    options: &ssh::Options,
    name: &str,
    others: &[String],
    since: i64,
    deadline: tokio::time::Instant,
) -> Result<(), String> {
    use crate::store::cluster::node_health::HealthStatus;
    let link = AdminLink::connect(target, options)
        .await
        .map_err(|e| e.to_string())?;
    let result = loop {
        let last = match (link.client.nodes().await, link.client.membership().await) {
            (Ok(nodes), Ok(view)) => {
                let own = nodes
                    .iter()
                    .find(|n| n.node.name == name)
                    .and_then(|n| n.health.as_ref());
                let missing: Vec<&String> =
                    others.iter().filter(|o| !view.alive.contains(o)).collect();
                match own {
                    Some(h) if h.updated_ms >= since && h.status == HealthStatus::Healthy => {
                        if missing.is_empty() {
                            break Ok(());
                        }
                        format!("it does not see {missing:?} alive yet")
                    }
                    Some(h) if h.updated_ms >= since => {
                        format!("it reports itself {:?}: {}", h.status, h.detail)
                    }
                    _ => "no health report from the new binary yet".to_owned(),
                }
            }
            (Err(e), _) | (_, Err(e)) => e.to_string(),
        };
        if tokio::time::Instant::now() >= deadline {
            break Err(format!(
                "not healthy after {}s: {last}",
                UPGRADE_WAIT.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    link.close().await;
    result
}

/// The SHA-256 of the binary the service runs, once it has a main process.
async fn running_sha(ssh: &Ssh) -> Option<String> {
    let deadline = tokio::time::Instant::now() + UPGRADE_WAIT;
    loop {
        let out = ssh
            .root(
                "running binary",
                "pid=$(systemctl show -p MainPID --value makiatto.service);                  [ \"$pid\" != 0 ] && sha256sum /proc/$pid/exe | cut -d' ' -f1",
            )
            .await;
        if let Ok(sha) = out {
            return Some(sha.trim().to_owned());
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// `maki machine add`: imports a running node into the profile from its configuration,
/// its public key and its own row in the cluster.
pub async fn add(
    profile: &mut Profile,
    profile_path: &Path,
    target: &Target,
    options: &ssh::Options,
    progress: Progress<'_>,
) -> Result<String, MachineError> {
    let s = Steps {
        host: format!("{target}:{}", options.port),
        progress,
    };
    s.start("reading the node configuration");
    let ssh = Ssh::connect(target, options)
        .await
        .map_err(|e| s.fail("connecting", &e, "fix SSH access"))?;
    let text = ssh
        .root("read config", &format!("cat {CONFIG}"))
        .await
        .map_err(|e| {
            s.fail(
                "reading the node configuration",
                &e,
                "is Makiatto installed? `maki machine init` installs it",
            )
        })?;
    let config = NodeConfig::parse(Path::new(CONFIG), &text).map_err(|e| {
        s.fail(
            "reading the node configuration",
            &e,
            "fix the node's configuration",
        )
    })?;
    let name = config.name().to_owned();
    if profile.machine(&name).is_some() {
        return Err(usage(
            format!("the profile already has a machine named `{name}`"),
            "`maki machine list` shows it",
        ));
    }
    let conn = ssh
        .root("ssh connection", "echo \"${SSH_CONNECTION:-}\"")
        .await
        .map_err(|e| s.fail("reading the address", &e, "check the machine"))?;
    let ipv4 = config
        .node
        .ipv4
        .or_else(|| public_ipv4(&target.host, conn.trim()))
        .ok_or_else(|| {
            s.failed(
                "reading the address",
                "no public IPv4 address",
                "give the machine by its IPv4 address",
            )
        })?;
    let link = AdminLink::over(ssh).await.map_err(|e| {
        s.fail(
            "reaching the admin API",
            &e,
            "is the makiatto service running?",
        )
    })?;
    let nodes = link.client.nodes().await.map_err(|e| {
        s.fail(
            "reading the node's row",
            &e,
            "is the makiatto service running?",
        )
    })?;
    link.close().await;
    let Some(row) = nodes.into_iter().find(|n| n.node.name == name) else {
        return Err(s.failed(
            "reading the node's row",
            format!("the node does not list itself as {name}"),
            "wait until it has started",
        ));
    };
    profile.machines.push(Machine {
        name: name.clone(),
        ssh_target: target.to_string(),
        ssh_port: options.port,
        is_nameserver: config.node.is_nameserver,
        wg_public_key: row.node.wg_public_key,
        wg_address: row.node.mesh_address.parse().ok(),
        ipv4,
        ipv6: config.node.ipv6,
        latitude: config.node.latitude.map(|l| *l.get_ref()),
        longitude: config.node.longitude.map(|l| *l.get_ref()),
    });
    profile
        .save(profile_path)
        .map_err(|e| s.fail("saving the profile", &e, "check the profile path"))?;
    progress(None);
    Ok(format!(
        "{name} ({ipv4}) added to {}\n",
        profile_path.display()
    ))
}

/// Removes every trace of Makiatto from a machine (run as root).
pub fn cleanup_script() -> String {
    format!(
        "systemctl disable --now makiatto.service >/dev/null 2>&1 || true; \
         rm -f {UNIT}; systemctl daemon-reload; systemctl reset-failed makiatto.service >/dev/null 2>&1 || true; \
         rm -rf {DATA_DIR} /etc/makiatto /run/makiatto {BINARY} {BINARY}.maki-upload {BINARY}.previous; \
         if id -u makiatto >/dev/null 2>&1; then userdel makiatto; fi; \
         if getent group makiatto >/dev/null; then groupdel makiatto; fi; true"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elf_architectures() {
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(b"\x7fELF");
        h[5] = 1;
        h[18] = 0x3e;
        assert_eq!(elf_arch(&h), Some("x86_64"));
        h[18] = 0xb7;
        assert_eq!(elf_arch(&h), Some("aarch64"));
        assert_eq!(elf_arch(b"#!/bin/sh\n"), None);
    }

    #[test]
    fn the_rendered_configuration_is_valid() {
        let seed = Machine {
            name: "vector".into(),
            ssh_target: "root@192.0.2.1".into(),
            ssh_port: 22,
            is_nameserver: true,
            wg_public_key: "YWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWE=".into(),
            wg_address: Some(Ipv4Addr::new(10, 44, 44, 1)),
            ipv4: Ipv4Addr::new(192, 0, 2, 1),
            ipv6: None,
            latitude: Some(1.0),
            longitude: Some(2.0),
        };
        let text = render_config(
            "klukai",
            Ipv4Addr::new(192, 0, 2, 2),
            (-33.87, 151.21),
            false,
            Some(Ipv4Addr::new(10, 44, 44, 2)),
            &[&seed],
            false,
        )
        .unwrap();
        let c = NodeConfig::parse(Path::new("c.toml"), &text).unwrap();
        assert_eq!(c.name(), "klukai");
        assert_eq!(c.mesh.seed_nodes.len(), 1);
        assert_eq!(c.mesh.seed_nodes[0].endpoint, "192.0.2.1:51880");
        assert!(!c.node.is_nameserver);
        assert!(!c.acme.enabled);
        assert_eq!(
            c.mesh.address,
            Some(IpAddr::V4(Ipv4Addr::new(10, 44, 44, 2)))
        );
        // Unpinned: no address key at all.
        let text = render_config(
            "klukai",
            Ipv4Addr::new(192, 0, 2, 2),
            (-33.87, 151.21),
            false,
            None,
            &[&seed],
            false,
        )
        .unwrap();
        let c = NodeConfig::parse(Path::new("c.toml"), &text).unwrap();
        assert_eq!(c.mesh.address, None);
    }

    #[test]
    fn quotes_in_values_cannot_add_keys() {
        let evil = "x\"\n[admin]\nsocket = \"/tmp/evil.sock\"\n[[mesh.seed_nodes]]\nname = \"y";
        let seed = Machine {
            name: evil.into(),
            ssh_target: "root@192.0.2.1".into(),
            ssh_port: 22,
            is_nameserver: true,
            wg_public_key: "k\"\nallow_public_direct = true\n#".into(),
            wg_address: Some(Ipv4Addr::new(10, 44, 44, 1)),
            ipv4: Ipv4Addr::new(192, 0, 2, 1),
            ipv6: None,
            latitude: None,
            longitude: None,
        };
        let text = render_config(
            "klukai",
            Ipv4Addr::new(192, 0, 2, 2),
            (1.0, 2.0),
            false,
            None,
            &[&seed],
            false,
        )
        .unwrap();
        let c = NodeConfig::parse(Path::new("c.toml"), &text).unwrap();
        assert_eq!(c.admin.socket, Path::new(ADMIN_SOCKET), "{text}");
        assert!(!c.mesh.allow_public_direct, "{text}");
        assert_eq!(c.mesh.seed_nodes.len(), 1, "{text}");
        assert_eq!(c.mesh.seed_nodes[0].name, evil);
        assert_eq!(c.mesh.seed_nodes[0].wg_public_key, seed.wg_public_key);
    }

    #[test]
    fn release_urls_and_checksums() {
        assert_eq!(
            BinarySource::url("https://x/v{version}/makiatto-{arch}", "aarch64"),
            format!("https://x/v{}/makiatto-aarch64", crate::VERSION)
        );
        assert_eq!(parse_sha256(&"AB".repeat(32)), Ok("ab".repeat(32)));
        assert!(parse_sha256("abc").is_err());
        assert!(parse_sha256(&"g".repeat(64)).is_err());
        let bad = BinarySource::Url {
            template: "file:///etc/passwd".into(),
            sha256: None,
        };
        assert!(Binary::load(&bad).is_err());
    }

    #[test]
    fn plain_http_downloads_need_a_pinned_checksum() {
        let url = |template: &str, sha256: Option<String>| BinarySource::Url {
            template: template.into(),
            sha256,
        };
        let Err(MachineError::Usage { reason, remedy }) =
            Binary::load(&url("http://mirror/makiatto-{arch}", None))
        else {
            panic!("plain http without --binary-sha256 was accepted");
        };
        assert!(reason.contains("plain http"), "{reason}");
        assert!(remedy.contains("--binary-sha256"), "{remedy}");
        let pinned = url("http://mirror/makiatto-{arch}", Some("ab".repeat(32)));
        assert!(Binary::load(&pinned).is_ok());
        assert!(Binary::load(&url("https://mirror/makiatto-{arch}", None)).is_ok());
    }

    #[test]
    fn names_are_dns_labels() {
        assert!(valid_name("vector"));
        assert!(valid_name("ns-1"));
        for bad in ["", "Vector", "-a", "a-", "a.b", "a_b", &"a".repeat(64)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
