"""Typed trial definition (arms, visits with windows, endpoints) loaded from ``configs/*.yaml``.

Like :mod:`lungvol.config`, unknown keys are refused with a message naming the file and the
valid keys, and every range is checked when the object is built.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lungvol.config import CONFIG_DIR, content_hash, read_yaml
from lungvol.errors import ConfigError

DEFAULT_TRIAL = CONFIG_DIR / "shi2022.yaml"
IMPUTATION_METHODS = ("locf", "none")
HL_CI_METHODS = ("sas", "exact", "r")  # see lungvol.stats.hodges_lehmann
QUANTILE_DEFINITIONS = ("sas5", "r7")  # see lungvol.stats.summarize
# Per-scan metrics an endpoint may use (fields of lungvol.types.ScanMetrics, in %).
ENDPOINT_METRICS = ("lesion_proportion_pct", "solid_proportion_pct", "ggo_proportion_pct")


@dataclass(frozen=True)
class ArmSpec:
    """One arm of the trial: ``name`` as written in the manifest, ``label`` for tables."""

    name: str
    label: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("arm name must be a non-empty string")
        if not self.label:
            object.__setattr__(self, "label", self.name)


@dataclass(frozen=True)
class VisitSpec:
    """A scheduled visit: nominal day after day 0 and an inclusive window of days."""

    name: str
    nominal_day: int
    window_day: tuple[int, int]
    label: str = ""

    def __post_init__(self) -> None:
        window = tuple(int(v) for v in self.window_day)
        object.__setattr__(self, "window_day", window)
        if not self.label:
            object.__setattr__(self, "label", self.name)
        if len(window) != 2 or window[0] > window[1]:
            raise ConfigError(
                f"visit {self.name!r}: window_day must be [first, last] with first <= last, "
                f"got {list(self.window_day)}"
            )
        if not window[0] <= self.nominal_day <= window[1]:
            raise ConfigError(
                f"visit {self.name!r}: nominal_day {self.nominal_day} is outside its window "
                f"{list(window)}; widen the window or fix the day"
            )

    def contains(self, day: int) -> bool:
        """True if ``day`` falls in this visit's window (both ends inclusive)."""
        return self.window_day[0] <= day <= self.window_day[1]


@dataclass(frozen=True)
class EndpointSpec:
    """An imaging endpoint: change from baseline of ``metric`` reported at ``visits``."""

    name: str
    metric: str
    visits: tuple[str, ...]
    label: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "visits", tuple(self.visits))
        if not self.label:
            object.__setattr__(self, "label", self.name)
        if self.metric not in ENDPOINT_METRICS:
            raise ConfigError(
                f"endpoint {self.name!r}: metric {self.metric!r} is not one of {ENDPOINT_METRICS}"
            )


@dataclass(frozen=True)
class TrialConfig:
    """A trial: arms (first = treatment), visits, endpoints and analysis conventions."""

    name: str
    arms: tuple[ArmSpec, ...]
    visits: tuple[VisitSpec, ...]
    endpoints: tuple[EndpointSpec, ...]
    baseline_visit: str = "baseline"
    normal_ct_visits: tuple[str, ...] = ()
    imputation: str = "locf"
    hl_ci: str = "sas"
    quantile_definition: str = "sas5"
    # QC: a measured scan whose lung volume differs from the subject's baseline scan by more
    # than this (%) is listed in the report (inspiration level, or a lung mask that leaves
    # out consolidation at one visit); the endpoints are not changed.
    lung_volume_change_flag_pct: float = 10.0
    # QC: a measured scan acquired differently from the subject's baseline scan (another
    # reconstruction kernel or manufacturer, or a slice spacing or thickness that differs by
    # more than this, mm) is listed in the report: the lesion bands read kernel and partial
    # volume.
    acquisition_spacing_tolerance_mm: float = 0.5
    # Measured scans carrying any of these QC flag codes (metrics.json qc_flags, e.g.
    # lung_base_truncated) are excluded from the analysis: treated as visits without a
    # usable scan (imaging endpoints carried forward by the imputation rule, normal CT not
    # imputed) and listed in the report with the codes. Empty: every measured scan counts.
    exclude_qc_flags: tuple[str, ...] = ()
    title: str = ""
    published: dict[str, Any] = field(default_factory=dict)
    source: str = "<dict>"

    def __post_init__(self) -> None:
        for attr in ("arms", "visits", "endpoints", "normal_ct_visits", "exclude_qc_flags"):
            object.__setattr__(self, attr, tuple(getattr(self, attr)))
        bad_codes = [
            c for c in self.exclude_qc_flags
            if not isinstance(c, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", c)
        ]
        if bad_codes:
            raise ConfigError(
                f"{self.source}: exclude_qc_flags must hold QC flag codes such as "
                f"lung_base_truncated (lower case, digits, underscores), got {bad_codes}"
            )
        if len(self.arms) != 2:
            raise ConfigError(
                f"{self.source}: a trial needs exactly 2 arms (treatment first), got "
                f"{[a.name for a in self.arms]}"
            )
        if len({a.name for a in self.arms}) != len(self.arms):
            raise ConfigError(f"{self.source}: arm names must be unique")
        names = [v.name for v in self.visits]
        if len(set(names)) != len(names):
            raise ConfigError(f"{self.source}: visit names must be unique, got {names}")
        if self.baseline_visit not in names:
            raise ConfigError(
                f"{self.source}: baseline_visit {self.baseline_visit!r} is not a visit; "
                f"visits are {names}"
            )
        ordered = sorted(self.visits, key=lambda v: v.nominal_day)
        if [v.name for v in ordered] != names:
            raise ConfigError(f"{self.source}: list the visits in order of nominal_day")
        for first, second in zip(ordered, ordered[1:], strict=False):
            if first.window_day[1] >= second.window_day[0]:
                raise ConfigError(
                    f"{self.source}: windows of visits {first.name!r} {list(first.window_day)} "
                    f"and {second.name!r} {list(second.window_day)} overlap; make them disjoint"
                )
        for endpoint in self.endpoints:
            unknown = [v for v in endpoint.visits if v not in names]
            if unknown:
                raise ConfigError(
                    f"{self.source}: endpoint {endpoint.name!r} names unknown visit(s) {unknown}; "
                    f"visits are {names}"
                )
        unknown = [v for v in self.normal_ct_visits if v not in names]
        if unknown:
            raise ConfigError(f"{self.source}: normal_ct_visits has unknown visit(s) {unknown}")
        if self.imputation not in IMPUTATION_METHODS:
            raise ConfigError(
                f"{self.source}: imputation must be one of {IMPUTATION_METHODS}, "
                f"got {self.imputation!r}"
            )
        if self.quantile_definition not in QUANTILE_DEFINITIONS:
            raise ConfigError(
                f"{self.source}: quantile_definition must be one of {QUANTILE_DEFINITIONS}, "
                f"got {self.quantile_definition!r}"
            )
        if not self.acquisition_spacing_tolerance_mm >= 0:
            raise ConfigError(
                f"{self.source}: acquisition_spacing_tolerance_mm must be >= 0, got "
                f"{self.acquisition_spacing_tolerance_mm!r}"
            )
        if not self.lung_volume_change_flag_pct > 0:
            raise ConfigError(
                f"{self.source}: lung_volume_change_flag_pct must be > 0, got "
                f"{self.lung_volume_change_flag_pct!r}"
            )
        if self.hl_ci not in HL_CI_METHODS:
            raise ConfigError(
                f"{self.source}: hl_ci must be one of {HL_CI_METHODS}, got {self.hl_ci!r}"
            )

    @property
    def arm_names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.arms)

    @property
    def visit_names(self) -> tuple[str, ...]:
        return tuple(v.name for v in self.visits)

    def visit(self, name: str) -> VisitSpec:
        for v in self.visits:
            if v.name == name:
                return v
        raise ConfigError(f"unknown visit {name!r}; visits are {list(self.visit_names)}")

    def arm_label(self, name: str) -> str:
        for a in self.arms:
            if a.name == name:
                return a.label
        return name

    def visit_for_day(self, day: int) -> VisitSpec | None:
        """The visit whose window holds ``day``, or None when it falls between windows."""
        for v in self.visits:
            if v.contains(day):
                return v
        return None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("source")
        return d

    @property
    def hash(self) -> str:
        """sha256 of the resolved trial definition (canonical JSON), first 16 hex digits."""
        return content_hash(self.to_dict())


def _check_keys(values: Any, cls: type, *, where: str, what: str) -> dict[str, Any]:
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: {what} must be a mapping, got {values!r}")
    valid = {f.name for f in dataclasses.fields(cls)} - {"source"}
    unknown = sorted(set(values) - valid)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {unknown} in {what}; valid keys: {sorted(valid)}"
        )
    return values


def trial_from_dict(data: Any, *, where: str = "<dict>") -> TrialConfig:
    """Build a validated :class:`TrialConfig` from a YAML-shaped dict."""
    data = _check_keys(data, TrialConfig, where=where, what="the trial file")
    missing = [k for k in ("name", "arms", "visits", "endpoints") if k not in data]
    if missing:
        raise ConfigError(f"{where}: missing required key(s) {missing}")
    try:
        arms = [
            ArmSpec(**_check_keys(a, ArmSpec, where=where, what="an arm")) for a in data["arms"]
        ]
        visits = [
            VisitSpec(**_check_keys(v, VisitSpec, where=where, what="a visit"))
            for v in data["visits"]
        ]
        endpoints = [
            EndpointSpec(**_check_keys(e, EndpointSpec, where=where, what="an endpoint"))
            for e in data["endpoints"]
        ]
        rest = {k: v for k, v in data.items() if k not in ("arms", "visits", "endpoints")}
        return TrialConfig(arms=arms, visits=visits, endpoints=endpoints, source=where, **rest)
    except ConfigError as err:
        message = str(err)
        raise ConfigError(message if message.startswith(where) else f"{where}: {message}") from err
    except TypeError as err:
        raise ConfigError(f"{where}: bad value in the trial file: {err}") from err


def load_trial(path: str | Path | None = None) -> TrialConfig:
    """Load a trial YAML (default: ``configs/shi2022.yaml``)."""
    p = Path(path) if path is not None else DEFAULT_TRIAL
    if not p.is_file():
        raise ConfigError(
            f"trial file {p} does not exist; pass an existing YAML, e.g. {DEFAULT_TRIAL}"
        )
    return trial_from_dict(read_yaml(p) or {}, where=str(p))
