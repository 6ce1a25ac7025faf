"""Domain errors. Every error lungvol raises on purpose derives from LungvolError.

Messages are one line: what is wrong, the observed value, and what to do next.
The CLI maps LungvolError to exit code 1 and prints only the message.
"""

from __future__ import annotations


class LungvolError(Exception):
    """Base for every error lungvol raises on purpose."""


class InputError(LungvolError, ValueError):
    """Unreadable, missing or unsuitable input path or scan."""


class NotCTError(InputError):
    """The series is not a CT (MR, localizer only, secondary capture, ...)."""


class NotHUError(InputError):
    """Intensities are not Hounsfield units (e.g. 0-255 exports, stored values)."""


class GeometryError(LungvolError, ValueError):
    """Spacing, shape or orientation that lungvol cannot use."""


class SegmentationError(LungvolError, RuntimeError):
    """Segmentation failed, e.g. no lungs in view or an implausible lung mask."""


class ConfigError(LungvolError, ValueError):
    """Bad or unknown configuration value."""


class MissingDependencyError(LungvolError, ImportError):
    """An optional extra is not installed."""


class CohortError(LungvolError, ValueError):
    """Inconsistent cohort folder, manifest or trial configuration."""


class StatsError(LungvolError, ValueError):
    """Statistics input that cannot be analysed (e.g. unparsable counts)."""
