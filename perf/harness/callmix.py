"""The paper's user model (SPEC SIP Infrastructure-like) and its time compression.

Real time (the paper): every user re-registers every 10 min (Expires 15 min, digest-authenticated) and places a
call after an exponentially distributed think time of mean 1 h. Call types: completed 65 % (log-normal hold, mean
300 s), voicemail 30 % (the callee does not take it: the proxy forwards it to a voicemail UAS, exponential hold, mean
30 s), cancelled 5 % (the caller hangs up while it rings). INVITE and BYE are digest-authenticated (407).

Time compression by a factor ``c`` (every user's clock runs c times faster):

    N users at compression c offer   N * c / 600   REGISTER/s        (2 transactions each)
                                     N * c / 3600  calls/s           (3-4 transactions each, see TX_PER_CALL)
                                     with hold times divided by c    (completed: 300/c s, voicemail: 30/c s)

- the location table holds all N users (every one registered before the step), and the calls in progress are
  those of N real-time users (rate x c, hold / c: Little's law keeps N * 0.058 calls up);
- the message rate is that of N * c real-time users. Both numbers are printed: "N users (c x = load of N*c)".
  c = 1 is the paper's real-time experiment. A population that conforms at c > 1 conforms at c = 1 too (same
  table, same calls in progress, c times fewer messages), so N is a lower bound of the real-time capacity and
  N * c an upper bound (the table of N*c users is not held).

Approximations (documented in perf/README.md):
- SIPp paces new calls deterministically at the aggregate rate; N users with exponential think times would make
  a Poisson stream (same mean, burstier).
- The paper gives the means only: the log-normal's shape is an assumption (sigma of ln(hold) = 1.0 by default,
  coefficient of variation 1.31). Holds are drawn per call by SIPp (``<sample>``, GSL) and capped at ``cap`` x the
  mean so that a step ends in bounded time; the distribution's location parameter is solved so that the CAPPED
  mean is exactly the target mean. Without GSL in SIPp, each call type falls back to a fixed hold (the mean).
- Voicemail: the callee is registered but busy (486), the proxy fails over to the voicemail URI (the paper's
  "callee unavailable"); the voicemail UAS answers at once.
- Ring time is drawn uniformly in [ring_min, ring_max] ms per call and is not compressed (it is a protocol delay:
  it sets how long an INVITE transaction stays pending, which does not depend on the users' clocks).
- Registrations ask Expires 900 s in real seconds, not compressed, so that a step's REGISTERs are refreshes of
  bindings that stay valid; a step visits a random sample of the users in its window.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

REGISTER_INTERVAL_S = 600.0     # each user re-registers every 10 min
REGISTER_EXPIRES_S = 900        # asking 15 min
CALL_INTERVAL_S = 3600.0        # mean think time between calls: 1 h
MIX = (("completed", 0.65), ("voicemail", 0.30), ("cancelled", 0.05))
# SIP transactions of each call type as the caller sees them (ACKs are not transactions):
#   completed / voicemail: INVITE (407), INVITE, BYE (407), BYE; cancelled: INVITE (407), INVITE (487), CANCEL
TX_PER_CALL = {"completed": 4, "voicemail": 4, "cancelled": 3, "register": 2}


def _phi(x):
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def lognormal_capped_mean(mu, sigma, cap):
    """E[min(X, cap)] for ln X ~ N(mu, sigma^2)."""
    lc = math.log(cap)
    return (math.exp(mu + sigma * sigma / 2) * _phi((lc - mu - sigma * sigma) / sigma)
            + cap * (1.0 - _phi((lc - mu) / sigma)))


def exponential_capped_mean(m, cap):
    return m * (1.0 - math.exp(-cap / m))


def solve_increasing(f, target, lo, hi, iters=200):
    """x in [lo, hi] with f(x) = target, f increasing (bisection)."""
    for _ in range(iters):
        mid = (lo + hi) / 2
        if f(mid) < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


@dataclass
class HoldModel:
    """A per-call hold distribution (ms) with a cap; ``params()`` gives SIPp's <sample> parameters."""
    distribution: str          # "lognormal" or "exponential"
    mean_ms: float
    cap_ms: float
    sigma: float = 1.0         # lognormal only: standard deviation of ln(hold)

    def params(self):
        if self.distribution == "lognormal":
            mu = solve_increasing(lambda m: lognormal_capped_mean(m, self.sigma, self.cap_ms), self.mean_ms,
                                  -10.0, math.log(self.cap_ms) + 10)
            return {"mean": mu, "stdev": self.sigma}
        if self.distribution == "exponential":
            if self.cap_ms <= self.mean_ms:
                raise ValueError("the cap must exceed the mean")
            m = solve_increasing(lambda x: exponential_capped_mean(x, self.cap_ms), self.mean_ms,
                                 self.mean_ms, self.mean_ms * 1000)
            return {"mean": m}
        raise ValueError(self.distribution)

    def capped_fraction(self):
        p = self.params()
        if self.distribution == "lognormal":
            return 1.0 - _phi((math.log(self.cap_ms) - p["mean"]) / self.sigma)
        return math.exp(-self.cap_ms / p["mean"])


@dataclass
class CallMix:
    """The user model at a compression factor. ``level`` of the users workload = population N."""
    compression: float = 60.0
    completed_hold_s: float = 300.0        # real-time means (divided by the compression)
    voicemail_hold_s: float = 30.0
    hold_sigma: float = 1.0
    hold_cap: float = 4.0                  # x the (compressed) mean
    ring_min_ms: int = 200
    ring_max_ms: int = 2000
    mix: tuple = MIX

    def share(self, kind):
        return dict(self.mix)[kind]

    def holds(self):
        c = self.compression
        return {
            "completed": HoldModel("lognormal", 1000 * self.completed_hold_s / c,
                                   self.hold_cap * 1000 * self.completed_hold_s / c, self.hold_sigma),
            "voicemail": HoldModel("exponential", 1000 * self.voicemail_hold_s / c,
                                   self.hold_cap * 1000 * self.voicemail_hold_s / c),
        }

    def max_call_seconds(self):
        """Longest a call can take (hold cap + ring + 4 s of SIPp time-wait), for the step's tail."""
        caps = [h.cap_ms for h in self.holds().values()]
        return max(caps) / 1000.0 + self.ring_max_ms / 1000.0 + 5.0

    def mean_call_seconds(self):
        h = self.holds()
        ring = (self.ring_min_ms + self.ring_max_ms) / 2000.0
        return (self.share("completed") * (h["completed"].mean_ms / 1000 + ring)
                + self.share("voicemail") * (h["voicemail"].mean_ms / 1000)
                + self.share("cancelled") * ring)

    # --- the users workload's mapping
    def register_rate(self, users):
        return users * self.compression / REGISTER_INTERVAL_S

    def call_rate(self, users):
        return users * self.compression / CALL_INTERVAL_S

    def tx_per_call(self):
        return sum(share * TX_PER_CALL[k] for k, share in self.mix)

    def describe_users(self, users):
        return (f"{users:,} users at {self.compression:g}x = the message load of {users * self.compression:,.0f} "
                f"real-time users: {self.register_rate(users):,.1f} REGISTER/s + {self.call_rate(users):,.1f} calls/s"
                f", holds {self.holds()['completed'].mean_ms / 1000:g} s / "
                f"{self.holds()['voicemail'].mean_ms / 1000:g} s")

    def describe(self):
        d = asdict(self)
        d["holds"] = {k: dict(asdict(h), sipp_params=h.params(), capped_fraction=round(h.capped_fraction(), 5))
                      for k, h in self.holds().items()}
        d["tx_per_call"] = self.tx_per_call()
        d["mapping"] = ("N users at compression c offer N*c/600 REGISTER/s and N*c/3600 calls/s with holds / c; "
                        "the table holds N users; the message load is that of N*c real-time users")
        return d
