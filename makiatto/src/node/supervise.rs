//! Keeping subsystem tasks alive: a task that ends or panics without being asked to is
//! restarted with exponential backoff, and every subsystem's state is kept in [`Health`],
//! which the node writes to its `node_health` row.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::store::cluster::node_health::HealthStatus;

/// First pause before a restart.
const BACKOFF_MIN: Duration = Duration::from_millis(250);
/// Longest pause between restarts.
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A task that ran this long before failing restarts after the shortest pause again.
const STABLE_AFTER: Duration = Duration::from_secs(60);

/// The state of one subsystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubsystemState {
    /// Running normally.
    Running,
    /// Running, with a problem worth reporting (e.g. a deployment that cannot be fetched).
    Degraded(String),
    /// Failed; restarting after a pause.
    Restarting {
        /// Restarts so far.
        restarts: u32,
        /// The last error.
        error: String,
    },
    /// Stopped by the node's shutdown.
    Stopped,
}

/// Every subsystem's state, shared by the node's tasks.
#[derive(Debug, Clone)]
pub struct Health {
    states: Arc<Mutex<BTreeMap<&'static str, SubsystemState>>>,
    changed: Arc<watch::Sender<u64>>,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            states: Arc::default(),
            changed: Arc::new(watch::channel(0).0),
        }
    }
}

impl Health {
    /// Records the state of `subsystem`.
    pub fn set(&self, subsystem: &'static str, state: SubsystemState) {
        let changed = {
            let mut states = self.states.lock().unwrap_or_else(PoisonError::into_inner);
            states.insert(subsystem, state.clone()) != Some(state)
        };
        if changed {
            self.changed.send_modify(|n| *n += 1);
        }
    }

    /// Every subsystem's state, by name.
    pub fn snapshot(&self) -> BTreeMap<&'static str, SubsystemState> {
        self.states
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The overall status and a one-line detail for the `node_health` row.
    pub fn summary(&self) -> (HealthStatus, String) {
        let states = self.snapshot();
        let mut problems = Vec::new();
        for (name, state) in &states {
            match state {
                SubsystemState::Running | SubsystemState::Stopped => {}
                SubsystemState::Degraded(why) => problems.push(format!("{name}: {why}")),
                SubsystemState::Restarting { restarts, error } => {
                    problems.push(format!("{name}: restarting ({restarts}x): {error}"));
                }
            }
        }
        if states.values().all(|s| *s == SubsystemState::Stopped) && !states.is_empty() {
            return (HealthStatus::Unhealthy, "stopped".into());
        }
        if problems.is_empty() {
            (HealthStatus::Healthy, "ok".into())
        } else {
            (HealthStatus::Degraded, problems.join("; "))
        }
    }

    /// Notified whenever a state changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

/// Aborts the task when dropped (the supervisor itself aborted at shutdown must not leave
/// its task running detached).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs `start()` until `cancel` fires, restarting it with backoff whenever it returns or
/// panics on its own. `start` gets the token and must return soon after it fires.
pub(crate) async fn supervise<F, Fut>(
    name: &'static str,
    health: Health,
    cancel: CancellationToken,
    mut start: F,
) where
    F: FnMut(CancellationToken) -> Fut + Send,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let mut backoff = BACKOFF_MIN;
    let mut restarts = 0u32;
    loop {
        if cancel.is_cancelled() {
            break;
        }
        health.set(name, SubsystemState::Running);
        let started = Instant::now();
        let mut running = AbortOnDrop(tokio::spawn(start(cancel.clone())));
        let outcome = (&mut running.0).await;
        if cancel.is_cancelled() {
            break;
        }
        let error = match outcome {
            Ok(Ok(())) => "ended unexpectedly".to_owned(),
            Ok(Err(e)) => e,
            Err(join) if join.is_panic() => "panicked".to_owned(),
            Err(_) => "was cancelled".to_owned(),
        };
        if started.elapsed() > STABLE_AFTER {
            backoff = BACKOFF_MIN;
        }
        restarts += 1;
        tracing::warn!(subsystem = name, %error, ?backoff, "subsystem failed; restarting");
        health.set(
            name,
            SubsystemState::Restarting {
                restarts,
                error: error.clone(),
            },
        );
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
    health.set(name, SubsystemState::Stopped);
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test]
    async fn a_failing_task_is_restarted_and_reported() {
        let health = Health::default();
        let cancel = CancellationToken::new();
        let runs = Arc::new(AtomicU32::new(0));
        let counted = Arc::clone(&runs);
        let task = tokio::spawn(supervise(
            "flaky",
            health.clone(),
            cancel.clone(),
            move |token| {
                let n = counted.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n < 2 {
                        assert!(n != 1, "second run panics");
                        return Err("boom".to_owned());
                    }
                    token.cancelled().await;
                    Ok(())
                }
            },
        ));
        let mut changes = health.subscribe();
        let mut seen = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), async {
            while runs.load(Ordering::SeqCst) < 3 {
                let _ = changes.changed().await;
                seen.push((health.snapshot()["flaky"].clone(), health.summary().0));
            }
        })
        .await
        .expect("restarted twice");
        assert!(seen.contains(&(
            SubsystemState::Restarting {
                restarts: 2,
                error: "panicked".into()
            },
            HealthStatus::Degraded
        )));
        assert!(seen.iter().any(|(s, _)| matches!(s, SubsystemState::Restarting { restarts: 1, error } if error == "boom")));
        cancel.cancel();
        task.await.unwrap();
        assert_eq!(health.snapshot()["flaky"], SubsystemState::Stopped);
    }
}
