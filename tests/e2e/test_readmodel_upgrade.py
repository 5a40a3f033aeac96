#!/usr/bin/python3
"""An upgrade that adds or changes a read model rebuilds read.db by itself.

read.db records the projections that built it ("name@version,..."). A
signetd whose set differs (an older binary's file, which records none, or
one with another version of a view) logs one line naming both sets, drops
the views and re-projects (and re-verifies) the whole log from position 0
(docs/behaviour.md, "Read side"). Here an older binary's read.db is made by
editing a stopped deployment's read.db with sqlite3, then:

- every view's signed snapshot after the rebuild is the one served before
  the upgrade (same state, same as_of), the firmware uploaded before it
  included, and the read model's checkpoint is the store's head;
- while it rebuilds, /healthz and snapshots say how far it is (position and
  lag add up to the head; a snapshot's state is the state at its as_of);
- a file built by this set is not rebuilt;
- the start-up witness check is unchanged: a read.db whose checkpoint was
  tampered is refused before any rebuild, and one whose rebuild was cut
  short still witnesses the position the old file had reached.
"""

import glob
import os
import shutil
import sqlite3
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import http.client  # noqa: E402

from client import get_keys, in_threads, register, request  # noqa: E402
from deploy import E2ETestCase  # noqa: E402
from tamper import copy_store, restore_store, stored_hashes  # noqa: E402
from verify import metric_value, parse_metrics, verify_snapshot  # noqa: E402

# Every view, in registry order (src/read/readmodel.c).
VIEWS = ("devices", "commands", "firmware", "rollouts", "ddi")
# The tables of the views the previous version did not have.
NEW_VIEW_TABLES = ("commands", "command_approvals", "firmware", "ro_firmware", "ro_rollouts",
                   "ro_active", "ro_stage", "ro_reports", "ro_devfw", "ddi_attributes",
                   "ddi_cancel_acks")
DEVICES = 240


def read_db(dep):
    return os.path.join(dep.dir, "var", "read.db")


def rm_sql(dep, *statements):
    """Run statements on a stopped deployment's read.db; returns the rows of
    the last one."""
    db = sqlite3.connect(read_db(dep))
    try:
        rows = None
        for st in statements:
            rows = db.execute(*st).fetchall() if isinstance(st, tuple) else db.execute(st).fetchall()
        db.commit()
        return rows
    finally:
        db.close()


def recorded(dep):
    """(checkpoint (position, hash) or None, recorded set or None)."""
    db = sqlite3.connect(read_db(dep))
    try:
        cp = db.execute("SELECT position, hash FROM checkpoint WHERE id = 1").fetchone()
        try:
            row = db.execute("SELECT value FROM meta WHERE key = 'projections'").fetchone()
        except sqlite3.OperationalError:
            row = None
        return (tuple(cp) if cp else None), (row[0] if row else None)
    finally:
        db.close()


def run_refused(test, dep, timeout=20):
    """signetd must exit non-zero within timeout; returns its output."""
    srv = dep.spawn("all")
    try:
        rc = srv.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        srv.stop(kill=True)
        test.fail("signetd started on a store it should refuse:\n%s" % srv.output_text()[-3000:])
    srv.stop()
    out = srv.output_text()
    test.assertNotEqual(rc, 0, out)
    return out


class Upgrade(E2ETestCase):
    """One deployment with devices, a firmware image, a rollout and a
    command; each test puts back the read.db a clean stop left, edits it as
    an older binary would have left it, and starts signetd on it."""

    @classmethod
    def setUpClass(cls):
        cls.init_deployment()
        cls.ci = cls.dep.token("ci")
        srv = cls.dep.start()
        cls.positions = {}

        def reg(i):
            r = register(cls.wp, cls.ops, "up-%03d" % i, hardware="hw-u")
            assert r.status == 201, r
            cls.positions["up-%03d" % i] = r.body["position"]
        got = in_threads(8, lambda t: [reg(i) for i in range(t, DEVICES // 2, 8)])
        assert len(got) == 8, "registrations did not finish"
        image = b"firmware image for the upgrade test " * 64
        r = request("POST", cls.wp, "/v1/firmware?name=fw-up&version=1.0&hardware=hw-u&"
                    "security_version=1", token=cls.ci, body=image,
                    headers={"Content-Type": "application/octet-stream"})
        assert r.status == 201, r
        cls.firmware_id = r.body["firmware_id"]
        r = request("POST", cls.wp, "/v1/rollouts", token=cls.ops,
                    body={"firmware_id": cls.firmware_id, "hardware": "hw-u", "stages": [10, 100],
                          "failure_threshold": 0.5, "min_reports": 1000})
        assert r.status == 201, r
        r = request("POST", cls.wp, "/v1/commands", token=cls.ops,
                    body={"device_id": "up-000", "action": "reboot"})
        assert r.status == 202, r
        got = in_threads(8, lambda t: [reg(i) for i in range(DEVICES // 2 + t, DEVICES, 8)])
        assert len(got) == 8, "registrations did not finish"
        cls.head = max(stored_hashes(cls.dep))
        cls.keys = get_keys(cls.rp)
        cls.before = {v: cls.snapshot(v) for v in VIEWS}
        assert srv.stop() == 0
        cls.hashes = stored_hashes(cls.dep)
        cls.current = recorded(cls.dep)[1]  # this version's set, as read.db records it
        cls.pristine = os.path.join(cls.dep.dir, "read.db.pristine")
        shutil.copyfile(read_db(cls.dep), cls.pristine)
        assert not os.path.exists(read_db(cls.dep) + "-wal") or \
            os.path.getsize(read_db(cls.dep) + "-wal") == 0, "read.db left a WAL behind"

    @classmethod
    def snapshot(cls, view, port=None):
        r = request("GET", port or cls.rp, "/v1/snapshots/%s?min_position=%d&wait_ms=10000"
                    % (view, cls.head), token=cls.audit)
        assert r.status == 200, (view, r)
        verify_snapshot(r.body, cls.keys)
        assert r.body["as_of"]["position"] == cls.head, (view, r.body["as_of"])
        return r.body

    def setUp(self):
        for f in glob.glob(read_db(self.dep) + "*"):
            os.unlink(f)
        shutil.copyfile(self.pristine, read_db(self.dep))

    def start_and_watch(self, rebuilding=False):
        """Start signetd and, until its read model is at the head, check what
        /healthz and the devices snapshot say against what is true at the
        position they name (and, with rebuilding, that /healthz says
        "rebuilding" up to the head while behind it, "ok" after; without,
        never "rebuilding"). Returns (server, observations seen behind)."""
        srv = self.dep.spawn("all")
        behind = 0
        deadline = time.monotonic() + 60
        while True:
            self.assertLess(time.monotonic(), deadline, "read model never reached the head")
            if not srv.running():
                self.fail("signetd exited:\n" + srv.output_text()[-3000:])
            try:
                h = request("GET", self.rp, "/healthz", timeout=5)
                s = request("GET", self.rp, "/v1/snapshots/devices", token=self.audit, timeout=5)
            except OSError:
                time.sleep(0.02)
                continue
            self.assertStatus(h, 200)
            self.assertEqual(h.body["head"], self.head, h.body)
            self.assertEqual(h.body["position"] + h.body["lag"], self.head, h.body)
            if rebuilding and h.body["position"] < self.head:
                self.assertEqual((h.body["projector"], h.body.get("rebuilding_to")),
                                 ("rebuilding", self.head), h.body)
            else:
                self.assertEqual(h.body["projector"], "ok", h.body)
                self.assertNotIn("rebuilding_to", h.body)
            self.assertLessEqual(int(h.headers["signet-position"]), self.head)
            self.assertStatus(s, 200)
            verify_snapshot(s.body, self.keys)
            at = s.body["as_of"]["position"]
            self.assertEqual(s.body["as_of"]["hash"], self.hashes.get(at, "0" * 64))
            # Exactly the devices registered up to as_of: never a half-built
            # state presented as that position's.
            want = sorted(d for d, p in self.positions.items() if p <= at)
            self.assertEqual(s.body["state"]["count"], len(want), at)
            self.assertEqual([d["device_id"] for d in s.body["state"]["devices"]], want)
            if h.body["position"] == self.head and at == self.head:
                return srv, behind
            behind += 1
            time.sleep(0.01)

    def assert_complete(self, srv):
        for v in VIEWS:
            with self.subTest(view=v):
                after = self.snapshot(v)
                self.assertEqual(after["as_of"], self.before[v]["as_of"])
                self.assertEqual(after["state"], self.before[v]["state"])
        fw = self.snapshot("firmware")["state"]["firmware"]
        self.assertIn(self.firmware_id, [f["firmware_id"] for f in fw])
        h = request("GET", self.rp, "/healthz")
        self.assertStatus(h, 200)
        self.assertEqual((h.body["position"], h.body["lag"]), (self.head, 0))
        self.assertEqual(srv.stop(), 0)
        self.assertEqual(recorded(self.dep),
                         ((self.head, self.hashes[self.head]), self.current))

    def rebuild_line(self, srv):
        lines = [ln for ln in srv.stderr_text().splitlines() if "rebuilding: it was built by" in ln]
        self.assertEqual(len(lines), 1, srv.stderr_text()[-3000:])
        self.assertIn('this version projects \\"%s\\"' % self.current, lines[0])
        self.assertIn("checkpoint at position %d" % self.head, lines[0])
        self.assertIn('"level":"warn"', lines[0])
        return lines[0]

    def test_the_file_records_this_set(self):
        self.assertEqual(recorded(self.dep)[0], (self.head, self.hashes[self.head]))
        self.assertRegex(self.current, "^" + ",".join(r"%s@[1-9][0-9]*" % v for v in VIEWS) + "$")

    def test_same_set_is_kept(self):
        srv, _ = self.start_and_watch()
        err = srv.stderr_text()
        self.assertNotIn("rebuilding", err)
        self.assertIn("read models at position %d" % self.head, err)
        self.assert_complete(srv)

    def test_older_binary_without_a_recorded_set_is_rebuilt(self):
        """The binary before this one: no set recorded, and only the devices
        view (the others' tables absent)."""
        rm_sql(self.dep, "DROP TABLE IF EXISTS meta", "DROP TABLE IF EXISTS witness",
               *["DROP TABLE %s" % t for t in NEW_VIEW_TABLES])
        srv, behind = self.start_and_watch(rebuilding=True)
        self.assert_complete(srv)
        line = self.rebuild_line(srv)
        self.assertIn("projections it does not name", line)
        err = srv.stderr_text()
        self.assertIn("read models rebuilt up to position %d" % self.head, err)
        print("\n  rebuild of %d events: %s; %d observations behind the head" % (
            self.head, [ln for ln in err.splitlines() if "rebuilt up to" in ln][0], behind),
            file=sys.stderr)

    def test_older_version_of_a_view_is_rebuilt(self):
        """A view whose apply() changed (its version raised): what the old
        version projected is not served."""
        old = self.current.replace("firmware@", "firmware@9")  # another version
        rm_sql(self.dep, ("UPDATE meta SET value = ? WHERE key = 'projections'", (old,)),
               "DELETE FROM firmware", "UPDATE devices SET hardware = 'old-shape'")
        srv, _ = self.start_and_watch(rebuilding=True)
        self.assert_complete(srv)
        self.assertIn('projections \\"%s\\"' % old, self.rebuild_line(srv))
        # Recorded now: the next start keeps it.
        srv, _ = self.start_and_watch()
        self.assertNotIn("rebuilding", srv.stderr_text())
        self.assert_complete(srv)

    def test_tampered_checkpoint_is_refused_before_any_rebuild(self):
        fake = "ab" * 32
        for name, stmts in (
                ("this set", []),
                ("an older set", ["UPDATE meta SET value = 'devices@1' WHERE key = 'projections'"]),
                ("no set", ["DROP TABLE meta"])):
            with self.subTest(name):
                self.setUp()
                rm_sql(self.dep, ("UPDATE checkpoint SET hash = ?", (fake,)), *stmts)
                before = recorded(self.dep)
                out = run_refused(self, self.dep)
                self.assertIn("forks from the read model's checkpoint", out)
                self.assertIn(fake, out)
                self.assertIn(self.hashes[self.head], out)
                self.assertNotIn("rebuilding", out)
                self.assertEqual(recorded(self.dep), before, "a refused start touched read.db")
                # Ahead of the store: behind the read model, refused too.
                self.setUp()
                rm_sql(self.dep, ("UPDATE checkpoint SET position = ?", (self.head + 5,)), *stmts)
                out = run_refused(self, self.dep)
                self.assertIn("behind the read model's checkpoint", out)
                self.assertNotIn("rebuilding", out)


class RebuildHealth(E2ETestCase):
    """While an upgrade rebuilds the read models, /healthz says so (200,
    "projector":"rebuilding", rebuilding_to = where the replaced read model
    was) exactly while the position is behind that, and "ok" from there on;
    /metrics signet_projector_rebuilding follows. A log of 4,000 events, so
    that the rebuild lasts long enough to be seen by polling /healthz alone."""

    EVENTS = 4000

    def test_healthz_says_rebuilding(self):
        dep = self.deployment()
        dep.init()
        ops = dep.token("ops")
        srv = dep.start()

        def batch(t):
            conn = http.client.HTTPConnection("127.0.0.1", dep.write_port, timeout=30)
            for i in range(t, self.EVENTS, 8):
                r = register(dep.write_port, ops, "rb-%04d" % i, conn=conn)
                assert r.status == 201, r
            conn.close()
            return t
        self.assertEqual(len(in_threads(8, batch, timeout=300)), 8, "registrations did not finish")
        head = max(stored_hashes(dep))
        self.assertEqual(srv.stop(), 0)
        current = recorded(dep)[1]
        rm_sql(dep, ("UPDATE meta SET value = ? WHERE key = 'projections'",
                     (current.replace("devices@", "devices@9"),)))

        srv = dep.spawn("all")
        seen, metrics_during = [], None
        conn = None
        deadline = time.monotonic() + 120
        while True:
            self.assertLess(time.monotonic(), deadline, "read model never reached the head")
            if not srv.running():
                self.fail("signetd exited:\n" + srv.output_text()[-3000:])
            try:
                conn = conn or http.client.HTTPConnection("127.0.0.1", dep.read_port, timeout=5)
                h = request("GET", dep.read_port, "/healthz", conn=conn)
                if metrics_during is None and h.body.get("projector") == "rebuilding":
                    # /metrics between two "rebuilding" answers must say 1.
                    m = request("GET", dep.read_port, "/metrics", conn=conn)
                    h = request("GET", dep.read_port, "/healthz", conn=conn)
                    if h.body.get("projector") == "rebuilding":
                        metrics_during = m
            except (OSError, http.client.HTTPException):
                conn = None
                time.sleep(0.005)
                continue
            self.assertStatus(h, 200)
            seen.append((h.body["position"], h.body["projector"], h.body.get("rebuilding_to")))
            if h.body["position"] == head:
                break
        conn.close()
        for pos, state, to in seen:
            if pos < head:
                self.assertEqual((state, to), ("rebuilding", head), seen[:5])
            else:
                self.assertEqual((state, to), ("ok", None))
        rebuilding = [x for x in seen if x[1] == "rebuilding"]
        self.assertTrue(rebuilding, "no /healthz answer saw the rebuild (%d answers)" % len(seen))
        self.assertIsNotNone(metrics_during, "no /metrics read between two rebuilding answers")
        m = parse_metrics(metrics_during.raw.decode())
        self.assertEqual(metric_value(m, "signet_projector_rebuilding"), 1.0)
        after = parse_metrics(request("GET", dep.read_port, "/metrics").raw.decode())
        self.assertEqual(metric_value(after, "signet_projector_rebuilding"), 0.0)
        print("\n  rebuild of %d events: %d /healthz answers, %d of them rebuilding"
              % (head, len(seen), len(rebuilding)), file=sys.stderr)
        self.assertEqual(srv.stop(), 0)


class InterruptedRebuild(E2ETestCase):
    """A rebuild cut short (the read model back at position 3 of 8) is still
    a witness of position 8: token and store restored together from a
    backup at 5 are refused, as they are without any rebuild
    (test_integrity.py, SecondWitness)."""

    def test_rebuilding_read_model_still_witnesses_its_old_position(self):
        dep = self.deployment()
        dep.init()
        ops = dep.token("ops")
        srv = dep.start()
        for i in range(5):
            self.assertStatus(register(dep.write_port, ops, "w-%d" % i), 201)
        self.assertEqual(srv.stop(), 0)
        backup = os.path.join(dep.dir, "backup")
        copy_store(dep, backup + ".db")
        shutil.copytree(dep.token_dir, backup + ".tokens")
        srv = dep.start()
        for i in range(3):
            self.assertStatus(register(dep.write_port, ops, "x-%d" % i), 201)
        r = request("GET", dep.read_port, "/v1/snapshots/devices?min_position=8",
                    token=dep.token("audit"))
        self.assertStatus(r, 200)
        self.assertEqual(srv.stop(), 0)
        hashes = stored_hashes(dep)
        self.assertEqual(max(hashes), 8)

        # Upgraded: rebuilt from 0 (and finished); then cut back to 3 as if
        # the process had died there.
        rm_sql(dep, "UPDATE meta SET value = 'devices@1' WHERE key = 'projections'")
        srv = dep.start()
        self.assertIn("rebuilding", srv.stderr_text())
        self.assertEqual(srv.stop(), 0)
        rm_sql(dep, ("UPDATE checkpoint SET position = 3, hash = ?", (hashes[3],)),
               "DELETE FROM devices WHERE position > 3")
        self.assertEqual(rm_sql(dep, "SELECT position, hash FROM witness"), [(8, hashes[8])])

        restore_store(dep, backup + ".db")
        shutil.rmtree(dep.token_dir)
        shutil.copytree(backup + ".tokens", dep.token_dir)
        out = run_refused(self, dep)
        self.assertIn("behind the read model's checkpoint", out)
        self.assertIn(hashes[8], out)
        self.assertIn(hashes[5], out)


if __name__ == "__main__":
    unittest.main(verbosity=2)
