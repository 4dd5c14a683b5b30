"""The interface between the SIP core and the protections (flood bans, auth throttling, scanner blocking, overload
shedding). The core calls these hooks; ``NullGuard`` allows everything. ``ftsip.ops.guard.Guard`` implements them.

- ``allow_datagram(addr, now)``: before parsing; False drops the datagram (counted).
- ``check_request(req, addr, now, ctx)``: a new request (not a retransmission); None, or ``(status, reason,
  headers)`` to answer at once instead of doing any work.
- ``auth_blocked(username, addr, now)``: before verifying credentials; None, or ``(status, reason, headers)``.
- ``auth_failed(username, addr, now)`` / ``auth_succeeded(username, addr, now)``: after verifying.
"""


class NullGuard:
    def allow_datagram(self, addr, now):
        return True

    def check_request(self, req, addr, now, ctx):
        return None

    def auth_blocked(self, username, addr, now):
        return None

    def auth_failed(self, username, addr, now):
        pass

    def auth_succeeded(self, username, addr, now):
        pass

    def stats(self):
        return {}
