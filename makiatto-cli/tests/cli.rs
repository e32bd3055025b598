//! Runs the real `maki` binary on example projects and profiles.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs `maki args` in `cwd` with a clean, colourless environment and `HOME` at `home`.
fn maki(cwd: &Path, home: &Path, env_profile: Option<&Path>, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_maki"));
    cmd.args(args)
        .current_dir(cwd)
        .env("NO_COLOR", "1")
        .env("HOME", home)
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("MAKIATTO_PROFILE");
    if let Some(p) = env_profile {
        cmd.env("MAKIATTO_PROFILE", p);
    }
    cmd.output().expect("maki runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// A project directory with a `site/` and the given makiatto.toml.
fn project(toml: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("site")).unwrap();
    std::fs::write(dir.path().join("site/index.html"), "<h1>hi</h1>").unwrap();
    std::fs::write(dir.path().join("makiatto.toml"), toml).unwrap();
    dir
}

/// Runs `maki check` on `toml` and asserts failure with `needle` reported at `line`.
fn rejected(toml: &str, line: usize, needle: &str) {
    let dir = project(toml);
    let out = maki(dir.path(), dir.path(), None, &["check"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(needle), "missing `{needle}` in:\n{err}");
    assert!(
        err.contains(&format!("[makiatto.toml:{line}:")),
        "line {line} not shown in:\n{err}"
    );
    assert!(err.contains("help:"), "no hint in:\n{err}");
    assert!(!err.contains("backtrace"), "{err}");
}

#[test]
fn check_and_dry_run_summarise_the_example_site() {
    let config = examples().join("makiatto.toml");
    let config = config.to_str().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    for args in [
        &["check", "--config", config][..],
        &["sync", "--dry-run", "--config", config],
    ] {
        let out = maki(tmp.path(), tmp.path(), None, args);
        let text = stdout(&out);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(text.starts_with("example.com  ./site  5 files, "), "{text}");
        assert!(text.contains("aliases: www.example.com"), "{text}");
        assert!(text.contains("dry run: nothing was uploaded"), "{text}");
    }
}

#[test]
fn broken_project_files_are_diagnosed_at_the_offending_line() {
    rejected(
        "[[domain]]\nname = \"example.com\"\npth = \"./site\"\n",
        3,
        "unknown field `pth`",
    );
    rejected(
        "[[domain]]\nname = \"blog.example.com\"\npath = \"./site\"\n",
        2,
        "subdomain of `example.com`",
    );
    rejected(
        "[[domain]]\nname = \"example.com\"\npath = \"../site\"\n",
        3,
        "climbs out",
    );
    rejected(
        "[[domain]]\nname = \"example.com\"\npath = \"./site\"\n\n[[domain.records]]\ntype = \"A\"\nname = \"api\"\nvalue = \"2001:db8::1\"\n",
        8,
        "not an IPv4 address",
    );
    rejected(
        "[[domain]]\nname = \"example.com\"\npath = \"./site\"\n[[domain.records]]\ntype = \"MX\"\nname = \"@\"\nvalue = \"mail.example.com\"\n",
        5,
        "needs a priority",
    );
}

#[test]
fn a_missing_project_file_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let out = maki(tmp.path(), tmp.path(), None, &["check"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cannot read makiatto.toml"),
        "{}",
        stderr(&out)
    );
}

const PROFILE_A: &str = "[[machines]]\nname = \"alpha\"\nssh_target = \"root@203.0.113.1\"\nipv4 = \"203.0.113.1\"\nipv6 = \"2001:db8::1\"\n";
const PROFILE_B: &str =
    "[[machines]]\nname = \"beta\"\nssh_target = \"root@198.51.100.1\"\nipv4 = \"198.51.100.1\"\n";

#[test]
fn profile_precedence_flag_then_env_then_default() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a.toml"), tmp.path().join("b.toml"));
    std::fs::write(&a, PROFILE_A).unwrap();
    std::fs::write(&b, PROFILE_B).unwrap();
    let b_str = b.to_str().unwrap();

    let out = maki(
        tmp.path(),
        tmp.path(),
        Some(&a),
        &["--profile", b_str, "machine", "list"],
    );
    assert!(
        stdout(&out).contains("beta") && !stdout(&out).contains("alpha"),
        "{}",
        stdout(&out)
    );
    let out = maki(tmp.path(), tmp.path(), Some(&a), &["machine", "list"]);
    assert!(stdout(&out).contains("alpha"), "{}", stdout(&out));
    // Nothing given: ~/.config/makiatto/default.toml, empty while it does not exist...
    let out = maki(tmp.path(), tmp.path(), None, &["machine", "list"]);
    assert!(out.status.success());
    assert!(stdout(&out).contains("no machines"), "{}", stdout(&out));
    // ...and read once it does.
    std::fs::create_dir_all(tmp.path().join(".config/makiatto")).unwrap();
    std::fs::write(tmp.path().join(".config/makiatto/default.toml"), PROFILE_B).unwrap();
    let out = maki(tmp.path(), tmp.path(), None, &["machine", "list"]);
    assert!(stdout(&out).contains("beta"), "{}", stdout(&out));
    // A profile named explicitly must exist.
    let out = maki(
        tmp.path(),
        tmp.path(),
        None,
        &["--profile", "nope.toml", "machine", "list"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));
}

#[test]
fn a_profile_with_a_private_key_is_rejected_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("p.toml");
    std::fs::write(&p, format!("{PROFILE_A}wg_private_key = \"secret\"\n")).unwrap();
    let out = maki(tmp.path(), tmp.path(), Some(&p), &["machine", "list"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains("wg_private_key") && err.contains("p.toml:6:"),
        "{err}"
    );
}

#[test]
fn nameserver_setup_prints_glue_and_nameservers_per_domain() {
    let dir = project("[[domain]]\nname = \"example.com\"\npath = \"./site\"\n");
    let profile = dir.path().join("team.toml");
    std::fs::write(&profile, format!("{PROFILE_A}{PROFILE_B}")).unwrap();
    let out = maki(
        dir.path(),
        dir.path(),
        None,
        &["--profile", "team.toml", "dns", "nameserver-setup"],
    );
    let text = stdout(&out);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(text.contains("  alpha.ns.example.com: 203.0.113.1, 2001:db8::1\n  beta.ns.example.com: 198.51.100.1\n"), "{text}");
    assert!(
        text.contains(
            ":: Nameservers for example.com:\n\n  alpha.ns.example.com\n  beta.ns.example.com\n"
        ),
        "{text}"
    );
    assert!(
        text.contains("dig @alpha.ns.example.com example.com"),
        "{text}"
    );
}

#[test]
fn node_commands_without_machines_say_how_to_add_one() {
    let tmp = project("[[domain]]\nname = \"example.com\"\npath = \"./site\"\n");
    let cases: [&[&str]; 4] = [
        &["sync"],
        &["peer", "add", "o11y", "--wg-pubkey", "k", "--endpoint", "e"],
        &["rollback", "example.com"],
        &["deployments", "example.com"],
    ];
    for args in cases {
        let out = maki(tmp.path(), tmp.path(), None, args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = stderr(&out);
        assert!(
            err.contains("the profile has no machines") && err.contains("maki machine list"),
            "{args:?}: {err}"
        );
    }
    // `maki health` on an empty profile is red, not green.
    let out = maki(tmp.path(), tmp.path(), None, &["health"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("no machines"), "{}", stdout(&out));
    // Bad names and targets are refused before anything is contacted.
    let out = maki(
        tmp.path(),
        tmp.path(),
        None,
        &["machine", "init", "Vector", "root@203.0.113.1"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("DNS label"), "{}", stderr(&out));
    let out = maki(
        tmp.path(),
        tmp.path(),
        None,
        &["machine", "init", "vector", "203.0.113.1"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("not user@host"), "{}", stderr(&out));
}

#[test]
fn wasm_fetch_writes_nothing_while_no_wit_is_bundled() {
    let tmp = tempfile::tempdir().unwrap();
    let out = maki(tmp.path(), tmp.path(), None, &["wasm", "fetch"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("bundles no WIT"), "{}", stderr(&out));
    assert!(!tmp.path().join("wit").exists());
}

#[test]
fn completions_cover_the_commands() {
    let tmp = tempfile::tempdir().unwrap();
    let out = maki(tmp.path(), tmp.path(), None, &["completions", "bash"]);
    let script = stdout(&out);
    assert!(out.status.success(), "{}", stderr(&out));
    for word in ["nameserver-setup", "wg-config", "--dry-run", "--profile"] {
        assert!(
            script.contains(word),
            "{word} missing from the bash completions"
        );
    }
}

#[test]
fn version_and_usage_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let out = maki(tmp.path(), tmp.path(), None, &["--version"]);
    assert_eq!(
        stdout(&out).trim(),
        format!("maki {}", env!("CARGO_PKG_VERSION"))
    );
    let out = maki(tmp.path(), tmp.path(), None, &["machine", "frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
}

/// A node's admin socket served in-process: returns the socket path and a stop handle.
fn admin_node(
    dir: &Path,
) -> (
    PathBuf,
    tokio::sync::oneshot::Sender<()>,
    std::thread::JoinHandle<()>,
) {
    use makiatto::admin::socket::{AdminState, bind, serve};
    use makiatto::store::{BlobStore, Options, Store, cluster};

    let socket = dir.join("admin.sock");
    let state = std::sync::Arc::new(AdminState {
        store: std::sync::Arc::new(
            Store::open(dir.join("db"), &cluster::SCHEMA, Options::default()).unwrap(),
        ),
        blobs: std::sync::Arc::new(BlobStore::open(dir.join("blobs")).unwrap()),
        mesh_cidr: "10.44.44.0/24".parse().unwrap(),
        mesh_port: 51880,
        membership: None,
        locator: None,
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let path = socket.clone();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async move {
            let listener = bind(&path).unwrap();
            ready_tx.send(()).unwrap();
            serve(listener, state, async {
                let _ = stopped.await;
            })
            .await;
        });
    });
    ready_rx.recv().unwrap();
    (socket, stop, thread)
}

#[test]
fn sync_deployments_rollback_and_peers_through_an_admin_socket() {
    let node_dir = tempfile::tempdir().unwrap();
    let (socket, stop, thread) = admin_node(node_dir.path());
    let socket = socket.to_str().unwrap();
    let dir = project("[[domain]]\nname = \"example.com\"\npath = \"./site\"\n");
    let run = |args: &[&str]| {
        maki(
            dir.path(),
            dir.path(),
            None,
            &[&["--socket", socket], args].concat(),
        )
    };

    let out = run(&["sync"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("example.com: deployment "),
        "{}",
        stdout(&out)
    );
    std::fs::write(dir.path().join("site/index.html"), "<h1>v2</h1>").unwrap();
    assert!(run(&["sync"]).status.success());

    let listed = stdout(&run(&["deployments", "example.com"]));
    assert_eq!(listed.lines().count(), 3, "{listed}");
    // `maki sync` activates what it deploys: the newest is marked.
    assert!(listed.lines().nth(1).unwrap().starts_with("* "), "{listed}");
    let newest = listed
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .find(|w| *w != "*")
        .unwrap()
        .to_owned();
    let oldest = listed
        .lines()
        .nth(2)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    let out = run(&["rollback", "example.com", &newest]);
    assert_eq!(
        stdout(&out),
        format!("example.com: deployment {newest} is active\n"),
        "{}",
        stderr(&out)
    );
    let out = run(&["rollback", "example.com"]);
    assert_eq!(
        stdout(&out),
        format!("example.com: deployment {oldest} is active\n"),
        "{}",
        stderr(&out)
    );
    let listed = stdout(&run(&["deployments", "example.com"]));
    assert!(
        listed
            .lines()
            .nth(2)
            .unwrap()
            .starts_with(&format!("* {oldest}")),
        "{listed}"
    );
    let out = run(&["rollback", "example.com"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("HTTP 409"), "{}", stderr(&out));

    let key = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";
    let out = run(&[
        "peer",
        "add",
        "o11y",
        "--wg-pubkey",
        key,
        "--endpoint",
        "198.51.100.7",
    ]);
    assert_eq!(
        stdout(&out),
        "peer o11y added with mesh address 10.44.44.1\n",
        "{}",
        stderr(&out)
    );
    assert!(stdout(&run(&["peer", "list"])).starts_with("o11y  10.44.44.1  198.51.100.7"));
    assert_eq!(
        run(&["peer", "wg-config", "o11y"]).status.code(),
        Some(1),
        "no node on the mesh yet"
    );
    assert!(run(&["peer", "remove", "o11y"]).status.success());
    assert_eq!(stdout(&run(&["peer", "list"])), "");

    // A domain that leaves makiatto.toml leaves the cluster.
    std::fs::write(
        dir.path().join("makiatto.toml"),
        "[[domain]]\nname = \"example.org\"\npath = \"./site\"\n",
    )
    .unwrap();
    let out = run(&["sync"]);
    assert!(
        stdout(&out).contains("example.com: removed (no longer in the project)"),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(stdout(&run(&["deployments", "example.org"])).contains("* "));

    stop.send(()).unwrap();
    thread.join().unwrap();
}
