//! Integration tests against a running server, with real `dig` and `kdig` and the real DB-IP
//! city database (see scripts/setup.d/20-dns.sh). Missing prerequisites fail the tests.

mod geo;
#[cfg(target_os = "linux")]
mod gso;
mod limits;
mod malformed;
#[cfg(target_os = "linux")]
mod pktinfo;
mod semantics;
mod support;
mod swap;
