#!/usr/bin/python3
"""The hawkBit DDI facade over plain HTTP (no swupdate): authentication
(TargetToken and Bearer, the device's own id only), the tenant, 404s, the
poll's links, configData recorded only when it changes, feedback mapping
(closed is a report, proceeding is no event), cancelAction after a pause and
its acknowledgement recorded once, and the write listener's share of the
facade. DdiBase is also the fixture of test_ddi_swupdate.py."""

import hashlib
import http.client
import os
import secrets
import sys
import threading
import time
import unittest
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from client import fetch_all_events, get_keys, head_of, register, request  # noqa: E402
from deploy import E2ETestCase  # noqa: E402
from verify import sha256_hex, verify_snapshot  # noqa: E402
import swupdate_device as S  # noqa: E402

TENANT = "DEFAULT"
DEVICE_IDS = (["d-%02d" % i for i in range(12)] + ["sw-%02d" % i for i in range(12)]
              + ["hs-%02d" % i for i in range(8)] + ["nm-%02d" % i for i in range(8)]
              + ["ry-%02d" % i for i in range(12)])
DEV_TOKENS = {d: "tok_" + secrets.token_urlsafe(24) for d in DEVICE_IDS}


def ddi_config(cfg):
    for d, tok in DEV_TOKENS.items():
        cfg["principals"].append({"name": "dev." + d, "token_sha256": sha256_hex(tok),
                                  "roles": ["device"], "device_id": d})
    cfg["ddi"] = {"tenant": TENANT, "poll_seconds": 1}
    # the TLS-terminating proxy of DdiSwu's test is 127.0.0.1 (the tests' own address)
    cfg["http"] = {"trusted_proxies": ["127.0.0.1"]}
    return cfg


def ddi_path(dev, rest="", tenant=TENANT):
    return "/ddi/%s/controller/v1/%s%s" % (tenant, dev, rest)


def ddi(method, port, dev, rest="", token=None, body=None, scheme="TargetToken", tenant=TENANT,
        headers=None, conn=None):
    """A DDI request as suricatta makes it (TargetToken, JSON)."""
    h = {"Accept": "application/json"}
    if isinstance(body, bytes):
        h["Content-Type"] = "application/json"
    h.update(headers or {})
    tok = DEV_TOKENS[dev] if token is None else token
    if tok:
        h["Authorization"] = "%s %s" % (scheme, tok)
    return request(method, port, ddi_path(dev, rest, tenant), body=body, headers=h, conn=conn)


def feedback(action_id, execution, finished, details=("x",)):
    """A deployment feedback body exactly as suricatta 2022.12 writes it."""
    return {"id": action_id, "time": "20261127T190000",
            "status": {"result": {"progress": {"cnt": 0, "of": 0}, "finished": finished},
                       "execution": execution, "details": list(details)}}


class DdiBase(E2ETestCase):
    """A deployment with DDI device principals, ddi.poll_seconds 1, and
    helpers for images, rollouts and events."""

    @classmethod
    def setUpClass(cls):
        cls.start_deployment(mutate=ddi_config)
        cls.ci = cls.dep.token("ci")
        cls.versions = iter(range(1, 1000000))

    def head(self):
        return head_of(self.rp, self.audit)

    def events_after(self, after, types=None):
        events, _ = fetch_all_events(self.rp, self.audit)
        return [e for e in events if e["position"] > after and (types is None or e["type"] in types)]

    def upload(self, hardware, body, fmt=None, name="fw-ddi", status=201):
        v = next(self.versions)
        q = "/v1/firmware?name=%s&version=1.%d&hardware=%s&security_version=1" % (name, v, hardware)
        if fmt:
            q += "&format=" + fmt
        r = request("POST", self.wp, q, token=self.ci, body=body,
                    headers={"Content-Type": "application/octet-stream"})
        self.assertStatus(r, status)
        return r.body

    def upload_swu(self, hardware, files, revisions=("1.0",)):
        """An unsigned .swu pushed with format=swu: signet signs it. Returns
        the upload's answer (firmware_id, size...)."""
        swu = S.make_swu("1.0", files, revisions=revisions)
        return self.upload(hardware, swu, fmt="swu")

    def register_all(self, ids, hardware):
        pos = 0
        for d in ids:
            r = register(self.wp, self.ops, d, hardware=hardware)
            self.assertStatus(r, 201)
            pos = r.body["position"]
        return pos

    def rollout(self, fw, hardware, threshold=0.5, min_reports=1000, stages=(100,)):
        r = request("POST", self.wp, "/v1/rollouts", token=self.ops,
                    body={"firmware_id": fw, "hardware": hardware, "stages": list(stages),
                          "failure_threshold": threshold, "min_reports": min_reports})
        self.assertStatus(r, 201)
        return r.body["rollout_id"], r.body["position"]

    def wait_read(self, pos):
        r = request("GET", self.rp, "/v1/events?after=0&limit=1&min_position=%d&wait_ms=5000" % pos,
                    token=self.audit)
        self.assertStatus(r, 200)

    def poll(self, dev, pos=None):
        if pos:
            self.wait_read(pos)
        r = ddi("GET", self.rp, dev)
        self.assertStatus(r, 200)
        return r.body


class Ddi(DdiBase):

    def test_authentication_tenant_and_device(self):
        dev, other = "d-00", "d-01"
        self.register_all([dev, other], "hw-auth")
        self.assertStatus(ddi("GET", self.rp, dev), 200)
        self.assertStatus(ddi("GET", self.rp, dev, scheme="Bearer"), 200)
        self.assertProblem(ddi("GET", self.rp, dev, token=""), 401)
        self.assertProblem(ddi("GET", self.rp, dev, token="not-a-token"), 401)
        self.assertProblem(ddi("GET", self.rp, dev, scheme="GatewayToken"), 401)
        # another device's token, and principals that are not devices
        self.assertProblem(ddi("GET", self.rp, dev, token=DEV_TOKENS[other]), 403)
        self.assertProblem(ddi("GET", self.rp, dev, token=self.ops), 403)
        self.assertProblem(ddi("GET", self.rp, dev, token=self.adm), 403)
        self.assertProblem(ddi("PUT", self.rp, dev, "/configData", token=DEV_TOKENS[other],
                               body={"data": {"a": "b"}}), 403)
        self.assertProblem(ddi("POST", self.rp, dev, "/deploymentBase/5/feedback",
                               token=DEV_TOKENS[other], body=feedback(5, "closed", "success")), 403)
        # the tenant is ddi.tenant, nothing else
        self.assertProblem(ddi("GET", self.rp, dev, tenant="OTHER"), 404)
        self.assertProblem(ddi("GET", self.rp, dev, tenant="default"), 404)
        # unknown paths and actions
        self.assertProblem(ddi("GET", self.rp, dev, "/deploymentBase/12345"), 404)
        self.assertProblem(ddi("GET", self.rp, dev, "/deploymentBase/abc"), 404)
        self.assertProblem(ddi("GET", self.rp, dev, "/deploymentBase/99999999999"), 404)
        self.assertProblem(ddi("GET", self.rp, dev, "/cancelAction/12345"), 404)
        self.assertProblem(ddi("GET", self.rp, dev, "/softwaremodules/%s/artifacts/x.swu" % ("0" * 64)), 404)
        self.assertProblem(ddi("GET", self.rp, dev, "/nothing"), 404)
        # every answer is 200, never 201/204; the write listener serves no GET
        self.assertProblem(ddi("GET", self.wp, dev), 404)

    def test_poll_and_config_data(self):
        dev = "d-02"
        pos = self.register_all([dev], "hw-cfg")
        body = self.poll(dev, pos)
        self.assertEqual(body["config"], {"polling": {"sleep": "00:00:01"}})
        self.assertEqual(set(body["_links"]), {"configData"})
        href = body["_links"]["configData"]["href"]
        self.assertEqual(href, "http://127.0.0.1:%d%s" % (self.rp, ddi_path(dev, "/configData")))
        before = self.head()
        put = {"id": "", "time": "20261127T190735",
               "status": {"result": {"finished": "success"}, "execution": "closed", "details": [""]},
               "data": {"revision": "1.0", "board": "board"}}
        r = ddi("PUT", self.rp, dev, "/configData", body=put)
        self.assertStatus(r, 200)
        evs = self.events_after(before)
        self.assertEqual([e["type"] for e in evs], ["DeviceAttributesRecorded"])
        self.assertEqual(evs[0]["data"], {"device_id": dev,
                                          "attributes": {"revision": "1.0", "board": "board"}})
        self.assertEqual(evs[0]["actor"], "dev." + dev)
        # the poll stops asking for them
        self.assertNotIn("configData", self.poll(dev, evs[0]["position"])["_links"])
        # the same again: 200, no event (suricatta sends them at every start)
        mark = self.head()
        self.assertStatus(ddi("PUT", self.rp, dev, "/configData", body=put), 200)
        self.assertStatus(ddi("PUT", self.wp, dev, "/configData", body=put), 200)
        self.assertEqual(self.head(), mark)
        # a change (merge, hawkBit's default) is recorded, once
        put["data"] = {"revision": "1.1"}
        self.assertStatus(ddi("PUT", self.rp, dev, "/configData", body=put), 200)
        evs = self.events_after(mark)
        self.assertEqual([e["data"]["attributes"] for e in evs], [{"revision": "1.1", "board": "board"}])
        put["mode"] = "replace"
        self.assertStatus(ddi("PUT", self.rp, dev, "/configData", body=put), 200)
        self.assertEqual(self.events_after(mark)[-1]["data"]["attributes"], {"revision": "1.1"})
        # the ddi read model's signed snapshot
        snap = request("GET", self.rp, "/v1/snapshots/ddi?min_position=%d&wait_ms=5000" % self.head(),
                       token=self.audit)
        self.assertStatus(snap, 200)
        verify_snapshot(snap.body, get_keys(self.rp))
        self.assertEqual(snap.body["state"]["devices"][dev], {"attributes": {"revision": "1.1"}})
        # bad bodies: 400, nothing recorded
        mark = self.head()
        for bad in ({"data": {"a": 1}}, {"data": []}, {"mode": "sideways", "data": {}},
                    {"data": {"a": "b"}, "extra": 1}, {"nodata": {}},
                    {"data": {"k" * 200: "v"}}, {"data": {"a": "v" * 600}}):
            self.assertProblem(ddi("PUT", self.rp, dev, "/configData", body=bad), 400, msg=bad)
        self.assertProblem(ddi("PUT", self.rp, dev, "/configData", body=b"{not json"), 400)
        self.assertEqual(self.head(), mark)
        # an unregistered device's attributes are not recorded
        self.assertProblem(ddi("PUT", self.rp, "d-11", "/configData", body={"data": {"a": "b"}}), 404)
        self.assertNotIn("configData", self.poll("d-11")["_links"])

    def test_raw_image_no_deployment_but_feedback_maps(self):
        dev = "d-03"
        self.register_all([dev], "hw-raw")
        fw = self.upload("hw-raw", b"raw image " + secrets.token_bytes(100))["firmware_id"]
        _, pos = self.rollout(fw, "hw-raw")
        r = request("GET", self.rp, "/v1/devices/%s/update?min_position=%d" % (dev, pos),
                    token=self.ops)
        self.assertStatus(r, 200)
        offer = r.body["offer"]
        links = self.poll(dev, pos)["_links"]
        self.assertNotIn("deploymentBase", links)
        self.assertProblem(ddi("GET", self.rp, dev, "/deploymentBase/%d" % offer), 404)
        # a closed feedback still names that offer: it is the device's report
        # for the image (decided on the write side, so the write listener
        # takes it as well as the read listener)
        mark = self.head()
        r = ddi("POST", self.wp, dev, "/deploymentBase/%d/feedback" % offer,
                body=feedback(offer, "closed", "failure", ["ERROR : one", "", "ERROR : two"]))
        self.assertStatus(r, 200)
        evs = self.events_after(mark)
        self.assertEqual([(e["type"], e["data"]["firmware_id"], e["data"]["status"],
                           e["data"]["detail"], e["actor"]) for e in evs],
                         [("DeviceReported", fw, "failed", "ERROR : one; ERROR : two", "dev." + dev)])
        # a number that names no offer to this device: 404, nothing recorded
        mark = self.head()
        for wrong in (offer + 1, 1):
            self.assertProblem(ddi("POST", self.rp, dev, "/deploymentBase/%d/feedback" % wrong,
                                   body=feedback(wrong, "closed", "success")), 404)
        other = "d-05"
        self.register_all([other], "hw-raw-2")
        self.assertProblem(ddi("POST", self.rp, other, "/deploymentBase/%d/feedback" % offer,
                               body=feedback(offer, "closed", "success")), 404)
        self.assertEqual(self.head(), mark + 1)  # the registration only

    def update_offer(self, dev, pos, action):
        r = request("GET", self.rp, "/v1/devices/%s/update?min_position=%d&wait_ms=5000" % (dev, pos),
                    token=self.ops)
        self.assertStatus(r, 200)
        self.assertEqual(r.body["action"], action)
        return r.body["offer"], r.body["firmware_id"]

    def closed(self, dev, offer, finished, port=None):
        mark = self.head()
        r = ddi("POST", port or self.rp, dev, "/deploymentBase/%d/feedback" % offer,
                body=feedback(offer, "closed", finished, ["done"]))
        self.assertStatus(r, 200)
        (ev,) = self.events_after(mark)
        self.assertEqual(ev["type"], "DeviceReported")
        return ev

    def test_feedback_maps_resumed_and_rollback_offers(self):
        """The write side finds the image of every kind of offer the read
        side makes: a first install, one reopened by a resume, a rollback."""
        dev = "d-06"
        self.register_all([dev], "hw-map")
        fw1 = self.upload("hw-map", b"one " + secrets.token_bytes(64))["firmware_id"]
        rid1, pos = self.rollout(fw1, "hw-map")
        offer1, got = self.update_offer(dev, pos, "install")
        self.assertEqual(got, fw1)
        # paused and resumed: a new offer number, and it maps too
        r = request("POST", self.wp, "/v1/rollouts/%s/pause" % rid1, token=self.ops)
        r = request("POST", self.wp, "/v1/rollouts/%s/resume" % rid1, token=self.ops)
        self.assertStatus(r, 200)
        offer1b, _ = self.update_offer(dev, r.body["position"], "install")
        self.assertNotEqual(offer1b, offer1)
        ev = self.closed(dev, offer1b, "success", port=self.wp)
        self.assertEqual((ev["data"]["firmware_id"], ev["data"]["status"]), (fw1, "installed"))
        self.assertEqual(ev["data"].get("rollout_id"), rid1)
        # a second image, installed, then rolled back: the rollback offer maps to fw1
        fw2 = self.upload("hw-map", b"two " + secrets.token_bytes(64))["firmware_id"]
        rid2, pos = self.rollout(fw2, "hw-map")
        offer2, got = self.update_offer(dev, pos, "install")
        self.assertEqual(got, fw2)
        ev = self.closed(dev, offer2, "success")
        self.assertEqual(ev["data"]["firmware_id"], fw2)
        r = request("POST", self.wp, "/v1/rollouts/%s/rollback" % rid2, token=self.ops)
        self.assertStatus(r, 200)
        offer3, got = self.update_offer(dev, r.body["position"], "rollback")
        self.assertEqual(got, fw1)
        ev = self.closed(dev, offer3, "success")
        self.assertEqual((ev["data"]["firmware_id"], ev["data"].get("rollback")), (fw1, True))

    def test_feedback_and_cancel_only_for_offers_made(self):
        """Issue 14, defects 22 and 16: a device outside the rollout that
        computes its would-be action id (the formula is public) gets 404 for
        its closed feedback, and so does a cancelAction feedback for an offer
        that was never withdrawn; nothing is recorded."""
        devs = ["nm-%02d" % i for i in range(8)]
        self.register_all(devs, "hw-nm")
        fw = self.upload("hw-nm", b"nm " + secrets.token_bytes(64))["firmware_id"]
        rid, pos = self.rollout(fw, "hw-nm", stages=(30,))

        def in_rollout(d):
            h = hashlib.sha256(("%s:%s" % (rid, d)).encode()).digest()
            return int.from_bytes(h[:4], "big") % 10000 < 30 * 100

        def would_be(d):
            h = hashlib.sha256(("signet-offer-v1:%s:%s:install:%s:%d" % (rid, d, fw, pos)).encode())
            return (int.from_bytes(h.digest()[:4], "big") & 0x7FFFFFFF) or 1

        outside = [d for d in devs if not in_rollout(d)]
        inside = [d for d in devs if in_rollout(d)]
        self.assertTrue(outside, "every device is in the rollout: change its stages")
        self.wait_read(pos)
        mark = self.head()
        for d in outside:
            r = request("GET", self.rp, "/v1/devices/%s/update" % d, token=self.ops)
            self.assertEqual(r.status, 204, d)
            action = would_be(d)
            for port in (self.rp, self.wp):
                self.assertProblem(ddi("POST", port, d, "/deploymentBase/%d/feedback" % action,
                                       body=feedback(action, "closed", "failure")), 404)
        ack = {"id": 0, "status": {"result": {"finished": "success"}, "execution": "closed"}}
        for d in inside:
            offer, _ = self.update_offer(d, pos, "install")
            self.assertEqual(offer, would_be(d))
            # the offer stands: there is nothing to cancel
            for action in (offer, offer ^ 1):
                ack["id"] = action
                self.assertProblem(ddi("POST", self.rp, d, "/cancelAction/%d/feedback" % action,
                                       body=ack), 404)
        self.assertEqual(self.head(), mark)
        # Advanced to 100 %: the outsiders are offered it now, and their
        # feedback is taken.
        r = request("POST", self.wp, "/v1/rollouts/%s/advance" % rid, token=self.ops)
        self.assertProblem(r, 409)  # one stage only: a new rollout instead
        rid2, pos = self.rollout(fw, "hw-nm", stages=(100,))
        d = outside[0]
        offer, _ = self.update_offer(d, pos, "install")
        ev = self.closed(d, offer, "failure")
        self.assertEqual((ev["data"]["firmware_id"], ev["data"].get("rollout_id")), (fw, rid2))

    def test_feedback_without_an_open_action(self):
        dev = "d-04"
        self.register_all([dev], "hw-fb")
        mark = self.head()
        # proceeding is acknowledged whatever it carries, and never recorded
        for ex in ("proceeding", "scheduled", "resumed", "download", "downloaded", "canceled",
                   "rejected"):
            self.assertStatus(ddi("POST", self.rp, dev, "/deploymentBase/77/feedback",
                                  body=feedback(77, ex, "none", ["line\twith a tab"] * 48)), 200)
        # closed for an action the device was never offered: 404, nothing recorded
        self.assertProblem(ddi("POST", self.rp, dev, "/deploymentBase/77/feedback",
                               body=feedback(77, "closed", "success")), 404)
        for bad in ({"status": {}}, {"status": {"execution": "done"}},
                    feedback(77, "closed", "none"), feedback(77, "closed", "maybe")):
            self.assertProblem(ddi("POST", self.rp, dev, "/deploymentBase/77/feedback", body=bad),
                               400, msg=bad)
        self.assertProblem(ddi("POST", self.rp, dev, "/deploymentBase/77/feedback", body=b"[1"), 400)
        self.assertProblem(ddi("POST", self.rp, dev, "/deploymentBase/77/feedback", body=b"{}",
                               headers={"Content-Type": "text/plain"}), 415)
        self.assertEqual(self.head(), mark)


class DdiRate(DdiBase):
    """Issue 14, defect 16 over DDI: configData alternating two values adds
    at most limits.device_events_per_minute events (here 4), then 429."""

    @classmethod
    def setUpClass(cls):
        def cfg(c):
            ddi_config(c)
            c["limits"]["device_events_per_minute"] = 4
            return c
        cls.start_deployment(mutate=cfg)
        cls.ci = cls.dep.token("ci")
        cls.versions = iter(range(1, 1000000))

    def test_alternating_config_data(self):
        self.register_all(["d-00", "d-01"], "hw-rate")
        if time.time() % 60 > 45:  # all of it within one minute of the clock
            time.sleep(61 - time.time() % 60)
        mark = self.head()
        answers = [ddi("PUT", self.wp, "d-00", "/configData", body={"data": {"v": str(i % 2)}})
                   for i in range(10)]
        # four changes recorded; then each change is 429, and each PUT of
        # what is recorded already ("v": "1") changes nothing: 200, no event
        self.assertEqual([a.status for a in answers], [200] * 4 + [429, 200] * 3)
        self.assertEqual([a.body for a in answers[5::2]], [{}] * 3)
        self.assertProblem(answers[-2], 429, "too-many-requests")
        self.assertEqual(self.head(), mark + 4)
        self.assertStatus(ddi("PUT", self.wp, "d-01", "/configData", body={"data": {"v": "1"}}), 200)
        self.assertEqual(self.head(), mark + 5)


class DdiFirstPoll(DdiBase):
    """ddi.poll_seconds 300: a device whose attributes are not in yet is told
    to come back in 5 s (suricatta sends them, then sleeps before looking at
    its offer), then the configured interval."""

    @classmethod
    def setUpClass(cls):
        def cfg(c):
            ddi_config(c)["ddi"]["poll_seconds"] = 300
            return c
        cls.start_deployment(mutate=cfg)
        cls.ci = cls.dep.token("ci")
        cls.versions = iter(range(1, 1000000))

    def test_first_poll_comes_back_soon(self):
        dev = "d-11"
        pos = self.register_all([dev], "hw-first")
        body = self.poll(dev, pos)
        self.assertIn("configData", body["_links"])
        self.assertEqual(body["config"], {"polling": {"sleep": "00:00:05"}})
        put = {"data": {"board": "b", "revision": "1.0"}}
        self.assertStatus(ddi("PUT", self.rp, dev, "/configData", body=put), 200)
        body = self.poll(dev, self.head())
        self.assertNotIn("configData", body["_links"])
        self.assertEqual(body["config"], {"polling": {"sleep": "00:05:00"}})
        # An offer it has not fetched yet: 5 s again (after a restart
        # suricatta spends its first poll on its attributes); once fetched,
        # the interval.
        up = self.upload_swu("hw-first", [("app.bin", b"y" * 1000)])
        _, pos = self.rollout(up["firmware_id"], "hw-first")
        body = self.poll(dev, pos)
        self.assertIn("deploymentBase", body["_links"])
        self.assertEqual(body["config"], {"polling": {"sleep": "00:00:05"}})
        href = body["_links"]["deploymentBase"]["href"]
        r = ddi("GET", self.rp, dev, href[href.index("/deploymentBase"):])
        self.assertStatus(r, 200)
        body = self.poll(dev)
        self.assertIn("deploymentBase", body["_links"])
        self.assertEqual(body["config"], {"polling": {"sleep": "00:05:00"}})


class MethodProxy:
    """The reverse proxy of split roles (docker/signet-proxy.conf): GET and
    HEAD to the reader, POST and PUT to the writer, Host passed on."""

    def __init__(self, read_port, write_port):
        outer = self
        self.seen = []  # (method, path, upstream port)

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def relay(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else None
                port = read_port if self.command in ("GET", "HEAD") else write_port
                outer.seen.append((self.command, self.path, port))
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                hdrs = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                c.request(self.command, self.path, body=body, headers=hdrs)
                r = c.getresponse()
                data = r.read()
                self.send_response(r.status)
                for k, v in r.getheaders():
                    if k.lower() not in ("connection", "transfer-encoding", "date", "server"):
                        self.send_header(k, v)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                c.close()

            do_GET = do_HEAD = do_POST = do_PUT = relay

        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.port = self.srv.server_address[1]
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def close(self):
        self.srv.shutdown()
        self.srv.server_close()


class DdiSplitRoles(DdiBase):
    """--role write and --role read on one store behind a method-routing
    proxy: the whole facade works through the proxy, the closed feedback
    included (decided by the writer, which has no read side)."""

    @classmethod
    def setUpClass(cls):
        cls.writer = cls.start_deployment(role="write", mutate=ddi_config)
        cls.ci = cls.dep.token("ci")
        cls.versions = iter(range(1, 1000000))
        read_cfg = cls.dep.write_config("read.json", mutate=ddi_config)
        cls.reader = cls.dep.start(role="read", config=read_cfg)
        cls.rp = cls.dep.ports[read_cfg][1]
        cls.proxy = MethodProxy(cls.rp, cls.wp)
        cls.addClassCleanup(cls.proxy.close)

    def test_through_the_method_proxy(self):
        dev, px = "d-07", self.proxy.port
        pos = self.register_all([dev], "hw-split")
        fw = self.upload("hw-split", b"split " + secrets.token_bytes(64))["firmware_id"]
        _, pos = self.rollout(fw, "hw-split")
        self.wait_read(pos)
        r = ddi("GET", px, dev)
        self.assertStatus(r, 200)
        self.assertEqual(r.body["_links"]["configData"]["href"],
                         "http://127.0.0.1:%d%s" % (px, ddi_path(dev, "/configData")))
        mark = self.head()
        self.assertStatus(ddi("PUT", px, dev, "/configData", body={"data": {"board": "b"}}), 200)
        r = request("GET", px, "/v1/devices/%s/update" % dev, token=self.ops)
        self.assertStatus(r, 200)
        offer = r.body["offer"]
        r = ddi("POST", px, dev, "/deploymentBase/%d/feedback" % offer,
                body=feedback(offer, "closed", "success", ["Update Installed."]))
        self.assertStatus(r, 200)
        self.assertEqual([e["type"] for e in self.events_after(mark)],
                         ["DeviceAttributesRecorded", "DeviceReported"])
        self.assertEqual([m for m, p, port in self.proxy.seen if port == self.wp], ["PUT", "POST"])
        evs = self.events_after(mark)
        self.assertNotIn("configData", self.poll_via(px, dev, evs[-1]["position"])["_links"])
        # the reader has no write side (503 for what must be recorded), the
        # writer serves no GET of the facade
        self.assertStatus(ddi("POST", self.rp, dev, "/deploymentBase/%d/feedback" % offer,
                              body=feedback(offer, "proceeding", "none")), 200)
        self.assertProblem(ddi("POST", self.rp, dev, "/deploymentBase/%d/feedback" % offer,
                               body=feedback(offer, "closed", "success")), 503)
        self.assertProblem(ddi("PUT", self.rp, dev, "/configData", body={"data": {"a": "b"}}), 503)
        self.assertProblem(ddi("GET", self.wp, dev), 404)

    def poll_via(self, port, dev, pos):
        self.wait_read(pos)
        r = ddi("GET", port, dev)
        self.assertStatus(r, 200)
        return r.body


@unittest.skipUnless(S.have_swupdate(), "needs swupdate")
class DdiSwu(DdiBase):
    """The facade with format=swu images (signed by signet)."""

    def test_offer_deployment_artifact_and_reports(self):
        devs = ["sw-00", "sw-01", "sw-02"]
        self.register_all(devs, "hw-swu")
        payload = secrets.token_bytes(50000)
        up = self.upload_swu("hw-swu", [("app.bin", payload)])
        fw = up["firmware_id"]
        _, pos = self.rollout(fw, "hw-swu")
        body = self.poll(devs[0], pos)
        href = body["_links"]["deploymentBase"]["href"]
        prefix = "http://127.0.0.1:%d%s/deploymentBase/" % (self.rp, ddi_path(devs[0]))
        self.assertTrue(href.startswith(prefix), href)
        action = int(href[len(prefix):])
        self.assertTrue(0 < action < 2 ** 31)
        r = ddi("GET", self.rp, devs[0], "/deploymentBase/%d" % action)
        self.assertStatus(r, 200)
        d = r.body
        self.assertEqual(d["id"], str(action))
        self.assertEqual(d["deployment"]["download"], "forced")
        self.assertEqual(d["deployment"]["update"], "forced")
        (chunk,) = d["deployment"]["chunks"]
        self.assertEqual(chunk["name"], "fw-ddi")
        (art,) = chunk["artifacts"]
        self.assertTrue(art["filename"].endswith(".swu"), art)
        # the artifact is the stored image, byte for byte, with its hashes
        link = art["_links"]["download-http"]["href"]
        self.assertTrue(link.startswith("http://127.0.0.1:%d/ddi/" % self.rp), link)
        path = link[len("http://127.0.0.1:%d" % self.rp):]
        h = {"Authorization": "TargetToken " + DEV_TOKENS[devs[0]]}
        head = request("HEAD", self.rp, path, headers=h)
        self.assertStatus(head, 200)
        self.assertEqual(int(head.headers["Content-Length"]), art["size"])
        img = request("GET", self.rp, path, headers=h)
        self.assertStatus(img, 200)
        self.assertEqual(len(img.raw), art["size"])
        self.assertEqual(art["size"], up["size"])
        self.assertEqual(art["hashes"], {"sha1": hashlib.sha1(img.raw).hexdigest(),
                                         "md5": hashlib.md5(img.raw).hexdigest(),
                                         "sha256": hashlib.sha256(img.raw).hexdigest()})
        self.assertEqual("sha256:" + art["hashes"]["sha256"], fw)
        # behind a TLS-terminating proxy: https links, hawkBit's "download"
        r = ddi("GET", self.rp, devs[0], "/deploymentBase/%d" % action,
                headers={"X-Forwarded-Proto": "https", "Host": "ota.example:443"})
        self.assertStatus(r, 200)
        (tls,) = r.body["deployment"]["chunks"][0]["artifacts"]
        self.assertEqual(set(tls["_links"]), {"download"})
        self.assertEqual(tls["_links"]["download"]["href"], "https://ota.example:443" + path)
        # ... but the same header from a peer that is not in http.trusted_proxies
        # changes nothing: a client cannot downgrade or redirect what devices fetch
        # (issue 14, defect 11)
        untrusted = http.client.HTTPConnection("127.0.0.1", self.rp, timeout=30,
                                               source_address=("127.0.0.3", 0))
        try:
            r = ddi("GET", self.rp, devs[0], "/deploymentBase/%d" % action, conn=untrusted,
                    headers={"X-Forwarded-Proto": "https", "Host": "ota.example:443"})
        finally:
            untrusted.close()
        self.assertStatus(r, 200)
        (plain,) = r.body["deployment"]["chunks"][0]["artifacts"]
        self.assertEqual(set(plain["_links"]), {"download-http"})
        self.assertEqual(plain["_links"]["download-http"]["href"], "http://ota.example:443" + path)
        part = request("GET", self.rp, path, headers=dict(h, Range="bytes=1000-"))
        self.assertStatus(part, 206)
        self.assertEqual(part.raw, img.raw[1000:])
        # another device may not fetch it through its own path, nor with the
        # first device's path
        self.assertProblem(request("GET", self.rp, path, headers={
            "Authorization": "TargetToken " + DEV_TOKENS[devs[1]]}), 403)
        # proceeding: 200, no event
        mark = self.head()
        self.assertStatus(ddi("POST", self.rp, devs[0], "/deploymentBase/%d/feedback" % action,
                              body=feedback(action, "proceeding", "none")), 200)
        self.assertEqual(self.head(), mark)
        # closed + success: the installed report, answered 200 (on either listener)
        r = ddi("POST", self.rp, devs[0], "/deploymentBase/%d/feedback" % action,
                body=feedback(action, "closed", "success", ["Update Installed."]))
        self.assertStatus(r, 200)
        evs = self.events_after(mark)
        self.assertEqual([e["type"] for e in evs], ["DeviceReported"])
        self.assertEqual(evs[0]["data"]["status"], "installed")
        self.assertEqual(evs[0]["data"]["firmware_id"], fw)
        self.assertEqual(evs[0]["data"]["detail"], "Update Installed.")
        self.assertEqual(evs[0]["data"]["device_id"], devs[0])
        # the action is closed: no more deploymentBase
        self.assertNotIn("deploymentBase", self.poll(devs[0], evs[0]["position"])["_links"])
        # closed + failure from another device, through the write listener
        action1 = int(self.poll(devs[1])["_links"]["deploymentBase"]["href"].rsplit("/", 1)[1])
        self.assertNotEqual(action1, action)
        mark = self.head()
        r = ddi("POST", self.wp, devs[1], "/deploymentBase/%d/feedback" % action1,
                body=feedback(action1, "closed", "failure", ["ERROR : bad", "ERROR : worse"]))
        self.assertStatus(r, 200)
        evs = self.events_after(mark)
        self.assertEqual([(e["type"], e["data"]["status"], e["data"]["detail"]) for e in evs],
                         [("DeviceReported", "failed", "ERROR : bad; ERROR : worse")])

    def test_device_reads_its_own_feedback(self):
        """Issue 14 defect 25: right after its closed + success feedback is
        answered 200, the device's next poll no longer advertises that action
        (nor answers its deploymentBase), on whichever listener the feedback
        went to: the facade waits until the read model has the device's own
        write. Twelve devices, so that a lagging read model is caught."""
        devs = ["ry-%02d" % i for i in range(12)]
        self.register_all(devs, "hw-ryw")
        fw = self.upload_swu("hw-ryw", [("app.bin", secrets.token_bytes(2000))])["firmware_id"]
        _, pos = self.rollout(fw, "hw-ryw")
        self.wait_read(pos)
        stale = []
        for i, dev in enumerate(devs):
            href = self.poll(dev)["_links"]["deploymentBase"]["href"]
            action = int(href.rsplit("/", 1)[1])
            self.assertStatus(ddi("GET", self.rp, dev, "/deploymentBase/%d" % action), 200)
            r = ddi("POST", self.wp if i % 2 else self.rp, dev,
                    "/deploymentBase/%d/feedback" % action,
                    body=feedback(action, "closed", "success", ["Update Installed."]))
            self.assertStatus(r, 200)
            links = self.poll(dev)["_links"]
            if "deploymentBase" in links:
                stale.append((dev, links["deploymentBase"]["href"]))
        self.assertEqual(stale, [], "polls right after a closed feedback still offered it")

    def test_first_deployment_fetched_by_many_at_once(self):
        """An image's SHA-1 and MD5 are read on the hashing thread (each
        request waits suspended, and the first reading answers them all):
        8 devices asking for a new 8 MiB image's deploymentBase at the same
        moment are all answered with the image's hashes, and /healthz on the
        same listener keeps answering meanwhile."""
        import client
        devs = ["hs-%02d" % i for i in range(8)]
        self.register_all(devs, "hw-hash")
        up = self.upload_swu("hw-hash", [("big.bin", secrets.token_bytes(8 << 20))])
        _, pos = self.rollout(up["firmware_id"], "hw-hash")
        self.wait_read(pos)
        actions = [self.poll(d)["_links"]["deploymentBase"]["href"].rsplit("/", 1)[1] for d in devs]

        def fetch(i):
            return i, ddi("GET", self.rp, devs[i], "/deploymentBase/%s" % actions[i])
        health = []
        stop = threading.Event()

        def probe():  # at least once, however soon the fetches end
            while True:
                health.append(request("GET", self.rp, "/healthz").status)
                if stop.is_set():
                    break
        t = threading.Thread(target=probe)
        t.start()
        try:
            answers = client.in_threads(8, fetch, together=True)
        finally:
            stop.set()
            t.join()
        self.assertEqual(len(answers), 8)
        answers = [r for _, r in sorted(answers, key=lambda x: x[0])]
        h = {"Authorization": "TargetToken " + DEV_TOKENS[devs[0]]}
        self.assertStatus(answers[0], 200)
        (art0,) = answers[0].body["deployment"]["chunks"][0]["artifacts"]
        path = art0["_links"]["download-http"]["href"][len("http://127.0.0.1:%d" % self.rp):]
        img = request("GET", self.rp, path, headers=h)
        self.assertStatus(img, 200)
        want = {"sha1": hashlib.sha1(img.raw).hexdigest(), "md5": hashlib.md5(img.raw).hexdigest(),
                "sha256": hashlib.sha256(img.raw).hexdigest()}
        for r in answers:
            self.assertStatus(r, 200)
            (art,) = r.body["deployment"]["chunks"][0]["artifacts"]
            self.assertEqual(art["hashes"], want)
            self.assertEqual(art["size"], len(img.raw))
        self.assertTrue(health and all(s == 200 for s in health), health[:10])

    def test_cancel_action_after_a_pause(self):
        dev = "sw-03"
        self.register_all([dev], "hw-cancel")
        up = self.upload_swu("hw-cancel", [("app.bin", b"x" * 1000)])
        rid, pos = self.rollout(up["firmware_id"], "hw-cancel")
        action = int(self.poll(dev, pos)["_links"]["deploymentBase"]["href"].rsplit("/", 1)[1])
        r = request("POST", self.wp, "/v1/rollouts/%s/pause" % rid, token=self.ops)
        self.assertStatus(r, 200)
        links = self.poll(dev, r.body["position"])["_links"]
        self.assertNotIn("deploymentBase", links)
        self.assertTrue(links["cancelAction"]["href"].endswith(ddi_path(dev, "/cancelAction/%d" % action)))
        c = ddi("GET", self.rp, dev, "/cancelAction/%d" % action)
        self.assertStatus(c, 200)
        self.assertEqual(c.body, {"id": str(action), "cancelAction": {"stopId": str(action)}})
        mark = self.head()
        ack = {"id": action, "time": "20261127T190000",
               "status": {"result": {"finished": "success"}, "execution": "closed",
                          "details": ["cancellation acknowledged."]}}
        self.assertStatus(ddi("POST", self.rp, dev, "/cancelAction/%d/feedback" % action, body=ack), 200)
        evs = self.events_after(mark)
        self.assertEqual([(e["type"], e["data"]) for e in evs],
                         [("OfferCancelAcknowledged", {"device_id": dev, "action_id": action})])
        self.assertNotIn("cancelAction", self.poll(dev, evs[0]["position"])["_links"])
        # acknowledged again (a retry): no second event
        mark = self.head()
        self.assertStatus(ddi("POST", self.rp, dev, "/cancelAction/%d/feedback" % action, body=ack), 200)
        self.assertEqual(self.head(), mark)
        # resumed: a new offer, a new action id
        r = request("POST", self.wp, "/v1/rollouts/%s/resume" % rid, token=self.ops)
        self.assertStatus(r, 200)
        links = self.poll(dev, r.body["position"])["_links"]
        new = int(links["deploymentBase"]["href"].rsplit("/", 1)[1])
        self.assertNotEqual(new, action)


if __name__ == "__main__":
    unittest.main()
