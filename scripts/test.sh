#!/usr/bin/env bash
# Runs every test of the workspace, installing what the tests need first.
# This is the README's test command; .ci/run calls it.
set -euo pipefail
cd "$(dirname "$0")/.."

# promtool (Debian's `prometheus` package) checks the /metrics output.
if ! command -v promtool >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "== installing prometheus (for promtool)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null
  else
    echo "promtool is missing: install Debian's prometheus package (apt-get install prometheus)" >&2
    exit 1
  fi
fi

# duckdb (PyPI) is the correctness oracle of the SQL tests.
if ! python3 -c 'import duckdb, pytz' >/dev/null 2>&1; then
  echo "== installing duckdb and pytz (PyPI)"
  python3 -m pip install -q duckdb pytz
fi

# influxdb (PyPI), the InfluxDB 1.x Python client, checks /ping and /query.
if ! python3 -c 'import influxdb' >/dev/null 2>&1; then
  echo "== installing influxdb (PyPI)"
  python3 -m pip install -q influxdb
fi

# psycopg (PyPI) and psql (Debian's postgresql-client) query over the
# PostgreSQL wire protocol (tests/pg.rs).
if ! python3 -c 'import psycopg' >/dev/null 2>&1; then
  echo "== installing psycopg (PyPI)"
  python3 -m pip install -q "psycopg[binary]"
fi
if ! command -v psql >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "== installing postgresql-client (for psql)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-client >/dev/null
  else
    echo "psql is missing: install Debian's postgresql-client package" >&2
    exit 1
  fi
fi

# ADBC's Flight SQL driver and influxdb3-python (PyPI) query over Arrow
# Flight SQL (tests/flight.rs).
if ! python3 -c 'import adbc_driver_flightsql, pyarrow, influxdb_client_3' >/dev/null 2>&1; then
  echo "== installing adbc-driver-flightsql, pyarrow and influxdb3-python (PyPI)"
  python3 -m pip install -q adbc-driver-flightsql pyarrow influxdb3-python
fi

cargo test --workspace --all-features --locked "$@"
