//! makiatto-mesh integration tests: one binary (see STYLE.md §7).
//!
//! `cluster` tests need root and the tools of `scripts/setup.d/40-mesh.sh`; they fail
//! with a clear message when those are missing.

mod cluster;
mod direct;
pub mod harness;
mod trust;
mod tunnel;
