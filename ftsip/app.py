"""The sans-I/O SIP core: one datagram in, datagrams out through ``ctx.send``; no sockets, no clock.

``App.on_datagram(data, addr, now, ctx)`` parses, answers what cannot be parsed (400/505/513 when a response can be
built, else a counted drop) and dispatches requests and responses; ``App.on_tick(now, ctx)`` advances the worker's
timers and does a bounded slice of background work. The runtime (threads or processes) supplies ``now`` and ``ctx``.
"""
import copy
import logging
import os

from ftsip import config as config_mod
from ftsip.auth import Authenticator, NonceCounter, NonceFactory, UserStore
from ftsip.location.service import LocationService
from ftsip.ops import log as oplog
from ftsip.ops.guard_api import NullGuard
from ftsip.proxy.proxy import Proxy
from ftsip.registrar.registrar import Registrar
from ftsip.sip import SipParseError, backend, make_response, parse, received_via, response_target, unescape
from ftsip.transaction import TERMINATED, TimerConfig, TransactionTable
from ftsip.dicts import get as dget

log = logging.getLogger("ftsip")

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, INFO, UPDATE, PRACK, SUBSCRIBE, NOTIFY, REFER, MESSAGE"


class WorkerState:
    """What the core keeps per worker (``ctx.state``): only that worker writes it."""

    __slots__ = ("loc", "seq")

    def __init__(self, loc):
        self.loc = loc
        self.seq = 0          # branch counter


class App:
    def __init__(self, config, users=None, location=None, secret=None, rng=None, resolver=None, guard=None):
        self.parent = None              # for_worker: the core this copy was made from
        self.generation = 0             # bumped by reconfigure; worker copies follow it
        self.cfg = config
        self.domains = frozenset(config.domains)
        self.host = None
        self.port = None
        self.via_port = None      # the port in our Via (process mode: the worker's own port)
        self.local_hosts = set(self.domains)
        self.users = users if users is not None else UserStore(realm=config.realm)
        a = config.auth
        self.secret = secret or (a.secret.encode() if a.secret else os.urandom(32))
        self.nonce_counter = None       # shared by every worker's copy (replays are caught whichever sees them)
        self.auth = self._authenticator(config)
        self.location = location if location is not None else LocationService.from_config(config)
        self.registrar = Registrar(config, self.location, self.auth, self.domains, rng, self)
        self.txns = TransactionTable()
        self.timers = TimerConfig.from_config(config)
        self.proxy = Proxy(self, resolver)
        self.instance = os.urandom(2).hex()     # keeps branches unique across restarts
        self.parse_uri = backend.DEFAULT.parse_uri
        self.guard = guard if guard is not None else NullGuard()

    def for_worker(self):
        """A copy of this core for one worker thread, to be made IN that thread.

        On free-threaded CPython an object is owned by the thread that made it, and every reference another thread
        takes to it is an atomic operation (biased reference counting). The per-request path touches the config,
        the registrar, the proxy, the authenticator hundreds of times per datagram: run by a worker from objects
        the main thread made, the same work cost ~45% more (3.13t; nothing on a GIL build). So each worker gets
        its own copies of those, and shares only what must be shared: the location service, the transaction
        table, the user store, the guard, the nonce secret and counter."""
        c = copy.copy(self)
        c.parent = self
        c._derive()
        return c

    def _derive(self):
        """(Re)build this worker copy's own objects from the parent's current config."""
        parent = self.parent
        self.generation = parent.generation
        self.cfg = config_mod.load(base=parent.cfg.as_dict())
        self.domains = frozenset(list(parent.domains))
        self.local_hosts = set(parent.local_hosts)
        self.auth = self._authenticator(self.cfg)
        self.registrar = Registrar(self.cfg, self.location, self.auth, self.domains, parent.registrar.rng, self)
        self.timers = TimerConfig.from_config(self.cfg)
        self.proxy = Proxy(self, parent.proxy.resolver)

    def authenticate(self, req, credentials, addr, now, ctx):
        """Digest-check ``credentials`` (Authorization or Proxy-Authorization values) through the guard's
        throttle. Returns (AuthResult or None, refusal or None): a refusal is (status, reason, headers) to answer
        instead of a challenge."""
        username = None
        for c in credentials:
            username = dget(c.params, "username")
            if username:
                break
        guard = self.guard
        if username is not None:
            blocked = guard.auth_blocked(username, addr, now)
            if blocked is not None:
                ctx.stats.inc("auth.throttled")
                return None, blocked
        res = self.auth.check(credentials, req.method, req.uri, now)
        if res.ok:
            guard.auth_succeeded(res.username, addr, now)
        elif credentials and not res.stale:
            ctx.stats.inc("auth.fail." + res.reason)
            guard.auth_failed(username, addr, now)
        return res, None

    def _authenticator(self, config):
        a = config.auth
        root = self.parent or self
        if a.nonce_count and root.nonce_counter is None:
            root.nonce_counter = NonceCounter(100_000, a.nonce_lifetime)
        self.nonces = NonceFactory(self.secret, a.nonce_lifetime)
        return Authenticator(self.users, self.nonces, config.realm, tuple(a.algorithms), a.qop,
                             root.nonce_counter if a.nonce_count else None, a.check_uri)

    def reconfigure(self, config):
        """Take a reloaded config (SIGHUP): its reloadable keys take effect for the next datagram. Nonces issued
        before stay valid (same secret)."""
        auth = self._authenticator(config)
        self.cfg = config
        self.auth = auth
        self.registrar.cfg = config
        self.registrar.auth = auth
        reconfigure = getattr(self.guard, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(config)
        self.generation += 1            # worker copies pick it up before their next datagram

    @staticmethod
    def user_of(uri):
        """The user name of a URI as the user store knows it (unescaped), or None."""
        return None if uri.user is None else unescape(uri.user)

    # ---- runtime hooks
    def bind(self, host, port):
        """Called once by the runtime with the address we advertise (Via, Record-Route)."""
        self.host = host
        self.port = port
        if self.via_port is None:
            self.via_port = port
        self.local_hosts.add(host.lower())
        self.local_hosts.add(f"[{host.lower()}]" if ":" in host else host.lower())

    def attach(self, ctx, now):
        """Called by the runtime for each worker context before it starts."""
        ctx.state = WorkerState(self.location.local_state(now))

    def on_tick(self, now, ctx):
        """Timers and one bounded collector step. True when the collector is behind (tick again soon)."""
        ctx.wheel.advance(now)
        st = ctx.state.loc
        self.location.tick(now, st, ctx.wid)
        return st.behind

    # ---- the datagram path
    def on_datagram(self, data, addr, now, ctx):
        parent = self.parent
        if parent is not None and parent.generation != self.generation:
            self._derive()            # a reload (SIGHUP) applies from the next datagram on
        if not self.guard.allow_datagram(addr, now):
            ctx.stats.inc("drops.banned")
            return
        try:
            msg = parse(data)
        except SipParseError as e:
            self.on_parse_error(e, data, addr, ctx)
            return
        if msg.is_request:
            ctx.stats.inc("rx.request." + msg.method)
            try:
                self.on_request(msg, addr, now, ctx)
            except SipParseError as e:     # a header field parsed lazily by the handler was malformed
                self.on_parse_error(SipParseError(e.reason, e.status, msg.method != "ACK", msg), data, addr, ctx)
        else:
            ctx.stats.inc(f"rx.response.{msg.status}")
            try:
                self.on_response(msg, addr, now, ctx)
            except SipParseError as e:
                self.on_parse_error(SipParseError(e.reason, e.status, False), data, addr, ctx)

    def on_parse_error(self, err, data, addr, ctx):
        if not data.strip(b"\r\n"):
            ctx.stats.inc("rx.keepalive")        # CRLF keep-alive: nothing to answer
            return
        if err.answerable and err.message is not None:
            ctx.stats.inc(f"rx.bad.{err.status}")
            self.reply(err.message, err.status, addr, ctx, reason=_reason(err))
            oplog.event(logging.INFO, "bad-request", "answered %d %s to %s:%s", err.status, err.reason, *addr[:2])
        else:
            ctx.stats.inc("drops.unparseable")
            oplog.event(logging.INFO, "drop-unparseable", "dropped an unparseable datagram from %s:%s (%s)",
                        *addr[:2], err.reason)

    # ---- replies
    def reply(self, request, status, addr, ctx, reason=None, headers=(), to_tag=None, body="", content_type=None):
        """Answer ``request`` statelessly to where RFC 3261 §18.2.2/RFC 3581 say (received/rport)."""
        try:
            via = request.via
        except SipParseError:
            return
        top = received_via(via, addr[0], addr[1])
        data = make_response(request, status, reason, to_tag=to_tag, headers=headers, body=body,
                             content_type=content_type, top_via=top.raw if top is not None else None)
        ctx.stats.inc(f"tx.response.{status}")
        ctx.send(data, response_target(top if top is not None else via))

    def is_local(self, uri):
        """Is this URI in one of our domains (or addressed to our own address)? A port, when given, must be
        ours."""
        host = uri.host
        if host in self.domains:
            return uri.port is None or uri.port == self.port
        if host in self.local_hosts:
            return (uri.port or 5060) == self.port
        return False

    # ---- requests and responses (the registrar and the proxy extend these)
    def on_request(self, req, addr, now, ctx):
        st = self.txns.match_request(req)
        if st is not None:      # a retransmission, or the ACK of a final response
            with st.lock:
                passed_on = st.state is TERMINATED or st.on_request(req, now, ctx)
            if not passed_on:
                ctx.stats.inc("rx.absorbed")
                return
            # an ACK for a 2xx that reused the INVITE's Via (RFC 2543 phones): routed like any other
        method = req.method
        ruri = req.ruri
        refusal = self.guard.check_request(req, addr, now, ctx)
        if refusal is not None:
            status, reason, headers = refusal
            if method != "ACK":
                self.reply(req, status, addr, ctx, reason=reason, headers=headers)
            ctx.stats.inc(f"drops.refused.{status}")
            return
        routes = req.routes
        for_us = not routes or (len(routes) == 1 and self.proxy.is_us(routes[0].uri))   # an outbound-proxy Route
        if method == "REGISTER" and for_us and self.is_local(ruri):
            r = self.registrar.handle(req, addr, now, ctx.state.loc, ctx)
            self.reply(req, r.status, addr, ctx, reason=r.reason, headers=r.headers)
            return
        if method == "OPTIONS" and for_us and ruri.user is None and self.is_local(ruri):
            self.reply(req, 200, addr, ctx, headers=(f"Allow: {ALLOW}", "Accept: application/sdp",
                                                     "Supported: path"))
            return
        self.proxy.on_request(req, addr, now, ctx)

    def on_response(self, resp, addr, now, ctx):
        ct = self.txns.match_response(resp)
        if ct is None:
            self.proxy.stray_response(resp, addr, now, ctx)
            return
        with ct.lock:
            if ct.state is TERMINATED:
                ctx.stats.inc("drops.late_response")
            elif ct.on_response(resp, now, ctx):
                ct.tu.on_response(ct, resp, now, ctx)


def _reason(err):
    """The reason phrase of an error response: the standard phrase plus what was wrong."""
    from ftsip.sip import REASONS
    base = dget(REASONS, err.status, "Error")
    return base if err.reason == base else f"{base} - {err.reason}"
