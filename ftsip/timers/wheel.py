"""A hashed timing wheel (Varghese & Lauck) for transaction timers, owned by one worker (no locks).

``schedule(when, fn, arg)`` files an entry in the slot of its deadline; ``advance(now)`` walks the slots whose time
has come and calls ``fn(arg, now)`` for each due entry (at most one resolution early: deadlines are rounded to
ticks). Entries further away than one revolution stay in their slot
until their turn comes round. Cancelling is lazy: ``cancel(handle)`` marks the entry dead (and drops what it refers to) and
the empty entry is dropped when its slot is next walked, so cancel is O(1) and nothing is searched.
"""

ALIVE = 3


class TimerWheel:
    __slots__ = ("resolution", "mask", "slots", "cursor", "count", "fired")

    def __init__(self, now, resolution=0.01, nslots=4096):
        if nslots & (nslots - 1):
            raise ValueError("nslots must be a power of two")
        self.resolution = resolution
        self.mask = nslots - 1
        self.slots = [[] for _ in range(nslots)]
        self.cursor = int(now / resolution)   # the next tick to walk
        self.count = 0
        self.fired = 0

    def schedule(self, when, fn, arg):
        """Call ``fn(arg, now)`` at ``when`` (within the next tick if that is already past). Returns a handle."""
        tick = int(when / self.resolution)
        if tick < self.cursor:
            tick = self.cursor
        entry = [tick, fn, arg, True]
        self.slots[tick & self.mask].append(entry)
        self.count += 1
        return entry

    @staticmethod
    def cancel(handle):
        """Cancel an entry: O(1), and it lets go of its callback and argument at once (the empty entry waits for
        its slot to be walked; what it referred to - a transaction, a whole call - is freed now, not when the
        deadline would have come, which is 3 minutes for Timer C)."""
        if handle is not None:
            handle[ALIVE] = False
            handle[1] = handle[2] = None

    def advance(self, now):
        """Fire every live entry due at ``now``; returns how many fired."""
        end = int(now / self.resolution)
        if end < self.cursor:
            return 0
        fired = 0
        start = self.cursor
        if end - start > self.mask:        # idle for more than a revolution: one full walk is enough
            start = end - self.mask
        slots = self.slots
        mask = self.mask
        for tick in range(start, end + 1):
            slot = slots[tick & mask]
            if not slot:
                continue
            keep = []
            due = []
            for entry in slot:
                if not entry[ALIVE]:
                    self.count -= 1
                elif entry[0] <= end:
                    due.append(entry)
                else:
                    keep.append(entry)
            slots[tick & mask] = keep
            for entry in due:
                self.count -= 1
                fn, arg = entry[1], entry[2]
                if entry[ALIVE] and fn is not None:    # (another thread may cancel it meanwhile)
                    entry[ALIVE] = False
                    entry[1] = entry[2] = None
                    fired += 1
                    fn(arg, now)
        self.cursor = end + 1
        self.fired += fired
        return fired

    def __len__(self):
        return self.count
