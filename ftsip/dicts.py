"""Dictionary lookups that stay fast when another thread made the dict (free-threaded CPython 3.13).

On 3.13t, ``d.get(k)`` that finds a key equal to - but not the same object as - ``k``, in a dict another thread
created, re-enters the dict's critical section on a slow path: about 6.5 us instead of 40 ns (measured here on
3.13.5t; a hit on a module-level table could cost 40 us under load). ``d[k]`` and ``k in d`` do not have the
problem. The request path meets such dicts all the time: module-level tables, the parameters of a message parsed
by another worker, the guard's and the nonce counter's shards. So its lookups go through ``get`` below (or its
inline form ``d[k] if k in d else default``)."""


def get(d, key, default=None):
    """``d.get(key, default)`` without 3.13t's slow path."""
    return d[key] if key in d else default
