//! Makiatto's web server: static sites over HTTP/1.1 and HTTP/2, TLS with SNI, and
//! certificates over ACME.
//!
//! The server is [`HttpServer`]. What it serves comes from pluggable traits, so a node
//! plugs in its replicated store while tests and standalone use take the in-memory
//! versions:
//!
//! | trait | answers | in-memory version |
//! |---|---|---|
//! | [`SiteResolver`] | host → site root and settings | [`StaticSites`] |
//! | [`CertSource`] | SNI → certificate | [`MemoryCerts`] |
//! | [`ChallengeStore`] | ACME HTTP-01 / DNS-01 answers | [`MemoryChallenges`] |
//! | [`acme::AcmeAccountStore`] | the cluster's ACME account | [`acme::MemoryAccountStore`], [`acme::FileAccountStore`] |
//! | [`acme::Lease`] | one certificate orderer at a time | [`acme::LocalLease`] |
//! | [`acme::DnsChallenge`] | DNS-01 TXT publishing | [`acme::NoDns`] |
//!
//! The standalone example is `examples/static_site.rs`.

mod challenge;
mod config;
mod error;
mod fast;
mod files;
mod host;
mod path;
mod serve;
mod server;
mod site;
mod timeout_io;
mod tls;

pub mod acme;

pub use challenge::{ChallengeStore, MemoryChallenges};
pub use config::ServerConfig;
pub use error::HttpError;
pub use host::normalize_host;
pub use path::{SafePath, sanitize};
pub use server::{HttpServer, bind};
pub use site::{Site, SiteResolver, SiteSettings, StaticSites};
pub use tls::{CertSource, Certificate, MemoryCerts, server_config};
