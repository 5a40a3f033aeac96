#!/usr/bin/python3
"""Rollouts end to end: membership of 200 devices at each stage against
API.md's formula (recomputed here), the update answer (signed manifest,
signed bytes, image URL, offer numbers), auto-halt by the system, rollback
with and without the security_version block, supersession, pause and
resume, the rollouts snapshot's counts, every 4xx class of the new bodies
with the log unchanged, and the role matrix of the new endpoints."""

import base64
import hashlib
import json
import os
import secrets
import struct
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from client import fetch_all_events, get_keys, head_of, register, request  # noqa: E402
from deploy import E2ETestCase  # noqa: E402
from verify import canonical, sha256_hex, verify_signed_doc, verify_snapshot  # noqa: E402

# Device principals of this file (each bound to its own device id).
DEVICE_IDS = (["m-000"] + ["h-%02d" % i for i in range(30)] + ["b1-%d" % i for i in range(4)]
              + ["b2-%d" % i for i in range(4)] + ["p-%d" % i for i in range(4)]
              + ["s-%d" % i for i in range(4)] + ["r-%d" % i for i in range(4)])
DEV_TOKENS = {d: "tok_" + secrets.token_urlsafe(24) for d in DEVICE_IDS}


def add_devices(cfg):
    for d, tok in DEV_TOKENS.items():
        cfg["principals"].append({"name": "dev." + d, "token_sha256": sha256_hex(tok),
                                  "roles": ["device"], "device_id": d})
    return cfg


def bucket(rollout_id, device_id):
    """API.md: uint32_be(sha256(rollout_id ":" device_id)[0:4]) % 10000."""
    d = hashlib.sha256((rollout_id + ":" + device_id).encode()).digest()
    return struct.unpack(">I", d[:4])[0] % 10000


def members(rollout_id, devices, percent):
    return {d for d in devices if bucket(rollout_id, d) < percent * 100}


class Rollouts(E2ETestCase):
    @classmethod
    def setUpClass(cls):
        cls.start_deployment(mutate=add_devices)
        cls.ci = cls.dep.token("ci")
        cls.keys = get_keys(cls.rp)
        cls.versions = iter(range(1, 1000000))

    # ---- helpers ----

    def head(self):
        return head_of(self.rp, self.audit)

    def upload(self, hardware, sv):
        v = next(self.versions)
        body = b"image %s sv%d v%d " % (hardware.encode(), sv, v) + secrets.token_bytes(64)
        r = request("POST", self.wp,
                    "/v1/firmware?name=fw-ro&version=1.%d&hardware=%s&security_version=%d"
                    % (v, hardware, sv),
                    token=self.ci, body=body, headers={"Content-Type": "application/octet-stream"})
        self.assertStatus(r, 201)
        self.assertEqual(r.body["firmware_id"], "sha256:" + hashlib.sha256(body).hexdigest())
        return r.body["firmware_id"]

    def register_all(self, ids, hardware, group=None):
        pos = 0
        for d in ids:
            r = register(self.wp, self.ops, d, hardware=hardware, group=group)
            self.assertStatus(r, 201)
            pos = r.body["position"]
        return pos

    def start(self, fw, hardware, stages, threshold=0.5, min_reports=1000, group=None,
              status=201, **extra):
        body = {"firmware_id": fw, "hardware": hardware, "stages": stages,
                "failure_threshold": threshold, "min_reports": min_reports}
        if group:
            body["group"] = group
        body.update(extra)
        r = request("POST", self.wp, "/v1/rollouts", token=self.ops, body=body)
        self.assertStatus(r, status)
        if status != 201:
            return r
        self.assertEqual(set(r.body), {"rollout_id", "position"}, r)
        return r.body["rollout_id"], r.body["position"]

    def switch(self, rid, action, status=200):
        r = request("POST", self.wp, "/v1/rollouts/%s/%s" % (rid, action), token=self.ops)
        self.assertStatus(r, status)
        if status == 200:
            self.assertEqual(set(r.body), {"rollout_id", "state", "percent", "position"}, r)
            self.assertEqual(r.body["rollout_id"], rid)
        return r

    def update(self, dev, pos, token=None):
        r = request("GET", self.rp, "/v1/devices/%s/update?min_position=%d&wait_ms=5000" % (dev, pos),
                    token=token or self.ops)
        self.assertIn(r.status, (200, 204), r)
        self.assertGreaterEqual(int(r.headers["Signet-Position"]), pos)
        if r.status == 204:
            self.assertEqual(r.raw, b"")
        return r

    def report(self, dev, fw, status, detail=None, expect=202):
        body = {"firmware_id": fw, "status": status}
        if detail is not None:
            body["detail"] = detail
        r = request("POST", self.wp, "/v1/devices/%s/reports" % dev, token=DEV_TOKENS[dev],
                    body=body)
        self.assertStatus(r, expect)
        return r.body.get("position") if expect == 202 else r

    def snapshot_rollout(self, rid, pos):
        """The rollout's summary in the paged rollouts snapshot (each page
        signed on its own)."""
        after, found = 0, []
        while True:
            q = "min_position=%d&wait_ms=5000&after=%d&limit=2" % (pos, after)
            r = request("GET", self.rp, "/v1/snapshots/rollouts?" + q, token=self.audit)
            self.assertStatus(r, 200)
            verify_snapshot(r.body, self.keys)
            st = r.body["state"]
            self.assertLessEqual(len(st["rollouts"]), 2)
            found += [x for x in st["rollouts"] if x["rollout_id"] == rid]
            if "next_after" not in st:
                break
            after = st["next_after"]
        self.assertEqual(len(found), 1)
        return found[0]

    def events_of(self, after, types=None):
        events, _ = fetch_all_events(self.rp, self.audit)
        return [e for e in events if e["position"] > after and (types is None or e["type"] in types)]

    def check_offer(self, r, fw, action):
        """A 200 update answer: the signed manifest, its exact signed bytes,
        the image URL, an int32 offer number."""
        b = r.body
        self.assertEqual(b["action"], action)
        self.assertEqual(b["firmware_id"], fw)
        self.assertEqual(b["image_url"], "/v1/firmware/%s/image" % fw)
        self.assertEqual(b["manifest"]["sha256"], fw[len("sha256:"):])
        self.assertEqual(base64.b64decode(b["signed_b64"]), canonical(b["manifest"], without=()))
        verify_signed_doc(b["manifest"], b["signature"], b["key_id"], self.keys, "devices")
        self.assertIsInstance(b["offer"], int)
        self.assertTrue(0 < b["offer"] < 2 ** 31, b)
        return b["offer"]

    # ---- membership ----

    def test_membership_of_200_devices_at_each_stage(self):
        devs = ["m-%03d" % i for i in range(200)]
        self.register_all(devs, "hw-m")
        fw = self.upload("hw-m", 1)
        stages = [5, 25, 50, 100]
        rid, pos = self.start(fw, "hw-m", stages)
        ev = self.events_of(pos - 1, {"RolloutStarted"})
        self.assertEqual(len(ev), 1)
        self.assertEqual(ev[0]["data"]["rollout_id"], rid)
        self.assertEqual(ev[0]["data"]["stages"], stages)
        self.assertEqual(ev[0]["data"]["failure_threshold_ppm"], 500000)
        offers = {}
        prev = set()
        for i, pct in enumerate(stages):
            if i > 0:
                r = self.switch(rid, "advance")
                self.assertEqual((r.body["state"], r.body["percent"]), ("active", pct))
                pos = r.body["position"]
            want = members(rid, devs, pct)
            got = set()
            for d in devs:
                r = self.update(d, pos)
                if r.status == 200:
                    got.add(d)
                    offer = self.check_offer(r, fw, "install")
                    self.assertEqual(r.body["rollout_id"], rid)
                    # The offer stands across stages: the same number.
                    self.assertEqual(offers.setdefault(d, offer), offer)
            self.assertEqual(got, want, "stage %d%%" % pct)
            self.assertTrue(prev <= got)
            prev = got
            snap = self.snapshot_rollout(rid, pos)
            self.assertEqual(snap["percent"], pct)
            self.assertEqual(snap["counts"]["offered"], len(want))
            self.assertEqual([s["offered"] for s in snap["per_stage"]],
                             [len(members(rid, devs, p) - members(rid, devs, stages[j - 1] if j else 0))
                              if j <= i else 0 for j, p in enumerate(stages)])
        self.assertEqual(len(prev), 200)
        # The device itself may ask (its own id).
        r = self.update("m-000", pos, token=DEV_TOKENS["m-000"])
        self.assertEqual(r.status, 200)
        # Past the last stage: 409, nothing appended.
        h = self.head()
        r = self.switch(rid, "advance", status=409)
        self.assertProblem(r, 409)
        self.assertEqual(self.head(), h)

    # ---- auto-halt ----

    def test_auto_halt_by_the_system(self):
        devs = ["h-%02d" % i for i in range(30)]
        self.register_all(devs, "hw-h")
        fw = self.upload("hw-h", 1)
        rid, pos = self.start(fw, "hw-h", [100], threshold=0.2, min_reports=10)
        # 7 installed, 2 failed: 9 reports, below min_reports.
        for d in devs[:7]:
            pos = self.report(d, fw, "installed")
        for d in devs[7:9]:
            pos = self.report(d, fw, "failed", detail="boot loop")
        # A repeat from the same device counts once.
        pos = self.report(devs[8], fw, "failed")
        self.assertEqual(self.snapshot_rollout(rid, pos)["state"], "active")
        self.assertEqual(self.events_of(0, {"RolloutHalted"}), [])
        self.assertEqual(self.update(devs[20], pos).status, 200)
        # The 10th report: 3 / 10 = 30 % > 20 %: halted in the same batch.
        pos = self.report(devs[9], fw, "failed")
        halted = [e for e in self.events_of(0, {"RolloutHalted"})
                  if e["data"]["rollout_id"] == rid]
        self.assertEqual(len(halted), 1)
        self.assertEqual(halted[0]["actor"], "system")
        self.assertEqual(halted[0]["data"], {"rollout_id": rid, "installed": 7, "failed": 3})
        pos = max(pos, halted[0]["position"])
        snap = self.snapshot_rollout(rid, pos)
        self.assertEqual(snap["state"], "halted")
        self.assertEqual(snap["counts"], {"offered": 30, "installed": 7, "failed": 3, "blocked": 0})
        self.assertEqual(snap["per_stage"][0]["failed"], 3)
        # Nobody is offered the image any more.
        self.assertEqual(self.update(devs[20], pos).status, 204)
        # More failures do not halt it twice; advance is refused.
        pos = self.report(devs[10], fw, "failed")
        self.switch(rid, "advance", status=409)
        self.switch(rid, "pause", status=409)
        self.assertEqual(len([e for e in self.events_of(0, {"RolloutHalted"})
                              if e["data"]["rollout_id"] == rid]), 1)
        # A restart rebuilds write state: still halted, nothing new appended.
        h = self.head()
        self.srv.stop()
        type(self).srv = self.dep.start()
        self.assertEqual(self.head(), h)
        self.switch(rid, "advance", status=409)
        # The operator may resume; the next failure over the threshold halts again.
        r = self.switch(rid, "resume")
        self.assertEqual(r.body["state"], "active")
        self.assertEqual(self.update(devs[20], r.body["position"]).status, 200)
        pos = self.report(devs[11], fw, "failed")
        self.assertEqual(self.snapshot_rollout(rid, pos + 1)["state"], "halted")

    # ---- rollback ----

    def test_rollback_to_the_previous_image(self):
        devs = ["b1-%d" % i for i in range(4)]
        pos = self.register_all(devs, "hw-b1")
        old, new = self.upload("hw-b1", 1), self.upload("hw-b1", 1)
        # b1-0..2 run the old image; b1-3 never said what it ran. Reports
        # outside any rollout are recorded, attributed to none.
        for d in devs[:3]:
            p = self.report(d, old, "installed")
            ev = self.events_of(p - 1, {"DeviceReported"})[0]
            self.assertEqual(ev["data"], {"device_id": d, "firmware_id": old,
                                          "status": "installed", "security_version": 1})
        rid, pos = self.start(new, "hw-b1", [100])
        for d in (devs[0], devs[1], devs[3]):
            self.assertEqual(self.update(d, pos).status, 200)
            pos = self.report(d, new, "installed")
        pos = self.report(devs[2], new, "failed", detail="no space left")
        ev = self.events_of(pos - 1, {"DeviceReported"})[0]
        self.assertEqual(ev["data"], {"device_id": devs[2], "firmware_id": new, "status": "failed",
                                      "detail": "no space left", "rollout_id": rid,
                                      "security_version": 1})
        r = self.switch(rid, "rollback")
        self.assertEqual(r.body["state"], "rolled_back")
        pos = r.body["position"]
        ev = self.events_of(pos - 1, {"RolloutRolledBack"})
        self.assertEqual(ev[0]["data"], {"rollout_id": rid, "devices": 2, "blocked": 0})
        # b1-0 and b1-1 go back to the old image, with a new offer number.
        offers = set()
        for d in devs[:2]:
            r = self.update(d, pos, token=DEV_TOKENS[d])
            self.assertEqual(r.status, 200, r)
            offers.add(self.check_offer(r, old, "rollback"))
        # b1-2 never installed the new one, b1-3 has nothing to go back to.
        self.assertEqual(self.update(devs[2], pos).status, 204)
        self.assertEqual(self.update(devs[3], pos).status, 204)
        # Once back, nothing to do; the report is the rollback's, not counted.
        pos = self.report(devs[0], old, "installed")
        ev = self.events_of(pos - 1, {"DeviceReported"})[0]
        self.assertEqual((ev["data"].get("rollout_id"), ev["data"].get("rollback")), (rid, True))
        self.assertEqual(self.update(devs[0], pos).status, 204)
        snap = self.snapshot_rollout(rid, pos)
        self.assertEqual(snap["state"], "rolled_back")
        self.assertEqual(snap["counts"]["blocked"], 0)
        # A rolled-back rollout cannot resume, advance or roll back again.
        for a in ("resume", "advance", "rollback", "pause"):
            self.switch(rid, a, status=409)

    def test_rollback_blocked_by_security_version(self):
        devs = ["b2-%d" % i for i in range(4)]
        self.register_all(devs, "hw-b2")
        old, new = self.upload("hw-b2", 1), self.upload("hw-b2", 2)
        for d in devs:
            self.report(d, old, "installed")
        rid, pos = self.start(new, "hw-b2", [100])
        for d in devs[:3]:
            pos = self.report(d, new, "installed")
        r = self.switch(rid, "rollback")
        pos = r.body["position"]
        ev = self.events_of(pos - 1, {"RolloutRolledBack"})
        self.assertEqual(ev[0]["data"], {"rollout_id": rid, "devices": 3, "blocked": 3})
        # Going back would go below security_version 2, which they reported
        # installed: they stay put (204) and are counted blocked.
        for d in devs:
            self.assertEqual(self.update(d, pos, token=DEV_TOKENS[d]).status, 204, d)
        snap = self.snapshot_rollout(rid, pos)
        self.assertEqual(snap["counts"]["blocked"], 3)
        self.assertEqual(snap["counts"]["installed"], 3)
        self.assertEqual(snap["per_stage"][0]["blocked"], 3)

    # ---- supersession, pause and resume ----

    def test_supersession(self):
        devs = ["s-%d" % i for i in range(4)]
        self.register_all(devs, "hw-s")
        f1, f2 = self.upload("hw-s", 1), self.upload("hw-s", 1)
        r1, pos = self.start(f1, "hw-s", [100])
        self.assertEqual(self.update(devs[0], pos).body["firmware_id"], f1)
        r2, pos = self.start(f2, "hw-s", [100])
        sup = self.events_of(pos - 2, {"RolloutSuperseded"})
        self.assertEqual([e["data"] for e in sup], [{"rollout_id": r1, "by": r2}])
        started = self.events_of(pos - 1, {"RolloutStarted"})
        self.assertEqual(started[0]["data"]["supersedes"], r1)
        r = self.update(devs[0], pos, token=DEV_TOKENS[devs[0]])
        self.check_offer(r, f2, "install")
        self.assertEqual(r.body["rollout_id"], r2)
        for a in ("advance", "pause", "resume", "rollback"):
            self.switch(r1, a, status=409)
        self.assertEqual(self.snapshot_rollout(r1, pos)["state"], "superseded")
        # A group's own rollout decides for the group; the class's for the rest.
        register(self.wp, self.ops, "s-g0", hardware="hw-s", group="lab")
        f3 = self.upload("hw-s", 1)
        r3, pos = self.start(f3, "hw-s", [100], group="lab")
        self.assertEqual(self.update("s-g0", pos).body["rollout_id"], r3)
        self.assertEqual(self.update(devs[1], pos).body["rollout_id"], r2)
        # Hardware must match the firmware's.
        r = self.start(f3, "hw-m", [100], status=422)
        self.assertProblem(r, 422)

    def test_pause_and_resume(self):
        devs = ["p-%d" % i for i in range(4)]
        self.register_all(devs, "hw-p")
        fw = self.upload("hw-p", 1)
        rid, pos = self.start(fw, "hw-p", [50, 100])
        r = self.switch(rid, "advance")
        self.assertEqual((r.body["state"], r.body["percent"]), ("active", 100))
        first = self.check_offer(self.update(devs[0], r.body["position"]), fw, "install")
        r = self.switch(rid, "pause")
        self.assertEqual((r.body["state"], r.body["percent"]), ("paused", 100))
        self.assertEqual(self.update(devs[0], r.body["position"]).status, 204)
        self.switch(rid, "pause", status=409)
        self.switch(rid, "advance", status=409)
        r = self.switch(rid, "resume")
        self.assertEqual(r.body["state"], "active")
        again = self.check_offer(self.update(devs[0], r.body["position"]), fw, "install")
        self.assertNotEqual(first, again)  # a withdrawn offer is not the resumed one
        self.switch(rid, "resume", status=409)
        # A device that installed it has nothing to do.
        pos = self.report(devs[0], fw, "installed")
        self.assertEqual(self.update(devs[0], pos).status, 204)

    # ---- idempotency ----

    def test_idempotent_start(self):
        register(self.wp, self.ops, "i-0", hardware="hw-i")
        fw = self.upload("hw-i", 1)
        body = {"firmware_id": fw, "hardware": "hw-i", "stages": [100],
                "failure_threshold": 0.1, "min_reports": 5}
        h = {"Idempotency-Key": "start-" + secrets.token_hex(4)}
        a = request("POST", self.wp, "/v1/rollouts", token=self.ops, body=body, headers=h)
        b = request("POST", self.wp, "/v1/rollouts", token=self.ops, body=body, headers=h)
        self.assertStatus(a, 201)
        self.assertEqual((b.status, b.body), (201, a.body))
        started = [e for e in self.events_of(0, {"RolloutStarted"})
                   if e["data"]["rollout_id"] == a.body["rollout_id"]]
        self.assertEqual(len(started), 1)

    # ---- bad input ----

    def test_reports_of_unknown_images_and_repeats(self):
        """Issue 14, defects 16 and 24: a report naming an image signet does
        not know is 404 and appends nothing; an identical repeat of the
        device's last report appends nothing and answers that report's
        position."""
        devs = ["r-0", "r-1"]
        self.register_all(devs, "hw-r")
        fw = self.upload("hw-r", 1)
        h = self.head()
        r = request("POST", self.wp, "/v1/devices/r-0/reports", token=DEV_TOKENS["r-0"],
                    body={"firmware_id": "sha256:" + "e" * 64, "status": "installed"})
        self.assertProblem(r, 404)
        self.assertIn("sha256:" + "e" * 64, r.body["detail"])
        self.assertEqual(self.head(), h)
        first = self.report("r-0", fw, "failed", detail="disk full")
        for _ in range(5):
            self.assertEqual(self.report("r-0", fw, "failed", detail="disk full"), first)
        self.assertEqual(self.head(), first)
        # Anything that differs is a report of its own.
        p2 = self.report("r-0", fw, "failed", detail="disk still full")
        p3 = self.report("r-0", fw, "installed")
        p4 = self.report("r-0", fw, "failed", detail="disk full")
        self.assertEqual(self.report("r-1", fw, "failed", detail="disk full"), p4 + 1)
        self.assertEqual((p2, p3, p4), (first + 1, first + 2, first + 3))
        self.assertEqual(len(self.events_of(h, {"DeviceReported"})), 5)

    def test_no_install_offer_below_the_security_version_floor(self):
        """Issue 14, defect 13: a new rollout of an image older (by
        security_version) than one the device reported installed is not
        offered to it, over REST as over DDI (the same answer)."""
        devs = ["r-2", "r-3"]
        self.register_all(devs, "hw-f")
        old, new = self.upload("hw-f", 1), self.upload("hw-f", 2)
        self.report("r-2", new, "installed")
        rid, pos = self.start(old, "hw-f", [100])
        self.assertEqual(self.update("r-2", pos, token=DEV_TOKENS["r-2"]).status, 204)
        self.assertEqual(self.update("r-2", pos).status, 204)
        r = self.update("r-3", pos, token=DEV_TOKENS["r-3"])
        self.assertEqual(r.status, 200)
        self.check_offer(r, old, "install")
        # Withdrawn by a pause: r-3 had the offer, r-2 never had one.
        self.switch(rid, "pause")

    def test_bad_input_leaves_the_log_unchanged(self):
        register(self.wp, self.ops, "x-0", hardware="hw-x")
        fw = self.upload("hw-x", 1)
        good = {"firmware_id": fw, "hardware": "hw-x", "stages": [5, 25, 100],
                "failure_threshold": 0.05, "min_reports": 20}

        def but(**kw):
            b = dict(good)
            for k, v in kw.items():
                if v is None:
                    b.pop(k)
                else:
                    b[k] = v
            return b

        h = self.head()
        cases = [
            (400, "/v1/rollouts", "{not json"),
            (400, "/v1/rollouts", []),
            (400, "/v1/rollouts", but(firmware_id=None)),
            (400, "/v1/rollouts", but(firmware_id="sha256:xyz")),
            (400, "/v1/rollouts", but(hardware="../etc")),
            (400, "/v1/rollouts", but(stages=[25, 5])),
            (400, "/v1/rollouts", but(stages=[0, 100])),
            (400, "/v1/rollouts", but(stages=[5, 101])),
            (400, "/v1/rollouts", but(stages=[])),
            (400, "/v1/rollouts", but(stages=[50.5])),
            (400, "/v1/rollouts", but(failure_threshold=1.01)),
            (400, "/v1/rollouts", but(failure_threshold=-0.5)),
            (400, "/v1/rollouts", but(failure_threshold="0.05")),
            (400, "/v1/rollouts", but(min_reports=0)),
            (400, "/v1/rollouts", but(min_reports="20")),
            (400, "/v1/rollouts", but(extra=1)),
            (404, "/v1/rollouts", but(firmware_id="sha256:" + "0" * 64)),
            (422, "/v1/rollouts", but(hardware="hw-other")),
            (404, "/v1/rollouts/no-such-rollout/advance", None),
            (404, "/v1/rollouts/no-such-rollout/rollback", None),
            (400, "/v1/rollouts/x/pause", {"a": 1}),
        ]
        for status, path, body in cases:
            hdrs = {"Content-Type": "application/json"} if isinstance(body, str) else None
            r = request("POST", self.wp, path, token=self.ops, body=body, headers=hdrs)
            self.assertProblem(r, status, msg="%s %r" % (path, body))
        # Reports: the device's own endpoint.
        tok = DEV_TOKENS["m-000"]
        rep = [
            (400, {"firmware_id": fw}),
            (400, {"firmware_id": fw, "status": "ok"}),
            (400, {"firmware_id": "nope", "status": "installed"}),
            (400, {"firmware_id": fw, "status": "failed", "detail": "x" * 513}),
            (400, {"firmware_id": fw, "status": "failed", "extra": True}),
        ]
        for status, body in rep:
            r = request("POST", self.wp, "/v1/devices/m-000/reports", token=tok, body=body)
            self.assertProblem(r, status, msg=repr(body))
        # An unknown device: 404 (the principal exists, the device is not registered).
        r = request("POST", self.wp, "/v1/devices/dev-0001/reports", token=self.dep.token("dev-0001"),
                    body={"firmware_id": fw, "status": "installed"})
        self.assertProblem(r, 404)
        r = request("GET", self.rp, "/v1/devices/never-registered/update", token=self.ops)
        self.assertProblem(r, 404)
        self.assertEqual(self.head(), h)

    # ---- roles ----

    def test_role_matrix_of_the_new_endpoints(self):
        fw = "sha256:" + "1" * 64
        tokens = {n: self.dep.token(n) for n in ("ci", "ops", "alice", "audit", "adm", "dev-0001")}
        tokens["m-000"] = DEV_TOKENS["m-000"]
        endpoints = [
            ("w", "POST", "/v1/rollouts", {"firmware_id": fw, "hardware": "hw-z", "stages": [100],
                                           "failure_threshold": 0, "min_reports": 1},
             {"ops", "adm"}),
            ("w", "POST", "/v1/rollouts/zz/advance", None, {"ops", "adm"}),
            ("w", "POST", "/v1/rollouts/zz/pause", None, {"ops", "adm"}),
            ("w", "POST", "/v1/rollouts/zz/resume", None, {"ops", "adm"}),
            ("w", "POST", "/v1/rollouts/zz/rollback", None, {"ops", "adm"}),
            ("w", "POST", "/v1/devices/m-000/reports", {"firmware_id": fw, "status": "failed"},
             {"m-000"}),
            ("r", "GET", "/v1/devices/m-000/update", None, {"m-000", "ops", "adm"}),
            ("r", "GET", "/v1/snapshots/rollouts", None, {"audit", "ops", "adm"}),
        ]
        for lis, method, path, body, allowed in endpoints:
            port = self.wp if lis == "w" else self.rp
            r = request(method, port, path, body=body)
            self.assertProblem(r, 401, msg=path)
            for name, tok in tokens.items():
                r = request(method, port, path, token=tok, body=body)
                if name in allowed:
                    self.assertNotIn(r.status, (401, 403), "%s %s as %s: %r" % (method, path, name, r))
                    self.assertLess(r.status, 500, r)
                else:
                    self.assertProblem(r, 403, msg="%s %s as %s" % (method, path, name))


class DeviceRate(E2ETestCase):
    """Issue 14, defect 16: a device principal adds at most
    limits.device_events_per_minute events a minute (here 5); beyond it
    429 with Retry-After and nothing appended, while what changes nothing
    (an identical repeat) and other principals are answered as usual."""

    @classmethod
    def setUpClass(cls):
        def cfg(c):
            add_devices(c)
            c["limits"]["device_events_per_minute"] = 5
            return c
        cls.start_deployment(mutate=cfg)

    def test_reports_beyond_the_rate(self):
        ci, tok = self.dep.token("ci"), DEV_TOKENS["s-0"]
        for d in ("s-0", "s-1"):
            self.assertStatus(register(self.wp, self.ops, d, hardware="hw-s"), 201)
        body = b"rate image " + secrets.token_bytes(32)
        r = request("POST", self.wp, "/v1/firmware?name=fw-rate&version=1&hardware=hw-s"
                    "&security_version=1", token=ci, body=body,
                    headers={"Content-Type": "application/octet-stream"})
        self.assertStatus(r, 201)
        fw = r.body["firmware_id"]
        if time.time() % 60 > 40:  # all of it within one minute of the clock
            time.sleep(61 - time.time() % 60)

        def report(dev, detail):
            return request("POST", self.wp, "/v1/devices/%s/reports" % dev,
                           token=DEV_TOKENS[dev],
                           body={"firmware_id": fw, "status": "failed", "detail": detail})

        for i in range(5):
            self.assertStatus(report("s-0", "try %d" % i), 202)
        h = head_of(self.rp, self.audit)
        for i in range(5, 8):
            r = report("s-0", "try %d" % i)
            self.assertProblem(r, 429, "too-many-requests")
            self.assertTrue(1 <= int(r.headers["Retry-After"]) <= 60, r.headers)
            self.assertIn("limits.device_events_per_minute", r.body["detail"])
        # an identical repeat of its last report changes nothing: answered
        r = report("s-0", "try 4")
        self.assertStatus(r, 202)
        self.assertEqual(r.body["position"], h)
        # another device is not limited by this one
        self.assertStatus(report("s-1", "fine"), 202)
        self.assertEqual(head_of(self.rp, self.audit), h + 1)
        # a restart keeps the count (it is write state, rebuilt from the log)
        if time.time() % 60 < 40:  # room for a restart within the minute
            self.srv.stop()
            type(self).srv = self.dep.start()
            self.assertProblem(report("s-0", "after restart"), 429)


if __name__ == "__main__":
    unittest.main(verbosity=2)
