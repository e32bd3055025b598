//! The admin operations a node offers `maki`, over the node's store and blob store. The
//! admin API ([`socket`]: JSON under `/v1` on a Unix socket) is a thin layer over these;
//! everything a client sends is checked here before it touches the store or the file
//! system.

pub mod client;
pub mod socket;

use std::io::Read;
use std::net::Ipv4Addr;

use miette::Diagnostic;
use serde::{Deserialize, Serialize};

use crate::config::Ipv4Cidr;
use crate::deploy::Rollout;
use crate::deploy::{self, DeployError, DeploymentConfig, DeploymentRows};
use crate::manifest::{self, Manifest};
use crate::peer::{self, PeerError};
use crate::store::cluster::deployment_activations;
use crate::store::cluster::external_peers::{self, ExternalPeer};
use crate::store::cluster::node_health::{self, HealthStatus};
use crate::store::cluster::{aliases, certificates, deployment_files, deployments, domains, nodes};
use crate::store::{BlobHash, BlobStore, Store, StoreError};

/// A node whose health row is older than this is not expected to activate deployments.
pub const HEALTH_FRESH_MS: i64 = 15_000;

/// Deployments kept per domain in the cluster (rollback targets).
pub const KEEP_DEPLOYMENTS: usize = 10;

/// Largest blob accepted from a client, bytes (1 GiB).
pub const MAX_BLOB_BYTES: u64 = 1 << 30;

/// One deployment as `maki deployments` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentSummary {
    /// Its id.
    pub id: String,
    /// When it was created (unix ms).
    pub created_ms: i64,
    /// Who created it.
    pub created_by: String,
    /// Number of files.
    pub files: usize,
    /// Total size of the files, bytes.
    pub bytes: u64,
    /// Whether the domain serves it.
    pub active: bool,
}

/// A certificate as `GET /v1/certificates` lists it: what it covers and when, never its key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateSummary {
    /// Hex fingerprint of the leaf.
    pub id: String,
    /// The domain it was obtained for.
    pub domain: String,
    /// The names it covers (lower-case; may include `*.` wildcards).
    pub names: Vec<String>,
    /// Start of validity (unix ms).
    pub not_before_ms: i64,
    /// End of validity (unix ms, exclusive).
    pub not_after_ms: i64,
}

/// One node as `GET /v1/nodes` lists it: its row and its latest health report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The `nodes` row.
    pub node: nodes::Node,
    /// Its own latest report, if any (judge staleness by `updated_ms`).
    pub health: Option<node_health::NodeHealth>,
}

/// `maki peer add`: a new external peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewPeer {
    /// Peer name.
    pub name: String,
    /// Its WireGuard public key.
    pub wg_public_key: String,
    /// Its public endpoint (host or host:port), if reachable.
    pub endpoint: Option<String>,
    /// The mesh address to give it; `None`: the lowest free one.
    pub wg_address: Option<Ipv4Addr>,
}

/// `maki machine init`: a node about to join, registered through a node already in the
/// cluster so that every node adds it as a WireGuard peer before it starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewNode {
    /// Node name.
    pub name: String,
    /// Its WireGuard public key.
    pub wg_public_key: String,
    /// Its WireGuard endpoint, `host:port`.
    pub endpoint: String,
    /// Its public IPv4 address.
    pub ipv4: Ipv4Addr,
    /// Latitude, degrees.
    pub latitude: f64,
    /// Longitude, degrees.
    pub longitude: f64,
    /// Whether it answers as a nameserver.
    pub is_nameserver: bool,
    /// Replace a node of that name registered with another key (`init --recreate`);
    /// otherwise such a registration is refused.
    #[serde(default)]
    pub replace: bool,
    /// The mesh address it must have (`init --mesh-address`); `None`: one is allocated.
    #[serde(default)]
    pub mesh_address: Option<Ipv4Addr>,
}

/// Why an admin operation was refused or failed.
#[derive(Debug, thiserror::Error, Diagnostic)]
#[non_exhaustive]
pub enum AdminError {
    /// The request contradicts itself or the rules (client error).
    #[error("invalid deployment: {0}")]
    Invalid(String),
    /// Blobs the deployment needs are not uploaded (client error: upload them first).
    #[error("{} blobs of the deployment are not uploaded", .0.len())]
    #[diagnostic(help("upload the missing blobs, then create the deployment again"))]
    MissingBlobs(Vec<BlobHash>),
    /// Peer problems (client errors).
    #[error(transparent)]
    #[diagnostic(transparent)]
    Peer(#[from] PeerError),
    /// Rollback target problems.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Deploy(#[from] DeployError),
    /// The cluster does not serve the domain named.
    #[error("the cluster does not serve {0}")]
    UnknownDomain(String),
    /// The store failed (server error).
    #[error("node store")]
    Store(#[from] StoreError),
}

/// The admin operations of one node.
#[derive(Debug, Clone, Copy)]
pub struct Admin<'a> {
    store: &'a Store,
    blobs: &'a BlobStore,
}

impl<'a> Admin<'a> {
    /// Operations over `store` and `blobs`.
    pub fn new(store: &'a Store, blobs: &'a BlobStore) -> Self {
        Self { store, blobs }
    }

    /// The hashes among `hashes` that this node lacks, each once, in the order given.
    pub fn missing(&self, hashes: &[BlobHash]) -> Vec<BlobHash> {
        let mut seen = std::collections::HashSet::new();
        hashes
            .iter()
            .filter(|h| seen.insert(**h) && !self.blobs.contains(h))
            .copied()
            .collect()
    }

    /// Stores a blob streamed from `reader`, which must hash to `expected` and be at most
    /// [`MAX_BLOB_BYTES`]; returns its length. A wrong or oversized body stores nothing.
    pub fn put_blob(&self, expected: BlobHash, reader: impl Read) -> Result<u64, AdminError> {
        if self.blobs.contains(&expected) {
            return Ok(self.blobs.len(&expected)?);
        }
        let (_, len) = self
            .blobs
            .put_reader(reader, Some(expected), Some(MAX_BLOB_BYTES))?;
        Ok(len)
    }

    /// Checks a deployment sent by a client and inserts its rows. Nothing is written unless
    /// every row belongs to the deployment, every path is a plain relative path, the
    /// manifest hash matches the files, the configuration decodes, and every blob it
    /// references is present.
    pub fn create_deployment(&self, rows: &DeploymentRows) -> Result<(), AdminError> {
        self.checked_blobs(rows)?;
        self.store.write(|tx| deploy::insert(tx, rows))?;
        Ok(())
    }

    /// [`create_deployment`](Self::create_deployment), and makes it the domain's active
    /// deployment in the same transaction: what `maki sync` asks for. Every node then
    /// fetches, materialises and switches to it. Deployments of the domain beyond the
    /// newest [`KEEP_DEPLOYMENTS`] (the active one always stays) are purged.
    pub fn deploy(&self, rows: &DeploymentRows, now_ms: i64) -> Result<(), AdminError> {
        self.checked_blobs(rows)?;
        self.store.write(|tx| {
            deploy::insert(tx, rows)?;
            deploy::activate(tx, &rows.deployment, now_ms)?;
            // `prunable` keeps the active one besides the `keep` newest others.
            let others = KEEP_DEPLOYMENTS.saturating_sub(1);
            for old in deployments::prunable(tx, &rows.deployment.domain, others)? {
                deployments::purge(tx, &old)?;
            }
            Ok(())
        })?;
        Ok(())
    }

    /// The checks of [`create_deployment`](Self::create_deployment).
    fn checked_blobs(&self, rows: &DeploymentRows) -> Result<(), AdminError> {
        check_rows(rows)?;
        let mut needed: Vec<BlobHash> = Vec::new();
        for hash in rows
            .files
            .iter()
            .map(|f| &f.hash)
            .chain(rows.functions.iter().map(|f| &f.wasm))
            .chain(rows.transforms.iter().map(|t| &t.wasm))
        {
            needed.push(
                hash.parse()
                    .map_err(|_| invalid(format!("`{hash}` is not a blob hash")))?,
            );
        }
        let missing = self.missing(&needed);
        if !missing.is_empty() {
            return Err(AdminError::MissingBlobs(missing));
        }
        Ok(())
    }

    /// The deployments of `domain`, newest first.
    pub fn deployments(&self, domain: &str) -> Result<Vec<DeploymentSummary>, AdminError> {
        Ok(self.store.read(|c| {
            let active = domains::get(c, domain)?.and_then(|d| d.active_deployment);
            let mut out = Vec::new();
            for d in deployments::list_for_domain(c, domain)? {
                let files = deployment_files::list_for_deployment(c, &d.id)?;
                out.push(DeploymentSummary {
                    active: active.as_deref() == Some(d.id.as_str()),
                    files: files.len(),
                    bytes: files
                        .iter()
                        .map(|f| u64::try_from(f.size).unwrap_or(0))
                        .sum(),
                    id: d.id,
                    created_ms: d.created_ms,
                    created_by: d.created_by,
                });
            }
            Ok(out)
        })?)
    }

    /// Every node with its latest health report, by name.
    pub fn nodes(&self) -> Result<Vec<NodeStatus>, AdminError> {
        let (rows, reports) = self
            .store
            .read(|c| Ok((nodes::list(c)?, node_health::list(c)?)))?;
        Ok(rows
            .into_iter()
            .map(|node| NodeStatus {
                health: reports.iter().find(|h| h.node == node.name).cloned(),
                node,
            })
            .collect())
    }

    /// The certificates the cluster holds (names and validity; never keys), newest first.
    pub fn certificates(&self) -> Result<Vec<CertificateSummary>, AdminError> {
        let mut list: Vec<CertificateSummary> = self
            .store
            .read(certificates::list)?
            .into_iter()
            .map(|c| CertificateSummary {
                id: c.id,
                domain: c.domain,
                names: c.names,
                not_before_ms: c.not_before_ms,
                not_after_ms: c.not_after_ms,
            })
            .collect();
        list.sort_by_key(|c| std::cmp::Reverse(c.not_after_ms));
        Ok(list)
    }

    /// The domains the cluster serves, by name.
    pub fn domains(&self) -> Result<Vec<String>, AdminError> {
        Ok(self
            .store
            .read(domains::list)?
            .into_iter()
            .map(|d| d.name)
            .collect())
    }

    /// The aliases of `domain` (names that serve its site), sorted. Unknown domains are
    /// [`AdminError::UnknownDomain`].
    pub fn aliases(&self, domain: &str) -> Result<Vec<String>, AdminError> {
        let found = self.store.read(|c| {
            if domains::get(c, domain)?.is_none() {
                return Ok(None);
            }
            aliases::list_for_domain(c, domain).map(Some)
        })?;
        let mut names: Vec<String> = found
            .ok_or_else(|| AdminError::UnknownDomain(domain.to_owned()))?
            .into_iter()
            .map(|a| a.alias)
            .collect();
        names.sort();
        Ok(names)
    }

    /// Stops serving `domain` everywhere (its row and aliases go; its deployments stay
    /// until collected). Unknown domains are [`AdminError::UnknownDomain`].
    pub fn remove_domain(&self, domain: &str) -> Result<(), AdminError> {
        if self.store.write(|tx| deploy::remove_domain(tx, domain))? {
            Ok(())
        } else {
            Err(AdminError::UnknownDomain(domain.to_owned()))
        }
    }

    /// Where the cluster is with `deployment_id`: the activation reports of the nodes
    /// expected to activate it, those that reported themselves serving (healthy or
    /// degraded) within [`HEALTH_FRESH_MS`] of `now_ms`.
    pub fn rollout(&self, deployment_id: &str, now_ms: i64) -> Result<Rollout, AdminError> {
        let (activations, health) = self.store.read(|c| {
            Ok((
                deployment_activations::list_for_deployment(c, deployment_id)?,
                node_health::list_fresh(c, now_ms - HEALTH_FRESH_MS)?,
            ))
        })?;
        let expected: Vec<String> = health
            .into_iter()
            .filter(|h| matches!(h.status, HealthStatus::Healthy | HealthStatus::Degraded))
            .map(|h| h.node)
            .collect();
        Ok(Rollout::of(&activations, &expected))
    }

    /// Activates `requested`, or the deployment before the active one, for `domain`;
    /// returns the id now active.
    pub fn rollback(
        &self,
        domain: &str,
        requested: Option<&str>,
        now_ms: i64,
    ) -> Result<String, AdminError> {
        let (list, active) = self.store.read(|c| {
            Ok((
                deployments::list_for_domain(c, domain)?,
                domains::get(c, domain)?.and_then(|d| d.active_deployment),
            ))
        })?;
        let target = deploy::rollback_target(domain, &list, active.as_deref(), requested)?;
        self.store
            .write(|tx| deploy::activate(tx, target, now_ms))?;
        Ok(target.id.clone())
    }
}

impl Admin<'_> {
    /// Registers an external peer with an address of `cidr` not used by any node or peer
    /// (re-adding a peer replaces it, keeping its address unless another is asked for).
    pub fn add_peer(
        &self,
        new: &NewPeer,
        cidr: Ipv4Cidr,
        now_ms: i64,
    ) -> Result<ExternalPeer, AdminError> {
        peer::check_name(&new.name)?;
        peer::check_key(&new.wg_public_key)?;
        Ok(self.store.write(|tx| {
            let existing = external_peers::get(tx, &new.name)?;
            let mut used: Vec<Ipv4Addr> = nodes::list(tx)?
                .iter()
                .filter_map(|n| n.mesh_address.parse().ok())
                .chain(
                    external_peers::list(tx)?
                        .iter()
                        .filter(|p| p.name != new.name)
                        .filter_map(|p| p.mesh_address.parse().ok()),
                )
                .collect();
            used.sort_unstable();
            let address = match (new.wg_address, &existing) {
                (Some(a), _) => {
                    let broadcast = peer::broadcast(cidr);
                    if !cidr.contains(a) || used.contains(&a) || a == cidr.network || a == broadcast
                    {
                        return Ok(Err(PeerError::AddressTaken(a)));
                    }
                    a
                }
                (None, Some(p))
                    if p.mesh_address
                        .parse::<Ipv4Addr>()
                        .is_ok_and(|a| !used.contains(&a)) =>
                {
                    // Checked just above.
                    p.mesh_address.parse().unwrap_or(cidr.network)
                }
                (None, _) => match peer::allocate(cidr, &used) {
                    Some(a) => a,
                    None => return Ok(Err(PeerError::Full(cidr))),
                },
            };
            let row = ExternalPeer {
                name: new.name.clone(),
                wg_public_key: new.wg_public_key.clone(),
                endpoint: new.endpoint.clone(),
                mesh_address: address.to_string(),
                created_ms: existing.map_or(now_ms, |p| p.created_ms),
            };
            external_peers::upsert(tx, &row)?;
            Ok(Ok(row))
        })??)
    }

    /// Registers a node about to join (re-registering a name replaces its row, keeping its
    /// mesh address when still free); returns its row with its mesh address.
    pub fn add_node(
        &self,
        new: &NewNode,
        cidr: Ipv4Cidr,
        now_ms: i64,
    ) -> Result<nodes::Node, AdminError> {
        peer::check_name(&new.name)?;
        peer::check_key(&new.wg_public_key)?;
        if !new.latitude.is_finite()
            || !new.longitude.is_finite()
            || new.latitude.abs() > 90.0
            || new.longitude.abs() > 180.0
        {
            return Err(AdminError::Invalid("coordinates out of range".into()));
        }
        self.store.write(|tx| {
            let existing = nodes::get(tx, &new.name)?;
            if let Some(e) = &existing
                && e.wg_public_key != new.wg_public_key
                && !new.replace
            {
                return Ok(Err(AdminError::Invalid(format!(
                    "a node named {} is already in the cluster with another key; \
                     remove it first, or pass --recreate to replace it",
                    new.name
                ))));
            }
            let mut used: Vec<Ipv4Addr> = nodes::list(tx)?
                .iter()
                .filter(|n| n.name != new.name)
                .filter_map(|n| n.mesh_address.parse().ok())
                .chain(
                    external_peers::list(tx)?
                        .iter()
                        .filter_map(|p| p.mesh_address.parse().ok()),
                )
                .collect();
            used.sort_unstable();
            let kept = existing
                .as_ref()
                .and_then(|n| n.mesh_address.parse::<Ipv4Addr>().ok())
                .filter(|a| !used.contains(a) && cidr.contains(*a));
            if let Some(a) = new.mesh_address
                && (used.contains(&a) || !cidr.contains(a))
            {
                return Ok(Err(AdminError::Invalid(format!(
                    "mesh address {a} is taken or outside the mesh range"
                ))));
            }
            let Some(address) = new
                .mesh_address
                .or(kept)
                .or_else(|| peer::allocate(cidr, &used))
            else {
                return Ok(Err(AdminError::from(PeerError::Full(cidr))));
            };
            let row = nodes::Node {
                name: new.name.clone(),
                wg_public_key: new.wg_public_key.clone(),
                wg_endpoint: new.endpoint.clone(),
                mesh_address: address.to_string(),
                ipv4: new.ipv4.to_string(),
                ipv6: None,
                latitude: new.latitude,
                longitude: new.longitude,
                is_nameserver: new.is_nameserver,
                site_id: String::new(),
                created_ms: now_ms,
            };
            nodes::upsert(tx, &row)?;
            Ok(Ok(row))
        })?
    }

    /// Removes a node from the cluster state (its row and health report): the other nodes
    /// drop it from the mesh and from DNS answers. Returns whether it was known.
    pub fn remove_node(&self, name: &str) -> Result<bool, AdminError> {
        Ok(self.store.write(|tx| {
            let known = nodes::delete(tx, name)?;
            node_health::delete(tx, name)?;
            Ok(known)
        })?)
    }

    /// Every external peer, by name.
    pub fn peers(&self) -> Result<Vec<ExternalPeer>, AdminError> {
        Ok(self.store.read(external_peers::list)?)
    }

    /// Removes a peer.
    pub fn remove_peer(&self, name: &str) -> Result<(), AdminError> {
        if self.store.write(|tx| external_peers::delete(tx, name))? {
            Ok(())
        } else {
            Err(PeerError::Unknown(name.to_owned()).into())
        }
    }

    /// The wg-quick configuration of a peer.
    pub fn wg_config(&self, name: &str, mesh_port: u16) -> Result<String, AdminError> {
        let (found, members) = self
            .store
            .read(|c| Ok((external_peers::get(c, name)?, nodes::list(c)?)))?;
        let found = found.ok_or_else(|| PeerError::Unknown(name.to_owned()))?;
        Ok(peer::wg_quick_config(&found, &members, mesh_port)?)
    }
}

fn invalid(message: String) -> AdminError {
    AdminError::Invalid(message)
}

/// The consistency rules of [`Admin::create_deployment`] that need no store.
fn check_rows(rows: &DeploymentRows) -> Result<(), AdminError> {
    let d = &rows.deployment;
    let id = d.id.as_str();
    if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return Err(invalid(format!(
            "deployment id `{id}` is not 1 to 64 letters, digits and hyphens"
        )));
    }
    if d.domain.is_empty() {
        return Err(invalid("the deployment names no domain".into()));
    }
    let foreign = rows.files.iter().any(|f| f.deployment_id != id)
        || rows.functions.iter().any(|f| f.deployment_id != id)
        || rows.transforms.iter().any(|t| t.deployment_id != id)
        || rows
            .records
            .iter()
            .any(|r| r.deployment_id.as_deref() != Some(id) || r.domain != d.domain);
    if foreign {
        return Err(invalid(
            "rows belong to another deployment or domain".into(),
        ));
    }
    for f in &rows.files {
        manifest::check_path(&f.path)
            .map_err(|why| invalid(format!("file {:?}: {why}", f.path)))?;
    }
    let manifest =
        Manifest::from_deployment_files(&rows.files).map_err(|e| invalid(e.to_string()))?;
    if manifest.len() != rows.files.len() {
        return Err(invalid("a file path appears twice".into()));
    }
    if manifest.digest().to_string() != d.manifest_hash {
        return Err(invalid("the manifest hash does not match the files".into()));
    }
    let config = DeploymentConfig::decode(&d.config).map_err(|e| invalid(e.to_string()))?;
    if config != rows.config {
        return Err(invalid(
            "the encoded configuration differs from the sent one".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
