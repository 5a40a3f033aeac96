#!/usr/bin/python3
"""Debian's stock SWUpdate (suricatta mode) against the real signetd over
the hawkBit DDI facade: each device is `swupdate` in a temporary directory
of its own (swupdate_device.py), pinning the `devices` certificate served in
GET /v1/keys, with the rawfile handler writing there. Install and confirm
with -c 2 (payload byte for byte, report recorded); a failing install (-c 3)
counted toward auto-halt, and the halt withdrawing the offer from the next
device (cancelAction); resume after a connection cut mid-download; a
tampered stored image refused by the device and reported failed; a device
of the wrong hardware revision refusing the image; a rollback delivered
over DDI; the outcome sent with swupdate-ipc; three devices at once. What is checked is what
swupdate logs and what signet records, never swupdate's exit status."""

import os
import re
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from client import get_keys, request, wait_until  # noqa: E402
from test_ddi import DEV_TOKENS, DdiBase, TENANT  # noqa: E402
import swupdate_device as S  # noqa: E402

PENDING = "An already installed update is pending testing"


class CuttingProxy:
    """A TCP relay in front of signetd's read listener that cuts the first
    artifact download (GET .../artifacts/...) after `cut_after` bytes of
    its answer, closing both sides; everything else passes unchanged."""

    def __init__(self, target_port, cut_after):
        self.target = target_port
        self.cut_after = cut_after
        self.cuts = 0
        self.ranges = []  # Range headers of artifact requests seen
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.stop = False
        threading.Thread(target=self.accept, daemon=True).start()

    def close(self):
        self.stop = True
        self.sock.close()

    def accept(self):
        while not self.stop:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            s = socket.create_connection(("127.0.0.1", self.target))
            state = {"artifact": False, "sent": 0, "dead": False}
            threading.Thread(target=self.up, args=(c, s, state), daemon=True).start()
            threading.Thread(target=self.down, args=(s, c, state), daemon=True).start()

    def up(self, c, s, state):
        try:
            while True:
                data = c.recv(65536)
                if not data:
                    break
                text = data.decode("latin-1")
                if text.startswith("GET ") and "/artifacts/" in text.split("\r\n", 1)[0]:
                    for line in text.split("\r\n"):
                        if line.lower().startswith("range:"):
                            self.ranges.append(line.split(":", 1)[1].strip())
                    state["artifact"] = self.cuts == 0
                    state["sent"] = 0
                s.sendall(data)
        except OSError:
            pass
        finally:
            self.finish(c, s)

    @staticmethod
    def finish(c, s):
        for x in (c, s):
            try:
                x.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            x.close()

    def down(self, s, c, state):
        try:
            while True:
                data = s.recv(16384)
                if not data:
                    break
                if state["artifact"]:
                    room = self.cut_after - state["sent"]
                    if len(data) >= room:
                        c.sendall(data[:max(room, 0)])
                        self.cuts += 1
                        state["artifact"] = False
                        break
                    state["sent"] += len(data)
                c.sendall(data)
        except OSError:
            pass
        finally:
            self.finish(c, s)


@unittest.skipUnless(S.have_swupdate(), "needs Debian's swupdate and unshare")
class DdiSwupdate(DdiBase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        keys = get_keys(cls.rp)["keys"]
        (dev_key,) = [k for k in keys if k["purpose"] == "devices" and k.get("status", "active") == "active"]
        cls.cert_pem = dev_key["certificate_pem"]
        cls.devdir = tempfile.mkdtemp(prefix="devices-", dir=cls.dep.dir)
        cls.url = "http://127.0.0.1:%d/ddi" % cls.rp

    def setUp(self):
        self.devices = []

    def tearDown(self):
        for d in self.devices:
            d.stop()

    def device(self, dev, revision="1.0", url=None):
        d = S.Device(self.devdir, dev, DEV_TOKENS[dev], url or self.url, self.cert_pem,
                     tenant=TENANT, revision=revision)
        self.devices.append(d)
        return d

    def reports_of(self, dev, after=0):
        return [e for e in self.events_after(after, {"DeviceReported"})
                if e["data"]["device_id"] == dev]

    def wait_report(self, dev, after, timeout=60):
        got = []

        def seen():
            got[:] = self.reports_of(dev, after)
            return got
        wait_until(seen, timeout, interval=0.3, what="a report from %s" % dev)
        return got

    def install(self, d, payload, name="app.bin"):
        """First run: it installs, then waits for a restart to report."""
        d.start()
        log = d.wait_log(PENDING, timeout=90)
        self.assertIn("Verified OK", log)
        self.assertIn("Installing file %s on %s/%s" % (name, S.INSTALL_DIR, name), log)
        self.assertEqual(d.installed(name), payload)
        d.stop()
        return log

    def confirm(self, d, code, after):
        """The restart with -c code: its closed feedback becomes the report."""
        d.start(confirm=code)
        rep = self.wait_report(d.device_id, after)
        d.stop()
        return rep

    # ------------------------------------------------------------------

    def test_install_and_confirm(self):
        dev = "sw-04"
        self.register_all([dev], "hw-inst")
        payload = secrets.token_bytes(300000)
        fw = self.upload_swu("hw-inst", [("app.bin", payload)])["firmware_id"]
        _, pos = self.rollout(fw, "hw-inst")
        self.wait_read(pos)
        d = self.device(dev)
        mark = self.head()
        log = self.install(d, payload)
        self.assertIn("Hardware compatibility verified", log)
        # its attributes are in; its log lines (proceeding) made no event
        types = [e["type"] for e in self.events_after(mark)]
        self.assertEqual(types, ["DeviceAttributesRecorded"], types)
        (rep,) = self.confirm(d, 2, mark)
        self.assertEqual(rep["data"]["status"], "installed")
        self.assertEqual(rep["data"]["firmware_id"], fw)
        self.assertEqual(rep["data"]["detail"], "Update Installed.")
        self.assertEqual(rep["actor"], "dev." + dev)
        # closed: the device is no longer offered the image
        self.assertNotIn("deploymentBase", self.poll(dev, rep["position"])["_links"])

    def test_rollback_over_ddi(self):
        """A rolled-back rollout offers the device the image it ran before:
        swupdate installs it over DDI and its confirmation is the rollback's
        report."""
        dev = "sw-11"
        self.register_all([dev], "hw-rb")
        one, two = secrets.token_bytes(20000), secrets.token_bytes(20000)
        fw1 = self.upload_swu("hw-rb", [("app.bin", one)])["firmware_id"]
        _, pos = self.rollout(fw1, "hw-rb")
        self.wait_read(pos)
        d = self.device(dev)
        mark = self.head()
        self.install(d, one)
        self.confirm(d, 2, mark)
        fw2 = self.upload_swu("hw-rb", [("app.bin", two)])["firmware_id"]
        rid2, pos = self.rollout(fw2, "hw-rb")
        self.wait_read(pos)
        mark = self.head()
        self.install(d, two)
        (rep,) = self.confirm(d, 2, mark)
        self.assertEqual(rep["data"]["firmware_id"], fw2)
        r = request("POST", self.wp, "/v1/rollouts/%s/rollback" % rid2, token=self.ops)
        self.assertStatus(r, 200)
        self.wait_read(r.body["position"])
        mark = self.head()
        self.install(d, one)  # the first image again, byte for byte
        (rep,) = self.confirm(d, 2, mark)
        self.assertEqual((rep["data"]["firmware_id"], rep["data"]["status"],
                          rep["data"].get("rollback")), (fw1, "installed", True))

    def test_confirm_through_swupdate_ipc(self):
        """The running daemon reports the outcome when told to:
        `swupdate-ipc sendtohawkbit <action> 2 success closed "..."` (run in
        the device's namespace, where its IPC socket is)."""
        dev = "sw-03"
        self.register_all([dev], "hw-ipc")
        payload = secrets.token_bytes(30000)
        fw = self.upload_swu("hw-ipc", [("app.bin", payload)])["firmware_id"]
        _, pos = self.rollout(fw, "hw-ipc")
        self.wait_read(pos)
        d = self.device(dev)
        mark = self.head()
        d.start()
        log = d.wait_log(PENDING, timeout=90)
        self.assertEqual(d.installed("app.bin"), payload)
        m = re.search(r"Associated Action ID for Update Action is (\d+)", log)
        self.assertIsNotNone(m, log[-3000:])
        self.assertEqual(self.reports_of(dev, mark), [])
        p = subprocess.run(["nsenter", "--mount", "--target", str(d.proc.pid), "swupdate-ipc",
                            "sendtohawkbit", m.group(1), "2", "success", "closed",
                            "tested by the ipc"], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=30)
        (rep,) = self.wait_report(dev, mark)
        d.stop()
        self.assertEqual((rep["data"]["status"], rep["data"]["firmware_id"]), ("installed", fw),
                         p.stdout)
        self.assertEqual(rep["data"]["detail"], "tested by the ipc")

    def test_several_devices_at_once(self):
        """Three devices poll, download, install and confirm at the same time
        (each swupdate in its own /tmp: no shared IPC socket)."""
        devs = ["sw-00", "sw-01", "sw-02"]
        self.register_all(devs, "hw-many")
        payload = secrets.token_bytes(200000)
        fw = self.upload_swu("hw-many", [("app.bin", payload)])["firmware_id"]
        _, pos = self.rollout(fw, "hw-many")
        self.wait_read(pos)
        mark = self.head()
        ds = [self.device(dev) for dev in devs]
        for d in ds:
            d.start()
        for d in ds:
            d.wait_log(PENDING, timeout=90)
            self.assertEqual(d.installed("app.bin"), payload)
            d.stop()
        for d in ds:
            d.start(confirm=2)
        for d in ds:
            (rep,) = self.wait_report(d.device_id, mark)
            self.assertEqual((rep["data"]["status"], rep["data"]["firmware_id"]), ("installed", fw))
            d.stop()

    def test_failures_count_toward_auto_halt(self):
        devs = ["sw-05", "sw-06", "sw-07"]
        self.register_all(devs, "hw-halt")
        payload = secrets.token_bytes(20000)
        fw = self.upload_swu("hw-halt", [("app.bin", payload)])["firmware_id"]
        rid, pos = self.rollout(fw, "hw-halt", threshold=0.5, min_reports=2)
        self.wait_read(pos)
        mark = self.head()
        for dev in devs[:2]:
            d = self.device(dev)
            self.install(d, payload)
            (rep,) = self.confirm(d, 3, mark)
            self.assertEqual(rep["data"]["status"], "failed")
            self.assertEqual(rep["data"]["detail"], "Update Failed.")
        halted = self.events_after(mark, {"RolloutHalted"})
        self.assertEqual(len(halted), 1, halted)
        self.assertEqual(halted[0]["data"]["rollout_id"], rid)
        self.assertEqual(halted[0]["actor"], "system")
        # the third device is told the offer is withdrawn, acknowledges it
        # once, and installs nothing
        d = self.device(devs[2])
        d.start()
        d.wait_log("Cancel action available at", timeout=60)

        def acked():
            return [e for e in self.events_after(mark, {"OfferCancelAcknowledged"})
                    if e["data"]["device_id"] == devs[2]]
        wait_until(acked, 30, interval=0.3, what="the cancel acknowledgement")
        time.sleep(3)  # a few more polls: acknowledged once, nothing installed
        d.stop()
        self.assertEqual(len(acked()), 1)
        self.assertIsNone(d.installed("app.bin"))
        self.assertEqual(self.reports_of(devs[2], mark), [])

    def test_resume_after_a_dropped_connection(self):
        dev = "sw-08"
        self.register_all([dev], "hw-resume")
        payload = secrets.token_bytes(600000)
        fw = self.upload_swu("hw-resume", [("app.bin", payload)])["firmware_id"]
        _, pos = self.rollout(fw, "hw-resume")
        self.wait_read(pos)
        proxy = CuttingProxy(self.rp, cut_after=150000)
        self.addCleanup(proxy.close)
        d = self.device(dev, url="http://127.0.0.1:%d/ddi" % proxy.port)
        mark = self.head()
        log = self.install(d, payload)
        self.assertEqual(proxy.cuts, 1)
        self.assertIn("Channel sleeps for 1 seconds now", log)  # the resume's pause (-w 1)
        # it asked for the rest only
        self.assertTrue(any(r.startswith("bytes=") and r != "bytes=0-" for r in proxy.ranges),
                        proxy.ranges)
        (rep,) = self.confirm(d, 2, mark)
        self.assertEqual(rep["data"]["status"], "installed")

    def test_tampered_image_is_refused_and_reported(self):
        dev = "sw-09"
        self.register_all([dev], "hw-tamper")
        payload = secrets.token_bytes(20000)
        fw = self.upload_swu("hw-tamper", [("app.bin", payload)])["firmware_id"]
        # one byte of the stored sw-description changes after signet signed it
        blob = os.path.join(self.dep.dir, "var", "blobs", "sha256", fw[len("sha256:"):])
        with open(blob, "rb") as f:
            data = bytearray(f.read())
        at = data.index(b'version = "1.0"') + len('version = "1.')
        data[at:at + 1] = b"9"
        with open(blob, "wb") as f:
            f.write(data)
        _, pos = self.rollout(fw, "hw-tamper")
        self.wait_read(pos)
        d = self.device(dev)
        mark = self.head()
        d.start()
        rep = self.wait_report(dev, mark)
        log = d.wait_log("Error processing update chunk", timeout=30)
        d.stop()
        self.assertIn("Signature verification failed", log)
        self.assertNotIn("Verified OK", log)
        self.assertIsNone(d.installed("app.bin"))
        self.assertEqual([r["data"]["status"] for r in rep], ["failed"])
        self.assertEqual(rep[0]["data"]["firmware_id"], fw)

    def test_wrong_hardware_revision_is_refused(self):
        dev = "sw-10"
        self.register_all([dev], "hw-rev")
        payload = secrets.token_bytes(20000)
        fw = self.upload_swu("hw-rev", [("app.bin", payload)], revisions=("1.0", "1.1"))["firmware_id"]
        _, pos = self.rollout(fw, "hw-rev")
        self.wait_read(pos)
        d = self.device(dev, revision="2.0")
        mark = self.head()
        d.start()
        rep = self.wait_report(dev, mark)
        log = d.wait_log("Error processing update chunk", timeout=30)
        d.stop()
        self.assertIn("Verified OK", log)  # the signature is fine: the hardware is not
        self.assertNotIn("Hardware compatibility verified", log)
        self.assertIn("SW not compatible with hardware", log)
        self.assertIsNone(d.installed("app.bin"))
        self.assertEqual([r["data"]["status"] for r in rep], ["failed"])
        # (its detail is the ERROR lines swupdate happened to collect by then)


if __name__ == "__main__":
    unittest.main()
