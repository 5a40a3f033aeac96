#!/usr/bin/python3
"""The device side end to end (issue 8, item 4): envelopes from the running
service verified by the device library through `signet-device`, the example
device. It polls with its device token, verifies each envelope against the
pinned `devices` key from the exact signed bytes (`signed_b64`), prints one
line per command it would execute and keeps its counter in a state file.

Between the device and signetd sits a small proxy (in this file) that plays
the attacker on the wire: it alters a byte of the signed bytes, re-signs
with its own key, replays old envelopes, hands over another device's
envelope, or edits the unsigned `envelope` copy; each must be refused (or,
for the unsigned copy, ignored). An expired envelope is refused with the
device's clock set past `not_after` (`--now`)."""

import base64
import calendar
import hashlib
import http.client
import json
import os
import re
import subprocess
import sys
import threading
import time
import unittest
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from client import get_keys, register, request, wait_until  # noqa: E402
from deploy import BUILD_DIR, E2ETestCase  # noqa: E402
from verify import canonical, key_id_for, keys_by_purpose  # noqa: E402

from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402

SIGNET_DEVICE = os.path.join(BUILD_DIR, "signet-device")
DEV, OTHER = "dev-0001", "dev-0002"  # dev-0001 is the harness's device principal
LINE = re.compile(r"^execute counter=(\d+) command_id=(\S+) action=(\S+) "
                  r"not_after=(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) params=(.*)$")


def ms_of(t):
    return calendar.timegm(time.strptime(t[:19], "%Y-%m-%dT%H:%M:%S")) * 1000 + int(t[20:23])


def rfc3339(ms):
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + ".%03dZ" % (ms % 1000)


class Proxy:
    """An HTTP server on 127.0.0.1 that forwards GET to signetd's read
    listener (same path, same Authorization) and passes the JSON answer
    through self.mutate(body, path) (None: unchanged) on its way back."""

    def __init__(self, upstream_port):
        self.upstream = upstream_port
        self.mutate = None
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                hdrs = {}
                if self.headers.get("Authorization"):
                    hdrs["Authorization"] = self.headers["Authorization"]
                conn = http.client.HTTPConnection("127.0.0.1", proxy.upstream, timeout=30)
                try:
                    conn.request("GET", self.path, headers=hdrs)
                    up = conn.getresponse()
                    data, status = up.read(), up.status
                finally:
                    conn.close()
                if status == 200 and proxy.mutate is not None:
                    data = json.dumps(proxy.mutate(json.loads(data), self.path)).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class DeviceLibrary(E2ETestCase):
    @classmethod
    def setUpClass(cls):
        if not os.access(SIGNET_DEVICE, os.X_OK):
            raise AssertionError("%s is missing: build first" % SIGNET_DEVICE)
        cls.start_deployment()
        for d in (DEV, OTHER):
            r = register(cls.wp, cls.ops, d)
            assert r.status == 201, r
        cls.keys = get_keys(cls.rp)
        cls.devices_key_id = key_id_for(cls.keys, "devices")
        cls.pem_path = os.path.join(cls.dep.dir, "devices.pem")
        pem = [k["public_key_pem"] for k in cls.keys["keys"] if k["purpose"] == "devices"][0]
        with open(cls.pem_path, "w") as f:
            f.write(pem)
        cls.proxy = Proxy(cls.rp)
        cls.addClassCleanup(cls.proxy.close)

    def setUp(self):
        self.proxy.mutate = None

    # ---- helpers ----

    def authorize(self, device, params=None, ttl=3600):
        """A reboot command (1 approval in the harness's configuration)
        requested by ops and approved by alice. Returns the position."""
        r = request("POST", self.wp, "/v1/commands", token=self.ops,
                    body={"device_id": device, "action": "reboot",
                          "params": params if params is not None else {}, "ttl_seconds": ttl})
        self.assertStatus(r, 202)
        cid = r.body["command_id"]
        r = request("POST", self.wp, "/v1/commands/%s/approve" % cid,
                    token=self.dep.token("alice"), body={})
        self.assertStatus(r, 200)
        self.assertEqual(r.body["state"], "authorized", r)
        return r.body["position"]

    def entries(self, device, after=0, min_position=None, who="ops"):
        q = "after=%d" % after
        if min_position is not None:
            q += "&min_position=%d&wait_ms=5000" % min_position
        r = request("GET", self.rp, "/v1/devices/%s/commands?%s" % (device, q),
                    token=self.dep.token(who))
        self.assertStatus(r, 200)
        return r.body["commands"]

    def state_file(self, counter=None):
        """A fresh state path (holding counter when given)."""
        path = os.path.join(self.dep.dir, self.unique("state"))
        if counter is not None:
            with open(path, "w") as f:
                f.write("%d\n" % counter)
        return path

    def device(self, state, port=None, now=None, token=None, extra=()):
        """signet-device --once; returns (exit status, [parsed lines], stderr)."""
        args = [SIGNET_DEVICE, "--url", "http://127.0.0.1:%d" % (port or self.rp),
                "--device-id", DEV, "--key", self.pem_path, "--state", state, "--once"]
        if now is not None:
            args += ["--now", now]
        env = dict(os.environ)
        env["SIGNET_DEVICE_TOKEN"] = token if token is not None else self.dep.token(DEV)
        p = subprocess.run(args + list(extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           env=env, timeout=60)
        out, err = p.stdout.decode(), p.stderr.decode()
        self.dep.cli_outputs.append(out + err)  # checked for leaked secrets
        lines = []
        for ln in out.splitlines():
            m = LINE.match(ln)
            self.assertIsNotNone(m, "unexpected output line %r" % ln)
            lines.append({"counter": int(m.group(1)), "command_id": m.group(2),
                          "action": m.group(3), "not_after": m.group(4),
                          "params": json.loads(m.group(5))})
        return p.returncode, lines, err

    def read_state(self, path):
        with open(path) as f:
            return int(f.read())

    def all_for(self, device):
        """Every envelope of device, after the newest write (fresh read model)."""
        return self.entries(device, 0, min_position=self.last_position)

    # ---- the service's envelopes ----

    def test_01_envelopes_verify_independently(self):
        """What the library relies on: signed_b64 is the canonical envelope,
        signed by the devices key named by key_id (checked here with
        python3-cryptography)."""
        self.last_position = self.authorize(DEV, {"delay_s": 5, "note": "caf\u00e9 \u2603"})
        pub = keys_by_purpose(self.keys, "devices")[self.devices_key_id]
        entries = self.all_for(DEV)
        self.assertGreaterEqual(len(entries), 1)
        for e in entries:
            signed = base64.b64decode(e["signed_b64"], validate=True)
            self.assertEqual(signed, canonical(e["envelope"], without=()))
            self.assertEqual(e["key_id"], self.devices_key_id)
            pub.verify(base64.b64decode(e["signature"], validate=True), signed,
                       ec.ECDSA(hashes.SHA256()))
            self.assertEqual(e["envelope"]["device_id"], DEV)

    def test_02_device_executes_once_and_keeps_counter(self):
        p1 = self.authorize(DEV, {"n": 1})
        self.last_position = self.authorize(DEV, {"n": 2, "s": "a\"b\\c\n\u00e9\U0001F600"})
        entries = self.all_for(DEV)
        counters = [e["envelope"]["counter"] for e in entries]
        self.assertEqual(counters, list(range(1, len(counters) + 1)), "no gaps, oldest first")
        self.assertGreater(self.last_position, p1)

        state = self.state_file()
        rc, lines, err = self.device(state)
        self.assertEqual(rc, 0, err)
        self.assertEqual([ln["counter"] for ln in lines], counters, err)
        for ln, e in zip(lines, entries):
            env = e["envelope"]
            self.assertEqual((ln["command_id"], ln["action"], ln["not_after"], ln["params"]),
                             (env["command_id"], env["action"], env["not_after"], env["params"]))
        self.assertEqual(self.read_state(state), counters[-1])

        # Again: nothing new, nothing executed twice.
        rc, lines, err = self.device(state)
        self.assertEqual((rc, lines), (0, []), err)

        # One more command: only it.
        self.last_position = self.authorize(DEV, {"n": 3})
        new = self.entries(DEV, counters[-1], min_position=self.last_position)
        self.assertEqual(len(new), 1)
        rc, lines, err = self.device(state)
        self.assertEqual(rc, 0, err)
        self.assertEqual([ln["counter"] for ln in lines], [new[0]["envelope"]["counter"]])
        self.assertEqual(self.read_state(state), new[0]["envelope"]["counter"])

    def test_03_device_state_and_token_problems(self):
        """A state file that does not hold a counter is an error, never a
        restart from 0 (which would accept replays); a wrong token is an error."""
        bad = self.state_file()
        with open(bad, "w") as f:
            f.write("twelve\n")
        rc, lines, err = self.device(bad)
        self.assertEqual((rc, lines), (1, []), err)
        self.assertIn("does not hold a counter", err)
        rc, lines, err = self.device(self.state_file(), token="tok_wrong")
        self.assertEqual((rc, lines), (1, []), err)
        self.assertIn("401", err)

    def test_04_polling_mode(self):
        """Without --once: polls every --interval seconds, executes a command
        authorized while it runs, and stops on SIGTERM with status 0."""
        state = self.state_file()
        env = dict(os.environ, SIGNET_DEVICE_TOKEN=self.dep.token(DEV))
        proc = subprocess.Popen([SIGNET_DEVICE, "--url", "http://127.0.0.1:%d" % self.rp,
                                 "--device-id", DEV, "--key", self.pem_path, "--state", state,
                                 "--interval", "1"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        lines = []
        reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, b"")),
                                  daemon=True)
        reader.start()
        try:
            self.last_position = self.authorize(DEV, {"while": "polling"})
            newest = self.all_for(DEV)[-1]["envelope"]
            wait_until(lambda: any(b"counter=%d " % newest["counter"] in ln for ln in lines), 20,
                       what="the command executed by the polling device")
        finally:
            proc.terminate()
            try:
                rc = proc.wait(20)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(5)
            reader.join(5)
            err = proc.stderr.read().decode()
            proc.stderr.close()
            proc.stdout.close()
            self.dep.cli_outputs.append(b"".join(lines).decode() + err)
        self.assertEqual(rc, 0, err)
        self.assertEqual(self.read_state(state), newest["counter"])
        counters = [int(LINE.match(ln.decode().rstrip("\n")).group(1)) for ln in lines]
        self.assertEqual(counters, sorted(set(counters)), "each command once, in order")

    # ---- the attacker on the wire ----

    def attacked(self, mutate, state_counter=0, now=None):
        """Run the device through the proxy with mutate; returns (rc, lines, err)."""
        self.proxy.mutate = mutate
        state = self.state_file(state_counter)
        try:
            rc, lines, err = self.device(state, port=self.proxy.port, now=now)
        finally:
            self.proxy.mutate = None
        self.assertEqual(self.read_state(state), state_counter, "state must not move")
        return rc, lines, err

    def fresh(self):
        """A new authorized envelope for DEV: (entry, counter before it)."""
        self.last_position = self.authorize(DEV, {"port": 2222})
        entries = self.all_for(DEV)
        e = entries[-1]
        return e, e["envelope"]["counter"] - 1

    def only(self, entry):
        return lambda body, path: {"commands": [entry]}

    def test_10_altered_signed_bytes_refused(self):
        e, before = self.fresh()
        signed = base64.b64decode(e["signed_b64"])
        for what, altered in (
                ("params byte", signed.replace(b'"port":2222', b'"port":2223')),
                ("counter byte", signed.replace(b'"counter":%d' % (before + 1),
                                                b'"counter":%d' % (before + 9))),
                ("first byte", b"[" + signed[1:]),
                ("one byte more", signed + b" ")):
            with self.subTest(what):
                self.assertNotEqual(altered, signed)
                bad = dict(e, signed_b64=base64.b64encode(altered).decode())
                rc, lines, err = self.attacked(self.only(bad), before)
                self.assertEqual((rc, lines), (3, []), err)
                self.assertIn("bad signature", err)
        # The untouched envelope through the same proxy is accepted: the
        # refusals above are the alterations'.
        self.proxy.mutate = self.only(e)
        state = self.state_file(before)
        rc, lines, err = self.device(state, port=self.proxy.port)
        self.assertEqual(rc, 0, err)
        self.assertEqual([ln["counter"] for ln in lines], [before + 1])
        self.assertEqual(self.read_state(state), before + 1)

    def test_11_forged_refused(self):
        e, before = self.fresh()
        forger = ec.generate_private_key(ec.SECP256R1())
        forged_id = hashlib.sha256(forger.public_key().public_bytes(
            serialization.Encoding.DER,
            serialization.PublicFormat.SubjectPublicKeyInfo)).hexdigest()
        signed = base64.b64decode(e["signed_b64"]).replace(b'"port":2222', b'"port":22')
        sig = base64.b64encode(forger.sign(signed, ec.ECDSA(hashes.SHA256()))).decode()
        for what, key_id, reason in (("claiming the devices key", self.devices_key_id,
                                      "bad signature"),
                                     ("under its own key id", forged_id, "another key")):
            with self.subTest(what):
                bad = dict(e, signed_b64=base64.b64encode(signed).decode(), signature=sig,
                           key_id=key_id)
                rc, lines, err = self.attacked(self.only(bad), before)
                self.assertEqual((rc, lines), (3, []), err)
                self.assertIn(reason, err)

    def test_12_replayed_refused(self):
        """Old envelopes served again, whatever the device asked for."""
        e, before = self.fresh()
        everything = self.all_for(DEV)
        self.assertGreaterEqual(len(everything), 1)
        last = everything[-1]["envelope"]["counter"]
        rc, lines, err = self.attacked(lambda body, path: {"commands": everything}, last)
        self.assertEqual((rc, lines), (3, []), err)
        self.assertEqual(err.count("replayed"), len(everything), err)
        # The newest again after the device accepted it.
        rc, lines, err = self.attacked(self.only(e), before + 1)
        self.assertEqual((rc, lines), (3, []), err)
        self.assertIn("replayed", err)

    def test_13_misaddressed_refused(self):
        """Another device's genuine envelope handed to this device."""
        self.last_position = self.authorize(OTHER, {"x": 1})
        theirs = self.entries(OTHER, 0, min_position=self.last_position)[-1]
        self.assertEqual(theirs["envelope"]["device_id"], OTHER)
        rc, lines, err = self.attacked(self.only(theirs), 0)
        self.assertEqual((rc, lines), (3, []), err)
        self.assertIn("another device", err)
        # Relabelled as ours in the unsigned copy: still theirs.
        relabelled = dict(theirs, envelope=dict(theirs["envelope"], device_id=DEV))
        rc, lines, err = self.attacked(self.only(relabelled), 0)
        self.assertEqual((rc, lines), (3, []), err)
        self.assertIn("another device", err)

    def test_14_expired_refused(self):
        e, before = self.fresh()
        na = ms_of(e["envelope"]["not_after"])
        rc, lines, err = self.attacked(self.only(e), before, now=rfc3339(na + 1))
        self.assertEqual((rc, lines), (3, []), err)
        self.assertIn("expired", err)
        # At not_after itself it is still valid (through the same path).
        self.proxy.mutate = self.only(e)
        state = self.state_file(before)
        rc, lines, err = self.device(state, port=self.proxy.port, now=rfc3339(na))
        self.assertEqual(rc, 0, err)
        self.assertEqual([ln["counter"] for ln in lines], [before + 1])

    def test_15_unsigned_copy_is_ignored(self):
        """The device acts on signed_b64 only: edits of the unsigned
        `envelope` object change nothing it executes."""
        e, before = self.fresh()
        edited = dict(e, envelope=dict(e["envelope"], action="unlock-debug",
                                       params={"port": 1}))
        self.proxy.mutate = self.only(edited)
        state = self.state_file(before)
        rc, lines, err = self.device(state, port=self.proxy.port)
        self.assertEqual(rc, 0, err)
        self.assertEqual(len(lines), 1, lines)
        self.assertEqual((lines[0]["action"], lines[0]["params"]), ("reboot", {"port": 2222}))


if __name__ == "__main__":
    unittest.main()
