//! Cluster schema.
