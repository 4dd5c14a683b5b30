"""The Authenticator facade: a phone's round trip, every refusal reason, no user enumeration."""

import pytest

import ftsip.auth.authenticator as authmod
from ftsip.auth import Authenticator, NonceCounter, NonceFactory, User, UserStore

from .helpers import Credentials, answer, client_response, parse_challenge

REALM = "example.com"
T0 = 1_700_000_000.0


@pytest.fixture
def store():
    return UserStore({
        "alice": User.from_password("alice", "secret", REALM, voicemail="sip:vm@example.com"),
        "mallory": User.from_password("mallory", "pw", REALM, enabled=False),
        "md5only": User.from_password("md5only", "pw", REALM, algorithms=("MD5",)),
    }, realm=REALM)


@pytest.fixture
def auth(store):
    return Authenticator(store, NonceFactory(b"s" * 32, lifetime=60), REALM, nonce_counter=NonceCounter(1000, 60))


def challenge_for(auth, alg="SHA-256", now=T0, **kw):
    values = auth.challenge(now, **kw)
    return next(v for v in values if parse_challenge(v)["algorithm"] == alg)


@pytest.mark.parametrize("alg", ["SHA-256", "MD5"])
def test_round_trip(auth, alg):
    values = auth.challenge(T0)
    assert [parse_challenge(v)["algorithm"] for v in values] == ["SHA-256", "MD5"]
    cred = answer(challenge_for(auth, alg), "alice", "secret", "REGISTER", "sip:example.com")
    res = auth.check([cred], "REGISTER", "sip:example.com", T0 + 1)
    assert res.ok and res.username == "alice" and res.reason == "ok" and res.algorithm == alg
    assert res.user.voicemail == "sip:vm@example.com"


def test_no_credentials_and_other_realm(auth):
    assert auth.check([], "REGISTER", "sip:example.com", T0).reason == "no-credentials"
    assert auth.check(None, "REGISTER", "sip:example.com", T0).reason == "no-credentials"
    other = answer(challenge_for(auth), "alice", "secret")
    other.params["realm"] = "elsewhere.org"
    res = auth.check([other], "REGISTER", "sip:example.com", T0)
    assert (res.ok, res.reason) == (False, "unknown-realm")
    assert auth.check([Credentials("Basic", {"realm": REALM})], "REGISTER", "x", T0).reason == "unknown-realm"


def test_picks_our_realm_among_several(auth):
    ours = answer(challenge_for(auth), "alice", "secret")
    theirs = Credentials("Digest", {**ours.params, "realm": "upstream.net", "response": "0" * 64})
    assert auth.check([theirs, ours], "REGISTER", "sip:example.com", T0).ok


def test_wrong_password_and_unknown_user_look_identical(auth, monkeypatch):
    calls = []
    real_verify = authmod.verify

    def counting_verify(*a, **kw):
        calls.append(a[2])
        return real_verify(*a, **kw)

    monkeypatch.setattr(authmod, "verify", counting_verify)
    ch = challenge_for(auth)
    wrong = auth.check([answer(ch, "alice", "guess")], "REGISTER", "sip:example.com", T0)
    unknown = auth.check([answer(ch, "nosuchuser", "guess")], "REGISTER", "sip:example.com", T0)
    disabled = auth.check([answer(ch, "mallory", "pw")], "REGISTER", "sip:example.com", T0)
    no_ha1 = auth.check([answer(ch, "md5only", "pw")], "REGISTER", "sip:example.com", T0)  # SHA-256 answer
    results = [wrong, unknown, disabled, no_ha1]
    assert [r.reason for r in results] == ["bad-response", "unknown-user", "disabled-user", "no-ha1"]
    # what the caller turns into the reply (status and challenge) is the same for all of them
    assert {(r.ok, r.stale) for r in results} == {(False, False)}
    # each computed exactly one full SHA-256 digest (a dummy HA1 when there is no real one)
    assert len(calls) == 4 and all(len(h) == 64 for h in calls)
    assert len(set(calls[1:])) == 1 and calls[0] != calls[1]


def test_md5_only_user_can_answer_md5(auth):
    cred = answer(challenge_for(auth, "MD5"), "md5only", "pw")
    assert auth.check([cred], "REGISTER", "sip:example.com", T0).ok


def test_forged_nonce_is_bad_nonce(auth):
    ch = parse_challenge(challenge_for(auth))
    nonce = ch["nonce"]
    forged = nonce[:10] + ("A" if nonce[10] != "A" else "B") + nonce[11:]
    challenge = f'Digest realm="{REALM}", nonce="{forged}", algorithm=SHA-256, qop="auth"'
    res = auth.check([answer(challenge, "alice", "secret")], "REGISTER", "sip:example.com", T0)
    assert (res.ok, res.stale, res.reason) == (False, False, "bad-nonce")
    res = auth.check([answer(challenge.replace(forged, "dcd98b7102dd2f0e8b11d0f600bfb0c093"), "alice", "secret")],
                     "REGISTER", "sip:example.com", T0)
    assert res.reason == "bad-nonce"


def test_stale_nonce_with_right_digest_is_stale(auth):
    cred = answer(challenge_for(auth, now=T0), "alice", "secret")
    res = auth.check([cred], "REGISTER", "sip:example.com", T0 + 61)
    assert (res.ok, res.stale, res.reason) == (False, True, "stale-nonce")
    # ... and with a wrong password it is just a wrong password (stale only when the digest was right)
    bad = answer(challenge_for(auth, now=T0), "alice", "nope")
    res = auth.check([bad], "REGISTER", "sip:example.com", T0 + 61)
    assert (res.ok, res.stale, res.reason) == (False, False, "bad-response")
    # the new challenge says stale=true
    assert all("stale=true" in v for v in auth.challenge(T0 + 61, stale=True))


def test_nonce_count_replay(auth):
    ch = challenge_for(auth)
    first = answer(ch, "alice", "secret", nc=1)
    assert auth.check([first], "REGISTER", "sip:example.com", T0).ok
    res = auth.check([first], "REGISTER", "sip:example.com", T0 + 1)  # the same request replayed
    assert (res.ok, res.stale, res.reason) == (False, True, "replay")
    assert auth.check([answer(ch, "alice", "secret", nc=2)], "REGISTER", "sip:example.com", T0 + 2).ok
    # a forged request must not advance the counter
    assert auth.check([answer(ch, "alice", "wrong", nc=9)], "REGISTER", "sip:example.com", T0 + 3).reason == \
        "bad-response"
    assert auth.check([answer(ch, "alice", "secret", nc=3)], "REGISTER", "sip:example.com", T0 + 3).ok


def test_without_counter_replay_is_accepted(store):
    a = Authenticator(store, NonceFactory(b"s" * 32, 60), REALM)
    cred = answer(a.challenge(T0)[0], "alice", "secret")
    assert a.check([cred], "REGISTER", "sip:example.com", T0).ok
    assert a.check([cred], "REGISTER", "sip:example.com", T0).ok


def test_uri_check_off_by_default_like_sipp(store, auth):
    # SIPp puts uri=sip:REMOTE_IP:PORT in the digest whatever the Request-URI is
    cred = answer(challenge_for(auth), "alice", "secret", "INVITE", "sip:127.0.0.1:5060")
    assert auth.check([cred], "INVITE", "sip:bob@example.com", T0).ok
    strict = Authenticator(store, auth.nonces, REALM, check_uri=True)
    res = strict.check([cred], "INVITE", "sip:bob@example.com", T0)
    assert res.reason == "uri-mismatch"
    good = answer(challenge_for(strict), "alice", "secret", "INVITE", "sip:bob@example.com")
    assert strict.check([good], "INVITE", "sip:bob@example.com", T0).ok


def test_bad_algorithm_and_qop_policy(store, auth):
    sha_only = Authenticator(store, auth.nonces, REALM, algorithms=("SHA-256",))
    cred = answer(challenge_for(auth, "MD5"), "alice", "secret")
    assert sha_only.check([cred], "REGISTER", "sip:example.com", T0).reason == "bad-algorithm"
    # qop required: a qop-less answer is refused
    ch = challenge_for(auth, "MD5")
    nonce = parse_challenge(ch)["nonce"]
    bare = Credentials("Digest", {"username": "alice", "realm": REALM, "nonce": nonce, "uri": "sip:example.com",
                                  "response": client_response("MD5", "alice", REALM, "secret", "REGISTER",
                                                              "sip:example.com", nonce)})
    assert auth.check([bare], "REGISTER", "sip:example.com", T0).reason == "bad-qop"
    # old-phone mode: challenges without qop, qop-less MD5 accepted
    legacy = Authenticator(store, auth.nonces, REALM, algorithms=("MD5",), qop=False)
    ch = legacy.challenge(T0)
    nonce2 = parse_challenge(ch[0])["nonce"]
    assert ch == [f'Digest realm="{REALM}", nonce="{nonce2}", algorithm=MD5']
    res = legacy.check([answer(ch[0], "alice", "secret")], "REGISTER", "sip:example.com", T0)
    assert res.ok
    assert legacy.check([bare], "REGISTER", "sip:example.com", T0).ok
    # auth-int is refused
    auth_int = answer(challenge_for(auth), "alice", "secret", qop="auth-int")
    assert auth.check([auth_int], "REGISTER", "sip:example.com", T0).reason == "bad-qop"


@pytest.mark.parametrize("override", [
    {"nc": "1"}, {"nc": "zzzzzzzz"}, {"nc": "0x000001"}, {"nc": "0000_001"}, {"cnonce": ""}, {"response": ""}, {"username": ""}, {"uri": None},
])
def test_malformed(auth, override):
    cred = answer(challenge_for(auth), "alice", "secret")
    params = {k: v for k, v in {**cred.params, **override}.items() if v is not None}
    res = auth.check([Credentials("Digest", params)], "REGISTER", "sip:example.com", T0)
    assert (res.ok, res.reason) == (False, "malformed")


def test_opaque_must_come_back(store):
    a = Authenticator(store, NonceFactory(b"s" * 32, 60), REALM, opaque="0paque")
    ch = a.challenge(T0)[0]
    assert 'opaque="0paque"' in ch
    assert a.check([answer(ch, "alice", "secret")], "REGISTER", "sip:example.com", T0).ok
    res = a.check([answer(ch, "alice", "secret", opaque="other")], "REGISTER", "sip:example.com", T0)
    assert res.reason == "malformed"


def test_sess_algorithm_when_offered(store):
    a = Authenticator(store, NonceFactory(b"s" * 32, 60), REALM, algorithms=("MD5-sess",))
    ch = a.challenge(T0)[0]
    assert "algorithm=MD5-sess" in ch
    assert a.check([answer(ch, "alice", "secret")], "REGISTER", "sip:example.com", T0).ok
    assert a.check([answer(ch, "alice", "nope")], "REGISTER", "sip:example.com", T0).reason == "bad-response"


def test_revoked_user_after_reload(tmp_path):
    f = tmp_path / "users.csv"
    f.write_text("username,password\nalice,secret\nbob,pw\n")
    store = UserStore.from_files([f], REALM)
    a = Authenticator(store, NonceFactory(b"s" * 32, 60), REALM)
    ch = a.challenge(T0)[0]
    assert a.check([answer(ch, "bob", "pw")], "REGISTER", "sip:example.com", T0).ok
    f.write_text("username,password\nalice,secret\n")
    assert store.reload_if_changed() == []
    assert a.check([answer(ch, "bob", "pw")], "REGISTER", "sip:example.com", T0).reason == "unknown-user"


def test_checks_from_four_threads_during_reloads(tmp_path):
    import sys
    import threading

    f = tmp_path / "users.csv"
    rows = "".join(f"user{i},pw{i}\n" for i in range(50))
    f.write_text("username,password\n" + rows)
    store = UserStore.from_files([f], REALM)
    a = Authenticator(store, NonceFactory(b"s" * 32, 60), REALM, nonce_counter=NonceCounter(10_000, 60))
    errors, oks = [], []
    stop = threading.Event()

    def phone(k):
        try:
            for i in range(300):
                user = f"user{(k * 7 + i) % 50}"
                ch = a.challenge(T0)[i % 2]
                res = a.check([answer(ch, user, "pw" + user[4:])], "REGISTER", "sip:example.com", T0)
                if not res.ok:
                    errors.append((user, res.reason))
            oks.append(k)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    def reloader():
        n = 0
        while not stop.is_set():
            n += 1
            f.write_text("username,password,team\n" + rows.replace("\n", f",t{n}\n"))  # same users, new file
            store.reload_if_changed(force=True)

    threads = [threading.Thread(target=phone, args=(k,)) for k in range(4)]
    r = threading.Thread(target=reloader)
    r.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    r.join()
    assert errors == [] and sorted(oks) == [0, 1, 2, 3]
    assert store.generation > 1
    if hasattr(sys, "_is_gil_enabled"):
        assert sys._is_gil_enabled() is False or "free-threading" not in sys.version
