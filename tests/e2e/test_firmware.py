#!/usr/bin/python3
"""Firmware end to end: the streamed upload (POST /v1/firmware), its event
and signed manifest (checked with stock openssl), the blob store, ranged and
conditional downloads, refusals that leave nothing behind (bad query, media
type, size, conflicts, a client gone mid-body, kill -9 mid-body), the sweep
at start, the role matrix, the `firmware` snapshot, `signet push` and
`signet verify-manifest`, and signetd's peak memory while it takes a 256 MiB
image."""

import base64
import hashlib
import http.client
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from client import (  # noqa: E402
    assert_problem, fetch_all_events, send_tolerant, get_keys, head_of, in_threads, make_response, request,
    wait_until)
from deploy import E2ETestCase, FaultyHsmTestCase  # noqa: E402
from verify import canonical, key_id_for, verify_chain, verify_signed_doc, verify_snapshot  # noqa: E402

MiB = 1 << 20
FW_ID = re.compile(r"^sha256:[0-9a-f]{64}$")
MANIFEST_FIELDS = {"name", "version", "hardware", "security_version", "size", "sha256", "created",
                   "uploader"}


def fw_path(name, version, hardware="hw-a", sv=1, extra=""):
    return "/v1/firmware?name=%s&version=%s&hardware=%s&security_version=%s%s" % (
        name, version, hardware, sv, extra)


def upload(port, token, data, name, version, hardware="hw-a", sv=1, extra="", headers=None,
           timeout=120):
    """POST /v1/firmware with data (bytes, or an iterable of bytes with
    headers giving Content-Length)."""
    hdrs = {"Content-Type": "application/octet-stream"}
    hdrs.update(headers or {})
    return request("POST", port, fw_path(name, version, hardware, sv, extra), token=token,
                   body=data, headers=hdrs, timeout=timeout)


def random_chunks(total, seed, chunk=MiB):
    """Deterministic pseudo-random bytes (total), in chunks, and their
    SHA-256 (returned by the generator's owner through h)."""
    h = hashlib.sha256()
    block = hashlib.sha256(seed.encode()).digest() * (chunk // 32)

    def gen():
        sent = 0
        i = 0
        while sent < total:
            n = min(chunk, total - sent)
            c = (i.to_bytes(8, "big") + block)[:n]
            h.update(c)
            sent += n
            i += 1
            yield c
    return gen(), h


def vm_hwm_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc/%d/status" % pid)


class FirmwareBase(E2ETestCase):
    """Helpers over cls.dep / cls.srv."""

    @classmethod
    def setup_firmware(cls, **kw):
        cls.start_deployment(**kw)
        cls.ci = cls.dep.token("ci")
        cls.keys = get_keys(cls.rp)
        cls.var = os.path.join(cls.dep.dir, "var")

    def blobs(self):
        d = os.path.join(self.var, "blobs", "sha256")
        return set(os.listdir(d)) if os.path.isdir(d) else set()

    def tmp_files(self):
        d = os.path.join(self.var, "tmp")
        return os.listdir(d) if os.path.isdir(d) else []

    def upload_fds(self):
        """signetd's open descriptors on files under var/tmp (O_TMPFILE
        uploads show as var/tmp/#N (deleted))."""
        out = []
        fd_dir = "/proc/%d/fd" % self.srv.proc.pid
        for fd in os.listdir(fd_dir):
            try:
                t = os.readlink(os.path.join(fd_dir, fd))
            except OSError:
                continue
            if t.startswith(os.path.join(self.var, "tmp")):
                out.append(t)
        return out

    def head(self):
        return head_of(self.rp, self.audit)

    def event_at(self, pos):
        r = request("GET", self.rp, "/v1/events?after=%d&limit=1" % (pos - 1), token=self.audit)
        self.assertStatus(r, 200)
        return r.body["events"][0]

    def get_fw(self, fid, pos, token=None):
        r = request("GET", self.rp, "/v1/firmware/%s?min_position=%d&wait_ms=5000" % (fid, pos),
                    token=token or self.audit)
        self.assertStatus(r, 200)
        return r

    def assertNothingKept(self, before_head, before_blobs, what):
        """After a refusal: the log, the blobs and var/tmp as before, and no
        upload file still open in signetd."""
        self.assertEqual(self.head(), before_head, "%s appended an event" % what)
        self.assertEqual(self.blobs(), before_blobs, "%s left a blob" % what)
        wait_until(lambda: not self.tmp_files() and not self.upload_fds(), 10,
                   what="%s: var/tmp empty and no upload file open (tmp %r, fds %r)"
                   % (what, self.tmp_files(), self.upload_fds()))


class FirmwareUpload(FirmwareBase):
    @classmethod
    def setUpClass(cls):
        cls.setup_firmware(max_image_bytes=300 * MiB)

    def test_upload_event_manifest_openssl(self):
        data = os.urandom(MiB + 123)
        sha = hashlib.sha256(data).hexdigest()
        r = upload(self.wp, self.ci, data, "app", "1.0.0", "hw-a", 7)
        self.assertStatus(r, 201)
        b = r.body
        self.assertEqual(set(b), {"firmware_id", "sha256", "size", "manifest", "signature",
                                  "key_id", "position", "signed_b64"}, b)
        self.assertEqual(b["firmware_id"], "sha256:" + sha)
        self.assertEqual(b["sha256"], sha)
        self.assertEqual(b["size"], len(data))
        m = b["manifest"]
        self.assertEqual(set(m), MANIFEST_FIELDS)
        self.assertEqual((m["name"], m["version"], m["hardware"], m["security_version"], m["size"],
                          m["sha256"], m["uploader"]),
                         ("app", "1.0.0", "hw-a", 7, len(data), sha, "ci"))
        self.assertRegex(m["created"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
        self.assertEqual(b["key_id"], key_id_for(self.keys, "devices"))
        self.assertEqual(base64.b64decode(b["signed_b64"]), canonical(m, without=()))
        verify_signed_doc(m, b["signature"], b["key_id"], self.keys, "devices")

        # The event carries manifest, signature, key id and format.
        ev = self.event_at(b["position"])
        self.assertEqual(ev["type"], "FirmwareUploaded")
        self.assertEqual(ev["actor"], "ci")
        self.assertEqual(ev["data"], {"firmware_id": b["firmware_id"], "manifest": m,
                                      "signature": b["signature"], "key_id": b["key_id"],
                                      "format": "raw"})
        events, _ = fetch_all_events(self.rp, self.audit)
        verify_chain(events, self.keys)

        # The blob is whole, where the contract says, and nothing is left in tmp.
        with open(os.path.join(self.var, "blobs", "sha256", sha), "rb") as f:
            self.assertEqual(f.read(), data)
        self.assertEqual(self.tmp_files(), [])

        # The read side: the same signed manifest, and stock openssl agrees.
        g = self.get_fw(b["firmware_id"], b["position"], token=self.dep.token("dev-0001"))
        self.assertEqual(g.body, {"manifest": m, "signature": b["signature"],
                                  "key_id": b["key_id"], "signed_b64": b["signed_b64"]})
        pem = [k["public_key_pem"] for k in self.keys["keys"] if k["purpose"] == "devices"][0]
        with tempfile.TemporaryDirectory() as d:
            paths = {n: os.path.join(d, n) for n in ("pub.pem", "sig.der", "m.json", "bad.json")}
            with open(paths["pub.pem"], "w") as f:
                f.write(pem)
            with open(paths["sig.der"], "wb") as f:
                f.write(base64.b64decode(g.body["signature"]))
            with open(paths["m.json"], "wb") as f:
                f.write(base64.b64decode(g.body["signed_b64"]))
            with open(paths["bad.json"], "wb") as f:
                f.write(base64.b64decode(g.body["signed_b64"]).replace(b'"1.0.0"', b'"1.0.1"'))
            ok = subprocess.run(["openssl", "dgst", "-sha256", "-verify", paths["pub.pem"],
                                 "-signature", paths["sig.der"], paths["m.json"]],
                                capture_output=True, text=True)
            self.assertEqual(ok.returncode, 0, ok.stdout + ok.stderr)
            self.assertIn("Verified OK", ok.stdout)
            bad = subprocess.run(["openssl", "dgst", "-sha256", "-verify", paths["pub.pem"],
                                  "-signature", paths["sig.der"], paths["bad.json"]],
                                 capture_output=True, text=True)
            self.assertNotEqual(bad.returncode, 0, "openssl verified a tampered manifest")

        # HEAD of the manifest document.
        h = request("HEAD", self.rp, "/v1/firmware/" + b["firmware_id"], token=self.audit)
        self.assertStatus(h, 200)
        self.assertEqual(h.raw, b"")

    def test_download_range_etag(self):
        data = os.urandom(300000)
        r = upload(self.wp, self.ci, data, "dl", "1", "hw-a", 1)
        self.assertStatus(r, 201)
        fid, pos = r.body["firmware_id"], r.body["position"]
        url = "/v1/firmware/%s/image?min_position=%d" % (fid, pos)
        tok = self.dep.token("dev-0001")
        etag = '"%s"' % r.body["sha256"]

        g = request("GET", self.rp, url, token=tok)
        self.assertStatus(g, 200)
        self.assertEqual(g.raw, data)
        self.assertEqual(g.headers["ETag"], etag)
        self.assertEqual(g.headers["Accept-Ranges"], "bytes")
        self.assertEqual(int(g.headers["Content-Length"]), len(data))

        h = request("HEAD", self.rp, url, token=tok)
        self.assertStatus(h, 200)
        self.assertEqual(h.raw, b"")
        self.assertEqual(int(h.headers["Content-Length"]), len(data))
        self.assertEqual(h.headers["ETag"], etag)

        p = request("GET", self.rp, url, token=tok, headers={"Range": "bytes=100-199"})
        self.assertStatus(p, 206)
        self.assertEqual(p.raw, data[100:200])
        self.assertEqual(p.headers["Content-Range"], "bytes 100-199/%d" % len(data))

        p = request("GET", self.rp, url, token=tok, headers={"Range": "bytes=-10"})
        self.assertStatus(p, 206)
        self.assertEqual(p.raw, data[-10:])

        p = request("GET", self.rp, url, token=tok, headers={"Range": "bytes=%d-" % len(data)})
        self.assertStatus(p, 416)
        self.assertEqual(p.headers["Content-Range"], "bytes */%d" % len(data))

        p = request("GET", self.rp, url, token=tok,
                    headers={"Range": "bytes=5-9", "If-Range": etag})
        self.assertStatus(p, 206)
        self.assertEqual(p.raw, data[5:10])
        p = request("GET", self.rp, url, token=tok,
                    headers={"Range": "bytes=5-9", "If-Range": '"%s"' % ("0" * 64)})
        self.assertStatus(p, 200)
        self.assertEqual(p.raw, data)

        n = request("GET", self.rp, url, token=tok, headers={"If-None-Match": etag})
        self.assertStatus(n, 304)
        self.assertEqual(n.raw, b"")
        n = request("GET", self.rp, url, token=tok, headers={"If-None-Match": '"other"'})
        self.assertStatus(n, 200)

        # A slow link resumes where it stopped.
        got = b""
        conn = http.client.HTTPConnection("127.0.0.1", self.rp, timeout=30)
        conn.request("GET", url, headers={"Authorization": "Bearer " + tok})
        resp = conn.getresponse()
        got = resp.read(123457)
        conn.close()  # the link drops
        rest = request("GET", self.rp, url, token=tok,
                       headers={"Range": "bytes=%d-" % len(got), "If-Range": etag})
        self.assertStatus(rest, 206)
        self.assertEqual(got + rest.raw, data)

    def test_unknown_and_malformed_ids(self):
        tok = self.audit
        r = request("GET", self.rp, "/v1/firmware/sha256:" + "0" * 64, token=tok)
        assert_problem(r, 404)
        r = request("GET", self.rp, "/v1/firmware/sha256:" + "0" * 64 + "/image", token=tok)
        assert_problem(r, 404)
        for bad in ("sha256:" + "A" * 64, "sha256:" + "0" * 63, "sha256:" + "0" * 65,
                    "0" * 64, "sha1:" + "0" * 40, "sha256:..%2f..%2fevents.db",
                    "..%2f..%2fvar%2fevents.db", "sha256:%2e%2e"):
            for suffix in ("", "/image"):
                r = request("GET", self.rp, "/v1/firmware/%s%s" % (bad, suffix), token=tok)
                self.assertIn(r.status, (400, 404), (bad, r))
                assert_problem(r, r.status)

    def test_image_only_after_its_event_is_projected(self):
        """A blob on disk that no projected event names is not served."""
        data = b"not uploaded through the API"
        sha = hashlib.sha256(data).hexdigest()
        d = os.path.join(self.var, "blobs", "sha256")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, sha), "wb") as f:
            f.write(data)
        try:
            r = request("GET", self.rp, "/v1/firmware/sha256:%s/image" % sha, token=self.audit)
            assert_problem(r, 404)
        finally:
            os.unlink(os.path.join(d, sha))

    def test_bad_requests_leave_nothing(self):
        data = os.urandom(4096)
        head, blobs = self.head(), self.blobs()
        cases = [
            ("/v1/firmware?version=1&hardware=hw-a&security_version=1", 400),
            ("/v1/firmware?name=a&hardware=hw-a&security_version=1", 400),
            ("/v1/firmware?name=a&version=1&security_version=1", 400),
            ("/v1/firmware?name=a&version=1&hardware=hw-a", 400),
            (fw_path("a", "1", sv="-1"), 400),
            (fw_path("a", "1", sv="1.5"), 400),
            (fw_path("a", "1", sv="4294967296"), 400),
            (fw_path("a", "1", sv="0x10"), 400),
            (fw_path("a%2fb", "1"), 400),
            (fw_path("..", "1"), 400),
            (fw_path("a", "1%202"), 400),
            (fw_path("a", "1", hardware=""), 400),
            (fw_path("a", "x" * 65), 400),
            (fw_path("a", "1", extra="&colour=red"), 400),
            (fw_path("a", "1", extra="&format=swu"), 400),
            (fw_path("a", "1", extra="&format=zip"), 400),
        ]
        for path, status in cases:
            r = request("POST", self.wp, path, token=self.ci, body=data,
                        headers={"Content-Type": "application/octet-stream"})
            assert_problem(r, status, msg=path)
        for ct in ("application/json", "text/plain", None):
            hdrs = {"Content-Type": ct} if ct else {}
            r = request("POST", self.wp, fw_path("a", "1"), token=self.ci, body=data, headers=hdrs)
            assert_problem(r, 415, msg=str(ct))
        r = upload(self.wp, self.ci, b"", "empty", "1")
        assert_problem(r, 400, msg="empty image")
        self.assertNothingKept(head, blobs, "bad requests")

    def test_413_before_the_body(self):
        head, blobs = self.head(), self.blobs()
        t0 = time.monotonic()
        s = socket.create_connection(("127.0.0.1", self.wp), timeout=30)
        s.sendall(("POST %s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Type: "
                   "application/octet-stream\r\nContent-Length: %d\r\nExpect: 100-continue\r\n\r\n"
                   % (fw_path("big", "1"), self.ci, 300 * MiB + 1)).encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            c = s.recv(65536)
            if not c:
                break
            buf += c
        s.close()
        self.assertTrue(buf.startswith(b"HTTP/1.1 413"), buf[:200])
        self.assertNotIn(b"100 Continue", buf)
        self.assertLess(time.monotonic() - t0, 10)
        self.assertNothingKept(head, blobs, "413")

    def test_conflicts(self):
        a = os.urandom(5000)
        r = upload(self.wp, self.ci, a, "conf", "1")
        self.assertStatus(r, 201)
        head, blobs = self.head(), self.blobs()
        # The same name and version with other bytes: 409, and the new blob goes.
        b = os.urandom(5000)
        r = upload(self.wp, self.ci, b, "conf", "1")
        assert_problem(r, 409)
        self.assertNotIn(hashlib.sha256(b).hexdigest(), self.blobs())
        # The same bytes under another name: 409, and the existing blob stays.
        r = upload(self.wp, self.ci, a, "conf-other", "2")
        assert_problem(r, 409)
        self.assertIn(hashlib.sha256(a).hexdigest(), self.blobs())
        self.assertNothingKept(head, blobs, "409")
        g = request("GET", self.rp, "/v1/firmware/sha256:%s/image" % hashlib.sha256(a).hexdigest(),
                    token=self.audit)
        self.assertEqual(g.raw, a)

    def test_concurrent_identical_uploads(self):
        """Same bytes at once: one event, the others 409, the blob whole."""
        data = os.urandom(2 * MiB)
        sha = hashlib.sha256(data).hexdigest()
        head = self.head()
        rs = in_threads(6, lambda i: upload(self.wp, self.ci, data, "twin-%d" % i, "1"),
                        together=True)
        self.assertEqual(sorted(r.status for r in rs), [201] + [409] * 5, rs)
        self.assertEqual(self.head(), head + 1)
        with open(os.path.join(self.var, "blobs", "sha256", sha), "rb") as f:
            self.assertEqual(hashlib.sha256(f.read()).hexdigest(), sha)
        # And the same name at once with different bytes: one wins, the rest leave nothing.
        blobs = self.blobs()
        datas = [os.urandom(MiB) for _ in range(4)]
        rs = in_threads(4, lambda i: upload(self.wp, self.ci, datas[i], "race", "1"),
                        together=True)
        self.assertEqual(sorted(r.status for r in rs), [201, 409, 409, 409], rs)
        win = [i for i, d in enumerate(datas)
               if hashlib.sha256(d).hexdigest() in self.blobs() - blobs]
        self.assertEqual(len(win), 1)

    def test_refused_twin_keeps_blob_of_accepted_twin(self):
        """The same bytes at once, one upload refused for its name (409) and
        one accepted: the refused one never deletes the blob the accepted
        one's event names."""
        r = upload(self.wp, self.ci, os.urandom(100), "taken", "1")
        self.assertStatus(r, 201)
        datas = [os.urandom(128 * 1024) for _ in range(16)]

        def pair(i):
            d = datas[i // 2]
            if i % 2:
                return upload(self.wp, self.ci, d, "taken", "1")
            return upload(self.wp, self.ci, d, "fresh-%d" % (i // 2), "1")
        rs = in_threads(2 * len(datas), pair, together=True)
        self.assertEqual(len(rs), 2 * len(datas))
        events, _ = fetch_all_events(self.rp, self.audit)
        named = {e["data"]["sha256"] if "sha256" in e["data"] else e["data"]["manifest"]["sha256"]
                 for e in events if e["type"] == "FirmwareUploaded"}
        for d in datas:
            h = hashlib.sha256(d).hexdigest()
            self.assertIn(h, named)
            path = os.path.join(self.var, "blobs", "sha256", h)
            self.assertTrue(os.path.exists(path), "the blob of an uploaded image is gone")
            with open(path, "rb") as f:
                self.assertEqual(f.read(), d)

    def test_idempotent_upload(self):
        data = os.urandom(10000)
        hdr = {"Idempotency-Key": "fw-" + os.urandom(6).hex()}
        r1 = upload(self.wp, self.ci, data, "idem", "1", headers=hdr)
        self.assertStatus(r1, 201)
        head = self.head()
        r2 = upload(self.wp, self.ci, data, "idem", "1", headers=hdr)
        self.assertStatus(r2, 201)
        self.assertEqual(r1.body, r2.body)
        self.assertEqual(self.head(), head)

    def test_idempotency_key_reused_for_other_upload_keeps_blob(self):
        """The same bytes sent again under another name with a used
        Idempotency-Key (422, refused before any decision): the blob the
        first upload's event names stays, and the image is still served."""
        data = os.urandom(10000)
        hdr = {"Idempotency-Key": "fw-" + os.urandom(6).hex()}
        r1 = upload(self.wp, self.ci, data, "idem-keep", "1", headers=hdr)
        self.assertStatus(r1, 201)
        fid = r1.body["firmware_id"]
        head = self.head()
        r2 = upload(self.wp, self.ci, data, "idem-keep-other", "1", headers=hdr)
        self.assertProblem(r2, 422)
        self.assertEqual(self.head(), head)
        self.assertIn(fid[7:], self.blobs(), "a refused upload deleted the blob of an earlier event")
        g = request("GET", self.rp, "/v1/firmware/%s/image?min_position=%d&wait_ms=5000"
                    % (fid, r1.body["position"]), token=self.audit)
        self.assertStatus(g, 200)
        self.assertEqual(g.body, data)

    def test_disconnect_mid_upload(self):
        head, blobs = self.head(), self.blobs()
        s = socket.create_connection(("127.0.0.1", self.wp), timeout=30)
        s.sendall(("POST %s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Type: "
                   "application/octet-stream\r\nContent-Length: %d\r\n\r\n"
                   % (fw_path("gone", "1"), self.ci, 64 * MiB)).encode())
        for _ in range(8):
            s.sendall(os.urandom(MiB))
        wait_until(lambda: self.upload_fds(), 10, what="the upload's temporary file is open")
        s.close()
        self.assertNothingKept(head, blobs, "a client gone mid-body")
        # Chunked, gone mid-body too.
        s = socket.create_connection(("127.0.0.1", self.wp), timeout=30)
        s.sendall(("POST %s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Type: "
                   "application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                   % (fw_path("gone", "2"), self.ci)).encode())
        for _ in range(4):
            s.sendall(b"100000\r\n" + os.urandom(MiB) + b"\r\n")
        s.close()
        self.assertNothingKept(head, blobs, "a chunked client gone mid-body")
        # Still serving.
        r = upload(self.wp, self.ci, os.urandom(1000), "after-gone", "1")
        self.assertStatus(r, 201)

    def test_role_matrix(self):
        data = os.urandom(100)
        allowed = {"ci", "adm"}
        for name in ("ci", "ops", "alice", "audit", "adm", "dev-0001", None):
            tok = self.dep.token(name) if name else None
            r = request("POST", self.wp, fw_path("roles-%s" % name, "1"), token=tok,
                        body=data + (name or "").encode(),
                        headers={"Content-Type": "application/octet-stream"})
            want = 201 if name in allowed else 401 if name is None else 403
            self.assertEqual(r.status, want, (name, r))
            if want != 201:
                assert_problem(r, want)
        r = upload(self.wp, self.ci, os.urandom(100), "roles-get", "1")
        self.assertStatus(r, 201)
        fid, pos = r.body["firmware_id"], r.body["position"]
        for name in ("ci", "ops", "alice", "audit", "adm", "dev-0001", None):
            tok = self.dep.token(name) if name else None
            for suffix in ("", "/image"):
                r = request("GET", self.rp, "/v1/firmware/%s%s?min_position=%d" % (fid, suffix, pos),
                            token=tok)
                self.assertEqual(r.status, 401 if name is None else 200, (name, suffix, r))
        # Not on the other listener, and not with other methods.
        assert_problem(request("GET", self.wp, "/v1/firmware/" + fid, token=self.audit), 404)
        r = request("POST", self.rp, fw_path("x", "1"), token=self.ci, body=b"x",
                    headers={"Content-Type": "application/octet-stream"})
        self.assertIn(r.status, (404, 405))
        r = request("DELETE", self.rp, "/v1/firmware/" + fid, token=self.adm)
        assert_problem(r, 405)

    def test_snapshot(self):
        r = upload(self.wp, self.ci, os.urandom(777), "snap", "3", "hw-s", 5)
        self.assertStatus(r, 201)
        s = request("GET", self.rp, "/v1/snapshots/firmware?min_position=%d" % r.body["position"],
                    token=self.ops)
        self.assertStatus(s, 200)
        verify_snapshot(s.body, self.keys)
        st = s.body["state"]
        self.assertEqual(st["count"], len(st["firmware"]))
        mine = [f for f in st["firmware"] if f["firmware_id"] == r.body["firmware_id"]]
        self.assertEqual(mine, [{"firmware_id": r.body["firmware_id"], "name": "snap",
                                 "version": "3", "hardware": "hw-s", "security_version": 5,
                                 "size": 777, "format": "raw", "position": r.body["position"]}])
        self.assertNotIn("next_after", st)

    def test_snapshot_pages(self):
        """The firmware snapshot is paged in upload order: every page is a
        signed snapshot of at most `limit` entries, next_after leads on."""
        pos = 0
        for i in range(5):
            r = upload(self.wp, self.ci, os.urandom(100 + i), "page", "%d" % i)
            self.assertStatus(r, 201)
            pos = r.body["position"]
        seen, after, pages = [], 0, 0
        while True:
            s = request("GET", self.rp, "/v1/snapshots/firmware?after=%d&limit=2&min_position=%d"
                        % (after, pos), token=self.audit)
            self.assertStatus(s, 200)
            verify_snapshot(s.body, self.keys)
            st = s.body["state"]
            self.assertEqual(st["after"], after)
            self.assertLessEqual(len(st["firmware"]), 2)
            self.assertTrue(all(f["position"] > after for f in st["firmware"]))
            seen += st["firmware"]
            pages += 1
            if "next_after" not in st:
                break
            self.assertEqual(st["next_after"], st["firmware"][-1]["position"])
            after = st["next_after"]
        self.assertEqual(len(seen), st["count"])
        self.assertEqual([f["position"] for f in seen], sorted(f["position"] for f in seen))
        self.assertGreaterEqual(pages, 3)
        whole = request("GET", self.rp, "/v1/snapshots/firmware?min_position=%d" % pos,
                        token=self.audit)
        self.assertEqual(whole.body["state"]["firmware"], seen)
        for q in ("after=-1", "limit=0", "limit=1001", "after=x"):
            assert_problem(request("GET", self.rp, "/v1/snapshots/firmware?" + q,
                                   token=self.audit), 400, msg=q)
        # A snapshot that is not paged says so.
        assert_problem(request("GET", self.rp, "/v1/snapshots/devices?after=3", token=self.audit),
                       400)

    def test_peak_rss_256mib(self):
        """signetd takes a 256 MiB image with a peak RSS under 96 MiB, and
        serves it back whole."""
        total = 256 * MiB
        gen, h = random_chunks(total, "rss")
        r = upload(self.wp, self.ci, gen, "big", "1", headers={"Content-Length": str(total)},
                   timeout=300)
        self.assertStatus(r, 201)
        self.assertEqual(r.body["sha256"], h.hexdigest())
        self.assertEqual(r.body["size"], total)
        hwm = vm_hwm_kib(self.srv.proc.pid)
        self.assertLess(hwm, 96 * 1024, "signetd peak RSS %d KiB" % hwm)
        print("\n  256 MiB upload: signetd VmHWM %d KiB" % hwm, file=sys.stderr)
        conn = http.client.HTTPConnection("127.0.0.1", self.rp, timeout=300)
        conn.request("GET", "/v1/firmware/%s/image?min_position=%d" % (r.body["firmware_id"],
                                                                       r.body["position"]),
                     headers={"Authorization": "Bearer " + self.audit})
        resp = conn.getresponse()
        self.assertEqual(resp.status, 200)
        d = hashlib.sha256()
        n = 0
        while True:
            c = resp.read(MiB)
            if not c:
                break
            d.update(c)
            n += len(c)
        conn.close()
        self.assertEqual((n, d.hexdigest()), (total, h.hexdigest()))
        hwm = vm_hwm_kib(self.srv.proc.pid)
        self.assertLess(hwm, 96 * 1024, "signetd peak RSS %d KiB after the download" % hwm)


class FirmwareLimits(FirmwareBase):
    """A small limits.max_image_bytes: declared and chunked bodies over it."""

    @classmethod
    def setUpClass(cls):
        cls.setup_firmware(max_image_bytes=MiB)

    def test_declared_length_over_limit(self):
        head, blobs = self.head(), self.blobs()
        hdrs = {"Authorization": "Bearer " + self.ci, "Content-Type": "application/octet-stream"}
        r = send_tolerant(self.wp, "POST", fw_path("lim", "1"), hdrs,
                          [os.urandom(64 * 1024) for _ in range(16)] + [b"x"])
        assert_problem(r, 413)
        self.assertNothingKept(head, blobs, "413")
        r = upload(self.wp, self.ci, os.urandom(MiB), "lim", "1")
        self.assertStatus(r, 201)

    def test_chunked_over_limit(self):
        head, blobs = self.head(), self.blobs()
        hdrs = {"Authorization": "Bearer " + self.ci, "Content-Type": "application/octet-stream"}
        r = send_tolerant(self.wp, "POST", fw_path("limc", "1"), hdrs,
                          [os.urandom(256 * 1024) for _ in range(6)], chunked=True)
        self.assertIsNotNone(r)
        assert_problem(r, 413)
        self.assertNothingKept(head, blobs, "chunked 413")
        r = send_tolerant(self.wp, "POST", fw_path("limc", "2"), hdrs,
                          [os.urandom(256 * 1024) for _ in range(2)], chunked=True)
        self.assertStatus(r, 201)


class FirmwareDiskFull(FirmwareBase):
    """data_dir on a 16 MiB tmpfs: an image that does not fit is 507 and
    leaves nothing; the next one that fits is stored. Needs mount(2)
    (root); skipped otherwise."""

    @classmethod
    def setUpClass(cls):
        cls.mnt = tempfile.mkdtemp(prefix="signet-fw-full-")
        p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", cls.mnt],
                           capture_output=True, text=True)
        if p.returncode != 0:
            os.rmdir(cls.mnt)
            raise unittest.SkipTest("cannot mount a tmpfs: %s" % p.stderr.strip())
        cls.addClassCleanup(lambda: (subprocess.run(["umount", "-l", cls.mnt]), os.rmdir(cls.mnt)))
        store = tempfile.mkdtemp(prefix="signet-fw-store-")
        cls.addClassCleanup(lambda: subprocess.run(["rm", "-rf", store]))

        def small_disk(cfg):
            cfg["data_dir"] = cls.mnt
            cfg["store"] = "sqlite:" + os.path.join(store, "events.db")
            return cfg
        cls.setup_firmware(mutate=small_disk)
        cls.var = cls.mnt

    def test_disk_full(self):
        head, blobs = self.head(), self.blobs()
        r = upload(self.wp, self.ci, os.urandom(24 * MiB), "full", "1")
        assert_problem(r, 507, slug="insufficient-storage")
        self.assertNothingKept(head, blobs, "507")
        r = upload(self.wp, self.ci, os.urandom(2 * MiB), "full", "1")
        self.assertStatus(r, 201)
        self.assertIn(r.body["sha256"], self.blobs())


class FirmwareHsmFailure(FaultyHsmTestCase, FirmwareBase):
    """The HSM fails to sign the manifest: 503, no event, and the blob the
    upload had made durable is removed; once the HSM is back the same image
    is accepted."""

    @classmethod
    def setUpClass(cls):
        cls.setup_firmware(faulty=True)

    def test_sign_failure_leaves_nothing(self):
        head, blobs = self.head(), self.blobs()
        data = os.urandom(2 * MiB)
        self.set_fault("sign")
        r = upload(self.wp, self.ci, data, "hsm", "1")
        assert_problem(r, 503, slug="hsm-unavailable")
        self.assertNothingKept(head, blobs, "an upload the HSM did not sign")
        self.set_fault(None)

        def accepted():
            r = upload(self.wp, self.ci, data, "hsm", "1")
            if r.status != 201:
                assert_problem(r, 503)
            return r if r.status == 201 else None
        r = wait_until(accepted, 15, 0.25, "the upload to succeed after the HSM came back")
        self.assertEqual(r.body["position"], head + 1)
        self.assertEqual(self.blobs(), blobs | {hashlib.sha256(data).hexdigest()})


class FirmwareCrash(FirmwareBase):
    """kill -9 mid-upload leaves nothing; the sweep at start removes what a
    crash between a blob's link and its event could leave."""

    @classmethod
    def setUpClass(cls):
        cls.setup_firmware()

    def test_kill9_mid_upload_and_sweep(self):
        kept = os.urandom(3000)
        r = upload(self.wp, self.ci, kept, "kept", "1")
        self.assertStatus(r, 201)
        kept_sha = r.body["sha256"]
        head, blobs = self.head(), self.blobs()
        s = socket.create_connection(("127.0.0.1", self.wp), timeout=30)
        s.sendall(("POST %s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Type: "
                   "application/octet-stream\r\nContent-Length: %d\r\n\r\n"
                   % (fw_path("crash", "1"), self.ci, 64 * MiB)).encode())
        for _ in range(8):
            s.sendall(os.urandom(MiB))
        wait_until(lambda: self.upload_fds(), 10, what="the upload's temporary file is open")
        self.srv.kill9()
        s.close()
        # What a crash between link and append, or an older build, could leave.
        orphan = hashlib.sha256(b"orphan").hexdigest()
        with open(os.path.join(self.var, "blobs", "sha256", orphan), "wb") as f:
            f.write(b"orphan")
        os.makedirs(os.path.join(self.var, "tmp"), exist_ok=True)
        with open(os.path.join(self.var, "tmp", "upload-leftover"), "wb") as f:
            f.write(b"x" * 1000)
        type(self).srv = self.dep.start()
        self.assertEqual(self.head(), head)
        self.assertEqual(self.blobs(), blobs)
        self.assertIn(kept_sha, self.blobs())
        self.assertEqual(self.tmp_files(), [])
        log = self.srv.stderr_text()
        self.assertIn(orphan, log)
        self.assertIn("upload-leftover", log)
        g = request("GET", self.rp, "/v1/firmware/sha256:%s/image" % kept_sha, token=self.audit)
        self.assertEqual(g.raw, kept)
        r = upload(self.wp, self.ci, os.urandom(1000), "crash", "1")
        self.assertStatus(r, 201)


class FirmwareCli(FirmwareBase):
    """`signet push` and `signet verify-manifest`."""

    @classmethod
    def setUpClass(cls):
        cls.setup_firmware()

    @staticmethod
    def dep_signet():
        from deploy import SIGNET
        return SIGNET

    def push(self, path, *args, token=None, url=True):
        env = self.dep.env(SIGNET_TOKEN=token if token is not None else self.ci)
        if token == "":
            env = self.dep.env(SIGNET_TOKEN=None)
        extra = ["--url", "http://127.0.0.1:%d/" % self.wp] if url else []
        return self.dep.cli("push", path, *args, *extra, env=env)

    def test_push_and_verify_manifest(self):
        with tempfile.TemporaryDirectory() as d:
            img = os.path.join(d, "image.bin")
            data = os.urandom(3 * MiB + 5)
            with open(img, "wb") as f:
                f.write(data)
            sha = hashlib.sha256(data).hexdigest()
            p = self.push(img, "--name", "cli", "--version", "1.2", "--hardware", "hw-c",
                          "--security-version", "3")
            self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
            self.assertEqual(p.stdout.strip(), "sha256:" + sha)
            self.assertEqual(p.stderr, "", "output besides the id when not on a terminal")
            events, _ = fetch_all_events(self.rp, self.audit)
            ev = [e for e in events if e["type"] == "FirmwareUploaded"][-1]
            self.assertEqual(ev["data"]["manifest"]["security_version"], 3)
            self.assertEqual(ev["data"]["manifest"]["hardware"], "hw-c")

            # A refusal: non-zero, with the problem's detail.
            p = self.push(img, "--name", "cli", "--version", "1.2", "--hardware", "hw-c",
                          "--security-version", "3")
            self.assertNotEqual(p.returncode, 0)
            self.assertIn("already uploaded", p.stderr)
            self.assertIn("409", p.stderr)
            p = self.push(img, "--name", "cli", "--version", "9", "--hardware", "hw-c",
                          "--security-version", "3", token=self.dep.token("ops"))
            self.assertNotEqual(p.returncode, 0)
            self.assertIn("403", p.stderr)
            p = self.push(img, "--name", "cli", "--version", "9", "--hardware", "hw-c",
                          "--security-version", "-3")
            self.assertNotEqual(p.returncode, 0)
            self.assertIn("security_version", p.stderr)
            p = self.push(os.path.join(d, "missing"), "--name", "x", "--version", "1",
                          "--hardware", "h", "--security-version", "1")
            self.assertNotEqual(p.returncode, 0)
            p = self.dep.cli("push", img, "--name", "x")
            self.assertEqual(p.returncode, 2)
            from deploy import free_ports
            closed = free_ports(1)[0]
            p = self.dep.cli("push", img, "--name", "x", "--version", "1", "--hardware", "h",
                             "--security-version", "1", "--url", "http://127.0.0.1:%d" % closed,
                             env=self.dep.env(SIGNET_TOKEN=self.ci))
            self.assertEqual(p.returncode, 2, p.stderr)
            self.assertIn("127.0.0.1:%d" % closed, p.stderr)
            p = self.push(img, "--name", "x", "--version", "1", "--hardware", "h",
                          "--security-version", "1", token="")
            self.assertEqual(p.returncode, 2)
            self.assertIn("SIGNET_TOKEN", p.stderr)

            # On a terminal, a progress bar on stderr; the id still alone on stdout.
            import pty
            img2 = img + ".tty"
            with open(img2, "wb") as f:
                f.write(data + b"tty")
            master, slave = pty.openpty()
            env = self.dep.env(SIGNET_TOKEN=self.ci)
            proc = subprocess.Popen(
                [self.dep_signet(), "push", img2, "--name", "tty", "--version", "1", "--hardware",
                 "hw-c", "--security-version", "0", "--url", "http://127.0.0.1:%d" % self.wp],
                stdout=subprocess.PIPE, stderr=slave, env=env, cwd=self.dep.dir)
            os.close(slave)
            out, _ = proc.communicate(timeout=60)
            tty = b""
            while True:
                try:
                    c = os.read(master, 65536)
                except OSError:
                    break
                if not c:
                    break
                tty += c
            os.close(master)
            self.assertEqual(proc.returncode, 0, tty)
            self.assertIn(b"100.0%", tty)
            self.assertRegex(out.decode().strip(), FW_ID)

            # verify-manifest: the read side's document, the keys, the image.
            g = self.get_fw("sha256:" + sha, ev["position"])
            doc = os.path.join(d, "manifest.json")
            keys = os.path.join(d, "keys.json")
            with open(doc, "w") as f:
                json.dump(g.body, f)
            with open(keys, "w") as f:
                json.dump(self.keys, f)
            v = self.dep.cli("verify-manifest", "--keys", keys, doc, img)
            self.assertEqual(v.returncode, 0, v.stdout + v.stderr)
            # A tampered manifest.
            bad = dict(g.body, manifest=dict(g.body["manifest"], security_version=4))
            with open(doc + ".bad", "w") as f:
                json.dump(bad, f)
            v = self.dep.cli("verify-manifest", "--keys", keys, doc + ".bad", img)
            self.assertEqual(v.returncode, 1, v.stdout + v.stderr)
            # A tampered image (one byte).
            with open(img + ".bad", "wb") as f:
                f.write(data[:1000] + bytes([data[1000] ^ 1]) + data[1001:])
            v = self.dep.cli("verify-manifest", "--keys", keys, doc, img + ".bad")
            self.assertEqual(v.returncode, 1, v.stdout + v.stderr)


if __name__ == "__main__":
    unittest.main()
