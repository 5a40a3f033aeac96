#!/usr/bin/python3
"""The service notices a rolled-back, forked or tampered event store.

Each scenario is what an attacker with the disk, or an unlucky operator
restoring a backup, does to a stopped service: edit events.db with sqlite3,
put an older copy of it back, delete it. signetd keeps the latest signed
checkpoint of the chain (the anchor) in the token, and the read model's
checkpoint is a second witness (docs/behaviour.md, "Integrity").

- Rollback and fork are refused at start, with both positions and hashes
  named, and nothing is served or written.
- Tampering deep in the log is found by the background scrub: /healthz
  answers 503 on every listener and every role, writes answer 503
  integrity-failure, and nothing more is appended.
- A forged anchor object in the token is refused.
- `signet accept-store` is the operator's explicit way on from an older
  store; after it the chain goes on from the accepted head and verifies.
"""

import os
import shutil
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from client import fetch_all_events, get_keys, register, request, wait_until  # noqa: E402
from deploy import E2ETestCase  # noqa: E402
from tamper import copy_store, events_db, restore_store, sql, stored_hashes, tamper_body  # noqa: E402
from verify import metric_value, parse_metrics, verify_chain  # noqa: E402


def run_refused(test, dep, role="all", timeout=20):
    """signetd must refuse to start: exit non-zero within timeout, with a
    last line naming the problem. Returns the whole output."""
    srv = dep.spawn(role)
    try:
        rc = srv.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        srv.stop(kill=True)
        test.fail("signetd (%s) started on a store it should refuse:\n%s"
                  % (role, srv.output_text()[-3000:]))
    srv.stop()
    out = srv.output_text()
    test.assertNotEqual(rc, 0, out)
    return out


def register_n(dep, prefix, n):
    """Register devices prefix-0 .. prefix-(n-1); returns the last position."""
    ops = dep.token("ops")
    last = None
    for i in range(n):
        r = register(dep.write_port, ops, "%s-%d" % (prefix, i), hardware="hw-%d" % i)
        if r.status != 201:
            raise AssertionError(r)
        last = r.body["position"]
    return last


def write_and_stop(dep, prefix, n, role="all"):
    """Start signetd on dep, register n devices, stop it cleanly; returns
    the last position."""
    srv = dep.start(role=role)
    last = register_n(dep, prefix, n)
    rc = srv.stop()
    if rc != 0:
        raise AssertionError("signetd exited %r on SIGTERM" % rc)
    return last


def new_deployment(test):
    """A deployment of test's class on which `signet init` ran."""
    dep = test.deployment()
    dep.init()
    return dep


class Rollback(E2ETestCase):
    """An older copy of the store (a backup put back, or rows deleted) is
    refused at start; the positions it would hand out again stay unused."""

    def setUp(self):
        self.dep = new_deployment(self)

    def assert_names_both(self, out, store_pos, store_hash, anchor_pos, anchor_hash):
        last = [ln for ln in out.splitlines() if ln.startswith("signetd:")]
        self.assertTrue(last, out)
        line = last[-1]
        self.assertIn("position %d" % store_pos, line)
        self.assertIn(store_hash, line)
        self.assertIn("position %d" % anchor_pos, line)
        self.assertIn(anchor_hash, line)

    def test_deleted_rows_refused(self):
        write_and_stop(self.dep, "dev", 10)
        hashes = stored_hashes(self.dep)
        sql(self.dep, "DELETE FROM events WHERE position > 7")
        out = run_refused(self, self.dep)
        self.assertRegex(out, r"behind the anchor")
        self.assert_names_both(out, 7, hashes[7], 10, hashes[10])
        # Still refused on a second try, and in every role.
        run_refused(self, self.dep, role="write")
        run_refused(self, self.dep, role="read")
        self.assertEqual(max(stored_hashes(self.dep)), 7, "a refused start wrote events")

    def test_every_row_deleted_refused(self):
        write_and_stop(self.dep, "dev", 4)
        hashes = stored_hashes(self.dep)
        sql(self.dep, "DELETE FROM events")
        out = run_refused(self, self.dep)
        self.assert_names_both(out, 0, "0" * 64, 4, hashes[4])
        self.assertEqual(stored_hashes(self.dep), {})

    def test_store_file_deleted_refused(self):
        """Only `signet init` creates a store: a missing one, or an empty file
        in its place, is refused before the anchor is even consulted."""
        write_and_stop(self.dep, "dev", 3)
        restore_store(self.dep, os.devnull)
        out = run_refused(self, self.dep)
        self.assertIn("is not a signet event store", out)
        os.unlink(events_db(self.dep))
        out = run_refused(self, self.dep)
        self.assertIn("does not exist", out)
        # Created afresh (signet init), it is behind the anchor.
        p = self.dep.cli("init", "--config", self.dep.config_path)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        out = run_refused(self, self.dep)
        self.assertRegex(out, r"behind the anchor")

    def test_backup_restored_refused_then_accepted(self):
        write_and_stop(self.dep, "a", 7)
        backup = os.path.join(self.dep.dir, "backup.db")
        copy_store(self.dep, backup)
        write_and_stop(self.dep, "b", 3)
        old = stored_hashes(self.dep)
        restore_store(self.dep, backup)
        out = run_refused(self, self.dep)
        self.assert_names_both(out, 7, old[7], 10, old[10])

        # The operator's explicit way on, logged.
        p = self.dep.cli("accept-store", "--config", self.dep.config_path)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertIn("accepted the event store at position 7", p.stdout)
        self.assertIn("anchor was at position 10", p.stdout)
        self.assertIn("accept-store", p.stderr)  # the JSON log line
        self.assertIn("moved aside", p.stdout)  # the read model was at 10

        srv = self.dep.start()
        r = register(self.dep.write_port, self.dep.token("ops"), "after-accept")
        self.assertStatus(r, 201)
        self.assertEqual(r.body["position"], 8)
        audit = self.dep.token("audit")
        events, head = fetch_all_events(self.dep.read_port, audit)
        self.assertEqual(head, 8)
        verify_chain(events, get_keys(self.dep.read_port))
        self.assertEqual(events[7]["prev"], old[7])
        self.assertNotEqual(events[7]["hash"], old[8])
        # The read model was rebuilt from the accepted store.
        s = request("GET", self.dep.read_port, "/v1/snapshots/devices?min_position=8", token=audit)
        self.assertStatus(s, 200)
        self.assertEqual(s.body["as_of"]["position"], 8)
        self.assertEqual(srv.stop(), 0)

    def test_accept_store_refuses_a_broken_chain(self):
        write_and_stop(self.dep, "dev", 5)
        tamper_body(self.dep, 2)
        p = self.dep.cli("accept-store", "--config", self.dep.config_path)
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        self.assertIn("event 2", p.stderr)


class SecondWitness(E2ETestCase):
    """Token and store restored together from the same old backup: the
    anchor agrees with the store, but the read model's checkpoint (newer)
    does not, and start is refused."""

    def test_read_model_checkpoint_is_a_witness(self):
        dep = new_deployment(self)
        write_and_stop(dep, "w", 5)
        backup = os.path.join(dep.dir, "backup")
        copy_store(dep, backup + ".db")
        shutil.copytree(dep.token_dir, backup + ".tokens")
        srv = dep.start()
        register_n(dep, "x", 3)
        r = request("GET", dep.read_port, "/v1/snapshots/devices?min_position=8",
                    token=dep.token("audit"))
        self.assertStatus(r, 200)
        self.assertEqual(srv.stop(), 0)
        hashes = stored_hashes(dep)
        restore_store(dep, backup + ".db")
        shutil.rmtree(dep.token_dir)
        shutil.copytree(backup + ".tokens", dep.token_dir)
        out = run_refused(self, dep)
        self.assertIn("read model's checkpoint", out)
        self.assertIn(hashes[8], out)
        self.assertIn(hashes[5], out)


class Fork(E2ETestCase):
    """The event the anchor names changed (body or hash column): refused."""

    def setUp(self):
        self.dep = new_deployment(self)
        write_and_stop(self.dep, "f", 6, role="write")
        self.hashes = stored_hashes(self.dep)

    def test_head_body_edited(self):
        tamper_body(self.dep, 6)
        out = run_refused(self, self.dep)
        self.assertIn("event 6", out)
        self.assertIn(self.hashes[6], out)

    def test_head_hash_column_edited(self):
        """The writer used to rebuild its head from this column and sign the
        next event with a false prev."""
        fake = "ab" * 32
        sql(self.dep, ("UPDATE events SET hash = ? WHERE position = 6", (fake,)))
        out = run_refused(self, self.dep, role="write")
        self.assertIn("position 6", out)
        self.assertEqual(stored_hashes(self.dep)[6], fake)
        self.assertEqual(max(stored_hashes(self.dep)), 6)

    def test_forged_anchor_object_refused(self):
        """An anchor object that does not verify (planted with the PIN by
        pkcs11-tool) is refused, not ignored."""
        path = os.path.join(self.dep.dir, "forged.json")
        with open(path, "w") as f:
            f.write('{"hash":"%s","key_id":"%s","position":99,"sig":"AAAA","time":"x",'
                    '"type":"signet-anchor"}' % ("0" * 64, "0" * 64))
        p = subprocess.run(
            ["pkcs11-tool", "--module", self.dep.module, "--token-label", self.dep.token_label,
             "--login", "--pin", self.dep.pin, "--write-object", path, "--type", "data",
             "--label", "signet-anchor", "--private"],
            env=self.dep.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.assertEqual(p.returncode, 0, p.stdout.decode(errors="replace").replace(self.dep.pin, "<pin>"))
        out = run_refused(self, self.dep)
        self.assertIn("anchor", out)
        self.assertIn("does not verify", out)


class DeepTamper(E2ETestCase):
    """An edit deep in the log (before the anchor, so start-up does not
    re-verify it) is found by the scrub within seconds: writes stop, /healthz
    says why on every listener, /metrics shows the scrub's progress. The
    store is tampered once, in setUpClass; each test starts signetd on it."""

    N = 30
    TAMPERED = 5

    @classmethod
    def setUpClass(cls):
        srv = cls.start_deployment()
        register_n(cls.dep, "d", cls.N)
        r = request("GET", cls.rp, "/v1/snapshots/devices?min_position=%d" % cls.N, token=cls.audit)
        if r.status != 200:
            raise AssertionError(r)
        if srv.stop() != 0:
            raise AssertionError("signetd exited %r on SIGTERM" % srv.proc.returncode)
        tamper_body(cls.dep, cls.TAMPERED)

    def broken_health(self, port):
        r = request("GET", port, "/healthz")
        if r.status == 503 and isinstance(r.body, dict) and r.body.get("integrity") == "failed":
            return r
        return None

    def check_stopped(self, srv, position, write_listener=True, read_listener=True):
        ports = ([srv.write_port] if write_listener else []) + ([srv.read_port] if read_listener else [])
        for port in ports:
            r = wait_until(lambda: self.broken_health(port), 20, what="/healthz integrity failed")
            self.assertEqual(r.body.get("status"), "unavailable", r)
            self.assertEqual(r.body.get("integrity_failed_at"), position, r)
            self.assertIn("event %d" % position, r.body.get("integrity_reason", ""), r)
        if write_listener:
            w = register(srv.write_port, self.ops, "after-tamper")
            self.assertProblem(w, 503, slug="integrity-failure")
            self.assertIn(str(position), w.body["detail"])
        self.assertEqual(max(stored_hashes(self.dep)), self.N, "appended after the tamper was found")

    def test_body_edit_found_by_scrub_all_roles(self):
        srv = self.dep.start(healthy=False)
        self.check_stopped(srv, self.TAMPERED)
        m = request("GET", srv.read_port, "/metrics")
        samples = parse_metrics(m.raw.decode())
        self.assertEqual(metric_value(samples, "signet_integrity_ok"), 0.0)
        self.assertEqual(srv.stop(), 0)

    def test_body_edit_found_in_write_role_and_read_role(self):
        w = self.dep.start(role="write", healthy=False)
        self.check_stopped(w, self.TAMPERED, read_listener=False)
        self.assertEqual(w.stop(), 0)
        r = self.dep.start(role="read", healthy=False)
        self.check_stopped(r, self.TAMPERED, write_listener=False)
        self.assertEqual(r.stop(), 0)


class ColumnTamperDeep(E2ETestCase):
    """A hash column changed deep in the log is found by the scrub."""

    def test_middle_hash_column(self):
        dep = new_deployment(self)
        write_and_stop(dep, "c", 12)
        sql(dep, ("UPDATE events SET hash = ? WHERE position = 4", ("cd" * 32,)))
        srv = dep.start(healthy=False)

        def broken():
            r = request("GET", srv.read_port, "/healthz")
            return r if r.body.get("integrity") == "failed" else None
        r = wait_until(broken, 20, what="integrity failure")
        self.assertEqual(r.body["integrity_failed_at"], 4, r)
        self.assertIn("hash column", r.body["integrity_reason"])
        self.assertEqual(srv.stop(), 0)


class ScrubProgress(E2ETestCase):
    """On an untouched store the scrub completes passes and says so."""

    def test_scrub_passes(self):
        dep = new_deployment(self)
        srv = dep.start()
        register_n(dep, "s", 20)

        def passes():
            m = request("GET", srv.read_port, "/metrics")
            s = parse_metrics(m.raw.decode())
            v = metric_value(s, "signet_scrub_passes_total")
            return s if v and v >= 2 else None
        samples = wait_until(passes, 30, interval=0.5, what="two scrub passes")
        self.assertGreaterEqual(metric_value(samples, "signet_scrub_verified_events_total"), 20)
        self.assertEqual(metric_value(samples, "signet_integrity_ok"), 1.0)
        h = request("GET", srv.read_port, "/healthz")
        self.assertStatus(h, 200)
        self.assertEqual(h.body.get("integrity"), "ok", h)
        self.assertEqual(srv.stop(), 0)
        # A clean stop leaves the anchor at the head: an immediate restart
        # passes its checks.
        srv = dep.start()
        self.assertEqual(srv.stop(), 0)


if __name__ == "__main__":
    unittest.main()
