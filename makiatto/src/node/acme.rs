//! ACME on a node: the cluster's one orderer (a lease in the store), its account (in the
//! store, one per directory), and issued certificates (inserted into `certificates`, from
//! where every node serves them). Orders: each domain with its aliases, over HTTP-01 (any
//! node answers from `acme_challenges`).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use makiatto_http::acme::{
    AcmeAccountStore, AcmeConfig, AcmeManager, CertOrder, CertSink, ChallengeKind, Lease, NoDns,
};
use makiatto_http::{Certificate, ChallengeStore, HttpError};

use super::certs::StoreCerts;
use crate::store::Store;
use crate::store::cluster::{acme_accounts, aliases, certificates, domains, leases};

/// The lease naming the node that orders certificates.
const LEASE: &str = "acme";

fn store_err(e: &crate::store::StoreError) -> HttpError {
    HttpError::Store(e.to_string())
}

fn ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The orderer lease in the store's `leases` table.
#[derive(Debug, Clone)]
pub(crate) struct StoreLease {
    pub(crate) store: Store,
    pub(crate) holder: String,
}

impl Lease for StoreLease {
    async fn acquire(&self, ttl: Duration) -> Result<bool, HttpError> {
        let ttl = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        let now = ms(SystemTime::now());
        self.store
            .write(|tx| leases::try_acquire(tx, LEASE, &self.holder, now, ttl))
            .map_err(|e| store_err(&e))
    }

    async fn release(&self) -> Result<(), HttpError> {
        let now = ms(SystemTime::now());
        self.store
            .write(|tx| leases::release(tx, LEASE, &self.holder, now))
            .map(|_| ())
            .map_err(|e| store_err(&e))
    }
}

/// The account of one directory in `acme_accounts`.
#[derive(Debug, Clone)]
pub(crate) struct StoreAccounts {
    pub(crate) store: Store,
    pub(crate) directory: String,
    pub(crate) contact: String,
}

impl AcmeAccountStore for StoreAccounts {
    fn load(&self) -> Result<Option<String>, HttpError> {
        let row = self
            .store
            .read(|c| acme_accounts::get(c, &self.directory))
            .map_err(|e| store_err(&e))?;
        Ok(row
            .filter(|a| !a.credentials.is_empty())
            .and_then(|a| String::from_utf8(a.credentials).ok()))
    }

    fn save(&self, credentials: &str) -> Result<(), HttpError> {
        let row = acme_accounts::Account {
            id: self.directory.clone(),
            credentials: credentials.as_bytes().to_vec(),
            contact: self.contact.clone(),
            created_ms: ms(SystemTime::now()),
        };
        self.store
            .write(|tx| acme_accounts::upsert(tx, &row))
            .map_err(|e| store_err(&e))
    }
}

/// Issued certificates go into the store; the current ones are what this node serves.
#[derive(Debug)]
pub(crate) struct StoreSink {
    pub(crate) store: Store,
    pub(crate) certs: Arc<StoreCerts>,
}

impl CertSink for StoreSink {
    fn current(&self, primary: &str) -> Option<Arc<Certificate>> {
        self.certs.get(primary)
    }

    fn install(
        &self,
        names: &[String],
        cert: Certificate,
        chain_pem: &str,
        key_pem: &str,
    ) -> Result<(), HttpError> {
        let row = certificates::Certificate {
            id: blake3::hash(chain_pem.as_bytes()).to_hex().to_string(),
            domain: names.first().cloned().unwrap_or_default(),
            names: names.to_vec(),
            bundle: certificates::Bundle {
                chain_pem: chain_pem.to_owned(),
                key_pem: key_pem.to_owned(),
            },
            not_before_ms: ms(cert.not_before),
            not_after_ms: ms(cert.not_after),
            created_ms: ms(SystemTime::now()),
        };
        self.store
            .write(|tx| certificates::insert(tx, &row).map(|_| ()))
            .map_err(|e| store_err(&e))?;
        // Serve it here at once; the others reload when the row reaches them.
        self.certs
            .reload(&self.store, ms(SystemTime::now()))
            .map_err(|e| store_err(&e))?;
        Ok(())
    }
}

/// One order per domain: the domain and its aliases, over HTTP-01.
pub(crate) fn orders(store: &Store) -> Vec<CertOrder> {
    let read = store.read(|c| Ok((domains::list(c)?, aliases::list(c)?)));
    let Ok((domains, aliases)) = read else {
        return Vec::new();
    };
    domains
        .into_iter()
        .map(|d| {
            let mut names = vec![d.name.clone()];
            names.extend(
                aliases
                    .iter()
                    .filter(|a| a.domain == d.name)
                    .map(|a| a.alias.clone()),
            );
            CertOrder {
                names,
                challenge: ChallengeKind::Http01,
            }
        })
        .collect()
}

/// The manager of a node.
pub(crate) fn manager(
    cfg: AcmeConfig,
    store: &Store,
    node: &str,
    challenges: Arc<dyn ChallengeStore>,
    certs: Arc<StoreCerts>,
) -> AcmeManager<StoreLease, NoDns> {
    let accounts = StoreAccounts {
        store: store.clone(),
        directory: cfg.directory_url.clone(),
        contact: cfg.contact_email.clone().unwrap_or_default(),
    };
    AcmeManager::new(
        cfg,
        Arc::new(accounts),
        challenges,
        Arc::new(StoreSink {
            store: store.clone(),
            certs,
        }),
        StoreLease {
            store: store.clone(),
            holder: node.to_owned(),
        },
        NoDns,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Options;
    use crate::store::cluster;

    #[tokio::test]
    async fn one_node_holds_the_lease_until_it_lapses_or_is_released() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            dir.path().join("s.db"),
            &cluster::SCHEMA,
            Options::default(),
        )
        .unwrap();
        let a = StoreLease {
            store: store.clone(),
            holder: "a".into(),
        };
        let b = StoreLease {
            store: store.clone(),
            holder: "b".into(),
        };
        assert!(a.acquire(Duration::from_secs(60)).await.unwrap());
        assert!(!b.acquire(Duration::from_secs(60)).await.unwrap());
        assert!(a.acquire(Duration::from_secs(60)).await.unwrap(), "renewal");
        a.release().await.unwrap();
        assert!(b.acquire(Duration::ZERO).await.unwrap());
        assert!(a.acquire(Duration::from_secs(60)).await.unwrap(), "lapsed");

        let accounts = StoreAccounts {
            store,
            directory: "https://ca.test/dir".into(),
            contact: String::new(),
        };
        assert_eq!(accounts.load().unwrap(), None);
        accounts.save("{\"k\":1}").unwrap();
        assert_eq!(accounts.load().unwrap().as_deref(), Some("{\"k\":1}"));
    }
}
