"""ftsip.proxy"""
