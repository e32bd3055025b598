#!/usr/bin/env bash
# Replication latency on 3 real nodes (namespaces, boringtun tunnels): a write on one node
# visible on the other two, p50/p99 over LATENCY_SAMPLES writes (default 200). Root.
# Runs the ignored `replication_latency` test of makiatto-mesh's cluster harness.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/makiatto/target}
cargo test -q -p makiatto-mesh --test integration -- --ignored --exact cluster::replication_latency --nocapture 2>&1 \
  | grep -E '^LATENCY|test result|panicked'
