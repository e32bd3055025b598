//! Serves a directory for a host name, over HTTP and (with a certificate) HTTPS.
//!
//! ```sh
//! cargo run --release -p makiatto-http --example static_site -- \
//!     --dir ./public --host example.com [--alias www.example.com] \
//!     [--http 0.0.0.0:8080] [--https 0.0.0.0:8443 --cert cert.pem --key key.pem] [--threads 2] \
//!     [--manifest] [--sendfile-min BYTES] [--sendfile-max BYTES]
//! ```
//! `--manifest` hashes the directory at start and serves it as an immutable deployment, as
//! a node does: ETags from the manifest, and paths not in it are missing without a file
//! system call.
//! `--sendfile-min`/`--sendfile-max` set `ServerConfig::sendfile_min_bytes`/`_max_bytes`
//! (`--sendfile-min 18446744073709551615`: off).
//! `--http`/`--https`/`--alias` may be repeated. With a certificate, plain HTTP requests for
//! the names it covers are redirected to HTTPS (the first `--https` port).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use makiatto_http::{
    Certificate, HttpServer, MemoryCerts, MemoryChallenges, ServerConfig, Site, StaticSites,
};
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct Args {
    dir: Option<PathBuf>,
    host: Option<String>,
    aliases: Vec<String>,
    http: Vec<SocketAddr>,
    https: Vec<SocketAddr>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    threads: usize,
    manifest: bool,
    sendfile_min: Option<u64>,
    sendfile_max: Option<u64>,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        threads: 1,
        ..Args::default()
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let addr = |v: String| v.parse::<SocketAddr>().map_err(|e| format!("{v}: {e}"));
        match flag.as_str() {
            "--dir" => a.dir = Some(val()?.into()),
            "--host" => a.host = Some(val()?),
            "--alias" => a.aliases.push(val()?),
            "--http" => a.http.push(addr(val()?)?),
            "--https" => a.https.push(addr(val()?)?),
            "--cert" => a.cert = Some(val()?.into()),
            "--key" => a.key = Some(val()?.into()),
            "--threads" => a.threads = val()?.parse().map_err(|e| format!("--threads: {e}"))?,
            "--manifest" => a.manifest = true,
            "--sendfile-max" => {
                a.sendfile_max = Some(val()?.parse().map_err(|e| format!("--sendfile-max: {e}"))?);
            }
            "--sendfile-min" => {
                a.sendfile_min = Some(val()?.parse().map_err(|e| format!("--sendfile-min: {e}"))?);
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if a.http.is_empty() && a.https.is_empty() {
        a.http.push(SocketAddr::from(([127, 0, 0, 1], 8080)));
    }
    Ok(a)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let args = parse()?;
    let dir = args.dir.clone().ok_or("--dir is required")?;
    let host = args.host.clone().ok_or("--host is required")?;
    let rt = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()?
    };
    rt.block_on(run(args, dir, host))
}

async fn run(args: Args, dir: PathBuf, host: String) -> Result<(), Box<dyn std::error::Error>> {
    let sites = Arc::new(StaticSites::new());
    let aliases: Vec<&str> = args.aliases.iter().map(String::as_str).collect();
    let mut site = Site::new(host.to_ascii_lowercase(), &dir);
    if args.manifest {
        let mut files = std::collections::HashMap::new();
        hash_tree(&dir, &dir, &mut files)?;
        tracing::info!(files = files.len(), "manifest built");
        site.manifest = Some(Arc::new(files));
    }
    sites.insert(site, &aliases);
    let certs = Arc::new(MemoryCerts::new());
    if let (Some(c), Some(k)) = (&args.cert, &args.key) {
        let cert = Certificate::from_pem(&std::fs::read(c)?, &std::fs::read(k)?)?;
        tracing::info!(names = ?cert.names, "certificate loaded");
        certs.insert(cert);
    }
    let cfg = ServerConfig {
        https_redirect_port: args.https.first().map(SocketAddr::port),
        http_addrs: args.http,
        https_addrs: args.https,
        sendfile_min_bytes: args
            .sendfile_min
            .unwrap_or(ServerConfig::default().sendfile_min_bytes),
        sendfile_max_bytes: args
            .sendfile_max
            .unwrap_or(ServerConfig::default().sendfile_max_bytes),
        ..ServerConfig::default()
    };
    let server = HttpServer::new(cfg, sites, certs, Arc::new(MemoryChallenges::new()))?;
    let token = CancellationToken::new();
    let t2 = token.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        t2.cancel();
    });
    tracing::info!("serving");
    server.run(token).await?;
    Ok(())
}

/// Every regular file under `dir` by path relative to `root` → blake3.
fn hash_tree(
    root: &std::path::Path,
    dir: &std::path::Path,
    out: &mut std::collections::HashMap<String, blake3::Hash>,
) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let kind = entry.file_type()?;
        if kind.is_dir() {
            hash_tree(root, &path, out)?;
        } else if kind.is_file()
            && let Ok(rel) = path.strip_prefix(root)
            && let Some(rel) = rel.to_str()
        {
            out.insert(rel.to_owned(), blake3::hash(&std::fs::read(&path)?));
        }
    }
    Ok(())
}
