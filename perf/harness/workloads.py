"""Workloads: what the load generators send. The step test and the CLI only talk to this interface.

A workload turns "offer R <units>/s for S seconds to this SUT with K generators" into SIPp runs, and may need peers
of its own (callee UASs, a voicemail UAS) and files (injection files, scenarios). REGISTER-with-auth is implemented;
the call workloads (the paper's completed / voicemail / cancelled calls through the proxy) are stubs until ftsip's
proxy lands (issue 4) - see :class:`CallWorkload` for what they must do.
"""
from __future__ import annotations

import os

from .sipp import SCENARIOS, SippConfig
from .users import Population, write_sipp_injection


class Workload:
    """The interface. One SIPp "call" is one unit of offered load (a REGISTER exchange, a call, ...)."""

    name = "workload"
    unit = "call"                   # what one SIPp call is, for tables ("REGISTER", "call")
    transactions_per_call = 1       # SIP transactions per SIPp call, for CPU per transaction

    def prepare(self, workdir: str, population: Population, generators: int) -> None:
        """Write scenario/injection files into ``workdir`` (once per run, before any SUT is measured)."""
        raise NotImplementedError

    def sut_options(self) -> dict:
        """Options the SUTs need for this workload (e.g. {'voicemail': 'sip:vm@127.0.0.1:PORT'})."""
        return {}

    def start_peers(self, sut) -> None:
        """Start what must run beside the generators for this SUT (callee UASs, voicemail UAS); default none."""

    def stop_peers(self) -> None:
        """Stop everything start_peers started."""

    def generators(self, sut, rate: float, calls: int, n: int, workdir: str, **opts) -> list[SippConfig]:
        """SIPp configurations offering ``rate`` units/s (split over ``n`` processes) to ``sut``."""
        raise NotImplementedError

    def describe(self) -> dict:
        return {"name": self.name, "unit": self.unit, "transactions_per_call": self.transactions_per_call}


class RegisterWorkload(Workload):
    """REGISTER -> 401 -> REGISTER with MD5 credentials -> 200 (two transactions), users in sequence, each keeping
    one binding (Contact from the injection file), ``expires`` seconds asked (the paper: 15 min)."""

    name = "register"
    unit = "REGISTER"
    transactions_per_call = 2

    def __init__(self, expires: int = 900, contact: str = "127.0.0.1:15999",
                 scenario: str = os.path.join(SCENARIOS, "register.xml")):
        self.expires, self.contact, self.scenario = expires, contact, scenario
        self.injection = []

    def prepare(self, workdir, population, generators):
        self.population = population
        self.injection = []
        for j, r in enumerate(population.slices(generators)):
            path = os.path.join(workdir, f"register-users-{j}.inf")
            self.injection.append(write_sipp_injection(population, path, r, self.expires, self.contact))

    def generators(self, sut, rate, calls, n, workdir, **opts):
        if n > len(self.injection):
            raise ValueError(f"prepared for {len(self.injection)} generators, asked for {n}")
        out = []
        for j in range(n):
            share = calls // n + (1 if j < calls % n else 0)
            out.append(SippConfig(scenario=self.scenario, host=sut.host, port=sut.port, rate=rate / n,
                                  calls=share, injection=self.injection[j], **opts))
        return out

    def describe(self):
        d = super().describe()
        d.update(expires=self.expires, contact=self.contact, scenario=os.path.basename(self.scenario),
                 auth="digest MD5 (SIPp answers the first challenge)")
        return d


class CallWorkload(Workload):
    """Authenticated calls through the proxy - NOT IMPLEMENTED YET (waits for ftsip's proxy, issue 4).

    What it has to do, so the step test and the CLI work unchanged:
    - ``prepare``: caller injection files (caller user + credentials, callee user), callee injection files for the
      UAS side; a caller scenario INVITE -> 407 -> INVITE with Proxy-Authorization -> 100/180/200 -> ACK -> hold ->
      BYE -> 407 -> BYE with credentials -> 200 (SIPp 3.6.1: MD5, first challenge, digest uri = sip:host:port unless
      -auth_uri), and for the call mix (issue 7: completed 65 % with log-normal hold, voicemail 30 %, cancelled 5 %)
      either one scenario with ``<nop><action><setdest>/rand`` branches or three SIPp generators at 0.65/0.30/0.05 of
      the rate;
    - ``sut_options``: the voicemail URI (KamailioSUT(voicemail=...), ftsip [proxy] voicemail);
    - ``start_peers``: callee UAS SIPp processes (``-sf uas.xml``, ring time then 200, or 486 for voicemail calls)
      registered under the callee users BEFORE the step (a REGISTER pass with their real listening port in the
      Contact: the injection file's field4), and a voicemail UAS on the voicemail URI's port;
    - ``transactions_per_call``: INVITE(407) + INVITE + BYE(407) + BYE = 4 (+ ACK, not a transaction).
    """

    name = "calls"
    unit = "call"
    transactions_per_call = 4

    MESSAGE = ("the call workload is not implemented yet: it waits for ftsip's stateful proxy (issue 4). "
               "perf/harness/workloads.py:CallWorkload lists what it must provide (caller/callee scenarios with "
               "407 on INVITE and BYE, callee UAS and voicemail UAS peers, the 65/30/5 call mix); "
               "perf/kamailio/kamailio.cfg already routes calls (record_route, t_relay, 404/480, voicemail "
               "failover on 486/408/480).")

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs

    def prepare(self, workdir, population, generators):
        raise NotImplementedError(self.MESSAGE)

    def start_peers(self, sut):
        raise NotImplementedError(self.MESSAGE)

    def generators(self, sut, rate, calls, n, workdir, **opts):
        raise NotImplementedError(self.MESSAGE)


WORKLOADS = {"register": RegisterWorkload, "calls": CallWorkload}
