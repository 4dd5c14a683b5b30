"""Amortized expiry of registrations: a per-worker queue of (second -> AORs) and a budgeted collector.

An AOR is filed under the second its earliest binding expires (rounded up) when it is created or when that
moment moves earlier; a refresh that only moves it later files nothing. On every tick the worker pops a bounded
number of due AORs and purges their expired bindings through the table's atomic ``compute``; an AOR found still
alive (refreshed meanwhile) is filed again under its next expiry. So the queues hold about one entry per AOR, and a
refresh costs no search and no removal (lazy cancellation).
A step examines at most ``gc_budget`` AORs (32 by default: about 0.1 ms), so a request that arrives during a step
waits for little more than one extra request's service time. The rate adapts instead of the step: when a step stops
at its budget with more due, the collector reports it is behind and the runtime ticks every millisecond
(``worker.next_tick``) until it has caught up, so a registration storm (10 % of 1M bindings expiring in the same
second) is cleared in a few seconds by many small steps instead of a few long ones.

The paper's baseline, a full sweep of the whole table every N seconds, is ``LocationService.sweep``.
Lookups never depend on either: they filter expired bindings themselves.
"""

from ftsip.dicts import get as dget


class ExpiryQueue:
    """Seconds -> list of AORs, owned by one worker (no lock)."""

    __slots__ = ("buckets", "cursor", "size")

    def __init__(self, now):
        self.buckets = {}
        self.cursor = int(now)
        self.size = 0

    def push(self, when, aor):
        sec = int(when)
        if sec < when:
            sec += 1
        if sec < self.cursor:
            sec = self.cursor
        b = dget(self.buckets, sec)
        if b is None:
            self.buckets[sec] = [aor]
        else:
            b.append(aor)
        self.size += 1

    def backlog(self, now):
        """How many entries are due at ``now``. Seconds that have passed with nothing filed are skipped for good
        (the cursor moves on), so a tick costs the seconds since the last tick, not since the start."""
        limit = int(now)
        buckets = self.buckets
        cursor = self.cursor
        while cursor <= limit and cursor not in buckets:
            cursor += 1
        self.cursor = cursor
        n = 0
        for sec in range(cursor, limit + 1):
            if sec in buckets:
                n += len(buckets[sec])
        return n

    def pop_due(self, now, budget):
        """Up to ``budget`` AORs whose second has come."""
        out = []
        limit = int(now)
        buckets = self.buckets
        while self.cursor <= limit and len(out) < budget:
            b = dget(buckets, self.cursor)
            if not b:
                buckets.pop(self.cursor, None)
                self.cursor += 1
                continue
            take = budget - len(out)
            if len(b) <= take:
                out.extend(b)
                del buckets[self.cursor]
                self.cursor += 1
            else:
                out.extend(b[-take:])
                del b[-take:]
        self.size -= len(out)
        return out

    def __len__(self):
        return self.size
