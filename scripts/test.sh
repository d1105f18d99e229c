#!/usr/bin/env bash
# Runs every test of walvault on a fresh machine: installs what the tests need (PostgreSQL 15,
# zfs-fuse), starts the zfs-fuse daemon if none runs, builds, and runs unit, contract and
# end-to-end tests against real PostgreSQL, real ZFS and real TLS.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo fmt --all -- --check
cargo build --workspace --locked
cargo test --workspace --locked --no-fail-fast -- "$@"
