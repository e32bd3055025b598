//! Site identifiers and the hybrid logical clock.

use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The 16-byte identity of one database replica. Minted at creation and on snapshot
/// install; never shared by two databases.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SiteId(pub [u8; 16]);

impl SiteId {
    /// A fresh random site id.
    pub fn random() -> Self {
        SiteId(rand::random())
    }
}

impl fmt::Display for SiteId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for SiteId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SiteId({})", &hex::encode(self.0)[..8])
    }
}

/// A source of wall-clock time in unix milliseconds. Injected so that tests and the
/// simulator can skew or freeze time.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// Milliseconds since the unix epoch.
    fn now_ms(&self) -> u64;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
}

/// How far ahead of local physical time a remote timestamp may be before it is no longer
/// adopted into the local clock.
pub const MAX_DRIFT_MS: u64 = 60_000;

/// A hybrid logical clock: `(unix_ms << 16) | logical`.
#[derive(Debug, Clone)]
pub(crate) struct Hlc {
    clock: Arc<dyn Clock>,
    last: u64,
}

impl Hlc {
    pub(crate) fn new(clock: Arc<dyn Clock>, last: u64) -> Self {
        Hlc { clock, last }
    }

    /// The next local timestamp: strictly greater than every one issued or observed.
    pub(crate) fn next(&mut self) -> u64 {
        let phys = self.clock.now_ms() << 16;
        self.last = phys.max(self.last + 1);
        self.last
    }

    /// Adopts a remote timestamp unless it is implausibly far in the future. Returns false
    /// when it was refused.
    pub(crate) fn observe(&mut self, remote: u64) -> bool {
        let limit = (self.clock.now_ms() + MAX_DRIFT_MS) << 16;
        if remote > limit {
            return false;
        }
        self.last = self.last.max(remote);
        true
    }

    pub(crate) fn last(&self) -> u64 {
        self.last
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    #[derive(Debug)]
    struct Fixed(AtomicU64);
    impl Clock for Fixed {
        fn now_ms(&self) -> u64 {
            self.0.load(Ordering::Relaxed)
        }
    }

    #[test]
    fn hlc_is_monotonic_and_bounds_remote_drift() {
        let clock = Arc::new(Fixed(AtomicU64::new(1_000)));
        let mut hlc = Hlc::new(clock.clone(), 0);
        let a = hlc.next();
        let b = hlc.next();
        assert!(b > a);
        assert_eq!(a >> 16, 1_000);
        // A remote clock 10 s ahead is adopted; one 2 min ahead is refused.
        assert!(hlc.observe(11_000 << 16));
        assert!(hlc.next() > 11_000 << 16);
        assert!(!hlc.observe(200_000 << 16));
        assert!(hlc.next() < 200_000 << 16);
        // Time going backwards never makes the clock go backwards.
        clock.0.store(10, Ordering::Relaxed);
        let c = hlc.next();
        assert!(c > b);
    }
}
