"""An in-memory SIP network: the real ``ftsip.app.App`` (proxy-registrar) plus simulated user agents.

Everything is sans-I/O: datagrams are bytes on a simulated network that can drop, duplicate and reorder them (seeded
RNG, per-link latency); time is a number advanced in 10 ms steps, and every step delivers the datagrams that are due
and runs every endpoint's timers (the UAs' wheels and the App's ``on_tick``).

The UAs speak real SIP text and keep their own transaction behaviour, built on ftsip's transaction classes (the
state machines are proved on their own in tests/transaction): requests are retransmitted per Timer A/E, non-2xx
finals are ACKed by the client transaction, request retransmissions are answered with the same response. The UA
core on top is written here: ACK for every 2xx received, 2xx retransmitted until the ACK (RFC 3261 §13.3.1.4), CANCEL
only after a provisional response (§9.1), digest answers to 401/407, BYE along the route set.
"""
import gc
import heapq
import random
import weakref

from support import digest_header

from ftsip import config
from ftsip.app import App
from ftsip.auth import User, UserStore
from ftsip.ops.stats import Registry
from ftsip.sip import make_response, parse, received_via, response_target
from ftsip.timers import TimerWheel
from ftsip.transaction import (PROCEEDING, TERMINATED, ClientTransaction, InviteClientTransaction,
                               InviteServerTransaction, NonInviteClientTransaction, NonInviteServerTransaction,
                               TimerConfig, TransactionTable, server_key)

T0 = 1_000_000.0
STEP = 0.01
DOMAIN = "example.com"
PROXY = ("192.0.2.1", 5060)
USERS = ("alice", "bob", "carol", "vm")
PASSWORD = "secret"


def summary(msg):
    """'INVITE' for a request, '180 INVITE' for a response."""
    return msg.method if msg.is_request else f"{msg.status} {msg.cseq.method}"


# ==================================================================================================== network
class Network:
    """Datagrams in flight, delivered in time order. ``loss``/``dup``: probabilities; ``reorder``: probability that
    a datagram gets an extra random delay of up to ``reorder_delay`` (so later ones overtake it)."""

    def __init__(self, seed=0, loss=0.0, dup=0.0, reorder=0.0, latency=0.005, reorder_delay=0.08):
        self.rng = random.Random(seed)
        self.loss = loss
        self.dup = dup
        self.reorder = reorder
        self.latency = latency
        self.reorder_delay = reorder_delay
        self.links = {}                  # (src host, dst host) -> latency
        self.nodes = {}                  # (host, port) -> endpoint
        self.names = {}
        self.queue = []
        self.seq = 0
        self.now = T0
        self.log = []                    # (sent at, src name, dst name, summary, delivered?)
        self.dropped = 0
        self.duplicated = 0
        self.delayed = 0

    def attach(self, addr, node, name):
        self.nodes[addr] = node
        self.names[addr] = name

    def name(self, addr):
        return self.names.get(tuple(addr), f"{addr[0]}:{addr[1]}")

    def send(self, src, dst, data):
        dst = (dst[0], int(dst[1]))
        try:
            what = summary(parse(data))
        except Exception:               # noqa: BLE001 - the network carries anything
            what = "?"
        rng = self.rng
        lost = self.loss and rng.random() < self.loss
        self.log.append((round(self.now - T0, 4), self.name(src), self.name(dst), what, not lost))
        if lost:
            self.dropped += 1
            return
        copies = 1
        if self.dup and rng.random() < self.dup:
            copies = 2
            self.duplicated += 1
        base = self.links.get((src[0], dst[0]), self.latency)
        for _ in range(copies):
            delay = base
            if self.reorder and rng.random() < self.reorder:
                delay += rng.random() * self.reorder_delay
                self.delayed += 1
            self.seq += 1
            heapq.heappush(self.queue, (self.now + delay, self.seq, src, dst, data))

    def deliver_due(self, now):
        while self.queue and self.queue[0][0] <= now + 1e-9:
            at, _, src, dst, data = heapq.heappop(self.queue)
            node = self.nodes.get(dst)
            if node is not None:
                node.receive(data, src, now)

    @property
    def impairments(self):
        return self.dropped + self.duplicated + self.delayed

    def ladder(self, only=None):
        """[(src, dst, summary)] of what was sent (and not lost), optionally only between ``only`` names."""
        return [(s, d, w) for _, s, d, w, ok in self.log
                if ok and (only is None or (s in only and d in only))]


class NetCtx:
    """A worker context (like tests' FakeCtx) whose ``send`` puts datagrams on the network."""

    def __init__(self, net, addr, now, wid=0):
        self.net = net
        self.addr = addr
        self.wid = wid
        self.host, self.port = addr
        self.wheel = TimerWheel(now, STEP)
        self.stats = Registry().new_worker(wid)
        self.sock = None
        self.state = None
        self.lag = 0.0

    def send(self, data, addr):
        self.net.send(self.addr, addr, data)

    def live_timers(self):
        return sum(1 for slot in self.wheel.slots for e in slot if e[3])


# ==================================================================================================== the proxy
class TxnWatch:
    """Every transaction the App creates, with the sequence of states it went through."""

    def __init__(self, table):
        self.items = []                  # [kind, method, history(list), weakref, key]
        self.live = {}                   # id(txn) -> item, while the transaction is in the table
        orig_add = table.add
        orig_remove = table.remove

        def add(txn):
            got = orig_add(txn)
            if got is txn:
                kind = type(txn).__name__
                method = txn.method if isinstance(txn, ClientTransaction) else txn.key.rsplit("|", 1)[1]
                item = [kind, method, [txn.state], weakref.ref(txn), txn.key]
                self.items.append(item)
                self.live[id(txn)] = item
            return got

        def remove(txn):
            # terminate() removes the transaction from the table right after entering Terminated; record it here,
            # as nothing may hold the transaction once its last timer has fired
            orig_remove(txn)
            item = self.live.get(id(txn))
            if item is not None and item[3]() is txn:
                del self.live[id(txn)]
                if txn.state is not item[2][-1]:
                    item[2].append(txn.state)
        table.add = add
        table.remove = remove

    def sample(self):
        for item in self.items:
            txn = item[3]()
            if txn is not None and txn.state is not item[2][-1]:
                item[2].append(txn.state)

    def histories(self, kind=None, method=None):
        """[(kind, method, states...)] in creation order, optionally only one kind ('ist', 'ict', 'nist',
        'nict') and/or method."""
        short = {"InviteServerTransaction": "ist", "InviteClientTransaction": "ict",
                 "NonInviteServerTransaction": "nist", "NonInviteClientTransaction": "nict"}
        return [(short[k], m, *h) for k, m, h, _, _ in self.items
                if (kind is None or kind == short[k]) and (method is None or method == m)]

    def all_terminated(self):
        return all(h[-1] == TERMINATED for _, _, h, _, _ in self.items)


class ProxyNode:
    def __init__(self, net, now, overrides=None, users=None, resolver=None, addr=PROXY):
        ov = {("server", "domain"): [DOMAIN]}
        ov.update(overrides or {})
        self.cfg = config.load(overrides=ov)
        store = UserStore({u: User.from_password(u, PASSWORD, DOMAIN, **(users or {}).get(u, {}))
                           for u in USERS}, realm=DOMAIN)
        self.app = App(self.cfg, users=store, secret=b"k" * 32, rng=random.Random(1),
                       resolver=resolver)
        self.app.bind(*addr)
        self.app.instance = "a1b2"
        self.addr = addr
        self.ctx = NetCtx(net, addr, now)
        self.app.attach(self.ctx, now)
        self.watch = TxnWatch(self.app.txns)
        net.attach(addr, self, "proxy")

    def receive(self, data, src, now):
        self.app.on_datagram(data, src, now, self.ctx)
        self.watch.sample()

    def tick(self, now):
        self.app.on_tick(now, self.ctx)
        self.watch.sample()

    @property
    def stats(self):
        return self.ctx.stats.counters

    def idle(self):
        return len(self.app.txns) == 0


# ==================================================================================================== user agents
class OutCall:
    """The UAC side of one call (and its dialog once a 2xx came)."""

    def __init__(self, ua, target, call_id, from_tag):
        self.ua = ua
        self.target = target              # Request-URI of the INVITE
        self.to = f"<{target}>"
        self.call_id = call_id
        self.from_tag = from_tag
        self.cseq = 0
        self.invite = None                # the current INVITE client transaction
        self.invite_data = None
        self.responses = []               # (status, to tag) of every INVITE response the UA core saw
        self.msgs = []                    # the INVITE responses themselves
        self.final = None                 # first final status of the current INVITE
        self.finals = []
        self.provisional = False
        self.authed = False
        self.cancel_wanted = False
        self.cancel = None
        self.cancel_final = None
        self.to_tag = None
        self.remote_target = None
        self.route_set = ()
        self.acks = {}                    # to tag -> ACK bytes
        self.acks_sent = 0
        self.bye_final = None
        self.bye_authed = False
        self.extra = ()

class InCall:
    """The UAS side of one INVITE."""

    def __init__(self, req, st, tag):
        self.req = req
        self.st = st
        self.tag = tag
        self.sent = []                    # statuses sent
        self.acked = False
        self.acks = 0
        self.cancelled = False
        self.bye = False
        self.ok_data = None
        self.gave_up = False


class UA:
    """A simulated phone. ``script``: for incoming INVITEs, a list of (delay, status) the UAS answers with (a step
    is skipped once the INVITE has a final response, e.g. after a CANCEL); ``deaf``: after the script has run,
    ignore every datagram (a phone that died; setting ``ua.deaf`` does it at once); ``challenge``: the
    WWW-/Proxy-Authenticate value sent with a 401/407 of the script; ``contact``: the Contact URI to register
    (default sip:user@host:port); ``domain``: of the From URI in calls; ``rfc2543``: branches without the magic
    cookie, so servers must match its requests the old way; ``ack_reuses_via``: the ACK of a 2xx carries the
    INVITE's top Via (as RFC 2543 phones do) instead of a new branch."""

    def __init__(self, sim, name, host, port=5062, user=None, script=(), deaf=False, challenge=None,
                 password=PASSWORD, expires=600, q=None, contact=None, outbound=PROXY, domain=DOMAIN,
                 rfc2543=False, ack_reuses_via=False):
        self.sim = sim
        self.name = name
        self.user = user if user is not None else name
        self.password = password
        self.addr = (host, port)
        self.outbound = outbound
        self.ctx = NetCtx(sim.net, self.addr, sim.now)
        self.txns = TransactionTable()
        self.timers = sim.timers
        self.script = list(script)
        self.deaf_after_script = deaf
        self.deaf = False
        self.challenge = challenge
        self.expires = expires
        self.q = q
        self.contact_uri = contact
        self.domain = domain              # of the From URI in calls
        self.cookie = "" if rfc2543 else "z9hG4bK"   # an RFC 2543 phone's branches lack the magic cookie
        self.ack_reuses_via = ack_reuses_via          # ... and some ACK a 2xx with the INVITE's own Via
        self.seen = []                    # what arrived, in order ('INVITE', '180 INVITE', ...)
        self.calls = {}                   # call-id -> OutCall
        self.incoming = []                # InCall
        self.by_callid = {}
        self.reg_final = None
        self.reg_authed = False
        self.n = 0
        sim.net.attach(self.addr, self, name)
        sim.nodes.append(self)

    # ------------------------------------------------------------------ plumbing
    @property
    def now(self):
        return self.sim.now

    def uid(self, what):
        self.n += 1
        return f"{what}{self.name}{self.n}"

    def contact(self):
        return f"<{self.contact_uri}>" if self.contact_uri else f"<sip:{self.user}@{self.addr[0]}:{self.addr[1]}>"

    def via(self, branch):
        return f"SIP/2.0/UDP {self.addr[0]}:{self.addr[1]};branch={branch};rport"

    def receive(self, data, src, now):
        msg = parse(data)
        self.seen.append(summary(msg))       # what reached the phone's address
        if self.deaf:
            return
        if msg.is_request:
            self.on_request(msg, src, now)
        else:
            self.on_response(msg, src, now)

    def tick(self, now):
        self.ctx.wheel.advance(now)

    def idle(self):
        return self.deaf or len(self.txns) == 0     # a phone that died keeps nothing anyone waits for

    # transaction-user callbacks
    def on_terminated(self, txn):
        pass

    def on_timeout(self, txn, now, ctx):
        kind, call = txn.user
        if kind == "invite" and call.final is None:
            call.final = 408
            call.finals.append(408)
        elif kind == "cancel":
            call.cancel_final = 408
        elif kind == "bye":
            call.bye_final = 408
        elif kind == "register":
            self.reg_final = 408

    def _start(self, data, branch, method, dest, user, ack_info=None):
        cls = InviteClientTransaction if method == "INVITE" else NonInviteClientTransaction
        ct = cls(data, branch, method, dest, self.txns, self.timers, self, ack_info=ack_info)
        ct.user = user
        self.txns.add(ct)
        ct.start(self.now, self.ctx)
        return ct

    @staticmethod
    def _build(start, lines, body=""):
        lines = [start] + list(lines)
        lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n" + body).encode("latin-1")

    # ------------------------------------------------------------------ registration
    def register(self, auth=None):
        self.n += 1
        branch = f"z9hG4bKreg{self.name}{self.n}"
        self.reg_cseq = getattr(self, "reg_cseq", 0) + 1
        contact = self.contact() + (f";q={self.q}" if self.q is not None else "")
        lines = [f"Via: {self.via(branch)}", "Max-Forwards: 70",
                 f"From: <sip:{self.user}@{DOMAIN}>;tag=r{self.name}", f"To: <sip:{self.user}@{DOMAIN}>",
                 f"Call-ID: reg-{self.name}@{self.addr[0]}", f"CSeq: {self.reg_cseq} REGISTER",
                 f"Contact: {contact}", f"Expires: {self.expires}"]
        if auth:
            lines.append(auth)
        self.reg_final = None
        self._start(self._build(f"REGISTER sip:{DOMAIN} SIP/2.0", lines), branch, "REGISTER", self.outbound,
                    ("register", None))

    # ------------------------------------------------------------------ calls (UAC)
    def call(self, target, max_forwards=70, extra=(), auth=True):
        """Send an INVITE to ``target`` (a URI string); answers a 407 with credentials when ``auth``."""
        call = OutCall(self, target, self.uid("call-") + "@sim", self.uid("t"))
        call.max_forwards = max_forwards
        call.extra = tuple(extra)
        call.auth_wanted = auth
        self.calls[call.call_id] = call
        self._send_invite(call, None)
        return call

    def _send_invite(self, call, auth):
        call.cseq += 1
        branch = self.cookie + self.uid("i")
        via = self.via(branch)
        from_ = f"<sip:{self.user}@{self.domain}>;tag={call.from_tag}"
        lines = [f"Via: {via}", f"Max-Forwards: {call.max_forwards}", f"From: {from_}", f"To: {call.to}",
                 f"Call-ID: {call.call_id}", f"CSeq: {call.cseq} INVITE", f"Contact: {self.contact()}",
                 *call.extra]
        if auth:
            lines.append(auth)
        lines.append("Content-Type: application/sdp")
        body = f"v=0\r\no={self.user} 1 1 IN IP4 {self.addr[0]}\r\ns=-\r\nc=IN IP4 {self.addr[0]}\r\nt=0 0\r\n"
        data = self._build(f"INVITE {call.target} SIP/2.0", lines, body)
        call.final = None
        call.provisional = False
        call.invite_data = data
        call.invite = self._start(data, branch, "INVITE", self.outbound, ("invite", call),
                                  ack_info=(call.target, via, from_, call.call_id, call.cseq, ()))

    def cancel(self, call):
        """CANCEL the pending INVITE (sent once a provisional response has come, §9.1)."""
        call.cancel_wanted = True
        if call.provisional and call.cancel is None:
            self._send_cancel(call)

    def _send_cancel(self, call):
        ct = call.invite
        ruri, via, from_, call_id, cseq, routes = ct.ack_info
        lines = [f"Via: {via}", "Max-Forwards: 70", f"From: {from_}", f"To: {call.to}", f"Call-ID: {call_id}",
                 f"CSeq: {cseq} CANCEL"]
        call.cancel = self._start(self._build(f"CANCEL {ruri} SIP/2.0", lines), ct.branch, "CANCEL",
                                  self.outbound, ("cancel", call))

    def bye(self, call, auth=None):
        call.cseq += 1
        branch = self.cookie + self.uid("b")
        lines = [f"Via: {self.via(branch)}", "Max-Forwards: 70",
                 f"From: <sip:{self.user}@{self.domain}>;tag={call.from_tag}", f"To: {call.to};tag={call.to_tag}",
                 f"Call-ID: {call.call_id}", f"CSeq: {call.cseq} BYE"]
        lines += [f"Route: {r}" for r in call.route_set]
        if auth:
            lines.append(auth)
        call.bye_final = None
        self._start(self._build(f"BYE {call.remote_target} SIP/2.0", lines), branch, "BYE",
                    self._first_hop(call), ("bye", call))

    def _first_hop(self, call):
        return self._hop(call.route_set, call.remote_target)

    def on_response(self, resp, src, now):
        ct = self.txns.match_response(resp)
        if ct is not None and ct.state is not TERMINATED:
            if ct.on_response(resp, now, self.ctx):
                self._handle(ct, resp, now)
            return
        # no transaction: a 2xx retransmission after the INVITE transaction ended - ACK it again (§13.2.2.4)
        call = self.calls.get(resp.call_id)
        if call is not None and resp.cseq.method == "INVITE" and 200 <= resp.status < 300:
            call.responses.append((resp.status, resp.to.tag))
            self._ack_2xx(call, resp)

    def _handle(self, ct, resp, now):
        kind, call = ct.user
        status = resp.status
        if kind == "register":
            if status in (401, 407) and not self.reg_authed:
                self.reg_authed = True
                ch = [v for v in resp.get_all("www-authenticate") if "MD5" in v][0]
                self.register(digest_header(ch, self.user, self.password, "REGISTER", f"sip:{DOMAIN}"))
            elif status >= 200:
                self.reg_final = status
            return
        if kind == "cancel":
            if status >= 200:
                call.cancel_final = status
            return
        if kind == "bye":
            if status == 407 and not call.bye_authed:
                call.bye_authed = True
                ch = [v for v in resp.get_all("proxy-authenticate") if "MD5" in v][0]
                self.bye(call, digest_header(ch, self.user, self.password, "BYE", call.remote_target,
                                             name="Proxy-Authorization"))
            elif status >= 200:
                call.bye_final = status
            return
        # INVITE
        if ct is not call.invite:
            return
        call.responses.append((status, resp.to.tag))
        call.msgs.append(resp)
        if status < 200:
            call.provisional = True
            if call.cancel_wanted and call.cancel is None:
                self._send_cancel(call)
            return
        if status < 300:
            if call.final is None:
                call.final = status
                call.finals.append(status)
            self._ack_2xx(call, resp)
            return
        if call.final is None:
            call.final = status
            call.finals.append(status)
        if status == 407 and call.auth_wanted and not call.authed and not call.cancel_wanted:
            call.authed = True
            ch = [v for v in resp.get_all("proxy-authenticate") if "MD5" in v][0]
            self._send_invite(call, digest_header(ch, self.user, self.password, "INVITE", call.target,
                                                  name="Proxy-Authorization"))

    def _ack_2xx(self, call, resp):
        """§13.2.2.4: an ACK for every 2xx (the same ACK again for a retransmission), along the dialog's route set
        to its remote target."""
        tag = resp.to.tag
        routes = tuple(reversed(resp.get_all("record-route")))
        target = resp.contacts[0].uri.raw
        if call.to_tag is None:
            call.to_tag = tag
            call.remote_target = target
            call.route_set = routes
        data = call.acks.get(tag)
        if data is None:
            via = call.invite.ack_info[1] if self.ack_reuses_via else self.via(self.cookie + self.uid("a"))
            lines = [f"Via: {via}", "Max-Forwards: 70",
                     f"From: <sip:{self.user}@{self.domain}>;tag={call.from_tag}", f"To: {resp.get('to')}",
                     f"Call-ID: {call.call_id}", f"CSeq: {resp.cseq.num} ACK"]
            lines += [f"Route: {r}" for r in routes]
            data = self._build(f"ACK {target} SIP/2.0", lines)
            call.acks[tag] = data
        call.acks_sent += 1
        self.ctx.send(data, self._hop(routes, target))

    def _hop(self, routes, target):
        parse_uri = self.sim.app.parse_uri
        uri = parse_uri(routes[0][routes[0].find("<") + 1:routes[0].rfind(">")]) if routes else parse_uri(target)
        return uri.host, uri.port or 5060

    # ------------------------------------------------------------------ UAS
    def on_request(self, req, src, now):
        st = self.txns.match_request(req)
        if st is not None and st.state is not TERMINATED:
            st.on_request(req, now, self.ctx)
            if req.method == "ACK":
                self._acked(req)
            return
        top = received_via(req.via, src[0], src[1])
        target = response_target(top if top is not None else req.via)
        top_raw = top.raw if top is not None else None
        method = req.method
        if method == "ACK":
            self._acked(req, for_2xx=True)
            return
        if method == "INVITE":
            st = InviteServerTransaction(server_key(req), target, self.txns, self.timers, tu=self,
                                         top_via=top_raw)
            self.txns.add(st)
            inc = InCall(req, st, self.uid("u"))
            self.incoming.append(inc)
            self.by_callid[req.call_id] = inc
            self._run_script(inc)
            return
        st = NonInviteServerTransaction(server_key(req), target, self.txns, self.timers, tu=self,
                                        top_via=top_raw)
        self.txns.add(st)
        if method == "CANCEL":
            key = st.key
            ist = self.txns.get(key[:-len("CANCEL")] + "INVITE")
            if ist is None:
                st.respond(make_response(req, 481, top_via=top_raw), 481, now, self.ctx)
                return
            st.respond(make_response(req, 200, top_via=top_raw), 200, now, self.ctx)
            inc = self.by_callid.get(req.call_id)
            if ist.state is PROCEEDING and inc is not None:
                inc.cancelled = True
                self._respond(inc, 487)
            return
        if method == "BYE":
            inc = self.by_callid.get(req.call_id)
            status = 200 if inc is not None else 481
            if inc is not None:
                inc.bye = True
            st.respond(make_response(req, status, to_tag=None, top_via=top_raw), status, now, self.ctx)
            return
        st.respond(make_response(req, 200, top_via=top_raw), 200, now, self.ctx)

    def _acked(self, req, for_2xx=False):
        inc = self.by_callid.get(req.call_id)
        if inc is not None:
            inc.acks += 1
            if for_2xx:
                inc.acked = True

    def _run_script(self, inc):
        steps = self.script
        for i, (delay, status) in enumerate(steps):
            last = i == len(steps) - 1
            self.ctx.wheel.schedule(self.now + delay, self._script_step, (inc, status, last))
        if not steps and self.deaf_after_script:
            self.deaf = True

    def _script_step(self, arg, now):
        inc, status, last = arg
        if inc.st.state is PROCEEDING:
            self._respond(inc, status)
        if last and self.deaf_after_script:
            self.deaf = True

    def _respond(self, inc, status):
        req = inc.req
        headers = []
        if 100 < status < 300:
            headers.append(f"Contact: {self.contact()}")
            headers += [f"Record-Route: {r}" for r in req.get_all("record-route")]
        if status in (401, 407) and self.challenge:
            name = "WWW-Authenticate" if status == 401 else "Proxy-Authenticate"
            headers.append(f"{name}: {self.challenge}")
        data = make_response(req, status, to_tag=inc.tag, headers=headers, top_via=inc.st.top_via)
        inc.sent.append(status)
        inc.st.respond(data, status, self.now, self.ctx)
        if 200 <= status < 300:
            inc.ok_data = data
            self.ctx.wheel.schedule(self.now + self.timers.t1, self._retransmit_2xx, (inc, self.timers.t1, self.now))

    def _retransmit_2xx(self, arg, now):
        """§13.3.1.4: the UAS core retransmits the 2xx (T1 doubling to T2) until the ACK, for 64*T1."""
        inc, interval, started = arg
        if inc.acked or inc.bye or self.deaf:
            return
        if now - started >= 64 * self.timers.t1:
            inc.gave_up = True
            return
        if inc.st.state is not TERMINATED:
            inc.st.respond(inc.ok_data, 200, now, self.ctx)
        else:
            self.ctx.send(inc.ok_data, inc.st.addr)
        interval = min(2 * interval, self.timers.t2)
        self.ctx.wheel.schedule(now + interval, self._retransmit_2xx, (inc, interval, started))


class Sink:
    """A host that only records what reaches it."""

    def __init__(self, sim, name, addr):
        self.got = []
        self.addr = addr
        sim.net.attach(addr, self, name)

    def receive(self, data, src, now):
        self.got.append((data, src))

    def tick(self, now):
        pass


# ==================================================================================================== the world
class Sim:
    def __init__(self, seed=0, loss=0.0, dup=0.0, reorder=0.0, latency=0.005, proxy=None, users=None,
                 resolver=None, t1=0.5, t2=4.0, t4=5.0):
        self.k = 0
        self.now = T0
        self.net = Network(seed, loss, dup, reorder, latency)
        self.timers = TimerConfig(t1, t2, t4)
        ov = {("transaction", "t1"): t1, ("transaction", "t2"): t2, ("transaction", "t4"): t4}
        ov.update({tuple(k.split(".")): v for k, v in (proxy or {}).items()})
        self.proxy = ProxyNode(self.net, self.now, ov, users, resolver)
        self.app = self.proxy.app
        self.nodes = [self.proxy]

    def ua(self, name, host, **kw):
        return UA(self, name, host, **kw)

    def step(self):
        self.k += 1
        self.now = T0 + self.k * STEP
        self.net.now = self.now
        self.net.deliver_due(self.now)
        for node in self.nodes:
            node.tick(self.now)

    def run(self, seconds):
        end = self.now + seconds
        while self.now < end - 1e-9:
            self.step()

    def run_until(self, pred, timeout=60.0):
        end = self.now + timeout
        while not pred():
            if self.now >= end - 1e-9:
                return False
            self.step()
        return True

    def register(self, *uas):
        for ua in uas:
            ua.register()
        assert self.run_until(lambda: all(u.reg_final is not None for u in uas), 40), "registration hung"
        for ua in uas:
            assert ua.reg_final == 200, (ua.name, ua.reg_final)

    def idle(self):
        return all(n.idle() for n in self.nodes if hasattr(n, "idle"))

    def drain(self, limit=120.0):
        """Run until every transaction table (the proxy's and every UA's) is empty, then check nothing leaks: every
        transaction the proxy created ended Terminated, no live timer is left on its wheel once the wheel has
        gone round (cancelled entries are dropped when their slot is walked), and no proxy transaction (nor, with it,
        its call context) is still referenced by anything, without the help of the cyclic GC."""
        ok = self.run_until(self.idle, limit)
        left = {n.name if hasattr(n, "name") else "proxy": len(n.txns if hasattr(n, "txns") else n.app.txns)
                for n in self.nodes}
        assert ok, f"transaction tables did not drain: {left}"
        self.run(42)                               # one revolution of the 4096 x 10 ms wheel
        assert len(self.app.txns) == 0
        assert self.proxy.watch.all_terminated(), self.proxy.watch.items
        assert self.proxy.ctx.live_timers() == 0
        # freed by reference counting alone: a call and its transactions must not be left in a reference cycle,
        # which only the cyclic GC frees - and on 3.13t a collection stops every worker thread at once
        alive = [item[:3] for item in self.proxy.watch.items if item[3]() is not None]
        gc.collect()
        still = [item[:3] for item in self.proxy.watch.items if item[3]() is not None]
        assert still == [], f"proxy transactions still referenced after the drain: {still}"
        assert alive == [], f"proxy transactions left in reference cycles (freed only by the cyclic GC): {alive}"
        return True
