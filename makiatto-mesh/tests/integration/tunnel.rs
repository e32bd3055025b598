//! One battery of peer reconciliation checks, run against both `Tunnel` backends.

use std::collections::BTreeSet;

use makiatto_mesh::tunnel::{
    DEFAULT_SOCKET_BUFFER, DEFAULT_TX_QUEUE_LEN, PeerChanges, PeerConfig, Tunnel,
};
use makiatto_mesh::{Direct, PrivateKey, PublicKey, WireGuardConfig, WireGuardTunnel};

use crate::harness::{Cluster, SERIAL};

fn peer(key: PublicKey, endpoint: &str, mesh: &str) -> PeerConfig {
    PeerConfig {
        public_key: key,
        endpoint: Some(endpoint.into()),
        allowed_ips: vec![format!("{mesh}/32").parse().unwrap()],
        persistent_keepalive: Some(25),
    }
}

fn keys(t: &dyn Tunnel) -> BTreeSet<PublicKey> {
    t.peers()
        .unwrap()
        .into_iter()
        .map(|p| p.public_key)
        .collect()
}

fn changes(added: usize, removed: usize, updated: usize) -> PeerChanges {
    PeerChanges {
        added,
        removed,
        updated,
    }
}

/// Add, update, no-op, replace everything, skip an unresolvable endpoint.
fn battery(t: &dyn Tunnel) {
    let [k1, k2, k3] = [0; 3].map(|_| PrivateKey::generate().public_key());
    let p1 = peer(k1, "10.9.0.1:51880", "10.44.44.1");
    let p2 = peer(k2, "10.9.0.2:51880", "10.44.44.2");
    assert_eq!(
        t.set_peers(&[p1.clone(), p2.clone()]).unwrap(),
        changes(2, 0, 0)
    );
    assert_eq!(keys(t), BTreeSet::from([k1, k2]));
    let p2_moved = peer(k2, "10.9.0.22:51880", "10.44.44.2");
    assert_eq!(
        t.set_peers(&[p1.clone(), p2_moved.clone()]).unwrap(),
        changes(0, 0, 1)
    );
    assert_eq!(
        t.set_peers(&[p1.clone(), p2_moved]).unwrap(),
        changes(0, 0, 0)
    );
    assert_eq!(keys(t), BTreeSet::from([k1, k2]));
    let p3 = peer(k3, "localhost:51999", "10.44.44.3");
    assert_eq!(
        t.set_peers(std::slice::from_ref(&p3)).unwrap(),
        changes(1, 2, 0)
    );
    assert_eq!(keys(t), BTreeSet::from([k3]));
    if t.interface().is_some() {
        // The host name was resolved into the device's endpoint.
        let live = t.peers().unwrap();
        assert_eq!(live[0].endpoint, Some("127.0.0.1:51999".parse().unwrap()));
        let skip = peer(k1, "no-such-host.invalid:1", "10.44.44.1");
        assert_eq!(t.set_peers(&[p3, skip]).unwrap(), changes(0, 0, 0));
        assert_eq!(keys(t), BTreeSet::from([k3]));
    }
}

#[test]
fn direct_battery() {
    battery(&Direct::new(
        "127.0.0.1".parse().unwrap(),
        "127.0.0.0/8".parse().unwrap(),
    ));
}

/// The WireGuard half runs inside a fresh namespace: this test re-executes the test
/// binary there with only `wireguard_battery_in_namespace` selected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wireguard_battery() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start(0).await;
    let ns = c.add_namespace("t", "10.77.0.99".parse().unwrap());
    let iface = format!("{}wt", c.prefix);
    // A hosts file of the namespace's own (mounted over /etc/hosts by `ip netns exec`),
    // which the inner test rewrites to move a peer.
    let hosts = std::path::PathBuf::from("/etc/netns")
        .join(&ns)
        .join("hosts");
    std::fs::create_dir_all(hosts.parent().unwrap()).unwrap();
    std::fs::write(&hosts, "127.0.0.1 localhost\n10.1.1.1 peer.test\n").unwrap();
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &ns])
        .arg(exe)
        .args([
            "--exact",
            "tunnel::wireguard_battery_in_namespace",
            "--ignored",
            "--nocapture",
        ])
        .env("MAKIATTO_TEST_IFACE", &iface)
        .env("MAKIATTO_TEST_HOSTS", &hosts)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.contains("1 passed"),
        "battery failed:\n{text}"
    );
    drop(c);
    // The device went with the process.
    assert!(!std::path::Path::new(&format!("/var/run/wireguard/{iface}.sock")).exists());
}

#[test]
#[ignore = "run by `wireguard_battery` inside a network namespace"]
fn wireguard_battery_in_namespace() {
    let iface = std::env::var("MAKIATTO_TEST_IFACE").expect("run through `wireguard_battery`");
    let key = PrivateKey::generate();
    let config = WireGuardConfig {
        listen_port: 51990,
        ..WireGuardConfig::new(
            iface.clone(),
            key,
            "10.44.44.9".parse().unwrap(),
            "10.44.44.0/24".parse().unwrap(),
        )
    };
    let t = WireGuardTunnel::create(config).unwrap();
    // `wg` sees the device through its UAPI socket.
    let out = std::process::Command::new("wg")
        .args(["show", &iface, "listen-port"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "51990");
    // The TUN queue is lengthened and the device's UDP sockets (IPv4 and IPv6 listeners)
    // get large buffers; the kernel reports twice the size set.
    let qlen = std::fs::read_to_string(format!("/sys/class/net/{iface}/tx_queue_len")).unwrap();
    assert_eq!(qlen.trim(), DEFAULT_TX_QUEUE_LEN.to_string());
    let out = std::process::Command::new("ss")
        .args(["-uamnH", "sport = :51990"])
        .output()
        .unwrap();
    let ss = String::from_utf8_lossy(&out.stdout);
    let buffers: Vec<(usize, usize)> = ss
        .split("skmem:(")
        .skip(1)
        .map(|m| {
            let field = |name: &str| -> usize {
                m.split([',', ')'])
                    .find_map(|f| f.strip_prefix(name)?.parse().ok())
                    .unwrap()
            };
            (field("rb"), field("tb"))
        })
        .collect();
    assert_eq!(buffers.len(), 2, "{ss}");
    for (rb, tb) in buffers {
        assert!(
            rb >= 2 * DEFAULT_SOCKET_BUFFER && tb >= 2 * DEFAULT_SOCKET_BUFFER,
            "{ss}"
        );
    }
    battery(&t);
    // A peer lost from the device (here removed by hand with `wg`) is added again on the
    // next pass: the plan is made against what the device lists.
    let lost = peer(
        PrivateKey::generate().public_key(),
        "10.1.1.9:51999",
        "10.44.44.19",
    );
    t.set_peers(std::slice::from_ref(&lost)).unwrap();
    let removed = std::process::Command::new("wg")
        .args([
            "set",
            &iface,
            "peer",
            &lost.public_key.to_base64(),
            "remove",
        ])
        .status()
        .unwrap();
    assert!(removed.success());
    assert!(
        t.peers()
            .unwrap()
            .iter()
            .all(|p| p.public_key != lost.public_key)
    );
    assert_eq!(
        t.set_peers(std::slice::from_ref(&lost)).unwrap(),
        changes(1, 0, 0)
    );
    assert!(
        t.peers()
            .unwrap()
            .iter()
            .any(|p| p.public_key == lost.public_key)
    );
    drop(t);

    // Re-resolution: a quiet peer's host name is resolved again and the new address
    // applied; a peer that is not quiet keeps its address.
    let hosts = std::env::var("MAKIATTO_TEST_HOSTS").expect("run through `wireguard_battery`");
    let moving = PrivateKey::generate().public_key();
    let desired = [peer(moving, "peer.test:51999", "10.44.44.4")];
    let endpoint = |t: &WireGuardTunnel| {
        t.peers()
            .unwrap()
            .iter()
            .find(|p| p.public_key == moving)
            .and_then(|p| p.endpoint)
    };
    // Fresh interfaces (the first one's threads may still be stopping).
    let mut config = WireGuardConfig::new(
        format!("{iface}p"),
        PrivateKey::generate(),
        "10.44.44.9".parse().unwrap(),
        "10.44.44.0/24".parse().unwrap(),
    );
    config.listen_port = 51991;
    let patient = WireGuardTunnel::create(config.clone()).unwrap();
    assert_eq!(patient.set_peers(&desired).unwrap(), changes(1, 0, 0));
    assert_eq!(endpoint(&patient), Some("10.1.1.1:51999".parse().unwrap()));
    std::fs::write(&hosts, "127.0.0.1 localhost\n10.1.1.2 peer.test\n").unwrap();
    assert_eq!(
        patient.set_peers(&desired).unwrap(),
        changes(0, 0, 0),
        "not quiet for 135 s yet"
    );
    assert_eq!(endpoint(&patient), Some("10.1.1.1:51999".parse().unwrap()));
    drop(patient);
    std::fs::write(&hosts, "127.0.0.1 localhost\n10.1.1.1 peer.test\n").unwrap();
    config.quiet_after = std::time::Duration::ZERO;
    config.interface = format!("{iface}e");
    config.listen_port = 51992;
    let eager = WireGuardTunnel::create(config).unwrap();
    assert_eq!(eager.set_peers(&desired).unwrap(), changes(1, 0, 0));
    std::fs::write(&hosts, "127.0.0.1 localhost\n10.1.1.2 peer.test\n").unwrap();
    assert_eq!(eager.set_peers(&desired).unwrap(), changes(0, 0, 1));
    assert_eq!(endpoint(&eager), Some("10.1.1.2:51999".parse().unwrap()));
}
