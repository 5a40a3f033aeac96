#!/usr/bin/python3
"""Idempotency-Key retention (docs/behaviour.md "Idempotency-Key retention"):
records older than `idempotency_ttl_hours` are no longer honoured (a request
with that key is a new request) and are deleted in the background, in small
chunks, without stalling writes; fresh records still replay; a store made
before records carried their creation time still opens and its records count
as created at that moment.

Records are aged the way an operator or an outside checker would: stop
signetd (or not), edit `created_at` in events.db with sqlite3, start again.
The deployment runs with idempotency_ttl_hours = 2, and records aged by three
hours must expire while records aged by one hour must not, so the configured
TTL (not the default of 24) is the one in force. Aging a record ages its
batch record (the signature over its commit batch's records) with it, as
time would; a batch record no record names any more is pruned too."""

import http.client
import os
import sqlite3
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from client import head_of, in_threads, register, wait_until  # noqa: E402
from deploy import E2ETestCase  # noqa: E402
from tamper import events_db  # noqa: E402

TTL_HOURS = 2
HOUR = 3600
BULK_ROWS = 150000   # synthetic expired records for the volume case
HTTP_KEYS = 300      # real records made over HTTP for the volume case
WRITERS = 4
STALL_BOUND = 5.0    # seconds; a write answered later than this counts as stalled
PRUNE_BOUND = 60.0   # seconds for the volume to be pruned (measured: a few)


def set_ttl(cfg):
    cfg["idempotency_ttl_hours"] = TTL_HOURS


class Retention(E2ETestCase):
    @classmethod
    def setUpClass(cls):
        cls.start_deployment(mutate=set_ttl)
        cls.db_path = events_db(cls.dep)

    def setUp(self):
        """signetd runs (several tests stop it to edit the store)."""
        if not self.srv.running():
            type(self).srv = self.dep.start()

    # ---- helpers ----

    def db(self):
        c = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
        c.execute("PRAGMA busy_timeout = 30000")
        return c

    def sql(self, q, args=()):
        c = self.db()
        try:
            return c.execute(q, args).fetchall()
        finally:
            c.close()

    def post(self, device_id, key, hardware="hw-a", conn=None):
        return register(self.wp, self.ops, device_id, hardware=hardware,
                        headers={"Idempotency-Key": key}, conn=conn)

    def head(self):
        return head_of(self.rp, self.audit)

    def restart(self):
        self.assertEqual(self.srv.stop(), 0, "signetd did not stop cleanly")
        type(self).srv = self.dep.start()

    def age(self, key, seconds):
        c = self.db()
        try:
            n = c.execute("UPDATE idempotency SET created_at = created_at - ? WHERE key = ?",
                          (seconds, key)).rowcount
            c.execute("UPDATE idempotency_batch SET created_at = created_at - ? WHERE id = "
                      "(SELECT batch FROM idempotency WHERE key = ?)", (seconds, key))
        finally:
            c.close()
        self.assertEqual(n, 1, "no idempotency record for key %r" % key)

    def record(self, key):
        rows = self.sql("SELECT request_sha256, created_at FROM idempotency WHERE key = ?", (key,))
        return rows[0] if rows else None

    def orphan_batches(self):
        """Expired batch records no idempotency record names (a fresh one is
        kept: an expired record's batch record expired with it)."""
        return self.sql("SELECT count(*) FROM idempotency_batch b WHERE created_at < ? AND "
                        "NOT EXISTS (SELECT 1 FROM idempotency i WHERE i.batch = b.id)",
                        (int(time.time()) - TTL_HOURS * HOUR,))[0][0]

    def dangling_records(self):
        """Idempotency records naming a batch record that is gone."""
        return self.sql("SELECT count(*) FROM idempotency i WHERE i.batch IS NOT NULL AND "
                        "NOT EXISTS (SELECT 1 FROM idempotency_batch b WHERE b.id = i.batch)")[0][0]

    def expired_count(self):
        return self.sql("SELECT count(*) FROM idempotency WHERE created_at < ?",
                        (int(time.time()) - TTL_HOURS * HOUR,))[0][0]

    # ------------------------------------------------------------------

    def test_aged_keys_are_new_after_restart(self):
        """Stop, age one record past the TTL and one within it, start: the
        aged row is deleted within seconds, its key serves a different
        request (201, not 422) and then replays that new request; the fresh
        and the merely older key still replay and still refuse a different
        request with 422."""
        first = {}
        for key, dev in (("r1-aged", "r1-a"), ("r1-fresh", "r1-b"), ("r1-hour", "r1-c")):
            r = self.post(dev, key)
            self.assertStatus(r, 201)
            first[key] = r
        self.assertEqual(self.post("r1-a", "r1-aged").body, first["r1-aged"].body)

        self.srv.stop()
        now = int(time.time())
        created = self.record("r1-aged")[1]
        self.assertLessEqual(abs(created - now), 120, "created_at is not the creation time")
        self.age("r1-aged", (TTL_HOURS + 1) * HOUR)
        self.age("r1-hour", HOUR)
        type(self).srv = self.dep.start()

        wait_until(lambda: self.record("r1-aged") is None, 10,
                   what="the expired record to be deleted")
        self.assertIsNotNone(self.record("r1-hour"), "a record within the TTL was deleted")
        self.assertIsNotNone(self.record("r1-fresh"))

        # The expired key now belongs to whatever request comes next.
        h0 = self.head()
        r = self.post("r1-d", "r1-aged")
        self.assertStatus(r, 201, "an expired Idempotency-Key reused for another request")
        self.assertEqual(self.head(), h0 + 1)
        again = self.post("r1-d", "r1-aged")
        self.assertEqual((again.status, again.body), (201, r.body), "the new record does not replay")
        self.assertProblem(self.post("r1-a", "r1-aged", hardware="hw-b"), 422)

        # Fresh ones: replay, and 422 for a different request.
        for key, dev in (("r1-fresh", "r1-b"), ("r1-hour", "r1-c")):
            h0 = self.head()
            again = self.post(dev, key)
            self.assertEqual((again.status, again.body), (201, first[key].body),
                             "key %s within the TTL did not replay" % key)
            self.assertProblem(self.post("r1-other-" + key, key), 422)
            self.assertEqual(self.head(), h0, "a replay appended")

    def test_expired_before_pruning(self):
        """An expired record not yet deleted (aged while signetd runs; the
        next pruning pass is a minute away) is not honoured either, and the
        new request's record replaces it in the same commit."""
        r = self.post("r2-a", "r2-key")
        self.assertStatus(r, 201)
        old_sha = self.record("r2-key")[0]
        self.age("r2-key", (TTL_HOURS + 1) * HOUR)
        r2 = self.post("r2-b", "r2-key")
        self.assertStatus(r2, 201, "an expired but unpruned key was honoured or broke the commit")
        self.assertEqual(r2.body["device_id"], "r2-b")
        sha, created = self.record("r2-key")
        self.assertNotEqual(sha, old_sha, "the expired record was not replaced")
        self.assertLessEqual(abs(created - time.time()), 120)
        self.assertEqual(self.post("r2-b", "r2-key").body, r2.body)

    def test_volume_pruned_in_background_without_stalling_writes(self):
        """Hundreds of real records and 150,000 synthetic ones, all expired
        while stopped: after a start the table is back to the fresh records
        within a bounded time, and writes with new keys made meanwhile are all
        answered promptly and all kept."""
        # Real records over HTTP, from a few writers.
        errors = []

        def make(w):
            conn = http.client.HTTPConnection("127.0.0.1", self.wp, timeout=30)
            try:
                for i in range(w, HTTP_KEYS, WRITERS):
                    r = self.post("r3-%04d" % i, "r3-key-%04d" % i, conn=conn)
                    if r.status != 201:
                        errors.append(r)
            finally:
                conn.close()

        in_threads(WRITERS, make, timeout=300)
        self.assertEqual(errors, [])
        self.srv.stop()

        c = self.db()
        try:
            c.execute("BEGIN")
            c.execute("UPDATE idempotency SET created_at = created_at - ? WHERE key LIKE 'r3-key-%'",
                      ((TTL_HOURS + 1) * HOUR,))
            c.execute("UPDATE idempotency_batch SET created_at = created_at - ? WHERE id IN "
                      "(SELECT batch FROM idempotency WHERE key LIKE 'r3-key-%')",
                      ((TTL_HOURS + 1) * HOUR,))
            aged_batches = [r[0] for r in c.execute(
                "SELECT DISTINCT batch FROM idempotency WHERE key LIKE 'r3-key-%'")]
            old = int(time.time()) - (TTL_HOURS + 5) * HOUR
            c.executemany(
                "INSERT INTO idempotency(principal, key, request_sha256, status, body, position, "
                "created_at) VALUES ('ops', ?, ?, 201, ?, 1, ?)",
                (("bulk-%06d" % i, "%064x" % i, '{"device_id":"bulk-%06d","position":1}' % i,
                  old + i % 1000) for i in range(BULK_ROWS)))
            c.execute("COMMIT")
        finally:
            c.close()
        total_before = self.sql("SELECT count(*) FROM idempotency")[0][0]
        expired_before = self.expired_count()
        self.assertGreaterEqual(expired_before, BULK_ROWS + HTTP_KEYS)
        self.assertGreater(len(aged_batches), 0)
        self.assertNotIn(None, aged_batches)

        type(self).srv = self.dep.start()
        t_start = time.monotonic()
        lat, acks, bad = [], {}, []
        done = threading.Event()

        def write_during(w):
            conn = http.client.HTTPConnection("127.0.0.1", self.wp, timeout=60)
            i = 0
            try:
                while not done.is_set() or i < 5:
                    dev = "r3-during-%d-%04d" % (w, i)
                    t0 = time.monotonic()
                    r = self.post(dev, "r3-during-key-%d-%04d" % (w, i), conn=conn)
                    lat.append(time.monotonic() - t0)
                    if r.status == 201:
                        acks[dev] = r.body
                    else:
                        bad.append(r)
                    i += 1
            finally:
                conn.close()

        ws = [threading.Thread(target=write_during, args=(w,)) for w in range(WRITERS)]
        for t in ws:
            t.start()
        try:
            wait_until(lambda: self.expired_count() == 0, PRUNE_BOUND, interval=0.2,
                       what="expired idempotency records to be pruned")
            pruned_after = time.monotonic() - t_start
        finally:
            done.set()
            for t in ws:
                t.join(120)
        self.assertEqual(bad, [], "writes failed while pruning")
        # The batch records of the pruned records went after them; those of
        # the records kept are all there.
        wait_until(lambda: self.orphan_batches() == 0, PRUNE_BOUND, interval=0.2,
                   what="batch records no record names to be pruned")
        self.assertEqual(self.dangling_records(), 0)
        left = self.sql("SELECT count(*) FROM idempotency_batch WHERE id IN (%s)"
                        % ",".join(str(int(b)) for b in aged_batches))[0][0]
        self.assertEqual(left, 0)
        self.assertGreater(len(acks), 0)
        total_after = self.sql("SELECT count(*) FROM idempotency")[0][0]
        self.assertLessEqual(total_after, total_before - expired_before + len(acks))
        # Every write made meanwhile kept its record (nothing fresh was pruned).
        kept = self.sql("SELECT count(*) FROM idempotency WHERE key LIKE 'r3-during-key-%'")[0][0]
        self.assertEqual(kept, len(acks))
        worst = max(lat)
        print("\nretention volume: %d expired records pruned in %.1fs; %d writes meanwhile, "
              "slowest %.3fs, median %.3fs"
              % (expired_before, pruned_after, len(lat), worst, sorted(lat)[len(lat) // 2]),
              file=sys.stderr)
        self.assertLess(worst, STALL_BOUND, "a write stalled while records were pruned")
        # The expired keys are new requests again.
        self.assertStatus(self.post("r3-again-0001", "r3-key-0001"), 201)

    def test_store_of_the_previous_version_opens(self):
        """An idempotency table without created_at (as the previous version
        made it): signetd starts, its records count as created at start, and
        the column and its index exist afterwards; its records, unsigned, are
        not replayed (500) while new ones are."""
        r = self.post("r4-a", "r4-key")
        self.assertStatus(r, 201)
        self.srv.stop()
        c = self.db()
        try:
            c.executescript("""
                BEGIN;
                DROP INDEX IF EXISTS idempotency_created;
                CREATE TABLE idem_old (
                  principal TEXT NOT NULL, key TEXT NOT NULL, request_sha256 TEXT NOT NULL,
                  status INTEGER NOT NULL, body TEXT NOT NULL, position INTEGER NOT NULL,
                  PRIMARY KEY (principal, key));
                INSERT INTO idem_old SELECT principal, key, request_sha256, status, body, position
                  FROM idempotency;
                DROP TABLE idempotency;
                ALTER TABLE idem_old RENAME TO idempotency;
                COMMIT;""")
            cols = [row[1] for row in c.execute("PRAGMA table_info(idempotency)")]
        finally:
            c.close()
        self.assertNotIn("created_at", cols)
        t0 = int(time.time())
        type(self).srv = self.dep.start()
        cols = [row[1] for row in self.sql("PRAGMA table_info(idempotency)")]
        self.assertIn("created_at", cols)
        idx = self.sql("SELECT name FROM sqlite_master WHERE type = 'index' AND "
                       "tbl_name = 'idempotency' AND sql LIKE '%created_at%'")
        self.assertEqual(len(idx), 1, "no index on created_at")
        created = self.record("r4-key")[1]
        self.assertTrue(t0 - 5 <= created <= time.time() + 5, created)
        for col in ("event_hash", "key_id", "sig", "batch"):
            self.assertIn(col, cols)
        # Its records predate signed answers, so nothing tells them from
        # forged ones: they are not replayed (500), and nothing is appended
        # (docs/behaviour.md "Idempotency-Key answers are signed").
        h0 = self.head()
        self.assertProblem(self.post("r4-a", "r4-key"), 500, "internal")
        self.assertProblem(self.post("r4-b", "r4-key"), 500, "internal")
        self.assertEqual(self.head(), h0)
        # And records written now carry their own time, and replay.
        r = self.post("r4-c", "r4-key-new")
        self.assertStatus(r, 201)
        self.assertLessEqual(abs(self.record("r4-key-new")[1] - time.time()), 120)
        self.restart()
        self.assertEqual(self.post("r4-c", "r4-key-new").body, r.body)
        self.assertProblem(self.post("r4-d", "r4-key-new"), 422)


if __name__ == "__main__":
    unittest.main(verbosity=2)
