//! The UDP fast path: one loop per thread per socket, answering from the [`Engine`], with
//! response rate limiting when configured.
//!
//! On Linux the answers of a batch that go to the same client address and have the same size
//! leave as one send with UDP segmentation offload (`UDP_SEGMENT`), which the kernel splits
//! into one datagram per answer; see `Sender`.
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
/// client reads, each exactly one answer. When the kernel refuses a segmented send (`EIO`,
/// `EINVAL`: no checksum offload on the route, IPsec, an old kernel), GSO is turned off for
/// the socket and the answers go out one datagram per answer.
#[cfg(target_os = "linux")]
struct Sender {
    fd: std::os::fd::RawFd,
    /// Headers for plain sends (with room for the packet info when the socket uses it).
    plain: nix::sys::socket::MultiHeaders<nix::sys::socket::SockaddrStorage>,
    /// Headers for segmented sends (packet info when used, and the segment size); `None`
    /// when GSO is off.
    segmented: Option<nix::sys::socket::MultiHeaders<nix::sys::socket::SockaddrStorage>>,
    groups: Vec<Group>,
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
        let plain =
            |headers: &mut MultiHeaders<SockaddrStorage>,
             answers: &mut dyn Iterator<Item = (usize, Option<SockaddrStorage>)>| {
                let (slices, to): (Vec<[IoSlice<'_>; 1]>, Vec<_>) = answers
                    .map(|(i, addr)| ([IoSlice::new(&outs[i])], addr))
                    .unzip();
                send_batch(self.fd, headers, &slices, &to, &base);
            };
        if self.segmented.is_none() || answers.len() < 2 {
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
            let (Some(headers), Ok(segment)) = (self.segmented.as_mut(), u16::try_from(len)) else {
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
                    if matches!(errno, nix::errno::Errno::EIO | nix::errno::Errno::EINVAL) {
                        tracing::info!(
                            error = %std::io::Error::from(errno),
                            "udp segmentation offload refused: sending answers one by one"
                        );
                        self.segmented = None;
                    } else {
                        tracing::debug!(error = %std::io::Error::from(errno), "udp send failed");
                    }
                    0
                }
            };
            // Whatever the kernel did not take goes out one datagram per answer.
            if sent < run.len() {
                plain(&mut self.plain, &mut members(&run[sent..]).into_iter());
            }
        }
    }
}
