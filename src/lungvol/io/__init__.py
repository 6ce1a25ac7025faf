"""lungvol.io"""
