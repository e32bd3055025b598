//! Checks of paths: the domain directory, WASM modules and env files must exist and stay
//! inside their directory once symbolic links are resolved.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Range;
use std::path::{Component, Path, PathBuf};

use super::raw::{RawFunction, RawTransform};
use super::{Checker, Env, Function, METHODS, Transform};
use crate::diag::Problem;

impl Checker<'_> {
    /// The domain's `path`: a directory inside the project directory.
    pub(super) fn domain_dir(&mut self, text: &str, span: Range<usize>) -> Option<PathBuf> {
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

    pub(super) fn function(
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

    pub(super) fn transform(&mut self, dir: &Path, raw: RawTransform) -> Option<Transform> {
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
