//! ACME challenge answers shared by every node.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, RwLock};

use crate::HttpError;

/// Where ACME challenge answers live, so that any node can answer them. A node backs it
/// with the replicated store; tests use [`MemoryChallenges`].
pub trait ChallengeStore: Debug + Send + Sync + 'static {
    /// The key authorization for an HTTP-01 `token`, if one is open.
    fn http01(&self, token: &str) -> Option<String>;
    /// Publishes an HTTP-01 answer.
    fn put_http01(&self, token: &str, key_authorization: &str) -> Result<(), HttpError>;
    /// Withdraws an HTTP-01 answer.
    fn remove_http01(&self, token: &str) -> Result<(), HttpError>;
    /// TXT values open for the DNS-01 name (e.g. `_acme-challenge.example.com`).
    fn dns01(&self, name: &str) -> Vec<String>;
    /// Publishes a DNS-01 TXT value.
    fn put_dns01(&self, name: &str, value: &str) -> Result<(), HttpError>;
    /// Withdraws a DNS-01 TXT value.
    fn remove_dns01(&self, name: &str, value: &str) -> Result<(), HttpError>;
}

/// An in-memory [`ChallengeStore`].
#[derive(Debug, Default, Clone)]
pub struct MemoryChallenges {
    http: Arc<RwLock<HashMap<String, String>>>,
    dns: Arc<RwLock<HashMap<String, Vec<String>>>>,
}

impl MemoryChallenges {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many HTTP-01 answers are open.
    pub fn http01_count(&self) -> usize {
        self.http.read().map_or(0, |m| m.len())
    }
}

fn poisoned<T>(_: T) -> HttpError {
    HttpError::Store("challenge store lock poisoned".into())
}

impl ChallengeStore for MemoryChallenges {
    fn http01(&self, token: &str) -> Option<String> {
        self.http.read().ok()?.get(token).cloned()
    }
    fn put_http01(&self, token: &str, key_authorization: &str) -> Result<(), HttpError> {
        self.http
            .write()
            .map_err(poisoned)?
            .insert(token.to_owned(), key_authorization.to_owned());
        Ok(())
    }
    fn remove_http01(&self, token: &str) -> Result<(), HttpError> {
        self.http.write().map_err(poisoned)?.remove(token);
        Ok(())
    }
    fn dns01(&self, name: &str) -> Vec<String> {
        self.dns
            .read()
            .ok()
            .and_then(|m| m.get(&name.to_ascii_lowercase()).cloned())
            .unwrap_or_default()
    }
    fn put_dns01(&self, name: &str, value: &str) -> Result<(), HttpError> {
        let mut m = self.dns.write().map_err(poisoned)?;
        let v = m.entry(name.to_ascii_lowercase()).or_default();
        if !v.iter().any(|x| x == value) {
            v.push(value.to_owned());
        }
        Ok(())
    }
    fn remove_dns01(&self, name: &str, value: &str) -> Result<(), HttpError> {
        let mut m = self.dns.write().map_err(poisoned)?;
        let key = name.to_ascii_lowercase();
        if let Some(v) = m.get_mut(&key) {
            v.retain(|x| x != value);
            if v.is_empty() {
                m.remove(&key);
            }
        }
        Ok(())
    }
}
