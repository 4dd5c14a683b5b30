"""Timers: the per-worker timing wheel (transactions) and the budgeted expiry queue (registrations)."""
from ftsip.timers.wheel import TimerWheel

__all__ = ["TimerWheel"]
