"""ftsip.ops"""
