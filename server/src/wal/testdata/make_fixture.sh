#!/usr/bin/env bash
# Regenerates the PostgreSQL 15 WAL fixture read by `wal::records` tests (run as root; needs
# PostgreSQL 15 under /usr/lib/postgresql/15, zstd and python3). Writes, next to this script:
#   pg15-a.wal.zst  a segment with commits, aborts, 2PC, a restore point, subtransactions, a
#                   commit spanning several pages and, at its end, a commit crossing into ...
#   pg15-b.wal.zst  ... the next segment, which ends with pg_switch_wal().
#   pg15-expected.tsv  what the segments hold: xids from txid_current() / xmin, LSNs and times
#                   from pg_waldump, the restore point's end LSN from pg_create_restore_point().
set -euo pipefail
out=$(cd "$(dirname "$0")" && pwd)
bin=/usr/lib/postgresql/15/bin
w=/tmp/walrec
port=54329

rm -rf "$w"
mkdir -p "$w"
chown postgres "$w"
trap 'runuser -u postgres -- "$bin/pg_ctl" -D "$w/d" -m immediate stop >/dev/null 2>&1 || true; rm -rf "$w"' EXIT

runuser -u postgres -- "$bin/initdb" -D "$w/d" -U postgres -A trust --no-sync >/dev/null
cat >>"$w/d/postgresql.conf" <<EOF
max_prepared_transactions = 2
# logical: 2PC commit records carry their GID and every commit its dbinfo, more to parse.
wal_level = logical
autovacuum = off
listen_addresses = ''
EOF
runuser -u postgres -- "$bin/pg_ctl" -D "$w/d" -o "-p $port -k $w" -l "$w/log" -w start >/dev/null

q() { runuser -u postgres -- "$bin/psql" -h "$w" -p $port -X -q -At -v ON_ERROR_STOP=1 "$@"; }

q -c "CREATE TABLE t(i int, s text); CREATE TABLE gone(i int); INSERT INTO gone VALUES (1)"
# Start a fresh segment so the fixture holds only what follows.
q -c "SELECT pg_switch_wal()" >/dev/null
seg_a=$(q -c "SELECT pg_walfile_name(pg_current_wal_insert_lsn())")

exp="$w/expected.tsv"
: >"$exp"
rec() { printf '%s\n' "$*" >>"$exp"; }

x=$(q -c "BEGIN; SELECT txid_current(); INSERT INTO t VALUES (1, 'one'); COMMIT;")
rec "commit $x simple insert"
x=$(q -c "BEGIN; SELECT txid_current(); INSERT INTO t VALUES (2, 'two'); ROLLBACK;")
rec "abort $x rollback"
x=$(q -c "BEGIN; SELECT txid_current(); INSERT INTO t VALUES (3, '2pc'); PREPARE TRANSACTION 'fx-commit';")
q -c "COMMIT PREPARED 'fx-commit'"
rec "commit $x commit prepared"
x=$(q -c "BEGIN; SELECT txid_current(); INSERT INTO t VALUES (4, '2pc'); PREPARE TRANSACTION 'fx-abort';")
q -c "ROLLBACK PREPARED 'fx-abort'"
rec "abort $x rollback prepared"
r=$(q -c "SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint;
          SELECT pg_create_restore_point('fixture-rp');
          SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint;" | tr '\n' ' ')
rec "restore fixture-rp $r"
# Subtransactions: a and b commit with the top level, c is rolled back (its own abort record).
out_sub=$(q <<'SQL'
BEGIN;
SELECT txid_current();
INSERT INTO t VALUES (50, 'top');
SAVEPOINT a; INSERT INTO t VALUES (51, 'a'); SELECT xmin FROM t WHERE i = 51;
SAVEPOINT b; INSERT INTO t VALUES (52, 'b'); SELECT xmin FROM t WHERE i = 52;
RELEASE b;
SAVEPOINT c; INSERT INTO t VALUES (53, 'c'); SELECT xmin FROM t WHERE i = 53;
ROLLBACK TO c;
COMMIT;
SQL
)
set -- $out_sub
rec "abort $4 rolled back savepoint"
rec "commit $1 with subxacts $2 $3"
x=$(q -c "BEGIN; SELECT txid_current(); DROP TABLE gone; COMMIT;")
rec "commit $x drop table (rels, dropped stats, invals)"
x=$(q -c "BEGIN; SELECT txid_current(); CREATE TABLE never(i int); ROLLBACK;")
rec "abort $x create table rolled back (rels, dropped stats)"
x=$(q <<'SQL'
BEGIN;
SELECT txid_current();
DO $$ BEGIN FOR n IN 1..40 LOOP EXECUTE format('CREATE TABLE many_%s(i int, s text)', n); END LOOP; END $$;
COMMIT;
SQL
)
rec "commit $x many invalidations, spans pages"
# A commit record of ~6 KB (1500 subtransaction xids), started close to the end of the segment
# so that it continues into the next one. Logical messages of repeated bytes fill the gap.
x=$(q <<'SQL'
BEGIN;
SELECT txid_current();
DO $$ BEGIN
  FOR n IN 1..1500 LOOP
    BEGIN INSERT INTO t VALUES (n, 'sub'); EXCEPTION WHEN others THEN NULL; END;
  END LOOP;
END $$;
DO $$
DECLARE
  seg bigint := 16 * 1024 * 1024;
  start_seg bigint := (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint / seg;
  rem bigint;
BEGIN
  LOOP
    rem := seg - (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint % seg;
    EXIT WHEN rem < 3000;
    -- Page headers take 24 bytes per 8 KB page; stay well short of the boundary.
    PERFORM pg_logical_emit_message(false, 'fill',
        repeat('x', least(1000000, rem - 2500 - (rem / 8192 + 2) * 24 - 200)::int));
  END LOOP;
  IF (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint / seg <> start_seg THEN
    RAISE EXCEPTION 'overshot the segment boundary';
  END IF;
END $$;
COMMIT;
SQL
)
rec "commit $x crosses into the next segment"
x=$(q -c "BEGIN; SELECT txid_current(); INSERT INTO t VALUES (99, 'after'); COMMIT;")
rec "commit $x in the next segment"
sw=$(q -c "SELECT pg_switch_wal()")
rec "switch $sw"
seg_b=$(q -c "SELECT pg_walfile_name('$sw'::pg_lsn - 1)")

mkdir "$w/seg"
cp "$w/d/pg_wal/$seg_a" "$w/d/pg_wal/$seg_b" "$w/seg/"
# pg_waldump ends with an error at the end of WAL (the switch's padding); its listing is complete.
TZ=UTC "$bin/pg_waldump" -p "$w/seg" "$seg_a" "$seg_b" >"$w/waldump.txt" 2>&1 || true

python3 - "$exp" "$w/waldump.txt" "$seg_a" "$seg_b" >"$out/pg15-expected.tsv" <<'PY'
import sys, re, datetime
exp, dump, seg_a, seg_b = sys.argv[1:]
recs = []
for line in open(dump):
    m = re.match(r'rmgr: (\S+)\s+len \(rec/tot\):\s*(\d+)/\s*(\d+), tx:\s*(\d+), lsn: ([0-9A-F]+/[0-9A-F]+), prev \S+, (?:bkp\S* )?desc: (.*)', line)
    if m:
        recs.append(m.groups())
def lsn(s):
    hi, lo = s.split('/')
    return (int(hi, 16) << 32) | int(lo, 16)
def fmt(v):
    return '%X/%X' % (v >> 32, v & 0xFFFFFFFF)
def end_of(i):
    # pg_waldump shows where the next record starts; when that is just past a page header the
    # record itself ended at the page boundary (XLogInsert's end LSN convention).
    n = lsn(recs[i + 1][4])
    off = n % 8192
    if off == 24 or (off == 40 and n % (16 << 20) == 40):
        n -= off
    return n
def micros(desc):
    m = re.search(r'(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}) UTC', desc)
    t = datetime.datetime.strptime(m.group(1), '%Y-%m-%d %H:%M:%S.%f').replace(tzinfo=datetime.timezone.utc)
    return int(t.timestamp()) * 1000000 + t.microsecond
events = []
for i, (rmgr, _, _, tx, l, desc) in enumerate(recs):
    if rmgr == 'Transaction' and re.match(r'(COMMIT|ABORT|COMMIT_PREPARED|ABORT_PREPARED) ', desc):
        kind = 'commit' if desc.startswith('COMMIT') else 'abort'
        xid = int(tx)
        if desc.split()[0].endswith('PREPARED'):
            xid = int(desc.split()[1].rstrip(':'))
        events.append((kind, str(xid), l, fmt(end_of(i)), str(micros(desc))))
    elif rmgr == 'XLOG' and desc.startswith('RESTORE_POINT'):
        events.append(('restore', desc.split()[1], l, fmt(end_of(i)), '-'))
    elif rmgr == 'XLOG' and desc.startswith('SWITCH'):
        events.append(('switch', '-', l, '-', '-'))
print('# Made by make_fixture.sh (PostgreSQL 15): segments %s (a) and %s (b).' % (seg_a, seg_b))
print('# "psql" lines: what the session saw. Other lines: records by pg_waldump, in LSN order:')
print('# kind  xid-or-name  lsn  end_lsn  unix-micros')
for line in open(exp):
    print('psql\t' + line.rstrip('\n').replace(' ', '\t', 2))
for e in events:
    print('\t'.join(e))
PY
zstd -q -19 -f "$w/seg/$seg_a" -o "$out/pg15-a.wal.zst"
zstd -q -19 -f "$w/seg/$seg_b" -o "$out/pg15-b.wal.zst"
echo "fixture written to $out"
