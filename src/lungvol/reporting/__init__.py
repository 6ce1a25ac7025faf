"""lungvol.reporting"""
