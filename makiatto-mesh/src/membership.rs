//! SWIM membership (foca) over UDP on the mesh.
//!
//! Each node runs one [`Membership`] task bound to its mesh address. The view of the
//! other members (alive, suspect or down) is published on a `tokio::sync::watch`
//! channel, for the DNS selector, health and the replicator's peer list.
//!
//! Recovery: a node that knows no active member announces itself to every seed (the
//! mesh addresses of the known nodes) every [`MembershipOptions::reannounce_every`], so
//! a node cut off by a partition or a restart rejoins on its own; a node declared down
//! renews its identity (a higher generation) and rejoins (foca's auto-rejoin).
//!
//! Admission: with a [`ClusterNodes`] set, every datagram is screened before foca sees
//! it ([`screen`]): it must come from a cluster node's mesh address, from the address
//! and port of the identity it carries, and that identity must be the node registered at
//! that address; identities named by a probe must be cluster nodes too. Anything else is
//! dropped and counted. Membership updates about members that are not cluster nodes are
//! removed from an otherwise valid datagram, so they are never admitted.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use foca::{
    AccumulatingRuntime, Codec as _, Config, Foca, Header, Identity, Member, Message,
    OwnedNotification, PostcardCodec, State, Timer,
};
use rand::RngCore as _;
use rand_foca::SeedableRng as _;
use rand_foca::rngs::StdRng;
use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, trace};

use crate::trust::{ClusterNodes, Service};

/// Default UDP port of the membership protocol.
pub const DEFAULT_PORT: u16 = 7947;
/// Largest datagram read.
const MAX_DATAGRAM: usize = 1500;

/// A member's identity: its name, where it listens, and a generation that grows each
/// time it starts or rejoins (the newer identity at an address wins).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MemberId {
    /// Node name.
    pub name: String,
    /// Membership address (mesh address and port).
    pub addr: SocketAddr,
    /// Grows on every start and rejoin.
    pub generation: u64,
}

impl Identity for MemberId {
    // foca accepts an announce addressed to any identity with our address, which is how
    // seeds known only by address are contacted.
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(MemberId {
            generation: self.generation.wrapping_add(1).max(now_ms()),
            ..self.clone()
        })
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.generation > adversary.generation
    }
}

/// Liveness of a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Liveness {
    /// Answering probes.
    Alive,
    /// Missed a probe; being checked.
    Suspect,
    /// Declared down by the cluster.
    Down,
}

/// One member as seen from this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// Membership address.
    pub addr: SocketAddr,
    /// Liveness.
    pub liveness: Liveness,
}

/// This node's view of the others, keyed by name (this node excluded).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipView {
    /// Members by name.
    pub members: BTreeMap<String, MemberInfo>,
}

impl MembershipView {
    /// Names of the members currently alive.
    pub fn alive(&self) -> impl Iterator<Item = (&str, &MemberInfo)> {
        self.members
            .iter()
            .filter(|(_, m)| m.liveness == Liveness::Alive)
            .map(|(n, m)| (n.as_str(), m))
    }

    /// Whether `name` is alive.
    pub fn is_alive(&self, name: &str) -> bool {
        self.members
            .get(name)
            .is_some_and(|m| m.liveness == Liveness::Alive)
    }
}

/// Tuning of the membership protocol.
#[derive(Debug, Clone)]
pub struct MembershipOptions {
    /// How often a random member is probed (default 1 s).
    pub probe_period: Duration,
    /// How long to wait for a probe's answer (default 500 ms).
    pub probe_rtt: Duration,
    /// How long a suspect has to refute before it is declared down (default 4 s).
    pub suspect_to_down_after: Duration,
    /// How long down members are remembered (default 60 s).
    pub remove_down_after: Duration,
    /// How often a node without active peers announces itself to the seeds, and how
    /// often down members are contacted again (default 2 s).
    pub reannounce_every: Duration,
    /// Expected cluster size, for foca's retransmission counts (default 16).
    pub cluster_size: NonZeroU32,
}

impl Default for MembershipOptions {
    fn default() -> Self {
        MembershipOptions {
            probe_period: Duration::from_secs(1),
            probe_rtt: Duration::from_millis(500),
            suspect_to_down_after: Duration::from_secs(4),
            remove_down_after: Duration::from_secs(60),
            reannounce_every: Duration::from_secs(2),
            cluster_size: NonZeroU32::MIN.saturating_add(15),
        }
    }
}

impl MembershipOptions {
    fn foca_config(&self) -> Config {
        let mut c = Config::new_lan(self.cluster_size);
        c.probe_period = self.probe_period;
        c.probe_rtt = self.probe_rtt;
        c.suspect_to_down_after = self.suspect_to_down_after;
        c.remove_down_after = Some(self.remove_down_after);
        if let Some(p) = c.periodic_announce_to_down_members.as_mut() {
            p.frequency = self.reannounce_every;
        }
        if let Some(p) = c.periodic_announce.as_mut() {
            p.frequency = self.reannounce_every * 5;
        }
        c
    }
}

/// Where the seeds come from: called whenever the node has to announce itself.
pub type Seeds = Arc<dyn Fn() -> Vec<SocketAddr> + Send + Sync>;

/// A running membership protocol.
pub struct Membership {
    socket: UdpSocket,
    id: MemberId,
    seeds: Seeds,
    nodes: Option<ClusterNodes>,
    options: MembershipOptions,
    view: watch::Sender<MembershipView>,
}

impl fmt::Debug for Membership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Membership")
            .field("id", &self.id)
            .field("nodes", &self.nodes)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Membership {
    /// Membership for node `name` on `socket` (bound to its mesh address). When `nodes`
    /// is set, datagrams are admitted only as [`screen`] says; `None` admits everything
    /// (tests).
    pub fn new(
        name: impl Into<String>,
        socket: UdpSocket,
        seeds: Seeds,
        nodes: Option<ClusterNodes>,
        options: MembershipOptions,
    ) -> std::io::Result<Self> {
        let addr = socket.local_addr()?;
        let (view, _) = watch::channel(MembershipView::default());
        Ok(Membership {
            socket,
            id: MemberId {
                name: name.into(),
                addr,
                generation: now_ms(),
            },
            seeds,
            nodes,
            options,
            view,
        })
    }

    /// Publishes the view on `view` instead of a channel of its own (so a view outlives
    /// one run, e.g. across a move to a new address).
    #[must_use]
    pub fn publish_to(mut self, view: watch::Sender<MembershipView>) -> Self {
        self.view = view;
        self
    }

    /// The view, updated on every change.
    pub fn subscribe(&self) -> watch::Receiver<MembershipView> {
        self.view.subscribe()
    }

    /// Runs until `shutdown` completes, then leaves the cluster (best effort).
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) {
        let Membership {
            socket,
            id,
            seeds,
            nodes,
            options,
            view,
        } = self;
        let mut seed = [0u8; 32];
        rand::rng().fill_bytes(&mut seed);
        let mut foca: Swim = Foca::new(
            id.clone(),
            options.foca_config(),
            StdRng::from_seed(seed),
            PostcardCodec,
        );
        let mut rt = AccumulatingRuntime::<MemberId>::new();
        let mut timers: BTreeMap<(Instant, u64), Timer<MemberId>> = BTreeMap::new();
        let mut seq = 0u64;
        let mut ticks = 0u64;
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let mut orphaned = OrphanedSuspicions::default();
        let mut reannounce = tokio::time::interval(options.reannounce_every);
        reannounce.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        let placeholder = |addr: SocketAddr| MemberId {
            name: String::new(),
            addr,
            generation: 0,
        };
        loop {
            orphaned.expire(&mut foca, Instant::now(), &mut rt);
            // Flush what foca asked for.
            while let Some((to, data)) = rt.to_send() {
                if let Err(error) = socket.send_to(&data, to.addr).await {
                    trace!(%error, peer = %to.addr, "membership send failed");
                }
            }
            while let Some((after, timer)) = rt.to_schedule() {
                seq += 1;
                timers.insert((Instant::now() + after, seq), timer);
            }
            while let Some(n) = rt.to_notify() {
                match n {
                    OwnedNotification::MemberUp(m) => info!(peer = %m.name, "member up"),
                    OwnedNotification::MemberDown(m) => info!(peer = %m.name, "member down"),
                    OwnedNotification::Rejoin(m) => {
                        info!(generation = m.generation, "rejoined the cluster");
                        orphaned.on_rejoin(&foca, Instant::now(), options.suspect_to_down_after);
                    }
                    OwnedNotification::Idle => info!("no active members left"),
                    other => debug!(?other, "membership"),
                }
            }
            // Suspect transitions emit no notification: rebuild the (small) view each
            // turn and publish it only when it differs.
            publish(&view, &foca, &id.name);
            let next_timer = timers
                .keys()
                .next()
                .map(|(at, _)| *at)
                .into_iter()
                .chain(orphaned.next_due())
                .min();
            tokio::select! {
                () = &mut shutdown => break,
                received = socket.recv_from(&mut buf) => match received {
                    Ok((n, from)) => {
                        let screened = match &nodes {
                            None => Ok(None),
                            Some(nodes) => screen(&buf[..n], from, nodes),
                        };
                        let result = match screened {
                            Ok(None) => foca.handle_data(&buf[..n], &mut rt),
                            Ok(Some(filtered)) => foca.handle_data(&filtered, &mut rt),
                            Err(reason) => {
                                if let Some(nodes) = &nodes {
                                    nodes.refuse(Service::Membership, from, reason);
                                }
                                continue;
                            }
                        };
                        if let Err(error) = result {
                            debug!(%error, peer = %from, "bad membership datagram");
                        }
                    }
                    Err(error) => {
                        debug!(%error, "membership recv failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                () = sleep_until_opt(next_timer) => {
                    let now = Instant::now();
                    while let Some(entry) = timers.first_entry() {
                        if entry.key().0 > now { break; }
                        let timer = entry.remove();
                        if let Err(error) = foca.handle_timer(timer, &mut rt) {
                            debug!(%error, "membership timer failed");
                        }
                    }
                },
                _ = reannounce.tick() => {
                    ticks = ticks.wrapping_add(1);
                    let active: Vec<SocketAddr> = foca.iter_members().map(|m| m.id().addr).collect();
                    let missing: Vec<SocketAddr> = seeds()
                        .into_iter()
                        .filter(|a| *a != id.addr && !active.contains(a))
                        .collect();
                    // Alone: announce to every seed. Otherwise, every fifth tick, to one
                    // seed that is not an active member, so two halves of a long split
                    // (longer than `remove_down_after`) still find each other again.
                    let targets: Vec<SocketAddr> = if active.is_empty() {
                        missing
                    } else if ticks.is_multiple_of(5) && !missing.is_empty() {
                        vec![missing[(ticks / 5) as usize % missing.len()]]
                    } else {
                        Vec::new()
                    };
                    for addr in targets {
                        if let Err(error) = foca.announce(placeholder(addr), &mut rt) {
                            debug!(%error, peer = %addr, "announce failed");
                        }
                    }
                },
            }
        }
        if foca.leave_cluster(&mut rt).is_ok() {
            while let Some((to, data)) = rt.to_send() {
                let _ = socket.send_to(&data, to.addr).await;
            }
        }
    }
}

type Swim = Foca<MemberId, PostcardCodec, StdRng, foca::NoCustomBroadcast>;

/// Suspicions this node held when it rejoined with a new identity. foca's rejoin resets
/// its timer token, so the timers that would turn them into `Down` are dropped and a
/// member nobody told it was suspected stays `Suspect` here for good (seen as a member
/// missing from a node's view after a stall at start-up). This watch stands in for those
/// timers: a suspicion still unrefuted `suspect_to_down_after` after the rejoin is
/// declared down, as the timer would have done, and the member renews its identity when
/// it hears of it.
#[derive(Debug, Default)]
struct OrphanedSuspicions(Vec<(Instant, Member<MemberId>)>);

impl OrphanedSuspicions {
    /// Records the members suspected at a rejoin.
    fn on_rejoin(&mut self, foca: &Swim, now: Instant, after: Duration) {
        for m in foca.iter_members().filter(|m| m.state() == State::Suspect) {
            self.0.push((now + after, m.clone()));
        }
    }

    /// When the next recorded suspicion falls due.
    fn next_due(&self) -> Option<Instant> {
        self.0.iter().map(|(at, _)| *at).min()
    }

    /// Declares down every suspicion due by `now` that is still the same (same
    /// identity, suspect, same incarnation: a refutation raises the incarnation).
    fn expire(&mut self, foca: &mut Swim, now: Instant, rt: &mut AccumulatingRuntime<MemberId>) {
        if self.0.is_empty() {
            return;
        }
        let (due, keep): (Vec<_>, Vec<_>) = self.0.drain(..).partition(|(at, _)| *at <= now);
        self.0 = keep;
        for (_, m) in due {
            let unrefuted = foca.iter_members().any(|c| {
                c.id() == m.id()
                    && c.state() == State::Suspect
                    && c.incarnation() == m.incarnation()
            });
            if !unrefuted {
                continue;
            }
            info!(peer = %m.id().name, "suspicion held across a rejoin timed out");
            let down = Member::new(m.id().clone(), m.incarnation(), State::Down);
            if let Err(error) = foca.apply_many(std::iter::once(down), true, &mut *rt) {
                debug!(%error, "declaring a suspect down failed");
            }
        }
    }
}

/// Screens one datagram received `from` against the cluster's `nodes` before foca sees
/// it.
///
/// Dropped (`Err` with the reason): a sender that is not a cluster node; a header that
/// does not decode; a sender identity whose address is not `from` or whose name is not
/// the node registered at that address; a probe naming a member that is not a cluster
/// node; an update that does not decode. Kept: everything else, with the updates about
/// members that are not cluster nodes removed (`Ok(Some(rewritten))`; `Ok(None)` when
/// nothing was removed).
///
/// The layout read here is foca 2's: the header, then (except for `Broadcast`) a
/// big-endian `u16` count of member updates and the updates, then custom broadcasts.
pub fn screen(
    data: &[u8],
    from: SocketAddr,
    nodes: &ClusterNodes,
) -> Result<Option<Vec<u8>>, &'static str> {
    if !nodes.is_node(from.ip()) {
        return Err("not a cluster node");
    }
    let mut codec = PostcardCodec;
    let mut rest = data;
    let header: Header<MemberId> = codec
        .decode_header(&mut rest)
        .map_err(|_| "undecodable header")?;
    let admitted = |id: &MemberId| nodes.admits(&id.name, id.addr.ip());
    if !same_addr(header.src.addr, from) {
        return Err("sender identity is not at the sending address");
    }
    if !admitted(&header.src) {
        return Err("sender identity is not the node at this address");
    }
    let named = match &header.message {
        Message::PingReq { target: id, .. }
        | Message::IndirectPing { origin: id, .. }
        | Message::IndirectAck { target: id, .. }
        | Message::ForwardedAck { origin: id, .. } => Some(id),
        _ => None,
    };
    if named.is_some_and(|id| !admitted(id)) {
        return Err("probe names a member that is not a cluster node");
    }
    if rest.len() < 2 || header.message == Message::Broadcast {
        return Ok(None);
    }
    let count = u16::from_be_bytes([rest[0], rest[1]]);
    rest = &rest[2..];
    let mut kept: Vec<Member<MemberId>> = Vec::with_capacity(usize::from(count));
    let mut removed = false;
    for _ in 0..count {
        let m: Member<MemberId> = codec
            .decode_member(&mut rest)
            .map_err(|_| "undecodable member update")?;
        if admitted(m.id()) {
            kept.push(m);
        } else {
            removed = true;
        }
    }
    if !removed {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(data.len());
    codec
        .encode_header(&header, &mut out)
        .map_err(|_| "re-encoding the header failed")?;
    // At most `count` members were kept: the count fits.
    out.extend_from_slice(&u16::try_from(kept.len()).unwrap_or(0).to_be_bytes());
    for m in &kept {
        codec
            .encode_member(m, &mut out)
            .map_err(|_| "re-encoding a member failed")?;
    }
    out.extend_from_slice(rest);
    Ok(Some(out))
}

/// Whether two socket addresses are the same, an IPv4-mapped IPv6 address being equal to
/// its IPv4 address.
fn same_addr(a: SocketAddr, b: SocketAddr) -> bool {
    let ip = |s: SocketAddr| match s.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 @ IpAddr::V4(_) => v4,
    };
    a.port() == b.port() && ip(a) == ip(b)
}

fn snapshot(foca: &Swim, own: &str) -> MembershipView {
    let mut members: BTreeMap<String, MemberInfo> = BTreeMap::new();
    for m in foca.iter_membership_state() {
        let id = m.id();
        if id.name == own || id.name.is_empty() {
            continue;
        }
        let liveness = match m.state() {
            State::Alive => Liveness::Alive,
            State::Suspect => Liveness::Suspect,
            State::Down => Liveness::Down,
        };
        let info = MemberInfo {
            addr: id.addr,
            liveness,
        };
        // Several identities of one name may be listed: the best liveness wins.
        members
            .entry(id.name.clone())
            .and_modify(|e| {
                if info.liveness < e.liveness {
                    *e = info.clone();
                }
            })
            .or_insert(info);
    }
    MembershipView { members }
}

fn publish(view: &watch::Sender<MembershipView>, foca: &Swim, own: &str) {
    let next = snapshot(foca, own);
    view.send_if_modified(|v| {
        if *v == next {
            false
        } else {
            *v = next;
            true
        }
    });
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::Admission;

    async fn member(name: &str, seeds: Vec<SocketAddr>) -> (Membership, SocketAddr) {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let options = MembershipOptions {
            probe_period: Duration::from_millis(200),
            probe_rtt: Duration::from_millis(100),
            suspect_to_down_after: Duration::from_millis(800),
            reannounce_every: Duration::from_millis(300),
            ..MembershipOptions::default()
        };
        let m = Membership::new(
            name,
            socket,
            Arc::new(move || seeds.clone()),
            Some(ClusterNodes::new(Admission::Range(
                "127.0.0.0/8".parse().unwrap(),
            ))),
            options,
        )
        .unwrap();
        (m, addr)
    }

    async fn wait_view(
        rx: &mut watch::Receiver<MembershipView>,
        what: &str,
        f: impl Fn(&MembershipView) -> bool,
    ) {
        let ok = tokio::time::timeout(Duration::from_secs(15), rx.wait_for(|v| f(v)))
            .await
            .is_ok();
        assert!(ok, "timed out waiting for {what}: {:?}", *rx.borrow());
    }

    #[tokio::test]
    async fn three_members_join_detect_a_death_and_see_it_return() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let (a, a_addr) = member("a", vec![]).await;
        let (b, _) = member("b", vec![a_addr]).await;
        let (c, c_addr) = member("c", vec![a_addr]).await;
        let mut va = a.subscribe();
        let mut vb = b.subscribe();
        let (stop_c_tx, stop_c) = tokio::sync::oneshot::channel::<()>();
        let (stop_tx, stop) = watch::channel(false);
        let wait = |mut s: watch::Receiver<bool>| async move {
            let _ = s.wait_for(|s| *s).await;
        };
        let ta = tokio::spawn(a.run(wait(stop.clone())));
        let tb = tokio::spawn(b.run(wait(stop.clone())));
        let tc = tokio::spawn(c.run(async move {
            let _ = stop_c.await;
        }));
        wait_view(&mut va, "a sees b and c", |v| {
            v.is_alive("b") && v.is_alive("c")
        })
        .await;
        wait_view(&mut vb, "b sees a and c", |v| {
            v.is_alive("a") && v.is_alive("c")
        })
        .await;
        // Kill c without a goodbye: abort its task.
        drop(stop_c_tx);
        tc.abort();
        let _ = tc.await;
        wait_view(&mut va, "a sees c gone", |v| !v.is_alive("c")).await;
        // c comes back on the same address with a new generation.
        let socket = UdpSocket::bind(c_addr).await.unwrap();
        let c2 = Membership::new(
            "c",
            socket,
            Arc::new(move || vec![a_addr]),
            None,
            MembershipOptions {
                reannounce_every: Duration::from_millis(300),
                ..MembershipOptions::default()
            },
        )
        .unwrap();
        let mut vc = c2.subscribe();
        let tc2 = tokio::spawn(c2.run(wait(stop.clone())));
        wait_view(&mut va, "a sees c again", |v| v.is_alive("c")).await;
        wait_view(&mut vc, "c sees a and b", |v| {
            v.is_alive("a") && v.is_alive("b")
        })
        .await;
        stop_tx.send(true).unwrap();
        for t in [ta, tb, tc2] {
            t.await.unwrap();
        }
    }

    fn id(name: &str, addr: &str) -> MemberId {
        MemberId {
            name: name.into(),
            addr: addr.parse().unwrap(),
            generation: 1,
        }
    }

    fn datagram(src: &MemberId, message: Message<MemberId>, updates: &[MemberId]) -> Vec<u8> {
        let header = Header {
            src: src.clone(),
            src_incarnation: 0,
            dst: id("", "127.0.0.2:7947"),
            message,
        };
        let mut out = Vec::new();
        PostcardCodec.encode_header(&header, &mut out).unwrap();
        if !updates.is_empty() {
            out.extend_from_slice(&u16::try_from(updates.len()).unwrap().to_be_bytes());
            for u in updates {
                PostcardCodec
                    .encode_member(&Member::alive(u.clone()), &mut out)
                    .unwrap();
            }
        }
        out
    }

    #[test]
    fn screening_checks_the_sender_identity_against_its_address() {
        let nodes = ClusterNodes::new(Admission::Nodes);
        nodes.set(
            [
                ("a".to_owned(), "127.0.0.2".parse().unwrap()),
                ("b".to_owned(), "127.0.0.3".parse().unwrap()),
            ],
            ["127.0.0.9".parse().unwrap()],
        );
        let (a, b) = (id("a", "127.0.0.2:7947"), id("b", "127.0.0.3:7947"));
        let from_b: SocketAddr = "127.0.0.3:7947".parse().unwrap();
        let ping = datagram(&b, Message::Ping(1), &[]);
        assert_eq!(screen(&ping, from_b, &nodes), Ok(None));
        // b's identity from a's address, from another port of b's, from an external peer.
        for from in ["127.0.0.2:7947", "127.0.0.3:40000", "127.0.0.9:7947"] {
            assert!(
                screen(&ping, from.parse().unwrap(), &nodes).is_err(),
                "{from}"
            );
        }
        // Another name at b's address, and an unknown member from an unknown address.
        let impostor = datagram(&id("c", "127.0.0.3:7947"), Message::Ping(1), &[]);
        assert!(screen(&impostor, from_b, &nodes).is_err());
        let x = id("x", "127.0.0.9:7947");
        assert!(
            screen(
                &datagram(&x, Message::Announce, &[]),
                "127.0.0.9:7947".parse().unwrap(),
                &nodes
            )
            .is_err()
        );
        // A probe on behalf of a non-member.
        let req = Message::PingReq {
            target: x.clone(),
            probe_number: 1,
        };
        assert!(screen(&datagram(&b, req, &[]), from_b, &nodes).is_err());
        // Garbage.
        assert!(screen(&[0xff; 7], from_b, &nodes).is_err());
        // Updates about non-members are removed, the rest is kept.
        let gossip = datagram(&b, Message::Gossip, &[a.clone(), x, b.clone()]);
        let Ok(Some(kept)) = screen(&gossip, from_b, &nodes) else {
            panic!("the gossip was not rewritten");
        };
        assert_eq!(kept, datagram(&b, Message::Gossip, &[a.clone(), b.clone()]));
        let clean = datagram(&b, Message::Gossip, &[a, b.clone()]);
        assert_eq!(screen(&clean, from_b, &nodes), Ok(None));
    }

    #[test]
    fn newer_generation_wins() {
        let id = MemberId {
            name: "a".into(),
            addr: "127.0.0.1:1".parse().unwrap(),
            generation: 5,
        };
        let renewed = id.renew().unwrap();
        assert!(renewed.win_addr_conflict(&id));
        assert!(!id.win_addr_conflict(&renewed));
        assert_eq!(renewed.addr(), id.addr());
    }

    /// foca drops the suspect-to-down timers when it rejoins with a new identity; the
    /// driver's watch declares such a suspicion down after `suspect_to_down_after`, unless
    /// it was refuted.
    #[test]
    fn a_suspicion_held_across_a_rejoin_still_times_out() {
        let id = |name: &str, ip: &str| MemberId {
            name: name.into(),
            addr: (ip.to_owned() + ":7947").parse().unwrap(),
            generation: 5,
        };
        let (a, b, c) = (
            id("a", "127.0.0.1"),
            id("b", "127.0.0.2"),
            id("c", "127.0.0.3"),
        );
        let options = MembershipOptions::default();
        let mut foca: Swim = Foca::new(
            a.clone(),
            options.foca_config(),
            StdRng::from_seed([7; 32]),
            PostcardCodec,
        );
        let mut rt = AccumulatingRuntime::new();
        let apply = |foca: &mut Swim, rt: &mut AccumulatingRuntime<MemberId>, m| {
            foca.apply_many(std::iter::once(m), true, rt).unwrap();
        };
        for m in [&b, &c] {
            apply(&mut foca, &mut rt, Member::alive(m.clone()));
            apply(
                &mut foca,
                &mut rt,
                Member::new(m.clone(), 0, State::Suspect),
            );
        }
        let mut timers = Vec::new();
        while let Some((_, t)) = rt.to_schedule() {
            timers.push(t);
        }
        // The cluster says this node is down: it rejoins as a new identity.
        apply(&mut foca, &mut rt, Member::new(a.clone(), 0, State::Down));
        let mut rejoined = false;
        while let Some(n) = rt.to_notify() {
            rejoined |= matches!(n, OwnedNotification::Rejoin(_));
        }
        assert!(rejoined, "the node rejoined");
        let t0 = Instant::now();
        let mut orphaned = OrphanedSuspicions::default();
        orphaned.on_rejoin(&foca, t0, options.suspect_to_down_after);
        // The timers scheduled before the rejoin no longer do anything.
        for t in timers {
            foca.handle_timer(t, &mut rt).unwrap();
        }
        let state = |foca: &Swim, m: &MemberId| {
            foca.iter_membership_state()
                .find(|x| x.id() == m)
                .map(Member::state)
        };
        assert_eq!(
            state(&foca, &b),
            Some(State::Suspect),
            "foca kept b suspect"
        );
        // c refutes meanwhile; b does not.
        apply(&mut foca, &mut rt, Member::new(c.clone(), 1, State::Alive));
        orphaned.expire(&mut foca, t0 + options.suspect_to_down_after / 2, &mut rt);
        assert_eq!(state(&foca, &b), Some(State::Suspect), "not due yet");
        orphaned.expire(&mut foca, t0 + options.suspect_to_down_after, &mut rt);
        assert_eq!(state(&foca, &b), Some(State::Down));
        assert_eq!(state(&foca, &c), Some(State::Alive));
        assert_eq!(orphaned.next_due(), None);
    }
}
