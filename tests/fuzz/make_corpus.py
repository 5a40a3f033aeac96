#!/usr/bin/env python3
"""Writes the seed corpus of every fuzz target (tests/fuzz/corpus/<target>/)
from the vectors of the unit and end-to-end tests: request bodies, canonical
documents, .swu archives, configurations, envelopes and manifests, HTTP
heads. Run it again after changing a target's input format; the files are
committed, so CI does not need it. Each target's seeds stay a few KiB."""
import hashlib
import json
import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "corpus")
FW = "sha256:" + "ab" * 32


def put(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def jcs():
    docs = [
        '{"a":1,"b":[true,false,null],"c":{"d":"e"}}',
        '{"\\u00e9":1,"\\ud83d\\ude00":2,"\\uffff":3,"z":4,"\\u0080":5}',
        '{"s":"tab\\there \\"quoted\\" back\\\\slash \\u0001 \\u001f \\u007f \\u2028"}',
        '[9007199254740991,-9007199254740991,0,-1,12]',
        '{"n":9007199254740992}',
        '{"r":1.5}',
        '{ "b" : 2 , "a" : 1 }',
        '"just a string"',
        '{"nul":"a\\u0000b","k":"v"}',
        '{"device_id":"dev-1","hardware":"hw-a","group":"g"}',
        '{"action":"reboot","command_id":"c-1","counter":3,"device_id":"dev-0001",'
        '"not_after":"2026-11-27T19:00:00.000Z","params":{"delay_s":5,"mode":"soft",'
        '"z":[true,false,null,-3,"a\\nb"]}}',
        '{"created":"2026-11-27T18:00:00.000Z","hardware":"hw-a","name":"fw",'
        '"security_version":3,"sha256":"' + "ab" * 32 + '","size":14,"uploader":"ci",'
        '"version":"1.2.3"}',
        '[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]',
    ]
    for i, d in enumerate(docs):
        put("jcs", "doc%02d" % i, d)


# fuzz_validators: first byte the write-request type (routes.c's order),
# then the {} path id up to a newline, then the body.
VALIDATOR_BODIES = [
    (0, "", '{"device_id":"dev-1","hardware":"hw-a","group":"lab"}'),
    (0, "", '{"device_id":"../x","hardware":"hw-a"}'),
    (1, "", json.dumps({"firmware_id": FW, "hardware": "hw-a", "group": "g",
                        "stages": [5, 25, 100], "failure_threshold": 0.05,
                        "min_reports": 20})),
    (1, "", json.dumps({"firmware_id": FW, "hardware": "hw-a", "stages": [25, 5],
                        "failure_threshold": 1, "min_reports": 1})),
    (2, "r-1", "{}"),
    (3, "r-1", "{}"),
    (5, "../x", "{}"),
    (6, "dev-1", json.dumps({"firmware_id": FW, "status": "installed"})),
    (6, "dev-1", json.dumps({"firmware_id": FW, "status": "failed", "detail": "no space"})),
    (7, "", '{"device_id":"d-1","action":"reboot","params":{"n":1},"ttl_seconds":60}'),
    (7, "", '{"device_id":"d-1","action":"Reboot","params":{},"ttl_seconds":604800}'),
    (8, "c-1", '{"comment":"ok"}'),
    (9, "c-1", ""),
    (10, "dev-1", '{"action_id":7,"status":"installed","detail":"done"}'),
    (11, "dev-1", '{"action_id":2147483647}'),
    (12, "dev-1", '{"mode":"replace","data":{"board":"b1","rev":"2"}}'),
    (13, "", json.dumps({"name": "fw", "version": "1.2.3", "hardware": "hw-a",
                         "security_version": 3, "size": 14, "sha256": "ab" * 32,
                         "format": "swu"})),
]


def validators():
    for i, (t, pid, body) in enumerate(VALIDATOR_BODIES):
        put("validators", "body%02d" % i, bytes([t]) + pid.encode() + b"\n" + body.encode())


def cpio_entry(crc, name, data, mode=0o100644):
    name_b = name.encode() + b"\0"
    check = sum(data) & 0xFFFFFFFF if crc else 0
    hdr = ("070702" if crc else "070701") + "".join("%08X" % v for v in (
        1, mode, 0, 0, 1, 1700000000, len(data), 0, 0, 0, 0, len(name_b), check))
    out = hdr.encode() + name_b
    out += b"\0" * (-len(out) % 4)
    out += data + b"\0" * (-len(data) % 4)
    return out


def archive(crc, desc, files, pad=False):
    out = cpio_entry(crc, "sw-description", desc)
    for name, data in files:
        out += cpio_entry(crc, name, data)
    out += cpio_entry(crc, "TRAILER!!!", b"", 0)
    if pad:
        out += b"\0" * (-len(out) % 512)
    return out


def swu():
    a, b = b"the root file system", b"#!/bin/sh\necho hi\n"
    ha, hb = hashlib.sha256(a).hexdigest(), hashlib.sha256(b).hexdigest()
    cfg = ('software =\n{\n  version = "1.0";\n  myboard = {\n    hardware-compatibility = '
           '["1.0"];\n    images: ( { filename = "a.img"; device = "/dev/null"; sha256 = "%s"; } );'
           '\n  };\n  scripts: ( { filename = "b.sh"; type = "shellscript"; sha256 = "%s"; } );\n'
           '};\n' % (ha, hb)).encode()
    js = json.dumps({"software": {"version": "1.0", "images": [
        {"filename": "a.img", "sha256": ha}], "files": [{"filename": "b.sh", "sha256": hb}]}}
    ).encode()
    # first byte: how the archive is split (fuzz_swu.c)
    put("swu", "newc-libconfig", b"\xc0" + archive(False, cfg, [("a.img", a), ("b.sh", b)]))
    put("swu", "crc-json-bytewise", b"\x00" + archive(True, js, [("a.img", a), ("b.sh", b)]))
    put("swu", "newc-json-padded", b"\x07" + archive(False, js, [("a.img", a), ("b.sh", b)],
                                                      pad=True))
    put("swu", "missing-payload", b"\xc0" + archive(False, cfg, [("a.img", a)]))
    put("swu", "path-trick", b"\xc0" + archive(False, cfg.replace(b'"b.sh"', b'"../b.sh"'),
                                                [("a.img", a), ("../b.sh", b)]))


def config():
    base = {
        "data_dir": "var", "store": "sqlite:var/events.db",
        "write_listen": "127.0.0.1:7700", "read_listen": "[::1]:7701",
        "pkcs11": {"module": "/usr/lib/softhsm/libsofthsm2.so", "token_label": "signet",
                   "pin_env": "SIGNET_PIN", "so_pin_env": "SIGNET_SO_PIN",
                   "sign_timeout_ms": 2000},
        "principals": [
            {"name": "ci", "token_sha256": "00" * 32, "roles": ["builder"]},
            {"name": "dev-0001", "token_sha256": "05" * 32, "roles": ["device"],
             "device_id": "dev-0001"}],
        "approvals": {"default": 2, "actions": {"reboot": 1}},
        "limits": {"max_image_bytes": 1073741824, "max_json_bytes": 65536},
        "ddi": {"tenant": "DEFAULT", "poll_seconds": 300},
    }
    put("config", "full", json.dumps(base, indent=1))
    small = {k: base[k] for k in ("data_dir", "store", "write_listen", "read_listen", "pkcs11",
                                  "principals")}
    put("config", "minimal", json.dumps(small))
    bad = dict(small, unknown_key=1)
    put("config", "unknown-key", json.dumps(bad))
    with open(os.path.join(HERE, "..", "..", "config", "signet.example.json"), "rb") as f:
        put("config", "example", f.read())


def device():
    put("device", "envelope",
        '{"action":"reboot","command_id":"c-1","counter":3,"device_id":"dev-1",'
        '"not_after":"2026-11-27T19:00:00.000Z","params":{"port":2222}}')
    put("device", "manifest",
        '{"created":"2026-11-27T18:00:00.000Z","format":"swu","hardware":"hw-a","name":"fw",'
        '"security_version":3,"sha256":"' + "ab" * 32 + '","size":14,"uploader":"ci",'
        '"version":"1.2.3"}')
    put("device", "nested", '{"a":[{"b":"\\u0001\\n"},-3,null],"\\u00e9":"x"}')
    put("device", "time", "2026-11-27T19:00:00.000Z")
    put("device", "base64", "MEUCIQDx3nGsZ2Yh7xRZ6n1hBD4AQ5ivMcoTtw2m/jA8ptBHYgIgX2A=")
    with open(os.path.join(HERE, "..", "..", "pub.pem"), "rb") as f:
        put("device", "pem", f.read())


def events():
    root = os.path.join(HERE, "..", "..")
    for name in ("events.json", "keys.json"):
        with open(os.path.join(root, name), "rb") as f:
            put("events", name, f.read())
    with open(os.path.join(root, "events.json"), "rb") as f:
        page = json.load(f)
    # unsealed (first byte a space): verified as they are
    put("events", "as-is", b" " + json.dumps(page["events"]).encode())
    ev = dict(page["events"][0], type="FirmwareUploaded", data={
        "name": "fw", "version": "1.2.3", "hardware": "hw-a", "security_version": 3,
        "size": 14, "sha256": "ab" * 32, "format": "raw", "firmware_id": FW})
    put("events", "two", json.dumps([page["events"][0], ev]))


def route():
    # first byte: listener (bit 0), method ((b >> 1) % 6), parameter buffer
    paths = [(0, "/v1/devices", "Bearer tok-ops"),
             (1, "/v1/devices/dev-1/update", "Bearer tok-dev"),
             (1, "/v1/devices/dev-2/commands", "TargetToken tok-dev"),
             (1, "/ddi/DEFAULT/controller/v1/dev-1/deploymentBase/7", "TargetToken tok-dev"),
             (5, "/v1/firmware/sha256:ab/image", "bearer  tok-admin"),
             (0 | 4, "/v1/rollouts/r-1/advance", "Bearer tok-ops"),
             (0xF0, "/v1/snapshots/devices", "")]
    for i, (b, p, a) in enumerate(paths):
        put("route", "path%02d" % i, bytes([b]) + p.encode() + b"\0" + a.encode() + b"\0" +
            b"0012345678901234567")


def http():
    def req(listener, text):
        return bytes([listener]) + text.replace("\n", "\r\n").encode()

    W, R = 0, 1
    body = '{"device_id":"dev-1","hardware":"hw-a"}'
    put("http", "register", req(W, "POST /v1/devices HTTP/1.1\nHost: x\nAuthorization: Bearer "
                                    "tok-ops\nContent-Type: application/json\nIdempotency-Key: "
                                    "k-1\nContent-Length: %d\n\n%s" % (len(body), body)))
    put("http", "register-chunked",
        req(W, "POST /v1/devices HTTP/1.1\nHost: x\nAuthorization: Bearer tok-ops\n"
               "Content-Type: application/json; charset=utf-8\nTransfer-Encoding: chunked\n\n"
               "%x\n%s\n0\n\n" % (len(body), body)))
    put("http", "approve-empty", req(W, "POST /v1/commands/c-1/approve HTTP/1.1\nHost: x\n"
                                        "Authorization: Bearer tok-ops\n\n"))
    put("http", "advance", req(W, "POST /v1/rollouts/r-1/advance HTTP/1.1\nHost: x\n"
                                  "Authorization: Bearer tok-admin\nContent-Length: 0\n\n"))
    put("http", "events", req(R, "GET /v1/events?after=3&limit=10&min_position=2&wait_ms=0 "
                                 "HTTP/1.1\nHost: x\nAuthorization: Bearer tok-ops\n\n"))
    put("http", "image-range", req(R, "GET /v1/firmware/sha256:ab/image HTTP/1.1\nHost: x\n"
                                      "Authorization: Bearer tok-ci\nRange: bytes=10-99\n"
                                      "If-Range: \"etag-1\"\n\n"))
    put("http", "image-suffix-head", req(R, "HEAD /v1/firmware/x/image HTTP/1.1\nHost: x\n"
                                            "Authorization: Bearer tok-ci\nRange: bytes=-5\n"
                                            "If-None-Match: W/\"a\", \"etag-1\"\n\n"))
    put("http", "artifact", req(R, "GET /ddi/DEFAULT/controller/v1/dev-1/softwaremodules/1/"
                                   "artifacts/fw.swu HTTP/1.1\nHost: x\nAuthorization: "
                                   "TargetToken tok-dev\nRange: bytes=999-\n\n"))
    fb = json.dumps({"id": "7", "status": {"execution": "closed", "result": {
        "finished": "success"}, "details": ["installed\tok", "reboot"]}})
    put("http", "ddi-feedback", req(R, "POST /ddi/DEFAULT/controller/v1/dev-1/deploymentBase/7/"
                                       "feedback HTTP/1.1\nHost: x\nAuthorization: TargetToken "
                                       "tok-dev\nContent-Type: application/json\n"
                                       "Content-Length: %d\n\n%s" % (len(fb), fb)))
    cd = json.dumps({"mode": "merge", "data": {"board": "b1"}})
    put("http", "ddi-config", req(W, "PUT /ddi/DEFAULT/controller/v1/dev-1/configData HTTP/1.1\n"
                                     "Host: x\nAuthorization: TargetToken tok-dev\n"
                                     "Content-Type: application/json\nContent-Length: %d\n\n%s"
                                     % (len(cd), cd)))
    img = b"0123456789abcdef"
    put("http", "upload",
        req(W, "POST /v1/firmware?name=fw&version=1.2.3&hardware=hw-a&security_version=3 "
               "HTTP/1.1\nHost: x\nAuthorization: Bearer tok-ci\nContent-Type: "
               "application/octet-stream\nContent-Length: %d\n\n" % len(img)) + img)
    put("http", "upload-swu-expect",
        req(W, "POST /v1/firmware?name=fw&version=1&hardware=hw-a&security_version=1&"
               "format=swu HTTP/1.1\nHost: x\nAuthorization: Bearer tok-ci\nContent-Type: "
               "application/octet-stream\nExpect: 100-continue\nContent-Length: 120\n\n"
               "070701"))
    put("http", "strict-head", req(W, "POST /v1/devices HTTP/1.1\nHost: x\nHost: y\n"
                                      "Content-Length: 1\nContent-Length: 2\n\n{}"))
    put("http", "pipelined", req(R, "GET /v1/keys HTTP/1.1\nHost: x\n\nGET /healthz%00x "
                                    "HTTP/1.0\n\nDELETE /v1/events HTTP/1.1\nHost: x\n\n"))


def main():
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    for f in (jcs, validators, swu, config, device, events, route, http):
        f()
    return 0


if __name__ == "__main__":
    sys.exit(main())
