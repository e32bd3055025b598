//! `maki demo --json` as the README runs it: three real daemons on loopback addresses,
//! `examples/site` deployed, then checked from outside with the clients a user has: `dig`
//! with EDNS Client Subnet on three continents, and `curl` over HTTP and over HTTPS with
//! Pebble's root. Needs the `makiatto` daemon beside `maki` (`cargo test --workspace`
//! builds both), dig, curl, pebble and the GeoIP database (scripts/setup.d/20-dns.sh and
//! 30-http.sh).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The demo process, stopped with SIGTERM (its clean path) when the test ends.
struct Demo(Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

fn tool(name: &str, args: &[&str]) -> String {
    let out = Command::new(name)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{name} missing ({e}): run ./scripts/test"));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// `maki demo --json` from the top of the repository with the test GeoIP database and
/// `args`; checks that the daemon was built beside `maki`.
fn demo(args: &[&str]) -> Command {
    let maki = PathBuf::from(env!("CARGO_BIN_EXE_maki"));
    let daemon = maki.with_file_name("makiatto");
    assert!(
        daemon.is_file(),
        "no makiatto daemon at {} (cargo test --workspace builds it)",
        daemon.display()
    );
    let mmdb = std::env::var("MAKIATTO_TEST_MMDB")
        .expect("MAKIATTO_TEST_MMDB is not set: run scripts/setup.d/20-dns.sh (./scripts/test)");
    let mut cmd = Command::new(&maki);
    cmd.current_dir(top())
        .args(["demo", "--json", "--geoip", &mmdb])
        .args(args)
        .stdin(Stdio::null());
    cmd
}

fn top() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

#[test]
fn the_demo_serves_the_example_site_over_geodns_http_and_https() {
    let mut child = demo(&["--first-ip", "127.0.0.41", "--port-offset", "3000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let demo = Demo(child);
    // The demo prints its one line once the cluster serves (it bounds its own waits).
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not one JSON line ({e}): {line:?}"));
    let domain = v["domain"].as_str().unwrap();
    assert_eq!(domain, "example.com");
    let nodes = v["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    let ip = |i: usize| nodes[i]["ip"].as_str().unwrap().to_owned();
    let index = std::fs::read_to_string(top().join("examples/site/index.html")).unwrap();

    // GeoDNS: whichever node is asked, a client answers with the node of its continent
    // (Sydney, Amsterdam -> Frankfurt, Mountain View -> New York).
    for n in nodes {
        let (host, port) = n["dns"].as_str().unwrap().rsplit_once(':').unwrap();
        for (subnet, nearest) in [("1.1.1.0/24", 0), ("193.0.6.0/24", 1), ("8.8.8.0/24", 2)] {
            let answer = tool(
                "dig",
                &[
                    &format!("@{host}"),
                    "-p",
                    port,
                    domain,
                    "A",
                    &format!("+subnet={subnet}"),
                    "+short",
                ],
            );
            assert_eq!(answer, ip(nearest), "{subnet} asked at {host}");
        }
    }
    // The site from every node over HTTPS, with a certificate from Pebble that curl
    // verifies against Pebble's root.
    let ca = v["ca"]
        .as_str()
        .expect("HTTPS is on: pebble is installed by 30-http.sh");
    for n in nodes {
        // Port 80 redirects to HTTPS once the host has a certificate.
        let http = n["http"].as_str().unwrap();
        let got = tool(
            "curl",
            &[
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %{redirect_url}",
                "-H",
                &format!("Host: {domain}"),
                &format!("http://{http}/about.html"),
            ],
        );
        let https_port = n["https"].as_str().unwrap().rsplit_once(':').unwrap().1;
        assert_eq!(
            got,
            format!("308 https://{domain}:{https_port}/about.html"),
            "HTTP from {http}"
        );
        let (host, port) = n["https"].as_str().unwrap().rsplit_once(':').unwrap();
        let got = tool(
            "curl",
            &[
                "-sS",
                "--cacert",
                ca,
                "--resolve",
                &format!("www.{domain}:{port}:{host}"),
                &format!("https://www.{domain}:{port}/"),
            ],
        );
        assert_eq!(got, index.trim(), "HTTPS (alias) from {host}");
    }
    // Stopping it removes everything it made.
    let work = Path::new(ca).parent().unwrap().to_path_buf();
    drop(demo);
    assert!(!work.exists(), "{} left behind", work.display());
}

/// The `makiatto` processes whose parent is `pid`.
fn daemons_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...
        let Some((comm, rest)) = stat.split_once(") ") else {
            continue;
        };
        let ppid = rest.split_whitespace().nth(1).and_then(|x| x.parse().ok());
        if comm.ends_with("(makiatto") && ppid == Some(pid) {
            out.push(p);
        }
    }
    out
}

/// Stopped while it starts (SIGTERM before the cluster serves), the demo stops what it
/// started: no daemon outlives it.
#[test]
fn a_demo_interrupted_while_starting_leaves_no_daemon_behind() {
    let mut child = demo(&[
        "--no-https",
        "--first-ip",
        "127.0.0.44",
        "--port-offset",
        "3100",
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let pid = child.id();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let daemons = loop {
        let d = daemons_of(pid);
        if !d.is_empty() {
            break d;
        }
        assert!(std::time::Instant::now() < deadline, "no daemon started");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "an interrupted start is an error: {status}"
    );
    for d in daemons {
        let state = std::fs::read_to_string(format!("/proc/{d}/stat")).unwrap_or_default();
        assert!(
            state.is_empty() || state.contains(") Z "),
            "daemon {d} outlived the demo: {state}"
        );
    }
}
