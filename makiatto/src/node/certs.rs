//! Certificates and ACME challenge answers from the replicated store, so that every node
//! serves the certificates any node obtained and answers any node's challenges.

use std::sync::Arc;

use arc_swap::ArcSwap;
use makiatto_http::{CertSource, Certificate, ChallengeStore, HttpError, MemoryCerts};
use rustls::sign::CertifiedKey;

use crate::store::Store;
use crate::store::cluster::acme_challenges::{self, Challenge, ChallengeKind};
use crate::store::cluster::certificates;

/// How long a published challenge is answered at most.
const CHALLENGE_TTL_MS: i64 = 3_600_000;
/// The DNS-01 owner prefix.
const DNS01_PREFIX: &str = "_acme-challenge.";

/// The valid certificates of the store, by name (exact, then one-label wildcard); the
/// snapshot is rebuilt by [`StoreCerts::reload`] and swapped whole.
#[derive(Debug, Default)]
pub struct StoreCerts {
    current: ArcSwap<MemoryCerts>,
}

impl CertSource for StoreCerts {
    fn resolve(&self, server_name: &str) -> Option<Arc<CertifiedKey>> {
        self.current.load().resolve(server_name)
    }
}

impl StoreCerts {
    /// The certificate installed for exactly `name`, valid or not.
    pub fn get(&self, name: &str) -> Option<Arc<Certificate>> {
        self.current.load().get(name)
    }

    /// Rebuilds the snapshot from the store's certificates valid at `now_ms` (the one
    /// that lasts longest wins a name); returns how many were installed.
    pub fn reload(&self, store: &Store, now_ms: i64) -> crate::store::Result<usize> {
        let mut rows = store.read(certificates::list)?;
        rows.retain(|c| c.is_valid_at(now_ms));
        rows.sort_by_key(|c| c.not_after_ms);
        let fresh = MemoryCerts::new();
        let mut installed = 0;
        for row in rows {
            match Certificate::from_pem(
                row.bundle.chain_pem.as_bytes(),
                row.bundle.key_pem.as_bytes(),
            ) {
                Ok(cert) => {
                    fresh.insert_for(&row.names, cert);
                    installed += 1;
                }
                Err(e) => tracing::warn!(certificate = %row.id, error = %e, "unusable certificate"),
            }
        }
        self.current.store(Arc::new(fresh));
        Ok(installed)
    }
}

/// The store's certificates chosen by SNI, for DNS over TLS (`<node>.ns.<domain>` is in
/// every domain's certificate). A client without SNI, or naming a host with no
/// certificate, is refused, as over HTTPS.
#[derive(Debug)]
pub struct SniCerts(pub Arc<StoreCerts>);

impl rustls::server::ResolvesServerCert for SniCerts {
    fn resolve(&self, hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = makiatto_http::normalize_host(hello.server_name()?)?;
        self.0.resolve(&name)
    }
}

/// ACME challenge answers in the store's `acme_challenges` table.
#[derive(Debug, Clone)]
pub struct StoreChallenges {
    store: Store,
}

impl StoreChallenges {
    /// Answers from `store`.
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    fn write(
        &self,
        f: impl FnOnce(&rusqlite::Connection) -> crate::store::Result<()>,
    ) -> Result<(), HttpError> {
        self.store
            .write(|tx| f(tx))
            .map_err(|e| HttpError::Store(e.to_string()))
    }
}

/// The row key of a DNS-01 value (no ACME token travels with it).
fn dns01_token(name: &str, value: &str) -> String {
    format!(
        "dns-01-{}",
        blake3::hash(format!("{name}\n{value}").as_bytes()).to_hex()
    )
}

fn identifier(name: &str) -> String {
    let name = crate::store::cluster::normalize_name(name);
    name.strip_prefix(DNS01_PREFIX)
        .map_or(name.clone(), str::to_owned)
}

impl ChallengeStore for StoreChallenges {
    fn http01(&self, token: &str) -> Option<String> {
        self.store
            .read(|c| acme_challenges::http_answer(c, token, now_ms()))
            .ok()
            .flatten()
    }

    fn put_http01(&self, token: &str, key_authorization: &str) -> Result<(), HttpError> {
        let row = Challenge {
            token: token.to_owned(),
            kind: ChallengeKind::Http01,
            name: String::new(),
            value: key_authorization.to_owned(),
            expires_ms: now_ms() + CHALLENGE_TTL_MS,
        };
        self.write(|tx| acme_challenges::upsert(tx, &row))
    }

    fn remove_http01(&self, token: &str) -> Result<(), HttpError> {
        self.write(|tx| acme_challenges::delete(tx, token).map(|_| ()))
    }

    fn dns01(&self, name: &str) -> Vec<String> {
        self.store
            .read(|c| acme_challenges::dns_answers(c, &identifier(name), now_ms()))
            .unwrap_or_default()
    }

    fn put_dns01(&self, name: &str, value: &str) -> Result<(), HttpError> {
        let name = identifier(name);
        let row = Challenge {
            token: dns01_token(&name, value),
            kind: ChallengeKind::Dns01,
            value: value.to_owned(),
            expires_ms: now_ms() + CHALLENGE_TTL_MS,
            name,
        };
        self.write(|tx| acme_challenges::upsert(tx, &row))
    }

    fn remove_dns01(&self, name: &str, value: &str) -> Result<(), HttpError> {
        let token = dns01_token(&identifier(name), value);
        self.write(|tx| acme_challenges::delete(tx, &token).map(|_| ()))
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Options;
    use crate::store::cluster::{self, certificates::Bundle};

    fn store(dir: &std::path::Path) -> Store {
        Store::open(dir.join("s.db"), &cluster::SCHEMA, Options::default()).unwrap()
    }

    fn cert(id: &str, names: &[&str], not_after_ms: i64) -> certificates::Certificate {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let key = rcgen::generate_simple_self_signed(names.clone()).unwrap();
        certificates::Certificate {
            id: id.into(),
            domain: "example.com".into(),
            names,
            bundle: Bundle {
                chain_pem: key.cert.pem(),
                key_pem: key.signing_key.serialize_pem(),
            },
            not_before_ms: 0,
            not_after_ms,
            created_ms: 0,
        }
    }

    #[test]
    fn valid_store_certificates_are_served_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let now = now_ms();
        s.write(|tx| {
            certificates::insert(
                tx,
                &cert("a", &["example.com", "*.example.com"], now + 1_000_000),
            )?;
            certificates::insert(tx, &cert("old", &["old.org"], now - 1)).map(|_| ())
        })
        .unwrap();
        let certs = StoreCerts::default();
        assert!(
            certs.resolve("example.com").is_none(),
            "empty before a reload"
        );
        assert_eq!(certs.reload(&s, now).unwrap(), 1);
        assert!(certs.resolve("example.com").is_some());
        assert!(certs.resolve("www.example.com").is_some());
        assert!(certs.resolve("old.org").is_none(), "expired");
        assert!(certs.resolve("other.net").is_none());
    }

    #[test]
    fn challenges_round_trip_through_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let c = StoreChallenges::new(store(dir.path()));
        c.put_http01("tok", "tok.thumb").unwrap();
        assert_eq!(c.http01("tok").as_deref(), Some("tok.thumb"));
        c.remove_http01("tok").unwrap();
        assert_eq!(c.http01("tok"), None);
        c.put_dns01("_acme-challenge.example.com", "v1").unwrap();
        c.put_dns01("_acme-challenge.example.com", "v2").unwrap();
        assert_eq!(c.dns01("_acme-challenge.example.com"), ["v1", "v2"]);
        c.remove_dns01("_acme-challenge.example.com", "v1").unwrap();
        assert_eq!(c.dns01("_acme-challenge.example.com"), ["v2"]);
    }
}
