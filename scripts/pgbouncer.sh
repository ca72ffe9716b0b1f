#!/usr/bin/env bash
# Runs PgBouncer in transaction mode in front of a local Postgres, for trying keyrelay (or
# `keyrelay bench`) through a pooler as Supabase, Neon or RDS Proxy users run it.
#   scripts/pgbouncer.sh [LISTEN_PORT] [POOL_SIZE]      (defaults: 6432, 20)
# then, in another shell:
#   DATABASE_URL=postgres://postgres@127.0.0.1:6432/postgres \
#   DATABASE_DIRECT_URL=postgres://postgres@127.0.0.1:5432/postgres ./target/release/keyrelay bench
# PGHOST/PGPORT/PGUSER name the server behind it (default 127.0.0.1:5432, postgres, trust auth).
set -euo pipefail
port=${1:-6432}
pool_size=${2:-20}
bouncer=$(command -v pgbouncer || echo /usr/sbin/pgbouncer)
[ -x "$bouncer" ] || { echo "pgbouncer is not installed (Debian: apt-get install pgbouncer)" >&2; exit 1; }
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
user=${PGUSER:-postgres}
printf '"%s" ""\n' "$user" >"$dir/users.txt"
cat >"$dir/pgbouncer.ini" <<INI
[databases]
* = host=${PGHOST:-127.0.0.1} port=${PGPORT:-5432}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir =
auth_type = trust
auth_file = $dir/users.txt
pool_mode = transaction
default_pool_size = $pool_size
max_client_conn = 1000
server_login_retry = 1
INI
chmod 755 "$dir"
chmod 644 "$dir"/*
echo "PgBouncer (transaction mode, $pool_size server connections per database) on 127.0.0.1:$port; Ctrl-C stops it"
if [ "$(id -u)" = 0 ]; then
  "$bouncer" -u postgres "$dir/pgbouncer.ini"
else
  "$bouncer" "$dir/pgbouncer.ini"
fi
