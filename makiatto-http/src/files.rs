//! The file cache: resolved files with their headers precomputed, small files held in
//! memory, so the hot path makes no file system call.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::HeaderValue;
use http_body::Frame;
use quick_cache::Weighter;
use tokio::io::{AsyncRead, ReadBuf};

use crate::path::SafePath;
use crate::site::Site;

/// A content coding we serve: from a precompressed sibling file or made on first load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encoding {
    Br,
    Zstd,
    Gzip,
}

impl Encoding {
    /// In order of preference.
    pub(crate) const ALL: [Encoding; 3] = [Encoding::Br, Encoding::Zstd, Encoding::Gzip];

    /// The position in the order of preference (0 first).
    pub(crate) fn rank(self) -> usize {
        match self {
            Encoding::Br => 0,
            Encoding::Zstd => 1,
            Encoding::Gzip => 2,
        }
    }

    pub(crate) fn token(self) -> &'static str {
        match self {
            Encoding::Br => "br",
            Encoding::Zstd => "zstd",
            Encoding::Gzip => "gzip",
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            Encoding::Br => "br",
            Encoding::Zstd => "zst",
            Encoding::Gzip => "gz",
        }
    }
}

/// What identifies a file's content on disk without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Ident {
    len: u64,
    mtime_ns: i128,
    ino: u64,
    dev: u64,
}

impl Ident {
    fn of(m: &fs::Metadata) -> Self {
        Ident {
            len: m.len(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            ino: m.ino(),
            dev: m.dev(),
        }
    }
}

/// Most sealed body files open at once (each holds a file descriptor); bodies beyond it
/// are written from memory.
const MAX_BODY_FDS: usize = 256;
static BODY_FDS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A body's bytes in a sealed memfd (no write, grow or shrink possible), for `sendfile`.
#[derive(Debug)]
pub(crate) struct BodyFd {
    pub(crate) fd: std::os::fd::OwnedFd,
    pub(crate) len: u64,
}

impl BodyFd {
    /// `None` when the budget of descriptors is spent or the kernel refuses.
    pub(crate) fn new(body: &[u8]) -> Option<Arc<BodyFd>> {
        use rustix::fs::{MemfdFlags, SealFlags};
        if BODY_FDS.fetch_add(1, Ordering::Relaxed) >= MAX_BODY_FDS {
            BODY_FDS.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        let made = (|| {
            let fd = rustix::fs::memfd_create(
                "makiatto-body",
                MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
            )
            .ok()?;
            let mut at = 0;
            while at < body.len() {
                match rustix::io::write(&fd, &body[at..]) {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => at += n,
                }
            }
            rustix::fs::fcntl_add_seals(
                &fd,
                SealFlags::WRITE | SealFlags::GROW | SealFlags::SHRINK | SealFlags::SEAL,
            )
            .ok()?;
            Some(fd)
        })();
        let Some(fd) = made else {
            BODY_FDS.fetch_sub(1, Ordering::Relaxed);
            return None;
        };
        Some(Arc::new(BodyFd {
            fd,
            len: body.len() as u64,
        }))
    }
}

impl Drop for BodyFd {
    fn drop(&mut self) {
        BODY_FDS.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One representation of a file (the file itself or a precompressed sibling).
#[derive(Debug)]
pub(crate) struct Repr {
    pub(crate) path: PathBuf,
    pub(crate) len: u64,
    /// The whole content when small enough to keep in memory.
    pub(crate) body: Option<Bytes>,
    /// The same bytes in a sealed memfd, for bodies from `sendfile_min_bytes` to
    /// `sendfile_max_bytes` (identity only).
    pub(crate) body_fd: Option<Arc<BodyFd>>,
    pub(crate) etag: HeaderValue,
    pub(crate) len_header: HeaderValue,
}

/// A resolved file, ready to answer from.
#[derive(Debug)]
pub(crate) struct FileEntry {
    ident: Ident,
    pub(crate) identity: Repr,
    /// Compressed representations (siblings or made on first load), in order of preference.
    pub(crate) variants: Vec<(Encoding, Repr)>,
    pub(crate) mtime_secs: u64,
    pub(crate) last_modified: HeaderValue,
    pub(crate) content_type: HeaderValue,
    pub(crate) cache_control: HeaderValue,
}

/// A cache slot: a file (misses live in `FileCache::misses`).
#[derive(Debug)]
struct Slot {
    checked_ms: AtomicU64,
    file: Option<Arc<FileEntry>>,
}

#[derive(Debug, Clone)]
struct SlotWeight;

impl Weighter<String, Arc<Slot>> for SlotWeight {
    fn weight(&self, key: &String, val: &Arc<Slot>) -> u64 {
        let mut w = key.len() as u64 + 128;
        if let Some(f) = &val.file {
            w += f.identity.body.as_ref().map_or(0, |b| b.len() as u64);
            w += f.identity.body_fd.as_ref().map_or(0, |b| b.len);
            for (_, v) in &f.variants {
                w += v.body.as_ref().map_or(0, |b| b.len() as u64);
            }
        }
        w
    }
}

/// A remembered miss weighs its key plus the entry's own overhead.
#[derive(Debug, Clone)]
struct MissWeight;

impl Weighter<String, u64> for MissWeight {
    fn weight(&self, key: &String, _: &u64) -> u64 {
        key.len() as u64 + 64
    }
}

/// Settings of the file cache.
#[derive(Debug, Clone)]
pub(crate) struct FileCacheConfig {
    pub(crate) memory_bytes: u64,
    pub(crate) memory_file_max_bytes: u64,
    pub(crate) revalidate_after: Duration,
    pub(crate) negative_entries: usize,
    pub(crate) negative_bytes: u64,
    /// Bodies held in memory from `sendfile_min_bytes` to `sendfile_max_bytes` get a
    /// sealed memfd for `sendfile`.
    pub(crate) sendfile_min_bytes: u64,
    pub(crate) sendfile_max_bytes: u64,
}

/// Resolved files keyed by (deployment root, request path), and, apart so that a flood
/// of missing paths cannot evict files, the paths found missing.
#[derive(Debug)]
pub(crate) struct FileCache {
    slots: quick_cache::sync::Cache<String, Arc<Slot>, SlotWeight>,
    /// Paths with nothing behind them → when that was last checked (ms since `epoch`).
    misses: quick_cache::sync::Cache<String, u64, MissWeight>,
    hashes: quick_cache::sync::Cache<(PathBuf, Ident), blake3::Hash>,
    epoch: Instant,
    cfg: FileCacheConfig,
    /// Lookups that went to the file system (for tests and metrics).
    fs_lookups: AtomicU64,
}

/// The files a request path may name, in order: `/` → `index.html`, `/a/` →
/// `a/index.html`, `/a` → `a`, `a.html`, `a/index.html`.
fn candidates(safe: &SafePath) -> Vec<String> {
    let rel = safe.rel.as_str();
    if rel.is_empty() {
        vec!["index.html".into()]
    } else if safe.trailing_slash {
        vec![format!("{rel}/index.html")]
    } else {
        vec![
            rel.to_owned(),
            format!("{rel}.html"),
            format!("{rel}/index.html"),
        ]
    }
}

impl FileCache {
    pub(crate) fn new(cfg: FileCacheConfig) -> Self {
        let items = (cfg.memory_bytes / 4096).clamp(1024, 1 << 20) as usize;
        FileCache {
            slots: quick_cache::sync::Cache::with_weighter(
                items,
                cfg.memory_bytes.max(1 << 16),
                SlotWeight,
            ),
            misses: quick_cache::sync::Cache::with_weighter(
                cfg.negative_entries.max(1),
                cfg.negative_bytes.max(1024),
                MissWeight,
            ),
            hashes: quick_cache::sync::Cache::new(65_536),
            epoch: Instant::now(),
            cfg,
            fs_lookups: AtomicU64::new(0),
        }
    }

    /// How many lookups went to the file system so far.
    #[cfg(test)]
    pub(crate) fn fs_lookups(&self) -> u64 {
        self.fs_lookups.load(Ordering::Relaxed)
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The file a request path names under the site's root, following the site rules
    /// (index.html, `.html`, `/index.html`), or `None`.
    pub(crate) async fn lookup(
        self: &Arc<Self>,
        site: &Arc<Site>,
        safe: &SafePath,
    ) -> Option<Arc<FileEntry>> {
        // A deployment's manifest lists every file it has: a path whose candidates are
        // all absent from it is missing, with no file system call and nothing cached.
        if let Some(manifest) = &site.manifest
            && !candidates(safe).iter().any(|c| manifest.contains_key(c))
        {
            return None;
        }
        let mut key = String::with_capacity(site.root.as_os_str().len() + safe.rel.len() + 3);
        key.push_str(&site.root.to_string_lossy());
        key.push('\n');
        key.push_str(&safe.rel);
        if safe.trailing_slash {
            key.push('/');
        }
        let revalidate = self.cfg.revalidate_after.as_millis() as u64;
        if let Some(checked) = self.misses.get(&key)
            && self.now_ms().saturating_sub(checked) < revalidate
        {
            return None;
        }
        // A path not cached yet is loaded (and its variants compressed) by one request;
        // concurrent requests for it wait for that one instead of loading it again.
        let (prev, guard) = match self.slots.get_value_or_guard_async(&key).await {
            Ok(slot) => (Some(slot), None),
            Err(guard) => (None, Some(guard)),
        };
        if let Some(slot) = &prev {
            let now = self.now_ms();
            let checked = slot.checked_ms.load(Ordering::Relaxed);
            if now.saturating_sub(checked) < revalidate
                || (revalidate > 0
                    && slot
                        .checked_ms
                        .compare_exchange(checked, now, Ordering::Relaxed, Ordering::Relaxed)
                        .is_err())
            {
                // Fresh, or another request is revalidating it right now.
                return slot.file.clone();
            }
        }
        let this = Arc::clone(self);
        let site = Arc::clone(site);
        let safe = safe.clone();
        let prev_file = prev.and_then(|s| s.file.clone());
        let file = tokio::task::spawn_blocking(move || {
            this.fs_lookups.fetch_add(1, Ordering::Relaxed);
            this.resolve_blocking(&site, &safe, prev_file.as_ref())
        })
        .await
        .ok()
        .flatten();
        if file.is_some() {
            self.misses.remove(&key);
            let slot = Arc::new(Slot {
                checked_ms: AtomicU64::new(self.now_ms()),
                file: file.clone(),
            });
            match guard {
                Some(g) => {
                    let _ = g.insert(slot);
                }
                None => self.slots.insert(key, slot),
            }
        } else {
            // Waiters, if any, look for themselves (and find the miss below cached).
            drop(guard);
            self.slots.remove(&key);
            self.misses.insert(key, self.now_ms());
        }
        file
    }

    fn resolve_blocking(
        &self,
        site: &Site,
        safe: &SafePath,
        prev: Option<&Arc<FileEntry>>,
    ) -> Option<Arc<FileEntry>> {
        let root = fs::canonicalize(&site.root).ok()?;
        for c in candidates(safe) {
            if site.manifest.as_ref().is_some_and(|m| !m.contains_key(&c)) {
                continue;
            }
            let Some((path, meta)) = regular_file_under(&root, &root.join(&c)) else {
                continue;
            };
            let ident = Ident::of(&meta);
            if let Some(p) = prev
                && p.ident == ident
                && p.identity.path == path
            {
                return Some(Arc::clone(p));
            }
            let manifest_hash = site.manifest.as_ref().and_then(|m| m.get(&c)).copied();
            match self.load_entry(&root, &path, &meta, manifest_hash) {
                Ok(e) => return Some(Arc::new(e)),
                Err(e) => {
                    tracing::warn!(error = %e, "reading a site file");
                    return None;
                }
            }
        }
        None
    }

    fn load_entry(
        &self,
        root: &Path,
        path: &Path,
        meta: &fs::Metadata,
        hash: Option<blake3::Hash>,
    ) -> io::Result<FileEntry> {
        let ident = Ident::of(meta);
        let body = self.read_small(path, meta.len())?;
        let hash = match (hash, &body) {
            (Some(h), _) => h,
            (None, Some(b)) => blake3::hash(b),
            (None, None) => self.hash_file(path, ident)?,
        };
        let tag = hex_prefix(hash.as_bytes());
        let identity = Repr {
            // The length of what was read, not what stat said: the file may have
            // changed in between, and ranges are cut from the bytes held.
            len_header: HeaderValue::from(len_of(body.as_ref(), meta.len())),
            etag: etag_value(&tag, None),
            len: len_of(body.as_ref(), meta.len()),
            body_fd: body
                .as_ref()
                .filter(|b| {
                    (self.cfg.sendfile_min_bytes..=self.cfg.sendfile_max_bytes)
                        .contains(&(b.len() as u64))
                })
                .and_then(|b| BodyFd::new(b)),
            body,
            path: path.to_path_buf(),
        };
        let mut variants = Vec::new();
        for enc in Encoding::ALL {
            let mut name = path.as_os_str().to_owned();
            name.push(".");
            name.push(enc.suffix());
            let Some((vpath, vmeta)) = regular_file_under(root, Path::new(&name)) else {
                continue;
            };
            let vbody = self.read_small(&vpath, vmeta.len())?;
            variants.push((
                enc,
                Repr {
                    len_header: HeaderValue::from(len_of(vbody.as_ref(), vmeta.len())),
                    etag: etag_value(&tag, Some(enc)),
                    len: len_of(vbody.as_ref(), vmeta.len()),
                    body: vbody,
                    body_fd: None,
                    path: vpath,
                },
            ));
        }
        let mime = mime_guess::from_path(path)
            .first_raw()
            .unwrap_or("application/octet-stream");
        if let Some(b) = &identity.body
            && compressible(mime)
        {
            // No precompressed sibling: compress once now and keep it with the entry
            // (only files held in memory, so each variant is bounded like the entry).
            for enc in Encoding::ALL {
                if variants.iter().any(|(e, _)| *e == enc) {
                    continue;
                }
                let Some(out) = compress(enc, b) else {
                    continue;
                };
                variants.push((
                    enc,
                    Repr {
                        len_header: HeaderValue::from(out.len() as u64),
                        etag: etag_value(&tag, Some(enc)),
                        len: out.len() as u64,
                        body: Some(out),
                        body_fd: None,
                        path: path.to_path_buf(),
                    },
                ));
            }
            variants.sort_by_key(|(e, _)| e.rank());
        }
        let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        let mtime_secs = mtime
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let text = mime.starts_with("text/")
            || mime == "application/javascript"
            || mime == "application/json"
            || mime == "image/svg+xml";
        let content_type = if text && !mime.contains("charset") {
            HeaderValue::from_str(&format!("{mime}; charset=utf-8"))
        } else {
            HeaderValue::from_str(mime)
        }
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
        let cache_control = HeaderValue::from_static(if mime == "text/html" {
            "public, max-age=0, must-revalidate"
        } else {
            "public, max-age=3600"
        });
        Ok(FileEntry {
            ident,
            identity,
            variants,
            mtime_secs,
            last_modified: HeaderValue::from_str(&httpdate::fmt_http_date(mtime))
                .unwrap_or(HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT")),
            content_type,
            cache_control,
        })
    }

    fn read_small(&self, path: &Path, len: u64) -> io::Result<Option<Bytes>> {
        if len > self.cfg.memory_file_max_bytes {
            return Ok(None);
        }
        let data = fs::read(path)?;
        Ok(Some(Bytes::from(data)))
    }

    fn hash_file(&self, path: &Path, ident: Ident) -> io::Result<blake3::Hash> {
        let key = (path.to_path_buf(), ident);
        if let Some(h) = self.hashes.get(&key) {
            return Ok(h);
        }
        let mut hasher = blake3::Hasher::new();
        hasher.update_reader(fs::File::open(path)?)?;
        let h = hasher.finalize();
        self.hashes.insert(key, h);
        Ok(h)
    }
}

fn len_of(body: Option<&Bytes>, stat_len: u64) -> u64 {
    body.map_or(stat_len, |b| b.len() as u64)
}

/// Types worth compressing on the fly.
fn compressible(mime: &str) -> bool {
    mime.starts_with("text/")
        || matches!(
            mime,
            "application/javascript"
                | "application/json"
                | "application/xml"
                | "image/svg+xml"
                | "application/wasm"
        )
}

/// Brotli quality for variants made on first load: q5 compresses 100 KB of JS in ~3 ms to
/// within 1 % of q6; q4 comes out larger than gzip -6.
const BROTLI_QUALITY: i32 = 5;
/// zstd level for variants made on first load: level 3 (the default) comes out larger
/// than gzip -6 on HTML and JS; level 6 is smaller and still takes ~1 ms per 100 KB.
const ZSTD_LEVEL: i32 = 6;
/// gzip level for variants made on first load.
const GZIP_LEVEL: u32 = 6;

/// `data` compressed with `enc` when that saves at least a tenth; `None` for small or
/// incompressible data.
pub(crate) fn compress(enc: Encoding, data: &[u8]) -> Option<Bytes> {
    use std::io::Write;
    if data.len() < 256 {
        return None;
    }
    let out = match enc {
        Encoding::Gzip => {
            let mut w = flate2::write::GzEncoder::new(
                Vec::with_capacity(data.len() / 3),
                flate2::Compression::new(GZIP_LEVEL),
            );
            w.write_all(data).ok()?;
            w.finish().ok()?
        }
        Encoding::Br => {
            let params = brotli::enc::BrotliEncoderParams {
                quality: BROTLI_QUALITY,
                size_hint: data.len(),
                ..Default::default()
            };
            let mut out = Vec::with_capacity(data.len() / 3);
            brotli::BrotliCompress(&mut &data[..], &mut out, &params).ok()?;
            out
        }
        Encoding::Zstd => zstd::bulk::compress(data, ZSTD_LEVEL).ok()?,
    };
    (out.len() < data.len() - data.len() / 10).then(|| Bytes::from(out))
}

/// `candidate` resolved through symlinks, if it is a regular file that stays under `root`.
fn regular_file_under(root: &Path, candidate: &Path) -> Option<(PathBuf, fs::Metadata)> {
    let real = fs::canonicalize(candidate).ok()?;
    if !real.starts_with(root) {
        return None;
    }
    let meta = fs::metadata(&real).ok()?;
    meta.is_file().then_some((real, meta))
}

fn hex_prefix(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(32);
    for b in &bytes[..16] {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn etag_value(tag: &str, enc: Option<Encoding>) -> HeaderValue {
    let s = match enc {
        Some(e) => format!("\"{tag}-{}\"", e.token()),
        None => format!("\"{tag}\""),
    };
    HeaderValue::from_str(&s).unwrap_or(HeaderValue::from_static("\"0\""))
}

/// Streams `remaining` bytes of a file from its current position.
#[derive(Debug)]
pub(crate) struct FileBody {
    file: tokio::fs::File,
    remaining: u64,
    buf: Vec<u8>,
}

const CHUNK: usize = 256 * 1024;

impl FileBody {
    pub(crate) fn new(file: tokio::fs::File, remaining: u64) -> Self {
        FileBody {
            file,
            remaining,
            buf: Vec::new(),
        }
    }
}

impl http_body::Body for FileBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        let want = this.remaining.min(CHUNK as u64) as usize;
        if this.buf.len() < want {
            this.buf.resize(want, 0);
        }
        let mut rb = ReadBuf::new(&mut this.buf[..want]);
        match Pin::new(&mut this.file).poll_read(cx, &mut rb) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
            Poll::Ready(Ok(())) => {
                let n = rb.filled().len();
                if n == 0 {
                    return Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "file shrank while being sent",
                    ))));
                }
                this.remaining -= n as u64;
                Poll::Ready(Some(Ok(Frame::data(Bytes::copy_from_slice(rb.filled())))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.remaining)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn cache() -> Arc<FileCache> {
        Arc::new(FileCache::new(FileCacheConfig {
            memory_bytes: 1 << 20,
            memory_file_max_bytes: 1 << 16,
            revalidate_after: Duration::from_secs(600),
            negative_entries: 100,
            negative_bytes: 100 * 160,
            sendfile_min_bytes: 64 * 1024,
            sendfile_max_bytes: 256 * 1024,
        }))
    }

    fn path(p: &str) -> SafePath {
        crate::path::sanitize(p).unwrap()
    }

    fn tree(files: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for f in files {
            let p = dir.path().join(f);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, f.as_bytes()).unwrap();
        }
        dir
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_first_loads_of_a_file_read_it_once() {
        let dir = tree(&["page.html"]);
        fs::write(
            dir.path().join("page.html"),
            "<p>compress me</p>\n".repeat(200),
        )
        .unwrap();
        let site = Arc::new(Site::new("a.test", dir.path()));
        let c = cache();
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..16 {
            let (c, site) = (Arc::clone(&c), Arc::clone(&site));
            set.spawn(async move { c.lookup(&site, &path("/page.html")).await });
        }
        let got = set.join_all().await;
        assert!(
            got.iter()
                .all(|f| f.as_ref().is_some_and(|f| f.variants.len() == 3))
        );
        assert_eq!(
            c.fs_lookups(),
            1,
            "the file was loaded and compressed more than once"
        );
    }

    #[tokio::test]
    async fn a_manifest_answers_missing_paths_without_the_file_system() {
        let dir = tree(&["index.html", "about/index.html"]);
        let mut site = Site::new("a.test", dir.path());
        let manifest: HashMap<String, blake3::Hash> = ["index.html", "about/index.html"]
            .iter()
            .map(|f| ((*f).to_owned(), blake3::hash(f.as_bytes())))
            .collect();
        site.manifest = Some(Arc::new(manifest));
        let site = Arc::new(site);
        let c = cache();
        for i in 0..1000 {
            let p = path(&format!("/missing/{i}"));
            assert!(c.lookup(&site, &p).await.is_none());
        }
        assert_eq!(c.fs_lookups(), 0, "missing paths went to the file system");
        assert!(c.lookup(&site, &path("/about")).await.is_some());
        assert!(c.lookup(&site, &path("/")).await.is_some());
        assert_eq!(c.fs_lookups(), 2);
    }

    #[tokio::test]
    async fn missing_paths_are_bounded_apart_from_files_and_kept_per_deployment() {
        let one = tree(&["index.html", "a.css"]);
        let site = Arc::new(Site::new("a.test", one.path()));
        let c = cache();
        assert!(c.lookup(&site, &path("/a.css")).await.is_some());
        assert!(c.lookup(&site, &path("/nope")).await.is_none());
        assert!(c.lookup(&site, &path("/nope")).await.is_none());
        assert_eq!(c.fs_lookups(), 2, "a repeated miss went to the file system");
        // A flood of distinct missing paths (far more than the cache holds).
        for i in 0..50_000 {
            let p = path(&format!("/flood/{i}/{}", "x".repeat(64)));
            assert!(c.lookup(&site, &p).await.is_none());
        }
        // The misses held stay within their own bound, outside the file cache's memory.
        assert!(
            c.misses.weight() <= 100 * 160,
            "{} bytes of misses",
            c.misses.weight()
        );
        assert_eq!(c.slots.len(), 1, "misses took file cache slots");
        // Long paths count by their length, not as one entry each.
        for i in 0..200 {
            let p = path(&format!("/long/{i}/{}", "y".repeat(4000)));
            assert!(c.lookup(&site, &p).await.is_none());
        }
        let held: usize = c.misses.iter().map(|(k, _)| k.len() + 64).sum();
        assert!(held <= 100 * 160, "{held} bytes of misses held");
        let before = c.fs_lookups();
        assert!(c.lookup(&site, &path("/a.css")).await.is_some());
        assert_eq!(c.fs_lookups(), before, "the flood evicted a cached file");
        // A new deployment (another root) does not inherit the old misses.
        let two = tree(&["index.html", "nope.html"]);
        let next = Arc::new(Site::new("a.test", two.path()));
        assert!(c.lookup(&next, &path("/nope")).await.is_some());
    }
}
