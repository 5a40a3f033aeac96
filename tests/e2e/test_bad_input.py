#!/usr/bin/python3
"""Bad input (DESIGN.md "Failure rules", docs/behaviour.md "POST /v1/devices",
"Idempotency-Key", "Events log", "Read side").

Every case gets the right 4xx RFC 9457 problem, appends nothing (the head
of GET /v1/events is unchanged) and the server keeps serving. The JSON limit
is set to 1024 bytes in this configuration."""

import itertools
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from client import (  # noqa: E402
    fetch_all_events, get_keys, head_of, raw_request, register, request, send_tolerant)
from deploy import E2ETestCase  # noqa: E402
from verify import verify_chain  # noqa: E402

LIMIT = 1024
JSON = {"Content-Type": "application/json"}

AFTER = itertools.count(1)

BAD_IDS = ["../x", "a/b", "..", ".", "", "a" * 65, "a b", "\u00e9", "caf\u00e9", "a\u0000b",
           "a\nb", "-abc", ".hidden", "_x", "a\\b", "a%2fb", "a?b", "a#b", "a\tb", " a", "a "]


def cpio_archive(entries):
    """A newc cpio archive of (name bytes, data bytes) entries, as
    test_swu.py builds them but with names that need not be UTF-8."""
    def entry(name, data, mode=0o100644):
        nb = name + b"\0"
        fields = [1, mode, 0, 0, 1, 1700000000, len(data), 0, 0, 0, 0, len(nb), 0]
        out = b"070701" + b"".join(b"%08X" % f for f in fields) + nb
        out += b"\0" * (-len(out) % 4)
        return out + data + b"\0" * (-len(data) % 4)
    out = b"".join(entry(n, d) for n, d in entries) + entry(b"TRAILER!!!", b"", mode=0)
    return out + b"\0" * (-len(out) % 512)


class BadInput(E2ETestCase):
    @classmethod
    def setUpClass(cls):
        cls.start_deployment(max_json_bytes=LIMIT)

    @classmethod
    def tearDownClass(cls):
        """After every bad request of the class, whatever their order, the
        server still registers devices and its log verifies."""
        cls.check_still_serving(cls("test_still_serving"))

    def head(self):
        return head_of(self.rp, self.audit)

    def post_raw(self, body, headers=None, token=None):
        hdrs = dict(JSON)
        hdrs.update(headers or {})
        return request("POST", self.wp, "/v1/devices", token=token or self.ops, body=body, headers=hdrs)

    def check_refused(self, send, status, slug=None, msg=""):
        """send() must answer `status` problem+json, append nothing, and the
        server must still answer /healthz 200 afterwards."""
        h0 = self.head()
        r = send()
        self.assertProblem(r, status, slug, msg)
        self.assertEqual(self.head(), h0, "%s: the log head moved after a refused request" % msg)
        self.assertEqual(request("GET", self.wp, "/healthz").status, 200, msg)
        return r

    def fresh_id(self):
        return self.unique("bi")

    # ---- the body of POST /v1/devices ----

    def test_malformed_json(self):
        for body in [b'{"device_id": "x1", "hardware": "h"', b'{"device_id": "x1", "hardware": }',
                     b"{device_id: 'x1'}", b'{"device_id":"x1","hardware":"h",}', b"{", b"",
                     b"nul", b'{"device_id":"x1" "hardware":"h"}', b'{"device_id":"x1\\q","hardware":"h"}',
                     b'{"device_id":"\xff\xfe","hardware":"h"}', b"\xef\xbb\xbf{}"]:
            with self.subTest(body=body):
                self.check_refused(lambda: self.post_raw(body), 400, "bad-input", repr(body))

    def test_trailing_data(self):
        for body in [b'{"device_id":"t1","hardware":"h"} x', b'{"device_id":"t1","hardware":"h"}{}',
                     b'{"device_id":"t1","hardware":"h"}\n{"device_id":"t2","hardware":"h"}',
                     b'{"device_id":"t1","hardware":"h"}]', b'{"device_id":"t1","hardware":"h"}\x00']:
            with self.subTest(body=body):
                self.check_refused(lambda: self.post_raw(body), 400, "bad-input", repr(body))
        # The devices of the refused requests do not exist afterwards.
        r = self.post_raw({"device_id": "t1", "hardware": "h"})
        self.assertStatus(r, 201)

    def test_not_an_object(self):
        for body in [b"[]", b'[{"device_id":"x2","hardware":"h"}]', b'"x2"', b"1", b"null", b"true"]:
            with self.subTest(body=body):
                self.check_refused(lambda: self.post_raw(body), 400, "bad-input", repr(body))

    def test_wrong_types(self):
        for body in [{"device_id": 1, "hardware": "h"}, {"device_id": "w1", "hardware": None},
                     {"device_id": "w1", "hardware": "h", "group": 5},
                     {"device_id": ["w1"], "hardware": "h"}, {"device_id": "w1", "hardware": {}},
                     {"device_id": True, "hardware": "h"}, {"device_id": "w1", "hardware": "h", "group": None},
                     {"device_id": "w1", "hardware": 1.5}]:
            with self.subTest(body=body):
                self.check_refused(lambda: self.post_raw(body), 400, "bad-input", repr(body))

    def test_missing_fields(self):
        for body in [{}, {"device_id": "m1"}, {"hardware": "h"}, {"group": "g"}, {"device_id": "m1", "group": "g"}]:
            with self.subTest(body=body):
                self.check_refused(lambda: self.post_raw(body), 400, "bad-input", repr(body))

    def test_unknown_fields(self):
        for body in [{"device_id": "u1", "hardware": "h", "colour": "red"},
                     {"device_id": "u1", "hardware": "h", "position": 7},
                     {"device_id": "u1", "hardware": "h", "actor": "adm"},
                     {"device_id": "u1", "hardware": "h", "Device_id": "u2"},
                     {"device_id": "u1", "hardware": "h", "": ""}]:
            with self.subTest(body=body):
                self.check_refused(lambda: self.post_raw(body), 400, "bad-input", repr(body))

    def test_duplicate_keys(self):
        """Two values for one field is ambiguous in a signing service (what is
        signed may not be what was checked): refused like any malformed body."""
        for body in [b'{"device_id":"d1","device_id":"d2","hardware":"h"}',
                     b'{"device_id":"d1","hardware":"h","hardware":"h"}']:
            with self.subTest(body=body):
                self.check_refused(lambda: self.post_raw(body), 400, "bad-input", repr(body))

    def test_invalid_ids(self):
        for field in ("device_id", "hardware", "group"):
            for bad in BAD_IDS:
                body = {"device_id": self.fresh_id(), "hardware": "hw-a", "group": "g1"}
                body[field] = bad
                with self.subTest(field=field, value=bad):
                    self.check_refused(lambda: self.post_raw(body), 400, "bad-input", "%s=%r" % (field, bad))

    def test_valid_id_boundaries(self):
        """The other side of the boundary: 64 characters and every allowed
        character class are accepted."""
        for dev in ["a" * 64, "Z9", "0", "a.b_c:d-e", "A-0." * 16]:
            with self.subTest(device_id=dev):
                r = self.post_raw({"device_id": dev, "hardware": "h" * 64, "group": "g:1.2_3-x"})
                self.assertStatus(r, 201)
                self.assertEqual(r.body["device_id"], dev)

    def send_big(self, chunks, chunked=False):
        r = send_tolerant(self.wp, "POST", "/v1/devices",
                          {"Content-Type": "application/json", "Authorization": "Bearer " + self.ops},
                          chunks, chunked=chunked)
        if r is None:
            self.fail("connection reset without an answer (want 413 problem)")
        return r

    def test_body_too_large(self):
        filler = b" " * (LIMIT * 2)
        big = b'{"device_id":"big-1","hardware":"h"' + filler + b"}"
        self.check_refused(lambda: self.send_big([big]), 413, "too-large", "Content-Length over the limit")
        huge = [b'{"device_id":"big-2","hardware":"'] + [b"h" * 65536] * 16 + [b'"}']
        self.check_refused(lambda: self.send_big(huge), 413, "too-large", "1 MiB body")

    def test_body_too_large_streamed(self):
        """Chunked transfer encoding: no Content-Length, the limit applies as it streams."""
        chunks = [b'{"device_id":"big-3","hardware":"'] + [b"h" * 512] * 8 + [b'"}']
        self.check_refused(lambda: self.send_big(chunks, chunked=True), 413, "too-large",
                           "chunked body over the limit")
        chunks = [b'{"device_id":"big-4","hardware":"'] + [b"h" * 65536] * 16 + [b'"}']
        self.check_refused(lambda: self.send_big(chunks, chunked=True), 413, "too-large",
                           "chunked 1 MiB body")
        # A small chunked body is fine.
        r = self.send_big([b'{"device_id":"chunked-ok",', b'"hardware":"h"}'], chunked=True)
        self.assertStatus(r, 201)

    def test_size_boundary(self):
        """A body of exactly max_json_bytes is accepted; one byte more is 413."""
        def body_of(dev, size):
            b = ('{"device_id":"%s","hardware":"h"}' % dev).encode()
            return b[:-1] + b" " * (size - len(b)) + b"}"
        exact = body_of("edge-1", LIMIT)
        self.assertEqual(len(exact), LIMIT)
        self.assertStatus(self.post_raw(exact), 201)
        over = body_of("edge-2", LIMIT + 1)
        self.check_refused(lambda: self.post_raw(over), 413, "too-large", "limit + 1")

    def test_content_type(self):
        body = b'{"device_id":"ct-1","hardware":"h"}'
        for ctype in ["text/plain", "application/x-www-form-urlencoded", "application/jsonx",
                      "application/octet-stream", "multipart/form-data; boundary=x", "json",
                      "application/problem+json", "text/json"]:
            with self.subTest(ctype=ctype):
                self.check_refused(lambda: self.post_raw(body, headers={"Content-Type": ctype}), 415,
                                   "unsupported-media-type", ctype)
        # No Content-Type at all.
        r = self.check_refused(
            lambda: request("POST", self.wp, "/v1/devices", token=self.ops, body=body), 415,
            "unsupported-media-type", "no Content-Type")
        # Parameters are allowed, the media type is case-insensitive.
        for i, ctype in enumerate(["application/json; charset=utf-8", "Application/JSON",
                                   "application/json;charset=UTF-8"]):
            with self.subTest(ctype=ctype):
                r = self.post_raw({"device_id": "ct-ok-%d" % i, "hardware": "h"}, headers={"Content-Type": ctype})
                self.assertStatus(r, 201)
        del r

    def test_idempotency_key_invalid(self):
        body = {"device_id": "idem-bad", "hardware": "h"}
        for key in ["", "a b", "k" * 256, "tab\there", "caf\u00e9".encode("utf-8"), b"del\x7f"]:
            with self.subTest(key=key):
                self.check_refused(lambda: self.post_raw(body, headers={"Idempotency-Key": key}), 400,
                                   "bad-input", "Idempotency-Key %r" % (key,))
        # Boundaries that are valid: 1 and 255 printable characters.
        r = self.post_raw({"device_id": "idem-1", "hardware": "h"}, headers={"Idempotency-Key": "k"})
        self.assertStatus(r, 201)
        r = self.post_raw({"device_id": "idem-255", "hardware": "h"},
                          headers={"Idempotency-Key": "!~" + "K" * 253})
        self.assertStatus(r, 201)

    # ---- path tricks in URLs ----

    def test_path_tricks_in_urls(self):
        """Names taken from the path that are not valid names are refused
        (400 or 404), never resolved to another resource."""
        tok = self.audit
        for path in ["/v1/snapshots/..", "/v1/snapshots/%2e%2e",
                     "/v1/snapshots/..%2fevents", "/v1/snapshots/a%2fb", "/v1/snapshots/%00",
                     "/v1/snapshots/devices%00", "/v1/snapshots/devices/..", "/v1/snapshots/",
                     "/v1/snapshots/devices%2f..%2f..%2fetc%2fpasswd", "/v1/snapshots/" + "d" * 300,
                     "//v1/snapshots/..", "/v1/snapshots/DEVICES%20"]:
            with self.subTest(path=path):
                raw = ("GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer %s\r\n"
                       "Connection: close\r\n\r\n" % (path, tok)).encode()
                r = raw_request(self.rp, raw)
                self.assertIn(r.status, (400, 404), r)
                self.assertProblem(r, r.status, msg=path)
        self.assertEqual(request("GET", self.rp, "/healthz").status, 200)

    def test_nul_in_url_path(self):
        """A %00 in the path must not cut the path short: /v1/devices%00junk
        is not /v1/devices (nothing appended), /v1/events%00junk is not
        /v1/events."""
        body = b'{"device_id":"nul-1","hardware":"h"}'
        raw = ("POST /v1/devices%%00junk HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
               "Content-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
               % (self.ops, len(body))).encode() + body
        self.check_refused(lambda: raw_request(self.wp, raw), 404, "not-found", "POST /v1/devices%00junk")
        raw = ("GET /v1/events%%00junk HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
               "Connection: close\r\n\r\n" % self.audit).encode()
        self.assertProblem(raw_request(self.rp, raw), 404, "not-found", "GET /v1/events%00junk")

    # ---- query parameters ----

    def test_events_query_params(self):
        for q in ["after=-1", "after=x", "after=1.5", "after=", "after=99999999999999999999999",
                  "after=0x10", "after=1e3", "limit=0", "limit=1001", "limit=-5",
                  "limit=abc", "limit=", "limit=99999999999999999999"]:
            with self.subTest(query=q):
                self.check_refused(lambda: request("GET", self.rp, "/v1/events?" + q, token=self.audit),
                                   400, "bad-input", q)
        for q in ["after=0&limit=1", "limit=1000", "after=0", ""]:
            with self.subTest(query=q):
                r = request("GET", self.rp, "/v1/events?" + q, token=self.audit)
                self.assertStatus(r, 200)

    def test_min_position_and_wait_ms(self):
        for q in ["min_position=-1", "min_position=x", "min_position=", "min_position=1.0",
                  "min_position=99999999999999999999999", "min_position=1&wait_ms=-1",
                  "min_position=1&wait_ms=10001", "min_position=1&wait_ms=x", "min_position=1&wait_ms=",
                  "min_position=1&wait_ms=1.5", "wait_ms=20000"]:
            with self.subTest(query=q):
                self.check_refused(
                    lambda: request("GET", self.rp, "/v1/snapshots/devices?" + q, token=self.audit),
                    400, "bad-input", q)
        for q in ["min_position=0", "min_position=1&wait_ms=0", "min_position=0&wait_ms=10000"]:
            with self.subTest(query=q):
                r = request("GET", self.rp, "/v1/snapshots/devices?" + q, token=self.audit)
                self.assertIn(r.status, (200, 503), r)

    # ---- broken HTTP and idle clients ----

    def test_broken_http(self):
        """Garbage on the socket, huge request lines and headers: refused or
        dropped, nothing appended, the server keeps serving."""
        h0 = self.head()
        auth = "Authorization: Bearer %s\r\n" % self.ops
        cases = [
            b"GARBAGE\r\n\r\n",
            b"\x00\x01\x02\xff\r\n\r\n",
            b"POST /v1/devices HTTP/9.9\r\nHost: x\r\nConnection: close\r\n\r\n",
            ("GET /" + "a" * 100000 + " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").encode(),
            ("POST /v1/devices HTTP/1.1\r\nHost: x\r\n" + auth + "X-Big: " + "b" * 100000 +
             "\r\nConnection: close\r\n\r\n").encode(),
            ("POST /v1/devices HTTP/1.1\r\nHost: x\r\n" + auth + "".join("X-H%d: v\r\n" % i for i in range(5000)) +
             "Connection: close\r\n\r\n").encode(),
            ("POST /v1/devices HTTP/1.1\r\nHost: x\r\n" + auth + "Content-Type: application/json\r\n"
             "Content-Length: -5\r\nConnection: close\r\n\r\n").encode(),
            ("POST /v1/devices HTTP/1.1\r\nHost: x\r\n" + auth + "Content-Type: application/json\r\n"
             "Content-Length: 10\r\nContent-Length: 20\r\nConnection: close\r\n\r\n"
             '{"device_id":"cl-1","hardware":"h"}').encode(),
        ]
        for raw in cases:
            with self.subTest(request=raw[:40]):
                try:
                    r = raw_request(self.wp, raw, timeout=2)
                    self.assertGreaterEqual(r.status, 400, r)
                    self.assertTrue(r.status < 500 or r.status == 505, r)
                except (AssertionError, OSError) as e:
                    if isinstance(e, AssertionError) and "no HTTP answer" not in str(e):
                        raise
                    # dropping (or ignoring) the connection is a fine answer to garbage
                self.assertEqual(request("GET", self.wp, "/healthz", timeout=5).status, 200)
        self.assertEqual(self.head(), h0)

    def test_idle_and_slow_clients_do_not_block(self):
        """64 idle connections and 16 requests stalled half-way through their
        body: other clients are still served promptly."""
        import socket
        socks = []
        try:
            for _ in range(64):
                socks.append(socket.create_connection(("127.0.0.1", self.wp), timeout=5))
            for i in range(16):
                s = socket.create_connection(("127.0.0.1", self.wp), timeout=5)
                s.sendall(("POST /v1/devices HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
                           "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
                           '{"device_id":"slow-%d",' % (self.ops, i)).encode())
                socks.append(s)
            for port in (self.wp, self.rp):
                r = request("GET", port, "/healthz", timeout=10)
                self.assertStatus(r, 200)
                self.assertLess(r.elapsed, 2.0, "a request waited behind idle connections")
            r = register(self.wp, self.ops, self.fresh_id(), headers=None)
            self.assertStatus(r, 201)
            self.assertLess(r.elapsed, 2.0)
        finally:
            for s in socks:
                s.close()

    # ---- bytes that are not UTF-8 (issue 14, defect 18) ----

    def raw(self, port, line, headers=(), body=b""):
        """A raw request: line (bytes, e.g. b"GET /x HTTP/1.1"), then Host,
        the headers, Connection: close, and the body."""
        hdrs = [b"Host: x"] + [h.encode() if isinstance(h, str) else h for h in headers]
        if body:
            hdrs.append(b"Content-Length: %d" % len(body))
        hdrs.append(b"Connection: close")
        return raw_request(port, line + b"\r\n" + b"\r\n".join(hdrs) + b"\r\n\r\n" + body)

    def refused_4xx(self, send, msg):
        """send() answers a 4xx problem+json with type and detail (never a
        bare 500), the log does not move, the server still serves."""
        h0 = self.head()
        r = send()
        self.assertTrue(400 <= r.status < 500, "%s: %r" % (msg, r))
        self.assertProblem(r, r.status, msg=msg)
        self.assertEqual(self.head(), h0, "%s: the log moved" % msg)
        self.assertEqual(request("GET", self.wp, "/healthz").status, 200, msg)
        return r

    def test_not_utf8_is_a_4xx_problem(self):
        """Each of the 13 cases of issue 14 (defect 18) answered a bare
        {"status":500,"title":"Internal error"} before: the bytes were echoed
        into the detail, which could not be built."""
        ci, dev = "Authorization: Bearer " + self.dep.token("ci"), \
            "Authorization: TargetToken " + self.dep.token("dev-0001")
        audit, ops = "Authorization: Bearer " + self.audit, "Authorization: Bearer " + self.ops
        fw = b"/v1/firmware?name=n&version=1&hardware=hw-a&security_version=1"
        octet = "Content-Type: application/octet-stream"
        ddi = b"/ddi/DEFAULT/controller/v1/dev-0001"
        swu = cpio_archive([(b"\xffsw-description", b"x" * 10), (b"p.bin", b"y" * 10)])
        cases = [
            ("query parameter name", self.wp, b"POST " + fw + b"&%FF=1 HTTP/1.1", [ci, octet], b"abc"),
            ("query parameter name (GET)", self.rp, b"GET /v1/events?%FF=1 HTTP/1.1", [audit], b""),
            ("format=", self.wp, b"POST " + fw + b"&format=%FF HTTP/1.1", [ci, octet], b"abc"),
            ("DDI tenant", self.rp, b"GET /ddi/%FF/controller/v1/dev-0001 HTTP/1.1", [dev], b""),
            ("DDI device", self.rp, b"GET /ddi/DEFAULT/controller/v1/%FF HTTP/1.1", [dev], b""),
            ("DDI action", self.rp, b"GET " + ddi + b"/deploymentBase/%FF HTTP/1.1", [dev], b""),
            ("DDI cancel action", self.rp, b"GET " + ddi + b"/cancelAction/%FF HTTP/1.1", [dev], b""),
            ("DDI artifact", self.rp,
             b"GET " + ddi + b"/softwaremodules/1/artifacts/%FF.swu HTTP/1.1", [dev], b""),
            ("DDI feedback action", self.wp, b"POST " + ddi + b"/deploymentBase/%FF/feedback HTTP/1.1",
             [dev, "Content-Type: application/json"], b"{}"),
            ("snapshot name", self.rp, b"GET /v1/snapshots/%FF HTTP/1.1", [audit], b""),
            ("device id (update)", self.rp, b"GET /v1/devices/%FF/update HTTP/1.1", [ops], b""),
            ("device id (commands)", self.rp, b"GET /v1/devices/%FF/commands HTTP/1.1", [ops], b""),
            ("method byte 0xFF, wrong token", self.wp, b"\xffPOST /v1/devices HTTP/1.1",
             ["Authorization: Bearer wrong", "Content-Type: application/json"], b"{}"),
            (".swu whose first entry name holds 0xFF", self.wp, b"POST " + fw + b"&format=swu HTTP/1.1",
             [ci, octet], swu),
        ]
        for what, port, line, headers, body in cases:
            with self.subTest(case=what):
                self.refused_4xx(lambda: self.raw(port, line, headers, body), what)

    # ---- repeats and malformed media types (issue 14, defect 21) ----

    def test_repeated_query_parameters(self):
        """The first of two values used to be signed while a proxy may read
        the last: every repeat is refused before anything is decided."""
        ci = "Authorization: Bearer " + self.dep.token("ci")
        line = (b"POST /v1/firmware?name=n&version=1&hardware=hw-a&security_version=1"
                b"&security_version=99 HTTP/1.1")
        r = self.refused_4xx(lambda: self.raw(self.wp, line, [ci, "Content-Type: application/octet-stream"],
                                              b"image"), "security_version twice")
        self.assertEqual(r.status, 400)
        self.assertIn("more than once", r.body["detail"])
        for q in ["after=1&after=2", "limit=1&limit=1", "after=0&limit=5&after=0"]:
            with self.subTest(query=q):
                self.check_refused(lambda: request("GET", self.rp, "/v1/events?" + q, token=self.audit),
                                   400, "bad-input", q)

    def test_repeated_range_and_conditional_headers(self):
        audit = "Authorization: Bearer " + self.audit
        for hdrs in (["Range: bytes=0-1", "Range: bytes=2-3"], ["If-Range: \"a\"", "If-Range: \"b\""],
                     ["If-None-Match: \"a\"", "If-None-Match: \"b\""]):
            with self.subTest(headers=hdrs):
                r = self.refused_4xx(lambda: self.raw(self.rp, b"GET /v1/firmware/x/image HTTP/1.1",
                                                      [audit] + hdrs), repr(hdrs))
                self.assertEqual(r.status, 400)
        r = self.refused_4xx(lambda: self.raw(self.wp, b"POST /v1/devices HTTP/1.1",
                                              ["Authorization: Bearer " + self.ops,
                                               "Content-Type: application/json",
                                               "Content-Type: text/plain"],
                                              b'{"device_id":"rep-ct","hardware":"h"}'),
                             "two Content-Type headers")
        self.assertEqual(r.status, 400)

    def test_malformed_content_type(self):
        body = b'{"device_id":"ctm-1","hardware":"h"}'
        for ctype in ["application/json garbage", "application/json;", "application/json; charset",
                      "application/json; =x", "application/json x; charset=utf-8",
                      "application/json; charset=\"utf-8", "application/json;;"]:
            with self.subTest(ctype=ctype):
                self.check_refused(lambda: self.post_raw(body, headers={"Content-Type": ctype}), 415,
                                   "unsupported-media-type", ctype)
        r = self.post_raw({"device_id": "ctm-ok", "hardware": "h"},
                          headers={"Content-Type": "application/json ; charset=\"utf-8\""})
        self.assertStatus(r, 201)

    # ---- the server survives all of it ----

    @classmethod
    def check_still_serving(cls, t):
        """The server registers a new device and its log verifies (t: a
        TestCase to assert with)."""
        r = request("POST", cls.wp, "/v1/devices", token=cls.ops, headers=JSON,
                    body={"device_id": "after-%d" % next(AFTER), "hardware": "h"})
        t.assertEqual(r.status, 201, r)
        events, head = fetch_all_events(cls.rp, cls.audit)
        verify_chain(events, get_keys(cls.rp))
        t.assertEqual(head, r.body["position"])
        t.assertEqual(len(events), head)

    def test_still_serving(self):
        """Whenever it runs, after any of the bad requests here, the server
        still registers devices and its log verifies (tearDownClass checks
        the same after all of them)."""
        self.check_still_serving(self)


if __name__ == "__main__":
    unittest.main()
