#!/usr/bin/python3
"""Device registration end to end: the write, its event, the signed
snapshot, idempotency, the public keys, an event checked with openssl, and
`signet init` run again on a live deployment."""

import base64
import calendar
import hashlib
import json
import os
import re
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from client import fetch_all_events, get_keys, head_of, in_threads, register, request  # noqa: E402
from deploy import E2ETestCase  # noqa: E402
from verify import (  # noqa: E402
    EVENT_FIELDS, ZERO_HASH, canonical, key_id_for, key_id_of_pem, load_pem, verify_chain,
    verify_snapshot)

from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402

UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


class Devices(E2ETestCase):
    @classmethod
    def setUpClass(cls):
        cls.start_deployment()
        cls.keys = get_keys(cls.rp)
        cls.empty = request("GET", cls.rp, "/v1/snapshots/devices", token=cls.audit)

    def head(self):
        return head_of(self.rp, self.audit)

    def event_at(self, pos):
        r = request("GET", self.rp, "/v1/events?after=%d&limit=1" % (pos - 1), token=self.audit)
        self.assertStatus(r, 200)
        self.assertEqual(len(r.body["events"]), 1, r)
        return r.body["events"][0]

    def snapshot(self, min_position=None, token=None):
        q = "" if min_position is None else "?min_position=%d&wait_ms=5000" % min_position
        r = request("GET", self.rp, "/v1/snapshots/devices" + q, token=token or self.audit)
        self.assertStatus(r, 200)
        return r

    # ------------------------------------------------------------------

    def test_empty_snapshot(self):
        """Before any event: position 0, the genesis hash, no devices, signed."""
        r = self.empty
        self.assertStatus(r, 200)
        self.assertEqual(r.headers.get("Signet-Position"), "0")
        self.assertEqual(r.body["as_of"], {"position": 0, "hash": ZERO_HASH})
        self.assertEqual(r.body["state"], {"count": 0, "devices": []})
        verify_snapshot(r.body, self.keys)

    def test_register_event_and_snapshot(self):
        body = {"device_id": "dev-a1", "hardware": "hw-a", "group": "canary"}
        t0 = time.time()
        r = request("POST", self.wp, "/v1/devices", token=self.ops, body=body)
        self.assertStatus(r, 201)
        self.assertTrue((r.headers.get("Content-Type") or "").startswith("application/json"), r)
        self.assertEqual(set(r.body), {"device_id", "position"}, r)
        self.assertEqual(r.body["device_id"], "dev-a1")
        pos = r.body["position"]
        self.assertIsInstance(pos, int)
        self.assertGreaterEqual(pos, 1)

        # The event.
        ev = self.event_at(pos)
        self.assertEqual(set(ev), EVENT_FIELDS, ev)
        self.assertEqual(ev["position"], pos)
        self.assertEqual(ev["type"], "DeviceRegistered")
        self.assertEqual(ev["actor"], "ops")
        self.assertEqual(ev["data"], body)
        self.assertRegex(ev["id"], UUID)
        self.assertRegex(ev["time"], TIME)
        evt = calendar.timegm(time.strptime(ev["time"][:19], "%Y-%m-%dT%H:%M:%S"))
        self.assertLess(abs(evt - t0), 120, "event time %s is not now (UTC)" % ev["time"])
        self.assertIsInstance(ev["command_id"], str)
        self.assertTrue(ev["command_id"])
        self.assertEqual(ev["key_id"], key_id_for(self.keys, "events"))
        events, head = fetch_all_events(self.rp, self.audit)
        verify_chain(events, self.keys)
        self.assertGreaterEqual(head, pos)

        # Read your write: the snapshot at min_position shows it.
        s = self.snapshot(min_position=pos)
        self.assertGreaterEqual(int(s.headers["Signet-Position"]), pos, s)
        doc = s.body
        self.assertEqual(set(doc), {"name", "as_of", "state", "key_id", "sig"}, doc)
        self.assertEqual(doc["name"], "devices")
        self.assertGreaterEqual(doc["as_of"]["position"], pos)
        verify_snapshot(doc, self.keys)
        self.assertEqual(doc["key_id"], key_id_for(self.keys, "snapshots"))
        mine = [d for d in doc["state"]["devices"] if d["device_id"] == "dev-a1"]
        self.assertEqual(mine, [{"device_id": "dev-a1", "hardware": "hw-a", "group": "canary", "position": pos}])

        # as_of names a real event: its position and hash.
        at = self.event_at(doc["as_of"]["position"])
        self.assertEqual(doc["as_of"]["hash"], at["hash"])

        # The independent verifier refuses a snapshot with one byte changed.
        raw = json.dumps(doc)
        i = raw.index('"hw-a"') + 3
        tampered = json.loads(raw[:i] + ("b" if raw[i] != "b" else "c") + raw[i + 1:])
        self.assertNotEqual(tampered["state"], doc["state"])
        self.assertRaises(AssertionError, verify_snapshot, tampered, self.keys)

    def test_register_without_group(self):
        body = {"device_id": "dev-nogroup", "hardware": "hw-b"}
        r = request("POST", self.wp, "/v1/devices", token=self.adm, body=body)
        self.assertStatus(r, 201)
        ev = self.event_at(r.body["position"])
        self.assertEqual(ev["data"], body)
        self.assertEqual(ev["actor"], "adm")
        s = self.snapshot(min_position=r.body["position"]).body
        mine = [d for d in s["state"]["devices"] if d["device_id"] == "dev-nogroup"]
        self.assertEqual(mine, [{"device_id": "dev-nogroup", "hardware": "hw-b", "position": r.body["position"]}])

    def test_duplicate_is_409(self):
        r = request("POST", self.wp, "/v1/devices", token=self.ops, body={"device_id": "dev-dup", "hardware": "h"})
        self.assertStatus(r, 201)
        h0 = self.head()
        for who, body in (("ops", {"device_id": "dev-dup", "hardware": "h"}),
                          ("ops", {"device_id": "dev-dup", "hardware": "other", "group": "g"}),
                          ("adm", {"device_id": "dev-dup", "hardware": "h"})):
            with self.subTest(principal=who, body=body):
                r = request("POST", self.wp, "/v1/devices", token=self.dep.token(who), body=body)
                self.assertProblem(r, 409, "conflict")
        self.assertEqual(self.head(), h0)

    def test_snapshot_state_shape(self):
        for d in ("snap-c", "snap-a", "snap-b"):
            r = register(self.wp, self.ops, d)
            self.assertStatus(r, 201)
        s = self.snapshot(min_position=r.body["position"])
        state = s.body["state"]
        ids = [d["device_id"] for d in state["devices"]]
        self.assertEqual(ids, sorted(ids), "devices not sorted by device_id")
        self.assertEqual(len(ids), len(set(ids)))
        self.assertEqual(state["count"], len(ids))
        self.assertEqual(set(state), {"count", "devices"})
        # Every device in the snapshot is a DeviceRegistered event at its position.
        events, _ = fetch_all_events(self.rp, self.audit)
        by_pos = {e["position"]: e for e in events}
        for d in state["devices"]:
            e = by_pos[d["position"]]
            self.assertEqual(e["type"], "DeviceRegistered")
            self.assertEqual(e["data"]["device_id"], d["device_id"])
        # Not re-signed while the position has not moved: same bytes twice.
        a = request("GET", self.rp, "/v1/snapshots/devices", token=self.audit)
        b = request("GET", self.rp, "/v1/snapshots/devices", token=self.ops)
        if a.body["as_of"] == b.body["as_of"]:
            self.assertEqual(a.body, b.body, "snapshot re-signed without a new position")
        self.assertIsNotNone(a.headers.get("Signet-Position"))
        # Quiescent: the snapshot is at the read model's position.
        self.assertEqual(int(b.headers["Signet-Position"]), b.body["as_of"]["position"])

    def test_events_returned_as_stored(self):
        """Events come back in canonical JSON, exactly as stored."""
        r = register(self.wp, self.ops, "canon-1", hardware="hw-c")
        self.assertStatus(r, 201)
        page = request("GET", self.rp, "/v1/events?after=0&limit=1000", token=self.audit)
        self.assertStatus(page, 200)
        self.assertIsNotNone(page.headers.get("Signet-Position"))
        for ev in page.body["events"]:
            self.assertIn(canonical(ev, without=()), page.raw, "event %d is not canonical" % ev["position"])
        self.assertEqual(page.body["head"], len(page.body["events"]))

    # ---- idempotency ----

    def post(self, body, key=None, token=None):
        hdrs = {"Idempotency-Key": key} if key is not None else None
        return request("POST", self.wp, "/v1/devices", token=token or self.ops, body=body, headers=hdrs)

    def test_idempotency_replay(self):
        body = {"device_id": "idem-a", "hardware": "hw-a"}
        first = self.post(body, key="key-1")
        self.assertStatus(first, 201)
        h0 = self.head()
        for _ in range(3):
            again = self.post(body, key="key-1")
            self.assertEqual((again.status, again.body), (first.status, first.body))
        self.assertEqual(self.head(), h0, "a replay appended events")

        # Same key, another request: 422, nothing appended.
        for other in ({"device_id": "idem-b", "hardware": "hw-a"}, {"device_id": "idem-a", "hardware": "hw-x"}):
            r = self.post(other, key="key-1")
            self.assertProblem(r, 422, "unprocessable")
        self.assertEqual(self.head(), h0)
        # The 422 registered nothing: idem-b is free.
        self.assertStatus(self.post({"device_id": "idem-b", "hardware": "hw-a"}), 201)

        # Another principal with the same key is a different scope.
        r = self.post({"device_id": "idem-c", "hardware": "hw-a"}, key="key-1", token=self.adm)
        self.assertStatus(r, 201)
        self.assertEqual(self.event_at(r.body["position"])["actor"], "adm")

    def test_idempotency_failed_request_not_recorded(self):
        """Only successful answers are recorded: a refused request can be
        retried with the same key."""
        r = self.post({"device_id": "../bad", "hardware": "hw-a"}, key="key-retry")
        self.assertProblem(r, 400)
        r = self.post({"device_id": "idem-retry", "hardware": "hw-a"}, key="key-retry")
        self.assertStatus(r, 201)
        # A 409 is not recorded either.
        self.assertStatus(self.post({"device_id": "idem-409", "hardware": "h"}), 201)
        self.assertProblem(self.post({"device_id": "idem-409", "hardware": "h"}, key="key-409"), 409)
        r = self.post({"device_id": "idem-409b", "hardware": "h"}, key="key-409")
        self.assertStatus(r, 201)

    def test_idempotency_concurrent_same_key(self):
        """The same key sent 8 times at once: one event; every answer is the
        stored 201 or a 409 (first request still in flight)."""
        body = {"device_id": "idem-conc", "hardware": "hw-a"}
        h0 = self.head()
        results = in_threads(8, lambda i: self.post(body, key="key-conc"), together=True)
        self.assertEqual(len(results), 8)
        ok = [r for r in results if r.status == 201]
        self.assertTrue(ok, results)
        for r in results:
            if r.status == 201:
                self.assertEqual(r.body, ok[0].body)
            else:
                self.assertProblem(r, 409, "conflict")
        self.assertEqual(self.head(), h0 + 1)
        self.assertEqual(self.post(body, key="key-conc").body, ok[0].body)

    # ---- keys and openssl ----

    def test_keys(self):
        keys = self.keys["keys"]
        self.assertEqual(len(keys), 3, keys)
        self.assertEqual(sorted(k["purpose"] for k in keys), ["devices", "events", "snapshots"])
        for k in keys:
            self.assertEqual(k["alg"], "ES256")
            self.assertIsInstance(k["status"], str)
            self.assertEqual(k["key_id"], key_id_of_pem(k["public_key_pem"]))
            pub = load_pem(k["public_key_pem"])
            self.assertIsInstance(pub, ec.EllipticCurvePublicKey)
            self.assertEqual(pub.curve.name, "secp256r1")
        self.assertEqual(len({k["key_id"] for k in keys}), 3)
        self.assertEqual(get_keys(self.wp), self.keys, "the write listener serves other keys")

    def test_openssl_verifies_an_event(self):
        r = register(self.wp, self.ops, "ossl-1", hardware="hw-o")
        self.assertStatus(r, 201)
        ev = self.event_at(r.body["position"])
        pem = [k for k in self.keys["keys"] if k["key_id"] == ev["key_id"]][0]["public_key_pem"]
        d = self.dep.dir
        paths = {n: os.path.join(d, n) for n in ("pub.pem", "sig.der", "canonical.json", "tampered.json")}
        canon = canonical(ev)
        self.assertEqual(hashlib.sha256(canon).hexdigest(), ev["hash"])
        with open(paths["pub.pem"], "w") as f:
            f.write(pem)
        with open(paths["sig.der"], "wb") as f:
            f.write(base64.b64decode(ev["sig"]))
        with open(paths["canonical.json"], "wb") as f:
            f.write(canon)
        i = canon.index(b"hw-o") + 3
        with open(paths["tampered.json"], "wb") as f:
            f.write(canon[:i] + b"p" + canon[i + 1:])

        def dgst(data):
            return subprocess.run(["openssl", "dgst", "-sha256", "-verify", paths["pub.pem"],
                                   "-signature", paths["sig.der"], data],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
        ok = dgst(paths["canonical.json"])
        self.assertEqual(ok.returncode, 0, ok.stdout)
        self.assertIn(b"Verified OK", ok.stdout)
        bad = dgst(paths["tampered.json"])
        self.assertNotEqual(bad.returncode, 0, bad.stdout)
        self.assertIn(b"Verification failure", bad.stdout)

    def test_healthz(self):
        r = request("GET", self.rp, "/healthz")
        self.assertStatus(r, 200)
        for f, v in (("status", "ok"), ("hsm", "ok"), ("store", "ok"), ("projector", "ok")):
            self.assertEqual(r.body.get(f), v, r)
        self.assertIsInstance(r.body.get("position"), int, r)
        self.assertIsInstance(r.body.get("head"), int, r)
        self.assertLessEqual(r.body["position"], r.body["head"])

    # ---- restart with signet init run again ----

    def test_init_again_and_restart(self):
        r = register(self.wp, self.ops, "before-restart")
        self.assertStatus(r, 201)
        events0, head0 = fetch_all_events(self.rp, self.audit)
        rc = self.srv.stop()
        self.assertEqual(rc, 0, "signetd exit status after SIGTERM")
        self.assertLess(self.srv.stop_seconds, 10)
        p = self.dep.cli("init", "--config", self.dep.config_path)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        type(self).srv = self.dep.start()
        self.assertEqual(get_keys(self.rp), self.keys, "keys changed after init + restart")
        events1, head1 = fetch_all_events(self.rp, self.audit)
        self.assertEqual((events1, head1), (events0, head0))
        # The write side remembers what the log holds.
        self.assertProblem(register(self.wp, self.ops, "before-restart"), 409, "conflict")
        r = register(self.wp, self.ops, "after-restart")
        self.assertStatus(r, 201)
        self.assertEqual(r.body["position"], head0 + 1)
        events, _ = fetch_all_events(self.rp, self.audit)
        verify_chain(events, self.keys)
        s = self.snapshot(min_position=head0 + 1).body
        self.assertEqual(s["state"]["count"],
                         sum(1 for e in events if e["type"] == "DeviceRegistered"))


if __name__ == "__main__":
    unittest.main()
