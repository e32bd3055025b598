//! Port 80 rules, TLS with SNI, certificate hot swap, session resumption, HTTP/2.

mod common;

use common::{get, start, tls_connect, tls_get};

#[tokio::test]
async fn port_80_answers_acme_for_every_host() {
    let s = start(|_| {}).await;
    makiatto_http::ChallengeStore::put_http01(&*s.challenges, "tok123", "tok123.thumb").unwrap();
    for host in ["example.test", "unknown.test", "plain.test"] {
        let r = get(s.http, host, "/.well-known/acme-challenge/tok123", &[]).await;
        assert_eq!(
            (r.status, r.text().as_str()),
            (200, "tok123.thumb"),
            "host {host}"
        );
    }
    let r = get(
        s.http,
        "example.test",
        "/.well-known/acme-challenge/missing",
        &[],
    )
    .await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn port_80_redirects_only_hosts_with_a_certificate() {
    let s = start(|_| {}).await;
    let r = get(s.http, "www.example.test", "/docs/?q=1", &[]).await;
    assert_eq!(r.status, 308);
    assert_eq!(
        r.header("location"),
        Some(format!("https://www.example.test:{}/docs/?q=1", s.https.port()).as_str())
    );
    // Wildcard certificate counts too.
    assert_eq!(get(s.http, "a.wild.test", "/", &[]).await.status, 308);
    // No certificate: served over plain HTTP, without HSTS.
    let r = get(s.http, "plain.test", "/", &[]).await;
    assert_eq!((r.status, r.text().as_str()), (200, "plain site\n"));
    assert_eq!(r.header("strict-transport-security"), None);
}

#[tokio::test]
async fn sni_exact_and_wildcard_with_hsts() {
    let s = start(|_| {}).await;
    let r = tls_get(&s, "example.test", "example.test", "/about").await;
    assert_eq!((r.status, r.text().as_str()), (200, "<h1>about</h1>\n"));
    assert_eq!(
        r.header("strict-transport-security"),
        Some("max-age=31536000")
    );
    let r = tls_get(&s, "a.wild.test", "a.wild.test", "/").await;
    assert_eq!((r.status, r.text().as_str()), (200, "<h1>home</h1>\n"));
    // A known SNI but a Host the server does not serve: 421.
    let r = tls_get(&s, "example.test", "unknown.test", "/").await;
    assert_eq!(r.status, 421);
    // A Host served here but not covered by the connection's certificate: 421 too.
    let r = tls_get(&s, "example.test", "plain.test", "/").await;
    assert_eq!(r.status, 421);
    let r = tls_get(&s, "example.test", "a.wild.test", "/").await;
    assert_eq!(r.status, 421);
    // Another name on the same certificate is fine.
    let r = tls_get(&s, "example.test", "www.example.test", "/about").await;
    assert_eq!((r.status, r.text().as_str()), (200, "<h1>about</h1>\n"));
}

#[tokio::test]
async fn unknown_sni_is_refused() {
    let s = start(|_| {}).await;
    let cfg = s.ca.client_config(&[b"http/1.1"]);
    for sni in ["unknown.test", "b.c.wild.test", "wild.test"] {
        let r = tls_connect(s.https, sni, cfg.clone()).await;
        assert!(r.is_err(), "handshake for {sni} should fail");
    }
    // No SNI at all (an IP address as server name): refused as well.
    assert!(tls_connect(s.https, "127.0.0.1", cfg).await.is_err());
}

#[tokio::test]
async fn certificate_hot_swap_reaches_new_connections() {
    let s = start(|_| {}).await;
    let cfg = s.ca.client_config(&[b"http/1.1"]);
    let leaf = |c: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>| {
        c.get_ref().1.peer_certificates().unwrap()[0]
            .as_ref()
            .to_vec()
    };
    let first = tls_connect(s.https, "example.test", cfg.clone())
        .await
        .unwrap();
    let before = leaf(&first);
    s.certs.insert(s.ca.leaf(&["example.test"]));
    let second = tls_connect(s.https, "example.test", cfg.clone())
        .await
        .unwrap();
    let after = leaf(&second);
    assert_ne!(before, after, "new connection must see the new certificate");
    // A name added at runtime is served at once.
    assert!(
        tls_connect(s.https, "late.test", cfg.clone())
            .await
            .is_err()
    );
    s.certs.insert(s.ca.leaf(&["late.test"]));
    assert!(tls_connect(s.https, "late.test", cfg).await.is_ok());
}

#[tokio::test]
async fn sessions_resume() {
    let s = start(|_| {}).await;
    let cfg = s.ca.client_config(&[b"http/1.1"]);
    let c1 = tls_connect(s.https, "example.test", cfg.clone())
        .await
        .unwrap();
    let r = common::exchange(c1, &common::request("GET", "example.test", "/", &[])).await;
    assert!(r.starts_with(b"HTTP/1.1 200"));
    let c2 = tls_connect(s.https, "example.test", cfg).await.unwrap();
    assert_eq!(
        c2.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
}

#[tokio::test]
async fn alpn_h2_and_curl_verifies_chain() {
    let s = start(|_| {}).await;
    let c = tls_connect(
        s.https,
        "example.test",
        s.ca.client_config(&[b"h2", b"http/1.1"]),
    )
    .await
    .unwrap();
    assert_eq!(c.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let ca = s.tree.dir.path().join("ca.pem");
    std::fs::write(&ca, s.ca.root_pem()).unwrap();
    let resolve = format!("example.test:{}:127.0.0.1", s.https.port());
    let url = format!("https://example.test:{}/about", s.https.port());
    let (body, code) = common::curl(&[
        "--http2",
        "--cacert",
        ca.to_str().unwrap(),
        "--resolve",
        &resolve,
        &url,
    ])
    .await;
    assert_eq!(
        (body.as_slice(), code.as_str()),
        (&b"<h1>about</h1>\n"[..], "200 2")
    );
    let (body, code) = common::curl(&[
        "--http1.1",
        "--cacert",
        ca.to_str().unwrap(),
        "--resolve",
        &resolve,
        &url,
    ])
    .await;
    assert_eq!(
        (body.as_slice(), code.as_str()),
        (&b"<h1>about</h1>\n"[..], "200 1.1")
    );
}

#[tokio::test]
async fn expired_certificate_is_not_served_and_never_replaces_a_valid_one() {
    let s = start(|_| {}).await;
    let cfg = s.ca.client_config(&[b"http/1.1"]);
    let good = tls_connect(s.https, "example.test", cfg.clone())
        .await
        .unwrap();
    let good_leaf = good.get_ref().1.peer_certificates().unwrap()[0]
        .as_ref()
        .to_vec();
    s.certs
        .insert(s.ca.expired_leaf(&["example.test", "expired.test"]));
    let again = tls_connect(s.https, "example.test", cfg.clone())
        .await
        .unwrap();
    assert_eq!(
        again.get_ref().1.peer_certificates().unwrap()[0].as_ref(),
        good_leaf.as_slice()
    );
    assert!(tls_connect(s.https, "expired.test", cfg).await.is_err());
}
