#!/usr/bin/env bash
# A throw-away PostgreSQL cluster on the loopback interface, for the distributed-sweep
# test and for trying `edgetrain sweep worker` on one machine.
#
#   scripts/postgres.sh start   installs PostgreSQL when missing (apt), starts a cluster
#                               in a new folder and prints two lines: the database URL
#                               and the folder
#   scripts/postgres.sh stop DIR   stops that cluster and removes its folder
#
# Exits non-zero with one line on stderr when PostgreSQL cannot be installed or started.
set -euo pipefail

die() { echo "postgres.sh: $*" >&2; exit 1; }

bindir() {
  local dir
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -z "$dir" ] && command -v pg_ctl >/dev/null 2>&1; then
    dir=$(dirname "$(readlink -f "$(command -v pg_ctl)")")
  fi
  echo "$dir"
}

install_postgres() {
  command -v apt-get >/dev/null 2>&1 || die "PostgreSQL is not installed and apt-get is missing; install PostgreSQL (server) and retry"
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
      sudo="sudo -n"
    else
      die "PostgreSQL is not installed; run 'sudo apt-get install -y postgresql' and retry"
    fi
  fi
  echo "installing PostgreSQL (apt)" >&2
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq >/dev/null || die "apt-get update failed"
  $sudo apt-get install -y -qq --no-install-recommends postgresql >/dev/null \
    || die "apt-get install postgresql failed"
}

# The server refuses to run as root: root runs it as the 'postgres' system user.
as_owner() {
  if [ "$(id -u)" -eq 0 ]; then
    id postgres >/dev/null 2>&1 || die "running as root but there is no 'postgres' user"
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

start() {
  local bin
  bin=$(bindir)
  if [ -z "$bin" ] || [ ! -x "$bin/initdb" ]; then
    install_postgres
    bin=$(bindir)
    [ -n "$bin" ] && [ -x "$bin/initdb" ] || die "PostgreSQL installed but initdb not found"
  fi
  local dir port
  dir=$(mktemp -d "${TMPDIR:-/tmp}/edgetrain-pg.XXXXXX")
  chmod 755 "$dir"
  [ "$(id -u)" -eq 0 ] && chown postgres "$dir"
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  as_owner "$bin/initdb" -D "$dir/data" -U edgetrain -A trust --no-sync >"$dir/initdb.log" 2>&1 \
    || die "initdb failed: $(tail -n 1 "$dir/initdb.log")"
  as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
    -o "-h 127.0.0.1 -p $port -k $dir -c fsync=off -c max_connections=50" start >/dev/null \
    || die "the server did not start: $(tail -n 1 "$dir/server.log")"
  as_owner "$bin/createdb" -h 127.0.0.1 -p "$port" -U edgetrain edgetrain \
    || die "createdb failed"
  echo "postgresql://edgetrain@127.0.0.1:$port/edgetrain"
  echo "$dir"
}

stop() {
  local dir=${1:?usage: postgres.sh stop DIR}
  local bin
  bin=$(bindir)
  if [ -d "$dir/data" ]; then
    as_owner "$bin/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
  fi
  case "$dir" in
    */edgetrain-pg.*) rm -rf "$dir" ;;
    *) die "refusing to remove '$dir' (not a folder made by 'postgres.sh start')" ;;
  esac
}

case "${1:-}" in
  start) start ;;
  stop) stop "${2:-}" ;;
  *) die "usage: postgres.sh start | stop DIR" ;;
esac
