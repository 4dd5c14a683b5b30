"""Workloads: what the load generators send. The step test and the CLI only talk to this interface.

A workload turns "offer this level to this SUT for S seconds with K generator processes" into SIPp runs, and may need
peers of its own (callee UASs, a voicemail UAS), registered users and files (injection files, scenario variants).

- :class:`RegisterWorkload` (level = REGISTER exchanges/s): REGISTER -> 401 -> REGISTER with credentials -> 200.
- :class:`CallWorkload` (level = calls/s): the paper's call mix (completed 65 %, voicemail 30 %, cancelled 5 %),
  INVITE and BYE authenticated, through the proxy to SIPp callees registered beforehand.
- :class:`UsersWorkload` (level = users): the paper's user model at a time-compression factor (see callmix.py):
  N users, all registered, offering N*c/600 REGISTER/s and N*c/3600 calls/s of the call mix.
"""
from __future__ import annotations

import os
import random
import time

from .callmix import REGISTER_EXPIRES_S, TX_PER_CALL, CallMix
from .sipp import (SCENARIOS, PeerConfig, SippConfig, SippPeer, SippRun, sampled_pause_xml,
                   scenario_variant, sipp_has_gsl)
from .sut import free_udp_port
from .users import Population, write_sipp_injection

# callee classes: user i takes calls of one kind, by i % 20 (13 answer = 65 %, 6 busy = 30 %, 1 ring = 5 %)
CLASS_OF_KIND = {"completed": "answer", "voicemail": "busy", "cancelled": "ring"}


def callee_class(i):
    r = i % 20
    return "answer" if r < 13 else ("busy" if r < 19 else "ring")


class Workload:
    """The interface. One SIPp "call" is one unit of offered load (a REGISTER exchange, a call, ...)."""

    name = "workload"
    unit = "call"                   # what one SIPp call is, for tables ("REGISTER", "call")
    level_unit = "/s"               # what a step's level counts ("/s": a rate; "users": a population)
    transactions_per_call = 1       # SIP transactions per SIPp call, for CPU per transaction
    max_call_seconds = 0.0          # longest a SIPp call may last beyond its responses (holds), for the tail

    def prepare(self, workdir: str, population: Population, generators: int) -> None:
        """Write scenario/injection files into ``workdir`` (once per run, before any SUT is measured)."""
        raise NotImplementedError

    def sut_options(self) -> dict:
        """Options the SUTs need for this workload (e.g. {'voicemail': 'sip:vm@127.0.0.1:PORT'})."""
        return {}

    def on_sut_started(self, sut) -> None:
        """Called once after a SUT answers (before its first step): e.g. register the callees."""

    def before_step(self, sut, level) -> None:
        """Called before each step (after start_peers): e.g. register the users a bigger population adds."""

    def start_peers(self, sut) -> None:
        """Start what must run beside the generators for this SUT (callee UASs, voicemail UAS); default none."""

    def stop_peers(self) -> None:
        """Stop everything start_peers started."""

    def peers(self) -> list:
        return []

    def generators(self, sut, level: float, seconds: float, n: int, workdir: str, **opts) -> list[SippConfig]:
        """SIPp configurations offering ``level`` (split over ``n`` processes each) to ``sut`` for ``seconds``."""
        raise NotImplementedError

    def offered_rate(self, level) -> float:
        """SIPp calls per second (all generators) at this level."""
        return float(level)

    def expected_in_flight(self, level) -> float:
        """SIPp calls in progress at steady state (Little's law), beyond which a step has a backlog."""
        return 0.0

    def describe_level(self, level) -> str:
        return f"{level:g} {self.unit}/s"

    def describe(self) -> dict:
        return {"name": self.name, "unit": self.unit, "level_unit": self.level_unit,
                "transactions_per_call": self.transactions_per_call}


def _split(total, n):
    return [total // n + (1 if j < total % n else 0) for j in range(n)]


class RegisterWorkload(Workload):
    """REGISTER -> 401 -> REGISTER with MD5 credentials -> 200 (two transactions), users in sequence, each keeping
    one binding (Contact from the injection file), ``expires`` seconds asked (the paper: 15 min). ``contact_of(i)``
    gives user i's Contact host:port (default: one address for all, ``contact``)."""

    name = "register"
    unit = "REGISTER"
    transactions_per_call = 2

    def __init__(self, expires: int = 900, contact: str = "127.0.0.1:15999",
                 scenario: str = os.path.join(SCENARIOS, "register.xml"), contact_of=None):
        self.expires, self.contact, self.scenario, self.contact_of = expires, contact, scenario, contact_of
        self.injection = []

    def prepare(self, workdir, population, generators):
        self.population = population
        self.injection = []
        for j, r in enumerate(population.slices(generators)):
            path = os.path.join(workdir, f"register-users-{j}.inf")
            self.injection.append(write_sipp_injection(population, path, r, self.expires, self.contact,
                                                       contact_of=self.contact_of))

    def generators(self, sut, level, seconds, n, workdir, **opts):
        if n > len(self.injection):
            raise ValueError(f"prepared for {len(self.injection)} generators, asked for {n}")
        calls = max(1, round(level * seconds))
        return [SippConfig(scenario=self.scenario, host=sut.host, port=sut.port, rate=level / n, calls=share,
                           injection=self.injection[j], kind="register", tx_per_call=2, **opts)
                for j, share in enumerate(_split(calls, n)) if share]

    def describe(self):
        d = super().describe()
        d.update(expires=self.expires, contact=self.contact if self.contact_of is None else "per user",
                 scenario=os.path.basename(self.scenario), auth="digest MD5 (SIPp answers the first challenge)")
        return d


class _Peers:
    """The callee side: SIPp UASs per callee class (answer / busy / ring), ``k`` of each, and a voicemail UAS, on
    ports fixed for the whole run (users register these ports as their Contacts)."""

    def __init__(self, mix: CallMix, k: int, workdir: str, cpus=None):
        self.k, self.workdir, self.cpus = k, workdir, cpus
        self.ports = {cls: [free_udp_port() for _ in range(k)] for cls in ("answer", "busy", "ring")}
        self.vm_port = free_udp_port()
        ring = sampled_pause_xml("ring", "uniform", min=mix.ring_min_ms, max=mix.ring_max_ms)
        self.scenarios = {
            "answer": scenario_variant("uas_answer.xml", os.path.join(workdir, "uas_answer_ring.xml"), ring),
            "busy": os.path.join(SCENARIOS, "uas_busy.xml"),
            "ring": os.path.join(SCENARIOS, "uas_ring.xml"),
            "voicemail": os.path.join(SCENARIOS, "uas_answer.xml"),
        }
        self.running = []
        self.counter = 0

    def contact_of(self, i):
        cls = callee_class(i)
        return f"127.0.0.1:{self.ports[cls][(i // 20) % self.k]}"

    @property
    def voicemail_uri(self):
        return f"sip:vm@127.0.0.1:{self.vm_port}"

    def start(self):
        self.counter += 1
        d = os.path.join(self.workdir, f"peers-{self.counter}")
        specs = [(cls, port, None) for cls, ports in self.ports.items() for port in ports]
        specs.append(("voicemail", self.vm_port, 0))
        for cls, port, pause in specs:
            cfg = PeerConfig(self.scenarios[cls], port, kind=f"uas-{cls}", pause_ms=pause, cpus=self.cpus)
            self.running.append(SippPeer(cfg, d, name=f"uas-{cls}-{port}").start())
        time.sleep(0.4)
        dead = [p for p in self.running if not p.running()]
        if dead:
            tail = dead[0].output_tail(600)
            self.stop()
            raise RuntimeError(f"SIPp UAS {dead[0].name} exited at once (port taken?): {tail}")

    def stop(self):
        for p in self.running:
            p.stop()
        self.running = []


class CallWorkload(Workload):
    """The paper's call mix at ``level`` calls/s (no REGISTER load during the step): completed 65 %, voicemail 30 %
    (callee busy -> 486 -> the proxy forwards to the voicemail UAS), cancelled 5 % (CANCEL after the 180), INVITE
    and BYE authenticated (407). The population is registered once per SUT start, Contacts pointing at the callee
    UASs; hold times per call from ``mix`` (compressed by its factor)."""

    name = "calls"
    unit = "call"

    def __init__(self, mix: CallMix | None = None, uas_per_class: int = 1, register_rate: float = 2000.0,
                 peer_cpus=None, seed: int = 7):
        self.mix = mix or CallMix()
        self.uas_per_class, self.register_rate, self.peer_cpus, self.seed = (uas_per_class, register_rate,
                                                                             peer_cpus, seed)
        self.transactions_per_call = self.mix.tx_per_call()
        self.max_call_seconds = self.mix.max_call_seconds()
        self.registered = {}          # sut label -> users 0..n-1 registered since its start
        self.registration_log = []

    # --- files
    def prepare(self, workdir, population, generators):
        self.workdir, self.population = workdir, population
        self._peers = _Peers(self.mix, self.uas_per_class, workdir, self.peer_cpus)
        self.gsl = sipp_has_gsl()
        holds = self.mix.holds()
        if self.gsl:
            call_pause = sampled_pause_xml("hold", "lognormal", holds["completed"].cap_ms,
                                           **holds["completed"].params())
            vm_pause = sampled_pause_xml("hold", "exponential", holds["voicemail"].cap_ms,
                                         **holds["voicemail"].params())
            cancel_pause = sampled_pause_xml("ring", "uniform", min=self.mix.ring_min_ms, max=self.mix.ring_max_ms)
        else:   # fixed holds at the means (SIPp without GSL cannot sample)
            call_pause = f'<pause milliseconds="{int(holds["completed"].mean_ms)}"/>'
            vm_pause = f'<pause milliseconds="{int(holds["voicemail"].mean_ms)}"/>'
            cancel_pause = f'<pause milliseconds="{(self.mix.ring_min_ms + self.mix.ring_max_ms) // 2}"/>'
        # latency = SIPp's rtd "1": INVITE -> 407 (one round trip through the server's auth, no callee involved);
        # rtd "setup": the authenticated INVITE -> 200 (includes the callee's ring time)
        rtd = {'<send retrans="500" start_txn="inv1">': '<send retrans="500" start_txn="inv1" start_rtd="1">',
               '<recv response="407" auth="true" response_txn="inv1"/>':
                   '<recv response="407" auth="true" response_txn="inv1" rtd="1"/>',
               '<send retrans="500"><![CDATA[\n\nINVITE': '<send retrans="500" start_rtd="setup"><![CDATA[\n\nINVITE',
               '<recv response="200" rrs="true" rtd="true"/>': '<recv response="200" rrs="true" rtd="setup"/>',
               '<ResponseTimeRepartition value="10, 20, 50, 100, 200, 500, 1000"/>':
                   '<ResponseTimeRepartition value="1, 2, 5, 10, 20, 50, 100, 200, 500, 1000"/>'}
        self.scenarios = {
            "completed": scenario_variant("uac_call.xml", os.path.join(workdir, "uac_completed.xml"), call_pause,
                                          rtd),
            "voicemail": scenario_variant("uac_call.xml", os.path.join(workdir, "uac_voicemail.xml"), vm_pause, rtd),
            # the 200 to the CANCEL and the 487 to the INVITE may cross (Kamailio sends them from different
            # processes): accept either order (a late 200 is absorbed as a dead-call message)
            "cancelled": scenario_variant("uac_cancel.xml", os.path.join(workdir, "uac_cancelled.xml"),
                                          cancel_pause, dict({k: v for k, v in rtd.items() if "setup" not in v},
                                                             **{'<recv response="200"/>\n  <recv response="487"/>':
                                                                '<recv response="200" optional="true"/>\n'
                                                                '  <recv response="487"/>'})),
        }
        self._inj_cache = {}
        self._reg_inj = {}

    def contact_of(self, i):
        return self._peers.contact_of(i)

    def sut_options(self):
        return {"voicemail": self._peers.voicemail_uri}

    def _call_injection(self, kind, users, workdir):
        """Caller/callee pairs for one call kind among users 0..users-1 (callees of the kind's class)."""
        key = (kind, users)
        if key in self._inj_cache:
            return self._inj_cache[key]
        cls = CLASS_OF_KIND[kind]
        rnd = random.Random(f"{self.seed}:{kind}:{users}")
        callees = [i for i in range(users) if callee_class(i) == cls]
        if not callees:
            raise ValueError(f"{users} users hold no '{cls}' callee: use at least 20 users")
        pop = self.population
        path = os.path.join(workdir, f"calls-{kind}-{users}.inf")
        with open(path, "w") as f:
            f.write("SEQUENTIAL\n")
            for _ in range(min(max(users, 200), 20000)):
                a, b = rnd.randrange(users), rnd.choice(callees)
                u, p = pop.username(a), pop.password(a)
                f.write(f"{u};{pop.domain};[authentication username={u} password={p}];{pop.username(b)}\n")
        self._inj_cache[key] = path
        return path

    def _register_injection(self, lo, hi, shuffle=False):
        key = (lo, hi, shuffle)
        if key not in self._reg_inj:
            idx = list(range(lo, hi))
            if shuffle:
                random.Random(f"{self.seed}:reg:{hi}").shuffle(idx)
            path = os.path.join(self.workdir, f"register-{lo}-{hi}{'-shuffled' if shuffle else ''}.inf")
            self._reg_inj[key] = write_sipp_injection(self.population, path, idx, REGISTER_EXPIRES_S,
                                                      contact_of=self.contact_of)
        return self._reg_inj[key]

    # --- registration of the population (before steps)
    def register_users(self, sut, upto, on_event=None):
        """Register users [registered .. upto) at ``register_rate`` with SIPp (digest auth); retried once slower."""
        have = self.registered.get(sut.label, 0)
        if upto <= have:
            return
        t0 = time.monotonic()
        rate = self.register_rate
        for attempt in range(3):
            inj = self._register_injection(have, upto)
            cfg = SippConfig(scenario=os.path.join(SCENARIOS, "register.xml"), host=sut.host, port=sut.port,
                             rate=rate, calls=upto - have, injection=inj, kind="register", max_socket=50,
                             recv_timeout_ms=5000)
            d = os.path.join(self.workdir, f"registration-{sut.label}-{have}-{upto}-{attempt}")
            run = SippRun(cfg, d, name="reg").start()
            run.wait(timeout=(upto - have) / rate + 60)
            run.stop()
            rows = run.rows()
            ok = rows[-1].c("SuccessfulCall") if rows else 0
            failed = rows[-1].c("FailedCall") if rows else upto - have
            if failed == 0 and ok == upto - have:
                break
            rate /= 2
            if on_event:
                on_event(f"{sut.label}: registering users {have}..{upto}: {failed} failed, again at {rate:g}/s")
        else:
            raise RuntimeError(f"{sut.label}: could not register users {have}..{upto} (last try: {failed} failed); "
                               f"see {d}")
        self.registered[sut.label] = upto
        self.registration_log.append({"sut": sut.label, "from": have, "to": upto,
                                      "seconds": round(time.monotonic() - t0, 1)})

    def on_sut_started(self, sut):
        self.registered[sut.label] = 0
        self.register_users(sut, self.population.size)

    # --- peers
    def start_peers(self, sut):
        self._peers.start()

    def stop_peers(self):
        self._peers.stop()

    def peers(self):
        return list(self._peers.running)

    # --- generators
    def _call_generators(self, sut, call_rate, users, seconds, n, workdir, **opts):
        out = []
        for kind, share in self.mix.mix:
            r = call_rate * share
            calls = round(r * seconds)
            if calls <= 0:
                continue
            inj = self._call_injection(kind, users, self.workdir)
            limit = max(200, int(r / n * (self.max_call_seconds + 10) * 1.5))
            for share_calls in _split(calls, n):
                if share_calls:
                    out.append(SippConfig(scenario=self.scenarios[kind], host=sut.host, port=sut.port, rate=r / n,
                                          calls=share_calls, injection=inj, kind=kind, tx_per_call=TX_PER_CALL[kind],
                                          call_limit=limit, **opts))
        return out

    def generators(self, sut, level, seconds, n, workdir, **opts):
        return self._call_generators(sut, level, self.population.size, seconds, n, workdir, **opts)

    def expected_in_flight(self, level):
        return level * self.mix.mean_call_seconds()

    def describe_level(self, level):
        return f"{level:g} calls/s ({self.population.size:,} users registered)"

    def describe(self):
        d = super().describe()
        d.update(mix=self.mix.describe(), hold_sampling="per call (SIPp <sample>, GSL)" if getattr(self, "gsl", True)
                 else "fixed at the means (this SIPp has no GSL)", uas_per_class=self.uas_per_class,
                 voicemail="callee registered but busy (486) -> proxy fails over to the voicemail UAS",
                 registration=self.registration_log)
        return d


class UsersWorkload(CallWorkload):
    """The paper's users at a time-compression factor: ``level`` = population N, all registered before the step;
    the step offers N*c/600 REGISTER/s (refreshes, Expires 900) and N*c/3600 calls/s of the mix."""

    name = "users"
    unit = "user"
    level_unit = "users"

    def __init__(self, mix: CallMix | None = None, **kw):
        super().__init__(mix, **kw)
        self.transactions_per_call = None      # mixed: counted per generator (REGISTER 2, calls 3-4)

    def on_sut_started(self, sut):
        self.registered[sut.label] = 0

    def before_step(self, sut, level):
        if level > self.population.size:
            raise ValueError(f"population {level} exceeds the prepared {self.population.size} users (--max-users)")
        self.register_users(sut, int(level))

    def generators(self, sut, level, seconds, n, workdir, **opts):
        users = int(level)
        reg_rate = self.mix.register_rate(users)
        out = []
        reg_calls = round(reg_rate * seconds)
        if reg_calls:
            inj = self._register_injection(0, users, shuffle=True)
            for share in _split(reg_calls, n):
                if share:
                    out.append(SippConfig(scenario=os.path.join(SCENARIOS, "register.xml"), host=sut.host,
                                          port=sut.port, rate=reg_rate / n, calls=share, injection=inj,
                                          kind="register", tx_per_call=2, **opts))
        return out + self._call_generators(sut, self.mix.call_rate(users), users, seconds, n, workdir, **opts)

    def offered_rate(self, level):
        return self.mix.register_rate(level) + self.mix.call_rate(level)

    def expected_in_flight(self, level):
        return self.mix.call_rate(level) * self.mix.mean_call_seconds()

    def describe_level(self, level):
        return self.mix.describe_users(int(level))


WORKLOADS = {"register": RegisterWorkload, "calls": CallWorkload, "users": UsersWorkload}
