"""The in-memory user store: CSV and SQLite sources, atomic swap on reload.

Readers never lock: :meth:`UserStore.get` is one ``dict.get`` on the current mapping, and a reload builds a new dict
and rebinds the attribute (one atomic store), so a reader sees the old users or the new ones, never a mix.

Text convention (docs/design.md): usernames and passwords are kept as the *bytes* a phone sends, decoded latin-1.
CSV files are therefore read as bytes and decoded latin-1 (a UTF-8 password in the file hashes as its UTF-8 bytes,
as a UTF-8 phone sends it); SQLite TEXT comes back as Unicode and is converted with :func:`wire_text`.

CSV format
    A header line is required (blank lines and lines starting with ``#`` are skipped anywhere). Columns, in any
    order, names case-insensitive: ``username`` and ``password`` mandatory; optional ``ha1_md5``, ``ha1_sha256``
    (precomputed HA1 hex for the store's realm, instead of or besides a password), ``voicemail`` (a sip:/sips:/tel:
    URI the proxy may forward to), ``enabled`` (1/0, true/false, yes/no, on/off; empty = enabled). Any other
    column is kept in ``User.extra``. Values are taken verbatim except that whitespace around ha1/voicemail/enabled
    is trimmed; a username with whitespace, or a password starting or ending with whitespace, is a bad row (most
    likely a space typed after a comma).

Bad rows and duplicates (the decisions)
    * A bad row is skipped and reported as a :class:`LoadProblem` (file, line, reason, fix); every good row is
      loaded. The caller logs each problem. ``strict=True`` refuses the whole load instead and raises
      :class:`UserStoreError` listing every problem (on a reload, strict keeps the users loaded before).
    * A file that cannot be used at all (missing, unreadable, no header, no ``username``/``password`` column,
      not SQLite, no ``users`` table) always raises :class:`UserStoreError` naming the file and the fix; a reload
      then keeps the users loaded before and returns the problem.
    * Duplicate usernames: the LAST one wins (a later line, or a later file in ``from_files``, overrides an
      earlier one, like a later assignment), and each override is reported as a problem naming both places.
    * A row whose password and precomputed HA1 disagree (usually an HA1 computed for another realm) is a bad row.

Disabled users (``enabled`` = 0) are kept in the store with ``User.enabled`` False; the Authenticator refuses
them exactly as it refuses an unknown user.
"""

from __future__ import annotations

import csv
import io
import os
import sqlite3
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .digest import BASE_ALGORITHMS, HEX_LENGTH, ha1 as compute_ha1

__all__ = [
    "LoadProblem",
    "User",
    "UserStore",
    "UserStoreError",
    "read_csv",
    "read_sqlite",
    "wire_text",
    "unwire_text",
]
# Also importable from here (lazily, see __getattr__ at the end): SqliteUserLookup, add_user, remove_user,
# set_enabled, list_users, import_csv, ensure_schema -- they live in ftsip.auth.userdb.

OPTIONAL_COLUMNS = ("ha1_md5", "ha1_sha256", "voicemail", "enabled")
HA1_COLUMNS = {"ha1_md5": "MD5", "ha1_sha256": "SHA-256"}
_TRUE = {"1", "true", "yes", "on", ""}
_FALSE = {"0", "false", "no", "off"}
_BOM = "\xef\xbb\xbf"  # UTF-8 BOM seen through latin-1
# ASCII whitespace only: in latin-1-decoded UTF-8, bytes 0x85 and 0xA0 are continuation bytes, not spaces
_WS = " \t\r\n\v\f"


def wire_text(s: str) -> str:
    """Unicode text -> the wire convention (its UTF-8 bytes decoded latin-1)."""
    return s.encode("utf-8").decode("latin-1")


def unwire_text(s: str) -> str:
    """The wire convention -> Unicode text (raises UnicodeDecodeError when the bytes are not UTF-8)."""
    return s.encode("latin-1").decode("utf-8")


@dataclass(frozen=True, slots=True)
class LoadProblem:
    """One thing wrong in a user source. ``line`` is 1-based, 0 when it does not apply (a whole file, SQLite)."""

    path: str
    line: int
    reason: str
    fix: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else self.path
        return f"{where}: {self.reason}; fix: {self.fix}"


class UserStoreError(Exception):
    """A user source was refused. ``problems`` holds every reason (file:line and fix)."""

    def __init__(self, message: str, problems: Iterable[LoadProblem] = ()):
        super().__init__(message)
        self.problems = list(problems)

    @classmethod
    def from_problems(cls, problems: list[LoadProblem], what: str = "user load refused") -> UserStoreError:
        shown = "\n  ".join(str(p) for p in problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        return cls(f"{what}: {len(problems)} problem(s):\n  {shown}{more}", problems)


def _fatal(path, line, reason, fix) -> UserStoreError:
    p = LoadProblem(str(path), line, reason, fix)
    return UserStoreError(str(p), [p])


@dataclass(frozen=True, slots=True)
class User:
    """One user. ``ha1`` maps a base algorithm ("MD5", "SHA-256") to the HA1 hex for the store's realm.

    Immutable by contract: the dicts are never changed after construction (share them freely across threads).
    ``password`` is kept only when the source had one (and is left out of ``repr``).
    """

    username: str
    ha1: Mapping[str, str] = field(default_factory=dict, hash=False)
    password: str | None = field(default=None, repr=False)
    extra: Mapping[str, str] = field(default_factory=dict, hash=False)
    voicemail: str | None = None
    enabled: bool = True

    @classmethod
    def from_password(cls, username: str, password: str, realm: str, algorithms=BASE_ALGORITHMS, **kw) -> User:
        """A user whose HA1s are computed from ``password`` for ``realm``."""
        return cls(username, {a: compute_ha1(username, realm, password, a) for a in algorithms}, password, **kw)


# ---------------------------------------------------------------------------------------------------------------
# rows: what a source says, before the realm is applied


@dataclass(slots=True)
class _Row:
    username: str
    password: str
    ha1: dict  # base algorithm -> hex (lower-case), validated
    voicemail: str | None
    enabled: bool
    extra: dict
    line: int  # 0 for SQLite
    where: str  # "line 7" or "row 'alice'"


def _validate(path: str, line: int, values: Mapping[str, str], extra: dict) -> _Row | LoadProblem:
    """Check one row's values (all str, "" when absent). Returns a _Row or the problem."""
    username = values.get("username", "")
    password = values.get("password", "")
    where = f"line {line}" if line else f"row {username!r}"

    def bad(reason, fix):
        return LoadProblem(path, line, reason, fix)

    if not username:
        return bad("empty username", "fill in the username column or delete the row")
    if any(c in _WS or ord(c) < 0x20 or c in '"\\' or ord(c) == 0x7F for c in username):
        return bad(f"username {username!r} contains whitespace, a control character, a quote or a backslash",
                   "remove them (no spaces after the commas)")
    if password and (password[0] in _WS or password[-1] in _WS):
        return bad(f"password of {username!r} starts or ends with whitespace",
                   "remove the space after the comma (a password with outer spaces must be given as ha1_* instead)")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in password):
        return bad(f"password of {username!r} contains a control character (an unclosed quote?)",
                   "close the quote or remove the control character")
    ha1s = {}
    for col, alg in HA1_COLUMNS.items():
        v = values.get(col, "").strip(_WS).lower()
        if not v:
            continue
        if len(v) != HEX_LENGTH[alg] or any(c not in "0123456789abcdef" for c in v):
            return bad(f"{col} of {username!r} is not {HEX_LENGTH[alg]} hex digits",
                       f"write the {alg} HA1 as lower-case hex, or leave {col} empty and give a password")
        ha1s[alg] = v
    if not password and not ha1s:
        return bad(f"user {username!r} has no password and no ha1_md5/ha1_sha256",
                   "fill in the password column (or a precomputed HA1)")
    voicemail = values.get("voicemail", "").strip(_WS) or None
    if voicemail is not None and voicemail.split(":", 1)[0].lower() not in ("sip", "sips", "tel"):
        return bad(f"voicemail of {username!r} is not a sip:, sips: or tel: URI: {voicemail!r}",
                   "write a URI such as sip:voicemail@example.com, or leave it empty")
    en = values.get("enabled", "").strip(_WS).lower()
    if en in _TRUE:
        enabled = True
    elif en in _FALSE:
        enabled = False
    else:
        return bad(f"enabled of {username!r} is {en!r}", "write 1 or 0 (true/false, yes/no also work)")
    return _Row(username, password, ha1s, voicemail, enabled, extra, line, where)


def _build_user(row: _Row, path: str, realm: str) -> User | LoadProblem:
    ha1s = dict(row.ha1)
    if row.password:
        for alg in BASE_ALGORITHMS:
            h = compute_ha1(row.username, realm, row.password, alg)
            if alg in ha1s and ha1s[alg] != h:
                col = "ha1_md5" if alg == "MD5" else "ha1_sha256"
                return LoadProblem(path, row.line,
                                   f"{col} of {row.username!r} does not match its password for realm {realm!r}"
                                   + ("" if row.line else f" ({row.where})"),
                                   f"leave {col} empty, or the password, or recompute the HA1 for realm {realm!r}")
            ha1s[alg] = h
    return User(row.username, ha1s, row.password or None, row.extra, row.voicemail, row.enabled)


# ---------------------------------------------------------------------------------------------------------------
# CSV


def _read_csv_rows(path) -> tuple[list[_Row], list[LoadProblem]]:
    spath = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise _fatal(spath, 0, f"cannot read the user file: {e.strerror or e}",
                     "check the path in the config and the file's permissions") from None
    text = data.decode("latin-1")
    if text.startswith(_BOM):
        text = text[len(_BOM):]
    reader = csv.reader(io.StringIO(text, newline=""))
    header = None
    index: dict[str, int] = {}
    rows: list[_Row] = []
    problems: list[LoadProblem] = []
    prev_end = 0
    try:
        for cells in reader:
            start, end = prev_end + 1, reader.line_num
            prev_end = end
            if not cells or all(not c.strip(_WS) for c in cells) or cells[0].lstrip(_WS).startswith("#"):
                continue
            if header is None:
                header = [c.strip(_WS).lower() for c in cells]
                for i, name in enumerate(header):
                    if name and name in index:
                        raise _fatal(spath, start, f"column {name!r} appears twice in the header",
                                     "keep one of them")
                    if name:
                        index[name] = i
                missing = [c for c in ("username", "password") if c not in index]
                if missing:
                    raise _fatal(spath, start,
                                 f"the header {','.join(cells)!r} has no {' and no '.join(missing)} column",
                                 "make the first line a header such as: username,password[,ha1_md5,ha1_sha256,"
                                 "voicemail,enabled]")
                continue
            if end != start:
                problems.append(LoadProblem(spath, start,
                                            f"a quoted value spans lines {start}-{end} (an unclosed quote?)",
                                            "close the quote; the lines it swallowed were not loaded"))
                continue
            if len(cells) > len(header):
                problems.append(LoadProblem(spath, start,
                                            f"{len(cells)} values but the header has {len(header)} columns",
                                            "remove the extra values or quote a value that contains a comma"))
                continue
            values = {name: cells[i] if i < len(cells) else "" for name, i in index.items()}
            unnamed = [i + 1 for i, name in enumerate(header) if not name and i < len(cells) and cells[i].strip(_WS)]
            if unnamed:
                problems.append(LoadProblem(spath, start, f"a value in column {unnamed[0]}, which has no name in "
                                            "the header", "name the column in the header or remove the value"))
                continue
            extra = {k: v for k, v in values.items()
                     if k not in ("username", "password") and k not in OPTIONAL_COLUMNS and v != ""}
            res = _validate(spath, start, values, extra)
            (problems if isinstance(res, LoadProblem) else rows).append(res)
    except csv.Error as e:
        raise _fatal(spath, reader.line_num, f"unreadable CSV: {e}", "fix the quoting on that line") from None
    if header is None:
        raise _fatal(spath, 0, "the file has no header line",
                     "start the file with a header line: username,password")
    return rows, problems


# ---------------------------------------------------------------------------------------------------------------
# SQLite

SQLITE_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS users(username TEXT PRIMARY KEY, password TEXT, ha1_md5 TEXT, ha1_sha256 TEXT, "
    "voicemail TEXT, enabled INTEGER NOT NULL DEFAULT 1)"
)


def _connect_ro(path) -> sqlite3.Connection:
    spath = str(path)
    if not os.path.isfile(spath):
        raise _fatal(spath, 0, "no such SQLite user database",
                     "check the path, or create it with `ftsip users add` / import_csv")
    uri = Path(spath).absolute().as_uri() + "?mode=ro"
    try:
        return sqlite3.connect(uri, uri=True, check_same_thread=False)
    except sqlite3.Error as e:
        raise _fatal(spath, 0, f"cannot open the SQLite user database: {e}", "check the file's permissions") from None


def _sqlite_select(conn: sqlite3.Connection, spath: str) -> str:
    """The SELECT for the users table (optional columns read as NULL when missing); raises on a bad schema."""
    try:
        cols = {r[1].lower() for r in conn.execute("PRAGMA table_info(users)")}
    except sqlite3.DatabaseError as e:
        raise _fatal(spath, 0, f"not a usable SQLite database: {e}",
                     "point the config at the SQLite user database (or use a .csv file)") from None
    if not cols:
        raise _fatal(spath, 0, "the database has no table 'users'", f"create it: {SQLITE_SCHEMA}")
    missing = [c for c in ("username", "password") if c not in cols]
    if missing:
        raise _fatal(spath, 0, f"table 'users' has no column {' and no '.join(missing)}",
                     f"ALTER TABLE users ADD COLUMN {missing[0]} TEXT (schema: {SQLITE_SCHEMA})")
    parts = ["username", "password"] + [c if c in cols else "NULL" for c in OPTIONAL_COLUMNS]
    return f"SELECT {', '.join(parts)} FROM users"


def _sql_text(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bytes):
        return v.decode("latin-1")
    if isinstance(v, str):
        return wire_text(v)
    return str(v)


def _sqlite_row(spath: str, rec) -> _Row | LoadProblem:
    values = dict(zip(("username", "password", *OPTIONAL_COLUMNS), (_sql_text(v) for v in rec)))
    return _validate(spath, 0, values, {})


def _read_sqlite_rows(path) -> tuple[list[_Row], list[LoadProblem]]:
    spath = str(path)
    conn = _connect_ro(spath)
    try:
        sql = _sqlite_select(conn, spath)
        rows, problems = [], []
        try:
            for rec in conn.execute(sql):
                res = _sqlite_row(spath, rec)
                (problems if isinstance(res, LoadProblem) else rows).append(res)
        except sqlite3.Error as e:
            raise _fatal(spath, 0, f"reading table 'users' failed: {e}", "check the database file") from None
        return rows, problems
    finally:
        conn.close()


# ---------------------------------------------------------------------------------------------------------------
# reading and merging sources

_SQLITE_SUFFIXES = {".db", ".sqlite", ".sqlite3", ".db3"}


def _kind_of(path) -> str:
    p = str(path)
    suffix = os.path.splitext(p)[1].lower()
    if suffix == ".csv":
        return "csv"
    if suffix in _SQLITE_SUFFIXES:
        return "sqlite"
    try:
        with open(p, "rb") as f:
            if f.read(16) == b"SQLite format 3\x00":
                return "sqlite"
    except OSError:
        pass
    return "csv"


def _read_sources(sources, realm: str) -> tuple[dict[str, User], list[LoadProblem]]:
    """Read every (path, kind) in order; later rows override earlier ones (reported). Raises UserStoreError."""
    users: dict[str, User] = {}
    origin: dict[str, str] = {}
    problems: list[LoadProblem] = []
    for path, kind in sources:
        spath = str(path)
        rows, probs = (_read_sqlite_rows if kind == "sqlite" else _read_csv_rows)(spath)
        problems.extend(probs)
        for row in rows:
            user = _build_user(row, spath, realm)
            if isinstance(user, LoadProblem):
                problems.append(user)
                continue
            here = f"{spath}:{row.line}" if row.line else f"{spath} {row.where}"
            if row.username in users:
                problems.append(LoadProblem(spath, row.line,
                                            f"duplicate username {row.username!r} (also at {origin[row.username]}); "
                                            "this later entry replaces the earlier one",
                                            "remove one of the two entries"))
            users[row.username] = user
            origin[row.username] = here
    return users, problems


def read_csv(path, realm: str) -> tuple[dict[str, User], list[LoadProblem]]:
    """Users of one CSV file and the problems found. Raises UserStoreError if the file is unusable."""
    return _read_sources([(path, "csv")], realm)


def read_sqlite(path, realm: str) -> tuple[dict[str, User], list[LoadProblem]]:
    """Users of one SQLite database and the problems found. Raises UserStoreError if it is unusable."""
    return _read_sources([(path, "sqlite")], realm)


def _stat(path):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


# ---------------------------------------------------------------------------------------------------------------
# the store


class UserStore:
    """username -> :class:`User`, read without locks, swapped whole on (re)load.

    ``realm`` is the realm the HA1s are computed for (it must be the realm the Authenticator challenges with).
    ``problems`` holds the problems of the last successful load; ``generation`` counts swaps.
    """

    __slots__ = ("_users", "realm", "strict", "problems", "generation", "_sources", "_signature", "_reload_lock",
                 "__weakref__")

    def __init__(self, users: Mapping[str, User] | None = None, realm: str | None = None):
        self._users: dict[str, User] = dict(users or {})
        self.realm = realm
        self.strict = False
        self.problems: list[LoadProblem] = []
        self.generation = 0
        self._sources: list[tuple[str, str]] = []
        self._signature = None
        self._reload_lock = threading.Lock()

    # --- readers (hot path) ---
    def get(self, username: str) -> User | None:
        try:            # not .get(): see ftsip.ops.stats.WorkerStats.inc (3.13t's slow dict.get on shared dicts)
            return self._users[username]
        except (KeyError, TypeError):
            return None

    def __len__(self) -> int:
        return len(self._users)

    def __contains__(self, username) -> bool:
        return username in self._users

    def usernames(self) -> list[str]:
        return list(self._users)

    # --- writers ---
    def replace(self, mapping: Mapping[str, User]) -> None:
        """Swap in a whole new set of users (atomic for readers)."""
        new = dict(mapping)
        self._users = new
        self.generation += 1

    @property
    def sources(self) -> list[str]:
        return [p for p, _ in self._sources]

    def load_files(self, paths: Iterable, realm: str | None = None, strict: bool = False,
                   kinds: Iterable[str] | None = None) -> list[LoadProblem]:
        """Load ``paths`` (CSV or SQLite, by extension or content) in order, swap them in, remember them for
        :meth:`reload_if_changed`. Returns the problems (bad rows, duplicates). Raises UserStoreError when a file
        is unusable, or on any problem when ``strict`` (the current users are then kept)."""
        realm = realm if realm is not None else self.realm
        if realm is None:
            raise ValueError("a realm is needed to compute HA1s")
        paths = [str(p) for p in paths]
        kinds = list(kinds) if kinds is not None else [_kind_of(p) for p in paths]
        sources = list(zip(paths, kinds))
        with self._reload_lock:
            signature = self._signature_of(sources)
            users, problems = _read_sources(sources, realm)
            if strict and problems:
                raise UserStoreError.from_problems(problems)
            self.realm, self.strict, self._sources, self._signature = realm, strict, sources, signature
            self.problems = problems
            self.replace(users)
            return list(problems)

    def load_csv(self, path, realm: str | None = None, strict: bool = False) -> list[LoadProblem]:
        return self.load_files([path], realm, strict, kinds=["csv"])

    def load_sqlite(self, path, realm: str | None = None, strict: bool = False) -> list[LoadProblem]:
        return self.load_files([path], realm, strict, kinds=["sqlite"])

    @classmethod
    def from_files(cls, paths: Iterable, realm: str, strict: bool = False) -> UserStore:
        """A store loaded from ``paths``; the problems are in ``store.problems`` (log each one)."""
        store = cls(realm=realm)
        store.load_files(paths, realm, strict)
        return store

    @staticmethod
    def _signature_of(sources):
        sig = []
        for path, kind in sources:
            sig.append((path, _stat(path)))
            if kind == "sqlite":  # WAL mode: writes land in the -wal file until a checkpoint
                sig.append((path + "-wal", _stat(path + "-wal")))
        return tuple(sig)

    def reload_if_changed(self, force: bool = False) -> list[LoadProblem]:
        """Reload and swap if any source changed (mtime, size or inode), else return [] at once.

        Never raises for a bad source: the problems are returned (log each one). If a source is unusable, or
        the store is strict and there are problems, the users loaded before are kept and the last problem says so.
        A broken source is reported once, not on every call, until it changes again.
        """
        if not self._sources:
            return []
        with self._reload_lock:
            signature = self._signature_of(self._sources)
            if not force and signature == self._signature:
                return []
            self._signature = signature
            try:
                users, problems = _read_sources(self._sources, self.realm)
                if self.strict and problems:
                    raise UserStoreError.from_problems(problems)
            except UserStoreError as e:
                kept = LoadProblem(self._sources[0][0], 0,
                                   f"reload refused, still serving the {len(self._users)} users loaded before",
                                   "fix the problems above; the file is re-read as soon as it changes")
                return [*e.problems, kept]
            self.problems = problems
            self.replace(users)
            return list(problems)


def __getattr__(name):  # lazy re-export of the SQLite admin functions (ftsip.auth.userdb imports this module)
    if name in ("SqliteUserLookup", "add_user", "remove_user", "set_enabled", "list_users", "import_csv",
                "ensure_schema"):
        from . import userdb

        return getattr(userdb, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
