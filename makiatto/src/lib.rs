//! The Makiatto SDK.
//!
//! `makiatto` composes the subsystem crates into a CDN node and holds the library code the
//! `maki` CLI needs. Each subsystem is re-exported as a module so that embedders depend on
//! one crate:
//!
//! | module | crate | what it holds |
//! |---|---|---|
//! | [`store`] | `makiatto-store` | replicated SQLite (cr-sqlite model), cluster schema, blobs |
//! | [`dns`] | `makiatto-dns` | GeoDNS authority (placeholder) |
//! | [`mesh`] | `makiatto-mesh` | WireGuard mesh and membership (placeholder) |
//! | [`http`] | `makiatto-http` | web server and ACME (placeholder) |
//!
//! The `Node` type, node configuration, deploy client, profiles and provisioning arrive with
//! issues 6 and 7.

pub use makiatto_dns as dns;
pub use makiatto_http as http;
pub use makiatto_mesh as mesh;
pub use makiatto_store as store;

/// The version of this build, shared by the `maki` CLI and the `makiatto` daemon.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
