"""Independent verification for signet's end-to-end tests.

Owns: canonical bytes (`canonical`), key ids (`key_id_of_pem`,
`keys_by_purpose`, `key_id_for`), the verifiers of a log (`verify_chain`),
a signed snapshot (`verify_snapshot`) and any other signed document
(`verify_signed_doc`), a keys document nobody signed with
(`make_foreign_keys_doc`), and Prometheus text (`parse_metrics`,
`metric_value`, `http_requests`).

Written from the contract only (DESIGN.md, API.md, docs/behaviour.md) and
using nothing of signet: canonical bytes are json.dumps(sort_keys=True,
separators=(',', ':'), ensure_ascii=False), which is RFC 8785 for documents
holding only strings, integers, booleans, null, arrays and objects with ASCII
keys, and signatures are checked with the `cryptography` package. Nothing
here talks HTTP (client.py) or starts a process (deploy.py)."""

import base64
import hashlib
import json
import re

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

ZERO_HASH = "0" * 64
EVENT_FIELDS = {"position", "id", "type", "time", "actor", "command_id", "data",
                "prev", "hash", "key_id", "sig"}
UNSIGNED_FIELDS = ("hash", "sig", "key_id")

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
    """Hex SHA-256 of bytes or of a str's UTF-8."""
    if isinstance(data, str):
        data = data.encode()
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------
# Signed documents
# --------------------------------------------------------------------------

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


def key_id_for(keys_doc, purpose):
    """The key_id of the (first) key of a purpose in a /v1/keys document."""
    for k in keys_doc["keys"]:
        if k["purpose"] == purpose:
            return k["key_id"]
    raise KeyError(purpose)


# The order of P-256. (r, s) and (r, n - s) both verify; signet makes only
# the low form (s <= n/2), and this verifier, like its device library,
# refuses the other.
P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def is_low_s(sig_der):
    _, s = decode_dss_signature(sig_der)
    return s <= P256_N // 2


def to_low_s(sig_der):
    """The low-S DER form of an ECDSA P-256 signature."""
    r, s = decode_dss_signature(sig_der)
    return encode_dss_signature(r, min(s, P256_N - s))


def to_high_s(sig_der):
    """The high-S twin of a signature: valid ECDSA, refused by signet."""
    r, s = decode_dss_signature(sig_der)
    return encode_dss_signature(r, max(s, P256_N - s))


def _verify_sig(pub, sig_b64, data):
    try:
        sig = base64.b64decode(sig_b64, validate=True)
    except (ValueError, TypeError):
        return "sig is not base64"
    try:
        if not is_low_s(sig):
            return "high-S signature (only the low-S form is accepted)"
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
