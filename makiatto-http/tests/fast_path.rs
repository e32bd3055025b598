//! The HTTP/1.1 fast path answers exactly as hyper and the router do: the same requests
//! (hosts, paths, encodings, conditionals, HEAD, keep-alive and pipelining, over HTTP and
//! HTTPS) sent to a server with the fast path and to one without it (`fast_path = false`)
//! over the same sites, certificates and files, compared status, headers (except `Date`)
//! and body.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{TestServer, start, tls_connect};
use makiatto_http::{HttpServer, ServerConfig};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The same sites and certificates as `srv`, served with the fast path off.
async fn slow_twin(
    srv: &TestServer,
    header_read_timeout_ms: u64,
) -> (SocketAddr, SocketAddr, HttpServer) {
    let cfg = makiatto_http::ServerConfig {
        https_redirect_port: Some(8443),
        revalidate_ms: 0,
        header_read_timeout_ms,
        fast_path: false,
        ..makiatto_http::ServerConfig::default()
    };
    let server = HttpServer::new(
        cfg,
        srv.sites.clone(),
        srv.certs.clone(),
        srv.challenges.clone(),
    )
    .unwrap();
    let http_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let https_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (http, https) = (http_l.local_addr().unwrap(), https_l.local_addr().unwrap());
    let (s1, t1) = (server.clone(), srv.token.clone());
    tokio::spawn(async move { s1.serve_http(http_l, t1).await });
    let (s2, t2) = (server.clone(), srv.token.clone());
    tokio::spawn(async move { s2.serve_https(https_l, t2).await });
    (http, https, server)
}

/// One response read off a keep-alive stream: status line, headers sorted without
/// `date`, body.
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    status: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// Reads the responses to `methods` (one per request, in order) from `s` until it closes.
async fn read_answers<S: AsyncRead + Unpin>(s: &mut S, methods: &[&str]) -> Vec<Answer> {
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut raw))
        .await
        .expect("server did not close in time")
        .unwrap();
    let mut out = Vec::new();
    let mut at = 0;
    for m in methods {
        let Some(end) = raw[at..].windows(4).position(|w| w == b"\r\n\r\n") else {
            break;
        };
        let head = std::str::from_utf8(&raw[at..at + end]).unwrap();
        at += end + 4;
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap().to_owned();
        let mut headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .filter(|(k, _)| k != "date")
            .collect();
        headers.sort();
        let no_body = *m == "HEAD" || status.contains(" 304 ");
        let len = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .map_or(0, |(_, v)| v.parse::<usize>().unwrap());
        let len = if no_body { 0 } else { len };
        let body = raw[at..at + len].to_vec();
        at += len;
        out.push(Answer {
            status,
            headers,
            body,
        });
    }
    assert_eq!(at, raw.len(), "bytes left after the answers");
    out
}

/// Sends `reqs` pipelined in one write (the last one closes) and reads the answers.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    reqs: &[(String, Vec<u8>)],
) -> Vec<Answer> {
    let mut all = Vec::new();
    for (_, r) in reqs {
        all.extend_from_slice(r);
    }
    s.write_all(&all).await.unwrap();
    let methods: Vec<&str> = reqs.iter().map(|(m, _)| m.as_str()).collect();
    read_answers(&mut s, &methods).await
}

fn request(
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, String)],
    close: bool,
) -> Vec<u8> {
    let mut r = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n");
    for (k, v) in headers {
        r.push_str(k);
        r.push_str(": ");
        r.push_str(v);
        r.push_str("\r\n");
    }
    if close {
        r.push_str("Connection: close\r\n");
    }
    r.push_str("\r\n");
    r.into_bytes()
}

const PATHS: &[&str] = &[
    "/",
    "/index.html",
    "/about",
    "/about.html",
    "/about?x=1&y=%20",
    "//about",
    "/docs/",
    "/docs",
    "/style.css",
    "/data.json",
    "/long.html",
    "/big.bin",
    "/mid.bin",
    "/inner-link.html",
    "/escape.txt",
    "/missing",
    "/../etc/passwd",
    "/%2e%2e/x",
    "/.env",
    "/a%20b",
    "/.well-known/acme-challenge/tok",
];

/// Header sets: encodings, conditionals (with the real ETags of a few files), ranges.
fn header_sets(etags: &[String]) -> Vec<Vec<(&'static str, String)>> {
    let mut sets: Vec<Vec<(&'static str, String)>> = vec![
        vec![],
        vec![("Accept-Encoding", "gzip".into())],
        vec![("Accept-Encoding", "br;q=0.5, gzip, zstd;q=0.9".into())],
        vec![("Accept-Encoding", "*".into())],
        vec![("Accept-Encoding", "identity".into())],
        vec![
            ("Accept-Encoding", "zstd".into()),
            ("Accept-Encoding", "br".into()),
        ],
        vec![("Accept-Encoding", "br;q=0, gzip;q=x".into())],
        vec![("If-None-Match", "*".into())],
        vec![("If-None-Match", "\"nope\"".into())],
        vec![("If-Modified-Since", "Thu, 01 Jan 2099 00:00:00 GMT".into())],
        vec![("Range", "bytes=0-3".into())],
        vec![("Connection", "keep-alive".into())],
    ];
    for e in etags {
        sets.push(vec![("If-None-Match", e.clone())]);
        sets.push(vec![("If-None-Match", format!("W/{e}, \"other\""))]);
        sets.push(vec![
            ("If-None-Match", e.clone()),
            ("Accept-Encoding", "gzip, br".into()),
        ]);
    }
    sets
}

/// Every (method, request) the comparison sends to `host`.
fn requests(host: &str, etags: &[String], close: bool) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for method in ["GET", "HEAD"] {
        for path in PATHS {
            for hs in header_sets(etags) {
                out.push((method.to_owned(), request(method, host, path, &hs, close)));
            }
        }
    }
    out.push(("POST".into(), request("POST", host, "/", &[], close)));
    out
}

/// The ETags a few files are served with, identity and compressed, from `addr` over HTTP.
async fn etags(addr: SocketAddr, host: &str) -> Vec<String> {
    let mut tags = Vec::new();
    for (path, ae) in [
        ("/", ""),
        ("/long.html", "br"),
        ("/style.css", "gzip"),
        ("/data.json", ""),
    ] {
        let r = common::get(addr, host, path, &[("Accept-Encoding", ae)]).await;
        tags.push(r.header("etag").unwrap().to_owned());
    }
    tags
}

#[tokio::test]
async fn fast_path_answers_like_hyper() {
    let srv = start(|c| c.https_redirect_port = Some(8443)).await;
    let (slow_http, slow_https, slow) =
        slow_twin(&srv, ServerConfig::default().header_read_timeout_ms).await;
    let tags = etags(srv.http, "site.test").await;
    // The files the fast path serves from memory are loaded by the first requests; a
    // second pass sees them cached.
    for pass in 0..2 {
        // Over HTTP: hosts with and without a certificate (redirected / served), unknown,
        // and host spellings that normalise.
        for host in [
            "site.test",
            "WWW.Site.Test.",
            "site.test:80",
            "example.test",
            "plain.test",
            "unknown.test",
            "bad host",
        ] {
            let reqs = requests(host, &tags, false);
            // One request per connection (each closes), 64 at a time...
            for chunk in reqs.chunks(64) {
                let want = each_alone(slow_http, chunk).await;
                let got = each_alone(srv.http, chunk).await;
                compare(&want, &got, host, chunk);
            }
            // ...and all pipelined on one connection, the last one closing.
            let mut piped = reqs.clone();
            if let Some(last) = piped.last_mut() {
                last.1 = close(&last.1);
            }
            let fast_only: Vec<_> = piped
                .iter()
                .filter(|(m, r)| m != "POST" && !String::from_utf8_lossy(r).contains("Range"))
                .cloned()
                .collect();
            for set in [&piped, &fast_only] {
                let mut set = set.clone();
                if let Some(last) = set.last_mut() {
                    last.1 = close(&last.1);
                }
                let want = exchange(TcpStream::connect(slow_http).await.unwrap(), &set).await;
                let got = exchange(TcpStream::connect(srv.http).await.unwrap(), &set).await;
                compare(&want, &got, host, &set);
            }
        }
        // Over HTTPS with ALPN http/1.1 and without ALPN, SNI = host.
        for (sni, host) in [
            ("example.test", "example.test"),
            ("www.example.test", "www.example.test"),
            ("www.example.test", "example.test"),
            ("a.wild.test", "a.wild.test"),
            ("example.test", "site.test"),
        ] {
            for alpn in [&[&b"http/1.1"[..]][..], &[]] {
                let cfg = srv.ca.client_config(alpn);
                let mut set = requests(host, &tags, false);
                if let Some(last) = set.last_mut() {
                    last.1 = close(&last.1);
                }
                let s = tls_connect(slow_https, sni, cfg.clone()).await.unwrap();
                let want = exchange(s, &set).await;
                let s = tls_connect(srv.https, sni, cfg).await.unwrap();
                let got = exchange(s, &set).await;
                compare(&want, &got, host, &set);
            }
        }
        assert!(pass > 0 || srv.server.fast_path_answers() > 0);
    }
    assert_eq!(slow.fast_path_answers(), 0);
    let fast = srv.server.fast_path_answers();
    assert!(
        fast > 2000,
        "the fast path answered only {fast} requests: the comparison did not exercise it"
    );
}

/// Sends each request on its own connection, all at once; the answers in request order.
async fn each_alone(addr: SocketAddr, reqs: &[(String, Vec<u8>)]) -> Vec<Answer> {
    let mut set = tokio::task::JoinSet::new();
    for (i, (m, r)) in reqs.iter().enumerate() {
        let one = [(m.clone(), close(r))];
        set.spawn(async move {
            let s = TcpStream::connect(addr).await.unwrap();
            (i, exchange(s, &one).await)
        });
    }
    let mut out: Vec<(usize, Vec<Answer>)> = set.join_all().await;
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().flat_map(|(_, a)| a).collect()
}

/// `r` with `Connection: close` added.
fn close(r: &[u8]) -> Vec<u8> {
    let mut r = r.to_vec();
    if !String::from_utf8_lossy(&r).contains("Connection: close") {
        r.truncate(r.len() - 2);
        r.extend_from_slice(b"Connection: close\r\n\r\n");
    }
    r
}

fn compare(want: &[Answer], got: &[Answer], host: &str, reqs: &[(String, Vec<u8>)]) {
    assert_eq!(want.len(), reqs.len(), "slow path answered fewer requests");
    for (i, (w, g)) in want.iter().zip(got).enumerate() {
        assert!(
            w == g,
            "host {host}, request {i}:\n{}\nslow: {} {:?} ({} bytes)\nfast: {} {:?} ({} bytes)",
            String::from_utf8_lossy(&reqs[i].1),
            w.status,
            w.headers,
            w.body.len(),
            g.status,
            g.headers,
            g.body.len()
        );
    }
    assert_eq!(want.len(), got.len(), "host {host}: answer counts differ");
}

/// Raw bytes as a client might send them: a few requests the fast path answers, then
/// something it must decline (garbage, a mutated request, a body, a partial head) and
/// maybe more requests behind it.
fn raw_input() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
    use proptest::prelude::*;
    let good = prop::sample::select(vec![
        "GET / HTTP/1.1\r\nHost: site.test\r\n\r\n",
        "HEAD /about HTTP/1.1\r\nHost: www.site.test\r\nAccept-Encoding: br\r\n\r\n",
        "GET /long.html?q HTTP/1.1\r\nhost: SITE.test:80\r\nAccept-Encoding: gzip, zstd\r\n\r\n",
        "GET /style.css HTTP/1.1\r\nHost: site.test\r\nIf-None-Match: *\r\n\r\n",
        "GET /missing HTTP/1.1\r\nHost: site.test\r\n\r\n",
        "POST /about HTTP/1.1\r\nHost: site.test\r\nContent-Length: 3\r\n\r\nabc",
    ]);
    let tail = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64),
        (good.clone(), any::<prop::sample::Index>(), any::<u8>()).prop_map(|(g, i, b)| {
            let mut v = g.as_bytes().to_vec();
            let at = i.index(v.len());
            v[at] = b;
            v
        }),
        (good.clone(), any::<prop::sample::Index>()).prop_map(|(g, i)| {
            let v = g.as_bytes();
            v[..i.index(v.len())].to_vec()
        }),
    ];
    (
        prop::collection::vec(good.clone(), 0..4),
        tail,
        prop::collection::vec(good, 0..3),
    )
        .prop_map(|(before, tail, after)| {
            let mut v = Vec::new();
            for g in before {
                v.extend_from_slice(g.as_bytes());
            }
            v.extend_from_slice(&tail);
            for g in after {
                v.extend_from_slice(g.as_bytes());
            }
            // Ends the connection unless the tail left a head open (then the header read
            // timeout does).
            v.extend_from_slice(b"GET / HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n");
            v
        })
}

/// Sends `raw` and returns everything the server wrote until it closed, `date` lines
/// blanked. (The client does not half-close: hyper drops the answers of a client that
/// does, the fast path does not.)
async fn raw_exchange(addr: SocketAddr, raw: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(raw).await.unwrap();
    let mut out = Vec::new();
    // A reset (hyper on some malformed input) ends the answer like a close.
    let _ = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out))
        .await
        .expect("server did not close in time");
    let mut clean = Vec::new();
    for line in out.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b"date: ") {
            clean.extend_from_slice(b"date: -\r\n");
        } else {
            clean.extend_from_slice(line);
        }
    }
    clean
}

#[test]
fn whatever_the_fast_path_declines_reaches_hyper_intact() {
    use proptest::prelude::*;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (srv, slow_http, slow) = rt.block_on(async {
        let srv = start(|c| {
            c.https_redirect_port = Some(8443);
            c.header_read_timeout_ms = 300;
        })
        .await;
        let (http, _, slow) = slow_twin(&srv, 300).await;
        (srv, http, slow)
    });
    let cfg = ProptestConfig {
        cases: 200,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(cfg, |(raw in raw_input())| {
        let (want, got) = rt.block_on(async {
            tokio::join!(raw_exchange(slow_http, &raw), raw_exchange(srv.http, &raw))
        });
        prop_assert!(
            want == got,
            "input {:?}\nslow: {:?}\nfast: {:?}",
            String::from_utf8_lossy(&raw),
            String::from_utf8_lossy(&want),
            String::from_utf8_lossy(&got)
        );
    });
    assert_eq!(slow.fast_path_answers(), 0);
    let fast = srv.server.fast_path_answers();
    assert!(fast > 100);
}

/// A client that pipelines requests for a file held in memory and never reads is dropped
/// after the write timeout, as on the slow path: the fast path writes through the same
/// timeout, whether it writes bodies from memory (1 MiB) or with `sendfile` (100 KB).
#[tokio::test]
async fn a_client_that_stops_reading_on_the_fast_path_is_dropped() {
    // 64 x 1 MiB or 200 x 100 KB: far more than loopback socket buffers hold.
    stalled_reader("/big.bin", 64).await;
    stalled_reader("/mid.bin", 200).await;
}

async fn stalled_reader(path: &str, n: usize) {
    let s = start(|c| {
        c.max_connections = 1;
        c.write_timeout_ms = 300;
    })
    .await;
    // Warm the cache so the pipelined requests are all fast-path answers.
    assert_eq!(
        common::get(s.http, "site.test", path, &[]).await.status,
        200
    );
    let before = s.server.fast_path_answers();
    let mut stalled = TcpStream::connect(s.http).await.unwrap();
    let one = format!("GET {path} HTTP/1.1\r\nHost: site.test\r\n\r\n");
    stalled.write_all(one.repeat(n).as_bytes()).await.unwrap();
    let started = std::time::Instant::now();
    let deadline = started + Duration::from_secs(20);
    loop {
        let req = common::request("GET", "site.test", "/about", &[]);
        let out = common::try_exchange(s.http, &req).await;
        if out.is_some_and(|o| o.starts_with(b"HTTP/1.1 200")) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "stalled reader kept the only slot"
        );
        tokio::task::yield_now().await;
    }
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "slot freed before the write timeout"
    );
    assert!(s.server.fast_path_answers() > before);
    drop(stalled);
}

/// Pipelined requests for a large file held in memory: the answers start leaving once
/// 256 KiB are pending, bodies queued by reference counted, instead of after every request
/// already read has been answered (which held each connection's whole batch at once).
#[tokio::test]
async fn pipelined_large_answers_leave_before_the_batch_is_made() {
    // 150 requests in 6.3 KB: one read of the server's, 150 MiB of answers.
    const N: u64 = 150;
    let s = start(|_| {}).await;
    // Warm the cache so the pipelined requests are all fast-path answers.
    let warm = common::get(s.http, "site.test", "/big.bin", &[]).await;
    assert_eq!(warm.status, 200);
    let before = s.server.fast_path_answers();
    // A small receive window, so the server's socket buffers fill after a few answers.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(16 * 1024).unwrap();
    let mut c = sock.connect(s.http).await.unwrap();
    let one = b"GET /big.bin HTTP/1.1\r\nHost: site.test\r\n\r\n";
    c.write_all(&one.repeat(150)).await.unwrap();
    let mut head = [0u8; 17];
    tokio::time::timeout(Duration::from_secs(20), c.read_exact(&mut head))
        .await
        .expect("no answer in time")
        .unwrap();
    assert_eq!(&head, b"HTTP/1.1 200 OK\r\n");
    let made = s.server.fast_path_answers() - before;
    assert!(
        made < N / 4,
        "{made} of {N} answers of 1 MiB were made before the first one left"
    );
}

/// Bodies of 64 KiB and more held in memory go out with `sendfile` from sealed memfds
/// over plain HTTP; each memfd is a file descriptor, so at most 256 are open at once
/// (beyond, bodies are written from memory) and a site of many large files cannot take
/// the descriptors that connections need. The answers are the files' bytes either way.
#[tokio::test]
async fn large_bodies_use_a_bounded_number_of_memfds() {
    let s = start(|_| {}).await;
    let files: Vec<(String, Vec<u8>)> = (0..300u32)
        .map(|i| {
            let body: Vec<u8> = (0..70_000u32)
                .map(|j| (j.wrapping_mul(31) ^ i) as u8)
                .collect();
            (format!("f{i}.bin"), body)
        })
        .collect();
    for (name, body) in &files {
        std::fs::write(s.tree.root().join(name), body).unwrap();
    }
    let before = s.server.fast_path_answers();
    for (name, body) in &files {
        let r = common::get(s.http, "site.test", &format!("/{name}"), &[]).await;
        assert_eq!(r.status, 200, "{name}");
        assert!(&r.body == body, "{name}: wrong bytes");
    }
    assert_eq!(s.server.fast_path_answers() - before, 300);
    let memfds = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|l| l.to_string_lossy().contains("memfd:makiatto-body"))
        .count();
    assert!(memfds > 0, "no body was given a memfd");
    assert!(memfds <= 256, "{memfds} memfds open");
}
