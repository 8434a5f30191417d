#!/usr/bin/env bash
# Start a throwaway PostgreSQL server on loopback for the audit store's server test and print
# its SQLAlchemy URL. Installs Debian's package when it is missing; exits non-zero (and the test
# is skipped with its reason) when no server can be started.
set -euo pipefail
port=${LIPGUARD_PG_PORT:-54329}
if ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        timeout 300 apt-get install -y -qq postgresql >/dev/null 2>&1 || exit 1
    else
        exit 1
    fi
fi
bin=$(dirname "$(ls /usr/lib/postgresql/*/bin/pg_ctl | sort -V | tail -1)")
dir=$(mktemp -d /tmp/lipguard-pg.XXXXXX)
as_owner=()
if [ "$(id -u)" = 0 ]; then  # initdb refuses to run as root
    chown postgres "$dir"
    as_owner=(runuser -u postgres --)
fi
"${as_owner[@]}" "$bin/initdb" -D "$dir/data" -A trust -U lipguard >/dev/null
"${as_owner[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w \
    -o "-h 127.0.0.1 -p $port -k $dir" start >/dev/null
echo "postgresql+psycopg://lipguard@127.0.0.1:$port/postgres"
