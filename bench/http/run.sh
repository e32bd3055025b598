#!/usr/bin/env bash
# makiatto-http (examples/static_site, release) against nginx and h2o serving the same
# files with the same load as ../shared/peers/http_*.sh, so figures compare with the
# anchors there:  wrk -t1 -c64 -d${SECS}s --timeout 5s  on 1 KB / 100 KB / 1 MB files over
# HTTP/1.1 keep-alive, and the 1 KB file over HTTPS (self-signed P-256, TLS 1.3).
# Every server gets the same thread budget (THREADS, default 1).
#
#   bench/http/run.sh            # env: SECS (10), RUNS (1), THREADS (1), PEERS ("nginx h2o")
# Prints one RESULT line per run, then a table with the ratio ours / best peer.
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS=${SECS:-10}; RUNS=${RUNS:-1}; THREADS=${THREADS:-1}; PEERS=${PEERS:-"nginx h2o"}
W=/tmp/makiatto-bench-http; WWW=$W/www; mkdir -p "$WWW"
OUT=$W/results.txt; : > "$OUT"
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

need=(wrk curl openssl python3)
for p in $PEERS; do need+=("$p"); done
missing=(); for p in "${need[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  [ -e /usr/sbin/policy-rc.d ] || { printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; RM_POLICY=1; }
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  [ "${RM_POLICY:-0}" = 1 ] && rm -f /usr/sbin/policy-rc.d
fi

# The peers' files (same recipe as ../shared/peers/_lib.sh make_www).
[ -s $WWW/index.html ] || python3 - <<PY
body = "<!doctype html><html><head><title>peer bench</title></head><body>\n" + \
       "".join("<p>line %03d of the one kilobyte test page</p>\n" % i for i in range(20))
body = body[:1024 - len("</body></html>\n")] + "</body></html>\n"
open("$WWW/index.html", "w").write(body)
PY
[ -s $WWW/100kb.bin ] || head -c 102400 /dev/urandom > $WWW/100kb.bin
[ -s $WWW/1mb.bin ] || head -c 1048576 /dev/urandom > $WWW/1mb.bin
chmod 755 $W $WWW; chmod 644 $WWW/*
[ -s $W/cert.pem ] || openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
  -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
  -keyout $W/key.pem -out $W/cert.pem 2>/dev/null

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/makiatto/target}
cargo build -q --release -p makiatto-http --example static_site
OURS=$CARGO_TARGET_DIR/release/examples/static_site

wait_port() { for _ in $(seq 1 100); do ss -ltnH "sport = :$1" | grep -q . && return 0; sleep 0.1; done; echo "port $1 did not open" >&2; return 1; }
ticks() { local t=0 p; for p in $1 $(ps -o pid= --ppid "$1"); do [ -r /proc/$p/stat ] && t=$((t + $(awk '{sub(/^.*\) /,""); print $12+$13}' /proc/$p/stat))); done; echo $t; }
check() { local base=$1 f want got; for f in index.html 100kb.bin 1mb.bin; do
  want=$(stat -c %s $WWW/$f); got=$(curl -sk -o /dev/null -w '%{http_code}:%{size_download}' "$base/$f")
  [ "$got" = "200:$want" ] || { echo "check failed $base/$f -> $got" >&2; exit 1; }; done; }
bench() { # name pid url file
  local name=$1 pid=$2 url=$3 f=$4 run out t0 t1 w0 w1
  for run in $(seq 1 "$RUNS"); do
    t0=$(ticks "$pid"); w0=$(date +%s.%N)
    out=$(wrk -t1 -c64 -d"${SECS}s" --timeout 5s "$url/$f" 2>&1)
    t1=$(ticks "$pid"); w1=$(date +%s.%N)
    local cpu; cpu=$(awk -v a="$t0" -v b="$t1" -v x="$w0" -v y="$w1" -v hz="$(getconf CLK_TCK)" 'BEGIN{printf "%.0f",(b-a)/hz/(y-x)*100}')
    local rps tps non2xx errs
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out"); tps=$(awk '/Transfer\/sec/ {print $2}' <<<"$out")
    non2xx=$(awk '/Non-2xx/ {print $5}' <<<"$out"); errs=$(grep -o 'Socket errors:.*' <<<"$out" | tr -d ' ' || true)
    echo "RESULT server=$name file=$f run=$run req_s=$rps transfer_s=$tps server_cpu=${cpu}% non2xx=${non2xx:-0} ${errs:-sockerr=0}" | tee -a "$OUT"
  done
}
FILES=(index.html 100kb.bin 1mb.bin)

# --- ours
P=18091; TP=18445
"$OURS" --dir $WWW --host localhost --alias 127.0.0.1 --http 127.0.0.1:$P \
  --https 127.0.0.1:$TP --https "[::1]:$TP" --cert $W/cert.pem --key $W/key.pem --threads "$THREADS" >$W/ours.log 2>&1 &
OPID=$!; PIDS+=($OPID); wait_port $P; wait_port $TP
# 127.0.0.1 has no certificate of its own (IP SANs are not SNI names), so it is served
# over plain HTTP; HTTPS goes to https://localhost (SNI localhost).
check "http://127.0.0.1:$P"; check "https://localhost:$TP"
for f in "${FILES[@]}"; do bench makiatto $OPID "http://127.0.0.1:$P" "$f"; done
bench makiatto-https $OPID "https://localhost:$TP" index.html
kill $OPID; wait $OPID 2>/dev/null || true

# --- nginx
if [[ " $PEERS " == *" nginx "* ]]; then
  D=$W/nginx; rm -rf $D; mkdir -p $D/tmp; P=18092; TP=18446
  cat > $D/nginx.conf <<CONF
worker_processes $THREADS;
daemon off;
pid $D/nginx.pid;
error_log $D/error.log warn;
events { worker_connections 4096; }
http {
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log off; sendfile on; tcp_nopush on;
    client_body_temp_path $D/tmp/body; proxy_temp_path $D/tmp/proxy; fastcgi_temp_path $D/tmp/fastcgi;
    uwsgi_temp_path $D/tmp/uwsgi; scgi_temp_path $D/tmp/scgi;
    server { listen 127.0.0.1:$P; root $WWW; }
    server { listen 127.0.0.1:$TP ssl; ssl_certificate $W/cert.pem; ssl_certificate_key $W/key.pem; root $WWW; }
}
CONF
  nginx -c $D/nginx.conf -p $D/ >$D/stdout.log 2>&1 &
  NPID=$!; PIDS+=($NPID); wait_port $P; wait_port $TP; sleep 0.3
  check "http://127.0.0.1:$P"
  for f in "${FILES[@]}"; do bench nginx $NPID "http://127.0.0.1:$P" "$f"; done
  bench nginx-https $NPID "https://localhost:$TP" index.html
  kill $NPID; wait $NPID 2>/dev/null || true
fi

# --- h2o
if [[ " $PEERS " == *" h2o "* ]]; then
  D=$W/h2o; rm -rf $D; mkdir -p $D/run; chown nobody $D/run; P=18093
  cat > $D/h2o.conf <<CONF
num-threads: $THREADS
user: nobody
pid-file: $D/run/h2o.pid
error-log: $D/error.log
listen:
  host: 127.0.0.1
  port: $P
hosts:
  default:
    paths:
      /:
        file.dir: $WWW
CONF
  h2o -c $D/h2o.conf >$D/h2o.log 2>&1 &
  HPID=$!; PIDS+=($HPID); wait_port $P; sleep 0.3
  check "http://127.0.0.1:$P"
  for f in "${FILES[@]}"; do bench h2o $HPID "http://127.0.0.1:$P" "$f"; done
  kill $HPID; wait $HPID 2>/dev/null || true
fi

python3 - "$OUT" <<'PY'
import re, sys, collections
def num(v):
    m = re.match(r"([\d.]+)([KMG]?)B?$", v)
    return float(m.group(1)) * {"": 1, "K": 1e3, "M": 1e6, "G": 1e9}[m.group(2)] if m else 0.0
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    f = dict(kv.split("=", 1) for kv in line.split()[1:] if "=" in kv)
    rows[(f["server"], f["file"])].append((float(f["req_s"]), num(f["transfer_s"]), f["server_cpu"]))
def best(server, file):
    r = rows.get((server, file)); return max(r) if r else None
print("\n| file | server | req/s | transfer/s | server CPU | ours / best peer (req/s) |")
print("|---|---|---|---|---|---|")
for file, ours, peers in [("index.html", "makiatto", ["nginx", "h2o"]), ("100kb.bin", "makiatto", ["nginx", "h2o"]),
                          ("1mb.bin", "makiatto", ["nginx", "h2o"]), ("index.html", "makiatto-https", ["nginx-https"])]:
    o = best(ours, file)
    ps = [(best(p, file), p) for p in peers if best(p, file)]
    bp = max(ps) if ps else None
    for r, name in [(o, ours)] + ps:
        if r is None: continue
        ratio = f"{o[0] / bp[0][0]:.2f}x" if (name == ours and o and bp) else ""
        print(f"| {file} | {name} | {r[0]/1000:.1f}k | {r[1]/1e9:.2f} GB/s | {r[2]} | {ratio} |")
PY
