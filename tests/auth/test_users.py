"""CSV and SQLite user sources, problems with file:line, duplicates, reload on change."""

import hashlib
import os
import sqlite3

import pytest

from ftsip.auth.digest import ha1
from ftsip.auth.users import LoadProblem, User, UserStore, UserStoreError, read_csv, wire_text

REALM = "example.com"


def write(path, text, encoding="utf-8"):
    path.write_bytes(text.encode(encoding))
    return path


def test_good_csv_all_columns(tmp_path):
    md5_only = ha1("carol", REALM, "pw-c", "MD5")
    f = write(tmp_path / "users.csv",
              "Username,Password,ha1_md5,ha1_sha256,voicemail,enabled,team\n"
              "alice,secret,,,sip:vm-alice@example.com,1,red\n"
              "bob,hunter2,,,,false,\n"
              f"carol,,{md5_only},,,yes,blue\n")
    store = UserStore.from_files([f], REALM)
    assert store.problems == []
    assert len(store) == 3
    alice = store.get("alice")
    assert alice.ha1 == {"MD5": ha1("alice", REALM, "secret", "MD5"),
                         "SHA-256": ha1("alice", REALM, "secret", "SHA-256")}
    assert alice.voicemail == "sip:vm-alice@example.com"
    assert alice.enabled and alice.extra == {"team": "red"}
    assert "secret" not in repr(alice)
    assert store.get("bob").enabled is False
    assert store.get("carol").ha1 == {"MD5": md5_only}
    assert store.get("carol").password is None
    assert store.get("nobody") is None


def test_bad_rows_are_reported_with_line_numbers_and_good_rows_load(tmp_path):
    f = write(tmp_path / "u.csv",
              "# comment before the header\n"  # 1
              "username,password,ha1_md5,enabled,voicemail\n"  # 2
              "\n"  # 3
              "alice,secret\n"  # 4 good (missing trailing columns are empty)
              ",nopw\n"  # 5 empty username
              "bob,\n"  # 6 no password
              "carol,pw,zz\n"  # 7 bad ha1
              "dave,pw,,maybe\n"  # 8 bad enabled
              "erin, pw\n"  # 9 leading space in password
              "frank pa,pw\n"  # 10 space in username
              "gina,pw,,,http://x\n"  # 11 bad voicemail
              "hank,pw,,,,extra\n"  # 12 too many values
              "# a comment\n"  # 13
              "ivan,pw\n")  # 14 good
    users, problems = read_csv(f, REALM)
    assert sorted(users) == ["alice", "ivan"]
    assert [p.line for p in problems] == [5, 6, 7, 8, 9, 10, 11, 12]
    for p in problems:
        assert isinstance(p, LoadProblem)
        assert p.path == str(f) and p.reason and p.fix
        assert str(p).startswith(f"{f}:{p.line}: ")
    assert "no password" in problems[1].reason
    assert "hex" in problems[2].reason


def test_strict_refuses_and_names_file_and_line(tmp_path):
    f = write(tmp_path / "u.csv", "username,password\nalice,secret\nbob,\n")
    store = UserStore(realm=REALM)
    with pytest.raises(UserStoreError) as ei:
        store.load_csv(f, strict=True)
    assert f"{f}:3" in str(ei.value)
    assert [p.line for p in ei.value.problems] == [3]
    assert len(store) == 0  # nothing loaded


def test_duplicates_last_wins_and_reported(tmp_path):
    f = write(tmp_path / "u.csv", "username,password\nalice,first\nbob,b\nalice,second\n")
    users, problems = read_csv(f, REALM)
    assert users["alice"].password == "second"
    assert len(problems) == 1
    assert problems[0].line == 4 and f"{f}:2" in problems[0].reason


@pytest.mark.parametrize("text, needle", [
    ("", "no header"),
    ("# only a comment\n\n", "no header"),
    ("user,password\nalice,x\n", "no username"),
    ("username,pass\nalice,x\n", "no password"),
    ("username,password,username\n", "twice"),
])
def test_unusable_csv_is_an_error_naming_file_and_fix(tmp_path, text, needle):
    f = write(tmp_path / "u.csv", text)
    with pytest.raises(UserStoreError) as ei:
        read_csv(f, REALM)
    msg = str(ei.value)
    assert str(f) in msg and needle in msg and "fix:" in msg


def test_missing_file(tmp_path):
    with pytest.raises(UserStoreError) as ei:
        UserStore.from_files([tmp_path / "nope.csv"], REALM)
    assert "nope.csv" in str(ei.value) and "fix:" in str(ei.value)


def test_unclosed_quote_is_reported_not_swallowed_silently(tmp_path):
    f = write(tmp_path / "u.csv", 'username,password\nalice,"secret\nbob,pw\ncarol,pw\n')
    users, problems = read_csv(f, REALM)
    assert "alice" not in users
    assert problems and problems[0].line == 2 and "2-" in problems[0].reason


def test_ha1_must_match_password(tmp_path):
    wrong_realm = ha1("alice", "other.realm", "secret", "MD5")
    right = ha1("bob", REALM, "pw", "MD5")
    f = write(tmp_path / "u.csv", f"username,password,ha1_md5\nalice,secret,{wrong_realm}\nbob,pw,{right.upper()}\n")
    users, problems = read_csv(f, REALM)
    assert list(users) == ["bob"]
    assert problems[0].line == 2 and "does not match" in problems[0].reason


def test_utf8_password_bom_and_crlf(tmp_path):
    f = tmp_path / "u.csv"
    f.write_bytes(b"\xef\xbb\xbfusername,password\r\nj\xc3\xb6rg,p\xc3\xa4ss\xc3\xa0\r\n")
    users, problems = read_csv(f, REALM)
    assert problems == []
    wire_user = wire_text("jörg")
    assert list(users) == [wire_user]
    assert users[wire_user].ha1["MD5"] == hashlib.md5("jörg:example.com:pässà".encode()).hexdigest()


def test_replace_swaps_whole_mapping():
    store = UserStore({"a": User("a", {"MD5": "0" * 32})}, realm=REALM)
    g = store.generation
    store.replace({"b": User.from_password("b", "pw", REALM)})
    assert store.get("a") is None and store.get("b").ha1["MD5"] == ha1("b", REALM, "pw")
    assert store.generation == g + 1


# --- reload --------------------------------------------------------------------------------------------------


def test_reload_if_changed_picks_up_a_revoked_user(tmp_path):
    f = write(tmp_path / "u.csv", "username,password\nalice,a\nbob,b\n")
    store = UserStore.from_files([f], REALM)
    assert store.get("bob") is not None
    assert store.reload_if_changed() == []
    g = store.generation
    assert store.reload_if_changed() == [] and store.generation == g  # unchanged: no reload
    write(f, "username,password\nalice,a\n")
    assert store.reload_if_changed() == []
    assert store.generation == g + 1
    assert store.get("bob") is None and store.get("alice") is not None
    # disabling also counts (same size trick: mtime/inode change detection)
    write(f, "username,password,enabled\nalice,a,0\n")
    store.reload_if_changed()
    assert store.get("alice").enabled is False


def test_reload_detects_replacement_by_rename(tmp_path):
    f = write(tmp_path / "u.csv", "username,password\nalice,aaaa\n")
    store = UserStore.from_files([f], REALM)
    st = os.stat(f)
    tmp = write(tmp_path / "u.csv.new", "username,password\nalice,bbbb\n")  # same size
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))  # even with the same mtime: the inode differs
    os.replace(tmp, f)
    store.reload_if_changed()
    assert store.get("alice").password == "bbbb"


def test_reload_keeps_old_users_when_the_file_breaks(tmp_path):
    f = write(tmp_path / "u.csv", "username,password\nalice,a\n")
    store = UserStore.from_files([f], REALM)
    write(f, "garbage header without the columns\nalice,a\nbob,b\n")
    problems = store.reload_if_changed()
    assert problems and str(f) in str(problems[0]) and "still serving the 1 users" in problems[-1].reason
    assert store.get("alice") is not None and len(store) == 1
    assert store.reload_if_changed() == []  # reported once until the file changes again
    os.remove(f)
    assert store.reload_if_changed()  # a vanished file is reported too
    assert store.get("alice") is not None


def test_reload_returns_row_problems_and_strict_reload_keeps_old(tmp_path):
    f = write(tmp_path / "u.csv", "username,password\nalice,a\n")
    store = UserStore.from_files([f], REALM)
    write(f, "username,password\nalice,a\nbob,\ncarol,c\n")
    problems = store.reload_if_changed()
    assert [p.line for p in problems] == [3]
    assert store.get("carol") is not None

    strict = UserStore(realm=REALM)
    write(f, "username,password\nalice,a\n")
    strict.load_csv(f, strict=True)
    write(f, "username,password\nalice,a\nbob,\ncarol,c\n")
    problems = strict.reload_if_changed()
    assert problems[0].line == 3 and "still serving" in problems[-1].reason
    assert strict.get("carol") is None


# --- SQLite --------------------------------------------------------------------------------------------------


def make_db(path, rows, schema="CREATE TABLE users(username TEXT PRIMARY KEY, password TEXT, ha1_md5 TEXT, "
                                "ha1_sha256 TEXT, voicemail TEXT, enabled INTEGER)"):
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(schema)
        for r in rows:
            conn.execute(f"INSERT INTO users VALUES ({','.join('?' * len(r))})", r)
    conn.close()
    return path


def test_sqlite_load(tmp_path):
    db = make_db(tmp_path / "users.db", [
        ("alice", "secret", None, None, "sip:vm@example.com", 1),
        ("bob", "pw", None, None, None, 0),
        ("jörg", "pässword", None, None, None, None),
        ("broken", None, None, None, None, 1),
    ])
    store = UserStore(realm=REALM)
    problems = store.load_sqlite(db)
    assert sorted(store.usernames()) == sorted(["alice", "bob", wire_text("jörg")])
    assert store.get("alice").voicemail == "sip:vm@example.com"
    assert store.get("bob").enabled is False
    assert store.get(wire_text("jörg")).ha1["MD5"] == hashlib.md5("jörg:example.com:pässword".encode()).hexdigest()
    assert len(problems) == 1 and "broken" in problems[0].reason and str(db) in str(problems[0])


def test_sqlite_minimal_columns_and_errors(tmp_path):
    db = make_db(tmp_path / "min.sqlite", [("a", "x")], "CREATE TABLE users(username TEXT, password TEXT)")
    store = UserStore.from_files([db], REALM)
    assert store.get("a") is not None

    no_table = make_db(tmp_path / "nt.db", [], "CREATE TABLE people(username TEXT, password TEXT)")
    with pytest.raises(UserStoreError) as ei:
        UserStore.from_files([no_table], REALM)
    assert str(no_table) in str(ei.value) and "CREATE TABLE" in str(ei.value)

    no_col = make_db(tmp_path / "nc.db", [], "CREATE TABLE users(username TEXT, secret TEXT)")
    with pytest.raises(UserStoreError) as ei:
        UserStore.from_files([no_col], REALM)
    assert str(no_col) in str(ei.value) and "ALTER TABLE" in str(ei.value)

    not_db = write(tmp_path / "bogus.db", "username,password\n")
    with pytest.raises(UserStoreError) as ei:
        UserStore.from_files([not_db], REALM)
    assert str(not_db) in str(ei.value)

    with pytest.raises(UserStoreError):
        UserStore(realm=REALM).load_sqlite(tmp_path / "missing.db")
    assert not (tmp_path / "missing.db").exists()  # read-only open never creates a file


def test_from_files_later_file_overrides(tmp_path):
    db = make_db(tmp_path / "base.db", [("alice", "old", None, None, None, 1), ("bob", "b", None, None, None, 1)])
    f = write(tmp_path / "override.csv", "username,password\nalice,new\n")
    store = UserStore.from_files([db, f], REALM)
    assert store.get("alice").password == "new"
    assert store.get("bob") is not None
    assert len(store.problems) == 1 and "duplicate" in store.problems[0].reason and store.problems[0].line == 2


def test_sqlite_reload_after_revocation(tmp_path):
    from ftsip.auth.users import add_user, remove_user, set_enabled

    db = tmp_path / "u.db"
    add_user(db, "alice", "a")
    add_user(db, "bob", "b")
    store = UserStore.from_files([db], REALM)
    assert store.get("bob") is not None
    remove_user(db, "bob")
    set_enabled(db, "alice", False)
    store.reload_if_changed()
    assert store.get("bob") is None
    assert store.get("alice").enabled is False


def test_sqlite_reload_sees_changes_still_in_the_wal(tmp_path):
    db = make_db(tmp_path / "wal.db", [("alice", "a", None, None, None, 1), ("bob", "b", None, None, None, 1)])
    admin = sqlite3.connect(db)  # a long-lived writer: in WAL mode its commits stay in wal.db-wal
    admin.execute("PRAGMA journal_mode=WAL")
    try:
        store = UserStore.from_files([db], REALM)
        assert store.get("bob") is not None
        main_before = os.stat(db).st_mtime_ns, os.stat(db).st_size
        with admin:
            admin.execute("DELETE FROM users WHERE username = 'bob'")
        assert (os.stat(db).st_mtime_ns, os.stat(db).st_size) == main_before  # the main file did not change
        assert store.reload_if_changed() == []
        assert store.get("bob") is None
    finally:
        admin.close()
