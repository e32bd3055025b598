//! Crash safety: a child process writing and merging is killed with SIGKILL; on reopen
//! no version is reused and nothing is half-applied.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use makiatto_store::{Options, Store};

use crate::support::{SCHEMA, exec};

const CHILD_ENV: &str = "MAKIATTO_STORE_CRASH_CHILD";
const ROWS_PER_TX: i64 = 5;

/// The child: commits transactions of 5 rows each, locally and by merging versions made
/// by a second store, printing each committed local version, forever.
#[test]
#[allow(clippy::print_stdout)] // the parent reads the child's stdout
fn crash_child_writer() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let store = Store::open(&path, &SCHEMA, Options::default()).unwrap();
    let remote_dir = tempfile::tempdir().unwrap();
    let remote = Store::open(remote_dir.path().join("r.db"), &SCHEMA, Options::default()).unwrap();
    let mut remote_out = remote.subscribe_local();
    for i in 0i64.. {
        let tag = format!("local-{}-{i}", std::process::id());
        store
            .write(|tx| {
                for x in 0..ROWS_PER_TX {
                    tx.execute(
                        "INSERT INTO pair (x, y, v) VALUES (?1, ?2, zeroblob(2000))",
                        rusqlite::params![x, &tag],
                    )?;
                }
                Ok(())
            })
            .unwrap();
        println!("committed {}", store.known().0[&store.site()][0].1);
        let rtag = format!("remote-{}-{i}", std::process::id());
        remote
            .write(|tx| {
                for x in 0..ROWS_PER_TX {
                    tx.execute(
                        "INSERT INTO pair (x, y, v) VALUES (?1, ?2, zeroblob(2000))",
                        rusqlite::params![x, &rtag],
                    )?;
                }
                Ok(())
            })
            .unwrap();
        let change = remote_out.try_recv().unwrap();
        store.merge(&[(*change).clone()]).unwrap();
    }
}

#[test]
fn kill_during_writes_reuses_no_version_and_leaves_nothing_half_applied() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.db");
    for round in 0..3 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "crash::crash_child_writer",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut last = 0u64;
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            // libtest prints its own prefix on the first line.
            if let Some(at) = line.find("committed ") {
                last = line[at + "committed ".len()..].trim().parse().unwrap();
                if last >= 40 * (round + 1) {
                    break;
                }
            }
        }
        child.kill().unwrap(); // SIGKILL, in the middle of the next transactions
        child.wait().unwrap();
        assert!(last > 0, "child committed nothing");

        let store = Store::open(&path, &SCHEMA, Options::default()).unwrap();
        let ranges = store.known().0[&store.site()].clone();
        assert_eq!(ranges.len(), 1, "own versions are dense: {ranges:?}");
        let self_ver = ranges[0].1;
        assert!(
            self_ver >= last,
            "a committed version was lost: {self_ver} < {last}"
        );
        let (groups, max_ver): (Vec<(String, i64)>, i64) = store
            .read(|c| {
                let mut stmt = c.prepare("SELECT y, count(*) FROM pair GROUP BY y")?;
                let groups = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<rusqlite::Result<_>>()?;
                let max_ver = c.query_row(
                    "SELECT max(ver) FROM pair__crr_clock WHERE site_ord = (SELECT ord FROM crr_sites WHERE site = \
                     (SELECT value FROM crr_meta WHERE key = 'self_site'))",
                    [],
                    |r| r.get(0),
                )?;
                Ok((groups, max_ver))
            })
            .unwrap();
        for (tag, n) in &groups {
            assert_eq!(*n, ROWS_PER_TX, "transaction {tag} half-applied");
        }
        assert!(
            groups.iter().any(|(t, _)| t.starts_with("remote-")),
            "merges happened"
        );
        assert_eq!(
            max_ver as u64, self_ver,
            "clock rows name a version beyond self_ver"
        );
        // The next local write takes the next version, never a reused one.
        exec(
            &store,
            "INSERT OR REPLACE INTO kv (k) VALUES ('after-crash')",
        );
        assert_eq!(store.known().0[&store.site()], vec![(1, self_ver + 1)]);
    }
}
