#!/usr/bin/python3
"""A stock SWUpdate device for the DDI tests: Debian's `swupdate` in
suricatta mode, run unchanged, one process per device in a temporary
directory of its own, and the .swu archives it installs.

Debian's swupdate 2022.12 puts its IPC sockets (sockinstctrl,
swupdateprog) and scratch files in $TMPDIR, and the images' rawfile paths
are absolute: two devices installing one image would share them. So each
device runs in a private mount namespace (`unshare --mount`) in which its own
directory is bind-mounted on /tmp: everything it makes (sockets, scratch
copies, the files its `rawfile` handler writes to /tmp/...) lands in that
directory and nowhere else.

What a test checks is what swupdate logs (its stdout/stderr, `-v`) and what
signet records; never swupdate's exit status (unreliable in `-c` runs)."""

import hashlib
import os
import shutil
import signal
import subprocess
import tempfile
import time

SWUPDATE = "/usr/bin/swupdate"
# Where an image's rawfile payloads go, as the device sees it (its /tmp).
INSTALL_DIR = "/tmp/installed"


def have_swupdate():
    return os.access(SWUPDATE, os.X_OK) and shutil.which("unshare") is not None


# ---- .swu archives -----------------------------------------------------------

def _cpio_entry(name, data, ino):
    name_b = name.encode() + b"\0"
    hdr = "070701" + "".join("%08X" % v for v in (
        ino, 0o100644, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name_b), 0))
    out = hdr.encode() + name_b
    out += b"\0" * (-len(out) % 4)
    out += data
    out += b"\0" * (-len(data) % 4)
    return out


def cpio_newc(entries):
    """A cpio `newc` archive of [(name, bytes)], in that order."""
    out = b""
    for i, (name, data) in enumerate(entries, 1):
        out += _cpio_entry(name, data, i)
    out += _cpio_entry("TRAILER!!!", b"", 0)
    out += b"\0" * (-len(out) % 512)
    return out


def cpio_members(blob):
    """[(name, bytes)] of a newc/crc archive (TRAILER excluded)."""
    out, off = [], 0
    while off + 110 <= len(blob):
        magic = blob[off:off + 6]
        if magic not in (b"070701", b"070702"):
            raise ValueError("bad cpio magic at %d" % off)
        f = [int(blob[off + 6 + 8 * i: off + 14 + 8 * i], 16) for i in range(13)]
        size, namesize = f[6], f[11]
        name = blob[off + 110: off + 110 + namesize - 1].decode()
        off += 110 + namesize
        off += -off % 4
        data = blob[off: off + size]
        off += size
        off += -off % 4
        if name == "TRAILER!!!":
            break
        out.append((name, data))
    return out


def sw_description(version, revisions, files):
    """sw-description (libconfig syntax) installing each (name, bytes) of
    files with the rawfile handler to INSTALL_DIR/<name>, for hardware
    revisions `revisions` (checked against `swupdate -H board:rev`)."""
    items = []
    for name, data in files:
        items.append(
            '\t\t{\n'
            '\t\t\tfilename = "%s";\n'
            '\t\t\tpath = "%s/%s";\n'
            '\t\t\tsha256 = "%s";\n'
            '\t\t}' % (name, INSTALL_DIR, name, hashlib.sha256(data).hexdigest()))
    return ('software =\n{\n'
            '\tversion = "%s";\n'
            '\thardware-compatibility: [ %s ];\n'
            '\tfiles: (\n%s\n\t);\n'
            '}\n' % (version, ", ".join('"%s"' % r for r in revisions),
                     ",\n".join(items))).encode()


def make_swu(version, files, revisions=("1.0",), sign=None):
    """An unsigned .swu (what a build server pushes with format=swu), or,
    with sign=(key_pem_path, cert_pem_path), one signed locally with
    `openssl cms` exactly as SWUpdate expects."""
    desc = sw_description(version, revisions, files)
    entries = [("sw-description", desc)]
    if sign:
        with tempfile.TemporaryDirectory() as td:
            p = os.path.join(td, "sw-description")
            with open(p, "wb") as f:
                f.write(desc)
            sig = subprocess.run(
                ["openssl", "cms", "-sign", "-in", p, "-out", "/dev/stdout", "-signer", sign[1],
                 "-inkey", sign[0], "-outform", "DER", "-nosmimecap", "-binary", "-md",
                 "sha256"], check=True, stdout=subprocess.PIPE).stdout
        entries.append(("sw-description.sig", sig))
    entries += list(files)
    return cpio_newc(entries)


def make_signer(directory):
    """A self-signed ECDSA P-256 CA certificate that SWUpdate accepts both as
    its -k anchor and as a signer: (key path, cert path)."""
    key = os.path.join(directory, "signer.key")
    cert = os.path.join(directory, "signer.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "30", "-subj", "/CN=test signer", "-addext",
                    "basicConstraints=critical,CA:TRUE", "-addext",
                    "keyUsage=critical,digitalSignature,keyCertSign"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return key, cert


# ---- the device ----------------------------------------------------------------

class Device:
    """One SWUpdate device: its own directory (its /tmp), the pinned
    certificate, and at most one running swupdate at a time."""

    def __init__(self, base_dir, device_id, token, url, cert_pem, tenant="DEFAULT",
                 board="board", revision="1.0", attributes=None):
        self.device_id = device_id
        self.token = token
        self.url = url
        self.tenant = tenant
        self.board, self.revision = board, revision
        self.dir = os.path.join(base_dir, "dev-" + device_id)
        os.makedirs(os.path.join(self.dir, "installed"), exist_ok=True)
        with open(os.path.join(self.dir, "cert.pem"), "w") as f:
            f.write(cert_pem)
        # Attributes it sends as configData (the `identify` section).
        attrs = attributes if attributes is not None else {"board": board, "revision": revision}
        # swupdate refuses a configuration file without a globals section.
        cfg = "globals :\n{\n\tverbose = true;\n\tloglevel = 6;\n};\n"
        if attrs:
            cfg += "identify : (\n%s\n);\n" % ",\n".join(
                '\t{ name = "%s"; value = "%s"; }' % kv for kv in attrs.items())
        with open(os.path.join(self.dir, "swupdate.cfg"), "w") as f:
            f.write(cfg)
        self.proc = None
        self.runs = 0
        self.log_path = None

    def installed(self, name):
        """Bytes the rawfile handler wrote for payload name, or None."""
        p = os.path.join(self.dir, "installed", name)
        if not os.path.exists(p):
            return None
        with open(p, "rb") as f:
            return f.read()

    def command(self, confirm=None, url=None):
        sur = ["-t", self.tenant, "-i", self.device_id, "-u", url or self.url, "-k", self.token,
               "-r", "5", "-w", "1", "-m", "1"]
        if confirm is not None:
            sur += ["-c", str(confirm)]
        return [SWUPDATE, "-v", "-f", "/tmp/swupdate.cfg", "-k", "/tmp/cert.pem",
                "-H", "%s:%s" % (self.board, self.revision), "-u", " ".join(sur)]

    def start(self, confirm=None, url=None):
        """Start swupdate (after a stop()); confirm is None, 2 or 3 (-c)."""
        assert self.proc is None
        self.runs += 1
        self.log_path = os.path.join(self.dir, "swupdate-%d.log" % self.runs)
        inner = " ".join("'%s'" % a.replace("'", "'\\''") for a in self.command(confirm, url))
        script = "mount --bind '%s' /tmp && exec %s" % (self.dir, inner)
        # SIGPIPE ignored, as systemd runs services (IgnoreSIGPIPE=yes, so
        # Debian's swupdate.service): swupdate's main process otherwise dies
        # of SIGPIPE now and then when a local IPC client has gone
        # (restore_signals=False passes on Python's own SIG_IGN).
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, restore_signals=False)
        return self.proc

    def log(self):
        if self.log_path is None:
            return ""
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def wait_log(self, needle, timeout=60):
        """Wait until this run's log contains needle (str, or a tuple of
        alternatives); returns the log. AssertionError with the log on
        timeout."""
        alts = needle if isinstance(needle, tuple) else (needle,)
        deadline = time.monotonic() + timeout
        while True:
            text = self.log()
            if any(a in text for a in alts):
                return text
            if time.monotonic() > deadline:
                raise AssertionError("swupdate of %s did not log %r within %ds; log:\n%s"
                                     % (self.device_id, alts, timeout, text[-6000:]))
            if self.proc is not None and self.proc.poll() is not None:
                text = self.log()
                if any(a in text for a in alts):
                    return text
                raise AssertionError("swupdate of %s exited (%s) before logging %r; log:\n%s"
                                     % (self.device_id, self.proc.returncode, alts, text[-6000:]))
            time.sleep(0.2)

    def stop(self):
        """Stop swupdate (its whole process group: it forks)."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=10)
        # Children that outlived the leader (same session).
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc = None
