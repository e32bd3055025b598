//! The server: a UDP fast path on its own threads, and hickory-server for TCP, DoT and DoQ.

use std::{
    io::ErrorKind,
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
    DnsError, GeoLocator, Nearest, NoLocator, Selector, ZoneHandle,
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

    /// Serves plain DNS over this UDP socket.
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
    /// configured (hickory-server runs on it); UDP runs on its own threads.
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
        for socket in self.udp {
            let addr = socket.local_addr().map_err(io("udp socket"))?;
            socket
                .set_read_timeout(Some(Duration::from_millis(100)))
                .map_err(io("udp socket"))?;
            for n in 0..self.udp_threads.get() {
                let socket = socket.try_clone().map_err(io("udp socket"))?;
                let engine = engine.clone();
                let stop = stop.clone();
                let handle = std::thread::Builder::new()
                    .name(format!("dns-udp-{addr}-{n}"))
                    .spawn(move || udp_loop(&socket, &engine, &stop))
                    .map_err(io("udp thread"))?;
                threads.push(handle);
            }
        }
        let mut hickory = None;
        if !(self.tcp.is_empty() && self.tls.is_empty() && self.quic.is_empty()) {
            let mut server = Server::new(Bridge { engine });
            for listener in self.tcp {
                listener.set_nonblocking(true).map_err(io("tcp listener"))?;
                let listener =
                    tokio::net::TcpListener::from_std(listener).map_err(io("tcp listener"))?;
                server.register_listener(listener, self.stream_timeout, 64);
            }
            for (listener, certs) in self.tls {
                listener.set_nonblocking(true).map_err(io("tls listener"))?;
                let listener =
                    tokio::net::TcpListener::from_std(listener).map_err(io("tls listener"))?;
                server
                    .register_tls_listener(listener, self.stream_timeout, certs)
                    .map_err(io("tls listener"))?;
            }
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
            hickory,
        })
    }
}

#[cfg(not(target_os = "linux"))]
fn udp_loop(socket: &UdpSocket, engine: &Engine, stop: &AtomicBool) {
    let mut buf = [0u8; 4096];
    let mut out = Vec::with_capacity(4096);
    while !stop.load(Ordering::Relaxed) {
        match socket.recv_from(&mut buf) {
            Ok((n, src)) => {
                if src.port() == 0 {
                    continue;
                }
                if engine.respond(&buf[..n], src.ip(), Transport::Udp, &mut out)
                    && let Err(error) = socket.send_to(&out, src)
                {
                    tracing::debug!(%error, peer = %src, "udp send failed");
                }
            }
            Err(e) if is_timeout(&e) => {}
            Err(error) => tracing::debug!(%error, "udp receive failed"),
        }
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
    )
}

/// Queries received and answers sent per system call on Linux.
#[cfg(target_os = "linux")]
const BATCH: usize = 32;

/// The UDP fast path on Linux: `recvmmsg` (waiting for the first datagram, then taking what is
/// queued, up to [`BATCH`]) and one `sendmmsg` for all the answers.
#[cfg(target_os = "linux")]
fn udp_loop(socket: &UdpSocket, engine: &Engine, stop: &AtomicBool) {
    use std::{
        io::{IoSlice, IoSliceMut},
        os::fd::AsRawFd,
    };

    use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, sendmmsg};

    let fd = socket.as_raw_fd();
    let mut recv_headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
    let mut send_headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
    let mut bufs = vec![[0u8; 4096]; BATCH];
    let mut outs: Vec<Vec<u8>> = (0..BATCH).map(|_| Vec::with_capacity(1232)).collect();
    let mut received: Vec<(usize, Option<SockaddrStorage>)> = Vec::with_capacity(BATCH);
    let mut replies: Vec<usize> = Vec::with_capacity(BATCH);
    let mut addrs: Vec<Option<SockaddrStorage>> = Vec::with_capacity(BATCH);
    while !stop.load(Ordering::Relaxed) {
        received.clear();
        {
            let mut iovs: Vec<[IoSliceMut<'_>; 1]> =
                bufs.iter_mut().map(|b| [IoSliceMut::new(b)]).collect();
            match recvmmsg(
                fd,
                &mut recv_headers,
                iovs.iter_mut(),
                MsgFlags::MSG_WAITFORONE,
                None,
            ) {
                Ok(results) => {
                    for msg in results {
                        let truncated = msg.flags.contains(MsgFlags::MSG_TRUNC);
                        received.push((if truncated { 0 } else { msg.bytes }, msg.address));
                    }
                }
                Err(errno) => {
                    let e = std::io::Error::from(errno);
                    if !is_timeout(&e) {
                        tracing::debug!(error = %e, "udp receive failed");
                    }
                    continue;
                }
            }
        }
        replies.clear();
        addrs.clear();
        for (i, (len, addr)) in received.iter().enumerate() {
            let Some(addr) = addr else { continue };
            let ip = if let Some(v4) = addr.as_sockaddr_in() {
                if v4.port() == 0 {
                    continue;
                }
                std::net::IpAddr::V4(v4.ip())
            } else if let Some(v6) = addr.as_sockaddr_in6() {
                if v6.port() == 0 {
                    continue;
                }
                std::net::IpAddr::V6(v6.ip())
            } else {
                continue;
            };
            if *len >= 12 && engine.respond(&bufs[i][..*len], ip, Transport::Udp, &mut outs[i]) {
                replies.push(i);
                addrs.push(Some(*addr));
            }
        }
        if replies.is_empty() {
            continue;
        }
        let slices: Vec<[IoSlice<'_>; 1]> =
            replies.iter().map(|&i| [IoSlice::new(&outs[i])]).collect();
        let sent = match sendmmsg(
            fd,
            &mut send_headers,
            slices.iter(),
            &addrs,
            [],
            MsgFlags::empty(),
        ) {
            Ok(results) => results.count(),
            Err(errno) => {
                tracing::debug!(error = %std::io::Error::from(errno), "udp send failed");
                0
            }
        };
        // Whatever sendmmsg did not take goes out one by one.
        for (k, &i) in replies.iter().enumerate().skip(sent) {
            let Some(addr) = addrs[k].as_ref().and_then(to_std) else {
                continue;
            };
            if let Err(error) = socket.send_to(&outs[i], addr) {
                tracing::debug!(%error, peer = %addr, "udp send failed");
            }
        }
    }
}

#[cfg(target_os = "linux")]
fn to_std(addr: &nix::sys::socket::SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = addr.as_sockaddr_in() {
        return Some(SocketAddr::from((v4.ip(), v4.port())));
    }
    addr.as_sockaddr_in6()
        .map(|v6| SocketAddr::from((v6.ip(), v6.port())))
}

/// A running GeoDNS server. Dropping it without [`shutdown`](Self::shutdown) leaves the UDP
/// threads running until the process exits.
pub struct DnsServer {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    hickory: Option<Server<Bridge>>,
}

impl std::fmt::Debug for DnsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsServer")
            .field("udp_threads", &self.threads.len())
            .field("streams", &self.hickory.is_some())
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
        if let Some(mut server) = self.hickory.take() {
            server
                .shutdown_gracefully()
                .await
                .map_err(|e| DnsError::Server(e.to_string()))?;
        }
        joined.await.map_err(|e| DnsError::Server(e.to_string()))
    }
}

/// hickory-server's entry point: answers through the same engine as the UDP fast path.
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
