"""SQLite user database: the admin functions behind the CLI, and a per-request lookup for benchmarks.

The table (created when missing by the admin functions)::

    users(username TEXT PRIMARY KEY, password TEXT, ha1_md5 TEXT, ha1_sha256 TEXT, voicemail TEXT,
          enabled INTEGER NOT NULL DEFAULT 1)

The admin functions take and store ordinary Unicode text (what a person types); the loaders convert it to the wire
convention (:func:`ftsip.auth.users.wire_text`). They raise :class:`UserStoreError` with the file and the fix.

:class:`SqliteUserLookup` is the "SQL database for auth" baseline: it queries SQLite on EVERY ``get()`` (one
read-only connection per thread) and computes the HA1s from the password each time, as a database-backed proxy
with plain-text passwords does. Production uses the in-memory :class:`UserStore`.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading

from .users import (
    LoadProblem,
    SQLITE_SCHEMA,
    User,
    UserStoreError,
    _build_user,
    _connect_ro,
    _fatal,
    _read_csv_rows,
    _sqlite_row,
    _sqlite_select,
    _validate,
    unwire_text,
    wire_text,
)

__all__ = ["SqliteUserLookup", "add_user", "ensure_schema", "import_csv", "list_users", "remove_user",
           "set_enabled"]

_COLUMNS = ("username", "password", "ha1_md5", "ha1_sha256", "voicemail", "enabled")


@contextlib.contextmanager
def _open_rw(db_path):
    spath = str(db_path)
    try:
        conn = sqlite3.connect(spath)
    except sqlite3.Error as e:
        raise _fatal(spath, 0, f"cannot open the SQLite user database: {e}",
                     "check the path and its directory's permissions") from None
    try:
        with conn:
            try:
                conn.execute(SQLITE_SCHEMA)
                _sqlite_select(conn, spath)  # checks the mandatory columns of an existing table
            except sqlite3.DatabaseError as e:
                raise _fatal(spath, 0, f"not a usable SQLite database: {e}",
                             "point at an SQLite file (or a new path to create one)") from None
            yield conn
    except sqlite3.OperationalError as e:
        raise _fatal(spath, 0, f"SQLite error: {e}", f"the table must match: {SQLITE_SCHEMA}") from None
    finally:
        conn.close()


def ensure_schema(db_path) -> None:
    """Create the database file and the users table if missing."""
    with _open_rw(db_path):
        pass


def _check(db_path, username, password, ha1_md5, ha1_sha256, voicemail, enabled):
    values = {
        "username": wire_text(username),
        "password": wire_text(password or ""),
        "ha1_md5": ha1_md5 or "",
        "ha1_sha256": ha1_sha256 or "",
        "voicemail": wire_text(voicemail or ""),
        "enabled": "1" if enabled else "0",
    }
    res = _validate(str(db_path), 0, values, {})
    if isinstance(res, LoadProblem):
        raise UserStoreError(str(res), [res])
    return res


def add_user(db_path, username: str, password: str | None = None, *, ha1_md5: str | None = None,
             ha1_sha256: str | None = None, voicemail: str | None = None, enabled: bool = True,
             replace: bool = False) -> None:
    """Add a user (or update it when ``replace``). Needs a password or a precomputed HA1."""
    row = _check(db_path, username, password, ha1_md5, ha1_sha256, voicemail, enabled)
    verb = "INSERT OR REPLACE" if replace else "INSERT"
    with _open_rw(db_path) as conn:
        try:
            conn.execute(f"{verb} INTO users({', '.join(_COLUMNS)}) VALUES (?, ?, ?, ?, ?, ?)",
                         (username, password or None, row.ha1.get("MD5"), row.ha1.get("SHA-256"), voicemail or None,
                          1 if enabled else 0))
        except sqlite3.IntegrityError:
            raise _fatal(str(db_path), 0, f"user {username!r} already exists",
                         "remove it first, or replace it (--replace)") from None


def remove_user(db_path, username: str) -> bool:
    """Delete a user; False if there was none."""
    with _open_rw(db_path) as conn:
        return conn.execute("DELETE FROM users WHERE username = ?", (username,)).rowcount > 0


def set_enabled(db_path, username: str, enabled: bool) -> bool:
    """Enable or disable (revoke without deleting) a user; False if there was none."""
    with _open_rw(db_path) as conn:
        cur = conn.execute("UPDATE users SET enabled = ? WHERE username = ?", (1 if enabled else 0, username))
        return cur.rowcount > 0


def list_users(db_path) -> list[dict]:
    """Every user, sorted by name, without secrets: username, has_password, ha1 (algorithms stored),
    voicemail, enabled."""
    out = []
    with _open_rw(db_path) as conn:
        for rec in conn.execute(_sqlite_select(conn, str(db_path)) + " ORDER BY username"):
            username, password, h_md5, h_sha, voicemail, enabled = rec
            out.append({
                "username": username,
                "has_password": bool(password),
                "ha1": [alg for alg, h in (("MD5", h_md5), ("SHA-256", h_sha)) if h],
                "voicemail": voicemail,
                "enabled": enabled is None or str(enabled).strip().lower() not in ("0", "false", "no", "off"),
            })
    return out


def import_csv(db_path, csv_path, *, replace: bool = True) -> tuple[int, list[LoadProblem]]:
    """Copy the good rows of a CSV user file into the database (one transaction); return (count, problems).

    ``replace``: an existing user with the same name is overwritten (else it is kept and reported).
    Duplicates inside the CSV: the last row wins, as when loading. Raises UserStoreError if the CSV is unusable.
    """
    rows, problems = _read_csv_rows(csv_path)
    spath = str(csv_path)
    by_name: dict[str, tuple] = {}
    for row in rows:
        try:
            text = [unwire_text(v) if v else None for v in (row.username, row.password, row.voicemail)]
        except UnicodeDecodeError:
            problems.append(LoadProblem(spath, row.line, f"user {row.username!r} is not valid UTF-8",
                                        "save the CSV file as UTF-8"))
            continue
        if row.username in by_name:
            problems.append(LoadProblem(spath, row.line, f"duplicate username {row.username!r} (also on line "
                                        f"{by_name[row.username][0]}); this later row replaces it",
                                        "remove one of the two rows"))
        by_name[row.username] = (row.line, (text[0], text[1], row.ha1.get("MD5"), row.ha1.get("SHA-256"), text[2],
                                            1 if row.enabled else 0))
    verb = "INSERT OR REPLACE" if replace else "INSERT OR IGNORE"
    count = 0
    with _open_rw(db_path) as conn:
        for line, values in by_name.values():
            cur = conn.execute(f"{verb} INTO users({', '.join(_COLUMNS)}) VALUES (?, ?, ?, ?, ?, ?)", values)
            if cur.rowcount > 0:
                count += 1
            else:
                problems.append(LoadProblem(spath, line, f"user {values[0]!r} already in {db_path}; kept the "
                                            "database's entry", "import with replace=True to overwrite"))
    return count, problems


class SqliteUserLookup:
    """Same ``get()`` API as UserStore, but a SQL query per call (one read-only connection per thread).

    A row that fails validation reads as an unknown user (None); ``problems`` counts such reads.
    """

    def __init__(self, path, realm: str):
        self.path = str(path)
        self.realm = realm
        conn = _connect_ro(self.path)
        try:
            select = _sqlite_select(conn, self.path)  # raises UserStoreError naming the file and the fix
        finally:
            conn.close()
        self._sql = select + " WHERE username = ?"
        self._count_sql = "SELECT COUNT(*) FROM users"
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._lock = threading.Lock()  # only taken when a thread opens its connection
        self.bad_rows = 0

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connect_ro(self.path)
            self._local.conn = conn
            with self._lock:
                self._conns.append(conn)
        return conn

    def get(self, username: str) -> User | None:
        try:
            name = unwire_text(username)
        except (UnicodeDecodeError, UnicodeEncodeError):
            return None
        rec = self._conn().execute(self._sql, (name,)).fetchone()
        if rec is None:
            return None
        row = _sqlite_row(self.path, rec)
        user = row if isinstance(row, LoadProblem) else _build_user(row, self.path, self.realm)
        if isinstance(user, LoadProblem):
            self.bad_rows += 1
            return None
        return user

    def __len__(self) -> int:
        return self._conn().execute(self._count_sql).fetchone()[0]

    def __contains__(self, username) -> bool:
        return self.get(username) is not None

    def reload_if_changed(self, force: bool = False) -> list[LoadProblem]:
        """Nothing to reload: every get() reads the database."""
        return []

    def close(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, []
        for c in conns:
            with contextlib.suppress(sqlite3.Error):
                c.close()
        self._local = threading.local()
