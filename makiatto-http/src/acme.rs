//! ACME (placeholder during build-up).
