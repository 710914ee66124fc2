#!/usr/bin/env python3
"""Interoperability scenario for hamq with stomp.py (STOMP 1.2, login guest/guest).

Usage: python3 tests/stomp_py_client.py --port N [--host 127.0.0.1]

Run by a Rust integration test against a live broker. Steps:
  1. connect; send 50 persistent messages to /queue/pytest.<random>, each with a receipt;
  2. subscribe client-individual; receive the 50 in order and ack each;
  3. transaction: begin, send 3, abort; begin, send 2, commit; only the 2 committed arrive;
  4. topic /topic/pytest.<random>: two subscribers (own connections), send 5, each gets 5;
  5. disconnect every connection with a receipt.
Every wait has a 10 s timeout. Prints one JSON line; exits 0 on success, 1 with a message
(in the JSON and on stderr) on any mismatch, error frame or timeout.
"""

import argparse
import json
import os
import sys
import threading
import time
import uuid

import stomp

TIMEOUT = 10.0
OVERALL_TIMEOUT = 120.0


class Failure(Exception):
    pass


def describe(frame):
    return "%s %s %r" % (frame.cmd, dict(frame.headers), frame.body)


class Recorder(stomp.ConnectionListener):
    """Collects what one connection receives; waits on it with a timeout."""

    def __init__(self, name):
        self.name = name
        self.cond = threading.Condition()
        self.connected = False
        self.receipts = set()
        self.messages = []
        self.errors = []

    def _update(self, change):
        with self.cond:
            change()
            self.cond.notify_all()

    def on_connected(self, frame):
        self._update(lambda: setattr(self, "connected", True))

    def on_receipt(self, frame):
        self._update(lambda: self.receipts.add(frame.headers.get("receipt-id")))

    def on_message(self, frame):
        self._update(lambda: self.messages.append(frame))

    def on_error(self, frame):
        self._update(lambda: self.errors.append(frame))

    def wait_for(self, what, predicate):
        with self.cond:
            done = self.cond.wait_for(lambda: self.errors or predicate(), TIMEOUT)
            if self.errors:
                raise Failure("%s: ERROR frame while waiting for %s: %s"
                              % (self.name, what, describe(self.errors[0])))
            if not done:
                raise Failure("%s: timed out after %.0fs waiting for %s" % (self.name, TIMEOUT, what))

    def take_message(self, what):
        self.wait_for(what, lambda: self.messages)
        with self.cond:
            return self.messages.pop(0)


def bounded(what, fn):
    """Runs a stomp.py call that may block forever (connect, disconnect) with a timeout."""
    outcome = {}

    def run():
        try:
            outcome["value"] = fn()
        except Exception as e:  # reported below, in the caller's thread
            outcome["error"] = e

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(TIMEOUT)
    if worker.is_alive():
        raise Failure("timed out after %.0fs: %s" % (TIMEOUT, what))
    if "error" in outcome:
        raise Failure("%s failed: %r" % (what, outcome["error"]))
    return outcome.get("value")


class Client:
    def __init__(self, host, port, name):
        self.name = name
        self.conn = stomp.Connection12([(host, port)], heartbeats=(0, 0), reconnect_attempts_max=1,
                                       timeout=TIMEOUT)
        self.rec = Recorder(name)
        self.conn.set_listener("recorder", self.rec)
        self.receipts = 0
        bounded("%s: connect to %s:%d" % (name, host, port),
                lambda: self.conn.connect("guest", "guest", wait=False))
        self.rec.wait_for("CONNECTED", lambda: self.rec.connected)

    def receipt(self, what):
        self.receipts += 1
        return "%s-%s-%d" % (self.name, what, self.receipts)

    def wait_receipt(self, rid, what):
        self.rec.wait_for("the RECEIPT of %s (%s)" % (what, rid), lambda: rid in self.rec.receipts)

    def send(self, dest, body, **headers):
        rid = self.receipt("send")
        self.conn.send(dest, body, headers=dict(headers, receipt=rid))
        self.wait_receipt(rid, "SEND %r" % body)

    def subscribe(self, dest, sub_id, ack):
        rid = self.receipt("sub")
        self.conn.subscribe(dest, sub_id, ack=ack, headers={"receipt": rid})
        self.wait_receipt(rid, "SUBSCRIBE %s" % dest)

    def tx(self, command, tx_id):
        rid = self.receipt(command.lower())
        getattr(self.conn, command.lower())(tx_id, headers={"receipt": rid})
        self.wait_receipt(rid, "%s %s" % (command, tx_id))

    def expect(self, dest, sub_id, bodies, ack):
        """Receives len(bodies) messages in this order; acks each when `ack`."""
        for i, body in enumerate(bodies):
            frame = self.rec.take_message("message %d/%d (%r) on %s" % (i + 1, len(bodies), body, dest))
            got = frame.body
            h = frame.headers
            if got != body or h.get("destination") != dest or h.get("subscription") != sub_id:
                raise Failure("%s: message %d: expected %r on %s (subscription %s), got %s"
                              % (self.name, i + 1, body, dest, sub_id, describe(frame)))
            if ack:
                if "ack" not in h:
                    raise Failure("%s: client-individual MESSAGE without an ack header: %s"
                                  % (self.name, describe(frame)))
                self.conn.ack(h["ack"])

    def check_nothing_pending(self, after):
        with self.rec.cond:
            if self.rec.messages:
                raise Failure("%s: unexpected message(s) after %s: %s"
                              % (self.name, after, [describe(f) for f in self.rec.messages]))

    def disconnect(self):
        rid = self.receipt("disconnect")
        bounded("%s: DISCONNECT with receipt %s" % (self.name, rid),
                lambda: self.conn.disconnect(receipt=rid))
        self.wait_receipt(rid, "DISCONNECT")


def scenario(host, port):
    tag = uuid.uuid4().hex[:10]
    queue, topic = "/queue/pytest." + tag, "/topic/pytest." + tag
    result = {"queue": queue, "topic": topic}
    started = time.monotonic()

    main = Client(host, port, "main")
    bodies = ["msg-%02d" % i for i in range(50)]
    for body in bodies:
        main.send(queue, body, persistent="true")
    main.subscribe(queue, "q", "client-individual")
    main.expect(queue, "q", bodies, ack=True)
    result["queue_received"] = len(bodies)

    aborted = main.conn.begin()
    for i in range(3):
        main.send(queue, "tx-aborted-%d" % i, transaction=aborted)
    main.tx("ABORT", aborted)
    committed = main.conn.begin()
    for i in range(2):
        main.send(queue, "tx-committed-%d" % i, transaction=committed)
    main.tx("COMMIT", committed)
    # FIFO: an aborted message that was wrongly enqueued would arrive before this sentinel.
    main.send(queue, "sentinel")
    tx_expected = ["tx-committed-0", "tx-committed-1", "sentinel"]
    main.expect(queue, "q", tx_expected, ack=True)
    main.check_nothing_pending("the sentinel")
    result["tx_delivered"] = tx_expected[:2]

    subscribers = [Client(host, port, "topic-sub-%d" % i) for i in (1, 2)]
    for sub in subscribers:
        sub.subscribe(topic, "t", "auto")
    topic_bodies = ["topic-%d" % i for i in range(5)]
    for body in topic_bodies:
        main.send(topic, body)
    for sub in subscribers:
        sub.expect(topic, "t", topic_bodies, ack=False)
    result["topic_received"] = [len(topic_bodies) for _ in subscribers]

    for client in subscribers + [main]:
        client.disconnect()
    result["elapsed_s"] = round(time.monotonic() - started, 3)
    return result


def finish(code, payload):
    print(json.dumps(payload), flush=True)
    if code != 0:
        print("stomp_py_client: FAILED: %s" % payload.get("error"), file=sys.stderr, flush=True)
    os._exit(code)  # stomp.py's receiver threads must not keep the process alive


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    watchdog = threading.Timer(OVERALL_TIMEOUT, lambda: finish(
        2, {"ok": False, "error": "scenario exceeded %.0fs" % OVERALL_TIMEOUT}))
    watchdog.daemon = True
    watchdog.start()
    try:
        result = scenario(args.host, args.port)
    except Failure as e:
        finish(1, {"ok": False, "error": str(e)})
    except Exception as e:
        finish(1, {"ok": False, "error": "unexpected %s: %s" % (type(e).__name__, e)})
    finish(0, dict(result, ok=True, stomp_py=stomp.__version__))


if __name__ == "__main__":
    main()
