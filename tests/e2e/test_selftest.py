#!/usr/bin/python3
"""The suite's own verifiers must be able to fail.

No signetd here: a log and a snapshot are signed locally, following the
contract (DESIGN.md "Events"), and every verifier of verify.py must accept
them and refuse each tampered copy. The same tamper functions are used
against real logs in test_tamper.py and test_devices.py."""

import base64
import hashlib
import os
import sys
import unittest
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from client import assert_problem  # noqa: E402
from tamper import (  # noqa: E402
    deep_copy, remove_event, reorder, set_key_id, swap_sigs, tamper_data_byte)
from verify import (  # noqa: E402
    ZERO_HASH, canonical, ChainError, key_id_for, key_id_of_pem, keys_by_purpose,
    make_foreign_keys_doc, metric_value, parse_metrics, to_high_s, to_low_s, verify_chain, verify_snapshot)

from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402


def make_keys():
    priv = {p: ec.generate_private_key(ec.SECP256R1()) for p in ("events", "devices", "snapshots")}
    doc = {"keys": []}
    for p, k in priv.items():
        pem = k.public_key().public_bytes(serialization.Encoding.PEM,
                                          serialization.PublicFormat.SubjectPublicKeyInfo).decode()
        doc["keys"].append({"key_id": key_id_of_pem(pem), "purpose": p, "alg": "ES256",
                            "public_key_pem": pem, "status": "active"})
    return priv, doc


def sign(priv, data, high=False):
    der = priv.sign(data, ec.ECDSA(hashes.SHA256()))
    return base64.b64encode(to_high_s(der) if high else to_low_s(der)).decode()


def make_log(priv, doc, n):
    kid = key_id_for(doc, "events")
    prev = ZERO_HASH
    evs = []
    for pos in range(1, n + 1):
        ev = {"position": pos, "id": str(uuid.uuid4()), "type": "DeviceRegistered",
              "time": "2025-01-01T00:00:00.000Z", "actor": "ops", "command_id": str(uuid.uuid4()),
              "data": {"device_id": "d%d" % pos, "hardware": "hw-\u00e9"}, "prev": prev}
        data = canonical(ev)
        ev["hash"] = hashlib.sha256(data).hexdigest()
        ev["key_id"] = kid
        ev["sig"] = sign(priv["events"], data)
        prev = ev["hash"]
        evs.append(ev)
    return evs


class VerifierSelfTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.priv, cls.keys = make_keys()
        cls.log = make_log(cls.priv, cls.keys, 6)

    def refused(self, events, keys=None, positions=None):
        with self.assertRaises(ChainError) as cm:
            verify_chain(events, keys or self.keys)
        if positions is not None:
            self.assertIn(cm.exception.position, positions, str(cm.exception))

    def test_canonical_form(self):
        self.assertEqual(canonical({"b": 1, "a": {"d": [1, "\u00e9\n"], "c": None}, "hash": "x"}),
                         '{"a":{"c":null,"d":[1,"\u00e9\\n"]},"b":1}'.encode())
        with self.assertRaises(ChainError):
            canonical({"a": 1.5})

    def test_good_log(self):
        self.assertEqual(verify_chain(self.log, self.keys), (6, self.log[-1]["hash"]))

    def test_tampered_logs_refused(self):
        self.refused(tamper_data_byte(self.log, 3), positions={3})
        self.refused(swap_sigs(self.log, 2, 5), positions={2})
        self.refused(remove_event(self.log, 4), positions={4})
        self.refused(remove_event(self.log, 1), positions={1})
        self.refused(reorder(self.log, 3), positions={3})
        self.refused(set_key_id(self.log, 2, key_id_for(self.keys, "devices")), positions={2})
        self.refused(self.log, keys=make_foreign_keys_doc(), positions={1})
        evs = deep_copy(self.log)
        evs[2]["prev"] = ZERO_HASH
        self.refused(evs, positions={3})
        evs = deep_copy(self.log)
        evs[1]["sig"] = "not base64!"
        self.refused(evs, positions={2})
        evs = deep_copy(self.log)
        del evs[4]["command_id"]
        self.refused(evs, positions={5})
        # The high-S twin of a good signature is valid ECDSA, and refused.
        evs = deep_copy(self.log)
        evs[3]["sig"] = base64.b64encode(to_high_s(base64.b64decode(evs[3]["sig"]))).decode()
        self.refused(evs, positions={4})

    def test_snapshot(self):
        doc = {"name": "devices", "as_of": {"position": 6, "hash": self.log[-1]["hash"]},
               "state": {"count": 1, "devices": [{"device_id": "d1", "hardware": "h", "position": 1}]}}
        doc["key_id"] = key_id_for(self.keys, "snapshots")
        doc["sig"] = sign(self.priv["snapshots"], canonical(doc, without=("key_id", "sig")))
        self.assertTrue(verify_snapshot(doc, self.keys))
        bad = deep_copy(doc)
        bad["state"]["devices"][0]["hardware"] = "g"
        self.assertRaises(AssertionError, verify_snapshot, bad, self.keys)
        bad = deep_copy(doc)
        bad["as_of"]["position"] = 5
        self.assertRaises(AssertionError, verify_snapshot, bad, self.keys)
        bad = deep_copy(doc)
        bad["key_id"] = key_id_for(self.keys, "events")
        self.assertRaises(AssertionError, verify_snapshot, bad, self.keys)

    def test_keys_doc_with_wrong_key_id_refused(self):
        keys = deep_copy(self.keys)
        keys["keys"][0]["key_id"] = "0" * 64
        self.assertRaises(AssertionError, keys_by_purpose, keys, keys["keys"][0]["purpose"])

    def test_problem_checker(self):
        import http.client
        import email.parser

        def resp(status, headers, body):
            msg = email.parser.Parser(_class=http.client.HTTPMessage).parsestr(
                "".join("%s: %s\r\n" % kv for kv in headers.items()) + "\r\n")
            return (status, msg, body)
        good = resp(401, {"Content-Type": "application/problem+json", "WWW-Authenticate": "Bearer"},
                    {"type": "urn:signet:problem:unauthorized", "title": "t", "status": 401, "detail": "d"})
        assert_problem(good, 401)
        self.assertRaises(AssertionError, assert_problem, good, 403)
        no_www = resp(401, {"Content-Type": "application/problem+json"}, good[2])
        self.assertRaises(AssertionError, assert_problem, no_www, 401)
        json_ct = resp(401, {"Content-Type": "application/json", "WWW-Authenticate": "Bearer"}, good[2])
        self.assertRaises(AssertionError, assert_problem, json_ct, 401)
        no_detail = resp(401, good[1], {k: v for k, v in good[2].items() if k != "detail"})
        self.assertRaises(AssertionError, assert_problem, no_detail, 401)

    def test_metrics_parser(self):
        s = parse_metrics('# HELP a x\n# TYPE a counter\na 1\nb{listener="read",code="200"} 3\n')
        self.assertEqual(metric_value(s, "b", listener="read"), 3.0)
        self.assertRaises(AssertionError, parse_metrics, "a b c\n")


if __name__ == "__main__":
    unittest.main()
