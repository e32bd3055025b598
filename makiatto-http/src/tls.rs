//! TLS: certificates by SNI, hot-swapped, and the rustls server configuration.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::crypto::ring as provider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::HttpError;
use crate::host::normalize_host;

/// Picks the certificate for a TLS server name. Called during every handshake, so it
/// answers from memory; implementations return only certificates that are valid now.
pub trait CertSource: Debug + Send + Sync + 'static {
    /// The certificate for `server_name` (lower case), or `None` to refuse the handshake.
    fn resolve(&self, server_name: &str) -> Option<Arc<CertifiedKey>>;
}

/// A certificate with the end of its validity.
#[derive(Debug, Clone)]
pub struct Certificate {
    /// The chain and signing key.
    pub key: Arc<CertifiedKey>,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
    /// The names it covers (DNS SANs), lower case, possibly `*.` wildcards.
    pub names: Vec<String>,
}

impl Certificate {
    /// Parses a PEM chain (leaf first) and a PEM private key.
    pub fn from_pem(chain_pem: &[u8], key_pem: &[u8]) -> Result<Self, HttpError> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| HttpError::Certificate(format!("certificate PEM: {e}")))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| HttpError::Certificate(format!("private key PEM: {e}")))?;
        Self::from_der(chain, &key)
    }

    /// Builds from a DER chain (leaf first) and private key.
    pub fn from_der(
        chain: Vec<CertificateDer<'static>>,
        key: &PrivateKeyDer<'_>,
    ) -> Result<Self, HttpError> {
        let leaf = chain
            .first()
            .ok_or_else(|| HttpError::Certificate("empty certificate chain".into()))?;
        let (_, x509) = x509_parser::parse_x509_certificate(leaf.as_ref())
            .map_err(|e| HttpError::Certificate(format!("parsing leaf certificate: {e}")))?;
        let to_time =
            |t: i64| SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(t).unwrap_or(0));
        let not_before = to_time(x509.validity().not_before.timestamp());
        let not_after = to_time(x509.validity().not_after.timestamp());
        let mut names = Vec::new();
        if let Ok(Some(san)) = x509.subject_alternative_name() {
            for n in &san.value.general_names {
                if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                    names.push(d.to_ascii_lowercase());
                }
            }
        }
        let signer = provider::sign::any_supported_type(key)
            .map_err(|e| HttpError::Certificate(format!("private key: {e}")))?;
        Ok(Certificate {
            key: Arc::new(CertifiedKey::new(chain, signer)),
            not_before,
            not_after,
            names,
        })
    }

    /// Whether the certificate is within its validity period at `now`.
    pub fn valid_at(&self, now: SystemTime) -> bool {
        self.not_before <= now && now < self.not_after
    }
}

/// An in-memory [`CertSource`]: exact names first, then one-label wildcards
/// (`*.example.com` covers `a.example.com`). Writers swap a new snapshot in, so new
/// handshakes see a new certificate at once without restarting listeners.
#[derive(Debug, Default)]
pub struct MemoryCerts {
    map: ArcSwap<HashMap<String, Arc<Certificate>>>,
    write: Mutex<()>,
}

impl MemoryCerts {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Installs `cert` for every name it covers (its DNS SANs). A certificate that is not
    /// valid now never replaces a valid one.
    pub fn insert(&self, cert: Certificate) {
        let names = cert.names.clone();
        self.insert_for(&names, cert);
    }

    /// Installs `cert` for the given names.
    pub fn insert_for(&self, names: &[String], cert: Certificate) {
        let _w = self.write.lock();
        let now = SystemTime::now();
        let cert = Arc::new(cert);
        let mut next = HashMap::clone(&self.map.load());
        for n in names {
            let n = n.to_ascii_lowercase();
            if let Some(old) = next.get(&n)
                && old.valid_at(now)
                && !cert.valid_at(now)
            {
                continue;
            }
            next.insert(n, Arc::clone(&cert));
        }
        self.map.store(Arc::new(next));
    }

    /// The certificate installed for exactly `name`, valid or not.
    pub fn get(&self, name: &str) -> Option<Arc<Certificate>> {
        self.map.load().get(name).cloned()
    }
}

impl CertSource for MemoryCerts {
    fn resolve(&self, server_name: &str) -> Option<Arc<CertifiedKey>> {
        let map = self.map.load();
        let now = SystemTime::now();
        let pick = |k: &str| {
            map.get(k)
                .filter(|c| c.valid_at(now))
                .map(|c| Arc::clone(&c.key))
        };
        pick(server_name).or_else(|| {
            let (_, parent) = server_name.split_once('.')?;
            if parent.is_empty() {
                return None;
            }
            pick(&format!("*.{parent}"))
        })
    }
}

#[derive(Debug)]
struct SniResolver(Arc<dyn CertSource>);

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = normalize_host(hello.server_name()?)?;
        self.0.resolve(&name)
    }
}

/// A rustls server configuration that picks certificates from `certs` by SNI (no SNI or
/// an unknown name fails the handshake), offers h2 and http/1.1, and resumes sessions
/// with tickets and a session cache.
pub fn server_config(certs: Arc<dyn CertSource>) -> Result<Arc<rustls::ServerConfig>, HttpError> {
    let mut cfg =
        rustls::ServerConfig::builder_with_provider(Arc::new(provider::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(SniResolver(certs)));
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    cfg.ticketer = provider::Ticketer::new()?;
    cfg.session_storage = rustls::server::ServerSessionMemoryCache::new(4096);
    Ok(Arc::new(cfg))
}
