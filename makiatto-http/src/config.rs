//! Server configuration.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// Limits and listeners of the web server. Plain data with defaults, readable from a
/// config file.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Plain HTTP listeners (ACME HTTP-01 answers, redirects, hosts without certificate).
    pub http_addrs: Vec<SocketAddr>,
    /// HTTPS listeners.
    pub https_addrs: Vec<SocketAddr>,
    /// Peers whose `X-Forwarded-Host` (and `X-Forwarded-Proto: https`, which skips the
    /// HTTPS redirect) are believed. Empty by default: forwarded headers are ignored.
    pub trusted_proxies: Vec<IpAddr>,
    /// The port written into HTTP → HTTPS redirects; `None` means the default 443.
    pub https_redirect_port: Option<u16>,
    /// Largest request head (request line and headers) accepted; larger gets 431.
    /// HTTP/1 cannot go below 8192.
    pub max_header_bytes: usize,
    /// Time a client has to send a complete request head; slower clients are cut off.
    /// It also bounds how long an idle keep-alive connection stays open.
    pub header_read_timeout_ms: u64,
    /// Time a write may wait for a client that stopped reading before the connection is
    /// dropped.
    pub write_timeout_ms: u64,
    /// Time a client has to complete a TLS handshake.
    pub tls_handshake_timeout_ms: u64,
    /// Concurrent connections over all listeners; connections beyond are closed at once.
    pub max_connections: usize,
    /// HTTP/2 streams per connection.
    pub h2_max_concurrent_streams: u32,
    /// `Strict-Transport-Security` max-age on HTTPS responses; 0 turns the header off.
    pub hsts_max_age_secs: u64,
    /// Memory for cached files and their precompressed variants.
    pub memory_cache_bytes: u64,
    /// Files up to this size are served from memory; larger ones are streamed from disk.
    pub memory_file_max_bytes: u64,
    /// How long a cached file is trusted before its metadata is checked again. A node
    /// serves immutable deployments and can set this high.
    pub revalidate_ms: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            http_addrs: vec![
                SocketAddr::from((Ipv4Addr::UNSPECIFIED, 80)),
                SocketAddr::from((Ipv6Addr::UNSPECIFIED, 80)),
            ],
            https_addrs: vec![
                SocketAddr::from((Ipv4Addr::UNSPECIFIED, 443)),
                SocketAddr::from((Ipv6Addr::UNSPECIFIED, 443)),
            ],
            trusted_proxies: Vec::new(),
            https_redirect_port: None,
            max_header_bytes: 16 * 1024,
            header_read_timeout_ms: 10_000,
            write_timeout_ms: 30_000,
            tls_handshake_timeout_ms: 10_000,
            max_connections: 10_000,
            h2_max_concurrent_streams: 128,
            hsts_max_age_secs: 31_536_000,
            memory_cache_bytes: 256 * 1024 * 1024,
            memory_file_max_bytes: 2 * 1024 * 1024,
            revalidate_ms: 1000,
        }
    }
}

impl ServerConfig {
    pub(crate) fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.header_read_timeout_ms)
    }
    pub(crate) fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.write_timeout_ms)
    }
    pub(crate) fn tls_handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.tls_handshake_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::ServerConfig;

    #[test]
    fn parses_partial_config_and_rejects_typos() {
        let c: ServerConfig = serde_json::from_str(
            r#"{"http_addrs": ["127.0.0.1:8080", "[::1]:8080"], "max_connections": 5, "trusted_proxies": ["10.0.0.1"]}"#,
        )
        .unwrap();
        assert_eq!(c.http_addrs.len(), 2);
        assert_eq!(c.max_connections, 5);
        assert_eq!(c.max_header_bytes, ServerConfig::default().max_header_bytes);
        assert!(serde_json::from_str::<ServerConfig>(r#"{"max_conections": 5}"#).is_err());
    }
}
