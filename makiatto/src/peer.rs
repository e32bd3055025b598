//! External WireGuard peers (`maki peer`): input checks and the wg-quick configuration the
//! guide shows for `maki peer wg-config`.

use std::fmt::Write;
use std::net::Ipv4Addr;

use miette::Diagnostic;

use crate::config::Ipv4Cidr;
use crate::store::cluster::{external_peers::ExternalPeer, nodes::Node};

/// Keepalive sent by the peer, seconds: keeps NAT mappings open.
const KEEPALIVE_SECS: u16 = 25;

/// Why a peer is not acceptable.
#[derive(Debug, thiserror::Error, Diagnostic)]
#[non_exhaustive]
pub enum PeerError {
    /// The name is not one DNS-style label.
    #[error("peer name `{0}` is not 1 to 63 lower-case letters, digits and hyphens")]
    #[diagnostic(help(
        "name the observability peer with \"o11y\" at its start or end, e.g. o11y-grafana"
    ))]
    Name(String),
    /// The key is not a WireGuard public key.
    #[error("`{0}` is not a WireGuard public key (44 base64 characters)")]
    #[diagnostic(help("use the output of `wg pubkey`, e.g. `wg genkey | wg pubkey`"))]
    Key(String),
    /// The peer has no usable mesh address.
    #[error("peer `{0}` has no mesh address")]
    NoAddress(String),
    /// The mesh network has no free address left.
    #[error("no free address left in the mesh network {0}")]
    Full(Ipv4Cidr),
    /// The requested address is outside the mesh or taken.
    #[error("{0} is outside the mesh network or already in use")]
    AddressTaken(Ipv4Addr),
    /// No peer of that name.
    #[error("no external peer named `{0}`")]
    #[diagnostic(help("list the peers with `maki peer list`"))]
    Unknown(String),
    /// No node has a mesh address and key yet.
    #[error("no node of the cluster is on the mesh yet")]
    #[diagnostic(help("wait for the nodes to join (`maki health`), then ask again"))]
    NoNodes,
}

/// Checks a peer name.
pub fn check_name(name: &str) -> Result<(), PeerError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(PeerError::Name(name.to_owned()))
    }
}

/// Checks a WireGuard public key: base64 of 32 bytes.
pub fn check_key(key: &str) -> Result<(), PeerError> {
    let b64 = |c: u8| c.is_ascii_alphanumeric() || c == b'+' || c == b'/';
    let bytes = key.as_bytes();
    // 32 bytes are 43 base64 digits and one `=`; the last digit carries 4 bits, so its
    // low 2 bits are zero.
    let ok = bytes.len() == 44
        && bytes[43] == b'='
        && bytes[..43].iter().all(|&c| b64(c))
        && b"AEIMQUYcgkosw048".contains(&bytes[42]);
    if ok {
        Ok(())
    } else {
        Err(PeerError::Key(key.to_owned()))
    }
}

/// The lowest host address of `cidr` not in `used` (the network and broadcast addresses
/// are never handed out).
pub fn allocate(cidr: Ipv4Cidr, used: &[Ipv4Addr]) -> Option<Ipv4Addr> {
    let network = u64::from(u32::from(cidr.network));
    let size = 1u64 << (32 - u32::from(cidr.prefix_len));
    if size < 4 {
        return None;
    }
    let last = network + size - 2;
    (network + 1..=last)
        .map(|a| Ipv4Addr::from(a as u32))
        .find(|a| !used.contains(a))
}

/// The broadcast (last) address of `cidr`.
pub fn broadcast(cidr: Ipv4Cidr) -> Ipv4Addr {
    let host_bits = u32::MAX
        .checked_shr(u32::from(cidr.prefix_len))
        .unwrap_or(0);
    Ipv4Addr::from(u32::from(cidr.network) | host_bits)
}

/// Whether telemetry is sent to this peer: its name starts or ends with `o11y`.
pub fn is_o11y(name: &str) -> bool {
    name.starts_with("o11y") || name.ends_with("o11y")
}

/// The wg-quick configuration of `peer`: its interface (the private key left for the user
/// to fill in) and one `[Peer]` per node on the mesh, sorted by name.
pub fn wg_quick_config(
    peer: &ExternalPeer,
    nodes: &[Node],
    mesh_port: u16,
) -> Result<String, PeerError> {
    let address: Ipv4Addr = peer
        .mesh_address
        .parse()
        .map_err(|_| PeerError::NoAddress(peer.name.clone()))?;
    let mut members: Vec<&Node> = nodes
        .iter()
        .filter(|n| !n.wg_public_key.is_empty() && n.mesh_address.parse::<Ipv4Addr>().is_ok())
        .collect();
    if members.is_empty() {
        return Err(PeerError::NoNodes);
    }
    members.sort_by(|a, b| a.name.cmp(&b.name));
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(
        out,
        "[Interface]\nPrivateKey = <private-key>\nAddress = {address}/32\n"
    );
    for n in members {
        let endpoint = if n.wg_endpoint.is_empty() {
            format!("{}:{mesh_port}", n.ipv4)
        } else {
            n.wg_endpoint.clone()
        };
        let _ = writeln!(
            out,
            "# {}\n[Peer]\nPublicKey = {}\nEndpoint = {endpoint}\nAllowedIPs = {}/32\nPersistentKeepalive = {KEEPALIVE_SECS}\n",
            n.name, n.wg_public_key, n.mesh_address
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";

    fn node(name: &str, key: &str, mesh: &str, endpoint: &str) -> Node {
        Node {
            name: name.into(),
            wg_public_key: key.into(),
            wg_endpoint: endpoint.into(),
            mesh_address: mesh.into(),
            ipv4: "203.0.113.9".into(),
            ipv6: None,
            latitude: 0.0,
            longitude: 0.0,
            is_nameserver: true,
            site_id: String::new(),
            created_ms: 0,
        }
    }

    fn peer(mesh: &str) -> ExternalPeer {
        ExternalPeer {
            name: "o11y".into(),
            wg_public_key: KEY.into(),
            endpoint: Some("198.51.100.7".into()),
            mesh_address: mesh.into(),
            created_ms: 0,
        }
    }

    #[test]
    fn allocation_takes_the_lowest_free_host() {
        let cidr: Ipv4Cidr = "10.44.44.0/24".parse().unwrap();
        let ip = |d| Ipv4Addr::new(10, 44, 44, d);
        assert_eq!(allocate(cidr, &[]), Some(ip(1)));
        assert_eq!(allocate(cidr, &[ip(1), ip(2), ip(4)]), Some(ip(3)));
        let all: Vec<Ipv4Addr> = (1..=254).map(ip).collect();
        assert_eq!(allocate(cidr, &all), None, "broadcast .255 is never given");
        assert_eq!(allocate("10.0.0.0/31".parse().unwrap(), &[]), None);
        assert_eq!(broadcast(cidr), ip(255));
        assert_eq!(broadcast("0.0.0.0/0".parse().unwrap()), Ipv4Addr::BROADCAST);
        assert_eq!(
            broadcast("10.0.0.1/32".parse().unwrap()),
            Ipv4Addr::new(10, 0, 0, 1)
        );
        assert_eq!(
            allocate(
                "10.0.0.4/30".parse().unwrap(),
                &[Ipv4Addr::new(10, 0, 0, 5)]
            ),
            Some(Ipv4Addr::new(10, 0, 0, 6))
        );
    }

    #[test]
    fn names_and_keys() {
        assert!(check_name("o11y-grafana").is_ok());
        assert!(check_name("O11y").is_err());
        assert!(check_name("").is_err());
        assert!(check_key(KEY).is_ok());
        assert!(check_key(&KEY[..43]).is_err());
        assert!(
            check_key("xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dh=").is_err(),
            "stray low bits"
        );
        assert!(check_key("xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZq!8Dg=").is_err());
        assert!(is_o11y("o11y") && is_o11y("metrics-o11y") && is_o11y("o11y-grafana"));
        assert!(!is_o11y("grafana"));
    }

    #[test]
    fn wg_quick_lists_every_node_on_the_mesh() {
        let nodes = [
            node("vector", KEY, "10.44.44.1", "203.0.113.1:51880"),
            node("klukai", KEY, "10.44.44.2", ""),
            node("joining", "", "", ""),
        ];
        let text = wg_quick_config(&peer("10.44.44.5"), &nodes, 51880).unwrap();
        assert!(
            text.starts_with("[Interface]\nPrivateKey = <private-key>\nAddress = 10.44.44.5/32\n"),
            "{text}"
        );
        let klukai = text.find("# klukai").unwrap();
        let vector = text.find("# vector").unwrap();
        assert!(klukai < vector, "sorted by name");
        assert!(
            text.contains("Endpoint = 203.0.113.9:51880\nAllowedIPs = 10.44.44.2/32\n"),
            "{text}"
        );
        assert!(text.contains(
            "Endpoint = 203.0.113.1:51880\nAllowedIPs = 10.44.44.1/32\nPersistentKeepalive = 25\n"
        ));
        assert!(!text.contains("joining"));
        assert!(matches!(
            wg_quick_config(&peer(""), &nodes, 51880),
            Err(PeerError::NoAddress(_))
        ));
        assert!(matches!(
            wg_quick_config(&peer("10.44.44.5"), &nodes[2..], 51880),
            Err(PeerError::NoNodes)
        ));
    }
}
