"""The Guard (ftsip.ops.guard) alone and inside the sans-I/O App: pike bans, brute-force throttling, scanner
refusal, overload shedding, bounded memory, thread safety (issue 6)."""
import logging
import random
import threading
import tracemalloc

import pytest
from support import FakeCtx, InMemoryUA, digest_header, options

from ftsip import config
from ftsip.app import App
from ftsip.auth import User, UserStore
from ftsip.ops.guard import OVERLOAD_HOLD, SOURCE_FACTOR, Guard, source_key
from ftsip.sip import parse

T0 = 1_000_000.0


def cfg(**sec):
    return config.load(overrides={("server", "domain"): ["example.com"],
                                  **{("security", k): v for k, v in sec.items()}})


def req(method="REGISTER", to_tag=None, ua=None):
    data = options(("127.0.0.1", 5060), extra=f"User-Agent: {ua}\r\n" if ua else "")
    data = data.replace(b"OPTIONS", method.encode())
    if to_tag:
        data = data.replace(b"To: <sip:127.0.0.1:5060>", f"To: <sip:127.0.0.1:5060>;tag={to_tag}".encode())
    return parse(data)


# ---- pike ------------------------------------------------------------------------------------------------------------
def test_pike_off_by_default_allows_everything():
    g = Guard(cfg())
    assert all(g.allow_datagram(("127.0.0.1", 5000), T0) for _ in range(10_000))
    assert g.sizes()["rates"] == 0


def test_pike_bans_a_flooding_source_and_the_ban_expires(caplog):
    g = Guard(cfg(pike_rate=50, pike_ban=10.0))
    src = ("198.51.100.7", 5060)
    # 40/s for 3 s: under the rate, never banned
    for i in range(120):
        assert g.allow_datagram(src, T0 + i / 40)
    # right after that, the last second's 40 count: the 12th of a burst makes it more than 50 per second
    assert [g.allow_datagram(("198.51.100.77", 1), T0 + i / 40) for i in range(120)].count(False) == 0
    assert [g.allow_datagram(("198.51.100.77", 1), T0 + 3.0 + i * 0.0025) for i in range(20)].index(False) == 11
    # after 2 s of quiet, 200 in 0.5 s: the 51st is dropped and the source banned
    t = T0 + 5.0
    with caplog.at_level(logging.WARNING, logger="ftsip"):
        ok = [g.allow_datagram(src, t + i * 0.0025) for i in range(200)]
    assert ok.index(False) == 50
    assert not any(ok[50:])
    # one log line per ban, naming the address
    bans = [r for r in caplog.records if "pike" in r.getMessage() and "198.51.100.7 " in r.getMessage()]
    assert len(bans) == 1 and "198.51.100.7" in bans[0].getMessage()
    # another source is not affected
    assert g.allow_datagram(("198.51.100.8", 5060), t + 0.5)
    # still banned while the ban lasts, even if quiet; served again after it
    assert not g.allow_datagram(src, t + 9.0)
    assert g.allow_datagram(src, t + 10.6)
    st = g.stats(now=t + 11)
    assert st["pike_bans_issued"] == 2 and st["pike_bans_active"] == 0


def test_pike_sliding_window_catches_a_burst_across_a_window_boundary():
    g = Guard(cfg(pike_rate=100))
    src = ("192.0.2.1", 1)
    # 90 at the end of one window and 90 at the start of the next: 180 within ~0.2 s
    ok = [g.allow_datagram(src, T0 + 0.9 + i * 0.001) for i in range(90)]
    ok += [g.allow_datagram(src, T0 + 1.0 + i * 0.001) for i in range(90)]
    assert False in ok


def test_loopback_is_not_exempt_unless_configured():
    g = Guard(cfg(pike_rate=10))
    assert False in [g.allow_datagram(("127.0.0.1", 5), T0) for _ in range(20)]
    g = Guard(cfg(pike_rate=10), exempt=["loopback", "192.0.2.9"])
    for ip in ("127.0.0.1", "127.0.0.2", "::1", "192.0.2.9"):
        assert all(g.allow_datagram((ip, 5), T0) for _ in range(50))
    assert False in [g.allow_datagram(("192.0.2.10", 5), T0) for _ in range(20)]


def test_ipv6_sources_are_counted_per_64():
    assert source_key("2001:db8::1") == source_key("2001:db8::ffff:1") != source_key("2001:db8:0:1::1")
    g = Guard(cfg(pike_rate=10))
    ok = [g.allow_datagram((f"2001:db8::{i:x}", 5, 0, 0), T0) for i in range(1, 30)]
    assert False in ok                                  # hopping inside the /64 does not help
    assert g.allow_datagram(("2001:db8:0:1::1", 5, 0, 0), T0)


def test_a_spoofed_flood_cannot_push_out_a_ban_and_memory_stays_bounded():
    g = Guard(cfg(pike_rate=5, pike_ban=60.0), shards=8, max_sources=800, max_bans=80)
    attacker = ("203.0.113.5", 5060)
    while g.allow_datagram(attacker, T0):
        pass
    rnd = random.Random(1)
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    for i in range(200_000):                            # one datagram each from 200k spoofed sources
        g.allow_datagram((f"10.{rnd.randrange(256)}.{rnd.randrange(256)}.{rnd.randrange(256)}", 5060),
                         T0 + i * 1e-5)
    grown = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    sizes = g.sizes()
    assert sizes["rates"] <= 800 and sizes["bans"] <= 80
    assert grown < 800 * 1024, grown                    # ~1 KB per entry at most, whatever the flood size
    assert not g.allow_datagram(attacker, T0 + 3.0)     # still banned


# ---- brute force -----------------------------------------------------------------------------------------------------
def fail(g, user, ip, n, now=T0):
    for _ in range(n):
        assert g.auth_blocked(user, (ip, 5060), now) is None
        g.auth_failed(user, (ip, 5060), now)


@pytest.mark.parametrize("status", [403, 429])
def test_user_from_one_source_is_throttled_after_the_limit(status):
    g = Guard(cfg(auth_fail_limit=5, auth_fail_window=60.0, auth_fail_status=status))
    fail(g, "alice", "198.51.100.1", 5)
    refusal = g.auth_blocked("alice", ("198.51.100.1", 5061), T0 + 1)
    assert refusal is not None
    code, reason, headers = refusal
    assert code == status and reason == {403: "Forbidden", 429: "Too Many Requests"}[status]
    assert headers == ("Retry-After: 59",)
    # the same user from another address is never locked out; another user from the attacker's address neither
    assert g.auth_blocked("alice", ("198.51.100.2", 5060), T0 + 1) is None
    assert g.auth_blocked("bob", ("198.51.100.1", 5060), T0 + 1) is None
    # the block ends with the window
    assert g.auth_blocked("alice", ("198.51.100.1", 5060), T0 + 60.5) is None


def test_unknown_and_existing_users_are_throttled_alike():
    g = Guard(cfg(auth_fail_limit=3))
    fail(g, "alice", "192.0.2.1", 3)            # exists (the guard never asks)
    fail(g, "nosuchuser", "192.0.2.1", 3)
    assert g.auth_blocked("alice", ("192.0.2.1", 1), T0) == g.auth_blocked("nosuchuser", ("192.0.2.1", 1), T0)


def test_success_clears_the_user_counter_but_not_the_source_counter():
    g = Guard(cfg(auth_fail_limit=4))
    fail(g, "alice", "192.0.2.1", 3)
    g.auth_succeeded("alice", ("192.0.2.1", 1), T0)
    fail(g, "alice", "192.0.2.1", 3)             # 3 more: would have been blocked at 4 without the success
    assert g.auth_blocked("alice", ("192.0.2.1", 1), T0) is None
    assert g.sizes()["fails_src"] == 1           # the source counter went on (6 of 20)


def test_password_spraying_from_one_source_blocks_the_source():
    limit = 4
    g = Guard(cfg(auth_fail_limit=limit))
    users = [f"u{i}" for i in range(limit * SOURCE_FACTOR)]
    for u in users:                              # one try per user: no user counter reaches the limit
        assert g.auth_blocked(u, ("192.0.2.66", 1), T0) is None
        g.auth_failed(u, ("192.0.2.66", 1), T0)
    assert g.auth_blocked("someone-else", ("192.0.2.66", 1), T0)[0] == 403
    assert g.auth_blocked(None, ("192.0.2.66", 1), T0)[0] == 403
    assert g.auth_blocked("u0", ("192.0.2.67", 1), T0) is None


def test_failures_outside_the_window_do_not_add_up():
    g = Guard(cfg(auth_fail_limit=3, auth_fail_window=10.0))
    fail(g, "alice", "192.0.2.1", 2, T0)
    fail(g, "alice", "192.0.2.1", 2, T0 + 11)     # a new window
    assert g.auth_blocked("alice", ("192.0.2.1", 1), T0 + 11) is None


def test_throttle_off_with_limit_zero():
    g = Guard(cfg(auth_fail_limit=0))
    fail(g, "alice", "192.0.2.1", 1000)
    assert g.sizes()["fails_user"] == 0


def test_a_spoofed_failure_flood_keeps_memory_bounded_and_blocks_in_place():
    g = Guard(cfg(auth_fail_limit=3), shards=8, max_failures=400, max_bans=40)
    fail(g, "alice", "203.0.113.9", 3)
    for i in range(100_000):
        g.auth_failed(f"user{i}" + "x" * 500, (f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 5060), T0 + 1)
    sizes = g.sizes()
    assert sizes["fails_user"] <= 400 and sizes["fails_src"] <= 400 and sizes["blocks"] <= 40
    assert max(len(k[0]) for sh in g._shards for k in sh.fails_user) <= 64     # long names truncated
    assert g.auth_blocked("alice", ("203.0.113.9", 1), T0 + 2) is not None


# ---- scanners and overload -------------------------------------------------------------------------------------------
def test_scanner_user_agents_are_refused_with_403_only_when_configured():
    ctx = FakeCtx()
    off = Guard(cfg())
    assert off.check_request(req("OPTIONS", ua="friendly-scanner"), ("192.0.2.1", 1), T0, ctx) is None
    g = Guard(cfg(scanner_user_agents=["friendly-scanner", "SIPVicious"]))
    assert g.check_request(req("OPTIONS", ua="sipvicious 0.3.3"), ("192.0.2.1", 1), T0, ctx)[0] == 403
    assert g.check_request(req("REGISTER", ua="Friendly-Scanner"), ("192.0.2.1", 1), T0, ctx)[0] == 403
    assert g.check_request(req("REGISTER", ua="Linphone/5"), ("192.0.2.1", 1), T0, ctx) is None
    assert g.check_request(req("REGISTER"), ("192.0.2.1", 1), T0, ctx) is None
    assert ctx.stats.counters["guard.scanner"] == 2


def test_overload_sheds_new_invite_and_register_only_while_lagging():
    g = Guard(cfg(overload_lag=0.5, retry_after=7))
    ctx = FakeCtx()
    src = ("192.0.2.1", 1)
    for m in ("REGISTER", "INVITE", "ACK", "BYE", "CANCEL", "OPTIONS"):
        assert g.check_request(req(m), src, T0, ctx) is None
    ctx.lag = 0.8
    assert g.check_request(req("REGISTER"), src, T0, ctx) is None       # lagging, but not for long yet
    t = T0 + OVERLOAD_HOLD
    for m in ("REGISTER", "INVITE"):
        assert g.check_request(req(m), src, t, ctx) == (503, "Service Unavailable", ("Retry-After: 7",))
    for m in ("ACK", "BYE", "CANCEL", "OPTIONS", "PRACK"):
        assert g.check_request(req(m, to_tag="x1"), src, t, ctx) is None
    assert g.check_request(req("INVITE", to_tag="x1"), src, t, ctx) is None     # a re-INVITE: a call in progress
    ctx.lag = 0.1                                                                  # recovered
    assert g.check_request(req("REGISTER"), src, t + 1, ctx) is None
    ctx.lag = 0.9                                                                  # a relapse soon after: at once
    assert g.check_request(req("REGISTER"), src, t + 2, ctx)[0] == 503
    assert ctx.stats.counters["guard.shed"] == 3
    ctx.lag = 0.1
    assert g.check_request(req("REGISTER"), src, t + 3, ctx) is None
    ctx.lag = 0.9                                                                  # much later: the hold again
    assert g.check_request(req("REGISTER"), src, t + 30, ctx) is None
    assert g.check_request(req("REGISTER"), src, t + 30 + OVERLOAD_HOLD, ctx)[0] == 503
    # each worker is judged by its own queue
    other = FakeCtx(wid=1)
    assert g.check_request(req("REGISTER"), src, t + 31, other) is None
    never = Guard(cfg(overload_lag=0.0))
    ctx.lag = 100.0
    assert never.check_request(req("REGISTER"), src, T0, ctx) is None
    assert never.check_request(req("REGISTER"), src, T0 + 100, ctx) is None


def test_a_stall_that_drains_within_the_hold_sheds_nothing():
    g = Guard(cfg(overload_lag=0.5))
    ctx = FakeCtx()
    # a 2 s stall: the backlog is worked off in 0.6 s, its lag falling from 2 s to 0
    for i in range(600):
        ctx.lag = 2.0 * (1 - i / 600)
        assert g.check_request(req("REGISTER"), ("192.0.2.1", 1), T0 + i / 1000, ctx) is None


def test_reconfigure_takes_effect_and_keeps_state():
    g = Guard(cfg(pike_rate=10))
    src = ("192.0.2.1", 1)
    while g.allow_datagram(src, T0):
        pass
    g.reconfigure(cfg(pike_rate=0, overload_lag=0.1))
    assert g.allow_datagram(src, T0)                    # pike off now
    ctx = FakeCtx()
    ctx.lag = 0.2
    assert g.check_request(req(), src, T0, ctx) is None
    assert g.check_request(req(), src, T0 + OVERLOAD_HOLD, ctx)[0] == 503
    g.cfg = cfg(pike_rate=10)                           # swapping the reference works too
    assert not g.allow_datagram(src, T0 + 1)            # the ban was kept
    assert g.check_request(req(), src, T0, ctx) is None


# ---- thread safety ---------------------------------------------------------------------------------------------------
def test_concurrent_workers_keep_exact_failure_counts():
    limit = 4 * 3000 + 1
    g = Guard(cfg(auth_fail_limit=limit), shards=4)
    errors = []

    def work(tid):
        try:
            for i in range(3000):
                g.auth_failed("alice", ("192.0.2.1", tid), T0)
                g.auth_failed(f"u{tid}-{i}", (f"10.0.{tid}.{i % 200}", 1), T0)
                g.allow_datagram(("192.0.2.1", tid), T0)
        except Exception as e:          # pragma: no cover - the assertion below reports it
            errors.append(e)
    ts = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors
    key = ("alice", source_key("192.0.2.1"))
    [count] = [sh.fails_user[key][1] for sh in g._shards if key in sh.fails_user]
    assert count == 4 * 3000                            # the slow paths are under the shard lock: nothing lost


# ---- through the App -------------------------------------------------------------------------------------------------
def make_app(**sec):
    users = UserStore({u: User.from_password(u, "secret", "example.com") for u in ("alice", "bob")},
                      realm="example.com")
    c = cfg(**sec)
    app = App(c, users=users, secret=b"s" * 32, rng=random.Random(5), guard=Guard(c))
    app.bind("127.0.0.1", 5060)
    ctx = FakeCtx(T0)
    app.attach(ctx, T0)
    return app, ctx


class Spy:
    """Stands in for the app's Authenticator: records (or forbids) digest checks."""

    def __init__(self, real, forbid=False):
        self.real = real
        self.forbid = forbid
        self.calls = 0

    def check(self, *a, **k):
        if self.forbid and a[0]:                       # credentials: a digest would be computed
            pytest.fail("digest work while it should have been refused")
        self.calls += 1
        return self.real.check(*a, **k)

    def __getattr__(self, name):
        return getattr(self.real, name)


def exchange(app, ctx, data, addr, now=T0):
    app.on_datagram(data, addr, now, ctx)
    out = ctx.take()
    return parse(out[0][0]) if out else None


def attempt(app, ctx, ua, password, now=T0):
    r = exchange(app, ctx, ua.register(expires=600), ua.addr, now)
    assert r.status == 401
    ch = [v for v in r.get_all("www-authenticate") if "algorithm=MD5" in v][0]
    auth = digest_header(ch, ua.user, password, "REGISTER", f"sip:{ua.domain}")
    return exchange(app, ctx, ua.register(auth=auth, expires=600), ua.addr, now)


def test_app_throttles_without_verifying_and_alike_for_unknown_users():
    app, ctx = make_app(auth_fail_limit=3, auth_fail_status=429)
    attacker = InMemoryUA("alice", host="203.0.113.1")
    ghost = InMemoryUA("nosuchuser", host="203.0.113.1")
    for _ in range(3):
        assert attempt(app, ctx, attacker, "guess").status == 401
        assert attempt(app, ctx, ghost, "guess").status == 401
    real = app.auth
    app.auth = Spy(real, forbid=True)
    right = attempt(app, ctx, attacker, "secret")              # the right password, after the limit
    wrong = attempt(app, ctx, ghost, "secret")                 # (both refused without verifying)
    assert (right.status, right.reason, right.get("retry-after")) == \
        (wrong.status, wrong.reason, wrong.get("retry-after")) == (429, "Too Many Requests", "300")
    assert not app.location.lookup("alice@example.com", T0)
    # the real alice, from her own address, registers fine
    app.auth = real
    assert attempt(app, ctx, InMemoryUA("alice", host="192.0.2.50"), "secret").status == 200
    assert ctx.stats.counters["auth.throttled"] == 2


def test_app_sheds_register_before_digest_and_location_but_serves_bye_and_options():
    app, ctx = make_app(overload_lag=0.5, retry_after=3)
    ua = InMemoryUA("alice")
    assert attempt(app, ctx, ua, "secret").status == 200        # registered before the overload
    ctx.lag = 2.0               # lagging from T0 (seen with this OPTIONS, still answered) until T0 + 1.5
    assert exchange(app, ctx, options(("127.0.0.1", 5060)), ("192.0.2.9", 5060)).status == 200
    real = app.auth
    app.auth = Spy(real, forbid=True)
    r = exchange(app, ctx, ua.register(expires=600), ua.addr, T0 + 1.5)
    assert (r.status, r.get("retry-after")) == (503, "3")
    r = exchange(app, ctx, options(("127.0.0.1", 5060)), ("192.0.2.9", 5060))
    assert r.status == 200                                     # OPTIONS still answered
    bye = options(("127.0.0.1", 5060), uri="sip:bob@example.com").replace(b"OPTIONS", b"BYE")
    bye = bye.replace(b"To: <sip:bob@example.com>", b"To: <sip:bob@example.com>;tag=t1")
    r = exchange(app, ctx, bye, ("192.0.2.9", 5060))
    assert r is None or r.status != 503                        # BYE goes through the proxy, never shed
    assert len(app.location.lookup("alice@example.com", T0)) == 1


def test_app_under_overload_still_serves_a_call_in_progress():
    app, ctx = make_app(overload_lag=0.5)
    assert attempt(app, ctx, InMemoryUA("alice"), "secret").status == 200
    caller = ("198.51.100.20", 5070)
    invite = ("INVITE sip:alice@example.com SIP/2.0\r\n"
              "Via: SIP/2.0/UDP 198.51.100.20:5070;branch=z9hG4bKcall1;rport\r\nMax-Forwards: 70\r\n"
              "From: <sip:carol@elsewhere.example>;tag=c1\r\nTo: <sip:alice@example.com>\r\n"
              "Call-ID: call1@198.51.100.20\r\nCSeq: 1 INVITE\r\nContact: <sip:carol@198.51.100.20:5070>\r\n"
              "Content-Length: 0\r\n\r\n").encode()
    app.on_datagram(invite, caller, T0, ctx)
    out = ctx.take()
    assert any(parse(d).is_request and addr == ("192.0.2.10", 5062) for d, addr in out)     # forwarded to alice
    ctx.lag = 3.0                                                                   # overloaded from now on
    app.on_datagram(options(("127.0.0.1", 5060)), ("192.0.2.9", 5060), T0 + 0.1, ctx)
    ctx.take()
    t = T0 + 0.1 + OVERLOAD_HOLD
    # a new INVITE is shed ...
    other = invite.replace(b"call1@", b"call2@").replace(b"z9hG4bKcall1", b"z9hG4bKcall2")
    assert exchange(app, ctx, other, caller, t).status == 503
    # ... but the retransmission of the call in progress is absorbed by its transaction, and its CANCEL served
    app.on_datagram(invite, caller, t, ctx)
    assert [parse(d).status for d, a in ctx.take() if a == caller] == [100]
    cancel = invite.replace(b"INVITE sip:", b"CANCEL sip:").replace(b"CSeq: 1 INVITE", b"CSeq: 1 CANCEL")
    app.on_datagram(cancel, caller, t, ctx)
    assert 200 in [parse(d).status for d, a in ctx.take() if a == caller and not parse(d).is_request]


def test_app_drops_banned_sources_before_parsing():
    app, ctx = make_app(pike_rate=20)
    src = ("198.51.100.99", 5060)
    answers = sum(exchange(app, ctx, options(("127.0.0.1", 5060), branch=f"z9hG4bK{i}"), src) is not None
                  for i in range(100))
    assert 15 <= answers <= 21
    assert ctx.stats.counters["drops.banned"] == 100 - answers
    assert exchange(app, ctx, b"garbage that would be a parse error", src) is None
    assert "drops.unparseable" not in ctx.stats.counters
