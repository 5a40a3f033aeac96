#!/usr/bin/python3
"""The HSM failing, and start-up failures.

HsmFailure: signetd runs over build/tests/libpkcs11_faulty.so (signet init
too). With the control file saying `sign` or `removed`, a write is refused
with 503 problem+json and nothing is appended; /healthz turns 503
"hsm":"unavailable"; once the control file is gone writes succeed again by
themselves and the chain verifies.

StartupFailures: wrong or missing PIN, unknown token, configuration errors:
signetd exits non-zero quickly with a one-line reason and no secret; `signet
token-hash`.

PinAndProvisioning: a running signetd's /proc/PID/environ holds neither PIN
variable (name or value); signetd links no provisioning code; only
src/hsm/module.c loads the module, reads a PIN or logs in."""

import hashlib
import os
import re
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from client import fetch_all_events, get_keys, head_of, register, request, wait_until  # noqa: E402
from deploy import REPO_DIR, SIGNET, SIGNETD, E2ETestCase, FaultyHsmTestCase  # noqa: E402
from verify import metric_value, parse_metrics, verify_chain, verify_snapshot  # noqa: E402


class HsmFailure(FaultyHsmTestCase):
    @classmethod
    def setUpClass(cls):
        cls.start_deployment(faulty=True)
        cls.keys = get_keys(cls.rp)

    def dev(self):
        return self.unique("hsm")

    def store_head(self):
        """The head as the store has it (read straight from the events page)."""
        return head_of(self.rp, self.audit)

    def fault_cycle(self, mode):
        # Healthy first.
        r = register(self.wp, self.ops, self.dev())
        self.assertStatus(r, 201)
        h0 = self.store_head()

        self.set_fault(mode)
        failed = self.dev()
        r = register(self.wp, self.ops, failed, headers={"Idempotency-Key": "k-" + failed})
        self.assertProblem(r, 503, "hsm-unavailable", "write with HSM fault %r" % mode)
        self.assertEqual(r.headers.get("Retry-After"), "1", r)
        self.assertEqual(self.store_head(), h0, "an event was appended while the HSM failed")
        # More refused writes, all 503, nothing appended.
        for _ in range(3):
            self.assertProblem(register(self.wp, self.ops, self.dev()), 503)
        self.assertEqual(self.store_head(), h0)

        def down():
            h = request("GET", self.rp, "/healthz")
            return h if h.status == 503 and isinstance(h.body, dict) and h.body.get("hsm") == "unavailable" else None
        h = wait_until(down, 5, 0.1, "/healthz hsm unavailable (%s)" % mode)
        self.assertEqual(h.body.get("status"), "unavailable", h)
        m = parse_metrics(request("GET", self.rp, "/metrics").raw.decode())
        if mode == "removed":  # (with `sign`, a probe of the token may succeed again)
            self.assertEqual(metric_value(m, "signet_hsm_up"), 0.0)
        self.assertGreaterEqual(metric_value(m, "signet_sign_failures_total"), 1.0)
        # Reads that need no signing keep working.
        self.assertStatus(request("GET", self.rp, "/v1/events", token=self.audit), 200)

        # The HSM comes back: writes succeed again by themselves (within 10 s).
        self.set_fault(None)
        t0 = time.monotonic()

        def write_ok():
            r = register(self.wp, self.ops, self.dev())
            if r.status != 201:
                self.assertProblem(r, 503)
            return r if r.status == 201 else None
        r = wait_until(write_ok, 10, 0.25, "writes to succeed after the HSM came back (%s)" % mode)
        self.assertLess(time.monotonic() - t0, 10.5)
        self.assertEqual(r.body["position"], h0 + 1, "refused writes left a gap or events")
        wait_until(lambda: request("GET", self.rp, "/healthz").status == 200, 5, 0.1, "/healthz 200 again")

        # The refused request was not recorded: same key, same body -> registered now.
        r = register(self.wp, self.ops, failed, headers={"Idempotency-Key": "k-" + failed})
        self.assertStatus(r, 201)
        events, head = fetch_all_events(self.rp, self.audit)
        verify_chain(events, self.keys)
        self.assertEqual(head, h0 + 2)
        s = request("GET", self.rp, "/v1/snapshots/devices?min_position=%d&wait_ms=5000" % head, token=self.audit)
        self.assertStatus(s, 200)
        verify_snapshot(s.body, self.keys)

    def test_sign_failure_and_again_after_recovery(self):
        """The signer keeps recovering: a second failure after the first."""
        for attempt in ("first", "again"):
            with self.subTest(attempt=attempt):
                self.fault_cycle("sign")

    def test_token_removed(self):
        self.fault_cycle("removed")

    def test_token_refusing_key_copies(self):
        """signetd signs with session copies of the token's keys; a token that
        refuses to copy them (CKA_COPYABLE false) is signed with through its
        key objects, and says so: writes succeed and the chain verifies."""
        self.assertNotIn("refused session copies", self.srv.output_text())
        self.srv.stop()
        self.set_fault("nocopy")
        type(self).srv = self.dep.start()
        try:
            self.assertIn("refused session copies", self.srv.output_text())
            for _ in range(3):
                self.assertStatus(register(self.wp, self.ops, self.dev()), 201)
            events, _ = fetch_all_events(self.rp, self.audit)
            verify_chain(events, self.keys)
        finally:
            self.srv.stop()

    def test_flapping_under_load(self):
        """8 writers while the HSM fails and recovers every 0.3 s: every answer
        is 201 or 503; every 201 is in the log at its position; no device
        answered 503 is in the log; the chain verifies."""
        import http.client
        import threading
        answers = []
        lock = threading.Lock()
        stop = threading.Event()

        def writer(w):
            conn = http.client.HTTPConnection("127.0.0.1", self.wp, timeout=30)
            i = 0
            while not stop.is_set() and i < 2000:
                dev = "flap-%d-%d" % (w, i)
                i += 1
                try:
                    r = register(self.wp, self.ops, dev, conn=conn)
                except (OSError, http.client.HTTPException) as e:
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", self.wp, timeout=30)
                    r = e
                with lock:
                    answers.append((dev, r))
            conn.close()
        ts = [threading.Thread(target=writer, args=(w,)) for w in range(8)]
        for t in ts:
            t.start()
        try:
            for k in range(10):
                self.set_fault("sign" if k % 2 == 0 else None)
                time.sleep(0.3)
        finally:
            self.set_fault(None)
            stop.set()
            for t in ts:
                t.join(60)
        ok = {d: r.body["position"] for d, r in answers if not isinstance(r, Exception) and r.status == 201}
        refused = {d for d, r in answers if not isinstance(r, Exception) and r.status == 503}
        others = [(d, r) for d, r in answers if isinstance(r, Exception) or r.status not in (201, 503)]
        self.assertEqual(others, [])
        self.assertTrue(ok, "no write succeeded")
        self.assertTrue(refused, "no write was refused: the fault did not bite")
        for d, r in answers:
            if not isinstance(r, Exception) and r.status == 503:
                self.assertProblem(r, 503)
        events, head = fetch_all_events(self.rp, self.audit)
        verify_chain(events, self.keys)
        logged = {e["data"]["device_id"]: e["position"] for e in events if e["type"] == "DeviceRegistered"}
        for d, pos in ok.items():
            self.assertEqual(logged.get(d), pos, d)
        self.assertEqual(sorted(refused & set(logged)), [], "refused writes were appended")


class StartupFailures(E2ETestCase):
    @classmethod
    def setUpClass(cls):
        cls.init_deployment()

    def run_signetd(self, config=None, env=None, timeout=15):
        t0 = time.monotonic()
        p = subprocess.run([SIGNETD, "--config", config or self.dep.config_path],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env or self.dep.env(),
                           cwd=self.dep.dir, timeout=timeout)
        out = (p.stdout + p.stderr).decode("utf-8", "replace")
        self.dep.cli_outputs.append(out)
        return p.returncode, out, time.monotonic() - t0

    def assert_fails(self, config=None, env=None, mentions=(), secrets=()):
        rc, out, secs = self.run_signetd(config, env)
        self.assertNotEqual(rc, 0, out)
        self.assertLess(secs, 10, "took %.1fs to fail" % secs)
        lines = [ln for ln in out.splitlines() if ln.strip()]
        self.assertTrue(lines, "no reason given")
        self.assertLessEqual(len(lines), 5, "want a one-line reason, got:\n" + out)
        for m in mentions:
            self.assertRegex(out, m)
        for s in list(secrets) + self.dep.secrets_list():
            self.assertNotIn(s, out, "secret in output")
        return out

    def test_wrong_pin(self):
        wrong = "wrongpin-" + os.urandom(6).hex()
        self.assert_fails(env=self.dep.env(SIGNET_PIN=wrong), mentions=[r"(?i)pin|login"], secrets=[wrong])

    def test_missing_pin_variable(self):
        self.assert_fails(env=self.dep.env(SIGNET_PIN=None), mentions=[r"SIGNET_PIN"])

    def test_unknown_token_label(self):
        cfg = self.dep.write_config("nolabel.json", mutate=lambda c: c["pkcs11"].update(token_label="no-such-token"))
        self.assert_fails(config=cfg, mentions=[r"no-such-token"])

    def test_unusable_module(self):
        cfg = self.dep.write_config("nomodule.json",
                                    mutate=lambda c: c["pkcs11"].update(module="/nonexistent/libpkcs11.so"))
        self.assert_fails(config=cfg, mentions=[r"/nonexistent/libpkcs11\.so"])

    def test_config_errors(self):
        def unknown_top(c):
            c["colour"] = "red"

        def unknown_nested(c):
            c["pkcs11"]["slot_colour"] = 1

        def unknown_principal_field(c):
            c["principals"][0]["favourite"] = "x"

        def bad_hex(c):
            c["principals"][0]["token_sha256"] = "zz" * 32

        def short_hex(c):
            c["principals"][0]["token_sha256"] = "ab" * 16

        def bad_role(c):
            c["principals"][0]["roles"] = ["superuser"]

        def device_without_id(c):
            del c["principals"][-1]["device_id"]

        def bad_listen(c):
            c["write_listen"] = "127.0.0.1:notaport"

        def wrong_type(c):
            c["limits"]["max_json_bytes"] = "big"

        def bad_store(c):
            c["store"] = "mysql://nowhere"

        def pin_in_file(c):
            c["pkcs11"]["pin"] = "1234"

        cases = [(unknown_top, r"colour"), (unknown_nested, r"slot_colour"),
                 (unknown_principal_field, r"favourite"), (bad_hex, r"token_sha256"),
                 (short_hex, r"token_sha256"), (bad_role, r"superuser|roles"), (device_without_id, r"device_id"),
                 (bad_listen, r"write_listen"), (wrong_type, r"max_json_bytes"), (bad_store, r"store"),
                 (pin_in_file, r"pin")]
        for mutate, mention in cases:
            with self.subTest(case=mutate.__name__):
                cfg = self.dep.write_config("bad-%s.json" % mutate.__name__, mutate=mutate)
                self.assert_fails(config=cfg, mentions=[mention])
                p = self.dep.cli("init", "--config", cfg)
                self.assertNotEqual(p.returncode, 0, "signet init accepted %s" % mutate.__name__)

    def test_config_not_json_or_missing(self):
        cfg = self.dep.write_config("notjson.json", raw='{"data_dir": "var",')
        self.assert_fails(config=cfg, mentions=[r"notjson\.json"])
        self.assert_fails(config=os.path.join(self.dep.dir, "missing.json"), mentions=[r"missing\.json"])
        p = subprocess.run([SIGNETD, "--config"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=10,
                           env=self.dep.env())
        self.assertNotEqual(p.returncode, 0)
        p = subprocess.run([SIGNETD, "--config", self.dep.config_path, "--role", "everything"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=10, env=self.dep.env())
        self.assertNotEqual(p.returncode, 0)

    def test_port_in_use(self):
        import socket
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        try:
            port = s.getsockname()[1]
            cfg = self.dep.write_config("busy.json",
                                        mutate=lambda c: c.update(write_listen="127.0.0.1:%d" % port))
            self.assert_fails(config=cfg, mentions=[str(port)])
        finally:
            s.close()

    def test_good_config_still_starts(self):
        """Control: the same deployment starts with the right PIN."""
        srv = self.dep.start()
        self.assertEqual(request("GET", self.dep.read_port, "/healthz").status, 200)
        self.assertEqual(srv.stop(), 0)

    def test_token_hash(self):
        want = hashlib.sha256(b"abc").hexdigest()
        self.assertEqual(want, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        p = self.dep.cli("token-hash", "abc")
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(p.stdout, want + "\n")
        p = self.dep.cli("token-hash", "-", input=b"abc")
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(p.stdout, want + "\n")
        tok = self.dep.token("ops")
        p = self.dep.cli("token-hash", tok)
        self.assertEqual(p.stdout.strip(), hashlib.sha256(tok.encode()).hexdigest())
        self.dep.cli_outputs.pop()  # the token was the input here, not a leak
        p = self.dep.cli("token-hash")
        self.assertNotEqual(p.returncode, 0, "usage error: " + p.stdout + p.stderr)

    def test_init_with_wrong_so_pin_or_pin_refused(self):
        """signet init on an existing token with a wrong PIN fails and changes nothing."""
        tree = self.dep.tree()
        p = self.dep.cli("init", "--config", self.dep.config_path, env=self.dep.env(SIGNET_PIN="bad-" + os.urandom(4).hex()))
        self.assertNotEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertEqual(self.dep.tree(), tree)


class PinAndProvisioning(E2ETestCase):
    """Issue 14, defect 5: one owner of the module and the PIN."""

    PROVISIONING = ("signer_init_token", "signer_store_chain", "signer_sign_x509", "cert_ensure",
                    "cert_csr_pem", "cert_import_pem", "hsm_module_init_token",
                    "hsm_module_init_user_pin")

    @classmethod
    def setUpClass(cls):
        cls.start_deployment()

    def test_environ_holds_no_pin(self):
        """signetd reads the PIN once and takes it out of its environment,
        /proc/PID/environ included, and still signs (it kept a copy); the SO
        PIN, which it never needs, goes too."""
        r = register(self.wp, self.ops, self.unique("environ"))
        self.assertStatus(r, 201)
        with open("/proc/%d/environ" % self.srv.proc.pid, "rb") as f:
            raw = f.read()
        entries = raw.split(b"\0")
        # The control: this is signetd's environment, and it is readable.
        # (No assertIn/NotIn on raw: a failure would print the PIN.)
        self.assertTrue(("SOFTHSM2_CONF=" + self.dep.softhsm_conf).encode() in entries,
                        "SOFTHSM2_CONF not in /proc/PID/environ")
        for name, value in (("SIGNET_PIN", self.dep.pin), ("SIGNET_SO_PIN", self.dep.so_pin)):
            self.assertFalse(name.encode() + b"=" in raw, "%s still in /proc/PID/environ" % name)
            self.assertFalse(value.encode() in raw, "the value of %s still in /proc/PID/environ" % name)
        r = register(self.wp, self.ops, self.unique("environ"))
        self.assertStatus(r, 201)

    def defined_symbols(self, path):
        p = subprocess.run(["nm", "--defined-only", path], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, check=True)
        return {ln.split()[-1] for ln in p.stdout.decode().splitlines() if ln.strip()}

    def test_signetd_links_no_provisioning(self):
        """signet init and the certificate work are the CLI's (signet_provision):
        signetd has none of their symbols, the CLI has them all."""
        daemon, cli = self.defined_symbols(SIGNETD), self.defined_symbols(SIGNET)
        self.assertIn("signer_open", daemon, "nm sees no symbols in signetd (stripped?)")
        self.assertEqual(sorted(set(self.PROVISIONING) & daemon), [],
                         "signetd links provisioning code")
        self.assertEqual(sorted(set(self.PROVISIONING) - cli), [], "signet lacks provisioning code")

    def test_only_module_c_loads_the_module_and_reads_the_pin(self):
        """The claim in src/hsm/module.c's header, checked on the sources."""
        owner = os.path.join("src", "hsm", "module.c")
        owner_so = os.path.join("src", "hsm", "module_so.c")  # its SO half, signet only
        pattern = re.compile(r"\b(dlopen|C_GetFunctionList|PKCS11_CTX_load|PKCS11_login|C_Login|"
                             r"C_InitPIN|C_InitToken)\s*\(|getenv\s*\(\s*cfg->(so_)?pin_env|"
                             r"->C_Login\b")
        found = []
        for top, _, files in os.walk(os.path.join(REPO_DIR, "src")):
            for fn in files:
                path = os.path.join(top, fn)
                rel = os.path.relpath(path, REPO_DIR)
                if not fn.endswith((".c", ".h")) or rel in (owner, owner_so):
                    continue
                with open(path, encoding="utf-8", errors="replace") as f:
                    for i, line in enumerate(f, 1):
                        if pattern.search(line):
                            found.append("%s:%d: %s" % (rel, i, line.strip()))
        self.assertEqual(found, [], "only %s may load the module, read a PIN or log in" % owner)
        with open(os.path.join(REPO_DIR, owner), encoding="utf-8") as f:
            text = f.read()
        for call in ("dlopen(", "C_GetFunctionList", "PKCS11_CTX_load(", "PKCS11_login(", "C_Login("):
            self.assertIn(call, text)


if __name__ == "__main__":
    unittest.main()
