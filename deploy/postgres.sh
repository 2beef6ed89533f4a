#!/usr/bin/env bash
# A local PostgreSQL cluster for dossier-engine on a loopback port, without Docker.
#
#   deploy/postgres.sh up|down|status
#
# Configured by the same environment variables as the engine (see `dossier config`):
#   DOSSIER_POSTGRES_PORT       loopback port                      (default 55432)
#   DOSSIER_POSTGRES_DATA_DIR   cluster data directory             (default $XDG_STATE_HOME/dossier-engine/postgres)
#   DOSSIER_POSTGRES_USER       owner role: owns the database, runs migrations (default dossier)
#   DOSSIER_POSTGRES_PASSWORD_FILE         its password    (default $STATE/postgres-secrets/owner.password)
#   DOSSIER_POSTGRES_ENGINE_USER  the engine's role        (default dossier_engine)
#   DOSSIER_POSTGRES_ENGINE_PASSWORD_FILE  its password    (default $STATE/postgres-secrets/engine.password)
#   DOSSIER_POSTGRES_DB         database owned by the owner role   (default dossier)
# ($STATE is $XDG_STATE_HOME/dossier-engine, by default ~/.local/state/dossier-engine.)
#
# `up` installs PostgreSQL with apt-get when no server binaries exist, initialises the cluster
# once, starts it, and creates both roles and the database; running it again changes nothing.
# Passwords are generated at the first `up` into their files (mode 0600, directory 0700) and
# set on every `up`, so a role's password always matches its file; none is ever printed.
# The engine's role gets CONNECT only here: its privileges on the tables are granted by the
# migrations (`dossier db upgrade`, engine/store/grants.py), as the tables come into being.
# As root the server runs as the `postgres` OS user, because PostgreSQL refuses to run as root.
set -euo pipefail
# Whatever this script creates (password files, the cluster) is its user's alone.
umask 077

PORT="${DOSSIER_POSTGRES_PORT:-55432}"
STATE="${XDG_STATE_HOME:-$HOME/.local/state}/dossier-engine"
DATA_DIR="${DOSSIER_POSTGRES_DATA_DIR:-$STATE/postgres}"
DB_USER="${DOSSIER_POSTGRES_USER:-dossier}"
DB_PASSWORD_FILE="${DOSSIER_POSTGRES_PASSWORD_FILE:-$STATE/postgres-secrets/owner.password}"
ENGINE_USER="${DOSSIER_POSTGRES_ENGINE_USER:-dossier_engine}"
ENGINE_PASSWORD_FILE="${DOSSIER_POSTGRES_ENGINE_PASSWORD_FILE:-$STATE/postgres-secrets/engine.password}"
DB_NAME="${DOSSIER_POSTGRES_DB:-dossier}"
# The cluster's superuser; fixed so psql below never depends on who ran initdb.
SUPERUSER=postgres
LOG_FILE="$DATA_DIR/postgres.log"
START_TIMEOUT=60

say() { printf 'postgres: %s\n' "$*"; }
die() { printf 'postgres: %s\n' "$*" >&2; exit 1; }

pg_bin_dir() {
    # The newest installed major version (sort -V: 16 after 9.6), e.g. /usr/lib/postgresql/15/bin.
    local initdb
    initdb="$(ls -d /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n 1 || true)"
    if [[ -z "$initdb" ]]; then
        initdb="$(command -v initdb || true)"
    fi
    [[ -n "$initdb" ]] && dirname "$initdb"
    return 0
}

install_postgres() {
    command -v apt-get >/dev/null 2>&1 \
        || die "no PostgreSQL server binaries found and no apt-get to install them; install PostgreSQL 15+"
    local sudo=()
    if [[ "$(id -u)" -ne 0 ]]; then
        command -v sudo >/dev/null 2>&1 || die "installing PostgreSQL needs root (or sudo)"
        sudo=(sudo)
    fi
    say "installing PostgreSQL with apt-get"
    "${sudo[@]}" apt-get update
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql
}

BIN=""
require_bin() {
    BIN="$(pg_bin_dir)"
    if [[ -z "$BIN" ]]; then
        install_postgres
        BIN="$(pg_bin_dir)"
        [[ -n "$BIN" ]] || die "apt-get finished but no initdb was found under /usr/lib/postgresql/*/bin"
    fi
}

# Runs a PostgreSQL binary as the OS user that owns the cluster.
as_owner() {
    if [[ "$(id -u)" -eq 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# As root the cluster belongs to `postgres`, which must be able to walk down to the data dir
# (root's home is usually 0700). Grant it the search bit only, on the directories that lack it.
grant_traverse() {
    [[ "$(id -u)" -eq 0 ]] || return 0
    local parent dir
    parent="$(dirname "$DATA_DIR")"
    mkdir -p "$parent"
    local -a chain=()
    dir="$parent"
    while [[ "$dir" != "/" ]]; do
        chain=("$dir" "${chain[@]}")
        dir="$(dirname "$dir")"
    done
    # Top down: once /root is searchable, the directories below it usually already are.
    for dir in "${chain[@]}"; do
        if ! runuser -u postgres -- test -x "$dir"; then
            if command -v setfacl >/dev/null 2>&1; then
                setfacl -m u:postgres:x "$dir"
            else
                chmod o+x "$dir"
            fi
            say "granted the postgres user search permission on $dir"
        fi
    done
}

is_running() {
    [[ -f "$DATA_DIR/PG_VERSION" ]] || return 1
    as_owner "$BIN/pg_ctl" status -D "$DATA_DIR" >/dev/null 2>&1
}

psql_super() {
    as_owner "$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$DATA_DIR" -p "$PORT" -U "$SUPERUSER" "$@"
}

init_cluster() {
    [[ -f "$DATA_DIR/PG_VERSION" ]] && return 0
    say "initialising a cluster in $DATA_DIR"
    grant_traverse
    mkdir -p "$DATA_DIR"
    if [[ "$(id -u)" -eq 0 ]]; then
        chown postgres:postgres "$DATA_DIR"
    fi
    chmod 700 "$DATA_DIR"
    # Passwords over TCP (scram), trust on the socket, which lives inside the 0700 data dir.
    as_owner "$BIN/initdb" -D "$DATA_DIR" -U "$SUPERUSER" -E UTF8 --locale=C.UTF-8 \
        --auth-local=trust --auth-host=scram-sha-256 >/dev/null
}

wait_ready() {
    local deadline=$((SECONDS + START_TIMEOUT))
    until as_owner "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT"; do
        if ((SECONDS >= deadline)); then
            tail -n 30 "$LOG_FILE" >&2 || true
            die "not ready on 127.0.0.1:$PORT after ${START_TIMEOUT} s (log: $LOG_FILE)"
        fi
        sleep 0.2
    done
}

# A password file: made once (random, hexadecimal so a URL needs no quoting), 0600 in a 0700
# directory; an existing one is kept, and its mode tightened if it was looser.
ensure_password_file() {
    local file="$1" dir
    dir="$(dirname "$file")"
    mkdir -p "$dir"
    chmod 700 "$dir"
    if [[ ! -s "$file" ]]; then
        od -An -tx1 -N24 /dev/urandom | tr -d ' \n' >"$file.tmp"
        chmod 600 "$file.tmp"
        mv -f "$file.tmp" "$file"
        say "generated a password for a role into $file"
    fi
    chmod 600 "$file"
}

ensure_role_and_db() {
    ensure_password_file "$DB_PASSWORD_FILE"
    ensure_password_file "$ENGINE_PASSWORD_FILE"
    [[ "$DB_USER" != "$ENGINE_USER" ]] || die "the owner and the engine's role must differ ($DB_USER)"
    # psql variables (:'name') quote the values, so odd names and passwords cannot inject SQL.
    # The passwords go in on psql's standard input, never on a command line.
    {
        printf '\\set password %s\n' "$(quote_psql "$(cat "$DB_PASSWORD_FILE")")"
        printf '\\set engine_password %s\n' "$(quote_psql "$(cat "$ENGINE_PASSWORD_FILE")")"
        cat <<'SQL'
SELECT format('CREATE ROLE %I LOGIN', :'role')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'role')
\gexec
SELECT format('CREATE ROLE %I LOGIN', :'engine')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'engine')
\gexec
-- Set on every `up`, so each role's password always matches its file. Neither role may make
-- roles or databases; the engine's inherits nothing.
SELECT format('ALTER ROLE %I WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD %L',
              :'role', :'password')
\gexec
SELECT format('ALTER ROLE %I WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT'
              ' PASSWORD %L', :'engine', :'engine_password')
\gexec
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'role')
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db')
\gexec
-- Only the two roles may connect; nobody but the owner may create a schema.
SELECT format('REVOKE ALL ON DATABASE %I FROM PUBLIC', :'db')
\gexec
SELECT format('GRANT CONNECT ON DATABASE %I TO %I', :'db', :'engine')
\gexec
SQL
    } | psql_super -d postgres -v role="$DB_USER" -v engine="$ENGINE_USER" -v db="$DB_NAME"
    psql_super -d "$DB_NAME" <<'SQL'
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
SQL
}

# A value as a psql single-quoted literal (for \set): quotes doubled, backslashes escaped.
quote_psql() {
    local value="${1//\\/\\\\}"
    printf "'%s'" "${value//\'/\'\'}"
}

cmd_up() {
    require_bin
    init_cluster
    if is_running; then
        say "already running on 127.0.0.1:$PORT (data dir $DATA_DIR); nothing to start"
    else
        say "starting PostgreSQL $("$BIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$PORT"
        # listen/port/socket on the command line rather than in postgresql.conf: changing
        # DOSSIER_POSTGRES_PORT then needs no edit of the cluster.
        if ! as_owner "$BIN/pg_ctl" start -D "$DATA_DIR" -l "$LOG_FILE" -w -t "$START_TIMEOUT" \
            -o "-c listen_addresses=127.0.0.1 -p $PORT -c unix_socket_directories='$DATA_DIR'" \
            >/dev/null; then
            tail -n 30 "$LOG_FILE" >&2 || true
            die "pg_ctl start failed (log: $LOG_FILE)"
        fi
    fi
    wait_ready
    ensure_role_and_db
    say "ready: database '$DB_NAME' on 127.0.0.1:$PORT, owner role '$DB_USER', engine role '$ENGINE_USER'"
}

cmd_down() {
    require_bin
    if ! is_running; then
        say "not running (data dir $DATA_DIR)"
        return 0
    fi
    as_owner "$BIN/pg_ctl" stop -D "$DATA_DIR" -m fast -w -t "$START_TIMEOUT" >/dev/null
    say "stopped"
}

cmd_status() {
    BIN="$(pg_bin_dir)"
    if [[ -n "$BIN" ]] && is_running; then
        local pid
        pid="$(head -n 1 "$DATA_DIR/postmaster.pid" 2>/dev/null || echo '?')"
        say "running (pid $pid) on 127.0.0.1:$PORT"
        say "  data dir: $DATA_DIR"
        say "  log:      $LOG_FILE"
        say "  database: $DB_NAME, owner role: $DB_USER, engine role: $ENGINE_USER"
        say "  password files: $DB_PASSWORD_FILE, $ENGINE_PASSWORD_FILE"
        return 0
    fi
    say "not running (data dir $DATA_DIR)"
    return 3
}

case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    *)
        echo "usage: $0 up|down|status" >&2
        exit 2
        ;;
esac
