//! A planned domain as the cluster stores it: the rows of one deployment (files, records,
//! functions, transforms, and the domain's configuration), how to insert them, how to make
//! a deployment the active one, and which cluster domains no longer appear in the project.
//!
//! Deployments are immutable: every row is keyed by the deployment id and insert-only. A
//! domain switches deployment in one column ([`activate`]), which also re-points the
//! domain's aliases, so a rollback restores them too.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;

use miette::Diagnostic;
use rusqlite::Connection;
use serde::{Deserialize, Serialize};

use crate::admin::client::{Client, ClientError};
use crate::plan::DomainPlan;
use crate::project::Project;
use crate::store::BlobHash;
use crate::store::cluster::deployment_activations::{Activation, ActivationStatus};
use crate::store::cluster::{
    aliases, deployment_files::DeploymentFile, deployments::Deployment, dns_records, domains,
    functions, transforms,
};

/// The per-deployment settings that have no table of their own, stored (postcard, with a
/// version tag) in the deployment's `config` column.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentConfig {
    /// The `path` of the domain in makiatto.toml, for display.
    pub path: String,
    /// The domain's aliases, applied when the deployment becomes active.
    pub aliases: Vec<String>,
}

#[derive(Serialize, Deserialize)]
enum Envelope {
    V1(DeploymentConfig),
}

impl DeploymentConfig {
    /// The stored form.
    pub fn encode(&self) -> Vec<u8> {
        // Serialising owned strings to a Vec cannot fail.
        postcard::to_stdvec(&Envelope::V1(self.clone())).unwrap_or_default()
    }

    /// Reads the stored form.
    pub fn decode(bytes: &[u8]) -> Result<Self, DeployError> {
        match postcard::from_bytes(bytes) {
            Ok(Envelope::V1(config)) => Ok(config),
            Err(e) => Err(DeployError::Config(e.to_string())),
        }
    }
}

/// Every row of one deployment: what a client sends to create it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeploymentRows {
    /// The deployment.
    pub deployment: Deployment,
    /// Its files.
    pub files: Vec<DeploymentFile>,
    /// Its DNS records.
    pub records: Vec<dns_records::Record>,
    /// Its WASM handlers.
    pub functions: Vec<functions::Function>,
    /// Its WASM transforms, in order.
    pub transforms: Vec<transforms::Transform>,
    /// Its settings (also encoded in `deployment.config`).
    pub config: DeploymentConfig,
}

/// Why a deployment could not be assembled or stored.
#[derive(Debug, thiserror::Error, Diagnostic)]
#[non_exhaustive]
pub enum DeployError {
    /// A WASM module named by makiatto.toml is not among the domain's files.
    #[error("{domain}: the module {path} is not among the deployed files")]
    #[diagnostic(help("modules must be visible files inside the domain directory"))]
    ModuleMissing {
        /// The domain.
        domain: String,
        /// The module path.
        path: String,
    },
    /// `maki rollback` named a deployment the domain does not have.
    #[error("{domain} has no deployment {id}")]
    #[diagnostic(help("list the domain's deployments with `maki deployments {domain}`"))]
    UnknownDeployment {
        /// The domain.
        domain: String,
        /// The id asked for.
        id: String,
    },
    /// `maki rollback` without an id, and nothing older than the active deployment.
    #[error("{domain} has no deployment older than the active one")]
    #[diagnostic(help("name the deployment to activate: `maki rollback {domain} <id>`"))]
    NothingToRollBack {
        /// The domain.
        domain: String,
    },
    /// A stored configuration could not be read.
    #[error("a deployment's stored configuration is unreadable: {0}")]
    Config(String),
}

impl DomainPlan {
    /// The rows of a deployment of this domain with id `deployment_id` (from
    /// [`new_id`](crate::store::cluster::new_id)).
    pub fn rows(
        &self,
        deployment_id: &str,
        created_ms: i64,
        created_by: &str,
    ) -> Result<DeploymentRows, DeployError> {
        let domain = &self.domain;
        let wasm = |path: &str| {
            self.manifest
                .get(path)
                .map(|e| e.hash.to_string())
                .ok_or_else(|| DeployError::ModuleMissing {
                    domain: domain.name.clone(),
                    path: path.to_owned(),
                })
        };
        let config = DeploymentConfig {
            path: domain.path.clone(),
            aliases: domain.aliases.clone(),
        };
        let records = domain
            .records
            .iter()
            .enumerate()
            .map(|(i, r)| dns_records::Record {
                // Unique because the deployment id is never reused.
                id: format!("{deployment_id}-{i:04}"),
                domain: domain.name.clone(),
                name: r.name.clone(),
                rtype: r.rtype.as_str().to_owned(),
                value: r.value.clone(),
                ttl: i64::from(r.ttl),
                priority: r.priority.map(i64::from),
                deployment_id: Some(deployment_id.to_owned()),
            })
            .collect();
        let functions = domain
            .functions
            .iter()
            .map(|f| {
                Ok(functions::Function {
                    deployment_id: deployment_id.to_owned(),
                    route: f.route.clone(),
                    wasm: wasm(&f.path)?,
                    config: functions::FunctionConfig {
                        methods: f.methods.clone(),
                        env: f.env.0.clone(),
                        timeout_ms: f.timeout_ms,
                        max_memory_mb: f.max_memory_mb,
                    },
                })
            })
            .collect::<Result<_, DeployError>>()?;
        let transforms = domain
            .transforms
            .iter()
            .enumerate()
            .map(|(i, t)| {
                Ok(transforms::Transform {
                    deployment_id: deployment_id.to_owned(),
                    ordinal: i as i64,
                    wasm: wasm(&t.path)?,
                    files: t.files.clone(),
                    config: transforms::TransformConfig {
                        env: t.env.0.clone(),
                        timeout_ms: t.timeout_ms,
                        max_memory_mb: t.max_memory_mb,
                        max_file_size_kb: t.max_file_size_kb,
                    },
                })
            })
            .collect::<Result<_, DeployError>>()?;
        Ok(DeploymentRows {
            deployment: Deployment {
                id: deployment_id.to_owned(),
                domain: domain.name.clone(),
                created_ms,
                created_by: created_by.to_owned(),
                config: config.encode(),
                manifest_hash: self.manifest.digest().to_string(),
            },
            files: self.manifest.to_deployment_files(deployment_id),
            records,
            functions,
            transforms,
            config,
        })
    }
}

/// Upload progress of [`push`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadProgress {
    /// Blobs uploaded so far.
    pub blobs_done: usize,
    /// Blobs the node lacked.
    pub blobs_total: usize,
    /// Bytes uploaded so far.
    pub bytes_done: u64,
    /// Bytes of the blobs the node lacked.
    pub bytes_total: u64,
}

/// Why [`push`] failed.
#[derive(Debug, thiserror::Error, Diagnostic)]
#[non_exhaustive]
pub enum PushError {
    /// The deployment could not be assembled.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Deploy(#[from] DeployError),
    /// The node could not be reached or refused.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Client(#[from] ClientError),
    /// A file could not be read for upload.
    #[error("cannot read {} for upload", path.display())]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Deploys one planned domain through a node's admin API: asks which blobs the node lacks,
/// uploads only those, then creates the deployment `deployment_id` (retrying once if blobs
/// vanished in between). Returns the rows created. Activation is the nodes' business.
pub async fn push(
    client: &Client,
    plan: &DomainPlan,
    deployment_id: &str,
    created_ms: i64,
    created_by: &str,
    progress: &(dyn Fn(UploadProgress) + Sync),
) -> Result<DeploymentRows, PushError> {
    let rows = plan.rows(deployment_id, created_ms, created_by)?;
    let blobs = plan.manifest.blobs();
    let hashes: Vec<BlobHash> = blobs.keys().copied().collect();
    let mut missing = client.missing(&hashes).await?;
    for _attempt in 0..2 {
        upload(client, plan, &missing, &blobs, progress).await?;
        match client.create_deployment(&rows).await {
            Err(ClientError::Refused { missing: again, .. }) if !again.is_empty() => {
                missing = again;
            }
            other => return other.map(|()| rows).map_err(PushError::from),
        }
    }
    client.create_deployment(&rows).await?;
    Ok(rows)
}

async fn upload(
    client: &Client,
    plan: &DomainPlan,
    missing: &[BlobHash],
    sizes: &BTreeMap<BlobHash, u64>,
    progress: &(dyn Fn(UploadProgress) + Sync),
) -> Result<(), PushError> {
    let mut state = UploadProgress {
        blobs_done: 0,
        blobs_total: missing.len(),
        bytes_done: 0,
        bytes_total: missing.iter().filter_map(|h| sizes.get(h)).sum(),
    };
    progress(state);
    for hash in missing {
        let Some(entry) = plan.manifest.entries().iter().find(|e| e.hash == *hash) else {
            continue; // Not ours: the node will tell again if it matters.
        };
        let path = plan
            .manifest
            .source(&entry.path)
            .unwrap_or(std::path::Path::new(""));
        let data = tokio::fs::read(path)
            .await
            .map_err(|source| PushError::Read {
                path: path.to_owned(),
                source,
            })?;
        let len = data.len() as u64;
        client.put_blob(*hash, Bytes::from(data)).await?;
        state.blobs_done += 1;
        state.bytes_done += len;
        progress(state);
    }
    Ok(())
}

/// Inserts every row of a deployment (run inside [`Store::write`](crate::store::Store::write)).
/// Inserting the same deployment twice changes nothing.
pub fn insert(conn: &Connection, rows: &DeploymentRows) -> crate::store::Result<()> {
    crate::store::cluster::deployments::insert(conn, &rows.deployment)?;
    crate::store::cluster::deployment_files::insert_many(conn, &rows.files)?;
    for r in &rows.records {
        dns_records::upsert(conn, r)?;
    }
    for f in &rows.functions {
        functions::insert(conn, f)?;
    }
    for t in &rows.transforms {
        transforms::insert(conn, t)?;
    }
    Ok(())
}

/// Makes `deployment` the active one of its domain and points the domain's aliases at it
/// (those of other domains are re-pointed, those no longer listed are removed).
pub fn activate(
    conn: &Connection,
    deployment: &Deployment,
    now_ms: i64,
) -> crate::store::Result<()> {
    let config = DeploymentConfig::decode(&deployment.config).map_err(|e| {
        crate::store::StoreError::Corrupt {
            table: "deployments",
            column: "config",
            reason: e.to_string(),
        }
    })?;
    domains::set_active(conn, &deployment.domain, Some(&deployment.id), now_ms)?;
    aliases::replace_for_domain(conn, &deployment.domain, &config.aliases)?;
    Ok(())
}

/// Stops serving `domain`: deletes its row and its aliases. Its deployments stay until
/// garbage collection (a later `maki sync` declaring it again starts afresh). Returns
/// whether the domain existed.
pub fn remove_domain(conn: &Connection, domain: &str) -> crate::store::Result<bool> {
    aliases::replace_for_domain(conn, domain, &[])?;
    domains::delete(conn, domain)
}

/// The deployment `maki rollback domain [requested]` activates: `requested` when the
/// domain has it, else the newest deployment created before the active one (or the newest
/// when none is active). `deployments` are the domain's, in any order.
pub fn rollback_target<'a>(
    domain: &str,
    deployments: &'a [Deployment],
    active: Option<&str>,
    requested: Option<&str>,
) -> Result<&'a Deployment, DeployError> {
    let mine = || deployments.iter().filter(|d| d.domain == domain);
    if let Some(id) = requested {
        return mine()
            .find(|d| d.id == id)
            .ok_or_else(|| DeployError::UnknownDeployment {
                domain: domain.to_owned(),
                id: id.to_owned(),
            });
    }
    let newest_first =
        |a: &&Deployment, b: &&Deployment| (b.created_ms, &b.id).cmp(&(a.created_ms, &a.id));
    let mut sorted: Vec<&Deployment> = mine().collect();
    sorted.sort_by(newest_first);
    let older = match active.and_then(|id| sorted.iter().position(|d| d.id == id)) {
        Some(i) => sorted.get(i + 1),
        None => sorted.first(),
    };
    older
        .copied()
        .ok_or_else(|| DeployError::NothingToRollBack {
            domain: domain.to_owned(),
        })
}

/// Where the cluster is with one deployment, over the nodes expected to activate it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    /// Nodes serving it.
    pub active: Vec<String>,
    /// Nodes not there yet (no report, pending or fetching).
    pub waiting: Vec<String>,
    /// Nodes that failed, with their error.
    pub failed: Vec<(String, String)>,
}

impl Rollout {
    /// Sorts the reports of `activations` by the `expected` nodes (the healthy ones);
    /// reports from other nodes are ignored.
    pub fn of(activations: &[Activation], expected: &[String]) -> Self {
        let mut rollout = Self::default();
        for node in expected {
            let report = activations.iter().find(|a| &a.node == node);
            match report.map(|a| (&a.status, &a.error)) {
                Some((ActivationStatus::Active, _)) => rollout.active.push(node.clone()),
                Some((ActivationStatus::Failed, error)) => {
                    let error = error.clone().unwrap_or_else(|| "unknown error".into());
                    rollout.failed.push((node.clone(), error));
                }
                _ => rollout.waiting.push(node.clone()),
            }
        }
        rollout
    }

    /// Every expected node serves the deployment.
    pub fn is_complete(&self) -> bool {
        self.waiting.is_empty() && self.failed.is_empty()
    }

    /// Nodes expected.
    pub fn total(&self) -> usize {
        self.active.len() + self.waiting.len() + self.failed.len()
    }
}

impl std::fmt::Display for Rollout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{} nodes activated", self.active.len(), self.total())?;
        if !self.failed.is_empty() {
            write!(f, ", {} failed", self.failed.len())?;
        }
        Ok(())
    }
}

/// The domains the cluster serves that the project no longer declares, sorted: `maki sync`
/// removes them.
pub fn removed_domains<'a>(
    cluster: impl IntoIterator<Item = &'a str>,
    project: &Project,
) -> Vec<String> {
    let declared: BTreeSet<&str> = project.domains.iter().map(|d| d.name.as_str()).collect();
    let gone: BTreeSet<&str> = cluster
        .into_iter()
        .filter(|d| !declared.contains(d))
        .collect();
    gone.into_iter().map(str::to_owned).collect()
}

#[cfg(test)]
mod tests;
