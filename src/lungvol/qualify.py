"""Site qualification: how lungvol reads lesions of known volume on a site's own scan.

A core lab adopting a scanner protocol (kernel, dose, slice thickness, pixel size) takes
one of that protocol's scans without pneumonia. lungvol segments it, inserts lesions of
known volume inside its own lung mask of it at several burdens, segments every modified
scan again and compares what it reads with what was inserted, against the targets of
issue 2 (total lesion within 10 %, solid within 15 %, lesion proportion within 1
percentage point). The insertion models count a lesion next to a vessel differently
(docs/segmentation.md, "A partial-volume insertion model"); the first two run by default:

- ``insert_lesions`` (:func:`lungvol.phantom.insert_lesions`): irregular ground glass and
  solid added to the scan's own texture; vessels and walls inside it stay out of the truth.
  On the project's real chest at 15 % it reads +0.6 % over eight seeds (0.6.8; 0.6.9 reads
  2 mm scans alike).
- ``blobs`` (:func:`lungvol.phantom.insert_blobs`): plain ellipsoids with soft edges;
  vessels inside are lesion (a region as a reader draws it). On that chest +20.0 % over
  six seeds (0.6.7).
- ``partial_volume`` (on request): ``insert_lesions`` with a voxel denser than parenchyma
  read as a mix of lung and tissue, its lung part taking the lesion and counting as truth
  at half lung (vessel skirts, the pleura's voxels). On that chest -13.1 % (one seed).

What it measures: the lesion stage on this protocol's image (its noise, kernel and slices)
with the scan's own lung mask as the reference lung. What it cannot measure: the lung mask
against an expert contour, or how real disease looks on the protocol. The scan's own
reading (a nodule, the vessel floor) counts as false positive in every case; the report
gives the error without it too.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lungvol import __version__
from lungvol.config import LungvolConfig
from lungvol.errors import InputError
from lungvol.phantom import insert_blobs, insert_lesions
from lungvol.segmentation import segment_masks
from lungvol.types import LESION_SOLID, CTVolume

INSERTION_MODELS = ("insert_lesions", "partial_volume", "blobs")
# Run unless --models says otherwise: the two that bracket the other (about 10 s each).
DEFAULT_MODELS = ("insert_lesions", "blobs")
# partial_volume: the HU of the tissue a voxel denser than parenchyma is mixed with.
PARTIAL_VOLUME_TISSUE_HU = 40.0
DEFAULT_BURDENS_PCT = (5.0, 15.0, 30.0)
# Insertions per model and burden in `lungvol qualify`: one insertion is one draw.
DEFAULT_REPEATS = 3
# Solid component as a share of the total lesion (the evaluation's 1 / 3 / 6 / 10 % of
# solid at 5 / 15 / 30 / 50 % lesion).
DEFAULT_SOLID_SHARE = 0.2
MAX_BURDEN_PCT = 60.0

JSON_FILE = "qualify.json"
TABLE_FILE = "qualify.md"
FIGURE_FILE = "qualify.png"


@dataclass(frozen=True)
class QualifyTargets:
    """Acceptance limits of a qualification (issue 2's targets for real scans with
    inserted lesions) and the most lesion the reference scan may read itself."""

    lesion_error_pct: float = 10.0
    solid_error_pct: float = 15.0
    proportion_error_pp: float = 1.0
    reference_max_lesion_pct: float = 5.0

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not np.isfinite(value) or value <= 0:
                raise InputError(f"qualification target {field.name} must be > 0, got {value}")


@dataclass(frozen=True)
class CasePanel:
    """What the qualification figure shows of one case: the axial slice with the most
    inserted lesion (CT in HU, the lung mask read, the lesion read, the truth)."""

    title: str
    hu: np.ndarray
    lungs: np.ndarray
    lesions: np.ndarray
    truth: np.ndarray
    extent: tuple[float, float, float, float]


def _pct_err(measured: float, truth: float) -> float | None:
    return None if truth <= 0 else 100.0 * (measured - truth) / truth


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2.0 * np.count_nonzero(a & b) / max(1, np.count_nonzero(a) + np.count_nonzero(b)))


def lesion_metrics(
    lungs: np.ndarray, lesions: np.ndarray, truth_lungs: np.ndarray, truth_lesions: np.ndarray,
    voxel_ml: float,
) -> dict[str, Any]:
    """Lesion volume, solid volume and proportion read against a truth (labels: lungs any
    non-zero; lesions 1 ground glass, 2 solid), with recall and false-positive volume.

    A volume error near 0 can hide missed truth offset by false positives: recall (share of
    the truth found) and false positives (mL labelled where the truth has none) say which.
    """
    lung_ml = np.count_nonzero(lungs) * voxel_ml
    t_lung_ml = np.count_nonzero(truth_lungs) * voxel_ml
    les_ml = np.count_nonzero(lesions) * voxel_ml
    sol_ml = np.count_nonzero(lesions == LESION_SOLID) * voxel_ml
    t_les_ml = np.count_nonzero(truth_lesions) * voxel_ml
    t_sol_ml = np.count_nonzero(truth_lesions == LESION_SOLID) * voxel_ml
    found, truth = lesions > 0, truth_lesions > 0
    n_truth, n_solid = np.count_nonzero(truth), np.count_nonzero(truth_lesions == LESION_SOLID)
    return {
        "lung_ml": round(lung_ml, 1),
        "truth_lung_ml": round(t_lung_ml, 1),
        "lesion_ml": round(les_ml, 1),
        "truth_lesion_ml": round(t_les_ml, 1),
        "lesion_err_pct": _round(_pct_err(les_ml, t_les_ml)),
        "solid_ml": round(sol_ml, 1),
        "truth_solid_ml": round(t_sol_ml, 1),
        "solid_err_pct": _round(_pct_err(sol_ml, t_sol_ml)),
        "proportion_pct": round(100 * les_ml / max(lung_ml, 1e-9), 2),
        "truth_proportion_pct": round(100 * t_les_ml / max(t_lung_ml, 1e-9), 2),
        "proportion_err_pp": round(100 * les_ml / max(lung_ml, 1e-9)
                                   - 100 * t_les_ml / max(t_lung_ml, 1e-9), 2),
        "lesion_dice": round(_dice(found, truth), 3),
        "lesion_recall": round(np.count_nonzero(found & truth) / n_truth, 3) if n_truth else None,
        "lesion_fp_ml": round(np.count_nonzero(found & ~truth) * voxel_ml, 1),
        "solid_recall": (round(np.count_nonzero((lesions == LESION_SOLID)
                                                & (truth_lesions == LESION_SOLID)) / n_solid, 3)
                         if n_solid else None),
        "solid_fp_ml": round(np.count_nonzero(
            (lesions == LESION_SOLID) & (truth_lesions != LESION_SOLID)) * voxel_ml, 1),
        "truth_lesion_in_lung_mask": round(
            np.count_nonzero(truth & (lungs > 0)) / max(1, n_truth), 3),
    }


def _insert(
    model: str, hu: np.ndarray, lungs: np.ndarray, spacing_mm: tuple[float, float, float],
    seed: int, lesion_pct: float, solid_pct: float,
) -> tuple[np.ndarray, np.ndarray]:
    if model in ("insert_lesions", "partial_volume"):
        new_hu, truth, _ = insert_lesions(
            hu, lungs, spacing_mm=spacing_mm, seed=seed, lesion_pct=lesion_pct,
            solid_pct=solid_pct,
            tissue_hu=PARTIAL_VOLUME_TISSUE_HU if model == "partial_volume" else None,
        )
    elif model == "blobs":
        # insert_blobs gives about half its blobs a solid core (its own solid share).
        new_hu, truth, _ = insert_blobs(
            hu, lungs, spacing_mm=spacing_mm, seed=seed, lesion_pct=lesion_pct,
        )
    else:
        raise InputError(f"unknown insertion model {model!r}; use one of {INSERTION_MODELS}")
    return new_hu, truth


def check_burdens(burdens_pct: Sequence[float]) -> tuple[float, ...]:
    """Validated lesion burdens (% of the lung), in the order given."""
    out = tuple(float(b) for b in burdens_pct)
    if not out:
        raise InputError("no lesion burden given; pass e.g. --burdens 5,15,30")
    for b in out:
        if not (0.0 < b <= MAX_BURDEN_PCT):
            raise InputError(
                f"lesion burden {b:g} % is out of range; use burdens in (0, {MAX_BURDEN_PCT:g}] %"
            )
    return out


def check_options(
    burdens_pct: Sequence[float], solid_share: float, models: Sequence[str], repeats: int,
) -> tuple[tuple[float, ...], tuple[str, ...]]:
    """Validated burdens and models of a qualification (before any scan is read)."""
    burdens = check_burdens(burdens_pct)
    if not (0.0 <= solid_share <= 1.0):
        raise InputError(f"solid share must be in [0, 1], got {solid_share:g}")
    models = tuple(models)
    for model in models:
        if model not in INSERTION_MODELS:
            raise InputError(f"unknown insertion model {model!r}; use one of {INSERTION_MODELS}")
    if not models:
        raise InputError(f"no insertion model given; use one or more of {INSERTION_MODELS}")
    if repeats < 1:
        raise InputError(f"repeats must be at least 1, got {repeats}")
    return burdens, models


def _panel(
    title: str, volume: CTVolume, hu: np.ndarray, lungs: np.ndarray, lesions: np.ndarray,
    truth: np.ndarray,
) -> CasePanel:
    per_slice = np.count_nonzero(truth.reshape(truth.shape[0], -1), axis=1)
    z = int(np.argmax(per_slice))
    dy, dx = volume.spacing_mm[1], volume.spacing_mm[2]
    ny, nx = truth.shape[1:]
    return CasePanel(
        title=title, hu=np.array(hu[z]), lungs=np.array(lungs[z]), lesions=np.array(lesions[z]),
        truth=np.array(truth[z] > 0), extent=(0.0, nx * dx, ny * dy, 0.0),
    )


def _within(value: float | None, limit: float) -> bool | None:
    return None if value is None else bool(abs(value) <= limit)


def qualify_volume(
    volume: CTVolume,
    config: LungvolConfig,
    *,
    burdens_pct: Sequence[float] = DEFAULT_BURDENS_PCT,
    solid_share: float = DEFAULT_SOLID_SHARE,
    models: Sequence[str] = DEFAULT_MODELS,
    seed: int = 0,
    repeats: int = 1,
    targets: QualifyTargets | None = None,
    progress: Callable[[str], None] | None = None,
) -> tuple[dict[str, Any], list[CasePanel]]:
    """Insert lesions of known volume into ``volume`` and read them back.

    Parameters
    ----------
    volume : CTVolume
        A scan without pneumonia (HU), the protocol to qualify.
    config : LungvolConfig
        The configuration to qualify (the same one the study will use).
    burdens_pct : sequence of float
        Total lesion to insert, % of lungvol's lung mask of the scan.
    solid_share : float
        Solid component as a share of the total (``insert_lesions``; ``blobs`` draw a solid
        core in about half their ellipsoids).
    models : sequence of str
        Insertion models, from ``INSERTION_MODELS``.
    seed : int
        Case ``i`` (models x burdens x repeats, in that order) inserts with seed
        ``1000 * seed + i``.
    repeats : int
        Insertions per model and burden, each with its own seed: one insertion is one draw
        (on the real chest at 15 % the solid error spans -5 to -19 % over seeds 8-15).
    targets : QualifyTargets, optional
        Acceptance limits (issue 2's by default).
    progress : callable, optional
        Called with a short line before each segmentation.

    Returns
    -------
    (report, panels)
        ``report``: JSON-ready dict with ``reference`` (the scan as is), ``cases`` (one per
        insertion: :func:`lesion_metrics`, the error without the scan's own reading, and
        which targets are met), ``groups`` (per model and burden: mean, SD and worst error,
        insertions within each target) and ``summary``; ``panels``: one
        :class:`CasePanel` per model and burden (its first insertion) for the figure.

    Raises
    ------
    InputError
        Bad burdens, share or model, or a reference scan that reads more lesion than
        ``targets.reference_max_lesion_pct`` (not a scan without pneumonia).
    SegmentationError
        No lungs found in the scan.
    """
    targets = targets or QualifyTargets()
    burdens, models = check_options(burdens_pct, solid_share, models, repeats)
    say = progress or (lambda _line: None)
    voxel_ml = volume.voxel_volume_ml

    say("reference scan as is")
    t0 = time.perf_counter()
    ref_lungs, ref_lesions = segment_masks(volume, config)
    lung = ref_lungs.labels
    lung_ml = np.count_nonzero(lung) * voxel_ml
    own_ml = np.count_nonzero(ref_lesions.labels) * voxel_ml
    own_pct = 100.0 * own_ml / lung_ml
    warnings = list(ref_lungs.info.get("warnings", [])) + list(ref_lesions.info.get("warnings", []))
    reference = {
        "lung_ml": round(lung_ml, 1),
        "lesion_ml": round(own_ml, 1),
        "lesion_pct": round(own_pct, 2),
        "solid_ml": round(np.count_nonzero(ref_lesions.labels == LESION_SOLID) * voxel_ml, 1),
        "normal_ct_rule_met": bool(own_pct < config.quantification.normal_ct_max_lesion_pct),
        "segmentation_warnings": [w.split(":")[0] for w in warnings],
        "seconds": round(time.perf_counter() - t0, 1),
    }
    if own_pct > targets.reference_max_lesion_pct:
        raise InputError(
            f"the reference scan reads {own_pct:.1f} % lesion itself (more than "
            f"{targets.reference_max_lesion_pct:g} %): qualification needs a scan of the "
            "protocol without pneumonia; pass another scan"
        )

    cases: list[dict[str, Any]] = []
    panels: list[CasePanel] = []
    index = 0
    for model in models:
        for lesion_pct in burdens:
            for repeat in range(repeats):
                case_seed = 1000 * seed + index
                index += 1
                solid_pct = lesion_pct * solid_share
                say(f"{model} {lesion_pct:g} % (insertion {repeat + 1} of {repeats})")
                t = time.perf_counter()
                new_hu, truth = _insert(model, volume.hu, lung, volume.spacing_mm, case_seed,
                                        lesion_pct, solid_pct)
                modified = dataclasses.replace(volume, hu=new_hu)
                lungs, lesions = segment_masks(modified, config)
                m = lesion_metrics(lungs.labels, lesions.labels, lung, truth, voxel_ml)
                met = {
                    "lesion": _within(m["lesion_err_pct"], targets.lesion_error_pct),
                    "solid": _within(m["solid_err_pct"], targets.solid_error_pct),
                    "proportion": _within(m["proportion_err_pp"], targets.proportion_error_pp),
                }
                cases.append({
                    "model": model,
                    "lesion_pct": lesion_pct,
                    "solid_pct": round(solid_pct, 3) if model != "blobs" else None,
                    "repeat": repeat,
                    "seed": case_seed,
                    **m,
                    "lesion_err_less_own_pct": _round(
                        _pct_err(m["lesion_ml"] - own_ml, m["truth_lesion_ml"])),
                    "lung_dice_vs_reference": round(_dice(lungs.labels > 0, lung > 0), 4),
                    "targets_met": met,
                    "all_targets_met": all(v is not False for v in met.values()),
                    "seconds": round(time.perf_counter() - t, 1),
                })
                if repeat == 0:
                    title = (f"{model} {lesion_pct:g} %: total "
                             f"{_signed(m['lesion_err_pct'], '%')}, solid "
                             f"{_signed(m['solid_err_pct'], '%')}, "
                             f"{_signed(m['proportion_err_pp'], 'pp', 2)}")
                    panels.append(
                        _panel(title, volume, new_hu, lungs.labels, lesions.labels, truth))
                del new_hu, truth, modified, lungs, lesions
    report = {
        "lungvol_version": __version__,
        "config_hash": config.hash,
        "targets": dataclasses.asdict(targets),
        "models": list(models),
        "burdens_pct": list(burdens),
        "repeats": repeats,
        "solid_share": solid_share,
        "seed": seed,
        "reference": reference,
        "groups": [_group(cases, model, b) for model in models for b in burdens],
        "cases": cases,
        "summary": {
            "cases": len(cases),
            "all_targets_met": sum(bool(c["all_targets_met"]) for c in cases),
        },
    }
    return report, panels


_GROUP_ERRORS = (("lesion_err_pct", "lesion"), ("solid_err_pct", "solid"),
                 ("proportion_err_pp", "proportion"))


def _group(cases: list[dict[str, Any]], model: str, lesion_pct: float) -> dict[str, Any]:
    """Mean, SD (n - 1) and worst (largest magnitude) of each error over a model's
    insertions at one burden, and how many met each target."""
    rows = [c for c in cases if c["model"] == model and c["lesion_pct"] == lesion_pct]
    out: dict[str, Any] = {"model": model, "lesion_pct": lesion_pct, "n": len(rows)}
    for key, target in _GROUP_ERRORS:
        values = np.array([c[key] for c in rows if c[key] is not None], dtype=float)
        digits = 2 if key.endswith("_pp") else 1
        out[key] = {
            "mean": round(float(values.mean()), digits) if values.size else None,
            "sd": round(float(values.std(ddof=1)), digits) if values.size > 1 else None,
            "worst": round(float(values[np.argmax(np.abs(values))]), digits)
            if values.size else None,
            "within_target": sum(c["targets_met"][target] is True for c in rows),
        }
    return out


def _signed(value: float | None, unit: str, digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value:+.{digits}f} {unit}" if unit == "pp" else f"{value:+.{digits}f}{unit}"


def qualify_scan(
    path: str | Path,
    out_dir: str | Path,
    *,
    config: LungvolConfig,
    series_uid: str | None = None,
    burdens_pct: Sequence[float] = DEFAULT_BURDENS_PCT,
    solid_share: float = DEFAULT_SOLID_SHARE,
    models: Sequence[str] = DEFAULT_MODELS,
    seed: int = 0,
    repeats: int = DEFAULT_REPEATS,
    targets: QualifyTargets | None = None,
    overwrite: bool = False,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Read a scan, qualify it (:func:`qualify_volume`) and write the result folder
    atomically: ``qualify.json`` (report, with input and config provenance), ``qualify.md``
    (the table) and ``qualify.png`` (each case's slice with the most inserted lesion: truth
    outlined in white over lungvol's reading). Returns the report."""
    # The result-folder plumbing of `lungvol segment`: temporary sibling, renamed when done.
    from lungvol.io import read_ct
    from lungvol.pipeline import (
        _make_parents,
        _publish,
        _remove_empty,
        _sibling,
        check_input_and_output,
    )
    from lungvol.quantification.provenance import json_safe, package_versions
    from lungvol.reporting.qualify import qualify_markdown, render_qualify_png

    in_path = Path(path)
    out_dir = Path(out_dir).absolute()
    check_input_and_output(in_path, out_dir, overwrite=overwrite)
    check_options(burdens_pct, solid_share, models, repeats)  # before the scan is read
    t0 = time.perf_counter()
    volume = read_ct(in_path, series_uid=series_uid, config=config.io)
    report, panels = qualify_volume(
        volume, config, burdens_pct=burdens_pct, solid_share=solid_share, models=models,
        seed=seed, repeats=repeats, targets=targets, progress=progress,
    )
    report["input"] = volume.source.to_dict()
    report["config_source"] = config.source
    report["versions"] = package_versions()
    report["seconds"] = round(time.perf_counter() - t0, 1)
    created = _make_parents(out_dir.parent)
    tmp_dir = _sibling(out_dir, "tmp")
    try:
        tmp_dir.mkdir()
        (tmp_dir / JSON_FILE).write_text(
            json.dumps(json_safe(report), indent=2, allow_nan=False) + "\n"
        )
        (tmp_dir / TABLE_FILE).write_text(qualify_markdown(report))
        render_qualify_png(panels, tmp_dir / FIGURE_FILE)
        _publish(tmp_dir, out_dir, overwrite=overwrite)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        _remove_empty(created)
        raise
    return report
