"""ftsip.location"""
