"""Protections against hostile traffic: flood bans (pike), brute-force throttling, scanner refusal, overload shedding.

``Guard(cfg)`` implements the hooks of ``ftsip.ops.guard_api`` (the App calls them; sans-I/O: ``now`` is an
argument).

Flood protection (``[security] pike_rate``, ``pike_ban``; 0 = off, the default): every datagram counts against its
source address (requests, retransmissions, responses and garbage alike: it is checked before parsing, the cheapest
place). The rate is a sliding-window estimate over 1 s windows (this window's count plus the previous window's,
weighted by how much of it still overlaps). Above ``pike_rate`` the source is banned for ``pike_ban`` seconds: its
datagrams are dropped unparsed (the App counts ``drops.banned``), one rate-limited WARNING line names the address.
Nothing is exempt by default, not even loopback; ``Guard(cfg, exempt=[...])`` (or a ``[security] pike_exempt`` list,
if the config grows one) takes addresses and the word ``"loopback"``. An IPv6 source is its /64 (a host can hop
around its /64 at will).

Brute-force throttling (``auth_fail_limit``, ``auth_fail_window``, ``auth_fail_status``; limit 0 = off): failed
authentications (wrong digest, unknown user, forged nonce...: whatever ``App.authenticate`` reports) are counted per
(user, source) and per source, each in a window of ``auth_fail_window`` seconds starting at its first failure. At
``auth_fail_limit`` failures for one user from one source, that user is blocked *from that source* for
``auth_fail_window`` seconds; at ``SOURCE_FACTOR`` x ``auth_fail_limit`` failures from one source (for any users:
password spraying), the whole source is blocked. The per-source limit is higher on purpose: many phones behind one
NAT share a source address, and one misconfigured phone must not lock its neighbours out (an optional ``[security]
auth_fail_source_limit`` overrides it). A blocked attempt is answered ``auth_fail_status`` (403 or 429) with
``Retry-After`` *without verifying the credentials* (so a right password gets the same refusal). A success clears
the (user, source) counter, never the source counter (one valid account must not reset a sprayer). The same user
from another address is never affected. The guard never looks at the user store: unknown and existing users are
counted, blocked and answered identically (no enumeration through the throttle).

Scanner refusal (``scanner_user_agents``; empty = off): a new request whose User-Agent contains one of the strings
(case-insensitive) is answered 403 at once and goes no further. We answer rather than drop because the hook
interface has no "drop" outcome; a scanner learns nothing from a 403 it would not learn from our 401s. (svcrack
retries a 403 forever, cheaply for us; a drop would make it give up after its --maximumtime.) No ban follows: a
User-Agent is one forged packet away from getting a spoofed victim address banned.

Overload shedding (``overload_lag``, ``retry_after``; lag 0 = never): when the worker's queueing delay (``ctx.lag``,
measured by the runtime from kernel receive timestamps) has stayed above ``overload_lag`` for ``OVERLOAD_HOLD`` (one
second; an optional ``[security] overload_hold`` overrides it), new REGISTERs and initial INVITEs (no To tag) get ``503``
with ``Retry-After: retry_after`` before any digest or location work. The hold lets a transient stall (a GC pause,
CPU taken by another process, a burst of re-registrations) drain without refusing anyone; a real overload does not
drain. Once shedding, a relapse within ``OVERLOAD_REENTER`` (3 s) sheds at once. ACK, BYE, CANCEL, re-INVITEs,
OPTIONS, responses and retransmissions (absorbed by their transactions before ``check_request`` runs) are still
served, so calls in progress complete. Shedding stops by itself as soon as the lag is back under the limit.

Concurrency and memory: the state is split into ``SHARDS`` shards by source address, each with its own lock (no
global lock). The per-datagram paths take no lock at all in the common cases (pike: a known source inside its
window, a banned source; auth: no block in the shard, a success with no failure counted): dict reads are atomic on
3.13t, and a lost concurrent increment only makes a rate estimate slightly low. Everything that inserts, evicts,
rolls a window or bans runs under the shard lock. In the process mode every worker process has its own Guard, so a
source whose packets spread over N processes (many source ports) gets up to N times the limits. Every table is an
``OrderedDict`` capped per shard (default totals: ``max_sources`` rate entries, ``max_failures`` failure counters of
each kind, ``max_bans`` bans and blocks); a full shard drops its oldest entry, and each insertion also drops up to
two expired ones from the old end, so memory follows the number of sources active recently and never exceeds the
caps, whatever a spoofed-source flood does. Bans and blocks live in their own tables, so a flood of one-packet
spoofed sources churns the counters but cannot push an existing ban out (only ``max_bans`` *new* bans can). Every
call is O(1).

Reconfiguration: values are read from ``self.cfg`` (a snapshot is rebuilt when the object changes): assign
``guard.cfg = new_cfg`` or call ``guard.reconfigure(new_cfg)`` on SIGHUP; existing bans and counters are kept.
"""
import logging
import math
import socket
import threading
from collections import OrderedDict

from ftsip.ops import log as oplog
from ftsip.dicts import get as dget

__all__ = ["Guard", "SHARDS", "SOURCE_FACTOR", "PIKE_WINDOW"]

SHARDS = 64                 # a power of two
PIKE_WINDOW = 1.0           # seconds per rate window (fixed: the fast path has it folded in)
SOURCE_FACTOR = 5           # a source is blocked after SOURCE_FACTOR x auth_fail_limit failures (any users)
OVERLOAD_HOLD = 1.0         # seconds the lag must stay above overload_lag before shedding starts
OVERLOAD_REENTER = 3.0      # seconds after the last shed during which shedding resumes without the hold
USER_KEY_LEN = 64           # user names are truncated to this for keys (bounds the memory of one entry)
_REASONS = {403: "Forbidden", 429: "Too Many Requests", 503: "Service Unavailable"}


def source_key(ip):
    """The unit a source is counted by: the IPv4 address, or the /64 of an IPv6 address (8 bytes)."""
    if ":" in ip:
        try:
            return socket.inet_pton(socket.AF_INET6, ip.partition("%")[0])[:8]
        except OSError:
            return ip
    return ip


def _is_loopback(ip):
    return ip.startswith("127.") or ip == "::1"


class _Params:
    """A snapshot of ``cfg.security`` in the form the hot paths want."""

    __slots__ = ("cfg", "pike_rate", "pike_ban", "fail_limit", "src_limit", "window", "fail_status",
                 "fail_reason", "scanners", "scanner_refusal", "overload_lag", "overload_hold", "shed", "exempt",
                 "exempt_loopback")

    def __init__(self, cfg, exempt):
        s = cfg.security
        self.cfg = cfg
        self.pike_rate = s.pike_rate
        self.pike_ban = s.pike_ban
        self.fail_limit = s.auth_fail_limit
        self.src_limit = _optional(s, "auth_fail_source_limit", 0) or s.auth_fail_limit * SOURCE_FACTOR
        self.window = s.auth_fail_window
        self.fail_status = s.auth_fail_status
        self.fail_reason = _REASONS.get(s.auth_fail_status, "Forbidden")
        self.scanners = tuple(x.lower() for x in s.scanner_user_agents if x)
        self.scanner_refusal = (403, "Forbidden", ())
        self.overload_lag = s.overload_lag
        self.overload_hold = _optional(s, "overload_hold", OVERLOAD_HOLD)
        self.shed = (503, "Service Unavailable", (f"Retry-After: {s.retry_after}",))
        ex = set(exempt or ()) | set(_optional(s, "pike_exempt", ()) or ())
        self.exempt_loopback = "loopback" in ex
        ex.discard("loopback")
        self.exempt = frozenset(ex)


def _optional(section, key, default):
    try:
        return getattr(section, key)
    except AttributeError:
        return default


class _Shard:
    __slots__ = ("lock", "rates", "bans", "fails_src", "fails_user", "blocks", "bans_issued", "blocks_issued",
                 "evicted")

    def __init__(self):
        self.lock = threading.Lock()
        self.rates = OrderedDict()       # source -> [window start, count this window, count previous window]
        self.bans = OrderedDict()        # source -> banned until
        self.fails_src = OrderedDict()   # source -> [window start, failures]
        self.fails_user = OrderedDict()  # (user, source) -> [window start, failures]
        self.blocks = OrderedDict()      # source or (user, source) -> blocked until
        self.bans_issued = 0     # counters written under the lock
        self.blocks_issued = 0
        self.evicted = 0


class Guard:
    def __init__(self, cfg, *, exempt=(), shards=SHARDS, max_sources=32768, max_failures=32768, max_bans=8192):
        if shards <= 0 or shards & (shards - 1):
            raise ValueError("shards must be a power of two")
        self.cfg = cfg
        self._exempt = tuple(exempt)
        self._p = _Params(cfg, self._exempt)
        self._shards = tuple(_Shard() for _ in range(shards))
        self._mask = shards - 1
        self._load = {}          # worker id -> [lag above the limit since, last shed] (overload shedding)
        self.cap_rates = max(1, max_sources // shards)
        self.cap_fails = max(1, max_failures // shards)
        self.cap_bans = max(1, max_bans // shards)

    # ---- configuration
    def reconfigure(self, cfg):
        """Use ``cfg`` from now on (SIGHUP); bans, blocks and counters are kept."""
        self.cfg = cfg
        self._p = _Params(cfg, self._exempt)

    def _params(self):
        p = self._p
        if p.cfg is not self.cfg:
            p = self._p = _Params(self.cfg, self._exempt)
        return p

    # ---- flood protection (per datagram, before parsing)
    def allow_datagram(self, addr, now, _hash=hash):
        p = self._p
        if p.cfg is not self.cfg:
            p = self._params()
        rate = p.pike_rate
        if not rate:
            return True
        ip = addr[0]
        if p.exempt and ip in p.exempt or p.exempt_loopback and _is_loopback(ip):
            return True
        key = ip if ":" not in ip else source_key(ip)
        sh = self._shards[_hash(key) & self._mask]
        # Fast paths, no lock: a banned source (dropped), a known source inside its current window. Dict lookups
        # are atomic on 3.13t; the counter increment may lose a concurrent update (only when two workers count
        # the same source at the same instant): the estimate can only come out a little low, never too high.
        bans = sh.bans
        if bans:
            until = dget(bans, key)
            if until is not None and now < until:
                return False
        e = dget(sh.rates, key)
        if e is not None:
            el = now - e[0]
            if 0.0 <= el < 1.0:                       # PIKE_WINDOW
                count = e[1] + 1
                e[1] = count
                if count + e[2] * (1.0 - el) <= rate:
                    return True
        return self._pike_slow(sh, key, ip, now, p)

    def _pike_slow(self, sh, key, ip, now, p):
        """A banned, new or window-rolling source, or one over the rate: under the shard's lock."""
        rate = p.pike_rate
        with sh.lock:
            bans = sh.bans
            until = dget(bans, key)
            if until is not None:
                if now < until:
                    return False
                del bans[key]
            rates = sh.rates
            e = dget(rates, key)
            if e is None:
                self._make_room(sh, rates, self.cap_rates, now - 2 * PIKE_WINDOW)
                rates[key] = [now, 1, 0]
                return rate >= 1
            start = e[0]
            el = now - start
            if el >= PIKE_WINDOW or el < 0:
                if PIKE_WINDOW <= el < 2 * PIKE_WINDOW:
                    e[2] = e[1]
                    start += PIKE_WINDOW
                else:
                    e[2] = 0
                    start = now
                e[0] = start
                e[1] = 1
                rates.move_to_end(key)   # at most once per window per source: the old end holds the stale ones
            # (else the fast path already counted this datagram)
            # sliding-window estimate: the previous window weighted by how much of it still overlaps
            if e[1] + e[2] * (1.0 - (now - start) / PIKE_WINDOW) <= rate:
                return True
            del rates[key]
            self._expire(sh, bans, self.cap_bans, now)
            bans[key] = now + p.pike_ban
            sh.bans_issued += 1
        oplog.event(logging.WARNING, "pike-ban", "pike: %s sent more than %d datagrams/s; banned for %g s", ip,
                    rate, p.pike_ban, source=ip)
        return False

    # ---- new requests (after transaction matching: retransmissions never get here)
    def check_request(self, req, addr, now, ctx):
        p = self._p
        if p.cfg is not self.cfg:
            p = self._params()
        limit = p.overload_lag
        if limit:
            # per worker: [lag above the limit since (0: it is not), last shed]; only that worker writes its entry
            st = dget(self._load, ctx.wid)
            if ctx.lag > limit:
                if st is None:
                    st = self._load[ctx.wid] = [now, -1e18]
                elif not st[0]:
                    st[0] = now
                # a stall (GC, CPU stolen, a burst) drains within the hold; overload does not. Once shedding,
                # a relapse within OVERLOAD_REENTER sheds at once.
                if now - st[0] >= p.overload_hold or now - st[1] < OVERLOAD_REENTER:
                    m = req.method
                    if m == "REGISTER" or m == "INVITE" and req.to.tag is None:
                        st[1] = now
                        ctx.stats.inc("guard.shed")
                        oplog.event(logging.WARNING, "overload", "overload: queueing delay %.3f s > %g s for %.1f "
                                    "s, answering new INVITE/REGISTER 503", ctx.lag, limit, now - st[0])
                        return p.shed
            elif st is not None and st[0]:
                st[0] = 0.0
        if p.scanners:
            ua = req.user_agent
            if ua:
                low = ua.lower()
                for s in p.scanners:
                    if s in low:
                        ctx.stats.inc("guard.scanner")
                        oplog.event(logging.INFO, "scanner", "refused %s from %s: User-Agent %r", req.method,
                                    addr[0], ua[:80], source=addr[0])
                        return p.scanner_refusal
        return None

    # ---- brute-force throttling
    def auth_blocked(self, username, addr, now):
        p = self._p
        if p.cfg is not self.cfg:
            p = self._params()
        if not p.fail_limit:
            return None
        key = source_key(addr[0])
        blocks = self._shards[hash(key) & self._mask].blocks
        if not blocks:                  # no lock: reads only (expired entries are pruned when blocks are added)
            return None
        until = dget(blocks, key) or 0.0
        if username is not None:
            until = max(until, dget(blocks, (username[:USER_KEY_LEN], key)) or 0.0)
        if until <= now:
            return None
        return p.fail_status, p.fail_reason, (f"Retry-After: {max(1, math.ceil(until - now))}",)

    def auth_failed(self, username, addr, now):
        p = self._p
        if p.cfg is not self.cfg:
            p = self._params()
        if not p.fail_limit:
            return
        ip = addr[0]
        key = source_key(ip)
        window = p.window
        sh = self._shards[hash(key) & self._mask]
        what = None
        with sh.lock:
            if self._bump(sh, sh.fails_src, key, now, window) >= p.src_limit:
                del sh.fails_src[key]
                self._block(sh, key, now, window)
                what = "source"
            if username:
                ukey = (username[:USER_KEY_LEN], key)
                if self._bump(sh, sh.fails_user, ukey, now, window) >= p.fail_limit:
                    del sh.fails_user[ukey]
                    self._block(sh, ukey, now, window)
                    what = what or "user"
        if what == "source":
            oplog.event(logging.WARNING, "auth-block", "auth: %d failed authentications from %s; source refused "
                        "for %g s", p.src_limit, ip, window, source=ip)
        elif what:
            oplog.event(logging.WARNING, "auth-block", "auth: %d failed authentications for %r from %s; refused "
                        "for %g s", p.fail_limit, username[:USER_KEY_LEN], ip, window, source=ip)

    def auth_succeeded(self, username, addr, now):
        if not username:
            return
        key = source_key(addr[0])
        sh = self._shards[hash(key) & self._mask]
        if not sh.fails_user:
            return
        with sh.lock:
            sh.fails_user.pop((username[:USER_KEY_LEN], key), None)

    # ---- table upkeep (called with the shard's lock held)
    def _make_room(self, sh, table, cap, stale_before):
        """Before inserting a new key: drop the oldest entry of a full table, else up to two expired ones."""
        if len(table) >= cap:
            table.popitem(last=False)
            sh.evicted += 1
            return
        for _ in range(2):
            if not table:
                return
            k = next(iter(table))
            if table[k][0] >= stale_before:
                return
            del table[k]

    def _bump(self, sh, table, key, now, window):
        e = dget(table, key)
        if e is None:
            self._make_room(sh, table, self.cap_fails, now - window)
            e = table[key] = [now, 0]
        elif now - e[0] >= window or now < e[0]:
            e[0] = now
            e[1] = 0
            table.move_to_end(key)
        e[1] += 1
        return e[1]

    def _expire(self, sh, table, cap, now):
        """Before inserting into a table of deadlines (bans, blocks): drop up to two expired ones from the old end,
        and the oldest when the table is full."""
        for _ in range(2):
            if not table:
                return
            k = next(iter(table))
            if table[k] > now:
                break
            del table[k]
        if len(table) >= cap:
            table.popitem(last=False)
            sh.evicted += 1

    def _block(self, sh, key, now, window):
        blocks = sh.blocks
        blocks.pop(key, None)
        self._expire(sh, blocks, self.cap_bans, now)
        blocks[key] = now + window
        sh.blocks_issued += 1

    # ---- observability
    def stats(self, now=None):
        """Numbers for the metrics endpoint (each shard read under its lock; not on the hot path). Drops of
        banned datagrams and throttled attempts are counted exactly by the App (``drops.banned``,
        ``auth.throttled``)."""
        import time
        now = time.time() if now is None else now
        out = {"pike_bans_active": 0, "pike_bans_issued": 0, "pike_sources": 0, "auth_blocks_active": 0,
               "auth_blocks_issued": 0, "auth_fail_sources": 0, "auth_fail_users": 0, "evicted": 0}
        for sh in self._shards:
            with sh.lock:
                out["pike_bans_active"] += sum(1 for u in sh.bans.values() if u > now)
                out["auth_blocks_active"] += sum(1 for u in sh.blocks.values() if u > now)
                out["pike_bans_issued"] += sh.bans_issued
                out["pike_sources"] += len(sh.rates)
                out["auth_blocks_issued"] += sh.blocks_issued
                out["auth_fail_sources"] += len(sh.fails_src)
                out["auth_fail_users"] += len(sh.fails_user)
                out["evicted"] += sh.evicted
        return out

    def sizes(self):
        """Entries per table (for tests and memory accounting)."""
        return {name: sum(len(getattr(sh, name)) for sh in self._shards)
                for name in ("rates", "bans", "fails_src", "fails_user", "blocks")}
