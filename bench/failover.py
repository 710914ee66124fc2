#!/usr/bin/env python3
"""Failover benchmark: hamq master/slave next to ActiveMQ 5.17 JDBC master/slave, same MariaDB.

Run through `bench/failover` (which sets up the ActiveMQ anchor and the hamq database first);
this tool does the measuring and prints the tables.

Takeover time = from the fault injection instant (just before kill(2)) until a persistent SEND
with a receipt succeeds on the new master. A probe thread per broker port tries
TCP connect + CONNECT + SEND(persistent:true, receipt) + RECEIPT every 10 ms (raw sockets, no
client library in the way); only attempts started after the fault count, and only on the port
of the broker that was the slave.

Round protocol (both products): the slave is in the election (hamq logged "waiting for the
lock"; ActiveMQ logged "Attempting to acquire the exclusive lock"), the master answers the
probe, then after a random 0.5-3 s pause the master gets the fault. The broker that was hit is
then started again as the new slave and the next round waits for it to be in the election.

Faults: kill -9, SIGTERM, SIGSTOP (freeze; the frozen process gets SIGCONT after the takeover,
or after the cap). Network cut: not measured here.

Other measures: slave start -> in the election (hamq: its SELECT ... FOR UPDATE on hamq_lock is
queued in MariaDB, read from information_schema.PROCESSLIST.TIME_MS: the blocking request, not a
NOWAIT try; and its "waiting for the lock" log line; ActiveMQ: its "Attempting to acquire the exclusive lock" log line), and start ->
master on an empty database.

Everything measured goes to OUT/results.jsonl (one JSON per sample); OUT/tables.md gets the
tables, which are also printed. `--report OUT` reprints the tables from a results file.
"""
import argparse
import datetime as dt
import json
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

HOST = "127.0.0.1"
QUEUE = "/queue/bench.failover"
HAMQ_PORTS = (61623, 61624)
AMQ_PORTS = {"a": 61613, "b": 61614}
HAMQ_DB = "hamqbench"
HAMQ_EMPTY_DB = "hamqempty"
HAMQ_USER = "hamq"
HAMQ_PASS = "hamq"
DEFAULT_LEASE = 10  # hamq's default lease (s)


def log(msg):
    print("%s %s" % (dt.datetime.now().strftime("%H:%M:%S.%f")[:-3], msg), file=sys.stderr, flush=True)


# ---------------------------------------------------------------- raw STOMP probe

def read_frame(sock, deadline, buf):
    """Read one frame (bytes up to NUL), skipping heart-beat EOLs. Returns (frame, rest)."""
    while True:
        while buf[:1] in (b"\n", b"\r") and buf:
            buf = buf[1:]
        i = buf.find(b"\0")
        if i >= 0:
            return buf[:i], buf[i + 1:]
        left = deadline - time.time()
        if left <= 0:
            raise TimeoutError
        sock.settimeout(left)
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk


def stomp_attempt(port, reply_timeout=2.0, receipt_timeout=10.0):
    """One CONNECT + persistent SEND + RECEIPT. Returns a stage name: ok, refused, connect-error,
    no-connected (timeout or close before CONNECTED), error-frame, no-receipt."""
    try:
        sock = socket.create_connection((HOST, port), timeout=0.5)
    except ConnectionRefusedError:
        return "refused"
    except OSError:
        return "connect-error"
    stage = "no-connected"
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(b"CONNECT\naccept-version:1.2\nhost:localhost\nheart-beat:0,0\n\n\0")
        frame, rest = read_frame(sock, time.time() + reply_timeout, b"")
        if not frame.startswith(b"CONNECTED"):
            return "error-frame"
        stage = "no-receipt"
        body = b"failover probe"
        sock.sendall(b"SEND\ndestination:%s\npersistent:true\nreceipt:r1\ncontent-length:%d\n\n%s\0"
                     % (QUEUE.encode(), len(body), body))
        frame, rest = read_frame(sock, time.time() + receipt_timeout, rest)
        if not frame.startswith(b"RECEIPT") or b"receipt-id:r1" not in frame:
            return "error-frame"
        try:
            sock.sendall(b"DISCONNECT\n\n\0")
        except OSError:
            pass
        return "ok"
    except (OSError, TimeoutError, ConnectionError):
        return stage
    finally:
        try:
            sock.close()
        except OSError:
            pass


class Probe:
    """One thread per port, each trying stomp_attempt every `every` s until stopped."""

    def __init__(self, ports, every=0.010):
        self.ports = list(ports)
        self.every = every
        self.stop_evt = threading.Event()
        self.lock = threading.Lock()
        self.events = []  # (port, t_begin, t_end, stage)
        self.threads = [threading.Thread(target=self._run, args=(p,), daemon=True) for p in self.ports]

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def _run(self, port):
        while not self.stop_evt.is_set():
            t0 = time.time()
            stage = stomp_attempt(port)
            with self.lock:
                self.events.append((port, t0, time.time(), stage))
            self.stop_evt.wait(self.every)

    def first_ok(self, port, since):
        with self.lock:
            oks = [e[2] for e in self.events if e[0] == port and e[1] >= since and e[3] == "ok"]
        return min(oks) if oks else None

    def answered(self, port, since):
        """Attempts begun at/after `since` on `port` that got CONNECTED / a RECEIPT."""
        with self.lock:
            ev = [e for e in self.events if e[0] == port and e[1] >= since]
        return (sum(1 for e in ev if e[3] in ("ok", "no-receipt")), sum(1 for e in ev if e[3] == "ok"))

    def wait_ok(self, port, since, timeout):
        deadline = time.time() + timeout
        while time.time() < deadline:
            t = self.first_ok(port, since)
            if t is not None:
                return t
            time.sleep(0.005)
        return None

    def stop(self):
        self.stop_evt.set()
        for t in self.threads:
            t.join(15)


def probe_once(port, timeout):
    """Poll one port until an attempt succeeds; returns the success time or None."""
    p = Probe([port]).start()
    try:
        return p.wait_ok(port, 0, timeout)
    finally:
        p.stop()


# ---------------------------------------------------------------- MariaDB (root over the socket)

class Db:
    def __init__(self, var):
        self.cnf = os.path.join(var, "mariadb", "my.cnf")

    def sql(self, text, db=None):
        cmd = ["mariadb", "--defaults-file=" + self.cnf, "--protocol=socket", "-uroot", "-N", "-B"]
        if db:
            cmd.append(db)
        r = subprocess.run(cmd + ["-e", text], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError("mariadb: %s: %s" % (text[:80], r.stderr.strip()))
        return [line.split("\t") for line in r.stdout.splitlines() if line]

    def reset_hamq(self, name):
        self.sql("DROP DATABASE IF EXISTS %s; CREATE DATABASE %s;"
                 "CREATE USER IF NOT EXISTS '%s'@'127.0.0.1' IDENTIFIED BY '%s';"
                 "GRANT ALL PRIVILEGES ON %s.* TO '%s'@'127.0.0.1';"
                 % (name, name, HAMQ_USER, HAMQ_PASS, name, HAMQ_USER))

    def reset_activemq(self):
        self.sql("DROP DATABASE IF EXISTS activemq; CREATE DATABASE activemq CHARACTER SET latin1;"
                 "GRANT ALL PRIVILEGES ON activemq.* TO 'activemq'@'127.0.0.1';"
                 "GRANT ALL PRIVILEGES ON activemq.* TO 'activemq'@'localhost';")

    def lock_request_started(self, db, since, timeout):
        """Wall time at which a SELECT ... FOR UPDATE on hamq_lock that began at/after `since`
        was issued (TIME_MS of PROCESSLIST gives its age), or None."""
        q = ("SELECT TIME_MS FROM information_schema.PROCESSLIST WHERE ID <> CONNECTION_ID() "
             "AND DB = '%s' AND INFO LIKE 'SELECT id FROM hamq_lock%%FOR UPDATE' "
             "ORDER BY TIME_MS" % db)
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                rows = self.sql(q)
            except RuntimeError:
                rows = []
            t_after = time.time()
            for (ms,) in rows:
                began = t_after - float(ms) / 1000.0
                if began >= since - 0.005:
                    return began
            time.sleep(0.005)
        return None


# ---------------------------------------------------------------- hamq brokers

class Hamq:
    def __init__(self, a, name, port, db, lease=None):
        self.a, self.name, self.port, self.db, self.lease = a, name, port, db, lease
        self.proc = None
        self.lines = []  # (t, text) of the current process
        self.cond = threading.Condition()
        self.t_start = None
        self.logf = open(os.path.join(a.out, "hamq-%s.log" % name), "a")

    def start(self):
        env = dict(os.environ)
        env.update({
            "HAMQ_DATASTORE": "mysql://%s:%s@127.0.0.1:3307/%s" % (HAMQ_USER, HAMQ_PASS, self.db),
            "HAMQ_STOMP_LISTEN": "%s:%d" % (HOST, self.port),
            "HAMQ_NAME": self.name,
            "RUST_LOG": "info",
        })
        env.pop("HAMQ_LEASE", None)
        if self.lease:
            env["HAMQ_LEASE"] = str(self.lease)
        with self.cond:
            self.lines = []
        self.t_start = time.time()
        self.proc = subprocess.Popen([self.a.hamq_bin, "--config", self.a.hamq_config], env=env,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, start_new_session=True)
        self.logf.write("%.3f === started pid %d (lease %s)\n" % (self.t_start, self.proc.pid,
                                                                  self.lease or "default"))
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()
        return self

    def _read(self, proc):
        for raw in proc.stderr:
            t = time.time()
            text = raw.decode(errors="replace").rstrip("\n")
            self.logf.write("%.3f %s\n" % (t, text))
            self.logf.flush()
            with self.cond:
                if proc is self.proc:
                    self.lines.append((t, text))
                    self.cond.notify_all()

    def wait_line(self, pattern, since=0.0, timeout=10.0):
        """Arrival time of the first log line matching `pattern` (regex) at/after `since`."""
        rx = re.compile(pattern)
        deadline = time.time() + timeout
        with self.cond:
            while True:
                for t, text in self.lines:
                    if t >= since and rx.search(text):
                        return t
                left = deadline - time.time()
                if left <= 0:
                    return None
                self.cond.wait(min(left, 0.05))

    def lines_between(self, t0, t1):
        with self.cond:
            return [(t, x) for t, x in self.lines if t0 <= t <= t1]

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def kill(self, sig):
        os.kill(self.proc.pid, sig)

    def wait_exit(self, timeout):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGCONT)
                os.kill(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            if self.wait_exit(20) is None:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.logf.write("%.3f === pid %d exited %s\n" % (time.time(), self.proc.pid, self.proc.returncode))
        self.logf.flush()


ALL_HAMQ = []


# ---------------------------------------------------------------- ActiveMQ brokers (the anchor)

AMQ_LOGRE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \| (\w+)\s*\| (.*?) \| ")


class Amq:
    def __init__(self, a, inst):
        self.a, self.inst, self.port = a, inst, AMQ_PORTS[inst]
        self.base = os.path.join(a.var, "amq-%s" % inst)
        self.logpath = os.path.join(self.base, "data", "activemq.log")
        self.offset = 0
        self.t_start = None
        self.starter = None

    def pid(self):
        try:
            pid = int(open(os.path.join(self.base, "broker.pid")).read().strip())
            cmd = open("/proc/%d/cmdline" % pid, "rb").read().replace(b"\0", b" ").decode()
            state = open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()[0]
        except (OSError, ValueError, IndexError):
            return None
        if state == "Z" or ("activemq.base=%s" % self.base) not in cmd:
            return None
        return pid

    def start(self):
        """Launch through the anchor's start.sh (in the background: it blocks for a while)."""
        self.offset = os.path.getsize(self.logpath) if os.path.exists(self.logpath) else 0
        ts = os.path.join(self.base, "start.ts")
        before = os.path.getmtime(ts) if os.path.exists(ts) else 0
        self.starter = subprocess.Popen([os.path.join(self.a.anchor, "start.sh"), self.inst],
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        deadline = time.time() + 20
        while time.time() < deadline:
            if os.path.exists(ts) and os.path.getmtime(ts) > before:
                try:
                    self.t_start = float(open(ts).read().strip())
                    break
                except ValueError:
                    pass
            time.sleep(0.01)
        return self

    def events(self):
        out = []
        try:
            with open(self.logpath, "rb") as f:
                f.seek(self.offset)
                for raw in f:
                    m = AMQ_LOGRE.match(raw.decode(errors="replace"))
                    if m:
                        t = dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
                        out.append((t, m.group(2), m.group(3)))
        except OSError:
            pass
        return out

    def wait_log(self, pattern, since=0.0, timeout=120.0):
        rx = re.compile(pattern)
        deadline = time.time() + timeout
        while True:
            for t, _lvl, msg in self.events():
                if t >= since - 0.002 and rx.search(msg):
                    return t
            if time.time() > deadline:
                return None
            time.sleep(0.05)

    def kill(self, sig):
        os.kill(self.pid_at_fault, sig)

    def wait_exit(self, pid, timeout):
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                state = open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()[0]
                if state == "Z":
                    return True
            except OSError:
                return True
            time.sleep(0.02)
        return False


def anchor(a, *args):
    r = subprocess.run([os.path.join(a.anchor, args[0])] + list(args[1:]), capture_output=True, text=True)
    for line in (r.stdout + r.stderr).splitlines():
        log("  anchor: " + line)
    return r.returncode


# ---------------------------------------------------------------- results

class Results:
    def __init__(self, path):
        self.path = path

    def add(self, **rec):
        rec["t"] = round(time.time(), 3)
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")


def rel(t, t0):
    return None if t is None or t0 is None else round(t - t0, 3)


# ---------------------------------------------------------------- hamq measurements

def hamq_pair(a, lease):
    """Fresh pair: b0 master, b1 waiting for the lock. Returns [b0, b1], master index 0."""
    pair = [Hamq(a, "a", HAMQ_PORTS[0], HAMQ_DB, lease), Hamq(a, "b", HAMQ_PORTS[1], HAMQ_DB, lease)]
    ALL_HAMQ.extend(pair)
    t = pair[0].start().t_start
    if pair[0].wait_line(r"listening for STOMP", t, 30) is None:
        raise SystemExit("hamq a did not become master; see %s" % pair[0].logf.name)
    t = pair[1].start().t_start
    if pair[1].wait_line(r"waiting for the lock \(held by a", t, 30) is None:
        raise SystemExit("hamq b is not waiting for the lock; see %s" % pair[1].logf.name)
    return pair


def hamq_restart_slave(a, res, b, holder, fault):
    """Start `b` again while `holder` is master; record start -> election. True when waiting."""
    t0 = b.start().t_start
    t_req = a.db.lock_request_started(b.db, t0, 10)
    t_wait = b.wait_line(r"waiting for the lock \(held by %s" % holder, t0, 15)
    res.add(product="hamq", measure="slave_election", after=fault, lease=b.lease or DEFAULT_LEASE,
            lock_request_s=rel(t_req, t0), waiting_line_s=rel(t_wait, t0))
    log("  hamq %s restarted as slave: lock request queued after %s s, 'waiting for the lock' after %s s"
        % (b.name, rel(t_req, t0), rel(t_wait, t0)))
    return t_wait is not None


def hamq_faults(a, res, fault, rounds, lease):
    sig = {"kill": signal.SIGKILL, "term": signal.SIGTERM, "freeze": signal.SIGSTOP}[fault]
    lease_s = lease or DEFAULT_LEASE
    cap = 30.0 if fault != "freeze" else lease_s + 30.0
    log("hamq: %d rounds of %s (lease %d s)" % (rounds, fault, lease_s))
    a.db.reset_hamq(HAMQ_DB)
    pair = hamq_pair(a, lease)
    m = 0
    try:
        for r in range(1, rounds + 1):
            master, slave = pair[m], pair[1 - m]
            if probe_once(master.port, 10) is None:
                raise SystemExit("hamq master %s does not answer" % master.name)
            time.sleep(random.uniform(0.5, 3.0))
            probe = Probe([master.port, slave.port]).start()
            t_fault = time.time()
            master.kill(sig)
            t_ok = probe.wait_ok(slave.port, t_fault, cap)
            rec = dict(product="hamq", measure="takeover", fault=fault, lease=lease_s, round=r,
                       old=master.name, new=slave.name, takeover_s=rel(t_ok, t_fault),
                       acquired_s=rel(slave.wait_line(r"acquired the lock", t_fault, 0.1), t_fault),
                       listening_s=rel(slave.wait_line(r"listening for STOMP", t_fault, 0.1), t_fault))
            if fault == "freeze":
                t_cont = time.time()
                os.kill(master.proc.pid, signal.SIGCONT)
                code = master.wait_exit(30)
                t_exit = time.time()
                probe.stop()
                rec.update(exit_code=code, cont_to_lost_s=rel(master.wait_line(r"lost the lock", t_cont, 0.1), t_cont),
                           cont_to_exit_s=rel(t_exit, t_cont))
                rec["old_after_cont_connected"], rec["old_after_cont_receipts"] = probe.answered(master.port, t_cont)
            else:
                code = master.wait_exit(30)
                probe.stop()
                rec["exit_code"] = code
            rec["old_after_fault_connected"], rec["old_after_fault_receipts"] = probe.answered(master.port, t_fault)
            res.add(**rec)
            log("  round %d: %s of %s -> %s answers after %s s (acquired %s, listening %s); old exit %s%s"
                % (r, fault, master.name, slave.name, rec["takeover_s"], rec["acquired_s"], rec["listening_s"],
                   code, "" if fault != "freeze" else ", SIGCONT->lost the lock %s s" % rec["cont_to_lost_s"]))
            limit = 1.0 if fault in ("kill", "term") else lease_s + 1.0
            if rec["takeover_s"] is None or rec["takeover_s"] > limit:
                lines = slave.lines_between(t_fault - 2, time.time()) + master.lines_between(t_fault - 2, time.time())
                log("  SLOW ROUND (over %.1f s); log lines around it:" % limit)
                for t, x in sorted(lines):
                    log("    [%+.3f s] %s" % (t - t_fault, x))
                res.add(product="hamq", measure="slow_round", fault=fault, lease=lease_s, round=r,
                        takeover_s=rec["takeover_s"],
                        lines=["[%+.3f s] %s" % (t - t_fault, x) for t, x in sorted(lines)])
            if code is None:
                raise SystemExit("hamq %s did not exit after %s" % (master.name, fault))
            if t_ok is None:
                raise SystemExit("no takeover within %.0f s" % cap)
            if not hamq_restart_slave(a, res, master, slave.name, fault):
                raise SystemExit("restarted hamq %s is not waiting for the lock" % master.name)
            m = 1 - m
    finally:
        for b in pair:
            b.stop()


def hamq_start_empty(a, res, rounds):
    log("hamq: %d rounds of start -> master on an empty database" % rounds)
    for r in range(1, rounds + 1):
        a.db.reset_hamq(HAMQ_EMPTY_DB)
        b = Hamq(a, "solo", HAMQ_PORTS[0], HAMQ_EMPTY_DB)
        ALL_HAMQ.append(b)
        probe = Probe([b.port])
        t0 = b.start().t_start
        probe.start()
        t_listen = b.wait_line(r"listening for STOMP", t0, 30)
        t_ok = probe.wait_ok(b.port, t0, 30)
        probe.stop()
        b.stop()
        res.add(product="hamq", measure="start_master", round=r, listening_s=rel(t_listen, t0),
                first_receipt_s=rel(t_ok, t0), exit_code=b.proc.returncode)
        log("  round %d: listening after %s s, first receipt after %s s"
            % (r, rel(t_listen, t0), rel(t_ok, t0)))


# ---------------------------------------------------------------- ActiveMQ measurements

AMQ_ATTEMPT = r"Attempting to acquire the exclusive lock"
AMQ_FAILED = r"Failed to acquire lock"
AMQ_STARTED = r"Apache ActiveMQ .* started"


def amq_pair(a):
    """Both brokers running, the one on 61613 (a) master, b in the election."""
    anchor(a, "stop.sh", "b", "a")
    pair = [Amq(a, "a"), Amq(a, "b")]
    t0 = pair[0].start().t_start
    if pair[0].wait_log(AMQ_STARTED, t0, 120) is None:
        raise SystemExit("amq-a did not become master")
    pair[0].starter.wait()
    t0 = pair[1].start().t_start
    t_att = pair[1].wait_log(AMQ_ATTEMPT, t0, 150)
    pair[1].starter.wait()
    if t_att is None:
        raise SystemExit("amq-b never tried for the lock")
    return pair


def amq_restart_slave(a, res, b, fault):
    t0 = b.start().t_start
    t_att = b.wait_log(AMQ_ATTEMPT, t0, 150)
    b.starter.wait()
    res.add(product="activemq", measure="slave_election", after=fault, attempting_s=rel(t_att, t0))
    log("  amq-%s restarted as slave: 'Attempting to acquire the exclusive lock' after %s s"
        % (b.inst, rel(t_att, t0)))
    return t_att is not None


def amq_faults(a, res, fault, rounds, phase="blocked", cap=None):
    """phase blocked: fault 0.5-3 s after the slave's latest "Attempting" (it is blocked in its
    SELECT ... FOR UPDATE); sleeping: 0.5-3 s after its "Failed to acquire lock" (in its 10 s
    lockAcquireSleepInterval)."""
    sig = {"kill": signal.SIGKILL, "term": signal.SIGTERM, "freeze": signal.SIGSTOP}[fault]
    cap = cap or (30.0 if phase == "blocked" else 60.0)
    log("activemq: %d rounds of %s (slave %s)" % (rounds, fault, phase))
    pair = amq_pair(a)
    m = 0
    for r in range(1, rounds + 1):
        master, slave = pair[m], pair[1 - m]
        if probe_once(master.port, 30) is None:
            raise SystemExit("amq-%s (master) does not answer" % master.inst)
        if phase == "sleeping":
            if slave.wait_log(AMQ_FAILED, time.time() - 0.5, 120) is None:
                raise SystemExit("amq-%s never logged a failed lock attempt" % slave.inst)
        time.sleep(random.uniform(0.5, 3.0))
        ev = [e for e in slave.events() if re.search(AMQ_ATTEMPT, e[2]) or re.search(AMQ_FAILED, e[2])]
        slave_state = ("sleeping" if ev and re.search(AMQ_FAILED, ev[-1][2]) and time.time() - ev[-1][0] < 10
                       else "blocked" if ev else "setup")
        master.pid_at_fault = master.pid()
        probe = Probe([master.port, slave.port]).start()
        t_fault = time.time()
        master.kill(sig)
        t_ok = probe.wait_ok(slave.port, t_fault, cap)
        rec = dict(product="activemq", measure="takeover", fault=fault, phase=phase, slave_state=slave_state,
                   round=r, old=master.inst, new=slave.inst, takeover_s=rel(t_ok, t_fault), cap_s=cap,
                   becoming_master_s=rel(slave.wait_log(r"Becoming the master", t_fault, 0), t_fault),
                   started_s=rel(slave.wait_log(AMQ_STARTED, t_fault, 0), t_fault))
        if fault == "freeze":
            t_cont = time.time()
            os.kill(master.pid_at_fault, signal.SIGCONT)
            t_back = probe.wait_ok(master.port, t_cont, 30) if t_ok is None else None
            probe.stop()
            rec["cont_to_old_master_answers_s"] = rel(t_back, t_cont)
            res.add(**rec)
            log("  round %d: freeze of amq-%s: %s; after SIGCONT the old master answers after %s s"
                % (r, master.inst, "takeover after %s s" % rec["takeover_s"] if t_ok else
                   "no takeover within %.0f s" % cap, rec["cont_to_old_master_answers_s"]))
            if t_ok is not None:  # unexpected: put the old master back in line as a slave
                anchor(a, "stop.sh", master.inst)
                amq_restart_slave(a, res, master, fault)
                m = 1 - m
            continue
        gone = master.wait_exit(master.pid_at_fault, 60)
        t_gone = time.time()
        probe.stop()
        rec.update(old_exited_s=rel(t_gone, t_fault) if gone else None)
        rec["old_after_fault_connected"], rec["old_after_fault_receipts"] = probe.answered(master.port, t_fault)
        res.add(**rec)
        log("  round %d: %s of amq-%s (slave %s) -> amq-%s answers after %s s (Becoming the master %s, started %s)"
            % (r, fault, master.inst, slave_state, slave.inst, rec["takeover_s"], rec["becoming_master_s"],
               rec["started_s"]))
        if t_ok is None:
            raise SystemExit("no ActiveMQ takeover within %.0f s" % cap)
        if not gone:
            anchor(a, "stop.sh", "--kill", master.inst)
        if not amq_restart_slave(a, res, master, fault):
            raise SystemExit("amq-%s did not come back as a slave" % master.inst)
        m = 1 - m


def amq_start_empty(a, res, rounds):
    log("activemq: %d rounds of start -> master on an empty database" % rounds)
    anchor(a, "stop.sh", "b", "a")
    for r in range(1, rounds + 1):
        a.db.reset_activemq()
        b = Amq(a, "a")
        probe = Probe([b.port])
        t0 = b.start().t_start
        probe.start()
        t_started = b.wait_log(AMQ_STARTED, t0, 120)
        t_ok = probe.wait_ok(b.port, t0, 60)
        probe.stop()
        b.starter.wait()
        anchor(a, "stop.sh", "a")
        res.add(product="activemq", measure="start_master", round=r, started_s=rel(t_started, t0),
                first_receipt_s=rel(t_ok, t0))
        log("  round %d: 'Apache ActiveMQ ... started' after %s s, first receipt after %s s"
            % (r, rel(t_started, t0), rel(t_ok, t0)))


# ---------------------------------------------------------------- report

def fmt(x):
    return "-" if x is None else "%.3f s" % x


def stats(vals):
    """(rounds, p50, max, failures) where failures = rounds without a value."""
    ok = [v for v in vals if v is not None]
    if not ok:
        return len(vals), None, None, len(vals)
    return len(vals), statistics.median(ok), max(ok), len(vals) - len(ok)


def ratio(x, y):
    return "-" if x is None or y is None or y == 0 else "%.1fx" % (x / y)


def report(path):
    recs = [json.loads(line) for line in open(path) if line.strip()]

    def sel(**kw):
        return [r for r in recs if all(r.get(k) == v for k, v in kw.items())]

    out = []
    w = out.append
    w("### Takeover time (fault injected -> first persistent SEND receipted by the new master)")
    w("")
    w("| fault | hamq rounds | hamq p50 | hamq max | hamq target | ActiveMQ rounds | ActiveMQ p50 | ActiveMQ max "
      "| ActiveMQ/hamq p50 | ActiveMQ/hamq max |")
    w("|---|---|---|---|---|---|---|---|---|---|")

    def cell_amq(rs, cap_note=True):
        n, p50, mx, fails = stats([r["takeover_s"] for r in rs])
        if n and fails == n:
            caps = {r.get("cap_s") for r in rs}
            return n, "no takeover within %.0f s (%d of %d)" % (max(caps), fails, n), "-", None, None
        extra = "" if not fails else " (%d without takeover)" % fails
        return n, fmt(p50) + extra, fmt(mx), p50, mx

    rows = [
        ("kill -9 of the master", dict(fault="kill", lease=DEFAULT_LEASE), dict(fault="kill", phase="blocked"),
         "< 1 s", 1.0),
        ("SIGTERM of the master", dict(fault="term", lease=DEFAULT_LEASE), dict(fault="term", phase="blocked"),
         "< 1 s", 1.0),
        ("kill -9, ActiveMQ slave in its 10 s sleep between lock attempts", None,
         dict(fault="kill", phase="sleeping"), "", None),
        ("SIGSTOP (freeze) of the master, hamq lease 3 s", dict(fault="freeze", lease=3), None, "< 4 s", 4.0),
        ("SIGSTOP (freeze) of the master, hamq default lease 10 s", dict(fault="freeze", lease=DEFAULT_LEASE),
         dict(fault="freeze"), "< 11 s", 11.0),
    ]
    for label, hsel, asel, target, limit in rows:
        hs = sel(product="hamq", measure="takeover", **hsel) if hsel else []
        as_ = sel(product="activemq", measure="takeover", **asel) if asel else []
        if not hs and not as_:
            continue
        hn, hp50, hmax, hfail = stats([r["takeover_s"] for r in hs])
        verdict = ""
        if hs and limit:
            verdict = " (met)" if hfail == 0 and hmax is not None and hmax < limit else " (MISSED)"
        if as_:
            an, ap50s, amaxs, ap50, amax = cell_amq(as_)
        else:
            an, ap50s, amaxs, ap50, amax = "-", "-", "-", None, None
        w("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            label, hn if hs else "-", fmt(hp50) if hs else "-", fmt(hmax) if hs else "-",
            (target + verdict) if hs else "-", an, ap50s, amaxs,
            ratio(ap50, hp50) if hs else "-", ratio(amax, hmax) if hs else "-"))
    w("| network cut | skipped (not measured by this benchmark) | | | < lease + 1 s | skipped | | | | |")
    w("")

    # where the hamq takeover time goes
    if sel(product="hamq", measure="takeover"):
        w("### hamq takeover, step by step (p50 / max, seconds after the fault)")
        w("")
        w("| fault | lease | rounds | slave logs `acquired the lock` | slave logs `listening for STOMP` | "
          "first receipt | old master exit code(s) |")
        w("|---|---|---|---|---|---|---|")
    for fault, lease in (("kill", DEFAULT_LEASE), ("term", DEFAULT_LEASE), ("freeze", 3), ("freeze", DEFAULT_LEASE)):
        hs = sel(product="hamq", measure="takeover", fault=fault, lease=lease)
        if not hs:
            continue
        def pm(key):
            n, p50, mx, _ = stats([r.get(key) for r in hs])
            return "%s / %s" % (fmt(p50), fmt(mx))
        codes = sorted({str(r.get("exit_code")) for r in hs})
        w("| %s | %d s | %d | %s | %s | %s | %s |" % (fault, lease, len(hs), pm("acquired_s"), pm("listening_s"),
                                                  pm("takeover_s"), ", ".join(codes)))
    frz = sel(product="hamq", measure="takeover", fault="freeze")
    if frz:
        n, p50, mx, _ = stats([r.get("cont_to_lost_s") for r in frz])
        n2, p502, mx2, _ = stats([r.get("cont_to_exit_s") for r in frz])
        conn = sum(r.get("old_after_cont_connected", 0) for r in frz)
        rcpt = sum(r.get("old_after_cont_receipts", 0) for r in frz)
        w("")
        w("Frozen hamq master after SIGCONT (%d rounds): logs `lost the lock` after %s p50 / %s max, exits after "
          "%s p50 / %s max; exit codes %s; probe attempts it answered with CONNECTED after SIGCONT: %d, "
          "with a RECEIPT: %d." % (n, fmt(p50), fmt(mx), fmt(p502), fmt(mx2),
                                   ", ".join(sorted({str(r.get("exit_code")) for r in frz})), conn, rcpt))
    others = sel(product="hamq", measure="takeover")
    bad = [r for r in others if r.get("old_after_fault_receipts") and r["fault"] != "freeze"]
    if bad:
        w("")
        w("Old hamq master gave RECEIPTs after the fault in %d rounds." % len(bad))
    aold = [r for r in sel(product="activemq", measure="takeover") if r.get("old_after_fault_receipts")]
    if aold:
        w("")
        w("Old ActiveMQ master gave RECEIPTs after the fault in %d rounds." % len(aold))
    amqst = sel(product="activemq", measure="takeover")
    if amqst:
        states = {}
        for r in amqst:
            k = "%s/%s" % (r["fault"], r.get("slave_state"))
            states[k] = states.get(k, 0) + 1
        w("")
        w("ActiveMQ slave state at the fault, from its log (fault/state: rounds): " +
          ", ".join("%s: %d" % kv for kv in sorted(states.items())) + ".")
    w("")

    w("### Start-up")
    w("")
    w("| measure | hamq rounds | hamq p50 | hamq max | ActiveMQ rounds | ActiveMQ p50 | ActiveMQ max | "
      "ActiveMQ/hamq p50 |")
    w("|---|---|---|---|---|---|---|---|")
    hse = sel(product="hamq", measure="slave_election")
    ase = sel(product="activemq", measure="slave_election")
    startup_rows = [
        ("slave start -> in the election (hamq: its waiting SELECT ... FOR UPDATE on hamq_lock is queued in "
         "MariaDB; ActiveMQ: logs `Attempting to acquire the exclusive lock`, just before its SELECT ... FOR UPDATE)",
         [r.get("lock_request_s") for r in hse], [r.get("attempting_s") for r in ase]),
        ("slave start -> hamq logs `waiting for the lock`",
         [r.get("waiting_line_s") for r in hse], None),
        ("start -> master on an empty database (hamq `listening for STOMP`; "
         "ActiveMQ `Apache ActiveMQ ... started`)",
         [r.get("listening_s") for r in sel(product="hamq", measure="start_master")],
         [r.get("started_s") for r in sel(product="activemq", measure="start_master")]),
        ("start -> first persistent SEND receipted, empty database",
         [r.get("first_receipt_s") for r in sel(product="hamq", measure="start_master")],
         [r.get("first_receipt_s") for r in sel(product="activemq", measure="start_master")]),
    ]
    for label, hv, av in startup_rows:
        hn, hp50, hmax, hf = stats(hv)
        if av is None:
            an, ap50, amax, af = "-", None, None, 0
        else:
            an, ap50, amax, af = stats(av)
        if not hn and not an:
            continue
        w("| %s | %s | %s | %s | %s | %s | %s | %s |" % (
            label, hn or "-", fmt(hp50) + (" (%d missing)" % hf if hf else ""), fmt(hmax),
            an or "-", fmt(ap50) + (" (%d missing)" % af if af else ""), fmt(amax), ratio(ap50, hp50)))
    w("")
    loads = sel(measure="load")
    if loads:
        w("Load average (1/5/15 min) when each step began: " +
          "; ".join("%s %s" % (r["step"], "/".join(r["loadavg"])) for r in loads) + ".")
        w("")
    slow = sel(product="hamq", measure="slow_round")
    if slow:
        w("### hamq rounds over target, with their log lines (time relative to the fault)")
        w("")
        for r in slow:
            w("- %s, lease %d s, round %d: %s" % (r["fault"], r["lease"], r["round"], fmt(r["takeover_s"])))
            w("")
            w("  ```")
            for line in r["lines"]:
                w("  " + line)
            w("  ```")
        w("")
    return "\n".join(out)


# ---------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hamq-bin", default="target/release/hamq")
    ap.add_argument("--hamq-config", default="/dev/null")
    ap.add_argument("--anchor", default=os.environ.get("AMQ_ANCHOR", "../shared/anchors/activemq"))
    ap.add_argument("--var", default=os.environ.get("AMQ_ANCHOR_VAR"))
    ap.add_argument("--out", required=False)
    ap.add_argument("--products", default="hamq,activemq")
    ap.add_argument("--steps", default="start,kill,term,sleeping,freeze",
                    help="comma list, run in this order; each step does hamq then ActiveMQ")
    ap.add_argument("--rounds", type=int, default=20, help="kill -9 and SIGTERM rounds, each product")
    ap.add_argument("--freeze-rounds", type=int, default=20, help="hamq freeze rounds at lease 3 s")
    ap.add_argument("--freeze-default-rounds", type=int, default=5, help="hamq freeze rounds at the default lease")
    ap.add_argument("--amq-freeze-rounds", type=int, default=3)
    ap.add_argument("--amq-freeze-cap", type=float, default=60.0)
    ap.add_argument("--amq-sleeping-rounds", type=int, default=3,
                    help="ActiveMQ kill -9 rounds with the slave in its sleep between lock attempts")
    ap.add_argument("--start-rounds", type=int, default=20, help="hamq start -> master on an empty database")
    ap.add_argument("--amq-start-rounds", type=int, default=5)
    ap.add_argument("--report", metavar="OUT", help="only print the tables of OUT/results.jsonl")
    a = ap.parse_args()

    if a.report:
        print(report(os.path.join(a.report, "results.jsonl")))
        return
    if not a.var or not a.out:
        sys.exit("--var (or AMQ_ANCHOR_VAR) and --out are required")
    a.anchor = os.path.abspath(a.anchor)
    a.var = os.path.abspath(a.var)
    a.hamq_bin = os.path.abspath(a.hamq_bin)
    os.makedirs(a.out, exist_ok=True)
    a.db = Db(a.var)
    res = Results(os.path.join(a.out, "results.jsonl"))
    products = a.products.split(",")

    def cleanup(*_):
        for b in ALL_HAMQ:
            try:
                b.stop()
            except Exception:  # noqa
                pass
        if _:
            sys.exit(1)
    signal.signal(signal.SIGTERM, cleanup)
    try:
        for step in a.steps.split(","):
            load = open("/proc/loadavg").read().split()[:3]
            log("step %s; load average %s" % (step, " ".join(load)))
            res.add(measure="load", step=step, loadavg=load)
            if step == "start":
                if "hamq" in products:
                    hamq_start_empty(a, res, a.start_rounds)
                if "activemq" in products:
                    amq_start_empty(a, res, a.amq_start_rounds)
            elif step in ("kill", "term"):
                if "hamq" in products:
                    hamq_faults(a, res, step, a.rounds, None)
                if "activemq" in products:
                    amq_faults(a, res, step, a.rounds)
            elif step == "sleeping":
                if "activemq" in products and a.amq_sleeping_rounds:
                    amq_faults(a, res, "kill", a.amq_sleeping_rounds, phase="sleeping")
            elif step == "freeze":
                if "hamq" in products:
                    hamq_faults(a, res, "freeze", a.freeze_rounds, 3)
                    if a.freeze_default_rounds:
                        hamq_faults(a, res, "freeze", a.freeze_default_rounds, None)
                if "activemq" in products and a.amq_freeze_rounds:
                    amq_faults(a, res, "freeze", a.amq_freeze_rounds, cap=a.amq_freeze_cap)
            else:
                sys.exit("unknown step %s" % step)
            if "activemq" in products:
                anchor(a, "stop.sh", "b", "a")
    finally:
        cleanup()
    text = report(res.path)
    with open(os.path.join(a.out, "tables.md"), "w") as f:
        f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
