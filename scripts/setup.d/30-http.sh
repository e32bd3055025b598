# Sourced by scripts/test: what makiatto-http's tests need.
#   curl                        real-client checks (HTTP/1.1, h2c, HTTP/2 over TLS)
#   pebble                      Let's Encrypt's test CA and pebble-challtestsrv (ACME tests)
#   ca-certificates             curl's default trust store
ensure_packages curl pebble ca-certificates
