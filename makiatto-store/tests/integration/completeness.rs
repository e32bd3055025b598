//! Known gaps: property failures that are understood and documented but not yet fixed,
//! kept runnable so the fix can be checked (`cargo test -p makiatto-store --test
//! integration -- --ignored known_gaps`). See docs/replication.md, "Known gaps".

use proptest::prelude::*;

use crate::props::{HOUR, arb_step, run};

proptest! {
    #![proptest_config(ProptestConfig { cases: 1, max_shrink_iters: 0, ..ProptestConfig::default() })]

    /// Sync completeness after byte-budgeted sessions with three replicas: replica A takes a
    /// budget-limited session from B that carries version V without V's cells that B has
    /// already superseded by W (or marks V cleared), and the budget ends the session before
    /// W; a later complete sync from C, which holds V but not W, then skips V, so A neither
    /// has V's cell nor W's. All replicas still converge once W arrives (the heal at the end
    /// of `run` passes); what fails is the check that a complete sync alone makes A
    /// dominate C. The saved seed in proptest-regressions/known_gaps.txt fails about 40 %
    /// of runs (site ids are random, and they order the sites a session walks).
    #[test]
    #[ignore = "known gap: sync completeness across budget-limited sessions (docs/replication.md)"]
    fn budgeted_sessions_can_leave_a_superseded_cell_missing(
        steps in proptest::collection::vec(arb_step(3), 1..40),
        skews in [-HOUR..HOUR, -HOUR..HOUR, -HOUR..HOUR],
    ) {
        run(steps, skews)?;
    }
}
