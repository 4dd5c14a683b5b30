"""JSON in one place: orjson when it is installed (no 3.13t wheel exists, see FACTS.md), else the stdlib."""
try:
    import orjson as _orjson
except ImportError:  # free-threaded 3.13: no orjson
    _orjson = None
import json as _json

BACKEND = "orjson" if _orjson is not None else "json"


def dumps(obj, indent=False):
    """Serialize to str."""
    if _orjson is not None:
        return _orjson.dumps(obj, option=_orjson.OPT_INDENT_2 if indent else 0, default=str).decode()
    return _json.dumps(obj, indent=2 if indent else None, separators=None if indent else (",", ":"), default=str)


def loads(data):
    if _orjson is not None:
        return _orjson.loads(data)
    return _json.loads(data)
