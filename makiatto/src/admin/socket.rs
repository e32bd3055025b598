//! The admin API: JSON under `/v1` on a Unix socket (never TCP), reached by `maki` through
//! an SSH-forwarded socket. The socket is created with mode `0660` (root and the makiatto
//! group). Store work runs on the blocking pool.
//!
//! | method and path | body | answer |
//! |---|---|---|
//! | `GET /v1/version` | | `{"version"}` |
//! | `POST /v1/blobs/missing` | `{"hashes": [..]}` | `{"missing": [..]}` |
//! | `PUT /v1/blobs/{hash}` | the blob's bytes | `{"size"}` |
//! | `POST /v1/deployments` | [`DeploymentRows`] | creates and activates it: `201 {"id"}`; `409 {"error", "missing"}` while blobs are missing |
//! | `GET /v1/nodes` | | `[`[`NodeStatus`](super::NodeStatus)`]`: each node's row and latest health report |
//! | `POST /v1/nodes` | [`NewNode`] | `201` the node's row with its mesh address (before it joins) |
//! | `DELETE /v1/nodes/{name}` | | `{}`: removed from the cluster state; `404` when unknown |
//! | `GET /v1/membership` | | [`MembershipAnswer`]: who this node sees alive |
//! | `GET /v1/domains` | | `["example.com", ..]` |
//! | `DELETE /v1/domains/{domain}` | | `{}`: the domain is no longer served; `404` when unknown |
//! | `GET /v1/deployments/{id}/rollout` | | [`Rollout`](crate::deploy::Rollout): `{"active", "waiting", "failed"}` over the healthy nodes |
//! | `GET /v1/domains/{domain}/deployments` | | `[`[`DeploymentSummary`]`]` |
//! | `GET /v1/domains/{domain}/aliases` | | `["www.example.com", ..]`; `404` when unknown |
//! | `GET /v1/certificates` | | `[`[`CertificateSummary`](super::CertificateSummary)`]`: names and validity, newest first (no keys) |
//! | `GET /v1/geo/{ip}` | | [`GeoAnswer`]: where this node's GeoIP data places the address |
//! | `POST /v1/domains/{domain}/rollback` | `{"deployment": id or null}` | `{"active"}` |
//! | `GET /v1/peers` | | `[{"name", "wg_public_key", "endpoint", "mesh_address", "created_ms"}]` |
//! | `POST /v1/peers` | [`NewPeer`] | `201` the peer with its mesh address |
//! | `DELETE /v1/peers/{name}` | | `{}`; `404` when unknown |
//! | `GET /v1/peers/{name}/wg-config` | | `{"config"}`: the wg-quick file |
//!
//! Client mistakes answer 4xx with `{"error"}`; store failures answer a generic 500.

use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::net::UnixListener;
use tokio::task::JoinSet;

use makiatto_dns::GeoLocator;
use makiatto_mesh::membership::MembershipView;
use tokio::sync::watch;

use super::{Admin, AdminError, DeploymentSummary, NewNode, NewPeer};
use crate::config::Ipv4Cidr;
use crate::deploy::{DeployError, DeploymentRows};
use crate::peer::PeerError;
use crate::store::{BlobHash, BlobStore, Store, StoreError};

/// Permission bits of the socket: owner (root) and group (makiatto) only.
pub const SOCKET_MODE: u32 = 0o660;
/// Largest JSON body accepted, bytes.
const MAX_JSON_BYTES: usize = 64 << 20;
/// How long open connections may finish after shutdown.
const DRAIN: Duration = Duration::from_secs(5);
/// Body chunks buffered between the socket and the blob store during an upload.
const UPLOAD_CHUNKS_IN_FLIGHT: usize = 8;
/// Pause after a failed `accept` (e.g. out of file descriptors), so the loop never spins.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What the handlers work on.
#[derive(Debug)]
pub struct AdminState {
    /// The node's store.
    pub store: Arc<Store>,
    /// The node's blobs.
    pub blobs: Arc<BlobStore>,
    /// The mesh network peers get addresses from.
    pub mesh_cidr: Ipv4Cidr,
    /// The WireGuard port of nodes without a recorded endpoint.
    pub mesh_port: u16,
    /// This node's membership view (`GET /v1/membership`), when it runs a mesh.
    pub membership: Option<watch::Receiver<MembershipView>>,
    /// The locator its DNS answers with (`GET /v1/geo/{ip}`), when it serves DNS.
    pub locator: Option<Arc<dyn GeoLocator>>,
}

/// `GET /v1/geo/{ip}` answer: where the node's GeoIP data places an address.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GeoAnswer {
    /// The address asked about.
    pub ip: IpAddr,
    /// Its location; `None` when the node does not know it (or has no GeoIP data).
    pub location: Option<GeoLocation>,
}

/// A position in degrees.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GeoLocation {
    /// Latitude, north positive.
    pub latitude: f64,
    /// Longitude, east positive.
    pub longitude: f64,
}

/// `GET /v1/membership` answer: the members this node sees, by state.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct MembershipAnswer {
    /// Members it sees alive.
    pub alive: Vec<String>,
    /// Members it sees suspect or down.
    pub not_alive: Vec<String>,
}

/// `POST /v1/blobs/missing` body.
#[derive(Debug, Serialize, Deserialize)]
pub struct MissingRequest {
    /// Hashes the client will need.
    pub hashes: Vec<BlobHash>,
}

/// `POST /v1/blobs/missing` answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct MissingResponse {
    /// Those the node lacks.
    pub missing: Vec<BlobHash>,
}

/// `POST /v1/domains/{domain}/rollback` body.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct RollbackRequest {
    /// The deployment to activate; `None`: the one before the active one.
    pub deployment: Option<String>,
}

/// Binds the admin socket at `path` (replacing a stale socket, never another kind of file;
/// creating the directory) with mode [`SOCKET_MODE`].
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        // A socket left by an earlier run: replace it. Anything else is not ours to delete.
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE))?;
    Ok(listener)
}

/// Serves the admin API on `listener` until `shutdown` completes, then lets open
/// connections finish for a few seconds.
pub async fn serve(
    listener: UnixListener,
    state: Arc<AdminState>,
    shutdown: impl Future<Output = ()>,
) {
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                };
                let state = Arc::clone(&state);
                conns.spawn(async move {
                    let service = service_fn(move |req| handle(Arc::clone(&state), req));
                    // A connection that fails only concerns its client.
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    let _ = tokio::time::timeout(DRAIN, async { while conns.join_next().await.is_some() {} }).await;
    conns.abort_all();
}

/// A failed request, mapped to a status in one place.
enum Failure {
    BadRequest(String),
    NotFound,
    Admin(AdminError),
}

impl From<AdminError> for Failure {
    fn from(e: AdminError) -> Self {
        Self::Admin(e)
    }
}

async fn handle(
    state: Arc<AdminState>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(route(state, req).await.unwrap_or_else(|f| failure(&f)))
}

async fn route(
    state: Arc<AdminState>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Failure> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_owned();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (&parts.method, segments.as_slice()) {
        (&Method::GET, ["v1", "version"]) => Ok(json(
            StatusCode::OK,
            &serde_json::json!({ "version": crate::VERSION }),
        )),
        (&Method::POST, ["v1", "blobs", "missing"]) => {
            let request: MissingRequest = read_json(body).await?;
            let missing = blocking(state, move |a| Ok(a.missing(&request.hashes))).await?;
            Ok(json(StatusCode::OK, &MissingResponse { missing }))
        }
        (&Method::PUT, ["v1", "blobs", hash]) => {
            let hash: BlobHash = hash
                .parse()
                .map_err(|_| Failure::BadRequest(format!("`{hash}` is not a blob hash")))?;
            let size = upload(state, hash, body).await?;
            Ok(json(StatusCode::OK, &serde_json::json!({ "size": size })))
        }
        (&Method::POST, ["v1", "deployments"]) => {
            let rows: DeploymentRows = read_json(body).await?;
            let id = rows.deployment.id.clone();
            let now = now_ms();
            blocking(state, move |a| a.deploy(&rows, now)).await?;
            Ok(json(StatusCode::CREATED, &serde_json::json!({ "id": id })))
        }
        (&Method::GET, ["v1", "nodes"]) => {
            Ok(json(StatusCode::OK, &blocking(state, |a| a.nodes()).await?))
        }
        (&Method::POST, ["v1", "nodes"]) => {
            let new: NewNode = read_json(body).await?;
            let (cidr, now) = (state.mesh_cidr, now_ms());
            let added = blocking(state, move |a| a.add_node(&new, cidr, now)).await?;
            Ok(json(StatusCode::CREATED, &added))
        }
        (&Method::DELETE, ["v1", "nodes", name]) => {
            let name = (*name).to_owned();
            if !blocking(state, move |a| a.remove_node(&name)).await? {
                return Err(Failure::NotFound);
            }
            Ok(json(StatusCode::OK, &serde_json::json!({})))
        }
        (&Method::GET, ["v1", "membership"]) => {
            let mut answer = MembershipAnswer::default();
            if let Some(view) = &state.membership {
                let view = view.borrow();
                for (name, m) in &view.members {
                    if m.liveness == makiatto_mesh::membership::Liveness::Alive {
                        answer.alive.push(name.clone());
                    } else {
                        answer.not_alive.push(name.clone());
                    }
                }
            }
            Ok(json(StatusCode::OK, &answer))
        }
        (&Method::GET, ["v1", "domains"]) => Ok(json(
            StatusCode::OK,
            &blocking(state, |a| a.domains()).await?,
        )),
        (&Method::DELETE, ["v1", "domains", domain]) => {
            let domain = (*domain).to_owned();
            blocking(state, move |a| a.remove_domain(&domain)).await?;
            Ok(json(StatusCode::OK, &serde_json::json!({})))
        }
        (&Method::GET, ["v1", "deployments", id, "rollout"]) => {
            let (id, now) = ((*id).to_owned(), now_ms());
            let rollout = blocking(state, move |a| a.rollout(&id, now)).await?;
            Ok(json(StatusCode::OK, &rollout))
        }
        (&Method::GET, ["v1", "domains", domain, "deployments"]) => {
            let domain = (*domain).to_owned();
            let list: Vec<DeploymentSummary> =
                blocking(state, move |a| a.deployments(&domain)).await?;
            Ok(json(StatusCode::OK, &list))
        }
        (&Method::GET, ["v1", "domains", domain, "aliases"]) => {
            let domain = (*domain).to_owned();
            let list = blocking(state, move |a| a.aliases(&domain)).await?;
            Ok(json(StatusCode::OK, &list))
        }
        (&Method::GET, ["v1", "certificates"]) => Ok(json(
            StatusCode::OK,
            &blocking(state, |a| a.certificates()).await?,
        )),
        (&Method::GET, ["v1", "geo", ip]) => {
            let ip: IpAddr = ip
                .parse()
                .map_err(|_| Failure::BadRequest(format!("`{ip}` is not an IP address")))?;
            let location = state.locator.as_ref().and_then(|l| l.locate(ip));
            Ok(json(
                StatusCode::OK,
                &GeoAnswer {
                    ip,
                    location: location.map(|p| GeoLocation {
                        latitude: p.latitude,
                        longitude: p.longitude,
                    }),
                },
            ))
        }
        (&Method::POST, ["v1", "domains", domain, "rollback"]) => {
            let domain = (*domain).to_owned();
            let request: RollbackRequest = read_json(body).await?;
            let now = now_ms();
            let active = blocking(state, move |a| {
                a.rollback(&domain, request.deployment.as_deref(), now)
            })
            .await?;
            Ok(json(
                StatusCode::OK,
                &serde_json::json!({ "active": active }),
            ))
        }
        (&Method::GET, ["v1", "peers"]) => {
            Ok(json(StatusCode::OK, &blocking(state, |a| a.peers()).await?))
        }
        (&Method::POST, ["v1", "peers"]) => {
            let new: NewPeer = read_json(body).await?;
            let (cidr, now) = (state.mesh_cidr, now_ms());
            let added = blocking(state, move |a| a.add_peer(&new, cidr, now)).await?;
            Ok(json(StatusCode::CREATED, &added))
        }
        (&Method::DELETE, ["v1", "peers", name]) => {
            let name = (*name).to_owned();
            blocking(state, move |a| a.remove_peer(&name)).await?;
            Ok(json(StatusCode::OK, &serde_json::json!({})))
        }
        (&Method::GET, ["v1", "peers", name, "wg-config"]) => {
            let (name, port) = ((*name).to_owned(), state.mesh_port);
            let config = blocking(state, move |a| a.wg_config(&name, port)).await?;
            Ok(json(
                StatusCode::OK,
                &serde_json::json!({ "config": config }),
            ))
        }
        _ => Err(Failure::NotFound),
    }
}

/// Streams a request body into the blob store: the body's chunks cross a bounded channel to
/// the blocking pool, where [`Admin::put_blob`] hashes and writes them (and enforces
/// [`MAX_BLOB_BYTES`](super::MAX_BLOB_BYTES)), so a blob is never held in memory whole.
async fn upload(
    state: Arc<AdminState>,
    hash: BlobHash,
    mut body: Incoming,
) -> Result<u64, Failure> {
    let (tx, rx) = tokio::sync::mpsc::channel(UPLOAD_CHUNKS_IN_FLIGHT);
    let store = blocking(state, move |a| {
        a.put_blob(
            hash,
            ChannelReader {
                rx,
                current: Bytes::new(),
            },
        )
    });
    let feed = async move {
        while let Some(frame) = body.frame().await {
            let chunk = match frame {
                Ok(frame) => match frame.into_data() {
                    Ok(data) => Ok(data),
                    Err(_) => continue, // trailers
                },
                Err(e) => Err(std::io::Error::other(e)),
            };
            let failed = chunk.is_err();
            // A closed channel means the store side finished early (blob already present
            // or refused): stop reading.
            if tx.send(chunk).await.is_err() || failed {
                break;
            }
        }
    };
    let (stored, ()) = tokio::join!(store, feed);
    stored
}

/// A `Read` over body chunks sent from the async side.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>,
    current: Bytes,
}

impl std::io::Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// Runs `f` with the node's [`Admin`] on the blocking pool (SQLite and file I/O).
async fn blocking<T: Send + 'static>(
    state: Arc<AdminState>,
    f: impl FnOnce(Admin<'_>) -> Result<T, AdminError> + Send + 'static,
) -> Result<T, Failure> {
    let joined =
        tokio::task::spawn_blocking(move || f(Admin::new(&state.store, &state.blobs))).await;
    match joined {
        Ok(result) => result.map_err(Failure::Admin),
        Err(_) => Err(Failure::Admin(AdminError::Store(StoreError::Io(
            std::io::Error::other("admin task failed"),
        )))),
    }
}

async fn read_body(body: Incoming, limit: usize) -> Result<Bytes, Failure> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) => Err(Failure::BadRequest(format!("cannot read the body: {e}"))),
    }
}

async fn read_json<T: DeserializeOwned>(body: Incoming) -> Result<T, Failure> {
    let bytes = read_body(body, MAX_JSON_BYTES).await?;
    serde_json::from_slice(&bytes)
        .map_err(|e| Failure::BadRequest(format!("invalid JSON body: {e}")))
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Full<Bytes>> {
    // Serialising these plain types cannot fail; fall back to an empty object regardless.
    let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

fn failure(f: &Failure) -> Response<Full<Bytes>> {
    let error = |status: StatusCode, message: String| {
        json(status, &serde_json::json!({ "error": message }))
    };
    match f {
        Failure::BadRequest(message) => error(StatusCode::BAD_REQUEST, message.clone()),
        Failure::NotFound => error(StatusCode::NOT_FOUND, "no such endpoint".into()),
        Failure::Admin(e) => match e {
            AdminError::MissingBlobs(missing) => json(
                StatusCode::CONFLICT,
                &serde_json::json!({ "error": e.to_string(), "missing": missing }),
            ),
            AdminError::Peer(PeerError::Unknown(_))
            | AdminError::UnknownDomain(_)
            | AdminError::Deploy(DeployError::UnknownDeployment { .. }) => {
                error(StatusCode::NOT_FOUND, e.to_string())
            }
            AdminError::Peer(PeerError::NoNodes) => error(StatusCode::CONFLICT, e.to_string()),
            AdminError::Deploy(DeployError::NothingToRollBack { .. }) => {
                error(StatusCode::CONFLICT, e.to_string())
            }
            AdminError::Invalid(_) | AdminError::Deploy(_) | AdminError::Peer(_) => {
                error(StatusCode::BAD_REQUEST, e.to_string())
            }
            AdminError::Store(
                StoreError::BlobMismatch { .. } | StoreError::BlobTooLarge { .. },
            ) => error(
                StatusCode::BAD_REQUEST,
                format!(
                    "{e}: {}",
                    std::error::Error::source(e)
                        .map(ToString::to_string)
                        .unwrap_or_default()
                ),
            ),
            AdminError::Store(_) => {
                error(StatusCode::INTERNAL_SERVER_ERROR, "internal error".into())
            }
        },
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests;
