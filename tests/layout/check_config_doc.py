#!/usr/bin/python3
"""Every key src/core/config.c accepts is in README.md's "Configuration
reference" (issue 14, "docs that match the code").

Reads the `keys[]` list of each load_<section>() in config.c (load_root is
the top level, load_principal the fields of principals[]) and fails, naming
the key, when the reference table has no row for `section.key` (top-level
keys: `key`; a principal's fields: `key` inside the principals[] row).

Run: python3 tests/layout/check_config_doc.py [ROOT]
     python3 tests/layout/check_config_doc.py --self-test"""

import os
import re
import sys
import tempfile

FUNC = re.compile(r"^static sg_err load_(\w+)\(", re.M)
KEYS = re.compile(r"static const char \*const keys\[\] = \{(.*?)\};", re.S)


def accepted_keys(config_c):
    """[(section, key)]: section '' for the top level, 'principals[]' for a
    principal's fields."""
    out = []
    funcs = [(m.start(), m.group(1)) for m in FUNC.finditer(config_c)]
    for m in KEYS.finditer(config_c):
        owner = [name for start, name in funcs if start < m.start()]
        if not owner:
            continue
        section = {"root": "", "principal": "principals[]"}.get(owner[-1], owner[-1])
        for key in re.findall(r'"([a-z0-9_]+)"', m.group(1)):
            out.append((section, key))
    return out


def reference_rows(readme):
    """The rows of the table under "## Configuration reference"."""
    part = readme.split("## Configuration reference", 1)
    if len(part) < 2:
        return []
    body = part[1].split("\n## ", 1)[0]
    return [line for line in body.splitlines() if line.startswith("| `")]


def missing(root):
    with open(os.path.join(root, "src", "core", "config.c"), encoding="utf-8") as f:
        keys = accepted_keys(f.read())
    with open(os.path.join(root, "README.md"), encoding="utf-8") as f:
        rows = reference_rows(f.read())
    firsts = [row.split("|")[1] for row in rows]
    sections = {s for s, _ in keys if s}
    lost = []
    for section, key in keys:
        if section == "" and key in sections | {"principals"}:
            continue  # an object of keys: its own rows name it
        if section == "principals[]":
            ok = any("`principals[]`" in first and "`%s`" % key in row for first, row in zip(firsts, rows))
        else:
            name = "%s.%s" % (section, key) if section else key
            ok = any("`%s`" % name in first for first in firsts)
        if not ok:
            lost.append("%s.%s" % (section, key) if section else key)
    if not keys:
        lost.append("(no keys[] read from config.c: the reader is out of date)")
    return lost


def self_test():
    """A README without a row for one key must be refused, and with it passed."""
    config_c = ('static sg_err load_limits(x)\n{\n    static const char *const keys[] = {"max_json_bytes",\n'
                '        "fresh_key", NULL};\n}\nstatic sg_err load_root(x)\n{\n'
                '    static const char *const keys[] = {"data_dir", "limits", NULL};\n}\n')
    good = ("# x\n## Configuration reference\n| key |\n|---|\n| `data_dir` | a |\n"
            "| `limits.max_json_bytes` | b |\n| `limits.fresh_key` | c |\n## Next\n")
    bad = good.replace("| `limits.fresh_key` | c |\n", "")
    failed = 0
    for readme, want in ((good, []), (bad, ["limits.fresh_key"])):
        with tempfile.TemporaryDirectory() as d:
            os.makedirs(os.path.join(d, "src", "core"))
            with open(os.path.join(d, "src", "core", "config.c"), "w") as f:
                f.write(config_c)
            with open(os.path.join(d, "README.md"), "w") as f:
                f.write(readme)
            got = missing(d)
        if got != want:
            print("self-test: wanted %s missing, got %s" % (want, got))
            failed += 1
    print("self-test: %d failed" % failed)
    return 1 if failed else 0


def main(argv):
    if argv[1:2] == ["--self-test"]:
        return self_test()
    root = argv[1] if len(argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
    lost = missing(root)
    if lost:
        print("README.md's configuration reference has no row for: " + ", ".join(lost))
        return 1
    print("configuration reference: every key config.c accepts is documented")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
