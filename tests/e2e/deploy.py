"""Deployments for signet's end-to-end tests: the worlds signetd runs in.

Owns: where the build is (`BUILD_DIR`, `SIGNETD`, `SIGNET`,
`FAULTY_MODULE`), `Deployment` (a temporary directory holding a SoftHSM2
configuration and token directory, a configuration file in exactly the
format of CONFIG.md, random bearer tokens, PIN and SO PIN, free loopback
ports; the `signet` CLI run in it), `Server` (one signetd process: start,
wait for /healthz, SIGTERM or kill -9), `FaultControl` (the control file of
tests/libpkcs11_faulty.so) and `E2ETestCase`, the base class that closes
every deployment after its class and fails the class if a secret leaked.

Nothing is shared between deployments. Every process started is killed at
exit at the latest.

Environment:
  SIGNET_BUILD_DIR   build directory holding signetd, signet and
                     tests/libpkcs11_faulty.so (default: build/ at the root
                     of the repository holding this file; CMake sets it)
  SIGNET_E2E_KEEP=1  keep the temporary directories (their paths are printed)
  SOFTHSM2_MODULE    the SoftHSM2 module (default /usr/lib/softhsm/libsofthsm2.so)
"""

import atexit
import http.client
import itertools
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest

from client import assert_problem, request
from verify import sha256_hex

REPO_DIR = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
BUILD_DIR = os.path.abspath(os.environ.get("SIGNET_BUILD_DIR") or os.path.join(REPO_DIR, "build"))
SIGNETD = os.path.join(BUILD_DIR, "signetd")
SIGNET = os.path.join(BUILD_DIR, "signet")
FAULTY_MODULE = os.path.join(BUILD_DIR, "tests", "libpkcs11_faulty.so")
SOFTHSM_MODULE = os.environ.get("SOFTHSM2_MODULE", "/usr/lib/softhsm/libsofthsm2.so")
KEEP = os.environ.get("SIGNET_E2E_KEEP") == "1"

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


def _ephemeral_low():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def free_ports(n):
    """n distinct loopback ports free right now. Taken below the kernel's
    ephemeral range when there is room (10000 up to it), so the outgoing
    connections of other tests on the machine, which get ephemeral source
    ports, cannot take one between now and signetd's bind; otherwise
    whatever the kernel hands out."""
    low = _ephemeral_low()
    rng = random.SystemRandom()
    socks, ports = [], []
    try:
        attempts = 0
        while len(ports) < n:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            if low is not None and low > 11000 and attempts < 200:
                attempts += 1
                port = rng.randrange(10000, low)
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
            else:
                s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


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


class FaultControl:
    """The control file of tests/libpkcs11_faulty.so: one word (sign,
    removed, block, nosession, ...; docs/behaviour.md) makes the module fail
    that way until the file is gone."""

    def __init__(self, path):
        self.path = path

    def set(self, mode):
        """Fail as `mode` from now on; None: work again."""
        if mode is None:
            if os.path.exists(self.path):
                os.unlink(self.path)
        else:
            tmp = self.path + ".tmp"
            with open(tmp, "w") as f:
                f.write(mode + "\n")
            os.rename(tmp, self.path)


class Deployment:
    """A temporary world: SoftHSM2 token directory, configuration, secrets,
    ports. Nothing is shared between deployments."""

    def __init__(self, name="e2e", module=None, extra_env=None, max_json_bytes=None,
                 max_image_bytes=None, token_label="signet", mutate=None, faulty=False):
        """faulty: signet and signetd load tests/libpkcs11_faulty.so over
        SoftHSM2, steered by self.fault (a FaultControl); otherwise
        self.fault is None."""
        for exe in (SIGNETD, SIGNET):
            if not os.access(exe, os.X_OK):
                raise StartError("%s is missing: build first (SIGNET_BUILD_DIR=%s)" % (exe, BUILD_DIR))
        if faulty and not os.path.exists(FAULTY_MODULE):
            raise AssertionError("%s is missing: the build must produce it (docs/behaviour.md)"
                                 % FAULTY_MODULE)
        self.dir = tempfile.mkdtemp(prefix="signet-%s-" % name)
        if KEEP:
            print("signet e2e: keeping", self.dir, file=sys.stderr)
        self.module = module or (FAULTY_MODULE if faulty else SOFTHSM_MODULE)
        self.extra_env = dict(extra_env or {})
        self.fault = None
        if faulty:
            self.fault = FaultControl(os.path.join(self.dir, "ctl"))
            self.extra_env.update({"FAULTY_PKCS11_TARGET": SOFTHSM_MODULE,
                                   "FAULTY_PKCS11_CONTROL": self.fault.path})
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

    def tree(self):
        """{relative path: size} of the token directory and var/ (what
        `signet init` makes), without SQLite's -shm/-wal and lock files."""
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
        before = self.tree()
        p2 = self.cli("init", "--config", cfg)
        if p2.returncode != 0:
            raise StartError("second signet init exited %d:\n%s%s" % (p2.returncode, p2.stdout, p2.stderr))
        after = self.tree()
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


_UNIQUE = itertools.count(1)


class E2ETestCase(unittest.TestCase):
    """Base class: deployments made with cls.deployment() are closed after the
    class (also when setUpClass fails), and the class fails if a PIN, SO PIN
    or bearer token appears in any captured signetd or CLI output."""

    maxDiff = 4000

    @classmethod
    def deployment(cls, **kw):
        """A new Deployment (keywords as Deployment's), closed and checked
        for leaked secrets after the class."""
        d = Deployment(name=cls.__name__.lower(), **kw)
        cls.addClassCleanup(cls._close_and_check, d)
        return d

    @classmethod
    def init_deployment(cls, **kw):
        """The usual fixture of a class, without a server: cls.dep, a
        deployment (keywords as Deployment's) on which `signet init` ran;
        cls.wp and cls.rp the write and read ports of its configuration;
        cls.ops, cls.adm and cls.audit the tokens of those principals."""
        cls.dep = cls.deployment(**kw)
        cls.dep.init()
        cls.wp, cls.rp = cls.dep.write_port, cls.dep.read_port
        cls.ops, cls.adm, cls.audit = (cls.dep.token(n) for n in ("ops", "adm", "audit"))

    @classmethod
    def start_deployment(cls, role="all", **kw):
        """init_deployment, then signetd started in `role` (cls.srv, also
        returned)."""
        cls.init_deployment(**kw)
        cls.srv = cls.dep.start(role=role)
        return cls.srv

    def unique(self, prefix):
        """A name never handed out before in this process: prefix-N."""
        return "%s-%d" % (prefix, next(_UNIQUE))

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


class FaultyHsmTestCase(E2ETestCase):
    """Base class of tests over tests/libpkcs11_faulty.so: setUpClass makes
    cls.dep with Deployment(faulty=True) and starts cls.srv; every test
    starts from a working HSM that a running signetd knows works again (a
    test before may have stopped it, or left the HSM failing, and signetd
    counts it unavailable until its next probe), and the fault is cleared
    after every test."""

    def setUp(self):
        self.set_fault(None)
        if not self.srv.running():
            type(self).srv = self.dep.start()
        self.srv.wait_ready(timeout=15)

    def tearDown(self):
        self.set_fault(None)

    def set_fault(self, mode):
        """Make the HSM fail as `mode` (FaultControl); None: work again."""
        self.dep.fault.set(mode)
