//! The file manifest of a domain directory: every file's relative path, blake3 hash, size
//! and permission bits, plus a deterministic digest and the diffs `maki sync` needs.
//!
//! [`Manifest::build`] walks the directory (hidden files such as `.git` are skipped, except
//! `.well-known`), refuses what cannot be served safely (names that are not UTF-8 or hold
//! control characters or backslashes, FIFOs, sockets and devices, symbolic links leading out
//! of the directory or to directories) and hashes the files in parallel, reporting
//! progress through a callback.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use miette::Diagnostic;
use rayon::prelude::*;

use crate::store::BlobHash;
use crate::store::cluster::deployment_files::DeploymentFile;

/// Key-derivation context of [`Manifest::digest`]; changing it changes every digest.
const DIGEST_CONTEXT: &str = "makiatto 2026-11 deployment manifest v1";
/// The one hidden name deployed by default: `/.well-known/` (RFC 8615).
const WELL_KNOWN: &str = ".well-known";
/// Permission bits recorded where the platform has none.
const DEFAULT_MODE: u32 = 0o644;

/// One file of a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Path relative to the domain directory, `/`-separated, no leading `/`.
    pub path: String,
    /// blake3 of the content.
    pub hash: BlobHash,
    /// Size in bytes.
    pub size: u64,
    /// Unix permission bits (`0o644`...).
    pub mode: u32,
}

/// The files of a domain directory, sorted by path. Two manifests are equal when their
/// entries are.
#[derive(Debug, Clone, Default)]
pub struct Manifest {
    entries: Vec<Entry>,
    /// Where each entry's bytes are read from (not part of equality of content: built
    /// manifests only). Parallel to `entries`.
    sources: Vec<PathBuf>,
}

/// How to walk a directory.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Include hidden files and directories (names starting with `.`). `.well-known` is
    /// always included.
    pub include_hidden: bool,
}

/// Hashing progress, reported after each file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Files hashed so far.
    pub files_done: u64,
    /// Files to hash.
    pub files_total: u64,
    /// Bytes hashed so far.
    pub bytes_done: u64,
    /// Bytes to hash (from the sizes seen while walking).
    pub bytes_total: u64,
}

/// What differs between two manifests, by path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diff {
    /// Paths only in the new manifest.
    pub added: Vec<String>,
    /// Paths in both whose content or mode differs.
    pub changed: Vec<String>,
    /// Paths only in the old manifest.
    pub removed: Vec<String>,
    /// How many paths are identical.
    pub unchanged: usize,
}

/// The blobs a cluster lacks for a manifest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Missing {
    /// Each missing blob once, with its size, by hash.
    pub blobs: Vec<(BlobHash, u64)>,
    /// Their total size.
    pub bytes: u64,
}

/// Why a directory could not be turned into a manifest.
#[derive(Debug, thiserror::Error, Diagnostic)]
#[non_exhaustive]
pub enum ManifestError {
    /// A directory or file could not be read.
    #[error("cannot read {}", path.display())]
    #[diagnostic(help("check that the file exists and that you may read it"))]
    Read {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A file name is not valid UTF-8.
    #[error("the name of {} is not valid UTF-8", path.display())]
    #[diagnostic(help("rename the file: URLs need names in UTF-8"))]
    NotUtf8 {
        /// The path.
        path: PathBuf,
    },
    /// A file name cannot be served safely.
    #[error("cannot deploy {path:?}: {reason}")]
    #[diagnostic(help("rename the file"))]
    BadName {
        /// The relative path.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A FIFO, socket or device.
    #[error("{} is not a regular file (a FIFO, socket or device)", path.display())]
    #[diagnostic(help(
        "remove it from the domain directory: only files and directories are deployed"
    ))]
    Special {
        /// The path.
        path: PathBuf,
    },
    /// A symbolic link resolving outside the domain directory (or nowhere).
    #[error("the symbolic link {} leads outside the domain directory{}", path.display(), target.as_ref().map(|t| format!(", to {}", t.display())).unwrap_or_default())]
    #[diagnostic(help("copy the file into the domain directory instead of linking to it"))]
    LinkOutside {
        /// The link.
        path: PathBuf,
        /// Where it leads, when it leads somewhere.
        target: Option<PathBuf>,
    },
    /// A symbolic link to a directory.
    #[error("the symbolic link {} leads to a directory", path.display())]
    #[diagnostic(help(
        "symbolic links to directories are not followed; copy the directory or link the files"
    ))]
    LinkToDirectory {
        /// The link.
        path: PathBuf,
    },
    /// A stored manifest row holds a malformed hash.
    #[error("the stored manifest holds a malformed hash for {path:?}")]
    BadHash {
        /// The path of the row.
        path: String,
    },
}

/// A file found by the walk, before hashing.
struct Found {
    path: String,
    source: PathBuf,
    size: u64,
    mode: u32,
}

impl Manifest {
    /// Walks `root` and hashes every file in parallel, calling `progress` after each file.
    pub fn build(
        root: &Path,
        options: &Options,
        progress: &(dyn Fn(Progress) + Sync),
    ) -> Result<Self, ManifestError> {
        let read_err = |path: &Path| {
            let path = path.to_owned();
            move |source| ManifestError::Read { path, source }
        };
        let root = root.canonicalize().map_err(read_err(root))?;
        let found = walk(&root, options)?;
        let files_total = found.len() as u64;
        let bytes_total = found.iter().map(|f| f.size).sum();
        let start = Progress {
            files_done: 0,
            files_total,
            bytes_done: 0,
            bytes_total,
        };
        progress(start);
        // Counters and the callback share one lock, so reports arrive in order and each
        // pairs a file count with the matching byte count.
        let done = Mutex::new(start);
        let entries = found
            .par_iter()
            .map(|f| {
                let (hash, size) = hash_file(&f.source).map_err(read_err(&f.source))?;
                {
                    let mut done = done.lock().unwrap_or_else(PoisonError::into_inner);
                    done.files_done += 1;
                    done.bytes_done += size;
                    progress(*done);
                }
                Ok(Entry {
                    path: f.path.clone(),
                    hash,
                    size,
                    mode: f.mode,
                })
            })
            .collect::<Result<Vec<_>, ManifestError>>()?;
        let sources = found.into_iter().map(|f| f.source).collect();
        // `walk` sorts by path and `collect` keeps order, so `entries` is sorted.
        Ok(Self { entries, sources })
    }

    /// A manifest of `entries` (e.g. read back from the cluster); sorted by path, and for a
    /// path given twice the last wins.
    pub fn from_entries(entries: Vec<Entry>) -> Self {
        let mut by_path: BTreeMap<String, Entry> = BTreeMap::new();
        for e in entries {
            by_path.insert(e.path.clone(), e);
        }
        Self {
            entries: by_path.into_values().collect(),
            sources: Vec::new(),
        }
    }

    /// The manifest stored for a deployment.
    pub fn from_deployment_files(files: &[DeploymentFile]) -> Result<Self, ManifestError> {
        let entries = files
            .iter()
            .map(|f| {
                Ok(Entry {
                    path: f.path.clone(),
                    hash: f.hash.parse().map_err(|_| ManifestError::BadHash {
                        path: f.path.clone(),
                    })?,
                    size: u64::try_from(f.size).unwrap_or(0),
                    mode: u32::try_from(f.mode).unwrap_or(DEFAULT_MODE),
                })
            })
            .collect::<Result<Vec<_>, ManifestError>>()?;
        Ok(Self::from_entries(entries))
    }

    /// The rows that store this manifest for deployment `deployment_id`.
    pub fn to_deployment_files(&self, deployment_id: &str) -> Vec<DeploymentFile> {
        self.entries
            .iter()
            .map(|e| DeploymentFile {
                deployment_id: deployment_id.to_owned(),
                path: e.path.clone(),
                hash: e.hash.to_string(),
                size: i64::try_from(e.size).unwrap_or(i64::MAX),
                mode: i64::from(e.mode),
            })
            .collect()
    }

    /// The files, sorted by path.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The file at `path`.
    pub fn get(&self, path: &str) -> Option<&Entry> {
        self.entries
            .binary_search_by(|e| e.path.as_str().cmp(path))
            .ok()
            .map(|i| &self.entries[i])
    }

    /// Where the bytes of the file at `path` are read from (built manifests only).
    pub fn source(&self, path: &str) -> Option<&Path> {
        let i = self
            .entries
            .binary_search_by(|e| e.path.as_str().cmp(path))
            .ok()?;
        self.sources.get(i).map(PathBuf::as_path)
    }

    /// Number of files.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there are no files.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Total size of the files.
    pub fn total_bytes(&self) -> u64 {
        self.entries.iter().map(|e| e.size).sum()
    }

    /// Each distinct blob once, with its size.
    pub fn blobs(&self) -> BTreeMap<BlobHash, u64> {
        self.entries.iter().map(|e| (e.hash, e.size)).collect()
    }

    /// A digest of the whole manifest (paths, hashes, sizes, modes): equal manifests have
    /// equal digests, any difference changes it. Stored as the deployment's `manifest_hash`.
    pub fn digest(&self) -> BlobHash {
        let mut hasher = blake3::Hasher::new_derive_key(DIGEST_CONTEXT);
        hasher.update(&(self.entries.len() as u64).to_le_bytes());
        for e in &self.entries {
            hasher.update(&(e.path.len() as u64).to_le_bytes());
            hasher.update(e.path.as_bytes());
            hasher.update(e.hash.as_bytes());
            hasher.update(&e.size.to_le_bytes());
            hasher.update(&e.mode.to_le_bytes());
        }
        BlobHash::from(hasher.finalize())
    }

    /// The blobs for which `have` is false, each once.
    pub fn missing(&self, have: impl Fn(&BlobHash) -> bool) -> Missing {
        let blobs: Vec<(BlobHash, u64)> = self
            .blobs()
            .into_iter()
            .filter(|(hash, _)| !have(hash))
            .collect();
        let bytes = blobs.iter().map(|(_, size)| size).sum();
        Missing { blobs, bytes }
    }

    /// What changes going from `old` to `self`.
    pub fn diff(&self, old: &Manifest) -> Diff {
        let mut diff = Diff::default();
        let (mut a, mut b) = (
            old.entries.iter().peekable(),
            self.entries.iter().peekable(),
        );
        loop {
            match (a.peek(), b.peek()) {
                (None, None) => break,
                (Some(o), None) => {
                    diff.removed.push(o.path.clone());
                    a.next();
                }
                (None, Some(n)) => {
                    diff.added.push(n.path.clone());
                    b.next();
                }
                (Some(o), Some(n)) => match o.path.cmp(&n.path) {
                    std::cmp::Ordering::Less => {
                        diff.removed.push(o.path.clone());
                        a.next();
                    }
                    std::cmp::Ordering::Greater => {
                        diff.added.push(n.path.clone());
                        b.next();
                    }
                    std::cmp::Ordering::Equal => {
                        if o == n {
                            diff.unchanged += 1;
                        } else {
                            diff.changed.push(n.path.clone());
                        }
                        a.next();
                        b.next();
                    }
                },
            }
        }
        diff
    }
}

impl PartialEq for Manifest {
    fn eq(&self, other: &Self) -> bool {
        self.entries == other.entries
    }
}

impl Eq for Manifest {}

/// Lists the files under `root` (canonical), sorted by relative path.
fn walk(root: &Path, options: &Options) -> Result<Vec<Found>, ManifestError> {
    let include_hidden = options.include_hidden;
    let walker = walkdir::WalkDir::new(root)
        .follow_links(false)
        .into_iter()
        .filter_entry(move |e| {
            e.depth() == 0
                || include_hidden
                || e.file_name() == WELL_KNOWN
                || !e.file_name().to_string_lossy().starts_with('.')
        });
    let mut found = Vec::new();
    for entry in walker {
        let entry = entry.map_err(|e| ManifestError::Read {
            path: e.path().unwrap_or(root).to_owned(),
            source: e
                .into_io_error()
                .unwrap_or_else(|| std::io::Error::other("filesystem loop")),
        })?;
        if entry.depth() == 0 {
            continue;
        }
        let full = entry.path();
        let rel = relative_name(root, full)?;
        let file_type = entry.file_type();
        if file_type.is_dir() {
            continue;
        }
        let (source, meta) = if file_type.is_symlink() {
            let target = full
                .canonicalize()
                .map_err(|_| ManifestError::LinkOutside {
                    path: full.to_owned(),
                    target: None,
                })?;
            if !target.starts_with(root) {
                return Err(ManifestError::LinkOutside {
                    path: full.to_owned(),
                    target: Some(target),
                });
            }
            let meta = target.metadata().map_err(|source| ManifestError::Read {
                path: target.clone(),
                source,
            })?;
            if meta.is_dir() {
                return Err(ManifestError::LinkToDirectory {
                    path: full.to_owned(),
                });
            }
            (target, meta)
        } else {
            let meta = entry.metadata().map_err(|e| ManifestError::Read {
                path: full.to_owned(),
                source: e
                    .into_io_error()
                    .unwrap_or_else(|| std::io::Error::other("metadata")),
            })?;
            (full.to_owned(), meta)
        };
        if !meta.is_file() {
            return Err(ManifestError::Special {
                path: full.to_owned(),
            });
        }
        found.push(Found {
            path: rel,
            source,
            size: meta.len(),
            mode: mode_of(&meta),
        });
    }
    found.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(found)
}

/// The `/`-separated relative name of `full`, checked for what URLs and the nodes' file
/// systems can carry.
fn relative_name(root: &Path, full: &Path) -> Result<String, ManifestError> {
    let rel = full
        .strip_prefix(root)
        .map_err(|_| ManifestError::LinkOutside {
            path: full.to_owned(),
            target: None,
        })?;
    let mut parts = Vec::new();
    for component in rel.components() {
        let std::path::Component::Normal(part) = component else {
            return Err(ManifestError::BadName {
                path: rel.to_string_lossy().into_owned(),
                reason: "it is not a plain relative path",
            });
        };
        let Some(part) = part.to_str() else {
            return Err(ManifestError::NotUtf8 {
                path: full.to_owned(),
            });
        };
        parts.push(part);
    }
    let path = parts.join("/");
    match check_path(&path) {
        Ok(()) => Ok(path),
        Err(reason) => Err(ManifestError::BadName { path, reason }),
    }
}

/// Checks a manifest path received from elsewhere (a client, a peer) before it is used to
/// name a file: relative, `/`-separated, no empty, `.` or `..` segment, no backslash or
/// control character. On failure, the reason.
pub fn check_path(path: &str) -> Result<(), &'static str> {
    if path.is_empty() {
        return Err("the path is empty");
    }
    if path.chars().any(char::is_control) {
        return Err("its name holds a control character");
    }
    if path.contains('\\') {
        return Err("its name holds a backslash");
    }
    if path
        .split('/')
        .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return Err("it is not a plain relative path");
    }
    Ok(())
}

/// Hashes a file, returning its hash and the number of bytes read.
fn hash_file(path: &Path) -> std::io::Result<(BlobHash, u64)> {
    let mut file = File::open(path)?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((BlobHash::from(hasher.finalize()), size))
}

#[cfg(unix)]
fn mode_of(meta: &std::fs::Metadata) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o777
}

#[cfg(not(unix))]
fn mode_of(_meta: &std::fs::Metadata) -> u32 {
    DEFAULT_MODE
}

#[cfg(test)]
mod tests;
