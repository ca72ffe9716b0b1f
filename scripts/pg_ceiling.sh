#!/usr/bin/env bash
# The ceiling for webhook intake on this machine: how many two-insert transactions per second
# (one event row, one job row, both with a unique key) Postgres commits at a given concurrency.
# Usage: scripts/pg_ceiling.sh [CLIENTS=64] [SECONDS=15]   (uses $DATABASE_URL's server)
set -euo pipefail
clients=${1:-64}; secs=${2:-15}
url=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
pgbench=$(command -v pgbench || ls /usr/lib/postgresql/*/bin/pgbench 2>/dev/null | tail -1)
[ -x "$pgbench" ] || { echo "pgbench not found (Debian package postgresql-contrib or postgresql-client)"; exit 1; }
db=pg_ceiling_$$
base=${url%/*}
psql "$base/postgres" -qc "create database $db" >/dev/null
trap 'psql "$base/postgres" -qc "drop database if exists $db" >/dev/null' EXIT
psql "$base/$db" -q <<'SQL'
create table ev(webhook_id text primary key, payload jsonb not null, received_at timestamptz not null default now());
create table jobs(grant_id text primary key, state text not null default 'queued', run_at timestamptz not null default now(), attempts int not null default 0);
SQL
script=$(mktemp)
cat > "$script" <<'SQL'
\set n random(1, 2000000000)
BEGIN;
INSERT INTO ev(webhook_id, payload) VALUES ('msg_' || :client_id || '_' || :n || '_' || random(), '{"type":"entitlement_grant.created","data":{"id":"grant_x","status":"Pending","integration_type":"license_key"}}') ON CONFLICT DO NOTHING;
INSERT INTO jobs(grant_id) VALUES ('grant_' || :client_id || '_' || :n || '_' || random()) ON CONFLICT DO NOTHING;
COMMIT;
SQL
out=$("$pgbench" -n -f "$script" -c "$clients" -j 2 -T "$secs" "$base/$db" 2>&1) || true
echo "$out" | grep -E "^(tps|latency)" || { echo "pgbench failed (too many connections? max_connections is $(psql "$base/postgres" -Atc 'show max_connections')):"; echo "$out" | tail -3; exit 1; }
rm -f "$script"
