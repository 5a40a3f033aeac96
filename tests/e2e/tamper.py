"""Tampering for signet's end-to-end tests: what an attacker does.

Owns the negative cases of the verifiers: changed copies of a list of
events (`tamper_data_byte`, `swap_sigs`, `remove_event`, `reorder`,
`set_key_id`; every one returns a new list and leaves its argument alone),
and edits of a stopped deployment's SQLite event store as an attacker with
the disk, or an operator restoring a backup, would make them (`sql`,
`tamper_body`, `stored_hashes`, `copy_store`, `restore_store`).

Nothing here talks HTTP or starts a process; the store is found at
<deployment dir>/var/events.db (the store URI every Deployment writes)."""

import copy
import json
import os
import shutil
import sqlite3


def deep_copy(x):
    """A copy to tamper with."""
    return copy.deepcopy(x)


# --------------------------------------------------------------------------
# Copies of a list of events
# --------------------------------------------------------------------------

def _idx(events, pos):
    for i, ev in enumerate(events):
        if ev.get("position") == pos:
            return i
    raise KeyError(pos)


def tamper_data_byte(events, pos):
    """Change one byte of a string in the data of the event at pos."""
    evs = copy.deepcopy(events)
    data = evs[_idx(evs, pos)]["data"]
    for k in sorted(data):
        if isinstance(data[k], str) and data[k]:
            s = data[k]
            data[k] = s[:-1] + ("x" if s[-1] != "x" else "y")
            return evs
    raise ValueError("no string in data of event %d" % pos)


def swap_sigs(events, p1, p2):
    """Swap the signatures of the events at p1 and p2."""
    evs = copy.deepcopy(events)
    i, j = _idx(evs, p1), _idx(evs, p2)
    evs[i]["sig"], evs[j]["sig"] = evs[j]["sig"], evs[i]["sig"]
    return evs


def remove_event(events, pos):
    """Drop the event at pos."""
    evs = copy.deepcopy(events)
    del evs[_idx(evs, pos)]
    return evs


def reorder(events, pos):
    """Swap the events at pos and pos+1 in the list."""
    evs = copy.deepcopy(events)
    i = _idx(evs, pos)
    evs[i], evs[i + 1] = evs[i + 1], evs[i]
    return evs


def set_key_id(events, pos, key_id):
    """Name another key in the event at pos."""
    evs = copy.deepcopy(events)
    evs[_idx(evs, pos)]["key_id"] = key_id
    return evs


# --------------------------------------------------------------------------
# The event store of a stopped deployment
# --------------------------------------------------------------------------

def events_db(dep):
    """Path of a deployment's events.db."""
    return os.path.join(dep.dir, "var", "events.db")


def sql(dep, *statements):
    """Run statements on the stopped service's events.db, with the
    append-only triggers dropped first (as an attacker would). A statement
    is SQL text or (SQL, parameters); returns the rows of the last one."""
    db = sqlite3.connect(events_db(dep))
    try:
        db.execute("DROP TRIGGER IF EXISTS events_no_update")
        db.execute("DROP TRIGGER IF EXISTS events_no_delete")
        rows = None
        for st in statements:
            if isinstance(st, tuple):
                rows = db.execute(*st).fetchall()
            else:
                rows = db.execute(st).fetchall()
        db.commit()
        return rows
    finally:
        db.close()


def stored_hashes(dep):
    """{position: hash column} of every row of the events table."""
    db = sqlite3.connect(events_db(dep))
    try:
        return dict(db.execute("SELECT position, hash FROM events").fetchall())
    finally:
        db.close()


def tamper_body(dep, position):
    """Change the JSON body of the event at `position` in a stopped
    deployment's SQLite store: the first character of the hardware of the
    device it registers becomes X. Discovers the layout at run time: drops
    the triggers on the events table, finds the column holding event JSON
    and the column holding the position. Returns (table, column) changed."""
    db_path = events_db(dep)
    db = sqlite3.connect(db_path)
    try:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        table = "events" if "events" in tables else None
        if table is None:
            raise AssertionError("no events table in %s: %r" % (db_path, tables))
        for (trig,) in db.execute("SELECT name FROM sqlite_master WHERE type='trigger' AND tbl_name=?",
                                  (table,)).fetchall():
            db.execute('DROP TRIGGER "%s"' % trig.replace('"', '""'))
        cols = [r[1] for r in db.execute('PRAGMA table_info("%s")' % table)]
        rows = db.execute('SELECT rowid, * FROM "%s"' % table).fetchall()
        json_col = pos_col = None
        for row in rows:
            for c, v in zip(cols, row[1:]):
                if isinstance(v, bytes):
                    try:
                        v = v.decode()
                    except UnicodeDecodeError:
                        continue
                if isinstance(v, str) and v.startswith("{") and '"position":' in v:
                    json_col = c
                    doc = json.loads(v)
                    for c2, v2 in zip(cols, row[1:]):
                        if c2 != c and v2 == doc["position"]:
                            pos_col = c2
        if json_col is None:
            raise AssertionError("no event JSON column in %s(%s)" % (table, cols))
        where = '"%s" = ?' % pos_col if pos_col else "rowid = ?"
        (body,) = db.execute('SELECT "%s" FROM "%s" WHERE %s' % (json_col, table, where), (position,)).fetchone()
        is_bytes = isinstance(body, bytes)
        text = body.decode() if is_bytes else body
        doc = json.loads(text)
        old = '"hardware":"%s"' % doc["data"]["hardware"]
        if old not in text:
            raise AssertionError("unexpected stored form %r" % text)
        new_text = text.replace(old, '"hardware":"%s"' % ("X" + doc["data"]["hardware"][1:]))
        db.execute('UPDATE "%s" SET "%s" = ? WHERE %s' % (table, json_col, where),
                   (new_text.encode() if is_bytes else new_text, position))
        db.commit()
        return table, json_col
    finally:
        db.close()


def copy_store(dep, to):
    """A consistent copy of events.db (a backup), made with SQLite's backup API."""
    src = sqlite3.connect(events_db(dep))
    dst = sqlite3.connect(to)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()


def restore_store(dep, backup):
    """Put a copy back in place of events.db (and drop its -wal and -shm)."""
    for suffix in ("", "-wal", "-shm"):
        try:
            os.unlink(events_db(dep) + suffix)
        except FileNotFoundError:
            pass
    shutil.copyfile(backup, events_db(dep))
