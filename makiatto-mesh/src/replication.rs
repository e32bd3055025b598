//! Store replication over the mesh: makiatto-store's TCP transport and `Replicator`,
//! bound to the mesh address and admitting only cluster nodes
//! ([`crate::trust::ClusterNodes`]).

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ipnet::Ipv4Net;
use makiatto_store::Store;
use makiatto_store::transport::{
    Replicator, ReplicatorOptions, ServeOptions, TcpTransport, serve_tcp,
};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::trust::Allow;
use crate::{MeshError, Result};

/// Default TCP port of store replication on the mesh.
pub const DEFAULT_PORT: u16 = 7946;
/// Capacity of the queue of chunks pushed by peers.
const INBOUND_CAPACITY: usize = 1024;

/// Where the live peers come from (replication addresses, this node excluded).
pub type Peers = Arc<dyn Fn() -> Vec<SocketAddr> + Send + Sync>;

/// An address filter accepting any address of `net` (IPv4 only): for tests and tools;
/// the node admits by [`crate::trust::ClusterNodes::allow`].
pub fn mesh_filter(net: Ipv4Net) -> Allow {
    Arc::new(move |peer: SocketAddr| match peer.ip() {
        IpAddr::V4(v4) => net.contains(&v4),
        IpAddr::V6(v6) => v6.to_ipv4_mapped().is_some_and(|v4| net.contains(&v4)),
    })
}

/// Serves replication on `listener` and runs a [`Replicator`] against `peers` until
/// `shutdown` completes. Connections `allow` rejects (see
/// [`crate::trust::ClusterNodes::allow`]) are closed before any byte is exchanged.
pub async fn run(
    store: Store,
    listener: TcpListener,
    allow: Allow,
    peers: Peers,
    options: ReplicatorOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    let local = listener
        .local_addr()
        .map_err(|e| MeshError::io("reading the replication listener's address", e))?;
    tracing::info!(%local, "replication listening");
    let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_CAPACITY);
    let (stop_tx, stop_rx) = watch::channel(false);
    let serve_options = ServeOptions {
        allow: Some(allow),
        ..ServeOptions::default()
    };
    let mut stop = stop_rx.clone();
    let server = tokio::spawn(serve_tcp(
        listener,
        store.clone(),
        inbound_tx,
        serve_options,
        async move {
            let _ = stop.wait_for(|s| *s).await;
        },
    ));
    let replicator = Replicator::new(
        store.clone(),
        TcpTransport::for_store(&store),
        peers,
        inbound_rx,
        options,
    );
    replicator.run(shutdown).await;
    let _ = stop_tx.send(true);
    let _ = server.await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use makiatto_store::transport::SyncTransport as _;
    use makiatto_store::{Options, cluster};

    use super::*;

    async fn serving(
        dir: &std::path::Path,
        name: &str,
        mesh: &str,
    ) -> (Store, SocketAddr, watch::Sender<bool>) {
        let store = Store::open(dir.join(name), &cluster::SCHEMA, Options::default()).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, mut rx) = watch::channel(false);
        let s = store.clone();
        let net: Ipv4Net = mesh.parse().unwrap();
        tokio::spawn(async move {
            run(
                s,
                listener,
                mesh_filter(net),
                Arc::new(Vec::new),
                ReplicatorOptions::default(),
                async move {
                    let _ = rx.wait_for(|s| *s).await;
                },
            )
            .await
        });
        (store, addr, stop)
    }

    #[tokio::test]
    async fn serves_the_mesh_and_refuses_everyone_else() {
        let dir = tempfile::tempdir().unwrap();
        let client =
            Store::open(dir.path().join("c"), &cluster::SCHEMA, Options::default()).unwrap();
        let transport = TcpTransport::for_store(&client);
        // Loopback is inside 127.0.0.0/8: served.
        let (_a, inside, _stop_a) = serving(dir.path(), "a", "127.0.0.0/8").await;
        let frames = transport.pull(&inside, client.sync_request(1 << 20)).await;
        assert!(frames.is_ok(), "{frames:?}");
        // The same client is outside 10.44.44.0/24: closed before any byte.
        let (_b, outside, _stop_b) = serving(dir.path(), "b", "10.44.44.0/24").await;
        let refused = transport.pull(&outside, client.sync_request(1 << 20)).await;
        assert!(refused.is_err(), "a client outside the mesh was served");
    }

    #[test]
    fn filter_accepts_only_the_mesh() {
        let f = mesh_filter("10.44.44.0/24".parse().unwrap());
        assert!(f("10.44.44.9:1".parse().unwrap()));
        assert!(f("[::ffff:10.44.44.9]:1".parse().unwrap()));
        assert!(!f("10.44.45.9:1".parse().unwrap()));
        assert!(!f("[::1]:1".parse().unwrap()));
    }
}
