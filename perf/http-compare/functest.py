#!/usr/bin/env python3
"""Functional check of a running http-compare server: python3 functest.py PORT"""
import socket, sys, time
port = int(sys.argv[1])
body5000 = open("wrk/body_5000.lp", "rb").read()
one = open("wrk/body_1.lp", "rb").read()

def conn():
    s = socket.create_connection(("127.0.0.1", port)); s.settimeout(3); return s

def read_responses(s, n):
    data = b""; got = []
    while len(got) < n:
        while b"\r\n\r\n" not in data:
            c = s.recv(65536)
            if not c: return got, data
            data += c
        head, data = data.split(b"\r\n\r\n", 1)
        got.append(head.split(b"\r\n")[0].decode())
        cl = [l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")]
        if cl:
            n_ = int(cl[0].split(b":")[1])
            while len(data) < n_: data += s.recv(65536)
            data = data[n_:]
    return got, data

def req(body, path="/write", extra=b"", method=b"POST"):
    return method + b" " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: " + str(len(body)).encode() + b"\r\n" + extra + b"\r\n" + body

def chunked(body, sz=1000):
    out = b"POST /write HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    for i in range(0, len(body), sz):
        c = body[i:i+sz]; out += b"%x\r\n" % len(c) + c + b"\r\n"
    return out + b"0\r\n\r\n"

ok = True
def check(name, got, want):
    global ok
    r = "OK " if got == want else "BAD"
    if got != want: ok = False
    print(f"{r} {name}: {got}")

# 1. big body, content-length, sent in pieces, then keep-alive second request
s = conn(); data = req(body5000)
for i in range(0, len(data), 100000): s.sendall(data[i:i+100000]); time.sleep(0.01)
check("big CL", read_responses(s, 1)[0], ["HTTP/1.1 204 No Content"])
s.sendall(req(one)); check("keep-alive 2nd", read_responses(s, 1)[0], ["HTTP/1.1 204 No Content"])
# 2. pipelined: 10 requests in one send incl. a 404 with body and a chunked one
p = req(one)*4 + req(one, "/nope") + chunked(body5000) + req(one, method=b"GET", path="/write")[:0] + b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n" + req(one)*3
s.sendall(p)
check("pipelined x10", read_responses(s, 10)[0], ["HTTP/1.1 204 No Content"]*4 + ["HTTP/1.1 404 Not Found", "HTTP/1.1 204 No Content", "HTTP/1.1 404 Not Found"] + ["HTTP/1.1 204 No Content"]*3)
# 3. chunked dribbled byte-ranges
d = chunked(body5000, 4096)
for i in range(0, len(d), 7777): s.sendall(d[i:i+7777])
check("chunked dribble", read_responses(s, 1)[0], ["HTTP/1.1 204 No Content"])
# 4. Connection: close -> response then EOF
s.sendall(req(one, extra=b"Connection: close\r\n"))
got, rest = read_responses(s, 1); eof = s.recv(10) == b""
check("conn close", (got, eof), (["HTTP/1.1 204 No Content"], True)); s.close()
# 5. oversized Content-Length -> 413 without sending body
s = conn(); s.sendall(b"POST /write HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n")
try: check("413 before body", read_responses(s, 1)[0], ["HTTP/1.1 413 Payload Too Large"])
except socket.timeout: check("413 before body", "timeout", ["HTTP/1.1 413 Payload Too Large"])
s.close()
# 6. Expect: 100-continue
s = conn(); s.sendall(b"POST /write HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body5000))
got, _ = read_responses(s, 1); check("100-continue", got, ["HTTP/1.1 100 Continue"])
s.sendall(body5000); check("after continue", read_responses(s, 1)[0], ["HTTP/1.1 204 No Content"]); s.close()
print("ALL OK" if ok else "FAILURES")
