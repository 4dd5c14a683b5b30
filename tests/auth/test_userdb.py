"""SQLite admin functions (CLI) and the query-per-lookup store."""

import hashlib
import threading

import pytest

from ftsip.auth.digest import ha1
from ftsip.auth.users import (
    SqliteUserLookup,
    UserStoreError,
    add_user,
    import_csv,
    list_users,
    remove_user,
    set_enabled,
    wire_text,
)

REALM = "example.com"


def test_add_list_remove(tmp_path):
    db = tmp_path / "users.db"
    add_user(db, "alice", "secret", voicemail="sip:vm@example.com")
    add_user(db, "bob", ha1_md5=ha1("bob", REALM, "pw"))
    with pytest.raises(UserStoreError, match="already exists"):
        add_user(db, "alice", "other")
    add_user(db, "alice", "other", voicemail="sip:vm@example.com", replace=True)  # replaces the whole row
    with pytest.raises(UserStoreError, match="no password"):
        add_user(db, "carol")
    with pytest.raises(UserStoreError, match="hex"):
        add_user(db, "carol", ha1_md5="xyz")
    listing = list_users(db)
    assert [u["username"] for u in listing] == ["alice", "bob"]
    assert listing[0] == {"username": "alice", "has_password": True, "ha1": [], "voicemail": "sip:vm@example.com",
                          "enabled": True}
    assert listing[1]["ha1"] == ["MD5"] and listing[1]["has_password"] is False
    assert "secret" not in repr(listing) and "other" not in repr(listing)
    assert set_enabled(db, "bob", False) and not set_enabled(db, "zed", False)
    assert list_users(db)[1]["enabled"] is False
    assert remove_user(db, "bob") and not remove_user(db, "bob")
    assert [u["username"] for u in list_users(db)] == ["alice"]


def test_import_csv(tmp_path):
    db = tmp_path / "users.db"
    add_user(db, "alice", "old")
    csv = tmp_path / "in.csv"
    csv.write_bytes("username,password,enabled\nalice,new,1\nbob,,1\njörg,pw,0\ncarol,c\ncarol,c2\n".encode())
    count, problems = import_csv(db, csv)
    assert count == 3  # alice (replaced), jörg, carol
    assert sorted(p.line for p in problems) == [3, 6]  # bob without password, carol duplicate
    names = {u["username"]: u for u in list_users(db)}
    assert set(names) == {"alice", "jörg", "carol"} and names["jörg"]["enabled"] is False
    lookup = SqliteUserLookup(db, REALM)
    assert lookup.get("alice").password == "new"
    assert lookup.get("carol").password == "c2"
    count, problems = import_csv(db, csv, replace=False)
    assert count == 0 and any("already in" in p.reason for p in problems)


def test_sqlite_lookup_queries_every_time(tmp_path):
    db = tmp_path / "users.db"
    add_user(db, "alice", "secret")
    add_user(db, "jörg", "pässword")
    lookup = SqliteUserLookup(db, REALM)
    assert len(lookup) == 2
    alice = lookup.get("alice")
    assert alice.ha1 == {"MD5": ha1("alice", REALM, "secret"), "SHA-256": ha1("alice", REALM, "secret", "SHA-256")}
    assert lookup.get(wire_text("jörg")).ha1["MD5"] == hashlib.md5("jörg:example.com:pässword".encode()).hexdigest()
    assert lookup.get("nobody") is None
    assert lookup.get("\xff\xfe") is None  # not UTF-8: cannot be in the database
    remove_user(db, "alice")
    assert lookup.get("alice") is None  # no reload needed
    assert lookup.reload_if_changed() == []

    results = []

    def worker():
        results.append(lookup.get(wire_text("jörg")) is not None)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [True] * 4
    assert len(lookup._conns) >= 5  # one connection per thread (main + 4)
    lookup.close()


def test_sqlite_lookup_bad_schema(tmp_path):
    with pytest.raises(UserStoreError, match="no such SQLite"):
        SqliteUserLookup(tmp_path / "nope.db", REALM)
