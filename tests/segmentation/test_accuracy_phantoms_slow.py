"""Accuracy on the phantoms (slow): lung Dice and the <= 5 % lesion-volume target.

Thresholds are the project targets (issue 2) where they are met; a target not met is a
strict expected failure with the measured number as its reason (docs/segmentation.md).
"""

from __future__ import annotations

import numpy as np
import pytest
from real_chest import CFG, as_volume, dice

from lungvol.phantom import make_phantom, resolve_size
from lungvol.segmentation import segment_masks

pytestmark = pytest.mark.slow


def test_phantom_lung_dice_and_lesion_volume():
    """Targets: lung Dice >= 0.97, lesion-volume error <= 5 %, on the masks `lungvol
    segment` writes (segment_masks: lesions, then the subpleural layer). Measured -2.0 %
    (2026-12-06, session 22; the lesion step alone, before the layer, -5.9 %); -3.0 % with
    0.6.9's growth rule for slices over 2.5 mm (session 29)."""
    ph = make_phantom(seed=1, lesion_pct=15.0, solid_pct=3.0)
    vol = as_volume(ph.hu, ph.spacing_mm)
    lungs, lesions = segment_masks(vol, CFG)
    assert dice(lungs.labels == 1, ph.lungs == 1) >= 0.97
    assert dice(lungs.labels == 2, ph.lungs == 2) >= 0.97
    measured = np.count_nonzero(lesions.labels)
    truth = np.count_nonzero(ph.lesions)
    assert abs(measured - truth) <= 0.05 * truth, f"{100 * (measured - truth) / truth:+.1f} %"
    overlap = np.count_nonzero((lesions.labels > 0) & (ph.lesions > 0))
    assert overlap >= 0.8 * truth


def _lesion_xfail(reason: str) -> pytest.MarkDecorator:
    return pytest.mark.xfail(strict=True, reason=f"known gap (2026-12-06, session 21): {reason}")


@pytest.mark.parametrize(
    ("seed", "lesion_pct", "solid_pct", "size"),
    [
        pytest.param(0, 5.0, 1.0, "small", marks=_lesion_xfail(
            "lesion -14.1 % at 5 % on the 3 mm-voxel phantom (recall 0.70, 33 mL of false "
            "positives): lesion parts thinner than the 9 mm background ball have no core to "
            "grow from (docs/segmentation.md, 'Vessel segments'). It read -8.9 % before "
            "session 22's two-voxel width gate, which took the simulated trial's heavy "
            "subjects within 1 pp per scan (docs/segmentation.md, 'Coarse voxels'), and -12.4 % "
            "before 0.6.9's growth rule for slices over 2.5 mm")),
        # -4.8 % since 0.6.8's dense plaques off the costal pleura (session 28; -7.2 % before,
        # a strict expected failure).
        pytest.param(5, 10.0, 2.0, "fine"),
        pytest.param(0, 5.0, 1.0, "full", marks=_lesion_xfail(
            "lesion -16.1 % at 5 % on the HRCT-voxel phantom (-16.7 % until 0.6.7, -18.0 % "
            "until 0.6.6, -14.2 % "
            "before session 21's width gate took 10 mL of false positives away; recall 0.66; "
            "93 % of the truth inside the lung mask): whole small lesion components are "
            "missed (README, 'Measured accuracy')")),
    ],
)
def test_phantom_lesion_volume_on_the_other_evaluation_phantoms(seed, lesion_pct, solid_pct, size):
    """The <= 5 % phantom target on the evaluation's phantoms that missed it
    (benchmarks/evaluate_accuracy.py, 'phantoms'; the others pass there)."""
    kw = {}
    if size == "fine":
        kw = {"shape": (200, 256, 256), "spacing_mm": (1.6, 1.4, 1.4)}
    elif size == "full":
        shape, spacing = resolve_size("full")
        kw = {"shape": shape, "spacing_mm": spacing}
    ph = make_phantom(seed=seed, lesion_pct=lesion_pct, solid_pct=solid_pct, **kw)
    _lungs, lesions = segment_masks(as_volume(ph.hu, ph.spacing_mm), CFG)
    measured = np.count_nonzero(lesions.labels)
    truth = np.count_nonzero(ph.lesions)
    assert abs(measured - truth) <= 0.05 * truth, f"{100 * (measured - truth) / truth:+.1f} %"


def _seed_errors_pct(lesion_pct: float, seeds: range) -> list[float]:
    """Lesion volume error (%) of ``segment_masks`` on the small phantom, per seed."""
    errors = []
    for seed in seeds:
        ph = make_phantom(seed=seed, lesion_pct=lesion_pct, solid_pct=lesion_pct / 5.0)
        _lungs, lesions = segment_masks(as_volume(ph.hu, ph.spacing_mm), CFG)
        truth = np.count_nonzero(ph.lesions)
        errors.append(round(100.0 * (np.count_nonzero(lesions.labels) - truth) / truth, 1))
    return errors


def _seeds_xfail(reason: str) -> pytest.MarkDecorator:
    return pytest.mark.xfail(strict=True, reason=f"known gap (2026-12-06, session 23): {reason}")


@pytest.mark.parametrize(
    "lesion_pct",
    [
        pytest.param(5.0, marks=_seeds_xfail(
            "seeds 0-5 at 5 % read -6.8 to -22.3 % (none within 5 %; 12 seeds: mean -12.7 %, "
            "benchmarks/evaluate_accuracy.py, 'phantom_seeds'): lesion parts thinner than the "
            "background ball have no core, and growing further from the cores adds more "
            "false ground glass than truth (docs/segmentation.md, 'Known limitations')")),
        pytest.param(15.0, marks=_seeds_xfail(
            "seeds 0-5 at 15 % read -3.0 to -11.1 % (two within 5 %; 12 seeds: mean -7.3 %, 2 "
            "of 12 within 5 %; 0.6.8: -6.0 %, 4 of 12), for the same reason, and 0.6.9's "
            "growth rule for slices over 2.5 mm withholds rims on their diaphragm. 0.6.8's "
            "dense plaques, off on these 2.8 mm pixels, read -9.0 / -5.1 % with 0.6.8 "
            "(docs/segmentation.md, 'Dense plaques')")),
        30.0,
    ],
)
def test_phantom_lesion_volume_over_seeds(lesion_pct):
    """The <= 5 % phantom target for every seed 0-5 of the small phantom, not for one chosen
    seed: at 30 % all read within -2.6..+0.8 % (session 23), -3.5..-0.1 % with 0.6.9's growth
    rule for slices over 2.5 mm (session 29)."""
    errors = _seed_errors_pct(lesion_pct, range(6))
    assert all(abs(e) <= 5.0 for e in errors), errors

