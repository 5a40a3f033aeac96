#!/usr/bin/python3
"""320 concurrent writes become one gap-free, verifiable chain; the log is
the same whatever the page size; `signet verify-log` accepts it from the
URL and from files in the three formats of docs/behaviour.md."""

import http.client
import json
import os
import re
import sys
import threading
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from client import fetch_all_events, get_keys, head_of, in_threads, register, request  # noqa: E402
from deploy import E2ETestCase  # noqa: E402
from verify import (  # noqa: E402
    METRIC_NAMES, http_requests, metric_value, parse_metrics, verify_chain, verify_snapshot)

THREADS = 32
PER_THREAD = 10


class Concurrency(E2ETestCase):
    @classmethod
    def setUpClass(cls):
        cls.start_deployment()
        cls.keys = get_keys(cls.rp)
        cls.acks, cls.failures = cls.write_concurrently()
        cls.events, cls.head = fetch_all_events(cls.rp, cls.audit)

    @classmethod
    def write_concurrently(cls):
        acks, failures = [], []
        lock = threading.Lock()
        token = cls.ops

        def worker(t):
            conn = http.client.HTTPConnection("127.0.0.1", cls.wp, timeout=60)
            for i in range(PER_THREAD):
                dev = "conc-%02d-%02d" % (t, i)
                try:
                    r = register(cls.wp, token, dev, hardware="hw-%d" % (t % 3), conn=conn)
                except (OSError, http.client.HTTPException):
                    conn.close()  # the server closed a keep-alive connection: reconnect once
                    conn = http.client.HTTPConnection("127.0.0.1", cls.wp, timeout=60)
                    try:
                        r = register(cls.wp, token, dev, hardware="hw-%d" % (t % 3), conn=conn)
                    except (OSError, http.client.HTTPException) as e:
                        with lock:
                            failures.append((dev, repr(e)))
                        continue
                with lock:
                    if r.status == 201:
                        acks.append((dev, r.body["position"]))
                    else:
                        failures.append((dev, r))
            conn.close()

        in_threads(THREADS, worker, timeout=300, together=True)
        return acks, failures

    def test_all_writes_acknowledged_with_distinct_positions(self):
        self.assertEqual(self.failures, [])
        self.assertEqual(len(self.acks), THREADS * PER_THREAD)
        positions = sorted(p for _, p in self.acks)
        self.assertEqual(positions, list(range(1, THREADS * PER_THREAD + 1)))

    def test_log_is_one_verified_chain(self):
        self.assertEqual(self.head, THREADS * PER_THREAD)
        self.assertEqual(len(self.events), self.head)
        n, last = verify_chain(self.events, self.keys)
        self.assertEqual(n, self.head)
        by_pos = {e["position"]: e for e in self.events}
        for dev, pos in self.acks:
            self.assertEqual(by_pos[pos]["type"], "DeviceRegistered")
            self.assertEqual(by_pos[pos]["data"]["device_id"], dev)
        self.assertEqual(len({e["id"] for e in self.events}), len(self.events), "event ids repeat")

    def test_paging(self):
        for limit in (7, 100, 999):
            with self.subTest(limit=limit):
                evs, head = fetch_all_events(self.rp, self.audit, limit=limit)
                self.assertEqual((evs, head), (self.events, self.head))
        # Default limit is 100; after=head gives an empty page.
        r = request("GET", self.rp, "/v1/events", token=self.audit)
        self.assertEqual(len(r.body["events"]), 100)
        self.assertEqual(r.body["events"], self.events[:100])
        r = request("GET", self.rp, "/v1/events?after=%d" % self.head, token=self.audit)
        self.assertEqual(r.body, {"events": [], "head": self.head})
        r = request("GET", self.rp, "/v1/events?after=%d&limit=5" % (self.head + 50), token=self.audit)
        self.assertStatus(r, 200)
        self.assertEqual(r.body["events"], [])
        r = request("GET", self.rp, "/v1/events?after=300&limit=1000", token=self.audit)
        self.assertEqual(r.body["events"], self.events[300:])

    def test_snapshot_has_every_device(self):
        r = request("GET", self.rp, "/v1/snapshots/devices?min_position=%d&wait_ms=10000" % self.head,
                    token=self.audit)
        self.assertStatus(r, 200)
        verify_snapshot(r.body, self.keys)
        self.assertEqual(r.body["as_of"], {"position": self.head, "hash": self.events[-1]["hash"]})
        got = {(d["device_id"], d["position"]) for d in r.body["state"]["devices"]}
        self.assertEqual(got, set(self.acks))
        self.assertEqual(r.body["state"]["count"], len(self.acks))

    def test_metrics_after_load(self):
        """All metric names of docs/behaviour.md on a --role all server, with
        values that match the log; group commit means fewer batches than events."""
        self.test_snapshot_has_every_device()  # the projector has caught up
        r = request("GET", self.rp, "/metrics")
        self.assertStatus(r, 200)
        samples = parse_metrics(r.raw.decode())
        names = {n for n, _, _ in samples}
        for n in METRIC_NAMES:
            self.assertIn(n, names)
        v = lambda n, **kw: metric_value(samples, n, **kw)  # noqa: E731
        self.assertEqual(v("signet_events_appended_total"), self.head)
        self.assertEqual(v("signet_store_head_position"), self.head)
        self.assertEqual(v("signet_projector_position"), self.head)
        self.assertEqual(v("signet_projector_lag_events"), 0)
        self.assertEqual(v("signet_projector_halted"), 0)
        self.assertEqual(v("signet_hsm_up"), 1)
        self.assertEqual(v("signet_sign_failures_total"), 0)
        batches = v("signet_commit_batches_total")
        self.assertGreaterEqual(batches, 1)
        self.assertLess(batches, self.head, "no group commit: one batch per event under 32 concurrent writers")
        self.assertGreaterEqual(http_requests(samples, "write", 201), self.head)
        self.assertEqual(request("GET", self.wp, "/metrics").status, 200)

    # ---- signet verify-log ----

    def ok_line(self):
        return "ok: %d events, head %d %s" % (self.head, self.head, self.events[-1]["hash"])

    def verify_log(self, *args, token=None):
        env = self.dep.env(SIGNET_TOKEN=token)
        return self.dep.cli("verify-log", *args, env=env)

    def test_verify_log_url(self):
        p = self.verify_log("http://127.0.0.1:%d" % self.rp, token=self.audit)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertIn(self.ok_line(), p.stdout)
        # With pinned keys too.
        keys = os.path.join(self.dep.dir, "keys.json")
        with open(keys, "w") as f:
            json.dump(self.keys, f)
        p = self.verify_log("--keys", keys, "http://127.0.0.1:%d" % self.rp, token=self.audit)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertIn(self.ok_line(), p.stdout)

    def test_verify_log_url_needs_auditor(self):
        url = "http://127.0.0.1:%d" % self.rp
        for tok in (None, "tok_wrong", self.dep.token("ops")):
            with self.subTest(token=tok and tok[:8]):
                p = self.verify_log(url, token=tok)
                self.assertNotEqual(p.returncode, 0, p.stdout + p.stderr)
                self.assertNotIn("ok:", p.stdout)

    def test_verify_log_files(self):
        keys = os.path.join(self.dep.dir, "keys.json")
        with open(keys, "w") as f:
            json.dump(self.keys, f)
        d = self.dep.dir
        forms = {
            "array.json": json.dumps(self.events),
            "page.json": json.dumps({"events": self.events, "head": self.head}),
            "lines.jsonl": "".join(json.dumps(e, separators=(",", ":")) + "\n" for e in self.events),
            "pretty.json": json.dumps(self.events, indent=2),
        }
        for name, text in forms.items():
            with self.subTest(form=name):
                path = os.path.join(d, name)
                with open(path, "w") as f:
                    f.write(text)
                p = self.verify_log("--keys", keys, path)
                self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
                self.assertIn(self.ok_line(), p.stdout)
        # Missing files and no argument: exit 2 (usage or I/O error).
        for args in (("--keys", keys, os.path.join(d, "missing.json")),
                     ("--keys", os.path.join(d, "missing-keys.json"), os.path.join(d, "array.json")),
                     ()):
            with self.subTest(args=args):
                p = self.verify_log(*args)
                self.assertEqual(p.returncode, 2, p.stdout + p.stderr)
                self.assertFalse(re.search(r"^ok:", p.stdout, re.M), p.stdout)
        # A file that is not JSON at all is refused (1 or 2, the spec leaves it open).
        bad = os.path.join(d, "garbage.json")
        with open(bad, "w") as f:
            f.write("{not json")
        p = self.verify_log("--keys", keys, bad)
        self.assertIn(p.returncode, (1, 2), p.stdout + p.stderr)
        self.assertFalse(re.search(r"^ok:", p.stdout, re.M), p.stdout)


class ConcurrentDuplicates(E2ETestCase):
    """16 requests for the same new device at once: exactly one 201, the
    others 409, one event (the business rule holds inside a group commit).
    Its own deployment: it appends to a log Concurrency compares."""

    @classmethod
    def setUpClass(cls):
        cls.start_deployment()
        cls.keys = get_keys(cls.rp)

    def test_concurrent_duplicates(self):
        for rnd in range(3):
            with self.subTest(round=rnd):
                h0 = head_of(self.rp, self.audit)
                results = in_threads(16, lambda i: register(self.wp, self.ops, "same-%d" % rnd,
                                                            hardware="hw-%d" % i), together=True)
                self.assertEqual(len(results), 16)
                ok = [r for r in results if r.status == 201]
                self.assertEqual(len(ok), 1, results)
                for r in results:
                    if r.status != 201:
                        self.assertProblem(r, 409, "conflict")
                self.assertEqual(head_of(self.rp, self.audit), h0 + 1)
        events, _ = fetch_all_events(self.rp, self.audit)
        verify_chain(events, self.keys)


if __name__ == "__main__":
    unittest.main()
