"""ftsip.timers"""
