"""The location service: AOR -> Record in a concurrent table, shared by every worker thread.

Writers go through ``update`` (the table's atomic per-bucket ``compute``); readers use ``lookup`` with no lock on the
record (records are immutable). Each worker owns a ``LocalState`` (its expiry queue and its counters, merged when
read), so nothing here takes a global lock.
"""
from ftsip.location.expiry import ExpiryQueue
from ftsip.location.table import make_table


class LocalState:
    """Per-worker: the expiry queue and counters only this worker writes."""

    __slots__ = ("queue", "bindings", "examined", "expired", "steps", "longest_step", "next_sweep", "scan",
                 "behind")

    def __init__(self, now):
        self.queue = ExpiryQueue(now)
        self.bindings = 0        # bindings added minus removed by this worker (summed over workers: the total)
        self.examined = 0        # AORs examined by the collector
        self.expired = 0         # bindings removed by the collector
        self.steps = 0
        self.longest_step = 0
        self.next_sweep = 0.0
        self.scan = None         # the resumable scan of gc = "scan"
        self.behind = False      # the last collector step stopped at its budget with more to do


class LocationService:
    def __init__(self, table=None, gc="incremental", gc_budget=32, sweep_interval=60):
        self.table = table if table is not None else make_table("linear")
        self.gc = gc
        self.gc_budget = gc_budget
        self.sweep_interval = sweep_interval
        self.locals = []
        self.listeners = []      # callables (aor, record_or_None) after every change (persistence)

    @classmethod
    def from_config(cls, cfg):
        loc = cfg.location
        table = make_table(loc.table, loc.hash_width if loc.table == "fixed" else None)
        return cls(table, loc.gc, loc.gc_budget, loc.sweep_interval)

    def local_state(self, now):
        st = LocalState(now)
        st.next_sweep = now + self.sweep_interval
        self.locals.append(st)
        return st

    # ---- reads
    def lookup(self, aor, now):
        """Live bindings of ``aor`` (a tuple, possibly empty)."""
        rec = self.table.get(aor)
        return () if rec is None else rec.live(now)

    def record(self, aor):
        return self.table.get(aor)

    def __contains__(self, aor):
        return aor in self.table

    def aors(self):
        return len(self.table)

    def bindings(self):
        return sum(st.bindings for st in self.locals)

    # ---- writes
    def update(self, aor, fn, st):
        """Atomically replace the record of ``aor`` with ``fn(old_record_or_None)`` (None deletes). Exceptions
        raised by ``fn`` propagate and leave the record unchanged. Every binding of the new record is filed in the
        worker's expiry queue. Returns the new record (or None)."""
        box = [0, None]

        def apply(old):
            new = fn(old)
            box[0] = (0 if new is None else len(new.bindings)) - (0 if old is None else len(old.bindings))
            box[1] = old
            return new

        new = self.table.compute(aor, apply)
        st.bindings += box[0]
        if new is not None and self.gc == "incremental":
            # one queue entry per AOR at its earliest expiry: a refresh that only moves expiries later files
            # nothing (the entry already filed fires first, and the collector files the next one then)
            old = box[1]
            soonest = new.next_expiry()
            if old is None or soonest < old.next_expiry():
                st.queue.push(soonest, aor)
        for listener in self.listeners:
            listener(aor, new)
        return new

    def purge(self, aor, now, st):
        """Remove the expired bindings of one AOR; returns how many went."""
        removed = [0]

        def apply(old):
            if old is None:
                return None
            new = old.purged(now)
            if new is not old:
                removed[0] = len(old.bindings) - (0 if new is None else len(new.bindings))
            return new

        new = self.table.compute(aor, apply)
        n = removed[0]
        if n:
            st.bindings -= n
            st.expired += n
            for listener in self.listeners:
                listener(aor, new)
        return n

    # ---- expiry
    def collect(self, now, st):
        """One bounded step of the incremental collector for this worker (call every tick): at most ``gc_budget``
        due AORs. Sets ``st.behind`` when it stopped at the budget (the runtime then ticks sooner). Returns AORs
        examined."""
        q = st.queue
        if not q.size:
            st.behind = False
            return 0
        budget = self.gc_budget
        keys = q.pop_due(now, budget)
        n = len(keys)
        st.behind = n >= budget
        if not n:
            return 0
        get = self.table.get
        for aor in keys:
            self.purge(aor, now, st)
            rec = get(aor)
            if rec is not None:                 # refreshed meanwhile: come back at its next expiry
                q.push(rec.next_expiry(), aor)
        st.examined += n
        st.steps += 1
        return n

    def sweep(self, now, st):
        """The paper's baseline: examine every AOR in the table at once. Returns bindings removed."""
        removed = 0
        for aor, rec in list(self.table.items()):
            if rec.purged(now) is not rec:
                removed += self.purge(aor, now, st)
        st.steps += 1
        return removed

    def scan_collect(self, now, st):
        """The budgeted collector for tables the expiry queues cannot follow (the shared-memory segment of the
        process mode, written by several processes): a scan of the table that resumes where the last step stopped,
        ``gc_budget`` AORs a step (``st.behind`` while a pass is under way), a new pass at most once a second."""
        if st.scan is None:
            if now < st.next_sweep:
                st.behind = False
                return 0
            st.next_sweep = now + 1.0
            st.scan = iter(self.table.keys())     # lazy: buckets are read as the scan reaches them
        n = 0
        budget = self.gc_budget
        for aor in st.scan:
            self.purge(aor, now, st)
            n += 1
            if n >= budget:
                break
        else:
            st.scan = None
        st.behind = st.scan is not None
        st.examined += n
        st.steps += 1
        return n

    def tick(self, now, st, wid):
        """The runtime's periodic call: incremental collection ("incremental": expiry queues; "scan": a resumable
        scan), or a full sweep every ``sweep_interval`` seconds by worker 0 when the baseline is configured
        ("sweep"); "none" leaves expiry to another process. Returns the work done; ``st.behind`` says whether the
        collector wants the next tick soon (``ftsip.runtime.worker.next_tick``)."""
        gc = self.gc
        if gc == "incremental":
            return self.collect(now, st)
        if gc == "scan":
            return self.scan_collect(now, st)
        if gc == "none":
            return 0
        if wid == 0 and now >= st.next_sweep:
            st.next_sweep = now + self.sweep_interval
            return self.sweep(now, st)
        return 0

    def stats(self):
        return {
            "aors": self.aors(),
            "bindings": self.bindings(),
            "gc_examined": sum(st.examined for st in self.locals),
            "gc_expired": sum(st.expired for st in self.locals),
            "gc_backlog": sum(st.queue.size for st in self.locals),
            "table": self.table.stats(),
        }
