"""docs/openapi.yaml against real answers: is an answer one the OpenAPI
document declares for its operation?

Owns: `Spec` (the document, its $refs, which operation a request reaches on
which listener), `Spec.problems`, which judges one answer: its status is
declared for the operation (405 for a method the path does not have, 404 for
a path no operation has); its media type is one the declared response
lists; the declared response's required headers are present;
`Signet-Position` is on every answer of the read listener and on none of the
write listener; and a JSON body has the required properties, with the
declared types, of the declared schema (a small hand-written check: $ref,
allOf/anyOf/oneOf, type, required, properties, items, enum, pattern,
minimum/maximum, maxLength/maxItems, additionalProperties: false); and
`Spec.role_problems`, what `x-roles` says about who got an answer. Nothing
here talks to a server: the contract test (test_contract.py) records its
answers and hands them over.
"""

import copy
import os
import re

import yaml

SPEC_PATH = os.environ.get("SIGNET_OPENAPI") or os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "docs", "openapi.yaml")
WRITE_PORT, READ_PORT = 7700, 7701  # the ports of the document's servers
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


class Spec:
    def __init__(self, doc=None, path=SPEC_PATH):
        if doc is None:
            with open(path) as f:
                doc = yaml.safe_load(f)
        self.doc = doc
        self.paths = []
        for tmpl, item in doc["paths"].items():
            rx = re.compile("^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(tmpl)) + "$")
            self.paths.append((tmpl, rx, item))

    def copy_without(self, op_id, status):
        """A Spec whose operation op_id does not declare status (to show the
        check can fail)."""
        doc = copy.deepcopy(self.doc)
        for tmpl, item in doc["paths"].items():
            for m in METHODS:
                if m in item and item[m].get("operationId", "%s %s" % (m.upper(), tmpl)) == op_id:
                    item[m]["responses"].pop(str(status), None)
        return Spec(doc)

    def role_problems(self, listener, method, path, status, roles):
        """What x-roles says about a principal holding roles getting status:
        a success (below 400) needs one of its roles listed (or `public`);
        admin is listed wherever a 403 is not what it gets."""
        label, op, _ = self.operation(listener, method, path)
        if op is None or not roles:
            return []
        listed = set(op.get("x-roles") or [])
        if "public" in listed:
            return []
        if status < 400 and not listed & set(roles):
            return ["%s answered %d to roles %s, x-roles lists %s" % (label, status, sorted(roles), sorted(listed))]
        if "admin" in roles and (status == 403) == ("admin" in listed):
            return ["%s answered %d to admin, x-roles %s admin" % (label, status,
                                                                 "lists" if "admin" in listed else "omits")]
        return []

    def resolve(self, node):
        seen = 0
        while isinstance(node, dict) and "$ref" in node:
            ref = node["$ref"]
            assert ref.startswith("#/"), ref
            node = self.doc
            for part in ref[2:].split("/"):
                node = node[part]
            seen += 1
            assert seen < 20, ref
        return node

    @staticmethod
    def _listeners(item, op):
        """The listeners ('write', 'read') an operation is served on."""
        if op is not None and op.get("x-listeners"):
            return set(op["x-listeners"])
        servers = item.get("servers")
        if not servers:
            return {"write", "read"}
        out = set()
        for s in servers:
            out.add("write" if s["url"].endswith(":%d" % WRITE_PORT) else "read")
        return out

    def operation(self, listener, method, path):
        """(label, op or None, why): label names the operation (its
        operationId) or what the server must answer instead."""
        path = path.split("?", 1)[0]
        m = method.lower()
        seen = False
        for tmpl, rx, item in self.paths:
            if not rx.match(path):
                continue
            ops = {k: item[k] for k in METHODS if k in item and listener in self._listeners(item, item[k])}
            if not ops:
                continue
            seen = True
            if m in ops:
                return ops[m].get("operationId", "%s %s" % (method, tmpl)), ops[m], None
        if seen:
            return "(method not allowed)", None, 405
        return "(no such endpoint)", None, 404

    def problems(self, listener, method, path, status, headers, body, raw):
        """The ways this answer departs from the document; [] if none."""
        label, op, must = self.operation(listener, method, path)
        out = []
        pos = headers.get("Signet-Position")
        if listener == "read" and pos is None:
            out.append("no Signet-Position on the read listener")
        if listener == "write" and pos is not None:
            out.append("Signet-Position on the write listener")
        if op is None:
            if status != must:
                out.append("%s answered %d, not %d" % (label, status, must))
            if status == 405 and not headers.get("Allow"):
                out.append("405 without Allow")
            return label, out
        declared = op.get("responses", {})
        resp = declared.get(str(status), declared.get("default"))
        if resp is None:
            out.append("status %d is not declared for %s (declared: %s)"
                       % (status, label, ", ".join(sorted(declared))))
            return label, out
        resp = self.resolve(resp)
        for name, h in (resp.get("headers") or {}).items():
            h = self.resolve(h)
            if h.get("required") and headers.get(name) is None:
                out.append("%d lacks required header %s" % (status, name))
        content = resp.get("content") or {}
        ctype = (headers.get("Content-Type") or "").split(";")[0].strip().lower()
        has_body = method != "HEAD" and status not in (204, 304) and len(raw) > 0
        if has_body:
            media = {k.split(";")[0].strip().lower(): v for k, v in content.items()}
            if ctype not in media:
                out.append("%d has Content-Type %r, declared: %s" % (status, ctype, sorted(media) or "no body"))
            elif "json" in ctype:
                schema = media[ctype].get("schema")
                if not isinstance(body, (dict, list)):
                    out.append("%d body is not JSON: %r" % (status, raw[:120]))
                elif schema is not None:
                    out += ["%d body: %s" % (status, p) for p in self.schema_problems(body, schema, "$")]
        elif method != "HEAD" and content and status not in (204, 304):
            out.append("%d has no body; declared %s" % (status, sorted(content)))
        return label, out

    def schema_problems(self, v, schema, where, depth=0):
        s = self.resolve(schema)
        if depth > 30 or not isinstance(s, dict):
            return []
        out = []
        for sub in s.get("allOf", []):
            out += self.schema_problems(v, sub, where, depth + 1)
        for key in ("anyOf", "oneOf"):
            if key in s:
                alts = [self.schema_problems(v, sub, where, depth + 1) for sub in s[key]]
                if all(alts):
                    out.append("%s matches none of %s: %s" % (where, key, min(alts, key=len)[0]))
        t = s.get("type")
        ok_type = {
            "object": lambda x: isinstance(x, dict),
            "array": lambda x: isinstance(x, list),
            "string": lambda x: isinstance(x, str),
            "integer": lambda x: isinstance(x, int) and not isinstance(x, bool),
            "number": lambda x: isinstance(x, (int, float)) and not isinstance(x, bool),
            "boolean": lambda x: isinstance(x, bool),
        }
        if t is not None and not ok_type[t](v):
            return out + ["%s is %s, not %s" % (where, type(v).__name__, t)]
        if "enum" in s and v not in s["enum"]:
            out.append("%s is %r, not one of %s" % (where, v, s["enum"]))
        if isinstance(v, str) and "pattern" in s and not re.search(s["pattern"], v):
            out.append("%s %r does not match %s" % (where, v[:80], s["pattern"]))
        if isinstance(v, (str, list)) and len(v) > s.get("maxLength", s.get("maxItems", len(v))):
            out.append("%s is longer than declared" % where)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            if v < s.get("minimum", v) or v > s.get("maximum", v):
                out.append("%s is %r, outside [%s, %s]" % (where, v, s.get("minimum"), s.get("maximum")))
        if isinstance(v, dict):
            props = s.get("properties") or {}
            for k in s.get("required", []):
                if k not in v:
                    out.append("%s lacks required %s" % (where, k))
            for k, sub in props.items():
                if k in v:
                    out += self.schema_problems(v[k], sub, "%s.%s" % (where, k), depth + 1)
            if s.get("additionalProperties") is False:
                extra = sorted(set(v) - set(props))
                if extra:
                    out.append("%s has undeclared %s" % (where, ", ".join(extra)))
            elif isinstance(s.get("additionalProperties"), dict):
                for k in set(v) - set(props):
                    out += self.schema_problems(v[k], s["additionalProperties"], "%s.%s" % (where, k),
                                                depth + 1)
        if isinstance(v, list) and "items" in s:
            for i, x in enumerate(v[:50]):
                out += self.schema_problems(x, s["items"], "%s[%d]" % (where, i), depth + 1)
        return out
