//! SSH to the machines, through the system `ssh` client (the `openssh` crate, one
//! multiplexed master connection per machine).
//!
//! - Host keys are checked against `~/.ssh/known_hosts`; a host seen for the first time is
//!   added (`accept-new`). `MAKIATTO_SSH_KNOWN_HOSTS` names another known-hosts file.
//! - Commands that need root run as they are for `root`, else through `sudo -n`; when sudo
//!   wants a password, [`Ssh::connect`] asks for it on the terminal once and every later
//!   command passes it on stdin (`sudo -S`), never on a command line.
//! - [`Ssh::upload`] streams a file over stdin and checks its SHA-256 on the machine before
//!   moving it into place; [`Ssh::forward_unix`] forwards a machine's Unix socket (the admin
//!   socket) to a local one.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use miette::Diagnostic;
use openssh::{ForwardType, KnownHosts, Session, SessionBuilder, Stdio};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

/// The environment variable naming a known-hosts file to use instead of `~/.ssh/known_hosts`.
pub const KNOWN_HOSTS_ENV: &str = "MAKIATTO_SSH_KNOWN_HOSTS";

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
    /// The connection failed.
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
        "log in as root, or give `{user}` sudo rights (a password is asked on the terminal when sudo needs one)"
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
}

impl fmt::Debug for Sudo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Root => "Root",
            Self::NoPassword => "NoPassword",
            Self::Password(_) => "Password(..)",
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
    /// Connects to `target` and finds out how to become root (asking for the sudo
    /// password on the terminal when needed and `options.interactive`).
    pub async fn connect(target: &Target, options: &Options) -> Result<Self, SshError> {
        let session = Self::session(target, options).await?;
        let mut ssh = Self {
            session,
            target: target.clone(),
            port: options.port,
            sudo: Sudo::Root,
        };
        if target.user != "root" {
            ssh.sudo = ssh.find_sudo(options.interactive).await?;
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
        b.connect(&target.host)
            .await
            .map_err(|e| SshError::Connect {
                target: format!("{target}:{}", options.port),
                reason: error_chain(&e),
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
        if !err.contains("password") || !interactive {
            return Err(no_sudo(if err.is_empty() {
                "sudo is not available".into()
            } else {
                err
            }));
        }
        let prompt = format!(
            "[sudo] password for {} on {}: ",
            self.target.user, self.target.host
        );
        let password = rpassword::prompt_password(prompt)
            .map_err(|e| no_sudo(format!("cannot read the password: {e}")))?;
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
        let (q, qt) = (quote(path), quote(&tmp));
        // Private (umask 077) until the checksum matched; the mode is set on install.
        let script = format!("set -e; umask 077; cat > {qt}; sha256sum {qt} | cut -d' ' -f1");
        let out = self.root_output(&script, data).await?;
        if !out.status.success() {
            let _ = self.root("clean up", &format!("rm -f {qt}")).await;
            return Err(SshError::Command {
                target: self.target.to_string(),
                command: format!("upload {path}"),
                reason: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        let got = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if got != expected {
            let _ = self.root("clean up", &format!("rm -f {qt}")).await;
            return Err(SshError::Checksum {
                target: self.target.to_string(),
                path: path.to_owned(),
                got,
                expected,
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
    fn sha256_of_known_input() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
