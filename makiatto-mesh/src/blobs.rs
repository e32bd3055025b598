//! Content blob transfer between nodes.
//!
//! Protocol (one request per TCP connection, on the mesh): the client sends `MKB1`, the
//! 32-byte blake3 hash and the offset to start from (u64, big endian); the server answers
//! one status byte (`0` found, `1` unknown, `2` offset beyond the end) and the blob's
//! total length (u64), then streams the bytes from the offset to the end.
//!
//! The client appends to the store's [`Partial`](makiatto_store::Partial) download, so a
//! transfer cut short resumes from where it stopped (with the same or another peer), and
//! [`Partial::finish`](makiatto_store::Partial::finish) verifies the hash before the blob
//! becomes visible. [`fetch_many`] fetches several blobs at once, spread over the peers,
//! with at most `concurrency` transfers in flight.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use makiatto_store::{BlobHash, BlobStore, StoreError};
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{debug, warn};

use crate::{MeshError, Result};

/// Default TCP port of blob transfer on the mesh.
pub const DEFAULT_PORT: u16 = 7948;
const MAGIC: &[u8; 4] = b"MKB1";
const STATUS_OK: u8 = 0;
const STATUS_UNKNOWN: u8 = 1;
const STATUS_BAD_OFFSET: u8 = 2;
const REQUEST_LEN: usize = 4 + 32 + 8;
const COPY_BUF: usize = 256 << 10;

/// Limits of the blob client.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Establishing a connection (default 3 s).
    pub connect_timeout: Duration,
    /// Longest silence while reading (default 10 s).
    pub read_timeout: Duration,
    /// Largest blob accepted (default 4 GiB).
    pub max_blob_bytes: u64,
    /// Most transfers in flight in [`fetch_many`] (default 4).
    pub concurrency: usize,
    /// Slowest transfer rate accepted, in bytes per second (default 64 KiB/s): a peer that
    /// trickles (a byte now and then, never silent long enough for `read_timeout`) is left
    /// for the next one once the transfer is behind this rate by more than `read_timeout`.
    pub min_rate: u64,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            connect_timeout: Duration::from_secs(3),
            read_timeout: Duration::from_secs(10),
            max_blob_bytes: 4 << 30,
            concurrency: 4,
            min_rate: 64 << 10,
        }
    }
}

/// Limits of [`serve`].
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Most transfers served at once; more connections are closed (default 16).
    pub max_connections: usize,
    /// Waiting for the request (default 5 s).
    pub request_timeout: Duration,
    /// Longest stall while writing (default 30 s).
    pub write_timeout: Duration,
    /// Slowest transfer served, in bytes per second (default 64 KiB/s): a client that
    /// reads slower (never stalling long enough for `write_timeout`) is cut off once it is
    /// behind this rate by more than `write_timeout`, so it cannot hold a slot for hours.
    pub min_rate: u64,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            max_connections: 16,
            request_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(30),
            min_rate: 64 << 10,
        }
    }
}

/// Serves the blobs of `blobs` on `listener` until `shutdown` completes. Connections
/// `allow` rejects (see [`crate::trust::ClusterNodes::allow`]) are closed before any
/// byte is exchanged.
pub async fn serve(
    listener: TcpListener,
    blobs: BlobStore,
    allow: crate::trust::Allow,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send,
) {
    let permits = Arc::new(Semaphore::new(options.max_connections.max(1)));
    let mut tasks = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        while tasks.try_join_next().is_some() {}
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(error) => {
                    debug!(%error, "blob accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        if !allow(peer) {
            continue;
        }
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            debug!(%peer, "refusing a blob connection: too many open");
            continue;
        };
        let blobs = blobs.clone();
        let options = options.clone();
        tasks.spawn(async move {
            if let Err(error) = serve_one(stream, &blobs, &options).await {
                debug!(%error, %peer, "blob transfer ended");
            }
            drop(permit);
        });
    }
    tasks.shutdown().await;
}

async fn serve_one(
    mut stream: tokio::net::TcpStream,
    blobs: &BlobStore,
    options: &ServeOptions,
) -> std::io::Result<()> {
    let mut req = [0u8; REQUEST_LEN];
    tokio::time::timeout(options.request_timeout, stream.read_exact(&mut req))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "request"))??;
    if &req[..4] != MAGIC {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "bad magic",
        ));
    }
    let mut hash = [0u8; 32];
    hash.copy_from_slice(&req[4..36]);
    let hash = BlobHash::from_bytes(hash);
    let mut off = [0u8; 8];
    off.copy_from_slice(&req[36..]);
    let offset = u64::from_be_bytes(off);
    let Ok(file) = blobs.open_blob(&hash) else {
        let mut answer = [STATUS_UNKNOWN; 9];
        answer[1..].copy_from_slice(&0u64.to_be_bytes());
        return stream.write_all(&answer).await;
    };
    let total = file.metadata()?.len();
    let mut answer = [0u8; 9];
    answer[0] = if offset > total {
        STATUS_BAD_OFFSET
    } else {
        STATUS_OK
    };
    answer[1..].copy_from_slice(&total.to_be_bytes());
    stream.write_all(&answer).await?;
    if offset > total {
        return Ok(());
    }
    let mut file = tokio::fs::File::from_std(file);
    file.seek(std::io::SeekFrom::Start(offset)).await?;
    let mut buf = vec![0u8; COPY_BUF];
    let (started, mut sent) = (tokio::time::Instant::now(), 0u64);
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        tokio::time::timeout(options.write_timeout, stream.write_all(&buf[..n]))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "write"))??;
        sent += n as u64;
        let allowed = options.write_timeout
            + Duration::from_secs_f64(sent as f64 / options.min_rate.max(1) as f64);
        if started.elapsed() > allowed {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "client reads below the minimum rate",
            ));
        }
    }
    stream.shutdown().await
}

/// What one fetch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FetchReport {
    /// Bytes received over the network.
    pub bytes: u64,
    /// Offset the first transfer resumed from (0 for a fresh download).
    pub resumed_from: u64,
    /// Peers that failed before one succeeded.
    pub failed_peers: usize,
    /// Whether the blob was already here.
    pub already_present: bool,
}

/// Fetches `hash` into `blobs`, trying `peers` in order and resuming from what earlier
/// attempts (or an earlier run) left in the partial file. Blocking: call it from
/// `spawn_blocking` (as [`fetch_many`] does). Fails when no peer delivered a blob with the
/// right hash.
pub fn fetch_blocking(
    blobs: &BlobStore,
    hash: BlobHash,
    peers: &[SocketAddr],
    options: &FetchOptions,
) -> Result<FetchReport> {
    let mut report = FetchReport::default();
    if blobs.contains(&hash) {
        report.already_present = true;
        return Ok(report);
    }
    let mut first = true;
    let mut last_error = None;
    for peer in peers {
        let mut partial = blobs.partial(&hash)?;
        if first {
            report.resumed_from = partial.len();
            first = false;
        }
        match fetch_from(&mut partial, hash, *peer, options, &mut report.bytes) {
            Ok(()) => match partial.finish() {
                Ok(()) => return Ok(report),
                Err(error @ StoreError::BlobMismatch { .. }) => {
                    warn!(%error, %peer, "a peer served a corrupt blob");
                    last_error = Some(MeshError::Store(error));
                }
                Err(error) => return Err(error.into()),
            },
            Err(error) => {
                debug!(%error, %peer, "blob fetch failed, trying the next peer");
                last_error = Some(error);
            }
        }
        report.failed_peers += 1;
    }
    Err(last_error.unwrap_or_else(|| MeshError::Blob {
        peer: "-".into(),
        message: format!("no peer to fetch {hash} from"),
    }))
}

fn fetch_from(
    partial: &mut makiatto_store::Partial,
    hash: BlobHash,
    peer: SocketAddr,
    options: &FetchOptions,
    received: &mut u64,
) -> Result<()> {
    let err = |message: String| MeshError::Blob {
        peer: peer.to_string(),
        message,
    };
    let io = |op: &str, e: std::io::Error| err(format!("{op}: {e}"));
    let mut stream =
        TcpStream::connect_timeout(&peer, options.connect_timeout).map_err(|e| io("connect", e))?;
    stream
        .set_read_timeout(Some(options.read_timeout))
        .and_then(|()| stream.set_write_timeout(Some(options.read_timeout)))
        .map_err(|e| io("configure", e))?;
    let offset = partial.len();
    let mut req = Vec::with_capacity(REQUEST_LEN);
    req.extend_from_slice(MAGIC);
    req.extend_from_slice(hash.as_bytes());
    req.extend_from_slice(&offset.to_be_bytes());
    stream.write_all(&req).map_err(|e| io("request", e))?;
    let mut answer = [0u8; 9];
    stream
        .read_exact(&mut answer)
        .map_err(|e| io("answer", e))?;
    let mut len = [0u8; 8];
    len.copy_from_slice(&answer[1..]);
    let total = u64::from_be_bytes(len);
    match answer[0] {
        STATUS_OK => {}
        STATUS_UNKNOWN => return Err(err("does not have the blob".into())),
        STATUS_BAD_OFFSET => {
            return Err(err(format!(
                "our partial ({offset} bytes) is longer than the blob ({total})"
            )));
        }
        s => return Err(err(format!("unknown status {s}"))),
    }
    if total > options.max_blob_bytes {
        return Err(err(format!("blob of {total} bytes is over the limit")));
    }
    // A peer that claims a blob shorter than what we already hold is wrong or hostile.
    let Some(mut remaining) = total.checked_sub(offset) else {
        return Err(err(format!(
            "peer says the blob has {total} bytes, but our partial already has {offset}"
        )));
    };
    let mut buf = vec![0u8; COPY_BUF];
    let started = std::time::Instant::now();
    let mut copied: u64 = 0;
    while remaining > 0 {
        let allowed = options.read_timeout
            + Duration::from_secs_f64(copied as f64 / options.min_rate.max(1) as f64);
        if started.elapsed() > allowed {
            return Err(err(format!(
                "too slow: {copied} bytes in {:.1} s, below {} bytes/s",
                started.elapsed().as_secs_f64(),
                options.min_rate
            )));
        }
        let want = remaining.min(buf.len() as u64) as usize;
        let n = stream.read(&mut buf[..want]).map_err(|e| io("read", e))?;
        if n == 0 {
            return Err(err(format!(
                "connection closed with {remaining} bytes to go"
            )));
        }
        partial.append(&buf[..n])?;
        copied += n as u64;
        remaining -= n as u64;
        *received += n as u64;
    }
    Ok(())
}

/// Fetches every blob of `hashes` into `blobs` with at most
/// [`FetchOptions::concurrency`] transfers at once. Blob `i` tries the peers starting at
/// `peers[i % n]`, so transfers are spread over several peers in parallel. Returns one
/// result per hash, in order.
pub async fn fetch_many(
    blobs: &BlobStore,
    hashes: &[BlobHash],
    peers: &[SocketAddr],
    options: &FetchOptions,
) -> Vec<(BlobHash, Result<FetchReport>)> {
    let permits = Arc::new(Semaphore::new(options.concurrency.max(1)));
    let mut tasks = JoinSet::new();
    // One transfer per distinct hash: two appending to the same partial file would
    // corrupt it.
    let mut first_of: std::collections::HashMap<BlobHash, usize> = std::collections::HashMap::new();
    for (i, hash) in hashes.iter().enumerate() {
        if first_of.contains_key(hash) {
            continue;
        }
        first_of.insert(*hash, i);
        let mut order = peers.to_vec();
        if !order.is_empty() {
            let n = order.len();
            order.rotate_left(i % n);
        }
        let (blobs, hash, options, permits) =
            (blobs.clone(), *hash, options.clone(), permits.clone());
        tasks.spawn(async move {
            // The semaphore is never closed, so acquiring only fails if it were.
            let permit = permits.acquire_owned().await;
            let result = tokio::task::spawn_blocking(move || {
                let r = fetch_blocking(&blobs, hash, &order, &options);
                drop(permit);
                r
            })
            .await
            .unwrap_or_else(|e| {
                Err(MeshError::Blob {
                    peer: "-".into(),
                    message: format!("task failed: {e}"),
                })
            });
            (i, hash, result)
        });
    }
    let mut out: Vec<Option<(BlobHash, Result<FetchReport>)>> =
        hashes.iter().map(|_| None).collect();
    while let Some(done) = tasks.join_next().await {
        if let Ok((i, hash, result)) = done {
            out[i] = Some((hash, result));
        }
    }
    for (i, hash) in hashes.iter().enumerate() {
        let first = first_of.get(hash).copied().unwrap_or(i);
        if first != i {
            let copy = match &out[first] {
                Some((_, Ok(report))) => Ok(FetchReport {
                    bytes: 0,
                    already_present: true,
                    ..report.clone()
                }),
                Some((_, Err(e))) => Err(MeshError::Blob {
                    peer: "-".into(),
                    message: e.to_string(),
                }),
                None => Err(MeshError::Blob {
                    peer: "-".into(),
                    message: "task panicked".into(),
                }),
            };
            out[i] = Some((*hash, copy));
        }
    }
    out.into_iter()
        .zip(hashes)
        .map(|(r, h)| {
            r.unwrap_or_else(|| {
                (
                    *h,
                    Err(MeshError::Blob {
                        peer: "-".into(),
                        message: "task panicked".into(),
                    }),
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn server(blobs: BlobStore) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(serve(
            listener,
            blobs,
            crate::replication::mesh_filter("127.0.0.0/8".parse().unwrap()),
            ServeOptions::default(),
            async move {
                let _ = rx.await;
            },
        ));
        (addr, tx)
    }

    fn data(seed: u8, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[allow(clippy::many_single_char_names)]
    async fn fetches_many_from_several_peers_and_skips_a_bad_one() {
        let dir = tempfile::tempdir().unwrap();
        let a = BlobStore::open(dir.path().join("a")).unwrap();
        let b = BlobStore::open(dir.path().join("b")).unwrap();
        let c = BlobStore::open(dir.path().join("c")).unwrap();
        let mut hashes = Vec::new();
        for i in 0..8u8 {
            let d = data(i, 300_000 + usize::from(i) * 1000);
            let h = a.put_bytes(&d).unwrap();
            b.put_bytes(&d).unwrap();
            hashes.push(h);
        }
        let (pa, _sa) = server(a.clone()).await;
        let (pb, _sb) = server(b.clone()).await;
        // A peer that refuses connections.
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let options = FetchOptions {
            concurrency: 3,
            ..FetchOptions::default()
        };
        // The same hash twice is fetched once.
        hashes.push(hashes[0]);
        let results = fetch_many(&c, &hashes, &[pa, dead, pb], &options).await;
        assert_eq!(results.len(), hashes.len());
        assert!(results[8].1.as_ref().unwrap().already_present);
        hashes.pop();
        let results = &results[..8];
        for (h, r) in results {
            let report = r.as_ref().unwrap();
            assert!(report.bytes > 0);
            assert_eq!(c.read(h).unwrap(), a.read(h).unwrap());
        }
        // Blob 1 started at the dead peer: it failed over.
        assert_eq!(results[1].1.as_ref().unwrap().failed_peers, 1);
        // Second run: nothing to transfer.
        let again = fetch_many(&c, &hashes, &[pa], &options).await;
        assert!(
            again
                .iter()
                .all(|(_, r)| r.as_ref().unwrap().already_present)
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[allow(clippy::many_single_char_names)]
    async fn a_trickling_peer_is_left_for_the_next_one() {
        let dir = tempfile::tempdir().unwrap();
        let a = BlobStore::open(dir.path().join("a")).unwrap();
        let c = BlobStore::open(dir.path().join("c")).unwrap();
        let d = data(3, 200_000);
        let h = a.put_bytes(&d).unwrap();
        let (good, _sa) = server(a.clone()).await;
        // A peer that has the blob but sends one byte of it every 100 ms: never silent
        // for a read timeout, hopelessly below any useful rate.
        let trickler = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let slow = trickler.local_addr().unwrap();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let bytes = d.clone();
        std::thread::spawn(move || {
            let Ok((mut s, _)) = trickler.accept() else {
                return;
            };
            let mut req = [0u8; REQUEST_LEN];
            if s.read_exact(&mut req).is_err() {
                return;
            }
            let mut answer = vec![STATUS_OK];
            answer.extend_from_slice(&200_000u64.to_be_bytes());
            if s.write_all(&answer).is_err() {
                return;
            }
            for b in bytes {
                if stop_rx.try_recv().is_ok() || s.write_all(&[b]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100)); // the trickle itself
            }
        });
        let options = FetchOptions {
            read_timeout: Duration::from_millis(500),
            ..FetchOptions::default()
        };
        let c2 = c.clone();
        let started = std::time::Instant::now();
        let report =
            tokio::task::spawn_blocking(move || fetch_blocking(&c2, h, &[slow, good], &options))
                .await
                .unwrap();
        let _ = stop_tx.send(());
        let report = report.unwrap();
        assert_eq!(report.failed_peers, 1, "{report:?}");
        assert!(started.elapsed() < Duration::from_secs(10));
        assert_eq!(c.read(&h).unwrap(), d);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[allow(clippy::many_single_char_names)]
    async fn resumes_a_partial_download_and_rejects_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let a = BlobStore::open(dir.path().join("a")).unwrap();
        let c = BlobStore::open(dir.path().join("c")).unwrap();
        let d = data(7, 1_000_000);
        let h = a.put_bytes(&d).unwrap();
        let mut p = c.partial(&h).unwrap();
        p.append(&d[..400_000]).unwrap();
        drop(p);
        let (pa, _sa) = server(a.clone()).await;
        let options = FetchOptions::default();
        let (c2, opts) = (c.clone(), options.clone());
        let report = tokio::task::spawn_blocking(move || fetch_blocking(&c2, h, &[pa], &opts))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(report.resumed_from, 400_000);
        assert_eq!(report.bytes, 600_000);
        assert_eq!(c.read(&h).unwrap(), d);

        // A corrupt prefix is caught by the hash check and the download discarded.
        let d2 = data(9, 50_000);
        let h2 = a.put_bytes(&d2).unwrap();
        let mut p = c.partial(&h2).unwrap();
        p.append(&[0xff; 10]).unwrap();
        drop(p);
        let c2 = c.clone();
        let err = tokio::task::spawn_blocking(move || fetch_blocking(&c2, h2, &[pa], &options))
            .await
            .unwrap();
        assert!(err.is_err());
        assert!(!c.contains(&h2));
        // The bad partial was deleted, so the next attempt succeeds from scratch.
        let c2 = c.clone();
        let ok = tokio::task::spawn_blocking(move || {
            fetch_blocking(&c2, h2, &[pa], &FetchOptions::default())
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!(ok.resumed_from, 0);
        assert_eq!(c.read(&h2).unwrap(), d2);
    }

    /// A client that keeps reading, but slower than `min_rate`, is cut off and its slot
    /// freed for the next one (the only slot, here).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_reading_below_the_minimum_rate_is_cut_off() {
        use tokio::io::AsyncWriteExt;
        let dir = tempfile::tempdir().unwrap();
        let a = BlobStore::open(dir.path().join("a")).unwrap();
        let d = data(7, 8 << 20);
        let h = a.put_bytes(&d).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_stop, rx) = tokio::sync::oneshot::channel::<()>();
        let options = ServeOptions {
            max_connections: 1,
            // No single write stalls this long at the client's pace: only the rate check
            // can cut it off.
            write_timeout: Duration::from_secs(2),
            min_rate: 4 << 20,
            ..ServeOptions::default()
        };
        tokio::spawn(serve(
            listener,
            a.clone(),
            crate::replication::mesh_filter("127.0.0.0/8".parse().unwrap()),
            options,
            async move {
                let _ = rx.await;
            },
        ));
        let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut req = MAGIC.to_vec();
        req.extend_from_slice(h.as_bytes());
        req.extend_from_slice(&0u64.to_be_bytes());
        slow.write_all(&req).await.unwrap();
        // 64 KiB every 50 ms: about 1.3 MB/s, a third of the minimum.
        let started = std::time::Instant::now();
        let (mut got, mut buf) = (0usize, vec![0u8; 64 << 10]);
        loop {
            let n = slow.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            got += n;
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert!(started.elapsed() < Duration::from_secs(20), "never cut off");
        }
        assert!(
            got < d.len(),
            "the slow client got the whole blob ({got} bytes)"
        );
        // The slot is free again: a normal fetch succeeds.
        let c = BlobStore::open(dir.path().join("c")).unwrap();
        let results = fetch_many(&c, &[h], &[addr], &FetchOptions::default()).await;
        assert!(results[0].1.is_ok(), "{:?}", results[0].1);
    }

    #[tokio::test]
    async fn refuses_clients_outside_the_mesh() {
        let dir = tempfile::tempdir().unwrap();
        let a = BlobStore::open(dir.path().join("a")).unwrap();
        let h = a.put_bytes(b"secret").unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(serve(
            listener,
            a,
            crate::replication::mesh_filter("10.44.44.0/24".parse().unwrap()),
            ServeOptions::default(),
            async move {
                let _ = rx.await;
            },
        ));
        let c = BlobStore::open(dir.path().join("c")).unwrap();
        let r = tokio::task::spawn_blocking(move || {
            fetch_blocking(&c, h, &[addr], &FetchOptions::default())
        })
        .await
        .unwrap();
        assert!(matches!(r, Err(MeshError::Blob { .. })), "{r:?}");
    }
}
