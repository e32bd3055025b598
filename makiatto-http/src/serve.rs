//! Request handling: host routing, ACME HTTP-01 answers, redirects and static files.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::{Method, StatusCode};
use tokio::io::AsyncSeekExt;

use crate::challenge::ChallengeStore;
use crate::files::{Encoding, FileBody, FileCache, FileEntry, Repr};
use crate::host::normalize_host;
use crate::path::{SafePath, sanitize};
use crate::site::{Site, SiteResolver};
use crate::tls::CertSource;

/// What every request handler shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) sites: Arc<dyn SiteResolver>,
    pub(crate) certs: Arc<dyn CertSource>,
    pub(crate) challenges: Arc<dyn ChallengeStore>,
    pub(crate) files: Arc<FileCache>,
    pub(crate) hsts: Option<HeaderValue>,
    pub(crate) https_port: Option<u16>,
    /// Requests answered on the HTTP/1.1 fast path.
    pub(crate) fast_answers: std::sync::atomic::AtomicU64,
}

/// The TLS server name of the connection a request came on.
#[derive(Debug, Clone)]
pub(crate) struct TlsSni(pub(crate) Arc<str>);

/// Marks requests that came from a configured trusted proxy.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TrustedProxy;

#[derive(Debug, Clone)]
struct AppState {
    shared: Arc<Shared>,
    https: bool,
}

/// The axum router for plain HTTP (`https == false`) or HTTPS.
pub(crate) fn router(shared: Arc<Shared>, https: bool) -> Router {
    let r = Router::new();
    let r = if https {
        r
    } else {
        r.route("/.well-known/acme-challenge/{token}", get(acme_challenge))
    };
    r.fallback(static_site)
        .with_state(AppState { shared, https })
}

async fn acme_challenge(State(st): State<AppState>, UrlPath(token): UrlPath<String>) -> Response {
    match st.shared.challenges.http01(&token) {
        Some(ka) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            )],
            ka,
        )
            .into_response(),
        None => plain(StatusCode::NOT_FOUND, "no such challenge\n"),
    }
}

fn plain(status: StatusCode, msg: &'static str) -> Response {
    let mut r = Response::new(Body::from(msg));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// The host of a request: from a trusted proxy its `X-Forwarded-Host`; otherwise the
/// URI authority (HTTP/2 `:authority`, or an absolute-form request target) or else the
/// `Host` header.
fn request_host(req: &Parts) -> Option<String> {
    if req.extensions.get::<TrustedProxy>().is_some()
        && let Some(fwd) = req.headers.get("x-forwarded-host")
    {
        // The first (client-facing) value when proxies chained.
        return normalize_host(fwd.to_str().ok()?.split(',').next()?);
    }
    if let Some(a) = req.uri.authority() {
        return normalize_host(a.as_str());
    }
    normalize_host(req.headers.get(header::HOST)?.to_str().ok()?)
}

async fn static_site(State(st): State<AppState>, req: Request) -> Response {
    let (req, _body) = req.into_parts();
    let shared = &st.shared;
    let Some(host) = request_host(&req) else {
        return plain(StatusCode::BAD_REQUEST, "missing or invalid host\n");
    };
    let Some(site) = shared.sites.resolve(&host) else {
        return if st.https {
            plain(StatusCode::MISDIRECTED_REQUEST, "unknown host\n")
        } else {
            plain(StatusCode::NOT_FOUND, "unknown host\n")
        };
    };
    if st.https
        && let Some(TlsSni(sni)) = req.extensions.get::<TlsSni>()
        && **sni != *host
        && !same_cert(shared, sni, &host)
    {
        // The connection's certificate does not cover this host (domain fronting, or a
        // reused HTTP/2 connection): RFC 9110 §15.5.20.
        return plain(
            StatusCode::MISDIRECTED_REQUEST,
            "host not covered by this connection\n",
        );
    }
    let via_https_proxy = req.extensions.get::<TrustedProxy>().is_some()
        && req
            .headers
            .get("x-forwarded-proto")
            .is_some_and(|p| p.as_bytes().eq_ignore_ascii_case(b"https"));
    if !st.https && !via_https_proxy && shared.certs.resolve(&host).is_some() {
        return redirect(&host, shared.https_port, &req);
    }
    let mut resp = serve_site(shared, &site, &req).await;
    if st.https
        && let Some(h) = &shared.hsts
    {
        resp.headers_mut()
            .insert(header::STRICT_TRANSPORT_SECURITY, h.clone());
    }
    resp
}

fn same_cert(shared: &Shared, sni: &str, host: &str) -> bool {
    let sni = normalize_host(sni);
    match (
        sni.and_then(|s| shared.certs.resolve(&s)),
        shared.certs.resolve(host),
    ) {
        (Some(a), Some(b)) => Arc::ptr_eq(&a, &b),
        _ => false,
    }
}

fn redirect(host: &str, port: Option<u16>, req: &Parts) -> Response {
    let pq = req.uri.path_and_query().map_or("/", |p| p.as_str());
    let loc = match port {
        Some(p) if p != 443 => format!("https://{host}:{p}{pq}"),
        _ => format!("https://{host}{pq}"),
    };
    match HeaderValue::from_str(&loc) {
        Ok(v) => {
            let mut r = plain(StatusCode::PERMANENT_REDIRECT, "moved to https\n");
            r.headers_mut().insert(header::LOCATION, v);
            r
        }
        Err(_) => plain(StatusCode::BAD_REQUEST, "invalid request target\n"),
    }
}

async fn serve_site(shared: &Shared, site: &Arc<Site>, req: &Parts) -> Response {
    let head = match req.method {
        Method::GET => false,
        Method::HEAD => true,
        _ => {
            let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return r;
        }
    };
    let Some(safe) = sanitize(req.uri.path()) else {
        return plain(StatusCode::BAD_REQUEST, "invalid path\n");
    };
    if let Some(f) = shared.files.lookup(site, &safe).await {
        return respond(&f, site, &req.headers, head, StatusCode::OK).await;
    }
    let not_found = SafePath {
        rel: "404.html".into(),
        trailing_slash: false,
    };
    match shared.files.lookup(site, &not_found).await {
        Some(f) => respond(&f, site, &req.headers, head, StatusCode::NOT_FOUND).await,
        None => plain(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// The q-value, in thousandths, the request gives each of `Encoding::ALL` (0 = not
/// acceptable): its own entry, else `*`, else 0. A malformed q-value counts as 0.
fn accepted_encodings(headers: &HeaderMap) -> [u16; 3] {
    accepted_encodings_in(
        headers
            .get_all(header::ACCEPT_ENCODING)
            .iter()
            .map(HeaderValue::as_bytes),
    )
}

/// [`accepted_encodings`] over the raw `Accept-Encoding` values of a request (the HTTP/1.1
/// fast path has no `HeaderMap`). A value that is not visible ASCII is skipped, as
/// `HeaderValue::to_str` would.
pub(crate) fn accepted_encodings_in<'a>(values: impl Iterator<Item = &'a [u8]>) -> [u16; 3] {
    let mut star = None;
    let mut explicit = [None; 3];
    for v in values {
        let Some(v) = header_str(v) else { continue };
        for item in v.split(',') {
            let mut parts = item.split(';');
            let name = parts.next().unwrap_or("").trim();
            let q = parts
                .find_map(|p| p.trim().strip_prefix("q="))
                .map_or(1000, |q| {
                    q.trim()
                        .parse::<f32>()
                        .ok()
                        .filter(|q| (0.0..=1.0).contains(q))
                        .map_or(0, |q| (q * 1000.0).round() as u16)
                });
            if name == "*" {
                star = Some(q);
            }
            for e in Encoding::ALL {
                if name.eq_ignore_ascii_case(e.token()) {
                    explicit[e.rank()] = Some(q);
                }
            }
        }
    }
    let mut q = [0; 3];
    for (i, x) in q.iter_mut().enumerate() {
        *x = explicit[i].or(star).unwrap_or(0);
    }
    q
}

/// A header value as text under the rule of `HeaderValue::to_str`: visible ASCII, space
/// and tab only.
pub(crate) fn header_str(v: &[u8]) -> Option<&str> {
    if v.iter().all(|&b| b == b'\t' || (32..127).contains(&b)) {
        std::str::from_utf8(v).ok()
    } else {
        None
    }
}

/// The variant to send: the highest q-value wins, br > zstd > gzip among equals.
fn pick_variant<'a>(f: &'a FileEntry, headers: &HeaderMap) -> Option<(Encoding, &'a Repr)> {
    pick_variant_q(f, accepted_encodings(headers))
}

/// [`pick_variant`] from the q-values of [`accepted_encodings_in`].
pub(crate) fn pick_variant_q(f: &FileEntry, q: [u16; 3]) -> Option<(Encoding, &Repr)> {
    let mut best: Option<(u16, Encoding, &Repr)> = None;
    for (e, r) in &f.variants {
        let qe = q[e.rank()];
        if qe > 0 && best.is_none_or(|(bq, be, _)| qe > bq || (qe == bq && e.rank() < be.rank())) {
            best = Some((qe, *e, r));
        }
    }
    best.map(|(_, e, r)| (e, r))
}

pub(crate) fn etag_matches(list: &str, etag: &HeaderValue) -> bool {
    let Ok(etag) = etag.to_str() else {
        return false;
    };
    list.split(',').any(|t| {
        let t = t.trim();
        t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag
    })
}

enum RangeSpec {
    None,
    Unsatisfiable,
    Bytes(u64, u64),
}

fn parse_range(v: &str, len: u64) -> RangeSpec {
    let Some(spec) = v.trim().strip_prefix("bytes=") else {
        return RangeSpec::None;
    };
    if spec.contains(',') {
        // Several ranges: answer with the whole file, which RFC 9110 allows.
        return RangeSpec::None;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeSpec::None;
    };
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        let Ok(n) = b.parse::<u64>() else {
            return RangeSpec::None;
        };
        if n == 0 || len == 0 {
            return RangeSpec::Unsatisfiable;
        }
        return RangeSpec::Bytes(len.saturating_sub(n), len - 1);
    }
    let Ok(start) = a.parse::<u64>() else {
        return RangeSpec::None;
    };
    let end = if b.is_empty() {
        len.saturating_sub(1)
    } else {
        match b.parse::<u64>() {
            Ok(e) if e >= start => e.min(len.saturating_sub(1)),
            _ => return RangeSpec::None,
        }
    };
    if start >= len {
        return RangeSpec::Unsatisfiable;
    }
    RangeSpec::Bytes(start, end)
}

async fn respond(
    f: &FileEntry,
    site: &Site,
    headers: &HeaderMap,
    head: bool,
    status: StatusCode,
) -> Response {
    let range_hdr = if status == StatusCode::OK {
        headers.get(header::RANGE).and_then(|v| v.to_str().ok())
    } else {
        None
    };
    // Ranges are served from the identity representation; otherwise the best variant.
    let (repr, enc): (&Repr, Option<Encoding>) = if range_hdr.is_some() || f.variants.is_empty() {
        (&f.identity, None)
    } else {
        pick_variant(f, headers).map_or((&f.identity, None), |(e, r)| (r, Some(e)))
    };

    let mut resp = Response::new(Body::empty());
    let h = resp.headers_mut();
    h.insert(header::ETAG, repr.etag.clone());
    h.insert(header::LAST_MODIFIED, f.last_modified.clone());
    h.insert(
        header::CACHE_CONTROL,
        site.settings
            .cache_control
            .clone()
            .unwrap_or_else(|| f.cache_control.clone()),
    );
    if !f.variants.is_empty() {
        h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    }

    if status == StatusCode::OK {
        let not_modified = match headers
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
        {
            Some(list) => etag_matches(list, &repr.etag),
            None => headers
                .get(header::IF_MODIFIED_SINCE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| httpdate::parse_http_date(v).ok())
                .and_then(|t| t.duration_since(std::time::SystemTime::UNIX_EPOCH).ok())
                .is_some_and(|t| f.mtime_secs <= t.as_secs()),
        };
        if not_modified {
            *resp.status_mut() = StatusCode::NOT_MODIFIED;
            return resp;
        }
    }

    h_insert_type(&mut resp, f, enc);
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));

    let mut range = match range_hdr {
        Some(r) => parse_range(r, repr.len),
        None => RangeSpec::None,
    };
    if !matches!(range, RangeSpec::None)
        && let Some(ir) = headers.get(header::IF_RANGE)
    {
        let same = ir == repr.etag || ir == f.last_modified;
        if !same {
            range = RangeSpec::None;
        }
    }
    let (start, len) = match range {
        RangeSpec::None => {
            resp.headers_mut()
                .insert(header::CONTENT_LENGTH, repr.len_header.clone());
            (0, repr.len)
        }
        RangeSpec::Unsatisfiable => {
            *resp.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
            let h = resp.headers_mut();
            h.remove(header::CONTENT_TYPE);
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{}", repr.len)) {
                h.insert(header::CONTENT_RANGE, v);
            }
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(0u64));
            return resp;
        }
        RangeSpec::Bytes(s, e) => {
            *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
            let h = resp.headers_mut();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {s}-{e}/{}", repr.len)) {
                h.insert(header::CONTENT_RANGE, v);
            }
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(e - s + 1));
            (s, e - s + 1)
        }
    };
    if head || len == 0 {
        return resp;
    }
    let body = match &repr.body {
        Some(b) => Body::from(slice(b, start, len)),
        None => match open_at(&repr.path, start).await {
            Ok(file) => Body::new(FileBody::new(file, len)),
            Err(e) => {
                tracing::warn!(error = %e, path = %repr.path.display(), "opening a site file");
                return plain(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n");
            }
        },
    };
    *resp.body_mut() = body;
    resp
}

fn h_insert_type(resp: &mut Response, f: &FileEntry, enc: Option<Encoding>) {
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, f.content_type.clone());
    if let Some(e) = enc {
        h.insert(
            header::CONTENT_ENCODING,
            HeaderValue::from_static(e.token()),
        );
    }
}

fn slice(b: &Bytes, start: u64, len: u64) -> Bytes {
    let s = start as usize;
    b.slice(s..s + len as usize)
}

async fn open_at(path: &std::path::Path, start: u64) -> std::io::Result<tokio::fs::File> {
    let mut file = tokio::fs::File::open(path).await?;
    if start > 0 {
        file.seek(std::io::SeekFrom::Start(start)).await?;
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert!(matches!(
            parse_range("bytes=0-9", 100),
            RangeSpec::Bytes(0, 9)
        ));
        assert!(matches!(
            parse_range("bytes=90-", 100),
            RangeSpec::Bytes(90, 99)
        ));
        assert!(matches!(
            parse_range("bytes=-10", 100),
            RangeSpec::Bytes(90, 99)
        ));
        assert!(matches!(
            parse_range("bytes=50-500", 100),
            RangeSpec::Bytes(50, 99)
        ));
        assert!(matches!(
            parse_range("bytes=100-", 100),
            RangeSpec::Unsatisfiable
        ));
        assert!(matches!(
            parse_range("bytes=-0", 100),
            RangeSpec::Unsatisfiable
        ));
        assert!(matches!(parse_range("bytes=5-1", 100), RangeSpec::None));
        assert!(matches!(parse_range("bytes=0-1,5-6", 100), RangeSpec::None));
        assert!(matches!(parse_range("items=0-1", 100), RangeSpec::None));
    }

    #[test]
    fn encodings() {
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("gzip, br;q=0"),
        );
        assert_eq!(accepted_encodings(&h), [0, 0, 1000]);
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("*;q=0.5, gzip;q=0, zstd;q=0.8"),
        );
        assert_eq!(accepted_encodings(&h), [500, 800, 0]);
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("br;q=2, zstd;q=x, gzip;q=0.001"),
        );
        assert_eq!(accepted_encodings(&h), [0, 0, 1]);
        h.remove(header::ACCEPT_ENCODING);
        assert_eq!(accepted_encodings(&h), [0, 0, 0]);
    }
}
