"""ftsip.runtime"""
