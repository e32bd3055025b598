//! The `makiatto` binary: configuration checks, and a node that starts and stops on SIGTERM.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn makiatto() -> Command {
    Command::new(env!("CARGO_BIN_EXE_makiatto"))
}

#[test]
fn the_shipped_example_checks_and_mistakes_are_named_with_their_line() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../makiatto/node.example.toml");
    let out = makiatto()
        .args(["--config", example, "--check"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("config.toml");
    std::fs::write(&bad, "[node]\nname = \"n1\"\n\n[web]\nhttp_port = 80\n").unwrap();
    let out = makiatto()
        .args(["--config", bad.to_str().unwrap(), "--check"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("http_port") && err.contains(":5:"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_node_starts_and_stops_gracefully_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    let ip = format!(
        "127.{}.{}.1",
        60 + std::process::id() % 40,
        1 + std::process::id() % 250
    );
    let socket = dir.path().join("admin.sock");
    std::fs::write(
        &config,
        format!(
            "[node]\nname = \"solo\"\nlatitude = 1.0\nlongitude = 2.0\nipv4 = \"{ip}\"\n\
             data_dir = \"{}\"\n[dns]\naddr = \"{ip}:0\"\n[web]\nhttp_addr = \"{ip}:0\"\n\
             https_addr = \"{ip}:0\"\n[mesh]\nbackend = \"direct\"\ncidr = \"127.0.0.0/8\"\n\
             sync_port = 17400\n[admin]\nsocket = \"{}\"\n",
            dir.path().join("data").display(),
            socket.display()
        ),
    )
    .unwrap();
    let mut child = makiatto()
        .args(["--config", config.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "the admin socket never appeared");
        assert!(child.try_wait().unwrap().is_none(), "the node exited early");
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the node ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    assert!(dir.path().join("data/store.db").exists());
    assert!(dir.path().join("data/wg.key").exists());
}
