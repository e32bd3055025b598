//! `makiatto.toml`: the project file that says which domains to serve and from where.
//!
//! [`Project::load`] parses the file and checks everything it can before anything leaves
//! the machine: unknown keys, types, the root-domain rule, record types and values, and
//! paths (which must exist and stay inside the project or domain directory, symbolic links
//! resolved). Every mistake becomes a [`Problem`] pointing at the offending key or value;
//! all problems of a file are reported together.
//!
//! ```toml
//! [[domain]]
//! name = "example.com"
//! path = "./dist"
//! aliases = ["www.example.com"]
//!
//! [[domain.records]]
//! type = "MX"
//! name = "@"
//! value = "mail.example.com"
//! priority = 10
//! ```

mod dns;
mod files;
mod names;
mod raw;
pub mod records;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use miette::Diagnostic;

pub use records::{Record, RecordType};

use crate::diag::{self, InvalidFile, Problem};
use names::Kind;
use raw::{RawDomain, RawFile};

/// The file name `maki` looks for in the current directory.
pub const FILE_NAME: &str = "makiatto.toml";

/// HTTP methods a function may restrict itself to.
const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
];

/// A validated makiatto.toml.
#[derive(Debug, Clone)]
pub struct Project {
    /// The file it was read from.
    pub file: PathBuf,
    /// The directory holding it (canonical); relative paths start here.
    pub dir: PathBuf,
    /// The domains, in file order.
    pub domains: Vec<Domain>,
}

/// One `[[domain]]`.
#[derive(Debug, Clone)]
pub struct Domain {
    /// The root domain, lower-case, e.g. `example.com`.
    pub name: String,
    /// The `path` as written in the file.
    pub path: String,
    /// The directory served (canonical, inside the project directory).
    pub dir: PathBuf,
    /// Other host names served with this content, lower-case.
    pub aliases: Vec<String>,
    /// Custom DNS records.
    pub records: Vec<Record>,
    /// WASM HTTP handlers.
    pub functions: Vec<Function>,
    /// WASM file transformers, in the order they apply.
    pub transforms: Vec<Transform>,
}

/// A `[[domain.functions]]` entry: a WASM HTTP handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Function {
    /// The module, relative to the domain directory, `/`-separated.
    pub path: String,
    /// The route it answers, derived from the path (`api/hello.wasm` → `/api/hello`).
    pub route: String,
    /// Allowed methods, upper-case; empty: all.
    pub methods: Vec<String>,
    /// Environment (`env_file` merged under `env`).
    pub env: Env,
    /// Execution timeout; `None`: the node's default.
    pub timeout_ms: Option<u64>,
    /// Memory limit; `None`: the node's default.
    pub max_memory_mb: Option<u64>,
}

/// A `[[domain.transforms]]` entry: a WASM file transformer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transform {
    /// The module, relative to the domain directory, `/`-separated.
    pub path: String,
    /// Glob of the files it applies to, e.g. `**/*.html`.
    pub files: String,
    /// Environment (`env_file` merged under `env`).
    pub env: Env,
    /// Execution timeout; `None`: the node's default.
    pub timeout_ms: Option<u64>,
    /// Memory limit; `None`: the node's default.
    pub max_memory_mb: Option<u64>,
    /// Files larger than this are served untransformed; `None`: no limit.
    pub max_file_size_kb: Option<u64>,
}

/// Environment variables of a WASM component. `Debug` shows the names only: values may be
/// secrets.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Env(pub BTreeMap<String, String>);

impl fmt::Debug for Env {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

/// Why a project file could not be used.
#[derive(Debug, thiserror::Error, Diagnostic)]
#[non_exhaustive]
pub enum ProjectError {
    /// The file (or its directory) could not be read.
    #[error("cannot read {}", path.display())]
    #[diagnostic(help(
        "run maki in the directory that holds makiatto.toml, or point --config at it"
    ))]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file was read but holds mistakes.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Invalid(Box<InvalidFile>),
}

impl ProjectError {
    /// The problems found in the file (empty for a read error).
    pub fn problems(&self) -> &[Problem] {
        match self {
            Self::Read { .. } => &[],
            Self::Invalid(file) => file.problems(),
        }
    }
}

impl Project {
    /// Reads and validates the project file at `path`.
    pub fn load(path: &Path) -> Result<Self, ProjectError> {
        let read_err = |source| ProjectError::Read {
            path: path.to_owned(),
            source,
        };
        let text = std::fs::read_to_string(path).map_err(read_err)?;
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let dir = parent.canonicalize().map_err(read_err)?;
        Self::parse(path, &text, &dir)
    }

    /// Validates `text` as the project file `file` whose relative paths start at `dir`.
    pub fn parse(file: &Path, text: &str, dir: &Path) -> Result<Self, ProjectError> {
        let invalid =
            |problems| ProjectError::Invalid(Box::new(InvalidFile::new(file, text, problems)));
        let raw: RawFile = toml::from_str(text).map_err(|e| invalid(vec![diag::from_toml(&e)]))?;
        let dir = dir.canonicalize().map_err(|source| ProjectError::Read {
            path: dir.to_owned(),
            source,
        })?;
        let mut check = Checker {
            dir: &dir,
            problems: Vec::new(),
        };
        let domains = check.file(raw);
        if check.problems.is_empty() {
            Ok(Self {
                file: file.to_owned(),
                dir,
                domains,
            })
        } else {
            let mut problems = check.problems;
            problems.sort_by_key(|p| p.offset().unwrap_or(0));
            Err(invalid(problems))
        }
    }

    /// The domain named `name`.
    pub fn domain(&self, name: &str) -> Option<&Domain> {
        self.domains.iter().find(|d| d.name == name)
    }
}

/// Gathers problems while turning the raw file into validated types.
struct Checker<'a> {
    dir: &'a Path,
    problems: Vec<Problem>,
}

impl Checker<'_> {
    fn push(&mut self, problem: Problem) {
        self.problems.push(problem);
    }

    fn file(&mut self, raw: RawFile) -> Vec<Domain> {
        if raw.domain.is_empty() {
            self.push(
                Problem::new("no [[domain]] is declared", None, "")
                    .help("add a [[domain]] table with a name and a path, e.g.\n[[domain]]\nname = \"example.com\"\npath = \"./dist\""),
            );
            return Vec::new();
        }
        // Every host name the file claims, to catch the same name twice.
        let mut claimed: HashMap<String, Range<usize>> = HashMap::new();
        let mut domains = Vec::new();
        for raw_domain in raw.domain {
            if let Some(domain) = self.domain(raw_domain, &mut claimed) {
                domains.push(domain);
            }
        }
        domains
    }

    fn domain(
        &mut self,
        raw: RawDomain,
        claimed: &mut HashMap<String, Range<usize>>,
    ) -> Option<Domain> {
        let name_span = raw.name.span();
        let name = self.root_domain(raw.name.get_ref(), name_span.clone());
        if let Some(name) = &name {
            self.claim(claimed, name, name_span);
        }
        let dir = self.domain_dir(raw.path.get_ref(), raw.path.span());

        let mut aliases = Vec::new();
        for alias in raw.aliases.unwrap_or_default() {
            let span = alias.span();
            let text = alias.into_inner();
            let bare = text.strip_suffix('.').unwrap_or(&text);
            match names::check(bare, Kind::Host) {
                Err(why) => self.push(
                    Problem::new(
                        format!("alias `{text}` is not a host name: {why}"),
                        Some(span),
                        "invalid alias",
                    )
                    .help("aliases are host names such as www.example.com or old-domain.com"),
                ),
                Ok(a) if names::registrable(&a).is_none() => self.push(
                    Problem::new(
                        format!("alias `{a}` is a public suffix"),
                        Some(span),
                        "public suffix",
                    )
                    .help("an alias must be a host name under a domain someone can register"),
                ),
                Ok(a) => {
                    if self.claim(claimed, &a, span) {
                        aliases.push(a);
                    }
                }
            }
        }

        let (Some(name), Some(dir)) = (name, dir) else {
            // Records, functions and transforms are checked against the name and the
            // directory; without them the checks would only add noise.
            return None;
        };
        let records = self.records(&name, &aliases, raw.records.unwrap_or_default());
        let mut routes: HashMap<String, Range<usize>> = HashMap::new();
        let functions = raw
            .functions
            .unwrap_or_default()
            .into_iter()
            .filter_map(|f| self.function(&dir, f, &mut routes))
            .collect();
        let transforms = raw
            .transforms
            .unwrap_or_default()
            .into_iter()
            .filter_map(|t| self.transform(&dir, t))
            .collect();
        Some(Domain {
            name,
            path: raw.path.into_inner(),
            dir,
            aliases,
            records,
            functions,
            transforms,
        })
    }

    /// Records `name` as claimed; false (and a problem) if it already was.
    fn claim(
        &mut self,
        claimed: &mut HashMap<String, Range<usize>>,
        name: &str,
        span: Range<usize>,
    ) -> bool {
        if claimed.contains_key(name) {
            self.push(
                Problem::new(
                    format!("`{name}` is declared twice"),
                    Some(span),
                    "declared again here",
                )
                .help("each domain and alias may appear once in the whole file"),
            );
            false
        } else {
            claimed.insert(name.to_owned(), span);
            true
        }
    }

    /// The guide's rule: a domain is a root domain (registrable), never a subdomain.
    fn root_domain(&mut self, text: &str, span: Range<usize>) -> Option<String> {
        let bare = text.strip_suffix('.').unwrap_or(text);
        let name = match names::check(bare, Kind::Host) {
            Ok(name) => name,
            Err(why) => {
                self.push(
                    Problem::new(
                        format!("`{text}` is not a domain name: {why}"),
                        Some(span),
                        "invalid domain",
                    )
                    .help("write the domain you registered, e.g. name = \"example.com\""),
                );
                return None;
            }
        };
        match names::registrable(&name) {
            Some(root) if root == name => Some(name),
            Some(root) => {
                let sub = name
                    .strip_suffix(root)
                    .unwrap_or(&name)
                    .trim_end_matches('.')
                    .to_owned();
                self.push(
                    Problem::new(format!("`{name}` is a subdomain of `{root}`, not a root domain"), Some(span), "subdomain")
                        .help(format!(
                            "Makiatto must be the authoritative nameserver of the whole domain: use name = \"{root}\" and serve `{sub}` through a [[domain.records]] entry or an alias"
                        )),
                );
                None
            }
            None => {
                self.push(
                    Problem::new(
                        format!("`{name}` is a public suffix, not a domain you can register"),
                        Some(span),
                        "public suffix",
                    )
                    .help("use the domain you registered, e.g. name = \"example.com\""),
                );
                None
            }
        }
    }
}

#[cfg(test)]
mod tests;
