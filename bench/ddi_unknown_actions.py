#!/usr/bin/python3
"""bench/ddi_unknown_actions.py - does one device sending DDI feedback for
action ids that name no offer slow the operators' writes? (issue 14, defect 17)

One run: a fresh SoftHSM2 token and data directory (the e2e harness,
127.0.0.1 only), signetd --role all, one device "att" with a DDI token,
BENCH_ROLLOUTS (10,000) rollouts started for its hardware class, then:
operators' POST /v1/devices latency for BENCH_SECONDS (4) on one keep-alive
connection, quiet; then the same while the device sends closed feedback for
unknown action ids on 4 connections (each answered 404 on the write side);
then the same again with feedback the HTTP layer refuses (400, never reaching
the write side): the control, what the client threads' CPU alone costs on
this machine. Prints median and p95 of each, and the 404s answered per second.

usage: bench/ddi_unknown_actions.py [BUILD_DIR]     (default: build)
env:   BENCH_ROLLOUTS (10000), BENCH_SECONDS (4), SOFTHSM2_MODULE"""

import http.client
import os
import secrets
import statistics
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("SIGNET_BUILD_DIR",
                      os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "build")))
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))
from client import register, request  # noqa: E402
from deploy import Deployment  # noqa: E402
from verify import sha256_hex  # noqa: E402

ROLLOUTS = int(os.environ.get("BENCH_ROLLOUTS", "10000"))
SECONDS = float(os.environ.get("BENCH_SECONDS", "4"))
TOKEN = "tok_" + secrets.token_urlsafe(24)


def config(c):
    c["principals"].append({"name": "dev.att", "token_sha256": sha256_hex(TOKEN),
                            "roles": ["device"], "device_id": "att"})
    c["ddi"] = {"tenant": "DEFAULT", "poll_seconds": 1}
    return c


def operator_latencies(port, ops, seconds):
    lat, c = [], http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    end = time.time() + seconds
    while time.time() < end:
        t = time.perf_counter()
        r = request("POST", port, "/v1/devices", token=ops, conn=c,
                    body={"device_id": "o-" + secrets.token_hex(6), "hardware": "hw-o"})
        lat.append((time.perf_counter() - t) * 1000)
        assert r.status == 201, r
    lat.sort()
    return lat


def show(what, lat):
    print("%-58s n=%5d  median %6.2f ms  p95 %6.2f ms"
          % (what, len(lat), statistics.median(lat), lat[int(len(lat) * 0.95)]), flush=True)


def under_attack(port, ops, finished, want):
    stop, counts = threading.Event(), []

    def attack(k):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        n, a = 0, 1000 + k
        while not stop.is_set():
            body = {"id": a, "status": {"execution": "closed", "result": {"finished": finished}}}
            r = request("POST", port, "/ddi/DEFAULT/controller/v1/att/deploymentBase/%d/feedback" % a,
                        body=body, headers={"Authorization": "TargetToken " + TOKEN}, conn=c)
            assert r.status == want, r
            n, a = n + 1, a + 4
        counts.append(n)

    threads = [threading.Thread(target=attack, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    t0 = time.time()
    time.sleep(0.5)
    lat = operator_latencies(port, ops, SECONDS)
    stop.set()
    elapsed = time.time() - t0
    for t in threads:
        t.join()
    return lat, sum(counts) / elapsed


def main():
    dep = Deployment(name="bench-ddi", mutate=config)
    try:
        dep.init()
        srv = dep.start()
        port, ops = dep.write_port, dep.token("ops")
        register(port, ops, "att", hardware="hw-x")
        r = request("POST", port, "/v1/firmware?name=x&version=1&hardware=hw-x&security_version=1",
                    token=dep.token("ci"), body=b"image " + secrets.token_bytes(64),
                    headers={"Content-Type": "application/octet-stream"})
        assert r.status == 201, r
        fw = r.body["firmware_id"]
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        t0 = time.time()
        for _ in range(ROLLOUTS):
            r = request("POST", port, "/v1/rollouts", token=ops, conn=c,
                        body={"firmware_id": fw, "hardware": "hw-x", "stages": [100],
                              "failure_threshold": 0.5, "min_reports": 10})
            assert r.status == 201, r
        print("%d rollouts of the device's class started in %.1f s" % (ROLLOUTS, time.time() - t0))
        show("operator writes, quiet", operator_latencies(port, ops, SECONDS))
        lat, rate = under_attack(port, ops, "failure", 404)
        show("... while one device sends unknown action ids (404)", lat)
        print("404s answered: %.0f/s" % rate)
        lat, rate = under_attack(port, ops, "maybe", 400)
        show("... control: the same load refused by the HTTP layer (400)", lat)
        srv.stop()
    finally:
        for s in dep.servers:
            try:
                s.stop()
            except Exception:
                pass
        dep.close()


if __name__ == "__main__":
    main()
