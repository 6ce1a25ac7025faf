"""lungvol.segmentation"""
