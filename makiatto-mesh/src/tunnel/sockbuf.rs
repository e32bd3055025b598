//! Sizing the UDP socket buffers of the boringtun device.
//!
//! boringtun 0.7 opens its sockets itself (two listening sockets on the listen port, then
//! one connected socket per peer after its first valid packet) and offers no hook to set
//! options on them. With the kernel's default buffers (`net.core.rmem_default`, 208 KiB)
//! a burst of tunnel traffic overflows the receive queue and TCP inside the tunnel
//! retransmits (`BENCHMARKS.md`, Mesh).
//!
//! So this finds them among the process's own file descriptors: the UDP sockets bound to
//! the listen port are read from `/proc/self/net/udp{,6}` (by inode), the descriptors that
//! point at those inodes from `/proc/self/fd`, and each one is duplicated with
//! `pidfd_getfd(2)` on our own process. The duplicate is an owned descriptor of the same
//! socket, so the options are set without `unsafe` and without borrowing a descriptor
//! number that boringtun could close meanwhile; the duplicate's inode is checked again
//! before anything is set, so a number reused in between is left alone.

use std::collections::BTreeSet;
use std::io;
use std::os::fd::{AsFd, OwnedFd};

use rustix::process::{PidfdFlags, PidfdGetfdFlags, getpid, pidfd_getfd, pidfd_open};

/// What [`size_udp_sockets`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Resized {
    /// Sockets whose buffers were raised.
    pub(crate) sized: usize,
    /// Whether the kernel capped some at `net.core.{r,w}mem_max` (no `CAP_NET_ADMIN`).
    pub(crate) capped: bool,
}

/// The inodes of the UDP sockets bound to local `port`, read from `/proc/net/udp` or
/// `/proc/net/udp6` text (the header line is skipped; malformed lines are ignored).
pub(crate) fn udp_inodes_on_port(table: &str, port: u16) -> BTreeSet<u64> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ...
            let local = fields.get(1)?;
            let (_, hex_port) = local.rsplit_once(':')?;
            let p = u16::from_str_radix(hex_port, 16).ok()?;
            let inode: u64 = fields.get(9)?.parse().ok()?;
            (p == port && inode != 0).then_some(inode)
        })
        .collect()
}

/// The socket inode a `/proc/self/fd` link points at (`socket:[12345]`).
fn socket_inode(link: &std::path::Path) -> Option<u64> {
    let text = link.to_str()?;
    text.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Raises the receive and send buffers of every UDP socket of this process bound to
/// `port` to at least `bytes` (`SO_RCVBUFFORCE`/`SO_SNDBUFFORCE`, falling back to
/// `SO_RCVBUF`/`SO_SNDBUF`, which the kernel caps at `net.core.{r,w}mem_max`, when the
/// process lacks `CAP_NET_ADMIN`). `known` holds the inodes handled by earlier calls (kept
/// by the caller, pruned here to the sockets that still exist): only new sockets are
/// looked for, so a call with nothing to do costs one read of `/proc/self/net/udp{,6}`,
/// not a walk over every descriptor of the process.
pub(crate) fn size_udp_sockets(
    port: u16,
    bytes: usize,
    known: &mut BTreeSet<u64>,
) -> io::Result<Resized> {
    let mut on_port = BTreeSet::new();
    for table in ["/proc/self/net/udp", "/proc/self/net/udp6"] {
        match std::fs::read_to_string(table) {
            Ok(text) => on_port.extend(udp_inodes_on_port(&text, port)),
            // No IPv6 in this kernel or namespace.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    known.retain(|inode| on_port.contains(inode));
    let mut wanted: BTreeSet<u64> = on_port.difference(known).copied().collect();
    let mut done = Resized::default();
    if wanted.is_empty() {
        return Ok(done);
    }
    let mut pidfd: Option<OwnedFd> = None;
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let Ok(entry) = entry else { continue };
        // Descriptors close while we look: a vanished one is simply skipped.
        let Ok(link) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let Some(inode) = socket_inode(&link) else {
            continue;
        };
        if !wanted.contains(&inode) {
            continue;
        }
        let Some(number) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let pidfd = match &pidfd {
            Some(p) => p,
            None => pidfd.insert(pidfd_open(getpid(), PidfdFlags::empty())?),
        };
        let Ok(socket) = pidfd_getfd(pidfd, number, PidfdGetfdFlags::empty()) else {
            continue;
        };
        // The number may have been closed and reused since it was read.
        if rustix::fs::fstat(&socket).map(|s| s.st_ino) != Ok(inode) {
            continue;
        }
        // One socket can have several descriptors (boringtun clones them).
        wanted.remove(&inode);
        known.insert(inode);
        match raise(&socket, bytes)? {
            Raised::Already => {}
            Raised::Yes => done.sized += 1,
            Raised::Capped => {
                done.sized += 1;
                done.capped = true;
            }
        }
    }
    Ok(done)
}

enum Raised {
    Already,
    Yes,
    Capped,
}

/// Sets both buffers of `socket` to `bytes` unless they are that large already. The
/// kernel reports twice the value set (it counts its bookkeeping), hence the halving.
fn raise(socket: impl AsFd, bytes: usize) -> io::Result<Raised> {
    use rustix::net::sockopt;
    let fd = socket.as_fd();
    if sockopt::socket_recv_buffer_size(fd)? / 2 >= bytes
        && sockopt::socket_send_buffer_size(fd)? / 2 >= bytes
    {
        return Ok(Raised::Already);
    }
    let mut capped = false;
    if sockopt::set_socket_recv_buffer_size_force(fd, bytes).is_err() {
        sockopt::set_socket_recv_buffer_size(fd, bytes)?;
        capped = true;
    }
    if sockopt::set_socket_send_buffer_size_force(fd, bytes).is_err() {
        sockopt::set_socket_send_buffer_size(fd, bytes)?;
        capped = true;
    }
    Ok(if capped { Raised::Capped } else { Raised::Yes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_proc_tables() {
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
                  \x20 12: 00000000:CAE8 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4242 2 0000000000000000 0\n\
                  \x20 13: 0100000A:CAE8 0200000A:CAE8 01 00000000:00000000 00:00000000 00000000     0        0 4243 2 0000000000000000 7\n\
                  \x20 14: 00000000:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 99 2 0000000000000000 0\n\
                  garbage\n";
        assert_eq!(udp_inodes_on_port(v4, 51944), BTreeSet::from([4242, 4243]));
        let v6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
                  \x20 1: 00000000000000000000000000000000:CAE8 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 5151 2 0000000000000000 0\n";
        assert_eq!(udp_inodes_on_port(v6, 51944), BTreeSet::from([5151]));
        assert!(udp_inodes_on_port(v6, 53).is_empty());
    }

    fn udp_socket(port: u16) -> OwnedFd {
        use rustix::net::{AddressFamily, SocketType, bind, ipproto, socket, sockopt};
        let fd = socket(AddressFamily::INET, SocketType::DGRAM, Some(ipproto::UDP)).unwrap();
        sockopt::set_socket_reuseaddr(&fd, true).unwrap();
        bind(&fd, &std::net::SocketAddr::from(([127, 0, 0, 1], port))).unwrap();
        fd
    }

    fn port_of(fd: &OwnedFd) -> u16 {
        let addr = rustix::net::getsockname(fd).unwrap();
        std::net::SocketAddr::try_from(addr).unwrap().port()
    }

    /// Finds the sockets through `/proc` and raises their buffers: a listening socket and
    /// a connected one on the same port (as boringtun has them), and not a socket on
    /// another port. Above `net.core.rmem_max` only with `CAP_NET_ADMIN` (root).
    #[test]
    fn raises_the_buffers_of_the_sockets_on_the_port() {
        use rustix::net::sockopt::{socket_recv_buffer_size, socket_send_buffer_size};
        let listening = udp_socket(0);
        let port = port_of(&listening);
        let connected = udp_socket(port);
        rustix::net::connect(&connected, &std::net::SocketAddr::from(([127, 0, 0, 1], 9))).unwrap();
        let other = udp_socket(0);
        let default = socket_recv_buffer_size(&listening).unwrap();
        let want = 4 << 20;
        assert!(default / 2 < want, "the default is small");

        let mut known = BTreeSet::new();
        let done = size_udp_sockets(port, want, &mut known).unwrap();
        assert_eq!(done.sized, 2, "{done:?}");
        if !done.capped {
            for fd in [&listening, &connected] {
                assert!(socket_recv_buffer_size(fd).unwrap() / 2 >= want);
                assert!(socket_send_buffer_size(fd).unwrap() / 2 >= want);
            }
        }
        assert_eq!(socket_recv_buffer_size(&other).unwrap(), default);
        assert_eq!(known.len(), 2);
        // Nothing left to do on a second pass, even without the record of the first.
        assert_eq!(
            size_udp_sockets(port, want, &mut known).unwrap(),
            Resized::default()
        );
        if !done.capped {
            assert_eq!(
                size_udp_sockets(port, want, &mut BTreeSet::new()).unwrap(),
                Resized::default()
            );
        }
        // A socket closed is forgotten; a new one on the port is sized.
        drop(connected);
        let again = udp_socket(port);
        assert_eq!(size_udp_sockets(port, want, &mut known).unwrap().sized, 1);
        assert_eq!(known.len(), 2);
        drop(again);
    }
}
