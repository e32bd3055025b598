//! Sites: what a host name serves.

use std::collections::HashMap;
use std::fmt::Debug;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use http::HeaderValue;

/// Per-site settings.
#[derive(Debug, Clone, Default)]
pub struct SiteSettings {
    /// When set, every response of the site carries this `Cache-Control` instead of the
    /// defaults by content type.
    pub cache_control: Option<HeaderValue>,
}

/// A site as the server sees it: the root of its active deployment and its settings.
#[derive(Debug, Clone)]
pub struct Site {
    /// The primary domain.
    pub name: String,
    /// Root directory of the active deployment. A new deployment must use a new
    /// directory: cached files are keyed by it.
    pub root: PathBuf,
    /// Settings.
    pub settings: SiteSettings,
    /// Optional content hashes from the deployment manifest (relative path → blake3),
    /// used as the strong ETag instead of hashing the file.
    pub manifest: Option<Arc<HashMap<String, blake3::Hash>>>,
}

impl Site {
    /// A site with default settings.
    pub fn new(name: impl Into<String>, root: impl Into<PathBuf>) -> Self {
        Site {
            name: name.into(),
            root: root.into(),
            settings: SiteSettings::default(),
            manifest: None,
        }
    }
}

/// Maps a normalised host name (aliases included) to its site. Called on every request,
/// so implementations answer from an in-memory snapshot without I/O.
pub trait SiteResolver: Debug + Send + Sync + 'static {
    /// The site for `host` (lower case, no port, no trailing dot), or `None`.
    fn resolve(&self, host: &str) -> Option<Arc<Site>>;
}

/// An in-memory [`SiteResolver`] with atomically swapped snapshots: for tests and
/// standalone use.
#[derive(Debug, Default)]
pub struct StaticSites {
    map: ArcSwap<HashMap<String, Arc<Site>>>,
    write: Mutex<()>,
}

impl StaticSites {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces `site` under its name and every alias.
    pub fn insert(&self, site: Site, aliases: &[&str]) {
        let _w = self.write.lock();
        let site = Arc::new(site);
        let mut next = HashMap::clone(&self.map.load());
        next.insert(site.name.to_ascii_lowercase(), site.clone());
        for a in aliases {
            next.insert(a.to_ascii_lowercase(), site.clone());
        }
        self.map.store(Arc::new(next));
    }

    /// Removes a host name (a site's name or an alias).
    pub fn remove(&self, host: &str) {
        let _w = self.write.lock();
        let mut next = HashMap::clone(&self.map.load());
        next.remove(&host.to_ascii_lowercase());
        self.map.store(Arc::new(next));
    }
}

impl SiteResolver for StaticSites {
    fn resolve(&self, host: &str) -> Option<Arc<Site>> {
        self.map.load().get(host).cloned()
    }
}
