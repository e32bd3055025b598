//! Integration tests for makiatto-store (one binary, a module per area).

mod basic;
mod capture;
mod completeness;
mod crash;
mod faults;
mod model;
mod own_clock;
mod props;
mod sim;
mod support;
