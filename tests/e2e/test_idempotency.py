#!/usr/bin/python3
"""Stored Idempotency-Key answers are checked against the log before they are
replayed (issue 14, defect 23; docs/behaviour.md "Idempotency-Key answers are
signed"). Each answer is stored with the position and hash of the event it
answers for and a signature by the events key; a row rewritten while signetd
is stopped must not be replayed: the retry answers 500 (internal, the detail saying why),
nothing is appended, and an integrity error is logged. Untouched rows still
replay byte for byte.

Rows are rewritten the way an attacker with the data directory would: stop
signetd, edit events.db with sqlite3, start again."""

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

    def row(self, key):
        c = sqlite3.connect(self.db_path, timeout=30)
        try:
            return c.execute("SELECT request_sha256, status, body, position, event_hash, key_id, sig "
                             "FROM idempotency WHERE key = ?", (key,)).fetchone()
        finally:
            c.close()

    def test_forged_rows_are_not_replayed(self):
        first = {}
        for key, dev in (("f-good", "idem-good"), ("f-whole", "idem-whole"),
                         ("f-body", "idem-body"), ("f-point", "idem-point"),
                         ("f-unsigned", "idem-unsigned")):
            r = self.post(dev, key)
            self.assertStatus(r, 201)
            first[key] = r
            self.assertEqual(self.post(dev, key).body, r.body, "a fresh key does not replay")
        # What a row holds: the event it answers for, and a signature.
        _, status, body, pos, ev_hash, key_id, sig = self.row("f-good")
        self.assertEqual((status, pos), (201, first["f-good"].body["position"]))
        self.assertRegex(ev_hash, "^[0-9a-f]{64}$")
        self.assertRegex(key_id, "^[0-9a-f]{64}$")
        self.assertTrue(sig)
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
        self.edit("UPDATE idempotency SET sig = NULL, key_id = NULL, event_hash = NULL, "
                  "body = '{\"device_id\":\"FORGED\",\"position\":1}' WHERE key = 'f-unsigned'")
        type(self).srv = self.dep.start()

        for key, dev in (("f-whole", "idem-whole"), ("f-body", "idem-body"),
                         ("f-point", "idem-point"), ("f-unsigned", "idem-unsigned")):
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
        self.assertNotIn("FORGED", log)

        # signetd goes on writing: a new key works.
        self.assertStatus(self.post("idem-new", "f-new"), 201)
        self.assertEqual(self.head(), h0 + 1)


if __name__ == "__main__":
    unittest.main()
