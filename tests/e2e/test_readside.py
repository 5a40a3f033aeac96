#!/usr/bin/python3
"""The read side in its own process (`--role read`) next to a `--role write`
process on the same store: reads catch up with writes (min_position),
bounded waits end in 503 + Retry-After, every read-listener response carries
Signet-Position, /metrics is Prometheus text with the names of
docs/behaviour.md."""

import os
import socket
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from client import fetch_all_events, get_keys, head_of, register, request  # noqa: E402
from deploy import E2ETestCase  # noqa: E402
from verify import (  # noqa: E402
    http_requests, metric_value, parse_metrics, verify_chain, verify_snapshot)

READ_METRICS = ["signet_store_head_position", "signet_projector_position", "signet_projector_lag_events",
                "signet_projector_halted", "signet_hsm_up", "signet_http_requests_total"]
WRITE_METRICS = ["signet_events_appended_total", "signet_store_head_position", "signet_hsm_up",
                 "signet_sign_failures_total", "signet_commit_batches_total", "signet_http_requests_total"]


class ReadSide(E2ETestCase):
    @classmethod
    def setUpClass(cls):
        cls.writer = cls.start_deployment(role="write")
        cls.read_cfg = cls.dep.write_config("read.json")
        cls.reader = cls.dep.start(role="read", config=cls.read_cfg)
        cls.wp = cls.writer.write_port   # the write process's write listener
        cls.rp = cls.reader.read_port    # the read process's read listener
        cls.keys = get_keys(cls.rp)

    def setUp(self):
        """The read process runs (a test restarts it)."""
        if not self.reader.running():
            type(self).reader = self.dep.start(role="read", config=self.read_cfg)

    def dev(self):
        return self.unique("rs")

    def write(self):
        r = register(self.wp, self.ops, self.dev())
        self.assertStatus(r, 201)
        return r.body["position"]

    def snapshot(self, query="", token=None):
        return request("GET", self.rp, "/v1/snapshots/devices" + query, token=token or self.audit)

    def test_processes_have_the_same_keys(self):
        self.assertEqual(get_keys(self.wp), self.keys)

    def test_read_your_write_across_processes(self):
        for _ in range(3):
            pos = self.write()
            r = self.snapshot("?min_position=%d&wait_ms=10000" % pos)
            self.assertStatus(r, 200)
            self.assertGreaterEqual(int(r.headers["Signet-Position"]), pos)
            self.assertGreaterEqual(r.body["as_of"]["position"], pos)
            verify_snapshot(r.body, self.keys)
            self.assertIn(pos, [d["position"] for d in r.body["state"]["devices"]])
        events, head = fetch_all_events(self.rp, self.audit)
        self.assertGreaterEqual(head, pos)
        verify_chain(events, self.keys)
        self.assertEqual(r.body["as_of"]["hash"], events[r.body["as_of"]["position"] - 1]["hash"])

    def test_wait_is_woken_by_a_write(self):
        head = head_of(self.rp, self.audit)
        out = {}

        def reader():
            out["r"] = self.snapshot("?min_position=%d&wait_ms=8000" % (head + 1))
            out["t"] = time.monotonic()
        t = threading.Thread(target=reader)
        t.start()
        time.sleep(0.4)
        self.assertTrue(t.is_alive(), "the read did not wait for min_position: %r" % out.get("r"))
        t_write = time.monotonic()
        self.assertEqual(self.write(), head + 1)
        t.join(15)
        r = out["r"]
        self.assertStatus(r, 200)
        self.assertGreaterEqual(int(r.headers["Signet-Position"]), head + 1)
        self.assertLess(out["t"] - t_write, 3.0, "the waiting read was answered late")

    def test_min_position_timeout(self):
        far = head_of(self.rp, self.audit) + 100000
        r = self.snapshot("?min_position=%d&wait_ms=200" % far)
        self.assertProblem(r, 503)
        self.assertEqual(r.headers.get("Retry-After"), "1", r)
        self.assertIsNotNone(r.headers.get("Signet-Position"), r)
        self.assertGreaterEqual(r.elapsed, 0.18, "answered before wait_ms")
        self.assertLess(r.elapsed, 1.2, "answered long after wait_ms")

        r = self.snapshot("?min_position=%d&wait_ms=0" % far)
        self.assertProblem(r, 503)
        self.assertLess(r.elapsed, 0.5)

        r = self.snapshot("?min_position=%d" % far)  # default wait 2000 ms
        self.assertProblem(r, 503)
        self.assertGreaterEqual(r.elapsed, 1.9)
        self.assertLess(r.elapsed, 3.5)

    def test_many_waiting_reads_do_not_block_the_server(self):
        """Suspended waits hold no worker: other requests are answered meanwhile."""
        far = head_of(self.rp, self.audit) + 100000
        results = []
        ts = [threading.Thread(target=lambda: results.append(self.snapshot("?min_position=%d&wait_ms=1500" % far)))
              for _ in range(24)]
        for t in ts:
            t.start()
        time.sleep(0.2)
        r = request("GET", self.rp, "/v1/keys")
        self.assertStatus(r, 200)
        self.assertLess(r.elapsed, 1.0, "the read listener stalled behind waiting requests")
        for t in ts:
            t.join(10)
        self.assertEqual(len(results), 24)
        for r in results:
            self.assertProblem(r, 503)

    def test_signet_position_on_every_read_response(self):
        far = 10 ** 9
        cases = [
            ("GET", "/healthz", None), ("GET", "/metrics", None), ("GET", "/v1/keys", None),
            ("GET", "/v1/events", self.audit), ("GET", "/v1/snapshots/devices", self.ops),
            ("GET", "/v1/events", None),                      # 401
            ("GET", "/v1/events", self.ops),                  # 403
            ("GET", "/v1/nowhere", self.audit),               # 404
            ("GET", "/v1/snapshots/no-such-view", self.audit),  # 404
            ("GET", "/v1/events?limit=0", self.audit),        # 400
            ("GET", "/v1/snapshots/devices?min_position=%d&wait_ms=0" % far, self.audit),  # 503
            ("GET", "/v1/firmware/sha256:%s" % ("0" * 64), self.audit),
            ("POST", "/v1/devices", self.ops),                # not a read route
        ]
        for method, path, tok in cases:
            with self.subTest(method=method, path=path):
                r = request(method, self.rp, path, token=tok,
                            body={"device_id": "x-1", "hardware": "h"} if method == "POST" else None)
                v = r.headers.get("Signet-Position")
                self.assertIsNotNone(v, r)
                self.assertRegex(v, r"^\d+$")
                if r.status >= 400:
                    self.assertProblem(r, r.status)

    def test_read_process_does_not_write(self):
        r = request("POST", self.rp, "/v1/devices", token=self.ops, body={"device_id": "rd-1", "hardware": "h"})
        self.assertIn(r.status, (404, 405), r)
        try:
            r = request("POST", self.reader.write_port, "/v1/devices", token=self.ops,
                        body={"device_id": "rd-2", "hardware": "h"}, timeout=5)
            self.assertNotEqual(r.status, 201, "a --role read process accepted a write")
        except (ConnectionRefusedError, socket.timeout):
            pass  # no write listener at all

    def test_healthz(self):
        r = request("GET", self.rp, "/healthz")
        self.assertStatus(r, 200)
        self.assertEqual(r.body.get("status"), "ok")
        self.assertEqual(r.body.get("projector"), "ok")
        self.assertIsInstance(r.body.get("position"), int)
        pos = self.write()
        w = request("GET", self.wp, "/healthz")
        self.assertStatus(w, 200)
        self.assertEqual(w.body.get("position"), pos, "--role write: position is the store head")
        self.assertEqual(w.body.get("hsm"), "ok")

    def test_metrics(self):
        pos = self.write()
        self.assertStatus(self.snapshot("?min_position=%d&wait_ms=10000" % pos), 200)
        for port, names, who in ((self.rp, READ_METRICS, "read"), (self.wp, WRITE_METRICS, "write")):
            with self.subTest(process=who):
                r = request("GET", port, "/metrics")
                self.assertStatus(r, 200)
                self.assertTrue((r.headers.get("Content-Type") or "").startswith("text/plain"), r)
                samples = parse_metrics(r.raw.decode())
                present = {n for n, _, _ in samples}
                for n in names:
                    self.assertIn(n, present, "%s missing on the %s process" % (n, who))
                for n, labels, _ in samples:
                    if n == "signet_http_requests_total":
                        self.assertEqual(set(labels), {"listener", "code"}, labels)
                self.assertGreaterEqual(metric_value(samples, "signet_store_head_position"), pos)
                self.assertEqual(metric_value(samples, "signet_hsm_up"), 1.0)
        samples = parse_metrics(request("GET", self.rp, "/metrics").raw.decode())
        self.assertGreaterEqual(metric_value(samples, "signet_projector_position"), pos)
        self.assertEqual(metric_value(samples, "signet_projector_halted"), 0.0)
        self.assertGreater(http_requests(samples, "read", 200), 0)
        samples = parse_metrics(request("GET", self.wp, "/metrics").raw.decode())
        self.assertGreaterEqual(metric_value(samples, "signet_events_appended_total"), 1.0)
        self.assertGreater(http_requests(samples, "write", 201), 0)

    def test_reader_restart_catches_up(self):
        """The read process restarts from its checkpoint and catches up with
        writes made while it was down."""
        self.assertEqual(self.reader.stop(), 0)
        pos = [self.write() for _ in range(3)][-1]
        type(self).reader = self.dep.start(role="read", config=self.read_cfg)
        r = self.snapshot("?min_position=%d&wait_ms=10000" % pos)
        self.assertStatus(r, 200)
        verify_snapshot(r.body, self.keys)
        events, head = fetch_all_events(self.rp, self.audit)
        self.assertEqual(r.body["state"]["count"], sum(1 for e in events if e["type"] == "DeviceRegistered"))
        ids = [d["device_id"] for d in r.body["state"]["devices"]]
        self.assertEqual(len(ids), len(set(ids)), "an event was applied twice")


if __name__ == "__main__":
    unittest.main()
