//! The crate's error type.

use std::io;

/// What can go wrong in the mesh.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MeshError {
    /// An I/O operation failed.
    #[error("{op}")]
    Io {
        /// What was being done.
        op: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The WireGuard device could not be created or configured.
    #[error("WireGuard device {iface}: {message}")]
    Device {
        /// Interface name.
        iface: String,
        /// What failed.
        message: String,
    },
    /// The UAPI socket answered an error (an errno, as in the WireGuard cross-platform
    /// interface).
    #[error("WireGuard UAPI on {iface} answered errno={errno}")]
    Uapi {
        /// Interface name.
        iface: String,
        /// The errno returned.
        errno: i32,
    },
    /// An external command (`ip`, `nft`) failed.
    #[error("command `{command}` failed: {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Its standard error.
        stderr: String,
    },
    /// A key is not 32 bytes of base64 or hex.
    #[error("invalid WireGuard key: {0}")]
    Key(String),
    /// A configuration value is unusable; the message names it.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The mesh address range has no free address left.
    #[error("no free mesh address in {0}")]
    AddressesExhausted(ipnet::Ipv4Net),
    /// An endpoint host name did not resolve.
    #[error("resolving endpoint {endpoint}")]
    Resolve {
        /// The endpoint as configured.
        endpoint: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] makiatto_store::StoreError),
    /// A peer broke the blob protocol.
    #[error("blob transfer from {peer}: {message}")]
    Blob {
        /// The peer.
        peer: String,
        /// What went wrong.
        message: String,
    },
    /// A membership message could not be handled.
    #[error("membership: {0}")]
    Membership(String),
}

impl MeshError {
    pub(crate) fn io(op: impl Into<String>, source: io::Error) -> Self {
        MeshError::Io {
            op: op.into(),
            source,
        }
    }
}

/// Result with [`MeshError`].
pub type Result<T, E = MeshError> = std::result::Result<T, E>;
