use std::fs;
use std::path::Path;

use super::*;
use crate::plan::{DomainPlan, Plan};
use crate::project::Project;
use crate::store::Options;
use crate::store::cluster;

/// A named change that makes a deployment invalid.
type Tamper = (&'static str, fn(&mut DeploymentRows));

struct Node {
    _dir: tempfile::TempDir,
    store: Store,
    blobs: BlobStore,
}

fn node() -> Node {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("db"), &cluster::SCHEMA, Options::default()).unwrap();
    let blobs = BlobStore::open(dir.path().join("blobs")).unwrap();
    Node {
        _dir: dir,
        store,
        blobs,
    }
}

/// A one-domain plan over a site with `index` as index.html.
fn plan(dir: &Path, index: &str) -> DomainPlan {
    fs::create_dir_all(dir.join("site/css")).unwrap();
    fs::write(dir.join("site/index.html"), index).unwrap();
    fs::write(dir.join("site/css/a.css"), "body{}").unwrap();
    fs::write(dir.join("site/same.html"), index).unwrap();
    let text =
        "[[domain]]\nname = \"example.com\"\npath = \"site\"\naliases = [\"www.example.com\"]\n";
    let project = Project::parse(Path::new("makiatto.toml"), text, dir).unwrap();
    let mut plan = Plan::build(&project, &manifest::Options::default(), &|_, _| {}).unwrap();
    plan.domains.remove(0)
}

fn upload(admin: &Admin<'_>, plan: &DomainPlan) {
    for e in plan.manifest.entries() {
        let bytes = fs::read(plan.manifest.source(&e.path).unwrap()).unwrap();
        assert_eq!(admin.put_blob(e.hash, bytes.as_slice()).unwrap(), e.size);
    }
}

#[test]
fn only_missing_blobs_are_asked_for_and_uploads_are_verified() {
    let n = node();
    let admin = Admin::new(&n.store, &n.blobs);
    let a = BlobHash::of(b"a");
    let b = BlobHash::of(b"b");
    assert_eq!(admin.missing(&[a, b, a]), [a, b]);
    assert_eq!(admin.put_blob(a, &b"a"[..]).unwrap(), 1);
    assert_eq!(admin.missing(&[a, b, a]), [b]);
    // A body that does not hash to its name is refused and nothing is stored.
    assert!(admin.put_blob(b, &b"not b"[..]).is_err());
    assert!(!n.blobs.contains(&b));
    assert_eq!(admin.missing(&[b]), [b]);
}

#[test]
fn a_deployment_needs_its_blobs_then_lists() {
    let dir = tempfile::tempdir().unwrap();
    let plan = plan(dir.path(), "v1");
    let rows = plan.rows("d1", 100, "me").unwrap();
    let n = node();
    let admin = Admin::new(&n.store, &n.blobs);
    match admin.create_deployment(&rows) {
        Err(AdminError::MissingBlobs(missing)) => {
            assert_eq!(missing.len(), 2, "index and same.html share a blob");
        }
        other => panic!("{other:?}"),
    }
    assert!(admin.deployments("example.com").unwrap().is_empty());
    upload(&admin, &plan);
    admin.create_deployment(&rows).unwrap();
    let list = admin.deployments("example.com").unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(
        (
            list[0].id.as_str(),
            list[0].files,
            list[0].bytes,
            list[0].active
        ),
        ("d1", 3, 10, false)
    );
}

#[test]
fn tampered_deployments_are_refused_before_any_write() {
    let dir = tempfile::tempdir().unwrap();
    let plan = plan(dir.path(), "v1");
    let rows = plan.rows("d1", 100, "me").unwrap();
    let n = node();
    let admin = Admin::new(&n.store, &n.blobs);
    upload(&admin, &plan);
    let tamper: [Tamper; 7] = [
        ("traversal", |r| {
            r.files[0].path = "../../etc/cron.d/x".into();
        }),
        ("absolute", |r| r.files[0].path = "/etc/passwd".into()),
        ("hash", |r| r.deployment.manifest_hash = "00".repeat(32)),
        ("foreign row", |r| r.files[1].deployment_id = "other".into()),
        ("duplicate", |r| r.files[1].path = r.files[0].path.clone()),
        ("config", |r| {
            r.config.aliases.push("evil.example.org".into());
        }),
        ("id", |r| r.deployment.id = "../x".into()),
    ];
    for (what, f) in tamper {
        let mut bad = rows.clone();
        f(&mut bad);
        assert!(
            matches!(admin.create_deployment(&bad), Err(AdminError::Invalid(_))),
            "{what} accepted"
        );
    }
    assert!(admin.deployments("example.com").unwrap().is_empty());
}

#[test]
fn rollback_moves_between_deployments() {
    let dir = tempfile::tempdir().unwrap();
    let n = node();
    let admin = Admin::new(&n.store, &n.blobs);
    // Each version is uploaded before the next overwrites the site.
    for (index, id, at) in [("v1", "d1", 100), ("v2-longer", "d2", 200)] {
        let plan = plan(dir.path(), index);
        upload(&admin, &plan);
        admin
            .create_deployment(&plan.rows(id, at, "me").unwrap())
            .unwrap();
    }
    assert_eq!(
        admin.rollback("example.com", Some("d2"), 300).unwrap(),
        "d2"
    );
    assert_eq!(admin.rollback("example.com", None, 400).unwrap(), "d1");
    let list = admin.deployments("example.com").unwrap();
    assert_eq!(
        list.iter()
            .filter(|d| d.active)
            .map(|d| d.id.as_str())
            .collect::<Vec<_>>(),
        ["d1"]
    );
    assert!(matches!(
        admin.rollback("example.com", None, 500),
        Err(AdminError::Deploy(DeployError::NothingToRollBack { .. }))
    ));
    assert!(matches!(
        admin.rollback("example.com", Some("nope"), 500),
        Err(AdminError::Deploy(DeployError::UnknownDeployment { .. }))
    ));
}

#[test]
fn deployment_rows_survive_json() {
    let dir = tempfile::tempdir().unwrap();
    let rows = plan(dir.path(), "v1").rows("d1", 1, "me").unwrap();
    let json = serde_json::to_string(&rows).unwrap();
    let back: DeploymentRows = serde_json::from_str(&json).unwrap();
    assert_eq!(back, rows);
}

#[test]
fn peers_get_free_addresses_and_keep_them() {
    let n = node();
    let admin = Admin::new(&n.store, &n.blobs);
    let cidr: crate::config::Ipv4Cidr = "10.44.44.0/24".parse().unwrap();
    let key = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";
    let new = |name: &str, at: Option<&str>| NewPeer {
        name: name.into(),
        wg_public_key: key.into(),
        endpoint: None,
        wg_address: at.map(|a| a.parse().unwrap()),
    };
    assert_eq!(
        admin
            .add_peer(&new("o11y", None), cidr, 1)
            .unwrap()
            .mesh_address,
        "10.44.44.1"
    );
    assert_eq!(
        admin
            .add_peer(&new("b", Some("10.44.44.9")), cidr, 2)
            .unwrap()
            .mesh_address,
        "10.44.44.9"
    );
    assert_eq!(
        admin
            .add_peer(&new("c", None), cidr, 3)
            .unwrap()
            .mesh_address,
        "10.44.44.2"
    );
    // Re-adding keeps the address and the creation time.
    let again = admin.add_peer(&new("o11y", None), cidr, 4).unwrap();
    assert_eq!(
        (again.mesh_address.as_str(), again.created_ms),
        ("10.44.44.1", 1)
    );
    for taken in ["10.44.44.9", "10.45.0.1", "10.44.44.0", "10.44.44.255"] {
        assert!(
            matches!(
                admin.add_peer(&new("d", Some(taken)), cidr, 5),
                Err(AdminError::Peer(PeerError::AddressTaken(_)))
            ),
            "{taken}"
        );
    }
    assert!(matches!(
        admin.add_peer(&new("Bad Name", None), cidr, 5),
        Err(AdminError::Peer(PeerError::Name(_)))
    ));
    assert_eq!(admin.peers().unwrap().len(), 3);
    admin.remove_peer("b").unwrap();
    assert!(matches!(
        admin.remove_peer("b"),
        Err(AdminError::Peer(PeerError::Unknown(_)))
    ));
    assert!(matches!(
        admin.wg_config("o11y", 51880),
        Err(AdminError::Peer(PeerError::NoNodes))
    ));
}

#[test]
fn deploy_activates_and_keeps_the_newest_deployments() {
    let dir = tempfile::tempdir().unwrap();
    let n = node();
    let admin = Admin::new(&n.store, &n.blobs);
    let total = KEEP_DEPLOYMENTS + 2;
    for i in 0..total {
        let plan = plan(dir.path(), &format!("v{i}"));
        upload(&admin, &plan);
        let at = 100 + i as i64;
        admin
            .deploy(&plan.rows(&format!("d{i:02}"), at, "me").unwrap(), at)
            .unwrap();
    }
    let list = admin.deployments("example.com").unwrap();
    assert_eq!(list.len(), KEEP_DEPLOYMENTS);
    assert_eq!(list[0].id, format!("d{:02}", total - 1));
    assert!(list[0].active);
    assert!(list.iter().all(|d| d.id.as_str() >= "d02"), "oldest purged");
}

#[test]
fn a_node_name_taken_with_another_key_is_refused_unless_replaced() {
    let n = node();
    let admin = Admin::new(&n.store, &n.blobs);
    let cidr = crate::config::Ipv4Cidr {
        network: Ipv4Addr::new(10, 44, 44, 0),
        prefix_len: 24,
    };
    let key = |b: u8| makiatto_mesh::PublicKey([b; 32]).to_base64();
    let new = |k: &str, replace: bool| NewNode {
        name: "vector".into(),
        wg_public_key: k.into(),
        endpoint: "192.0.2.1:51880".into(),
        ipv4: Ipv4Addr::new(192, 0, 2, 1),
        latitude: 1.0,
        longitude: 2.0,
        is_nameserver: true,
        replace,
        mesh_address: None,
    };
    let first = admin.add_node(&new(&key(1), false), cidr, 1).unwrap();
    // The same node registering again keeps its address.
    let again = admin.add_node(&new(&key(1), false), cidr, 2).unwrap();
    assert_eq!(again.mesh_address, first.mesh_address);
    // Another machine under the same name is refused, and the row is untouched.
    let err = admin.add_node(&new(&key(2), false), cidr, 3).unwrap_err();
    assert!(err.to_string().contains("already in the cluster"), "{err}");
    let row = n
        .store
        .read(|c| cluster::nodes::get(c, "vector"))
        .unwrap()
        .unwrap();
    assert_eq!(row.wg_public_key, key(1));
    // `--recreate` replaces it.
    let replaced = admin.add_node(&new(&key(2), true), cidr, 4).unwrap();
    assert_eq!(replaced.wg_public_key, key(2));
}

#[test]
fn a_node_registered_with_a_mesh_address_gets_it_unless_it_is_taken() {
    let n = node();
    let admin = Admin::new(&n.store, &n.blobs);
    let cidr = crate::config::Ipv4Cidr {
        network: Ipv4Addr::new(10, 44, 44, 0),
        prefix_len: 24,
    };
    let new = |name: &str, b: u8, address: Option<Ipv4Addr>| NewNode {
        name: name.into(),
        wg_public_key: makiatto_mesh::PublicKey([b; 32]).to_base64(),
        endpoint: "192.0.2.1:51880".into(),
        ipv4: Ipv4Addr::new(192, 0, 2, 1),
        latitude: 1.0,
        longitude: 2.0,
        is_nameserver: true,
        replace: false,
        mesh_address: address,
    };
    let wanted = Ipv4Addr::new(10, 44, 44, 77);
    let row = admin
        .add_node(&new("vector", 1, Some(wanted)), cidr, 1)
        .unwrap();
    assert_eq!(row.mesh_address, wanted.to_string());
    // Taken by vector, or outside the range: refused, nothing written.
    for bad in [wanted, Ipv4Addr::new(10, 45, 0, 1)] {
        let err = admin
            .add_node(&new("klukai", 2, Some(bad)), cidr, 2)
            .unwrap_err();
        assert!(err.to_string().contains("taken or outside"), "{err}");
    }
    assert!(
        n.store
            .read(|c| cluster::nodes::get(c, "klukai"))
            .unwrap()
            .is_none()
    );
}
