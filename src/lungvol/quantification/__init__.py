"""lungvol.quantification: volumes, proportions, lung HU statistics, QC flags, provenance."""

from lungvol.quantification.metrics import measure_scan
from lungvol.quantification.volumes import Volumes, measure_volumes

__all__ = ["Volumes", "measure_scan", "measure_volumes"]
