"""Logging: text or JSON lines, and rate-limited event lines so a flood cannot flood the log."""
import logging
import sys
import threading
import time

from ftsip.ops import jsonio

log = logging.getLogger("ftsip")


class JsonFormatter(logging.Formatter):
    def format(self, record):
        d = {"ts": round(record.created, 3), "level": record.levelname.lower(), "logger": record.name,
             "msg": record.getMessage(), "thread": record.threadName}
        extra = getattr(record, "fields", None)
        if extra:
            d.update(extra)
        if record.exc_info:
            d["exc"] = self.formatException(record.exc_info)
        return jsonio.dumps(d)


def setup(level="info", fmt="text", stream=None):
    """Configure the 'ftsip' logger (idempotent)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(threadName)s %(message)s"))
    for h in list(log.handlers):
        log.removeHandler(h)
    log.addHandler(handler)
    log.setLevel(getattr(logging, level.upper()))
    log.propagate = False


class RateLimiter:
    """At most ``burst`` lines per ``per`` seconds for each key; the next line after a quiet spell says how many
    were suppressed. Thread-safe (one small lock; only taken when something is logged, never on the fast path)."""

    def __init__(self, burst=5, per=10.0):
        self.burst = burst
        self.per = per
        self.lock = threading.Lock()
        self.state = {}   # key -> [window_start, count, suppressed]

    def allow(self, key, now=None):
        """Returns None to suppress, else the number of lines suppressed before this one."""
        now = time.monotonic() if now is None else now
        with self.lock:
            st = self.state.get(key)
            if st is None or now - st[0] >= self.per:
                suppressed = st[2] if st else 0
                self.state[key] = [now, 1, 0]
                if len(self.state) > 10000:
                    self.state.clear()
                return suppressed
            if st[1] < self.burst:
                st[1] += 1
                return 0
            st[2] += 1
            return None


_limiter = RateLimiter()


def event(level, key, msg, *args, exc_info=None, **fields):
    """Log one significant event, rate-limited per ``key``."""
    if not log.isEnabledFor(level):
        return
    suppressed = _limiter.allow(key)
    if suppressed is None:
        return
    if suppressed:
        msg += f" ({suppressed} similar lines suppressed)"
    log.log(level, msg, *args, exc_info=exc_info, extra={"fields": dict(fields, event=key)})
