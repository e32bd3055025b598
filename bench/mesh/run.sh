#!/usr/bin/env bash
# Throughput through makiatto-mesh's boringtun tunnel vs Debian's wireguard-go, between two
# network namespaces on this machine; same method as ../shared/peers/wg_bench.sh.
#
#   ns A (10.98.0.1/24, veth) <==veth==> ns B (10.98.0.2/24, veth)
#   tunnel 10.45.0.1/24 in A <== WireGuard/UDP 51880 ==> 10.45.0.2/24 in B, MTU 1420
#   iperf3 server in B, client in A (A's tunnel encrypts, B's decrypts).
#
# Cases: veth (ceiling), wggo (wireguard-go both ends), mesh (our tunnel both ends:
# examples/wg_tunnel, 1 boringtun thread, as a node runs it), and boringtun-cli --threads 1
# when `boringtun-cli` is installed. 1 and 4 streams, RUNS runs of SECS seconds each.
# Prints one RESULT line per run, then Gbit/s means and mesh/wireguard-go ratios.
#
# Usage: bench/mesh/run.sh   (root)   Env: RUNS (1), SECS (10), OUTDIR (/tmp/mesh-bench-<stamp>),
#   MESH_BIN (a prebuilt examples/wg_tunnel: skips the build, e.g. to compare two builds),
#   CASES ("mesh wggo btcli": the tunnel cases to run), MESH_TXQUEUELEN (experiments: override
#   the mesh TUN devices' txqueuelen after they are up), MESH_THREADS (boringtun threads of
#   the mesh case; default the node's, 1)
# Per run it also prints the UDP receive-buffer drops (RcvbufErrors, both namespaces) and
# the packets the TUN devices dropped (tx and rx drops, both ends summed).
# Cleans up (processes by PID, namespaces, sockets) on exit, also on error or ^C.
set -euo pipefail
cd "$(dirname "$0")/../.."

RUNS=${RUNS:-1}
SECS=${SECS:-10}
OUTDIR=${OUTDIR:-/tmp/mesh-bench-$(date +%Y%m%d-%H%M%S)}
TAG=mb$$
NS_A=$TAG-a; NS_B=$TAG-b
IF_A=${TAG}a; IF_B=${TAG}b
VETH_A=10.98.0.1; VETH_B=10.98.0.2
TUN_A=10.45.0.1; TUN_B=10.45.0.2
PORT=51880
MTU=1420
mkdir -p "$OUTDIR"
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }
result() { echo "$*" | tee -a "$OUTDIR/results.txt"; }

[ "$(id -u)" = 0 ] || { log "needs root"; exit 1; }
for t in ip iperf3 wg wireguard-go jq; do command -v $t >/dev/null || { log "missing $t (scripts/setup.d/40-mesh.sh; jq)"; exit 1; }; done

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/makiatto/target}
if [ -z "${MESH_BIN:-}" ]; then
  log "building examples/wg_tunnel (release)"
  cargo build -q --release -p makiatto-mesh --example wg_tunnel
  MESH_BIN=$CARGO_TARGET_DIR/release/examples/wg_tunnel
fi
[ -x "$MESH_BIN" ] || { log "no binary at $MESH_BIN"; exit 1; }

PIDS=()
stop_pid() {
  local pid=$1
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
  ip netns del "$NS_A" 2>/dev/null || true
  ip netns del "$NS_B" 2>/dev/null || true
  rm -f /var/run/wireguard/$IF_A.sock /var/run/wireguard/$IF_B.sock
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ip netns add "$NS_A"; ip netns add "$NS_B"
ip link add va netns "$NS_A" type veth peer name vb netns "$NS_B"
ip -n "$NS_A" addr add $VETH_A/24 dev va; ip -n "$NS_B" addr add $VETH_B/24 dev vb
for n in "$NS_A" "$NS_B"; do ip -n "$n" link set lo up; done
ip -n "$NS_A" link set va up; ip -n "$NS_B" link set vb up
( umask 077; wg genkey >"$OUTDIR/a.key"; wg genkey >"$OUTDIR/b.key" )
PA=$(wg pubkey <"$OUTDIR/a.key"); PB=$(wg pubkey <"$OUTDIR/b.key")

ip netns exec "$NS_B" iperf3 -s >"$OUTDIR/iperf3-server.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 50); do ip netns exec "$NS_B" ss -ltnH 'sport = :5201' | grep -q . && break; sleep 0.1; done

DA=""; DB=""
wait_socks() {
  for _ in $(seq 1 100); do
    [ -S /var/run/wireguard/$IF_A.sock ] && [ -S /var/run/wireguard/$IF_B.sock ] && return 0; sleep 0.1
  done
  log "UAPI sockets did not appear"; exit 1
}
tunnel_up() {   # tunnel_up IMPL
  case $1 in
    mesh)
      ip netns exec "$NS_A" "$MESH_BIN" $IF_A $TUN_A/24 $PORT "$OUTDIR/a.key" "$PB" $VETH_B:$PORT $TUN_B/32 ${MESH_THREADS:-} >"$OUTDIR/$1-a.log" 2>&1 &
      DA=$!
      ip netns exec "$NS_B" "$MESH_BIN" $IF_B $TUN_B/24 $PORT "$OUTDIR/b.key" "$PA" $VETH_A:$PORT $TUN_A/32 ${MESH_THREADS:-} >"$OUTDIR/$1-b.log" 2>&1 &
      DB=$!; PIDS+=("$DA" "$DB"); wait_socks
      if [ -n "${MESH_TXQUEUELEN:-}" ]; then   # experiments: override the tunnel's queue length
        for _ in $(seq 1 50); do ip -n "$NS_B" link show $IF_B >/dev/null 2>&1 && break; sleep 0.1; done
        ip -n "$NS_A" link set $IF_A txqueuelen "$MESH_TXQUEUELEN"; ip -n "$NS_B" link set $IF_B txqueuelen "$MESH_TXQUEUELEN"
      fi ;;
    wggo|btcli)
      if [ "$1" = wggo ]; then
        ip netns exec "$NS_A" env WG_PROCESS_FOREGROUND=1 wireguard-go $IF_A >"$OUTDIR/$1-a.log" 2>&1 & DA=$!
        ip netns exec "$NS_B" env WG_PROCESS_FOREGROUND=1 wireguard-go $IF_B >"$OUTDIR/$1-b.log" 2>&1 & DB=$!
      else
        ip netns exec "$NS_A" boringtun-cli -f --disable-drop-privileges --threads 1 $IF_A >"$OUTDIR/$1-a.log" 2>&1 & DA=$!
        ip netns exec "$NS_B" boringtun-cli -f --disable-drop-privileges --threads 1 $IF_B >"$OUTDIR/$1-b.log" 2>&1 & DB=$!
      fi
      PIDS+=("$DA" "$DB"); wait_socks
      ip netns exec "$NS_A" wg set $IF_A private-key "$OUTDIR/a.key" listen-port $PORT peer "$PB" endpoint $VETH_B:$PORT allowed-ips $TUN_B/32
      ip netns exec "$NS_B" wg set $IF_B private-key "$OUTDIR/b.key" listen-port $PORT peer "$PA" endpoint $VETH_A:$PORT allowed-ips $TUN_A/32
      ip -n "$NS_A" addr add $TUN_A/24 dev $IF_A; ip -n "$NS_A" link set $IF_A mtu $MTU up
      ip -n "$NS_B" addr add $TUN_B/24 dev $IF_B; ip -n "$NS_B" link set $IF_B mtu $MTU up ;;
  esac
  for _ in $(seq 1 50); do ip netns exec "$NS_A" iperf3 -c $TUN_B -t 1 >/dev/null 2>&1 && return 0; sleep 0.2; done
  log "tunnel $1 does not carry traffic"; exit 1
}
tunnel_down() {
  stop_pid "$DA"; stop_pid "$DB"
  rm -f /var/run/wireguard/$IF_A.sock /var/run/wireguard/$IF_B.sock
  ip -n "$NS_A" link del $IF_A 2>/dev/null || true; ip -n "$NS_B" link del $IF_B 2>/dev/null || true
  sleep 1
}
ticks() { [ -r /proc/$1/stat ] && awk '{sub(/^.*\) /,""); print $12+$13}' /proc/$1/stat || echo 0; }
HZ=$(getconf CLK_TCK)
# UDP receive-buffer drops in both namespaces, and drops counted by both TUN devices.
rcvbuf_errs() {
  local n s=0
  for n in "$NS_A" "$NS_B"; do
    s=$((s + $(ip netns exec "$n" awk '/^Udp: [0-9]/ {print $6; exit}' /proc/net/snmp)))
  done
  echo $s
}
tun_drops() {   # tun_drops tx|rx: packets dropped by both TUN devices
  local s=0 n i d
  for n in "$NS_A:$IF_A" "$NS_B:$IF_B"; do
    i=${n#*:}; n=${n%%:*}
    d=$(ip netns exec "$n" cat /sys/class/net/$i/statistics/$1_dropped 2>/dev/null || echo 0)
    s=$((s + d))
  done
  echo $s
}
bench() {   # bench CASE DST STREAMS
  local case=$1 dst=$2 p=$3 run out g retr t0a t0b t1a t1b w0 w1
  for run in $(seq 1 "$RUNS"); do
    local u0 u1 d0 d1 r0 r1; u0=$(rcvbuf_errs); d0=$(tun_drops tx); r0=$(tun_drops rx)
    t0a=$( [ -n "$DA" ] && ticks "$DA" || echo 0 ); t0b=$( [ -n "$DB" ] && ticks "$DB" || echo 0 ); w0=$(date +%s.%N)
    out=$(ip netns exec "$NS_A" timeout $((SECS + 30)) iperf3 -c "$dst" -t "$SECS" -P "$p" -J 2>&1) \
      || { result "RESULT case=$case streams=$p run=$run FAILED"; continue; }
    w1=$(date +%s.%N)
    t1a=$( [ -n "$DA" ] && ticks "$DA" || echo 0 ); t1b=$( [ -n "$DB" ] && ticks "$DB" || echo 0 )
    u1=$(rcvbuf_errs); d1=$(tun_drops tx); r1=$(tun_drops rx)
    g=$(jq -r '.end.sum_received.bits_per_second / 1e9 | . * 1000 | round / 1000' <<<"$out")
    retr=$(jq -r '.end.sum_sent.retransmits // 0' <<<"$out")
    local cpu; cpu=$(awk -v a0="$t0a" -v a1="$t1a" -v b0="$t0b" -v b1="$t1b" -v w0="$w0" -v w1="$w1" -v hz="$HZ" \
      'BEGIN{printf "cpu_a=%.0f%% cpu_b=%.0f%%", (a1-a0)/hz/(w1-w0)*100, (b1-b0)/hz/(w1-w0)*100}')
    result "RESULT case=$case streams=$p run=$run gbit_s=$g retrans=$retr udp_rcvbuf_drops=$((u1 - u0)) tun_tx_drops=$((d1 - d0)) tun_rx_drops=$((r1 - r0)) $cpu"
    sleep 1
  done
}

result "# $(date -u +%FT%TZ) $(nproc) cores, kernel $(uname -r), RUNS=$RUNS SECS=$SECS MTU=$MTU, wireguard-go $(dpkg-query -W -f='${Version}' wireguard-go)"
DA=""; DB=""
bench veth $VETH_B 1; bench veth $VETH_B 4
if [ -n "${CASES:-}" ]; then
  read -r -a CASES <<<"$CASES"
else
  CASES=(mesh wggo)
  command -v boringtun-cli >/dev/null && CASES+=(btcli) || log "boringtun-cli not installed: its case is skipped (anchor: 1.15 Gbit/s, ANCHORS.md)"
fi
for c in "${CASES[@]}"; do
  log "case $c"
  tunnel_up "$c"
  bench "$c" $TUN_B 1; bench "$c" $TUN_B 4
  tunnel_down
done

field_mean() {   # field_mean CASE STREAMS FIELD DECIMALS
  grep "^RESULT case=$1 streams=$2 " "$OUTDIR/results.txt" | grep -v FAILED | sed "s/.* $3=\([0-9.]*\).*/\1/" \
    | awk -v d="$4" '{s+=$1; n++} END {if (n) printf "%.*f", d, s/n; else print "n/a"}'
}
mean() { field_mean "$1" "$2" gbit_s 2; }
echo
echo "| case | 1 stream Gbit/s | 4 streams Gbit/s | retransmits 1 / 4 | UDP rcvbuf drops 1 / 4 | TUN tx drops 1 / 4 | TUN rx drops 1 / 4 |"
echo "|---|---|---|---|---|---|---|"
for c in veth "${CASES[@]}"; do
  echo "| $c | $(mean $c 1) | $(mean $c 4) | $(field_mean $c 1 retrans 0) / $(field_mean $c 4 retrans 0)" \
    "| $(field_mean $c 1 udp_rcvbuf_drops 0) / $(field_mean $c 4 udp_rcvbuf_drops 0)" \
    "| $(field_mean $c 1 tun_tx_drops 0) / $(field_mean $c 4 tun_tx_drops 0)" \
    "| $(field_mean $c 1 tun_rx_drops 0) / $(field_mean $c 4 tun_rx_drops 0) |"
done
for p in 1 4; do
  for other in wggo btcli; do
    awk -v m="$(mean mesh $p)" -v w="$(mean $other $p)" -v o="$other" -v s="$p" \
      'BEGIN{ if (w+0 > 0) printf "ratio mesh/%s, %s stream(s): %.2fx\n", o, s, m/w }'
  done
done
log "results: $OUTDIR/results.txt"
