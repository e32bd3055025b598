use std::fs;
use std::sync::Mutex;

use super::*;

fn site() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fs::create_dir_all(root.join("css")).unwrap();
    fs::create_dir_all(root.join(".git/objects")).unwrap();
    fs::create_dir_all(root.join(".well-known")).unwrap();
    fs::write(root.join("index.html"), "<h1>hi</h1>").unwrap();
    fs::write(root.join("css/site.css"), "body{}").unwrap();
    fs::write(root.join("copy.html"), "<h1>hi</h1>").unwrap();
    fs::write(root.join(".git/objects/x"), "secret history").unwrap();
    fs::write(root.join(".env"), "TOKEN=1").unwrap();
    fs::write(root.join(".well-known/security.txt"), "Contact: x").unwrap();
    dir
}

fn build(root: &Path) -> Result<Manifest, ManifestError> {
    Manifest::build(root, &Options::default(), &|_| {})
}

#[test]
fn build_lists_visible_files_with_hash_size_and_mode() {
    let dir = site();
    let m = build(dir.path()).unwrap();
    let paths: Vec<&str> = m.entries().iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            ".well-known/security.txt",
            "copy.html",
            "css/site.css",
            "index.html"
        ]
    );
    let index = m.get("index.html").unwrap();
    assert_eq!(index.hash, BlobHash::of(b"<h1>hi</h1>"));
    assert_eq!(index.size, 11);
    assert_eq!(m.total_bytes(), 10 + 11 + 6 + 11);
    assert_eq!(
        m.source("css/site.css").unwrap(),
        dir.path().canonicalize().unwrap().join("css/site.css")
    );
    // Two files with the same content are one blob.
    assert_eq!(m.blobs().len(), 3);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(
            dir.path().join("index.html"),
            fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        assert_eq!(
            build(dir.path()).unwrap().get("index.html").unwrap().mode,
            0o600
        );
    }
}

#[test]
fn hidden_files_are_included_on_request() {
    let dir = site();
    let m = Manifest::build(
        dir.path(),
        &Options {
            include_hidden: true,
        },
        &|_| {},
    )
    .unwrap();
    assert!(m.get(".env").is_some());
    assert!(m.get(".git/objects/x").is_some());
}

#[test]
fn progress_reaches_the_totals() {
    let dir = site();
    let seen = Mutex::new(Vec::new());
    let m = Manifest::build(dir.path(), &Options::default(), &|p| {
        seen.lock().unwrap().push(p);
    })
    .unwrap();
    let seen = seen.into_inner().unwrap();
    assert_eq!(seen.len(), m.len() + 1);
    for pair in seen.windows(2) {
        assert_eq!(pair[1].files_done, pair[0].files_done + 1, "{seen:?}");
        assert!(pair[1].bytes_done >= pair[0].bytes_done, "{seen:?}");
    }
    let last = seen.last().unwrap();
    assert_eq!(last.files_done, m.len() as u64);
    assert_eq!(last.files_total, m.len() as u64);
    assert_eq!(last.bytes_done, m.total_bytes());
    assert_eq!(last.bytes_total, m.total_bytes());
}

#[test]
fn digest_is_deterministic_and_sensitive() {
    let a = site();
    let b = site();
    let ma = build(a.path()).unwrap();
    assert_eq!(ma.digest(), build(b.path()).unwrap().digest());
    fs::write(b.path().join("index.html"), "<h1>ho</h1>").unwrap();
    let mb = build(b.path()).unwrap();
    assert_ne!(ma.digest(), mb.digest());
    // Moving content between paths changes the digest too.
    let mut entries = ma.entries().to_vec();
    entries[1].path = "copy2.html".into();
    assert_ne!(Manifest::from_entries(entries).digest(), ma.digest());
}

#[test]
fn diff_and_missing_blobs() {
    let a = site();
    let old = build(a.path()).unwrap();
    fs::write(a.path().join("index.html"), "new").unwrap();
    fs::remove_file(a.path().join("copy.html")).unwrap();
    fs::write(a.path().join("about.html"), "about").unwrap();
    let new = build(a.path()).unwrap();
    let diff = new.diff(&old);
    assert_eq!(diff.added, ["about.html"]);
    assert_eq!(diff.changed, ["index.html"]);
    assert_eq!(diff.removed, ["copy.html"]);
    assert_eq!(diff.unchanged, 2);
    assert_eq!(
        new.diff(&new),
        Diff {
            unchanged: new.len(),
            ..Diff::default()
        }
    );

    let have = old.blobs();
    let missing = new.missing(|h| have.contains_key(h));
    let mut expect = vec![(BlobHash::of(b"new"), 3), (BlobHash::of(b"about"), 5)];
    expect.sort();
    assert_eq!(missing.blobs, expect);
    assert_eq!(missing.bytes, 8);
    assert_eq!(new.missing(|_| true), Missing::default());
}

#[test]
fn deployment_rows_round_trip() {
    let dir = site();
    let m = build(dir.path()).unwrap();
    let rows = m.to_deployment_files("d1");
    assert_eq!(rows.len(), m.len());
    assert!(
        rows.iter()
            .all(|r| r.deployment_id == "d1" && r.hash.len() == 64)
    );
    assert_eq!(Manifest::from_deployment_files(&rows).unwrap(), m);
    let mut bad = rows.clone();
    bad[0].hash = "zz".into();
    assert!(matches!(
        Manifest::from_deployment_files(&bad),
        Err(ManifestError::BadHash { .. })
    ));
}

#[cfg(unix)]
#[test]
fn symlinks_inside_are_followed_and_outside_rejected() {
    use std::os::unix::fs::symlink;
    let outside = tempfile::tempdir().unwrap();
    fs::write(outside.path().join("passwd"), "root:x:0:0").unwrap();

    let dir = site();
    symlink(dir.path().join("index.html"), dir.path().join("home.html")).unwrap();
    let m = build(dir.path()).unwrap();
    assert_eq!(
        m.get("home.html").unwrap().hash,
        m.get("index.html").unwrap().hash
    );

    let dir = site();
    symlink(outside.path().join("passwd"), dir.path().join("passwd")).unwrap();
    assert!(matches!(
        build(dir.path()),
        Err(ManifestError::LinkOutside {
            target: Some(_),
            ..
        })
    ));

    let dir = site();
    symlink(
        "../../../../../../etc/hostname",
        dir.path().join("css/host"),
    )
    .unwrap();
    assert!(matches!(
        build(dir.path()),
        Err(ManifestError::LinkOutside { .. })
    ));

    let dir = site();
    symlink(dir.path().join("nowhere"), dir.path().join("dangling")).unwrap();
    assert!(matches!(
        build(dir.path()),
        Err(ManifestError::LinkOutside { target: None, .. })
    ));

    let dir = site();
    symlink(dir.path().join("css"), dir.path().join("styles")).unwrap();
    assert!(matches!(
        build(dir.path()),
        Err(ManifestError::LinkToDirectory { .. })
    ));

    // A hidden link pointing outside is skipped with the rest of the hidden files.
    let dir = site();
    symlink(outside.path().join("passwd"), dir.path().join(".secret")).unwrap();
    assert!(build(dir.path()).is_ok());
}

#[cfg(unix)]
#[test]
fn hostile_names_are_rejected() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;

    let dir = site();
    fs::write(dir.path().join(OsStr::from_bytes(b"bad\xffname")), "x").unwrap();
    assert!(matches!(
        build(dir.path()),
        Err(ManifestError::NotUtf8 { .. })
    ));

    let dir = site();
    fs::write(dir.path().join("new\nline.html"), "x").unwrap();
    assert!(matches!(
        build(dir.path()),
        Err(ManifestError::BadName { .. })
    ));

    let dir = site();
    fs::write(dir.path().join("a\\b.html"), "x").unwrap();
    assert!(matches!(
        build(dir.path()),
        Err(ManifestError::BadName { .. })
    ));
}

#[cfg(unix)]
#[test]
fn special_files_are_rejected() {
    let dir = site();
    let _listener = std::os::unix::net::UnixListener::bind(dir.path().join("sock")).unwrap();
    assert!(matches!(
        build(dir.path()),
        Err(ManifestError::Special { .. })
    ));
}

#[test]
fn a_missing_root_is_a_read_error() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        build(&dir.path().join("nope")),
        Err(ManifestError::Read { .. })
    ));
}

#[test]
fn check_path_accepts_only_plain_relative_paths() {
    for ok in ["index.html", "css/site.css", ".well-known/x", "a b/ü.txt"] {
        assert_eq!(check_path(ok), Ok(()), "{ok}");
    }
    for bad in [
        "",
        "/etc/passwd",
        "a//b",
        "../x",
        "a/../../x",
        "./a",
        "a/",
        "a\\b",
        "a\nb",
    ] {
        assert!(check_path(bad).is_err(), "{bad:?} accepted");
    }
}
