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

mod names;
mod raw;
pub mod records;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::ops::Range;
use std::path::{Component, Path, PathBuf};

use miette::Diagnostic;

pub use records::{Record, RecordType};

use crate::diag::{self, InvalidFile, Problem};
use names::Kind;
use raw::{RawDomain, RawFile, RawFunction, RawRecord, RawTransform};

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

    /// The domain's `path`: a directory inside the project directory.
    fn domain_dir(&mut self, text: &str, span: Range<usize>) -> Option<PathBuf> {
        let project = self.dir.to_owned();
        let dir = self.inside(
            text,
            &project,
            span.clone(),
            "the directory holding makiatto.toml",
        )?;
        if !dir.is_dir() {
            self.push(
                Problem::new(
                    format!("`{text}` is not a directory"),
                    Some(span),
                    "not a directory",
                )
                .help("point path at the directory holding the site's files"),
            );
            return None;
        }
        if dir == project {
            self.push(
                Problem::new(
                    "the domain directory is the project directory itself",
                    Some(span),
                    "would publish makiatto.toml",
                )
                .help("put the site in a subdirectory, e.g. path = \"./dist\""),
            );
            return None;
        }
        Some(dir)
    }

    /// Resolves relative `text` under `base` (canonical): no absolute path, no `..`, must
    /// exist, and after resolving symbolic links must still lie inside `base`.
    fn inside(
        &mut self,
        text: &str,
        base: &Path,
        span: Range<usize>,
        base_name: &str,
    ) -> Option<PathBuf> {
        let path = Path::new(text);
        if text.is_empty() {
            self.push(Problem::new("the path is empty", Some(span), "empty path"));
            return None;
        }
        if path.is_absolute() {
            self.push(
                Problem::new(
                    format!("`{text}` is an absolute path"),
                    Some(span),
                    "absolute path",
                )
                .help(format!("write the path relative to {base_name}")),
            );
            return None;
        }
        if path.components().any(|c| c == Component::ParentDir) {
            self.push(
                Problem::new(
                    format!("`{text}` climbs out with `..`"),
                    Some(span),
                    "leaves the directory",
                )
                .help(format!("paths must stay inside {base_name}")),
            );
            return None;
        }
        let resolved = match base.join(path).canonicalize() {
            Ok(p) => p,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.push(
                    Problem::new(format!("`{text}` does not exist"), Some(span), "not found").help(
                        format!("the path is relative to {base_name} ({})", base.display()),
                    ),
                );
                return None;
            }
            Err(e) => {
                self.push(Problem::new(
                    format!("cannot read `{text}`: {e}"),
                    Some(span),
                    "unreadable",
                ));
                return None;
            }
        };
        if !resolved.starts_with(base) {
            self.push(
                Problem::new(
                    format!("`{text}` resolves to {}, outside {base_name}", resolved.display()),
                    Some(span),
                    "symbolic link leads outside",
                )
                .help(format!("paths must stay inside {base_name}; copy the target in instead of linking to it")),
            );
            return None;
        }
        Some(resolved)
    }

    fn records(
        &mut self,
        domain: &str,
        aliases: &[String],
        raw: Vec<toml::Spanned<RawRecord>>,
    ) -> Vec<Record> {
        let mut out: Vec<Record> = Vec::new();
        for spanned in raw {
            let table_span = spanned.span();
            let r = spanned.into_inner();
            if let Some(record) = self.record(domain, aliases, &r) {
                let name_span = r.name.span();
                let clash = out.iter().find(|o| {
                    o.name == record.name
                        && (o.rtype == RecordType::Cname || record.rtype == RecordType::Cname)
                });
                if let Some(other) = clash {
                    self.push(
                        Problem::new(
                            format!("`{}` has a CNAME and a {} record", record.name, if other.rtype == RecordType::Cname { record.rtype } else { other.rtype }),
                            Some(name_span),
                            "conflicts with another record",
                        )
                        .help("a name with a CNAME can hold no other record (RFC 1034); point the CNAME elsewhere or drop it"),
                    );
                } else if out.iter().any(|o| {
                    o.rtype == record.rtype && o.name == record.name && o.value == record.value
                }) {
                    self.push(
                        Problem::new(
                            format!(
                                "the {} record `{}` → `{}` is declared twice",
                                record.rtype, record.name, record.value
                            ),
                            Some(table_span),
                            "duplicate",
                        )
                        .help("remove one of them"),
                    );
                } else {
                    out.push(record);
                }
            }
        }
        out
    }

    fn record(&mut self, domain: &str, aliases: &[String], r: &RawRecord) -> Option<Record> {
        let type_text = r.rtype.get_ref();
        let Some(rtype) = RecordType::parse(type_text) else {
            let all: Vec<&str> = RecordType::ALL.iter().map(|t| t.as_str()).collect();
            self.push(
                Problem::new(
                    format!("`{type_text}` is not a record type Makiatto serves"),
                    Some(r.rtype.span()),
                    "unknown type",
                )
                .help(format!(
                    "use one of {} (SOA and the apex NS, A and AAAA are automatic)",
                    all.join(", ")
                )),
            );
            return None;
        };
        let name = self.owner(domain, r.name.get_ref(), r.name.span())?;
        let fqdn = if name == "@" {
            domain.to_owned()
        } else {
            format!("{name}.{domain}")
        };
        let span = r.name.span();
        if name == "@" {
            let automatic = match rtype {
                RecordType::A | RecordType::Aaaa => Some(
                    "the apex A and AAAA records are automatic: GeoDNS answers with the nearest node",
                ),
                RecordType::Ns => {
                    Some("the apex NS records are automatic: one per nameserver node")
                }
                RecordType::Cname => Some(
                    "a CNAME cannot sit at the apex, where SOA and NS live (RFC 1034); use an alias instead",
                ),
                _ => None,
            };
            if let Some(why) = automatic {
                self.push(
                    Problem::new(
                        format!("a {rtype} record cannot be set at the apex (`@`)"),
                        Some(span),
                        "at the apex",
                    )
                    .help(why),
                );
                return None;
            }
        }
        if fqdn.len() > names::MAX_NAME_LEN {
            self.push(Problem::new(
                format!("`{fqdn}` is longer than {} characters", names::MAX_NAME_LEN),
                Some(span),
                "too long",
            ));
            return None;
        }
        if matches!(rtype, RecordType::A | RecordType::Aaaa | RecordType::Cname)
            && aliases.contains(&fqdn)
        {
            self.push(
                Problem::new(
                    format!("`{fqdn}` is an alias of {domain}, which Makiatto answers itself"),
                    Some(span),
                    "alias",
                )
                .help("drop the record, or remove the name from aliases"),
            );
            return None;
        }
        let value = match records::check_value(rtype, &name, r.value.get_ref()) {
            Ok(v) => v,
            Err(rej) => {
                self.push(
                    Problem::new(
                        rej.message,
                        Some(r.value.span()),
                        format!("invalid {rtype} value"),
                    )
                    .help(rej.help),
                );
                return None;
            }
        };
        let ttl = match &r.ttl {
            None => records::DEFAULT_TTL,
            Some(t) => match u32::try_from(*t.get_ref()) {
                Ok(v) if (records::MIN_TTL..=records::MAX_TTL).contains(&v) => v,
                _ => {
                    self.push(
                        Problem::new(
                            format!("ttl {} is out of range", t.get_ref()),
                            Some(t.span()),
                            "out of range",
                        )
                        .help(format!(
                            "a ttl is from {} to {} seconds (default {})",
                            records::MIN_TTL,
                            records::MAX_TTL,
                            records::DEFAULT_TTL
                        )),
                    );
                    return None;
                }
            },
        };
        let priority = match (&r.priority, rtype.has_priority()) {
            (None, false) => None,
            (None, true) => {
                self.push(
                    Problem::new(
                        format!("a {rtype} record needs a priority"),
                        Some(r.rtype.span()),
                        "priority missing",
                    )
                    .help("add priority = 10 (lower is preferred), from 0 to 65535"),
                );
                return None;
            }
            (Some(p), false) => {
                self.push(
                    Problem::new(
                        format!("a {rtype} record has no priority"),
                        Some(p.span()),
                        "not allowed here",
                    )
                    .help("priority applies to MX and SRV records only; remove it"),
                );
                return None;
            }
            (Some(p), true) => {
                if let Ok(v) = u16::try_from(*p.get_ref()) {
                    Some(v)
                } else {
                    self.push(
                        Problem::new(
                            format!("priority {} is out of range", p.get_ref()),
                            Some(p.span()),
                            "out of range",
                        )
                        .help("a priority is from 0 to 65535"),
                    );
                    return None;
                }
            }
        };
        Some(Record {
            rtype,
            name,
            value,
            ttl,
            priority,
        })
    }

    /// A record's owner name, relative to the domain (`@` for the apex).
    fn owner(&mut self, domain: &str, text: &str, span: Range<usize>) -> Option<String> {
        if text == "@" {
            return Some("@".into());
        }
        let absolute = text.ends_with('.');
        let bare = text.strip_suffix('.').unwrap_or(text);
        let name = match names::check(bare, Kind::Owner) {
            Ok(n) => n,
            Err(why) => {
                self.push(
                    Problem::new(format!("`{text}` is not a record name: {why}"), Some(span), "invalid name")
                        .help(format!("names are relative to {domain}: `_dmarc` means _dmarc.{domain}; `@` is {domain} itself")),
                );
                return None;
            }
        };
        if names::is_within(&name, domain) {
            let rel = name
                .strip_suffix(domain)
                .unwrap_or("")
                .trim_end_matches('.');
            return Some(if rel.is_empty() {
                "@".into()
            } else {
                rel.to_owned()
            });
        }
        if absolute {
            self.push(
                Problem::new(format!("`{text}` is outside {domain}"), Some(span), "outside the domain")
                    .help(format!("a domain can only hold records for names under it; write `www` for www.{domain}")),
            );
            return None;
        }
        Some(name)
    }

    fn function(
        &mut self,
        dir: &Path,
        raw: RawFunction,
        routes: &mut HashMap<String, Range<usize>>,
    ) -> Option<Function> {
        let path = self.module(dir, raw.path.get_ref(), raw.path.span())?;
        let route = format!("/{}", path.strip_suffix(".wasm").unwrap_or(&path));
        if routes.contains_key(&route) {
            self.push(
                Problem::new(
                    format!("two functions answer the route {route}"),
                    Some(raw.path.span()),
                    "route taken",
                )
                .help("each function's route comes from its path; rename one module"),
            );
            return None;
        }
        routes.insert(route.clone(), raw.path.span());
        let mut methods = BTreeSet::new();
        for m in raw.methods.unwrap_or_default() {
            let upper = m.get_ref().to_ascii_uppercase();
            if METHODS.contains(&upper.as_str()) {
                methods.insert(upper);
            } else {
                self.push(
                    Problem::new(
                        format!("`{}` is not an HTTP method", m.get_ref()),
                        Some(m.span()),
                        "unknown method",
                    )
                    .help(format!("use some of {}", METHODS.join(", "))),
                );
            }
        }
        let env = self.env(dir, raw.env, raw.env_file.as_ref())?;
        Some(Function {
            path,
            route,
            methods: methods.into_iter().collect(),
            env,
            timeout_ms: self.positive(raw.timeout_ms.as_ref(), "timeout_ms"),
            max_memory_mb: self.positive(raw.max_memory_mb.as_ref(), "max_memory_mb"),
        })
    }

    fn transform(&mut self, dir: &Path, raw: RawTransform) -> Option<Transform> {
        let path = self.module(dir, raw.path.get_ref(), raw.path.span());
        let files = raw.files.get_ref().clone();
        let glob_ok = match globset::GlobBuilder::new(&files)
            .literal_separator(true)
            .build()
        {
            Ok(_) => true,
            Err(e) => {
                self.push(
                    Problem::new(
                        format!("`{files}` is not a valid glob: {}", e.kind()),
                        Some(raw.files.span()),
                        "invalid glob",
                    )
                    .help("use a glob such as **/*.html or **/*.{js,css}"),
                );
                false
            }
        };
        let env = self.env(dir, raw.env, raw.env_file.as_ref());
        let timeout_ms = self.positive(raw.timeout_ms.as_ref(), "timeout_ms");
        let max_memory_mb = self.positive(raw.max_memory_mb.as_ref(), "max_memory_mb");
        let max_file_size_kb = self.positive(raw.max_file_size_kb.as_ref(), "max_file_size_kb");
        let (Some(path), Some(env), true) = (path, env, glob_ok) else {
            return None;
        };
        Some(Transform {
            path,
            files,
            env,
            timeout_ms,
            max_memory_mb,
            max_file_size_kb,
        })
    }

    /// A WASM module path inside the domain directory, returned `/`-separated.
    fn module(&mut self, dir: &Path, text: &str, span: Range<usize>) -> Option<String> {
        let resolved = self.inside(text, dir, span.clone(), "the domain directory")?;
        if !resolved.is_file() {
            self.push(
                Problem::new(format!("`{text}` is not a file"), Some(span), "not a file")
                    .help("point path at a compiled .wasm component"),
            );
            return None;
        }
        let parts: Vec<&str> = Path::new(text)
            .components()
            .filter_map(|c| match c {
                Component::Normal(s) => s.to_str(),
                _ => None,
            })
            .collect();
        if parts.iter().any(|p| p.starts_with('.')) {
            self.push(
                Problem::new(
                    format!("`{text}` is hidden (a name starts with a dot)"),
                    Some(span),
                    "hidden file",
                )
                .help("hidden files are not deployed; move the module to a visible path"),
            );
            return None;
        }
        let joined = parts.join("/");
        if !std::path::Path::new(&joined)
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("wasm"))
        {
            self.push(
                Problem::new(
                    format!("`{text}` is not a .wasm file"),
                    Some(span),
                    "not a .wasm module",
                )
                .help("point path at a compiled WebAssembly component (.wasm)"),
            );
            return None;
        }
        Some(joined)
    }

    /// `env_file` (relative to the project directory, never published) merged under `env`.
    fn env(
        &mut self,
        domain_dir: &Path,
        env: Option<BTreeMap<String, String>>,
        env_file: Option<&toml::Spanned<String>>,
    ) -> Option<Env> {
        let mut vars = BTreeMap::new();
        if let Some(file) = env_file {
            let span = file.span();
            let project = self.dir.to_owned();
            let path = self.inside(
                file.get_ref(),
                &project,
                span.clone(),
                "the directory holding makiatto.toml",
            )?;
            if path.starts_with(domain_dir) {
                self.push(
                    Problem::new(
                        format!(
                            "`{}` lies inside the domain directory, so it would be published",
                            file.get_ref()
                        ),
                        Some(span),
                        "would be served to everyone",
                    )
                    .help("keep environment files (they hold secrets) outside the domain's path"),
                );
                return None;
            }
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) => {
                    self.push(Problem::new(
                        format!("cannot read `{}`: {e}", file.get_ref()),
                        Some(span),
                        "unreadable",
                    ));
                    return None;
                }
            };
            match parse_env_file(&text) {
                Ok(parsed) => vars.extend(parsed),
                Err(line) => {
                    self.push(
                        Problem::new(
                            format!("`{}` line {line} is not KEY=VALUE", file.get_ref()),
                            Some(span),
                            "malformed env file",
                        )
                        .help("write one KEY=VALUE per line; # starts a comment"),
                    );
                    return None;
                }
            }
        }
        for (key, value) in env.unwrap_or_default() {
            vars.insert(key, value);
        }
        if let Some(bad) = vars.keys().find(|k| !is_env_name(k)) {
            let span = env_file.map(toml::Spanned::span);
            self.push(
                Problem::new(
                    format!("`{bad}` is not an environment variable name"),
                    span,
                    "invalid name",
                )
                .help("names are letters, digits and _, not starting with a digit"),
            );
            return None;
        }
        Some(Env(vars))
    }

    /// A limit that must be at least 1.
    fn positive(&mut self, value: Option<&toml::Spanned<i64>>, key: &str) -> Option<u64> {
        let value = value?;
        match u64::try_from(*value.get_ref()) {
            Ok(v) if v > 0 => Some(v),
            _ => {
                self.push(
                    Problem::new(
                        format!("{key} must be at least 1"),
                        Some(value.span()),
                        "not positive",
                    )
                    .help(format!("remove {key} to use the node's default")),
                );
                None
            }
        }
    }
}

fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Parses `KEY=VALUE` lines (`#` comments, optional `export `, optional matching quotes);
/// on error, the 1-based line that is not of that form.
fn parse_env_file(text: &str) -> Result<BTreeMap<String, String>, usize> {
    let mut vars = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            return Err(i + 1);
        };
        let key = key.trim();
        if !is_env_name(key) {
            return Err(i + 1);
        }
        let value = value.trim();
        let unquoted = ['"', '\'']
            .iter()
            .find_map(|q| value.strip_prefix(*q).and_then(|v| v.strip_suffix(*q)))
            .unwrap_or(value);
        vars.insert(key.to_owned(), unquoted.to_owned());
    }
    Ok(vars)
}

#[cfg(test)]
mod tests;
