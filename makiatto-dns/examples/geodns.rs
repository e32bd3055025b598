//! A standalone GeoDNS server for a TOML zone.
//!
//! Run with `cargo run -p makiatto-dns --release --example geodns -- makiatto-dns/examples/zone.toml`
//! and query it with `dig @127.0.0.1 -p 5353 example.com A +subnet=1.1.1.0/24`.
//!
//! Arguments: `ZONE_FILE [ADDR]` (default `127.0.0.1:5353`, UDP and TCP). Environment:
//! `MAKIATTO_MMDB` is a GeoLite2-City or DB-IP city `.mmdb` file, or several separated by `:`
//! (e.g. the DB-IP IPv4 and IPv6 files), reloaded when replaced;
//! without it every client gets all healthy nodes. `MAKIATTO_UDP_THREADS` (default 1).
//! `MAKIATTO_RRL=RATE[:SLIP]` turns on UDP response rate limiting (e.g. `20:2`).
//! Sending SIGHUP is not needed: the zone file is re-read every 2 seconds when it changes.

use std::{num::NonZeroUsize, sync::Arc, time::Duration};

use makiatto_dns::{
    DnsServer, GeoLocator, LocatorChain, MmdbLocator, NoLocator, RateLimit, TomlZoneFile,
    ZoneHandle, ZoneSource, bind_udp_tcp,
};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let mut args = std::env::args().skip(1);
    let zone_path = args.next().ok_or("usage: geodns ZONE_FILE [ADDR]")?;
    let addr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:5353".into())
        .parse()?;

    let source = TomlZoneFile::new(&zone_path);
    let zones = ZoneHandle::from_source(&source)?;
    let locator: Arc<dyn GeoLocator> = match std::env::var("MAKIATTO_MMDB") {
        Ok(paths) => {
            let mut chain: Vec<Arc<dyn GeoLocator>> = Vec::new();
            for path in paths.split(':').filter(|p| !p.is_empty()) {
                let mmdb = MmdbLocator::open(path)?;
                mmdb.watch(Duration::from_secs(10));
                chain.push(Arc::new(mmdb));
            }
            Arc::new(LocatorChain::new(chain))
        }
        Err(_) => Arc::new(NoLocator),
    };
    let threads = std::env::var("MAKIATTO_UDP_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .and_then(NonZeroUsize::new)
        .unwrap_or(NonZeroUsize::MIN);

    let rrl = match std::env::var("MAKIATTO_RRL") {
        Ok(spec) => {
            let (rate, slip) = spec.split_once(':').unwrap_or((&spec, "2"));
            Some(
                RateLimit::new(
                    rate.parse()
                        .map_err(|e| format!("MAKIATTO_RRL rate: {e}"))?,
                )
                .slip(
                    slip.parse()
                        .map_err(|e| format!("MAKIATTO_RRL slip: {e}"))?,
                ),
            )
        }
        Err(_) => None,
    };

    let (udp, tcp) = bind_udp_tcp(addr)?;
    let mut builder = DnsServer::builder(zones.clone())
        .locator(locator)
        .udp_threads(threads)
        .udp(udp)
        .tcp(tcp);
    if let Some(rrl) = rrl {
        builder = builder.rate_limit(rrl);
    }
    let server = builder.start()?;
    tracing::info!(%addr, serial = zones.serial(), "serving");
    eprintln!("geodns: serving {zone_path} on {addr} (udp+tcp)");

    // Pick up edits of the zone file.
    let modified = |p: &str| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut last = modified(&zone_path);
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = tick.tick() => {
                let now = modified(&zone_path);
                if now != last {
                    last = now;
                    match source.load().and_then(|z| zones.set(z)) {
                        Ok(serial) => eprintln!("geodns: zone reloaded, serial {serial}"),
                        Err(e) => eprintln!("geodns: zone reload failed, keeping the old one: {e}"),
                    }
                }
            }
        }
    }
    server.shutdown().await?;
    Ok(())
}
