//! The crate's error type.

use std::{io, path::PathBuf};

/// Everything that can fail while loading zones, opening a GeoIP database or starting the server.
///
/// Bad network input never produces a `DnsError`: it is answered with FORMERR, NOTIMP or REFUSED.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DnsError {
    /// A zone file could not be read.
    #[error("reading zone file {path}")]
    ReadZone {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A zone file is not valid TOML or does not match the schema.
    #[error("parsing zone file {path}")]
    ParseZone {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: Box<toml::de::Error>,
    },
    /// A zone's content is inconsistent; the message names the zone, name and record to fix.
    #[error("zone {domain}: {message}")]
    InvalidZone {
        /// The zone apex.
        domain: String,
        /// What is wrong.
        message: String,
    },
    /// A domain is not served by this server.
    #[error("domain {0} is not a zone served here")]
    UnknownZone(String),
    /// The GeoIP database could not be opened or read.
    #[error("opening GeoIP database {path}")]
    Geo {
        /// The database file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: maxminddb::MaxMindDbError,
    },
    /// A socket could not be set up.
    #[error("setting up {what}")]
    Io {
        /// Which socket or listener.
        what: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The hickory server failed.
    #[error("dns server: {0}")]
    Server(String),
}
