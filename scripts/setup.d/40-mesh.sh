# Sourced by scripts/test: what makiatto-mesh's tests and bench/mesh need.
# wireguard-tools gives `wg` (reads our UAPI socket), wireguard-go is the interop peer,
# iproute2 builds and partitions the test namespaces (nftables for manual partitions),
# iperf3 and jq drive the bench.
ensure_packages wireguard-tools wireguard-go iproute2 nftables iperf3 jq procps
