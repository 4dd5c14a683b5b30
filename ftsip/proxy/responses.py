"""Choosing the response a forking proxy sends upstream (RFC 3261 §16.7 step 6) and merging challenges (step 7)."""

from ftsip.dicts import get as dget

# within a class, the responses that help the caller most come first
_PREFERRED = {401: 0, 407: 0, 415: 1, 420: 1, 484: 1, 486: 2, 480: 3, 404: 4, 487: 5, 408: 6}


def rank(status):
    """Smaller is better: any 6xx, then 3xx < 4xx < 5xx, then the preferences above, then the code."""
    if status >= 600:
        return (0, 0, status)
    return (status // 100, dget(_PREFERRED, status, 9), status)


def best(responses):
    """``responses``: list of (status, response or None); returns the entry to forward (None for an empty
    list)."""
    chosen = None
    for entry in responses:
        if chosen is None or rank(entry[0]) < rank(chosen[0]):
            chosen = entry
    return chosen


def challenges(responses):
    """Every WWW-Authenticate/Proxy-Authenticate line of the 401/407 responses collected (§16.7 step 7)."""
    lines = []
    for status, resp in responses:
        if resp is not None and (status == 401 or status == 407):
            for key, name, value, raw in resp.headers:
                if key == "www-authenticate" or key == "proxy-authenticate":
                    lines.append((key, name + ": " + value))
    return lines
