#!/usr/bin/env bash
# Start Redis and PostgreSQL on loopback when they are not running, and create the test
# database. Used by `make test`; idempotent.
set -euo pipefail
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if ! port_open 6379; then
  echo "ensure-services: starting redis-server on 127.0.0.1:6379"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ribnode-ci.log
fi

if ! port_open 5432; then
  echo "ensure-services: starting PostgreSQL on 127.0.0.1:5432"
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  pg_ctlcluster --skip-systemctl-redirect "$version" main start
fi
for _ in $(seq 1 30); do port_open 6379 && port_open 5432 && break; sleep 1; done
port_open 6379 || { echo "ensure-services: redis did not start" >&2; exit 1; }
port_open 5432 || { echo "ensure-services: postgresql did not start" >&2; exit 1; }

# The test role and database (password auth works whatever pg_hba says for loopback).
psql_admin() {
  if [ "$(id -u)" = 0 ] && id postgres >/dev/null 2>&1; then
    su postgres -c "psql -v ON_ERROR_STOP=1 -qAt -c \"$1\""
  else
    psql -h 127.0.0.1 -U postgres -v ON_ERROR_STOP=1 -qAt -c "$1"
  fi
}
if [ "$(psql_admin "SELECT 1 FROM pg_roles WHERE rolname='ribnode'")" != 1 ]; then
  psql_admin "CREATE ROLE ribnode LOGIN PASSWORD 'ribnode' CREATEDB"
fi
if [ "$(psql_admin "SELECT 1 FROM pg_database WHERE datname='ribnode_test'")" != 1 ]; then
  psql_admin "CREATE DATABASE ribnode_test OWNER ribnode"
fi
