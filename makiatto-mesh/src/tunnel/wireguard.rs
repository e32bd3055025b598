//! Userspace WireGuard with boringtun.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::net::{Ipv4Addr, SocketAddr, ToSocketAddrs as _};
use std::process::Command;
use std::sync::{Mutex, PoisonError, mpsc};
use std::time::{Duration, Instant};

use boringtun::device::{DeviceConfig, DeviceHandle};
use ipnet::Ipv4Net;
use tracing::{debug, info, warn};

use super::sockbuf;
use super::uapi::{self, uapi_get, uapi_set};
use super::{DEFAULT_LISTEN_PORT, DEFAULT_MTU, PeerChanges, PeerConfig, PeerStatus, Tunnel};
use crate::keys::{PrivateKey, PublicKey};
use crate::{MeshError, Result};

/// Default of [`WireGuardConfig::quiet_after`]. WireGuard rekeys every 2 minutes, so a
/// live peer handshakes more often than this.
pub const DEFAULT_QUIET_AFTER: Duration = Duration::from_secs(135);

/// Default of [`WireGuardConfig::socket_buffer`]: 7 MiB, as wireguard-go sets. With the
/// kernel's default (208 KiB) a single TCP stream through the tunnel overflows the receive
/// queue of the UDP socket and retransmits (`BENCHMARKS.md`, Mesh).
pub const DEFAULT_SOCKET_BUFFER: usize = 7 << 20;

/// Default of [`WireGuardConfig::tx_queue_len`]. The kernel gives a TUN device 500 and
/// drops what does not fit while boringtun encrypts; on the 2-core bench 1000 still lost
/// packets under 1 stream, 2000 under 4 streams, 4000 none (`BENCHMARKS.md`, Mesh). A
/// full queue is ~5.7 MB, ~23 ms at 2 Gbit/s.
pub const DEFAULT_TX_QUEUE_LEN: u32 = 4000;

/// How often the count of UDP sockets is checked for new sockets of the device (one per
/// peer, opened after its first packet) to size their buffers (see `sockbuf::Sizer`).
const SOCKET_SCAN_EVERY: Duration = Duration::from_secs(1);

/// Settings of a [`WireGuardTunnel`].
#[derive(Clone)]
pub struct WireGuardConfig {
    /// Interface name (at most 15 bytes).
    pub interface: String,
    /// This node's private key.
    pub private_key: PrivateKey,
    /// UDP listen port (default [`DEFAULT_LISTEN_PORT`]).
    pub listen_port: u16,
    /// Interface MTU (default [`DEFAULT_MTU`]).
    pub mtu: u32,
    /// This node's mesh address.
    pub mesh_address: Ipv4Addr,
    /// The mesh range (routed through the interface).
    pub mesh_net: Ipv4Net,
    /// boringtun worker threads (default 1: on small machines more threads are slower,
    /// see `BENCHMARKS.md`).
    pub threads: usize,
    /// A peer without a handshake for this long is "quiet": the host name in its
    /// endpoint is resolved again on the next [`Tunnel::set_peers`] and a new address
    /// applied (default [`DEFAULT_QUIET_AFTER`]).
    pub quiet_after: Duration,
    /// Receive and send buffer of the device's UDP sockets, in bytes (default
    /// [`DEFAULT_SOCKET_BUFFER`]; 0 keeps the kernel's default). Above
    /// `net.core.rmem_max` only with `CAP_NET_ADMIN`.
    pub socket_buffer: usize,
    /// Transmit queue length of the TUN interface, in packets (default
    /// [`DEFAULT_TX_QUEUE_LEN`]).
    pub tx_queue_len: u32,
}

impl WireGuardConfig {
    /// Defaults for `interface` with `private_key` at `mesh_address` in `mesh_net`.
    pub fn new(
        interface: impl Into<String>,
        private_key: PrivateKey,
        mesh_address: Ipv4Addr,
        mesh_net: Ipv4Net,
    ) -> Self {
        WireGuardConfig {
            interface: interface.into(),
            private_key,
            listen_port: DEFAULT_LISTEN_PORT,
            mtu: DEFAULT_MTU,
            mesh_address,
            mesh_net,
            threads: 1,
            quiet_after: DEFAULT_QUIET_AFTER,
            socket_buffer: DEFAULT_SOCKET_BUFFER,
            tx_queue_len: DEFAULT_TX_QUEUE_LEN,
        }
    }
}

impl fmt::Debug for WireGuardConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WireGuardConfig")
            .field("interface", &self.interface)
            .field("public_key", &self.private_key.public_key())
            .field("listen_port", &self.listen_port)
            .field("mtu", &self.mtu)
            .field("mesh_address", &self.mesh_address)
            .field("mesh_net", &self.mesh_net)
            .field("threads", &self.threads)
            .field("quiet_after", &self.quiet_after)
            .field("socket_buffer", &self.socket_buffer)
            .field("tx_queue_len", &self.tx_queue_len)
            .finish()
    }
}

/// What was last applied for a peer.
#[derive(Debug, Clone)]
struct Applied {
    config: PeerConfig,
    endpoint: Option<SocketAddr>,
    at: Instant,
}

/// A boringtun device on a TUN interface, with its UAPI socket at
/// `/var/run/wireguard/<iface>.sock`. Dropping it removes the device.
///
/// Needs `CAP_NET_ADMIN` (root) and `/dev/net/tun`.
pub struct WireGuardTunnel {
    config: WireGuardConfig,
    /// The current mesh address (`config.mesh_address` until a move).
    address: Mutex<Ipv4Addr>,
    device: Mutex<Option<DeviceHandle>>,
    applied: Mutex<BTreeMap<PublicKey, Applied>>,
    /// Sizes the buffers of the device's UDP sockets as they appear; stops when this is
    /// dropped.
    sizer: Option<(mpsc::Sender<()>, std::thread::JoinHandle<()>)>,
}

impl fmt::Debug for WireGuardTunnel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WireGuardTunnel")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl WireGuardTunnel {
    /// Creates the interface, sets the key and port, assigns the mesh address (with the
    /// mesh range routed through the interface), sets the MTU and brings it up.
    /// Blocking.
    pub fn create(config: WireGuardConfig) -> Result<Self> {
        let iface = config.interface.clone();
        if iface.is_empty() || iface.len() > 15 {
            return Err(MeshError::Config(format!(
                "interface name {iface:?} must be 1 to 15 bytes"
            )));
        }
        if !config.mesh_net.contains(&config.mesh_address) {
            return Err(MeshError::Config(format!(
                "mesh address {} is outside the mesh CIDR {}",
                config.mesh_address, config.mesh_net
            )));
        }
        let device = DeviceHandle::new(
            &iface,
            DeviceConfig {
                n_threads: config.threads.max(1),
                use_connected_socket: true,
                use_multi_queue: false,
                uapi_fd: -1,
            },
        )
        .map_err(|e| MeshError::Device {
            iface: iface.clone(),
            message: format!("{e:?}"),
        })?;
        let mut tunnel = WireGuardTunnel {
            address: Mutex::new(config.mesh_address),
            config,
            device: Mutex::new(Some(device)),
            applied: Mutex::new(BTreeMap::new()),
            sizer: None,
        };
        let c = &tunnel.config;
        uapi_set(
            &iface,
            &format!(
                "private_key={}\nlisten_port={}\n",
                c.private_key.to_hex(),
                c.listen_port
            ),
        )?;
        ip(&["link", "set", "dev", &iface, "mtu", &c.mtu.to_string()])?;
        ip(&[
            "link",
            "set",
            "dev",
            &iface,
            "txqueuelen",
            &c.tx_queue_len.to_string(),
        ])?;
        let cidr = format!("{}/{}", c.mesh_address, c.mesh_net.prefix_len());
        ip(&["address", "replace", &cidr, "dev", &iface])?;
        ip(&["link", "set", "dev", &iface, "up"])?;
        info!(iface = %iface, address = %cidr, port = c.listen_port, "WireGuard interface up");
        if c.socket_buffer > 0 {
            tunnel.sizer = Some(spawn_sizer(c.listen_port, c.socket_buffer)?);
        }
        Ok(tunnel)
    }

    /// The configuration the tunnel was created with.
    pub fn config(&self) -> &WireGuardConfig {
        &self.config
    }

    /// The public key of this node.
    pub fn public_key(&self) -> PublicKey {
        self.config.private_key.public_key()
    }
}

impl Drop for WireGuardTunnel {
    fn drop(&mut self) {
        // Dropping the handle stops boringtun's threads and removes the UAPI socket; the
        // TUN interface goes with its last file descriptor.
        let handle = self
            .device
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        drop(handle);
        if let Some((stop, thread)) = self.sizer.take() {
            drop(stop);
            let _ = thread.join();
        }
        let _ = std::fs::remove_file(uapi::socket_path(&self.config.interface));
    }
}

impl Tunnel for WireGuardTunnel {
    fn interface(&self) -> Option<&str> {
        Some(&self.config.interface)
    }

    fn mesh_address(&self) -> Ipv4Addr {
        *self.address.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set_mesh_address(&self, address: Ipv4Addr) -> Result<()> {
        let net = self.config.mesh_net;
        if !net.contains(&address) {
            return Err(MeshError::Config(format!(
                "mesh address {address} is outside the mesh CIDR {net}"
            )));
        }
        let mut current = self.address.lock().unwrap_or_else(PoisonError::into_inner);
        if *current == address {
            return Ok(());
        }
        let iface = &self.config.interface;
        let cidr = |a: Ipv4Addr| format!("{a}/{}", net.prefix_len());
        // The old one first: removing a primary address also drops the secondaries of
        // its subnet (unless promote_secondaries), which the new one would be.
        // Already gone after an earlier, half-done attempt: fine.
        if let Err(error) = ip(&["address", "del", &cidr(*current), "dev", iface]) {
            debug!(%error, "removing the old mesh address");
        }
        ip(&["address", "replace", &cidr(address), "dev", iface])?;
        info!(iface = %iface, from = %*current, to = %address, "mesh address moved");
        *current = address;
        Ok(())
    }

    fn mesh_net(&self) -> Ipv4Net {
        self.config.mesh_net
    }

    fn set_peers(&self, desired: &[PeerConfig]) -> Result<PeerChanges> {
        let iface = &self.config.interface;
        let own = self.public_key();
        let desired: Vec<PeerConfig> = desired
            .iter()
            .filter(|p| p.public_key != own)
            .cloned()
            .collect();
        let live: BTreeMap<PublicKey, PeerStatus> = self
            .peers()?
            .into_iter()
            .map(|p| (p.public_key, p))
            .collect();
        let mut guard = self.applied.lock().unwrap_or_else(PoisonError::into_inner);
        // Work on a copy: it replaces the record only once the device accepted the change.
        let mut applied = guard.clone();
        // Plan against what the device really has: a peer we applied that is missing from
        // it (lost, or removed by hand) is added again.
        applied.retain(|k, _| live.contains_key(k));
        let current: BTreeMap<PublicKey, PeerConfig> = applied
            .iter()
            .map(|(k, a)| (*k, a.config.clone()))
            .collect();
        let plan = plan(&current, &desired);
        // One UAPI request per peer operation: boringtun keeps `remove`, `endpoint` and
        // the keepalive of one peer section for the next sections of the same request.
        let mut requests: Vec<(PublicKey, String)> = Vec::new();
        let mut changes = PeerChanges::default();
        for key in &plan.remove {
            requests.push((*key, remove_request(key)));
            applied.remove(key);
            changes.removed += 1;
        }
        let now = Instant::now();
        for peer in &plan.keep {
            // Re-resolve host names of quiet peers.
            let Some(prev) = applied.get(&peer.public_key) else {
                continue;
            };
            let Some(endpoint) = &peer.endpoint else {
                continue;
            };
            if endpoint.parse::<SocketAddr>().is_ok() {
                continue;
            }
            let quiet = match live.get(&peer.public_key).and_then(|s| s.since_handshake) {
                Some(since) => since > self.config.quiet_after,
                None => now.duration_since(prev.at) > self.config.quiet_after,
            };
            if !quiet {
                continue;
            }
            match resolve(endpoint) {
                Ok(addr) if Some(addr) != prev.endpoint => {
                    info!(peer = %peer.public_key, %endpoint, %addr, "quiet peer's endpoint moved");
                    write_peer(&mut requests, peer, Some(addr));
                    applied.insert(
                        peer.public_key,
                        Applied {
                            config: peer.clone(),
                            endpoint: Some(addr),
                            at: now,
                        },
                    );
                    changes.updated += 1;
                }
                Ok(_) => {
                    if let Some(a) = applied.get_mut(&peer.public_key) {
                        a.at = now;
                    }
                }
                Err(error) => debug!(%error, peer = %peer.public_key, "re-resolving failed"),
            }
        }
        for (peer, replace) in plan
            .add
            .iter()
            .map(|p| (p, false))
            .chain(plan.update.iter().map(|p| (p, true)))
        {
            let endpoint = match peer.endpoint.as_deref().map(resolve).transpose() {
                Ok(e) => e,
                Err(error) => {
                    // A new peer is added on a later pass; a changed one keeps its old
                    // configuration meanwhile.
                    warn!(%error, peer = %peer.public_key, "skipping a peer whose endpoint does not resolve");
                    continue;
                }
            };
            write_peer(&mut requests, peer, endpoint);
            applied.insert(
                peer.public_key,
                Applied {
                    config: peer.clone(),
                    endpoint,
                    at: now,
                },
            );
            if replace {
                changes.updated += 1;
            } else {
                changes.added += 1;
            }
        }
        // A peer whose request the device refuses is left as it was (retried next pass);
        // the other peers' changes still go in.
        let mut failed: Vec<PublicKey> = Vec::new();
        for (key, request) in &requests {
            if failed.contains(key) {
                continue;
            }
            if let Err(error) = uapi_set(iface, request) {
                warn!(%error, peer = %key, "WireGuard refused a peer change; retrying next pass");
                failed.push(*key);
            }
        }
        for key in failed {
            match guard.get(&key) {
                Some(prev) if live.contains_key(&key) => {
                    applied.insert(key, prev.clone());
                }
                _ => {
                    applied.remove(&key);
                }
            }
        }
        if !requests.is_empty() {
            debug!(iface = %iface, ?changes, "WireGuard peers reconciled");
        }
        *guard = applied;
        Ok(changes)
    }

    fn peers(&self) -> Result<Vec<PeerStatus>> {
        let peers = uapi_get(&self.config.interface)?;
        Ok(peers
            .into_iter()
            .filter_map(|p| {
                Some(PeerStatus {
                    public_key: p.public_key?,
                    endpoint: p.endpoint,
                    // boringtun reports the time since the handshake (see `UapiPeer`).
                    since_handshake: p.last_handshake_sec.map(Duration::from_secs),
                    rx_bytes: p.rx_bytes,
                    tx_bytes: p.tx_bytes,
                })
            })
            .collect())
    }
}

/// Sizes the buffers of the listening sockets now, then of the connected sockets as
/// boringtun opens them (one per peer after its first packet, again after it expired), until
/// the sender is dropped. A pass looks at the sockets only when the count of UDP sockets
/// changed or every [`sockbuf::FULL_PASS_EVERY`] (see [`sockbuf::Sizer`]).
fn spawn_sizer(port: u16, bytes: usize) -> Result<(mpsc::Sender<()>, std::thread::JoinHandle<()>)> {
    let mut warned = false;
    let mut capped_warned = false;
    let mut sizer = sockbuf::Sizer::new(port, bytes);
    let mut pass = move || match sizer.pass() {
        Ok(None) => {}
        Ok(Some(done)) => {
            if done.sized > 0 {
                debug!(
                    port,
                    bytes,
                    sockets = done.sized,
                    "UDP socket buffers sized"
                );
            }
            // Once per socket: a failed socket is not tried again.
            for (inode, error) in &done.failed {
                warn!(port, inode, %error, "cannot size the buffers of a UDP socket");
            }
            if done.capped && !capped_warned {
                capped_warned = true;
                warn!(
                    port,
                    bytes,
                    "UDP socket buffers capped at net.core.rmem_max/wmem_max (no CAP_NET_ADMIN): \
                     expect losses under load"
                );
            }
        }
        Err(error) => {
            if !warned {
                warned = true;
                warn!(%error, port, "cannot size the UDP socket buffers");
            }
        }
    };
    pass();
    let (stop, stopped) = mpsc::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("wg-sockbuf".into())
        .spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(SOCKET_SCAN_EVERY)
            {
                pass();
            }
        })
        .map_err(|e| MeshError::io("starting the socket buffer thread", e))?;
    Ok((stop, thread))
}

fn remove_request(key: &PublicKey) -> String {
    format!("public_key={}\nremove=true\n", key.to_hex())
}

/// The requests that (re)configure one peer: remove it, then add it. boringtun cannot
/// modify a peer in place (it panics on an existing key), so every add is preceded by a
/// removal, which also makes a retried add after a partial failure harmless.
fn write_peer(
    requests: &mut Vec<(PublicKey, String)>,
    peer: &PeerConfig,
    endpoint: Option<SocketAddr>,
) {
    requests.push((peer.public_key, remove_request(&peer.public_key)));
    let mut body = format!("public_key={}\n", peer.public_key.to_hex());
    if let Some(e) = endpoint {
        let _ = writeln!(body, "endpoint={e}");
    }
    if let Some(k) = peer.persistent_keepalive {
        let _ = writeln!(body, "persistent_keepalive_interval={k}");
    }
    let _ = writeln!(body, "replace_allowed_ips=true");
    for net in &peer.allowed_ips {
        let _ = writeln!(body, "allowed_ip={net}");
    }
    requests.push((peer.public_key, body));
}

/// Resolves `host:port` (blocking), preferring IPv4.
pub(crate) fn resolve(endpoint: &str) -> Result<SocketAddr> {
    let addrs: Vec<SocketAddr> = endpoint
        .to_socket_addrs()
        .map_err(|source| MeshError::Resolve {
            endpoint: endpoint.to_owned(),
            source,
        })?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| MeshError::Resolve {
            endpoint: endpoint.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no address"),
        })
}

/// A reconciliation plan.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    pub(crate) remove: Vec<PublicKey>,
    pub(crate) add: Vec<PeerConfig>,
    pub(crate) update: Vec<PeerConfig>,
    pub(crate) keep: Vec<PeerConfig>,
}

/// Compares the applied peers with the desired ones (the last desired entry of a key wins).
pub(crate) fn plan(current: &BTreeMap<PublicKey, PeerConfig>, desired: &[PeerConfig]) -> Plan {
    let desired: BTreeMap<PublicKey, &PeerConfig> =
        desired.iter().map(|p| (p.public_key, p)).collect();
    let mut plan = Plan::default();
    for key in current.keys() {
        if !desired.contains_key(key) {
            plan.remove.push(*key);
        }
    }
    for (key, want) in desired {
        match current.get(&key) {
            None => plan.add.push(want.clone()),
            Some(have) if have != want => plan.update.push(want.clone()),
            Some(_) => plan.keep.push(want.clone()),
        }
    }
    plan
}

/// Applies a plan to a peer map (for backends without a device) and counts the changes.
pub(crate) fn diff(
    current: &BTreeMap<PublicKey, PeerConfig>,
    desired: &[PeerConfig],
) -> (Vec<PeerConfig>, PeerChanges) {
    let plan = plan(current, desired);
    let changes = PeerChanges {
        added: plan.add.len(),
        removed: plan.remove.len(),
        updated: plan.update.len(),
    };
    let mut next = plan.keep;
    next.extend(plan.add);
    next.extend(plan.update);
    (next, changes)
}

/// Runs `ip` with `args`.
pub(crate) fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| MeshError::io("running `ip` (install iproute2)", e))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(MeshError::Command {
            command: format!("ip {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(k: u8, endpoint: &str) -> PeerConfig {
        PeerConfig {
            public_key: PublicKey([k; 32]),
            endpoint: Some(endpoint.into()),
            allowed_ips: vec![format!("10.44.44.{k}/32").parse().unwrap()],
            persistent_keepalive: Some(25),
        }
    }

    #[test]
    fn plan_adds_removes_and_updates() {
        let current: BTreeMap<_, _> = [peer(1, "a:1"), peer(2, "b:1"), peer(3, "c:1")]
            .into_iter()
            .map(|p| (p.public_key, p))
            .collect();
        let desired = vec![peer(1, "a:1"), peer(2, "b:2"), peer(4, "d:1")];
        let p = plan(&current, &desired);
        assert_eq!(p.remove, vec![PublicKey([3; 32])]);
        assert_eq!(p.add, vec![peer(4, "d:1")]);
        assert_eq!(p.update, vec![peer(2, "b:2")]);
        assert_eq!(p.keep, vec![peer(1, "a:1")]);
        let (next, changes) = diff(&current, &desired);
        assert_eq!(next.len(), 3);
        assert_eq!(
            changes,
            PeerChanges {
                added: 1,
                removed: 1,
                updated: 1
            }
        );
    }

    #[test]
    fn a_peer_is_removed_then_added_in_separate_requests() {
        let mut requests = Vec::new();
        write_peer(
            &mut requests,
            &peer(7, "x:1"),
            Some("10.0.0.7:51880".parse().unwrap()),
        );
        let key = PublicKey([7; 32]).to_hex();
        assert!(requests.iter().all(|(k, _)| *k == PublicKey([7; 32])));
        let requests: Vec<String> = requests.into_iter().map(|(_, r)| r).collect();
        assert_eq!(
            requests,
            vec![
                format!("public_key={key}\nremove=true\n"),
                format!(
                    "public_key={key}\nendpoint=10.0.0.7:51880\n\
                     persistent_keepalive_interval=25\nreplace_allowed_ips=true\nallowed_ip=10.44.44.7/32\n"
                ),
            ]
        );
    }

    #[test]
    fn resolves_names_and_literals() {
        assert_eq!(
            resolve("10.1.2.3:51880").unwrap(),
            "10.1.2.3:51880".parse().unwrap()
        );
        assert_eq!(resolve("localhost:51880").unwrap().port(), 51880);
        assert!(resolve("no-such-host.invalid:1").is_err());
    }
}
