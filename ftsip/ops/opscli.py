"""Operator subcommands of ``ftsip``: ``top``, ``locations`` and ``users``.

``cli.main`` calls ``add_subcommands(sub)``; each subcommand sets ``func(args) -> exit code``.

Exit codes: 0 done; 1 refused or partly done (the message names the file, the line when there is one, and the fix:
unknown user, user exists, a CSV row skipped, no bindings, endpoint unreachable); 2 bad command line (argparse, no
database named, an unusable --config).
"""
import getpass
import os
import sys
import urllib.error
import urllib.parse
import urllib.request

from ftsip.ops import jsonio
from ftsip.ops import top as top_mod

DEFAULT_URL = top_mod.DEFAULT_URL


def _err(msg):
    print(f"ftsip: {msg}", file=sys.stderr)


# ---- locations ----------------------------------------------------------------------------------------------------
def get_json(url, timeout=5.0):
    """(status, dict) from a JSON endpoint; raises top.FetchError when it cannot be reached."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, jsonio.loads(r.read())
    except urllib.error.HTTPError as e:
        try:
            return e.code, jsonio.loads(e.read())
        except ValueError:
            raise top_mod.FetchError(f"{url}: HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        raise top_mod.FetchError(f"cannot reach {url}: {e.reason} (is ftsip running with [metrics] listen set to "
                                 "this address? give it with --url)") from None
    except (OSError, ValueError) as e:
        raise top_mod.FetchError(f"{url}: {e}") from None


def _expires(s):
    if s is None:
        return "-"
    m, sec = divmod(int(s), 60)
    return f"{m}m{sec:02d}s" if m else f"{sec}s"


def cmd_locations(args):
    from rich.console import Console
    from rich.table import Table
    base = args.url.rstrip("/") + "/locations"
    query = {"limit": str(args.limit)}
    if args.aor:
        query["aor"] = args.aor
    try:
        status, d = get_json(base + "?" + urllib.parse.urlencode(query))
    except top_mod.FetchError as e:
        _err(str(e))
        return 1
    if args.json:
        print(jsonio.dumps(d, indent=True))
        return 0 if status == 200 else 1
    if status != 200:
        _err(d.get("error") or f"HTTP {status}")
        return 1
    console = Console()
    if not args.aor:
        console.print(f"{d['aors']:,} AORs, {'?' if d.get('bindings') is None else format(d['bindings'], ',')} "
                      f"bindings" + (f"; the first {len(d['first'])}:" if d["first"] else ""))
        for aor in d["first"]:
            console.print(f"  {aor}", markup=False, highlight=False)
        return 0
    t = Table(title=f"{d['aor']}: {len(d['bindings'])} binding(s)", title_justify="left")
    for c in ("contact", "expires", "q", "received", "user agent"):
        t.add_column(c, overflow="fold")
    for b in d["bindings"]:
        rcv = b.get("received")
        t.add_row(b["contact"], _expires(b.get("expires_in")), f"{b.get('q', 1.0):g}",
                  f"{rcv[0]}:{rcv[1]}" if rcv else "-", b.get("user_agent") or "-")
    console.print(t)
    for b in d["bindings"]:
        extra = {k: b[k] for k in ("instance", "reg_id", "path", "call_id", "cseq") if b.get(k)}
        if extra and args.verbose:
            console.print(f"  {b['contact']}: {extra}", markup=False, highlight=False)
    return 0


# ---- users --------------------------------------------------------------------------------------------------------
def _db_path(args):
    if args.db:
        return args.db
    if args.config:
        from ftsip import config as config_mod
        try:
            cfg = config_mod.load(args.config)
        except config_mod.ConfigError as e:
            raise _Refused(str(e), 2) from None
        for p in cfg.auth.users:
            if not p.lower().endswith(".csv"):
                return p
        raise _Refused(f"{args.config}: [auth] users names no SQLite file; give --db FILE", 2)
    raise _Refused("give --db FILE (a SQLite user database, created when missing) or --config FILE whose "
                   "[auth] users names one", 2)


class _Refused(Exception):
    def __init__(self, message, code=1):
        super().__init__(message)
        self.code = code


def _password(args):
    if args.password is not None:
        return args.password
    if sys.stdin.isatty():
        pw = getpass.getpass(f"password for {args.username}: ")
        if pw != getpass.getpass("again: "):
            raise _Refused("the two passwords differ; nothing changed")
    else:
        pw = sys.stdin.readline().rstrip("\r\n")
    if not pw:
        raise _Refused("empty password; nothing changed (give --password, --ha1, or type one)")
    return pw


def _problems(e):
    return [str(p) for p in getattr(e, "problems", ())] or [str(e)]


def cmd_users(args):
    from ftsip.auth import userdb
    from ftsip.auth.users import UserStoreError
    try:
        db = _db_path(args)
        action = args.action
        if action == "add":
            pw = None if (args.ha1 or args.ha1_sha256) else _password(args)
            userdb.add_user(db, args.username, pw, ha1_md5=args.ha1, ha1_sha256=args.ha1_sha256,
                            voicemail=args.voicemail, enabled=not args.disabled, replace=args.replace)
            print(f"{'replaced' if args.replace else 'added'} {args.username} in {db}")
        elif action == "remove":
            if not userdb.remove_user(db, args.username):
                raise _Refused(f"{db}: no user {args.username!r} (see: ftsip users list --db {db})")
            print(f"removed {args.username} from {db}")
        elif action in ("enable", "disable"):
            if not userdb.set_enabled(db, args.username, action == "enable"):
                raise _Refused(f"{db}: no user {args.username!r} (see: ftsip users list --db {db})")
            print(f"{action}d {args.username} in {db}")
        elif action == "list":
            users = userdb.list_users(db)
            if args.json:
                print(jsonio.dumps(users, indent=True))
            else:
                _print_users(db, users)
        elif action == "import":
            if not os.path.exists(args.csv):
                raise _Refused(f"{args.csv}: no such file (give the path of a CSV with a username,password header)")
            count, problems = userdb.import_csv(db, args.csv, replace=not args.keep_existing)
            print(f"imported {count} user(s) from {args.csv} into {db}")
            for p in problems:
                print(f"  {p}", file=sys.stderr)
            if problems:
                _err(f"{len(problems)} row(s) not imported as written (listed above, with the line and the fix)")
                return 1
    except _Refused as e:
        _err(str(e))
        return e.code
    except UserStoreError as e:
        for line in _problems(e):
            _err(line)
        return 1
    return 0


def _print_users(db, users):
    from rich.console import Console
    from rich.table import Table
    t = Table(title=f"{db}: {len(users)} user(s)", title_justify="left")
    for c in ("username", "secret", "voicemail", "enabled"):
        t.add_column(c)
    for u in users:
        secret = ", ".join((["password"] if u["has_password"] else []) + [f"HA1 {a}" for a in u["ha1"]]) or "-"
        t.add_row(u["username"], secret, u["voicemail"] or "-", "yes" if u["enabled"] else "NO")
    Console().print(t)


def _add_users(sub):
    import argparse
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--db", metavar="FILE", help="the SQLite user database (created when missing)")
    common.add_argument("--config", metavar="FILE", help="take the database from [auth] users of this config")
    p = sub.add_parser("users", help="manage a SQLite user database (add, remove, list, import, enable, disable)")
    acts = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    a = acts.add_parser("add", parents=[common], help="add a user (asks for the password unless given)")
    a.add_argument("username")
    g = a.add_mutually_exclusive_group()
    g.add_argument("--password", help="the password (visible to other local users in the process list: prefer the "
                                      "prompt, or a line on stdin)")
    g.add_argument("--ha1", metavar="HEX", help="MD5(username:realm:password) instead of a password")
    a.add_argument("--ha1-sha256", metavar="HEX", help="SHA-256(username:realm:password), with or without --ha1")
    a.add_argument("--voicemail", metavar="URI", help="where this user's unanswered calls go")
    a.add_argument("--disabled", action="store_true", help="add it disabled")
    a.add_argument("--replace", action="store_true", help="replace an existing user of that name")
    for name, what in (("remove", "delete a user"), ("enable", "enable a user"),
                       ("disable", "disable a user (refused at authentication, kept in the database)")):
        x = acts.add_parser(name, parents=[common], help=what)
        x.add_argument("username")
    x = acts.add_parser("list", parents=[common], help="list the users (no secrets)")
    x.add_argument("--json", action="store_true")
    x = acts.add_parser("import", parents=[common], help="copy the good rows of a CSV user file in; reports the "
                                                         "others with their line")
    x.add_argument("csv", metavar="CSV")
    x.add_argument("--keep-existing", action="store_true", help="keep users already in the database (default: "
                                                                 "the CSV row replaces them)")
    p.set_defaults(func=cmd_users)


def add_subcommands(sub):
    """Add ``top``, ``locations`` and ``users`` to the ``ftsip`` command's subparsers."""
    top_mod.add_parser(sub)
    p = sub.add_parser("locations", help="show the bindings of an AOR (or count them) from the metrics endpoint")
    p.add_argument("aor", nargs="?", metavar="AOR", help="user@domain (sip: URI accepted); none: count and list AORs")
    p.add_argument("--url", default=DEFAULT_URL, help=f"the metrics endpoint (default {DEFAULT_URL})")
    p.add_argument("--limit", type=int, default=50, help="AORs to list without an AOR (default 50, at most 1000)")
    p.add_argument("--json", action="store_true", help="print the endpoint's JSON")
    p.add_argument("-v", "--verbose", action="store_true", help="also Call-ID, CSeq, instance, Path")
    p.set_defaults(func=cmd_locations)
    _add_users(sub)


__all__ = ["add_subcommands", "cmd_locations", "cmd_users"]
