#!/usr/bin/env python3
"""bench/startup.py - signetd's start-up time and its recovery from one failed
sign batch, on a store of 1,000 and of 1,000,000 events, side by side.

For each size N it uses a store of N DeviceRegistered events signed by the
token's real events key (made by build/bench/gen_store, exactly the events the
sequencer makes), with the anchor at its head and a caught-up read model, as a
signetd that wrote them and stopped would leave it. Making the 1M store takes
minutes, so it is kept in CACHE_DIR (--cache) and reused; every run works on a
copy, so the cache never changes.

Per size, on the copy:
  1. one unmeasured start (role all) until /healthz is 200 and the read model
     has caught up, then SIGTERM: whatever the binary under test keeps for its
     next start (checkpoints) is written now;           -> startup_first_s
  2. start-up: spawn signetd, poll /healthz every 10 ms until 200, SIGTERM;
     --repeat times per role, the median                 -> startup_<role>_s
  3. recovery: signetd on the fault-injecting PKCS#11 module
     (build/tests/libpkcs11_faulty.so); one write is answered 201; the control
     file says `sign`, one write fails (503, and signet_sign_failures_total
     grows: the batch was decided and its signing failed); the control file
     says `ok`; then a write every 10 ms until one is answered 201.
                                                         -> recovery_<role>_s
     recovery_<role>_s is from `ok` to that 201 (it includes the signer's
     prober noticing the HSM is back, up to about 0.5 s); the last request's
     own time, recovery_<role>_last_request_s, is what rebuilding write state
     costs.
Only the HTTP API, the CLI and gen_store are used, so it works against any
signetd that keeps API.md. Everything listens on 127.0.0.1; no PIN or token
is printed.

usage: bench/startup.py [--build build] [--cache DIR] [--sizes 1000,1000000]
                        [--roles write,all] [--repeat 3]
"""

import argparse
import hashlib
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

SOFTHSM = os.environ.get("SOFTHSM2_MODULE", "/usr/lib/softhsm/libsofthsm2.so")
START_TIMEOUT = 1800  # seconds: a 1M store verified from scratch takes minutes


def log(msg):
    print(f"== {msg}", file=sys.stderr, flush=True)


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class Deployment:
    """A store directory (tokens/, var/, secrets.json) and how to run signetd on it."""

    def __init__(self, root, build):
        self.root = root
        self.build = build
        self.write_port, self.read_port = free_ports(2)
        sec_path = os.path.join(root, "secrets.json")
        if os.path.exists(sec_path):
            with open(sec_path) as f:
                self.secrets = json.load(f)
        else:
            self.secrets = {
                "pin": secrets.token_hex(16),
                "so_pin": secrets.token_hex(16),
                "token": secrets.token_hex(32),
            }
            fd = os.open(sec_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(self.secrets, f)
        os.makedirs(os.path.join(root, "tokens"), exist_ok=True)
        self.control = os.path.join(root, "faulty-control")
        with open(self.control, "w") as f:
            f.write("ok\n")
        with open(os.path.join(root, "softhsm2.conf"), "w") as f:
            f.write(f"directories.tokendir = {root}/tokens\nobjectstore.backend = file\n"
                    "log.level = ERROR\nslots.removable = false\n")
        self.config = self.write_config("signet.json", SOFTHSM)
        self.faulty_config = self.write_config(
            "signet-faulty.json", os.path.join(build, "tests", "libpkcs11_faulty.so"))

    def write_config(self, name, module):
        token_sha = hashlib.sha256(self.secrets["token"].encode()).hexdigest()
        cfg = {
            "data_dir": os.path.join(self.root, "var"),
            "store": "sqlite:" + os.path.join(self.root, "var", "events.db"),
            "write_listen": f"127.0.0.1:{self.write_port}",
            "read_listen": f"127.0.0.1:{self.read_port}",
            "pkcs11": {"module": module, "token_label": "signet", "pin_env": "SIGNET_PIN",
                       "so_pin_env": "SIGNET_SO_PIN"},
            "principals": [{"name": "bench", "token_sha256": token_sha, "roles": ["operator", "auditor"]}],
            "limits": {"max_image_bytes": 1073741824, "max_json_bytes": 65536},
        }
        path = os.path.join(self.root, name)
        with open(path, "w") as f:
            json.dump(cfg, f, indent=2)
        return path

    def env(self):
        e = dict(os.environ)
        e["SOFTHSM2_CONF"] = os.path.join(self.root, "softhsm2.conf")
        e["SIGNET_PIN"] = self.secrets["pin"]
        e["SIGNET_SO_PIN"] = self.secrets["so_pin"]
        e["FAULTY_PKCS11_TARGET"] = SOFTHSM
        e["FAULTY_PKCS11_CONTROL"] = self.control
        e["SIGNET_TOKEN"] = self.secrets["token"]  # signet verify-log reads the log as auditor
        return e

    def run(self, args, **kw):
        return subprocess.run(args, env=self.env(), check=True, **kw)

    def health_port(self, role):
        return self.write_port if role == "write" else self.read_port

    def start(self, role, faulty=False):
        logf = open(os.path.join(self.root, "signetd.log"), "ab")
        p = subprocess.Popen([os.path.join(self.build, "signetd"), "--config",
                              self.faulty_config if faulty else self.config, "--role", role],
                             env=self.env(), stdout=subprocess.DEVNULL, stderr=logf)
        logf.close()
        return p

    def stop(self, p):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def tail_log(self):
        try:
            with open(os.path.join(self.root, "signetd.log"), "rb") as f:
                return f.read()[-2000:].decode(errors="replace")
        except OSError:
            return ""


def request(port, method, path, body=None, token=None, timeout=60):
    """(status, body) of one request on a new connection; (0, reason) if it failed."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if token:
            headers["Authorization"] = "Bearer " + token
        c.request(method, path, body=body, headers=headers)
        r = c.getresponse()
        return r.status, r.read()
    except (OSError, http.client.HTTPException) as e:
        return 0, str(e).encode()
    finally:
        c.close()


def wait_healthy(d, p, role, timeout=START_TIMEOUT, caught_up=False, poll=0.01):
    """Seconds until /healthz answers 200 (and lag 0 if caught_up)."""
    t0 = time.monotonic()
    port = d.health_port(role)
    while True:
        if p.poll() is not None:
            raise RuntimeError(f"signetd exited during start-up:\n{d.tail_log()}")
        status, body = request(port, "GET", "/healthz", timeout=5)
        if status == 200:
            if not caught_up or json.loads(body).get("lag", 1) == 0:
                return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"/healthz not 200 within {timeout} s:\n{d.tail_log()}")
        time.sleep(poll)


def head_of(d, role):
    status, body = request(d.health_port(role), "GET", "/healthz")
    return json.loads(body).get("head") if status == 200 else None


def sign_failures(d):
    status, body = request(d.write_port, "GET", "/metrics")
    for line in body.decode(errors="replace").splitlines():
        if line.startswith("signet_sign_failures_total "):
            return int(line.split()[1])
    return None


_seq = [0]


def post_device(d):
    _seq[0] += 1
    body = json.dumps({"device_id": f"r-{os.getpid()}-{int(time.time())}-{_seq[0]}",
                       "hardware": "hw1"})
    t0 = time.monotonic()
    status, resp = request(d.write_port, "POST", "/v1/devices", body, d.secrets["token"])
    return status, time.monotonic() - t0, resp


def build_cache(dest, n, build):
    """Make the store of n events in dest (a new directory): token, keys,
    events, anchor, and a caught-up read model."""
    tmp = dest + ".building"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    d = Deployment(tmp, build)
    log(f"making a store of {n} events in {dest} (signet init, gen_store)")
    d.run([os.path.join(build, "signet"), "init", "--config", d.config],
          stdout=subprocess.DEVNULL)
    t0 = time.monotonic()
    d.run([os.path.join(build, "bench", "gen_store"), "--config", d.config, "--events", str(n)],
          stdout=subprocess.DEVNULL)
    log(f"gen_store: {n} events in {time.monotonic() - t0:.1f} s; projecting them once")
    p = d.start("all")
    try:
        t = wait_healthy(d, p, "all", caught_up=True, poll=0.5)
        log(f"read model caught up after {t:.1f} s")
        if head_of(d, "all") != n:
            raise RuntimeError(f"store head is {head_of(d, 'all')}, expected {n}")
        if n <= 10000:  # the events are real: the offline verifier agrees
            d.run([os.path.join(build, "signet"), "verify-log",
                   f"http://127.0.0.1:{d.read_port}"], stdout=subprocess.DEVNULL)
            log("signet verify-log: the generated log verifies")
    finally:
        d.stop(p)
    for f in ("signet.json", "signet-faulty.json", "softhsm2.conf", "signetd.log",
              "faulty-control"):
        os.remove(os.path.join(tmp, f))
    os.rename(tmp, dest)


def measure(size_dir, n, build, roles, repeat, out):
    work = tempfile.mkdtemp(prefix=f"signet-startup-{n}-")
    try:
        subprocess.run(["cp", "-a", "--reflink=auto", size_dir + "/.", work], check=True)
        d = Deployment(work, build)
        # 1. the first start on this binary (not measured as start-up)
        t0 = time.monotonic()
        p = d.start("all")
        try:
            wait_healthy(d, p, "all", caught_up=True, poll=0.05)
        finally:
            d.stop(p)
        out[f"startup_first_s_{n}"] = time.monotonic() - t0
        # 2. start-up, per role
        for role in roles:
            times = []
            for _ in range(repeat):
                p = d.start(role)
                try:
                    times.append(wait_healthy(d, p, role))
                finally:
                    d.stop(p)
            out[f"startup_{role}_s_{n}"] = statistics.median(times)
            log(f"n={n} start-up {role}: " + ", ".join(f"{t:.3f}" for t in times) + " s")
        # 3. recovery from one failed sign batch, per role
        for role in roles:
            recover(d, n, role, out)
        # what signetd said of its write state (checkpoint times, replays)
        for line in d.tail_log().splitlines():
            if "write state" in line or "sequencer: head" in line:
                log(f"n={n} signetd: {line}")
    except Exception:
        log(f"signetd's log:\n{d.tail_log()}" if "d" in locals() else "set-up failed")
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


def set_control(d, word):
    with open(d.control + ".new", "w") as f:
        f.write(word + "\n")
    os.rename(d.control + ".new", d.control)


def recover(d, n, role, out):
    p = d.start(role, faulty=True)
    try:
        wait_healthy(d, p, role)
        status, _, body = post_device(d)
        if status != 201:
            raise RuntimeError(f"a write before the fault answered {status}: {body[:300]!r}")
        for attempt in range(5):
            before = sign_failures(d)
            set_control(d, "sign")
            status, _, body = post_device(d)
            after = sign_failures(d)
            if status == 503 and after is not None and before is not None and after > before:
                break
            # the prober failed first (the write was refused without being
            # decided): let the HSM come back and try again
            set_control(d, "ok")
            wait_healthy(d, p, role, timeout=30)
        else:
            raise RuntimeError("could not make one sign batch fail")
        set_control(d, "ok")
        t0 = time.monotonic()
        tries = 0
        while True:
            status, took, body = post_device(d)
            tries += 1
            if status == 201:
                break
            if status not in (503,):
                raise RuntimeError(f"a write during recovery answered {status}: {body[:300]!r}")
            if time.monotonic() - t0 > START_TIMEOUT:
                raise RuntimeError("no write succeeded after the HSM came back")
            time.sleep(0.01)
        total = time.monotonic() - t0
        out[f"recovery_{role}_s_{n}"] = total
        out[f"recovery_{role}_last_request_s_{n}"] = took
        log(f"n={n} recovery {role}: {total:.3f} s to the first 201 ({tries} writes; "
            f"the last one took {took:.3f} s)")
    finally:
        set_control(d, "ok")
        d.stop(p)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default="build")
    ap.add_argument("--cache", help="directory that keeps the generated stores between runs")
    ap.add_argument("--sizes", default="1000,1000000")
    ap.add_argument("--roles", default="write,all")
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    build = a.build if os.path.isdir(a.build) else os.path.join(root, a.build)
    build = os.path.abspath(build)
    for f in ("signet", "signetd", "bench/gen_store", "tests/libpkcs11_faulty.so"):
        if not os.path.exists(os.path.join(build, f)):
            sys.exit(f"startup.py: {build}/{f} is missing; build first")
    sizes = [int(x) for x in a.sizes.split(",")]
    roles = [r for r in a.roles.split(",") if r]
    tmp_cache = None
    cache = a.cache
    if not cache:
        cache = tmp_cache = tempfile.mkdtemp(prefix="signet-startup-cache-")
    os.makedirs(cache, exist_ok=True)
    out = {}
    try:
        for n in sizes:
            size_dir = os.path.join(os.path.abspath(cache), f"n{n}")
            if not os.path.isdir(size_dir):
                build_cache(size_dir, n, build)
            else:
                log(f"reusing the store of {n} events in {size_dir}")
            measure(size_dir, n, build, roles, a.repeat, out)
    finally:
        if tmp_cache:
            shutil.rmtree(tmp_cache, ignore_errors=True)

    print("\n== summary (seconds)")
    for k, v in out.items():
        print(f"{k} {v:.3f}")
    if len(sizes) == 2:
        small, big = sizes
        print(f"\n{'':34} {small:>12} {big:>12} {'ratio':>8}")
        names = ["startup_first_s"] + [f"startup_{r}_s" for r in roles] + \
            [f"recovery_{r}_s" for r in roles] + [f"recovery_{r}_last_request_s" for r in roles]
        for name in names:
            x, y = out.get(f"{name}_{small}"), out.get(f"{name}_{big}")
            if x is None or y is None:
                continue
            ratio = y / x if x > 0 else float("inf")
            print(f"{name:34} {x:12.3f} {y:12.3f} {ratio:8.1f}")
        for name in names:
            x, y = out.get(f"{name}_{small}"), out.get(f"{name}_{big}")
            if x and y is not None:
                print(f"{name}_ratio {y / x:.2f}")


if __name__ == "__main__":
    main()
