//! Static serving rules over plain HTTP, checked against a running server.

mod common;

use common::{SECRET, big_content, get, raw, request, start};
use makiatto_http::{Site, SiteSettings};

const H: &str = "site.test";

#[tokio::test]
async fn index_pretty_urls_and_types() {
    let s = start(|_| {}).await;
    let r = get(s.http, H, "/", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "<h1>home</h1>\n");
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    assert_eq!(
        r.header("cache-control"),
        Some("public, max-age=0, must-revalidate")
    );
    let etag = r.header("etag").unwrap();
    assert!(
        etag.starts_with('"') && !etag.starts_with("W/") && etag.len() == 34,
        "{etag}"
    );

    assert_eq!(
        get(s.http, H, "/about", &[]).await.text(),
        "<h1>about</h1>\n"
    );
    assert_eq!(
        get(s.http, H, "/about.html", &[]).await.text(),
        "<h1>about</h1>\n"
    );
    assert_eq!(get(s.http, H, "/docs", &[]).await.text(), "<h1>docs</h1>\n");
    assert_eq!(
        get(s.http, H, "/docs/", &[]).await.text(),
        "<h1>docs</h1>\n"
    );
    // A symlink that stays inside the root is followed.
    assert_eq!(
        get(s.http, H, "/inner-link.html", &[]).await.text(),
        "<h1>about</h1>\n"
    );

    let css = get(s.http, H, "/style.css", &[]).await;
    assert_eq!(css.header("content-type"), Some("text/css; charset=utf-8"));
    assert_eq!(css.header("cache-control"), Some("public, max-age=3600"));
    let json = get(s.http, H, "/data.json", &[]).await;
    assert_eq!(
        json.header("content-type"),
        Some("application/json; charset=utf-8")
    );
}

#[tokio::test]
async fn hosts_are_normalised_and_aliases_resolve() {
    let s = start(|_| {}).await;
    for host in [
        "SITE.test",
        "site.test.",
        "site.test:8080",
        "www.site.test",
        "WWW.Site.Test.:1",
    ] {
        let r = get(s.http, host, "/", &[]).await;
        assert_eq!(
            (r.status, r.text().as_str()),
            (200, "<h1>home</h1>\n"),
            "host {host}"
        );
    }
}

#[tokio::test]
async fn unknown_or_missing_host() {
    let s = start(|_| {}).await;
    let r = get(s.http, "other.test", "/", &[]).await;
    assert_eq!(r.status, 404);
    assert!(!r.text().contains("home"));
    let r = raw(s.http, b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    assert_eq!(r.status, 400);
    let r = get(s.http, "bad host!", "/", &[]).await;
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn not_found_uses_site_404_page() {
    let s = start(|_| {}).await;
    let r = get(s.http, H, "/nope", &[]).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.text(), "<h1>custom not found</h1>\n");
    let r = get(s.http, "plain.test", "/nope", &[]).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.text(), "not found\n");
}

#[tokio::test]
async fn traversal_never_leaves_the_root() {
    let s = start(|_| {}).await;
    let attempts: &[&[u8]] = &[
        b"GET /../outside/secret.txt HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n",
        b"GET /docs/../../outside/secret.txt HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n",
        b"GET /%2e%2e/outside/secret.txt HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n",
        b"GET /%2E%2E%2Foutside%2Fsecret.txt HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n",
        b"GET /docs/..%2f..%2foutside/secret.txt HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n",
        b"GET /..\\outside\\secret.txt HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n",
        b"GET /..%5coutside%5csecret.txt HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n",
        b"GET /index.html%00.txt HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n",
        b"GET /escape.txt HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n",
        b"GET /linkdir/secret.txt HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n",
        b"GET /linkdir/../outside/secret.txt HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n",
        b"GET http://site.test/../outside/secret.txt HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n",
        b"GET //outside/secret.txt HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n",
        b"GET /%252e%252e/outside/secret.txt HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n",
        b"GET /../outside/secret.txt HTTP/1.1\r\nHost: ../outside\r\nConnection: close\r\n\r\n",
        b"GET /secret.txt HTTP/1.1\r\nHost: ..\r\nConnection: close\r\n\r\n",
    ];
    for a in attempts {
        let s2 = tokio::net::TcpStream::connect(s.http).await.unwrap();
        let out = common::exchange(s2, a).await;
        let text = String::from_utf8_lossy(&out);
        assert!(
            !text.contains(SECRET),
            "leaked through {:?}",
            String::from_utf8_lossy(a)
        );
        let status: u16 = text
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        assert!(
            status == 400 || status == 404,
            "{:?} -> {status}",
            String::from_utf8_lossy(a)
        );
    }
}

#[tokio::test]
async fn conditional_requests() {
    let s = start(|_| {}).await;
    let r = get(s.http, H, "/about", &[]).await;
    let etag = r.header("etag").unwrap().to_owned();
    let lm = r.header("last-modified").unwrap().to_owned();

    let r = get(s.http, H, "/about", &[("If-None-Match", &etag)]).await;
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());
    assert_eq!(r.header("etag"), Some(etag.as_str()));
    let weak = format!("\"x\", W/{etag}");
    assert_eq!(
        get(s.http, H, "/about", &[("If-None-Match", &weak)])
            .await
            .status,
        304
    );
    assert_eq!(
        get(s.http, H, "/about", &[("If-None-Match", "\"other\"")])
            .await
            .status,
        200
    );
    assert_eq!(
        get(s.http, H, "/about", &[("If-Modified-Since", &lm)])
            .await
            .status,
        304
    );
    let old = "Mon, 01 Jan 2001 00:00:00 GMT";
    assert_eq!(
        get(s.http, H, "/about", &[("If-Modified-Since", old)])
            .await
            .status,
        200
    );
    // If-None-Match wins over If-Modified-Since.
    let r = get(
        s.http,
        H,
        "/about",
        &[("If-None-Match", "\"other\""), ("If-Modified-Since", &lm)],
    )
    .await;
    assert_eq!(r.status, 200);

    // A changed file gets a new ETag (the cache revalidates: revalidate_ms = 0 here).
    common::write(&s.tree.root().join("about.html"), b"<h1>about v2</h1>\n");
    let r = get(s.http, H, "/about", &[("If-None-Match", &etag)]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "<h1>about v2</h1>\n");
    assert_ne!(r.header("etag"), Some(etag.as_str()));
}

#[tokio::test]
async fn ranges() {
    let s = start(|_| {}).await;
    let full = big_content();
    let r = get(s.http, H, "/big.bin", &[("Range", "bytes=10-19")]).await;
    assert_eq!(r.status, 206);
    assert_eq!(r.body, &full[10..20]);
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes 10-19/{}", full.len()).as_str())
    );
    let r = get(s.http, H, "/big.bin", &[("Range", "bytes=-5")]).await;
    assert_eq!(
        (r.status, r.body.as_slice()),
        (206, &full[full.len() - 5..])
    );
    let r = get(s.http, H, "/big.bin", &[("Range", "bytes=99999999-")]).await;
    assert_eq!(r.status, 416);
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes */{}", full.len()).as_str())
    );

    let etag = get(s.http, H, "/big.bin", &[])
        .await
        .header("etag")
        .unwrap()
        .to_owned();
    let r = get(
        s.http,
        H,
        "/big.bin",
        &[("Range", "bytes=0-3"), ("If-Range", &etag)],
    )
    .await;
    assert_eq!((r.status, r.body.as_slice()), (206, &full[..4]));
    let r = get(
        s.http,
        H,
        "/big.bin",
        &[("Range", "bytes=0-3"), ("If-Range", "\"stale\"")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), full.len());
}

#[tokio::test]
async fn large_files_stream_from_disk() {
    // Nothing above 4 KiB is held in memory: big.bin is streamed.
    let s = start(|c| c.memory_file_max_bytes = 4096).await;
    let full = big_content();
    let r = get(s.http, H, "/big.bin", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-length"),
        Some(full.len().to_string().as_str())
    );
    assert!(r.body == full, "streamed body differs");
    let r = get(s.http, H, "/big.bin", &[("Range", "bytes=500000-700000")]).await;
    assert_eq!(
        (r.status, r.body.as_slice()),
        (206, &full[500_000..=700_000])
    );
    // The ETag is the same whether the file was hashed in memory or streamed.
    let s2 = start(|_| {}).await;
    assert_eq!(
        get(s.http, H, "/big.bin", &[]).await.header("etag"),
        get(s2.http, H, "/big.bin", &[]).await.header("etag")
    );
}

#[tokio::test]
async fn head_and_methods() {
    let s = start(|_| {}).await;
    let r = raw(s.http, &request("HEAD", H, "/about", &[])).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("15"));
    assert!(r.body.is_empty());
    let r = raw(
        s.http,
        &request("POST", H, "/about", &[("Content-Length", "0")]),
    )
    .await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
}

#[tokio::test]
async fn precompressed_variants() {
    let s = start(|_| {}).await;
    let r = get(
        s.http,
        H,
        "/style.css",
        &[("Accept-Encoding", "gzip, deflate, br")],
    )
    .await;
    assert_eq!(r.text(), "BROTLI-BYTES");
    assert_eq!(r.header("content-encoding"), Some("br"));
    assert_eq!(r.header("vary"), Some("Accept-Encoding"));
    assert_eq!(r.header("content-type"), Some("text/css; charset=utf-8"));
    let br_tag = r.header("etag").unwrap().to_owned();

    let r = get(s.http, H, "/style.css", &[("Accept-Encoding", "gzip")]).await;
    assert_eq!(r.text(), "GZIP-BYTES");
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert_ne!(r.header("etag"), Some(br_tag.as_str()));

    let r = get(
        s.http,
        H,
        "/style.css",
        &[("Accept-Encoding", "br;q=0, gzip;q=0")],
    )
    .await;
    assert_eq!(r.text(), "body { color: red }\n");
    assert_eq!(r.header("content-encoding"), None);
    assert_eq!(r.header("vary"), Some("Accept-Encoding"));

    let r = get(s.http, H, "/style.css", &[]).await;
    assert_eq!(r.text(), "body { color: red }\n");
    // The br ETag revalidates only the br representation.
    let r = get(
        s.http,
        H,
        "/style.css",
        &[("Accept-Encoding", "br"), ("If-None-Match", &br_tag)],
    )
    .await;
    assert_eq!(r.status, 304);
    let r = get(s.http, H, "/style.css", &[("If-None-Match", &br_tag)]).await;
    assert_eq!(r.status, 200);
    // Files too small to compress do not vary.
    let r = get(s.http, H, "/about", &[("Accept-Encoding", "br, gzip")]).await;
    assert_eq!(r.header("vary"), None);
}

fn decode(encoding: &str, body: &[u8]) -> String {
    use std::io::Read;
    let mut plain = String::new();
    match encoding {
        "br" => brotli::Decompressor::new(body, 4096)
            .read_to_string(&mut plain)
            .map(|_| ()),
        "zstd" => zstd::stream::decode_all(body).map(|v| plain = String::from_utf8(v).unwrap()),
        "gzip" => flate2::read::GzDecoder::new(body)
            .read_to_string(&mut plain)
            .map(|_| ()),
        other => panic!("unexpected encoding {other}"),
    }
    .unwrap_or_else(|e| panic!("{encoding} body does not decode: {e}"));
    plain
}

#[tokio::test]
async fn compressible_files_get_br_zstd_and_gzip_on_first_load() {
    let s = start(|_| {}).await;
    let want = common::long_html();
    let mut etags = vec![];
    for enc in ["br", "zstd", "gzip"] {
        let r = get(s.http, H, "/long.html", &[("Accept-Encoding", enc)]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-encoding"), Some(enc));
        assert_eq!(r.header("vary"), Some("Accept-Encoding"));
        assert!(
            r.body.len() < want.len() / 2,
            "{enc} not compressed: {} bytes",
            r.body.len()
        );
        assert_eq!(decode(enc, &r.body), want);
        etags.push(r.header("etag").unwrap().to_owned());
        // The variant's ETag revalidates that variant.
        let r = get(
            s.http,
            H,
            "/long.html",
            &[
                ("Accept-Encoding", enc),
                ("If-None-Match", &etags[etags.len() - 1]),
            ],
        )
        .await;
        assert_eq!(r.status, 304, "{enc}");
    }
    let r = get(s.http, H, "/long.html", &[]).await;
    assert_eq!(
        (r.header("content-encoding"), r.text()),
        (None, want.clone())
    );
    assert_eq!(r.header("vary"), Some("Accept-Encoding"));
    etags.push(r.header("etag").unwrap().to_owned());
    let mut distinct = etags.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        4,
        "ETags shared between encodings: {etags:?}"
    );

    // q-values first, then br > zstd > gzip among equals.
    for (accept, chosen) in [
        ("gzip, deflate, br, zstd", Some("br")),
        ("gzip, zstd", Some("zstd")),
        ("zstd;q=0.5, gzip", Some("gzip")),
        ("br;q=0.2, zstd;q=0.9, gzip;q=0.9", Some("zstd")),
        ("*;q=0.3, br;q=0", Some("zstd")),
        ("br;q=0, zstd;q=0, gzip;q=0", None),
        ("identity", None),
    ] {
        let r = get(s.http, H, "/long.html", &[("Accept-Encoding", accept)]).await;
        assert_eq!(r.header("content-encoding"), chosen, "{accept}");
    }

    // A range is cut from the identity bytes, whatever the client accepts.
    let r = get(
        s.http,
        H,
        "/long.html",
        &[
            ("Accept-Encoding", "br, zstd, gzip"),
            ("Range", "bytes=3-12"),
        ],
    )
    .await;
    assert_eq!(r.status, 206);
    assert_eq!(r.header("content-encoding"), None);
    assert_eq!(r.text(), want[3..=12]);

    // A real client: curl asks for what it can decode and decodes it.
    let url = format!("http://site.test:{}/long.html", s.http.port());
    let resolve = format!("site.test:{}:127.0.0.1", s.http.port());
    let dir = tempfile::tempdir().unwrap();
    let hdrs = dir.path().join("headers");
    let hdrs = hdrs.to_str().unwrap();
    let (body, code) =
        common::curl(&["--compressed", "-D", hdrs, "--resolve", &resolve, &url]).await;
    assert_eq!(
        (String::from_utf8(body).unwrap(), code.as_str()),
        (want.clone(), "200 1.1")
    );
    let head = std::fs::read_to_string(hdrs).unwrap().to_ascii_lowercase();
    assert!(head.contains("content-encoding: br\r\n"), "{head}");
    for enc in ["br", "zstd"] {
        let (body, code) = common::curl(&[
            "-H",
            &format!("Accept-Encoding: {enc}"),
            "--http2-prior-knowledge",
            "--resolve",
            &resolve,
            &url,
        ])
        .await;
        assert_eq!(code, "200 2");
        assert_eq!(decode(enc, &body), want, "{enc} over HTTP/2");
    }

    // Incompressible types are left alone.
    let r = get(
        s.http,
        H,
        "/big.bin",
        &[("Accept-Encoding", "br, zstd, gzip")],
    )
    .await;
    assert_eq!(r.header("content-encoding"), None);
}

#[tokio::test]
async fn per_site_cache_control_override() {
    let s = start(|_| {}).await;
    let mut site = Site::new("cached.test", s.tree.root());
    site.settings = SiteSettings {
        cache_control: Some(http::HeaderValue::from_static(
            "public, max-age=31536000, immutable",
        )),
    };
    s.sites.insert(site, &[]);
    let r = get(s.http, "cached.test", "/style.css", &[]).await;
    assert_eq!(
        r.header("cache-control"),
        Some("public, max-age=31536000, immutable")
    );
    let r = get(s.http, H, "/style.css", &[]).await;
    assert_eq!(r.header("cache-control"), Some("public, max-age=3600"));
}

#[tokio::test]
async fn curl_http1_and_h2c() {
    let s = start(|_| {}).await;
    let url = format!("http://site.test:{}/about", s.http.port());
    let resolve = format!("site.test:{}:127.0.0.1", s.http.port());
    let (body, code) = common::curl(&["--resolve", &resolve, &url]).await;
    assert_eq!(
        (body.as_slice(), code.as_str()),
        (&b"<h1>about</h1>\n"[..], "200 1.1")
    );
    let (body, code) =
        common::curl(&["--http2-prior-knowledge", "--resolve", &resolve, &url]).await;
    assert_eq!(
        (body.as_slice(), code.as_str()),
        (&b"<h1>about</h1>\n"[..], "200 2")
    );
    let (_, code) = common::curl(&[
        "--resolve",
        &resolve,
        "--path-as-is",
        &format!("http://site.test:{}/../outside/secret.txt", s.http.port()),
    ])
    .await;
    assert_eq!(code, "400 1.1");
}

#[tokio::test]
async fn forwarded_host_only_from_trusted_proxies() {
    let fwd = [
        ("X-Forwarded-Host", "site.test"),
        ("X-Forwarded-Proto", "https"),
    ];
    // Not trusted (the default): the header is ignored, the Host decides.
    let s = start(|_| {}).await;
    assert_eq!(
        get(s.http, "unknown.test", "/about", &fwd).await.status,
        404
    );
    assert_eq!(
        get(
            s.http,
            "example.test",
            "/about",
            &[("X-Forwarded-Proto", "https")]
        )
        .await
        .status,
        308
    );
    // Trusted: the forwarded host is served, and a proxy that terminated TLS is not
    // redirected to HTTPS again.
    let s = start(|c| c.trusted_proxies = vec!["127.0.0.1".parse().unwrap()]).await;
    let r = get(s.http, "unknown.test", "/about", &fwd).await;
    assert_eq!((r.status, r.text().as_str()), (200, "<h1>about</h1>\n"));
    let r = get(
        s.http,
        "proxy.internal",
        "/about",
        &[
            ("X-Forwarded-Host", "example.test"),
            ("X-Forwarded-Proto", "https"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    let r = get(
        s.http,
        "proxy.internal",
        "/about",
        &[("X-Forwarded-Host", "example.test")],
    )
    .await;
    assert_eq!(r.status, 308);
}
