#!/usr/bin/python3
"""The arrows between src/'s folders, checked from outside (DESIGN.md,
"Layout"; issue 14, "rooms with one job each").

Reads every #include of src/ and fails, naming the file and line, when:
  - write/ includes read/ or read/ includes write/ (the two sides stand on
    core/ and store/, never on each other);
  - a file outside hsm/ includes libp11 or PKCS#11 headers or hsm/'s
    private headers (module_p11.h, signer_impl.h), or names a libp11 or
    PKCS#11 symbol (PKCS11_*, CK_*, CKR_*, ...);
  - a file outside http/ includes microhttpd.h or http/'s private headers
    (internal.h, route_match.h), or names an MHD_* symbol;
  - core/ or device/ includes anything outside itself (device/ is a
    library of its own on libcrypto alone), or http/ includes store/
    (read/eventlog.h is http's only way to the event store) or names
    sqlite3 at all (the read models are reached through read/'s views);
  - sqlite3.h is included outside store/ and read/;
  - anything outside daemon/ or cli/ includes them (no upward arrows);
  - a folder includes one its row of ALLOWED does not name (the arrows
    README.md draws), or the folders' include graph has a cycle;
  - the PKCS#11 module is loaded, or a PIN logged in with, outside
    hsm/module.c (the one owner of the module and the PIN);
  - pthread_create is called outside the files listed in
    PTHREAD_CREATE_OWNERS (core/bg.c starts the long-lived threads of
    modules; the list is the rest, and must only shrink);
  - a .c file does not open with a comment saying what it owns (STYLE.md).

Run: python3 tests/layout/check_layout.py [SRC]   (default: src/ next to tests/)
     python3 tests/layout/check_layout.py --self-test   (each rule must fire
     on a small tree that breaks it; a check that cannot fail is a defect)
Prints the folder graph on success."""

import os
import re
import shutil
import sys
import tempfile

# The arrows between folders (README.md, "What is where"): which folders each
# may include. A new arrow is a decision about the layout: make it here, in
# README.md and in DESIGN.md's terms (never write <-> read, nothing into
# daemon/ or cli/), not in passing.
ALLOWED = {
    "core": set(),
    "device": set(),
    "store": {"core"},
    "hsm": {"core"},
    "write": {"core", "store", "hsm"},
    "read": {"core", "store", "hsm"},
    "http": {"core", "hsm", "read", "write"},
    "daemon": {"core", "hsm", "store", "write", "read", "http"},
    "cli": {"core", "hsm", "store", "read"},
}

# Who may call pthread_create besides core/bg.c, and what for. A module
# moving its thread onto core/bg.h leaves this list; nothing joins it.
PTHREAD_CREATE_OWNERS = {
    "core/bg.c": "every thread: started, named and joined (or left) through bg.h",
}

# Calls only the module owner makes.
MODULE_OWNER = "hsm/module.c"
MODULE_OWNERS = (MODULE_OWNER, "hsm/module_so.c")  # module_so.c: its SO half, signet only
MODULE_CALLS = re.compile(r"\b(dlopen|PKCS11_CTX_load|PKCS11_CTX_new|C_Initialize|C_Login|PKCS11_login)\s*\(")

P11_HEADERS = {"libp11.h", "pkcs11.h", "p11-kit/pkcs11.h", "pkcs11t.h", "pkcs11f.h"}
HSM_PRIVATE = {"hsm/module_p11.h", "hsm/signer_impl.h"}
HTTP_PRIVATE = {"http/internal.h", "http/route_match.h"}
UPWARD = {"daemon", "cli"}
ALONE = {"core", "device"}
SQLITE_FOLDERS = {"store", "read"}

INC_LOCAL = re.compile(r'^\s*#\s*include\s*"([^"]+)"')
INC_SYS = re.compile(r"^\s*#\s*include\s*<([^>]+)>")


def strip_comments(text):
    """C text with comments and string literals blanked (newlines kept)."""
    out, i, n = [], 0, len(text)
    while i < n:
        if text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif text[i] == '"':
            j = i + 1
            while j < n and text[j] != '"' and text[j] != "\n":
                j += 2 if text[j] == "\\" else 1
            out.append('"' + " " * (min(j, n) - i - 1))
            i = j
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def scan(src):
    """(files, includes): files maps 'folder/name' to its text; includes is a
    list of (file, line, kind, target) with kind 'local' (target resolved to
    'folder/name' relative to src) or 'sys'."""
    files, includes = {}, []
    for d, _, names in os.walk(src):
        for name in sorted(names):
            if not name.endswith((".c", ".h")):
                continue
            path = os.path.join(d, name)
            rel = os.path.relpath(path, src).replace(os.sep, "/")
            with open(path, encoding="utf-8", errors="replace") as f:
                text = f.read()
            files[rel] = text
            for no, line in enumerate(text.splitlines(), 1):
                m = INC_LOCAL.match(line)
                if m:
                    target = os.path.normpath(os.path.join(os.path.dirname(rel), m.group(1)))
                    includes.append((rel, no, "local", target.replace(os.sep, "/")))
                    continue
                m = INC_SYS.match(line)
                if m:
                    includes.append((rel, no, "sys", m.group(1)))
    return files, includes


def folder(rel):
    return rel.split("/", 1)[0] if "/" in rel else "."


def find_cycle(graph):
    """One cycle of the folder graph as a list of folders, or None."""
    state, stack = {}, []

    def visit(v):
        state[v] = 1
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if state.get(w) == 1:
                return stack[stack.index(w):] + [w]
            if w not in state:
                c = visit(w)
                if c:
                    return c
        stack.pop()
        state[v] = 2
        return None

    for v in sorted(graph):
        if v not in state:
            c = visit(v)
            if c:
                return c
    return None


def check(src):
    """(problems, graph) for the tree at src."""
    files, includes = scan(src)
    problems, graph = [], {}
    for rel, no, kind, target in includes:
        where = "%s:%d" % (rel, no)
        f = folder(rel)
        if kind == "sys":
            if target in P11_HEADERS and f != "hsm":
                problems.append("%s: <%s> outside hsm/ (only hsm/ touches PKCS#11)" % (where, target))
            if target == "microhttpd.h" and f != "http":
                problems.append("%s: <microhttpd.h> outside http/ (only http/ touches libmicrohttpd)" % where)
            if target == "sqlite3.h" and f not in SQLITE_FOLDERS:
                problems.append("%s: <sqlite3.h> outside store/ and read/" % where)
            continue
        t = folder(target)
        if target.startswith("..") or target not in files:
            problems.append("%s: \"%s\" is not a file of src/" % (where, target))
            continue
        if t != f:
            graph.setdefault(f, set()).add(t)
            if f not in ALLOWED:
                problems.append("%s: %s/ is not a folder of the layout (add it to ALLOWED)" % (where, f))
            elif t not in ALLOWED[f]:
                problems.append("%s: %s/ -> %s/ is not an arrow of the layout (ALLOWED)" % (where, f, t))
        if {f, t} == {"write", "read"}:
            problems.append("%s: %s/ includes %s (the write and read sides never include each other)"
                            % (where, f, target))
        if target in HSM_PRIVATE and f != "hsm":
            problems.append("%s: %s is private to hsm/" % (where, target))
        if target in HTTP_PRIVATE and f != "http":
            problems.append("%s: %s is private to http/" % (where, target))
        if t in UPWARD and t != f:
            problems.append("%s: includes %s (nothing includes %s/ upward)" % (where, target, t))
        if f in ALONE and t != f:
            problems.append("%s: %s/ includes %s (%s/ stands alone)" % (where, f, target, f))
        if f == "http" and t == "store":
            problems.append("%s: http/ includes %s (it sees the event store through read/eventlog.h)"
                            % (where, target))
    cycle = find_cycle(graph)
    if cycle:
        problems.append("folders include each other in a circle: %s" % " -> ".join(cycle))

    for rel, text in sorted(files.items()):
        code = strip_comments(text)
        m = re.search(r"\b(PKCS11_|CK[AFMORSU]?_)\w+", code)
        if m and folder(rel) != "hsm":
            problems.append("%s:%d: %s outside hsm/ (only hsm/ touches PKCS#11)"
                            % (rel, code.count("\n", 0, m.start()) + 1, m.group(0)))
        m = re.search(r"\bMHD_\w+", code)
        if m and folder(rel) != "http":
            problems.append("%s:%d: %s outside http/ (only http/ touches libmicrohttpd)"
                            % (rel, code.count("\n", 0, m.start()) + 1, m.group(0)))
        if folder(rel) == "http" and re.search(r"\bsqlite3", code):
            problems.append("%s: names sqlite3 (http/ reads the read models through read/'s views)" % rel)
        if rel not in MODULE_OWNERS:
            for m in MODULE_CALLS.finditer(code):
                no = code.count("\n", 0, m.start()) + 1
                problems.append("%s:%d: %s outside %s (the one owner of the module and the PIN)"
                                % (rel, no, m.group(1), MODULE_OWNER))
        if rel not in PTHREAD_CREATE_OWNERS:
            for m in re.finditer(r"\bpthread_create\s*\(", code):
                no = code.count("\n", 0, m.start()) + 1
                problems.append("%s:%d: pthread_create outside core/bg.c and PTHREAD_CREATE_OWNERS "
                                "(start it with bg_start)" % (rel, no))
        if rel.endswith(".c") and not text.lstrip().startswith("/*"):
            problems.append("%s: does not open with a comment saying what it owns (STYLE.md)" % rel)
    return problems, graph


def self_test():
    """Every rule fires on a tree made to break it, and a clean tree passes."""
    clean = {
        "core/sg.c": "/* sg.c - errors. */\n#include \"sg.h\"\n",
        "core/sg.h": "/* sg.h */\n",
        "core/bg.c": "/* bg.c */\nvoid f(void) { pthread_create(0, 0, 0, 0); }\n",
        "store/store.h": "/* store.h */\n#include \"../core/sg.h\"\n#include <sqlite3.h>\n",
        "hsm/module.c": "/* module.c */\n#include <libp11.h>\n#include \"module_p11.h\"\n"
                        "void m(void) { dlopen(0, 0); C_Login(0); }\n",
        "hsm/module_p11.h": "/* p11 */\n",
        "write/seq.c": "/* seq.c */\n#include \"../store/store.h\"\n",
        "read/view.c": "/* view.c */\n#include \"../store/store.h\"\n#include <sqlite3.h>\n",
        "read/view.h": "/* view.h */\n",
        "http/internal.h": "/* internal.h */\n#include <microhttpd.h>\n#include \"../read/view.h\"\n",
        "http/server.c": "/* server.c - no sqlite3 here but in this comment */\n#include \"internal.h\"\n"
                         "const char *s = \"sqlite3\";\n",
        "http/http.h": "/* http.h */\n",
        "daemon/main.c": "/* main.c */\n#include \"../http/http.h\"\n",
        "device/dev.c": "/* dev.c */\n#include <openssl/evp.h>\n",
    }
    # name: (file, text, words the refusal must hold)
    broken = {
        "write includes read": ("write/bad.c", "/* x */\n#include \"../read/view.h\"\n", "never include each other"),
        "read includes write": ("read/bad.c", "/* x */\n#include \"../write/seq.c\"\n", "never include each other"),
        "libp11 outside hsm": ("write/bad.c", "/* x */\n#include <libp11.h>\n", "only hsm/ touches PKCS#11"),
        "pkcs11 outside hsm": ("read/bad.c", "/* x */\n#include <p11-kit/pkcs11.h>\n", "only hsm/ touches PKCS#11"),
        "hsm private header": ("write/bad.c", "/* x */\n#include \"../hsm/module_p11.h\"\n", "private to hsm/"),
        "microhttpd outside http": ("read/bad.c", "/* x */\n#include <microhttpd.h>\n", "only http/ touches"),
        "http private header": ("daemon/bad.c", "/* x */\n#include \"../http/internal.h\"\n", "private to http/"),
        "core includes store": ("core/bad.c", "/* x */\n#include \"../store/store.h\"\n", "core/ stands alone"),
        "device includes core": ("device/bad.c", "/* x */\n#include \"../core/sg.h\"\n", "device/ stands alone"),
        "http includes store": ("http/bad.c", "/* x */\n#include \"../store/store.h\"\n", "read/eventlog.h"),
        "http names sqlite3": ("http/bad.c", "/* x */\nstatic sqlite3 *db;\n", "names sqlite3"),
        "sqlite3 outside store and read": ("write/bad.c", "/* x */\n#include <sqlite3.h>\n", "<sqlite3.h> outside"),
        "upward into daemon": ("write/bad.c", "/* x */\n#include \"../daemon/main.c\"\n", "upward"),
        "cycle": ("store/bad.c", "/* x */\n#include \"../write/seq.c\"\n", "circle"),
        "module loaded outside module.c": ("hsm/bad.c", "/* x */\nvoid b(void) { dlopen(\"x\", 0); }\n", "dlopen outside"),
        "login outside module.c": ("hsm/bad.c", "/* x */\nvoid b(void) { f->C_Login(1); }\n", "C_Login outside"),
        "pthread_create outside bg.c": ("read/bad.c", "/* x */\nvoid b(void) { pthread_create(0, 0, 0, 0); }\n", "pthread_create outside"),
        "an arrow not in the table": ("hsm/bad.c", "/* x */\n#include \"../store/store.h\"\n", "not an arrow"),
        "a folder not in the table": ("edge/bad.c", "/* x */\n#include \"../core/sg.h\"\n", "not a folder"),
        "a PKCS#11 name outside hsm": ("write/bad.c", "/* x */\nstatic CK_RV rv;\n", "outside hsm/"),
        "a libp11 call outside hsm": ("cli/bad.c", "/* x */\nvoid b(void) { PKCS11_enumerate_slots(0); }\n", "outside hsm/"),
        "an MHD name outside http": ("read/bad.c", "/* x */\nvoid b(void) { MHD_resume_connection(0); }\n", "outside http/"),
        "no opening comment": ("write/bad.c", "#include \"../store/store.h\"\n", "open with a comment"),
    }

    def make(extra):
        d = tempfile.mkdtemp(prefix="layout-")
        for rel, text in list(clean.items()) + ([extra] if extra else []):
            os.makedirs(os.path.join(d, os.path.dirname(rel)), exist_ok=True)
            with open(os.path.join(d, rel), "w") as f:
                f.write(text)
        return d

    failed = 0
    d = make(None)
    problems, _ = check(d)
    shutil.rmtree(d)
    if problems:
        print("self-test: the clean tree is refused:\n  " + "\n  ".join(problems))
        failed += 1
    for name, (rel, text, words) in broken.items():
        d = make((rel, text))
        problems, _ = check(d)
        shutil.rmtree(d)
        if not any(words in p for p in problems):
            print("self-test: %s is not caught (%s)" % (name, "; ".join(problems) or "no problem found"))
            failed += 1
    print("self-test: %d rules checked, %d failed" % (len(broken), failed))
    return 1 if failed else 0


def main(argv):
    if argv[1:2] == ["--self-test"]:
        return self_test()
    src = argv[1] if len(argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "src")
    problems, graph = check(src)
    for f in sorted(graph):
        print("%-7s -> %s" % (f, ", ".join(sorted(graph[f]))))
    if problems:
        print("\n%d layout problem(s):" % len(problems))
        for p in problems:
            print("  " + p)
        return 1
    print("layout: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
