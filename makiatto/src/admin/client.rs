//! A client of the admin API ([`super::socket`]) over a Unix socket: the node's own socket,
//! or the local end of an SSH-forwarded one. One HTTP/1 connection per request.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use miette::Diagnostic;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;

use super::socket::{MissingRequest, MissingResponse, RollbackRequest};
use super::{DeploymentSummary, NewNode, NewPeer};
use crate::deploy::DeploymentRows;
use crate::store::BlobHash;
use crate::store::cluster::external_peers::ExternalPeer;

/// A client of one node's admin socket.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

/// Why an admin call failed.
#[derive(Debug, thiserror::Error, Diagnostic)]
#[non_exhaustive]
pub enum ClientError {
    /// The socket could not be reached or the connection broke.
    #[error("cannot reach the admin socket {}", socket.display())]
    #[diagnostic(help("is the makiatto service running on the node?"))]
    Connect {
        /// The socket.
        socket: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The node answered with an error.
    #[error("the node refused {what}: {message} (HTTP {status})")]
    Refused {
        /// The call.
        what: String,
        /// The HTTP status.
        status: u16,
        /// The node's error message.
        message: String,
        /// Blobs the node lacks, when that is the reason.
        missing: Vec<BlobHash>,
    },
    /// The answer was not what the API promises.
    #[error("unexpected answer to {what}: {reason}")]
    Protocol {
        /// The call.
        what: String,
        /// What was wrong.
        reason: String,
    },
}

impl Client {
    /// A client of the admin socket at `socket`.
    pub fn new(socket: impl AsRef<Path>) -> Self {
        Self {
            socket: socket.as_ref().to_owned(),
        }
    }

    /// The node's version.
    pub async fn version(&self) -> Result<String, ClientError> {
        let v: serde_json::Value = self.call(Method::GET, "/v1/version", Bytes::new()).await?;
        v["version"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| protocol("/v1/version", "no version"))
    }

    /// The hashes among `hashes` that the node lacks.
    pub async fn missing(&self, hashes: &[BlobHash]) -> Result<Vec<BlobHash>, ClientError> {
        let body = to_json(&MissingRequest {
            hashes: hashes.to_vec(),
        })?;
        let r: MissingResponse = self.call(Method::POST, "/v1/blobs/missing", body).await?;
        Ok(r.missing)
    }

    /// Uploads a blob.
    pub async fn put_blob(&self, hash: BlobHash, data: Bytes) -> Result<(), ClientError> {
        let _: serde_json::Value = self
            .call(Method::PUT, &format!("/v1/blobs/{hash}"), data)
            .await?;
        Ok(())
    }

    /// Creates a deployment (its blobs must be uploaded).
    pub async fn create_deployment(&self, rows: &DeploymentRows) -> Result<(), ClientError> {
        let _: serde_json::Value = self
            .call(Method::POST, "/v1/deployments", to_json(rows)?)
            .await?;
        Ok(())
    }

    /// Every node with its latest health report.
    pub async fn nodes(&self) -> Result<Vec<super::NodeStatus>, ClientError> {
        self.call(Method::GET, "/v1/nodes", Bytes::new()).await
    }

    /// Registers a node about to join; returns its row with its mesh address.
    pub async fn add_node(
        &self,
        node: &NewNode,
    ) -> Result<crate::store::cluster::nodes::Node, ClientError> {
        self.call(Method::POST, "/v1/nodes", to_json(node)?).await
    }

    /// Removes a node from the cluster state; `false` when the node did not know it.
    pub async fn remove_node(&self, name: &str) -> Result<bool, ClientError> {
        let r: Result<serde_json::Value, _> = self
            .call(Method::DELETE, &format!("/v1/nodes/{name}"), Bytes::new())
            .await;
        match r {
            Ok(_) => Ok(true),
            Err(ClientError::Refused { status: 404, .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Who the node sees alive.
    pub async fn membership(&self) -> Result<super::socket::MembershipAnswer, ClientError> {
        self.call(Method::GET, "/v1/membership", Bytes::new()).await
    }

    /// The domains the cluster serves.
    pub async fn domains(&self) -> Result<Vec<String>, ClientError> {
        self.call(Method::GET, "/v1/domains", Bytes::new()).await
    }

    /// A domain's aliases.
    pub async fn aliases(&self, domain: &str) -> Result<Vec<String>, ClientError> {
        self.call(
            Method::GET,
            &format!("/v1/domains/{domain}/aliases"),
            Bytes::new(),
        )
        .await
    }

    /// The certificates the cluster holds (names and validity), newest first.
    pub async fn certificates(&self) -> Result<Vec<super::CertificateSummary>, ClientError> {
        self.call(Method::GET, "/v1/certificates", Bytes::new())
            .await
    }

    /// Where the node's GeoIP data places `ip` (`None`: unknown to it).
    pub async fn locate(
        &self,
        ip: std::net::IpAddr,
    ) -> Result<Option<super::socket::GeoLocation>, ClientError> {
        let answer: super::socket::GeoAnswer = self
            .call(Method::GET, &format!("/v1/geo/{ip}"), Bytes::new())
            .await?;
        Ok(answer.location)
    }

    /// Stops serving a domain everywhere.
    pub async fn remove_domain(&self, domain: &str) -> Result<(), ClientError> {
        let _: serde_json::Value = self
            .call(
                Method::DELETE,
                &format!("/v1/domains/{domain}"),
                Bytes::new(),
            )
            .await?;
        Ok(())
    }

    /// Where the healthy nodes are with a deployment.
    pub async fn rollout(
        &self,
        deployment_id: &str,
    ) -> Result<crate::deploy::Rollout, ClientError> {
        self.call(
            Method::GET,
            &format!("/v1/deployments/{deployment_id}/rollout"),
            Bytes::new(),
        )
        .await
    }

    /// A domain's deployments, newest first.
    pub async fn deployments(&self, domain: &str) -> Result<Vec<DeploymentSummary>, ClientError> {
        self.call(
            Method::GET,
            &format!("/v1/domains/{domain}/deployments"),
            Bytes::new(),
        )
        .await
    }

    /// Rolls a domain back; returns the deployment now active.
    pub async fn rollback(
        &self,
        domain: &str,
        deployment: Option<&str>,
    ) -> Result<String, ClientError> {
        let body = to_json(&RollbackRequest {
            deployment: deployment.map(str::to_owned),
        })?;
        let path = format!("/v1/domains/{domain}/rollback");
        let v: serde_json::Value = self.call(Method::POST, &path, body).await?;
        v["active"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| protocol(&path, "no active deployment"))
    }

    /// Registers an external peer.
    pub async fn add_peer(&self, peer: &NewPeer) -> Result<ExternalPeer, ClientError> {
        self.call(Method::POST, "/v1/peers", to_json(peer)?).await
    }

    /// The external peers.
    pub async fn peers(&self) -> Result<Vec<ExternalPeer>, ClientError> {
        self.call(Method::GET, "/v1/peers", Bytes::new()).await
    }

    /// Removes an external peer.
    pub async fn remove_peer(&self, name: &str) -> Result<(), ClientError> {
        let _: serde_json::Value = self
            .call(Method::DELETE, &format!("/v1/peers/{name}"), Bytes::new())
            .await?;
        Ok(())
    }

    /// A peer's wg-quick configuration.
    pub async fn wg_config(&self, name: &str) -> Result<String, ClientError> {
        let path = format!("/v1/peers/{name}/wg-config");
        let v: serde_json::Value = self.call(Method::GET, &path, Bytes::new()).await?;
        v["config"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| protocol(&path, "no config"))
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<T, ClientError> {
        let connect = |source| ClientError::Connect {
            socket: self.socket.clone(),
            source,
        };
        let stream = UnixStream::connect(&self.socket).await.map_err(connect)?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| connect(std::io::Error::other(e)))?;
        let driver = tokio::spawn(conn);
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, "makiatto")
            .body(Full::new(body))
            .map_err(|e| protocol(path, &e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| connect(std::io::Error::other(e)));
        let result = async {
            let response = response?;
            let status = response.status();
            let bytes = response
                .into_body()
                .collect()
                .await
                .map_err(|e| connect(std::io::Error::other(e)))?
                .to_bytes();
            if status.is_success() {
                serde_json::from_slice(&bytes).map_err(|e| protocol(path, &e.to_string()))
            } else {
                Err(refused(path, status, &bytes))
            }
        }
        .await;
        driver.abort();
        result
    }
}

fn to_json<T: Serialize>(value: &T) -> Result<Bytes, ClientError> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| protocol("encoding", &e.to_string()))
}

fn protocol(what: &str, reason: &str) -> ClientError {
    ClientError::Protocol {
        what: what.to_owned(),
        reason: reason.to_owned(),
    }
}

fn refused(what: &str, status: StatusCode, body: &[u8]) -> ClientError {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let missing = v["missing"]
        .as_array()
        .map(|a| a.iter().filter_map(|h| h.as_str()?.parse().ok()).collect())
        .unwrap_or_default();
    ClientError::Refused {
        what: what.to_owned(),
        status: status.as_u16(),
        message: v["error"].as_str().unwrap_or("no message").to_owned(),
        missing,
    }
}
