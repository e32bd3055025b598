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
//!
//! The [`Sizer`] repeats this as boringtun opens sockets, but only when the namespace's
//! count of UDP sockets changed (`/proc/self/net/sockstat{,6}`, a few counters, where the
//! socket tables cost a walk of the kernel's whole UDP hash table), or at the latest every
//! [`FULL_PASS_EVERY`] (a socket closed and another opened between two looks leave the count
//! as it was: boringtun does that when a peer roams to a new address).

use std::collections::BTreeSet;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use rustix::process::{PidfdFlags, PidfdGetfdFlags, getpid, pidfd_getfd, pidfd_open};

/// What [`size_udp_sockets`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Resized {
    /// Sockets whose buffers were raised.
    pub(crate) sized: usize,
    /// Whether the kernel capped some at `net.core.{r,w}mem_max` (no `CAP_NET_ADMIN`).
    pub(crate) capped: bool,
    /// Sockets that could not be sized (inode, error). Each is reported once: it is
    /// remembered like a sized one and not tried again.
    pub(crate) failed: Vec<(u64, String)>,
}

/// The most time between two full passes of the [`Sizer`] when the count of UDP sockets
/// does not change.
pub(crate) const FULL_PASS_EVERY: Duration = Duration::from_secs(30);

/// Sizes the UDP sockets on one port as they appear (see the module documentation).
pub(crate) struct Sizer {
    port: u16,
    bytes: usize,
    /// The sockets handled so far (see [`size_udp_sockets`]).
    known: BTreeSet<u64>,
    /// The namespace's UDP sockets (IPv4, IPv6) counted before the last full pass.
    in_use: Option<(u64, u64)>,
    /// When the last full pass ran.
    last_full: Option<Instant>,
}

impl Sizer {
    /// A sizer raising the buffers of the UDP sockets on `port` to `bytes`.
    pub(crate) fn new(port: u16, bytes: usize) -> Self {
        Self {
            port,
            bytes,
            known: BTreeSet::new(),
            in_use: None,
            last_full: None,
        }
    }

    /// Sizes the sockets opened since the last pass; `None` when the count of UDP sockets
    /// has not changed since then and a full pass is not due, so nothing was looked at.
    pub(crate) fn pass(&mut self) -> io::Result<Option<Resized>> {
        self.pass_with(udp_sockets_in_use(), Instant::now(), raise)
    }

    fn pass_with(
        &mut self,
        in_use: io::Result<(u64, u64)>,
        now: Instant,
        raise: impl FnMut(BorrowedFd<'_>, usize) -> io::Result<Raised>,
    ) -> io::Result<Option<Resized>> {
        // Unreadable counters: every pass is a full one, as without them.
        let in_use = in_use.ok();
        let due = self
            .last_full
            .is_none_or(|t| now.saturating_duration_since(t) >= FULL_PASS_EVERY);
        if !due && in_use.is_some() && in_use == self.in_use {
            return Ok(None);
        }
        // Counted before the look, so a socket opened during it changes the next count.
        let done = size_udp_sockets_with(self.port, self.bytes, &mut self.known, raise)?;
        self.in_use = in_use;
        self.last_full = Some(now);
        Ok(Some(done))
    }
}

/// The IPv4 and IPv6 UDP sockets of this network namespace, from `/proc/self/net/sockstat`
/// and `sockstat6` (0 IPv6 sockets without IPv6).
pub(crate) fn udp_sockets_in_use() -> io::Result<(u64, u64)> {
    let v4 = std::fs::read_to_string("/proc/self/net/sockstat")?;
    let v4 = sockstat_in_use(&v4, "UDP:").ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "no UDP line in /proc/self/net/sockstat",
        )
    })?;
    let v6 = match std::fs::read_to_string("/proc/self/net/sockstat6") {
        Ok(v6) => sockstat_in_use(&v6, "UDP6:").unwrap_or(0),
        // No IPv6 in this kernel or namespace.
        Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
        Err(e) => return Err(e),
    };
    Ok((v4, v6))
}

/// The `inuse` count of protocol `label` (`UDP:`) in `/proc/net/sockstat` text.
fn sockstat_in_use(text: &str, label: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(label))?;
    let mut words = line.split_whitespace();
    words.find(|&w| w == "inuse")?;
    words.next()?.parse().ok()
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

/// Whether `e` is a shortage of the moment (descriptors, memory, an interruption) rather
/// than something about the socket: such a socket is tried again on a later pass.
fn transient(e: &io::Error) -> bool {
    use rustix::io::Errno;
    [
        Errno::MFILE,
        Errno::NFILE,
        Errno::NOMEM,
        Errno::NOBUFS,
        Errno::INTR,
        Errno::AGAIN,
    ]
    .iter()
    .any(|t| e.raw_os_error() == Some(t.raw_os_error()))
}

/// Raises the receive and send buffers of every UDP socket of this process bound to
/// `port` to at least `bytes` (`SO_RCVBUFFORCE`/`SO_SNDBUFFORCE`, falling back to
/// `SO_RCVBUF`/`SO_SNDBUF`, which the kernel caps at `net.core.{r,w}mem_max`, when the
/// process lacks `CAP_NET_ADMIN`). `known` holds the inodes handled by earlier calls (kept
/// by the caller, pruned here to the sockets that still exist): only new sockets are
/// looked for, so a call with nothing to do costs one read of `/proc/self/net/udp{,6}`,
/// not a walk over every descriptor of the process.
/// A socket that cannot be sized is reported in [`Resized::failed`] and the others are still
/// sized.
#[cfg(test)]
pub(crate) fn size_udp_sockets(
    port: u16,
    bytes: usize,
    known: &mut BTreeSet<u64>,
) -> io::Result<Resized> {
    size_udp_sockets_with(port, bytes, known, raise)
}

/// [`size_udp_sockets`] with the function that sets the options (tests inject failures).
fn size_udp_sockets_with(
    port: u16,
    bytes: usize,
    known: &mut BTreeSet<u64>,
    mut raise: impl FnMut(BorrowedFd<'_>, usize) -> io::Result<Raised>,
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
        let socket = match pidfd_getfd(pidfd, number, PidfdGetfdFlags::empty()) {
            Ok(socket) => socket,
            // Closed since it was listed: looked for again if the socket still exists.
            Err(rustix::io::Errno::BADF) => continue,
            // Out of descriptors or memory for now: tried again on a later pass.
            Err(e) if transient(&io::Error::from(e)) => continue,
            Err(e) => {
                wanted.remove(&inode);
                known.insert(inode);
                done.failed.push((inode, io::Error::from(e).to_string()));
                continue;
            }
        };
        // The number may have been closed and reused since it was read.
        if rustix::fs::fstat(&socket).map(|s| s.st_ino) != Ok(inode) {
            continue;
        }
        // One socket can have several descriptors (boringtun clones them).
        wanted.remove(&inode);
        known.insert(inode);
        // One socket that cannot be sized does not stop the others.
        match raise(socket.as_fd(), bytes) {
            Ok(Raised::Already) => {}
            Ok(Raised::Yes) => done.sized += 1,
            Ok(Raised::Capped) => {
                done.sized += 1;
                done.capped = true;
            }
            // A shortage of the moment is not the socket's fault: tried again later.
            Err(e) if transient(&e) => {
                known.remove(&inode);
            }
            Err(e) => done.failed.push((inode, e.to_string())),
        }
    }
    Ok(done)
}

/// What [`raise`] did to one socket.
pub(crate) enum Raised {
    Already,
    Yes,
    Capped,
}

/// Sets both buffers of `socket` to `bytes` unless they are that large already. The
/// kernel reports twice the value set (it counts its bookkeeping), hence the halving.
fn raise(fd: BorrowedFd<'_>, bytes: usize) -> io::Result<Raised> {
    use rustix::net::sockopt;
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

    /// A UDP socket on 127.0.0.1:`port`, which other sockets can share (`SO_REUSEADDR`).
    /// For port 0 the option is set after the bind: set before, the kernel may pick a port
    /// that another test's socket with the option holds, and the tests see each other's.
    fn udp_socket(port: u16) -> OwnedFd {
        use rustix::net::{AddressFamily, SocketType, bind, ipproto, socket, sockopt};
        let fd = socket(AddressFamily::INET, SocketType::DGRAM, Some(ipproto::UDP)).unwrap();
        if port != 0 {
            sockopt::set_socket_reuseaddr(&fd, true).unwrap();
        }
        bind(&fd, &std::net::SocketAddr::from(([127, 0, 0, 1], port))).unwrap();
        sockopt::set_socket_reuseaddr(&fd, true).unwrap();
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

    /// Review finding: an error on one socket ended the pass, so the sockets after it were
    /// not sized. Here raising the first socket found fails: the two others are still sized,
    /// the failure is reported with its inode, and the failed socket is not tried again.
    #[test]
    fn a_socket_that_meets_a_shortage_is_tried_again() {
        let sockets = [udp_socket(0)];
        let port = port_of(&sockets[0]);
        let want = 1 << 20;
        let calls = std::cell::Cell::new(0);
        let mut short_once = |fd: BorrowedFd<'_>, bytes: usize| {
            calls.set(calls.get() + 1);
            if calls.get() == 1 {
                Err(io::Error::from(rustix::io::Errno::NOMEM))
            } else {
                raise(fd, bytes)
            }
        };
        let mut known = BTreeSet::new();
        let done = size_udp_sockets_with(port, want, &mut known, &mut short_once).unwrap();
        assert_eq!((done.sized, done.failed.len()), (0, 0), "{done:?}");
        assert!(known.is_empty(), "{known:?}");
        let again = size_udp_sockets_with(port, want, &mut known, &mut short_once).unwrap();
        assert_eq!(again.sized, 1, "{again:?}");
        assert_eq!(calls.get(), 2);
    }

    #[test]
    fn a_socket_that_cannot_be_sized_does_not_stop_the_others() {
        let first = udp_socket(0);
        let port = port_of(&first);
        let sockets = [first, udp_socket(port), udp_socket(port)];
        let inodes: BTreeSet<u64> = sockets
            .iter()
            .map(|s| rustix::fs::fstat(s).unwrap().st_ino)
            .collect();
        let want = 1 << 20;
        let calls: std::cell::RefCell<Vec<u64>> = std::cell::RefCell::default();
        let mut flaky = |fd: BorrowedFd<'_>, bytes: usize| {
            calls
                .borrow_mut()
                .push(rustix::fs::fstat(fd).unwrap().st_ino);
            if calls.borrow().len() == 1 {
                Err(io::Error::other("injected"))
            } else {
                raise(fd, bytes)
            }
        };
        let mut known = BTreeSet::new();
        let done = size_udp_sockets_with(port, want, &mut known, &mut flaky).unwrap();
        assert_eq!(done.sized, 2, "{done:?}");
        let failed_inode = calls.borrow()[0];
        assert_eq!(done.failed, vec![(failed_inode, "injected".to_string())]);
        assert_eq!(known, inodes);
        for s in &sockets {
            let sized = rustix::net::sockopt::socket_recv_buffer_size(s).unwrap() / 2 >= want;
            let failed = rustix::fs::fstat(s).unwrap().st_ino == failed_inode;
            assert!(
                sized != failed || done.capped,
                "sized: {sized}, failed: {failed}"
            );
        }
        // Reported once: the next pass does not try it again.
        let again = size_udp_sockets_with(port, want, &mut known, &mut flaky).unwrap();
        assert_eq!(again, Resized::default());
        assert_eq!(calls.borrow().len(), 3);
    }

    #[test]
    fn reads_the_udp_count_of_sockstat() {
        let v4 = "sockets: used 45\nTCP: inuse 4 orphan 2 tw 50 alloc 24 mem 214\n\
                  UDP: inuse 7 mem 2\nUDPLITE: inuse 1\n";
        assert_eq!(sockstat_in_use(v4, "UDP:"), Some(7));
        assert_eq!(
            sockstat_in_use("TCP6: inuse 0\nUDP6: inuse 3\n", "UDP6:"),
            Some(3)
        );
        assert_eq!(sockstat_in_use("UDP: mem 2\n", "UDP:"), None);
        assert!(udp_sockets_in_use().is_ok());
    }

    /// Review finding: the thread looked at the sockets every second. The sizer looks only
    /// when the count of UDP sockets changed, or when a full pass is due (a socket replaced
    /// by another leaves the count as it was). The counts are given here, the sockets are
    /// real.
    #[test]
    fn the_sizer_looks_only_when_the_count_changed_or_a_full_pass_is_due() {
        let listening = udp_socket(0);
        let port = port_of(&listening);
        let want = 1 << 20;
        let mut calls = 0;
        let mut counting = |fd: BorrowedFd<'_>, bytes: usize| {
            calls += 1;
            raise(fd, bytes)
        };
        let mut sizer = Sizer::new(port, want);
        let t0 = Instant::now();
        let sized = |r: io::Result<Option<Resized>>| r.unwrap().map(|d| d.sized);
        let mut pass = |count: io::Result<(u64, u64)>, at: Duration| {
            sized(sizer.pass_with(count, t0 + at, &mut counting))
        };
        let s = Duration::from_secs;
        assert_eq!(pass(Ok((10, 2)), s(0)), Some(1), "the first pass looks");
        assert_eq!(pass(Ok((10, 2)), s(1)), None, "nothing changed");
        // A socket opened while another closed: same count, found by the next full pass.
        let replaced = udp_socket(port);
        assert_eq!(pass(Ok((10, 2)), s(2)), None);
        assert_eq!(pass(Ok((10, 2)), FULL_PASS_EVERY), Some(1));
        assert_eq!(pass(Ok((10, 2)), FULL_PASS_EVERY + s(1)), None);
        // A new socket changes the count: found at once.
        let new = udp_socket(port);
        assert_eq!(pass(Ok((11, 2)), FULL_PASS_EVERY + s(2)), Some(1));
        assert_eq!(pass(Ok((11, 2)), FULL_PASS_EVERY + s(3)), None);
        // An IPv6 socket opened as an IPv4 one closed changes the count too.
        assert_eq!(pass(Ok((10, 3)), FULL_PASS_EVERY + s(4)), Some(0));
        // Without the count, every pass looks (as before the gate).
        let err = || Err(io::Error::other("no sockstat"));
        assert_eq!(pass(err(), FULL_PASS_EVERY + s(5)), Some(0));
        assert_eq!(pass(err(), FULL_PASS_EVERY + s(6)), Some(0));
        assert_eq!(calls, 3);
        drop((replaced, new));
    }
}
