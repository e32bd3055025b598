//! The Makiatto SDK.
//!
//! `makiatto` composes the subsystem crates into a CDN node and holds the library code the
//! `maki` CLI needs. Each subsystem is re-exported as a module so that embedders depend on
//! one crate:
//!
//! | module | crate | what it holds |
//! |---|---|---|
//! | [`store`] | `makiatto-store` | replicated SQLite (cr-sqlite model), cluster schema, blobs |
//! | [`dns`] | `makiatto-dns` | the authoritative GeoDNS server |
//! | [`http`] | `makiatto-http` | the web server, TLS and ACME |
//! | [`mesh`] | `makiatto-mesh` | WireGuard mesh, membership, replication and blob transport |
//!
//! The SDK's own modules:
//!
//! | module | what it holds |
//! |---|---|
//! | [`project`] | `makiatto.toml`: parsing and validation with diagnostics that point into the file |
//! | [`manifest`] | the file manifest of a domain directory (blake3, size, mode), its digest and diffs |
//! | [`admin`] | the admin operations a node offers `maki` (blobs, deployments, rollback), over the store |
//! | [`config`] | the node daemon's configuration file |
//! | [`profile`] | CLI profiles: the machines of a cluster (public data only) |
//! | [`peer`] | external WireGuard peers: checks and the `maki peer wg-config` output |
//! | [`remote`] | the `maki` commands that talk to a node's admin socket |
//! | [`nameserver`] | the `maki dns nameserver-setup` instructions |
//! | [`plan`] | what `maki sync` would deploy (the dry run) |
//! | [`deploy`] | a plan as cluster rows: insert a deployment, activate it, find removed domains |
//! | [`node`] | the running node: store, mesh, DNS, HTTP, deployment activation, admin socket |
//! | [`ssh`] | SSH to the machines (system `ssh`, sudo, checked uploads, socket forwarding) |
//! | [`machine`] | `maki machine …`: provisioning nodes over SSH |
//! | [`health`] | `maki health`: every machine checked over SSH, DNS and HTTP |
//! | [`cli`] | the `maki` command line (the binary only calls [`cli::main`]) |

pub mod admin;
pub mod cli;
pub mod config;
pub mod demo;
pub mod deploy;
mod diag;
mod error;
pub mod health;
pub mod machine;
pub mod manifest;
pub mod nameserver;
pub mod node;
pub mod peer;
pub mod plan;
pub mod profile;
pub mod project;
pub mod remote;
pub mod ssh;
pub mod wit;

pub use diag::{InvalidFile, Problem};
pub use error::MakiattoError;
pub use makiatto_dns as dns;
pub use makiatto_http as http;
pub use makiatto_mesh as mesh;
pub use makiatto_store as store;

/// The version of this build, shared by the `maki` CLI and the `makiatto` daemon.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
