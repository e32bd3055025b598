//! A client of the WireGuard cross-platform UAPI (`/var/run/wireguard/<iface>.sock`), the
//! protocol `wg` speaks to userspace implementations (boringtun, wireguard-go).

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use crate::keys::PublicKey;
use crate::{MeshError, Result};

/// Where userspace WireGuard implementations put their control sockets.
pub(crate) const SOCKET_DIR: &str = "/var/run/wireguard";
const TIMEOUT: Duration = Duration::from_secs(5);
/// Most bytes read from a UAPI answer.
const MAX_ANSWER: usize = 4 << 20;

pub(crate) fn socket_path(iface: &str) -> PathBuf {
    PathBuf::from(SOCKET_DIR).join(format!("{iface}.sock"))
}

/// One peer as reported by `get=1`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UapiPeer {
    /// Public key.
    pub public_key: Option<PublicKey>,
    /// Endpoint in use.
    pub endpoint: Option<SocketAddr>,
    /// `last_handshake_time_sec` as reported. Standard implementations report seconds
    /// since the epoch; boringtun reports seconds since the handshake
    /// (cloudflare/boringtun#447).
    pub last_handshake_sec: Option<u64>,
    /// Allowed IPs as reported.
    pub allowed_ips: Vec<String>,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
}

fn exchange(iface: &str, request: &str) -> Result<Vec<String>> {
    let path = socket_path(iface);
    let ctx = |op: &str| format!("{op} {}", path.display());
    let mut stream =
        UnixStream::connect(&path).map_err(|e| MeshError::io(ctx("connecting to"), e))?;
    stream
        .set_read_timeout(Some(TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(TIMEOUT)))
        .map_err(|e| MeshError::io(ctx("configuring"), e))?;
    stream
        .write_all(request.as_bytes())
        .map_err(|e| MeshError::io(ctx("writing to"), e))?;
    let mut lines = Vec::new();
    let mut total = 0usize;
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        let n = reader
            .read_line(&mut line)
            .map_err(|e| MeshError::io(ctx("reading from"), e))?;
        total += n;
        if n == 0 || total > MAX_ANSWER {
            return Err(MeshError::Device {
                iface: iface.to_owned(),
                message: "UAPI answer ended without errno".into(),
            });
        }
        let line = line.trim_end().to_owned();
        if let Some(errno) = line.strip_prefix("errno=") {
            let errno: i32 = errno.parse().unwrap_or(-1);
            if errno != 0 {
                return Err(MeshError::Uapi {
                    iface: iface.to_owned(),
                    errno,
                });
            }
            return Ok(lines);
        }
        if !line.is_empty() {
            lines.push(line);
        }
    }
}

/// Sends a `set=1` request with `body` (lines `key=value`, each ending in `\n`).
pub(crate) fn uapi_set(iface: &str, body: &str) -> Result<()> {
    exchange(iface, &format!("set=1\n{body}\n")).map(drop)
}

/// Reads the peers of `iface` with `get=1`.
pub fn uapi_get(iface: &str) -> Result<Vec<UapiPeer>> {
    let lines = exchange(iface, "get=1\n\n")?;
    Ok(parse_peers(&lines))
}

fn parse_peers(lines: &[String]) -> Vec<UapiPeer> {
    let mut peers: Vec<UapiPeer> = Vec::new();
    for line in lines {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if key == "public_key" {
            peers.push(UapiPeer {
                public_key: PublicKey::from_base64(value).ok(),
                ..UapiPeer::default()
            });
            continue;
        }
        let Some(peer) = peers.last_mut() else {
            continue; // interface-level keys
        };
        match key {
            "endpoint" => peer.endpoint = value.parse().ok(),
            "last_handshake_time_sec" => peer.last_handshake_sec = value.parse().ok(),
            "allowed_ip" => peer.allowed_ips.push(value.to_owned()),
            "rx_bytes" => peer.rx_bytes = value.parse().unwrap_or(0),
            "tx_bytes" => peer.tx_bytes = value.parse().unwrap_or(0),
            _ => {}
        }
    }
    peers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_get_answer() {
        let key = "e".repeat(64);
        let lines: Vec<String> = [
            "own_public_key=00".to_owned(),
            "listen_port=51880".to_owned(),
            format!("public_key={key}"),
            "endpoint=10.0.0.2:51880".to_owned(),
            "allowed_ip=10.44.44.2/32".to_owned(),
            "last_handshake_time_sec=3".to_owned(),
            "rx_bytes=10".to_owned(),
            "tx_bytes=20".to_owned(),
            "public_key=nonsense".to_owned(),
        ]
        .into();
        let peers = parse_peers(&lines);
        assert_eq!(peers.len(), 2);
        assert_eq!(peers[0].public_key.map(|k| k.to_hex()), Some(key));
        assert_eq!(peers[0].endpoint, Some("10.0.0.2:51880".parse().unwrap()));
        assert_eq!(peers[0].last_handshake_sec, Some(3));
        assert_eq!((peers[0].rx_bytes, peers[0].tx_bytes), (10, 20));
        assert_eq!(peers[1].public_key, None);
    }
}
