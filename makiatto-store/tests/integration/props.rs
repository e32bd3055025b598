//! Property tests: the store against the reference model, and the invariants of
//! replication.md §3.14.

use std::collections::BTreeSet;
use std::sync::Arc;

use makiatto_store::{Change, Frame, Options, Store, Value};
use proptest::prelude::*;
use tokio::sync::broadcast::Receiver;

use crate::model::{self, Dump, Model, Op};
use crate::support::*;

pub(crate) const HOUR: i64 = 3_600_000;
const BASE_MS: u64 = 1_800_000_000_000;

#[derive(Debug, Clone)]
pub(crate) enum Step {
    /// A local transaction on a node, after time moves on.
    Local {
        node: usize,
        ops: Vec<Op>,
        advance_ms: u64,
    },
    /// Delivery of one version (possibly a duplicate, in any order) from one node's
    /// history to another node.
    Deliver { from: usize, to: usize, pick: usize },
    /// Several versions merged in one batch.
    Batch {
        to: usize,
        picks: Vec<(usize, usize)>,
    },
    /// A sync session, possibly cut short by a small byte budget.
    Sync { from: usize, to: usize, budget: u64 },
}

fn arb_value_text() -> impl Strategy<Value = Value> {
    prop_oneof![Just(Value::Null), "[a-c]{1,2}".prop_map(Value::Text)]
}

fn arb_op() -> impl Strategy<Value = Op> {
    let kv_pk = "[pqr]".prop_map(|k| vec![Value::Text(k)]);
    let pair_pk = (0i64..2, "[xy]").prop_map(|(x, y)| vec![Value::Int(x), Value::Text(y)]);
    let blob = prop_oneof![
        Just(Value::Null),
        proptest::collection::vec(0u8..3, 0..3).prop_map(Value::Blob)
    ];
    prop_oneof![
        3 => (kv_pk.clone(), arb_value_text(), 0i64..3).prop_map(|(pk, a, b)| Op::Put { table: 0, pk, values: vec![a, Value::Int(b)] }),
        3 => (kv_pk.clone(), arb_value_text()).prop_map(|(pk, v)| Op::Set { table: 0, pk, col: 0, value: v }),
        2 => (kv_pk.clone(), 0i64..3).prop_map(|(pk, v)| Op::Set { table: 0, pk, col: 1, value: Value::Int(v) }),
        2 => kv_pk.prop_map(|pk| Op::Del { table: 0, pk }),
        2 => (pair_pk.clone(), blob.clone()).prop_map(|(pk, v)| Op::Put { table: 1, pk, values: vec![v] }),
        1 => (pair_pk.clone(), blob).prop_map(|(pk, v)| Op::Set { table: 1, pk, col: 0, value: v }),
        1 => pair_pk.prop_map(|pk| Op::Del { table: 1, pk }),
    ]
}

pub(crate) fn arb_step(nodes: usize) -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..nodes, proptest::collection::vec(arb_op(), 1..4), 0u64..3_000)
            .prop_map(|(node, ops, advance_ms)| Step::Local { node, ops, advance_ms }),
        3 => (0..nodes, 0..nodes, any::<usize>()).prop_map(|(from, to, pick)| Step::Deliver { from, to, pick }),
        1 => (0..nodes, proptest::collection::vec((0..nodes, any::<usize>()), 1..5))
            .prop_map(|(to, picks)| Step::Batch { to, picks }),
        2 => (0..nodes, 0..nodes, prop_oneof![Just(200u64), Just(u64::MAX)])
            .prop_map(|(from, to, budget)| Step::Sync { from, to, budget }),
    ]
}

struct Replica {
    node: Node,
    model: Model,
    clock: Arc<TestClock>,
    skew_ms: i64,
    outbox: Receiver<Arc<Change>>,
    history: Vec<Change>,
}

impl Replica {
    fn new(skew_ms: i64) -> Self {
        let clock = TestClock::new(BASE_MS);
        let node = node_with(Options {
            clock: clock.clone(),
            ..Options::default()
        });
        let outbox = node.store.subscribe_local();
        let model = Model::new(node.store.site());
        Replica {
            node,
            model,
            clock,
            skew_ms,
            outbox,
            history: Vec::new(),
        }
    }
    fn store(&self) -> &Store {
        &self.node.store
    }
}

/// Runs a sync session between two replicas, feeding the same frames to the store and the
/// model. Returns whether it was complete.
fn sync(rs: &mut [Replica], from: usize, to: usize, budget: u64) -> bool {
    let req = rs[to].store().sync_request(budget);
    let frames = rs[from].store().serve_sync(&req).unwrap();
    let done = rs[to]
        .store()
        .apply_sync(frames.clone())
        .unwrap()
        .expect("SyncDone");
    let mut parts: Vec<makiatto_store::Cell> = Vec::new();
    for f in frames {
        match f {
            Frame::Version {
                site,
                ver,
                ts,
                last_part,
                cells,
                ..
            } => {
                parts.extend(cells);
                if last_part {
                    rs[to].model.merge_again(&Change {
                        site,
                        ver,
                        ts,
                        cells: std::mem::take(&mut parts),
                    });
                }
            }
            Frame::Cleared { site, ranges } => rs[to].model.clear(site, &ranges),
            _ => {}
        }
    }
    done.0
}

fn check_equal(r: &Replica, context: &str) -> Result<(), TestCaseError> {
    let d = model::dump(r.store());
    prop_assert_eq!(
        &d,
        &r.model.rows,
        "store differs from model after {}",
        context
    );
    let known: Vec<_> = r
        .model
        .known
        .iter()
        .map(|(s, k)| (*s, k.to_pairs()))
        .filter(|(_, p)| !p.is_empty())
        .collect();
    let store_known: Vec<_> = r
        .store()
        .known()
        .0
        .into_iter()
        .filter(|(_, p)| !p.is_empty())
        .collect();
    prop_assert_eq!(store_known, known, "known sets differ after {}", context);
    Ok(())
}

fn event_rows(rx: &mut Receiver<Arc<makiatto_store::CommitEvent>>) -> BTreeSet<(String, Vec<u8>)> {
    let mut out = BTreeSet::new();
    while let Ok(e) = rx.try_recv() {
        for c in &e.changes {
            out.insert((c.table.to_string(), c.pk.to_vec()));
        }
    }
    out
}

pub(crate) fn run(steps: Vec<Step>, skews: [i64; 3]) -> Result<(), TestCaseError> {
    let mut rs: Vec<Replica> = skews.iter().map(|&s| Replica::new(s)).collect();
    let mut now = BASE_MS;
    for (i, step) in steps.into_iter().enumerate() {
        let ctx = format!("step {i}: {step:?}");
        match step {
            Step::Local {
                node,
                ops,
                advance_ms,
            } => {
                now += advance_ms;
                let r = &mut rs[node];
                let local_now = (now as i64 + r.skew_ms) as u64;
                r.clock.set(local_now);
                r.store()
                    .write(|tx| {
                        for op in &ops {
                            model::run_op(tx, op)?;
                        }
                        Ok(())
                    })
                    .unwrap();
                let change = r.outbox.try_recv().ok();
                let wrote = r.model.local(&ops, change.as_ref().map_or(0, |c| c.ts));
                prop_assert_eq!(
                    wrote,
                    change.is_some(),
                    "a version iff something was written ({})",
                    ctx
                );
                if let Some(c) = change {
                    prop_assert!(c.ts >> 16 >= local_now, "HLC not behind physical time");
                    r.history.push((*c).clone());
                }
                check_equal(&rs[node], &ctx)?;
            }
            Step::Deliver { from, to, pick } => {
                if rs[from].history.is_empty() || from == to {
                    continue;
                }
                let c = rs[from].history[pick % rs[from].history.len()].clone();
                let mut events = rs[to].store().subscribe();
                let before = rs[to].model.rows.clone();
                rs[to].store().merge(std::slice::from_ref(&c)).unwrap();
                rs[to].model.merge(&c);
                check_equal(&rs[to], &ctx)?;
                // Events iff a visible change (once per version; a duplicate says nothing).
                let expected = Model::visible_diff(&before, &rs[to].model.rows);
                prop_assert_eq!(event_rows(&mut events), expected, "events after {}", ctx);
            }
            Step::Batch { to, picks } => {
                let batch: Vec<Change> = picks
                    .iter()
                    .filter(|(from, _)| *from != to && !rs[*from].history.is_empty())
                    .map(|&(from, pick)| rs[from].history[pick % rs[from].history.len()].clone())
                    .collect();
                rs[to].store().merge(&batch).unwrap();
                for c in &batch {
                    rs[to].model.merge(c);
                }
                check_equal(&rs[to], &ctx)?;
            }
            Step::Sync { from, to, budget } => {
                if from == to {
                    continue;
                }
                let complete = sync(&mut rs, from, to, budget);
                check_equal(&rs[to], &ctx)?;
                if complete {
                    // Sync completeness: the requester now knows all the responder knows,
                    // and every winner on the responder is matched or beaten.
                    let (a, b) = (rs[to].store().known(), rs[from].store().known());
                    prop_assert!(a.is_superset(&b), "known not a superset after {}", ctx);
                    check_dominates(&rs[to].model.rows, &rs[from].model.rows, &ctx)?;
                }
            }
        }
    }
    // Heal: full pulls until nothing moves; everything converges.
    for _ in 0..2 {
        for to in 0..rs.len() {
            for from in 0..rs.len() {
                if from != to {
                    prop_assert!(sync(&mut rs, from, to, u64::MAX));
                }
            }
        }
    }
    let c0 = model::canonical(&rs[0].model.rows);
    let h0 = rs[0].store().canonical_hash().unwrap();
    for r in &rs[1..] {
        prop_assert_eq!(
            &model::canonical(&r.model.rows),
            &c0,
            "models did not converge"
        );
        prop_assert_eq!(
            r.store().canonical_hash().unwrap(),
            h0,
            "stores did not converge"
        );
        prop_assert_eq!(r.store().known(), rs[0].store().known());
    }
    for r in &rs {
        check_equal(r, "heal")?;
    }
    Ok(())
}

fn check_dominates(a: &Dump, b: &Dump, ctx: &str) -> Result<(), TestCaseError> {
    for (key, rb) in b {
        let ra = a.get(key);
        let cl_a = ra.and_then(|r| r.sentinel).map_or(0, |s| s.cv);
        let cl_b = rb.sentinel.map_or(0, |s| s.cv);
        prop_assert!(
            cl_a >= cl_b,
            "row {:?} older generation on requester after {}",
            key,
            ctx
        );
        if cl_a > cl_b {
            continue;
        }
        for (cid, cb) in rb.clocks.iter().filter(|(_, c)| c.cv > 0) {
            let ca = ra.and_then(|r| r.clocks.get(cid));
            prop_assert!(
                ca.is_some_and(|ca| (ca.cv, ca.ts, ca.site) >= (cb.cv, cb.ts, cb.site)),
                "cell {:?}.{} not dominated after {}",
                key,
                cid,
                ctx
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, max_shrink_iters: 2000, ..ProptestConfig::default() })]

    /// The store equals the model after every step; converges whatever the delivery order,
    /// duplication, batching or budget; events iff visible changes; sync completeness.
    #[test]
    fn store_matches_model_and_converges(
        steps in proptest::collection::vec(arb_step(3), 1..40),
        skews in [-HOUR..HOUR, -HOUR..HOUR, -HOUR..HOUR],
    ) {
        run(steps, skews)?;
    }

    /// Causality: a write made after merging another write of the same cell wins
    /// everywhere, whatever the clock skew (the later writer may be an hour behind).
    #[test]
    fn causality_beats_clock_skew(skew_a in -HOUR..HOUR, skew_b in -HOUR..HOUR, rounds in 1usize..5) {
        let a = Replica::new(skew_a);
        let b = Replica::new(skew_b);
        a.clock.set((BASE_MS as i64 + skew_a) as u64);
        b.clock.set((BASE_MS as i64 + skew_b) as u64);
        exec(a.store(), "INSERT INTO kv (k, a) VALUES ('c', 'a0')");
        let mut last = "a0".to_string();
        for i in 0..rounds {
            // B sees A's write, then writes; then A sees B's write, then writes.
            pull(b.store(), a.store());
            last = format!("b{i}");
            b.store().write(|tx| Ok(tx.execute("UPDATE kv SET a = ?1 WHERE k = 'c'", [&last])?)).unwrap();
            pull(a.store(), b.store());
            last = format!("a{i}");
            a.store().write(|tx| Ok(tx.execute("UPDATE kv SET a = ?1 WHERE k = 'c'", [&last])?)).unwrap();
        }
        pull(b.store(), a.store());
        prop_assert_eq!(get_kv(a.store(), "c").unwrap().0, Some(last.clone()));
        prop_assert_eq!(get_kv(b.store(), "c").unwrap().0, Some(last));
    }

    /// Merging the same versions in any order and any batching gives the same state as
    /// merging them one by one, and merging twice equals merging once.
    #[test]
    fn order_and_batching_do_not_matter(steps in proptest::collection::vec((0usize..3, proptest::collection::vec(arb_op(), 1..3)), 1..12), seed in any::<u64>()) {
        let writers: Vec<Replica> = (0..3).map(|_| Replica::new(0)).collect();
        let mut all: Vec<Change> = Vec::new();
        let mut w = writers;
        for (i, (n, ops)) in steps.iter().enumerate() {
            w[*n].clock.set(BASE_MS + i as u64 * 10);
            w[*n].store().write(|tx| { for op in ops { model::run_op(tx, op)?; } Ok(()) }).unwrap();
            if let Ok(c) = w[*n].outbox.try_recv() { all.push((*c).clone()); }
            // Writers see each other now and then, so later writes depend on earlier ones.
            if i % 3 == 2 { let (a, b) = (i % 3, (i + 1) % 3); pull(w[a].store(), w[b].store()); }
        }
        let one_by_one = Replica::new(0);
        for c in &all { one_by_one.store().merge(std::slice::from_ref(c)).unwrap(); }
        let mut shuffled = all.clone();
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
        rand::seq::SliceRandom::shuffle(shuffled.as_mut_slice(), &mut rng);
        let batched = Replica::new(0);
        for chunk in shuffled.chunks(3) { batched.store().merge(chunk).unwrap(); }
        let h = one_by_one.store().canonical_hash().unwrap();
        prop_assert_eq!(batched.store().canonical_hash().unwrap(), h);
        // Idempotence: everything again, in one batch: no change, reported as duplicates.
        let report = batched.store().merge(&all).unwrap();
        prop_assert_eq!(report.applied, 0);
        prop_assert_eq!(report.duplicates, all.len());
        prop_assert_eq!(batched.store().canonical_hash().unwrap(), h);
    }
}
