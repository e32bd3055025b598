//! One boringtun WireGuard tunnel with one peer, the way a mesh node brings it up (used by
//! `bench/mesh/run.sh`).
//!
//! Run with `cargo run -p makiatto-mesh --release --example wg_tunnel -- <iface>
//! <address/prefix> <listen_port> <private_key_file> <peer_public_key> <peer_endpoint>
//! <peer_allowed_ip/len> [threads]` as root. It runs until the device stops (SIGTERM or
//! SIGINT, which boringtun handles) and then exits.

use std::time::Duration;

use makiatto_mesh::tunnel::{PeerConfig, Tunnel as _, WireGuardConfig, WireGuardTunnel, uapi_get};
use makiatto_mesh::{PrivateKey, PublicKey};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 7 {
        return Err(
            "usage: wg_tunnel <iface> <address/prefix> <listen_port> <private_key_file> \
                    <peer_public_key> <peer_endpoint> <peer_allowed_ip/len> [threads]"
                .into(),
        );
    }
    let iface = &args[0];
    let (address, prefix) = args[1].split_once('/').ok_or("address needs a /prefix")?;
    let net: ipnet::Ipv4Net = format!("{address}/{prefix}").parse()?;
    let key = PrivateKey::from_base64(&std::fs::read_to_string(&args[3])?)?;
    let mut config = WireGuardConfig::new(iface.clone(), key, address.parse()?, net.trunc());
    config.listen_port = args[2].parse()?;
    if let Some(t) = args.get(7) {
        config.threads = t.parse()?;
    }
    let tunnel = WireGuardTunnel::create(config)?;
    tunnel.set_peers(&[PeerConfig {
        public_key: PublicKey::from_base64(&args[4])?,
        endpoint: Some(args[5].clone()),
        allowed_ips: vec![args[6].parse()?],
        persistent_keepalive: None,
    }])?;
    // boringtun stops its device on SIGTERM/SIGINT; the UAPI then stops answering.
    while uapi_get(iface).is_ok() {
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(tunnel);
    Ok(())
}
