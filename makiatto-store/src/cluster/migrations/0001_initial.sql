-- Makiatto cluster schema, migration 1.
--
-- Every table here is replicated (see cluster/mod.rs for the rules): STRICT, explicit
-- NOT NULL primary key, no UNIQUE besides it, no FOREIGN KEY, no AUTOINCREMENT, a DEFAULT
-- on every non-key NOT NULL column, no triggers. Timestamps are INTEGER unix milliseconds.
-- Compound values are postcard BLOBs (a version tag first).

-- Durable. Owner: the node the row describes (written on join; deleted on removal).
CREATE TABLE nodes (
    name TEXT NOT NULL PRIMARY KEY,
    wg_public_key TEXT NOT NULL DEFAULT '',
    wg_endpoint TEXT NOT NULL DEFAULT '',
    mesh_address TEXT NOT NULL DEFAULT '',
    ipv4 TEXT NOT NULL DEFAULT '',
    ipv6 TEXT,
    latitude REAL NOT NULL DEFAULT 0.0,
    longitude REAL NOT NULL DEFAULT 0.0,
    is_nameserver INTEGER NOT NULL DEFAULT 0,
    site_id TEXT NOT NULL DEFAULT '',
    created_ms INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE INDEX nodes_site_id ON nodes (site_id);

-- Durable. Owner: whoever deploys (the active deployment is a last-writer-wins pointer).
CREATE TABLE domains (
    name TEXT NOT NULL PRIMARY KEY,
    active_deployment TEXT,
    updated_ms INTEGER NOT NULL DEFAULT 0
) STRICT;

-- Durable. Owner: whoever deploys the domain.
CREATE TABLE aliases (
    alias TEXT NOT NULL PRIMARY KEY,
    domain TEXT NOT NULL DEFAULT ''
) STRICT;
CREATE INDEX aliases_domain ON aliases (domain);

-- Ephemeral (random ids). Owner: the deployment that produced it, or an operator.
CREATE TABLE dns_records (
    id TEXT NOT NULL PRIMARY KEY,
    domain TEXT NOT NULL DEFAULT '',
    name TEXT NOT NULL DEFAULT '@',
    rtype TEXT NOT NULL DEFAULT '',
    value TEXT NOT NULL DEFAULT '',
    ttl INTEGER NOT NULL DEFAULT 300,
    priority INTEGER,
    deployment_id TEXT
) STRICT;
CREATE INDEX dns_records_lookup ON dns_records (domain, name, rtype);
CREATE INDEX dns_records_deployment ON dns_records (deployment_id);

-- Ephemeral (random ids), insert-only. Owner: the deploying client.
CREATE TABLE deployments (
    id TEXT NOT NULL PRIMARY KEY,
    domain TEXT NOT NULL DEFAULT '',
    created_ms INTEGER NOT NULL DEFAULT 0,
    created_by TEXT NOT NULL DEFAULT '',
    config BLOB NOT NULL DEFAULT x'',
    manifest_hash TEXT NOT NULL DEFAULT ''
) STRICT;
CREATE INDEX deployments_domain ON deployments (domain, created_ms);

-- Ephemeral (keyed by a deployment id), insert-only. Owner: the deploying client.
CREATE TABLE deployment_files (
    deployment_id TEXT NOT NULL,
    path TEXT NOT NULL,
    hash TEXT NOT NULL DEFAULT '',
    size INTEGER NOT NULL DEFAULT 0,
    mode INTEGER NOT NULL DEFAULT 420,
    PRIMARY KEY (deployment_id, path)
) STRICT;
CREATE INDEX deployment_files_hash ON deployment_files (hash);

-- Ephemeral (keyed by a deployment id). Owner: the node named in the key.
CREATE TABLE deployment_activations (
    deployment_id TEXT NOT NULL,
    node TEXT NOT NULL,
    activated_ms INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL DEFAULT 'pending',
    error TEXT,
    PRIMARY KEY (deployment_id, node)
) STRICT;
CREATE INDEX deployment_activations_node ON deployment_activations (node);

-- Ephemeral (fingerprint ids), insert-only. Owner: the node that obtained it.
CREATE TABLE certificates (
    id TEXT NOT NULL PRIMARY KEY,
    domain TEXT NOT NULL DEFAULT '',
    names BLOB NOT NULL DEFAULT x'',
    bundle BLOB NOT NULL DEFAULT x'',
    not_before_ms INTEGER NOT NULL DEFAULT 0,
    not_after_ms INTEGER NOT NULL DEFAULT 0,
    created_ms INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE INDEX certificates_validity ON certificates (not_after_ms);
CREATE INDEX certificates_domain ON certificates (domain);

-- Ephemeral (ACME tokens). Owner: the node running the order.
CREATE TABLE acme_challenges (
    token TEXT NOT NULL PRIMARY KEY,
    kind TEXT NOT NULL DEFAULT 'http-01',
    name TEXT NOT NULL DEFAULT '',
    value TEXT NOT NULL DEFAULT '',
    expires_ms INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE INDEX acme_challenges_name ON acme_challenges (name);

-- Durable (keyed by directory URL). Owner: the node that registered it.
CREATE TABLE acme_accounts (
    id TEXT NOT NULL PRIMARY KEY,
    credentials BLOB NOT NULL DEFAULT x'',
    contact TEXT NOT NULL DEFAULT '',
    created_ms INTEGER NOT NULL DEFAULT 0
) STRICT;

-- Ephemeral (keyed by a deployment id), insert-only. Owner: the deploying client.
CREATE TABLE functions (
    deployment_id TEXT NOT NULL,
    route TEXT NOT NULL,
    wasm TEXT NOT NULL DEFAULT '',
    config BLOB NOT NULL DEFAULT x'',
    PRIMARY KEY (deployment_id, route)
) STRICT;

-- Ephemeral (keyed by a deployment id), insert-only. Owner: the deploying client.
CREATE TABLE transforms (
    deployment_id TEXT NOT NULL,
    ordinal INTEGER NOT NULL,
    wasm TEXT NOT NULL DEFAULT '',
    files TEXT NOT NULL DEFAULT '',
    config BLOB NOT NULL DEFAULT x'',
    PRIMARY KEY (deployment_id, ordinal)
) STRICT;

-- Durable. Owner: the operator (maki peer add/remove).
CREATE TABLE external_peers (
    name TEXT NOT NULL PRIMARY KEY,
    wg_public_key TEXT NOT NULL DEFAULT '',
    endpoint TEXT,
    mesh_address TEXT NOT NULL DEFAULT '',
    created_ms INTEGER NOT NULL DEFAULT 0
) STRICT;

-- Durable. Owner: the node named in the key.
CREATE TABLE node_health (
    node TEXT NOT NULL PRIMARY KEY,
    status TEXT NOT NULL DEFAULT 'unknown',
    detail TEXT NOT NULL DEFAULT '',
    updated_ms INTEGER NOT NULL DEFAULT 0,
    version TEXT NOT NULL DEFAULT ''
) STRICT;

-- Durable. Owner: the current holder (holder and expiry are one column).
CREATE TABLE leases (
    name TEXT NOT NULL PRIMARY KEY,
    state BLOB NOT NULL DEFAULT x''
) STRICT;
