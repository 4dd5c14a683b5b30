"""The stateful proxy (RFC 3261 §16), the transaction user of ``ftsip.transaction``. Sans-I/O.

One ``Call`` (a response context, Kamailio's tm cell) per server transaction holds the branches and the lock that
the server transaction and every client transaction of the call share, so each call is handled by one thread at a
time while different calls run in parallel. What happens, in RFC order:

- §16.3 validation: Max-Forwards (483), Proxy-Require (420), Request-URI scheme (416), loop detection (482).
- §16.4 route information: strict-router compatibility, our own Route header removed.
- authentication of the configured methods (INVITE, BYE) with 407 for requests from our domains; the authenticated
  user must be the From user.
- §16.5 targets: Route headers (in-dialog), else the location service for our domains (404 unknown user, 480 no
  binding; bindings forked in parallel by q, lower q groups tried in series on failure), else refused (403, no open
  relay) unless relaying is configured.
- §16.6 forwarding: our Via (branch = magic cookie + loop hash + unique part), Max-Forwards - 1, Record-Route,
  Path -> Route, received/rport on the previous hop's Via; 100 Trying for INVITE; Timer C per INVITE branch.
- §16.7 responses: 1xx forwarded (not 100), 2xx at once, the best final response when all branches end (6xx cancels
  the rest; 401/407 challenges merged; 503 becomes 500; no 408 ever to a non-INVITE, RFC 4320); busy/no
  answer/unavailable fail over to voicemail (for users that exist).
- §16.10 CANCEL: 200 at once, CANCEL on every pending branch once it has a provisional response (a 100 counts),
  487 to the INVITE; a branch still without a final response 64*T1 after its CANCEL is given up (§9.1).
- ACK for 2xx routed statelessly along our Record-Route (§16.11); ACKs of our own stateless answers are absorbed,
  and none is relayed to a foreign host unless relaying is configured.
"""
import hashlib
import threading

from ftsip.dicts import get as dget
from ftsip.proxy.responses import best, challenges
from ftsip.sip.message import hop_request, make_response, received_via, response_target, to_tag_for
from ftsip.timers import TimerWheel
from ftsip.transaction import (TERMINATED, InviteClientTransaction, InviteServerTransaction, MAGIC,
                               NonInviteClientTransaction, NonInviteServerTransaction, server_key)

SUPPORTED = frozenset(("path",))
DIALOG_CREATING = frozenset(("INVITE", "SUBSCRIBE", "REFER", "NOTIFY"))
FAILOVER = frozenset((486, 408, 480))


class Target:
    __slots__ = ("uri", "path", "q")

    def __init__(self, uri, path=(), q=1.0):
        self.uri = uri
        self.path = path
        self.q = q


class Branch:
    """Per client transaction data (``ct.user``)."""

    __slots__ = ("provisional", "final", "timer_c", "cancel_pending", "cancel")

    def __init__(self):
        self.provisional = False
        self.final = 0
        self.timer_c = None
        self.cancel_pending = False
        self.cancel = None


class Call:
    """A response context: the server transaction, its branches, what has been answered."""

    __slots__ = ("lock", "req", "method", "up_vias", "st", "edit_base", "groups", "next_group", "branches",
                 "responses", "final_sent", "cancelled", "no_answer", "tried_voicemail", "voicemail", "ring_timer",
                 "pop_routes", "routes", "strict", "proxy", "live", "__weakref__")

    def __init__(self, proxy, req):
        self.lock = threading.Lock()
        self.proxy = proxy
        self.req = req               # None once the call is settled (see settle)
        self.method = req.method
        self.up_vias = None          # the Via values responses go upstream with, once settled
        self.st = None
        self.groups = []
        self.next_group = 0
        self.branches = []
        self.responses = []          # (status, response or None) of finished branches
        self.final_sent = False
        self.cancelled = False
        self.no_answer = False
        self.tried_voicemail = False
        self.voicemail = None
        self.ring_timer = None
        self.pop_routes = 0
        self.routes = ()
        self.strict = False
        self.live = 0                # transactions of this call not yet terminated

    def own(self, txn):
        """Count a transaction whose user this call is (see on_terminated)."""
        self.live += 1
        return txn

    # transaction-user callbacks (called with self.lock held)
    def on_response(self, ct, resp, now, ctx):
        self.proxy.branch_response(self, ct, resp, now, ctx)
        self.settle()

    def on_timeout(self, ct, now, ctx):
        self.proxy.branch_timeout(self, ct, now, ctx)

    def settle(self):
        """Once the final response is out and every branch has its own, all that is left to do is answer
        retransmissions and relay 2xx retransmissions upstream, for up to 64*T1: keep only what that needs (the
        upstream Via values) and let go of the parsed request, the responses and the targets. A waiting call
        is then a dozen small objects instead of ~70 - every live object is scanned by each collection of the
        cyclic GC, which stops all worker threads on 3.13t."""
        req = self.req
        if req is None or not self.final_sent or self.pending():
            return
        st = self.st
        vias = req.vias
        if vias:
            top = st.top_via if st is not None and st.top_via is not None else vias[0].raw
            self.up_vias = (top, *[v.raw for v in vias[1:]])
        else:
            self.up_vias = ()
        self.req = None
        self.responses = ()
        self.groups = ()
        self.routes = ()
        self.voicemail = None

    def on_terminated(self, txn):
        """When the last transaction of the call ends, let go of everything: the call and its transactions refer
        to each other, and a cycle would wait for the cyclic GC, which stops every thread on 3.13t."""
        self.live -= 1
        if self.live <= 0:
            for ct in self.branches:
                br = ct.user
                if br is not None:
                    cancel = br.cancel               # a CANCEL's transaction and its branch refer to each other
                    if cancel is not None:
                        cancel.tu = None
                        cancel.user = None
                    br.cancel = None
                    br.timer_c = None
                ct.tu = None
                ct.user = None
            self.branches = []
            if self.st is not None:
                self.st.tu = None
            self.st = None
            self.responses = ()
            self.groups = ()

    def pending(self):
        return [ct for ct in self.branches if ct.user.final == 0 and ct.method != "CANCEL"]


def _hostport(host, port):
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _uri_dest(uri):
    host = dget(uri.params, "maddr") or uri.host
    if host[:1] == "[":
        host = host[1:-1]
    return host, (uri.port or (5061 if uri.scheme == "sips" else 5060))


class Proxy:
    def __init__(self, app, resolver=None):
        self.app = app
        self.resolver = resolver

    # ------------------------------------------------------------------ helpers
    @property
    def cfg(self):
        return self.app.cfg

    def via_host(self):
        """host:port in our Via: in process mode the worker's own port, so responses come back to it."""
        return _hostport(self.app.host, self.app.via_port)

    def record_route(self):
        """Our Record-Route: the shared address (in-dialog requests may reach any worker)."""
        return f"<sip:{_hostport(self.app.host, self.app.port)};lr>"

    def upstream(self, resp, call):
        """An Edit of a response to relay to the caller: the Via headers become those of the request this call's
        server transaction received (RFC 3261 §16.7 step 3 removes our Via, and what is left must be exactly those;
        taking them from our own transaction keeps a callee that mangles Vias from breaking the caller's)."""
        e = resp.edit().remove("via")
        vias = call.up_vias
        if vias is None:
            req = call.req
            vias = [call.st.top_via or req.vias[0].raw] + [v.raw for v in req.vias[1:]]
        for v in reversed(vias):
            e.push_via(v)
        return e

    def is_us(self, uri):
        """Is this URI one of our addresses (a Route/Record-Route we put there, or our own host:port)?"""
        app = self.app
        host = uri.host
        if host is None:
            return False
        if host in app.local_hosts and host not in app.domains:
            return uri.port is None or uri.port == app.port
        if host in app.domains:
            return uri.port == app.port or (uri.port is None and "lr" in uri.params and not uri.user)
        return False

    def resolve(self, host, port):
        """(ip, port) for a next hop, or None. IP literals need nothing; names go to the runtime's resolver."""
        h = host
        if h and (h[0].isdigit() or ":" in h):
            return h, port
        if h.lower() in self.app.domains or h.lower() in self.app.local_hosts:
            return self.app.host, port if port != 5060 else self.app.port
        if self.resolver is not None:
            ip = self.resolver(h)
            if ip is not None:
                return ip, port
        return None

    @staticmethod
    def loop_hash(req):
        """RFC 3261 §16.6 step 8 loop-detection value (the topmost Via is left out: it changes on every hop)."""
        to_tag = req.to.tag or ""
        pa = "|".join(req.get_all("proxy-authorization"))
        seed = f"{req.uri}|{to_tag}|{req.from_.tag}|{req.call_id}|{req.cseq.num}|{req.get('proxy-require')}|{pa}"
        return hashlib.blake2s(seed.encode("latin-1"), digest_size=5).hexdigest()

    def new_branch(self, lh, ctx):
        st = ctx.state
        st.seq += 1
        return f"{MAGIC}{lh}.{self.app.instance}{ctx.wid:x}.{st.seq:x}"

    def is_loop(self, req, lh):
        me = self.via_host()
        for via in req.vias:
            if via.sent_by == me or (via.host == self.app.host and via.port in (self.app.port, self.app.via_port)):
                b = via.branch or ""
                if b.startswith(MAGIC) and b[len(MAGIC):].split(".", 1)[0] == lh:
                    return True
        return False

    def reply(self, req, status, addr, ctx, reason=None, headers=()):
        self.app.reply(req, status, addr, ctx, reason=reason, headers=headers)

    # ------------------------------------------------------------------ requests
    def on_request(self, req, addr, now, ctx):
        """A request that matched no transaction and is not for the registrar."""
        app = self.app
        cfg = self.cfg
        method = req.method
        if method == "ACK":
            return self.forward_ack(req, addr, now, ctx)
        if method == "CANCEL":
            return self.on_cancel(req, addr, now, ctx)
        mf = req.max_forwards
        if mf == 0:
            return self.reply(req, 483, addr, ctx)
        unsupported = [t for t in req.proxy_require if t not in SUPPORTED]
        if unsupported:
            return self.reply(req, 420, addr, ctx, headers=("Unsupported: " + ", ".join(unsupported),))
        ruri = req.ruri
        if not ruri.is_sip:
            return self.reply(req, 416, addr, ctx)
        lh = self.loop_hash(req)
        if self.is_loop(req, lh):
            return self.reply(req, 482, addr, ctx)

        # §16.4: a strict router sent us our own Record-Route as Request-URI
        routes = req.routes
        uri = req.uri
        pop_routes = 0
        strict_uri = None
        if self.is_us(ruri) and routes and "lr" in ruri.params:
            strict_uri = routes[-1].uri.raw
        elif routes and self.is_us(routes[0].uri):
            pop_routes = 1
        remaining = routes[pop_routes:] if strict_uri is None else routes[:-1]
        in_dialog = req.to.tag is not None

        # authentication of our own users
        a = cfg.auth
        from_uri = req.from_.uri
        authenticated = False
        if method in a.methods and from_uri.host in app.domains:
            res, refusal = app.authenticate(req, req.proxy_authorization, addr, now, ctx)
            if refusal is not None:          # too many failures from this source: no challenge, no digest work
                status, reason, headers = refusal
                return self.reply(req, status, addr, ctx, reason=reason, headers=headers)
            if not res.ok:
                return self.reply(req, 407, addr, ctx, headers=tuple(
                    "Proxy-Authenticate: " + v for v in app.auth.challenge(now, stale=res.stale)))
            if a.match_from and res.username != app.user_of(from_uri):
                return self.reply(req, 403, addr, ctx, reason="Forbidden - From is not the authenticated user")
            authenticated = True

        # §16.5 targets
        voicemail = None
        if remaining or strict_uri is not None or (pop_routes and in_dialog):
            # in-dialog (our Record-Route came back: the next hop is the next Route or the remote target in the
            # Request-URI) or preloaded; a preloaded route to anywhere would make us an open relay
            if not in_dialog and not cfg.proxy.relay_foreign:
                return self.reply(req, 403, addr, ctx, reason="Forbidden - relaying denied")
            groups = [[Target(strict_uri or uri)]]
        elif app.is_local(ruri):
            if ruri.user is None:      # addressed to the server itself: only OPTIONS and REGISTER mean something
                return self.reply(req, 404 if method == "INVITE" else 501, addr, ctx)
            bindings = app.location.lookup(ruri.aor(), now)
            if method == "INVITE":
                voicemail = self.voicemail_for(ruri)
            if bindings:
                groups = self.fork_groups(bindings)
            else:
                known = app.users.get(app.user_of(ruri)) is not None
                # 480 (a user, not reachable) vs 404 (no such user), and voicemail only for a user that exists,
                # are told to an authenticated caller only: anyone else would learn which users exist (svwar
                # scans with OPTIONS and INVITE); they see the same for every name
                if not authenticated:
                    known = voicemail is not None
                if voicemail is None or not known:
                    return self.reply(req, 480 if known and authenticated else 404, addr, ctx)
                groups = []
        elif cfg.proxy.relay_foreign:
            groups = [[Target(uri)]]
        else:
            return self.reply(req, 403, addr, ctx, reason="Forbidden - relaying denied")
        self.forward_stateful(req, addr, now, ctx, groups, pop_routes, remaining, strict_uri, lh, voicemail)

    def voicemail_for(self, ruri):
        """The voicemail URI for calls to this user: the user's own (user file column) or the global one."""
        app = self.app
        user = app.users.get(app.user_of(ruri))
        vm = getattr(user, "voicemail", None) if user is not None else None
        vm = vm or self.cfg.proxy.voicemail
        if not vm:
            return None
        try:
            vuri = app.parse_uri(vm)
        except Exception:
            return None
        if vuri.user is None:
            return f"{vuri.scheme}:{ruri.user}@{vuri.hostport}" + "".join(
                f";{k}" if v == "" else f";{k}={v}" for k, v in vuri.params.items())
        return vm

    @staticmethod
    def fork_groups(bindings):
        """Bindings grouped by q, highest first: parallel within a group, serial between groups."""
        by_q = {}
        for b in bindings:
            by_q.setdefault(b.q, []).append(Target(b.contact, b.path, b.q))
        return [by_q[q] for q in sorted(by_q, reverse=True)]

    def forward_stateful(self, req, addr, now, ctx, groups, pop_routes, remaining, strict_uri, lh, voicemail):
        app = self.app
        via = req.via
        top = received_via(via, addr[0], addr[1])
        invite = req.method == "INVITE"
        call = Call(self, req)
        call.pop_routes = pop_routes
        call.routes = tuple(r.raw for r in remaining)
        call.strict = strict_uri is not None
        call.voicemail = voicemail
        call.groups = groups
        cls = InviteServerTransaction if invite else NonInviteServerTransaction
        st = cls(server_key(req), response_target(top if top is not None else via), app.txns, app.timers,
                 tu=call, lock=call.lock, top_via=top.raw if top is not None else None)
        call.own(st)
        with call.lock:
            existing = app.txns.add(st)
            if existing is not st:          # the same request arrived on two threads at once
                with existing.lock:
                    existing.on_request(req, now, ctx)
                return
            call.st = st
            st.data = lh
            ctx.stats.inc("proxy.calls" if invite else "proxy.requests")
            if invite:
                st.respond(make_response(req, 100, top_via=st.top_via), 100, now, ctx)
                ring = self.cfg.proxy.ring_timeout
                if ring > 0 and voicemail is not None:
                    call.ring_timer = ctx.wheel.schedule(now + ring, self._ring_timeout, (call, ctx))
            if groups:
                self.fork_next_group(call, now, ctx)
            else:
                self.failover(call, now, ctx) or self.send_final(call, (480, None), now, ctx)

    def fork_next_group(self, call, now, ctx):
        group = call.groups[call.next_group]
        call.next_group += 1
        for target in group:
            self.start_branch(call, target, now, ctx)
        if not call.pending():
            self.all_done(call, now, ctx)

    def start_branch(self, call, target, now, ctx):
        app = self.app
        req = call.req
        method = req.method
        e = req.edit()
        if target.uri != req.uri:
            e.set_uri(target.uri)
        if call.st.top_via is not None:
            e.set_top_via(call.st.top_via)
        mf = req.max_forwards
        e.set_max_forwards((70 if mf is None else mf) - 1)
        routes = call.routes
        if call.strict:             # §16.4: the last Route was the strict router's Request-URI
            e.remove("route")
            if routes:
                e.push_routes(routes)
        elif call.pop_routes:
            e.pop_route()
        if target.path:
            e.push_routes(target.path)
            routes = tuple(target.path) + routes
        if self.cfg.proxy.record_route and method in DIALOG_CREATING and req.to.tag is None:
            e.add_record_route(self.record_route())
        branch = self.new_branch(call.st.data, ctx)
        via = f"SIP/2.0/UDP {self.via_host()};branch={branch};rport"
        e.push_via(via)
        dest = self.next_hop(target.uri, routes)
        if dest is None:
            call.responses.append((503, None))
            return None
        data = e.to_bytes()
        if method == "INVITE":
            ack_info = (target.uri, via, req.get("from"), req.call_id, req.cseq.num, routes)
            ct = InviteClientTransaction(data, branch, method, dest, app.txns, app.timers, call, call.lock,
                                         ack_info)
        else:
            ct = NonInviteClientTransaction(data, branch, method, dest, app.txns, app.timers, call, call.lock)
        call.own(ct)
        ct.user = Branch()
        ct.ack_info = ct.ack_info or (target.uri, via, req.get("from"), req.call_id, req.cseq.num, routes)
        app.txns.add(ct)
        call.branches.append(ct)
        ct.start(now, ctx)
        if method == "INVITE":
            ct.user.timer_c = ctx.wheel.schedule(now + self.cfg.proxy.timer_c, self._timer_c, (call, ct, ctx))
        ctx.stats.inc("proxy.branches")
        return ct

    def next_hop(self, target_uri, routes):
        """Where to send: the first Route (loose routing) or the target URI."""
        parse_uri = self.app.parse_uri
        try:
            uri = parse_uri(routes[0][routes[0].find("<") + 1:routes[0].rfind(">")] if routes and "<" in routes[0]
                            else routes[0]) if routes else parse_uri(target_uri)
        except Exception:
            return None
        if not uri.is_sip:
            return None
        host, port = _uri_dest(uri)
        return self.resolve(host, port)

    # ------------------------------------------------------------------ responses
    def branch_response(self, call, ct, resp, now, ctx):
        br = ct.user
        if ct.method == "CANCEL":
            return
        status = resp.status
        st = call.st
        if status < 200:
            br.provisional = True                # a 100 too: the branch may now be CANCELled (§9.1)
            if status > 100:
                if br.timer_c is not None and br.cancel is None:
                    # Timer C restarts on each provisional response but 100 (§16.7 step 2); once a CANCEL is out,
                    # its own deadline stands
                    TimerWheel.cancel(br.timer_c)
                    br.timer_c = ctx.wheel.schedule(now + self.cfg.proxy.timer_c, self._timer_c, (call, ct, ctx))
                if not call.final_sent:
                    st.respond(self.upstream(resp, call).to_bytes(), status, now, ctx)
            if br.cancel_pending:
                self.send_cancel(call, ct, now, ctx)
            return
        self._stop_timer_c(br)
        first_final = br.final == 0
        br.final = status
        if status < 300:
            st.respond(self.upstream(resp, call).to_bytes(), status, now, ctx)
            if not call.final_sent:
                call.final_sent = True
                self._stop_ring(call)
                if call.method == "INVITE":
                    for other in call.pending():
                        self.cancel_branch(call, other, now, ctx)
            return
        if not first_final:
            return
        if call.final_sent:
            return                               # another branch answered: nothing more to choose from
        call.responses.append((status, resp))
        if status >= 600 and call.method == "INVITE":
            for other in call.pending():
                self.cancel_branch(call, other, now, ctx)
        if not call.pending():
            self.all_done(call, now, ctx)

    def branch_timeout(self, call, ct, now, ctx, status=408):
        br = ct.user
        if ct.method == "CANCEL" or br.final:
            return
        self._stop_timer_c(br)
        br.final = status
        if call.final_sent:
            call.settle()
            return
        call.responses.append((status, None))
        if not call.pending():
            self.all_done(call, now, ctx)

    def all_done(self, call, now, ctx):
        """Every branch of the current group has a final response."""
        if call.final_sent:
            return
        chosen = best(call.responses)
        if (not call.cancelled and call.next_group < len(call.groups)
                and (chosen is None or chosen[0] < 600)):
            return self.fork_next_group(call, now, ctx)
        if self.failover(call, now, ctx, chosen):
            return
        self.send_final(call, chosen or (408, None), now, ctx)

    def failover(self, call, now, ctx, chosen=None):
        """Busy, no answer or unavailable: send the INVITE to voicemail instead (once)."""
        if (call.voicemail is None or call.tried_voicemail or call.method != "INVITE"
                or (call.cancelled and not call.no_answer)):
            return False
        if chosen is not None and chosen[0] not in FAILOVER and not call.no_answer:
            return False
        call.tried_voicemail = True
        call.cancelled = False
        ctx.stats.inc("proxy.voicemail")
        ct = self.start_branch(call, Target(call.voicemail), now, ctx)
        return ct is not None

    def send_final(self, call, chosen, now, ctx):
        status, resp = chosen
        st = call.st
        req = call.req
        call.final_sent = True
        self._stop_ring(call)
        if status == 408 and req.method != "INVITE":
            # RFC 4320 §4.2: never a 408 to a non-INVITE request - the client's Timer F has fired by now, the
            # response would only add load; the server transaction just ends
            ctx.stats.inc("proxy.final.408_suppressed")
            st.terminate()
            return
        if status == 503:
            status, resp = 500, None                  # §16.7 step 6: do not pass 503 upstream
        if resp is None:
            data = make_response(req, status, top_via=st.top_via)
        else:
            e = self.upstream(resp, call)
            if status == 401 or status == 407:
                lines = challenges(call.responses)
                e.remove("www-authenticate").remove("proxy-authenticate")
                for key, line in lines:
                    name, _, value = line.partition(": ")
                    e.add(name, value)
            data = e.to_bytes()
        ctx.stats.inc(f"proxy.final.{status}")
        st.respond(data, status, now, ctx)
        call.settle()

    # ------------------------------------------------------------------ CANCEL, timers
    def on_cancel(self, req, addr, now, ctx):
        """§16.10: answer the CANCEL, cancel every pending branch; the branches' 487s answer the INVITE."""
        app = self.app
        via = req.via
        top = received_via(via, addr[0], addr[1])
        key = server_key(req)
        invite_key = key[:-len("CANCEL")] + "INVITE" if key.endswith("|CANCEL") else None
        ist = app.txns.get(invite_key) if invite_key else None
        if ist is None or not ist.is_invite:
            return self.reply(req, 481, addr, ctx)
        cst = NonInviteServerTransaction(key, response_target(top if top is not None else via), app.txns,
                                         app.timers, None, None, top.raw if top is not None else None)
        if app.txns.add(cst) is not cst:
            return
        with cst.lock:
            cst.respond(make_response(req, 200, top_via=cst.top_via), 200, now, ctx)
        with ist.lock:
            call = ist.tu
            if call is None or call.final_sent or ist.state is TERMINATED:
                return
            call.cancelled = True
            call.no_answer = False
            call.voicemail = None
            pending = call.pending()
            for ct in pending:
                self.cancel_branch(call, ct, now, ctx)
            if not pending:
                self.send_final(call, (487, None), now, ctx)

    def cancel_branch(self, call, ct, now, ctx):
        br = ct.user
        if br.cancel is not None or br.final:
            return
        if br.provisional:
            self.send_cancel(call, ct, now, ctx)
        else:
            br.cancel_pending = True     # RFC 3261 §9.1: wait for a provisional response before the CANCEL

    def send_cancel(self, call, ct, now, ctx):
        br = ct.user
        if br.cancel is not None or ct.state is TERMINATED or br.final:
            br.cancel_pending = False
            return
        br.cancel_pending = False
        ruri, via, from_, call_id, cseq, routes = ct.ack_info
        data = hop_request("CANCEL", ruri, via, from_, call.req.get("to"), call_id, cseq, routes)
        cancel = NonInviteClientTransaction(data, ct.branch, "CANCEL", ct.dest, self.app.txns, self.app.timers,
                                            call, call.lock)
        call.own(cancel)
        cancel.user = br
        br.cancel = cancel
        self.app.txns.add(cancel)
        cancel.start(now, ctx)
        ctx.stats.inc("proxy.cancels")
        # §9.1: without a final response 64*T1 after the CANCEL, the INVITE branch is given up (a callee that
        # died after ringing must not keep the call - and its transactions - forever); Timer C's slot holds it
        self._stop_timer_c(br)
        br.timer_c = ctx.wheel.schedule(now + self.app.timers.b, self._timer_c, (call, ct, ctx))

    def _timer_c(self, arg, now):
        """Timer C (§16.8), or the deadline of a CANCEL sent on this branch (§9.1)."""
        call, ct, ctx = arg
        with call.lock:
            br = ct.user
            if br is None or br.timer_c is None or br.timer_c[3]:
                # stopped, or restarted meanwhile (the firing entry is already dead; a replacement is still alive)
                return
            br.timer_c = None
            if br.final or ct.state is TERMINATED:
                return
            if br.cancel is not None:                   # CANCELled 64*T1 ago and still no final response
                ct.terminate()
                ctx.stats.inc("proxy.cancel_timeouts")
                self.branch_timeout(call, ct, now, ctx, 487 if call.cancelled and not call.no_answer else 408)
            elif br.provisional:
                self.send_cancel(call, ct, now, ctx)    # the 487 ends the branch
            else:
                ct.terminate()                          # as if a 408 had come
                self.branch_timeout(call, ct, now, ctx)

    def _ring_timeout(self, arg, now):
        call, ctx = arg
        with call.lock:
            call.ring_timer = None
            if call.final_sent or call.tried_voicemail:
                return
            call.no_answer = True
            call.cancelled = True
            pending = call.pending()
            for ct in pending:
                self.cancel_branch(call, ct, now, ctx)
            if not pending:
                self.all_done(call, now, ctx)

    @staticmethod
    def _stop_timer_c(br):
        if br.timer_c is not None:
            TimerWheel.cancel(br.timer_c)
            br.timer_c = None

    @staticmethod
    def _stop_ring(call):
        if call.ring_timer is not None:
            TimerWheel.cancel(call.ring_timer)
            call.ring_timer = None

    # ------------------------------------------------------------------ stateless parts
    def forward_ack(self, req, addr, now, ctx):
        """An ACK no transaction absorbed: for a 2xx (route it by its Route headers) or for one of our own
        stateless negative answers (drop it)."""
        routes = req.routes
        pop = 1 if routes and self.is_us(routes[0].uri) else 0
        remaining = tuple(r.raw for r in routes[pop:])
        if (not remaining and self.app.is_local(req.ruri)) or req.to.tag == to_tag_for(req):
            # the ACK of a negative answer we gave statelessly (407, 403, 404, 482...): its To tag is the one
            # make_response derived from the same request fields
            ctx.stats.inc("rx.ack_absorbed")
            return
        if not pop and not self.cfg.proxy.relay_foreign:
            ctx.stats.inc("drops.ack_relay")      # not along our Record-Route: we would be an open relay
            return
        self.forward_stateless(req, addr, ctx, pop, remaining)

    def forward_stateless(self, req, addr, ctx, pop, remaining):
        via = req.via
        dest = self.next_hop(req.uri, remaining)
        if dest is None:
            ctx.stats.inc("drops.no_route")
            return
        e = req.edit()
        top = received_via(via, addr[0], addr[1])
        if top is not None:
            e.set_top_via(top)
        if pop:
            e.pop_route()
        mf = req.max_forwards
        if mf == 0:
            return
        e.set_max_forwards((70 if mf is None else mf) - 1)
        # §16.11: the same branch for a retransmission of the same request
        b = hashlib.blake2s(f"{via.branch}|{req.method}|{req.uri}".encode("latin-1"), digest_size=8).hexdigest()
        e.push_via(f"SIP/2.0/UDP {self.via_host()};branch={MAGIC}{b}")
        ctx.send(e.to_bytes(), dest)
        ctx.stats.inc("proxy.stateless")

    def stray_response(self, resp, addr, now, ctx):
        """A response no client transaction matched (e.g. a 2xx retransmission after Timer M): forward it by its
        Via headers if the top one is ours (§16.7, statelessly)."""
        vias = resp.vias
        if len(vias) < 2:
            ctx.stats.inc("drops.stray_response")
            return
        top = vias[0]
        if not (top.host == self.app.host.lower() or top.host in self.app.local_hosts) or \
                (top.port or 5060) not in (self.app.port, self.app.via_port):
            ctx.stats.inc("drops.stray_response")
            return
        ctx.send(resp.edit().pop_via().to_bytes(), response_target(vias[1]))
        ctx.stats.inc("proxy.stray_forwarded")
