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
            prune_target_cache "$cache"
        else
            export CARGO_TARGET_DIR="$PWD/target"
        fi
    fi
    echo "cargo target dir: $CARGO_TARGET_DIR"
}

# Free gigabytes on the file system holding $1.
free_gb() { df -Pk "$1" | awk 'NR == 2 { print int($4 / 1048576) }'; }

# A cache that grows until the disk is full would break the very builds it speeds up.
# When less than 20 GB are free, drop what a later build does not need: incremental state
# and test or example executables not rebuilt for 12 hours. Each profile directory is
# pruned holding cargo's own lock on it, so a build running meanwhile waits instead of
# losing files. When under 10 GB are still free, the whole cache goes (the build then
# starts cold).
prune_target_cache() {
    local dir=$1
    [ -d "$dir" ] || return 0
    [ "$(free_gb "$dir")" -ge 20 ] && return 0
    step "pruning the build cache ($(free_gb "$dir") GB free)"
    local profile
    for profile in "$dir"/*/; do
        [ -d "$profile/deps" ] || continue
        touch "$profile/.cargo-lock"
        flock -w 900 "$profile/.cargo-lock" sh -c '
            rm -rf "$1/incremental"
            for d in "$1/deps" "$1/examples"; do
                [ -d "$d" ] || continue
                find "$d" -maxdepth 1 -type f -perm -u+x -regextype posix-extended \
                    -regex ".*-[0-9a-f]{16}" -mmin +720 -exec rm -f {} +
            done' prune "${profile%/}"
    done
    if [ "$(free_gb "$dir")" -lt 10 ]; then
        echo "still under 10 GB free: removing the build cache"
        rm -rf "$dir"
        mkdir -p "$dir"
    fi
    echo "$(free_gb "$dir") GB free"
}
