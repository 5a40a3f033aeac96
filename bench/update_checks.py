#!/usr/bin/python3
"""bench/update_checks.py - update checks per second against /healthz on the
same (read) listener, with 10,000 registered devices and an active rollout,
and DDI polls per second against REST update checks of the same devices.

One run: a fresh SoftHSM2 token and data directory in a temporary directory
(127.0.0.1 only), `signet init`, signetd --role all, 10,000 devices
registered (hardware hw-u), the first BENCH_DDI_DEVICES (200) of them also
device principals with tokens of their own, one .swu image uploaded, a
rollout of it at 50 % (so about half the checks answer 200 with the signed
manifest and half 204), then bench_http in --get mode: GET /healthz, then
GET /v1/devices/u-NNNNN/update cycling through all 10,000 devices with an
operator's token, then /healthz again; each for BENCH_HTTP_SECONDS (5) after
a BENCH_HTTP_WARMUP (1) warm-up, BENCH_CONNECTIONS (32) keep-alive
connections over 2 threads. Prints `ratio_update_over_healthz` (update
checks/s ÷ the mean of the two /healthz runs); the aim is >= 0.5.

Then (unless BENCH_DDI=0) the DDI comparison, each device with its own token:
GET /v1/devices/u-NNNNN/update (Bearer), GET /ddi/DEFAULT/controller/v1/u-NNNNN
(TargetToken, suricatta's poll), the REST checks again, over the
BENCH_DDI_DEVICES devices. Prints `ratio_ddi_over_update` (DDI polls/s ÷ the
mean of the two REST runs); the aim is >= 0.8 (issue 14 defect 7). Both sides
authenticate the same way against the same principals, so the ratio compares
the two read paths only. BENCH_HEALTHZ=0 skips the /healthz part.

usage: bench/update_checks.py [BUILD_DIR]     (default: build)
env:   BENCH_DEVICES (10000), BENCH_DDI_DEVICES (200), BENCH_DDI (1),
       BENCH_HEALTHZ (1), BENCH_HTTP_SECONDS, BENCH_HTTP_WARMUP,
       BENCH_CONNECTIONS, SOFTHSM2_MODULE"""

import hashlib
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "build"))
MODULE = os.environ.get("SOFTHSM2_MODULE", "/usr/lib/softhsm/libsofthsm2.so")
DEVICES = int(os.environ.get("BENCH_DEVICES", "10000"))
SECONDS = os.environ.get("BENCH_HTTP_SECONDS", "5")
WARMUP = os.environ.get("BENCH_HTTP_WARMUP", "1")
CONNS = os.environ.get("BENCH_CONNECTIONS", "32")
DDI_DEVICES = int(os.environ.get("BENCH_DDI_DEVICES", "200"))
DDI = os.environ.get("BENCH_DDI", "1") != "0"
HEALTHZ = os.environ.get("BENCH_HEALTHZ", "1") != "0"
TENANT = "DEFAULT"
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))
import swupdate_device  # noqa: E402  (make_swu: an unsigned .swu, as a build server pushes)


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def call(port, method, path, token=None, body=None, headers=None, conn=None):
    h = dict(headers or {})
    if token:
        h["Authorization"] = "Bearer " + token
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
        h.setdefault("Content-Type", "application/json")
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        c.request(method, path, body=body, headers=h)
        r = c.getresponse()
        data = r.read()
    finally:
        if conn is None:
            c.close()
    ctype = r.getheader("Content-Type") or ""
    return r.status, (json.loads(data) if "json" in ctype and data else data)


def value(text, key):
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == key:
            return float(parts[1])
    return 0.0


def print_ddi(rest, r1, r2, r1p99, r2p99, d, dp99, dout, dratio, cpu):
    print("update_checks_device_token_per_s %.0f (runs: %.0f, %.0f; p99 %.2f / %.2f ms)"
          % (rest, r1, r2, r1p99, r2p99))
    bad = sum(float(line.split()[1]) for line in dout.splitlines()
              if line.startswith("http_status_") and not line.startswith("http_status_2"))
    print("ddi_polls_per_s %.0f (p99 %.2f ms, non-2xx %.0f)" % (d, dp99, bad))
    print("ratio_ddi_over_update %.2f (%s the 0.8 aim)"
          % (dratio, "meets" if dratio >= 0.8 else "below"))
    # signetd's CPU per answer moves less with other load on the machine
    print("cpu_per_update_check_us %.1f\ncpu_per_ddi_poll_us %.1f" % cpu)
    if cpu[1]:
        print("cpu_ratio_update_over_ddi %.2f" % (cpu[0] / cpu[1]))


def main():
    tmp = tempfile.mkdtemp(prefix="signet-bench-update.")
    proc = None
    try:
        os.mkdir(os.path.join(tmp, "tokens"))
        conf = os.path.join(tmp, "softhsm2.conf")
        with open(conf, "w") as f:
            f.write("directories.tokendir = %s/tokens\nobjectstore.backend = file\n"
                    "log.level = ERROR\nslots.removable = false\n" % tmp)
        env = dict(os.environ, SOFTHSM2_CONF=conf, SIGNET_PIN=secrets.token_hex(16),
                   SIGNET_SO_PIN=secrets.token_hex(16))
        ops, ci = secrets.token_hex(32), secrets.token_hex(32)
        wp, rp = free_ports(2)
        cfg = {
            "data_dir": "var", "store": "sqlite:var/events.db",
            "write_listen": "127.0.0.1:%d" % wp, "read_listen": "127.0.0.1:%d" % rp,
            "pkcs11": {"module": MODULE, "token_label": "signet", "pin_env": "SIGNET_PIN",
                       "so_pin_env": "SIGNET_SO_PIN"},
            "principals": [
                {"name": "ops", "token_sha256": hashlib.sha256(ops.encode()).hexdigest(),
                 "roles": ["operator"]},
                {"name": "ci", "token_sha256": hashlib.sha256(ci.encode()).hexdigest(),
                 "roles": ["builder"]},
            ],
            "limits": {"max_image_bytes": 1073741824, "max_json_bytes": 65536},
            "ddi": {"tenant": TENANT, "poll_seconds": 300},
        }
        dev_tokens = [secrets.token_hex(16) for _ in range(min(DDI_DEVICES, DEVICES))]
        for i, tok in enumerate(dev_tokens):
            cfg["principals"].append({"name": "dev.u-%05d" % i, "device_id": "u-%05d" % i,
                                      "token_sha256": hashlib.sha256(tok.encode()).hexdigest(),
                                      "roles": ["device"]})
        tokens_file = os.path.join(tmp, "device-tokens")
        with open(tokens_file, "w") as f:
            f.write("".join(t + "\n" for t in dev_tokens))
        cfg_path = os.path.join(tmp, "signet.json")
        with open(cfg_path, "w") as f:
            json.dump(cfg, f)
        subprocess.run([os.path.join(BUILD, "signet"), "init", "--config", cfg_path], env=env,
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        log = open(os.path.join(tmp, "signetd.log"), "w")
        proc = subprocess.Popen([os.path.join(BUILD, "signetd"), "--config", cfg_path], env=env,
                                stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.time() + 30
        while True:
            try:
                if call(rp, "GET", "/healthz")[0] == 200:
                    break
            except OSError:
                pass
            if time.time() > deadline or proc.poll() is not None:
                raise SystemExit("signetd did not become healthy")
            time.sleep(0.2)

        print("== registering %d devices" % DEVICES, flush=True)
        t0 = time.time()
        nthreads = 16
        failures = []

        def reg(k):
            c = http.client.HTTPConnection("127.0.0.1", wp, timeout=60)
            for i in range(k, DEVICES, nthreads):
                st, _ = call(wp, "POST", "/v1/devices", ops,
                             {"device_id": "u-%05d" % i, "hardware": "hw-u"}, conn=c)
                if st != 201:
                    failures.append(st)
            c.close()
        ts = [threading.Thread(target=reg, args=(k,)) for k in range(nthreads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        if failures:
            raise SystemExit("registration failed: %r" % failures[:5])
        print("registered_per_s %.0f" % (DEVICES / (time.time() - t0)))

        image = swupdate_device.make_swu("1.0", [("rootfs.img", secrets.token_bytes(1 << 20))])
        st, fw = call(wp, "POST",
                      "/v1/firmware?name=bench&version=1.0&hardware=hw-u&security_version=1"
                      "&format=swu", ci, image, {"Content-Type": "application/octet-stream"})
        if st != 201:
            raise SystemExit("upload failed: %s %r" % (st, fw))
        st, ro = call(wp, "POST", "/v1/rollouts", ops,
                      {"firmware_id": fw["firmware_id"], "hardware": "hw-u", "stages": [50, 100],
                       "failure_threshold": 0.5, "min_reports": 1000})
        if st != 201:
            raise SystemExit("rollout failed: %s %r" % (st, ro))
        st, _ = call(rp, "GET", "/v1/snapshots/rollouts?min_position=%d&wait_ms=10000"
                     % ro["position"], ops)
        if st != 200:
            raise SystemExit("the read model did not catch up")
        sample = [call(rp, "GET", "/v1/devices/u-%05d/update" % i, ops)[0] for i in range(200)]
        print("sample_200 %d\nsample_204 %d" % (sample.count(200), sample.count(204)))

        def run(template, ids, auth="Bearer", tokens=None):
            renv = dict(env, BENCH_TOKEN=ops)
            if tokens:
                renv["BENCH_TOKENS_FILE"] = tokens
            out = subprocess.run(
                [os.path.join(BUILD, "bench", "bench_http"), "--port", str(rp), "--get", template,
                 "--ids", str(ids), "--connections", CONNS, "--threads", "2", "--duration",
                 SECONDS, "--warmup", WARMUP, "--server-pid", str(proc.pid), "--auth", auth],
                env=renv, stdout=subprocess.PIPE, check=True, universal_newlines=True).stdout
            return value(out, "http_ok_per_s"), value(out, "http_latency_p99_ms"), out

        if DDI:
            n = len(dev_tokens)
            st, body = call(rp, "GET", "/ddi/%s/controller/v1/u-00000" % TENANT,
                            headers={"Authorization": "TargetToken " + dev_tokens[0]})
            if st != 200:
                raise SystemExit("a DDI poll failed: %s %r" % (st, body))
            offers = sum(1 for i in range(n) if "deploymentBase" in call(
                rp, "GET", "/ddi/%s/controller/v1/u-%05d" % (TENANT, i),
                headers={"Authorization": "TargetToken " + dev_tokens[i]})[1]["_links"])
            print("ddi_sample_offers %d of %d" % (offers, n))
            print("== GET /v1/devices/{id}/update over %d devices, each its own token" % n,
                  flush=True)
            r1, r1p99, r1out = run("/v1/devices/u-%05lu/update", n, "Bearer", tokens_file)
            print("== GET /ddi/%s/controller/v1/{id} (DDI polls) over the same devices" % TENANT,
                  flush=True)
            d, dp99, dout = run("/ddi/%s/controller/v1/u-%%05lu" % TENANT, n, "TargetToken",
                                tokens_file)
            print("== GET /v1/devices/{id}/update again", flush=True)
            r2, r2p99, r2out = run("/v1/devices/u-%05lu/update", n, "Bearer", tokens_file)
            rest = (r1 + r2) / 2
            cpu = ((value(r1out, "cpu_per_write_us") + value(r2out, "cpu_per_write_us")) / 2,
                   value(dout, "cpu_per_write_us"))
            dratio = d / rest if rest else 0
        if not HEALTHZ:
            if DDI:
                print("\n== summary")
                print_ddi(rest, r1, r2, r1p99, r2p99, d, dp99, dout, dratio, cpu)
            return

        print("== GET /healthz", flush=True)
        h1, h1p99, _ = run("/healthz", 1)
        print("== GET /v1/devices/{id}/update over %d devices" % DEVICES, flush=True)
        u, up99, uout = run("/v1/devices/u-%05lu/update", DEVICES)
        print("== GET /healthz again", flush=True)
        h2, h2p99, _ = run("/healthz", 1)
        h = (h1 + h2) / 2
        ratio = u / h if h else 0
        print("\n== summary")
        print("healthz_per_s %.0f (runs: %.0f, %.0f; p99 %.2f / %.2f ms)" % (h, h1, h2, h1p99,
                                                                            h2p99))
        print("update_checks_per_s %.0f (p99 %.2f ms)" % (u, up99))
        print("update_status_200 %.0f\nupdate_status_204 %.0f"
              % (value(uout, "http_201_total") - value(uout, "http_status_204"),
                 value(uout, "http_status_204")))
        print("ratio_update_over_healthz %.2f (%s the 0.5 aim)"
              % (ratio, "meets" if ratio >= 0.5 else "below"))
        if DDI:
            print_ddi(rest, r1, r2, r1p99, r2p99, d, dp99, dout, dratio, cpu)
    finally:
        if proc and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
