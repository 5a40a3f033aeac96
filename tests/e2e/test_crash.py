#!/usr/bin/python3
"""kill -9 under load (DESIGN.md "Failure rules"): 16 writers post devices
continuously; signetd is killed with SIGKILL; after a restart every
acknowledged device is in the log at its acknowledged position, the chain
verifies, idempotent replays of acknowledged requests give the same answer,
the read side catches up, and new writes continue the chain. Two rounds."""

import http.client
import os
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from client import fetch_all_events, get_keys, head_of, register, request  # noqa: E402
from deploy import E2ETestCase  # noqa: E402
from verify import metric_value, parse_metrics, verify_chain, verify_snapshot  # noqa: E402

WRITERS = 16
LOAD_SECONDS = 1.5
ROUNDS = 2


class CrashUnderLoad(E2ETestCase):
    @classmethod
    def setUpClass(cls):
        cls.init_deployment()  # each test starts (and kills) signetd itself

    def load_and_kill(self, srv, tag, stop_server=None):
        """Writers post until the server dies; returns (acks, attempted):
        acks {device_id: (position, body)} of every 201, attempted: every
        device id sent (acknowledged or not)."""
        acks, attempted = {}, set()
        lock = threading.Lock()
        stop = threading.Event()

        def writer(w):
            conn = http.client.HTTPConnection("127.0.0.1", self.wp, timeout=10)
            i = 0
            deadline = time.monotonic() + 30
            while not stop.is_set() and time.monotonic() < deadline:
                dev = "crash-%s-%02d-%05d" % (tag, w, i)
                i += 1
                with lock:
                    attempted.add(dev)
                try:
                    r = register(self.wp, self.ops, dev, hardware="hw-%d" % (w % 4),
                                 headers={"Idempotency-Key": "idem-" + dev}, conn=conn)
                except (OSError, http.client.HTTPException):
                    conn.close()
                    if stop.is_set():
                        break
                    conn = http.client.HTTPConnection("127.0.0.1", self.wp, timeout=10)
                    time.sleep(0.01)
                    continue
                if r.status == 201:
                    with lock:
                        acks[dev] = (r.body["position"], r.body)
            conn.close()

        ts = [threading.Thread(target=writer, args=(w,)) for w in range(WRITERS)]
        for t in ts:
            t.start()
        time.sleep(LOAD_SECONDS)
        with lock:
            n_before_kill = len(acks)
        (stop_server or srv.kill9)()
        stop.set()
        for t in ts:
            t.join(60)
        self.assertFalse(any(t.is_alive() for t in ts), "writers did not stop")
        self.assertGreater(n_before_kill, 0, "no write was acknowledged under load")
        return acks, attempted

    def test_kill9_under_load(self):
        all_acks = {}
        keys = None
        for rnd in range(ROUNDS):
            with self.subTest(round=rnd):
                srv = self.dep.start()
                if keys is None:
                    keys = get_keys(self.rp)
                else:
                    self.assertEqual(get_keys(self.rp), keys, "keys changed across a crash")
                acks, attempted = self.load_and_kill(srv, "r%d" % rnd)
                self.assertEqual(srv.proc.returncode, -9)
                all_acks.update(acks)

                srv = self.dep.start()
                events, head = fetch_all_events(self.rp, self.audit)
                self.assertEqual(len(events), head)
                verify_chain(events, keys)

                # Every acknowledged device is at its acknowledged position.
                by_pos = {e["position"]: e for e in events}
                for dev, (pos, _) in sorted(all_acks.items()):
                    ev = by_pos.get(pos)
                    self.assertIsNotNone(ev, "acknowledged %s at %d lost (head %d)" % (dev, pos, head))
                    self.assertEqual(ev["type"], "DeviceRegistered")
                    self.assertEqual(ev["data"]["device_id"], dev)
                # Each device at most once, and only devices that were sent.
                devs = [e["data"]["device_id"] for e in events]
                self.assertEqual(len(devs), len(set(devs)), "a device registered twice")
                self.assertLessEqual(set(d for d in devs if "-r%d-" % rnd in d), attempted)

                # Idempotent replays of acknowledged requests: same answer, nothing appended.
                for dev, (pos, body) in sorted(acks.items())[:25]:
                    r = register(self.wp, self.ops, dev, hardware="hw-%d" % (int(dev.split("-")[2]) % 4),
                                 headers={"Idempotency-Key": "idem-" + dev})
                    self.assertEqual((r.status, r.body), (201, body), dev)
                # Requests in flight at the kill: a retry with the same key
                # either replays the durable answer or registers now; the
                # device then exists exactly once.
                unacked = sorted(attempted - set(acks))[:10]
                for dev in unacked:
                    r = register(self.wp, self.ops, dev, hardware="hw-%d" % (int(dev.split("-")[2]) % 4),
                                 headers={"Idempotency-Key": "idem-" + dev})
                    self.assertStatus(r, 201, dev)
                    all_acks[dev] = (r.body["position"], r.body)
                self.assertEqual(head_of(self.rp, self.audit), head + sum(
                    1 for d in unacked if all_acks[d][0] > head))

                # New writes continue the chain.
                r = register(self.wp, self.ops, "after-crash-%d" % rnd)
                self.assertStatus(r, 201)
                events2, head2 = fetch_all_events(self.rp, self.audit)
                self.assertEqual(r.body["position"], head2)
                self.assertEqual(events2[:len(events)], events)
                verify_chain(events2, keys)
                all_acks["after-crash-%d" % rnd] = (r.body["position"], r.body)

                # The read side catches up with everything.
                s = request("GET", self.rp, "/v1/snapshots/devices?min_position=%d&wait_ms=10000" % head2,
                            token=self.audit)
                self.assertStatus(s, 200)
                verify_snapshot(s.body, keys)
                self.assertEqual(s.body["as_of"], {"position": head2, "hash": events2[-1]["hash"]})
                self.assertEqual(s.body["state"]["count"], len(events2))
                got = {d["device_id"]: d["position"] for d in s.body["state"]["devices"]}
                for dev, (pos, _) in all_acks.items():
                    self.assertEqual(got.get(dev), pos, dev)
                self.assertEqual(srv.stop(), 0)

    def test_sigterm_under_load(self):
        """SIGTERM (and SIGINT) under load: a clean exit 0 within seconds, and
        every acknowledged write is in the log after a restart."""
        keys = None
        for sig in ("TERM", "INT"):
            with self.subTest(signal=sig):
                srv = self.dep.start()
                keys = keys or get_keys(self.rp)
                import signal as _signal

                def stop_server():
                    srv.proc.send_signal(_signal.SIGTERM if sig == "TERM" else _signal.SIGINT)
                    srv.proc.wait(20)
                acks, _ = self.load_and_kill(srv, "s" + sig, stop_server=stop_server)
                self.assertEqual(srv.stop(), 0, "exit status after SIG%s" % sig)
                srv = self.dep.start()
                events, head = fetch_all_events(self.rp, self.audit)
                verify_chain(events, keys)
                by_pos = {e["position"]: e for e in events}
                for dev, (pos, _) in acks.items():
                    self.assertIn(pos, by_pos, "acknowledged %s at %d lost after SIG%s" % (dev, pos, sig))
                    self.assertEqual(by_pos[pos]["data"]["device_id"], dev)
                self.assertEqual(srv.stop(), 0)


class ReaderCrash(E2ETestCase):
    """kill -9 of a `--role read` process while a `--role write` process takes
    writes: after restarts the read models hold every event exactly once
    (checkpoint and read models move in one transaction)."""

    @classmethod
    def setUpClass(cls):
        cls.writer = cls.start_deployment(role="write")
        cls.read_cfg = cls.dep.write_config("read.json")

    def test_kill9_reader_during_projection(self):
        wp = self.writer.write_port
        rp = self.dep.ports[self.read_cfg][1]
        stop = threading.Event()
        acks = {}
        errors = []
        lock = threading.Lock()

        def writer(w):
            conn = http.client.HTTPConnection("127.0.0.1", wp, timeout=10)
            for i in range(100000):
                if stop.is_set():
                    break
                r = register(wp, self.ops, "rc-%d-%d" % (w, i), conn=conn)
                if r.status != 201:
                    with lock:
                        errors.append(r)
                    break
                with lock:
                    acks["rc-%d-%d" % (w, i)] = r.body["position"]
            conn.close()
        ts = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
        for t in ts:
            t.start()
        try:
            reader = self.dep.start(role="read", config=self.read_cfg)
            for _ in range(3):
                time.sleep(0.5)
                reader.kill9()
                reader = self.dep.start(role="read", config=self.read_cfg)
        finally:
            stop.set()
            for t in ts:
                t.join(60)
        self.assertEqual(errors, [], "the write process refused writes while the reader crashed")
        self.assertGreater(len(acks), 0)
        events, head = fetch_all_events(rp, self.audit)
        keys = get_keys(rp)
        verify_chain(events, keys)
        r = request("GET", rp, "/v1/snapshots/devices?min_position=%d&wait_ms=10000" % head, token=self.audit)
        self.assertStatus(r, 200)
        verify_snapshot(r.body, keys)
        self.assertEqual(r.body["as_of"], {"position": head, "hash": events[-1]["hash"]})
        self.assertEqual(r.body["state"]["count"], head)
        got = {d["device_id"]: d["position"] for d in r.body["state"]["devices"]}
        self.assertEqual(len(got), head)
        self.assertEqual(got, {e["data"]["device_id"]: e["position"] for e in events})
        for dev, pos in acks.items():
            self.assertEqual(got.get(dev), pos, dev)
        m = parse_metrics(request("GET", rp, "/metrics").raw.decode())
        self.assertEqual(metric_value(m, "signet_projector_position"), head)
        self.assertEqual(reader.stop(), 0)


if __name__ == "__main__":
    unittest.main()
