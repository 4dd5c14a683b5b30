"""The one exception the SIP message layer raises."""


class SipParseError(ValueError):
    """A message (or one of its header fields) could not be parsed.

    ``status``/``reason`` are what to answer (400 with a reason naming the problem, 505 for a bad version, 513 for an
    oversized message, 416 for an unsupported URI scheme...). ``answerable`` says whether a response can be built at
    all: only for a request (not ACK) whose top Via could be read; responses are never answered. ``message`` holds the
    partially parsed request to build the response from, when there is one.
    """

    __slots__ = ("status", "reason", "answerable", "message")

    def __init__(self, reason, status=400, answerable=True, message=None):
        ValueError.__init__(self, reason)
        self.reason = reason
        self.status = status
        self.answerable = answerable
        self.message = message

    def key(self):
        """What two parser twins must agree on for the same input."""
        return (type(self).__name__, self.status, self.reason, self.answerable)

    def __repr__(self):
        return f"SipParseError({self.reason!r}, status={self.status}, answerable={self.answerable})"
