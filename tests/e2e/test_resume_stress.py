#!/usr/bin/python3
"""The suspend/resume hand-off under churn (issue 5, "Look hard at the
suspend/resume hand-off"; docs/behaviour.md "HTTP").

Every write (POST /v1/devices) is suspended on an MHD thread and resumed by
the sequencer; every read with ?min_position is suspended and resumed by the
projector (or its deadline). A lost wake-up leaves a request unanswered while
every thread is idle. This test makes many short runs with varied numbers of
concurrent keep-alive clients (1 to 64), each client writing and then reading
its own write with min_position (plus idempotent replays, which are resumed
at once, and reads that time out), and a watchdog fails the test when
requests are outstanding and none has completed for STALL_S seconds.
SIGNET_STRESS_SECONDS (default 60) bounds the time spent in runs."""

import http.client
import os
import random
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from client import request  # noqa: E402
from deploy import E2ETestCase  # noqa: E402

STALL_S = 6.0
BUDGET_S = float(os.environ.get("SIGNET_STRESS_SECONDS", "60"))
COUNTS = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64]


class Progress:
    def __init__(self):
        self.lock = threading.Lock()
        self.outstanding = {}  # id -> (what, started)
        self.last = time.monotonic()
        self.done = 0
        self.seq = 0

    def begin(self, what):
        with self.lock:
            self.seq += 1
            self.outstanding[self.seq] = (what, time.monotonic())
            return self.seq

    def end(self, k):
        with self.lock:
            self.outstanding.pop(k, None)
            self.last = time.monotonic()
            self.done += 1


class ResumeStress(E2ETestCase):
    @classmethod
    def setUpClass(cls):
        cls.start_deployment()

    def run_once(self, run, nclients, ops, rng, prog, conns, errors):
        def client(ci, seed):
            r = random.Random(seed)
            wc = http.client.HTTPConnection("127.0.0.1", self.wp, timeout=60)
            rc = http.client.HTTPConnection("127.0.0.1", self.rp, timeout=60)
            conns.extend([wc, rc])

            def call(what, port_conn, method, path, token, body=None, headers=None):
                k = prog.begin(what)
                try:
                    return request(method, None, path, token=token, body=body,
                                   headers=headers, conn=port_conn)
                finally:
                    prog.end(k)

            try:
                for i in range(ops):
                    dev = "rs-%d-%d-%d" % (run, ci, i)
                    hdrs = None
                    if r.random() < 0.25:
                        hdrs = {"Idempotency-Key": "k-" + dev}
                    w = call("POST %s" % dev, wc, "POST", "/v1/devices", self.ops,
                             body={"device_id": dev, "hardware": "hw-a"}, headers=hdrs)
                    if w.status != 201:
                        errors.append("POST %s: %r" % (dev, w))
                        continue
                    pos = w.body["position"]
                    if hdrs and r.random() < 0.5:  # replay: answered from the record
                        w2 = call("replay %s" % dev, wc, "POST", "/v1/devices", self.ops,
                                  body={"device_id": dev, "hardware": "hw-a"}, headers=hdrs)
                        if w2.status != 201 or w2.body != w.body:
                            errors.append("replay %s: %r" % (dev, w2))
                    x = r.random()
                    want = 200
                    if x < 0.1:
                        path = "/v1/snapshots/devices?min_position=%d&wait_ms=10000" % pos
                    elif x < 0.2:  # a wait that runs out
                        want = 503
                        path = "/v1/events?min_position=%d&wait_ms=%d" % (pos + 10 ** 6, r.randint(0, 30))
                    else:
                        path = "/v1/events?after=%d&limit=1&min_position=%d&wait_ms=10000" % (pos - 1, pos)
                    g = call("GET %s" % path, rc, "GET", path, self.audit)
                    if g.status != want:
                        errors.append("GET %s: %r" % (path, g))
                    elif want == 200 and path.startswith("/v1/events") and \
                            g.body["events"][0]["position"] != pos:
                        errors.append("GET %s: wrong event %r" % (path, g.body["events"][:1]))
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append("client %d of run %d: %r" % (ci, run, e))
            finally:
                wc.close()
                rc.close()

        ths = [threading.Thread(target=client, args=(ci, rng.random()), daemon=True)
               for ci in range(nclients)]
        for t in ths:
            t.start()
        return ths

    def test_many_short_runs(self):
        seed = int(os.environ.get("SIGNET_STRESS_SEED", str(int(time.time()))))
        rng = random.Random(seed)
        prog = Progress()
        errors, stalls = [], []
        t_end = time.monotonic() + BUDGET_S
        runs = 0
        hist = {}
        while time.monotonic() < t_end and not stalls and len(errors) < 20:
            runs += 1
            n = rng.choice(COUNTS)
            hist[n] = hist.get(n, 0) + 1
            conns = []
            ths = self.run_once(runs, n, rng.randint(1, 6), rng, prog, conns, errors)
            while any(t.is_alive() for t in ths):
                for t in ths:
                    t.join(0.2)
                with prog.lock:
                    idle = time.monotonic() - prog.last
                    waiting = sorted(prog.outstanding.values(), key=lambda v: v[1])
                if waiting and idle > STALL_S:
                    stalls.append("run %d (%d clients): %d requests outstanding, none completed for "
                                  "%.1f s; oldest: %s" % (runs, n, len(waiting), idle, waiting[0][0]))
                    for c in conns:  # unblock the clients
                        try:
                            c.sock and c.sock.shutdown(2)
                        except OSError:
                            pass
                    for t in ths:
                        t.join(5)
                    break
        print("\nresume stress: seed %d, %d runs, %d requests, clients per run %s"
              % (seed, runs, prog.done, dict(sorted(hist.items()))), file=sys.stderr)
        self.assertEqual(stalls, [], "lost wake-up (seed %d)" % seed)
        self.assertEqual(errors, [], "seed %d" % seed)
        self.assertGreater(runs, 10)
        self.assertEqual(request("GET", self.wp, "/healthz").status, 200)


if __name__ == "__main__":
    unittest.main(verbosity=2)
