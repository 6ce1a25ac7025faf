"""lungvol.stats"""
