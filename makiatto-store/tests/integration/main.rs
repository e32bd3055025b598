//! Integration tests for makiatto-store (one binary, a module per area).

mod basic;
mod crash;
mod faults;
mod completeness;
mod model;
mod props;
mod sim;
mod support;
