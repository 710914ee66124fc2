#!/usr/bin/env python3
"""Takeover with a backlog (bench/compare, scenario 9): SIGKILL the master, then measure how
long until the slave's STOMP port answers a CONNECT and until it delivers the first message
of the backlog queue.

    takeover_probe.py --kill PID --port PORT --dest /queue/NAME [--host H] [--timeout S]

Right before kill(2) the clock starts (time.monotonic). Then, every 5 ms until --timeout: TCP
connect to the slave's port, CONNECT (STOMP 1.2, heart-beat 0,0), CONNECTED, SUBSCRIBE to
--dest (ack client-individual, ActiveMQ prefetch 1), wait for a MESSAGE. A refused or closed
connection (the slave is not master yet) starts a new attempt. Nothing is ACKed: the message
stays queued. Prints one JSON line: connected_s (first CONNECTED), first_message_s, attempts,
errors seen (first few), and the first line of the message body. Exit 1 on timeout.
"""
import argparse
import json
import os
import signal
import socket
import sys
import time


def read_frame(sock, buf, deadline):
    """(command, headers, body, rest of buf) of the next frame; EOLs before it are skipped."""
    def more():
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no frame in time")
        sock.settimeout(left)
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("the broker closed the connection")
        return data

    while True:
        buf = buf.lstrip(b"\r\n")
        head_end = buf.find(b"\n\n")
        if head_end >= 0:
            break
        buf += more()
    head = buf[:head_end].decode("utf-8", "replace").replace("\r", "").split("\n")
    command, headers = head[0], {}
    for line in head[1:]:
        k, _, v = line.partition(":")
        headers.setdefault(k, v)
    rest = buf[head_end + 2:]
    if "content-length" in headers:
        n = int(headers["content-length"])
        while len(rest) < n + 1:
            rest += more()
        return command, headers, rest[:n], rest[n + 1:]
    while b"\0" not in rest:
        rest += more()
    end = rest.index(b"\0")
    return command, headers, rest[:end], rest[end + 1:]


def attempt(host, port, dest, t0, result, deadline):
    """One connection: True once a MESSAGE arrived (result filled in)."""
    with socket.create_connection((host, port), timeout=1.0) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(b"CONNECT\naccept-version:1.2\nhost:%s\nlogin:guest\npasscode:guest\n"
                  b"heart-beat:0,0\n\n\0" % host.encode())
        cmd, headers, body, buf = read_frame(s, b"", deadline)
        if cmd != "CONNECTED":
            raise ConnectionError("CONNECT answered with %s: %s" % (cmd, headers.get("message", "")))
        if result.get("connected_s") is None:
            result["connected_s"] = round(time.monotonic() - t0, 4)
        s.sendall(b"SUBSCRIBE\nid:probe\ndestination:%s\nack:client-individual\n"
                  b"activemq.prefetchSize:1\n\n\0" % dest.encode())
        while True:
            cmd, headers, body, buf = read_frame(s, buf, deadline)
            if cmd == "MESSAGE":
                result["first_message_s"] = round(time.monotonic() - t0, 4)
                result["first_body_line"] = body.split(b"\n", 1)[0][:100].decode("utf-8", "replace")
                result["first_body_bytes"] = len(body)
                try:
                    s.sendall(b"DISCONNECT\n\n\0")
                except OSError:
                    pass
                return True
            if cmd == "ERROR":
                raise ConnectionError("ERROR: %s" % headers.get("message", ""))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kill", type=int, required=True, help="PID of the master to SIGKILL")
    ap.add_argument("--port", type=int, required=True, help="the slave's STOMP port")
    ap.add_argument("--dest", required=True, help="the backlog queue")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds to give up after")
    a = ap.parse_args()
    result = {"connected_s": None, "first_message_s": None, "attempts": 0, "errors": []}
    kill_wall = time.time()
    t0 = time.monotonic()
    os.kill(a.kill, signal.SIGKILL)
    result["kill_at_utc"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(kill_wall))
    deadline = t0 + a.timeout
    ok = False
    while time.monotonic() < deadline and not ok:
        result["attempts"] += 1
        try:
            ok = attempt(a.host, a.port, a.dest, t0, result, deadline)
        except (OSError, ConnectionError, TimeoutError, ValueError) as e:
            msg = "%.3f s: %s" % (time.monotonic() - t0, e)
            if len(result["errors"]) < 5 or "refused" not in str(e):
                result["errors"] = (result["errors"] + [msg])[-10:]
            time.sleep(0.005)
    print(json.dumps(result))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
