#!/usr/bin/python3
"""Checks docs/openapi.yaml beyond what swagger-cli validates: every
operation has an operationId, the operationIds are unique, and every
response status an operation lists is a three-digit code. Used by
scripts/lint-openapi.sh; exit status 1 and one line per problem when it
finds any.

Run: python3 scripts/check_openapi_ids.py [docs/openapi.yaml]"""

import sys

import yaml

METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def problems(doc):
    out, seen = [], {}
    for path, item in (doc.get("paths") or {}).items():
        for method in METHODS:
            op = item.get(method)
            if op is None:
                continue
            where = "%s %s" % (method.upper(), path)
            oid = op.get("operationId")
            if not isinstance(oid, str) or not oid:
                out.append("%s: no operationId" % where)
            elif oid in seen:
                out.append("%s: operationId %s already used by %s" % (where, oid, seen[oid]))
            else:
                seen[oid] = where
            for code in (op.get("responses") or {}):
                if not (isinstance(code, str) and len(code) == 3 and code.isdigit()):
                    out.append("%s: response code %r is not quoted three digits" % (where, code))
    return out


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else "docs/openapi.yaml"
    with open(path) as f:
        doc = yaml.safe_load(f)
    bad = problems(doc)
    for p in bad:
        print("openapi: " + p)
    n = sum(1 for item in doc["paths"].values() for m in METHODS if m in item)
    print("openapi: %d operations, %d problems" % (n, len(bad)))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
