//! The crate's error type.

use std::path::PathBuf;

/// Everything that can fail in `makiatto-http`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    /// Binding or configuring a listening socket failed.
    #[error("listening on {addr}")]
    Bind {
        /// The address that could not be bound.
        addr: std::net::SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A file could not be read.
    #[error("reading {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A certificate or key could not be parsed or used.
    #[error("certificate: {0}")]
    Certificate(String),
    /// rustls refused a configuration.
    #[error("tls configuration")]
    Tls(#[from] rustls::Error),
    /// The ACME CA or the ACME client reported an error.
    #[error("acme: {0}")]
    Acme(String),
    /// A pluggable store (challenges, account, lease) failed.
    #[error("store: {0}")]
    Store(String),
    /// A configuration value is invalid.
    #[error("configuration: {0}")]
    Config(String),
}

impl From<instant_acme::Error> for HttpError {
    fn from(e: instant_acme::Error) -> Self {
        HttpError::Acme(e.to_string())
    }
}
