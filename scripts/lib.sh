# Shared helpers for the scripts in this folder (sourced, not run).

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

# Installs the Debian packages named, when any is missing. Needs root or sudo.
ensure_packages() {
    local missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    step "installing ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# Builds go to a cache outside the clone, so repeated runs are fast; nothing depends on
# it existing (a fresh machine builds from scratch).
use_target_cache() {
    if [ -z "${CARGO_TARGET_DIR:-}" ]; then
        local cache=/var/cache/makiatto/target
        if mkdir -p "$cache" 2>/dev/null && [ -w "$cache" ]; then
            export CARGO_TARGET_DIR="$cache"
        else
            export CARGO_TARGET_DIR="$PWD/target"
        fi
    fi
    echo "cargo target dir: $CARGO_TARGET_DIR"
}
