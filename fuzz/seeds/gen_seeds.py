#!/usr/bin/env python3
"""Writes the committed seed inputs of fuzz/seeds/<target>/.

Run from fuzz/: python3 seeds/gen_seeds.py   (needs `pip install msgpack`)
"""
import os

import msgpack

HERE = os.path.dirname(os.path.abspath(__file__))


def write(target, name, data):
    d = os.path.join(HERE, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# Line protocol. The fuzz target picks the precision from the first byte
# (byte % 4), so timestamps here stay valid in seconds unless noted.
# Every value type, escapes, comments, CRLF, no timestamp.
write("line_protocol", "all_types",
      "cpu,host=a,region=eu usage=1.5,count=3i,bytes=7u,note=\"hi\",up=t 1700000000\n"
      "cpu,host=b usage=-2e3,count=-4i,up=FALSE 1700000001\n")
write("line_protocol", "escapes",
      "my\\ meas\\,x,tag\\ k\\=1=v\\,a\\ l field\\ k\\==\"quote \\\" back \\\\ end\",n=1 1\n"
      "weird\\x,k=v\\q f=1\n")
write("line_protocol", "comments_crlf",
      "# a comment\r\n\r\nmem free=10i,total=20u 1700000000\r\n  \tmem free=11i\r\n")
write("line_protocol", "multi_table",
      "cpu usage=1\nmem used=2i 5\ndisk,dev=sda full=true\ncpu usage=3,extra=\"x\" 6\n")
write("line_protocol", "errors",
      "cpu,host=a usage=1i\ncpu,host=a usage=1.0\ncpu usage=\"unterminated\ncpu x=1 notatime\n")
write("line_protocol", "precision_s",
      "sensors,site=\u00e9t\u00e9 temp=21.5,ok=T 1700000000\n")
# First byte picks the precision (byte % 4: ns, us, ms, s); "d" is ns.
write("line_protocol", "nanoseconds",
      "disk,dev=sda used=1i,big=18446744073709551615u 1700000000000000000\n")

NS = 1_700_000_000_000_000_000
pack = lambda v: msgpack.packb(v, use_bin_type=True)

columnar = {
    "m": "cpu",
    "columns": {
        "time": [1700000000000, 1700000001000, 1700000002000],
        "host": ["a", "b", None],
        "usage": [1.5, 2, None],
        "count": [1, -2, 3],
        "big": [1, 2**64 - 1, None],
        "up": [True, False, None],
    },
}
columnar_tags = {
    "m": "mem",
    "tag_keys": ["dc"],
    "columns": {
        "dc": ["x", "y"],
        "note": ["free", "used"],
        "v": [1.0, 2.5],
    },
}
row = {
    "m": "cpu",
    "t": 1700000000,
    "h": "host1",
    "fields": {"usage": 0.5, "n": 3, "s": "str", "b": True, "u": 2**63},
    "tags": {"region": "eu", "host": "ignored", "z": 7},
}
row_f = {"m": 12, "t": 1700000000.5, "h": 3, "f": [1.0, None, 2, "x", False]}

write("msgpack", "columnar", pack(columnar))
write("msgpack", "columnar_tag_keys", pack(columnar_tags))
write("msgpack", "row", pack(row))
write("msgpack", "row_f", pack(row_f))
write("msgpack", "array_mixed", pack([row, columnar, row_f]))
write("msgpack", "batch", pack({"batch": [row, columnar_tags, {"m": "cpu", "fields": {"usage": 1.0}}]}))
write("msgpack", "row_ns_time", pack({"m": "t", "t": NS, "fields": {"x": 1}}))
write("msgpack", "error_record", pack([{"m": "cpu"}, 5, {"fields": {"a": [1]}}]))
