//! Integration tests for makiatto-store (one binary, a module per area).

mod basic;
mod model;
mod props;
mod support;
