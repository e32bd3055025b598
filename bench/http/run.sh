#!/usr/bin/env bash
# makiatto-http (examples/static_site, release) against nginx, h2o and Caddy serving the
# same files with the same load as ../shared/peers/http_*.sh, so figures compare with the
# anchors there:  wrk -t1 -c64 -d${SECS}s --timeout 5s  on 1 KB / 100 KB / 1 MB files over
# HTTP/1.1 keep-alive, and the 1 KB file over HTTPS (self-signed P-256, TLS 1.3, SNI
# localhost). Every server gets the same thread budget (THREADS, default 1: ours
# --threads, nginx worker_processes, h2o num-threads, Caddy GOMAXPROCS).
#
# All servers run at once and the loads are interleaved: each round runs every (file,
# server) pair once, the server order rotating from round to round, so a change in the
# machine's load hits every server alike instead of whichever ran last.
#
#   bench/http/run.sh   # env: SECS (10), RUNS (rounds, 2), THREADS (1), PEERS ("nginx h2o caddy"),
#                       #      ROWS ("1k 100k 1m https": which rows to load),
#                       #      OURS_ARGS (extra flags for ours), OURS_B_ARGS (if set, a second
#                       #      instance "makiatto-b" with these flags, e.g. for before/after)
# Prints one RESULT line per measurement, then a table per row (best of the rounds and
# mean) with the ratio ours / best peer. On a shared machine, wrap it:
#   flock /tmp/makiatto-bench.lock bench/http/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/lib.sh
SECS=${SECS:-10}; RUNS=${RUNS:-2}; THREADS=${THREADS:-1}; PEERS=${PEERS:-"nginx h2o caddy"}
ROWS_WANTED=${ROWS:-"1k 100k 1m https"}
W=/tmp/makiatto-bench-http; WWW=$W/www; mkdir -p "$WWW"
OUT=$W/results.txt; : > "$OUT"
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

# Installing nginx or caddy must not start their system services on ports 80/443.
made_policy=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; made_policy=1
fi
# shellcheck disable=SC2086
ensure_packages wrk curl openssl python3 iproute2 $PEERS
[ $made_policy = 1 ] && rm -f /usr/sbin/policy-rc.d

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
chmod 644 $W/cert.pem

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/makiatto/target}
cargo build -q --release -p makiatto-http --example static_site
OURS=$CARGO_TARGET_DIR/release/examples/static_site

wait_port() { for _ in $(seq 1 100); do ss -ltnH "sport = :$1" | grep -q . && return 0; sleep 0.1; done; echo "port $1 did not open" >&2; return 1; }
ticks() { local t=0 p; for p in $1 $(ps -o pid= --ppid "$1"); do [ -r /proc/$p/stat ] && t=$((t + $(awk '{sub(/^.*\) /,""); print $12+$13}' /proc/$p/stat))); done; echo $t; }
check() { local base=$1 f want got; for f in index.html 100kb.bin 1mb.bin; do
  want=$(stat -c %s $WWW/$f); got=$(curl -sk -o /dev/null -w '%{http_code}:%{size_download}' "$base/$f")
  [ "$got" = "200:$want" ] || { echo "check failed $base/$f -> $got" >&2; exit 1; }; done; }
bench() { # name pid url file run
  local name=$1 pid=$2 url=$3 f=$4 run=$5 out t0 t1 w0 w1
  t0=$(ticks "$pid"); w0=$(date +%s.%N)
  out=$(wrk -t1 -c64 -d"${SECS}s" --timeout 5s "$url/$f" 2>&1)
  t1=$(ticks "$pid"); w1=$(date +%s.%N)
  local cpu; cpu=$(awk -v a="$t0" -v b="$t1" -v x="$w0" -v y="$w1" -v hz="$(getconf CLK_TCK)" 'BEGIN{printf "%.0f",(b-a)/hz/(y-x)*100}')
  local rps tps non2xx errs
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out"); tps=$(awk '/Transfer\/sec/ {print $2}' <<<"$out")
  non2xx=$(awk '/Non-2xx/ {print $5}' <<<"$out"); errs=$(grep -o 'Socket errors:.*' <<<"$out" | tr -d ' ' || true)
  echo "RESULT server=$name file=$f run=$run req_s=${rps:-0} transfer_s=${tps:-0B} server_cpu=${cpu}% non2xx=${non2xx:-0} ${errs:-sockerr=0} load1=$(cut -d' ' -f1 /proc/loadavg)" | tee -a "$OUT"
}

# Each server: name, pid, HTTP base URL, HTTPS base URL (127.0.0.1 has no certificate of
# our own, since IP SANs are not SNI names, so HTTPS goes to https://localhost everywhere).
NAMES=(); SPIDS=(); HTTP=(); HTTPS=()
add() { NAMES+=("$1"); SPIDS+=("$2"); HTTP+=("http://127.0.0.1:$3"); HTTPS+=("https://localhost:$4"); }

# --- ours
P=18091; TP=18445
# shellcheck disable=SC2086
"$OURS" --dir $WWW --host localhost --alias 127.0.0.1 --http 127.0.0.1:$P \
  --https 127.0.0.1:$TP --https "[::1]:$TP" --cert $W/cert.pem --key $W/key.pem --threads "$THREADS" ${OURS_ARGS:-} >$W/ours.log 2>&1 &
PIDS+=($!); add makiatto $! $P $TP; wait_port $P; wait_port $TP
if [ -n "${OURS_B_ARGS:-}" ]; then
  P=18095; TP=18449
  # shellcheck disable=SC2086
  "$OURS" --dir $WWW --host localhost --alias 127.0.0.1 --http 127.0.0.1:$P \
    --https 127.0.0.1:$TP --https "[::1]:$TP" --cert $W/cert.pem --key $W/key.pem --threads "$THREADS" $OURS_B_ARGS >$W/ours-b.log 2>&1 &
  PIDS+=($!); add makiatto-b $! $P $TP; wait_port $P; wait_port $TP
fi

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
  PIDS+=($!); add nginx $! $P $TP; wait_port $P; wait_port $TP
fi

# --- h2o (TLS listener with the same certificate)
if [[ " $PEERS " == *" h2o "* ]]; then
  D=$W/h2o; rm -rf $D; mkdir -p $D/run; chown nobody $D/run; P=18093; TP=18447
  cat > $D/h2o.conf <<CONF
num-threads: $THREADS
user: nobody
pid-file: $D/run/h2o.pid
error-log: $D/error.log
listen:
  host: 127.0.0.1
  port: $P
listen:
  host: 127.0.0.1
  port: $TP
  ssl:
    certificate-file: $W/cert.pem
    key-file: $W/key.pem
hosts:
  default:
    paths:
      /:
        file.dir: $WWW
CONF
  h2o -t -c $D/h2o.conf >$D/check.log 2>&1 || { cat $D/check.log; exit 1; }
  h2o -c $D/h2o.conf >$D/h2o.log 2>&1 &
  PIDS+=($!); add h2o $! $P $TP; wait_port $P; wait_port $TP
fi

# --- Caddy (as ../shared/peers/http_caddy.sh: file_server, admin off, no redirects)
if [[ " $PEERS " == *" caddy "* ]]; then
  D=$W/caddy; rm -rf $D; mkdir -p $D/data $D/config; P=18094; TP=18448
  cat > $D/Caddyfile <<CONF
{
    admin off
    auto_https disable_redirects
}
http://127.0.0.1:$P {
    root * $WWW
    file_server
}
https://localhost:$TP {
    tls $W/cert.pem $W/key.pem
    root * $WWW
    file_server
}
CONF
  XDG_DATA_HOME=$D/data XDG_CONFIG_HOME=$D/config HOME=$D GOMAXPROCS=$THREADS \
    caddy run --config $D/Caddyfile --adapter caddyfile >$D/caddy.log 2>&1 &
  PIDS+=($!); add caddy $! $P $TP; wait_port $P; wait_port $TP
fi

sleep 0.5
for i in "${!NAMES[@]}"; do check "${HTTP[$i]}"; check "${HTTPS[$i]}"; done
echo "INFO servers: ${NAMES[*]}; threads=$THREADS secs=$SECS rounds=$RUNS; nginx $(dpkg-query -W -f='${Version}' nginx 2>/dev/null || echo -)," \
  "h2o $(dpkg-query -W -f='${Version}' h2o 2>/dev/null || echo -), caddy $(dpkg-query -W -f='${Version}' caddy 2>/dev/null || echo -); load $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT"

# Rows: a file over HTTP, or index.html over HTTPS.
ROWS=()
for r in $ROWS_WANTED; do case $r in
  1k) ROWS+=("http index.html");; 100k) ROWS+=("http 100kb.bin");; 1m) ROWS+=("http 1mb.bin");;
  https) ROWS+=("https index.html");; *) echo "unknown row $r (1k 100k 1m https)" >&2; exit 1;; esac; done
n=${#NAMES[@]}
for run in $(seq 1 "$RUNS"); do
  for row in "${ROWS[@]}"; do
    read -r proto f <<<"$row"
    for k in $(seq 0 $((n - 1))); do
      i=$(( (k + run - 1) % n ))
      if [ "$proto" = https ]; then
        bench "${NAMES[$i]}-https" "${SPIDS[$i]}" "${HTTPS[$i]}" "$f" "$run"
      else
        bench "${NAMES[$i]}" "${SPIDS[$i]}" "${HTTP[$i]}" "$f" "$run"
      fi
    done
  done
done
echo "INFO load at the end $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT"

python3 - "$OUT" <<'PY'
import re, sys, collections
def num(v):
    m = re.match(r"([\d.]+)([KMG]?)B?$", v)
    return float(m.group(1)) * {"": 1, "K": 1e3, "M": 1e6, "G": 1e9}[m.group(2)] if m else 0.0
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    if not line.startswith("RESULT"): continue
    f = dict(kv.split("=", 1) for kv in line.split()[1:] if "=" in kv)
    rows[(f["server"], f["file"])].append((float(f["req_s"]), num(f["transfer_s"]), int(f["server_cpu"].rstrip("%"))))
servers = []
for (s, _) in rows:
    b = s.removesuffix("-https")
    if b not in servers: servers.append(b)
peers = [s for s in servers if not s.startswith("makiatto")]
print("\nBest of the rounds (mean in brackets); 1 KB rows in req/s, others in GB/s; server CPU = % of one core in the best round.")
print("\n| row | " + " | ".join(servers) + " | makiatto / best peer (best; mean) |")
print("|---|" + "---|" * (len(servers) + 1))
for label, file, suffix, key in [("1 KB req/s", "index.html", "", 0), ("100 KB transfer/s", "100kb.bin", "", 1),
                                 ("1 MB transfer/s", "1mb.bin", "", 1), ("1 KB over HTTPS req/s", "index.html", "-https", 0)]:
    cells, best, mean = [], {}, {}
    for s in servers:
        r = rows.get((s + suffix, file))
        if not r: cells.append("—"); continue
        b = max(r, key=lambda x: x[key]); m = sum(x[key] for x in r) / len(r)
        best[s], mean[s] = b[key], m
        fmt = (lambda v: f"{v/1000:.1f}k") if key == 0 else (lambda v: f"{v/1e9:.2f}")
        cells.append(f"{fmt(b[key])} ({fmt(m)}, {b[2]} %)")
    ratio = ""
    ps = [p for p in peers if p in best]
    if "makiatto" in best and ps:
        bp = max(ps, key=lambda p: best[p]); mp = max(ps, key=lambda p: mean[p])
        ratio = f"{best['makiatto'] / best[bp]:.2f}x vs {bp}; {mean['makiatto'] / mean[mp]:.2f}x vs {mp}"
    print(f"| {label} | " + " | ".join(cells) + f" | {ratio} |")
PY
