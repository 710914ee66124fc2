#!/usr/bin/env python3
"""A stomp.py client that survives a hamq failover: the README's example, whole.

stomp.py retries only the first connect; after that a dropped connection stays dropped. So the
listener below reconnects (to whichever broker answers) and subscribes again in
on_disconnected, and the producer resends what got no RECEIPT (at-least-once: the consumer may
see a message twice, the second time with redelivered:true).

    scripts/stomp-py-failover.py --brokers host-a:61613,host-b:61613 --count 1000

Sends --count messages with a receipt each to --queue, consumes them with client-individual
acks on a second connection, and prints `received N of N` when every one arrived (exit 0), or
what is missing after --timeout seconds (exit 1). Progress lines `sent N` go to stdout.
"""

import argparse
import sys
import threading
import time

import stomp

# --- the README's example starts here ---
class Reconnecting(stomp.ConnectionListener):
    """Reconnects to whichever broker answers, and subscribes again, when the connection drops."""

    def __init__(self, conn, subscriptions=()):
        self.conn = conn
        self.subscriptions = list(subscriptions)  # (destination, id, ack) of each SUBSCRIBE
        self.connected = threading.Event()
        self.lock = threading.Lock()

    def on_connected(self, frame):
        self.connected.set()

    def on_disconnected(self):
        self.connected.clear()
        threading.Thread(target=self.reconnect, daemon=True).start()

    def reconnect(self):
        # One at a time, and never on a live connection: a second CONNECT is an error.
        with self.lock:
            while not self.conn.is_connected():
                try:
                    self.conn.connect("guest", "guest", wait=True)
                    for destination, sub_id, ack in self.subscriptions:
                        self.conn.subscribe(destination, id=sub_id, ack=ack)
                except stomp.exception.StompException:
                    time.sleep(0.2)


def connection(brokers, subscriptions=()):
    conn = stomp.Connection12(brokers, reconnect_attempts_max=-1, heartbeats=(1000, 1000))
    listener = Reconnecting(conn, subscriptions)
    conn.set_listener("reconnecting", listener)
    listener.reconnect()
    return conn, listener
# --- the README's example ends here ---


class Receipts(stomp.ConnectionListener):
    def __init__(self):
        self.seen = set()
        self.changed = threading.Condition()

    def on_receipt(self, frame):
        with self.changed:
            self.seen.add(frame.headers.get("receipt-id"))
            self.changed.notify_all()

    def wait(self, receipt, timeout):
        with self.changed:
            return self.changed.wait_for(lambda: receipt in self.seen, timeout)


class Collector(stomp.ConnectionListener):
    def __init__(self, conn):
        self.conn = conn
        self.bodies = set()
        self.lock = threading.Lock()

    def on_message(self, frame):
        with self.lock:
            self.bodies.add(frame.body)
        try:
            self.conn.ack(frame.headers["ack"])
        except stomp.exception.StompException:
            pass  # not acknowledged: it comes again after the failover


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--brokers", required=True, help="host:port,host:port")
    parser.add_argument("--queue", default="/queue/failover-example")
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--timeout", type=float, default=60)
    args = parser.parse_args()
    brokers = [(h, int(p)) for h, p in (b.rsplit(":", 1) for b in args.brokers.split(","))]

    consumer, _ = connection(brokers, [(args.queue, "c", "client-individual")])
    collector = Collector(consumer)
    consumer.set_listener("collector", collector)

    producer, reconnecting = connection(brokers)
    receipts = Receipts()
    producer.set_listener("receipts", receipts)
    deadline = time.time() + args.timeout
    for i in range(args.count):
        body = f"message {i}"
        while time.time() < deadline:
            reconnecting.connected.wait(1)
            receipt = f"r{i}-{time.time()}"
            try:
                producer.send(args.queue, body, headers={"receipt": receipt})
            except stomp.exception.StompException:
                continue
            if receipts.wait(receipt, 5):
                break
        if (i + 1) % 50 == 0:
            print(f"sent {i + 1}", flush=True)

    wanted = {f"message {i}" for i in range(args.count)}
    while time.time() < deadline:
        with collector.lock:
            if wanted <= collector.bodies:
                break
        time.sleep(0.05)
    with collector.lock:
        missing = sorted(wanted - collector.bodies)
    print(f"received {args.count - len(missing)} of {args.count}", flush=True)
    if missing:
        print(f"missing: {missing[:20]}", flush=True)
    for conn in (producer, consumer):
        conn.remove_listener("reconnecting")
        try:
            conn.disconnect()
        except stomp.exception.StompException:
            pass
    return 0 if not missing else 1


if __name__ == "__main__":
    sys.exit(main())
