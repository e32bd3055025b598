//! DNS over TCP (RFC 7766) and TLS (RFC 7858): our own accept loop and framing, answering from
//! the same [`Engine`] as the UDP fast path.
//!
//! The accept loop enforces the connection caps (per listener and per client address): a
//! connection over a cap is accepted and closed at once. Accept errors (`EMFILE`, `ENFILE`,
//! `ENOBUFS`...) back off instead of retrying in a tight loop, so a node out of file
//! descriptors keeps its CPU and recovers when descriptors are free again.

use std::{
    collections::HashMap,
    io::ErrorKind,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpListener,
    task::JoinSet,
    time::timeout,
};
use tokio_rustls::TlsAcceptor;

use crate::wire::{Engine, Transport};

/// Connection limits and timeouts of the TCP and DoT listeners.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StreamLimits {
    /// Open connections per listener.
    pub(crate) per_listener: usize,
    /// Open connections per client address, over all TCP and DoT listeners.
    pub(crate) per_client: usize,
    /// How long a connection may wait for its next query (and for the TLS handshake).
    pub(crate) idle: Duration,
    /// How long reading the rest of a started query, or writing an answer, may take.
    pub(crate) io: Duration,
}

/// The key a client's connections are counted under: its IPv4 address, or the /64 of its
/// IPv6 address (one host usually holds a whole /64, and could otherwise rotate through it
/// to take every slot).
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
    }
}

/// Open connections per client (see `client_key`), shared by every stream listener of a
/// server.
#[derive(Debug, Default)]
pub(crate) struct ClientCounts(Mutex<HashMap<IpAddr, usize>>);

impl ClientCounts {
    /// Takes a slot for `ip` unless it already holds `max`.
    fn acquire(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<ClientSlot> {
        let mut map = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = map.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(ClientSlot {
            counts: self.clone(),
            ip,
        })
    }
}

/// A connection's place in [`ClientCounts`], given back when dropped.
struct ClientSlot {
    counts: Arc<ClientCounts>,
    ip: IpAddr,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut map = self
            .counts
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// First and longest pause after a failed `accept`.
const BACKOFF_MIN: Duration = Duration::from_millis(5);
const BACKOFF_MAX: Duration = Duration::from_millis(500);

/// Accepts connections on `listener` (TLS when `tls` is set) until the task is aborted.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    engine: Engine,
    limits: StreamLimits,
    clients: Arc<ClientCounts>,
) {
    let mut conns = JoinSet::new();
    let mut backoff = BACKOFF_MIN;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => {
                backoff = BACKOFF_MIN;
                accepted
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::ConnectionAborted
                        | ErrorKind::ConnectionReset
                        | ErrorKind::Interrupted
                ) =>
            {
                continue;
            }
            Err(error) => {
                // Out of descriptors or memory: the pending connection stays queued, so an
                // immediate retry fails the same way. Wait, doubling the pause.
                tracing::warn!(%error, pause_ms = backoff.as_millis(), "dns stream accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        // Reap finished connections so `len` counts open ones.
        while conns.try_join_next().is_some() {}
        let ip = client_key(peer.ip().to_canonical());
        if conns.len() >= limits.per_listener {
            tracing::debug!(%peer, "dns stream listener full, closing");
            continue;
        }
        let Some(slot) = clients.acquire(ip, limits.per_client) else {
            tracing::debug!(%peer, "dns stream client over its connection cap, closing");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let engine = engine.clone();
        let tls = tls.clone();
        conns.spawn(async move {
            let _slot = slot;
            match tls {
                None => connection(stream, peer, &engine, limits).await,
                Some(acceptor) => match timeout(limits.idle, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => connection(stream, peer, &engine, limits).await,
                    Ok(Err(error)) => tracing::debug!(%peer, %error, "dot handshake failed"),
                    Err(_) => tracing::debug!(%peer, "dot handshake timed out"),
                },
            }
        });
    }
}

/// Answers length-prefixed queries in order until the client closes, stalls or errs.
async fn connection<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    peer: SocketAddr,
    engine: &Engine,
    limits: StreamLimits,
) {
    let mut query = Vec::with_capacity(512);
    let mut answer = Vec::with_capacity(512);
    let mut frame = Vec::with_capacity(514);
    loop {
        let mut len = [0u8; 2];
        // Idle wait for the next query; EOF here is the normal end.
        match timeout(limits.idle, stream.read(&mut len[..1])).await {
            Ok(Ok(1)) => {}
            Ok(Ok(_)) => return,
            Ok(Err(error)) => {
                tracing::debug!(%peer, %error, "dns stream read failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "dns stream idle, closing");
                return;
            }
        }
        let rest = async {
            stream.read_exact(&mut len[1..]).await?;
            query.resize(usize::from(u16::from_be_bytes(len)), 0);
            stream.read_exact(&mut query).await
        };
        match timeout(limits.io, rest).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => {
                tracing::debug!(%peer, %error, "dns stream read failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "dns stream query too slow, closing");
                return;
            }
        }
        if !engine.respond(&query, peer.ip(), Transport::Stream, &mut answer) {
            continue;
        }
        let Ok(n) = u16::try_from(answer.len()) else {
            tracing::warn!(%peer, len = answer.len(), "answer longer than a TCP frame");
            return;
        };
        frame.clear();
        frame.extend_from_slice(&n.to_be_bytes());
        frame.extend_from_slice(&answer);
        let write = async {
            stream.write_all(&frame).await?;
            stream.flush().await
        };
        match timeout(limits.io, write).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::debug!(%peer, %error, "dns stream write failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "dns stream write too slow, closing");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::many_single_char_names)]
    fn ipv6_clients_count_per_64_and_ipv4_per_address() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::7".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_key(a), client_key(b));
        assert_ne!(client_key(a), client_key(c));
        let (x, y): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        assert_ne!(client_key(x), client_key(y));
    }
}
