//! The UDP fast path: one loop per thread per socket, answering from the [`Engine`], with
//! response rate limiting when configured.
//!
//! On Linux the answers of a batch that go to the same client address and have the same size
//! leave as one send with UDP segmentation offload (`UDP_SEGMENT`), which the kernel splits
//! into one datagram per answer; see `Sender`.
//!
//! On Linux the sockets ignore path MTU information (`IP_PMTUDISC_OMIT`,
//! `IPV6_PMTUDISC_OMIT`; see [`ignore_path_mtu`]): an ICMP "fragmentation needed" or "packet
//! too big", which anyone can forge, changes neither how answers are fragmented nor whether
//! GSO accepts them.
//!
//! On Linux a socket bound to a wildcard address (`0.0.0.0`, `::`) asks for the destination
//! address of each query (`IP_PKTINFO`, `IPV6_RECVPKTINFO`) and sends the answer from that
//! address, so a host with several addresses answers from the one that was asked; resolvers
//! drop answers from another source.

use std::{
    io::ErrorKind,
    net::UdpSocket,
    sync::atomic::{AtomicBool, Ordering},
};

use crate::{
    rrl::{Limiter, Verdict, truncate_for_slip},
    wire::{Engine, Transport},
};

/// Per-loop state of the rate limiter: the table and this thread's count of limited answers.
pub(crate) struct Rrl<'a> {
    limiter: &'a Limiter,
    limited: u64,
}

impl<'a> Rrl<'a> {
    pub(crate) fn new(limiter: &'a Limiter) -> Self {
        Self {
            limiter,
            limited: 0,
        }
    }

    /// Whether answer `out` to `client` goes out (possibly rewritten as a truncated slip).
    fn pass(&mut self, client: std::net::IpAddr, out: &mut Vec<u8>, now_us: u64) -> bool {
        match self.limiter.check(client, out, now_us) {
            Verdict::Send => true,
            Verdict::Limited => {
                self.limited += 1;
                if self.limiter.slips(self.limited) {
                    truncate_for_slip(out);
                    true
                } else {
                    false
                }
            }
        }
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
    )
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn udp_loop(
    socket: &UdpSocket,
    engine: &Engine,
    stop: &AtomicBool,
    limiter: Option<&Limiter>,
    _pktinfo: bool,
) {
    let mut rrl = limiter.map(Rrl::new);
    let mut buf = [0u8; 4096];
    let mut out = Vec::with_capacity(4096);
    while !stop.load(Ordering::Relaxed) {
        match socket.recv_from(&mut buf) {
            Ok((n, src)) => {
                if src.port() == 0 {
                    continue;
                }
                if !engine.respond(&buf[..n], src.ip(), Transport::Udp, &mut out) {
                    continue;
                }
                if let Some(rrl) = rrl.as_mut() {
                    let now = rrl.limiter.now_us();
                    if !rrl.pass(src.ip(), &mut out, now) {
                        continue;
                    }
                }
                if let Err(error) = socket.send_to(&out, src) {
                    tracing::debug!(%error, peer = %src, "udp send failed");
                }
            }
            Err(e) if is_timeout(&e) => {}
            Err(error) => tracing::debug!(%error, "udp receive failed"),
        }
    }
}

/// Queries received and answers sent per system call on Linux.
#[cfg(target_os = "linux")]
const BATCH: usize = 32;

/// The local address a query arrived on (from its packet info), to answer from.
#[cfg(target_os = "linux")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Local {
    V4(std::net::Ipv4Addr),
    /// Address and, for link-local addresses, the interface.
    V6(std::net::Ipv6Addr, u32),
}

#[cfg(target_os = "linux")]
mod pktinfo {
    use nix::{
        libc,
        sys::socket::{ControlMessage, ControlMessageOwned, RecvMsg, SockaddrStorage},
    };

    use super::Local;

    /// The packet info cmsg for answering from `local`.
    pub(super) enum Info {
        V4(libc::in_pktinfo),
        V6(libc::in6_pktinfo),
    }

    impl Info {
        pub(super) fn new(local: Local) -> Self {
            match local {
                Local::V4(addr) => Info::V4(libc::in_pktinfo {
                    ipi_ifindex: 0,
                    ipi_spec_dst: libc::in_addr {
                        s_addr: u32::from(addr).to_be(),
                    },
                    ipi_addr: libc::in_addr { s_addr: 0 },
                }),
                Local::V6(addr, ifindex) => Info::V6(libc::in6_pktinfo {
                    ipi6_addr: libc::in6_addr {
                        s6_addr: addr.octets(),
                    },
                    ipi6_ifindex: ifindex,
                }),
            }
        }

        pub(super) fn cmsg(&self) -> ControlMessage<'_> {
            match self {
                Info::V4(i) => ControlMessage::Ipv4PacketInfo(i),
                Info::V6(i) => ControlMessage::Ipv6PacketInfo(i),
            }
        }
    }

    /// The cmsg buffer size for a socket of this family.
    pub(super) fn space(v6: bool) -> usize {
        if v6 {
            nix::sys::socket::cmsg_space::<libc::in6_pktinfo>()
        } else {
            nix::sys::socket::cmsg_space::<libc::in_pktinfo>()
        }
    }

    /// The destination address of a received datagram.
    pub(super) fn local(msg: &RecvMsg<'_, '_, SockaddrStorage>) -> Option<Local> {
        for cmsg in msg.cmsgs().ok()? {
            match cmsg {
                ControlMessageOwned::Ipv4PacketInfo(i) => {
                    return Some(Local::V4(u32::from_be(i.ipi_addr.s_addr).into()));
                }
                ControlMessageOwned::Ipv6PacketInfo(i) => {
                    let addr = std::net::Ipv6Addr::from(i.ipi6_addr.s6_addr);
                    let ifindex = if addr.is_unicast_link_local() {
                        i.ipi6_ifindex
                    } else {
                        0
                    };
                    return Some(Local::V6(addr, ifindex));
                }
                _ => {}
            }
        }
        None
    }
}

/// Turns on packet info for a wildcard-bound socket; returns whether it is on.
#[cfg(target_os = "linux")]
pub(crate) fn enable_pktinfo(socket: &UdpSocket) -> std::io::Result<bool> {
    use nix::sys::socket::{setsockopt, sockopt};
    let local = socket.local_addr()?;
    if !local.ip().is_unspecified() {
        return Ok(false);
    }
    if local.is_ipv6() {
        setsockopt(socket, sockopt::Ipv6RecvPacketInfo, &true)?;
    } else {
        setsockopt(socket, sockopt::Ipv4PacketInfo, &true)?;
    }
    Ok(true)
}

/// Packet info is Linux-only here: other systems answer from the socket's address.
#[cfg(not(target_os = "linux"))]
pub(crate) fn enable_pktinfo(_socket: &UdpSocket) -> std::io::Result<bool> {
    Ok(false)
}

/// Makes `socket` ignore path MTU discovery (`IP_PMTUDISC_OMIT`, and `IPV6_PMTUDISC_OMIT` on
/// an IPv6 socket, which keeps the IPv4 option for its IPv4-mapped clients): answers go out
/// without the don't-fragment bit, fragmented by the kernel only when they exceed the
/// interface MTU (routers may fragment IPv4 further), and ICMP "fragmentation needed" /
/// "packet too big" messages are ignored. Those can be forged by anyone who guesses a
/// client's address and port: honoured, they would lower the path MTU to that client (down
/// to 552 bytes for IPv4), which makes the kernel fragment answers (the opening for
/// fragment-based cache poisoning) and refuse segmented sends of larger segments (see
/// `Sender`). Answers up to the default 1232-byte payload fit IPv6's minimum MTU, so this
/// costs nothing there; with a larger `max_udp_payload`, an answer over a smaller path MTU
/// is lost instead of fragmented and the resolver retries smaller or over TCP, as with
/// other authoritative servers that set this option.
#[cfg(target_os = "linux")]
pub(crate) fn ignore_path_mtu(socket: &UdpSocket) -> std::io::Result<()> {
    use rustix::net::sockopt::{
        Ipv4PathMtuDiscovery, Ipv6PathMtuDiscovery, set_ip_mtu_discover, set_ipv6_mtu_discover,
    };
    if socket.local_addr()?.is_ipv6() {
        set_ipv6_mtu_discover(socket, Ipv6PathMtuDiscovery::OMIT)?;
    }
    set_ip_mtu_discover(socket, Ipv4PathMtuDiscovery::OMIT)?;
    Ok(())
}

/// Path MTU options are Linux-only here.
#[cfg(not(target_os = "linux"))]
pub(crate) fn ignore_path_mtu(_socket: &UdpSocket) -> std::io::Result<()> {
    Ok(())
}

/// The UDP fast path on Linux: `recvmmsg` (waiting for the first datagram, then taking what is
/// queued, up to [`BATCH`]) and `sendmmsg` for the answers (per local address when the socket
/// is wildcard-bound), answers of one size to one client coalesced by the [`Sender`].
#[cfg(target_os = "linux")]
#[allow(clippy::too_many_lines)]
pub(crate) fn udp_loop(
    socket: &UdpSocket,
    engine: &Engine,
    stop: &AtomicBool,
    limiter: Option<&Limiter>,
    pktinfo: bool,
) {
    use std::{io::IoSliceMut, os::fd::AsRawFd};

    use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg};

    let v6 = socket.local_addr().is_ok_and(|a| a.is_ipv6());
    let cmsg_buffer = || pktinfo.then(|| Vec::with_capacity(pktinfo::space(v6)));
    let mut rrl = limiter.map(Rrl::new);
    let fd = socket.as_raw_fd();
    let mut recv_headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, cmsg_buffer());
    let mut sender = Sender::new(socket, pktinfo.then(|| pktinfo::space(v6)));
    let mut bufs = vec![[0u8; 4096]; BATCH];
    let mut outs: Vec<Vec<u8>> = (0..BATCH).map(|_| Vec::with_capacity(1232)).collect();
    // Per received datagram: its length (0 when truncated), source and local address. The
    // addresses are copied once here and once more, for the answered ones, into `addrs`
    // (which sendmmsg takes as is when all answers leave from the socket's own address).
    let mut lens: Vec<usize> = Vec::with_capacity(BATCH);
    let mut sources: Vec<Option<SockaddrStorage>> = Vec::with_capacity(BATCH);
    let mut received_locals: Vec<Option<Local>> = Vec::with_capacity(BATCH);
    let mut replies: Vec<usize> = Vec::with_capacity(BATCH);
    let mut addrs: Vec<Option<SockaddrStorage>> = Vec::with_capacity(BATCH);
    let mut locals: Vec<Option<Local>> = Vec::with_capacity(BATCH);
    let mut group: Vec<usize> = Vec::with_capacity(BATCH);
    let mut group_addrs: Vec<Option<SockaddrStorage>> = Vec::with_capacity(BATCH);
    let mut group_replies: Vec<usize> = Vec::with_capacity(BATCH);
    let mut done = [false; BATCH];
    while !stop.load(Ordering::Relaxed) {
        lens.clear();
        sources.clear();
        received_locals.clear();
        let mut lost_pktinfo = false;
        {
            let mut iovs: Vec<[IoSliceMut<'_>; 1]> =
                bufs.iter_mut().map(|b| [IoSliceMut::new(b)]).collect();
            match recvmmsg(
                fd,
                &mut recv_headers,
                iovs.iter_mut(),
                MsgFlags::MSG_WAITFORONE,
                None,
            ) {
                Ok(results) => {
                    for msg in results {
                        let truncated = msg.flags.contains(MsgFlags::MSG_TRUNC);
                        if pktinfo {
                            let local = pktinfo::local(&msg);
                            lost_pktinfo |= local.is_none();
                            received_locals.push(local);
                        }
                        lens.push(if truncated { 0 } else { msg.bytes });
                        sources.push(msg.address);
                    }
                }
                Err(errno) => {
                    let e = std::io::Error::from(errno);
                    if !is_timeout(&e) {
                        tracing::debug!(error = %e, "udp receive failed");
                    }
                    continue;
                }
            }
        }
        if lost_pktinfo {
            // The kernel shrinks a header's control length to what it wrote, and nix does not
            // reset it: start from fresh headers so the next datagrams get their packet info.
            recv_headers = MultiHeaders::preallocate(BATCH, cmsg_buffer());
        }
        replies.clear();
        addrs.clear();
        locals.clear();
        let now_us = rrl.as_ref().map_or(0, |r| r.limiter.now_us());
        // One snapshot for the batch: a zone swap applies from the next one.
        let snapshot = engine.zones.snapshot();
        for (i, (&len, addr)) in lens.iter().zip(&sources).enumerate() {
            let Some(addr) = addr else { continue };
            let ip = if let Some(v4) = addr.as_sockaddr_in() {
                if v4.port() == 0 {
                    continue;
                }
                std::net::IpAddr::V4(v4.ip())
            } else if let Some(v6) = addr.as_sockaddr_in6() {
                if v6.port() == 0 {
                    continue;
                }
                std::net::IpAddr::V6(v6.ip())
            } else {
                continue;
            };
            let local = received_locals.get(i).copied().flatten();
            // Without the destination address a wildcard socket cannot answer correctly.
            if pktinfo && local.is_none() {
                continue;
            }
            if len < 12
                || !engine.respond_from(
                    &snapshot,
                    &bufs[i][..len],
                    ip,
                    Transport::Udp,
                    &mut outs[i],
                )
            {
                continue;
            }
            if let Some(rrl) = rrl.as_mut()
                && !rrl.pass(ip, &mut outs[i], now_us)
            {
                continue;
            }
            replies.push(i);
            addrs.push(Some(*addr));
            locals.push(local);
        }
        if replies.is_empty() {
            continue;
        }
        if !pktinfo {
            // Every answer leaves from the socket's address: one send for the batch.
            sender.send(&outs, &replies, &addrs, None);
            continue;
        }
        // One sendmmsg per local address the queries arrived on.
        done[..replies.len()].fill(false);
        for first in 0..replies.len() {
            if done[first] {
                continue;
            }
            group.clear();
            group_addrs.clear();
            for k in first..replies.len() {
                if !done[k] && locals[k] == locals[first] {
                    done[k] = true;
                    group.push(k);
                    group_addrs.push(addrs[k]);
                }
            }
            let info = locals[first].map(pktinfo::Info::new);
            group_replies.clear();
            group_replies.extend(group.iter().map(|&k| replies[k]));
            sender.send(&outs, &group_replies, &group_addrs, info.as_ref());
        }
    }
}

/// Sends `slices` to `addrs` with one `sendmmsg` (each with `cmsgs`), and one by one whatever
/// it did not take.
#[cfg(target_os = "linux")]
fn send_batch(
    fd: std::os::fd::RawFd,
    headers: &mut nix::sys::socket::MultiHeaders<nix::sys::socket::SockaddrStorage>,
    slices: &[[std::io::IoSlice<'_>; 1]],
    addrs: &[Option<nix::sys::socket::SockaddrStorage>],
    cmsgs: &[nix::sys::socket::ControlMessage<'_>],
) {
    use nix::sys::socket::{MsgFlags, sendmmsg, sendmsg};
    let sent = match sendmmsg(fd, headers, slices.iter(), addrs, cmsgs, MsgFlags::empty()) {
        Ok(results) => results.count(),
        Err(errno) => {
            tracing::debug!(error = %std::io::Error::from(errno), "udp send failed");
            0
        }
    };
    for (slice, addr) in slices.iter().zip(addrs).skip(sent) {
        if let Err(errno) = sendmsg(fd, slice, cmsgs, MsgFlags::empty(), addr.as_ref()) {
            tracing::debug!(error = %std::io::Error::from(errno), "udp send failed");
        }
    }
}

/// Largest answer sent with UDP GSO: the IPv6 minimum MTU less the IPv6 and UDP headers, so a
/// segment never needs IP fragmentation (which GSO refuses). Larger answers go out one by one.
#[cfg(target_os = "linux")]
const GSO_MAX_SEGMENT: usize = 1232;

/// Payload bytes in one GSO send: under UDP's 64 KiB datagram limit with room for headers.
#[cfg(target_os = "linux")]
const GSO_MAX_BYTES: usize = 60_000;

/// Segmented sends refused in a row (`EIO`, `EINVAL`, `EMSGSIZE`) before GSO is turned off
/// for a while. One refusal proves little: a route to one client can refuse what the others
/// take.
#[cfg(target_os = "linux")]
const GSO_REFUSALS: u32 = 4;

/// How long GSO stays off after [`GSO_REFUSALS`] refusals in a row before it is tried again.
#[cfg(target_os = "linux")]
const GSO_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

/// Answers of one size to one client address, sent as one GSO datagram.
#[cfg(target_os = "linux")]
#[derive(Clone, Copy)]
struct Group {
    addr: Option<nix::sys::socket::SockaddrStorage>,
    len: usize,
    /// Indices of the answers in the batch's answer buffers.
    members: [usize; BATCH],
    count: usize,
}

/// Sends a batch of answers. With UDP generic segmentation offload (`UDP_SEGMENT`, Linux 4.18+)
/// the answers of equal size to the same client address go out as one send with the segment
/// size in a control message: the kernel runs the IP and UDP send path (and, over loopback, the
/// receive path up to UDP) once for the group and cuts it into the separate datagrams the
/// client reads, each exactly one answer. When the kernel refuses a segmented send (`EIO`: no
/// checksum offload on the route, IPsec; `EINVAL`, or `EMSGSIZE` on recent kernels: a segment
/// over the MTU, which segmentation never fragments), the answers go out again one datagram
/// per answer, so none is lost; after [`GSO_REFUSALS`] refusals without a segmented send
/// taken in between, GSO is off for [`GSO_RETRY_AFTER`], then tried again.
#[cfg(target_os = "linux")]
struct Sender {
    fd: std::os::fd::RawFd,
    /// Headers for plain sends (with room for the packet info when the socket uses it).
    plain: nix::sys::socket::MultiHeaders<nix::sys::socket::SockaddrStorage>,
    /// Headers for segmented sends (packet info when used, and the segment size); `None`
    /// when the kernel lacks `UDP_SEGMENT`.
    segmented: Option<nix::sys::socket::MultiHeaders<nix::sys::socket::SockaddrStorage>>,
    /// Whether segmented sends are off after refusals.
    refusals: Refusals,
    groups: Vec<Group>,
}

/// The kernel's recent refusals of segmented sends, and whether GSO is off for them.
#[cfg(target_os = "linux")]
struct Refusals {
    /// Segmented sends refused since the last one the kernel took.
    count: u32,
    /// GSO is off until then (after [`GSO_REFUSALS`] refusals in a row).
    off_until: Option<std::time::Instant>,
    /// How long GSO stays off ([`GSO_RETRY_AFTER`]).
    retry_after: std::time::Duration,
}

#[cfg(target_os = "linux")]
impl Refusals {
    /// Whether GSO is off now; switches it back on once the pause is over.
    fn off(&mut self) -> bool {
        match self.off_until {
            None => false,
            Some(until) if std::time::Instant::now() >= until => {
                tracing::debug!("trying udp segmentation offload again");
                self.off_until = None;
                false
            }
            Some(_) => true,
        }
    }

    /// Counts a segmented send the kernel refused; turns GSO off after [`GSO_REFUSALS`].
    fn refused(&mut self, errno: nix::errno::Errno) {
        self.count += 1;
        let error = std::io::Error::from(errno);
        if self.count < GSO_REFUSALS {
            tracing::debug!(%error, refused = self.count, "udp segmentation offload refused");
            return;
        }
        tracing::info!(
            %error,
            refused = self.count,
            retry_after = ?self.retry_after,
            "udp segmentation offload refused repeatedly: sending answers one by one for a while"
        );
        self.count = 0;
        self.off_until = Some(std::time::Instant::now() + self.retry_after);
    }
}

#[cfg(target_os = "linux")]
impl Sender {
    /// A sender for `socket`; `pktinfo_space` is the control buffer size of the packet info
    /// sent with every answer (`None` when the socket does not use it).
    fn new(socket: &UdpSocket, pktinfo_space: Option<usize>) -> Self {
        use nix::sys::socket::{MultiHeaders, cmsg_space, getsockopt, sockopt};
        use std::os::fd::AsRawFd;
        // A kernel without UDP_SEGMENT would ignore the control message and send the group as
        // one datagram: ask for the option first, as quinn does.
        let gso = getsockopt(socket, sockopt::UdpGsoSegment).is_ok();
        // nix's sendmmsg sends the whole preallocated control buffer of each header: its size
        // must be exactly that of the control messages written, hence two sets of headers.
        let segmented = gso.then(|| {
            let space = pktinfo_space.unwrap_or(0) + cmsg_space::<u16>();
            MultiHeaders::preallocate(BATCH, Some(Vec::with_capacity(space)))
        });
        Self {
            fd: socket.as_raw_fd(),
            plain: MultiHeaders::preallocate(BATCH, pktinfo_space.map(Vec::with_capacity)),
            segmented,
            refusals: Refusals {
                count: 0,
                off_until: None,
                retry_after: GSO_RETRY_AFTER,
            },
            groups: Vec::with_capacity(BATCH),
        }
    }

    /// Sends `outs[answers[k]]` to `addrs[k]` for every k, each with `info` when given.
    fn send(
        &mut self,
        outs: &[Vec<u8>],
        answers: &[usize],
        addrs: &[Option<nix::sys::socket::SockaddrStorage>],
        info: Option<&pktinfo::Info>,
    ) {
        use nix::sys::socket::{MultiHeaders, SockaddrStorage};
        use std::io::IoSlice;
        let base: Vec<nix::sys::socket::ControlMessage<'_>> =
            info.map(pktinfo::Info::cmsg).into_iter().collect();
        let fd = self.fd;
        let plain =
            |headers: &mut MultiHeaders<SockaddrStorage>,
             answers: &mut dyn Iterator<Item = (usize, Option<SockaddrStorage>)>| {
                let (slices, to): (Vec<[IoSlice<'_>; 1]>, Vec<_>) = answers
                    .map(|(i, addr)| ([IoSlice::new(&outs[i])], addr))
                    .unzip();
                send_batch(fd, headers, &slices, &to, &base);
            };
        if self.segmented.is_none() || answers.len() < 2 || self.refusals.off() {
            plain(
                &mut self.plain,
                &mut answers.iter().copied().zip(addrs.iter().copied()),
            );
            return;
        }
        self.groups.clear();
        for (&i, &addr) in answers.iter().zip(addrs) {
            let len = outs[i].len();
            let joined = len <= GSO_MAX_SEGMENT
                && self.groups.iter_mut().any(|g| {
                    let fits = g.len == len && (g.count + 1) * len <= GSO_MAX_BYTES;
                    if fits && g.addr == addr {
                        g.members[g.count] = i;
                        g.count += 1;
                    }
                    fits && g.addr == addr
                });
            if !joined {
                let mut members = [0; BATCH];
                members[0] = i;
                self.groups.push(Group {
                    addr,
                    len,
                    members,
                    count: 1,
                });
            }
        }
        if self.groups.len() == answers.len() {
            plain(
                &mut self.plain,
                &mut answers.iter().copied().zip(addrs.iter().copied()),
            );
            return;
        }
        // One sendmmsg per answer size: the segment size is a control message shared by all
        // the messages of a sendmmsg call.
        self.groups.sort_by_key(|g| g.len);
        let mut start = 0;
        while start < self.groups.len() {
            let len = self.groups[start].len;
            let end = start
                + self.groups[start..]
                    .iter()
                    .take_while(|g| g.len == len)
                    .count();
            let run = &self.groups[start..end];
            start = end;
            let members = |run: &[Group]| -> Vec<(usize, Option<SockaddrStorage>)> {
                run.iter()
                    .flat_map(|g| g.members[..g.count].iter().map(move |&i| (i, g.addr)))
                    .collect()
            };
            // Off after refusals earlier in this call: the rest goes out one by one.
            let gso = self.refusals.off_until.is_none();
            let (Some(headers), true, Ok(segment)) =
                (self.segmented.as_mut(), gso, u16::try_from(len))
            else {
                plain(&mut self.plain, &mut members(run).into_iter());
                continue;
            };
            if run.iter().all(|g| g.count == 1) {
                plain(&mut self.plain, &mut members(run).into_iter());
                continue;
            }
            let slices: Vec<Vec<IoSlice<'_>>> = run
                .iter()
                .map(|g| {
                    g.members[..g.count]
                        .iter()
                        .map(|&i| IoSlice::new(&outs[i]))
                        .collect()
                })
                .collect();
            let to: Vec<_> = run.iter().map(|g| g.addr).collect();
            let mut cmsgs = base.clone();
            cmsgs.push(nix::sys::socket::ControlMessage::UdpGsoSegments(&segment));
            let sent = match nix::sys::socket::sendmmsg(
                self.fd,
                headers,
                slices.iter(),
                &to,
                &cmsgs,
                nix::sys::socket::MsgFlags::empty(),
            ) {
                Ok(results) => results.count(),
                Err(errno) => {
                    if matches!(
                        errno,
                        nix::errno::Errno::EIO
                            | nix::errno::Errno::EINVAL
                            | nix::errno::Errno::EMSGSIZE
                    ) {
                        self.refusals.refused(errno);
                    } else {
                        tracing::debug!(error = %std::io::Error::from(errno), "udp send failed");
                    }
                    0
                }
            };
            if sent > 0 {
                self.refusals.count = 0;
            }
            // Whatever the kernel did not take (a refused send included) goes out again, one
            // datagram per answer.
            if sent < run.len() {
                plain(&mut self.plain, &mut members(&run[sent..]).into_iter());
            }
        }
    }
}

#[cfg(test)]
#[cfg(target_os = "linux")]
mod tests {
    //! The sender's reaction to refused segmented sends, against the real kernel: in a
    //! network namespace whose loopback MTU (1000) is below the segment size (1100), the
    //! kernel refuses segmented sends (`EINVAL`; `EMSGSIZE` on newer kernels: it never
    //! fragments a segment) and fragments plain ones. The namespace's loopback packet counter
    //! shows whether a batch went out segmented (8 answers, one packet) or one by one (8
    //! packets).
    //! Needs root (ip netns); skipped with a message otherwise.

    use std::{
        net::{SocketAddr, UdpSocket},
        process::Command,
        time::{Duration, Instant},
    };

    use nix::sys::socket::SockaddrStorage;

    use super::{GSO_REFUSALS, Sender};

    fn is_root() -> bool {
        std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2))
                == Some("0")
        })
    }

    fn ip(args: &[&str]) -> String {
        let out = Command::new("ip").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    struct Namespace(String);

    impl Drop for Namespace {
        fn drop(&mut self) {
            let _ = Command::new("ip")
                .args(["netns", "delete", &self.0])
                .status();
        }
    }

    impl Namespace {
        fn bind(&self, addr: &str) -> UdpSocket {
            let path = format!("/run/netns/{}", self.0);
            let addr: SocketAddr = addr.parse().unwrap();
            std::thread::spawn(move || {
                let f = std::fs::File::open(&path).unwrap();
                nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                UdpSocket::bind(addr).unwrap()
            })
            .join()
            .unwrap()
        }

        /// Packets sent on the namespace's loopback device.
        fn lo_packets(&self) -> u64 {
            let text = ip(&["-n", &self.0, "-s", "link", "show", "dev", "lo"]);
            let mut lines = text.lines();
            lines.find(|l| l.trim_start().starts_with("TX:")).unwrap();
            lines
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
                .unwrap()
        }
    }

    /// Eight answers of `len` bytes, each tagged with its index.
    fn answers(len: usize) -> Vec<Vec<u8>> {
        (0..8u8)
            .map(|i| {
                let mut a = vec![b'a'; len];
                a[0] = i;
                a
            })
            .collect()
    }

    /// Sends `outs` to `client` through `sender`; returns what the client read (sorted) and
    /// the loopback packets the batch took.
    fn send(
        ns: &Namespace,
        sender: &mut Sender,
        client: &UdpSocket,
        outs: &[Vec<u8>],
    ) -> (Vec<Vec<u8>>, u64) {
        let to = SockaddrStorage::from(client.local_addr().unwrap());
        let before = ns.lo_packets();
        let indices: Vec<usize> = (0..outs.len()).collect();
        sender.send(outs, &indices, &vec![Some(to); outs.len()], None);
        let packets = ns.lo_packets() - before;
        let mut got = Vec::new();
        let mut buf = vec![0u8; 65536];
        let deadline = Instant::now() + Duration::from_secs(5);
        while got.len() < outs.len() && Instant::now() < deadline {
            if let Ok(n) = client.recv(&mut buf) {
                got.push(buf[..n].to_vec());
            }
        }
        got.sort();
        (got, packets)
    }

    #[test]
    fn gso_is_turned_off_only_after_repeated_refusals_and_no_answer_is_lost() {
        if !is_root() {
            eprintln!(
                "SKIPPED gso_is_turned_off_only_after_repeated_refusals_and_no_answer_is_lost: \
                 needs root for ip netns"
            );
            return;
        }
        let ns = Namespace(format!("mkdns-u-{}", std::process::id()));
        ip(&["netns", "add", &ns.0]);
        ip(&["-n", &ns.0, "link", "set", "lo", "mtu", "1000", "up"]);
        let server = ns.bind("127.0.0.1:0");
        let client = ns.bind("127.0.0.1:0");
        client
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut sender = Sender::new(&server, None);
        assert!(sender.segmented.is_some(), "the kernel has no UDP_SEGMENT");
        // Refused as segments (over the MTU); sent one by one, each in two fragments.
        let big = answers(1100);
        // Taken as segments: one loopback packet for the eight.
        let small = answers(100);
        let refused = |sender: &mut Sender| {
            let (got, packets) = send(&ns, sender, &client, &big);
            assert_eq!(got, big, "answers lost after a refused segmented send");
            assert_eq!(packets, 16, "8 answers in 2 fragments each");
        };

        refused(&mut sender);
        assert_eq!(sender.refusals.count, 1);
        let (got, packets) = send(&ns, &mut sender, &client, &small);
        assert_eq!(got, small);
        assert_eq!(packets, 1, "GSO is still on after one refusal");
        assert_eq!(
            sender.refusals.count, 0,
            "a segmented send taken clears the count"
        );

        for n in 1..GSO_REFUSALS {
            refused(&mut sender);
            assert_eq!(sender.refusals.count, n);
            assert!(
                sender.refusals.off_until.is_none(),
                "off after {n} refusals"
            );
        }
        refused(&mut sender);
        assert!(
            sender.refusals.off_until.is_some(),
            "still on after {GSO_REFUSALS}"
        );
        let (got, packets) = send(&ns, &mut sender, &client, &small);
        assert_eq!(got, small);
        assert_eq!(packets, 8, "GSO is off: one packet per answer");
        let (got, _) = send(&ns, &mut sender, &client, &big);
        assert_eq!(got, big);
        assert_eq!(
            sender.refusals.count, 0,
            "no segmented send tried while off"
        );

        // Once the pause is over, segmented sends are tried again.
        sender.refusals.off_until = Some(Instant::now());
        let (got, packets) = send(&ns, &mut sender, &client, &small);
        assert_eq!(got, small);
        assert_eq!(packets, 1, "GSO is back on");
    }
}
