"""lungvol.quantification"""
