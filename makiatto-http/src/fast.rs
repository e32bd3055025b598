//! The HTTP/1.1 fast path in front of hyper.
//!
//! On an HTTP/1.1 connection (plain, or TLS whose ALPN is `http/1.1` or absent) requests are
//! parsed here with `httparse`. A plain GET or HEAD for a known host that resolves to a file
//! held in memory is answered from the file's precomputed header values and bytes: every
//! complete request in the buffer is answered and the answers go out in one write. Anything
//! else (unknown host, a miss, redirects, ACME paths, ranges, conditionals other than
//! `If-None-Match`, bodies, upgrades, HTTP/1.0, HTTP/2 prior knowledge, malformed or
//! oversized heads) hands the connection, with every byte already read, to hyper for the
//! rest of its life, so behaviour there is hyper's and the router's.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::files::BodyFd;

use crate::host::normalize_host;
use crate::path::sanitize;
use crate::serve::{Shared, accepted_encodings_in, etag_matches, header_str, pick_variant_q};

/// Most header lines a request may have on the fast path; more go to hyper (whose limit is
/// 100).
const MAX_HEADERS: usize = 48;
/// Bodies up to this size are copied behind their head, so that one small answer is one
/// contiguous write (one TLS record); larger ones are written from the cached bytes.
const COPY_BODY_MAX: usize = 16 * 1024;
/// Pending answers are written once they reach this size (heads and bodies, copied or
/// queued by reference), even with more pipelined requests waiting.
const FLUSH_AT: usize = 256 * 1024;

/// What the fast path of one connection needs.
pub(crate) struct FastConn<'a> {
    pub(crate) shared: &'a Shared,
    pub(crate) https: bool,
    /// The TLS server name, over HTTPS.
    pub(crate) sni: Option<&'a str>,
    /// Largest request head; larger goes to hyper (which answers 431).
    pub(crate) max_head: usize,
    /// Time a client has for each request head, counted from the end of the previous
    /// answer, as hyper counts it; an idle connection is closed after it too.
    pub(crate) head_timeout: Duration,
    /// How long a write may wait for a client that does not read (as `WriteTimeout`),
    /// for what the fast path writes to the socket itself (`sendfile`).
    pub(crate) write_timeout: Duration,
}

/// A stream whose writes go straight to a TCP socket (no TLS, no buffering), so the fast
/// path may `sendfile` to that socket.
pub(crate) trait RawTcp {
    /// The socket, when writes go straight to it.
    fn raw_tcp(&self) -> Option<&TcpStream>;
}

/// How the fast path left a connection.
pub(crate) enum End {
    /// Closed (by the client, a timeout, an error, `Connection: close` or shutdown).
    Closed,
    /// To be served by hyper from now on, starting with these bytes already read.
    Handoff(Bytes),
}

/// A parsed request the fast path may answer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct FastReq<'b> {
    /// Length of the request head (the request has no body).
    pub(crate) len: usize,
    pub(crate) head: bool,
    /// The path, without query.
    pub(crate) path: &'b str,
    pub(crate) host: &'b str,
    /// q-values per `Encoding::ALL`.
    pub(crate) q: [u16; 3],
    pub(crate) if_none_match: Option<&'b str>,
    pub(crate) close: bool,
}

/// What the start of a buffer holds.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Parsed<'b> {
    /// Not a complete head yet.
    Partial,
    /// Something for hyper.
    Decline,
    Req(FastReq<'b>),
}

/// Bytes hyper and `http::Uri` accept in an origin-form target that the fast path takes
/// as they are (RFC 3986 unreserved, sub-delims, `:@/?%`); any other byte goes to hyper.
fn target_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&b)
}

/// Parses the request at the start of `buf`.
pub(crate) fn parse(buf: &[u8], max_head: usize) -> Parsed<'_> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() <= max_head => return Parsed::Partial,
        _ => return Parsed::Decline,
    };
    if len > max_head || req.version != Some(1) {
        return Parsed::Decline;
    }
    let head = match req.method {
        Some("GET") => false,
        Some("HEAD") => true,
        _ => return Parsed::Decline,
    };
    let Some(target) = req.path else {
        return Parsed::Decline;
    };
    if !target.starts_with('/')
        || !target.bytes().all(target_byte)
        || target.starts_with("/.well-known/acme-challenge/")
    {
        return Parsed::Decline;
    }
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    let mut host = None;
    let mut if_none_match = None;
    let mut close = false;
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
        if is("host") {
            if host.is_some() {
                return Parsed::Decline;
            }
            let Some(v) = header_str(h.value) else {
                return Parsed::Decline;
            };
            host = Some(v);
        } else if is("if-none-match") {
            if if_none_match.is_some() {
                return Parsed::Decline;
            }
            let Some(v) = header_str(h.value) else {
                return Parsed::Decline;
            };
            if_none_match = Some(v);
        } else if is("connection") {
            let Some(v) = header_str(h.value) else {
                return Parsed::Decline;
            };
            for token in v.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    close = true;
                } else if !token.eq_ignore_ascii_case("keep-alive") && !token.is_empty() {
                    return Parsed::Decline;
                }
            }
        } else if is("content-length")
            || is("transfer-encoding")
            || is("expect")
            || is("upgrade")
            || is("range")
            || is("if-range")
            || is("if-match")
            || is("if-unmodified-since")
            || is("if-modified-since")
            || is("http2-settings")
        {
            return Parsed::Decline;
        }
    }
    let Some(host) = host else {
        return Parsed::Decline;
    };
    let q = accepted_encodings_in(
        req.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("accept-encoding"))
            .map(|h| h.value),
    );
    Parsed::Req(FastReq {
        len,
        head,
        path,
        host,
        q,
        if_none_match,
        close,
    })
}

/// A queued piece of the pending answers.
enum Part {
    Mem(Bytes),
    /// A body sent with `sendfile` from its sealed memfd.
    File(Arc<BodyFd>),
}

/// Answers pending on a connection, written together.
#[derive(Default)]
struct Out {
    parts: Vec<Part>,
    /// Bytes in `parts`.
    parts_len: usize,
    /// Whether `parts` holds a `Part::File`.
    files: bool,
    cur: Vec<u8>,
}

impl Out {
    fn is_empty(&self) -> bool {
        self.parts.is_empty() && self.cur.is_empty()
    }

    /// Bytes pending, in `parts` and `cur`.
    fn len(&self) -> usize {
        self.parts_len + self.cur.len()
    }

    fn push(&mut self, p: Part, len: usize) {
        if !self.cur.is_empty() {
            self.parts_len += self.cur.len();
            self.parts
                .push(Part::Mem(Bytes::copy_from_slice(&self.cur)));
            self.cur.clear();
        }
        self.parts_len += len;
        self.files |= matches!(p, Part::File(_));
        self.parts.push(p);
    }

    fn body(&mut self, b: &Bytes) {
        if b.len() <= COPY_BODY_MAX {
            self.cur.extend_from_slice(b);
        } else {
            self.push(Part::Mem(b.clone()), b.len());
        }
    }

    fn file(&mut self, f: &Arc<BodyFd>) {
        let len = usize::try_from(f.len).unwrap_or(usize::MAX);
        self.push(Part::File(Arc::clone(f)), len);
    }

    async fn flush<S: AsyncWrite + Unpin + RawTcp>(
        &mut self,
        io: &mut S,
        write_timeout: Duration,
    ) -> io::Result<()> {
        if self.parts.is_empty() {
            if !self.cur.is_empty() {
                io.write_all(&self.cur).await?;
            }
        } else {
            if !self.cur.is_empty() {
                self.parts
                    .push(Part::Mem(Bytes::copy_from_slice(&self.cur)));
            }
            let parts = std::mem::take(&mut self.parts);
            if self.files {
                let Some(tcp) = io.raw_tcp() else {
                    return Err(io::Error::other("sendfile on a stream without a socket"));
                };
                write_raw(tcp, write_timeout, parts).await?;
            } else {
                let mut mem: Vec<Bytes> = parts
                    .into_iter()
                    .filter_map(|p| match p {
                        Part::Mem(b) => Some(b),
                        Part::File(_) => None,
                    })
                    .collect();
                write_all_parts(io, &mut mem).await?;
            }
        }
        self.parts.clear();
        self.parts_len = 0;
        self.files = false;
        self.cur.clear();
        io.flush().await
    }
}

/// Runs the non-blocking socket call `f` until it is done, waiting for the socket to be
/// writable for at most `timeout` each time it is full.
async fn socket_write(
    tcp: &TcpStream,
    timeout: Duration,
    mut f: impl FnMut() -> io::Result<usize>,
) -> io::Result<usize> {
    loop {
        match tcp.try_io(Interest::WRITABLE, &mut f) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                match tokio::time::timeout(timeout, tcp.writable()).await {
                    Ok(r) => r?,
                    Err(_) => {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "client stopped reading",
                        ));
                    }
                }
            }
            r => return r,
        }
    }
}

/// Writes `parts` to the socket itself: runs of bytes with `sendmsg` (`MSG_MORE` when a
/// body follows, so a head and its body share packets), bodies with `sendfile`.
async fn write_raw(tcp: &TcpStream, timeout: Duration, parts: Vec<Part>) -> io::Result<()> {
    use rustix::net::{SendAncillaryBuffer, SendFlags};
    let mut run: Vec<Bytes> = Vec::new();
    let mut parts = parts.into_iter().peekable();
    while let Some(p) = parts.next() {
        match p {
            Part::Mem(b) => {
                run.push(b);
                if matches!(parts.peek(), Some(Part::Mem(_))) {
                    continue;
                }
                let flags = if parts.peek().is_some() {
                    SendFlags::NOSIGNAL | SendFlags::MORE
                } else {
                    SendFlags::NOSIGNAL
                };
                let mut first = 0;
                while first < run.len() {
                    let n = socket_write(tcp, timeout, || {
                        let slices: Vec<IoSlice<'_>> =
                            run[first..].iter().map(|b| IoSlice::new(b)).collect();
                        rustix::net::sendmsg(
                            tcp,
                            &slices,
                            &mut SendAncillaryBuffer::default(),
                            flags,
                        )
                        .map_err(io::Error::from)
                    })
                    .await?;
                    if n == 0 {
                        return Err(io::ErrorKind::WriteZero.into());
                    }
                    advance_parts(&mut run, &mut first, n);
                }
                run.clear();
            }
            Part::File(f) => {
                let mut off = 0u64;
                while off < f.len {
                    let want = usize::try_from(f.len - off).unwrap_or(usize::MAX);
                    let n = socket_write(tcp, timeout, || {
                        rustix::fs::sendfile(tcp, &f.fd, Some(&mut off), want)
                            .map_err(io::Error::from)
                    })
                    .await?;
                    if n == 0 {
                        return Err(io::ErrorKind::WriteZero.into());
                    }
                }
            }
        }
    }
    Ok(())
}

async fn write_all_parts<S: AsyncWrite + Unpin>(io: &mut S, parts: &mut [Bytes]) -> io::Result<()> {
    let mut first = 0;
    while first < parts.len() {
        let slices: Vec<IoSlice<'_>> = parts[first..].iter().map(|b| IoSlice::new(b)).collect();
        let n = io.write_vectored(&slices).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        advance_parts(parts, &mut first, n);
    }
    Ok(())
}

/// Drops the `n` bytes a vectored write took from the front of `parts[*first..]`, moving
/// `*first` past the parts it emptied.
fn advance_parts(parts: &mut [Bytes], first: &mut usize, mut n: usize) {
    while *first < parts.len() && n > 0 {
        let take = n.min(parts[*first].len());
        parts[*first].advance(take);
        n -= take;
        if parts[*first].is_empty() {
            *first += 1;
        }
    }
}

thread_local! {
    /// The `Date` value, formatted once a second per thread.
    static DATE: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((u64::MAX, String::new())) };
}

fn push_date(out: &mut Vec<u8>) {
    let now = SystemTime::now();
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(at, text)| {
        if *at != secs {
            *at = secs;
            *text = httpdate::fmt_http_date(now);
        }
        out.extend_from_slice(text.as_bytes());
    });
}

fn header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

impl FastConn<'_> {
    /// Appends the answer to `r` to `out`, or `false` when hyper must answer it.
    async fn answer(&self, r: &FastReq<'_>, out: &mut Out, sendfile: bool) -> bool {
        let shared = self.shared;
        // Already normal (lower case, no port, no trailing dot): no copy needed.
        let plain = !r.host.is_empty()
            && r.host.len() <= 253
            && r.host.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.' || b == b'_'
            })
            && !r.host.starts_with('.')
            && !r.host.ends_with('.')
            && !r.host.contains("..");
        let owned;
        let host = if plain {
            r.host
        } else {
            let Some(h) = normalize_host(r.host) else {
                return false;
            };
            owned = h;
            owned.as_str()
        };
        if self.https {
            // A host the connection's certificate may not cover: the router decides.
            if self.sni != Some(host) {
                return false;
            }
        } else if shared.certs.resolve(host).is_some() {
            // Redirected to HTTPS by the router.
            return false;
        }
        let Some(site) = shared.sites.resolve(host) else {
            return false;
        };
        let Some(safe) = sanitize(r.path) else {
            return false;
        };
        let Some(f) = shared.files.lookup(&site, &safe).await else {
            return false;
        };
        let (repr, enc) = if f.variants.is_empty() {
            (&f.identity, None)
        } else {
            pick_variant_q(&f, r.q).map_or((&f.identity, None), |(e, v)| (v, Some(e)))
        };
        let Some(body) = &repr.body else {
            return false;
        };
        let not_modified = r
            .if_none_match
            .is_some_and(|list| etag_matches(list, &repr.etag));
        let o = &mut out.cur;
        o.extend_from_slice(if not_modified {
            b"HTTP/1.1 304 Not Modified\r\n"
        } else {
            b"HTTP/1.1 200 OK\r\n"
        });
        header(o, b"etag", repr.etag.as_bytes());
        header(o, b"last-modified", f.last_modified.as_bytes());
        let cc = site
            .settings
            .cache_control
            .as_ref()
            .unwrap_or(&f.cache_control);
        header(o, b"cache-control", cc.as_bytes());
        if !f.variants.is_empty() {
            header(o, b"vary", b"Accept-Encoding");
        }
        if !not_modified {
            header(o, b"content-type", f.content_type.as_bytes());
            if let Some(e) = enc {
                header(o, b"content-encoding", e.token().as_bytes());
            }
            header(o, b"accept-ranges", b"bytes");
            header(o, b"content-length", repr.len_header.as_bytes());
        } else if r.head {
            // What hyper writes for an empty body on HEAD, 304 or not.
            header(o, b"content-length", b"0");
        }
        if self.https
            && let Some(h) = &shared.hsts
        {
            header(o, b"strict-transport-security", h.as_bytes());
        }
        if r.close {
            header(o, b"connection", b"close");
        }
        o.extend_from_slice(b"date: ");
        push_date(o);
        o.extend_from_slice(b"\r\n\r\n");
        if !not_modified && !r.head && !body.is_empty() {
            match &repr.body_fd {
                Some(f) if sendfile => out.file(f),
                _ => out.body(body),
            }
        }
        shared
            .fast_answers
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        true
    }

    /// Serves requests on `io` until the connection closes or must go to hyper.
    pub(crate) async fn serve<S>(&self, io: &mut S, shutdown: &CancellationToken) -> End
    where
        S: AsyncRead + AsyncWrite + Unpin + RawTcp,
    {
        let sendfile = io.raw_tcp().is_some();
        let mut buf = BytesMut::with_capacity(8 * 1024);
        let mut out = Out::default();
        let mut deadline = tokio::time::Instant::now() + self.head_timeout;
        // One timer and one shutdown waiter per connection: the timer is re-armed only
        // when it fires before the (moving) deadline, not once per request.
        let timer = tokio::time::sleep_until(deadline);
        let cancelled = shutdown.cancelled();
        tokio::pin!(timer, cancelled);
        loop {
            let mut answered = false;
            let mut close = false;
            let mut handoff = false;
            while !buf.is_empty() {
                let n = match parse(&buf, self.max_head) {
                    Parsed::Partial => break,
                    Parsed::Decline => {
                        handoff = true;
                        break;
                    }
                    Parsed::Req(r) => {
                        if !self.answer(&r, &mut out, sendfile).await {
                            handoff = true;
                            break;
                        }
                        close = r.close;
                        r.len
                    }
                };
                buf.advance(n);
                answered = true;
                if close {
                    break;
                }
                // Pipelined requests: bound what one connection holds before writing.
                if out.len() >= FLUSH_AT && out.flush(io, self.write_timeout).await.is_err() {
                    return End::Closed;
                }
            }
            if !out.is_empty() && out.flush(io, self.write_timeout).await.is_err() {
                return End::Closed;
            }
            if handoff {
                return End::Handoff(buf.freeze());
            }
            if close {
                let _ = io.shutdown().await;
                return End::Closed;
            }
            if answered {
                deadline = tokio::time::Instant::now() + self.head_timeout;
            }
            if buf.capacity() - buf.len() < 4096 {
                buf.reserve(8 * 1024);
            }
            tokio::select! {
                biased;
                () = &mut cancelled => return End::Closed,
                r = io.read_buf(&mut buf) => match r {
                    Ok(n) if n > 0 => {}
                    _ => return End::Closed,
                },
                () = &mut timer => {
                    if tokio::time::Instant::now() >= deadline {
                        return End::Closed;
                    }
                    timer.as_mut().reset(deadline);
                }
            }
        }
    }
}

/// A stream that yields `pre` before reading from `inner`: hands hyper the bytes the fast
/// path already read.
#[derive(Debug)]
pub(crate) struct Rewind<S> {
    pre: Bytes,
    inner: S,
}

impl<S> Rewind<S> {
    pub(crate) fn new(inner: S) -> Self {
        Rewind {
            pre: Bytes::new(),
            inner,
        }
    }

    pub(crate) fn rewind(&mut self, pre: Bytes) {
        self.pre = pre;
    }

    pub(crate) fn inner_mut(&mut self) -> &mut S {
        &mut self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.pre.is_empty() {
            let n = this.pre.len().min(buf.remaining());
            buf.put_slice(&this.pre[..n]);
            this.pre.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_plain_get() {
        let raw = b"GET /a/b.html?x=1 HTTP/1.1\r\nHost: Example.test\r\nAccept-Encoding: gzip\r\nIf-None-Match: \"x\"\r\n\r\nGET";
        let Parsed::Req(r) = parse(raw, 8192) else {
            panic!("not parsed");
        };
        assert_eq!(r.path, "/a/b.html");
        assert_eq!(r.host, "Example.test");
        assert_eq!(r.q, [0, 0, 1000]);
        assert_eq!(r.if_none_match, Some("\"x\""));
        assert_eq!(&raw[r.len..], b"GET");
        assert!(!r.head && !r.close);
    }

    #[test]
    fn declines_what_hyper_must_answer() {
        for raw in [
            &b"POST / HTTP/1.1\r\nHost: a\r\n\r\n"[..],
            b"GET / HTTP/1.0\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nRange: bytes=0-1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nIf-Modified-Since: x\r\n\r\n",
            b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET /a\"b HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET /.well-known/acme-challenge/t HTTP/1.1\r\nHost: a\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"\x16\x03\x01",
        ] {
            assert_eq!(
                parse(raw, 8192),
                Parsed::Decline,
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\nHost: a\r\n", 8192),
            Parsed::Partial
        );
        assert_eq!(parse(b"GET / HTTP/1.1\r\nHost: a\r\n", 10), Parsed::Decline);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: 2000,
            failure_persistence: None,
            ..proptest::prelude::ProptestConfig::default()
        })]

        /// Any bytes: no panic; an accepted request is a complete head within the buffer
        /// that parses the same on its own; a partial one is a prefix of something.
        #[test]
        fn parse_never_panics(
            raw in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256),
            prefix in proptest::sample::select(vec![
                &b""[..],
                b"GET / HTTP/1.1\r\nHost: a\r\n",
                b"HEAD /x?y HTTP/1.1\r\nHost: a\r\nIf-None-Match: ",
                b"GET /a HTTP/1.1\r\nConnection: ",
            ]),
            max_head in 8usize..512,
        ) {
            let mut buf = prefix.to_vec();
            buf.extend_from_slice(&raw);
            match parse(&buf, max_head) {
                Parsed::Req(r) => {
                    proptest::prop_assert!(r.len <= buf.len() && r.len <= max_head);
                    proptest::prop_assert!(r.path.starts_with('/'));
                    proptest::prop_assert_eq!(parse(&buf[..r.len], max_head), Parsed::Req(r));
                }
                Parsed::Partial => proptest::prop_assert!(buf.len() <= max_head),
                Parsed::Decline => {}
            }
        }
    }
}
