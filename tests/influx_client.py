"""Drives a tidemark node with the InfluxDB 1.x Python client (PyPI
`influxdb`, installed by scripts/test.sh) and prints what it got as JSON,
for tests/influx_compat.rs to check.

Usage: influx_client.py PORT [TOKEN]  (the token goes as the password, which
the client sends with HTTP Basic auth).
"""
import json
import sys

from influxdb import InfluxDBClient
from influxdb.exceptions import InfluxDBClientError

port = int(sys.argv[1])
token = sys.argv[2] if len(sys.argv) > 2 else None
auth = {"username": "tidemark", "password": token} if token else {}
client = InfluxDBClient(host="127.0.0.1", port=port, database="pyclient", timeout=30, **auth)

out = {}
out["ping"] = client.ping()
out["databases_before"] = client.get_list_database()
client.create_database("pyclient")
out["created"] = True
client.write_points(
    [
        {"measurement": "cpu", "tags": {"host": "a"}, "fields": {"usage": 1.5}},
        {"measurement": "mem", "tags": {"host": "a"}, "fields": {"used": 7}},
    ]
)
out["databases"] = client.get_list_database()
out["measurements"] = client.get_list_measurements()
try:
    client.query("SELECT * FROM cpu")
    out["select"] = None
except InfluxDBClientError as e:
    out["select"] = {"code": e.code, "content": e.content}
json.dump(out, sys.stdout)
