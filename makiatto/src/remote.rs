//! Blocking front of the admin client for the `maki` commands that talk to a node:
//! `sync`, `deployments`, `rollback` and `peer`. Each returns the text to print.
//!
//! The socket is the node's admin socket: reached directly on the node (or in the local
//! demo), or the local end of an SSH forward.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use crate::MakiattoError;
use crate::admin::NewPeer;
use crate::admin::client::Client;
use crate::deploy::{self, UploadProgress};
use crate::plan::{Plan, human_bytes};
use crate::store::cluster::new_id;

/// How long `maki sync` waits for every healthy node to activate a deployment.
pub const SYNC_WAIT: Duration = Duration::from_secs(120);

/// A node reached through its admin socket.
#[derive(Debug)]
pub struct Remote {
    client: Client,
    /// The SSH connection carrying the forwarded socket, when reached over SSH.
    link: Option<crate::machine::AdminLink>,
    runtime: tokio::runtime::Runtime,
}

impl Drop for Remote {
    fn drop(&mut self) {
        if let Some(link) = self.link.take() {
            self.runtime.block_on(link.close());
        }
    }
}

impl Remote {
    /// A node behind the admin socket at `socket` (nothing is sent until a call).
    pub fn new(socket: &Path) -> Result<Self, MakiattoError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| MakiattoError::Io(e.to_string()))?;
        Ok(Self {
            client: Client::new(socket),
            link: None,
            runtime,
        })
    }

    /// The first machine of `profile` whose admin API answers over SSH (`key`: the SSH
    /// private key, else the agent and default keys).
    pub fn over_ssh(
        profile: &crate::profile::Profile,
        key: Option<&Path>,
    ) -> Result<Self, MakiattoError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| MakiattoError::Io(e.to_string()))?;
        let machines: Vec<_> = profile.machines.iter().collect();
        let (_, link) = runtime.block_on(crate::machine::first_reachable(&machines, key))?;
        Ok(Self {
            client: link.client.clone(),
            link: Some(link),
            runtime,
        })
    }

    /// Deploys every domain of `plan`, waits until every healthy node serves each, and
    /// removes the cluster's domains that `plan` no longer has; `progress` gets the domain
    /// and its upload progress.
    pub fn sync(
        &self,
        plan: &Plan,
        created_by: &str,
        progress: &(dyn Fn(&str, UploadProgress) + Sync),
    ) -> Result<String, MakiattoError> {
        let mut out = String::new();
        for d in &plan.domains {
            let now = now_ms();
            let id = new_id(now);
            let name = d.domain.name.as_str();
            let rows = self.runtime.block_on(deploy::push(
                &self.client,
                d,
                &id,
                now,
                created_by,
                &|p| progress(name, p),
            ))?;
            let rollout = self
                .runtime
                .block_on(self.wait_active(name, &rows.deployment.id))?;
            let _ = writeln!(
                out,
                "{name}: deployment {} created ({} files), {rollout}",
                rows.deployment.id,
                rows.files.len()
            );
        }
        // What disappeared from makiatto.toml disappears from the cluster.
        let cluster = self.runtime.block_on(self.client.domains())?;
        for gone in cluster
            .iter()
            .filter(|c| !plan.domains.iter().any(|d| &d.domain.name == *c))
        {
            self.runtime.block_on(self.client.remove_domain(gone))?;
            let _ = writeln!(out, "{gone}: removed (no longer in the project)");
        }
        Ok(out)
    }

    /// Waits until every healthy node serves `deployment`, at most [`SYNC_WAIT`].
    async fn wait_active(
        &self,
        domain: &str,
        deployment: &str,
    ) -> Result<deploy::Rollout, MakiattoError> {
        let deadline = tokio::time::Instant::now() + SYNC_WAIT;
        loop {
            let rollout = self.client.rollout(deployment).await?;
            if rollout.is_complete() {
                return Ok(rollout);
            }
            if tokio::time::Instant::now() >= deadline || !rollout.failed.is_empty() {
                let failed: Vec<String> = rollout
                    .failed
                    .iter()
                    .map(|(n, e)| format!("{n} ({e})"))
                    .collect();
                return Err(MakiattoError::Rollout {
                    domain: domain.to_owned(),
                    deployment: deployment.to_owned(),
                    rollout: rollout.to_string(),
                    waiting: none_or(&rollout.waiting.join(", ")),
                    failed: none_or(&failed.join(", ")),
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// `maki deployments <domain>`: a table, newest first.
    pub fn deployments(&self, domain: &str) -> Result<String, MakiattoError> {
        let list = self.runtime.block_on(self.client.deployments(domain))?;
        if list.is_empty() {
            return Ok(format!("{domain} has no deployments\n"));
        }
        let mut out =
            String::from("  ID                                CREATED (unix ms)  FILES  SIZE\n");
        for d in list {
            let mark = if d.active { '*' } else { ' ' };
            let _ = writeln!(
                out,
                "{mark} {:<32}  {:<17}  {:<5}  {}",
                d.id,
                d.created_ms,
                d.files,
                human_bytes(d.bytes)
            );
        }
        Ok(out)
    }

    /// `maki rollback <domain> [deployment]`.
    pub fn rollback(
        &self,
        domain: &str,
        deployment: Option<&str>,
    ) -> Result<String, MakiattoError> {
        let active = self
            .runtime
            .block_on(self.client.rollback(domain, deployment))?;
        Ok(format!("{domain}: deployment {active} is active\n"))
    }

    /// `maki peer add`: `wg_address` `None` takes the lowest free mesh address.
    pub fn add_peer(
        &self,
        name: &str,
        wg_public_key: &str,
        endpoint: &str,
        wg_address: Option<Ipv4Addr>,
    ) -> Result<String, MakiattoError> {
        let peer = NewPeer {
            name: name.to_owned(),
            wg_public_key: wg_public_key.to_owned(),
            endpoint: Some(endpoint.to_owned()),
            wg_address,
        };
        let added = self.runtime.block_on(self.client.add_peer(&peer))?;
        Ok(format!(
            "peer {} added with mesh address {}\n",
            added.name, added.mesh_address
        ))
    }

    /// `maki peer list`.
    pub fn peers(&self) -> Result<String, MakiattoError> {
        let mut out = String::new();
        for p in self.runtime.block_on(self.client.peers())? {
            let _ = writeln!(
                out,
                "{}  {}  {}",
                p.name,
                p.mesh_address,
                p.endpoint.as_deref().unwrap_or("-")
            );
        }
        Ok(out)
    }

    /// `maki peer remove`.
    pub fn remove_peer(&self, name: &str) -> Result<String, MakiattoError> {
        self.runtime.block_on(self.client.remove_peer(name))?;
        Ok(format!("peer {name} removed\n"))
    }

    /// `maki peer wg-config`.
    pub fn wg_config(&self, name: &str) -> Result<String, MakiattoError> {
        Ok(self.runtime.block_on(self.client.wg_config(name))?)
    }
}

fn none_or(list: &str) -> String {
    if list.is_empty() {
        "none".into()
    } else {
        list.to_owned()
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
