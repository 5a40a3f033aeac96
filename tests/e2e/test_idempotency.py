#!/usr/bin/python3
"""Stored Idempotency-Key answers are checked against the log before they are
replayed (issue 14, defect 23; docs/behaviour.md "Idempotency-Key answers are
signed"). Each answer is stored with the position and hash of the event it
answers for and names the batch record of its commit batch, which lists the
digest of every answer of the batch under one signature by the events key; a
row or a batch record rewritten while signetd is stopped must not be
replayed: the retry answers 500 (internal, the detail saying why), nothing is
appended, and an integrity error is logged. Untouched rows still replay byte
for byte.

Rows are rewritten the way an attacker with the data directory would: stop
signetd, edit events.db with sqlite3, start again."""

import hashlib
import json
import os
import sqlite3
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from client import head_of, register  # noqa: E402
from deploy import E2ETestCase  # noqa: E402
from tamper import events_db  # noqa: E402


class ForgedIdempotencyRows(E2ETestCase):
    @classmethod
    def setUpClass(cls):
        cls.start_deployment()
        cls.db_path = events_db(cls.dep)

    def post(self, device_id, key):
        return register(self.wp, self.ops, device_id, headers={"Idempotency-Key": key})

    def head(self):
        return head_of(self.rp, self.audit)

    def edit(self, sql, args=()):
        c = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
        try:
            n = c.execute(sql, args).rowcount
        finally:
            c.close()
        self.assertGreaterEqual(n, 1, "the edit changed no row: %s" % sql)

    def query(self, sql, args=()):
        c = sqlite3.connect(self.db_path, timeout=30)
        try:
            return c.execute(sql, args).fetchone()
        finally:
            c.close()

    def row(self, key):
        return self.query("SELECT request_sha256, status, body, position, event_hash, batch "
                          "FROM idempotency WHERE key = ?", (key,))

    def batch(self, key):
        """The batch record the row of key names: (id, digests, key_id, sig)."""
        return self.query("SELECT b.id, b.digests, b.key_id, b.sig FROM idempotency_batch b "
                          "JOIN idempotency i ON i.batch = b.id WHERE i.key = ?", (key,))

    @staticmethod
    def digest(principal, key, request_sha256, status, body, position, event_hash):
        """A row's digest as write/idem.c makes it: SHA-256 of the canonical
        signet-idempotency document (plain ASCII strings and integers, so
        sorted keys without spaces are RFC 8785)."""
        doc = {"type": "signet-idempotency", "principal": principal, "key": key,
               "request_sha256": request_sha256, "status": status,
               "body_sha256": hashlib.sha256(body.encode()).hexdigest(),
               "position": position, "event_hash": event_hash}
        return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":"))
                              .encode()).digest()

    def test_forged_rows_are_not_replayed(self):
        first = {}
        forged = (("f-whole", "idem-whole"), ("f-body", "idem-body"), ("f-point", "idem-point"),
                  ("f-unsigned", "idem-unsigned"), ("f-moved", "idem-moved"),
                  ("f-list", "idem-list"), ("f-sig", "idem-sig"), ("f-gone", "idem-gone"))
        for key, dev in (("f-good", "idem-good"),) + forged:
            r = self.post(dev, key)  # one at a time: each in a batch of its own
            self.assertStatus(r, 201)
            first[key] = r
            self.assertEqual(self.post(dev, key).body, r.body, "a fresh key does not replay")
        # What a row holds: the event it answers for, and its batch record,
        # which lists its digest under one signature.
        req_sha, status, body, pos, ev_hash, batch_id = self.row("f-good")
        self.assertEqual((status, pos), (201, first["f-good"].body["position"]))
        self.assertRegex(ev_hash, "^[0-9a-f]{64}$")
        good_batch, good_digests, key_id, sig = self.batch("f-good")
        self.assertEqual(good_batch, batch_id)
        self.assertRegex(key_id, "^[0-9a-f]{64}$")
        self.assertTrue(sig)
        principal = self.query("SELECT principal FROM idempotency WHERE key = 'f-good'")[0]
        self.assertEqual(good_digests,
                         self.digest(principal, "f-good", req_sha, status, body, pos, ev_hash),
                         "the test does not compute a row's digest as signet does")
        batches = {self.batch(k)[0] for k in first}
        self.assertEqual(len(batches), len(first), "two keys share a batch record")
        good_pos = pos
        h0 = self.head()

        self.assertEqual(self.srv.stop(), 0)
        # The attack of the issue: another answer and another position.
        self.edit("UPDATE idempotency SET body = ?, position = 999 WHERE key = 'f-whole'",
                  ('{"device_id":"FORGED","position":999}',))
        # Only the body, everything it names left as it was.
        self.edit("UPDATE idempotency SET body = replace(body, 'idem-body', 'FORGED') "
                  "WHERE key = 'f-body'")
        # Pointed at another principal's real event, with its hash.
        self.edit("UPDATE idempotency SET position = ?, event_hash = "
                  "(SELECT hash FROM events WHERE position = ?) WHERE key = 'f-point'",
                  (good_pos, good_pos))
        # A row without a signature, as an earlier version or a forger writes it.
        self.edit("UPDATE idempotency SET batch = NULL, event_hash = NULL, "
                  "body = '{\"device_id\":\"FORGED\",\"position\":1}' WHERE key = 'f-unsigned'")
        # Its body forged, and the row moved to another batch (one that verifies).
        self.edit("UPDATE idempotency SET body = replace(body, 'idem-moved', 'FORGED'), batch = ? "
                  "WHERE key = 'f-moved'", (good_batch,))
        # Its body forged, and its digest in the batch's list replaced by the
        # forged row's: the list no longer matches the signature.
        req_sha, status, body, pos, ev_hash, list_batch = self.row("f-list")
        old = self.digest(principal, "f-list", req_sha, status, body, pos, ev_hash)
        body = body.replace("idem-list", "FORGED")
        new = self.digest(principal, "f-list", req_sha, status, body, pos, ev_hash)
        self.assertEqual(self.batch("f-list")[1], old)
        self.edit("UPDATE idempotency SET body = ? WHERE key = 'f-list'", (body,))
        self.edit("UPDATE idempotency_batch SET digests = ? WHERE id = ?", (new, list_batch))
        # The same, the batch record then signed with another batch's signature.
        req_sha, status, body, pos, ev_hash, sig_batch = self.row("f-sig")
        body = body.replace("idem-sig", "FORGED")
        self.edit("UPDATE idempotency SET body = ? WHERE key = 'f-sig'", (body,))
        self.edit("UPDATE idempotency_batch SET digests = ?, key_id = ?, sig = ? WHERE id = ?",
                  (self.digest(principal, "f-sig", req_sha, status, body, pos, ev_hash),
                   key_id, sig, sig_batch))
        # Its batch record deleted.
        self.edit("DELETE FROM idempotency_batch WHERE id = ?", (self.batch("f-gone")[0],))
        type(self).srv = self.dep.start()

        for key, dev in forged:
            r = self.post(dev, key)
            self.assertProblem(r, 500, "internal", "forged row %s" % key)
            self.assertNotIn("FORGED", str(r.body))
            self.assertIn("does not verify", r.body.get("detail", ""))
        self.assertEqual(self.head(), h0, "a refused replay appended")
        # The untouched row still replays, byte for byte.
        again = self.post("idem-good", "f-good")
        self.assertEqual((again.status, again.body), (201, first["f-good"].body))
        self.assertEqual(self.head(), h0)
        log = self.srv.output_text()
        self.assertIn("integrity: the stored answer to Idempotency-Key", log)
        # (A row edited in place no longer matches its digest in the list.)
        for why in ("carries no signature", "does not list it", "is missing",
                    "the signature of its batch record"):
            self.assertIn(why, log)
        self.assertNotIn("FORGED", log)

        # signetd goes on writing: a new key works.
        self.assertStatus(self.post("idem-new", "f-new"), 201)
        self.assertEqual(self.head(), h0 + 1)


if __name__ == "__main__":
    unittest.main()
