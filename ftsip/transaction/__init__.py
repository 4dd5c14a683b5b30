"""RFC 3261 §17 transactions (with RFC 6026's corrections), sans-I/O, and the shared transaction table."""
from ftsip.transaction.base import (ACCEPTED, CALLING, COMPLETED, CONFIRMED, MAGIC, PROCEEDING, TERMINATED, TRYING,
                                    TimerConfig, client_key, client_key_for, server_key)
from ftsip.transaction.client import ClientTransaction, InviteClientTransaction, NonInviteClientTransaction
from ftsip.transaction.server import InviteServerTransaction, NonInviteServerTransaction, ServerTransaction
from ftsip.transaction.table import TransactionTable

__all__ = [
    "ACCEPTED", "CALLING", "COMPLETED", "CONFIRMED", "MAGIC", "PROCEEDING", "TERMINATED", "TRYING", "TimerConfig",
    "client_key", "client_key_for", "server_key", "ClientTransaction", "InviteClientTransaction",
    "NonInviteClientTransaction", "InviteServerTransaction", "NonInviteServerTransaction", "ServerTransaction",
    "TransactionTable",
]
