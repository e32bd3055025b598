use std::path::Path;

use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::UnixStream;

use super::*;
use crate::manifest;
use crate::plan::Plan;
use crate::project::Project;
use crate::store::Options;
use crate::store::cluster;

const KEY: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";

/// Sends one request over a fresh connection; returns the status and the JSON answer.
async fn call(socket: &Path, method: Method, path: &str, body: Vec<u8>) -> (StatusCode, Value) {
    let stream = UnixStream::connect(socket).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, "makiatto")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_over_a_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("run/admin.sock");
    let store =
        Arc::new(Store::open(dir.path().join("db"), &cluster::SCHEMA, Options::default()).unwrap());
    let state = Arc::new(AdminState {
        store: Arc::clone(&store),
        blobs: Arc::new(BlobStore::open(dir.path().join("blobs")).unwrap()),
        mesh_cidr: "10.44.44.0/24".parse().unwrap(),
        mesh_port: 51880,
        membership: None,
        locator: Some(Arc::new(makiatto_dns::StaticLocator::new().with(
            "1.1.1.0".parse().unwrap(),
            24,
            makiatto_dns::GeoPoint::new(-33.87, 151.21),
        ))),
    });
    let listener = bind(&socket).unwrap();
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, SOCKET_MODE);
    // A regular file in the way is refused, never deleted.
    let file = dir.path().join("not-a-socket");
    std::fs::write(&file, "keep").unwrap();
    assert!(bind(&file).is_err());
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, state, async {
        let _ = stopped.await;
    }));

    let (status, body) = call(&socket, Method::GET, "/v1/version", Vec::new()).await;
    assert_eq!(
        (status, body["version"].as_str()),
        (StatusCode::OK, Some(crate::VERSION))
    );

    // A site and its deployment rows.
    std::fs::create_dir_all(dir.path().join("site")).unwrap();
    std::fs::write(dir.path().join("site/index.html"), "hello").unwrap();
    let text =
        "[[domain]]\nname = \"example.com\"\npath = \"site\"\naliases = [\"www.example.com\"]\n";
    let project = Project::parse(Path::new("makiatto.toml"), text, dir.path()).unwrap();
    let plan = Plan::build(&project, &manifest::Options::default(), &|_, _| {}).unwrap();
    let rows = plan.domains[0].rows("d1", 1, "test").unwrap();
    let rows_json = serde_json::to_vec(&rows).unwrap();
    let hash = BlobHash::of(b"hello");

    let missing = serde_json::to_vec(&MissingRequest { hashes: vec![hash] }).unwrap();
    let (status, body) = call(&socket, Method::POST, "/v1/blobs/missing", missing.clone()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["missing"][0].as_str(), Some(hash.to_string().as_str()));

    let (status, body) = call(&socket, Method::POST, "/v1/deployments", rows_json.clone()).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["missing"].as_array().map(Vec::len), Some(1));

    let blob_path = format!("/v1/blobs/{hash}");
    let (status, _) = call(&socket, Method::PUT, &blob_path, b"tampered".to_vec()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, body) = call(&socket, Method::PUT, &blob_path, b"hello".to_vec()).await;
    assert_eq!((status, body["size"].as_u64()), (StatusCode::OK, Some(5)));
    // A larger blob crosses the socket in many chunks.
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let big_hash = BlobHash::of(&big);
    let (status, body) = call(&socket, Method::PUT, &format!("/v1/blobs/{big_hash}"), big).await;
    assert_eq!(
        (status, body["size"].as_u64()),
        (StatusCode::OK, Some(3_000_000)),
        "{body}"
    );
    let (_, body) = call(&socket, Method::POST, "/v1/blobs/missing", missing).await;
    assert_eq!(body["missing"].as_array().map(Vec::len), Some(0));

    let (status, body) = call(&socket, Method::POST, "/v1/deployments", rows_json).await;
    assert_eq!(
        (status, body["id"].as_str()),
        (StatusCode::CREATED, Some("d1")),
        "{body}"
    );
    let (status, body) = call(
        &socket,
        Method::GET,
        "/v1/domains/example.com/deployments",
        Vec::new(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body[0]["id"].as_str(), Some("d1"));
    // `maki sync` creates and activates in one step.
    assert_eq!(body[0]["active"].as_bool(), Some(true));

    // Aliases per domain, and where the node's locator places an address (`maki health`).
    let (status, body) = call(
        &socket,
        Method::GET,
        "/v1/domains/example.com/aliases",
        Vec::new(),
    )
    .await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, serde_json::json!(["www.example.com"]))
    );
    let (status, _) = call(
        &socket,
        Method::GET,
        "/v1/domains/nope.example/aliases",
        Vec::new(),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = call(&socket, Method::GET, "/v1/geo/1.1.1.7", Vec::new()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["location"]["latitude"].as_f64(), Some(-33.87));
    let (_, body) = call(&socket, Method::GET, "/v1/geo/8.8.8.8", Vec::new()).await;
    assert!(body["location"].is_null(), "{body}");
    let (status, _) = call(&socket, Method::GET, "/v1/geo/not-an-ip", Vec::new()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // Certificates: names and validity, never the key.
    let cert = cluster::certificates::Certificate {
        id: "ab".repeat(32),
        domain: "example.com".into(),
        names: vec!["example.com".into(), "www.example.com".into()],
        bundle: cluster::certificates::Bundle {
            chain_pem: "CHAIN".into(),
            key_pem: "SECRET KEY".into(),
        },
        not_before_ms: 1,
        not_after_ms: 2,
        created_ms: 1,
    };
    store
        .write(|tx| cluster::certificates::insert(tx, &cert))
        .unwrap();
    let (status, body) = call(&socket, Method::GET, "/v1/certificates", Vec::new()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body[0]["names"][1].as_str(), Some("www.example.com"));
    assert_eq!(body[0]["not_after_ms"].as_i64(), Some(2));
    assert!(!body.to_string().contains("SECRET"), "{body}");

    let rollback = |id: &str| {
        serde_json::to_vec(&RollbackRequest {
            deployment: Some(id.into()),
        })
        .unwrap()
    };
    let (status, body) = call(
        &socket,
        Method::POST,
        "/v1/domains/example.com/rollback",
        rollback("d1"),
    )
    .await;
    assert_eq!(
        (status, body["active"].as_str()),
        (StatusCode::OK, Some("d1"))
    );
    let (status, _) = call(
        &socket,
        Method::POST,
        "/v1/domains/example.com/rollback",
        rollback("zz"),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = call(
        &socket,
        Method::POST,
        "/v1/domains/example.com/rollback",
        b"{}".to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "nothing older than d1");

    let (status, _) = call(
        &socket,
        Method::POST,
        "/v1/deployments",
        b"{not json".to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = call(&socket, Method::GET, "/v1/nothing", Vec::new()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = call(&socket, Method::PUT, "/v1/blobs/not-a-hash", Vec::new()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // External peers: added with the lowest free address, listed, configured, removed.
    let node = cluster::nodes::Node {
        name: "vector".into(),
        wg_public_key: KEY.into(),
        wg_endpoint: String::new(),
        mesh_address: "10.44.44.1".into(),
        ipv4: "203.0.113.1".into(),
        ipv6: None,
        latitude: 0.0,
        longitude: 0.0,
        is_nameserver: true,
        site_id: String::new(),
        created_ms: 0,
    };
    store.write(|tx| cluster::nodes::upsert(tx, &node)).unwrap();
    let new =
        serde_json::json!({ "name": "o11y", "wg_public_key": KEY, "endpoint": "198.51.100.7" });
    let (status, body) = call(
        &socket,
        Method::POST,
        "/v1/peers",
        serde_json::to_vec(&new).unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["mesh_address"].as_str()),
        (StatusCode::CREATED, Some("10.44.44.2")),
        "{body}"
    );
    let bad = serde_json::json!({ "name": "x", "wg_public_key": "nope", "endpoint": null });
    let (status, _) = call(
        &socket,
        Method::POST,
        "/v1/peers",
        serde_json::to_vec(&bad).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (_, body) = call(&socket, Method::GET, "/v1/peers", Vec::new()).await;
    assert_eq!(body.as_array().map(Vec::len), Some(1));
    let (status, body) = call(&socket, Method::GET, "/v1/peers/o11y/wg-config", Vec::new()).await;
    let config = body["config"].as_str().unwrap_or_default();
    assert_eq!(status, StatusCode::OK);
    assert!(
        config.contains("Address = 10.44.44.2/32")
            && config.contains("Endpoint = 203.0.113.1:51880"),
        "{config}"
    );
    let (status, _) = call(&socket, Method::DELETE, "/v1/peers/o11y", Vec::new()).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = call(&socket, Method::DELETE, "/v1/peers/o11y", Vec::new()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_uploads_only_missing_blobs_through_the_client() {
    use std::sync::Mutex;

    use crate::admin::client::{Client, ClientError};
    use crate::deploy::{UploadProgress, push};

    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("admin.sock");
    let state = Arc::new(AdminState {
        store: Arc::new(
            Store::open(dir.path().join("db"), &cluster::SCHEMA, Options::default()).unwrap(),
        ),
        blobs: Arc::new(BlobStore::open(dir.path().join("blobs")).unwrap()),
        mesh_cidr: "10.44.44.0/24".parse().unwrap(),
        mesh_port: 51880,
        membership: None,
        locator: None,
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(bind(&socket).unwrap(), state, async {
        let _ = stopped.await;
    }));
    let client = Client::new(&socket);
    assert_eq!(client.version().await.unwrap(), crate::VERSION);

    std::fs::create_dir_all(dir.path().join("site")).unwrap();
    std::fs::write(dir.path().join("site/index.html"), "hello").unwrap();
    std::fs::write(dir.path().join("site/copy.html"), "hello").unwrap();
    std::fs::write(dir.path().join("site/a.css"), "body{}").unwrap();
    let text = "[[domain]]\nname = \"example.com\"\npath = \"site\"\n";
    let project = Project::parse(Path::new("makiatto.toml"), text, dir.path()).unwrap();
    let build = || Plan::build(&project, &manifest::Options::default(), &|_, _| {}).unwrap();

    let seen = Mutex::new(Vec::new());
    let record = |p: UploadProgress| seen.lock().unwrap().push(p);
    push(&client, &build().domains[0], "d1", 1, "test", &record)
        .await
        .unwrap();
    let last = *seen.lock().unwrap().last().unwrap();
    assert_eq!(
        (last.blobs_done, last.blobs_total, last.bytes_done),
        (2, 2, 11),
        "two distinct blobs"
    );

    // A second deploy with one changed file uploads that file only.
    std::fs::write(dir.path().join("site/a.css"), "body{color:red}").unwrap();
    seen.lock().unwrap().clear();
    push(&client, &build().domains[0], "d2", 2, "test", &record)
        .await
        .unwrap();
    let last = *seen.lock().unwrap().last().unwrap();
    assert_eq!((last.blobs_done, last.bytes_done), (1, 15));

    let list = client.deployments("example.com").await.unwrap();
    assert_eq!(
        list.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
        ["d2", "d1"]
    );
    assert_eq!(
        client.rollback("example.com", Some("d2")).await.unwrap(),
        "d2"
    );
    assert_eq!(client.rollback("example.com", None).await.unwrap(), "d1");
    match client.rollback("example.com", Some("nope")).await {
        Err(ClientError::Refused { status: 404, .. }) => {}
        other => panic!("{other:?}"),
    }
    let peer = NewPeer {
        name: "o11y".into(),
        wg_public_key: KEY.into(),
        endpoint: None,
        wg_address: None,
    };
    assert_eq!(
        client.add_peer(&peer).await.unwrap().mesh_address,
        "10.44.44.1"
    );
    assert_eq!(client.peers().await.unwrap().len(), 1);
    assert!(matches!(
        client.wg_config("o11y").await,
        Err(ClientError::Refused { status: 409, .. })
    ));
    client.remove_peer("o11y").await.unwrap();

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(
        client.version().await,
        Err(ClientError::Connect { .. })
    ));
}
