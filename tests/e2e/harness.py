"""Shared fixture of signet's end-to-end tests.

Every test class builds its own world with `Deployment`: a temporary
directory holding a SoftHSM2 configuration and token directory, a
configuration file in exactly the format of CONFIG.md, random bearer tokens,
PIN and SO PIN, and free loopback ports. `Deployment.start()` runs `signetd`
and waits for /healthz; `Server.stop()` stops it with SIGTERM (or kill -9).

The verifiers here (`verify_chain`, `verify_snapshot`, `key_id_of_pem`) are
written from the contract only (DESIGN.md, API.md, docs/behaviour.md) and
use nothing of signet: canonical bytes are json.dumps(sort_keys=True,
separators=(',', ':'), ensure_ascii=False), which is RFC 8785 for documents
holding only strings, integers, booleans, null, arrays and objects with ASCII
keys, and signatures are checked with the `cryptography` package.

Environment:
  SIGNET_BUILD_DIR   build directory holding signetd, signet and
                     tests/libpkcs11_faulty.so (default /work/main/build)
  SIGNET_E2E_KEEP=1  keep the temporary directories (their paths are printed)
  SOFTHSM2_MODULE    the SoftHSM2 module (default /usr/lib/softhsm/libsofthsm2.so)
"""

import atexit
import base64
import copy
import hashlib
import http.client
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

BUILD_DIR = os.path.abspath(os.environ.get("SIGNET_BUILD_DIR", "/work/main/build"))
SIGNETD = os.path.join(BUILD_DIR, "signetd")
SIGNET = os.path.join(BUILD_DIR, "signet")
FAULTY_MODULE = os.path.join(BUILD_DIR, "tests", "libpkcs11_faulty.so")
SOFTHSM_MODULE = os.environ.get("SOFTHSM2_MODULE", "/usr/lib/softhsm/libsofthsm2.so")
KEEP = os.environ.get("SIGNET_E2E_KEEP") == "1"

ZERO_HASH = "0" * 64
EVENT_FIELDS = {"position", "id", "type", "time", "actor", "command_id", "data",
                "prev", "hash", "key_id", "sig"}
UNSIGNED_FIELDS = ("hash", "sig", "key_id")

# name -> (roles, device_id)
PRINCIPALS = {
    "ci": (["builder"], None),
    "ops": (["operator"], None),
    "alice": (["approver"], None),
    "bob": (["approver"], None),
    "audit": (["auditor"], None),
    "adm": (["admin"], None),
    "dev-0001": (["device"], "dev-0001"),
}

# Problem type slugs of docs/behaviour.md, by status.
PROBLEM_SLUGS = {
    400: {"bad-input"},
    401: {"unauthorized"},
    403: {"forbidden"},
    404: {"not-found"},
    405: {"method-not-allowed"},
    409: {"conflict"},
    413: {"too-large"},
    415: {"unsupported-media-type"},
    422: {"unprocessable"},
    500: {"internal"},
    501: {"not-implemented"},
    503: {"hsm-unavailable", "store-unavailable", "unavailable", "integrity-failure"},
}

METRIC_NAMES = [
    "signet_events_appended_total",
    "signet_store_head_position",
    "signet_projector_position",
    "signet_projector_lag_events",
    "signet_projector_halted",
    "signet_hsm_up",
    "signet_sign_failures_total",
    "signet_commit_batches_total",
    "signet_http_requests_total",
]


def sha256_hex(data):
    if isinstance(data, str):
        data = data.encode()
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------

class Response(tuple):
    """(status, headers, body) with names. headers is case-insensitive
    (http.client.HTTPMessage); body is the parsed JSON for JSON content types
    (application/json, application/problem+json) and raw bytes otherwise (or
    when the JSON does not parse)."""

    def __new__(cls, status, headers, body, raw, elapsed):
        self = super().__new__(cls, (status, headers, body))
        self.raw = raw
        self.elapsed = elapsed
        return self

    status = property(lambda self: self[0])
    headers = property(lambda self: self[1])
    body = property(lambda self: self[2])

    def __repr__(self):
        raw = self.raw if len(self.raw) <= 600 else self.raw[:600] + b"..."
        return "<HTTP %d %s %r>" % (self[0], dict(self[1].items()), raw)


def _encode_body(body, headers):
    if body is None:
        return None
    if isinstance(body, (dict, list)):
        headers.setdefault("Content-Type", "application/json")
        return json.dumps(body).encode()
    if isinstance(body, str):
        return body.encode()
    return body


def request(method, port, path, token=None, body=None, headers=None, timeout=30,
            conn=None):
    """One HTTP request to 127.0.0.1:port. body: dict/list (sent as JSON with
    Content-Type application/json unless headers say otherwise), str or bytes.
    Returns a Response (status, headers, body). conn: reuse an
    http.client.HTTPConnection (keep-alive) instead of opening one."""
    hdrs = dict(headers or {})
    if token is not None:
        hdrs["Authorization"] = "Bearer " + token
    data = _encode_body(body, hdrs)
    own = conn is None
    if own:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    t0 = time.monotonic()
    try:
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        raw = resp.read()
        elapsed = time.monotonic() - t0
    finally:
        if own:
            conn.close()
    return _make_response(resp.status, resp.msg, raw, elapsed)


def _make_response(status, msg, raw, elapsed):
    ctype = (msg.get("Content-Type") or "").lower()
    body = raw
    if "json" in ctype:
        try:
            body = json.loads(raw.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            body = raw
    return Response(status, msg, body, raw, elapsed)


def raw_request(port, data, timeout=30):
    """Send raw bytes (a whole HTTP/1.1 request, which should carry
    'Connection: close') and parse the answer. For requests http.client
    refuses to send (spaces, NUL, odd paths)."""
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        while True:
            try:
                c = s.recv(65536)
            except ConnectionResetError:
                break
            if not c:
                break
            chunks.append(c)
    buf = b"".join(chunks)
    elapsed = time.monotonic() - t0
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    if not lines or not lines[0].startswith(b"HTTP/1."):
        raise AssertionError("no HTTP answer to raw request %r: %r" % (data[:200], buf[:200]))
    status = int(lines[0].split()[1])
    import email.parser
    msg = email.parser.BytesHeaderParser(_class=http.client.HTTPMessage).parsebytes(
        b"\r\n".join(lines[1:]) + b"\r\n\r\n")
    if msg.get("Transfer-Encoding", "").lower() == "chunked":
        rest = _dechunk(rest)
    elif msg.get("Content-Length") is not None:
        rest = rest[:int(msg["Content-Length"])]
    return _make_response(status, msg, rest, elapsed)


def send_tolerant(port, method, path, headers, chunks, chunked=False, timeout=30):
    """Send a request whose body may be refused before it is all sent (413):
    headers first, then the body chunk by chunk, looking for an early answer
    between chunks and tolerating a reset while sending. Returns the
    Response, or None if the connection was reset before any answer."""
    import select
    hdrs = dict(headers)
    hdrs["Connection"] = "close"
    hdrs.setdefault("Host", "127.0.0.1")
    if chunked:
        hdrs["Transfer-Encoding"] = "chunked"
    else:
        hdrs["Content-Length"] = str(sum(len(c) for c in chunks))
    head = "%s %s HTTP/1.1\r\n" % (method, path) + "".join(
        "%s: %s\r\n" % kv for kv in hdrs.items()) + "\r\n"
    t0 = time.monotonic()
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    buf = b""
    try:
        try:
            s.sendall(head.encode("latin-1"))
            for c in chunks:
                r, _, _ = select.select([s], [], [], 0.01)
                if r:
                    break  # answered early
                s.sendall(("%x\r\n" % len(c)).encode() + c + b"\r\n" if chunked else c)
            else:
                if chunked:
                    s.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            while True:
                c = s.recv(65536)
                if not c:
                    break
                buf += c
        except (ConnectionResetError, socket.timeout):
            pass
    finally:
        s.close()
    if not buf:
        return None
    while buf.startswith(b"HTTP/1.1 1"):  # interim answers (100 Continue)
        buf = buf.partition(b"\r\n\r\n")[2]
    head_b, _, rest = buf.partition(b"\r\n\r\n")
    lines = head_b.split(b"\r\n")
    status = int(lines[0].split()[1])
    import email.parser
    msg = email.parser.BytesHeaderParser(_class=http.client.HTTPMessage).parsebytes(
        b"\r\n".join(lines[1:]) + b"\r\n\r\n")
    if msg.get("Transfer-Encoding", "").lower() == "chunked":
        rest = _dechunk(rest)
    elif msg.get("Content-Length") is not None:
        rest = rest[:int(msg["Content-Length"])]
    return _make_response(status, msg, rest, time.monotonic() - t0)


def _dechunk(data):
    out = b""
    while data:
        line, _, data = data.partition(b"\r\n")
        n = int(line.split(b";")[0], 16)
        if n == 0:
            break
        out += data[:n]
        data = data[n + 2:]
    return out


def problem_errors(resp, status):
    """List of ways resp is not a proper problem+json answer of `status`."""
    errs = []
    st, hdrs, body = resp
    if st != status:
        errs.append("status %d, want %d" % (st, status))
    ctype = (hdrs.get("Content-Type") or "").split(";")[0].strip().lower()
    if ctype != "application/problem+json":
        errs.append("Content-Type %r, want application/problem+json" % hdrs.get("Content-Type"))
    if not isinstance(body, dict):
        errs.append("body is not a JSON object")
        return errs
    for f, t in (("type", str), ("title", str), ("status", int), ("detail", str)):
        if f not in body:
            errs.append("missing field %r" % f)
        elif not isinstance(body[f], t) or isinstance(body[f], bool):
            errs.append("field %r is %r, want %s" % (f, body[f], t.__name__))
    if body.get("status") != status:
        errs.append("body status %r, want %d" % (body.get("status"), status))
    typ = body.get("type")
    if isinstance(typ, str):
        m = re.fullmatch(r"urn:signet:problem:([a-z0-9-]+)", typ)
        if not m:
            errs.append("type %r is not urn:signet:problem:<slug>" % typ)
        elif status in PROBLEM_SLUGS and m.group(1) not in PROBLEM_SLUGS[status]:
            errs.append("type slug %r does not belong to status %d (%s)"
                        % (m.group(1), status, sorted(PROBLEM_SLUGS[status])))
    if status == 401 and not (hdrs.get("WWW-Authenticate") or "").startswith("Bearer"):
        errs.append("401 without WWW-Authenticate: Bearer (got %r)" % hdrs.get("WWW-Authenticate"))
    if status == 503 and hdrs.get("Retry-After") is None:
        errs.append("503 without Retry-After")
    return errs


def assert_problem(resp, status, slug=None, msg=""):
    """resp is an RFC 9457 problem+json answer with this status (and slug).
    Checks the behaviour.md extras: type urn:signet:problem:<slug> matching
    the status, WWW-Authenticate on 401, Retry-After on 503."""
    errs = problem_errors(resp, status)
    if slug is not None and isinstance(resp[2], dict) and \
            resp[2].get("type") != "urn:signet:problem:" + slug:
        errs.append("type %r, want urn:signet:problem:%s" % (resp[2].get("type"), slug))
    if errs:
        raise AssertionError("%s%s: %r" % (msg + ": " if msg else "", "; ".join(errs), resp))


def wait_until(fn, timeout, interval=0.1, what="condition"):
    """Call fn until it returns a truthy value; return it. AssertionError
    after timeout seconds (the last value is in the message)."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = fn()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError("timed out after %.1fs waiting for %s (last: %r)"
                                 % (timeout, what, last))
        time.sleep(interval)


def free_ports(n):
    socks, ports = [], []
    try:
        while len(ports) < n:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


# --------------------------------------------------------------------------
# Independent verification
# --------------------------------------------------------------------------

def http_requests(samples, listener, code):
    """signet_http_requests_total for a listener and a status: the exact code
    (code="201") or its class (code="2xx"), whichever the server exports
    (docs/behaviour.md names the label `code` without fixing its form)."""
    code = str(code)
    total = None
    for n, labels, v in samples:
        if n == "signet_http_requests_total" and labels.get("listener") == listener and \
                labels.get("code") in (code, code[0] + "xx"):
            total = (total or 0) + v
    return total


class ChainError(AssertionError):
    def __init__(self, position, reason):
        super().__init__("position %s: %s" % (position, reason))
        self.position = position
        self.reason = reason


def canonical(obj, without=UNSIGNED_FIELDS):
    """RFC 8785 bytes of obj without the named top-level fields."""
    if isinstance(obj, dict):
        obj = {k: v for k, v in obj.items() if k not in without}
    _check_no_floats(obj)
    return json.dumps(obj, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode("utf-8")


def _check_no_floats(v):
    if isinstance(v, float):
        raise ChainError("?", "float %r in a signed document" % v)
    if isinstance(v, dict):
        for x in v.values():
            _check_no_floats(x)
    elif isinstance(v, list):
        for x in v:
            _check_no_floats(x)


def load_pem(pem):
    return serialization.load_pem_public_key(pem.encode() if isinstance(pem, str) else pem)


def key_id_of_pem(pem):
    """Hex SHA-256 of the DER SubjectPublicKeyInfo of a PEM public key."""
    der = load_pem(pem).public_bytes(serialization.Encoding.DER,
                                     serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def keys_by_purpose(keys_doc, purpose):
    """{key_id: public key} of the keys of a purpose in a /v1/keys document;
    every key_id is recomputed from its PEM."""
    out = {}
    for k in keys_doc["keys"]:
        if k.get("purpose") != purpose:
            continue
        kid = key_id_of_pem(k["public_key_pem"])
        if kid != k.get("key_id"):
            raise AssertionError("key %r: key_id does not match its PEM (%s)" % (k.get("key_id"), kid))
        out[kid] = load_pem(k["public_key_pem"])
    if not out:
        raise AssertionError("no %s key in %r" % (purpose, keys_doc))
    return out


def _verify_sig(pub, sig_b64, data):
    try:
        sig = base64.b64decode(sig_b64, validate=True)
    except (ValueError, TypeError):
        return "sig is not base64"
    try:
        pub.verify(sig, data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return "bad signature"
    except ValueError as e:  # malformed DER
        return "bad signature (%s)" % e
    return None


def verify_chain(events, keys_doc, start_position=1, start_prev=ZERO_HASH):
    """Verify a log from the contract alone: positions start_position.. with no
    gap, prev links, hash = sha256(canonical bytes without hash/sig/key_id),
    key_id names an events key of keys_doc (whose key_id is recomputed from
    its PEM), and sig is a valid base64 DER ECDSA P-256/SHA-256 signature
    over the canonical bytes. Raises ChainError(position, reason) at the first
    bad event; returns (count, last hash)."""
    keys = keys_by_purpose(keys_doc, "events")
    prev = start_prev
    expect = start_position
    for i, ev in enumerate(events):
        if not isinstance(ev, dict):
            raise ChainError(expect, "not an object")
        pos = ev.get("position")
        if not isinstance(pos, int) or isinstance(pos, bool) or pos != expect:
            raise ChainError(expect, "position %r, want %d" % (pos, expect))
        missing = EVENT_FIELDS - set(ev)
        if missing:
            raise ChainError(pos, "missing fields %s" % sorted(missing))
        if ev["prev"] != prev:
            raise ChainError(pos, "prev %r does not link to %r" % (ev["prev"], prev))
        try:
            data = canonical(ev)
        except ChainError as e:
            raise ChainError(pos, e.reason)
        if hashlib.sha256(data).hexdigest() != ev["hash"]:
            raise ChainError(pos, "hash does not match the canonical bytes")
        pub = keys.get(ev["key_id"])
        if pub is None:
            raise ChainError(pos, "key_id %r is not an events key" % ev["key_id"])
        err = _verify_sig(pub, ev["sig"], data)
        if err:
            raise ChainError(pos, err)
        prev = ev["hash"]
        expect += 1
    return expect - start_position, prev


def verify_snapshot(doc, keys_doc):
    """A signed snapshot {name, as_of{position,hash}, state, key_id, sig}: the
    signature by a snapshots key over the canonical bytes of the document
    without key_id and sig. Raises AssertionError; returns True."""
    for f in ("name", "as_of", "state", "key_id", "sig"):
        if f not in doc:
            raise AssertionError("snapshot without %r: %r" % (f, doc))
    asof = doc["as_of"]
    if not isinstance(asof, dict) or not isinstance(asof.get("position"), int) or \
            not re.fullmatch(r"[0-9a-f]{64}", str(asof.get("hash"))):
        raise AssertionError("bad as_of %r" % (asof,))
    keys = keys_by_purpose(keys_doc, "snapshots")
    pub = keys.get(doc["key_id"])
    if pub is None:
        raise AssertionError("snapshot key_id %r is not a snapshots key" % doc["key_id"])
    err = _verify_sig(pub, doc["sig"], canonical(doc, without=("key_id", "sig")))
    if err:
        raise AssertionError("snapshot: " + err)
    return True


def verify_signed_doc(doc, sig_b64, key_id, keys_doc, purpose):
    """Any other signed document (manifest, envelope)."""
    keys = keys_by_purpose(keys_doc, purpose)
    pub = keys.get(key_id)
    if pub is None:
        raise AssertionError("key_id %r is not a %s key" % (key_id, purpose))
    err = _verify_sig(pub, sig_b64, canonical(doc, without=("key_id", "sig", "signature")))
    if err:
        raise AssertionError(err)
    return True


def fetch_all_events(port, token, limit=1000, max_pages=100000):
    """The whole log through GET /v1/events, page by page. Returns
    (events, head) with head from the last page. Checks every page is
    oldest first and continues the previous one."""
    events = []
    after = 0
    head = None
    for _ in range(max_pages):
        r = request("GET", port, "/v1/events?after=%d&limit=%d" % (after, limit), token=token)
        if r.status != 200 or not isinstance(r.body, dict):
            raise AssertionError("GET /v1/events?after=%d: %r" % (after, r))
        page = r.body.get("events")
        head = r.body.get("head")
        if not isinstance(page, list) or not isinstance(head, int):
            raise AssertionError("bad events page %r" % (r,))
        if len(page) > limit:
            raise AssertionError("page of %d events with limit %d" % (len(page), limit))
        for ev in page:
            if ev.get("position") != after + 1:
                raise AssertionError("page after=%d: position %r, want %d"
                                     % (after, ev.get("position"), after + 1))
            after += 1
        events.extend(page)
        if not page or after >= head:
            break
    else:
        raise AssertionError("too many pages")
    return events, head


def make_foreign_keys_doc():
    """A /v1/keys document with three fresh keys nobody used (to prove
    verifiers refuse a log against keys that did not sign it)."""
    keys = []
    for purpose in ("events", "devices", "snapshots"):
        pem = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
        keys.append({"key_id": key_id_of_pem(pem), "purpose": purpose, "alg": "ES256",
                     "public_key_pem": pem, "status": "active"})
    return {"keys": keys}


# --------------------------------------------------------------------------
# Prometheus text
# --------------------------------------------------------------------------

_METRIC_LINE = re.compile(
    r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{((?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*",?)*)\})?'
    r' ([-+]?(?:[0-9.eE+-]+|NaN|Inf)) ?([-0-9]+)?$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text):
    """Prometheus text format -> list of (name, {labels}, float). Raises
    AssertionError on a line that is not a sample, a comment or blank."""
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            if line.startswith("# TYPE") or line.startswith("# HELP"):
                if len(line.split(None, 3)) < 3:
                    raise AssertionError("metrics line %d: bad comment %r" % (n, line))
            continue
        m = _METRIC_LINE.match(line)
        if not m:
            raise AssertionError("metrics line %d is not Prometheus text: %r" % (n, line))
        labels = dict(_LABEL.findall(m.group(3) or ""))
        out.append((m.group(1), labels, float(m.group(4))))
    return out


def metric_value(samples, name, **labels):
    vals = [v for (n, l, v) in samples if n == name and all(l.get(k) == x for k, x in labels.items())]
    if not vals:
        return None
    return sum(vals)


# --------------------------------------------------------------------------
# Deployment and servers
# --------------------------------------------------------------------------

_LIVE = []


def _kill_all_live():
    for srv in list(_LIVE):
        try:
            if srv.proc.poll() is None:
                srv.proc.kill()
                srv.proc.wait(5)
        except Exception:
            pass


atexit.register(_kill_all_live)


class StartError(AssertionError):
    pass


class Server:
    """One signetd process."""

    def __init__(self, dep, proc, role, write_port, read_port, out_path, err_path, cfg):
        self.dep = dep
        self.proc = proc
        self.role = role
        self.write_port = write_port
        self.read_port = read_port
        self.out_path = out_path
        self.err_path = err_path
        self.config = cfg
        self.stop_seconds = None

    @property
    def health_port(self):
        return self.write_port if self.role == "write" else self.read_port

    def running(self):
        return self.proc.poll() is None

    def stderr_text(self):
        with open(self.err_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def output_text(self):
        with open(self.out_path, "rb") as f:
            out = f.read().decode("utf-8", "replace")
        return out + self.stderr_text()

    def wait_ready(self, timeout=20, healthy=True):
        """Wait until /healthz answers (200 if healthy, anything otherwise)."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise StartError("signetd (%s) exited with %s before it was ready:\n%s"
                                 % (self.role, self.proc.returncode, self.output_text()[-3000:]))
            try:
                r = request("GET", self.health_port, "/healthz", timeout=5)
                last = r
                if r.status == 200 or not healthy:
                    return r
            except (OSError, http.client.HTTPException) as e:
                last = e
            time.sleep(0.05)
        raise StartError("signetd (%s) not ready after %ss (last /healthz: %r); stderr:\n%s"
                         % (self.role, timeout, last, self.output_text()[-3000:]))

    def stop(self, kill=False, timeout=20):
        """SIGTERM (or SIGKILL) and wait. Returns the exit status. A process
        that does not stop on SIGTERM within timeout is killed and
        AssertionError raised."""
        if self.proc.poll() is None:
            t0 = time.monotonic()
            self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                if self in _LIVE:
                    _LIVE.remove(self)
                raise AssertionError("signetd did not stop within %ss of SIGTERM" % timeout)
            self.stop_seconds = time.monotonic() - t0
        if self in _LIVE:
            _LIVE.remove(self)
        return self.proc.returncode

    def kill9(self):
        return self.stop(kill=True)


class Deployment:
    """A temporary world: SoftHSM2 token directory, configuration, secrets,
    ports. Nothing is shared between deployments."""

    def __init__(self, name="e2e", module=None, extra_env=None, max_json_bytes=None,
                 max_image_bytes=None, token_label="signet", mutate=None):
        for exe in (SIGNETD, SIGNET):
            if not os.access(exe, os.X_OK):
                raise StartError("%s is missing: build first (SIGNET_BUILD_DIR=%s)" % (exe, BUILD_DIR))
        self.dir = tempfile.mkdtemp(prefix="signet-%s-" % name)
        if KEEP:
            print("signet e2e: keeping", self.dir, file=sys.stderr)
        self.module = module or SOFTHSM_MODULE
        self.extra_env = dict(extra_env or {})
        self.token_label = token_label
        self.pin = "pin-" + secrets.token_hex(8)
        self.so_pin = "so-" + secrets.token_hex(8)
        self.tokens = {n: "tok_" + secrets.token_urlsafe(24) for n in PRINCIPALS}
        self.token_dir = os.path.join(self.dir, "tokens")
        os.mkdir(self.token_dir)
        self.softhsm_conf = os.path.join(self.dir, "softhsm2.conf")
        with open(self.softhsm_conf, "w") as f:
            f.write("directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n"
                    % self.token_dir)
        self.limits = {"max_image_bytes": max_image_bytes or 1073741824,
                       "max_json_bytes": max_json_bytes or 65536}
        self.servers = []
        self.cli_outputs = []
        self.ports = {}  # config path -> (write, read)
        self.config_path = self.write_config("signet.json", mutate=mutate)
        self.write_port, self.read_port = self.ports[self.config_path]

    # ---- configuration ----

    def config_dict(self, write_port, read_port):
        principals = []
        for name, (roles, dev) in PRINCIPALS.items():
            p = {"name": name, "token_sha256": sha256_hex(self.tokens[name]), "roles": list(roles)}
            if dev:
                p["device_id"] = dev
            principals.append(p)
        return {
            "data_dir": "var",
            "store": "sqlite:var/events.db",
            "write_listen": "127.0.0.1:%d" % write_port,
            "read_listen": "127.0.0.1:%d" % read_port,
            "pkcs11": {
                "module": self.module,
                "token_label": self.token_label,
                "pin_env": "SIGNET_PIN",
                "so_pin_env": "SIGNET_SO_PIN",
            },
            "principals": principals,
            "approvals": {"default": 2, "actions": {"reboot": 1}},
            "limits": dict(self.limits),
        }

    def write_config(self, filename, mutate=None, raw=None):
        """Write a configuration file (in self.dir, so relative paths name
        the same store) with its own free ports. mutate(dict) may change the
        dict in place; raw (str) replaces the whole text."""
        wp, rp = free_ports(2)
        path = os.path.join(self.dir, filename)
        cfg = self.config_dict(wp, rp)
        if mutate:
            cfg = mutate(cfg) or cfg
        with open(path, "w") as f:
            f.write(raw if raw is not None else json.dumps(cfg, indent=2) + "\n")
        self.ports[path] = (wp, rp)
        return path

    def env(self, **over):
        e = dict(os.environ)
        for k in list(e):
            if k.startswith("FAULTY_PKCS11_") or k in ("SIGNET_TOKEN",):
                del e[k]
        e["SOFTHSM2_CONF"] = self.softhsm_conf
        e["SIGNET_PIN"] = self.pin
        e["SIGNET_SO_PIN"] = self.so_pin
        e.update(self.extra_env)
        for k, v in over.items():
            if v is None:
                e.pop(k, None)
            else:
                e[k] = v
        return e

    def token(self, name):
        return self.tokens[name]

    def secrets_list(self):
        return [self.pin, self.so_pin] + list(self.tokens.values())

    # ---- CLI ----

    def cli(self, *args, input=None, timeout=120, env=None):
        """Run the signet CLI; returns CompletedProcess with str stdout/stderr."""
        p = subprocess.run([SIGNET] + [str(a) for a in args], input=input,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           env=env or self.env(), cwd=self.dir, timeout=timeout)
        p.stdout = p.stdout.decode("utf-8", "replace")
        p.stderr = p.stderr.decode("utf-8", "replace")
        self.cli_outputs.append(p.stdout + p.stderr)
        return p

    def _tree(self):
        out = {}
        for root in (self.token_dir, os.path.join(self.dir, "var")):
            for dp, _, fns in os.walk(root):
                for fn in fns:
                    p = os.path.join(dp, fn)
                    if fn.endswith(("-shm", "-wal", ".lock")):
                        continue
                    out[os.path.relpath(p, self.dir)] = os.path.getsize(p)
        return out

    def init(self, config=None):
        """`signet init` twice: both exit 0, the second changes nothing."""
        cfg = config or self.config_path
        p = self.cli("init", "--config", cfg)
        if p.returncode != 0:
            raise StartError("signet init exited %d:\n%s%s" % (p.returncode, p.stdout, p.stderr))
        before = self._tree()
        p2 = self.cli("init", "--config", cfg)
        if p2.returncode != 0:
            raise StartError("second signet init exited %d:\n%s%s" % (p2.returncode, p2.stdout, p2.stderr))
        after = self._tree()
        if before != after:
            raise AssertionError("second signet init changed files: before %r after %r" % (before, after))
        return p

    # ---- servers ----

    def spawn(self, role="all", config=None, env=None):
        """Start signetd without waiting."""
        cfg = config or self.config_path
        wp, rp = self.ports[cfg]
        n = len(self.servers)
        out_path = os.path.join(self.dir, "signetd-%d-%s.stdout" % (n, role or "default"))
        err_path = os.path.join(self.dir, "signetd-%d-%s.stderr" % (n, role or "default"))
        args = [SIGNETD, "--config", cfg]
        if role:
            args += ["--role", role]
        with open(out_path, "wb") as fo, open(err_path, "wb") as fe:
            proc = subprocess.Popen(args, stdout=fo, stderr=fe, stdin=subprocess.DEVNULL,
                                    env=env or self.env(), cwd=self.dir)
        srv = Server(self, proc, role or "all", wp, rp, out_path, err_path, cfg)
        self.servers.append(srv)
        _LIVE.append(srv)
        return srv

    def start(self, role="all", config=None, env=None, healthy=True, timeout=20):
        srv = self.spawn(role, config, env)
        try:
            srv.wait_ready(timeout=timeout, healthy=healthy)
        except BaseException:
            srv.stop(kill=True)
            raise
        return srv

    def leaked_secrets(self):
        """[(where, which)] for every PIN / SO PIN / token found in captured
        server output or CLI output."""
        names = {self.pin: "PIN", self.so_pin: "SO PIN"}
        names.update({t: "token of %s" % n for n, t in self.tokens.items()})
        found = []
        texts = [("signetd %s" % os.path.basename(s.err_path), s.output_text()) for s in self.servers]
        texts += [("signet CLI", t) for t in self.cli_outputs]
        for where, text in texts:
            for sec, what in names.items():
                if sec in text:
                    found.append((where, what))
        # Nor in anything signet stores (tokens are kept only as hashes).
        for dp, _, fns in os.walk(os.path.join(self.dir, "var")):
            for fn in fns:
                try:
                    with open(os.path.join(dp, fn), "rb") as f:
                        data = f.read()
                except OSError:
                    continue
                for sec, what in names.items():
                    if sec.encode() in data:
                        found.append((os.path.relpath(os.path.join(dp, fn), self.dir), what))
        return found

    def close(self):
        for s in self.servers:
            try:
                s.stop(kill=True)
            except Exception:
                pass
        if not KEEP:
            shutil.rmtree(self.dir, ignore_errors=True)


# --------------------------------------------------------------------------
# Convenience for tests
# --------------------------------------------------------------------------

def head_of(read_port, token):
    """The store head as GET /v1/events reports it."""
    r = request("GET", read_port, "/v1/events?after=0&limit=1", token=token)
    if r.status != 200 or not isinstance(r.body, dict) or not isinstance(r.body.get("head"), int):
        raise AssertionError("GET /v1/events head: %r" % (r,))
    return r.body["head"]


def get_keys(port):
    r = request("GET", port, "/v1/keys")
    if r.status != 200 or not isinstance(r.body, dict):
        raise AssertionError("GET /v1/keys: %r" % (r,))
    return r.body


def register(port, token, device_id, hardware="hw-a", group=None, headers=None, conn=None):
    body = {"device_id": device_id, "hardware": hardware}
    if group is not None:
        body["group"] = group
    return request("POST", port, "/v1/devices", token=token, body=body, headers=headers, conn=conn)


class SecretsCheckMixin:
    """tearDownClass helper: fail if any secret leaked into captured output."""

    @classmethod
    def close_deployments(cls, *deps):
        leaks = []
        for d in deps:
            if d is None:
                continue
            for s in d.servers:
                try:
                    s.stop()
                except Exception:
                    pass
            leaks += d.leaked_secrets()
            d.close()
        if leaks:
            raise AssertionError("secrets found in output: %r" % leaks)


def deep_copy(x):
    return copy.deepcopy(x)


import unittest  # noqa: E402


class E2ETestCase(unittest.TestCase):
    """Base class: deployments made with cls.deployment() are closed after the
    class (also when setUpClass fails), and the class fails if a PIN, SO PIN
    or bearer token appears in any captured signetd or CLI output."""

    maxDiff = 4000

    @classmethod
    def deployment(cls, **kw):
        d = Deployment(name=cls.__name__.lower(), **kw)
        cls.addClassCleanup(cls._close_and_check, d)
        return d

    @staticmethod
    def _close_and_check(d):
        for s in d.servers:
            try:
                s.stop()
            except Exception:
                pass
        leaks = d.leaked_secrets()
        d.close()
        if leaks:
            raise AssertionError("secrets found in captured output: %r" % leaks)

    def assertProblem(self, resp, status, slug=None, msg=""):
        assert_problem(resp, status, slug=slug, msg=msg)

    def assertStatus(self, resp, status, msg=""):
        if resp[0] != status:
            self.fail("%sstatus %d, want %d: %r" % (msg + ": " if msg else "", resp[0], status, resp))


# --------------------------------------------------------------------------
# Tampering (for the verifiers' negative cases)
# --------------------------------------------------------------------------

def _idx(events, pos):
    for i, ev in enumerate(events):
        if ev.get("position") == pos:
            return i
    raise KeyError(pos)


def tamper_data_byte(events, pos):
    """Change one byte of a string in the data of the event at pos."""
    evs = copy.deepcopy(events)
    data = evs[_idx(evs, pos)]["data"]
    for k in sorted(data):
        if isinstance(data[k], str) and data[k]:
            s = data[k]
            data[k] = s[:-1] + ("x" if s[-1] != "x" else "y")
            return evs
    raise ValueError("no string in data of event %d" % pos)


def swap_sigs(events, p1, p2):
    evs = copy.deepcopy(events)
    i, j = _idx(evs, p1), _idx(evs, p2)
    evs[i]["sig"], evs[j]["sig"] = evs[j]["sig"], evs[i]["sig"]
    return evs


def remove_event(events, pos):
    evs = copy.deepcopy(events)
    del evs[_idx(evs, pos)]
    return evs


def reorder(events, pos):
    """Swap the events at pos and pos+1 in the list."""
    evs = copy.deepcopy(events)
    i = _idx(evs, pos)
    evs[i], evs[i + 1] = evs[i + 1], evs[i]
    return evs


def set_key_id(events, pos, key_id):
    evs = copy.deepcopy(events)
    evs[_idx(evs, pos)]["key_id"] = key_id
    return evs


def key_id_for(keys_doc, purpose):
    for k in keys_doc["keys"]:
        if k["purpose"] == purpose:
            return k["key_id"]
    raise KeyError(purpose)
