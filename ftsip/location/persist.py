"""Registrations that survive a restart: a write-behind store of location records in SQLite.

``WriteBehind`` is a ``LocationService`` listener. Workers call it after every change of an AOR's record; the call
only files the new state in a pending map (one dict assignment under a per-stripe lock that nothing ever holds during
I/O), so a worker never waits for the disk. Many changes of one AOR between two flushes are coalesced into one row
write. A background thread writes the pending map every ``flush_interval`` seconds in one SQLite transaction (WAL
mode, ``synchronous=NORMAL``): an upsert per changed AOR, a ``DELETE`` per removed one.

Table ``bindings(aor TEXT PRIMARY KEY, data TEXT, expires_at REAL)``: ``data`` is a JSON list of
``Binding.as_dict()``, ``expires_at`` the latest expiry of the record's bindings (a row whose ``expires_at`` has
passed holds nothing alive). ``PRAGMA user_version`` is ``SCHEMA_VERSION``.

At start-up ``load(path, now)`` reads the file back, dropping (and deleting) expired bindings, and
``restore(service, records, state)`` puts the records into the table through ``LocationService.update`` so the
worker's expiry queue learns them.

Guarantees (proved by ``tests/location/test_persist.py``):

- A graceful stop (``stop()`` after the workers have stopped calling) loses nothing: the last flush writes every
  pending change before the database is closed.
- After the process is killed (``kill -9``, a crash), at most the changes of the last ``flush_interval`` plus one
  flush duration are lost: a change made at time t is in the snapshot of the first flush that starts after t (at the
  latest ``t + flush_interval`` while flushes are shorter than the interval), and is durable once that flush commits.
  A committed transaction lives in the WAL file, which the kernel keeps after the process dies; the next open
  replays it. A transaction cut short by the kill is rolled back as a whole, so the file always holds a consistent
  state of some earlier flush. (``synchronous=NORMAL`` does not fsync each commit: an operating-system crash or
  power loss may also lose the last commits, never corrupt the file.)
- A slow or full disk never reaches the workers: a failed flush is logged (rate-limited) and counted, its rows are
  kept and retried with the next flush, and the pending state stays bounded by the number of AORs (only the latest
  state of each AOR is kept). ``stats()`` shows ``errors`` and ``lag`` (age of the oldest unflushed change).

Ordering: the service calls listeners after its atomic ``compute``, so two workers changing one AOR at once (a
refresh racing the expiry collector of another worker) may call the listener in the opposite order. Pass
``source=service.record``: the flusher then writes the AOR's current record read from the table (any change after
the read files the AOR again), which is always the latest state.

Wiring (the order matters: restore before the listener is attached, so restored records are not written back)::

    records, info = load(path, time.time())          # PersistError: unusable file, message says what to do
    restore(service, records, service.local_state(now))
    wb = WriteBehind(path, flush_interval, source=service.record).start()
    service.listeners.append(wb)
    ... serve ...
    (stop the workers)  then  wb.stop()
"""
import logging
import os
import sqlite3
import threading
import time

from ftsip.location.records import Binding, Record
from ftsip.ops import jsonio
from ftsip.ops.log import event

_monotonic = time.monotonic

log = logging.getLogger("ftsip")

SCHEMA_VERSION = 1
STRIPES = 16                     # pending-map stripes: workers rarely share a lock (``__call__`` masks with 15)
POLL = 0.05                      # seconds between the flusher's looks at the pending size (max_pending)
_FIELDS = frozenset(Binding.__slots__)
_COLUMNS = ["aor", "data", "expires_at"]
_CREATE = ("CREATE TABLE IF NOT EXISTS bindings ("
           "aor TEXT PRIMARY KEY NOT NULL, data TEXT NOT NULL, expires_at REAL NOT NULL) WITHOUT ROWID")
_UPSERT = "INSERT OR REPLACE INTO bindings (aor, data, expires_at) VALUES (?, ?, ?)"
_DELETE = "DELETE FROM bindings WHERE aor = ?"


class PersistError(Exception):
    """The registration database cannot be used; the message names the file and what to do."""


def encode(record):
    """(data, expires_at) of a record's row."""
    bindings = record.bindings
    return jsonio.dumps([b.as_dict() for b in bindings]), max(b.expires_at for b in bindings)


def decode(aor, data):
    """The Record stored in ``data`` (raises ValueError/TypeError/KeyError on a bad row)."""
    items = jsonio.loads(data)
    if not isinstance(items, list):
        raise ValueError("data is not a list")
    out = []
    for d in items:
        if not isinstance(d, dict):
            raise ValueError("binding is not an object")
        out.append(Binding.from_dict({k: v for k, v in d.items() if k in _FIELDS}))
    return Record(aor, tuple(out))


def _unusable(path, why):
    return PersistError(
        f"registration database {path}: {why}. It is not a usable ftsip registration file: move it away "
        f"(e.g. mv {path} {path}.bad) to start with no registrations, or set [persistence] path to another file")


def _when_unlocked(op, timeout):
    """Run ``op``, again while SQLite says the database is locked, for up to ``timeout`` seconds. Switching to WAL
    and creating the table need the write lock; when several processes open the file at once (process mode: the
    supervisor and every worker at start, after a crash also WAL recovery) SQLite can answer SQLITE_BUSY at once,
    without waiting through its busy timeout."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        try:
            return op()
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() + delay > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


def open_db(path, timeout=5.0, create=True):
    """Open ``path`` in WAL mode, check (or create) the schema. Raises PersistError for a corrupt or foreign
    file."""
    parent = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as e:
        raise PersistError(f"registration database {path}: cannot create directory {parent}: {e.strerror or e}")
    try:
        conn = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as e:
        raise PersistError(f"registration database {path}: cannot open: {e} (check the path and permissions, "
                           f"or set [persistence] path)") from e
    try:
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError as e:
            raise _unusable(path, str(e)) from e
        if version not in (0, SCHEMA_VERSION):
            raise _unusable(path, f"schema version {version}, this ftsip reads version {SCHEMA_VERSION}")
        if "bindings" in tables:
            cols = [r[1] for r in conn.execute("PRAGMA table_info(bindings)")]
            if cols != _COLUMNS:
                raise _unusable(path, f"table bindings has columns {cols}, expected {_COLUMNS}")
        elif tables:
            raise _unusable(path, f"it holds other tables ({', '.join(sorted(tables))}) and no table bindings")
        try:
            mode = _when_unlocked(lambda: conn.execute("PRAGMA journal_mode=WAL").fetchone()[0], timeout)
            conn.execute("PRAGMA synchronous=NORMAL")
            if "bindings" not in tables and create:
                _when_unlocked(lambda: conn.execute(_CREATE), timeout)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.OperationalError as e:      # read-only, locked, no space: the file itself is fine
            raise PersistError(f"registration database {path}: cannot write to it: {e} (check the permissions of "
                               f"the file and its directory, the free space, and that no other program holds it; "
                               f"or set [persistence] path)") from e
        except sqlite3.DatabaseError as e:
            raise _unusable(path, str(e)) from e
        if mode.lower() != "wal":
            log.warning("registration database %s: journal mode %s, not WAL", path, mode)
        return conn
    except BaseException:
        conn.close()
        raise


def load(path, now, timeout=5.0):
    """Read the registrations saved in ``path``: ``(records, stats)``.

    Only bindings with ``expires_at > now`` come back; rows with none left are deleted. A missing file is an empty
    start. A corrupt or foreign file raises PersistError naming the file and the fix. A single unreadable row is
    skipped, logged and counted (``bad_rows``)."""
    t0 = time.perf_counter()
    st = {"path": path, "rows": 0, "records": 0, "bindings": 0, "expired_bindings": 0, "deleted_rows": 0,
          "bad_rows": 0, "duration": 0.0, "missing": False}
    if not os.path.exists(path):
        st["missing"] = True
        return [], st
    conn = open_db(path, timeout)
    records = []
    dead = []
    try:
        try:
            rows = conn.execute("SELECT aor, data, expires_at FROM bindings").fetchall()
        except sqlite3.DatabaseError as e:
            raise _unusable(path, str(e)) from e
        for aor, data, expires_at in rows:
            st["rows"] += 1
            try:
                rec = decode(aor, data)
            except (ValueError, TypeError, KeyError) as e:
                st["bad_rows"] += 1
                event(logging.WARNING, "persist.bad_row", "registration database %s: skipped the row of %r: %s",
                      path, aor, e)
                continue
            live = rec.purged(now)
            n_live = 0 if live is None else len(live.bindings)
            st["expired_bindings"] += len(rec.bindings) - n_live
            if live is None:
                dead.append((aor,))
                continue
            records.append(live)
            st["bindings"] += n_live
        if dead:
            try:
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany(_DELETE, dead)
                conn.execute("COMMIT")
                st["deleted_rows"] = len(dead)
            except sqlite3.Error as e:       # read-only or busy: harmless, they are filtered again next time
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                log.warning("registration database %s: could not delete %d expired rows: %s", path, len(dead), e)
    finally:
        conn.close()
    st["records"] = len(records)
    st["duration"] = time.perf_counter() - t0
    return records, st


def restore(service, records, state):
    """Put loaded records into ``service`` through ``update`` (so ``state``'s expiry queue learns them); returns
    how many."""
    n = 0
    for rec in records:
        service.update(rec.aor, lambda old, r=rec: r, state)
        n += 1
    return n


class _Stripe:
    __slots__ = ("lock", "map", "since")

    def __init__(self):
        self.lock = threading.Lock()
        self.map = {}            # aor -> latest record (None: removed)
        self.since = 0.0         # monotonic time of the first change in ``map``


class WriteBehind:
    """The listener ``(aor, record_or_None)`` that writes changes to SQLite in the background.

    ``flush_interval`` seconds between flushes; ``max_pending`` changed AORs at which a flush starts early (the
    flusher looks every ``POLL`` s) instead of waiting for the interval; ``source`` an optional
    ``aor -> current record`` (e.g. ``LocationService.record``) read at flush time instead of the record passed to
    the call (see the module docstring); ``timeout`` seconds SQLite waits for a lock held by another connection
    before the flush fails (and is retried)."""

    def __init__(self, path, flush_interval=0.2, max_pending=100_000, source=None, timeout=5.0):
        if flush_interval <= 0:
            raise ValueError("flush_interval must be > 0")
        self.path = path
        self.flush_interval = flush_interval
        self.max_pending = max_pending
        self.source = source
        self.timeout = timeout
        self._stripes = tuple(_Stripe() for _ in range(STRIPES))
        self._retry = {}                       # the rows of failed flushes (flusher only)
        self._retry_since = 0.0
        self._io = threading.Lock()            # held by whoever writes to the database; never by a worker
        self._wake = threading.Event()
        self._stopping = False
        self._thread = None
        self._conn = None
        self._flush_started = 0.0              # monotonic start of the flush in progress, 0 when idle
        self._flush_since = 0.0                # its oldest change
        # stats (written by the flusher under self._io)
        self.flushes = 0
        self.rows_written = 0
        self.upserts = 0
        self.deletes = 0
        self.errors = 0
        self.last_error = None
        self.last_flush_duration = 0.0
        self.max_flush_duration = 0.0
        self.last_flush_at = 0.0

    # ---- the worker side: never blocks on I/O
    def __call__(self, aor, record):
        s = self._stripes[hash(aor) & 15]
        with s.lock:
            m = s.map
            if not m:
                s.since = _monotonic()
            m[aor] = record

    # ---- lifecycle
    def open(self):
        """Open (creating if need be) the database; PersistError if it is unusable. ``start`` calls it."""
        if self._conn is None:
            self._conn = open_db(self.path, self.timeout)
        return self

    def start(self):
        """Open the database and start the flusher thread. Returns self."""
        self.open()
        if self._thread is None:
            self._stopping = False
            self._wake.clear()
            self._thread = threading.Thread(target=self._run, name="ftsip-persist", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout=10.0):
        """Stop the flusher, write everything still pending, close the database. Call it after the workers have
        stopped (changes made after it returns are not written). Returns True when nothing was left unwritten."""
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._conn is None:
            return self.pending() == 0
        deadline = time.monotonic() + timeout
        try:
            ok = self.flush()
            while not ok and time.monotonic() < deadline:
                time.sleep(min(0.1, self.flush_interval))
                ok = self.flush()
        finally:
            left = self.pending()
            if left:
                log.error("registration database %s: %d changed AORs could not be written at stop: %s", self.path,
                          left, self.last_error)
            with self._io:
                self._conn.close()
                self._conn = None
        return left == 0

    def _run(self):
        interval = self.flush_interval
        poll = min(interval, POLL)
        next_at = _monotonic() + interval
        ok = True
        while not self._stopping:
            delay = next_at - _monotonic()
            if delay > 0 and not (ok and self._fresh() >= self.max_pending):
                self._wake.wait(min(delay, poll))
                continue
            next_at = _monotonic() + interval
            try:
                ok = self.flush()
            except Exception as e:                 # a bug, not I/O: keep the thread alive, keep the rows
                ok = False
                self.errors += 1
                event(logging.ERROR, "persist.bug", "registration database %s: flush failed: %r", self.path, e,
                      exc_info=True)

    # ---- the flusher side
    def _take(self):
        """Swap out every stripe's map and merge them over the retry rows (newer wins)."""
        batch, since = self._retry, self._retry_since if self._retry else 0.0
        self._retry = {}
        for stripe in self._stripes:
            with stripe.lock:
                m = stripe.map
                if m:
                    stripe.map = {}
                    s = stripe.since
            if m:
                if batch:
                    batch.update(m)
                else:
                    batch = m
                if not since or s < since:
                    since = s
        return batch, since

    def flush(self):
        """Write every pending change in one transaction. Returns True on success (or nothing to do). Safe from any
        thread; workers never wait for it."""
        with self._io:
            conn = self._conn
            if conn is None:
                raise RuntimeError("WriteBehind.flush before open()/start()")
            batch, since = self._take()
            if not batch:
                return True
            t0 = time.monotonic()
            self._flush_since = since
            self._flush_started = t0
            try:
                upserts, deletes = self._rows(batch)
                self._write(conn, upserts, deletes)
            except sqlite3.Error as e:
                if conn.in_transaction:
                    try:
                        conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                self._failed(batch, since, e)
                return False
            except BaseException as e:
                self._failed(batch, since, e)
                raise
            finally:
                self._flush_started = 0.0
            dt = time.monotonic() - t0
            self.flushes += 1
            self.upserts += len(upserts)
            self.deletes += len(deletes)
            self.rows_written += len(upserts) + len(deletes)
            self.last_flush_duration = dt
            if dt > self.max_flush_duration:
                self.max_flush_duration = dt
            self.last_flush_at = time.time()
            if dt > self.flush_interval:
                event(logging.WARNING, "persist.slow", "registration database %s: a flush of %d rows took %.3f s "
                      "(flush_interval %.3f s): persistence is falling behind", self.path, len(batch), dt,
                      self.flush_interval, rows=len(batch), duration=round(dt, 3))
            return True

    def _failed(self, batch, since, e):
        # keep the rows for the next flush; changes that arrived meanwhile are newer and will win the merge
        self._retry = batch
        self._retry_since = since
        self.errors += 1
        self.last_error = f"{type(e).__name__}: {e}"
        event(logging.ERROR, "persist.flush", "registration database %s: flush of %d rows failed: %s (kept in "
              "memory, retried every %.3f s)", self.path, len(batch), self.last_error, self.flush_interval,
              rows=len(batch))

    def _rows(self, batch):
        source = self.source
        upserts = []
        deletes = []
        for aor, rec in batch.items():
            if source is not None:
                rec = source(aor)
            if rec is None or not rec.bindings:
                deletes.append((aor,))
            else:
                data, exp = encode(rec)
                upserts.append((aor, data, exp))
        return upserts, deletes

    def _write(self, conn, upserts, deletes):
        conn.execute("BEGIN IMMEDIATE")
        if upserts:
            conn.executemany(_UPSERT, upserts)
        if deletes:
            conn.executemany(_DELETE, deletes)
        conn.execute("COMMIT")

    # ---- observation
    def _fresh(self):
        n = 0
        for stripe in self._stripes:
            n += len(stripe.map)
        return n

    def pending(self):
        """Changed AORs not yet written (approximate while workers run)."""
        return len(self._retry) + self._fresh()

    def lag(self, now=None):
        """Seconds since the oldest change not yet written (0 when nothing is pending)."""
        now = time.monotonic() if now is None else now
        oldest = self._retry_since if self._retry else 0.0
        for stripe in self._stripes:
            if stripe.map:
                s = stripe.since
                if not oldest or s < oldest:
                    oldest = s
        if self._flush_started:             # the rows of the flush in progress are not durable yet
            s = self._flush_since
            if s and (not oldest or s < oldest):
                oldest = s
        return now - oldest if oldest else 0.0

    def stats(self):
        now = time.monotonic()
        started = self._flush_started
        return {
            "path": self.path,
            "flushes": self.flushes,
            "rows_written": self.rows_written,
            "upserts": self.upserts,
            "deletes": self.deletes,
            "pending": self.pending(),
            "last_flush_duration": self.last_flush_duration,
            "max_flush_duration": self.max_flush_duration,
            "flushing_for": now - started if started else 0.0,
            "errors": self.errors,
            "last_error": self.last_error,
            "lag": self.lag(now),
        }
