"""``simulate_trial``: a cohort of phantom scans whose arm medians follow the published Table 2.

How trajectories are drawn (per arm, endpoint and visit):

- The published [Q1, median, Q3] define a piecewise-linear quantile function through
  u = 0, 0.25, 0.5, 0.75, 1; each tail extends as far beyond the quartile as the quartile is
  from the median. A printed triple that is not ordered (placebo month 1 of the total lesion:
  Q3 below the median, a typo in the paper) keeps the median and its lower quartile and is
  made symmetric (Q3 = 2 x median - Q1); a warning says so.
- Each subject gets ONE rank u per arm, stratified (u = (k + 0.5) / n for a random
  permutation k), used at every visit and for both endpoints: with an odd number of subjects
  the arm's sample median of the drawn relative change equals the published median exactly,
  with an even number it is the mean of the two middle draws. Baseline proportions use a
  second stratified rank and the published baseline [Q1, median, Q3].
- Visits an endpoint is not reported at are filled in: before the first reported visit,
  linearly in nominal day from 0 % change at baseline; after the last, the last reported
  quantiles are held. The solid proportion is capped at 95 % of the total lesion proportion.
- Relative change is clipped at -100 % (no lesion left).
- Each follow-up visit is missing with probability ``missing_fraction`` (baseline never).
  Scan days are the nominal day plus a seeded jitter of ~2 days, kept inside the window.
- Each subject is ONE phantom anatomy (``phantom_seed`` in truth.csv: body, vessels,
  airways and the lesion propensity field) scanned at every visit with fresh image noise
  (``noise_seed``). Lesions are a level set of the subject's propensity field, so they
  shrink or grow in place between visits, as resolving pneumonia does, and a vessel read as
  lesion at baseline is there at every visit, as in a real follow-up.

The phantom generator achieves proportions close to, not exactly at, its targets; the truth
files hold both the targets and the achieved (voxel-counted) proportions, and the truth
endpoints are computed from the ACHIEVED values with the same LOCF and statistics as
``lungvol cohort analyze``.
"""

from __future__ import annotations

import csv
import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lungvol.cohort.trial import TrialConfig
from lungvol.errors import CohortError, ConfigError

logger = logging.getLogger(__name__)

# Phantom grids (z, y, x) over the phantom's default field of view; "ZxYxX" also accepted.
SIZES = {"tiny": (48, 64, 64), "small": (96, 128, 128), "full": (400, 512, 512)}
SCAN_FILE = "ct.nii.gz"
DAY_JITTER_SD = 2.0
SOLID_MAX_FRACTION_OF_LESION = 0.95
MIN_BASELINE_PCT = 0.05
REFERENCE_DATE = dt.date(2020, 2, 5)


@dataclass(frozen=True)
class SimulationResult:
    """Where the simulated cohort was written."""

    root: Path
    manifest: Path
    truth: Path
    truth_endpoints: Path
    n_subjects: int
    n_scans: int


@dataclass(frozen=True)
class _ScanSpec:
    """One phantom to generate and write (small and picklable for worker processes)."""

    folder: str
    shape: tuple[int, int, int]
    seed: int
    noise_seed: int
    lesion_pct: float
    solid_pct: float
    fmt: str
    study_date: str


def quantile_function(triple: Sequence[float], *, where: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Knots (u, value) of the piecewise-linear quantile function of a [Q1, median, Q3] triple."""
    q1, med, q3 = (float(v) for v in triple)
    if not q1 <= med <= q3:
        if q1 <= med:
            logger.warning(
                "%s: published quartiles %s are not ordered; using Q3 = 2 x median - Q1 = %.2f",
                where,
                list(triple),
                2 * med - q1,
            )
            q3 = 2 * med - q1
        else:
            raise ConfigError(f"{where}: quartiles {list(triple)} must satisfy Q1 <= median <= Q3")
    u = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
    values = np.array([q1 - (med - q1), q1, med, q3, q3 + (q3 - med)])
    return u, values


def _draw(triple: Sequence[float], u: np.ndarray, *, where: str) -> np.ndarray:
    knots_u, knots_v = quantile_function(triple, where=where)
    return np.interp(u, knots_u, knots_v)


def _stratified_ranks(rng: np.random.Generator, n: int) -> np.ndarray:
    return (rng.permutation(n) + 0.5) / n


def _change_triples(
    trial: TrialConfig, endpoint_name: str, arm: str
) -> dict[str, list[float] | None]:
    """Published [Q1, median, Q3] of relative change per visit (None when not published)."""
    published = trial.published.get("relative_change_pct", {}).get(endpoint_name, {})
    return {v.name: (published.get(v.name) or {}).get(arm) for v in trial.visits}


def _change_at(
    trial: TrialConfig, endpoint_name: str, arm: str, visit: str, u: np.ndarray
) -> np.ndarray:
    """Relative change (%) at ``visit`` for ranks ``u``, filling unreported visits."""
    triples = _change_triples(trial, endpoint_name, arm)
    reported = [
        v for v in trial.visits if triples[v.name] is not None and v.name != trial.baseline_visit
    ]
    if not reported:
        raise CohortError(
            f"trial {trial.name}: no published relative change for endpoint {endpoint_name!r}, "
            f"arm {arm!r}; simulate-trial needs published.relative_change_pct"
        )
    where = f"{trial.name} {endpoint_name} {visit} {arm}"
    spec = trial.visit(visit)
    if visit == trial.baseline_visit:
        return np.zeros_like(u)
    if triples[visit] is not None:
        return _draw(triples[visit], u, where=where)
    first, last = reported[0], reported[-1]
    if spec.nominal_day < first.nominal_day:
        fraction = max(spec.nominal_day, 0) / first.nominal_day
        return fraction * _draw(triples[first.name], u, where=where)
    if spec.nominal_day > last.nominal_day:
        return _draw(triples[last.name], u, where=where)
    before = max(
        (v for v in reported if v.nominal_day < spec.nominal_day), key=lambda v: v.nominal_day
    )
    after = min(
        (v for v in reported if v.nominal_day > spec.nominal_day), key=lambda v: v.nominal_day
    )
    w = (spec.nominal_day - before.nominal_day) / (after.nominal_day - before.nominal_day)
    return (1 - w) * _draw(triples[before.name], u, where=where) + w * _draw(
        triples[after.name], u, where=where
    )


def draw_trajectories(
    trial: TrialConfig,
    *,
    subjects_per_arm: tuple[int, int],
    seed: int,
    missing_fraction: float,
) -> list[dict[str, Any]]:
    """Per subject x visit targets: arm, day, scan date, target proportions, missing flag."""
    if not 0.0 <= missing_fraction < 1.0:
        raise ConfigError(f"missing_fraction must be in [0, 1), got {missing_fraction}")
    if len(subjects_per_arm) != 2 or min(subjects_per_arm) < 1:
        raise ConfigError(f"subjects_per_arm must be two counts >= 1, got {subjects_per_arm}")
    baseline = trial.published.get("baseline_pct", {})
    endpoint_of = {e.metric: e.name for e in trial.endpoints}
    lesion_endpoint = endpoint_of.get("lesion_proportion_pct")
    solid_endpoint = endpoint_of.get("solid_proportion_pct")
    if not lesion_endpoint or not solid_endpoint or not baseline:
        raise CohortError(
            f"trial {trial.name}: simulate-trial needs lesion and solid endpoints and "
            "published.baseline_pct"
        )
    rng = np.random.default_rng(seed)
    n_total = sum(subjects_per_arm)
    arm_of = np.repeat(np.arange(2), subjects_per_arm)
    rng.shuffle(arm_of)
    rows: list[dict[str, Any]] = []
    for a, arm in enumerate(trial.arm_names):
        idx = np.flatnonzero(arm_of == a)
        u_change = _stratified_ranks(rng, idx.size)
        u_base = _stratified_ranks(rng, idx.size)
        base_lesion = np.maximum(
            _draw(baseline["lesion_proportion_pct"][arm], u_base, where=f"baseline lesion {arm}"),
            MIN_BASELINE_PCT,
        )
        base_solid = np.maximum(
            _draw(baseline["solid_proportion_pct"][arm], u_base, where=f"baseline solid {arm}"),
            MIN_BASELINE_PCT / 10,
        )
        base_solid = np.minimum(base_solid, SOLID_MAX_FRACTION_OF_LESION * base_lesion)
        ref_offsets = rng.integers(0, 60, size=idx.size)
        for visit in trial.visits:
            rel_lesion = np.maximum(
                _change_at(trial, lesion_endpoint, arm, visit.name, u_change), -100.0
            )
            rel_solid = np.maximum(
                _change_at(trial, solid_endpoint, arm, visit.name, u_change), -100.0
            )
            jitter = np.rint(rng.normal(0.0, DAY_JITTER_SD, size=idx.size)).astype(int)
            missing = rng.random(idx.size) < missing_fraction
            for k, subject_index in enumerate(idx):
                lesion = base_lesion[k] * (1 + rel_lesion[k] / 100.0)
                solid = base_solid[k] * (1 + rel_solid[k] / 100.0)
                if solid > SOLID_MAX_FRACTION_OF_LESION * lesion:
                    lesion = solid / SOLID_MAX_FRACTION_OF_LESION
                lo, hi = visit.window_day
                day = int(np.clip(visit.nominal_day + jitter[k], lo, hi))
                if visit.name == trial.baseline_visit:
                    day = int(np.clip(-abs(jitter[k]), lo, hi))
                reference = REFERENCE_DATE + dt.timedelta(days=int(ref_offsets[k]))
                rows.append(
                    {
                        "subject": f"S{subject_index + 1:03d}",
                        "arm": arm,
                        "visit": visit.name,
                        "day": day,
                        "reference_date": reference.isoformat(),
                        "scan_date": (reference + dt.timedelta(days=day)).isoformat(),
                        "target_lesion_pct": float(lesion),
                        "target_solid_pct": float(solid),
                        "target_lesion_change_rel_pct": float(rel_lesion[k]),
                        "target_solid_change_rel_pct": float(rel_solid[k]),
                        "is_missing": bool(missing[k]) and visit.name != trial.baseline_visit,
                    }
                )
    rows.sort(key=lambda r: (r["subject"], trial.visit(r["visit"]).nominal_day))
    logger.debug("drew trajectories for %d subjects", n_total)
    return rows


def _write_scan(spec: _ScanSpec) -> dict[str, float]:
    """Generate one phantom and write it into its scan folder (top-level for process pools)."""
    from lungvol.io import write_dicom_series, write_volume
    from lungvol.phantom import make_phantom

    ph = make_phantom(
        shape=spec.shape,
        seed=spec.seed,
        noise_seed=spec.noise_seed,
        lesion_pct=spec.lesion_pct,
        solid_pct=spec.solid_pct,
    )
    folder = Path(spec.folder)
    folder.mkdir(parents=True, exist_ok=True)
    if spec.fmt == "dicom":
        write_dicom_series(
            ph.hu,
            folder,
            spacing_mm=ph.spacing_mm,
            origin_lps_mm=ph.origin_lps_mm,
            study_date=spec.study_date.replace("-", ""),
            patient_id="SIMULATED",
        )
    else:
        write_volume(
            ph.hu, folder / SCAN_FILE, spacing_mm=ph.spacing_mm, origin_lps_mm=ph.origin_lps_mm
        )
    keys = ("lesion_proportion_pct", "solid_proportion_pct", "ggo_proportion_pct", "lung_volume_ml")
    return {k: float(ph.truth[k]) for k in keys}


def _derived_seed(seed: int, index: int) -> int:
    """An independent 32-bit seed for stream ``index`` of a simulation seeded with ``seed``."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def _resolve_shape(size: str) -> tuple[int, int, int]:
    if size in SIZES:
        return SIZES[size]
    parts = size.lower().split("x")
    if len(parts) == 3 and all(p.isdigit() and int(p) >= 16 for p in parts):
        return (int(parts[0]), int(parts[1]), int(parts[2]))
    raise ConfigError(f"size must be one of {list(SIZES)} or ZxYxX like 64x96x96, got {size!r}")


def simulate_trial(
    out: str | Path,
    trial: TrialConfig,
    *,
    subjects_per_arm: tuple[int, int] = (5, 5),
    seed: int = 0,
    size: str = "small",
    missing_fraction: float = 0.15,
    fmt: str = "nifti",
    workers: int = 1,
) -> SimulationResult:
    """Write a simulated cohort (phantom scans + manifest.csv) and its truth into ``out``.

    ``out`` receives ``manifest.csv``, ``<subject>/<visit>/ct.nii.gz`` (or a DICOM series),
    ``truth.csv`` (per subject x visit: targets, achieved proportions, missing flag) and
    ``truth_endpoints.csv`` (the endpoint table computed from the achieved truth).

    Raises
    ------
    CohortError
        If ``out`` exists and is not empty, or the trial lacks published values.
    """
    from lungvol.cohort.executors import LocalProcessExecutor, SerialExecutor
    from lungvol.cohort.results import write_rows_csv

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise CohortError(
            f"{out} exists and is not empty; pass a new folder for the simulated cohort"
        )
    if fmt not in ("nifti", "dicom"):
        raise ConfigError(f"format must be nifti or dicom, got {fmt!r}")
    shape = _resolve_shape(size)
    rows = draw_trajectories(
        trial, subjects_per_arm=subjects_per_arm, seed=seed, missing_fraction=missing_fraction
    )
    out.mkdir(parents=True, exist_ok=True)
    specs = {}
    subjects = sorted({r["subject"] for r in rows})
    for i, r in enumerate(rows):
        # One anatomy per subject (its lesions shrink or grow in place between visits),
        # fresh image noise per scan.
        r["phantom_seed"] = _derived_seed(seed, subjects.index(r["subject"]))
        r["noise_seed"] = _derived_seed(seed, len(subjects) + i)
        if r["is_missing"]:
            continue
        spec = _ScanSpec(
            folder=str(out / r["subject"] / r["visit"]),
            shape=shape,
            seed=r["phantom_seed"],
            noise_seed=r["noise_seed"],
            lesion_pct=r["target_lesion_pct"],
            solid_pct=r["target_solid_pct"],
            fmt=fmt,
            study_date=r["scan_date"],
        )
        specs[spec.folder] = (spec, r)
    executor = LocalProcessExecutor(workers) if workers > 1 else SerialExecutor()
    try:
        for spec, result in executor.map_unordered(_write_scan, [s for s, _ in specs.values()]):
            if isinstance(result, BaseException):
                raise CohortError(f"phantom for {spec.folder} failed: {result}") from result
            specs[spec.folder][1].update(result)
    finally:
        executor.close()
    manifest = out / "manifest.csv"
    with manifest.open("w", newline="") as fh:
        writer = csv.DictWriter(
            fh, fieldnames=["subject", "arm", "scan", "scan_date", "reference_date"]
        )
        writer.writeheader()
        for r in rows:
            if not r["is_missing"]:
                keep = ("subject", "arm", "scan_date", "reference_date")
                writer.writerow({k: r[k] for k in keep} | {"scan": r["visit"]})
    truth = out / "truth.csv"
    write_rows_csv(rows, truth)
    truth_endpoints = out / "truth_endpoints.csv"
    write_rows_csv(truth_endpoint_rows(rows, trial), truth_endpoints)
    n_scans = len(specs)
    logger.info("simulated %d scans of %d subjects into %s", n_scans, len(subjects), out)
    return SimulationResult(out, manifest, truth, truth_endpoints, len(subjects), n_scans)


def truth_endpoint_rows(
    truth_rows: Sequence[dict[str, Any]],
    trial: TrialConfig,
    *,
    failed: Sequence[tuple[str, str]] = (),
) -> list[dict[str, Any]]:
    """The endpoint table of ``cohort analyze`` computed on the achieved truth.

    ``truth_rows`` are truth.csv rows (as written or as read back); scans that are missing,
    and the (subject, visit) pairs in ``failed`` (a scan that exists but could not be
    measured), enter as ``cohort analyze`` sees them, so LOCF imputes the same cells.
    """
    from lungvol.cohort.endpoints import endpoint_rows, subject_visit_table

    failed_keys = set(failed)
    scans = [
        dict(
            r,
            status="failed" if (r["subject"], r["visit"]) in failed_keys else "ok",
            normal_ct="",
        )
        for r in truth_rows
        if str(r["is_missing"]) != "True"
    ]
    arms = {r["subject"]: r["arm"] for r in truth_rows}
    return endpoint_rows(subject_visit_table(scans, arms, trial), trial)
