"""ftsip.sip"""
