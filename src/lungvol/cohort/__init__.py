"""lungvol.cohort"""
