#!/usr/bin/env bash
# A throwaway PostgreSQL primary with a synchronous streaming-replication standby, for the tests of a database
# failover (docs/cluster.md, "High availability of PostgreSQL itself"): both in a directory of their own, on free
# ports bound to 127.0.0.1, run as the user "postgres" when run as root (as scripts/postgres.sh, whose install
# step it relies on: Debian's postgresql packages).
#   usage: postgres-pair.sh start|crash-primary|promote|stop  (LEVERET_PG_PAIR_DIR, default /tmp/leveret-pg-pair)
# `start` prints two lines: `primary PORT` and `standby PORT`. The standby is named `standby1` and is the
# primary's synchronous standby (`synchronous_standby_names = 'standby1'`), so a COMMIT returns only once the
# standby has flushed its WAL. `crash-primary` stops the primary as a crash would (`pg_ctl stop -m immediate`: no
# shutdown checkpoint); `promote` makes the standby the primary (`pg_ctl promote`, waiting until it accepts writes),
# which then commits without a standby of its own.
set -euo pipefail
cmd=${1:-start}
dir=${LEVERET_PG_PAIR_DIR:-/tmp/leveret-pg-pair}

bindir() {
  local d
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    [ -x "$d/pg_ctl" ] && [ -x "$d/pg_basebackup" ] && { echo "$d"; return 0; }
  done
  if command -v pg_ctl >/dev/null 2>&1; then  # a PostgreSQL of its own layout: pg_ctl's real directory
    d=$(dirname "$(readlink -f "$(command -v pg_ctl)")")
    [ -x "$d/pg_basebackup" ] && { echo "$d"; return 0; }
  fi
  echo "postgres-pair: PostgreSQL is not installed (bash scripts/postgres.sh start installs it)" >&2
  return 1
}

as_owner() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start_server() {  # data-dir port log
  as_owner "$bin/pg_ctl" -D "$1" -l "$3" -w -t 60 \
    -o "-p $2 -c listen_addresses=127.0.0.1 -k $dir -c max_connections=100" start >/dev/null \
    || { cat "$3" >&2; exit 1; }
}

bin=$(bindir)
case $cmd in
  start)
    rm -rf "$dir"
    mkdir -p "$dir"
    if [ "$(id -u)" = 0 ]; then
      id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
      chown postgres "$dir"
    fi
    as_owner "$bin/initdb" -D "$dir/primary" -U leveret --auth=trust -E UTF8 >"$dir/initdb.log" 2>&1 \
      || { cat "$dir/initdb.log" >&2; exit 1; }
    cat >>"$dir/primary/postgresql.conf" <<EOF
wal_level = replica
max_wal_senders = 5
synchronous_standby_names = 'standby1'
EOF
    primary=$(free_port)
    start_server "$dir/primary" "$primary" "$dir/primary.log"
    as_owner "$bin/pg_basebackup" -D "$dir/standby" -R -X stream \
      -d "host=127.0.0.1 port=$primary user=leveret application_name=standby1" >"$dir/basebackup.log" 2>&1 \
      || { cat "$dir/basebackup.log" >&2; exit 1; }
    # the standby got the primary's postgresql.conf: once promoted it waits for no standby of its own (as Patroni's
    # synchronous_mode without _strict when no synchronous standby is left); with 'standby1' there, every COMMIT on
    # the new primary would wait until a standby of that name connects
    echo "synchronous_standby_names = ''" >>"$dir/standby/postgresql.conf"
    standby=$(free_port)
    start_server "$dir/standby" "$standby" "$dir/standby.log"
    echo "$primary" > "$dir/primary.port"
    echo "$standby" > "$dir/standby.port"
    # wait until the standby streams synchronously: before that, a COMMIT on the primary would wait for it anyway
    for _ in $(seq 1 100); do
      state=$(as_owner "$bin/psql" -h 127.0.0.1 -p "$primary" -U leveret -d postgres -Atc \
        "SELECT sync_state FROM pg_stat_replication WHERE application_name = 'standby1'" 2>/dev/null || true)
      [ "$state" = sync ] && break
      sleep 0.1
    done
    [ "$state" = sync ] || { echo "postgres-pair: the standby did not become synchronous" >&2; exit 1; }
    echo "primary $primary"
    echo "standby $standby" ;;
  crash-primary)
    as_owner "$bin/pg_ctl" -D "$dir/primary" -m immediate -w stop >/dev/null ;;
  promote)
    as_owner "$bin/pg_ctl" -D "$dir/standby" -w -t 60 promote >/dev/null ;;
  stop)
    for d in primary standby; do
      if [ -d "$dir/$d" ] && as_owner "$bin/pg_ctl" -D "$dir/$d" status >/dev/null 2>&1; then
        as_owner "$bin/pg_ctl" -D "$dir/$d" -m immediate -w stop >/dev/null || true
      fi
    done
    rm -rf "$dir" ;;
  *) echo "usage: $0 start|crash-primary|promote|stop" >&2; exit 2 ;;
esac
