//! Certificates over ACME (RFC 8555) with instant-acme.
//!
//! [`AcmeManager`] keeps certificates for a set of [`CertOrder`]s: it orders one when none
//! is installed or the installed one is two thirds through its lifetime, retries with
//! exponential backoff within a budget, and never replaces a valid certificate by
//! nothing. Only the holder of a [`Lease`] orders, so one node in a cluster does it.
//! Challenges are published through the [`ChallengeStore`] (HTTP-01, answered by every
//! node's port 80) or a [`DnsChallenge`] (DNS-01, required for wildcards), and the CA is
//! only asked to validate once the answer is visible.

use std::fmt::Debug;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::HttpError;
use crate::challenge::ChallengeStore;
use crate::tls::{Certificate, MemoryCerts};

/// Let's Encrypt's production directory (the default).
pub const LETS_ENCRYPT_PRODUCTION: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// Let's Encrypt's staging directory.
pub const LETS_ENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";

/// ACME settings.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AcmeConfig {
    /// The CA's directory URL.
    pub directory_url: String,
    /// Contact address for the account (without `mailto:`).
    pub contact_email: Option<String>,
    /// A PEM root to trust for the directory connection instead of the web PKI (test CAs).
    pub directory_root_pem: Option<PathBuf>,
    /// Where our own port 80 listens, to check that an HTTP-01 answer is served before the
    /// CA is asked to validate. `None` trusts the [`ChallengeStore`] alone.
    pub http01_probe: Option<SocketAddr>,
    /// How long to wait for a published challenge to become visible.
    pub visibility_timeout_ms: u64,
    /// How long to wait for the CA to validate and issue.
    pub order_timeout_ms: u64,
    /// First delay after a failed attempt; doubles after each failure.
    pub retry_initial_ms: u64,
    /// Longest delay between attempts.
    pub retry_max_ms: u64,
    /// Attempts per [`AcmeManager::ensure`] call before giving up until the next round.
    pub retry_budget: u32,
    /// Time between rounds of [`AcmeManager::run`].
    pub check_interval_ms: u64,
    /// Lifetime of the orderer lease; renewed every round.
    pub lease_ttl_ms: u64,
}

impl Default for AcmeConfig {
    fn default() -> Self {
        AcmeConfig {
            directory_url: LETS_ENCRYPT_PRODUCTION.into(),
            contact_email: None,
            directory_root_pem: None,
            http01_probe: None,
            visibility_timeout_ms: 60_000,
            order_timeout_ms: 120_000,
            retry_initial_ms: 60_000,
            retry_max_ms: 6 * 3600 * 1000,
            retry_budget: 5,
            check_interval_ms: 3600 * 1000,
            lease_ttl_ms: 10 * 60 * 1000,
        }
    }
}

/// Which challenge proves control of the names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub enum ChallengeKind {
    /// HTTP-01 on port 80 (wildcards still go through DNS-01).
    Http01,
    /// DNS-01 TXT records at `_acme-challenge.<name>`.
    Dns01,
}

/// One certificate to keep: its names (the first is the primary) and how to prove them.
#[derive(Debug, Clone)]
pub struct CertOrder {
    /// DNS names, wildcards allowed (`*.example.com`, DNS-01 only).
    pub names: Vec<String>,
    /// Preferred challenge.
    pub challenge: ChallengeKind,
    /// Names of `names` proved over DNS-01 whatever `challenge` says (wildcards always
    /// are), e.g. hostnames whose address is not ours to serve HTTP-01 on.
    pub dns01_names: Vec<String>,
}

impl CertOrder {
    /// An order for `names` proved over `challenge` (wildcards over DNS-01).
    pub fn new(names: Vec<String>, challenge: ChallengeKind) -> Self {
        CertOrder {
            names,
            challenge,
            dns01_names: Vec::new(),
        }
    }
}

/// Where the cluster's ACME account credentials persist (opaque JSON).
pub trait AcmeAccountStore: Debug + Send + Sync + 'static {
    /// The stored credentials, if any.
    fn load(&self) -> Result<Option<String>, HttpError>;
    /// Stores credentials.
    fn save(&self, credentials: &str) -> Result<(), HttpError>;
}

/// In-memory [`AcmeAccountStore`].
#[derive(Debug, Default)]
pub struct MemoryAccountStore(Mutex<Option<String>>);

impl AcmeAccountStore for MemoryAccountStore {
    fn load(&self) -> Result<Option<String>, HttpError> {
        Ok(self
            .0
            .lock()
            .map_err(|_| HttpError::Store("poisoned".into()))?
            .clone())
    }
    fn save(&self, credentials: &str) -> Result<(), HttpError> {
        *self
            .0
            .lock()
            .map_err(|_| HttpError::Store("poisoned".into()))? = Some(credentials.to_owned());
        Ok(())
    }
}

/// [`AcmeAccountStore`] in a file (written atomically, mode 0600).
#[derive(Debug, Clone)]
pub struct FileAccountStore(pub PathBuf);

impl AcmeAccountStore for FileAccountStore {
    fn load(&self) -> Result<Option<String>, HttpError> {
        match std::fs::read_to_string(&self.0) {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(HttpError::Read {
                path: self.0.clone(),
                source,
            }),
        }
    }
    fn save(&self, credentials: &str) -> Result<(), HttpError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let tmp = self.0.with_extension("tmp");
        let err = |source| HttpError::Read {
            path: tmp.clone(),
            source,
        };
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(err)?;
        f.write_all(credentials.as_bytes()).map_err(err)?;
        f.sync_all().map_err(err)?;
        std::fs::rename(&tmp, &self.0).map_err(err)
    }
}

/// A cluster-wide lease so only one orderer runs. A crashed holder's lease expires after
/// its ttl and another node takes over.
pub trait Lease: Send + Sync + 'static {
    /// Takes or renews the lease for `ttl`; `true` when this process now holds it.
    fn acquire(&self, ttl: Duration) -> impl Future<Output = Result<bool, HttpError>> + Send;
    /// Gives the lease up.
    fn release(&self) -> impl Future<Output = Result<(), HttpError>> + Send;
}

/// A [`Lease`] shared between handles in one process (tests, single node).
#[derive(Debug, Clone)]
pub struct LocalLease {
    state: Arc<Mutex<Option<(String, Instant)>>>,
    me: String,
}

impl LocalLease {
    /// A new lease, held by nobody, with a handle named `holder`.
    pub fn new(holder: &str) -> Self {
        LocalLease {
            state: Arc::default(),
            me: holder.to_owned(),
        }
    }
    /// Another handle on the same lease, for another holder.
    #[must_use]
    pub fn handle(&self, holder: &str) -> Self {
        LocalLease {
            state: Arc::clone(&self.state),
            me: holder.to_owned(),
        }
    }
}

impl Lease for LocalLease {
    fn acquire(&self, ttl: Duration) -> impl Future<Output = Result<bool, HttpError>> + Send {
        let r = (|| {
            let mut s = self
                .state
                .lock()
                .map_err(|_| HttpError::Store("poisoned".into()))?;
            let now = Instant::now();
            let free = match &*s {
                None => true,
                Some((who, until)) => *who == self.me || *until <= now,
            };
            if free {
                *s = Some((self.me.clone(), now + ttl));
            }
            Ok(free)
        })();
        std::future::ready(r)
    }
    fn release(&self) -> impl Future<Output = Result<(), HttpError>> + Send {
        let r = (|| {
            let mut s = self
                .state
                .lock()
                .map_err(|_| HttpError::Store("poisoned".into()))?;
            if s.as_ref().is_some_and(|(who, _)| *who == self.me) {
                *s = None;
            }
            Ok(())
        })();
        std::future::ready(r)
    }
}

/// Publishes DNS-01 TXT values where the CA will look (the embedder's authoritative DNS).
pub trait DnsChallenge: Send + Sync + 'static {
    /// Adds `value` to the TXT set at `name` (`_acme-challenge.<domain>`).
    fn publish(
        &self,
        name: &str,
        value: &str,
    ) -> impl Future<Output = Result<(), HttpError>> + Send;
    /// Whether the authoritative servers now answer `value` at `name`.
    fn is_visible(
        &self,
        name: &str,
        value: &str,
    ) -> impl Future<Output = Result<bool, HttpError>> + Send;
    /// Removes `value` from `name`.
    fn remove(&self, name: &str, value: &str)
    -> impl Future<Output = Result<(), HttpError>> + Send;
}

/// [`DnsChallenge`] for HTTP-01-only setups: every DNS-01 attempt fails clearly.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoDns;

impl DnsChallenge for NoDns {
    async fn publish(&self, name: &str, _: &str) -> Result<(), HttpError> {
        Err(HttpError::Config(format!(
            "{name}: DNS-01 needs a DnsChallenge publisher (wildcards always do)"
        )))
    }
    async fn is_visible(&self, _: &str, _: &str) -> Result<bool, HttpError> {
        Ok(false)
    }
    async fn remove(&self, _: &str, _: &str) -> Result<(), HttpError> {
        Ok(())
    }
}

/// Where issued certificates go and where the current ones are read from.
pub trait CertSink: Debug + Send + Sync + 'static {
    /// The installed certificate for the order's primary name, if any.
    fn current(&self, primary: &str) -> Option<Arc<Certificate>>;
    /// Installs a new certificate for all `names` (PEM kept for persistence).
    fn install(
        &self,
        names: &[String],
        cert: Certificate,
        chain_pem: &str,
        key_pem: &str,
    ) -> Result<(), HttpError>;
}

impl CertSink for MemoryCerts {
    fn current(&self, primary: &str) -> Option<Arc<Certificate>> {
        self.get(primary)
    }
    fn install(
        &self,
        names: &[String],
        cert: Certificate,
        _: &str,
        _: &str,
    ) -> Result<(), HttpError> {
        self.insert_for(names, cert);
        Ok(())
    }
}

/// Whether `cert` should be renewed at `now`: past two thirds of its lifetime.
pub fn renewal_due(cert: &Certificate, now: SystemTime) -> bool {
    let life = cert
        .not_after
        .duration_since(cert.not_before)
        .unwrap_or_default();
    let due = cert.not_before + life * 2 / 3;
    now >= due
}

/// What [`AcmeManager::ensure`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The installed certificate is valid and not yet due.
    Fresh,
    /// A new certificate was issued and installed.
    Issued,
}

/// The other servers a CA may reach for HTTP-01 (e.g. every healthy node GeoDNS may
/// answer with), asked again on every visibility check so that servers that left drop out.
pub type Http01Peers = Arc<dyn Fn() -> Vec<SocketAddr> + Send + Sync>;

/// Orders and renews certificates.
pub struct AcmeManager<L, D> {
    cfg: AcmeConfig,
    accounts: Arc<dyn AcmeAccountStore>,
    challenges: Arc<dyn ChallengeStore>,
    certs: Arc<dyn CertSink>,
    lease: L,
    dns: D,
    http01_peers: Option<Http01Peers>,
    account: tokio::sync::Mutex<Option<Account>>,
}

impl<L, D> Debug for AcmeManager<L, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcmeManager")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl<L: Lease, D: DnsChallenge> AcmeManager<L, D> {
    /// A manager publishing HTTP-01 answers in `challenges`, DNS-01 through `dns`, and
    /// installing certificates into `certs`.
    pub fn new(
        cfg: AcmeConfig,
        accounts: Arc<dyn AcmeAccountStore>,
        challenges: Arc<dyn ChallengeStore>,
        certs: Arc<dyn CertSink>,
        lease: L,
        dns: D,
    ) -> Self {
        AcmeManager {
            cfg,
            accounts,
            challenges,
            certs,
            lease,
            dns,
            http01_peers: None,
            account: tokio::sync::Mutex::new(None),
        }
    }

    /// Also waits, before the CA is asked to validate an HTTP-01 challenge, until every
    /// address `peers()` returns serves the answer on `/.well-known/acme-challenge/` (the
    /// CA may reach any of them). An address that does not answer at all counts as not
    /// visible, so the order waits for it up to `visibility_timeout_ms`.
    #[must_use]
    pub fn with_http01_peers(mut self, peers: Http01Peers) -> Self {
        self.http01_peers = Some(peers);
        self
    }

    /// The cluster's account: restored from the store, or created and saved.
    pub async fn account(&self) -> Result<Account, HttpError> {
        let mut slot = self.account.lock().await;
        if let Some(a) = &*slot {
            return Ok(a.clone());
        }
        let builder = || match &self.cfg.directory_root_pem {
            Some(p) => Account::builder_with_root(p),
            None => Account::builder(),
        };
        let account = if let Some(json) = self.accounts.load()? {
            let creds: AccountCredentials = serde_json::from_str(&json)
                .map_err(|e| HttpError::Store(format!("stored ACME account is unreadable: {e}")))?;
            builder()?.from_credentials(creds).await?
        } else {
            let contact = self
                .cfg
                .contact_email
                .as_ref()
                .map(|e| format!("mailto:{e}"));
            let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
            let (account, creds) = builder()?
                .create(
                    &NewAccount {
                        contact: &contacts,
                        terms_of_service_agreed: true,
                        only_return_existing: false,
                    },
                    self.cfg.directory_url.clone(),
                    None,
                )
                .await?;
            let json = serde_json::to_string(&creds)
                .map_err(|e| HttpError::Store(format!("serialising the ACME account: {e}")))?;
            self.accounts.save(&json)?;
            account
        };
        *slot = Some(account.clone());
        Ok(account)
    }

    /// Makes sure `order` has a valid certificate that is not due for renewal: orders one
    /// if needed, retrying with exponential backoff up to the retry budget. On failure the
    /// installed certificate (if any) stays. Every attempt first takes or renews the lease
    /// (and fails when another holder has it); the lease stays held until its TTL runs out
    /// or [`Lease::release`].
    pub async fn ensure(&self, order: &CertOrder) -> Result<Outcome, HttpError> {
        let primary = order.names.first().ok_or_else(|| {
            HttpError::Config("a certificate order needs at least one name".into())
        })?;
        if let Some(c) = self.certs.current(primary) {
            let now = SystemTime::now();
            // Fresh only if it also covers every name of the order (an alias added to a
            // site must not wait for the next renewal).
            let covers = order
                .names
                .iter()
                .all(|n| c.names.iter().any(|m| m.eq_ignore_ascii_case(n)));
            if covers && c.valid_at(now) && !renewal_due(&c, now) {
                return Ok(Outcome::Fresh);
            }
        }
        let mut delay = Duration::from_millis(self.cfg.retry_initial_ms);
        let mut attempt = 0;
        loop {
            attempt += 1;
            // Each attempt holds the lease (taken or renewed now): a long round of orders
            // and backoffs must never let a second node order the same names meanwhile.
            if !self
                .lease
                .acquire(Duration::from_millis(self.cfg.lease_ttl_ms))
                .await?
            {
                return Err(HttpError::Acme(
                    "another node holds the ACME lease; not ordering".into(),
                ));
            }
            match self.issue(order).await {
                Ok((cert, chain, key)) => {
                    self.certs.install(&order.names, cert, &chain, &key)?;
                    return Ok(Outcome::Issued);
                }
                Err(e) if attempt >= self.cfg.retry_budget.max(1) => return Err(e),
                Err(e) => {
                    tracing::warn!(name = %primary, attempt, error = %e, retry_in = ?delay, "certificate order failed");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_millis(self.cfg.retry_max_ms));
                }
            }
        }
    }

    /// Keeps every order of `orders()` fresh while holding the lease, until `shutdown`.
    pub async fn run<F>(&self, orders: F, shutdown: CancellationToken)
    where
        F: Fn() -> Vec<CertOrder> + Send + Sync,
    {
        loop {
            match self
                .lease
                .acquire(Duration::from_millis(self.cfg.lease_ttl_ms))
                .await
            {
                Ok(true) => {
                    for o in orders() {
                        if shutdown.is_cancelled() {
                            break;
                        }
                        if let Err(e) = self.ensure(&o).await {
                            tracing::error!(names = ?o.names, error = %e, "certificate not renewed; keeping the current one");
                        }
                    }
                }
                Ok(false) => tracing::debug!("another node holds the ACME lease"),
                Err(e) => tracing::warn!(error = %e, "ACME lease"),
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(Duration::from_millis(self.cfg.check_interval_ms)) => {}
            }
        }
        let _ = self.lease.release().await;
    }

    /// One order attempt: returns the certificate, its PEM chain and PEM key. Challenges
    /// published for it are withdrawn whatever the result.
    pub async fn issue(
        &self,
        order: &CertOrder,
    ) -> Result<(Certificate, String, String), HttpError> {
        let account = self.account().await?;
        let mut http_tokens = Vec::new();
        let mut dns_values = Vec::new();
        let r = self
            .issue_inner(&account, order, &mut http_tokens, &mut dns_values)
            .await;
        for t in &http_tokens {
            if let Err(e) = self.challenges.remove_http01(t) {
                tracing::warn!(error = %e, "removing an HTTP-01 answer");
            }
        }
        for (n, v) in &dns_values {
            if let Err(e) = self.dns.remove(n, v).await {
                tracing::warn!(error = %e, "removing a DNS-01 answer");
            }
        }
        r
    }

    async fn issue_inner(
        &self,
        account: &Account,
        order: &CertOrder,
        http_tokens: &mut Vec<String>,
        dns_values: &mut Vec<(String, String)>,
    ) -> Result<(Certificate, String, String), HttpError> {
        let ids: Vec<Identifier> = order
            .names
            .iter()
            .map(|n| Identifier::Dns(n.clone()))
            .collect();
        let mut acme_order = account.new_order(&NewOrder::new(&ids)).await?;
        let mut authzs = acme_order.authorizations();
        while let Some(a) = authzs.next().await {
            let mut a = a?;
            match a.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                s => return Err(HttpError::Acme(format!("authorization is {s:?}"))),
            }
            let domain = match &a.identifier().identifier {
                Identifier::Dns(d) => d.clone(),
                other => return Err(HttpError::Acme(format!("unsupported identifier {other:?}"))),
            };
            let dns01 = a.wildcard
                || order.challenge == ChallengeKind::Dns01
                || order
                    .dns01_names
                    .iter()
                    .any(|n| n.eq_ignore_ascii_case(&domain));
            let kind = if dns01 {
                ChallengeType::Dns01
            } else {
                ChallengeType::Http01
            };
            let mut ch = a
                .challenge(kind.clone())
                .ok_or_else(|| HttpError::Acme(format!("the CA offers no {kind:?} challenge")))?;
            let ka = ch.key_authorization();
            if kind == ChallengeType::Http01 {
                let token = ch.token.clone();
                self.challenges.put_http01(&token, ka.as_str())?;
                http_tokens.push(token.clone());
                self.wait_http01(&domain, &token, ka.as_str()).await?;
            } else {
                let name = format!("_acme-challenge.{domain}");
                let value = ka.dns_value();
                self.dns.publish(&name, &value).await?;
                dns_values.push((name.clone(), value.clone()));
                let check = || async {
                    let seen = self.dns.is_visible(&name, &value).await?;
                    Ok((!seen).then(|| "not answered by every nameserver".to_owned()))
                };
                self.wait_visible(check, &name).await?;
            }
            ch.set_ready().await?;
        }
        let retry = RetryPolicy::new()
            .initial_delay(Duration::from_millis(100))
            .timeout(Duration::from_millis(self.cfg.order_timeout_ms));
        let status = acme_order.poll_ready(&retry).await?;
        if status != OrderStatus::Ready {
            return Err(HttpError::Acme(format!(
                "order ended {status:?}: validation failed"
            )));
        }
        let key_pem = acme_order.finalize().await?;
        let chain_pem = acme_order.poll_certificate(&retry).await?;
        let cert = Certificate::from_pem(chain_pem.as_bytes(), key_pem.as_bytes())?;
        Ok((cert, chain_pem, key_pem))
    }

    /// Waits until our own port 80 (or, without a probe address, our store) and every
    /// HTTP-01 peer serve `ka` for `token`.
    async fn wait_http01(&self, domain: &str, token: &str, ka: &str) -> Result<(), HttpError> {
        let check = || async move {
            let mut targets: Vec<SocketAddr> = self.cfg.http01_probe.into_iter().collect();
            if targets.is_empty() && self.challenges.http01(token).as_deref() != Some(ka) {
                return Ok(Some("not in our challenge store".to_owned()));
            }
            if let Some(peers) = &self.http01_peers {
                for a in peers() {
                    if !targets.contains(&a) {
                        targets.push(a);
                    }
                }
            }
            let answers = futures_join(
                targets
                    .iter()
                    .map(|a| probe_http01(*a, domain, token))
                    .collect(),
            )
            .await;
            let missing: Vec<String> = targets
                .iter()
                .zip(answers)
                .filter(|(_, got)| got.clone().flatten().as_deref() != Some(ka))
                .map(|(a, _)| a.to_string())
                .collect();
            Ok((!missing.is_empty()).then(|| format!("not served by {}", missing.join(", "))))
        };
        self.wait_visible(check, domain).await
    }

    /// Polls `check` with a growing interval until it says visible (`None`) or the timeout
    /// passes; the error then carries the last reason `check` gave.
    async fn wait_visible<F, Fut>(&self, check: F, what: &str) -> Result<(), HttpError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<Option<String>, HttpError>>,
    {
        let deadline = Instant::now() + Duration::from_millis(self.cfg.visibility_timeout_ms);
        let mut pause = Duration::from_millis(20);
        loop {
            let Some(why) = check().await? else {
                return Ok(());
            };
            if Instant::now() >= deadline {
                return Err(HttpError::Acme(format!(
                    "challenge for {what} never became visible: {why}"
                )));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }
}

/// Runs `futures` concurrently and returns their outputs in order; `None` for one that
/// panicked or was cancelled (a probe that failed is not visible; it never takes the
/// orderer down).
async fn futures_join<T: Send + 'static>(
    futures: Vec<impl Future<Output = T> + Send + 'static>,
) -> Vec<Option<T>> {
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.ok());
    }
    out
}

/// The TXT values `server` answers for `name` (one UDP query, then TCP if the answer was
/// truncated), each value's strings concatenated. Used to check that a DNS-01 value is
/// visible on an authoritative server before the CA is asked to validate.
pub async fn txt_values(server: SocketAddr, name: &str) -> Result<Vec<String>, HttpError> {
    use hickory_proto::op::{Message, Query};
    use hickory_proto::rr::{Name, RData, RecordType};
    let err = |what: &str, e: &dyn std::fmt::Display| {
        HttpError::Acme(format!("TXT {name} from {server}: {what}: {e}"))
    };
    let qname = Name::from_ascii(name).map_err(|e| err("bad name", &e))?;
    let mut query = Message::query();
    query.add_query(Query::query(qname, RecordType::TXT));
    let id = query.metadata.id;
    let bytes = query.to_vec().map_err(|e| err("encoding", &e))?;
    let io = |e: std::io::Error| err("network", &e);
    let exchange = async {
        let local: SocketAddr = if server.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let sock = tokio::net::UdpSocket::bind(local).await.map_err(io)?;
        sock.connect(server).await.map_err(io)?;
        sock.send(&bytes).await.map_err(io)?;
        let mut buf = vec![0u8; 4096];
        let answer = loop {
            let n = sock.recv(&mut buf).await.map_err(io)?;
            if let Ok(m) = Message::from_vec(&buf[..n])
                && m.metadata.id == id
            {
                break m;
            }
        };
        if !answer.metadata.truncation {
            return Ok(answer);
        }
        let mut tcp = tokio::net::TcpStream::connect(server).await.map_err(io)?;
        let len = u16::try_from(bytes.len()).map_err(|e| err("encoding", &e))?;
        tcp.write_all(&len.to_be_bytes()).await.map_err(io)?;
        tcp.write_all(&bytes).await.map_err(io)?;
        let n = usize::from(tcp.read_u16().await.map_err(io)?);
        let mut buf = vec![0u8; n];
        tcp.read_exact(&mut buf).await.map_err(io)?;
        Message::from_vec(&buf).map_err(|e| err("decoding", &e))
    };
    let answer = tokio::time::timeout(Duration::from_secs(3), exchange)
        .await
        .map_err(|e| err("no answer", &e))??;
    Ok(answer
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::TXT(t) => Some(
                t.txt_data
                    .iter()
                    .map(|p| String::from_utf8_lossy(p))
                    .collect::<String>(),
            ),
            _ => None,
        })
        .collect())
}

/// GETs our own HTTP-01 answer the way the CA will, returning the body on a 200.
fn probe_http01(
    addr: SocketAddr,
    host: &str,
    token: &str,
) -> impl Future<Output = Option<String>> + Send + 'static {
    let (host, token) = (host.to_owned(), token.to_owned());
    let fut = async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        let req = format!(
            "GET /.well-known/acme-challenge/{token} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        s.take(64 * 1024).read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8(buf).ok()?;
        let (head, body) = text.split_once("\r\n\r\n")?;
        head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
    };
    async move {
        tokio::time::timeout(Duration::from_secs(5), fut)
            .await
            .ok()
            .flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(not_before: SystemTime, not_after: SystemTime) -> Certificate {
        let mut params = rcgen::CertificateParams::new(vec!["a.test".to_owned()]).unwrap();
        let secs = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
        let to = |t: SystemTime| {
            let d = secs(t) / 86_400;
            // Whole days after the 1970 epoch.
            rcgen::date_time_ymd(1970, 1, 1) + std::time::Duration::from_secs(d * 86_400)
        };
        params.not_before = to(not_before);
        params.not_after = to(not_after);
        let key = rcgen::KeyPair::generate().unwrap();
        let c = params.self_signed(&key).unwrap();
        let der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
        Certificate::from_der(vec![c.der().clone()], &der).unwrap()
    }

    #[test]
    fn renewal_at_two_thirds() {
        let day = Duration::from_secs(86_400);
        let start = SystemTime::UNIX_EPOCH + day * 20_000;
        let c = cert(start, start + day * 90);
        assert!(!renewal_due(&c, start + day * 59));
        assert!(renewal_due(&c, start + day * 60));
        assert!(renewal_due(&c, start + day * 100));
    }

    #[tokio::test]
    async fn lease_is_exclusive_and_expires() {
        let a = LocalLease::new("a");
        let b = a.handle("b");
        assert!(a.acquire(Duration::from_millis(50)).await.unwrap());
        assert!(!b.acquire(Duration::from_secs(60)).await.unwrap());
        assert!(a.acquire(Duration::from_millis(0)).await.unwrap());
        // a's lease has expired (ttl 0): b takes over.
        assert!(b.acquire(Duration::from_secs(60)).await.unwrap());
        assert!(!a.acquire(Duration::from_secs(60)).await.unwrap());
        b.release().await.unwrap();
        assert!(a.acquire(Duration::from_secs(60)).await.unwrap());
    }
}
