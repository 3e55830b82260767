# Source me: starts a private PostgreSQL from Debian's packages (installing them if needed)
# on 127.0.0.1:$PGPORT with its data in a temp dir, and exports RECOCAMP_TEST_POSTGRES_URL.
# The server is stopped by stop_postgres (the caller's EXIT trap).

PGPORT="${PGPORT:-54329}"

find_pg_bin() {
    ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}

PG_BIN="$(find_pg_bin)"
if [ -z "$PG_BIN" ] || [ ! -x "$PG_BIN/initdb" ]; then
    echo "ci: installing PostgreSQL from Debian's packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq postgresql >/dev/null
    PG_BIN="$(find_pg_bin)"
fi

PGDATA_DIR="$(mktemp -d /tmp/recocamp-pg.XXXXXX)"
as_pg() {
    if [ "$(id -u)" = "0" ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}
if [ "$(id -u)" = "0" ]; then
    chown postgres "$PGDATA_DIR"
fi

as_pg "$PG_BIN/initdb" -D "$PGDATA_DIR/data" -A trust -U postgres -E UTF8 >/dev/null
as_pg "$PG_BIN/pg_ctl" -D "$PGDATA_DIR/data" -l "$PGDATA_DIR/server.log" -w \
    -o "-p $PGPORT -k $PGDATA_DIR -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200" \
    start >/dev/null

stop_postgres() {
    as_pg "$PG_BIN/pg_ctl" -D "$PGDATA_DIR/data" -m fast stop >/dev/null 2>&1 || true
    rm -rf "$PGDATA_DIR"
}

export RECOCAMP_TEST_POSTGRES_URL="postgresql+psycopg://postgres@127.0.0.1:$PGPORT/postgres"
echo "ci: PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$PGPORT"
