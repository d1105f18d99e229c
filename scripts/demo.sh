#!/usr/bin/env bash
# The main job on an embedded default: a file-backed ZFS pool, the walvault server on it, and a
# PostgreSQL 15 cluster whose archive_command sends its WAL to the server over mutual TLS.
# Shows what arrived, fetches one segment back and compares it, takes a full and an
# incremental base backup (one ZFS snapshot each), restores to a point in time twice (as an
# instance the server starts on a clone, and written out as a PGDATA), compares the data
# with what the cluster held then, shows a roll-forward snapshot the server takes by itself
# (no new backup), its verification receipt and a restore from it, shows what a prune by a
# retention policy would destroy, and cleans everything up (KEEP=1 leaves it all running and prints how to stop it).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
bash scripts/setup.sh
cargo build --workspace --locked --quiet
bin=$repo/target/debug

work=$(mktemp -d /tmp/walvault-demo.XXXXXX)
chmod 755 "$work"
pool=wvdemo$$
pgbin=/usr/lib/postgresql/15/bin
server_pid=
cleanup() {
    set +e
    for d in "$work/pg" "$work/restored" "$work"/mnt/walvault/demo/main/{restores,rollforward,verify}/*/data; do
        [ -f "$d/postmaster.pid" ] && runuser -u postgres -- "$pgbin/pg_ctl" -D "$d" -m fast stop >/dev/null 2>&1
    done
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
    if zpool list -H "$pool" >/dev/null 2>&1; then
        for _ in 1 2 3 4 5 6 7 8 9 10; do zfs destroy -r "$pool/walvault" 2>/dev/null && break; sleep 1; done
        for _ in 1 2 3 4 5 6 7 8 9 10; do zpool destroy "$pool" 2>/dev/null && break; sleep 1; done
    fi
    rm -rf "$work"
}
if [ "${KEEP:-0}" != 1 ]; then trap cleanup EXIT; fi
step() { printf '\n== %s\n' "$*"; }

step "a file-backed ZFS pool: $pool"
truncate -s 4G "$work/vdev"
zpool create -m "$work/mnt" "$pool" "$work/vdev"

step "walvault-server init (CA, server certificate, configuration)"
"$bin/walvault-server" init --dir "$work/etc" --storage "zfs:$pool/walvault" --listen 127.0.0.1:0
"$bin/walvault-server" cert issue --ca-dir "$work/etc" --admin --out "$work/etc/admin"
"$bin/walvault-server" cert issue --ca-dir "$work/etc" --agent demo/main --out "$work/etc/agent"
chown postgres "$work/etc/agent.key"
# A quick cadence for the demo: roll forward after 8 MiB of WAL, verify new snapshots at once.
cat >>"$work/etc/server.toml" <<CONF

[rollforward]
interval_secs = 2
every_minutes = 0
every_mib = 8

[verify]
snapshots_interval_secs = 2

[restore]
local_wal_dir = "$work/localwal"
CONF

step "start the server"
"$bin/walvault-server" run --config "$work/etc/server.toml" >"$work/server.out" 2>"$work/server.log" &
server_pid=$!
for _ in $(seq 100); do grep -q listening "$work/server.out" 2>/dev/null && break; sleep 0.1; done
addr=$(sed -n 's/^listening on //p' "$work/server.out")
[ -n "$addr" ] || { cat "$work/server.log"; exit 1; }
echo "listening on $addr"
client_config() { # $1 = cert prefix
    printf 'server = "https://%s"\nserver_name = "localhost"\nca = "%s/etc/ca.crt"\ncert = "%s/etc/%s.crt"\nkey = "%s/etc/%s.key"\ncluster = "demo/main"\n' \
        "$addr" "$work" "$work" "$1" "$work" "$1"
}
client_config admin >"$work/etc/admin.toml"
client_config agent >"$work/etc/agent.toml"
admin() { "$bin/walvault" --config "$work/etc/admin.toml" "$@"; }

step "create tenant 'demo' (quota 2G) and cluster 'demo/main'"
admin tenant create demo --quota 2G
admin cluster create demo/main

step "a PostgreSQL 15 cluster archiving to walvault"
install -d -o postgres "$work/pg" "$work/sock" "$work/log"
runuser -u postgres -- "$pgbin/initdb" -D "$work/pg" -U postgres --auth=trust >/dev/null
port=$(( 20000 + $$ % 20000 ))
cat >>"$work/pg/postgresql.conf" <<CONF
port = $port
listen_addresses = ''
unix_socket_directories = '$work/sock'
archive_mode = on
archive_command = '$bin/walvault --config $work/etc/agent.toml wal-push %p'
restore_command = '$bin/walvault --config $work/etc/agent.toml wal-fetch %f %p'
CONF
runuser -u postgres -- "$pgbin/pg_ctl" -D "$work/pg" -l "$work/log/postgresql.log" -w start >/dev/null
psql() { runuser -u postgres -- /usr/bin/psql -XAtq -h "$work/sock" -p "$port" -U postgres "$@"; }

step "pgbench: load, write for 15 s, switch WAL"
runuser -u postgres -- "$pgbin/pgbench" -h "$work/sock" -p "$port" -U postgres -i -s 10 -q postgres 2>&1 | tail -1
runuser -u postgres -- "$pgbin/pgbench" -h "$work/sock" -p "$port" -U postgres -T 15 -c 4 postgres 2>&1 | grep -E '^tps|transactions actually'
last=$(psql -c "select pg_walfile_name(pg_switch_wal())")
for _ in $(seq 300); do
    [ "$(psql -c 'select last_archived_wal from pg_stat_archiver')" = "$last" ] && break; sleep 0.2
done
psql -c "select 'archived: ' || archived_count || ', failed: ' || failed_count || ', last: ' || last_archived_wal from pg_stat_archiver"

step "what arrived (walvault wal-list)"
"$bin/walvault" --config "$work/etc/agent.toml" wal-list | tail -6
admin cluster list
admin tenant list
zfs list -r -o name,used,compressratio,mountpoint "$pool/walvault"

step "fetch $last back and compare with pg_wal/$last"
"$bin/walvault" --config "$work/etc/agent.toml" wal-fetch "$last" "$work/fetched"
cmp "$work/fetched" "$work/pg/pg_wal/$last" && echo "byte-identical"

step "walvault backup: a full base backup, 5 s of pgbench, then an incremental one"
backup() { runuser -u postgres -- "$bin/walvault" --config "$work/etc/agent.toml" backup --quiet --conninfo "host=$work/sock port=$port user=postgres"; }
backup
runuser -u postgres -- "$pgbin/pgbench" -h "$work/sock" -p "$port" -U postgres -T 5 -c 2 postgres 2>&1 | grep -E '^tps'
backup
"$bin/walvault" --config "$work/etc/agent.toml" backups
zfs list -r -t snapshot -o name,used,referenced,createtxg "$pool/walvault/demo/main/db"

step "a point in time: checksums of every table at T, then more pgbench"
checksums() { # $@ = psql connection options
    runuser -u postgres -- /usr/bin/psql -XAtq "$@" -c "select string_agg(format('%s=%s', c.relname, (xpath('/row/s/text()', query_to_xml(format('select sum(hashtext(t.*::text)) as s from %I t', c.relname), false, true, '')))[1]::text), ' ' order by c.relname) from pg_class c where c.relkind = 'r' and c.relnamespace = 'public'::regnamespace"
}
at_t=$(checksums -h "$work/sock" -p "$port" -U postgres)
sleep 1
t=$(psql -c "select to_char(clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')")
sleep 1
echo "T = $t UTC: $at_t"
runuser -u postgres -- "$pgbin/pgbench" -h "$work/sock" -p "$port" -U postgres -T 3 -c 2 postgres 2>&1 | grep -E '^tps'
last=$(psql -c "select pg_walfile_name(pg_switch_wal())")
for _ in $(seq 300); do
    [ "$(psql -c 'select last_archived_wal from pg_stat_archiver')" = "$last" ] && break; sleep 0.2
done
admin window

step "walvault restore --time T --to instance: PostgreSQL started on a clone, on the server"
started=$(date +%s%N)
info=$(admin restore --time "$t" --to instance --json)
id=$(sed -n 's/.*"id": *"\([^"]*\)".*/\1/p' <<<"$info" | head -1)
conninfo=$(sed -n 's/.*"conninfo": *"\([^"]*\)".*/\1/p' <<<"$info" | head -1)
then_=$(checksums -d "$conninfo")
echo "restore $id answered after $(( ($(date +%s%N) - started) / 1000000 )) ms: $conninfo"
[ "$then_" = "$at_t" ] && echo "the instance holds exactly the data of T" || { echo "MISMATCH: $then_"; exit 1; }
admin restores
admin restores drop "$id"

step "walvault restore --time T --to dir:$work/restored (run as postgres where PostgreSQL will run)"
install -d -o postgres -m 700 "$work/restored"
runuser -u postgres -- "$bin/walvault" --config "$work/etc/agent.toml" restore --time "$t" --to "dir:$work/restored" --quiet
cat >>"$work/restored/postgresql.auto.conf" <<CONF
port = $((port + 1))
unix_socket_directories = '$work/sock'
archive_mode = off
CONF
runuser -u postgres -- "$pgbin/pg_ctl" -D "$work/restored" -l "$work/log/restored.log" -w -t 300 start >/dev/null
for _ in $(seq 300); do
    [ "$(runuser -u postgres -- /usr/bin/psql -XAtq -h "$work/sock" -p $((port + 1)) -U postgres -c 'select pg_is_in_recovery()')" = f ] && break; sleep 0.2
done
then_=$(checksums -h "$work/sock" -p $((port + 1)) -U postgres)
[ "$then_" = "$at_t" ] && echo "the restored directory holds exactly the data of T" || { echo "MISMATCH: $then_"; exit 1; }

step "roll-forward: 10 s of pgbench and no new backup; the server replays the archive on its own copy"
runuser -u postgres -- "$pgbin/pgbench" -h "$work/sock" -p "$port" -U postgres -T 10 -c 2 postgres 2>&1 | grep -E '^tps'
end=$(psql -c "select pg_current_wal_lsn()")
last=$(psql -c "select pg_walfile_name(pg_switch_wal())")
for _ in $(seq 300); do
    [ "$(psql -c 'select last_archived_wal from pg_stat_archiver')" = "$last" ] && break; sleep 0.2
done
# The newest roll-forward snapshot consistent at or past the end of that WAL.
newest_rf() {
    admin backups --json | jq -r --arg end "$end" '[.[] | select(.kind == "rollforward")] | last | .id + " " + .stop_lsn' |
        while read -r id lsn; do
            [ -n "$id" ] && [ "$(psql -c "select '$lsn'::pg_lsn >= '$end'::pg_lsn")" = t ] && echo "$id"
        done
}
rf=
for _ in $(seq 600); do rf=$(newest_rf || true); [ -n "$rf" ] && break; sleep 0.5; done
[ -n "$rf" ] || { echo "no roll-forward snapshot reached $end"; tail -20 "$work/server.log"; exit 1; }
echo "roll-forward snapshot $rf is consistent at or past $end"
at_t2=$(checksums -h "$work/sock" -p "$port" -U postgres)
sleep 1
t2=$(psql -c "select to_char(clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')")
sleep 1
runuser -u postgres -- "$pgbin/pgbench" -h "$work/sock" -p "$port" -U postgres -T 2 -c 2 postgres 2>&1 | grep -E '^tps'
last=$(psql -c "select pg_walfile_name(pg_switch_wal())")
for _ in $(seq 300); do
    [ "$(psql -c 'select last_archived_wal from pg_stat_archiver')" = "$last" ] && break; sleep 0.2
done
for _ in $(seq 600); do
    [ "$(admin backups --json | jq -r --arg id "$rf" '.[] | select(.id == $id) | .verification')" != pending ] && break; sleep 0.5
done
admin backups
echo "verification receipt of $rf:"
admin backups --json | jq -c --arg id "$rf" '.[] | select(.id == $id) | .receipt'
admin restore --time "$t2" --dry-run | head -4
info=$(admin restore --time "$t2" --to instance --json)
id=$(jq -r .id <<<"$info")
from=$(jq -r .backup_id <<<"$info")
conninfo=$(jq -r .conninfo <<<"$info")
then_=$(checksums -d "$conninfo")
echo "restore $id to T2 = $t2 started from $from"
[ "$then_" = "$at_t2" ] && echo "the instance holds exactly the data of T2" || { echo "MISMATCH: $then_"; exit 1; }
admin restores drop "$id" >/dev/null

step "retention: the policy of demo/main and what a prune would destroy (walvault prune --dry-run)"
admin policy set --tenant demo --window 7 --daily 7 --min-backups 2 >/dev/null
admin policy show
admin prune --dry-run | cut -c1-150 | tail -8

step "walvault verify: every archived file re-read, the WAL continuity of every timeline, every backup's snapshots"
admin --cluster demo/main verify
admin cluster list

if [ "${KEEP:-0}" = 1 ]; then
    echo; echo "left running in $work (server pid $server_pid, PostgreSQL on $work/sock port $port, pool $pool)"
fi
