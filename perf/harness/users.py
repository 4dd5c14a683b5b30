"""A user population, written in the three shapes the systems need.

- ftsip: CSV with the header ``username,password``;
- Kamailio: a db_text directory (files ``cred`` and ``version``) that the htable module loads into memory at start-up
  (``modparam("htable", "db_url", "text:///DIR")``, table ``cred``: key = username, value = password);
- SIPp: injection files, one line per user: ``user;domain;[authentication username=.. password=..];expires;contact``.
  Fields 0-3 are those of perf/scenarios/register.xml; field 4 (``host:port`` of the Contact) is used by the
  harness's own scenario so that every user keeps one binding (SIPp ``-t un`` would otherwise register a new
  contact per local port and pile up to max_contacts).

Passwords are derived from a seed and the username, so the files are reproducible.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Population:
    size: int
    domain: str = "example.com"
    prefix: str = "u"
    seed: str = "ftsip-perf"

    def username(self, i: int) -> str:
        return f"{self.prefix}{i:06d}"

    def password(self, i: int) -> str:
        return hashlib.sha256(f"{self.seed}:{i}".encode()).hexdigest()[:12]

    def __iter__(self):
        for i in range(self.size):
            yield self.username(i), self.password(i)

    def slices(self, k: int):
        """``k`` disjoint, near-equal index ranges covering the population (one per load generator)."""
        k = max(1, min(k, self.size))
        step, extra = divmod(self.size, k)
        out, start = [], 0
        for j in range(k):
            end = start + step + (1 if j < extra else 0)
            out.append(range(start, end))
            start = end
        return out


def write_ftsip_csv(pop: Population, path: str) -> str:
    with open(path, "w") as f:
        f.write("username,password\n")
        for u, p in pop:
            f.write(f"{u},{p}\n")
    return path


def write_kamailio_db(pop: Population, directory: str) -> str:
    """The db_text directory for kamailio.cfg's CRED_DB ("text://" + absolute directory)."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "version"), "w") as f:
        f.write("table_name(str) table_version(int)\ncred:1\n")
    with open(os.path.join(directory, "cred"), "w") as f:
        f.write("key_name(str) key_type(int) value_type(int) key_value(str) expires(int)\n")
        for u, p in pop:
            f.write(f"{u}:0:0:{p}:0\n")
    return directory


def write_ftsip_sqlite(pop: Population, path: str) -> str:
    """The same users as an SQLite database (ftsip's ``users`` table), for ``[auth] store = "sqlite-query"``."""
    import sqlite3
    if os.path.exists(path):
        os.remove(path)
    conn = sqlite3.connect(path)
    try:
        conn.execute("CREATE TABLE users(username TEXT PRIMARY KEY, password TEXT, ha1_md5 TEXT, ha1_sha256 TEXT, "
                     "voicemail TEXT, enabled INTEGER NOT NULL DEFAULT 1)")
        conn.executemany("INSERT INTO users(username, password) VALUES (?, ?)", list(pop))
        conn.commit()
    finally:
        conn.close()
    return path


def kamailio_htable_size(n: int) -> int:
    """htable size exponent (2^size slots) for n entries: about one entry per slot, within 10..20."""
    return max(10, min(20, (max(n, 1) - 1).bit_length()))


def write_sipp_injection(pop: Population, path: str, indices=None, expires: int = 900,
                         contact: str = "127.0.0.1:15999", order: str = "SEQUENTIAL", contact_of=None) -> str:
    """A SIPp injection file (``-inf``). ``contact`` is the host:port registered for every user, unless
    ``contact_of(i)`` gives one per user (the call workloads: each user's callee UAS)."""
    idx = range(pop.size) if indices is None else indices
    with open(path, "w") as f:
        f.write(order + "\n")
        for i in idx:
            u, p = pop.username(i), pop.password(i)
            c = contact if contact_of is None else contact_of(i)
            f.write(f"{u};{pop.domain};[authentication username={u} password={p}];{expires};{c}\n")
    return path


def write_all(pop: Population, directory: str, generators: int = 1, expires: int = 900,
              contact: str = "127.0.0.1:15999") -> dict:
    """Every file for a run: {'csv': path, 'kamailio_db': dir, 'injection': [path per generator]}."""
    os.makedirs(directory, exist_ok=True)
    inj = []
    for j, r in enumerate(pop.slices(generators)):
        inj.append(write_sipp_injection(pop, os.path.join(directory, f"users-{j}.inf"), r, expires, contact))
    return {
        "csv": write_ftsip_csv(pop, os.path.join(directory, "users.csv")),
        "kamailio_db": write_kamailio_db(pop, os.path.join(directory, "kamailio-db")),
        "injection": inj,
    }
