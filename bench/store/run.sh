#!/usr/bin/env bash
# Replicated-store benchmark: ours vs plain rusqlite writes, merge throughput, a 100k-row
# sync over loopback TCP, and convergence of 50 replicas over the in-memory transport, in one
# run. Figures go to stdout; record them in BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/lib.sh
use_target_cache
cargo run --locked --release -q -p makiatto-bench --bin store
cargo run --locked --release -q -p makiatto-bench --bin replication
