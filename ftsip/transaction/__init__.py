"""ftsip.transaction"""
