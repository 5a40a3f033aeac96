#!/usr/bin/python3
"""The write side's own state across restarts, and the event catalogue.

- A clean stop leaves a signed write-state checkpoint at the head; the next
  start replays nothing and still decides on the whole state (an existing
  device is a 409, a new one gets the next position).
- A checkpoint that was tampered with, or that names a position the store
  does not hold with that hash, is not used: the log is replayed instead and
  the decisions are the same.
- Every event in the log matches `signet events-catalogue`.
"""

import json
import os
import re
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from client import fetch_all_events, register  # noqa: E402
from deploy import E2ETestCase  # noqa: E402

N = 12


def checkpoint_path(dep):
    return os.path.join(dep.dir, "var", "writestate.ckpt")


def checkpoint_header(dep):
    with open(checkpoint_path(dep)) as f:
        return json.loads(f.read().splitlines()[-1])


class Checkpoint(E2ETestCase):
    def setUp(self):
        self.init_deployment()
        srv = self.dep.start()
        for i in range(N):
            r = register(self.wp, self.ops, "ws-%d" % i)
            self.assertStatus(r, 201)
        self.assertEqual(srv.stop(), 0)

    def restart_and_decide(self, srv=None):
        srv = srv or self.dep.start()
        self.assertStatus(register(self.wp, self.ops, "ws-3"), 409)
        r = register(self.wp, self.ops, "ws-new")
        self.assertStatus(r, 201)
        self.assertEqual(r.body["position"], N + 1)
        self.assertEqual(srv.stop(), 0)
        return srv

    def test_clean_stop_leaves_a_checkpoint_at_the_head(self):
        h = checkpoint_header(self.dep)
        self.assertEqual(h["type"], "signet-writestate")
        self.assertEqual(h["position"], N)
        self.assertEqual(h["entries"], N)
        srv = self.restart_and_decide()
        self.assertRegex(srv.output_text(), r"write state from a checkpoint at %d plus 0 events" % N)
        self.assertEqual(checkpoint_header(self.dep)["position"], N + 1)

    def test_tampered_checkpoint_is_not_used(self):
        path = checkpoint_path(self.dep)
        with open(path) as f:
            text = f.read()
        # Remove a device from the state: a writer deciding on this would
        # register ws-3 a second time.
        lines = [ln for ln in text.splitlines(True) if "\tws-3\t" not in ln]
        self.assertEqual(len(lines), N)
        with open(path, "w") as f:
            f.write("".join(lines))
        srv = self.restart_and_decide()
        out = srv.output_text()
        self.assertIn("not used", out)
        self.assertRegex(out, r"write state from genesis at 0 plus %d events" % N)

    def test_checkpoint_of_another_chain_is_not_used(self):
        """A checkpoint whose position the store holds with another hash (a
        checkpoint copied from another deployment, or a store replaced):
        not used."""
        path = checkpoint_path(self.dep)
        other = self.deployment()
        other.init()
        srv = other.start()
        for i in range(N + 2):
            self.assertStatus(register(other.write_port, other.token("ops"), "other-%d" % i), 201)
        self.assertEqual(srv.stop(), 0)
        with open(checkpoint_path(other)) as f:
            text = f.read()
        with open(path, "w") as f:
            f.write(text)
        srv = self.dep.start()
        out = srv.output_text()
        self.assertIn("not used", out)
        self.restart_and_decide(srv)


class Catalogue(E2ETestCase):
    @classmethod
    def setUpClass(cls):
        cls.start_deployment()
        for i in range(3):
            register(cls.wp, cls.ops, "cat-%d" % i, group="g" if i % 2 else None)

    def test_every_event_matches_the_catalogue(self):
        p = self.dep.cli("events-catalogue")
        self.assertEqual(p.returncode, 0, p.stderr)
        cat = {e["type"]: e["fields"] for e in json.loads(p.stdout)["events"]}
        self.assertIn("DeviceRegistered", cat)
        kinds = {"string": str, "integer": int, "object": dict, "array": list, "boolean": bool}
        events, _ = fetch_all_events(self.rp, self.audit)
        self.assertEqual(len(events), 3)
        for ev in events:
            fields = cat[ev["type"]]
            names = {f["name"] for f in fields}
            self.assertLessEqual(set(ev["data"]), names, ev)
            for f in fields:
                if f["required"]:
                    self.assertIn(f["name"], ev["data"], ev)
                if f["name"] in ev["data"]:
                    self.assertIsInstance(ev["data"][f["name"]], kinds[f["type"]], ev)

    def test_usage(self):
        p = self.dep.cli("events-catalogue", "extra")
        self.assertEqual(p.returncode, 2)
        self.assertTrue(re.search(r"usage", p.stderr))


if __name__ == "__main__":
    unittest.main()
