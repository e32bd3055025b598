//! [`MakiattoError`]: every error the SDK returns, for callers that handle them together.

use miette::Diagnostic;

use crate::{
    admin, config, deploy, machine, manifest, nameserver, peer, plan, profile, project, ssh, wit,
};

/// Any error of the Makiatto SDK.
#[derive(Debug, thiserror::Error, Diagnostic)]
#[non_exhaustive]
pub enum MakiattoError {
    /// An admin operation.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Admin(#[from] admin::AdminError),
    /// A call to a node's admin API.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Client(#[from] admin::client::ClientError),
    /// Pushing a deployment.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Push(#[from] deploy::PushError),
    /// makiatto.toml.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Project(#[from] project::ProjectError),
    /// Building a manifest.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Manifest(#[from] manifest::ManifestError),
    /// Planning a deploy.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Plan(#[from] plan::PlanError),
    /// Assembling a deployment.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Deploy(#[from] deploy::DeployError),
    /// The node configuration.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Config(#[from] config::ConfigError),
    /// A profile.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Profile(#[from] profile::ProfileError),
    /// Nameserver instructions.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Nameserver(#[from] nameserver::NameserverError),
    /// External peers.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Peer(#[from] peer::PeerError),
    /// WIT files.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Wit(#[from] wit::WitError),
    /// SSH.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Ssh(#[from] ssh::SshError),
    /// Provisioning.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Machine(#[from] machine::MachineError),
    /// `maki sync` gave up waiting for the nodes to activate a deployment.
    #[error("{domain}: deployment {deployment} is not active everywhere: {rollout}")]
    #[diagnostic(help(
        "nodes still waiting: {waiting}; failed: {failed}. `maki deployments {domain}` lists it; the nodes keep trying"
    ))]
    Rollout {
        /// The domain.
        domain: String,
        /// The deployment.
        deployment: String,
        /// The final count.
        rollout: String,
        /// Nodes not there yet.
        waiting: String,
        /// Nodes that failed, with their errors.
        failed: String,
    },
    /// A local I/O failure outside the cases above (e.g. starting the async runtime).
    #[error("{0}")]
    Io(String),
    /// A command whose backend has not landed yet.
    #[error("`maki {command}` is not available yet")]
    #[diagnostic(help("{delivery}"))]
    NotYet {
        /// The command, e.g. `health`.
        command: &'static str,
        /// Which work delivers it.
        delivery: &'static str,
    },
}
