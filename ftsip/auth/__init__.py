"""ftsip.auth: server-side digest authentication (RFC 2617, RFC 7616, RFC 8760) and the in-memory user store.

Sans-I/O: no sockets, no threads started, no clock reads (``now`` is an argument everywhere).

- :mod:`.digest` -- ``ha1``, ``verify``, ``challenge_headers`` (MD5, SHA-256, their -sess variants; qop=auth and
  qop-less).
- :mod:`.nonce` -- ``NonceFactory`` (stateless HMAC + timestamp nonces: VALID / STALE / INVALID) and
  ``NonceCounter`` (lock-striped nonce-count replay tracking).
- :mod:`.users` -- ``User``, ``UserStore`` (CSV / SQLite -> dict, atomic swap, ``reload_if_changed``),
  ``LoadProblem``, ``UserStoreError``; :mod:`.userdb` -- SQLite admin functions for the CLI and
  ``SqliteUserLookup`` (a query per lookup, the benchmark baseline).
- :mod:`.authenticator` -- ``Authenticator.check(...) -> AuthResult`` and ``Authenticator.challenge(now)``.

Typical wiring (the runtime owns the secret, the clock and the reload timer)::

    store = UserStore.from_files(["users.csv"], realm)          # log each of store.problems
    auth = Authenticator(store, NonceFactory(secret, 300), realm, ("SHA-256", "MD5"), qop=True,
                         nonce_counter=NonceCounter(100_000, 300))
    res = auth.check(request.authorization, request.method, request.uri, now)
    if not res.ok:  # 401 with one WWW-Authenticate per value
        values = auth.challenge(now, stale=res.stale)
"""

from .authenticator import REASONS, AuthResult, Authenticator
from .digest import challenge_headers, ha1, verify
from .nonce import NonceCounter, NonceFactory, NonceStatus
from .userdb import SqliteUserLookup, add_user, import_csv, list_users, remove_user, set_enabled
from .users import LoadProblem, User, UserStore, UserStoreError

__all__ = [
    "REASONS",
    "AuthResult",
    "Authenticator",
    "LoadProblem",
    "NonceCounter",
    "NonceFactory",
    "NonceStatus",
    "SqliteUserLookup",
    "User",
    "UserStore",
    "UserStoreError",
    "add_user",
    "challenge_headers",
    "ha1",
    "import_csv",
    "list_users",
    "remove_user",
    "set_enabled",
    "verify",
]
