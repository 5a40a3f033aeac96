#!/usr/bin/python3
"""Strict HTTP (issue 5, "HTTP leniency"; docs/behaviour.md "HTTP").

Requests that two HTTP parsers could read differently are refused with 400
problem+json before anything is decided: two Content-Length headers (equal
or not), Content-Length with Transfer-Encoding, a transfer coding other than
chunked, whitespace before a header's colon, HTTP/1.1 without Host, two Host
or two Authorization headers. Each such request gets exactly one response
and the event log does not move. Whitespace around a header value is not
part of it (a trailing space after the bearer token authenticates). A 405
names in Allow the methods of that path. The Idempotency-Key request digest
is over the raw request target, so ?a=1&b=2 and ?a=1%26b%3D2 are different
requests."""

import json
import os
import re
import socket
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from client import exchange, head_of, make_response, parse_headers, request  # noqa: E402
from deploy import E2ETestCase  # noqa: E402
from verify import metric_value, parse_metrics  # noqa: E402

STATUS_LINE = re.compile(rb"(?:^|\r\n)HTTP/1\.[01] (\d{3}) ")


def parse_one(raw):
    """(status, headers, body) of a raw answer holding exactly one response."""
    statuses = STATUS_LINE.findall(raw)
    if len(statuses) != 1:
        raise AssertionError("want exactly one status line, got %d: %r" % (len(statuses), raw[:600]))
    head, _, rest = raw.partition(b"\r\n\r\n")
    msg = parse_headers(head.split(b"\r\n")[1:])
    n = int(msg.get("Content-Length", len(rest)))
    if len(rest) != n:
        raise AssertionError("body of %d bytes after the response, Content-Length %d: %r"
                             % (len(rest), n, raw[:600]))
    return make_response(int(statuses[0]), msg, rest, 0.0)


class StrictHTTP(E2ETestCase):
    @classmethod
    def setUpClass(cls):
        cls.start_deployment()

    def fresh(self):
        return self.unique("strict")

    def head(self):
        return head_of(self.rp, self.audit)

    def post_bytes(self, headers, body, version="HTTP/1.1", target="/v1/devices"):
        lines = ["POST %s %s" % (target, version)] + headers
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body

    def device_body(self):
        return json.dumps({"device_id": self.fresh(), "hardware": "hw-a"}).encode()

    def refused(self, data, status=400, port=None, msg=""):
        """data gets exactly one `status` problem+json answer and the log
        does not move."""
        h0 = self.head()
        r = parse_one(exchange(port or self.wp, data))
        self.assertProblem(r, status, msg=msg)
        self.assertEqual(self.head(), h0, "%s: the log moved" % msg)
        return r

    # ---- framing ----

    def test_duplicate_content_length(self):
        body = self.device_body()
        auth = "Authorization: Bearer " + self.ops
        base = ["Host: x", auth, "Content-Type: application/json", "Connection: close"]
        same = base + ["Content-Length: %d" % len(body)] * 2
        self.refused(self.post_bytes(same, body), msg="two equal Content-Length")
        conflicting = base + ["Content-Length: %d" % len(body), "Content-Length: 5"]
        self.refused(self.post_bytes(conflicting, body), msg="two different Content-Length")
        conflicting2 = base + ["Content-Length: 5", "Content-Length: %d" % len(body)]
        self.refused(self.post_bytes(conflicting2, body), msg="two different Content-Length (short first)")

    def test_content_length_with_transfer_encoding(self):
        body = self.device_body()
        chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
        hdrs = ["Host: x", "Authorization: Bearer " + self.ops, "Content-Type: application/json",
                "Connection: close", "Content-Length: %d" % len(chunked), "Transfer-Encoding: chunked"]
        self.refused(self.post_bytes(hdrs, chunked), msg="Content-Length and Transfer-Encoding")
        hdrs = ["Host: x", "Authorization: Bearer " + self.ops, "Content-Type: application/json",
                "Connection: close", "Transfer-Encoding: gzip, chunked"]
        self.refused(self.post_bytes(hdrs, chunked), msg="Transfer-Encoding other than chunked")
        # chunked alone is fine
        hdrs = ["Host: x", "Authorization: Bearer " + self.ops, "Content-Type: application/json",
                "Connection: close", "Transfer-Encoding: chunked"]
        r = parse_one(exchange(self.wp, self.post_bytes(hdrs, chunked)))
        self.assertStatus(r, 201, "chunked body")

    def test_whitespace_before_colon(self):
        """"Content-Length : N" is not Content-Length to libmicrohttpd: the
        body would be read as a second request. It is refused and the
        connection closed, so the smuggled request never runs."""
        body = self.device_body()
        smuggled = self.post_bytes(["Host: x", "Authorization: Bearer " + self.ops,
                                    "Content-Type: application/json",
                                    "Content-Length: %d" % len(body)], body)
        hdrs = ["Host: x", "Authorization: Bearer " + self.ops, "Content-Type: application/json",
                "Content-Length : %d" % len(smuggled)]
        r = self.refused(self.post_bytes(hdrs, smuggled), msg="space before the colon of Content-Length")
        self.assertIn("colon", r.body["detail"])

    # ---- Host and Authorization ----

    def test_http11_without_host(self):
        r = self.refused(b"GET /v1/keys HTTP/1.1\r\nConnection: close\r\n\r\n", port=self.rp,
                         msg="HTTP/1.1 GET without Host")
        self.assertIn("Host", r.body["detail"])
        body = self.device_body()
        hdrs = ["Authorization: Bearer " + self.ops, "Content-Type: application/json",
                "Connection: close", "Content-Length: %d" % len(body)]
        self.refused(self.post_bytes(hdrs, body), msg="HTTP/1.1 POST without Host")
        # HTTP/1.0 has no Host requirement
        r = parse_one(exchange(self.rp, b"GET /v1/keys HTTP/1.0\r\n\r\n"))
        self.assertStatus(r, 200, "HTTP/1.0 without Host")
        self.refused(b"GET /v1/keys HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n",
                     port=self.rp, msg="two Host headers")

    def test_two_authorization_headers(self):
        body = self.device_body()
        for first, second in ((self.ops, "nope"), ("nope", self.ops), (self.ops, self.ops)):
            hdrs = ["Host: x", "Authorization: Bearer " + first, "Authorization: Bearer " + second,
                    "Content-Type: application/json", "Connection: close",
                    "Content-Length: %d" % len(body)]
            self.refused(self.post_bytes(hdrs, body), msg="two Authorization headers")

    def test_whitespace_around_values_is_trimmed(self):
        h0 = self.head()
        for pad in (" ", "\t", "  \t "):
            body = self.device_body()
            hdrs = ["Host: x", "Authorization:  Bearer " + self.ops + pad,
                    "Content-Type: application/json" + pad, "Connection: close",
                    "Content-Length: %d" % len(body)]
            r = parse_one(exchange(self.wp, self.post_bytes(hdrs, body)))
            self.assertStatus(r, 201, "token followed by %r" % pad)
            h0 += 1
        self.assertEqual(self.head(), h0)

    # ---- one response per request ----

    def test_absurd_content_length_one_response(self):
        """A Content-Length libmicrohttpd cannot read (too large for 64 bits,
        not a number, or followed by a space, which libmicrohttpd 0.9.75
        does not accept) is refused with one answer, problem+json, and the
        connection is closed."""
        h0 = self.head()
        for value, status in (("99999999999999999999999", 413), ("18446744073709551616", 413),
                              ("abc", 400), ("-1", 400), ("5, 5", 400), ("32 ", 400)):
            hdrs = ["Host: x", "Authorization: Bearer " + self.ops, "Content-Type: application/json",
                    "Content-Length: " + value]
            raw = exchange(self.wp, self.post_bytes(hdrs, b'{"device_id":"x","hardware":"y"}'))
            r = parse_one(raw)
            self.assertProblem(r, status, msg="Content-Length: %s" % value)
        self.assertEqual(self.head(), h0)

    def parser_refusals(self):
        m = request("GET", self.rp, "/metrics")
        return metric_value(parse_metrics(m.raw.decode()), "signet_http_parser_refusals_total")

    def test_parser_refusal_is_ours_and_counted(self):
        """The answer to a head libmicrohttpd's parser refused is signet's
        (issue 14, defect 8): found through the library's API, never by
        reading its log text, so a library whose messages read differently
        does not silently fall back to the library's doubled HTML answer.
        Each refusal is counted in /metrics; it works on the second request
        of a kept-alive connection and while other connections of the same
        listener are still sending their heads."""
        slow = [socket.create_connection(("127.0.0.1", self.wp), timeout=5) for _ in range(6)]
        try:
            for s in slow:
                s.sendall(b"POST /v1/devices HTTP/1.1\r\nHost: x\r\n")
            n0 = self.parser_refusals()
            self.assertIsNotNone(n0, "no signet_http_parser_refusals_total in /metrics")
            for value, status in (("abc", 400), ("99999999999999999999999", 413)):
                hdrs = ["Host: x", "Authorization: Bearer " + self.ops,
                        "Content-Type: application/json", "Content-Length: " + value]
                r = parse_one(exchange(self.wp, self.post_bytes(hdrs, b"{}")))
                self.assertProblem(r, status, msg="Content-Length: " + value)
                self.assertIn("Content-Length", r.body["detail"])
            # the second request of a kept-alive connection
            raw = exchange(self.rp, b"GET /v1/keys HTTP/1.1\r\nHost: x\r\n\r\n"
                                    b"GET /v1/keys HTTP/1.1\r\nHost: x\r\nContent-Length: x1\r\n\r\n")
            head, _, rest = raw.partition(b"\r\n\r\n")
            self.assertTrue(head.startswith(b"HTTP/1.1 200 "), raw[:300])
            n = int(parse_headers(head.split(b"\r\n")[1:])["Content-Length"])
            r = parse_one(rest[n:])
            self.assertProblem(r, 400, msg="second request on a kept-alive connection")
            self.assertEqual(self.parser_refusals(), n0 + 3)
        finally:
            for s in slow:
                s.close()

    def test_keepalive_after_refusal_is_closed(self):
        """After a refused, mis-framed request the connection is closed: the
        bytes after it are never read as a second request."""
        body = self.device_body()
        smuggled = self.post_bytes(["Host: x", "Authorization: Bearer " + self.ops,
                                    "Content-Type: application/json",
                                    "Content-Length: %d" % len(body)], body)
        hdrs = ["Host: x", "Authorization: Bearer " + self.ops, "Content-Type: application/json",
                "Content-Length: 0", "Content-Length: %d" % len(smuggled)]
        h0 = self.head()
        raw = exchange(self.wp, self.post_bytes(hdrs, smuggled))
        r = parse_one(raw)
        self.assertProblem(r, 400)
        self.assertEqual(self.head(), h0, "the smuggled request was executed")

    # ---- Allow ----

    def test_allow_names_the_methods_of_the_path(self):
        cases = [
            (self.wp, "GET", "/v1/devices", "POST"),
            (self.wp, "DELETE", "/v1/devices", "POST"),
            (self.wp, "POST", "/v1/keys", "GET"),
            (self.rp, "POST", "/v1/events", "GET"),
            (self.rp, "PUT", "/v1/snapshots/devices", "GET"),
            (self.wp, "GET", "/v1/rollouts/r1/pause", "POST"),
        ]
        for port, method, path, allow in cases:
            r = request(method, port, path, token=self.ops)
            self.assertProblem(r, 405, msg="%s %s" % (method, path))
            got = sorted(m.strip() for m in (r.headers.get("Allow") or "").split(","))
            self.assertEqual(got, sorted(allow.split(", ")), "Allow of %s %s" % (method, path))

    # ---- the Idempotency-Key digest ----

    def test_digest_is_over_the_raw_query(self):
        key = "strict-idem-" + self.fresh()
        body = {"device_id": self.fresh(), "hardware": "hw-a"}
        hdrs = {"Idempotency-Key": key}
        r1 = request("POST", self.wp, "/v1/devices?a=1&b=2", token=self.ops, body=body, headers=hdrs)
        self.assertStatus(r1, 201)
        h1 = self.head()
        again = request("POST", self.wp, "/v1/devices?a=1&b=2", token=self.ops, body=body, headers=hdrs)
        self.assertStatus(again, 201, "the same request again is a replay")
        self.assertEqual(again.body, r1.body)
        r2 = request("POST", self.wp, "/v1/devices?a=1%26b%3D2", token=self.ops, body=body, headers=hdrs)
        self.assertProblem(r2, 422, msg="?a=1%26b%3D2 is another request than ?a=1&b=2")
        for other in ("/v1/devices", "/v1/devices?", "/v1/devices?b=2&a=1", "/v1/devices?a=1&b=2&"):
            r = request("POST", self.wp, other, token=self.ops, body=body, headers=hdrs)
            self.assertProblem(r, 422, msg="%s is another request than ?a=1&b=2" % other)
        self.assertEqual(self.head(), h1)


if __name__ == "__main__":
    unittest.main(verbosity=2)
