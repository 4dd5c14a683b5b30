"""The registrar through the sans-I/O App (RFC 3261 §10.3)."""
import random

import pytest
from support import FakeCtx, InMemoryUA, digest_header

from ftsip import config
from ftsip.app import App
from ftsip.auth import User, UserStore
from ftsip.sip import parse

T0 = 1_000_000.0


def make_app(algorithms=("MD5", "SHA-256"), **reg):
    overrides = {("server", "domain"): ["example.com"], ("auth", "algorithms"): list(algorithms)}
    for k, v in reg.items():
        overrides[("registrar", k)] = v
    cfg = config.load(overrides=overrides)
    users = UserStore({u: User.from_password(u, "secret", "example.com") for u in ("alice", "bob", "carol")},
                      realm="example.com")
    app = App(cfg, users=users, secret=b"s" * 32, rng=random.Random(5))
    app.bind("127.0.0.1", 5060)
    ctx = FakeCtx(T0)
    app.attach(ctx, T0)
    return app, ctx


def send(app, ctx, data, addr, now=T0):
    app.on_datagram(data, addr, now, ctx)
    out = ctx.take()
    assert len(out) == 1, out
    return parse(out[0][0])


def register(app, ctx, ua, now=T0, password=None, algorithm="MD5", **kw):
    """The whole dance: REGISTER, 401, REGISTER with credentials. Returns the final response."""
    r = send(app, ctx, ua.register(**kw), ua.addr, now)
    assert r.status == 401
    ch = [v for v in r.get_all("www-authenticate") if f"algorithm={algorithm}" in v][0]
    kw.pop("cseq", None)
    auth = digest_header(ch, ua.user, password or ua.password, "REGISTER", f"sip:{ua.domain}")
    return send(app, ctx, ua.register(auth=auth, **kw), ua.addr, now)


def contacts(resp):
    return {c.uri.raw: c.expires for c in resp.contacts}


@pytest.mark.parametrize("alg", ["MD5", "SHA-256"])
@pytest.mark.parametrize("offered", [("MD5", "SHA-256"), ("SHA-256", "MD5")])
def test_challenge_then_register(alg, offered):
    app, ctx = make_app(offered)
    ua = InMemoryUA("alice")
    r = register(app, ctx, ua, expires=600, algorithm=alg)
    assert r.status == 200
    assert contacts(r) == {"sip:alice@192.0.2.10:5062": 600}
    assert r.get("date")
    [b] = app.location.lookup("alice@example.com", T0 + 1)
    assert b.received == ("192.0.2.10", 5062) and b.call_id == ua.call_id
    assert app.location.bindings() == 1


def test_wrong_password_is_401_and_no_binding():
    app, ctx = make_app()
    r = register(app, ctx, InMemoryUA("alice"), password="guess", expires=600)
    assert r.status == 401
    assert app.location.lookup("alice@example.com", T0) == ()


def test_unknown_user_looks_like_wrong_password():
    app, ctx = make_app()
    a = register(app, ctx, InMemoryUA("mallory"), expires=600)
    b = register(app, ctx, InMemoryUA("alice"), password="guess", expires=600)
    assert a.status == b.status == 401
    assert [h[1] for h in a.headers] == [h[1] for h in b.headers]


def test_stale_nonce_gets_stale_true():
    app, ctx = make_app()
    ua = InMemoryUA("alice")
    r = send(app, ctx, ua.register(expires=600), ua.addr, T0)
    ch = [v for v in r.get_all("www-authenticate") if "MD5" in v][0]
    auth = digest_header(ch, "alice", "secret", "REGISTER", "sip:example.com")
    r = send(app, ctx, ua.register(auth=auth, expires=600), ua.addr, T0 + 3600)
    assert r.status == 401
    assert all("stale=true" in v.replace(" ", "").lower() for v in r.get_all("www-authenticate"))


def test_cannot_register_someone_elses_aor():
    app, ctx = make_app()
    r = register(app, ctx, InMemoryUA("alice"), to_user="bob", expires=600)
    assert r.status == 403
    assert app.location.lookup("bob@example.com", T0) == ()


def test_third_party_allowed_by_config():
    app, ctx = make_app(allow_third_party=True)
    assert register(app, ctx, InMemoryUA("alice"), to_user="bob", expires=600).status == 200
    assert len(app.location.lookup("bob@example.com", T0)) == 1


def test_423_and_max_clamp_and_per_contact_expires():
    app, ctx = make_app(min_expires=60, max_expires=3600)
    ua = InMemoryUA("alice")
    r = register(app, ctx, ua, expires=30)
    assert r.status == 423 and r.get("min-expires") == "60"
    r = register(app, ctx, ua, expires=99999)
    assert contacts(r) == {"sip:alice@192.0.2.10:5062": 3600}
    r = register(app, ctx, ua, expires=99999, contact_params=";expires=120")
    assert contacts(r) == {"sip:alice@192.0.2.10:5062": 120}


def test_default_expires_when_none_given():
    app, ctx = make_app(default_expires=900)
    assert contacts(register(app, ctx, InMemoryUA("alice"))) == {"sip:alice@192.0.2.10:5062": 900}


def test_refresh_unregister_and_fetch():
    app, ctx = make_app()
    ua = InMemoryUA("alice")
    register(app, ctx, ua, expires=600)
    r = register(app, ctx, ua, now=T0 + 100, expires=600)
    assert contacts(r) == {"sip:alice@192.0.2.10:5062": 600}
    r = register(app, ctx, ua, now=T0 + 200, contact="none")        # fetch
    assert contacts(r) == {"sip:alice@192.0.2.10:5062": 500}
    r = register(app, ctx, ua, now=T0 + 300, expires=0)
    assert r.status == 200 and r.contacts == []
    assert "alice@example.com" not in app.location
    assert app.location.bindings() == 0


def test_several_contacts_and_wildcard_unregister():
    app, ctx = make_app()
    ua = InMemoryUA("alice")
    r = register(app, ctx, ua, contact="<sip:alice@192.0.2.10:5062>;q=0.5, <sip:alice@192.0.2.11:5062>",
                 expires=600)
    assert len(r.contacts) == 2
    assert {c.q for c in r.contacts} == {0.5, None}
    r = register(app, ctx, ua, contact="*", expires=600)
    assert r.status == 400                       # * needs Expires: 0
    r = register(app, ctx, ua, contact="*", expires=0)
    assert r.status == 200 and r.contacts == []
    assert app.location.lookup("alice@example.com", T0) == ()


def test_out_of_order_cseq_does_not_overwrite_newer_state():
    app, ctx = make_app()
    ua = InMemoryUA("alice")
    register(app, ctx, ua, expires=600, cseq=10)
    r = register(app, ctx, ua, expires=0, cseq=5)     # an old un-register arriving late
    assert r.status == 500
    assert len(app.location.lookup("alice@example.com", T0)) == 1
    # another Call-ID (another phone restart) may always replace it
    r = register(app, ctx, ua, expires=0, cseq=1, call_id="other")
    assert r.status == 200
    assert app.location.lookup("alice@example.com", T0) == ()


def test_retransmitted_register_is_idempotent():
    app, ctx = make_app()
    ua = InMemoryUA("alice")
    r = send(app, ctx, ua.register(expires=600), ua.addr)
    ch = [v for v in r.get_all("www-authenticate") if "MD5" in v][0]
    data = ua.register(expires=600, auth=digest_header(ch, "alice", "secret", "REGISTER", "sip:example.com"))
    assert send(app, ctx, data, ua.addr).status == 200
    assert send(app, ctx, data, ua.addr, T0 + 1).status == 200


def test_max_contacts():
    app, ctx = make_app(max_contacts=2)
    ua = InMemoryUA("alice")
    r = register(app, ctx, ua, expires=600,
                 contact="<sip:a@192.0.2.1>, <sip:a@192.0.2.2>, <sip:a@192.0.2.3>")
    assert r.status == 503
    assert app.location.lookup("alice@example.com", T0) == ()


def test_instance_identifies_binding():
    app, ctx = make_app()
    ua = InMemoryUA("alice")
    inst = ';+sip.instance="<urn:uuid:00000000-0000-1000-8000-000A95A0E128>";reg-id=1'
    register(app, ctx, ua, contact="<sip:alice@192.0.2.10:5062>", contact_params=inst, expires=600)
    r = register(app, ctx, ua, contact="<sip:alice@198.51.100.1:7777>", contact_params=inst, expires=600)
    assert list(contacts(r)) == ["sip:alice@198.51.100.1:7777"]       # same instance: replaced, not added


def test_require_unknown_extension_is_420():
    app, ctx = make_app()
    ua = InMemoryUA("alice")
    r = send(app, ctx, ua.register(expires=600, extra=("Require: frobnicate",)), ua.addr)
    assert r.status == 420 and r.get("unsupported") == "frobnicate"     # before auth (§10.3 step 2)


def test_path_is_stored_and_echoed():
    app, ctx = make_app()
    ua = InMemoryUA("alice")
    r = register(app, ctx, ua, expires=600, extra=("Path: <sip:edge.example.com;lr>", "Supported: path"))
    assert [p.uri.host for p in r.paths] == ["edge.example.com"]
    [b] = app.location.lookup("alice@example.com", T0)
    assert b.path == ("<sip:edge.example.com;lr>",)


def test_jitter_shortens_within_bounds():
    app, ctx = make_app(expires_jitter=20, min_expires=60, max_contacts=100)
    seen = set()
    for i in range(20):
        ua = InMemoryUA(f"alice", port=6000 + i)
        ua.call_id = f"c{i}"
        r = register(app, ctx, ua, expires=1000)
        seen.add(contacts(r)[f"sip:alice@192.0.2.10:{6000 + i}"])
    assert all(800 <= e <= 1000 for e in seen) and len(seen) > 3


def test_other_domain_in_to_is_404():
    app, ctx = make_app(allow_third_party=True)
    ua = InMemoryUA("alice")
    data = ua.register(expires=600).replace(b"To: <sip:alice@example.com>", b"To: <sip:alice@elsewhere.net>")
    r = send(app, ctx, data, ua.addr)
    assert r.status in (401, 404)     # challenged first; with credentials:
    ch = [v for v in r.get_all("www-authenticate") if "MD5" in v][0]
    auth = digest_header(ch, "alice", "secret", "REGISTER", "sip:example.com")
    data = ua.register(expires=600, auth=auth).replace(b"To: <sip:alice@example.com>",
                                                       b"To: <sip:alice@elsewhere.net>")
    assert send(app, ctx, data, ua.addr).status == 404


def test_bindings_expire_on_time_through_the_collector():
    app, ctx = make_app(min_expires=1, max_contacts=100)
    for i in range(50):
        ua = InMemoryUA(f"alice", port=7000 + i)
        ua.call_id = f"e{i}"
        register(app, ctx, ua, expires=10 + (i % 5))
    assert app.location.bindings() == 50
    t = T0
    while t < T0 + 16:
        t += 0.25
        app.on_tick(t, ctx)
        live = len(app.location.lookup("alice@example.com", t))
        expected = sum(1 for i in range(50) if T0 + 10 + (i % 5) > t)
        assert live == expected
        # the collector is at most one second behind
        assert app.location.bindings() <= sum(1 for i in range(50) if T0 + 10 + (i % 5) > t - 1.01)
    assert app.location.bindings() == 0 and app.location.aors() == 0


def test_default_offers_md5_only():
    cfg = config.load(overrides={("server", "domain"): ["example.com"]})
    app = App(cfg, users=UserStore(realm="example.com"), secret=b"s" * 32)
    app.bind("127.0.0.1", 5060)
    ctx = FakeCtx(T0)
    app.attach(ctx, T0)
    r = send(app, ctx, InMemoryUA("alice").register(expires=600), ("192.0.2.10", 5062))
    assert [("MD5" in v, "SHA-256" in v) for v in r.get_all("www-authenticate")] == [(True, False)]
