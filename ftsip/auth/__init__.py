"""ftsip.auth"""
