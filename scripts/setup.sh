#!/usr/bin/env bash
# Prepares a Debian machine (as root, no stdin) for walvault's end-to-end tests:
# PostgreSQL 15 (+contrib), zfs-fuse with its daemon running, and a Rust toolchain.
# Idempotent: installs only what is missing, and runs `apt-get update` only then.
set -euo pipefail

log() { echo "setup: $*"; }

if [ "$(id -u)" -ne 0 ]; then
    echo "setup: must run as root (installs packages, starts zfs-fuse)" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive

# package -> a file it installs (postgresql-contrib-15 is provided by postgresql-15, so dpkg
# does not know it by name: test for a file instead).
declare -A probe=(
    [postgresql-15]=/usr/lib/postgresql/15/bin/postgres
    [postgresql-contrib-15]=/usr/share/postgresql/15/extension/amcheck.control
    [zfs-fuse]=/usr/sbin/zfs-fuse
    [jq]=/usr/bin/jq
)
missing=()
for pkg in postgresql-15 postgresql-contrib-15 zfs-fuse jq; do
    if [ -e "${probe[$pkg]}" ]; then
        log "$pkg is installed"
    else
        missing+=("$pkg")
    fi
done

if [ "${#missing[@]}" -gt 0 ]; then
    # The tests run their own instances: keep Debian from creating (and starting) a system
    # cluster on port 5432. Our copy of the conffile is kept by --force-confold.
    conf=/etc/postgresql-common/createcluster.conf
    if ! grep -qs '^[[:space:]]*create_main_cluster' "$conf"; then
        mkdir -p /etc/postgresql-common
        echo "create_main_cluster = false" >>"$conf"
        log "disabled creation of Debian's main PostgreSQL cluster"
    fi
    log "apt-get update"
    apt-get update -qq </dev/null
    log "installing ${missing[*]}"
    apt-get install -y -qq --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        "${missing[@]}" </dev/null
fi

# zfs-fuse runs in userspace: its daemon must run for zpool/zfs to work.
if pgrep -x zfs-fuse >/dev/null; then
    log "zfs-fuse daemon is running"
else
    log "starting the zfs-fuse daemon"
    zfs-fuse </dev/null
fi
for _ in $(seq 1 100); do
    if zpool list >/dev/null 2>&1; then
        break
    fi
    sleep 0.2
done
if ! zpool list >/dev/null 2>&1; then
    echo "setup: zfs-fuse does not answer \`zpool list\`" >&2
    zpool list >&2 || true
    exit 1
fi
log "zpool list answers"

# The toolchain comes from rustup on these machines; it cannot be downloaded here.
if ! command -v cargo >/dev/null && [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi
if command -v cargo >/dev/null; then
    log "$(cargo --version)"
else
    echo "setup: cargo not found: install a Rust toolchain (rustup) first" >&2
    exit 1
fi
log "done"
