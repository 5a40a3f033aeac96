#!/usr/bin/python3
"""The role matrix of API.md and docs/behaviour.md, on both listeners.

For every endpoint: no token -> 401 problem with WWW-Authenticate,
unknown token -> 401, every principal whose role is not allowed -> 403
problem, allowed principals get through. admin passes every role check but
the device-bound POST /v1/devices/{id}/reports; the device role is bound to
its own device id. Public endpoints answer without a token on both
listeners. Denied requests append nothing."""

import itertools
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from client import get_keys, head_of, request  # noqa: E402
from deploy import PRINCIPALS, E2ETestCase  # noqa: E402
from verify import sha256_hex, verify_snapshot  # noqa: E402

ALL = set(PRINCIPALS)
FW = "sha256:" + "ab" * 32
_seq = itertools.count(1)


def device_body():
    return {"device_id": "role-dev-%d" % next(_seq), "hardware": "hw-a"}


def firmware_path():
    return "/v1/firmware?name=fw-roles&version=1.0.%d&hardware=hw-a&security_version=1" % next(_seq)


# (name, listener, method, path (str or callable), body (None, value or callable), headers, allowed)
ENDPOINTS = [
    ("register device", "w", "POST", "/v1/devices", device_body, None, {"ops", "adm"}),
    ("upload firmware", "w", "POST", firmware_path, b"\x7fELF firmware image",
     {"Content-Type": "application/octet-stream"}, {"ci", "adm"}),
    ("create rollout", "w", "POST", "/v1/rollouts",
     {"firmware_id": FW, "hardware": "hw-a", "stages": [5, 25, 100],
      "failure_threshold": 0, "min_reports": 20}, None, {"ops", "adm"}),
] + [
    ("rollout " + a, "w", "POST", "/v1/rollouts/ro-1/" + a, None, None, {"ops", "adm"})
    for a in ("advance", "pause", "resume", "rollback")
] + [
    ("device report", "w", "POST", "/v1/devices/dev-0001/reports",
     {"firmware_id": FW, "status": "installed"}, None, {"dev-0001"}),
    ("request command", "w", "POST", "/v1/commands",
     {"device_id": "dev-0001", "action": "reboot", "params": {}, "ttl_seconds": 600}, None,
     {"ops", "adm"}),
    ("approve command", "w", "POST", "/v1/commands/cmd-1/approve", {"comment": "ok"}, None,
     {"alice", "bob", "adm"}),
    ("reject command", "w", "POST", "/v1/commands/cmd-1/reject", {"comment": "no"}, None,
     {"alice", "bob", "adm"}),
    ("event log", "r", "GET", "/v1/events?after=0&limit=10", None, None, {"audit", "adm"}),
    ("devices snapshot", "r", "GET", "/v1/snapshots/devices", None, None, {"audit", "ops", "adm"}),
    ("firmware snapshot", "r", "GET", "/v1/snapshots/firmware", None, None, {"audit", "ops", "adm"}),
    ("rollouts snapshot", "r", "GET", "/v1/snapshots/rollouts", None, None, {"audit", "ops", "adm"}),
    ("commands snapshot", "r", "GET", "/v1/snapshots/commands", None, None, {"audit", "ops", "adm"}),
    ("firmware manifest", "r", "GET", "/v1/firmware/" + FW, None, None, ALL),
    ("firmware image", "r", "GET", "/v1/firmware/%s/image" % FW, None, None, ALL),
    ("device update", "r", "GET", "/v1/devices/dev-0001/update", None, None, {"dev-0001", "ops", "adm"}),
    ("device commands", "r", "GET", "/v1/devices/dev-0001/commands?after=0", None, None,
     {"dev-0001", "ops", "adm"}),
]

# A device principal on another device's endpoints, and the device-only report.
DEVICE_BOUND_DENIED = [
    ("dev-0001", "w", "POST", "/v1/devices/dev-0002/reports", {"firmware_id": FW, "status": "installed"}),
    ("dev-0001", "r", "GET", "/v1/devices/dev-0002/update", None),
    ("dev-0001", "r", "GET", "/v1/devices/dev-0002/commands?after=0", None),
    ("adm", "w", "POST", "/v1/devices/dev-0001/reports", {"firmware_id": FW, "status": "installed"}),
    ("ops", "w", "POST", "/v1/devices/dev-0001/reports", {"firmware_id": FW, "status": "failed"}),
]

PUBLIC = ["/healthz", "/metrics", "/v1/keys"]


class RoleMatrix(E2ETestCase):
    @classmethod
    def setUpClass(cls):
        cls.start_deployment()

    def port(self, listener):
        return self.dep.write_port if listener == "w" else self.dep.read_port

    def send(self, ep, token=None, auth_header=None):
        name, listener, method, path, body, headers, _ = ep
        path = path() if callable(path) else path
        body = body() if callable(body) else body
        hdrs = dict(headers or {})
        if auth_header is not None:
            hdrs["Authorization"] = auth_header
        if method == "POST" and body is None:
            hdrs.setdefault("Content-Length", "0")
        return request(method, self.port(listener), path, token=token, body=body, headers=hdrs)

    def head(self):
        return head_of(self.dep.read_port, self.audit)

    def test_no_token_is_401(self):
        h0 = self.head()
        for ep in ENDPOINTS:
            with self.subTest(endpoint=ep[0]):
                self.assertProblem(self.send(ep), 401, "unauthorized")
        self.assertEqual(self.head(), h0, "a request without token appended events")

    def test_unknown_or_malformed_token_is_401(self):
        h0 = self.head()
        # A token whose hash is not configured; a configured token's hash used as
        # the token; other schemes; an empty bearer token.
        bad = ["Bearer tok_unknown_" + "x" * 20,
               "Bearer " + sha256_hex(self.dep.token("adm")),
               "Bearer " + self.dep.token("adm") + "x",
               "Bearer " + self.dep.token("adm")[:-1],
               "Basic " + self.dep.token("adm"),
               "Bearer ",
               self.dep.token("adm")]
        for ep in ENDPOINTS:
            for auth in bad:
                with self.subTest(endpoint=ep[0], auth=auth[:12]):
                    r = self.send(ep, auth_header=auth)
                    self.assertProblem(r, 401, "unauthorized")
                    tok = auth.split()[-1] if auth.strip() else auth
                    if len(tok) > 8:
                        self.assertNotIn(tok.encode(), r.raw, "the token is echoed in the answer")
        self.assertEqual(self.head(), h0, "a request with a bad token appended events")

    def test_wrong_role_is_403(self):
        h0 = self.head()
        for ep in ENDPOINTS:
            for who in sorted(ALL - ep[6]):
                with self.subTest(endpoint=ep[0], principal=who):
                    r = self.send(ep, token=self.dep.token(who))
                    self.assertProblem(r, 403, "forbidden")
                    self.assertNotIn(self.dep.token(who).encode(), r.raw)
        self.assertEqual(self.head(), h0, "a forbidden request appended events")

    def test_device_binding_is_403(self):
        h0 = self.head()
        for who, listener, method, path, body in DEVICE_BOUND_DENIED:
            with self.subTest(principal=who, path=path):
                r = request(method, self.port(listener), path, token=self.dep.token(who), body=body)
                self.assertProblem(r, 403, "forbidden")
        self.assertEqual(self.head(), h0)

    def test_allowed_roles_get_through(self):
        """Allowed principals pass authentication and authorization: the answer
        is the endpoint's own (success or a 4xx of the resource), never
        401/403/5xx."""
        for ep in ENDPOINTS:
            for who in sorted(ep[6]):
                with self.subTest(endpoint=ep[0], principal=who):
                    r = self.send(ep, token=self.dep.token(who))
                    self.assertNotIn(r.status, (401, 403), r)
                    self.assertLess(r.status, 500, r)

    def test_implemented_endpoints_succeed_for_allowed_roles(self):
        for who in ("ops", "adm"):
            with self.subTest(principal=who):
                body = device_body()
                r = request("POST", self.dep.write_port, "/v1/devices", token=self.dep.token(who), body=body)
                self.assertStatus(r, 201)
                self.assertEqual(r.body["device_id"], body["device_id"])
        for who in ("audit", "adm"):
            r = request("GET", self.dep.read_port, "/v1/events", token=self.dep.token(who))
            self.assertStatus(r, 200)
            self.assertIsInstance(r.body["events"], list)
        for who in ("audit", "ops", "adm"):
            r = request("GET", self.dep.read_port, "/v1/snapshots/devices", token=self.dep.token(who))
            self.assertStatus(r, 200)
            verify_snapshot(r.body, get_keys(self.dep.read_port))

    def test_public_endpoints_without_token_on_both_listeners(self):
        for port, listener in ((self.dep.write_port, "write"), (self.dep.read_port, "read")):
            for path in PUBLIC:
                with self.subTest(listener=listener, path=path):
                    r = request("GET", port, path)
                    self.assertStatus(r, 200)
            r = request("GET", port, "/healthz")
            self.assertEqual(r.body.get("status"), "ok", r)
            r = request("GET", port, "/v1/keys")
            self.assertEqual({k["purpose"] for k in r.body["keys"]}, {"events", "devices", "snapshots"})
            r = request("GET", port, "/metrics")
            self.assertIn(b"signet_", r.raw)

    def test_unknown_paths_and_methods(self):
        """Unknown routes are 404 (or 405 for a known path) problems, on both
        listeners; write routes are not served by the read listener."""
        tok = self.dep.token("adm")
        cases = [
            (self.dep.write_port, "GET", "/v1/nothing-here"),
            (self.dep.read_port, "GET", "/v1/nothing-here"),
            (self.dep.read_port, "POST", "/v1/devices"),
            (self.dep.write_port, "GET", "/v1/events"),
            (self.dep.write_port, "DELETE", "/v1/devices"),
            (self.dep.read_port, "DELETE", "/v1/events"),
        ]
        for port, method, path in cases:
            with self.subTest(method=method, path=path, port=port):
                r = request(method, port, path, token=tok,
                            body={"device_id": "x-1", "hardware": "h"} if method == "POST" else None)
                self.assertIn(r.status, (404, 405), r)
                self.assertProblem(r, r.status)


if __name__ == "__main__":
    unittest.main()
