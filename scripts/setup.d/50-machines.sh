# Sourced by scripts/test: what the `maki machine` tests need (makiatto-cli/tests/machines.rs).
# systemd-nspawn containers booted by scripts/machines from a Debian 12 root filesystem that
# debootstrap builds once (cached under /var/cache/makiatto/machines); ssh to reach them, curl
# and dig to check them, sqlite3 to read a node's store from the host, openssl to serve a
# release over https. Nothing happens when everything is present.
ensure_packages systemd-container debootstrap openssh-client iproute2 curl dnsutils sqlite3 openssl
if [ "$(id -u)" -eq 0 ]; then
    "$(dirname "${BASH_SOURCE[0]}")/../machines" rootfs
    # The machines share the host's /dev/net/tun; the daemon opens it as the unprivileged
    # makiatto user, as on any Debian server, where udev makes it 0666 (opening it grants
    # nothing: creating a device still needs CAP_NET_ADMIN).
    if [ -c /dev/net/tun ] && [ "$(stat -c %a /dev/net/tun)" != 666 ]; then
        chmod 0666 /dev/net/tun
    fi
fi
