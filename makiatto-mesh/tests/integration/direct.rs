//! Two in-process nodes with the `Direct` backend on loopback (no root needed).

use std::time::Duration;

use makiatto_mesh::node::{NodeConfig, TunnelKind};
use makiatto_mesh::{MeshNode, PrivateKey, SeedPeer};

fn config(dir: &std::path::Path, name: &str, ip: &str, seeds: Vec<SeedPeer>) -> NodeConfig {
    NodeConfig {
        name: name.into(),
        cluster_id: "direct-test".into(),
        data_dir: dir.join(name),
        private_key: PrivateKey::generate().to_base64(),
        tunnel: TunnelKind::Direct,
        mesh_cidr: "127.0.0.0/8".parse().unwrap(),
        mesh_address: Some(ip.parse().unwrap()),
        endpoint: format!("{ip}:51880"),
        public_ipv4: ip.into(),
        persistent_keepalive_secs: None,
        seeds,
        replication_port: 17946,
        membership_port: 17947,
        blob_port: 17948,
        reconcile_every_ms: 200,
        sync_interval_ms: Some(200),
        allow_public_direct: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_nodes_join_replicate_and_share_blobs() {
    let dir = tempfile::tempdir().unwrap();
    let a = MeshNode::start(config(dir.path(), "a", "127.0.31.1", vec![]))
        .await
        .unwrap();
    let a_key = PrivateKey::from_base64(&a.config().private_key)
        .unwrap()
        .public_key();
    let seed = SeedPeer {
        name: "a".into(),
        public_key: a_key.to_base64(),
        endpoint: "127.0.31.1:51880".into(),
        mesh_address: "127.0.31.1".parse().unwrap(),
    };
    let b = MeshNode::start(config(dir.path(), "b", "127.0.31.2", vec![seed]))
        .await
        .unwrap();
    let mut view = a.membership();
    tokio::time::timeout(Duration::from_secs(20), view.wait_for(|v| v.is_alive("b")))
        .await
        .expect("a never saw b alive")
        .unwrap();

    a.store()
        .write(|tx| {
            for i in 0..500 {
                tx.execute(
                    "INSERT INTO domains (name) VALUES (?1)",
                    (format!("d{i}.example"),),
                )?;
            }
            Ok(())
        })
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (ha, hb) = (
            a.store().canonical_hash().unwrap(),
            b.store().canonical_hash().unwrap(),
        );
        if ha == hb {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "stores did not converge"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let n: i64 = b
        .store()
        .read(|c| Ok(c.query_row("SELECT count(*) FROM domains", [], |r| r.get(0))?))
        .unwrap();
    assert_eq!(n, 500);
    // b learned a's row and a learned b's through replication: each has both nodes.
    for node in [&a, &b] {
        let names: i64 = node
            .store()
            .read(|c| Ok(c.query_row("SELECT count(*) FROM nodes", [], |r| r.get(0))?))
            .unwrap();
        assert_eq!(names, 2);
    }
    // Blobs: b fetches what a has.
    let h = a.blobs().put_bytes(&vec![7u8; 3 << 20]).unwrap();
    let results = b
        .fetch_blobs(&[h], &makiatto_mesh::blobs::FetchOptions::default())
        .await;
    assert!(results[0].1.is_ok(), "{:?}", results[0].1);
    assert_eq!(b.blobs().read(&h).unwrap().len(), 3 << 20);
    // The Direct tunnel was reconciled from the store: a has b as a peer.
    let peers = a.tunnel().peers().unwrap();
    assert_eq!(peers.len(), 1);
    a.shutdown().await;
    b.shutdown().await;
}
