#!/usr/bin/python3
"""A hung HSM: nothing waits on it for longer than pkcs11.sign_timeout_ms.

signetd runs over build/tests/libpkcs11_faulty.so with sign_timeout_ms 500.
With the control file saying `block`, C_SignInit/C_Sign do not return (a hung
HSM, docs/behaviour.md) until the word changes. Then:
- a write answers 503 problem+json (hsm-unavailable) within a few seconds,
  and nothing is appended; so do concurrent writes;
- /healthz answers promptly (503, "hsm":"unavailable") on both listeners,
  again and again; /metrics answers; /v1/keys and /v1/events keep answering
  after many such probes;
- a snapshot that must be re-signed answers 503 with Retry-After instead of
  hanging;
- once unblocked, /healthz turns 200 by itself, writes succeed at the next
  position, the snapshot is signed, and the chain verifies;
- SIGTERM while a sign call is stuck stops the process within 5 s, and a
  restart finds every acknowledged write.

Every request here has a socket timeout far above its bound, so a hang shows
as a failed bound, not as a stuck test."""

import http.client
import os
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from client import (  # noqa: E402
    fetch_all_events, get_keys, in_threads, register, request, wait_until)
from deploy import E2ETestCase, FaultyHsmTestCase  # noqa: E402
from verify import metric_value, parse_metrics, verify_chain, verify_snapshot  # noqa: E402

TIMEOUT_MS = 500
PROMPT = 3.0  # seconds: an answer that needs no HSM (the old code hung for ever)
BOUNDED = 5.0  # seconds: an answer that waits at most for the sign deadline


class HsmHang(FaultyHsmTestCase):
    @classmethod
    def setUpClass(cls):
        def short_deadline(c):
            c["pkcs11"]["sign_timeout_ms"] = TIMEOUT_MS
        cls.start_deployment(faulty=True, mutate=short_deadline)
        cls.keys = get_keys(cls.rp)

    def dev(self):
        return self.unique("hang")

    def timed(self, bound, what, fn, *a, **kw):
        """fn(*a, **kw) must return within bound seconds (socket timeout 30)."""
        t0 = time.monotonic()
        try:
            r = fn(*a, **kw)
        except (OSError, http.client.HTTPException) as e:
            self.fail("%s: no answer after %.1f s (%r): hung" % (what, time.monotonic() - t0, e))
        secs = time.monotonic() - t0
        self.assertLess(secs, bound, "%s took %.1f s: %r" % (what, secs, r))
        return r

    def get(self, port, path, token=None):
        return request("GET", port, path, token=token, timeout=30)

    def healthy_write(self):
        r = self.timed(BOUNDED, "healthy write", register, self.wp, self.ops, self.dev())
        self.assertStatus(r, 201)
        pos = r.body["position"]
        # Let the read model catch up, so a later snapshot must be re-signed.
        e = self.get(self.rp, "/v1/events?after=0&limit=1&min_position=%d&wait_ms=5000" % pos, self.audit)
        self.assertStatus(e, 200)
        return pos

    def recover(self, head):
        """Unblock; /healthz turns 200 by itself; the next write lands at head + 1."""
        self.set_fault(None)
        for port in (self.wp, self.rp):
            wait_until(lambda: self.get(port, "/healthz").status == 200, 15, 0.1,
                       "/healthz 200 on port %d after unblocking" % port)

        def write_ok():
            r = register(self.wp, self.ops, self.dev())
            if r.status != 201:
                self.assertProblem(r, 503)
            return r if r.status == 201 else None
        r = wait_until(write_ok, 10, 0.2, "a write to succeed after unblocking")
        self.assertEqual(r.body["position"], head + 1, "refused writes left events or a gap")
        events, h = fetch_all_events(self.rp, self.audit)
        verify_chain(events, self.keys)
        self.assertEqual(h, head + 1)
        s = self.get(self.rp, "/v1/snapshots/devices?min_position=%d&wait_ms=5000" % h, self.audit)
        self.assertStatus(s, 200)
        verify_snapshot(s.body, self.keys)
        self.assertEqual(s.body["as_of"]["position"], h)
        return events

    def test_blocked_hsm(self):
        head = self.healthy_write()
        self.set_fault("block")

        # A write: 503 problem+json within a few seconds, nothing appended.
        failed = self.dev()
        r = self.timed(BOUNDED, "write while the HSM hangs", register, self.wp, self.ops, failed,
                       headers={"Idempotency-Key": "k-" + failed})
        self.assertProblem(r, 503, "hsm-unavailable", "write while the HSM hangs")
        self.assertEqual(r.headers.get("Retry-After"), "1", r)

        # Concurrent writes: every one answered 503 within the bound.
        def writer(i):
            dev = "%s-c%d" % (failed, i)
            t0 = time.monotonic()
            try:
                a = register(self.wp, self.ops, dev)
            except (OSError, http.client.HTTPException) as e:
                a = e
            return dev, a, time.monotonic() - t0
        answers = in_threads(8, writer, timeout=40)
        self.assertEqual(len(answers), 8)
        for dev, a, secs in answers:
            self.assertNotIsInstance(a, Exception, "%s: %r" % (dev, a))
            self.assertLess(secs, BOUNDED, "%s took %.1f s" % (dev, secs))
            self.assertProblem(a, 503, "hsm-unavailable")

        # /healthz on both listeners, many times: prompt 503, hsm unavailable.
        for i in range(15):
            for port in (self.wp, self.rp):
                h = self.timed(PROMPT, "/healthz #%d on port %d" % (i, port), self.get, port, "/healthz")
                self.assertStatus(h, 503, "/healthz while the HSM hangs")
                self.assertEqual(h.body.get("hsm"), "unavailable", h)
                self.assertEqual(h.body.get("status"), "unavailable", h)
        m = self.timed(PROMPT, "/metrics", self.get, self.rp, "/metrics")
        self.assertStatus(m, 200)
        samples = parse_metrics(m.raw.decode())
        self.assertEqual(metric_value(samples, "signet_hsm_up"), 0.0)
        self.assertGreaterEqual(metric_value(samples, "signet_hsm_sign_timeouts_total"), 1.0)

        # Reads that need no HSM keep answering after all those probes.
        for i in range(5):
            for port in (self.wp, self.rp):
                k = self.timed(PROMPT, "/v1/keys on port %d" % port, self.get, port, "/v1/keys")
                self.assertStatus(k, 200)
            ev = self.timed(PROMPT, "/v1/events", self.get, self.rp, "/v1/events", self.audit)
            self.assertStatus(ev, 200)
            self.assertEqual(ev.body["head"], head, "an event was appended while the HSM hung")

        # Stay blocked for a while: the prober keeps probing (each probe a
        # stuck call) and the service keeps answering.
        time.sleep(3)
        m = parse_metrics(self.timed(PROMPT, "/metrics", self.get, self.wp, "/metrics").raw.decode())
        self.assertGreaterEqual(metric_value(m, "signet_hsm_stuck_calls"), 1.0)
        h = self.timed(PROMPT, "/healthz", self.get, self.rp, "/healthz")
        self.assertStatus(h, 503)

        events = self.recover(head)
        logged = {e["data"]["device_id"] for e in events if e["type"] == "DeviceRegistered"}
        self.assertNotIn(failed, logged)
        self.assertEqual(sorted(d for d, _, _ in answers if d in logged), [])
        # The refused request was not recorded: the same key registers it now.
        r = register(self.wp, self.ops, failed, headers={"Idempotency-Key": "k-" + failed})
        self.assertStatus(r, 201)

    def test_snapshot_while_blocked(self):
        """The first thing to meet the hung HSM is a snapshot that must be
        re-signed: 503 with Retry-After within the bound, not a hang; the
        HTTP threads stay free meanwhile."""
        head = self.healthy_write()
        self.set_fault("block")
        results = []

        def snap():
            try:
                results.append(self.get(self.rp, "/v1/snapshots/devices", self.audit))
            except (OSError, http.client.HTTPException) as e:
                results.append(e)
        t0 = time.monotonic()
        ts = [threading.Thread(target=snap) for _ in range(4)]
        for t in ts:
            t.start()
        # While they wait, the read listener still answers.
        k = self.timed(PROMPT, "/v1/keys while snapshots wait", self.get, self.rp, "/v1/keys")
        self.assertStatus(k, 200)
        for t in ts:
            t.join(40)
        secs = time.monotonic() - t0
        self.assertLess(secs, BOUNDED, "snapshots took %.1f s" % secs)
        self.assertEqual(len(results), 4)
        for s in results:
            self.assertNotIsInstance(s, Exception, s)
            self.assertProblem(s, 503, "hsm-unavailable", "snapshot while the HSM hangs")
            self.assertEqual(s.headers.get("Retry-After"), "1", s)
        self.recover(head)

    def test_sigterm_while_blocked(self):
        """SIGTERM with a sign call stuck: the process exits within 5 s, says
        so in its log, and a restart finds every acknowledged write."""
        head = self.healthy_write()
        self.set_fault("block")
        r = self.timed(BOUNDED, "write while the HSM hangs", register, self.wp, self.ops, self.dev())
        self.assertProblem(r, 503, "hsm-unavailable")
        # That call is still inside C_Sign (the module keeps blocking).
        m = parse_metrics(self.get(self.wp, "/metrics").raw.decode())
        self.assertGreaterEqual(metric_value(m, "signet_hsm_stuck_calls"), 1.0)
        srv = self.srv
        status = srv.stop(timeout=20)
        self.assertLess(srv.stop_seconds, 5.0, "SIGTERM took %.1f s while the HSM hung" % srv.stop_seconds)
        self.assertEqual(status, 0, srv.output_text()[-2000:])
        self.assertIn("leaving a stuck PKCS#11 call behind", srv.output_text())

        self.set_fault(None)
        type(self).srv = self.dep.start()
        events, h = fetch_all_events(self.rp, self.audit)
        verify_chain(events, self.keys)
        self.assertEqual(h, head, "acknowledged writes lost or refused ones appended")
        r = register(self.wp, self.ops, self.dev())
        self.assertStatus(r, 201)
        self.assertEqual(r.body["position"], head + 1)


class InitErrorPaths(E2ETestCase):
    """`signet init` on its error paths closes only sessions it opened: with
    C_OpenSession failing right after the token is created, init fails with
    a reason and the faulty module reports no close of a never-opened
    session."""

    def test_init_when_sessions_fail(self):
        dep = self.deployment(faulty=True)
        dep.fault.set("nosession")
        p = dep.cli("init", "--config", dep.config_path)
        out = p.stdout + p.stderr
        self.assertNotEqual(p.returncode, 0, out)
        self.assertRegex(out, r"session", out)
        self.assertNotIn("never opened", out)
        # The control works: with sessions back, init completes the token.
        dep.fault.set(None)
        p = dep.cli("init", "--config", dep.config_path)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertNotIn("never opened", p.stdout + p.stderr)


if __name__ == "__main__":
    unittest.main()
