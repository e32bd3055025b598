//! CLI profiles: the machines of a cluster, as the `maki` user knows them.
//!
//! A profile holds public data only (machine names, SSH targets, WireGuard public keys,
//! addresses, coordinates), so it is safe to commit; a key such as `wg_private_key` is an
//! unknown key and rejected. Which profile is used ([`locate`]): the `--profile` flag, else
//! `MAKIATTO_PROFILE`, else `~/.config/makiatto/default.toml` (`$XDG_CONFIG_HOME` when set).
//!
//! ```toml
//! [[machines]]
//! name = "vector"
//! ssh_target = "root@203.0.113.1"
//! ipv4 = "203.0.113.1"
//! ipv6 = "2001:db8::1"
//! ```

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io::Write;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use miette::Diagnostic;
use serde::{Deserialize, Serialize};

use crate::diag::{self, InvalidFile, Problem};

/// The environment variable naming a profile.
pub const ENV_VAR: &str = "MAKIATTO_PROFILE";

/// The machines of a cluster.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// The machines, in the order they were added.
    #[serde(default)]
    pub machines: Vec<Machine>,
}

/// One machine of a profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Machine {
    /// Node name (one DNS label; the nameserver is `<name>.ns.<domain>`).
    pub name: String,
    /// SSH target, `user@host`.
    pub ssh_target: String,
    /// SSH port.
    #[serde(default = "default_ssh_port")]
    pub ssh_port: u16,
    /// Whether the node is a nameserver.
    #[serde(default = "yes")]
    pub is_nameserver: bool,
    /// WireGuard public key (base64).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub wg_public_key: String,
    /// Address on the mesh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wg_address: Option<Ipv4Addr>,
    /// Public IPv4 address.
    pub ipv4: Ipv4Addr,
    /// Public IPv6 address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Addr>,
    /// Latitude, degrees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latitude: Option<f64>,
    /// Longitude, degrees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub longitude: Option<f64>,
}

/// Where a profile path came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The `--profile` flag.
    Flag,
    /// The `MAKIATTO_PROFILE` variable.
    Env,
    /// The default location.
    Default,
}

/// The profile to use and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// Its path.
    pub path: PathBuf,
    /// Where the path came from.
    pub source: Source,
}

/// Why a profile could not be used.
#[derive(Debug, thiserror::Error, Diagnostic)]
#[non_exhaustive]
pub enum ProfileError {
    /// No flag, no variable, and no home directory to find the default.
    #[error("no profile given and no home directory to find ~/.config/makiatto/default.toml")]
    #[diagnostic(help("pass --profile <file> or set MAKIATTO_PROFILE"))]
    NoHome,
    /// A profile named by the flag or variable does not exist.
    #[error("the profile {} does not exist", path.display())]
    #[diagnostic(help(
        "check the --profile flag and MAKIATTO_PROFILE; `maki machine init` creates a profile"
    ))]
    Missing {
        /// The path.
        path: PathBuf,
    },
    /// Reading or writing failed.
    #[error("cannot {action} the profile {}", path.display())]
    Io {
        /// `read` or `write`.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file holds mistakes.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Invalid(Box<InvalidFile>),
}

/// Chooses the profile: `flag`, else `env` (when not empty), else
/// `$XDG_CONFIG_HOME/makiatto/default.toml` (absolute `xdg_config_home` only), else
/// `<home>/.config/makiatto/default.toml`.
pub fn locate(
    flag: Option<&Path>,
    env: Option<&OsStr>,
    home: Option<&Path>,
    xdg_config_home: Option<&Path>,
) -> Result<Location, ProfileError> {
    if let Some(path) = flag {
        return Ok(Location {
            path: path.to_owned(),
            source: Source::Flag,
        });
    }
    if let Some(path) = env.filter(|v| !v.is_empty()) {
        return Ok(Location {
            path: PathBuf::from(path),
            source: Source::Env,
        });
    }
    let config = match xdg_config_home.filter(|p| p.is_absolute()) {
        Some(dir) => dir.to_owned(),
        None => home
            .filter(|h| !h.as_os_str().is_empty())
            .ok_or(ProfileError::NoHome)?
            .join(".config"),
    };
    Ok(Location {
        path: config.join("makiatto").join("default.toml"),
        source: Source::Default,
    })
}

/// [`locate`] with the process's environment.
pub fn locate_from_env(flag: Option<&Path>) -> Result<Location, ProfileError> {
    let env = std::env::var_os(ENV_VAR);
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let xdg = std::env::var_os("XDG_CONFIG_HOME").map(PathBuf::from);
    locate(flag, env.as_deref(), home.as_deref(), xdg.as_deref())
}

impl Profile {
    /// Reads the profile at `location`; a default profile that does not exist yet is empty,
    /// a profile named explicitly must exist.
    pub fn load(location: &Location) -> Result<Self, ProfileError> {
        match std::fs::read_to_string(&location.path) {
            Ok(text) => Self::parse(&location.path, &text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match location.source {
                Source::Default => Ok(Self::default()),
                Source::Flag | Source::Env => Err(ProfileError::Missing {
                    path: location.path.clone(),
                }),
            },
            Err(source) => Err(ProfileError::Io {
                action: "read",
                path: location.path.clone(),
                source,
            }),
        }
    }

    /// Validates `text`, read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ProfileError> {
        let invalid =
            |problems| ProfileError::Invalid(Box::new(InvalidFile::new(path, text, problems)));
        let profile: Self = toml::from_str(text).map_err(|e| invalid(vec![diag::from_toml(&e)]))?;
        let problems = profile.validate();
        if problems.is_empty() {
            Ok(profile)
        } else {
            Err(invalid(problems))
        }
    }

    /// Writes the profile to `path` atomically (a temporary file in the same directory,
    /// flushed, then renamed over the old one), creating the directory if needed.
    pub fn save(&self, path: &Path) -> Result<(), ProfileError> {
        let io = |source| ProfileError::Io {
            action: "write",
            path: path.to_owned(),
            source,
        };
        let text = toml::to_string_pretty(self).map_err(|e| io(std::io::Error::other(e)))?;
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
        tmp.write_all(b"# Makiatto profile: public data only, safe to commit.\n")
            .map_err(io)?;
        tmp.write_all(text.as_bytes()).map_err(io)?;
        tmp.as_file().sync_all().map_err(io)?;
        tmp.persist(path).map_err(|e| io(e.error))?;
        Ok(())
    }

    /// The machine named `name`.
    pub fn machine(&self, name: &str) -> Option<&Machine> {
        self.machines.iter().find(|m| m.name == name)
    }

    /// The machines that are nameservers, in profile order.
    pub fn nameservers(&self) -> impl Iterator<Item = &Machine> {
        self.machines.iter().filter(|m| m.is_nameserver)
    }

    /// The machines as a table for `maki machine list`, or a hint when there are none.
    pub fn table(&self) -> String {
        if self.machines.is_empty() {
            return "no machines in this profile; add one with `maki machine init <name> <user>@<ip>`\n".into();
        }
        let rows: Vec<[String; 5]> = self
            .machines
            .iter()
            .map(|m| {
                let ipv6 = m.ipv6.map_or_else(|| "-".into(), |a| a.to_string());
                let ns = if m.is_nameserver { "yes" } else { "no" };
                let place = match (m.latitude, m.longitude) {
                    (Some(lat), Some(lon)) => format!("{lat:.2}, {lon:.2}"),
                    _ => "-".into(),
                };
                [
                    m.name.clone(),
                    format!("{}:{}", m.ssh_target, m.ssh_port),
                    format!("{} {ipv6}", m.ipv4),
                    ns.into(),
                    place,
                ]
            })
            .collect();
        let head = ["NAME", "SSH", "ADDRESSES", "NAMESERVER", "LOCATION"];
        let mut widths = head.map(str::len);
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.len());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(head.map(String::from)).chain(rows) {
            let cells: Vec<String> = row
                .iter()
                .zip(widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            out.push_str(cells.join("  ").trim_end());
            out.push('\n');
        }
        out
    }

    /// Problems: names that are not DNS labels or repeat, malformed SSH targets. Placed at
    /// the file start: the profile is usually written by `maki`, not by hand.
    fn validate(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut seen = HashSet::new();
        for m in &self.machines {
            let label_ok = !m.name.is_empty()
                && m.name.len() <= 63
                && m.name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !m.name.starts_with('-')
                && !m.name.ends_with('-');
            if !label_ok {
                problems.push(
                    Problem::new(format!("machine name `{}` is not one lower-case DNS label", m.name), None, "")
                        .help("names become <name>.ns.<domain>: use lower-case letters, digits and hyphens"),
                );
            }
            if !seen.insert(m.name.as_str()) {
                problems.push(
                    Problem::new(format!("machine `{}` appears twice", m.name), None, "")
                        .help("remove one of the entries"),
                );
            }
            let target_ok = m
                .ssh_target
                .split_once('@')
                .is_some_and(|(u, h)| !u.is_empty() && !h.is_empty());
            if !target_ok {
                problems.push(
                    Problem::new(
                        format!(
                            "ssh_target `{}` of `{}` is not user@host",
                            m.ssh_target, m.name
                        ),
                        None,
                        "",
                    )
                    .help("e.g. ssh_target = \"root@203.0.113.1\""),
                );
            }
        }
        problems
    }
}

fn default_ssh_port() -> u16 {
    22
}

fn yes() -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(name: &str, ip: [u8; 4]) -> Machine {
        Machine {
            name: name.into(),
            ssh_target: format!("root@{}", Ipv4Addr::from(ip)),
            ssh_port: 22,
            is_nameserver: true,
            wg_public_key: "cHVibGlj".into(),
            wg_address: Some(Ipv4Addr::new(10, 44, 44, ip[3])),
            ipv4: Ipv4Addr::from(ip),
            ipv6: Some("2001:db8::1".parse().unwrap()),
            latitude: Some(-33.87),
            longitude: Some(151.21),
        }
    }

    #[test]
    fn the_flag_wins_over_the_variable_which_wins_over_the_default() {
        let flag = Path::new("./team.toml");
        let env = OsStr::new("/srv/env.toml");
        let home = Path::new("/home/u");
        let l = locate(Some(flag), Some(env), Some(home), None).unwrap();
        assert_eq!((l.path.as_path(), l.source), (flag, Source::Flag));
        let l = locate(None, Some(env), Some(home), None).unwrap();
        assert_eq!(
            (l.path.as_path(), l.source),
            (Path::new("/srv/env.toml"), Source::Env)
        );
        let l = locate(None, None, Some(home), None).unwrap();
        assert_eq!(
            (l.path.as_path(), l.source),
            (
                Path::new("/home/u/.config/makiatto/default.toml"),
                Source::Default
            )
        );
        // An empty variable counts as unset.
        let l = locate(None, Some(OsStr::new("")), Some(home), None).unwrap();
        assert_eq!(l.source, Source::Default);
    }

    #[test]
    fn xdg_config_home_is_used_when_absolute() {
        let home = Path::new("/home/u");
        let l = locate(None, None, Some(home), Some(Path::new("/cfg"))).unwrap();
        assert_eq!(l.path, Path::new("/cfg/makiatto/default.toml"));
        let l = locate(None, None, Some(home), Some(Path::new("rel"))).unwrap();
        assert_eq!(l.path, Path::new("/home/u/.config/makiatto/default.toml"));
        assert!(matches!(
            locate(None, None, None, None),
            Err(ProfileError::NoHome)
        ));
    }

    #[test]
    fn save_then_load_round_trips_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/dir/default.toml");
        let profile = Profile {
            machines: vec![
                machine("vector", [203, 0, 113, 1]),
                machine("klukai", [198, 51, 100, 1]),
            ],
        };
        profile.save(&path).unwrap();
        let loc = Location {
            path: path.clone(),
            source: Source::Flag,
        };
        assert_eq!(Profile::load(&loc).unwrap(), profile);
        // Saving again replaces the file whole and leaves no temporary file behind.
        let smaller = Profile {
            machines: vec![machine("vector", [203, 0, 113, 1])],
        };
        smaller.save(&path).unwrap();
        assert_eq!(Profile::load(&loc).unwrap(), smaller);
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [OsStr::new("default.toml")]);
        assert_eq!(profile.nameservers().count(), 2);
        let table = profile.table();
        assert_eq!(table.lines().count(), 3, "{table}");
        assert!(
            table
                .lines()
                .nth(2)
                .unwrap()
                .starts_with("klukai  root@198.51.100.1:22  198.51.100.1 2001:db8::1"),
            "{table}"
        );
        assert!(Profile::default().table().contains("maki machine init"));
        assert_eq!(
            profile.machine("klukai").unwrap().ipv4,
            Ipv4Addr::new(198, 51, 100, 1)
        );
    }

    #[test]
    fn a_missing_default_is_empty_but_a_missing_named_profile_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("none.toml");
        let default = Location {
            path: path.clone(),
            source: Source::Default,
        };
        assert_eq!(Profile::load(&default).unwrap(), Profile::default());
        for source in [Source::Flag, Source::Env] {
            let named = Location {
                path: path.clone(),
                source,
            };
            assert!(matches!(
                Profile::load(&named),
                Err(ProfileError::Missing { .. })
            ));
        }
    }

    #[test]
    fn private_keys_and_bad_entries_are_rejected() {
        let text = "[[machines]]\nname = \"vector\"\nssh_target = \"root@h\"\nipv4 = \"192.0.2.1\"\nwg_private_key = \"x\"\n";
        match Profile::parse(Path::new("p.toml"), text) {
            Err(ProfileError::Invalid(f)) => {
                let p = &f.problems()[0];
                assert_eq!(f.line_of(p), 5);
                assert!(p.message().contains("wg_private_key"), "{}", p.message());
            }
            other => panic!("{other:?}"),
        }
        let twice = "[[machines]]\nname = \"a\"\nssh_target = \"h\"\nipv4 = \"192.0.2.1\"\n\
                     [[machines]]\nname = \"a\"\nssh_target = \"root@h\"\nipv4 = \"192.0.2.2\"\n";
        match Profile::parse(Path::new("p.toml"), twice) {
            Err(ProfileError::Invalid(f)) => {
                let messages: Vec<&str> = f.problems().iter().map(Problem::message).collect();
                assert_eq!(messages.len(), 2, "{messages:?}");
                assert!(messages[0].contains("user@host"));
                assert!(messages[1].contains("twice"));
            }
            other => panic!("{other:?}"),
        }
    }
}
