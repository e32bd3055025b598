//! Client location: the [`GeoLocator`] trait, an mmdb backend and a static table.

use std::{
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{
        Arc, Weak,
        atomic::{AtomicU64, Ordering},
    },
    thread,
    time::{Duration, SystemTime},
};

use arc_swap::ArcSwap;
use geo::{Distance, Haversine, Point};
use serde::Deserialize;

use crate::DnsError;

/// A position on Earth in degrees.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
pub struct GeoPoint {
    /// Latitude in degrees, north positive.
    pub latitude: f64,
    /// Longitude in degrees, east positive.
    pub longitude: f64,
}

impl GeoPoint {
    /// A point from latitude and longitude in degrees.
    pub const fn new(latitude: f64, longitude: f64) -> Self {
        Self {
            latitude,
            longitude,
        }
    }

    /// Great-circle (haversine) distance to `other` in metres.
    pub fn distance_m(&self, other: &GeoPoint) -> f64 {
        // geo points are (x = longitude, y = latitude).
        Haversine.distance(
            Point::new(self.longitude, self.latitude),
            Point::new(other.longitude, other.latitude),
        )
    }

    fn is_valid(&self) -> bool {
        self.latitude.is_finite()
            && self.longitude.is_finite()
            && (-90.0..=90.0).contains(&self.latitude)
            && (-180.0..=180.0).contains(&self.longitude)
    }
}

/// Finds where an IP address is. Called on the hot path (behind a per-prefix cache), so it
/// must not do I/O.
pub trait GeoLocator: fmt::Debug + Send + Sync + 'static {
    /// The location of `ip`, or `None` when unknown.
    fn locate(&self, ip: IpAddr) -> Option<GeoPoint>;

    /// A number that changes whenever the underlying data changes (for example, a database
    /// was reloaded). Cached results from another generation are not used.
    fn generation(&self) -> u64 {
        0
    }
}

/// A locator that knows nothing: every client is "unknown location".
#[derive(Debug, Default, Clone, Copy)]
pub struct NoLocator;

impl GeoLocator for NoLocator {
    fn locate(&self, _ip: IpAddr) -> Option<GeoPoint> {
        None
    }
}

/// A fixed table of prefixes and their locations; the longest matching prefix wins. For tests and
/// small private deployments.
#[derive(Debug, Default, Clone)]
pub struct StaticLocator {
    entries: Vec<(IpAddr, u8, GeoPoint)>,
}

impl StaticLocator {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `network/prefix_len` at `point`.
    #[must_use]
    pub fn with(mut self, network: IpAddr, prefix_len: u8, point: GeoPoint) -> Self {
        self.entries.push((network, prefix_len, point));
        self
    }
}

fn prefix_bits(ip: IpAddr) -> (u128, bool) {
    match ip {
        IpAddr::V4(v4) => (u128::from(u32::from(v4)) << 96, false),
        IpAddr::V6(v6) => (u128::from(v6), true),
    }
}

fn mask(bits: u128, len: u8) -> u128 {
    match len {
        0 => 0,
        l if l >= 128 => bits,
        l => bits & (u128::MAX << (128 - u32::from(l))),
    }
}

impl GeoLocator for StaticLocator {
    fn locate(&self, ip: IpAddr) -> Option<GeoPoint> {
        let (bits, v6) = prefix_bits(ip);
        self.entries
            .iter()
            .filter_map(|(net, len, point)| {
                let (nbits, nv6) = prefix_bits(*net);
                (nv6 == v6 && mask(bits, *len) == mask(nbits, *len)).then_some((*len, *point))
            })
            .max_by_key(|(len, _)| *len)
            .map(|(_, p)| p)
    }
}

/// Asks several locators in order and takes the first answer: for example the DB-IP IPv4 and
/// IPv6 city files, which ship separately.
#[derive(Debug, Clone, Default)]
pub struct LocatorChain {
    locators: Vec<Arc<dyn GeoLocator>>,
}

impl LocatorChain {
    /// A chain of `locators`, asked in order.
    pub fn new(locators: Vec<Arc<dyn GeoLocator>>) -> Self {
        Self { locators }
    }
}

impl GeoLocator for LocatorChain {
    fn locate(&self, ip: IpAddr) -> Option<GeoPoint> {
        self.locators.iter().find_map(|l| l.locate(ip))
    }

    fn generation(&self) -> u64 {
        // Each generation only grows, so the sum changes whenever one of them does.
        self.locators
            .iter()
            .fold(0u64, |sum, l| sum.wrapping_add(l.generation()))
    }
}

/// Coordinates in either mmdb layout: GeoLite2-City (`location.latitude`) or DB-IP /
/// ip-location-db (top-level `latitude`).
#[derive(Deserialize)]
struct MmdbRecord {
    latitude: Option<Degrees>,
    longitude: Option<Degrees>,
    location: Option<MmdbLocation>,
}

#[derive(Deserialize)]
struct MmdbLocation {
    latitude: Option<Degrees>,
    longitude: Option<Degrees>,
}

/// Degrees stored as a 32-bit float (DB-IP) or a double (GeoLite2).
struct Degrees(f64);

impl<'de> Deserialize<'de> for Degrees {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = f64;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a float")
            }
            fn visit_f32<E>(self, v: f32) -> Result<f64, E> {
                Ok(f64::from(v))
            }
            fn visit_f64<E>(self, v: f64) -> Result<f64, E> {
                Ok(v)
            }
        }
        deserializer.deserialize_any(Visitor).map(Degrees)
    }
}

type Reader = maxminddb::Reader<Vec<u8>>;

#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
}

fn stamp(path: &Path) -> Option<FileStamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some(FileStamp {
        modified: meta.modified().ok(),
        len: meta.len(),
    })
}

struct MmdbInner {
    path: PathBuf,
    reader: ArcSwap<Reader>,
    stamp: std::sync::Mutex<Option<FileStamp>>,
    generation: AtomicU64,
}

/// A MaxMind DB (`.mmdb`) city database: GeoLite2-City or DB-IP / ip-location-db layout.
///
/// The database is read into memory. [`MmdbLocator::watch`] starts a background thread that
/// reloads the file when it is replaced; queries keep using the old data until the new file
/// has been read completely.
#[derive(Clone)]
pub struct MmdbLocator {
    inner: Arc<MmdbInner>,
}

impl fmt::Debug for MmdbLocator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MmdbLocator")
            .field("path", &self.inner.path)
            .field("generation", &self.generation())
            .finish()
    }
}

impl MmdbLocator {
    /// Opens the database at `path`.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, DnsError> {
        let path = path.into();
        let file_stamp = stamp(&path);
        let reader = Reader::open_readfile(&path).map_err(|source| DnsError::Geo {
            path: path.clone(),
            source,
        })?;
        Ok(Self {
            inner: Arc::new(MmdbInner {
                path,
                reader: ArcSwap::from_pointee(reader),
                stamp: std::sync::Mutex::new(file_stamp),
                generation: AtomicU64::new(1),
            }),
        })
    }

    /// Reloads the file when its size or modification time changed. Returns whether it did.
    /// A file that cannot be read keeps the previous data in service.
    pub fn reload_if_changed(&self) -> Result<bool, DnsError> {
        let now = stamp(&self.inner.path);
        let mut last = self
            .inner
            .stamp
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if now.is_none() || *last == now {
            return Ok(false);
        }
        let reader = Reader::open_readfile(&self.inner.path).map_err(|source| DnsError::Geo {
            path: self.inner.path.clone(),
            source,
        })?;
        self.inner.reader.store(Arc::new(reader));
        *last = now;
        self.inner.generation.fetch_add(1, Ordering::Release);
        tracing::info!(path = %self.inner.path.display(), "GeoIP database reloaded");
        Ok(true)
    }

    /// Starts a thread that calls [`reload_if_changed`](Self::reload_if_changed) every
    /// `interval`. The thread ends when the last clone of this locator is dropped.
    pub fn watch(&self, interval: Duration) {
        let weak: Weak<MmdbInner> = Arc::downgrade(&self.inner);
        let spawned = thread::Builder::new()
            .name("mmdb-watch".into())
            .spawn(move || {
                loop {
                    thread::sleep(interval);
                    let Some(inner) = weak.upgrade() else { break };
                    let me = MmdbLocator { inner };
                    if let Err(error) = me.reload_if_changed() {
                        tracing::warn!(%error, "GeoIP database reload failed; keeping the old one");
                    }
                }
            });
        if let Err(error) = spawned {
            tracing::warn!(%error, "could not start the GeoIP reload thread");
        }
    }
}

impl GeoLocator for MmdbLocator {
    fn locate(&self, ip: IpAddr) -> Option<GeoPoint> {
        let reader = self.inner.reader.load();
        let result = reader.lookup(ip).ok()?;
        let record: MmdbRecord = result.decode().ok()??;
        let nested = record.location.unwrap_or(MmdbLocation {
            latitude: None,
            longitude: None,
        });
        let point = match (record.latitude, record.longitude) {
            (Some(latitude), Some(longitude)) => GeoPoint::new(latitude.0, longitude.0),
            _ => GeoPoint::new(nested.latitude?.0, nested.longitude?.0),
        };
        point.is_valid().then_some(point)
    }

    fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::Acquire)
    }
}

/// Key of the per-prefix location cache: /24 for IPv4, /56 for IPv6.
pub(crate) fn cache_key(ip: IpAddr) -> (u128, bool) {
    let (bits, v6) = prefix_bits(ip);
    (mask(bits, if v6 { 56 } else { 24 }), v6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn haversine_uses_lon_lat_order() {
        let sydney = GeoPoint::new(-33.87, 151.21);
        let frankfurt = GeoPoint::new(50.11, 8.68);
        let km = sydney.distance_m(&frankfurt) / 1000.0;
        // Sydney-Frankfurt is about 16,500 km; swapping lat/lon gives a very different figure.
        assert!((16_000.0..17_000.0).contains(&km), "{km}");
    }

    #[test]
    fn static_locator_longest_prefix() {
        let l = StaticLocator::new()
            .with("10.0.0.0".parse().unwrap(), 8, GeoPoint::new(1.0, 1.0))
            .with("10.1.0.0".parse().unwrap(), 16, GeoPoint::new(2.0, 2.0));
        assert_eq!(
            l.locate("10.1.2.3".parse().unwrap()),
            Some(GeoPoint::new(2.0, 2.0))
        );
        assert_eq!(
            l.locate("10.2.2.3".parse().unwrap()),
            Some(GeoPoint::new(1.0, 1.0))
        );
        assert_eq!(l.locate("11.2.2.3".parse().unwrap()), None);
        assert_eq!(l.locate("::1".parse().unwrap()), None);
    }

    #[test]
    fn chain_takes_the_first_answer() {
        let v4 = StaticLocator::new().with("10.0.0.0".parse().unwrap(), 8, GeoPoint::new(1.0, 1.0));
        let v6 =
            StaticLocator::new().with("2001:db8::".parse().unwrap(), 32, GeoPoint::new(2.0, 2.0));
        let chain = LocatorChain::new(vec![Arc::new(v4), Arc::new(v6)]);
        assert_eq!(
            chain.locate("10.1.1.1".parse().unwrap()),
            Some(GeoPoint::new(1.0, 1.0))
        );
        assert_eq!(
            chain.locate("2001:db8::5".parse().unwrap()),
            Some(GeoPoint::new(2.0, 2.0))
        );
        assert_eq!(chain.locate("192.0.2.1".parse().unwrap()), None);
    }

    #[test]
    fn cache_key_prefixes() {
        assert_eq!(
            cache_key("1.2.3.4".parse().unwrap()),
            cache_key("1.2.3.200".parse().unwrap())
        );
        assert_ne!(
            cache_key("1.2.3.4".parse().unwrap()),
            cache_key("1.2.4.4".parse().unwrap())
        );
        assert_eq!(
            cache_key("2001:db8:0:ab::1".parse().unwrap()),
            cache_key("2001:db8:0:ff::2".parse().unwrap())
        );
        assert_ne!(
            cache_key("2001:db8:0:1ab::1".parse().unwrap()),
            cache_key("2001:db8:0:2ab::1".parse().unwrap())
        );
    }
}
