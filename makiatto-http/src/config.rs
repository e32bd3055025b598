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
    /// A connection with no request in flight for this long is closed (HTTP/2: GOAWAY,
    /// then close; HTTP/1.1: close). 0 keeps idle connections open.
    pub idle_timeout_ms: u64,
    /// HTTP/2 streams per connection (`SETTINGS_MAX_CONCURRENT_STREAMS`).
    pub h2_max_concurrent_streams: u32,
    /// HTTP/2 receive window per stream (`SETTINGS_INITIAL_WINDOW_SIZE`): request body
    /// bytes a client may send on a stream before we read them.
    pub h2_stream_window_bytes: u32,
    /// HTTP/2 receive window of the whole connection: request body bytes a client may have
    /// in flight over all its streams.
    pub h2_connection_window_bytes: u32,
    /// Response bytes buffered per HTTP/2 stream beyond what the client's window lets us
    /// send. With `h2_max_concurrent_streams` it bounds what one connection that stops
    /// reading can make us hold: streams × this.
    pub h2_max_send_buf_bytes: usize,
    /// Streams a client may reset before the server accepted them, before the connection
    /// is closed (rapid-reset floods).
    pub h2_max_pending_accept_reset_streams: usize,
    /// Streams the server may reset because of client protocol errors before the
    /// connection is closed.
    pub h2_max_local_error_reset_streams: usize,
    /// Interval of HTTP/2 PINGs that detect a dead peer; 0 sends none.
    pub h2_keep_alive_interval_ms: u64,
    /// Time a PING may go unanswered before the connection is closed.
    pub h2_keep_alive_timeout_ms: u64,
    /// `Strict-Transport-Security` max-age on HTTPS responses; 0 turns the header off.
    pub hsts_max_age_secs: u64,
    /// Memory for cached files and their precompressed variants.
    pub memory_cache_bytes: u64,
    /// Files up to this size are served from memory; larger ones are streamed from disk.
    pub memory_file_max_bytes: u64,
    /// How long a cached file is trusted before its metadata is checked again. A node
    /// serves immutable deployments and can set this high.
    pub revalidate_ms: u64,
    /// Request paths remembered as missing (per deployment root, rechecked after
    /// `revalidate_ms`), kept apart from the file cache so that a flood of missing paths
    /// cannot evict files. Sites with a manifest need none: a path absent from the
    /// manifest is missing without a file system call. This is the number expected (it
    /// sizes the table); the memory they take is bounded by `negative_cache_bytes`.
    pub negative_cache_entries: usize,
    /// Memory for the paths remembered as missing: each counts its key (deployment root
    /// and path) plus 64 bytes, so long random paths cannot take more than this.
    pub negative_cache_bytes: u64,
    /// Answer plain HTTP/1.1 GET/HEAD requests for files held in memory without going
    /// through hyper (see the crate README). `false` sends every request through hyper;
    /// the answers are the same either way.
    pub fast_path: bool,
    /// Bodies held in memory from this size to `sendfile_max_bytes` are also kept in a
    /// sealed in-memory file (`memfd_create`, one file descriptor each, at most 256 at
    /// once) that the fast path sends with `sendfile` on plain HTTP: the socket then takes
    /// the same pages for every answer instead of a fresh copy of the bytes. `u64::MAX`
    /// turns it off.
    pub sendfile_min_bytes: u64,
    /// Largest body sent with `sendfile` (see `sendfile_min_bytes`): over loopback it
    /// gains 20-30 % from 64 to 250 KB and is 3x slower than a write from memory from
    /// about 600 KB on (BENCHMARKS.md).
    pub sendfile_max_bytes: u64,
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
            idle_timeout_ms: 60_000,
            h2_max_concurrent_streams: 100,
            h2_stream_window_bytes: 64 * 1024,
            h2_connection_window_bytes: 256 * 1024,
            h2_max_send_buf_bytes: 64 * 1024,
            h2_max_pending_accept_reset_streams: 20,
            h2_max_local_error_reset_streams: 256,
            h2_keep_alive_interval_ms: 30_000,
            h2_keep_alive_timeout_ms: 20_000,
            hsts_max_age_secs: 31_536_000,
            memory_cache_bytes: 256 * 1024 * 1024,
            memory_file_max_bytes: 2 * 1024 * 1024,
            revalidate_ms: 1000,
            negative_cache_entries: 65_536,
            negative_cache_bytes: 16 * 1024 * 1024,
            fast_path: true,
            sendfile_min_bytes: 64 * 1024,
            sendfile_max_bytes: 256 * 1024,
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
    pub(crate) fn idle_timeout(&self) -> Option<Duration> {
        (self.idle_timeout_ms > 0).then(|| Duration::from_millis(self.idle_timeout_ms))
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
