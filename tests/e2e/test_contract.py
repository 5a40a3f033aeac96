#!/usr/bin/python3
"""The contract as an outside suite sees it: firmware and OTA, command
authorization and the DDI facade, spoken only through what API.md and
CONFIG.md promise (documented paths, fields, status codes and command
lines; canonical bytes made here, not taken from the service). It prints
one line per check, OK or DEVIATION, and a summary; exit status 1 when
anything deviates.

Run: SIGNET_BUILD_DIR=$PWD/build python3 tests/e2e/test_contract.py
"""

import base64
import hashlib
import json
import os
import secrets
import struct
import subprocess
import sys
import tempfile
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import client  # noqa: E402  (plain http.client, nothing signet-specific)
from deploy import PRINCIPALS as DEPLOY_PRINCIPALS  # noqa: E402
from deploy import SIGNET, Deployment  # noqa: E402
from openapi_check import Spec  # noqa: E402  (docs/openapi.yaml against the answers)

RESULTS = []
# Every answer the suite gets, (port, method, path, token, Response): at
# the end each is checked against docs/openapi.yaml (openapi_conformance).
ANSWERS = []


def _token_of(token, headers):
    authz = (headers or {}).get("Authorization", "")
    return token or (authz.split(" ", 1)[1] if " " in authz else None)


def request(method, port, path, *a, **kw):
    r = client.request(method, port, path, *a, **kw)
    ANSWERS.append((port, method, path, _token_of(kw.get("token"), kw.get("headers")), r))
    return r


def send_tolerant(port, method, path, headers, *a, **kw):
    r = client.send_tolerant(port, method, path, headers, *a, **kw)
    if r is not None:
        ANSWERS.append((port, method, path, _token_of(None, headers), r))
    return r


def check(cond, what, detail=""):
    RESULTS.append((bool(cond), what, detail))
    print("%s %s%s" % ("OK        " if cond else "DEVIATION ", what,
                       "" if cond else " :: " + str(detail)[:700]), flush=True)
    return bool(cond)


def section(fn):
    def run(*a):
        print("\n== %s" % fn.__name__, flush=True)
        try:
            fn(*a)
        except Exception as e:  # a crash in a section is itself a finding
            check(False, "%s ran to its end" % fn.__name__, "%r\n%s" % (e, traceback.format_exc()[-1500:]))
    return run


def canonical(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def openssl_verify(doc, sig_b64, pub_pem, workdir):
    """stock `openssl dgst -sha256 -verify` over canonical(doc)."""
    d = tempfile.mkdtemp(dir=workdir)
    with open(os.path.join(d, "doc"), "wb") as f:
        f.write(canonical(doc))
    with open(os.path.join(d, "sig"), "wb") as f:
        f.write(base64.b64decode(sig_b64))
    with open(os.path.join(d, "pub.pem"), "w") as f:
        f.write(pub_pem)
    p = subprocess.run(["openssl", "dgst", "-sha256", "-verify", os.path.join(d, "pub.pem"),
                        "-signature", os.path.join(d, "sig"), os.path.join(d, "doc")],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return p.returncode == 0, p.stdout.decode()


def is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def types_ok(body, spec):
    """spec {field: type or tuple}; returns [problems]."""
    out = []
    if not isinstance(body, dict):
        return ["body is not a JSON object: %r" % (body,)]
    for k, t in spec.items():
        if k not in body:
            out.append("missing %s" % k)
        elif t == "int":
            if not is_int(body[k]):
                out.append("%s not an integer: %r" % (k, body[k]))
        elif not isinstance(body[k], t):
            out.append("%s has type %s: %r" % (k, type(body[k]).__name__, body[k]))
    return out


def is_problem(r, status):
    ct = (r.headers.get("Content-Type") or "").split(";")[0].strip()
    b = r.body
    return (r.status == status and ct == "application/problem+json" and isinstance(b, dict)
            and all(k in b for k in ("type", "title", "status", "detail")) and b.get("status") == status)


def bucket(rollout_id, device_id):
    d = hashlib.sha256((rollout_id + ":" + device_id).encode()).digest()
    return struct.unpack(">I", d[:4])[0] % 10000


# --------------------------------------------------------------------------
# The world
# --------------------------------------------------------------------------

FLEET = ["d-%03d" % i for i in range(200)]
OTHERS = (["h%d-%d" % (g, i) for g in range(4) for i in range(6)] + ["s-%d" % i for i in range(4)]
          + ["t-%d" % i for i in range(4)] + ["c-%d" % i for i in range(3)] + ["x-%d" % i for i in range(4)]
          + ["y-%d" % i for i in range(6)] + ["z-%d" % i for i in range(3)])
DEVICES = FLEET + OTHERS
DEV_TOK = {d: "tok_" + secrets.token_urlsafe(24) for d in DEVICES}
EXTRA = {"carol": ["approver"], "both": ["operator", "approver"]}
EXTRA_TOK = {n: "tok_" + secrets.token_urlsafe(24) for n in EXTRA}


def sha(s):
    return hashlib.sha256(s.encode()).hexdigest()


def mutate(cfg):
    cfg["approvals"] = {"default": 2, "actions": {"reboot": 1, "unlock-debug": 3}}
    cfg["ddi"] = {"tenant": "DEFAULT", "poll_seconds": 300}
    for d, t in DEV_TOK.items():
        cfg["principals"].append({"name": "dev:" + d, "token_sha256": sha(t), "roles": ["device"],
                                  "device_id": d})
    for n, roles in EXTRA.items():
        cfg["principals"].append({"name": n, "token_sha256": sha(EXTRA_TOK[n]), "roles": roles})
    return cfg


class World:
    def __init__(self):
        self.dep = Deployment(name="probe", mutate=mutate, max_image_bytes=8 << 20)
        self.wp, self.rp = self.dep.write_port, self.dep.read_port
        self.tok = dict(self.dep.tokens)
        self.tok.update(EXTRA_TOK)
        self.work = tempfile.mkdtemp(dir=self.dep.dir, prefix="probe-")
        self.ver = iter(range(1, 10 ** 6))

    def cli(self, *args, env=None):
        return self.dep.cli(*args, env=env)

    def w(self, method, path, who, body=None, headers=None):
        return request(method, self.wp, path, token=self.tok.get(who, DEV_TOK.get(who)), body=body,
                       headers=headers)

    def r(self, method, path, who, headers=None):
        return request(method, self.rp, path, token=self.tok.get(who, DEV_TOK.get(who)) if who else None,
                       headers=headers)

    def head(self):
        r = self.r("GET", "/v1/events?after=0&limit=1", "audit")
        return r.body["head"]

    def keys(self):
        return request("GET", self.rp, "/v1/keys").body

    def devkey(self):
        for k in self.keys()["keys"]:
            if k["purpose"] == "devices":
                return k
        raise AssertionError("no devices key")

    def events(self, after=0):
        out = []
        while True:
            r = self.r("GET", "/v1/events?after=%d&limit=1000" % after, "audit")
            evs = r.body["events"]
            if not evs:
                return out
            out += evs
            after = evs[-1]["position"]

    def upload(self, name, hardware, sv, data=None, fmt=None, headers=None, v=None):
        v = v if v is not None else next(self.ver)
        data = data if data is not None else b"img %d " % v + secrets.token_bytes(300)
        q = "name=%s&version=1.%d&hardware=%s&security_version=%d" % (name, v, hardware, sv)
        if fmt:
            q += "&format=" + fmt
        h = {"Content-Type": "application/octet-stream"}
        h.update(headers or {})
        r = self.w("POST", "/v1/firmware?" + q, "ci", body=data, headers=h)
        return r, data


def pos_header(r):
    return r.headers.get("Signet-Position")


# --------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------

@section
def keys_and_cert(W):
    r = request("GET", W.rp, "/v1/keys")
    check(r.status == 200, "GET /v1/keys 200", r)
    check(pos_header(r) is not None, "GET /v1/keys carries Signet-Position", dict(r.headers))
    purposes = {k.get("purpose") for k in r.body["keys"]}
    check({"events", "devices", "snapshots"} <= purposes, "keys of all three purposes", purposes)
    for k in r.body["keys"]:
        probs = types_ok(k, {"key_id": str, "purpose": str, "alg": str, "public_key_pem": str, "status": str})
        check(not probs and k["alg"] == "ES256", "key %s fields" % k.get("purpose"), probs or k.get("alg"))
    dk = W.devkey()
    check(isinstance(dk.get("certificate_pem"), str) and "BEGIN CERTIFICATE" in dk["certificate_pem"],
          "devices key has certificate_pem", dk.keys())
    p = os.path.join(W.work, "cert.pem")
    with open(p, "w") as f:
        f.write(dk["certificate_pem"])
    pub = subprocess.run(["openssl", "x509", "-in", p, "-noout", "-pubkey"], stdout=subprocess.PIPE).stdout.decode()
    check(pub.strip() == dk["public_key_pem"].strip(), "certificate_pem certifies the devices public key",
          (pub, dk["public_key_pem"]))


@section
def csr_import_cert(W, srv_holder):
    """CONFIG.md: `signet csr --purpose devices`, `signet import-cert --purpose devices CHAIN.pem`."""
    cfg = W.dep.config_path
    p = W.cli("csr", "--purpose", "devices")
    check(p.returncode == 0 and "CERTIFICATE REQUEST" in p.stdout,
          "`signet csr --purpose devices` exactly as CONFIG.md writes it (no --config)",
          "rc=%d out=%r err=%r" % (p.returncode, p.stdout[:200], p.stderr[:300]))
    p = W.cli("csr", "--purpose", "devices", "--config", cfg)
    if not check(p.returncode == 0 and "CERTIFICATE REQUEST" in p.stdout,
                 "`signet csr --purpose devices --config FILE` prints a CSR",
                 "rc=%d err=%r" % (p.returncode, p.stderr[:300])):
        return
    d = W.work
    csr = os.path.join(d, "dev.csr")
    with open(csr, "w") as f:
        f.write(p.stdout)
    v = subprocess.run(["openssl", "req", "-in", csr, "-noout", "-verify"], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT)
    check(v.returncode == 0, "CSR self-signature verifies", v.stdout)
    ca_key, ca_crt, leaf = (os.path.join(d, n) for n in ("ca.key", "ca.crt", "leaf.crt"))
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", ca_key, "-out", ca_crt, "-subj", "/CN=probe CA", "-days", "30",
                    "-addext", "basicConstraints=critical,CA:TRUE",
                    "-addext", "keyUsage=critical,keyCertSign,digitalSignature"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ext = os.path.join(d, "ext.cnf")
    with open(ext, "w") as f:
        f.write("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n")
    subprocess.run(["openssl", "x509", "-req", "-in", csr, "-CA", ca_crt, "-CAkey", ca_key,
                    "-CAcreateserial", "-out", leaf, "-days", "30", "-extfile", ext],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    chain = os.path.join(d, "chain.pem")
    with open(chain, "w") as f:
        f.write(open(leaf).read() + open(ca_crt).read())
    srv_holder[0].stop()
    p = W.cli("import-cert", "--purpose", "devices", chain)
    check(p.returncode == 0, "`signet import-cert --purpose devices CHAIN.pem` (no --config)",
          "rc=%d err=%r" % (p.returncode, p.stderr[:300]))
    if p.returncode != 0:
        p = W.cli("import-cert", "--purpose", "devices", "--config", cfg, chain)
        check(p.returncode == 0, "`signet import-cert --purpose devices --config FILE CHAIN.pem`",
              "rc=%d err=%r" % (p.returncode, p.stderr[:300]))
    srv_holder[0] = W.dep.start()
    dk = W.devkey()
    got = dk.get("certificate_pem", "")
    check(open(leaf).read().strip() in got and open(ca_crt).read().strip() in got,
          "certificate_pem is the imported chain after restart", got[:200])
    # A chain for another key is refused.
    other_key = os.path.join(d, "o.key")
    other = os.path.join(d, "o.crt")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", other_key, "-out", other, "-subj", "/CN=other", "-days", "3"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    p = W.cli("import-cert", "--purpose", "devices", "--config", cfg, other)
    check(p.returncode != 0, "import-cert of a certificate for another key is refused", p.returncode)


@section
def firmware(W):
    dk = W.devkey()
    data = b"probe image " + secrets.token_bytes(5000)
    idem = {"Idempotency-Key": "fw-" + secrets.token_hex(6)}
    h0 = W.head()
    r, _ = W.upload("fw-probe", "hw-f", 3, data=data, headers=idem)
    check(r.status == 201, "upload 201", r)
    probs = types_ok(r.body, {"firmware_id": str, "sha256": str, "size": "int", "manifest": dict,
                              "signature": str, "key_id": str, "position": "int"})
    check(not probs, "upload 201 fields and types", probs)
    up = r.body
    sha_hex = hashlib.sha256(data).hexdigest()
    check(up["firmware_id"] == "sha256:" + sha_hex, "firmware_id is sha256:<hex>", up["firmware_id"])
    check(up["sha256"] == sha_hex and up["size"] == len(data), "sha256/size", (up["sha256"], up["size"]))
    m = up["manifest"]
    check(set(m) == {"name", "version", "hardware", "security_version", "size", "sha256", "created", "uploader"},
          "manifest has exactly the eight fields", sorted(m))
    mp = types_ok(m, {"name": str, "version": str, "hardware": str, "security_version": "int", "size": "int",
                      "sha256": str, "created": str, "uploader": str})
    check(not mp, "manifest field types", (mp, m))
    check(m.get("sha256") in (sha_hex, "sha256:" + sha_hex), "manifest sha256 names the image", m.get("sha256"))
    check(m.get("uploader") == "ci" and m.get("security_version") == 3, "manifest uploader/security_version", m)
    check(up["key_id"] == dk["key_id"], "manifest key_id is the devices key", up["key_id"])
    ok, out = openssl_verify(m, up["signature"], dk["public_key_pem"], W.work)
    check(ok, "openssl dgst verifies the manifest canonicalized by the outside", out)
    # Idempotency-Key on the upload
    h1 = W.head()
    r2, _ = W.upload("fw-probe", "hw-f", 3, data=data, headers=idem, v=int(up["manifest"]["version"][2:]))
    check(r2.status == 201 and r2.body == up and W.head() == h1,
          "upload repeated with the same Idempotency-Key: first answer, nothing appended",
          (r2.status, r2.body, h1, W.head()))
    check(h1 > h0, "upload appended", (h0, h1))
    # GET /v1/firmware/{id}
    fid = up["firmware_id"]
    g = W.r("GET", "/v1/firmware/%s" % fid, "dev:" if False else "ops")
    check(g.status == 200 and not types_ok(g.body, {"manifest": dict, "signature": str, "key_id": str}),
          "GET /v1/firmware/{id} {manifest,signature,key_id}", g)
    check(g.status == 200 and g.body.get("manifest") == m and g.body.get("signature") == up["signature"],
          "GET /v1/firmware/{id} same manifest/signature as the upload", g.body)
    check(pos_header(g) is not None, "GET /v1/firmware/{id} Signet-Position", dict(g.headers))
    g = W.r("GET", "/v1/firmware/%s" % fid, "d-000")
    check(g.status == 200, "GET /v1/firmware/{id} by a device (any authenticated)", g.status)
    # verify-manifest CLI
    kp = os.path.join(W.work, "keys.json")
    with open(kp, "w") as f:
        json.dump(W.keys(), f)
    img = os.path.join(W.work, "img.bin")
    with open(img, "wb") as f:
        f.write(data)
    for label, doc in (("GET /v1/firmware/{id} answer", W.r("GET", "/v1/firmware/%s" % fid, "ops").body),
                       ("upload answer", up)):
        mf = os.path.join(W.work, "manifest.json")
        with open(mf, "w") as f:
            json.dump(doc, f)
        p = W.cli("verify-manifest", "--keys", kp, mf, img)
        check(p.returncode == 0, "signet verify-manifest accepts the %s as MANIFEST.json" % label,
              p.stdout + p.stderr)
    with open(img, "wb") as f:
        f.write(data[:-1] + bytes([data[-1] ^ 1]))
    p = W.cli("verify-manifest", "--keys", kp, mf, img)
    check(p.returncode != 0, "verify-manifest refuses an altered image", p.stdout + p.stderr)
    # Download
    path = "/v1/firmware/%s/image" % fid
    g = W.r("GET", path, "d-000")
    etag = g.headers.get("ETag")
    check(g.status == 200 and g.body == data, "image GET 200 bytes", g.status)
    check(etag == '"%s"' % sha_hex or etag == '"sha256:%s"' % sha_hex, "ETag is the quoted sha256", etag)
    check(g.headers.get("Content-Length") == str(len(data)) and g.headers.get("Accept-Ranges") == "bytes",
          "Content-Length/Accept-Ranges", dict(g.headers))
    check(pos_header(g) is not None, "image GET Signet-Position", dict(g.headers))
    g = W.r("GET", path, "d-000", headers={"Range": "bytes=100-199"})
    check(g.status == 206 and g.body == data[100:200]
          and g.headers.get("Content-Range") == "bytes 100-199/%d" % len(data), "Range 206", g)
    g = W.r("GET", path, "d-000", headers={"Range": "bytes=%d-" % (len(data) + 10)})
    check(g.status == 416, "unsatisfiable Range 416", g.status)
    g = W.r("GET", path, "d-000", headers={"If-None-Match": etag})
    check(g.status == 304, "If-None-Match 304", g.status)
    g = W.r("GET", path, "d-000", headers={"Range": "bytes=0-9", "If-Range": '"nope"'})
    check(g.status == 200 and g.body == data, "If-Range mismatch: whole image", g.status)
    g = W.r("GET", path, "d-000", headers={"Range": "bytes=0-9", "If-Range": etag})
    check(g.status == 206 and g.body == data[:10], "If-Range match: 206", g.status)
    g = W.r("HEAD", path, "d-000")
    check(g.status == 200 and g.headers.get("Content-Length") == str(len(data)) and g.raw == b"",
          "HEAD image", g)
    g = W.r("HEAD", "/v1/firmware/%s" % fid, "d-000")
    check(g.status == 200, "HEAD /v1/firmware/{id}", g.status)
    # errors
    v = m["version"]
    r = W.w("POST", "/v1/firmware?name=fw-probe&version=%s&hardware=hw-f&security_version=3" % v, "ci",
            body=b"another", headers={"Content-Type": "application/octet-stream"})
    check(is_problem(r, 409), "same name+version 409 problem+json", r)
    for q in ("name=a&version=1&hardware=h", "name=a&version=1&hardware=h&security_version=x",
              "version=1&hardware=h&security_version=1", "name=a&version=1&hardware=h&security_version=-1"):
        r = W.w("POST", "/v1/firmware?" + q, "ci", body=b"x", headers={"Content-Type": "application/octet-stream"})
        check(is_problem(r, 400), "upload with bad query %r 400" % q, r)
    r = send_tolerant(W.wp, "POST", "/v1/firmware?name=big&version=1&hardware=h&security_version=1",
                      {"Authorization": "Bearer " + W.tok["ci"], "Content-Type": "application/octet-stream"},
                      [b"\0" * (1 << 20)] * 8 + [b"\0"])
    check(r is not None and is_problem(r, 413), "upload over max_image_bytes 413", r)
    r = send_tolerant(W.wp, "POST", "/v1/firmware?name=bigc&version=1&hardware=h&security_version=1",
                      {"Authorization": "Bearer " + W.tok["ci"], "Content-Type": "application/octet-stream"},
                      [b"\0" * (1 << 20)] * 9, chunked=True)
    check(r is not None and is_problem(r, 413), "chunked upload over max_image_bytes 413", r)
    r = W.w("POST", "/v1/firmware?name=ct&version=1&hardware=h&security_version=1", "ci",
            body=b"x", headers={"Content-Type": "application/json"})
    check(is_problem(r, 415), "upload with Content-Type application/json 415", r)
    r = W.w("POST", "/v1/firmware?name=r&version=1&hardware=h&security_version=1", "ops",
            body=b"x", headers={"Content-Type": "application/octet-stream"})
    check(is_problem(r, 403), "upload by operator 403", r)
    r = request("POST", W.wp, "/v1/firmware?name=r&version=1&hardware=h&security_version=1",
                body=b"x", headers={"Content-Type": "application/octet-stream"})
    check(is_problem(r, 401), "upload without token 401", r)
    r = W.r("GET", "/v1/firmware/sha256:%s" % ("0" * 64), "ops")
    check(is_problem(r, 404), "unknown firmware 404", r)
    r = request("GET", W.rp, "/v1/firmware/%s" % fid)
    check(is_problem(r, 401), "GET firmware without token 401", r)
    # CLI push
    f = os.path.join(W.work, "push.bin")
    pdata = b"pushed " + secrets.token_bytes(4000)
    with open(f, "wb") as fh:
        fh.write(pdata)
    env = W.dep.env(SIGNET_TOKEN=W.tok["ci"])
    p = W.cli("push", f, "--name", "pushed", "--version", "9.9", "--hardware", "hw-f",
              "--security-version", "1", "--url", "http://127.0.0.1:%d" % W.wp, env=env)
    check(p.returncode == 0 and p.stdout.strip() == "sha256:" + hashlib.sha256(pdata).hexdigest(),
          "signet push prints the firmware id (and nothing else when not a terminal)",
          (p.returncode, p.stdout, p.stderr))
    p = W.cli("push", f, "--name", "pushed", "--version", "9.9", "--hardware", "hw-f",
              "--security-version", "1", "--url", "http://127.0.0.1:%d" % W.wp, env=env)
    check(p.returncode != 0 and p.stderr.strip(), "signet push of a duplicate exits non-zero with detail",
          (p.returncode, p.stdout, p.stderr))


@section
def rollout_membership(W):
    for d in FLEET:
        r = W.w("POST", "/v1/devices", "ops", body={"device_id": d, "hardware": "hw-m"})
        assert r.status == 201, r
    r = W.w("POST", "/v1/devices", "ops", body={"device_id": FLEET[0], "hardware": "hw-m"})
    check(is_problem(r, 409), "device exists 409", r)
    up, _ = W.upload("fw-m", "hw-m", 1)
    fid = up.body["firmware_id"]
    idem = {"Idempotency-Key": "ro-" + secrets.token_hex(5)}
    body = {"firmware_id": fid, "hardware": "hw-m", "stages": [5, 25, 100], "failure_threshold": 0.05,
            "min_reports": 20}
    r = W.w("POST", "/v1/rollouts", "ops", body=body, headers=idem)
    check(r.status == 201 and not types_ok(r.body, {"rollout_id": str, "position": "int"}),
          "rollout 201 {rollout_id,position}", r)
    rid = r.body["rollout_id"]
    h = W.head()
    r2 = W.w("POST", "/v1/rollouts", "ops", body=body, headers=idem)
    check(r2.status == 201 and r2.body == r.body and W.head() == h, "rollout Idempotency-Key repeat", r2)

    def offered(min_pos):
        got = set()
        for d in FLEET:
            g = W.r("GET", "/v1/devices/%s/update?min_position=%d" % (d, min_pos), "ops")
            if g.status == 200:
                got.add(d)
                if d == sorted(got)[0]:
                    b = g.body
                    pr = types_ok(b, {"action": str, "manifest": dict, "signature": str, "key_id": str,
                                      "image_url": str})
                    check(not pr and b["action"] == "install", "update 200 fields", (pr, b))
                    check(pos_header(g) is not None, "update 200 Signet-Position", dict(g.headers))
                    ok, out = openssl_verify(b["manifest"], b["signature"], W.devkey()["public_key_pem"], W.work)
                    check(ok, "update manifest verifies with openssl", out)
                    iu = b["image_url"]
                    path = iu if iu.startswith("/") else "/" + iu.split("/", 3)[3]
                    gi = W.r("HEAD", path, d)
                    check(gi.status == 200, "image_url fetchable by the device (%s)" % iu, gi.status)
            elif g.status != 204:
                check(False, "update answers 200 or 204", g)
                return got
            else:
                if pos_header(g) is None:
                    check(False, "update 204 Signet-Position", dict(g.headers))
        return got

    pos = r.body["position"]
    for stage, pct in enumerate([5, 25, 100]):
        if stage:
            a = W.w("POST", "/v1/rollouts/%s/advance" % rid, "ops",
                    headers={"Idempotency-Key": "adv-%s-%d" % (rid, stage)})
            pr = types_ok(a.body, {"rollout_id": str, "state": str, "percent": "int", "position": "int"})
            check(a.status == 200 and not pr and a.body["percent"] == pct, "advance 200 to %d%%" % pct, (pr, a))
            pos = a.body["position"]
        want = {d for d in FLEET if bucket(rid, d) < pct * 100}
        got = offered(pos)
        check(got == want, "members at %d%% match the formula (%d devices)" % (pct, len(want)),
              "extra %s missing %s" % (sorted(got - want)[:10], sorted(want - got)[:10]))
    for act in ("pause", "resume"):
        a = W.w("POST", "/v1/rollouts/%s/%s" % (rid, act), "ops")
        pr = types_ok(a.body, {"rollout_id": str, "state": str, "percent": "int", "position": "int"})
        check(a.status == 200 and not pr, "%s 200 fields" % act, (pr, a))
    a = W.w("POST", "/v1/rollouts/%s/advance" % rid, "ops")
    check(is_problem(a, 409), "advance past the last stage 409", a)
    a = W.w("POST", "/v1/rollouts/ro-nope/advance", "ops")
    check(is_problem(a, 404), "advance unknown rollout 404", a)
    a = W.w("POST", "/v1/rollouts/%s/advance" % rid, "ci")
    check(is_problem(a, 403), "advance by builder 403", a)
    # Bad rollout bodies
    for bad in ({"firmware_id": fid, "hardware": "hw-m", "stages": [50, 25], "failure_threshold": 0.1,
                 "min_reports": 1},
                {"firmware_id": fid, "hardware": "hw-m", "stages": [5, 100], "failure_threshold": 2,
                 "min_reports": 1},
                {"firmware_id": fid, "stages": [5]}):
        a = W.w("POST", "/v1/rollouts", "ops", body=bad)
        check(is_problem(a, 400), "bad rollout body 400 %r" % bad, a)
    a = W.w("POST", "/v1/rollouts", "ops", body="{", headers={"Content-Type": "application/json"})
    check(is_problem(a, 400), "rollout body not JSON 400", a)
    a = W.w("POST", "/v1/rollouts", "ops", body=json.dumps(body), headers={"Content-Type": "text/plain"})
    check(is_problem(a, 415), "rollout body text/plain 415", a)
    a = W.w("POST", "/v1/rollouts", "ops", body={"firmware_id": "sha256:" + "1" * 64, "hardware": "hw-m",
                                                  "stages": [100], "failure_threshold": 0.1, "min_reports": 1})
    check(is_problem(a, 404), "rollout of unknown firmware 404", a)
    # device principal matrix
    g = W.r("GET", "/v1/devices/%s/update" % FLEET[1], FLEET[0])
    check(is_problem(g, 403), "device reads another device's /update 403", g)
    g = W.r("GET", "/v1/devices/%s/commands?after=0" % FLEET[1], FLEET[0])
    check(is_problem(g, 403), "device reads another device's /commands 403", g)
    g = W.w("POST", "/v1/devices/%s/reports" % FLEET[1], FLEET[0], body={"firmware_id": fid, "status": "installed"})
    check(is_problem(g, 403), "device reports for another device 403", g)
    g = W.r("GET", "/v1/devices/%s/update" % FLEET[0], FLEET[0])
    check(g.status in (200, 204), "device reads its own /update", g.status)
    g = W.r("GET", "/v1/devices/%s/update" % FLEET[0], "ci")
    check(is_problem(g, 403), "builder reads /update 403", g)
    g = W.r("GET", "/v1/devices/nope-dev/update", "ops")
    check(is_problem(g, 404), "operator reads unknown device /update 404", g)
    # reports
    rep = W.w("POST", "/v1/devices/%s/reports" % FLEET[0], FLEET[0],
              body={"firmware_id": fid, "status": "installed", "detail": "ok"},
              headers={"Idempotency-Key": "rep-1"})
    check(rep.status == 202 and not types_ok(rep.body, {"position": "int"}), "report 202 {position}", rep)
    h = W.head()
    rep2 = W.w("POST", "/v1/devices/%s/reports" % FLEET[0], FLEET[0],
               body={"firmware_id": fid, "status": "installed", "detail": "ok"},
               headers={"Idempotency-Key": "rep-1"})
    check(rep2.status == 202 and rep2.body == rep.body and W.head() == h, "report idempotent repeat", rep2)
    rep = W.w("POST", "/v1/devices/%s/reports" % FLEET[0], FLEET[0], body={"firmware_id": fid, "status": "meh"})
    check(is_problem(rep, 400), "report bad status 400", rep)
    rep = W.w("POST", "/v1/devices/%s/reports" % FLEET[0], FLEET[0],
              body={"firmware_id": fid, "status": "failed", "detail": "x" * 100000})
    check(rep.status in (400, 413) and is_problem(rep, rep.status), "report with huge detail 400/413", rep)
    # min_position / wait_ms
    t0 = time.monotonic()
    g = W.r("GET", "/v1/devices/%s/update?min_position=%d&wait_ms=200" % (FLEET[0], W.head() + 1000), "ops")
    check(g.status == 503 and g.headers.get("Retry-After") and time.monotonic() - t0 < 5,
          "min_position in the future: 503 Retry-After", g)
    g = W.r("GET", "/v1/devices/%s/update?min_position=abc" % FLEET[0], "ops")
    check(is_problem(g, 400), "min_position not a number 400", g)
    # snapshot rollouts
    s = W.r("GET", "/v1/snapshots/rollouts", "ops")
    check(s.status == 200, "snapshot rollouts 200 for operator", s.status)


def halt_case(W, group, failed, installed, threshold, min_reports, expect_halt):
    devs = ["%s-%d" % (group, i) for i in range(6)]
    for d in devs:
        r = W.w("POST", "/v1/devices", "ops", body={"device_id": d, "hardware": "hw-" + group})
        assert r.status == 201, r
    up, _ = W.upload("fw-" + group, "hw-" + group, 1)
    fid = up.body["firmware_id"]
    r = W.w("POST", "/v1/rollouts", "ops", body={"firmware_id": fid, "hardware": "hw-" + group, "stages": [100],
                                                  "failure_threshold": threshold, "min_reports": min_reports})
    assert r.status == 201, r
    rid = r.body["rollout_id"]
    i = 0
    for st, n in (("installed", installed), ("failed", failed)):
        for _ in range(n):
            rep = W.w("POST", "/v1/devices/%s/reports" % devs[i], devs[i], body={"firmware_id": fid, "status": st})
            assert rep.status == 202, rep
            i += 1
    time.sleep(1.0)
    evs = [e for e in W.events() if e.get("type") == "RolloutHalted"
           and json.dumps(e).find(rid) >= 0]
    halted = bool(evs)
    check(halted == expect_halt, "%d failed + %d installed, threshold %s, min_reports %d: halt=%s"
          % (failed, installed, threshold, min_reports, expect_halt), "halted=%s events=%r" % (halted, evs))
    if evs:
        check(evs[0].get("actor") == "system", "RolloutHalted actor system", evs[0])
        s = W.r("GET", "/v1/devices/%s/update?min_position=%d" % (devs[5], W.head()), "ops")
        check(s.status == 204, "halted rollout offers nothing to a fresh device (204)", s.status)
    return rid


@section
def auto_halt(W):
    halt_case(W, "h0", 2, 2, 0.5, 4, False)
    halt_case(W, "h1", 3, 2, 0.5, 4, True)
    halt_case(W, "h2", 3, 0, 0.5, 4, False)   # below min_reports
    halt_case(W, "h3", 4, 0, 0.5, 4, True)


@section
def rollback(W):
    for g, sv2 in (("s", 1), ("t", 2)):
        devs = ["%s-%d" % (g, i) for i in range(4)]
        for d in devs:
            r = W.w("POST", "/v1/devices", "ops", body={"device_id": d, "hardware": "hw-" + g})
            assert r.status == 201, r
        up1, _ = W.upload("fw-" + g, "hw-" + g, 1)
        f1 = up1.body["firmware_id"]
        r = W.w("POST", "/v1/rollouts", "ops", body={"firmware_id": f1, "hardware": "hw-" + g, "stages": [100],
                                                      "failure_threshold": 0.9, "min_reports": 100})
        r1 = r.body["rollout_id"]
        for d in devs:
            W.w("POST", "/v1/devices/%s/reports" % d, d, body={"firmware_id": f1, "status": "installed"})
        up2, _ = W.upload("fw-" + g, "hw-" + g, sv2)
        f2 = up2.body["firmware_id"]
        r = W.w("POST", "/v1/rollouts", "ops", body={"firmware_id": f2, "hardware": "hw-" + g, "stages": [100],
                                                      "failure_threshold": 0.9, "min_reports": 100})
        r2 = r.body["rollout_id"]
        evs = [e for e in W.events() if "Supersed" in e.get("type", "") and r1 in json.dumps(e)]
        check(bool(evs), "a new rollout for the same class says it supersedes the old one (%s)" % g,
              [e.get("type") for e in W.events()[-5:]])
        g2 = W.r("GET", "/v1/devices/%s/update?min_position=%d" % (devs[0], r.body["position"]), devs[0])
        check(g2.status == 200 and g2.body["manifest"]["sha256"] in (f2[7:], f2),
              "superseding rollout offers the new image", g2)
        for d in devs[:2]:
            rep = W.w("POST", "/v1/devices/%s/reports" % d, d, body={"firmware_id": f2, "status": "installed"})
            assert rep.status == 202
        rb = W.w("POST", "/v1/rollouts/%s/rollback" % r2, "ops")
        pr = types_ok(rb.body, {"rollout_id": str, "state": str, "percent": "int", "position": "int"})
        check(rb.status == 200 and not pr, "rollback 200 fields", (pr, rb))
        pos = rb.body.get("position", 0)
        for i, d in enumerate(devs):
            u = W.r("GET", "/v1/devices/%s/update?min_position=%d" % (d, pos), d)
            if sv2 > 1 and i < 2:
                check(u.status == 204, "%s installed sv2: rollback to sv1 blocked (204)" % d, u)
            elif i < 2:
                ok = (u.status == 200 and u.body.get("action") == "rollback"
                      and u.body["manifest"]["sha256"] in (f1[7:], f1))
                check(ok, "%s: rollback offers the earlier image (action rollback)" % d, u)
            else:
                print("   (info) %s never reported the new image; after rollback: %d %s"
                      % (d, u.status, u.body.get("action") if u.status == 200 else ""), flush=True)
        s = W.r("GET", "/v1/snapshots/rollouts?min_position=%d" % pos, "ops")
        txt = json.dumps(s.body)
        if sv2 > 1:
            check('"blocked": 2' in txt or '"blocked":2' in txt, "rollouts snapshot counts 2 blocked",
                  txt[:1500])


@section
def commands(W):
    for d in ("c-0", "c-1", "c-2"):
        r = W.w("POST", "/v1/devices", "ops", body={"device_id": d, "hardware": "hw-c"})
        assert r.status == 201, r
    dk = W.devkey()

    def ask(dev, action, who="ops", ttl=600, params=None, headers=None):
        return W.w("POST", "/v1/commands", who, body={"device_id": dev, "action": action,
                                                       "params": params or {}, "ttl_seconds": ttl},
                   headers=headers)

    def verdict(cid, who, what="approve", body=None):
        return W.w("POST", "/v1/commands/%s/%s" % (cid, what), who, body=body if body is not None else {})

    cspec = {"command_id": str, "state": str, "approvals_required": "int", "position": "int"}
    vspec = {"command_id": str, "state": str, "approvals": "int", "position": "int"}
    idem = {"Idempotency-Key": "cmd-" + secrets.token_hex(4)}
    r = ask("c-0", "reboot", headers=idem)
    pr = types_ok(r.body, cspec)
    check(r.status == 202 and not pr and r.body["state"] == "pending" and r.body["approvals_required"] == 1,
          "reboot: 202 pending approvals_required 1", (pr, r))
    h = W.head()
    rr = ask("c-0", "reboot", headers=idem)
    check(rr.status == 202 and rr.body == r.body and W.head() == h, "command idempotent repeat", rr)
    cid = r.body["command_id"]
    v = verdict(cid, "alice")
    pr = types_ok(v.body, vspec)
    check(v.status == 200 and not pr and v.body["state"] == "authorized" and v.body["approvals"] == 1,
          "reboot approved once: authorized", (pr, v))
    v = verdict(cid, "bob")
    check(is_problem(v, 409), "approval after authorization 409", v)
    r = ask("c-0", "set-point", params={"t": 21})
    check(r.body.get("approvals_required") == 2, "default action needs 2", r)
    c2 = r.body["command_id"]
    v = verdict(c2, "alice")
    check(v.status == 200 and v.body.get("state") == "pending" and v.body.get("approvals") == 1,
          "first of two approvals: pending, approvals 1", v)
    v = verdict(c2, "alice")
    check(is_problem(v, 409), "same approver twice 409", v)
    v = verdict(c2, "bob")
    check(v.status == 200 and v.body.get("state") == "authorized" and v.body.get("approvals") == 2,
          "second distinct approver authorizes", v)
    r = ask("c-0", "unlock-debug")
    check(r.body.get("approvals_required") == 3, "unlock-debug needs 3", r)
    c3 = r.body["command_id"]
    states = [verdict(c3, w).body.get("state") for w in ("alice", "bob", "carol")]
    check(states == ["pending", "pending", "authorized"], "unlock-debug authorized on the third", states)
    # self approval
    r = ask("c-1", "reboot", who="both")
    v = verdict(r.body["command_id"], "both")
    check(is_problem(v, 403), "requester approving own command 403 (holding both roles)", v)
    # rejection
    r = ask("c-1", "set-point")
    c4 = r.body["command_id"]
    v = verdict(c4, "alice", "reject", {"comment": "no"})
    check(v.status == 200 and not types_ok(v.body, vspec) and v.body["state"] == "rejected", "reject 200", v)
    v = verdict(c4, "bob")
    check(is_problem(v, 409), "approval after rejection 409", v)
    # unknowns and roles
    check(is_problem(ask("nope", "reboot"), 404), "command for unknown device 404", "")
    check(is_problem(verdict("cmd-nope", "alice"), 404), "approve unknown command 404", "")
    check(is_problem(ask("c-1", "reboot", who="alice"), 403), "approver requesting 403", "")
    check(is_problem(verdict(c4, "ops"), 403), "operator approving 403", "")
    check(is_problem(ask("c-1", "Bad Action!"), 400), "malformed action 400", "")
    check(is_problem(ask("c-1", "reboot", ttl=10 ** 9), 400), "ttl_seconds too large 400", "")
    check(is_problem(ask("c-1", "reboot", ttl=0), 400), "ttl_seconds 0 400", "")
    r = W.w("POST", "/v1/commands", "ops", body=json.dumps({"device_id": "c-1", "action": "reboot", "params": {},
                                                           "ttl_seconds": 600}),
            headers={"Content-Type": "text/plain"})
    check(is_problem(r, 415), "command body text/plain 415", r)
    r = W.w("POST", "/v1/commands", "ops", body={"device_id": "c-1", "action": "reboot",
                                                  "params": {"x": "y" * 70000}, "ttl_seconds": 600})
    check(is_problem(r, 413), "command body over max_json_bytes 413", r)
    r = request("POST", W.wp, "/v1/commands", body={"device_id": "c-1", "action": "reboot"})
    check(is_problem(r, 401), "command without token 401", r)
    # envelopes
    pos = W.head()
    g = W.r("GET", "/v1/devices/c-0/commands?after=0&min_position=%d" % pos, "c-0")
    check(g.status == 200 and isinstance(g.body.get("commands"), list), "device reads its commands", g)
    check(pos_header(g) is not None, "commands Signet-Position", dict(g.headers))
    cmds = g.body["commands"]
    check([c["envelope"]["counter"] for c in cmds] == [1, 2, 3], "counters 1,2,3 oldest first",
          [c.get("envelope", {}).get("counter") for c in cmds])
    for c in cmds:
        env = c["envelope"]
        check(not types_ok(c, {"envelope": dict, "signature": str, "key_id": str}) and c["key_id"] == dk["key_id"],
              "command entry fields", c)
        check(set(env) == {"command_id", "device_id", "action", "params", "counter", "not_after"},
              "envelope has exactly the six fields", sorted(env))
        check(env["device_id"] == "c-0" and is_int(env["counter"]) and isinstance(env["params"], dict),
              "envelope field values", env)
        ok, out = openssl_verify(env, c["signature"], dk["public_key_pem"], W.work)
        check(ok, "openssl verifies envelope %s canonicalized by the outside" % env.get("counter"), out)
    check(cmds[1]["envelope"]["params"] == {"t": 21}, "params carried", cmds[1]["envelope"])
    g = W.r("GET", "/v1/devices/c-0/commands?after=1", "c-0")
    check([c["envelope"]["counter"] for c in g.body["commands"]] == [2, 3], "after=1 gives 2,3", g.body)
    g = W.r("GET", "/v1/devices/c-0/commands?after=3", "c-0")
    check(g.status == 200 and g.body["commands"] == [], "after=3 gives none", g)
    g = W.r("GET", "/v1/devices/c-0/commands?after=x", "c-0")
    check(is_problem(g, 400), "after=x 400", g)
    g = W.r("GET", "/v1/devices/c-1/commands?after=0", "ops")
    check(g.status == 200 and g.body["commands"] == [], "c-1 has none (rejected, self-approved pending)", g)
    g = W.r("GET", "/v1/devices/c-0/commands", "ops")
    check(g.status == 200 and len(g.body.get("commands", [])) == 3, "commands without after= (operator)", g)
    # expiry: smallest ttl accepted
    for ttl in (1, 5, 30, 60):
        r = ask("c-2", "set-point", ttl=ttl)
        if r.status == 202:
            break
    check(r.status == 202, "some small ttl accepted (%d)" % ttl, r)
    W.expiry = (r.body["command_id"], ttl, time.monotonic())
    s = W.r("GET", "/v1/snapshots/commands", "audit")
    check(s.status == 200 and c4 in json.dumps(s.body), "commands snapshot names the commands", s.status)


def check_expiry(W):
    cid, ttl, t0 = W.expiry
    deadline = t0 + ttl + 20
    while time.monotonic() < deadline:
        evs = [e for e in W.events() if e.get("type") == "CommandExpired" and cid in json.dumps(e)]
        if evs:
            break
        time.sleep(1)
    check(bool(evs), "CommandExpired appended without anyone looking (ttl %d)" % ttl, "")
    if evs:
        check(evs[0].get("actor") == "system", "CommandExpired actor system", evs[0])
    v = W.w("POST", "/v1/commands/%s/approve" % cid, "alice", body={})
    check(v.status in (409, 410) and is_problem(v, v.status), "approval after expiry 409/410", v)


@section
def snapshots(W):
    keys = W.keys()
    snap = {k["key_id"]: k for k in keys["keys"] if k["purpose"] == "snapshots"}
    for name in ("firmware", "rollouts", "devices", "commands"):
        for who in ("audit", "ops"):
            s = W.r("GET", "/v1/snapshots/%s" % name, who)
            pr = types_ok(s.body, {"name": str, "as_of": dict, "state": dict, "key_id": str, "sig": str})
            if not check(s.status == 200 and not pr and s.body["name"] == name,
                         "snapshot %s by %s fields" % (name, who), (pr, s.status, str(s.body)[:300])):
                continue
            check(pos_header(s) is not None, "snapshot Signet-Position", dict(s.headers))
            ao = s.body["as_of"]
            check(is_int(ao.get("position")) and isinstance(ao.get("hash"), str), "as_of fields", ao)
            doc = {k: v for k, v in s.body.items() if k not in ("sig", "key_id")}
            k = snap.get(s.body["key_id"])
            ok, out = (openssl_verify(doc, s.body["sig"], k["public_key_pem"], W.work) if k
                       else (False, "unknown key"))
            check(ok, "snapshot %s verifies with openssl" % name, out)
    s = W.r("GET", "/v1/snapshots/firmware", "d-000")
    check(is_problem(s, 403), "device reads snapshot 403", s)


@section
def extras(W):
    """Cross-cutting promises: Signet-Position on every read response,
    Idempotency-Key on every POST, min_position/wait_ms, the envelope in
    CommandAuthorized, DDI failure feedback and cancelAction."""
    import threading
    dev = "x-3"
    fw = [e for e in W.events() if e.get("type") == "FirmwareUploaded"][0]
    fid = fw["data"].get("firmware_id") or "sha256:" + fw["data"]["manifest"]["sha256"]
    reads = [("GET", "/healthz", None), ("GET", "/metrics", None), ("GET", "/v1/keys", None),
             ("GET", "/v1/events?after=0&limit=2", "audit"), ("GET", "/v1/events", "ops"),
             ("GET", "/v1/events", None), ("GET", "/v1/snapshots/devices", "audit"),
             ("GET", "/v1/snapshots/nope", "audit"), ("GET", "/v1/firmware/%s" % fid, "ops"),
             ("GET", "/v1/firmware/sha256:%s" % ("0" * 64), "ops"), ("GET", "/v1/firmware/bad", "ops"),
             ("HEAD", "/v1/firmware/%s/image" % fid, "ops"), ("GET", "/v1/devices/%s/update" % dev, "ops"),
             ("GET", "/v1/devices/%s/commands?after=0" % dev, dev), ("GET", "/nope", "ops"),
             ("GET", "/v1/devices/%s/update?min_position=99999999&wait_ms=10" % dev, "ops")]
    for m, path, who in reads:
        r = W.r(m, path, who)
        check(pos_header(r) is not None, "Signet-Position on %s %s (%d)" % (m, path, r.status), dict(r.headers))
    r = W.r("GET", "/v1/firmware/%s/image" % fid, "ops", headers={"If-None-Match": '"%s"' % fid[7:]})
    check(r.status == 304 and pos_header(r) is not None, "Signet-Position on 304", (r.status, dict(r.headers)))
    r = request("GET", W.rp, "/ddi/DEFAULT/controller/v1/%s" % dev, headers={"Authorization": "TargetToken " + DEV_TOK[dev]})
    check(pos_header(r) is not None, "Signet-Position on DDI poll", dict(r.headers))
    # Idempotency-Key on every POST
    def idem_twice(what, method_path, who, body):
        key = {"Idempotency-Key": "ik-" + secrets.token_hex(5)}
        a = W.w("POST", method_path, who, body=body, headers=key)
        h = W.head()
        b = W.w("POST", method_path, who, body=body, headers=key)
        check(a.status < 300 and b.status == a.status and b.body == a.body and W.head() == h,
              "Idempotency-Key repeat of %s: first answer, nothing appended" % what, (a, b))
        return a
    idem_twice("POST /v1/devices", "/v1/devices", "ops", {"device_id": "i-0", "hardware": "hw-i"})
    up, _ = W.upload("fw-i", "hw-i", 1)
    ro = idem_twice("POST /v1/rollouts", "/v1/rollouts", "ops",
                    {"firmware_id": up.body["firmware_id"], "hardware": "hw-i", "stages": [10, 100],
                     "failure_threshold": 0.5, "min_reports": 10})
    rid = ro.body["rollout_id"]
    for act in ("advance", "pause", "resume", "rollback"):
        idem_twice("POST /v1/rollouts/{id}/%s" % act, "/v1/rollouts/%s/%s" % (rid, act), "ops", None)
    c = W.w("POST", "/v1/commands", "ops", body={"device_id": "i-0", "action": "set-point", "params": {},
                                                  "ttl_seconds": 600})
    idem_twice("POST /v1/commands/{id}/approve", "/v1/commands/%s/approve" % c.body["command_id"], "alice", {})
    c = W.w("POST", "/v1/commands", "ops", body={"device_id": "i-0", "action": "set-point", "params": {},
                                                  "ttl_seconds": 600})
    idem_twice("POST /v1/commands/{id}/reject", "/v1/commands/%s/reject" % c.body["command_id"], "alice",
               {"comment": "no"})
    c = W.w("POST", "/v1/commands", "ops", body={"device_id": "i-0", "action": "reboot"})
    check(c.status == 202, "command without params/ttl_seconds (defaults)", c)
    c = W.w("POST", "/v1/commands/%s/approve" % c.body.get("command_id"), "alice")
    check(c.status == 200, "approve without a body", c)
    # min_position reached while waiting
    h = W.head()
    t = threading.Timer(0.5, lambda: W.w("POST", "/v1/devices", "ops", body={"device_id": "i-1", "hardware": "hw-i"}))
    t.start()
    r = W.r("GET", "/v1/devices/i-0/update?min_position=%d&wait_ms=8000" % (h + 1), "ops")
    t.join()
    check(r.status in (200, 204) and int(pos_header(r) or 0) >= h + 1, "min_position reached while waiting", r)
    t0 = time.monotonic()
    r = W.r("GET", "/v1/devices/i-0/update?min_position=%d&wait_ms=60000" % (h + 100000), "ops")
    el = time.monotonic() - t0
    check((r.status == 503 and el < 12) or r.status == 400, "wait_ms above 10000: 400 or capped at 10 s (%.1fs)" % el,
          r)
    # CommandAuthorized carries the envelope, verifiable from the event
    dk = W.devkey()
    auths = [e for e in W.events() if e.get("type") == "CommandAuthorized"]
    check(bool(auths), "CommandAuthorized events exist", "")
    per_dev = {}
    for e in auths:
        d = e["data"]
        env = d.get("envelope")
        if not check(isinstance(env, dict) and isinstance(d.get("signature"), str),
                     "CommandAuthorized data has envelope and signature", sorted(d)):
            break
        ok, out = openssl_verify(env, d["signature"], dk["public_key_pem"], W.work)
        check(ok, "CommandAuthorized envelope %s/%s verifies" % (env["device_id"], env["counter"]), out)
        per_dev.setdefault(env["device_id"], []).append(env["counter"])
    for dv, cs in per_dev.items():
        check(cs == list(range(1, len(cs) + 1)), "counters of %s 1..n without gaps" % dv, cs)
    # DDI: closed+failure is a failed report; cancelAction
    auth = {"Authorization": "TargetToken " + DEV_TOK["x-1"]}
    p = request("GET", W.rp, "/ddi/DEFAULT/controller/v1/x-1", headers=auth)
    links = p.body.get("_links", {}) if isinstance(p.body, dict) else {}
    print("   (info) x-1 poll links:", sorted(links), flush=True)
    if "cancelAction" in links:
        href = links["cancelAction"]["href"]
        path = href if href.startswith("/") else "/" + href.split("/", 3)[3]
        aid = path.rstrip("/").split("/")[-1].split("?")[0]
        g = request("GET", W.rp, path, headers=auth)
        check(g.status == 200 and isinstance(g.body, dict) and "cancelAction" in g.body,
              "GET cancelAction 200 {id, cancelAction}", g)
        fb = {"id": aid, "status": {"execution": "closed", "result": {"finished": "success"}, "details": []}}
        g = request("POST", W.rp, path + "/feedback", body=fb, headers=auth)
        check(g.status == 200, "cancelAction feedback 200", g)
        time.sleep(0.5)
        p = request("GET", W.rp, "/ddi/DEFAULT/controller/v1/x-1", headers=auth)
        check("cancelAction" not in p.body.get("_links", {}), "after cancel feedback, no cancelAction", p.body)
    if "deploymentBase" in links:
        href = links["deploymentBase"]["href"]
        aid = href.split("/deploymentBase/")[1].split("?")[0]
        h = W.head()
        fb = {"id": aid, "status": {"execution": "closed", "result": {"finished": "failure"}, "details": ["bad"]}}
        g = request("POST", W.rp, "/ddi/DEFAULT/controller/v1/x-1/deploymentBase/%s/feedback" % aid, body=fb,
                    headers=auth)
        check(g.status == 200, "closed failure feedback 200", g)
        time.sleep(0.5)
        check(any("failed" in json.dumps(e) for e in W.events(h)), "closed failure recorded as a failed report",
              [e.get("type") for e in W.events(h)])


@section
def ddi_halt_and_roles(W):
    devs = ["y-%d" % i for i in range(6)]
    for d in devs:
        assert W.w("POST", "/v1/devices", "ops", body={"device_id": d, "hardware": "hw-y"}).status == 201
    swu = make_swu([("p.bin", secrets.token_bytes(500))])
    up, _ = W.upload("fw-y", "hw-y", 1, data=swu, fmt="swu")
    ro = W.w("POST", "/v1/rollouts", "ops", body={"firmware_id": up.body["firmware_id"], "hardware": "hw-y",
                                                   "stages": [100], "failure_threshold": 0.5, "min_reports": 2})
    rid = ro.body["rollout_id"]
    time.sleep(0.3)
    aids = {}
    for d in devs:
        auth = {"Authorization": "TargetToken " + DEV_TOK[d]}
        p = request("GET", W.rp, "/ddi/DEFAULT/controller/v1/%s" % d, headers=auth)
        href = p.body.get("_links", {}).get("deploymentBase", {}).get("href", "")
        if href:
            aids[d] = href.split("/deploymentBase/")[1].split("?")[0]
    check(len(aids) == 6, "all six y devices get deploymentBase", aids)
    check(len(set(aids.values())) == 6, "one action id per offer to one device", aids)
    for d in devs[:2]:
        fb = {"id": aids[d], "status": {"execution": "closed", "result": {"finished": "failure"}, "details": ["x"]}}
        g = request("POST", W.rp, "/ddi/DEFAULT/controller/v1/%s/deploymentBase/%s/feedback" % (d, aids[d]),
                    body=fb, headers={"Authorization": "TargetToken " + DEV_TOK[d]})
        check(g.status == 200, "failure feedback 200", g)
    time.sleep(1.0)
    evs = W.events()
    halted = [e for e in evs if e.get("type") == "RolloutHalted" and rid in json.dumps(e)]
    check(bool(halted), "two DDI failure feedbacks (min_reports 2, threshold 0.5) halt the rollout",
          [e.get("type") for e in evs[-6:]])
    p = request("GET", W.rp, "/ddi/DEFAULT/controller/v1/%s" % devs[5],
                headers={"Authorization": "TargetToken " + DEV_TOK[devs[5]]})
    lk = sorted(p.body.get("_links", {}))
    check("deploymentBase" not in lk, "halted rollout: no deploymentBase for an offered device", lk)
    print("   (info) offered device after halt:", lk, flush=True)
    # same device reporting several times: does it count several reports?
    for d in ("z-0",):
        assert W.w("POST", "/v1/devices", "ops", body={"device_id": d, "hardware": "hw-z"}).status == 201
    up, _ = W.upload("fw-z", "hw-z", 1)
    ro = W.w("POST", "/v1/rollouts", "ops", body={"firmware_id": up.body["firmware_id"], "hardware": "hw-z",
                                                   "stages": [100], "failure_threshold": 0.5, "min_reports": 3})
    for _ in range(3):
        W.w("POST", "/v1/devices/z-0/reports", "z-0", body={"firmware_id": up.body["firmware_id"], "status": "failed"})
    time.sleep(0.8)
    h = [e for e in W.events() if e.get("type") == "RolloutHalted" and ro.body["rollout_id"] in json.dumps(e)]
    print("   (info) one device sending 3 failed reports, min_reports 3: halted=%s" % bool(h), flush=True)
    # role matrix of the new endpoints (deny side)
    fid = up.body["firmware_id"]
    denies = [("r", "GET", "/v1/devices/z-0/update", "audit"), ("r", "GET", "/v1/devices/z-0/commands", "audit"),
              ("r", "GET", "/v1/devices/z-0/update", "alice"), ("r", "GET", "/v1/snapshots/rollouts", "ci"),
              ("r", "GET", "/v1/snapshots/commands", "alice"), ("r", "GET", "/v1/events", "z-0"),
              ("w", "POST", "/v1/rollouts", "alice"), ("w", "POST", "/v1/rollouts", "z-0"),
              ("w", "POST", "/v1/commands", "z-0"), ("w", "POST", "/v1/commands", "ci"),
              ("w", "POST", "/v1/devices/z-0/reports", "ops"), ("w", "POST", "/v1/devices", "z-0"),
              ("w", "POST", "/v1/rollouts/%s/pause" % ro.body["rollout_id"], "alice")]
    for side, m, path, who in denies:
        body = {"firmware_id": fid, "status": "installed"} if path.endswith("reports") else (
            {} if m == "POST" else None)
        r = (W.w if side == "w" else W.r)(m, path, who, body=body) if side == "w" else W.r(m, path, who)
        check(is_problem(r, 403), "%s %s by %s: 403" % (m, path, who), r)
    for side, m, path in (("r", "GET", "/v1/devices/z-0/update"), ("r", "GET", "/v1/snapshots/rollouts"),
                          ("w", "POST", "/v1/rollouts"), ("w", "POST", "/v1/devices/z-0/reports")):
        r = request(m, W.rp if side == "r" else W.wp, path, body={} if m == "POST" else None,
                    headers={"Authorization": "Bearer tok_unknown"})
        check(is_problem(r, 401), "%s %s with an unknown token: 401" % (m, path), r)
    s = W.r("GET", "/v1/snapshots/rollouts", "ops")
    st = s.body.get("state", {})
    print("   (info) rollouts snapshot state keys:", sorted(st)[:10], json.dumps(st)[:600], flush=True)


@section
def odds(W):
    env_ = [e for e in W.events() if e.get("type") == "CommandAuthorized"][0]["data"]["envelope"]
    check(isinstance(env_["command_id"], str) and isinstance(env_["action"], str),
          "envelope command_id/action strings", env_)
    print("   (info) not_after is %r" % (env_["not_after"],), flush=True)
    fid = [e for e in W.events() if e.get("type") == "FirmwareUploaded"][0]["data"]
    fid = fid.get("firmware_id") or "sha256:" + fid["manifest"]["sha256"]
    r = W.w("POST", "/v1/devices/z-0/reports", "z-0", body={"firmware_id": "sha256:" + "2" * 64, "status": "failed"})
    print("   (info) report naming an unknown firmware: %d" % r.status, flush=True)
    check(r.status in (202, 404, 409, 422) and (r.status == 202 or is_problem(r, r.status)),
          "report naming an unknown firmware: 202 or a problem", r)
    r = W.w("POST", "/v1/devices/z-2/reports", "z-2", body={"firmware_id": fid, "status": "failed"})
    check(is_problem(r, 404), "report by a principal whose device is not registered: 404", r)
    r = W.w("POST", "/v1/devices/z-0/reports", "z-0", body={"firmware_id": fid, "status": "failed"},
            headers={"Content-Type": "text/plain"})
    check(is_problem(r, 415), "report text/plain 415", r)
    r = W.w("POST", "/v1/devices", "ops", body="{\"device_id\":\"q\",\"hardware\":\"h\"}", headers={})
    print("   (info) POST /v1/devices without Content-Type: %d" % r.status, flush=True)
    r = W.w("POST", "/v1/devices", "ops", body={"device_id": "q-1", "hardware": "h", "extra": 1})
    print("   (info) POST /v1/devices with an unknown field: %d" % r.status, flush=True)
    r = W.r("GET", "/v1/devices/z-0/update?min_position=1&wait_ms=-5", "ops")
    check(is_problem(r, 400), "wait_ms negative 400", r)
    r = W.r("GET", "/v1/devices/z-0/update?min_position=1&wait_ms=abc", "ops")
    check(is_problem(r, 400), "wait_ms not a number 400", r)
    r = W.r("GET", "/v1/events?after=0&limit=1001", "audit")
    check(r.status in (200, 400), "events limit 1001: capped or 400", r.status)
    if r.status == 200:
        check(len(r.body["events"]) <= 1000, "events limit capped at 1000", len(r.body["events"]))
    # the dual-role principal approves somebody else's command
    c = W.w("POST", "/v1/commands", "ops", body={"device_id": "z-0", "action": "reboot", "params": {},
                                                  "ttl_seconds": 600})
    a = W.w("POST", "/v1/commands/%s/approve" % c.body["command_id"], "both", body={})
    check(a.status == 200 and a.body.get("state") == "authorized", "operator+approver approves another's command", a)
    # DDI odds
    d = "z-1"
    assert W.w("POST", "/v1/devices", "ops", body={"device_id": d, "hardware": "hw-none"}).status == 201
    auth = {"Authorization": "TargetToken " + DEV_TOK[d]}
    p = request("GET", W.rp, "/ddi/DEFAULT/controller/v1/%s" % d, headers=auth)
    check(p.status == 200 and "deploymentBase" not in p.body.get("_links", {}), "DDI poll with nothing to do: 200",
          p)
    c = request("PUT", W.rp, "/ddi/DEFAULT/controller/v1/%s/configData" % d,
                body={"mode": "merge", "data": {"a": "1"}}, headers=dict(auth, **{"Content-Type": "application/json"}))
    check(c.status == 200, "configData PUT 200", c)
    if isinstance(c.body, dict) and c.body.get("position"):  # the poll reads the read model
        W.r("GET", "/v1/snapshots/devices?min_position=%d&wait_ms=10000" % c.body["position"], "ops")
    p = request("GET", W.rp, "/ddi/DEFAULT/controller/v1/%s" % d, headers=auth)
    check("configData" not in p.body.get("_links", {}), "no configData link once attributes are sent", p.body)
    for m, rest in (("GET", "/deploymentBase/12345"), ("POST", "/deploymentBase/12345/feedback"),
                    ("GET", "/cancelAction/12345"), ("GET", "/softwaremodules/1/artifacts/nope.swu")):
        body = ({"id": "12345", "status": {"execution": "closed", "result": {"finished": "success"}}}
                if m == "POST" else None)
        r = request(m, W.rp, "/ddi/DEFAULT/controller/v1/%s%s" % (d, rest), body=body, headers=auth)
        check(is_problem(r, 404), "DDI %s %s of no offer: 404 problem+json" % (m, rest), r)
    d2 = "z-2"  # a principal whose device is not registered
    p = request("GET", W.rp, "/ddi/DEFAULT/controller/v1/%s" % d2, headers={"Authorization": "TargetToken " + DEV_TOK[d2]})
    print("   (info) DDI poll by an unregistered device principal: %d" % p.status, flush=True)
    check(p.status in (200, 404), "DDI poll of an unregistered device: 200 or 404", p)
    g = W.r("GET", "/v1/devices/%s/update" % d2, d2)
    check(g.status in (204, 404), "/update of an unregistered own device: 204 or 404", g)
    # format odds
    r, _ = W.upload("fw-fmt", "hw-f", 1, data=b"not a cpio archive at all", fmt="swu")
    check(is_problem(r, 400), "format=swu with a non-archive 400", r)
    r, _ = W.upload("fw-fmt", "hw-f", 1, data=b"x", fmt="zip")
    check(is_problem(r, 400), "format=zip 400", r)
    # CLI odds
    f = os.path.join(W.work, "p.swu")
    with open(f, "wb") as fh:
        fh.write(make_swu([("q.bin", secrets.token_bytes(200))]))
    env = W.dep.env(SIGNET_TOKEN=W.tok["ci"])
    p = W.cli("push", f, "--name", "pswu", "--version", "1", "--hardware", "hw-f", "--security-version", "1",
              "--format", "swu", "--url", "http://127.0.0.1:%d" % W.wp, env=env)
    check(p.returncode == 0 and p.stdout.strip().startswith("sha256:"), "signet push --format swu", (p.stdout, p.stderr))
    env = W.dep.env(SIGNET_TOKEN="tok_wrong")
    p = W.cli("push", f, "--name", "pswu2", "--version", "1", "--hardware", "hw-f", "--security-version", "1",
              "--url", "http://127.0.0.1:%d" % W.wp, env=env)
    check(p.returncode != 0 and p.stderr.strip(), "signet push with a wrong token fails with the detail",
          (p.returncode, p.stderr))
    env = W.dep.env(SIGNET_TOKEN=None)
    p = W.cli("push", f, "--name", "pswu3", "--version", "1", "--hardware", "hw-f", "--security-version", "1",
              "--url", "http://127.0.0.1:%d" % W.wp, env=env)
    check(p.returncode != 0, "signet push without SIGNET_TOKEN fails", (p.returncode, p.stderr))


def jcs(o):
    """RFC 8785 for what signet signs (no floats): keys in UTF-16 code unit
    order, UTF-8, nothing escaped beyond what JSON needs."""
    if isinstance(o, dict):
        ks = sorted(o, key=lambda k: k.encode("utf-16-be"))
        return "{" + ",".join(json.dumps(k, ensure_ascii=False) + ":" + jcs(o[k]) for k in ks) + "}"
    if isinstance(o, list):
        return "[" + ",".join(jcs(x) for x in o) + "]"
    return json.dumps(o, ensure_ascii=False)


@section
def canonical_edges(W):
    """Envelopes whose params hold non-ASCII, control characters and keys
    outside the BMP: verified from the JCS bytes an outsider makes; shows
    where Python's json.dumps(sort_keys=True) is not RFC 8785."""
    assert W.w("POST", "/v1/devices", "ops", body={"device_id": "x-edge", "hardware": "h"}).status == 201
    dk = W.devkey()
    for params in ({"msg": "h\u00e9llo \u20ac"}, {"ctl": "a\u0001b\tc\"d\\e\u007f"},
                   {"astral": "\U0001F600", "\U0001F600k": 1, "\ue000k": 2}):
        r = W.w("POST", "/v1/commands", "ops", body={"device_id": "x-edge", "action": "reboot", "params": params,
                                                      "ttl_seconds": 600})
        a = W.w("POST", "/v1/commands/%s/approve" % r.body["command_id"], "alice", body={})
        g = W.r("GET", "/v1/devices/x-edge/commands?after=0&min_position=%d" % a.body["position"], "ops")
        c = g.body["commands"][-1]
        d = tempfile.mkdtemp(dir=W.work)
        with open(d + "/doc", "wb") as f:
            f.write(jcs(c["envelope"]).encode())
        with open(d + "/sig", "wb") as f:
            f.write(base64.b64decode(c["signature"]))
        with open(d + "/pub", "w") as f:
            f.write(dk["public_key_pem"])
        ok = subprocess.run(["openssl", "dgst", "-sha256", "-verify", d + "/pub", "-signature", d + "/sig",
                             d + "/doc"], stdout=subprocess.DEVNULL).returncode == 0
        check(ok and c["envelope"]["params"] == params, "envelope with params %r verifies from RFC 8785 bytes" % params, c)
        py_default = json.dumps(c["envelope"], sort_keys=True, separators=(",", ":")).encode()
        print("   (info) Python json.dumps(sort_keys, separators) bytes equal the signed bytes: %s"
              % (py_default == jcs(c["envelope"]).encode()), flush=True)


def make_swu(files, version="1.0", hw="1.0"):
    def entry(name, data, ino):
        nb = name.encode() + b"\0"
        hdr = "070701" + "".join("%08X" % v for v in (ino, 0o100644, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(nb), 0))
        out = hdr.encode() + nb
        out += b"\0" * (-len(out) % 4)
        return out + data + b"\0" * (-len(data) % 4)
    items = ",\n".join('{ filename = "%s"; path = "/tmp/x/%s"; sha256 = "%s"; }'
                       % (n, n, hashlib.sha256(d).hexdigest()) for n, d in files)
    desc = ('software =\n{\n version = "%s";\n hardware-compatibility: [ "%s" ];\n files: (\n%s\n );\n}\n'
            % (version, hw, items)).encode()
    out = b""
    for i, (n, d) in enumerate([("sw-description", desc)] + files, 1):
        out += entry(n, d, i)
    out += entry("TRAILER!!!", b"", 0)
    return out + b"\0" * (-len(out) % 512)


@section
def ddi(W):
    devs = ["x-%d" % i for i in range(4)]
    for d in devs:
        r = W.w("POST", "/v1/devices", "ops", body={"device_id": d, "hardware": "hw-x"})
        assert r.status == 201, r
    payload = secrets.token_bytes(3000)
    swu = make_swu([("payload.bin", payload)])
    up, _ = W.upload("fw-x", "hw-x", 1, data=swu, fmt="swu")
    check(up.status == 201, "swu upload 201", up)
    fid = up.body["firmware_id"]
    bad = make_swu([("payload.bin", payload)])
    bad = bad.replace(payload[:50], b"\0" * 50)
    r, _ = W.upload("fw-x", "hw-x", 1, data=bad, fmt="swu")
    check(is_problem(r, 400), "swu with a payload not matching its sha256 400", r)
    r = W.w("POST", "/v1/rollouts", "ops", body={"firmware_id": fid, "hardware": "hw-x", "stages": [100],
                                                  "failure_threshold": 0.9, "min_reports": 100})
    pos = r.body["position"]
    base = "/ddi/DEFAULT/controller/v1/"

    def ddi(method, dev, rest="", tok_of=None, body=None, scheme="TargetToken", tenant="DEFAULT"):
        h = {"Authorization": "%s %s" % (scheme, DEV_TOK[tok_of or dev])}
        if body is not None:
            h["Content-Type"] = "application/json"
        return request(method, W.rp, "/ddi/%s/controller/v1/%s%s" % (tenant, dev, rest), body=body, headers=h)

    time.sleep(0.5)
    p = ddi("GET", devs[0])
    check(p.status == 200 and isinstance(p.body.get("config", {}).get("polling", {}).get("sleep"), str),
          "DDI poll 200 with config.polling.sleep", p)
    links = p.body.get("_links", {})
    check("configData" in links, "configData link before attributes", links)
    check("deploymentBase" in links, "deploymentBase link for a swu install", links)
    check(pos_header(p) is not None, "DDI poll Signet-Position (read response)", dict(p.headers))
    check(is_problem(ddi("GET", devs[1], tok_of=devs[0]), 403), "DDI poll of another device 403", "")
    r = request("GET", W.rp, base + devs[0])
    check(is_problem(r, 401), "DDI poll without token 401", r)
    check(ddi("GET", devs[0], scheme="Bearer").status == 200, "DDI Bearer works too", "")
    r = ddi("GET", devs[0], tenant="OTHER")
    check(is_problem(r, 404), "DDI wrong tenant 404", r)
    c = ddi("PUT", devs[0], "/configData", body={"mode": "merge", "data": {"hw": "1.0"}})
    check(c.status == 200, "PUT configData 200", c)
    if "deploymentBase" not in links:
        return
    href = links["deploymentBase"]["href"]
    path = href if href.startswith("/") else "/" + href.split("/", 3)[3]
    aid = path.split("/deploymentBase/")[1].split("?")[0]
    check(aid.lstrip("-").isdigit() and -2 ** 31 <= int(aid) < 2 ** 31, "action id fits int32", aid)
    db = request("GET", W.rp, path, headers={"Authorization": "TargetToken " + DEV_TOK[devs[0]]})
    b = db.body
    check(db.status == 200 and str(b.get("id")) == aid, "deploymentBase 200 id", db)
    chunks = b.get("deployment", {}).get("chunks", [])
    arts = chunks[0]["artifacts"] if chunks else []
    check(b.get("deployment", {}).get("download") and b.get("deployment", {}).get("update"),
          "deployment download/update", b.get("deployment"))
    check(chunks and all(k in chunks[0] for k in ("part", "name", "version", "artifacts")), "chunk fields", chunks)
    if arts:
        a = arts[0]
        sha1 = hashlib.sha1
        check(a["filename"].endswith(".swu") and is_int(a["size"]), "artifact filename .swu and size int", a)
        hh = a.get("hashes", {})
        check(all(k in hh for k in ("sha1", "md5", "sha256")) and hh["sha1"] == hh["sha1"].lower(),
              "artifact hashes", hh)
        dl = a["_links"]["download-http"]["href"]
        dpath = dl if dl.startswith("/") else "/" + dl.split("/", 3)[3]
        auth = {"Authorization": "TargetToken " + DEV_TOK[devs[0]]}
        hd = request("HEAD", W.rp, dpath, headers=auth)
        full = request("GET", W.rp, dpath, headers=auth)
        check(hd.status == 200 and full.status == 200 and len(full.raw) == a["size"]
              and sha1(full.raw).hexdigest() == hh["sha1"] and hashlib.sha256(full.raw).hexdigest() == hh["sha256"],
              "artifact HEAD/GET bytes match size and hashes", (hd.status, full.status))
        check("sha256:" + hashlib.sha256(full.raw).hexdigest() == fid, "stored archive's sha256 is the firmware id", "")
        rg = request("GET", W.rp, dpath, headers=dict(auth, Range="bytes=100-"))
        check(rg.status == 206 and rg.raw == full.raw[100:], "artifact Range bytes=N-", rg.status)
    h = W.head()
    fb = {"id": aid, "status": {"execution": "proceeding", "result": {"finished": "none"}, "details": ["a \" b"]}}
    r = ddi("POST", devs[0], "/deploymentBase/%s/feedback" % aid, body=fb)
    check(r.status == 200, "proceeding feedback 200", r)
    time.sleep(0.5)
    check(W.head() == h, "proceeding feedback appends nothing", (h, W.head()))
    fb["status"] = {"execution": "closed", "result": {"finished": "success"}, "details": ["ok"]}
    r = ddi("POST", devs[0], "/deploymentBase/%s/feedback" % aid, body=fb)
    check(r.status == 200, "closed success feedback 200", r)
    time.sleep(0.5)
    evs = [e for e in W.events(h) if devs[0] in json.dumps(e)]
    check(any("installed" in json.dumps(e) for e in evs), "closed success recorded as an installed report",
          [e.get("type") for e in evs])
    r = ddi("POST", devs[1], "/deploymentBase/%s/feedback" % aid, body=fb, tok_of=devs[1])
    check(r.status in (403, 404) and is_problem(r, r.status), "feedback for another device's action refused", r)
    p = ddi("GET", devs[0])
    check("deploymentBase" not in p.body.get("_links", {}), "after installed, no more deploymentBase", p.body)
    # withdrawn offer -> cancelAction
    p1 = ddi("GET", devs[2])
    l1 = p1.body.get("_links", {})
    W.w("POST", "/v1/rollouts/%s/pause" % r.body.get("rollout_id", ""), "ops")  # no-op if absent
    rid = None
    for e in reversed(W.events()):
        if e.get("type", "").startswith("Rollout") and fid in json.dumps(e):
            rid = json.dumps(e)
            break
    if "deploymentBase" in l1:
        up2, _ = W.upload("fw-x2", "hw-x", 1, data=make_swu([("p2.bin", secrets.token_bytes(100))]), fmt="swu")
        W.w("POST", "/v1/rollouts", "ops", body={"firmware_id": up2.body["firmware_id"], "hardware": "hw-x",
                                                  "stages": [1], "failure_threshold": 0.9, "min_reports": 100})
        time.sleep(0.5)
        p2 = ddi("GET", devs[2])
        print("   (info) after supersession by a 1%% rollout, poll links of %s: %s"
              % (devs[2], sorted(p2.body.get("_links", {}))), flush=True)
    _ = rid


@section
def doc_probes(W):
    """Answers docs/openapi.yaml once had wrong (issue 14, defect 15), so
    that openapi_conformance sees them: admin on the device routes, a wrong
    hardware class on a rollout, methods a path does not have, HEAD."""
    d = "z-0"
    g = W.r("GET", "/v1/devices/%s/update" % d, "adm")
    check(g.status in (200, 204), "admin reads /v1/devices/{id}/update like an operator", g)
    g = W.r("GET", "/v1/devices/%s/commands" % d, "adm")
    check(g.status == 200, "admin reads /v1/devices/{id}/commands like an operator", g)
    g = W.w("POST", "/v1/devices/%s/reports" % d, "adm", body={"firmware_id": "sha256:" + "0" * 64,
                                                               "status": "installed"})
    check(is_problem(g, 403), "admin may not report for a device (device-only route) 403", g)
    g = request("GET", W.rp, "/ddi/DEFAULT/controller/v1/%s" % d, token=W.tok["adm"])
    check(is_problem(g, 403), "admin may not poll DDI as a device 403", g)
    up, _ = W.upload("fw-doc", "hw-doc", 1)
    r = W.w("POST", "/v1/rollouts", "ops", body={"firmware_id": up.body["firmware_id"], "hardware": "hw-other",
                                                  "stages": [100], "failure_threshold": 0.5, "min_reports": 1})
    check(is_problem(r, 422), "rollout of firmware for another hardware class 422", r)
    for side, m, path in (("w", "DELETE", "/v1/devices"), ("w", "GET", "/v1/commands"),
                          ("r", "HEAD", "/healthz"), ("r", "POST", "/v1/events"),
                          ("r", "GET", "/v1/devices"), ("w", "GET", "/v1/events")):
        r = (W.w if side == "w" else W.r)(m, path, "adm")
        check(r.status in (404, 405) and (r.status != 405 or r.headers.get("Allow")),
              "%s %s on the %s listener: 404 or 405 with Allow" % (m, path, "write" if side == "w" else "read"), r)
    for side, path in (("w", "/healthz"), ("w", "/v1/keys"), ("w", "/metrics"), ("r", "/metrics")):
        r = (W.w if side == "w" else W.r)("GET", path, None)
        check(r.status == 200, "GET %s on the %s listener 200" % (path, "write" if side == "w" else "read"), r)
    rid = [e for e in W.events() if e.get("type") == "RolloutStarted"][-1]["data"]["rollout_id"]
    r = W.w("POST", "/v1/rollouts/%s/pause" % rid, "ops", body={"why": "x"})
    check(is_problem(r, 400), "a body on a route that takes none 400", r)
    auth = {"Authorization": "TargetToken " + DEV_TOK[d]}
    base = "/ddi/DEFAULT/controller/v1/%s" % d
    r = request("PUT", W.rp, base + "/configData", body='{"data":{}}', headers=dict(auth, **{"Content-Type": "text/plain"}))
    check(is_problem(r, 415), "DDI configData text/plain 415", r)
    r = request("PUT", W.wp, base + "/configData", body={"data": {"k": "v" * 70000}}, headers=auth)
    check(is_problem(r, 413), "DDI configData over max_json_bytes 413 (write listener)", r)
    r = request("POST", W.wp, base + "/deploymentBase/1/feedback", body={"status": {"execution": "bogus"}},
                headers=auth)
    check(is_problem(r, 400), "DDI feedback with an unknown execution 400 (write listener)", r)
    r = request("PUT", W.rp, base + "/configData", body="{", headers=dict(auth, **{"Content-Type": "application/json"}))
    check(is_problem(r, 400), "DDI configData not JSON 400", r)
    # Whatever the answer to a repeated query parameter, it is one the document declares.
    W.r("GET", "/v1/events?after=0&after=1", "audit")
    W.r("GET", "/v1/devices/%s/commands?after=0&after=1" % d, "ops")


@section
def openapi_conformance(W):
    """Every answer the suite got, against docs/openapi.yaml: the status is
    declared for the operation, the media type and required headers are
    the declared response's, a JSON body has the declared schema's required
    properties and types. One check per operation and status."""
    spec = Spec()
    listener = {W.wp: "write", W.rp: "read"}
    roles = {t: DEPLOY_PRINCIPALS.get(n, (EXTRA.get(n),))[0] for n, t in W.tok.items()}
    roles.update({t: ["device"] for t in DEV_TOK.values()})
    groups = {}
    for port, method, path, token, r in ANSWERS:
        if port not in listener:
            continue
        label, probs = spec.problems(listener[port], method, path, r.status, r.headers, r.body, r.raw)
        probs += spec.role_problems(listener[port], method, path, r.status, roles.get(token))
        g = groups.setdefault((label, r.status), [0, []])
        g[0] += 1
        if probs and len(g[1]) < 3:
            g[1].append("%s %s: %s" % (method, path[:120], "; ".join(probs)))
    for (label, status), (n, bad) in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        check(not bad, "openapi: %s %d as declared (%d answers)" % (label, status, n), "\n".join(bad))
    ops = {lab for lab, _ in groups if not lab.startswith("(")}
    print("   (info) %d answers checked, %d operations of %d seen" % (
        len(ANSWERS), len(ops), sum(1 for it in spec.doc["paths"].values() for m in it if m in
                                     ("get", "put", "post", "head"))), flush=True)
    # The check itself can fail: the same answers against a document that
    # leaves out a status the server gave are refused.
    for port, method, path, token, r in ANSWERS:
        if port not in listener:
            continue
        label, probs = spec.problems(listener[port], method, path, r.status, r.headers, r.body, r.raw)
        if not probs and not label.startswith("("):
            _, probs2 = spec.copy_without(label, r.status).problems(
                listener[port], method, path, r.status, r.headers, r.body, r.raw)
            check(any("not declared" in p for p in probs2),
                  "openapi: a document without %s %d would be refused" % (label, r.status), probs2)
            break

def main():
    W = World()
    try:
        W.dep.init()
        srv = [W.dep.start()]
        keys_and_cert(W)
        firmware(W)
        commands(W)
        rollout_membership(W)
        auto_halt(W)
        rollback(W)
        ddi(W)
        snapshots(W)
        extras(W)
        ddi_halt_and_roles(W)
        odds(W)
        canonical_edges(W)
        try:
            check_expiry(W)
        except Exception as e:
            check(False, "expiry check ran", repr(e))
        doc_probes(W)
        csr_import_cert(W, srv)
        s = W.r("GET", "/v1/devices/%s/update?wait_ms=20000&min_position=1" % FLEET[0], "ops")
        check(s.status in (200, 204, 400), "wait_ms above 10000 clamped or refused", s)
        openapi_conformance(W)
    finally:
        bad = [r for r in RESULTS if not r[0]]
        print("\n%d checks, %d deviations" % (len(RESULTS), len(bad)))
        for _, what, detail in bad:
            print(" - %s :: %s" % (what, str(detail)[:400]))
        leaks = W.dep.leaked_secrets()
        if leaks:
            print("LEAKS", leaks)
        W.dep.close()
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
