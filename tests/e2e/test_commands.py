#!/usr/bin/python3
"""Device commands end to end (issue 8): POST /v1/commands, approve, reject,
M-of-N approvals by distinct principals from the configuration
({"default": 2, "actions": {"reboot": 1, "unlock-debug": 3}}), no
self-approval, 409 after a verdict, expiry by the clock's process manager
with nobody polling, the signed envelopes served on the read listener
(checked with python3-cryptography over signed_b64 and over the canonical
envelope), per-device counters without gaps, after= and paging, the
`commands` snapshot, approvals racing from many clients, every bad-input
class (log unchanged) and the refusal of a bad `approvals` configuration."""

import base64
import calendar
import hashlib
import os
import re
import secrets
import subprocess
import sys
import time
import unittest
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from client import fetch_all_events, get_keys, head_of, in_threads, register, request, wait_until  # noqa: E402
from deploy import SIGNETD, E2ETestCase, FaultyHsmTestCase  # noqa: E402
from verify import canonical, key_id_for, keys_by_purpose, sha256_hex, verify_snapshot  # noqa: E402

from cryptography.exceptions import InvalidSignature  # noqa: E402
from cryptography.hazmat.primitives import hashes  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402

APPROVALS = {"default": 2, "actions": {"reboot": 1, "unlock-debug": 3}}
TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
ENVELOPE_FIELDS = {"command_id", "device_id", "action", "params", "counter", "not_after"}

# Principals this file adds to the harness's (ops: operator; alice, bob:
# approvers; adm: admin; dev-0001: device).
EXTRA = {
    "carol": ["approver"],
    "dave": ["approver"],
    "erin": ["approver"],
    "both": ["operator", "approver"],  # may request and approve, never its own
}


def with_commands_config(cfg, tokens):
    cfg["approvals"] = APPROVALS
    for name, roles in EXTRA.items():
        cfg["principals"].append({"name": name, "token_sha256": sha256_hex(tokens[name]), "roles": roles})
    return cfg


def ms_of(t):
    return calendar.timegm(time.strptime(t[:19], "%Y-%m-%dT%H:%M:%S")) * 1000 + int(t[20:23])


def verify_entry(entry, keys_doc):
    """An entry of GET /v1/devices/{id}/commands, checked as a device would:
    the signature over the exact bytes (signed_b64) and over the canonical
    form of the envelope, by the `devices` key named by key_id."""
    assert set(entry) == {"envelope", "signature", "key_id", "signed_b64"}, entry
    pub = keys_by_purpose(keys_doc, "devices").get(entry["key_id"])
    assert pub is not None, "key_id %r is not the devices key" % entry["key_id"]
    sig = base64.b64decode(entry["signature"], validate=True)
    signed = base64.b64decode(entry["signed_b64"], validate=True)
    assert signed == canonical(entry["envelope"], without=()), (signed, entry["envelope"])
    for data in (signed, canonical(entry["envelope"], without=())):
        pub.verify(sig, data, ec.ECDSA(hashes.SHA256()))
    return True


class Commands(E2ETestCase):
    @classmethod
    def setUpClass(cls):
        extra_tokens = {n: "tok_" + secrets.token_urlsafe(24) for n in EXTRA}
        cls.start_deployment(mutate=lambda c: with_commands_config(c, extra_tokens))
        cls.dep.tokens.update(extra_tokens)  # checked for leaks with the others
        cls.tok = cls.dep.token
        cls.keys = get_keys(cls.rp)
        for d in ("dev-0001", "dev-0002", "dev-cmd"):
            r = register(cls.wp, cls.ops, d)
            assert r.status == 201, r

    # ---- helpers ----

    def head(self):
        return head_of(self.rp, self.audit)

    def new_device(self):
        d = self.unique("cmd-dev")
        self.assertStatus(register(self.wp, self.ops, d), 201)
        return d

    def ask(self, device, action="reboot", params=None, ttl=600, who="ops", headers=None):
        body = {"device_id": device, "action": action, "params": params if params is not None else {},
                "ttl_seconds": ttl}
        return request("POST", self.wp, "/v1/commands", token=self.tok(who), body=body, headers=headers)

    def asked(self, device, action="reboot", params=None, ttl=600, who="ops"):
        r = self.ask(device, action, params, ttl, who)
        self.assertStatus(r, 202)
        return r.body["command_id"]

    def verdict(self, cid, who, what="approve", comment=None):
        body = {} if comment is None else {"comment": comment}
        return request("POST", self.wp, "/v1/commands/%s/%s" % (cid, what), token=self.tok(who), body=body)

    def events(self, after=0):
        evs, _ = fetch_all_events(self.rp, self.audit)
        return [e for e in evs if e["position"] > after]

    def command_events(self, cid):
        return [e for e in self.events() if e["type"].startswith("Command") and e["data"]["command_id"] == cid]

    def device_commands(self, device, query="after=0", who="ops", min_position=None):
        q = query
        if min_position is not None:
            q += "&min_position=%d&wait_ms=5000" % min_position
        return request("GET", self.rp, "/v1/devices/%s/commands?%s" % (device, q), token=self.tok(who))

    def snapshot(self, min_position):
        r = request("GET", self.rp, "/v1/snapshots/commands?min_position=%d&wait_ms=5000" % min_position,
                    token=self.audit)
        self.assertStatus(r, 200)
        verify_snapshot(r.body, self.keys)
        return r.body

    # ---- requesting ----

    def test_request_answer_and_event(self):
        for action, required in (("reboot", 1), ("unlock-debug", 3), ("set-point", 2)):
            with self.subTest(action=action):
                params = {"value": 42, "unit": "kPa", "nested": {"list": [1, 2, "x"], "flag": True}}
                t0 = time.time()
                r = self.ask("dev-cmd", action, params, ttl=3600)
                self.assertStatus(r, 202)
                self.assertEqual(set(r.body), {"command_id", "state", "approvals_required", "position"}, r)
                self.assertEqual(r.body["state"], "pending")
                self.assertEqual(r.body["approvals_required"], required)
                cid = r.body["command_id"]
                ev = self.command_events(cid)
                self.assertEqual(len(ev), 1, ev)
                ev = ev[0]
                self.assertEqual(ev["position"], r.body["position"])
                self.assertEqual((ev["type"], ev["actor"]), ("CommandRequested", "ops"))
                d = ev["data"]
                self.assertEqual(set(d), {"command_id", "device_id", "action", "params", "ttl_seconds",
                                          "not_after", "approvals_required", "request_sha256"}, d)
                self.assertEqual((d["device_id"], d["action"], d["params"], d["ttl_seconds"],
                                  d["approvals_required"]), ("dev-cmd", action, params, 3600, required))
                self.assertRegex(d["not_after"], TIME)
                self.assertEqual(ms_of(d["not_after"]) - ms_of(ev["time"]), 3600 * 1000)
                self.assertLess(abs(ms_of(d["not_after"]) / 1000 - (t0 + 3600)), 120)
                # The exact command approvers approve, hashed (docs/behaviour.md).
                exact = {"command_id": cid, "device_id": "dev-cmd", "action": action, "params": params,
                         "not_after": d["not_after"], "requester": "ops"}
                self.assertEqual(d["request_sha256"], hashlib.sha256(canonical(exact, without=())).hexdigest())

    def test_params_and_ttl_defaults(self):
        r = request("POST", self.wp, "/v1/commands", token=self.ops, body={"device_id": "dev-cmd", "action": "reboot"})
        self.assertStatus(r, 202)
        d = self.command_events(r.body["command_id"])[0]["data"]
        self.assertEqual((d["params"], d["ttl_seconds"]), ({}, 3600))

    def test_unknown_device_404(self):
        h0 = self.head()
        self.assertProblem(self.ask("no-such-device"), 404, "not-found")
        self.assertEqual(self.head(), h0)

    def test_bad_requests_400_log_unchanged(self):
        good = {"device_id": "dev-cmd", "action": "reboot", "params": {}, "ttl_seconds": 600}
        bad = [
            ({"action": "reboot"}, "device_id missing"),
            ({"device_id": "dev-cmd"}, "action missing"),
            (dict(good, device_id="../etc"), "bad device_id"),
            (dict(good, device_id=""), "empty device_id"),
            (dict(good, device_id=7), "device_id not a string"),
            (dict(good, action=""), "empty action"),
            (dict(good, action="Reboot"), "uppercase action"),
            (dict(good, action="re boot"), "space in action"),
            (dict(good, action="../x"), "path in action"),
            (dict(good, action="-x"), "action starts with -"),
            (dict(good, action="a" * 65), "action too long"),
            (dict(good, action=["reboot"]), "action not a string"),
            (dict(good, params=[]), "params an array"),
            (dict(good, params="x"), "params a string"),
            (dict(good, params={"v": 1.5}), "a float in params"),
            (dict(good, params={"v": [1e3]}), "an exponent in params"),
            (dict(good, params={"v": 2 ** 53}), "an integer beyond 2^53-1 in params"),
            (dict(good, params={"v": "x" * 5000}), "params too big"),
            (dict(good, params={"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {}}}}}}}}}), "too deep"),
            (dict(good, ttl_seconds=59), "ttl below 60"),
            (dict(good, ttl_seconds=0), "ttl 0"),
            (dict(good, ttl_seconds=-60), "ttl negative"),
            (dict(good, ttl_seconds=604801), "ttl above 7 days"),
            (dict(good, ttl_seconds="600"), "ttl a string"),
            (dict(good, ttl_seconds=600.0), "ttl a float"),
            (dict(good, ttl_seconds=True), "ttl a boolean"),
            (dict(good, colour="red"), "unknown field"),
            ([good], "an array"),
        ]
        h0 = self.head()
        for body, why in bad:
            with self.subTest(why=why):
                r = request("POST", self.wp, "/v1/commands", token=self.ops, body=body)
                self.assertProblem(r, 400, "bad-input")
        for raw, ctype, status in ((b'{"device_id": "dev-cmd",', "application/json", 400),
                                   (b'{"device_id":"dev-cmd","device_id":"x","action":"reboot"}', "application/json", 400),
                                   (b'device_id=dev-cmd', "application/x-www-form-urlencoded", 415),
                                   (b'\xff\xfe', "application/json", 400),
                                   (b'"reboot"', "application/json", 400),
                                   (b'7', "application/json", 400),
                                   (b'null', "application/json", 400),
                                   (b'', "application/json", 400)):
            with self.subTest(raw=raw):
                r = request("POST", self.wp, "/v1/commands", token=self.ops, body=raw,
                            headers={"Content-Type": ctype})
                self.assertProblem(r, status)
        r = request("POST", self.wp, "/v1/commands", token=self.ops,
                    body=dict(good, params={"v": "x" * 70000}))
        self.assertProblem(r, 413)
        # The edges are accepted.
        self.assertEqual(self.head(), h0, "a refused request appended events")
        for ttl in (60, 604800):
            self.assertStatus(self.ask("dev-cmd", ttl=ttl), 202)
        self.assertStatus(self.ask("dev-cmd", action="a" * 64), 202)
        self.assertStatus(self.ask("dev-cmd", action="x9._-"), 202)

    def test_bad_verdicts_400(self):
        cid = self.asked("dev-cmd", "set-point")
        h0 = self.head()
        for what in ("approve", "reject"):
            for body, why in (({"comment": 5}, "comment not a string"), ({"comment": "x" * 1025}, "comment too long"),
                              ({"note": "x"}, "unknown field"), ([], "array"), (b"7", "number"),
                              (b'"ok"', "string"), (b"{", "malformed")):
                with self.subTest(what=what, why=why):
                    r = request("POST", self.wp, "/v1/commands/%s/%s" % (cid, what), token=self.tok("alice"), body=body,
                                headers={"Content-Type": "application/json"})
                    self.assertProblem(r, 400, "bad-input")
            r = request("POST", self.wp, "/v1/commands/%s/%s" % ("a" * 65, what), token=self.tok("alice"), body={})
            self.assertProblem(r, 400, "bad-input")
        self.assertEqual(self.head(), h0)
        # Nothing was counted: two approvals still authorize.
        self.assertStatus(self.verdict(cid, "alice"), 200)
        self.assertEqual(self.verdict(cid, "bob").body["state"], "authorized")

    def test_verdict_without_body(self):
        """The body of approve and reject is optional: no body at all (no
        Content-Type either) is {}; a body needs application/json."""
        cid = self.asked("dev-cmd", "set-point")
        r = request("POST", self.wp, "/v1/commands/%s/approve" % cid, token=self.tok("alice"),
                    headers={"Content-Length": "0"})
        self.assertEqual((r.status, r.body.get("approvals")), (200, 1), r)
        r = request("POST", self.wp, "/v1/commands/%s/approve" % cid, token=self.tok("bob"),
                    body=b"", headers={"Content-Type": "application/json"})
        self.assertEqual((r.status, r.body.get("state")), (200, "authorized"), r)
        cid = self.asked("dev-cmd", "set-point")
        h0 = self.head()
        r = request("POST", self.wp, "/v1/commands/%s/reject" % cid, token=self.tok("bob"),
                    body=b'{"comment":"x"}', headers={"Content-Type": "text/plain"})
        self.assertProblem(r, 415)
        self.assertEqual(self.head(), h0)
        r = request("POST", self.wp, "/v1/commands/%s/reject" % cid, token=self.tok("bob"))
        self.assertEqual((r.status, r.body.get("state")), (200, "rejected"), r)

    def test_approval_may_name_the_exact_command(self):
        """An approver may name what they approve by its request_sha256 (from
        the event log or the snapshot): another hash is 409, nothing counted."""
        cid = self.asked("dev-cmd", "set-point", {"v": 1})
        sha = self.command_events(cid)[0]["data"]["request_sha256"]
        other = self.asked("dev-cmd", "set-point", {"v": 2})
        h0 = self.head()
        r = request("POST", self.wp, "/v1/commands/%s/approve" % other, token=self.tok("alice"),
                    body={"request_sha256": sha})
        self.assertProblem(r, 409, "conflict")
        r = request("POST", self.wp, "/v1/commands/%s/approve" % cid, token=self.tok("alice"),
                    body={"request_sha256": sha.upper()})
        self.assertProblem(r, 400, "bad-input")
        self.assertEqual(self.head(), h0)
        r = request("POST", self.wp, "/v1/commands/%s/approve" % cid, token=self.tok("alice"),
                    body={"request_sha256": sha, "comment": "v=1 it is"})
        self.assertEqual((r.status, r.body.get("approvals")), (200, 1), r)

    def test_unknown_command_404(self):
        h0 = self.head()
        for what in ("approve", "reject"):
            for cid in (str(uuid.uuid4()), "cmd-1"):
                with self.subTest(what=what, cid=cid):
                    self.assertProblem(self.verdict(cid, "alice", what), 404, "not-found")
        self.assertEqual(self.head(), h0)

    def test_idempotent_request(self):
        hdr = {"Idempotency-Key": self.unique("cmd-key")}
        first = self.ask("dev-cmd", "reboot", {"n": 1}, headers=hdr)
        self.assertStatus(first, 202)
        h0 = self.head()
        again = self.ask("dev-cmd", "reboot", {"n": 1}, headers=hdr)
        self.assertEqual((again.status, again.body), (first.status, first.body))
        self.assertEqual(self.head(), h0)

    # ---- approving ----

    def test_two_distinct_approvals_authorize(self):
        dev = self.new_device()
        cid = self.asked(dev, "set-point", {"value": 7})
        h0 = self.head()
        r = self.verdict(cid, "alice", comment="looks fine")
        self.assertStatus(r, 200)
        self.assertEqual(set(r.body), {"command_id", "state", "approvals", "position"})
        self.assertEqual((r.body["command_id"], r.body["state"], r.body["approvals"]), (cid, "pending", 1))
        self.assertEqual(r.body["position"], h0 + 1)
        # The same approver again: 409, nothing appended, not counted.
        self.assertProblem(self.verdict(cid, "alice"), 409, "conflict")
        self.assertEqual(self.head(), h0 + 1)
        r = self.verdict(cid, "bob")
        self.assertStatus(r, 200)
        self.assertEqual((r.body["state"], r.body["approvals"]), ("authorized", 2))
        self.assertEqual(r.body["position"], h0 + 3, "CommandApproved then CommandAuthorized")
        h1 = self.head()
        # After authorization: approve and reject are 409, by anyone.
        for who in ("carol", "alice", "bob"):
            for what in ("approve", "reject"):
                with self.subTest(who=who, what=what):
                    self.assertProblem(self.verdict(cid, who, what), 409, "conflict")
        self.assertEqual(self.head(), h1)

        evs = self.command_events(cid)
        self.assertEqual([e["type"] for e in evs],
                         ["CommandRequested", "CommandApproved", "CommandApproved", "CommandAuthorized"])
        req = evs[0]["data"]
        self.assertEqual([(e["actor"], e["data"]["approvals"]) for e in evs[1:3]], [("alice", 1), ("bob", 2)])
        for e in evs[1:3]:
            self.assertEqual(e["data"]["request_sha256"], req["request_sha256"], "approval not bound to the command")
        self.assertEqual(evs[1]["data"]["comment"], "looks fine")
        auth = evs[3]["data"]
        self.assertEqual(set(auth), {"command_id", "device_id", "envelope", "signature", "key_id"})
        self.assertEqual(auth["key_id"], key_id_for(self.keys, "devices"))
        env = auth["envelope"]
        self.assertEqual(set(env), ENVELOPE_FIELDS)
        self.assertEqual(env, {"command_id": cid, "device_id": dev, "action": "set-point", "params": {"value": 7},
                               "counter": 1, "not_after": req["not_after"]})

        # The device fetches it, signed, and it verifies.
        page = self.device_commands(dev, min_position=h1)
        self.assertStatus(page, 200)
        self.assertEqual(set(page.body), {"commands"})
        self.assertEqual(len(page.body["commands"]), 1)
        entry = page.body["commands"][0]
        self.assertEqual(entry["envelope"], env)
        self.assertEqual((entry["signature"], entry["key_id"]), (auth["signature"], auth["key_id"]))
        verify_entry(entry, self.keys)

    def test_reboot_needs_one_and_unlock_debug_three(self):
        dev = self.new_device()
        cid = self.asked(dev, "reboot")
        r = self.verdict(cid, "carol")
        self.assertEqual((r.status, r.body["state"], r.body["approvals"]), (200, "authorized", 1))
        cid = self.asked(dev, "unlock-debug", {"port": 22})
        states = [self.verdict(cid, w).body for w in ("alice", "bob", "carol")]
        self.assertEqual([(s["state"], s["approvals"]) for s in states],
                         [("pending", 1), ("pending", 2), ("authorized", 3)])
        self.assertProblem(self.verdict(cid, "dave"), 409, "conflict")
        types = [e["type"] for e in self.command_events(cid)]
        self.assertEqual(types.count("CommandApproved"), 3)
        self.assertEqual(types.count("CommandAuthorized"), 1)

    def test_requester_never_approves_own_command(self):
        dev = self.new_device()
        # Holding both roles, and as admin: 403 every time, nothing appended.
        for who, action in (("both", "reboot"), ("adm", "reboot"), ("both", "set-point")):
            with self.subTest(who=who, action=action):
                cid = self.asked(dev, action, who=who)
                h0 = self.head()
                for _ in range(2):
                    self.assertProblem(self.verdict(cid, who), 403, "forbidden")
                self.assertEqual(self.head(), h0)
                # Others can; the requester's tries were never counted.
                r = self.verdict(cid, "alice")
                self.assertEqual(r.body["approvals"], 1)
                if action == "set-point":
                    self.assertProblem(self.verdict(cid, who), 403, "forbidden")
                    self.assertEqual(self.verdict(cid, "bob").body["state"], "authorized")
                self.assertNotIn(who, [e["actor"] for e in self.command_events(cid) if e["type"] == "CommandApproved"])
        # "both" approves a command someone else requested.
        cid = self.asked(dev, "reboot")
        self.assertEqual(self.verdict(cid, "both").body["state"], "authorized")

    def test_reject(self):
        dev = self.new_device()
        cid = self.asked(dev, "unlock-debug")
        self.assertStatus(self.verdict(cid, "alice"), 200)
        r = self.verdict(cid, "bob", "reject", comment="not today")
        self.assertStatus(r, 200)
        self.assertEqual(set(r.body), {"command_id", "state", "approvals", "position"})
        self.assertEqual((r.body["state"], r.body["approvals"]), ("rejected", 1))
        h0 = self.head()
        self.assertEqual(r.body["position"], h0)
        # Any approval or rejection afterwards: 409.
        for who in ("alice", "bob", "carol", "dave"):
            for what in ("approve", "reject"):
                with self.subTest(who=who, what=what):
                    self.assertProblem(self.verdict(cid, who, what), 409, "conflict")
        self.assertEqual(self.head(), h0)
        evs = self.command_events(cid)
        self.assertEqual([e["type"] for e in evs], ["CommandRequested", "CommandApproved", "CommandRejected"])
        self.assertEqual(evs[2]["actor"], "bob")
        self.assertEqual(evs[2]["data"], {"command_id": cid, "request_sha256": evs[0]["data"]["request_sha256"],
                                          "comment": "not today"})
        # A rejected command is never served to the device.
        page = self.device_commands(dev, min_position=h0)
        self.assertEqual(page.body, {"commands": []})

    # ---- envelopes, counters, after= ----

    def test_counters_per_device_and_paging(self):
        a, b = self.new_device(), self.new_device()
        made = {a: [], b: []}
        for i in range(7):
            for dev in (a, b) if i < 3 else (a,):
                cid = self.asked(dev, "reboot", {"i": i})
                r = self.verdict(cid, "alice")
                self.assertEqual(r.body["state"], "authorized")
                made[dev].append(cid)
        # A pending and a rejected command in between take no counter.
        self.asked(a, "set-point")
        rej = self.asked(a, "set-point")
        self.assertStatus(self.verdict(rej, "bob", "reject"), 200)
        cid = self.asked(a, "reboot", {"i": 99})
        last = self.verdict(cid, "dave")
        made[a].append(cid)
        pos = last.body["position"]

        for dev in (a, b):
            with self.subTest(device=dev):
                page = self.device_commands(dev, min_position=pos)
                self.assertStatus(page, 200)
                self.assertIsNotNone(page.headers.get("Signet-Position"))
                envs = [e["envelope"] for e in page.body["commands"]]
                self.assertEqual([e["counter"] for e in envs], list(range(1, len(made[dev]) + 1)),
                                 "counters with gaps or out of order")
                self.assertEqual([e["command_id"] for e in envs], made[dev])
                self.assertTrue(all(e["device_id"] == dev for e in envs))
                for entry in page.body["commands"]:
                    verify_entry(entry, self.keys)
                    self.assertRegex(entry["envelope"]["not_after"], TIME)

        # after= and limit= page by counter; next_after names the next page.
        n = len(made[a])
        page = self.device_commands(a, "after=5").body["commands"]
        self.assertEqual([e["envelope"]["counter"] for e in page], list(range(6, n + 1)))
        self.assertEqual(self.device_commands(a, "after=%d" % n).body, {"commands": []})
        self.assertEqual(self.device_commands(a, "after=100000").body, {"commands": []})
        seen, after = [], 0
        for _ in range(10):
            body = self.device_commands(a, "after=%d&limit=3" % after).body
            seen += [e["envelope"]["counter"] for e in body["commands"]]
            self.assertLessEqual(len(body["commands"]), 3)
            if "next_after" not in body:
                break
            self.assertEqual(body["next_after"], seen[-1])
            after = body["next_after"]
        self.assertEqual(seen, list(range(1, n + 1)))
        self.assertEqual(self.device_commands(a, "limit=1000").status, 200)
        # The default: after=0.
        self.assertEqual(len(self.device_commands(a, "").body["commands"]), n)

        # The events say the same: CommandAuthorized counters 1..n per device.
        auths = [e["data"] for e in self.events() if e["type"] == "CommandAuthorized" and e["data"]["device_id"] == a]
        self.assertEqual([d["envelope"]["counter"] for d in auths], list(range(1, n + 1)))

    def test_device_reads_its_own_commands(self):
        cid = self.asked("dev-0001", "reboot", {"why": "self"})
        pos = self.verdict(cid, "bob").body["position"]
        r = self.device_commands("dev-0001", who="dev-0001", min_position=pos)
        self.assertStatus(r, 200)
        mine = [e for e in r.body["commands"] if e["envelope"]["command_id"] == cid]
        self.assertEqual(len(mine), 1)
        verify_entry(mine[0], self.keys)
        self.assertEqual(mine[0]["envelope"]["device_id"], "dev-0001")
        # Not another device's; not unknown devices; not bad queries.
        self.assertProblem(self.device_commands("dev-0002", who="dev-0001"), 403, "forbidden")
        self.assertProblem(self.device_commands("no-such-device"), 404, "not-found")
        for q in ("after=-1", "after=x", "after=", "limit=0", "limit=1001", "limit=x", "after=1e3"):
            with self.subTest(query=q):
                self.assertProblem(self.device_commands("dev-0001", q), 400, "bad-input")

    def test_tampered_envelope_does_not_verify(self):
        dev = self.new_device()
        cid = self.asked(dev, "reboot", {"v": 1})
        pos = self.verdict(cid, "alice").body["position"]
        entry = self.device_commands(dev, min_position=pos).body["commands"][0]
        verify_entry(entry, self.keys)
        for field, value in (("counter", 2), ("device_id", "dev-0001"), ("params", {"v": 2}),
                             ("not_after", "2099-01-01T00:00:00.000Z")):
            with self.subTest(field=field):
                bad = dict(entry, envelope=dict(entry["envelope"], **{field: value}))
                bad["signed_b64"] = base64.b64encode(canonical(bad["envelope"], without=())).decode()
                self.assertRaises(InvalidSignature, verify_entry, bad, self.keys)
        raw = bytearray(base64.b64decode(entry["signed_b64"]))
        raw[len(raw) // 2] ^= 1
        pub = keys_by_purpose(self.keys, "devices")[entry["key_id"]]
        self.assertRaises(InvalidSignature, pub.verify, base64.b64decode(entry["signature"]), bytes(raw),
                          ec.ECDSA(hashes.SHA256()))

    # ---- races ----

    def test_approvals_race(self):
        """Six distinct approvers at once on a command needing three, five
        times over: exactly three counted and one CommandAuthorized each time;
        and one approver eight times at once: counted once."""
        dev = self.new_device()
        approvers = ["alice", "bob", "carol", "dave", "erin", "both"]
        for round_ in range(5):
            with self.subTest(round=round_):
                cid = self.asked(dev, "unlock-debug", {"round": round_})
                rs = in_threads(len(approvers), lambda i: self.verdict(cid, approvers[i]), together=True)
                self.assertEqual(len(rs), len(approvers))
                ok = [r for r in rs if r.status == 200]
                self.assertEqual(len(ok), 3, rs)
                for r in rs:
                    if r.status != 200:
                        self.assertProblem(r, 409, "conflict")
                self.assertEqual(sorted(r.body["approvals"] for r in ok), [1, 2, 3])
                self.assertEqual([r.body["state"] for r in ok if r.body["approvals"] == 3], ["authorized"])
                types = [e["type"] for e in self.command_events(cid)]
                self.assertEqual(types.count("CommandApproved"), 3)
                self.assertEqual(types.count("CommandAuthorized"), 1)
        cid = self.asked(dev, "set-point")
        rs = in_threads(8, lambda i: self.verdict(cid, "carol"), together=True)
        self.assertEqual(sorted(r.status for r in rs), [200] + [409] * 7)
        self.assertEqual([e["type"] for e in self.command_events(cid)], ["CommandRequested", "CommandApproved"])
        # Approve and reject racing: exactly one verdict wins for the last vote.
        cid = self.asked(dev, "set-point")
        self.assertStatus(self.verdict(cid, "alice"), 200)
        rs = in_threads(2, lambda i: self.verdict(cid, ("bob", "carol")[i], ("approve", "reject")[i]), together=True)
        self.assertEqual(sorted(r.status for r in rs), [200, 409])
        types = [e["type"] for e in self.command_events(cid)]
        self.assertEqual(types.count("CommandAuthorized") + types.count("CommandRejected"), 1)
        # Counters stayed gapless through all of it.
        pos = self.head()
        envs = [e["envelope"] for e in self.device_commands(dev, min_position=pos).body["commands"]]
        self.assertEqual([e["counter"] for e in envs], list(range(1, len(envs) + 1)))
        self.assertEqual(len(envs), 5 + (1 if "CommandAuthorized" in types else 0))

    # ---- roles ----

    def test_role_matrix(self):
        """Every principal on every new endpoint: the allowed ones succeed
        (not merely pass authorization), the others get 403 (401 without a
        token) and append nothing."""
        everyone = ["ci", "ops", "alice", "bob", "audit", "adm", "dev-0001"] + list(EXTRA)
        can_request = {"ops", "adm", "both"}
        can_decide = {"alice", "bob", "adm", "carol", "dave", "erin", "both"}
        for who in everyone:
            with self.subTest(endpoint="request", who=who):
                r = self.ask("dev-0002", "set-point", who=who)
                if who in can_request:
                    self.assertStatus(r, 202)
                else:
                    h0 = self.head()
                    self.assertProblem(r, 403, "forbidden")
                    self.assertEqual(self.head(), h0)
        for what in ("approve", "reject"):
            for who in everyone:
                with self.subTest(endpoint=what, who=who):
                    cid = self.asked("dev-0002", "unlock-debug")
                    h0 = self.head()
                    r = self.verdict(cid, who, what)
                    if who in can_decide:
                        self.assertStatus(r, 200)
                        self.assertEqual(r.body["state"], "pending" if what == "approve" else "rejected")
                    else:
                        self.assertProblem(r, 403, "forbidden")
                        self.assertEqual(self.head(), h0)
        cid = self.asked("dev-0001", "reboot")
        pos = self.verdict(cid, "alice").body["position"]
        for who in everyone:
            for dev in ("dev-0001", "dev-0002"):
                with self.subTest(endpoint="device commands", who=who, device=dev):
                    r = self.device_commands(dev, who=who, min_position=pos)
                    if who in ("ops", "adm", "both") or (who == "dev-0001" and dev == "dev-0001"):
                        self.assertStatus(r, 200)
                    else:
                        self.assertProblem(r, 403, "forbidden")
            with self.subTest(endpoint="commands snapshot", who=who):
                r = request("GET", self.rp, "/v1/snapshots/commands", token=self.tok(who))
                if who in ("audit", "ops", "adm", "both"):
                    self.assertStatus(r, 200)
                else:
                    self.assertProblem(r, 403, "forbidden")
        h0 = self.head()
        for method, port, path in (("POST", self.wp, "/v1/commands"), ("POST", self.wp, "/v1/commands/%s/approve" % cid),
                                   ("POST", self.wp, "/v1/commands/%s/reject" % cid),
                                   ("GET", self.rp, "/v1/devices/dev-0001/commands"),
                                   ("GET", self.rp, "/v1/snapshots/commands")):
            with self.subTest(endpoint=path, who=None):
                r = request(method, port, path, body={} if method == "POST" else None)
                self.assertProblem(r, 401, "unauthorized")
        # Write routes are not on the read listener, nor the reads on the write listener.
        self.assertIn(request("POST", self.rp, "/v1/commands", token=self.ops, body={}).status, (404, 405))
        self.assertIn(request("GET", self.wp, "/v1/devices/dev-0001/commands", token=self.ops).status, (404, 405))
        self.assertEqual(self.head(), h0)

    # ---- snapshot ----

    def test_commands_snapshot(self):
        dev = self.new_device()
        pending = self.asked(dev, "unlock-debug", {"p": 1})
        self.assertStatus(self.verdict(pending, "alice", comment="ok by me"), 200)
        authorized = self.asked(dev, "reboot")
        self.assertStatus(self.verdict(authorized, "bob"), 200)
        rejected = self.asked(dev, "set-point")
        pos = self.verdict(rejected, "carol", "reject", comment="no").body["position"]
        snap = self.snapshot(pos)
        self.assertEqual(snap["name"], "commands")
        st = snap["state"]
        self.assertEqual(set(st), {"count", "states", "commands", "truncated"})
        self.assertEqual(set(st["states"]), {"pending", "authorized", "rejected", "expired"})
        self.assertEqual(sum(st["states"].values()), st["count"])
        self.assertFalse(st["truncated"])
        self.assertEqual(len(st["commands"]), st["count"])
        by_id = {c["command_id"]: c for c in st["commands"]}
        p = by_id[pending]
        self.assertEqual((p["state"], p["device_id"], p["action"], p["params"], p["requester"], p["approvals_required"]),
                         ("pending", dev, "unlock-debug", {"p": 1}, "ops", 3))
        self.assertEqual([(a["approver"], a.get("comment")) for a in p["approvals"]], [("alice", "ok by me")])
        self.assertRegex(p["approvals"][0]["at"], TIME)
        self.assertNotIn("counter", p)
        a = by_id[authorized]
        self.assertEqual((a["state"], a["counter"], a["decided_by"]), ("authorized", 1, "bob"))
        self.assertEqual([x["approver"] for x in a["approvals"]], ["bob"])
        r = by_id[rejected]
        self.assertEqual((r["state"], r["decided_by"], r["comment"], r["approvals"]), ("rejected", "carol", "no", []))
        positions = [c["position"] for c in st["commands"]]
        self.assertEqual(positions, sorted(positions))
        # The operator may read it too.
        r = request("GET", self.rp, "/v1/snapshots/commands", token=self.ops)
        self.assertStatus(r, 200)

    # ---- expiry (the one slow test: ttl_seconds is at least 60) ----

    def test_expiry_without_anyone_polling(self):
        """A pending command past its ttl is expired by the write side's
        clock (CommandExpired, actor system) although nobody touches it;
        afterwards approvals are 409 and the device never sees it."""
        dev = self.new_device()
        untouched = self.asked(dev, "set-point", ttl=60)
        half = self.asked(dev, "unlock-debug", ttl=60)
        self.assertStatus(self.verdict(half, "alice"), 200)
        kept = self.asked(dev, "set-point", ttl=3600)
        t_asked = time.monotonic()
        time.sleep(61)  # nobody polls anything meanwhile

        def expired():
            evs = [e for e in self.events() if e["type"] == "CommandExpired"]
            return {e["data"]["command_id"]: e for e in evs}
        got = wait_until(lambda: (lambda x: x if untouched in x and half in x else None)(expired()),
                         timeout=30, what="CommandExpired for both commands")
        self.assertGreater(time.monotonic() - t_asked, 60)
        for cid in (untouched, half):
            ev = got[cid]
            self.assertEqual(ev["actor"], "system")
            req = self.command_events(cid)[0]
            self.assertEqual(ev["data"], {"command_id": cid, "not_after": req["data"]["not_after"]})
            self.assertGreaterEqual(ms_of(ev["time"]), ms_of(req["data"]["not_after"]))
            self.assertEqual(len([e for e in self.command_events(cid) if e["type"] == "CommandExpired"]), 1)
        self.assertNotIn(kept, got)
        h0 = self.head()
        for cid in (untouched, half):
            for who, what in (("bob", "approve"), ("carol", "approve"), ("bob", "reject")):
                self.assertProblem(self.verdict(cid, who, what), 409, "conflict")
        self.assertEqual(self.head(), h0)
        # Still once, after more ticks.
        time.sleep(2)
        self.assertEqual(sum(1 for e in self.events() if e["type"] == "CommandExpired"
                             and e["data"]["command_id"] in (untouched, half)), 2)
        snap = self.snapshot(h0)
        by_id = {c["command_id"]: c for c in snap["state"]["commands"]}
        self.assertEqual((by_id[untouched]["state"], by_id[half]["state"], by_id[kept]["state"]),
                         ("expired", "expired", "pending"))
        self.assertEqual(by_id[half]["decided_by"], "system")
        self.assertEqual(self.device_commands(dev, min_position=h0).body, {"commands": []})
        # The command still pending can be authorized.
        self.assertStatus(self.verdict(kept, "alice"), 200)
        self.assertEqual(self.verdict(kept, "bob").body["state"], "authorized")

    # ---- restart: write state rebuilt from the log ----

    def test_restart_keeps_state_and_counters(self):
        dev = self.new_device()
        done = self.asked(dev, "reboot")
        self.assertStatus(self.verdict(done, "alice"), 200)
        half = self.asked(dev, "set-point")
        self.assertStatus(self.verdict(half, "alice"), 200)
        self.assertEqual(self.srv.stop(), 0)
        type(self).srv = self.dep.start()
        self.assertProblem(self.verdict(done, "bob"), 409, "conflict")
        self.assertProblem(self.verdict(half, "alice"), 409, "conflict")
        r = self.verdict(half, "bob")
        self.assertEqual(r.body["state"], "authorized")
        envs = [e["envelope"] for e in self.device_commands(dev, min_position=r.body["position"]).body["commands"]]
        self.assertEqual([(e["command_id"], e["counter"]) for e in envs], [(done, 1), (half, 2)])


class CommandsHsmFailure(FaultyHsmTestCase):
    """The envelope is signed inside the decision: when the HSM does not
    sign, the deciding approval is refused with 503 and nothing is appended
    (not even the approval); once the HSM is back the same approval goes
    through, with counter 1."""

    @classmethod
    def setUpClass(cls):
        cls.start_deployment(faulty=True)
        cls.keys = get_keys(cls.rp)

    def test_final_approval_without_hsm(self):
        dev = self.unique("hsm-cmd")
        self.assertStatus(register(self.wp, self.ops, dev), 201)
        r = request("POST", self.wp, "/v1/commands", token=self.ops,
                    body={"device_id": dev, "action": "reboot", "params": {}, "ttl_seconds": 600})
        self.assertStatus(r, 202)
        cid = r.body["command_id"]
        h0 = head_of(self.rp, self.audit)
        self.set_fault("sign")
        alice = self.dep.token("alice")

        def approve():
            return request("POST", self.wp, "/v1/commands/%s/approve" % cid, token=alice, body={})
        for _ in range(2):
            self.assertProblem(approve(), 503, "hsm-unavailable")
        self.assertEqual(head_of(self.rp, self.audit), h0, "appended while the HSM failed")
        self.set_fault(None)
        r = wait_until(lambda: (lambda x: x if x.status != 503 else None)(approve()), timeout=30,
                       what="the approval once the HSM is back")
        self.assertStatus(r, 200)
        self.assertEqual((r.body["state"], r.body["approvals"]), ("authorized", 1))
        evs, _ = fetch_all_events(self.rp, self.audit)
        mine = [e["type"] for e in evs if e["type"].startswith("Command") and e["data"]["command_id"] == cid]
        self.assertEqual(mine, ["CommandRequested", "CommandApproved", "CommandAuthorized"])
        page = request("GET", self.rp, "/v1/devices/%s/commands?min_position=%d" % (dev, r.body["position"]),
                       token=self.ops)
        self.assertEqual([e["envelope"]["counter"] for e in page.body["commands"]], [1])
        verify_entry(page.body["commands"][0], self.keys)


class ApprovalsConfiguration(E2ETestCase):
    """signetd refuses at start an `approvals` with a number below 1 or a
    malformed action name, with a one-line reason."""

    @classmethod
    def setUpClass(cls):
        cls.init_deployment()

    def test_bad_approvals_refused(self):
        cases = [
            ({"default": 0}, "default"),
            ({"default": -1}, "default"),
            ({"default": 2, "actions": {"reboot": 0}}, "reboot"),
            ({"default": 2, "actions": {"reboot": -3}}, "reboot"),
            ({"default": 2, "actions": {"reboot": "1"}}, "reboot"),
            ({"default": 2, "actions": {"Reboot": 1}}, "Reboot"),
            ({"default": 2, "actions": {"re boot": 1}}, "re boot"),
            ({"default": 2, "actions": {"": 1}}, "action"),
            ({"default": 2, "actions": {"../x": 1}}, r"\.\./x"),
            ({"default": 2, "actions": {"a" * 65: 1}}, "aaaa"),
            ({"default": 2, "actions": ["reboot"]}, "actions"),
        ]
        for i, (approvals, mention) in enumerate(cases):
            with self.subTest(approvals=approvals):
                cfg = self.dep.write_config("approvals-%d.json" % i,
                                            mutate=lambda c, a=approvals: c.update(approvals=a))
                p = subprocess.run([SIGNETD, "--config", cfg], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   timeout=30, env=self.dep.env(), cwd=self.dep.dir)
                out = (p.stdout + p.stderr).decode(errors="replace")
                self.assertNotEqual(p.returncode, 0, out)
                self.assertRegex(out, mention)
                self.assertLessEqual(len([ln for ln in out.splitlines() if ln.strip()]), 5, out)
        # The issue's own configuration is accepted.
        cfg = self.dep.write_config("approvals-ok.json", mutate=lambda c: c.update(approvals=APPROVALS))
        srv = self.dep.start(config=cfg)
        self.assertEqual(srv.stop(), 0)


if __name__ == "__main__":
    unittest.main()
