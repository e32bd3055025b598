//! SSH to the machines, through the system `ssh` client (the `openssh` crate, one
//! multiplexed master connection per machine).
//!
//! - Host keys are checked against `~/.ssh/known_hosts`; a host seen for the first time is
//!   added (`accept-new`). `MAKIATTO_SSH_KNOWN_HOSTS` names another known-hosts file.
//! - Commands that need root run as they are for `root`, else through `sudo -n`; when sudo
//!   wants a password, [`Ssh::connect`] takes it from `MAKIATTO_SUDO_PASSWORD` or asks for
//!   it on the terminal once, and every later command passes it on stdin (`sudo -S`), never
//!   on a command line.
//! - [`Ssh::upload`] streams a file over stdin and [`Ssh::fetch`] has the machine download
//!   one (curl or wget); both check its SHA-256 on the machine before moving it into place.
//!   [`Ssh::forward_unix`] forwards a machine's Unix socket (the admin socket) to a local one.
//! - A failed login ([`SshError::Auth`]) is told apart from a machine that cannot be
//!   reached ([`SshError::Connect`]).
//! - Prompts on the terminal run through [`on_terminal`], which hides the progress spinner
//!   while the user types.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use miette::Diagnostic;
use openssh::{ForwardType, KnownHosts, Session, SessionBuilder, Stdio};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

/// The environment variable naming a known-hosts file to use instead of `~/.ssh/known_hosts`.
pub const KNOWN_HOSTS_ENV: &str = "MAKIATTO_SSH_KNOWN_HOSTS";
/// The environment variable holding the sudo password for unattended runs (else it is
/// asked on the terminal). Never pass it on a command line.
pub const SUDO_PASSWORD_ENV: &str = "MAKIATTO_SUDO_PASSWORD";

/// Runs `f` around a terminal prompt (a spinner registered with [`set_suspender`] hides).
type Suspender = Arc<dyn Fn(&mut dyn FnMut()) + Send + Sync>;

static SUSPENDER: Mutex<Option<Suspender>> = Mutex::new(None);

/// Registers what hides progress output while the user is asked something (`None`:
/// nothing to hide). The `maki` spinner registers itself while it runs.
pub fn set_suspender(s: Option<Suspender>) {
    *SUSPENDER.lock().unwrap_or_else(PoisonError::into_inner) = s;
}

/// Runs `f`, which talks to the user on the terminal, with the progress output hidden so
/// that it cannot draw over the question.
pub fn on_terminal<T>(f: impl FnOnce() -> T) -> T {
    let s = SUSPENDER
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let Some(s) = s else {
        return f();
    };
    let (mut f, mut out) = (Some(f), None);
    s(&mut || {
        if let Some(f) = f.take() {
            out = Some(f());
        }
    });
    // A suspender that did not call back: run `f` anyway.
    match (out, f) {
        (Some(v), _) => v,
        (None, Some(f)) => f(),
        (None, None) => unreachable!("f ran and returned"),
    }
}

/// `user@host`, as given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Login user.
    pub user: String,
    /// Host name or address.
    pub host: String,
}

impl FromStr for Target {
    type Err = SshError;

    fn from_str(s: &str) -> Result<Self, SshError> {
        let bad = || SshError::BadTarget(s.to_owned());
        let (user, host) = s.split_once('@').ok_or_else(bad)?;
        let ok = |p: &str| {
            !p.is_empty()
                && !p.starts_with('-')
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-._:[]".contains(c))
        };
        if !ok(user) || !ok(host) {
            return Err(bad());
        }
        let host = host.trim_start_matches('[').trim_end_matches(']');
        Ok(Self {
            user: user.to_owned(),
            host: host.to_owned(),
        })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.user, self.host)
    }
}

/// How to reach a machine.
#[derive(Debug, Clone)]
pub struct Options {
    /// SSH port.
    pub port: u16,
    /// Private key (`ssh -i`); `None`: the agent and the user's default keys.
    pub key: Option<PathBuf>,
    /// Whether a sudo password may be asked on the terminal.
    pub interactive: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            port: 22,
            key: None,
            interactive: true,
        }
    }
}

/// Why SSH work failed.
#[derive(Debug, thiserror::Error, Diagnostic)]
#[non_exhaustive]
pub enum SshError {
    /// Not `user@host`.
    #[error("`{0}` is not user@host")]
    #[diagnostic(help("e.g. root@203.0.113.1 or ubuntu@cdn1.example.com"))]
    BadTarget(String),
    /// The machine refused the login (key, user) or its host key does not match.
    #[error("{target} refused the SSH login: {reason}")]
    #[diagnostic(help(
        "the machine is up but does not accept this login: check the user, the key (--ssh-priv-key, ssh-agent) and ~/.ssh/known_hosts; `ssh -p <port> {target}` shows the details"
    ))]
    Auth {
        /// The machine.
        target: String,
        /// What ssh said.
        reason: String,
    },
    /// The machine could not be reached.
    #[error("cannot connect to {target} over SSH: {reason}")]
    #[diagnostic(help(
        "check the address, the port (--port), the key (--ssh-priv-key) and that `ssh -p <port> {target}` works"
    ))]
    Connect {
        /// The machine.
        target: String,
        /// What ssh said.
        reason: String,
    },
    /// The user cannot become root.
    #[error("{target}: `{user}` cannot run commands as root with sudo: {reason}")]
    #[diagnostic(help(
        "log in as root, or give `{user}` sudo rights (a password is asked on the terminal when sudo needs one, or taken from MAKIATTO_SUDO_PASSWORD)"
    ))]
    NoSudo {
        /// The machine.
        target: String,
        /// The user.
        user: String,
        /// Why.
        reason: String,
    },
    /// A command could not be run or failed.
    #[error("{target}: `{command}` failed: {reason}")]
    Command {
        /// The machine.
        target: String,
        /// A short name of the command.
        command: String,
        /// Its exit status and error output.
        reason: String,
    },
    /// An uploaded file did not arrive intact.
    #[error("{target}: {path} arrived with SHA-256 {got}, expected {expected}")]
    #[diagnostic(help("the transfer was corrupted or the disk is full; run the command again"))]
    Checksum {
        /// The machine.
        target: String,
        /// The remote path.
        path: String,
        /// What the machine computed.
        got: String,
        /// What was sent.
        expected: String,
    },
    /// A local file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Local {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// How root commands run.
#[derive(Clone)]
enum Sudo {
    /// The login user is root.
    Root,
    /// `sudo -n` works.
    NoPassword,
    /// `sudo -S` with this password on stdin.
    Password(String),
    /// No way to become root on this connection (a non-interactive connection of a user
    /// whose sudo needs a password nobody gave): root commands fail with this reason.
    Unavailable(String),
}

impl fmt::Debug for Sudo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Root => "Root",
            Self::NoPassword => "NoPassword",
            Self::Password(_) => "Password(..)",
            Self::Unavailable(_) => "Unavailable",
        })
    }
}

/// A connection to one machine.
#[derive(Debug)]
pub struct Ssh {
    session: Session,
    target: Target,
    port: u16,
    sudo: Sudo,
}

/// Quotes `s` for a POSIX shell.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The lowercase hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    use std::fmt::Write as _;
    Sha256::digest(data)
        .iter()
        .fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

impl Ssh {
    /// Connects to `target` and finds out how to become root (the sudo password from
    /// [`SUDO_PASSWORD_ENV`], else asked on the terminal when `options.interactive`).
    /// A non-interactive connection that cannot become root still connects: only its root
    /// commands fail ([`Self::user_output`] works).
    pub async fn connect(target: &Target, options: &Options) -> Result<Self, SshError> {
        let session = Self::session(target, options).await?;
        let mut ssh = Self {
            session,
            target: target.clone(),
            port: options.port,
            sudo: Sudo::Root,
        };
        if target.user != "root" {
            ssh.sudo = match ssh.find_sudo(options.interactive).await {
                Ok(s) => s,
                Err(SshError::NoSudo { reason, .. }) if !options.interactive => {
                    Sudo::Unavailable(reason)
                }
                Err(e) => return Err(e),
            };
        }
        Ok(ssh)
    }

    async fn session(target: &Target, options: &Options) -> Result<Session, SshError> {
        let mut b = SessionBuilder::default();
        b.user(target.user.clone())
            .port(options.port)
            .known_hosts_check(KnownHosts::Add)
            .connect_timeout(Duration::from_secs(10))
            .server_alive_interval(Duration::from_secs(15))
            .control_directory(std::env::temp_dir());
        if let Some(key) = &options.key {
            b.keyfile(key);
        }
        if let Some(file) = std::env::var_os(KNOWN_HOSTS_ENV) {
            b.user_known_hosts_file(PathBuf::from(file));
        }
        b.connect(&target.host).await.map_err(|e| {
            let (target, reason) = (format!("{target}:{}", options.port), error_chain(&e));
            if refused_login(&reason) {
                SshError::Auth { target, reason }
            } else {
                SshError::Connect { target, reason }
            }
        })
    }

    async fn find_sudo(&self, interactive: bool) -> Result<Sudo, SshError> {
        let no_sudo = |reason: String| SshError::NoSudo {
            target: self.target.to_string(),
            user: self.target.user.clone(),
            reason,
        };
        // The C locale: the check below reads sudo's English message.
        let out = self
            .raw("LC_ALL=C sudo -n true", None, "sudo -n true")
            .await?;
        if out.status.success() {
            return Ok(Sudo::NoPassword);
        }
        let err = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        let from_env = std::env::var(SUDO_PASSWORD_ENV).ok();
        if !err.contains("password") || (!interactive && from_env.is_none()) {
            return Err(no_sudo(if err.is_empty() {
                "sudo is not available".into()
            } else {
                err
            }));
        }
        let password = match from_env {
            Some(p) => p,
            None => ask_password(&format!(
                "[sudo] password for {} on {}: ",
                self.target.user, self.target.host
            ))
            .map_err(|e| {
                no_sudo(format!(
                    "cannot read the password ({e}); without a terminal, set {SUDO_PASSWORD_ENV}"
                ))
            })?,
        };
        let mut input = password.clone().into_bytes();
        input.push(b'\n');
        let out = self
            .raw("sudo -k -S -p '' true", Some(&input), "sudo -S true")
            .await?;
        if out.status.success() {
            Ok(Sudo::Password(password))
        } else {
            Err(no_sudo("the password was refused".into()))
        }
    }

    /// Whether the login user is root (no sudo needed).
    pub fn is_root(&self) -> bool {
        matches!(self.sudo, Sudo::Root)
    }

    /// The machine, `user@host`.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// The SSH port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Runs `command` (a shell command line) as the login user; returns its output.
    async fn raw(
        &self,
        command: &str,
        stdin: Option<&[u8]>,
        what: &str,
    ) -> Result<std::process::Output, SshError> {
        let fail = |reason: String| SshError::Command {
            target: self.target.to_string(),
            command: what.to_owned(),
            reason,
        };
        let mut cmd = self.session.raw_command(command);
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().await.map_err(|e| fail(error_chain(&e)))?;
        if let Some(data) = stdin
            && let Some(mut pipe) = child.stdin().take()
        {
            // A command that exits early closes its stdin; its status tells why.
            let _ = pipe.write_all(data).await;
            let _ = pipe.shutdown().await;
            drop(pipe);
        }
        child
            .wait_with_output()
            .await
            .map_err(|e| fail(error_chain(&e)))
    }

    /// Runs `command` (a shell command line) as the login user, without sudo; returns its
    /// output whatever its status.
    pub async fn user_output(&self, command: &str) -> Result<std::process::Output, SshError> {
        self.raw(command, None, command).await
    }

    /// Runs the shell `script` as root with `stdin`; returns its output whatever its status.
    pub async fn root_output(
        &self,
        script: &str,
        stdin: &[u8],
    ) -> Result<std::process::Output, SshError> {
        let quoted = quote(script);
        let (command, input) = match &self.sudo {
            Sudo::Root => (format!("sh -c {quoted}"), stdin.to_vec()),
            Sudo::NoPassword => (format!("sudo -n sh -c {quoted}"), stdin.to_vec()),
            Sudo::Password(p) => {
                // `-k`: sudo ignores credentials cached by an earlier command on this
                // connection and always reads the password line, so it never reaches
                // the script's input.
                let mut input = p.clone().into_bytes();
                input.push(b'\n');
                input.extend_from_slice(stdin);
                (format!("sudo -k -S -p '' sh -c {quoted}"), input)
            }
            Sudo::Unavailable(reason) => {
                return Err(SshError::NoSudo {
                    target: self.target.to_string(),
                    user: self.target.user.clone(),
                    reason: reason.clone(),
                });
            }
        };
        self.raw(&command, Some(&input), script).await
    }

    /// Runs the shell `script` as root; returns its standard output, or an error naming
    /// `what` with the error output when it fails.
    pub async fn root(&self, what: &str, script: &str) -> Result<String, SshError> {
        let out = self.root_output(script, b"").await?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(SshError::Command {
                target: self.target.to_string(),
                command: what.to_owned(),
                reason: format!(
                    "{}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            })
        }
    }

    /// Writes `data` to `path` on the machine as root with `mode`, atomically (a temporary
    /// file beside it, checked against the SHA-256 of `data`, then renamed).
    pub async fn upload(&self, path: &str, data: &[u8], mode: u32) -> Result<(), SshError> {
        let expected = sha256_hex(data);
        let tmp = format!("{path}.maki-upload");
        let qt = quote(&tmp);
        // Private (umask 077) until the checksum matched; the mode is set on install.
        let script = format!("set -e; umask 077; cat > {qt}; sha256sum {qt} | cut -d' ' -f1");
        let out = self.root_output(&script, data).await?;
        self.install_checked(path, &out, &expected, mode).await
    }

    /// Has the machine download `url` (curl, else wget) to `path` as root with `mode`,
    /// atomically, once its SHA-256 is `expected` (lowercase hex). Nothing is left at
    /// `path` or beside it when the download or the check fails.
    pub async fn fetch(
        &self,
        path: &str,
        url: &str,
        expected: &str,
        mode: u32,
    ) -> Result<(), SshError> {
        let qt = quote(&format!("{path}.maki-upload"));
        let script = format!(
            "set -e; umask 077; {DOWNLOADER}; get {} {qt}; sha256sum {qt} | cut -d' ' -f1",
            quote(url)
        );
        let out = self.root_output(&script, b"").await?;
        self.install_checked(path, &out, expected, mode).await
    }

    /// Has the machine download the small text file at `url` over https only, redirects
    /// included (curl; see [`HTTPS_GETTER`]); returns it.
    pub async fn fetch_text(&self, url: &str) -> Result<String, SshError> {
        let script = format!("set -e; {HTTPS_GETTER}; get {} -", quote(url));
        let out = self.root_output(&script, b"").await?;
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        Err(self.download_error(url, &out))
    }

    fn download_error(&self, url: &str, out: &std::process::Output) -> SshError {
        let err = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        SshError::Command {
            target: self.target.to_string(),
            command: format!("download {url}"),
            reason: if err.contains(NO_DOWNLOADER) {
                "the machine has neither curl nor wget: install one (apt install curl) or pass --binary-path".into()
            } else if err.contains(NO_CURL) {
                "reading the checksum published beside the binary needs curl on the machine (it keeps the download on https across redirects): install curl (apt install curl) or pass --binary-sha256".into()
            } else {
                format!("{}: {err}", out.status)
            },
        }
    }

    /// The second half of [`Self::upload`] and [`Self::fetch`]: `out` is the script that
    /// wrote `<path>.maki-upload` and printed its SHA-256. Installs it when that is
    /// `expected`, else removes it.
    async fn install_checked(
        &self,
        path: &str,
        out: &std::process::Output,
        expected: &str,
        mode: u32,
    ) -> Result<(), SshError> {
        let tmp = format!("{path}.maki-upload");
        let (q, qt) = (quote(path), quote(&tmp));
        if !out.status.success() {
            let _ = self.root("clean up", &format!("rm -f {qt}")).await;
            let err = String::from_utf8_lossy(&out.stderr);
            if err.contains(NO_DOWNLOADER) || err.contains("maki-download") {
                return Err(self.download_error(path, out));
            }
            return Err(SshError::Command {
                target: self.target.to_string(),
                command: format!("write {path}"),
                reason: err.trim().to_owned(),
            });
        }
        let got = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if got != expected {
            let _ = self.root("clean up", &format!("rm -f {qt}")).await;
            return Err(SshError::Checksum {
                target: self.target.to_string(),
                path: path.to_owned(),
                got,
                expected: expected.to_owned(),
            });
        }
        self.root(
            &format!("install {path}"),
            &format!("chmod {mode:o} {qt} && mv -f {qt} {q}"),
        )
        .await?;
        Ok(())
    }

    /// Forwards the machine's Unix socket `remote` to a new local socket in `dir`; returns
    /// the local path. The login user must be allowed to connect to `remote`.
    pub async fn forward_unix(&self, remote: &Path, dir: &Path) -> Result<PathBuf, SshError> {
        let local = dir.join("admin.sock");
        let _ = std::fs::remove_file(&local);
        self.session
            .request_port_forward(ForwardType::Local, local.as_path(), remote)
            .await
            .map_err(|e| SshError::Command {
                target: self.target.to_string(),
                command: format!("forward {}", remote.display()),
                reason: error_chain(&e),
            })?;
        Ok(local)
    }

    /// Closes the master connection.
    pub async fn close(self) {
        let _ = self.session.close().await;
    }
}

/// What [`DOWNLOADER`] prints when the machine has neither curl nor wget.
const NO_DOWNLOADER: &str = "maki-no-downloader";

/// Shell: defines `get <url> <file or ->` with curl, else wget (HTTP errors fail), else
/// fails printing [`NO_DOWNLOADER`].
const DOWNLOADER: &str = "if command -v curl >/dev/null 2>&1; then \
     get() { curl -fsSL --proto '=http,https' --connect-timeout 20 --retry 2 -o \"$2\" \"$1\" || { echo \"maki-download: curl failed for $1\" >&2; return 1; }; }; \
     elif command -v wget >/dev/null 2>&1; then \
     get() { wget -q -T 20 -O \"$2\" \"$1\" || { echo \"maki-download: wget failed for $1\" >&2; return 1; }; }; \
     else echo maki-no-downloader >&2; exit 3; fi";

/// What [`HTTPS_GETTER`] prints when the machine has no curl.
const NO_CURL: &str = "maki-no-curl";

/// Shell: defines `get <url> <file or ->` with curl held to https, redirects included, else
/// fails printing [`NO_CURL`]. For a checksum read from beside the binary: were a redirect
/// allowed to drop to plain http, whoever sits on the path could swap the binary and its
/// checksum together. wget cannot be held to https across redirects, so it is not used.
const HTTPS_GETTER: &str = "command -v curl >/dev/null 2>&1 || { echo maki-no-curl >&2; exit 3; }; \
     get() { curl -fsSL --proto '=https' --proto-redir '=https' --connect-timeout 20 --retry 2 -o \"$2\" \"$1\" || { echo \"maki-download: curl failed for $1\" >&2; return 1; }; }";

/// Asks for a password on the terminal, the progress output hidden meanwhile.
fn ask_password(prompt: &str) -> std::io::Result<String> {
    on_terminal(|| rpassword::prompt_password(prompt))
}

/// Whether ssh's message says the machine answered but refused the login (as opposed to a
/// machine that cannot be reached).
fn refused_login(reason: &str) -> bool {
    [
        "Permission denied",
        "Host key verification failed",
        "REMOTE HOST IDENTIFICATION HAS CHANGED",
        "Too many authentication failures",
        "no matching host key type",
        "Authentication failed",
    ]
    .iter()
    .any(|m| reason.contains(m))
}

/// An error and its causes on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(s.to_string().trim());
        cur = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_user_at_host() {
        let t: Target = "deploy@10.1.2.3".parse().unwrap();
        assert_eq!((t.user.as_str(), t.host.as_str()), ("deploy", "10.1.2.3"));
        let t: Target = "root@[2001:db8::1]".parse().unwrap();
        assert_eq!(t.host, "2001:db8::1");
        for bad in [
            "host",
            "@host",
            "root@",
            "-oProxyCommand=x@h",
            "a@h;rm",
            "a@-h",
        ] {
            assert!(bad.parse::<Target>().is_err(), "{bad}");
        }
    }

    #[test]
    fn quoting_survives_single_quotes() {
        assert_eq!(quote("it's"), r"'it'\''s'");
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("printf %s {}", quote("a'b $HOME `x`")))
            .output()
            .unwrap();
        assert_eq!(out.stdout, b"a'b $HOME `x`");
    }

    #[test]
    fn a_password_prompt_hides_the_spinner() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let hidden = Arc::new(AtomicBool::new(false));
        let seen = hidden.clone();
        set_suspender(Some(Arc::new(move |f: &mut dyn FnMut()| {
            seen.store(true, Ordering::SeqCst);
            f();
        })));
        // No terminal in tests: the prompt fails, but only after hiding the spinner.
        let _ = ask_password("password: ");
        set_suspender(None);
        assert!(hidden.load(Ordering::SeqCst));
        assert_eq!(on_terminal(|| 7), 7);
    }

    #[test]
    fn a_refused_login_is_not_an_unreachable_machine() {
        assert!(refused_login(
            "failed to connect: deploy@10.0.0.1: Permission denied (publickey,password)."
        ));
        assert!(refused_login("Host key verification failed."));
        assert!(!refused_login(
            "ssh: connect to host 10.0.0.1 port 22: Connection refused"
        ));
        assert!(!refused_login(
            "ssh: connect to host 10.0.0.1 port 22: Connection timed out"
        ));
        assert!(!refused_login("No route to host"));
    }

    #[test]
    fn sha256_of_known_input() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
