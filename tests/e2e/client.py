"""HTTP for signet's end-to-end tests: one request and its answer.

Owns: `Response` (status, headers, body with names), `request` (http.client,
optionally on a kept-alive connection), `raw_request` and `exchange` (raw
bytes on a socket, for requests http.client refuses to send),
`send_tolerant` (a body the server may refuse before it is all sent),
`in_threads` (many clients at once), the
RFC 9457 problem+json checks of docs/behaviour.md (`problem_errors`,
`assert_problem`), `wait_until`, and the few API calls every test makes
(`register`, `head_of`, `get_keys`, `fetch_all_events`).

Everything talks to 127.0.0.1 only. Nothing here starts a server (deploy.py)
or judges a signature (verify.py)."""

import email.parser
import http.client
import json
import re
import select
import socket
import threading
import time

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
    429: {"too-many-requests"},
    500: {"internal"},
    503: {"hsm-unavailable", "store-unavailable", "unavailable", "integrity-failure"},
    507: {"insufficient-storage"},
}


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


def make_response(status, msg, raw, elapsed):
    """A Response from a status, parsed headers and the raw body."""
    ctype = (msg.get("Content-Type") or "").lower()
    body = raw
    if "json" in ctype:
        try:
            body = json.loads(raw.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            body = raw
    return Response(status, msg, body, raw, elapsed)


def parse_headers(lines):
    """http.client.HTTPMessage of header lines (bytes, without CRLF)."""
    return email.parser.BytesHeaderParser(_class=http.client.HTTPMessage).parsebytes(
        b"\r\n".join(lines) + b"\r\n\r\n")


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
    return make_response(resp.status, resp.msg, raw, elapsed)


def exchange(port, data, timeout=10):
    """Send raw bytes, read until the server closes (or a reset, or timeout
    seconds in all). Returns the raw bytes received."""
    buf = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                c = s.recv(65536)
            except (ConnectionResetError, socket.timeout):
                break
            if not c:
                break
            buf += c
    return buf


def parse_raw_response(buf, elapsed, what=b"", skip_interim=False):
    """The first Response in raw answer bytes (with skip_interim, the first
    after any interim 1xx answers such as 100 Continue); the body is cut to
    Content-Length or de-chunked."""
    while skip_interim and buf.startswith(b"HTTP/1.1 1"):
        buf = buf.partition(b"\r\n\r\n")[2]
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    if not lines or not lines[0].startswith(b"HTTP/1."):
        raise AssertionError("no HTTP answer to raw request %r: %r" % (what[:200], buf[:200]))
    status = int(lines[0].split()[1])
    msg = parse_headers(lines[1:])
    if msg.get("Transfer-Encoding", "").lower() == "chunked":
        rest = _dechunk(rest)
    elif msg.get("Content-Length") is not None:
        rest = rest[:int(msg["Content-Length"])]
    return make_response(status, msg, rest, elapsed)


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
    return parse_raw_response(b"".join(chunks), time.monotonic() - t0, what=data)


def send_tolerant(port, method, path, headers, chunks, chunked=False, timeout=30):
    """Send a request whose body may be refused before it is all sent (413):
    headers first, then the body chunk by chunk, looking for an early answer
    between chunks and tolerating a reset while sending. Returns the
    Response, or None if the connection was reset before any answer."""
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
    return parse_raw_response(buf, time.monotonic() - t0, what=head.encode("latin-1"),
                              skip_interim=True)


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


# --------------------------------------------------------------------------
# problem+json (RFC 9457 and docs/behaviour.md)
# --------------------------------------------------------------------------

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
    if status in (429, 503) and hdrs.get("Retry-After") is None:
        errs.append("%d without Retry-After" % status)
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


def in_threads(n, fn, timeout=60, together=False):
    """fn(0) .. fn(n-1), each in its own thread (with together, released at
    once by a barrier), waiting at most timeout seconds for each thread.
    Returns the results in the order the calls finished; a call that raised
    or is still running has none."""
    results = []
    lock = threading.Lock()
    barrier = threading.Barrier(n) if together else None

    def run(i):
        if barrier:
            barrier.wait()
        r = fn(i)
        with lock:
            results.append(r)
    ts = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout)
    with lock:
        return list(results)


# --------------------------------------------------------------------------
# The API calls every test makes
# --------------------------------------------------------------------------

def register(port, token, device_id, hardware="hw-a", group=None, headers=None, conn=None):
    """POST /v1/devices {device_id, hardware[, group]}."""
    body = {"device_id": device_id, "hardware": hardware}
    if group is not None:
        body["group"] = group
    return request("POST", port, "/v1/devices", token=token, body=body, headers=headers, conn=conn)


def head_of(read_port, token):
    """The store head as GET /v1/events reports it."""
    r = request("GET", read_port, "/v1/events?after=0&limit=1", token=token)
    if r.status != 200 or not isinstance(r.body, dict) or not isinstance(r.body.get("head"), int):
        raise AssertionError("GET /v1/events head: %r" % (r,))
    return r.body["head"]


def get_keys(port):
    """The /v1/keys document."""
    r = request("GET", port, "/v1/keys")
    if r.status != 200 or not isinstance(r.body, dict):
        raise AssertionError("GET /v1/keys: %r" % (r,))
    return r.body


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
