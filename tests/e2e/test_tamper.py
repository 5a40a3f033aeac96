#!/usr/bin/python3
"""Tampering is caught.

VerifyLogTamper: `signet verify-log` (and, as a control, this suite's own
verify_chain) refuses tampered copies of a real log with exit 1 and
"FAIL: position P: ...", P naming the first bad event.

ProjectorTamper: an event body changed directly in the SQLite store (its
append-only triggers dropped first) stops projection: /healthz 503 with
"projector":"halted" and "halted_at" naming it, /metrics
signet_projector_halted 1, the snapshot stays below the tampered position,
and writes stop (503 integrity-failure) with nothing more appended."""

import json
import os
import re
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from client import fetch_all_events, get_keys, head_of, register, request, wait_until  # noqa: E402
from deploy import E2ETestCase  # noqa: E402
from tamper import (  # noqa: E402
    deep_copy, remove_event, reorder, set_key_id, swap_sigs, tamper_body, tamper_data_byte)
from verify import (  # noqa: E402
    ChainError, key_id_for, make_foreign_keys_doc, metric_value, parse_metrics, verify_chain,
    verify_snapshot)

N = 8


class VerifyLogTamper(E2ETestCase):
    @classmethod
    def setUpClass(cls):
        cls.start_deployment()
        for i in range(N):
            r = register(cls.wp, cls.ops, "tamper-%d" % i, hardware="hw-%d" % i)
            if r.status != 201:
                raise AssertionError(r)
        cls.keys = get_keys(cls.rp)
        cls.events, cls.head = fetch_all_events(cls.rp, cls.audit)
        cls.keys_path = cls.write_json("keys.json", cls.keys)
        cls.n = 0

    @classmethod
    def write_json(cls, name, obj):
        path = os.path.join(cls.dep.dir, name)
        with open(path, "w") as f:
            json.dump(obj, f)
        return path

    def verify_log(self, events, keys_path=None):
        VerifyLogTamper.n += 1
        path = self.write_json("case-%d.json" % self.n, events)
        return self.dep.cli("verify-log", "--keys", keys_path or self.keys_path, path)

    def assert_refused(self, events, positions, keys=None, keys_path=None):
        """Both verifiers refuse; signet names one of `positions`."""
        with self.assertRaises(ChainError) as cm:
            verify_chain(events, keys or self.keys)
        self.assertIn(cm.exception.position, positions, str(cm.exception))
        p = self.verify_log(events, keys_path)
        out = p.stdout + p.stderr
        self.assertEqual(p.returncode, 1, out)
        m = re.search(r"FAIL: position (\d+): \S", out)
        self.assertTrue(m, "no 'FAIL: position P: reason' in %r" % out)
        self.assertIn(int(m.group(1)), positions, out)
        self.assertNotRegex(p.stdout, r"(?m)^ok:")

    def test_control_untampered(self):
        self.assertEqual(verify_chain(self.events, self.keys)[0], N)
        p = self.verify_log(self.events)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertIn("ok: %d events, head %d %s" % (N, N, self.events[-1]["hash"]), p.stdout)

    def test_one_byte_of_data(self):
        self.assert_refused(tamper_data_byte(self.events, 4), {4})

    def test_type_or_actor_changed(self):
        evs = deep_copy(self.events)
        evs[5]["actor"] = "adm"
        self.assert_refused(evs, {6})
        evs = deep_copy(self.events)
        evs[1]["type"] = "DeviceRemoved"
        self.assert_refused(evs, {2})

    def test_field_added(self):
        evs = deep_copy(self.events)
        evs[2]["note"] = "x"
        self.assert_refused(evs, {3})

    def test_signatures_swapped(self):
        self.assert_refused(swap_sigs(self.events, 3, 6), {3})

    def test_event_removed(self):
        self.assert_refused(remove_event(self.events, 5), {5, 6})

    def test_first_event_removed(self):
        self.assert_refused(remove_event(self.events, 1), {1, 2})

    def test_events_reordered(self):
        self.assert_refused(reorder(self.events, 4), {4, 5})

    def test_event_duplicated(self):
        evs = deep_copy(self.events)
        evs.insert(3, deep_copy(evs[2]))
        self.assert_refused(evs, {3, 4})

    def test_key_id_changed(self):
        self.assert_refused(set_key_id(self.events, 2, key_id_for(self.keys, "devices")), {2})
        self.assert_refused(set_key_id(self.events, 7, key_id_for(self.keys, "snapshots")), {7})

    def test_prev_changed(self):
        evs = deep_copy(self.events)
        evs[6]["prev"] = evs[4]["hash"]
        self.assert_refused(evs, {7})

    def test_hash_changed(self):
        evs = deep_copy(self.events)
        evs[2]["hash"] = ("f" if evs[2]["hash"][0] != "f" else "e") + evs[2]["hash"][1:]
        self.assert_refused(evs, {3, 4})

    def test_signature_corrupted(self):
        evs = deep_copy(self.events)
        sig = evs[4]["sig"]
        evs[4]["sig"] = sig[:10] + ("A" if sig[10] != "A" else "B") + sig[11:]
        self.assert_refused(evs, {5})

    def test_wrong_keys_file(self):
        foreign = make_foreign_keys_doc()
        path = self.write_json("foreign-keys.json", foreign)
        self.assert_refused(self.events, {1}, keys=foreign, keys_path=path)

    def test_tampered_jsonl(self):
        evs = tamper_data_byte(self.events, 8)
        path = os.path.join(self.dep.dir, "tampered.jsonl")
        with open(path, "w") as f:
            for e in evs:
                f.write(json.dumps(e, separators=(",", ":")) + "\n")
        p = self.dep.cli("verify-log", "--keys", self.keys_path, path)
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        self.assertIn("FAIL: position 8:", p.stdout + p.stderr)

    def test_truncated_page(self):
        """A /v1/events page cut short at its end (issue 14, defect 14): the
        chain of what is left verifies, but the head the page names does not
        match, so it is refused."""
        page = {"events": deep_copy(self.events[:-3]), "head": self.head}
        path = self.write_json("truncated-page.json", page)
        p = self.dep.cli("verify-log", "--keys", self.keys_path, path)
        out = p.stdout + p.stderr
        self.assertEqual(p.returncode, 1, out)
        self.assertIn("FAIL: the export holds positions 1 to %d but names its head as %d"
                      % (self.head - 3, self.head), out)
        self.assertNotRegex(p.stdout, r"(?m)^ok:")
        # A head that is not a number cannot stand in for one.
        for head in (str(self.head), -1, None, 1.5):
            path = self.write_json("bad-head.json", {"events": deep_copy(self.events[:-3]), "head": head})
            p = self.dep.cli("verify-log", "--keys", self.keys_path, path)
            self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
            self.assertIn('"head" is not a non-negative integer', p.stdout)
        # The whole page, head and all, is still accepted (control).
        path = self.write_json("whole-page.json", {"events": self.events, "head": self.head})
        p = self.dep.cli("verify-log", "--keys", self.keys_path, path)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        # A bare array names no head: accepted, and signet says what it cannot see.
        p = self.verify_log(self.events[:-3])
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertIn("names no head", p.stderr)

    def test_keys_fetch_failure_not_called_unpinned(self):
        """No 'keys fetched ... not pinned' warning when the fetch failed."""
        p = self.dep.cli("verify-log", "http://127.0.0.1:1")
        self.assertNotEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertNotIn("keys fetched", p.stderr)
        self.assertIn("GET http://127.0.0.1:1/v1/keys", p.stderr)

    def test_keys_file_with_mismatched_key_id(self):
        """A keys file whose key_id does not match its PEM is not trusted."""
        keys = deep_copy(self.keys)
        ids = [k["key_id"] for k in keys["keys"]]
        for k, other in zip(keys["keys"], ids[1:] + ids[:1]):
            k["key_id"] = other  # every PEM now carries another key's id
        path = self.write_json("mismatched-keys.json", keys)
        p = self.dep.cli("verify-log", "--keys", path, self.write_json("plain.json", self.events))
        self.assertNotEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertNotRegex(p.stdout, r"(?m)^ok:")


class ProjectorTamper(E2ETestCase):
    TAMPERED = 3

    @classmethod
    def setUpClass(cls):
        w = cls.start_deployment(role="write")
        for i in range(1, 6):
            r = register(cls.wp, cls.ops, "proj-%d" % i, hardware="hw-%d" % i)
            if r.status != 201 or r.body["position"] != i:
                raise AssertionError(r)
        rc = w.stop()
        if rc != 0:
            raise AssertionError("signetd --role write exited %r on SIGTERM" % rc)
        tamper_body(cls.dep, cls.TAMPERED)
        cls.srv = cls.dep.start(role="all", healthy=False)

        def halted():
            r = request("GET", cls.rp, "/healthz")
            return r if r.status == 503 and isinstance(r.body, dict) and r.body.get("projector") == "halted" else None
        try:
            cls.health = wait_until(halted, 10, what="/healthz projector halted")
        except AssertionError:
            cls.health = None

    def test_healthz_reports_halted(self):
        self.assertIsNotNone(self.health, request("GET", self.rp, "/healthz"))
        r = self.health
        self.assertEqual(r.body.get("status"), "unavailable", r)
        self.assertEqual(r.body.get("projector"), "halted", r)
        self.assertIsNotNone(r.headers.get("Retry-After"), r)
        # The failing position is named, in the field docs/behaviour.md gives.
        self.assertEqual(r.body.get("halted_at"), self.TAMPERED, r)
        self.assertIn("hash", r.body.get("halted_reason", ""), r)
        self.assertEqual(r.body.get("integrity"), "failed", r)
        self.assertEqual(r.body.get("integrity_failed_at"), self.TAMPERED, r)
        self.assertLess(r.body.get("position", 0), self.TAMPERED, r)

    def test_metrics_show_halted(self):
        r = request("GET", self.rp, "/metrics")
        self.assertStatus(r, 200)
        samples = parse_metrics(r.raw.decode())
        self.assertEqual(metric_value(samples, "signet_projector_halted"), 1.0, r.raw.decode())
        self.assertLess(metric_value(samples, "signet_projector_position"), self.TAMPERED)

    def test_snapshot_stops_before_tampered_event(self):
        keys = get_keys(self.rp)
        r = request("GET", self.rp, "/v1/snapshots/devices", token=self.audit)
        self.assertStatus(r, 200)
        verify_snapshot(r.body, keys)
        self.assertLess(r.body["as_of"]["position"], self.TAMPERED)
        self.assertLess(int(r.headers["Signet-Position"]), self.TAMPERED)
        for d in r.body["state"]["devices"]:
            self.assertLess(d["position"], self.TAMPERED)
            self.assertNotEqual(d["hardware"][0], "X")
        # Asking for the tampered position never succeeds.
        r = request("GET", self.rp, "/v1/snapshots/devices?min_position=%d&wait_ms=300" % self.TAMPERED,
                    token=self.audit)
        self.assertProblem(r, 503)

    def test_verify_log_names_the_tampered_event(self):
        p = self.dep.cli("verify-log", "http://127.0.0.1:%d" % self.rp,
                         env=self.dep.env(SIGNET_TOKEN=self.audit))
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        self.assertIn("FAIL: position %d:" % self.TAMPERED, p.stdout + p.stderr)
        events, _ = fetch_all_events(self.rp, self.audit)
        with self.assertRaises(ChainError) as cm:
            verify_chain(events, get_keys(self.rp))
        self.assertEqual(cm.exception.position, self.TAMPERED)

    def test_halt_stops_writes(self):
        """The writer never appends onto a chain its own projector rejected."""
        head = head_of(self.rp, self.audit)
        r = register(self.wp, self.ops, "proj-late")
        self.assertProblem(r, 503, slug="integrity-failure")
        self.assertIn("position %d" % self.TAMPERED, r.body["detail"])
        self.assertEqual(head_of(self.rp, self.audit), head)
        h = request("GET", self.rp, "/healthz")
        self.assertEqual(h.status, 503, h)
        self.assertEqual(h.body.get("projector"), "halted", h)


if __name__ == "__main__":
    unittest.main()
