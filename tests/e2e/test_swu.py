#!/usr/bin/python3
"""The devices certificate and SWUpdate images (issue 9, items 1 and 2).

- `signet init` gives the devices key a self-signed certificate made in the
  HSM (CA:TRUE, keyUsage digitalSignature+keyCertSign, both critical, no EKU),
  served as certificate_pem on GET /v1/keys; a second init changes nothing.
- `signet csr` / `signet import-cert` with a test CA made by openssl: the
  chain is served, a foreign or misordered chain is refused.
- signetd refuses a token whose certificate is not the key's, or that has
  none (a token from before certificates), until `signet init` runs.
- POST /v1/firmware?format=swu: a .swu built here with cpio (newc and crc)
  is stored with sw-description.sig right after sw-description, and Debian's
  swupdate in check mode (-c -i, -k the served certificate) logs that the
  signature verifies; a tampered copy is refused by swupdate. Every refusal
  class is a 400 problem and stores nothing. Memory stays flat on a large
  archive, and a hung HSM costs the upload a 503 within the deadline.

swupdate needs -H board:revision matching sw-description's
hardware-compatibility in check mode too (it reads /etc/hwrevision
otherwise); it runs with TMPDIR in the test's directory (its control sockets
go there)."""

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from client import assert_problem, get_keys, head_of, request  # noqa: E402
from deploy import SIGNET, E2ETestCase  # noqa: E402

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402

HW = "signet-test:1.0"
SWUPDATE = shutil.which("swupdate") or "/usr/bin/swupdate"


def devices_entry(port):
    keys = get_keys(port)["keys"]
    return [k for k in keys if k["purpose"] == "devices"][0], keys


def pem_chain(text):
    marker = "-----BEGIN CERTIFICATE-----"
    return [x509.load_pem_x509_certificate((marker + part).encode())
            for part in text.split(marker)[1:]]


def same_key(cert, public_key_pem):
    pub = serialization.load_pem_public_key(public_key_pem.encode())
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return cert.public_key().public_bytes(*fmt) == pub.public_bytes(*fmt)


def read_text(path):
    with open(path) as f:
        return f.read()


def run(args, cwd, env=None, timeout=120):
    p = subprocess.run(args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       timeout=timeout)
    return p.returncode, p.stdout.decode("utf-8", "replace")


# ---- building .swu archives ----

def cpio_entry(name, data, crc=False, mode=0o100644):
    nb = (name if isinstance(name, bytes) else name.encode()) + b"\0"
    check = sum(data) & 0xFFFFFFFF if crc else 0
    fields = [1, mode, 0, 0, 1, 1700000000, len(data), 0, 0, 0, 0, len(nb), check]
    hdr = (b"070702" if crc else b"070701") + b"".join(b"%08X" % f for f in fields)
    out = hdr + nb
    out += b"\0" * (-len(out) % 4)
    return out + data + b"\0" * (-len(data) % 4)


def cpio_archive(entries, crc=False):
    out = b"".join(cpio_entry(n, d, crc) for n, d in entries)
    out += cpio_entry("TRAILER!!!", b"", crc, mode=0)
    return out + b"\0" * (-len(out) % 512)


def sw_description(files, outdir, hashes=None):
    """libconfig sw-description: one rawfile entry per (name, data), written
    to outdir/name, hardware signet-test 1.0."""
    hashes = hashes or {}
    items = []
    for name, data in files:
        h = hashes.get(name, hashlib.sha256(data).hexdigest())
        sha = "" if h is None else 'sha256 = "%s";' % h
        items.append('{ filename = "%s"; path = "%s/%s"; type = "rawfile"; %s }'
                     % (name, outdir, name, sha))
    return ('software =\n{\n  version = "1.0.0";\n  description = "signet e2e";\n'
            '  hardware-compatibility = [ "1.0" ];\n  files: (\n    %s\n  );\n};\n'
            % ",\n    ".join(items)).encode()


def cpio_tool(workdir, names, fmt="newc"):
    """The archive as GNU cpio makes it, from files in workdir, in order."""
    p = subprocess.run(["cpio", "-o", "-H", fmt, "--quiet"], cwd=workdir,
                       input=("\n".join(names) + "\n").encode(), stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, check=True)
    return p.stdout


def cpio_names(path):
    with open(path, "rb") as f:
        p = subprocess.run(["cpio", "-it", "--quiet"], stdin=f, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, check=True)
    return p.stdout.decode().split()


def upload(dep, data, name, version, fmt="swu", headers=None, timeout=120):
    hdrs = {"Content-Type": "application/octet-stream"}
    hdrs.update(headers or {})
    path = "/v1/firmware?name=%s&version=%s&hardware=hw-a&security_version=1&format=%s" % (
        name, version, fmt)
    return request("POST", dep.write_port, path, token=dep.token("ci"), body=data, headers=hdrs,
                   timeout=timeout)


def swupdate_outcome(log):
    """"ok" (installed, or checked in -c), "refused" (the signature, the
    signer's certificate or the cpio checksum did not verify), or None: Debian's swupdate 2022.12 in -i
    mode sometimes ends the update before it has started (its log says
    "[endupdate] : SWUpdate was successful !" first, then removes its
    temporary files under the running extraction): no verdict at all."""
    if "SWUPDATE successful" in log:
        return "ok"
    if any(m in log for m in ("Signature verification failed", "Checksum WRONG",
                              "Authentication of all signatures failed")):
        return "refused"
    return None


def swupdate_check(image, cert, cwd, attempts=5):
    """swupdate -c -i image -k cert -H HW (check mode, nothing installed):
    (outcome, log), run again while a run gives no verdict (see
    swupdate_outcome). Each run gets a TMPDIR of its own (its control
    sockets and extracted files go there)."""
    log = ""
    for _ in range(attempts):
        tmp = tempfile.mkdtemp(prefix="swupdate-", dir=cwd)
        env = dict(os.environ, TMPDIR=tmp)
        _, log = run([SWUPDATE, "-v", "-c", "-i", image, "-k", cert, "-H", HW], cwd, env=env)
        outcome = swupdate_outcome(log)
        if outcome:
            return outcome, log
    return None, log


class Certificate(E2ETestCase):
    """signet init's certificate, csr and import-cert, and signetd's check."""

    def setUp(self):
        self.dep = self.deployment()
        self.init_out = self.dep.init()

    def cli_ok(self, *args):
        p = self.dep.cli(*args)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        return p.stdout

    def refused_start(self, needle):
        srv = self.dep.spawn()
        try:
            srv.proc.wait(30)
        except subprocess.TimeoutExpired:
            srv.stop(kill=True)
            self.fail("signetd started with a bad certificate")
        self.assertNotEqual(srv.proc.returncode, 0)
        err = srv.stderr_text().strip().splitlines()
        self.assertTrue(err, "no reason given")
        self.assertIn(needle, err[-1])
        return err[-1]

    def test_init_certificate_served_and_matching(self):
        self.assertIn('made a self-signed certificate for key "devices"', self.init_out.stdout)
        self.assertIn('certificate of key "devices" present', self.dep.cli_outputs[-1])
        srv = self.dep.start()
        dev, keys = devices_entry(self.dep.read_port)
        for k in keys:
            if k["purpose"] != "devices":
                self.assertNotIn("certificate_pem", k)
        chain = pem_chain(dev["certificate_pem"])
        self.assertEqual(len(chain), 1)
        cert = chain[0]
        self.assertTrue(same_key(cert, dev["public_key_pem"]))
        self.assertIsInstance(cert.public_key(), ec.EllipticCurvePublicKey)
        self.assertEqual(cert.subject, cert.issuer)
        self.assertIn("signet devices signet", cert.subject.rfc4514_string())
        cert.public_key().verify(cert.signature, cert.tbs_certificate_bytes,
                                 ec.ECDSA(hashes.SHA256()))
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
        self.assertTrue(bc.critical)
        self.assertTrue(bc.value.ca)
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
        self.assertTrue(ku.critical)
        self.assertTrue(ku.value.digital_signature and ku.value.key_cert_sign)
        with self.assertRaises(x509.ExtensionNotFound):
            cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
        self.assertGreater(cert.not_valid_after.year, 9000)
        # The write listener serves the same document, and so does a
        # read-only node (it holds no devices private key).
        self.assertEqual(devices_entry(self.dep.write_port)[0], dev)
        srv.stop()
        srv = self.dep.start(role="read")
        self.assertEqual(devices_entry(self.dep.read_port)[0], dev)
        srv.stop()

    def make_ca(self):
        d = self.dep.dir
        rc, out = run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                       "ec_paramgen_curve:P-256", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
                       "-days", "3650", "-subj", "/CN=test CA", "-addext",
                       "basicConstraints=critical,CA:TRUE", "-addext",
                       "keyUsage=critical,keyCertSign,cRLSign"], d)
        self.assertEqual(rc, 0, out)

    def issue(self, csr_pem):
        d = self.dep.dir
        with open(os.path.join(d, "req.pem"), "w") as f:
            f.write(csr_pem)
        with open(os.path.join(d, "leaf.ext"), "w") as f:
            f.write("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n")
        rc, out = run(["openssl", "x509", "-req", "-in", "req.pem", "-CA", "ca.pem", "-CAkey",
                       "ca.key", "-CAcreateserial", "-days", "365", "-extfile", "leaf.ext",
                       "-out", "leaf.pem"], d)
        self.assertEqual(rc, 0, out)

    def test_csr_import_round_trip_and_refusals(self):
        d = self.dep.dir
        csr_pem = self.cli_ok("csr", "--config", self.dep.config_path, "--purpose", "devices")
        csr = x509.load_pem_x509_csr(csr_pem.encode())
        self.assertTrue(csr.is_signature_valid)
        # As CONFIG.md writes it, without --config: $SIGNET_CONFIG names it.
        env = dict(self.dep.env(), SIGNET_CONFIG=self.dep.config_path)
        p = self.dep.cli("csr", "--purpose", "devices", env=env)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn("configuration %s (no --config)" % self.dep.config_path, p.stderr)
        again = x509.load_pem_x509_csr(p.stdout.encode())
        self.assertEqual(again.public_key().public_numbers(), csr.public_key().public_numbers())
        env.pop("SIGNET_CONFIG")  # then ./signet.json (the CLI runs in the deployment's dir)
        p = self.dep.cli("csr", "--purpose", "devices", env=env)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn("configuration signet.json (no --config)", p.stderr)
        p = self.dep.cli("csr", "--config", os.path.join(d, "missing.json"), "--purpose", "devices")
        self.assertNotEqual(p.returncode, 0)
        srv = self.dep.start()
        dev, _ = devices_entry(self.dep.read_port)
        srv.stop()
        self.assertTrue(same_key(csr, dev["public_key_pem"]))
        self.make_ca()
        self.issue(csr_pem)
        leaf, ca = read_text(os.path.join(d, "leaf.pem")), read_text(os.path.join(d, "ca.pem"))

        # Refused: a certificate of another key; the chain in the wrong order.
        rc, out = run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                       "ec_paramgen_curve:P-256", "-nodes", "-keyout", "other.key", "-out",
                       "other.pem", "-days", "30", "-subj", "/CN=other"], d)
        self.assertEqual(rc, 0, out)
        cases = [("other.pem", read_text(os.path.join(d, "other.pem")), "is not key \"devices\""),
                 ("reversed.pem", ca + leaf, "is not key \"devices\""),
                 ("wrongca.pem", leaf + read_text(os.path.join(d, "other.pem")),
                  "is not issued and signed by certificate 2"),
                 ("empty.pem", "", "no PEM certificate")]
        for fn, text, needle in cases:
            with open(os.path.join(d, fn), "w") as f:
                f.write(text)
            p = self.dep.cli("import-cert", "--config", self.dep.config_path, "--purpose",
                             "devices", fn)
            self.assertNotEqual(p.returncode, 0, fn)
            self.assertIn(needle, p.stderr, fn)
        srv = self.dep.start()
        self.assertEqual(devices_entry(self.dep.read_port)[0], dev, "a refusal changed nothing")
        srv.stop()

        with open(os.path.join(d, "chain.pem"), "w") as f:
            f.write(leaf + ca)
        out = self.cli_ok("import-cert", "--config", self.dep.config_path, "--purpose", "devices",
                          "chain.pem")
        self.assertIn("stored the certificate", out)
        srv = self.dep.start()
        dev2, _ = devices_entry(self.dep.read_port)
        chain = pem_chain(dev2["certificate_pem"])
        self.assertEqual([c.subject.rfc4514_string() for c in chain],
                         ["CN=signet devices signet", "CN=test CA"])
        self.assertTrue(same_key(chain[0], dev2["public_key_pem"]))
        self.assertEqual(dev2["key_id"], dev["key_id"])

        # An image signed now verifies with the organisation's CA as -k.
        work = os.path.join(d, "img")
        os.mkdir(work)
        payload = os.urandom(3000)
        swu = cpio_archive([("sw-description", sw_description([("p.bin", payload)], work)),
                            ("p.bin", payload)])
        r = upload(self.dep, swu, "ca-signed", "1")
        self.assertEqual(r.status, 201, r.body)
        img = request("GET", self.dep.read_port,
                      "/v1/firmware/%s/image?min_position=%d&wait_ms=10000"
                      % (r.body["firmware_id"], r.body["position"]), token=self.dep.token("ci"))
        self.assertEqual(img.status, 200)
        with open(os.path.join(d, "ca.swu"), "wb") as f:
            f.write(img.raw)
        outcome, log = swupdate_check(os.path.join(d, "ca.swu"), os.path.join(d, "ca.pem"), d)
        self.assertEqual(outcome, "ok", log)
        self.assertIn("Verified OK", log)
        srv.stop()

        # init keeps the imported chain.
        p = self.dep.cli("init", "--config", self.dep.config_path)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn('certificate of key "devices" present', p.stdout)

    def pkcs11_tool(self, *args):
        p = subprocess.run(["pkcs11-tool", "--module", self.dep.module, "--token-label",
                            self.dep.token_label, "--login", "--pin", self.dep.pin] + list(args),
                           env=self.dep.env(), cwd=self.dep.dir, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT)
        self.assertEqual(p.returncode, 0,
                         p.stdout.decode(errors="replace").replace(self.dep.pin, "<pin>"))

    def test_signetd_refuses_missing_or_foreign_certificate(self):
        d = self.dep.dir
        # A token from before certificates: none. signetd says to run init.
        self.pkcs11_tool("--delete-object", "--type", "cert", "--label", "devices")
        line = self.refused_start("holds no certificate for key \"devices\"")
        self.assertIn("signet init", line)
        # A certificate of another key planted under the devices label and id.
        rc, out = run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                       "ec_paramgen_curve:P-256", "-nodes", "-keyout", "o.key", "-outform", "DER",
                       "-out", "o.der", "-days", "30", "-subj", "/CN=o"], d)
        self.assertEqual(rc, 0, out)
        self.pkcs11_tool("--write-object", "o.der", "--type", "cert", "--label", "devices",
                         "--id", b"devices".hex())
        self.refused_start("is not that key's")
        # Put right: remove it, and init makes the self-signed one again.
        self.pkcs11_tool("--delete-object", "--type", "cert", "--label", "devices")
        p = self.dep.cli("init", "--config", self.dep.config_path)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn("made a self-signed certificate", p.stdout)
        srv = self.dep.start()
        dev, _ = devices_entry(self.dep.read_port)
        self.assertTrue(same_key(pem_chain(dev["certificate_pem"])[0], dev["public_key_pem"]))
        srv.stop()


class SwuUpload(E2ETestCase):
    """format=swu: checked while streaming, signed in the HSM, verified by
    swupdate."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.start_deployment()
        cls.ci = cls.dep.token("ci")
        dev, _ = devices_entry(cls.dep.read_port)
        cls.cert = os.path.join(cls.dep.dir, "devices-cert.pem")
        with open(cls.cert, "w") as f:
            f.write(dev["certificate_pem"])

    def workdir(self):
        w = os.path.join(self.dep.dir, self.unique("w"))
        os.mkdir(w)
        return w

    def blobs(self):
        root = os.path.join(self.dep.dir, "var", "blobs", "sha256")
        return sorted(os.listdir(root)) if os.path.isdir(root) else []

    def fetch(self, fid, dest, position=0):
        r = request("GET", self.dep.read_port, "/v1/firmware/%s/image?min_position=%d&wait_ms=10000"
                    % (fid, position), token=self.ci, timeout=120)
        self.assertEqual(r.status, 200)
        with open(dest, "wb") as f:
            f.write(r.raw)
        return r.raw

    def test_signed_archive_verifies_with_swupdate(self):
        for fmt in ("newc", "crc"):
            with self.subTest(fmt=fmt):
                w = self.workdir()
                files = [("rootfs.img", os.urandom(70000)), ("app.bin", b"app v1\n" * 100)]
                for n, data in files:
                    with open(os.path.join(w, n), "wb") as f:
                        f.write(data)
                with open(os.path.join(w, "sw-description"), "wb") as f:
                    f.write(sw_description(files, os.path.join(w, "installed")))
                swu = cpio_tool(w, ["sw-description", "rootfs.img", "app.bin"], fmt)
                r = upload(self.dep, swu, self.unique("img"), "1")
                self.assertEqual(r.status, 201, r.body)
                self.assertEqual(r.body["manifest"]["size"], r.body["size"])
                stored_path = os.path.join(w, "stored.swu")
                stored = self.fetch(r.body["firmware_id"], stored_path, r.body["position"])
                self.assertEqual(r.body["firmware_id"],
                                 "sha256:" + hashlib.sha256(stored).hexdigest())
                self.assertEqual(cpio_names(stored_path),
                                 ["sw-description", "sw-description.sig", "rootfs.img", "app.bin"])
                # The upload byte for byte, with one entry inserted after
                # sw-description's (header and name 128 bytes, data padded to 4).
                desc_len = os.path.getsize(os.path.join(w, "sw-description"))
                at = 128 + desc_len + (-desc_len % 4)
                self.assertEqual(stored[:at], swu[:at])
                self.assertTrue(stored.endswith(swu[at:]))
                self.assertEqual(stored[at + 110:at + 129], b"sw-description.sig\0")
                # openssl agrees: detached CMS over sw-description.
                out = os.path.join(w, "x")
                os.mkdir(out)
                with open(stored_path, "rb") as f:
                    subprocess.run(["cpio", "-id", "--quiet", "sw-description",
                                    "sw-description.sig"], cwd=out, stdin=f, check=True)
                with open(os.path.join(out, "sw-description"), "rb") as f, \
                        open(os.path.join(w, "sw-description"), "rb") as g:
                    self.assertEqual(f.read(), g.read())
                rc, log = run(["openssl", "cms", "-verify", "-binary", "-inform", "DER", "-in",
                               "sw-description.sig", "-content", "sw-description", "-CAfile",
                               self.cert, "-out", "/dev/null"], out)
                self.assertEqual(rc, 0, log)
                rc, log = run(["openssl", "cms", "-cmsout", "-print", "-inform", "DER", "-in",
                               "sw-description.sig"], out)
                for attr in ("contentType", "signingTime", "messageDigest"):
                    self.assertIn(attr, log)
                self.assertIn("eContent: <ABSENT>", log)
                self.assertNotIn("SMIMECapabilities", log)

                outcome, log = swupdate_check(stored_path, self.cert, w)
                self.assertEqual(outcome, "ok", log)
                self.assertIn("Verified OK", log)
                self.assertIn("Hardware compatibility verified", log)
                self.assertNotRegex(log, r"\[ERROR\]")

                # One flipped byte in the stored sw-description: swupdate refuses.
                i = stored.index(b'description = "signet e2e"')
                tampered = bytearray(stored)
                tampered[i + 15] ^= 0x01
                if fmt == "crc":  # keep cpio's checksum right: the signature must catch it
                    tampered[102:110] = b"%08X" % (sum(tampered[128:128 + desc_len]) & 0xFFFFFFFF)
                with open(os.path.join(w, "tampered.swu"), "wb") as f:
                    f.write(tampered)
                outcome, log = swupdate_check(os.path.join(w, "tampered.swu"), self.cert, w)
                self.assertEqual(outcome, "refused", log)
                self.assertIn("Signature verification failed", log)
                # And a certificate that is not signet's does not verify it.
                rc, out2 = run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                                "ec_paramgen_curve:P-256", "-nodes", "-keyout", "x.key", "-out",
                                "x.pem", "-days", "30", "-subj", "/CN=x", "-addext",
                                "basicConstraints=critical,CA:TRUE"], w)
                self.assertEqual(rc, 0, out2)
                outcome, log = swupdate_check(stored_path, os.path.join(w, "x.pem"), w)
                self.assertEqual(outcome, "refused", log)
                self.assertIn("Authentication of all signatures failed", log)

    def test_firmware_event_says_swu(self):
        w = self.workdir()
        data = b"payload\n"
        swu = cpio_archive([("sw-description", sw_description([("a", data)], w)), ("a", data)])
        r = upload(self.dep, swu, self.unique("ev"), "1")
        self.assertEqual(r.status, 201, r.body)
        ev = request("GET", self.dep.read_port, "/v1/events?after=%d&limit=1&min_position=%d" % (
            r.body["position"] - 1, r.body["position"]), token=self.audit).body["events"][0]
        self.assertEqual(ev["type"], "FirmwareUploaded")
        self.assertEqual(ev["data"]["format"], "swu")
        self.assertEqual(ev["data"]["firmware_id"], r.body["firmware_id"])

    def test_refusals_store_nothing(self):
        w = self.workdir()
        a, b = os.urandom(2000), b"second payload"
        files = [("a.img", a), ("b.img", b)]
        desc = sw_description(files, w)

        def arch(entries, crc=False):
            return cpio_archive(entries, crc)

        good = arch([("sw-description", desc), ("a.img", a), ("b.img", b)])
        cases = [
            ("tampered payload", arch([("sw-description", desc), ("a.img", a[:-1] + bytes([a[-1] ^ 0xFF])),
                                       ("b.img", b)]),
             'payload "a.img" does not match its sha256'),
            ("wrong hash", arch([("sw-description", sw_description(files, w, {"b.img": "0" * 64})),
                                 ("a.img", a), ("b.img", b)]),
             'payload "b.img" does not match its sha256'),
            ("no sha256", arch([("sw-description", sw_description(files, w, {"b.img": None})),
                                ("a.img", a), ("b.img", b)]),
             'payload "b.img" has no sha256'),
            ("missing payload", arch([("sw-description", desc), ("a.img", a)]),
             'payload "b.img" named in sw-description is not in the archive'),
            ("not first", arch([("a.img", a), ("sw-description", desc), ("b.img", b)]),
             "sw-description must be first"),
            ("not parseable", arch([("sw-description", b"software = { images: ( {"),
                                    ("a.img", a)]),
             "neither JSON nor valid libconfig"),
            ("too large", arch([("sw-description", desc + b" " * (256 * 1024)), ("a.img", a)]),
             "it must be 1 to 262144"),
            ("already signed", arch([("sw-description", desc), ("sw-description.sig", b"x" * 64),
                                     ("a.img", a), ("b.img", b)]),
             "already holds sw-description.sig"),
            ("truncated", good[:len(good) - 700], "before its cpio trailer"),
            ("not cpio", os.urandom(4096), "not a cpio archive"),
            ("unnamed entry", arch([("sw-description", desc), ("a.img", a), ("b.img", b),
                                    ("extra", b"x")]),
             '"extra" is not a payload sw-description names'),
        ]
        # Path tricks (issue 14, defect 19): named in sw-description, or only
        # in the archive; and names that are not printable UTF-8.
        for trick in ("../../etc/x", "/etc/x", "a/../../x", ".."):
            tf = [("a.img", a), (trick, b)]
            cases.append(("path trick %s" % trick,
                          arch([("sw-description", sw_description(tf, w)), ("a.img", a),
                                (trick, b)]),
                          'names payload "%s", whose filename ' % trick))
            cases.append(("unnamed path trick %s" % trick,
                          arch([("sw-description", desc), (trick, b)]),
                          'cpio entry "%s" is refused: its name ' % trick))
        for raw in (b"a\x01b", b"\xffb.img", b"\xc0\xaf"):
            cases.append(("unprintable name %r" % raw,
                          arch([("sw-description", desc), ("a.img", a), (raw, b)]),
                          'cpio entry "(unprintable)" is refused'))
        head = head_of(self.dep.read_port, self.audit)
        blobs = self.blobs()
        for what, data, detail in cases:
            r = upload(self.dep, data, self.unique("bad"), "1")
            assert_problem(r, 400, msg=what)
            self.assertIn(detail, r.body["detail"], what)
        self.assertEqual(head_of(self.dep.read_port, self.audit), head, "an event was appended")
        self.assertEqual(self.blobs(), blobs, "a blob was stored")
        tmp = os.path.join(self.dep.dir, "var", "tmp")
        self.assertEqual(os.listdir(tmp) if os.path.isdir(tmp) else [], [], "spool left behind")
        # The good one is taken.
        r = upload(self.dep, good, self.unique("good"), "1")
        self.assertEqual(r.status, 201, r.body)

    def test_idempotency_key_retry(self):
        """The stored archive differs on every signing (signingTime, ECDSA),
        so Idempotency-Key compares the body as sent: a retry gets the first
        answer, not 422."""
        w = self.workdir()
        data = os.urandom(500)
        swu = cpio_archive([("sw-description", sw_description([("p", data)], w)), ("p", data)])
        name = self.unique("idem")
        first = upload(self.dep, swu, name, "1", headers={"Idempotency-Key": name})
        self.assertEqual(first.status, 201, first.body)
        again = upload(self.dep, swu, name, "1", headers={"Idempotency-Key": name})
        self.assertEqual((again.status, again.body), (first.status, first.body))
        other = upload(self.dep, swu + b"\0" * 512, name, "1", headers={"Idempotency-Key": name})
        assert_problem(other, 422, msg="same key, other body")

    def test_idempotency_key_retries_leave_no_blob(self):
        """Issue 14, defect 24: each retry of one .swu with the same
        Idempotency-Key is signed anew, so it stores other bytes than the
        first; it is answered with the first answer, and its own blob, which
        no event names, must go at once (6 tries left 5 full-size orphans
        until the next restart)."""
        w = self.workdir()
        data = os.urandom(200000)
        swu = cpio_archive([("sw-description", sw_description([("p", data)], w)), ("p", data)])
        name = self.unique("orphan")
        before = set(self.blobs())
        first = upload(self.dep, swu, name, "1", headers={"Idempotency-Key": name})
        self.assertEqual(first.status, 201, first.body)
        for i in range(5):
            again = upload(self.dep, swu, name, "1", headers={"Idempotency-Key": name})
            self.assertEqual((again.status, again.body), (first.status, first.body), i)
        self.assertEqual(set(self.blobs()) - before, {first.body["sha256"]},
                         "retries left blobs no event names")

    def test_signet_push_format_swu(self):
        w = self.workdir()
        data = os.urandom(10000)
        path = os.path.join(w, "push.swu")
        with open(path, "wb") as f:
            f.write(cpio_archive([("sw-description", sw_description([("p", data)], w)),
                                  ("p", data)]))
        env = self.dep.env(SIGNET_TOKEN=self.ci)
        p = subprocess.run([SIGNET, "push", path, "--name", self.unique("push"), "--version", "1",
                            "--hardware", "hw-a", "--security-version", "1", "--format", "swu",
                            "--url", "http://127.0.0.1:%d" % self.dep.write_port],
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
        self.assertEqual(p.returncode, 0, p.stderr)
        fid = p.stdout.decode().strip()
        self.assertRegex(fid, r"^sha256:[0-9a-f]{64}$")
        stored = self.fetch(fid, os.path.join(w, "stored.swu"),
                            head_of(self.dep.read_port, self.audit))
        self.assertIn(b"sw-description.sig", stored)
        outcome, log = swupdate_check(os.path.join(w, "stored.swu"), self.cert, w)
        self.assertEqual(outcome, "ok", log)
        self.assertIn("Verified OK", log)

    def test_memory_flat_on_a_large_archive(self):
        """A 256 MiB payload streams through; signetd's peak RSS grows by
        far less than the archive (spooled to disk, never held)."""
        size = 256 << 20
        block = hashlib.sha256(b"flat").digest() * 32768  # 1 MiB
        h = hashlib.sha256()
        for _ in range(size // len(block)):
            h.update(block)
        w = self.workdir()
        desc = sw_description([("big.img", b"")], w, {"big.img": h.hexdigest()})
        head = cpio_entry("sw-description", desc)
        nb = b"big.img\0"
        fields = [2, 0o100644, 0, 0, 1, 1700000000, size, 0, 0, 0, 0, len(nb), 0]
        big_hdr = b"070701" + b"".join(b"%08X" % f for f in fields) + nb
        big_hdr += b"\0" * (-len(big_hdr) % 4)
        tail = cpio_entry("TRAILER!!!", b"", mode=0)
        total = len(head) + len(big_hdr) + size + len(tail)

        def body():
            yield head + big_hdr
            for _ in range(size // len(block)):
                yield block
            yield tail

        def hwm():
            with open("/proc/%d/status" % self.srv.proc.pid) as f:
                return int(re.search(r"VmHWM:\s+(\d+) kB", f.read()).group(1))

        before = hwm()
        r = upload(self.dep, body(), self.unique("big"), "1",
                   headers={"Content-Length": str(total)}, timeout=600)
        self.assertEqual(r.status, 201, r.body)
        grew = hwm() - before
        print("swu: %d MiB archive, signetd peak RSS grew by %d KiB" % (size >> 20, grew),
              file=sys.stderr)
        self.assertLess(grew, 64 * 1024, "peak RSS grew by %d KiB" % grew)
        self.assertGreater(r.body["size"], total)
        self.assertLess(r.body["size"], total + 4096)


class SwuHungHsm(E2ETestCase):
    """The CMS signature runs with the signer's deadline: a hung HSM costs an
    upload a 503 within the deadline, and nothing is stored."""

    TIMEOUT_MS = 500

    def test_hung_hsm(self):
        def mutate(c):
            c["pkcs11"]["sign_timeout_ms"] = self.TIMEOUT_MS
        dep = self.deployment(faulty=True, mutate=mutate)
        dep.init()
        dep.start()
        w = os.path.join(dep.dir, "w")
        os.mkdir(w)
        data = b"x" * 1000
        swu = cpio_archive([("sw-description", sw_description([("p", data)], w)), ("p", data)])
        dep.fault.set("block")
        try:
            t0 = time.monotonic()
            r = upload(dep, swu, "hang", "1", timeout=60)
            took = time.monotonic() - t0
            assert_problem(r, 503, msg="upload while the HSM hangs")
            self.assertLess(took, 10, "the upload waited %.1f s on a hung HSM" % took)
        finally:
            dep.fault.set(None)
        root = os.path.join(dep.dir, "var", "blobs", "sha256")
        self.assertEqual(os.listdir(root) if os.path.isdir(root) else [], [])


if __name__ == "__main__":
    unittest.main(verbosity=2)
