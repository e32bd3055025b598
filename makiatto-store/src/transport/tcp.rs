//! The replication protocol over TCP: a client ([`TcpTransport`]) and a server
//! ([`serve_tcp`]).
//!
//! One connection carries one exchange. Both sides send `Hello` first; the client checks the
//! server's before it sends anything else, so nothing leaks to another cluster. Then the
//! client sends a `SyncReq` and reads the answer up to `SyncDone` (pull), or sends `Chunk`
//! frames and closes its side (push). The server accepts several requests on a connection
//! until the client closes it or stays silent for longer than the read timeout.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tracing::{Instrument, debug, debug_span, warn};

use super::{Pulled, SyncTransport};
use crate::wire::{self, Chunk, Frame, SyncReq};
use crate::{Result, SiteId, Store, StoreError, SyncSession};

/// The client side of the TCP transport. Each `pull` or `push` opens one connection.
#[derive(Debug, Clone)]
pub struct TcpTransport {
    /// Our cluster id, sent in `Hello`; a server of another cluster is refused.
    pub cluster_id: String,
    /// Our site, sent in `Hello`.
    pub site: SiteId,
    /// Our schema version, sent in `Hello`.
    pub schema_version: u32,
    /// Largest frame accepted from a server (default [`wire::DEFAULT_MAX_FRAME`]).
    pub max_frame: usize,
    /// Largest whole sync answer accepted, in bytes (default 256 MiB). An answer is about
    /// its request's byte budget plus one version, so this only stops a hostile server.
    pub max_answer_bytes: u64,
    /// Limit on establishing the connection (default 5 s).
    pub connect_timeout: Duration,
    /// Limit on a whole exchange after connecting (default 60 s).
    pub session_timeout: Duration,
}

impl TcpTransport {
    /// A client for `cluster_id` speaking as `site`, with default limits.
    pub fn new(cluster_id: impl Into<String>, site: SiteId, schema_version: u32) -> Self {
        TcpTransport {
            cluster_id: cluster_id.into(),
            site,
            schema_version,
            max_frame: wire::DEFAULT_MAX_FRAME,
            max_answer_bytes: 256 << 20,
            connect_timeout: Duration::from_secs(5),
            session_timeout: Duration::from_secs(60),
        }
    }

    /// A client speaking for `store` (its cluster, site and schema version).
    pub fn for_store(store: &Store) -> Self {
        Self::new(store.cluster_id(), store.site(), store.schema_version())
    }

    fn hello(&self) -> Frame {
        Frame::Hello {
            cluster_id: self.cluster_id.clone(),
            site: self.site,
            schema_version: self.schema_version,
        }
    }

    /// Connects and exchanges `Hello`s.
    async fn open(&self, peer: SocketAddr) -> Result<TcpStream> {
        let mut stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(peer))
            .await
            .map_err(|_| timeout_error("connect", self.connect_timeout))??;
        stream.set_nodelay(true)?;
        wire::write_frame(&mut stream, &self.hello()).await?;
        let hello = wire::read_frame(&mut stream, self.max_frame).await?;
        check_hello(&self.cluster_id, hello)?;
        Ok(stream)
    }

    async fn pull_inner(&self, peer: SocketAddr, req: SyncReq) -> Result<Vec<Frame>> {
        let (tx, mut rx) = mpsc::channel(64);
        let collect = async {
            let mut frames = Vec::new();
            while let Some(f) = rx.recv().await {
                frames.push(f);
            }
            frames
        };
        let (read, frames) = tokio::join!(self.pull_frames(peer, req, tx), collect);
        read.map(|()| frames)
    }

    /// Sends `req` to `peer` and hands each answer frame to `out` as it arrives, up to and
    /// including `SyncDone`; an answer that ends before it is [`StoreError::Truncated`].
    async fn pull_frames(
        &self,
        peer: SocketAddr,
        req: SyncReq,
        out: mpsc::Sender<Frame>,
    ) -> Result<()> {
        let mut stream = self.open(peer).await?;
        let (read, write) = stream.split();
        let mut write = BufWriter::new(write);
        wire::write_frame(&mut write, &Frame::SyncReq(req)).await?;
        write.flush().await?;
        let mut read = BufReader::new(read).take(self.max_answer_bytes);
        loop {
            let f = match wire::read_frame(&mut read, self.max_frame).await? {
                None => return Err(StoreError::Truncated),
                Some(Frame::Busy) => return Err(StoreError::Busy),
                Some(
                    f @ (Frame::SyncStart { .. }
                    | Frame::Version { .. }
                    | Frame::Cleared { .. }
                    | Frame::SyncDone { .. }),
                ) => f,
                Some(other) => {
                    return Err(StoreError::Malformed(format!(
                        "unexpected frame in a sync answer: {}",
                        crate::store::frame_name(&other)
                    )));
                }
            };
            let done = matches!(f, Frame::SyncDone { .. });
            out.send(f).await.map_err(|_| StoreError::Closed)?;
            if done {
                return Ok(());
            }
        }
    }

    async fn push_inner(&self, peer: SocketAddr, chunks: Vec<Chunk>) -> Result<()> {
        let mut stream = self.open(peer).await?;
        let (mut read, write) = stream.split();
        let mut write = BufWriter::new(write);
        for chunk in chunks {
            wire::write_frame(&mut write, &Frame::Chunk(chunk)).await?;
        }
        write.flush().await?;
        write.shutdown().await?;
        // Wait for the server to close its side: it has then read every chunk.
        let mut sink = [0u8; 64];
        while read.read(&mut sink).await? > 0 {}
        Ok(())
    }
}

impl SyncTransport for TcpTransport {
    type Peer = SocketAddr;

    async fn pull(&self, peer: &SocketAddr, req: SyncReq) -> Result<Vec<Frame>> {
        tokio::time::timeout(self.session_timeout, self.pull_inner(*peer, req))
            .await
            .map_err(|_| timeout_error("sync session", self.session_timeout))?
    }

    /// Applies the answer while it arrives: versions are merged as their frames come in,
    /// so reading on the peer, the transfer and merging here overlap.
    async fn pull_apply(&self, peer: &SocketAddr, req: SyncReq, store: &Store) -> Result<Pulled> {
        let (tx, mut rx) = mpsc::channel::<Frame>(32);
        let store = store.clone();
        let applier = tokio::task::spawn_blocking(move || {
            let mut session = SyncSession::default();
            let mut pulled = Pulled::default();
            while let Some(f) = rx.blocking_recv() {
                pulled.count(&f);
                if let Some(done) = session.feed(&store, f)? {
                    pulled.done = Some(done);
                    return Ok(pulled);
                }
            }
            // The answer ended early: what arrived whole is applied.
            session.flush(&store)?;
            Ok::<_, StoreError>(pulled)
        });
        let read = tokio::time::timeout(self.session_timeout, self.pull_frames(*peer, req, tx))
            .await
            .map_err(|_| timeout_error("sync session", self.session_timeout));
        let applied = applier.await.map_err(StoreError::Task)?;
        // An applier error (a malformed version...) explains a reader that saw it close.
        let pulled = applied?;
        read??;
        Ok(pulled)
    }

    async fn push(&self, peer: &SocketAddr, chunks: Vec<Chunk>) -> Result<()> {
        tokio::time::timeout(self.session_timeout, self.push_inner(*peer, chunks))
            .await
            .map_err(|_| timeout_error("push", self.session_timeout))?
    }
}

/// Limits of [`serve_tcp`].
#[derive(Clone)]
pub struct ServeOptions {
    /// Largest frame accepted from a client (default [`wire::DEFAULT_MAX_FRAME`]).
    pub max_frame: usize,
    /// Longest wait for the next frame (or its rest) before the connection is closed
    /// (default 10 s). Cuts off slow and idle clients.
    pub read_timeout: Duration,
    /// Limit on writing one answer, `Hello` included (default 60 s).
    pub write_timeout: Duration,
    /// Most open connections; more are closed at once (default 64).
    pub max_connections: usize,
    /// Most sync sessions served at once; more are answered `Busy` (default 4).
    pub max_sync_sessions: usize,
    /// Cap on the byte budget a client may ask for (default 16 MiB); a client asking for
    /// more gets an incomplete answer and asks again.
    pub max_byte_budget: u64,
    /// When set, connections from addresses it rejects are closed before the `Hello`.
    pub allow: Option<Arc<dyn Fn(SocketAddr) -> bool + Send + Sync>>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            max_frame: wire::DEFAULT_MAX_FRAME,
            read_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(60),
            max_connections: 64,
            max_sync_sessions: 4,
            max_byte_budget: 16 << 20,
            allow: None,
        }
    }
}

impl fmt::Debug for ServeOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServeOptions")
            .field("max_frame", &self.max_frame)
            .field("read_timeout", &self.read_timeout)
            .field("write_timeout", &self.write_timeout)
            .field("max_connections", &self.max_connections)
            .field("max_sync_sessions", &self.max_sync_sessions)
            .field("max_byte_budget", &self.max_byte_budget)
            .field(
                "allow",
                &self.allow.as_ref().map(|_| "Fn(SocketAddr) -> bool"),
            )
            .finish()
    }
}

/// Serves replication requests for `store` on `listener` until `shutdown` completes.
///
/// Per connection: the server sends its `Hello` and expects the client's; a client of
/// another cluster or protocol, a frame that is malformed, oversized or unexpected, or a
/// client silent for longer than [`ServeOptions::read_timeout`] is disconnected (logged at
/// debug: peer input never raises the log level). A `SyncReq` is answered from
/// [`Store::serve_sync`] on the blocking pool, or with `Busy` when
/// [`ServeOptions::max_sync_sessions`] are already running. Pushed chunks go to `inbound`;
/// when it is full they are dropped, and sync repairs the gap.
///
/// On shutdown the listener closes, open connections stop at their next request and are
/// given a few seconds to finish the current one.
pub async fn serve_tcp(
    listener: TcpListener,
    store: Store,
    inbound: mpsc::Sender<Chunk>,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send,
) {
    let local = listener.local_addr().ok();
    let ctx = Arc::new(Ctx {
        store,
        inbound,
        sessions: Arc::new(Semaphore::new(
            options.max_sync_sessions.min(Semaphore::MAX_PERMITS),
        )),
        options,
    });
    let connections = Arc::new(Semaphore::new(
        ctx.options.max_connections.min(Semaphore::MAX_PERMITS),
    ));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        while tasks.try_join_next().is_some() {}
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(error) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    debug!(%error, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        if let Some(allow) = &ctx.options.allow
            && !allow(peer)
        {
            debug!(%peer, "refusing a connection from outside the allowed set");
            continue;
        }
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            debug!(%peer, "refusing a connection: too many open");
            continue;
        };
        let ctx = ctx.clone();
        let stop = stop_rx.clone();
        tasks.spawn(
            async move {
                if let Err(error) = ctx.connection(stream, stop).await {
                    match error {
                        StoreError::Sqlite(_) | StoreError::Task(_) | StoreError::Closed => {
                            warn!(%error, "sync session failed");
                        }
                        _ => debug!(%error, "closing connection"),
                    }
                }
                drop(permit);
            }
            .instrument(debug_span!("replication_connection", %peer, ?local)),
        );
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        debug!(
            open = tasks.len(),
            "aborting replication connections at shutdown"
        );
        tasks.shutdown().await;
    }
}

/// What every connection of one server shares.
struct Ctx {
    store: Store,
    inbound: mpsc::Sender<Chunk>,
    sessions: Arc<Semaphore>,
    options: ServeOptions,
}

impl Ctx {
    async fn connection(
        &self,
        mut stream: TcpStream,
        mut stop: watch::Receiver<bool>,
    ) -> Result<()> {
        stream.set_nodelay(true)?;
        let (read, write) = stream.split();
        let mut read = BufReader::new(read);
        let mut write = BufWriter::new(write);
        let hello = Frame::Hello {
            cluster_id: self.store.cluster_id().to_owned(),
            site: self.store.site(),
            schema_version: self.store.schema_version(),
        };
        self.write_all(&mut write, &[hello]).await?;
        let first = self.read(&mut read).await?;
        check_hello(self.store.cluster_id(), Some(first))?;
        loop {
            let frame = tokio::select! {
                _ = stop.wait_for(|s| *s) => return Ok(()),
                frame = self.read(&mut read) => match frame {
                    Ok(f) => f,
                    // A clean end of stream between frames.
                    Err(StoreError::Truncated) => return Ok(()),
                    Err(e) => return Err(e),
                },
            };
            match frame {
                Frame::SyncReq(req) => self.sync(&mut write, req).await?,
                Frame::Chunk(chunk) => match self.inbound.try_send(chunk) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        debug!("inbound queue full, dropping a pushed chunk");
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return Err(StoreError::Closed),
                },
                other => {
                    return Err(StoreError::Malformed(format!(
                        "unexpected frame from a client: {}",
                        crate::store::frame_name(&other)
                    )));
                }
            }
        }
    }

    async fn sync<W: AsyncWrite + Unpin>(&self, write: &mut W, mut req: SyncReq) -> Result<()> {
        let Ok(permit) = self.sessions.clone().try_acquire_owned() else {
            debug!("at the sync session limit, answering Busy");
            return self.write_all(write, &[Frame::Busy]).await;
        };
        req.byte_budget = req.byte_budget.min(self.options.max_byte_budget);
        // Frames are written while the answer is read from the store (a small queue in
        // between), so the client can apply the first versions while later ones are read.
        let (tx, mut rx) = mpsc::channel::<Frame>(16);
        let store = self.store.clone();
        let serving = tokio::task::spawn_blocking(move || {
            store.serve_sync_into(&req, &mut |f| {
                tx.blocking_send(f).map_err(|_| StoreError::Closed)
            })
        });
        let timeout = self.options.write_timeout;
        let mut frames = 0usize;
        // The whole answer within `write_timeout`, as before streaming: the store's read
        // transaction (and a blocking thread) live as long as the session.
        let written = tokio::time::timeout(timeout, async {
            while let Some(f) = rx.recv().await {
                frames += 1;
                wire::write_frame(write, &f).await?;
                if rx.is_empty() {
                    write.flush().await?;
                }
            }
            Ok::<_, StoreError>(())
        })
        .await
        .unwrap_or_else(|_| Err(timeout_error("sync answer", timeout)));
        drop(rx);
        let served = serving.await.map_err(StoreError::Task)?;
        debug!(frames, "served a sync session");
        drop(permit);
        written?;
        served
    }

    /// Reads the next frame; end of stream is [`StoreError::Truncated`].
    async fn read<R: AsyncRead + Unpin>(&self, read: &mut R) -> Result<Frame> {
        tokio::time::timeout(
            self.options.read_timeout,
            wire::read_frame(read, self.options.max_frame),
        )
        .await
        .map_err(|_| timeout_error("read", self.options.read_timeout))??
        .ok_or(StoreError::Truncated)
    }

    async fn write_all<W: AsyncWrite + Unpin>(
        &self,
        write: &mut W,
        frames: &[Frame],
    ) -> Result<()> {
        let timeout = self.options.write_timeout;
        tokio::time::timeout(timeout, async {
            for f in frames {
                wire::write_frame(write, f).await?;
            }
            write.flush().await?;
            Ok(())
        })
        .await
        .map_err(|_| timeout_error("write", timeout))?
    }
}

/// Checks the peer's first frame: a `Hello` of our cluster.
fn check_hello(ours: &str, frame: Option<Frame>) -> Result<()> {
    match frame {
        Some(Frame::Hello {
            cluster_id,
            site,
            schema_version,
        }) => {
            if cluster_id != ours {
                return Err(StoreError::ClusterMismatch {
                    ours: ours.to_owned(),
                    theirs: cluster_id,
                });
            }
            debug!(peer_site = %site, peer_schema = schema_version, "hello");
            Ok(())
        }
        Some(other) => Err(StoreError::Malformed(format!(
            "expected Hello, got {}",
            crate::store::frame_name(&other)
        ))),
        None => Err(StoreError::Truncated),
    }
}

fn timeout_error(op: &'static str, after: Duration) -> StoreError {
    StoreError::Timeout {
        op,
        after_ms: after.as_millis() as u64,
    }
}

const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
