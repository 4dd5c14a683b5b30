"""ftsip.registrar"""
