//! The server: a UDP fast path on its own threads, our own TCP and DoT listeners on tokio, and
//! hickory-server for DoQ.

use std::{
    net::{SocketAddr, TcpListener, UdpSocket},
    num::NonZeroUsize,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use hickory_proto::op::{Header, HeaderCounts, Message, ResponseCode};
use hickory_server::{
    Server,
    net::{runtime::Time, xfer::Protocol},
    server::{Request, RequestHandler, ResponseHandler, ResponseInfo},
    zone_handler::MessageResponseBuilder,
};
use rustls::server::ResolvesServerCert;

use crate::{
    DnsError, GeoLocator, Nearest, NoLocator, RateLimit, Selector, ZoneHandle,
    rrl::Limiter,
    stream::{ClientCounts, StreamLimits},
    udp::{enable_pktinfo, ignore_path_mtu, udp_loop},
    wire::{Engine, Transport},
};

/// Configures and starts a [`DnsServer`]. Sockets are bound by the caller, so tests can bind
/// `127.0.0.1:0` and an embedder can pass privileged sockets.
pub struct DnsServerBuilder {
    zones: ZoneHandle,
    locator: Arc<dyn GeoLocator>,
    selector: Arc<dyn Selector>,
    cache_entries: u64,
    max_udp_payload: u16,
    udp_threads: NonZeroUsize,
    stream_timeout: Duration,
    stream_io_timeout: Duration,
    max_connections: usize,
    max_connections_per_client: usize,
    rate_limit: Option<RateLimit>,
    udp: Vec<UdpSocket>,
    tcp: Vec<TcpListener>,
    tls: Vec<(TcpListener, Arc<dyn ResolvesServerCert>)>,
    quic: Vec<(UdpSocket, Arc<dyn ResolvesServerCert>)>,
}

impl std::fmt::Debug for DnsServerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsServerBuilder")
            .field("udp", &self.udp)
            .field("tcp", &self.tcp)
            .finish_non_exhaustive()
    }
}

impl DnsServerBuilder {
    /// Where clients are located (default: nowhere, so every answer is "all healthy nodes").
    #[must_use]
    pub fn locator(mut self, locator: Arc<dyn GeoLocator>) -> Self {
        self.locator = locator;
        self
    }

    /// How nodes are chosen (default: [`Nearest`]).
    #[must_use]
    pub fn selector(mut self, selector: Arc<dyn Selector>) -> Self {
        self.selector = selector;
        self
    }

    /// Capacity of the per-prefix (/24, /56) location cache (default 65 536 prefixes).
    #[must_use]
    pub fn geo_cache_entries(mut self, entries: u64) -> Self {
        self.cache_entries = entries;
        self
    }

    /// Largest UDP response we send, whatever the client advertises (default 1232, minimum 512).
    #[must_use]
    pub fn max_udp_payload(mut self, bytes: u16) -> Self {
        self.max_udp_payload = bytes;
        self
    }

    /// Threads answering each UDP socket (default 1; one per core is the most that helps).
    #[must_use]
    pub fn udp_threads(mut self, threads: NonZeroUsize) -> Self {
        self.udp_threads = threads;
        self
    }

    /// Idle and handshake timeout of TCP, DoT and DoQ connections (default 10 s): a guard
    /// against clients holding connections open.
    #[must_use]
    pub fn stream_timeout(mut self, timeout: Duration) -> Self {
        self.stream_timeout = timeout;
        self
    }

    /// How long reading the rest of a started TCP/DoT query, or writing an answer, may take
    /// (default 2 s): a guard against clients trickling bytes.
    #[must_use]
    pub fn stream_io_timeout(mut self, timeout: Duration) -> Self {
        self.stream_io_timeout = timeout;
        self
    }

    /// Open TCP connections per TCP or DoT listener (default 512). A connection over the cap
    /// is accepted and closed at once.
    #[must_use]
    pub fn max_connections(mut self, connections: usize) -> Self {
        self.max_connections = connections;
        self
    }

    /// Open TCP and DoT connections per client (an IPv4 address or an IPv6 /64), over all
    /// listeners (default 16). A
    /// connection over the cap is accepted and closed at once.
    #[must_use]
    pub fn max_connections_per_client(mut self, connections: usize) -> Self {
        self.max_connections_per_client = connections;
        self
    }

    /// Response rate limiting on UDP (default off, as in BIND and Knot): see [`RateLimit`].
    /// TCP, DoT and DoQ are not limited.
    #[must_use]
    pub fn rate_limit(mut self, limit: RateLimit) -> Self {
        self.rate_limit = Some(limit);
        self
    }

    /// Serves plain DNS over this UDP socket. A socket bound to a wildcard address answers
    /// each query from the address it was sent to (Linux).
    #[must_use]
    pub fn udp(mut self, socket: UdpSocket) -> Self {
        self.udp.push(socket);
        self
    }

    /// Serves plain DNS over TCP on this listener.
    #[must_use]
    pub fn tcp(mut self, listener: TcpListener) -> Self {
        self.tcp.push(listener);
        self
    }

    /// Serves DNS-over-TLS (RFC 7858) on this listener with certificates from `certs`.
    #[must_use]
    pub fn tls(mut self, listener: TcpListener, certs: Arc<dyn ResolvesServerCert>) -> Self {
        self.tls.push((listener, certs));
        self
    }

    /// Serves DNS-over-QUIC (RFC 9250) on this UDP socket with certificates from `certs`.
    #[must_use]
    pub fn quic(mut self, socket: UdpSocket, certs: Arc<dyn ResolvesServerCert>) -> Self {
        self.quic.push((socket, certs));
        self
    }

    /// Starts serving. Must be called inside a tokio runtime when TCP, DoT or DoQ are
    /// configured (they run on it); UDP runs on its own threads.
    pub fn start(self) -> Result<DnsServer, DnsError> {
        let engine = Engine::new(
            self.zones,
            self.locator,
            self.selector,
            self.cache_entries,
            self.max_udp_payload,
        );
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let io = |what: &str| {
            let what = what.to_string();
            move |source| DnsError::Io { what, source }
        };
        let runtime = if self.tcp.is_empty() && self.tls.is_empty() && self.quic.is_empty() {
            None
        } else {
            Some(tokio::runtime::Handle::try_current().map_err(|_| {
                DnsError::Server("TCP, DoT and DoQ need a tokio runtime: start() inside one".into())
            })?)
        };
        let limiter = self.rate_limit.map(|r| Arc::new(Limiter::new(r)));
        for socket in self.udp {
            let addr = socket.local_addr().map_err(io("udp socket"))?;
            socket
                .set_read_timeout(Some(Duration::from_millis(100)))
                .map_err(io("udp socket"))?;
            let pktinfo = enable_pktinfo(&socket).map_err(io("udp packet info"))?;
            if let Err(error) = ignore_path_mtu(&socket) {
                // Before Linux 3.15: answers follow path MTU discovery as other sockets do.
                tracing::warn!(%error, %addr, "cannot make the udp socket ignore path MTU");
            }
            for n in 0..self.udp_threads.get() {
                let socket = socket.try_clone().map_err(io("udp socket"))?;
                let engine = engine.clone();
                let stop = stop.clone();
                let limiter = limiter.clone();
                let handle = std::thread::Builder::new()
                    .name(format!("dns-udp-{addr}-{n}"))
                    .spawn(move || {
                        udp_loop(&socket, &engine, &stop, limiter.as_deref(), pktinfo);
                    })
                    .map_err(io("udp thread"))?;
                threads.push(handle);
            }
        }
        let mut streams = tokio::task::JoinSet::new();
        let limits = StreamLimits {
            per_listener: self.max_connections,
            per_client: self.max_connections_per_client,
            idle: self.stream_timeout,
            io: self.stream_io_timeout,
        };
        let clients = Arc::new(ClientCounts::default());
        let mut listeners = Vec::new();
        for listener in self.tcp {
            listeners.push((listener, None));
        }
        for (listener, certs) in self.tls {
            let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|e| DnsError::Server(format!("tls config: {e}")))?
            .with_no_client_auth()
            .with_cert_resolver(certs);
            config.alpn_protocols = vec![b"dot".to_vec()];
            listeners.push((
                listener,
                Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))),
            ));
        }
        if let Some(runtime) = &runtime {
            let _guard = runtime.enter();
            for (listener, tls) in listeners {
                listener.set_nonblocking(true).map_err(io("tcp listener"))?;
                let listener =
                    tokio::net::TcpListener::from_std(listener).map_err(io("tcp listener"))?;
                streams.spawn_on(
                    crate::stream::serve(listener, tls, engine.clone(), limits, clients.clone()),
                    runtime,
                );
            }
        }
        let mut hickory = None;
        if !self.quic.is_empty() {
            let mut server = Server::new(Bridge { engine });
            for (socket, certs) in self.quic {
                socket.set_nonblocking(true).map_err(io("quic socket"))?;
                let socket = tokio::net::UdpSocket::from_std(socket).map_err(io("quic socket"))?;
                server
                    .register_quic_listener(socket, self.stream_timeout, certs)
                    .map_err(io("quic socket"))?;
            }
            hickory = Some(server);
        }
        Ok(DnsServer {
            stop,
            threads,
            streams,
            hickory,
        })
    }
}

/// A running GeoDNS server. Dropping it without [`shutdown`](Self::shutdown) leaves the UDP
/// threads running until the process exits.
pub struct DnsServer {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// The TCP and DoT listeners (each owning its connections).
    streams: tokio::task::JoinSet<()>,
    hickory: Option<Server<Bridge>>,
}

impl std::fmt::Debug for DnsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsServer")
            .field("udp_threads", &self.threads.len())
            .field("stream_listeners", &self.streams.len())
            .field("quic", &self.hickory.is_some())
            .finish_non_exhaustive()
    }
}

impl DnsServer {
    /// A builder serving `zones`.
    pub fn builder(zones: ZoneHandle) -> DnsServerBuilder {
        DnsServerBuilder {
            zones,
            locator: Arc::new(NoLocator),
            selector: Arc::new(Nearest::new()),
            cache_entries: 65_536,
            max_udp_payload: 1232,
            udp_threads: NonZeroUsize::MIN,
            stream_timeout: Duration::from_secs(10),
            stream_io_timeout: Duration::from_secs(2),
            max_connections: 512,
            max_connections_per_client: 16,
            rate_limit: None,
            udp: Vec::new(),
            tcp: Vec::new(),
            tls: Vec::new(),
            quic: Vec::new(),
        }
    }

    /// Stops every listener and waits for the UDP threads and open connections to finish.
    pub async fn shutdown(mut self) -> Result<(), DnsError> {
        self.stop.store(true, Ordering::Relaxed);
        let threads = std::mem::take(&mut self.threads);
        let joined = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        });
        // Aborting a listener drops its connections.
        self.streams.shutdown().await;
        if let Some(mut server) = self.hickory.take() {
            server
                .shutdown_gracefully()
                .await
                .map_err(|e| DnsError::Server(e.to_string()))?;
        }
        joined.await.map_err(|e| DnsError::Server(e.to_string()))
    }
}

/// hickory-server's entry point (DoQ): answers through the same engine as the UDP fast path.
struct Bridge {
    engine: Engine,
}

fn servfail(request: &Request) -> ResponseInfo {
    let mut metadata = request.metadata;
    metadata.response_code = ResponseCode::ServFail;
    ResponseInfo::from(Header {
        metadata,
        counts: HeaderCounts::default(),
    })
}

#[async_trait::async_trait]
impl RequestHandler for Bridge {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let transport = match request.protocol() {
            Protocol::Udp => Transport::Udp,
            _ => Transport::Stream,
        };
        let mut out = Vec::with_capacity(512);
        if !self
            .engine
            .respond(request.as_slice(), request.src().ip(), transport, &mut out)
        {
            return servfail(request);
        }
        let message = match Message::from_vec(&out) {
            Ok(m) => m,
            Err(error) => {
                tracing::warn!(%error, "re-reading our own answer failed");
                return servfail(request);
            }
        };
        let response = MessageResponseBuilder::new(&request.queries, message.edns.as_ref()).build(
            message.metadata,
            message.answers.iter(),
            message.authorities.iter(),
            std::iter::empty(),
            message.additionals.iter(),
        );
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(error) => {
                tracing::debug!(%error, peer = %request.src(), "sending answer failed");
                servfail(request)
            }
        }
    }
}

/// Binds UDP and TCP sockets on `addr` (port 0 picks one free port for both).
pub fn bind_udp_tcp(addr: SocketAddr) -> Result<(UdpSocket, TcpListener), DnsError> {
    let io = |source| DnsError::Io {
        what: format!("binding {addr}"),
        source,
    };
    if addr.port() != 0 {
        return Ok((
            UdpSocket::bind(addr).map_err(io)?,
            TcpListener::bind(addr).map_err(io)?,
        ));
    }
    // Port 0: find a port free for both protocols.
    let mut last = None;
    for _ in 0..32 {
        let udp = UdpSocket::bind(addr).map_err(io)?;
        let port_addr = udp.local_addr().map_err(io)?;
        match TcpListener::bind(port_addr) {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) => last = Some(e),
        }
    }
    Err(io(
        last.unwrap_or_else(|| std::io::Error::other("no free port"))
    ))
}
