"""The transaction table shared by every worker thread.

A response from the next hop may arrive on any worker's socket (SO_REUSEPORT hashes the 4-tuple), so any thread must
find any transaction: the table is the same concurrent linear-hashing map as the location service (per-bucket
locks, no global lock). Terminated transactions leave the table at once; their late timers find them terminated.
"""
from ftsip.location.table import make_table
from ftsip.transaction.base import client_key, server_key


class TransactionTable:
    def __init__(self, table=None):
        self.table = table if table is not None else make_table("linear")
        self.created = 0     # approximate across threads (statistics only)

    def add(self, txn):
        """Insert ``txn`` unless a transaction with its key exists; returns the one in the table."""
        existing = self.table.setdefault(txn.key, txn)
        if existing is txn:
            self.created += 1
        return existing

    def remove(self, txn):
        def drop(old):
            return None if old is txn else old
        self.table.compute(txn.key, drop)

    def get(self, key):
        return self.table.get(key)

    def match_request(self, req):
        key = server_key(req)
        return None if key is None else self.table.get(key)

    def match_response(self, resp):
        key = client_key(resp)
        return None if key is None else self.table.get(key)

    def __len__(self):
        return len(self.table)
