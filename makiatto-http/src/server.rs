//! Listeners and connections: limits, TLS, HTTP/1.1 and HTTP/2.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::HttpError;
use crate::challenge::ChallengeStore;
use crate::config::ServerConfig;
use crate::fast::{End, FastConn, RawTcp, Rewind};
use crate::files::{FileCache, FileCacheConfig};
use crate::serve::{Shared, TlsSni, TrustedProxy, router};
use crate::site::SiteResolver;
use crate::timeout_io::{FirstByteDeadline, WriteTimeout};
use crate::tls::{CertSource, server_config};

/// The web server of a node: plain HTTP and HTTPS listeners sharing one connection limit.
#[derive(Clone)]
pub struct HttpServer {
    shared: Arc<Shared>,
    cfg: Arc<ServerConfig>,
    tls: TlsAcceptor,
    conns: Arc<Semaphore>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    tracker: TaskTracker,
}

impl std::fmt::Debug for HttpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpServer")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl HttpServer {
    /// A server answering for the sites of `sites` with certificates from `certs` and
    /// ACME HTTP-01 answers from `challenges`.
    pub fn new(
        cfg: ServerConfig,
        sites: Arc<dyn SiteResolver>,
        certs: Arc<dyn CertSource>,
        challenges: Arc<dyn ChallengeStore>,
    ) -> Result<Self, HttpError> {
        if cfg.max_connections == 0 {
            return Err(HttpError::Config(
                "max_connections must be at least 1".into(),
            ));
        }
        let files = Arc::new(FileCache::new(FileCacheConfig {
            memory_bytes: cfg.memory_cache_bytes,
            memory_file_max_bytes: cfg.memory_file_max_bytes,
            revalidate_after: Duration::from_millis(cfg.revalidate_ms),
            negative_entries: cfg.negative_cache_entries,
            negative_bytes: cfg.negative_cache_bytes,
            sendfile_min_bytes: cfg.sendfile_min_bytes,
            sendfile_max_bytes: cfg.sendfile_max_bytes,
        }));
        let hsts = (cfg.hsts_max_age_secs > 0)
            .then(|| {
                http::HeaderValue::from_str(&format!("max-age={}", cfg.hsts_max_age_secs)).ok()
            })
            .flatten();
        let tls = TlsAcceptor::from(server_config(Arc::clone(&certs))?);
        let shared = Arc::new(Shared {
            sites,
            certs,
            challenges,
            files,
            hsts,
            https_port: cfg.https_redirect_port,
            fast_answers: std::sync::atomic::AtomicU64::new(0),
        });
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(cfg.header_read_timeout())
            .max_buf_size(cfg.max_header_bytes.max(8192));
        if cfg.h2_stream_window_bytes < 65_535 || cfg.h2_connection_window_bytes < 65_535 {
            return Err(HttpError::Config(
                "HTTP/2 windows must be at least 65535 bytes".into(),
            ));
        }
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(cfg.max_header_bytes).unwrap_or(u32::MAX))
            .max_concurrent_streams(cfg.h2_max_concurrent_streams)
            .initial_stream_window_size(cfg.h2_stream_window_bytes)
            .initial_connection_window_size(cfg.h2_connection_window_bytes)
            .adaptive_window(false)
            .max_send_buf_size(cfg.h2_max_send_buf_bytes)
            .max_pending_accept_reset_streams(cfg.h2_max_pending_accept_reset_streams)
            .max_local_error_reset_streams(cfg.h2_max_local_error_reset_streams)
            .keep_alive_interval(
                (cfg.h2_keep_alive_interval_ms > 0)
                    .then(|| Duration::from_millis(cfg.h2_keep_alive_interval_ms)),
            )
            .keep_alive_timeout(Duration::from_millis(cfg.h2_keep_alive_timeout_ms));
        Ok(HttpServer {
            conns: Arc::new(Semaphore::new(cfg.max_connections)),
            cfg: Arc::new(cfg),
            shared,
            tls,
            builder: Arc::new(builder),
            tracker: TaskTracker::new(),
        })
    }

    /// The axum router used for plain HTTP (`https == false`) or HTTPS, for embedding
    /// into another server.
    pub fn router(&self, https: bool) -> axum::Router {
        router(Arc::clone(&self.shared), https)
    }

    /// Binds every listener of the configuration and serves until `shutdown`, then waits
    /// for open connections to finish.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<(), HttpError> {
        let mut tasks = Vec::new();
        for (addrs, https) in [(&self.cfg.http_addrs, false), (&self.cfg.https_addrs, true)] {
            for addr in addrs {
                let l = bind(*addr)?;
                let this = self.clone();
                let token = shutdown.clone();
                tasks.push(tokio::spawn(async move {
                    if https {
                        this.serve_https(l, token).await;
                    } else {
                        this.serve_http(l, token).await;
                    }
                }));
            }
        }
        for t in tasks {
            let _ = t.await;
        }
        self.drain(Duration::from_secs(10)).await;
        Ok(())
    }

    /// Serves plain HTTP on `listener` until `shutdown`.
    pub async fn serve_http(&self, listener: TcpListener, shutdown: CancellationToken) {
        self.accept_loop(listener, false, shutdown).await;
    }

    /// Serves HTTPS on `listener` until `shutdown`.
    pub async fn serve_https(&self, listener: TcpListener, shutdown: CancellationToken) {
        self.accept_loop(listener, true, shutdown).await;
    }

    /// How many requests the HTTP/1.1 fast path answered so far.
    pub fn fast_path_answers(&self) -> u64 {
        self.shared
            .fast_answers
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits up to `limit` for open connections to end after a shutdown.
    pub async fn drain(&self, limit: Duration) {
        self.tracker.close();
        let _ = tokio::time::timeout(limit, self.tracker.wait()).await;
    }

    async fn accept_loop(&self, listener: TcpListener, https: bool, shutdown: CancellationToken) {
        let app = router(Arc::clone(&self.shared), https);
        loop {
            let (stream, peer) = tokio::select! {
                () = shutdown.cancelled() => break,
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // EMFILE and friends: back off briefly instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                },
            };
            let Ok(permit) = Arc::clone(&self.conns).try_acquire_owned() else {
                tracing::debug!(%peer, "connection limit reached, closing");
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            let this = self.clone();
            let app = app.clone();
            let token = shutdown.clone();
            self.tracker.spawn(async move {
                let _permit = permit;
                if https {
                    let stream = WriteTimeout::new(stream, this.cfg.write_timeout());
                    let hs = tokio::time::timeout(
                        this.cfg.tls_handshake_timeout(),
                        this.tls.accept(stream),
                    )
                    .await;
                    match hs {
                        Ok(Ok(tls)) => {
                            let conn = tls.get_ref().1;
                            let sni = conn.server_name().map(|s| TlsSni(Arc::from(s)));
                            let h1 = conn.alpn_protocol().is_none_or(|p| p == b"http/1.1");
                            let proxy = this.trusted(peer);
                            let tls = FirstByteDeadline::new(tls, this.cfg.header_read_timeout());
                            let fast = h1.then_some(Scheme::Https);
                            this.serve_conn(tls, app, sni, proxy, fast, token).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "tls handshake failed"),
                        Err(_) => tracing::debug!(%peer, "tls handshake timed out"),
                    }
                } else {
                    let proxy = this.trusted(peer);
                    let stream = WriteTimeout::new(stream, this.cfg.write_timeout());
                    let stream = FirstByteDeadline::new(stream, this.cfg.header_read_timeout());
                    this.serve_conn(stream, app, None, proxy, Some(Scheme::Http), token)
                        .await;
                }
            });
        }
    }

    fn trusted(&self, peer: SocketAddr) -> Option<TrustedProxy> {
        let ip = peer.ip().to_canonical();
        self.cfg
            .trusted_proxies
            .contains(&ip)
            .then_some(TrustedProxy)
    }

    async fn serve_conn<S>(
        &self,
        io: S,
        app: axum::Router,
        sni: Option<TlsSni>,
        proxy: Option<TrustedProxy>,
        fast: Option<Scheme>,
        shutdown: CancellationToken,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static + RawTcp,
    {
        let mut io = Rewind::new(io);
        // Forwarded headers from a trusted proxy are the router's business.
        if let Some(scheme) = fast
            && self.cfg.fast_path
            && proxy.is_none()
        {
            let fast = FastConn {
                shared: &self.shared,
                https: scheme == Scheme::Https,
                sni: sni.as_ref().map(|s| &*s.0),
                max_head: self.cfg.max_header_bytes.max(8192),
                head_timeout: self.cfg.header_read_timeout(),
                write_timeout: self.cfg.write_timeout(),
            };
            match fast.serve(io.inner_mut(), &shutdown).await {
                End::Closed => return,
                End::Handoff(rest) => io.rewind(rest),
            }
        }
        // Every request of a TLS connection carries the handshake's server name, so the
        // handler can refuse a Host that the connection's certificate does not cover.
        // Each request counts as in flight until its response body is done or dropped.
        let activity = Arc::new(Activity::new());
        let act = Arc::clone(&activity);
        let svc =
            hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
                if let Some(s) = &sni {
                    req.extensions_mut().insert(s.clone());
                }
                if let Some(p) = proxy {
                    req.extensions_mut().insert(p);
                }
                let guard = InFlight::new(Arc::clone(&act));
                let mut app = app.clone();
                let fut = tower_service::Service::call(&mut app, req);
                async move {
                    let res = fut.await?;
                    Ok::<_, std::convert::Infallible>(
                        res.map(|body| Tracked { inner: body, guard }),
                    )
                }
            });
        let conn = self.builder.serve_connection(TokioIo::new(io), svc);
        tokio::pin!(conn);
        let idle = self.cfg.idle_timeout();
        loop {
            let check = idle.map(|idle| activity.idle_deadline(idle));
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::trace!(error = %e, "connection ended with an error");
                    }
                    return;
                }
                () = shutdown.cancelled() => break,
                () = sleep_until_or_forever(check) => {
                    if idle.is_some_and(|idle| activity.idle_for(idle)) {
                        tracing::trace!("idle connection closed");
                        break;
                    }
                }
            }
        }
        conn.as_mut().graceful_shutdown();
        // Streams still in flight get a short grace; a stalled one would hold it forever.
        let grace = idle
            .unwrap_or(Duration::from_secs(10))
            .min(Duration::from_secs(10));
        let _ = tokio::time::timeout(grace, conn).await;
    }
}

/// Which listener a connection that may take the HTTP/1.1 fast path came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Http,
    Https,
}

/// Requests in flight on one connection, and when anything last moved: a request began or
/// ended, or a response body gave a frame. A client that stops reading (over HTTP/2: never
/// sends WINDOW_UPDATE while answering PINGs) stalls every body, so a connection with
/// requests in flight but no progress for the idle timeout is closed too.
struct Activity {
    last: std::sync::Mutex<tokio::time::Instant>,
}

impl Activity {
    fn new() -> Self {
        Activity {
            last: std::sync::Mutex::new(tokio::time::Instant::now()),
        }
    }

    fn last(&self) -> tokio::time::Instant {
        *self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn touch(&self) {
        *self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = tokio::time::Instant::now();
    }

    /// When to look again: `idle` after the last progress.
    fn idle_deadline(&self, idle: Duration) -> tokio::time::Instant {
        (self.last() + idle).max(tokio::time::Instant::now())
    }

    /// Whether nothing moved for `idle`: no request, or none of those in flight advanced.
    fn idle_for(&self, idle: Duration) -> bool {
        self.last().elapsed() >= idle
    }
}

/// One request in flight; dropped with its response body.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn new(a: Arc<Activity>) -> Self {
        a.touch();
        InFlight(a)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
    }
}

/// A response body that keeps its request counted as in flight until it is dropped.
struct Tracked {
    inner: axum::body::Body,
    guard: InFlight,
}

impl http_body::Body for Tracked {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, std::task::Poll::Ready(Some(Ok(_)))) {
            self.guard.0.touch();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

async fn sleep_until_or_forever(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Binds a listener the way a server should: `SO_REUSEADDR`, IPv6 sockets IPv6-only (so
/// `0.0.0.0` and `::` can both be bound), a deep backlog.
pub fn bind(addr: SocketAddr) -> Result<TcpListener, HttpError> {
    let err = |source| HttpError::Bind { addr, source };
    let domain = socket2::Domain::for_address(addr);
    let s = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))
        .map_err(err)?;
    s.set_reuse_address(true).map_err(err)?;
    if addr.is_ipv6() {
        s.set_only_v6(true).map_err(err)?;
    }
    s.set_nonblocking(true).map_err(err)?;
    s.bind(&addr.into()).map_err(err)?;
    s.listen(4096).map_err(err)?;
    TcpListener::from_std(std::net::TcpListener::from(s)).map_err(err)
}
