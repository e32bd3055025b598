//! Deployments on this node: fetching their blobs from peers, materialising them under
//! `<data_dir>/sites/<domain>/<deployment-id>/`, switching the served site atomically and
//! reporting activation in the store.
//!
//! A deployment is written into a temporary directory beside the others and renamed into
//! place once complete; the domain's local pointer (`<domain>/active`, replaced by rename)
//! and the in-memory host map change only after that. A crash at any point leaves the
//! previous deployment on disk and named by the pointer, so a restarted node serves it
//! until the new one is complete.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use makiatto_http::{Site, SiteResolver};
use makiatto_mesh::blobs::{self, FetchOptions};

use crate::manifest;
use crate::store::cluster::deployment_activations::{self, Activation, ActivationStatus};
use crate::store::cluster::{aliases, deployment_files, deployments, domains};
use crate::store::{BlobHash, BlobStore, Store};

/// Name of the per-domain pointer file.
const POINTER: &str = "active";

/// The served sites: host name (domain or alias) → the site of the domain's deployment
/// active on this node. Swapped whole, so a request sees the old or the new map.
#[derive(Debug, Default)]
pub struct StoreSites {
    map: ArcSwap<HashMap<String, Arc<Site>>>,
}

impl SiteResolver for StoreSites {
    fn resolve(&self, host: &str) -> Option<Arc<Site>> {
        self.map.load().get(host).cloned()
    }
}

impl StoreSites {
    /// The deployment directory serving `host`, if any.
    pub fn root(&self, host: &str) -> Option<PathBuf> {
        self.resolve(host).map(|s| s.root.clone())
    }
}

/// One domain's deployment active on this node.
#[derive(Debug, Clone)]
struct Live {
    id: String,
    site: Arc<Site>,
}

/// Why a deployment is not active (yet) on this node.
#[derive(Debug)]
enum ActivateError {
    /// The deployment's rows have not arrived: wait, report nothing.
    NotYet,
    /// Retried later; reported as `fetching` with the reason.
    Transient(String),
    /// The deployment can never be materialised here; reported as `failed`.
    Permanent(String),
}

/// Reconciles the deployments served by this node with the store.
pub(crate) struct Activator {
    pub(crate) node: String,
    pub(crate) store: Store,
    pub(crate) blobs: BlobStore,
    pub(crate) sites: Arc<StoreSites>,
    /// `<data_dir>/sites`.
    pub(crate) root: PathBuf,
    /// Deployment directories kept per domain (the active one included).
    pub(crate) keep: usize,
    /// The blob servers of the alive peers.
    pub(crate) peers: Arc<dyn Fn() -> Vec<SocketAddr> + Send + Sync>,
    live: BTreeMap<String, Live>,
}

impl std::fmt::Debug for Activator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Activator")
            .field("node", &self.node)
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

impl Activator {
    pub(crate) fn new(
        node: String,
        store: Store,
        blobs: BlobStore,
        sites: Arc<StoreSites>,
        root: PathBuf,
        peers: Arc<dyn Fn() -> Vec<SocketAddr> + Send + Sync>,
    ) -> Self {
        Self {
            node,
            store,
            blobs,
            sites,
            root,
            keep: 3,
            peers,
            live: BTreeMap::new(),
        }
    }

    /// Serves what the pointers on disk name (before the store is consulted), so that a
    /// restarted node serves its last complete deployments at once.
    pub(crate) fn load_pointers(&mut self) {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return;
        };
        for entry in entries.flatten() {
            let Some(domain) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if !safe_component(&domain) {
                continue;
            }
            let Ok(id) = std::fs::read_to_string(entry.path().join(POINTER)) else {
                continue;
            };
            let id = id.trim().to_owned();
            let dir = entry.path().join(&id);
            if safe_component(&id) && dir.is_dir() {
                let manifest = self
                    .store
                    .read(|c| deployment_files::list_for_deployment(c, &id))
                    .ok()
                    .map(|files| manifest_map(&files));
                let site = site(&domain, dir, manifest);
                self.live.insert(domain, Live { id, site });
            }
        }
        let _ = self.publish();
    }

    /// One pass: activates every domain's active deployment not yet served here, drops
    /// domains that are gone. Returns the problems of deployments still pending.
    pub(crate) async fn pass(&mut self) -> Result<Vec<String>, String> {
        let wanted = self
            .store
            .read(domains::list)
            .map_err(|e| format!("reading domains: {e}"))?;
        let mut problems = Vec::new();
        self.live.retain(|d, _| {
            wanted
                .iter()
                .any(|w| &w.name == d && w.active_deployment.is_some())
        });
        for domain in &wanted {
            let Some(id) = &domain.active_deployment else {
                continue;
            };
            if self.live.get(&domain.name).is_some_and(|l| &l.id == id) {
                continue;
            }
            match self.activate(&domain.name, id).await {
                Ok(site) => {
                    self.live.insert(
                        domain.name.clone(),
                        Live {
                            id: id.clone(),
                            site,
                        },
                    );
                    // Serve it before telling the cluster.
                    self.publish()?;
                    self.report(id, ActivationStatus::Active, None);
                    tracing::info!(domain = %domain.name, deployment = %id, "deployment active");
                    self.prune(&domain.name, id);
                }
                Err(ActivateError::NotYet) => {}
                Err(ActivateError::Transient(why)) => {
                    self.report(id, ActivationStatus::Fetching, Some(why.clone()));
                    problems.push(format!("{}: {why}", domain.name));
                }
                Err(ActivateError::Permanent(why)) => {
                    self.report(id, ActivationStatus::Failed, Some(why.clone()));
                    problems.push(format!("{}: {why}", domain.name));
                }
            }
        }
        // Domains may be gone and aliases may have moved without a new deployment.
        self.publish()?;
        Ok(problems)
    }

    /// Rebuilds the host map from the live deployments and the store's aliases.
    fn publish(&self) -> Result<(), String> {
        let all = self
            .store
            .read(aliases::list)
            .map_err(|e| format!("reading aliases: {e}"))?;
        let mut map = HashMap::new();
        for (domain, live) in &self.live {
            map.insert(domain.clone(), Arc::clone(&live.site));
        }
        for a in all {
            if let Some(live) = self.live.get(&a.domain) {
                map.insert(a.alias, Arc::clone(&live.site));
            }
        }
        self.sites.map.store(Arc::new(map));
        Ok(())
    }

    /// Writes this node's activation row when its status or error changes.
    fn report(&self, id: &str, status: ActivationStatus, error: Option<String>) {
        let row = Activation {
            deployment_id: id.to_owned(),
            node: self.node.clone(),
            activated_ms: now_ms(),
            status,
            error,
        };
        let result = self.store.write(|tx| {
            let current = deployment_activations::get(tx, id, &self.node)?;
            if current
                .as_ref()
                .is_some_and(|c| c.status == row.status && c.error == row.error)
            {
                return Ok(());
            }
            deployment_activations::upsert(tx, &row)
        });
        if let Err(e) = result {
            tracing::warn!(deployment = id, error = %e, "recording activation failed");
        }
    }

    async fn activate(&self, domain: &str, id: &str) -> Result<Arc<Site>, ActivateError> {
        let (deployment, files) = self
            .store
            .read(|c| {
                Ok((
                    deployments::get(c, id)?,
                    deployment_files::list_for_deployment(c, id)?,
                ))
            })
            .map_err(|e| ActivateError::Transient(format!("reading the deployment: {e}")))?;
        let Some(deployment) = deployment else {
            return Err(ActivateError::NotYet);
        };
        if deployment.domain != domain || !safe_component(domain) || !safe_component(id) {
            return Err(ActivateError::Permanent(
                "the deployment does not belong to the domain".into(),
            ));
        }
        let mut wanted: Vec<(PathBuf, BlobHash)> = Vec::with_capacity(files.len());
        for f in &files {
            manifest::check_path(&f.path)
                .map_err(|why| ActivateError::Permanent(format!("file {:?}: {why}", f.path)))?;
            let hash: BlobHash = f.hash.parse().map_err(|_| {
                ActivateError::Permanent(format!("file {:?}: bad hash {}", f.path, f.hash))
            })?;
            wanted.push((PathBuf::from(&f.path), hash));
        }
        let dir = self.root.join(domain).join(id);
        if !dir.is_dir() {
            self.fetch(&wanted).await?;
            let (blobs, dir, wanted) = (self.blobs.clone(), dir.clone(), wanted.clone());
            tokio::task::spawn_blocking(move || materialise(&blobs, &dir, &wanted))
                .await
                .map_err(|e| ActivateError::Transient(format!("materialising: {e}")))?
                .map_err(|e| ActivateError::Transient(format!("materialising: {e}")))?;
        }
        write_pointer(&self.root.join(domain), id)
            .map_err(|e| ActivateError::Transient(format!("switching: {e}")))?;
        Ok(site(domain, dir, Some(manifest_map(&files))))
    }

    /// Fetches the blobs of `wanted` this node lacks from the alive peers.
    async fn fetch(&self, wanted: &[(PathBuf, BlobHash)]) -> Result<(), ActivateError> {
        let mut missing: Vec<BlobHash> = wanted
            .iter()
            .map(|(_, h)| *h)
            .filter(|h| !self.blobs.contains(h))
            .collect();
        missing.sort_unstable();
        missing.dedup();
        if missing.is_empty() {
            return Ok(());
        }
        let peers = (self.peers)();
        if peers.is_empty() {
            return Err(ActivateError::Transient(format!(
                "{} blobs missing and no peer alive",
                missing.len()
            )));
        }
        let results =
            blobs::fetch_many(&self.blobs, &missing, &peers, &FetchOptions::default()).await;
        let failed = results.iter().filter(|(_, r)| r.is_err()).count();
        if failed > 0 {
            return Err(ActivateError::Transient(format!(
                "{failed} of {} blobs could not be fetched",
                missing.len()
            )));
        }
        Ok(())
    }

    /// Keeps the newest `keep` deployment directories of `domain` (and `active`), removes
    /// the rest and any temporary directory left by a crash.
    fn prune(&self, domain: &str, active: &str) {
        let dir = self.root.join(domain);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        let mut ids = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(".tmp-") {
                let _ = std::fs::remove_dir_all(entry.path());
            } else if name != POINTER && entry.path().is_dir() {
                ids.push(name);
            }
        }
        // Ids start with their creation time: the name order is the age order.
        ids.sort_unstable_by(|a, b| b.cmp(a));
        for old in ids.iter().skip(self.keep) {
            if old != active {
                let _ = std::fs::remove_dir_all(dir.join(old));
            }
        }
    }
}

/// Writes every file of a deployment into a temporary directory beside `dir` (hard links
/// to the blobs, copies where linking fails), then renames it to `dir`.
fn materialise(
    blobs: &BlobStore,
    dir: &Path,
    wanted: &[(PathBuf, BlobHash)],
) -> std::io::Result<()> {
    let parent = dir
        .parent()
        .ok_or_else(|| std::io::Error::other("deployment directory has no parent"))?;
    std::fs::create_dir_all(parent)?;
    let temp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempdir_in(parent)?;
    for (path, hash) in wanted {
        let target = temp.path().join(path);
        if let Some(p) = target.parent() {
            std::fs::create_dir_all(p)?;
        }
        let source = blobs.path(hash);
        if std::fs::hard_link(&source, &target).is_err() {
            std::fs::copy(&source, &target)?;
        }
    }
    let done = temp.keep();
    if let Err(e) = std::fs::rename(&done, dir) {
        let _ = std::fs::remove_dir_all(&done);
        // Another pass finished it first: that is as good.
        if !dir.is_dir() {
            return Err(e);
        }
    }
    Ok(())
}

/// Replaces `<domain_dir>/active` with `id`, atomically.
fn write_pointer(domain_dir: &Path, id: &str) -> std::io::Result<()> {
    let temp = domain_dir.join(format!(".{POINTER}.tmp"));
    std::fs::write(&temp, id)?;
    std::fs::rename(&temp, domain_dir.join(POINTER))
}

fn manifest_map(files: &[deployment_files::DeploymentFile]) -> Arc<HashMap<String, blake3::Hash>> {
    Arc::new(
        files
            .iter()
            .filter_map(|f| Some((f.path.clone(), blake3::Hash::from_hex(&f.hash).ok()?)))
            .collect(),
    )
}

fn site(
    domain: &str,
    root: PathBuf,
    manifest: Option<Arc<HashMap<String, blake3::Hash>>>,
) -> Arc<Site> {
    let mut site = Site::new(domain, root);
    site.manifest = manifest;
    Arc::new(site)
}

/// A domain name or deployment id usable as one path component.
fn safe_component(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('.')
        && s.len() <= 253
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Options;
    use crate::store::cluster::{self, deployment_files::DeploymentFile, deployments::Deployment};

    struct Fixture {
        _dir: tempfile::TempDir,
        store: Store,
        blobs: BlobStore,
        root: PathBuf,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            dir.path().join("store.db"),
            &cluster::SCHEMA,
            Options::default(),
        )
        .unwrap();
        let blobs = BlobStore::open(dir.path().join("blobs")).unwrap();
        let root = dir.path().join("sites");
        Fixture {
            _dir: dir,
            store,
            blobs,
            root,
        }
    }

    impl Fixture {
        fn activator(&self) -> (Activator, Arc<StoreSites>) {
            let sites = Arc::new(StoreSites::default());
            let a = Activator::new(
                "n1".into(),
                self.store.clone(),
                self.blobs.clone(),
                Arc::clone(&sites),
                self.root.clone(),
                Arc::new(Vec::new),
            );
            (a, sites)
        }

        /// Inserts a deployment of `files` and makes it active; stores the blobs when
        /// `with_blobs`.
        fn deploy(&self, id: &str, files: &[(&str, &str)], with_blobs: bool) {
            let rows: Vec<DeploymentFile> = files
                .iter()
                .map(|(path, body)| {
                    let hash = BlobHash::of(body.as_bytes());
                    if with_blobs {
                        self.blobs.put_bytes(body.as_bytes()).unwrap();
                    }
                    DeploymentFile {
                        deployment_id: id.into(),
                        path: (*path).into(),
                        hash: hash.to_string(),
                        size: body.len() as i64,
                        mode: 0o644,
                    }
                })
                .collect();
            self.store
                .write(|tx| {
                    deployments::insert(
                        tx,
                        &Deployment {
                            id: id.into(),
                            domain: "example.com".into(),
                            created_ms: 1,
                            created_by: "test".into(),
                            config: Vec::new(),
                            manifest_hash: String::new(),
                        },
                    )?;
                    deployment_files::insert_many(tx, &rows)?;
                    domains::set_active(tx, "example.com", Some(id), 1)
                })
                .unwrap();
        }
    }

    fn served(sites: &StoreSites, path: &str) -> Option<String> {
        std::fs::read_to_string(sites.root("example.com")?.join(path)).ok()
    }

    fn status(store: &Store, id: &str) -> Option<ActivationStatus> {
        store
            .read(|c| deployment_activations::get(c, id, "n1"))
            .unwrap()
            .map(|a| a.status)
    }

    #[tokio::test]
    async fn missing_blobs_keep_the_old_deployment_serving_across_a_restart() {
        let f = fixture();
        let (mut a, sites) = f.activator();
        f.deploy("d1", &[("index.html", "v1"), ("css/a.css", "a")], true);
        assert!(a.pass().await.unwrap().is_empty());
        assert_eq!(served(&sites, "index.html").as_deref(), Some("v1"));
        assert_eq!(served(&sites, "css/a.css").as_deref(), Some("a"));
        assert_eq!(status(&f.store, "d1"), Some(ActivationStatus::Active));

        // d2's blobs are nowhere (no peer): d1 keeps serving, d2 is reported fetching.
        f.deploy("d2", &[("index.html", "v2")], false);
        let problems = a.pass().await.unwrap();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(served(&sites, "index.html").as_deref(), Some("v1"));
        assert_eq!(status(&f.store, "d2"), Some(ActivationStatus::Fetching));

        // A crash left a half-written directory; a restarted node serves d1 from its
        // pointer before consulting the store.
        std::fs::create_dir_all(f.root.join("example.com/.tmp-crash/x")).unwrap();
        drop(a);
        let (mut a, sites) = f.activator();
        a.load_pointers();
        assert_eq!(served(&sites, "index.html").as_deref(), Some("v1"));

        // The blobs arrive: d2 switches in, the leftover is cleaned, files of d1 only are
        // gone from what is served.
        f.blobs.put_bytes(b"v2").unwrap();
        assert!(a.pass().await.unwrap().is_empty());
        assert_eq!(served(&sites, "index.html").as_deref(), Some("v2"));
        assert_eq!(served(&sites, "css/a.css"), None);
        assert_eq!(status(&f.store, "d2"), Some(ActivationStatus::Active));
        assert!(!f.root.join("example.com/.tmp-crash").exists());
        assert_eq!(
            std::fs::read_to_string(f.root.join("example.com").join(POINTER)).unwrap(),
            "d2"
        );
    }

    #[tokio::test]
    async fn the_newest_deployments_are_kept_and_unsafe_paths_refused() {
        let f = fixture();
        let (mut a, sites) = f.activator();
        for i in 1..=5 {
            f.deploy(&format!("d{i}"), &[("index.html", &format!("v{i}"))], true);
            assert!(a.pass().await.unwrap().is_empty());
        }
        let mut kept: Vec<String> = std::fs::read_dir(f.root.join("example.com"))
            .unwrap()
            .flatten()
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        kept.sort();
        assert_eq!(kept, ["d3", "d4", "d5"]);

        f.deploy("d6", &[("../escape.html", "x")], true);
        let problems = a.pass().await.unwrap();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(status(&f.store, "d6"), Some(ActivationStatus::Failed));
        assert_eq!(served(&sites, "index.html").as_deref(), Some("v5"));
        assert!(!f.root.join("escape.html").exists());
    }
}
