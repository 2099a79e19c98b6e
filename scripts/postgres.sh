#!/usr/bin/env bash
# A throwaway PostgreSQL for the outbox's PostgreSQL storage tests: installs Debian's postgresql packages if
# missing, then runs a cluster of its own (initdb + pg_ctl) in a temporary directory, on a free port bound to
# 127.0.0.1 only, as the unprivileged user "postgres" when run as root.
#   usage: postgres.sh start|stop|url
# `url` prints postgresql://leveret@127.0.0.1:PORT/postgres (trust authentication, loopback only) and exits 1
# when no cluster of this script runs. LEVERET_PG_DIR (default /tmp/leveret-postgres) holds the cluster;
# LEVERET_PG_NO_INSTALL=1 never calls apt-get (the tests use it).
set -euo pipefail
cmd=${1:-start}
dir=${LEVERET_PG_DIR:-/tmp/leveret-postgres}

bindir() {
  local d
  if command -v pg_ctl >/dev/null 2>&1 && command -v initdb >/dev/null 2>&1; then
    dirname "$(command -v pg_ctl)"; return 0
  fi
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    [ -x "$d/pg_ctl" ] && [ -x "$d/initdb" ] && { echo "$d"; return 0; }
  done
  return 1
}

install() {
  bindir >/dev/null && return 0
  [ "${LEVERET_PG_NO_INSTALL:-}" = 1 ] && { echo "postgres: not installed" >&2; return 1; }
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  bindir >/dev/null
}

as_owner() {  # run as the cluster's owner: postgres refuses to run as root
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

up() { [ -f "$dir/url" ] && as_owner "$(bindir)/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; }

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

case $cmd in
  start)
    install
    bin=$(bindir)
    if ! up; then
      rm -rf "$dir"
      mkdir -p "$dir"
      if [ "$(id -u)" = 0 ]; then
        id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
        chown postgres "$dir"
        runuser -u postgres -- test -w "$dir" \
          || { echo "postgres: the user postgres cannot reach $dir (a parent directory is private)" >&2; exit 1; }
      fi
      as_owner "$bin/initdb" -D "$dir/data" -U leveret --auth=trust -E UTF8 >"$dir/initdb.log" 2>&1 \
        || { cat "$dir/initdb.log" >&2; exit 1; }
      port=$(free_port)
      as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-p $port -c listen_addresses=127.0.0.1 -k $dir -c max_connections=200" start >/dev/null \
        || { cat "$dir/server.log" >&2; exit 1; }
      echo "postgresql://leveret@127.0.0.1:$port/postgres" > "$dir/url"
    fi
    echo "postgres: up at $(cat "$dir/url")" ;;
  stop)
    if up; then as_owner "$(bindir)/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null; fi
    rm -rf "$dir"
    echo "postgres: stopped" ;;
  url)
    up || { echo "postgres: not running (scripts/postgres.sh start)" >&2; exit 1; }
    cat "$dir/url" ;;
  *) echo "usage: $0 start|stop|url" >&2; exit 2 ;;
esac
