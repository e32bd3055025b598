use std::fs;
use std::path::Path;

use super::*;
use crate::manifest::{self, Manifest};
use crate::plan::Plan;
use crate::store::cluster::deployment_activations::{Activation, ActivationStatus};
use crate::store::cluster::{self, deployment_files, deployments};
use crate::store::{BlobStore, Options, Store};

const TOML: &str = r#"
[[domain]]
name = "example.com"
path = "site"
aliases = ["www.example.com"]

[[domain.records]]
type = "MX"
name = "@"
value = "mail.example.com"
priority = 10

[[domain.functions]]
path = "api/hello.wasm"
env = { KEY = "v" }

[[domain.transforms]]
path = "t.wasm"
files = "**/*.html"
"#;

fn plan(dir: &Path) -> Plan {
    fs::create_dir_all(dir.join("site/api")).unwrap();
    fs::write(dir.join("site/index.html"), "<h1>hi</h1>").unwrap();
    fs::write(dir.join("site/api/hello.wasm"), "\0asm-hello").unwrap();
    fs::write(dir.join("site/t.wasm"), "\0asm-t").unwrap();
    let project = Project::parse(Path::new("makiatto.toml"), TOML, dir).unwrap();
    Plan::build(&project, &manifest::Options::default(), &|_, _| {}).unwrap()
}

#[test]
fn rows_reference_the_manifest_and_the_config_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let plan = plan(dir.path());
    let d = &plan.domains[0];
    let rows = d.rows("dep1", 1_000, "tester").unwrap();
    assert_eq!(
        rows.deployment.manifest_hash,
        d.manifest.digest().to_string()
    );
    assert_eq!(rows.files.len(), 3);
    assert_eq!(rows.functions[0].route, "/api/hello");
    assert_eq!(
        rows.functions[0].wasm,
        d.manifest.get("api/hello.wasm").unwrap().hash.to_string()
    );
    assert_eq!(
        rows.transforms[0].wasm,
        d.manifest.get("t.wasm").unwrap().hash.to_string()
    );
    assert_eq!(rows.records[0].rtype, "MX");
    assert_eq!(rows.records[0].priority, Some(10));
    let config = DeploymentConfig::decode(&rows.deployment.config).unwrap();
    assert_eq!(config.aliases, ["www.example.com"]);
    assert!(DeploymentConfig::decode(b"junk").is_err());
}

#[test]
fn a_module_missing_from_the_manifest_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut plan = plan(dir.path());
    let d = &mut plan.domains[0];
    let kept: Vec<_> = d
        .manifest
        .entries()
        .iter()
        .filter(|e| e.path != "t.wasm")
        .cloned()
        .collect();
    d.manifest = Manifest::from_entries(kept);
    assert!(matches!(
        d.rows("dep1", 0, "t"),
        Err(DeployError::ModuleMissing { .. })
    ));
}

#[test]
fn rows_insert_into_a_real_store_and_activate() {
    let dir = tempfile::tempdir().unwrap();
    let plan = plan(dir.path());
    let d = &plan.domains[0];
    let store = Store::open(
        dir.path().join("cluster.db"),
        &cluster::SCHEMA,
        Options::default(),
    )
    .unwrap();
    let rows = d.rows("dep1", 1_000, "tester").unwrap();
    store
        .write(|tx| {
            insert(tx, &rows)
                .map_err(|e| crate::store::StoreError::Io(std::io::Error::other(e.to_string())))?;
            Ok(())
        })
        .unwrap();
    // Inserting twice is harmless.
    store.write(|tx| Ok(insert(tx, &rows).is_ok())).unwrap();
    let (files, live_before) = store
        .read(|c| {
            Ok((
                deployment_files::list_for_deployment(c, "dep1")?,
                dns_records::live_for_domain(c, "example.com")?,
            ))
        })
        .unwrap();
    assert_eq!(Manifest::from_deployment_files(&files).unwrap(), d.manifest);
    assert!(live_before.is_empty(), "records go live with activation");

    store
        .write(|tx| Ok(activate(tx, &rows.deployment, 2_000).is_ok()))
        .unwrap();
    let (live, aliases, active, fns) = store
        .read(|c| {
            Ok((
                dns_records::live_for_domain(c, "example.com")?,
                aliases::list_for_domain(c, "example.com")?,
                domains::get(c, "example.com")?.and_then(|d| d.active_deployment),
                functions::active_for_domain(c, "example.com")?,
            ))
        })
        .unwrap();
    assert_eq!(live.len(), 1);
    assert_eq!(aliases.len(), 1);
    assert_eq!(active.as_deref(), Some("dep1"));
    assert_eq!(fns.len(), 1);
    assert_eq!(
        store
            .read(|c| deployments::list_for_domain(c, "example.com"))
            .unwrap()
            .len(),
        1
    );

    // A domain dropped from makiatto.toml stops being served, aliases included.
    assert!(store.write(|tx| remove_domain(tx, "example.com")).unwrap());
    let (domain, aliases) = store
        .read(|c| {
            Ok((
                domains::get(c, "example.com")?,
                aliases::list_for_domain(c, "example.com")?,
            ))
        })
        .unwrap();
    assert!(domain.is_none() && aliases.is_empty());
    assert!(!store.write(|tx| remove_domain(tx, "example.com")).unwrap());

    // Blobs the cluster lacks: all of them in an empty blob store, none once uploaded.
    let blobs = BlobStore::open(dir.path().join("blobs")).unwrap();
    assert_eq!(d.manifest.missing(|h| blobs.contains(h)).blobs.len(), 3);
    for e in d.manifest.entries() {
        blobs
            .put_bytes(&fs::read(d.manifest.source(&e.path).unwrap()).unwrap())
            .unwrap();
    }
    assert!(d.manifest.missing(|h| blobs.contains(h)).blobs.is_empty());
}

#[test]
fn removed_domains_are_those_no_longer_declared() {
    let dir = tempfile::tempdir().unwrap();
    let plan = plan(dir.path());
    let project = Project {
        file: "makiatto.toml".into(),
        dir: dir.path().to_owned(),
        domains: plan.domains.iter().map(|d| d.domain.clone()).collect(),
    };
    let cluster = ["old.org", "example.com", "gone.net", "old.org"];
    assert_eq!(removed_domains(cluster, &project), ["gone.net", "old.org"]);
    assert!(removed_domains(["example.com"], &project).is_empty());
}

fn deployment(id: &str, domain: &str, created_ms: i64) -> Deployment {
    Deployment {
        id: id.into(),
        domain: domain.into(),
        created_ms,
        created_by: "t".into(),
        config: Vec::new(),
        manifest_hash: String::new(),
    }
}

#[test]
fn rollback_picks_the_requested_or_the_previous_deployment() {
    let list = [
        deployment("d2", "example.com", 200),
        deployment("d1", "example.com", 100),
        deployment("d3", "example.com", 300),
        deployment("x9", "other.org", 250),
    ];
    let pick = |active, requested| {
        rollback_target("example.com", &list, active, requested).map(|d| d.id.as_str())
    };
    assert_eq!(pick(Some("d3"), None).unwrap(), "d2");
    assert_eq!(pick(Some("d2"), None).unwrap(), "d1");
    assert!(matches!(
        pick(Some("d1"), None),
        Err(DeployError::NothingToRollBack { .. })
    ));
    assert_eq!(pick(None, None).unwrap(), "d3");
    assert_eq!(pick(Some("d3"), Some("d1")).unwrap(), "d1");
    assert!(matches!(
        pick(Some("d3"), Some("x9")),
        Err(DeployError::UnknownDeployment { .. })
    ));
    assert!(matches!(
        rollback_target("none.net", &list, None, None),
        Err(DeployError::NothingToRollBack { .. })
    ));
}

#[test]
fn rollout_counts_expected_nodes_only() {
    let report = |node: &str, status: ActivationStatus, error: Option<&str>| Activation {
        deployment_id: "d1".into(),
        node: node.into(),
        activated_ms: 0,
        status,
        error: error.map(str::to_owned),
    };
    let activations = [
        report("a", ActivationStatus::Active, None),
        report("b", ActivationStatus::Fetching, None),
        report("c", ActivationStatus::Failed, Some("disk full")),
        report("gone", ActivationStatus::Active, None),
    ];
    let expected: Vec<String> = ["a", "b", "c", "d"].map(String::from).to_vec();
    let r = Rollout::of(&activations, &expected);
    assert_eq!(r.active, ["a"]);
    assert_eq!(r.waiting, ["b", "d"]);
    assert_eq!(r.failed, [("c".to_owned(), "disk full".to_owned())]);
    assert!(!r.is_complete());
    assert_eq!(r.to_string(), "1/4 nodes activated, 1 failed");
    let done = Rollout::of(&activations, &["a".to_owned(), "gone".to_owned()]);
    assert!(done.is_complete());
    assert_eq!(done.to_string(), "2/2 nodes activated");
}
